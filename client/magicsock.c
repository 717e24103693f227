#include "client/magicsock.h"
#include "client/tun.h"
#include "client/hostnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "client/derp.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/strmap.h"
#include "common/util.h"
#include "proto/derp.h"
#include "proto/disco.h"
#include "proto/keys.h"
#include "proto/stun.h"

/* Datagrams above this are not STUN (nor anything magicsock will take: WireGuard's
 * largest message fits). */
#define UDP_MAX 65536

struct region_conn {
    struct hwc_magic *m;
    int region;
    struct hwc_derp *d;        /* NULL while waiting to reconnect */
    struct hw_timer *retry;
    int backoff;
    int64_t last_write_ms;
    bool ever_up;
    char last_error[400];
    struct region_conn *next;
};

struct route {
    uint8_t key[32];
    int region;
    struct route *next, *prev;
};

struct peer;
struct cli_ping;

struct hwc_magic {
    struct hw_loop *loop;
    struct hwc_magic_opts opts;
    struct hwc_magic_callbacks cb;
    void *arg;
    int fd4, fd6;
    uint16_t port;
    bool have_v6_addr, os_has_v6;
    uint64_t udp_other;

    bool have_key;
    uint8_t priv[32];
    bool have_map;
    struct tc_derp_map dm;
    json_t *dm_json;           /* the map as JSON: the same map again changes nothing */
    bool control_up;
    int *peer_homes;
    size_t n_peer_homes;

    int home;
    struct region_conn *conns;
    size_t n_conns;
    struct hw_strmap routes;   /* hex key -> struct route */
    struct route *route_list;

    /* paths: disco key, our endpoints, peers */
    uint8_t disco_priv[32], disco_pub[32];
    uint8_t node_pub[32];
    char eps[HW_DISCO_MAX_ENDPOINTS][HW_DISCO_ADDR_TEXT];
    int ep_types[HW_DISCO_MAX_ENDPOINTS];
    size_t n_eps;
    char *ep_ifaces;
    bool never_direct;         /* TS_DEBUG_NEVER_DIRECT_UDP, upstream's knob */
    struct peer **peers;
    size_t n_peers;
    struct hwc_prefix *tunnel_routes; /* routed into our TUN device: never a path */
    size_t n_tunnel_routes;
    struct hw_strmap peers_by_node, peers_by_disco; /* hex key -> struct peer */
    struct cli_ping *cli_pings;
    uint64_t disco_rx, disco_tx, disco_unknown, disco_bad, wg_rx, udp_tx;

    struct hwc_netcheck *nc;
    bool periodic_pending;     /* our own report (not an API one) is waiting */
    struct hw_timer *restun, *clean;
};

static void conn_connect(struct region_conn *rc);
static void schedule_restun(struct hwc_magic *m, int64_t ms);
static void handle_disco(struct hwc_magic *m, const uint8_t *pkt, size_t len, const struct hw_disco_addr *src,
                         int region, const uint8_t *derp_src);
static bool looks_like_wireguard(const uint8_t *pkt, size_t len);
static void update_endpoints(struct hwc_magic *m);

/* ---- routes ---- */

static void key_hex(const uint8_t key[32], char hex[65]) { hw_hex_encode(key, 32, hex); }

static void route_remove(struct hwc_magic *m, struct route *r)
{
    char hex[65];
    key_hex(r->key, hex);
    hw_strmap_del(&m->routes, hex);
    if (r->prev)
        r->prev->next = r->next;
    else
        m->route_list = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r);
}

static void route_set(struct hwc_magic *m, const uint8_t key[32], int region)
{
    char hex[65];
    key_hex(key, hex);
    struct route *r = hw_strmap_get(&m->routes, hex);
    if (r) {
        r->region = region;
        return;
    }
    r = hw_calloc(1, sizeof *r);
    memcpy(r->key, key, 32);
    r->region = region;
    r->next = m->route_list;
    if (m->route_list)
        m->route_list->prev = r;
    m->route_list = r;
    hw_strmap_put(&m->routes, hex, r);
}

static void routes_drop_region(struct hwc_magic *m, int region)
{
    for (struct route *r = m->route_list, *next; r; r = next) {
        next = r->next;
        if (region == 0 || r->region == region)
            route_remove(m, r);
    }
}

/* ---- connections ---- */

static struct region_conn *conn_find(const struct hwc_magic *m, int region)
{
    for (struct region_conn *rc = m->conns; rc; rc = rc->next)
        if (rc->region == region)
            return rc;
    return NULL;
}

static void conn_remove(struct hwc_magic *m, struct region_conn *rc, const char *why)
{
    for (struct region_conn **p = &m->conns; *p; p = &(*p)->next) {
        if (*p == rc) {
            *p = rc->next;
            break;
        }
    }
    m->n_conns--;
    if (rc->d && why)
        log_info("derp-%d: closing the connection (%s)", rc->region, why);
    hwc_derp_free(rc->d);
    if (rc->retry)
        hw_timer_cancel(m->loop, rc->retry);
    routes_drop_region(m, rc->region);
    free(rc);
}

static void close_all(struct hwc_magic *m, const char *why)
{
    while (m->conns)
        conn_remove(m, m->conns, why);
}

static bool conn_wanted(struct hwc_magic *m, struct region_conn *rc)
{
    if (!m->have_key || !m->have_map || !tc_derp_map_region(&m->dm, rc->region))
        return false;
    return rc->region == m->home || hw_loop_now_ms(m->loop) - rc->last_write_ms < m->opts.idle_close_ms;
}

static void on_up(struct hwc_derp *d, void *arg)
{
    struct region_conn *rc = arg;
    rc->backoff = 0;
    rc->ever_up = true;
    rc->last_error[0] = '\0';
    json_t *st = hwc_derp_status(d);
    log_info("derp-%d: connected to node %s at %s%s%s", rc->region,
             json_string_value(json_object_get(st, "Node")), json_string_value(json_object_get(st, "Addr")),
             json_is_true(json_object_get(st, "TLS")) ? " (TLS)" : " (plain HTTP)",
             rc->region == rc->m->home ? ", home" : "");
    json_decref(st);
    /* One round trip right away: a cheap RTT for the status, and a connection that
     * cannot answer a Ping is not a connection. */
    hwc_derp_ping(d);
}

static void on_packet(struct hwc_derp *d, const uint8_t src[32], const uint8_t *data, size_t len, void *arg)
{
    struct region_conn *rc = arg;
    struct hwc_magic *m = rc->m;
    route_set(m, src, rc->region);
    if (hw_disco_is(data, len)) {
        handle_disco(m, data, len, NULL, rc->region, src);
    } else if (looks_like_wireguard(data, len)) {
        m->wg_rx++;
        if (m->cb.on_wg_packet)
            m->cb.on_wg_packet(data, len, m->arg);
    } else if (m->cb.on_derp_packet) {
        m->cb.on_derp_packet(src, rc->region, data, len, m->arg);
    }
}

static void on_peer_gone(struct hwc_derp *d, const uint8_t peer[32], uint8_t reason, void *arg)
{
    struct region_conn *rc = arg;
    struct hwc_magic *m = rc->m;
    char hex[65];
    key_hex(peer, hex);
    struct route *r = hw_strmap_get(&m->routes, hex);
    if (reason == HW_DERP_GONE_NOT_HERE) {
        char k[8];
        hw_derp_key_short(peer, k);
        log_info("derp-%d: the relay does not know peer %s: removing its route", rc->region, k);
    }
    if (r && r->region == rc->region)
        route_remove(m, r);
}

static void retry_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct region_conn *rc = arg;
    rc->retry = NULL;
    if (!conn_wanted(rc->m, rc)) {
        conn_remove(rc->m, rc, NULL);
        return;
    }
    conn_connect(rc);
}

static int64_t backoff_ms(struct region_conn *rc)
{
    int n = rc->backoff < 16 ? rc->backoff : 16;
    rc->backoff++;
    double ms = (double)HWC_MAGIC_BACKOFF_BASE_MS * (double)(1u << n);
    if (ms > HWC_MAGIC_BACKOFF_CAP_MS)
        ms = HWC_MAGIC_BACKOFF_CAP_MS;
    return (int64_t)(ms * (0.5 + randombytes_uniform(1000) / 1000.0));
}

static void on_done(struct hwc_derp *d, const char *why, void *arg)
{
    struct region_conn *rc = arg;
    struct hwc_magic *m = rc->m;
    uint32_t hint = hwc_derp_restart_hint_ms(d);
    snprintf(rc->last_error, sizeof rc->last_error, "%s", why ? why : "closed"); /* why lives in d */
    hwc_derp_free(d);
    rc->d = NULL;
    routes_drop_region(m, rc->region);
    if (!conn_wanted(m, rc)) {
        log_info("%s", rc->last_error);
        conn_remove(m, rc, NULL);
        return;
    }
    int64_t ms = hint ? (int64_t)hint : backoff_ms(rc);
    log_warn("%s; reconnecting in %.1fs", rc->last_error, (double)ms / 1000.0);
    rc->retry = hw_timer_start(m->loop, ms, retry_cb, rc);
    /* A broken connection may mean the network changed: measure again soon. */
    if (rc->region == m->home)
        schedule_restun(m, 1000);
}

static const struct hwc_derp_callbacks derp_callbacks = {
    .on_up = on_up,
    .on_packet = on_packet,
    .on_peer_gone = on_peer_gone,
    .on_done = on_done,
};

static void conn_connect(struct region_conn *rc)
{
    struct hwc_magic *m = rc->m;
    const struct tc_derp_region *reg = tc_derp_map_region(&m->dm, rc->region);
    struct hwc_derp_opts o = {
        .mode = HWC_DERP_RELAY,
        .plain_http = m->opts.plain_http,
        .preferred = rc->region == m->home,
        .node_priv = m->priv,
    };
    rc->d = hwc_derp_start(m->loop, reg, &o, &derp_callbacks, rc);
}

/* The connection to region, started when missing. NULL when the region is not in the
 * map or too many connections are open. */
static struct region_conn *conn_get(struct hwc_magic *m, int region)
{
    struct region_conn *rc = conn_find(m, region);
    if (rc)
        return rc;
    if (!tc_derp_map_region(&m->dm, region) || m->n_conns >= HWC_MAGIC_MAX_CONNS)
        return NULL;
    rc = hw_calloc(1, sizeof *rc);
    rc->m = m;
    rc->region = region;
    rc->last_write_ms = region == m->home ? 0 : hw_loop_now_ms(m->loop);
    rc->next = m->conns;
    m->conns = rc;
    m->n_conns++;
    conn_connect(rc);
    return rc;
}

static int64_t clean_interval(const struct hwc_magic *m)
{
    int64_t half = m->opts.idle_close_ms / 2;
    return half < HWC_MAGIC_CLEAN_INTERVAL_MS ? (half > 0 ? half : 1) : HWC_MAGIC_CLEAN_INTERVAL_MS;
}

static void clean_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_magic *m = arg;
    m->clean = hw_timer_start(loop, clean_interval(m), clean_cb, m);
    for (struct region_conn *rc = m->conns, *next; rc; rc = next) {
        next = rc->next;
        if (!conn_wanted(m, rc))
            conn_remove(m, rc, "idle, not the home region");
    }
}

/* ---- home region ---- */

static int pick_fallback(struct hwc_magic *m)
{
    if (m->home && tc_derp_map_region(&m->dm, m->home))
        return m->home;
    /* where most peers are */
    int best = 0;
    size_t best_n = 0;
    for (size_t i = 0; i < m->n_peer_homes; i++) {
        int r = m->peer_homes[i];
        if (!r || !tc_derp_map_region(&m->dm, r))
            continue;
        size_t n = 0;
        for (size_t j = 0; j < m->n_peer_homes; j++)
            n += m->peer_homes[j] == r;
        if (n > best_n || (n == best_n && r < best)) {
            best = r;
            best_n = n;
        }
    }
    if (best)
        return best;
    /* else one of the regions, fixed for this key so restarts land in the same place */
    size_t n = 0;
    for (size_t i = 0; i < m->dm.n_regions; i++)
        n += !m->dm.regions[i].no_measure_no_home && m->dm.regions[i].n_nodes > 0;
    if (n == 0)
        return 0;
    uint8_t pub[32];
    hw_key_public(m->priv, pub);
    size_t pick = ((size_t)pub[0] << 8 | pub[1]) % n;
    for (size_t i = 0; i < m->dm.n_regions; i++) {
        if (m->dm.regions[i].no_measure_no_home || m->dm.regions[i].n_nodes == 0)
            continue;
        if (pick-- == 0)
            return m->dm.regions[i].region_id;
    }
    return 0;
}

static void set_home(struct hwc_magic *m, int region)
{
    if (region == m->home)
        return;
    const struct tc_derp_region *reg = tc_derp_map_region(&m->dm, region);
    log_info("magicsock: home DERP region is now %d (%s)%s", region,
             reg && reg->region_code ? reg->region_code : "?", m->home ? "" : ", the first");
    int old = m->home;
    m->home = region;
    for (struct region_conn *rc = m->conns; rc; rc = rc->next) {
        if (rc->region == old)
            rc->last_write_ms = hw_loop_now_ms(m->loop); /* a minute's grace like any other */
        if (rc->d)
            hwc_derp_note_preferred(rc->d, rc->region == region);
    }
    if (m->have_key && region)
        conn_get(m, region);
}

json_t *hwc_magic_netinfo(const struct hwc_nc_report *r, int preferred)
{
    json_t *ni = json_object();
    if (r->mapping_varies >= 0)
        json_object_set_new(ni, "MappingVariesByDestIP", json_boolean(r->mapping_varies));
    json_object_set_new(ni, "WorkingIPv6", json_boolean(r->ipv6));
    json_object_set_new(ni, "OSHasIPv6", json_boolean(r->os_has_ipv6));
    json_object_set_new(ni, "WorkingUDP", json_boolean(r->udp));
    json_object_set_new(ni, "WorkingICMPv4", json_false());
    if (preferred)
        json_object_set_new(ni, "PreferredDERP", json_integer(preferred));
    json_t *lat = json_object();
    for (size_t i = 0; i < r->n_lat; i++) {
        char key[24];
        if (r->lat[i].v4_us) {
            snprintf(key, sizeof key, "%d-v4", r->lat[i].region);
            json_object_set_new(lat, key, json_real((double)r->lat[i].v4_us / 1e6));
        }
        if (r->lat[i].v6_us) {
            snprintf(key, sizeof key, "%d-v6", r->lat[i].region);
            json_object_set_new(lat, key, json_real((double)r->lat[i].v6_us / 1e6));
        }
    }
    if (json_object_size(lat))
        json_object_set_new(ni, "DERPLatency", lat);
    else
        json_decref(lat);
    return ni;
}

bool hwc_netinfo_basically_equal(const json_t *a, const json_t *b)
{
    if (!a || !b)
        return a == b;
    static const char *fields[] = {"MappingVariesByDestIP", "WorkingIPv6", "OSHasIPv6", "WorkingUDP",
                                   "WorkingICMPv4", "HavePortMap", "UPnP", "PMP", "PCP", "PreferredDERP",
                                   "LinkType", "FirewallMode"};
    for (size_t i = 0; i < HW_ARRAY_LEN(fields); i++) {
        const json_t *x = json_object_get(a, fields[i]), *y = json_object_get(b, fields[i]);
        if (!x != !y || (x && !json_equal((json_t *)x, (json_t *)y)))
            return false;
    }
    return true;
}

static void report_done(const struct hwc_nc_report *r, const char *err, void *arg)
{
    struct hwc_magic *m = arg;
    m->periodic_pending = false;
    schedule_restun(m, HWC_MAGIC_RESTUN_MS - 5000 + (int64_t)randombytes_uniform(10000));
    update_endpoints(m);
    if (!r || !m->have_map)
        return;
    int pref = r->preferred_derp;
    /* Upstream: without a control connection peers could not learn a new home, so the
     * old one stays (any home is still better than none). */
    if (!m->control_up && m->home && tc_derp_map_region(&m->dm, m->home))
        pref = m->home;
    if (!pref)
        pref = pick_fallback(m);
    char got[120] = "";
    int64_t us = hwc_nc_region_us(r, pref);
    if (us)
        hwc_nc_format_latency(us, got, sizeof got);
    if (pref != m->home)
        log_info("netcheck: udp=%s v4=%s region %d is nearest%s%s", r->udp ? "yes" : "no",
                 r->ipv4 ? "yes" : "no", pref, us ? " at " : "", got);
    set_home(m, pref);
    json_t *ni = hwc_magic_netinfo(r, m->home);
    m->cb.on_netinfo(ni, m->arg);
    json_decref(ni);
}

static int nc_send(void *arg, const struct sockaddr *to, socklen_t tolen, const uint8_t *pkt, size_t n)
{
    struct hwc_magic *m = arg;
    int fd = to->sa_family == AF_INET ? m->fd4 : m->fd6;
    if (fd < 0)
        return -1;
    return sendto(fd, pkt, n, MSG_DONTWAIT, to, tolen) < 0 ? -1 : 0;
}

static int64_t nc_last_rx(void *arg, int region)
{
    struct hwc_magic *m = arg;
    struct region_conn *rc = conn_find(m, region);
    return rc && rc->d ? hwc_derp_last_rx_ms(rc->d) : 0;
}

static void nc_opts(struct hwc_magic *m, struct hwc_nc_opts *o)
{
    o->plain_http = m->opts.plain_http;
    o->have_v4 = m->fd4 >= 0;
    o->have_v6 = m->fd6 >= 0 && m->have_v6_addr;
    o->os_has_v6 = m->os_has_v6;
}

static void restun_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_magic *m = arg;
    m->restun = NULL;
    if (!m->have_map || m->periodic_pending)
        return;
    struct hwc_nc_opts o;
    nc_opts(m, &o);
    m->periodic_pending = true;
    hwc_netcheck_run(m->nc, &m->dm, &o, report_done, m);
}

static void schedule_restun(struct hwc_magic *m, int64_t ms)
{
    if (m->restun)
        hw_timer_cancel(m->loop, m->restun);
    m->restun = hw_timer_start(m->loop, ms, restun_cb, m);
}

/* ---- paths: disco, candidates, the best direct endpoint (upstream's endpoint.go) ---- */

struct candidate {
    struct hw_disco_addr addr;
    int64_t last_ping_ms;     /* 0: never pinged */
    int64_t last_pong_ms;
    int64_t latency_us;       /* of the last Pong, 0 before one */
    int64_t last_got_ping_ms; /* from_ping: when a Ping last came from there */
    bool from_netmap, from_cmm, from_ping;
};

struct cli_ping {
    struct hwc_magic *m;
    struct peer *p;
    hwc_magic_ping_cb cb;
    void *arg;
    struct hw_timer *timer;
    struct cli_ping *next;
};

struct sent_ping {
    struct peer *p;
    uint8_t txid[HW_DISCO_TXID_LEN];
    bool via_derp;
    int region;
    struct hw_disco_addr to;
    int64_t at_us;
    struct hw_timer *timer;
    struct cli_ping *cli;      /* the `hwclient ping` it serves, if any */
    struct sent_ping *next;
};

struct peer {
    struct hwc_magic *m;
    uint8_t node_key[32], disco_key[32], shared[32];
    bool has_disco;
    int home_region;
    struct candidate cands[HWC_MAGIC_MAX_CANDIDATES];
    size_t n_cands;
    bool have_best;
    struct hw_disco_addr best;
    int64_t best_latency_us;
    int64_t trust_until_ms;
    int64_t last_send_ms, last_recv_ms, last_full_ping_ms;
    struct hw_timer *heartbeat;
    struct sent_ping *pings;
    uint64_t pings_sent, pongs_received, pings_answered;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static char *addr_text(const struct hw_disco_addr *a, char out[HW_DISCO_ADDR_TEXT])
{
    return hw_disco_addr_format(a, out);
}

static void peer_short(const struct peer *p, char out[8]) { hw_derp_key_short(p->node_key, out); }

static struct peer *peer_by_node(const struct hwc_magic *m, const uint8_t key[32])
{
    char hex[65];
    key_hex(key, hex);
    return hw_strmap_get(&m->peers_by_node, hex);
}

static struct candidate *cand_find(struct peer *p, const struct hw_disco_addr *a)
{
    for (size_t i = 0; i < p->n_cands; i++)
        if (hw_disco_addr_equal(&p->cands[i].addr, a))
            return &p->cands[i];
    return NULL;
}

/* Tailscale's own ranges (upstream's tsaddr.IsTailscaleIP): 100.64.0.0/10 and
 * fd7a:115c:a1e0::/48. Such an address is reached through the tunnel itself, so it is
 * never a path for the tunnel's packets, and never one of our endpoints. */
static bool is_tailnet_addr(const struct hw_disco_addr *a)
{
    if (hw_disco_addr_is_v4(a))
        return a->ip[12] == 100 && (a->ip[13] & 0xc0) == 64;
    static const uint8_t ula[6] = {0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0};
    return memcmp(a->ip, ula, sizeof ula) == 0;
}

/* An address inside a subnet route we send into our own TUN device (--accept-routes) is
 * reached through the tunnel itself, like the tailnet ranges above. */
static bool in_tunnel_routes(const struct hwc_magic *m, const struct hw_disco_addr *a)
{
    bool v4 = hw_disco_addr_is_v4(a);
    for (size_t i = 0; i < m->n_tunnel_routes; i++)
        if (hwc_prefix_contains(&m->tunnel_routes[i], v4 ? AF_INET : AF_INET6, v4 ? a->ip + 12 : a->ip))
            return true;
    return false;
}

static struct candidate *cand_add(struct peer *p, const struct hw_disco_addr *a)
{
    if (is_tailnet_addr(a) || in_tunnel_routes(p->m, a))
        return NULL;
    struct candidate *c = cand_find(p, a);
    if (c)
        return c;
    if (p->n_cands == HWC_MAGIC_MAX_CANDIDATES)
        return NULL;
    c = &p->cands[p->n_cands++];
    memset(c, 0, sizeof *c);
    c->addr = *a;
    return c;
}

static void cand_remove_unwanted(struct peer *p)
{
    size_t j = 0;
    for (size_t i = 0; i < p->n_cands; i++) {
        struct candidate *c = &p->cands[i];
        if (!c->from_netmap && !c->from_cmm && !c->from_ping) {
            if (p->have_best && hw_disco_addr_equal(&p->best, &c->addr)) {
                p->have_best = false;
                p->trust_until_ms = 0;
            }
            continue;
        }
        p->cands[j++] = *c;
    }
    p->n_cands = j;
}

static bool is_private_v4(const uint8_t ip[4])
{
    return ip[0] == 10 || (ip[0] == 172 && (ip[1] & 0xf0) == 16) || (ip[0] == 192 && ip[1] == 168);
}

/* Upstream's addrQuality points: latency advantage in percent, +50 loopback, +30
 * link-local, +20 private, +10 IPv6; under 1 point of difference keeps the old one. */
static int addr_bonus(const struct hw_disco_addr *a)
{
    int pts = 0;
    if (hw_disco_addr_is_v4(a)) {
        const uint8_t *v4 = a->ip + 12;
        if (v4[0] == 127)
            pts += 50;
        else if (v4[0] == 169 && v4[1] == 254)
            pts += 30;
        else if (is_private_v4(v4))
            pts += 20;
    } else {
        static const uint8_t loop6[16] = {[15] = 1};
        if (memcmp(a->ip, loop6, 16) == 0)
            pts += 50;
        else if (a->ip[0] == 0xfe && (a->ip[1] & 0xc0) == 0x80)
            pts += 30;
        else if ((a->ip[0] & 0xfe) == 0xfc)
            pts += 20;
        pts += 10;
    }
    return pts;
}

static bool better_addr(const struct hw_disco_addr *a, int64_t a_lat, const struct peer *p)
{
    if (!p->have_best)
        return true;
    if (hw_disco_addr_equal(a, &p->best))
        return false;
    int64_t b_lat = p->best_latency_us;
    int a_pts = 0, b_pts = 0;
    if (a_lat > b_lat && a_lat > 0)
        b_pts = (int)(100 - (b_lat * 100) / a_lat);
    else if (b_lat > 0)
        a_pts = (int)(100 - (a_lat * 100) / b_lat);
    a_pts += addr_bonus(a);
    b_pts += addr_bonus(&p->best);
    if (a_pts <= 1 && b_pts == 0)
        return false;
    return a_pts > b_pts;
}

static bool trusted(const struct peer *p, int64_t now)
{
    return p->have_best && now < p->trust_until_ms;
}

static int udp_send_to(struct hwc_magic *m, const struct hw_disco_addr *to, const uint8_t *pkt, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    hw_disco_addr_to_sockaddr(to, &ss, &sl);
    int fd = ss.ss_family == AF_INET ? m->fd4 : m->fd6;
    if (fd < 0)
        return -1;
    return sendto(fd, pkt, len, MSG_DONTWAIT, (struct sockaddr *)&ss, sl) < 0 ? -1 : 0;
}

/* One disco message to the peer: over UDP to `to`, or through DERP (region: where to
 * send when there is no route to the peer yet; 0 = its home). */
static int disco_send(struct hwc_magic *m, struct peer *p, bool via_derp, int region, const struct hw_disco_addr *to,
                      const struct hw_disco_msg *msg)
{
    uint8_t plain[HW_DISCO_MAX_PLAIN], pkt[HW_DISCO_MAX_PLAIN + HW_DISCO_OVERHEAD];
    long n = hw_disco_encode(msg, plain, sizeof plain);
    if (n < 0)
        return -1;
    long len = hw_disco_seal(pkt, sizeof pkt, m->disco_pub, p->shared, NULL, plain, (size_t)n);
    if (len < 0)
        return -1;
    m->disco_tx++;
    if (via_derp) {
        char err[300];
        if (hwc_magic_send_derp(m, p->node_key, region ? region : p->home_region, pkt, (size_t)len, err,
                                sizeof err) < 0) {
            char k[8];
            peer_short(p, k);
            log_debug("disco: to %s via DERP: %s", k, err);
            return -1;
        }
        return 0;
    }
    return udp_send_to(m, to, pkt, (size_t)len);
}

static void sent_ping_unlink(struct sent_ping *sp)
{
    for (struct sent_ping **pp = &sp->p->pings; *pp; pp = &(*pp)->next)
        if (*pp == sp) {
            *pp = sp->next;
            break;
        }
    if (sp->timer)
        hw_timer_cancel(sp->p->m->loop, sp->timer);
    free(sp);
}

static void cli_ping_finish(struct cli_ping *cp, const struct hwc_magic_ping_result *r, const char *err)
{
    struct hwc_magic *m = cp->m;
    for (struct cli_ping **pp = &m->cli_pings; *pp; pp = &(*pp)->next)
        if (*pp == cp) {
            *pp = cp->next;
            break;
        }
    if (cp->timer)
        hw_timer_cancel(m->loop, cp->timer);
    if (cp->p)
        for (struct sent_ping *sp = cp->p->pings; sp; sp = sp->next)
            if (sp->cli == cp)
                sp->cli = NULL;
    hwc_magic_ping_cb cb = cp->cb;
    void *arg = cp->arg;
    free(cp);
    cb(r, err, arg);
}

static void cli_ping_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct cli_ping *cp = arg;
    cp->timer = NULL;
    struct hwc_magic_ping_result r = {.timed_out = true};
    cli_ping_finish(cp, &r, NULL);
}

static void ping_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct sent_ping *sp = arg;
    sp->timer = NULL;
    sent_ping_unlink(sp);
}

static void start_ping(struct hwc_magic *m, struct peer *p, bool via_derp, const struct hw_disco_addr *to,
                       struct cli_ping *cli)
{
    struct sent_ping *sp = hw_calloc(1, sizeof *sp);
    sp->p = p;
    randombytes_buf(sp->txid, sizeof sp->txid);
    sp->via_derp = via_derp;
    sp->region = via_derp ? p->home_region : 0;
    if (to)
        sp->to = *to;
    sp->cli = cli;
    sp->at_us = now_us();
    if (!via_derp) {
        struct candidate *c = cand_find(p, to);
        if (c)
            c->last_ping_ms = hw_loop_now_ms(m->loop);
    }
    struct hw_disco_msg msg = {.type = HW_DISCO_PING, .has_node_key = m->have_key};
    memcpy(msg.txid, sp->txid, sizeof sp->txid);
    memcpy(msg.node_key, m->node_pub, 32);
    if (disco_send(m, p, via_derp, 0, to, &msg) < 0) {
        free(sp);
        return;
    }
    p->pings_sent++;
    sp->timer = hw_timer_start(m->loop, HWC_MAGIC_PING_TIMEOUT_MS, ping_timeout, sp);
    sp->next = p->pings;
    p->pings = sp;
}

static void send_call_me_maybe(struct hwc_magic *m, struct peer *p)
{
    struct hw_disco_msg msg = {.type = HW_DISCO_CALL_ME_MAYBE};
    for (size_t i = 0; i < m->n_eps && msg.n_endpoints < HW_DISCO_MAX_ENDPOINTS; i++)
        if (hw_disco_addr_parse(m->eps[i], &msg.endpoints[msg.n_endpoints]) == 0)
            msg.n_endpoints++;
    if (disco_send(m, p, true, 0, NULL, &msg) == 0) {
        char k[8];
        peer_short(p, k);
        log_debug("disco: call-me-maybe to %s with %zu endpoints", k, msg.n_endpoints);
    }
}

/* Upstream's sendDiscoPingsLocked: every candidate not pinged in the last 5 s (2.5 s
 * while no path is trusted), and a
 * CallMeMaybe through DERP so the peer pings back and both NATs open. */
static void send_pings(struct hwc_magic *m, struct peer *p, bool call_me_maybe)
{
    int64_t now = hw_loop_now_ms(m->loop);
    p->last_full_ping_ms = now;
    if (m->never_direct)
        return;
    /* upstream's shouldDeleteLocked: an address known only because the peer pinged
     * from it is forgotten once those pings stop for a session's length */
    for (size_t i = 0; i < p->n_cands; i++) {
        struct candidate *c = &p->cands[i];
        if (c->from_ping && now - c->last_got_ping_ms > HWC_MAGIC_SESSION_ACTIVE_MS)
            c->from_ping = false;
    }
    cand_remove_unwanted(p);
    bool sent_any = false;
    int64_t interval = p->have_best && now < p->trust_until_ms ? HWC_MAGIC_PING_INTERVAL_MS
                                                               : HWC_MAGIC_DISCOVERY_PING_INTERVAL_MS;
    for (size_t i = 0; i < p->n_cands; i++) {
        struct candidate *c = &p->cands[i];
        if (c->last_ping_ms && now - c->last_ping_ms < interval)
            continue;
        start_ping(m, p, false, &c->addr, NULL);
        sent_any = true;
    }
    if (sent_any && call_me_maybe && p->home_region)
        send_call_me_maybe(m, p);
}

static bool want_full_ping(const struct peer *p, int64_t now)
{
    if (!p->have_best || !p->last_full_ping_ms || now >= p->trust_until_ms)
        return true;
    if (p->best_latency_us <= HWC_MAGIC_GOOD_ENOUGH_US)
        return false;
    return now - p->last_full_ping_ms >= HWC_MAGIC_UPGRADE_MS;
}

static void heartbeat_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct peer *p = arg;
    struct hwc_magic *m = p->m;
    p->heartbeat = NULL;
    int64_t now = hw_loop_now_ms(loop);
    if (now - p->last_send_ms > HWC_MAGIC_SESSION_ACTIVE_MS) {
        char k[8];
        peer_short(p, k);
        log_debug("disco: ending heartbeats for idle session to %s", k);
        return;
    }
    if (p->have_best)
        start_ping(m, p, false, &p->best, NULL);
    if (want_full_ping(p, now))
        send_pings(m, p, true);
    p->heartbeat = hw_timer_start(loop, HWC_MAGIC_HEARTBEAT_MS, heartbeat_cb, p);
}

/* Something goes to the peer: keep its paths measured while it does. */
static void note_send(struct hwc_magic *m, struct peer *p)
{
    p->last_send_ms = hw_loop_now_ms(m->loop);
    if (p->has_disco && !p->heartbeat)
        p->heartbeat = hw_timer_start(m->loop, HWC_MAGIC_HEARTBEAT_MS, heartbeat_cb, p);
}

static void peer_free(struct hwc_magic *m, struct peer *p, const char *why)
{
    for (struct cli_ping *cp = m->cli_pings, *next; cp; cp = next) {
        next = cp->next;
        if (cp->p == p) {
            cp->p = NULL;
            cli_ping_finish(cp, NULL, why);
        }
    }
    while (p->pings)
        sent_ping_unlink(p->pings);
    if (p->heartbeat)
        hw_timer_cancel(m->loop, p->heartbeat);
    sodium_memzero(p->shared, sizeof p->shared);
    free(p);
}

static void peers_clear(struct hwc_magic *m, const char *why)
{
    for (size_t i = 0; i < m->n_peers; i++)
        peer_free(m, m->peers[i], why);
    m->n_peers = 0;
    hw_strmap_free(&m->peers_by_node);
    hw_strmap_free(&m->peers_by_disco);
    hw_strmap_init(&m->peers_by_node);
    hw_strmap_init(&m->peers_by_disco);
}

/* ---- disco receive ---- */

static void handle_ping(struct hwc_magic *m, struct peer *p, const struct hw_disco_msg *msg,
                        const struct hw_disco_addr *src, int region)
{
    struct hw_disco_addr from;
    if (src) {
        from = *src;
        /* upstream's addCandidateEndpoint: where a ping came from is worth a ping back */
        struct candidate *c = cand_add(p, src);
        if (c)
            c->last_got_ping_ms = hw_loop_now_ms(m->loop);
        if (c && !c->from_ping) {
            c->from_ping = true;
            char k[8], t[HW_DISCO_ADDR_TEXT];
            peer_short(p, k);
            log_debug("disco: %s pinged us from %s: a new candidate", k, addr_text(src, t));
        }
    } else {
        hw_disco_addr_parse(HWC_MAGIC_DERP_MAGIC_IP ":0", &from);
        from.port = (uint16_t)region;
    }
    struct hw_disco_msg pong = {.type = HW_DISCO_PONG, .src = from};
    memcpy(pong.txid, msg->txid, sizeof pong.txid);
    if (disco_send(m, p, !src, region, src, &pong) == 0)
        p->pings_answered++;
}

static void handle_pong(struct hwc_magic *m, struct peer *p, const struct hw_disco_msg *msg,
                        const struct hw_disco_addr *src, int region)
{
    struct sent_ping *sp = p->pings;
    while (sp && memcmp(sp->txid, msg->txid, sizeof sp->txid) != 0)
        sp = sp->next;
    if (!sp)
        return; /* not ours, or timed out */
    p->pongs_received++;
    int64_t lat = now_us() - sp->at_us;
    if (lat < 1)
        lat = 1;
    int64_t now = hw_loop_now_ms(m->loop);
    struct cli_ping *cli = sp->cli;
    bool direct = !sp->via_derp && src;
    struct hw_disco_addr to = sp->to;
    sent_ping_unlink(sp);
    if (direct) {
        struct candidate *c = cand_find(p, &to);
        if (c) {
            c->last_pong_ms = now;
            c->latency_us = lat;
            bool untrusted = now >= p->trust_until_ms;
            if (better_addr(&to, lat, p) || untrusted) {
                if (!p->have_best || !hw_disco_addr_equal(&p->best, &to)) {
                    char k[8], t[HW_DISCO_ADDR_TEXT];
                    peer_short(p, k);
                    log_info("magicsock: disco: node %s now using %s (%.2f ms)", k, addr_text(&to, t),
                             (double)lat / 1000.0);
                }
                p->have_best = true;
                p->best = to;
            }
            if (hw_disco_addr_equal(&p->best, &to)) {
                p->best_latency_us = lat;
                p->trust_until_ms = now + HWC_MAGIC_TRUST_UDP_MS;
            }
        }
    }
    if (cli) {
        struct hwc_magic_ping_result r = {.latency_us = lat};
        if (direct)
            addr_text(&to, r.endpoint);
        else
            r.derp_region = region ? region : p->home_region;
        cli_ping_finish(cli, &r, NULL);
    }
}

static void handle_call_me_maybe(struct hwc_magic *m, struct peer *p, const struct hw_disco_msg *msg)
{
    for (size_t i = 0; i < p->n_cands; i++)
        p->cands[i].from_cmm = false;
    size_t added = 0;
    for (size_t i = 0; i < msg->n_endpoints; i++) {
        const struct hw_disco_addr *a = &msg->endpoints[i];
        /* upstream ignores IPv6 link-local ones (they need a zone) */
        if (!hw_disco_addr_is_v4(a) && a->ip[0] == 0xfe && (a->ip[1] & 0xc0) == 0x80)
            continue;
        bool had = cand_find(p, a) != NULL;
        struct candidate *c = cand_add(p, a);
        if (c) {
            c->from_cmm = true;
            added += !had;
        }
    }
    cand_remove_unwanted(p);
    char k[8];
    peer_short(p, k);
    log_debug("disco: call-me-maybe from %s: %zu endpoints, %zu new", k, msg->n_endpoints, added);
    for (size_t i = 0; i < p->n_cands; i++)
        p->cands[i].last_ping_ms = 0;
    send_pings(m, p, false);
}

/* A disco packet from UDP (src set) or DERP (src NULL, region and the DERP sender). */
static void handle_disco(struct hwc_magic *m, const uint8_t *pkt, size_t len, const struct hw_disco_addr *src,
                         int region, const uint8_t *derp_src)
{
    char hex[65];
    key_hex(hw_disco_sender(pkt), hex);
    if (src && m->never_direct)
        return;
    struct peer *p = hw_strmap_get(&m->peers_by_disco, hex);
    if (!p) {
        m->disco_unknown++; /* not a peer of ours (or an old disco key after its restart) */
        return;
    }
    if (derp_src && memcmp(derp_src, p->node_key, 32) != 0) {
        m->disco_bad++; /* a disco key relayed by another node than its own */
        return;
    }
    uint8_t plain[HW_DISCO_MAX_PLAIN + 1600];
    long n = hw_disco_open(pkt, len, p->shared, plain, sizeof plain);
    if (n < 0) {
        m->disco_bad++;
        return;
    }
    struct hw_disco_msg msg;
    char err[200];
    int rc = hw_disco_decode(plain, (size_t)n, &msg, err, sizeof err);
    if (rc != 0) {
        if (rc < 0) {
            char k[8];
            peer_short(p, k);
            log_debug("disco: from %s: %s", k, err);
        }
        m->disco_bad += rc < 0;
        return;
    }
    m->disco_rx++;
    p->last_recv_ms = hw_loop_now_ms(m->loop);
    switch (msg.type) {
    case HW_DISCO_PING:
        if (msg.has_node_key && memcmp(msg.node_key, p->node_key, 32) != 0) {
            m->disco_bad++;
            return;
        }
        handle_ping(m, p, &msg, src, region);
        break;
    case HW_DISCO_PONG:
        handle_pong(m, p, &msg, src, region);
        break;
    case HW_DISCO_CALL_ME_MAYBE:
        if (src)
            return; /* upstream: only through DERP */
        handle_call_me_maybe(m, p, &msg);
        break;
    }
}

static bool looks_like_wireguard(const uint8_t *pkt, size_t len)
{
    return len >= 4 && pkt[0] >= 1 && pkt[0] <= 4 && pkt[1] == 0 && pkt[2] == 0 && pkt[3] == 0;
}

/* ---- our endpoints ---- */

static bool iface_wanted(const struct hwc_magic *m, const char *name)
{
    if (!m->ep_ifaces)
        return true;
    size_t nl = strlen(name);
    for (const char *s = m->ep_ifaces; *s;) {
        size_t l = strcspn(s, ",");
        if (l == nl && strncmp(s, name, l) == 0)
            return true;
        s += l + (s[l] == ',');
    }
    return false;
}

static void eps_add(char eps[][HW_DISCO_ADDR_TEXT], int *types, size_t *n, const struct hw_disco_addr *a, int type)
{
    char t[HW_DISCO_ADDR_TEXT];
    addr_text(a, t);
    for (size_t i = 0; i < *n; i++)
        if (strcmp(eps[i], t) == 0)
            return;
    if (*n == HW_DISCO_MAX_ENDPOINTS)
        return;
    memcpy(eps[*n], t, HW_DISCO_ADDR_TEXT);
    types[(*n)++] = type;
}

/* Upstream's determineEndpoints, minus port mapping: the STUN-mapped addresses of the
 * last report first (type 2), then every local address with our port (type 1). */
static void update_endpoints(struct hwc_magic *m)
{
    char eps[HW_DISCO_MAX_ENDPOINTS][HW_DISCO_ADDR_TEXT];
    int types[HW_DISCO_MAX_ENDPOINTS];
    size_t n = 0;
    const struct hwc_nc_report *r = hwc_netcheck_last(m->nc);
    struct hw_disco_addr a;
    if (r && r->have_global_v4) {
        memset(&a, 0, sizeof a);
        a.ip[10] = a.ip[11] = 0xff;
        memcpy(a.ip + 12, r->global_v4.ip, 4);
        a.port = r->global_v4.port;
        eps_add(eps, types, &n, &a, 2);
    }
    if (r && r->have_global_v6 && m->fd6 >= 0) {
        memset(&a, 0, sizeof a);
        memcpy(a.ip, r->global_v6.ip, 16);
        a.port = r->global_v6.port;
        eps_add(eps, types, &n, &a, 2);
    }
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) == 0) {
        /* loopback addresses only when nothing else is there, as upstream */
        for (int pass = 0; pass < 2; pass++) {
            bool found = false;
            for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
                if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || !iface_wanted(m, i->ifa_name))
                    continue;
                int fam = i->ifa_addr->sa_family;
                if (fam != AF_INET && !(fam == AF_INET6 && m->fd6 >= 0))
                    continue;
                hw_disco_addr_from_sockaddr(i->ifa_addr, &a);
                const struct in6_addr *a6 = (const struct in6_addr *)a.ip;
                bool v4 = hw_disco_addr_is_v4(&a);
                if (!v4 && (IN6_IS_ADDR_LINKLOCAL(a6) || IN6_IS_ADDR_V4MAPPED(a6)))
                    continue;
                if (is_tailnet_addr(&a))
                    continue; /* our own TUN device's addresses */
                bool loop = v4 ? a.ip[12] == 127 : IN6_IS_ADDR_LOOPBACK(a6);
                if (loop != (pass == 1))
                    continue;
                a.port = m->port;
                eps_add(eps, types, &n, &a, 1);
                found = true;
            }
            if (found)
                break;
        }
        freeifaddrs(ifs);
    }
    bool same = n == m->n_eps;
    for (size_t i = 0; same && i < n; i++)
        same = strcmp(eps[i], m->eps[i]) == 0 && types[i] == m->ep_types[i];
    if (same)
        return;
    for (size_t i = 0; i < n; i++) {
        memcpy(m->eps[i], eps[i], HW_DISCO_ADDR_TEXT);
        m->ep_types[i] = types[i];
    }
    m->n_eps = n;
    char line[HW_DISCO_MAX_ENDPOINTS * (HW_DISCO_ADDR_TEXT + 8)] = "";
    size_t off = 0;
    for (size_t i = 0; i < n && off < sizeof line; i++)
        off += (size_t)snprintf(line + off, sizeof line - off, "%s%s (%s)", i ? ", " : "", eps[i],
                                types[i] == 2 ? "stun" : "local");
    log_info("magicsock: endpoints: %s", n ? line : "none");
    if (m->cb.on_endpoints) {
        const char *ptrs[HW_DISCO_MAX_ENDPOINTS];
        for (size_t i = 0; i < n; i++)
            ptrs[i] = m->eps[i];
        m->cb.on_endpoints(ptrs, m->ep_types, n, m->arg);
    }
}

/* ---- paths: public ---- */

void hwc_magic_disco_public(const struct hwc_magic *m, uint8_t out[32]) { memcpy(out, m->disco_pub, 32); }

static void peer_set_netmap_endpoints(struct peer *p, const struct hwc_magic_peer *src)
{
    for (size_t i = 0; i < p->n_cands; i++)
        p->cands[i].from_netmap = false;
    for (size_t i = 0; i < src->n_endpoints; i++) {
        struct hw_disco_addr a;
        if (hw_disco_addr_parse(src->endpoints[i], &a) < 0)
            continue; /* tailcfg validated them; a hostname here would be a server bug */
        if (!hw_disco_addr_is_v4(&a) && p->m->fd6 < 0)
            continue;
        struct candidate *c = cand_add(p, &a);
        if (c)
            c->from_netmap = true;
    }
    cand_remove_unwanted(p);
}

void hwc_magic_set_peers(struct hwc_magic *m, const struct hwc_magic_peer *peers, size_t n)
{
    struct peer **list = hw_calloc(n ? n : 1, sizeof *list);
    struct hw_strmap by_node, by_disco;
    hw_strmap_init(&by_node);
    hw_strmap_init(&by_disco);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        const struct hwc_magic_peer *src = &peers[i];
        char hex[65];
        key_hex(src->node_key, hex);
        if (hw_strmap_get(&by_node, hex))
            continue; /* the same key twice: the first wins */
        struct peer *p = hw_strmap_get(&m->peers_by_node, hex);
        if (p && memcmp(p->disco_key, src->disco_key, 32) == 0) {
            hw_strmap_del(&m->peers_by_node, hex); /* taken over */
        } else {
            p = hw_calloc(1, sizeof *p);
            p->m = m;
            memcpy(p->node_key, src->node_key, 32);
            memcpy(p->disco_key, src->disco_key, 32);
            p->has_disco = !hw_key_is_zero(src->disco_key) &&
                           hw_box_shared(p->shared, p->disco_key, m->disco_priv) == 0;
        }
        p->home_region = src->home_region;
        peer_set_netmap_endpoints(p, src);
        list[kept++] = p;
        hw_strmap_put(&by_node, hex, p);
        if (p->has_disco) {
            key_hex(p->disco_key, hex);
            if (!hw_strmap_get(&by_disco, hex))
                hw_strmap_put(&by_disco, hex, p);
        }
    }
    /* what is left in the old index left the netmap (or changed its disco key) */
    for (size_t i = 0; i < m->n_peers; i++) {
        char hex[65];
        key_hex(m->peers[i]->node_key, hex);
        if (hw_strmap_get(&m->peers_by_node, hex) == m->peers[i])
            peer_free(m, m->peers[i], "the peer left the network map (or changed its disco key)");
    }
    free(m->peers);
    hw_strmap_free(&m->peers_by_node);
    hw_strmap_free(&m->peers_by_disco);
    m->peers = list;
    m->n_peers = kept;
    m->peers_by_node = by_node;
    m->peers_by_disco = by_disco;
}

int hwc_magic_send(struct hwc_magic *m, const uint8_t dst_node_key[32], const uint8_t *pkt, size_t len, char *err,
                   size_t errlen)
{
    struct peer *p = peer_by_node(m, dst_node_key);
    if (!p) {
        snprintf(err, errlen, "not a peer in the network map");
        return -1;
    }
    note_send(m, p);
    int64_t now = hw_loop_now_ms(m->loop);
    if (trusted(p, now) && udp_send_to(m, &p->best, pkt, len) == 0) {
        m->udp_tx++;
        return 0;
    }
    if (p->has_disco && want_full_ping(p, now))
        send_pings(m, p, true);
    /* An untrusted best path gets the packet too (upstream sends both ways then). */
    if (p->have_best && udp_send_to(m, &p->best, pkt, len) == 0)
        m->udp_tx++;
    return hwc_magic_send_derp(m, dst_node_key, p->home_region, pkt, len, err, errlen);
}

int hwc_magic_ping(struct hwc_magic *m, const uint8_t node_key[32], hwc_magic_ping_cb cb, void *arg, char *err,
                   size_t errlen)
{
    struct peer *p = peer_by_node(m, node_key);
    if (!p) {
        snprintf(err, errlen, "not a peer in the network map");
        return -1;
    }
    if (!p->has_disco) {
        snprintf(err, errlen, "the peer has no disco key in the network map (it cannot answer disco pings)");
        return -1;
    }
    if (!m->have_key) {
        snprintf(err, errlen, "no usable node key (logged out, or the key expired)");
        return -1;
    }
    struct cli_ping *cp = hw_calloc(1, sizeof *cp);
    cp->m = m;
    cp->p = p;
    cp->cb = cb;
    cp->arg = arg;
    cp->timer = hw_timer_start(m->loop, HWC_MAGIC_PING_TIMEOUT_MS, cli_ping_timeout, cp);
    cp->next = m->cli_pings;
    m->cli_pings = cp;
    note_send(m, p);
    int64_t now = hw_loop_now_ms(m->loop);
    if (trusted(p, now)) {
        start_ping(m, p, false, &p->best, cp);
        return 0;
    }
    /* No trusted path: DERP and every candidate at once, the first Pong answers; and
     * the peer hears where to ping us back (without WireGuard traffic nothing else
     * would start discovery). */
    start_ping(m, p, true, NULL, cp);
    for (size_t i = 0; i < p->n_cands && !m->never_direct; i++)
        start_ping(m, p, false, &p->cands[i].addr, cp);
    p->last_full_ping_ms = now;
    if (p->home_region && p->n_cands && !m->never_direct)
        send_call_me_maybe(m, p);
    return 0;
}

json_t *hwc_magic_peer_status(const struct hwc_magic *m, const uint8_t node_key[32])
{
    struct peer *p = peer_by_node(m, node_key);
    if (!p)
        return NULL;
    int64_t now = hw_loop_now_ms(m->loop);
    json_t *o = json_object();
    char t[HW_DISCO_ADDR_TEXT];
    json_object_set_new(o, "CurAddr", json_string(trusted(p, now) ? addr_text(&p->best, t) : ""));
    const struct tc_derp_region *reg = m->have_map ? tc_derp_map_region(&m->dm, p->home_region) : NULL;
    json_object_set_new(o, "Relay", json_string(reg && reg->region_code ? reg->region_code : ""));
    json_t *addrs = json_array();
    for (size_t i = 0; i < p->n_cands; i++)
        json_array_append_new(addrs, json_string(addr_text(&p->cands[i].addr, t)));
    json_object_set_new(o, "Addrs", addrs);
    int64_t last = p->last_send_ms > p->last_recv_ms ? p->last_send_ms : p->last_recv_ms;
    json_object_set_new(o, "Active", json_boolean(last && now - last < HWC_MAGIC_SESSION_ACTIVE_MS));
    if (p->have_best) {
        json_object_set_new(o, "BestAddr", json_string(addr_text(&p->best, t)));
        json_object_set_new(o, "BestLatencyMs", json_real((double)p->best_latency_us / 1000.0));
    }
    json_object_set_new(o, "DiscoPingsSent", json_integer((json_int_t)p->pings_sent));
    json_object_set_new(o, "DiscoPongsReceived", json_integer((json_int_t)p->pongs_received));
    json_object_set_new(o, "DiscoPingsAnswered", json_integer((json_int_t)p->pings_answered));
    return o;
}

/* ---- UDP ---- */

static void udp_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_magic *m = arg;
    uint8_t buf[UDP_MAX];
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
        if (n < 0)
            return;
        /* magicsock's test for STUN: RFC 5389 header, and a Binding response type */
        if (n >= HW_STUN_HEADER_LEN && hw_stun_is(buf, (size_t)n) && buf[1] == 0x01 &&
            hwc_netcheck_receive(m->nc, buf, (size_t)n))
            continue;
        if (hw_disco_is(buf, (size_t)n)) {
            struct hw_disco_addr src;
            hw_disco_addr_from_sockaddr((struct sockaddr *)&ss, &src);
            /* a v4 peer reaching our IPv6 socket arrives v4-mapped: the same address */
            handle_disco(m, buf, (size_t)n, &src, 0, NULL);
        } else if (looks_like_wireguard(buf, (size_t)n)) {
            m->wg_rx++;
            if (m->cb.on_wg_packet)
                m->cb.on_wg_packet(buf, (size_t)n, m->arg);
        } else {
            m->udp_other++;
        }
    }
}

static int bind_udp(int family, int port, char *err, size_t errlen)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "UDP socket: %s", strerror(errno));
        return -1;
    }
    hwc_bypass_mark(fd);
    int rc;
    if (family == AF_INET) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        int one = 1;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
        rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc < 0) {
        snprintf(err, errlen, "UDP port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static uint16_t local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return 0;
    return ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                   : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Upstream probes IPv6 only with a global unicast address on some interface. */
static bool have_global_v6(void)
{
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) < 0)
        return false;
    bool found = false;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET6)
            continue;
        const struct in6_addr *a = &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
        found = !IN6_IS_ADDR_LOOPBACK(a) && !IN6_IS_ADDR_LINKLOCAL(a) && !IN6_IS_ADDR_V4MAPPED(a) &&
                (a->s6_addr[0] & 0xe0) == 0x20;
    }
    freeifaddrs(ifs);
    return found;
}

static bool os_has_v6(void)
{
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* ---- public ---- */

struct hwc_magic *hwc_magic_new(struct hw_loop *loop, const struct hwc_magic_opts *o,
                                const struct hwc_magic_callbacks *cb, void *arg, char *err, size_t errlen)
{
    int port = o->port;
    int fd4 = bind_udp(AF_INET, port, err, errlen);
    if (fd4 < 0 && port != 0 && o->port_fallback) {
        log_info("magicsock: UDP port %d is taken (%s): using any free port", port, err);
        port = 0;
        fd4 = bind_udp(AF_INET, 0, err, errlen);
    }
    if (fd4 < 0) {
        snprintf(err + strlen(err), errlen - strlen(err), ": choose another with --port");
        return NULL;
    }
    struct hwc_magic *m = hw_calloc(1, sizeof *m);
    m->loop = loop;
    m->opts = *o;
    if (m->opts.idle_close_ms <= 0)
        m->opts.idle_close_ms = HWC_MAGIC_IDLE_CLOSE_MS;
    m->cb = *cb;
    m->arg = arg;
    m->fd4 = fd4;
    m->port = local_port(fd4);
    char e6[200];
    m->fd6 = bind_udp(AF_INET6, m->port, e6, sizeof e6);
    m->os_has_v6 = os_has_v6();
    m->have_v6_addr = have_global_v6();
    hw_strmap_init(&m->routes);
    hw_strmap_init(&m->peers_by_node);
    hw_strmap_init(&m->peers_by_disco);
    /* a new disco key every run, as upstream: peers learn it from the control server */
    hw_key_generate(m->disco_priv);
    hw_key_public(m->disco_priv, m->disco_pub);
    hw_loop_add(loop, m->fd4, HW_EV_READ, udp_event, m);
    if (m->fd6 >= 0)
        hw_loop_add(loop, m->fd6, HW_EV_READ, udp_event, m);
    struct hwc_nc_io io = {.send = nc_send, .last_derp_rx_ms = nc_last_rx, .arg = m};
    m->nc = hwc_netcheck_new(loop, &io);
    m->clean = hw_timer_start(loop, clean_interval(m), clean_cb, m);
    log_info("magicsock: UDP port %u (IPv4%s)", m->port, m->fd6 >= 0 ? " and IPv6" : "");
    const char *only = getenv("HWCLIENT_ENDPOINT_INTERFACES");
    m->ep_ifaces = only && *only ? hw_strdup(only) : NULL;
    if (m->ep_ifaces)
        log_info("magicsock: local endpoints only from interfaces %s (HWCLIENT_ENDPOINT_INTERFACES)", m->ep_ifaces);
    const char *nd = getenv("TS_DEBUG_NEVER_DIRECT_UDP");
    m->never_direct = nd && (strcmp(nd, "1") == 0 || strcmp(nd, "true") == 0);
    if (m->never_direct)
        log_info("magicsock: no direct UDP paths (TS_DEBUG_NEVER_DIRECT_UDP): everything goes through DERP");
    update_endpoints(m);
    return m;
}

void hwc_magic_free(struct hwc_magic *m)
{
    if (!m)
        return;
    peers_clear(m, "magicsock is stopping");
    free(m->peers);
    free(m->tunnel_routes);
    hw_strmap_free(&m->peers_by_node);
    hw_strmap_free(&m->peers_by_disco);
    free(m->ep_ifaces);
    sodium_memzero(m->disco_priv, sizeof m->disco_priv);
    hwc_netcheck_free(m->nc);
    close_all(m, NULL);
    routes_drop_region(m, 0);
    hw_strmap_free(&m->routes);
    if (m->restun)
        hw_timer_cancel(m->loop, m->restun);
    if (m->clean)
        hw_timer_cancel(m->loop, m->clean);
    hw_loop_remove(m->loop, m->fd4);
    close(m->fd4);
    if (m->fd6 >= 0) {
        hw_loop_remove(m->loop, m->fd6);
        close(m->fd6);
    }
    if (m->have_map)
        tc_derp_map_clear(&m->dm);
    json_decref(m->dm_json);
    free(m->peer_homes);
    sodium_memzero(m->priv, sizeof m->priv);
    free(m);
}

void hwc_magic_set_private_key(struct hwc_magic *m, const uint8_t priv[32])
{
    if (!priv) {
        if (m->have_key) {
            close_all(m, "no usable node key");
            m->have_key = false;
            sodium_memzero(m->priv, sizeof m->priv);
        }
        return;
    }
    if (m->have_key && memcmp(m->priv, priv, 32) == 0)
        return;
    if (m->have_key)
        close_all(m, "the node key changed");
    memcpy(m->priv, priv, 32);
    hw_key_public(priv, m->node_pub);
    m->have_key = true;
    if (m->home && m->have_map)
        conn_get(m, m->home);
}

void hwc_magic_set_derp_map(struct hwc_magic *m, const struct tc_derp_map *dm)
{
    if (!dm) {
        if (m->have_map) {
            close_all(m, "no DERP map");
            tc_derp_map_clear(&m->dm);
            m->have_map = false;
            json_decref(m->dm_json);
            m->dm_json = NULL;
            m->home = 0;
        }
        return;
    }
    json_t *j = tc_derp_map_to_json(dm);
    if (m->dm_json && json_equal(m->dm_json, j)) {
        json_decref(j);
        return;
    }
    struct tc_derp_map copy;
    char err[200];
    if (tc_derp_map_parse(j, &copy, err, sizeof err) < 0) {
        log_error("magicsock: the DERP map does not round-trip (%s): keeping the previous one", err);
        json_decref(j);
        return;
    }
    /* As upstream: a connection survives a new map when its region is defined exactly
     * as before; one whose region left or changed starts over. */
    for (struct region_conn *rc = m->conns, *next; rc; rc = next) {
        next = rc->next;
        char key[16];
        snprintf(key, sizeof key, "%d", rc->region);
        json_t *before = m->dm_json ? json_object_get(json_object_get(m->dm_json, "Regions"), key) : NULL;
        json_t *after = json_object_get(json_object_get(j, "Regions"), key);
        if (!before || !after || !json_equal(before, after))
            conn_remove(m, rc, after ? "its region was redefined" : "its region left the DERP map");
    }
    if (m->have_map)
        tc_derp_map_clear(&m->dm);
    json_decref(m->dm_json);
    m->dm_json = j;
    m->dm = copy;
    m->have_map = true;
    if (m->home && !tc_derp_map_region(&m->dm, m->home))
        m->home = 0;
    if (m->dm.n_regions == 0) {
        /* headwater sends an empty map when no relay is configured: nothing to measure */
        log_info("magicsock: the DERP map has no regions: no relays to use");
        return;
    }
    log_info("magicsock: DERP map with %zu regions: measuring", m->dm.n_regions);
    if (m->home && m->have_key)
        conn_get(m, m->home);
    hwc_netcheck_forget(m->nc);
    schedule_restun(m, 0);
}

void hwc_magic_set_control_connected(struct hwc_magic *m, bool up) { m->control_up = up; }

void hwc_magic_force_prefer_derp(struct hwc_magic *m, int region)
{
    log_info("magicsock: [debug] force preferred DERP set to: %d", region);
    hwc_netcheck_force_preferred(m->nc, region);
    if (m->have_map && !m->periodic_pending)
        schedule_restun(m, 0);
}

void hwc_magic_set_tunnel_routes(struct hwc_magic *m, const struct hwc_prefix *p, size_t n)
{
    free(m->tunnel_routes);
    m->tunnel_routes = NULL;
    m->n_tunnel_routes = 0;
    if (n) {
        m->tunnel_routes = calloc(n, sizeof *p);
        if (!m->tunnel_routes)
            abort();
    }
    for (size_t i = 0; i < n; i++)
        if (p[i].bits > 0) /* a default route leaves our marked socket alone (exit node) */
            m->tunnel_routes[m->n_tunnel_routes++] = p[i];
    for (size_t i = 0; i < m->n_peers; i++) {
        struct peer *pe = m->peers[i];
        size_t keep = 0;
        for (size_t k = 0; k < pe->n_cands; k++)
            if (!in_tunnel_routes(m, &pe->cands[k].addr))
                pe->cands[keep++] = pe->cands[k];
        pe->n_cands = keep;
        if (pe->have_best && in_tunnel_routes(m, &pe->best)) {
            pe->have_best = false;
            pe->trust_until_ms = 0;
        }
    }
}

void hwc_magic_set_peer_homes(struct hwc_magic *m, const int *homes, size_t n)
{
    free(m->peer_homes);
    m->peer_homes = hw_calloc(n ? n : 1, sizeof *homes);
    memcpy(m->peer_homes, homes, n * sizeof *homes);
    m->n_peer_homes = n;
}

int hwc_magic_send_derp(struct hwc_magic *m, const uint8_t dst[32], int peer_home, const uint8_t *data,
                        size_t len, char *err, size_t errlen)
{
    if (!m->have_key) {
        snprintf(err, errlen, "no usable node key (logged out, or the key expired)");
        return -1;
    }
    if (!m->have_map) {
        snprintf(err, errlen, "no DERP map from the control server yet");
        return -1;
    }
    char hex[65];
    key_hex(dst, hex);
    const struct route *r = hw_strmap_get(&m->routes, hex);
    int region = peer_home;
    if (r) {
        const struct region_conn *rc = conn_find(m, r->region);
        if (rc && rc->d && hwc_derp_is_up(rc->d))
            region = r->region;
    }
    if (!region) {
        snprintf(err, errlen, "the peer has no home DERP region (it has not reported one to the control server)");
        return -1;
    }
    struct region_conn *rc = conn_get(m, region);
    if (!rc) {
        if (!tc_derp_map_region(&m->dm, region))
            snprintf(err, errlen, "the peer's home region %d is not in the DERP map", region);
        else
            snprintf(err, errlen, "already %d DERP connections open", HWC_MAGIC_MAX_CONNS);
        return -1;
    }
    rc->last_write_ms = hw_loop_now_ms(m->loop);
    if (!rc->d) {
        snprintf(err, errlen, "region %d is not connected (%s)", region, rc->last_error);
        return -1;
    }
    if (hwc_derp_send(rc->d, dst, data, len) < 0) {
        snprintf(err, errlen, "region %d dropped the packet (queue full or connection closing)", region);
        return -1;
    }
    return 0;
}

int hwc_magic_netcheck(struct hwc_magic *m, hwc_nc_done_cb cb, void *arg, char *err, size_t errlen)
{
    if (!m->have_map) {
        snprintf(err, errlen, "no DERP map yet: the control server sends one with the first network map");
        return -1;
    }
    struct hwc_nc_opts o;
    nc_opts(m, &o);
    /* Our own handler goes first, so the home region is settled when the caller hears. */
    if (!m->periodic_pending) {
        m->periodic_pending = true;
        if (m->restun) {
            hw_timer_cancel(m->loop, m->restun);
            m->restun = NULL;
        }
        hwc_netcheck_run(m->nc, &m->dm, &o, report_done, m);
    }
    hwc_netcheck_run(m->nc, &m->dm, &o, cb, arg);
    return 0;
}

int hwc_magic_home(const struct hwc_magic *m) { return m->home; }
uint16_t hwc_magic_port(const struct hwc_magic *m) { return m->port; }

json_t *hwc_magic_derp_map_json(const struct hwc_magic *m)
{
    return m->have_map ? tc_derp_map_to_json(&m->dm) : NULL;
}

bool hwc_magic_home_problem(const struct hwc_magic *m, char *out, size_t len)
{
    if (!m->have_key || !m->home)
        return false;
    const struct region_conn *rc = conn_find(m, m->home);
    if (!rc || (rc->d && hwc_derp_is_up(rc->d)) || !rc->last_error[0])
        return false;
    const struct tc_derp_region *reg = tc_derp_map_region(&m->dm, m->home);
    snprintf(out, len, "not connected to home DERP region %d (%s): %s", m->home,
             reg && reg->region_code ? reg->region_code : "?", rc->last_error);
    return true;
}

json_t *hwc_magic_status(const struct hwc_magic *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "HomeRegion", json_integer(m->home));
    json_object_set_new(o, "UDPPort", json_integer(m->port));
    json_object_set_new(o, "UDPOtherPackets", json_integer((json_int_t)m->udp_other));
    json_object_set_new(o, "DiscoReceived", json_integer((json_int_t)m->disco_rx));
    json_object_set_new(o, "DiscoSent", json_integer((json_int_t)m->disco_tx));
    json_object_set_new(o, "DiscoFromUnknownKeys", json_integer((json_int_t)m->disco_unknown));
    json_object_set_new(o, "DiscoBad", json_integer((json_int_t)m->disco_bad));
    json_object_set_new(o, "WireGuardReceived", json_integer((json_int_t)m->wg_rx));
    json_object_set_new(o, "DirectSent", json_integer((json_int_t)m->udp_tx));
    char dk[HW_KEY_TEXT_MAX];
    json_object_set_new(o, "DiscoKey", json_string(hw_key_format(HW_KEY_DISCO, m->disco_pub, dk)));
    json_t *eps = json_array();
    for (size_t i = 0; i < m->n_eps; i++)
        json_array_append_new(eps, json_string(m->eps[i]));
    json_object_set_new(o, "Endpoints", eps);
    json_object_set_new(o, "ForcePreferredDERP", json_integer(hwc_netcheck_forced(m->nc)));
    json_t *conns = json_array();
    for (const struct region_conn *rc = m->conns; rc; rc = rc->next) {
        json_t *c = rc->d ? hwc_derp_status(rc->d) : json_object();
        json_object_set_new(c, "RegionID", json_integer(rc->region));
        json_object_set_new(c, "Home", json_boolean(rc->region == m->home));
        if (!rc->d) {
            json_object_set_new(c, "State", json_string("waiting-to-reconnect"));
            json_object_set_new(c, "Error", json_string(rc->last_error));
        } else if (rc->last_error[0] && !json_object_get(c, "Error")) {
            json_object_set_new(c, "LastError", json_string(rc->last_error));
        }
        json_array_append_new(conns, c);
    }
    json_object_set_new(o, "Connections", conns);
    size_t n_routes = 0;
    for (const struct route *r = m->route_list; r; r = r->next)
        n_routes++;
    json_object_set_new(o, "Routes", json_integer((json_int_t)n_routes));
    const struct hwc_nc_report *last = hwc_netcheck_last(m->nc);
    if (last)
        json_object_set_new(o, "LastReport", hwc_nc_report_json(last));
    return o;
}
