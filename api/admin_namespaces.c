#include <microhttpd.h>
#include <stdlib.h>

#include "api/admin_internal.h"
#include "common/util.h"

static json_t *namespace_json(const struct hw_namespace *ns)
{
    return json_pack("{s:I, s:s, s:o, s:I}", "id", (json_int_t)ns->id, "name", ns->name,
                     "created_at", admin_time(ns->created_at), "node_count",
                     (json_int_t)ns->node_count);
}

/* Ends a create or rename: a name already taken is named in the answer. */
static bool commit_named(struct admin_req *r, int rc, const char *name)
{
    if (rc != HW_DB_EXISTS)
        return admin_commit_or_fail(r, rc, "namespace");
    admin_rollback(r);
    admin_fail(r, MHD_HTTP_CONFLICT, "namespace \"%s\" already exists", name);
    return false;
}

static bool valid_name(struct admin_req *r, const char *name)
{
    const char *problem = hw_dns_label_problem(name);
    if (!problem)
        return true;
    admin_fail(r, MHD_HTTP_BAD_REQUEST, "invalid namespace name \"%s\": %s", name, problem);
    return false;
}

void admin_namespaces_list(struct admin_req *r)
{
    struct hw_namespace *list = NULL;
    size_t n = 0;
    int rc = hw_db_namespace_list(r->db, &list, &n);
    if (rc != HW_DB_OK) {
        admin_fail_db(r, rc, "namespaces");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, namespace_json(&list[i]));
    free(list);
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:o}", "namespaces", arr));
}

void admin_namespaces_create(struct admin_req *r)
{
    const char *name;
    if (admin_field_string(r, "name", true, &name) < 0 || !valid_name(r, name))
        return;
    if (!admin_begin(r))
        return;
    struct hw_namespace ns;
    if (!commit_named(r, hw_db_namespace_create(r->db, name, &ns), name))
        return;
    /* No node sees a namespace until it has members: nothing to announce. */
    admin_ok(r, MHD_HTTP_CREATED, namespace_json(&ns));
}

void admin_namespaces_rename(struct admin_req *r)
{
    const char *name, *new_name;
    if (admin_field_string(r, "name", true, &name) < 0 ||
        admin_field_string(r, "new_name", true, &new_name) < 0 || !valid_name(r, new_name))
        return;
    struct hw_namespace ns;
    if (!admin_begin_in_namespace(r, name, &ns))
        return;
    int rc = hw_db_namespace_rename(r->db, ns.id, new_name);
    if (rc == HW_DB_OK)
        rc = hw_db_namespace_get(r->db, ns.id, &ns);
    if (!commit_named(r, rc, new_name))
        return;
    hw_server_changed(r->s, HW_CHANGE_NAMESPACE, ns.id);
    admin_ok(r, MHD_HTTP_OK, namespace_json(&ns));
}

void admin_namespaces_destroy(struct admin_req *r)
{
    const char *name;
    bool force = false;
    if (admin_field_string(r, "name", true, &name) < 0 || admin_field_bool(r, "force", &force) < 0)
        return;
    struct hw_namespace ns;
    if (!admin_begin_in_namespace(r, name, &ns))
        return;
    /* The ids of the nodes that go with it, so their sessions can be told after. */
    struct hw_node *nodes = NULL;
    size_t n_nodes = 0;
    int rc = HW_DB_OK;
    if (force)
        rc = hw_db_node_list(r->db, ns.id, &nodes, &n_nodes);
    if (rc == HW_DB_OK)
        rc = hw_db_namespace_destroy(r->db, ns.id, force);
    if (rc == HW_DB_CONFLICT) {
        admin_rollback(r);
        hw_node_list_free(nodes, n_nodes);
        admin_fail(r, MHD_HTTP_CONFLICT,
                   "namespace \"%s\" still has %lld node%s: move or delete them, or use --force",
                   name, (long long)ns.node_count, ns.node_count == 1 ? "" : "s");
        return;
    }
    if (!admin_commit_or_fail(r, rc, "namespace")) {
        hw_node_list_free(nodes, n_nodes);
        return;
    }
    for (size_t i = 0; i < n_nodes; i++)
        hw_server_changed(r->s, HW_CHANGE_NODE_REMOVED, nodes[i].id);
    hw_node_list_free(nodes, n_nodes);
    hw_server_changed(r->s, HW_CHANGE_NAMESPACE, ns.id);
    admin_ok(r, MHD_HTTP_OK, json_object());
}
