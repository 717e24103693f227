#include "server/derp_embed.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/derp.h"
#include "proto/keys.h"
#include "proto/websocket.h"
#include "relay/core.h"
#include "server/http_public.h"
#include "server/server.h"
#include "server/verify.h"

/* An upgraded /derp socket on its way from a libmicrohttpd thread to the loop. */
struct handoff {
    int fd;
    struct MHD_UpgradeResponseHandle *urh;
    bool websocket, not_ideal;
    uint8_t *early;
    size_t early_len;
    struct handoff *next;
};

/* What the upgrade callback needs to know about its request. One per combination, so
 * nothing is allocated per request: libmicrohttpd never calls back for an upgrade
 * whose 101 it could not send, and a per-request context would then leak. */
struct upgrade_kind {
    struct hw_derp_embed *d;
    bool websocket, not_ideal;
};

struct hw_derp_embed {
    struct hw_server *srv;
    struct relay *relay;
    struct upgrade_kind kinds[4];
    bool started;                     /* the key is loaded: /derp is served */
    bool stun;                        /* STUN socket bound */
    char pubhex[65];                  /* for the 101, read on libmicrohttpd threads */
    pthread_mutex_t lock;             /* guards the fields below */
    bool stopping;
    struct handoff *pending, *pending_tail;
    bool drain_posted;
};

/* ---- admission ---- */

/* Only registered, unexpired nodes of the tailnet, decided by the same code as POST
 * /verify. A store error counts as "no" (Headscale's embedded relay is fail-closed too).
 * Answered on the loop: it is one indexed row read, as the control layer does there. */
static void admit(void *arg, struct relay_admission *a)
{
    struct hw_derp_embed *d = arg;
    char key[HW_KEY_TEXT_MAX];
    hw_key_format(HW_KEY_NODE, relay_admission_key(a), key);
    bool allow = hw_verify_node_key(d->srv, key) == 1;
    relay_admission_done(a, allow, allow ? NULL : "not a registered, unexpired node of this tailnet");
}

/* ---- start and stop ---- */

struct hw_derp_embed *hw_derp_embed_new(struct hw_server *s, char *err, size_t err_len)
{
    const struct hw_config *cfg = s->cfg;
    struct hw_derp_embed *d = hw_calloc(1, sizeof *d);
    d->srv = s;
    pthread_mutex_init(&d->lock, NULL);
    for (int i = 0; i < 4; i++)
        d->kinds[i] = (struct upgrade_kind){d, i & 1, (i & 2) != 0};
    struct relay_config rc;
    relay_config_defaults(&rc);
    rc.client_rate_bytes_per_sec = (uint64_t)cfg->derp_server_client_rate_bytes_per_sec;
    rc.client_burst_bytes = (uint64_t)cfg->derp_server_client_burst_bytes;
    d->relay = relay_new(s->loop, &rc);

    const char *addr = cfg->derp_server_stun_listen_addr;
    char host[256], port[16], why[256];
    if (!addr || hw_split_host_port(addr, host, sizeof host, port, sizeof port, why, sizeof why) < 0) {
        snprintf(err, err_len, "derp.server.stun_listen_addr %s", addr ? why : "is not set");
        goto fail;
    }
    if (relay_stun_listen(d->relay, host, atoi(port), why, sizeof why) < 0) {
        if (cfg->source_path) {
            snprintf(err, err_len, "%s (derp.server.stun_listen_addr %s; choose a free port there, "
                     "or stop what holds it)", why, addr);
            goto fail;
        }
        /* `make run` next to another STUN server (a second checkout, coturn, derper)
         * should still give a working control server and relay; STUN only helps
         * clients find direct paths. */
        log_warn("%s: the built-in relay runs without STUN (embedded default; set "
                 "derp.server.stun_listen_addr in a config file to use another port)", why);
    } else {
        d->stun = true;
    }
    return d;
fail:
    hw_derp_embed_stop(d);
    hw_derp_embed_free(d);
    return NULL;
}

int hw_derp_embed_start(struct hw_derp_embed *d, const uint8_t noise_private[32], char *err,
                        size_t err_len)
{
    const struct hw_config *cfg = d->srv->cfg;
    const char *path = cfg->derp_server_private_key_path;
    if (!path || !*path) {
        snprintf(err, err_len, "derp.server.private_key_path is not set");
        return -1;
    }
    uint8_t priv[32];
    int state = hw_key_load_or_create_private(path, priv, err, err_len);
    if (state < 0)
        return -1;
    /* Headscale refuses to start this way too: a key copied over the other file by
     * mistake should be noticed, not silently serve as two identities. */
    if (sodium_memcmp(priv, noise_private, 32) == 0) {
        sodium_memzero(priv, sizeof priv);
        snprintf(err, err_len, "derp.server.private_key_path %s holds the same key as "
                 "noise.private_key_path: the DERP server needs a key of its own (delete the "
                 "file and a new one is made)", path);
        return -1;
    }
    relay_set_key(d->relay, priv);
    sodium_memzero(priv, sizeof priv);
    snprintf(d->pubhex, sizeof d->pubhex, "%s", relay_public_hex(d->relay));
    if (cfg->derp_server_verify_clients)
        relay_set_admission(d->relay, admit, d);
    d->started = true;
    if (cfg->derp_server_client_rate_bytes_per_sec > 0)
        log_info("built-in DERP relay: each client may send %d bytes/s, bursts of up to %llu bytes",
                 cfg->derp_server_client_rate_bytes_per_sec,
                 (unsigned long long)relay_set_client_rate(d->relay,
                                                           (uint64_t)cfg->derp_server_client_rate_bytes_per_sec,
                                                           (uint64_t)cfg->derp_server_client_burst_bytes));
    log_info("built-in DERP relay: region %d (%s) on /derp, key %s (%s), public key %s; %s",
             cfg->derp_server_region_id, cfg->derp_server_region_code ? cfg->derp_server_region_code : "?",
             path, state == 1 ? "created" : "loaded", relay_public_hex(d->relay),
             cfg->derp_server_verify_clients ? "only nodes of this tailnet are admitted"
                                             : "verify_clients is off: anyone may relay through it");
    return 0;
}

bool hw_derp_embed_has_stun(const struct hw_derp_embed *d) { return d && d->stun; }

static void drain_pending(struct hw_derp_embed *d, bool adopt);

void hw_derp_embed_stop(struct hw_derp_embed *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_mutex_unlock(&d->lock);
    /* Sockets still on their way in go straight back; then the relay's own. */
    drain_pending(d, false);
    if (d->relay) {
        size_t n = relay_conn_count(d->relay);
        if (n > 0)
            log_info("built-in DERP relay: closing %zu connection(s)", n);
        relay_free(d->relay);
        d->relay = NULL;
    }
}

void hw_derp_embed_free(struct hw_derp_embed *d)
{
    if (!d)
        return;
    /* Anything that arrived between stop and the daemon's end was closed on arrival. */
    drain_pending(d, false);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* ---- upgraded sockets: libmicrohttpd thread -> loop ---- */

static void release_to_mhd(void *arg, int fd)
{
    (void)fd;   /* libmicrohttpd closes it */
    MHD_upgrade_action(arg, MHD_UPGRADE_ACTION_CLOSE);
}

/* Takes every waiting socket: to the relay (adopt), or straight back when stopping. */
static void drain_pending(struct hw_derp_embed *d, bool adopt)
{
    pthread_mutex_lock(&d->lock);
    struct handoff *h = d->pending;
    d->pending = d->pending_tail = NULL;
    d->drain_posted = false;
    pthread_mutex_unlock(&d->lock);
    while (h) {
        struct handoff *next = h->next;
        struct relay_adoption a = {
            .fd = h->fd, .websocket = h->websocket, .not_ideal = h->not_ideal,
            .early = h->early, .early_len = h->early_len,
            .release = release_to_mhd, .release_arg = h->urh,
        };
        if (!adopt || !d->relay || relay_adopt(d->relay, &a) < 0) {
            if (adopt)
                log_warn("derp: cannot take an upgraded connection: %s", strerror(errno));
            MHD_upgrade_action(h->urh, MHD_UPGRADE_ACTION_CLOSE);
        }
        free(h->early);
        free(h);
        h = next;
    }
}

static void on_drain(struct hw_loop *loop, void *arg)
{
    drain_pending(arg, true);
}

static void on_upgraded(void *cls, struct MHD_Connection *connection, void *req_cls,
                        const char *extra_in, size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh)
{
    const struct upgrade_kind *k = cls;
    struct hw_derp_embed *d = k->d;
    struct handoff *h = hw_calloc(1, sizeof *h);
    h->fd = sock;
    h->urh = urh;
    h->websocket = k->websocket;
    h->not_ideal = k->not_ideal;
    /* Bytes the client sent right behind its request head (libmicrohttpd's read
     * buffer, so bounded by its per-connection memory limit). */
    if (extra_in_size > 0) {
        h->early = hw_malloc(extra_in_size);
        memcpy(h->early, extra_in, extra_in_size);
        h->early_len = extra_in_size;
    }
    pthread_mutex_lock(&d->lock);
    bool stopping = d->stopping;
    bool post = false;
    if (!stopping) {
        if (d->pending_tail)
            d->pending_tail->next = h;
        else
            d->pending = h;
        d->pending_tail = h;
        post = !d->drain_posted;
        d->drain_posted = true;
    }
    pthread_mutex_unlock(&d->lock);
    if (stopping) {
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        free(h->early);
        free(h);
        return;
    }
    /* One post drains any number of sockets; if the loop has already stopped,
     * hw_derp_embed_stop takes them instead. */
    if (post)
        hw_loop_post(d->srv->loop, on_drain, d);
}

/* ---- pages ---- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *content_type,
                             const char *body, const char *h1, const char *v1, const char *h2,
                             const char *v2)
{
    size_t len = body ? strlen(body) : 0;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    if (content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (h1)
        MHD_add_response_header(r, h1, v1);
    if (h2)
        MHD_add_response_header(r, h2, v2);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result not_found(struct MHD_Connection *conn)
{
    return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n", NULL,
                 NULL, NULL, NULL);
}

static const char TEXT[] = "text/plain; charset=utf-8";

int hw_derp_page(struct hw_derp_embed *d, struct MHD_Connection *conn, const char *method)
{
    if (!d || !d->started)
        return not_found(conn);
    const char *upgrade = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Upgrade");
    const char *proto = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Protocol");
    enum relay_upgrade kind = relay_upgrade_kind(upgrade, proto);
    bool websocket = kind == RELAY_UPGRADE_WEBSOCKET;
    if (kind == RELAY_UPGRADE_NONE) {
        if (upgrade && *upgrade)
            log_info("derp: /derp with \"Upgrade: %.40s\" refused (a reverse proxy in front of "
                     "headwater must pass Upgrade and Connection through)", upgrade);
        return reply(conn, MHD_HTTP_UPGRADE_REQUIRED, TEXT, "DERP requires connection upgrade\n",
                     "X-Content-Type-Options", "nosniff", NULL, NULL);
    }
    char accept[HW_WS_ACCEPT_LEN];
    if (websocket) {
        /* The checks of Go's coder/websocket, which derper uses. */
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, TEXT,
                         "WebSocket protocol violation: handshake request method is not GET\n",
                         MHD_HTTP_HEADER_ALLOW, "GET", NULL, NULL);
        if (!relay_header_has_token(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Connection"),
                                    "upgrade"))
            return reply(conn, MHD_HTTP_UPGRADE_REQUIRED, TEXT,
                         "WebSocket protocol violation: Connection header does not contain Upgrade\n",
                         "Upgrade", "websocket", NULL, NULL);
        const char *version = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Version");
        if (!version || strcmp(version, "13") != 0)
            return reply(conn, MHD_HTTP_BAD_REQUEST, TEXT,
                         "unsupported WebSocket protocol version (only 13 is supported)\n",
                         "Sec-WebSocket-Version", "13", NULL, NULL);
        if (hw_ws_accept_key(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Key"),
                             accept) < 0)
            return reply(conn, MHD_HTTP_BAD_REQUEST, TEXT,
                         "WebSocket protocol violation: invalid Sec-WebSocket-Key\n", NULL, NULL, NULL,
                         NULL);
    }
    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Derp-Fast-Start"))
        /* Fast start follows a meta certificate in a TLS chain, which headwater never
         * sends; libmicrohttpd always writes the 101 such a client would not expect. */
        log_debug("derp: client asked for fast start; answering with the 101 anyway");

    bool not_ideal = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Ideal-Node") != NULL;
    pthread_mutex_lock(&d->lock);
    bool stopping = d->stopping;
    pthread_mutex_unlock(&d->lock);
    if (stopping)
        return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, TEXT, "shutting down\n", NULL, NULL, NULL, NULL);

    /* From here the connection lives on the loop, where the relay's own deadlines
     * and keep-alives apply, not libmicrohttpd's idle timer. */
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    struct MHD_Response *r =
        MHD_create_response_for_upgrade(on_upgraded, &d->kinds[(websocket ? 1 : 0) | (not_ideal ? 2 : 0)]);
    if (!r)
        return MHD_NO;
    /* libmicrohttpd writes "Connection: Upgrade" on a 101 by itself. */
    if (websocket) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_UPGRADE, "websocket");
        MHD_add_response_header(r, "Sec-WebSocket-Accept", accept);
        MHD_add_response_header(r, "Sec-WebSocket-Protocol", "derp");
    } else {
        char version[8];
        snprintf(version, sizeof version, "%d", HW_DERP_PROTOCOL_VERSION);
        MHD_add_response_header(r, MHD_HTTP_HEADER_UPGRADE, "DERP");
        MHD_add_response_header(r, "Derp-Version", version);
        MHD_add_response_header(r, "Derp-Public-Key", d->pubhex);
    }
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_SWITCHING_PROTOCOLS, r);
    MHD_destroy_response(r);
    return rc;
}

int hw_derp_probe_page(struct hw_derp_embed *d, struct MHD_Connection *conn, const char *method)
{
    if (!d)
        return not_found(conn);
    /* Browsers (HEAD /derp/probe) and netcheck over TCP (GET /derp/latency-check)
     * time this; it must stay empty and cheap. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0)
        return reply(conn, MHD_HTTP_OK, NULL, NULL, "Access-Control-Allow-Origin", "*", NULL, NULL);
    return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, TEXT, "bogus probe method\n", NULL, NULL, NULL, NULL);
}

int hw_derp_generate_204(struct hw_derp_embed *d, struct MHD_Connection *conn, const char *method)
{
    if (!d)
        return not_found(conn);
    /* Captive-portal check: the challenge is echoed only when it is plainly a token,
     * so the header cannot be used to inject anything. */
    const char *challenge = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Tailscale-Challenge");
    char answer[80];
    bool echo = relay_challenge_ok(challenge, challenge ? strlen(challenge) : 0);
    if (echo)
        snprintf(answer, sizeof answer, "response %s", challenge);
    return reply(conn, MHD_HTTP_NO_CONTENT, NULL, NULL, "Cache-Control",
                 "no-cache, no-store, must-revalidate, no-transform, max-age=0",
                 echo ? "X-Tailscale-Response" : NULL, echo ? answer : NULL);
}
