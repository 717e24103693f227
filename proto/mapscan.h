#ifndef HW_PROTO_MAPSCAN_H
#define HW_PROTO_MAPSCAN_H

/* A light reader of MapResponse JSON (PROTOCOL.md §5.3) for a process that keeps
 * thousands of netmaps at once (bench/swarm): one pass over the text that records the
 * node ids of Peers / PeersChanged / PeersChangedPatch / PeersRemoved / OnlineChange
 * and where each element's JSON sits in the message, and skips everything else without
 * building a tree. A full 10,000-peer map is ~10 MB of text; tc_map_update_parse turns it
 * into 10,000 tc_node structs, this reads it as bytes.
 *
 * It checks the JSON structure it walks (balanced brackets, terminated strings, number
 * and literal tokens, nesting at most TC_MAX_DEPTH) but not string escapes or UTF-8, and
 * compares member names byte for byte (Go never escapes the ASCII names tailcfg uses).
 * What a caller needs beyond ids it reads from the element's span. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tc_mapscan_item {
    int64_t id;     /* ID of a node, NodeID of a PeerChange, the key of OnlineChange */
    size_t off, len; /* the element's JSON text (the value for OnlineChange) */
};

struct tc_mapscan_list {
    struct tc_mapscan_item *v;
    size_t n, cap;
};

/* Reused from message to message: the lists keep their memory. */
struct tc_mapscan {
    bool keep_alive;
    bool has_node;
    struct tc_mapscan_item node;       /* "Node": self */
    struct tc_mapscan_list peers;      /* n > 0 => complete peer list */
    struct tc_mapscan_list peers_changed;
    struct tc_mapscan_list patches;    /* PeersChangedPatch */
    struct tc_mapscan_list online_change;
    int64_t *removed;
    size_t n_removed, cap_removed;
    bool has_packet_filter;            /* PacketFilter or PacketFilters present */
};

void tc_mapscan_init(struct tc_mapscan *s);
void tc_mapscan_free(struct tc_mapscan *s);
/* Scans one message. 0, or -1 with a one-line reason in err. */
int tc_mapscan_run(struct tc_mapscan *s, const char *json, size_t len, char *err, size_t errlen);

#endif
