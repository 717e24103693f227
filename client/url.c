#include "client/url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int hwc_url_parse(const char *text, struct hwc_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p;
    if (strncmp(text, "http://", 7) == 0) {
        p = text + 7;
    } else if (strncmp(text, "https://", 8) == 0) {
        p = text + 8;
        out->https = true;
    } else {
        snprintf(err, errlen, "login server %s: expected a URL starting with http:// or https://", text);
        return -1;
    }
    const char *end = p + strcspn(p, "/?#");
    if (end == p) {
        snprintf(err, errlen, "login server %s: no host", text);
        return -1;
    }
    if (*end && strcmp(end, "/") != 0) {
        snprintf(err, errlen, "login server %s: expected no path, query or fragment after the host", text);
        return -1;
    }
    if (memchr(p, '@', (size_t)(end - p))) {
        snprintf(err, errlen, "login server %s: user information in the URL is not supported", text);
        return -1;
    }
    const char *host = p, *host_end, *port = NULL;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(end - host));
        if (!host_end) {
            snprintf(err, errlen, "login server %s: unterminated IPv6 literal", text);
            return -1;
        }
        if (host_end + 1 < end) {
            if (host_end[1] != ':') {
                snprintf(err, errlen, "login server %s: unexpected text after the IPv6 literal", text);
                return -1;
            }
            port = host_end + 2;
        }
    } else {
        host_end = memchr(p, ':', (size_t)(end - p));
        if (host_end)
            port = host_end + 1;
        else
            host_end = end;
    }
    size_t host_len = (size_t)(host_end - host);
    if (host_len == 0 || host_len >= sizeof out->host) {
        snprintf(err, errlen, "login server %s: host name empty or too long", text);
        return -1;
    }
    memcpy(out->host, host, host_len);
    for (size_t i = 0; i < host_len; i++) {
        unsigned char c = (unsigned char)out->host[i];
        if (c <= ' ' || c >= 0x7f) {
            snprintf(err, errlen, "login server %s: invalid character in the host name", text);
            return -1;
        }
    }
    if (port) {
        size_t port_len = (size_t)(end - port);
        char *stop;
        char buf[8];
        if (port_len == 0 || port_len > 5) {
            snprintf(err, errlen, "login server %s: invalid port", text);
            return -1;
        }
        memcpy(buf, port, port_len);
        buf[port_len] = '\0';
        long v = strtol(buf, &stop, 10);
        if (*stop || v < 1 || v > 65535 || buf[0] == '+' || buf[0] == '-') {
            snprintf(err, errlen, "login server %s: invalid port", text);
            return -1;
        }
        snprintf(out->port, sizeof out->port, "%ld", v);
    } else {
        snprintf(out->port, sizeof out->port, "%s", out->https ? "443" : "80");
    }
    bool v6 = strchr(out->host, ':') != NULL;
    bool default_port = strcmp(out->port, out->https ? "443" : "80") == 0;
    snprintf(out->authority, sizeof out->authority, "%s%s%s%s%s", v6 ? "[" : "", out->host,
             v6 ? "]" : "", default_port ? "" : ":", default_port ? "" : out->port);
    snprintf(out->base, sizeof out->base, "%s://%s", out->https ? "https" : "http", out->authority);
    return 0;
}
