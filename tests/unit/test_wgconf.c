/* client/wgconf (wg-quick files for `hwclient wg`) and the prefix helpers of client/tun. */
#include <arpa/inet.h>
#include <string.h>

#include "client/tun.h"
#include "client/wgconf.h"
#include "tests/unit/testlib.h"

#define KEY_A "YEocP0e2o1WT5GlvBvQzVF7EeR6z9aCk8ANu0pmv4GI="
#define KEY_B "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="

static void parses_a_full_file(void)
{
    const char *text = "# comment\n[Interface]\nPrivateKey = " KEY_A "\nListenPort = 51820\n"
                       "Address = 10.0.0.1/24, fd00::1/64\nMTU = 1380\n\n"
                       "[Peer]\nPublicKey = " KEY_B "\nEndpoint = 192.0.2.7:51821\n"
                       "AllowedIPs = 10.0.0.2/32, 10.1.0.0/16 , fd00::2/128\nPersistentKeepalive = 25\n"
                       "[Peer]\nPublicKey = " KEY_A "\nEndpoint = [2001:db8::1]:9\n";
    struct hwc_wgconf c;
    char err[200] = "";
    CHECK_INT(hwc_wgconf_parse(text, "x.conf", &c, err, sizeof err), 0);
    CHECK_INT(c.listen_port, 51820);
    CHECK_INT(c.mtu, 1380);
    CHECK_INT(c.n_addrs, 2);
    CHECK_INT(c.addrs[1].bits, 64);
    CHECK_INT(c.n_peers, 2);
    CHECK_INT(c.peers[0].n_allowed, 3);
    CHECK_INT(c.peers[0].allowed[1].bits, 16);
    CHECK_INT(c.peers[0].persistent_keepalive, 25);
    CHECK_INT(c.peers[0].endpoint.ss_family, AF_INET);
    CHECK_INT(c.peers[1].endpoint.ss_family, AF_INET6);
    CHECK_INT(c.peers[1].n_allowed, 0);
    hwc_wgconf_free(&c);
}

static void errors_name_file_and_line(void)
{
    struct {
        const char *text, *want;
    } cases[] = {
        {"[Interface]\nPrivateKey = " KEY_A "\nDNS = 1.1.1.1\n", "f:3: DNS is not supported in [Interface]"},
        {"[Interface]\nPrivateKey = short\n", "f:2: PrivateKey: expected 44 characters of base64"},
        {"ListenPort = 1\n", "f:1: ListenPort outside [Interface] or [Peer]"},
        {"[Interface]\nListenPort = 70000\n", "f:2: ListenPort 70000: expected 0 to 65535"},
        {"[Interface]\n\n\nnonsense\n", "f:4: expected \"Key = Value\""},
        {"[Interface]\nListenPort = 1\n", "[Interface] PrivateKey is required"},
        {"[Interface]\nPrivateKey = " KEY_A "\n[Peer]\nAllowedIPs = 10.0.0.0/33\n",
         "f:4: AllowedIPs 10.0.0.0/33: expected a prefix"},
        {"[Interface]\nPrivateKey = " KEY_A "\n[Peer]\nEndpoint = example.com:1\n", "f:4: Endpoint example.com:1"},
        {"[Interface]\nPrivateKey = " KEY_A "\n[Peer]\nAllowedIPs = 10.0.0.1/32\n", "[Peer] number 1 has no PublicKey"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hwc_wgconf c;
        char err[200] = "";
        CHECK_INT(hwc_wgconf_parse(cases[i].text, "f", &c, err, sizeof err), -1);
        CHECK(strstr(err, cases[i].want) != NULL, "case %zu: got \"%s\", want \"%s\"", i, err, cases[i].want);
    }
}

static void prefixes(void)
{
    struct hwc_prefix p;
    uint8_t a[16];
    CHECK_INT(hwc_prefix_parse("100.64.0.0/10", &p), 0);
    inet_pton(AF_INET, "100.127.255.1", a);
    CHECK(hwc_prefix_contains(&p, AF_INET, a), "inside /10");
    inet_pton(AF_INET, "100.128.0.1", a);
    CHECK(!hwc_prefix_contains(&p, AF_INET, a), "outside /10");
    CHECK_INT(hwc_prefix_parse("fd7a:115c:a1e0::5", &p), 0);
    CHECK_INT(p.bits, 128);
    char t[64];
    hwc_prefix_format(&p, t, sizeof t);
    CHECK_STR(t, "fd7a:115c:a1e0::5/128");
    CHECK_INT(hwc_prefix_parse("1.2.3.4/", &p), -1);
    CHECK_INT(hwc_prefix_parse("1.2.3.4/x", &p), -1);
    CHECK_INT(hwc_prefix_parse("::/129", &p), -1);
    CHECK_INT(hwc_prefix_parse("0.0.0.0/0", &p), 0);
    CHECK(hwc_prefix_contains(&p, AF_INET, a), "default contains all");
    CHECK(!hwc_prefix_contains(&p, AF_INET6, a), "not across families");
}

int main(void)
{
    RUN(parses_a_full_file);
    RUN(errors_name_file_and_line);
    RUN(prefixes);
    return TEST_MAIN_END();
}
