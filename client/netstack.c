/* The userspace TCP/IP endpoint: lwIP (Debian's build: its own thread, core locking, the
 * sockets API) with one point-to-point interface holding the node's tailnet addresses.
 * Packets in: the caller takes lwIP's core lock and runs ip_input directly, so a busy stack
 * slows the caller instead of growing a queue. Packets out: lwIP calls the interface's output
 * on whichever thread holds the core lock; they are copied into a bounded ring and an eventfd
 * wakes the hwclient loop, which hands them to the output callback. */
#include "client/netstack.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lwip/ip.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/sockets.h"
#include "lwip/tcpip.h"

#include "common/log.h"
#include "common/loop.h"

struct out_pkt {
    uint8_t *data;
    size_t len;
};

struct hwc_netstack {
    struct hw_loop *loop;
    hwc_netstack_output_cb out;
    void *out_arg;
    struct netif netif;
    int netif_added;
    int wake_fd;                        /* eventfd: the ring went non-empty */
    struct hwc_netstack_addrs addrs;    /* as last applied (zeroed where unused) */

    pthread_mutex_t mu;                 /* guards the ring and the counters */
    struct out_pkt ring[HWC_NETSTACK_OUT_QUEUE];
    size_t head, count;
    struct hwc_netstack_stats stats;
};

static pthread_once_t lwip_once = PTHREAD_ONCE_INIT;
static sem_t lwip_ready;
static pthread_mutex_t single_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hwc_netstack *single;     /* lwIP has one global stack: at most one netstack */

static void lwip_started(void *arg)
{
    (void)arg;
    sem_post(&lwip_ready);
}

static void lwip_start(void)
{
    sem_init(&lwip_ready, 0, 0);
    tcpip_init(lwip_started, NULL);
    while (sem_wait(&lwip_ready) != 0 && errno == EINTR)
        ;
}

/* Runs with the core lock held, on lwIP's thread or a proxy thread. */
static err_t queue_output(struct netif *netif, struct pbuf *p)
{
    struct hwc_netstack *ns = netif->state;
    uint8_t *copy = malloc(p->tot_len ? p->tot_len : 1);
    if (copy)
        pbuf_copy_partial(p, copy, p->tot_len, 0);
    int wake = 0;
    pthread_mutex_lock(&ns->mu);
    if (!copy || ns->count == HWC_NETSTACK_OUT_QUEUE) {
        ns->stats.out_dropped++;
        pthread_mutex_unlock(&ns->mu);
        free(copy);
        return ERR_OK;                  /* a NIC that drops still reports success */
    }
    ns->ring[(ns->head + ns->count) % HWC_NETSTACK_OUT_QUEUE] =
        (struct out_pkt){.data = copy, .len = p->tot_len};
    wake = ns->count++ == 0;
    pthread_mutex_unlock(&ns->mu);
    if (wake) {
        uint64_t one = 1;
        ssize_t n = write(ns->wake_fd, &one, sizeof one);
        (void)n;                        /* EAGAIN: the counter is already non-zero */
    }
    return ERR_OK;
}

static err_t output_ip4(struct netif *netif, struct pbuf *p, const ip4_addr_t *dst)
{
    (void)dst;
    return queue_output(netif, p);
}

static err_t output_ip6(struct netif *netif, struct pbuf *p, const ip6_addr_t *dst)
{
    (void)dst;
    return queue_output(netif, p);
}

static err_t netif_setup(struct netif *netif)
{
    netif->name[0] = 'h';
    netif->name[1] = 'w';
    netif->mtu = HWC_NETSTACK_MTU;
    netif->mtu6 = HWC_NETSTACK_MTU;
    netif->output = output_ip4;
    netif->output_ip6 = output_ip6;
    netif->flags = 0;                   /* point to point: no ARP, broadcast or MLD */
    netif->hwaddr_len = 0;
    return ERR_OK;
}

/* Delivers what lwIP queued; the loop thread. Packets are taken out under the lock and
 * handed on outside it, so the callback may feed packets back in. */
static void on_wake(struct hw_loop *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)events;
    struct hwc_netstack *ns = arg;
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v);
    (void)n;
    for (int batch = 0; batch < HWC_NETSTACK_OUT_QUEUE; batch++) {
        pthread_mutex_lock(&ns->mu);
        if (ns->count == 0) {
            pthread_mutex_unlock(&ns->mu);
            return;
        }
        struct out_pkt pkt = ns->ring[ns->head];
        ns->head = (ns->head + 1) % HWC_NETSTACK_OUT_QUEUE;
        ns->count--;
        ns->stats.out_packets++;
        pthread_mutex_unlock(&ns->mu);
        ns->out(pkt.data, pkt.len, ns->out_arg);
        free(pkt.data);
    }
    /* More than a ring's worth arrived meanwhile: come back on the next loop turn. */
    uint64_t one = 1;
    n = write(ns->wake_fd, &one, sizeof one);
}

static struct hwc_netstack_addrs canonical(const struct hwc_netstack_addrs *a)
{
    struct hwc_netstack_addrs c;
    memset(&c, 0, sizeof c);
    c.has_v4 = a->has_v4 != 0;
    c.has_v6 = a->has_v6 != 0;
    if (c.has_v4)
        memcpy(c.v4, a->v4, 4);
    if (c.has_v6)
        memcpy(c.v6, a->v6, 16);
    return c;
}

/* Core lock held. Each family is touched only when it changed: lwIP aborts the connections
 * of an address that is taken away, even for a moment. */
static void apply_addrs(struct hwc_netstack *ns, const struct hwc_netstack_addrs *old,
                        const struct hwc_netstack_addrs *a)
{
    if (!old || old->has_v4 != a->has_v4 || memcmp(old->v4, a->v4, 4) != 0) {
        ip4_addr_t v4, mask, gw;
        IP4_ADDR(&mask, 255, 255, 255, 255);
        ip4_addr_set_zero(&gw);
        if (a->has_v4)
            IP4_ADDR(&v4, a->v4[0], a->v4[1], a->v4[2], a->v4[3]);
        else
            ip4_addr_set_zero(&v4);
        netif_set_addr(&ns->netif, &v4, &mask, &gw);
    }
    if (!old || old->has_v6 != a->has_v6 || memcmp(old->v6, a->v6, 16) != 0) {
        for (int i = 0; i < LWIP_IPV6_NUM_ADDRESSES; i++)
            netif_ip6_addr_set_state(&ns->netif, i, IP6_ADDR_INVALID);
        if (a->has_v6) {
            ip6_addr_t v6;
            uint32_t w[4];
            memcpy(w, a->v6, 16);
            IP6_ADDR(&v6, w[0], w[1], w[2], w[3]);
            ip6_addr_assign_zone(&v6, IP6_UNICAST, &ns->netif);
            netif_ip6_addr_set(&ns->netif, 0, &v6);
            /* The tailnet hands out unique addresses: no duplicate detection. */
            netif_ip6_addr_set_state(&ns->netif, 0, IP6_ADDR_PREFERRED);
        }
    }
}

struct hwc_netstack *hwc_netstack_new(struct hw_loop *loop, const struct hwc_netstack_addrs *a,
                                      hwc_netstack_output_cb out, void *arg, char *err,
                                      size_t errlen)
{
    pthread_mutex_lock(&single_mu);
    if (single) {
        pthread_mutex_unlock(&single_mu);
        snprintf(err, errlen, "netstack: one per process (lwIP keeps a global stack)");
        return NULL;
    }
    struct hwc_netstack *ns = calloc(1, sizeof *ns);
    if (!ns) {
        pthread_mutex_unlock(&single_mu);
        snprintf(err, errlen, "netstack: out of memory");
        return NULL;
    }
    ns->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ns->wake_fd < 0) {
        snprintf(err, errlen, "netstack: eventfd: %s", strerror(errno));
        free(ns);
        pthread_mutex_unlock(&single_mu);
        return NULL;
    }
    pthread_mutex_init(&ns->mu, NULL);
    ns->loop = loop;
    ns->out = out;
    ns->out_arg = arg;
    pthread_once(&lwip_once, lwip_start);

    LOCK_TCPIP_CORE();
    ip4_addr_t zero;
    ip4_addr_set_zero(&zero);
    struct netif *added = netif_add(&ns->netif, &zero, &zero, &zero, ns, netif_setup, ip_input);
    if (added) {
        ns->netif_added = 1;
#if LWIP_IPV6_AUTOCONFIG
        netif_set_ip6_autoconfig_enabled(&ns->netif, 0);
#endif
#if LWIP_IPV6_SEND_ROUTER_SOLICIT
        ns->netif.rs_count = 0;         /* no router to solicit on a tunnel */
#endif
        ns->addrs = canonical(a);
        apply_addrs(ns, NULL, &ns->addrs);
        netif_set_default(&ns->netif);
        netif_set_link_up(&ns->netif);
        netif_set_up(&ns->netif);
    }
    UNLOCK_TCPIP_CORE();
    if (!added || hw_loop_add(loop, ns->wake_fd, HW_EV_READ, on_wake, ns) != 0) {
        snprintf(err, errlen, "netstack: %s", added ? "cannot watch the eventfd" : "netif_add failed");
        if (added) {
            LOCK_TCPIP_CORE();
            netif_remove(&ns->netif);
            UNLOCK_TCPIP_CORE();
        }
        close(ns->wake_fd);
        pthread_mutex_destroy(&ns->mu);
        free(ns);
        pthread_mutex_unlock(&single_mu);
        return NULL;
    }
    single = ns;
    pthread_mutex_unlock(&single_mu);
    return ns;
}

void hwc_netstack_free(struct hwc_netstack *ns)
{
    if (!ns)
        return;
    /* Output only runs under the core lock, so once it is released after the removal no
     * thread is inside queue_output any more. */
    LOCK_TCPIP_CORE();
    netif_set_down(&ns->netif);
    netif_remove(&ns->netif);
    UNLOCK_TCPIP_CORE();
    hw_loop_remove(ns->loop, ns->wake_fd);
    close(ns->wake_fd);
    for (size_t i = 0; i < ns->count; i++)
        free(ns->ring[(ns->head + i) % HWC_NETSTACK_OUT_QUEUE].data);
    pthread_mutex_destroy(&ns->mu);
    pthread_mutex_lock(&single_mu);
    single = NULL;
    pthread_mutex_unlock(&single_mu);
    free(ns);
}

int hwc_netstack_input(struct hwc_netstack *ns, const uint8_t *pkt, size_t len)
{
    int version = len ? pkt[0] >> 4 : 0;
    if ((version != 4 && version != 6) || len > 0xFFFF) {
        pthread_mutex_lock(&ns->mu);
        ns->stats.in_dropped++;
        pthread_mutex_unlock(&ns->mu);
        return -1;
    }
    LOCK_TCPIP_CORE();
    struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)len, PBUF_RAM);
    err_t e = ERR_MEM;
    if (p) {
        pbuf_take(p, pkt, (u16_t)len);
        e = ns->netif.input(p, &ns->netif);
        if (e != ERR_OK)
            pbuf_free(p);
    }
    UNLOCK_TCPIP_CORE();
    pthread_mutex_lock(&ns->mu);
    if (e == ERR_OK)
        ns->stats.in_packets++;
    else
        ns->stats.in_dropped++;
    pthread_mutex_unlock(&ns->mu);
    return e == ERR_OK ? 0 : -1;
}

void hwc_netstack_set_addrs(struct hwc_netstack *ns, const struct hwc_netstack_addrs *a)
{
    struct hwc_netstack_addrs c = canonical(a);
    if (memcmp(&c, &ns->addrs, sizeof c) == 0)
        return;                         /* netmap updates mostly leave our addresses alone */
    LOCK_TCPIP_CORE();
    apply_addrs(ns, &ns->addrs, &c);
    UNLOCK_TCPIP_CORE();
    ns->addrs = c;
}

void hwc_netstack_get_stats(struct hwc_netstack *ns, struct hwc_netstack_stats *st)
{
    pthread_mutex_lock(&ns->mu);
    *st = ns->stats;
    pthread_mutex_unlock(&ns->mu);
}

static int connect_errno(int e)
{
    switch (e) {
    case ECONNRESET:                    /* lwIP reports a RST to our SYN as a reset */
    case ECONNABORTED:
    case ECONNREFUSED:
        return ECONNREFUSED;
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ETIMEDOUT:
    case ENOMEM:
        return e;
    default:
        return EHOSTUNREACH;
    }
}

int hwc_netstack_dial(struct hwc_netstack *ns, const struct sockaddr *sa, socklen_t salen,
                      int timeout_ms, const atomic_int *cancel, int *err_out)
{
    (void)ns;
    int c = lwip_socket(sa->sa_family, SOCK_STREAM, 0);
    if (c < 0) {
        *err_out = ENOMEM;
        return -1;
    }
    int e = 0;
    if (lwip_fcntl(c, F_SETFL, O_NONBLOCK) != 0) {
        e = ENOMEM;
    } else if (lwip_connect(c, sa, salen) != 0 && errno != EINPROGRESS) {
        e = connect_errno(errno);
    } else {
        struct pollfd pfd = {.fd = c, .events = POLLOUT};
        int r = 0, left = timeout_ms;
        while (left > 0 && !(cancel && *cancel)) {
            int slice = left < 200 ? left : 200;
            r = lwip_poll(&pfd, 1, slice);
            if (r != 0)
                break;
            left -= slice;
        }
        if (r == 0 && cancel && *cancel) {
            e = ECANCELED;
        } else if (r == 0) {
            e = ETIMEDOUT;
        } else if (r < 0) {
            e = connect_errno(errno);
        } else {
            int so_err = 0;
            socklen_t l = sizeof so_err;
            if (lwip_getsockopt(c, SOL_SOCKET, SO_ERROR, &so_err, &l) != 0)
                so_err = errno;
            if (so_err)
                e = connect_errno(so_err);
        }
    }
    if (!e && lwip_fcntl(c, F_SETFL, 0) != 0)
        e = ENOMEM;
    if (e) {
        lwip_close(c);
        *err_out = e;
        return -1;
    }
    return c;
}

ssize_t hwc_netstack_read(int c, void *buf, size_t len)
{
    return lwip_read(c, buf, len);
}

ssize_t hwc_netstack_write(int c, const void *buf, size_t len)
{
    return lwip_write(c, buf, len);
}

int hwc_netstack_conn_timeouts(int c, int recv_ms, int send_ms)
{
    struct timeval r = {.tv_sec = recv_ms / 1000, .tv_usec = (recv_ms % 1000) * 1000};
    struct timeval s = {.tv_sec = send_ms / 1000, .tv_usec = (send_ms % 1000) * 1000};
    if (lwip_setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof r) != 0)
        return -1;
    return lwip_setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &s, sizeof s);
}

int hwc_netstack_shutdown_write(int c)
{
    return lwip_shutdown(c, SHUT_WR);
}

void hwc_netstack_close(int c)
{
    lwip_close(c);
}
