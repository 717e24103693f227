/* SOCKS5 and HTTP CONNECT into the tailnet through the userspace netstack (see socks5.h).
 * Threads rather than the event loop: the netstack's connections are lwIP descriptors with
 * blocking calls, which the epoll loop cannot watch. */
#include "client/socks5.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client/netstack.h"
#include "common/log.h"

#define HANDSHAKE_TIMEOUT_MS 10000
#define RELAY_POLL_MS 1000              /* how soon a blocked relay thread notices a stop */
#define RELAY_BUF 32768
#define HTTP_HEADER_MAX 8192
#define THREAD_STACK (256 * 1024)

struct proxy_conn;

struct hwc_proxy {
    enum hwc_proxy_kind kind;
    struct hwc_proxy_config cfg;
    int listen_fd, port;
    pthread_t accept_thread;
    atomic_int stopping;
    pthread_mutex_t mu;                 /* guards conns and n_conns */
    pthread_cond_t idle;                /* n_conns reached 0 */
    struct proxy_conn *conns;
    int n_conns;
};

struct proxy_conn {
    struct hwc_proxy *p;
    struct proxy_conn *next, *prev;
    int host_fd;
    int tn;                             /* netstack descriptor, -1 before the dial */
    atomic_int abort;                   /* one direction failed: the other stops too */
    char peer[64], target[300];
};

/* ---- parsers ---- */

int hwc_socks5_parse_greeting(const uint8_t *b, size_t n, int *noauth)
{
    if (n < 1)
        return 0;
    if (b[0] != 5)
        return -1;
    if (n < 2)
        return 0;
    size_t nm = b[1];
    if (nm == 0)
        return -1;
    if (n < 2 + nm)
        return 0;
    *noauth = 0;
    for (size_t i = 0; i < nm; i++)
        if (b[2 + i] == 0)
            *noauth = 1;
    return (int)(2 + nm);
}

int hwc_socks5_parse_request(const uint8_t *b, size_t n, struct hwc_socks5_request *r,
                             uint8_t *rep)
{
    *rep = SOCKS5_REP_FAILURE;
    memset(r, 0, sizeof *r);
    if (n >= 1 && b[0] != 5)
        return -1;
    if (n >= 3 && b[2] != 0)
        return -1;
    if (n < 4)
        return 0;
    r->cmd = b[1];
    r->atyp = b[3];
    size_t off = 4;
    switch (r->atyp) {
    case SOCKS5_ATYP_IPV4:
        if (n < off + 4 + 2)
            return 0;
        memcpy(r->addr, b + off, 4);
        off += 4;
        break;
    case SOCKS5_ATYP_IPV6:
        if (n < off + 16 + 2)
            return 0;
        memcpy(r->addr, b + off, 16);
        off += 16;
        break;
    case SOCKS5_ATYP_DOMAIN: {
        if (n < off + 1)
            return 0;
        size_t len = b[off];
        if (len == 0)
            return -1;
        if (n < off + 1 + len + 2)
            return 0;
        for (size_t i = 0; i < len; i++) {
            uint8_t c = b[off + 1 + i];
            if (c <= ' ' || c >= 0x7f)  /* no NULs, spaces or control bytes in a name */
                return -1;
        }
        memcpy(r->host, b + off + 1, len);
        r->host[len] = 0;
        off += 1 + len;
        break;
    }
    default:
        *rep = SOCKS5_REP_ATYP_UNSUPPORTED;
        return -1;
    }
    r->port = (uint16_t)(b[off] << 8 | b[off + 1]);
    return (int)(off + 2);
}

int hwc_http_connect_parse(const char *b, size_t n, char *host, size_t hostlen, uint16_t *port)
{
    const char *end = memmem(b, n, "\r\n\r\n", 4);
    if (!end)
        return n > HTTP_HEADER_MAX ? -1 : 0;
    size_t total = (size_t)(end - b) + 4;
    if (total > HTTP_HEADER_MAX)
        return -1;
    const char *eol = memmem(b, total, "\r\n", 2);
    size_t linelen = (size_t)(eol - b);
    char line[HTTP_HEADER_MAX];
    memcpy(line, b, linelen);
    line[linelen] = 0;
    if (strlen(line) != linelen)
        return -1;                      /* a NUL inside the request line */
    char *sp1 = strchr(line, ' ');
    if (!sp1)
        return -1;
    *sp1 = 0;
    if (strcmp(line, "CONNECT") != 0)
        return -2;
    char *target = sp1 + 1;
    char *sp2 = strchr(target, ' ');
    if (!sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || strlen(sp2 + 1) != 8)
        return -1;
    *sp2 = 0;
    char *colon;
    const char *h = target;
    if (target[0] == '[') {
        char *rb = strchr(target, ']');
        if (!rb || rb[1] != ':')
            return -1;
        *rb = 0;
        h = target + 1;
        colon = rb + 1;
    } else {
        colon = strrchr(target, ':');
        if (!colon)
            return -1;
        *colon = 0;
    }
    char *pend;
    long pv = strtol(colon + 1, &pend, 10);
    if (colon[1] == 0 || *pend || pv < 1 || pv > 65535)
        return -1;
    size_t hl = strlen(h);
    if (hl == 0 || hl >= hostlen || hl > 255)
        return -1;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= ' ' || (unsigned char)h[i] >= 0x7f)
            return -1;
    memcpy(host, h, hl + 1);
    *port = (uint16_t)pv;
    return (int)total;
}

/* ---- I/O helpers ---- */

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int tn_write_all(struct proxy_conn *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        if (c->abort || c->p->stopping)
            return -1;
        ssize_t w = hwc_netstack_write(c->tn, p, len);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            continue;                   /* send timeout: check for a stop, then retry */
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static void set_host_timeout(int fd, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* ---- resolving and dialing ---- */

#define MAX_ADDRS 8

static int socks_reply_for_errno(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return SOCKS5_REP_REFUSED;
    case ENETUNREACH:
        return SOCKS5_REP_NET_UNREACH;
    case ETIMEDOUT:
    case EHOSTUNREACH:
        return SOCKS5_REP_HOST_UNREACH;
    default:
        return SOCKS5_REP_FAILURE;
    }
}

static const char *reply_text(int rep)
{
    static const char *const t[] = {"succeeded", "general failure", "not allowed",
                                    "network unreachable", "host unreachable",
                                    "connection refused", "TTL expired",
                                    "command not supported", "address type not supported"};
    return rep >= 0 && rep <= 8 ? t[rep] : "?";
}

static int literal_addr(const char *host, uint16_t port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        return 1;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        return 1;
    }
    return 0;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* Name or literal to addresses; 0 = unknown name (*rep says why). */
static int resolve_target(struct hwc_proxy *p, const char *host, uint16_t port,
                          struct sockaddr_storage *out, int *rep)
{
    if (literal_addr(host, port, out))
        return 1;
    int n = 0;
    if (p->cfg.resolve) {
        n = p->cfg.resolve(host, out, MAX_ADDRS, p->cfg.arg);
        if (n > MAX_ADDRS)
            n = MAX_ADDRS;
    }
    if (n <= 0 && p->cfg.system_resolver) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        if (getaddrinfo(host, NULL, &hints, &res) == 0) {
            for (struct addrinfo *ai = res; ai && n < MAX_ADDRS; ai = ai->ai_next) {
                if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                    continue;
                memset(&out[n], 0, sizeof out[n]);
                memcpy(&out[n], ai->ai_addr, ai->ai_addrlen);
                n++;
            }
            freeaddrinfo(res);
        }
    }
    for (int i = 0; i < n; i++)
        set_port(&out[i], port);
    if (n <= 0)
        *rep = SOCKS5_REP_HOST_UNREACH;
    return n > 0 ? n : 0;
}

/* Dials the addresses in order within the connect timeout; a SOCKS5 reply code. */
static int dial_target(struct proxy_conn *c, struct sockaddr_storage *addrs, int n)
{
    struct hwc_proxy *p = c->p;
    int rep = SOCKS5_REP_HOST_UNREACH;
    int budget = p->cfg.connect_timeout_ms;
    for (int i = 0; i < n && budget > 0; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&addrs[i];
        socklen_t len = sa->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6);
        if (p->cfg.reachable && !p->cfg.reachable(sa, p->cfg.arg)) {
            rep = SOCKS5_REP_NET_UNREACH;
            continue;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int e = 0;
        c->tn = hwc_netstack_dial(p->cfg.ns, sa, len, budget, &c->abort, &e);
        if (c->tn >= 0)
            return SOCKS5_REP_OK;
        rep = socks_reply_for_errno(e);
        if (e == ECONNREFUSED || e == ECANCELED)
            return rep;                 /* the host answered: other addresses won't differ */
        clock_gettime(CLOCK_MONOTONIC, &t1);
        budget -= (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    }
    return rep;
}

/* ---- relaying ---- */

/* Tailnet to host, on its own thread. */
static void *relay_down(void *arg)
{
    struct proxy_conn *c = arg;
    uint8_t *buf = malloc(RELAY_BUF);
    while (buf) {
        ssize_t r = hwc_netstack_read(c->tn, buf, RELAY_BUF);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (c->abort || c->p->stopping)
                break;
            continue;
        }
        if (r == 0) {                   /* the tailnet side finished: pass the FIN on */
            shutdown(c->host_fd, SHUT_WR);
            free(buf);
            return NULL;
        }
        if (r < 0 || write_all(c->host_fd, buf, (size_t)r) != 0)
            break;
    }
    free(buf);
    c->abort = 1;
    shutdown(c->host_fd, SHUT_RDWR);    /* wakes the other direction's read */
    return NULL;
}

/* Host to tailnet on the connection's thread, the other direction on a second thread. */
static void relay(struct proxy_conn *c, const uint8_t *early, size_t early_len)
{
    hwc_netstack_conn_timeouts(c->tn, RELAY_POLL_MS, RELAY_POLL_MS);
    set_host_timeout(c->host_fd, 0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    pthread_t down;
    int have_down = pthread_create(&down, &attr, relay_down, c) == 0;
    pthread_attr_destroy(&attr);
    if (!have_down) {
        log_warn("proxy %s: no thread for %s", c->peer, c->target);
        return;
    }
    if (early_len && tn_write_all(c, early, early_len) != 0)
        c->abort = 1;
    uint8_t *buf = malloc(RELAY_BUF);
    while (buf && !c->abort) {
        ssize_t r = recv(c->host_fd, buf, RELAY_BUF, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {                   /* the client finished sending: half-close */
            hwc_netstack_shutdown_write(c->tn);
            break;
        }
        if (r < 0 || tn_write_all(c, buf, (size_t)r) != 0) {
            c->abort = 1;
            break;
        }
    }
    free(buf);
    pthread_join(down, NULL);
}

/* ---- the two protocols ---- */

/* Reads until parse() completes; the bytes past the parsed part stay in buf. */
static int read_until(struct proxy_conn *c, uint8_t *buf, size_t cap, size_t *have)
{
    if (*have >= cap)
        return -1;
    ssize_t r = recv(c->host_fd, buf + *have, cap - *have, 0);
    if (r <= 0)
        return -1;
    *have += (size_t)r;
    return 0;
}

static void socks_reply(struct proxy_conn *c, int rep)
{
    uint8_t msg[10] = {5, (uint8_t)rep, 0, SOCKS5_ATYP_IPV4, 0, 0, 0, 0, 0, 0};
    write_all(c->host_fd, msg, sizeof msg);
}

static void serve_socks5(struct proxy_conn *c)
{
    uint8_t buf[600];
    size_t have = 0;
    int noauth = 0, used;
    while ((used = hwc_socks5_parse_greeting(buf, have, &noauth)) == 0)
        if (read_until(c, buf, sizeof buf, &have) != 0)
            return;
    if (used < 0) {
        log_info("socks5 %s: not a SOCKS5 greeting; closed", c->peer);
        return;
    }
    if (!noauth) {
        uint8_t no[2] = {5, 0xFF};
        write_all(c->host_fd, no, 2);
        log_info("socks5 %s: client offers no method without authentication; refused", c->peer);
        return;
    }
    uint8_t ok[2] = {5, 0};
    if (write_all(c->host_fd, ok, 2) != 0)
        return;
    memmove(buf, buf + used, have - (size_t)used);
    have -= (size_t)used;

    struct hwc_socks5_request req;
    uint8_t rep;
    while ((used = hwc_socks5_parse_request(buf, have, &req, &rep)) == 0)
        if (read_until(c, buf, sizeof buf, &have) != 0)
            return;
    if (used < 0) {
        socks_reply(c, rep);
        log_info("socks5 %s: malformed request (%s); closed", c->peer, reply_text(rep));
        return;
    }
    char host[256];
    if (req.atyp == SOCKS5_ATYP_DOMAIN)
        snprintf(host, sizeof host, "%s", req.host);
    else
        inet_ntop(req.atyp == SOCKS5_ATYP_IPV4 ? AF_INET : AF_INET6, req.addr, host, sizeof host);
    snprintf(c->target, sizeof c->target, req.atyp == SOCKS5_ATYP_IPV6 ? "[%s]:%u" : "%s:%u",
             host, req.port);
    if (req.cmd != SOCKS5_CMD_CONNECT) {
        socks_reply(c, SOCKS5_REP_CMD_UNSUPPORTED);
        log_info("socks5 %s: command %u for %s not supported (CONNECT only)", c->peer, req.cmd,
                 c->target);
        return;
    }
    struct sockaddr_storage addrs[MAX_ADDRS];
    int r = SOCKS5_REP_HOST_UNREACH;
    int n = resolve_target(c->p, host, req.port, addrs, &r);
    if (n > 0)
        r = dial_target(c, addrs, n);
    if (r != SOCKS5_REP_OK) {
        socks_reply(c, r);
        log_info("socks5 %s: %s: %s", c->peer, c->target,
                 n > 0 ? reply_text(r) : "unknown name");
        return;
    }
    socks_reply(c, SOCKS5_REP_OK);
    log_debug("socks5 %s: connected to %s", c->peer, c->target);
    relay(c, buf + used, have - (size_t)used);
}

static void http_reply(struct proxy_conn *c, const char *status, const char *why)
{
    char msg[512];
    int len = snprintf(msg, sizeof msg,
                       "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                       "Connection: close\r\n%s\r\n%s",
                       status, strlen(why), strncmp(status, "405", 3) == 0 ? "Allow: CONNECT\r\n" : "",
                       why);
    write_all(c->host_fd, msg, (size_t)len);
}

static void serve_http(struct proxy_conn *c)
{
    uint8_t buf[HTTP_HEADER_MAX + 1];
    size_t have = 0;
    char host[256];
    uint16_t port = 0;
    int used;
    while ((used = hwc_http_connect_parse((const char *)buf, have, host, sizeof host, &port)) == 0)
        if (read_until(c, buf, sizeof buf, &have) != 0)
            return;
    if (used == -2) {
        http_reply(c, "405 Method Not Allowed", "only CONNECT is supported\n");
        return;
    }
    if (used < 0) {
        http_reply(c, "400 Bad Request", "expected CONNECT host:port HTTP/1.1\n");
        log_info("http-proxy %s: malformed request; closed", c->peer);
        return;
    }
    snprintf(c->target, sizeof c->target, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    struct sockaddr_storage addrs[MAX_ADDRS];
    int r = SOCKS5_REP_HOST_UNREACH;
    int n = resolve_target(c->p, host, port, addrs, &r);
    if (n > 0)
        r = dial_target(c, addrs, n);
    if (r != SOCKS5_REP_OK) {
        char why[400];
        snprintf(why, sizeof why, "%s: %s\n", c->target, n > 0 ? reply_text(r) : "unknown name");
        http_reply(c, r == SOCKS5_REP_HOST_UNREACH && n > 0 ? "504 Gateway Timeout" : "502 Bad Gateway", why);
        log_info("http-proxy %s: %s", c->peer, why);
        return;
    }
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    if (write_all(c->host_fd, ok, sizeof ok - 1) != 0)
        return;
    relay(c, buf + used, have - (size_t)used);
}

/* ---- connections and the listener ---- */

static void *conn_main(void *arg)
{
    struct proxy_conn *c = arg;
    struct hwc_proxy *p = c->p;
    set_host_timeout(c->host_fd, HANDSHAKE_TIMEOUT_MS);
    if (p->kind == HWC_PROXY_SOCKS5)
        serve_socks5(c);
    else
        serve_http(c);
    if (c->tn >= 0)
        hwc_netstack_close(c->tn);
    pthread_mutex_lock(&p->mu);
    close(c->host_fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (--p->n_conns == 0)
        pthread_cond_broadcast(&p->idle);
    pthread_mutex_unlock(&p->mu);
    free(c);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct hwc_proxy *p = arg;
    const char *name = p->kind == HWC_PROXY_SOCKS5 ? "socks5" : "http-proxy";
    while (!p->stopping) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(p->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (p->stopping)
                break;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            log_warn("%s: accept: %s", name, strerror(errno));
            usleep(100000);             /* EMFILE and friends: do not spin */
            continue;
        }
        struct proxy_conn *c = calloc(1, sizeof *c);
        pthread_mutex_lock(&p->mu);
        if (!c || p->n_conns >= p->cfg.max_conns) {
            pthread_mutex_unlock(&p->mu);
            log_warn("%s: %d connections open (the limit); refused one", name, p->cfg.max_conns);
            close(fd);
            free(c);
            continue;
        }
        c->p = p;
        c->host_fd = fd;
        c->tn = -1;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char ip[INET6_ADDRSTRLEN] = "?";
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
        else
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%u", ip,
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
        c->next = p->conns;
        if (p->conns)
            p->conns->prev = c;
        p->conns = c;
        p->n_conns++;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, THREAD_STACK);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        int e = pthread_create(&t, &attr, conn_main, c);
        pthread_attr_destroy(&attr);
        if (e != 0) {
            p->conns = c->next;
            if (c->next)
                c->next->prev = NULL;
            p->n_conns--;
            close(fd);
            free(c);
            log_warn("%s: no thread for a connection: %s", name, strerror(e));
        }
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

static int parse_listen(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host)
        return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    char *h = host;
    if (h[0] == '[') {
        size_t hl = strlen(h);
        if (hl < 3 || h[hl - 1] != ']')
            return -1;
        h[hl - 1] = 0;
        h++;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return -1;
    if (strcmp(h, "localhost") == 0)
        h = "127.0.0.1";
    if (!literal_addr(h, (uint16_t)port, ss))
        return -1;
    *len = ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    return 0;
}

struct hwc_proxy *hwc_proxy_start(enum hwc_proxy_kind kind, const char *addr,
                                  const struct hwc_proxy_config *cfg, char *err, size_t errlen)
{
    const char *name = kind == HWC_PROXY_SOCKS5 ? "socks5" : "http-proxy";
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_listen(addr, &ss, &sl) != 0) {
        snprintf(err, errlen, "%s: listen address \"%s\": expected IP:PORT or [IPv6]:PORT",
                 name, addr);
        return NULL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 128) != 0) {
        snprintf(err, errlen, "%s: listen on %s: %s", name, addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    struct hwc_proxy *p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    p->kind = kind;
    p->cfg = *cfg;
    if (p->cfg.connect_timeout_ms <= 0)
        p->cfg.connect_timeout_ms = HWC_PROXY_CONNECT_TIMEOUT_MS;
    if (p->cfg.max_conns <= 0)
        p->cfg.max_conns = HWC_PROXY_MAX_CONNS;
    p->listen_fd = fd;
    p->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->idle, NULL);
    if (pthread_create(&p->accept_thread, NULL, accept_main, p) != 0) {
        snprintf(err, errlen, "%s: cannot start its thread", name);
        close(fd);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->idle);
        free(p);
        return NULL;
    }
    int loopback = ss.ss_family == AF_INET
                       ? (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127
                       : IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
    if (!loopback)
        log_warn("%s: listening on %s, not loopback: anyone who reaches it reaches the tailnet",
                 name, addr);
    log_info("%s: proxy into the tailnet on port %d", name, p->port);
    return p;
}

int hwc_proxy_port(const struct hwc_proxy *p)
{
    return p->port;
}

void hwc_proxy_stop(struct hwc_proxy *p)
{
    if (!p)
        return;
    p->stopping = 1;
    shutdown(p->listen_fd, SHUT_RDWR);  /* wakes accept() */
    pthread_join(p->accept_thread, NULL);
    close(p->listen_fd);
    pthread_mutex_lock(&p->mu);
    for (struct proxy_conn *c = p->conns; c; c = c->next) {
        c->abort = 1;
        shutdown(c->host_fd, SHUT_RDWR);
    }
    while (p->n_conns > 0)
        pthread_cond_wait(&p->idle, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->idle);
    free(p);
}
