#include "proto/h2conn.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

#define MAX_HEADERS 64
#define MAX_HEADER_BYTES 16384

struct queued {
    struct hw_sbuf *buf;
    size_t offset;
    struct queued *next;
};

struct header {
    char *name;
    char *value;
};

struct hw_h2_stream {
    struct hw_h2 *h2;
    int32_t id;
    struct header headers[MAX_HEADERS];
    size_t n_headers;
    size_t header_bytes;
    char *method, *path;
    uint8_t *body;
    size_t body_len, body_cap;
    bool body_too_large;
    bool headers_too_large;
    bool responded;
    bool ended;           /* no more data will be queued: EOF after the queue drains */
    bool deferred;        /* nghttp2 parked our data provider: resume on push */
    struct queued *q_head, *q_tail;
    size_t queued_bytes;
    void *user;
    struct hw_h2_stream *next, *prev;
};

struct hw_h2 {
    nghttp2_session *session;
    struct hw_h2_callbacks cb;
    void *arg;
    bool is_server;
    size_t max_request_body;
    struct hw_h2_stream *streams;
    char error[160];
};

static void set_error(struct hw_h2 *h2, const char *what, int rv)
{
    snprintf(h2->error, sizeof h2->error, "%s: %s", what, nghttp2_strerror(rv));
}

const char *hw_h2_last_error(struct hw_h2 *h2) { return h2->error; }
void *hw_h2_conn_arg(struct hw_h2 *h2) { return h2->arg; }

static struct hw_h2_stream *stream_new(struct hw_h2 *h2, int32_t id)
{
    struct hw_h2_stream *st = hw_calloc(1, sizeof *st);
    st->h2 = h2;
    st->id = id;
    st->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = st;
    h2->streams = st;
    return st;
}

static void stream_free(struct hw_h2_stream *st)
{
    struct hw_h2 *h2 = st->h2;
    if (st->prev)
        st->prev->next = st->next;
    else
        h2->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    for (size_t i = 0; i < st->n_headers; i++) {
        free(st->headers[i].name);
        free(st->headers[i].value);
    }
    for (struct queued *q = st->q_head, *next; q; q = next) {
        next = q->next;
        hw_sbuf_unref(q->buf);
        free(q);
    }
    free(st->body);
    free(st);
}

/* ---- nghttp2 callbacks ---- */

static ssize_t send_cb(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data)
{
    struct hw_h2 *h2 = user_data;
    if (h2->cb.write_blocked && h2->cb.write_blocked(h2, h2->arg))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (h2->cb.write(h2, data, length, h2->arg) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)length;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct hw_h2 *h2 = user_data;
    if (!h2->is_server || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct hw_h2_stream *st = stream_new(h2, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    struct hw_h2_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!st || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->header_bytes += namelen + valuelen;
    if (st->n_headers == MAX_HEADERS || st->header_bytes > MAX_HEADER_BYTES) {
        st->headers_too_large = true;
        return 0;
    }
    struct header *h = &st->headers[st->n_headers++];
    h->name = hw_malloc(namelen + 1);
    memcpy(h->name, name, namelen);
    h->name[namelen] = '\0';
    h->value = hw_malloc(valuelen + 1);
    memcpy(h->value, value, valuelen);
    h->value[valuelen] = '\0';
    if (strcmp(h->name, ":method") == 0)
        st->method = h->value;
    else if (strcmp(h->name, ":path") == 0)
        st->path = h->value;
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data)
{
    struct hw_h2 *h2 = user_data;
    struct hw_h2_stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!st)
        return 0;
    if (!h2->is_server) {
        if (h2->cb.on_data)
            h2->cb.on_data(h2, st, data, len, h2->arg);
        return 0;
    }
    if (st->body_too_large)
        return 0;
    if (st->body_len + len > h2->max_request_body) {
        st->body_too_large = true;
        free(st->body);
        st->body = NULL;
        st->body_len = st->body_cap = 0;
        return 0;
    }
    if (st->body_len + len + 1 > st->body_cap) {
        size_t cap = st->body_cap ? st->body_cap : 1024;
        while (cap < st->body_len + len + 1)
            cap *= 2;
        uint8_t *grown = realloc(st->body, cap);
        if (!grown)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        st->body = grown;
        st->body_cap = cap;
    }
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    st->body[st->body_len] = '\0';   /* bodies are JSON text: NUL-terminate for parsers */
    return 0;
}

static void dispatch_request(struct hw_h2 *h2, struct hw_h2_stream *st)
{
    if (st->headers_too_large) {
        hw_h2_respond(st, 431, "text/plain", "request headers too large\n", 26);
        return;
    }
    if (st->body_too_large) {
        char msg[96];
        int n = snprintf(msg, sizeof msg, "request body larger than %zu bytes\n", h2->max_request_body);
        hw_h2_respond(st, 413, "text/plain", msg, (size_t)n);
        return;
    }
    if (!st->method || !st->path) {
        hw_h2_reset(st, NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    h2->cb.on_request(h2, st, h2->arg);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct hw_h2 *h2 = user_data;
    struct hw_h2_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!st)
        return 0;
    if (h2->is_server) {
        bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
        if (end && (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA))
            dispatch_request(h2, st);
        return 0;
    }
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
        int status = 0;
        for (size_t i = 0; i < st->n_headers; i++)
            if (strcmp(st->headers[i].name, ":status") == 0)
                status = atoi(st->headers[i].value);
        if (h2->cb.on_response)
            h2->cb.on_response(h2, st, status, h2->arg);
    }
    return 0;
}

static int on_client_header(nghttp2_session *session, const nghttp2_frame *frame,
                            const uint8_t *name, size_t namelen, const uint8_t *value,
                            size_t valuelen, uint8_t flags, void *user_data)
{
    struct hw_h2 *h2 = user_data;
    if (h2->is_server)
        return on_header(session, frame, name, namelen, value, valuelen, flags, user_data);
    /* A client keeps only the response's headers (the request's were ours). */
    struct hw_h2_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!st || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_RESPONSE)
        return 0;
    return on_header(session, frame, name, namelen, value, valuelen, flags, user_data);
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    struct hw_h2 *h2 = user_data;
    struct hw_h2_stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (h2->cb.on_close)
        h2->cb.on_close(h2, st, error_code, h2->arg);
    stream_free(st);
    return 0;
}

/* Copies queued buffers into nghttp2's DATA frame; parks the stream when the queue is
 * empty but the response goes on (long-poll), until hw_h2_push resumes it. */
static ssize_t read_queued(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct hw_h2_stream *st = source->ptr;
    size_t copied = 0;
    while (copied < length && st->q_head) {
        struct queued *q = st->q_head;
        size_t take = q->buf->len - q->offset;
        if (take > length - copied)
            take = length - copied;
        memcpy(buf + copied, q->buf->data + q->offset, take);
        copied += take;
        q->offset += take;
        st->queued_bytes -= take;
        if (q->offset == q->buf->len) {
            st->q_head = q->next;
            if (!st->q_head)
                st->q_tail = NULL;
            hw_sbuf_unref(q->buf);
            free(q);
        }
    }
    if (!st->q_head && st->ended)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (copied == 0) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)copied;
}

static struct hw_h2 *h2_new(const struct hw_h2_callbacks *cb, void *arg, bool server)
{
    struct hw_h2 *h2 = hw_calloc(1, sizeof *h2);
    h2->cb = *cb;
    h2->arg = arg;
    h2->is_server = server;
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_client_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    /* Bound what one peer can make us hold: header blocks and queued control frames. */
    nghttp2_option_set_max_send_header_block_length(opt, 65536);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    int rv = server ? nghttp2_session_server_new2(&h2->session, cbs, h2, opt)
                    : nghttp2_session_client_new2(&h2->session, cbs, h2, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        free(h2);
        return NULL;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 65536},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(h2->session, NGHTTP2_FLAG_NONE, settings,
                            server ? 3 : HW_ARRAY_LEN(settings));
    /* A larger connection window so one long map stream never stalls the others. */
    nghttp2_session_set_local_window_size(h2->session, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    return h2;
}

struct hw_h2 *hw_h2_new_server(const struct hw_h2_callbacks *cb, void *arg, size_t max_request_body)
{
    struct hw_h2 *h2 = h2_new(cb, arg, true);
    if (h2)
        h2->max_request_body = max_request_body;
    return h2;
}

struct hw_h2 *hw_h2_new_client(const struct hw_h2_callbacks *cb, void *arg)
{
    return h2_new(cb, arg, false);
}

void hw_h2_free(struct hw_h2 *h2)
{
    if (!h2)
        return;
    while (h2->streams) {
        struct hw_h2_stream *st = h2->streams;
        nghttp2_session_set_stream_user_data(h2->session, st->id, NULL);
        if (h2->cb.on_close)
            h2->cb.on_close(h2, st, NGHTTP2_CANCEL, h2->arg);
        stream_free(st);
    }
    nghttp2_session_del(h2->session);
    free(h2);
}

int hw_h2_feed(struct hw_h2 *h2, const uint8_t *data, size_t len)
{
    ssize_t n = nghttp2_session_mem_recv(h2->session, data, len);
    if (n < 0) {
        set_error(h2, "HTTP/2 input", (int)n);
        return -1;
    }
    return 0;
}

int hw_h2_pump(struct hw_h2 *h2)
{
    int rv = nghttp2_session_send(h2->session);
    if (rv != 0) {
        set_error(h2, "HTTP/2 output", rv);
        return -1;
    }
    return 0;
}

bool hw_h2_finished(struct hw_h2 *h2)
{
    return !nghttp2_session_want_read(h2->session) && !nghttp2_session_want_write(h2->session);
}

int32_t hw_h2_stream_id(struct hw_h2_stream *st) { return st->id; }
const char *hw_h2_method(struct hw_h2_stream *st) { return st->method ? st->method : ""; }
const char *hw_h2_path(struct hw_h2_stream *st) { return st->path ? st->path : ""; }
void hw_h2_set_user(struct hw_h2_stream *st, void *user) { st->user = user; }
void *hw_h2_get_user(struct hw_h2_stream *st) { return st->user; }
struct hw_h2 *hw_h2_stream_conn(struct hw_h2_stream *st) { return st->h2; }
size_t hw_h2_queued(struct hw_h2_stream *st) { return st->queued_bytes; }

const char *hw_h2_header(struct hw_h2_stream *st, const char *lowercase_name)
{
    for (size_t i = 0; i < st->n_headers; i++)
        if (strcmp(st->headers[i].name, lowercase_name) == 0)
            return st->headers[i].value;
    return NULL;
}

const uint8_t *hw_h2_body(struct hw_h2_stream *st, size_t *len)
{
    *len = st->body_len;
    return st->body ? st->body : (const uint8_t *)"";
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

static int submit_response(struct hw_h2_stream *st, int status, const char *content_type, bool with_body)
{
    if (st->responded)
        return -1;
    st->responded = true;
    char status_text[8];
    snprintf(status_text, sizeof status_text, "%d", status);
    /* content_type NULL (an empty 200, as for lite map updates) must not reach strlen. */
    nghttp2_nv nva[2] = {NV(":status", status_text)};
    size_t nnv = 1;
    if (content_type)
        nva[nnv++] = (nghttp2_nv)NV("content-type", content_type);
    nghttp2_data_provider provider = {.source.ptr = st, .read_callback = read_queued};
    int rv = nghttp2_submit_response(st->h2->session, st->id, nva, nnv, with_body ? &provider : NULL);
    if (rv != 0) {
        set_error(st->h2, "HTTP/2 response", rv);
        return -1;
    }
    return 0;
}

int hw_h2_respond(struct hw_h2_stream *st, int status, const char *content_type, const void *body,
                  size_t len)
{
    if (len > 0) {
        struct hw_sbuf *buf = hw_sbuf_copy(body, len);
        hw_h2_push(st, buf);
        hw_sbuf_unref(buf);
    }
    st->ended = true;
    return submit_response(st, status, content_type, len > 0);
}

int hw_h2_respond_streaming(struct hw_h2_stream *st, int status, const char *content_type)
{
    return submit_response(st, status, content_type, true);
}

int hw_h2_push(struct hw_h2_stream *st, struct hw_sbuf *buf)
{
    if (st->ended)
        return -1;
    struct queued *q = hw_malloc(sizeof *q);
    q->buf = hw_sbuf_ref(buf);
    q->offset = 0;
    q->next = NULL;
    if (st->q_tail)
        st->q_tail->next = q;
    else
        st->q_head = q;
    st->q_tail = q;
    st->queued_bytes += buf->len;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->h2->session, st->id);
    }
    return 0;
}

int hw_h2_end(struct hw_h2_stream *st)
{
    st->ended = true;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->h2->session, st->id);
    }
    return 0;
}

void hw_h2_reset(struct hw_h2_stream *st, uint32_t error_code)
{
    nghttp2_submit_rst_stream(st->h2->session, NGHTTP2_FLAG_NONE, st->id, error_code);
}

struct hw_h2_stream *hw_h2_request(struct hw_h2 *h2, const char *method, const char *path,
                                   const char *authority, const char *content_type,
                                   const void *body, size_t len, void *user)
{
    nghttp2_nv nva[5] = {NV(":method", method), NV(":scheme", "https"), NV(":path", path),
                         NV(":authority", authority)};
    size_t n = 4;
    if (content_type)
        nva[n++] = (nghttp2_nv)NV("content-type", content_type);
    /* The stream exists before its id does; nghttp2 gives the id at submit. */
    struct hw_h2_stream *st = stream_new(h2, 0);
    st->user = user;
    st->responded = true;
    if (len > 0) {
        struct hw_sbuf *buf = hw_sbuf_copy(body, len);
        hw_h2_push(st, buf);
        hw_sbuf_unref(buf);
    }
    st->ended = true;
    nghttp2_data_provider provider = {.source.ptr = st, .read_callback = read_queued};
    int32_t id = nghttp2_submit_request(h2->session, NULL, nva, n, len > 0 ? &provider : NULL, st);
    if (id < 0) {
        set_error(h2, "HTTP/2 request", id);
        stream_free(st);
        return NULL;
    }
    st->id = id;
    return st;
}
