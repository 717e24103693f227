#ifndef HW_CLIENT_USERSPACE_H
#define HW_CLIENT_USERSPACE_H

/* `hwclient up --tun=userspace`: the netstack holding this node's tailnet addresses plus the
 * SOCKS5 (and optional HTTP CONNECT) proxy in front of it, kept in step with the netmap:
 * MagicDNS names (short and FQDN) resolve to the peers' addresses, and only a peer's
 * address (or, with accept_routes, its subnet routes) is dialed; others get "network
 * unreachable", as WireGuard would have no peer for them.
 *
 * The data-plane seam, the same shape as a TUN device: IP packets the stack sends come out
 * of the output callback (on the loop thread) for WireGuard to encrypt to the peer whose
 * AllowedIPs hold the destination; packets WireGuard decrypted go in through
 * hwc_userspace_input. */

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "client/netstack.h"

struct hw_loop;
struct tc_netmap;
struct hwc_userspace;

struct hwc_userspace_opts {
    const char *socks5_addr;            /* NULL = HWC_PROXY_DEFAULT_SOCKS5 */
    const char *http_proxy_addr;        /* NULL = no HTTP CONNECT proxy */
    int connect_timeout_ms;             /* 0 = the proxy's default (15 s) */
    int accept_routes;                  /* peers' subnet routes count as reachable */
};

/* Loop thread. Starts the stack (no addresses until the first netmap) and the proxies. */
struct hwc_userspace *hwc_userspace_start(struct hw_loop *loop, const struct hwc_userspace_opts *o,
                                          hwc_netstack_output_cb out, void *arg, char *err,
                                          size_t errlen);
/* nm NULL (logged out, no map yet): no addresses, no names, nothing reachable. */
void hwc_userspace_update(struct hwc_userspace *u, const struct tc_netmap *nm);
int hwc_userspace_input(struct hwc_userspace *u, const uint8_t *pkt, size_t len);
/* {"SOCKS5":"127.0.0.1:1055","HTTPProxy":...,"PacketsIn":..,"PacketsOut":..,"Dropped":..} */
json_t *hwc_userspace_status(struct hwc_userspace *u);
void hwc_userspace_stop(struct hwc_userspace *u);

/* The table behind the resolver, exposed for unit tests: name lookups (case-insensitive,
 * trailing dot optional, short name = the FQDN's first label) and AllowedIPs matching. */
int hwc_userspace_resolve(const char *name, struct sockaddr_storage *out, int max, void *arg);
int hwc_userspace_reachable(const struct sockaddr *sa, void *arg);

#endif
