/* swarm: many simulated Tailscale nodes in one process, against one control server.
 *
 *   swarm --server http://127.0.0.1:PORT --authkey KEY [-n N] [--concurrency K]
 *         [--server-pid PID] [--hwctl PATH --socket PATH] [--burst B --burst-authkey KEY]
 *         [--restart] [--out FILE] [--deadline SECONDS] ...   (--help lists all)
 *
 * Every node has its own machine, node and disco keys and its own ts2021 connection
 * (client/conn.c: Noise + HTTP/2), registers with the pre-auth key, then holds a
 * streaming /machine/map open and applies every MapResponse to a light netmap: the set
 * of its peers' node ids as a bitmap (a full netmap per node would be 10,000 x 10,000
 * nodes). Messages are read with proto/mapscan (ids and element spans, no tree) or, with
 * --parse jansson, with the full tc_map_update_parse, to compare their cost. Full maps
 * go through a cache of decoded frames first (bench/lib/framecache.h): a block frame the
 * server sent byte for byte to another node is not inflated and scanned again
 * (--no-frame-cache: every frame is).
 *
 * Phases, in order, each printed as one JSON line on stdout (and appended to --out):
 *   burst     B registrations at once in a namespace of their own (an ephemeral key),
 *             without map streams, then logged out (the server deletes them);
 *   register  N registrations with at most K dials+registrations in flight, each node
 *             opening its map stream as soon as it is registered; until every node has
 *             a full map with all the others (converged);
 *   idle      a window with everyone connected: server and swarm CPU, RSS, bytes;
 *   change    per kind (join, endpoints, rename, offline, online, leave, policy): time
 *             from the change until 50/99/100 % of the other connected nodes applied
 *             it, bytes they received, server and swarm CPU;
 *   restart   (--restart) prints {"phase":"restart_ready"}, waits on stdin for
 *             "restarted PID MONO_MS" from the bench script that restarted the server,
 *             and measures until every node has its map stream back with a full map.
 * A human-readable table follows on stdout at the end. Everything stops by itself at
 * --deadline. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "bench/lib/framecache.h"
#include "client/conn.h"
#include "client/url.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/keys.h"
#include "proto/mapframe.h"
#include "proto/mapscan.h"
#include "proto/tailcfg.h"

extern char **environ;

/* Reconnect backoff as hwclient's daemon (and upstream's control client) does it:
 * n^2 x 10 ms after the n-th failure in a row, jittered by 0.5-1.5, capped at 30 s. */
#define BACKOFF_STEP_MS 10
#define BACKOFF_CAP_MS 30000
/* A node that cannot register after this many attempts is counted as failed. */
#define REGISTER_ATTEMPTS 5
/* Register answers are small JSON; map error texts are read up to this. */
#define REG_BODY_MAX (64 * 1024)
#define ERR_TEXT_MAX 160
/* Node ids index a bitmap per node; larger ids are refused rather than allocated. */
#define MAX_NODE_ID (1 << 22)
/* The phase machine looks at the counters this often. */
#define TICK_MS 20
/* Before an idle window or a change: no message other than keep-alives for this long. */
#define QUIET_MS 1000
#define QUIET_MAX_MS 30000
/* headwater announces a node offline this long after its last stream closed
 * (OFFLINE_GRACE_MS in server/control.c), plus its 1 s sweep. */
#define OFFLINE_GRACE_S 11

enum nstate {
    NS_IDLE,        /* not started */
    NS_DIALING,
    NS_REGISTERING,
    NS_WAIT_MAP,    /* map stream requested, no full map yet */
    NS_LIVE,        /* has applied a full map on the current stream */
    NS_BACKOFF,     /* waiting to dial again */
    NS_REGISTERED,  /* registered, no map stream wanted (burst) */
    NS_LOGGING_OUT,
    NS_OFF,         /* closed on purpose */
    NS_GONE,        /* deleted by the admin (leave) */
    NS_FAILED,
};

static const char *state_name[] = {"idle", "dialing", "registering", "wait-map", "live", "backoff",
                                   "registered", "logging-out", "off", "gone", "failed"};

enum role { ROLE_MAIN, ROLE_JOIN, ROLE_BURST };

enum change_kind { CH_JOIN, CH_ENDPOINTS, CH_RENAME, CH_OFFLINE, CH_ONLINE, CH_LEAVE, CH_POLICY, CH_COUNT };
static const char *change_name[CH_COUNT] = {"join", "endpoints", "rename", "offline", "online",
                                            "leave", "policy"};

struct swarm;

struct snode {
    struct swarm *sw;
    int idx;
    enum role role;
    enum nstate state;
    uint8_t machine_priv[32], node_priv[32], disco_pub[32];
    char hostname[48];
    bool registered;
    bool deleting;       /* the admin is deleting it: a closed stream is expected */
    bool want_map;       /* after registering, open a map stream */
    int64_t id;          /* from its own Node */
    struct hwc_conn *conn;
    struct hwc_req *reg, *map, *lite;
    int reg_status, map_status;
    char *reg_body;
    size_t reg_len;
    struct tc_mapdec *dec;
    uint64_t *bits;      /* peer ids */
    uint32_t nwords;
    uint32_t n_peers;
    int64_t t_dial_us, t_reg_us, t_live_us;
    int backoff, attempts;
    struct hw_timer *retry;
    bool slot;           /* holds one of the registration slots */
    bool in_probe, probe_done, restart_wait;
    char err[ERR_TEXT_MAX];
};

struct hwctl_job {
    struct swarm *sw;
    pid_t pid;
    int pidfd;
    int64_t t_start_us;
    int status;          /* -1 until it exited */
    int64_t took_us;
};

struct probe {
    bool active;
    enum change_kind kind;
    struct snode *target;
    int64_t target_id;
    char marker[96];     /* the text the changed element must contain */
    int64_t t0_us, t_end_us;
    size_t population, done;
    int64_t *times;      /* us after t0, one per node that applied it */
    double cpu0, swarm_cpu0;
    uint64_t rx0, msgs0;
    struct hwctl_job *job;
    int64_t timeout_us;
};

struct opts {
    const char *server, *authkey, *burst_authkey;
    int n, k, burst;
    int deadline_s, idle_s, change_timeout_s, phase_timeout_s, reconnect_timeout_s;
    int server_pid;
    const char *hwctl, *socket, *out, *policy_file;
    bool jansson, restart, quiet, no_frame_cache;
    bool changes[CH_COUNT];
};

static void print_table(struct swarm *sw);

enum phase { PH_BURST, PH_BURST_LOGOUT, PH_REGISTER, PH_QUIET, PH_IDLE, PH_CHANGE, PH_CHANGE_WAIT,
             PH_SETTLE, PH_RESTART, PH_DONE };

struct swarm {
    struct opts o;
    struct hw_loop *loop;
    struct hwc_url url;
    uint8_t server_key[32];
    bool have_server_key;
    struct tc_zdec *zdec;
    struct tc_mapscan scan;
    struct fc_cache *fcache;     /* NULL with --no-frame-cache or --parse jansson */
    struct fc_stats fc_emitted;  /* its counters at the last phase line */
    struct snode *nodes;     /* n main, 1 joiner, burst */
    size_t n_nodes;
    struct snode *joiner;
    size_t burst_first;

    /* registration scheduling: at most limit dials+registrations in flight */
    size_t *queue;
    size_t q_head, q_len;
    int inflight, limit;

    /* counters */
    uint64_t rx_bytes, msgs, keepalives;
    double parse_s;
    int64_t t_last_msg_us;   /* last message that was not a keep-alive */
    size_t n_live, n_registered_main, n_failed_main, n_converged;
    size_t reconnects;
    int64_t *lat;            /* registration latencies of the running phase */
    size_t n_lat;
    int64_t ph_t0_us, ph_first_us, ph_last_reg_us, ph_all_live_us, ph_deadline_us;
    size_t ph_registered, ph_failed;

    enum phase phase, after_quiet;
    int change_next;         /* index into change kinds */
    struct probe probe;
    int64_t *probe_times;
    struct snode *offline_node;
    int64_t wait_until_us, idle_t0_us, ph_converged_us, last_progress_us;
    /* counters at the start of the running phase */
    double cpu0, swarm_cpu0;
    uint64_t rx0, msgs0, ka0;
    size_t reconnects0;

    /* restart */
    bool restart_started, restart_line;
    int64_t restart_t0_us, restart_drop_us;
    size_t restart_expected, restart_back;
    int64_t *restart_times;
    char stdin_buf[256];
    size_t stdin_len;
    bool stdin_watched;

    struct hw_timer *tick, *deadline;
    int sigfd;
    int exit_code;
    FILE *out;
    json_t *results;         /* every phase object, for the closing table */
    int seq;
};

static void node_dial(struct snode *n);
static void node_drop(struct snode *n, const char *why);
static void phase_step(struct swarm *sw);

/* ---- small helpers ---- */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double secs(int64_t us) { return (double)us / 1e6; }

static struct swarm *g_sw; /* only for the progress log's clock */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    if (g_sw && g_sw->o.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "swarm: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* utime+stime of a process in seconds, -1 when unknown. */
static double proc_cpu_s(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    char *text = hw_read_file(path, NULL);
    if (!text)
        return -1;
    /* The command name may hold spaces and parentheses: fields count from the last ')'. */
    char *p = strrchr(text, ')');
    unsigned long long ut = 0, st = 0;
    int got = p ? sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) : 0;
    free(text);
    if (got != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS in MiB, -1 when unknown. pid 0 = this process. */
static double proc_rss_mib(int pid)
{
    char path[64];
    if (pid > 0)
        snprintf(path, sizeof path, "/proc/%d/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    char *text = hw_read_file(path, NULL);
    if (!text)
        return -1;
    char *p = strstr(text, "VmRSS:");
    long kib = p ? strtol(p + 6, NULL, 10) : -1;
    free(text);
    return kib < 0 ? -1 : (double)kib / 1024.0;
}

static json_t *num_or_null(double v, bool valid)
{
    return valid ? json_real((double)(int64_t)(v * 1000.0 + (v >= 0 ? 0.5 : -0.5)) / 1000.0) : json_null();
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The time by which a fraction q of population had it: the ceil(q*population)-th
 * smallest of the times (sorted); null when fewer than that many got there. */
static json_t *pct_ms(const int64_t *sorted, size_t done, size_t population, double q)
{
    if (population == 0)
        return json_null();
    size_t k = (size_t)((double)population * q + 0.999999);
    if (k == 0)
        k = 1;
    if (k > done)
        return json_null();
    return num_or_null((double)sorted[k - 1] / 1000.0, true);
}

/* The frame cache's counters since the previous phase line (stored_mib: now). */
static json_t *frame_cache_json(const struct fc_stats *now, const struct fc_stats *before)
{
    json_t *o = json_object();
    json_object_set_new(o, "hits", json_integer((json_int_t)(now->hits - before->hits)));
    json_object_set_new(o, "misses", json_integer((json_int_t)(now->misses - before->misses)));
    json_object_set_new(o, "maps", json_integer((json_int_t)(now->maps - before->maps)));
    json_object_set_new(o, "fallbacks", json_integer((json_int_t)(now->fallbacks - before->fallbacks)));
    json_object_set_new(o, "evictions", json_integer((json_int_t)(now->evictions - before->evictions)));
    json_object_set_new(o, "json_bytes_skipped", json_integer((json_int_t)(now->hit_bytes - before->hit_bytes)));
    json_object_set_new(o, "zstd_bytes_matched", json_integer((json_int_t)(now->hit_zbytes - before->hit_zbytes)));
    json_object_set_new(o, "stored_mib", num_or_null((double)now->stored_bytes / 1048576.0, true));
    return o;
}

static void emit(struct swarm *sw, json_t *obj)
{
    if (sw->fcache) {
        const struct fc_stats *now = fc_stats(sw->fcache);
        json_object_set_new(obj, "frame_cache", frame_cache_json(now, &sw->fc_emitted));
        sw->fc_emitted = *now;
    } else {
        json_object_set_new(obj, "frame_cache", json_null());
    }
    json_object_set_new(obj, "server_rss_mib", num_or_null(proc_rss_mib(sw->o.server_pid),
                                                          sw->o.server_pid > 0));
    json_object_set_new(obj, "swarm_rss_mib", num_or_null(proc_rss_mib(0), true));
    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    printf("%s\n", text);
    fflush(stdout);
    if (sw->out) {
        fprintf(sw->out, "%s\n", text);
        fflush(sw->out);
    }
    free(text);
    json_array_append_new(sw->results, obj);
}

/* ---- the light netmap ---- */

static bool peer_has(const struct snode *n, int64_t id)
{
    if (id <= 0 || (uint64_t)id / 64 >= n->nwords)
        return false;
    return n->bits[id / 64] >> (id % 64) & 1;
}

static int peer_set(struct snode *n, int64_t id)
{
    if (id <= 0 || id >= MAX_NODE_ID) {
        snprintf(n->err, sizeof n->err, "peer id %lld outside 1..%d (the swarm's bitmap bound)",
                 (long long)id, MAX_NODE_ID - 1);
        return -1;
    }
    uint32_t w = (uint32_t)(id / 64);
    if (w >= n->nwords) {
        uint32_t nw = n->nwords ? n->nwords : 16;
        while (nw <= w)
            nw *= 2;
        n->bits = realloc(n->bits, nw * sizeof *n->bits);
        if (!n->bits)
            abort();
        memset(n->bits + n->nwords, 0, (nw - n->nwords) * sizeof *n->bits);
        n->nwords = nw;
    }
    uint64_t m = 1ull << (id % 64);
    if (!(n->bits[w] & m)) {
        n->bits[w] |= m;
        n->n_peers++;
    }
    return 0;
}

static void peer_clear(struct snode *n, int64_t id)
{
    if (!peer_has(n, id))
        return;
    n->bits[id / 64] &= ~(1ull << (id % 64));
    n->n_peers--;
}

static void peers_reset(struct snode *n)
{
    if (n->bits)
        memset(n->bits, 0, n->nwords * sizeof *n->bits);
    n->n_peers = 0;
}

/* ---- what a change looks like in a message ---- */

/* Does the element (a node or a PeerChange) for the probe's target say what the change
 * made of it? JOIN has no id yet (the joiner learns its own only from its map): any
 * element with the joiner's host name. */
static bool span_hit(const struct probe *p, const char *json, const struct tc_mapscan_item *it)
{
    if (p->kind != CH_JOIN && it->id != p->target_id)
        return false;
    return memmem(json + it->off, it->len, p->marker, strlen(p->marker)) != NULL;
}

static bool probe_hit_scan(const struct probe *p, const struct tc_mapscan *s, const char *json, size_t len)
{
    if (p->kind == CH_POLICY)
        return s->has_packet_filter;
    /* The marker must be in the message at all; most messages are ruled out here. */
    if (!memmem(json, len, p->marker, strlen(p->marker)))
        return false;
    const struct tc_mapscan_list *lists[] = {&s->peers, &s->peers_changed, &s->patches};
    for (size_t l = 0; l < HW_ARRAY_LEN(lists); l++)
        for (size_t i = 0; i < lists[l]->n; i++)
            if (span_hit(p, json, &lists[l]->v[i]))
                return true;
    if (p->kind == CH_OFFLINE || p->kind == CH_ONLINE)
        for (size_t i = 0; i < s->online_change.n; i++)
            if (s->online_change.v[i].id == p->target_id &&
                memmem(json + s->online_change.v[i].off, s->online_change.v[i].len,
                       p->kind == CH_ONLINE ? "true" : "false", p->kind == CH_ONLINE ? 4 : 5))
                return true;
    return false;
}

static bool strv_has(const struct tc_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->v[i], s) == 0)
            return true;
    return false;
}

/* The same questions on a fully parsed message. The markers are JSON text; the parsed
 * forms compare the value inside them. */
static bool node_hit(const struct probe *p, const struct tc_node *nd, const char *value)
{
    switch (p->kind) {
    case CH_JOIN: {
        const char *h = json_string_value(json_object_get(nd->hostinfo, "Hostname"));
        return h && strcmp(h, value) == 0;
    }
    case CH_RENAME:
        return nd->id == p->target_id && nd->name && strncmp(nd->name, value, strlen(value)) == 0;
    case CH_ENDPOINTS:
        return nd->id == p->target_id && strv_has(&nd->endpoints, value);
    case CH_OFFLINE:
        return nd->id == p->target_id && nd->online == TC_FALSE;
    case CH_ONLINE:
        return nd->id == p->target_id && nd->online == TC_TRUE;
    default:
        return false;
    }
}

static bool probe_hit_parsed(const struct probe *p, const struct tc_map_update *u, const char *value)
{
    if (p->kind == CH_POLICY)
        return u->packet_filter || u->packet_filters;
    for (size_t i = 0; i < u->n_peers; i++)
        if (node_hit(p, &u->peers[i], value))
            return true;
    for (size_t i = 0; i < u->n_peers_changed; i++)
        if (node_hit(p, &u->peers_changed[i], value))
            return true;
    for (size_t i = 0; i < u->n_patches; i++) {
        const struct tc_peer_change *pc = &u->patches[i];
        if (pc->node_id != p->target_id)
            continue;
        if ((p->kind == CH_ENDPOINTS && pc->endpoints_set && strv_has(&pc->endpoints, value)) ||
            (p->kind == CH_OFFLINE && pc->online == TC_FALSE) ||
            (p->kind == CH_ONLINE && pc->online == TC_TRUE))
            return true;
    }
    for (size_t i = 0; i < u->n_online_change; i++)
        if (u->online_change[i].id == p->target_id &&
            ((p->kind == CH_OFFLINE && !u->online_change[i].value) ||
             (p->kind == CH_ONLINE && u->online_change[i].value)))
            return true;
    return false;
}

/* ---- applying a message ---- */

static void node_became_live(struct snode *n, int64_t t)
{
    struct swarm *sw = n->sw;
    n->state = NS_LIVE;
    n->t_live_us = t;
    n->backoff = 0;
    sw->n_live++;
    if (n->restart_wait) {
        n->restart_wait = false;
        sw->restart_times[sw->restart_back++] = t;
    }
}

static int on_map_message(const char *json, size_t len, void *arg)
{
    struct snode *n = arg;
    struct swarm *sw = n->sw;
    int64_t t = now_us();
    sw->msgs++;
    struct probe *p = &sw->probe;
    bool watching = p->active && n->in_probe && !n->probe_done;
    bool hit = false;
    bool has_node = false;
    char err[TC_ERRLEN];
    int rc = 0;
    if (!sw->o.jansson) {
        struct tc_mapscan *s = &sw->scan;
        rc = tc_mapscan_run(s, json, len, err, sizeof err);
        if (rc == 0) {
            if (s->keep_alive) {
                sw->keepalives++;
                sw->parse_s += secs(now_us() - t);
                return 0;
            }
            if (s->has_node) {
                has_node = true;
                n->id = s->node.id;
            }
            if (s->peers.n > 0) {
                peers_reset(n);
                for (size_t i = 0; i < s->peers.n && rc == 0; i++)
                    rc = peer_set(n, s->peers.v[i].id);
            } else {
                for (size_t i = 0; i < s->peers_changed.n && rc == 0; i++)
                    rc = peer_set(n, s->peers_changed.v[i].id);
                for (size_t i = 0; i < s->n_removed; i++)
                    peer_clear(n, s->removed[i]);
            }
            if (watching && p->kind != CH_JOIN && p->kind != CH_LEAVE)
                hit = probe_hit_scan(p, s, json, len);
            else if (watching && p->kind == CH_JOIN)
                hit = probe_hit_scan(p, s, json, len);
            if (rc < 0)
                snprintf(err, sizeof err, "%s", n->err);
        }
    } else {
        struct tc_map_update u;
        rc = tc_map_update_parse((const uint8_t *)json, len, TC_MAPFRAME_MAX, &u, err, sizeof err);
        if (rc == 0) {
            if (u.keep_alive) {
                sw->keepalives++;
                tc_map_update_free(&u);
                sw->parse_s += secs(now_us() - t);
                return 0;
            }
            if (u.has_node) {
                has_node = true;
                n->id = u.node.id;
            }
            if (u.n_peers > 0) {
                peers_reset(n);
                for (size_t i = 0; i < u.n_peers && rc == 0; i++)
                    rc = peer_set(n, u.peers[i].id);
            } else {
                for (size_t i = 0; i < u.n_peers_changed && rc == 0; i++)
                    rc = peer_set(n, u.peers_changed[i].id);
                for (size_t i = 0; i < u.n_peers_removed; i++)
                    peer_clear(n, u.peers_removed[i]);
            }
            if (watching && p->kind != CH_LEAVE) {
                /* the value inside the marker's quotes: "Name":"x. -> x. ; "ep" -> ep */
                char value[96];
                const char *m = p->marker;
                if (p->kind == CH_RENAME)
                    m += strlen("\"Name\":\"");
                else if (p->kind == CH_JOIN)
                    m += strlen("\"Hostname\":\"");
                else if (*m == '"')
                    m++;
                snprintf(value, sizeof value, "%s", m);
                size_t vl = strlen(value);
                if (vl && value[vl - 1] == '"')
                    value[vl - 1] = '\0';
                hit = probe_hit_parsed(p, &u, value);
            }
            if (rc < 0)
                snprintf(err, sizeof err, "%s", n->err);
            tc_map_update_free(&u);
        }
    }
    sw->parse_s += secs(now_us() - t);
    if (rc < 0) {
        snprintf(n->err, sizeof n->err, "map message: %.120s", err);
        hwc_conn_fail_soon(n->conn, n->err);
        return 1;
    }
    sw->t_last_msg_us = t;
    if (n->state == NS_WAIT_MAP && has_node)
        node_became_live(n, t);
    if (watching) {
        if (p->kind == CH_LEAVE)
            hit = !peer_has(n, p->target_id);
        if (hit) {
            n->probe_done = true;
            p->times[p->done++] = t - p->t0_us;
        }
    }
    return 0;
}

/* A full map whose peer blocks the frame cache read (fc_read: every byte of every
 * frame compared or inflated and scanned): applied as on_map_message applies the same
 * message fully decoded. */
static int apply_cached_map(struct snode *n, const struct fc_map *m, int64_t t)
{
    struct swarm *sw = n->sw;
    sw->msgs++;
    n->id = m->node_id;
    peers_reset(n);
    int rc = 0;
    for (size_t b = 0; b < m->n_blocks && rc == 0; b++)
        for (size_t i = 0; i < m->n_ids[b] && rc == 0; i++)
            rc = peer_set(n, m->ids[b][i]);
    sw->parse_s += secs(now_us() - t);
    if (rc < 0) {
        char err[ERR_TEXT_MAX];
        snprintf(err, sizeof err, "%s", n->err);
        snprintf(n->err, sizeof n->err, "map message: %.120s", err);
        hwc_conn_fail_soon(n->conn, n->err);
        return 2; /* stops the feed, as on_map_message's failure does */
    }
    sw->t_last_msg_us = t;
    if (n->state == NS_WAIT_MAP)
        node_became_live(n, t);
    return TC_MAPDEC_PAYLOAD_DONE;
}

/* Every complete payload before it is inflated (tc_mapdec's hook): a full map made of
 * frames the cache can read goes the short way; everything else, and every message to
 * a node a change probe is watching, is inflated and read by on_map_message. */
static int on_map_payload(const uint8_t *payload, size_t len, void *arg)
{
    struct snode *n = arg;
    struct swarm *sw = n->sw;
    const struct probe *p = &sw->probe;
    if (p->active && n->in_probe && !n->probe_done)
        return TC_MAPDEC_PAYLOAD_INFLATE;
    int64_t t = now_us();
    struct fc_map m;
    if (fc_read(sw->fcache, payload, len, TC_MAPFRAME_MAX, &m) != FC_MAP) {
        sw->parse_s += secs(now_us() - t);
        return TC_MAPDEC_PAYLOAD_INFLATE;
    }
    return apply_cached_map(n, &m, t);
}

/* ---- requests ---- */

static void reg_response(struct hwc_req *r, int status, void *arg)
{
    struct snode *n = arg;
    n->reg_status = status;
}

static void reg_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct snode *n = arg;
    if (n->reg_len + len > REG_BODY_MAX) {
        hwc_conn_fail_soon(n->conn, "register answer too large");
        return;
    }
    n->reg_body = realloc(n->reg_body, n->reg_len + len + 1);
    if (!n->reg_body)
        abort();
    memcpy(n->reg_body + n->reg_len, data, len);
    n->reg_len += len;
    n->reg_body[n->reg_len] = '\0';
}

static void release_slot(struct snode *n);
static void send_map(struct snode *n);

static void node_fail(struct snode *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void node_fail(struct snode *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n->err, sizeof n->err, fmt, ap);
    va_end(ap);
    if (n->state == NS_LIVE)
        n->sw->n_live--;
    n->state = NS_FAILED;
    if (n->role == ROLE_MAIN)
        n->sw->n_failed_main++;
    n->sw->ph_failed++;
    release_slot(n);
    say("node %d failed: %s", n->idx, n->err);
}

static void reg_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct snode *n = arg;
    struct swarm *sw = n->sw;
    n->reg = NULL;
    if (n->state == NS_LOGGING_OUT) {
        /* Answered or not, the node is done: the socket goes in node_drop. */
        n->state = NS_OFF;
        hwc_conn_fail_soon(n->conn, "logged out");
        return;
    }
    struct tc_register_response resp;
    char err[TC_ERRLEN];
    if (code != 0 || n->reg_status != 200) {
        char excerpt[100] = "";
        if (n->reg_body)
            snprintf(excerpt, sizeof excerpt, "%s", n->reg_body);
        snprintf(n->err, sizeof n->err, "register: HTTP %d (h2 code %u) %s", n->reg_status, code, excerpt);
        hwc_conn_fail_soon(n->conn, n->err);
        return;
    }
    if (tc_register_response_parse((const uint8_t *)(n->reg_body ? n->reg_body : ""), n->reg_len, &resp,
                                   err, sizeof err) < 0) {
        snprintf(n->err, sizeof n->err, "register: %.120s", err);
        hwc_conn_fail_soon(n->conn, n->err);
        return;
    }
    const char *problem = resp.error && *resp.error ? resp.error
                        : resp.auth_url && *resp.auth_url ? "the server wants an interactive login (auth key refused?)"
                        : resp.node_key_expired ? "the server calls the new node key expired"
                        : !resp.machine_authorized ? "the machine awaits approval"
                        : NULL;
    if (problem) {
        node_fail(n, "register refused: %s", problem);
        tc_register_response_free(&resp);
        hwc_conn_fail_soon(n->conn, n->err);
        return;
    }
    tc_register_response_free(&resp);
    int64_t t = now_us();
    n->registered = true;
    n->t_reg_us = t;
    n->attempts = 0;
    sw->lat[sw->n_lat++] = t - n->t_dial_us;
    sw->ph_registered++;
    sw->ph_last_reg_us = t;
    if (n->role == ROLE_MAIN)
        sw->n_registered_main++;
    release_slot(n);
    if (n->want_map)
        send_map(n);
    else
        n->state = NS_REGISTERED;
}

static const struct hwc_req_handler reg_handler = {
    .on_response = reg_response, .on_data = reg_data, .on_close = reg_close};

static json_t *hostinfo_of(struct snode *n)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "Hostname", n->hostname, "OS", "linux", "IPNVersion",
                     "swarm", "GoArch", "amd64");
}

static void post_register(struct snode *n, bool logout)
{
    struct swarm *sw = n->sw;
    uint8_t pub[32];
    hw_key_public(n->node_priv, pub);
    json_t *hi = hostinfo_of(n);
    struct tc_register_request_build b = {
        .version = TC_CAPVER,
        .node_key = pub,
        .hostinfo = hi,
        .auth_key = logout ? NULL : n->role == ROLE_BURST ? sw->o.burst_authkey : sw->o.authkey,
    };
    if (logout)
        b.expiry = tc_time_from_unix(123); /* upstream's logout instant */
    json_t *j = tc_register_request_to_json(&b);
    json_decref(hi);
    size_t len;
    char *body = tc_json_dump(j, &len);
    json_decref(j);
    free(n->reg_body);
    n->reg_body = NULL;
    n->reg_len = 0;
    n->reg_status = 0;
    n->state = logout ? NS_LOGGING_OUT : NS_REGISTERING;
    n->reg = hwc_conn_post(n->conn, "/machine/register", body, len, &reg_handler, n);
    free(body);
    if (!n->reg)
        hwc_conn_fail_soon(n->conn, "HTTP/2 refused the register request");
}

static void map_response(struct hwc_req *r, int status, void *arg)
{
    struct snode *n = arg;
    n->map_status = status;
}

static void map_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct snode *n = arg;
    n->sw->rx_bytes += len;
    if (n->map_status != 200) {
        size_t have = strlen(n->err);
        size_t take = sizeof n->err - 1 - have < len ? sizeof n->err - 1 - have : len;
        memcpy(n->err + have, data, take);
        n->err[have + take] = '\0';
        return;
    }
    int rc = tc_mapdec_feed(n->dec, data, len, on_map_message, n);
    if (rc == -1) {
        snprintf(n->err, sizeof n->err, "map stream: %s", tc_mapdec_error(n->dec));
        hwc_conn_fail_soon(n->conn, n->err);
    }
}

static void map_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct snode *n = arg;
    n->map = NULL;
    if (n->deleting) {
        hwc_conn_fail_soon(n->conn, "deleted by the admin");
        return;
    }
    if (n->map_status != 200) {
        char text[ERR_TEXT_MAX];
        snprintf(text, sizeof text, "%s", n->err);
        snprintf(n->err, sizeof n->err, "map refused: HTTP %d: %.100s", n->map_status, text);
    } else {
        snprintf(n->err, sizeof n->err, "map stream ended by the server (h2 code %u)", code);
    }
    hwc_conn_fail_soon(n->conn, n->err);
}

static const struct hwc_req_handler map_handler = {
    .on_response = map_response, .on_data = map_data, .on_close = map_close};

static void map_request(struct snode *n, bool stream, const char *endpoint, json_t **out)
{
    uint8_t pub[32];
    hw_key_public(n->node_priv, pub);
    json_t *hi = hostinfo_of(n);
    const char *eps[1] = {endpoint};
    struct tc_map_request_build b = {
        .version = TC_CAPVER,
        .compress_zstd = stream,
        .keep_alive = stream,
        .node_key = pub,
        .disco_key = n->disco_pub,
        .stream = stream,
        .omit_peers = !stream,
        .hostinfo = hi,
        .endpoints = eps,
        .n_endpoints = 1,
    };
    *out = tc_map_request_to_json(&b);
    json_decref(hi);
}

static void send_map(struct snode *n)
{
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", 41641 + n->idx % 20000);
    json_t *j;
    map_request(n, true, ep, &j);
    size_t len;
    char *body = tc_json_dump(j, &len);
    json_decref(j);
    tc_mapdec_free(n->dec);
    n->dec = tc_mapdec_new_shared(n->sw->zdec, 0);
    if (n->sw->fcache)
        tc_mapdec_set_payload_hook(n->dec, on_map_payload);
    n->map_status = 0;
    n->err[0] = '\0';
    n->state = NS_WAIT_MAP;
    n->map = hwc_conn_post(n->conn, "/machine/map", body, len, &map_handler, n);
    free(body);
    if (!n->map)
        hwc_conn_fail_soon(n->conn, "HTTP/2 refused the map request");
}

static void lite_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct snode *n = arg;
    n->lite = NULL;
    if (code != 0)
        say("node %d: lite map update reset (h2 code %u)", n->idx, code);
}

static const struct hwc_req_handler lite_handler = {.on_close = lite_close};

static bool send_lite_update(struct snode *n, const char *endpoint)
{
    if (!n->conn || !hwc_conn_ready(n->conn))
        return false;
    json_t *j;
    map_request(n, false, endpoint, &j);
    size_t len;
    char *body = tc_json_dump(j, &len);
    json_decref(j);
    n->lite = hwc_conn_post(n->conn, "/machine/map", body, len, &lite_handler, n);
    free(body);
    return n->lite != NULL;
}

/* ---- connections ---- */

static void on_ready(struct hwc_conn *c, void *arg)
{
    struct snode *n = arg;
    struct swarm *sw = n->sw;
    if (!sw->have_server_key) {
        memcpy(sw->server_key, hwc_conn_server_key(c), 32);
        sw->have_server_key = true;
    }
    if (!n->registered)
        post_register(n, false);
    else if (n->state == NS_LOGGING_OUT)
        post_register(n, true);
    else
        send_map(n);
}

static void retry_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct snode *n = arg;
    n->retry = NULL;
    node_dial(n);
}

static void on_fail(struct hwc_conn *c, const char *why, void *arg)
{
    node_drop(arg, why);
}

static const struct hwc_conn_callbacks conn_cb = {.on_ready = on_ready, .on_fail = on_fail};

static void close_conn(struct snode *n)
{
    hwc_conn_free(n->conn);
    n->conn = NULL;
    n->reg = n->map = n->lite = NULL;
    tc_mapdec_free(n->dec);
    n->dec = NULL;
}

/* The connection is gone (from on_fail, a timer: freeing it here is allowed). */
static void node_drop(struct snode *n, const char *why_text)
{
    struct swarm *sw = n->sw;
    /* why_text lives in the connection, which goes now */
    char why_buf[ERR_TEXT_MAX];
    snprintf(why_buf, sizeof why_buf, "%s", why_text ? why_text : "");
    const char *why = why_text ? why_buf : NULL;
    close_conn(n);
    if (n->state == NS_LIVE)
        sw->n_live--;
    if (n->state == NS_OFF || n->state == NS_FAILED)
        return;
    if (n->deleting) {
        n->state = NS_GONE;
        return;
    }
    if (n->state == NS_LOGGING_OUT) {
        n->state = NS_OFF;
        return;
    }
    if (why)
        snprintf(n->err, sizeof n->err, "%s", why);
    if (!n->registered && ++n->attempts >= REGISTER_ATTEMPTS) {
        node_fail(n, "no registration after %d attempts: %s", n->attempts, why ? why : "?");
        return;
    }
    if (n->registered) {
        sw->reconnects++;
        if (sw->phase == PH_RESTART && !sw->restart_drop_us)
            sw->restart_drop_us = now_us();
    }
    if (n->backoff < 1000)
        n->backoff++;
    double ms = (double)BACKOFF_STEP_MS * n->backoff * n->backoff;
    if (ms > BACKOFF_CAP_MS)
        ms = BACKOFF_CAP_MS;
    ms *= 0.5 + randombytes_uniform(1000) / 1000.0;
    n->state = NS_BACKOFF;
    n->retry = hw_timer_start(sw->loop, (int64_t)ms, retry_cb, n);
}

static void node_dial(struct snode *n)
{
    struct swarm *sw = n->sw;
    n->state = NS_DIALING;
    if (!n->registered)
        n->t_dial_us = now_us();
    n->conn = sw->have_server_key
                  ? hwc_conn_dial_key(sw->loop, &sw->url, n->machine_priv, TC_CAPVER, sw->server_key,
                                      &conn_cb, n)
                  : hwc_conn_dial(sw->loop, &sw->url, n->machine_priv, TC_CAPVER, &conn_cb, n);
}

/* ---- registration scheduling ---- */

static void pump(struct swarm *sw)
{
    while (sw->inflight < sw->limit && sw->q_head < sw->q_len) {
        struct snode *n = &sw->nodes[sw->queue[sw->q_head++]];
        sw->inflight++;
        n->slot = true;
        node_dial(n);
    }
}

static void release_slot(struct snode *n)
{
    if (!n->slot)
        return;
    n->slot = false;
    n->sw->inflight--;
    pump(n->sw);
}

static void start_registrations(struct swarm *sw, size_t first, size_t count, int limit, bool want_map)
{
    sw->q_head = sw->q_len = 0;
    for (size_t i = 0; i < count; i++) {
        sw->nodes[first + i].want_map = want_map;
        sw->queue[sw->q_len++] = first + i;
    }
    sw->inflight = 0;
    sw->limit = limit;
    sw->n_lat = 0;
    sw->ph_registered = sw->ph_failed = 0;
    sw->ph_t0_us = now_us();
    sw->ph_last_reg_us = 0;
    pump(sw);
}

/* ---- hwctl ---- */

static void hwctl_exited(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwctl_job *job = arg;
    int st = 0;
    if (waitpid(job->pid, &st, WNOHANG) == 0)
        return;
    hw_loop_remove(loop, fd);
    close(fd);
    job->pidfd = -1;
    job->took_us = now_us() - job->t_start_us;
    job->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    phase_step(job->sw);
}

/* Runs hwctl --socket S ARGS... without blocking the loop; the exit is seen through a
 * pidfd. stdout goes to /dev/null, stderr stays ours. */
static struct hwctl_job *hwctl_run(struct swarm *sw, const char *const *args)
{
    const char *argv[16];
    size_t k = 0;
    argv[k++] = sw->o.hwctl;
    argv[k++] = "--socket";
    argv[k++] = sw->o.socket;
    for (size_t i = 0; args[i] && k < HW_ARRAY_LEN(argv) - 1; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    struct hwctl_job *job = hw_calloc(1, sizeof *job);
    job->sw = sw;
    job->status = -1;
    job->pidfd = -1;
    job->t_start_us = now_us();
    int rc = posix_spawn(&job->pid, sw->o.hwctl, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        say("cannot run %s: %s", sw->o.hwctl, strerror(rc));
        job->status = 127;
        return job;
    }
    job->pidfd = (int)syscall(SYS_pidfd_open, job->pid, 0);
    if (job->pidfd < 0) {
        /* No pidfd (kernel < 5.3): wait here; hwctl answers in milliseconds. */
        int st = 0;
        waitpid(job->pid, &st, 0);
        job->took_us = now_us() - job->t_start_us;
        job->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        return job;
    }
    hw_loop_add(sw->loop, job->pidfd, HW_EV_READ, hwctl_exited, job);
    return job;
}

static void hwctl_job_free(struct swarm *sw, struct hwctl_job *job)
{
    if (!job)
        return;
    if (job->pidfd >= 0) {
        hw_loop_remove(sw->loop, job->pidfd);
        close(job->pidfd);
        kill(job->pid, SIGKILL);
        waitpid(job->pid, NULL, 0);
    }
    free(job);
}

/* ---- phases ---- */

static void lat_stats(struct swarm *sw, json_t *obj)
{
    qsort(sw->lat, sw->n_lat, sizeof *sw->lat, cmp_i64);
    json_object_set_new(obj, "latency_ms_p50", pct_ms(sw->lat, sw->n_lat, sw->n_lat, 0.5));
    json_object_set_new(obj, "latency_ms_p99", pct_ms(sw->lat, sw->n_lat, sw->n_lat, 0.99));
    json_object_set_new(obj, "latency_ms_max", pct_ms(sw->lat, sw->n_lat, sw->n_lat, 1.0));
}

static void add_errors(struct swarm *sw, json_t *obj, size_t first, size_t count, bool failed_only)
{
    json_t *arr = json_array();
    for (size_t i = first; i < first + count && json_array_size(arr) < 10; i++) {
        struct snode *n = &sw->nodes[i];
        if (failed_only && n->state != NS_FAILED)
            continue;
        json_array_append_new(arr, json_pack("{s:i, s:s, s:s}", "node", n->idx, "state",
                                             state_name[n->state], "error", n->err));
    }
    json_object_set_new(obj, "stragglers", arr);
}


static void set_phase(struct swarm *sw, enum phase ph)
{
    sw->phase = ph;
    sw->ph_deadline_us = now_us() + (int64_t)sw->o.phase_timeout_s * 1000000;
}

static void begin_register(struct swarm *sw);

static void begin_burst(struct swarm *sw)
{
    say("burst: %d registrations at once (namespace of the burst key, no map streams)", sw->o.burst);
    set_phase(sw, PH_BURST);
    sw->cpu0 = proc_cpu_s(sw->o.server_pid);
    sw->swarm_cpu0 = self_cpu_s();
    start_registrations(sw, sw->burst_first, (size_t)sw->o.burst, sw->o.burst, false);
}

static void step_burst(struct swarm *sw, int64_t now)
{
    if (sw->ph_registered + sw->ph_failed < (size_t)sw->o.burst && now < sw->ph_deadline_us)
        return;
    double span = secs((sw->ph_last_reg_us ? sw->ph_last_reg_us : now) - sw->ph_t0_us);
    json_t *o = json_pack("{s:s, s:i, s:i, s:I, s:I}", "phase", "burst", "nodes", sw->o.burst,
                          "concurrency", sw->o.burst, "registered", (json_int_t)sw->ph_registered,
                          "failed", (json_int_t)sw->ph_failed);
    json_object_set_new(o, "seconds", num_or_null(span, true));
    json_object_set_new(o, "reg_per_s", num_or_null(span > 0 ? (double)sw->ph_registered / span : 0, span > 0));
    lat_stats(sw, o);
    double cpu = proc_cpu_s(sw->o.server_pid);
    json_object_set_new(o, "server_cpu_s", num_or_null(cpu - sw->cpu0, cpu >= 0));
    json_object_set_new(o, "swarm_cpu_s", num_or_null(self_cpu_s() - sw->swarm_cpu0, true));
    add_errors(sw, o, sw->burst_first, (size_t)sw->o.burst, true);
    emit(sw, o);
    /* Log them out: the key is ephemeral, so the server deletes them and the tailnet
     * measured next holds only the N main nodes. */
    for (size_t i = sw->burst_first; i < sw->burst_first + (size_t)sw->o.burst; i++) {
        struct snode *n = &sw->nodes[i];
        if (n->state == NS_REGISTERED && n->conn && hwc_conn_ready(n->conn)) {
            post_register(n, true);
        } else if (n->state != NS_FAILED) {
            if (n->retry)
                hw_timer_cancel(sw->loop, n->retry);
            n->retry = NULL;
            close_conn(n);
            n->state = NS_OFF;
        }
    }
    set_phase(sw, PH_BURST_LOGOUT);
}

static void step_burst_logout(struct swarm *sw, int64_t now)
{
    size_t waiting = 0;
    for (size_t i = sw->burst_first; i < sw->burst_first + (size_t)sw->o.burst; i++)
        waiting += sw->nodes[i].state == NS_LOGGING_OUT;
    if (waiting && now < sw->ph_deadline_us)
        return;
    if (waiting)
        say("burst: %zu logouts unanswered; closing them", waiting);
    for (size_t i = sw->burst_first; i < sw->burst_first + (size_t)sw->o.burst; i++) {
        struct snode *n = &sw->nodes[i];
        if (n->state != NS_FAILED) {
            close_conn(n);
            n->state = NS_OFF;
        }
    }
    begin_register(sw);
}

static void begin_register(struct swarm *sw)
{
    say("register: %d nodes, at most %d dials+registrations in flight", sw->o.n, sw->o.k);
    set_phase(sw, PH_REGISTER);
    sw->cpu0 = proc_cpu_s(sw->o.server_pid);
    sw->swarm_cpu0 = self_cpu_s();
    sw->rx0 = sw->rx_bytes;
    sw->msgs0 = sw->msgs;
    sw->ph_all_live_us = sw->ph_converged_us = 0;
    start_registrations(sw, 0, (size_t)sw->o.n, sw->o.k, true);
}

static void begin_quiet(struct swarm *sw, enum phase next)
{
    set_phase(sw, PH_QUIET);
    sw->after_quiet = next;
    sw->wait_until_us = now_us() + (int64_t)QUIET_MAX_MS * 1000;
}

static void step_register(struct swarm *sw, int64_t now)
{
    bool regs_done = sw->ph_registered + sw->ph_failed >= (size_t)sw->o.n;
    size_t live = 0, converged = 0;
    uint32_t want = sw->n_registered_main ? (uint32_t)sw->n_registered_main - 1 : 0;
    uint32_t peers_min = UINT32_MAX, peers_max = 0;
    for (int i = 0; i < sw->o.n; i++) {
        const struct snode *n = &sw->nodes[i];
        if (n->state == NS_LIVE) {
            live++;
            converged += n->n_peers >= want;
            peers_min = n->n_peers < peers_min ? n->n_peers : peers_min;
            peers_max = n->n_peers > peers_max ? n->n_peers : peers_max;
        }
    }
    if (regs_done && !sw->ph_all_live_us && live >= sw->n_registered_main)
        sw->ph_all_live_us = now;
    if (regs_done && !sw->ph_converged_us && converged >= sw->n_registered_main)
        sw->ph_converged_us = now;
    if (!sw->ph_converged_us && now < sw->ph_deadline_us) {
        if (now - sw->last_progress_us > 5000000) {
            sw->last_progress_us = now;
            say("register: %zu registered, %zu failed, %zu live, %zu converged, %.1f s", sw->ph_registered,
                sw->ph_failed, live, converged, secs(now - sw->ph_t0_us));
        }
        return;
    }
    double span = secs((sw->ph_last_reg_us ? sw->ph_last_reg_us : now) - sw->ph_t0_us);
    json_t *o = json_pack("{s:s, s:i, s:i, s:I, s:I}", "phase", "register", "nodes", sw->o.n,
                          "concurrency", sw->o.k, "registered", (json_int_t)sw->ph_registered,
                          "failed", (json_int_t)sw->ph_failed);
    json_object_set_new(o, "seconds", num_or_null(span, true));
    json_object_set_new(o, "reg_per_s", num_or_null(span > 0 ? (double)sw->ph_registered / span : 0, span > 0));
    lat_stats(sw, o);
    json_object_set_new(o, "all_live_s", num_or_null(secs(sw->ph_all_live_us - sw->ph_t0_us), sw->ph_all_live_us != 0));
    json_object_set_new(o, "converged_s", num_or_null(secs(sw->ph_converged_us - sw->ph_t0_us), sw->ph_converged_us != 0));
    json_object_set_new(o, "live", json_integer((json_int_t)live));
    json_object_set_new(o, "converged", json_integer((json_int_t)converged));
    json_object_set_new(o, "peers_min", live ? json_integer(peers_min) : json_null());
    json_object_set_new(o, "peers_max", live ? json_integer(peers_max) : json_null());
    json_object_set_new(o, "bytes_rx", json_integer((json_int_t)(sw->rx_bytes - sw->rx0)));
    json_object_set_new(o, "messages", json_integer((json_int_t)(sw->msgs - sw->msgs0)));
    double cpu = proc_cpu_s(sw->o.server_pid);
    json_object_set_new(o, "server_cpu_s", num_or_null(cpu - sw->cpu0, cpu >= 0));
    json_object_set_new(o, "swarm_cpu_s", num_or_null(self_cpu_s() - sw->swarm_cpu0, true));
    json_object_set_new(o, "swarm_parse_s", num_or_null(sw->parse_s, true));
    json_object_set_new(o, "parse", json_string(sw->o.jansson ? "jansson" : "scan"));
    json_t *bad = json_array();
    for (int i = 0; i < sw->o.n && json_array_size(bad) < 10; i++) {
        const struct snode *n = &sw->nodes[i];
        if (n->state != NS_LIVE || n->n_peers < want)
            json_array_append_new(bad, json_pack("{s:i, s:s, s:i, s:s}", "node", n->idx, "state",
                                                 state_name[n->state], "peers", (int)n->n_peers,
                                                 "error", n->err));
    }
    json_object_set_new(o, "stragglers", bad);
    emit(sw, o);
    begin_quiet(sw, PH_IDLE);
}

static void start_idle(struct swarm *sw)
{
    set_phase(sw, PH_IDLE);
    sw->idle_t0_us = now_us();
    sw->cpu0 = proc_cpu_s(sw->o.server_pid);
    sw->swarm_cpu0 = self_cpu_s();
    sw->rx0 = sw->rx_bytes;
    sw->msgs0 = sw->msgs;
    sw->ka0 = sw->keepalives;
    say("idle: %d s window with %zu nodes connected", sw->o.idle_s, sw->n_live);
}

static void step_idle(struct swarm *sw, int64_t now)
{
    if (now < sw->idle_t0_us + (int64_t)sw->o.idle_s * 1000000)
        return;
    double span = secs(now - sw->idle_t0_us);
    double cpu = proc_cpu_s(sw->o.server_pid);
    double mine = self_cpu_s() - sw->swarm_cpu0;
    json_t *o = json_pack("{s:s, s:I}", "phase", "idle", "nodes", (json_int_t)sw->n_live);
    json_object_set_new(o, "seconds", num_or_null(span, true));
    json_object_set_new(o, "server_cpu_s", num_or_null(cpu - sw->cpu0, cpu >= 0));
    json_object_set_new(o, "server_cpu_pct", num_or_null(100.0 * (cpu - sw->cpu0) / span, cpu >= 0));
    json_object_set_new(o, "swarm_cpu_s", num_or_null(mine, true));
    json_object_set_new(o, "swarm_cpu_pct", num_or_null(100.0 * mine / span, true));
    json_object_set_new(o, "bytes_rx", json_integer((json_int_t)(sw->rx_bytes - sw->rx0)));
    json_object_set_new(o, "messages", json_integer((json_int_t)(sw->msgs - sw->msgs0)));
    json_object_set_new(o, "keepalives", json_integer((json_int_t)(sw->keepalives - sw->ka0)));
    emit(sw, o);
    set_phase(sw, PH_CHANGE);
}

/* The nth live main node, skipping the joiner and nodes changed before. */
static struct snode *pick_live(struct swarm *sw, int nth)
{
    for (int i = 0; i < sw->o.n; i++)
        if (sw->nodes[i].state == NS_LIVE && sw->nodes[i].id > 0 && nth-- == 0)
            return &sw->nodes[i];
    return NULL;
}

static void emit_skip(struct swarm *sw, enum change_kind k, const char *why)
{
    say("change %s: skipped: %s", change_name[k], why);
    emit(sw, json_pack("{s:s, s:s, s:s}", "phase", "change", "kind", change_name[k], "skipped", why));
}

/* Sets up the probe for kind k and makes the change. Returns false (after emitting the
 * reason) when it cannot be made here. */
static bool start_change(struct swarm *sw, enum change_kind k)
{
    struct probe *p = &sw->probe;
    memset(p, 0, sizeof *p);
    p->times = sw->probe_times;
    p->kind = k;
    p->timeout_us = (int64_t)sw->o.change_timeout_s * 1000000;
    bool needs_hwctl = k == CH_RENAME || k == CH_LEAVE || k == CH_POLICY;
    if (needs_hwctl && (!sw->o.hwctl || !sw->o.socket)) {
        emit_skip(sw, k, "needs --hwctl and --socket");
        return false;
    }
    sw->seq++;
    switch (k) {
    case CH_JOIN:
        p->target = sw->joiner;
        if (p->target->state != NS_IDLE) {
            emit_skip(sw, k, "the joining node was used already");
            return false;
        }
        snprintf(p->marker, sizeof p->marker, "\"Hostname\":\"%s\"", p->target->hostname);
        break;
    case CH_ENDPOINTS:
        p->target = pick_live(sw, 0);
        snprintf(p->marker, sizeof p->marker, "\"127.0.0.1:%d\"", 30000 + sw->seq);
        break;
    case CH_RENAME:
        p->target = pick_live(sw, 1);
        if (p->target)
            snprintf(p->marker, sizeof p->marker, "\"Name\":\"swarm-rn-%d-%d.", sw->seq, p->target->idx);
        break;
    case CH_OFFLINE:
        p->target = pick_live(sw, 2);
        snprintf(p->marker, sizeof p->marker, "\"Online\":false");
        p->timeout_us += (int64_t)OFFLINE_GRACE_S * 1000000;
        break;
    case CH_ONLINE:
        p->target = sw->offline_node && sw->offline_node->state == NS_OFF ? sw->offline_node : NULL;
        if (!p->target) {
            emit_skip(sw, k, "no node went offline before");
            return false;
        }
        snprintf(p->marker, sizeof p->marker, "\"Online\":true");
        break;
    case CH_LEAVE:
        p->target = sw->joiner->state == NS_LIVE && sw->joiner->id > 0 ? sw->joiner : pick_live(sw, 3);
        break;
    case CH_POLICY:
        if (!sw->o.policy_file) {
            emit_skip(sw, k, "no --policy-file (the bench script gives one when `hwctl policy` exists)");
            return false;
        }
        break;
    default:
        return false;
    }
    if (k != CH_POLICY && !p->target) {
        emit_skip(sw, k, "no suitable live node");
        return false;
    }
    p->target_id = p->target ? p->target->id : 0;
    /* Who must apply it: every other node with a live stream (for a leave, those that
     * had the node as a peer). */
    for (size_t i = 0; i < sw->n_nodes; i++) {
        struct snode *n = &sw->nodes[i];
        n->in_probe = n->state == NS_LIVE && n != p->target && n->role != ROLE_BURST &&
                      (k != CH_LEAVE || peer_has(n, p->target_id));
        n->probe_done = false;
        p->population += n->in_probe;
    }
    p->cpu0 = proc_cpu_s(sw->o.server_pid);
    p->swarm_cpu0 = self_cpu_s();
    p->rx0 = sw->rx_bytes;
    p->msgs0 = sw->msgs;
    p->active = true;
    p->t0_us = now_us();
    char idtext[24], name[64];
    snprintf(idtext, sizeof idtext, "%lld", (long long)p->target_id);
    say("change %s: %zu nodes must apply it (target node %d, id %s)", change_name[k], p->population,
        p->target ? p->target->idx : -1, idtext);
    switch (k) {
    case CH_JOIN:
        p->target->want_map = true;
        node_dial(p->target);
        break;
    case CH_ENDPOINTS: {
        char ep[40];
        snprintf(ep, sizeof ep, "127.0.0.1:%d", 30000 + sw->seq);
        if (!send_lite_update(p->target, ep)) {
            p->active = false;
            emit_skip(sw, k, "the lite map update could not be sent");
            return false;
        }
        break;
    }
    case CH_RENAME: {
        snprintf(name, sizeof name, "swarm-rn-%d-%d", sw->seq, p->target->idx);
        const char *args[] = {"nodes", "rename", "-i", idtext, name, NULL};
        p->job = hwctl_run(sw, args);
        break;
    }
    case CH_OFFLINE:
        close_conn(p->target);
        sw->n_live--;
        p->target->state = NS_OFF;
        sw->offline_node = p->target;
        break;
    case CH_ONLINE:
        p->target->backoff = 0;
        node_dial(p->target);
        break;
    case CH_LEAVE: {
        p->target->deleting = true;
        const char *args[] = {"nodes", "delete", "-i", idtext, "--force", NULL};
        p->job = hwctl_run(sw, args);
        break;
    }
    case CH_POLICY: {
        const char *args[] = {"policy", "set", "--file", sw->o.policy_file, NULL};
        p->job = hwctl_run(sw, args);
        break;
    }
    default:
        break;
    }
    set_phase(sw, PH_CHANGE_WAIT);
    return true;
}

static void finish_change(struct swarm *sw, int64_t now)
{
    struct probe *p = &sw->probe;
    p->active = false;
    p->t_end_us = now;
    qsort(p->times, p->done, sizeof *p->times, cmp_i64);
    json_t *o = json_pack("{s:s, s:s, s:I, s:I}", "phase", "change", "kind", change_name[p->kind],
                          "nodes", (json_int_t)p->population, "applied", (json_int_t)p->done);
    json_object_set_new(o, "first_ms", p->done ? num_or_null((double)p->times[0] / 1000.0, true) : json_null());
    json_object_set_new(o, "p50_ms", pct_ms(p->times, p->done, p->population, 0.5));
    json_object_set_new(o, "p99_ms", pct_ms(p->times, p->done, p->population, 0.99));
    json_object_set_new(o, "p100_ms", pct_ms(p->times, p->done, p->population, 1.0));
    uint64_t rx = sw->rx_bytes - p->rx0;
    json_object_set_new(o, "bytes_rx", json_integer((json_int_t)rx));
    json_object_set_new(o, "bytes_per_node", num_or_null(p->population ? (double)rx / (double)p->population : 0, true));
    json_object_set_new(o, "messages", json_integer((json_int_t)(sw->msgs - p->msgs0)));
    double cpu = proc_cpu_s(sw->o.server_pid);
    json_object_set_new(o, "server_cpu_s", num_or_null(cpu - p->cpu0, cpu >= 0));
    json_object_set_new(o, "swarm_cpu_s", num_or_null(self_cpu_s() - p->swarm_cpu0, true));
    if (p->job) {
        json_object_set_new(o, "hwctl_ms", num_or_null((double)p->job->took_us / 1000.0, p->job->status >= 0));
        if (p->job->status != 0)
            json_object_set_new(o, "error", json_sprintf("hwctl exited with %d", p->job->status));
    }
    if (p->done < p->population) {
        json_t *arr = json_array();
        for (size_t i = 0; i < sw->n_nodes && json_array_size(arr) < 10; i++) {
            struct snode *n = &sw->nodes[i];
            if (n->in_probe && !n->probe_done)
                json_array_append_new(arr, json_pack("{s:i, s:s, s:s}", "node", n->idx, "state",
                                                     state_name[n->state], "error", n->err));
        }
        json_object_set_new(o, "stragglers", arr);
    }
    hwctl_job_free(sw, p->job);
    p->job = NULL;
    emit(sw, o);
    say("change %s: %zu/%zu applied", change_name[p->kind], p->done, p->population);
}

static void step_change(struct swarm *sw)
{
    while (sw->change_next < CH_COUNT) {
        enum change_kind k = (enum change_kind)sw->change_next++;
        if (!sw->o.changes[k])
            continue;
        if (start_change(sw, k))
            return;
    }
    set_phase(sw, PH_RESTART);
    sw->restart_started = false;
}

static void step_change_wait(struct swarm *sw, int64_t now)
{
    struct probe *p = &sw->probe;
    bool job_failed = p->job && p->job->status > 0;
    if (p->done < p->population && now < p->t0_us + p->timeout_us && !job_failed)
        return;
    finish_change(sw, now);
    begin_quiet(sw, PH_CHANGE);
}

/* ---- mass reconnect ---- */

static void stdin_readable(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct swarm *sw = arg;
    ssize_t r = read(fd, sw->stdin_buf + sw->stdin_len, sizeof sw->stdin_buf - 1 - sw->stdin_len);
    if (r <= 0) {
        hw_loop_remove(loop, fd);
        sw->stdin_watched = false;
        if (!sw->restart_line) {
            say("restart: stdin closed before the \"restarted\" line");
            sw->wait_until_us = 0;
        }
        return;
    }
    sw->stdin_len += (size_t)r;
    sw->stdin_buf[sw->stdin_len] = '\0';
    char *nl = strchr(sw->stdin_buf, '\n');
    if (!nl) {
        if (sw->stdin_len == sizeof sw->stdin_buf - 1)
            sw->stdin_len = 0; /* a line this long is not ours */
        return;
    }
    *nl = '\0';
    int pid;
    long long mono_ms;
    if (sscanf(sw->stdin_buf, "restarted %d %lld", &pid, &mono_ms) == 2) {
        sw->o.server_pid = pid;
        sw->restart_t0_us = mono_ms * 1000;
        sw->restart_line = true;
        sw->wait_until_us = now_us() + (int64_t)sw->o.reconnect_timeout_s * 1000000;
        say("restart: server is back as pid %d", pid);
    } else {
        say("restart: ignoring stdin line \"%s\"", sw->stdin_buf);
    }
    size_t rest = sw->stdin_len - (size_t)(nl + 1 - sw->stdin_buf);
    memmove(sw->stdin_buf, nl + 1, rest);
    sw->stdin_len = rest;
}

static void step_restart(struct swarm *sw, int64_t now)
{
    if (!sw->o.restart) {
        set_phase(sw, PH_DONE);
        return;
    }
    if (!sw->restart_started) {
        sw->restart_started = true;
        sw->restart_expected = sw->restart_back = 0;
        for (size_t i = 0; i < sw->n_nodes; i++) {
            struct snode *n = &sw->nodes[i];
            n->restart_wait = n->state == NS_LIVE;
            sw->restart_expected += n->restart_wait;
        }
        sw->reconnects0 = sw->reconnects;
        sw->swarm_cpu0 = self_cpu_s();
        sw->rx0 = sw->rx_bytes;
        /* The line must come within the reconnect timeout plus a minute for the stop. */
        sw->wait_until_us = now + (int64_t)(sw->o.reconnect_timeout_s + 60) * 1000000;
        emit(sw, json_pack("{s:s, s:I}", "phase", "restart_ready", "nodes", (json_int_t)sw->restart_expected));
        if (hw_loop_add(sw->loop, 0, HW_EV_READ, stdin_readable, sw) == 0)
            sw->stdin_watched = true;
        return;
    }
    bool all = sw->restart_line && sw->restart_back >= sw->restart_expected;
    if (!all && now < sw->wait_until_us)
        return;
    size_t back = sw->restart_back;
    int64_t *t = sw->restart_times;
    for (size_t i = 0; i < back; i++)
        t[i] = t[i] > sw->restart_t0_us ? t[i] - sw->restart_t0_us : 0;
    qsort(t, back, sizeof *t, cmp_i64);
    json_t *o = json_pack("{s:s, s:I, s:I, s:b}", "phase", "restart", "nodes", (json_int_t)sw->restart_expected,
                          "back", (json_int_t)back, "server_restarted", sw->restart_line);
    json_object_set_new(o, "p50_ms", pct_ms(t, back, sw->restart_expected, 0.5));
    json_object_set_new(o, "p99_ms", pct_ms(t, back, sw->restart_expected, 0.99));
    json_object_set_new(o, "p100_ms", pct_ms(t, back, sw->restart_expected, 1.0));
    json_object_set_new(o, "down_ms", num_or_null(secs(sw->restart_t0_us - sw->restart_drop_us) * 1000.0,
                                                  sw->restart_line && sw->restart_drop_us));
    size_t full = 0;
    for (size_t i = 0; i < sw->n_nodes; i++) {
        const struct snode *n = &sw->nodes[i];
        full += n->state == NS_LIVE && n->n_peers + 1 >= sw->restart_expected;
    }
    json_object_set_new(o, "full_peer_lists", json_integer((json_int_t)full));
    json_object_set_new(o, "reconnect_attempts", json_integer((json_int_t)(sw->reconnects - sw->reconnects0)));
    json_object_set_new(o, "bytes_rx", json_integer((json_int_t)(sw->rx_bytes - sw->rx0)));
    double cpu = proc_cpu_s(sw->o.server_pid);
    json_object_set_new(o, "server_cpu_s", num_or_null(cpu, cpu >= 0 && sw->restart_line));
    json_object_set_new(o, "swarm_cpu_s", num_or_null(self_cpu_s() - sw->swarm_cpu0, true));
    json_t *arr = json_array();
    for (size_t i = 0; i < sw->n_nodes && json_array_size(arr) < 10; i++) {
        struct snode *n = &sw->nodes[i];
        if (n->restart_wait)
            json_array_append_new(arr, json_pack("{s:i, s:s, s:s}", "node", n->idx, "state",
                                                 state_name[n->state], "error", n->err));
    }
    json_object_set_new(o, "stragglers", arr);
    emit(sw, o);
    set_phase(sw, PH_DONE);
}

/* ---- the phase machine ---- */

static void phase_step(struct swarm *sw)
{
    int64_t now = now_us();
    switch (sw->phase) {
    case PH_BURST:
        step_burst(sw, now);
        break;
    case PH_BURST_LOGOUT:
        step_burst_logout(sw, now);
        break;
    case PH_REGISTER:
        step_register(sw, now);
        break;
    case PH_QUIET:
        if (now - sw->t_last_msg_us >= (int64_t)QUIET_MS * 1000 || now >= sw->wait_until_us) {
            if (sw->after_quiet == PH_IDLE)
                start_idle(sw);
            else
                set_phase(sw, sw->after_quiet);
        }
        break;
    case PH_IDLE:
        step_idle(sw, now);
        break;
    case PH_CHANGE:
        step_change(sw);
        break;
    case PH_CHANGE_WAIT:
        step_change_wait(sw, now);
        break;
    case PH_SETTLE:
        break;
    case PH_RESTART:
        step_restart(sw, now);
        break;
    case PH_DONE:
        break;
    }
    if (sw->phase == PH_DONE)
        hw_loop_stop(sw->loop);
}

static void tick_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct swarm *sw = arg;
    sw->tick = NULL;
    phase_step(sw);
    if (sw->phase != PH_DONE)
        sw->tick = hw_timer_start(loop, TICK_MS, tick_cb, sw);
}

static const char *phase_names[] = {"burst", "burst-logout", "register", "quiet", "idle", "change",
                                    "change", "settle", "restart", "done"};

static void abort_run(struct swarm *sw, const char *why)
{
    say("%s during phase %s: stopping", why, phase_names[sw->phase]);
    emit(sw, json_pack("{s:s, s:s, s:s}", "phase", "aborted", "why", why, "during", phase_names[sw->phase]));
    sw->exit_code = 1;
    sw->phase = PH_DONE;
    hw_loop_stop(sw->loop);
}

static void deadline_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct swarm *sw = arg;
    sw->deadline = NULL;
    abort_run(sw, "deadline reached");
}

static void signal_cb(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct swarm *sw = arg;
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof si) != (ssize_t)sizeof si)
        return;
    abort_run(sw, si.ssi_signo == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)");
}

/* ---- the closing table ---- */

/* v with the given decimals and unit, "-" when it is not a number. */
static const char *fmt_num(char *buf, size_t len, json_t *v, int decimals, const char *unit)
{
    if (json_is_number(v))
        snprintf(buf, len, "%.*f%s", decimals, json_number_value(v), unit);
    else
        snprintf(buf, len, "-");
    return buf;
}

static const char *fmt_bytes(char *buf, size_t len, json_t *v)
{
    double b = json_number_value(v);
    if (!json_is_number(v))
        snprintf(buf, len, "-");
    else if (b >= 1e9)
        snprintf(buf, len, "%.2f GB", b / 1e9);
    else if (b >= 1e6)
        snprintf(buf, len, "%.2f MB", b / 1e6);
    else if (b >= 1e3)
        snprintf(buf, len, "%.1f kB", b / 1e3);
    else
        snprintf(buf, len, "%.0f B", b);
    return buf;
}

static void print_table(struct swarm *sw)
{
    printf("\nswarm against %s: N=%d, K=%d, messages read with %s\n", sw->o.server, sw->o.n, sw->o.k,
           sw->o.jansson ? "jansson (full parse)" : "mapscan (ids and spans)");
    printf("%-22s %7s %7s %9s %9s %9s %9s %10s %9s %9s %8s\n", "phase", "nodes", "done", "rate/s",
           "p50 ms", "p99 ms", "100% ms", "bytes rx", "srv CPU", "swarm CPU", "srv RSS");
    size_t i;
    json_t *r;
    json_array_foreach(sw->results, i, r) {
        const char *ph = json_string_value(json_object_get(r, "phase"));
        if (!ph || strcmp(ph, "restart_ready") == 0)
            continue;
        char label[40], a[24], b[24], c[24], d[24], e[24], f[24], g[24], h[24], m[24];
        const char *kind = json_string_value(json_object_get(r, "kind"));
        if (kind)
            snprintf(label, sizeof label, "change %s", kind);
        else
            snprintf(label, sizeof label, "%s", ph);
        const char *skipped = json_string_value(json_object_get(r, "skipped"));
        if (skipped) {
            printf("%-22s skipped: %s\n", label, skipped);
            continue;
        }
        bool reg = strcmp(ph, "burst") == 0 || strcmp(ph, "register") == 0;
        json_t *done = json_object_get(r, reg ? "registered" : kind ? "applied" : "back");
        printf("%-22s %7lld %7s %9s %9s %9s %9s %10s %9s %9s %8s\n", label,
               (long long)json_integer_value(json_object_get(r, "nodes")),
               json_is_integer(done) ? (snprintf(a, sizeof a, "%lld", (long long)json_integer_value(done)), a) : "-",
               fmt_num(b, sizeof b, json_object_get(r, "reg_per_s"), 0, ""),
               fmt_num(c, sizeof c, json_object_get(r, reg ? "latency_ms_p50" : "p50_ms"), 1, ""),
               fmt_num(d, sizeof d, json_object_get(r, reg ? "latency_ms_p99" : "p99_ms"), 1, ""),
               fmt_num(e, sizeof e, json_object_get(r, reg ? "latency_ms_max" : "p100_ms"), 1, ""),
               fmt_bytes(f, sizeof f, json_object_get(r, "bytes_rx")),
               fmt_num(g, sizeof g, json_object_get(r, "server_cpu_s"), 2, " s"),
               fmt_num(h, sizeof h, json_object_get(r, "swarm_cpu_s"), 2, " s"),
               fmt_num(m, sizeof m, json_object_get(r, "server_rss_mib"), 0, " MiB"));
        json_t *fc = json_object_get(r, "frame_cache");
        if (json_integer_value(json_object_get(fc, "maps")) > 0)
            printf("%-22s frame cache: %lld full maps, %lld block frames matched, %lld inflated, "
                   "%s of JSON not inflated again\n",
                   "", (long long)json_integer_value(json_object_get(fc, "maps")),
                   (long long)json_integer_value(json_object_get(fc, "hits")),
                   (long long)json_integer_value(json_object_get(fc, "misses")),
                   fmt_bytes(a, sizeof a, json_object_get(fc, "json_bytes_skipped")));
        if (strcmp(ph, "register") == 0)
            printf("%-22s all live after %s s, converged (every node sees all others) after %s s\n", "",
                   fmt_num(a, sizeof a, json_object_get(r, "all_live_s"), 2, ""),
                   fmt_num(b, sizeof b, json_object_get(r, "converged_s"), 2, ""));
        if (strcmp(ph, "idle") == 0)
            printf("%-22s over %s s: server CPU %s %%, swarm CPU %s %%, %lld keep-alives\n", "",
                   fmt_num(a, sizeof a, json_object_get(r, "seconds"), 1, ""),
                   fmt_num(b, sizeof b, json_object_get(r, "server_cpu_pct"), 2, ""),
                   fmt_num(c, sizeof c, json_object_get(r, "swarm_cpu_pct"), 2, ""),
                   (long long)json_integer_value(json_object_get(r, "keepalives")));
        json_t *strag = json_object_get(r, "stragglers");
        if (json_array_size(strag) > 0)
            printf("%-22s stragglers (first %zu): %s\n", "", json_array_size(strag),
                   json_string_value(json_object_get(json_array_get(strag, 0), "error")));
    }
    if (sw->fcache) {
        const struct fc_stats *st = fc_stats(sw->fcache);
        json_t *skipped = json_integer((json_int_t)st->hit_bytes);
        char a[24];
        printf("frame cache (whole run): %llu full maps read through it, %llu block frames matched byte "
               "for byte, %llu inflated and scanned, %llu multi-frame messages decoded in full, emptied "
               "%llu times; %s of JSON not inflated again\n",
               (unsigned long long)st->maps, (unsigned long long)st->hits, (unsigned long long)st->misses,
               (unsigned long long)st->fallbacks, (unsigned long long)st->evictions,
               fmt_bytes(a, sizeof a, skipped));
        json_decref(skipped);
    } else {
        printf("frame cache: off (%s)\n", sw->o.jansson ? "--parse jansson" : "--no-frame-cache");
    }
    fflush(stdout);
}

/* ---- setup ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: swarm --server URL --authkey KEY [options]\n"
            "  -n N                  simulated nodes (default 100)\n"
            "  --concurrency K       dials+registrations in flight while registering (default 50)\n"
            "  --burst B             also register B nodes at once first (needs --burst-authkey: an\n"
            "                        ephemeral reusable key of another namespace; they log out after)\n"
            "  --burst-authkey KEY\n"
            "  --server-pid PID      read the server's RSS and CPU time from /proc\n"
            "  --hwctl PATH --socket PATH   for the rename, leave and policy changes\n"
            "  --policy-file FILE    policy for `hwctl policy set --file` (the policy change)\n"
            "  --changes LIST        comma-separated: join,endpoints,rename,offline,online,leave,policy\n"
            "                        (default all; 'none' for no changes)\n"
            "  --idle SECONDS        idle window (default 10)\n"
            "  --change-timeout S    per change (default 20; offline adds %d s of server grace)\n"
            "  --phase-timeout S     burst and register phases (default 300)\n"
            "  --restart             wait on stdin for 'restarted PID MONO_MS' and measure the mass\n"
            "                        reconnect (the bench script restarts the server)\n"
            "  --reconnect-timeout S (default 120)\n"
            "  --parse scan|jansson  how map messages are read (default scan)\n"
            "  --no-frame-cache      inflate and scan every frame of every full map, also the\n"
            "                        block frames already read byte for byte for another node\n"
            "  --deadline SECONDS    hard stop (default 600)\n"
            "  --out FILE            append the JSON lines to FILE too\n"
            "  -q                    no progress lines on stderr\n",
            OFFLINE_GRACE_S);
}

static int parse_changes(struct opts *o, const char *list)
{
    memset(o->changes, 0, sizeof o->changes);
    if (strcmp(list, "none") == 0)
        return 0;
    char *copy = hw_strdup(list), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int k;
        for (k = 0; k < CH_COUNT && strcmp(t, change_name[k]) != 0; k++)
            ;
        if (k == CH_COUNT) {
            fprintf(stderr, "swarm: unknown change kind \"%s\"\n", t);
            rc = -1;
            break;
        }
        o->changes[k] = true;
    }
    free(copy);
    return rc;
}

static int parse_int(const char *s, int lo, int hi, const char *what, int *out)
{
    char *e;
    long v = strtol(s, &e, 10);
    if (*s == '\0' || *e || v < lo || v > hi) {
        fprintf(stderr, "swarm: %s must be a number in %d..%d, not \"%s\"\n", what, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.n = 100, .k = 50, .deadline_s = 600, .idle_s = 10, .change_timeout_s = 20,
                       .phase_timeout_s = 300, .reconnect_timeout_s = 120};
    for (int k = 0; k < CH_COUNT; k++)
        o->changes[k] = true;
    enum { O_SERVER = 256, O_AUTHKEY, O_CONC, O_BURST, O_BURSTKEY, O_PID, O_HWCTL, O_SOCKET, O_POLICY,
           O_CHANGES, O_IDLE, O_CHTO, O_PHTO, O_RESTART, O_RECTO, O_PARSE, O_DEADLINE, O_OUT, O_NOFC, O_HELP };
    static const struct option lo[] = {
        {"server", required_argument, 0, O_SERVER}, {"authkey", required_argument, 0, O_AUTHKEY},
        {"concurrency", required_argument, 0, O_CONC}, {"burst", required_argument, 0, O_BURST},
        {"burst-authkey", required_argument, 0, O_BURSTKEY}, {"server-pid", required_argument, 0, O_PID},
        {"hwctl", required_argument, 0, O_HWCTL}, {"socket", required_argument, 0, O_SOCKET},
        {"policy-file", required_argument, 0, O_POLICY}, {"changes", required_argument, 0, O_CHANGES},
        {"idle", required_argument, 0, O_IDLE}, {"change-timeout", required_argument, 0, O_CHTO},
        {"phase-timeout", required_argument, 0, O_PHTO}, {"restart", no_argument, 0, O_RESTART},
        {"reconnect-timeout", required_argument, 0, O_RECTO}, {"parse", required_argument, 0, O_PARSE},
        {"deadline", required_argument, 0, O_DEADLINE}, {"duration", required_argument, 0, O_DEADLINE},
        {"out", required_argument, 0, O_OUT}, {"no-frame-cache", no_argument, 0, O_NOFC},
        {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "n:k:qh", lo, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case 'n': rc = parse_int(optarg, 1, 18000, "-n", &o->n); break;
        case 'k':
        case O_CONC: rc = parse_int(optarg, 1, 18000, "--concurrency", &o->k); break;
        case 'q': o->quiet = true; break;
        case O_SERVER: o->server = optarg; break;
        case O_AUTHKEY: o->authkey = optarg; break;
        case O_BURST: rc = parse_int(optarg, 0, 18000, "--burst", &o->burst); break;
        case O_BURSTKEY: o->burst_authkey = optarg; break;
        case O_PID: rc = parse_int(optarg, 1, 1 << 30, "--server-pid", &o->server_pid); break;
        case O_HWCTL: o->hwctl = optarg; break;
        case O_SOCKET: o->socket = optarg; break;
        case O_POLICY: o->policy_file = optarg; break;
        case O_CHANGES: rc = parse_changes(o, optarg); break;
        case O_IDLE: rc = parse_int(optarg, 0, 3600, "--idle", &o->idle_s); break;
        case O_CHTO: rc = parse_int(optarg, 1, 3600, "--change-timeout", &o->change_timeout_s); break;
        case O_PHTO: rc = parse_int(optarg, 1, 36000, "--phase-timeout", &o->phase_timeout_s); break;
        case O_RESTART: o->restart = true; break;
        case O_RECTO: rc = parse_int(optarg, 1, 3600, "--reconnect-timeout", &o->reconnect_timeout_s); break;
        case O_PARSE:
            if (strcmp(optarg, "jansson") == 0)
                o->jansson = true;
            else if (strcmp(optarg, "scan") != 0)
                rc = -1;
            break;
        case O_DEADLINE: rc = parse_int(optarg, 1, 36000, "--deadline", &o->deadline_s); break;
        case O_OUT: o->out = optarg; break;
        case O_NOFC: o->no_frame_cache = true; break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
        if (rc < 0)
            return -1;
    }
    if (optind < argc || !o->server || !o->authkey) {
        usage(stderr);
        return -1;
    }
    if (o->burst > 0 && !o->burst_authkey) {
        fprintf(stderr, "swarm: --burst needs --burst-authkey (an ephemeral key of another namespace)\n");
        return -1;
    }
    return 0;
}

/* Thousands of sockets: the soft limit goes up to the hard one. */
static void raise_fd_limit(size_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want)
        say("warning: %zu sockets wanted but the file limit is %llu", want, (unsigned long long)rl.rlim_cur);
}

static void init_node(struct swarm *sw, struct snode *n, size_t idx, enum role role)
{
    n->sw = sw;
    n->idx = (int)idx;
    n->role = role;
    hw_key_generate(n->machine_priv);
    hw_key_generate(n->node_priv);
    uint8_t disco_priv[32];
    hw_key_generate(disco_priv);
    hw_key_public(disco_priv, n->disco_pub);
    if (role == ROLE_MAIN)
        snprintf(n->hostname, sizeof n->hostname, "swarm-%zu", idx);
    else if (role == ROLE_JOIN)
        snprintf(n->hostname, sizeof n->hostname, "swarm-join-%d", (int)getpid());
    else
        snprintf(n->hostname, sizeof n->hostname, "burst-%zu", idx - sw->burst_first);
}

static void free_node(struct swarm *sw, struct snode *n)
{
    if (n->retry)
        hw_timer_cancel(sw->loop, n->retry);
    close_conn(n);
    free(n->reg_body);
    free(n->bits);
}

int main(int argc, char **argv)
{
    struct swarm *sw = hw_calloc(1, sizeof *sw);
    g_sw = sw;
    if (parse_opts(argc, argv, &sw->o) < 0) {
        free(sw);
        return 2;
    }
    char err[200];
    if (hwc_url_parse(sw->o.server, &sw->url, err, sizeof err) < 0) {
        fprintf(stderr, "swarm: --server: %s\n", err);
        free(sw);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "swarm: libsodium failed to start\n");
        free(sw);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    sw->n_nodes = (size_t)sw->o.n + 1 + (size_t)sw->o.burst;
    raise_fd_limit(sw->n_nodes + 64);
    if (sw->o.out && !(sw->out = fopen(sw->o.out, "a"))) {
        fprintf(stderr, "swarm: %s: %s\n", sw->o.out, strerror(errno));
        free(sw);
        return 2;
    }
    sw->loop = hw_loop_new();
    sw->zdec = tc_zdec_new();
    tc_mapscan_init(&sw->scan);
    if (!sw->o.no_frame_cache && !sw->o.jansson)
        sw->fcache = fc_new(0);
    sw->results = json_array();
    sw->nodes = hw_calloc(sw->n_nodes, sizeof *sw->nodes);
    sw->burst_first = (size_t)sw->o.n + 1;
    for (size_t i = 0; i < sw->n_nodes; i++)
        init_node(sw, &sw->nodes[i], i, i < (size_t)sw->o.n ? ROLE_MAIN : i == (size_t)sw->o.n ? ROLE_JOIN : ROLE_BURST);
    sw->joiner = &sw->nodes[sw->o.n];
    sw->queue = hw_calloc(sw->n_nodes, sizeof *sw->queue);
    sw->lat = hw_calloc(sw->n_nodes, sizeof *sw->lat);
    sw->probe_times = hw_calloc(sw->n_nodes, sizeof *sw->probe_times);
    sw->restart_times = hw_calloc(sw->n_nodes, sizeof *sw->restart_times);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sw->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sw->sigfd >= 0)
        hw_loop_add(sw->loop, sw->sigfd, HW_EV_READ, signal_cb, sw);

    sw->deadline = hw_timer_start(sw->loop, (int64_t)sw->o.deadline_s * 1000, deadline_cb, sw);
    sw->tick = hw_timer_start(sw->loop, TICK_MS, tick_cb, sw);
    if (sw->o.burst > 0)
        begin_burst(sw);
    else
        begin_register(sw);
    hw_loop_run(sw->loop);

    print_table(sw);
    if (sw->probe.job)
        hwctl_job_free(sw, sw->probe.job);
    for (size_t i = 0; i < sw->n_nodes; i++)
        free_node(sw, &sw->nodes[i]);
    if (sw->tick)
        hw_timer_cancel(sw->loop, sw->tick);
    if (sw->deadline)
        hw_timer_cancel(sw->loop, sw->deadline);
    if (sw->stdin_watched)
        hw_loop_remove(sw->loop, 0);
    if (sw->sigfd >= 0) {
        hw_loop_remove(sw->loop, sw->sigfd);
        close(sw->sigfd);
    }
    hw_loop_free(sw->loop);
    tc_zdec_free(sw->zdec);
    tc_mapscan_free(&sw->scan);
    fc_free(sw->fcache);
    json_decref(sw->results);
    if (sw->out)
        fclose(sw->out);
    int code = sw->exit_code;
    free(sw->nodes);
    free(sw->queue);
    free(sw->lat);
    free(sw->probe_times);
    free(sw->restart_times);
    free(sw);
    return code;
}
