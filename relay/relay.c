/* The relay object and its admission hook (core.h). Listeners, TLS and mesh are
 * hwrelay's business and stay in main.c, tls.c and mesh.c. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

void relay_config_defaults(struct relay_config *cfg)
{
    *cfg = (struct relay_config){
        .addr = ":443",
        .hostname = "derp.example.com",
        .certmode = CERTMODE_MANUAL,
        .certdir = "/var/lib/hwrelay/certs",
        .http_port = 80,
        .stun_port = 3478,
        .stun = true,
        .derp = true,
        .queue_depth = 32,
        .write_timeout_ms = 2000,
        .verify_allow_ttl_ms = 30000,
        .verify_deny_ttl_ms = 5000,
        .accept_limit = INFINITY,
        .accept_burst = (double)INT64_MAX,
    };
}

struct relay *relay_new(struct hw_loop *loop, const struct relay_config *cfg)
{
    struct relay *r = hw_calloc(1, sizeof *r);
    r->cfg = *cfg;
    if (r->cfg.queue_depth < 1)
        r->cfg.queue_depth = 32;
    r->loop = loop;
    r->rbuf_cap = 64 << 10;
    r->rbuf = hw_malloc(r->rbuf_cap);
    hw_strmap_init(&r->clients);
    hw_strmap_init(&r->gone_watchers);
    hw_strmap_init(&r->forwarders);
    for (size_t i = 0; i < HW_ARRAY_LEN(r->stun_fds); i++)
        r->stun_fds[i] = -1;
    hw_bucket_init(&r->accept_bucket);
    relay_set_client_rate(r, cfg->client_rate_bytes_per_sec, cfg->client_burst_bytes);
    return r;
}

void relay_set_key(struct relay *r, const uint8_t priv[32])
{
    memcpy(r->priv, priv, 32);
    crypto_scalarmult_base(r->pub, r->priv);
    key_to_hex(r->pub, r->pubhex);
}

const char *relay_public_hex(const struct relay *r) { return r->pubhex; }

size_t relay_conn_count(const struct relay *r) { return r->n_conns; }

uint64_t relay_set_client_rate(struct relay *r, uint64_t bytes_per_sec, uint64_t burst_bytes)
{
    if (bytes_per_sec == 0)
        burst_bytes = 0;
    else if (burst_bytes < RELAY_MIN_CLIENT_BURST)
        burst_bytes = RELAY_MIN_CLIENT_BURST;
    r->cfg.client_rate_bytes_per_sec = bytes_per_sec;
    r->cfg.client_burst_bytes = burst_bytes;
    r->client_rate = (double)bytes_per_sec;
    r->client_burst = (double)burst_bytes;
    /* Like derper's fresh limiter per client: everyone starts again with a full bucket. */
    for (struct conn *c = r->all; c; c = c->all_next)
        hw_bucket_init(&c->recv_bucket);
    return burst_bytes;
}

void relay_set_admission(struct relay *r, relay_admit_fn fn, void *arg)
{
    r->admit = fn;
    r->admit_arg = arg;
}

void relay_free(struct relay *r)
{
    if (!r)
        return;
    r->stopping = true;
    mesh_free(r);
    while (r->all)
        conn_close(r->all, NULL);
    relay_flush_dirty(r);   /* releases the dirty list's references */
    verify_free(r);
    bootstrap_dns_stop(r);
    for (int i = 0; i < r->n_listen; i++) {
        hw_loop_remove(r->loop, r->listen_fds[i]);
        close(r->listen_fds[i]);
    }
    r->n_listen = 0;
    stun_close(r);
    tls_free(r);
    hw_strmap_free(&r->clients);
    hw_strmap_free(&r->gone_watchers);
    hw_strmap_free(&r->forwarders);
    free(r->watchers);
    free(r->rbuf);
    sodium_memzero(r->priv, sizeof r->priv);
    free(r);
}

int relay_split_hostport(const char *addr, char *host, size_t host_len, int *port)
{
    const char *colon;
    host[0] = '\0';
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= host_len)
            return -1;
        memcpy(host, addr + 1, (size_t)(end - addr - 1));
        host[end - addr - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= host_len || memchr(addr, ':', (size_t)(colon - addr)))
            return -1;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

/* ---- admission ---- */

struct relay_admission {
    struct conn *c;                   /* holds a reference until done */
    char ip[64];
};

const uint8_t *relay_admission_key(const struct relay_admission *a) { return a->c->key; }
const char *relay_admission_keyhex(const struct relay_admission *a) { return a->c->keyhex; }
const char *relay_admission_ip(const struct relay_admission *a) { return a->ip; }

void admission_start(struct conn *c)
{
    struct relay *r = c->relay;
    struct relay_admission *a = hw_calloc(1, sizeof *a);
    a->c = c;
    c->refs++;
    /* The IP without the port, as derper names it to its admission controller. */
    hw_stun_addr_format(&c->remote, a->ip, sizeof a->ip);
    char *colon;
    if (c->remote.family == 4 && (colon = strrchr(a->ip, ':')))
        *colon = '\0';
    else if (c->remote.family == 6 && (colon = strrchr(a->ip, ']'))) {
        *colon = '\0';
        memmove(a->ip, a->ip + 1, strlen(a->ip));
    }
    r->admit(r->admit_arg, a);
    /* Still waiting: stop reading, or a level-triggered loop would spin on the frames
     * the client sends behind ClientInfo. */
    if (c->state == CONN_VERIFYING)
        conn_update_interest(c);
}

void relay_admission_done(struct relay_admission *a, bool allow, const char *why)
{
    struct conn *c = a->c;
    /* The client may have gone (closed, timed out, relay stopping) while it waited. */
    if (c->state == CONN_VERIFYING) {
        if (allow)
            derp_admit(c);
        else
            conn_close(c, why && *why ? why : "not allowed");
        relay_flush_dirty(c->relay);
    }
    conn_unref(c);
    free(a);
}
