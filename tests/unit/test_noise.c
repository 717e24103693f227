#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "proto/keys.h"
#include "proto/noise.h"
#include "tests/unit/fixture.h"

static json_t *fx_noise, *fx_http;
static char fx_noise_path[512], fx_http_path[512];

/* ---- fixture helpers ---- */

struct session_fx {
    json_t *j;
    uint16_t version;
    uint8_t client_eph[32], client_machine[32], client_machine_pub[32];
    uint8_t server_eph[32], server_static[32], server_static_pub[32];
    uint8_t learned[32], hash[32], key_c2s[32], key_s2c[32];
    uint8_t init[HW_NOISE_INITIATION_LEN], resp[HW_NOISE_RESPONSE_LEN];
};

static int load_session(json_t *j, struct session_fx *s)
{
    json_t *k = json_object_get(j, "keys");
    memset(s, 0, sizeof *s);
    s->j = j;
    s->version = (uint16_t)json_integer_value(json_object_get(j, "protocol_version"));
    if (fx_key(fx_str(k, "client_ephemeral_private"), s->client_eph) ||
        fx_key(fx_str(k, "client_machine_private"), s->client_machine) ||
        fx_key(fx_str(k, "client_machine_public"), s->client_machine_pub) ||
        fx_key(fx_str(k, "server_ephemeral_private"), s->server_eph) ||
        fx_key(fx_str(k, "server_static_private"), s->server_static) ||
        fx_key(fx_str(k, "server_static_public"), s->server_static_pub) ||
        fx_key(fx_str(j, "server_learned_client_machine_public"), s->learned) ||
        fx_key(fx_str(j, "handshake_hash"), s->hash) ||
        fx_key(fx_str(j, "transport_key_c2s"), s->key_c2s) ||
        fx_key(fx_str(j, "transport_key_s2c"), s->key_s2c) ||
        fx_hex(fx_str(j, "initiation_hex"), s->init, sizeof s->init) != HW_NOISE_INITIATION_LEN ||
        fx_hex(fx_str(j, "response_hex"), s->resp, sizeof s->resp) != HW_NOISE_RESPONSE_LEN)
        return -1;
    return 0;
}

#define FOR_EACH_SESSION(s, idx)                                                              \
    if (!fx_noise)                                                                            \
        SKIP("fixture %s not found", fx_noise_path);                                          \
    json_t *sessions_ = json_object_get(fx_noise, "sessions");                                \
    CHECK(json_array_size(sessions_) == 2, "want 2 sessions, have %zu", json_array_size(sessions_)); \
    for (size_t idx = 0; idx < json_array_size(sessions_); idx++)                             \
        if (load_session(json_array_get(sessions_, idx), &s) < 0) {                           \
            CHECK(0, "session %zu: malformed fixture", idx);                                  \
        } else

struct trace_log {
    int n;
    const char *step[16];
    uint8_t h[16][32], ck[16][32];
};

static void record_trace(void *arg, const char *step, const uint8_t h[32], const uint8_t ck[32])
{
    struct trace_log *t = arg;
    if (t->n < 16) {
        t->step[t->n] = step;
        memcpy(t->h[t->n], h, 32);
        memcpy(t->ck[t->n], ck, 32);
    }
    t->n++;
}

/* Index of the first trace entry that differs from the fixture's handshake_trace, or -1. */
static int trace_mismatch(const struct trace_log *t, json_t *fixture_trace, int from, int to)
{
    for (int i = from; i < to; i++) {
        json_t *e = json_array_get(fixture_trace, (size_t)i);
        uint8_t h[32], ck[32];
        if (i >= t->n || fx_key(fx_str(e, "h_after"), h) < 0 || fx_key(fx_str(e, "ck_after"), ck) < 0 ||
            memcmp(h, t->h[i], 32) != 0 || memcmp(ck, t->ck[i], 32) != 0)
            return i;
    }
    return -1;
}

static const char *const step_names[] = {"initialize", "prologue", "s", "e", "es", "ss", "e", "ee", "se"};

/* ---- handshake against the upstream vectors ---- */

static void handshake_initiator_matches_fixture(void)
{
    struct session_fx s;
    FOR_EACH_SESSION(s, i) {
        struct trace_log t = {0};
        struct hw_noise_handshake hs = {.trace = record_trace, .trace_arg = &t};
        uint8_t init[HW_NOISE_INITIATION_LEN];
        CHECK(hw_noise_client_start(&hs, s.version, s.client_machine, s.server_static_pub,
                                    s.client_eph, init) == HW_NOISE_OK, "start: %s", hs.error);
        json_t *ft = json_object_get(s.j, "handshake_trace");
        CHECK_INT(json_array_size(ft), 9);
        CHECK_INT(t.n, 6);
        int bad = trace_mismatch(&t, ft, 0, 6);
        CHECK(bad < 0, "session %zu: h/ck first differ after step %d (%s)", i, bad,
              fx_str(json_array_get(ft, (size_t)bad), "step"));
        CHECK_MEM(init, s.init, sizeof init);

        /* The same bytes, as they travel in X-Tailscale-Handshake. */
        char b64[200];
        EVP_EncodeBlock((unsigned char *)b64, init, sizeof init);
        CHECK_STR(b64, fx_str(s.j, "initiation_base64_as_in_X-Tailscale-Handshake"));

        struct hw_noise_session sess;
        size_t used = 0;
        CHECK(hw_noise_client_finish(&hs, s.resp, sizeof s.resp, &used, &sess) == HW_NOISE_OK,
              "finish: %s", hs.error);
        CHECK_INT(used, HW_NOISE_RESPONSE_LEN);
        CHECK_INT(t.n, 9);
        bad = trace_mismatch(&t, ft, 6, 9);
        CHECK(bad < 0, "session %zu: h/ck first differ after step %d", i, bad);
        for (int k = 0; k < 9; k++)
            CHECK_STR(t.step[k], step_names[k]);
        CHECK_MEM(sess.handshake_hash, s.hash, 32);
        CHECK_MEM(sess.c2s.key, s.key_c2s, 32);
        CHECK_MEM(sess.s2c.key, s.key_s2c, 32);
        CHECK_MEM(sess.peer, s.server_static_pub, 32);
        CHECK(sess.c2s.nonce == 0 && sess.s2c.nonce == 0, "nonces start at 0");
        CHECK_INT(sess.version, s.version);
        /* Secrets are gone from the handshake object once it is done. */
        CHECK(sodium_is_zero(hs.e_priv, 32) && sodium_is_zero(hs.s_priv, 32) &&
              sodium_is_zero(hs.ck, 32), "handshake secrets left behind");
        hw_noise_session_wipe(&sess);
    }
}

static void handshake_responder_matches_fixture(void)
{
    struct session_fx s;
    FOR_EACH_SESSION(s, i) {
        struct trace_log t = {0};
        struct hw_noise_handshake hs = {.trace = record_trace, .trace_arg = &t};
        uint8_t resp[HW_NOISE_RESPONSE_LEN];
        struct hw_noise_session sess;
        CHECK(hw_noise_server_respond(&hs, s.server_static, s.init, sizeof s.init, s.server_eph,
                                      resp, &sess) == HW_NOISE_OK, "respond: %s", hs.error);
        int bad = trace_mismatch(&t, json_object_get(s.j, "handshake_trace"), 0, 9);
        CHECK(bad < 0, "session %zu: h/ck first differ after step %d", i, bad);
        CHECK_MEM(resp, s.resp, sizeof resp);
        CHECK_MEM(sess.peer, s.learned, 32);
        CHECK_MEM(sess.peer, s.client_machine_pub, 32);
        CHECK_MEM(sess.handshake_hash, s.hash, 32);
        CHECK_MEM(sess.c2s.key, s.key_c2s, 32);
        CHECK_MEM(sess.s2c.key, s.key_s2c, 32);
        CHECK_INT(sess.version, 133);
        CHECK(sodium_is_zero(hs.e_priv, 32) && sodium_is_zero(hs.ck, 32), "secrets left behind");
    }
}

/* ---- transport records against the upstream vectors ---- */

static uint8_t big_a[65536], big_b[65536], big_c[65536];

/* Concatenated wire bytes (and plaintexts) of the session's records in one direction. */
static size_t direction_stream(json_t *records, const char *dir, uint8_t *wire, size_t *wire_len,
                               uint8_t *plain)
{
    size_t w = 0, p = 0, n = 0, k;
    json_t *rec;
    json_array_foreach(records, k, rec) {
        if (strcmp(fx_str(rec, "direction"), dir) != 0)
            continue;
        long a = fx_hex(fx_str(rec, "wire_hex"), wire + w, 65536 - w);
        long b = fx_hex(fx_str(rec, "plaintext_hex"), plain + p, 65536 - p);
        if (a < 0 || b < 0)
            return 0;
        w += (size_t)a;
        p += (size_t)b;
        n++;
    }
    *wire_len = w;
    return n ? p : 0;
}

static void records_seal_match_fixture(void)
{
    struct session_fx s;
    int records_checked = 0, writes_checked = 0;
    FOR_EACH_SESSION(s, i) {
        struct hw_noise_cipher c2s = {.nonce = 0}, s2c = {.nonce = 0};
        memcpy(c2s.key, s.key_c2s, 32);
        memcpy(s2c.key, s.key_s2c, 32);
        struct hw_noise_cipher c2s_one = c2s, s2c_one = s2c;
        json_t *records = json_object_get(s.j, "records");

        /* Record by record: the nonce counter and the exact wire bytes. */
        size_t k;
        json_t *rec;
        json_array_foreach(records, k, rec) {
            bool c2s_dir = strcmp(fx_str(rec, "direction"), "c2s") == 0;
            struct hw_noise_cipher *c = c2s_dir ? &c2s_one : &s2c_one;
            uint8_t nonce[12], want_nonce[12];
            CHECK_INT(c->nonce, json_integer_value(json_object_get(rec, "nonce_counter")));
            hw_noise_nonce(c->nonce, nonce);
            CHECK(fx_hex(fx_str(rec, "nonce_hex"), want_nonce, 12) == 12, "nonce hex");
            CHECK_MEM(nonce, want_nonce, 12);
            long plen = fx_hex(fx_str(rec, "plaintext_hex"), big_a, sizeof big_a);
            long wlen = fx_hex(fx_str(rec, "wire_hex"), big_b, sizeof big_b);
            CHECK(plen >= 0 && plen <= HW_NOISE_MAX_PLAINTEXT, "record %zu plaintext", k);
            CHECK_INT(wlen, plen + HW_NOISE_RECORD_OVERHEAD);
            CHECK_INT(wlen, json_integer_value(json_object_get(rec, "wire_len")));
            CHECK(hw_noise_seal_record(c, big_a, (size_t)plen, big_c) == 0, "seal record %zu", k);
            CHECK_MEM(big_c, big_b, (size_t)wlen);
            records_checked++;
        }

        /* Write by write: one seal call splits exactly as upstream's Conn.Write does. */
        json_t *w;
        json_array_foreach(json_object_get(s.j, "write_calls"), k, w) {
            bool c2s_dir = strcmp(fx_str(w, "direction"), "c2s") == 0;
            struct hw_noise_cipher *c = c2s_dir ? &c2s : &s2c;
            json_int_t call = json_integer_value(json_object_get(w, "write_call"));
            long plen = fx_hex(fx_str(w, "plaintext_hex"), big_a, sizeof big_a);
            CHECK(plen > 0, "write %zu", k);
            size_t want_len = 0, nrec = 0, r;
            json_array_foreach(records, r, rec) {
                if (json_integer_value(json_object_get(rec, "write_call")) != call)
                    continue;
                long n = fx_hex(fx_str(rec, "wire_hex"), big_b + want_len, sizeof big_b - want_len);
                CHECK(n > 0, "wire hex");
                want_len += (size_t)n;
                nrec++;
            }
            CHECK_INT(nrec, json_integer_value(json_object_get(w, "records")));
            CHECK_INT(hw_noise_sealed_len((size_t)plen), want_len);
            size_t written = 0;
            const char *why = NULL;
            CHECK(hw_noise_seal(c, big_a, (size_t)plen, big_c, sizeof big_c, &written, &why) == 0,
                  "seal: %s", why);
            CHECK_INT(written, want_len);
            CHECK_MEM(big_c, big_b, want_len);
            writes_checked++;
        }
        CHECK_INT(c2s.nonce, c2s_one.nonce);
        CHECK_INT(s2c.nonce, s2c_one.nonce);
    }
    CHECK(records_checked == 19 && writes_checked == 13, "checked %d records, %d writes",
          records_checked, writes_checked);
}

static void records_open_in_order(void)
{
    struct session_fx s;
    int opened = 0;
    FOR_EACH_SESSION(s, i) {
        struct hw_noise_cipher c2s = {.nonce = 0}, s2c = {.nonce = 0};
        memcpy(c2s.key, s.key_c2s, 32);
        memcpy(s2c.key, s.key_s2c, 32);
        static struct hw_noise_reader rc2s, rs2c;
        hw_noise_reader_init(&rc2s, &c2s);
        hw_noise_reader_init(&rs2c, &s2c);
        size_t k;
        json_t *rec;
        json_array_foreach(json_object_get(s.j, "records"), k, rec) {
            struct hw_noise_reader *r = strcmp(fx_str(rec, "direction"), "c2s") == 0 ? &rc2s : &rs2c;
            long wlen = fx_hex(fx_str(rec, "wire_hex"), big_b, sizeof big_b);
            long plen = fx_hex(fx_str(rec, "plaintext_hex"), big_a, sizeof big_a);
            const uint8_t *in = big_b, *pt = NULL;
            size_t in_len = (size_t)wlen, pt_len = 0;
            CHECK(hw_noise_reader_next(r, &in, &in_len, &pt, &pt_len) == 1, "record %zu: %s", k, r->error);
            CHECK_INT(in_len, 0);
            CHECK_INT(pt_len, plen);
            CHECK_MEM(pt, big_a, (size_t)plen);
            CHECK(hw_noise_reader_next(r, &in, &in_len, &pt, &pt_len) == 0, "extra plaintext");
            opened++;
        }
        hw_noise_reader_wipe(&rc2s);
        hw_noise_reader_wipe(&rs2c);
    }
    CHECK(opened == 19, "opened %d", opened);
}

struct collect {
    uint8_t *buf;
    size_t len, cap;
    int calls;
};

static int collect_plaintext(void *arg, const uint8_t *pt, size_t len)
{
    struct collect *c = arg;
    if (len == 0 || len > HW_NOISE_MAX_PLAINTEXT || c->len + len > c->cap)
        return -7;
    memcpy(c->buf + c->len, pt, len);
    c->len += len;
    c->calls++;
    return 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void records_stream_any_chunking(void)
{
    struct session_fx s;
    static const char *dirs[] = {"c2s", "s2c"};
    int streams = 0;
    FOR_EACH_SESSION(s, i) {
        for (int d = 0; d < 2; d++) {
            size_t wire_len = 0;
            size_t plain_len = direction_stream(json_object_get(s.j, "records"), dirs[d], big_b,
                                                &wire_len, big_a);
            CHECK(plain_len > 0, "stream %s", dirs[d]);
            struct hw_noise_cipher c = {.nonce = 0};
            memcpy(c.key, d == 0 ? s.key_c2s : s.key_s2c, 32);
            static struct hw_noise_reader r;

            /* One byte at a time: every record is cut at every possible offset. */
            hw_noise_reader_init(&r, &c);
            struct collect col = {big_c, 0, sizeof big_c, 0};
            for (size_t o = 0; o < wire_len; o++)
                CHECK(hw_noise_reader_feed(&r, big_b + o, 1, collect_plaintext, &col) == 0,
                      "%s byte %zu: %s", dirs[d], o, r.error);
            CHECK_INT(col.len, plain_len);
            CHECK_MEM(col.buf, big_a, plain_len);
            CHECK(r.have == 0, "bytes left over");

            /* Random chunk sizes, from tiny to several records at once. */
            for (int round = 0; round < 200; round++) {
                hw_noise_reader_init(&r, &c);
                col.len = 0;
                size_t o = 0;
                while (o < wire_len) {
                    size_t n = 1 + (size_t)(rng() % (round % 2 ? 9000 : 64));
                    if (n > wire_len - o)
                        n = wire_len - o;
                    CHECK(hw_noise_reader_feed(&r, big_b + o, n, collect_plaintext, &col) == 0,
                          "%s round %d at %zu: %s", dirs[d], round, o, r.error);
                    o += n;
                }
                CHECK_INT(col.len, plain_len);
                CHECK_MEM(col.buf, big_a, plain_len);
            }

            /* All at once. */
            hw_noise_reader_init(&r, &c);
            col.len = 0;
            col.calls = 0;
            CHECK(hw_noise_reader_feed(&r, big_b, wire_len, collect_plaintext, &col) == 0, "whole");
            CHECK_MEM(col.buf, big_a, plain_len);
            CHECK_INT(r.cipher.nonce, col.calls);
            hw_noise_reader_wipe(&r);
            streams++;
        }
    }
    CHECK_INT(streams, 4);
}

static void little_endian_nonce_fails(void)
{
    struct session_fx s;
    int le_failed = 0, counter0 = 0;
    FOR_EACH_SESSION(s, i) {
        size_t k;
        json_t *rec;
        json_array_foreach(json_object_get(s.j, "records"), k, rec) {
            const uint8_t *key = strcmp(fx_str(rec, "direction"), "c2s") == 0 ? s.key_c2s : s.key_s2c;
            uint64_t counter = (uint64_t)json_integer_value(json_object_get(rec, "nonce_counter"));
            long wlen = fx_hex(fx_str(rec, "wire_hex"), big_b, sizeof big_b);
            CHECK(wlen > HW_NOISE_RECORD_OVERHEAD - 1, "wire");
            /* The Noise specification's nonce: 4 zero bytes, counter little-endian. */
            uint8_t le[12] = {0}, be[12];
            for (int b = 0; b < 8; b++)
                le[4 + b] = (uint8_t)(counter >> (8 * b));
            hw_noise_nonce(counter, be);
            unsigned long long n;
            int le_ok = crypto_aead_chacha20poly1305_ietf_decrypt(big_a, &n, NULL, big_b + 3,
                                                                  (unsigned long long)wlen - 3,
                                                                  NULL, 0, le, key) == 0;
            int be_ok = crypto_aead_chacha20poly1305_ietf_decrypt(big_a, &n, NULL, big_b + 3,
                                                                  (unsigned long long)wlen - 3,
                                                                  NULL, 0, be, key) == 0;
            CHECK(be_ok, "record %zu: big-endian nonce failed", k);
            if (counter == 0) {
                CHECK(le_ok, "counter 0 is the same either way");
                counter0++;
            } else {
                CHECK(!le_ok, "record %zu: little-endian nonce decrypted", k);
                le_failed++;
            }
        }
    }
    /* The fixture's cross-check: 8 of 10 and 7 of 9 records fail little-endian. */
    CHECK(le_failed == 15 && counter0 == 4, "le failed %d, counter-0 %d", le_failed, counter0);
}

/* ---- error message and refusals ---- */

static void bad_initiation_error_message(void)
{
    if (!fx_noise)
        SKIP("fixture %s not found", fx_noise_path);
    json_t *ex = json_object_get(fx_noise, "error_message_example");
    uint8_t want[256], got[256];
    long wlen = fx_hex(fx_str(ex, "wire_hex"), want, sizeof want);
    CHECK(wlen > 3, "fixture wire_hex");

    struct session_fx s;
    CHECK(load_session(json_array_get(json_object_get(fx_noise, "sessions"), 0), &s) == 0, "session");
    struct hw_noise_handshake hs = {0};
    uint8_t resp[HW_NOISE_RESPONSE_LEN];
    struct hw_noise_session sess;
    /* upstream was handed a 100-byte initiation */
    CHECK(hw_noise_server_respond(&hs, s.server_static, s.init, 100, NULL, resp, &sess) ==
          HW_NOISE_ERROR, "100 bytes accepted");
    CHECK(hs.refuse, "size error must be sent to the client");
    CHECK_STR(hs.error, "wrong handshake initiation size");
    size_t n = hw_noise_error_message(hs.error, got, sizeof got);
    CHECK_INT(n, wlen);
    CHECK_MEM(got, want, n);

    /* What our client makes of it, fed in two pieces. */
    struct hw_noise_handshake client = {0};
    uint8_t init[HW_NOISE_INITIATION_LEN];
    CHECK(hw_noise_client_start(&client, 133, s.client_machine, s.server_static_pub, NULL, init) == 0,
          "start");
    size_t used = 99;
    CHECK(hw_noise_client_finish(&client, want, 10, &used, &sess) == HW_NOISE_AGAIN, "partial");
    CHECK_INT(used, 0);
    CHECK(hw_noise_client_finish(&client, want, (size_t)wlen, &used, &sess) == HW_NOISE_ERROR,
          "error message accepted");
    CHECK_STR(client.error, "server error: \"wrong handshake initiation size\"");
    CHECK_INT(used, wlen);

    /* Truncation: only what fits, with a matching length field. */
    CHECK_INT(hw_noise_error_message("abcdef", got, 5), 5);
    CHECK(got[0] == 3 && got[1] == 0 && got[2] == 2 && memcmp(got + 3, "ab", 2) == 0, "cut");
    CHECK_INT(hw_noise_error_message("abcdef", got, 2), 0);
}

static void refused_initiations(void)
{
    if (!fx_noise)
        SKIP("fixture %s not found", fx_noise_path);
    struct session_fx s;
    CHECK(load_session(json_array_get(json_object_get(fx_noise, "sessions"), 1), &s) == 0, "session");
    uint8_t init[HW_NOISE_INITIATION_LEN + 1], resp[HW_NOISE_RESPONSE_LEN];
    struct hw_noise_session sess;
    struct hw_noise_handshake hs = {0};
    static const struct { const char *what; int offset; uint8_t xor_; size_t len; const char *error; bool refuse; } cases[] = {
        {"truncated", -1, 0, 64, "wrong handshake initiation size", true},
        {"empty", -1, 0, 0, "wrong handshake initiation size", true},
        {"one byte long", -1, 0, 102, "wrong handshake initiation size", true},
        {"type byte 2", 2, 0x03, 101, "unexpected handshake message type", true},
        {"length field 97", 4, 0x01, 101, "wrong handshake initiation length", true},
        {"length field 96+256", 3, 0x01, 101, "wrong handshake initiation length", true},
        {"version changed", 1, 0x01, 101, "decrypting machine key: authentication failed", false},
        {"ephemeral bit flipped", 10, 0x20, 101, "decrypting machine key: authentication failed", false},
        {"machine key ciphertext", 40, 0x01, 101, "decrypting machine key: authentication failed", false},
        {"machine key tag", 84, 0x80, 101, "decrypting machine key: authentication failed", false},
        {"initiation tag", 100, 0x01, 101, "decrypting initiation tag: authentication failed", false},
    };
    for (size_t c = 0; c < HW_ARRAY_LEN(cases); c++) {
        memcpy(init, s.init, HW_NOISE_INITIATION_LEN);
        init[HW_NOISE_INITIATION_LEN] = 0;
        if (cases[c].offset >= 0)
            init[cases[c].offset] ^= cases[c].xor_;
        CHECK(hw_noise_server_respond(&hs, s.server_static, init, cases[c].len, NULL, resp, &sess) ==
              HW_NOISE_ERROR, "%s accepted", cases[c].what);
        CHECK(strcmp(hs.error, cases[c].error) == 0, "%s: error \"%s\"", cases[c].what, hs.error);
        CHECK(hs.refuse == cases[c].refuse, "%s: refuse", cases[c].what);
    }

    /* A low-order ephemeral forces a zero DH: refused before any decryption. */
    memcpy(init, s.init, HW_NOISE_INITIATION_LEN);
    memset(init + 5, 0, 32);
    CHECK(hw_noise_server_respond(&hs, s.server_static, init, HW_NOISE_INITIATION_LEN, NULL, resp,
                                  &sess) == HW_NOISE_ERROR, "zero ephemeral accepted");
    CHECK(strncmp(hs.error, "computing es:", 13) == 0, "error: %s", hs.error);

    /* The wrong server key: it cannot even read the machine key. */
    uint8_t other[32];
    hw_key_generate(other);
    CHECK(hw_noise_server_respond(&hs, other, s.init, HW_NOISE_INITIATION_LEN, NULL, resp, &sess) ==
          HW_NOISE_ERROR, "wrong server key accepted");

    /* A client that encrypts the zero machine key is refused at ss. */
    struct hw_noise_handshake client = {0};
    uint8_t zero[32] = {0};
    CHECK(hw_noise_client_start(&client, 133, zero, s.server_static_pub, NULL, init) == HW_NOISE_ERROR,
          "client with zero key started");
}

static void client_rejects_bad_responses(void)
{
    if (!fx_noise)
        SKIP("fixture %s not found", fx_noise_path);
    struct session_fx s;
    CHECK(load_session(json_array_get(json_object_get(fx_noise, "sessions"), 0), &s) == 0, "session");
    static const struct { const char *what; int offset; uint8_t xor_; const char *error; } cases[] = {
        {"type 5", 0, 0x07, "unexpected response message type 5"},
        {"type 4", 0, 0x06, "unexpected response message type 4"},
        {"length 49", 2, 0x01, "wrong length 49 received for handshake response"},
        {"ephemeral", 3, 0x01, "decrypting payload: handshake response failed authentication"},
        {"tag", 50, 0x40, "decrypting payload: handshake response failed authentication"},
    };
    uint8_t init[HW_NOISE_INITIATION_LEN], resp[HW_NOISE_RESPONSE_LEN + 40];
    struct hw_noise_session sess;
    size_t used;
    for (size_t c = 0; c < HW_ARRAY_LEN(cases); c++) {
        struct hw_noise_handshake hs = {0};
        CHECK(hw_noise_client_start(&hs, s.version, s.client_machine, s.server_static_pub,
                                    s.client_eph, init) == 0, "start");
        memcpy(resp, s.resp, HW_NOISE_RESPONSE_LEN);
        resp[cases[c].offset] ^= cases[c].xor_;
        CHECK(hw_noise_client_finish(&hs, resp, HW_NOISE_RESPONSE_LEN, &used, &sess) == HW_NOISE_ERROR,
              "%s accepted", cases[c].what);
        CHECK(strcmp(hs.error, cases[c].error) == 0, "%s: \"%s\"", cases[c].what, hs.error);
        CHECK(sodium_is_zero(hs.e_priv, 32) && sodium_is_zero(hs.s_priv, 32), "secrets kept");
        /* A failed handshake stays failed. */
        CHECK(hw_noise_client_finish(&hs, s.resp, HW_NOISE_RESPONSE_LEN, &used, &sess) ==
              HW_NOISE_ERROR, "%s: retry accepted", cases[c].what);
    }

    /* Byte by byte, then with the early payload's records corked behind it. */
    struct hw_noise_handshake hs = {0};
    CHECK(hw_noise_client_start(&hs, s.version, s.client_machine, s.server_static_pub, s.client_eph,
                                init) == 0, "start");
    for (size_t n = 0; n < HW_NOISE_RESPONSE_LEN; n++)
        CHECK(hw_noise_client_finish(&hs, s.resp, n, &used, &sess) == HW_NOISE_AGAIN, "at %zu", n);
    memcpy(resp, s.resp, HW_NOISE_RESPONSE_LEN);
    memset(resp + HW_NOISE_RESPONSE_LEN, 0x04, 40);
    CHECK(hw_noise_client_finish(&hs, resp, sizeof resp, &used, &sess) == HW_NOISE_OK, "%s", hs.error);
    CHECK_INT(used, HW_NOISE_RESPONSE_LEN);
    CHECK_MEM(sess.s2c.key, s.key_s2c, 32);
    /* Finishing twice is a caller bug, reported rather than undefined. */
    CHECK(hw_noise_client_finish(&hs, s.resp, HW_NOISE_RESPONSE_LEN, &used, &sess) == HW_NOISE_ERROR,
          "second finish");

    /* A server error text with quotes and control bytes comes back escaped. */
    struct hw_noise_handshake hs2 = {0};
    CHECK(hw_noise_client_start(&hs2, s.version, s.client_machine, s.server_static_pub, NULL, init) == 0,
          "start");
    uint8_t msg[32];
    size_t n = hw_noise_error_message("a\"b\n\x01", msg, sizeof msg);
    CHECK(hw_noise_client_finish(&hs2, msg, n, &used, &sess) == HW_NOISE_ERROR, "error msg");
    CHECK_STR(hs2.error, "server error: \"a\\\"b\\x0a\\x01\"");

    /* A long text is not waited for in full: its start is enough to report. */
    struct hw_noise_handshake hs3 = {0};
    CHECK(hw_noise_client_start(&hs3, s.version, s.client_machine, s.server_static_pub, NULL, init) == 0,
          "start");
    static char long_text[3000];
    memset(long_text, 'x', sizeof long_text - 1);
    static uint8_t long_msg[3100];
    n = hw_noise_error_message(long_text, long_msg, sizeof long_msg);
    CHECK_INT(n, 3 + 2999);
    CHECK(hw_noise_client_finish(&hs3, long_msg, 3 + 127, &used, &sess) == HW_NOISE_AGAIN, "127");
    CHECK(hw_noise_client_finish(&hs3, long_msg, 3 + 128, &used, &sess) == HW_NOISE_ERROR, "128");
    CHECK(strncmp(hs3.error, "server error: \"xxxx", 19) == 0, "error: %s", hs3.error);
}

/* ---- transport garbage ---- */

static void reader_rejects_garbage(void)
{
    struct hw_noise_cipher c = {.nonce = 0};
    hw_key_generate(c.key);
    static struct hw_noise_reader r;
    uint8_t rec[HW_NOISE_MAX_RECORD + 8];
    const uint8_t *in, *pt;
    size_t in_len, pt_len;
    const uint8_t msg[] = "hello, noise";

    /* corrupted tag */
    struct hw_noise_cipher tx = c;
    CHECK(hw_noise_seal_record(&tx, msg, sizeof msg, rec) == 0, "seal");
    size_t n = sizeof msg + HW_NOISE_RECORD_OVERHEAD;
    rec[n - 1] ^= 0x10;
    hw_noise_reader_init(&r, &c);
    in = rec;
    in_len = n;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "corrupt tag accepted");
    CHECK(strstr(r.error, "failed authentication"), "error: %s", r.error);
    CHECK(sodium_is_zero(r.cipher.key, 32), "key kept after failure");
    /* sticky: even a good record is refused now */
    tx = c;
    hw_noise_seal_record(&tx, msg, sizeof msg, rec);
    in = rec;
    in_len = n;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "reader recovered");

    /* oversize: a header announcing 4097 bytes total is refused on the header alone */
    hw_noise_reader_init(&r, &c);
    uint8_t big_hdr[3] = {4, 0x0f, 0xfe};
    in = big_hdr;
    in_len = 3;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "4097-byte record accepted");
    CHECK(strstr(r.error, "4097") && strstr(r.error, "4096"), "error: %s", r.error);
    /* ... and the same when the header arrives in pieces */
    hw_noise_reader_init(&r, &c);
    in = big_hdr;
    in_len = 2;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 0, "partial header");
    in_len = 1;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "split 4097 accepted");
    /* 4096 exactly is a legal size (it is a full record) */
    hw_noise_reader_init(&r, &c);
    uint8_t max_hdr[3] = {4, 0x0f, 0xfd};
    in = max_hdr;
    in_len = 3;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 0, "4096 refused: %s", r.error);

    /* type 5 with a valid-looking length, and type 2 (a handshake message after the handshake) */
    for (uint8_t type = 0; type < 8; type++) {
        if (type == 4)
            continue;
        tx = c;
        hw_noise_seal_record(&tx, msg, sizeof msg, rec);
        rec[0] = type;
        hw_noise_reader_init(&r, &c);
        in = rec;
        in_len = n;
        CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "type %u accepted", type);
        CHECK(strstr(r.error, "unexpected type"), "error: %s", r.error);
    }

    /* too short to hold a tag */
    hw_noise_reader_init(&r, &c);
    uint8_t short_rec[3 + 15] = {4, 0, 15};
    in = short_rec;
    in_len = sizeof short_rec;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "15-byte record accepted");
    CHECK(strstr(r.error, "too short"), "error: %s", r.error);

    /* wrong length field: the record is read short, and the tag check catches it */
    tx = c;
    hw_noise_seal_record(&tx, msg, sizeof msg, rec);
    rec[2] -= 1;
    hw_noise_reader_init(&r, &c);
    in = rec;
    in_len = n;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "short length accepted");

    /* split across feeds, last byte corrupted: nothing comes out, then an error */
    tx = c;
    hw_noise_seal_record(&tx, msg, sizeof msg, rec);
    rec[n - 1] ^= 1;
    hw_noise_reader_init(&r, &c);
    in = rec;
    in_len = 7;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 0, "first part");
    in_len = n - 8;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 0, "middle part");
    in_len = 1;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "corrupt last byte accepted");

    /* records out of order (replay of record 0 after record 0) */
    tx = c;
    hw_noise_seal_record(&tx, msg, sizeof msg, rec);
    hw_noise_reader_init(&r, &c);
    in = rec;
    in_len = n;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 1, "first: %s", r.error);
    in = rec;
    in_len = n;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "replay accepted");

    /* empty records are legal, consume a nonce and produce nothing */
    tx = c;
    uint8_t two[2 * HW_NOISE_RECORD_OVERHEAD + sizeof msg];
    hw_noise_seal_record(&tx, NULL, 0, two);
    hw_noise_seal_record(&tx, msg, sizeof msg, two + HW_NOISE_RECORD_OVERHEAD);
    hw_noise_reader_init(&r, &c);
    in = two;
    in_len = sizeof two;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 1, "after empty: %s", r.error);
    CHECK(pt_len == sizeof msg && memcmp(pt, msg, sizeof msg) == 0, "plaintext");
    CHECK_INT(r.cipher.nonce, 2);

    /* a consumer error stops feed and is passed back */
    struct collect col = {NULL, 0, 0, 0};
    tx = c;
    hw_noise_seal_record(&tx, msg, sizeof msg, rec);
    hw_noise_reader_init(&r, &c);
    CHECK_INT(hw_noise_reader_feed(&r, rec, n, collect_plaintext, &col), -7);
    hw_noise_reader_wipe(&r);
}

static void random_garbage_never_crashes(void)
{
    /* Random bytes at every parser; ASan/UBSan builds turn any overrun into a failure. */
    static uint8_t junk[9000];
    static struct hw_noise_reader r;
    struct hw_noise_cipher c = {.nonce = 0};
    hw_key_generate(c.key);
    uint8_t server[32], server_pub[32], machine[32], resp[HW_NOISE_RESPONSE_LEN], init[HW_NOISE_INITIATION_LEN];
    hw_key_generate(server);
    hw_key_generate(machine);
    hw_key_public(server, server_pub);
    struct hw_noise_session sess;
    int reader_errors = 0;
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(rng() % sizeof junk);
        if (round % 4 == 0)
            len %= 120;
        for (size_t i = 0; i < len; i++)
            junk[i] = (uint8_t)rng();
        if (round % 3 == 0 && len > 3) {
            junk[0] = 4;   /* make the reader get past the type check now and then */
            junk[1] &= 0x0f;
        }
        hw_noise_reader_init(&r, &c);
        const uint8_t *in = junk, *pt;
        size_t in_len = len, pt_len;
        int rc;
        while ((rc = hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len)) == 1)
            ;
        reader_errors += rc < 0;

        struct hw_noise_handshake hs = {0};
        if (len >= 5 && round % 2) {
            junk[2] = 1;
            junk[3] = 0;
            junk[4] = 96;
            len = HW_NOISE_INITIATION_LEN;
        }
        CHECK(hw_noise_server_respond(&hs, server, junk, len, NULL, resp, &sess) == HW_NOISE_ERROR,
              "garbage initiation accepted");

        struct hw_noise_handshake ch = {0};
        CHECK(hw_noise_client_start(&ch, 138, machine, server_pub, NULL, init) == 0, "start");
        size_t used;
        rc = hw_noise_client_finish(&ch, junk, len, &used, &sess);
        CHECK(rc != HW_NOISE_OK, "garbage response accepted");
        CHECK(used <= len, "used past the input");
        hw_noise_handshake_wipe(&ch);

        struct hw_noise_early ep = {0};
        rc = hw_noise_early_feed(&ep, junk, len, &used);
        CHECK(used <= len, "early used past the input");
        hw_noise_early_free(&ep);
    }
    CHECK(reader_errors > 1000, "only %d garbage streams rejected", reader_errors);
    hw_noise_reader_wipe(&r);
}

static void cipher_exhaustion(void)
{
    struct hw_noise_cipher tx = {.nonce = UINT64_MAX - 1}, rx;
    hw_key_generate(tx.key);
    rx = tx;
    uint8_t out[64], msg[8] = "counter";
    CHECK(hw_noise_seal_record(&tx, msg, sizeof msg, out) == 0, "last nonce refused");
    CHECK(tx.nonce == UINT64_MAX, "counter");
    uint8_t out2[64];
    CHECK(hw_noise_seal_record(&tx, msg, sizeof msg, out2) < 0, "sealed past the last nonce");
    size_t written = 1;
    const char *why = NULL;
    CHECK(hw_noise_seal(&tx, msg, sizeof msg, out2, sizeof out2, &written, &why) < 0, "seal");
    CHECK(why && strstr(why, "exhausted") && written == 0, "why: %s", why ? why : "");

    /* seal refuses a write needing more nonces than remain, without consuming any */
    static uint8_t big[3 * HW_NOISE_MAX_PLAINTEXT], big_out[3 * HW_NOISE_MAX_RECORD];
    struct hw_noise_cipher two_left = {.nonce = UINT64_MAX - 2};
    CHECK(hw_noise_seal(&two_left, big, sizeof big, big_out, sizeof big_out, &written, &why) < 0,
          "3 records with 2 nonces");
    CHECK(two_left.nonce == UINT64_MAX - 2, "nonce consumed");
    CHECK(hw_noise_seal(&two_left, big, 2 * HW_NOISE_MAX_PLAINTEXT, big_out, sizeof big_out, &written,
                        &why) == 0, "2 records with 2 nonces: %s", why);

    static struct hw_noise_reader r;
    hw_noise_reader_init(&r, &rx);
    const uint8_t *in = out, *pt;
    size_t in_len = sizeof msg + HW_NOISE_RECORD_OVERHEAD, pt_len;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == 1, "last record: %s", r.error);
    CHECK(pt_len == sizeof msg && memcmp(pt, msg, sizeof msg) == 0, "plaintext");
    in = out;
    in_len = sizeof msg + HW_NOISE_RECORD_OVERHEAD;
    CHECK(hw_noise_reader_next(&r, &in, &in_len, &pt, &pt_len) == -1, "read past the last nonce");
    CHECK(strstr(r.error, "exhausted"), "error: %s", r.error);
}

static void seal_sizes(void)
{
    CHECK_INT(hw_noise_sealed_len(0), 0);
    CHECK_INT(hw_noise_sealed_len(1), 20);
    CHECK_INT(hw_noise_sealed_len(4077), 4096);
    CHECK_INT(hw_noise_sealed_len(4078), 4096 + 20);
    CHECK_INT(hw_noise_sealed_len(10000), 10000 + 3 * 19);
    struct hw_noise_cipher c = {.nonce = 0};
    uint8_t out[64], msg[50] = {0};   /* 50 + 19 > 64 */
    size_t written = 9;
    const char *why = NULL;
    CHECK(hw_noise_seal(&c, msg, 0, out, 0, &written, &why) == 0 && written == 0, "empty write");
    CHECK_INT(c.nonce, 0);
    CHECK(hw_noise_seal(&c, msg, sizeof msg, out, sizeof out, &written, &why) < 0, "too small");
    CHECK(why && strstr(why, "too small") && c.nonce == 0, "why");
    CHECK(hw_noise_seal_record(&c, msg, HW_NOISE_MAX_PLAINTEXT + 1, out) < 0, "oversize record");
}

/* ---- both roles against each other ---- */

static void both_roles_round_trip(void)
{
    uint8_t server[32], server_pub[32], machine[32], machine_pub[32];
    hw_key_generate(server);
    hw_key_generate(machine);
    hw_key_public(server, server_pub);
    hw_key_public(machine, machine_pub);
    struct hw_noise_handshake ch = {0}, sh = {0};
    uint8_t init[HW_NOISE_INITIATION_LEN], resp[HW_NOISE_RESPONSE_LEN];
    struct hw_noise_session cs, ss;
    CHECK(hw_noise_client_start(&ch, 138, machine, server_pub, NULL, init) == 0, "%s", ch.error);
    CHECK(init[0] == 0 && init[1] == 138, "version");
    CHECK(hw_noise_server_respond(&sh, server, init, sizeof init, NULL, resp, &ss) == 0, "%s", sh.error);
    size_t used;
    CHECK(hw_noise_client_finish(&ch, resp, sizeof resp, &used, &cs) == 0, "%s", ch.error);
    CHECK_INT(ss.version, 138);
    CHECK_MEM(ss.peer, machine_pub, 32);
    CHECK_MEM(cs.peer, server_pub, 32);
    CHECK_MEM(cs.handshake_hash, ss.handshake_hash, 32);
    CHECK_MEM(cs.c2s.key, ss.c2s.key, 32);
    CHECK_MEM(cs.s2c.key, ss.s2c.key, 32);
    CHECK(memcmp(cs.c2s.key, cs.s2c.key, 32) != 0, "directions share a key");

    /* Odd sizes around the record limit, both directions, through the readers. */
    static uint8_t msg[100000], wire[110000];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)rng();
    static struct hw_noise_reader at_server, at_client;
    hw_noise_reader_init(&at_server, &ss.c2s);
    hw_noise_reader_init(&at_client, &cs.s2c);
    static const size_t sizes[] = {1, 4076, 4077, 4078, 8154, 8155, 12345, 100000, 7};
    for (size_t k = 0; k < HW_ARRAY_LEN(sizes); k++) {
        for (int dir = 0; dir < 2; dir++) {
            struct hw_noise_cipher *tx = dir ? &ss.s2c : &cs.c2s;
            struct hw_noise_reader *rx = dir ? &at_client : &at_server;
            size_t written;
            const char *why;
            CHECK(hw_noise_seal(tx, msg, sizes[k], wire, sizeof wire, &written, &why) == 0, "%s", why);
            static uint8_t got[100000];
            struct collect col = {got, 0, sizeof got, 0};
            CHECK(hw_noise_reader_feed(rx, wire, written, collect_plaintext, &col) == 0, "%s", rx->error);
            CHECK_INT(col.len, sizes[k]);
            CHECK_MEM(got, msg, sizes[k]);
        }
    }
    hw_noise_session_wipe(&cs);
    hw_noise_session_wipe(&ss);
    hw_noise_reader_wipe(&at_server);
    hw_noise_reader_wipe(&at_client);

    /* The prologue binds the version: a client and server disagreeing on it fail. */
    struct hw_noise_handshake c2 = {0}, s2 = {0};
    CHECK(hw_noise_client_start(&c2, 138, machine, server_pub, NULL, init) == 0, "start");
    init[1] = 137;
    CHECK(hw_noise_server_respond(&s2, server, init, sizeof init, NULL, resp, &ss) == HW_NOISE_ERROR,
          "version tamper accepted");
}

/* ---- early payload ---- */

static void early_payload_of_session_a(void)
{
    /* Session A's first server write is an early payload as a control server sends it. */
    if (!fx_noise)
        SKIP("fixture %s not found", fx_noise_path);
    json_t *w = json_array_get(json_object_get(json_array_get(json_object_get(fx_noise, "sessions"), 0),
                                               "write_calls"), 1);
    uint8_t want[256];
    long wlen = fx_hex(fx_str(w, "plaintext_hex"), want, sizeof want);
    CHECK(wlen == 104 && memcmp(want, HW_NOISE_EARLY_MAGIC, 5) == 0, "fixture write 1 is the payload");
    struct hw_noise_early ep = {0};
    size_t used;
    CHECK(hw_noise_early_feed(&ep, want, (size_t)wlen, &used) == HW_NOISE_OK, "%s", ep.error);
    CHECK(ep.present && used == (size_t)wlen, "present, used %zu", used);
    size_t len;
    uint8_t *built = hw_noise_early_payload(ep.challenge, &len);
    int same = len == (size_t)wlen && memcmp(built, want, len) == 0;
    free(built);
    CHECK(same, "rebuilt payload differs");
}

static void early_payload_real_headscale(void)
{
    if (!fx_http)
        SKIP("fixture %s not found", fx_http_path);
    json_t *ep_fx = json_object_get(json_object_get(fx_http, "inside_noise_fx_node1"), "early_payload");
    uint8_t want[256];
    long wlen = fx_hex(fx_str(ep_fx, "hex"), want, sizeof want);
    CHECK(wlen == 104, "fixture payload %ld bytes", wlen);
    const char *json = fx_str(ep_fx, "json");
    CHECK(memcmp(want + 9, json, strlen(json)) == 0, "fixture hex vs json");

    /* headscale sent it as three records: 5 bytes magic, 4 bytes length, 95 bytes JSON */
    struct hw_noise_early ep = {0};
    size_t used;
    CHECK(hw_noise_early_feed(&ep, want, 5, &used) == HW_NOISE_AGAIN && used == 5, "magic");
    CHECK(hw_noise_early_feed(&ep, want + 5, 4, &used) == HW_NOISE_AGAIN && used == 4, "length");
    CHECK(hw_noise_early_feed(&ep, want + 9, 95, &used) == HW_NOISE_OK, "json: %s", ep.error);
    CHECK(ep.present && used == 95 && ep.pending_len == 0, "present");
    char text[HW_KEY_TEXT_MAX];
    char expect[120];
    snprintf(expect, sizeof expect, "{\"nodeKeyChallenge\":\"%s\"}", hw_key_format(HW_KEY_CHALLENGE, ep.challenge, text));
    CHECK_STR(json, expect);

    /* Our builder produces headscale's bytes exactly. */
    size_t len;
    uint8_t *built = hw_noise_early_payload(ep.challenge, &len);
    int same = len == (size_t)wlen && memcmp(built, want, len) == 0;
    free(built);
    CHECK(same, "built payload differs from headscale's");

    /* The captured ciphertext records have the sizes of those three pieces (the server
     * ephemeral key is not in the capture, so they cannot be decrypted). */
    json_t *recs = json_object_get(json_object_get(json_object_get(fx_http, "ts2021_upgrade"),
                                                   "bytes_after_response_head"),
                                   "first_transport_records_hex (ciphertext; first one carries the early payload; ephemeral keys unknown so not decryptable)");
    CHECK(json_array_size(recs) == 3, "3 records in the capture");
    static const size_t plain_sizes[] = {5, 4, 95};
    for (size_t k = 0; k < 3; k++) {
        uint8_t rec[256];
        long n = fx_hex(json_string_value(json_array_get(recs, k)), rec, sizeof rec);
        CHECK(n > 3 && rec[0] == HW_NOISE_MSG_RECORD, "record %zu type", k);
        CHECK_INT((size_t)n, plain_sizes[k] + HW_NOISE_RECORD_OVERHEAD);
        CHECK_INT((size_t)(rec[1] << 8 | rec[2]), plain_sizes[k] + HW_NOISE_TAG_LEN);
    }
}

static void early_payload_parser_cases(void)
{
    uint8_t chal[32], chal_pub[32];
    hw_key_generate(chal);
    hw_key_public(chal, chal_pub);
    size_t plen, used;
    uint8_t *payload = hw_noise_early_payload(chal_pub, &plen);
    CHECK(plen == 104, "payload %zu bytes", plen);

    /* byte by byte, then HTTP/2 bytes in the same chunk as the payload's end */
    struct hw_noise_early ep = {0};
    for (size_t i = 0; i + 1 < plen; i++)
        CHECK(hw_noise_early_feed(&ep, payload + i, 1, &used) == HW_NOISE_AGAIN && used == 1, "at %zu", i);
    uint8_t tail[1 + 9] = {payload[plen - 1], 0, 0, 30, 4, 0, 0, 0, 0, 0};
    CHECK(hw_noise_early_feed(&ep, tail, sizeof tail, &used) == HW_NOISE_OK, "%s", ep.error);
    CHECK(ep.present && used == 1, "used %zu", used);
    CHECK_MEM(ep.challenge, chal_pub, 32);
    CHECK(hw_noise_early_feed(&ep, tail, sizeof tail, &used) == HW_NOISE_OK && used == 0, "after done");

    /* no payload: the server's SETTINGS frame comes first, nothing held back */
    struct hw_noise_early none = {0};
    uint8_t settings[9] = {0, 0, 30, 4, 0, 0, 0, 0, 0};
    CHECK(hw_noise_early_feed(&none, settings, sizeof settings, &used) == HW_NOISE_OK, "settings");
    CHECK(!none.present && used == 0 && none.pending_len == 0, "absent");

    /* a prefix of the magic, then something else: the held bytes are handed back */
    struct hw_noise_early partial = {0};
    uint8_t ff2[2] = {0xff, 0xff}, other[3] = {0xff, 0x00, 0x01};
    CHECK(hw_noise_early_feed(&partial, ff2, 2, &used) == HW_NOISE_AGAIN && used == 2, "ff ff");
    CHECK(hw_noise_early_feed(&partial, other, 3, &used) == HW_NOISE_OK, "decided");
    CHECK(!partial.present && used == 1 && partial.pending_len == 3, "used %zu pending %zu", used,
          partial.pending_len);

    /* too long, not JSON, not an object, a bad key, a key of the wrong type */
    struct { const char *what; const char *json; uint32_t len_override; const char *error; } bad[] = {
        {"oversize", "", (10u << 20) + 1, "exceeds"},
        {"empty", "", 0, "not a JSON object"},
        {"not json", "{nope", 0, "not a JSON object"},
        {"array", "[1,2]", 0, "not a JSON object"},
        {"number key", "{\"nodeKeyChallenge\":5}", 0, "not a string"},
        {"wrong prefix", "{\"nodeKeyChallenge\":\"nodekey:00000000000000000000000000000000000000000000000000000000000000\"}", 0, "chalpub"},
        {"short key", "{\"nodeKeyChallenge\":\"chalpub:abcd\"}", 0, "64 hex digits"},
    };
    for (size_t k = 0; k < HW_ARRAY_LEN(bad); k++) {
        uint8_t buf[256];
        size_t jl = strlen(bad[k].json);
        uint32_t l = bad[k].len_override ? bad[k].len_override : (uint32_t)jl;
        memcpy(buf, HW_NOISE_EARLY_MAGIC, 5);
        buf[5] = (uint8_t)(l >> 24);
        buf[6] = (uint8_t)(l >> 16);
        buf[7] = (uint8_t)(l >> 8);
        buf[8] = (uint8_t)l;
        memcpy(buf + 9, bad[k].json, jl);
        struct hw_noise_early e = {0};
        CHECK(hw_noise_early_feed(&e, buf, 9 + jl, &used) == HW_NOISE_ERROR, "%s accepted", bad[k].what);
        CHECK(strstr(e.error, bad[k].error), "%s: %s", bad[k].what, e.error);
        CHECK(e.json == NULL, "%s: buffer kept", bad[k].what);
        CHECK(hw_noise_early_feed(&e, buf, 1, &used) == HW_NOISE_ERROR, "failure not sticky");
    }

    /* extra fields are ignored, a missing challenge is a zero key */
    const char *ok_json = "{\"other\":[1,{}],\"nodeKeyChallenge\":null}";
    uint8_t buf[128];
    size_t jl = strlen(ok_json);
    memcpy(buf, HW_NOISE_EARLY_MAGIC, 5);
    buf[5] = buf[6] = buf[7] = 0;
    buf[8] = (uint8_t)jl;
    memcpy(buf + 9, ok_json, jl);
    struct hw_noise_early e = {0};
    CHECK(hw_noise_early_feed(&e, buf, 9 + jl, &used) == HW_NOISE_OK, "%s", e.error);
    CHECK(e.present && hw_key_is_zero(e.challenge), "zero challenge");

    /* abandoning a half-read payload frees it */
    struct hw_noise_early half = {0};
    CHECK(hw_noise_early_feed(&half, payload, 50, &used) == HW_NOISE_AGAIN, "half");
    hw_noise_early_free(&half);
    free(payload);
}

/* ---- real tailscaled initiations ---- */

static void real_client_initiations(void)
{
    if (!fx_http)
        SKIP("fixture %s not found", fx_http_path);
    json_t *keys = json_object_get(fx_http, "keys");
    uint8_t hs_priv[32], hs_pub[32], want_pub[32];
    CHECK(fx_key(fx_str(keys, "headscale_noise_private"), hs_priv) == 0, "headscale key");
    CHECK(fx_key(fx_str(keys, "headscale_noise_public"), want_pub) == 0, "headscale pub");
    hw_key_public(hs_priv, hs_pub);
    CHECK_MEM(hs_pub, want_pub, 32);

    /* fx-node3 straight to headscale; fx-node1 through the capture proxy, which answers
     * with the same headscale key. */
    struct { const char *member; const char *machine_field; const char *machine_key; } cases[] = {
        {"ts2021_upgrade", NULL, "fx-node3_machine_public"},
        {"ts2021_upgrade_fx_node1_via_proxy", "client_machine_public", "fx-node1_machine_public"},
    };
    for (size_t c = 0; c < HW_ARRAY_LEN(cases); c++) {
        json_t *u = json_object_get(fx_http, cases[c].member);
        uint8_t init[HW_NOISE_INITIATION_LEN + 1], resp[HW_NOISE_RESPONSE_LEN], machine[32];
        CHECK(fx_hex(fx_str(u, "initiation_hex"), init, sizeof init) == HW_NOISE_INITIATION_LEN,
              "%s initiation", cases[c].member);

        /* The header value in the captured request is exactly this initiation. */
        const char *raw = fx_str(u, "request_raw");
        const char *h = strstr(raw, "X-Tailscale-Handshake: ");
        CHECK(h, "header in %s", cases[c].member);
        h += strlen("X-Tailscale-Handshake: ");
        const char *end = strstr(h, "\r\n");
        CHECK(end && end - h == 136, "base64 length");
        uint8_t decoded[110];
        int dn = EVP_DecodeBlock(decoded, (const unsigned char *)h, 136);
        CHECK(dn == 102, "decoded %d (101 + base64 padding)", dn);
        CHECK_MEM(decoded, init, HW_NOISE_INITIATION_LEN);

        CHECK(fx_key(fx_str(keys, cases[c].machine_key), machine) == 0, "machine key");
        if (cases[c].machine_field) {
            uint8_t listed[32];
            CHECK(fx_key(fx_str(u, cases[c].machine_field), listed) == 0, "listed");
            CHECK_MEM(listed, machine, 32);
        }
        struct hw_noise_handshake hs = {0};
        struct hw_noise_session sess;
        CHECK(hw_noise_server_respond(&hs, hs_priv, init, HW_NOISE_INITIATION_LEN, NULL, resp, &sess) ==
              HW_NOISE_OK, "%s: %s", cases[c].member, hs.error);
        CHECK_MEM(sess.peer, machine, 32);
        CHECK_INT(sess.version, 133);
        char text[HW_KEY_TEXT_MAX];
        if (c == 0)
            CHECK_STR(hw_key_format(HW_KEY_MACHINE, sess.peer, text),
                      fx_str(json_object_get(u, "initiation_check"), "client_machine_public"));
        hw_noise_session_wipe(&sess);
    }

    /* headscale's real 51-byte answer has the shape our client expects. */
    json_t *after = json_object_get(json_object_get(fx_http, "ts2021_upgrade"), "bytes_after_response_head");
    uint8_t resp[64];
    CHECK(fx_hex(fx_str(after, "noise_response_hex (51 bytes)"), resp, sizeof resp) == 51, "response");
    CHECK(resp[0] == HW_NOISE_MSG_RESPONSE && resp[1] == 0 && resp[2] == 48, "response header");
}

int main(void)
{
    fx_noise = fx_load("noise-handshake.json", fx_noise_path, sizeof fx_noise_path);
    fx_http = fx_load("real-client-http.json", fx_http_path, sizeof fx_http_path);

    RUN(handshake_initiator_matches_fixture);
    RUN(handshake_responder_matches_fixture);
    RUN(records_seal_match_fixture);
    RUN(records_open_in_order);
    RUN(records_stream_any_chunking);
    RUN(little_endian_nonce_fails);
    RUN(bad_initiation_error_message);
    RUN(refused_initiations);
    RUN(client_rejects_bad_responses);
    RUN(reader_rejects_garbage);
    RUN(random_garbage_never_crashes);
    RUN(cipher_exhaustion);
    RUN(seal_sizes);
    RUN(both_roles_round_trip);
    RUN(early_payload_of_session_a);
    RUN(early_payload_real_headscale);
    RUN(early_payload_parser_cases);
    RUN(real_client_initiations);

    json_decref(fx_noise);
    json_decref(fx_http);
    return TEST_MAIN_END();
}
