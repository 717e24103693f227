#ifndef HW_SERVER_VERIFY_H
#define HW_SERVER_VERIFY_H

/* POST /verify: DERP admission. A relay (hwrelay or derper with -verify-client-url)
 * asks whether a node key belongs to this tailnet before it relays for that client
 * (PROTOCOL.md §8.7). Answers {"Allow": true} only for a registered, unexpired node. */

#include <stddef.h>

struct MHD_Connection;
struct hw_server;

/* libmicrohttpd access-handler arguments, passed through. Returns an MHD_Result. */
int hw_verify_handle(struct hw_server *s, struct MHD_Connection *conn, const char *method,
                     const char *upload_data, size_t *upload_data_size, void **req_cls);
/* Frees what hw_verify_handle kept in *req_cls (the completed-request callback). */
void hw_verify_request_done(void *req_cls);
/* The decision itself, also used by the built-in relay: 1 allow, 0 deny. */
int hw_verify_node_key(struct hw_server *s, const char *node_key);

#endif
