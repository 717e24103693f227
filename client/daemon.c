#include "client/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "client/conn.h"
#include "client/derp.h"
#include "client/derpdebug.h"
#include "client/hostnet.h"
#include "client/localapi.h"
#include "client/magicsock.h"
#include "client/tun.h"
#include "client/wgdev.h"
#include "client/state.h"
#include "client/status.h"
#include "client/tlsdial.h"
#include "client/url.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "common/version.h"
#include "proto/keys.h"
#include "proto/mapframe.h"
#include "proto/netmap.h"
#include "client/userspace.h"
#include "proto/tailcfg.h"

/* Upstream's map watchdog: no message at all (keep-alives count) for this long means the
 * stream is dead even if TCP has not noticed. */
#define WATCHDOG_MS 120000
/* Reconnect backoff as upstream's control client does it: n^2 x 10 ms after the n-th
 * failure in a row, capped at 30 s, jittered by 0.5-1.5 so that the clients of a
 * restarted server do not all come back in the same instant. */
#define BACKOFF_STEP_MS 10
#define BACKOFF_CAP_MS 30000
/* A logout the server does not answer in this time is finished locally anyway. */
#define LOGOUT_TIMEOUT_MS 10000
/* Error texts of a non-200 map or register answer: upstream reads at most 200 bytes. */
#define ERROR_BODY_MAX 200
/* `hwclient debug derp-send` runs at once; more wait for one to finish. */
#define MAX_DEBUG_SENDS 8

struct debug_send {
    struct daemon *d;
    struct hwc_dbg_tx *tx;
    struct hwc_api_req *req;
    uint8_t peer_key[32];
    int64_t peer_id;
    char peer_name[256];
};

enum login_mode {
    LOGIN_REFRESH,  /* known node key, no credentials: "is it still valid?" */
    LOGIN_NEW,      /* a new node key, with the auth key when there is one */
    LOGIN_FOLLOWUP, /* waiting for the admin to complete the AuthURL */
    LOGIN_LOGOUT,   /* Expiry in the past */
};

struct daemon {
    struct hw_loop *loop;
    const struct hwc_up_opts *opts;
    struct hwc_url url;
    struct hwc_state st;
    json_t *hostinfo;
    uint8_t machine_priv[32];
    uint8_t node_priv[32];    /* the registered key, when have_node */
    bool have_node;
    uint8_t pending_priv[32]; /* a key being registered, when have_pending */
    bool have_pending;
    uint8_t disco_pub[32];

    struct hwc_conn *conn;
    bool conn_ready;
    bool need_register;
    enum login_mode mode;

    struct hwc_req *reg;
    int reg_status;
    char *reg_body;
    size_t reg_len;

    struct hwc_req *map;
    int map_status;
    struct tc_mapdec *dec;
    char map_err[ERROR_BODY_MAX + 1];
    size_t map_err_len;
    struct tc_netmap *stream_nm; /* the current stream's map until its first message */
    struct tc_netmap nm;         /* what status and netmap show */
    bool have_nm;
    bool map_live;               /* the current stream has delivered its first map */

    char auth_url[1024];
    char printed_url[1024];
    char problem[512];           /* last connection or login problem, for status */
    char login_error[512];       /* a refused login: no more attempts until restart */
    bool logged_out;
    bool ever_running;
    /* The auth key logs in once per process. After that a node the admin deleted or
     * expired must not come back by itself: it waits for an interactive login. */
    bool authkey_spent;
    int backoff;

    /* Work requested from inside request callbacks, done by reconcile() from a timer. */
    char drop_reason[512];
    char retry_reason[512];
    struct hw_timer *kick;
    struct hw_timer *retry;
    struct hw_timer *watchdog;
    struct hw_timer *expiry;

    bool want_logout;
    bool logout_answered;
    char logout_note[512];
    struct hw_timer *logout_timer;
    struct hwc_api_req **waiters;
    size_t n_waiters;

    int64_t watchdog_ms;
    struct hwc_api *api;

    /* DERP: magicsock's half, and what Hostinfo.NetInfo last said about it */
    struct hwc_magic *magic;
    json_t *sent_netinfo;        /* the NetInfo the server last acknowledged (or is about to) */
    bool lite_wanted;
    struct hwc_req *lite;
    int lite_status;
    struct hwc_dbg_rx *dbg_rx;
    /* --tun=userspace: the netstack and its proxies (NULL otherwise) */
    struct hwc_userspace *userspace;
    uint64_t userspace_unrouted;  /* packets the stack sent with no data plane to carry them */
    struct debug_send *sends[MAX_DEBUG_SENDS];
    int *peer_homes;
    /* our endpoints as magicsock last reported them (MapRequest.Endpoints/EndpointTypes) */
    char **endpoints;
    int *endpoint_types;
    size_t n_endpoints;
    struct ping_waiter *pings;

    /* the data plane: WireGuard over magicsock, packets through the TUN device */
    struct hwc_tun *tun;
    struct hwc_router *router;   /* forwarding + masquerade of an advertised subnet / exit node */
    char exit_state[300];        /* what was last logged about --exit-node */
    bool exit_active;            /* the --exit-node peer offers 0.0.0.0/0 and ::/0 */
    uint8_t exit_key[32];        /* that peer's node key, when exit_active */
    struct hwc_wgdev *wg;
    uint8_t wg_key[32];          /* the node key the device was made with */

    const char *shown_state;
    int exit_code;
    int sigfd;
};

/* `hwclient ping` waiting for magicsock's answer */
struct ping_waiter {
    struct daemon *d;
    struct hwc_api_req *req;
    char name[256], ip[64];
    struct ping_waiter *next;
};

static void reconcile(struct daemon *d);
static void sync_magic(struct daemon *d);
static void sync_userspace(struct daemon *d);

/* ---- small helpers ---- */

static void kick_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct daemon *d = arg;
    d->kick = NULL;
    reconcile(d);
}

static void kick(struct daemon *d)
{
    if (!d->kick)
        d->kick = hw_timer_start(d->loop, 0, kick_cb, d);
}

static void cancel_timer(struct daemon *d, struct hw_timer **t)
{
    if (*t) {
        hw_timer_cancel(d->loop, *t);
        *t = NULL;
    }
}

static const uint8_t *login_key(struct daemon *d)
{
    return d->have_pending ? d->pending_priv : d->node_priv;
}

static void new_pending_key(struct daemon *d)
{
    hw_key_generate(d->pending_priv);
    d->have_pending = true;
}

static const char *backend_state(struct daemon *d)
{
    if (d->logged_out || d->login_error[0] || d->auth_url[0])
        return "NeedsLogin";
    if (d->have_nm && d->nm.has_self) {
        if (hwc_node_expired(&d->nm.self, hw_now()))
            return "NeedsLogin";
        if (!d->nm.self.machine_authorized)
            return "NeedsMachineAuth";
        return "Running";
    }
    return "Starting";
}

static void expiry_cb(struct hw_loop *loop, struct hw_timer *t, void *arg);

/* Logs every change of the backend state in one line, and arms a timer for the moment
 * the own key expires so that change is logged (and shown) on time. */
static void update_state(struct daemon *d)
{
    const char *s = backend_state(d);
    if (!d->shown_state || strcmp(s, d->shown_state) != 0) {
        char detail[400] = "";
        if (strcmp(s, "Running") == 0) {
            const struct tc_strv *a = &d->nm.self.addresses;
            snprintf(detail, sizeof detail, " as %s (%s%s%s), %zu peers", d->nm.self.name ? d->nm.self.name : "?",
                     a->n ? a->v[0] : "", a->n > 1 ? " " : "", a->n > 1 ? a->v[1] : "", d->nm.n_peers);
            d->ever_running = true;
        } else if (strcmp(s, "NeedsLogin") == 0) {
            snprintf(detail, sizeof detail, "%s", d->logged_out ? " (logged out)"
                     : d->login_error[0] ? " (login refused)"
                     : d->auth_url[0] ? " (waiting for the AuthURL to be completed)"
                     : " (node key expired)");
        }
        log_info("state: %s -> %s%s", d->shown_state ? d->shown_state : "NoState", s, detail);
        d->shown_state = s;
    }
    cancel_timer(d, &d->expiry);
    if (d->have_nm && d->nm.has_self && d->nm.self.key_expiry.set) {
        int64_t left = d->nm.self.key_expiry.sec - hw_now();
        if (left > 0)
            d->expiry = hw_timer_start(d->loop, left * 1000 + 10, expiry_cb, d);
    }
    sync_magic(d);
    sync_userspace(d);
}

static void expiry_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct daemon *d = arg;
    d->expiry = NULL;
    update_state(d);
}

static int64_t next_backoff_ms(struct daemon *d)
{
    if (d->backoff < 1000)
        d->backoff++;
    double ms = (double)BACKOFF_STEP_MS * d->backoff * d->backoff;
    if (ms > BACKOFF_CAP_MS)
        ms = BACKOFF_CAP_MS;
    ms *= 0.5 + randombytes_uniform(1000) / 1000.0;
    return (int64_t)ms;
}

static void retry_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct daemon *d = arg;
    d->retry = NULL;
    reconcile(d);
}

static void schedule_retry(struct daemon *d, const char *why)
{
    int64_t ms = next_backoff_ms(d);
    snprintf(d->problem, sizeof d->problem, "%s", why);
    log_warn("control: %s; retrying in %.1fs", why, (double)ms / 1000.0);
    cancel_timer(d, &d->retry);
    d->retry = hw_timer_start(d->loop, ms, retry_cb, d);
}

/* ---- the connection ---- */

static void drop_conn(struct daemon *d)
{
    d->reg = NULL;
    d->map = NULL;
    d->lite = NULL;
    if (d->magic)
        hwc_magic_set_control_connected(d->magic, false);
    if (d->dec) {
        tc_mapdec_free(d->dec);
        d->dec = NULL;
    }
    if (d->stream_nm) {
        tc_netmap_clear(d->stream_nm);
        free(d->stream_nm);
        d->stream_nm = NULL;
    }
    d->map_live = false;
    cancel_timer(d, &d->watchdog);
    hwc_conn_free(d->conn);
    d->conn = NULL;
    d->conn_ready = false;
}

static void on_conn_ready(struct hwc_conn *c, void *arg)
{
    struct daemon *d = arg;
    d->conn_ready = true;
    log_info("control: connected to %s (Noise, HTTP/2)", d->url.base);
    reconcile(d);
}

static void on_conn_fail(struct hwc_conn *c, const char *why, void *arg)
{
    struct daemon *d = arg;
    snprintf(d->drop_reason, sizeof d->drop_reason, "%s", why);
    reconcile(d);
}

static const struct hwc_conn_callbacks conn_callbacks = {
    .on_ready = on_conn_ready,
    .on_fail = on_conn_fail,
};

/* ---- register ---- */

static void reg_response(struct hwc_req *r, int status, void *arg)
{
    struct daemon *d = arg;
    d->reg_status = status;
}

static void reg_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct daemon *d = arg;
    if (d->reg_len + len > TC_MAX_BODY) {
        snprintf(d->drop_reason, sizeof d->drop_reason, "register answer larger than %u bytes", TC_MAX_BODY);
        hwc_conn_fail_soon(d->conn, d->drop_reason);
        return;
    }
    d->reg_body = realloc(d->reg_body, d->reg_len + len + 1);
    if (!d->reg_body)
        abort();
    memcpy(d->reg_body + d->reg_len, data, len);
    d->reg_len += len;
    d->reg_body[d->reg_len] = '\0';
}

static void print_auth_url(struct daemon *d)
{
    if (strcmp(d->printed_url, d->auth_url) == 0)
        return;
    snprintf(d->printed_url, sizeof d->printed_url, "%s", d->auth_url);
    /* The same words and layout as `tailscale up`, on stderr like it. */
    fprintf(stderr, "\nTo authenticate, visit:\n\n\t%s\n\n", d->auth_url);
    fflush(stderr);
}

static void logout_answered(struct daemon *d, const char *note)
{
    d->logout_answered = true;
    snprintf(d->logout_note, sizeof d->logout_note, "%s", note);
    kick(d);
}

static void handle_register(struct daemon *d, const struct tc_register_response *resp)
{
    if (d->mode == LOGIN_LOGOUT) {
        logout_answered(d, resp->error && *resp->error ? resp->error : "");
        return;
    }
    if (resp->error && *resp->error) {
        snprintf(d->login_error, sizeof d->login_error, "%s", resp->error);
        log_error("login refused by %s: %s", d->url.base, resp->error);
        return;
    }
    if (resp->node_key_expired) {
        if (d->mode == LOGIN_REFRESH) {
            log_info("login: the server says the node key expired: registering a new one");
            new_pending_key(d);
            d->mode = LOGIN_NEW;
            return;
        }
        snprintf(d->retry_reason, sizeof d->retry_reason,
                 "register: the server calls the new node key expired at once");
        return;
    }
    if (resp->auth_url && *resp->auth_url) {
        if (d->mode == LOGIN_REFRESH && d->opts->authkey && !d->authkey_spent) {
            /* The server no longer knows this node: log in again with the key we were given. */
            log_info("login: the server does not know this node: logging in with the auth key");
            new_pending_key(d);
            d->mode = LOGIN_NEW;
            return;
        }
        if (d->mode == LOGIN_FOLLOWUP && strcmp(resp->auth_url, d->auth_url) == 0) {
            snprintf(d->retry_reason, sizeof d->retry_reason, "login: the same AuthURL again");
            return;
        }
        if (strlen(resp->auth_url) >= sizeof d->auth_url) {
            snprintf(d->retry_reason, sizeof d->retry_reason, "login: AuthURL longer than %zu bytes",
                     sizeof d->auth_url - 1);
            return;
        }
        if (d->mode == LOGIN_REFRESH) {
            memcpy(d->pending_priv, d->node_priv, 32);
            d->have_pending = true;
        }
        snprintf(d->auth_url, sizeof d->auth_url, "%s", resp->auth_url);
        d->mode = LOGIN_FOLLOWUP;
        log_info("login: waiting for %s to be completed", d->auth_url);
        print_auth_url(d);
        update_state(d);
        return;
    }
    bool interactive = d->mode == LOGIN_FOLLOWUP;
    if (d->have_pending) {
        memcpy(d->node_priv, d->pending_priv, 32);
        sodium_memzero(d->pending_priv, 32);
        d->have_pending = false;
        char err[300];
        if (hwc_state_save_node_key(&d->st, d->node_priv, err, sizeof err) < 0)
            log_error("login: %s (the node will need a new login after a restart)", err);
    }
    d->have_node = true;
    d->need_register = false;
    d->authkey_spent = true;
    d->auth_url[0] = '\0';
    log_info("login: logged in as %s (user %lld)%s",
             resp->login_name && *resp->login_name ? resp->login_name : "?", (long long)resp->user_id,
             resp->machine_authorized ? "" : "; the machine awaits the admin's approval");
    if (interactive) {
        fprintf(stderr, "Success.\n");
        fflush(stderr);
    }
    update_state(d);
}

static void reg_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct daemon *d = arg;
    d->reg = NULL;
    char excerpt[ERROR_BODY_MAX + 1];
    if (code != 0 || d->reg_status != 200) {
        size_t n = d->reg_len < ERROR_BODY_MAX ? d->reg_len : ERROR_BODY_MAX;
        memcpy(excerpt, d->reg_body ? d->reg_body : "", n);
        excerpt[n] = '\0';
        excerpt[strcspn(excerpt, "\r\n")] = '\0';
        char why[400];
        if (code != 0)
            snprintf(why, sizeof why, "register: the server reset the request (HTTP/2 code %u)", code);
        else
            snprintf(why, sizeof why, "register: HTTP %d%s%s", d->reg_status, excerpt[0] ? ": " : "", excerpt);
        if (d->mode == LOGIN_LOGOUT)
            logout_answered(d, why);
        else
            snprintf(d->retry_reason, sizeof d->retry_reason, "%s", why);
        kick(d);
        return;
    }
    struct tc_register_response resp;
    char err[TC_ERRLEN];
    if (tc_register_response_parse((const uint8_t *)(d->reg_body ? d->reg_body : ""), d->reg_len, &resp,
                                   err, sizeof err) < 0) {
        if (d->mode == LOGIN_LOGOUT)
            logout_answered(d, err);
        else
            snprintf(d->retry_reason, sizeof d->retry_reason, "register: bad answer: %s", err);
        kick(d);
        return;
    }
    handle_register(d, &resp);
    tc_register_response_free(&resp);
    kick(d);
}

static const struct hwc_req_handler reg_handler = {
    .on_response = reg_response,
    .on_data = reg_data,
    .on_close = reg_close,
};

static void send_register(struct daemon *d)
{
    uint8_t pub[32], old_pub[32];
    hw_key_public(login_key(d), pub);
    bool rotating = d->mode == LOGIN_NEW && d->have_node && d->have_pending;
    if (rotating)
        hw_key_public(d->node_priv, old_pub);
    struct tc_register_request_build b = {
        .version = TC_CAPVER,
        .node_key = pub,
        .old_node_key = rotating ? old_pub : NULL,
        .hostinfo = d->hostinfo,
        .ephemeral = d->opts->ephemeral,
    };
    switch (d->mode) {
    case LOGIN_NEW:
        b.auth_key = d->authkey_spent ? NULL : d->opts->authkey;
        break;
    case LOGIN_FOLLOWUP:
        b.followup = d->auth_url;
        break;
    case LOGIN_LOGOUT:
        /* Upstream sends exactly this past instant (Unix 123) to log out. */
        b.expiry = tc_time_from_unix(123);
        break;
    case LOGIN_REFRESH:
        break;
    }
    json_t *j = tc_register_request_to_json(&b);
    size_t len;
    char *body = tc_json_dump(j, &len);
    json_decref(j);
    free(d->reg_body);
    d->reg_body = NULL;
    d->reg_len = 0;
    d->reg_status = 0;
    static const char *names[] = {"refresh", "new key", "follow-up", "logout"};
    log_debug("register: %s request for %s", names[d->mode], d->url.base);
    d->reg = hwc_conn_post(d->conn, "/machine/register", body, len, &reg_handler, d);
    free(body);
    if (!d->reg)
        hwc_conn_fail_soon(d->conn, "register: HTTP/2 refused the request");
}

/* ---- map stream ---- */

static void watchdog_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct daemon *d = arg;
    d->watchdog = NULL;
    snprintf(d->drop_reason, sizeof d->drop_reason, "map stream: no message for %.1f s",
             (double)d->watchdog_ms / 1000.0);
    reconcile(d);
}

static void arm_watchdog(struct daemon *d)
{
    cancel_timer(d, &d->watchdog);
    d->watchdog = hw_timer_start(d->loop, d->watchdog_ms, watchdog_cb, d);
}

static void map_response(struct hwc_req *r, int status, void *arg)
{
    struct daemon *d = arg;
    d->map_status = status;
}

/* One line per peer that came or went, so a test log (or an admin) can follow the
 * tailnet from the client's side. ids are sorted in both maps. */
static void log_peer_changes(const struct tc_netmap *before, const struct tc_netmap *after)
{
    size_t i = 0, j = 0;
    while (i < before->n_peers || j < after->n_peers) {
        const struct tc_node *a = i < before->n_peers ? &before->peers[i] : NULL;
        const struct tc_node *b = j < after->n_peers ? &after->peers[j] : NULL;
        if (a && (!b || a->id < b->id)) {
            log_info("netmap: peer %lld %s left", (long long)a->id, a->name ? a->name : "");
            i++;
        } else if (b && (!a || b->id < a->id)) {
            log_info("netmap: peer %lld %s joined (%s)", (long long)b->id, b->name ? b->name : "",
                     b->addresses.n ? b->addresses.v[0] : "no address");
            j++;
        } else {
            if (strcmp(a->name ? a->name : "", b->name ? b->name : "") != 0)
                log_info("netmap: peer %lld renamed %s -> %s", (long long)b->id, a->name ? a->name : "",
                         b->name ? b->name : "");
            int64_t now = hw_now();
            if (hwc_node_expired(a, now) != hwc_node_expired(b, now))
                log_info("netmap: peer %lld %s %s", (long long)b->id, b->name ? b->name : "",
                         hwc_node_expired(b, now) ? "expired" : "is valid again");
            i++;
            j++;
        }
    }
}

/* The ids of a netmap's peers and their names, enough to log what a message changed. */
static void snapshot(const struct tc_netmap *nm, struct tc_netmap *out)
{
    memset(out, 0, sizeof *out);
    out->peers = hw_calloc(nm->n_peers ? nm->n_peers : 1, sizeof *out->peers);
    for (size_t i = 0; i < nm->n_peers; i++) {
        out->peers[i].id = nm->peers[i].id;
        out->peers[i].name = nm->peers[i].name ? hw_strdup(nm->peers[i].name) : NULL;
        out->peers[i].key_expiry = nm->peers[i].key_expiry;
        out->peers[i].expired = nm->peers[i].expired;
    }
    out->n_peers = nm->n_peers;
}

static void snapshot_free(struct tc_netmap *snap)
{
    for (size_t i = 0; i < snap->n_peers; i++)
        free(snap->peers[i].name);
    free(snap->peers);
}

static int on_map_message(const char *json, size_t len, void *arg)
{
    struct daemon *d = arg;
    char err[TC_ERRLEN];
    arm_watchdog(d);
    if (!d->map_live) {
        if (tc_netmap_apply_json(d->stream_nm, json, len, err, sizeof err) < 0) {
            snprintf(d->drop_reason, sizeof d->drop_reason, "map stream: %s", err);
            hwc_conn_fail_soon(d->conn, d->drop_reason);
            return 1;
        }
        if (!d->stream_nm->has_self)
            return 0; /* only keep-alives so far */
        /* A new stream starts from a full map: it replaces the old one whole. */
        struct tc_netmap before;
        snapshot(&d->nm, &before);
        bool had = d->have_nm;
        tc_netmap_clear(&d->nm);
        d->nm = *d->stream_nm;
        free(d->stream_nm);
        d->stream_nm = NULL;
        d->have_nm = true;
        d->map_live = true;
        d->backoff = 0;
        d->problem[0] = '\0';
        if (had)
            log_peer_changes(&before, &d->nm);
        else
            log_info("netmap: %zu peers", d->nm.n_peers);
        snapshot_free(&before);
        update_state(d);
        return 0;
    }
    if (len == strlen(TC_KEEPALIVE_JSON) && memcmp(json, TC_KEEPALIVE_JSON, len) == 0)
        return 0; /* nothing to apply or log: the watchdog is all it feeds */
    uint64_t before_msgs = d->nm.messages;
    struct tc_netmap before;
    snapshot(&d->nm, &before);
    char *self_name = d->nm.self.name ? hw_strdup(d->nm.self.name) : NULL;
    int rc = tc_netmap_apply_json(&d->nm, json, len, err, sizeof err);
    if (rc == 0 && d->nm.messages != before_msgs) {
        log_peer_changes(&before, &d->nm);
        if (strcmp(self_name ? self_name : "", d->nm.self.name ? d->nm.self.name : "") != 0)
            log_info("netmap: this node is now %s", d->nm.self.name ? d->nm.self.name : "");
        update_state(d);
    }
    snapshot_free(&before);
    free(self_name);
    if (rc < 0) {
        snprintf(d->drop_reason, sizeof d->drop_reason, "map stream: %s", err);
        hwc_conn_fail_soon(d->conn, d->drop_reason);
        return 1;
    }
    return 0;
}

static void map_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct daemon *d = arg;
    if (d->map_status != 200) {
        size_t take = ERROR_BODY_MAX - d->map_err_len;
        if (take > len)
            take = len;
        memcpy(d->map_err + d->map_err_len, data, take);
        d->map_err_len += take;
        d->map_err[d->map_err_len] = '\0';
        return;
    }
    int rc = tc_mapdec_feed(d->dec, data, len, on_map_message, d);
    if (rc == -1) {
        snprintf(d->drop_reason, sizeof d->drop_reason, "map stream: %s", tc_mapdec_error(d->dec));
        hwc_conn_fail_soon(d->conn, d->drop_reason);
    }
}

static void map_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct daemon *d = arg;
    d->map = NULL;
    d->map_live = false;
    cancel_timer(d, &d->watchdog);
    if (d->drop_reason[0])
        return;
    d->map_err[strcspn(d->map_err, "\r\n")] = '\0';
    if (d->map_status == 200)
        snprintf(d->retry_reason, sizeof d->retry_reason, "map stream ended by the server%s",
                 code == 8 ? " (cancelled)" : code ? " (reset)" : "");
    else if (d->map_status == 0)
        snprintf(d->retry_reason, sizeof d->retry_reason, "map request reset by the server (HTTP/2 code %u)", code);
    else {
        /* upstream retries these forever; a server that forgot the node (deleted it, or
         * lost its database) answers 401/403/404, so log in again instead */
        if (d->map_status == 401 || d->map_status == 403 || d->map_status == 404) {
            d->need_register = true;
            d->mode = LOGIN_REFRESH;
        }
        snprintf(d->retry_reason, sizeof d->retry_reason, "map request refused: HTTP %d%s%s", d->map_status,
                 d->map_err[0] ? ": " : "", d->map_err);
    }
    kick(d);
}

static const struct hwc_req_handler map_handler = {
    .on_response = map_response,
    .on_data = map_data,
    .on_close = map_close,
};

/* The body of a map request with what this node tells the server (node and disco keys,
 * Hostinfo with the current NetInfo, endpoints): the streaming one, or a lite update
 * (Stream false, OmitPeers true). Either carries the NetInfo, so no lite update is
 * owed for it afterwards. */
static char *map_request_body(struct daemon *d, bool stream, size_t *len)
{
    uint8_t pub[32];
    hw_key_public(d->node_priv, pub);
    struct tc_map_request_build b = {
        .version = TC_CAPVER,
        .compress_zstd = true,
        .keep_alive = true,
        .node_key = pub,
        .disco_key = d->disco_pub,
        .stream = stream,
        .omit_peers = !stream,
        .hostinfo = d->hostinfo,
        .endpoints = (const char *const *)d->endpoints,
        .endpoint_types = d->endpoint_types,
        .n_endpoints = d->n_endpoints,
    };
    json_decref(d->sent_netinfo);
    d->sent_netinfo = json_incref(json_object_get(d->hostinfo, "NetInfo"));
    d->lite_wanted = false;
    json_t *j = tc_map_request_to_json(&b);
    char *body = tc_json_dump(j, len);
    json_decref(j);
    return body;
}

static void send_map(struct daemon *d)
{
    size_t len;
    char *body = map_request_body(d, true, &len);
    if (d->dec)
        tc_mapdec_free(d->dec);
    d->dec = tc_mapdec_new(true, 0);
    if (d->stream_nm)
        tc_netmap_clear(d->stream_nm);
    else
        d->stream_nm = hw_malloc(sizeof *d->stream_nm);
    tc_netmap_init(d->stream_nm);
    d->map_live = false;
    d->map_status = 0;
    d->map_err_len = 0;
    d->map_err[0] = '\0';
    d->map = hwc_conn_post(d->conn, "/machine/map", body, len, &map_handler, d);
    free(body);
    if (!d->map) {
        hwc_conn_fail_soon(d->conn, "map: HTTP/2 refused the request");
        return;
    }
    arm_watchdog(d);
}

/* ---- NetInfo: the home DERP region and latencies, told to the server ---- */

static void lite_response(struct hwc_req *r, int status, void *arg)
{
    struct daemon *d = arg;
    d->lite_status = status;
}

static void lite_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg) {}

static void lite_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct daemon *d = arg;
    d->lite = NULL;
    if (code != 0 || d->lite_status != 200) {
        /* The next stream request carries the NetInfo anyway; try once more meanwhile. */
        log_warn("control: the server did not take the endpoints/NetInfo update (%s %d)",
                 code ? "HTTP/2 reset" : "HTTP", code ? (int)code : d->lite_status);
        d->lite_wanted = true;
        return;
    }
    log_debug("control: endpoints/NetInfo update delivered");
    if (d->lite_wanted)
        kick(d);
}

static const struct hwc_req_handler lite_handler = {
    .on_response = lite_response,
    .on_data = lite_data,
    .on_close = lite_close,
};

/* A lite map request (Stream false, OmitPeers true): the server stores the Hostinfo
 * and answers 200, as upstream sends it when NetInfo changes. */
static void send_lite(struct daemon *d)
{
    size_t len;
    char *body = map_request_body(d, false, &len);
    d->lite_status = 0;
    d->lite = hwc_conn_post(d->conn, "/machine/map", body, len, &lite_handler, d);
    free(body);
    if (!d->lite)
        d->lite_wanted = true;
}

static void on_netinfo(const json_t *ni, void *arg)
{
    struct daemon *d = arg;
    const json_t *old = json_object_get(d->hostinfo, "NetInfo");
    int old_home = (int)json_integer_value(json_object_get(old, "PreferredDERP"));
    int home = (int)json_integer_value(json_object_get(ni, "PreferredDERP"));
    if (home != old_home)
        log_info("netinfo: home DERP region %d%s", home, d->map_live ? ": telling the server" : "");
    /* Kept in Hostinfo for every later request; a lite update only when something other
     * than the latencies changed, as upstream's NetInfo.BasicallyEqual decides. */
    json_object_set_new(d->hostinfo, "NetInfo", json_deep_copy(ni));
    if (!hwc_netinfo_basically_equal(d->sent_netinfo, ni)) {
        d->lite_wanted = true;
        kick(d);
    }
}

/* Upstream sends its endpoints in every map request and a lite update when they
 * change (controlclient's UpdateEndpoints -> sendMapRequest with OmitPeers). */
static void on_endpoints(const char *const *eps, const int *types, size_t n, void *arg)
{
    struct daemon *d = arg;
    for (size_t i = 0; i < d->n_endpoints; i++)
        free(d->endpoints[i]);
    free(d->endpoints);
    free(d->endpoint_types);
    d->endpoints = hw_calloc(n ? n : 1, sizeof *d->endpoints);
    d->endpoint_types = hw_calloc(n ? n : 1, sizeof *d->endpoint_types);
    for (size_t i = 0; i < n; i++) {
        d->endpoints[i] = hw_strdup(eps[i]);
        d->endpoint_types[i] = types[i];
    }
    d->n_endpoints = n;
    if (d->map_live) {
        d->lite_wanted = true;
        kick(d);
    }
}

/* ---- DERP debug packets (client/derpdebug.h) ---- */

static const struct tc_node *peer_by_key(struct daemon *d, const uint8_t key[32])
{
    return d->have_nm ? tc_netmap_peer_by_key(&d->nm, key) : NULL;
}

static void on_derp_packet(const uint8_t src[32], int region, const uint8_t *data, size_t len, void *arg)
{
    struct daemon *d = arg;
    struct hwc_dbg_pkt p;
    if (hwc_dbg_parse(data, len, &p) < 0)
        return; /* WireGuard and disco belong to the data plane, which is not here yet */
    if (p.kind == HWC_DBG_ACK) {
        for (int i = 0; i < MAX_DEBUG_SENDS; i++)
            if (d->sends[i] && d->sends[i]->tx && hwc_dbg_tx_run(d->sends[i]->tx) == p.run) {
                hwc_dbg_tx_ack(d->sends[i]->tx, &p);
                break;
            }
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    struct hwc_dbg_pkt ack;
    if (!hwc_dbg_rx_data(d->dbg_rx, src, &p, len, (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000, &ack))
        return;
    uint8_t buf[HWC_DBG_HDR_LEN];
    hwc_dbg_build(buf, sizeof buf, &ack);
    const struct tc_node *peer = peer_by_key(d, src);
    char err[300];
    /* The answer takes the route the data came by (the region it arrived on). */
    if (hwc_magic_send_derp(d->magic, src, peer ? peer->home_derp : region, buf, sizeof buf, err, sizeof err) < 0)
        log_debug("derp debug: cannot acknowledge: %s", err);
}

static int debug_send_packet(void *arg, const uint8_t *pkt, size_t len, char *err, size_t errlen)
{
    struct debug_send *ds = arg;
    struct daemon *d = ds->d;
    /* The peer's home may change while we send: look it up each time. */
    const struct tc_node *peer = d->have_nm ? tc_netmap_peer(&d->nm, ds->peer_id) : NULL;
    if (!peer || memcmp(peer->key, ds->peer_key, 32) != 0) {
        snprintf(err, errlen, "%s left the network map (or changed its key)", ds->peer_name);
        return -1;
    }
    return hwc_magic_send_derp(d->magic, ds->peer_key, peer->home_derp, pkt, len, err, errlen);
}

static void debug_send_free(struct daemon *d, struct debug_send *ds)
{
    for (int i = 0; i < MAX_DEBUG_SENDS; i++)
        if (d->sends[i] == ds)
            d->sends[i] = NULL;
    hwc_dbg_tx_free(ds->tx);
    free(ds);
}

static void debug_send_done(struct hwc_dbg_tx *tx, json_t *result, const char *err, void *arg)
{
    struct debug_send *ds = arg;
    struct daemon *d = ds->d;
    json_object_set_new(result, "Peer", json_string(ds->peer_name));
    if (err)
        json_object_set_new(result, "Problem", json_string(err));
    log_info("derp debug: %lld of %lld packets to %s acknowledged%s%s",
             (long long)json_integer_value(json_object_get(result, "Acked")),
             (long long)json_integer_value(json_object_get(result, "Sent")), ds->peer_name, err ? ": " : "",
             err ? err : "");
    hwc_api_reply(ds->req, result);
    debug_send_free(d, ds);
}

/* A peer by host name, MagicDNS name (with or without the tailnet suffix) or address. */
static const struct tc_node *find_peer(struct daemon *d, const char *what, char *err, size_t errlen)
{
    const struct tc_node *found = NULL;
    size_t wl = strlen(what);
    uint8_t key[32];
    if (hw_key_parse(HW_KEY_NODE, what, key, NULL) == 0) {
        found = d->have_nm ? tc_netmap_peer_by_key(&d->nm, key) : NULL;
        if (!found)
            snprintf(err, errlen, "no peer with node key %s in the network map", what);
        return found;
    }
    for (size_t i = 0; d->have_nm && i < d->nm.n_peers; i++) {
        const struct tc_node *p = &d->nm.peers[i];
        const char *host = p->hostinfo ? json_string_value(json_object_get(p->hostinfo, "Hostname")) : NULL;
        const char *name = p->name ? p->name : "";
        bool match = (host && strcmp(host, what) == 0) || strcmp(name, what) == 0 ||
                     (strncmp(name, what, wl) == 0 && (name[wl] == '.' || name[wl] == '\0'));
        for (size_t k = 0; !match && k < p->addresses.n; k++) {
            const char *a = p->addresses.v[k];
            size_t al = strcspn(a, "/");
            match = al == wl && strncmp(a, what, wl) == 0;
        }
        if (!match)
            continue;
        if (found) {
            snprintf(err, errlen, "\"%s\" names more than one peer (%s and %s): use its IP address", what,
                     found->name ? found->name : "?", name);
            return NULL;
        }
        found = p;
    }
    if (!found)
        snprintf(err, errlen, "no peer \"%s\" in the network map (see `hwclient status`)", what);
    return found;
}

static void api_derp_send(struct daemon *d, struct hwc_api_req *req, json_t *request)
{
    const char *peer_s = json_string_value(json_object_get(request, "peer"));
    json_int_t count = json_integer_value(json_object_get(request, "count"));
    json_int_t size = json_integer_value(json_object_get(request, "size"));
    if (!peer_s || count < 1 || (uint64_t)count > HWC_DBG_MAX_COUNT || size < HWC_DBG_HDR_LEN ||
        size > HWC_DBG_MAX_SIZE) {
        hwc_api_reply_error(req, "derp-send needs a peer, a count of 1 to %llu and a size of %d to %d bytes",
                            (unsigned long long)HWC_DBG_MAX_COUNT, HWC_DBG_HDR_LEN, HWC_DBG_MAX_SIZE);
        return;
    }
    char err[400];
    const struct tc_node *peer = find_peer(d, peer_s, err, sizeof err);
    if (!peer) {
        hwc_api_reply_error(req, "%s", err);
        return;
    }
    int slot = -1;
    for (int i = 0; i < MAX_DEBUG_SENDS && slot < 0; i++)
        if (!d->sends[i])
            slot = i;
    if (slot < 0) {
        hwc_api_reply_error(req, "already %d derp-send runs under way: wait for one to finish", MAX_DEBUG_SENDS);
        return;
    }
    struct debug_send *ds = hw_calloc(1, sizeof *ds);
    ds->d = d;
    ds->req = req;
    memcpy(ds->peer_key, peer->key, 32);
    ds->peer_id = peer->id;
    snprintf(ds->peer_name, sizeof ds->peer_name, "%s", peer->name ? peer->name : peer_s);
    /* The lasting reasons fail at once rather than after the stall limit. */
    json_t *dm = hwc_magic_derp_map_json(d->magic);
    const char *why = !dm ? "this node has no DERP map from the control server (is derp configured there?)"
                      : !peer->home_derp ? "it has no home DERP region yet (it reports one once its netcheck "
                                           "ran: is it running?)"
                                         : NULL;
    json_decref(dm);
    if (why) {
        hwc_api_reply_error(req, "cannot send to %s through DERP: %s", ds->peer_name, why);
        free(ds);
        return;
    }
    d->sends[slot] = ds;
    log_info("derp debug: sending %lld packets of %lld bytes to %s (home region %d)", (long long)count,
             (long long)size, ds->peer_name, peer->home_derp);
    ds->tx = hwc_dbg_tx_start(d->loop, (uint64_t)count, (size_t)size, debug_send_packet, debug_send_done, ds);
}

static json_t *derp_stats(struct daemon *d)
{
    json_t *o = json_object();
    json_object_set_new(o, "DERP", hwc_magic_status(d->magic));
    json_t *rx = hwc_dbg_rx_json(d->dbg_rx);
    const char *key;
    json_t *v;
    json_object_foreach(rx, key, v) {
        uint8_t k[32];
        const struct tc_node *p = hw_key_parse(HW_KEY_NODE, key, k, NULL) == 0 ? peer_by_key(d, k) : NULL;
        json_object_set_new(v, "Peer", json_string(p && p->name ? p->name : ""));
    }
    json_object_set_new(o, "Received", rx);
    json_object_set_new(o, "UntrackedSenders", json_integer((json_int_t)hwc_dbg_rx_untracked(d->dbg_rx)));
    return o;
}

struct netcheck_waiter {
    struct daemon *d;
    struct hwc_api_req *req;
};

static void netcheck_answer(const struct hwc_nc_report *r, const char *err, void *arg)
{
    struct netcheck_waiter *w = arg;
    struct daemon *d = w->d;
    struct hwc_api_req *req = w->req;
    free(w);
    if (!r) {
        hwc_api_reply_error(req, "netcheck: %s", err);
        return;
    }
    json_t *a = json_object();
    json_object_set_new(a, "Report", hwc_nc_report_json(r));
    json_t *dm = hwc_magic_derp_map_json(d->magic);
    json_object_set_new(a, "DERPMap", dm ? dm : json_object());
    json_object_set_new(a, "HomeRegion", json_integer(hwc_magic_home(d->magic)));
    hwc_api_reply(req, a);
}

/* ---- `hwclient ping` ---- */

static void ping_waiter_remove(struct daemon *d, struct ping_waiter *w)
{
    for (struct ping_waiter **pp = &d->pings; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    free(w);
}

static void ping_answer(const struct hwc_magic_ping_result *r, const char *err, void *arg)
{
    struct ping_waiter *w = arg;
    struct daemon *d = w->d;
    struct hwc_api_req *req = w->req;
    if (!r) {
        hwc_api_reply_error(req, "ping %s: %s", w->name, err);
        ping_waiter_remove(d, w);
        return;
    }
    /* upstream's ipnstate.PingResult */
    json_t *a = json_object();
    json_object_set_new(a, "NodeName", json_string(w->name));
    json_object_set_new(a, "NodeIP", json_string(w->ip));
    if (r->timed_out) {
        json_object_set_new(a, "TimedOut", json_true());
    } else {
        json_object_set_new(a, "LatencySeconds", json_real((double)r->latency_us / 1e6));
        json_object_set_new(a, "Endpoint", json_string(r->endpoint));
        json_object_set_new(a, "DERPRegionID", json_integer(r->derp_region));
        const struct tc_derp_region *reg =
            r->derp_region && d->have_nm && d->nm.has_derp_map ? tc_derp_map_region(&d->nm.derp_map, r->derp_region)
                                                               : NULL;
        json_object_set_new(a, "DERPRegionCode", json_string(reg && reg->region_code ? reg->region_code : ""));
    }
    hwc_api_reply(req, a);
    ping_waiter_remove(d, w);
}

static void api_ping(struct daemon *d, struct hwc_api_req *req, json_t *request)
{
    const char *peer_s = json_string_value(json_object_get(request, "peer"));
    if (!peer_s || !*peer_s) {
        hwc_api_reply_error(req, "ping needs a peer (name, tailnet IP or node key)");
        return;
    }
    char err[400];
    const struct tc_node *peer = find_peer(d, peer_s, err, sizeof err);
    if (!peer) {
        hwc_api_reply_error(req, "%s", err);
        return;
    }
    struct ping_waiter *w = hw_calloc(1, sizeof *w);
    w->d = d;
    w->req = req;
    /* upstream prints the short MagicDNS name (the host label) */
    const char *name = peer->name ? peer->name : peer_s;
    snprintf(w->name, sizeof w->name, "%.*s", (int)strcspn(name, "."), name);
    if (peer->addresses.n)
        snprintf(w->ip, sizeof w->ip, "%.*s", (int)strcspn(peer->addresses.v[0], "/"), peer->addresses.v[0]);
    w->next = d->pings;
    d->pings = w;
    if (hwc_magic_ping(d->magic, peer->key, ping_answer, w, err, sizeof err) < 0) {
        hwc_api_reply_error(req, "ping %s: %s", w->name, err);
        ping_waiter_remove(d, w);
    }
}

/* ---- data plane ---- */

static void on_wg_packet(const uint8_t *pkt, size_t len, void *arg)
{
    struct daemon *d = arg;
    if (d->wg)
        hwc_wgdev_input(d->wg, pkt, len, NULL, 0);
}

static int wg_send(void *arg, const uint8_t *peer_key, const uint8_t *pkt, size_t len)
{
    struct daemon *d = arg;
    char err[300];
    if (!peer_key)
        return -1; /* a cookie reply to a sender we cannot name: no path back */
    if (hwc_magic_send(d->magic, peer_key, pkt, len, err, sizeof err) < 0) {
        log_debug("wireguard: cannot send %zu bytes: %s", len, err);
        return -1;
    }
    return 0;
}

/* Parses a list of prefixes, skipping (and logging) what is not one. */
static size_t parse_prefixes(const struct tc_strv *v, struct hwc_prefix *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < v->n && n < cap; i++) {
        if (hwc_prefix_parse(v->v[i], &out[n]) == 0)
            n++;
        else
            log_warn("netmap: \"%s\" is not an IP prefix; ignored", v->v[i]);
    }
    return n;
}

#define DP_MAX_PREFIXES 256

static bool strv_has(const struct tc_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->v[i], s) == 0)
            return true;
    return false;
}

static void exit_log(struct daemon *d, bool warn, const char *msg)
{
    if (strcmp(d->exit_state, msg) == 0)
        return;
    snprintf(d->exit_state, sizeof d->exit_state, "%s", msg);
    if (warn)
        log_warn("exit node: %s", msg);
    else
        log_info("exit node: %s", msg);
}

/* The --exit-node peer when it offers both default routes (approved at the server, so
 * in its AllowedIPs), as upstream requires of an exit node; else NULL, said once. */
static const struct tc_node *exit_peer(struct daemon *d)
{
    if (!d->opts->exit_node)
        return NULL;
    char err[300], msg[300];
    const struct tc_node *p = find_peer(d, d->opts->exit_node, err, sizeof err);
    if (!p) {
        exit_log(d, true, err);
        return NULL;
    }
    const struct tc_strv *allowed = p->allowed_ips_null ? &p->addresses : &p->allowed_ips;
    if (!strv_has(allowed, "0.0.0.0/0") || !strv_has(allowed, "::/0")) {
        snprintf(msg, sizeof msg, "%s does not offer 0.0.0.0/0 and ::/0 (not advertised or not approved); "
                 "traffic that would go to it is dropped", p->name ? p->name : d->opts->exit_node);
        exit_log(d, true, msg);
        return NULL;
    }
    snprintf(msg, sizeof msg, "using %s", p->name ? p->name : d->opts->exit_node);
    exit_log(d, false, msg);
    return p;
}

/* tailscaled's way: with --exit-node set the host's default route goes into the tunnel
 * even while the exit node is unusable, so that nothing leaks around it. */
static void sync_exit_routes(struct daemon *d, bool on)
{
    if (!d->tun || !d->opts->exit_node)
        return;
    char err[400];
    if (hwc_tun_set_exit_routes(d->tun, on, d->opts->exit_node_allow_lan, err, sizeof err) < 0)
        log_error("exit node: %s", err);
}

/* --advertise-routes / --advertise-exit-node with a TUN device: forwarding and
 * masquerade on this host, undone in teardown (or at the next start after a crash). */
static int setup_router(struct daemon *d, char *err, size_t errlen)
{
    if (!d->tun)
        return 0;
    char *saved = hw_sprintf("%s/forwarding.saved", d->st.dir);
    if (!d->opts->n_routes) {
        hwc_router_cleanup(saved); /* a crashed router's chains and sysctls */
        free(saved);
        return 0;
    }
    d->router = hwc_router_start(hwc_tun_name(d->tun), d->opts->snat_subnet_routes, saved, err, errlen);
    free(saved);
    return d->router ? 0 : -1;
}

/* The WireGuard peers, the TUN addresses and routes from the netmap. Peers that stay
 * keep their sessions; the device is remade only for a new node key. */
static void userspace_deliver(const uint8_t *pkt, size_t len, void *arg);

static void sync_dataplane(struct daemon *d, bool usable)
{
    if (!d->tun && !d->userspace)
        return;
    char err[400];
    if (!usable) {
        if (d->wg) {
            log_info("data plane: stopped (no usable node key)");
            hwc_wgdev_free(d->wg);
            d->wg = NULL;
        }
        if (d->tun) {
            hwc_tun_set_routes(d->tun, NULL, 0, err, sizeof err);
            hwc_tun_set_addresses(d->tun, NULL, 0, err, sizeof err);
        }
        sync_exit_routes(d, false);
        d->exit_active = false;
        return;
    }
    if (d->wg && memcmp(d->wg_key, d->node_priv, 32) != 0) {
        hwc_wgdev_free(d->wg);
        d->wg = NULL;
    }
    if (!d->wg) {
        d->wg = hwc_wgdev_new(d->loop, d->node_priv, d->tun, HWC_TUN_MTU, wg_send, d, err, sizeof err);
        if (!d->wg) {
            log_error("data plane: %s", err);
            return;
        }
        memcpy(d->wg_key, d->node_priv, 32);
        if (!d->tun)
            hwc_wgdev_set_deliver(d->wg, userspace_deliver, d);
        log_info("data plane: WireGuard on %s", d->tun ? hwc_tun_name(d->tun) : "the userspace netstack");
    }
    struct hwc_prefix self[16];
    size_t n_self = parse_prefixes(&d->nm.self.addresses, self, 16);
    if (d->tun && hwc_tun_set_addresses(d->tun, self, n_self, err, sizeof err) < 0)
        log_warn("data plane: %s", err);

    size_t n = d->nm.n_peers;
    struct hwc_wgdev_peer_cfg *cfg = hw_calloc(n ? n : 1, sizeof *cfg);
    struct hwc_prefix *pfx = hw_calloc(n ? n * DP_MAX_PREFIXES : 1, sizeof *pfx);
    /* routes: the tailnet ranges (as tailscaled adds 100.64.0.0/10 on Linux), plus
     * subnet routes with --accept-routes */
    size_t n_routes = 0, cap_routes = 2 + n * DP_MAX_PREFIXES;
    struct hwc_prefix *routes = hw_calloc(cap_routes, sizeof *routes);
    hwc_prefix_parse("100.64.0.0/10", &routes[n_routes++]);
    hwc_prefix_parse("fd7a:115c:a1e0::/48", &routes[n_routes++]);
    const struct tc_node *exit = exit_peer(d);
    d->exit_active = exit != NULL;
    if (exit)
        memcpy(d->exit_key, exit->key, 32);
    for (size_t i = 0; i < n; i++) {
        const struct tc_node *p = &d->nm.peers[i];
        struct hwc_prefix *mine = pfx + i * DP_MAX_PREFIXES, addrs[16];
        size_t n_addrs = parse_prefixes(&p->addresses, addrs, 16);
        size_t k = parse_prefixes(p->allowed_ips_null ? &p->addresses : &p->allowed_ips, mine, DP_MAX_PREFIXES);
        size_t keep = 0;
        for (size_t j = 0; j < k; j++) {
            bool own = false;
            for (size_t a = 0; a < n_addrs && !own; a++)
                own = hwc_prefix_equal(&addrs[a], &mine[j]);
            if (mine[j].bits == 0 && p != exit)
                continue; /* default routes: only the chosen exit node's */
            if (!own && mine[j].bits > 0 && !d->opts->accept_routes)
                continue; /* a subnet route: only with --accept-routes */
            mine[keep++] = mine[j];
            bool covered = false;
            for (size_t r = 0; r < 2 && !covered; r++)
                covered = hwc_prefix_contains(&routes[r], mine[j].family, mine[j].addr) &&
                          routes[r].bits <= mine[j].bits;
            if (!covered && mine[j].bits > 0 && n_routes < cap_routes)
                routes[n_routes++] = mine[j];
        }
        memcpy(cfg[i].key, p->key, 32);
        cfg[i].allowed = mine;
        cfg[i].n_allowed = keep;
        cfg[i].name = p->name;
    }
    hwc_wgdev_set_peers(d->wg, cfg, n);
    if (d->tun && hwc_tun_set_routes(d->tun, routes, n_routes, err, sizeof err) < 0)
        log_warn("data plane: %s", err);
    sync_exit_routes(d, true);
    /* the first two are the tailnet ranges, which magicsock leaves out on its own */
    hwc_magic_set_tunnel_routes(d->magic, routes + 2, n_routes - 2);
    free(routes);
    free(pfx);
    free(cfg);
}

/* What the DERP side needs from the netmap and the login state. */
static void sync_magic(struct daemon *d)
{
    if (!d->magic)
        return;
    bool usable = d->have_node && !d->logged_out && d->have_nm && d->nm.has_self &&
                  !hwc_node_expired(&d->nm.self, hw_now());
    hwc_magic_set_derp_map(d->magic, d->have_nm && d->nm.has_derp_map ? &d->nm.derp_map : NULL);
    hwc_magic_set_private_key(d->magic, usable ? d->node_priv : NULL);
    hwc_magic_set_control_connected(d->magic, d->map_live);
    if (d->have_nm) {
        d->peer_homes = realloc(d->peer_homes, (d->nm.n_peers + 1) * sizeof *d->peer_homes);
        if (!d->peer_homes)
            abort();
        for (size_t i = 0; i < d->nm.n_peers; i++)
            d->peer_homes[i] = d->nm.peers[i].home_derp;
        hwc_magic_set_peer_homes(d->magic, d->peer_homes, d->nm.n_peers);
    }
    size_t n = usable ? d->nm.n_peers : 0;
    struct hwc_magic_peer *mp = hw_calloc(n ? n : 1, sizeof *mp);
    for (size_t i = 0; i < n; i++) {
        const struct tc_node *p = &d->nm.peers[i];
        memcpy(mp[i].node_key, p->key, 32);
        /* an expired peer gets nothing from us, as upstream drops it from the config */
        if (!hwc_node_expired(p, hw_now()))
            memcpy(mp[i].disco_key, p->disco_key, 32);
        mp[i].home_region = p->home_derp;
        mp[i].endpoints = (const char *const *)p->endpoints.v;
        mp[i].n_endpoints = p->endpoints.n;
    }
    hwc_magic_set_peers(d->magic, mp, n);
    free(mp);
    sync_dataplane(d, usable && d->have_nm);
}

/* ---- --tun=userspace ---- */

/* An IP packet the userspace stack sends: to the WireGuard device, which picks the peer by
 * AllowedIPs as it does for a TUN read. */
static void userspace_output(const uint8_t *pkt, size_t len, void *arg)
{
    struct daemon *d = arg;
    if (d->wg && hwc_wgdev_send_ip(d->wg, pkt, len) == 0)
        return;
    d->userspace_unrouted++;    /* no data plane yet (not logged in), or no peer for it */
}

/* A packet WireGuard decrypted (its source checked against the peer's AllowedIPs). */
static void userspace_deliver(const uint8_t *pkt, size_t len, void *arg)
{
    struct daemon *d = arg;
    if (d->userspace)
        hwc_userspace_input(d->userspace, pkt, len);
}

/* Addresses, names and AllowedIPs for the proxies, after every netmap or state change. */
static void sync_userspace(struct daemon *d)
{
    if (!d->userspace)
        return;
    bool usable = d->have_nm && d->nm.has_self && !d->logged_out;
    hwc_userspace_update(d->userspace, usable ? &d->nm : NULL);
}

/* ---- logout ---- */

static void reply_waiters(struct daemon *d, json_t *answer)
{
    for (size_t i = 0; i < d->n_waiters; i++)
        hwc_api_reply(d->waiters[i], json_deep_copy(answer));
    free(d->waiters);
    d->waiters = NULL;
    d->n_waiters = 0;
    json_decref(answer);
}

static void finish_logout(struct daemon *d, bool told, const char *note)
{
    char err[300];
    d->want_logout = false;
    d->logout_answered = false;
    cancel_timer(d, &d->logout_timer);
    drop_conn(d);
    cancel_timer(d, &d->retry);
    if (hwc_state_forget_node_key(&d->st, err, sizeof err) < 0)
        log_error("logout: %s", err);
    sodium_memzero(d->node_priv, 32);
    sodium_memzero(d->pending_priv, 32);
    d->have_node = d->have_pending = false;
    tc_netmap_clear(&d->nm);
    tc_netmap_init(&d->nm);
    d->have_nm = false;
    d->auth_url[0] = '\0';
    d->login_error[0] = '\0';
    d->logged_out = true;
    d->need_register = true;
    d->mode = LOGIN_NEW;
    if (told && !*note)
        log_info("logout: done; the node key is forgotten");
    else
        log_warn("logout: %s%s; the node key is forgotten anyway", told ? "the server said: " : "", note);
    update_state(d);
    json_t *a = json_object();
    json_object_set_new(a, "ok", json_true());
    json_object_set_new(a, "server_told", json_boolean(told && !*note));
    json_object_set_new(a, "note", json_string(note));
    reply_waiters(d, a);
}

static void logout_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct daemon *d = arg;
    d->logout_timer = NULL;
    char note[128];
    snprintf(note, sizeof note, "the server did not confirm the logout within %d s", LOGOUT_TIMEOUT_MS / 1000);
    finish_logout(d, false, note);
}

/* ---- the one place that decides what to do next ---- */

static void reconcile(struct daemon *d)
{
    if (d->drop_reason[0]) {
        char why[sizeof d->drop_reason];
        snprintf(why, sizeof why, "%s", d->drop_reason);
        d->drop_reason[0] = '\0';
        d->retry_reason[0] = '\0';
        bool was_mapping = d->map_live;
        drop_conn(d);
        if (d->want_logout) {
            finish_logout(d, false, why);
            return;
        }
        if (was_mapping)
            log_warn("control: connection lost: %s", why);
        if (!d->logged_out && !d->login_error[0])
            schedule_retry(d, why);
        return;
    }
    if (d->want_logout && d->logout_answered) {
        finish_logout(d, true, d->logout_note);
        return;
    }
    if (d->login_error[0] && !d->want_logout) {
        if (!d->ever_running) {
            fprintf(stderr, "hwclient: login failed: %s\n", d->login_error);
            d->exit_code = 1;
            hw_loop_stop(d->loop);
            return;
        }
        drop_conn(d);
        update_state(d);
        return;
    }
    if (d->retry_reason[0]) {
        char why[sizeof d->retry_reason];
        snprintf(why, sizeof why, "%s", d->retry_reason);
        d->retry_reason[0] = '\0';
        if (!d->want_logout) {
            schedule_retry(d, why);
            return;
        }
    }
    if (d->logged_out && !d->want_logout)
        return;
    if (d->want_logout && !d->have_node) {
        /* Never registered (or waiting for an AuthURL): nothing to tell the server. */
        finish_logout(d, true, "");
        return;
    }
    if (d->retry && !d->want_logout)
        return;
    cancel_timer(d, &d->retry);
    if (!d->conn) {
        d->conn = hwc_conn_dial(d->loop, &d->url, d->machine_priv, TC_CAPVER, &conn_callbacks, d);
        return;
    }
    if (!d->conn_ready)
        return;
    if (d->want_logout) {
        if (d->reg && d->mode == LOGIN_LOGOUT)
            return;
        if (d->reg) {
            hwc_req_cancel(d->reg);
            d->reg = NULL;
        }
        if (d->map) {
            hwc_req_cancel(d->map);
            d->map = NULL;
            d->map_live = false;
        }
        d->have_pending = false;
        d->mode = LOGIN_LOGOUT;
        send_register(d);
        return;
    }
    if (d->reg)
        return;
    if (d->need_register) {
        send_register(d);
        return;
    }
    if (!d->map) {
        send_map(d);
        return;
    }
    if (d->map_live && d->lite_wanted && !d->lite)
        send_lite(d);
}

/* ---- local API ---- */

static json_t *status_json_inner(struct daemon *d);

static json_t *status_json(struct daemon *d)
{
    json_t *st = status_json_inner(d);
    if (d->userspace && json_is_object(st)) {
        json_t *u = hwc_userspace_status(d->userspace);
        json_object_set_new(u, "PacketsUnrouted", json_integer((json_int_t)d->userspace_unrouted));
        json_object_set_new(st, "Userspace", u);
    }
    return st;
}

static json_t *status_json_inner(struct daemon *d)
{
    const char *health[4];
    size_t n = 0;
    char h1[1024], h2[1024], h3[1024];
    if (d->login_error[0]) {
        snprintf(h1, sizeof h1, "login refused by the server: %s", d->login_error);
        health[n++] = h1;
    }
    if (!d->map_live && d->problem[0] && !d->logged_out) {
        snprintf(h2, sizeof h2, "not connected to the control server %s: %s", d->url.base, d->problem);
        health[n++] = h2;
    }
    if (hwc_magic_home_problem(d->magic, h3, sizeof h3))
        health[n++] = h3;
    struct hwc_status_in in = {
        .backend_state = backend_state(d),
        .auth_url = d->auth_url,
        .nm = d->have_nm ? &d->nm : NULL,
        .connected = d->map_live,
        .health = health,
        .n_health = n,
        .control_url = d->url.base,
        .now = hw_now(),
    };
    json_t *st = hwc_status_json(&in);
    /* per peer, in its own object (upstream's PeerStatus names): the path
     * (CurAddr/Relay/Addrs/Active) and the WireGuard counters */
    const char *key;
    json_t *ps;
    json_object_foreach(json_object_get(st, "Peer"), key, ps) {
        uint8_t k[32];
        if (hw_key_parse(HW_KEY_NODE, key, k, NULL) != 0)
            continue;
        json_t *path = hwc_magic_peer_status(d->magic, k);
        if (path) {
            json_object_update(ps, path);
            json_decref(path);
        }
        if (d->exit_active && memcmp(k, d->exit_key, 32) == 0) {
            json_object_set_new(ps, "ExitNode", json_true());
            json_t *es = json_object();
            const char *id = json_string_value(json_object_get(ps, "ID"));
            json_object_set_new(es, "ID", json_string(id ? id : ""));
            json_object_set_new(es, "Online", json_boolean(json_is_true(json_object_get(ps, "Online"))));
            json_object_set_new(es, "TailscaleIPs", json_deep_copy(json_object_get(ps, "TailscaleIPs")));
            json_object_set_new(st, "ExitNodeStatus", es);
        }
        json_t *w = d->wg ? hwc_wgdev_peer_status(d->wg, k) : NULL;
        if (w) {
            json_object_update(ps, w);
            json_decref(w);
        }
    }
    return st;
}

static void api_handler(struct hwc_api_req *req, const char *cmd, json_t *request, void *arg)
{
    struct daemon *d = arg;
    if (strcmp(cmd, "status") == 0) {
        hwc_api_reply(req, status_json(d));
    } else if (strcmp(cmd, "netmap") == 0) {
        if (!d->have_nm)
            hwc_api_reply_error(req, "no network map yet (state %s)", backend_state(d));
        else
            hwc_api_reply(req, tc_netmap_to_json(&d->nm));
    } else if (strcmp(cmd, "logout") == 0) {
        if (d->logged_out && !d->want_logout) {
            json_t *a = json_object();
            json_object_set_new(a, "ok", json_true());
            json_object_set_new(a, "note", json_string("already logged out"));
            hwc_api_reply(req, a);
            return;
        }
        d->waiters = realloc(d->waiters, (d->n_waiters + 1) * sizeof *d->waiters);
        if (!d->waiters)
            abort();
        d->waiters[d->n_waiters++] = req;
        if (!d->want_logout) {
            log_info("logout: requested");
            d->want_logout = true;
            d->logout_answered = false;
            d->login_error[0] = '\0';
            d->logout_timer = hw_timer_start(d->loop, LOGOUT_TIMEOUT_MS, logout_timeout, d);
            kick(d);
        }
    } else if (strcmp(cmd, "netcheck") == 0) {
        struct netcheck_waiter *w = hw_calloc(1, sizeof *w);
        w->d = d;
        w->req = req;
        char err[300];
        if (hwc_magic_netcheck(d->magic, netcheck_answer, w, err, sizeof err) < 0) {
            free(w);
            hwc_api_reply_error(req, "netcheck: %s (state %s)", err, backend_state(d));
        }
    } else if (strcmp(cmd, "derp-send") == 0) {
        api_derp_send(d, req, request);
    } else if (strcmp(cmd, "ping") == 0) {
        api_ping(d, req, request);
    } else if (strcmp(cmd, "derp-stats") == 0) {
        hwc_api_reply(req, derp_stats(d));
    } else if (strcmp(cmd, "force-prefer-derp") == 0) {
        json_t *rv = json_object_get(request, "region");
        if (!json_is_integer(rv) || json_integer_value(rv) < 0 || json_integer_value(rv) > INT32_MAX) {
            hwc_api_reply_error(req, "force-prefer-derp needs a region id (0 to stop forcing)");
            return;
        }
        hwc_magic_force_prefer_derp(d->magic, (int)json_integer_value(rv));
        json_t *a = json_object();
        json_object_set_new(a, "ok", json_true());
        hwc_api_reply(req, a);
    } else if (strcmp(cmd, "down") == 0) {
        json_t *a = json_object();
        json_object_set_new(a, "ok", json_true());
        hwc_api_reply(req, a);
        log_info("stopping: `hwclient down`");
        hw_loop_stop(d->loop);
    } else {
        hwc_api_reply_error(req, "unknown command \"%s\" (this daemon knows status, netmap, logout, netcheck, "
                            "ping, derp-send, derp-stats, force-prefer-derp, down)", cmd);
    }
}

/* ---- setup ---- */

static void signal_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct daemon *d = arg;
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        log_info("stopping: %s", strsignal((int)si.ssi_signo));
        hw_loop_stop(d->loop);
    }
}

static json_t *build_hostinfo(const struct hwc_up_opts *o)
{
    struct utsname u;
    char host[256] = "";
    if (uname(&u) < 0)
        memset(&u, 0, sizeof u);
    if (o->hostname)
        snprintf(host, sizeof host, "%s", o->hostname);
    else if (gethostname(host, sizeof host - 1) < 0)
        snprintf(host, sizeof host, "hwclient");
    json_t *hi = json_object();
    json_object_set_new(hi, "IPNVersion", json_string(HW_VERSION "-hwclient"));
    json_object_set_new(hi, "OS", json_string("linux"));
    json_object_set_new(hi, "OSVersion", json_string(u.release));
    json_object_set_new(hi, "Hostname", json_string(host));
    json_object_set_new(hi, "Machine", json_string(u.machine));
    if (o->n_routes) {
        json_t *r = json_array();
        for (size_t i = 0; i < o->n_routes; i++)
            json_array_append_new(r, json_string(o->routes[i]));
        json_object_set_new(hi, "RoutableIPs", r);
    }
    if (o->n_tags) {
        json_t *t = json_array();
        for (size_t i = 0; i < o->n_tags; i++)
            json_array_append_new(t, json_string(o->tags[i]));
        json_object_set_new(hi, "RequestTags", t);
    }
    return hi;
}

static int setup(struct daemon *d, char *err, size_t errlen)
{
    if (hwc_url_parse(d->opts->login_server, &d->url, err, errlen) < 0)
        return -1;
    if (hwc_state_paths(&d->st, d->opts->statedir, err, errlen) < 0 || hwc_state_lock(&d->st, err, errlen) < 0)
        return -1;
    int rc = hwc_state_machine_key(&d->st, d->machine_priv, err, errlen);
    if (rc < 0)
        return -1;
    if (rc == 1)
        log_info("state: new machine key in %s", d->st.machine_key);
    rc = hwc_state_load_node_key(&d->st, d->node_priv, err, errlen);
    if (rc < 0)
        return -1;
    d->have_node = rc == 0;
    d->hostinfo = build_hostinfo(d->opts);
    /* Tests shorten the watchdog to see it fire (a server stopped with SIGSTOP keeps its
     * sockets open and silent); nothing else should set this. */
    d->watchdog_ms = WATCHDOG_MS;
    const char *wd = getenv("HWCLIENT_MAP_WATCHDOG_MS");
    if (wd && *wd) {
        char *end;
        long v = strtol(wd, &end, 10);
        if (*end || v < 100 || v > WATCHDOG_MS) {
            snprintf(err, errlen, "HWCLIENT_MAP_WATCHDOG_MS=%s: expected 100..%d", wd, WATCHDOG_MS);
            return -1;
        }
        d->watchdog_ms = v;
        log_info("map watchdog: %ld ms (HWCLIENT_MAP_WATCHDOG_MS)", v);
    }
    struct hwc_magic_opts mo = {
        .plain_http = d->opts->derp_http || hwc_derp_env_plain_http(),
        .port = d->opts->port_set ? d->opts->port : HWC_MAGIC_DEFAULT_PORT,
        .port_fallback = !d->opts->port_set,
    };
    /* Tests shorten the minute a connection to a non-home region outlives its last
     * write, to watch it close; nothing else should set this. */
    const char *idle = getenv("HWCLIENT_DERP_IDLE_MS");
    if (idle && *idle) {
        char *end;
        long v = strtol(idle, &end, 10);
        if (*end || v < 100 || v > HWC_MAGIC_IDLE_CLOSE_MS) {
            snprintf(err, errlen, "HWCLIENT_DERP_IDLE_MS=%s: expected 100..%d", idle, HWC_MAGIC_IDLE_CLOSE_MS);
            return -1;
        }
        mo.idle_close_ms = (int)v;
        log_info("derp: idle connections close after %ld ms (HWCLIENT_DERP_IDLE_MS)", v);
    }
    static const struct hwc_magic_callbacks magic_callbacks = {
        .on_netinfo = on_netinfo,
        .on_derp_packet = on_derp_packet,
        .on_endpoints = on_endpoints,
        .on_wg_packet = on_wg_packet,
    };
    /* hwclient's own sockets carry the bypass mark, so an exit node's policy rules
     * send them around the tunnel (set before magicsock opens its UDP socket) */
    if (d->opts->tun)
        hwc_bypass_mark_enable(true);
    d->magic = hwc_magic_new(d->loop, &mo, &magic_callbacks, d, err, errlen);
    if (!d->magic)
        return -1;
    /* magicsock makes a new disco key each run, as upstream: MapRequest.DiscoKey */
    hwc_magic_disco_public(d->magic, d->disco_pub);
    if (mo.plain_http)
        log_info("derp: plain HTTP to relays (TS_DEBUG_USE_DERP_HTTP / --debug-derp-http): for tests only");
    if (d->opts->tun) {
        d->tun = hwc_tun_open(d->opts->tun, HWC_TUN_MTU, err, errlen);
        if (!d->tun) {
            size_t used = strlen(err);
            snprintf(err + used, errlen - used, " (a TUN device needs root; without one: --tun=userspace "
                     "for a SOCKS5 proxy, or --tun none for control and DERP only)");
            return -1;
        }
        log_info("data plane: TUN device %s (MTU %d)", hwc_tun_name(d->tun), HWC_TUN_MTU);
        if (setup_router(d, err, errlen) < 0)
            return -1;
    }
    d->dbg_rx = hwc_dbg_rx_new();
    d->need_register = true;
    if (d->have_node) {
        d->mode = LOGIN_REFRESH;
    } else {
        d->mode = LOGIN_NEW;
        new_pending_key(d);
    }
    d->api = hwc_api_listen(d->loop, d->st.sock, api_handler, d, err, errlen);
    if (!d->api)
        return -1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    d->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (d->sigfd >= 0)
        hw_loop_add(d->loop, d->sigfd, HW_EV_READ, signal_event, d);
    /* After the signal mask: the stack's and the proxies' threads inherit it, so SIGTERM
     * still reaches the signalfd. */
    if (d->opts->userspace) {
        struct hwc_userspace_opts uo = {.socks5_addr = d->opts->socks5,
                                        .http_proxy_addr = d->opts->http_proxy,
                                        .accept_routes = d->opts->accept_routes};
        const char *t = getenv("HWCLIENT_PROXY_CONNECT_TIMEOUT_MS");
        if (t && *t)
            uo.connect_timeout_ms = atoi(t);
        d->userspace = hwc_userspace_start(d->loop, &uo, userspace_output, d, err, errlen);
        if (!d->userspace)
            return -1;
    }
    return 0;
}

static void teardown(struct daemon *d)
{
    hwc_userspace_stop(d->userspace);
    d->userspace = NULL;
    if (d->n_waiters) {
        json_t *a = json_object();
        json_object_set_new(a, "error", json_string("the daemon stopped before the logout finished"));
        reply_waiters(d, a);
    }
    drop_conn(d);
    cancel_timer(d, &d->kick);
    cancel_timer(d, &d->retry);
    cancel_timer(d, &d->expiry);
    cancel_timer(d, &d->logout_timer);
    for (int i = 0; i < MAX_DEBUG_SENDS; i++) {
        if (d->sends[i]) {
            hwc_api_reply_error(d->sends[i]->req, "the daemon stopped before derp-send finished");
            debug_send_free(d, d->sends[i]);
        }
    }
    hwc_wgdev_free(d->wg);
    d->wg = NULL;
    hwc_tun_close(d->tun);   /* removes the addresses, routes and exit-node rules it added */
    d->tun = NULL;
    hwc_router_stop(d->router);
    d->router = NULL;
    /* Before the control socket goes: a netcheck waiting there still gets its answer. */
    hwc_magic_free(d->magic);
    d->magic = NULL;
    hwc_dbg_rx_free(d->dbg_rx);
    free(d->peer_homes);
    for (size_t i = 0; i < d->n_endpoints; i++)
        free(d->endpoints[i]);
    free(d->endpoints);
    free(d->endpoint_types);
    json_decref(d->sent_netinfo);
    hwc_tls_cleanup();
    hwc_api_free(d->api);
    if (d->sigfd >= 0) {
        hw_loop_remove(d->loop, d->sigfd);
        close(d->sigfd);
    }
    tc_netmap_clear(&d->nm);
    json_decref(d->hostinfo);
    free(d->reg_body);
    hwc_state_unlock(&d->st);
    sodium_memzero(d->machine_priv, 32);
    sodium_memzero(d->node_priv, 32);
    sodium_memzero(d->pending_priv, 32);
}

int hwc_daemon_run(const struct hwc_up_opts *o)
{
    struct daemon d = {.opts = o, .sigfd = -1};
    tc_netmap_init(&d.nm);
    d.st.lock_fd = -1;
    d.loop = hw_loop_new();
    if (!d.loop) {
        fprintf(stderr, "hwclient: cannot create the event loop\n");
        return 1;
    }
    char err[600];
    if (setup(&d, err, sizeof err) < 0) {
        fprintf(stderr, "hwclient: %s\n", err);
        teardown(&d);
        hw_loop_free(d.loop);
        return 1;
    }
    log_info("hwclient %s: state in %s, control socket %s, login server %s", HW_VERSION, d.st.dir,
             d.st.sock, d.url.base);
    update_state(&d);
    reconcile(&d);
    hw_loop_run(d.loop);
    teardown(&d);
    hw_loop_free(d.loop);
    return d.exit_code;
}
