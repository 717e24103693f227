#ifndef HW_CLIENT_WGDEV_H
#define HW_CLIENT_WGDEV_H

/* The WireGuard device on the event loop: proto/wireguard's state machine between a TUN
 * device and a datagram transport. One WireGuard peer per peer key, with AllowedIPs:
 * outgoing packets go to the peer with the longest matching prefix for their
 * destination; incoming packets whose source is not in the sending peer's AllowedIPs are
 * dropped, as WireGuard does.
 *
 * Transports: a plain UDP socket (`hwclient wg`, peers with endpoints, roaming to the
 * source of authenticated packets), or a send callback (magicsock: the peer's node key
 * picks the path) with packets fed back through hwc_wgdev_input. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

#include "client/tun.h"

struct hw_loop;
struct hwc_wgdev;

/* Sends one WireGuard datagram to the peer with that key; peer_key is NULL for a cookie
 * reply to a sender not known yet (a transport without source addresses drops it). 0 or -1. */
typedef int (*hwc_wgdev_send_fn)(void *arg, const uint8_t *peer_key, const uint8_t *pkt, size_t len);

struct hwc_wgdev_peer_cfg {
    uint8_t key[32];
    const struct hwc_prefix *allowed;
    size_t n_allowed;
    const char *name;                 /* for logs and status; may be NULL */
    const struct sockaddr *endpoint;  /* UDP mode: initial endpoint; may be NULL */
    socklen_t endpoint_len;
    int persistent_keepalive;         /* seconds, 0 = off */
};

/* tun is borrowed (the caller closes it after hwc_wgdev_free). send NULL = UDP mode
 * (call hwc_wgdev_listen_udp). */
struct hwc_wgdev *hwc_wgdev_new(struct hw_loop *loop, const uint8_t priv[32], struct hwc_tun *tun, int mtu,
                                hwc_wgdev_send_fn send, void *arg, char *err, size_t errlen);
void hwc_wgdev_free(struct hwc_wgdev *w);
/* UDP mode: binds a dual-stack socket on port (0 = any). */
int hwc_wgdev_listen_udp(struct hwc_wgdev *w, int port, char *err, size_t errlen);
uint16_t hwc_wgdev_udp_port(const struct hwc_wgdev *w);

/* Replaces the peer set: new keys are added, missing ones removed, existing ones keep
 * their sessions and get the new AllowedIPs (and endpoint when given). */
void hwc_wgdev_set_peers(struct hwc_wgdev *w, const struct hwc_wgdev_peer_cfg *peers, size_t n);

/* Without a TUN device (tun NULL in hwc_wgdev_new; `--tun=userspace`): decrypted packets
 * whose source is in the peer's AllowedIPs go to deliver instead of a TUN write, and the
 * local stack's packets come in through hwc_wgdev_send_ip (routed by AllowedIPs, as a TUN
 * read is). Both on the loop thread. */
typedef void (*hwc_wgdev_deliver_fn)(const uint8_t *pkt, size_t len, void *arg);
void hwc_wgdev_set_deliver(struct hwc_wgdev *w, hwc_wgdev_deliver_fn deliver, void *arg);
/* -1 when it is not an IP packet or no peer's AllowedIPs hold its destination (counted). */
int hwc_wgdev_send_ip(struct hwc_wgdev *w, const uint8_t *pkt, size_t len);

/* A WireGuard datagram from the transport (src may be NULL). */
void hwc_wgdev_input(struct hwc_wgdev *w, const uint8_t *pkt, size_t len, const struct sockaddr *src,
                     socklen_t src_len);

/* {"TxBytes","RxBytes","LastHandshake" (RFC 3339, "" when never),"Endpoint"}, NULL when
 * the key is no peer. */
json_t *hwc_wgdev_peer_status(const struct hwc_wgdev *w, const uint8_t key[32]);
/* Every peer: an array of the objects above plus "PublicKey"/"Name"/"AllowedIPs". */
json_t *hwc_wgdev_status(const struct hwc_wgdev *w);

#endif
