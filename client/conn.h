#ifndef HW_CLIENT_CONN_H
#define HW_CLIENT_CONN_H

/* One ts2021 connection to a control server, driven by the event loop without blocking:
 * resolve the host (a helper thread for names, inline for literals), GET /key?v=N for
 * the server's Noise key, POST /ts2021 carrying the Noise initiation, finish the
 * handshake, skip the early payload, then HTTP/2 with prior knowledge inside Noise
 * (PROTOCOL.md §2-3). Requests are HTTP/2 streams multiplexed on it, as upstream does
 * with its single connection per host.
 *
 * Only http:// login servers: the https path would need TLS under Noise (not done). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/url.h"

struct hw_loop;
struct hwc_conn;
struct hwc_req;

/* The whole dial (resolve, /key, upgrade, handshake) must finish within this, as
 * upstream's controlhttp dial without a dial plan. */
#define HWC_DIAL_TIMEOUT_MS 10000
/* GET /key bodies are read up to this (upstream reads 64 KiB). */
#define HWC_KEY_BODY_MAX 65536

struct hwc_conn_callbacks {
    /* Noise and HTTP/2 are up: requests may be made. */
    void (*on_ready)(struct hwc_conn *c, void *arg);
    /* The dial failed or the connection broke; nothing more will arrive. Called at most
     * once. Requests get no on_close: the owner forgets them and frees the connection. */
    void (*on_fail)(struct hwc_conn *c, const char *why, void *arg);
};
/* Both run from a timer, never from inside another call: they may free the connection. */

struct hwc_conn *hwc_conn_dial(struct hw_loop *loop, const struct hwc_url *url,
                               const uint8_t machine_priv[32], uint16_t capver,
                               const struct hwc_conn_callbacks *cb, void *arg);
/* The same with the server's Noise key already known (from an earlier connection's
 * hwc_conn_server_key): no GET /key, as upstream caches the key across reconnects
 * (controlclient.Direct keeps serverNoiseKey). */
struct hwc_conn *hwc_conn_dial_key(struct hw_loop *loop, const struct hwc_url *url,
                                   const uint8_t machine_priv[32], uint16_t capver,
                                   const uint8_t server_pub[32],
                                   const struct hwc_conn_callbacks *cb, void *arg);
/* Closes the socket, drops every request without callbacks. Safe in any state. */
void hwc_conn_free(struct hwc_conn *c);
/* Ends the connection from inside a request callback: on_fail follows with why. */
void hwc_conn_fail_soon(struct hwc_conn *c, const char *why);
bool hwc_conn_ready(const struct hwc_conn *c);
/* The server's Noise public key learnt from /key (zero before). */
const uint8_t *hwc_conn_server_key(const struct hwc_conn *c);

/* Per-request callbacks. They run inside the connection's input processing: they must
 * not free the connection (use hwc_conn_fail_soon or a timer). */
struct hwc_req_handler {
    void (*on_response)(struct hwc_req *r, int status, void *arg);
    void (*on_data)(struct hwc_req *r, const uint8_t *data, size_t len, void *arg);
    /* The stream is over: 0 after a complete response, else the HTTP/2 error code.
     * The request handle is invalid afterwards. */
    void (*on_close)(struct hwc_req *r, uint32_t h2_error, void *arg);
};

/* POST path with body (copied). NULL when the connection is not ready or HTTP/2 refused
 * the stream. */
struct hwc_req *hwc_conn_post(struct hwc_conn *c, const char *path, const void *body, size_t len,
                              const struct hwc_req_handler *h, void *arg);
/* Resets the stream; no callback of it runs afterwards. */
void hwc_req_cancel(struct hwc_req *r);

/* For the wire tests (tests/tools/hwprobe.c): bytes that bypass HTTP/2, sealed into
 * Noise records when sealed, else written to the socket as they are. -1 when the
 * connection is not ready. */
int hwc_conn_send_raw(struct hwc_conn *c, const void *data, size_t len, bool sealed);
/* The socket (-1 when none), for the same tests: after on_fail it is still open and
 * tells whether the server really closed its end. */
int hwc_conn_fd(const struct hwc_conn *c);

#endif
