/* DERP codec against the real derper v1.96.5 byte streams in derp-session.json. */
#include <jansson.h>
#include <sodium.h>

#include "common/util.h"
#include "proto/derp.h"
#include "tests/unit/testlib.h"

static json_t *fixture;

static json_t *load_fixture(void)
{
    if (!fixture) {
        char *path = hw_sprintf("%s/derp-session.json", tl_fixtures_dir());
        json_error_t err;
        fixture = json_load_file(path, 0, &err);
        free(path);
    }
    return fixture;
}

/* Hex (optionally "nodekey:"-prefixed) into a malloc'd buffer. */
static uint8_t *unhex(const char *hex, size_t *len)
{
    const char *colon = strchr(hex, ':');
    if (colon)
        hex = colon + 1;
    size_t n = strlen(hex) / 2;
    uint8_t *out = hw_malloc(n ? n : 1);
    int got = hw_hex_decode(hex, out, n);
    if (got < 0) {
        free(out);
        return NULL;
    }
    *len = (size_t)got;
    return out;
}

static int key32(const char *hex, uint8_t out[32])
{
    size_t n = 0;
    uint8_t *b = unhex(hex, &n);
    if (!b || n != 32) {
        free(b);
        return -1;
    }
    memcpy(out, b, 32);
    free(b);
    return 0;
}

static const char *jstr(json_t *o, const char *name)
{
    return json_string_value(json_object_get(o, name));
}

/* Offset just past the HTTP head ("\r\n\r\n") of a captured stream. */
static size_t after_http_head(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(b + i, "\r\n\r\n", 4) == 0)
            return i + 4;
    return 0;
}

struct got_frame {
    uint8_t type;
    uint32_t len;
    uint8_t *bytes;   /* header + payload */
};

/* Feeds a stream in chunks of `chunk` bytes (0 = all at once), collecting frames. */
static int parse_stream(const uint8_t *b, size_t n, size_t chunk, enum hw_derp_side side,
                        struct got_frame *out, int max)
{
    struct hw_derp_reader r;
    hw_derp_reader_init(&r, side);
    int count = 0;
    size_t off = 0;
    while (off < n) {
        size_t step = chunk && chunk < n - off ? chunk : n - off;
        const uint8_t *p = b + off;
        size_t left = step;
        struct hw_derp_frame f;
        int rc;
        while ((rc = hw_derp_reader_next(&r, &p, &left, &f)) == HW_DERP_READ_FRAME) {
            if (count == max) {
                count = -1;
                goto out;
            }
            out[count].type = f.type;
            out[count].len = f.len;
            out[count].bytes = hw_malloc(HW_DERP_HDR_LEN + f.len);
            hw_derp_put_header(out[count].bytes, f.type, f.len);
            if (f.len)
                memcpy(out[count].bytes + HW_DERP_HDR_LEN, f.payload, f.len);
            count++;
        }
        if (rc == HW_DERP_READ_ERROR || left != 0) {
            count = -1;
            goto out;
        }
        off += step;
    }
    if (!hw_derp_reader_idle(&r))
        count = -1;
out:
    hw_derp_reader_free(&r);
    return count;
}

static void free_frames(struct got_frame *f, int n)
{
    for (int i = 0; i < n; i++)
        free(f[i].bytes);
}

/* Every frame of every captured stream, both directions, under several chunkings. */
static void parses_every_captured_frame(void)
{
    json_t *fx = load_fixture();
    CHECK(fx != NULL, "derp-session.json not loadable from %s", tl_fixtures_dir());
    json_t *conns = json_object_get(fx, "connections");
    CHECK(json_array_size(conns) == 4, "want 4 connections");
    static const size_t chunks[] = {0, 1, 3, 7, 64, 1000};
    int total = 0;
    for (size_t ci = 0; ci < json_array_size(conns); ci++) {
        json_t *c = json_array_get(conns, ci);
        for (int dir = 0; dir < 2; dir++) {
            const char *dname = dir == 0 ? "c2s" : "s2c";
            char field[16];
            snprintf(field, sizeof field, "%s_hex", dname);
            size_t n = 0;
            uint8_t *stream = unhex(jstr(c, field), &n);
            CHECK(stream != NULL, "bad hex in %s", field);
            size_t head = after_http_head(stream, n);
            CHECK(head > 0, "no HTTP head in %s", field);
            /* The frames the fixture lists for this direction, in order. */
            json_t *frames = json_object_get(c, "frames");
            for (size_t k = 0; k < HW_ARRAY_LEN(chunks); k++) {
                struct got_frame got[64];
                int ngot = parse_stream(stream + head, n - head, chunks[k],
                                        dir == 0 ? HW_DERP_SIDE_SERVER : HW_DERP_SIDE_CLIENT, got, 64);
                if (ngot < 0)
                    free(stream);
                CHECK(ngot >= 0, "%s of %s: reader failed (chunk %zu)", dname, jstr(c, "client"),
                      chunks[k]);
                int idx = 0;
                for (size_t fi = 0; fi < json_array_size(frames); fi++) {
                    json_t *fr = json_array_get(frames, fi);
                    if (strcmp(jstr(fr, "dir"), dname) != 0)
                        continue;
                    int ok = idx < ngot;
                    size_t fl = 0;
                    uint8_t *want = ok ? unhex(jstr(fr, "frame_hex"), &fl) : NULL;
                    ok = ok && want && got[idx].type == json_integer_value(json_object_get(fr, "type")) &&
                         got[idx].len == json_integer_value(json_object_get(fr, "payload_len")) &&
                         fl == HW_DERP_HDR_LEN + got[idx].len &&
                         memcmp(want, got[idx].bytes, fl) == 0;
                    free(want);
                    if (!ok) {
                        free_frames(got, ngot);
                        free(stream);
                    }
                    CHECK(ok, "%s frame %d of %s differs (chunk %zu)", dname, idx, jstr(c, "client"),
                          chunks[k]);
                    idx++;
                }
                free_frames(got, ngot);
                if (ngot != idx)
                    free(stream);
                CHECK_INT(ngot, idx);
                if (k == 0)
                    total += ngot;
            }
            free(stream);
        }
    }
    CHECK_INT(total, 48);
}

/* ClientInfo / ServerInfo boxes open with derper's and the clients' keys, and sealing
 * the plaintext with the captured nonce gives the captured bytes back. */
static void opens_and_reseals_handshake_boxes(void)
{
    json_t *fx = load_fixture();
    CHECK(fx != NULL, "fixture");
    json_t *keys = json_object_get(fx, "keys");
    uint8_t derper_priv[32], derper_pub[32], check_pub[32];
    CHECK(key32(jstr(keys, "derper_private"), derper_priv) == 0, "derper key");
    CHECK(key32(jstr(keys, "derper_public"), derper_pub) == 0, "derper pub");
    crypto_scalarmult_base(check_pub, derper_priv);
    CHECK(memcmp(check_pub, derper_pub, 32) == 0, "derper public key derivation");
    json_t *conns = json_object_get(fx, "connections");
    int opened = 0;
    for (size_t ci = 0; ci < json_array_size(conns); ci++) {
        json_t *c = json_array_get(conns, ci);
        uint8_t cpriv[32], cpub[32];
        CHECK(key32(jstr(c, "client_private"), cpriv) == 0, "client key");
        CHECK(key32(jstr(c, "client_public"), cpub) == 0, "client pub");
        json_t *frames = json_object_get(c, "frames");
        for (size_t fi = 0; fi < json_array_size(frames); fi++) {
            json_t *fr = json_array_get(frames, fi);
            int type = (int)json_integer_value(json_object_get(fr, "type"));
            if (type != HW_DERP_CLIENT_INFO && type != HW_DERP_SERVER_INFO)
                continue;
            size_t fl = 0;
            uint8_t *frame = unhex(jstr(fr, "frame_hex"), &fl);
            const char *plaintext = jstr(fr, "plaintext");
            const uint8_t *payload = frame + HW_DERP_HDR_LEN;
            uint32_t plen = (uint32_t)(fl - HW_DERP_HDR_LEN);
            uint8_t nonce[24];
            CHECK(hw_hex_decode(jstr(fr, "nonce_hex"), nonce, 24) == 24, "nonce");
            const char *err = NULL;
            uint8_t plain[512];
            uint8_t *rebuilt = NULL;
            size_t rlen = 0;
            int ok;
            if (type == HW_DERP_CLIENT_INFO) {
                uint8_t got_pub[32];
                struct hw_derp_client_info info;
                ok = hw_derp_open_client_info(derper_priv, payload, plen, got_pub, &info, &err) == 0 &&
                     memcmp(got_pub, cpub, 32) == 0 && info.version == 2 && !info.has_mesh_key;
                /* The same box opens from the client's side too. */
                long n = hw_derp_box_open(plain, payload + 32, plen - 32, derper_pub, cpriv);
                ok = ok && n == (long)strlen(plaintext) && memcmp(plain, plaintext, (size_t)n) == 0;
                ok = ok && info.can_ack_pings == (strstr(plaintext, "true") != NULL);
                rebuilt = hw_derp_build_client_info(cpriv, cpub, derper_pub, &info, nonce, &rlen);
            } else {
                struct hw_derp_server_info info;
                ok = hw_derp_open_server_info(cpriv, derper_pub, payload, plen, &info, &err) == 0 &&
                     info.version == 2 && info.token_bucket_bytes_per_second == 0;
                long n = hw_derp_box_open(plain, payload, plen, cpub, derper_priv);
                ok = ok && n == (long)strlen(plaintext) && memcmp(plain, plaintext, (size_t)n) == 0;
                rebuilt = hw_derp_build_server_info(derper_priv, cpub, &info, nonce, &rlen);
            }
            ok = ok && rebuilt && rlen == fl && memcmp(rebuilt, frame, fl) == 0;
            free(rebuilt);
            free(frame);
            CHECK(ok, "%s of %s: %s", type == 2 ? "ClientInfo" : "ServerInfo", jstr(c, "client"),
                  err ? err : "bytes differ");
            opened++;
        }
    }
    CHECK_INT(opened, 8);
}

/* Rebuilds every deterministic frame from its decoded fields. */
static void rebuilds_deterministic_frames(void)
{
    json_t *fx = load_fixture();
    CHECK(fx != NULL, "fixture");
    json_t *conns = json_object_get(fx, "connections");
    int rebuilt_count = 0;
    for (size_t ci = 0; ci < json_array_size(conns); ci++) {
        json_t *c = json_array_get(conns, ci);
        json_t *frames = json_object_get(c, "frames");
        for (size_t fi = 0; fi < json_array_size(frames); fi++) {
            json_t *fr = json_array_get(frames, fi);
            int type = (int)json_integer_value(json_object_get(fr, "type"));
            size_t fl = 0;
            uint8_t *want = unhex(jstr(fr, "frame_hex"), &fl);
            uint8_t out[70000], k[32];
            size_t n = 0, dlen = 0;
            uint8_t *data = NULL;
            const uint8_t *p = want + HW_DERP_HDR_LEN;
            uint32_t plen = (uint32_t)(fl - HW_DERP_HDR_LEN);
            switch (type) {
            case HW_DERP_SERVER_KEY:
                if (key32(jstr(fr, "server_public"), k) == 0 && hw_derp_parse_server_key(p, plen, k) == 0)
                    n = hw_derp_build_server_key(out, sizeof out, k);
                break;
            case HW_DERP_SEND_PACKET: {
                const uint8_t *dst, *d;
                uint32_t dl;
                data = unhex(jstr(fr, "packet_hex"), &dlen);
                if (key32(jstr(fr, "dst_public"), k) == 0 &&
                    hw_derp_parse_send_packet(p, plen, &dst, &d, &dl) == 0 && dl == dlen &&
                    memcmp(dst, k, 32) == 0)
                    n = hw_derp_build_send_packet(out, sizeof out, k, data, dlen);
                break;
            }
            case HW_DERP_RECV_PACKET: {
                const uint8_t *src, *d;
                uint32_t dl;
                data = unhex(jstr(fr, "packet_hex"), &dlen);
                if (key32(jstr(fr, "src_public"), k) == 0 &&
                    hw_derp_parse_recv_packet(p, plen, &src, &d, &dl) == 0 && dl == dlen &&
                    memcmp(src, k, 32) == 0)
                    n = hw_derp_build_recv_packet(out, sizeof out, k, data, dlen);
                break;
            }
            case HW_DERP_PEER_GONE: {
                const uint8_t *pk;
                uint8_t reason;
                if (key32(jstr(fr, "peer_public"), k) == 0 &&
                    hw_derp_parse_peer_gone(p, plen, &pk, &reason) == 0 &&
                    reason == json_integer_value(json_object_get(fr, "reason")))
                    n = hw_derp_build_peer_gone(out, sizeof out, k, reason);
                break;
            }
            case HW_DERP_NOTE_PREFERRED:
                n = hw_derp_build_note_preferred(out, sizeof out,
                                                 json_integer_value(json_object_get(fr, "preferred")));
                break;
            case HW_DERP_KEEP_ALIVE:
                n = hw_derp_build_keep_alive(out, sizeof out);
                break;
            case HW_DERP_PING:
            case HW_DERP_PONG: {
                uint8_t d[8];
                if (hw_hex_decode(jstr(fr, "data_hex"), d, 8) == 8)
                    n = type == HW_DERP_PING ? hw_derp_build_ping(out, sizeof out, d)
                                             : hw_derp_build_pong(out, sizeof out, d);
                break;
            }
            default:   /* ClientInfo/ServerInfo: covered with their nonces above */
                free(want);
                continue;
            }
            int ok = n == fl && memcmp(out, want, fl) == 0;
            free(want);
            free(data);
            CHECK(ok, "%s frame %zu of %s not rebuilt", hw_derp_frame_name((uint8_t)type), fi,
                  jstr(c, "client"));
            rebuilt_count++;
        }
    }
    CHECK_INT(rebuilt_count, 40);
}

static int feed_all(struct hw_derp_reader *r, const uint8_t *b, size_t n, struct hw_derp_frame *f)
{
    return hw_derp_reader_next(r, &b, &n, f);
}

static void rejects_garbage(void)
{
    struct hw_derp_reader r;
    struct hw_derp_frame f;
    uint8_t buf[16];

    /* A truncated header is not a frame yet. */
    hw_derp_reader_init(&r, HW_DERP_SIDE_CLIENT);
    CHECK_INT(feed_all(&r, (const uint8_t *)"\x06\x00\x00", 3, &f), HW_DERP_READ_MORE);
    CHECK(!hw_derp_reader_idle(&r), "half a header pending");
    CHECK_INT(feed_all(&r, (const uint8_t *)"\x00\x00", 2, &f), HW_DERP_READ_FRAME);
    CHECK(f.type == HW_DERP_KEEP_ALIVE && f.len == 0, "keepalive after split header");
    /* Client side: over 1 MiB is fatal, and stays fatal. */
    hw_derp_put_header(buf, HW_DERP_RECV_PACKET, HW_DERP_CLIENT_MAX_FRAME + 1);
    CHECK_INT(feed_all(&r, buf, 5, &f), HW_DERP_READ_ERROR);
    CHECK(r.error != NULL, "error reason");
    hw_derp_put_header(buf, HW_DERP_KEEP_ALIVE, 0);
    CHECK_INT(feed_all(&r, buf, 5, &f), HW_DERP_READ_ERROR);
    hw_derp_reader_free(&r);

    /* Server side limits per type. */
    static const struct { uint8_t type; uint32_t ok, bad; } limits[] = {
        {HW_DERP_SEND_PACKET, 32 + 65536, 32 + 65537},
        {HW_DERP_FORWARD_PACKET, 64 + 65536, 64 + 65537},
        {HW_DERP_CLIENT_INFO, 256 << 10, (256 << 10) + 1},
        {HW_DERP_PING, 1000, 1001},
        {HW_DERP_NOTE_PREFERRED, 1, 2},
        {HW_DERP_CLOSE_PEER, 32, 33},
        {HW_DERP_WATCH_CONNS, 0, 1},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(limits); i++) {
        hw_derp_reader_init(&r, HW_DERP_SIDE_SERVER);
        hw_derp_put_header(buf, limits[i].type, limits[i].ok);
        CHECK_INT(feed_all(&r, buf, 5, &f), limits[i].ok == 0 ? HW_DERP_READ_FRAME : HW_DERP_READ_MORE);
        hw_derp_reader_free(&r);
        hw_derp_reader_init(&r, HW_DERP_SIDE_SERVER);
        hw_derp_put_header(buf, limits[i].type, limits[i].bad);
        CHECK(feed_all(&r, buf, 5, &f) == HW_DERP_READ_ERROR, "type %s len %u accepted",
              hw_derp_frame_name(limits[i].type), limits[i].bad);
        hw_derp_reader_free(&r);
    }

    /* Unknown types (and types only a server sends) are skipped by a server, even huge
     * ones, without buffering; the next frame still parses. */
    hw_derp_reader_init(&r, HW_DERP_SIDE_SERVER);
    hw_derp_put_header(buf, 0x77, 5u << 20);
    CHECK_INT(feed_all(&r, buf, 5, &f), HW_DERP_READ_MORE);
    uint8_t *junk = hw_calloc(1, 1u << 20);
    for (int i = 0; i < 5; i++)
        CHECK_INT(feed_all(&r, junk, 1u << 20, &f), HW_DERP_READ_MORE);
    free(junk);
    CHECK(r.buf == NULL, "skipped frame was buffered");
    size_t n = hw_derp_build_ping(buf, sizeof buf, (const uint8_t *)"12345678");
    CHECK_INT(feed_all(&r, buf, n, &f), HW_DERP_READ_FRAME);
    CHECK(f.type == HW_DERP_PING && memcmp(f.payload, "12345678", 8) == 0, "ping after skip");
    CHECK_INT(r.skipped_frames, 1);
    hw_derp_reader_free(&r);

    /* A client sees unknown types and ignores them itself. */
    hw_derp_reader_init(&r, HW_DERP_SIDE_CLIENT);
    hw_derp_put_header(buf, 0x42, 2);
    buf[5] = buf[6] = 0xee;
    CHECK_INT(feed_all(&r, buf, 7, &f), HW_DERP_READ_FRAME);
    CHECK(f.type == 0x42 && f.len == 2, "unknown type delivered to client");
    hw_derp_reader_free(&r);

    /* Zero-length or short payloads where a key is required. */
    uint8_t k[32];
    const uint8_t *a, *b, *d;
    uint32_t dl;
    uint8_t reason;
    CHECK(hw_derp_parse_server_key(buf, 0, k) < 0, "empty ServerKey");
    CHECK(hw_derp_parse_server_key((const uint8_t *)"DERPxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 40, k) < 0,
          "bad magic");
    CHECK(hw_derp_parse_send_packet(buf, 0, &a, &d, &dl) < 0, "empty SendPacket");
    CHECK(hw_derp_parse_send_packet(buf, 31, &a, &d, &dl) < 0, "short SendPacket");
    CHECK(hw_derp_parse_recv_packet(buf, 31, &a, &d, &dl) < 0, "short RecvPacket");
    CHECK(hw_derp_parse_forward_packet(buf, 63, &a, &b, &d, &dl) < 0, "short ForwardPacket");
    CHECK(hw_derp_parse_peer_gone(buf, 0, &a, &reason) < 0, "empty PeerGone");
    const char *err = NULL;
    struct hw_derp_client_info ci;
    uint8_t zero[64] = {0};
    CHECK(hw_derp_open_client_info(zero, zero, 0, k, &ci, &err) < 0, "empty ClientInfo");
    CHECK(hw_derp_open_client_info(zero, zero, 56, k, &ci, &err) < 0, "ClientInfo without box");
    /* Oversize packets cannot be built. */
    uint8_t *big = hw_calloc(1, 70000);
    CHECK(hw_derp_build_send_packet(big, 70000 + 64, k, big, 65537) == 0, "oversize SendPacket built");
    CHECK(hw_derp_build_send_packet(big, 100, k, big, 65536) == 0, "overflowed out_cap");
    free(big);
}

static void builders_round_trip(void)
{
    uint8_t out[256], k1[32], k2[32], ip[16] = {0};
    memset(k1, 0xab, 32);
    memset(k2, 0xcd, 32);
    ip[10] = ip[11] = 0xff;
    ip[12] = 10, ip[13] = 1, ip[14] = 2, ip[15] = 3;
    struct hw_derp_reader r;
    struct hw_derp_frame f;
    hw_derp_reader_init(&r, HW_DERP_SIDE_CLIENT);

    size_t n = hw_derp_build_peer_present(out, sizeof out, k1, ip, 41641, HW_DERP_PRESENT_REGULAR);
    CHECK_INT(n, 5 + HW_DERP_PEER_PRESENT_LEN);
    CHECK_INT(feed_all(&r, out, n, &f), HW_DERP_READ_FRAME);
    struct hw_derp_peer_present pp;
    CHECK(hw_derp_parse_peer_present(f.payload, f.len, &pp) == 0, "peer present");
    CHECK(memcmp(pp.key, k1, 32) == 0 && pp.has_addr && pp.port == 41641 && pp.has_flags &&
              pp.flags == 1 && memcmp(pp.ip, ip, 16) == 0, "peer present fields");
    /* An old server's 32-byte PeerPresent still parses. */
    CHECK(hw_derp_parse_peer_present(f.payload, 32, &pp) == 0 && !pp.has_addr && !pp.has_flags, "short");

    n = hw_derp_build_forward_packet(out, sizeof out, k1, k2, (const uint8_t *)"hi", 2);
    CHECK_INT(feed_all(&r, out, n, &f), HW_DERP_READ_FRAME);
    const uint8_t *src, *dst, *data;
    uint32_t dl;
    CHECK(hw_derp_parse_forward_packet(f.payload, f.len, &src, &dst, &data, &dl) == 0 &&
              memcmp(src, k1, 32) == 0 && memcmp(dst, k2, 32) == 0 && dl == 2 && memcmp(data, "hi", 2) == 0,
          "forward packet");

    n = hw_derp_build_restarting(out, sizeof out, 1500, 60000);
    CHECK_INT(feed_all(&r, out, n, &f), HW_DERP_READ_FRAME);
    uint32_t a, b;
    CHECK(hw_derp_parse_restarting(f.payload, f.len, &a, &b) == 0 && a == 1500 && b == 60000, "restarting");

    n = hw_derp_build_health(out, sizeof out, "duplicate");
    CHECK_INT(feed_all(&r, out, n, &f), HW_DERP_READ_FRAME);
    CHECK(f.type == HW_DERP_HEALTH && f.len == 9 && memcmp(f.payload, "duplicate", 9) == 0, "health");

    n = hw_derp_build_close_peer(out, sizeof out, k2);
    CHECK(n == 37 && out[0] == HW_DERP_CLOSE_PEER && memcmp(out + 5, k2, 32) == 0, "close peer");
    n = hw_derp_build_watch_conns(out, sizeof out);
    CHECK(n == 5 && out[0] == HW_DERP_WATCH_CONNS && out[4] == 0, "watch conns");
    const uint8_t *gk;
    uint8_t reason;
    CHECK(hw_derp_parse_peer_gone(k1, 32, &gk, &reason) == 0 && reason == HW_DERP_GONE_DISCONNECTED,
          "PeerGone without a reason byte means Disconnected");
    hw_derp_reader_free(&r);
}

static void client_info_json_like_go(void)
{
    struct hw_derp_client_info ci = {.version = 2, .can_ack_pings = true};
    char *s = hw_derp_client_info_json(&ci);
    CHECK_STR(s, "{\"version\":2,\"CanAckPings\":true}");
    free(s);
    memset(ci.mesh_key, 0x11, 32);
    ci.has_mesh_key = true;
    ci.is_prober = true;
    s = hw_derp_client_info_json(&ci);
    CHECK_STR(s, "{\"meshKey\":\"1111111111111111111111111111111111111111111111111111111111111111\","
                 "\"version\":2,\"CanAckPings\":true,\"IsProber\":true}");
    struct hw_derp_client_info back;
    const char *err = NULL;
    CHECK(hw_derp_client_info_parse((const uint8_t *)s, strlen(s), &back, &err) == 0, "%s", err);
    free(s);
    CHECK(back.has_mesh_key && back.is_prober && back.version == 2 && back.can_ack_pings, "round trip");
    /* Go matches names case-insensitively. */
    const char *odd = "{\"VERSION\":2,\"canackpings\":true,\"Unknown\":[1,2]}";
    CHECK(hw_derp_client_info_parse((const uint8_t *)odd, strlen(odd), &back, &err) == 0, "%s", err);
    CHECK(back.version == 2 && back.can_ack_pings && !back.has_mesh_key, "case-insensitive");
    static const char *bad[] = {"", "[]", "{\"version\":\"2\"}", "{\"meshKey\":\"abc\"}", "{\"CanAckPings\":1}",
                                "{\"version\":2"};
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++)
        CHECK(hw_derp_client_info_parse((const uint8_t *)bad[i], strlen(bad[i]), &back, &err) < 0,
              "accepted %s", bad[i]);
    struct hw_derp_server_info si = {.version = 2, .token_bucket_bytes_per_second = 100000,
                                     .token_bucket_bytes_burst = 200000};
    s = hw_derp_server_info_json(&si);
    CHECK_STR(s, "{\"version\":2,\"TokenBucketBytesPerSecond\":100000,\"TokenBucketBytesBurst\":200000}");
    struct hw_derp_server_info sback;
    CHECK(hw_derp_server_info_parse((const uint8_t *)s, strlen(s), &sback, &err) == 0, "%s", err);
    free(s);
    CHECK(sback.token_bucket_bytes_burst == 200000, "server info round trip");
}

static void key_short_form(void)
{
    uint8_t k[32];
    CHECK(key32("ca57090b077e4671f6af1f290f808dfc09b0b92e11b7b726212ab783f5929b6f", k) == 0, "key");
    char s[8];
    hw_derp_key_short(k, s);
    CHECK_STR(s, "[ylcJC]");
}

static void disco_detection(void)
{
    uint8_t p[80] = {0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac};
    CHECK(hw_derp_looks_like_disco(p, 62), "62-byte disco");
    CHECK(!hw_derp_looks_like_disco(p, 61), "too short");
    p[0] = 0;
    CHECK(!hw_derp_looks_like_disco(p, 80), "no magic");
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(parses_every_captured_frame);
    RUN(opens_and_reseals_handshake_boxes);
    RUN(rebuilds_deterministic_frames);
    RUN(rejects_garbage);
    RUN(builders_round_trip);
    RUN(client_info_json_like_go);
    RUN(key_short_form);
    RUN(disco_detection);
    json_decref(fixture);
    return TEST_MAIN_END();
}
