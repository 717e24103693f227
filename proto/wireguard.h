#ifndef HW_PROTO_WIREGUARD_H
#define HW_PROTO_WIREGUARD_H

/* Userspace WireGuard (PROTOCOL.md §11, the WireGuard whitepaper): the Noise_IKpsk2
 * handshake with an all-zero PSK, cookie replies (mac1/mac2), transport data with a
 * replay window, keepalives, the timers, and key rotation (previous/current/next).
 *
 * Sans-I/O: nothing here touches a socket or a clock. The caller passes the monotonic
 * time in milliseconds to every call; packets to send and plaintext to deliver come out
 * through the callbacks, during the call that produced them; wg_device_tick() runs the
 * timers that are due and says when it wants to be called next. That makes every timer
 * testable with a fake clock (tests/unit/test_wireguard.c).
 *
 * Addresses are opaque bytes ("src" below): the caller's idea of where a datagram came
 * from (a sockaddr, a DERP node key). They key the cookie a responder under load hands
 * out, and are given back with replies so the caller can answer where a packet came from. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WG_KEY_LEN 32
#define WG_MSG_INITIATION 1
#define WG_MSG_RESPONSE 2
#define WG_MSG_COOKIE_REPLY 3
#define WG_MSG_TRANSPORT 4
#define WG_INITIATION_LEN 148
#define WG_RESPONSE_LEN 92
#define WG_COOKIE_REPLY_LEN 64
#define WG_TRANSPORT_HEADER_LEN 16
#define WG_TAG_LEN 16
#define WG_KEEPALIVE_LEN (WG_TRANSPORT_HEADER_LEN + WG_TAG_LEN)
/* Largest plaintext (an IP packet) we seal or open. */
#define WG_MAX_PLAINTEXT 65535
#define WG_MAX_PACKET (WG_MAX_PLAINTEXT + WG_TRANSPORT_HEADER_LEN + WG_TAG_LEN + 16)

/* Protocol constants (wireguard-go device/constants.go), in milliseconds. */
#define WG_REKEY_AFTER_MESSAGES (1ULL << 60)
#define WG_REJECT_AFTER_MESSAGES (UINT64_MAX - (1ULL << 13))
#define WG_REKEY_AFTER_TIME_MS 120000
#define WG_REJECT_AFTER_TIME_MS 180000
#define WG_REKEY_ATTEMPT_TIME_MS 90000
#define WG_REKEY_TIMEOUT_MS 5000
#define WG_REKEY_TIMEOUT_JITTER_MAX_MS 334
#define WG_MAX_TIMER_HANDSHAKES (WG_REKEY_ATTEMPT_TIME_MS / WG_REKEY_TIMEOUT_MS)
#define WG_KEEPALIVE_TIMEOUT_MS 10000
#define WG_COOKIE_REFRESH_TIME_MS 120000
#define WG_HANDSHAKE_INITIATION_RATE_MS 20   /* at most 50 initiations/s from one peer */
#define WG_UNDER_LOAD_AFTER_MS 1000
/* Handshake messages in one second that put the device under load (cookies required). */
#define WG_UNDER_LOAD_HANDSHAKES 256
/* Packets held while a handshake is under way (wireguard-go's QueueStagedSize). */
#define WG_MAX_STAGED 128
/* Replay window: 128 blocks of 64 bits, one block kept as slack (8128 counters). */
#define WG_REPLAY_BLOCKS 128
#define WG_REPLAY_WINDOW ((WG_REPLAY_BLOCKS - 1) * 64)

struct wg_device;
struct wg_peer;

struct wg_callbacks {
    /* A packet for peer's endpoint. reply_to is the source of the packet this answers
     * (a handshake response; a cookie reply, where peer is NULL because the sender is
     * not known yet), NULL for packets the device sends on its own. */
    void (*send)(void *arg, struct wg_peer *peer, const void *reply_to, size_t reply_to_len,
                 const uint8_t *pkt, size_t len);
    /* Decrypted plaintext from peer (padding included; the caller knows IP). */
    void (*deliver)(void *arg, struct wg_peer *peer, uint8_t *pkt, size_t len);
    /* Wall clock in ns for TAI64N timestamps and "last handshake"; NULL = CLOCK_REALTIME. */
    uint64_t (*wall_ns)(void *arg);
};

/* What wg_device_receive did with a datagram: >= 0 accepted, < 0 dropped (no state
 * changed except where noted). */
enum wg_rx {
    WG_RX_DATA = 0,          /* transport data delivered */
    WG_RX_KEEPALIVE = 1,     /* authenticated keepalive */
    WG_RX_HANDSHAKE = 2,     /* initiation answered / response consumed */
    WG_RX_COOKIE = 3,        /* a cookie reply consumed (next initiation carries mac2) */
    WG_RX_COOKIE_SENT = 4,   /* under load and no valid mac2: a cookie reply went back */
    WG_RX_MALFORMED = -1,    /* unknown type, wrong length */
    WG_RX_BAD_MAC1 = -2,
    WG_RX_UNKNOWN_PEER = -3, /* the static key in an initiation is no peer of ours */
    WG_RX_DECRYPT = -4,      /* authentication failed */
    WG_RX_REPLAY = -5,       /* transport counter seen or too old */
    WG_RX_TIMESTAMP = -6,    /* initiation timestamp not newer than the last one */
    WG_RX_FLOOD = -7,        /* initiations from that peer faster than 50/s */
    WG_RX_UNKNOWN_INDEX = -8,
    WG_RX_EXPIRED = -9,      /* keypair older than Reject-After-Time */
    WG_RX_STATE = -10,       /* a response without an initiation in flight, etc. */
    WG_RX_CRYPTO = -11,      /* a primitive failed (low-order key, library error) */
};
const char *wg_rx_name(int rx);

struct wg_peer_stats {
    uint64_t tx_bytes, rx_bytes;        /* WireGuard datagrams, all types */
    uint64_t last_handshake_wall_ns;    /* 0: never */
    int64_t last_handshake_ms;          /* monotonic; meaningful when wall_ns != 0 */
    bool has_session;                   /* a current keypair we can send with */
};

/* priv: the device's static private key (node key). mtu pads plaintext up to it
 * (0 = pad to 16 only). */
struct wg_device *wg_device_new(const uint8_t priv[WG_KEY_LEN], int mtu, const struct wg_callbacks *cb,
                                void *arg);
void wg_device_free(struct wg_device *d);
const uint8_t *wg_device_public_key(const struct wg_device *d);
/* Tests and operators: force the under-load state (mac2 required) on or back to automatic. */
void wg_device_force_under_load(struct wg_device *d, bool on);

/* A peer by static public key; NULL when it exists already or the key is unusable
 * (a low-order point). user is returned by wg_peer_user. */
struct wg_peer *wg_peer_add(struct wg_device *d, const uint8_t pub[WG_KEY_LEN], void *user);
void wg_peer_remove(struct wg_device *d, struct wg_peer *p);
struct wg_peer *wg_peer_find(struct wg_device *d, const uint8_t pub[WG_KEY_LEN]);
void *wg_peer_user(const struct wg_peer *p);
const uint8_t *wg_peer_public_key(const struct wg_peer *p);
/* Seconds; 0 = off (Tailscale's default). */
void wg_peer_set_persistent_keepalive(struct wg_peer *p, int64_t now_ms, int seconds);
void wg_peer_stats(const struct wg_peer *p, struct wg_peer_stats *out);

/* A datagram from the network. *from (optional) is the peer it authenticated as, or NULL. */
int wg_device_receive(struct wg_device *d, int64_t now_ms, const uint8_t *pkt, size_t len, const void *src,
                      size_t src_len, struct wg_peer **from);

/* Plaintext for peer: sealed and sent when a session is up, else held (up to
 * WG_MAX_STAGED, the oldest dropped) while a handshake starts. -1 when len is too big. */
int wg_peer_send(struct wg_peer *p, int64_t now_ms, const uint8_t *pkt, size_t len);
/* Starts a handshake now unless one went out less than Rekey-Timeout ago. */
void wg_peer_initiate(struct wg_peer *p, int64_t now_ms);

/* Runs due timers; returns the next deadline (monotonic ms), INT64_MAX when none. */
int64_t wg_device_tick(struct wg_device *d, int64_t now_ms);

/* The replay filter on its own (exposed for tests). */
struct wg_replay {
    uint64_t last;
    uint64_t ring[WG_REPLAY_BLOCKS];
};
void wg_replay_reset(struct wg_replay *r);
/* true when counter is new and below limit; records it. */
bool wg_replay_check(struct wg_replay *r, uint64_t counter, uint64_t limit);

#endif
