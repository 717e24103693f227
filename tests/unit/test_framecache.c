/* bench/lib/framecache: full maps in headwater's multi-frame form read through the cache
 * give what the full decode gives; a frame differing in one byte is never a hit; every
 * unexpected shape is left to the full decode, which fails a malformed stream as before. */
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "bench/lib/framecache.h"
#include "common/sbuf.h"
#include "common/util.h"
#include "proto/mapframe.h"
#include "proto/mapscan.h"
#include "tests/unit/testlib.h"

static struct tc_zenc *g_zenc;

struct payload {
    uint8_t *p;
    size_t len;
};

static void append(struct payload *pl, const void *data, size_t len)
{
    pl->p = realloc(pl->p, pl->len + len + 1);
    memcpy(pl->p + pl->len, data, len);
    pl->len += len;
}

/* One zstd frame of text, as the server makes them (content size and checksum). */
static void append_frame(struct payload *pl, const char *text)
{
    char err[160];
    struct hw_sbuf *f = tc_zstd_frame(g_zenc, text, strlen(text), 0, err, sizeof err);
    CHECK(f != NULL, "%s", err);
    append(pl, f->data, f->len);
    hw_sbuf_unref(f);
}

/* A payload of one frame per text. */
static struct payload frames(const char *const *texts)
{
    struct payload pl = {0};
    for (size_t i = 0; texts[i]; i++)
        append_frame(&pl, texts[i]);
    return pl;
}

static char *head_for(int64_t self)
{
    char *h = malloc(200);
    snprintf(h, 200, "{\"Node\":{\"ID\":%lld,\"Name\":\"n%lld.\"},\"Domain\":\"x\",\"Peers\":[",
             (long long)self, (long long)self);
    return h;
}

/* A block of ids [first, last], with or without the leading comma of a later block. */
static char *block(int first, int last, bool comma)
{
    size_t cap = 64 + (size_t)(last - first + 1) * 200;
    char *t = malloc(cap);
    size_t pos = 0;
    for (int id = first; id <= last; id++)
        pos += (size_t)snprintf(t + pos, cap - pos,
                                "%s{\"ID\":%d,\"Name\":\"peer-%d.\",\"Key\":\"nodekey:%064d\",\"Online\":true}",
                                comma || id > first ? "," : "", id, id, id);
    return t;
}

/* The full decode's view of a payload: node id and peer ids, or -1. */
static int full_decode(const struct payload *pl, int64_t *node, int64_t *ids, size_t *n)
{
    uint8_t *json;
    size_t jlen;
    char err[200];
    if (tc_zstd_decompress(pl->p, pl->len, TC_MAPFRAME_MAX, &json, &jlen, err, sizeof err) < 0)
        return -1;
    struct tc_mapscan s;
    tc_mapscan_init(&s);
    int rc = tc_mapscan_run(&s, (const char *)json, jlen, err, sizeof err);
    if (rc == 0) {
        *node = s.node.id;
        *n = s.peers.n;
        for (size_t i = 0; i < s.peers.n; i++)
            ids[i] = s.peers.v[i].id;
    }
    tc_mapscan_free(&s);
    free(json);
    return rc;
}

static void check_same_as_full_decode(const struct fc_map *m, const struct payload *pl)
{
    int64_t node = 0, ids[512];
    size_t n = 0;
    CHECK(full_decode(pl, &node, ids, &n) == 0, "the full decode reads the payload");
    CHECK_INT(m->node_id, node);
    CHECK_INT(m->n_peers, n);
    size_t k = 0;
    for (size_t b = 0; b < m->n_blocks; b++)
        for (size_t i = 0; i < m->n_ids[b] && k < n; i++, k++)
            CHECK(m->ids[b][i] == ids[k], "peer %zu: %lld, the full decode %lld", k,
                  (long long)m->ids[b][i], (long long)ids[k]);
}

/* The map node `self` (in block 0) gets of peers 1..96 without itself. */
static struct payload map_for(int self)
{
    char *head = head_for(self);
    char *b0 = block(1, self - 1, false), *b0b = block(self + 1, 31, true);
    char *b0all = malloc(strlen(b0) + strlen(b0b) + 1);
    strcpy(b0all, b0);
    strcat(b0all, self > 1 ? b0b : b0b + 1);
    char *b1 = block(32, 63, true), *b2 = block(64, 96, true);
    const char *texts[] = {head, b0all, b1, b2, "]}", NULL};
    struct payload pl = frames(texts);
    free(head);
    free(b0);
    free(b0b);
    free(b0all);
    free(b1);
    free(b2);
    return pl;
}

static void shared_blocks_are_hits_with_the_full_decodes_result(void)
{
    struct fc_cache *c = fc_new(0);
    struct fc_map m;
    struct payload a = map_for(5), b = map_for(9);
    CHECK_INT(fc_read(c, a.p, a.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    check_same_as_full_decode(&m, &a);
    CHECK_INT(m.n_peers, 95);
    CHECK_INT(fc_stats(c)->misses, 3);
    CHECK_INT(fc_stats(c)->hits, 0);
    /* node 9: its own block differs, the other two are the same bytes */
    CHECK_INT(fc_read(c, b.p, b.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    check_same_as_full_decode(&m, &b);
    CHECK_INT(m.node_id, 9);
    CHECK_INT(fc_stats(c)->misses, 4);
    CHECK_INT(fc_stats(c)->hits, 2);
    CHECK(fc_stats(c)->hit_bytes > 0 && fc_stats(c)->hit_zbytes > 0, "bytes counted");
    /* the same message again: every block a hit, the head read again */
    CHECK_INT(fc_read(c, a.p, a.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    check_same_as_full_decode(&m, &a);
    CHECK_INT(fc_stats(c)->hits, 5);
    CHECK_INT(fc_stats(c)->maps, 3);
    free(a.p);
    free(b.p);
    fc_free(c);
}

/* The offsets of the 4 bytes frame_hash does not read in a frame of len bytes: one
 * of them, changed, keeps the hash, so only the byte comparison can tell. */
static size_t unhashed_offset(size_t len)
{
    for (size_t i = 12; i + 8 < len; i++) {
        size_t at[4] = {len - 8, len / 2, len / 4, len / 4 * 3};
        bool covered = false;
        for (int k = 0; k < 4; k++)
            covered = covered || (i >= at[k] && i < at[k] + 8);
        if (!covered)
            return i;
    }
    return 0;
}

static void one_byte_changed_is_a_miss(void)
{
    struct fc_cache *c = fc_new(0);
    struct fc_map m;
    /* Two versions of a block that differ in one id: a miss, and the new id. */
    const char *v1[] = {"{\"Node\":{\"ID\":1},\"Peers\":[", "{\"ID\":40,\"Name\":\"a\"}", ",{\"ID\":77}", "]}", NULL};
    const char *v2[] = {"{\"Node\":{\"ID\":1},\"Peers\":[", "{\"ID\":41,\"Name\":\"a\"}", ",{\"ID\":77}", "]}", NULL};
    struct payload p1 = frames(v1), p2 = frames(v2);
    CHECK_INT(fc_read(c, p1.p, p1.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    CHECK_INT(m.ids[0][0], 40);
    CHECK_INT(fc_read(c, p2.p, p2.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    CHECK_INT(m.ids[0][0], 41);
    check_same_as_full_decode(&m, &p2);
    CHECK_INT(fc_stats(c)->misses, 3);
    CHECK_INT(fc_stats(c)->hits, 1);

    /* A stored block with one byte changed where the hash does not look: not a hit;
     * inflating it fails (zstd's checksum), so the message is left to the full decode,
     * which fails as well. */
    struct payload big = map_for(3);
    CHECK_INT(fc_read(c, big.p, big.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    uint64_t hits = fc_stats(c)->hits, misses = fc_stats(c)->misses;
    size_t head_len = ZSTD_findFrameCompressedSize(big.p, big.len);
    size_t b0_len = ZSTD_findFrameCompressedSize(big.p + head_len, big.len - head_len);
    uint8_t *b1 = big.p + head_len + b0_len;
    size_t b1_len = ZSTD_findFrameCompressedSize(b1, big.len - head_len - b0_len);
    size_t at = unhashed_offset(b1_len);
    CHECK(at > 0, "an unhashed byte in a frame of %zu", b1_len);
    b1[at] ^= 0x20;
    CHECK(fc_read(c, big.p, big.len, TC_MAPFRAME_MAX, &m) != FC_MAP, "a corrupted block is not read");
    CHECK_INT(fc_stats(c)->hits, hits + 1); /* block 0 still matched, block 1 did not */
    CHECK_INT(fc_stats(c)->misses, misses);
    int64_t node, ids[512];
    size_t n;
    CHECK(full_decode(&big, &node, ids, &n) < 0, "the full decode refuses it");
    free(p1.p);
    free(p2.p);
    free(big.p);
    fc_free(c);
}

static enum fc_result read_texts(struct fc_cache *c, const char *const *texts)
{
    struct payload pl = frames(texts);
    struct fc_map m;
    enum fc_result r = fc_read(c, pl.p, pl.len, TC_MAPFRAME_MAX, &m);
    free(pl.p);
    return r;
}

static void unexpected_shapes_are_left_to_the_full_decode(void)
{
    struct fc_cache *c = fc_new(0);
    const char *head = "{\"Node\":{\"ID\":1},\"Peers\":[";
    const char *ok[] = {head, "{\"ID\":2}", ",{\"ID\":3}", "]}", NULL};
    CHECK_INT(read_texts(c, ok), FC_MAP);
    const char *single[] = {"{\"Node\":{\"ID\":1},\"Peers\":[{\"ID\":2}]}", NULL};
    CHECK_INT(read_texts(c, single), FC_SINGLE);
    const struct {
        const char *why;
        const char *texts[6];
    } bad[] = {
        {"two frames", {head, "{\"ID\":2}]}", NULL}},
        {"first block with a comma", {head, ",{\"ID\":2}", "]}", NULL}},
        {"later block without one", {head, "{\"ID\":2}", "{\"ID\":3}", "]}", NULL}},
        {"close is not ]}", {head, "{\"ID\":2}", "]} ", NULL}},
        {"close split", {head, "{\"ID\":2}", "]", "}", NULL}},
        {"head without Node", {"{\"Domain\":\"x\",\"Peers\":[", "{\"ID\":2}", "]}", NULL}},
        {"head not ending in Peers", {"{\"Node\":{\"ID\":1},\"X\":[", "{\"ID\":2}", "]}", NULL}},
        {"Peers inside a member name", {"{\"Node\":{\"ID\":1},\"a\\\"Peers\":[", "{\"ID\":2}", "]}", NULL}},
        {"head with peers already", {"{\"Node\":{\"ID\":1},\"Peers\":[{\"ID\":5}],\"Peers\":[", "{\"ID\":2}", "]}", NULL}},
        {"keep-alive head", {"{\"KeepAlive\":true,\"Node\":{\"ID\":1},\"Peers\":[", "{\"ID\":2}", "]}", NULL}},
        {"empty block", {head, "", "]}", NULL}},
        {"block closing the list", {head, "{\"ID\":2}],\"Node\":{\"ID\":9},\"Peers\":[{\"ID\":3}", "]}", NULL}},
        {"block element without ID", {head, "{\"ID\":2},{\"X\":1}", "]}", NULL}},
        {"block not JSON", {head, "{\"ID\":2", "]}", NULL}},
        {"block with a bare value", {head, "{\"ID\":2},7", "]}", NULL}},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++)
        CHECK(read_texts(c, bad[i].texts) == FC_FALLBACK, "%s: must fall back", bad[i].why);

    /* A frame that does not declare its size (the full decode streams those). */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    struct payload pl = {0};
    append_frame(&pl, head);
    uint8_t z[256];
    ZSTD_inBuffer in = {"{\"ID\":2}", 8, 0};
    ZSTD_outBuffer out = {z, sizeof z, 0};
    CHECK(ZSTD_compressStream2(cc, &out, &in, ZSTD_e_end) == 0, "streamed frame");
    CHECK(ZSTD_getFrameContentSize(z, out.pos) == ZSTD_CONTENTSIZE_UNKNOWN, "no declared size");
    append(&pl, z, out.pos);
    append_frame(&pl, "]}");
    struct fc_map m;
    CHECK_INT(fc_read(c, pl.p, pl.len, TC_MAPFRAME_MAX, &m), FC_FALLBACK);
    /* ...and a limit below the declared sizes */
    struct payload big = map_for(4);
    CHECK_INT(fc_read(c, big.p, big.len, 1000, &m), FC_FALLBACK);
    /* ...and trailing bytes after the last frame */
    append(&big, "xx", 2);
    CHECK_INT(fc_read(c, big.p, big.len, TC_MAPFRAME_MAX, &m), FC_FALLBACK);
    ZSTD_freeCCtx(cc);
    free(pl.p);
    free(big.p);
    CHECK(fc_stats(c)->fallbacks >= HW_ARRAY_LEN(bad) + 3, "fallbacks counted");
    fc_free(c);
}

static void a_full_cache_is_emptied_between_messages(void)
{
    struct fc_cache *c = fc_new(1);
    struct fc_map m;
    struct payload a = map_for(5);
    CHECK_INT(fc_read(c, a.p, a.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    CHECK_INT(fc_read(c, a.p, a.len, TC_MAPFRAME_MAX, &m), FC_MAP);
    check_same_as_full_decode(&m, &a);
    CHECK_INT(fc_stats(c)->evictions, 1);
    CHECK_INT(fc_stats(c)->misses, 6);
    CHECK_INT(fc_stats(c)->hits, 0);
    free(a.p);
    fc_free(c);
}

/* The swarm's wiring in small: a map stream whose decoder hands every payload to the
 * cache first. Good maps go through the cache; a corrupted one goes to the full decode
 * and fails the stream, as it does without the cache. */
struct stream {
    struct fc_cache *c;
    int cached, inflated;
    int64_t last_node;
};

static int stream_hook(const uint8_t *payload, size_t len, void *arg)
{
    struct stream *s = arg;
    struct fc_map m;
    if (fc_read(s->c, payload, len, TC_MAPFRAME_MAX, &m) != FC_MAP)
        return TC_MAPDEC_PAYLOAD_INFLATE;
    s->cached++;
    s->last_node = m.node_id;
    return TC_MAPDEC_PAYLOAD_DONE;
}

static int stream_message(const char *json, size_t len, void *arg)
{
    struct stream *s = arg;
    s->inflated++;
    return 0;
}

static void append_message(struct payload *body, const struct payload *pl)
{
    uint8_t prefix[4];
    tc_mapframe_put_length(prefix, pl->len);
    append(body, prefix, 4);
    append(body, pl->p, pl->len);
}

static void a_corrupted_map_still_fails_the_stream(void)
{
    struct stream s = {.c = fc_new(0)};
    struct tc_zdec *z = tc_zdec_new();
    struct tc_mapdec *d = tc_mapdec_new_shared(z, 0);
    tc_mapdec_set_payload_hook(d, stream_hook);
    struct payload a = map_for(5), b = map_for(6), body = {0};
    const char *delta[] = {"{\"PeersRemoved\":[7]}", NULL};
    struct payload dl = frames(delta);
    append_message(&body, &a);
    append_message(&body, &dl);
    append_message(&body, &b);
    CHECK_INT(tc_mapdec_feed(d, body.p, body.len, stream_message, &s), 0);
    CHECK_INT(s.cached, 2);
    CHECK_INT(s.inflated, 1);
    CHECK_INT(s.last_node, 6);
    CHECK_INT(fc_stats(s.c)->hits, 2);
    /* the same map with a byte of a stored block changed */
    size_t head_len = ZSTD_findFrameCompressedSize(a.p, a.len);
    size_t b0_len = ZSTD_findFrameCompressedSize(a.p + head_len, a.len - head_len);
    a.p[head_len + b0_len + unhashed_offset(ZSTD_findFrameCompressedSize(a.p + head_len + b0_len,
                                                                           a.len - head_len - b0_len))] ^= 1;
    free(body.p);
    body = (struct payload){0};
    append_message(&body, &a);
    CHECK_INT(tc_mapdec_feed(d, body.p, body.len, stream_message, &s), -1);
    CHECK(tc_mapdec_error(d) && strstr(tc_mapdec_error(d), "zstd"), "error: %s",
          tc_mapdec_error(d) ? tc_mapdec_error(d) : "none");
    CHECK_INT(s.cached, 2);
    CHECK_INT(s.inflated, 1);
    tc_mapdec_free(d);
    tc_zdec_free(z);
    fc_free(s.c);
    free(a.p);
    free(b.p);
    free(dl.p);
    free(body.p);
}

int main(void)
{
    g_zenc = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    RUN(shared_blocks_are_hits_with_the_full_decodes_result);
    RUN(one_byte_changed_is_a_miss);
    RUN(unexpected_shapes_are_left_to_the_full_decode);
    RUN(a_full_cache_is_emptied_between_messages);
    RUN(a_corrupted_map_still_fails_the_stream);
    tc_zenc_free(g_zenc);
    return TEST_MAIN_END();
}
