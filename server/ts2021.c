#include "server/ts2021.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <microhttpd.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/h2conn.h"
#include "proto/keys.h"
#include "proto/noise.h"
#include "proto/websocket.h"
#include "server/control.h"

#define UPGRADE_TOKEN "tailscale-control-protocol"
/* Headscale's limit on a request body inside Noise; register and map bodies are a few KiB. */
#define MAX_REQUEST_BODY (1u << 20)
/* Stop asking HTTP/2 for more output while this much ciphertext waits for the socket. */
#define OUTPUT_HIGH_WATER (512u * 1024)
#define READ_CHUNK 16384

struct hw_ts2021 {
    struct hw_loop *loop;
    struct hw_control *control;
    uint8_t server_private[32];
    /* Upgraded sockets on their way from libmicrohttpd's thread to the loop. A list
     * rather than one post each: at shutdown the loop no longer runs posts, and every
     * socket still on its way must be handed back (or libmicrohttpd waits for it). */
    pthread_mutex_t lock;
    bool stopping;
    bool drain_posted;
    struct upgrade_handoff *pending, *pending_tail;
    struct ts_session *sessions;
    struct ts_session *dirty;       /* sessions to flush at the end of this loop turn */
    bool flush_scheduled;
    /* Plaintext gathered into one record before sealing, so many small HTTP/2 frames do
     * not each cost a record header and tag. One buffer for all sessions (a session's
     * output is sealed at the end of each flush, so it is almost always empty), not 4 KiB
     * kept by each of 10,000 idle sessions; staged_for says whose bytes it holds. */
    uint8_t staged[HW_NOISE_MAX_PLAINTEXT];
    size_t staged_len;
    struct ts_session *staged_for;
};

struct ts_session {
    struct hw_ts2021 *ts;
    int fd;
    struct MHD_UpgradeResponseHandle *urh;
    struct hw_noise_session noise;
    struct hw_noise_reader reader;
    struct hw_h2 *h2;
    char machine_key[HW_KEY_TEXT_MAX];
    /* Browser clients carry the same byte stream in WebSocket binary messages. */
    bool websocket;
    struct hw_ws_reader ws;
    bool seal_failed;               /* its staged bytes could not be sealed: close it */
    uint8_t *out;                   /* sealed bytes not yet accepted by the socket */
    size_t out_len, out_off, out_cap;
    bool want_write;
    bool closing;
    bool is_dirty;
    struct ts_session *dirty_next;
    struct ts_session *prev, *next;
};

/* Handed from the libmicrohttpd thread to the loop. */
struct upgrade_handoff {
    struct hw_ts2021 *ts;
    struct hw_noise_session noise;
    uint8_t response[HW_NOISE_RESPONSE_LEN];
    char *refusal;                  /* when set: send it as a 0x03 message, then close */
    bool handshake_failed;          /* close right after the 101 */
    bool websocket;
    int fd;
    struct MHD_UpgradeResponseHandle *urh;
    uint8_t *extra;
    size_t extra_len;
    struct upgrade_handoff *next;
};

static void session_close(struct ts_session *s, const char *why);
static void session_flush(struct ts_session *s);

const char *ts_session_machine_key(struct ts_session *s) { return s->machine_key; }

struct ts_session *ts_session_of_stream(struct hw_h2_stream *st)
{
    return st ? hw_h2_conn_arg(hw_h2_stream_conn(st)) : NULL;
}

/* ---- output: HTTP/2 plaintext -> records -> socket ---- */

static int out_reserve(struct ts_session *s, size_t more)
{
    if (s->out_off > 0 && s->out_off == s->out_len)
        s->out_off = s->out_len = 0;
    if (s->out_len + more <= s->out_cap)
        return 0;
    if (s->out_off > 0) {
        memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
        s->out_len -= s->out_off;
        s->out_off = 0;
        if (s->out_len + more <= s->out_cap)
            return 0;
    }
    size_t cap = s->out_cap ? s->out_cap : 8192;
    while (cap < s->out_len + more)
        cap *= 2;
    uint8_t *grown = realloc(s->out, cap);
    if (!grown)
        return -1;
    s->out = grown;
    s->out_cap = cap;
    return 0;
}

/* In WebSocket mode every chunk of the stream travels as one binary message. */
static int out_frame_header(struct ts_session *s, enum hw_ws_opcode op, size_t len)
{
    if (!s->websocket)
        return 0;
    uint8_t hdr[10];
    size_t n = hw_ws_frame_header(op, len, hdr);
    if (out_reserve(s, n) < 0)
        return -1;
    memcpy(s->out + s->out_len, hdr, n);
    s->out_len += n;
    return 0;
}

/* Room for a WebSocket frame header (at most 10 bytes) and len bytes, reserved before
 * anything is written: a failure then leaves no header without its payload behind. */
static int out_reserve_framed(struct ts_session *s, size_t len)
{
    return out_reserve(s, len + (s->websocket ? 10 : 0));
}

static int out_append_raw(struct ts_session *s, const uint8_t *data, size_t len)
{
    if (out_reserve_framed(s, len) < 0 || out_frame_header(s, HW_WS_BINARY, len) < 0)
        return -1;
    memcpy(s->out + s->out_len, data, len);
    s->out_len += len;
    return 0;
}

static int seal_staged(struct ts_session *s)
{
    struct hw_ts2021 *ts = s->ts;
    if (ts->staged_for != s)
        return 0;
    size_t len = ts->staged_len;
    ts->staged_for = NULL;
    ts->staged_len = 0;
    if (out_reserve_framed(s, len + HW_NOISE_RECORD_OVERHEAD) < 0)
        return -1;
    size_t before = s->out_len;
    if (out_frame_header(s, HW_WS_BINARY, len + HW_NOISE_RECORD_OVERHEAD) < 0 ||
        hw_noise_seal_record(&s->noise.s2c, ts->staged, len, s->out + s->out_len) < 0) {
        s->out_len = before;
        return -1;
    }
    s->out_len += len + HW_NOISE_RECORD_OVERHEAD;
    return 0;
}

static void mark_dirty(struct ts_session *s);

static int stage_plaintext(struct ts_session *s, const uint8_t *data, size_t len)
{
    struct hw_ts2021 *ts = s->ts;
    struct ts_session *other = ts->staged_for;
    /* Another session's bytes are still staged: they become its record now, sealed
     * with its key into its output, never mixed with these. */
    if (other && other != s) {
        if (seal_staged(other) < 0)
            other->seal_failed = true;
        mark_dirty(other);
    }
    while (len > 0) {
        ts->staged_for = s;
        size_t room = sizeof ts->staged - ts->staged_len;
        size_t take = len < room ? len : room;
        memcpy(ts->staged + ts->staged_len, data, take);
        ts->staged_len += take;
        data += take;
        len -= take;
        if (ts->staged_len == sizeof ts->staged && seal_staged(s) < 0)
            return -1;
    }
    return 0;
}

static int h2_write(struct hw_h2 *h2, const uint8_t *data, size_t len, void *arg)
{
    return stage_plaintext(arg, data, len);
}

static bool h2_write_blocked(struct hw_h2 *h2, void *arg)
{
    struct ts_session *s = arg;
    return s->out_len - s->out_off > OUTPUT_HIGH_WATER;
}

static void set_interest(struct ts_session *s, bool want_write)
{
    if (want_write == s->want_write)
        return;
    s->want_write = want_write;
    hw_loop_modify(s->ts->loop, s->fd, HW_EV_READ | (want_write ? HW_EV_WRITE : 0));
}

/* Writes what the socket takes now. Returns -1 when the connection is broken. */
static int write_out(struct ts_session *s)
{
    while (s->out_off < s->out_len) {
        ssize_t n = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            s->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_interest(s, true);
            return 0;
        }
        return -1;
    }
    s->out_off = s->out_len = 0;
    /* An idle session keeps no buffer: 10,000 of them holding the 8-64 KiB their last
     * burst needed was a tenth of the server's memory. */
    if (s->out) {
        free(s->out);
        s->out = NULL;
        s->out_cap = 0;
    }
    set_interest(s, false);
    return 0;
}

/* Pumps HTTP/2, seals, writes; closes the session on any failure or when both sides
 * are done. */
static void session_flush(struct ts_session *s)
{
    if (s->closing)
        return;
    if (s->seal_failed) {
        session_close(s, "sealing a record failed (cipher exhausted or out of memory)");
        return;
    }
    if (hw_h2_pump(s->h2) < 0) {
        session_close(s, hw_h2_last_error(s->h2));
        return;
    }
    if (seal_staged(s) < 0) {
        session_close(s, "sealing a record failed (cipher exhausted or out of memory)");
        return;
    }
    if (write_out(s) < 0) {
        session_close(s, strerror(errno));
        return;
    }
    if (hw_h2_finished(s->h2) && s->out_len == s->out_off)
        session_close(s, "HTTP/2 finished");
}

static void flush_dirty(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_ts2021 *ts = arg;
    ts->flush_scheduled = false;
    struct ts_session *list = ts->dirty;
    ts->dirty = NULL;
    while (list) {
        struct ts_session *s = list;
        list = s->dirty_next;
        s->is_dirty = false;
        s->dirty_next = NULL;
        if (s->closing)
            session_close(s, NULL);   /* deferred free: see session_close */
        else
            session_flush(s);
    }
}

static void mark_dirty(struct ts_session *s)
{
    if (s->is_dirty)
        return;
    s->is_dirty = true;
    s->dirty_next = s->ts->dirty;
    s->ts->dirty = s;
    if (!s->ts->flush_scheduled) {
        s->ts->flush_scheduled = true;
        hw_timer_start(s->ts->loop, 0, flush_dirty, s->ts);
    }
}

void ts_session_kick(struct ts_session *s)
{
    if (!s->closing)
        mark_dirty(s);
}

/* ---- input ---- */

static int on_plaintext(void *arg, const uint8_t *pt, size_t len)
{
    struct ts_session *s = arg;
    if (hw_h2_feed(s->h2, pt, len) < 0)
        return -2;
    return 0;
}

static int on_ws_data(void *arg, const uint8_t *p, size_t len)
{
    struct ts_session *s = arg;
    int rc = hw_noise_reader_feed(&s->reader, p, len, on_plaintext, s);
    return rc == -1 ? -3 : rc;
}

static void on_ws_ping(void *arg, const uint8_t *p, size_t len)
{
    struct ts_session *s = arg;
    if (out_frame_header(s, HW_WS_PONG, len) == 0 && out_reserve(s, len) == 0) {
        memcpy(s->out + s->out_len, p, len);
        s->out_len += len;
    }
}

static const struct hw_ws_events ws_events = {.data = on_ws_data, .ping = on_ws_ping};

static void on_socket(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct ts_session *s = arg;
    if (events & HW_EV_WRITE) {
        if (write_out(s) < 0) {
            session_close(s, strerror(errno));
            return;
        }
        if (!s->want_write)
            session_flush(s);   /* drained below the high-water mark: let HTTP/2 go on */
        if (s->closing)
            return;
    }
    if (!(events & HW_EV_READ))
        return;
    uint8_t buf[READ_CHUNK];
    /* A bounded number of reads per wake-up keeps one busy client from starving others. */
    for (int round = 0; round < 4; round++) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0) {
            session_close(s, "client closed the connection");
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            session_close(s, strerror(errno));
            return;
        }
        int rc = s->websocket ? hw_ws_reader_feed(&s->ws, buf, (size_t)n, &ws_events, s)
                              : hw_noise_reader_feed(&s->reader, buf, (size_t)n, on_plaintext, s);
        if (rc == -1 || rc == -3) {
            session_close(s, rc == -1 && s->websocket ? s->ws.error : s->reader.error);
            return;
        }
        if (s->websocket && s->ws.closed) {
            /* Answer the close (status 1000) and end the session. */
            static const uint8_t close_ok[] = {0x03, 0xe8};
            out_frame_header(s, HW_WS_CLOSE, sizeof close_ok);
            if (out_reserve(s, sizeof close_ok) == 0) {
                memcpy(s->out + s->out_len, close_ok, sizeof close_ok);
                s->out_len += sizeof close_ok;
            }
            write_out(s);
            session_close(s, "WebSocket closed by the client");
            return;
        }
        if (rc < 0) {
            if (!s->seal_failed) {   /* else its stream has a gap: send nothing more */
                hw_h2_pump(s->h2);   /* let a GOAWAY out if nghttp2 queued one */
                seal_staged(s);
                write_out(s);
            }
            session_close(s, hw_h2_last_error(s->h2));
            return;
        }
        if ((size_t)n < sizeof buf)
            break;
    }
    session_flush(s);
}

/* ---- HTTP/2 callbacks into the control layer ---- */

static void h2_on_request(struct hw_h2 *h2, struct hw_h2_stream *st, void *arg)
{
    struct ts_session *s = arg;
    hw_control_request(s->ts->control, s, st);
}

static void h2_on_close(struct hw_h2 *h2, struct hw_h2_stream *st, uint32_t code, void *arg)
{
    struct ts_session *s = arg;
    hw_control_stream_closed(s->ts->control, st);
}

static const struct hw_h2_callbacks session_h2_callbacks = {
    .on_request = h2_on_request,
    .on_close = h2_on_close,
    .write = h2_write,
    .write_blocked = h2_write_blocked,
};

/* ---- session lifetime ---- */

static void session_unlink(struct ts_session *s)
{
    struct hw_ts2021 *ts = s->ts;
    if (s->prev)
        s->prev->next = s->next;
    else if (ts->sessions == s)
        ts->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static void session_free(struct ts_session *s)
{
    hw_noise_reader_wipe(&s->reader);
    hw_noise_session_wipe(&s->noise);
    free(s->out);
    free(s);
}

/* Closing happens in two steps: the first call tears the connection down (streams
 * closed through the control layer, socket given back to libmicrohttpd); the memory
 * is freed at the end of the loop turn, because the caller's stack may still hold s. */
static void session_close(struct ts_session *s, const char *why)
{
    if (s->closing) {
        if (!why && !s->is_dirty)
            session_free(s);
        return;
    }
    s->closing = true;
    if (why)
        log_debug("ts2021 session %.13s…: closed: %s", s->machine_key, why);
    if (s->ts->staged_for == s) {
        s->ts->staged_for = NULL;
        s->ts->staged_len = 0;
    }
    hw_loop_remove(s->ts->loop, s->fd);
    session_unlink(s);
    hw_h2_free(s->h2);
    s->h2 = NULL;
    MHD_upgrade_action(s->urh, MHD_UPGRADE_ACTION_CLOSE);
    s->fd = -1;
    mark_dirty(s);
}

static void start_session(struct hw_loop *loop, void *arg)
{
    struct upgrade_handoff *h = arg;
    struct hw_ts2021 *ts = h->ts;
    int flags = fcntl(h->fd, F_GETFL);
    fcntl(h->fd, F_SETFL, flags | O_NONBLOCK);

    if (h->handshake_failed || h->refusal) {
        if (h->refusal) {
            uint8_t msg[512 + 10];
            size_t hdr = 0;
            size_t n = hw_noise_error_message(h->refusal, msg + 10, sizeof msg - 10);
            uint8_t frame[10];
            if (h->websocket) {
                hdr = hw_ws_frame_header(HW_WS_BINARY, n, frame);
                memcpy(msg + 10 - hdr, frame, hdr);
            }
            ssize_t sent = send(h->fd, msg + 10 - hdr, n + hdr, MSG_NOSIGNAL);
            (void)sent;
        }
        MHD_upgrade_action(h->urh, MHD_UPGRADE_ACTION_CLOSE);
        goto done;
    }

    struct ts_session *s = hw_calloc(1, sizeof *s);
    s->ts = ts;
    s->fd = h->fd;
    s->urh = h->urh;
    s->noise = h->noise;
    s->websocket = h->websocket;
    hw_ws_reader_init(&s->ws);
    hw_key_format(HW_KEY_MACHINE, s->noise.peer, s->machine_key);
    hw_noise_reader_init(&s->reader, &s->noise.c2s);
    s->h2 = hw_h2_new_server(&session_h2_callbacks, s, MAX_REQUEST_BODY);
    s->next = ts->sessions;
    if (ts->sessions)
        ts->sessions->prev = s;
    ts->sessions = s;

    /* The handshake response goes out in clear, then (as Tailscale's and Headscale's
     * servers do on the native path) the early payload with a fresh challenge key,
     * sealed like all later bytes. */
    out_append_raw(s, h->response, sizeof h->response);
    if (!s->websocket) {
        uint8_t challenge_priv[32], challenge_pub[32];
        hw_key_generate(challenge_priv);
        hw_key_public(challenge_priv, challenge_pub);
        sodium_memzero(challenge_priv, sizeof challenge_priv);
        size_t early_len;
        uint8_t *early = hw_noise_early_payload(challenge_pub, &early_len);
        stage_plaintext(s, early, early_len);
        free(early);
        seal_staged(s);
    }

    if (hw_loop_add(loop, s->fd, HW_EV_READ, on_socket, s) < 0) {
        session_close(s, "cannot watch the socket");
        goto done;
    }
    log_debug("ts2021 session from %s (protocol %u)", s->machine_key, s->noise.version);
    if (h->extra_len > 0 &&
        (s->websocket ? hw_ws_reader_feed(&s->ws, h->extra, h->extra_len, &ws_events, s)
                      : hw_noise_reader_feed(&s->reader, h->extra, h->extra_len, on_plaintext, s)) < 0) {
        session_close(s, "bad bytes right after the upgrade");
        goto done;
    }
    session_flush(s);
done:
    sodium_memzero(&h->noise, sizeof h->noise);
    free(h->refusal);
    free(h->extra);
    free(h);
}

static void handoff_discard(struct upgrade_handoff *h)
{
    MHD_upgrade_action(h->urh, MHD_UPGRADE_ACTION_CLOSE);
    sodium_memzero(&h->noise, sizeof h->noise);
    free(h->refusal);
    free(h->extra);
    free(h);
}

/* Takes every socket waiting for the loop: into a session, or back when stopping. */
static void drain_handoffs(struct hw_ts2021 *ts, bool start)
{
    pthread_mutex_lock(&ts->lock);
    struct upgrade_handoff *h = ts->pending;
    ts->pending = ts->pending_tail = NULL;
    ts->drain_posted = false;
    pthread_mutex_unlock(&ts->lock);
    while (h) {
        struct upgrade_handoff *next = h->next;
        if (start)
            start_session(ts->loop, h);
        else
            handoff_discard(h);
        h = next;
    }
}

static void on_drain(struct hw_loop *loop, void *arg)
{
    drain_handoffs(arg, true);
}

static void on_upgraded(void *cls, struct MHD_Connection *connection, void *con_cls,
                        const char *extra_in, size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh)
{
    struct upgrade_handoff *h = cls;
    struct hw_ts2021 *ts = h->ts;
    h->fd = sock;
    h->urh = urh;
    if (extra_in_size > 0) {
        h->extra = hw_malloc(extra_in_size);
        memcpy(h->extra, extra_in, extra_in_size);
        h->extra_len = extra_in_size;
    }
    pthread_mutex_lock(&ts->lock);
    bool stopping = ts->stopping, post = false;
    if (!stopping) {
        if (ts->pending_tail)
            ts->pending_tail->next = h;
        else
            ts->pending = h;
        ts->pending_tail = h;
        post = !ts->drain_posted;
        ts->drain_posted = true;
    }
    pthread_mutex_unlock(&ts->lock);
    if (stopping)
        handoff_discard(h);
    else if (post)
        hw_loop_post(ts->loop, on_drain, ts);
}

static enum MHD_Result answer_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

int hw_ts2021_handle(struct hw_ts2021 *ts, struct MHD_Connection *conn, const char *method)
{
    const char *upgrade = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Upgrade");
    if (!upgrade)
        return answer_text(conn, MHD_HTTP_BAD_REQUEST,
                           "missing Upgrade header: /ts2021 is Tailscale's control protocol "
                           "(a reverse proxy in front of headwater must pass Upgrade and Connection)\n");
    bool websocket = strcasecmp(upgrade, "websocket") == 0;
    const char *b64;
    char accept[HW_WS_ACCEPT_LEN];
    if (websocket) {
        /* Browser clients: RFC 6455, subprotocol tailscale-control-protocol, the
         * initiation in the query string (PROTOCOL.md §3.3). */
        const char *proto = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Protocol");
        if (!proto || !strstr(proto, UPGRADE_TOKEN))
            return answer_text(conn, MHD_HTTP_BAD_REQUEST,
                               "WebSocket subprotocol " UPGRADE_TOKEN " required\n");
        if (hw_ws_accept_key(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Key"),
                             accept) < 0)
            return answer_text(conn, MHD_HTTP_BAD_REQUEST, "missing or invalid Sec-WebSocket-Key\n");
        b64 = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "X-Tailscale-Handshake");
    } else {
        if (strcmp(upgrade, UPGRADE_TOKEN) != 0)
            return answer_text(conn, MHD_HTTP_BAD_REQUEST, "unknown Upgrade protocol\n");
        b64 = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Tailscale-Handshake");
    }
    uint8_t init[HW_NOISE_INITIATION_LEN + 64];
    size_t init_len = 0;
    if (!b64 || sodium_base642bin(init, sizeof init, b64, strlen(b64), NULL, &init_len, NULL,
                                  sodium_base64_VARIANT_ORIGINAL) != 0)
        return answer_text(conn, MHD_HTTP_BAD_REQUEST,
                           "missing or invalid X-Tailscale-Handshake\n");

    struct upgrade_handoff *h = hw_calloc(1, sizeof *h);
    h->ts = ts;
    h->fd = -1;
    h->websocket = websocket;
    struct hw_noise_handshake hs = {0};
    if (hw_noise_server_respond(&hs, ts->server_private, init, init_len, NULL, h->response,
                                &h->noise) != HW_NOISE_OK) {
        /* Like Tailscale's server: the upgrade happens, then either the refusal text
         * (malformed initiation) or silence (failed authentication). */
        if (hs.refuse)
            h->refusal = hw_strdup(hs.error);
        else
            h->handshake_failed = true;
        log_info("ts2021: handshake from a client failed: %s", hs.error);
    }
    hw_noise_handshake_wipe(&hs);

    /* The session lives on the loop from now on; its liveness is the map keep-alives,
     * not libmicrohttpd's idle timer. */
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    struct MHD_Response *r = MHD_create_response_for_upgrade(on_upgraded, h);
    if (!r) {
        sodium_memzero(&h->noise, sizeof h->noise);
        free(h->refusal);
        free(h);
        return MHD_NO;
    }
    if (websocket) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_UPGRADE, "websocket");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "Upgrade");
        MHD_add_response_header(r, "Sec-WebSocket-Accept", accept);
        MHD_add_response_header(r, "Sec-WebSocket-Protocol", UPGRADE_TOKEN);
    } else {
        MHD_add_response_header(r, MHD_HTTP_HEADER_UPGRADE, UPGRADE_TOKEN);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "upgrade");
    }
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_SWITCHING_PROTOCOLS, r);
    MHD_destroy_response(r);
    return ret;
}

struct hw_ts2021 *hw_ts2021_new(struct hw_loop *loop, struct hw_control *control,
                                const uint8_t server_private[32])
{
    struct hw_ts2021 *ts = hw_calloc(1, sizeof *ts);
    pthread_mutex_init(&ts->lock, NULL);
    ts->loop = loop;
    ts->control = control;
    memcpy(ts->server_private, server_private, 32);
    return ts;
}

void hw_ts2021_free(struct hw_ts2021 *ts)
{
    if (!ts)
        return;
    pthread_mutex_lock(&ts->lock);
    ts->stopping = true;
    pthread_mutex_unlock(&ts->lock);
    drain_handoffs(ts, false);
    while (ts->sessions)
        session_close(ts->sessions, "server shutting down");
    struct ts_session *list = ts->dirty;
    while (list) {
        struct ts_session *next = list->dirty_next;
        session_free(list);
        list = next;
    }
    sodium_memzero(ts->server_private, sizeof ts->server_private);
    pthread_mutex_destroy(&ts->lock);
    free(ts);
}
