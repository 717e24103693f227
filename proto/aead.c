#include "proto/aead.h"

#include <limits.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sodium.h>

/* Below this many bytes libsodium is the faster of the two: OpenSSL pays ~0.4 us per call
 * for its provider dispatch. bench/aead_bench on the project machine: libsodium ahead at
 * 256 bytes and less, the two within 10 % of each other from 384 to 512, OpenSSL ahead
 * from 640 (1.5x at 1,420, 2x at 4,080). */
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

/* An OpenSSL without ChaCha20-Poly1305 (a FIPS-only configuration) is not an error:
 * libsodium then does every size. */
static void aead_setup(void)
{
    chacha_poly = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (chacha_poly && pthread_key_create(&ctx_key, state_release) != 0) {
        EVP_CIPHER_free(chacha_poly);
        chacha_poly = NULL;
    }
}

static bool use_openssl(size_t len)
{
    if (len < OPENSSL_FROM_LEN)
        return false;
    pthread_once(&ctx_once, aead_setup);
    return chacha_poly != NULL;
}

static EVP_CIPHER_CTX *keyed_ctx(const uint8_t key[HW_AEAD_KEY_LEN], const uint8_t nonce[HW_AEAD_NONCE_LEN],
                                 int encrypt)
{
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
    if (!use_openssl(len)) {
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
    if (!use_openssl(len)) {
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

void hw_aead_forget(const uint8_t key[HW_AEAD_KEY_LEN])
{
    static const uint8_t zero_key[HW_AEAD_KEY_LEN], zero_nonce[HW_AEAD_NONCE_LEN];
    pthread_once(&ctx_once, aead_setup);
    if (!chacha_poly)
        return;   /* OpenSSL never held a key: libsodium does every size */
    struct aead_state *st = pthread_getspecific(ctx_key);
    if (!st || CRYPTO_memcmp(st->key, key, HW_AEAD_KEY_LEN) != 0)
        return;
    /* overwrite the key schedule inside OpenSSL's context as well as our copy */
    EVP_CipherInit_ex2(st->ctx, NULL, zero_key, zero_nonce, 1, NULL);
    OPENSSL_cleanse(st->key, sizeof st->key);
    st->encrypt = -1;
}
