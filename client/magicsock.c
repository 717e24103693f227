#include "client/magicsock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "client/derp.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/strmap.h"
#include "common/util.h"
#include "proto/derp.h"
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

struct magic_wg_peer {
    uint8_t key[32];
    int home;
};

/* A WireGuard message: type 1..4 followed by three zero bytes. */
static bool is_wireguard(const uint8_t *p, size_t len)
{
    return len >= 4 && p[0] >= 1 && p[0] <= 4 && p[1] == 0 && p[2] == 0 && p[3] == 0;
}

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

    struct magic_wg_peer *wg_peers;   /* minimal data-plane block: see hwc_magic_set_peers */
    size_t n_wg_peers;

    struct hwc_netcheck *nc;
    bool periodic_pending;     /* our own report (not an API one) is waiting */
    struct hw_timer *restun, *clean;
};

static void conn_connect(struct region_conn *rc);
static void schedule_restun(struct hwc_magic *m, int64_t ms);

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
    if (m->cb.on_wg_packet && is_wireguard(data, len))
        m->cb.on_wg_packet(data, len, m->arg);
    else
        m->cb.on_derp_packet(src, rc->region, data, len, m->arg);
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

/* ---- UDP ---- */

static void udp_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_magic *m = arg;
    uint8_t buf[UDP_MAX];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0)
            return;
        /* magicsock's test for STUN: RFC 5389 header, and a Binding response type */
        if (n >= HW_STUN_HEADER_LEN && hw_stun_is(buf, (size_t)n) && buf[1] == 0x01 &&
            hwc_netcheck_receive(m->nc, buf, (size_t)n))
            continue;
        if (m->cb.on_wg_packet && is_wireguard(buf, (size_t)n)) {
            m->cb.on_wg_packet(buf, (size_t)n, m->arg);
            continue;
        }
        m->udp_other++; /* disco: not here yet */
    }
}

static int bind_udp(int family, int port, char *err, size_t errlen)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "UDP socket: %s", strerror(errno));
        return -1;
    }
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
    hw_loop_add(loop, m->fd4, HW_EV_READ, udp_event, m);
    if (m->fd6 >= 0)
        hw_loop_add(loop, m->fd6, HW_EV_READ, udp_event, m);
    struct hwc_nc_io io = {.send = nc_send, .last_derp_rx_ms = nc_last_rx, .arg = m};
    m->nc = hwc_netcheck_new(loop, &io);
    m->clean = hw_timer_start(loop, clean_interval(m), clean_cb, m);
    log_info("magicsock: UDP port %u (IPv4%s)", m->port, m->fd6 >= 0 ? " and IPv6" : "");
    return m;
}

void hwc_magic_free(struct hwc_magic *m)
{
    if (!m)
        return;
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
    free(m->wg_peers);
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

/* ---- minimal data-plane block (wg branch): DERP only. The disco branch's version
 * (direct paths, disco) replaces everything between these markers. ---- */

void hwc_magic_set_peers(struct hwc_magic *m, const struct hwc_magic_peer *peers, size_t n)
{
    free(m->wg_peers);
    m->wg_peers = hw_calloc(n ? n : 1, sizeof *m->wg_peers);
    for (size_t i = 0; i < n; i++) {
        memcpy(m->wg_peers[i].key, peers[i].node_key, 32);
        m->wg_peers[i].home = peers[i].home_region;
    }
    m->n_wg_peers = n;
}

int hwc_magic_send(struct hwc_magic *m, const uint8_t dst_node_key[32], const uint8_t *pkt, size_t len, char *err,
                   size_t errlen)
{
    int home = 0;
    for (size_t i = 0; i < m->n_wg_peers; i++)
        if (memcmp(m->wg_peers[i].key, dst_node_key, 32) == 0)
            home = m->wg_peers[i].home;
    return hwc_magic_send_derp(m, dst_node_key, home, pkt, len, err, errlen);
}

/* ---- end of the minimal data-plane block ---- */

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
