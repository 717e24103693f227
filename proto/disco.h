#ifndef HW_PROTO_DISCO_H
#define HW_PROTO_DISCO_H

/* Disco, Tailscale's peer discovery messages (PROTOCOL.md section 10): a datagram on the
 * WireGuard UDP socket or a DERP packet payload, laid out as
 *   magic "TS\xf0\x9f\x92\xac" (6) | sender disco public key (32) | nonce (24) | NaCl box
 * where the box (tag + ciphertext, key = crypto_box_beforenm(sender, receiver)) holds
 *   type (1) | version (1) | body.
 * Ping, Pong and CallMeMaybe are understood; the peer-relay types (0x04-0x09) and
 * unknown ones decode as "ignored", never as an error that would drop the peer. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define HW_DISCO_MAGIC "TS\xf0\x9f\x92\xac"
#define HW_DISCO_MAGIC_LEN 6
#define HW_DISCO_KEY_LEN 32
#define HW_DISCO_NONCE_LEN 24
#define HW_DISCO_TAG_LEN 16
/* magic + sender key + nonce: shorter is not disco (upstream's LooksLikeDiscoWrapper) */
#define HW_DISCO_WRAPPER_LEN (HW_DISCO_MAGIC_LEN + HW_DISCO_KEY_LEN + HW_DISCO_NONCE_LEN)
#define HW_DISCO_OVERHEAD (HW_DISCO_WRAPPER_LEN + HW_DISCO_TAG_LEN)
#define HW_DISCO_TXID_LEN 12
/* CallMeMaybe endpoints kept from one message (the rest are dropped, counted) */
#define HW_DISCO_MAX_ENDPOINTS 64
/* Largest inner message we build: a CallMeMaybe with every endpoint. */
#define HW_DISCO_MAX_PLAIN (2 + 18 * HW_DISCO_MAX_ENDPOINTS)

enum hw_disco_type {
    HW_DISCO_PING = 0x01,
    HW_DISCO_PONG = 0x02,
    HW_DISCO_CALL_ME_MAYBE = 0x03,
};

/* An IP and port as disco carries them: 16 bytes (IPv4 as ::ffff:a.b.c.d) + port. */
struct hw_disco_addr {
    uint8_t ip[16];
    uint16_t port;
};

struct hw_disco_msg {
    uint8_t type; /* enum hw_disco_type */
    uint8_t version;
    uint8_t txid[HW_DISCO_TXID_LEN];     /* Ping, Pong */
    bool has_node_key;                   /* Ping: the sender's node key (absent before 1.16) */
    uint8_t node_key[32];
    size_t padding;                      /* Ping: trailing zero bytes (path MTU probes) */
    struct hw_disco_addr src;            /* Pong: where the Ping was seen from */
    struct hw_disco_addr endpoints[HW_DISCO_MAX_ENDPOINTS]; /* CallMeMaybe */
    size_t n_endpoints;
    size_t endpoints_dropped;            /* CallMeMaybe: past HW_DISCO_MAX_ENDPOINTS */
};

/* Magic and long enough for a nonce: a datagram that disco (not WireGuard) owns. */
bool hw_disco_is(const uint8_t *pkt, size_t len);
/* The sender's disco public key inside a packet that hw_disco_is. */
const uint8_t *hw_disco_sender(const uint8_t *pkt);

/* Wraps plain (the encoded message) for the receiver whose shared key (hw_box_shared of
 * receiver public, sender private) is given. nonce NULL = random (always, outside
 * tests). Returns the packet length, or -1 when cap is too small. */
long hw_disco_seal(uint8_t *out, size_t cap, const uint8_t sender_pub[32], const uint8_t shared[32],
                   const uint8_t *nonce, const uint8_t *plain, size_t plain_len);
/* Opens a packet that hw_disco_is with the shared key of (sender, us). Returns the inner
 * message length written to plain, or -1 (forged, wrong key, short, cap too small). */
long hw_disco_open(const uint8_t *pkt, size_t len, const uint8_t shared[32], uint8_t *plain, size_t cap);

/* The inner message. Returns its length, or -1 when cap is too small or the message is
 * not one this code builds. */
long hw_disco_encode(const struct hw_disco_msg *m, uint8_t *out, size_t cap);
/* 0: m holds a Ping, Pong or CallMeMaybe. 1: a valid type this code ignores (the peer
 * relay types 0x04-0x09, anything newer), m->type says which. -1: malformed (err says
 * why). A CallMeMaybe of another version or a ragged length decodes with no endpoints,
 * as upstream does. */
int hw_disco_decode(const uint8_t *plain, size_t len, struct hw_disco_msg *m, char *err, size_t errlen);

/* Address helpers. DERP's magic "127.3.3.40:<region>" is an ordinary IPv4 address here. */
void hw_disco_addr_from_sockaddr(const struct sockaddr *sa, struct hw_disco_addr *out);
/* IPv4 (v4-mapped) becomes a sockaddr_in, anything else a sockaddr_in6. */
void hw_disco_addr_to_sockaddr(const struct hw_disco_addr *a, struct sockaddr_storage *ss, socklen_t *len);
bool hw_disco_addr_is_v4(const struct hw_disco_addr *a);
/* "1.2.3.4:5" / "[::1]:5". out needs HW_DISCO_ADDR_TEXT bytes. */
#define HW_DISCO_ADDR_TEXT 56
char *hw_disco_addr_format(const struct hw_disco_addr *a, char *out);
/* Parses "ip:port" / "[ip6]:port" (the Node.Endpoints form). -1 when it is not one. */
int hw_disco_addr_parse(const char *text, struct hw_disco_addr *out);
bool hw_disco_addr_equal(const struct hw_disco_addr *a, const struct hw_disco_addr *b);

#endif
