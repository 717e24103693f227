#ifndef HW_TESTS_FIXTURE_H
#define HW_TESTS_FIXTURE_H

/* Reading the JSON files of shared/fixtures from unit tests: the whole file as jansson, and hex
 * strings as bytes. Both abort the test binary on a missing file, since a missing
 * fixture is a broken checkout rather than a test result. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/util.h"
#include "tests/unit/testlib.h"

static inline json_t *fx_load(const char *name)
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
static inline uint8_t *fx_hex(const json_t *obj, const char *key, size_t *len)
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

static inline const char *fx_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

#endif
