#include "proto/keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "common/util.h"

/* sodium_init is idempotent and thread-safe; randombytes needs it to have run once. */
static void sodium_ready(void)
{
    if (sodium_init() < 0) {
        fputs("headwater: libsodium failed to initialise\n", stderr);
        abort();
    }
}

const char *hw_key_prefix(enum hw_key_kind kind)
{
    switch (kind) {
    case HW_KEY_MACHINE: return "mkey:";
    case HW_KEY_NODE: return "nodekey:";
    case HW_KEY_DISCO: return "discokey:";
    case HW_KEY_PRIVATE: return "privkey:";
    case HW_KEY_CHALLENGE: return "chalpub:";
    }
    return "";
}

/* Static so the reason can be returned without echoing (possibly secret) input. */
static const char *wrong_prefix_reason(enum hw_key_kind kind)
{
    switch (kind) {
    case HW_KEY_MACHINE: return "key must start with \"mkey:\"";
    case HW_KEY_NODE: return "key must start with \"nodekey:\"";
    case HW_KEY_DISCO: return "key must start with \"discokey:\"";
    case HW_KEY_PRIVATE: return "key must start with \"privkey:\"";
    case HW_KEY_CHALLENGE: return "key must start with \"chalpub:\"";
    }
    return "unknown key type";
}

void hw_key_generate(uint8_t priv[HW_KEY_LEN])
{
    sodium_ready();
    randombytes_buf(priv, HW_KEY_LEN);
    /* Tailscale clamps machine, node and disco keys when it makes them, so a key we
     * generate is bit-for-bit what tailscaled would have stored. */
    priv[0] &= 248;
    priv[31] = (uint8_t)((priv[31] & 127) | 64);
}

void hw_key_public(const uint8_t priv[HW_KEY_LEN], uint8_t pub[HW_KEY_LEN])
{
    sodium_ready();
    crypto_scalarmult_base(pub, priv);
}

bool hw_key_is_zero(const uint8_t key[HW_KEY_LEN])
{
    return sodium_is_zero(key, HW_KEY_LEN) == 1;
}

char *hw_key_format(enum hw_key_kind kind, const uint8_t key[HW_KEY_LEN], char out[HW_KEY_TEXT_MAX])
{
    const char *prefix = hw_key_prefix(kind);
    size_t plen = strlen(prefix);
    memcpy(out, prefix, plen);
    hw_hex_encode(key, HW_KEY_LEN, out + plen);
    return out;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hw_key_parse_n(enum hw_key_kind kind, const char *text, size_t len, uint8_t out[HW_KEY_LEN],
                   const char **why)
{
    const char *prefix = hw_key_prefix(kind);
    size_t plen = strlen(prefix);
    const char *reason = NULL;
    uint8_t tmp[HW_KEY_LEN];

    if (!text || len < plen || memcmp(text, prefix, plen) != 0) {
        reason = wrong_prefix_reason(kind);
    } else if (len - plen != 2 * HW_KEY_LEN) {
        reason = "key must have exactly 64 hex digits after its prefix";
    } else {
        const char *hex = text + plen;
        for (size_t i = 0; i < HW_KEY_LEN && !reason; i++) {
            int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
            if (hi < 0 || lo < 0)
                reason = "key has a character that is not a hex digit";
            else
                tmp[i] = (uint8_t)(hi << 4 | lo);
        }
    }
    if (reason) {
        sodium_memzero(tmp, sizeof tmp);
        if (why)
            *why = reason;
        return -1;
    }
    memcpy(out, tmp, HW_KEY_LEN);
    sodium_memzero(tmp, sizeof tmp);
    return 0;
}

int hw_key_parse(enum hw_key_kind kind, const char *text, uint8_t out[HW_KEY_LEN], const char **why)
{
    return hw_key_parse_n(kind, text, text ? strlen(text) : 0, out, why);
}

int hw_key_dh(const uint8_t priv[HW_KEY_LEN], const uint8_t pub[HW_KEY_LEN], uint8_t shared[HW_KEY_LEN])
{
    sodium_ready();
    /* libsodium already returns -1 for an all-zero result; the explicit check keeps the
     * guarantee even if that ever changes, since a zero secret means a peer chose a
     * low-order point to force a known key. */
    if (crypto_scalarmult(shared, priv, pub) != 0 || sodium_is_zero(shared, HW_KEY_LEN)) {
        sodium_memzero(shared, HW_KEY_LEN);
        return -1;
    }
    return 0;
}

/* ---- private key files ---- */

int hw_key_load_private(const char *path, uint8_t priv[HW_KEY_LEN], char *err, size_t err_len)
{
    size_t len = 0;
    char *text = hw_read_file(path, &len);
    if (!text) {
        snprintf(err, err_len, "cannot read private key %s: %s", path, strerror(errno));
        return -1;
    }
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ' ||
                       text[len - 1] == '\t'))
        len--;
    const char *why = NULL;
    int rc = hw_key_parse_n(HW_KEY_PRIVATE, text, len, priv, &why);
    sodium_memzero(text, len);
    free(text);
    if (rc < 0) {
        snprintf(err, err_len, "%s is not a private key file (want \"privkey:\" and 64 hex digits): %s",
                 path, why);
        return -1;
    }
    if (hw_key_is_zero(priv)) {
        snprintf(err, err_len, "%s holds the all-zero private key", path);
        return -1;
    }
    return 0;
}

int hw_key_save_private(const char *path, const uint8_t priv[HW_KEY_LEN], char *err, size_t err_len)
{
    char text[HW_KEY_TEXT_MAX + 1];
    hw_key_format(HW_KEY_PRIVATE, priv, text);
    size_t len = strlen(text);
    text[len++] = '\n';
    int rc = hw_write_file_atomic(path, text, len, 0600);
    int saved = errno;
    sodium_memzero(text, sizeof text);
    if (rc < 0) {
        snprintf(err, err_len, "cannot write private key %s: %s", path, strerror(saved));
        return -1;
    }
    return 0;
}

int hw_key_load_or_create_private(const char *path, uint8_t priv[HW_KEY_LEN], char *err,
                                  size_t err_len)
{
    if (access(path, F_OK) == 0 || errno != ENOENT)
        return hw_key_load_private(path, priv, err, err_len);
    char *dir = hw_dirname(path);
    int rc = hw_mkdir_p(dir, 0700);
    int saved = errno;
    if (rc < 0) {
        snprintf(err, err_len, "cannot create directory %s for private key: %s", dir, strerror(saved));
        free(dir);
        return -1;
    }
    free(dir);
    hw_key_generate(priv);
    if (hw_key_save_private(path, priv, err, err_len) < 0) {
        sodium_memzero(priv, HW_KEY_LEN);
        return -1;
    }
    return 1;
}

/* ---- NaCl box ---- */

static const uint8_t *pick_nonce(uint8_t *out, const uint8_t *nonce)
{
    if (nonce)
        memmove(out, nonce, HW_BOX_NONCE_LEN);
    else {
        sodium_ready();
        randombytes_buf(out, HW_BOX_NONCE_LEN);
    }
    return out;
}

int hw_box_seal(uint8_t *out, const uint8_t *msg, size_t len, const uint8_t *nonce,
                const uint8_t peer_pub[HW_KEY_LEN], const uint8_t my_priv[HW_KEY_LEN])
{
    uint8_t shared[crypto_box_BEFORENMBYTES];
    if (hw_box_shared(shared, peer_pub, my_priv) < 0)
        return -1;
    int rc = hw_box_seal_shared(out, msg, len, nonce, shared);
    sodium_memzero(shared, sizeof shared);
    return rc;
}

int hw_box_open(uint8_t *out, const uint8_t *sealed, size_t sealed_len,
                const uint8_t peer_pub[HW_KEY_LEN], const uint8_t my_priv[HW_KEY_LEN])
{
    uint8_t shared[crypto_box_BEFORENMBYTES];
    if (sealed_len < HW_BOX_OVERHEAD || hw_box_shared(shared, peer_pub, my_priv) < 0)
        return -1;
    int rc = hw_box_open_shared(out, sealed, sealed_len, shared);
    sodium_memzero(shared, sizeof shared);
    return rc;
}

int hw_box_shared(uint8_t shared[HW_KEY_LEN], const uint8_t peer_pub[HW_KEY_LEN],
                  const uint8_t my_priv[HW_KEY_LEN])
{
    sodium_ready();
    return crypto_box_beforenm(shared, peer_pub, my_priv) == 0 ? 0 : -1;
}

int hw_box_seal_shared(uint8_t *out, const uint8_t *msg, size_t len, const uint8_t *nonce,
                       const uint8_t shared[HW_KEY_LEN])
{
    const uint8_t *n = pick_nonce(out, nonce);
    return crypto_box_easy_afternm(out + HW_BOX_NONCE_LEN, msg, len, n, shared) == 0 ? 0 : -1;
}

int hw_box_open_shared(uint8_t *out, const uint8_t *sealed, size_t sealed_len,
                       const uint8_t shared[HW_KEY_LEN])
{
    if (sealed_len < HW_BOX_OVERHEAD)
        return -1;
    return crypto_box_open_easy_afternm(out, sealed + HW_BOX_NONCE_LEN, sealed_len - HW_BOX_NONCE_LEN,
                                        sealed, shared) == 0 ? 0 : -1;
}
