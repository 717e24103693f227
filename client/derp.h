#ifndef HW_CLIENT_DERP_H
#define HW_CLIENT_DERP_H

/* One connection to one DERP region, driven by the event loop without blocking, as
 * upstream's derphttp.Client with its derp.Client (PROTOCOL.md §8): the region's nodes
 * are dialled in the map's order (a node gets 1.5 s to accept TCP, the whole connect
 * 10 s), then TLS checked as the node says (client/tlsdial.h) or plain HTTP when the
 * TS_DEBUG_USE_DERP_HTTP switch is on (port 3340 unless DERPPort), the HTTP upgrade
 * GET /derp, ServerKey, ClientInfo sealed with the node private key, ServerInfo. After
 * that: SendPacket out, RecvPacket / PeerGone in, Ping answered with Pong, KeepAlive
 * and a 120 s read deadline, NotePreferred, the server's token bucket honoured.
 *
 * The same dial serves netcheck's fallback measurement (mode LATENCY): on a fresh
 * connection, GET /derp/latency-check and the time until its answer. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "proto/tailcfg.h"

struct hw_loop;
struct hwc_derp;

#define HWC_DERP_CONNECT_TIMEOUT_MS 10000
#define HWC_DERP_NODE_DIAL_MS 1500
#define HWC_DERP_LATENCY_TIMEOUT_MS 5000
/* No frame at all (the server's keep-alives come every 60-65 s) for this long: dead. */
#define HWC_DERP_READ_TIMEOUT_MS 120000
#define HWC_DERP_PONG_TIMEOUT_MS 3000
/* Packets held while connecting (upstream's write queue depth), then dropped oldest first. */
#define HWC_DERP_PENDING_MAX 32
/* Unsent bytes above this drop new packets: a stalled relay cannot make us buffer more. */
#define HWC_DERP_OUT_MAX (1u << 20)
/* The port plain-HTTP DERP uses when the node has no DERPPort (derper's dev port). */
#define HWC_DERP_HTTP_PORT 3340

enum hwc_derp_mode { HWC_DERP_RELAY, HWC_DERP_LATENCY };

struct hwc_derp_opts {
    enum hwc_derp_mode mode;
    bool plain_http;             /* TS_DEBUG_USE_DERP_HTTP */
    bool preferred;              /* NotePreferred(true) right after ClientInfo */
    const uint8_t *node_priv;    /* RELAY: the identity the relay knows us by */
};

/* All but on_done run inside the connection's input processing: they may send on any
 * connection but must not free one. on_done runs from a timer and may free d. */
struct hwc_derp_callbacks {
    void (*on_up)(struct hwc_derp *d, void *arg);
    void (*on_packet)(struct hwc_derp *d, const uint8_t src[32], const uint8_t *data, size_t len,
                      void *arg);
    void (*on_peer_gone)(struct hwc_derp *d, const uint8_t peer[32], uint8_t reason, void *arg);
    /* The end: why is NULL after a finished latency check, else what went wrong. */
    void (*on_done)(struct hwc_derp *d, const char *why, void *arg);
};

struct hwc_derp *hwc_derp_start(struct hw_loop *loop, const struct tc_derp_region *region,
                                const struct hwc_derp_opts *o, const struct hwc_derp_callbacks *cb,
                                void *arg);
void hwc_derp_free(struct hwc_derp *d);

bool hwc_derp_is_up(const struct hwc_derp *d);
int hwc_derp_region(const struct hwc_derp *d);
/* Queues one packet for dst: 0, or -1 when it was dropped (too large, the queue full, the
 * server's rate limit, or the connection over). Before ServerInfo up to
 * HWC_DERP_PENDING_MAX packets wait. */
int hwc_derp_send(struct hwc_derp *d, const uint8_t dst[32], const uint8_t *data, size_t len);
void hwc_derp_note_preferred(struct hwc_derp *d, bool preferred);
/* A DERP Ping; no Pong within HWC_DERP_PONG_TIMEOUT_MS ends the connection, as
 * tailscaled checks its connections after a network change. No-op while one waits. */
void hwc_derp_ping(struct hwc_derp *d);
/* Monotonic ms of the last frame received (0 before any). */
int64_t hwc_derp_last_rx_ms(const struct hwc_derp *d);
/* LATENCY: the measured time in microseconds (valid when on_done got why == NULL). */
int64_t hwc_derp_latency_us(const struct hwc_derp *d);
/* A Restarting frame's reconnect hint in ms (0 when none came). */
uint32_t hwc_derp_restart_hint_ms(const struct hwc_derp *d);
/* Node, address, server key, counters, last ping RTT. */
json_t *hwc_derp_status(const struct hwc_derp *d);

/* The plain-HTTP switch from the environment: TS_DEBUG_USE_DERP_HTTP, upstream's knob. */
bool hwc_derp_env_plain_http(void);

#endif
