#include "proto/mapframe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "common/util.h"
#include "proto/tailcfg.h"

/* A single-segment frame's window is its content size, so capping the window at the
 * message limit also caps what a frame header can make the decoder reserve. */
#define WINDOW_LOG_MAX 24
_Static_assert((1u << WINDOW_LOG_MAX) >= TC_MAPFRAME_MAX, "window must fit a whole message");

static void put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ---- encoder ---------------------------------------------------------------------------- */

struct tc_zenc {
    ZSTD_CCtx *cctx;
    uint8_t *scratch;
    size_t scratch_cap;
    struct hw_sbuf *keepalive[2]; /* [compress] */
};

struct tc_zenc *tc_zenc_new(int level)
{
    struct tc_zenc *z = hw_calloc(1, sizeof(*z));
    z->cctx = ZSTD_createCCtx();
    if (!z->cctx)
        abort();
    /* Content size in the header and a checksum, like Headscale's frames (header byte
     * 0x24): the size lets a decoder refuse a bomb before inflating anything. */
    ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_contentSizeFlag, 1);
    ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 1);
    return z;
}

void tc_zenc_free(struct tc_zenc *z)
{
    if (!z)
        return;
    ZSTD_freeCCtx(z->cctx);
    free(z->scratch);
    for (int i = 0; i < 2; i++)
        if (z->keepalive[i])
            hw_sbuf_unref(z->keepalive[i]);
    free(z);
}

/* Compresses into the encoder's scratch buffer; returns the frame size or 0 with err. */
static size_t compress_to_scratch(struct tc_zenc *z, const void *data, size_t len, char *err,
                                  size_t errlen)
{
    size_t bound = ZSTD_compressBound(len);
    if (bound > z->scratch_cap) {
        free(z->scratch);
        z->scratch = hw_malloc(bound);
        z->scratch_cap = bound;
    }
    size_t n = ZSTD_compress2(z->cctx, z->scratch, z->scratch_cap, data, len);
    if (ZSTD_isError(n)) {
        snprintf(err, errlen, "zstd compress: %s", ZSTD_getErrorName(n));
        ZSTD_CCtx_reset(z->cctx, ZSTD_reset_session_only);
        return 0;
    }
    return n;
}

struct hw_sbuf *tc_mapframe_encode(struct tc_zenc *z, const void *json, size_t len, bool compress,
                                   char *err, size_t errlen)
{
    if (len > TC_MAPFRAME_MAX) {
        snprintf(err, errlen, "map message of %zu bytes exceeds the %u-byte limit", len,
                 TC_MAPFRAME_MAX);
        return NULL;
    }
    if (!compress) {
        struct hw_sbuf *b = hw_sbuf_new(4 + len);
        put_u32le(b->data, (uint32_t)len);
        memcpy(b->data + 4, json, len);
        return b;
    }
    /* Compress into a reused scratch buffer, then copy the exact size out: the shared
     * buffer may sit in many session queues for a while, so it should not carry the
     * compressBound slack. */
    size_t n = compress_to_scratch(z, json, len, err, errlen);
    if (n == 0)
        return NULL;
    if (n > TC_MAPFRAME_MAX) {
        snprintf(err, errlen, "compressed map message of %zu bytes exceeds the %u-byte limit", n,
                 TC_MAPFRAME_MAX);
        return NULL;
    }
    struct hw_sbuf *b = hw_sbuf_new(4 + n);
    put_u32le(b->data, (uint32_t)n);
    memcpy(b->data + 4, z->scratch, n);
    return b;
}

struct hw_sbuf *tc_zstd_frame(struct tc_zenc *z, const void *data, size_t len, size_t prefix_room,
                              char *err, size_t errlen)
{
    size_t n = compress_to_scratch(z, data, len, err, errlen);
    if (n == 0)
        return NULL;
    struct hw_sbuf *b = hw_sbuf_new(prefix_room + n);
    memcpy(b->data + prefix_room, z->scratch, n);
    return b;
}

void tc_mapframe_put_length(uint8_t out[4], size_t payload_len)
{
    put_u32le(out, (uint32_t)payload_len);
}

struct hw_sbuf *tc_mapframe_encode_json(struct tc_zenc *z, const json_t *msg, bool compress,
                                        char *err, size_t errlen)
{
    size_t len;
    char *text = tc_json_dump(msg, &len);
    struct hw_sbuf *b = tc_mapframe_encode(z, text, len, compress, err, errlen);
    free(text);
    return b;
}

struct hw_sbuf *tc_mapframe_keepalive(struct tc_zenc *z, bool compress)
{
    int i = compress ? 1 : 0;
    if (!z->keepalive[i]) {
        char err[128];
        z->keepalive[i] = tc_mapframe_encode(z, TC_KEEPALIVE_JSON, strlen(TC_KEEPALIVE_JSON),
                                             compress, err, sizeof err);
        if (!z->keepalive[i])
            abort(); /* 18 bytes cannot fail to compress short of memory exhaustion */
    }
    return hw_sbuf_ref(z->keepalive[i]);
}

/* ---- decompression ----------------------------------------------------------------------- */

/* The sum of the content sizes the frames of a payload declare, or
 * ZSTD_CONTENTSIZE_UNKNOWN when one does not (or the frames do not parse: the
 * decompression then says why). */
static unsigned long long frames_content_size(const uint8_t *in, size_t len)
{
    unsigned long long total = 0;
    while (len > 0) {
        unsigned long long one = ZSTD_getFrameContentSize(in, len);
        size_t size = ZSTD_findFrameCompressedSize(in, len);
        if (one == ZSTD_CONTENTSIZE_UNKNOWN || one == ZSTD_CONTENTSIZE_ERROR || ZSTD_isError(size) ||
            size > len)
            return ZSTD_CONTENTSIZE_UNKNOWN;
        total += one;
        in += size;
        len -= size;
    }
    return total;
}

/* Inflates into reuse (reuse_room bytes plus one for the NUL, or NULL) when it is large
 * enough, else into a new buffer (reuse is then freed); *out_room gets the room of the
 * buffer returned, for the next call. On failure nothing is left allocated. */
static int decompress_into(ZSTD_DCtx *dctx, const uint8_t *in, size_t len, size_t max_out,
                           uint8_t *reuse, size_t reuse_room, uint8_t **out, size_t *out_len,
                           size_t *out_room, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (len == 0) {
        free(reuse);
        snprintf(err, errlen, "empty zstd payload");
        return -1;
    }
    /* Refuse a frame whose header already declares too much (a "zstd bomb": a few
     * bytes claiming gigabytes) before allocating for it. Later frames of a
     * multi-frame payload are still bounded by the streaming check below. */
    unsigned long long declared = ZSTD_getFrameContentSize(in, len);
    if (declared == ZSTD_CONTENTSIZE_ERROR) {
        free(reuse);
        snprintf(err, errlen, "not a zstd frame (magic %02x%02x%02x%02x)", in[0],
                 len > 1 ? in[1] : 0, len > 2 ? in[2] : 0, len > 3 ? in[3] : 0);
        return -1;
    }
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared > max_out) {
        free(reuse);
        snprintf(err, errlen, "zstd frame declares %llu bytes, over the %zu-byte limit", declared,
                 max_out);
        return -1;
    }
    /* Room for max_out + 1 bytes of output (one more than allowed, to tell "exactly at
     * the limit" from "over it") plus the NUL. A multi-frame payload whose frames all
     * declare their sizes gets its exact total at once. */
    size_t limit = max_out + 1;
    unsigned long long total = frames_content_size(in, len);
    if (total != ZSTD_CONTENTSIZE_UNKNOWN && total > max_out) {
        free(reuse);
        snprintf(err, errlen, "zstd frames declare %llu bytes, over the %zu-byte limit", total, max_out);
        return -1;
    }
    if (total != ZSTD_CONTENTSIZE_UNKNOWN)
        declared = total;
    size_t room = declared != ZSTD_CONTENTSIZE_UNKNOWN ? (size_t)declared + 1 : len * 4 + 64;
    if (room > limit)
        room = limit;
    uint8_t *buf;
    if (reuse && reuse_room >= room) {
        buf = reuse;
        room = reuse_room;
    } else {
        free(reuse);
        buf = hw_malloc(room + 1);
    }
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
    if (total != ZSTD_CONTENTSIZE_UNKNOWN) {
        /* Every frame says how much it holds: inflate in one pass straight into buf,
         * without the streaming decoder's window buffer and its copy of every byte. A
         * frame holding more than it declared fails here (the output is full). */
        size_t got = ZSTD_decompressDCtx(dctx, buf, room, in, len);
        if (ZSTD_isError(got)) {
            snprintf(err, errlen, "zstd: %s", ZSTD_getErrorName(got));
            goto bad;
        }
        if (got != total) {
            snprintf(err, errlen, "zstd frames hold %zu bytes, not the %llu they declare", got, total);
            goto bad;
        }
        buf[got] = '\0';
        *out = buf;
        *out_len = got;
        *out_room = room;
        return 0;
    }
    ZSTD_inBuffer ib = {in, len, 0};
    ZSTD_outBuffer ob = {buf, room, 0};
    for (;;) {
        size_t hint = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(hint)) {
            snprintf(err, errlen, "zstd: %s", ZSTD_getErrorName(hint));
            goto bad;
        }
        if (ob.pos > max_out) {
            snprintf(err, errlen, "zstd payload inflates past the %zu-byte limit", max_out);
            goto bad;
        }
        if (hint == 0 && ib.pos == ib.size)
            break; /* every frame complete, all input used */
        if (ob.pos == ob.size) {
            size_t nroom = ob.size * 2 > limit ? limit : ob.size * 2;
            uint8_t *nb = realloc(buf, nroom + 1);
            if (!nb)
                abort();
            buf = nb;
            ob.dst = buf;
            ob.size = nroom;
        } else if (ib.pos == ib.size) {
            snprintf(err, errlen, "truncated zstd frame (%zu bytes of input)", len);
            goto bad;
        }
    }
    buf[ob.pos] = '\0';
    *out = buf;
    *out_len = ob.pos;
    *out_room = ob.size;
    return 0;
bad:
    free(buf);
    return -1;
}

static int decompress_with(ZSTD_DCtx *dctx, const uint8_t *in, size_t len, size_t max_out,
                           uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
    size_t room;
    return decompress_into(dctx, in, len, max_out, NULL, 0, out, out_len, &room, err, errlen);
}

static ZSTD_DCtx *new_dctx(void)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d)
        abort();
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, WINDOW_LOG_MAX);
    return d;
}

int tc_zstd_decompress(const uint8_t *in, size_t len, size_t max_out, uint8_t **out,
                       size_t *out_len, char *err, size_t errlen)
{
    ZSTD_DCtx *d = new_dctx();
    int r = decompress_with(d, in, len, max_out, out, out_len, err, errlen);
    ZSTD_freeDCtx(d);
    return r;
}

/* ---- incremental decoder ------------------------------------------------------------------ */

struct tc_zdec {
    ZSTD_DCtx *dctx;
    /* The output of the last message, kept for the next: a full 10,000-peer map inflates
     * to ~8 MB, and a fresh buffer per message costs its page faults and the copies of
     * growing it. */
    uint8_t *out;
    size_t out_room;
};

struct tc_zdec *tc_zdec_new(void)
{
    struct tc_zdec *z = hw_calloc(1, sizeof(*z));
    z->dctx = new_dctx();
    return z;
}

void tc_zdec_free(struct tc_zdec *z)
{
    if (!z)
        return;
    ZSTD_freeDCtx(z->dctx);
    free(z->out);
    free(z);
}

struct tc_mapdec {
    bool compressed;
    size_t max;
    ZSTD_DCtx *dctx;
    struct tc_zdec *shared;
    bool owns_dctx;
    uint8_t hdr[4];
    size_t hdr_have;
    uint8_t *msg; /* payload being assembled, want bytes long */
    size_t want, have;
    bool failed;
    char err[256];
    tc_mapdec_payload_hook payload_hook;
};

struct tc_mapdec *tc_mapdec_new(bool compressed, size_t max_size)
{
    struct tc_mapdec *d = hw_calloc(1, sizeof(*d));
    d->compressed = compressed;
    d->max = max_size ? max_size : TC_MAPFRAME_MAX;
    if (compressed) {
        d->dctx = new_dctx();
        d->owns_dctx = true;
    }
    return d;
}

struct tc_mapdec *tc_mapdec_new_shared(struct tc_zdec *z, size_t max_size)
{
    struct tc_mapdec *d = hw_calloc(1, sizeof(*d));
    d->compressed = true;
    d->max = max_size ? max_size : TC_MAPFRAME_MAX;
    d->dctx = z->dctx;
    d->shared = z;
    return d;
}

void tc_mapdec_free(struct tc_mapdec *d)
{
    if (!d)
        return;
    if (d->owns_dctx)
        ZSTD_freeDCtx(d->dctx);
    free(d->msg);
    free(d);
}

const char *tc_mapdec_error(const struct tc_mapdec *d) { return d->failed ? d->err : NULL; }

void tc_mapdec_set_payload_hook(struct tc_mapdec *d, tc_mapdec_payload_hook hook)
{
    d->payload_hook = d->compressed ? hook : NULL;
}

static void message_done(struct tc_mapdec *d)
{
    free(d->msg);
    d->msg = NULL;
    d->want = d->have = 0;
    d->hdr_have = 0;
}

size_t tc_mapdec_pending(const struct tc_mapdec *d) { return d->hdr_have + d->have; }

static int deliver(struct tc_mapdec *d, tc_mapdec_cb cb, void *arg)
{
    int r;
    if (d->payload_hook) {
        r = d->payload_hook(d->msg, d->want, arg);
        if (r != TC_MAPDEC_PAYLOAD_INFLATE) {
            message_done(d);
            return r == TC_MAPDEC_PAYLOAD_DONE ? 0 : r;
        }
    }
    if (!d->compressed) {
        /* msg was allocated with a spare byte for the NUL. */
        d->msg[d->want] = '\0';
        r = cb((const char *)d->msg, d->want, arg);
    } else {
        uint8_t *json;
        size_t jlen;
        uint8_t *reuse = d->shared ? d->shared->out : NULL;
        size_t reuse_room = d->shared ? d->shared->out_room : 0;
        if (d->shared)
            d->shared->out = NULL;
        if (decompress_into(d->dctx, d->msg, d->want, d->max, reuse, reuse_room, &json, &jlen,
                            &reuse_room, d->err, sizeof d->err) < 0) {
            d->failed = true;
            return -1;
        }
        r = cb((const char *)json, jlen, arg);
        if (d->shared && !d->shared->out) {
            d->shared->out = json;
            d->shared->out_room = reuse_room;
        } else {
            free(json);
        }
    }
    message_done(d);
    return r;
}

int tc_mapdec_feed(struct tc_mapdec *d, const uint8_t *data, size_t len, tc_mapdec_cb cb,
                   void *arg)
{
    if (d->failed)
        return -1;
    while (len > 0) {
        if (d->hdr_have < 4) {
            size_t take = 4 - d->hdr_have < len ? 4 - d->hdr_have : len;
            memcpy(d->hdr + d->hdr_have, data, take);
            d->hdr_have += take;
            data += take;
            len -= take;
            if (d->hdr_have < 4)
                break;
            uint32_t n = (uint32_t)d->hdr[0] | (uint32_t)d->hdr[1] << 8 |
                         (uint32_t)d->hdr[2] << 16 | (uint32_t)d->hdr[3] << 24;
            if (n > d->max) {
                snprintf(d->err, sizeof d->err,
                         "map message length prefix %u exceeds the %zu-byte limit", n, d->max);
                d->failed = true;
                return -1;
            }
            if (n == 0) {
                snprintf(d->err, sizeof d->err, "empty map message (length prefix 0)");
                d->failed = true;
                return -1;
            }
            d->want = n;
            d->have = 0;
            d->msg = hw_malloc((size_t)n + 1);
        }
        size_t take = d->want - d->have < len ? d->want - d->have : len;
        memcpy(d->msg + d->have, data, take);
        d->have += take;
        data += take;
        len -= take;
        if (d->have == d->want) {
            int r = deliver(d, cb, arg);
            if (r != 0)
                return r;
        }
    }
    return 0;
}
