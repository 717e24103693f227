#include "proto/mapscan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "common/util.h"
#include "proto/tailcfg.h"

struct cur {
    const char *base, *p, *end;
    int depth;
    char *err;
    size_t errlen;
};

static int bad(struct cur *c, const char *what)
{
    snprintf(c->err, c->errlen, "MapResponse: %s at byte %zu", what, (size_t)(c->p - c->base));
    return -1;
}

static inline void ws(struct cur *c)
{
    /* Go writes no whitespace: one comparison rules it out for every structural byte. */
    while (c->p < c->end && (unsigned char)*c->p <= ' ' &&
           (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Eight bytes at a time: a word with a zero byte after xor-ing with a repeated
 * character holds that character (the classic "has zero byte" test). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static inline uint64_t zero_bytes(uint64_t x)
{
    return (x - ONES) & ~x & HIGHS;
}

/* The first '"' or '\\' at or after p, or end. Most strings of a map are short
 * member names and values, where a call to memchr costs more than the bytes. */
static inline const char *quote_or_escape(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), escape = _mm_set1_epi8('\\');
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        unsigned hit = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, escape)));
        if (hit)
            return p + __builtin_ctz(hit);
        p += 16;
    }
#else
    while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        uint64_t hit = zero_bytes(w ^ (ONES * '"')) | zero_bytes(w ^ (ONES * '\\'));
        /* The lowest flagged byte is a true hit (borrows only flag bytes above it);
         * counting from the low end needs the first byte there. */
        if (hit && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
            return p + (__builtin_ctzll(hit) >> 3);
        if (hit)
            break;
        p += 8;
    }
#endif
    while (p < end && *p != '"' && *p != '\\')
        p++;
    return p;
}

/* At a '"': leaves p after the closing quote; the text between the quotes in *s, *n. */
static inline int string_span(struct cur *c, const char **s, size_t *n)
{
    if (c->p >= c->end || *c->p != '"')
        return bad(c, "expected a string");
    const char *start = ++c->p;
    const char *p = start;
    for (;;) {
        p = quote_or_escape(p, c->end);
        if (p >= c->end) {
            c->p = p;
            return bad(c, "unterminated string");
        }
        if (*p == '"')
            break;
        /* A backslash escapes the next character, whatever it is (\" included). */
        if (c->end - p < 2) {
            c->p = c->end;
            return bad(c, "unterminated string");
        }
        p += 2;
    }
    c->p = p + 1;
    *s = start;
    *n = (size_t)(p - start);
    return 0;
}

static int skip_value(struct cur *c);

/* At '{' or '[': skips the whole container. */
static int skip_container(struct cur *c)
{
    char close = *c->p == '{' ? '}' : ']';
    bool object = close == '}';
    if (++c->depth > TC_MAX_DEPTH)
        return bad(c, "nested too deeply");
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        c->depth--;
        return 0;
    }
    for (;;) {
        ws(c);
        if (object) {
            const char *k;
            size_t kn;
            if (string_span(c, &k, &kn) < 0)
                return -1;
            ws(c);
            if (c->p >= c->end || *c->p != ':')
                return bad(c, "expected ':'");
            c->p++;
        }
        if (skip_value(c) < 0)
            return -1;
        ws(c);
        if (c->p >= c->end)
            return bad(c, "unexpected end");
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p != close)
            return bad(c, object ? "expected ',' or '}'" : "expected ',' or ']'");
        c->p++;
        c->depth--;
        return 0;
    }
}

static bool token_char(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || ch == '-' || ch == '+' ||
           ch == '.' || ch == 'E';
}

static int skip_value(struct cur *c)
{
    ws(c);
    if (c->p >= c->end)
        return bad(c, "expected a value");
    char ch = *c->p;
    if (ch == '{' || ch == '[')
        return skip_container(c);
    if (ch == '"') {
        const char *s;
        size_t n;
        return string_span(c, &s, &n);
    }
    const char *start = c->p;
    while (c->p < c->end && token_char(*c->p))
        c->p++;
    size_t n = (size_t)(c->p - start);
    if (n == 0)
        return bad(c, "unexpected character");
    if (((ch >= '0' && ch <= '9') || ch == '-'))
        return 0;
    if ((n == 4 && memcmp(start, "true", 4) == 0) || (n == 5 && memcmp(start, "false", 5) == 0) ||
        (n == 4 && memcmp(start, "null", 4) == 0))
        return 0;
    c->p = start;
    return bad(c, "unknown literal");
}

static bool is_null(struct cur *c)
{
    ws(c);
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        return true;
    }
    return false;
}

static int read_int(struct cur *c, int64_t *out)
{
    ws(c);
    const char *start = c->p;
    bool neg = c->p < c->end && *c->p == '-';
    if (neg)
        c->p++;
    int64_t v = 0;
    int digits = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (++digits > 18)
            return bad(c, "id out of range");
        v = v * 10 + (*c->p - '0');
        c->p++;
    }
    if (digits == 0 || (c->p < c->end && token_char(*c->p))) {
        c->p = start;
        return bad(c, "expected an integer id");
    }
    *out = neg ? -v : v;
    return 0;
}

static inline bool key_is(const char *k, size_t kn, const char *want)
{
    return strlen(want) == kn && memcmp(k, want, kn) == 0;
}

static struct tc_mapscan_item *push(struct tc_mapscan_list *l)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            abort();
    }
    struct tc_mapscan_item *it = &l->v[l->n++];
    memset(it, 0, sizeof *it);
    return it;
}

/* At '{': one node or PeerChange object; reads its id member (idkey). */
static int scan_element(struct cur *c, const char *idkey, struct tc_mapscan_item *it)
{
    ws(c);
    if (c->p >= c->end || *c->p != '{')
        return bad(c, "expected an object");
    const char *start = c->p;
    if (++c->depth > TC_MAX_DEPTH)
        return bad(c, "nested too deeply");
    c->p++;
    bool have_id = false;
    size_t idlen = strlen(idkey);
    ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
    } else {
        for (;;) {
            ws(c);
            const char *k;
            size_t kn;
            if (string_span(c, &k, &kn) < 0)
                return -1;
            ws(c);
            if (c->p >= c->end || *c->p != ':')
                return bad(c, "expected ':'");
            c->p++;
            if (kn == idlen && memcmp(k, idkey, kn) == 0) {
                if (read_int(c, &it->id) < 0)
                    return -1;
                have_id = true;
            } else if (skip_value(c) < 0) {
                return -1;
            }
            ws(c);
            if (c->p < c->end && *c->p == ',') {
                c->p++;
                continue;
            }
            if (c->p >= c->end || *c->p != '}')
                return bad(c, "expected ',' or '}'");
            c->p++;
            break;
        }
    }
    c->depth--;
    if (!have_id)
        return bad(c, idkey[0] == 'N' ? "PeerChange without NodeID" : "node without ID");
    it->off = (size_t)(start - c->base);
    it->len = (size_t)(c->p - start);
    return 0;
}

/* An array of objects (or null). */
static int scan_list(struct cur *c, const char *idkey, struct tc_mapscan_list *l)
{
    if (is_null(c))
        return 0;
    if (c->p >= c->end || *c->p != '[')
        return bad(c, "expected an array");
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 0;
    }
    for (;;) {
        if (scan_element(c, idkey, push(l)) < 0)
            return -1;
        ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p >= c->end || *c->p != ']')
            return bad(c, "expected ',' or ']'");
        c->p++;
        return 0;
    }
}

static int scan_removed(struct cur *c, struct tc_mapscan *s)
{
    if (is_null(c))
        return 0;
    if (c->p >= c->end || *c->p != '[')
        return bad(c, "PeersRemoved: expected an array");
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 0;
    }
    for (;;) {
        int64_t id;
        if (read_int(c, &id) < 0)
            return -1;
        if (s->n_removed == s->cap_removed) {
            s->cap_removed = s->cap_removed ? s->cap_removed * 2 : 16;
            s->removed = realloc(s->removed, s->cap_removed * sizeof *s->removed);
            if (!s->removed)
                abort();
        }
        s->removed[s->n_removed++] = id;
        ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p >= c->end || *c->p != ']')
            return bad(c, "PeersRemoved: expected ',' or ']'");
        c->p++;
        return 0;
    }
}

/* {"<id>": bool, ...} */
static int scan_online_change(struct cur *c, struct tc_mapscan *s)
{
    if (is_null(c))
        return 0;
    if (c->p >= c->end || *c->p != '{')
        return bad(c, "OnlineChange: expected an object");
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 0;
    }
    for (;;) {
        ws(c);
        const char *k;
        size_t kn;
        if (string_span(c, &k, &kn) < 0)
            return -1;
        char num[24];
        if (kn == 0 || kn >= sizeof num)
            return bad(c, "OnlineChange: bad node id");
        memcpy(num, k, kn);
        num[kn] = '\0';
        char *e;
        long long id = strtoll(num, &e, 10);
        if (*e)
            return bad(c, "OnlineChange: bad node id");
        ws(c);
        if (c->p >= c->end || *c->p != ':')
            return bad(c, "expected ':'");
        c->p++;
        ws(c);
        struct tc_mapscan_item *it = push(&s->online_change);
        it->id = id;
        it->off = (size_t)(c->p - c->base);
        if (skip_value(c) < 0)
            return -1;
        it->len = (size_t)(c->p - c->base) - it->off;
        ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p >= c->end || *c->p != '}')
            return bad(c, "OnlineChange: expected ',' or '}'");
        c->p++;
        return 0;
    }
}

void tc_mapscan_init(struct tc_mapscan *s)
{
    memset(s, 0, sizeof *s);
}

void tc_mapscan_free(struct tc_mapscan *s)
{
    free(s->peers.v);
    free(s->peers_changed.v);
    free(s->patches.v);
    free(s->online_change.v);
    free(s->removed);
    memset(s, 0, sizeof *s);
}

static void reset(struct tc_mapscan *s)
{
    s->keep_alive = s->has_node = s->has_packet_filter = false;
    memset(&s->node, 0, sizeof s->node);
    s->peers.n = s->peers_changed.n = s->patches.n = s->online_change.n = 0;
    s->n_removed = 0;
}

int tc_mapscan_run(struct tc_mapscan *s, const char *json, size_t len, char *err, size_t errlen)
{
    reset(s);
    struct cur c = {.base = json, .p = json, .end = json + len, .err = err, .errlen = errlen};
    ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return bad(&c, "expected an object");
    c.p++;
    c.depth = 1;
    ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            ws(&c);
            const char *k;
            size_t kn;
            if (string_span(&c, &k, &kn) < 0)
                return -1;
            ws(&c);
            if (c.p >= c.end || *c.p != ':')
                return bad(&c, "expected ':'");
            c.p++;
            ws(&c);
            int rc;
            if (key_is(k, kn, "Peers"))
                rc = scan_list(&c, "ID", &s->peers);
            else if (key_is(k, kn, "PeersChanged"))
                rc = scan_list(&c, "ID", &s->peers_changed);
            else if (key_is(k, kn, "PeersChangedPatch"))
                rc = scan_list(&c, "NodeID", &s->patches);
            else if (key_is(k, kn, "PeersRemoved"))
                rc = scan_removed(&c, s);
            else if (key_is(k, kn, "OnlineChange"))
                rc = scan_online_change(&c, s);
            else if (key_is(k, kn, "Node")) {
                rc = is_null(&c) ? 0 : scan_element(&c, "ID", &s->node);
                s->has_node = rc == 0 && s->node.len > 0;
            } else if (key_is(k, kn, "KeepAlive")) {
                s->keep_alive = c.end - c.p >= 4 && memcmp(c.p, "true", 4) == 0;
                rc = skip_value(&c);
            } else {
                if (key_is(k, kn, "PacketFilter") || key_is(k, kn, "PacketFilters"))
                    s->has_packet_filter = true;
                rc = skip_value(&c);
            }
            if (rc < 0)
                return -1;
            ws(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p >= c.end || *c.p != '}')
                return bad(&c, "expected ',' or '}'");
            c.p++;
            break;
        }
    }
    ws(&c);
    if (c.p != c.end)
        return bad(&c, "trailing data after the object");
    return 0;
}
