#include "server/http_public.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>
#include <sodium.h>

#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "server/derp_embed.h"
#include "server/httputil.h"
#include "server/register_page.h"
#include "server/server.h"
#include "server/ts2021.h"
#include "server/verify.h"

/* Bounds for the public side. Clients hold few plain-HTTP connections (/key, then the
 * /ts2021 upgrade); the limits keep a flood from exhausting descriptors or memory. */
/* Upgraded /ts2021 connections stay counted by libmicrohttpd for their whole life: the
 * limits must hold a large tailnet, and many devices can share one (CG)NAT address. */
#define PUBLIC_CONNECTION_LIMIT 65536
#define PUBLIC_PER_IP_LIMIT 16384
#define PUBLIC_IDLE_TIMEOUT_S 30
/* libmicrohttpd keeps this pool for an upgraded /ts2021 connection's whole life. A
 * Tailscale client's requests carry well under 2 KiB of headers; 16 KiB (libmicrohttpd's
 * default is 32) still leaves room for a browser's on the register page, and takes
 * ~7 KiB less resident memory per connected node (docs/performance.md). Over TLS the
 * rest of the pool becomes the upgraded connection's forwarding buffers, so HTTPS keeps
 * the default. */
#define PUBLIC_CONN_MEMORY (16 * 1024)
#define PUBLIC_CONN_MEMORY_TLS (32 * 1024)

/* Headscale's NoiseCapabilityVersion: older clients predate /ts2021 and get no key. */
#define NOISE_CAPABILITY_VERSION 39

int hw_split_host_port(const char *addr, char *host, size_t host_len, char *port,
                       size_t port_len, char *err, size_t err_len)
{
    const char *colon;
    const char *h = addr;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':') {
            snprintf(err, err_len, "\"%s\": expected [IPv6]:PORT", addr);
            return -1;
        }
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon) {
            snprintf(err, err_len, "\"%s\": expected HOST:PORT (e.g. 0.0.0.0:8080)", addr);
            return -1;
        }
        hlen = (size_t)(colon - addr);
        if (memchr(addr, ':', hlen)) {
            snprintf(err, err_len, "\"%s\": an IPv6 address needs brackets, e.g. [::]:8080", addr);
            return -1;
        }
    }
    const char *p = colon + 1;
    char *end;
    errno = 0;
    long n = strtol(p, &end, 10);
    if (!*p || *end || errno || n < 0 || n > 65535) {
        snprintf(err, err_len, "\"%s\": port must be a number from 0 to 65535", addr);
        return -1;
    }
    if (hlen + 1 > host_len || strlen(p) + 1 > port_len) {
        snprintf(err, err_len, "\"%s\": too long", addr);
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    snprintf(port, port_len, "%s", p);
    return 0;
}

static void sockname_text(int fd, char *out, size_t out_len)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(out, out_len, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

int hw_listen_tcp(const char *addr, char *bound, size_t bound_len, char *err, size_t err_len)
{
    char host[256], port[16], why[200];
    if (hw_split_host_port(addr, host, sizeof host, port, sizeof port, why, sizeof why) < 0) {
        snprintf(err, err_len, "cannot listen on %s", why);
        return -1;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, err_len, "cannot listen on %s: %s", addr, gai_strerror(gai));
        return -1;
    }
    /* With no host, prefer one dual-stack IPv6 socket (what Go's ":8080" gives), else
     * the first address that binds. */
    struct addrinfo *order[2] = {NULL, NULL};
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (!host[0] && ai->ai_family == AF_INET6 && !order[0])
            order[0] = ai;
    }
    int fd = -1, saved = 0;
    for (int pass = 0; pass < 2 && fd < 0; pass++) {
        for (struct addrinfo *ai = pass == 0 ? order[0] : res; ai; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) {
                saved = errno;
                if (pass == 0)
                    break;
                continue;
            }
            int one = 1, zero = 0;
            /* Restarting must not wait out TIME_WAIT of the previous run's connections. */
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (ai->ai_family == AF_INET6 && !host[0])
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
            /* A deep queue: after a restart every client reconnects within seconds. */
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
                break;
            saved = errno;
            close(fd);
            fd = -1;
            if (pass == 0)
                break;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, err_len, "cannot listen on %s: %s", addr, strerror(saved));
        return -1;
    }
    sockname_text(fd, bound, bound_len);
    return fd;
}

/* ---- pages ---- */

/* Called once the headers are in (none of these requests has a body). method is
 * already checked against the page's own list. */
typedef enum MHD_Result (*page_fn)(struct hw_server *s, struct MHD_Connection *conn,
                                   const char *method);

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    return hw_http_reply(conn, status, "text/plain; charset=utf-8", text, strlen(text));
}

static enum MHD_Result page_health(struct hw_server *s, struct MHD_Connection *conn,
                                   const char *method)
{
    /* Like Headscale: pass only when the store answers a query, so a load balancer
     * stops sending clients to a server whose disk went away. */
    pthread_mutex_lock(&s->lock);
    int version = hw_db_schema_version(s->db);
    pthread_mutex_unlock(&s->lock);
    bool ok = version >= 0;
    if (!ok)
        log_error("health check: store failed: %s", hw_db_errmsg(s->db));
    return hw_http_reply_json(conn, ok ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR,
                              json_pack("{s:s}", "status", ok ? "pass" : "fail"),
                              "application/health+json; charset=utf-8");
}

static enum MHD_Result page_key(struct hw_server *s, struct MHD_Connection *conn,
                                const char *method)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "v");
    if (!v || !*v)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST, "capability version must be set\n");
    char *end;
    errno = 0;
    long capver = strtol(v, &end, 10);
    if (*end || errno || capver < 0 || capver > INT_MAX)
        return reply_text(conn, MHD_HTTP_BAD_REQUEST, "invalid capability version\n");
    if (capver < NOISE_CAPABILITY_VERSION)
        return reply_text(conn, MHD_HTTP_OK, "");

    char pub[5 + 64 + 1] = "mkey:";
    hw_hex_encode(s->noise_public, 32, pub + 5);
    /* legacyPublicKey is the pre-Noise NaCl key: current clients only need it present
     * and zero. */
    static const char zero_key[] =
        "mkey:0000000000000000000000000000000000000000000000000000000000000000";
    return hw_http_reply_json(conn, MHD_HTTP_OK,
                              json_pack("{s:s, s:s}", "legacyPublicKey", zero_key, "publicKey", pub),
                              NULL);
}

static char *html_escape(const char *in)
{
    size_t cap = strlen(in) * 6 + 1, n = 0;
    char *out = hw_malloc(cap);
    for (const char *p = in; *p; p++) {
        const char *rep = NULL;
        switch (*p) {
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '&': rep = "&amp;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        }
        if (rep) {
            memcpy(out + n, rep, strlen(rep));
            n += strlen(rep);
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
    return out;
}

static enum MHD_Result page_root(struct hw_server *s, struct MHD_Connection *conn,
                                 const char *method)
{
    char *url = html_escape(s->cfg->server_url ? s->cfg->server_url : "");
    char *page = hw_sprintf(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Headwater</title>"
        "<meta name=\"robots\" content=\"noindex\"></head>\n<body>\n<h1>Headwater</h1>\n"
        "<p>A Tailscale coordination server (headwater %s).</p>\n"
        "<p>To join this tailnet: <code>tailscale up --login-server %s</code></p>\n"
        "</body></html>\n", HW_VERSION, url);
    enum MHD_Result rc = hw_http_reply(conn, MHD_HTTP_OK, "text/html; charset=utf-8", page,
                                       strlen(page));
    free(page);
    free(url);
    return rc;
}

static enum MHD_Result page_robots(struct hw_server *s, struct MHD_Connection *conn,
                                   const char *method)
{
    return reply_text(conn, MHD_HTTP_OK, "User-agent: *\nDisallow: /\n");
}

static enum MHD_Result page_ts2021(struct hw_server *s, struct MHD_Connection *conn,
                                   const char *method)
{
    /* The client sends no body (Content-Length: 0): the upgrade is answered on the first
     * call, and the socket then leaves libmicrohttpd for the event loop. */
    return (enum MHD_Result)hw_ts2021_handle(s->ts2021, conn, method);
}

/* The built-in relay's pages answer 404 when it is off, as Headscale has no such routes
 * then; they check methods themselves, the way derper does. */
static enum MHD_Result page_derp(struct hw_server *s, struct MHD_Connection *conn,
                                 const char *method)
{
    return (enum MHD_Result)hw_derp_page(s->derp, conn, method);
}

static enum MHD_Result page_derp_probe(struct hw_server *s, struct MHD_Connection *conn,
                                       const char *method)
{
    return (enum MHD_Result)hw_derp_probe_page(s->derp, conn, method);
}

static enum MHD_Result page_generate_204(struct hw_server *s, struct MHD_Connection *conn,
                                         const char *method)
{
    return (enum MHD_Result)hw_derp_generate_204(s->derp, conn, method);
}

/* Exact paths, each with the methods it answers ("*": the page decides). */
static const struct {
    const char *path;
    const char *methods;
    page_fn fn;
} pages[] = {
    {"/", "GET, HEAD", page_root},
    {"/health", "GET, HEAD", page_health},
    {"/key", "GET, HEAD", page_key},
    {"/robots.txt", "GET, HEAD", page_robots},
    {"/ts2021", "POST, GET", page_ts2021},   /* native upgrade / WebSocket */
    {"/derp", "*", page_derp},               /* Upgrade: DERP / WebSocket */
    {"/derp/probe", "*", page_derp_probe},
    {"/derp/latency-check", "*", page_derp_probe},
    {"/generate_204", "*", page_generate_204},
};

static bool method_listed(const char *methods, const char *method)
{
    if (strcmp(methods, "*") == 0)
        return true;
    size_t n = strlen(method);
    for (const char *p = methods; (p = strstr(p, method)) != NULL; p += n) {
        if ((p == methods || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
            return true;
    }
    return false;
}

static enum MHD_Result reply_405(struct MHD_Connection *conn, const char *allow)
{
    static const char text[] = "method not allowed\n";
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    struct hw_server *s = cls;
    if (strcmp(url, "/verify") == 0)
        return (enum MHD_Result)hw_verify_handle(s, conn, method, upload_data, upload_data_size,
                                                 req_cls);
    if (strncmp(url, "/register/", 10) == 0 && strcmp(method, MHD_HTTP_METHOD_GET) == 0)
        return (enum MHD_Result)hw_register_page(s, conn, url + 10);
    /* None of these pages reads a body: answer on the first call, when the headers are
     * in. libmicrohttpd then closes the connection instead of reading an unread body. */
    for (size_t i = 0; i < HW_ARRAY_LEN(pages); i++) {
        if (strcmp(url, pages[i].path) != 0)
            continue;
        if (!method_listed(pages[i].methods, method))
            return reply_405(conn, pages[i].methods);
        return pages[i].fn(s, conn, method);
    }
    return reply_text(conn, MHD_HTTP_NOT_FOUND, "404 page not found\n");
}

/* Only /verify keeps per-request state (its body). */
static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code)
{
    if (*req_cls)
        hw_verify_request_done(*req_cls);
    *req_cls = NULL;
}

/* Reads a PEM file named by config key `key` for the TLS listener. */
static char *read_pem(const char *key, const char *path, const char *marker, char *err,
                      size_t err_len)
{
    size_t len = 0;
    char *pem = hw_read_file(path, &len);
    if (!pem) {
        snprintf(err, err_len, "%s %s: cannot read: %s", key, path, strerror(errno));
        return NULL;
    }
    if (!strstr(pem, "-----BEGIN ") || !strstr(pem, marker)) {
        snprintf(err, err_len, "%s %s: not a PEM file holding a %s", key, path,
                 strcmp(key, "tls_cert_path") == 0 ? "certificate" : "private key");
        free(pem);
        return NULL;
    }
    return pem;
}

int hw_http_public_start(struct hw_server *s, char *err, size_t err_len)
{
    /* One internal epoll thread: the handlers here are short, and long-lived traffic
     * (Noise sessions) leaves libmicrohttpd through the upgrade for the event loop. */
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_ALLOW_UPGRADE;
    int fd = s->public_fd;
    const struct hw_config *cfg = s->cfg;
    char *cert = NULL, *key = NULL;
    struct MHD_OptionItem tls_options[3] = {{MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL},
                                            {MHD_OPTION_END, 0, NULL}};
    if (cfg->tls_cert_path && cfg->tls_key_path) {
        cert = read_pem("tls_cert_path", cfg->tls_cert_path, "CERTIFICATE-----", err, err_len);
        key = cert ? read_pem("tls_key_path", cfg->tls_key_path, "PRIVATE KEY-----", err, err_len)
                   : NULL;
        if (!cert || !key) {
            free(cert);
            close(fd);
            s->public_fd = -1;
            return -1;
        }
        /* libmicrohttpd's TLS: upgraded connections (/ts2021, /derp) reach the loop as
         * plain sockets that its thread encrypts, so nothing past here knows about TLS. */
        flags |= MHD_USE_TLS;
        tls_options[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, cert};
        tls_options[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, key};
        if (cfg->server_url && strncmp(cfg->server_url, "https://", 8) != 0)
            log_warn("tls_cert_path is set but server_url %s is not https://: clients will "
                     "speak plain HTTP to a TLS listener and fail", cfg->server_url);
    }
    s->public_http = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, hw_mhd_logger, (void *)"public http",
        MHD_OPTION_ARRAY, tls_options,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)PUBLIC_CONNECTION_LIMIT,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)PUBLIC_PER_IP_LIMIT,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)PUBLIC_IDLE_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)((flags & MHD_USE_TLS) ? PUBLIC_CONN_MEMORY_TLS : PUBLIC_CONN_MEMORY),
        MHD_OPTION_END);
    /* libmicrohttpd owns the socket from here on: it closes it when stopped and on
     * almost every failure path, so closing it again could hit a reused descriptor. */
    s->public_fd = -1;
    /* libmicrohttpd keeps pointing at the PEM text for its lifetime. */
    s->tls_cert_pem = cert;
    s->tls_key_pem = key;
    if (!s->public_http) {
        snprintf(err, err_len, "cannot start the %s listener on %s (see the log above)",
                 (flags & MHD_USE_TLS) ? "HTTPS" : "HTTP", s->cfg->listen_addr);
        return -1;
    }
    return 0;
}

void hw_http_public_stop(struct hw_server *s)
{
    if (s->public_http) {
        MHD_stop_daemon(s->public_http);
        s->public_http = NULL;
    }
    if (s->tls_key_pem)
        sodium_memzero(s->tls_key_pem, strlen(s->tls_key_pem));
    free(s->tls_key_pem);
    free(s->tls_cert_pem);
    s->tls_key_pem = s->tls_cert_pem = NULL;
}
