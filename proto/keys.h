#ifndef HW_PROTO_KEYS_H
#define HW_PROTO_KEYS_H

/* Curve25519 keys as Tailscale uses them (PROTOCOL.md §1): 32 raw bytes, shown as a
 * type prefix plus 64 hex digits, and the NaCl box built on them for DERP and disco.
 * Keys are plain uint8_t[32] so they sit directly in structs and database rows.
 * Functions that can fail return 0 on success and -1 on failure. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HW_KEY_LEN 32
/* Longest text form ("discokey:" + 64 digits) plus the NUL. */
#define HW_KEY_TEXT_MAX 80

enum hw_key_kind {
    HW_KEY_MACHINE,    /* mkey:      machine key, and the control server's Noise key */
    HW_KEY_NODE,       /* nodekey:   WireGuard/DERP identity of a node */
    HW_KEY_DISCO,      /* discokey:  peer discovery key */
    HW_KEY_PRIVATE,    /* privkey:   any private key (machine or node) */
    HW_KEY_CHALLENGE,  /* chalpub:   per-connection challenge in the Noise early payload */
};

/* "mkey:", "nodekey:", ... */
const char *hw_key_prefix(enum hw_key_kind kind);

/* A fresh random private key, clamped the way Tailscale clamps at creation. */
void hw_key_generate(uint8_t priv[HW_KEY_LEN]);
void hw_key_public(const uint8_t priv[HW_KEY_LEN], uint8_t pub[HW_KEY_LEN]);
/* All-zero means "no key" on the wire. Constant time. */
bool hw_key_is_zero(const uint8_t key[HW_KEY_LEN]);

/* Lowercase text form into out (HW_KEY_TEXT_MAX bytes). Returns out. */
char *hw_key_format(enum hw_key_kind kind, const uint8_t key[HW_KEY_LEN], char out[HW_KEY_TEXT_MAX]);
/* Exact prefix, then exactly 64 hex digits of either case. The zero key parses (it is
 * how an absent key is written); check hw_key_is_zero where a key is required. On
 * failure *why (if not NULL) gets a static reason that never echoes the input, which
 * may be a secret. _n takes a length instead of a NUL-terminated string. */
int hw_key_parse(enum hw_key_kind kind, const char *text, uint8_t out[HW_KEY_LEN],
                 const char **why);
int hw_key_parse_n(enum hw_key_kind kind, const char *text, size_t len,
                   uint8_t out[HW_KEY_LEN], const char **why);

/* X25519. Fails on an all-zero result (a low-order public key), as Go's X25519 does. */
int hw_key_dh(const uint8_t priv[HW_KEY_LEN], const uint8_t pub[HW_KEY_LEN],
              uint8_t shared[HW_KEY_LEN]);

/* Private key files hold "privkey:<hex>\n" (Headscale's noise_private.key form).
 * Loading tolerates trailing whitespace; saving writes atomically with mode 0600.
 * Errors are one line naming the path. */
int hw_key_load_private(const char *path, uint8_t priv[HW_KEY_LEN], char *err, size_t err_len);
int hw_key_save_private(const char *path, const uint8_t priv[HW_KEY_LEN], char *err, size_t err_len);
/* Loads path, or when it does not exist creates its directory (0700) and a new key.
 * Returns 0 when loaded, 1 when created, -1 on error. */
int hw_key_load_or_create_private(const char *path, uint8_t priv[HW_KEY_LEN], char *err,
                                  size_t err_len);

/* NaCl box (X25519 + XSalsa20-Poly1305) in Tailscale's layout: nonce(24) || tag(16) ||
 * ciphertext, i.e. HW_BOX_OVERHEAD bytes more than the message. nonce is NULL for a
 * fresh random nonce (always, outside tests). Open writes sealed_len - HW_BOX_OVERHEAD
 * bytes and fails on a short or forged box. The _shared forms take the precomputed key
 * from hw_box_shared (disco keeps one per peer). out must not overlap the input. */
#define HW_BOX_NONCE_LEN 24
#define HW_BOX_TAG_LEN 16
#define HW_BOX_OVERHEAD (HW_BOX_NONCE_LEN + HW_BOX_TAG_LEN)

int hw_box_seal(uint8_t *out, const uint8_t *msg, size_t len, const uint8_t *nonce,
                const uint8_t peer_pub[HW_KEY_LEN], const uint8_t my_priv[HW_KEY_LEN]);
int hw_box_open(uint8_t *out, const uint8_t *sealed, size_t sealed_len,
                const uint8_t peer_pub[HW_KEY_LEN], const uint8_t my_priv[HW_KEY_LEN]);
int hw_box_shared(uint8_t shared[HW_KEY_LEN], const uint8_t peer_pub[HW_KEY_LEN],
                  const uint8_t my_priv[HW_KEY_LEN]);
int hw_box_seal_shared(uint8_t *out, const uint8_t *msg, size_t len, const uint8_t *nonce,
                       const uint8_t shared[HW_KEY_LEN]);
int hw_box_open_shared(uint8_t *out, const uint8_t *sealed, size_t sealed_len,
                       const uint8_t shared[HW_KEY_LEN]);

#endif
