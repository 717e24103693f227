/* magicsock's path layer between two real instances on one event loop, over UDP on
 * 127.0.0.1 (no DERP map: direct paths only): disco ping/pong, the trusted path that
 * hwc_magic_send then uses, the receive demux (disco / WireGuard / other), and disco
 * from keys outside the peer set. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "client/magicsock.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/disco.h"
#include "proto/keys.h"
#include "tests/unit/testlib.h"

struct side {
    struct hwc_magic *m;
    uint8_t node_priv[32], node_pub[32], disco_pub[32];
    char ep[64];
    uint8_t wg_last[2048];
    size_t wg_len;
    int wg_count;
    int endpoint_calls;
};

static struct hw_loop *loop;
static struct side A, B;

static void on_netinfo(const json_t *ni, void *arg) {}
static void on_derp_packet(const uint8_t src[32], int region, const uint8_t *d, size_t n, void *arg) {}
static void on_wg(const uint8_t *pkt, size_t len, void *arg)
{
    struct side *s = arg;
    s->wg_count++;
    s->wg_len = len < sizeof s->wg_last ? len : sizeof s->wg_last;
    memcpy(s->wg_last, pkt, s->wg_len);
}
static void on_endpoints(const char *const *eps, const int *types, size_t n, void *arg)
{
    struct side *s = arg;
    s->endpoint_calls++;
}

static const struct hwc_magic_callbacks cbs = {
    .on_netinfo = on_netinfo,
    .on_derp_packet = on_derp_packet,
    .on_wg_packet = on_wg,
    .on_endpoints = on_endpoints,
};

static int side_new(struct side *s)
{
    memset(s, 0, sizeof *s);
    struct hwc_magic_opts o = {.port = 0};
    char err[300];
    s->m = hwc_magic_new(loop, &o, &cbs, s, err, sizeof err);
    if (!s->m) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    hw_key_generate(s->node_priv);
    hw_key_public(s->node_priv, s->node_pub);
    hwc_magic_set_private_key(s->m, s->node_priv);
    hwc_magic_disco_public(s->m, s->disco_pub);
    snprintf(s->ep, sizeof s->ep, "127.0.0.1:%u", hwc_magic_port(s->m));
    return 0;
}

static void peer_of(const struct side *s, struct hwc_magic_peer *p, const char **ep)
{
    memset(p, 0, sizeof *p);
    memcpy(p->node_key, s->node_pub, 32);
    memcpy(p->disco_key, s->disco_pub, 32);
    *ep = s->ep;
    p->endpoints = ep;
    p->n_endpoints = 1;
}

static void stop_cb(struct hw_loop *l, struct hw_timer *t, void *arg)
{
    *(bool *)arg = true;
    hw_loop_stop(l);
}

/* Runs the loop for ms (or until something stops it first). */
static void run_for(int64_t ms)
{
    bool fired = false;
    struct hw_timer *t = hw_timer_start(loop, ms, stop_cb, &fired);
    hw_loop_run(loop);
    if (!fired)
        hw_timer_cancel(loop, t);
}

struct ping_out {
    bool done;
    struct hwc_magic_ping_result r;
    char err[300];
};

static void ping_done(const struct hwc_magic_ping_result *r, const char *err, void *arg)
{
    struct ping_out *o = arg;
    o->done = true;
    if (r)
        o->r = *r;
    snprintf(o->err, sizeof o->err, "%s", err ? err : "");
    hw_loop_stop(loop);
}

static json_int_t stat_of(struct hwc_magic *m, const char *key)
{
    json_t *st = hwc_magic_status(m);
    json_int_t v = json_integer_value(json_object_get(st, key));
    json_decref(st);
    return v;
}

static void test_ping_direct_then_send(void)
{
    struct hwc_magic_peer pa, pb;
    const char *epa, *epb;
    peer_of(&B, &pb, &epb);
    peer_of(&A, &pa, &epa);
    hwc_magic_set_peers(A.m, &pb, 1);
    hwc_magic_set_peers(B.m, &pa, 1);
    CHECK(A.endpoint_calls >= 1, "no endpoints reported at start");

    struct ping_out out = {0};
    char err[300];
    CHECK(hwc_magic_ping(A.m, B.node_pub, ping_done, &out, err, sizeof err) == 0, "%s", err);
    run_for(3000);
    CHECK(out.done && !out.r.timed_out && !out.err[0], "no pong: %s", out.err);
    CHECK_STR(out.r.endpoint, B.ep);
    CHECK(out.r.latency_us > 0, "latency %lld", (long long)out.r.latency_us);

    json_t *ps = hwc_magic_peer_status(A.m, B.node_pub);
    CHECK(ps != NULL, "no status for B");
    const char *cur = json_string_value(json_object_get(ps, "CurAddr"));
    bool ok = cur && strcmp(cur, B.ep) == 0;
    json_decref(ps);
    CHECK(ok, "CurAddr is not %s", B.ep);

    /* the trusted path carries WireGuard packets straight to B's on_wg_packet */
    uint8_t pkt[148] = {1, 0, 0, 0};
    randombytes_buf(pkt + 4, sizeof pkt - 4);
    CHECK(hwc_magic_send(A.m, B.node_pub, pkt, sizeof pkt, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 100 && B.wg_count == 0; i++)
        run_for(10);
    CHECK_INT(B.wg_count, 1);
    CHECK_INT(B.wg_len, sizeof pkt);
    CHECK(memcmp(B.wg_last, pkt, sizeof pkt) == 0, "packet changed on the way");
    CHECK(stat_of(B.m, "WireGuardReceived") == 1, "B's WireGuard counter");
}

static int raw_send(uint16_t port, const uint8_t *pkt, size_t len)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ssize_t n = sendto(fd, pkt, len, 0, (struct sockaddr *)&to, sizeof to);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

static void test_receive_demux(void)
{
    json_int_t other = stat_of(B.m, "UDPOtherPackets"), unknown = stat_of(B.m, "DiscoFromUnknownKeys");
    int wg = B.wg_count;
    /* not WireGuard: type 5, or type 1 without the zero bytes */
    uint8_t junk[40] = {5, 0, 0, 0};
    CHECK(raw_send(hwc_magic_port(B.m), junk, sizeof junk) == 0, "send");
    junk[0] = 1;
    junk[2] = 7;
    CHECK(raw_send(hwc_magic_port(B.m), junk, sizeof junk) == 0, "send");
    /* WireGuard transport data from anyone reaches on_wg_packet (WireGuard decides) */
    uint8_t data[32] = {4, 0, 0, 0};
    CHECK(raw_send(hwc_magic_port(B.m), data, sizeof data) == 0, "send");
    /* disco from a key that is no peer of B's */
    uint8_t stranger_priv[32], stranger_pub[32], shared[32], plain[64], pkt[256];
    hw_key_generate(stranger_priv);
    hw_key_public(stranger_priv, stranger_pub);
    CHECK(hw_box_shared(shared, B.disco_pub, stranger_priv) == 0, "shared");
    struct hw_disco_msg ping = {.type = HW_DISCO_PING};
    long n = hw_disco_encode(&ping, plain, sizeof plain);
    long len = hw_disco_seal(pkt, sizeof pkt, stranger_pub, shared, NULL, plain, (size_t)n);
    CHECK(len > 0 && raw_send(hwc_magic_port(B.m), pkt, (size_t)len) == 0, "send");
    for (int i = 0; i < 100 && stat_of(B.m, "DiscoFromUnknownKeys") == unknown; i++)
        run_for(10);
    run_for(20);
    CHECK_INT(stat_of(B.m, "UDPOtherPackets"), other + 2);
    CHECK_INT(stat_of(B.m, "DiscoFromUnknownKeys"), unknown + 1);
    CHECK_INT(B.wg_count, wg + 1);
    /* a disco packet claiming A's key but sealed with another: counted as bad, not
     * answered */
    json_int_t bad = stat_of(B.m, "DiscoBad");
    memcpy(pkt + HW_DISCO_MAGIC_LEN, A.disco_pub, 32);
    CHECK(raw_send(hwc_magic_port(B.m), pkt, (size_t)len) == 0, "send");
    for (int i = 0; i < 100 && stat_of(B.m, "DiscoBad") == bad; i++)
        run_for(10);
    CHECK_INT(stat_of(B.m, "DiscoBad"), bad + 1);
}

static void test_peer_left_and_errors(void)
{
    char err[300];
    uint8_t nobody[32] = {9};
    struct ping_out out = {0};
    CHECK(hwc_magic_ping(A.m, nobody, ping_done, &out, err, sizeof err) < 0, "ping to no peer started");
    CHECK(strstr(err, "not a peer") != NULL, "%s", err);
    CHECK(hwc_magic_send(A.m, nobody, (const uint8_t *)"\x04\0\0\0", 4, err, sizeof err) < 0, "send to no peer");
    /* a peer without a disco key cannot be pinged */
    struct hwc_magic_peer pb;
    const char *epb;
    peer_of(&B, &pb, &epb);
    memset(pb.disco_key, 0, 32);
    hwc_magic_set_peers(A.m, &pb, 1);
    CHECK(hwc_magic_ping(A.m, B.node_pub, ping_done, &out, err, sizeof err) < 0, "ping without disco key");
    CHECK(strstr(err, "disco key") != NULL, "%s", err);
    /* a ping under way when the peer leaves the set ends with a reason */
    peer_of(&B, &pb, &epb);
    hwc_magic_set_peers(A.m, &pb, 1);
    hwc_magic_set_peers(B.m, NULL, 0); /* B no longer knows A: it will not answer */
    CHECK(hwc_magic_ping(A.m, B.node_pub, ping_done, &out, err, sizeof err) == 0, "%s", err);
    run_for(200);
    CHECK(!out.done, "B answered a node it does not know");
    hwc_magic_set_peers(A.m, NULL, 0);
    CHECK(out.done && strstr(out.err, "left the network map") != NULL, "ping result: %s", out.err);
}

static void test_shutdown_answers_pending_ping(void)
{
    struct hwc_magic_peer pb;
    const char *epb;
    peer_of(&B, &pb, &epb);
    hwc_magic_set_peers(A.m, &pb, 1);
    struct ping_out out = {0};
    char err[300];
    CHECK(hwc_magic_ping(A.m, B.node_pub, ping_done, &out, err, sizeof err) == 0, "%s", err);
    hwc_magic_free(A.m);
    A.m = NULL;
    CHECK(out.done && strstr(out.err, "stopping") != NULL, "ping result at shutdown: %s", out.err);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    setenv("HWCLIENT_ENDPOINT_INTERFACES", "lo", 1);
    loop = hw_loop_new();
    if (side_new(&A) < 0 || side_new(&B) < 0)
        return 1;
    RUN(test_ping_direct_then_send);
    RUN(test_receive_demux);
    RUN(test_peer_left_and_errors);
    RUN(test_shutdown_answers_pending_ping);
    hwc_magic_free(A.m);
    hwc_magic_free(B.m);
    hw_loop_free(loop);
    return TEST_MAIN_END();
}
