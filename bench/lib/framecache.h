#ifndef HW_BENCH_FRAMECACHE_H
#define HW_BENCH_FRAMECACHE_H

/* A cache of decoded map frames for bench/swarm, keyed by the exact compressed bytes.
 *
 * headwater sends a full map with zstd as one message of several frames: a head frame
 * `{...,"Peers":[` (per recipient: it holds the recipient's Node), one frame per block of
 * 32 node ids, most of them compressed once and sent byte for byte to every recipient
 * outside that block, and a shared closing frame `]}` (server/control.c push_full_map,
 * push_full_map_policy). A real tailnet inflates each copy on its own machine; a swarm of
 * 10,000 nodes in one process would inflate and scan the same block 10,000 times.
 *
 * fc_read splits such a payload into its frames, inflates and checks the head and the
 * close every time, and for each block frame compares the whole compressed frame with a
 * stored copy (a cheap hash finds the candidate, memcmp decides: a hit is an exact byte
 * match); a hit reuses the node ids recorded when those bytes were first inflated and
 * scanned. Whatever does not have exactly the expected shape is left to the caller's
 * usual decoding, so the cache accepts nothing the full decode would not, with the same
 * result: the concatenation of the frames' texts scanned as one MapResponse. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fc_cache;

struct fc_stats {
    uint64_t hits, misses;       /* block frames found / inflated, scanned and stored */
    uint64_t hit_bytes;          /* JSON bytes of the hits: inflating and scanning skipped */
    uint64_t hit_zbytes;         /* compressed bytes of the hits (compared, not inflated) */
    uint64_t maps;               /* full maps read through the cache */
    uint64_t fallbacks;          /* multi-frame payloads left to the full decode */
    uint64_t evictions;          /* times the cache was emptied for being full */
    uint64_t stored_bytes;       /* held now */
};

/* One full map read through the cache. Valid until the next fc_read. */
struct fc_map {
    int64_t node_id;             /* the recipient's own Node.ID */
    size_t n_blocks;
    const int64_t *const *ids;   /* ids[b][0..n_ids[b]): the peers of block frame b, in order */
    const size_t *n_ids;
    size_t n_peers;
};

enum fc_result {
    FC_SINGLE,                   /* one frame (deltas, keep-alives): decode it as usual */
    FC_FALLBACK,                 /* several frames, not the expected shape: decode as usual */
    FC_MAP,                      /* read; *out filled */
};

/* max_bytes: stored frames and ids at most (then it is emptied); 0 means 64 MiB. */
struct fc_cache *fc_new(size_t max_bytes);
void fc_free(struct fc_cache *c);

/* Reads one message payload (one or more zstd frames; max_out = the JSON size limit the
 * full decode applies). Only FC_MAP fills *out. */
enum fc_result fc_read(struct fc_cache *c, const uint8_t *payload, size_t len, size_t max_out,
                       struct fc_map *out);

const struct fc_stats *fc_stats(const struct fc_cache *c);

#endif
