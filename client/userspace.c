/* See userspace.h. The proxies run on their own threads while the netmap lives on the loop
 * thread, so each update copies what they need (names, addresses, AllowedIPs) into a table
 * under a mutex; a lookup never touches the netmap. */
#include "client/userspace.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/socks5.h"
#include "common/log.h"
#include "proto/netmap.h"

#define NAME_ADDRS 4

struct name_entry {
    char name[256];                     /* lower case, no trailing dot */
    struct sockaddr_storage addrs[NAME_ADDRS];
    int n_addrs;
};

struct prefix {
    int family, bits;
    uint8_t addr[16];
};

struct hwc_userspace {
    struct hwc_netstack *ns;
    struct hwc_proxy *socks, *http;
    int accept_routes;
    char socks_addr[80], http_addr[80];

    pthread_mutex_t mu;                 /* guards the table below */
    struct name_entry *names;
    size_t n_names;
    struct prefix *allowed;
    size_t n_allowed;
};

static int parse_prefix(const char *text, struct prefix *p)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", text);
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = 0;
    p->family = strchr(buf, ':') ? AF_INET6 : AF_INET;
    memset(p->addr, 0, sizeof p->addr);
    if (inet_pton(p->family, buf, p->addr) != 1)
        return -1;
    int max = p->family == AF_INET ? 32 : 128;
    p->bits = max;
    if (slash) {
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (*end || b < 0 || b > max)
            return -1;
        p->bits = (int)b;
    }
    return 0;
}

static int prefix_contains(const struct prefix *p, int family, const uint8_t *a)
{
    if (p->family != family)
        return 0;
    for (int b = 0; b < p->bits; b++)
        if ((a[b / 8] ^ p->addr[b / 8]) & (0x80 >> (b % 8)))
            return 0;
    return 1;
}

static void lower_name(char *out, size_t cap, const char *name, size_t len)
{
    while (len && name[len - 1] == '.')
        len--;
    if (len >= cap)
        len = cap - 1;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)name[i]);
    out[len] = 0;
}

static void add_node(struct name_entry **names, size_t *n, size_t *cap, const struct tc_node *node)
{
    if (!node->name || !node->name[0])
        return;
    struct name_entry e = {0};
    for (size_t i = 0; i < node->addresses.n && e.n_addrs < NAME_ADDRS; i++) {
        struct prefix p;
        if (parse_prefix(node->addresses.v[i], &p) != 0)
            continue;
        struct sockaddr_storage *ss = &e.addrs[e.n_addrs++];
        memset(ss, 0, sizeof *ss);
        if (p.family == AF_INET) {
            ((struct sockaddr_in *)ss)->sin_family = AF_INET;
            memcpy(&((struct sockaddr_in *)ss)->sin_addr, p.addr, 4);
        } else {
            ((struct sockaddr_in6 *)ss)->sin6_family = AF_INET6;
            memcpy(&((struct sockaddr_in6 *)ss)->sin6_addr, p.addr, 16);
        }
    }
    if (!e.n_addrs)
        return;
    const char *dot = strchr(node->name, '.');
    for (int form = 0; form < 2; form++) {
        if (form == 1 && (!dot || dot[1] == 0))
            break;                      /* no domain: the short name is the whole name */
        size_t len = form == 0 ? strlen(node->name) : (size_t)(dot - node->name);
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *names = realloc(*names, *cap * sizeof **names);
            if (!*names)
                abort();
        }
        (*names)[*n] = e;
        lower_name((*names)[*n].name, sizeof (*names)[*n].name, node->name, len);
        (*n)++;
    }
}

void hwc_userspace_update(struct hwc_userspace *u, const struct tc_netmap *nm)
{
    struct name_entry *names = NULL;
    size_t n_names = 0, cap_names = 0;
    struct prefix *allowed = NULL;
    size_t n_allowed = 0;
    struct hwc_netstack_addrs a = {0};
    if (nm && nm->has_self) {
        for (size_t i = 0; i < nm->self.addresses.n; i++) {
            struct prefix p;
            if (parse_prefix(nm->self.addresses.v[i], &p) != 0)
                continue;
            if (p.family == AF_INET && !a.has_v4) {
                memcpy(a.v4, p.addr, 4);
                a.has_v4 = 1;
            } else if (p.family == AF_INET6 && !a.has_v6) {
                memcpy(a.v6, p.addr, 16);
                a.has_v6 = 1;
            }
        }
        add_node(&names, &n_names, &cap_names, &nm->self);
        size_t total = 0;
        for (size_t i = 0; i < nm->n_peers; i++)
            total += nm->peers[i].allowed_ips.n + nm->peers[i].addresses.n;
        allowed = calloc(total ? total : 1, sizeof *allowed);
        if (!allowed)
            abort();
        for (size_t i = 0; i < nm->n_peers; i++) {
            const struct tc_node *peer = &nm->peers[i];
            add_node(&names, &n_names, &cap_names, peer);
            /* The peer's own addresses always; the rest of AllowedIPs (subnet routes) only
             * when accepted, as the WireGuard device does. */
            const struct tc_strv *v = u->accept_routes && !peer->allowed_ips_null
                                          ? &peer->allowed_ips : &peer->addresses;
            for (size_t j = 0; j < v->n && n_allowed < total; j++)
                if (parse_prefix(v->v[j], &allowed[n_allowed]) == 0)
                    n_allowed++;
        }
    }
    hwc_netstack_set_addrs(u->ns, &a);
    pthread_mutex_lock(&u->mu);
    free(u->names);
    free(u->allowed);
    u->names = names;
    u->n_names = n_names;
    u->allowed = allowed;
    u->n_allowed = n_allowed;
    pthread_mutex_unlock(&u->mu);
}

int hwc_userspace_resolve(const char *name, struct sockaddr_storage *out, int max, void *arg)
{
    struct hwc_userspace *u = arg;
    char want[256];
    lower_name(want, sizeof want, name, strlen(name));
    int n = 0;
    pthread_mutex_lock(&u->mu);
    for (size_t i = 0; i < u->n_names && n == 0; i++) {
        if (strcmp(u->names[i].name, want) != 0)
            continue;
        for (int j = 0; j < u->names[i].n_addrs && n < max; j++)
            out[n++] = u->names[i].addrs[j];
    }
    pthread_mutex_unlock(&u->mu);
    return n;
}

int hwc_userspace_reachable(const struct sockaddr *sa, void *arg)
{
    struct hwc_userspace *u = arg;
    const uint8_t *a = sa->sa_family == AF_INET
                           ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
                           : (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    int ok = 0;
    pthread_mutex_lock(&u->mu);
    for (size_t i = 0; i < u->n_allowed && !ok; i++)
        ok = prefix_contains(&u->allowed[i], sa->sa_family, a);
    pthread_mutex_unlock(&u->mu);
    return ok;
}

struct hwc_userspace *hwc_userspace_start(struct hw_loop *loop, const struct hwc_userspace_opts *o,
                                          hwc_netstack_output_cb out, void *arg, char *err,
                                          size_t errlen)
{
    struct hwc_userspace *u = calloc(1, sizeof *u);
    if (!u) {
        snprintf(err, errlen, "userspace networking: out of memory");
        return NULL;
    }
    pthread_mutex_init(&u->mu, NULL);
    u->accept_routes = o->accept_routes;
    struct hwc_netstack_addrs none = {0};
    u->ns = hwc_netstack_new(loop, &none, out, arg, err, errlen);
    if (!u->ns) {
        pthread_mutex_destroy(&u->mu);
        free(u);
        return NULL;
    }
    struct hwc_proxy_config cfg = {
        .ns = u->ns,
        .connect_timeout_ms = o->connect_timeout_ms,
        .resolve = hwc_userspace_resolve,
        .reachable = hwc_userspace_reachable,
        .arg = u,
    };
    snprintf(u->socks_addr, sizeof u->socks_addr, "%s",
             o->socks5_addr ? o->socks5_addr : HWC_PROXY_DEFAULT_SOCKS5);
    u->socks = hwc_proxy_start(HWC_PROXY_SOCKS5, u->socks_addr, &cfg, err, errlen);
    if (u->socks && o->http_proxy_addr) {
        snprintf(u->http_addr, sizeof u->http_addr, "%s", o->http_proxy_addr);
        u->http = hwc_proxy_start(HWC_PROXY_HTTP_CONNECT, u->http_addr, &cfg, err, errlen);
    }
    if (!u->socks || (o->http_proxy_addr && !u->http)) {
        hwc_userspace_stop(u);
        return NULL;
    }
    return u;
}

int hwc_userspace_input(struct hwc_userspace *u, const uint8_t *pkt, size_t len)
{
    return hwc_netstack_input(u->ns, pkt, len);
}

json_t *hwc_userspace_status(struct hwc_userspace *u)
{
    struct hwc_netstack_stats st;
    hwc_netstack_get_stats(u->ns, &st);
    json_t *o = json_object();
    char addr[96];
    snprintf(addr, sizeof addr, "%.*s:%d", (int)(strrchr(u->socks_addr, ':') - u->socks_addr),
             u->socks_addr, hwc_proxy_port(u->socks));
    json_object_set_new(o, "SOCKS5", json_string(addr));
    if (u->http) {
        snprintf(addr, sizeof addr, "%.*s:%d", (int)(strrchr(u->http_addr, ':') - u->http_addr),
                 u->http_addr, hwc_proxy_port(u->http));
        json_object_set_new(o, "HTTPProxy", json_string(addr));
    }
    json_object_set_new(o, "PacketsIn", json_integer((json_int_t)st.in_packets));
    json_object_set_new(o, "PacketsInDropped", json_integer((json_int_t)st.in_dropped));
    json_object_set_new(o, "PacketsOut", json_integer((json_int_t)st.out_packets));
    json_object_set_new(o, "PacketsOutDropped", json_integer((json_int_t)st.out_dropped));
    return o;
}

void hwc_userspace_stop(struct hwc_userspace *u)
{
    if (!u)
        return;
    hwc_proxy_stop(u->http);
    hwc_proxy_stop(u->socks);
    hwc_netstack_free(u->ns);
    free(u->names);
    free(u->allowed);
    pthread_mutex_destroy(&u->mu);
    free(u);
}
