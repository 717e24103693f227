#ifndef HW_CLIENT_LOCALAPI_H
#define HW_CLIENT_LOCALAPI_H

/* The daemon's local control socket (state dir, mode 0600) and the CLI side of it. The
 * protocol is ours: the client sends one JSON object and a newline, the daemon answers
 * with one JSON object and closes. {"cmd": "status" | "netmap" | "logout" | "down"}.
 * An answer with "error" is a failure, whose text the CLI prints as is. */

#include <stddef.h>

#include <jansson.h>

struct hw_loop;
struct hwc_api;
struct hwc_api_req;

/* Requests larger than this are refused: they are a few dozen bytes in practice. */
#define HWC_API_MAX_REQUEST 65536
/* Answers carry a whole netmap; 64 MiB is tens of thousands of peers. */
#define HWC_API_MAX_ANSWER (64u << 20)

/* Called with the parsed request. The handler answers with hwc_api_reply, now or later
 * (logout waits for the server). */
typedef void (*hwc_api_handler)(struct hwc_api_req *req, const char *cmd, json_t *request, void *arg);

struct hwc_api *hwc_api_listen(struct hw_loop *loop, const char *path, hwc_api_handler h, void *arg,
                               char *err, size_t errlen);
/* Steals answer. */
void hwc_api_reply(struct hwc_api_req *req, json_t *answer);
void hwc_api_reply_error(struct hwc_api_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Closes the socket and every connection, answered or not; removes the socket file. */
void hwc_api_free(struct hwc_api *api);

/* CLI side: one request, the decoded answer (new reference) or NULL with err set to a
 * line for the user. statedir is only for the messages. */
json_t *hwc_api_call(const char *sock_path, const char *statedir, json_t *request, int timeout_ms,
                     char *err, size_t errlen);

#endif
