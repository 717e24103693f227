/* hwctl routes list | enable | disable. A route is named by node and prefix (the API
 * has no route ids to type); enabling 0.0.0.0/0 or ::/0 enables both (an exit node). */
#include "api/hwctl.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static bool is_exit_route(const char *prefix)
{
    return strcmp(prefix, "0.0.0.0/0") == 0 || strcmp(prefix, "::/0") == 0;
}

static void route_row(json_t *r, char **cells)
{
    const char *prefix = hwctl_jstr(r, "prefix");
    cells[0] = hw_sprintf("%lld", hwctl_jint(r, "id"));
    cells[1] = hw_sprintf("%lld", hwctl_jint(r, "node_id"));
    cells[2] = hw_strdup(hwctl_jstr(r, "node"));
    cells[3] = hw_strdup(prefix);
    cells[4] = hw_strdup(hwctl_jbool(r, "advertised") ? "true" : "false");
    cells[5] = hw_strdup(hwctl_jbool(r, "enabled") ? "true" : "false");
    /* Exit routes are never primary or not: every exit node serves them. */
    cells[6] = hw_strdup(is_exit_route(prefix) ? "-"
                         : hwctl_jbool(r, "primary") ? "true" : "false");
}

int hwctl_routes_list(struct hwctl_ctx *ctx)
{
    static const char *const headers[] = {
        "ID", "Node ID", "Node", "Prefix", "Advertised", "Enabled", "Primary",
    };
    char id[32] = "";
    if (ctx->have_identifier)
        snprintf(id, sizeof(id), "%lld", (long long)ctx->identifier);
    json_t *answer;
    if (hwctl_get(ctx, "/api/v1/routes", "node", id, &answer) < 0)
        return HWCTL_FAIL;
    return hwctl_show_list(ctx, answer, "routes", HW_ARRAY_LEN(headers), headers, route_row);
}

static int set_route(struct hwctl_ctx *ctx, bool enable)
{
    if (!ctx->have_identifier)
        return hwctl_usage_err(ctx, "-i/--identifier is required (the node id: see 'hwctl "
                               "routes list')");
    if (!ctx->route)
        return hwctl_usage_err(ctx, "-r/--route is required (the prefix, e.g. "
                               "192.168.1.0/24: see 'hwctl routes list -i %lld')",
                               (long long)ctx->identifier);
    json_t *answer;
    json_t *body = json_pack("{s:I, s:s}", "node", (json_int_t)ctx->identifier, "prefix",
                             ctx->route);
    if (hwctl_post(ctx, enable ? "/api/v1/routes/enable" : "/api/v1/routes/disable", body,
                   &answer) < 0)
        return HWCTL_FAIL;
    const char *prefix = hwctl_jstr(answer, "prefix");
    bool exit_route = is_exit_route(prefix);
    return hwctl_done(ctx, answer, "Route %s of node %lld (%s) %s%s", prefix,
                      hwctl_jint(answer, "node_id"), hwctl_jstr(answer, "node"),
                      enable ? "enabled" : "disabled",
                      exit_route ? " with its exit-node pair (0.0.0.0/0 and ::/0 go together)"
                                 : "");
}

int hwctl_routes_enable(struct hwctl_ctx *ctx)
{
    return set_route(ctx, true);
}

int hwctl_routes_disable(struct hwctl_ctx *ctx)
{
    return set_route(ctx, false);
}
