/* The access policy: get, set (policy.mode database), check. */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/admin_internal.h"
#include "common/util.h"
#include "server/control.h"
#include "server/policy.h"
#include "server/policy_source.h"

static const char *mode_name(const struct hw_config *cfg)
{
    return hw_policy_mode_database(cfg) ? "database" : "file";
}

void admin_policy_get(struct admin_req *r)
{
    const struct hw_config *cfg = r->s->cfg;
    const char *text = r->s->control ? hw_control_policy_text(r->s->control) : NULL;
    int64_t updated_at = 0;
    char *stored = NULL;
    if (hw_policy_mode_database(cfg)) {
        /* What was stored last; the loop puts it in force a moment after a set. */
        int rc = hw_db_policy_get(r->db, &stored, &updated_at);
        if (rc != HW_DB_OK && rc != HW_DB_NOT_FOUND) {
            admin_fail_db(r, rc, "policy");
            return;
        }
        text = stored;
    }
    json_t *answer = json_pack("{s:s, s:o, s:o, s:o}", "mode", mode_name(cfg),
                               "path", hw_policy_mode_database(cfg) || !cfg->policy_path || !*cfg->policy_path
                                           ? json_null() : admin_str(cfg->policy_path),
                               "policy", text ? admin_str(text) : json_null(),
                               "updated_at", admin_time(updated_at));
    free(stored);
    admin_ok(r, MHD_HTTP_OK, answer);
}

/* The body's "policy" text, validated; NULL after answering 400. */
static struct hw_policy *validated(struct admin_req *r, const char **text_out)
{
    const char *text;
    if (admin_field_string(r, "policy", true, &text) < 0)
        return NULL;
    const char *source = NULL;
    if (admin_field_string(r, "source", false, &source) < 0)
        return NULL;
    char err[1024];
    struct hw_policy *p = hw_policy_source_validate(r->db, text, strlen(text), source && *source ? source : "policy",
                                                    err, sizeof err);
    if (!p) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "%s", err);
        return NULL;
    }
    *text_out = text;
    return p;
}

void admin_policy_check(struct admin_req *r)
{
    const char *text;
    struct hw_policy *p = validated(r, &text);
    if (!p)
        return;
    hw_policy_free(p);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:b}", "valid", 1));
}

void admin_policy_set(struct admin_req *r)
{
    const struct hw_config *cfg = r->s->cfg;
    if (!hw_policy_mode_database(cfg)) {
        /* As Headscale: in file mode the file is the one source of truth. */
        admin_fail(r, MHD_HTTP_CONFLICT,
                   "policy.mode is \"file\": edit %s instead (headwater reloads it when it changes, or "
                   "on SIGHUP), or set policy.mode: database to manage the policy with hwctl",
                   cfg->policy_path && *cfg->policy_path ? cfg->policy_path : "the file policy.path names");
        return;
    }
    const char *text;
    struct hw_policy *p = validated(r, &text);
    if (!p)
        return;
    int rc = hw_db_policy_set(r->db, text);
    if (rc != HW_DB_OK) {
        hw_policy_free(p);
        admin_fail_db(r, rc, "policy");
        return;
    }
    if (r->s->control)
        hw_control_post_policy(r->s->control, p, hw_strdup(text));
    else
        hw_policy_free(p);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:s, s:o, s:o}", "mode", "database", "policy", admin_str(text),
                                       "updated_at", admin_time(hw_now())));
}
