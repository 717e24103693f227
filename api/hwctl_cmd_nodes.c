/* hwctl nodes list | register | delete | expire | rename | move | tag. */
#include "api/hwctl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

static void node_row(json_t *n, char **cells)
{
    char last_seen[40], expiry[40];
    const char *v4 = "", *v6 = "";
    size_t i;
    json_t *ip;
    json_array_foreach(json_object_get(n, "ip_addresses"), i, ip) {
        const char *s = json_string_value(ip);
        if (!s)
            continue;
        if (strchr(s, ':'))
            v6 = s;
        else
            v4 = s;
    }
    hwctl_jtime(n, "last_seen", last_seen, sizeof(last_seen));
    hwctl_jtime(n, "expiry", expiry, sizeof(expiry));
    cells[0] = hw_sprintf("%lld", hwctl_jint(n, "id"));
    cells[1] = hw_strdup(hwctl_jstr(n, "hostname"));
    cells[2] = hw_strdup(hwctl_jstr(n, "name"));
    cells[3] = hw_strdup(hwctl_jstr(n, "namespace"));
    cells[4] = hw_sprintf("%s%s%s", v4, *v4 && *v6 ? ", " : "", v6);
    cells[5] = hw_strdup(hwctl_jbool(n, "ephemeral") ? "true" : "false");
    cells[6] = hw_strdup(last_seen);
    cells[7] = hw_strdup(expiry);
    cells[8] = hw_strdup(hwctl_jbool(n, "online") ? "online" : "offline");
    cells[9] = hw_strdup(hwctl_jbool(n, "expired") ? "yes" : "no");
    cells[10] = hwctl_jjoin(n, "tags", ",");
    /* The routes the admin enabled (what it serves; `hwctl routes list` shows which
     * subnet routes are primary). */
    cells[11] = hwctl_jjoin(json_object_get(n, "routes"), "enabled", ",");
}

int hwctl_nodes_list(struct hwctl_ctx *ctx)
{
    static const char *const headers[] = {
        "ID", "Hostname", "Name", "Namespace", "IP addresses", "Ephemeral", "Last seen",
        "Expiration", "Connected", "Expired", "Tags", "Routes",
    };
    json_t *answer;
    if (hwctl_get(ctx, "/api/v1/nodes", "namespace", ctx->namespace_name, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_show_list(ctx, answer, "nodes", HW_ARRAY_LEN(headers), headers, node_row);
}

static int need_identifier(struct hwctl_ctx *ctx)
{
    if (ctx->have_identifier)
        return 0;
    return hwctl_usage_err(ctx, "-i/--identifier is required (the node id: see 'hwctl nodes "
                           "list')");
}

/* POST path with body; on success ends with the message for the node in the answer. */
static int node_change(struct hwctl_ctx *ctx, const char *path, json_t *body, const char *what)
{
    json_t *answer;
    if (hwctl_post(ctx, path, body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Node %lld (%s) %s", hwctl_jint(answer, "id"),
                      hwctl_jstr(answer, "name"), what);
}

int hwctl_nodes_register(struct hwctl_ctx *ctx)
{
    if (!ctx->namespace_name)
        return hwctl_usage_err(ctx, "-n/--namespace is required (the namespace the node "
                               "joins: see 'hwctl namespaces list')");
    if (!ctx->key)
        return hwctl_usage_err(ctx, "-k/--key is required (the registration id the client "
                               "printed in its login URL)");
    json_t *answer;
    json_t *body = json_pack("{s:s, s:s}", "namespace", ctx->namespace_name, "key", ctx->key);
    if (hwctl_post(ctx, "/api/v1/nodes/register", body, &answer) < 0)
        return HWCTL_FAIL;
    char *ips = hwctl_jjoin(answer, "ip_addresses", ", ");
    int rc = hwctl_done(ctx, answer, "Node %s registered in namespace \"%s\" (id %lld%s%s)",
                    hwctl_jstr(answer, "name"), hwctl_jstr(answer, "namespace"),
                    hwctl_jint(answer, "id"), *ips ? ", " : "", ips);
    free(ips);
    return rc;
}

/* The node's name for the confirmation question; "" when it cannot be found (the delete
 * itself then reports why). */
static char *node_name(struct hwctl_ctx *ctx, int64_t id)
{
    json_t *answer;
    char *name = NULL;
    char why[256];
    if (hwctl_call_quiet(ctx, "GET", "/api/v1/nodes", &answer, why, sizeof(why)) < 0)
        return hw_strdup("");
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(answer, "nodes"), i, n) {
        if (hwctl_jint(n, "id") == id)
            name = hw_strdup(hwctl_jstr(n, "name"));
    }
    json_decref(answer);
    return name ? name : hw_strdup("");
}

int hwctl_nodes_delete(struct hwctl_ctx *ctx)
{
    int rc = need_identifier(ctx);
    if (rc)
        return rc;
    if (!hwctl_socket_path(ctx))     /* a config problem is told before the question */
        return HWCTL_FAIL;
    char *what = hw_sprintf("delete node %lld", (long long)ctx->identifier);
    char *prompt = NULL;
    if (!ctx->force && !ctx->yes && isatty(STDIN_FILENO)) {
        char *name = node_name(ctx, ctx->identifier);
        prompt = hw_sprintf("Delete node %lld%s%s%s?", (long long)ctx->identifier,
                            *name ? " (" : "", name, *name ? ")" : "");
        free(name);
    }
    rc = hwctl_confirm(ctx, what, prompt ? prompt : what);
    free(what);
    free(prompt);
    if (rc != HWCTL_OK)
        return rc;
    json_t *answer;
    json_t *body = json_pack("{s:I}", "id", (json_int_t)ctx->identifier);
    if (hwctl_post(ctx, "/api/v1/nodes/delete", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Node %lld deleted", (long long)ctx->identifier);
}

int hwctl_nodes_expire(struct hwctl_ctx *ctx)
{
    int rc = need_identifier(ctx);
    if (rc)
        return rc;
    return node_change(ctx, "/api/v1/nodes/expire",
                       json_pack("{s:I}", "id", (json_int_t)ctx->identifier),
                       "expired: it must log in again");
}

int hwctl_nodes_rename(struct hwctl_ctx *ctx)
{
    int rc = need_identifier(ctx);
    if (rc)
        return rc;
    const char *new_name = ctx->new_name;
    if (new_name && ctx->n_args > 0)
        return hwctl_usage_err(ctx, "give the new name once, not both \"%s\" and --new-name",
                               ctx->args[0]);
    if (!new_name && ctx->n_args > 0)
        new_name = ctx->args[0];
    if (!new_name)
        return hwctl_usage_err(ctx, "NEW_NAME is required: usage: hwctl nodes rename -i ID "
                               "NEW_NAME");
    json_t *answer;
    json_t *body = json_pack("{s:I, s:s}", "id", (json_int_t)ctx->identifier, "new_name",
                             new_name);
    if (hwctl_post(ctx, "/api/v1/nodes/rename", body, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_done(ctx, answer, "Node %lld renamed to %s", hwctl_jint(answer, "id"),
                      hwctl_jstr(answer, "name"));
}

int hwctl_nodes_move(struct hwctl_ctx *ctx)
{
    int rc = need_identifier(ctx);
    if (rc)
        return rc;
    if (!ctx->namespace_name)
        return hwctl_usage_err(ctx, "-n/--namespace is required (the namespace to move the "
                               "node to)");
    char *what = hw_sprintf("moved to namespace \"%s\"", ctx->namespace_name);
    rc = node_change(ctx, "/api/v1/nodes/move",
                     json_pack("{s:I, s:s}", "id", (json_int_t)ctx->identifier, "namespace",
                               ctx->namespace_name),
                     what);
    free(what);
    return rc;
}

int hwctl_nodes_tag(struct hwctl_ctx *ctx)
{
    int rc = need_identifier(ctx);
    if (rc)
        return rc;
    json_t *tags = json_array();
    for (size_t i = 0; i < ctx->n_tags; i++)
        json_array_append_new(tags, json_string(ctx->tags[i]));
    json_t *answer;
    json_t *body = json_pack("{s:I, s:o}", "id", (json_int_t)ctx->identifier, "tags", tags);
    if (hwctl_post(ctx, "/api/v1/nodes/tag", body, &answer) < 0)
        return HWCTL_FAIL;
    char *now = hwctl_jjoin(answer, "tags", ", ");
    rc = hwctl_done(ctx, answer, "Node %lld (%s) %s%s", hwctl_jint(answer, "id"),
                    hwctl_jstr(answer, "name"), *now ? "tags: " : "has no tags now", now);
    free(now);
    return rc;
}
