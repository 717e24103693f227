#include "server/tailnet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

void hw_tailnet_init(struct hw_tailnet *tn)
{
    memset(tn, 0, sizeof *tn);
    hw_strmap_init(&tn->by_node_key);
    hw_strmap_init(&tn->by_machine_key);
}

static void free_routes(struct tn_node *n)
{
    for (size_t i = 0; i < n->n_routes; i++)
        free(n->routes[i]);
    free(n->routes);
    n->routes = NULL;
    n->n_routes = 0;
}

static void node_free(struct tn_node *n)
{
    hw_node_clear(&n->row);
    free_routes(n);
    hw_sbuf_unref(n->peer_json);
    free(n);
}

void hw_tailnet_free(struct hw_tailnet *tn)
{
    for (size_t i = 0; i < tn->by_id_cap; i++)
        if (tn->by_id[i])
            node_free(tn->by_id[i]);
    free(tn->by_id);
    for (struct tn_namespace *ns = tn->namespaces, *next; ns; ns = next) {
        next = ns->next;
        for (size_t i = 0; i < ns->n_chunks; i++)
            for (int j = 0; j < 2; j++)
                hw_sbuf_unref(ns->chunks[i].frame[j]);
        free(ns->chunks);
        free(ns->removed);
        free(ns);
    }
    hw_strmap_free(&tn->by_node_key);
    hw_strmap_free(&tn->by_machine_key);
    memset(tn, 0, sizeof *tn);
}

struct tn_node *hw_tailnet_node(struct hw_tailnet *tn, int64_t id)
{
    if (id <= 0 || (size_t)id >= tn->by_id_cap)
        return NULL;
    return tn->by_id[id];
}

struct tn_node *hw_tailnet_by_node_key(struct hw_tailnet *tn, const char *node_key)
{
    return hw_strmap_get(&tn->by_node_key, node_key);
}

struct tn_node *hw_tailnet_by_machine_key(struct hw_tailnet *tn, const char *machine_key)
{
    return hw_strmap_get(&tn->by_machine_key, machine_key);
}

struct tn_namespace *hw_tailnet_namespace(struct hw_tailnet *tn, int64_t id)
{
    for (struct tn_namespace *ns = tn->namespaces; ns; ns = ns->next)
        if (ns->id == id)
            return ns;
    return NULL;
}

static struct tn_namespace *namespace_get_or_add(struct hw_tailnet *tn, int64_t id, const char *name)
{
    struct tn_namespace *ns = hw_tailnet_namespace(tn, id);
    if (!ns) {
        ns = hw_calloc(1, sizeof *ns);
        ns->id = id;
        ns->next = tn->namespaces;
        tn->namespaces = ns;
    }
    if (name && *name)
        snprintf(ns->name, sizeof ns->name, "%s", name);
    return ns;
}

struct tn_chunk *hw_tailnet_chunk(struct tn_namespace *ns, int64_t id)
{
    size_t k = (size_t)id / TN_CHUNK;
    hw_grow_to_index((void **)&ns->chunks, &ns->n_chunks, k, sizeof *ns->chunks, 8);
    return &ns->chunks[k];
}

static void chunk_drop(struct tn_namespace *ns, int64_t id)
{
    if (!ns || (size_t)id / TN_CHUNK >= ns->n_chunks)
        return;
    struct tn_chunk *ch = &ns->chunks[(size_t)id / TN_CHUNK];
    for (int i = 0; i < 2; i++) {
        hw_sbuf_unref(ch->frame[i]);
        ch->frame[i] = NULL;
    }
    ch->last = NULL;
}

/* Members stay sorted by id because the client wants Peers sorted by ID and a sorted
 * list lets a full map be written in one pass. Ids are assigned increasing, so a new
 * node almost always belongs at the tail: search from there. */
static void ns_link(struct tn_namespace *ns, struct tn_node *n)
{
    n->ns = ns;
    chunk_drop(ns, n->row.id);
    struct tn_node *before = ns->tail;
    while (before && before->row.id > n->row.id)
        before = before->ns_prev;
    n->ns_prev = before;
    n->ns_next = before ? before->ns_next : ns->head;
    if (n->ns_next)
        n->ns_next->ns_prev = n;
    else
        ns->tail = n;
    if (before)
        before->ns_next = n;
    else
        ns->head = n;
    ns->count++;
}

static void pending_unlink(struct tn_namespace *ns, struct tn_node *n)
{
    if (!n->pending)
        return;
    for (struct tn_node **pp = &ns->pending_head; *pp; pp = &(*pp)->pending_next) {
        if (*pp == n) {
            *pp = n->pending_next;
            break;
        }
    }
    n->pending = 0;
    n->pending_next = NULL;
}

static void ns_note_removed(struct tn_namespace *ns, int64_t id)
{
    if (ns->n_removed == ns->cap_removed) {
        ns->cap_removed = ns->cap_removed ? ns->cap_removed * 2 : 16;
        int64_t *grown = realloc(ns->removed, ns->cap_removed * sizeof *grown);
        if (!grown) {
            log_error("out of memory recording a removed node");
            abort();
        }
        ns->removed = grown;
    }
    ns->removed[ns->n_removed++] = id;
}

static void ns_unlink(struct tn_node *n)
{
    struct tn_namespace *ns = n->ns;
    if (!ns)
        return;
    pending_unlink(ns, n);
    if (n->ns_prev)
        n->ns_prev->ns_next = n->ns_next;
    else
        ns->head = n->ns_next;
    if (n->ns_next)
        n->ns_next->ns_prev = n->ns_prev;
    else
        ns->tail = n->ns_prev;
    ns->count--;
    chunk_drop(ns, n->row.id);
    ns_note_removed(ns, n->row.id);
    n->ns = NULL;
    n->ns_prev = n->ns_next = NULL;
}

void hw_tailnet_mark(struct tn_node *n, unsigned flags)
{
    if (!n->ns)
        return;
    if (!n->pending) {
        n->pending_next = n->ns->pending_head;
        n->ns->pending_head = n;
    }
    n->pending |= flags;
}

void hw_tailnet_invalidate(struct tn_node *n)
{
    hw_sbuf_unref(n->peer_json);
    n->peer_json = NULL;
    chunk_drop(n->ns, n->row.id);
}

static void index_by_id(struct hw_tailnet *tn, struct tn_node *n)
{
    size_t id = (size_t)n->row.id;
    hw_grow_to_index((void **)&tn->by_id, &tn->by_id_cap, id, sizeof *tn->by_id, 256);
    tn->by_id[id] = n;
}

static void copy_row(struct hw_node *dst, const struct hw_node *src)
{
    hw_node_clear(dst);
    *dst = *src;
    dst->hostinfo_json = src->hostinfo_json ? hw_strdup(src->hostinfo_json) : NULL;
    dst->endpoints_json = src->endpoints_json ? hw_strdup(src->endpoints_json) : NULL;
    dst->tags_json = src->tags_json ? hw_strdup(src->tags_json) : NULL;
}

static void set_routes(struct tn_node *n, const struct hw_route *routes, size_t n_routes)
{
    free_routes(n);
    for (size_t i = 0; i < n_routes; i++) {
        if (routes[i].node_id != n->row.id || !routes[i].enabled || !routes[i].advertised)
            continue;
        if (!n->routes)
            n->routes = hw_calloc(n_routes, sizeof *n->routes);
        n->routes[n->n_routes++] = hw_strdup(routes[i].prefix);
    }
}

struct tn_node *hw_tailnet_apply(struct hw_tailnet *tn, const struct hw_node *row,
                                 const struct hw_route *routes, size_t n_routes)
{
    struct tn_node *n = hw_tailnet_node(tn, row->id);
    bool is_new = n == NULL;
    if (is_new) {
        n = hw_calloc(1, sizeof *n);
        n->row.id = row->id;
        index_by_id(tn, n);
        tn->n_nodes++;
    } else {
        if (strcmp(n->row.node_key, row->node_key) != 0)
            hw_strmap_del(&tn->by_node_key, n->row.node_key);
        if (strcmp(n->row.machine_key, row->machine_key) != 0)
            hw_strmap_del(&tn->by_machine_key, n->row.machine_key);
    }
    int64_t old_ns = n->ns ? n->ns->id : 0;
    copy_row(&n->row, row);
    hw_strmap_put(&tn->by_node_key, n->row.node_key, n);
    hw_strmap_put(&tn->by_machine_key, n->row.machine_key, n);
    set_routes(n, routes, n_routes);
    hw_tailnet_invalidate(n);
    if (old_ns != row->namespace_id) {
        if (n->ns)
            ns_unlink(n);
        ns_link(namespace_get_or_add(tn, row->namespace_id, row->namespace_name), n);
    }
    hw_tailnet_mark(n, TN_PEER_CHANGED | TN_SELF_CHANGED);
    return n;
}

void hw_tailnet_remove(struct hw_tailnet *tn, int64_t id)
{
    struct tn_node *n = hw_tailnet_node(tn, id);
    if (!n)
        return;
    ns_unlink(n);
    if (hw_strmap_get(&tn->by_node_key, n->row.node_key) == n)
        hw_strmap_del(&tn->by_node_key, n->row.node_key);
    if (hw_strmap_get(&tn->by_machine_key, n->row.machine_key) == n)
        hw_strmap_del(&tn->by_machine_key, n->row.machine_key);
    tn->by_id[id] = NULL;
    tn->n_nodes--;
    node_free(n);
}

int hw_tailnet_load(struct hw_tailnet *tn, struct hw_db *db)
{
    hw_tailnet_free(tn);
    hw_tailnet_init(tn);
    struct hw_namespace *spaces = NULL;
    size_t n_spaces = 0;
    if (hw_db_namespace_list(db, &spaces, &n_spaces) != HW_DB_OK)
        return -1;
    for (size_t i = 0; i < n_spaces; i++)
        namespace_get_or_add(tn, spaces[i].id, spaces[i].name);
    free(spaces);

    struct hw_node *nodes = NULL;
    size_t n_nodes = 0;
    struct hw_route *routes = NULL;
    size_t n_routes = 0;
    if (hw_db_node_list(db, 0, &nodes, &n_nodes) != HW_DB_OK)
        return -1;
    if (hw_db_route_list(db, 0, &routes, &n_routes) != HW_DB_OK) {
        hw_node_list_free(nodes, n_nodes);
        return -1;
    }
    /* Routes come ordered by node id, as do nodes: walk both once. */
    size_t r = 0;
    for (size_t i = 0; i < n_nodes; i++) {
        while (r < n_routes && routes[r].node_id < nodes[i].id)
            r++;
        size_t first = r;
        while (r < n_routes && routes[r].node_id == nodes[i].id)
            r++;
        struct tn_node *n = hw_tailnet_apply(tn, &nodes[i], routes + first, r - first);
        n->pending = 0;   /* nobody is connected yet: nothing to announce */
    }
    for (struct tn_namespace *ns = tn->namespaces; ns; ns = ns->next) {
        ns->pending_head = NULL;
        ns->n_removed = 0;
    }
    for (size_t i = 0; i < tn->by_id_cap; i++)
        if (tn->by_id[i])
            tn->by_id[i]->pending_next = NULL;
    free(routes);
    hw_node_list_free(nodes, n_nodes);
    return 0;
}
