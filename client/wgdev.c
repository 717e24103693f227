/* The WireGuard device on the loop: see wgdev.h. */
#include "client/wgdev.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/keys.h"
#include "proto/wireguard.h"

/* TUN reads handled per readiness event before other fds get a turn. */
#define TUN_BATCH 64
/* UDP datagrams per recvmmsg/sendmmsg; slots fit a 9000-byte jumbo MTU plus overhead
 * (larger datagrams are sent alone, and received ones are dropped as truncated). */
#define UDP_BATCH 32
#define UDP_SLOT 9216

struct wpeer {
    struct wpeer *next;
    struct wg_peer *wg;
    uint8_t key[32];
    char *name;
    struct hwc_prefix *allowed;
    size_t n_allowed;
    struct sockaddr_storage ep;
    socklen_t ep_len;
    bool seen;   /* set_peers bookkeeping */
};

struct hwc_wgdev {
    struct hw_loop *loop;
    struct wg_device *wg;
    struct hwc_tun *tun;
    int tun_fd, udp_fd;
    uint16_t udp_port;
    hwc_wgdev_send_fn send;
    void *arg;
    hwc_wgdev_deliver_fn deliver;   /* no TUN: where decrypted packets go */
    void *deliver_arg;
    struct wpeer *peers;
    struct hw_timer *timer;
    int64_t timer_at;
    uint64_t drops_no_peer, drops_src;
    uint8_t buf[WG_MAX_PACKET];
    /* UDP mode: datagrams sealed during one TUN batch go out in one sendmmsg */
    bool batching;
    size_t n_out;
    struct sockaddr_in6 out_to[UDP_BATCH];
    size_t out_len[UDP_BATCH];
    uint8_t (*out)[UDP_SLOT];
    uint8_t (*in)[UDP_SLOT];
};

static int64_t now_ms(struct hwc_wgdev *w) { return hw_loop_now_ms(w->loop); }

static void timer_cb(struct hw_loop *loop, struct hw_timer *t, void *arg);

/* Runs due WireGuard timers and re-arms the loop timer for the next one. */
static void service(struct hwc_wgdev *w)
{
    int64_t now = now_ms(w);
    int64_t next = wg_device_tick(w->wg, now);
    if (w->timer && w->timer_at == next)
        return;
    if (w->timer) {
        hw_timer_cancel(w->loop, w->timer);
        w->timer = NULL;
    }
    if (next != INT64_MAX) {
        w->timer_at = next;
        w->timer = hw_timer_start(w->loop, next > now ? next - now : 0, timer_cb, w);
    }
}

static void timer_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_wgdev *w = arg;
    w->timer = NULL;
    service(w);
}

static struct wpeer *peer_by_key(const struct hwc_wgdev *w, const uint8_t key[32])
{
    for (struct wpeer *p = w->peers; p; p = p->next)
        if (memcmp(p->key, key, 32) == 0)
            return p;
    return NULL;
}

/* The peer whose AllowedIPs hold addr with the longest prefix. */
static struct wpeer *route_lookup(const struct hwc_wgdev *w, int family, const uint8_t *addr)
{
    struct wpeer *best = NULL;
    int best_bits = -1;
    for (struct wpeer *p = w->peers; p; p = p->next)
        for (size_t i = 0; i < p->n_allowed; i++)
            if (p->allowed[i].bits > best_bits && hwc_prefix_contains(&p->allowed[i], family, addr)) {
                best = p;
                best_bits = p->allowed[i].bits;
            }
    return best;
}

/* The IP version, addresses and real length of a packet; false when it is not one. */
static bool ip_parse(const uint8_t *pkt, size_t len, int *family, const uint8_t **src, const uint8_t **dst,
                     size_t *ip_len)
{
    if (len < 1)
        return false;
    if ((pkt[0] >> 4) == 4 && len >= 20) {
        size_t tot = (size_t)pkt[2] << 8 | pkt[3];
        if (tot < 20 || tot > len)
            return false;
        *family = AF_INET;
        *src = pkt + 12;
        *dst = pkt + 16;
        *ip_len = tot;
        return true;
    }
    if ((pkt[0] >> 4) == 6 && len >= 40) {
        size_t tot = 40 + ((size_t)pkt[4] << 8 | pkt[5]);
        if (tot > len)
            return false;
        *family = AF_INET6;
        *src = pkt + 8;
        *dst = pkt + 24;
        *ip_len = tot;
        return true;
    }
    return false;
}

/* ---- WireGuard callbacks ---- */

static void flush_out(struct hwc_wgdev *w)
{
    struct mmsghdr msgs[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    size_t done = 0;
    while (done < w->n_out) {
        size_t n = w->n_out - done;
        for (size_t i = 0; i < n; i++) {
            iov[i].iov_base = w->out[done + i];
            iov[i].iov_len = w->out_len[done + i];
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_name = &w->out_to[done + i];
            msgs[i].msg_hdr.msg_namelen = sizeof w->out_to[0];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int sent = sendmmsg(w->udp_fd, msgs, (unsigned)n, 0);
        if (sent <= 0) {
            /* a full socket buffer or an unreachable destination: drop this one, as a
             * lost datagram; WireGuard and TCP above recover */
            done++;
            continue;
        }
        done += (size_t)sent;
    }
    w->n_out = 0;
}

static int udp_send(struct hwc_wgdev *w, const struct sockaddr *ep, socklen_t len, const uint8_t *pkt, size_t n)
{
    if (w->udp_fd < 0 || !ep || len == 0)
        return -1;
    struct sockaddr_in6 mapped;
    if (ep->sa_family == AF_INET) {
        /* the socket is dual-stack: v4 destinations as v4-mapped v6 */
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)ep;
        memset(&mapped, 0, sizeof mapped);
        mapped.sin6_family = AF_INET6;
        mapped.sin6_port = in4->sin_port;
        mapped.sin6_addr.s6_addr[10] = mapped.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&mapped.sin6_addr.s6_addr[12], &in4->sin_addr, 4);
        ep = (const struct sockaddr *)&mapped;
        len = sizeof mapped;
    }
    if (w->batching && n <= UDP_SLOT && len == sizeof(struct sockaddr_in6)) {
        if (w->n_out == UDP_BATCH)
            flush_out(w);
        memcpy(&w->out_to[w->n_out], ep, sizeof w->out_to[0]);
        memcpy(w->out[w->n_out], pkt, n);
        w->out_len[w->n_out++] = n;
        return 0;
    }
    return sendto(w->udp_fd, pkt, n, 0, ep, len) < 0 ? -1 : 0;
}

static void wg_send_cb(void *arg, struct wg_peer *wp, const void *reply_to, size_t reply_to_len, const uint8_t *pkt,
                       size_t len)
{
    struct hwc_wgdev *w = arg;
    struct wpeer *p = wp ? wg_peer_user(wp) : NULL;
    if (w->send) {
        w->send(w->arg, p ? p->key : NULL, pkt, len);
        return;
    }
    if (p && reply_to && reply_to_len > 0 && reply_to_len <= sizeof p->ep) {
        memcpy(&p->ep, reply_to, reply_to_len);   /* roaming: answer where it came from */
        p->ep_len = (socklen_t)reply_to_len;
    }
    if (p && p->ep_len)
        udp_send(w, (const struct sockaddr *)&p->ep, p->ep_len, pkt, len);
    else if (!p && reply_to)
        udp_send(w, reply_to, (socklen_t)reply_to_len, pkt, len);
}

static void wg_deliver_cb(void *arg, struct wg_peer *wp, uint8_t *pkt, size_t len)
{
    struct hwc_wgdev *w = arg;
    struct wpeer *p = wg_peer_user(wp);
    int family;
    const uint8_t *src, *dst;
    size_t ip_len;
    if (!ip_parse(pkt, len, &family, &src, &dst, &ip_len)) {
        w->drops_src++;
        return;
    }
    bool allowed = false;
    for (size_t i = 0; i < p->n_allowed && !allowed; i++)
        allowed = hwc_prefix_contains(&p->allowed[i], family, src);
    if (!allowed) {
        char s[INET6_ADDRSTRLEN];
        inet_ntop(family, src, s, sizeof s);
        if (w->drops_src++ % 1000 == 0)
            log_warn("wireguard: dropped a packet from %s with source %s outside its AllowedIPs",
                     p->name ? p->name : "peer", s);
        return;
    }
    if (w->deliver)
        w->deliver(pkt, ip_len, w->deliver_arg);
    else if (w->tun_fd >= 0 && write(w->tun_fd, pkt, ip_len) < 0 && errno != EAGAIN)
        log_debug("wireguard: TUN write: %s", strerror(errno));
}

/* ---- TUN and UDP readers ---- */

static void tun_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_wgdev *w = arg;
    int64_t now = now_ms(w);
    w->batching = w->udp_fd >= 0;
    for (int i = 0; i < TUN_BATCH; i++) {
        ssize_t n = read(fd, w->buf, sizeof w->buf);
        if (n <= 0)
            break;
        int family;
        const uint8_t *src, *dst;
        size_t ip_len;
        if (!ip_parse(w->buf, (size_t)n, &family, &src, &dst, &ip_len))
            continue;
        struct wpeer *p = route_lookup(w, family, dst);
        if (!p) {
            w->drops_no_peer++;
            continue;
        }
        wg_peer_send(p->wg, now, w->buf, ip_len);
    }
    w->batching = false;
    if (w->n_out)
        flush_out(w);
    service(w);
}

void hwc_wgdev_set_deliver(struct hwc_wgdev *w, hwc_wgdev_deliver_fn deliver, void *arg)
{
    w->deliver = deliver;
    w->deliver_arg = arg;
}

int hwc_wgdev_send_ip(struct hwc_wgdev *w, const uint8_t *pkt, size_t len)
{
    int family;
    const uint8_t *src, *dst;
    size_t ip_len;
    if (!ip_parse(pkt, len, &family, &src, &dst, &ip_len))
        return -1;
    struct wpeer *p = route_lookup(w, family, dst);
    if (!p) {
        w->drops_no_peer++;
        return -1;
    }
    wg_peer_send(p->wg, now_ms(w), pkt, ip_len);
    service(w);
    return 0;
}

void hwc_wgdev_input(struct hwc_wgdev *w, const uint8_t *pkt, size_t len, const struct sockaddr *src,
                     socklen_t src_len)
{
    struct wg_peer *from = NULL;
    int rc = wg_device_receive(w->wg, now_ms(w), pkt, len, src, src ? (size_t)src_len : 0, &from);
    if (rc >= 0 && from && src && !w->send) {
        struct wpeer *p = wg_peer_user(from);
        if (src_len <= sizeof p->ep) {
            memcpy(&p->ep, src, src_len);
            p->ep_len = src_len;
        }
    } else if (rc < 0 && rc != WG_RX_REPLAY) {
        log_debug("wireguard: dropped a %zu-byte packet: %s", len, wg_rx_name(rc));
    }
}

/* Normalises a v4-mapped v6 source to AF_INET so endpoints compare and print plainly. */
static socklen_t unmap(struct sockaddr_storage *ss, socklen_t len)
{
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
        return len;
    struct sockaddr_in in4 = {.sin_family = AF_INET, .sin_port = in6->sin6_port};
    memcpy(&in4.sin_addr, &in6->sin6_addr.s6_addr[12], 4);
    memset(ss, 0, sizeof *ss);
    memcpy(ss, &in4, sizeof in4);
    return sizeof in4;
}

static void udp_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_wgdev *w = arg;
    struct mmsghdr msgs[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    struct sockaddr_storage from[UDP_BATCH];
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < UDP_BATCH; i++) {
            iov[i].iov_base = w->in[i];
            iov[i].iov_len = UDP_SLOT;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                continue; /* larger than a slot: not a datagram we sent or accept */
            socklen_t sl = unmap(&from[i], msgs[i].msg_hdr.msg_namelen);
            hwc_wgdev_input(w, w->in[i], msgs[i].msg_len, (struct sockaddr *)&from[i], sl);
        }
        if (n < UDP_BATCH)
            break;
    }
    service(w);
}

/* ---- lifecycle ---- */

struct hwc_wgdev *hwc_wgdev_new(struct hw_loop *loop, const uint8_t priv[32], struct hwc_tun *tun, int mtu,
                                hwc_wgdev_send_fn send, void *arg, char *err, size_t errlen)
{
    struct hwc_wgdev *w = hw_calloc(1, sizeof *w);
    w->loop = loop;
    w->tun = tun;
    w->tun_fd = tun ? hwc_tun_fd(tun) : -1;
    w->udp_fd = -1;
    w->send = send;
    w->arg = arg;
    struct wg_callbacks cb = {.send = wg_send_cb, .deliver = wg_deliver_cb};
    w->wg = wg_device_new(priv, mtu, &cb, w);
    if (!w->wg) {
        snprintf(err, errlen, "WireGuard device: crypto setup failed");
        free(w);
        return NULL;
    }
    if (w->tun_fd >= 0 && hw_loop_add(loop, w->tun_fd, HW_EV_READ, tun_event, w) != 0) {
        snprintf(err, errlen, "TUN device: cannot watch its fd");
        wg_device_free(w->wg);
        free(w);
        return NULL;
    }
    return w;
}

int hwc_wgdev_listen_udp(struct hwc_wgdev *w, int port, char *err, size_t errlen)
{
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int off = 0, buf = 4 << 20;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any};
    if (fd < 0 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        snprintf(err, errlen, "UDP port %d: %s", port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    socklen_t sl = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &sl);
    w->udp_port = ntohs(a.sin6_port);
    if (hw_loop_add(w->loop, fd, HW_EV_READ, udp_event, w) != 0) {
        snprintf(err, errlen, "UDP port %d: cannot watch the socket", port);
        close(fd);
        return -1;
    }
    w->udp_fd = fd;
    w->out = hw_calloc(UDP_BATCH, sizeof *w->out);
    w->in = hw_calloc(UDP_BATCH, sizeof *w->in);
    return 0;
}

uint16_t hwc_wgdev_udp_port(const struct hwc_wgdev *w) { return w->udp_port; }

static void wpeer_free(struct hwc_wgdev *w, struct wpeer *p)
{
    wg_peer_remove(w->wg, p->wg);
    free(p->name);
    free(p->allowed);
    free(p);
}

void hwc_wgdev_free(struct hwc_wgdev *w)
{
    if (!w)
        return;
    if (w->timer)
        hw_timer_cancel(w->loop, w->timer);
    if (w->tun_fd >= 0)
        hw_loop_remove(w->loop, w->tun_fd);
    if (w->udp_fd >= 0) {
        hw_loop_remove(w->loop, w->udp_fd);
        close(w->udp_fd);
    }
    while (w->peers) {
        struct wpeer *p = w->peers;
        w->peers = p->next;
        wpeer_free(w, p);
    }
    wg_device_free(w->wg);
    free(w->out);
    free(w->in);
    free(w);
}

void hwc_wgdev_set_peers(struct hwc_wgdev *w, const struct hwc_wgdev_peer_cfg *cfg, size_t n)
{
    int64_t now = now_ms(w);
    for (struct wpeer *p = w->peers; p; p = p->next)
        p->seen = false;
    for (size_t i = 0; i < n; i++) {
        struct wpeer *p = peer_by_key(w, cfg[i].key);
        if (!p) {
            p = hw_calloc(1, sizeof *p);
            memcpy(p->key, cfg[i].key, 32);
            p->wg = wg_peer_add(w->wg, cfg[i].key, p);
            if (!p->wg) {
                log_warn("wireguard: peer %s has an unusable key; skipped", cfg[i].name ? cfg[i].name : "?");
                free(p);
                continue;
            }
            p->next = w->peers;
            w->peers = p;
        }
        p->seen = true;
        free(p->name);
        p->name = cfg[i].name ? hw_strdup(cfg[i].name) : NULL;
        free(p->allowed);
        p->allowed = hw_calloc(cfg[i].n_allowed ? cfg[i].n_allowed : 1, sizeof *p->allowed);
        if (cfg[i].n_allowed)
            memcpy(p->allowed, cfg[i].allowed, cfg[i].n_allowed * sizeof *p->allowed);
        p->n_allowed = cfg[i].n_allowed;
        if (cfg[i].endpoint && cfg[i].endpoint_len <= sizeof p->ep) {
            memcpy(&p->ep, cfg[i].endpoint, cfg[i].endpoint_len);
            p->ep_len = cfg[i].endpoint_len;
        }
        wg_peer_set_persistent_keepalive(p->wg, now, cfg[i].persistent_keepalive);
    }
    for (struct wpeer **pp = &w->peers; *pp;) {
        struct wpeer *p = *pp;
        if (p->seen) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        wpeer_free(w, p);
    }
    service(w);
}

static void ep_text(const struct wpeer *p, char *out, size_t len)
{
    char a[INET6_ADDRSTRLEN] = "";
    if (!p->ep_len) {
        out[0] = 0;
    } else if (p->ep.ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)&p->ep;
        inet_ntop(AF_INET, &in4->sin_addr, a, sizeof a);
        snprintf(out, len, "%s:%u", a, ntohs(in4->sin_port));
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&p->ep;
        inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof a);
        snprintf(out, len, "[%s]:%u", a, ntohs(in6->sin6_port));
    }
}

static json_t *peer_json(const struct wpeer *p)
{
    struct wg_peer_stats st;
    wg_peer_stats(p->wg, &st);
    json_t *o = json_object();
    json_object_set_new(o, "TxBytes", json_integer((json_int_t)st.tx_bytes));
    json_object_set_new(o, "RxBytes", json_integer((json_int_t)st.rx_bytes));
    char when[40] = "";
    if (st.last_handshake_wall_ns) {
        time_t secs = (time_t)(st.last_handshake_wall_ns / 1000000000ULL);
        struct tm tm;
        gmtime_r(&secs, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    json_object_set_new(o, "LastHandshake", json_string(when));
    char ep[80];
    ep_text(p, ep, sizeof ep);
    if (ep[0])
        json_object_set_new(o, "Endpoint", json_string(ep));
    return o;
}

json_t *hwc_wgdev_peer_status(const struct hwc_wgdev *w, const uint8_t key[32])
{
    const struct wpeer *p = peer_by_key(w, key);
    return p ? peer_json(p) : NULL;
}

json_t *hwc_wgdev_status(const struct hwc_wgdev *w)
{
    json_t *a = json_array();
    for (const struct wpeer *p = w->peers; p; p = p->next) {
        json_t *o = peer_json(p);
        char b64[64];
        sodium_bin2base64(b64, sizeof b64, p->key, 32, sodium_base64_VARIANT_ORIGINAL);
        json_object_set_new(o, "PublicKey", json_string(b64));
        if (p->name)
            json_object_set_new(o, "Name", json_string(p->name));
        json_t *ips = json_array();
        for (size_t i = 0; i < p->n_allowed; i++) {
            char t[64];
            hwc_prefix_format(&p->allowed[i], t, sizeof t);
            json_array_append_new(ips, json_string(t));
        }
        json_object_set_new(o, "AllowedIPs", ips);
        json_array_append_new(a, o);
    }
    return a;
}
