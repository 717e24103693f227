/* hwctl policy get | set | check. */
#include "api/hwctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "server/policy.h"

int hwctl_policy_get(struct hwctl_ctx *ctx)
{
    json_t *answer;
    if (hwctl_call(ctx, "GET", "/api/v1/policy", NULL, &answer) < 0)
        return HWCTL_FAIL;
    if (ctx->output != HWCTL_OUT_TABLE) {
        int rc = hwctl_print_value(ctx, answer) < 0 ? HWCTL_FAIL : HWCTL_OK;
        json_decref(answer);
        return rc;
    }
    const char *text = hwctl_jstr(answer, "policy");
    if (*text) {
        /* The text itself, so `hwctl policy get > policy.hujson` gives an editable file. */
        fputs(text, stdout);
        if (text[strlen(text) - 1] != '\n')
            fputc('\n', stdout);
    } else {
        fprintf(stderr, "hwctl: no policy is in force: namespaces are the boundary\n");
    }
    json_decref(answer);
    return HWCTL_OK;
}

/* FILE's text (malloc'd, NUL-terminated), or NULL after reporting. */
static char *policy_text(struct hwctl_ctx *ctx, size_t *len, int *status)
{
    if (!ctx->file) {
        *status = hwctl_usage_err(ctx, "-f/--file is required (the policy file, HuJSON)");
        return NULL;
    }
    char *text = hw_read_file(ctx->file, len);
    if (!text) {
        hwctl_err("cannot read %s: %s", ctx->file, strerror(errno));
        *status = HWCTL_FAIL;
        return NULL;
    }
    if (strlen(text) != *len) {
        hwctl_err("%s holds a NUL byte: a policy file is text (HuJSON)", ctx->file);
        free(text);
        *status = HWCTL_FAIL;
        return NULL;
    }
    return text;
}

/* {"policy": text, "source": FILE}, or NULL after reporting. */
static json_t *policy_body(struct hwctl_ctx *ctx, const char *text, size_t len)
{
    json_t *s = json_stringn(text, len);
    if (!s) {
        hwctl_err("%s is not valid UTF-8", ctx->file);
        return NULL;
    }
    return json_pack("{s:o, s:s}", "policy", s, "source", ctx->file);
}

int hwctl_policy_set(struct hwctl_ctx *ctx)
{
    int status = HWCTL_OK;
    size_t len = 0;
    char *text = policy_text(ctx, &len, &status);
    if (!text)
        return status;
    json_t *body = policy_body(ctx, text, len), *answer;
    free(text);
    if (!body)
        return HWCTL_FAIL;
    if (hwctl_post(ctx, "/api/v1/policy", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Policy updated.");
}

/* The server's own parser, run here: everything but the namespace names, which only
 * the server knows. `why` says why the server was not asked. */
static int check_locally(struct hwctl_ctx *ctx, const char *text, size_t len, const char *why,
                         const char *sock)
{
    char err[1024];
    struct hw_policy *p = hw_policy_parse(text, len, ctx->file, err, sizeof err);
    if (!p) {
        hwctl_err("%s", err);
        return HWCTL_FAIL;
    }
    hw_policy_free(p);
    if (ctx->output == HWCTL_OUT_TABLE) {
        if (sock)
            printf("Policy is valid (checked locally: the server at %s did not answer, so namespace "
                   "names were not checked).\n", sock);
        else
            printf("Policy is valid (checked locally (--local), so namespace names were not "
                   "checked).\n");
        return HWCTL_OK;
    }
    json_t *answer = json_pack("{s:b, s:b, s:b, s:s, s:s?}", "valid", 1, "checked_locally", 1,
                               "namespaces_checked", 0, "why", why, "socket", sock);
    int rc = hwctl_print_value(ctx, answer) < 0 ? HWCTL_FAIL : HWCTL_OK;
    json_decref(answer);
    return rc;
}

int hwctl_policy_check(struct hwctl_ctx *ctx)
{
    int status = HWCTL_OK;
    size_t len = 0;
    char *text = policy_text(ctx, &len, &status);
    if (!text)
        return status;
    if (ctx->local) {
        status = check_locally(ctx, text, len, "--local: the server was not asked", NULL);
        free(text);
        return status;
    }
    json_t *body = policy_body(ctx, text, len), *answer;
    if (!body) {
        free(text);
        return HWCTL_FAIL;
    }
    char why[1024];
    int rc = hwctl_post_if_running(ctx, "/api/v1/policy/check", body, &answer, why, sizeof why);
    if (rc > 0)
        status = check_locally(ctx, text, len, why, ctx->socket_path);
    else
        status = rc < 0 ? HWCTL_FAIL : hwctl_done(ctx, answer, "Policy is valid.");
    free(text);
    return status;
}
