#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "common/sbuf.h"
#include "proto/mapframe.h"
#include "proto/tailcfg.h"
#include "tests/unit/fixture.h"
#include "tests/unit/testlib.h"

static json_t *g_map; /* real-client-map.json */
static const char *const streams[] = {"map_stream_fx_node1", "map_stream_fx_node4",
                                      "map_stream_fx_node2"};

static json_t *messages(const char *stream)
{
    return json_object_get(json_object_get(g_map, stream), "messages");
}

/* ---- the real bytes ----------------------------------------------------------------- */

static void fixture_frames_decode_to_json_text(void)
{
    int decoded = 0;
    for (size_t s = 0; s < HW_ARRAY_LEN(streams); s++) {
        json_t *msgs = messages(streams[s]);
        CHECK(json_array_size(msgs) > 0, "%s has messages", streams[s]);
        for (size_t i = 0; i < json_array_size(msgs); i++) {
            json_t *m = json_array_get(msgs, i);
            size_t zlen, plen;
            uint8_t *z = fxj_hex(m, "zstd_hex", &zlen);
            if (!z)
                continue; /* fx-node2 keeps zstd bytes only for some messages */
            uint8_t *prefix = fxj_hex(m, "length_prefix_hex (u32le)", &plen);
            CHECK(prefix && plen == 4, "%s[%zu] prefix", streams[s], i);
            uint32_t n = prefix[0] | prefix[1] << 8 | prefix[2] << 16 | (uint32_t)prefix[3] << 24;
            free(prefix);
            CHECK_INT(n, zlen);
            CHECK_INT(json_integer_value(json_object_get(m, "zstd_len")), zlen);
            uint8_t *out;
            size_t olen;
            char err[256];
            int r = tc_zstd_decompress(z, zlen, TC_MAPFRAME_MAX, &out, &olen, err, sizeof err);
            free(z);
            CHECK(r == 0, "%s[%zu]: %s", streams[s], i, err);
            const char *want = fxj_str(m, "json_text");
            CHECK(olen == strlen(want) && memcmp(out, want, olen) == 0, "%s[%zu] text differs",
                  streams[s], i);
            CHECK_INT(json_integer_value(json_object_get(m, "json_len")), olen);
            free(out);
            decoded++;
        }
    }
    CHECK(decoded >= 40, "decoded only %d frames", decoded);
}

/* The whole fx-node1 response body as it crossed the wire. */
static uint8_t *node1_body(size_t *len_out, size_t *count)
{
    json_t *msgs = messages("map_stream_fx_node1");
    size_t cap = 0, len = 0;
    uint8_t *body = NULL;
    *count = 0;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        size_t plen, zlen;
        uint8_t *p = fxj_hex(m, "length_prefix_hex (u32le)", &plen);
        uint8_t *z = fxj_hex(m, "zstd_hex", &zlen);
        if (len + plen + zlen > cap) {
            cap = (len + plen + zlen) * 2;
            body = realloc(body, cap);
        }
        memcpy(body + len, p, plen);
        memcpy(body + len + plen, z, zlen);
        len += plen + zlen;
        free(p);
        free(z);
        (*count)++;
    }
    *len_out = len;
    return body;
}

struct collect {
    char **texts;
    size_t n, cap;
};

static int collect_cb(const char *json, size_t len, void *arg)
{
    struct collect *c = arg;
    if (strlen(json) != len)
        return 99; /* the callback contract: NUL-terminated, len excludes it */
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->texts = realloc(c->texts, c->cap * sizeof(char *));
    }
    c->texts[c->n++] = hw_strdup(json);
    return 0;
}

static void collect_free(struct collect *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->texts[i]);
    free(c->texts);
    memset(c, 0, sizeof(*c));
}

static int feed_in_chunks(struct tc_mapdec *d, const uint8_t *body, size_t len, size_t chunk,
                          struct collect *c)
{
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        int r = tc_mapdec_feed(d, body + off, n, collect_cb, c);
        if (r != 0)
            return r;
    }
    return 0;
}

static void fixture_stream_incremental_feeds(void)
{
    size_t len, count;
    uint8_t *body = node1_body(&len, &count);
    json_t *msgs = messages("map_stream_fx_node1");
    const size_t chunks[] = {1, 7, 4096, len};
    for (size_t ci = 0; ci < HW_ARRAY_LEN(chunks); ci++) {
        struct tc_mapdec *d = tc_mapdec_new(true, 0);
        struct collect c = {0};
        int r = feed_in_chunks(d, body, len, chunks[ci], &c);
        CHECK(r == 0, "chunk %zu: %s", chunks[ci], tc_mapdec_error(d));
        CHECK_INT(tc_mapdec_pending(d), 0);
        CHECK_INT(c.n, count);
        for (size_t i = 0; i < c.n; i++)
            CHECK(strcmp(c.texts[i], fxj_str(json_array_get(msgs, i), "json_text")) == 0,
                  "chunk %zu message %zu", chunks[ci], i);
        collect_free(&c);
        tc_mapdec_free(d);
    }
    free(body);
}

/* ---- our encoder ------------------------------------------------------------------------- */

static void encoder_round_trips_every_fixture_message(void)
{
    struct tc_zenc *z = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    json_t *msgs = messages("map_stream_fx_node1");
    char err[256];
    /* Everything into one body, then back through the incremental decoder. */
    uint8_t *body = NULL;
    size_t len = 0;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        const char *text = fxj_str(json_array_get(msgs, i), "json_text");
        struct hw_sbuf *b = tc_mapframe_encode(z, text, strlen(text), true, err, sizeof err);
        CHECK(b, "encode %zu: %s", i, err);
        uint32_t n = b->data[0] | b->data[1] << 8 | b->data[2] << 16 | (uint32_t)b->data[3] << 24;
        CHECK_INT(n, b->len - 4);
        /* zstd magic, then a header with the content size and a checksum. */
        CHECK(memcmp(b->data + 4, "\x28\xb5\x2f\xfd", 4) == 0, "magic");
        CHECK(b->data[8] & 0x04, "checksum flag");
        CHECK_INT(ZSTD_getFrameContentSize(b->data + 4, b->len - 4), strlen(text));
        body = realloc(body, len + b->len);
        memcpy(body + len, b->data, b->len);
        len += b->len;
        hw_sbuf_unref(b);
    }
    const size_t chunks[] = {1, 7, len};
    for (size_t ci = 0; ci < HW_ARRAY_LEN(chunks); ci++) {
        struct tc_mapdec *d = tc_mapdec_new(true, 0);
        struct collect c = {0};
        CHECK(feed_in_chunks(d, body, len, chunks[ci], &c) == 0, "%s", tc_mapdec_error(d));
        CHECK_INT(c.n, json_array_size(msgs));
        for (size_t i = 0; i < c.n; i++)
            CHECK(strcmp(c.texts[i], fxj_str(json_array_get(msgs, i), "json_text")) == 0,
                  "message %zu", i);
        collect_free(&c);
        tc_mapdec_free(d);
    }
    free(body);
    tc_zenc_free(z);
}

static void encoder_json_and_uncompressed_forms(void)
{
    struct tc_zenc *z = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    char err[256];
    json_t *msg = json_pack("{s:s,s:[i,i]}", "Domain", "example.com", "PeersRemoved", 3, 4);
    struct hw_sbuf *plain = tc_mapframe_encode_json(z, msg, false, err, sizeof err);
    CHECK(plain, "%s", err);
    const char *want = "{\"Domain\":\"example.com\",\"PeersRemoved\":[3,4]}";
    CHECK_INT(plain->len, 4 + strlen(want));
    CHECK_INT(plain->data[0], strlen(want));
    CHECK(memcmp(plain->data + 4, want, strlen(want)) == 0, "uncompressed payload is the JSON");
    struct tc_mapdec *d = tc_mapdec_new(false, 0);
    struct collect c = {0};
    CHECK(feed_in_chunks(d, plain->data, plain->len, 3, &c) == 0, "%s", tc_mapdec_error(d));
    CHECK_INT(c.n, 1);
    CHECK_STR(c.texts[0], want);
    collect_free(&c);
    tc_mapdec_free(d);
    hw_sbuf_unref(plain);
    json_decref(msg);
    tc_zenc_free(z);
}

static void keepalive_bytes_are_stable(void)
{
    struct tc_zenc *z = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    struct hw_sbuf *a = tc_mapframe_keepalive(z, true), *b = tc_mapframe_keepalive(z, true);
    CHECK(a == b, "one shared buffer");
    uint8_t *out;
    size_t olen;
    char err[256];
    CHECK(tc_zstd_decompress(a->data + 4, a->len - 4, 64, &out, &olen, err, sizeof err) == 0,
          "%s", err);
    CHECK_STR((char *)out, TC_KEEPALIVE_JSON);
    free(out);
    /* Headscale's keep-alive is 31 bytes of zstd; ours must be at least as small. */
    CHECK(a->len - 4 <= 31, "keep-alive frame of %zu bytes", a->len - 4);
    struct hw_sbuf *p = tc_mapframe_keepalive(z, false);
    CHECK_INT(p->len, 4 + 18);
    hw_sbuf_unref(a);
    hw_sbuf_unref(b);
    hw_sbuf_unref(p);
    tc_zenc_free(z);
}

/* ---- hostile input ------------------------------------------------------------------------ */

static int expect_error(bool compressed, const uint8_t *data, size_t len, const char *needle,
                        char *why, size_t whylen)
{
    struct tc_mapdec *d = tc_mapdec_new(compressed, 0);
    struct collect c = {0};
    int r = tc_mapdec_feed(d, data, len, collect_cb, &c);
    int ok = r == -1 && tc_mapdec_error(d) && strstr(tc_mapdec_error(d), needle) && c.n == 0;
    snprintf(why, whylen, "r=%d err=%s", r, tc_mapdec_error(d) ? tc_mapdec_error(d) : "(none)");
    /* Errors are sticky: nothing more is accepted. */
    if (ok && tc_mapdec_feed(d, data, len, collect_cb, &c) != -1)
        ok = 0;
    collect_free(&c);
    tc_mapdec_free(d);
    return ok;
}

static void garbage_length_prefixes(void)
{
    char why[300];
    const uint8_t huge[] = {0x00, 0x00, 0x00, 0x80, 0x28, 0xb5}; /* 2 GiB */
    CHECK(expect_error(true, huge, sizeof huge, "exceeds", why, sizeof why), "%s", why);
    const uint8_t zero[] = {0, 0, 0, 0};
    CHECK(expect_error(true, zero, sizeof zero, "empty", why, sizeof why), "%s", why);
    const uint8_t justover[] = {0x01, 0x00, 0x00, 0x01}; /* 16 MiB + 1 */
    CHECK(expect_error(false, justover, sizeof justover, "exceeds", why, sizeof why), "%s", why);
}

static void garbage_payloads(void)
{
    char why[300];
    uint8_t text[64];
    const char *json = "{\"KeepAlive\":true}";
    text[0] = (uint8_t)strlen(json);
    text[1] = text[2] = text[3] = 0;
    memcpy(text + 4, json, strlen(json));
    CHECK(expect_error(true, text, 4 + strlen(json), "not a zstd frame", why, sizeof why), "%s",
          why);

    /* A real frame cut short (length prefix adjusted to match), and one flipped byte. */
    json_t *m = json_array_get(messages("map_stream_fx_node1"), 0);
    size_t zlen;
    uint8_t *z = fxj_hex(m, "zstd_hex", &zlen);
    uint8_t *buf = malloc(zlen + 4);
    size_t cut = zlen - 40;
    buf[0] = (uint8_t)cut;
    buf[1] = (uint8_t)(cut >> 8);
    buf[2] = buf[3] = 0;
    memcpy(buf + 4, z, cut);
    CHECK(expect_error(true, buf, cut + 4, "truncated", why, sizeof why), "%s", why);
    buf[0] = (uint8_t)zlen;
    buf[1] = (uint8_t)(zlen >> 8);
    memcpy(buf + 4, z, zlen);
    buf[4 + zlen - 2] ^= 0x55; /* inside the checksum */
    CHECK(expect_error(true, buf, zlen + 4, "zstd", why, sizeof why), "%s", why);
    free(buf);
    free(z);
}

/* A few KiB of zstd that declares (or, without a declared size, produces) far more
 * JSON than any netmap: refused without inflating it all. */
static void zstd_bombs(void)
{
    size_t big = 64u << 20;
    uint8_t *zeros = calloc(1, big);
    size_t cap = ZSTD_compressBound(big);
    uint8_t *frame = malloc(cap + 4);
    char why[300];

    size_t n = ZSTD_compress(frame + 4, cap, zeros, big, 1);
    CHECK(!ZSTD_isError(n) && n < 64 * 1024, "bomb of %zu bytes", n);
    frame[0] = (uint8_t)n;
    frame[1] = (uint8_t)(n >> 8);
    frame[2] = (uint8_t)(n >> 16);
    frame[3] = 0;
    CHECK(expect_error(true, frame, n + 4, "declares", why, sizeof why), "%s", why);

    /* Streaming frame: no content size in the header. */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_inBuffer ib = {zeros, 32u << 20, 0};
    ZSTD_outBuffer ob = {frame + 4, cap, 0};
    size_t left;
    do {
        left = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end);
    } while (!ZSTD_isError(left) && left != 0);
    ZSTD_freeCCtx(cc);
    CHECK(!ZSTD_isError(left), "stream compress");
    CHECK(ZSTD_getFrameContentSize(frame + 4, ob.pos) == ZSTD_CONTENTSIZE_UNKNOWN,
          "streaming frame has no size");
    frame[0] = (uint8_t)ob.pos;
    frame[1] = (uint8_t)(ob.pos >> 8);
    frame[2] = (uint8_t)(ob.pos >> 16);
    frame[3] = 0;
    CHECK(expect_error(true, frame, ob.pos + 4, "inflates past", why, sizeof why), "%s", why);
    free(frame);
    free(zeros);
}

static int stop_cb(const char *json, size_t len, void *arg)
{
    (*(int *)arg)++;
    return 7;
}

static void callback_can_stop_the_feed(void)
{
    struct tc_zenc *z = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    struct hw_sbuf *ka = tc_mapframe_keepalive(z, true);
    uint8_t two[128];
    memcpy(two, ka->data, ka->len);
    memcpy(two + ka->len, ka->data, ka->len);
    struct tc_mapdec *d = tc_mapdec_new(true, 0);
    int calls = 0;
    CHECK_INT(tc_mapdec_feed(d, two, 2 * ka->len, stop_cb, &calls), 7);
    CHECK_INT(calls, 1);
    tc_mapdec_free(d);
    hw_sbuf_unref(ka);
    tc_zenc_free(z);
}

/* The payload hook (bench/swarm's frame cache) sees the compressed bytes first: what it
 * handles is never inflated (garbage included), what it passes on is decoded as usual. */
struct hook_state {
    int seen, done_from;
    int stop_with;
    int messages;
};

static int counting_hook(const uint8_t *payload, size_t len, void *arg)
{
    struct hook_state *h = arg;
    h->seen++;
    if (h->stop_with)
        return h->stop_with;
    return h->seen >= h->done_from ? TC_MAPDEC_PAYLOAD_DONE : TC_MAPDEC_PAYLOAD_INFLATE;
}

static int counting_cb(const char *json, size_t len, void *arg)
{
    struct hook_state *h = arg;
    h->messages++;
    return strcmp(json, TC_KEEPALIVE_JSON) == 0 ? 0 : 5;
}

static void payload_hook_runs_before_inflating(void)
{
    struct tc_zenc *z = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    struct hw_sbuf *ka = tc_mapframe_keepalive(z, true);
    /* a keep-alive, then a payload that is not zstd at all, then a keep-alive */
    uint8_t body[256];
    size_t len = 0;
    memcpy(body, ka->data, ka->len);
    len += ka->len;
    memcpy(body + len, "\x04\x00\x00\x00junk", 8);
    len += 8;
    memcpy(body + len, ka->data, ka->len);
    len += ka->len;
    struct tc_zdec *zd = tc_zdec_new();
    struct tc_mapdec *d = tc_mapdec_new_shared(zd, 0);
    struct hook_state h = {.done_from = 2};
    tc_mapdec_set_payload_hook(d, counting_hook);
    CHECK_INT(tc_mapdec_feed(d, body, len, counting_cb, &h), 0);
    CHECK_INT(h.seen, 3);
    CHECK_INT(h.messages, 1);
    CHECK_INT(tc_mapdec_pending(d), 0);
    /* passed on, the junk fails the stream as it always did */
    tc_mapdec_free(d);
    d = tc_mapdec_new_shared(zd, 0);
    h = (struct hook_state){.done_from = 1000};
    tc_mapdec_set_payload_hook(d, counting_hook);
    CHECK_INT(tc_mapdec_feed(d, body, len, counting_cb, &h), -1);
    CHECK_INT(h.seen, 2);
    CHECK_INT(h.messages, 1);
    CHECK(tc_mapdec_error(d) != NULL, "an error");
    /* any other value stops the feed and is returned */
    tc_mapdec_free(d);
    d = tc_mapdec_new_shared(zd, 0);
    h = (struct hook_state){.stop_with = 9};
    tc_mapdec_set_payload_hook(d, counting_hook);
    CHECK_INT(tc_mapdec_feed(d, body, len, counting_cb, &h), 9);
    CHECK_INT(h.seen, 1);
    CHECK_INT(h.messages, 0);
    tc_mapdec_free(d);
    tc_zdec_free(zd);
    hw_sbuf_unref(ka);
    tc_zenc_free(z);
}

static void encoder_refuses_oversized(void)
{
    struct tc_zenc *z = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    char err[256];
    size_t big = TC_MAPFRAME_MAX + 1;
    char *text = malloc(big);
    memset(text, ' ', big);
    CHECK(tc_mapframe_encode(z, text, big, true, err, sizeof err) == NULL, "refused");
    CHECK(strstr(err, "exceeds") != NULL, "%s", err);
    free(text);
    tc_zenc_free(z);
}

/* Random bytes and mutated real bodies through the decoder: errors, never crashes. */
static void mutated_streams_never_crash(void)
{
    size_t len, count;
    uint8_t *body = node1_body(&len, &count);
    uint32_t seed = 777;
    int failed = 0;
    for (int round = 0; round < 300; round++) {
        uint8_t *buf = malloc(len);
        memcpy(buf, body, len);
        for (int f = 0; f < 1 + round % 3; f++) {
            seed = seed * 1103515245u + 12345u;
            buf[(seed >> 4) % len] ^= (uint8_t)(1u << (seed % 8));
        }
        struct tc_mapdec *d = tc_mapdec_new(true, 1u << 20);
        struct collect c = {0};
        if (feed_in_chunks(d, buf, len, 1 + round % 977, &c) != 0)
            failed++;
        collect_free(&c);
        tc_mapdec_free(d);
        free(buf);
    }
    free(body);
    CHECK(failed > 0, "some mutants must be refused");
}

int main(void)
{
    g_map = fxj_load("real-client-map.json");
    RUN(fixture_frames_decode_to_json_text);
    RUN(fixture_stream_incremental_feeds);
    RUN(encoder_round_trips_every_fixture_message);
    RUN(encoder_json_and_uncompressed_forms);
    RUN(keepalive_bytes_are_stable);
    RUN(garbage_length_prefixes);
    RUN(garbage_payloads);
    RUN(zstd_bombs);
    RUN(callback_can_stop_the_feed);
    RUN(payload_hook_runs_before_inflating);
    RUN(encoder_refuses_oversized);
    RUN(mutated_streams_never_crash);
    json_decref(g_map);
    return TEST_MAIN_END();
}
