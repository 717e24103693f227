/* Mesh: the relays of one region connect to each other as DERP clients (with the
 * region's mesh key and this relay's own server key), subscribe with WatchConns, and
 * learn from PeerPresent / PeerGone which node keys live where. A packet for a key
 * that is not connected here goes to the relay that has it as a ForwardPacket
 * (PROTOCOL.md 8.6; derper's cmd/derper/mesh.go and derphttp/mesh_client.go).
 *
 * -mesh-with entries: "host[:port]" (HTTPS, port 443), "host[:port]/dialhost" (TLS name
 * host, TCP to dialhost), or "http://host:port" / "https://host:port". An entry naming
 * this relay itself is skipped. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define MESH_OUT_MAX (4u << 20)   /* bytes queued towards one peer before dropping */
#define MAX_FWD 8

/* Keys announced over one link, to clear when it drops (the map has no iteration). */
struct fwd_keys {
    uint8_t (*k)[32];
    size_t n, cap;
};

struct mesh_peer {
    struct relay *r;
    char *entry;
    char *name;                   /* Host header and TLS name */
    char *dial;                   /* where to connect */
    char port[8];
    bool tls;
    struct conn *c;
    bool up;                      /* ServerInfo received */
    uint8_t server_pub[32];
    bool have_server_key;
    struct hw_timer *retry;
    int64_t backoff_ms;
    /* address lookup off the loop: one thread at a time, joined before reuse */
    pthread_t resolver;
    bool resolver_started;
    int gai_err;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    struct fwd_keys keys;
    struct mesh_peer *next;
};

/* The mesh peers that announced a key; the first one gets its packets. */
struct fwd_list {
    struct mesh_peer *v[MAX_FWD];
    int n;
};

struct mesh {
    struct mesh_peer *peers;
    SSL_CTX *tls_ctx;
};

static void start_connect(struct mesh_peer *p);

static void fwd_add(struct relay *r, const uint8_t key[32], struct mesh_peer *p)
{
    char hex[65];
    key_to_hex(key, hex);
    struct fwd_list *l = hw_strmap_get(&r->forwarders, hex);
    if (!l) {
        l = hw_calloc(1, sizeof *l);
        hw_strmap_put(&r->forwarders, hex, l);
    }
    for (int i = 0; i < l->n; i++)
        if (l->v[i] == p)
            return;
    if (l->n < MAX_FWD)
        l->v[l->n++] = p;
}

static void fwd_remove(struct relay *r, const uint8_t key[32], struct mesh_peer *p)
{
    char hex[65];
    key_to_hex(key, hex);
    struct fwd_list *l = hw_strmap_get(&r->forwarders, hex);
    if (!l)
        return;
    for (int i = 0; i < l->n; i++) {
        if (l->v[i] == p) {
            memmove(&l->v[i], &l->v[i + 1], (size_t)(l->n - i - 1) * sizeof l->v[0]);
            l->n--;
            break;
        }
    }
    if (l->n == 0) {
        hw_strmap_del(&r->forwarders, hex);
        free(l);
        /* Gone from the whole region now: those who heard from it get a PeerGone. */
        derp_gone_from_region(r, key);
    }
}

static void remember_key(struct fwd_keys *fk, const uint8_t key[32])
{
    for (size_t i = 0; i < fk->n; i++)
        if (memcmp(fk->k[i], key, 32) == 0)
            return;
    if (fk->n == fk->cap) {
        fk->cap = fk->cap ? fk->cap * 2 : 16;
        uint8_t(*grown)[32] = realloc(fk->k, fk->cap * sizeof *grown);
        if (!grown)
            abort();
        fk->k = grown;
    }
    memcpy(fk->k[fk->n++], key, 32);
}

static void forget_key(struct fwd_keys *fk, const uint8_t key[32])
{
    for (size_t i = 0; i < fk->n; i++) {
        if (memcmp(fk->k[i], key, 32) == 0) {
            memcpy(fk->k[i], fk->k[--fk->n], 32);
            return;
        }
    }
}

bool mesh_forward(struct relay *r, const uint8_t src[32], const uint8_t dst[32], const uint8_t *data,
                  size_t len)
{
    if (!r->mesh)
        return false;
    char hex[65];
    key_to_hex(dst, hex);
    struct fwd_list *l = hw_strmap_get(&r->forwarders, hex);
    for (int i = 0; l && i < l->n; i++) {
        struct mesh_peer *p = l->v[i];
        if (!p->up || !p->c || p->c->state != CONN_MESH_RUN)
            continue;
        /* A stuck peer link must not grow without bound: drop like a full queue. */
        if (conn_out_pending(p->c) > MESH_OUT_MAX)
            return false;
        uint8_t *f = conn_reserve(p->c, HW_DERP_HDR_LEN + 64 + len);
        hw_derp_build_forward_packet(f, HW_DERP_HDR_LEN + 64 + len, src, dst, data, len);
        conn_mark_dirty(p->c);
        return true;
    }
    return false;
}

char *mesh_upgrade_request(struct conn *c)
{
    struct mesh_peer *p = c->mesh_peer;
    return hw_sprintf("GET /derp HTTP/1.1\r\nHost: %s\r\nUser-Agent: hwrelay-mesh\r\nConnection: Upgrade\r\n"
                      "Upgrade: DERP\r\n\r\n",
                      p->name);
}

void mesh_on_frame(struct conn *c, const struct hw_derp_frame *f)
{
    struct mesh_peer *p = c->mesh_peer;
    struct relay *r = c->relay;
    switch (f->type) {
    case HW_DERP_SERVER_KEY: {
        if (hw_derp_parse_server_key(f->payload, f->len, p->server_pub) < 0) {
            conn_close(c, "bad ServerKey from mesh peer");
            return;
        }
        p->have_server_key = true;
        struct hw_derp_client_info ci = {.version = HW_DERP_PROTOCOL_VERSION, .can_ack_pings = true,
                                         .has_mesh_key = true};
        memcpy(ci.mesh_key, r->mesh_key, 32);
        size_t n = 0;
        uint8_t *frame = hw_derp_build_client_info(r->priv, r->pub, p->server_pub, &ci, NULL, &n);
        if (!frame) {
            conn_close(c, "cannot seal ClientInfo");
            return;
        }
        conn_write(c, frame, n);
        free(frame);
        uint8_t watch[HW_DERP_HDR_LEN];
        conn_write(c, watch, hw_derp_build_watch_conns(watch, sizeof watch));
        return;
    }
    case HW_DERP_SERVER_INFO: {
        struct hw_derp_server_info si;
        const char *err = "no ServerKey first";
        if (!p->have_server_key ||
            hw_derp_open_server_info(r->priv, p->server_pub, f->payload, f->len, &si, &err) < 0) {
            conn_close(c, err);
            return;
        }
        p->up = true;
        p->backoff_ms = BACKOFF_MIN_MS;
        if (c->deadline) {
            hw_timer_cancel(r->loop, c->deadline);
            c->deadline = NULL;
        }
        log_info("mesh(%s): connected", p->entry);
        return;
    }
    case HW_DERP_PEER_PRESENT: {
        struct hw_derp_peer_present pp;
        if (hw_derp_parse_peer_present(f->payload, f->len, &pp) < 0)
            return;
        /* Our own link shows up as a client over there; never route to ourselves. */
        if (memcmp(pp.key, r->pub, 32) == 0)
            return;
        fwd_add(r, pp.key, p);
        remember_key(&p->keys, pp.key);
        return;
    }
    case HW_DERP_PEER_GONE: {
        const uint8_t *k;
        uint8_t reason;
        if (hw_derp_parse_peer_gone(f->payload, f->len, &k, &reason) < 0)
            return;
        uint8_t key[32];
        memcpy(key, k, 32);
        forget_key(&p->keys, key);
        fwd_remove(r, key, p);
        return;
    }
    case HW_DERP_PING: {
        if (f->len < HW_DERP_PING_LEN)
            return;
        uint8_t pong[HW_DERP_HDR_LEN + HW_DERP_PING_LEN];
        conn_write(c, pong, hw_derp_build_pong(pong, sizeof pong, f->payload));
        return;
    }
    default:
        return;   /* KeepAlive, Health, ... */
    }
}

static void on_retry(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct mesh_peer *p = arg;
    p->retry = NULL;
    start_connect(p);
}

static void schedule_retry(struct mesh_peer *p)
{
    if (p->r->stopping || p->retry)
        return;
    p->retry = hw_timer_start(p->r->loop, p->backoff_ms, on_retry, p);
    p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
}

void mesh_on_close(struct conn *c)
{
    struct mesh_peer *p = c->mesh_peer;
    struct relay *r = c->relay;
    if (!r->stopping)
        log_info("mesh(%s): link %s (%s); will retry", p->entry, p->up ? "lost" : "failed",
                 c->close_reason ? c->close_reason : "closed");
    p->up = false;
    p->have_server_key = false;
    p->c = NULL;
    c->mesh_peer = NULL;
    /* Everything learned through this link is stale now. */
    while (p->keys.n > 0) {
        uint8_t key[32];
        memcpy(key, p->keys.k[p->keys.n - 1], 32);
        p->keys.n--;
        fwd_remove(r, key, p);
    }
    schedule_retry(p);
}

static void connect_resolved(struct mesh_peer *p)
{
    struct relay *r = p->r;
    if (p->gai_err) {
        log_warn("mesh(%s): cannot resolve %s: %s", p->entry, p->dial, gai_strerror(p->gai_err));
        schedule_retry(p);
        return;
    }
    int fd = socket(p->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || (connect(fd, (struct sockaddr *)&p->addr, p->addr_len) < 0 && errno != EINPROGRESS)) {
        log_warn("mesh(%s): connect: %s", p->entry, strerror(errno));
        if (fd >= 0)
            close(fd);
        schedule_retry(p);
        return;
    }
    SSL *ssl = NULL;
    if (p->tls) {
        ssl = SSL_new(r->mesh->tls_ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_connect_state(ssl);
        unsigned char ipbuf[16];
        bool is_ip = inet_pton(AF_INET, p->name, ipbuf) == 1 || inet_pton(AF_INET6, p->name, ipbuf) == 1;
        if (is_ip) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), p->name);
        } else {
            SSL_set_tlsext_host_name(ssl, p->name);
            SSL_set1_host(ssl, p->name);
        }
    }
    p->c = conn_new_outgoing(r, fd, ssl, p);
    if (!p->c) {
        if (ssl)
            SSL_free(ssl);
        close(fd);
        schedule_retry(p);
    }
}

static void on_resolved(struct hw_loop *loop, void *arg)
{
    struct mesh_peer *p = arg;
    pthread_join(p->resolver, NULL);
    p->resolver_started = false;
    if (p->r->stopping)
        return;
    connect_resolved(p);
}

static void *resolve_thread(void *arg)
{
    struct mesh_peer *p = arg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    p->gai_err = getaddrinfo(p->dial, p->port, &hints, &res);
    if (p->gai_err == 0) {
        memcpy(&p->addr, res->ai_addr, res->ai_addrlen);
        p->addr_len = res->ai_addrlen;
        freeaddrinfo(res);
    }
    hw_loop_post(p->r->loop, on_resolved, p);
    return NULL;
}

static void start_connect(struct mesh_peer *p)
{
    if (p->r->stopping || p->c || p->resolver_started)
        return;
    /* Name lookups block, so they run on a thread and come back with a post. */
    if (pthread_create(&p->resolver, NULL, resolve_thread, p) != 0) {
        schedule_retry(p);
        return;
    }
    p->resolver_started = true;
}

static int parse_entry(struct relay *r, const char *entry, struct mesh_peer *p)
{
    const char *rest = entry;
    p->tls = true;
    if (strncasecmp(rest, "http://", 7) == 0) {
        p->tls = false;
        rest += 7;
    } else if (strncasecmp(rest, "https://", 8) == 0) {
        rest += 8;
    }
    char *copy = hw_strdup(rest);
    char *slash = strchr(copy, '/');
    char *dial = NULL;
    if (slash) {
        *slash = '\0';
        dial = slash + 1;
        if (!*dial || strchr(dial, '/')) {
            free(copy);
            return -1;
        }
    }
    char host[256];
    int port = p->tls ? 443 : 80;
    if (strchr(copy, ':') && (copy[0] == '[' || strchr(copy, ':') == strrchr(copy, ':'))) {
        if (relay_split_hostport(copy, host, sizeof host, &port) < 0) {
            free(copy);
            return -1;
        }
    } else if (strlen(copy) < sizeof host) {
        snprintf(host, sizeof host, "%s", copy);
    } else {
        free(copy);
        return -1;
    }
    snprintf(p->port, sizeof p->port, "%d", port);
    p->name = hw_strdup(host);
    p->dial = hw_strdup(dial ? dial : host);
    p->entry = hw_strdup(entry);
    free(copy);
    (void)r;
    return host[0] ? 0 : -1;
}

static bool is_self(struct relay *r, const struct mesh_peer *p)
{
    char host[256];
    int port = 0;
    relay_split_hostport(r->cfg.addr, host, sizeof host, &port);
    char self[300];
    snprintf(self, sizeof self, "%s:%d", host, port);
    char them[300];
    snprintf(them, sizeof them, "%s:%s", p->dial, p->port);
    return strcasecmp(p->name, r->cfg.hostname) == 0 || strcmp(self, them) == 0;
}

int mesh_init(struct relay *r)
{
    if (!r->cfg.mesh_with)
        return 0;
    if (!r->have_mesh_key) {
        log_error("hwrelay: -mesh-with requires -mesh-psk-file");
        return -1;
    }
    struct mesh *m = hw_calloc(1, sizeof *m);
    r->mesh = m;
    char *list = hw_strdup(r->cfg.mesh_with);
    char *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (!*tok)
            continue;
        struct mesh_peer *p = hw_calloc(1, sizeof *p);
        p->r = r;
        if (parse_entry(r, tok, p) < 0) {
            log_error("hwrelay: -mesh-with entry %s: want host[:port][/dialhost] or http(s)://host:port", tok);
            free(p->name);
            free(p->dial);
            free(p->entry);
            free(p);
            rc = -1;
            break;
        }
        if (is_self(r, p)) {
            free(p->name);
            free(p->dial);
            free(p->entry);
            free(p);
            continue;
        }
        p->backoff_ms = BACKOFF_MIN_MS;
        p->next = m->peers;
        m->peers = p;
        if (p->tls && !m->tls_ctx) {
            m->tls_ctx = SSL_CTX_new(TLS_client_method());
            SSL_CTX_set_min_proto_version(m->tls_ctx, TLS1_2_VERSION);
            SSL_CTX_set_verify(m->tls_ctx, SSL_VERIFY_PEER, NULL);
            SSL_CTX_set_default_verify_paths(m->tls_ctx);
            SSL_CTX_set_mode(m->tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        }
        log_info("mesh(%s): will dial %s:%s%s", p->entry, p->dial, p->port, p->tls ? " (TLS)" : "");
    }
    free(list);
    if (rc == 0)
        for (struct mesh_peer *p = m->peers; p; p = p->next)
            start_connect(p);
    return rc;
}

void mesh_free(struct relay *r)
{
    struct mesh *m = r->mesh;
    if (!m)
        return;
    r->stopping = true;
    while (m->peers) {
        struct mesh_peer *p = m->peers;
        m->peers = p->next;
        if (p->resolver_started)
            pthread_join(p->resolver, NULL);
        if (p->retry)
            hw_timer_cancel(r->loop, p->retry);
        if (p->c)
            conn_close(p->c, NULL);
        free(p->keys.k);
        free(p->name);
        free(p->dial);
        free(p->entry);
        free(p);
    }
    if (m->tls_ctx)
        SSL_CTX_free(m->tls_ctx);
    free(m);
    r->mesh = NULL;
}
