/* TUN device and its rtnetlink configuration: see tun.h. */
#include "client/tun.h"
#include "client/hostnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/fib_rules.h>
#include <ifaddrs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SET 1024

struct hwc_tun {
    int fd, nl;
    char name[IFNAMSIZ];
    int ifindex;
    uint32_t seq;
    struct hwc_prefix addrs[MAX_SET], routes[MAX_SET];
    size_t n_addrs, n_routes;
    bool exit_on;                   /* the exit-node rules and table-52 routes are in */
    struct hwc_prefix lan[64];      /* throw routes of --exit-node-allow-lan-access */
    size_t n_lan;
};

int hwc_prefix_parse(const char *text, struct hwc_prefix *out)
{
    char buf[64];
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, text, len + 1);
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash) {
        *slash = 0;
        char *end;
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (errno || *end || end == slash + 1)
            return -1;
    }
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, out->addr) == 1)
        out->family = AF_INET;
    else if (inet_pton(AF_INET6, buf, out->addr) == 1)
        out->family = AF_INET6;
    else
        return -1;
    int max = out->family == AF_INET ? 32 : 128;
    if (bits < 0)
        bits = max;
    if (bits > max)
        return -1;
    out->bits = (int)bits;
    return 0;
}

void hwc_prefix_format(const struct hwc_prefix *p, char *out, size_t len)
{
    char a[INET6_ADDRSTRLEN] = "?";
    inet_ntop(p->family, p->addr, a, sizeof a);
    snprintf(out, len, "%s/%d", a, p->bits);
}

bool hwc_prefix_contains(const struct hwc_prefix *p, int family, const uint8_t *addr)
{
    if (p->family != family)
        return false;
    int full = p->bits / 8, rest = p->bits % 8;
    if (memcmp(p->addr, addr, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (p->addr[full] & mask) == (addr[full] & mask);
}

bool hwc_prefix_equal(const struct hwc_prefix *a, const struct hwc_prefix *b)
{
    return a->family == b->family && a->bits == b->bits &&
           memcmp(a->addr, b->addr, a->family == AF_INET ? 4 : 16) == 0;
}

/* ---- rtnetlink ---- */

struct nlreq {
    struct nlmsghdr h;
    union {
        struct ifinfomsg ifi;
        struct ifaddrmsg ifa;
        struct rtmsg rt;
        struct fib_rule_hdr frh;
    } u;
    char attrs[256];
};

static void add_attr(struct nlreq *r, int type, const void *data, size_t len)
{
    struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));
    a->rta_type = (unsigned short)type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    memcpy(RTA_DATA(a), data, len);
    r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Sends one request and waits for its ack; returns 0 or the negative errno. */
static int nl_talk(struct hwc_tun *t, struct nlreq *r)
{
    r->h.nlmsg_seq = ++t->seq;
    r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (sendto(t->nl, r, r->h.nlmsg_len, 0, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -errno;
    char buf[4096];
    for (;;) {
        ssize_t n = recv(t->nl, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != t->seq)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *e = NLMSG_DATA(h);
                return e->error;
            }
        }
    }
}

static int link_set(struct hwc_tun *t, int mtu)
{
    struct nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof r.u.ifi);
    r.h.nlmsg_type = RTM_NEWLINK;
    r.u.ifi.ifi_family = AF_UNSPEC;
    r.u.ifi.ifi_index = t->ifindex;
    r.u.ifi.ifi_flags = IFF_UP;
    r.u.ifi.ifi_change = IFF_UP;
    uint32_t m = (uint32_t)mtu;
    add_attr(&r, IFLA_MTU, &m, sizeof m);
    return nl_talk(t, &r);
}

static int addr_op(struct hwc_tun *t, int type, const struct hwc_prefix *p)
{
    struct nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof r.u.ifa);
    r.h.nlmsg_type = (unsigned short)type;
    if (type == RTM_NEWADDR)
        r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
    r.u.ifa.ifa_family = (unsigned char)p->family;
    r.u.ifa.ifa_prefixlen = (unsigned char)p->bits;
    r.u.ifa.ifa_scope = RT_SCOPE_UNIVERSE;
    r.u.ifa.ifa_index = (unsigned)t->ifindex;
    if (p->family == AF_INET6)
        r.u.ifa.ifa_flags = IFA_F_NODAD;
    size_t alen = p->family == AF_INET ? 4 : 16;
    add_attr(&r, IFA_LOCAL, p->addr, alen);
    add_attr(&r, IFA_ADDRESS, p->addr, alen);
    return nl_talk(t, &r);
}

/* A route in table: through the device (RTN_UNICAST) or a throw route (RTN_THROW, the
 * lookup goes on to the next rule). */
static int route_op_in(struct hwc_tun *t, int type, const struct hwc_prefix *p, uint32_t table, int rtype)
{
    struct nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof r.u.rt);
    r.h.nlmsg_type = (unsigned short)type;
    if (type == RTM_NEWROUTE)
        r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
    r.u.rt.rtm_family = (unsigned char)p->family;
    r.u.rt.rtm_dst_len = (unsigned char)p->bits;
    r.u.rt.rtm_table = table < 256 ? (unsigned char)table : RT_TABLE_UNSPEC;
    r.u.rt.rtm_protocol = RTPROT_STATIC;
    r.u.rt.rtm_scope = rtype == RTN_UNICAST ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE;
    r.u.rt.rtm_type = (unsigned char)rtype;
    add_attr(&r, RTA_TABLE, &table, sizeof table);
    if (p->bits > 0)
        add_attr(&r, RTA_DST, p->addr, p->family == AF_INET ? 4 : 16);
    if (rtype == RTN_UNICAST) {
        uint32_t oif = (uint32_t)t->ifindex;
        add_attr(&r, RTA_OIF, &oif, sizeof oif);
    }
    return nl_talk(t, &r);
}

static int route_op(struct hwc_tun *t, int type, const struct hwc_prefix *p)
{
    return route_op_in(t, type, p, RT_TABLE_MAIN, RTN_UNICAST);
}

struct hwc_tun *hwc_tun_open(const char *name, int mtu, char *err, size_t errlen)
{
    if (strlen(name) == 0 || strlen(name) >= IFNAMSIZ) {
        snprintf(err, errlen, "TUN name \"%s\": expected 1 to %d characters", name, IFNAMSIZ - 1);
        return NULL;
    }
    struct hwc_tun *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->nl = -1;
    t->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (t->fd < 0) {
        snprintf(err, errlen, "open /dev/net/tun: %s (TUN needs root or CAP_NET_ADMIN)", strerror(errno));
        free(t);
        return NULL;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
    if (ioctl(t->fd, TUNSETIFF, &ifr) < 0) {
        snprintf(err, errlen, "TUN device %s: %s", name, strerror(errno));
        goto fail;
    }
    snprintf(t->name, sizeof t->name, "%s", ifr.ifr_name);
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock >= 0 && ioctl(sock, SIOCGIFINDEX, &ifr) == 0)
        t->ifindex = ifr.ifr_ifindex;
    if (sock >= 0)
        close(sock);
    t->nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (t->ifindex <= 0 || t->nl < 0) {
        snprintf(err, errlen, "TUN device %s: %s", t->name, strerror(errno));
        goto fail;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(t->nl, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int rc = link_set(t, mtu);
    if (rc < 0) {
        snprintf(err, errlen, "TUN device %s: setting MTU %d and link up: %s", t->name, mtu, strerror(-rc));
        goto fail;
    }
    return t;
fail:
    if (t->nl >= 0)
        close(t->nl);
    close(t->fd);
    free(t);
    return NULL;
}

static bool in_set(const struct hwc_prefix *set, size_t n, const struct hwc_prefix *p)
{
    for (size_t i = 0; i < n; i++)
        if (hwc_prefix_equal(&set[i], p))
            return true;
    return false;
}

/* Brings the kernel's set (cur) to want: removes what is gone, adds what is new. */
static int sync_set(struct hwc_tun *t, struct hwc_prefix *cur, size_t *ncur, const struct hwc_prefix *want,
                    size_t n, bool routes, char *err, size_t errlen)
{
    if (n > MAX_SET) {
        snprintf(err, errlen, "%zu %s: at most %d", n, routes ? "routes" : "addresses", MAX_SET);
        return -1;
    }
    size_t keep = 0;
    for (size_t i = 0; i < *ncur; i++) {
        if (in_set(want, n, &cur[i]))
            cur[keep++] = cur[i];
        else if (routes)
            route_op(t, RTM_DELROUTE, &cur[i]);
        else
            addr_op(t, RTM_DELADDR, &cur[i]);
    }
    *ncur = keep;
    int result = 0;
    for (size_t i = 0; i < n; i++) {
        if (in_set(cur, *ncur, &want[i]))
            continue;
        char text[64];
        hwc_prefix_format(&want[i], text, sizeof text);
        if (routes && want[i].bits == 0) {
            if (result == 0)
                snprintf(err, errlen, "route %s via %s: default routes are not supported", text, t->name);
            result = -1;
            continue;
        }
        int rc = routes ? route_op(t, RTM_NEWROUTE, &want[i]) : addr_op(t, RTM_NEWADDR, &want[i]);
        if (rc < 0) {
            if (result == 0)
                snprintf(err, errlen, "%s %s on %s: %s", routes ? "route" : "address", text, t->name, strerror(-rc));
            result = -1;
            continue;
        }
        cur[(*ncur)++] = want[i];
    }
    return result;
}

int hwc_tun_set_addresses(struct hwc_tun *t, const struct hwc_prefix *p, size_t n, char *err, size_t errlen)
{
    return sync_set(t, t->addrs, &t->n_addrs, p, n, false, err, errlen);
}

int hwc_tun_set_routes(struct hwc_tun *t, const struct hwc_prefix *p, size_t n, char *err, size_t errlen)
{
    return sync_set(t, t->routes, &t->n_routes, p, n, true, err, errlen);
}

void hwc_tun_close(struct hwc_tun *t)
{
    if (!t)
        return;
    char err[200];
    hwc_tun_set_exit_routes(t, false, false, err, sizeof err);
    for (size_t i = 0; i < t->n_routes; i++)
        route_op(t, RTM_DELROUTE, &t->routes[i]);
    for (size_t i = 0; i < t->n_addrs; i++)
        addr_op(t, RTM_DELADDR, &t->addrs[i]);
    close(t->nl);
    close(t->fd);
    free(t);
}

int hwc_tun_fd(const struct hwc_tun *t) { return t->fd; }
const char *hwc_tun_name(const struct hwc_tun *t) { return t->name; }

/* ---- exit node: policy routing as tailscaled's (wgengine/router, baseIPRules) ---- */

struct exit_rule {
    uint32_t pref;
    bool bypass;     /* matches fwmark HWC_BYPASS_MARK under the mask */
    uint8_t action;  /* FR_ACT_TO_TBL or FR_ACT_UNREACHABLE */
    uint32_t table;
};

static const struct exit_rule exit_rules[] = {
    {HWC_EXIT_RULE_PREF + 10, true, FR_ACT_TO_TBL, RT_TABLE_MAIN},
    {HWC_EXIT_RULE_PREF + 30, true, FR_ACT_TO_TBL, RT_TABLE_DEFAULT},
    /* ours must not fall through into the tunnel when there is no other way out */
    {HWC_EXIT_RULE_PREF + 50, true, FR_ACT_UNREACHABLE, 0},
    {HWC_EXIT_RULE_PREF + 70, false, FR_ACT_TO_TBL, HWC_EXIT_TABLE},
};

static int rule_op(struct hwc_tun *t, int type, int family, const struct exit_rule *er)
{
    struct nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof r.u.frh);
    r.h.nlmsg_type = (unsigned short)type;
    if (type == RTM_NEWRULE)
        r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    r.u.frh.family = (unsigned char)family;
    r.u.frh.action = er->action;
    r.u.frh.table = er->table < 256 ? (unsigned char)er->table : RT_TABLE_UNSPEC;
    uint32_t pref = er->pref;
    add_attr(&r, FRA_PRIORITY, &pref, sizeof pref);
    if (er->table) {
        uint32_t table = er->table;
        add_attr(&r, FRA_TABLE, &table, sizeof table);
    }
    if (er->bypass) {
        uint32_t mark = HWC_BYPASS_MARK, mask = HWC_FWMARK_MASK;
        add_attr(&r, FRA_FWMARK, &mark, sizeof mark);
        add_attr(&r, FRA_FWMASK, &mask, sizeof mask);
    }
    return nl_talk(t, &r);
}

/* Deletes every rule at our preferences (ours from before a crash included). */
static void remove_exit_rules(struct hwc_tun *t)
{
    for (int f = 0; f < 2; f++)
        for (size_t i = 0; i < sizeof exit_rules / sizeof exit_rules[0]; i++) {
            struct nlreq r;
            for (int tries = 0; tries < 8; tries++) {
                memset(&r, 0, sizeof r);
                r.h.nlmsg_len = NLMSG_LENGTH(sizeof r.u.frh);
                r.h.nlmsg_type = RTM_DELRULE;
                r.u.frh.family = f ? AF_INET6 : AF_INET;
                uint32_t pref = exit_rules[i].pref;
                add_attr(&r, FRA_PRIORITY, &pref, sizeof pref);
                if (nl_talk(t, &r) < 0)
                    break;
            }
        }
}

/* The networks of the host's other interfaces (what --exit-node-allow-lan-access leaves
 * outside the tunnel, as tailscaled's LocalRoutes). */
static size_t lan_prefixes(const struct hwc_tun *t, struct hwc_prefix *out, size_t cap)
{
    struct ifaddrs *ifs;
    size_t n = 0;
    if (getifaddrs(&ifs) < 0)
        return 0;
    for (struct ifaddrs *i = ifs; i && n < cap; i = i->ifa_next) {
        if (!i->ifa_addr || !i->ifa_netmask || (i->ifa_flags & IFF_LOOPBACK) || strcmp(i->ifa_name, t->name) == 0)
            continue;
        int fam = i->ifa_addr->sa_family;
        if (fam != AF_INET && fam != AF_INET6)
            continue;
        struct hwc_prefix p = {.family = fam};
        const uint8_t *a, *m;
        size_t len = fam == AF_INET ? 4 : 16;
        if (fam == AF_INET) {
            a = (const uint8_t *)&((struct sockaddr_in *)i->ifa_addr)->sin_addr;
            m = (const uint8_t *)&((struct sockaddr_in *)i->ifa_netmask)->sin_addr;
        } else {
            a = (const uint8_t *)&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
            m = (const uint8_t *)&((struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr;
            if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
                continue; /* link-local stays on-link anyway */
        }
        for (size_t b = 0; b < len; b++) {
            p.addr[b] = a[b] & m[b];
            for (int bit = 7; bit >= 0 && (m[b] >> bit) & 1; bit--)
                p.bits++;
        }
        if (p.bits == 0)
            continue;
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = hwc_prefix_equal(&out[k], &p);
        if (!dup)
            out[n++] = p;
    }
    freeifaddrs(ifs);
    return n;
}

int hwc_tun_set_exit_routes(struct hwc_tun *t, bool on, bool allow_lan, char *err, size_t errlen)
{
    struct hwc_prefix def4, def6;
    hwc_prefix_parse("0.0.0.0/0", &def4);
    hwc_prefix_parse("::/0", &def6);
    if (!on) {
        if (!t->exit_on)
            return 0;
        remove_exit_rules(t);
        route_op_in(t, RTM_DELROUTE, &def4, HWC_EXIT_TABLE, RTN_UNICAST);
        route_op_in(t, RTM_DELROUTE, &def6, HWC_EXIT_TABLE, RTN_UNICAST);
        for (size_t i = 0; i < t->n_lan; i++)
            route_op_in(t, RTM_DELROUTE, &t->lan[i], HWC_EXIT_TABLE, RTN_THROW);
        t->n_lan = 0;
        t->exit_on = false;
        return 0;
    }
    if (t->exit_on)
        return 0;
    remove_exit_rules(t);
    t->exit_on = true;
    int rc = route_op_in(t, RTM_NEWROUTE, &def4, HWC_EXIT_TABLE, RTN_UNICAST);
    if (rc < 0) {
        snprintf(err, errlen, "route 0.0.0.0/0 dev %s table %d: %s", t->name, HWC_EXIT_TABLE, strerror(-rc));
        goto fail;
    }
    rc = route_op_in(t, RTM_NEWROUTE, &def6, HWC_EXIT_TABLE, RTN_UNICAST);
    if (rc < 0) {
        snprintf(err, errlen, "route ::/0 dev %s table %d: %s", t->name, HWC_EXIT_TABLE, strerror(-rc));
        goto fail;
    }
    if (allow_lan) {
        t->n_lan = lan_prefixes(t, t->lan, sizeof t->lan / sizeof t->lan[0]);
        for (size_t i = 0; i < t->n_lan; i++)
            route_op_in(t, RTM_NEWROUTE, &t->lan[i], HWC_EXIT_TABLE, RTN_THROW);
    }
    for (int f = 0; f < 2; f++)
        for (size_t i = 0; i < sizeof exit_rules / sizeof exit_rules[0]; i++) {
            rc = rule_op(t, RTM_NEWRULE, f ? AF_INET6 : AF_INET, &exit_rules[i]);
            if (rc < 0) {
                snprintf(err, errlen, "ip %srule pref %u: %s", f ? "-6 " : "", (unsigned)exit_rules[i].pref,
                         strerror(-rc));
                goto fail;
            }
        }
    return 0;
fail:
    hwc_tun_set_exit_routes(t, false, false, err + strlen(err), 0);
    return -1;
}

size_t hwc_tun_lan_routes(const struct hwc_tun *t, const struct hwc_prefix **out)
{
    *out = t->lan;
    return t->n_lan;
}
