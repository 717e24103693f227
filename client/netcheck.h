#ifndef HW_CLIENT_NETCHECK_H
#define HW_CLIENT_NETCHECK_H

/* netcheck as upstream's net/netcheck does it, minus port mapping and ICMP: STUN Binding
 * requests to every region's STUN nodes (PROTOCOL.md §9), a few per region spaced 100 ms
 * apart, the first answer per region and family counting; the public address from
 * XOR-MAPPED-ADDRESS; when no UDP answer came within 3 s, the latency of each region by
 * `GET /derp/latency-check` on its DERP port instead. The report then names the
 * preferred (home) region with upstream's stickiness: the best latency seen over the
 * last 5 minutes wins, but the current home stays unless the winner is at least 10 ms
 * and a third faster, and it stays while its connection was heard from recently.
 *
 * The caller owns the UDP sockets (magicsock's, so the mapping is the one peers would
 * use): it sends through io.send and hands every STUN-looking packet to
 * hwc_netcheck_receive. Every report is a full one (the maps of self-hosted tailnets are
 * small); at most HWC_NC_MAX_REGIONS regions are measured. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include <jansson.h>

#include "proto/stun.h"
#include "proto/tailcfg.h"

struct hw_loop;
struct hwc_netcheck;

#define HWC_NC_MAX_REGIONS 100
#define HWC_NC_TRIES 3
#define HWC_NC_RETRANSMIT_MS 100
#define HWC_NC_STUN_TIMEOUT_MS 3000
#define HWC_NC_REPORT_TIMEOUT_MS 5000
#define HWC_NC_HISTORY_MS (5 * 60 * 1000)
#define HWC_NC_STICKY_ABS_US 10000
/* A region heard from this recently (any DERP frame) counts as reachable for the
 * stickiness rule, and without any latency data the home stays while its connection was
 * heard from within twice the server's keep-alive interval. */
#define HWC_NC_FRAME_RECENT_MS 8000
#define HWC_NC_KEEPALIVE_RECENT_MS 120000

struct hwc_nc_latency {
    int region;
    int64_t v4_us, v6_us, https_us; /* 0: none */
};

struct hwc_nc_report {
    int64_t time_ms; /* unix ms when it finished */
    int64_t took_ms;
    bool udp, ipv4, ipv6, ipv4_can_send, ipv6_can_send, os_has_ipv6;
    int mapping_varies; /* -1 unknown, else 0/1 */
    int preferred_derp;
    struct hwc_nc_latency *lat;
    size_t n_lat;
    bool have_global_v4, have_global_v6;
    struct hw_stun_addr global_v4, global_v6;
    unsigned global_v4_count, global_v6_count; /* answers that named that address */
};

/* The region's best latency in the report (any method), 0 when none. */
int64_t hwc_nc_region_us(const struct hwc_nc_report *r, int region);
void hwc_nc_report_clear(struct hwc_nc_report *r);
/* Upstream's netcheck.Report JSON (durations in nanoseconds, opt.Bool as null/bool). */
json_t *hwc_nc_report_json(const struct hwc_nc_report *r);
/* `tailscale netcheck`'s text, from that JSON and the DERP map JSON it was made with. */
void hwc_nc_print(FILE *out, const json_t *report, const json_t *derp_map);
/* Go's time.Duration text for a latency rounded to 0.1 ms ("1.2ms"); sub-0.1 ms values
 * keep microseconds so loopback latencies do not print as "0s". */
void hwc_nc_format_latency(int64_t us, char *out, size_t len);

struct hwc_nc_io {
    /* Sends one datagram; -1 when there is no socket of that family. */
    int (*send)(void *arg, const struct sockaddr *to, socklen_t tolen, const uint8_t *pkt, size_t n);
    /* Monotonic ms of the last frame from the region's DERP connection, 0 when none. */
    int64_t (*last_derp_rx_ms)(void *arg, int region);
    void *arg;
};

struct hwc_nc_opts {
    bool plain_http;   /* the HTTP fallback speaks plain HTTP (TS_DEBUG_USE_DERP_HTTP) */
    bool have_v4, have_v6, os_has_v6;
};

/* err is NULL with a report; with an error the report is NULL. */
typedef void (*hwc_nc_done_cb)(const struct hwc_nc_report *r, const char *err, void *arg);

struct hwc_netcheck *hwc_netcheck_new(struct hw_loop *loop, const struct hwc_nc_io *io);
/* Calls every waiter with "stopping" and frees. */
void hwc_netcheck_free(struct hwc_netcheck *nc);
/* Starts a report on dm (copied), or joins the one under way. */
void hwc_netcheck_run(struct hwc_netcheck *nc, const struct tc_derp_map *dm, const struct hwc_nc_opts *o,
                      hwc_nc_done_cb cb, void *arg);
bool hwc_netcheck_running(const struct hwc_netcheck *nc);
/* True when the packet answered one of our probes (it is consumed then). */
bool hwc_netcheck_receive(struct hwc_netcheck *nc, const uint8_t *pkt, size_t len);
/* The last finished report, NULL before the first. */
const struct hwc_nc_report *hwc_netcheck_last(const struct hwc_netcheck *nc);
/* Upstream's debug knob (`tailscale debug force-prefer-derp`): the region wins whenever
 * it answered this report or its connection was heard from recently; 0 clears. */
void hwc_netcheck_force_preferred(struct hwc_netcheck *nc, int region);
int hwc_netcheck_forced(const struct hwc_netcheck *nc);
/* Forget the history (a new DERP map makes old samples meaningless). */
void hwc_netcheck_forget(struct hwc_netcheck *nc);

/* The home choice alone (pure, for tests). cur: this report's latency per region;
 * recent: every sample of the last 5 minutes, this report's included. scores:
 * DERPMap.HomeParams.RegionScore or NULL. */
struct hwc_nc_sample {
    int region;
    int64_t us;
};
int hwc_nc_pick_preferred(const struct hwc_nc_sample *cur, size_t n_cur, const struct hwc_nc_sample *recent,
                          size_t n_recent, int prev, bool prev_heard_recently, bool prev_heard_keepalive,
                          const json_t *scores);

#endif
