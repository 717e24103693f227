#include "proto/aead.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sodium.h>

/* Below this many bytes libsodium is the faster of the two (OpenSSL pays ~0.4 us per call
 * for its provider dispatch; bench/aead_bench shows the crossover near 512 bytes). */
enum { OPENSSL_FROM_LEN = 384 };

/* One context per thread, with the cipher fetched once: setting a new key and nonce on a
 * prepared context is cheap, fetching the algorithm per record is not. */
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *chacha_poly;

/* The context of this thread, ready for key and nonce. A run of records under one key
 * (a map of a thousand records to one session) sets only the nonce after the first. */
struct aead_state {
    EVP_CIPHER_CTX *ctx;
    int encrypt;
    uint8_t key[HW_AEAD_KEY_LEN];
};

static void state_release(void *arg)
{
    struct aead_state *st = arg;
    EVP_CIPHER_CTX_free(st->ctx);
    OPENSSL_cleanse(st, sizeof *st);
    free(st);
}

static void aead_setup(void)
{
    chacha_poly = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (!chacha_poly || pthread_key_create(&ctx_key, state_release) != 0) {
        fprintf(stderr, "OpenSSL has no ChaCha20-Poly1305 (needed for ts2021 and WireGuard)\n");
        abort();
    }
}

static EVP_CIPHER_CTX *keyed_ctx(const uint8_t key[HW_AEAD_KEY_LEN], const uint8_t nonce[HW_AEAD_NONCE_LEN],
                                 int encrypt)
{
    pthread_once(&ctx_once, aead_setup);
    struct aead_state *st = pthread_getspecific(ctx_key);
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st || !(st->ctx = EVP_CIPHER_CTX_new()) ||
            EVP_CipherInit_ex2(st->ctx, chacha_poly, NULL, NULL, 1, NULL) != 1 ||
            pthread_setspecific(ctx_key, st) != 0) {
            fprintf(stderr, "out of memory preparing ChaCha20-Poly1305\n");
            abort();
        }
        st->encrypt = -1;
    }
    int ok;
    if (st->encrypt == encrypt && CRYPTO_memcmp(st->key, key, HW_AEAD_KEY_LEN) == 0) {
        ok = EVP_CipherInit_ex2(st->ctx, NULL, NULL, nonce, encrypt, NULL) == 1;
    } else {
        ok = EVP_CipherInit_ex2(st->ctx, NULL, key, nonce, encrypt, NULL) == 1;
        memcpy(st->key, key, HW_AEAD_KEY_LEN);
        st->encrypt = encrypt;
    }
    if (!ok) {
        st->encrypt = -1;
        return NULL;
    }
    return st->ctx;
}

/* EVP lengths are ints; records and packets are far below that, and longer input is a
 * caller bug, not input to handle. */
static int as_int(size_t n)
{
    if (n > INT_MAX)
        abort();
    return (int)n;
}

void hw_aead_seal(uint8_t *out, const uint8_t key[HW_AEAD_KEY_LEN], const uint8_t nonce[HW_AEAD_NONCE_LEN],
                  const uint8_t *pt, size_t len, const uint8_t *ad, size_t adlen)
{
    if (len < OPENSSL_FROM_LEN) {
        crypto_aead_chacha20poly1305_ietf_encrypt(out, NULL, pt, len, ad, adlen, NULL, nonce, key);
        return;
    }
    EVP_CIPHER_CTX *ctx = keyed_ctx(key, nonce, 1);
    int n = 0;
    int ok = ctx &&
             (adlen == 0 || EVP_CipherUpdate(ctx, NULL, &n, ad, as_int(adlen)) == 1) &&
             (len == 0 || EVP_CipherUpdate(ctx, out, &n, pt, as_int(len)) == 1) &&
             EVP_CipherFinal_ex(ctx, out + len, &n) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, HW_AEAD_TAG_LEN, out + len) == 1;
    if (!ok) {
        fprintf(stderr, "ChaCha20-Poly1305 sealing failed inside OpenSSL\n");
        abort();
    }
}

int hw_aead_open(uint8_t *out, const uint8_t key[HW_AEAD_KEY_LEN], const uint8_t nonce[HW_AEAD_NONCE_LEN],
                 const uint8_t *ct, size_t ct_len, const uint8_t *ad, size_t adlen)
{
    if (ct_len < HW_AEAD_TAG_LEN)
        return -1;
    size_t len = ct_len - HW_AEAD_TAG_LEN;
    if (len < OPENSSL_FROM_LEN) {
        /* libsodium checks the tag before it writes a byte */
        uint8_t none[1];
        return crypto_aead_chacha20poly1305_ietf_decrypt(len ? out : none, NULL, NULL, ct, ct_len, ad, adlen,
                                                         nonce, key) == 0 ? 0 : -1;
    }
    uint8_t tag[HW_AEAD_TAG_LEN];
    memcpy(tag, ct + len, sizeof tag);   /* ct may be overwritten in place */
    EVP_CIPHER_CTX *ctx = keyed_ctx(key, nonce, 0);
    int n = 0;
    int ok = ctx &&
             (adlen == 0 || EVP_CipherUpdate(ctx, NULL, &n, ad, as_int(adlen)) == 1) &&
             (len == 0 || EVP_CipherUpdate(ctx, out, &n, ct, as_int(len)) == 1) &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, HW_AEAD_TAG_LEN, tag) == 1 &&
             EVP_CipherFinal_ex(ctx, tag, &n) == 1;
    if (!ok) {
        if (out && len)
            OPENSSL_cleanse(out, len);
        return -1;
    }
    return 0;
}
