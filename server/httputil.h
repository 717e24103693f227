#ifndef HW_SERVER_HTTPUTIL_H
#define HW_SERVER_HTTPUTIL_H

/* Small pieces both libmicrohttpd daemons (public listener, admin socket) share. */

#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stddef.h>

/* MHD_OPTION_EXTERNAL_LOGGER target: libmicrohttpd's own complaints go to our log, one
 * line each, prefixed with cls (a const char * naming the listener). */
void hw_mhd_logger(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Queues a response whose body is copied from body[0..len). */
enum MHD_Result hw_http_reply(struct MHD_Connection *conn, unsigned status,
                              const char *content_type, const char *body, size_t len);
/* Serialises and queues value (consumed, even on failure). */
enum MHD_Result hw_http_reply_json(struct MHD_Connection *conn, unsigned status, json_t *value,
                                   const char *content_type);

#endif
