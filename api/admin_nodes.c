#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/admin_internal.h"
#include "common/util.h"
#include "server/control.h"
#include "server/nodes.h"
#include "server/policy.h"

/* routes: the node's rows (any order, other nodes' rows skipped). */
static json_t *node_json(struct admin_req *r, const struct hw_node *n, const struct hw_route *routes,
                         size_t n_routes)
{
    json_t *ips = json_array();
    if (n->ipv4[0])
        json_array_append_new(ips, json_string(n->ipv4));
    if (n->ipv6[0])
        json_array_append_new(ips, json_string(n->ipv6));
    json_t *advertised = json_array(), *enabled = json_array(), *primary = json_array();
    for (size_t i = 0; i < n_routes; i++) {
        if (routes[i].node_id != n->id)
            continue;
        if (routes[i].advertised)
            json_array_append_new(advertised, json_string(routes[i].prefix));
        /* The admin's approval, kept even while the node stops advertising the route,
         * as the route objects show it. */
        if (routes[i].enabled)
            json_array_append_new(enabled, json_string(routes[i].prefix));
        /* The subnet routes it serves now (Headscale's "Serving (Primary)"). */
        if (routes[i].enabled && routes[i].advertised && r->s->control &&
            hw_control_route_is_primary(r->s->control, n->id, routes[i].prefix))
            json_array_append_new(primary, json_string(routes[i].prefix));
    }
    int64_t now = hw_now();
    return json_pack(
        "{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:b, s:o, s:b, s:o, s:o, s:b, s:o, s:o,"
        " s:{s:o, s:o, s:o}}",
        "id", (json_int_t)n->id, "name", admin_str(n->given_name),
        "hostname", admin_str(n->hostname), "namespace", admin_str(n->namespace_name),
        "machine_key", admin_str(n->machine_key), "node_key", admin_str(n->node_key),
        "disco_key", admin_str(n->disco_key), "ip_addresses", ips, "ephemeral", n->ephemeral,
        "tags", admin_json_array(n->tags_json),
        "online", r->s->control ? hw_control_node_online(r->s->control, n->id) : 0,
        "last_seen", admin_time(n->last_seen), "expiry", admin_time(n->expiry),
        "expired", n->expiry != 0 && n->expiry <= now,
        "created_at", admin_time(n->created_at),
        "register_method", admin_str(n->register_method),
        "routes", "advertised", advertised, "enabled", enabled, "primary", primary);
}

/* Answers with the node as stored now (after a change, inside or after its commit). */
static void answer_node(struct admin_req *r, unsigned status, int64_t id)
{
    struct hw_node n;
    int rc = hw_db_node_get(r->db, id, &n);
    if (rc != HW_DB_OK) {
        char what[40];
        snprintf(what, sizeof what, "node %lld", (long long)id);
        admin_fail_db(r, rc, what);
        return;
    }
    struct hw_route *routes = NULL;
    size_t n_routes = 0;
    rc = hw_db_route_list(r->db, id, &routes, &n_routes);
    if (rc != HW_DB_OK) {
        hw_node_clear(&n);
        admin_fail_db(r, rc, "routes");
        return;
    }
    admin_ok(r, status, node_json(r, &n, routes, n_routes));
    free(routes);
    hw_node_clear(&n);
}

/* Opens the transaction of a change to one node and reads the node the "id" field names;
 * when that fails it has answered (400/404) and rolled back. */
static bool begin_node_change(struct admin_req *r, int64_t *id, int64_t *namespace_id)
{
    struct hw_node n;
    if (!admin_begin(r))
        return false;
    if (admin_field_id(r, "id", true, id) < 0 || !admin_node_by_id(r, *id, &n)) {
        admin_rollback(r);
        return false;
    }
    if (namespace_id)
        *namespace_id = n.namespace_id;
    hw_node_clear(&n);
    return true;
}

/* Ends that change on the result rc of its write: commits, tells the peers what happened
 * to the node, and answers with the node as stored now ({} once it is removed). */
static void finish_node_change(struct admin_req *r, int rc, enum hw_change_kind kind, int64_t id)
{
    if (!admin_commit_or_fail(r, rc, "node"))
        return;
    hw_server_changed(r->s, kind, id);
    if (kind == HW_CHANGE_NODE_REMOVED)
        admin_ok(r, MHD_HTTP_OK, json_object());
    else
        answer_node(r, MHD_HTTP_OK, id);
}

void admin_nodes_list(struct admin_req *r)
{
    const char *ns_name = admin_query(r, "namespace");
    struct hw_namespace ns = {0};
    if (ns_name && !admin_namespace_by_name(r, ns_name, &ns))
        return;
    struct hw_node *nodes = NULL;
    size_t n = 0;
    int rc = hw_db_node_list(r->db, ns.id, &nodes, &n);
    if (rc != HW_DB_OK) {
        admin_fail_db(r, rc, "nodes");
        return;
    }
    struct hw_route *routes = NULL;
    size_t n_routes = 0;
    rc = hw_db_route_list(r->db, 0, &routes, &n_routes);
    if (rc != HW_DB_OK) {
        hw_node_list_free(nodes, n);
        admin_fail_db(r, rc, "routes");
        return;
    }
    json_t *arr = json_array();
    /* Both lists are ordered by node id: walk them together. */
    size_t ri = 0;
    for (size_t i = 0; i < n; i++) {
        while (ri < n_routes && routes[ri].node_id < nodes[i].id)
            ri++;
        size_t end = ri;
        while (end < n_routes && routes[end].node_id == nodes[i].id)
            end++;
        json_array_append_new(arr, node_json(r, &nodes[i], routes + ri, end - ri));
        ri = end;
    }
    free(routes);
    hw_node_list_free(nodes, n);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:o}", "nodes", arr));
}

void admin_nodes_register(struct admin_req *r)
{
    const char *ns_name, *key;
    if (admin_field_string(r, "namespace", true, &ns_name) < 0 ||
        admin_field_string(r, "key", true, &key) < 0)
        return;
    struct hw_namespace ns;
    if (!admin_begin_in_namespace(r, ns_name, &ns))
        return;
    struct hw_pending p;
    int rc = hw_db_pending_get(r->db, key, &p);
    if (rc != HW_DB_OK) {
        admin_rollback(r);
        if (rc == HW_DB_NOT_FOUND)
            admin_fail(r, MHD_HTTP_NOT_FOUND, "registration key \"%s\" not found: copy it from the "
                       "page the device's login URL shows, or run tailscale up again", key);
        else
            admin_fail_db(r, rc, "registration");
        return;
    }
    bool expired = p.expires_at != 0 && p.expires_at <= hw_now();
    /* A machine key that is already a node re-logs in: it keeps its id. */
    struct hw_node before;
    bool existed = hw_db_node_get_by_machine_key(r->db, p.machine_key, &before) == HW_DB_OK;
    hw_pending_clear(&p);
    if (expired) {
        admin_rollback(r);
        if (existed)
            hw_node_clear(&before);
        admin_fail(r, MHD_HTTP_NOT_FOUND, "registration key \"%s\" has expired: run tailscale up "
                   "on the device again", key);
        return;
    }

    struct hw_node node;
    char err[256] = "";
    rc = hw_nodes_register_pending(r->db, r->s->cfg, key, ns.id, &node, err, sizeof err);
    if (rc != 0) {
        admin_rollback(r);
        if (existed)
            hw_node_clear(&before);
        /* The registration and namespace were checked above, so what is left is a rule
         * (address range full) or the store; the function does not say which. */
        admin_fail(r, MHD_HTTP_CONFLICT, "cannot register node: %s",
                   err[0] ? err : hw_db_errmsg(r->db));
        return;
    }
    int64_t id = node.id;
    enum hw_change_kind kind = HW_CHANGE_NODE_ADDED;
    if (existed)
        kind = before.namespace_id != node.namespace_id ? HW_CHANGE_NODE_MOVED
                                                         : HW_CHANGE_NODE_UPDATED;
    hw_node_clear(&node);
    if (existed)
        hw_node_clear(&before);
    if (!admin_commit(r))
        return;
    hw_server_changed(r->s, kind, id);
    answer_node(r, MHD_HTTP_CREATED, id);
}

void admin_nodes_delete(struct admin_req *r)
{
    int64_t id;
    if (begin_node_change(r, &id, NULL))
        finish_node_change(r, hw_db_node_delete(r->db, id), HW_CHANGE_NODE_REMOVED, id);
}

void admin_nodes_expire(struct admin_req *r)
{
    int64_t id;
    if (begin_node_change(r, &id, NULL))
        finish_node_change(r, hw_db_node_set_expiry(r->db, id, hw_now()), HW_CHANGE_NODE_UPDATED,
                           id);
}

void admin_nodes_rename(struct admin_req *r)
{
    const char *new_name;
    if (admin_field_string(r, "new_name", true, &new_name) < 0)
        return;
    const char *problem = hw_dns_label_problem(new_name);
    if (problem) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "invalid node name \"%s\": %s", new_name, problem);
        return;
    }
    int64_t id;
    if (!begin_node_change(r, &id, NULL))
        return;
    int rc = hw_db_given_name_taken(r->db, new_name, id) ? HW_DB_EXISTS
                                                         : hw_db_node_set_given_name(r->db, id, new_name);
    if (rc == HW_DB_EXISTS) {
        admin_rollback(r);
        admin_fail(r, MHD_HTTP_CONFLICT, "node name \"%s\" is already taken by another node",
                   new_name);
        return;
    }
    finish_node_change(r, rc, HW_CHANGE_NODE_UPDATED, id);
}

void admin_nodes_move(struct admin_req *r)
{
    const char *ns_name;
    int64_t id, old_ns;
    if (admin_field_string(r, "namespace", true, &ns_name) < 0 ||
        !begin_node_change(r, &id, &old_ns))
        return;
    struct hw_namespace ns;
    if (!admin_namespace_by_name(r, ns_name, &ns)) {
        admin_rollback(r);
        return;
    }
    if (ns.id == old_ns) {
        admin_rollback(r);
        answer_node(r, MHD_HTTP_OK, id);
        return;
    }
    finish_node_change(r, hw_db_node_set_namespace(r->db, id, ns.id), HW_CHANGE_NODE_MOVED, id);
}

void admin_nodes_tag(struct admin_req *r)
{
    char *tags_json = NULL;
    int64_t id;
    if (admin_field_tags(r, "tags", true, &tags_json) < 0)
        return;
    /* The admin is not bound by tagOwners, but under a policy a tag it does not list
     * matches no rule: refuse it rather than leave the node cut off unnoticed. */
    const struct hw_policy *policy = r->s->control ? hw_control_policy(r->s->control) : NULL;
    json_t *tags = policy && tags_json ? json_loads(tags_json, 0, NULL) : NULL;
    for (size_t i = 0; i < json_array_size(tags); i++) {
        const char *tag = json_string_value(json_array_get(tags, i));
        if (!hw_policy_tag_defined(policy, tag)) {
            admin_fail(r, MHD_HTTP_BAD_REQUEST,
                       "tag %s is not defined in the policy's tagOwners: add it there first", tag);
            json_decref(tags);
            free(tags_json);
            return;
        }
    }
    json_decref(tags);
    if (!begin_node_change(r, &id, NULL)) {
        free(tags_json);
        return;
    }
    int rc = hw_db_node_set_tags(r->db, id, tags_json);
    /* As in Tailscale: a tagged node is owned by its tags, and its key does not expire
     * (an admin can still `hwctl nodes expire` it). */
    if (rc == HW_DB_OK && tags_json && strcmp(tags_json, "[]") != 0)
        rc = hw_db_node_set_expiry(r->db, id, 0);
    free(tags_json);
    finish_node_change(r, rc, HW_CHANGE_NODE_UPDATED, id);
}
