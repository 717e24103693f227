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
    int want = c->state == CONN_VERIFYING ? 0 : HW_EV_READ;
    if (conn_out_pending(c) > 0 || c->state == CONN_MESH_CONNECTING)
        want |= HW_EV_WRITE;
    bool ww = (want & HW_EV_WRITE) != 0;
    if (ww != c->want_write || c->state == CONN_VERIFYING)
        hw_loop_modify(c->relay->loop, c->fd, want);
    c->want_write = ww;
}

static void on_deadline(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct conn *c = arg;
    c->deadline = NULL;
    conn_close(c, c->mesh_peer                  ? "mesh handshake timeout"
                  : c->state == CONN_WAIT_INFO  ? "no ClientInfo within 10s"
                  : c->state == CONN_VERIFYING ? "admission check not answered within 10s"
                                               : "handshake timeout");
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
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* derper's defaults: keepalive probes after 10 min, and a short user timeout so
         * a dead peer with unacknowledged data is noticed in 15 s. */
        int idle = 600, user_timeout = 15000;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);

        struct conn *c = hw_calloc(1, sizeof *c);
        c->relay = r;
        c->fd = fd;
        c->id = ++r->next_conn_id;
        c->refs = 1;
        c->via_tls = tls;
        c->is_http_port = http_port;
        c->state = tls ? CONN_TLS_HANDSHAKE : CONN_HTTP;
        hw_stun_addr_from_sockaddr((struct sockaddr *)&ss, &c->remote);
        hw_stun_addr_format(&c->remote, c->remote_text, sizeof c->remote_text);
        hw_derp_reader_init(&c->reader, HW_DERP_SIDE_SERVER);
        if (tls) {
            c->ssl = tls_new_ssl(r);
            if (!c->ssl) {
                close(fd);
                free(c);
                continue;
            }
            SSL_set_fd(c->ssl, fd);
            SSL_set_accept_state(c->ssl);
        }
        if (hw_loop_add(r->loop, fd, HW_EV_READ, on_conn_event, c) < 0) {
            if (c->ssl)
                SSL_free(c->ssl);
            close(fd);
            free(c);
            continue;
        }
        c->deadline = hw_timer_start(r->loop, HANDSHAKE_DEADLINE_MS, on_deadline, c);
        c->all_next = r->all;
        if (r->all)
            r->all->all_prev = c;
        r->all = c;
        r->n_conns++;
    }
}

struct conn *conn_new_outgoing(struct relay *r, int fd, SSL *ssl, struct mesh_peer *peer)
{
    struct conn *c = hw_calloc(1, sizeof *c);
    c->relay = r;
    c->fd = fd;
    c->id = ++r->next_conn_id;
    c->refs = 1;
    c->ssl = ssl;
    c->via_tls = ssl != NULL;
    c->mesh_peer = peer;
    c->can_mesh = true;   /* the longer write timeout of mesh links */
    c->state = CONN_MESH_CONNECTING;
    hw_derp_reader_init(&c->reader, HW_DERP_SIDE_CLIENT);
    if (hw_loop_add(r->loop, fd, HW_EV_WRITE, on_conn_event, c) < 0) {
        free(c);
        return NULL;
    }
    c->want_write = true;
    c->deadline = hw_timer_start(r->loop, HANDSHAKE_DEADLINE_MS, on_deadline, c);
    c->all_next = r->all;
    if (r->all)
        r->all->all_prev = c;
    r->all = c;
    r->n_conns++;
    return c;
}

size_t conn_out_pending(const struct conn *c) { return c->out_len - c->out_off; }

uint8_t *conn_reserve(struct conn *c, size_t len)
{
    if (c->out_off > 0 && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + len > c->out_cap) {
        /* Slide unsent bytes to the front before growing. */
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 4096;
            while (cap < c->out_len + len)
                cap *= 2;
            uint8_t *grown = realloc(c->out, cap);
            if (!grown)
                abort();
            c->out = grown;
            c->out_cap = cap;
        }
    }
    uint8_t *p = c->out + c->out_len;
    c->out_len += len;
    return p;
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

/* Returns -1 when the connection died. */
static int flush_out(struct conn *c)
{
    while (conn_out_pending(c) > 0) {
        size_t n = conn_out_pending(c);
        ssize_t w;
        if (c->ssl) {
            ERR_clear_error();
            int rc = SSL_write(c->ssl, c->out + c->out_off, n > INT32_MAX ? INT32_MAX : (int)n);
            if (rc <= 0) {
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                    break;
                conn_close(c, "TLS write failed");
                return -1;
            }
            w = rc;
        } else {
            w = send(c->fd, c->out + c->out_off, n, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    break;
                conn_close(c, "write failed");
                return -1;
            }
        }
        c->out_off += (size_t)w;
        c->last_write_progress = hw_now_ms_mono();
        if (c->state == CONN_ACTIVE && conn_out_pending(c) == 0)
            derp_build_output(c);   /* refill from the queues while the socket takes it */
    }
    if (conn_out_pending(c) == 0) {
        c->out_off = c->out_len = 0;
        /* A big burst shouldn't pin its buffer on an idle connection. */
        if (c->out_cap > 64 << 10) {
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
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
        log_debug("hwrelay: %s closed: %s", c->remote_text, reason);
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
    close(c->fd);
    c->fd = -1;
    if (c->deadline)
        hw_timer_cancel(r->loop, c->deadline);
    if (c->stall_timer)
        hw_timer_cancel(r->loop, c->stall_timer);
    if (c->keepalive)
        hw_timer_cancel(r->loop, c->keepalive);
    c->deadline = c->stall_timer = c->keepalive = NULL;
    derp_free_conn_state(c);
    hw_derp_reader_free(&c->reader);
    free(c->http_buf);
    c->http_buf = NULL;
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = c->out_cap = 0;
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

/* Runs DERP frames in data through the server; stops early if the connection leaves
 * a frame-reading state (closed, or waiting for an admission verdict). */
static void feed_derp(struct conn *c, const uint8_t *data, size_t len)
{
    struct hw_derp_frame f;
    int rc;
    while ((rc = hw_derp_reader_next(&c->reader, &data, &len, &f)) == HW_DERP_READ_FRAME) {
        derp_on_frame(c, &f);
        if (c->state != CONN_ACTIVE && c->state != CONN_WAIT_INFO)
            break;
    }
    if (rc == HW_DERP_READ_ERROR) {
        conn_close(c, c->reader.error);
        return;
    }
    if (c->state == CONN_VERIFYING && len > 0) {
        /* Frames that came in the same read as ClientInfo wait for the verdict. */
        c->http_buf = hw_malloc(len);
        memcpy(c->http_buf, data, len);
        c->http_len = len;
    }
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
        feed_derp(c, early, early_len);
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
    /* Upgrade: whatever followed the head is already DERP (fast-start clients send
     * ClientInfo right behind their request). */
    char *buf = c->http_buf;
    size_t total = c->http_len;
    c->http_buf = NULL;
    c->http_len = 0;
    conn_start_derp(c, (const uint8_t *)buf + head_len, total - head_len);
    free(buf);
}

static void on_resume(struct hw_loop *loop, struct hw_timer *t, void *arg);

static void read_some(struct conn *c)
{
    struct relay *r = c->relay;
    for (int i = 0; i < READS_PER_EVENT; i++) {
        if (c->state == CONN_CLOSED || c->state == CONN_VERIFYING)
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
            feed_derp(c, r->rbuf, (size_t)n);
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
    if ((events & HW_EV_WRITE) && c->state != CONN_TLS_HANDSHAKE && c->state != CONN_MESH_TLS)
        flush_out(c);
    if ((events & HW_EV_READ) && c->state != CONN_CLOSED)
        read_some(c);
    else if ((events & HW_EV_WRITE) && (c->state == CONN_TLS_HANDSHAKE || c->state == CONN_MESH_TLS))
        read_some(c);
    relay_flush_dirty(r);
    conn_unref(c);
}
