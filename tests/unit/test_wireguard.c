/* proto/wireguard: two devices talking through in-memory queues with a fake clock. */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wireguard.h"
#include "tests/unit/testlib.h"

#define QMAX 256

struct pkt {
    uint8_t data[2048];
    size_t len;
    bool to_src;   /* a reply addressed to the source */
};

struct side {
    struct wg_device *dev;
    struct wg_peer *peer;   /* the other side */
    uint8_t priv[32], pub[32];
    struct pkt out[QMAX];   /* sent, not yet delivered */
    size_t nout;
    uint8_t got[QMAX][2048];
    size_t got_len[QMAX];
    size_t ngot;
    const char *addr;       /* what the other side sees as our source */
};

static int64_t fake_now = 1000;
static uint64_t fake_wall(void *arg) { return 1700000000ULL * 1000000000ULL + (uint64_t)fake_now * 1000000ULL; }

static void on_send(void *arg, struct wg_peer *peer, const void *reply_to, size_t rl, const uint8_t *pkt, size_t len)
{
    struct side *s = arg;
    if (s->nout < QMAX && len <= sizeof s->out[0].data) {
        memcpy(s->out[s->nout].data, pkt, len);
        s->out[s->nout].len = len;
        s->out[s->nout].to_src = reply_to != NULL;
        s->nout++;
    }
}

static void on_deliver(void *arg, struct wg_peer *peer, uint8_t *pkt, size_t len)
{
    struct side *s = arg;
    if (s->ngot < QMAX && len <= sizeof s->got[0]) {
        memcpy(s->got[s->ngot], pkt, len);
        s->got_len[s->ngot] = len;
    }
    s->ngot++;   /* counted even when not kept */
}

static struct side A, B;

static void setup_pair(void)
{
    struct wg_callbacks cb = {.send = on_send, .deliver = on_deliver, .wall_ns = fake_wall};
    wg_device_free(A.dev);
    wg_device_free(B.dev);
    memset(&A, 0, sizeof A);
    memset(&B, 0, sizeof B);
    fake_now = 1000;
    randombytes_buf(A.priv, 32);
    randombytes_buf(B.priv, 32);
    crypto_scalarmult_base(A.pub, A.priv);
    crypto_scalarmult_base(B.pub, B.priv);
    A.dev = wg_device_new(A.priv, 1280, &cb, &A);
    B.dev = wg_device_new(B.priv, 1280, &cb, &B);
    A.peer = wg_peer_add(A.dev, B.pub, NULL);
    B.peer = wg_peer_add(B.dev, A.pub, NULL);
    A.addr = "10.0.0.1:1";
    B.addr = "10.0.0.2:2";
}

/* Delivers everything from->out to `to`; returns the number of packets moved. */
static int flush(struct side *from, struct side *to)
{
    int n = 0;
    while (from->nout) {
        struct pkt p = from->out[0];
        memmove(from->out, from->out + 1, (from->nout - 1) * sizeof from->out[0]);
        from->nout--;
        wg_device_receive(to->dev, fake_now, p.data, p.len, from->addr, strlen(from->addr), NULL);
        n++;
    }
    return n;
}

static void pump(void)
{
    for (int i = 0; i < 20 && (flush(&A, &B) + flush(&B, &A)) > 0; i++)
        ;
}

static void tick_both(void)
{
    wg_device_tick(A.dev, fake_now);
    wg_device_tick(B.dev, fake_now);
}

static uint8_t payload[1500];

static void handshake_and_data(void)
{
    setup_pair();
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)i;
    CHECK_INT(wg_peer_send(A.peer, fake_now, payload, 100), 0);
    CHECK_INT(A.nout, 1);
    CHECK_INT(A.out[0].len, WG_INITIATION_LEN);
    CHECK_INT(A.out[0].data[0], 1);
    pump();
    CHECK_INT(B.ngot, 1);
    CHECK_INT(B.got_len[0], 112);   /* padded to 16 */
    CHECK(memcmp(B.got[0], payload, 100) == 0, "payload differs");
    struct wg_peer_stats st;
    wg_peer_stats(B.peer, &st);
    CHECK(st.has_session, "responder confirmed");
    CHECK(st.last_handshake_wall_ns != 0, "handshake time");
    /* and back */
    CHECK_INT(wg_peer_send(B.peer, fake_now, payload, 1200), 0);
    CHECK_INT(B.nout, 1);
    CHECK_INT(B.out[0].len, 16 + 1200 + 16);
    pump();
    CHECK_INT(A.ngot, 1);
    CHECK(memcmp(A.got[0], payload, 1200) == 0, "payload differs");
    wg_peer_stats(A.peer, &st);
    CHECK(st.rx_bytes > 1200 && st.tx_bytes > 100, "counters %llu %llu", (unsigned long long)st.rx_bytes,
          (unsigned long long)st.tx_bytes);
}

static void padding_and_mtu(void)
{
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 1);
    pump();
    B.ngot = 0;
    size_t sizes[] = {1, 15, 16, 17, 1270, 1280};
    size_t want[] = {16, 16, 16, 32, 1280, 1280};
    for (size_t i = 0; i < 6; i++) {
        wg_peer_send(A.peer, fake_now, payload, sizes[i]);
        CHECK_INT(A.out[A.nout - 1].len, 32 + want[i]);
    }
    pump();
    CHECK_INT(B.ngot, 6);
}

static void replay_window(void)
{
    struct wg_replay r;
    memset(&r, 0, sizeof r);
    wg_replay_reset(&r);
    CHECK(wg_replay_check(&r, 0, UINT64_MAX), "0 new");
    CHECK(!wg_replay_check(&r, 0, UINT64_MAX), "0 dup");
    CHECK(wg_replay_check(&r, 5, UINT64_MAX), "5");
    CHECK(wg_replay_check(&r, 3, UINT64_MAX), "3 reordered within window");
    CHECK(!wg_replay_check(&r, 3, UINT64_MAX), "3 dup");
    CHECK(wg_replay_check(&r, 10000, UINT64_MAX), "jump");
    CHECK(wg_replay_check(&r, 10000 - WG_REPLAY_WINDOW, UINT64_MAX), "oldest in window");
    CHECK(!wg_replay_check(&r, 10000 - WG_REPLAY_WINDOW - 1, UINT64_MAX), "just too old");
    CHECK(!wg_replay_check(&r, 5, UINT64_MAX), "way too old");
    CHECK(wg_replay_check(&r, 9999, UINT64_MAX), "9999");
    CHECK(!wg_replay_check(&r, 9999, UINT64_MAX), "9999 dup");
    CHECK(!wg_replay_check(&r, 20000, 20000), "at limit");
    /* a long jump clears the whole ring */
    CHECK(wg_replay_check(&r, 1000000, UINT64_MAX), "long jump");
    CHECK(wg_replay_check(&r, 1000000 - 64, UINT64_MAX), "cleared slot");
    /* every counter in a window once, in reverse order */
    wg_replay_reset(&r);
    memset(r.ring, 0, sizeof r.ring);
    for (uint64_t c = 3000; c-- > 0;)
        CHECK(wg_replay_check(&r, c, UINT64_MAX), "reverse %llu", (unsigned long long)c);
    for (uint64_t c = 0; c < 3000; c++)
        CHECK(!wg_replay_check(&r, c, UINT64_MAX), "dup %llu", (unsigned long long)c);
}

static void transport_replay_and_reorder(void)
{
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 64);
    pump();
    B.ngot = 0;
    for (int i = 0; i < 4; i++)
        wg_peer_send(A.peer, fake_now, payload, 64);
    CHECK_INT(A.nout, 4);
    struct pkt saved[4];
    memcpy(saved, A.out, sizeof saved);
    A.nout = 0;
    int order[] = {2, 0, 3, 1};
    for (int i = 0; i < 4; i++)
        CHECK_INT(wg_device_receive(B.dev, fake_now, saved[order[i]].data, saved[order[i]].len, "x", 1, NULL),
                  WG_RX_DATA);
    CHECK_INT(wg_device_receive(B.dev, fake_now, saved[1].data, saved[1].len, "x", 1, NULL), WG_RX_REPLAY);
    /* a flipped bit fails authentication and leaves the window alone */
    struct pkt bad = saved[0];
    bad.data[bad.len - 1] ^= 1;
    CHECK_INT(wg_device_receive(B.dev, fake_now, bad.data, bad.len, "x", 1, NULL), WG_RX_DECRYPT);
    CHECK_INT(B.ngot, 4);
}

static void garbage_rejected(void)
{
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 10);
    struct pkt init = A.out[0];
    A.nout = 0;
    uint8_t buf[256];
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 0, "x", 1, NULL), WG_RX_MALFORMED);
    memset(buf, 0, sizeof buf);
    buf[0] = 1;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 100, "x", 1, NULL), WG_RX_MALFORMED);
    buf[0] = 9;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 148, "x", 1, NULL), WG_RX_MALFORMED);
    /* type byte with nonzero reserved bytes */
    memcpy(buf, init.data, init.len);
    buf[1] = 1;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, init.len, "x", 1, NULL), WG_RX_MALFORMED);
    /* truncated initiation */
    CHECK_INT(wg_device_receive(B.dev, fake_now, init.data, init.len - 1, "x", 1, NULL), WG_RX_MALFORMED);
    /* flipped bit in the body: mac1 fails */
    memcpy(buf, init.data, init.len);
    buf[50] ^= 0x80;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, init.len, "x", 1, NULL), WG_RX_BAD_MAC1);
    /* transport data to an unknown index, and a short one */
    memset(buf, 0, 64);
    buf[0] = 4;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 64, "x", 1, NULL), WG_RX_UNKNOWN_INDEX);
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 31, "x", 1, NULL), WG_RX_MALFORMED);
    /* a response nobody asked for */
    buf[0] = 2;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 92, "x", 1, NULL), WG_RX_BAD_MAC1);
    buf[0] = 3;
    CHECK_INT(wg_device_receive(B.dev, fake_now, buf, 64, "x", 1, NULL), WG_RX_UNKNOWN_INDEX);
    CHECK_INT(B.nout, 0);
    /* none of that disturbed B: the real initiation still works */
    CHECK_INT(wg_device_receive(B.dev, fake_now, init.data, init.len, A.addr, strlen(A.addr), NULL),
              WG_RX_HANDSHAKE);
    pump();
    CHECK_INT(B.ngot, 1);
    /* an initiation from a stranger (valid mac1, unknown static key) */
    struct wg_callbacks cb = {.send = on_send, .deliver = on_deliver, .wall_ns = fake_wall};
    struct side C;
    memset(&C, 0, sizeof C);
    randombytes_buf(C.priv, 32);
    C.dev = wg_device_new(C.priv, 1280, &cb, &C);
    struct wg_peer *cb_peer = wg_peer_add(C.dev, B.pub, NULL);
    wg_peer_initiate(cb_peer, fake_now);
    CHECK_INT(C.nout, 1);
    CHECK_INT(wg_device_receive(B.dev, fake_now, C.out[0].data, C.out[0].len, "c", 1, NULL), WG_RX_UNKNOWN_PEER);
    wg_device_free(C.dev);
    /* a low-order peer key is refused */
    uint8_t zero[32] = {0};
    CHECK(wg_peer_add(B.dev, zero, NULL) == NULL, "zero key accepted");
}

static void timestamp_replay(void)
{
    setup_pair();
    wg_peer_initiate(A.peer, fake_now);
    struct pkt init = A.out[0];
    A.nout = 0;
    CHECK_INT(wg_device_receive(B.dev, fake_now, init.data, init.len, "a", 1, NULL), WG_RX_HANDSHAKE);
    B.nout = 0;
    fake_now += 1000;
    CHECK_INT(wg_device_receive(B.dev, fake_now, init.data, init.len, "a", 1, NULL), WG_RX_TIMESTAMP);
    CHECK_INT(B.nout, 0);
    /* a fresh initiation within 20 ms of the last accepted one is a flood */
    fake_now += 6000;
    wg_peer_initiate(A.peer, fake_now);
    struct pkt i2 = A.out[0];
    A.nout = 0;
    CHECK_INT(wg_device_receive(B.dev, fake_now, i2.data, i2.len, "a", 1, NULL), WG_RX_HANDSHAKE);
    fake_now += 5001;
    wg_peer_initiate(A.peer, fake_now);
    struct pkt i3 = A.out[0];
    A.nout = 0;
    int64_t t = fake_now;
    fake_now = t;
    /* same wall second bucket is fine as long as it is newer; flood is about B's clock */
    CHECK_INT(wg_device_receive(B.dev, fake_now, i3.data, i3.len, "a", 1, NULL), WG_RX_HANDSHAKE);
}

static void flood_limit(void)
{
    setup_pair();
    /* two initiations 10 ms apart on B's clock: the second is refused as a flood */
    wg_peer_initiate(A.peer, fake_now);
    struct pkt i1 = A.out[0];
    A.nout = 0;
    fake_now += 5000;
    wg_peer_initiate(A.peer, fake_now);
    struct pkt i2 = A.out[0];
    A.nout = 0;
    CHECK_INT(wg_device_receive(B.dev, fake_now, i1.data, i1.len, "a", 1, NULL), WG_RX_HANDSHAKE);
    CHECK_INT(wg_device_receive(B.dev, fake_now + 10, i2.data, i2.len, "a", 1, NULL), WG_RX_FLOOD);
}

static void cookie_path(void)
{
    setup_pair();
    wg_device_force_under_load(B.dev, true);
    wg_peer_send(A.peer, fake_now, payload, 10);
    CHECK_INT(A.nout, 1);
    flush(&A, &B);
    CHECK_INT(B.nout, 1);
    CHECK_INT(B.out[0].len, WG_COOKIE_REPLY_LEN);
    CHECK(B.out[0].to_src, "cookie reply goes to the source");
    CHECK_INT(wg_device_receive(A.dev, fake_now, B.out[0].data, B.out[0].len, "b", 1, NULL), WG_RX_COOKIE);
    B.nout = 0;
    CHECK_INT(A.nout, 0);   /* no immediate retry: the retransmit timer does it */
    fake_now += WG_REKEY_TIMEOUT_MS + WG_REKEY_TIMEOUT_JITTER_MAX_MS;
    tick_both();
    CHECK_INT(A.nout, 1);
    static const uint8_t zero16[16];
    CHECK(memcmp(A.out[0].data + 132, zero16, 16) != 0, "mac2 set");
    pump();
    CHECK_INT(B.ngot, 1);
    /* mac2 bound to the source address: another address gets a cookie reply again */
    setup_pair();
    wg_device_force_under_load(B.dev, true);
    wg_peer_initiate(A.peer, fake_now);
    flush(&A, &B);
    wg_device_receive(A.dev, fake_now, B.out[0].data, B.out[0].len, "b", 1, NULL);
    B.nout = 0;
    fake_now += 6000;
    tick_both();
    A.addr = "10.9.9.9:9";
    flush(&A, &B);
    CHECK_INT(B.nout, 1);
    CHECK_INT(B.out[0].len, WG_COOKIE_REPLY_LEN);
    /* a cookie reply that does not open is dropped */
    B.out[0].data[40] ^= 1;
    CHECK_INT(wg_device_receive(A.dev, fake_now, B.out[0].data, B.out[0].len, "b", 1, NULL), WG_RX_DECRYPT);
}

static void rekey_with_time(void)
{
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 10);
    pump();
    CHECK_INT(B.ngot, 1);
    /* traffic every second; after Rekey-After-Time the initiator rekeys, data keeps flowing */
    int handshakes = 0;
    for (int s = 0; s < 400; s++) {
        fake_now += 1000;
        tick_both();
        wg_peer_send(A.peer, fake_now, payload, 50);
        wg_peer_send(B.peer, fake_now, payload, 50);
        for (size_t i = 0; i < A.nout; i++)
            handshakes += A.out[i].data[0] == 1;
        for (size_t i = 0; i < B.nout; i++)
            handshakes += B.out[i].data[0] == 1;
        pump();
    }
    CHECK(handshakes >= 3 && handshakes <= 8, "handshakes %d in 400 s", handshakes);
    CHECK(B.ngot >= 395 && A.ngot >= 395, "delivered A %zu B %zu", A.ngot, B.ngot);
    /* old keypairs die after Reject-After-Time: a packet sealed long ago is refused */
}

static void reject_after_time(void)
{
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 10);
    pump();
    /* B stays silent; A keeps sending: new handshake attempts once the session is old */
    wg_peer_send(A.peer, fake_now, payload, 10);
    struct pkt old = A.out[0];
    A.nout = 0;
    fake_now += WG_REJECT_AFTER_TIME_MS;
    CHECK_INT(wg_device_receive(B.dev, fake_now, old.data, old.len, "a", 1, NULL), WG_RX_EXPIRED);
    /* after that A's send stages the packet and starts a handshake */
    wg_peer_send(A.peer, fake_now, payload, 10);
    CHECK_INT(A.nout, 1);
    CHECK_INT(A.out[0].data[0], 1);
    pump();
    CHECK(B.ngot >= 2, "delivered after rehandshake: %zu", B.ngot);
}

static void keepalive_and_retransmit(void)
{
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 10);
    pump();
    /* B received data and sent nothing: after Keepalive-Timeout it sends a keepalive */
    fake_now += WG_KEEPALIVE_TIMEOUT_MS;
    tick_both();
    CHECK_INT(B.nout, 1);
    CHECK_INT(B.out[0].len, WG_KEEPALIVE_LEN);
    CHECK_INT(wg_device_receive(A.dev, fake_now, B.out[0].data, B.out[0].len, "b", 1, NULL), WG_RX_KEEPALIVE);
    B.nout = 0;
    /* retransmits: B is gone; A retries every ~5 s, gives up after Rekey-Attempt-Time */
    setup_pair();
    wg_peer_send(A.peer, fake_now, payload, 10);
    int inits = 0;
    for (int i = 0; i < 2000; i++) {
        int64_t next = wg_device_tick(A.dev, fake_now);
        inits += (int)A.nout;
        A.nout = 0;
        if (next == INT64_MAX)
            break;
        fake_now = next;
    }
    CHECK(inits == WG_MAX_TIMER_HANDSHAKES + 2, "initiations %d", inits);
    /* the wait after the last retry ends in the zero-key timer, then nothing */
    CHECK_INT(wg_device_tick(A.dev, fake_now), INT64_MAX);
}

static void persistent_keepalive(void)
{
    setup_pair();
    wg_peer_set_persistent_keepalive(A.peer, fake_now, 25);
    fake_now += 25000;
    tick_both();
    CHECK_INT(A.nout, 1);   /* no session yet: the keepalive starts a handshake */
    pump();
    fake_now += 25000;
    tick_both();
    CHECK(A.nout >= 1, "a keepalive");
    CHECK_INT(A.out[A.nout - 1].len, WG_KEEPALIVE_LEN);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(handshake_and_data);
    RUN(padding_and_mtu);
    RUN(replay_window);
    RUN(transport_replay_and_reorder);
    RUN(garbage_rejected);
    RUN(timestamp_replay);
    RUN(flood_limit);
    RUN(cookie_path);
    RUN(rekey_with_time);
    RUN(reject_after_time);
    RUN(keepalive_and_retransmit);
    RUN(persistent_keepalive);
    wg_device_free(A.dev);
    wg_device_free(B.dev);
    return TEST_MAIN_END();
}
