/* hwclient's DERP half without real relays: the home-region choice and its stickiness,
 * the debug packet protocol and its receiver statistics, NetInfo, the sha256-raw
 * certificate pin, and one DERP connection against a scripted relay on loopback (each
 * wrong answer must end in a message naming the problem). */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <sodium.h>

#include "client/derp.h"
#include "client/derpdebug.h"
#include "client/magicsock.h"
#include "client/netcheck.h"
#include "client/resolve.h"
#include "client/tlsdial.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/derp.h"
#include "proto/keys.h"
#include "tests/unit/testlib.h"

/* ---- home region ---- */

static void pick_first_and_best(void)
{
    struct hwc_nc_sample cur[] = {{901, 30000}, {900, 20000}, {902, 25000}};
    CHECK_INT(hwc_nc_pick_preferred(cur, 3, cur, 3, 0, false, false, NULL), 900);
    /* ties go to the lower id, so every node decides alike */
    struct hwc_nc_sample tie[] = {{905, 1000}, {903, 1000}};
    CHECK_INT(hwc_nc_pick_preferred(tie, 2, tie, 2, 0, false, false, NULL), 903);
    CHECK_INT(hwc_nc_pick_preferred(NULL, 0, NULL, 0, 0, false, false, NULL), 0);
}

static void pick_is_sticky(void)
{
    /* 900 is home at 25 ms; 901 at 18 ms is less than 10 ms better: stay */
    struct hwc_nc_sample cur[] = {{900, 25000}, {901, 18000}};
    CHECK_INT(hwc_nc_pick_preferred(cur, 2, cur, 2, 900, false, false, NULL), 900);
    /* 60 ms vs 45 ms: 15 ms better but not a third: stay */
    struct hwc_nc_sample cur2[] = {{900, 60000}, {901, 45000}};
    CHECK_INT(hwc_nc_pick_preferred(cur2, 2, cur2, 2, 900, false, false, NULL), 900);
    /* 60 ms vs 30 ms: clearly better: move */
    struct hwc_nc_sample cur3[] = {{900, 60000}, {901, 30000}};
    CHECK_INT(hwc_nc_pick_preferred(cur3, 2, cur3, 2, 900, false, false, NULL), 901);
    /* the old home did not answer STUN but its connection did lately: it still works,
     * so it stays (upstream: no latency of its own counts as "not worse") */
    struct hwc_nc_sample cur4[] = {{901, 30000}};
    CHECK_INT(hwc_nc_pick_preferred(cur4, 1, cur4, 1, 900, true, true, NULL), 900);
    /* not heard from at all: it is gone, move */
    CHECK_INT(hwc_nc_pick_preferred(cur4, 1, cur4, 1, 900, false, false, NULL), 901);
    /* no data at all, but the home connection is alive: keep it */
    CHECK_INT(hwc_nc_pick_preferred(NULL, 0, NULL, 0, 900, false, true, NULL), 900);
    CHECK_INT(hwc_nc_pick_preferred(NULL, 0, NULL, 0, 900, false, false, NULL), 0);
}

static void pick_uses_history_and_scores(void)
{
    /* 901 was 5 ms a minute ago, 40 ms now; 900 is 20 ms: the best recent value wins */
    struct hwc_nc_sample cur[] = {{900, 20000}, {901, 40000}};
    struct hwc_nc_sample recent[] = {{900, 20000}, {901, 40000}, {901, 5000}};
    CHECK_INT(hwc_nc_pick_preferred(cur, 2, recent, 3, 0, false, false, NULL), 901);
    /* a region absent from this report is not picked, whatever its history */
    struct hwc_nc_sample cur2[] = {{900, 20000}};
    CHECK_INT(hwc_nc_pick_preferred(cur2, 1, recent, 3, 0, false, false, NULL), 900);
    /* HomeParams.RegionScore scales latencies: 900 at 20 ms * 3 loses to 901 at 40 ms */
    json_t *scores = json_pack("{s:f}", "900", 3.0);
    CHECK_INT(hwc_nc_pick_preferred(cur, 2, cur, 2, 0, false, false, scores), 901);
    json_decref(scores);
}

static void latency_text(void)
{
    char b[32];
    hwc_nc_format_latency(57, b, sizeof b);
    CHECK_STR(b, "57µs");
    hwc_nc_format_latency(149, b, sizeof b);
    CHECK_STR(b, "100µs");
    hwc_nc_format_latency(1234, b, sizeof b);
    CHECK_STR(b, "1.2ms");
    hwc_nc_format_latency(25000, b, sizeof b);
    CHECK_STR(b, "25ms");
    hwc_nc_format_latency(1500000, b, sizeof b);
    CHECK_STR(b, "1.5s");
}

static void report_json_and_netinfo(void)
{
    struct hwc_nc_report r;
    memset(&r, 0, sizeof r);
    hwc_nc_report_clear(&r);
    r.udp = r.ipv4 = r.ipv4_can_send = true;
    r.preferred_derp = 900;
    r.have_global_v4 = true;
    r.global_v4 = (struct hw_stun_addr){.family = 4, .ip = {127, 0, 0, 1}, .port = 41641};
    r.global_v4_count = 2;
    r.n_lat = 2;
    r.lat = hw_calloc(2, sizeof *r.lat);
    r.lat[0] = (struct hwc_nc_latency){.region = 901, .https_us = 9000};
    r.lat[1] = (struct hwc_nc_latency){.region = 900, .v4_us = 1500};
    json_t *j = hwc_nc_report_json(&r);
    CHECK_STR(json_string_value(json_object_get(j, "GlobalV4")), "127.0.0.1:41641");
    CHECK_INT(json_integer_value(json_object_get(json_object_get(j, "RegionLatency"), "900")), 1500000);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(j, "RegionLatency"), "901")), 9000000);
    CHECK(!json_object_get(json_object_get(j, "RegionV4Latency"), "901"), "https is not v4");
    CHECK(json_is_null(json_object_get(j, "MappingVariesByDestIP")), "unknown mapping is null");
    CHECK_INT(json_integer_value(json_object_get(json_object_get(j, "GlobalV4Counters"), "127.0.0.1:41641")), 2);
    json_decref(j);

    json_t *ni = hwc_magic_netinfo(&r, 900);
    CHECK_INT(json_integer_value(json_object_get(ni, "PreferredDERP")), 900);
    CHECK(json_is_true(json_object_get(ni, "WorkingUDP")), "WorkingUDP");
    json_t *lat = json_object_get(ni, "DERPLatency");
    CHECK(json_real_value(json_object_get(lat, "900-v4")) > 0.0014 &&
          json_real_value(json_object_get(lat, "900-v4")) < 0.0016, "900-v4 in seconds");
    CHECK(json_object_size(lat) == 1, "HTTPS latencies are not DERPLatency (%zu keys)", json_object_size(lat));
    /* latencies alone do not make NetInfo different; the home region does */
    r.lat[1].v4_us = 3000;
    json_t *ni2 = hwc_magic_netinfo(&r, 900);
    CHECK(hwc_netinfo_basically_equal(ni, ni2), "latency change counted");
    json_t *ni3 = hwc_magic_netinfo(&r, 901);
    CHECK(!hwc_netinfo_basically_equal(ni, ni3), "home change not counted");
    CHECK(!hwc_netinfo_basically_equal(NULL, ni), "NULL vs NetInfo");
    json_decref(ni);
    json_decref(ni2);
    json_decref(ni3);
    hwc_nc_report_clear(&r);
}

/* ---- debug packets ---- */

static void debug_packets(void)
{
    uint8_t buf[100];
    struct hwc_dbg_pkt p = {.kind = HWC_DBG_DATA, .run = 0x1122334455667788ull, .a = 7, .b = 10};
    hwc_dbg_build(buf, sizeof buf, &p);
    struct hwc_dbg_pkt q;
    CHECK(hwc_dbg_parse(buf, sizeof buf, &q) == 0, "parse");
    CHECK(q.kind == HWC_DBG_DATA && q.run == p.run && q.a == 7 && q.b == 10, "round trip");
    CHECK(hwc_dbg_parse(buf, HWC_DBG_HDR_LEN - 1, &q) < 0, "short accepted");
    buf[0] = 'X';
    CHECK(hwc_dbg_parse(buf, sizeof buf, &q) < 0, "wrong magic accepted");
    p.a = 10; /* sequence beyond the run */
    hwc_dbg_build(buf, sizeof buf, &p);
    CHECK(hwc_dbg_parse(buf, sizeof buf, &q) < 0, "seq >= total accepted");
    /* a WireGuard or disco packet is not ours */
    static const uint8_t disco[] = "TS\xf0\x9f\x92\xac" "0123456789012345678901234567890123456789";
    CHECK(hwc_dbg_parse(disco, sizeof disco, &q) < 0, "disco accepted");
}

static void debug_receiver(void)
{
    struct hwc_dbg_rx *rx = hwc_dbg_rx_new();
    uint8_t src[32];
    memset(src, 7, sizeof src);
    struct hwc_dbg_pkt ack;
    int acks = 0;
    /* 0..9 in order, except 4 comes after 5 (a reorder), and 8 never (a gap) */
    const uint64_t order[] = {0, 1, 2, 3, 5, 4, 6, 7, 9};
    for (size_t i = 0; i < HW_ARRAY_LEN(order); i++) {
        struct hwc_dbg_pkt p = {.kind = HWC_DBG_DATA, .run = 42, .a = order[i], .b = 10};
        if (hwc_dbg_rx_data(rx, src, &p, 100, (int64_t)i * 1000, &ack)) {
            acks++;
            CHECK(ack.kind == HWC_DBG_ACK && ack.run == 42, "ack");
        }
    }
    CHECK_INT(acks, 2); /* the 8th packet, and the last of the run */
    CHECK_INT(ack.a, 9);
    json_t *j = hwc_dbg_rx_json(rx);
    char key[HW_KEY_TEXT_MAX];
    json_t *run = json_object_get(json_object_get(j, hw_key_format(HW_KEY_NODE, src, key)), "Run");
    CHECK(run != NULL, "no entry");
    CHECK_INT(json_integer_value(json_object_get(run, "Packets")), 9);
    CHECK_INT(json_integer_value(json_object_get(run, "Lost")), 1);
    CHECK_INT(json_integer_value(json_object_get(run, "Reordered")), 1);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(run, "FirstGap"), "Expected")), 4);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(run, "FirstGap"), "Got")), 5);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(run, "FirstReorder"), "Got")), 4);
    CHECK(json_is_false(json_object_get(run, "Complete")), "complete despite the gap");
    json_decref(j);
    /* a new run starts clean */
    for (uint64_t s = 0; s < 3; s++) {
        struct hwc_dbg_pkt p = {.kind = HWC_DBG_DATA, .run = 43, .a = s, .b = 3};
        hwc_dbg_rx_data(rx, src, &p, 100, 0, &ack);
    }
    j = hwc_dbg_rx_json(rx);
    json_t *pe = json_object_get(j, key);
    CHECK_INT(json_integer_value(json_object_get(pe, "Packets")), 12);
    CHECK(json_is_true(json_object_get(json_object_get(pe, "Run"), "Complete")), "second run");
    json_decref(j);
    hwc_dbg_rx_free(rx);
}

/* A sender whose packets come back to a receiver on the same loop; its acks travel
 * back a turn later, as they would through a relay. */
struct loopback_send {
    struct hw_loop *loop;
    struct hwc_dbg_rx *rx;
    struct hwc_dbg_tx *tx;
    struct hwc_dbg_pkt acks[64];
    size_t n_acks;
    struct hw_timer *deliver;
    uint64_t sent, acked_seen, max_in_flight, drop_seq;
    json_t *result;
    char err[600];
    bool finished;
};

static void deliver_acks(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct loopback_send *ls = arg;
    ls->deliver = NULL;
    size_t n = ls->n_acks;
    ls->n_acks = 0;
    for (size_t i = 0; i < n && !ls->finished; i++) {
        if (ls->acks[i].a > ls->acked_seen)
            ls->acked_seen = ls->acks[i].a;
        hwc_dbg_tx_ack(ls->tx, &ls->acks[i]);
    }
}

static int loop_send(void *arg, const uint8_t *pkt, size_t len, char *err, size_t errlen)
{
    struct loopback_send *ls = arg;
    struct hwc_dbg_pkt p, ack;
    if (hwc_dbg_parse(pkt, len, &p) < 0)
        return -1;
    ls->sent++;
    if (ls->sent - ls->acked_seen > ls->max_in_flight)
        ls->max_in_flight = ls->sent - ls->acked_seen;
    if (p.a == ls->drop_seq)
        return 0; /* lost on the way */
    uint8_t src[32] = {1};
    if (hwc_dbg_rx_data(ls->rx, src, &p, len, 0, &ack) && ls->n_acks < HW_ARRAY_LEN(ls->acks)) {
        ls->acks[ls->n_acks++] = ack;
        if (!ls->deliver)
            ls->deliver = hw_timer_start(ls->loop, 0, deliver_acks, ls);
    }
    return 0;
}

static void loop_done(struct hwc_dbg_tx *tx, json_t *result, const char *err, void *arg)
{
    struct loopback_send *ls = arg;
    ls->finished = true;
    ls->result = result;
    snprintf(ls->err, sizeof ls->err, "%s", err ? err : "");
    hw_loop_stop(ls->loop);
}

static void loopback_run(struct loopback_send *ls, uint64_t count, uint64_t drop)
{
    memset(ls, 0, sizeof *ls);
    ls->loop = hw_loop_new();
    ls->rx = hwc_dbg_rx_new();
    ls->drop_seq = drop;
    ls->tx = hwc_dbg_tx_start(ls->loop, count, 64, loop_send, loop_done, ls);
    hw_loop_run(ls->loop);
    if (ls->deliver)
        hw_timer_cancel(ls->loop, ls->deliver);
    hwc_dbg_tx_free(ls->tx);
    hwc_dbg_rx_free(ls->rx);
    hw_loop_free(ls->loop);
}

static void debug_sender(void)
{
    struct loopback_send ls;
    loopback_run(&ls, 1000, UINT64_MAX);
    CHECK(ls.result != NULL && !ls.err[0], "%s", ls.err);
    CHECK_INT(json_integer_value(json_object_get(ls.result, "Acked")), 1000);
    CHECK(ls.max_in_flight <= HWC_DBG_WINDOW, "in flight %llu", (unsigned long long)ls.max_in_flight);
    json_decref(ls.result);
    /* one packet lost: the last acknowledgement stays one short, and after the stall
     * limit the send ends saying so */
    loopback_run(&ls, 100, 50);
    CHECK(strstr(ls.err, "acknowledged 99 of 100 packets") != NULL, "%s", ls.err);
    json_decref(ls.result);
}

/* ---- TLS pin ---- */

static unsigned char *make_cert(const char *cn, const char *ip, long not_after_days, int *der_len)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), not_after_days * 86400);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, key);
    if (ip) {
        char san[64];
        snprintf(san, sizeof san, "IP:%s", ip);
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    X509_sign(x, key, EVP_sha256());
    unsigned char *der = NULL;
    *der_len = i2d_X509(x, &der);
    X509_free(x);
    EVP_PKEY_free(key);
    return der;
}

static void pin_hex(const unsigned char *der, int len, char hex[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(der, (size_t)len, md, &n, EVP_sha256(), NULL);
    hw_hex_encode(md, 32, hex);
}

static void tls_pin_rules(void)
{
    int len, meta_len, other_len, old_len;
    unsigned char *der = make_cert("relay", "127.0.0.1", 30, &len);
    unsigned char *meta = make_cert("derpkey0123", NULL, 30, &meta_len);
    unsigned char *other = make_cert("other", "127.0.0.1", 30, &other_len);
    unsigned char *old = make_cert("old", "127.0.0.1", -1, &old_len);
    char hex[65], old_hex[65], err[400];
    pin_hex(der, len, hex);
    pin_hex(old, old_len, old_hex);
    const unsigned char *one[] = {der};
    int one_len[] = {len};
    CHECK(hwc_tls_check_pin(one, one_len, 1, "127.0.0.1", hex, err, sizeof err) == 0, "%s", err);
    /* derper's meta certificate rides along and is skipped */
    const unsigned char *with_meta[] = {der, meta};
    int with_meta_len[] = {len, meta_len};
    CHECK(hwc_tls_check_pin(with_meta, with_meta_len, 2, "127.0.0.1", hex, err, sizeof err) == 0, "%s", err);
    /* a second real certificate is refused */
    const unsigned char *two[] = {der, other};
    int two_len[] = {len, other_len};
    CHECK(hwc_tls_check_pin(two, two_len, 2, "127.0.0.1", hex, err, sizeof err) < 0, "two certs");
    CHECK(strstr(err, "more than one certificate") != NULL, "%s", err);
    /* another certificate than the pinned one: both hashes named */
    char wrong[65];
    memset(wrong, '0', 64);
    wrong[64] = '\0';
    CHECK(hwc_tls_check_pin(one, one_len, 1, "127.0.0.1", wrong, err, sizeof err) < 0, "wrong pin");
    CHECK(strstr(err, hex) && strstr(err, "update CertName"), "%s", err);
    /* the pin does not excuse a certificate for another address, or an expired one */
    CHECK(hwc_tls_check_pin(one, one_len, 1, "127.0.0.2", hex, err, sizeof err) < 0, "wrong host");
    CHECK(strstr(err, "does not name 127.0.0.2") != NULL, "%s", err);
    const unsigned char *expired[] = {old};
    int expired_len[] = {old_len};
    CHECK(hwc_tls_check_pin(expired, expired_len, 1, "127.0.0.1", old_hex, err, sizeof err) < 0, "expired");
    CHECK(strstr(err, "expired") != NULL, "%s", err);
    /* an upper-case pin never matches (upstream compares the text) */
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(hex[i] >= 'a' && hex[i] <= 'f' ? hex[i] - 32 : hex[i]);
    CHECK(hwc_tls_check_pin(one, one_len, 1, "127.0.0.1", upper, err, sizeof err) < 0, "upper-case pin");
    OPENSSL_free(der);
    OPENSSL_free(meta);
    OPENSSL_free(other);
    OPENSSL_free(old);
}

/* ---- one DERP connection against a scripted relay ---- */

struct relay {
    int listen_fd, port;
    pthread_t th;
    void (*script)(struct relay *r, int fd);
    uint8_t priv[32], pub[32];
    uint8_t client_pub[32];         /* what ClientInfo said */
    bool client_info_ok, note_preferred, pong_ok;
    char head[4096];                /* the client's request head */
    uint8_t got_dst[32];
    char got_data[64];
};

static int read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void write_all(int fd, const void *buf, size_t len)
{
    if (write(fd, buf, len) < 0) {
        /* the client went away: the test says what it expected */
    }
}

static void relay_read_head(struct relay *r, int fd)
{
    size_t have = 0;
    while (have < sizeof r->head - 1) {
        ssize_t n = read(fd, r->head + have, 1);
        if (n <= 0)
            return;
        have++;
        r->head[have] = '\0';
        if (have >= 4 && memcmp(r->head + have - 4, "\r\n\r\n", 4) == 0)
            return;
    }
}

/* One frame into buf (up to cap); returns the type, -1 on EOF. */
static int relay_read_frame(int fd, uint8_t *buf, size_t cap, uint32_t *len)
{
    uint8_t h[5];
    if (read_all(fd, h, 5) < 0)
        return -1;
    *len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    if (*len > cap || read_all(fd, buf, *len) < 0)
        return -1;
    return h[0];
}

static const char up101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n";

static void send_server_key(struct relay *r, int fd)
{
    uint8_t f[HW_DERP_HDR_LEN + HW_DERP_SERVER_KEY_LEN];
    write_all(fd, f, hw_derp_build_server_key(f, sizeof f, r->pub));
}

/* Upgrade, ServerKey, the client's ClientInfo opened. */
static int handshake_start(struct relay *r, int fd)
{
    relay_read_head(r, fd);
    write_all(fd, up101, sizeof up101 - 1);
    send_server_key(r, fd);
    uint8_t buf[4096];
    uint32_t len;
    if (relay_read_frame(fd, buf, sizeof buf, &len) != HW_DERP_CLIENT_INFO)
        return -1;
    struct hw_derp_client_info info;
    const char *why;
    r->client_info_ok = hw_derp_open_client_info(r->priv, buf, len, r->client_pub, &info, &why) == 0 &&
                        info.version == 2 && info.can_ack_pings;
    return 0;
}

static void script_refuse_426(struct relay *r, int fd)
{
    relay_read_head(r, fd);
    static const char a[] = "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 33\r\n\r\nDERP requires connection upgrade\n";
    write_all(fd, a, sizeof a - 1);
}

static void script_not_derp(struct relay *r, int fd)
{
    relay_read_head(r, fd);
    write_all(fd, up101, sizeof up101 - 1);
    uint8_t f[HW_DERP_HDR_LEN];
    write_all(fd, f, hw_derp_build_keep_alive(f, sizeof f));
}

static void script_not_admitted(struct relay *r, int fd)
{
    handshake_start(r, fd);
    /* a relay that verifies clients closes here */
}

static void script_huge_frame(struct relay *r, int fd)
{
    handshake_start(r, fd);
    uint8_t h[5] = {HW_DERP_RECV_PACKET, 0x7f, 0xff, 0xff, 0xff};
    write_all(fd, h, sizeof h);
    usleep(200000);
}

static void script_full(struct relay *r, int fd)
{
    if (handshake_start(r, fd) < 0)
        return;
    uint8_t buf[4096];
    uint32_t len;
    /* NotePreferred(true) follows ClientInfo on a home connection */
    int t = relay_read_frame(fd, buf, sizeof buf, &len);
    r->note_preferred = t == HW_DERP_NOTE_PREFERRED && len == 1 && buf[0] == 1;
    struct hw_derp_server_info si = {.version = 2};
    size_t n;
    uint8_t *f = hw_derp_build_server_info(r->priv, r->client_pub, &si, NULL, &n);
    write_all(fd, f, n);
    free(f);
    /* the client's own Ping (magicsock pings each new connection; here the test does) */
    /* a Ping from us wants a Pong back */
    uint8_t ping[HW_DERP_HDR_LEN + 8];
    static const uint8_t data[8] = "pingpong";
    write_all(fd, ping, hw_derp_build_ping(ping, sizeof ping, data));
    /* a packet from some peer */
    uint8_t peer[32];
    memset(peer, 0xab, sizeof peer);
    uint8_t pkt[HW_DERP_HDR_LEN + 32 + 5];
    write_all(fd, pkt, hw_derp_build_recv_packet(pkt, sizeof pkt, peer, (const uint8_t *)"hello", 5));
    /* frames the client skips: Health, PeerPresent, and one of an unknown type */
    uint8_t hf[HW_DERP_HDR_LEN + 64];
    write_all(fd, hf, hw_derp_build_health(hf, sizeof hf, "duplicate connection"));
    uint8_t unknown[HW_DERP_HDR_LEN + 3] = {0x7e, 0, 0, 0, 3, 1, 2, 3};
    write_all(fd, unknown, sizeof unknown);
    for (int i = 0; i < 5 && !(r->pong_ok && r->got_data[0]); i++) {
        t = relay_read_frame(fd, buf, sizeof buf, &len);
        if (t == HW_DERP_PONG)
            r->pong_ok = len == 8 && memcmp(buf, data, 8) == 0;
        else if (t == HW_DERP_SEND_PACKET && len >= 32) {
            memcpy(r->got_dst, buf, 32);
            snprintf(r->got_data, sizeof r->got_data, "%.*s", (int)(len - 32), (const char *)buf + 32);
        } else if (t == HW_DERP_PING) {
            uint8_t pong[HW_DERP_HDR_LEN + 8];
            write_all(fd, pong, hw_derp_build_pong(pong, sizeof pong, buf));
        } else if (t < 0)
            break;
    }
    /* then the relay goes away */
}

static void script_latency(struct relay *r, int fd)
{
    relay_read_head(r, fd);
    static const char a[] = "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n";
    write_all(fd, a, sizeof a - 1);
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    int fd = accept(r->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    r->script(r, fd);
    close(fd);
    return NULL;
}

static void relay_start(struct relay *r, void (*script)(struct relay *, int))
{
    r->script = script;
    hw_key_generate(r->priv);
    hw_key_public(r->priv, r->pub);
    r->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(r->listen_fd, (struct sockaddr *)&sa, sizeof sa);
    listen(r->listen_fd, 4);
    socklen_t sl = sizeof sa;
    getsockname(r->listen_fd, (struct sockaddr *)&sa, &sl);
    r->port = ntohs(sa.sin_port);
    pthread_create(&r->th, NULL, relay_main, r);
}

static void relay_stop(struct relay *r)
{
    shutdown(r->listen_fd, SHUT_RDWR);
    pthread_join(r->th, NULL);
    close(r->listen_fd);
}

struct run {
    struct hw_loop *loop;
    struct hwc_derp *d;
    bool up;
    int packets;
    uint8_t src[32];
    char data[64];
    char why[600];
    bool done, ok;
    int64_t latency;
};

static void r_up(struct hwc_derp *d, void *arg)
{
    struct run *r = arg;
    r->up = true;
    uint8_t dst[32];
    memset(dst, 0xcd, sizeof dst);
    hwc_derp_send(d, dst, (const uint8_t *)"reply", 5);
}

static void r_packet(struct hwc_derp *d, const uint8_t src[32], const uint8_t *data, size_t len, void *arg)
{
    struct run *r = arg;
    r->packets++;
    memcpy(r->src, src, 32);
    snprintf(r->data, sizeof r->data, "%.*s", (int)len, (const char *)data);
}

static void r_gone(struct hwc_derp *d, const uint8_t peer[32], uint8_t reason, void *arg) {}

static void r_done(struct hwc_derp *d, const char *why, void *arg)
{
    struct run *r = arg;
    r->done = true;
    r->ok = why == NULL;
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    r->latency = hwc_derp_latency_us(d);
    hw_loop_stop(r->loop);
}

static void guard_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    *(struct hw_timer **)arg = NULL;
    hw_loop_stop(loop);
}

/* A region whose nodes are at the given ports (0: a port nobody listens on). */
static void region_with(struct tc_derp_region *reg, const int *ports, size_t n)
{
    memset(reg, 0, sizeof *reg);
    reg->region_id = 900;
    reg->region_code = hw_strdup("tst");
    reg->nodes = hw_calloc(n, sizeof *reg->nodes);
    reg->n_nodes = n;
    for (size_t i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "900%c", (char)('a' + i));
        reg->nodes[i].name = hw_strdup(name);
        reg->nodes[i].host_name = hw_strdup("127.0.0.1");
        reg->nodes[i].ipv4 = hw_strdup("127.0.0.1");
        reg->nodes[i].ipv6 = hw_strdup("none");
        reg->nodes[i].region_id = 900;
        reg->nodes[i].derp_port = ports[i];
    }
}

static void region_free(struct tc_derp_region *reg)
{
    for (size_t i = 0; i < reg->n_nodes; i++) {
        free(reg->nodes[i].name);
        free(reg->nodes[i].host_name);
        free(reg->nodes[i].ipv4);
        free(reg->nodes[i].ipv6);
    }
    free(reg->nodes);
    free(reg->region_code);
}

static int dead_port(void)
{
    struct relay tmp = {0};
    tmp.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(tmp.listen_fd, (struct sockaddr *)&sa, sizeof sa);
    socklen_t sl = sizeof sa;
    getsockname(tmp.listen_fd, (struct sockaddr *)&sa, &sl);
    close(tmp.listen_fd);
    return ntohs(sa.sin_port);
}

static void run_derp(struct relay *rl, const int *ports, size_t n, enum hwc_derp_mode mode, struct run *r,
                     const uint8_t priv[32])
{
    memset(r, 0, sizeof *r);
    r->loop = hw_loop_new();
    struct tc_derp_region reg;
    region_with(&reg, ports, n);
    struct hwc_derp_opts o = {.mode = mode, .plain_http = true, .preferred = true, .node_priv = priv};
    struct hwc_derp_callbacks cb = {r_up, r_packet, r_gone, r_done};
    r->d = hwc_derp_start(r->loop, &reg, &o, &cb, r);
    region_free(&reg);
    struct hw_timer *guard = NULL;
    guard = hw_timer_start(r->loop, 8000, guard_cb, &guard);
    hw_loop_run(r->loop);
    if (guard)
        hw_timer_cancel(r->loop, guard);
    hwc_derp_free(r->d);
    hw_loop_free(r->loop);
    if (rl)
        relay_stop(rl);
}

static void derp_refusals(void)
{
    static const struct {
        void (*script)(struct relay *, int);
        const char *why;
    } cases[] = {
        {script_refuse_426, "refused the DERP upgrade: HTTP 426: DERP requires connection upgrade"},
        {script_not_derp, "the first frame is KeepAlive, not ServerKey: not a DERP server?"},
        {script_not_admitted, "did not admit this node"},
        {script_huge_frame, "frame larger than 1 MiB"},
    };
    uint8_t priv[32];
    hw_key_generate(priv);
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        struct relay rl = {0};
        relay_start(&rl, cases[i].script);
        struct run r;
        run_derp(&rl, &rl.port, 1, HWC_DERP_RELAY, &r, priv);
        CHECK(r.done && !r.ok && !r.up, "case %zu: done %d ok %d up %d", i, r.done, r.ok, r.up);
        CHECK(strstr(r.why, cases[i].why) != NULL, "case %zu: %s", i, r.why);
    }
    /* nobody at any node: every address is tried and the last problem named */
    int ports[2] = {dead_port(), dead_port()};
    struct run r;
    run_derp(NULL, ports, 2, HWC_DERP_RELAY, &r, priv);
    CHECK(strstr(r.why, "no node of region tst accepted a connection") && strstr(r.why, "Connection refused"),
          "%s", r.why);
}

static void derp_session(void)
{
    uint8_t priv[32], pub[32];
    hw_key_generate(priv);
    hw_key_public(priv, pub);
    struct relay rl = {0};
    relay_start(&rl, script_full);
    /* the first node is dead: the second one is used, told which node was the ideal one */
    int ports[2] = {dead_port(), rl.port};
    struct run r;
    run_derp(&rl, ports, 2, HWC_DERP_RELAY, &r, priv);
    CHECK(r.up, "never up: %s", r.why);
    CHECK(rl.client_info_ok && memcmp(rl.client_pub, pub, 32) == 0, "ClientInfo not sealed by the node key");
    CHECK(rl.note_preferred, "no NotePreferred(true) after ClientInfo");
    CHECK(strstr(rl.head, "GET /derp HTTP/1.1\r\n") && strstr(rl.head, "Upgrade: DERP\r\n") &&
          strstr(rl.head, "Host: 127.0.0.1\r\n") && strstr(rl.head, "Ideal-Node: 900a\r\n"), "head: %s", rl.head);
    CHECK(rl.pong_ok, "no Pong for the relay's Ping");
    CHECK_INT(r.packets, 1);
    CHECK_STR(r.data, "hello");
    CHECK(r.src[0] == 0xab, "source key");
    CHECK_STR(rl.got_data, "reply");
    CHECK(rl.got_dst[0] == 0xcd, "destination key");
    CHECK(strstr(r.why, "the relay closed the connection") != NULL, "%s", r.why);
}

/* A node with only a HostName: the name is looked up off the loop (IPv4 first). */
static void derp_node_by_name(void)
{
    uint8_t priv[32];
    hw_key_generate(priv);
    struct relay rl = {0};
    relay_start(&rl, script_refuse_426);
    struct run r;
    memset(&r, 0, sizeof r);
    r.loop = hw_loop_new();
    struct tc_derp_region reg;
    region_with(&reg, &rl.port, 1);
    free(reg.nodes[0].host_name);
    free(reg.nodes[0].ipv4);
    reg.nodes[0].host_name = hw_strdup("localhost");
    reg.nodes[0].ipv4 = hw_strdup("");
    struct hwc_derp_opts o = {.mode = HWC_DERP_RELAY, .plain_http = true, .node_priv = priv};
    struct hwc_derp_callbacks cb = {r_up, r_packet, r_gone, r_done};
    r.d = hwc_derp_start(r.loop, &reg, &o, &cb, &r);
    region_free(&reg);
    hw_loop_run(r.loop);
    hwc_derp_free(r.d);
    hw_loop_free(r.loop);
    relay_stop(&rl);
    CHECK(strstr(r.why, "HTTP 426") != NULL, "%s", r.why);
    CHECK(strstr(rl.head, "Host: localhost\r\n") != NULL, "%s", rl.head);
}

struct lookup {
    struct hw_loop *loop;
    int calls, err;
    bool v4;
};

static void lookup_done(struct addrinfo *res, int gai_err, void *arg)
{
    struct lookup *l = arg;
    l->calls++;
    l->err = gai_err;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        l->v4 |= ai->ai_family == AF_INET;
    if (res)
        freeaddrinfo(res);
    hw_loop_stop(l->loop);
}

/* One lookup on a loop of its own (a stopped loop does not run again). */
static void lookup(const char *host, int family, struct lookup *l)
{
    memset(l, 0, sizeof *l);
    l->loop = hw_loop_new();
    int err = 0;
    struct hwc_resolve *r = hwc_resolve_start(l->loop, host, "3478", family, SOCK_DGRAM, lookup_done, l, &err);
    if (r)
        hw_loop_run(l->loop);
    hw_loop_free(l->loop);
}

static void resolver(void)
{
    struct lookup l;
    lookup("127.0.0.1", AF_INET, &l);
    CHECK(l.calls == 1 && l.v4 && l.err == 0, "literal: calls %d err %d", l.calls, l.err);
    lookup("localhost", AF_INET, &l);
    CHECK(l.calls == 1 && l.v4, "localhost: calls %d err %d", l.calls, l.err);
    /* cancelled: no callback, and the thread is joined (LSan sees nothing left) */
    memset(&l, 0, sizeof l);
    l.loop = hw_loop_new();
    int err = 0;
    struct hwc_resolve *r = hwc_resolve_start(l.loop, "localhost", "1", AF_UNSPEC, SOCK_STREAM, lookup_done, &l, &err);
    hwc_resolve_cancel(r);
    r = hwc_resolve_start(l.loop, "127.0.0.1", "1", AF_UNSPEC, SOCK_STREAM, lookup_done, &l, &err);
    hwc_resolve_cancel(r);
    CHECK_INT(l.calls, 0);
    hw_loop_free(l.loop);
}

static void derp_latency_check(void)
{
    struct relay rl = {0};
    relay_start(&rl, script_latency);
    struct run r;
    run_derp(&rl, &rl.port, 1, HWC_DERP_LATENCY, &r, NULL);
    CHECK(r.ok, "%s", r.why);
    CHECK(r.latency > 0, "latency %lld", (long long)r.latency);
    CHECK(strstr(rl.head, "GET /derp/latency-check HTTP/1.1\r\n") != NULL, "%s", rl.head);
    struct relay r404 = {0};
    relay_start(&r404, script_refuse_426);
    run_derp(&r404, &r404.port, 1, HWC_DERP_LATENCY, &r, NULL);
    CHECK(!r.ok && strstr(r.why, "/derp/latency-check answered HTTP 426"), "%s", r.why);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    hw_log_set_level(HW_LOG_ERROR);
    RUN(pick_first_and_best);
    RUN(pick_is_sticky);
    RUN(pick_uses_history_and_scores);
    RUN(latency_text);
    RUN(report_json_and_netinfo);
    RUN(debug_packets);
    RUN(debug_receiver);
    RUN(debug_sender);
    RUN(tls_pin_rules);
    RUN(derp_refusals);
    RUN(derp_session);
    RUN(derp_latency_check);
    RUN(derp_node_by_name);
    RUN(resolver);
    hwc_tls_cleanup();
    return TEST_MAIN_END();
}
