/* derp_pair: a DERP test client and load generator for hwrelay (or derper).
 *
 *   derp_pair pairs    -s HOST:PORT [-n PAIRS] [-k PACKETS] [-size BYTES] [-w WINDOW]
 *   derp_pair idle     -s HOST:PORT -n CLIENTS [-hold SECONDS]
 *   derp_pair nothere|ping|peergone|dup|garbage|slowreader  -s HOST:PORT
 *   (pairs with -s2 HOST:PORT puts the second client of each pair on another relay)
 * -key HEX gives the first client of a scenario that private key (admission tests);
 * in pairs mode, -key and -key2 are the keys of the two clients of the first pair.
 * TLS: -tls [-ca FILE] [-pin SHA256HEX] [-sni NAME]; without -ca or -pin the system
 * roots must vouch for the certificate.
 *
 * Every client has a fresh node key and does the real handshake (ServerKey, sealed
 * ClientInfo, sealed ServerInfo). Packets carry a pair id and a sequence number so
 * loss and reordering are counted exactly; each direction keeps at most WINDOW
 * packets in flight, below the relay's per-client queue, so a healthy relay drops
 * none. Scenario modes print "ok" or "FAIL: why" and exit 0 / 1. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "proto/derp.h"

struct opts {
    const char *server, *server2;
    bool tls;
    const char *ca, *pin, *sni;
    const char *key;          /* hex private key for the first client of a scenario */
    const char *key2;         /* pairs: the second client of the first pair */
    int n, k, size, window, hold;
};

static struct opts O = {.n = 1, .k = 1000, .size = 1200, .window = 16, .hold = 5};

struct dc {
    int fd;
    SSL *ssl;
    uint8_t priv[32], pub[32], server_pub[32];
    struct hw_derp_reader reader;
    uint8_t buf[65536];
    size_t len, off;          /* unparsed bytes in buf */
    uint8_t frame[HW_DERP_CLIENT_MAX_FRAME];
};

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    exit(1);
}

static int64_t now_ms(void) { return hw_now_ms_mono(); }

static SSL_CTX *client_ctx(void)
{
    static SSL_CTX *ctx;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!ctx) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        if (O.pin) {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);   /* the pin is checked below */
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
            if (O.ca)
                SSL_CTX_load_verify_locations(ctx, O.ca, NULL);
            else
                SSL_CTX_set_default_verify_paths(ctx);
        }
    }
    pthread_mutex_unlock(&mu);
    return ctx;
}

/* sha256-raw pin: SHA-256 of the leaf certificate's DER, as tailscaled checks CertName. */
static int check_pin(SSL *ssl)
{
    X509 *leaf = SSL_get1_peer_certificate(ssl);
    if (!leaf)
        return -1;
    unsigned char *der = NULL;
    int len = i2d_X509(leaf, &der);
    X509_free(leaf);
    unsigned char md[32];
    unsigned int mdlen = 0;
    int ok = len > 0 && EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    char hex[65];
    hw_hex_encode(md, 32, hex);
    return ok && strcmp(hex, O.pin) == 0 ? 0 : -1;
}

static int wait_fd(int fd, short ev, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = ev};
    return poll(&p, 1, timeout_ms);
}

/* Blocking-style write on a non-blocking socket. */
static int dc_write(struct dc *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w;
        if (c->ssl) {
            int rc = SSL_write(c->ssl, p, (int)len);
            if (rc <= 0) {
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    wait_fd(c->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 1000);
                    continue;
                }
                return -1;
            }
            w = rc;
        } else {
            w = send(c->fd, p, len, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    wait_fd(c->fd, POLLOUT, 1000);
                    continue;
                }
                return -1;
            }
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Reads what is there (after waiting up to timeout_ms). 1 = got bytes, 0 = none, -1 = closed. */
static int dc_fill(struct dc *c, int timeout_ms)
{
    if (c->off > 0 && c->off == c->len)
        c->off = c->len = 0;
    if (c->len == sizeof c->buf)
        return 1;
    if (!(c->ssl && SSL_pending(c->ssl) > 0) && wait_fd(c->fd, POLLIN, timeout_ms) <= 0)
        return 0;
    ssize_t n;
    if (c->ssl) {
        int rc = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof c->buf - c->len));
        if (rc <= 0) {
            int e = SSL_get_error(c->ssl, rc);
            return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
        }
        n = rc;
    } else {
        n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        if (n == 0)
            return -1;
    }
    c->len += (size_t)n;
    return 1;
}

/* Next frame: 1, 0 on timeout, -1 on close or a broken stream. The payload is copied
 * into c->frame so it survives further reads. */
static int dc_next(struct dc *c, struct hw_derp_frame *f, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        const uint8_t *p = c->buf + c->off;
        size_t left = c->len - c->off;
        int rc = hw_derp_reader_next(&c->reader, &p, &left, f);
        c->off = (size_t)(p - c->buf);
        if (rc == HW_DERP_READ_ERROR)
            return -1;
        if (rc == HW_DERP_READ_FRAME) {
            memcpy(c->frame, f->payload, f->len);
            f->payload = c->frame;
            return 1;
        }
        int64_t rem = deadline - now_ms();
        if (rem < 0)
            return 0;
        int got = dc_fill(c, (int)rem);
        if (got < 0)
            return -1;
    }
}

static int tcp_connect(const char *hostport)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    char *h = host;
    if (h[0] == '[') {
        h++;
        h[strlen(h) - 1] = '\0';
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(h, colon + 1, &hints, &res) != 0)
        return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* Connect, upgrade, handshake. priv NULL = a fresh key. Returns 0 or -1 with why. */
static int dc_open(struct dc *c, const char *server, const uint8_t *priv, const uint8_t *mesh_key,
                   char *why, size_t why_len)
{
    memset(c, 0, offsetof(struct dc, buf));
    c->len = c->off = 0;
    hw_derp_reader_init(&c->reader, HW_DERP_SIDE_CLIENT);
    if (priv)
        memcpy(c->priv, priv, 32);
    else
        randombytes_buf(c->priv, 32);
    c->priv[0] &= 248;
    c->priv[31] = (c->priv[31] & 127) | 64;
    crypto_scalarmult_base(c->pub, c->priv);
    c->fd = tcp_connect(server);
    if (c->fd < 0) {
        snprintf(why, why_len, "connect %s: %s", server, strerror(errno));
        return -1;
    }
    if (O.tls) {
        c->ssl = SSL_new(client_ctx());
        SSL_set_fd(c->ssl, c->fd);
        if (O.sni)
            SSL_set_tlsext_host_name(c->ssl, O.sni);
        if (O.sni && !O.pin)
            SSL_set1_host(c->ssl, O.sni);
        if (SSL_connect(c->ssl) != 1) {
            snprintf(why, why_len, "TLS handshake: %s", ERR_reason_error_string(ERR_get_error()));
            return -1;
        }
        if (O.pin && check_pin(c->ssl) < 0) {
            snprintf(why, why_len, "certificate does not match the sha256-raw pin");
            return -1;
        }
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    char req[256];
    snprintf(req, sizeof req, "GET /derp HTTP/1.1\r\nHost: %s\r\nUser-Agent: derp_pair\r\nConnection: Upgrade\r\n"
                              "Upgrade: DERP\r\n\r\n", O.sni ? O.sni : "relay");
    if (dc_write(c, req, strlen(req)) < 0) {
        snprintf(why, why_len, "write upgrade");
        return -1;
    }
    /* The 101 head, then frames. */
    int64_t deadline = now_ms() + 5000;
    char *end = NULL;
    while (!end) {
        if (now_ms() > deadline || dc_fill(c, 500) < 0) {
            snprintf(why, why_len, "no 101 from the relay");
            return -1;
        }
        c->buf[c->len < sizeof c->buf ? c->len : sizeof c->buf - 1] = 0;
        end = strstr((char *)c->buf, "\r\n\r\n");
    }
    if (strncmp((char *)c->buf, "HTTP/1.1 101", 12) != 0) {
        snprintf(why, why_len, "upgrade refused: %.40s", (char *)c->buf);
        return -1;
    }
    c->off = (size_t)(end + 4 - (char *)c->buf);
    struct hw_derp_frame f;
    if (dc_next(c, &f, 5000) != 1 || f.type != HW_DERP_SERVER_KEY ||
        hw_derp_parse_server_key(f.payload, f.len, c->server_pub) < 0) {
        snprintf(why, why_len, "no ServerKey");
        return -1;
    }
    struct hw_derp_client_info ci = {.version = 2, .can_ack_pings = true};
    if (mesh_key) {
        ci.has_mesh_key = true;
        memcpy(ci.mesh_key, mesh_key, 32);
    }
    size_t n = 0;
    uint8_t *frame = hw_derp_build_client_info(c->priv, c->pub, c->server_pub, &ci, NULL, &n);
    int wrc = dc_write(c, frame, n);
    free(frame);
    if (wrc < 0) {
        snprintf(why, why_len, "write ClientInfo");
        return -1;
    }
    int rc;
    while ((rc = dc_next(c, &f, 5000)) == 1 && f.type != HW_DERP_SERVER_INFO) {
    }
    const char *err = "closed";
    struct hw_derp_server_info si;
    if (rc != 1 || hw_derp_open_server_info(c->priv, c->server_pub, f.payload, f.len, &si, &err) < 0) {
        snprintf(why, why_len, "no ServerInfo: %s", rc == 0 ? "timeout" : err);
        return -1;
    }
    return 0;
}

static void dc_close(struct dc *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    hw_derp_reader_free(&c->reader);
}

static struct dc *dc_new_or_die(const char *server)
{
    struct dc *c = hw_malloc(sizeof *c);
    char why[256];
    uint8_t priv[32];
    const uint8_t *use = NULL;
    if (O.key) {
        if (hw_hex_decode(O.key, priv, 32) != 32)
            die("-key wants 64 hex digits");
        use = priv;
        O.key = NULL;   /* only the first client */
    }
    if (dc_open(c, server, use, NULL, why, sizeof why) < 0)
        die("%s", why);
    return c;
}

static int dc_send_packet(struct dc *c, const uint8_t dst[32], const uint8_t *data, size_t len)
{
    uint8_t frame[HW_DERP_HDR_LEN + 32 + 65536];
    size_t n = hw_derp_build_send_packet(frame, sizeof frame, dst, data, len);
    return n ? dc_write(c, frame, n) : -1;
}

/* Waits for a frame of one type, skipping others (KeepAlive etc). */
static int dc_expect(struct dc *c, uint8_t type, struct hw_derp_frame *f, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int64_t rem = deadline - now_ms();
        if (rem <= 0)
            return 0;
        int rc = dc_next(c, f, (int)rem);
        if (rc != 1)
            return rc;
        if (f->type == type)
            return 1;
    }
}

/* ---- pairs ---- */

struct pair_result {
    int id;
    uint64_t recv, lost, reordered, bytes;
    char why[256];
};

struct dir_state {
    uint64_t sent, recv, expect;
};

static void fill_packet(uint8_t *p, int size, int pair, uint64_t seq)
{
    memset(p, (int)(seq & 0xff), (size_t)size);
    memcpy(p, &seq, 8);
    memcpy(p + 8, &pair, 4);
}

/* Reads whatever frames are ready on one side, counting order. */
static int drain(struct dc *c, const uint8_t from[32], struct dir_state *d, struct pair_result *res, int wait)
{
    struct hw_derp_frame f;
    int rc = dc_next(c, &f, wait);
    while (rc == 1) {
        if (f.type == HW_DERP_RECV_PACKET) {
            const uint8_t *src, *data;
            uint32_t dl;
            if (hw_derp_parse_recv_packet(f.payload, f.len, &src, &data, &dl) < 0 || memcmp(src, from, 32) != 0 ||
                dl < 12) {
                snprintf(res->why, sizeof res->why, "unexpected packet");
                return -1;
            }
            uint64_t seq;
            memcpy(&seq, data, 8);
            if (seq != d->expect) {
                if (seq > d->expect)
                    res->lost += seq - d->expect;
                else
                    res->reordered++;
            }
            d->expect = seq + 1;
            d->recv++;
            res->recv++;
            res->bytes += dl;
        }
        rc = dc_next(c, &f, 0);
    }
    if (rc < 0) {
        snprintf(res->why, sizeof res->why, "connection closed");
        return -1;
    }
    return 0;
}

static void *run_pair(void *arg)
{
    struct pair_result *res = arg;
    struct dc *a = hw_malloc(sizeof *a), *b = hw_malloc(sizeof *b);
    char why[256];
    uint8_t ka[32], kb[32];
    const uint8_t *use_a = NULL, *use_b = NULL;
    if (res->id == 0 && O.key && hw_hex_decode(O.key, ka, 32) == 32)
        use_a = ka;
    if (res->id == 0 && O.key2 && hw_hex_decode(O.key2, kb, 32) == 32)
        use_b = kb;
    if (dc_open(a, O.server, use_a, NULL, why, sizeof why) < 0 ||
        dc_open(b, O.server2 ? O.server2 : O.server, use_b, NULL, why, sizeof why) < 0) {
        snprintf(res->why, sizeof res->why, "%s", why);
        free(a);
        free(b);
        return NULL;
    }
    /* With two relays (mesh), give the PeerPresent a moment to reach the other side. */
    if (O.server2)
        usleep(300 * 1000);
    struct dir_state ab = {0}, ba = {0};
    uint8_t *pkt = hw_malloc((size_t)O.size);
    size_t batch_cap = 256 << 10;
    uint8_t *batch = hw_malloc(batch_cap);
    int64_t last_progress = now_ms();
    uint64_t k = (uint64_t)O.k;
    while (ab.recv + res->lost < k || ba.recv < k) {
        /* Each side's window goes out as one write, as a busy tailscaled batches. */
        for (int side = 0; side < 2; side++) {
            struct dc *from = side ? b : a, *to = side ? a : b;
            struct dir_state *d = side ? &ba : &ab;
            size_t used = 0;
            while (d->sent < k && d->sent - d->recv < (uint64_t)O.window &&
                   used + HW_DERP_HDR_LEN + 32 + (size_t)O.size <= batch_cap) {
                fill_packet(pkt, O.size, res->id, d->sent);
                used += hw_derp_build_send_packet(batch + used, batch_cap - used, to->pub, pkt, (size_t)O.size);
                d->sent++;
            }
            if (used && dc_write(from, batch, used) < 0)
                goto broken;
        }
        uint64_t before = ab.recv + ba.recv;
        struct pollfd p[2] = {{.fd = a->fd, .events = POLLIN}, {.fd = b->fd, .events = POLLIN}};
        bool pend = (a->ssl && SSL_pending(a->ssl)) || (b->ssl && SSL_pending(b->ssl)) || a->off < a->len ||
                    b->off < b->len;
        if (!pend)
            poll(p, 2, 200);
        if (drain(b, a->pub, &ab, res, 0) < 0 || drain(a, b->pub, &ba, res, 0) < 0)
            goto done;
        if (ab.recv + ba.recv > before)
            last_progress = now_ms();
        else if (now_ms() - last_progress > 5000) {
            /* Whatever is still missing after 5 s of silence was lost. */
            res->lost += (k - ab.recv) + (k - ba.recv);
            snprintf(res->why, sizeof res->why, "stalled: %llu/%llu and %llu/%llu received",
                     (unsigned long long)ab.recv, (unsigned long long)k, (unsigned long long)ba.recv,
                     (unsigned long long)k);
            goto done;
        }
    }
    goto done;
broken:
    snprintf(res->why, sizeof res->why, "send failed");
done:
    free(pkt);
    free(batch);
    dc_close(a);
    dc_close(b);
    free(a);
    free(b);
    return NULL;
}

static int mode_pairs(void)
{
    pthread_t *th = hw_calloc((size_t)O.n, sizeof *th);
    struct pair_result *res = hw_calloc((size_t)O.n, sizeof *res);
    int64_t start = now_ms();
    for (int i = 0; i < O.n; i++) {
        res[i].id = i;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 256 << 10);
        if (pthread_create(&th[i], &at, run_pair, &res[i]) != 0)
            die("pthread_create");
        pthread_attr_destroy(&at);
    }
    uint64_t recv = 0, lost = 0, reord = 0, bytes = 0;
    int failed = 0;
    for (int i = 0; i < O.n; i++) {
        pthread_join(th[i], NULL);
        recv += res[i].recv;
        lost += res[i].lost;
        reord += res[i].reordered;
        bytes += res[i].bytes;
        if (res[i].why[0]) {
            if (failed++ < 5)
                fprintf(stderr, "pair %d: %s\n", i, res[i].why);
        }
    }
    double secs = (double)(now_ms() - start) / 1000.0;
    if (secs <= 0)
        secs = 0.001;
    printf("pairs=%d packets_per_direction=%d size=%d received=%llu lost=%llu reordered=%llu "
           "seconds=%.2f pps=%.0f MBps=%.1f\n",
           O.n, O.k, O.size, (unsigned long long)recv, (unsigned long long)lost, (unsigned long long)reord, secs,
           (double)recv / secs, (double)bytes / secs / 1e6);
    free(th);
    free(res);
    bool ok = !failed && lost == 0 && reord == 0 && recv == 2ull * (uint64_t)O.n * (uint64_t)O.k;
    printf("%s\n", ok ? "ok" : "FAIL: packets lost, reordered or pairs failed");
    return ok ? 0 : 1;
}

/* ---- idle clients, for the memory measurement ---- */

static int mode_idle(void)
{
    struct dc **cs = hw_calloc((size_t)O.n, sizeof *cs);
    for (int i = 0; i < O.n; i++) {
        cs[i] = hw_malloc(sizeof *cs[i]);
        char why[256];
        if (dc_open(cs[i], O.server, NULL, NULL, why, sizeof why) < 0)
            die("client %d: %s", i, why);
        /* The big frame buffer is only for the active modes. */
    }
    printf("connected %d\n", O.n);
    fflush(stdout);
    /* Hold until told (stdin closes) or the time is up. */
    int64_t end = now_ms() + (int64_t)O.hold * 1000;
    while (now_ms() < end) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        if (poll(&p, 1, 200) == 1) {
            char b[64];
            if (read(0, b, sizeof b) <= 0)
                break;
        }
    }
    for (int i = 0; i < O.n; i++) {
        dc_close(cs[i]);
        free(cs[i]);
    }
    free(cs);
    printf("ok\n");
    return 0;
}

/* ---- scenarios ---- */

static const uint8_t disco_magic[6] = {0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac};

static int mode_nothere(void)
{
    struct dc *a = dc_new_or_die(O.server);
    uint8_t nobody[32], pkt[80] = {0};
    randombytes_buf(nobody, 32);
    memcpy(pkt, disco_magic, 6);
    /* A non-disco packet to nowhere is dropped silently... */
    if (dc_send_packet(a, nobody, (const uint8_t *)"plain data, not disco", 21) < 0)
        die("send");
    struct hw_derp_frame f;
    if (dc_expect(a, HW_DERP_PEER_GONE, &f, 500) != 0)
        die("PeerGone for a non-disco packet");
    /* ...a disco-looking one is answered with PeerGone(NotHere). */
    if (dc_send_packet(a, nobody, pkt, sizeof pkt) < 0)
        die("send");
    if (dc_expect(a, HW_DERP_PEER_GONE, &f, 2000) != 1)
        die("no PeerGone");
    const uint8_t *k;
    uint8_t reason;
    if (hw_derp_parse_peer_gone(f.payload, f.len, &k, &reason) < 0 || memcmp(k, nobody, 32) != 0 ||
        reason != HW_DERP_GONE_NOT_HERE)
        die("wrong PeerGone (reason %d)", reason);
    dc_close(a);
    free(a);
    printf("ok\n");
    return 0;
}

static int mode_ping(void)
{
    struct dc *a = dc_new_or_die(O.server);
    uint8_t frame[16];
    size_t n = hw_derp_build_ping(frame, sizeof frame, (const uint8_t *)"fxping01");
    if (dc_write(a, frame, n) < 0)
        die("send ping");
    struct hw_derp_frame f;
    if (dc_expect(a, HW_DERP_PONG, &f, 2000) != 1 || f.len != 8 || memcmp(f.payload, "fxping01", 8) != 0)
        die("no pong with the ping's bytes");
    dc_close(a);
    free(a);
    printf("ok\n");
    return 0;
}

static int mode_peergone(void)
{
    /* With -s2, B is on the other relay of a mesh and the notice crosses it. */
    struct dc *a = dc_new_or_die(O.server), *b = dc_new_or_die(O.server2 ? O.server2 : O.server);
    if (O.server2)
        usleep(300 * 1000);
    struct hw_derp_frame f;
    if (dc_send_packet(b, a->pub, (const uint8_t *)"hello A", 7) < 0 || dc_expect(a, HW_DERP_RECV_PACKET, &f, 2000) != 1)
        die("A did not receive from B");
    dc_close(b);
    if (dc_expect(a, HW_DERP_PEER_GONE, &f, 2000) != 1)
        die("no PeerGone after B left");
    const uint8_t *k;
    uint8_t reason;
    if (hw_derp_parse_peer_gone(f.payload, f.len, &k, &reason) < 0 || memcmp(k, b->pub, 32) != 0 ||
        reason != HW_DERP_GONE_DISCONNECTED)
        die("wrong PeerGone");
    dc_close(a);
    free(a);
    free(b);
    printf("ok\n");
    return 0;
}

static int mode_dup(void)
{
    struct dc *sender = dc_new_or_die(O.server);
    struct dc *old = hw_malloc(sizeof *old), *newer = hw_malloc(sizeof *newer);
    char why[256];
    uint8_t priv[32];
    randombytes_buf(priv, 32);
    if (dc_open(old, O.server, priv, NULL, why, sizeof why) < 0 || dc_open(newer, O.server, priv, NULL, why, sizeof why) < 0)
        die("%s", why);
    struct hw_derp_frame f;
    if (dc_send_packet(sender, newer->pub, (const uint8_t *)"to the newest", 13) < 0)
        die("send");
    if (dc_expect(newer, HW_DERP_RECV_PACKET, &f, 2000) != 1)
        die("the newest connection did not get the packet");
    if (dc_expect(old, HW_DERP_RECV_PACKET, &f, 300) != 0)
        die("the older connection got it too");
    /* The older one speaks: it becomes the active one (last writer wins). */
    uint8_t ping[16];
    if (dc_write(old, ping, hw_derp_build_ping(ping, sizeof ping, (const uint8_t *)"iamhere!")) < 0 ||
        dc_expect(old, HW_DERP_PONG, &f, 2000) != 1)
        die("old connection ping");
    if (dc_send_packet(sender, newer->pub, (const uint8_t *)"to the speaker", 14) < 0 ||
        dc_expect(old, HW_DERP_RECV_PACKET, &f, 2000) != 1)
        die("the connection that spoke last did not get the packet");
    /* When it leaves, the other takes over, and nobody is told the key left. */
    dc_close(old);
    usleep(200 * 1000);
    if (dc_send_packet(sender, newer->pub, (const uint8_t *)"after", 5) < 0 ||
        dc_expect(newer, HW_DERP_RECV_PACKET, &f, 2000) != 1)
        die("the remaining connection did not take over");
    if (dc_expect(sender, HW_DERP_PEER_GONE, &f, 300) != 0)
        die("PeerGone while the key is still connected");
    dc_close(newer);
    dc_close(sender);
    free(old);
    free(newer);
    free(sender);
    printf("ok\n");
    return 0;
}

static int mode_garbage(void)
{
    struct dc *a = dc_new_or_die(O.server), *b = dc_new_or_die(O.server), *bad = dc_new_or_die(O.server);
    /* NotePreferred may only carry one byte: the relay must drop this connection. */
    uint8_t junk[8] = {HW_DERP_NOTE_PREFERRED, 0, 0, 0, 3, 1, 1, 1};
    if (dc_write(bad, junk, sizeof junk) < 0)
        die("write");
    struct hw_derp_frame f;
    int rc;
    while ((rc = dc_next(bad, &f, 2000)) == 1) {
    }
    if (rc != -1)
        die("connection with a malformed frame stayed open");
    /* An oversize length closes too. */
    struct dc *bad2 = dc_new_or_die(O.server);
    uint8_t hdr[5];
    hw_derp_put_header(hdr, HW_DERP_SEND_PACKET, 10u << 20);
    if (dc_write(bad2, hdr, 5) < 0)
        die("write");
    while ((rc = dc_next(bad2, &f, 2000)) == 1) {
    }
    if (rc != -1)
        die("connection with an oversize frame stayed open");
    /* Everyone else is unaffected. */
    if (dc_send_packet(a, b->pub, (const uint8_t *)"still here", 10) < 0 || dc_expect(b, HW_DERP_RECV_PACKET, &f, 2000) != 1)
        die("other clients broken after garbage");
    dc_close(a);
    dc_close(b);
    dc_close(bad);
    dc_close(bad2);
    free(a);
    free(b);
    free(bad);
    free(bad2);
    printf("ok\n");
    return 0;
}

/* One client never reads while another floods it: the relay must keep serving the
 * others, drop the flood beyond its queue, and finally drop the reader that stalls. */
static int mode_slowreader(void)
{
    struct dc *sink = dc_new_or_die(O.server), *flood = dc_new_or_die(O.server);
    struct dc *a = dc_new_or_die(O.server), *b = dc_new_or_die(O.server);
    uint8_t pkt[1200];
    memset(pkt, 0x5a, sizeof pkt);
    struct hw_derp_frame f;
    for (int i = 0; i < O.k; i++) {
        if (dc_send_packet(flood, sink->pub, pkt, sizeof pkt) < 0)
            die("flood send %d failed", i);
        /* Meanwhile an unrelated pair keeps talking, promptly. */
        if (i % 500 == 0) {
            int64_t t0 = now_ms();
            if (dc_send_packet(a, b->pub, pkt, 100) < 0 || dc_expect(b, HW_DERP_RECV_PACKET, &f, 2000) != 1)
                die("other pair stalled behind the slow reader (packet %d)", i);
            if (now_ms() - t0 > 1000)
                die("other pair slowed down to %lld ms", (long long)(now_ms() - t0));
        }
    }
    printf("flooded %d packets\n", O.k);
    fflush(stdout);
    /* Hold the sink open (unread) for a while so the relay's write timeout can act. */
    sleep((unsigned)O.hold);
    if (dc_send_packet(a, b->pub, pkt, 100) < 0 || dc_expect(b, HW_DERP_RECV_PACKET, &f, 2000) != 1)
        die("other pair broken at the end");
    dc_close(sink);
    dc_close(flood);
    dc_close(a);
    dc_close(b);
    free(sink);
    free(flood);
    free(a);
    free(b);
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || sodium_init() < 0) {
        fprintf(stderr, "usage: derp_pair pairs|idle|nothere|ping|peergone|dup|garbage -s HOST:PORT ...\n");
        return 2;
    }
    const char *mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name, stmt)                \
    if (!strcmp(a, name) && v) {       \
        stmt;                          \
        i++;                           \
        continue;                      \
    }
        OPT("-s", O.server = v);
        OPT("-s2", O.server2 = v);
        OPT("-n", O.n = atoi(v));
        OPT("-k", O.k = atoi(v));
        OPT("-size", O.size = atoi(v));
        OPT("-w", O.window = atoi(v));
        OPT("-hold", O.hold = atoi(v));
        OPT("-ca", O.ca = v);
        OPT("-pin", O.pin = v);
        OPT("-sni", O.sni = v);
        OPT("-key", O.key = v);
        OPT("-key2", O.key2 = v);
#undef OPT
        if (!strcmp(a, "-tls")) {
            O.tls = true;
            continue;
        }
        fprintf(stderr, "derp_pair: unknown argument %s\n", a);
        return 2;
    }
    uint8_t check[32];
    if ((O.key && hw_hex_decode(O.key, check, 32) != 32) || (O.key2 && hw_hex_decode(O.key2, check, 32) != 32)) {
        fprintf(stderr, "derp_pair: -key and -key2 want 64 hex digits\n");
        return 2;
    }
    if (!O.server || O.n < 1 || O.k < 1 || O.size < 12 || O.size > 65536 || O.window < 1) {
        fprintf(stderr, "derp_pair: need -s HOST:PORT and sane -n/-k/-size/-w\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(mode, "pairs"))
        return mode_pairs();
    if (!strcmp(mode, "idle"))
        return mode_idle();
    if (!strcmp(mode, "nothere"))
        return mode_nothere();
    if (!strcmp(mode, "ping"))
        return mode_ping();
    if (!strcmp(mode, "peergone"))
        return mode_peergone();
    if (!strcmp(mode, "dup"))
        return mode_dup();
    if (!strcmp(mode, "garbage"))
        return mode_garbage();
    if (!strcmp(mode, "slowreader"))
        return mode_slowreader();
    fprintf(stderr, "derp_pair: unknown mode %s\n", mode);
    return 2;
}
