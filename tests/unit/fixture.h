#ifndef HW_TESTS_FIXTURE_H
#define HW_TESTS_FIXTURE_H

/* Reading the JSON files of shared/fixtures in unit tests: load a file once, pull
 * strings out, decode hex into caller buffers (no allocation, so a failed CHECK leaks
 * nothing). */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/util.h"
#include "tests/unit/testlib.h"

/* NULL when the file is missing or unreadable; path_out gets the full path for SKIP. */
static inline json_t *fx_load(const char *name, char *path_out, size_t path_len)
{
    snprintf(path_out, path_len, "%s/%s", tl_fixtures_dir(), name);
    json_error_t err;
    return json_load_file(path_out, 0, &err);
}

/* A string member, "" when absent or not a string. */
static inline const char *fx_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

/* Decodes hex into out; returns the length, or -1 if it does not fit or is not hex. */
static inline long fx_hex(const char *hex, uint8_t *out, size_t cap)
{
    return hw_hex_decode(hex, out, cap);
}

/* A 32-byte key given as raw hex or as "<prefix>:<hex>". */
static inline int fx_key(const char *text, uint8_t out[32])
{
    const char *colon = strchr(text, ':');
    return hw_hex_decode(colon ? colon + 1 : text, out, 32) == 32 ? 0 : -1;
}

#define CHECK_MEM(got, want, len)                                                      \
    do {                                                                               \
        const uint8_t *fx_g = (const uint8_t *)(got), *fx_w = (const uint8_t *)(want); \
        size_t fx_n = (len), fx_i = 0;                                                 \
        while (fx_i < fx_n && fx_g[fx_i] == fx_w[fx_i])                                \
            fx_i++;                                                                    \
        CHECK(fx_i == fx_n, "bytes differ at offset %zu of %zu", fx_i, fx_n);          \
    } while (0)

/* The same for tests that treat a missing fixture as a broken checkout: they exit. */
static inline json_t *fxj_load(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", tl_fixtures_dir(), name);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) {
        fprintf(stderr, "cannot load fixture %s: %s\n", path, je.text);
        exit(2);
    }
    return j;
}

/* Hex string member -> malloc'd bytes (NULL if absent or not hex). */
static inline uint8_t *fxj_hex(const json_t *obj, const char *key, size_t *len)
{
    const char *hex = json_string_value(json_object_get(obj, key));
    *len = 0;
    if (!hex)
        return NULL;
    size_t n = strlen(hex) / 2;
    uint8_t *out = hw_malloc(n ? n : 1);
    if (hw_hex_decode(hex, out, n) != (int)n) {
        free(out);
        return NULL;
    }
    *len = n;
    return out;
}

static inline const char *fxj_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

#endif
