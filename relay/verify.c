/* -verify-client-url: ask an admission controller (headwater's /verify, or anything
 * speaking tailcfg.DERPAdmitClientRequest) whether a node key may use this relay.
 * The HTTP POST runs on worker threads; the verdict returns to the loop with
 * hw_loop_post(). Answers are cached briefly so a reconnect storm costs one request
 * per key. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <jansson.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define WORKERS 4
#define REQUEST_TIMEOUT_MS 5000
#define MAX_BODY 4096
#define MAX_RESPONSE (32 << 10)
#define MAX_PENDING 4096
#define MAX_CACHE 65536

enum verdict { V_ALLOW, V_DENY, V_UNREACHABLE };

struct job {
    struct relay_admission *a;
    struct relay *relay;
    char key[66 + 8];
    char cache_key[140];
    char ip[64];
    enum verdict verdict;
    char why[512];
    struct job *next;                 /* work queue */
    struct job *live_prev, *live_next; /* every job not yet back on the loop */
};

struct cache_ent {
    char *key;
    bool allow;
    bool dead;                /* replaced by a newer answer; freed when it reaches the head */
    int64_t expires;
    struct cache_ent *next;
};

struct verifier {
    pthread_t threads[WORKERS];
    int n_threads;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *head, *tail;
    struct job *live;                 /* so shutdown can free verdicts the loop never ran */
    size_t pending;
    bool stopping;
    SSL_CTX *client_ctx;
    /* URL parts */
    bool https;
    char host[256];
    char port[8];
    char path[1024];
    /* loop-thread only */
    struct hw_strmap cache;
    struct cache_ent *fifo_head, *fifo_tail;
    size_t cache_len;
};

/* ---- HTTP client (worker threads) ---- */

static int64_t remaining(int64_t deadline)
{
    int64_t r = deadline - hw_now_ms_mono();
    return r > 0 ? r : 0;
}

static int dial(const char *host, const char *port, int64_t deadline, char *why, size_t why_len)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(why, why_len, "resolve %s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            snprintf(why, why_len, "connect %s:%s: %s", host, port, strerror(errno));
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&pfd, 1, (int)remaining(deadline)) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
            snprintf(why, why_len, "connect %s:%s: %s", host, port, err ? strerror(err) : "timed out");
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        /* Blocking from here on, with the remaining time as socket timeouts. */
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        int64_t ms = remaining(deadline);
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

struct resp {
    char body[MAX_BODY + 1];
    size_t body_len;
    bool complete;
};

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct resp *r = p->data;
    size_t take = len;
    if (r->body_len + take > MAX_BODY)
        take = MAX_BODY - r->body_len;   /* derper reads at most 4 KiB of the answer */
    memcpy(r->body + r->body_len, at, take);
    r->body_len += take;
    r->body[r->body_len] = '\0';
    return 0;
}

static int on_complete(http_parser *p)
{
    ((struct resp *)p->data)->complete = true;
    return 0;
}

static void post_admission(struct verifier *v, struct job *j)
{
    int64_t deadline = hw_now_ms_mono() + REQUEST_TIMEOUT_MS;
    j->verdict = V_UNREACHABLE;
    json_t *req = json_object();
    json_object_set_new(req, "NodePublic", json_string(j->key));
    json_object_set_new(req, "Source", json_string(j->ip));
    char *body = json_dumps(req, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(req);
    bool default_port = strcmp(v->port, v->https ? "443" : "80") == 0;
    char *msg = hw_sprintf("POST %s HTTP/1.1\r\nHost: %s%s%s\r\nUser-Agent: hwrelay\r\n"
                           "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                           "Connection: close\r\n\r\n%s",
                           v->path, v->host, default_port ? "" : ":", default_port ? "" : v->port,
                           strlen(body), body);
    free(body);
    SSL *ssl = NULL;
    int fd = dial(v->host, v->port, deadline, j->why, sizeof j->why);
    if (fd < 0)
        goto out;
    if (v->https) {
        ssl = SSL_new(v->client_ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, v->host);
        SSL_set1_host(ssl, v->host);
        if (SSL_connect(ssl) != 1) {
            snprintf(j->why, sizeof j->why, "TLS to %s: %s", v->host,
                     ERR_reason_error_string(ERR_get_error()) ? ERR_reason_error_string(ERR_get_error())
                                                              : "handshake failed");
            goto out;
        }
    }
    size_t mlen = strlen(msg), off = 0;
    while (off < mlen) {
        ssize_t w = ssl ? SSL_write(ssl, msg + off, (int)(mlen - off)) : send(fd, msg + off, mlen - off, MSG_NOSIGNAL);
        if (w <= 0) {
            snprintf(j->why, sizeof j->why, "sending to %s: %s", v->host, strerror(errno));
            goto out;
        }
        off += (size_t)w;
    }
    struct resp r = {.body_len = 0};
    http_parser_settings s;
    http_parser_settings_init(&s);
    s.on_body = on_body;
    s.on_message_complete = on_complete;
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &r;
    size_t total = 0;
    char buf[4096];
    while (!r.complete && total < MAX_RESPONSE) {
        ssize_t n = ssl ? SSL_read(ssl, buf, sizeof buf) : recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            http_parser_execute(&p, &s, buf, 0);   /* EOF ends a body without a length */
            break;
        }
        total += (size_t)n;
        size_t used = http_parser_execute(&p, &s, buf, (size_t)n);
        if (HTTP_PARSER_ERRNO(&p) != HPE_OK || used != (size_t)n)
            break;
    }
    if (!r.complete) {
        snprintf(j->why, sizeof j->why, "no complete answer from %s", v->host);
        goto out;
    }
    /* The controller answered: from here on every failure is a refusal, never
     * "unreachable", just as derper treats it. */
    j->verdict = V_DENY;
    if (p.status_code != 200) {
        snprintf(j->why, sizeof j->why, "admission controller: HTTP %u", p.status_code);
        goto out;
    }
    json_error_t jerr;
    json_t *ans = json_loadb(r.body, r.body_len, JSON_DISABLE_EOF_CHECK, &jerr);
    bool allow = false, found = false, is_obj = json_is_object(ans);
    if (is_obj) {
        const char *k;
        json_t *val;
        json_object_foreach(ans, k, val) {
            if (strcasecmp(k, "Allow") == 0 && (json_is_boolean(val) || json_is_null(val))) {
                allow = json_is_true(val);
                found = true;
            }
        }
    }
    json_decref(ans);
    if (!is_obj || !found) {
        snprintf(j->why, sizeof j->why, "admission controller: answer is not JSON");
        goto out;
    }
    if (allow)
        j->verdict = V_ALLOW;
    else
        snprintf(j->why, sizeof j->why, "admission controller: %s/%s not allowed", j->key, j->ip);
out:
    free(msg);
    if (ssl)
        SSL_free(ssl);
    if (fd >= 0)
        close(fd);
}

/* ---- loop side ---- */

static void cache_put(struct verifier *v, const char *key, bool allow, int64_t ttl_ms, int64_t now)
{
    struct cache_ent *old = hw_strmap_get(&v->cache, key);
    if (old)
        old->dead = true;
    struct cache_ent *e = hw_calloc(1, sizeof *e);
    e->key = hw_strdup(key);
    e->allow = allow;
    e->expires = now + ttl_ms;
    hw_strmap_put(&v->cache, key, e);
    if (v->fifo_tail)
        v->fifo_tail->next = e;
    else
        v->fifo_head = e;
    v->fifo_tail = e;
    v->cache_len++;
    /* Drop from the oldest end: expired, replaced, or over the size bound. */
    while (v->fifo_head && (v->fifo_head->dead || v->fifo_head->expires <= now || v->cache_len > MAX_CACHE)) {
        struct cache_ent *h = v->fifo_head;
        v->fifo_head = h->next;
        if (!v->fifo_head)
            v->fifo_tail = NULL;
        if (!h->dead)
            hw_strmap_del(&v->cache, h->key);
        free(h->key);
        free(h);
        v->cache_len--;
    }
}

static void live_remove(struct verifier *v, struct job *j)
{
    pthread_mutex_lock(&v->lock);
    if (j->live_prev)
        j->live_prev->live_next = j->live_next;
    else
        v->live = j->live_next;
    if (j->live_next)
        j->live_next->live_prev = j->live_prev;
    pthread_mutex_unlock(&v->lock);
}

static void on_verdict(struct hw_loop *loop, void *arg)
{
    struct job *j = arg;
    struct relay *r = j->relay;
    struct verifier *v = r->verifier;
    live_remove(v, j);
    int64_t now = hw_loop_now_ms(loop);
    bool allow = j->verdict == V_ALLOW;
    if (j->verdict == V_UNREACHABLE) {
        if (r->cfg.verify_fail_open) {
            log_warn("derp: admission controller unreachable (%s); allowing %s (fail-open)", j->why, j->key);
            allow = true;
        } else {
            log_warn("derp: admission controller unreachable (%s); refusing %s (fail-closed)", j->why, j->key);
            snprintf(j->why, sizeof j->why, "admission controller unreachable");
        }
    } else {
        cache_put(v, j->cache_key, allow, allow ? r->cfg.verify_allow_ttl_ms : r->cfg.verify_deny_ttl_ms, now);
    }
    relay_admission_done(j->a, allow, j->why);
    free(j);
}

static void *worker(void *arg)
{
    struct relay *r = arg;
    struct verifier *v = r->verifier;
    for (;;) {
        pthread_mutex_lock(&v->lock);
        while (!v->head && !v->stopping)
            pthread_cond_wait(&v->cond, &v->lock);
        if (v->stopping) {
            pthread_mutex_unlock(&v->lock);
            return NULL;
        }
        struct job *j = v->head;
        v->head = j->next;
        if (!v->head)
            v->tail = NULL;
        v->pending--;
        pthread_mutex_unlock(&v->lock);
        post_admission(v, j);
        hw_loop_post(r->loop, on_verdict, j);
    }
}

/* The relay's admission callback: a cached answer at once, else a job for the workers. */
static void verify_admit(void *arg, struct relay_admission *a)
{
    struct relay *r = arg;
    struct verifier *v = r->verifier;
    char cache_key[140];
    snprintf(cache_key, sizeof cache_key, "%s|%s", relay_admission_keyhex(a), relay_admission_ip(a));
    struct cache_ent *e = hw_strmap_get(&v->cache, cache_key);
    if (e && e->expires > hw_loop_now_ms(r->loop)) {
        relay_admission_done(a, e->allow, "admission controller: not allowed (cached)");
        return;
    }
    pthread_mutex_lock(&v->lock);
    bool full = v->pending >= MAX_PENDING;
    pthread_mutex_unlock(&v->lock);
    if (full) {
        relay_admission_done(a, false, "too many admission checks pending");
        return;
    }
    struct job *j = hw_calloc(1, sizeof *j);
    j->a = a;
    j->relay = r;
    snprintf(j->key, sizeof j->key, "nodekey:%s", relay_admission_keyhex(a));
    snprintf(j->ip, sizeof j->ip, "%s", relay_admission_ip(a));
    snprintf(j->cache_key, sizeof j->cache_key, "%s", cache_key);
    pthread_mutex_lock(&v->lock);
    if (v->tail)
        v->tail->next = j;
    else
        v->head = j;
    v->tail = j;
    v->pending++;
    j->live_next = v->live;
    if (v->live)
        v->live->live_prev = j;
    v->live = j;
    pthread_cond_signal(&v->cond);
    pthread_mutex_unlock(&v->lock);
}

int verify_init(struct relay *r)
{
    if (!r->cfg.verify_url)
        return 0;
    struct verifier *v = hw_calloc(1, sizeof *v);
    r->verifier = v;
    hw_strmap_init(&v->cache);
    pthread_mutex_init(&v->lock, NULL);
    pthread_cond_init(&v->cond, NULL);
    const char *url = r->cfg.verify_url;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, strlen(url), 0, &u) != 0 || !(u.field_set & (1 << UF_SCHEMA)) ||
        !(u.field_set & (1 << UF_HOST))) {
        log_error("hwrelay: -verify-client-url %s is not an http:// or https:// URL", url);
        return -1;
    }
    char schema[16] = "";
    if (u.field_data[UF_SCHEMA].len < sizeof schema)
        memcpy(schema, url + u.field_data[UF_SCHEMA].off, u.field_data[UF_SCHEMA].len);
    if (strcasecmp(schema, "https") == 0)
        v->https = true;
    else if (strcasecmp(schema, "http") != 0) {
        log_error("hwrelay: -verify-client-url must be http:// or https://");
        return -1;
    }
    if (u.field_data[UF_HOST].len >= sizeof v->host) {
        log_error("hwrelay: -verify-client-url host too long");
        return -1;
    }
    memcpy(v->host, url + u.field_data[UF_HOST].off, u.field_data[UF_HOST].len);
    if (u.field_set & (1 << UF_PORT))
        snprintf(v->port, sizeof v->port, "%u", u.port);
    else
        snprintf(v->port, sizeof v->port, "%s", v->https ? "443" : "80");
    /* Path plus query, exactly as given. */
    if (u.field_set & (1 << UF_PATH)) {
        size_t end = u.field_data[UF_PATH].off + u.field_data[UF_PATH].len;
        if (u.field_set & (1 << UF_QUERY))
            end = u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len;
        size_t len = end - u.field_data[UF_PATH].off;
        if (len >= sizeof v->path) {
            log_error("hwrelay: -verify-client-url path too long");
            return -1;
        }
        memcpy(v->path, url + u.field_data[UF_PATH].off, len);
    } else {
        strcpy(v->path, "/");
    }
    if (v->https) {
        v->client_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(v->client_ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(v->client_ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_default_verify_paths(v->client_ctx);
    }
    for (int i = 0; i < WORKERS; i++) {
        if (pthread_create(&v->threads[i], NULL, worker, r) != 0)
            break;
        v->n_threads++;
    }
    if (v->n_threads == 0) {
        log_error("hwrelay: cannot start admission check threads");
        return -1;
    }
    relay_set_admission(r, verify_admit, r);
    log_info("hwrelay: admitting clients via %s (fail-%s)", url, r->cfg.verify_fail_open ? "open" : "closed");
    return 0;
}

void verify_free(struct relay *r)
{
    struct verifier *v = r->verifier;
    if (!v)
        return;
    pthread_mutex_lock(&v->lock);
    v->stopping = true;
    pthread_cond_broadcast(&v->cond);
    pthread_mutex_unlock(&v->lock);
    /* A worker inside a request finishes within its 5 s timeout. */
    for (int i = 0; i < v->n_threads; i++)
        pthread_join(v->threads[i], NULL);
    /* Queued, or answered but never run by the stopped loop. */
    while (v->live) {
        struct job *j = v->live;
        v->live = j->live_next;
        relay_admission_done(j->a, false, NULL);   /* its client is closed by now */
        free(j);
    }
    while (v->fifo_head) {
        struct cache_ent *h = v->fifo_head;
        v->fifo_head = h->next;
        free(h->key);
        free(h);
    }
    hw_strmap_free(&v->cache);
    if (v->client_ctx)
        SSL_CTX_free(v->client_ctx);
    pthread_mutex_destroy(&v->lock);
    pthread_cond_destroy(&v->cond);
    free(v);
    r->verifier = NULL;
}
