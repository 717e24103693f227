/* nstun: the userspace netstack bound to a real TUN device inside a network namespace, with
 * the SOCKS5 and HTTP CONNECT proxies in front, so the tests can reach the namespace kernel's
 * TCP stack as if it were a tailnet peer. Stands in for WireGuard: packets go between the TUN
 * fd and hwc_netstack_input/output unchanged.
 *
 *   nstun --netns NS --tun NAME --addr4 A [--addr6 A6] [--socks5 ADDR] [--http ADDR]
 *         [--connect-timeout-ms N] [--max-conns N] [--name NAME=IP]...
 *         [--reachable PREFIX/LEN]...
 *
 * The TUN device is created inside NS (the caller configures its addresses). Prints
 * "ready socks5=PORT http=PORT" when listening, runs until stdin closes, then prints
 * "stats in=N in_dropped=N out=N out_dropped=N". */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "client/netstack.h"
#include "client/socks5.h"
#include "common/log.h"
#include "common/loop.h"

#define MAX_NAMES 16
#define MAX_PREFIXES 8

static struct {
    char name[256];
    struct sockaddr_storage addr;
} names[MAX_NAMES];
static int n_names;

static struct {
    int family, bits;
    uint8_t addr[16];
} prefixes[MAX_PREFIXES];
static int n_prefixes;

static struct hwc_netstack *ns;
static int tun_fd = -1;

static void die(const char *what)
{
    fprintf(stderr, "nstun: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int open_tun_in(const char *netns, const char *ifname)
{
    char path[256];
    snprintf(path, sizeof path, "/var/run/netns/%s", netns);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (target < 0 || home < 0)
        die(path);
    if (setns(target, CLONE_NEWNET) != 0)
        die("setns");
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0)
        die("TUNSETIFF");
    if (setns(home, CLONE_NEWNET) != 0)
        die("setns back");
    close(target);
    close(home);
    return fd;
}

static void to_tun(const uint8_t *pkt, size_t len, void *arg)
{
    (void)arg;
    ssize_t w = write(tun_fd, pkt, len);
    (void)w;                            /* a full TUN queue drops, like a link */
}

static void on_tun(struct hw_loop *loop, int fd, int events, void *arg)
{
    uint8_t buf[65536];
    for (int i = 0; i < 64; i++) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0)
            return;
        hwc_netstack_input(ns, buf, (size_t)r);
    }
}

static void on_stdin(struct hw_loop *loop, int fd, int events, void *arg)
{
    char buf[256];
    if (read(fd, buf, sizeof buf) <= 0) {
        hw_loop_remove(loop, fd);
        hw_loop_stop(loop);
    }
}

static int same_name(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la && a[la - 1] == '.')
        la--;
    return la == lb && strncasecmp(a, b, la) == 0;
}

static int resolve(const char *name, struct sockaddr_storage *out, int max, void *arg)
{
    int n = 0;
    for (int i = 0; i < n_names && n < max; i++)
        if (same_name(name, names[i].name))
            out[n++] = names[i].addr;
    return n;
}

static int reachable(const struct sockaddr *sa, void *arg)
{
    if (n_prefixes == 0)
        return 1;
    const uint8_t *a = sa->sa_family == AF_INET
                           ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
                           : (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    for (int i = 0; i < n_prefixes; i++) {
        if (prefixes[i].family != sa->sa_family)
            continue;
        int bits = prefixes[i].bits, ok = 1;
        for (int b = 0; b < bits && ok; b++)
            ok = ((a[b / 8] ^ prefixes[i].addr[b / 8]) & (0x80 >> (b % 8))) == 0;
        if (ok)
            return 1;
    }
    return 0;
}

static int parse_ip(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        return 0;
    }
    return -1;
}

static void usage(const char *why)
{
    fprintf(stderr, "nstun: %s\nusage: nstun --netns NS --tun NAME --addr4 A [--addr6 A6] "
                    "[--socks5 ADDR] [--http ADDR] [--connect-timeout-ms N] [--max-conns N] [--name N=IP]... "
                    "[--reachable PREFIX/LEN]...\n", why);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *netns = NULL, *tun = NULL, *socks = "127.0.0.1:0", *http = NULL;
    struct hwc_netstack_addrs addrs = {0};
    struct hwc_proxy_config cfg = {.resolve = resolve, .reachable = reachable};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage("missing value");
        i++;
        if (!strcmp(a, "--netns"))
            netns = v;
        else if (!strcmp(a, "--tun"))
            tun = v;
        else if (!strcmp(a, "--addr4")) {
            if (inet_pton(AF_INET, v, addrs.v4) != 1)
                usage("bad --addr4");
            addrs.has_v4 = 1;
        } else if (!strcmp(a, "--addr6")) {
            if (inet_pton(AF_INET6, v, addrs.v6) != 1)
                usage("bad --addr6");
            addrs.has_v6 = 1;
        } else if (!strcmp(a, "--socks5"))
            socks = v;
        else if (!strcmp(a, "--http"))
            http = v;
        else if (!strcmp(a, "--connect-timeout-ms"))
            cfg.connect_timeout_ms = atoi(v);
        else if (!strcmp(a, "--max-conns"))
            cfg.max_conns = atoi(v);
        else if (!strcmp(a, "--name")) {
            const char *eq = strchr(v, '=');
            if (!eq || n_names == MAX_NAMES || (size_t)(eq - v) >= sizeof names[0].name)
                usage("bad --name");
            memcpy(names[n_names].name, v, (size_t)(eq - v));
            if (parse_ip(eq + 1, &names[n_names].addr) != 0)
                usage("bad --name address");
            n_names++;
        } else if (!strcmp(a, "--reachable")) {
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            char *slash = strchr(buf, '/');
            if (!slash || n_prefixes == MAX_PREFIXES)
                usage("bad --reachable");
            *slash = 0;
            prefixes[n_prefixes].bits = atoi(slash + 1);
            prefixes[n_prefixes].family = strchr(buf, ':') ? AF_INET6 : AF_INET;
            if (inet_pton(prefixes[n_prefixes].family, buf, prefixes[n_prefixes].addr) != 1)
                usage("bad --reachable");
            n_prefixes++;
        } else
            usage("unknown option");
    }
    if (!netns || !tun || !addrs.has_v4)
        usage("--netns, --tun and --addr4 are required");
    tun_fd = open_tun_in(netns, tun);
    fcntl(tun_fd, F_SETFL, O_NONBLOCK);

    struct hw_loop *loop = hw_loop_new();
    char err[256];
    ns = hwc_netstack_new(loop, &addrs, to_tun, NULL, err, sizeof err);
    if (!ns) {
        fprintf(stderr, "nstun: %s\n", err);
        return 1;
    }
    cfg.ns = ns;
    struct hwc_proxy *sp = hwc_proxy_start(HWC_PROXY_SOCKS5, socks, &cfg, err, sizeof err);
    struct hwc_proxy *hp = NULL;
    if (sp && http)
        hp = hwc_proxy_start(HWC_PROXY_HTTP_CONNECT, http, &cfg, err, sizeof err);
    if (!sp || (http && !hp)) {
        fprintf(stderr, "nstun: %s\n", err);
        return 1;
    }
    hw_loop_add(loop, tun_fd, HW_EV_READ, on_tun, NULL);
    hw_loop_add(loop, 0, HW_EV_READ, on_stdin, NULL);
    printf("ready socks5=%d http=%d\n", hwc_proxy_port(sp), hp ? hwc_proxy_port(hp) : 0);
    fflush(stdout);
    hw_loop_run(loop);

    hwc_proxy_stop(sp);
    hwc_proxy_stop(hp);
    struct hwc_netstack_stats st;
    hwc_netstack_get_stats(ns, &st);
    hw_loop_remove(loop, tun_fd);
    hwc_netstack_free(ns);
    hw_loop_free(loop);
    close(tun_fd);
    printf("stats in=%llu in_dropped=%llu out=%llu out_dropped=%llu\n",
           (unsigned long long)st.in_packets, (unsigned long long)st.in_dropped,
           (unsigned long long)st.out_packets, (unsigned long long)st.out_dropped);
    return 0;
}
