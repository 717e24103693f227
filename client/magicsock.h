#ifndef HW_CLIENT_MAGICSOCK_H
#define HW_CLIENT_MAGICSOCK_H

/* The DERP half of upstream's magicsock (wgengine/magicsock/derp.go) plus the UDP socket
 * it will share with WireGuard and disco later:
 *   - netcheck on that socket when the DERP map arrives or changes and about every
 *     minute; the report's preferred region becomes the home region (kept while the
 *     control connection is down, as upstream does, so peers can still find us);
 *   - a connection to the home region, marked NotePreferred, kept up with reconnects
 *     (exponential backoff from 100 ms, capped at 30 s, reset once ServerInfo arrives);
 *   - connections to other regions on demand, when a packet goes to a peer homed
 *     there, closed after 60 s without a write;
 *   - a route per peer: a peer heard on some region's connection is answered there,
 *     until a PeerGone or that connection's end (upstream's derpRoute).
 * The path layer (upstream's endpoint.go, docs/dataplane.md "Paths: direct and DERP"):
 *   - a disco key per run; disco Ping/Pong/CallMeMaybe (proto/disco.h) on the UDP socket
 *     and through DERP, accepted only from disco keys of current netmap peers;
 *   - our endpoints: local interface addresses with the UDP port, and the STUN-mapped
 *     address of the last report (on_endpoints when the set changes);
 *   - per peer: candidate endpoints (Node.Endpoints, CallMeMaybe, where pings came
 *     from), the best confirmed one (lowest latency), trusted for 6.5 s after its last
 *     Pong; heartbeats every 3 s while the peer was sent to in the last 45 s, a full
 *     round of pings (and a CallMeMaybe through DERP) when there is no trusted path
 *     or every 60 s; packets go direct while the path is trusted, else through DERP.
 * Receive demux (UDP and DERP alike): disco magic -> disco; WireGuard (type 1-4 and three
 * zero bytes) -> on_wg_packet; STUN answers (UDP) -> netcheck; the rest of DERP's
 * packets -> on_derp_packet (the debug protocol, client/derpdebug.h). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "client/netcheck.h"
#include "proto/tailcfg.h"

struct hw_loop;
struct hwc_magic;

#define HWC_MAGIC_DEFAULT_PORT 41641
#define HWC_MAGIC_RESTUN_MS 60000
#define HWC_MAGIC_IDLE_CLOSE_MS 60000
#define HWC_MAGIC_CLEAN_INTERVAL_MS 15000
#define HWC_MAGIC_BACKOFF_BASE_MS 100
#define HWC_MAGIC_BACKOFF_CAP_MS 30000
/* Connections to regions at once (home + on demand); a send beyond that is refused. */
#define HWC_MAGIC_MAX_CONNS 32

struct hwc_magic_callbacks {
    /* A report finished and NetInfo (PreferredDERP, DERPLatency, WorkingUDP, ...) is
     * what the control server should hear; borrowed. */
    void (*on_netinfo)(const json_t *netinfo, void *arg);
    void (*on_derp_packet)(const uint8_t src[32], int region, const uint8_t *data, size_t len, void *arg);
    /* A packet that is neither disco nor the DERP debug protocol, received on the UDP
     * socket or through DERP (WireGuard demultiplexes by receiver index / handshake, so
     * no source is needed). May be NULL: such packets are counted and dropped. */
    void (*on_wg_packet)(const uint8_t *pkt, size_t len, void *arg);
    /* Our endpoints changed ("ip:port", with upstream's EndpointTypes: 1 local, 2 STUN);
     * the control server should hear them (MapRequest.Endpoints). May be NULL. */
    void (*on_endpoints)(const char *const *endpoints, const int *types, size_t n, void *arg);
};

struct hwc_magic_opts {
    bool plain_http;     /* TS_DEBUG_USE_DERP_HTTP */
    int port;            /* UDP port; 0 = any */
    bool port_fallback;  /* a busy port falls back to any, as tailscaled does with 41641 */
    int idle_close_ms;   /* 0: HWC_MAGIC_IDLE_CLOSE_MS (tests shorten it) */
};

struct hwc_magic *hwc_magic_new(struct hw_loop *loop, const struct hwc_magic_opts *o,
                                const struct hwc_magic_callbacks *cb, void *arg, char *err, size_t errlen);
void hwc_magic_free(struct hwc_magic *m);

/* The node key DERP authenticates with; NULL closes every connection (logged out,
 * key expired). A different key reconnects everything. */
void hwc_magic_set_private_key(struct hwc_magic *m, const uint8_t priv[32]);
/* Copies dm; a changed map starts a report. NULL forgets it (closes connections). */
void hwc_magic_set_derp_map(struct hwc_magic *m, const struct tc_derp_map *dm);
/* Upstream keeps its home region while it cannot tell control about a new one. */
void hwc_magic_set_control_connected(struct hwc_magic *m, bool up);
/* Home regions of the peers, for the choice when no region answers at all (upstream
 * then homes where most peers are). */
void hwc_magic_set_peer_homes(struct hwc_magic *m, const int *homes, size_t n);
/* The prefixes routed into our TUN device (peers' subnet routes taken with
 * --accept-routes): addresses inside them are never candidates or paths, since packets
 * to them would go through the tunnel itself. Default routes are ignored (an exit node's
 * 0.0.0.0/0 does not catch the marked UDP socket). */
struct hwc_prefix;
void hwc_magic_set_tunnel_routes(struct hwc_magic *m, const struct hwc_prefix *p, size_t n);

/* `hwclient debug force-prefer-derp`: region becomes home at the next report (started
 * now) when it answers; 0 goes back to latency. */
void hwc_magic_force_prefer_derp(struct hwc_magic *m, int region);

/* One packet to dst through DERP: the route the peer was last heard on, else its home
 * region (connected on demand). 0 queued, -1 with err saying why not. */
int hwc_magic_send_derp(struct hwc_magic *m, const uint8_t dst[32], int peer_home, const uint8_t *data,
                        size_t len, char *err, size_t errlen);

/* ---- paths (disco) ---- */

/* Upstream's timers (wgengine/magicsock: magicsock.go, endpoint.go). */
#define HWC_MAGIC_PING_TIMEOUT_MS 5000       /* pingTimeoutDuration */
#define HWC_MAGIC_PING_INTERVAL_MS 5000      /* discoPingInterval: per endpoint */
/* While a peer has traffic and no trusted path, its candidates are pinged this often
 * instead (upstream keeps 5 s): a path that opens, e.g. a NAT or firewall that starts
 * letting UDP through, is found within about 2.5 s instead of 5. */
#define HWC_MAGIC_DISCOVERY_PING_INTERVAL_MS 2500
#define HWC_MAGIC_HEARTBEAT_MS 3000          /* heartbeatInterval */
#define HWC_MAGIC_TRUST_UDP_MS 6500          /* trustUDPAddrDuration */
#define HWC_MAGIC_UPGRADE_MS 60000           /* upgradeUDPDirectInterval */
#define HWC_MAGIC_SESSION_ACTIVE_MS 45000    /* sessionActiveTimeout */
#define HWC_MAGIC_GOOD_ENOUGH_US 5000        /* goodEnoughLatency */
/* DERP's stand-in address in Pongs to Pings that came through DERP: 127.3.3.40:region. */
#define HWC_MAGIC_DERP_MAGIC_IP "127.3.3.40"
/* Candidate endpoints kept per peer. */
#define HWC_MAGIC_MAX_CANDIDATES 64

/* A peer from the netmap, for path selection (strings read during the call only). */
struct hwc_magic_peer {
    uint8_t node_key[32];
    uint8_t disco_key[32];          /* all zero: the peer has none (no direct paths) */
    int home_region;                /* Node.HomeDERP / legacy DERP "127.3.3.40:N"; 0 = unknown */
    const char *const *endpoints;   /* Node.Endpoints, "ip:port" / "[ip6]:port" */
    size_t n_endpoints;
};
/* Replaces the peer set (called on every netmap change). A peer whose node and disco
 * keys stay keeps its path state; the others start over. */
void hwc_magic_set_peers(struct hwc_magic *m, const struct hwc_magic_peer *peers, size_t n);

/* One WireGuard packet to the peer with that node key, over the best path: the confirmed
 * direct UDP endpoint when there is one, else DERP (the route it was last heard on, else its
 * home region). 0 = queued/sent, -1 with err. */
int hwc_magic_send(struct hwc_magic *m, const uint8_t dst_node_key[32], const uint8_t *pkt,
                   size_t len, char *err, size_t errlen);

/* Our disco public key (MapRequest.DiscoKey), new for every hwc_magic. */
void hwc_magic_disco_public(const struct hwc_magic *m, uint8_t out[32]);

/* `hwclient ping`: one disco ping round like upstream's discoPing (the trusted direct
 * path alone, else DERP and every candidate at once); the first Pong answers. When the
 * peer has no trusted path this also starts discovery (pings + CallMeMaybe), as a
 * packet to it would. */
struct hwc_magic_ping_result {
    bool timed_out;
    int64_t latency_us;
    int derp_region;          /* the Pong came through DERP (this region) */
    char endpoint[64];        /* else the direct address it came from, "ip:port" */
};
typedef void (*hwc_magic_ping_cb)(const struct hwc_magic_ping_result *r, const char *err, void *arg);
/* 0: cb runs later (once: a Pong, the 5 s timeout, the peer leaving, or shutdown with
 * err). -1 with err at once. */
int hwc_magic_ping(struct hwc_magic *m, const uint8_t node_key[32], hwc_magic_ping_cb cb, void *arg, char *err,
                   size_t errlen);

/* The path to a peer for `hwclient status` (upstream's PeerStatus.CurAddr/Relay/Addrs):
 * {"CurAddr": the trusted direct "ip:port" or "", "Relay": home region code, "Addrs":
 * [candidates], "Active": sent to / heard from in 45 s, "BestAddr"/"BestLatencyMs" when
 * one answered, disco ping/pong counters}.
 * NULL for a peer magicsock does not know. */
json_t *hwc_magic_peer_status(const struct hwc_magic *m, const uint8_t node_key[32]);

/* A fresh report on demand (`hwclient netcheck`); joins one under way. Its result also
 * updates the home region like a periodic one. -1 with err when there is no DERP map. */
int hwc_magic_netcheck(struct hwc_magic *m, hwc_nc_done_cb cb, void *arg, char *err, size_t errlen);
/* A standalone report on a given map (the CLI without a daemon): no home, no DERP. */
int hwc_magic_home(const struct hwc_magic *m);
uint16_t hwc_magic_port(const struct hwc_magic *m);
/* The DERP map as JSON (NULL when none), for printing reports. */
json_t *hwc_magic_derp_map_json(const struct hwc_magic *m);
/* When the home region's connection is down after a failure: a line for `hwclient
 * status`'s health list (false when all is well or it is still connecting). */
bool hwc_magic_home_problem(const struct hwc_magic *m, char *out, size_t len);
/* Home, UDP port, connections, routes, last report. */
json_t *hwc_magic_status(const struct hwc_magic *m);

/* NetInfo JSON for a report (exposed for tests): DERPLatency "<id>-v4"/"-v6" in
 * seconds, WorkingUDP/WorkingIPv6/OSHasIPv6, MappingVariesByDestIP when known. */
json_t *hwc_magic_netinfo(const struct hwc_nc_report *r, int preferred);
/* Upstream's NetInfo.BasicallyEqual: everything but DERPLatency. */
bool hwc_netinfo_basically_equal(const json_t *a, const json_t *b);

#endif
