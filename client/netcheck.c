#include "client/netcheck.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "client/derp.h"
#include "client/resolve.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"

#define STUN_DEFAULT_PORT 3478

struct waiter {
    hwc_nc_done_cb cb;
    void *arg;
};

/* One STUN-capable node of a measured region, with its addresses once known. */
struct nc_node {
    struct hwc_netcheck *nc;
    int region;
    char *name, *host;
    int stun_port;
    bool want4, want6;      /* the family is not disabled for this node */
    bool have4, have6;
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    bool resolving, resolved;
    struct hwc_resolve *res;
};

struct nc_probe {
    size_t node;
    int family;
    int64_t due_ms;         /* relative to the start */
    bool sent, skipped;
    uint8_t txid[HW_STUN_TXID_LEN];
    int64_t sent_us;
};

struct nc_https {
    struct hwc_netcheck *nc;
    int region;
    struct hwc_derp *d;
};

struct run {
    struct tc_derp_map dm;
    struct hwc_nc_opts opts;
    int64_t start_ms, start_us;
    struct nc_node *nodes;
    size_t n_nodes;
    struct nc_probe *probes;
    size_t n_probes;
    int *regions;
    size_t n_regions;
    bool https_phase;
    struct nc_https *https;
    size_t n_https, https_left;
    struct hwc_nc_report rep;
    /* distinct public IPv4 addresses seen, to tell whether the mapping varies */
    struct hw_stun_addr seen4[4];
    size_t n_seen4;
    unsigned v4_answers;
};

struct hist {
    int64_t at_ms;
    int region;
    int64_t us;
};

struct hwc_netcheck {
    struct hw_loop *loop;
    struct hwc_nc_io io;
    struct run *run;
    struct waiter *waiters;
    size_t n_waiters;
    struct hw_timer *tick, *stun_deadline, *report_deadline, *finish_timer;
    struct hwc_nc_report last;
    bool have_last;
    struct hist *hist;
    size_t n_hist;
    bool warned_truncated;
    int force;
};

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- report helpers ---- */

static struct hwc_nc_latency *lat_for(struct hwc_nc_report *r, int region)
{
    for (size_t i = 0; i < r->n_lat; i++)
        if (r->lat[i].region == region)
            return &r->lat[i];
    r->lat = realloc(r->lat, (r->n_lat + 1) * sizeof *r->lat);
    if (!r->lat)
        abort();
    r->lat[r->n_lat] = (struct hwc_nc_latency){.region = region};
    return &r->lat[r->n_lat++];
}

static void keep_min(int64_t *slot, int64_t us)
{
    if (us <= 0)
        us = 1; /* 0 means "none" */
    if (*slot == 0 || us < *slot)
        *slot = us;
}

int64_t hwc_nc_region_us(const struct hwc_nc_report *r, int region)
{
    for (size_t i = 0; i < r->n_lat; i++) {
        if (r->lat[i].region != region)
            continue;
        int64_t best = 0;
        const int64_t v[3] = {r->lat[i].v4_us, r->lat[i].v6_us, r->lat[i].https_us};
        for (int k = 0; k < 3; k++)
            if (v[k] && (!best || v[k] < best))
                best = v[k];
        return best;
    }
    return 0;
}

void hwc_nc_report_clear(struct hwc_nc_report *r)
{
    free(r->lat);
    memset(r, 0, sizeof *r);
    r->mapping_varies = -1;
}

static void report_copy(struct hwc_nc_report *dst, const struct hwc_nc_report *src)
{
    free(dst->lat);
    *dst = *src;
    dst->lat = hw_malloc((src->n_lat ? src->n_lat : 1) * sizeof *dst->lat);
    if (src->n_lat)
        memcpy(dst->lat, src->lat, src->n_lat * sizeof *dst->lat);
}

static int lat_cmp(const void *a, const void *b)
{
    const struct hwc_nc_latency *x = a, *y = b;
    return (x->region > y->region) - (x->region < y->region);
}

json_t *hwc_nc_report_json(const struct hwc_nc_report *r)
{
    json_t *o = json_object();
    time_t secs = (time_t)(r->time_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char when[64];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(r->time_ms % 1000));
    json_object_set_new(o, "Now", json_string(when));
    json_object_set_new(o, "UDP", json_boolean(r->udp));
    json_object_set_new(o, "IPv6", json_boolean(r->ipv6));
    json_object_set_new(o, "IPv4", json_boolean(r->ipv4));
    json_object_set_new(o, "IPv6CanSend", json_boolean(r->ipv6_can_send));
    json_object_set_new(o, "IPv4CanSend", json_boolean(r->ipv4_can_send));
    json_object_set_new(o, "OSHasIPv6", json_boolean(r->os_has_ipv6));
    json_object_set_new(o, "ICMPv4", json_false());
    json_object_set_new(o, "MappingVariesByDestIP",
                        r->mapping_varies < 0 ? json_null() : json_boolean(r->mapping_varies));
    json_object_set_new(o, "UPnP", json_null());
    json_object_set_new(o, "PMP", json_null());
    json_object_set_new(o, "PCP", json_null());
    json_object_set_new(o, "PreferredDERP", json_integer(r->preferred_derp));
    json_t *all = json_object(), *v4 = json_object(), *v6 = json_object();
    struct hwc_nc_latency *sorted = hw_malloc((r->n_lat ? r->n_lat : 1) * sizeof *sorted);
    if (r->n_lat) {
        memcpy(sorted, r->lat, r->n_lat * sizeof *sorted);
        qsort(sorted, r->n_lat, sizeof *sorted, lat_cmp);
    }
    for (size_t i = 0; i < r->n_lat; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", sorted[i].region);
        int64_t best = hwc_nc_region_us(r, sorted[i].region);
        if (best)
            json_object_set_new(all, key, json_integer(best * 1000));
        if (sorted[i].v4_us)
            json_object_set_new(v4, key, json_integer(sorted[i].v4_us * 1000));
        if (sorted[i].v6_us)
            json_object_set_new(v6, key, json_integer(sorted[i].v6_us * 1000));
    }
    free(sorted);
    json_object_set_new(o, "RegionLatency", all);
    json_object_set_new(o, "RegionV4Latency", v4);
    json_object_set_new(o, "RegionV6Latency", v6);
    char a[80];
    json_t *c4 = json_object(), *c6 = json_object();
    if (r->have_global_v4) {
        hw_stun_addr_format(&r->global_v4, a, sizeof a);
        json_object_set_new(c4, a, json_integer(r->global_v4_count));
        json_object_set_new(o, "GlobalV4", json_string(a));
    } else {
        json_object_set_new(o, "GlobalV4", json_string(""));
    }
    if (r->have_global_v6) {
        hw_stun_addr_format(&r->global_v6, a, sizeof a);
        json_object_set_new(c6, a, json_integer(r->global_v6_count));
        json_object_set_new(o, "GlobalV6", json_string(a));
    } else {
        json_object_set_new(o, "GlobalV6", json_string(""));
    }
    json_object_set_new(o, "GlobalV4Counters", c4);
    json_object_set_new(o, "GlobalV6Counters", c6);
    json_object_set_new(o, "CaptivePortal", json_null());
    return o;
}

void hwc_nc_format_latency(int64_t us, char *out, size_t len)
{
    if (us >= 100) {
        /* Go rounds to 100 µs and prints the shortest form of the value. */
        int64_t r = (us + 50) / 100 * 100;
        if (r < 1000)
            snprintf(out, len, "%lldµs", (long long)r);
        else if (r < 1000000)
            snprintf(out, len, "%gms", (double)r / 1000.0);
        else
            snprintf(out, len, "%gs", (double)r / 1e6);
    } else {
        snprintf(out, len, "%lldµs", (long long)(us > 0 ? us : 0));
    }
}

struct print_row {
    int region;
    int64_t ns; /* 0: no latency */
};

static int row_cmp(const void *a, const void *b)
{
    const struct print_row *x = a, *y = b;
    if ((x->ns != 0) != (y->ns != 0))
        return x->ns ? -1 : 1;
    if (x->ns && x->ns != y->ns)
        return x->ns < y->ns ? -1 : 1;
    return (x->region > y->region) - (x->region < y->region);
}

static const char *str_of(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

void hwc_nc_print(FILE *out, const json_t *rep, const json_t *dm)
{
    const json_t *regions = json_object_get(dm, "Regions");
    fprintf(out, "\nReport:\n");
    fprintf(out, "\t* Time: %s\n", str_of(rep, "Now"));
    fprintf(out, "\t* UDP: %s\n", json_is_true(json_object_get(rep, "UDP")) ? "true" : "false");
    if (*str_of(rep, "GlobalV4"))
        fprintf(out, "\t* IPv4: yes, %s\n", str_of(rep, "GlobalV4"));
    else
        fprintf(out, "\t* IPv4: (no addr found)\n");
    if (*str_of(rep, "GlobalV6"))
        fprintf(out, "\t* IPv6: yes, %s\n", str_of(rep, "GlobalV6"));
    else if (json_is_true(json_object_get(rep, "IPv6")))
        fprintf(out, "\t* IPv6: (no addr found)\n");
    else if (json_is_true(json_object_get(rep, "OSHasIPv6")))
        fprintf(out, "\t* IPv6: no, but OS has support\n");
    else
        fprintf(out, "\t* IPv6: no, unavailable in OS\n");
    const json_t *mv = json_object_get(rep, "MappingVariesByDestIP");
    fprintf(out, "\t* MappingVariesByDestIP: %s\n", json_is_boolean(mv) ? (json_is_true(mv) ? "true" : "false") : "");
    fprintf(out, "\t* PortMapping: not checked\n");
    const json_t *lat = json_object_get(rep, "RegionLatency");
    if (json_object_size(lat) == 0) {
        fprintf(out, "\t* Nearest DERP: unknown (no response to latency probes)\n");
        return;
    }
    json_int_t pref = json_integer_value(json_object_get(rep, "PreferredDERP"));
    char key[32];
    snprintf(key, sizeof key, "%lld", (long long)pref);
    const json_t *pr = json_object_get(regions, key);
    if (pref == 0)
        fprintf(out, "\t* Nearest DERP: [none]\n");
    else if (pr)
        fprintf(out, "\t* Nearest DERP: %s\n", str_of(pr, "RegionName"));
    else
        fprintf(out, "\t* Nearest DERP: %lld (region not found in map)\n", (long long)pref);
    fprintf(out, "\t* DERP latency:\n");
    size_t n = json_object_size(regions), i = 0;
    struct print_row *rows = hw_calloc(n ? n : 1, sizeof *rows);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)regions, k, v) {
        rows[i].region = atoi(k);
        rows[i].ns = json_integer_value(json_object_get(lat, k));
        i++;
    }
    qsort(rows, n, sizeof *rows, row_cmp);
    for (i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%d", rows[i].region);
        const json_t *r = json_object_get(regions, key);
        char l[32] = "";
        if (rows[i].ns)
            hwc_nc_format_latency(rows[i].ns / 1000, l, sizeof l);
        /* Go pads by characters, and "µ" is two bytes */
        int width = 7;
        for (const char *c = l; *c; c++)
            width += ((unsigned char)*c & 0xc0) == 0x80;
        fprintf(out, "\t\t- %3s: %-*s (%s)\n", str_of(r, "RegionCode"), width, l, str_of(r, "RegionName"));
    }
    free(rows);
}

/* ---- home choice ---- */

static double score_of(const json_t *scores, int region)
{
    char key[16];
    snprintf(key, sizeof key, "%d", region);
    const json_t *v = json_object_get(scores, key);
    double s = json_is_number(v) ? json_number_value(v) : 0;
    return s > 0 ? s : 1;
}

int hwc_nc_pick_preferred(const struct hwc_nc_sample *cur, size_t n_cur, const struct hwc_nc_sample *recent,
                          size_t n_recent, int prev, bool prev_heard_recently, bool prev_heard_keepalive,
                          const json_t *scores)
{
    int pref = 0;
    int64_t best_any = 0, old_cur = 0;
    for (size_t i = 0; i < n_cur; i++) {
        int region = cur[i].region;
        int64_t d = (int64_t)((double)cur[i].us * score_of(scores, region));
        if (region == prev)
            old_cur = d;
        int64_t best = 0;
        for (size_t j = 0; j < n_recent; j++)
            if (recent[j].region == region && (!best || recent[j].us < best))
                best = recent[j].us;
        if (!best)
            best = cur[i].us;
        best = (int64_t)((double)best * score_of(scores, region));
        if (pref == 0 || best < best_any || (best == best_any && region < pref)) {
            best_any = best;
            pref = region;
        }
    }
    /* Stickiness: the old home stays while it answers, unless the new one is clearly
     * better, so two nearby regions do not make the node flap between them. */
    bool changing = prev != 0 && pref != prev;
    bool old_reachable = old_cur != 0 || prev_heard_recently;
    if (changing && old_reachable) {
        bool keep = old_cur - best_any < HWC_NC_STICKY_ABS_US || best_any > old_cur / 3 * 2;
        if (keep)
            pref = prev;
    }
    if (pref == 0 && prev_heard_keepalive)
        pref = prev;
    return pref;
}

/* ---- running a report ---- */

static void run_free(struct hwc_netcheck *nc, struct run *r)
{
    for (size_t i = 0; i < r->n_nodes; i++) {
        hwc_resolve_cancel(r->nodes[i].res);
        free(r->nodes[i].name);
        free(r->nodes[i].host);
    }
    free(r->nodes);
    free(r->probes);
    free(r->regions);
    for (size_t i = 0; i < r->n_https; i++)
        hwc_derp_free(r->https[i].d);
    free(r->https);
    hwc_nc_report_clear(&r->rep);
    tc_derp_map_clear(&r->dm);
    free(r);
}

static void stop_timers(struct hwc_netcheck *nc)
{
    struct hw_timer **ts[] = {&nc->tick, &nc->stun_deadline, &nc->report_deadline, &nc->finish_timer};
    for (size_t i = 0; i < HW_ARRAY_LEN(ts); i++)
        if (*ts[i]) {
            hw_timer_cancel(nc->loop, *ts[i]);
            *ts[i] = NULL;
        }
}

static void call_waiters(struct hwc_netcheck *nc, const struct hwc_nc_report *rep, const char *err)
{
    struct waiter *w = nc->waiters;
    size_t n = nc->n_waiters;
    nc->waiters = NULL;
    nc->n_waiters = 0;
    for (size_t i = 0; i < n; i++)
        w[i].cb(rep, err, w[i].arg);
    free(w);
}

static void trim_history(struct hwc_netcheck *nc, int64_t now)
{
    size_t k = 0;
    for (size_t i = 0; i < nc->n_hist; i++)
        if (now - nc->hist[i].at_ms <= HWC_NC_HISTORY_MS)
            nc->hist[k++] = nc->hist[i];
    nc->n_hist = k;
}

static void finish_run(struct hwc_netcheck *nc)
{
    struct run *r = nc->run;
    stop_timers(nc);
    struct hwc_nc_report *rep = &r->rep;
    int64_t now = hw_now_ms_mono();
    rep->time_ms = unix_ms();
    rep->took_ms = now - r->start_ms;
    if (r->n_seen4 > 1)
        rep->mapping_varies = 1;
    else if (r->v4_answers > 1 && r->n_seen4 == 1)
        rep->mapping_varies = 0;

    struct hwc_nc_sample *cur = hw_calloc(rep->n_lat ? rep->n_lat : 1, sizeof *cur);
    size_t n_cur = 0;
    for (size_t i = 0; i < rep->n_lat; i++) {
        int64_t us = hwc_nc_region_us(rep, rep->lat[i].region);
        if (us)
            cur[n_cur++] = (struct hwc_nc_sample){rep->lat[i].region, us};
    }
    trim_history(nc, now);
    nc->hist = realloc(nc->hist, (nc->n_hist + n_cur + 1) * sizeof *nc->hist);
    if (!nc->hist)
        abort();
    for (size_t i = 0; i < n_cur; i++)
        nc->hist[nc->n_hist++] = (struct hist){now, cur[i].region, cur[i].us};
    struct hwc_nc_sample *recent = hw_calloc(nc->n_hist ? nc->n_hist : 1, sizeof *recent);
    for (size_t i = 0; i < nc->n_hist; i++)
        recent[i] = (struct hwc_nc_sample){nc->hist[i].region, nc->hist[i].us};
    int prev = nc->have_last ? nc->last.preferred_derp : 0;
    int64_t heard = prev && nc->io.last_derp_rx_ms ? nc->io.last_derp_rx_ms(nc->io.arg, prev) : 0;
    bool heard_recently = heard && (heard >= r->start_ms || now - heard < HWC_NC_FRAME_RECENT_MS);
    bool heard_keepalive = heard && now - heard < HWC_NC_KEEPALIVE_RECENT_MS;
    const json_t *scores = r->dm.home_params ? json_object_get(r->dm.home_params, "RegionScore") : NULL;
    rep->preferred_derp = hwc_nc_pick_preferred(cur, n_cur, recent, nc->n_hist, prev, heard_recently,
                                                heard_keepalive, scores);
    if (nc->force) {
        int64_t h = nc->io.last_derp_rx_ms ? nc->io.last_derp_rx_ms(nc->io.arg, nc->force) : 0;
        bool lately = h && (h >= r->start_ms || now - h < HWC_NC_FRAME_RECENT_MS);
        if (hwc_nc_region_us(rep, nc->force) || lately)
            rep->preferred_derp = nc->force;
    }
    /* a home that is no longer in the map cannot be kept */
    if (rep->preferred_derp && !tc_derp_map_region(&r->dm, rep->preferred_derp))
        rep->preferred_derp = 0;
    free(cur);
    free(recent);

    report_copy(&nc->last, rep);
    nc->have_last = true;
    nc->run = NULL;
    call_waiters(nc, &nc->last, NULL);
    run_free(nc, r);
}

static void finish_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_netcheck *nc = arg;
    nc->finish_timer = NULL;
    if (nc->run)
        finish_run(nc);
}

/* Finishing from inside a callback of something the run owns (an HTTPS probe) must
 * not free it under its own feet: a timer does it. */
static void finish_soon(struct hwc_netcheck *nc)
{
    if (!nc->finish_timer)
        nc->finish_timer = hw_timer_start(nc->loop, 0, finish_cb, nc);
}

static void https_done(struct hwc_derp *d, const char *why, void *arg)
{
    struct nc_https *h = arg;
    struct hwc_netcheck *nc = h->nc;
    struct run *r = nc->run;
    if (why)
        log_debug("netcheck: HTTP latency of region %d: %s", h->region, why);
    else
        keep_min(&lat_for(&r->rep, h->region)->https_us, hwc_derp_latency_us(d));
    hwc_derp_free(d);
    h->d = NULL;
    if (--r->https_left == 0)
        finish_soon(nc);
}

static void https_noop_up(struct hwc_derp *d, void *arg) {}
static void https_noop_pkt(struct hwc_derp *d, const uint8_t s[32], const uint8_t *p, size_t n, void *a) {}
static void https_noop_gone(struct hwc_derp *d, const uint8_t k[32], uint8_t reason, void *arg) {}

static const struct hwc_derp_callbacks https_callbacks = {
    .on_up = https_noop_up,
    .on_packet = https_noop_pkt,
    .on_peer_gone = https_noop_gone,
    .on_done = https_done,
};

static void start_https_phase(struct hwc_netcheck *nc)
{
    struct run *r = nc->run;
    r->https_phase = true;
    r->https = hw_calloc(r->n_regions ? r->n_regions : 1, sizeof *r->https);
    struct hwc_derp_opts o = {.mode = HWC_DERP_LATENCY, .plain_http = r->opts.plain_http};
    for (size_t i = 0; i < r->n_regions; i++) {
        const struct tc_derp_region *reg = tc_derp_map_region(&r->dm, r->regions[i]);
        bool has_derp = false;
        for (size_t k = 0; reg && k < reg->n_nodes; k++)
            has_derp |= !reg->nodes[k].stun_only;
        if (!has_derp || reg->avoid)
            continue;
        struct nc_https *h = &r->https[r->n_https++];
        h->nc = nc;
        h->region = reg->region_id;
        r->https_left++;
        h->d = hwc_derp_start(nc->loop, reg, &o, &https_callbacks, h);
    }
    if (r->https_left == 0)
        finish_soon(nc);
    else
        log_info("netcheck: no UDP answer from any region: measuring over %s instead",
                 r->opts.plain_http ? "HTTP" : "HTTPS");
}

static void end_stun_phase(struct hwc_netcheck *nc)
{
    struct run *r = nc->run;
    if (nc->tick) {
        hw_timer_cancel(nc->loop, nc->tick);
        nc->tick = NULL;
    }
    if (nc->stun_deadline) {
        hw_timer_cancel(nc->loop, nc->stun_deadline);
        nc->stun_deadline = NULL;
    }
    if (r->rep.udp)
        finish_soon(nc);
    else
        start_https_phase(nc);
}

static bool set_answered(const struct run *r, const struct nc_probe *p)
{
    const struct nc_node *n = &r->nodes[p->node];
    const struct hwc_nc_latency *l = NULL;
    for (size_t i = 0; i < r->rep.n_lat; i++)
        if (r->rep.lat[i].region == n->region)
            l = &r->rep.lat[i];
    return l && (p->family == AF_INET ? l->v4_us : l->v6_us) != 0;
}

/* True when nothing more can come of the STUN phase before its deadline. */
static bool stun_phase_over(const struct run *r)
{
    for (size_t i = 0; i < r->n_probes; i++) {
        const struct nc_probe *p = &r->probes[i];
        if (p->skipped || set_answered(r, p))
            continue;
        return false; /* unsent, or sent and waiting */
    }
    return true;
}

static void send_probe(struct hwc_netcheck *nc, struct nc_probe *p)
{
    struct run *r = nc->run;
    struct nc_node *n = &r->nodes[p->node];
    bool have = p->family == AF_INET ? n->have4 : n->have6;
    if (!have) {
        p->skipped = true;
        return;
    }
    randombytes_buf(p->txid, sizeof p->txid);
    uint8_t req[HW_STUN_REQUEST_LEN];
    size_t len = hw_stun_build_request(req, p->txid);
    const struct sockaddr *sa = p->family == AF_INET ? (const struct sockaddr *)&n->a4 : (const struct sockaddr *)&n->a6;
    socklen_t sl = p->family == AF_INET ? sizeof n->a4 : sizeof n->a6;
    p->sent_us = mono_us();
    if (nc->io.send(nc->io.arg, sa, sl, req, len) < 0) {
        p->skipped = true;
        return;
    }
    p->sent = true;
    if (p->family == AF_INET)
        r->rep.ipv4_can_send = true;
    else
        r->rep.ipv6_can_send = true;
}

static void tick_cb(struct hw_loop *loop, struct hw_timer *t, void *arg);

/* Sends every probe that is due, whose set has no answer yet and whose node's address
 * is known, then sleeps until the next one is due. */
static void pump(struct hwc_netcheck *nc)
{
    struct run *r = nc->run;
    if (!r || r->https_phase)
        return;
    int64_t elapsed = hw_now_ms_mono() - r->start_ms;
    int64_t next = -1;
    for (size_t i = 0; i < r->n_probes; i++) {
        struct nc_probe *p = &r->probes[i];
        if (p->sent || p->skipped)
            continue;
        if (set_answered(r, p)) {
            p->skipped = true; /* the set is done: the rest would tell nothing new */
            continue;
        }
        struct nc_node *n = &r->nodes[p->node];
        if (!n->resolved)
            continue; /* sent when the lookup ends */
        if (p->due_ms <= elapsed)
            send_probe(nc, p);
        else if (next < 0 || p->due_ms < next)
            next = p->due_ms;
    }
    if (nc->tick) {
        hw_timer_cancel(nc->loop, nc->tick);
        nc->tick = NULL;
    }
    if (stun_phase_over(r)) {
        end_stun_phase(nc);
        return;
    }
    if (next >= 0)
        nc->tick = hw_timer_start(nc->loop, next - elapsed, tick_cb, nc);
}

static void tick_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_netcheck *nc = arg;
    nc->tick = NULL;
    pump(nc);
}

static void stun_deadline_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_netcheck *nc = arg;
    nc->stun_deadline = NULL;
    end_stun_phase(nc);
}

static void report_deadline_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_netcheck *nc = arg;
    nc->report_deadline = NULL;
    if (nc->run)
        finish_run(nc);
}

static void node_resolved(struct addrinfo *res, int gai_err, void *arg)
{
    struct nc_node *n = arg;
    n->res = NULL;
    n->resolving = false;
    n->resolved = true;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET && n->want4 && !n->have4) {
            memcpy(&n->a4, ai->ai_addr, sizeof n->a4);
            n->have4 = true;
        } else if (ai->ai_family == AF_INET6 && n->want6 && !n->have6) {
            memcpy(&n->a6, ai->ai_addr, sizeof n->a6);
            n->have6 = true;
        }
    }
    if (res)
        freeaddrinfo(res);
    else
        log_debug("netcheck: cannot resolve %s: %s", n->host, gai_strerror(gai_err));
    pump(n->nc);
}

/* Address of a node for STUN: STUNTestIP, else the IPv4/IPv6 literals, else DNS for
 * the families whose field is empty. */
static void node_setup(struct nc_node *n, const struct tc_derp_node *src, int port)
{
    const char *v4 = src->ipv4 ? src->ipv4 : "", *v6 = src->ipv6 ? src->ipv6 : "";
    n->want4 = strcmp(v4, "none") != 0;
    n->want6 = strcmp(v6, "none") != 0;
    n->a4.sin_family = AF_INET;
    n->a4.sin_port = htons((uint16_t)port);
    n->a6.sin6_family = AF_INET6;
    n->a6.sin6_port = htons((uint16_t)port);
    const char *test_ip = src->stun_test_ip && *src->stun_test_ip ? src->stun_test_ip : NULL;
    if (test_ip) {
        n->have4 = inet_pton(AF_INET, test_ip, &n->a4.sin_addr) == 1;
        n->have6 = !n->have4 && inet_pton(AF_INET6, test_ip, &n->a6.sin6_addr) == 1;
        n->resolved = true;
        return;
    }
    if (n->want4 && *v4)
        n->have4 = inet_pton(AF_INET, v4, &n->a4.sin_addr) == 1;
    if (n->want6 && *v6)
        n->have6 = inet_pton(AF_INET6, v6, &n->a6.sin6_addr) == 1;
    bool need_dns = (n->want4 && !*v4) || (n->want6 && !*v6);
    if (!need_dns || !n->host[0]) {
        n->resolved = true;
        return;
    }
    char p[8];
    snprintf(p, sizeof p, "%u", (unsigned)port & 0xffffu);
    int gai_err = 0;
    n->resolving = true;
    n->res = hwc_resolve_start(n->nc->loop, n->host, p, AF_UNSPEC, SOCK_DGRAM, node_resolved, n, &gai_err);
    if (!n->res) {
        n->resolving = false;
        n->resolved = true;
    }
}

static int int_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void start_run(struct hwc_netcheck *nc, const struct tc_derp_map *dm, const struct hwc_nc_opts *o)
{
    struct run *r = hw_calloc(1, sizeof *r);
    nc->run = r;
    r->opts = *o;
    r->start_ms = hw_now_ms_mono();
    r->start_us = mono_us();
    hwc_nc_report_clear(&r->rep);
    r->rep.os_has_ipv6 = o->os_has_v6;
    /* The run keeps its own copy: the daemon may get a new map while it runs. */
    json_t *j = tc_derp_map_to_json(dm);
    char err[200];
    if (tc_derp_map_parse(j, &r->dm, err, sizeof err) < 0)
        memset(&r->dm, 0, sizeof r->dm);
    json_decref(j);

    r->regions = hw_calloc(r->dm.n_regions ? r->dm.n_regions : 1, sizeof *r->regions);
    for (size_t i = 0; i < r->dm.n_regions; i++) {
        const struct tc_derp_region *reg = &r->dm.regions[i];
        if (reg->no_measure_no_home || reg->n_nodes == 0)
            continue;
        r->regions[r->n_regions++] = reg->region_id;
    }
    qsort(r->regions, r->n_regions, sizeof *r->regions, int_cmp);
    if (r->n_regions > HWC_NC_MAX_REGIONS) {
        if (!nc->warned_truncated)
            log_warn("netcheck: the DERP map has %zu regions: measuring only the first %d (by id)", r->n_regions,
                     HWC_NC_MAX_REGIONS);
        nc->warned_truncated = true;
        r->n_regions = HWC_NC_MAX_REGIONS;
    }
    size_t max_nodes = 0;
    for (size_t i = 0; i < r->n_regions; i++)
        max_nodes += tc_derp_map_region(&r->dm, r->regions[i])->n_nodes;
    r->nodes = hw_calloc(max_nodes ? max_nodes : 1, sizeof *r->nodes);
    r->probes = hw_calloc(r->n_regions * HWC_NC_TRIES * 2 + 1, sizeof *r->probes);
    /* Node slots first (lookups may answer at once), probes after. */
    size_t *first = hw_calloc(r->n_regions ? r->n_regions : 1, sizeof *first);
    size_t *count = hw_calloc(r->n_regions ? r->n_regions : 1, sizeof *count);
    for (size_t i = 0; i < r->n_regions; i++) {
        const struct tc_derp_region *reg = tc_derp_map_region(&r->dm, r->regions[i]);
        first[i] = r->n_nodes;
        for (size_t k = 0; k < reg->n_nodes; k++) {
            const struct tc_derp_node *src = &reg->nodes[k];
            if (src->stun_port < 0)
                continue; /* -1: this node answers no STUN */
            struct nc_node *n = &r->nodes[r->n_nodes++];
            n->nc = nc;
            n->region = reg->region_id;
            n->name = hw_strdup(src->name ? src->name : "");
            n->host = hw_strdup(src->host_name ? src->host_name : "");
            n->stun_port = src->stun_port ? src->stun_port : STUN_DEFAULT_PORT;
        }
        count[i] = r->n_nodes - first[i];
    }
    for (size_t i = 0; i < r->n_regions; i++) {
        for (int fam = 0; fam < 2; fam++) {
            bool want = fam == 0 ? o->have_v4 : o->have_v6;
            if (!want || count[i] == 0)
                continue;
            for (int t = 0; t < HWC_NC_TRIES; t++) {
                struct nc_probe *p = &r->probes[r->n_probes++];
                p->node = first[i] + (size_t)t % count[i];
                p->family = fam == 0 ? AF_INET : AF_INET6;
                p->due_ms = (int64_t)t * HWC_NC_RETRANSMIT_MS;
            }
        }
    }
    nc->stun_deadline = hw_timer_start(nc->loop, HWC_NC_STUN_TIMEOUT_MS, stun_deadline_cb, nc);
    nc->report_deadline = hw_timer_start(nc->loop, HWC_NC_REPORT_TIMEOUT_MS, report_deadline_cb, nc);
    /* Literal addresses are known now; lookups come back through node_resolved. */
    size_t k = 0;
    for (size_t i = 0; i < r->n_regions; i++) {
        const struct tc_derp_region *reg = tc_derp_map_region(&r->dm, r->regions[i]);
        for (size_t q = 0; q < reg->n_nodes; q++) {
            if (reg->nodes[q].stun_port < 0)
                continue;
            struct nc_node *n = &r->nodes[k++];
            node_setup(n, &reg->nodes[q], n->stun_port);
        }
    }
    free(first);
    free(count);
    pump(nc);
}

/* ---- public ---- */

struct hwc_netcheck *hwc_netcheck_new(struct hw_loop *loop, const struct hwc_nc_io *io)
{
    struct hwc_netcheck *nc = hw_calloc(1, sizeof *nc);
    nc->loop = loop;
    nc->io = *io;
    hwc_nc_report_clear(&nc->last);
    return nc;
}

void hwc_netcheck_free(struct hwc_netcheck *nc)
{
    if (!nc)
        return;
    stop_timers(nc);
    if (nc->run) {
        struct run *r = nc->run;
        nc->run = NULL;
        call_waiters(nc, NULL, "the daemon is stopping");
        run_free(nc, r);
    }
    free(nc->waiters);
    hwc_nc_report_clear(&nc->last);
    free(nc->hist);
    free(nc);
}

void hwc_netcheck_run(struct hwc_netcheck *nc, const struct tc_derp_map *dm, const struct hwc_nc_opts *o,
                      hwc_nc_done_cb cb, void *arg)
{
    nc->waiters = realloc(nc->waiters, (nc->n_waiters + 1) * sizeof *nc->waiters);
    if (!nc->waiters)
        abort();
    nc->waiters[nc->n_waiters++] = (struct waiter){cb, arg};
    if (!nc->run)
        start_run(nc, dm, o);
}

bool hwc_netcheck_running(const struct hwc_netcheck *nc) { return nc->run != NULL; }

const struct hwc_nc_report *hwc_netcheck_last(const struct hwc_netcheck *nc)
{
    return nc->have_last ? &nc->last : NULL;
}

void hwc_netcheck_force_preferred(struct hwc_netcheck *nc, int region) { nc->force = region; }
int hwc_netcheck_forced(const struct hwc_netcheck *nc) { return nc->force; }

void hwc_netcheck_forget(struct hwc_netcheck *nc)
{
    nc->n_hist = 0;
}

static void note_global(struct run *r, const struct hw_stun_addr *a)
{
    struct hwc_nc_report *rep = &r->rep;
    if (a->family == 4) {
        r->v4_answers++;
        bool seen = false;
        for (size_t i = 0; i < r->n_seen4; i++)
            seen |= memcmp(&r->seen4[i], a, sizeof *a) == 0;
        if (!seen && r->n_seen4 < HW_ARRAY_LEN(r->seen4))
            r->seen4[r->n_seen4++] = *a;
        if (!rep->have_global_v4) {
            rep->have_global_v4 = true;
            rep->global_v4 = *a;
        }
        if (memcmp(&rep->global_v4, a, sizeof *a) == 0)
            rep->global_v4_count++;
    } else {
        if (!rep->have_global_v6) {
            rep->have_global_v6 = true;
            rep->global_v6 = *a;
        }
        if (memcmp(&rep->global_v6, a, sizeof *a) == 0)
            rep->global_v6_count++;
    }
}

bool hwc_netcheck_receive(struct hwc_netcheck *nc, const uint8_t *pkt, size_t len)
{
    struct run *r = nc->run;
    if (!r)
        return false;
    uint8_t txid[HW_STUN_TXID_LEN];
    struct hw_stun_addr addr;
    memset(&addr, 0, sizeof addr);
    if (hw_stun_parse_response(pkt, len, txid, &addr) != HW_STUN_OK)
        return false;
    for (size_t i = 0; i < r->n_probes; i++) {
        struct nc_probe *p = &r->probes[i];
        if (!p->sent || memcmp(p->txid, txid, sizeof txid) != 0)
            continue;
        int64_t rtt = mono_us() - p->sent_us;
        p->sent = false;  /* one answer per transaction */
        p->skipped = true;
        const struct nc_node *n = &r->nodes[p->node];
        struct hwc_nc_latency *l = lat_for(&r->rep, n->region);
        keep_min(p->family == AF_INET ? &l->v4_us : &l->v6_us, rtt);
        r->rep.udp = true;
        if (p->family == AF_INET)
            r->rep.ipv4 = true;
        else
            r->rep.ipv6 = true;
        note_global(r, &addr);
        if (!r->https_phase)
            pump(nc);
        return true;
    }
    return false;
}
