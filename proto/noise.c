#include "proto/noise.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sodium.h>

#include "common/util.h"
#include "proto/aead.h"
#include "proto/keys.h"

/* The Noise instance and prologue are fixed by controlbase; both sides hash them, so a
 * single differing byte shows up as a failed tag, not as a readable error. */
static const char protocol_name[] = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
static const char prologue_prefix[] = "Tailscale Control Protocol v";

enum { STAGE_IDLE = 0, STAGE_WAIT_RESPONSE, STAGE_DONE, STAGE_FAILED };

#define ERROR_TEXT_SHOWN 128

/* ---- primitives: BLAKE2s and HMAC-BLAKE2s from OpenSSL, fetched once ---- */

static EVP_MD *blake2s_md;
static EVP_MAC *hmac_mac;
static pthread_once_t primitives_once = PTHREAD_ONCE_INIT;

static void fetch_primitives(void)
{
    blake2s_md = EVP_MD_fetch(NULL, "BLAKE2S-256", NULL);
    hmac_mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (sodium_init() < 0) {
        fputs("headwater: libsodium failed to initialise\n", stderr);
        abort();
    }
}

static int primitives_ready(void)
{
    pthread_once(&primitives_once, fetch_primitives);
    return blake2s_md && hmac_mac ? 0 : -1;
}

/* out = BLAKE2s-256(a || b) */
static int blake2s(uint8_t out[32], const void *a, size_t alen, const void *b, size_t blen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, blake2s_md, NULL) == 1 &&
             EVP_DigestUpdate(ctx, a, alen) == 1 && (blen == 0 || EVP_DigestUpdate(ctx, b, blen) == 1) &&
             EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* out = HMAC-BLAKE2s(key, a || b) */
static int hmac_blake2s(uint8_t out[32], const uint8_t key[32], const void *a, size_t alen,
                        const void *b, size_t blen)
{
    char digest[] = "BLAKE2S-256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_mac);
    size_t n = 0;
    int ok = ctx && EVP_MAC_init(ctx, key, 32, params) == 1 &&
             (alen == 0 || EVP_MAC_update(ctx, a, alen) == 1) &&
             (blen == 0 || EVP_MAC_update(ctx, b, blen) == 1) &&
             EVP_MAC_final(ctx, out, &n, 32) == 1 && n == 32;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* Noise's HKDF with two outputs: RFC 5869 with salt = ck and empty info. */
static int hkdf2(const uint8_t ck[32], const uint8_t *ikm, size_t ikm_len, uint8_t out1[32],
                 uint8_t out2[32])
{
    static const uint8_t one = 1, two = 2;
    uint8_t prk[32], t1[32];
    int rc = hmac_blake2s(prk, ck, ikm, ikm_len, NULL, 0);
    if (rc == 0)
        rc = hmac_blake2s(t1, prk, &one, 1, NULL, 0);
    if (rc == 0)
        rc = hmac_blake2s(out2, prk, t1, 32, &two, 1);
    if (rc == 0)
        memcpy(out1, t1, 32);
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(t1, sizeof t1);
    return rc;
}

/* ---- symmetric state ---- */

/* A handshake's secrets go as soon as it ends, whichever way it ends. */
static void wipe(struct hw_noise_handshake *hs, int stage)
{
    sodium_memzero(hs->h, sizeof hs->h);
    sodium_memzero(hs->ck, sizeof hs->ck);
    sodium_memzero(hs->e_priv, sizeof hs->e_priv);
    sodium_memzero(hs->s_priv, sizeof hs->s_priv);
    hs->stage = stage;
}

static int fail(struct hw_noise_handshake *hs, bool refuse, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct hw_noise_handshake *hs, bool refuse, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(hs->error, sizeof hs->error, fmt, ap);
    va_end(ap);
    hs->refuse = refuse;
    wipe(hs, STAGE_FAILED);
    return HW_NOISE_ERROR;
}

static void trace(struct hw_noise_handshake *hs, const char *step)
{
    if (hs->trace)
        hs->trace(hs->trace_arg, step, hs->h, hs->ck);
}

static int mix_hash(struct hw_noise_handshake *hs, const void *data, size_t len)
{
    return blake2s(hs->h, hs->h, sizeof hs->h, data, len);
}

static int sym_init(struct hw_noise_handshake *hs, uint16_t version)
{
    char prologue[sizeof prologue_prefix + 8];
    int n = snprintf(prologue, sizeof prologue, "%s%u", prologue_prefix, (unsigned)version);
    if (blake2s(hs->h, protocol_name, strlen(protocol_name), NULL, 0) < 0)
        return -1;
    memcpy(hs->ck, hs->h, sizeof hs->ck);
    trace(hs, "initialize");
    if (mix_hash(hs, prologue, (size_t)n) < 0)
        return -1;
    trace(hs, "prologue");
    return 0;
}

/* MixKey(DH(priv, pub)): advances ck and yields the key for the next AEAD operation.
 * A zero DH result is refused, as Go's X25519 refuses it. */
static int mix_dh(struct hw_noise_handshake *hs, const uint8_t priv[32], const uint8_t pub[32],
                  uint8_t k[32], const char **why)
{
    uint8_t shared[32];
    if (hw_key_dh(priv, pub, shared) < 0) {
        *why = "X25519 gave the all-zero result (low-order public key)";
        return -1;
    }
    int rc = hkdf2(hs->ck, shared, sizeof shared, hs->ck, k);
    sodium_memzero(shared, sizeof shared);
    if (rc < 0)
        *why = "HKDF failed";
    return rc;
}

/* Handshake AEADs use each key exactly once, so the nonce is always zero; h is the
 * associated data so every earlier byte of the handshake is authenticated. */
static int encrypt_and_hash(struct hw_noise_handshake *hs, const uint8_t k[32], const uint8_t *pt,
                            size_t len, uint8_t *out)
{
    static const uint8_t zero_nonce[12];
    hw_aead_seal(out, k, zero_nonce, pt, len, hs->h, sizeof hs->h);
    return mix_hash(hs, out, len + HW_NOISE_TAG_LEN);
}

static int decrypt_and_hash(struct hw_noise_handshake *hs, const uint8_t k[32], const uint8_t *ct,
                            size_t len, uint8_t *out)
{
    static const uint8_t zero_nonce[12];
    if (hw_aead_open(out, k, zero_nonce, ct, len, hs->h, sizeof hs->h) != 0)
        return -1;
    return mix_hash(hs, ct, len);
}

static int split(struct hw_noise_handshake *hs, struct hw_noise_session *out)
{
    memset(out, 0, sizeof *out);
    if (hkdf2(hs->ck, NULL, 0, out->c2s.key, out->s2c.key) < 0)
        return -1;
    memcpy(out->handshake_hash, hs->h, sizeof out->handshake_hash);
    memcpy(out->peer, hs->rs, sizeof out->peer);
    out->version = hs->version;
    return 0;
}

/* After the response's payload, on both sides: the session's keys, the handshake gone. */
static int finish(struct hw_noise_handshake *hs, struct hw_noise_session *out)
{
    trace(hs, "se");
    if (split(hs, out) < 0)
        return fail(hs, false, "BLAKE2s/HMAC computation failed");
    wipe(hs, STAGE_DONE);
    return HW_NOISE_OK;
}

static void put_u16be(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint16_t get_u16be(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void reset(struct hw_noise_handshake *hs)
{
    hs->error[0] = '\0';
    hs->refuse = false;
    hs->stage = STAGE_IDLE;
}

/* The two messages' first tokens, which both sides mix alike and differ only in whose
 * private key meets which public key in the DH (X25519 gives both ends the same result).
 * Each returns HW_NOISE_OK with k holding the key for the message's next AEAD, or the
 * failure, already recorded. */

/* Initiation: s (the server's static key), e (the initiator's ephemeral), es. */
static int mix_initiation_start(struct hw_noise_handshake *hs, const uint8_t server_pub[32],
                                const uint8_t initiator_e_pub[32], const uint8_t es_priv[32],
                                const uint8_t es_pub[32], uint8_t k[32])
{
    const char *why = NULL;
    if (sym_init(hs, hs->version) < 0 || mix_hash(hs, server_pub, 32) < 0)
        return fail(hs, false, "BLAKE2s/HMAC computation failed");
    trace(hs, "s");
    if (mix_hash(hs, initiator_e_pub, 32) < 0)
        return fail(hs, false, "BLAKE2s/HMAC computation failed");
    trace(hs, "e");
    if (mix_dh(hs, es_priv, es_pub, k, &why) < 0)
        return fail(hs, false, "computing es: %s", why);
    return HW_NOISE_OK;
}

/* Response: e (the responder's ephemeral), ee, se. */
static int mix_response_start(struct hw_noise_handshake *hs, const uint8_t responder_e_pub[32],
                              const uint8_t ee_priv[32], const uint8_t ee_pub[32],
                              const uint8_t se_priv[32], const uint8_t se_pub[32], uint8_t k[32])
{
    const char *why = NULL;
    if (mix_hash(hs, responder_e_pub, 32) < 0)
        return fail(hs, false, "BLAKE2s/HMAC computation failed");
    trace(hs, "e");
    if (mix_dh(hs, ee_priv, ee_pub, k, &why) < 0)
        return fail(hs, false, "computing ee: %s", why);
    trace(hs, "ee");
    if (mix_dh(hs, se_priv, se_pub, k, &why) < 0)
        return fail(hs, false, "computing se: %s", why);
    return HW_NOISE_OK;
}

/* ---- initiator ---- */

int hw_noise_client_start(struct hw_noise_handshake *hs, uint16_t version,
                          const uint8_t machine_priv[32], const uint8_t server_pub[32],
                          const uint8_t *ephemeral_priv, uint8_t init[HW_NOISE_INITIATION_LEN])
{
    const char *why = NULL;
    uint8_t k[32], machine_pub[32], e_pub[32];
    reset(hs);
    if (primitives_ready() < 0)
        return fail(hs, false, "OpenSSL lacks BLAKE2S-256 or HMAC");
    /* A zero private key is a key that was never loaded, not a key. */
    if (hw_key_is_zero(machine_priv))
        return fail(hs, false, "machine private key is not set");
    hs->version = version;
    memcpy(hs->rs, server_pub, 32);
    memcpy(hs->s_priv, machine_priv, 32);
    if (ephemeral_priv)
        memcpy(hs->e_priv, ephemeral_priv, 32);
    else
        hw_key_generate(hs->e_priv);
    hw_key_public(hs->e_priv, e_pub);
    hw_key_public(machine_priv, machine_pub);

    put_u16be(init, version);
    init[2] = HW_NOISE_MSG_INITIATION;
    put_u16be(init + 3, HW_NOISE_INITIATION_LEN - 5);
    memcpy(init + 5, e_pub, 32);

    int rc = mix_initiation_start(hs, server_pub, e_pub, hs->e_priv, server_pub, k);
    if (rc != HW_NOISE_OK)
        goto out;
    if (encrypt_and_hash(hs, k, machine_pub, 32, init + 37) < 0)
        goto crypto;
    trace(hs, "es");
    if (mix_dh(hs, machine_priv, server_pub, k, &why) < 0) {
        rc = fail(hs, false, "computing ss: %s", why);
        goto out;
    }
    if (encrypt_and_hash(hs, k, NULL, 0, init + 85) < 0)
        goto crypto;
    trace(hs, "ss");
    hs->stage = STAGE_WAIT_RESPONSE;
    rc = HW_NOISE_OK;
    goto out;
crypto:
    rc = fail(hs, false, "BLAKE2s/HMAC computation failed");
out:
    sodium_memzero(k, sizeof k);
    return rc;
}

/* Go's %q, near enough: the server's text is untrusted, so it is quoted and escaped
 * before it reaches a log line. */
static void quote(char *out, size_t cap, const uint8_t *s, size_t len)
{
    size_t o = 0;
    if (cap < 3)
        return;
    out[o++] = '"';
    for (size_t i = 0; i < len && o + 6 < cap; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

int hw_noise_client_finish(struct hw_noise_handshake *hs, const uint8_t *in, size_t len,
                           size_t *used, struct hw_noise_session *out)
{
    uint8_t k[32];
    *used = 0;
    if (hs->stage != STAGE_WAIT_RESPONSE)
        return fail(hs, false, "no handshake is waiting for a response");
    if (len < HW_NOISE_HEADER_LEN)
        return HW_NOISE_AGAIN;
    uint8_t type = in[0];
    size_t mlen = get_u16be(in + 1);
    if (type == HW_NOISE_MSG_ERROR) {
        /* The text may announce up to 64 KiB; its start is all anyone reads, and waiting
         * for no more than that keeps a small receive buffer sufficient. */
        size_t shown = mlen < ERROR_TEXT_SHOWN ? mlen : ERROR_TEXT_SHOWN;
        if (len < HW_NOISE_HEADER_LEN + shown)
            return HW_NOISE_AGAIN;
        char text[160];
        quote(text, sizeof text, in + HW_NOISE_HEADER_LEN, shown);
        *used = HW_NOISE_HEADER_LEN + shown;
        return fail(hs, false, "server error: %s", text);
    }
    if (type != HW_NOISE_MSG_RESPONSE)
        return fail(hs, false, "unexpected response message type %u", type);
    if (mlen != HW_NOISE_RESPONSE_LEN - HW_NOISE_HEADER_LEN)
        return fail(hs, false, "wrong length %zu received for handshake response", mlen);
    if (len < HW_NOISE_RESPONSE_LEN)
        return HW_NOISE_AGAIN;

    const uint8_t *re = in + 3, *tag = in + 35;
    uint8_t empty[1];
    int rc = mix_response_start(hs, re, hs->e_priv, re, hs->s_priv, re, k);
    if (rc != HW_NOISE_OK)
        goto out;
    if (decrypt_and_hash(hs, k, tag, HW_NOISE_TAG_LEN, empty) < 0) {
        rc = fail(hs, false, "decrypting payload: handshake response failed authentication");
        goto out;
    }
    rc = finish(hs, out);
    if (rc == HW_NOISE_OK)
        *used = HW_NOISE_RESPONSE_LEN;
out:
    sodium_memzero(k, sizeof k);
    return rc;
}

/* ---- responder ---- */

int hw_noise_server_respond(struct hw_noise_handshake *hs, const uint8_t server_priv[32],
                            const uint8_t *init, size_t len, const uint8_t *ephemeral_priv,
                            uint8_t resp[HW_NOISE_RESPONSE_LEN], struct hw_noise_session *out)
{
    const char *why = NULL;
    uint8_t k[32], server_pub[32], e_pub[32], machine_pub[32], empty[1];
    reset(hs);
    /* These three texts are the ones controlbase sends; clients show them to the user
     * verbatim, so they stay identical. */
    if (len != HW_NOISE_INITIATION_LEN)
        return fail(hs, true, "wrong handshake initiation size");
    if (init[2] != HW_NOISE_MSG_INITIATION)
        return fail(hs, true, "unexpected handshake message type");
    if (get_u16be(init + 3) != HW_NOISE_INITIATION_LEN - 5)
        return fail(hs, true, "wrong handshake initiation length");
    if (primitives_ready() < 0)
        return fail(hs, false, "OpenSSL lacks BLAKE2S-256 or HMAC");
    if (hw_key_is_zero(server_priv))
        return fail(hs, false, "server private key is not set");

    /* The prologue uses the version the client claims, with no negotiation: if anyone
     * altered the cleartext version on the way, the hashes diverge and the tags fail. */
    hs->version = get_u16be(init);
    const uint8_t *ei = init + 5, *enc_s = init + 37, *tag = init + 85;
    hw_key_public(server_priv, server_pub);

    int rc = mix_initiation_start(hs, server_pub, ei, server_priv, ei, k);
    if (rc != HW_NOISE_OK)
        goto out;
    if (decrypt_and_hash(hs, k, enc_s, 32 + HW_NOISE_TAG_LEN, machine_pub) < 0) {
        rc = fail(hs, false, "decrypting machine key: authentication failed");
        goto out;
    }
    trace(hs, "es");
    if (mix_dh(hs, server_priv, machine_pub, k, &why) < 0) {
        rc = fail(hs, false, "computing ss: %s", why);
        goto out;
    }
    if (decrypt_and_hash(hs, k, tag, HW_NOISE_TAG_LEN, empty) < 0) {
        rc = fail(hs, false, "decrypting initiation tag: authentication failed");
        goto out;
    }
    trace(hs, "ss");
    memcpy(hs->rs, machine_pub, 32);

    if (ephemeral_priv)
        memcpy(hs->e_priv, ephemeral_priv, 32);
    else
        hw_key_generate(hs->e_priv);
    hw_key_public(hs->e_priv, e_pub);
    resp[0] = HW_NOISE_MSG_RESPONSE;
    put_u16be(resp + 1, HW_NOISE_RESPONSE_LEN - HW_NOISE_HEADER_LEN);
    memcpy(resp + 3, e_pub, 32);
    rc = mix_response_start(hs, e_pub, hs->e_priv, ei, hs->e_priv, machine_pub, k);
    if (rc != HW_NOISE_OK)
        goto out;
    if (encrypt_and_hash(hs, k, NULL, 0, resp + 35) < 0)
        rc = fail(hs, false, "BLAKE2s/HMAC computation failed");
    else
        rc = finish(hs, out);
out:
    sodium_memzero(k, sizeof k);
    return rc;
}

size_t hw_noise_error_message(const char *text, uint8_t *out, size_t cap)
{
    if (cap < HW_NOISE_HEADER_LEN)
        return 0;
    size_t n = strlen(text);
    if (n > 0xffff)
        n = 0xffff;
    if (n > cap - HW_NOISE_HEADER_LEN)
        n = cap - HW_NOISE_HEADER_LEN;
    out[0] = HW_NOISE_MSG_ERROR;
    put_u16be(out + 1, (uint16_t)n);
    memcpy(out + HW_NOISE_HEADER_LEN, text, n);
    return HW_NOISE_HEADER_LEN + n;
}

void hw_noise_handshake_wipe(struct hw_noise_handshake *hs) { wipe(hs, STAGE_IDLE); }

void hw_noise_session_wipe(struct hw_noise_session *s)
{
    hw_aead_forget(s->c2s.key);
    hw_aead_forget(s->s2c.key);
    sodium_memzero(s, sizeof *s);
}

/* ---- transport ---- */

void hw_noise_nonce(uint64_t counter, uint8_t out[12])
{
    /* controlbase writes the counter big-endian, unlike the Noise spec's little-endian.
     * Counter 0 looks the same either way, so a spec-following implementation would
     * interoperate for exactly one record per direction and then fail. */
    memset(out, 0, 4);
    for (int i = 0; i < 8; i++)
        out[4 + i] = (uint8_t)(counter >> (56 - 8 * i));
}

size_t hw_noise_sealed_len(size_t len)
{
    size_t records = (len + HW_NOISE_MAX_PLAINTEXT - 1) / HW_NOISE_MAX_PLAINTEXT;
    return len + records * HW_NOISE_RECORD_OVERHEAD;
}

int hw_noise_seal_record(struct hw_noise_cipher *c, const uint8_t *pt, size_t len, uint8_t *out)
{
    uint8_t nonce[12];
    if (len > HW_NOISE_MAX_PLAINTEXT || c->nonce == UINT64_MAX)
        return -1;
    hw_noise_nonce(c->nonce, nonce);
    out[0] = HW_NOISE_MSG_RECORD;
    put_u16be(out + 1, (uint16_t)(len + HW_NOISE_TAG_LEN));
    hw_aead_seal(out + HW_NOISE_HEADER_LEN, c->key, nonce, pt, len, NULL, 0);
    c->nonce++;
    return 0;
}

int hw_noise_seal(struct hw_noise_cipher *c, const uint8_t *pt, size_t len, uint8_t *out,
                  size_t cap, size_t *written, const char **why)
{
    size_t need = hw_noise_sealed_len(len);
    size_t records = (len + HW_NOISE_MAX_PLAINTEXT - 1) / HW_NOISE_MAX_PLAINTEXT;
    *written = 0;
    if (cap < need) {
        if (why)
            *why = "output buffer too small for the sealed records";
        return -1;
    }
    /* Counters used: nonce .. nonce+records-1, all of which must stay below UINT64_MAX. */
    if (records > UINT64_MAX - c->nonce) {
        if (why)
            *why = "cipher exhausted, no more nonces available for the current key";
        return -1;
    }
    size_t o = 0;
    while (len > 0) {
        size_t n = len < HW_NOISE_MAX_PLAINTEXT ? len : HW_NOISE_MAX_PLAINTEXT;
        hw_noise_seal_record(c, pt, n, out + o);
        o += n + HW_NOISE_RECORD_OVERHEAD;
        pt += n;
        len -= n;
    }
    *written = o;
    return 0;
}

void hw_noise_reader_init(struct hw_noise_reader *r, const struct hw_noise_cipher *cipher)
{
    memset(r, 0, sizeof *r);
    r->cipher = *cipher;
}

static int reader_fail(struct hw_noise_reader *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int reader_fail(struct hw_noise_reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    r->failed = true;
    /* Once a record is rejected this direction is out of step with the peer for good;
     * dropping the key guarantees nothing later is decrypted by mistake. */
    sodium_memzero(&r->cipher, sizeof r->cipher);
    sodium_memzero(r->buf, sizeof r->buf);
    r->have = r->need = 0;
    return -1;
}

/* Validates a record header; returns its total size, or -1 (reader failed). */
static long record_size(struct hw_noise_reader *r, const uint8_t hdr[3])
{
    size_t total = HW_NOISE_HEADER_LEN + get_u16be(hdr + 1);
    if (hdr[0] != HW_NOISE_MSG_RECORD)
        return reader_fail(r, "received message with unexpected type %u, want %u", hdr[0],
                           HW_NOISE_MSG_RECORD);
    if (total > HW_NOISE_MAX_RECORD)
        return reader_fail(r, "record of %zu bytes exceeds the %d-byte limit", total,
                           HW_NOISE_MAX_RECORD);
    if (total < HW_NOISE_RECORD_OVERHEAD)
        return reader_fail(r, "record of %zu bytes is too short to hold its tag", total);
    return (long)total;
}

/* Decrypts the record rec (total bytes, header already checked) into r->buf + 3. rec is
 * either the caller's input or r->buf itself, in which case this decrypts in place. */
static int open_record(struct hw_noise_reader *r, const uint8_t *rec, size_t total, size_t *pt_len)
{
    uint8_t nonce[12];
    if (r->cipher.nonce == UINT64_MAX)
        return reader_fail(r, "cipher exhausted, no more nonces available for the current key");
    hw_noise_nonce(r->cipher.nonce, nonce);
    size_t n = total - HW_NOISE_HEADER_LEN - HW_NOISE_TAG_LEN;
    if (hw_aead_open(r->buf + HW_NOISE_HEADER_LEN, r->cipher.key, nonce, rec + HW_NOISE_HEADER_LEN,
                     total - HW_NOISE_HEADER_LEN, NULL, 0) != 0)
        return reader_fail(r, "record %llu failed authentication (corrupt, forged or out of order)",
                           (unsigned long long)r->cipher.nonce);
    r->cipher.nonce++;
    *pt_len = n;
    return 0;
}

int hw_noise_reader_next(struct hw_noise_reader *r, const uint8_t **in, size_t *in_len,
                         const uint8_t **pt, size_t *pt_len)
{
    if (r->failed)
        return -1;
    for (;;) {
        size_t n = 0;
        if (r->have == 0 && *in_len >= HW_NOISE_HEADER_LEN) {
            /* Fast path: a whole record in the input is decrypted straight out of it. */
            long total = record_size(r, *in);
            if (total < 0)
                return -1;
            if (*in_len >= (size_t)total) {
                if (open_record(r, *in, (size_t)total, &n) < 0)
                    return -1;
                *in += total;
                *in_len -= (size_t)total;
                if (n == 0)
                    continue;   /* empty records are legal and carry nothing */
                *pt = r->buf + HW_NOISE_HEADER_LEN;
                *pt_len = n;
                return 1;
            }
        }
        if (*in_len == 0)
            return 0;
        /* Slow path: the record is cut; collect it in buf, at most one record's worth. */
        size_t want = r->need ? r->need : HW_NOISE_HEADER_LEN;
        size_t take = want - r->have < *in_len ? want - r->have : *in_len;
        memcpy(r->buf + r->have, *in, take);
        r->have += take;
        *in += take;
        *in_len -= take;
        if (r->have < want)
            return 0;
        if (!r->need) {
            long total = record_size(r, r->buf);
            if (total < 0)
                return -1;
            r->need = (size_t)total;
            if (r->have < r->need)
                continue;
        }
        if (open_record(r, r->buf, r->need, &n) < 0)
            return -1;
        r->have = r->need = 0;
        if (n == 0)
            continue;
        *pt = r->buf + HW_NOISE_HEADER_LEN;
        *pt_len = n;
        return 1;
    }
}

int hw_noise_reader_feed(struct hw_noise_reader *r, const uint8_t *data, size_t len,
                         hw_noise_plaintext_fn fn, void *arg)
{
    const uint8_t *pt;
    size_t pt_len;
    int rc;
    while ((rc = hw_noise_reader_next(r, &data, &len, &pt, &pt_len)) == 1) {
        int frc = fn(arg, pt, pt_len);
        if (frc < 0)
            return frc;
    }
    return rc;
}

void hw_noise_reader_wipe(struct hw_noise_reader *r)
{
    hw_aead_forget(r->cipher.key);
    sodium_memzero(r, sizeof *r);
}

/* ---- early payload ---- */

uint8_t *hw_noise_early_payload(const uint8_t challenge_pub[32], size_t *len)
{
    char key[HW_KEY_TEXT_MAX];
    hw_key_format(HW_KEY_CHALLENGE, challenge_pub, key);
    json_t *obj = json_pack("{s:s}", "nodeKeyChallenge", key);
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!text) {
        fputs("headwater: out of memory\n", stderr);
        abort();
    }
    size_t n = strlen(text);
    uint8_t *out = hw_malloc(HW_NOISE_EARLY_MAGIC_LEN + 4 + n);
    memcpy(out, HW_NOISE_EARLY_MAGIC, HW_NOISE_EARLY_MAGIC_LEN);
    out[5] = (uint8_t)(n >> 24);
    out[6] = (uint8_t)(n >> 16);
    out[7] = (uint8_t)(n >> 8);
    out[8] = (uint8_t)n;
    memcpy(out + 9, text, n);
    free(text);
    *len = HW_NOISE_EARLY_MAGIC_LEN + 4 + n;
    return out;
}

enum { EARLY_MAGIC = 0, EARLY_LENGTH, EARLY_JSON, EARLY_DONE, EARLY_FAILED };

static int early_fail(struct hw_noise_early *ep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int early_fail(struct hw_noise_early *ep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ep->error, sizeof ep->error, fmt, ap);
    va_end(ap);
    hw_noise_early_free(ep);
    ep->state = EARLY_FAILED;
    return HW_NOISE_ERROR;
}

static int early_parse(struct hw_noise_early *ep)
{
    json_error_t jerr;
    json_t *root = json_loadb(ep->json, ep->json_len, 0, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return early_fail(ep, "early payload is not a JSON object");
    }
    json_t *chal = json_object_get(root, "nodeKeyChallenge");
    int rc = HW_NOISE_OK;
    if (chal && !json_is_null(chal)) {
        const char *why = NULL;
        if (!json_is_string(chal))
            rc = early_fail(ep, "early payload nodeKeyChallenge is not a string");
        else if (hw_key_parse_n(HW_KEY_CHALLENGE, json_string_value(chal), json_string_length(chal),
                                ep->challenge, &why) < 0)
            rc = early_fail(ep, "early payload nodeKeyChallenge: %s", why);
    }
    json_decref(root);
    if (rc == HW_NOISE_OK) {
        hw_noise_early_free(ep);
        ep->present = true;
        ep->state = EARLY_DONE;
    }
    return rc;
}

int hw_noise_early_feed(struct hw_noise_early *ep, const uint8_t *data, size_t len, size_t *used)
{
    size_t i = 0;
    *used = 0;
    if (ep->state == EARLY_FAILED)
        return HW_NOISE_ERROR;
    if (ep->state == EARLY_DONE)
        return HW_NOISE_OK;
    while (i < len) {
        switch (ep->state) {
        case EARLY_MAGIC:
            /* Decided on the first byte that differs. An HTTP/2 frame can never begin
             * with the magic: its first byte would declare a frame of 16 MiB or more. */
            if (data[i] != (uint8_t)HW_NOISE_EARLY_MAGIC[ep->have]) {
                ep->pending_len = ep->have;
                ep->have = 0;
                ep->state = EARLY_DONE;
                *used = i;
                return HW_NOISE_OK;
            }
            i++;
            if (++ep->have == HW_NOISE_EARLY_MAGIC_LEN) {
                ep->have = 0;
                ep->state = EARLY_LENGTH;
            }
            break;
        case EARLY_LENGTH:
            ep->len_bytes[ep->have++] = data[i++];
            if (ep->have == 4) {
                ep->json_len = (uint32_t)ep->len_bytes[0] << 24 | (uint32_t)ep->len_bytes[1] << 16 |
                               (uint32_t)ep->len_bytes[2] << 8 | ep->len_bytes[3];
                if (ep->json_len > HW_NOISE_EARLY_MAX_JSON)
                    return early_fail(ep, "early payload of %u bytes exceeds the 10 MiB limit",
                                      ep->json_len);
                ep->json = hw_malloc(ep->json_len + 1);
                ep->have = 0;
                ep->state = EARLY_JSON;
                if (ep->json_len == 0) {
                    *used = i;
                    return early_parse(ep);
                }
            }
            break;
        case EARLY_JSON: {
            size_t take = ep->json_len - ep->have;
            if (take > len - i)
                take = len - i;
            memcpy(ep->json + ep->have, data + i, take);
            ep->have += take;
            i += take;
            if (ep->have == ep->json_len) {
                *used = i;
                return early_parse(ep);
            }
            break;
        }
        }
    }
    *used = i;
    return HW_NOISE_AGAIN;
}

void hw_noise_early_free(struct hw_noise_early *ep)
{
    free(ep->json);
    ep->json = NULL;
}
