#ifndef HW_SERVER_TAILNET_H
#define HW_SERVER_TAILNET_H

/* The live tailnet in memory: every node and namespace, indexed for the control
 * protocol's lookups (node key, machine key, id), each node's map streams, and the
 * changes waiting to be pushed. Loaded from the store at start; after that every change
 * is written to the store first and then applied here. Owned by the event-loop thread. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/sbuf.h"
#include "common/strmap.h"
#include "db/db.h"

struct tn_stream;                  /* a node's open map stream (server/control.c) */
struct tn_namespace;

/* What a pending delta must say about a node. */
enum {
    TN_PEER_CHANGED = 1,           /* send the whole node again (PeersChanged) */
    TN_PEER_ONLINE = 2,            /* only its online state (PeersChangedPatch) */
    TN_SELF_CHANGED = 4,           /* the node itself gets {"Node": ...} */
};

struct tn_node {
    struct hw_node row;            /* as stored */
    struct tn_namespace *ns;
    struct tn_node *ns_prev, *ns_next;
    int cap_version;               /* last MapRequest.Version */
    bool online;                   /* has at least one map stream */
    int64_t streams_gone_ms;       /* monotonic ms its last map stream closed (routes failover) */
    char **routes;                 /* enabled and advertised prefixes (AllowedIPs beyond addresses) */
    size_t n_routes;
    struct hw_sbuf *peer_json;     /* this node as peers see it, serialised; NULL = rebuild */
    struct tn_stream *streams;
    unsigned pending;              /* TN_* flags waiting for the next flush */
    struct tn_node *pending_next;  /* in its namespace's pending list */
};

/* Full maps are sent as several zstd frames: one per block of TN_CHUNK consecutive node
 * ids, compressed once and reused for every member whose own node is not in the block.
 * [0] starts with a comma, [1] does not (for the first block in a message). */
#define TN_CHUNK 32
struct tn_chunk {
    struct hw_sbuf *frame[2];
    /* The block's last member when a frame is cached (joining, leaving or changing
     * drops the frames and this with them): a full map steps past a cached block in one
     * move instead of walking its members, which at 10,000 nodes is cache misses for
     * every node of every map. */
    struct tn_node *last;
};

struct tn_namespace {
    int64_t id;
    char name[HW_NAME_MAX];
    struct tn_node *head, *tail;   /* members, ascending id */
    size_t count;
    struct tn_node *pending_head;  /* members with pending != 0 */
    int64_t *removed;              /* ids to send as PeersRemoved */
    size_t n_removed, cap_removed;
    struct tn_chunk *chunks;       /* indexed by node id / TN_CHUNK */
    size_t n_chunks;
    struct tn_namespace *next;
};

struct hw_tailnet {
    struct hw_strmap by_node_key;
    struct hw_strmap by_machine_key;
    struct tn_node **by_id;
    size_t by_id_cap;
    size_t n_nodes;
    struct tn_namespace *namespaces;
};

void hw_tailnet_init(struct hw_tailnet *tn);
void hw_tailnet_free(struct hw_tailnet *tn);
/* Replaces the whole state with what the store holds. */
int hw_tailnet_load(struct hw_tailnet *tn, struct hw_db *db);

struct tn_node *hw_tailnet_node(struct hw_tailnet *tn, int64_t id);
struct tn_node *hw_tailnet_by_node_key(struct hw_tailnet *tn, const char *node_key);
struct tn_node *hw_tailnet_by_machine_key(struct hw_tailnet *tn, const char *machine_key);
struct tn_namespace *hw_tailnet_namespace(struct hw_tailnet *tn, int64_t id);

/* Brings the node to `row` (inserting it if new): indexes, namespace membership and
 * routes follow. Marks what peers and the node itself must hear. Returns the node. */
struct tn_node *hw_tailnet_apply(struct hw_tailnet *tn, const struct hw_node *row,
                                 const struct hw_route *routes, size_t n_routes);
/* Takes the node out (deleted); its namespace hears PeersRemoved. The node's streams
 * are the caller's to close first. */
void hw_tailnet_remove(struct hw_tailnet *tn, int64_t id);
/* Queues `flags` for the node's namespace peers / the node itself. */
void hw_tailnet_mark(struct tn_node *n, unsigned flags);
/* Drops the cached peer JSON and the compressed block holding the node (the next map
 * build serialises it again). */
void hw_tailnet_invalidate(struct tn_node *n);
/* The namespace's cache slot for the block of node id (grown on demand). */
struct tn_chunk *hw_tailnet_chunk(struct tn_namespace *ns, int64_t id);

#endif
