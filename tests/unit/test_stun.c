/* STUN against the 19 real tailscaled -> derper pairs in stun.json. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>

#include "common/util.h"
#include "proto/stun.h"
#include "tests/unit/testlib.h"

static json_t *pairs;
static json_t *root;

static int load(void)
{
    if (!root) {
        char *path = hw_sprintf("%s/stun.json", tl_fixtures_dir());
        json_error_t err;
        root = json_load_file(path, 0, &err);
        free(path);
        pairs = json_object_get(root, "pairs");
    }
    return json_array_size(pairs) > 0;
}

static int hex(json_t *o, uint8_t *out, size_t cap)
{
    return hw_hex_decode(json_string_value(json_object_get(o, "hex")), out, cap);
}

/* "127.0.0.1:18641" -> addr */
static int parse_endpoint(const char *s, struct hw_stun_addr *a)
{
    char ip[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof ip)
        return -1;
    memcpy(ip, s, (size_t)(colon - s));
    ip[colon - s] = '\0';
    memset(a, 0, sizeof *a);
    a->family = 4;
    a->port = (uint16_t)atoi(colon + 1);
    return inet_pton(AF_INET, ip, a->ip) == 1 ? 0 : -1;
}

static void answers_every_request_like_derper(void)
{
    CHECK(load(), "stun.json not loadable from %s", tl_fixtures_dir());
    CHECK_INT(json_array_size(pairs), 19);
    for (size_t i = 0; i < json_array_size(pairs); i++) {
        json_t *req = json_object_get(json_array_get(pairs, i), "request");
        json_t *resp = json_object_get(json_array_get(pairs, i), "response");
        uint8_t q[128], want[128], txid[12], out[HW_STUN_MAX_RESPONSE];
        int qn = hex(req, q, sizeof q), wn = hex(resp, want, sizeof want);
        CHECK(qn == 40 && wn == 32, "pair %zu: sizes %d %d", i, qn, wn);
        int rc = hw_stun_parse_binding_request(q, (size_t)qn, txid);
        CHECK(rc == 0, "pair %zu: %s", i, hw_stun_strerror(rc));
        CHECK(memcmp(txid, q + 8, 12) == 0, "txid");
        struct hw_stun_addr src;
        CHECK(parse_endpoint(json_string_value(json_object_get(req, "src")), &src) == 0, "src");
        size_t n = hw_stun_build_response(out, txid, &src);
        CHECK(n == (size_t)wn && memcmp(out, want, n) == 0, "pair %zu: response differs", i);
        /* Our request builder makes the same bytes tailscaled did for that txid. */
        uint8_t mine[HW_STUN_REQUEST_LEN];
        hw_stun_build_request(mine, txid);
        CHECK(memcmp(mine, q, 40) == 0, "pair %zu: request differs", i);
    }
}

static void decodes_every_response(void)
{
    CHECK(load(), "fixture");
    for (size_t i = 0; i < json_array_size(pairs); i++) {
        json_t *resp = json_object_get(json_array_get(pairs, i), "response");
        uint8_t b[128], txid[12];
        int n = hex(resp, b, sizeof b);
        struct hw_stun_addr a;
        int rc = hw_stun_parse_response(b, (size_t)n, txid, &a);
        CHECK(rc == 0, "pair %zu: %s", i, hw_stun_strerror(rc));
        char text[64];
        hw_stun_addr_format(&a, text, sizeof text);
        json_t *attr = json_array_get(json_object_get(json_object_get(resp, "parsed"), "attributes"), 0);
        CHECK_STR(text, json_string_value(json_object_get(attr, "decoded")));
        CHECK_STR(text, json_string_value(json_object_get(resp, "dst")));
    }
}

static void ipv6_and_mapped_sources(void)
{
    uint8_t txid[12], out[HW_STUN_MAX_RESPONSE], back_txid[12];
    for (int i = 0; i < 12; i++)
        txid[i] = (uint8_t)(i * 17 + 3);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(41641)};
    inet_pton(AF_INET6, "2001:db8::1234", &sa.sin6_addr);
    struct hw_stun_addr a, b;
    CHECK(hw_stun_addr_from_sockaddr((struct sockaddr *)&sa, &a) == 0 && a.family == 6, "v6");
    size_t n = hw_stun_build_response(out, txid, &a);
    CHECK_INT(n, 44);
    CHECK(out[25] == 0x02, "IPv6 family");
    CHECK(hw_stun_parse_response(out, n, back_txid, &b) == 0, "parse v6");
    CHECK(b.family == 6 && b.port == 41641 && memcmp(b.ip, a.ip, 16) == 0, "v6 round trip");
    char text[64];
    hw_stun_addr_format(&b, text, sizeof text);
    CHECK_STR(text, "[2001:db8::1234]:41641");
    /* An IPv4 client seen through a dual-stack socket is answered as IPv4. */
    inet_pton(AF_INET6, "::ffff:192.0.2.7", &sa.sin6_addr);
    CHECK(hw_stun_addr_from_sockaddr((struct sockaddr *)&sa, &a) == 0 && a.family == 4, "unmapped");
    n = hw_stun_build_response(out, txid, &a);
    CHECK(n == 32 && out[25] == 0x01, "IPv4 family for a mapped source");
    CHECK(hw_stun_parse_response(out, n, back_txid, &b) == 0, "parse");
    hw_stun_addr_format(&b, text, sizeof text);
    CHECK_STR(text, "192.0.2.7:41641");
    /* MAPPED-ADDRESS fallback (plain, not XORed), padded values skipped correctly. */
    uint8_t m[] = {0x01, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                   0x80, 0x22, 0x00, 0x03, 'a', 'b', 'c', 0,
                   0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x1f, 0x90, 10, 0, 0, 1};
    CHECK(hw_stun_parse_response(m, sizeof m, back_txid, &b) == 0, "mapped-address");
    hw_stun_addr_format(&b, text, sizeof text);
    CHECK_STR(text, "10.0.0.1:8080");
}

static void rejects_garbage(void)
{
    CHECK(load(), "fixture");
    json_t *req = json_object_get(json_array_get(pairs, 0), "request");
    uint8_t good[40], b[64], txid[12];
    CHECK(hex(req, good, sizeof good) == 40, "request");
    CHECK(hw_stun_parse_binding_request(good, 40, txid) == 0, "baseline");
    CHECK_INT(hw_stun_parse_binding_request(good, 19, txid), HW_STUN_NOT_STUN);
    CHECK_INT(hw_stun_parse_binding_request(good, 0, txid), HW_STUN_NOT_STUN);
    memcpy(b, good, 40);
    b[0] = 0xc0;
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_NOT_STUN);
    memcpy(b, good, 40);
    b[5] ^= 1;   /* cookie */
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_NOT_STUN);
    memcpy(b, good, 40);
    b[1] = 0x11;  /* binding indication */
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_NOT_BINDING_REQUEST);
    memcpy(b, good, 40);
    b[24] = 'T';  /* software text */
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_WRONG_SOFTWARE);
    memcpy(b, good, 40);
    b[39] ^= 0xff;
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_BAD_FINGERPRINT);
    memcpy(b, good, 40);
    b[10] ^= 0xff;  /* txid changed after the fingerprint was computed */
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_BAD_FINGERPRINT);
    /* Without FINGERPRINT, or with an attribute overrunning the packet. */
    CHECK_INT(hw_stun_parse_binding_request(good, 32, txid), HW_STUN_NO_FINGERPRINT);
    CHECK_INT(hw_stun_parse_binding_request(good, 38, txid), HW_STUN_BAD_ATTRS);
    memcpy(b, good, 40);
    b[23] = 200;
    CHECK_INT(hw_stun_parse_binding_request(b, 40, txid), HW_STUN_BAD_ATTRS);
    /* Responses: a request is not a response; a response without an address fails. */
    struct hw_stun_addr a;
    CHECK_INT(hw_stun_parse_response(good, 40, txid, &a), HW_STUN_NOT_SUCCESS);
    uint8_t empty[20] = {0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42};
    CHECK_INT(hw_stun_parse_response(empty, 20, txid, &a), HW_STUN_NO_ADDRESS);
    empty[3] = 8;  /* claims attributes that are not there */
    CHECK_INT(hw_stun_parse_response(empty, 20, txid, &a), HW_STUN_BAD_ATTRS);
    uint8_t badfam[32] = {0x01, 0x01, 0, 12, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          0x00, 0x20, 0x00, 0x08, 0x00, 0x07};
    CHECK_INT(hw_stun_parse_response(badfam, 32, txid, &a), HW_STUN_BAD_ATTRS);
}

int main(void)
{
    RUN(answers_every_request_like_derper);
    RUN(decodes_every_response);
    RUN(ipv6_and_mapped_sources);
    RUN(rejects_garbage);
    json_decref(root);
    return TEST_MAIN_END();
}
