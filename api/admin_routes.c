/* Subnet routes and exit nodes: a node advertises, the admin enables. */
#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/admin_internal.h"
#include "common/util.h"
#include "server/control.h"
#include "server/nodes.h"

/* "primary" is the live election's (in memory, as in Headscale), not a stored flag. */
static json_t *route_json(struct admin_req *r, const struct hw_route *rt)
{
    bool primary = r->s->control && rt->enabled && rt->advertised &&
                   hw_control_route_is_primary(r->s->control, rt->node_id, rt->prefix);
    return json_pack("{s:I, s:I, s:o, s:o, s:b, s:b, s:b}", "id", (json_int_t)rt->id,
                     "node_id", (json_int_t)rt->node_id, "node", admin_str(rt->node_name),
                     "prefix", admin_str(rt->prefix), "advertised", rt->advertised,
                     "enabled", rt->enabled, "primary", primary);
}

/* Copies the node's route for prefix into out; false when it has none. */
static int find_route(struct hw_db *db, int64_t node_id, const char *prefix, struct hw_route *out,
                      bool *found)
{
    struct hw_route *routes = NULL;
    size_t n = 0;
    *found = false;
    int rc = hw_db_route_list(db, node_id, &routes, &n);
    if (rc != HW_DB_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(routes[i].prefix, prefix) == 0) {
            *out = routes[i];
            *found = true;
            break;
        }
    }
    free(routes);
    return HW_DB_OK;
}

void admin_routes_list(struct admin_req *r)
{
    const char *node_text = admin_query(r, "node");
    int64_t node_id = 0;
    if (node_text) {
        char *end;
        errno = 0;
        long long v = strtoll(node_text, &end, 10);
        if (*end || errno || v <= 0) {
            admin_fail(r, MHD_HTTP_BAD_REQUEST, "invalid node id \"%s\": expected a positive integer",
                       node_text);
            return;
        }
        node_id = v;
        struct hw_node n;
        if (!admin_node_by_id(r, node_id, &n))
            return;
        hw_node_clear(&n);
    }
    struct hw_route *routes = NULL;
    size_t n = 0;
    int rc = hw_db_route_list(r->db, node_id, &routes, &n);
    if (rc != HW_DB_OK) {
        admin_fail_db(r, rc, "routes");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, route_json(r, &routes[i]));
    free(routes);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:o}", "routes", arr));
}

/* An exit node routes both families: Tailscale clients advertise 0.0.0.0/0 and ::/0
 * together, and Headscale approves them as a pair. */
static const char *exit_partner(const char *prefix)
{
    if (strcmp(prefix, "0.0.0.0/0") == 0)
        return "::/0";
    if (strcmp(prefix, "::/0") == 0)
        return "0.0.0.0/0";
    return NULL;
}

static void set_enabled(struct admin_req *r, bool enabled)
{
    int64_t node_id;
    const char *prefix;
    if (admin_field_id(r, "node", true, &node_id) < 0 ||
        admin_field_string(r, "prefix", true, &prefix) < 0)
        return;
    char canon[HW_PREFIX_TEXT_MAX], why[200];
    if (hw_prefix_canonical(prefix, canon, why, sizeof why) < 0) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "invalid prefix \"%s\": %s", prefix, why);
        return;
    }
    if (!admin_begin(r))
        return;
    struct hw_node n;
    if (!admin_node_by_id(r, node_id, &n)) {
        admin_rollback(r);
        return;
    }
    hw_node_clear(&n);
    /* Disabling a route the node no longer advertises forgets the row: keep a copy to
     * answer with. */
    struct hw_route before = {0};
    bool found;
    int rc = find_route(r->db, node_id, canon, &before, &found);
    if (rc == HW_DB_OK)
        rc = hw_db_route_set_enabled(r->db, node_id, canon, enabled);
    const char *partner = exit_partner(canon);
    if (rc == HW_DB_OK && partner) {
        int prc = hw_db_route_set_enabled(r->db, node_id, partner, enabled);
        /* A node may advertise only one family; the pair is then that one route. */
        if (prc != HW_DB_NOT_FOUND)
            rc = prc;
    }
    if (rc != HW_DB_OK) {
        admin_rollback(r);
        if (rc == HW_DB_NOT_FOUND && enabled)
            admin_fail(r, MHD_HTTP_NOT_FOUND, "node %lld does not advertise %s", (long long)node_id,
                       canon);
        else if (rc == HW_DB_NOT_FOUND)
            admin_fail(r, MHD_HTTP_NOT_FOUND, "node %lld has no route %s", (long long)node_id,
                       canon);
        else
            admin_fail_db(r, rc, "route");
        return;
    }
    struct hw_route after;
    rc = find_route(r->db, node_id, canon, &after, &found);
    if (!found) {
        after = before;
        after.enabled = after.is_primary = false;
    }
    if (!admin_commit_or_fail(r, rc, "route"))
        return;
    hw_server_changed(r->s, HW_CHANGE_ROUTES, node_id);
    admin_ok(r, MHD_HTTP_OK, route_json(r, &after));
}

void admin_routes_enable(struct admin_req *r) { set_enabled(r, true); }
void admin_routes_disable(struct admin_req *r) { set_enabled(r, false); }
