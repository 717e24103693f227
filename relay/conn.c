/* Accepted TCP connections: TLS or plain, the HTTP request head, then DERP frames.
 * Output is buffered per connection and written at the end of each event, so a burst
 * of packets to one client becomes one write. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define HTTP_HEAD_MAX (16 << 10)
#define HANDSHAKE_DEADLINE_MS 10000
#define READS_PER_EVENT 8
#define MESH_WRITE_TIMEOUT_MS 30000

static void on_conn_event(struct hw_loop *loop, int fd, int events, void *arg);

static void set_interest(struct conn *c)
{
    if (c->state == CONN_CLOSED)
        return;
    /* While an admission check runs, frames stay in the socket (derper blocks the
     * same way), so nothing after ClientInfo is processed before the verdict. */
    /* A client over its rate limit is not read either, so TCP holds it back. */
    bool no_read = c->state == CONN_VERIFYING || c->rate_wait;
    int want = no_read ? 0 : HW_EV_READ;
    if (conn_out_pending(c) > 0 || c->state == CONN_MESH_CONNECTING)
        want |= HW_EV_WRITE;
    bool ww = (want & HW_EV_WRITE) != 0;
    if (ww != c->want_write || no_read != c->read_off || c->state == CONN_VERIFYING)
        hw_loop_modify(c->relay->loop, c->fd, want);
    c->want_write = ww;
    c->read_off = no_read;
}

void conn_update_interest(struct conn *c) { set_interest(c); }

static void on_deadline(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct conn *c = arg;
    c->deadline = NULL;
    conn_close(c, c->mesh_peer                  ? "mesh handshake timeout"
                  : c->state == CONN_WAIT_INFO  ? "no ClientInfo within 10s"
                  : c->state == CONN_VERIFYING ? "admission check not answered within 10s"
                                               : "handshake timeout");
}

/* derper's socket settings for a client connection: no Nagle delay, keepalive probes
 * after 10 min, and a short user timeout so a dead peer with unacknowledged data is
 * noticed in 15 s. */
static void tune_client_socket(int fd)
{
    int one = 1, idle = 600, user_timeout = 15000;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
}

static struct conn *conn_alloc(struct relay *r, int fd, const struct sockaddr *peer)
{
    struct conn *c = hw_calloc(1, sizeof *c);
    c->relay = r;
    c->fd = fd;
    c->id = ++r->next_conn_id;
    c->refs = 1;
    if (peer) {
        hw_stun_addr_from_sockaddr(peer, &c->remote);
        hw_stun_addr_format(&c->remote, c->remote_text, sizeof c->remote_text);
    }
    hw_derp_reader_init(&c->reader, HW_DERP_SIDE_SERVER);
    hw_bucket_init(&c->recv_bucket);
    return c;
}

/* Watches the socket and links the connection in; on failure the caller still owns fd. */
static int conn_link(struct conn *c, int interest)
{
    struct relay *r = c->relay;
    if (hw_loop_add(r->loop, c->fd, interest, on_conn_event, c) < 0)
        return -1;
    c->want_write = (interest & HW_EV_WRITE) != 0;
    c->deadline = hw_timer_start(r->loop, HANDSHAKE_DEADLINE_MS, on_deadline, c);
    c->all_next = r->all;
    if (r->all)
        r->all->all_prev = c;
    r->all = c;
    r->n_conns++;
    return 0;
}

static void conn_discard(struct conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    hw_derp_reader_free(&c->reader);
    free(c);
}

static const char *sockaddr_text(const struct sockaddr_storage *ss)
{
    static char text[64];
    struct hw_stun_addr a;
    hw_stun_addr_from_sockaddr((const struct sockaddr *)ss, &a);
    hw_stun_addr_format(&a, text, sizeof text);
    return text;
}

void conn_accept(struct relay *r, int lfd, bool tls, bool http_port)
{
    /* Bounded per event so a connection flood cannot starve established clients. */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log_warn("hwrelay: accept: %s", strerror(errno));
            return;
        }
        /* derper limits its TLS listener only, and refuses by closing at once rather
         * than accepting slowly: the client learns something is wrong and retries with
         * backoff, and nothing piles up in the kernel's accept queue. */
        if (tls && !http_port &&
            !hw_bucket_allow(&r->accept_bucket, r->cfg.accept_limit, r->cfg.accept_burst, 1,
                             hw_loop_now_ms(r->loop))) {
            close(fd);
            if (r->accepts_rejected++ % 1000 == 0)
                log_warn("hwrelay: connection from %s refused by -accept-connection-limit "
                         "(%llu so far)", sockaddr_text(&ss), (unsigned long long)r->accepts_rejected);
            continue;
        }
        tune_client_socket(fd);
        struct conn *c = conn_alloc(r, fd, (struct sockaddr *)&ss);
        c->via_tls = tls;
        c->is_http_port = http_port;
        c->state = tls ? CONN_TLS_HANDSHAKE : CONN_HTTP;
        if (tls) {
            c->ssl = tls_new_ssl(r);
            if (!c->ssl) {
                close(fd);
                conn_discard(c);
                continue;
            }
            SSL_set_fd(c->ssl, fd);
            SSL_set_accept_state(c->ssl);
        }
        if (conn_link(c, HW_EV_READ) < 0) {
            close(fd);
            conn_discard(c);
        }
    }
}

static void conn_start_ws_reader(struct conn *c)
{
    c->websocket = true;
    c->ws_reader = hw_malloc(sizeof *c->ws_reader);
    hw_ws_reader_init(c->ws_reader);
}

int relay_adopt(struct relay *r, const struct relay_adoption *a)
{
    if (r->stopping || !r->pubhex[0])
        return -1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(a->fd, (struct sockaddr *)&ss, &sl) < 0)
        return -1;
    int flags = fcntl(a->fd, F_GETFL);
    if (flags < 0 || fcntl(a->fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    tune_client_socket(a->fd);
    struct conn *c = conn_alloc(r, a->fd, (struct sockaddr *)&ss);
    c->release = a->release;
    c->release_arg = a->release_arg;
    c->not_ideal = a->not_ideal;
    c->state = CONN_WAIT_INFO;
    if (a->websocket)
        conn_start_ws_reader(c);
    if (conn_link(c, HW_EV_READ) < 0) {
        free(c->ws_reader);
        conn_discard(c);
        return -1;
    }
    c->refs++;   /* conn_start_derp may close it: keep c readable until the flush */
    conn_start_derp(c, a->early, a->early_len);
    relay_flush_dirty(r);
    conn_unref(c);
    return 0;
}

struct conn *conn_new_outgoing(struct relay *r, int fd, SSL *ssl, struct mesh_peer *peer)
{
    struct conn *c = conn_alloc(r, fd, NULL);
    c->ssl = ssl;
    c->via_tls = ssl != NULL;
    c->mesh_peer = peer;
    c->can_mesh = true;   /* the longer write timeout of mesh links */
    c->state = CONN_MESH_CONNECTING;
    hw_derp_reader_free(&c->reader);
    hw_derp_reader_init(&c->reader, HW_DERP_SIDE_CLIENT);
    if (conn_link(c, HW_EV_WRITE) < 0) {
        c->ssl = NULL;   /* the caller frees what it passed in */
        conn_discard(c);
        return NULL;
    }
    return c;
}

size_t conn_out_pending(const struct conn *c)
{
    return (c->out_len - c->out_off) + (c->ws_len - c->ws_off);
}

/* Room for len more bytes at the end of a buffer whose bytes before *off are sent. */
static uint8_t *buf_reserve(uint8_t **buf, size_t *blen, size_t *off, size_t *cap, size_t len)
{
    if (*off > 0 && *off == *blen)
        *off = *blen = 0;
    if (*blen + len > *cap) {
        /* Slide unsent bytes to the front before growing. */
        if (*off > 0) {
            memmove(*buf, *buf + *off, *blen - *off);
            *blen -= *off;
            *off = 0;
        }
        if (*blen + len > *cap) {
            size_t ncap = *cap ? *cap : 4096;
            while (ncap < *blen + len)
                ncap *= 2;
            uint8_t *grown = realloc(*buf, ncap);
            if (!grown)
                abort();
            *buf = grown;
            *cap = ncap;
        }
    }
    uint8_t *p = *buf + *blen;
    *blen += len;
    return p;
}

uint8_t *conn_reserve(struct conn *c, size_t len)
{
    return buf_reserve(&c->out, &c->out_len, &c->out_off, &c->out_cap, len);
}

/* ---- WebSocket output ---- */

/* Each message at most this big: Go's coder/websocket reads 32 KiB messages by
 * default, and the DERP stream does not care where messages end. */
#define WS_MESSAGE_MAX (16 << 10)

static uint8_t *ws_reserve(struct conn *c, size_t len)
{
    return buf_reserve(&c->ws, &c->ws_len, &c->ws_off, &c->ws_cap, len);
}

/* Moves the DERP bytes of out into ws as binary messages. */
static void ws_wrap(struct conn *c)
{
    while (c->out_off < c->out_len) {
        size_t n = c->out_len - c->out_off;
        if (n > WS_MESSAGE_MAX)
            n = WS_MESSAGE_MAX;
        uint8_t hdr[10];
        size_t h = hw_ws_frame_header(HW_WS_BINARY, n, hdr);
        uint8_t *p = ws_reserve(c, h + n);
        memcpy(p, hdr, h);
        memcpy(p + h, c->out + c->out_off, n);
        c->out_off += n;
    }
    c->out_off = c->out_len = 0;
}

/* ws holds whole frames only, so a control frame can go at its end. */
static void ws_control(struct conn *c, enum hw_ws_opcode op, const uint8_t *payload, size_t len)
{
    ws_wrap(c);
    uint8_t hdr[10];
    size_t h = hw_ws_frame_header(op, len, hdr);
    uint8_t *p = ws_reserve(c, h + len);
    memcpy(p, hdr, h);
    if (len)
        memcpy(p + h, payload, len);
}

void conn_enter_websocket(struct conn *c)
{
    /* The 101 in out goes on the wire as it is; what follows is framed. */
    size_t n = c->out_len - c->out_off;
    memcpy(ws_reserve(c, n), c->out + c->out_off, n);
    c->out_off = c->out_len = 0;
    conn_start_ws_reader(c);
}

/* Writes what the socket takes now, without ever blocking. Returns bytes or -1. */
static ssize_t conn_send(struct conn *c, const uint8_t *p, size_t n, bool *blocked)
{
    *blocked = false;
    if (c->ssl) {
        ERR_clear_error();
        int rc = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (rc > 0)
            return rc;
        int e = SSL_get_error(c->ssl, rc);
        *blocked = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ;
        return -1;
    }
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0)
        *blocked = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    return w;
}

/* Ends a WebSocket connection: a close frame with code if the socket takes it now
 * (queued DERP output is dropped, never sent after the close), then conn_close. */
static void ws_close_now(struct conn *c, uint16_t code, const char *why)
{
    uint8_t payload[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    c->out_off = c->out_len = 0;
    ws_control(c, HW_WS_CLOSE, payload, sizeof payload);
    bool blocked;
    while (c->ws_off < c->ws_len) {
        ssize_t w = conn_send(c, c->ws + c->ws_off, c->ws_len - c->ws_off, &blocked);
        if (w <= 0)
            break;
        c->ws_off += (size_t)w;
    }
    conn_close(c, why);
}

void conn_write(struct conn *c, const void *data, size_t len)
{
    memcpy(conn_reserve(c, len), data, len);
    conn_mark_dirty(c);
}

void conn_mark_dirty(struct conn *c)
{
    if (c->dirty || c->state == CONN_CLOSED)
        return;
    c->dirty = true;
    c->refs++;   /* the dirty list's reference */
    c->dirty_next = c->relay->dirty;
    c->relay->dirty = c;
}

static void on_stall(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct conn *c = arg;
    c->stall_timer = NULL;
    int64_t limit = c->can_mesh ? MESH_WRITE_TIMEOUT_MS : c->relay->cfg.write_timeout_ms;
    int64_t idle = hw_now_ms_mono() - c->last_write_progress;
    if (idle >= limit) {
        conn_close(c, "write timeout");
        return;
    }
    c->stall_timer = hw_timer_start(loop, limit - idle, on_stall, c);
}

static void shrink_idle(uint8_t **buf, size_t *cap)
{
    /* A big burst shouldn't pin its buffer on an idle connection. */
    if (*cap > 64 << 10) {
        free(*buf);
        *buf = NULL;
        *cap = 0;
    }
}

/* Returns -1 when the connection died. */
static int flush_out(struct conn *c)
{
    for (;;) {
        if (c->websocket)
            ws_wrap(c);
        uint8_t *buf = c->websocket ? c->ws : c->out;
        size_t *off = c->websocket ? &c->ws_off : &c->out_off;
        size_t n = (c->websocket ? c->ws_len : c->out_len) - *off;
        if (n == 0)
            break;
        bool blocked;
        ssize_t w = conn_send(c, buf + *off, n, &blocked);
        if (w < 0) {
            if (blocked)
                break;
            conn_close(c, c->ssl ? "TLS write failed" : "write failed");
            return -1;
        }
        *off += (size_t)w;
        c->last_write_progress = hw_now_ms_mono();
        if (c->state == CONN_ACTIVE && conn_out_pending(c) == 0)
            derp_build_output(c);   /* refill from the queues while the socket takes it */
    }
    if (conn_out_pending(c) == 0) {
        c->out_off = c->out_len = 0;
        c->ws_off = c->ws_len = 0;
        shrink_idle(&c->out, &c->out_cap);
        shrink_idle(&c->ws, &c->ws_cap);
        if (c->stall_timer) {
            hw_timer_cancel(c->relay->loop, c->stall_timer);
            c->stall_timer = NULL;
        }
        if (c->state == CONN_HTTP_REPLY) {
            conn_close(c, NULL);
            return -1;
        }
    } else {
        int64_t limit = c->can_mesh ? MESH_WRITE_TIMEOUT_MS : c->relay->cfg.write_timeout_ms;
        if (!c->stall_timer && limit > 0) {
            /* The output was flowing until now, so the stall starts here. */
            c->last_write_progress = hw_now_ms_mono();
            c->stall_timer = hw_timer_start(c->relay->loop, limit, on_stall, c);
        }
    }
    set_interest(c);
    return 0;
}

void relay_flush_dirty(struct relay *r)
{
    while (r->dirty) {
        struct conn *c = r->dirty;
        r->dirty = c->dirty_next;
        c->dirty = false;
        c->dirty_next = NULL;
        if (c->state != CONN_CLOSED) {
            if (c->state == CONN_ACTIVE)
                derp_build_output(c);
            flush_out(c);
        }
        conn_unref(c);
    }
}

void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    free(c);
}

void conn_close(struct conn *c, const char *reason)
{
    if (c->state == CONN_CLOSED)
        return;
    struct relay *r = c->relay;
    bool was_client = c->registered;
    if (was_client)
        log_info("derp: %s %s disconnected%s%s", c->short_key, c->remote_text, reason ? ": " : "",
                 reason ? reason : "");
    else if (reason && c->state == CONN_VERIFYING)
        log_info("derp: %s %s refused: %s", c->short_key, c->remote_text, reason);
    else if (reason && c->state == CONN_WAIT_INFO)
        log_info("derp: %s handshake failed: %s", c->remote_text, reason);
    else if (reason)
        log_debug("derp: %s closed: %s", c->remote_text, reason);
    if (c->registered)
        derp_unregister(c);
    c->close_reason = reason;
    if (c->mesh_peer)
        mesh_on_close(c);
    c->state = CONN_CLOSED;
    hw_loop_remove(r->loop, c->fd);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->release)
        c->release(c->release_arg, c->fd);
    else
        close(c->fd);
    c->fd = -1;
    if (c->deadline)
        hw_timer_cancel(r->loop, c->deadline);
    if (c->stall_timer)
        hw_timer_cancel(r->loop, c->stall_timer);
    if (c->keepalive)
        hw_timer_cancel(r->loop, c->keepalive);
    if (c->rate_wait)
        hw_timer_cancel(r->loop, c->rate_wait);
    c->deadline = c->stall_timer = c->keepalive = c->rate_wait = NULL;
    derp_free_conn_state(c);
    hw_derp_reader_free(&c->reader);
    free(c->http_buf);
    c->http_buf = NULL;
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = c->out_cap = 0;
    free(c->ws);
    c->ws = NULL;
    c->ws_len = c->ws_off = c->ws_cap = 0;
    free(c->ws_reader);
    c->ws_reader = NULL;
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        r->all = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    c->all_prev = c->all_next = NULL;
    r->n_conns--;
    conn_unref(c);   /* the loop's reference */
}

static void read_some(struct conn *c);
static void on_resume(struct hw_loop *loop, struct hw_timer *t, void *arg);

/* Reads into the shared buffer. Returns bytes, 0 for "nothing now", -1 when closed. */
static ssize_t conn_read(struct conn *c, uint8_t *buf, size_t cap)
{
    if (c->ssl) {
        ERR_clear_error();
        int rc = SSL_read(c->ssl, buf, (int)cap);
        if (rc > 0)
            return rc;
        int e = SSL_get_error(c->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return 0;
        conn_close(c, e == SSL_ERROR_ZERO_RETURN ? "closed by peer" : "TLS read failed");
        return -1;
    }
    ssize_t n = recv(c->fd, buf, cap, 0);
    if (n > 0)
        return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    conn_close(c, n == 0 ? "closed by peer" : strerror(errno));
    return -1;
}

/* Frames behind ClientInfo wait for the admission verdict. Reading stops while it is
 * pending, so this holds at most what one read brought. */
static void hold_for_verdict(struct conn *c, const uint8_t *data, size_t len)
{
    char *grown = realloc(c->http_buf, c->http_len + len);
    if (!grown)
        abort();
    c->http_buf = grown;
    memcpy(c->http_buf + c->http_len, data, len);
    c->http_len += len;
}

static void on_rate_wait_over(struct hw_loop *loop, struct hw_timer *t, void *arg);

/* derper's per-client receive limit: each frame a registered client sends costs its
 * payload length (at most one largest frame) before it is handled. When the bucket
 * cannot pay, the cost is reserved anyway, and this frame and everything behind it
 * wait, unread, until the debt is paid. Returns false when the frame must wait (it
 * and the rest of data are then in http_buf). */
static bool rate_admits(struct conn *c, const struct hw_derp_frame *f, const uint8_t *rest, size_t rest_len)
{
    struct relay *r = c->relay;
    if (r->client_rate <= 0 || c->can_mesh || c->state != CONN_ACTIVE)
        return true;
    double cost = f->len < RELAY_MIN_CLIENT_BURST ? (double)f->len : (double)RELAY_MIN_CLIENT_BURST;
    int64_t wait = hw_bucket_reserve(&c->recv_bucket, r->client_rate, r->client_burst, cost,
                                     hw_loop_now_ms(r->loop));
    if (wait <= 0)
        return true;
    uint8_t hdr[HW_DERP_HDR_LEN] = {f->type, (uint8_t)(f->len >> 24), (uint8_t)(f->len >> 16),
                                    (uint8_t)(f->len >> 8), (uint8_t)f->len};
    hold_for_verdict(c, hdr, sizeof hdr);
    hold_for_verdict(c, f->payload, f->len);
    hold_for_verdict(c, rest, rest_len);
    c->rate_wait = hw_timer_start(r->loop, wait, on_rate_wait_over, c);
    r->rate_limit_waits++;
    set_interest(c);
    return false;
}

/* Runs DERP frames in data through the server; stops early if the connection leaves
 * a frame-reading state (closed, or waiting for an admission verdict or its rate limit). */
static void feed_derp(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->rate_wait) {
        /* A WebSocket message can bring more stream behind a frame that waits. */
        hold_for_verdict(c, data, len);
        return;
    }
    struct hw_derp_frame f;
    int rc;
    while ((rc = hw_derp_reader_next(&c->reader, &data, &len, &f)) == HW_DERP_READ_FRAME) {
        if (!rate_admits(c, &f, data, len))
            return;
        derp_on_frame(c, &f);
        if (c->state != CONN_ACTIVE && c->state != CONN_WAIT_INFO)
            break;
    }
    if (rc == HW_DERP_READ_ERROR) {
        conn_close(c, c->reader.error);
        return;
    }
    if (c->state == CONN_VERIFYING && len > 0)
        hold_for_verdict(c, data, len);
}

/* WebSocket: the payload of binary messages is the DERP stream. */
static int ws_on_data(void *arg, const uint8_t *p, size_t len)
{
    struct conn *c = arg;
    if (c->state == CONN_VERIFYING) {
        hold_for_verdict(c, p, len);
        return 0;
    }
    if (c->state != CONN_WAIT_INFO && c->state != CONN_ACTIVE)
        return -2;
    feed_derp(c, p, len);
    return c->state == CONN_CLOSED ? -2 : 0;
}

static void ws_on_ping(void *arg, const uint8_t *p, size_t len)
{
    struct conn *c = arg;
    ws_control(c, HW_WS_PONG, p, len);
    conn_mark_dirty(c);
}

static const struct hw_ws_events ws_events = {.data = ws_on_data, .ping = ws_on_ping};

static void feed_ws(struct conn *c, const uint8_t *data, size_t len)
{
    int rc = hw_ws_reader_feed(c->ws_reader, data, len, &ws_events, c);
    if (c->state == CONN_CLOSED)
        return;
    if (rc == -1) {
        /* 1002: protocol error. Only this connection goes. */
        char why[128];
        snprintf(why, sizeof why, "%s", c->ws_reader->error);
        ws_close_now(c, 1002, why);
        return;
    }
    if (c->ws_reader->closed)
        ws_close_now(c, 1000, "WebSocket closed by the client");
}

/* The stream a connection reads: WebSocket messages or DERP frames directly. */
static void feed_stream(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->websocket)
        feed_ws(c, data, len);
    else
        feed_derp(c, data, len);
}

void conn_start_derp(struct conn *c, const uint8_t *early, size_t early_len)
{
    struct relay *r = c->relay;
    uint8_t sk[HW_DERP_HDR_LEN + HW_DERP_SERVER_KEY_LEN];
    size_t n = hw_derp_build_server_key(sk, sizeof sk, r->pub);
    conn_write(c, sk, n);
    c->state = CONN_WAIT_INFO;
    /* derper gives the client 10 s from here to send ClientInfo. */
    if (c->deadline)
        hw_timer_cancel(r->loop, c->deadline);
    c->deadline = hw_timer_start(r->loop, HANDSHAKE_DEADLINE_MS, on_deadline, c);
    if (early_len > 0)
        feed_stream(c, early, early_len);
}

void conn_resume_after_verify(struct conn *c)
{
    char *held = c->http_buf;
    size_t held_len = c->http_len;
    c->http_buf = NULL;
    c->http_len = 0;
    set_interest(c);
    if (held_len > 0 && c->state == CONN_ACTIVE)
        feed_derp(c, (const uint8_t *)held, held_len);
    free(held);
}

/* The frame that waited is paid for: handle it, then what followed it, then read again. */
static void on_rate_wait_over(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct conn *c = arg;
    c->rate_wait = NULL;
    c->refs++;
    uint8_t *held = (uint8_t *)c->http_buf;
    size_t held_len = c->http_len;
    c->http_buf = NULL;
    c->http_len = 0;
    struct hw_derp_frame f;
    const uint8_t *p = held;
    size_t n = held_len;
    if (hw_derp_reader_next(&c->reader, &p, &n, &f) == HW_DERP_READ_FRAME) {
        derp_on_frame(c, &f);
        if (c->state == CONN_ACTIVE && n > 0)
            feed_derp(c, p, n);
    }
    free(held);
    if (c->state != CONN_CLOSED && !c->rate_wait) {
        set_interest(c);
        /* TLS may hold decrypted bytes that epoll cannot report. */
        if (c->ssl && SSL_pending(c->ssl) > 0)
            read_some(c);
    }
    relay_flush_dirty(c->relay);
    conn_unref(c);
}

static void feed_mesh(struct conn *c, const uint8_t *data, size_t len)
{
    struct hw_derp_frame f;
    int rc;
    while ((rc = hw_derp_reader_next(&c->reader, &data, &len, &f)) == HW_DERP_READ_FRAME) {
        mesh_on_frame(c, &f);
        if (c->state != CONN_MESH_RUN)
            return;
    }
    if (rc == HW_DERP_READ_ERROR)
        conn_close(c, c->reader.error);
}

static void send_mesh_upgrade(struct conn *c)
{
    char *req = mesh_upgrade_request(c);
    conn_write(c, req, strlen(req));
    free(req);
    c->state = CONN_MESH_HEAD;
}

/* The peer relay's answer to our upgrade: a 101 head, then DERP frames. */
static void handle_mesh_head(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->http_len + len > HTTP_HEAD_MAX) {
        conn_close(c, "mesh peer's HTTP answer too large");
        return;
    }
    char *grown = realloc(c->http_buf, c->http_len + len + 1);
    if (!grown)
        abort();
    c->http_buf = grown;
    memcpy(c->http_buf + c->http_len, data, len);
    c->http_len += len;
    c->http_buf[c->http_len] = '\0';
    char *end = strstr(c->http_buf, "\r\n\r\n");
    if (!end)
        return;
    if (strncmp(c->http_buf, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(c->http_buf, "\r\n");
        *eol = '\0';
        char *why = hw_sprintf("mesh peer refused the upgrade: %.80s", c->http_buf);
        conn_close(c, why);
        free(why);
        return;
    }
    char *buf = c->http_buf;
    size_t total = c->http_len, head = (size_t)(end + 4 - buf);
    c->http_buf = NULL;
    c->http_len = 0;
    c->state = CONN_MESH_RUN;
    feed_mesh(c, (const uint8_t *)buf + head, total - head);
    free(buf);
}

static void handle_http_bytes(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->http_len + len > HTTP_HEAD_MAX) {
        conn_close(c, "HTTP request head too large");
        return;
    }
    char *grown = realloc(c->http_buf, c->http_len + len + 1);
    if (!grown)
        abort();
    c->http_buf = grown;
    memcpy(c->http_buf + c->http_len, data, len);
    c->http_len += len;
    c->http_buf[c->http_len] = '\0';
    size_t head_len = 0;
    enum http_result res = http_handle(c, &head_len);
    if (res == HTTP_NEED_MORE || c->state == CONN_CLOSED)
        return;
    if (res == HTTP_BAD) {
        c->state = CONN_HTTP_REPLY;
        return;
    }
    if (res == HTTP_DONE) {
        c->state = CONN_HTTP_REPLY;
        free(c->http_buf);
        c->http_buf = NULL;
        c->http_len = 0;
        return;
    }
    if (res == HTTP_UPGRADE_WEBSOCKET)
        conn_enter_websocket(c);
    /* Upgrade: whatever followed the head is already DERP (fast-start clients send
     * ClientInfo right behind their request). */
    char *buf = c->http_buf;
    size_t total = c->http_len;
    c->http_buf = NULL;
    c->http_len = 0;
    conn_start_derp(c, (const uint8_t *)buf + head_len, total - head_len);
    free(buf);
}

static void read_some(struct conn *c)
{
    struct relay *r = c->relay;
    for (int i = 0; i < READS_PER_EVENT; i++) {
        if (c->state == CONN_CLOSED || c->state == CONN_VERIFYING || c->rate_wait)
            return;
        if (c->state == CONN_TLS_HANDSHAKE || c->state == CONN_MESH_TLS) {
            ERR_clear_error();
            int rc = SSL_do_handshake(c->ssl);
            if (rc != 1) {
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    hw_loop_modify(r->loop, c->fd, HW_EV_READ | (e == SSL_ERROR_WANT_WRITE ? HW_EV_WRITE : 0));
                    c->want_write = e == SSL_ERROR_WANT_WRITE;
                    return;
                }
                conn_close(c, "TLS handshake failed");
                return;
            }
            if (c->state == CONN_MESH_TLS)
                send_mesh_upgrade(c);
            else
                c->state = CONN_HTTP;
            set_interest(c);
            continue;
        }
        ssize_t n = conn_read(c, r->rbuf, r->rbuf_cap);
        if (n <= 0)
            return;
        switch (c->state) {
        case CONN_HTTP:
            handle_http_bytes(c, r->rbuf, (size_t)n);
            break;
        case CONN_WAIT_INFO:
        case CONN_ACTIVE:
            feed_stream(c, r->rbuf, (size_t)n);
            break;
        case CONN_MESH_HEAD:
            handle_mesh_head(c, r->rbuf, (size_t)n);
            break;
        case CONN_MESH_RUN:
            feed_mesh(c, r->rbuf, (size_t)n);
            break;
        default:
            break;   /* after the reply: the request body or a pipelined request is ignored */
        }
    }
    /* Budget used up: TLS may hold decrypted bytes epoll can't see, so come back. */
    if (c->state != CONN_CLOSED && c->ssl && SSL_pending(c->ssl) > 0) {
        c->refs++;
        hw_timer_start(r->loop, 0, on_resume, c);
    }
}

static void on_resume(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct conn *c = arg;
    if (c->state != CONN_CLOSED) {
        read_some(c);
        relay_flush_dirty(c->relay);
    }
    conn_unref(c);
}

static void on_conn_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct conn *c = arg;
    struct relay *r = c->relay;
    c->refs++;
    if (c->state == CONN_MESH_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
            conn_close(c, err ? strerror(err) : "connect failed");
        } else if (events & (HW_EV_WRITE | HW_EV_ERROR)) {
            if (c->ssl) {
                c->state = CONN_MESH_TLS;
                set_interest(c);
                read_some(c);
            } else {
                send_mesh_upgrade(c);
                set_interest(c);
            }
        }
        relay_flush_dirty(r);
        conn_unref(c);
        return;
    }
    /* Reads are paused (rate limit, admission), so a reset peer would keep the
     * level-triggered error firing until the pause ends: end it now. */
    if ((events & HW_EV_ERROR) && (c->rate_wait || c->state == CONN_VERIFYING)) {
        conn_close(c, "connection lost while its reads were paused");
        relay_flush_dirty(r);
        conn_unref(c);
        return;
    }
    if ((events & HW_EV_WRITE) && c->state != CONN_TLS_HANDSHAKE && c->state != CONN_MESH_TLS)
        flush_out(c);
    if ((events & HW_EV_READ) && c->state != CONN_CLOSED)
        read_some(c);
    else if ((events & HW_EV_WRITE) && (c->state == CONN_TLS_HANDSHAKE || c->state == CONN_MESH_TLS))
        read_some(c);
    relay_flush_dirty(r);
    conn_unref(c);
}
