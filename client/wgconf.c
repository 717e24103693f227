/* wg-quick style configuration and the `hwclient wg` runner: see wgconf.h. */
#include "client/wgconf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "client/wgdev.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"

static int fail(char *err, size_t errlen, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char *err, size_t errlen, const char *file, int line, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "%s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    return s;
}

static int parse_key(const char *v, uint8_t out[32])
{
    size_t n = 0;
    if (strlen(v) != 44 || sodium_base642bin(out, 32, v, 44, NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
        n != 32)
        return -1;
    return 0;
}

static int parse_int(const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return -1;
    *out = (int)x;
    return 0;
}

/* Comma-separated prefixes appended to list. */
static int parse_prefixes(char *v, struct hwc_prefix *list, size_t *n, size_t max, const char **bad)
{
    for (char *save = NULL, *tok = strtok_r(v, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        tok = trim(tok);
        if (!*tok)
            continue;
        if (*n >= max || hwc_prefix_parse(tok, &list[*n]) != 0) {
            *bad = tok;
            return -1;
        }
        (*n)++;
    }
    return 0;
}

static int parse_endpoint(const char *v, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *colon;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close || close[1] != ':' || (size_t)(close - v - 1) >= sizeof host)
            return -1;
        memcpy(host, v + 1, (size_t)(close - v - 1));
        host[close - v - 1] = 0;
        colon = close + 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon || (size_t)(colon - v) >= sizeof host)
            return -1;
        memcpy(host, v, (size_t)(colon - v));
        host[colon - v] = 0;
    }
    int port;
    if (parse_int(colon + 1, 1, 65535, &port) != 0)
        return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *len = sizeof *in4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof *in6;
        return 0;
    }
    return -1;
}

int hwc_wgconf_parse(const char *text, const char *file, struct hwc_wgconf *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->mtu = 1420;
    char *copy = hw_strdup(text);
    enum { NONE, IFACE, PEER } section = NONE;
    bool have_priv = false;
    int line = 0, rc = -1;
    struct hwc_wgconf_peer *peer = NULL;
    for (char *l = copy, *next; l; l = next) {
        next = strchr(l, '\n');
        if (next)
            *next++ = 0;
        line++;
        char *hash = strchr(l, '#');
        if (hash)
            *hash = 0;
        char *s = trim(l);
        if (!*s)
            continue;
        if (strcasecmp(s, "[Interface]") == 0) {
            section = IFACE;
            continue;
        }
        if (strcasecmp(s, "[Peer]") == 0) {
            section = PEER;
            c->peers = realloc(c->peers, (c->n_peers + 1) * sizeof *c->peers);
            peer = &c->peers[c->n_peers++];
            memset(peer, 0, sizeof *peer);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            fail(err, errlen, file, line, "expected \"Key = Value\" or a [Section], got \"%.40s\"", s);
            goto out;
        }
        *eq = 0;
        char *k = trim(s), *v = trim(eq + 1);
        const char *bad = NULL;
        if (section == NONE) {
            fail(err, errlen, file, line, "%s outside [Interface] or [Peer]", k);
            goto out;
        }
        if (section == IFACE && strcasecmp(k, "PrivateKey") == 0) {
            if (parse_key(v, c->private_key) != 0) {
                fail(err, errlen, file, line, "PrivateKey: expected 44 characters of base64 (wg genkey)");
                goto out;
            }
            have_priv = true;
        } else if (section == IFACE && strcasecmp(k, "ListenPort") == 0) {
            if (parse_int(v, 0, 65535, &c->listen_port) != 0) {
                fail(err, errlen, file, line, "ListenPort %s: expected 0 to 65535", v);
                goto out;
            }
        } else if (section == IFACE && strcasecmp(k, "MTU") == 0) {
            if (parse_int(v, 576, 65535, &c->mtu) != 0) {
                fail(err, errlen, file, line, "MTU %s: expected 576 to 65535", v);
                goto out;
            }
        } else if (section == IFACE && strcasecmp(k, "Address") == 0) {
            if (parse_prefixes(v, c->addrs, &c->n_addrs, HWC_WGCONF_MAX_ADDRS, &bad) != 0) {
                fail(err, errlen, file, line, "Address %s: expected an IP address with optional /bits", bad);
                goto out;
            }
        } else if (section == PEER && strcasecmp(k, "PublicKey") == 0) {
            if (parse_key(v, peer->public_key) != 0) {
                fail(err, errlen, file, line, "PublicKey: expected 44 characters of base64 (wg pubkey)");
                goto out;
            }
        } else if (section == PEER && strcasecmp(k, "Endpoint") == 0) {
            if (parse_endpoint(v, &peer->endpoint, &peer->endpoint_len) != 0) {
                fail(err, errlen, file, line, "Endpoint %s: expected IP:PORT or [IPv6]:PORT", v);
                goto out;
            }
        } else if (section == PEER && strcasecmp(k, "AllowedIPs") == 0) {
            if (parse_prefixes(v, peer->allowed, &peer->n_allowed, HWC_WGCONF_MAX_ALLOWED, &bad) != 0) {
                fail(err, errlen, file, line, "AllowedIPs %s: expected a prefix such as 10.0.0.2/32", bad);
                goto out;
            }
        } else if (section == PEER && strcasecmp(k, "PersistentKeepalive") == 0) {
            if (strcasecmp(v, "off") == 0)
                peer->persistent_keepalive = 0;
            else if (parse_int(v, 0, 65535, &peer->persistent_keepalive) != 0) {
                fail(err, errlen, file, line, "PersistentKeepalive %s: expected seconds (0-65535) or off", v);
                goto out;
            }
        } else {
            fail(err, errlen, file, line, "%s is not supported in [%s]", k, section == IFACE ? "Interface" : "Peer");
            goto out;
        }
    }
    if (!have_priv) {
        fail(err, errlen, file, line, "[Interface] PrivateKey is required");
        goto out;
    }
    for (size_t i = 0; i < c->n_peers; i++) {
        static const uint8_t zero[32];
        if (memcmp(c->peers[i].public_key, zero, 32) == 0) {
            fail(err, errlen, file, line, "[Peer] number %zu has no PublicKey", i + 1);
            goto out;
        }
    }
    rc = 0;
out:
    sodium_memzero(copy, strlen(text));
    free(copy);
    if (rc != 0)
        hwc_wgconf_free(c);
    return rc;
}

int hwc_wgconf_load(const char *path, struct hwc_wgconf *out, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = hw_read_file(path, &len);
    if (!text) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (len > (1 << 20)) {
        free(text);
        snprintf(err, errlen, "%s: larger than 1 MiB: not a WireGuard configuration", path);
        return -1;
    }
    int rc = hwc_wgconf_parse(text, path, out, err, errlen);
    sodium_memzero(text, len);
    free(text);
    return rc;
}

void hwc_wgconf_free(struct hwc_wgconf *c)
{
    free(c->peers);
    sodium_memzero(c, sizeof *c);
}

/* ---- runner ---- */

static void on_signal(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        log_info("stopping: %s", strsignal((int)si.ssi_signo));
        hw_loop_stop(loop);
    }
}

int hwc_wg_run(const struct hwc_wgconf *c, const char *tun_name)
{
    char err[256];
    struct hw_loop *loop = hw_loop_new();
    struct hwc_tun *tun = hwc_tun_open(tun_name, c->mtu, err, sizeof err);
    if (!tun) {
        fprintf(stderr, "hwclient wg: %s\n", err);
        hw_loop_free(loop);
        return 1;
    }
    int status = 1;
    struct hwc_wgdev *w = NULL;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd >= 0)
        hw_loop_add(loop, sigfd, HW_EV_READ, on_signal, NULL);
    if (hwc_tun_set_addresses(tun, c->addrs, c->n_addrs, err, sizeof err) != 0) {
        fprintf(stderr, "hwclient wg: %s\n", err);
        goto out;
    }
    w = hwc_wgdev_new(loop, c->private_key, tun, c->mtu, NULL, NULL, err, sizeof err);
    if (!w || hwc_wgdev_listen_udp(w, c->listen_port, err, sizeof err) != 0) {
        fprintf(stderr, "hwclient wg: %s\n", err);
        goto out;
    }
    struct hwc_wgdev_peer_cfg *pc = hw_calloc(c->n_peers ? c->n_peers : 1, sizeof *pc);
    size_t n_routes = 0;
    for (size_t i = 0; i < c->n_peers; i++)
        n_routes += c->peers[i].n_allowed;
    struct hwc_prefix *routes = hw_calloc(n_routes ? n_routes : 1, sizeof *routes);
    n_routes = 0;
    for (size_t i = 0; i < c->n_peers; i++) {
        const struct hwc_wgconf_peer *p = &c->peers[i];
        memcpy(pc[i].key, p->public_key, 32);
        pc[i].allowed = p->allowed;
        pc[i].n_allowed = p->n_allowed;
        pc[i].endpoint = p->endpoint_len ? (const struct sockaddr *)&p->endpoint : NULL;
        pc[i].endpoint_len = p->endpoint_len;
        pc[i].persistent_keepalive = p->persistent_keepalive;
        for (size_t j = 0; j < p->n_allowed; j++) {
            /* like wg-quick: no route where an Address already covers the prefix */
            bool covered = false;
            for (size_t k = 0; k < c->n_addrs && !covered; k++)
                covered = c->addrs[k].bits <= p->allowed[j].bits &&
                          hwc_prefix_contains(&c->addrs[k], p->allowed[j].family, p->allowed[j].addr);
            if (!covered)
                routes[n_routes++] = p->allowed[j];
        }
    }
    hwc_wgdev_set_peers(w, pc, c->n_peers);
    free(pc);
    if (hwc_tun_set_routes(tun, routes, n_routes, err, sizeof err) != 0)
        log_warn("hwclient wg: %s", err);
    free(routes);
    log_info("hwclient wg: %s up, UDP port %u, %zu peers", hwc_tun_name(tun), hwc_wgdev_udp_port(w), c->n_peers);
    hw_loop_run(loop);
    status = 0;
out:
    hwc_wgdev_free(w);
    hwc_tun_close(tun);
    if (sigfd >= 0) {
        hw_loop_remove(loop, sigfd);
        close(sigfd);
    }
    hw_loop_free(loop);
    return status;
}
