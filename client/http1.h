#ifndef HW_CLIENT_HTTP1_H
#define HW_CLIENT_HTTP1_H

/* The two HTTP/1.1 exchanges before Noise (GET /key, POST /ts2021 upgrade) need only a
 * response head parser: status line, headers, Content-Length. It is strict on purpose:
 * anything odd from the server ends the dial with a message naming the problem. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HWC_HTTP_HEAD_MAX 16384
#define HWC_HTTP_MAX_HEADERS 64

struct hwc_http_header {
    const char *name, *value; /* point into head */
};

struct hwc_http_resp {
    int status;
    const char *reason;
    struct hwc_http_header headers[HWC_HTTP_MAX_HEADERS];
    size_t n_headers;
    long long content_length; /* -1 when absent */
    bool chunked;
    size_t head_len;          /* bytes of the head, blank line included */
    char head[HWC_HTTP_HEAD_MAX + 1];
};

/* Looks for a complete head at the start of buf. Returns 1 when parsed (out filled,
 * out->head_len bytes of buf used), 0 when more bytes are needed, -1 on a malformed or
 * oversized head (err says what). */
int hwc_http_parse_head(const uint8_t *buf, size_t len, struct hwc_http_resp *out, char *err,
                        size_t errlen);
/* Case-insensitive lookup; NULL when absent. */
const char *hwc_http_header(const struct hwc_http_resp *r, const char *name);
/* True when the comma-separated value contains token (case-insensitive), as Go's
 * httpguts.HeaderValuesContainsToken checks Connection: upgrade. */
bool hwc_http_has_token(const char *value, const char *token);
/* A short, printable excerpt of a body for error messages: first line, at most max
 * bytes, control characters replaced. */
void hwc_http_excerpt(const uint8_t *body, size_t len, char *out, size_t max);

#endif
