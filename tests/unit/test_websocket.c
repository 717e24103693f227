#include "proto/websocket.h"
#include "tests/unit/testlib.h"

static uint8_t got[8192];
static size_t got_len;
static uint8_t ping_payload[200];
static size_t ping_len;
static int pings;

static int on_data(void *arg, const uint8_t *p, size_t len)
{
    memcpy(got + got_len, p, len);
    got_len += len;
    return 0;
}

static void on_ping(void *arg, const uint8_t *p, size_t len)
{
    memcpy(ping_payload, p, len);
    ping_len = len;
    pings++;
}

static const struct hw_ws_events events = {.data = on_data, .ping = on_ping};

/* A client frame: masked with a fixed key. */
static size_t client_frame(uint8_t *out, int fin, int op, const uint8_t *payload, size_t len)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t n = hw_ws_frame_header(op, len, out);
    if (!fin)
        out[0] &= 0x7f;
    out[1] |= 0x80;
    memcpy(out + n, mask, 4);
    n += 4;
    for (size_t i = 0; i < len; i++)
        out[n + i] = payload[i] ^ mask[i & 3];
    return n + len;
}

static void reset(void)
{
    got_len = ping_len = 0;
    pings = 0;
}

static void accept_key_matches_rfc_example(void)
{
    char out[HW_WS_ACCEPT_LEN];
    CHECK(hw_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out) == 0, "valid key");
    CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK(hw_ws_accept_key("c2hvcnQ=", out) < 0, "a key that is not 16 bytes");
    CHECK(hw_ws_accept_key("%%%", out) < 0, "not base64");
}

static void server_headers_have_the_three_sizes(void)
{
    uint8_t h[10];
    CHECK_INT(hw_ws_frame_header(HW_WS_BINARY, 51, h), 2);
    CHECK(h[0] == 0x82 && h[1] == 51, "short form");
    CHECK_INT(hw_ws_frame_header(HW_WS_BINARY, 4096, h), 4);
    CHECK(h[1] == 126 && h[2] == 0x10 && h[3] == 0x00, "16-bit form");
    CHECK_INT(hw_ws_frame_header(HW_WS_BINARY, 70000, h), 10);
    CHECK(h[1] == 127 && h[7] == 0x01 && h[8] == 0x11 && h[9] == 0x70, "64-bit form");
}

static void binary_stream_in_any_chunking(void)
{
    uint8_t payload[5000], wire[12000];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7);
    /* A fragmented message (3 frames), with a ping in the middle, then a small one. */
    size_t n = client_frame(wire, 0, HW_WS_BINARY, payload, 100);
    n += client_frame(wire + n, 1, HW_WS_PING, (const uint8_t *)"hi", 2);
    n += client_frame(wire + n, 0, HW_WS_CONT, payload + 100, 3000);
    n += client_frame(wire + n, 1, HW_WS_CONT, payload + 3100, 1900);
    for (size_t chunk = 1; chunk <= n; chunk = chunk * 3 + 1) {
        reset();
        struct hw_ws_reader r;
        hw_ws_reader_init(&r);
        for (size_t off = 0; off < n; off += chunk) {
            size_t take = n - off < chunk ? n - off : chunk;
            CHECK(hw_ws_reader_feed(&r, wire + off, take, &events, NULL) == 0, "%s", r.error);
        }
        CHECK_INT(got_len, sizeof payload);
        CHECK(memcmp(got, payload, sizeof payload) == 0, "payload differs (chunk %zu)", chunk);
        CHECK_INT(pings, 1);
        CHECK(ping_len == 2 && memcmp(ping_payload, "hi", 2) == 0, "ping payload");
    }
}

static void close_frame_stops_reading(void)
{
    reset();
    uint8_t wire[64];
    size_t n = client_frame(wire, 1, HW_WS_CLOSE, (const uint8_t *)"\x03\xe8", 2);
    n += client_frame(wire + n, 1, HW_WS_BINARY, (const uint8_t *)"late", 4);
    struct hw_ws_reader r;
    hw_ws_reader_init(&r);
    CHECK(hw_ws_reader_feed(&r, wire, n, &events, NULL) == 0, "%s", r.error);
    CHECK(r.closed, "closed");
    CHECK_INT(got_len, 0);
}

static void protocol_errors(void)
{
    struct {
        const char *what;
        uint8_t bytes[16];
        size_t len;
    } cases[] = {
        {"unmasked", {0x82, 0x01, 'x'}, 3},
        {"text", {0x81, 0x81, 1, 2, 3, 4, 'x'}, 7},
        {"reserved bit", {0xc2, 0x81, 1, 2, 3, 4, 'x'}, 7},
        {"continuation first", {0x80, 0x81, 1, 2, 3, 4, 'x'}, 7},
        {"fragmented ping", {0x09, 0x80, 1, 2, 3, 4}, 6},
        {"huge", {0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4}, 14},
        {"unknown opcode", {0x83, 0x80, 1, 2, 3, 4}, 6},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hw_ws_reader r;
        hw_ws_reader_init(&r);
        CHECK(hw_ws_reader_feed(&r, cases[i].bytes, cases[i].len, &events, NULL) < 0,
              "%s accepted", cases[i].what);
        CHECK(r.error[0] != '\0', "%s: no reason", cases[i].what);
        CHECK(hw_ws_reader_feed(&r, (const uint8_t *)"x", 1, &events, NULL) < 0, "%s: not sticky",
              cases[i].what);
    }
}

int main(void)
{
    RUN(accept_key_matches_rfc_example);
    RUN(server_headers_have_the_three_sizes);
    RUN(binary_stream_in_any_chunking);
    RUN(close_frame_stops_reading);
    RUN(protocol_errors);
    return TEST_MAIN_END();
}
