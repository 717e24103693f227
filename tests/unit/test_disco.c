/* The disco codec against the 140 real packets in disco.json (tailscaled v1.96.5): each
 * opened with the receiver's disco key, parsed, and sealed again byte for byte. */
#include <jansson.h>

#include "common/util.h"
#include "proto/disco.h"
#include "proto/keys.h"
#include "tests/unit/fixture.h"
#include "tests/unit/testlib.h"

static json_t *root;

static json_t *messages(void)
{
    if (!root)
        root = fxj_load("disco.json");
    return json_object_get(root, "messages");
}

/* The node entry ("fx-node1") for a message's "n1". */
static json_t *node(const char *short_name)
{
    char name[32];
    snprintf(name, sizeof name, "fx-node%s", short_name + 1);
    return json_object_get(json_object_get(root, "keys"), name);
}

static void test_fixture_every_packet(void)
{
    json_t *msgs = messages();
    CHECK(json_array_size(msgs) == 140, "disco.json has %zu messages", json_array_size(msgs));
    size_t i;
    json_t *m;
    int pings = 0, pongs = 0, cmm = 0;
    json_array_foreach(msgs, i, m) {
        uint8_t pkt[512], want_plain[512], plain[512], again[512], recv_priv[32], send_pub[32], send_priv[32],
            recv_pub[32], shared[32], shared_back[32];
        long len = fx_hex(fxj_str(m, "packet_hex"), pkt, sizeof pkt);
        long plen = fx_hex(fxj_str(m, "plaintext_hex"), want_plain, sizeof want_plain);
        CHECK(len > 0 && plen > 0, "message %zu: bad hex", i);
        json_t *snd = node(fxj_str(m, "sender")), *rcv = node(fxj_str(m, "receiver"));
        CHECK(fx_key(fx_str(rcv, "disco_private"), recv_priv) == 0 && fx_key(fx_str(snd, "disco_public"), send_pub) == 0 &&
                  fx_key(fx_str(snd, "disco_private"), send_priv) == 0 &&
                  fx_key(fx_str(rcv, "disco_public"), recv_pub) == 0,
              "message %zu: keys", i);
        CHECK(hw_disco_is(pkt, (size_t)len), "message %zu: not recognised as disco", i);
        CHECK_MEM(hw_disco_sender(pkt), send_pub, 32);
        /* the receiver's view and the sender's view give the same box key */
        CHECK(hw_box_shared(shared, hw_disco_sender(pkt), recv_priv) == 0, "shared");
        CHECK(hw_box_shared(shared_back, recv_pub, send_priv) == 0, "shared back");
        CHECK_MEM(shared, shared_back, 32);
        long n = hw_disco_open(pkt, (size_t)len, shared, plain, sizeof plain);
        CHECK(n == plen, "message %zu: opened %ld bytes, want %ld", i, n, plen);
        CHECK_MEM(plain, want_plain, (size_t)n);

        struct hw_disco_msg d;
        char err[200];
        CHECK(hw_disco_decode(plain, (size_t)n, &d, err, sizeof err) == 0, "message %zu: %s", i, err);
        json_t *want = json_object_get(m, "message");
        CHECK_INT(d.type, json_integer_value(json_object_get(want, "type")));
        CHECK_INT(d.version, json_integer_value(json_object_get(want, "version")));
        char hex[65], text[HW_DISCO_ADDR_TEXT];
        if (d.type == HW_DISCO_PING || d.type == HW_DISCO_PONG) {
            hw_hex_encode(d.txid, HW_DISCO_TXID_LEN, hex);
            CHECK_STR(hex, fx_str(want, "txid_hex"));
        }
        if (d.type == HW_DISCO_PING) {
            uint8_t nk[32];
            CHECK(fx_key(fx_str(want, "node_key"), nk) == 0, "node key");
            CHECK(d.has_node_key, "message %zu: Ping without node key", i);
            CHECK_MEM(d.node_key, nk, 32);
            CHECK_INT(d.padding, json_integer_value(json_object_get(want, "padding_len")));
            CHECK_INT(len, 124);
            pings++;
        } else if (d.type == HW_DISCO_PONG) {
            CHECK_STR(hw_disco_addr_format(&d.src, text), fx_str(want, "src"));
            CHECK_INT(len, 110);
            pongs++;
        } else {
            json_t *eps = json_object_get(want, "endpoints");
            CHECK_INT(d.n_endpoints, json_array_size(eps));
            for (size_t k = 0; k < d.n_endpoints; k++)
                CHECK_STR(hw_disco_addr_format(&d.endpoints[k], text), json_string_value(json_array_get(eps, k)));
            cmm++;
        }
        /* encode what we parsed: the same inner bytes; seal with the same nonce: the
         * same packet */
        long en = hw_disco_encode(&d, again, sizeof again);
        CHECK(en == n, "message %zu: encoded %ld bytes, want %ld", i, en, n);
        CHECK_MEM(again, plain, (size_t)n);
        uint8_t nonce[24], sealed[512];
        CHECK(fx_hex(fxj_str(m, "nonce_hex"), nonce, sizeof nonce) == 24, "nonce");
        long sl = hw_disco_seal(sealed, sizeof sealed, send_pub, shared_back, nonce, again, (size_t)en);
        CHECK(sl == len, "message %zu: sealed %ld bytes, want %ld", i, sl, len);
        CHECK_MEM(sealed, pkt, (size_t)len);
    }
    CHECK(pings == 69 && pongs == 69 && cmm == 2, "pings %d pongs %d cmm %d", pings, pongs, cmm);
}

static void test_wrong_key_and_forgery(void)
{
    json_t *m = json_array_get(messages(), 0);
    uint8_t pkt[512], plain[512], priv[32], shared[32], other[32];
    long len = fx_hex(fxj_str(m, "packet_hex"), pkt, sizeof pkt);
    CHECK(len > 0, "hex");
    /* a key that is not the receiver's (the third node's) */
    CHECK(fx_key(fx_str(node("n3"), "disco_private"), priv) == 0, "key");
    CHECK(hw_box_shared(shared, hw_disco_sender(pkt), priv) == 0, "shared");
    CHECK(hw_disco_open(pkt, (size_t)len, shared, plain, sizeof plain) < 0, "opened with the wrong key");
    /* the right key, one flipped bit in the ciphertext */
    CHECK(fx_key(fx_str(node(fxj_str(m, "receiver")), "disco_private"), priv) == 0, "key");
    CHECK(hw_box_shared(shared, hw_disco_sender(pkt), priv) == 0, "shared");
    CHECK(hw_disco_open(pkt, (size_t)len, shared, plain, sizeof plain) > 0, "the real packet opens");
    pkt[len - 1] ^= 1;
    CHECK(hw_disco_open(pkt, (size_t)len, shared, plain, sizeof plain) < 0, "a forged packet opened");
    pkt[len - 1] ^= 1;
    /* a changed sender key in the header changes nothing for open (the box key is the
     * caller's), so the caller must derive the key from that header: a packet claiming
     * another sender does not open with the real sender's box key */
    hw_key_generate(other);
    uint8_t other_pub[32], shared2[32];
    hw_key_public(other, other_pub);
    CHECK(hw_box_shared(shared2, other_pub, priv) == 0, "shared2");
    CHECK(hw_disco_open(pkt, (size_t)len, shared2, plain, sizeof plain) < 0, "opened as another sender");
    /* truncated: too short for the tag, and a cut box */
    CHECK(hw_disco_open(pkt, HW_DISCO_OVERHEAD - 1, shared, plain, sizeof plain) < 0, "short opened");
    CHECK(hw_disco_open(pkt, (size_t)len - 1, shared, plain, sizeof plain) < 0, "cut opened");
    /* output buffer too small */
    CHECK(hw_disco_open(pkt, (size_t)len, shared, plain, 10) < 0, "opened into 10 bytes");
}

static void test_not_disco(void)
{
    uint8_t buf[128];
    memset(buf, 0, sizeof buf);
    CHECK(!hw_disco_is(buf, sizeof buf), "zeros are disco");
    memcpy(buf, HW_DISCO_MAGIC, HW_DISCO_MAGIC_LEN);
    CHECK(hw_disco_is(buf, HW_DISCO_WRAPPER_LEN), "magic + key + nonce is the wrapper");
    CHECK(!hw_disco_is(buf, HW_DISCO_WRAPPER_LEN - 1), "one byte short is disco");
    CHECK(!hw_disco_is(buf, 3), "3 bytes are disco");
    /* WireGuard's first message: type 1 and three zero bytes */
    uint8_t wg[148] = {1, 0, 0, 0};
    CHECK(!hw_disco_is(wg, sizeof wg), "a WireGuard initiation is disco");
    /* a STUN binding request */
    uint8_t stun[20] = {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42};
    CHECK(!hw_disco_is(stun, sizeof stun), "STUN is disco");
}

static void test_decode_edges(void)
{
    struct hw_disco_msg m;
    char err[200];
    uint8_t p[64] = {0};
    CHECK(hw_disco_decode(p, 0, &m, err, sizeof err) < 0, "empty decoded");
    CHECK(hw_disco_decode(p, 1, &m, err, sizeof err) < 0, "1 byte decoded");
    p[0] = HW_DISCO_PING;
    CHECK(hw_disco_decode(p, 2 + 11, &m, err, sizeof err) < 0, "short ping decoded");
    CHECK(strstr(err, "Ping") != NULL, "error names the type: %s", err);
    /* a Ping without node key (clients before 1.16) and one with padding */
    CHECK(hw_disco_decode(p, 2 + 12, &m, err, sizeof err) == 0 && !m.has_node_key && m.padding == 0, "old ping");
    CHECK(hw_disco_decode(p, 2 + 12 + 31, &m, err, sizeof err) == 0 && !m.has_node_key && m.padding == 31,
          "ping with 31 bytes after the txid");
    CHECK(hw_disco_decode(p, 2 + 12 + 32 + 10, &m, err, sizeof err) == 0 && m.has_node_key && m.padding == 10,
          "padded ping");
    p[0] = HW_DISCO_PONG;
    CHECK(hw_disco_decode(p, 2 + 29, &m, err, sizeof err) < 0, "short pong decoded");
    CHECK(hw_disco_decode(p, 2 + 30 + 5, &m, err, sizeof err) == 0, "pong with trailing bytes refused");
    p[0] = HW_DISCO_CALL_ME_MAYBE;
    CHECK(hw_disco_decode(p, 2, &m, err, sizeof err) == 0 && m.n_endpoints == 0, "empty CallMeMaybe");
    CHECK(hw_disco_decode(p, 2 + 17, &m, err, sizeof err) == 0 && m.n_endpoints == 0, "ragged CallMeMaybe");
    p[1] = 1;
    CHECK(hw_disco_decode(p, 2 + 18, &m, err, sizeof err) == 0 && m.n_endpoints == 0, "CallMeMaybe v1");
    p[1] = 0;
    /* the peer-relay types and unknown ones are ignored, not errors */
    for (int t = 0x04; t <= 0x09; t++) {
        p[0] = (uint8_t)t;
        CHECK(hw_disco_decode(p, 2 + 40, &m, err, sizeof err) == 1 && m.type == t, "type %d", t);
    }
    p[0] = 0x7f;
    CHECK(hw_disco_decode(p, 2, &m, err, sizeof err) == 1, "unknown type");
    /* many endpoints: the first HW_DISCO_MAX_ENDPOINTS kept */
    size_t n = HW_DISCO_MAX_ENDPOINTS + 3;
    uint8_t *big = calloc(1, 2 + 18 * n);
    big[0] = HW_DISCO_CALL_ME_MAYBE;
    int rc = hw_disco_decode(big, 2 + 18 * n, &m, err, sizeof err);
    free(big);
    CHECK(rc == 0 && m.n_endpoints == HW_DISCO_MAX_ENDPOINTS && m.endpoints_dropped == 3, "big CallMeMaybe");
}

static void test_round_trip_and_addresses(void)
{
    uint8_t a_priv[32], a_pub[32], b_priv[32], b_pub[32], sab[32], sba[32];
    hw_key_generate(a_priv);
    hw_key_public(a_priv, a_pub);
    hw_key_generate(b_priv);
    hw_key_public(b_priv, b_pub);
    CHECK(hw_box_shared(sab, b_pub, a_priv) == 0 && hw_box_shared(sba, a_pub, b_priv) == 0, "shared");
    struct hw_disco_msg m = {.type = HW_DISCO_CALL_ME_MAYBE, .n_endpoints = 2};
    CHECK(hw_disco_addr_parse("192.0.2.7:41641", &m.endpoints[0]) == 0, "v4");
    CHECK(hw_disco_addr_parse("[2001:db8::1]:41642", &m.endpoints[1]) == 0, "v6");
    uint8_t plain[HW_DISCO_MAX_PLAIN], pkt[HW_DISCO_MAX_PLAIN + HW_DISCO_OVERHEAD], back[HW_DISCO_MAX_PLAIN];
    long n = hw_disco_encode(&m, plain, sizeof plain);
    CHECK_INT(n, 2 + 36);
    long sl = hw_disco_seal(pkt, sizeof pkt, a_pub, sab, NULL, plain, (size_t)n);
    CHECK_INT(sl, n + HW_DISCO_OVERHEAD);
    CHECK(hw_disco_seal(pkt, (size_t)sl - 1, a_pub, sab, NULL, plain, (size_t)n) < 0, "sealed into too little");
    CHECK_MEM(hw_disco_sender(pkt), a_pub, 32);
    long bn = hw_disco_open(pkt, (size_t)sl, sba, back, sizeof back);
    CHECK_INT(bn, n);
    struct hw_disco_msg d;
    char err[100], t[HW_DISCO_ADDR_TEXT];
    CHECK(hw_disco_decode(back, (size_t)bn, &d, err, sizeof err) == 0, "%s", err);
    CHECK_STR(hw_disco_addr_format(&d.endpoints[0], t), "192.0.2.7:41641");
    CHECK_STR(hw_disco_addr_format(&d.endpoints[1], t), "[2001:db8::1]:41642");
    CHECK(hw_disco_addr_is_v4(&d.endpoints[0]) && !hw_disco_addr_is_v4(&d.endpoints[1]), "families");
    struct sockaddr_storage ss;
    socklen_t sl2;
    hw_disco_addr_to_sockaddr(&d.endpoints[1], &ss, &sl2);
    struct hw_disco_addr back_addr;
    hw_disco_addr_from_sockaddr((struct sockaddr *)&ss, &back_addr);
    CHECK(hw_disco_addr_equal(&back_addr, &d.endpoints[1]), "sockaddr round trip");
    const char *bad[] = {"", "1.2.3.4", "1.2.3.4:", "1.2.3.4:65536", "[::1:5", "::1:5", "host:80", "1.2.3.4:8x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(hw_disco_addr_parse(bad[i], &back_addr) < 0, "\"%s\" parsed", bad[i]);
    /* a ping of an unknown type is not encoded */
    struct hw_disco_msg junk = {.type = 0x04};
    CHECK(hw_disco_encode(&junk, plain, sizeof plain) < 0, "type 4 encoded");
}

int main(void)
{
    RUN(test_fixture_every_packet);
    RUN(test_wrong_key_and_forgery);
    RUN(test_not_disco);
    RUN(test_decode_edges);
    RUN(test_round_trip_and_addresses);
    json_decref(root);
    return TEST_MAIN_END();
}
