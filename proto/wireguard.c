/* Userspace WireGuard: see wireguard.h. Facts checked against wireguard-go
 * (device/noise-protocol.go, cookie.go, timers.go, send.go, receive.go, replay/). */
#include "proto/wireguard.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/aead.h"

static const char CONSTRUCTION[] = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
static const char IDENTIFIER[] = "WireGuard v1 zx2c4 Jason@zx2c4.com";
static const char LABEL_MAC1[] = "mac1----";
static const char LABEL_COOKIE[] = "cookie--";

/* ---- primitives (OpenSSL for BLAKE2s, libsodium for the rest) ---- */

static EVP_MAC *b2s_mac;
static const EVP_MD *b2s_md;
static pthread_once_t prim_once = PTHREAD_ONCE_INIT;
static uint8_t initial_ck[32], initial_h[32];

static int hash2(uint8_t out[32], const void *a, size_t alen, const void *b, size_t blen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, b2s_md, NULL) == 1 && EVP_DigestUpdate(ctx, a, alen) == 1 &&
             (blen == 0 || EVP_DigestUpdate(ctx, b, blen) == 1) && EVP_DigestFinal_ex(ctx, out, &n) == 1 &&
             n == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

static void prim_init(void)
{
    if (sodium_init() < 0) {
        fputs("wireguard: libsodium failed to initialise\n", stderr);
        abort();
    }
    b2s_md = EVP_blake2s256();
    b2s_mac = EVP_MAC_fetch(NULL, "BLAKE2SMAC", NULL);
    if (!b2s_md || !b2s_mac || hash2(initial_ck, CONSTRUCTION, strlen(CONSTRUCTION), NULL, 0) != 0 ||
        hash2(initial_h, initial_ck, 32, IDENTIFIER, strlen(IDENTIFIER)) != 0) {
        fputs("wireguard: OpenSSL has no BLAKE2s/BLAKE2SMAC\n", stderr);
        abort();
    }
}

static int hmac(uint8_t out[32], const uint8_t key[32], const uint8_t *in, size_t len)
{
    unsigned int n = 0;
    return HMAC(b2s_md, key, 32, in, len, out, &n) && n == 32 ? 0 : -1;
}

/* Noise KDF with n (1..3) outputs: tau0 = HMAC(ck, x), tau_i = HMAC(tau0, tau_{i-1} || i). */
static int kdf(uint8_t *o1, uint8_t *o2, uint8_t *o3, const uint8_t ck[32], const uint8_t *x, size_t xlen)
{
    uint8_t t0[32], t[32], buf[33];
    int rc = hmac(t0, ck, x, xlen);
    uint8_t one = 1;
    if (rc == 0)
        rc = hmac(t, t0, &one, 1);
    if (rc == 0 && o1)
        memcpy(o1, t, 32);
    if (rc == 0 && o2) {
        memcpy(buf, t, 32);
        buf[32] = 2;
        rc = hmac(t, t0, buf, 33);
        if (rc == 0)
            memcpy(o2, t, 32);
    }
    if (rc == 0 && o3) {
        memcpy(buf, t, 32);
        buf[32] = 3;
        rc = hmac(t, t0, buf, 33);
        if (rc == 0)
            memcpy(o3, t, 32);
    }
    sodium_memzero(t0, sizeof t0);
    sodium_memzero(t, sizeof t);
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* Keyed BLAKE2s with a 16-byte output (mac1, mac2, cookies). */
static int mac16(uint8_t out[16], const uint8_t *key, size_t keylen, const uint8_t *in, size_t len)
{
    size_t size = 16, n = 0;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size), OSSL_PARAM_construct_end()};
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(b2s_mac);
    int ok = ctx && EVP_MAC_init(ctx, key, keylen, params) == 1 && EVP_MAC_update(ctx, in, len) == 1 &&
             EVP_MAC_final(ctx, out, &n, 16) == 1 && n == 16;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

static void nonce12(uint64_t counter, uint8_t n[12])
{
    memset(n, 0, 4);
    for (int i = 0; i < 8; i++)
        n[4 + i] = (uint8_t)(counter >> (8 * i));
}

static void aead_seal(uint8_t *out, const uint8_t key[32], uint64_t counter, const uint8_t *pt, size_t len,
                      const uint8_t *ad, size_t adlen)
{
    uint8_t n[12];
    nonce12(counter, n);
    hw_aead_seal(out, key, n, pt, len, ad, adlen);
}

static int aead_open(uint8_t *out, const uint8_t key[32], uint64_t counter, const uint8_t *ct, size_t len,
                     const uint8_t *ad, size_t adlen)
{
    uint8_t n[12];
    nonce12(counter, n);
    return hw_aead_open(out, key, n, ct, len, ad, adlen);
}

static int dh(uint8_t out[32], const uint8_t priv[32], const uint8_t pub[32])
{
    return crypto_scalarmult(out, priv, pub) == 0 ? 0 : -1;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* ---- replay window (wireguard-go replay/replay.go) ---- */

void wg_replay_reset(struct wg_replay *r)
{
    r->last = 0;
    r->ring[0] = 0;
}

bool wg_replay_check(struct wg_replay *r, uint64_t counter, uint64_t limit)
{
    if (counter >= limit)
        return false;
    uint64_t block = counter >> 6;
    if (counter > r->last) {
        uint64_t current = r->last >> 6, diff = block - current;
        if (diff > WG_REPLAY_BLOCKS)
            diff = WG_REPLAY_BLOCKS;
        for (uint64_t i = current + 1; i <= current + diff; i++)
            r->ring[i & (WG_REPLAY_BLOCKS - 1)] = 0;
        r->last = counter;
    } else if (r->last - counter > WG_REPLAY_WINDOW) {
        return false;
    }
    block &= WG_REPLAY_BLOCKS - 1;
    uint64_t bit = 1ULL << (counter & 63), old = r->ring[block];
    r->ring[block] = old | bit;
    return (old & bit) == 0;
}

/* ---- state ---- */

struct keypair {
    bool valid, is_initiator;
    uint8_t send_key[32], recv_key[32];
    uint64_t send_counter;
    struct wg_replay replay;
    int64_t created_ms;
    uint32_t local_index, remote_index;
};

enum hs_state { HS_NONE, HS_INITIATION_CREATED, HS_INITIATION_CONSUMED };

struct staged {
    uint8_t *data;
    size_t len;
};

struct wg_peer {
    struct wg_device *dev;
    struct wg_peer *next;
    void *user;
    uint8_t pub[32];
    uint8_t ss[32];          /* DH(static, static), fixed for the peer's life */
    uint8_t mac1_key[32];    /* HASH("mac1----" || peer pub): mac1 of what we send it */
    uint8_t cookie_key[32];  /* HASH("cookie--" || peer pub): opens its cookie replies */

    /* the handshake in flight */
    enum hs_state hs;
    uint8_t hs_h[32], hs_ck[32], hs_e_priv[32], hs_remote_e[32];
    uint32_t hs_local_index, hs_remote_index;
    uint8_t last_timestamp[12];
    bool has_last_initiation;
    int64_t last_initiation_ms;       /* last initiation consumed from it */
    bool has_sent_handshake;
    int64_t last_sent_handshake_ms;

    /* cookie generator */
    uint8_t cookie[16], last_mac1[16];
    bool has_cookie, has_last_mac1;
    int64_t cookie_set_ms;

    struct keypair prev, cur, next_kp;

    /* timers: absolute deadlines, 0 = stopped */
    int64_t t_retransmit, t_keepalive, t_new_handshake, t_zero, t_persistent;
    bool need_another_keepalive, sent_last_minute_handshake;
    int handshake_attempts;
    int persistent_keepalive_s;

    struct staged staged[WG_MAX_STAGED];
    size_t staged_head, staged_n;

    uint64_t tx_bytes, rx_bytes, last_handshake_wall_ns;
    int64_t last_handshake_ms;
};

struct wg_device {
    uint8_t priv[32], pub[32];
    uint8_t mac1_key[32], cookie_key[32];   /* for messages sent to us */
    uint8_t h0[32];                          /* HASH(initial_h || our pub) */
    int mtu;
    struct wg_callbacks cb;
    void *arg;
    struct wg_peer *peers;
    /* cookie checker */
    uint8_t secret[32];
    bool has_secret;
    int64_t secret_set_ms;
    /* load detection */
    int forced_load;   /* -1 off, 0 auto, 1 on */
    int64_t load_window_ms, under_load_until_ms;
    unsigned load_count;
    uint8_t buf[WG_MAX_PACKET];     /* sealing */
    uint8_t rxbuf[WG_MAX_PACKET];   /* opening: kept apart, staged packets go out before delivery */
};

static uint64_t wall_ns(struct wg_device *d)
{
    if (d->cb.wall_ns)
        return d->cb.wall_ns(d->arg);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

const char *wg_rx_name(int rx)
{
    switch (rx) {
    case WG_RX_DATA: return "data";
    case WG_RX_KEEPALIVE: return "keepalive";
    case WG_RX_HANDSHAKE: return "handshake";
    case WG_RX_COOKIE: return "cookie reply";
    case WG_RX_COOKIE_SENT: return "under load: cookie sent";
    case WG_RX_MALFORMED: return "malformed packet";
    case WG_RX_BAD_MAC1: return "bad mac1";
    case WG_RX_UNKNOWN_PEER: return "unknown peer";
    case WG_RX_DECRYPT: return "authentication failed";
    case WG_RX_REPLAY: return "replayed or too old counter";
    case WG_RX_TIMESTAMP: return "replayed initiation timestamp";
    case WG_RX_FLOOD: return "initiation flood";
    case WG_RX_UNKNOWN_INDEX: return "unknown receiver index";
    case WG_RX_EXPIRED: return "expired keypair";
    case WG_RX_STATE: return "unexpected handshake message";
    case WG_RX_CRYPTO: return "crypto failure";
    }
    return "?";
}

struct wg_device *wg_device_new(const uint8_t priv[WG_KEY_LEN], int mtu, const struct wg_callbacks *cb, void *arg)
{
    pthread_once(&prim_once, prim_init);
    struct wg_device *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    memcpy(d->priv, priv, 32);
    crypto_scalarmult_base(d->pub, d->priv);
    d->mtu = mtu;
    d->cb = *cb;
    d->arg = arg;
    if (hash2(d->mac1_key, LABEL_MAC1, 8, d->pub, 32) || hash2(d->cookie_key, LABEL_COOKIE, 8, d->pub, 32) ||
        hash2(d->h0, initial_h, 32, d->pub, 32)) {
        free(d);
        return NULL;
    }
    return d;
}

static void staged_clear(struct wg_peer *p)
{
    while (p->staged_n) {
        free(p->staged[p->staged_head].data);
        p->staged_head = (p->staged_head + 1) % WG_MAX_STAGED;
        p->staged_n--;
    }
    p->staged_head = 0;
}

static void peer_free(struct wg_peer *p)
{
    staged_clear(p);
    sodium_memzero(p, sizeof *p);
    free(p);
}

void wg_device_free(struct wg_device *d)
{
    if (!d)
        return;
    while (d->peers) {
        struct wg_peer *p = d->peers;
        d->peers = p->next;
        peer_free(p);
    }
    sodium_memzero(d, sizeof *d);
    free(d);
}

const uint8_t *wg_device_public_key(const struct wg_device *d) { return d->pub; }
void wg_device_force_under_load(struct wg_device *d, bool on) { d->forced_load = on ? 1 : 0; }

struct wg_peer *wg_peer_find(struct wg_device *d, const uint8_t pub[WG_KEY_LEN])
{
    for (struct wg_peer *p = d->peers; p; p = p->next)
        if (sodium_memcmp(p->pub, pub, 32) == 0)
            return p;
    return NULL;
}

struct wg_peer *wg_peer_add(struct wg_device *d, const uint8_t pub[WG_KEY_LEN], void *user)
{
    if (wg_peer_find(d, pub))
        return NULL;
    struct wg_peer *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->dev = d;
    p->user = user;
    memcpy(p->pub, pub, 32);
    if (dh(p->ss, d->priv, pub) != 0 || hash2(p->mac1_key, LABEL_MAC1, 8, pub, 32) ||
        hash2(p->cookie_key, LABEL_COOKIE, 8, pub, 32)) {
        peer_free(p);
        return NULL;
    }
    p->next = d->peers;
    d->peers = p;
    return p;
}

void wg_peer_remove(struct wg_device *d, struct wg_peer *p)
{
    for (struct wg_peer **pp = &d->peers; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            peer_free(p);
            return;
        }
}

void *wg_peer_user(const struct wg_peer *p) { return p->user; }
const uint8_t *wg_peer_public_key(const struct wg_peer *p) { return p->pub; }

void wg_peer_stats(const struct wg_peer *p, struct wg_peer_stats *out)
{
    out->tx_bytes = p->tx_bytes;
    out->rx_bytes = p->rx_bytes;
    out->last_handshake_wall_ns = p->last_handshake_wall_ns;
    out->last_handshake_ms = p->last_handshake_ms;
    out->has_session = p->cur.valid;
}

/* A local index no keypair or handshake of this device uses. */
static uint32_t new_index(struct wg_device *d)
{
    for (;;) {
        uint32_t idx;
        randombytes_buf(&idx, sizeof idx);
        bool used = false;
        for (struct wg_peer *p = d->peers; p && !used; p = p->next)
            used = (p->hs != HS_NONE && p->hs_local_index == idx) || (p->prev.valid && p->prev.local_index == idx) ||
                   (p->cur.valid && p->cur.local_index == idx) || (p->next_kp.valid && p->next_kp.local_index == idx);
        if (!used)
            return idx;
    }
}

static int64_t jitter(void) { return (int64_t)randombytes_uniform(WG_REKEY_TIMEOUT_JITTER_MAX_MS); }

static void wipe_keypair(struct keypair *k)
{
    hw_aead_forget(k->send_key);
    hw_aead_forget(k->recv_key);
    sodium_memzero(k, sizeof *k);
}

static void wipe_handshake(struct wg_peer *p)
{
    sodium_memzero(p->hs_h, 32);
    sodium_memzero(p->hs_ck, 32);
    sodium_memzero(p->hs_e_priv, 32);
    sodium_memzero(p->hs_remote_e, 32);
    p->hs = HS_NONE;
}

/* ---- timers (wireguard-go timers.go) ---- */

static void timers_any_authenticated_traversal(struct wg_peer *p, int64_t now)
{
    if (p->persistent_keepalive_s > 0)
        p->t_persistent = now + (int64_t)p->persistent_keepalive_s * 1000;
}
static void timers_any_authenticated_sent(struct wg_peer *p) { p->t_keepalive = 0; }
static void timers_any_authenticated_received(struct wg_peer *p) { p->t_new_handshake = 0; }
static void timers_data_sent(struct wg_peer *p, int64_t now)
{
    if (!p->t_new_handshake)
        p->t_new_handshake = now + WG_KEEPALIVE_TIMEOUT_MS + WG_REKEY_TIMEOUT_MS + jitter();
}
static void timers_data_received(struct wg_peer *p, int64_t now)
{
    if (!p->t_keepalive)
        p->t_keepalive = now + WG_KEEPALIVE_TIMEOUT_MS;
    else
        p->need_another_keepalive = true;
}
static void timers_handshake_complete(struct wg_peer *p, int64_t now)
{
    p->t_retransmit = 0;
    p->handshake_attempts = 0;
    p->sent_last_minute_handshake = false;
    p->last_handshake_wall_ns = wall_ns(p->dev);
    p->last_handshake_ms = now;
}
static void timers_session_derived(struct wg_peer *p, int64_t now) { p->t_zero = now + 3 * WG_REJECT_AFTER_TIME_MS; }

void wg_peer_set_persistent_keepalive(struct wg_peer *p, int64_t now_ms, int seconds)
{
    p->persistent_keepalive_s = seconds > 0 ? seconds : 0;
    p->t_persistent = seconds > 0 ? now_ms + (int64_t)seconds * 1000 : 0;
}

static void emit(struct wg_peer *p, const void *reply_to, size_t reply_to_len, const uint8_t *pkt, size_t len)
{
    p->tx_bytes += len;
    p->dev->cb.send(p->dev->arg, p, reply_to, reply_to_len, pkt, len);
}

/* ---- handshake messages ---- */

static void add_macs(struct wg_peer *p, uint8_t *msg, size_t len, int64_t now)
{
    uint8_t *mac1 = msg + len - 32, *mac2 = msg + len - 16;
    mac16(mac1, p->mac1_key, 32, msg, len - 32);
    memcpy(p->last_mac1, mac1, 16);
    p->has_last_mac1 = true;
    if (p->has_cookie && now - p->cookie_set_ms <= WG_COOKIE_REFRESH_TIME_MS)
        mac16(mac2, p->cookie, 16, msg, len - 16);
    else
        memset(mac2, 0, 16);
}

static void tai64n(struct wg_device *d, uint8_t out[12])
{
    uint64_t ns = wall_ns(d);
    uint64_t secs = 0x400000000000000aULL + ns / 1000000000ULL;
    uint32_t nano = (uint32_t)(ns % 1000000000ULL) & ~(uint32_t)0xffffff;   /* whitened, as wireguard-go */
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(secs >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        out[8 + i] = (uint8_t)(nano >> (24 - 8 * i));
}

static int create_initiation(struct wg_peer *p, uint8_t msg[WG_INITIATION_LEN])
{
    struct wg_device *d = p->dev;
    uint8_t h[32], ck[32], k[32], e_priv[32], e_pub[32], shared[32], ts[12];
    int rc = -1;
    memcpy(ck, initial_ck, 32);
    if (hash2(h, initial_h, 32, p->pub, 32))
        goto out;
    randombytes_buf(e_priv, 32);
    crypto_scalarmult_base(e_pub, e_priv);
    memset(msg, 0, WG_INITIATION_LEN);
    put32(msg, WG_MSG_INITIATION);
    uint32_t idx = new_index(d);
    put32(msg + 4, idx);
    memcpy(msg + 8, e_pub, 32);
    if (kdf(ck, NULL, NULL, ck, e_pub, 32) || hash2(h, h, 32, e_pub, 32))
        goto out;
    if (dh(shared, e_priv, p->pub) || kdf(ck, k, NULL, ck, shared, 32))
        goto out;
    aead_seal(msg + 40, k, 0, d->pub, 32, h, 32);
    if (hash2(h, h, 32, msg + 40, 48) || kdf(ck, k, NULL, ck, p->ss, 32))
        goto out;
    tai64n(d, ts);
    aead_seal(msg + 88, k, 0, ts, 12, h, 32);
    if (hash2(h, h, 32, msg + 88, 28))
        goto out;
    wipe_handshake(p);
    memcpy(p->hs_h, h, 32);
    memcpy(p->hs_ck, ck, 32);
    memcpy(p->hs_e_priv, e_priv, 32);
    p->hs_local_index = idx;
    p->hs = HS_INITIATION_CREATED;
    rc = 0;
out:
    sodium_memzero(k, 32);
    sodium_memzero(e_priv, 32);
    sodium_memzero(shared, 32);
    sodium_memzero(ck, 32);
    return rc;
}

static void send_initiation(struct wg_peer *p, int64_t now, bool retry)
{
    if (!retry)
        p->handshake_attempts = 0;
    if (p->has_sent_handshake && now - p->last_sent_handshake_ms < WG_REKEY_TIMEOUT_MS)
        return;
    p->has_sent_handshake = true;
    p->last_sent_handshake_ms = now;
    uint8_t msg[WG_INITIATION_LEN];
    if (create_initiation(p, msg) != 0)
        return;
    add_macs(p, msg, sizeof msg, now);
    timers_any_authenticated_traversal(p, now);
    timers_any_authenticated_sent(p);
    emit(p, NULL, 0, msg, sizeof msg);
    p->t_retransmit = now + WG_REKEY_TIMEOUT_MS + jitter();
}

void wg_peer_initiate(struct wg_peer *p, int64_t now_ms) { send_initiation(p, now_ms, false); }

/* Derives the transport keys from the finished handshake and rotates keypairs
 * (wireguard-go BeginSymmetricSession). */
static void begin_session(struct wg_peer *p, bool initiator, uint32_t remote_index, int64_t now)
{
    struct keypair kp = {0};
    if (initiator)
        kdf(kp.send_key, kp.recv_key, NULL, p->hs_ck, NULL, 0);
    else
        kdf(kp.recv_key, kp.send_key, NULL, p->hs_ck, NULL, 0);
    kp.valid = true;
    kp.is_initiator = initiator;
    kp.created_ms = now;
    kp.local_index = p->hs_local_index;
    kp.remote_index = remote_index;
    wg_replay_reset(&kp.replay);
    wipe_handshake(p);
    if (initiator) {
        if (p->next_kp.valid) {
            p->prev = p->next_kp;
            wipe_keypair(&p->next_kp);
        } else {
            p->prev = p->cur;
        }
        p->cur = kp;
    } else {
        p->next_kp = kp;
        wipe_keypair(&p->prev);
    }
    sodium_memzero(&kp, sizeof kp);
}

static bool under_load(struct wg_device *d, int64_t now)
{
    if (d->forced_load)
        return d->forced_load > 0;
    if (now - d->load_window_ms >= 1000) {
        d->load_window_ms = now;
        d->load_count = 0;
    }
    if (++d->load_count > WG_UNDER_LOAD_HANDSHAKES)
        d->under_load_until_ms = now + WG_UNDER_LOAD_AFTER_MS;
    return now < d->under_load_until_ms;
}

static int make_cookie(struct wg_device *d, int64_t now, const void *src, size_t src_len, uint8_t cookie[16])
{
    if (!d->has_secret || now - d->secret_set_ms > WG_COOKIE_REFRESH_TIME_MS) {
        randombytes_buf(d->secret, 32);
        d->has_secret = true;
        d->secret_set_ms = now;
    }
    return mac16(cookie, d->secret, 32, src, src_len);
}

static bool check_mac2(struct wg_device *d, int64_t now, const uint8_t *msg, size_t len, const void *src, size_t src_len)
{
    uint8_t cookie[16], mac2[16];
    if (!d->has_secret || now - d->secret_set_ms > WG_COOKIE_REFRESH_TIME_MS)
        return false;
    if (mac16(cookie, d->secret, 32, src, src_len) || mac16(mac2, cookie, 16, msg, len - 16))
        return false;
    return sodium_memcmp(mac2, msg + len - 16, 16) == 0;
}

static void send_cookie_reply(struct wg_device *d, int64_t now, const uint8_t *msg, size_t len, const void *src,
                              size_t src_len)
{
    uint8_t cookie[16], reply[WG_COOKIE_REPLY_LEN];
    if (make_cookie(d, now, src, src_len, cookie))
        return;
    put32(reply, WG_MSG_COOKIE_REPLY);
    memcpy(reply + 4, msg + 4, 4);   /* the sender index of the message we refuse */
    randombytes_buf(reply + 8, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(reply + 32, NULL, cookie, 16, msg + len - 32, 16, NULL, reply + 8,
                                               d->cookie_key);
    d->cb.send(d->arg, NULL, src, src_len, reply, sizeof reply);
}

static void send_staged(struct wg_peer *p, int64_t now);

static int consume_initiation(struct wg_device *d, int64_t now, const uint8_t *msg, const void *src, size_t src_len,
                              struct wg_peer **from)
{
    uint8_t h[32], ck[32], k[32], shared[32], spub[32], ts[12];
    int rc = WG_RX_CRYPTO;
    struct wg_peer *p = NULL;
    memcpy(ck, initial_ck, 32);
    memcpy(h, d->h0, 32);
    const uint8_t *e = msg + 8;
    if (kdf(ck, NULL, NULL, ck, e, 32) || hash2(h, h, 32, e, 32) || dh(shared, d->priv, e) ||
        kdf(ck, k, NULL, ck, shared, 32))
        goto out;
    if (aead_open(spub, k, 0, msg + 40, 48, h, 32) != 0) {
        rc = WG_RX_DECRYPT;
        goto out;
    }
    p = wg_peer_find(d, spub);
    if (!p) {
        rc = WG_RX_UNKNOWN_PEER;
        goto out;
    }
    if (hash2(h, h, 32, msg + 40, 48) || kdf(ck, k, NULL, ck, p->ss, 32))
        goto out;
    if (aead_open(ts, k, 0, msg + 88, 28, h, 32) != 0) {
        rc = WG_RX_DECRYPT;
        goto out;
    }
    if (hash2(h, h, 32, msg + 88, 28))
        goto out;
    if (memcmp(ts, p->last_timestamp, 12) <= 0) {
        rc = WG_RX_TIMESTAMP;
        goto out;
    }
    if (p->has_last_initiation && now - p->last_initiation_ms <= WG_HANDSHAKE_INITIATION_RATE_MS) {
        rc = WG_RX_FLOOD;
        goto out;
    }

    /* accepted: from here on the peer's state changes */
    memcpy(p->last_timestamp, ts, 12);
    p->has_last_initiation = true;
    p->last_initiation_ms = now;
    wipe_handshake(p);
    memcpy(p->hs_h, h, 32);
    memcpy(p->hs_ck, ck, 32);
    memcpy(p->hs_remote_e, e, 32);
    p->hs_remote_index = get32(msg + 4);
    p->hs = HS_INITIATION_CONSUMED;
    p->rx_bytes += WG_INITIATION_LEN;
    timers_any_authenticated_traversal(p, now);
    timers_any_authenticated_received(p);

    /* the response */
    uint8_t resp[WG_RESPONSE_LEN], e_priv[32], e_pub[32], tau[32];
    randombytes_buf(e_priv, 32);
    crypto_scalarmult_base(e_pub, e_priv);
    memset(resp, 0, sizeof resp);
    put32(resp, WG_MSG_RESPONSE);
    uint32_t idx = new_index(d);
    put32(resp + 4, idx);
    put32(resp + 8, p->hs_remote_index);
    memcpy(resp + 12, e_pub, 32);
    static const uint8_t zero_psk[32];
    int bad = kdf(ck, NULL, NULL, ck, e_pub, 32) || hash2(h, h, 32, e_pub, 32) || dh(shared, e_priv, e) ||
              kdf(ck, NULL, NULL, ck, shared, 32) || dh(shared, e_priv, p->pub) ||
              kdf(ck, NULL, NULL, ck, shared, 32) || kdf(ck, tau, k, ck, zero_psk, 32) || hash2(h, h, 32, tau, 32);
    sodium_memzero(e_priv, 32);
    sodium_memzero(tau, 32);
    if (bad) {
        wipe_handshake(p);
        goto out;
    }
    aead_seal(resp + 44, k, 0, NULL, 0, h, 32);
    memcpy(p->hs_ck, ck, 32);
    p->hs_local_index = idx;
    begin_session(p, false, p->hs_remote_index, now);
    timers_session_derived(p, now);
    add_macs(p, resp, sizeof resp, now);
    timers_any_authenticated_traversal(p, now);
    timers_any_authenticated_sent(p);
    emit(p, src, src_len, resp, sizeof resp);
    if (from)
        *from = p;
    rc = WG_RX_HANDSHAKE;
out:
    sodium_memzero(k, 32);
    sodium_memzero(ck, 32);
    sodium_memzero(shared, 32);
    return rc;
}

static int consume_response(struct wg_device *d, int64_t now, const uint8_t *msg, const void *src, size_t src_len,
                            struct wg_peer **from)
{
    uint32_t receiver = get32(msg + 8);
    struct wg_peer *p = NULL;
    for (struct wg_peer *q = d->peers; q && !p; q = q->next)
        if (q->hs == HS_INITIATION_CREATED && q->hs_local_index == receiver)
            p = q;
    if (!p)
        return WG_RX_UNKNOWN_INDEX;
    uint8_t h[32], ck[32], k[32], tau[32], shared[32];
    static const uint8_t zero_psk[32];
    const uint8_t *e = msg + 12;
    int rc = WG_RX_CRYPTO;
    memcpy(h, p->hs_h, 32);
    memcpy(ck, p->hs_ck, 32);
    if (kdf(ck, NULL, NULL, ck, e, 32) || hash2(h, h, 32, e, 32) || dh(shared, p->hs_e_priv, e) ||
        kdf(ck, NULL, NULL, ck, shared, 32) || dh(shared, d->priv, e) || kdf(ck, NULL, NULL, ck, shared, 32) ||
        kdf(ck, tau, k, ck, zero_psk, 32) || hash2(h, h, 32, tau, 32))
        goto out;
    if (aead_open(NULL, k, 0, msg + 44, 16, h, 32) != 0) {
        rc = WG_RX_DECRYPT;
        goto out;
    }
    memcpy(p->hs_ck, ck, 32);
    p->rx_bytes += WG_RESPONSE_LEN;
    begin_session(p, true, get32(msg + 4), now);
    timers_session_derived(p, now);
    timers_handshake_complete(p, now);
    timers_any_authenticated_traversal(p, now);
    timers_any_authenticated_received(p);
    if (from)
        *from = p;
    (void)src;
    (void)src_len;
    /* confirm the session to the responder: staged packets, or a keepalive */
    if (p->staged_n == 0)
        wg_peer_send(p, now, NULL, 0);
    else
        send_staged(p, now);
    rc = WG_RX_HANDSHAKE;
out:
    sodium_memzero(k, 32);
    sodium_memzero(ck, 32);
    sodium_memzero(tau, 32);
    sodium_memzero(shared, 32);
    return rc;
}

static int consume_cookie(struct wg_device *d, int64_t now, const uint8_t *msg)
{
    uint32_t receiver = get32(msg + 4);
    struct wg_peer *p = NULL;
    for (struct wg_peer *q = d->peers; q && !p; q = q->next)
        if ((q->hs != HS_NONE && q->hs_local_index == receiver) || (q->cur.valid && q->cur.local_index == receiver) ||
            (q->next_kp.valid && q->next_kp.local_index == receiver) ||
            (q->prev.valid && q->prev.local_index == receiver))
            p = q;
    if (!p)
        return WG_RX_UNKNOWN_INDEX;
    if (!p->has_last_mac1)
        return WG_RX_STATE;
    uint8_t cookie[16];
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(cookie, NULL, NULL, msg + 32, 32, p->last_mac1, 16, msg + 8,
                                                   p->cookie_key) != 0)
        return WG_RX_DECRYPT;
    memcpy(p->cookie, cookie, 16);
    p->has_cookie = true;
    p->cookie_set_ms = now;
    return WG_RX_COOKIE;
}

/* ---- transport ---- */

static bool keypair_usable(const struct keypair *k, int64_t now)
{
    return k->valid && now - k->created_ms < WG_REJECT_AFTER_TIME_MS && k->send_counter < WG_REJECT_AFTER_MESSAGES;
}

static void keep_key_fresh_sending(struct wg_peer *p, int64_t now)
{
    struct keypair *k = &p->cur;
    if (k->valid &&
        (k->send_counter > WG_REKEY_AFTER_MESSAGES || (k->is_initiator && now - k->created_ms > WG_REKEY_AFTER_TIME_MS)))
        send_initiation(p, now, false);
}

static void keep_key_fresh_receiving(struct wg_peer *p, int64_t now)
{
    if (p->sent_last_minute_handshake)
        return;
    struct keypair *k = &p->cur;
    if (k->valid && k->is_initiator &&
        now - k->created_ms > WG_REJECT_AFTER_TIME_MS - WG_KEEPALIVE_TIMEOUT_MS - WG_REKEY_TIMEOUT_MS) {
        p->sent_last_minute_handshake = true;
        send_initiation(p, now, false);
    }
}

static size_t padded_len(const struct wg_device *d, size_t len)
{
    size_t last = len;
    if (d->mtu > 0 && last > (size_t)d->mtu)
        last %= (size_t)d->mtu;
    size_t padded = (last + 15) & ~(size_t)15;
    if (d->mtu > 0 && padded > (size_t)d->mtu && last <= (size_t)d->mtu)
        padded = (size_t)d->mtu;
    if (padded < last)
        padded = last;
    return len + (padded - last);
}

/* Seals one plaintext with the current keypair (known usable) and sends it. */
static void seal_and_send(struct wg_peer *p, int64_t now, const uint8_t *pt, size_t len)
{
    struct wg_device *d = p->dev;
    struct keypair *k = &p->cur;
    size_t plen = padded_len(d, len);
    uint8_t *out = d->buf;
    put32(out, WG_MSG_TRANSPORT);
    put32(out + 4, k->remote_index);
    put64(out + 8, k->send_counter);
    uint8_t *body = out + WG_TRANSPORT_HEADER_LEN;
    if (len)
        memmove(body, pt, len);
    memset(body + len, 0, plen - len);
    uint8_t n[12];
    nonce12(k->send_counter, n);
    k->send_counter++;
    hw_aead_seal(body, k->send_key, n, body, plen, NULL, 0);
    timers_any_authenticated_traversal(p, now);
    timers_any_authenticated_sent(p);
    if (len)
        timers_data_sent(p, now);
    emit(p, NULL, 0, out, WG_TRANSPORT_HEADER_LEN + plen + WG_TAG_LEN);
}

static void stage(struct wg_peer *p, const uint8_t *pkt, size_t len)
{
    if (p->staged_n == WG_MAX_STAGED) {
        free(p->staged[p->staged_head].data);
        p->staged_head = (p->staged_head + 1) % WG_MAX_STAGED;
        p->staged_n--;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    if (len)
        memcpy(copy, pkt, len);
    size_t slot = (p->staged_head + p->staged_n) % WG_MAX_STAGED;
    p->staged[slot].data = copy;
    p->staged[slot].len = len;
    p->staged_n++;
}

static void send_staged(struct wg_peer *p, int64_t now)
{
    if (!keypair_usable(&p->cur, now)) {
        send_initiation(p, now, false);
        return;
    }
    while (p->staged_n) {
        struct staged s = p->staged[p->staged_head];
        p->staged_head = (p->staged_head + 1) % WG_MAX_STAGED;
        p->staged_n--;
        seal_and_send(p, now, s.data, s.len);
        free(s.data);
    }
    p->staged_head = 0;
    keep_key_fresh_sending(p, now);
}

int wg_peer_send(struct wg_peer *p, int64_t now_ms, const uint8_t *pkt, size_t len)
{
    if (len > WG_MAX_PLAINTEXT)
        return -1;
    if (p->staged_n == 0 && keypair_usable(&p->cur, now_ms)) {
        seal_and_send(p, now_ms, pkt, len);
        keep_key_fresh_sending(p, now_ms);
        return 0;
    }
    stage(p, pkt, len);
    send_staged(p, now_ms);
    return 0;
}

static void send_keepalive(struct wg_peer *p, int64_t now)
{
    if (p->staged_n == 0)
        stage(p, NULL, 0);
    send_staged(p, now);
}

static struct wg_peer *find_keypair(struct wg_device *d, uint32_t idx, struct keypair **out)
{
    for (struct wg_peer *p = d->peers; p; p = p->next) {
        struct keypair *ks[3] = {&p->cur, &p->prev, &p->next_kp};
        for (int i = 0; i < 3; i++)
            if (ks[i]->valid && ks[i]->local_index == idx) {
                *out = ks[i];
                return p;
            }
    }
    return NULL;
}

static int consume_transport(struct wg_device *d, int64_t now, const uint8_t *pkt, size_t len, struct wg_peer **from)
{
    struct keypair *k = NULL;
    struct wg_peer *p = find_keypair(d, get32(pkt + 4), &k);
    if (!p)
        return WG_RX_UNKNOWN_INDEX;
    if (now - k->created_ms >= WG_REJECT_AFTER_TIME_MS)
        return WG_RX_EXPIRED;
    uint64_t counter = get64(pkt + 8);
    size_t ctlen = len - WG_TRANSPORT_HEADER_LEN;
    if (ctlen - WG_TAG_LEN > WG_MAX_PLAINTEXT)
        return WG_RX_MALFORMED;
    uint8_t *pt = d->rxbuf;
    if (aead_open(pt, k->recv_key, counter, pkt + WG_TRANSPORT_HEADER_LEN, ctlen, NULL, 0) != 0)
        return WG_RX_DECRYPT;
    if (!wg_replay_check(&k->replay, counter, WG_REJECT_AFTER_MESSAGES))
        return WG_RX_REPLAY;
    p->rx_bytes += len;
    if (k == &p->next_kp) {
        /* key confirmation: the initiator used the new session */
        p->prev = p->cur;
        p->cur = p->next_kp;
        wipe_keypair(&p->next_kp);
        timers_handshake_complete(p, now);
        send_staged(p, now);
    }
    keep_key_fresh_receiving(p, now);
    timers_any_authenticated_traversal(p, now);
    timers_any_authenticated_received(p);
    if (from)
        *from = p;
    size_t ptlen = ctlen - WG_TAG_LEN;
    if (ptlen == 0)
        return WG_RX_KEEPALIVE;
    timers_data_received(p, now);
    d->cb.deliver(d->arg, p, pt, ptlen);
    return WG_RX_DATA;
}

int wg_device_receive(struct wg_device *d, int64_t now, const uint8_t *pkt, size_t len, const void *src,
                      size_t src_len, struct wg_peer **from)
{
    if (from)
        *from = NULL;
    if (len < 4)
        return WG_RX_MALFORMED;
    uint32_t type = get32(pkt);
    switch (type) {
    case WG_MSG_TRANSPORT:
        if (len < WG_KEEPALIVE_LEN)
            return WG_RX_MALFORMED;
        return consume_transport(d, now, pkt, len, from);
    case WG_MSG_COOKIE_REPLY:
        if (len != WG_COOKIE_REPLY_LEN)
            return WG_RX_MALFORMED;
        return consume_cookie(d, now, pkt);
    case WG_MSG_INITIATION:
    case WG_MSG_RESPONSE: {
        if (len != (type == WG_MSG_INITIATION ? WG_INITIATION_LEN : WG_RESPONSE_LEN))
            return WG_RX_MALFORMED;
        uint8_t mac1[16];
        if (mac16(mac1, d->mac1_key, 32, pkt, len - 32) || sodium_memcmp(mac1, pkt + len - 32, 16) != 0)
            return WG_RX_BAD_MAC1;
        if (under_load(d, now) && !check_mac2(d, now, pkt, len, src, src_len)) {
            send_cookie_reply(d, now, pkt, len, src, src_len);
            return WG_RX_COOKIE_SENT;
        }
        return type == WG_MSG_INITIATION ? consume_initiation(d, now, pkt, src, src_len, from)
                                         : consume_response(d, now, pkt, src, src_len, from);
    }
    }
    return WG_RX_MALFORMED;
}

/* ---- timers ---- */

static int64_t min_deadline(int64_t a, int64_t b) { return b && b < a ? b : a; }

int64_t wg_device_tick(struct wg_device *d, int64_t now)
{
    int64_t next = INT64_MAX;
    for (struct wg_peer *p = d->peers; p; p = p->next) {
        if (p->t_retransmit && now >= p->t_retransmit) {
            p->t_retransmit = 0;
            if (p->handshake_attempts > WG_MAX_TIMER_HANDSHAKES) {
                /* give up: drop what waited for a session, forget the residue later */
                p->t_keepalive = 0;
                staged_clear(p);
                if (!p->t_zero)
                    p->t_zero = now + 3 * WG_REJECT_AFTER_TIME_MS;
            } else {
                p->handshake_attempts++;
                send_initiation(p, now, true);
            }
        }
        if (p->t_keepalive && now >= p->t_keepalive) {
            p->t_keepalive = 0;
            send_keepalive(p, now);
            if (p->need_another_keepalive) {
                p->need_another_keepalive = false;
                p->t_keepalive = now + WG_KEEPALIVE_TIMEOUT_MS;
            }
        }
        if (p->t_new_handshake && now >= p->t_new_handshake) {
            p->t_new_handshake = 0;
            send_initiation(p, now, false);
        }
        if (p->t_zero && now >= p->t_zero) {
            p->t_zero = 0;
            wipe_keypair(&p->prev);
            wipe_keypair(&p->cur);
            wipe_keypair(&p->next_kp);
            wipe_handshake(p);
            staged_clear(p);
        }
        if (p->t_persistent && now >= p->t_persistent) {
            p->t_persistent = 0;
            send_keepalive(p, now);
            if (p->persistent_keepalive_s > 0 && !p->t_persistent)
                p->t_persistent = now + (int64_t)p->persistent_keepalive_s * 1000;
        }
        next = min_deadline(next, p->t_retransmit);
        next = min_deadline(next, p->t_keepalive);
        next = min_deadline(next, p->t_new_handshake);
        next = min_deadline(next, p->t_zero);
        next = min_deadline(next, p->t_persistent);
    }
    return next;
}
