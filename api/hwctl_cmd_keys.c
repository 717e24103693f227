/* hwctl preauthkeys create | list | expire, apikeys create | list | expire. */
#include "api/hwctl.h"

#include <stdlib.h>

#include "common/util.h"

static int check_duration(struct hwctl_ctx *ctx)
{
    int64_t ms;
    if (!ctx->expiration || hw_parse_duration_ms(ctx->expiration, &ms) == 0)
        return 0;
    return hwctl_usage_err(ctx, "invalid -e/--expiration \"%s\": use a duration such as 30m, "
                           "24h, 1h30m or 90d (0 = never expires)", ctx->expiration);
}

/* Sends a create, with -e/--expiration added to body (taken), and shows the new key. Table
 * mode prints only the key, so `KEY=$(hwctl preauthkeys create -n default)` works. */
static int create_key(struct hwctl_ctx *ctx, const char *path, json_t *body)
{
    json_t *answer;
    if (ctx->expiration)
        json_object_set_new(body, "expiration", json_string(ctx->expiration));
    if (hwctl_post(ctx, path, body, &answer) < 0)
        return HWCTL_FAIL;
    if (ctx->output == HWCTL_OUT_TABLE && !json_is_string(json_object_get(answer, "key"))) {
        hwctl_err("headwater's answer holds no key: is hwctl the same version as the server?");
        json_decref(answer);
        return HWCTL_FAIL;
    }
    return hwctl_done(ctx, answer, "%s", hwctl_jstr(answer, "key"));
}

int hwctl_preauthkeys_create(struct hwctl_ctx *ctx)
{
    if (!ctx->namespace_name)
        return hwctl_usage_err(ctx, "-n/--namespace is required (the namespace the key "
                               "registers nodes in)");
    int rc = check_duration(ctx);
    if (rc)
        return rc;
    json_t *tags = json_array();
    for (size_t i = 0; i < ctx->n_tags; i++)
        json_array_append_new(tags, json_string(ctx->tags[i]));
    json_t *body = json_pack("{s:s, s:b, s:b, s:o}", "namespace", ctx->namespace_name,
                             "reusable", ctx->reusable, "ephemeral", ctx->ephemeral,
                             "tags", tags);
    return create_key(ctx, "/api/v1/preauthkeys", body);
}

static void preauthkey_row(json_t *k, char **cells)
{
    char expiration[40], created[40];
    hwctl_jtime(k, "expiration", expiration, sizeof(expiration));
    hwctl_jtime(k, "created_at", created, sizeof(created));
    cells[0] = hw_sprintf("%lld", hwctl_jint(k, "id"));
    cells[1] = hw_strdup(hwctl_jstr(k, "prefix"));
    cells[2] = hw_strdup(hwctl_jstr(k, "namespace"));
    cells[3] = hw_strdup(hwctl_jbool(k, "reusable") ? "true" : "false");
    cells[4] = hw_strdup(hwctl_jbool(k, "ephemeral") ? "true" : "false");
    cells[5] = hw_strdup(hwctl_jbool(k, "used") ? "true" : "false");
    cells[6] = hw_strdup(hwctl_jbool(k, "expired") ? "yes" : "no");
    cells[7] = hw_strdup(expiration);
    cells[8] = hw_strdup(created);
    cells[9] = hwctl_jjoin(k, "tags", ",");
}

int hwctl_preauthkeys_list(struct hwctl_ctx *ctx)
{
    static const char *const headers[] = {
        "ID", "Prefix", "Namespace", "Reusable", "Ephemeral", "Used", "Expired", "Expiration",
        "Created", "Tags",
    };
    json_t *answer;
    if (hwctl_get(ctx, "/api/v1/preauthkeys", "namespace", ctx->namespace_name, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_show_list(ctx, answer, "preauthkeys", HW_ARRAY_LEN(headers), headers,
                           preauthkey_row);
}

int hwctl_preauthkeys_expire(struct hwctl_ctx *ctx)
{
    if (!ctx->namespace_name)
        return hwctl_usage_err(ctx, "-n/--namespace is required (the key's namespace: see "
                               "'hwctl preauthkeys list')");
    json_t *answer;
    json_t *body = json_pack("{s:s, s:s}", "namespace", ctx->namespace_name, "key",
                             ctx->args[0]);
    if (hwctl_post(ctx, "/api/v1/preauthkeys/expire", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Pre-auth key expired");
}

int hwctl_apikeys_create(struct hwctl_ctx *ctx)
{
    int rc = check_duration(ctx);
    if (rc)
        return rc;
    return create_key(ctx, "/api/v1/apikeys", json_object());
}

static void apikey_row(json_t *k, char **cells)
{
    char expiration[40], last_seen[40], created[40];
    hwctl_jtime(k, "expiration", expiration, sizeof(expiration));
    hwctl_jtime(k, "last_seen", last_seen, sizeof(last_seen));
    hwctl_jtime(k, "created_at", created, sizeof(created));
    cells[0] = hw_sprintf("%lld", hwctl_jint(k, "id"));
    cells[1] = hw_strdup(hwctl_jstr(k, "prefix"));
    cells[2] = hw_strdup(hwctl_jbool(k, "expired") ? "yes" : "no");
    cells[3] = hw_strdup(expiration);
    cells[4] = hw_strdup(last_seen);
    cells[5] = hw_strdup(created);
}

int hwctl_apikeys_list(struct hwctl_ctx *ctx)
{
    static const char *const headers[] = {
        "ID", "Prefix", "Expired", "Expiration", "Last seen", "Created",
    };
    json_t *answer;
    if (hwctl_call(ctx, "GET", "/api/v1/apikeys", NULL, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_show_list(ctx, answer, "apikeys", HW_ARRAY_LEN(headers), headers, apikey_row);
}

int hwctl_apikeys_expire(struct hwctl_ctx *ctx)
{
    if (!ctx->prefix)
        return hwctl_usage_err(ctx, "-p/--prefix is required (the key's prefix: see 'hwctl "
                               "apikeys list')");
    json_t *answer;
    json_t *body = json_pack("{s:s}", "prefix", ctx->prefix);
    if (hwctl_post(ctx, "/api/v1/apikeys/expire", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "API key expired");
}
