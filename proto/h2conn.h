#ifndef HW_PROTO_H2CONN_H
#define HW_PROTO_H2CONN_H

/* HTTP/2 (nghttp2) over any plaintext byte pipe: in Tailscale's control protocol the
 * pipe is a Noise session (h2c with prior knowledge, PROTOCOL.md §3.7). Both roles:
 * headwater serves requests, hwclient and the swarm benchmark make them.
 *
 * Not thread-safe: one connection is driven by one thread (the event loop). Streams are
 * owned by the connection; the application learns of each stream's end through on_close
 * and must not touch it afterwards. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/sbuf.h"

struct hw_h2;
struct hw_h2_stream;

struct hw_h2_callbacks {
    /* Server: a request arrived complete (headers and the whole body). */
    void (*on_request)(struct hw_h2 *h2, struct hw_h2_stream *st, void *arg);
    /* Client: the response headers arrived. */
    void (*on_response)(struct hw_h2 *h2, struct hw_h2_stream *st, int status, void *arg);
    /* Client: response body bytes. */
    void (*on_data)(struct hw_h2 *h2, struct hw_h2_stream *st, const uint8_t *data, size_t len,
                    void *arg);
    /* Either role: the stream is over (finished, reset by either side, or the connection
     * is being freed; error_code is the HTTP/2 code, 0 for a clean end). */
    void (*on_close)(struct hw_h2 *h2, struct hw_h2_stream *st, uint32_t error_code, void *arg);
    /* Plaintext to send to the peer. Return 0, or -1 to fail the connection. */
    int (*write)(struct hw_h2 *h2, const uint8_t *data, size_t len, void *arg);
    /* True while the transport has so much unsent data that output should pause; the
     * owner calls hw_h2_pump() again once it has drained. */
    bool (*write_blocked)(struct hw_h2 *h2, void *arg);
};

/* max_request_body: larger request bodies are answered 413 (server role). */
struct hw_h2 *hw_h2_new_server(const struct hw_h2_callbacks *cb, void *arg, size_t max_request_body);
struct hw_h2 *hw_h2_new_client(const struct hw_h2_callbacks *cb, void *arg);
/* Calls on_close for every open stream, then frees. */
void hw_h2_free(struct hw_h2 *h2);

/* Input from the peer. Returns -1 on a protocol error: the caller closes the connection
 * (after a final hw_h2_pump() so a GOAWAY may go out). */
int hw_h2_feed(struct hw_h2 *h2, const uint8_t *data, size_t len);
/* Writes whatever nghttp2 has ready through callbacks.write until it has nothing or
 * write_blocked() says stop. -1 on error. */
int hw_h2_pump(struct hw_h2 *h2);
/* Neither side wants to read or write any more (GOAWAY exchanged, or fatal error). */
bool hw_h2_finished(struct hw_h2 *h2);
const char *hw_h2_last_error(struct hw_h2 *h2);
void *hw_h2_conn_arg(struct hw_h2 *h2);   /* the arg given at creation */

/* Stream accessors. Strings are NUL-terminated, owned by the stream. */
int32_t hw_h2_stream_id(struct hw_h2_stream *st);
const char *hw_h2_method(struct hw_h2_stream *st);
const char *hw_h2_path(struct hw_h2_stream *st);
const char *hw_h2_header(struct hw_h2_stream *st, const char *lowercase_name);
const uint8_t *hw_h2_body(struct hw_h2_stream *st, size_t *len);
void hw_h2_set_user(struct hw_h2_stream *st, void *user);
void *hw_h2_get_user(struct hw_h2_stream *st);
struct hw_h2 *hw_h2_stream_conn(struct hw_h2_stream *st);

/* Server: a complete response. */
int hw_h2_respond(struct hw_h2_stream *st, int status, const char *content_type,
                  const void *body, size_t len);
/* Server: headers now, body pushed piece by piece (long-poll streams). */
int hw_h2_respond_streaming(struct hw_h2_stream *st, int status, const char *content_type);
/* Queues a reference to buf on the stream (streaming responses and client requests). */
int hw_h2_push(struct hw_h2_stream *st, struct hw_sbuf *buf);
/* Ends the stream after what is queued. */
int hw_h2_end(struct hw_h2_stream *st);
/* Resets the stream (RST_STREAM with code; 8 = CANCEL). */
void hw_h2_reset(struct hw_h2_stream *st, uint32_t error_code);
/* Bytes queued on the stream and not yet handed to nghttp2. */
size_t hw_h2_queued(struct hw_h2_stream *st);

/* Client: starts a request; the body (may be NULL) is copied. Returns NULL on failure. */
struct hw_h2_stream *hw_h2_request(struct hw_h2 *h2, const char *method, const char *path,
                                   const char *authority, const char *content_type,
                                   const void *body, size_t len, void *user);

#endif
