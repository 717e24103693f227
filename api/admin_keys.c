/* Pre-auth keys (for `tailscale up --authkey`) and API keys. */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/admin_internal.h"
#include "common/util.h"

/* How a key the admin typed is echoed in an error: a full secret stays out of answers
 * and logs, its prefix is enough to recognise it. */
static void key_label(const char *key_or_prefix, char *out, size_t out_len)
{
    if (strlen(key_or_prefix) <= 24)
        snprintf(out, out_len, "\"%s\"", key_or_prefix);
    else
        snprintf(out, out_len, "\"%.20s…\"", key_or_prefix);
}

static json_t *preauth_json(const struct hw_preauth_key *k, const char *ns_name,
                            const char *key_text)
{
    int64_t now = hw_now();
    json_t *o = json_pack("{s:I, s:o, s:o, s:b, s:b, s:b, s:o, s:b, s:o, s:o}",
                          "id", (json_int_t)k->id, "prefix", admin_str(k->prefix),
                          "namespace", admin_str(ns_name), "reusable", k->reusable,
                          "ephemeral", k->ephemeral, "used", k->used,
                          "expiration", admin_time(k->expiration),
                          "expired", k->expiration != 0 && k->expiration <= now,
                          "created_at", admin_time(k->created_at),
                          "tags", admin_json_array(k->tags_json));
    if (o && key_text)
        json_object_set_new(o, "key", json_string(key_text));
    return o;
}

static json_t *apikey_json(const struct hw_api_key *k, const char *key_text)
{
    int64_t now = hw_now();
    json_t *o = json_pack("{s:I, s:o, s:o, s:b, s:o, s:o}", "id", (json_int_t)k->id,
                          "prefix", admin_str(k->prefix), "expiration", admin_time(k->expiration),
                          "expired", k->expiration != 0 && k->expiration <= now,
                          "last_seen", admin_time(k->last_seen),
                          "created_at", admin_time(k->created_at));
    if (o && key_text)
        json_object_set_new(o, "key", json_string(key_text));
    return o;
}

void admin_preauthkeys_list(struct admin_req *r)
{
    const char *ns_name = admin_query(r, "namespace");
    struct hw_namespace ns = {0};
    if (ns_name && !admin_namespace_by_name(r, ns_name, &ns))
        return;
    struct hw_preauth_key *keys = NULL;
    size_t n = 0;
    int rc = hw_db_preauth_list(r->db, ns.id, &keys, &n);
    if (rc != HW_DB_OK) {
        admin_fail_db(r, rc, "pre-auth keys");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, preauth_json(&keys[i], keys[i].namespace_name, NULL));
    hw_preauth_key_list_free(keys, n);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:o}", "preauthkeys", arr));
}

void admin_preauthkeys_create(struct admin_req *r)
{
    const char *ns_name;
    bool reusable = false, ephemeral = false;
    int64_t expiration;
    char *tags_json = NULL;
    if (admin_field_string(r, "namespace", true, &ns_name) < 0 ||
        admin_field_bool(r, "reusable", &reusable) < 0 ||
        admin_field_bool(r, "ephemeral", &ephemeral) < 0 ||
        admin_field_expiration(r, "expiration", "1h", &expiration) < 0 ||
        admin_field_tags(r, "tags", false, &tags_json) < 0)
        return;
    struct hw_namespace ns;
    if (!admin_begin_in_namespace(r, ns_name, &ns)) {
        free(tags_json);
        return;
    }
    char key_text[HW_SECRET_TEXT_MAX];
    struct hw_preauth_key k = {0};
    int rc = hw_db_preauth_create(r->db, ns.id, reusable, ephemeral, expiration, tags_json,
                                  key_text, &k);
    free(tags_json);
    if (admin_commit_or_fail(r, rc, "pre-auth key"))
        admin_ok(r, MHD_HTTP_CREATED, preauth_json(&k, ns.name, key_text));
    hw_preauth_key_clear(&k);
}

void admin_preauthkeys_expire(struct admin_req *r)
{
    const char *ns_name, *key;
    if (admin_field_string(r, "namespace", true, &ns_name) < 0 ||
        admin_field_string(r, "key", true, &key) < 0)
        return;
    struct hw_namespace ns;
    if (!admin_begin_in_namespace(r, ns_name, &ns))
        return;
    int rc = hw_db_preauth_expire(r->db, ns.id, key);
    if (rc == HW_DB_NOT_FOUND) {
        admin_rollback(r);
        char label[48];
        key_label(key, label, sizeof label);
        admin_fail(r, MHD_HTTP_NOT_FOUND, "pre-auth key %s not found in namespace \"%s\"", label,
                   ns_name);
        return;
    }
    if (admin_commit_or_fail(r, rc, "pre-auth key"))
        admin_ok(r, MHD_HTTP_OK, json_object());
}

void admin_apikeys_list(struct admin_req *r)
{
    struct hw_api_key *keys = NULL;
    size_t n = 0;
    int rc = hw_db_apikey_list(r->db, &keys, &n);
    if (rc != HW_DB_OK) {
        admin_fail_db(r, rc, "API keys");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, apikey_json(&keys[i], NULL));
    free(keys);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:o}", "apikeys", arr));
}

void admin_apikeys_create(struct admin_req *r)
{
    int64_t expiration;
    if (admin_field_expiration(r, "expiration", "90d", &expiration) < 0)
        return;
    if (!admin_begin(r))
        return;
    char key_text[HW_SECRET_TEXT_MAX];
    struct hw_api_key k;
    int rc = hw_db_apikey_create(r->db, expiration, key_text, &k);
    if (admin_commit_or_fail(r, rc, "API key"))
        admin_ok(r, MHD_HTTP_CREATED, apikey_json(&k, key_text));
}

void admin_apikeys_expire(struct admin_req *r)
{
    const char *prefix;
    if (admin_field_string(r, "prefix", true, &prefix) < 0)
        return;
    if (!admin_begin(r))
        return;
    int rc = hw_db_apikey_expire(r->db, prefix);
    if (rc == HW_DB_NOT_FOUND) {
        admin_rollback(r);
        char label[48];
        key_label(prefix, label, sizeof label);
        admin_fail(r, MHD_HTTP_NOT_FOUND, "API key %s not found", label);
        return;
    }
    if (admin_commit_or_fail(r, rc, "API key"))
        admin_ok(r, MHD_HTTP_OK, json_object());
}
