#include "server/keyfile.h"

#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"

#define KEY_PREFIX "privkey:"

int hw_keyfile_parse(const char *text, uint8_t priv[32], char *err, size_t err_len)
{
    const char *start = text;
    while (isspace((unsigned char)*start))
        start++;
    size_t len = strlen(start);
    while (len > 0 && isspace((unsigned char)start[len - 1]))
        len--;
    if (len == 0) {
        snprintf(err, err_len, "is empty (expected \"" KEY_PREFIX "\" and 64 hex digits)");
        return -1;
    }
    size_t plen = strlen(KEY_PREFIX);
    if (len < plen || strncmp(start, KEY_PREFIX, plen) != 0) {
        snprintf(err, err_len, "does not start with \"" KEY_PREFIX "\" (expected \"" KEY_PREFIX
                 "\" and 64 hex digits)");
        return -1;
    }
    if (len - plen != 64) {
        snprintf(err, err_len, "has %zu characters after \"" KEY_PREFIX "\", expected 64 hex digits",
                 len - plen);
        return -1;
    }
    char hex[65];
    memcpy(hex, start + plen, 64);
    hex[64] = '\0';
    if (hw_hex_decode(hex, priv, 32) != 32) {
        snprintf(err, err_len, "has a character that is not a hex digit after \"" KEY_PREFIX "\"");
        return -1;
    }
    static const uint8_t zero[32];
    if (sodium_memcmp(priv, zero, 32) == 0) {
        snprintf(err, err_len, "holds the all-zero key, which is no key");
        return -1;
    }
    return 0;
}

static void generate(uint8_t priv[32])
{
    randombytes_buf(priv, 32);
    /* Clamped at creation like every Tailscale key, so the stored bytes are the scalar
     * X25519 really uses and match what Go's key package would write. */
    priv[0] &= 248;
    priv[31] = (uint8_t)((priv[31] & 127) | 64);
}

int hw_keyfile_load_or_create(const char *path, uint8_t priv[32], uint8_t pub[32],
                              bool *created, char *err, size_t err_len)
{
    if (sodium_init() < 0) {
        snprintf(err, err_len, "libsodium failed to initialise");
        return -1;
    }
    *created = false;
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            snprintf(err, err_len, "noise private key %s is not a regular file", path);
            return -1;
        }
        size_t len;
        char *text = hw_read_file(path, &len);
        if (!text) {
            snprintf(err, err_len, "cannot read noise private key %s: %s", path, strerror(errno));
            return -1;
        }
        char why[160];
        int rc = hw_keyfile_parse(text, priv, why, sizeof why);
        sodium_memzero(text, len);
        free(text);
        if (rc < 0) {
            snprintf(err, err_len, "noise private key %s %s; fix or remove the file "
                     "(a new key makes every client re-fetch /key)", path, why);
            return -1;
        }
        if (st.st_mode & 077)
            log_warn("noise private key %s is readable by others (mode %04o): chmod 600 it",
                     path, (unsigned)(st.st_mode & 07777));
    } else if (errno == ENOENT) {
        generate(priv);
        char text[sizeof KEY_PREFIX + 64 + 1];
        memcpy(text, KEY_PREFIX, strlen(KEY_PREFIX));
        hw_hex_encode(priv, 32, text + strlen(KEY_PREFIX));
        size_t len = strlen(text);
        text[len++] = '\n';
        int rc = hw_write_file_atomic(path, text, len, 0600);
        int saved = errno;
        sodium_memzero(text, sizeof text);
        if (rc < 0) {
            snprintf(err, err_len, "cannot create noise private key %s: %s", path, strerror(saved));
            return -1;
        }
        *created = true;
    } else {
        snprintf(err, err_len, "cannot read noise private key %s: %s", path, strerror(errno));
        return -1;
    }
    if (crypto_scalarmult_base(pub, priv) != 0) {
        snprintf(err, err_len, "noise private key %s does not give a usable public key", path);
        return -1;
    }
    return 0;
}
