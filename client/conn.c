#include "client/conn.h"
#include "client/hostnet.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <sodium.h>

#include "client/http1.h"
#include "client/tlsdial.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "common/version.h"
#include "proto/h2conn.h"
#include "proto/keys.h"
#include "proto/noise.h"
#include "proto/tailcfg.h"

enum stage {
    ST_RESOLVE,
    ST_KEY,       /* GET /key exchange */
    ST_UPGRADE,   /* POST /ts2021 until the 101 head */
    ST_HANDSHAKE, /* the Noise response after the 101 */
    ST_READY,
    ST_FAILED,
};

/* Unsent output above this makes HTTP/2 pause: a stalled server cannot make us buffer
 * without bound. */
#define OUT_HIGH_WATER (1u << 20)
/* Bytes after the 101 head that may arrive before the Noise response is complete: the
 * response (51), or an error message of at most a short text. */
#define HANDSHAKE_MAX 4096

struct hwc_req {
    struct hwc_conn *conn;
    struct hw_h2_stream *st;
    const struct hwc_req_handler *h; /* NULL once cancelled or detached */
    void *arg;
    struct hwc_req *next, *prev;
};

struct hwc_conn {
    struct hw_loop *loop;
    struct hwc_url url;
    uint8_t machine_priv[32];
    uint16_t capver;
    struct hwc_conn_callbacks cb;
    void *arg;
    enum stage stage;
    int fd;
    bool fd_watched;
    int interest;
    /* https:// login servers: TLS under everything, one session per TCP connection */
    SSL *ssl;
    bool tls_up;
    bool ssl_want_write; /* OpenSSL needs the socket writable before it can go on */

    /* resolving a name happens on a helper thread that signals through a pipe */
    struct addrinfo *addrs, *next_addr;
    bool resolver_running;
    pthread_t resolver;
    int resolve_pipe[2];
    int resolve_rc;
    struct addrinfo *resolved;

    /* the HTTP/1.1 exchanges */
    char *req;
    size_t req_len, req_off;
    uint8_t *rbuf;
    size_t rlen, rcap;
    struct hwc_http_resp *resp;
    bool head_done;
    uint8_t server_pub[32];
    bool key_known; /* given by the caller: no GET /key */
    char last_connect_error[128];

    struct hw_noise_handshake hs;
    struct hw_noise_cipher tx;
    struct hw_noise_reader *reader;
    struct hw_noise_early early;
    bool early_done;
    struct hw_h2 *h2;
    struct hwc_req *reqs;

    uint8_t *out;
    size_t out_len, out_off, out_cap;

    struct hw_timer *deadline;
    struct hw_timer *notify; /* delivers on_ready / on_fail outside of other calls */
    bool ready_pending;
    bool in_input; /* inside nghttp2's input processing, which must not be re-entered */
    char error[320];
};

static void conn_event(struct hw_loop *loop, int fd, int events, void *arg);
static void start_connect(struct hwc_conn *c);

/* ---- failure and notification ---- */

static void notify_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_conn *c = arg;
    c->notify = NULL;
    if (c->stage == ST_FAILED) {
        c->cb.on_fail(c, c->error, c->arg);
        return;
    }
    if (c->ready_pending) {
        c->ready_pending = false;
        c->cb.on_ready(c, c->arg);
    }
}

static void schedule_notify(struct hwc_conn *c)
{
    if (!c->notify)
        c->notify = hw_timer_start(c->loop, 0, notify_cb, c);
}

static void unwatch(struct hwc_conn *c)
{
    if (c->fd_watched) {
        hw_loop_remove(c->loop, c->fd);
        c->fd_watched = false;
    }
}

static void close_fd(struct hwc_conn *c)
{
    unwatch(c);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->tls_up = c->ssl_want_write = false;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static void fail(struct hwc_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct hwc_conn *c, const char *fmt, ...)
{
    if (c->stage == ST_FAILED)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    c->stage = ST_FAILED;
    c->ready_pending = false;
    /* The socket stays open until free: closing it here could hand its number to a new
     * fd while nghttp2 is still inside a callback on this connection. */
    unwatch(c);
    if (c->deadline) {
        hw_timer_cancel(c->loop, c->deadline);
        c->deadline = NULL;
    }
    schedule_notify(c);
}

void hwc_conn_fail_soon(struct hwc_conn *c, const char *why)
{
    fail(c, "%s", why);
}

static void deadline_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_conn *c = arg;
    c->deadline = NULL;
    static const char *what[] = {"resolving the host", "fetching /key", "upgrading /ts2021",
                                 "waiting for the Noise handshake"};
    fail(c, "%s: no answer within %d s (%s)", c->url.base, HWC_DIAL_TIMEOUT_MS / 1000,
         c->stage < ST_READY ? what[c->stage] : "connecting");
}

static void set_interest(struct hwc_conn *c, int interest)
{
    if (c->fd < 0)
        return;
    if (!c->fd_watched) {
        if (hw_loop_add(c->loop, c->fd, interest, conn_event, c) < 0) {
            fail(c, "event loop: cannot watch a socket");
            return;
        }
        c->fd_watched = true;
        c->interest = interest;
    } else if (c->interest != interest) {
        hw_loop_modify(c->loop, c->fd, interest);
        c->interest = interest;
    }
}

/* ---- resolving ---- */

static void *resolver_main(void *arg)
{
    struct hwc_conn *c = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV};
    c->resolve_rc = getaddrinfo(c->url.host, c->url.port, &hints, &c->resolved);
    char b = 1;
    ssize_t n = write(c->resolve_pipe[1], &b, 1);
    (void)n;
    return NULL;
}

static void resolver_done(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_conn *c = arg;
    hw_loop_remove(loop, fd);
    pthread_join(c->resolver, NULL);
    c->resolver_running = false;
    close(c->resolve_pipe[0]);
    close(c->resolve_pipe[1]);
    c->resolve_pipe[0] = c->resolve_pipe[1] = -1;
    if (c->resolve_rc != 0) {
        fail(c, "cannot resolve %s: %s", c->url.host, gai_strerror(c->resolve_rc));
        return;
    }
    c->addrs = c->resolved;
    c->resolved = NULL;
    c->next_addr = c->addrs;
    start_connect(c);
}

static void start_resolve(struct hwc_conn *c)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    if (getaddrinfo(c->url.host, c->url.port, &hints, &c->addrs) == 0) {
        c->next_addr = c->addrs;
        start_connect(c);
        return;
    }
    c->addrs = NULL;
    if (pipe2(c->resolve_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        fail(c, "cannot resolve %s: pipe: %s", c->url.host, strerror(errno));
        return;
    }
    if (pthread_create(&c->resolver, NULL, resolver_main, c) != 0) {
        close(c->resolve_pipe[0]);
        close(c->resolve_pipe[1]);
        c->resolve_pipe[0] = c->resolve_pipe[1] = -1;
        fail(c, "cannot resolve %s: no thread", c->url.host);
        return;
    }
    c->resolver_running = true;
    hw_loop_add(c->loop, c->resolve_pipe[0], HW_EV_READ, resolver_done, c);
}

/* ---- the HTTP/1.1 exchanges ---- */

static void reset_exchange(struct hwc_conn *c)
{
    close_fd(c);
    free(c->req);
    c->req = NULL;
    c->req_len = c->req_off = 0;
    c->rlen = 0;
    c->head_done = false;
}

static char *key_request(struct hwc_conn *c)
{
    return hw_sprintf("GET /key?v=%u HTTP/1.1\r\nHost: %s\r\nUser-Agent: hwclient/%s\r\n"
                      "Accept: application/json\r\nConnection: close\r\n\r\n",
                      c->capver, c->url.authority, HW_VERSION);
}

static char *upgrade_request(struct hwc_conn *c)
{
    uint8_t init[HW_NOISE_INITIATION_LEN];
    memset(&c->hs, 0, sizeof c->hs);
    if (hw_noise_client_start(&c->hs, c->capver, c->machine_priv, c->server_pub, NULL, init) !=
        HW_NOISE_OK) {
        fail(c, "Noise handshake: %s", c->hs.error);
        return NULL;
    }
    char b64[sodium_base64_ENCODED_LEN(HW_NOISE_INITIATION_LEN, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, init, sizeof init, sodium_base64_VARIANT_ORIGINAL);
    return hw_sprintf("POST /ts2021 HTTP/1.1\r\nHost: %s\r\nUser-Agent: hwclient/%s\r\n"
                      "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
                      "X-Tailscale-Handshake: %s\r\nContent-Length: 0\r\n\r\n",
                      c->url.authority, HW_VERSION, b64);
}

static void start_connect(struct hwc_conn *c)
{
    reset_exchange(c);
    if (c->stage == ST_RESOLVE)
        c->stage = c->key_known ? ST_UPGRADE : ST_KEY;
    c->req = c->stage == ST_KEY ? key_request(c) : upgrade_request(c);
    if (!c->req)
        return;
    c->req_len = strlen(c->req);
    for (; c->next_addr; c->next_addr = c->next_addr->ai_next) {
        struct addrinfo *ai = c->next_addr;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            snprintf(c->last_connect_error, sizeof c->last_connect_error, "%s", strerror(errno));
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        hwc_bypass_mark(fd);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            snprintf(c->last_connect_error, sizeof c->last_connect_error, "%s", strerror(errno));
            close(fd);
            continue;
        }
        c->fd = fd;
        set_interest(c, HW_EV_WRITE);
        return;
    }
    fail(c, "cannot connect to %s: %s", c->url.base,
         c->last_connect_error[0] ? c->last_connect_error : "no address");
}

/* read(2)/send(2) on the connection, through TLS for https:// servers, with their
 * conventions: -1 and errno (EAGAIN when TLS waits for the socket), 0 at EOF. */
static ssize_t tls_result(struct hwc_conn *c, int n)
{
    int e = SSL_get_error(c->ssl, n);
    c->ssl_want_write = e == SSL_ERROR_WANT_WRITE;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && n == 0 && errno == 0))
        return 0;
    if (e != SSL_ERROR_SYSCALL)
        errno = EPROTO;
    return -1;
}

static ssize_t conn_recv(struct hwc_conn *c, void *buf, size_t len)
{
    if (!c->ssl)
        return read(c->fd, buf, len);
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : tls_result(c, n);
}

static ssize_t conn_send(struct hwc_conn *c, const void *buf, size_t len)
{
    if (!c->ssl)
        return send(c->fd, buf, len, MSG_NOSIGNAL);
    ERR_clear_error();
    errno = 0;
    int n = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : tls_result(c, n);
}

/* Decrypted bytes OpenSSL holds that epoll cannot announce. */
static bool tls_pending(const struct hwc_conn *c) { return c->ssl && SSL_pending(c->ssl) > 0; }

/* The socket failed before anything was read: try the host's next address. */
static void connect_failed(struct hwc_conn *c, int err)
{
    snprintf(c->last_connect_error, sizeof c->last_connect_error, "%s", strerror(err));
    if (c->next_addr)
        c->next_addr = c->next_addr->ai_next;
    start_connect(c);
}

static int receive(struct hwc_conn *c, size_t max)
{
    if (c->rcap < max) {
        c->rbuf = realloc(c->rbuf, max);
        if (!c->rbuf)
            abort();
        c->rcap = max;
    }
    if (c->rlen >= max)
        return 1; /* full: the caller decides */
    ssize_t n = conn_recv(c, c->rbuf + c->rlen, max - c->rlen);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0)
        return 2;
    c->rlen += (size_t)n;
    return 1;
}

static void finish_key(struct hwc_conn *c, const uint8_t *body, size_t len)
{
    char err[TC_ERRLEN];
    json_t *j = tc_json_load(body, len, HWC_KEY_BODY_MAX, "/key answer", err, sizeof err);
    if (!j) {
        fail(c, "%s/key: the answer is not the expected JSON (%s): is this a Tailscale control "
                "server?", c->url.base, err);
        return;
    }
    const char *pk = json_string_value(json_object_get(j, "publicKey"));
    const char *why = NULL;
    if (!pk || hw_key_parse(HW_KEY_MACHINE, pk, c->server_pub, &why) < 0) {
        fail(c, "%s/key: no valid publicKey in the answer (%s)", c->url.base, why ? why : "missing");
        json_decref(j);
        return;
    }
    json_decref(j);
    if (hw_key_is_zero(c->server_pub)) {
        fail(c, "%s/key: control server is too old; no noise key", c->url.base);
        return;
    }
    c->stage = ST_UPGRADE;
    c->next_addr = c->addrs;
    start_connect(c);
}

static void key_readable(struct hwc_conn *c)
{
    size_t max = HWC_HTTP_HEAD_MAX + HWC_KEY_BODY_MAX + 1;
    int rc = receive(c, max);
    if (rc == 0)
        return;
    if (rc < 0) {
        if (c->rlen == 0)
            connect_failed(c, errno);
        else
            fail(c, "%s/key: %s", c->url.base, strerror(errno));
        return;
    }
    bool eof = rc == 2;
    char err[160];
    if (!c->head_done) {
        int h = hwc_http_parse_head(c->rbuf, c->rlen, c->resp, err, sizeof err);
        if (h < 0) {
            fail(c, "%s/key: %s", c->url.base, err);
            return;
        }
        if (h == 0) {
            if (eof)
                fail(c, "%s/key: the server closed the connection %s", c->url.base,
                     c->rlen ? "in the middle of the answer" : "without answering");
            return;
        }
        c->head_done = true;
        if (c->resp->chunked) {
            fail(c, "%s/key: chunked answers are not supported", c->url.base);
            return;
        }
        if (c->resp->content_length > HWC_KEY_BODY_MAX) {
            fail(c, "%s/key: answer larger than %d bytes", c->url.base, HWC_KEY_BODY_MAX);
            return;
        }
    }
    size_t body_len = c->rlen - c->resp->head_len;
    const uint8_t *body = c->rbuf + c->resp->head_len;
    long long want = c->resp->content_length;
    if (want >= 0 ? body_len < (size_t)want : !eof) {
        if (eof) {
            fail(c, "%s/key: the server closed the connection in the middle of the answer", c->url.base);
            return;
        }
        if (want < 0 && body_len > HWC_KEY_BODY_MAX)
            fail(c, "%s/key: answer larger than %d bytes", c->url.base, HWC_KEY_BODY_MAX);
        return;
    }
    if (want >= 0)
        body_len = (size_t)want;
    if (c->resp->status != 200) {
        char excerpt[160];
        hwc_http_excerpt(body, body_len, excerpt, sizeof excerpt);
        fail(c, "%s/key: HTTP %d%s%s", c->url.base, c->resp->status, excerpt[0] ? ": " : "", excerpt);
        return;
    }
    finish_key(c, body, body_len);
}

/* ---- Noise transport and HTTP/2 ---- */

static void flush_out(struct hwc_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = conn_send(c, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            fail(c, "connection to %s lost: %s", c->url.base, strerror(errno));
            return;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->stage == ST_READY)
        set_interest(c, HW_EV_READ | (c->out_len || c->ssl_want_write ? HW_EV_WRITE : 0));
}

static int h2_write(struct hw_h2 *h2, const uint8_t *data, size_t len, void *arg)
{
    struct hwc_conn *c = arg;
    if (c->stage == ST_FAILED)
        return -1;
    size_t need = hw_noise_sealed_len(len);
    if (c->out_len + need > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 16384;
        while (cap < c->out_len + need)
            cap *= 2;
        c->out = realloc(c->out, cap);
        if (!c->out)
            abort();
        c->out_cap = cap;
    }
    size_t written;
    const char *why;
    if (hw_noise_seal(&c->tx, data, len, c->out + c->out_len, c->out_cap - c->out_len, &written, &why) < 0) {
        fail(c, "Noise: %s", why);
        return -1;
    }
    c->out_len += written;
    return 0;
}

static bool h2_write_blocked(struct hw_h2 *h2, void *arg)
{
    struct hwc_conn *c = arg;
    return c->out_len - c->out_off > OUT_HIGH_WATER;
}

static void h2_on_response(struct hw_h2 *h2, struct hw_h2_stream *st, int status, void *arg)
{
    struct hwc_req *r = hw_h2_get_user(st);
    if (r && r->h && r->h->on_response)
        r->h->on_response(r, status, r->arg);
}

static void h2_on_data(struct hw_h2 *h2, struct hw_h2_stream *st, const uint8_t *data, size_t len,
                       void *arg)
{
    struct hwc_req *r = hw_h2_get_user(st);
    if (r && r->h && r->h->on_data)
        r->h->on_data(r, data, len, r->arg);
}

static void req_unlink(struct hwc_req *r)
{
    struct hwc_conn *c = r->conn;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
}

static void h2_on_close(struct hw_h2 *h2, struct hw_h2_stream *st, uint32_t code, void *arg)
{
    struct hwc_req *r = hw_h2_get_user(st);
    if (!r)
        return;
    hw_h2_set_user(st, NULL);
    req_unlink(r);
    if (r->h && r->h->on_close)
        r->h->on_close(r, code, r->arg);
    free(r);
}

static const struct hw_h2_callbacks h2_callbacks = {
    .on_response = h2_on_response,
    .on_data = h2_on_data,
    .on_close = h2_on_close,
    .write = h2_write,
    .write_blocked = h2_write_blocked,
};

static int on_plaintext(void *arg, const uint8_t *pt, size_t len)
{
    struct hwc_conn *c = arg;
    if (c->stage == ST_FAILED)
        return -2;
    if (!c->early_done) {
        size_t used = 0;
        int rc = hw_noise_early_feed(&c->early, pt, len, &used);
        if (rc == HW_NOISE_ERROR) {
            fail(c, "early payload from %s: %s", c->url.base, c->early.error);
            return -2;
        }
        if (rc == HW_NOISE_AGAIN)
            return 0;
        c->early_done = true;
        if (!c->early.present && c->early.pending_len > 0 &&
            hw_h2_feed(c->h2, (const uint8_t *)HW_NOISE_EARLY_MAGIC, c->early.pending_len) < 0)
            goto h2_error;
        pt += used;
        len -= used;
    }
    if (len > 0 && hw_h2_feed(c->h2, pt, len) < 0)
        goto h2_error;
    return c->stage == ST_FAILED ? -2 : 0;
h2_error:
    fail(c, "HTTP/2 from %s: %s", c->url.base, hw_h2_last_error(c->h2));
    return -2;
}

static void process_records(struct hwc_conn *c, const uint8_t *data, size_t len)
{
    c->in_input = true;
    int rc = hw_noise_reader_feed(c->reader, data, len, on_plaintext, c);
    c->in_input = false;
    if (rc == -1)
        fail(c, "Noise from %s: %s", c->url.base, c->reader->error);
    if (c->stage == ST_FAILED)
        return;
    if (hw_h2_pump(c->h2) < 0) {
        fail(c, "HTTP/2 to %s: %s", c->url.base, hw_h2_last_error(c->h2));
        return;
    }
    if (hw_h2_finished(c->h2)) {
        fail(c, "the server %s ended the HTTP/2 connection", c->url.base);
        return;
    }
    flush_out(c);
}

static void become_ready(struct hwc_conn *c, const struct hw_noise_session *s, const uint8_t *rest,
                         size_t rest_len)
{
    c->tx = s->c2s;
    c->reader = hw_calloc(1, sizeof *c->reader);
    hw_noise_reader_init(c->reader, &s->s2c);
    c->h2 = hw_h2_new_client(&h2_callbacks, c);
    if (!c->h2) {
        fail(c, "HTTP/2: cannot start a session");
        return;
    }
    c->stage = ST_READY;
    if (c->deadline) {
        hw_timer_cancel(c->loop, c->deadline);
        c->deadline = NULL;
    }
    free(c->req);
    c->req = NULL;
    c->ready_pending = true;
    schedule_notify(c);
    /* The client preface and SETTINGS go out now; the records the server corked behind
     * its handshake response are processed right away. */
    process_records(c, rest, rest_len);
    if (c->stage == ST_READY)
        set_interest(c, HW_EV_READ | (c->out_len ? HW_EV_WRITE : 0));
}

static void handshake_readable(struct hwc_conn *c, bool eof)
{
    struct hw_noise_session s;
    size_t used = 0;
    const uint8_t *in = c->rbuf + c->resp->head_len;
    size_t len = c->rlen - c->resp->head_len;
    int rc = len ? hw_noise_client_finish(&c->hs, in, len, &used, &s) : HW_NOISE_AGAIN;
    if (rc == HW_NOISE_ERROR) {
        fail(c, "Noise handshake with %s: %s", c->url.base, c->hs.error);
        return;
    }
    if (rc == HW_NOISE_AGAIN) {
        if (eof)
            fail(c, "Noise handshake with %s: the server closed the connection before its response "
                    "(wrong server key, or a version the server refuses)", c->url.base);
        else if (len >= HANDSHAKE_MAX)
            fail(c, "Noise handshake with %s: no valid response in %d bytes", c->url.base, HANDSHAKE_MAX);
        return;
    }
    become_ready(c, &s, in + used, len - used);
    hw_noise_session_wipe(&s);
}

static void upgrade_readable(struct hwc_conn *c)
{
    int rc = receive(c, HWC_HTTP_HEAD_MAX + HANDSHAKE_MAX);
    if (rc == 0)
        return;
    if (rc < 0) {
        if (c->rlen == 0)
            connect_failed(c, errno);
        else
            fail(c, "%s/ts2021: %s", c->url.base, strerror(errno));
        return;
    }
    bool eof = rc == 2;
    if (!c->head_done) {
        char err[160];
        int h = hwc_http_parse_head(c->rbuf, c->rlen, c->resp, err, sizeof err);
        if (h < 0) {
            fail(c, "%s/ts2021: %s", c->url.base, err);
            return;
        }
        if (h == 0) {
            if (eof)
                fail(c, "%s/ts2021: the server closed the connection without answering the upgrade",
                     c->url.base);
            return;
        }
        c->head_done = true;
        if (c->resp->status != 101) {
            /* The body usually says why (400 with a reason): wait briefly for it. */
            long long want = c->resp->content_length;
            size_t have = c->rlen - c->resp->head_len;
            if (!eof && want > 0 && have < (size_t)want && have < 200) {
                c->head_done = false;
                return;
            }
            char excerpt[200];
            hwc_http_excerpt(c->rbuf + c->resp->head_len, have, excerpt, sizeof excerpt);
            fail(c, "%s/ts2021: the server refused the upgrade: HTTP %d%s%s", c->url.base,
                 c->resp->status, excerpt[0] ? ": " : "", excerpt);
            return;
        }
        const char *up = hwc_http_header(c->resp, "Upgrade");
        const char *conn = hwc_http_header(c->resp, "Connection");
        if (!up || strcmp(up, "tailscale-control-protocol") != 0 || !conn ||
            !hwc_http_has_token(conn, "upgrade")) {
            fail(c, "%s/ts2021: 101 answer without Upgrade: tailscale-control-protocol and "
                    "Connection: upgrade (a proxy in the way?)", c->url.base);
            return;
        }
        c->stage = ST_HANDSHAKE;
    }
    handshake_readable(c, eof);
    if (c->stage == ST_READY) {
        /* The dial buffers (about 100 KiB) are not needed once Noise is up: a process
         * holding thousands of connections (bench/swarm) should not keep them. */
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = c->rlen = 0;
        free(c->resp);
        c->resp = NULL;
    }
}

static void ready_readable(struct hwc_conn *c)
{
    uint8_t buf[65536];
    for (int round = 0; round < 4 && c->stage == ST_READY; round++) {
        ssize_t n = conn_recv(c, buf, sizeof buf);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            fail(c, "connection to %s lost: %s", c->url.base, strerror(errno));
            return;
        }
        if (n == 0) {
            fail(c, "the server %s closed the connection", c->url.base);
            return;
        }
        process_records(c, buf, (size_t)n);
        if ((size_t)n < sizeof buf && !tls_pending(c))
            return;
    }
}

/* After a non-blocking connect: true (and the next address tried) when it failed. */
static bool connect_error(struct hwc_conn *c)
{
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr)
        connect_failed(c, soerr);
    return soerr != 0;
}

/* Runs the TLS handshake of an https:// connection after the TCP connect; the HTTP
 * request goes out once the server proved its name. */
static void tls_handshake(struct hwc_conn *c)
{
    char err[256];
    if (!c->ssl) {
        c->ssl = hwc_tls_new(c->fd, c->url.host, NULL, false, err, sizeof err);
        if (!c->ssl) {
            fail(c, "%s: %s", c->url.base, err);
            return;
        }
    }
    ERR_clear_error();
    int rc = SSL_connect(c->ssl);
    if (rc == 1) {
        if (hwc_tls_check(c->ssl, c->url.host, NULL, false, err, sizeof err) < 0) {
            fail(c, "%s: %s", c->url.base, err);
            return;
        }
        c->tls_up = true;
        set_interest(c, HW_EV_WRITE);
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        set_interest(c, e == SSL_ERROR_WANT_READ ? HW_EV_READ : HW_EV_WRITE);
        return;
    }
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK) {
        ERR_clear_error();
        fail(c, "TLS to %s: certificate not trusted: %s (the system's CA certificates must vouch "
                "for the login server; add a private CA with SSL_CERT_FILE)",
             c->url.base, X509_verify_cert_error_string(vr));
    } else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        fail(c, "TLS to %s: the server closed the connection in the TLS handshake (does it serve "
                "plain HTTP? then use http://)", c->url.base);
    } else {
        hwc_tls_handshake_error(c->ssl, rc, err, sizeof err);
        fail(c, "TLS to %s: %s", c->url.base, err);
    }
}

static void conn_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_conn *c = arg;
    if (c->stage == ST_READY) {
        if (events & HW_EV_WRITE) {
            flush_out(c);
            if (c->stage == ST_READY && hw_h2_pump(c->h2) < 0)
                fail(c, "HTTP/2 to %s: %s", c->url.base, hw_h2_last_error(c->h2));
            if (c->stage == ST_READY)
                flush_out(c);
        }
        /* OpenSSL may have wanted the socket writable to go on reading. */
        if (c->stage == ST_READY && ((events & (HW_EV_READ | HW_EV_ERROR)) || c->ssl))
            ready_readable(c);
        return;
    }
    if (c->url.https && !c->tls_up) {
        if (!c->ssl && (!(events & (HW_EV_WRITE | HW_EV_ERROR)) || connect_error(c)))
            return;
        tls_handshake(c);
        return;
    }
    if (c->req_off < c->req_len) {
        if (!(events & (HW_EV_WRITE | HW_EV_ERROR)))
            return;
        if (!c->ssl && connect_error(c))
            return;
        ssize_t n = conn_send(c, c->req + c->req_off, c->req_len - c->req_off);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                connect_failed(c, errno);
            return;
        }
        c->req_off += (size_t)n;
        if (c->req_off == c->req_len)
            set_interest(c, HW_EV_READ);
        return;
    }
    /* A TLS record can hold more than one read takes; epoll only sees the socket. */
    do {
        enum stage before = c->stage;
        if (c->stage == ST_KEY)
            key_readable(c);
        else
            upgrade_readable(c);
        if (c->stage != before || c->stage == ST_FAILED || c->fd < 0)
            break;
    } while (tls_pending(c));
}

/* ---- public ---- */

struct hwc_conn *hwc_conn_dial(struct hw_loop *loop, const struct hwc_url *url,
                               const uint8_t machine_priv[32], uint16_t capver,
                               const struct hwc_conn_callbacks *cb, void *arg)
{
    return hwc_conn_dial_key(loop, url, machine_priv, capver, NULL, cb, arg);
}

struct hwc_conn *hwc_conn_dial_key(struct hw_loop *loop, const struct hwc_url *url,
                                   const uint8_t machine_priv[32], uint16_t capver,
                                   const uint8_t server_pub[32],
                                   const struct hwc_conn_callbacks *cb, void *arg)
{
    struct hwc_conn *c = hw_calloc(1, sizeof *c);
    c->loop = loop;
    c->url = *url;
    memcpy(c->machine_priv, machine_priv, 32);
    c->capver = capver;
    c->cb = *cb;
    c->arg = arg;
    c->fd = -1;
    c->resolve_pipe[0] = c->resolve_pipe[1] = -1;
    c->resp = hw_malloc(sizeof *c->resp);
    if (server_pub) {
        memcpy(c->server_pub, server_pub, 32);
        c->key_known = true;
    }
    c->stage = ST_RESOLVE;
    c->deadline = hw_timer_start(loop, HWC_DIAL_TIMEOUT_MS, deadline_cb, c);
    start_resolve(c);
    return c;
}

void hwc_conn_free(struct hwc_conn *c)
{
    if (!c)
        return;
    if (c->resolver_running) {
        /* getaddrinfo cannot be interrupted; it ends within the resolver's own timeout. */
        hw_loop_remove(c->loop, c->resolve_pipe[0]);
        pthread_join(c->resolver, NULL);
        close(c->resolve_pipe[0]);
        close(c->resolve_pipe[1]);
        if (c->resolved)
            freeaddrinfo(c->resolved);
    }
    for (struct hwc_req *r = c->reqs; r; r = r->next)
        r->h = NULL;
    if (c->h2)
        hw_h2_free(c->h2);
    if (c->deadline)
        hw_timer_cancel(c->loop, c->deadline);
    if (c->notify)
        hw_timer_cancel(c->loop, c->notify);
    close_fd(c);
    if (c->addrs)
        freeaddrinfo(c->addrs);
    if (c->reader) {
        hw_noise_reader_wipe(c->reader);
        free(c->reader);
    }
    hw_noise_early_free(&c->early);
    hw_noise_handshake_wipe(&c->hs);
    sodium_memzero(&c->tx, sizeof c->tx);
    sodium_memzero(c->machine_priv, sizeof c->machine_priv);
    free(c->req);
    free(c->rbuf);
    free(c->resp);
    free(c->out);
    free(c);
}

bool hwc_conn_ready(const struct hwc_conn *c) { return c->stage == ST_READY; }

const uint8_t *hwc_conn_server_key(const struct hwc_conn *c) { return c->server_pub; }

struct hwc_req *hwc_conn_post(struct hwc_conn *c, const char *path, const void *body, size_t len,
                              const struct hwc_req_handler *h, void *arg)
{
    if (c->stage != ST_READY)
        return NULL;
    struct hwc_req *r = hw_calloc(1, sizeof *r);
    r->conn = c;
    r->h = h;
    r->arg = arg;
    /* upstream's register and map requests carry no Content-Type (PROTOCOL.md §3.7) */
    r->st = hw_h2_request(c->h2, "POST", path, c->url.authority, NULL, body, len, r);
    if (!r->st) {
        free(r);
        return NULL;
    }
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    if (c->in_input)
        return r; /* process_records sends it when nghttp2 returns */
    if (hw_h2_pump(c->h2) < 0)
        fail(c, "HTTP/2 to %s: %s", c->url.base, hw_h2_last_error(c->h2));
    else
        flush_out(c);
    return r;
}

void hwc_req_cancel(struct hwc_req *r)
{
    if (!r)
        return;
    r->h = NULL;
    struct hwc_conn *c = r->conn;
    if (c->stage == ST_READY) {
        hw_h2_reset(r->st, 8 /* CANCEL */);
        if (c->in_input)
            return;
        if (hw_h2_pump(c->h2) < 0)
            fail(c, "HTTP/2 to %s: %s", c->url.base, hw_h2_last_error(c->h2));
        else
            flush_out(c);
    }
}

int hwc_conn_send_raw(struct hwc_conn *c, const void *data, size_t len, bool sealed)
{
    if (c->stage != ST_READY)
        return -1;
    if (sealed) {
        if (h2_write(c->h2, data, len, c) < 0)
            return -1;
        flush_out(c);
        return 0;
    }
    if (c->out_len + len > c->out_cap) {
        c->out = realloc(c->out, c->out_len + len);
        if (!c->out)
            abort();
        c->out_cap = c->out_len + len;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    flush_out(c);
    return 0;
}

int hwc_conn_fd(const struct hwc_conn *c) { return c->fd; }
