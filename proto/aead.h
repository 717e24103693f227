#ifndef HW_PROTO_AEAD_H
#define HW_PROTO_AEAD_H

/* ChaCha20-Poly1305 with a 96-bit nonce (RFC 8439), the AEAD of both ts2021 records and
 * WireGuard packets. Every byte of every map and every tunnelled packet passes through
 * it, so it takes the faster library for the size: OpenSSL's EVP for records and packets
 * of 384 bytes and more (twice libsodium's speed for 4 KiB records on the project
 * machine), libsodium below that, where OpenSSL's per-call cost dominates
 * (bench/aead_bench measures both side by side). Both compute the same RFC 8439
 * construction; tests/unit/test_aead checks them against each other and the RFC. */

#include <stddef.h>
#include <stdint.h>

#define HW_AEAD_KEY_LEN 32
#define HW_AEAD_NONCE_LEN 12
#define HW_AEAD_TAG_LEN 16

/* Writes len bytes of ciphertext and the 16-byte tag to out (len + 16 bytes). out may be
 * pt (in place). Aborts if OpenSSL fails inside (out of memory) or len exceeds INT_MAX. */
void hw_aead_seal(uint8_t *out, const uint8_t key[HW_AEAD_KEY_LEN], const uint8_t nonce[HW_AEAD_NONCE_LEN],
                  const uint8_t *pt, size_t len, const uint8_t *ad, size_t adlen);

/* Opens ct_len bytes (ciphertext then tag) into out (ct_len - 16 bytes; out may be ct, or
 * NULL when there is no plaintext). 0 when the tag is right; -1 otherwise, and then out
 * holds no unauthenticated plaintext (zeros where anything was written). */
int hw_aead_open(uint8_t *out, const uint8_t key[HW_AEAD_KEY_LEN], const uint8_t nonce[HW_AEAD_NONCE_LEN],
                 const uint8_t *ct, size_t ct_len, const uint8_t *ad, size_t adlen);

/* The calling thread keeps the last key it used with OpenSSL, to skip the key setup for
 * the next record under it. Called when a key is wiped, so the copy goes with it. */
void hw_aead_forget(const uint8_t key[HW_AEAD_KEY_LEN]);

#endif
