/* TUN device and its rtnetlink configuration: see tun.h. */
#include "client/tun.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
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

static int route_op(struct hwc_tun *t, int type, const struct hwc_prefix *p)
{
    struct nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof r.u.rt);
    r.h.nlmsg_type = (unsigned short)type;
    if (type == RTM_NEWROUTE)
        r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
    r.u.rt.rtm_family = (unsigned char)p->family;
    r.u.rt.rtm_dst_len = (unsigned char)p->bits;
    r.u.rt.rtm_table = RT_TABLE_MAIN;
    r.u.rt.rtm_protocol = RTPROT_STATIC;
    r.u.rt.rtm_scope = RT_SCOPE_LINK;
    r.u.rt.rtm_type = RTN_UNICAST;
    add_attr(&r, RTA_DST, p->addr, p->family == AF_INET ? 4 : 16);
    uint32_t oif = (uint32_t)t->ifindex;
    add_attr(&r, RTA_OIF, &oif, sizeof oif);
    return nl_talk(t, &r);
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
