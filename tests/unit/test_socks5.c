/* The SOCKS5 greeting/request parsers and the HTTP CONNECT request-line parser of
 * client/socks5.c: every valid form, every truncation of it (needs more, never a misparse),
 * and random garbage (never a crash or a read past the input: run under ASan). */
#include <stdint.h>
#include <string.h>

#include "client/socks5.h"
#include "tests/unit/testlib.h"

static void greeting(void)
{
    int noauth = -1;
    const uint8_t ok[] = {5, 2, 2, 0};
    for (size_t n = 0; n < sizeof ok; n++)
        CHECK_INT(hwc_socks5_parse_greeting(ok, n, &noauth), 0);
    CHECK_INT(hwc_socks5_parse_greeting(ok, sizeof ok, &noauth), 4);
    CHECK_INT(noauth, 1);
    const uint8_t userpass_only[] = {5, 1, 2};
    CHECK_INT(hwc_socks5_parse_greeting(userpass_only, 3, &noauth), 3);
    CHECK_INT(noauth, 0);
    const uint8_t socks4[] = {4, 1, 0, 80};
    CHECK_INT(hwc_socks5_parse_greeting(socks4, 1, &noauth), -1);
    const uint8_t no_methods[] = {5, 0};
    CHECK_INT(hwc_socks5_parse_greeting(no_methods, 2, &noauth), -1);
    /* Trailing bytes (a pipelined request) are not consumed. */
    const uint8_t pipelined[] = {5, 1, 0, 5, 1, 0, 1};
    CHECK_INT(hwc_socks5_parse_greeting(pipelined, sizeof pipelined, &noauth), 3);
}

static void request_ipv4_ipv6_domain(void)
{
    struct hwc_socks5_request r;
    uint8_t rep;
    const uint8_t v4[] = {5, 1, 0, 1, 100, 64, 0, 2, 0x1f, 0x90};
    for (size_t n = 0; n < sizeof v4; n++)
        CHECK_INT(hwc_socks5_parse_request(v4, n, &r, &rep), 0);
    CHECK_INT(hwc_socks5_parse_request(v4, sizeof v4, &r, &rep), 10);
    CHECK_INT(r.cmd, SOCKS5_CMD_CONNECT);
    CHECK_INT(r.atyp, SOCKS5_ATYP_IPV4);
    CHECK(memcmp(r.addr, v4 + 4, 4) == 0, "v4 address");
    CHECK_INT(r.port, 8080);

    uint8_t v6[22] = {5, 1, 0, 4};
    for (int i = 0; i < 16; i++)
        v6[4 + i] = (uint8_t)(0xf0 + i);
    v6[20] = 0;
    v6[21] = 22;
    for (size_t n = 0; n < sizeof v6; n++)
        CHECK_INT(hwc_socks5_parse_request(v6, n, &r, &rep), 0);
    CHECK_INT(hwc_socks5_parse_request(v6, sizeof v6, &r, &rep), 22);
    CHECK(memcmp(r.addr, v6 + 4, 16) == 0, "v6 address");
    CHECK_INT(r.port, 22);

    const uint8_t dom[] = {5, 1, 0, 3, 16, 'b', 'o', 'x', '1', '.', 'e', 'x', 'a', 'm', 'p',
                           'l', 'e', '.', 'c', 'o', 'm', 0, 80};
    for (size_t n = 0; n < sizeof dom; n++)
        CHECK_INT(hwc_socks5_parse_request(dom, n, &r, &rep), 0);
    CHECK_INT(hwc_socks5_parse_request(dom, sizeof dom, &r, &rep), (int)sizeof dom);
    CHECK_STR(r.host, "box1.example.com");
    CHECK_INT(r.port, 80);

    /* 255-byte name: the longest there is, NUL-terminated in the 256-byte field. */
    uint8_t longest[4 + 1 + 255 + 2] = {5, 1, 0, 3, 255};
    memset(longest + 5, 'a', 255);
    CHECK_INT(hwc_socks5_parse_request(longest, sizeof longest, &r, &rep), (int)sizeof longest);
    CHECK_INT(strlen(r.host), 255);
}

static void request_commands_parse_for_refusal(void)
{
    struct hwc_socks5_request r;
    uint8_t rep;
    const uint8_t bind[] = {5, 2, 0, 1, 1, 2, 3, 4, 0, 1};
    CHECK_INT(hwc_socks5_parse_request(bind, sizeof bind, &r, &rep), 10);
    CHECK_INT(r.cmd, SOCKS5_CMD_BIND);
    const uint8_t udp[] = {5, 3, 0, 1, 0, 0, 0, 0, 0, 0};
    CHECK_INT(hwc_socks5_parse_request(udp, sizeof udp, &r, &rep), 10);
    CHECK_INT(r.cmd, SOCKS5_CMD_UDP);
}

static void request_malformed(void)
{
    struct hwc_socks5_request r;
    uint8_t rep;
    const uint8_t badver[] = {4, 1, 0, 1, 1, 2, 3, 4, 0, 1};
    CHECK_INT(hwc_socks5_parse_request(badver, 1, &r, &rep), -1);
    CHECK_INT(rep, SOCKS5_REP_FAILURE);
    const uint8_t rsv[] = {5, 1, 7, 1, 1, 2, 3, 4, 0, 1};
    CHECK_INT(hwc_socks5_parse_request(rsv, 3, &r, &rep), -1);
    const uint8_t atyp[] = {5, 1, 0, 9, 1, 2, 3, 4, 0, 1};
    CHECK_INT(hwc_socks5_parse_request(atyp, sizeof atyp, &r, &rep), -1);
    CHECK_INT(rep, SOCKS5_REP_ATYP_UNSUPPORTED);
    const uint8_t empty_name[] = {5, 1, 0, 3, 0, 0, 80};
    CHECK_INT(hwc_socks5_parse_request(empty_name, sizeof empty_name, &r, &rep), -1);
    const uint8_t nul_name[] = {5, 1, 0, 3, 3, 'a', 0, 'b', 0, 80};
    CHECK_INT(hwc_socks5_parse_request(nul_name, sizeof nul_name, &r, &rep), -1);
    const uint8_t space_name[] = {5, 1, 0, 3, 3, 'a', ' ', 'b', 0, 80};
    CHECK_INT(hwc_socks5_parse_request(space_name, sizeof space_name, &r, &rep), -1);
}

static int http(const char *s, char *host, uint16_t *port)
{
    return hwc_http_connect_parse(s, strlen(s), host, 256, port);
}

static void http_connect(void)
{
    char host[256];
    uint16_t port = 0;
    const char *req = "CONNECT box1:8080 HTTP/1.1\r\nHost: box1:8080\r\n\r\nEARLY";
    CHECK_INT(http(req, host, &port), (int)strlen(req) - 5);
    CHECK_STR(host, "box1");
    CHECK_INT(port, 8080);
    for (size_t n = 0; n < strlen(req) - 5; n++)
        CHECK_INT(hwc_http_connect_parse(req, n, host, sizeof host, &port), 0);
    CHECK(http("CONNECT [fd7a:115c:a1e0::2]:443 HTTP/1.0\r\n\r\n", host, &port) > 0, "v6");
    CHECK_STR(host, "fd7a:115c:a1e0::2");
    CHECK_INT(port, 443);
    CHECK_INT(http("GET / HTTP/1.1\r\n\r\n", host, &port), -2);
    CHECK_INT(http("CONNECT box1 HTTP/1.1\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT box1:0 HTTP/1.1\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT box1:65536 HTTP/1.1\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT box1:80x HTTP/1.1\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT :80 HTTP/1.1\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT [::1:80 HTTP/1.1\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT box1:80 SPDY/3\r\n\r\n", host, &port), -1);
    CHECK_INT(http("CONNECT box1:80\r\n\r\n", host, &port), -1);
    const char nul[] = "CONNECT a\0b:80 HTTP/1.1\r\n\r\n";
    CHECK_INT(hwc_http_connect_parse(nul, sizeof nul - 1, host, sizeof host, &port), -1);
    /* A header block that never ends is refused once it passes 8 KiB. */
    static char big[9000];
    memset(big, 'x', sizeof big);
    CHECK_INT(hwc_http_connect_parse(big, sizeof big, host, sizeof host, &port), -1);
}

static void garbage_never_crashes(void)
{
    uint32_t seed = 12345;
    uint8_t buf[600];
    char host[256];
    struct hwc_socks5_request r;
    uint8_t rep;
    int noauth;
    uint16_t port;
    for (int round = 0; round < 200000; round++) {
        size_t n = 0;
        seed = seed * 1103515245u + 12345u;
        n = (seed >> 16) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (uint8_t)(seed >> 16);
        }
        if (round % 3 == 0 && n > 4) {  /* keep a plausible header so the deep paths run */
            buf[0] = 5;
            buf[2] = 0;
            buf[3] = (uint8_t)(1 + (round / 3) % 4);
        }
        int g = hwc_socks5_parse_greeting(buf, n, &noauth);
        CHECK(g >= -1 && g <= (int)n, "greeting consumed %d of %zu", g, n);
        int q = hwc_socks5_parse_request(buf, n, &r, &rep);
        CHECK(q >= -1 && q <= (int)n, "request consumed %d of %zu", q, n);
        if (q > 0 && r.atyp == SOCKS5_ATYP_DOMAIN)
            CHECK(strlen(r.host) > 0 && strlen(r.host) < 256, "host length");
        int h = hwc_http_connect_parse((const char *)buf, n, host, sizeof host, &port);
        CHECK(h >= -2 && h <= (int)n, "http consumed %d of %zu", h, n);
    }
}

int main(void)
{
    RUN(greeting);
    RUN(request_ipv4_ipv6_domain);
    RUN(request_commands_parse_for_refusal);
    RUN(request_malformed);
    RUN(http_connect);
    RUN(garbage_never_crashes);
    return TEST_MAIN_END();
}
