#include "bench/lib/framecache.h"

#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "common/util.h"
#include "proto/mapscan.h"

#define DEFAULT_MAX_BYTES ((size_t)64 << 20)
/* The same bound as proto/mapframe.c's decoder, so a frame it refuses is refused here. */
#define WINDOW_LOG_MAX 24
#define ZSTD_FRAME_MAGIC 0xFD2FB528u

static const char peers_open[] = "{\"Peers\":[";
#define PEERS_OPEN_LEN (sizeof peers_open - 1)

/* One decoded block frame: its compressed bytes (the key), and what scanning its text
 * found. ids and z live in the same allocation, after the struct. */
struct entry {
    struct entry *next;
    uint64_t hash;
    size_t zlen;
    size_t text_len;
    size_t n_ids;
    bool leading_comma;
    int64_t *ids;
    uint8_t *z;
};

struct frame {
    const uint8_t *p;
    size_t len;
    size_t content;
};

struct fc_cache {
    size_t max_bytes;
    struct entry **buckets;
    size_t n_buckets, n_entries;
    ZSTD_DCtx *dctx;
    struct tc_mapscan scan;
    uint8_t *buf;
    size_t buf_cap;
    struct frame *frames;
    size_t frames_cap;
    const int64_t **ids;
    size_t *n_ids;
    size_t blocks_cap;
    struct fc_stats st;
};

struct fc_cache *fc_new(size_t max_bytes)
{
    struct fc_cache *c = hw_calloc(1, sizeof *c);
    c->max_bytes = max_bytes ? max_bytes : DEFAULT_MAX_BYTES;
    c->n_buckets = 1024;
    c->buckets = hw_calloc(c->n_buckets, sizeof *c->buckets);
    c->dctx = ZSTD_createDCtx();
    if (!c->dctx)
        abort();
    ZSTD_DCtx_setParameter(c->dctx, ZSTD_d_windowLogMax, WINDOW_LOG_MAX);
    tc_mapscan_init(&c->scan);
    return c;
}

static void evict_all(struct fc_cache *c)
{
    for (size_t b = 0; b < c->n_buckets; b++) {
        for (struct entry *e = c->buckets[b], *next; e; e = next) {
            next = e->next;
            free(e);
        }
        c->buckets[b] = NULL;
    }
    c->n_entries = 0;
    c->st.stored_bytes = 0;
}

void fc_free(struct fc_cache *c)
{
    if (!c)
        return;
    evict_all(c);
    free(c->buckets);
    ZSTD_freeDCtx(c->dctx);
    tc_mapscan_free(&c->scan);
    free(c->buf);
    free(c->frames);
    free(c->ids);
    free(c->n_ids);
    free(c);
}

const struct fc_stats *fc_stats(const struct fc_cache *c) { return &c->st; }

/* Only finds a candidate: a hit is decided by comparing every byte. A few words spread
 * over the frame, the last one being its content checksum when it carries one. */
static uint64_t frame_hash(const uint8_t *p, size_t len)
{
    uint64_t h = (uint64_t)len * 0x9E3779B97F4A7C15ull;
    if (len < 16) {
        for (size_t i = 0; i < len; i++)
            h = (h ^ p[i]) * 0x100000001B3ull;
        return h ^ (h >> 29);
    }
    size_t at[4] = {len - 8, len / 2, len / 4, len / 4 * 3};
    for (size_t i = 0; i < 4; i++)
        if (at[i] > len - 8)
            at[i] = len - 8;   /* short frames: stay inside this frame's bytes */
    for (size_t i = 0; i < 4; i++) {
        uint64_t w;
        memcpy(&w, p + at[i], 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 33;
    }
    return h;
}

static void *grow(void *p, size_t *cap, size_t want, size_t elem)
{
    if (want <= *cap)
        return p;
    size_t n = *cap ? *cap : 16;
    while (n < want)
        n *= 2;
    void *q = realloc(p, n * elem);
    if (!q)
        abort();
    *cap = n;
    return q;
}

static uint8_t *scratch(struct fc_cache *c, size_t need)
{
    if (need > c->buf_cap) {
        free(c->buf);
        c->buf_cap = need < 4096 ? 4096 : need + need / 4;
        c->buf = hw_malloc(c->buf_cap);
    }
    return c->buf;
}

/* Exactly the declared content of one frame into dst, or false. */
static bool inflate_frame(struct fc_cache *c, const struct frame *f, uint8_t *dst)
{
    size_t got = ZSTD_decompressDCtx(c->dctx, dst, f->content, f->p, f->len);
    return !ZSTD_isError(got) && got == f->content;
}

/* Nothing but the members a block may hold, when its text is read inside a Peers list:
 * no Node, no keep-alive, no other list (a text could close the array and open others). */
static bool only_peers(const struct tc_mapscan *s)
{
    return !s->has_node && !s->keep_alive && !s->has_packet_filter && s->peers_changed.n == 0 &&
           s->patches.n == 0 && s->online_change.n == 0 && s->n_removed == 0;
}

/* Inflates and scans a block frame seen for the first time: its text (after a leading
 * comma, for every block but the first) must read as a list of one or more peers, which
 * `{"Peers":[` + text + `]}` checks with the scanner the full decode uses. */
static struct entry *decode_block(struct fc_cache *c, const struct frame *f, uint64_t hash)
{
    uint8_t *buf = scratch(c, PEERS_OPEN_LEN + f->content + 3);
    uint8_t *text = buf + PEERS_OPEN_LEN;
    if (!inflate_frame(c, f, text))
        return NULL;
    bool comma = f->content > 0 && text[0] == ',';
    /* With a comma, `{"Peers":[` goes one byte earlier: its '[' replaces the comma. */
    uint8_t *doc = comma ? buf + 1 : buf;
    memcpy(doc, peers_open, PEERS_OPEN_LEN);
    memcpy(text + f->content, "]}", 3);
    size_t doc_len = (size_t)(text + f->content + 2 - doc);
    char err[160];
    if (tc_mapscan_run(&c->scan, (const char *)doc, doc_len, err, sizeof err) < 0 ||
        c->scan.peers.n == 0 || !only_peers(&c->scan))
        return NULL;
    size_t n = c->scan.peers.n;
    size_t size = sizeof(struct entry) + n * sizeof(int64_t) + f->len;
    struct entry *e = hw_malloc(size);
    e->hash = hash;
    e->zlen = f->len;
    e->text_len = f->content;
    e->n_ids = n;
    e->leading_comma = comma;
    e->ids = (int64_t *)(void *)(e + 1);
    e->z = (uint8_t *)(e->ids + n);
    for (size_t i = 0; i < n; i++)
        e->ids[i] = c->scan.peers.v[i].id;
    memcpy(e->z, f->p, f->len);

    if (c->n_entries >= c->n_buckets) {
        size_t nb = c->n_buckets * 2;
        struct entry **b2 = hw_calloc(nb, sizeof *b2);
        for (size_t b = 0; b < c->n_buckets; b++) {
            for (struct entry *x = c->buckets[b], *next; x; x = next) {
                next = x->next;
                x->next = b2[x->hash & (nb - 1)];
                b2[x->hash & (nb - 1)] = x;
            }
        }
        free(c->buckets);
        c->buckets = b2;
        c->n_buckets = nb;
    }
    e->next = c->buckets[hash & (c->n_buckets - 1)];
    c->buckets[hash & (c->n_buckets - 1)] = e;
    c->n_entries++;
    c->st.stored_bytes += size;
    return e;
}

static struct entry *lookup(struct fc_cache *c, const struct frame *f, uint64_t hash)
{
    for (struct entry *e = c->buckets[hash & (c->n_buckets - 1)]; e; e = e->next)
        if (e->hash == hash && e->zlen == f->len && memcmp(e->z, f->p, f->len) == 0)
            return e;
    return NULL;
}

/* The payload's frames into c->frames: every one a regular zstd frame that declares its
 * size (the full decode's one-pass case), their sum within max_out. */
static enum fc_result split(struct fc_cache *c, const uint8_t *p, size_t len, size_t max_out,
                            size_t *n_out)
{
    size_t n = 0;
    unsigned long long total = 0;
    while (len > 0) {
        size_t flen = ZSTD_findFrameCompressedSize(p, len);
        if (n == 0 && (ZSTD_isError(flen) || flen >= len))
            return FC_SINGLE;
        if (ZSTD_isError(flen) || flen > len || flen < 4)
            return FC_FALLBACK;
        uint32_t magic = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        unsigned long long content = ZSTD_getFrameContentSize(p, flen);
        if (magic != ZSTD_FRAME_MAGIC || content == ZSTD_CONTENTSIZE_UNKNOWN ||
            content == ZSTD_CONTENTSIZE_ERROR)
            return FC_FALLBACK;
        total += content;
        if (total > max_out)
            return FC_FALLBACK;
        c->frames = grow(c->frames, &c->frames_cap, n + 1, sizeof *c->frames);
        c->frames[n++] = (struct frame){p, flen, (size_t)content};
        p += flen;
        len -= flen;
    }
    *n_out = n;
    return n >= 3 ? FC_MAP : FC_FALLBACK;
}

/* The head frame `{...,"Peers":[` with the close frame `]}` after it must read as a
 * map with the recipient's Node and nothing in it that the peer blocks could change.
 * The '[' must open the top-level Peers member: `]}` closing the document proves it
 * opens a top-level member, and an unescaped quote (after ',' or '{') before Peers
 * proves that member's name is Peers. */
static bool read_head(struct fc_cache *c, const struct frame *head, const struct frame *close,
                      int64_t *node_id)
{
    static const char tail[] = "\"Peers\":[";
    const size_t tail_len = sizeof tail - 1;
    uint8_t two[2];
    if (close->content != 2 || !inflate_frame(c, close, two) || two[0] != ']' || two[1] != '}')
        return false;
    uint8_t *buf = scratch(c, head->content + 3);
    if (head->content < tail_len + 2 || !inflate_frame(c, head, buf))
        return false;
    const uint8_t *end = buf + head->content;
    if (memcmp(end - tail_len, tail, tail_len) != 0 ||
        (end[-(ptrdiff_t)tail_len - 1] != ',' && end[-(ptrdiff_t)tail_len - 1] != '{'))
        return false;
    memcpy(buf + head->content, "]}", 3);
    char err[160];
    struct tc_mapscan *s = &c->scan;
    if (tc_mapscan_run(s, (const char *)buf, head->content + 2, err, sizeof err) < 0 || !s->has_node ||
        s->keep_alive || s->peers.n != 0 || s->peers_changed.n != 0 || s->patches.n != 0 ||
        s->online_change.n != 0 || s->n_removed != 0)
        return false;
    *node_id = s->node.id;
    return true;
}

enum fc_result fc_read(struct fc_cache *c, const uint8_t *payload, size_t len, size_t max_out,
                       struct fc_map *out)
{
    /* Emptied between messages only: entries of the message being read stay valid. */
    if (c->st.stored_bytes > c->max_bytes) {
        evict_all(c);
        c->st.evictions++;
    }
    size_t n = 0;
    enum fc_result r = split(c, payload, len, max_out, &n);
    if (r != FC_MAP) {
        c->st.fallbacks += r == FC_FALLBACK;
        return r;
    }
    int64_t node_id;
    if (!read_head(c, &c->frames[0], &c->frames[n - 1], &node_id)) {
        c->st.fallbacks++;
        return FC_FALLBACK;
    }
    size_t n_blocks = n - 2, n_peers = 0;
    size_t cap = c->blocks_cap;
    c->ids = grow(c->ids, &c->blocks_cap, n_blocks, sizeof *c->ids);
    c->n_ids = grow(c->n_ids, &cap, n_blocks, sizeof *c->n_ids);
    for (size_t b = 0; b < n_blocks; b++) {
        const struct frame *f = &c->frames[b + 1];
        uint64_t hash = frame_hash(f->p, f->len);
        struct entry *e = lookup(c, f, hash);
        if (e) {
            c->st.hits++;
            c->st.hit_bytes += e->text_len;
            c->st.hit_zbytes += e->zlen;
        } else {
            e = decode_block(c, f, hash);
            if (!e) {
                c->st.fallbacks++;
                return FC_FALLBACK;
            }
            c->st.misses++;
        }
        /* The first block continues `"Peers":[`, every later one starts with its comma. */
        if (e->leading_comma != (b > 0)) {
            c->st.fallbacks++;
            return FC_FALLBACK;
        }
        c->ids[b] = e->ids;
        c->n_ids[b] = e->n_ids;
        n_peers += e->n_ids;
    }
    c->st.maps++;
    *out = (struct fc_map){.node_id = node_id, .n_blocks = n_blocks, .ids = c->ids,
                           .n_ids = c->n_ids, .n_peers = n_peers};
    return FC_MAP;
}
