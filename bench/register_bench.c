/* register_bench: control-plane load against a running headwater (loopback only).
 *
 *   register_bench -s http://127.0.0.1:PORT -k REUSABLE_KEY [-n 500] [-c 32] [-f 100]
 *                  [-r 5] [-t 120]
 *
 * Phase 1 registers -n new nodes with the reusable pre-auth key, -c at a time, each over
 * its own ts2021 session exactly as a client does it (GET /key, POST /ts2021 upgrade,
 * Noise IK, HTTP/2, POST /machine/register), and reports registrations per second and
 * the latency of one registration.
 * Phase 2 keeps the sessions of the first -f nodes, opens a streaming map request on each
 * (zstd, keep-alives), applies every message to a real client netmap, then makes -r
 * rounds of two changes through the control protocol — a new node joins (registers), then
 * it logs out — and reports how long after the change each of the -f clients had it in
 * its netmap: the first, the median, the 99th percentile and the last.
 *
 * Bounded: -n <= 10000, -c <= 512, -f <= 1000, -r <= 50, the whole run <= -t seconds
 * (phase 1 stops early at the limit; each change round waits at most 10 s). */

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <jansson.h>
#include <sodium.h>

#include "client/conn.h"
#include "client/url.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/keys.h"
#include "proto/mapframe.h"
#include "proto/netmap.h"
#include "proto/tailcfg.h"

#define ROUND_TIMEOUT_MS 10000
#define SETTLE_MS 300

enum { CHANGE_JOIN, CHANGE_LOGOUT };

struct bench;

struct node {
    struct bench *b;
    int idx;
    uint8_t machine[32], node_priv[32], disco_pub[32];
    struct hwc_conn *conn;
    struct hwc_req *req;
    int status;
    char *body;
    size_t body_len;
    int64_t t_start;
    bool registered, keep, streaming, done;
    /* phase 2 */
    struct tc_mapdec *dec;
    struct tc_netmap nm;
    bool have_map;
    int64_t seen_at; /* when this client saw the current change; 0 = not yet */
};

struct bench {
    struct hw_loop *loop;
    struct hwc_url url;
    const char *authkey;
    int n, conc, fan, rounds;
    int64_t deadline;  /* monotonic ms: end of the whole run */
    json_t *hostinfo;  /* the shared one: every node "bench" */
    bool unique_hostnames;

    /* phase 1 */
    struct node *nodes;
    int started, in_flight, ok, failed;
    int64_t *lat;      /* ms per successful registration */
    int64_t t0, t1;
    char first_error[512];

    /* phase 2 */
    struct node **fanners; /* the kept, registered nodes that stream */
    int phase;
    int maps_ready;
    size_t first_map_peers;
    int64_t fan_t0, fan_t1;
    struct node changer;
    int round, change;
    int64_t change_t0;
    int seen;
    struct hw_timer *round_timer;
    int64_t results[2][50][4]; /* change, round: first, median, p99, last (ms); -1 missed */
    int missed[2][50];
};

static void next_round(struct bench *b);
static void start_registration(struct bench *b);

static int64_t now_ms(void) { return hw_now_ms_mono(); }

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t pct(const int64_t *sorted, int n, double p)
{
    if (n == 0)
        return -1;
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i];
}

static void fatal(struct bench *b, const char *why)
{
    fprintf(stderr, "register_bench: %s\n", why);
    exit(1);
}

/* ---- requests ---- */

static void on_response(struct hwc_req *r, int status, void *arg)
{
    struct node *nd = arg;
    nd->status = status;
}

static void on_body(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct node *nd = arg;
    if (nd->body_len + len > TC_MAX_BODY)
        return;
    nd->body = realloc(nd->body, nd->body_len + len + 1);
    if (!nd->body)
        abort();
    memcpy(nd->body + nd->body_len, data, len);
    nd->body_len += len;
    nd->body[nd->body_len] = '\0';
}

/* The answer of a register request: "" when the login is complete, else why not. */
static void register_outcome(struct node *nd, uint32_t code, char *why, size_t len)
{
    why[0] = '\0';
    if (code != 0 || nd->status != 200) {
        snprintf(why, len, "register: HTTP %d (HTTP/2 code %u): %.100s", nd->status, code,
                 nd->body ? nd->body : "");
        return;
    }
    struct tc_register_response resp;
    char err[TC_ERRLEN];
    if (tc_register_response_parse((const uint8_t *)(nd->body ? nd->body : ""), nd->body_len, &resp,
                                   err, sizeof err) < 0) {
        snprintf(why, len, "register: %s", err);
        return;
    }
    if (resp.error && *resp.error)
        snprintf(why, len, "register refused: %s", resp.error);
    else if (resp.auth_url && *resp.auth_url)
        snprintf(why, len, "register: the server wants an interactive login (%s)", resp.auth_url);
    tc_register_response_free(&resp);
}

/* The Hostinfo a node reports (a new reference). By default every node says "bench", as
 * a fleet of same-named containers does, so the server names them bench, bench-1,
 * bench-2 ...; with -u each has a host name of its own ("bench7", the changer
 * "benchjoin3") and keeps it as its given name. */
static json_t *node_hostinfo(const struct node *nd)
{
    const struct bench *b = nd->b;
    if (!b->unique_hostnames)
        return json_incref(b->hostinfo);
    char name[48];
    if (nd->idx >= 0)
        snprintf(name, sizeof name, "bench%d", nd->idx);
    else
        snprintf(name, sizeof name, "benchjoin%d", b->round);
    return json_pack("{s:s, s:s}", "Hostname", name, "OS", "linux");
}

static void post_register(struct node *nd, const struct hwc_req_handler *h, bool logout)
{
    struct bench *b = nd->b;
    uint8_t pub[32];
    hw_key_public(nd->node_priv, pub);
    struct tc_register_request_build rb = {
        .version = TC_CAPVER,
        .node_key = pub,
        .auth_key = logout ? NULL : b->authkey,
        .hostinfo = node_hostinfo(nd),
    };
    if (logout)
        rb.expiry = tc_time_from_unix(123);
    json_t *j = tc_register_request_to_json(&rb);
    json_decref(rb.hostinfo);
    size_t len;
    char *body = tc_json_dump(j, &len);
    json_decref(j);
    free(nd->body);
    nd->body = NULL;
    nd->body_len = 0;
    nd->status = 0;
    nd->req = hwc_conn_post(nd->conn, "/machine/register", body, len, h, nd);
    free(body);
    if (!nd->req)
        fatal(b, "HTTP/2 refused a register request");
}

/* ---- phase 1: registrations ---- */

static void reg_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct node *nd = arg;
    struct bench *b = nd->b;
    nd->req = NULL;
    nd->done = true;
    char why[400];
    register_outcome(nd, code, why, sizeof why);
    b->in_flight--;
    if (why[0]) {
        b->failed++;
        if (!b->first_error[0])
            snprintf(b->first_error, sizeof b->first_error, "%s", why);
    } else {
        b->lat[b->ok++] = now_ms() - nd->t_start;
        nd->registered = true;
    }
    free(nd->body);
    nd->body = NULL;
    /* freeing the connection here would be inside its own input: leave it to the timer */
    start_registration(b);
}

static const struct hwc_req_handler reg_handler = {on_response, on_body, reg_close};

static void reg_ready(struct hwc_conn *c, void *arg)
{
    struct node *nd = arg;
    post_register(nd, &reg_handler, false);
}

static void reg_fail(struct hwc_conn *c, const char *why, void *arg)
{
    struct node *nd = arg;
    struct bench *b = nd->b;
    if (nd->streaming || nd->registered) {
        fprintf(stderr, "register_bench: client %d lost its session: %s\n", nd->idx, why);
        exit(1);
    }
    b->in_flight--;
    b->failed++;
    if (!b->first_error[0])
        snprintf(b->first_error, sizeof b->first_error, "%s", why);
    hwc_conn_free(nd->conn);
    nd->conn = NULL;
    start_registration(b);
}

static const struct hwc_conn_callbacks reg_conn_cb = {reg_ready, reg_fail};

static void begin_phase2(struct bench *b);

static void reap_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct bench *b = arg;
    /* close the sessions of registered nodes that phase 2 does not keep */
    for (int i = 0; i < b->started; i++) {
        struct node *nd = &b->nodes[i];
        if (nd->conn && nd->done && !(nd->keep && nd->registered)) {
            hwc_conn_free(nd->conn);
            nd->conn = NULL;
        }
    }
    if (b->in_flight == 0 && b->phase == 1) {
        b->t1 = now_ms();
        b->phase = 2;
        begin_phase2(b);
    }
}

static void start_registration(struct bench *b)
{
    hw_timer_start(b->loop, 0, reap_cb, b);
    while (b->in_flight < b->conc && b->started < b->n && now_ms() < b->deadline) {
        struct node *nd = &b->nodes[b->started];
        nd->b = b;
        nd->idx = b->started++;
        hw_key_generate(nd->machine);
        hw_key_generate(nd->node_priv);
        uint8_t disco[32];
        hw_key_generate(disco);
        hw_key_public(disco, nd->disco_pub);
        nd->keep = nd->idx < b->fan;
        nd->t_start = now_ms();
        b->in_flight++;
        nd->conn = hwc_conn_dial(b->loop, &b->url, nd->machine, TC_CAPVER, &reg_conn_cb, nd);
    }
}

/* ---- phase 2: map streams and changes ---- */

static bool sees_change(struct bench *b, struct node *nd)
{
    uint8_t pub[32];
    hw_key_public(b->changer.node_priv, pub);
    const struct tc_node *p = tc_netmap_peer_by_key(&nd->nm, pub);
    if (b->change == CHANGE_JOIN)
        return p != NULL;
    return p && (p->expired || (p->key_expiry.set && p->key_expiry.sec <= hw_now()));
}

static void round_done(struct bench *b)
{
    if (b->round_timer) {
        hw_timer_cancel(b->loop, b->round_timer);
        b->round_timer = NULL;
    }
    int64_t *t = hw_calloc((size_t)b->fan, sizeof *t);
    int n = 0;
    for (int i = 0; i < b->fan; i++)
        if (b->fanners[i]->seen_at)
            t[n++] = b->fanners[i]->seen_at - b->change_t0;
    qsort(t, (size_t)n, sizeof *t, cmp_i64);
    int64_t *r = b->results[b->change][b->round];
    r[0] = n ? t[0] : -1;
    r[1] = pct(t, n, 0.5);
    r[2] = pct(t, n, 0.99);
    r[3] = n ? t[n - 1] : -1;
    b->missed[b->change][b->round] = b->fan - n;
    free(t);
    if (b->change == CHANGE_JOIN) {
        b->change = CHANGE_LOGOUT;
    } else {
        b->change = CHANGE_JOIN;
        b->round++;
    }
    next_round(b);
}

static void check_round(struct bench *b, struct node *nd)
{
    if (b->change_t0 == 0 || nd->seen_at || !sees_change(b, nd))
        return;
    nd->seen_at = now_ms();
    if (++b->seen == b->fan)
        round_done(b);
}

static int on_map_message(const char *json, size_t len, void *arg)
{
    struct node *nd = arg;
    struct bench *b = nd->b;
    char err[TC_ERRLEN];
    if (tc_netmap_apply_json(&nd->nm, json, len, err, sizeof err) < 0) {
        fprintf(stderr, "register_bench: client %d: bad map message: %s\n", nd->idx, err);
        exit(1);
    }
    if (!nd->have_map && nd->nm.has_self) {
        nd->have_map = true;
        if (++b->maps_ready == b->fan) {
            b->fan_t1 = now_ms();
            b->first_map_peers = nd->nm.n_peers;
            next_round(b);
        }
    }
    check_round(b, nd);
    return 0;
}

static void map_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct node *nd = arg;
    if (nd->status != 200) {
        fprintf(stderr, "register_bench: client %d: map answered HTTP %d\n", nd->idx, nd->status);
        exit(1);
    }
    if (tc_mapdec_feed(nd->dec, data, len, on_map_message, nd) == -1) {
        fprintf(stderr, "register_bench: client %d: %s\n", nd->idx, tc_mapdec_error(nd->dec));
        exit(1);
    }
}

static void map_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct node *nd = arg;
    nd->req = NULL;
    if (nd->b->phase == 2) {
        fprintf(stderr, "register_bench: client %d: the server ended its map stream (code %u)\n",
                nd->idx, code);
        exit(1);
    }
}

static const struct hwc_req_handler map_handler = {on_response, map_data, map_close};

static void begin_phase2(struct bench *b)
{
    if (b->ok < b->n)
        fprintf(stderr, "register_bench: %d of %d registrations failed (first: %s)\n", b->failed, b->n,
                b->first_error);
    b->fanners = hw_calloc((size_t)b->fan + 1, sizeof *b->fanners);
    int kept = 0;
    for (int i = 0; i < b->started && kept < b->fan; i++)
        if (b->nodes[i].keep && b->nodes[i].registered && b->nodes[i].conn)
            b->fanners[kept++] = &b->nodes[i];
    b->fan = kept;
    b->fan_t0 = now_ms();
    for (int i = 0; i < b->fan; i++) {
        struct node *nd = b->fanners[i];
        uint8_t pub[32];
        hw_key_public(nd->node_priv, pub);
        struct tc_map_request_build mb = {
            .version = TC_CAPVER,
            .compress_zstd = true,
            .keep_alive = true,
            .node_key = pub,
            .disco_key = nd->disco_pub,
            .stream = true,
            .hostinfo = node_hostinfo(nd),
        };
        json_t *j = tc_map_request_to_json(&mb);
        json_decref(mb.hostinfo);
        size_t len;
        char *body = tc_json_dump(j, &len);
        json_decref(j);
        nd->dec = tc_mapdec_new(true, 0);
        tc_netmap_init(&nd->nm);
        nd->streaming = true;
        nd->status = 0;
        nd->req = hwc_conn_post(nd->conn, "/machine/map", body, len, &map_handler, nd);
        free(body);
        if (!nd->req)
            fatal(b, "HTTP/2 refused a map request");
    }
    if (b->fan == 0)
        hw_loop_stop(b->loop);
}

static void changer_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct node *nd = arg;
    nd->req = NULL;
    char why[400];
    register_outcome(nd, code, why, sizeof why);
    if (why[0] && nd->b->change == CHANGE_JOIN) {
        fprintf(stderr, "register_bench: the changing node: %s\n", why);
        exit(1);
    }
}

static const struct hwc_req_handler changer_handler = {on_response, on_body, changer_close};

static void changer_send(struct bench *b)
{
    for (int i = 0; i < b->fan; i++)
        b->fanners[i]->seen_at = 0;
    b->seen = 0;
    b->change_t0 = now_ms();
    post_register(&b->changer, &changer_handler, b->change == CHANGE_LOGOUT);
}

static void changer_ready(struct hwc_conn *c, void *arg)
{
    changer_send(((struct node *)arg)->b);
}

static void changer_fail(struct hwc_conn *c, const char *why, void *arg)
{
    fprintf(stderr, "register_bench: the changing node's session: %s\n", why);
    exit(1);
}

static const struct hwc_conn_callbacks changer_cb = {changer_ready, changer_fail};

static void round_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct bench *b = arg;
    b->round_timer = NULL;
    round_done(b);
}

static void start_change(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct bench *b = arg;
    b->round_timer = hw_timer_start(b->loop, ROUND_TIMEOUT_MS, round_timeout, b);
    if (b->change == CHANGE_JOIN) {
        /* a brand-new machine each round, on a fresh session like a real new client */
        if (b->changer.conn)
            hwc_conn_free(b->changer.conn);
        free(b->changer.body);
        memset(&b->changer, 0, sizeof b->changer);
        b->changer.b = b;
        b->changer.idx = -1;
        hw_key_generate(b->changer.machine);
        hw_key_generate(b->changer.node_priv);
        b->changer.conn = hwc_conn_dial(b->loop, &b->url, b->changer.machine, TC_CAPVER, &changer_cb,
                                        &b->changer);
        /* the clock starts at the register request, not at the dial */
        b->change_t0 = 0;
    } else {
        changer_send(b);
    }
}

static void next_round(struct bench *b)
{
    b->change_t0 = 0;
    if (b->round >= b->rounds || now_ms() + ROUND_TIMEOUT_MS > b->deadline) {
        hw_loop_stop(b->loop);
        return;
    }
    hw_timer_start(b->loop, SETTLE_MS, start_change, b);
}

/* ---- main ---- */

static void usage(void)
{
    fprintf(stderr, "usage: register_bench -s http://127.0.0.1:PORT -k REUSABLE_KEY [-n 500] [-c 32] "
                    "[-f 100] [-r 5] [-t 120] [-u]\n"
                    "  -u  every node a host name of its own (default: all \"bench\", so the server\n"
                    "      picks the smallest free bench-N for each)\n");
    exit(2);
}

static int int_arg(const char *s, int lo, int hi, const char *what)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) {
        fprintf(stderr, "register_bench: %s must be %d..%d\n", what, lo, hi);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    struct bench b = {.n = 500, .conc = 32, .fan = 100, .rounds = 5};
    const char *server = NULL;
    int seconds = 120, opt;
    while ((opt = getopt(argc, argv, "s:k:n:c:f:r:t:u")) != -1) {
        switch (opt) {
        case 's': server = optarg; break;
        case 'k': b.authkey = optarg; break;
        case 'n': b.n = int_arg(optarg, 1, 10000, "-n"); break;
        case 'c': b.conc = int_arg(optarg, 1, 512, "-c"); break;
        case 'f': b.fan = int_arg(optarg, 0, 1000, "-f"); break;
        case 'r': b.rounds = int_arg(optarg, 1, 50, "-r"); break;
        case 't': seconds = int_arg(optarg, 1, 3600, "-t"); break;
        case 'u': b.unique_hostnames = true; break;
        default: usage();
        }
    }
    if (!server || !b.authkey)
        usage();
    if (sodium_init() < 0)
        return 1;
    hw_log_set_level(HW_LOG_WARN);
    char err[300];
    if (hwc_url_parse(server, &b.url, err, sizeof err) < 0 || b.url.https) {
        fprintf(stderr, "register_bench: %s\n", b.url.https ? "http:// only" : err);
        return 2;
    }
    if (b.fan > b.n)
        b.fan = b.n;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)(b.fan + b.conc + 64)) {
            fprintf(stderr, "register_bench: -f + -c needs %d file descriptors; the limit is %llu\n",
                    b.fan + b.conc + 64, (unsigned long long)rl.rlim_cur);
            return 2;
        }
    }
    b.loop = hw_loop_new();
    b.nodes = hw_calloc((size_t)b.n, sizeof *b.nodes);
    b.lat = hw_calloc((size_t)b.n, sizeof *b.lat);
    b.hostinfo = json_pack("{s:s, s:s}", "Hostname", "bench", "OS", "linux");
    b.deadline = now_ms() + (int64_t)seconds * 1000;
    b.phase = 1;
    b.t0 = now_ms();
    start_registration(&b);
    hw_loop_run(b.loop);

    /* ---- report ---- */
    double secs = (double)(b.t1 - b.t0) / 1000.0;
    qsort(b.lat, (size_t)b.ok, sizeof *b.lat, cmp_i64);
    printf("registrations: %d ok, %d failed, %d concurrent sessions, %.2f s: %.1f registrations/s\n",
           b.ok, b.failed, b.conc, secs, secs > 0 ? b.ok / secs : 0.0);
    printf("one registration (dial, /key, Noise, register): p50 %lld ms, p90 %lld ms, p99 %lld ms, "
           "max %lld ms\n", (long long)pct(b.lat, b.ok, 0.5), (long long)pct(b.lat, b.ok, 0.9),
           (long long)pct(b.lat, b.ok, 0.99), (long long)(b.ok ? b.lat[b.ok - 1] : -1));
    if (b.failed)
        printf("first failure: %s\n", b.first_error);
    if (b.fan > 0 && b.fan_t1) {
        printf("map streams: %d clients had their first full map (%zu peers each) %lld ms after "
               "asking\n", b.fan, b.first_map_peers, (long long)(b.fan_t1 - b.fan_t0));
        printf("\n| change | round | first client | median | p99 | last client | missed |\n");
        printf("| --- | --- | --- | --- | --- | --- | --- |\n");
        for (int c = 0; c < 2; c++)
            for (int r = 0; r < b.round; r++) {
                int64_t *x = b.results[c][r];
                printf("| %s | %d | %lld ms | %lld ms | %lld ms | %lld ms | %d |\n",
                       c == CHANGE_JOIN ? "node joins" : "node logs out", r + 1, (long long)x[0],
                       (long long)x[1], (long long)x[2], (long long)x[3], b.missed[c][r]);
            }
    }
    for (int i = 0; i < b.started; i++) {
        struct node *nd = &b.nodes[i];
        hwc_conn_free(nd->conn);
        if (nd->dec)
            tc_mapdec_free(nd->dec);
        if (nd->streaming)
            tc_netmap_clear(&nd->nm);
        free(nd->body);
    }
    hwc_conn_free(b.changer.conn);
    free(b.changer.body);
    free(b.nodes);
    free(b.fanners);
    free(b.lat);
    json_decref(b.hostinfo);
    hw_loop_free(b.loop);
    int missed = 0;
    for (int c = 0; c < 2; c++)
        for (int r = 0; r < b.round; r++)
            missed += b.missed[c][r];
    return b.failed || missed ? 1 : 0;
}
