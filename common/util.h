#ifndef HW_COMMON_UTIL_H
#define HW_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define HW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Go-style durations as Headscale's config uses them: "30m", "24h", "1h30m", "10s",
 * "500ms", "90d" (days, which Go lacks but Headscale's CLI accepts), bare "0".
 * Result in milliseconds. Returns -1 on a malformed string. */
int hw_parse_duration_ms(const char *text, int64_t *out_ms);
/* The inverse for printing: "24h0m0s" style is ugly, so "24h", "1h30m", "45s", "0s". */
void hw_format_duration_ms(int64_t ms, char *out, size_t out_len);

/* RFC 3339 UTC, second precision: "2026-11-25T19:45:00Z". 0 prints as "-" for tables. */
void hw_format_time(int64_t unix_seconds, char *out, size_t out_len);
int64_t hw_now(void);          /* unix seconds */
int64_t hw_now_ms_mono(void);  /* monotonic milliseconds, for timeouts */

/* Whole-file helpers. read returns a NUL-terminated malloc'd buffer (len excludes NUL). */
char *hw_read_file(const char *path, size_t *len_out);
/* Writes via a temp file + fsync + rename, so a crash never leaves a half-written file. */
int hw_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* mkdir -p with the given mode for directories it creates. */
int hw_mkdir_p(const char *path, unsigned mode);
/* Directory part of path (malloc'd); "." when there is none. */
char *hw_dirname(const char *path);

/* Lowercase hex. hex_decode returns bytes written or -1 (odd length, bad digit, too long). */
void hw_hex_encode(const uint8_t *in, size_t len, char *out /* 2*len+1 */);
int hw_hex_decode(const char *hex, uint8_t *out, size_t out_cap);

/* DNS label rules (RFC 1123): 1..63 chars of [a-z0-9-], not starting or ending with '-'.
 * Returns NULL when valid, otherwise a short reason suitable for an error message. */
const char *hw_dns_label_problem(const char *name);

/* strdup that aborts on out-of-memory: allocation failure is not a recoverable state here. */
char *hw_strdup(const char *s);
void *hw_malloc(size_t n);
void *hw_calloc(size_t n, size_t size);
char *hw_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Grows *arr (of *cap elements of elem bytes, new ones zeroed) by doubling from first
 * until index is inside; aborts on out-of-memory. For tables indexed by id or fd. */
void hw_grow_to_index(void **arr, size_t *cap, size_t index, size_t elem, size_t first);

#endif
