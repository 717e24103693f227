/* hwctl namespaces create | list | rename | destroy (Headscale: users). */
#include "api/hwctl.h"

#include <stdlib.h>

#include "common/util.h"

int hwctl_namespaces_create(struct hwctl_ctx *ctx)
{
    json_t *answer;
    const char *name = ctx->args[0];
    json_t *body = json_pack("{s:s}", "name", name);
    if (hwctl_post(ctx, "/api/v1/namespaces", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Namespace \"%s\" created", hwctl_jstr(answer, "name"));
}

static void namespace_row(json_t *ns, char **cells)
{
    char created[40];
    hwctl_jtime(ns, "created_at", created, sizeof(created));
    cells[0] = hw_sprintf("%lld", hwctl_jint(ns, "id"));
    cells[1] = hw_strdup(hwctl_jstr(ns, "name"));
    cells[2] = hw_sprintf("%lld", hwctl_jint(ns, "node_count"));
    cells[3] = hw_strdup(created);
}

int hwctl_namespaces_list(struct hwctl_ctx *ctx)
{
    static const char *const headers[] = {"ID", "Name", "Nodes", "Created"};
    json_t *answer;
    if (hwctl_call(ctx, "GET", "/api/v1/namespaces", NULL, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_show_list(ctx, answer, "namespaces", HW_ARRAY_LEN(headers), headers,
                           namespace_row);
}

/* The namespace a rename/destroy is about: --name, -n/--namespace, or the first word. */
static const char *target(struct hwctl_ctx *ctx, size_t *next_arg)
{
    const char *name = ctx->name ? ctx->name : ctx->namespace_name;
    *next_arg = 0;
    if (!name && ctx->n_args > 0)
        name = ctx->args[(*next_arg)++];
    return name;
}

int hwctl_namespaces_rename(struct hwctl_ctx *ctx)
{
    size_t i;
    const char *old = target(ctx, &i);
    const char *new_name = ctx->new_name;
    if (!new_name && i < ctx->n_args)
        new_name = ctx->args[i++];
    if (i < ctx->n_args)
        return hwctl_usage_err(ctx, "unexpected argument \"%s\": usage: hwctl namespaces "
                               "rename OLD NEW", ctx->args[i]);
    if (!old)
        return hwctl_usage_err(ctx, "the namespace to rename is required: usage: hwctl "
                               "namespaces rename OLD NEW (or --name OLD --new-name NEW)");
    if (!new_name)
        return hwctl_usage_err(ctx, "the new name is required: usage: hwctl namespaces "
                               "rename OLD NEW (or --name OLD --new-name NEW)");
    json_t *answer;
    json_t *body = json_pack("{s:s, s:s}", "name", old, "new_name", new_name);
    if (hwctl_post(ctx, "/api/v1/namespaces/rename", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Namespace \"%s\" renamed to \"%s\"", old,
                      hwctl_jstr(answer, "name"));
}

int hwctl_namespaces_destroy(struct hwctl_ctx *ctx)
{
    size_t i;
    const char *name = target(ctx, &i);
    if (i < ctx->n_args)
        return hwctl_usage_err(ctx, "unexpected argument \"%s\": usage: hwctl namespaces "
                               "destroy NAME [--force]", ctx->args[i]);
    if (!name)
        return hwctl_usage_err(ctx, "NAME is required: usage: hwctl namespaces destroy NAME "
                               "[--force]");
    if (!hwctl_socket_path(ctx))     /* a config problem is told before the question */
        return HWCTL_FAIL;
    char *what = hw_sprintf("destroy namespace \"%s\"", name);
    char *prompt = hw_sprintf("Destroy namespace \"%s\" and its pre-auth keys?", name);
    int rc = hwctl_confirm(ctx, what, prompt);
    free(what);
    free(prompt);
    if (rc != HWCTL_OK)
        return rc;
    json_t *answer;
    json_t *body = json_pack("{s:s, s:b}", "name", name, "force", ctx->force);
    if (hwctl_post(ctx, "/api/v1/namespaces/destroy", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Namespace \"%s\" destroyed", name);
}
