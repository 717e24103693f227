/* The few HTTP routes derper serves on its listener (PROTOCOL.md 8.1). Requests are
 * parsed with http_parser; every answer closes the connection except the two /derp
 * upgrades, which turn the same socket into a DERP stream (plain, or inside WebSocket
 * binary messages for browsers). */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define FIELD_MAX 256

struct req {
    char url[1024];
    size_t url_len;
    bool url_too_long;
    char field[64];
    size_t field_len;
    int cur;                 /* which header value is being collected, -1 none */
    char values[9][FIELD_MAX];
    size_t value_lens[9];
    bool head_done;
};

enum { H_UPGRADE, H_FAST_START, H_IDEAL_NODE, H_CHALLENGE, H_HOST, H_CONNECTION, H_WS_KEY,
       H_WS_PROTOCOL, H_WS_VERSION };
static const char *const wanted[] = {"Upgrade", "Derp-Fast-Start", "Ideal-Node",
                                     "X-Tailscale-Challenge", "Host", "Connection",
                                     "Sec-WebSocket-Key", "Sec-WebSocket-Protocol",
                                     "Sec-WebSocket-Version"};

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct req *q = p->data;
    if (q->url_len + len >= sizeof q->url) {
        q->url_too_long = true;
        return 0;
    }
    memcpy(q->url + q->url_len, at, len);
    q->url_len += len;
    q->url[q->url_len] = '\0';
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct req *q = p->data;
    if (q->cur != -2) {          /* a new field starts after a value */
        q->field_len = 0;
        q->cur = -2;
    }
    size_t take = len;
    if (q->field_len + take >= sizeof q->field)
        take = sizeof q->field - 1 - q->field_len;
    memcpy(q->field + q->field_len, at, take);
    q->field_len += take;
    q->field[q->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct req *q = p->data;
    if (q->cur == -2) {
        q->cur = -1;
        for (size_t i = 0; i < HW_ARRAY_LEN(wanted); i++)
            if (strcasecmp(q->field, wanted[i]) == 0 && q->value_lens[i] == 0)
                q->cur = (int)i;
    }
    if (q->cur < 0)
        return 0;
    size_t *vl = &q->value_lens[q->cur];
    size_t take = len;
    if (*vl + take >= FIELD_MAX)
        take = FIELD_MAX - 1 - *vl;
    memcpy(q->values[q->cur] + *vl, at, take);
    *vl += take;
    q->values[q->cur][*vl] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct req *q = p->data;
    q->head_done = true;
    /* Stop at the end of the head: the body (if any) is not ours to read, and after an
     * upgrade the rest of the stream is DERP. */
    http_parser_pause(p, 1);
    return 0;
}

static void respond(struct conn *c, int status, const char *reason, const char *extra_headers,
                    const char *content_type, const char *body, bool head_only)
{
    size_t blen = body ? strlen(body) : 0;
    /* A 204 must not carry a Content-Length (RFC 9110 8.6). */
    char clen[48] = "";
    if (status != 204)
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", blen);
    char *head = hw_sprintf("HTTP/1.1 %d %s\r\n%s%s%s%s%sConnection: close\r\n\r\n", status, reason,
                            content_type ? "Content-Type: " : "", content_type ? content_type : "",
                            content_type ? "\r\n" : "", extra_headers ? extra_headers : "", clen);
    conn_write(c, head, strlen(head));
    free(head);
    if (blen && !head_only)
        conn_write(c, body, blen);
}

static int hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* The first value of key in a query string, %-decoded ('+' is a space); "" if absent,
 * malformed or longer than out. */
static void query_value(const char *qs, size_t len, const char *key, char *out, size_t out_len)
{
    size_t klen = strlen(key);
    out[0] = '\0';
    for (size_t i = 0; i < len;) {
        size_t end = i;
        while (end < len && qs[end] != '&')
            end++;
        if (end - i > klen && memcmp(qs + i, key, klen) == 0 && qs[i + klen] == '=') {
            size_t o = 0;
            for (size_t j = i + klen + 1; j < end; j++) {
                int ch = qs[j];
                if (ch == '+')
                    ch = ' ';
                else if (ch == '%') {
                    int hi = j + 2 < end ? hex_digit(qs[j + 1]) : -1, lo = hi >= 0 ? hex_digit(qs[j + 2]) : -1;
                    if (lo < 0 || (hi == 0 && lo == 0)) {
                        out[0] = '\0';
                        return;
                    }
                    ch = hi * 16 + lo;
                    j += 2;
                }
                if (o + 1 >= out_len) {
                    out[0] = '\0';
                    return;
                }
                out[o++] = (char)ch;
            }
            out[o] = '\0';
            return;
        }
        i = end + 1;
    }
}

static const char browser_headers[] =
    "X-Frame-Options: DENY\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'\r\n";

static const char home_page[] =
    "<html><body>\n<h1>DERP</h1>\n<p>\n  This is a Headwater DERP relay (hwrelay).\n</p>\n\n"
    "<p>\n  It provides STUN, interactive connectivity establishment, and relaying of end-to-end "
    "encrypted traffic\n  for Tailscale clients of this tailnet.\n</p>\n</body>\n</html>\n";

bool relay_challenge_ok(const char *s, size_t len)
{
    if (!s || len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '.' || ch == '-' || ch == '_' || ch == ':';
        if (!ok)
            return false;
    }
    return true;
}

bool relay_header_has_token(const char *value, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = value ? value : ""; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - p) == n && strncasecmp(p, token, n) == 0)
            return true;
        p = end;
    }
    return false;
}

enum relay_upgrade relay_upgrade_kind(const char *upgrade, const char *ws_protocol)
{
    if (!upgrade)
        return RELAY_UPGRADE_NONE;
    /* derper tells real WebSocket clients by the "derp" subprotocol: very old
     * tailscaled sent "Upgrade: WebSocket" but spoke plain DERP. */
    if (strcasecmp(upgrade, "websocket") == 0)
        return ws_protocol && strstr(ws_protocol, "derp") ? RELAY_UPGRADE_WEBSOCKET : RELAY_UPGRADE_DERP;
    return strcasecmp(upgrade, "derp") == 0 ? RELAY_UPGRADE_DERP : RELAY_UPGRADE_NONE;
}

static void serve_no_content(struct conn *c, const struct req *q)
{
    char extra[FIELD_MAX + 160];
    int n = 0;
    if (relay_challenge_ok(q->values[H_CHALLENGE], q->value_lens[H_CHALLENGE]))
        n = snprintf(extra, sizeof extra, "X-Tailscale-Response: response %s\r\n", q->values[H_CHALLENGE]);
    snprintf(extra + n, sizeof extra - (size_t)n,
             "Cache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n");
    respond(c, 204, "No Content", extra, NULL, NULL, true);
}

/* RFC 6455 server handshake with the checks Go's coder/websocket (derper's library)
 * makes; no compression is offered, and the subprotocol is always "derp". */
static enum http_result websocket_upgrade(struct conn *c, const struct req *q, unsigned method)
{
    const char *text = "text/plain; charset=utf-8";
    if (method != HTTP_GET) {
        respond(c, 405, "Method Not Allowed", "Allow: GET\r\n", text, "WebSocket protocol violation: handshake request method is not GET\n", false);
        return HTTP_DONE;
    }
    if (!relay_header_has_token(q->values[H_CONNECTION], "upgrade")) {
        respond(c, 426, "Upgrade Required", "Connection: Upgrade\r\nUpgrade: websocket\r\n", text,
                "WebSocket protocol violation: Connection header does not contain Upgrade\n", false);
        return HTTP_DONE;
    }
    if (strcmp(q->values[H_WS_VERSION], "13") != 0) {
        respond(c, 400, "Bad Request", "Sec-WebSocket-Version: 13\r\n", text,
                "unsupported WebSocket protocol version (only 13 is supported)\n", false);
        return HTTP_DONE;
    }
    char accept[HW_WS_ACCEPT_LEN];
    if (hw_ws_accept_key(q->values[H_WS_KEY], accept) < 0) {
        respond(c, 400, "Bad Request", NULL, text, "WebSocket protocol violation: invalid Sec-WebSocket-Key\n", false);
        return HTTP_DONE;
    }
    char *head = hw_sprintf("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: derp\r\n\r\n", accept);
    conn_write(c, head, strlen(head));
    free(head);
    c->not_ideal = q->value_lens[H_IDEAL_NODE] > 0;
    return HTTP_UPGRADE_WEBSOCKET;
}

enum http_result http_handle(struct conn *c, size_t *head_len)
{
    struct relay *r = c->relay;
    struct req q;
    memset(&q, 0, sizeof q);
    q.cur = -1;
    http_parser_settings s;
    http_parser_settings_init(&s);
    s.on_url = on_url;
    s.on_header_field = on_header_field;
    s.on_header_value = on_header_value;
    s.on_headers_complete = on_headers_complete;
    http_parser p;
    http_parser_init(&p, HTTP_REQUEST);
    p.data = &q;
    size_t used = http_parser_execute(&p, &s, c->http_buf, c->http_len);
    enum http_errno err = HTTP_PARSER_ERRNO(&p);
    if (!q.head_done) {
        if (err == HPE_OK && used == c->http_len)
            return HTTP_NEED_MORE;
        log_debug("hwrelay: %s: bad request: %s", c->remote_text, http_errno_name(err));
        respond(c, 400, "Bad Request", NULL, "text/plain; charset=utf-8", "bad request\n", false);
        return HTTP_BAD;
    }
    /* Paused in on_headers_complete, http_parser reports the head one byte short: the
     * final LF of the blank line has not been counted yet. */
    if (used < c->http_len && c->http_buf[used] == '\n')
        used++;
    *head_len = used;
    if (q.url_too_long) {
        respond(c, 414, "URI Too Long", NULL, "text/plain; charset=utf-8", "URI too long\n", false);
        return HTTP_BAD;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    char path[1024] = "/";
    if (http_parser_parse_url(q.url, q.url_len, 0, &u) == 0 && (u.field_set & (1 << UF_PATH))) {
        size_t plen = u.field_data[UF_PATH].len;
        memcpy(path, q.url + u.field_data[UF_PATH].off, plen);
        path[plen] = '\0';
    }
    bool head_only = p.method == HTTP_HEAD;
    bool get_or_head = p.method == HTTP_GET || p.method == HTTP_HEAD;

    if (strcmp(path, "/generate_204") == 0) {
        serve_no_content(c, &q);
        return HTTP_DONE;
    }
    if (c->is_http_port) {
        /* Port 80 only answers captive-portal checks; everything else goes to HTTPS. */
        char *loc = hw_sprintf("Location: https://%s%s\r\n", r->cfg.hostname, path);
        respond(c, 302, "Found", loc, "text/html; charset=utf-8", "", head_only);
        free(loc);
        return HTTP_DONE;
    }
    if (strcmp(path, "/derp/probe") == 0 || strcmp(path, "/derp/latency-check") == 0) {
        if (get_or_head)
            respond(c, 200, "OK", "Access-Control-Allow-Origin: *\r\n", NULL, NULL, head_only);
        else
            respond(c, 405, "Method Not Allowed", NULL, "text/plain; charset=utf-8",
                    "bogus probe method\n", false);
        return HTTP_DONE;
    }
    if (strcmp(path, "/derp") == 0) {
        if (!r->cfg.derp) {
            respond(c, 404, "Not Found", NULL, "text/plain; charset=utf-8", "derp server disabled\n", false);
            return HTTP_DONE;
        }
        enum relay_upgrade kind = relay_upgrade_kind(q.values[H_UPGRADE], q.values[H_WS_PROTOCOL]);
        if (kind == RELAY_UPGRADE_WEBSOCKET)
            return websocket_upgrade(c, &q, p.method);
        if (kind == RELAY_UPGRADE_NONE) {
            if (q.value_lens[H_UPGRADE])
                log_info("hwrelay: %s: unsupported upgrade %s", c->remote_text, q.values[H_UPGRADE]);
            respond(c, 426, "Upgrade Required", "X-Content-Type-Options: nosniff\r\n",
                    "text/plain; charset=utf-8", "DERP requires connection upgrade\n", false);
            return HTTP_DONE;
        }
        /* A fast-start client already knows our key (from a meta certificate) and
         * expects no 101; we never send that certificate, but honour the header. */
        if (strcmp(q.values[H_FAST_START], "1") != 0) {
            char *head = hw_sprintf("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n"
                                    "Connection: Upgrade\r\nDerp-Version: %d\r\nDerp-Public-Key: %s\r\n\r\n",
                                    HW_DERP_PROTOCOL_VERSION, r->pubhex);
            conn_write(c, head, strlen(head));
            free(head);
        }
        c->not_ideal = q.value_lens[H_IDEAL_NODE] > 0;
        return HTTP_UPGRADE_DERP;
    }
    if (strcmp(path, "/robots.txt") == 0) {
        respond(c, 200, "OK", browser_headers, "text/plain; charset=utf-8", "User-agent: *\nDisallow: /\n",
                head_only);
        return HTTP_DONE;
    }
    if (strcmp(path, "/bootstrap-dns") == 0) {
        char qname[256] = "";
        if (u.field_set & (1 << UF_QUERY))
            query_value(q.url + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len, "q", qname,
                        sizeof qname);
        char *answer = bootstrap_dns_answer(r, qname);
        respond(c, 200, "OK", browser_headers, "application/json", answer, head_only);
        free(answer);
        return HTTP_DONE;
    }
    /* derper's mux sends every other path to the home page. */
    respond(c, 200, "OK", browser_headers, "text/html; charset=utf-8", home_page, head_only);
    return HTTP_DONE;
}
