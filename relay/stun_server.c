/* STUN on UDP, in the same loop as DERP: IPv4 and IPv6 sockets (separately, so the
 * IPv4 answers carry the IPv4 family exactly as derper's do). */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define DATAGRAMS_PER_EVENT 64

static void on_stun(struct hw_loop *loop, int fd, int events, void *arg)
{
    for (int i = 0; i < DATAGRAMS_PER_EVENT; i++) {
        uint8_t buf[1500];
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
        if (n < 0)
            return;
        uint8_t txid[HW_STUN_TXID_LEN];
        /* Anything that isn't a well-formed Tailscale binding request is ignored
         * silently: answering junk would make us a reflector. */
        if (hw_stun_parse_binding_request(buf, (size_t)n, txid) != HW_STUN_OK)
            continue;
        struct hw_stun_addr src;
        if (hw_stun_addr_from_sockaddr((struct sockaddr *)&ss, &src) < 0)
            continue;
        uint8_t out[HW_STUN_MAX_RESPONSE];
        size_t len = hw_stun_build_response(out, txid, &src);
        sendto(fd, out, len, MSG_DONTWAIT, (struct sockaddr *)&ss, sl);
    }
}

static int bind_udp(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int one = 1;
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int relay_stun_listen(struct relay *r, const char *host, int port, char *err, size_t err_len)
{
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    /* No host: both wildcards. A host: only that address, as derper binds. */
    const char *hosts[2] = {host, NULL};
    int nh = 1;
    if (!host || !*host) {
        hosts[0] = "0.0.0.0";
        hosts[1] = "::";
        nh = 2;
    }
    for (int i = 0; i < nh; i++) {
        if (r->n_stun >= (int)HW_ARRAY_LEN(r->stun_fds)) {
            snprintf(err, err_len, "STUN: too many sockets");
            return -1;
        }
        struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_PASSIVE | AI_NUMERICHOST};
        struct addrinfo *res = NULL;
        if (getaddrinfo(hosts[i], ports, &hints, &res) != 0 || !res) {
            snprintf(err, err_len, "STUN: %s is not an IP address", hosts[i]);
            return -1;
        }
        int fd = bind_udp(res);
        freeaddrinfo(res);
        if (fd < 0) {
            /* A host without IPv6 still serves IPv4. */
            if (nh == 2 && i == 1 && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
                log_warn("STUN: no IPv6 (%s)", strerror(errno));
                continue;
            }
            snprintf(err, err_len, "STUN: cannot bind %s port %s/udp: %s", hosts[i], ports, strerror(errno));
            return -1;
        }
        if (hw_loop_add(r->loop, fd, HW_EV_READ, on_stun, r) < 0) {
            snprintf(err, err_len, "STUN: cannot watch the socket: %s", strerror(errno));
            close(fd);
            return -1;
        }
        r->stun_fds[r->n_stun++] = fd;
        log_info("STUN on %s%s%s:%s/udp", strchr(hosts[i], ':') ? "[" : "", hosts[i],
                 strchr(hosts[i], ':') ? "]" : "", ports);
    }
    return 0;
}

void stun_close(struct relay *r)
{
    for (int i = 0; i < r->n_stun; i++) {
        hw_loop_remove(r->loop, r->stun_fds[i]);
        close(r->stun_fds[i]);
    }
    r->n_stun = 0;
}
