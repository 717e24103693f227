/* proto/aead: ChaCha20-Poly1305 through OpenSSL must be the RFC 8439 construction that
 * libsodium (and every Tailscale and WireGuard peer) computes. */
#include <pthread.h>
#include <sodium.h>

#include "proto/aead.h"
#include "testlib.h"

static void rfc8439_vector(void)
{
    /* RFC 8439 section 2.8.2 */
    static const char text[] = "Ladies and Gentlemen of the class of '99: If I could offer you only one "
                               "tip for the future, sunscreen would be it.";
    static const uint8_t ad[] = {0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7};
    static const uint8_t nonce[12] = {0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47};
    static const uint8_t head[16] = {0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb,
                                     0x7b, 0x86, 0xaf, 0xbc, 0x53, 0xef, 0x7e, 0xc2};
    static const uint8_t tag[16] = {0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a,
                                    0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91};
    uint8_t key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(0x80 + i);
    size_t len = sizeof text - 1;
    CHECK_INT(len, 114);
    uint8_t out[114 + 16];
    hw_aead_seal(out, key, nonce, (const uint8_t *)text, len, ad, sizeof ad);
    CHECK(memcmp(out, head, 16) == 0, "first ciphertext block differs from the RFC");
    CHECK(memcmp(out + len, tag, 16) == 0, "tag differs from the RFC");
    uint8_t back[114];
    CHECK_INT(hw_aead_open(back, key, nonce, out, sizeof out, ad, sizeof ad), 0);
    CHECK(memcmp(back, text, len) == 0, "round trip");
}

/* Every length a record or packet can have around block and record boundaries, with and
 * without associated data, in both directions against libsodium. */
static void same_bytes_as_libsodium(void)
{
    enum { MAX = 4200 };
    static uint8_t pt[MAX], ours[MAX + 16], theirs[MAX + 16], back[MAX];
    uint8_t key[32], nonce[12], ad[32];
    randombytes_buf(pt, sizeof pt);
    randombytes_buf(ad, sizeof ad);
    size_t lens[] = {0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 1420, 1440, 4079, 4080, 4096, MAX};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        for (size_t adlen = 0; adlen <= 32; adlen += 32) {
            size_t len = lens[i];
            randombytes_buf(key, sizeof key);
            randombytes_buf(nonce, sizeof nonce);
            hw_aead_seal(ours, key, nonce, pt, len, adlen ? ad : NULL, adlen);
            crypto_aead_chacha20poly1305_ietf_encrypt(theirs, NULL, pt, len, ad, adlen, NULL, nonce, key);
            CHECK(memcmp(ours, theirs, len + 16) == 0, "len %zu ad %zu: sealed bytes differ", len, adlen);
            CHECK_INT(hw_aead_open(len ? back : NULL, key, nonce, theirs, len + 16, adlen ? ad : NULL, adlen), 0);
            CHECK(memcmp(back, pt, len) == 0, "len %zu: opened bytes differ", len);
        }
    }
}

static void in_place(void)
{
    uint8_t key[32] = {1}, nonce[12] = {2}, buf[1000 + 16], copy[1000];
    randombytes_buf(buf, 1000);
    memcpy(copy, buf, 1000);
    hw_aead_seal(buf, key, nonce, buf, 1000, NULL, 0);
    CHECK(memcmp(buf, copy, 1000) != 0, "sealing in place changed nothing");
    CHECK_INT(hw_aead_open(buf, key, nonce, buf, sizeof buf, NULL, 0), 0);
    CHECK(memcmp(buf, copy, 1000) == 0, "in-place round trip");
}

/* A forged or damaged record never yields plaintext: -1, and the output is zeros. */
static void refuses_tampering(void)
{
    uint8_t key[32] = {3}, nonce[12] = {4}, ad[4] = {5, 6, 7, 8};
    uint8_t pt[300], ct[300 + 16], out[300];
    randombytes_buf(pt, sizeof pt);
    hw_aead_seal(ct, key, nonce, pt, sizeof pt, ad, sizeof ad);
    size_t flips[] = {0, 150, 299, 300, 315};
    for (size_t i = 0; i < sizeof flips / sizeof *flips; i++) {
        ct[flips[i]] ^= 0x01;
        memset(out, 0xaa, sizeof out);
        CHECK_INT(hw_aead_open(out, key, nonce, ct, sizeof ct, ad, sizeof ad), -1);
        for (size_t j = 0; j < sizeof out; j++)
            CHECK(out[j] == 0, "byte %zu of the output not cleared after flipping byte %zu", j, flips[i]);
        ct[flips[i]] ^= 0x01;
    }
    uint8_t other_nonce[12] = {5};
    CHECK_INT(hw_aead_open(out, key, other_nonce, ct, sizeof ct, ad, sizeof ad), -1);
    CHECK_INT(hw_aead_open(out, key, nonce, ct, sizeof ct, NULL, 0), -1);   /* AD left out */
    CHECK_INT(hw_aead_open(out, key, nonce, ct, 15, NULL, 0), -1);          /* shorter than a tag */
    CHECK_INT(hw_aead_open(out, key, nonce, ct, sizeof ct, ad, sizeof ad), 0);
    CHECK(memcmp(out, pt, sizeof pt) == 0, "the untouched record still opens");
}

/* Forgetting a key wipes the thread's copy; the next record under it is keyed afresh and
 * still right, and forgetting a key the thread does not hold changes nothing. */
static void forget_then_reuse(void)
{
    uint8_t key[32], other[32], nonce[12] = {9}, pt[1000], ours[1016], theirs[1016];
    randombytes_buf(key, sizeof key);
    randombytes_buf(other, sizeof other);
    randombytes_buf(pt, sizeof pt);
    crypto_aead_chacha20poly1305_ietf_encrypt(theirs, NULL, pt, sizeof pt, NULL, 0, NULL, nonce, key);
    hw_aead_seal(ours, key, nonce, pt, sizeof pt, NULL, 0);
    hw_aead_forget(other);
    hw_aead_seal(ours, key, nonce, pt, sizeof pt, NULL, 0);
    CHECK(memcmp(ours, theirs, sizeof ours) == 0, "after forgetting another key");
    hw_aead_forget(key);
    hw_aead_seal(ours, key, nonce, pt, sizeof pt, NULL, 0);
    CHECK(memcmp(ours, theirs, sizeof ours) == 0, "after forgetting this key");
    uint8_t back[1000];
    hw_aead_forget(key);
    CHECK_INT(hw_aead_open(back, key, nonce, theirs, sizeof theirs, NULL, 0), 0);
    CHECK(memcmp(back, pt, sizeof pt) == 0, "open after forgetting");
}

/* Each thread has its own OpenSSL context: threads sealing at once must not mix keys. */
static void *seal_many(void *arg)
{
    uint8_t *key = arg, nonce[12] = {0}, pt[512], ct[512 + 16], theirs[512 + 16];
    memset(pt, key[0], sizeof pt);
    for (int i = 0; i < 2000; i++) {
        nonce[0] = (uint8_t)i;
        hw_aead_seal(ct, key, nonce, pt, sizeof pt, NULL, 0);
        crypto_aead_chacha20poly1305_ietf_encrypt(theirs, NULL, pt, sizeof pt, NULL, 0, NULL, nonce, key);
        if (memcmp(ct, theirs, sizeof ct) != 0)
            return (void *)1;
    }
    return NULL;
}

static void threads_do_not_share_state(void)
{
    uint8_t keys[4][32];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        memset(keys[i], i + 1, 32);
        CHECK_INT(pthread_create(&t[i], NULL, seal_many, keys[i]), 0);
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        bad += r != NULL;
    }
    CHECK_INT(bad, 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(rfc8439_vector);
    RUN(same_bytes_as_libsodium);
    RUN(in_place);
    RUN(refuses_tampering);
    RUN(forget_then_reuse);
    RUN(threads_do_not_share_state);
    return TEST_MAIN_END();
}
