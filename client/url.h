#ifndef HW_CLIENT_URL_H
#define HW_CLIENT_URL_H

/* The login server URL as `hwclient up --login-server` takes it, reduced to what the
 * two HTTP/1.1 exchanges and the HTTP/2 requests need (PROTOCOL.md §2, §3.1). */

#include <stdbool.h>
#include <stddef.h>

#define HWC_HOST_MAX 256

struct hwc_url {
    bool https;
    char host[HWC_HOST_MAX];       /* without brackets for IPv6 literals */
    char port[8];                  /* decimal; the scheme's default when absent */
    char authority[HWC_HOST_MAX + 10]; /* Host header value: host[:port], brackets kept */
    char base[HWC_HOST_MAX + 24];  /* scheme://authority, no trailing slash */
};

/* Accepts http://host[:port][/] (and https://, which the caller may refuse). A path
 * other than "/" is refused: control endpoints live at the root. Returns 0, or -1
 * with a one-line reason in err. */
int hwc_url_parse(const char *text, struct hwc_url *out, char *err, size_t errlen);

#endif
