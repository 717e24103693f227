#ifndef HW_CLIENT_WGCONF_H
#define HW_CLIENT_WGCONF_H

/* `hwclient wg -c FILE`: the same WireGuard device as `hwclient up`, configured from a
 * wg-quick style file instead of a control server, on a plain UDP socket. For interop
 * with other WireGuard implementations and for benchmarks.
 *
 *   [Interface]
 *   PrivateKey = <base64>      required
 *   ListenPort = 51820         optional (any free port)
 *   Address = 10.9.0.1/24, fd00::1/64
 *   MTU = 1420                 optional (default 1420, as wg-quick)
 *   [Peer]                     any number
 *   PublicKey = <base64>
 *   Endpoint = 192.0.2.1:51820 | [2001:db8::1]:51820   (numeric)
 *   AllowedIPs = 10.9.0.2/32, ...
 *   PersistentKeepalive = 25
 *
 * Other wg-quick keys (DNS, Table, PreUp, ...) are refused rather than ignored. */

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "client/tun.h"

#define HWC_WGCONF_MAX_ADDRS 16
#define HWC_WGCONF_MAX_ALLOWED 64

struct hwc_wgconf_peer {
    uint8_t public_key[32];
    struct sockaddr_storage endpoint;
    socklen_t endpoint_len;   /* 0: none */
    struct hwc_prefix allowed[HWC_WGCONF_MAX_ALLOWED];
    size_t n_allowed;
    int persistent_keepalive;
};

struct hwc_wgconf {
    uint8_t private_key[32];
    int listen_port;
    int mtu;
    struct hwc_prefix addrs[HWC_WGCONF_MAX_ADDRS];
    size_t n_addrs;
    struct hwc_wgconf_peer *peers;
    size_t n_peers;
};

/* 0, or -1 with err as "FILE:LINE: what". */
int hwc_wgconf_parse(const char *text, const char *filename, struct hwc_wgconf *out, char *err, size_t errlen);
int hwc_wgconf_load(const char *path, struct hwc_wgconf *out, char *err, size_t errlen);
void hwc_wgconf_free(struct hwc_wgconf *c);

/* Runs the device until SIGINT/SIGTERM. Returns the exit status. */
int hwc_wg_run(const struct hwc_wgconf *c, const char *tun_name);

#endif
