/* HTTP over the admin unix socket, with libcurl (CURLOPT_UNIX_SOCKET_PATH). */
#include "api/hwctl.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "common/util.h"
#include "common/version.h"

#define HWCTL_MAX_ANSWER (64u << 20)   /* a node list of a very large tailnet fits */
#define HWCTL_TIMEOUT_MS 60000L
#define HWCTL_CONNECT_TIMEOUT_MS 10000L

struct buf {
    char *data;
    size_t len, cap;
    bool too_big;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct buf *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n > HWCTL_MAX_ANSWER) {
        b->too_big = true;
        return 0;                      /* makes curl stop with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return 0;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Folds a server message to one line of sane length for the terminal. */
static void one_line(const char *in, char *out, size_t out_len)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < out_len; i++) {
        unsigned char c = (unsigned char)in[i];
        out[j++] = (c == '\n' || c == '\r' || c == '\t') ? ' ' : (char)c;
    }
    out[j] = '\0';
    while (j > 0 && out[j - 1] == ' ')
        out[--j] = '\0';
}

/* The request itself. Returns 0 with *answer on 2xx; otherwise -1 with a one-line
 * reason in why (without the "hwctl: " prefix), and *not_running set when nothing
 * listens on the socket (no socket file, or connection refused). */
static int do_call(const char *sock, const char *method, const char *path, json_t *body,
                   json_t **answer, char *why, size_t why_len, bool *not_running)
{
    struct sockaddr_un sa;
    *answer = NULL;
    *not_running = false;
    if (strlen(sock) >= sizeof(sa.sun_path)) {
        snprintf(why, why_len,
                 "socket path %s is too long (%zu bytes; a unix socket path has at most %zu): "
                 "use a shorter unix_socket path",
                 sock, strlen(sock), sizeof(sa.sun_path) - 1);
        return -1;
    }

    CURL *curl = curl_easy_init();
    if (!curl) {
        snprintf(why, why_len, "cannot start libcurl (out of memory?)");
        return -1;
    }
    char *url = hw_sprintf("http://localhost%s", path);
    char *body_text = NULL;
    struct curl_slist *headers = NULL;
    struct buf b = {0};
    char curl_err[CURL_ERROR_SIZE] = "";
    int rc = -1;

    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:");   /* no 100-continue round trip */
    curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, sock);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROXY, "");         /* never an http_proxy from env */
    curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, HWCTL_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, HWCTL_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "hwctl/" HW_VERSION);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
    if (body) {
        body_text = json_dumps(body, JSON_COMPACT);
        if (!body_text) {
            snprintf(why, why_len, "cannot encode the request as JSON");
            goto out;
        }
        headers = curl_slist_append(headers, "Content-Type: application/json");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body_text);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body_text));
    }
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);

    CURLcode cc = curl_easy_perform(curl);
    if (cc != CURLE_OK) {
        long os_errno = 0;
        curl_easy_getinfo(curl, CURLINFO_OS_ERRNO, &os_errno);
        if (cc == CURLE_COULDNT_CONNECT && (os_errno == EACCES || os_errno == EPERM))
            snprintf(why, why_len,
                     "cannot reach headwater at %s: permission denied: run hwctl as root or "
                     "as a member of the socket's group (connect: %s)",
                     sock, strerror((int)os_errno));
        else if (cc == CURLE_COULDNT_CONNECT) {
            /* A stale socket file refuses; a missing one is ENOENT. Both: no server. */
            *not_running = os_errno == ENOENT || os_errno == ECONNREFUSED;
            snprintf(why, why_len, "cannot reach headwater at %s: is it running? (connect: %s)",
                     sock, os_errno ? strerror((int)os_errno) : curl_easy_strerror(cc));
        } else if (cc == CURLE_OPERATION_TIMEDOUT)
            snprintf(why, why_len,
                     "headwater at %s did not answer %s %s within %ld s: see its log",
                     sock, method, path, HWCTL_TIMEOUT_MS / 1000);
        else if (cc == CURLE_GOT_NOTHING)
            snprintf(why, why_len,
                     "headwater at %s closed the connection without answering %s %s: see its log",
                     sock, method, path);
        else if (cc == CURLE_WRITE_ERROR && b.too_big)
            snprintf(why, why_len, "the answer to %s %s is larger than %u MiB: refused",
                     method, path, HWCTL_MAX_ANSWER >> 20);
        else
            snprintf(why, why_len, "%s %s to headwater at %s failed: %s", method, path, sock,
                     curl_err[0] ? curl_err : curl_easy_strerror(cc));
        goto out;
    }

    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    json_t *v = NULL;
    json_error_t jerr;
    if (b.len > 0)
        v = json_loadb(b.data, b.len, 0, &jerr);
    if (status >= 200 && status < 300) {
        if (b.len == 0) {
            v = json_object();
        } else if (!v) {
            snprintf(why, why_len, "headwater answered %s %s with invalid JSON (%s): is hwctl "
                     "the same version as the server?", method, path, jerr.text);
            goto out;
        }
        *answer = v;
        rc = 0;
        goto out;
    }
    json_t *e = v ? json_object_get(v, "error") : NULL;
    if (json_is_string(e) && json_string_length(e) > 0) {
        one_line(json_string_value(e), why, why_len);
    } else {
        char snippet[200];
        one_line(b.data ? b.data : "", snippet, sizeof(snippet));
        if (status == 404 || status == 405)
            snprintf(why, why_len, "headwater at %s does not know %s %s (HTTP %ld): is the "
                     "server older than hwctl " HW_VERSION "?", sock, method, path, status);
        else
            snprintf(why, why_len, "headwater answered %s %s with HTTP %ld%s%s", method, path,
                     status, snippet[0] ? ": " : " and no error message", snippet);
    }
    json_decref(v);

out:
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    free(body_text);
    free(url);
    free(b.data);
    return rc;
}

int hwctl_call(struct hwctl_ctx *ctx, const char *method, const char *path, json_t *body,
               json_t **answer)
{
    char why[1024];
    const char *sock = hwctl_socket_path(ctx);
    *answer = NULL;
    if (!sock)
        return -1;
    bool not_running;
    if (do_call(sock, method, path, body, answer, why, sizeof(why), &not_running) < 0) {
        hwctl_err("%s", why);
        return -1;
    }
    return 0;
}

int hwctl_get(struct hwctl_ctx *ctx, const char *path, const char *qname, const char *qvalue,
              json_t **answer)
{
    if (!qvalue || !*qvalue)
        return hwctl_call(ctx, "GET", path, NULL, answer);
    char *esc = curl_easy_escape(NULL, qvalue, 0);
    if (!esc) {
        hwctl_err("out of memory");
        return -1;
    }
    char *full = hw_sprintf("%s?%s=%s", path, qname, esc);
    curl_free(esc);
    int rc = hwctl_call(ctx, "GET", full, NULL, answer);
    free(full);
    return rc;
}

int hwctl_post(struct hwctl_ctx *ctx, const char *path, json_t *body, json_t **answer)
{
    int rc = hwctl_call(ctx, "POST", path, body, answer);
    json_decref(body);
    return rc;
}

int hwctl_call_quiet(struct hwctl_ctx *ctx, const char *method, const char *path,
                     json_t **answer, char *why, size_t why_len)
{
    const char *sock = ctx->socket_path;
    *answer = NULL;
    if (!sock) {
        snprintf(why, why_len, "no socket");
        return -1;
    }
    bool not_running;
    return do_call(sock, method, path, NULL, answer, why, why_len, &not_running);
}

int hwctl_post_if_running(struct hwctl_ctx *ctx, const char *path, json_t *body, json_t **answer,
                          char *why, size_t why_len)
{
    const char *sock = hwctl_socket_path(ctx);
    *answer = NULL;
    if (!sock) {
        json_decref(body);
        return -1;
    }
    bool not_running;
    int rc = do_call(sock, "POST", path, body, answer, why, why_len, &not_running);
    json_decref(body);
    if (rc == 0)
        return 0;
    if (not_running)
        return 1;
    hwctl_err("%s", why);
    return -1;
}
