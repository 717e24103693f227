#ifndef HW_CLIENT_NETSTACK_H
#define HW_CLIENT_NETSTACK_H

/* A userspace TCP/IP endpoint (lwIP) holding the node's tailnet addresses, for hosts where a
 * TUN device is not allowed (`hwclient up --tun=userspace`). To the rest of hwclient it looks
 * like a TUN device: IP packets for us go in with hwc_netstack_input(), IP packets the stack
 * sends come out through the output callback, both on the event-loop thread. The SOCKS5 and
 * HTTP CONNECT proxies (socks5.h) open TCP connections through it with hwc_netstack_dial().
 *
 * lwIP is one stack per process (its thread and its state are global), so there is at most
 * one netstack at a time; lwIP's thread stays after hwc_netstack_free() and is reused. */

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

struct hw_loop;
struct hwc_netstack;

#define HWC_NETSTACK_MTU 1280
/* Packets lwIP produced that the loop has not delivered yet; beyond this they are dropped
 * and counted, as a NIC drops on a full ring (TCP retransmits). */
#define HWC_NETSTACK_OUT_QUEUE 2048

/* One IP packet (v4 or v6) the stack sends; called on the loop thread. pkt is only valid
 * during the call. */
typedef void (*hwc_netstack_output_cb)(const uint8_t *pkt, size_t len, void *arg);

struct hwc_netstack_addrs {
    int has_v4, has_v6;
    uint8_t v4[4];      /* the node's tailnet IPv4 (/32) */
    uint8_t v6[16];     /* the node's tailnet IPv6 (/128) */
};

struct hwc_netstack_stats {
    uint64_t in_packets, in_dropped;     /* hwc_netstack_input: accepted / refused */
    uint64_t out_packets, out_dropped;   /* delivered to the output callback / queue full */
};

/* NULL with err filled when lwIP or the eventfd cannot be set up, or a netstack exists. */
struct hwc_netstack *hwc_netstack_new(struct hw_loop *loop, const struct hwc_netstack_addrs *a,
                                      hwc_netstack_output_cb out, void *arg, char *err,
                                      size_t errlen);
/* Removes the interface (open connections fail), drops queued packets. Loop thread. */
void hwc_netstack_free(struct hwc_netstack *ns);

/* A packet for us (from WireGuard or the TUN stand-in). Copied; any thread. 0 = taken,
 * -1 = dropped (not IP, too big, stack busy). */
int hwc_netstack_input(struct hwc_netstack *ns, const uint8_t *pkt, size_t len);

/* New addresses after a netmap change; connections on a removed address break. */
void hwc_netstack_set_addrs(struct hwc_netstack *ns, const struct hwc_netstack_addrs *a);
void hwc_netstack_get_stats(struct hwc_netstack *ns, struct hwc_netstack_stats *st);

/* TCP through the stack, for proxy threads (blocking calls; any thread but the loop's, since
 * the loop delivers the packets these wait for). A connection is an lwIP descriptor, not a
 * kernel fd: only these functions take it. */

/* Connects to sa within timeout_ms. Returns the descriptor, or -1 with *err_out an errno:
 * ECONNREFUSED (reset), ETIMEDOUT (no answer), EHOSTUNREACH / ENETUNREACH, ENOMEM, or
 * ECANCELED once *cancel (may be NULL) becomes non-zero (checked every 200 ms). */
int hwc_netstack_dial(struct hwc_netstack *ns, const struct sockaddr *sa, socklen_t salen,
                      int timeout_ms, const atomic_int *cancel, int *err_out);
/* As read()/write(); -1 with errno EAGAIN when timeout_ms (set per connection with
 * hwc_netstack_conn_timeouts, 0 = none) passed without progress. */
ssize_t hwc_netstack_read(int c, void *buf, size_t len);
ssize_t hwc_netstack_write(int c, const void *buf, size_t len);
int hwc_netstack_conn_timeouts(int c, int recv_ms, int send_ms);
int hwc_netstack_shutdown_write(int c);
void hwc_netstack_close(int c);

#endif
