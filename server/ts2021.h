#ifndef HW_SERVER_TS2021_H
#define HW_SERVER_TS2021_H

/* ts2021: the HTTP/1.1 upgrade on /ts2021, the Noise session behind it and HTTP/2 inside
 * (PROTOCOL.md §3). The upgrade request is answered on a libmicrohttpd thread; the
 * upgraded socket then lives on the event loop, where every session's bytes are read,
 * decrypted, handed to HTTP/2, and answered by the control layer (server/control.h). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;
struct hw_loop;
struct hw_h2_stream;
struct ts_session;
struct hw_control;

struct hw_ts2021;

struct hw_ts2021 *hw_ts2021_new(struct hw_loop *loop, struct hw_control *control,
                                const uint8_t server_private[32]);
/* Closes every session (on the loop thread, before the loop is freed). */
void hw_ts2021_free(struct hw_ts2021 *ts);

/* Called by the public HTTP listener for /ts2021 once the request is complete.
 * Returns an MHD_Result. */
int hw_ts2021_handle(struct hw_ts2021 *ts, struct MHD_Connection *conn, const char *method);

/* For the control layer. */
const char *ts_session_machine_key(struct ts_session *s);   /* "mkey:<hex>" */
struct ts_session *ts_session_of_stream(struct hw_h2_stream *st);
/* Data was queued on one of the session's streams from outside its own input path:
 * flush it soon (coalesced per loop iteration). */
void ts_session_kick(struct ts_session *s);

#endif
