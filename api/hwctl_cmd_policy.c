/* hwctl policy get | set | check. */
#include "api/hwctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

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

/* {"policy": FILE's text, "source": FILE}, or NULL after reporting. */
static json_t *policy_body(struct hwctl_ctx *ctx, int *status)
{
    if (!ctx->file) {
        *status = hwctl_usage_err(ctx, "-f/--file is required (the policy file, HuJSON)");
        return NULL;
    }
    size_t len = 0;
    char *text = hw_read_file(ctx->file, &len);
    if (!text) {
        hwctl_err("cannot read %s: %s", ctx->file, strerror(errno));
        *status = HWCTL_FAIL;
        return NULL;
    }
    if (strlen(text) != len) {
        hwctl_err("%s holds a NUL byte: a policy file is text (HuJSON)", ctx->file);
        free(text);
        *status = HWCTL_FAIL;
        return NULL;
    }
    json_t *s = json_stringn(text, len);
    free(text);
    if (!s) {
        hwctl_err("%s is not valid UTF-8", ctx->file);
        *status = HWCTL_FAIL;
        return NULL;
    }
    return json_pack("{s:o, s:s}", "policy", s, "source", ctx->file);
}

int hwctl_policy_set(struct hwctl_ctx *ctx)
{
    int status = HWCTL_OK;
    json_t *body = policy_body(ctx, &status), *answer;
    if (!body)
        return status;
    if (hwctl_post(ctx, "/api/v1/policy", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Policy updated.");
}

int hwctl_policy_check(struct hwctl_ctx *ctx)
{
    int status = HWCTL_OK;
    json_t *body = policy_body(ctx, &status), *answer;
    if (!body)
        return status;
    if (hwctl_post(ctx, "/api/v1/policy/check", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Policy is valid.");
}
