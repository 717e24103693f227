#ifndef HW_CLIENT_SOCKS5_H
#define HW_CLIENT_SOCKS5_H

/* The proxies of `hwclient up --tun=userspace`: SOCKS5 (RFC 1928: no authentication, CONNECT;
 * IPv4, IPv6 and domain names) and HTTP CONNECT, listening on loopback, opening TCP
 * connections into the tailnet through the userspace netstack. Each accepted connection gets
 * a thread (two while relaying: one per direction); at most max_conns at once, more are
 * closed on accept with a log line. */

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct hwc_netstack;
struct hwc_proxy;

#define HWC_PROXY_DEFAULT_SOCKS5 "127.0.0.1:1055"
#define HWC_PROXY_MAX_CONNS 256
#define HWC_PROXY_CONNECT_TIMEOUT_MS 15000

enum hwc_proxy_kind { HWC_PROXY_SOCKS5, HWC_PROXY_HTTP_CONNECT };

struct hwc_proxy_config {
    struct hwc_netstack *ns;
    int connect_timeout_ms;             /* 0 = HWC_PROXY_CONNECT_TIMEOUT_MS */
    int max_conns;                      /* 0 = HWC_PROXY_MAX_CONNS */
    /* A name in the netmap (MagicDNS short name or FQDN, trailing dot allowed) to its
     * addresses: the number written to out (at most max), 0 = not a tailnet name. Called on
     * proxy threads. NULL = no tailnet names. */
    int (*resolve)(const char *name, struct sockaddr_storage *out, int max, void *arg);
    /* Other names go to the system resolver (getaddrinfo on the connection's thread) when
     * set, else they are answered "host unreachable". */
    int system_resolver;
    /* Whether an address is inside the tailnet (a peer's address or route). NULL = all are.
     * Outside addresses are refused with "network unreachable": this proxy only reaches the
     * tailnet (tailscaled would dial them from the host instead). */
    int (*reachable)(const struct sockaddr *sa, void *arg);
    void *arg;
};

/* Listens on addr ("IP:PORT", "[IPv6]:PORT"; port 0 = any). NULL with err on failure. */
struct hwc_proxy *hwc_proxy_start(enum hwc_proxy_kind kind, const char *addr,
                                  const struct hwc_proxy_config *cfg, char *err, size_t errlen);
int hwc_proxy_port(const struct hwc_proxy *p);
/* Stops listening, breaks every open connection and waits for their threads (~1 s). */
void hwc_proxy_stop(struct hwc_proxy *p);

/* Parsers, exposed for the unit tests. Each returns the bytes consumed (> 0), 0 when more
 * input is needed, -1 when the input is malformed. */

/* Greeting: VER=5 NMETHODS METHODS... *noauth = whether method 0 is offered. */
int hwc_socks5_parse_greeting(const uint8_t *b, size_t n, int *noauth);

enum { SOCKS5_ATYP_IPV4 = 1, SOCKS5_ATYP_DOMAIN = 3, SOCKS5_ATYP_IPV6 = 4 };
enum { SOCKS5_CMD_CONNECT = 1, SOCKS5_CMD_BIND = 2, SOCKS5_CMD_UDP = 3 };
enum {
    SOCKS5_REP_OK = 0, SOCKS5_REP_FAILURE = 1, SOCKS5_REP_NOT_ALLOWED = 2,
    SOCKS5_REP_NET_UNREACH = 3, SOCKS5_REP_HOST_UNREACH = 4, SOCKS5_REP_REFUSED = 5,
    SOCKS5_REP_TTL = 6, SOCKS5_REP_CMD_UNSUPPORTED = 7, SOCKS5_REP_ATYP_UNSUPPORTED = 8,
};

struct hwc_socks5_request {
    uint8_t cmd, atyp;
    uint8_t addr[16];                   /* IPv4 in the first 4 bytes, or IPv6 */
    char host[256];                     /* ATYP_DOMAIN: the name, NUL-terminated */
    uint16_t port;
};
/* Request: VER=5 CMD RSV ATYP DST.ADDR DST.PORT. On -1, *rep is the reply code to send
 * (general failure for a bad version or reserved byte, address type not supported, ...).
 * Any command parses; the caller refuses all but CONNECT. */
int hwc_socks5_parse_request(const uint8_t *b, size_t n, struct hwc_socks5_request *r,
                             uint8_t *rep);

/* "CONNECT host:port HTTP/1.x" plus headers up to the empty line (at most 8 KiB). -1 bad
 * request, -2 a method other than CONNECT. host gets the name or the address without []. */
int hwc_http_connect_parse(const char *b, size_t n, char *host, size_t hostlen, uint16_t *port);

#endif
