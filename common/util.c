#include "common/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int hw_parse_duration_ms(const char *text, int64_t *out_ms)
{
    static const struct { const char *unit; int64_t ms; } units[] = {
        {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000},
    };
    const char *p = text;
    int64_t total = 0;
    if (!p || !*p)
        return -1;
    if (strcmp(p, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    while (*p) {
        if (!isdigit((unsigned char)*p))
            return -1;
        int64_t value = 0;
        while (isdigit((unsigned char)*p)) {
            if (value > INT64_MAX / 10 - 10)
                return -1;
            value = value * 10 + (*p++ - '0');
        }
        size_t best = 0;
        int64_t scale = -1;
        for (size_t i = 0; i < HW_ARRAY_LEN(units); i++) {
            size_t n = strlen(units[i].unit);
            if (strncmp(p, units[i].unit, n) == 0 && n > best) {
                /* "m" must not swallow the "m" of "ms". */
                best = n;
                scale = units[i].ms;
            }
        }
        if (scale < 0)
            return -1;
        if (value > (INT64_MAX - total) / scale)
            return -1;
        total += value * scale;
        p += best;
    }
    *out_ms = total;
    return 0;
}

void hw_format_duration_ms(int64_t ms, char *out, size_t out_len)
{
    if (ms == 0) {
        snprintf(out, out_len, "0s");
        return;
    }
    int64_t s = ms / 1000, rem_ms = ms % 1000;
    int64_t d = s / 86400, h = (s % 86400) / 3600, m = (s % 3600) / 60, sec = s % 60;
    size_t used = 0;
    out[0] = '\0';
#define PART(v, u) \
    if ((v) && used < out_len) used += snprintf(out + used, out_len - used, "%lld%s", (long long)(v), u)
    PART(d, "d");
    PART(h, "h");
    PART(m, "m");
    PART(sec, "s");
    PART(rem_ms, "ms");
#undef PART
}

void hw_format_time(int64_t unix_seconds, char *out, size_t out_len)
{
    if (unix_seconds == 0) {
        snprintf(out, out_len, "-");
        return;
    }
    time_t t = (time_t)unix_seconds;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, out_len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int64_t hw_now(void) { return (int64_t)time(NULL); }

int64_t hw_now_ms_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *hw_read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = hw_malloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = grown;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
    return buf;
}

int hw_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    char *tmp = hw_sprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        free(tmp);
        return -1;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        p += n;
        left -= (size_t)n;
    }
    if (fchmod(fd, mode) < 0 || fsync(fd) < 0)
        goto fail;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0)
        goto fail;
    free(tmp);
    return 0;
fail: {
    int saved = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    errno = saved;
    return -1;
}
}

int hw_mkdir_p(const char *path, unsigned mode)
{
    char *copy = hw_strdup(path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, mode) < 0 && errno != EEXIST) {
            free(copy);
            return -1;
        }
        *p = '/';
    }
    int rc = mkdir(copy, mode);
    free(copy);
    if (rc < 0 && errno != EEXIST)
        return -1;
    return 0;
}

char *hw_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return hw_strdup(".");
    if (slash == path)
        return hw_strdup("/");
    char *out = hw_malloc((size_t)(slash - path) + 1);
    memcpy(out, path, (size_t)(slash - path));
    out[slash - path] = '\0';
    return out;
}

void hw_hex_encode(const uint8_t *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hw_hex_decode(const char *hex, uint8_t *out, size_t out_cap)
{
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > out_cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (int)(n / 2);
}

const char *hw_dns_label_problem(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return "must not be empty";
    if (n > 63)
        return "must be at most 63 characters";
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return "may contain only lowercase letters a-z, digits and '-'";
    }
    if (name[0] == '-' || name[n - 1] == '-')
        return "must not start or end with '-'";
    return NULL;
}

static void out_of_memory(void)
{
    fputs("headwater: out of memory\n", stderr);
    abort();
}

void *hw_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory();
    return p;
}

void *hw_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

void hw_grow_to_index(void **arr, size_t *cap, size_t index, size_t elem, size_t first)
{
    if (index < *cap)
        return;
    size_t n = *cap ? *cap : first;
    while (n <= index)
        n *= 2;
    uint8_t *grown = realloc(*arr, n * elem);
    if (!grown)
        out_of_memory();
    memset(grown + *cap * elem, 0, (n - *cap) * elem);
    *arr = grown;
    *cap = n;
}

char *hw_strdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p)
        out_of_memory();
    return p;
}

char *hw_sprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        out_of_memory();
    return out;
}
