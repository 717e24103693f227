#include "client/derp.h"
#include "client/hostnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <sodium.h>

#include "client/http1.h"
#include "client/resolve.h"
#include "client/tlsdial.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "common/version.h"
#include "proto/derp.h"
#include "proto/keys.h"

enum stage {
    ST_RESOLVE,
    ST_CONNECT,
    ST_TLS,
    ST_HTTP,       /* request written, waiting for the answer's head */
    ST_SERVER_KEY,
    ST_SERVER_INFO,
    ST_UP,
    ST_DONE,
};

#define MAX_ADDRS 8
#define READ_CHUNK 65536
/* Rounds of reads per event on a busy connection, so one relay cannot starve the rest. */
#define READ_ROUNDS 8
#define WATCHDOG_TICK_MS 15000

struct node {
    char *name, *host, *ipv4, *ipv6, *cert_name;
    int port;
    bool insecure;
};

struct pending {
    uint8_t *frame;
    size_t len;
};

struct hwc_derp {
    struct hw_loop *loop;
    enum hwc_derp_mode mode;
    bool plain_http;
    bool preferred;
    int region_id;
    char region_code[32];
    struct hwc_derp_callbacks cb;
    void *arg;
    uint8_t priv[32], pub[32], server_pub[32];

    struct node *nodes;
    size_t n_nodes, node_idx;
    char ideal_node[64];

    enum stage stage;
    struct hwc_resolve *resolver;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addr_lens[MAX_ADDRS];
    size_t n_addrs, addr_idx;
    char addr_text[80];
    char last_dial_error[200];
    int fd;
    bool watched;
    int interest;
    SSL *ssl;
    bool ssl_want_write; /* a read or write needs the socket writable */

    uint8_t *hbuf;       /* the HTTP head and whatever came behind it */
    size_t hlen;
    struct hwc_http_resp *resp;
    struct hw_derp_reader reader;

    uint8_t *out;
    size_t out_len, out_off, out_cap;
    struct pending pend[HWC_DERP_PENDING_MAX];
    size_t n_pend;

    struct hw_timer *deadline, *node_timer, *watchdog, *pong_timer, *notify;
    int64_t last_rx_ms;
    int64_t t0_us, latency_us;
    bool ping_pending;
    uint8_t ping_data[8];
    int64_t ping_sent_us;
    double last_rtt_ms;

    /* the server's token bucket (ServerInfo), when it set one */
    double bucket_rate, bucket_burst, bucket_tokens;
    int64_t bucket_at_us;
    uint32_t restart_hint_ms;
    char health[256];

    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes, tx_drops, rx_skipped;
    int64_t up_since;
    char error[400];
};

static void derp_event(struct hw_loop *loop, int fd, int events, void *arg);
static void start_node(struct hwc_derp *d);
static void try_address(struct hwc_derp *d);

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool hwc_derp_env_plain_http(void)
{
    const char *v = getenv("TS_DEBUG_USE_DERP_HTTP");
    return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "t") == 0);
}

/* ---- lifecycle helpers ---- */

static void cancel(struct hwc_derp *d, struct hw_timer **t)
{
    if (*t) {
        hw_timer_cancel(d->loop, *t);
        *t = NULL;
    }
}

static void unwatch(struct hwc_derp *d)
{
    if (d->watched) {
        hw_loop_remove(d->loop, d->fd);
        d->watched = false;
    }
}

static void close_socket(struct hwc_derp *d)
{
    unwatch(d);
    if (d->ssl) {
        SSL_free(d->ssl);
        d->ssl = NULL;
    }
    if (d->fd >= 0) {
        close(d->fd);
        d->fd = -1;
    }
}

static void notify_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_derp *d = arg;
    d->notify = NULL;
    d->cb.on_done(d, d->error[0] ? d->error : NULL, d->arg);
}

static void finish(struct hwc_derp *d)
{
    if (d->stage == ST_DONE)
        return;
    d->stage = ST_DONE;
    /* The socket stays open until free: a new fd must not take its number while a
     * callback further up the stack still holds this connection. */
    unwatch(d);
    cancel(d, &d->deadline);
    cancel(d, &d->node_timer);
    cancel(d, &d->watchdog);
    cancel(d, &d->pong_timer);
    if (!d->notify)
        d->notify = hw_timer_start(d->loop, 0, notify_cb, d);
}

static void fail(struct hwc_derp *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct hwc_derp *d, const char *fmt, ...)
{
    if (d->stage == ST_DONE)
        return;
    char msg[sizeof d->error - 40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(d->error, sizeof d->error, "derp-%d: %s", d->region_id, msg);
    finish(d);
}

static void set_interest(struct hwc_derp *d, int interest)
{
    if (d->fd < 0 || d->stage == ST_DONE)
        return;
    if (!d->watched) {
        if (hw_loop_add(d->loop, d->fd, interest, derp_event, d) < 0) {
            fail(d, "event loop: cannot watch a socket");
            return;
        }
        d->watched = true;
        d->interest = interest;
    } else if (interest != d->interest) {
        hw_loop_modify(d->loop, d->fd, interest);
        d->interest = interest;
    }
}

static void update_interest(struct hwc_derp *d)
{
    if (d->stage == ST_CONNECT)
        set_interest(d, HW_EV_WRITE);
    else
        set_interest(d, HW_EV_READ | (d->out_off < d->out_len || d->ssl_want_write ? HW_EV_WRITE : 0));
}

/* ---- output ---- */

/* Room for n more bytes at out + out_len. */
static void out_reserve(struct hwc_derp *d, size_t n)
{
    if (d->out_off > 0 && d->out_off == d->out_len)
        d->out_off = d->out_len = 0;
    if (d->out_len + n <= d->out_cap)
        return;
    if (d->out_off > 0) {
        memmove(d->out, d->out + d->out_off, d->out_len - d->out_off);
        d->out_len -= d->out_off;
        d->out_off = 0;
    }
    if (d->out_len + n > d->out_cap) {
        size_t cap = d->out_cap ? d->out_cap : 16384;
        while (cap < d->out_len + n)
            cap *= 2;
        d->out = realloc(d->out, cap);
        if (!d->out)
            abort();
        d->out_cap = cap;
    }
}

static void out_append(struct hwc_derp *d, const uint8_t *data, size_t len)
{
    out_reserve(d, len);
    memcpy(d->out + d->out_len, data, len);
    d->out_len += len;
}

/* Writes what it can; failures end the connection. */
static void flush(struct hwc_derp *d)
{
    d->ssl_want_write = false;
    while (d->out_off < d->out_len && d->stage != ST_DONE) {
        size_t left = d->out_len - d->out_off;
        if (d->ssl) {
            int n = SSL_write(d->ssl, d->out + d->out_off, left > INT32_MAX ? INT32_MAX : (int)left);
            if (n <= 0) {
                int e = SSL_get_error(d->ssl, n);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    d->ssl_want_write = e == SSL_ERROR_WANT_WRITE;
                    break;
                }
                fail(d, "connection to %s lost (TLS write)", d->addr_text);
                return;
            }
            d->out_off += (size_t)n;
        } else {
            ssize_t n = send(d->fd, d->out + d->out_off, left, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                fail(d, "connection to %s lost: %s", d->addr_text, strerror(errno));
                return;
            }
            d->out_off += (size_t)n;
        }
    }
    if (d->out_off == d->out_len)
        d->out_off = d->out_len = 0;
    update_interest(d);
}

static void send_frame(struct hwc_derp *d, const uint8_t *frame, size_t len)
{
    out_append(d, frame, len);
    flush(d);
}

/* ---- input ---- */

/* >0 bytes read, 0 nothing now, -1 error (errno-ish text in d->error), -2 end of stream */
static ssize_t read_some(struct hwc_derp *d, uint8_t *buf, size_t cap)
{
    if (d->ssl) {
        int n = SSL_read(d->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
        if (n > 0)
            return n;
        int e = SSL_get_error(d->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            return 0;
        if (e == SSL_ERROR_WANT_WRITE) {
            d->ssl_want_write = true;
            return 0;
        }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && n == 0))
            return -2;
        return -1;
    }
    ssize_t n = read(d->fd, buf, cap);
    if (n > 0)
        return n;
    if (n == 0)
        return -2;
    return errno == EAGAIN || errno == EINTR ? 0 : -1;
}

static void send_client_info(struct hwc_derp *d)
{
    struct hw_derp_client_info info = {.version = HW_DERP_PROTOCOL_VERSION, .can_ack_pings = true};
    size_t len;
    uint8_t *frame = hw_derp_build_client_info(d->priv, d->pub, d->server_pub, &info, NULL, &len);
    if (!frame) {
        fail(d, "cannot seal ClientInfo for the relay's key");
        return;
    }
    out_append(d, frame, len);
    free(frame);
    if (d->preferred) {
        uint8_t np[HW_DERP_HDR_LEN + 1];
        size_t n = hw_derp_build_note_preferred(np, sizeof np, true);
        out_append(d, np, n);
    }
    d->stage = ST_SERVER_INFO;
    flush(d);
}

static void flush_pending(struct hwc_derp *d)
{
    for (size_t i = 0; i < d->n_pend; i++) {
        out_append(d, d->pend[i].frame, d->pend[i].len);
        free(d->pend[i].frame);
    }
    d->n_pend = 0;
    flush(d);
}

static void pong_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_derp *d = arg;
    d->pong_timer = NULL;
    fail(d, "no Pong from %s within %d s: reconnecting", d->addr_text, HWC_DERP_PONG_TIMEOUT_MS / 1000);
}

static void handle_frame(struct hwc_derp *d, const struct hw_derp_frame *f)
{
    const char *why = NULL;
    switch (d->stage) {
    case ST_SERVER_KEY:
        if (f->type != HW_DERP_SERVER_KEY) {
            fail(d, "%s: the first frame is %s, not ServerKey: not a DERP server?", d->addr_text,
                 hw_derp_frame_name(f->type));
            return;
        }
        if (hw_derp_parse_server_key(f->payload, f->len, d->server_pub) < 0) {
            fail(d, "%s: malformed ServerKey frame", d->addr_text);
            return;
        }
        send_client_info(d);
        return;
    case ST_SERVER_INFO:
        if (f->type != HW_DERP_SERVER_INFO) {
            /* derper sends nothing else before ServerInfo; skip what we do not know */
            if (f->type == HW_DERP_HEALTH || f->type == HW_DERP_KEEP_ALIVE)
                return;
            fail(d, "%s: %s before ServerInfo", d->addr_text, hw_derp_frame_name(f->type));
            return;
        }
        {
            struct hw_derp_server_info si;
            if (hw_derp_open_server_info(d->priv, d->server_pub, f->payload, f->len, &si, &why) < 0) {
                fail(d, "%s: ServerInfo: %s", d->addr_text, why);
                return;
            }
            if (si.token_bucket_bytes_per_second > 0) {
                d->bucket_rate = (double)si.token_bucket_bytes_per_second;
                d->bucket_burst = (double)(si.token_bucket_bytes_burst > 0 ? si.token_bucket_bytes_burst
                                                                           : si.token_bucket_bytes_per_second);
                d->bucket_tokens = d->bucket_burst;
                d->bucket_at_us = mono_us();
            }
        }
        d->stage = ST_UP;
        d->up_since = hw_now();
        cancel(d, &d->deadline);
        flush_pending(d);
        if (d->stage == ST_UP)
            d->cb.on_up(d, d->arg);
        return;
    case ST_UP:
        break;
    default:
        return;
    }
    switch (f->type) {
    case HW_DERP_RECV_PACKET: {
        const uint8_t *src, *data;
        uint32_t n;
        if (hw_derp_parse_recv_packet(f->payload, f->len, &src, &data, &n) < 0) {
            fail(d, "%s: malformed RecvPacket frame", d->addr_text);
            return;
        }
        d->rx_packets++;
        d->rx_bytes += n;
        d->cb.on_packet(d, src, data, n, d->arg);
        return;
    }
    case HW_DERP_PEER_GONE: {
        const uint8_t *key;
        uint8_t reason;
        if (hw_derp_parse_peer_gone(f->payload, f->len, &key, &reason) < 0) {
            fail(d, "%s: malformed PeerGone frame", d->addr_text);
            return;
        }
        d->cb.on_peer_gone(d, key, reason, d->arg);
        return;
    }
    case HW_DERP_PING: {
        if (f->len < HW_DERP_PING_LEN) {
            fail(d, "%s: short Ping frame", d->addr_text);
            return;
        }
        uint8_t pong[HW_DERP_HDR_LEN + HW_DERP_PING_LEN];
        send_frame(d, pong, hw_derp_build_pong(pong, sizeof pong, f->payload));
        return;
    }
    case HW_DERP_PONG:
        if (d->ping_pending && f->len >= HW_DERP_PING_LEN && memcmp(f->payload, d->ping_data, 8) == 0) {
            d->ping_pending = false;
            d->last_rtt_ms = (double)(mono_us() - d->ping_sent_us) / 1000.0;
            cancel(d, &d->pong_timer);
        }
        return;
    case HW_DERP_HEALTH: {
        char text[sizeof d->health];
        hwc_http_excerpt(f->payload, f->len, text, sizeof text);
        if (strcmp(text, d->health) != 0) {
            if (text[0])
                log_warn("derp-%d: the relay reports a problem: %s", d->region_id, text);
            else
                log_info("derp-%d: the relay reports healthy again", d->region_id);
            snprintf(d->health, sizeof d->health, "%s", text);
        }
        return;
    }
    case HW_DERP_RESTARTING: {
        uint32_t reconnect_ms, try_for_ms;
        if (hw_derp_parse_restarting(f->payload, f->len, &reconnect_ms, &try_for_ms) == 0) {
            /* A hint only: bound it so a bogus value cannot park us for long. */
            d->restart_hint_ms = reconnect_ms > 30000 ? 30000 : reconnect_ms;
            log_info("derp-%d: the relay is restarting; reconnecting in %u ms", d->region_id,
                     d->restart_hint_ms);
        }
        return;
    }
    case HW_DERP_KEEP_ALIVE:
    default:
        d->rx_skipped += f->type != HW_DERP_KEEP_ALIVE;
        return;
    }
}

static void feed_frames(struct hwc_derp *d, const uint8_t *data, size_t len)
{
    d->last_rx_ms = hw_loop_now_ms(d->loop);
    while (d->stage != ST_DONE) {
        struct hw_derp_frame f;
        int rc = hw_derp_reader_next(&d->reader, &data, &len, &f);
        if (rc == HW_DERP_READ_MORE)
            return;
        if (rc == HW_DERP_READ_ERROR) {
            fail(d, "%s: %s", d->addr_text, d->reader.error);
            return;
        }
        handle_frame(d, &f);
    }
}

/* ---- connecting ---- */

static void node_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_derp *d = arg;
    d->node_timer = NULL;
    snprintf(d->last_dial_error, sizeof d->last_dial_error, "%s: no TCP answer within %.1f s", d->addr_text,
             HWC_DERP_NODE_DIAL_MS / 1000.0);
    close_socket(d);
    d->addr_idx++;
    try_address(d);
}

static void deadline_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_derp *d = arg;
    d->deadline = NULL;
    static const char *what[] = {"resolving", "connecting", "in the TLS handshake", "waiting for the HTTP answer",
                                 "waiting for ServerKey", "waiting for ServerInfo"};
    int limit = d->mode == HWC_DERP_LATENCY ? HWC_DERP_LATENCY_TIMEOUT_MS : HWC_DERP_CONNECT_TIMEOUT_MS;
    fail(d, "%s: not connected within %d s (stuck %s)", d->addr_text[0] ? d->addr_text : d->region_code,
         limit / 1000, d->stage < ST_UP ? what[d->stage] : "");
}

static void format_addr(const struct sockaddr *sa, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        port = ntohs(s4->sin_port);
        snprintf(out, len, "%s:%d", ip, port);
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        port = ntohs(s6->sin6_port);
        snprintf(out, len, "[%s]:%d", ip, port);
    }
}

static void write_request(struct hwc_derp *d)
{
    const struct node *n = &d->nodes[d->node_idx];
    char *req;
    if (d->mode == HWC_DERP_LATENCY) {
        req = hw_sprintf("GET /derp/latency-check HTTP/1.1\r\nHost: %s\r\nUser-Agent: hwclient/%s\r\n"
                         "Connection: close\r\n\r\n", n->host, HW_VERSION);
    } else {
        char ideal[100] = "";
        if (d->node_idx != 0 && d->ideal_node[0])
            snprintf(ideal, sizeof ideal, "Ideal-Node: %s\r\n", d->ideal_node);
        req = hw_sprintf("GET /derp HTTP/1.1\r\nHost: %s\r\nUser-Agent: hwclient/%s\r\nUpgrade: DERP\r\n"
                         "Connection: Upgrade\r\n%s\r\n", n->host, HW_VERSION, ideal);
    }
    d->stage = ST_HTTP;
    d->t0_us = mono_us();
    send_frame(d, (const uint8_t *)req, strlen(req));
    free(req);
}

static void tls_step(struct hwc_derp *d)
{
    const struct node *n = &d->nodes[d->node_idx];
    int rc = SSL_connect(d->ssl);
    if (rc == 1) {
        char err[300];
        if (hwc_tls_check(d->ssl, n->host, n->cert_name, n->insecure, err, sizeof err) < 0) {
            fail(d, "%s (node %s): %s", d->addr_text, n->name, err);
            return;
        }
        write_request(d);
        return;
    }
    int e = SSL_get_error(d->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        set_interest(d, HW_EV_READ);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        set_interest(d, HW_EV_WRITE);
        return;
    }
    char err[300];
    hwc_tls_handshake_error(d->ssl, rc, err, sizeof err);
    fail(d, "%s (node %s): %s", d->addr_text, n->name, err);
}

static void connected(struct hwc_derp *d)
{
    cancel(d, &d->node_timer);
    const struct node *n = &d->nodes[d->node_idx];
    if (d->plain_http) {
        write_request(d);
        return;
    }
    char err[300];
    d->ssl = hwc_tls_new(d->fd, n->host, n->cert_name, n->insecure, err, sizeof err);
    if (!d->ssl) {
        fail(d, "%s", err);
        return;
    }
    d->stage = ST_TLS;
    tls_step(d);
}

static void try_address(struct hwc_derp *d)
{
    while (d->addr_idx < d->n_addrs) {
        const struct sockaddr *sa = (const struct sockaddr *)&d->addrs[d->addr_idx];
        format_addr(sa, d->addr_text, sizeof d->addr_text);
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(d->last_dial_error, sizeof d->last_dial_error, "%s: %s", d->addr_text, strerror(errno));
            d->addr_idx++;
            continue;
        }
        hwc_bypass_mark(fd);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, sa, d->addr_lens[d->addr_idx]) < 0 && errno != EINPROGRESS) {
            snprintf(d->last_dial_error, sizeof d->last_dial_error, "%s: %s", d->addr_text, strerror(errno));
            close(fd);
            d->addr_idx++;
            continue;
        }
        d->fd = fd;
        d->stage = ST_CONNECT;
        cancel(d, &d->node_timer);
        d->node_timer = hw_timer_start(d->loop, HWC_DERP_NODE_DIAL_MS, node_timeout, d);
        set_interest(d, HW_EV_WRITE);
        return;
    }
    /* This node cannot be reached: the next one in the region's order. */
    d->node_idx++;
    start_node(d);
}

static bool add_addr(struct hwc_derp *d, const struct sockaddr *sa, socklen_t len, int port)
{
    if (d->n_addrs == MAX_ADDRS || len > sizeof d->addrs[0])
        return false;
    for (size_t i = 0; i < d->n_addrs; i++)
        if (d->addr_lens[i] == len && memcmp(&d->addrs[i], sa, len) == 0)
            return false;
    memcpy(&d->addrs[d->n_addrs], sa, len);
    if (sa->sa_family == AF_INET)
        ((struct sockaddr_in *)&d->addrs[d->n_addrs])->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)&d->addrs[d->n_addrs])->sin6_port = htons((uint16_t)port);
    d->addr_lens[d->n_addrs++] = len;
    return true;
}

static int node_port(const struct hwc_derp *d, const struct node *n)
{
    if (n->port > 0)
        return n->port;
    return d->plain_http ? HWC_DERP_HTTP_PORT : 443;
}

/* Upstream's shouldDialProto: an empty IPv4/IPv6 field means "resolve HostName for
 * this family", a literal of the family means "dial it", anything else ("none") skips. */
static int literal_family(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, s, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        *len = sizeof *s4;
        return AF_INET;
    }
    if (inet_pton(AF_INET6, s, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        *len = sizeof *s6;
        return AF_INET6;
    }
    return 0;
}

static void add_literals(struct hwc_derp *d, const struct node *n)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (n->ipv4[0] && literal_family(n->ipv4, &ss, &len) == AF_INET)
        add_addr(d, (struct sockaddr *)&ss, len, node_port(d, n));
    if (n->ipv6[0] && literal_family(n->ipv6, &ss, &len) == AF_INET6)
        add_addr(d, (struct sockaddr *)&ss, len, node_port(d, n));
}

static void resolved(struct addrinfo *res, int gai_err, void *arg)
{
    struct hwc_derp *d = arg;
    d->resolver = NULL;
    const struct node *n = &d->nodes[d->node_idx];
    /* DNS answers count only for a family whose field the map left empty; IPv4 first. */
    for (int pass = 0; pass < 2; pass++) {
        int fam = pass == 0 ? AF_INET : AF_INET6;
        const char *field = fam == AF_INET ? n->ipv4 : n->ipv6;
        if (field[0]) {
            struct sockaddr_storage ss;
            socklen_t len;
            if (literal_family(field, &ss, &len) == fam)
                add_addr(d, (struct sockaddr *)&ss, len, node_port(d, n));
            continue;
        }
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
            if (ai->ai_family == fam)
                add_addr(d, ai->ai_addr, ai->ai_addrlen, node_port(d, n));
    }
    if (res)
        freeaddrinfo(res);
    if (d->n_addrs == 0)
        snprintf(d->last_dial_error, sizeof d->last_dial_error, "cannot resolve %s: %s", n->host,
                 gai_err ? gai_strerror(gai_err) : "no usable address");
    try_address(d);
}

static void start_node(struct hwc_derp *d)
{
    close_socket(d);
    d->n_addrs = d->addr_idx = 0;
    if (d->node_idx >= d->n_nodes) {
        fail(d, "no node of region %s accepted a connection (last: %s): is the relay running, and do the "
                "DERP map's addresses and DERPPort point at it?", d->region_code,
             d->last_dial_error[0] ? d->last_dial_error : "no node to dial");
        return;
    }
    const struct node *n = &d->nodes[d->node_idx];
    d->stage = ST_RESOLVE;
    bool need_dns = !n->ipv4[0] || !n->ipv6[0];
    if (!need_dns) {
        add_literals(d, n);
        if (d->n_addrs == 0)
            snprintf(d->last_dial_error, sizeof d->last_dial_error,
                     "node %s: both IPv4 and IPv6 are explicitly disabled", n->name);
        try_address(d);
        return;
    }
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)node_port(d, n) & 0xffffu);
    int gai_err = 0;
    d->resolver = hwc_resolve_start(d->loop, n->host, port, AF_UNSPEC, SOCK_STREAM, resolved, d, &gai_err);
    if (!d->resolver) {
        snprintf(d->last_dial_error, sizeof d->last_dial_error, "cannot resolve %s: %s", n->host,
                 gai_strerror(gai_err));
        d->node_idx++;
        start_node(d);
    }
}

/* ---- events ---- */

static void http_readable(struct hwc_derp *d)
{
    if (!d->hbuf)
        d->hbuf = hw_malloc(HWC_HTTP_HEAD_MAX + READ_CHUNK);
    ssize_t n = read_some(d, d->hbuf + d->hlen, HWC_HTTP_HEAD_MAX + READ_CHUNK - d->hlen);
    if (n == 0)
        return;
    if (n < 0) {
        fail(d, "%s: the server closed the connection without answering %s", d->addr_text,
             d->mode == HWC_DERP_LATENCY ? "/derp/latency-check" : "the DERP upgrade");
        return;
    }
    d->hlen += (size_t)n;
    if (!d->resp)
        d->resp = hw_malloc(sizeof *d->resp);
    char err[160];
    int h = hwc_http_parse_head(d->hbuf, d->hlen, d->resp, err, sizeof err);
    if (h < 0) {
        fail(d, "%s: %s", d->addr_text, err);
        return;
    }
    if (h == 0)
        return;
    int64_t took = mono_us() - d->t0_us;
    int status = d->resp->status;
    if (d->mode == HWC_DERP_LATENCY) {
        if (status > 299) {
            fail(d, "%s: /derp/latency-check answered HTTP %d", d->addr_text, status);
            return;
        }
        d->latency_us = took;
        finish(d);
        return;
    }
    if (status != 101) {
        char excerpt[160];
        hwc_http_excerpt(d->hbuf + d->resp->head_len, d->hlen - d->resp->head_len, excerpt, sizeof excerpt);
        fail(d, "%s: the relay refused the DERP upgrade: HTTP %d%s%s", d->addr_text, status,
             excerpt[0] ? ": " : "", excerpt);
        return;
    }
    d->stage = ST_SERVER_KEY;
    size_t rest = d->hlen - d->resp->head_len;
    uint8_t *buf = d->hbuf;
    d->hbuf = NULL;
    free(d->resp);
    d->resp = NULL;
    feed_frames(d, buf + (d->hlen - rest), rest);
    free(buf);
}

static void stream_readable(struct hwc_derp *d)
{
    uint8_t buf[READ_CHUNK];
    for (int round = 0; d->stage != ST_DONE; round++) {
        if (round >= READ_ROUNDS && !(d->ssl && SSL_pending(d->ssl) > 0))
            return;
        ssize_t n = read_some(d, buf, sizeof buf);
        if (n == 0)
            return;
        /* A relay refusing admission closes right after ClientInfo; with our
         * NotePreferred still unread on its side that close arrives as a reset. */
        bool reset = n == -1 && errno == ECONNRESET;
        if (n == -2 || (reset && d->stage == ST_SERVER_INFO)) {
            if (d->stage == ST_SERVER_INFO)
                fail(d, "%s: the relay closed the connection before ServerInfo: it did not admit this node "
                        "(a relay checking clients with the control server refuses nodes that are not "
                        "registered or whose key expired)", d->addr_text);
            else
                fail(d, "%s: the relay closed the connection", d->addr_text);
            return;
        }
        if (n < 0) {
            fail(d, "%s: connection lost: %s", d->addr_text, d->ssl ? "TLS read error" : strerror(errno));
            return;
        }
        feed_frames(d, buf, (size_t)n);
        if ((size_t)n < sizeof buf && !(d->ssl && SSL_pending(d->ssl) > 0))
            return;
    }
}

static void derp_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_derp *d = arg;
    switch (d->stage) {
    case ST_CONNECT: {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            snprintf(d->last_dial_error, sizeof d->last_dial_error, "%s: %s", d->addr_text, strerror(soerr));
            cancel(d, &d->node_timer);
            close_socket(d);
            d->addr_idx++;
            try_address(d);
            return;
        }
        if (!(events & HW_EV_WRITE))
            return;
        connected(d);
        return;
    }
    case ST_TLS:
        tls_step(d);
        return;
    case ST_HTTP:
        if (events & HW_EV_WRITE)
            flush(d);
        if (d->stage == ST_HTTP && (events & (HW_EV_READ | HW_EV_ERROR)))
            http_readable(d);
        /* TLS may hold the frames that came behind the 101 in its buffer, where epoll
         * does not see them. */
        if ((d->stage == ST_SERVER_KEY || d->stage == ST_SERVER_INFO) && d->ssl && SSL_pending(d->ssl) > 0)
            stream_readable(d);
        return;
    case ST_SERVER_KEY:
    case ST_SERVER_INFO:
    case ST_UP:
        if (events & HW_EV_WRITE)
            flush(d);
        if (d->stage != ST_DONE && (events & (HW_EV_READ | HW_EV_ERROR)))
            stream_readable(d);
        if (d->stage != ST_DONE && d->ssl_want_write)
            flush(d);
        return;
    default:
        return;
    }
}

static void watchdog_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_derp *d = arg;
    d->watchdog = NULL;
    if (d->stage == ST_UP && hw_loop_now_ms(loop) - d->last_rx_ms > HWC_DERP_READ_TIMEOUT_MS) {
        fail(d, "%s: no frame from the relay for %d s (its keep-alives come every minute): reconnecting",
             d->addr_text, HWC_DERP_READ_TIMEOUT_MS / 1000);
        return;
    }
    d->watchdog = hw_timer_start(loop, WATCHDOG_TICK_MS, watchdog_cb, d);
}

/* ---- public ---- */

static char *dup_or_empty(const char *s)
{
    return hw_strdup(s ? s : "");
}

struct hwc_derp *hwc_derp_start(struct hw_loop *loop, const struct tc_derp_region *region,
                                const struct hwc_derp_opts *o, const struct hwc_derp_callbacks *cb,
                                void *arg)
{
    struct hwc_derp *d = hw_calloc(1, sizeof *d);
    d->loop = loop;
    d->mode = o->mode;
    d->plain_http = o->plain_http;
    d->preferred = o->preferred;
    d->region_id = region->region_id;
    snprintf(d->region_code, sizeof d->region_code, "%s",
             region->region_code && *region->region_code ? region->region_code : "?");
    d->cb = *cb;
    d->arg = arg;
    d->fd = -1;
    if (o->node_priv) {
        memcpy(d->priv, o->node_priv, 32);
        hw_key_public(d->priv, d->pub);
    }
    hw_derp_reader_init(&d->reader, HW_DERP_SIDE_CLIENT);
    d->nodes = hw_calloc(region->n_nodes ? region->n_nodes : 1, sizeof *d->nodes);
    for (size_t i = 0; i < region->n_nodes; i++) {
        const struct tc_derp_node *src = &region->nodes[i];
        if (i == 0)
            snprintf(d->ideal_node, sizeof d->ideal_node, "%s", src->name ? src->name : "");
        if (src->stun_only)
            continue;
        struct node *n = &d->nodes[d->n_nodes++];
        n->name = dup_or_empty(src->name);
        n->host = dup_or_empty(src->host_name);
        n->ipv4 = dup_or_empty(src->ipv4);
        n->ipv6 = dup_or_empty(src->ipv6);
        n->cert_name = dup_or_empty(src->cert_name);
        n->port = src->derp_port;
        n->insecure = src->insecure_for_tests;
    }
    d->deadline = hw_timer_start(loop, d->mode == HWC_DERP_LATENCY ? HWC_DERP_LATENCY_TIMEOUT_MS
                                                                   : HWC_DERP_CONNECT_TIMEOUT_MS,
                                 deadline_cb, d);
    if (d->mode == HWC_DERP_RELAY)
        d->watchdog = hw_timer_start(loop, WATCHDOG_TICK_MS, watchdog_cb, d);
    if (d->n_nodes == 0)
        fail(d, "region %s has no DERP node to connect to (only STUN-only nodes)", d->region_code);
    else
        start_node(d);
    return d;
}

void hwc_derp_free(struct hwc_derp *d)
{
    if (!d)
        return;
    hwc_resolve_cancel(d->resolver);
    cancel(d, &d->deadline);
    cancel(d, &d->node_timer);
    cancel(d, &d->watchdog);
    cancel(d, &d->pong_timer);
    cancel(d, &d->notify);
    close_socket(d);
    for (size_t i = 0; i < d->n_nodes; i++) {
        free(d->nodes[i].name);
        free(d->nodes[i].host);
        free(d->nodes[i].ipv4);
        free(d->nodes[i].ipv6);
        free(d->nodes[i].cert_name);
    }
    free(d->nodes);
    for (size_t i = 0; i < d->n_pend; i++)
        free(d->pend[i].frame);
    hw_derp_reader_free(&d->reader);
    free(d->hbuf);
    free(d->resp);
    free(d->out);
    sodium_memzero(d->priv, sizeof d->priv);
    free(d);
}

bool hwc_derp_is_up(const struct hwc_derp *d) { return d->stage == ST_UP; }
int hwc_derp_region(const struct hwc_derp *d) { return d->region_id; }
int64_t hwc_derp_last_rx_ms(const struct hwc_derp *d) { return d->last_rx_ms; }
int64_t hwc_derp_latency_us(const struct hwc_derp *d) { return d->latency_us; }
uint32_t hwc_derp_restart_hint_ms(const struct hwc_derp *d) { return d->restart_hint_ms; }

static bool bucket_allows(struct hwc_derp *d, size_t frame_len)
{
    if (d->bucket_rate <= 0)
        return true;
    int64_t now = mono_us();
    d->bucket_tokens += (double)(now - d->bucket_at_us) / 1e6 * d->bucket_rate;
    d->bucket_at_us = now;
    if (d->bucket_tokens > d->bucket_burst)
        d->bucket_tokens = d->bucket_burst;
    if (d->bucket_tokens < (double)frame_len)
        return false;
    d->bucket_tokens -= (double)frame_len;
    return true;
}

int hwc_derp_send(struct hwc_derp *d, const uint8_t dst[32], const uint8_t *data, size_t len)
{
    if (d->mode != HWC_DERP_RELAY || d->stage == ST_DONE || len > HW_DERP_MAX_PACKET) {
        d->tx_drops++;
        return -1;
    }
    size_t flen = HW_DERP_HDR_LEN + 32 + len;
    if (d->stage != ST_UP) {
        if (d->n_pend == HWC_DERP_PENDING_MAX) {
            free(d->pend[0].frame);
            memmove(&d->pend[0], &d->pend[1], (HWC_DERP_PENDING_MAX - 1) * sizeof d->pend[0]);
            d->n_pend--;
            d->tx_drops++;
        }
        uint8_t *frame = hw_malloc(flen);
        hw_derp_build_send_packet(frame, flen, dst, data, len);
        d->pend[d->n_pend++] = (struct pending){frame, flen};
        d->tx_packets++;
        d->tx_bytes += len;
        return 0;
    }
    if (d->out_len - d->out_off + flen > HWC_DERP_OUT_MAX || !bucket_allows(d, flen)) {
        d->tx_drops++;
        return -1;
    }
    out_reserve(d, flen);
    d->out_len += hw_derp_build_send_packet(d->out + d->out_len, flen, dst, data, len);
    d->tx_packets++;
    d->tx_bytes += len;
    flush(d);
    return 0;
}

void hwc_derp_note_preferred(struct hwc_derp *d, bool preferred)
{
    if (d->preferred == preferred)
        return;
    d->preferred = preferred;
    /* Before ClientInfo went out the flag rides along with it. */
    if (d->stage == ST_SERVER_INFO || d->stage == ST_UP) {
        uint8_t np[HW_DERP_HDR_LEN + 1];
        send_frame(d, np, hw_derp_build_note_preferred(np, sizeof np, preferred));
    }
}

void hwc_derp_ping(struct hwc_derp *d)
{
    if (d->stage != ST_UP || d->ping_pending)
        return;
    randombytes_buf(d->ping_data, sizeof d->ping_data);
    d->ping_pending = true;
    d->ping_sent_us = mono_us();
    uint8_t f[HW_DERP_HDR_LEN + HW_DERP_PING_LEN];
    send_frame(d, f, hw_derp_build_ping(f, sizeof f, d->ping_data));
    if (d->stage == ST_UP)
        d->pong_timer = hw_timer_start(d->loop, HWC_DERP_PONG_TIMEOUT_MS, pong_timeout, d);
}

json_t *hwc_derp_status(const struct hwc_derp *d)
{
    static const char *names[] = {"resolving", "connecting", "tls", "http", "server-key", "server-info", "up",
                                  "closed"};
    json_t *o = json_object();
    json_object_set_new(o, "RegionID", json_integer(d->region_id));
    json_object_set_new(o, "State", json_string(names[d->stage]));
    if (d->node_idx < d->n_nodes)
        json_object_set_new(o, "Node", json_string(d->nodes[d->node_idx].name));
    json_object_set_new(o, "Addr", json_string(d->addr_text));
    json_object_set_new(o, "TLS", json_boolean(!d->plain_http));
    json_object_set_new(o, "Preferred", json_boolean(d->preferred));
    if (d->stage == ST_UP) {
        char key[HW_KEY_TEXT_MAX];
        json_object_set_new(o, "ServerKey", json_string(hw_key_format(HW_KEY_NODE, d->server_pub, key)));
        char since[32];
        hw_format_time(d->up_since, since, sizeof since);
        json_object_set_new(o, "ConnectedSince", json_string(since));
    }
    json_object_set_new(o, "TxPackets", json_integer((json_int_t)d->tx_packets));
    json_object_set_new(o, "TxBytes", json_integer((json_int_t)d->tx_bytes));
    json_object_set_new(o, "TxDrops", json_integer((json_int_t)d->tx_drops));
    json_object_set_new(o, "RxPackets", json_integer((json_int_t)d->rx_packets));
    json_object_set_new(o, "RxBytes", json_integer((json_int_t)d->rx_bytes));
    if (d->last_rtt_ms > 0)
        json_object_set_new(o, "PingRTTms", json_real(d->last_rtt_ms));
    if (d->health[0])
        json_object_set_new(o, "Health", json_string(d->health));
    if (d->error[0])
        json_object_set_new(o, "Error", json_string(d->error));
    return o;
}
