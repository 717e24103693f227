#include "client/http1.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool is_tchar(unsigned char c)
{
    return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static const char *find_blank_line(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
            return (const char *)buf + i;
    return NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

int hwc_http_parse_head(const uint8_t *buf, size_t len, struct hwc_http_resp *out, char *err,
                        size_t errlen)
{
    const char *blank = find_blank_line(buf, len < HWC_HTTP_HEAD_MAX ? len : HWC_HTTP_HEAD_MAX);
    if (!blank) {
        if (len >= HWC_HTTP_HEAD_MAX) {
            snprintf(err, errlen, "response head larger than %d bytes", HWC_HTTP_HEAD_MAX);
            return -1;
        }
        /* Fail early on something that is not HTTP at all, rather than at the size cap. */
        size_t n = len < 5 ? len : 5;
        if (memcmp(buf, "HTTP/", n) != 0) {
            snprintf(err, errlen, "the server did not answer with HTTP");
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)(blank - (const char *)buf) + 4;
    memset(out, 0, offsetof(struct hwc_http_resp, head));
    out->content_length = -1;
    out->head_len = head_len;
    memcpy(out->head, buf, head_len - 2);
    out->head[head_len - 2] = '\0';
    for (size_t i = 0; i < head_len - 2; i++) {
        unsigned char c = (unsigned char)out->head[i];
        if (c == '\0' || (c < ' ' && c != '\r' && c != '\n' && c != '\t')) {
            snprintf(err, errlen, "control character in the response head");
            return -1;
        }
    }
    char *line = out->head;
    char *eol = strstr(line, "\r\n");
    *eol = '\0';
    /* Status line: HTTP/1.x SP 3DIGIT [SP reason] */
    if (strncmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
        !isdigit((unsigned char)line[9]) || !isdigit((unsigned char)line[10]) ||
        !isdigit((unsigned char)line[11]) || (line[12] != ' ' && line[12] != '\0')) {
        snprintf(err, errlen, "malformed status line");
        return -1;
    }
    out->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    out->reason = line[12] ? line + 13 : "";
    line = eol + 2;
    while (*line) {
        eol = strstr(line, "\r\n");
        if (eol)
            *eol = '\0';
        if (*line == ' ' || *line == '\t') {
            snprintf(err, errlen, "folded header line (obsolete line folding is refused)");
            return -1;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            snprintf(err, errlen, "malformed header line");
            return -1;
        }
        *colon = '\0';
        for (char *p = line; *p; p++)
            if (!is_tchar((unsigned char)*p)) {
                snprintf(err, errlen, "invalid character in a header name");
                return -1;
            }
        if (out->n_headers == HWC_HTTP_MAX_HEADERS) {
            snprintf(err, errlen, "more than %d response headers", HWC_HTTP_MAX_HEADERS);
            return -1;
        }
        struct hwc_http_header *h = &out->headers[out->n_headers++];
        h->name = line;
        h->value = trim(colon + 1);
        if (strcasecmp(h->name, "Content-Length") == 0) {
            char *end;
            if (!isdigit((unsigned char)h->value[0]) || strlen(h->value) > 15) {
                snprintf(err, errlen, "invalid Content-Length");
                return -1;
            }
            long long v = strtoll(h->value, &end, 10);
            if (*end || (out->content_length >= 0 && out->content_length != v)) {
                snprintf(err, errlen, "invalid or conflicting Content-Length");
                return -1;
            }
            out->content_length = v;
        } else if (strcasecmp(h->name, "Transfer-Encoding") == 0) {
            out->chunked = true;
        }
        if (!eol)
            break;
        line = eol + 2;
    }
    return 1;
}

const char *hwc_http_header(const struct hwc_http_resp *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

bool hwc_http_has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    const char *p = value;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && (p[m - 1] == ' ' || p[m - 1] == '\t'))
            m--;
        if (m == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p += n;
    }
    return false;
}

void hwc_http_excerpt(const uint8_t *body, size_t len, char *out, size_t max)
{
    size_t n = 0;
    if (max == 0)
        return;
    for (size_t i = 0; i < len && n + 1 < max; i++) {
        unsigned char c = body[i];
        if (c == '\n' || c == '\r') {
            if (n > 0)
                break;
            continue;
        }
        out[n++] = (c < ' ' || c >= 0x7f) ? '?' : (char)c;
    }
    out[n] = '\0';
}
