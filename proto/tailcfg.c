#include "proto/tailcfg.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/sbuf.h"
#include "common/util.h"

/* ---- errors ------------------------------------------------------------------------- */

/* Parse context: where errors go and which struct is being read, so every message
 * names the field the way the Go source does ("MapRequest.Hostinfo.Hostname"). */
struct pc {
    char *err;
    size_t errlen;
    const char *ctx;
};

__attribute__((format(printf, 3, 4))) static int fail(struct pc *p, const char *field,
                                                      const char *fmt, ...)
{
    if (!p->err || !p->errlen)
        return -1;
    int n = field ? snprintf(p->err, p->errlen, "%s.%s: ", p->ctx, field)
                  : snprintf(p->err, p->errlen, "%s: ", p->ctx);
    if (n < 0 || (size_t)n >= p->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- string vectors ----------------------------------------------------------------- */

void tc_strv_push(struct tc_strv *s, const char *str)
{
    char **v = realloc(s->v, (s->n + 1) * sizeof(*v));
    if (!v)
        abort();
    s->v = v;
    s->v[s->n++] = hw_strdup(str);
}

void tc_strv_clear(struct tc_strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

void tc_strv_copy(struct tc_strv *dst, const struct tc_strv *src)
{
    memset(dst, 0, sizeof(*dst));
    for (size_t i = 0; i < src->n; i++)
        tc_strv_push(dst, src->v[i]);
}

bool tc_strv_equal(const struct tc_strv *a, const struct tc_strv *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    return true;
}

static char *dup_or_null(const char *s) { return s ? hw_strdup(s) : NULL; }

/* ---- keys ----------------------------------------------------------------------------- */

int tc_key_parse(const char *text, const char *prefix, uint8_t out[32])
{
    size_t pl = strlen(prefix);
    if (!text || strncmp(text, prefix, pl) != 0 || text[pl] != ':')
        return -1;
    const char *hex = text + pl + 1;
    if (strlen(hex) != 64)
        return -1;
    return hw_hex_decode(hex, out, 32) == 32 ? 0 : -1;
}

void tc_key_format(const char *prefix, const uint8_t key[32], char out[TC_KEY_TEXT_MAX])
{
    char hex[65];
    hw_hex_encode(key, 32, hex);
    snprintf(out, TC_KEY_TEXT_MAX, "%s:%s", prefix, hex);
}

bool tc_key_is_zero(const uint8_t key[32])
{
    uint8_t acc = 0;
    for (int i = 0; i < 32; i++)
        acc |= key[i];
    return acc == 0;
}

/* ---- time ----------------------------------------------------------------------------- */

/* Proleptic Gregorian calendar arithmetic (H. Hinnant's algorithms), so year 1 and
 * every other year work without depending on the C library's time_t range. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* Go's zero time.Time, 0001-01-01T00:00:00Z, in unix seconds. */
#define GO_ZERO_TIME_SEC (-62135596800LL)

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int tc_time_parse(const char *s, struct tc_time *out)
{
    int y, mo, d, h, mi, se;
    memset(out, 0, sizeof(*out));
    if (!s || strlen(s) < 20)
        return -1;
    if (digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
        digits(s + 8, 2, &d) || s[10] != 'T' || digits(s + 11, 2, &h) || s[13] != ':' ||
        digits(s + 14, 2, &mi) || s[16] != ':' || digits(s + 17, 2, &se))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 59)
        return -1;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap))
        return -1;
    const char *p = s + 19;
    uint32_t nsec = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd < 9)
                nsec = nsec * 10 + (uint32_t)(*p - '0');
            nd++;
            p++;
        }
        if (nd == 0)
            return -1;
        for (int i = nd; i < 9; i++)
            nsec *= 10;
    }
    int64_t offset = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset = (int64_t)(oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p)
        return -1;
    int64_t sec = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
                  se - offset;
    if (sec == GO_ZERO_TIME_SEC && nsec == 0)
        return 0; /* Go's zero time: "not set" */
    out->sec = sec;
    out->nsec = nsec;
    out->set = true;
    return 0;
}

void tc_time_format(const struct tc_time *t, char out[TC_TIME_TEXT_MAX])
{
    int64_t sec = t->set ? t->sec : GO_ZERO_TIME_SEC;
    uint32_t nsec = t->set ? t->nsec : 0;
    int64_t days = sec >= 0 ? sec / 86400 : -((-sec + 86399) / 86400);
    int64_t rem = sec - days * 86400;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int n = snprintf(out, TC_TIME_TEXT_MAX, "%04lld-%02u-%02uT%02d:%02d:%02d", (long long)y, m,
                     d, (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60));
    if (nsec && n > 0 && n < TC_TIME_TEXT_MAX - 12) {
        char frac[16];
        snprintf(frac, sizeof frac, ".%09u", nsec);
        size_t fl = strlen(frac);
        while (fl > 1 && frac[fl - 1] == '0')
            frac[--fl] = '\0';
        memcpy(out + n, frac, fl + 1);
        n += (int)fl;
    }
    if (n > 0 && n < TC_TIME_TEXT_MAX - 1) {
        out[n] = 'Z';
        out[n + 1] = '\0';
    }
}

struct tc_time tc_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (struct tc_time){.sec = ts.tv_sec, .nsec = (uint32_t)ts.tv_nsec, .set = true};
}

struct tc_time tc_time_from_unix(int64_t sec)
{
    return (struct tc_time){.sec = sec, .nsec = 0, .set = true};
}

int tc_time_cmp(const struct tc_time *a, const struct tc_time *b)
{
    int64_t as = a->set ? a->sec : GO_ZERO_TIME_SEC, bs = b->set ? b->sec : GO_ZERO_TIME_SEC;
    uint32_t an = a->set ? a->nsec : 0, bn = b->set ? b->nsec : 0;
    if (as != bs)
        return as < bs ? -1 : 1;
    if (an != bn)
        return an < bn ? -1 : 1;
    return 0;
}

static json_t *time_json(const struct tc_time *t)
{
    char buf[TC_TIME_TEXT_MAX];
    tc_time_format(t, buf);
    return json_string(buf);
}

/* ---- addresses ------------------------------------------------------------------------ */

static bool parse_ip(const char *s, size_t len, int *family)
{
    char buf[INET6_ADDRSTRLEN + 1];
    unsigned char bin[16];
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, bin) == 1) {
        *family = AF_INET;
        return true;
    }
    char *zone = strchr(buf, '%'); /* fe80::1%eth0: Go keeps zones on link-local addrs */
    if (zone) {
        if (!zone[1])
            return false;
        *zone = '\0';
    }
    if (inet_pton(AF_INET6, buf, bin) == 1) {
        *family = AF_INET6;
        return true;
    }
    return false;
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    if (!*s || strlen(s) > 5)
        return false;
    unsigned long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned long)(*s - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

bool tc_valid_prefix(const char *text)
{
    const char *slash = text ? strchr(text, '/') : NULL;
    int family;
    unsigned long bits;
    if (!slash || strchr(text, '%') || !parse_ip(text, (size_t)(slash - text), &family))
        return false;
    return parse_uint(slash + 1, family == AF_INET ? 32 : 128, &bits);
}

bool tc_valid_addrport(const char *text)
{
    int family;
    unsigned long port;
    if (!text)
        return false;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':' || !parse_ip(text + 1, (size_t)(close - text - 1), &family) ||
            family != AF_INET6)
            return false;
        return parse_uint(close + 2, 65535, &port);
    }
    const char *colon = strrchr(text, ':');
    if (!colon || !parse_ip(text, (size_t)(colon - text), &family) || family != AF_INET)
        return false;
    return parse_uint(colon + 1, 65535, &port);
}

/* ---- JSON loading ----------------------------------------------------------------------- */

/* jansson's own limit is 2048 levels of recursion; a peer has no business nesting
 * deeper than a handful, so refuse early and cheaply. */
static bool depth_within(const uint8_t *d, size_t n, int max)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = d[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                return false;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return true;
}

json_t *tc_json_load(const uint8_t *data, size_t len, size_t max_len, const char *what, char *err,
                     size_t errlen)
{
    struct pc p = {err, errlen, what};
    if (len > max_len) {
        fail(&p, NULL, "body of %zu bytes exceeds the %zu-byte limit", len, max_len);
        return NULL;
    }
    if (!data || len == 0) {
        fail(&p, NULL, "empty body");
        return NULL;
    }
    if (!depth_within(data, len, TC_MAX_DEPTH)) {
        fail(&p, NULL, "JSON nested deeper than %d levels", TC_MAX_DEPTH);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)data, len, 0, &je);
    if (!root) {
        fail(&p, NULL, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        fail(&p, NULL, "expected a JSON object");
        return NULL;
    }
    return root;
}

char *tc_json_dump(const json_t *j, size_t *len_out)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        abort(); /* only fails on allocation failure or invalid UTF-8 we never produce */
    if (len_out)
        *len_out = strlen(s);
    return s;
}

/* ---- typed field readers -----------------------------------------------------------------
 * Each returns 0 when the field is absent or null (Go leaves the zero value), 1 when
 * present and well-typed, -1 (with err) when present with the wrong type. */

/* What every reader shares; `types` is a mask of (1u << JSON_...) bits, since booleans
 * and numbers are two jansson types each. */
static int get_typed(struct pc *p, const json_t *obj, const char *name, unsigned types,
                     const char *expected, json_t **out)
{
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!(types & 1u << json_typeof(v)))
        return fail(p, name, "expected %s", expected);
    *out = v;
    return 1;
}

static int get_str(struct pc *p, const json_t *obj, const char *name, const char **out)
{
    json_t *v;
    int r = get_typed(p, obj, name, 1u << JSON_STRING, "a string", &v);
    *out = r == 1 ? json_string_value(v) : NULL;
    return r;
}

/* Go strings have no null: absent reads as "". */
static int get_str_or_empty(struct pc *p, const json_t *obj, const char *name, const char **out)
{
    int r = get_str(p, obj, name, out);
    if (!*out)
        *out = "";
    return r;
}

static int get_int(struct pc *p, const json_t *obj, const char *name, int64_t min, int64_t max,
                   int64_t *out)
{
    json_t *v;
    *out = 0;
    int r = get_typed(p, obj, name, 1u << JSON_INTEGER, "an integer", &v);
    if (r <= 0)
        return r;
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return fail(p, name, "%lld out of range [%lld, %lld]", (long long)i, (long long)min,
                    (long long)max);
    *out = i;
    return 1;
}

static int get_int32_from(struct pc *p, const json_t *obj, const char *name, int64_t min,
                          int *out)
{
    int64_t v;
    int r = get_int(p, obj, name, min, INT32_MAX, &v);
    *out = (int)v;
    return r;
}

static int get_int32(struct pc *p, const json_t *obj, const char *name, int *out)
{
    return get_int32_from(p, obj, name, INT32_MIN, out);
}

static int get_bool(struct pc *p, const json_t *obj, const char *name, bool *out)
{
    json_t *v;
    int r = get_typed(p, obj, name, 1u << JSON_TRUE | 1u << JSON_FALSE, "true or false", &v);
    *out = r == 1 && json_is_true(v);
    return r;
}

static int get_optbool(struct pc *p, const json_t *obj, const char *name, enum tc_optbool *out)
{
    bool b;
    int r = get_bool(p, obj, name, &b);
    *out = r == 1 ? (b ? TC_TRUE : TC_FALSE) : TC_UNSET;
    return r;
}

static int get_key(struct pc *p, const json_t *obj, const char *name, const char *prefix,
                   uint8_t out[32], bool required)
{
    const char *s;
    memset(out, 0, 32);
    int r = get_str(p, obj, name, &s);
    if (r < 0)
        return r;
    if (r == 0) {
        if (required)
            return fail(p, name, "missing (expected %s:<64 hex>)", prefix);
        return 0;
    }
    if (tc_key_parse(s, prefix, out) < 0)
        return fail(p, name, "expected %s:<64 hex>", prefix);
    return 1;
}

static int get_time(struct pc *p, const json_t *obj, const char *name, struct tc_time *out)
{
    const char *s;
    memset(out, 0, sizeof(*out));
    int r = get_str(p, obj, name, &s);
    if (r <= 0)
        return r;
    if (tc_time_parse(s, out) < 0)
        return fail(p, name, "expected an RFC 3339 time, got \"%.40s\"", s);
    return 1;
}

typedef bool (*str_check)(const char *);

/* Borrowed string array (pointers into obj), for request structs that keep their root. */
static int get_str_array(struct pc *p, const json_t *obj, const char *name, str_check check,
                         const char *what, const char ***out, size_t *n_out)
{
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    *n_out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return fail(p, name, "expected an array of %s", what);
    size_t n = json_array_size(v);
    const char **arr = n ? hw_calloc(n, sizeof(*arr)) : NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e) || (check && !check(json_string_value(e)))) {
            free(arr);
            return fail(p, name, "element %zu: expected %s", i, what);
        }
        arr[i] = json_string_value(e);
    }
    *out = arr;
    *n_out = n;
    return 1;
}

/* Owned copy, for structs that outlive the message (nodes in a netmap). */
static int get_strv(struct pc *p, const json_t *obj, const char *name, str_check check,
                    const char *what, struct tc_strv *out)
{
    const char **arr;
    size_t n;
    memset(out, 0, sizeof(*out));
    int r = get_str_array(p, obj, name, check, what, &arr, &n);
    if (r <= 0)
        return r;
    for (size_t i = 0; i < n; i++)
        tc_strv_push(out, arr[i]);
    free(arr);
    return 1;
}

static int get_object(struct pc *p, const json_t *obj, const char *name, json_t **out)
{
    return get_typed(p, obj, name, 1u << JSON_OBJECT, "an object", out);
}

static int get_array(struct pc *p, const json_t *obj, const char *name, json_t **out)
{
    return get_typed(p, obj, name, 1u << JSON_ARRAY, "an array", out);
}

static bool any_str(const char *s) { return s != NULL; }

/* ---- JSON writers (Go omission rules) ------------------------------------------------- */

static void set_new(json_t *o, const char *k, json_t *v)
{
    if (!v || json_object_set_new(o, k, v) != 0)
        abort();
}
static void set_str(json_t *o, const char *k, const char *v) { set_new(o, k, json_string(v ? v : "")); }
static void set_str_omit(json_t *o, const char *k, const char *v)
{
    if (v && *v)
        set_str(o, k, v);
}
static void set_int(json_t *o, const char *k, int64_t v) { set_new(o, k, json_integer(v)); }
static void set_int_omit(json_t *o, const char *k, int64_t v)
{
    if (v)
        set_int(o, k, v);
}
static void set_bool(json_t *o, const char *k, bool v) { set_new(o, k, json_boolean(v)); }
static void set_bool_omit(json_t *o, const char *k, bool v)
{
    if (v)
        set_bool(o, k, true);
}
static void set_key(json_t *o, const char *k, const char *prefix, const uint8_t key[32])
{
    char buf[TC_KEY_TEXT_MAX];
    tc_key_format(prefix, key, buf);
    set_str(o, k, buf);
}
static void set_key_omit(json_t *o, const char *k, const char *prefix, const uint8_t key[32])
{
    if (key && !tc_key_is_zero(key))
        set_key(o, k, prefix, key);
}
static void set_time_omit(json_t *o, const char *k, const struct tc_time *t)
{
    if (t->set)
        set_new(o, k, time_json(t));
}
static json_t *strv_json(const struct tc_strv *s)
{
    json_t *a = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(a, json_string(s->v[i]));
    return a;
}
static void set_strv_omit(json_t *o, const char *k, const struct tc_strv *s)
{
    if (s->n)
        set_new(o, k, strv_json(s));
}
static void set_ref_omit(json_t *o, const char *k, json_t *v)
{
    if (v && json_object_set(o, k, v) != 0)
        abort();
}
static json_t *ref_array(json_t *const *items, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        if (json_array_append(a, items[i]) != 0)
            abort();
    return a;
}

/* ---- Hostinfo ---------------------------------------------------------------------------- */

int tc_hostinfo_parse(json_t *obj, const char *ctx, struct tc_hostinfo *out, char *err,
                      size_t errlen)
{
    char cbuf[96];
    snprintf(cbuf, sizeof cbuf, "%s.Hostinfo", ctx);
    struct pc p = {err, errlen, cbuf};
    memset(out, 0, sizeof(*out));
    if (!obj || json_is_null(obj))
        return 0;
    if (!json_is_object(obj))
        return fail(&p, NULL, "expected an object");
    struct {
        const char *name;
        const char **dst;
    } strs[] = {
        {"Hostname", &out->hostname},        {"OS", &out->os},
        {"OSVersion", &out->os_version},     {"IPNVersion", &out->ipn_version},
        {"BackendLogID", &out->backend_log_id}, {"GoArch", &out->go_arch},
        {"Machine", &out->machine},          {"Distro", &out->distro},
        {"DistroVersion", &out->distro_version}, {"DeviceModel", &out->device_model},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(strs); i++)
        if (get_str(&p, obj, strs[i].name, strs[i].dst) < 0)
            goto bad;
    if (get_bool(&p, obj, "ShieldsUp", &out->shields_up) < 0)
        goto bad;
    if (get_str_array(&p, obj, "RoutableIPs", tc_valid_prefix, "an IP prefix like 10.0.0.0/24",
                      &out->routable_ips, &out->n_routable_ips) < 0)
        goto bad;
    if (get_str_array(&p, obj, "RequestTags", any_str, "a string", &out->request_tags,
                      &out->n_request_tags) < 0)
        goto bad;
    json_t *ni;
    if (get_object(&p, obj, "NetInfo", &ni) < 0)
        goto bad;
    if (ni) {
        struct pc np = {err, errlen, "Hostinfo.NetInfo"};
        char nbuf[112];
        snprintf(nbuf, sizeof nbuf, "%s.NetInfo", cbuf);
        np.ctx = nbuf;
        if (get_int32(&np, ni, "PreferredDERP", &out->preferred_derp) < 0)
            goto bad;
        if (out->preferred_derp < 0) {
            fail(&np, "PreferredDERP", "negative region id");
            goto bad;
        }
    }
    out->raw = json_incref(obj);
    return 1;
bad:
    tc_hostinfo_clear(out);
    return -1;
}

void tc_hostinfo_clear(struct tc_hostinfo *h)
{
    free(h->routable_ips);
    free(h->request_tags);
    json_decref(h->raw);
    memset(h, 0, sizeof(*h));
}

/* ---- RegisterRequest ------------------------------------------------------------------- */

int tc_register_request_parse(const uint8_t *body, size_t len, struct tc_register_request *out,
                              char *err, size_t errlen)
{
    struct pc p = {err, errlen, "RegisterRequest"};
    memset(out, 0, sizeof(*out));
    json_t *root = tc_json_load(body, len, TC_MAX_BODY, "RegisterRequest", err, errlen);
    if (!root)
        return -1;
    out->root = root;
    if (get_int32_from(&p, root, "Version", 0, &out->version) < 0)
        goto bad;
    if (get_key(&p, root, "NodeKey", "nodekey", out->node_key, true) < 0)
        goto bad;
    if (tc_key_is_zero(out->node_key)) {
        fail(&p, "NodeKey", "the zero key is not a node key");
        goto bad;
    }
    if (get_key(&p, root, "OldNodeKey", "nodekey", out->old_node_key, false) < 0)
        goto bad;
    const char *nl;
    if (get_str(&p, root, "NLKey", &nl) < 0)
        goto bad;
    if (nl && *nl) {
        uint8_t k[32];
        if (tc_key_parse(nl, "nlpub", k) < 0 && tc_key_parse(nl, "tlpub", k) < 0) {
            fail(&p, "NLKey", "expected nlpub:<64 hex>");
            goto bad;
        }
        snprintf(out->nl_key, sizeof out->nl_key, "%s", nl);
    }
    json_t *auth;
    if (get_object(&p, root, "Auth", &auth) < 0)
        goto bad;
    if (auth) {
        struct pc ap = {err, errlen, "RegisterRequest.Auth"};
        out->has_auth = true;
        if (get_str(&ap, auth, "AuthKey", &out->auth_key) < 0 ||
            get_str(&ap, auth, "Provider", &out->auth_provider) < 0 ||
            get_str(&ap, auth, "LoginName", &out->auth_login_name) < 0)
            goto bad;
        if (out->auth_key && strlen(out->auth_key) > 512) {
            fail(&ap, "AuthKey", "longer than 512 bytes");
            goto bad;
        }
    }
    if (get_time(&p, root, "Expiry", &out->expiry) < 0)
        goto bad;
    if (get_str_or_empty(&p, root, "Followup", &out->followup) < 0)
        goto bad;
    if (tc_hostinfo_parse(json_object_get(root, "Hostinfo"), "RegisterRequest", &out->hostinfo,
                          err, errlen) < 0)
        goto bad;
    if (get_bool(&p, root, "Ephemeral", &out->ephemeral) < 0)
        goto bad;
    if (get_str_or_empty(&p, root, "Tailnet", &out->tailnet) < 0)
        goto bad;
    /* NodeKeySignature, SignatureType, Timestamp, DeviceCert, Signature: tailnet lock
     * and device-cert signing, which this server does not offer; ignored. */
    return 0;
bad:
    tc_register_request_free(out);
    return -1;
}

void tc_register_request_free(struct tc_register_request *r)
{
    tc_hostinfo_clear(&r->hostinfo);
    json_decref(r->root);
    memset(r, 0, sizeof(*r));
}

json_t *tc_register_request_to_json(const struct tc_register_request_build *b)
{
    static const uint8_t zero[32];
    json_t *o = json_object();
    set_int(o, "Version", b->version);
    set_key(o, "NodeKey", "nodekey", b->node_key);
    set_key(o, "OldNodeKey", "nodekey", b->old_node_key ? b->old_node_key : zero);
    if (b->nl_key && *b->nl_key)
        set_str(o, "NLKey", b->nl_key);
    else
        set_key(o, "NLKey", "nlpub", zero);
    if (b->auth_key) {
        json_t *a = json_object();
        set_str(a, "AuthKey", b->auth_key);
        set_new(o, "Auth", a);
    }
    set_new(o, "Expiry", time_json(&b->expiry));
    set_str(o, "Followup", b->followup ? b->followup : "");
    if (b->hostinfo)
        set_ref_omit(o, "Hostinfo", b->hostinfo);
    else
        set_new(o, "Hostinfo", json_null());
    set_bool_omit(o, "Ephemeral", b->ephemeral);
    set_new(o, "NodeKeySignature", json_null());
    return o;
}

/* ---- RegisterResponse ------------------------------------------------------------------ */

json_t *tc_register_response_to_json(const struct tc_register_response *r)
{
    json_t *o = json_object();
    json_t *u = json_object();
    set_int(u, "ID", r->user_id);
    set_str(u, "DisplayName", r->user_display_name);
    set_str_omit(u, "ProfilePicURL", r->user_profile_pic_url);
    set_time_omit(u, "Created", &r->user_created);
    set_new(o, "User", u);
    json_t *l = json_object();
    set_int(l, "ID", r->login_id);
    set_str(l, "Provider", r->login_provider);
    set_str(l, "LoginName", r->login_name);
    set_str(l, "DisplayName", r->login_display_name);
    set_str_omit(l, "ProfilePicURL", r->login_profile_pic_url);
    set_new(o, "Login", l);
    set_bool(o, "NodeKeyExpired", r->node_key_expired);
    set_bool(o, "MachineAuthorized", r->machine_authorized);
    set_str(o, "AuthURL", r->auth_url);
    set_new(o, "NodeKeySignature", json_null());
    set_str(o, "Error", r->error);
    return o;
}

int tc_register_response_parse(const uint8_t *body, size_t len, struct tc_register_response *out,
                               char *err, size_t errlen)
{
    struct pc p = {err, errlen, "RegisterResponse"};
    memset(out, 0, sizeof(*out));
    json_t *root = tc_json_load(body, len, TC_MAX_BODY, "RegisterResponse", err, errlen);
    if (!root)
        return -1;
    out->root = root;
    json_t *u, *l;
    if (get_object(&p, root, "User", &u) < 0 || get_object(&p, root, "Login", &l) < 0)
        goto bad;
    if (u) {
        struct pc up = {err, errlen, "RegisterResponse.User"};
        if (get_int(&up, u, "ID", INT64_MIN, INT64_MAX, &out->user_id) < 0 ||
            get_str(&up, u, "DisplayName", &out->user_display_name) < 0 ||
            get_str(&up, u, "ProfilePicURL", &out->user_profile_pic_url) < 0 ||
            get_time(&up, u, "Created", &out->user_created) < 0)
            goto bad;
    }
    if (l) {
        struct pc lp = {err, errlen, "RegisterResponse.Login"};
        if (get_int(&lp, l, "ID", INT64_MIN, INT64_MAX, &out->login_id) < 0 ||
            get_str(&lp, l, "Provider", &out->login_provider) < 0 ||
            get_str(&lp, l, "LoginName", &out->login_name) < 0 ||
            get_str(&lp, l, "DisplayName", &out->login_display_name) < 0 ||
            get_str(&lp, l, "ProfilePicURL", &out->login_profile_pic_url) < 0)
            goto bad;
    }
    if (get_bool(&p, root, "NodeKeyExpired", &out->node_key_expired) < 0 ||
        get_bool(&p, root, "MachineAuthorized", &out->machine_authorized) < 0 ||
        get_str_or_empty(&p, root, "AuthURL", &out->auth_url) < 0 ||
        get_str_or_empty(&p, root, "Error", &out->error) < 0)
        goto bad;
    return 0;
bad:
    tc_register_response_free(out);
    return -1;
}

void tc_register_response_free(struct tc_register_response *r)
{
    json_decref(r->root);
    memset(r, 0, sizeof(*r));
}

/* ---- MapRequest ---------------------------------------------------------------------- */

int tc_map_request_parse(const uint8_t *body, size_t len, struct tc_map_request *out, char *err,
                         size_t errlen)
{
    struct pc p = {err, errlen, "MapRequest"};
    memset(out, 0, sizeof(*out));
    json_t *root = tc_json_load(body, len, TC_MAX_BODY, "MapRequest", err, errlen);
    if (!root)
        return -1;
    out->root = root;
    if (get_int32_from(&p, root, "Version", 0, &out->version) < 0)
        goto bad;
    if (get_str_or_empty(&p, root, "Compress", &out->compress) < 0)
        goto bad;
    if (*out->compress && strcmp(out->compress, "zstd") != 0) {
        fail(&p, "Compress", "expected \"zstd\" or \"\", got \"%.20s\"", out->compress);
        goto bad;
    }
    if (get_bool(&p, root, "KeepAlive", &out->keep_alive) < 0 ||
        get_key(&p, root, "NodeKey", "nodekey", out->node_key, true) < 0 ||
        get_key(&p, root, "DiscoKey", "discokey", out->disco_key, false) < 0 ||
        get_bool(&p, root, "Stream", &out->stream) < 0 ||
        get_bool(&p, root, "OmitPeers", &out->omit_peers) < 0 ||
        get_bool(&p, root, "ReadOnly", &out->read_only) < 0)
        goto bad;
    if (tc_hostinfo_parse(json_object_get(root, "Hostinfo"), "MapRequest", &out->hostinfo, err,
                          errlen) < 0)
        goto bad;
    if (get_str_array(&p, root, "Endpoints", tc_valid_addrport, "an ip:port",
                      &out->endpoints, &out->n_endpoints) < 0)
        goto bad;
    json_t *types;
    if (get_array(&p, root, "EndpointTypes", &types) < 0)
        goto bad;
    if (types) {
        size_t n = json_array_size(types);
        out->endpoint_types = n ? hw_calloc(n, sizeof(int)) : NULL;
        out->n_endpoint_types = n;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(types, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > 255) {
                fail(&p, "EndpointTypes", "element %zu: expected a small integer", i);
                goto bad;
            }
            out->endpoint_types[i] = (int)json_integer_value(e);
        }
        /* The client builds both lists together; a mismatch means a broken sender. */
        if (n && n != out->n_endpoints) {
            fail(&p, "EndpointTypes", "%zu types for %zu endpoints", n, out->n_endpoints);
            goto bad;
        }
    }
    if (get_str_array(&p, root, "DebugFlags", any_str, "a string", &out->debug_flags,
                      &out->n_debug_flags) < 0 ||
        get_str(&p, root, "TKAHead", &out->tka_head) < 0 ||
        get_str(&p, root, "MapSessionHandle", &out->map_session_handle) < 0 ||
        get_int(&p, root, "MapSessionSeq", INT64_MIN, INT64_MAX, &out->map_session_seq) < 0 ||
        get_str(&p, root, "ConnectionHandleForTest", &out->connection_handle_for_test) < 0)
        goto bad;
    return 0;
bad:
    tc_map_request_free(out);
    return -1;
}

void tc_map_request_free(struct tc_map_request *r)
{
    tc_hostinfo_clear(&r->hostinfo);
    free(r->endpoints);
    free(r->endpoint_types);
    free(r->debug_flags);
    json_decref(r->root);
    memset(r, 0, sizeof(*r));
}

json_t *tc_map_request_to_json(const struct tc_map_request_build *b)
{
    static const uint8_t zero[32];
    json_t *o = json_object();
    set_int(o, "Version", b->version);
    if (b->compress_zstd)
        set_str(o, "Compress", "zstd");
    set_bool_omit(o, "KeepAlive", b->keep_alive);
    set_key(o, "NodeKey", "nodekey", b->node_key);
    set_key(o, "DiscoKey", "discokey", b->disco_key ? b->disco_key : zero);
    set_bool_omit(o, "Stream", b->stream);
    if (b->hostinfo)
        set_ref_omit(o, "Hostinfo", b->hostinfo);
    else
        set_new(o, "Hostinfo", json_null());
    if (b->n_endpoints) {
        json_t *e = json_array();
        for (size_t i = 0; i < b->n_endpoints; i++)
            json_array_append_new(e, json_string(b->endpoints[i]));
        set_new(o, "Endpoints", e);
        if (b->endpoint_types) {
            json_t *t = json_array();
            for (size_t i = 0; i < b->n_endpoints; i++)
                json_array_append_new(t, json_integer(b->endpoint_types[i]));
            set_new(o, "EndpointTypes", t);
        }
    }
    set_bool_omit(o, "OmitPeers", b->omit_peers);
    if (b->n_debug_flags) {
        json_t *d = json_array();
        for (size_t i = 0; i < b->n_debug_flags; i++)
            json_array_append_new(d, json_string(b->debug_flags[i]));
        set_new(o, "DebugFlags", d);
    }
    return o;
}

/* ---- Node -------------------------------------------------------------------------------- */

void tc_node_clear(struct tc_node *n)
{
    free(n->stable_id);
    free(n->name);
    tc_strv_clear(&n->addresses);
    tc_strv_clear(&n->allowed_ips);
    tc_strv_clear(&n->endpoints);
    json_decref(n->hostinfo);
    tc_strv_clear(&n->tags);
    tc_strv_clear(&n->primary_routes);
    json_decref(n->cap_map);
    free(n->computed_name);
    free(n->computed_name_with_host);
    free(n->data_plane_audit_log_id);
    json_decref(n->extra);
    memset(n, 0, sizeof(*n));
}

void tc_node_copy(struct tc_node *dst, const struct tc_node *src)
{
    *dst = *src;
    dst->stable_id = dup_or_null(src->stable_id);
    dst->name = dup_or_null(src->name);
    tc_strv_copy(&dst->addresses, &src->addresses);
    tc_strv_copy(&dst->allowed_ips, &src->allowed_ips);
    tc_strv_copy(&dst->endpoints, &src->endpoints);
    json_incref(dst->hostinfo);
    tc_strv_copy(&dst->tags, &src->tags);
    tc_strv_copy(&dst->primary_routes, &src->primary_routes);
    json_incref(dst->cap_map);
    dst->computed_name = dup_or_null(src->computed_name);
    dst->computed_name_with_host = dup_or_null(src->computed_name_with_host);
    dst->data_plane_audit_log_id = dup_or_null(src->data_plane_audit_log_id);
    json_incref(dst->extra);
}

/* Go field order of tailcfg.Node; the unmodelled ones go through n->extra. */
static const char *const node_known_fields[] = {
    "ID", "StableID", "Name", "User", "Sharer", "Key", "KeyExpiry", "Machine", "DiscoKey",
    "Addresses", "AllowedIPs", "Endpoints", "DERP", "HomeDERP", "Hostinfo", "Created", "Cap",
    "Tags", "PrimaryRoutes", "LastSeen", "Online", "MachineAuthorized", "CapMap",
    "UnsignedPeerAPIOnly", "ComputedName", "ComputedNameWithHost", "DataPlaneAuditLogID",
    "Expired", "IsWireGuardOnly", "IsJailed",
};

json_t *tc_node_to_json(const struct tc_node *n)
{
    json_t *o = json_object();
    char buf[32];
    set_int(o, "ID", n->id);
    if (n->stable_id) {
        set_str(o, "StableID", n->stable_id);
    } else {
        snprintf(buf, sizeof buf, "%lld", (long long)n->id);
        set_str(o, "StableID", buf);
    }
    set_str(o, "Name", n->name);
    set_int(o, "User", n->user);
    set_int_omit(o, "Sharer", n->sharer);
    set_key(o, "Key", "nodekey", n->key);
    set_time_omit(o, "KeyExpiry", &n->key_expiry);
    set_key_omit(o, "Machine", "mkey", n->machine);
    set_key_omit(o, "DiscoKey", "discokey", n->disco_key);
    set_new(o, "Addresses", strv_json(&n->addresses));
    if (!n->allowed_ips_null)
        set_new(o, "AllowedIPs", strv_json(&n->allowed_ips));
    set_strv_omit(o, "Endpoints", &n->endpoints);
    if (n->legacy_derp) {
        snprintf(buf, sizeof buf, TC_DERP_MAGIC_IP ":%d", n->home_derp);
        set_str(o, "DERP", buf);
    }
    set_int_omit(o, "HomeDERP", n->home_derp);
    set_ref_omit(o, "Hostinfo", n->hostinfo);
    set_time_omit(o, "Created", &n->created);
    set_int_omit(o, "Cap", n->cap);
    set_strv_omit(o, "Tags", &n->tags);
    set_strv_omit(o, "PrimaryRoutes", &n->primary_routes);
    set_time_omit(o, "LastSeen", &n->last_seen);
    if (n->online != TC_UNSET)
        set_bool(o, "Online", n->online == TC_TRUE);
    set_bool_omit(o, "MachineAuthorized", n->machine_authorized);
    if (n->cap_map && json_object_size(n->cap_map))
        set_ref_omit(o, "CapMap", n->cap_map);
    set_bool_omit(o, "UnsignedPeerAPIOnly", n->unsigned_peerapi_only);
    set_str_omit(o, "ComputedName", n->computed_name);
    set_str_omit(o, "ComputedNameWithHost", n->computed_name_with_host);
    set_str_omit(o, "DataPlaneAuditLogID", n->data_plane_audit_log_id);
    set_bool_omit(o, "Expired", n->expired);
    set_bool_omit(o, "IsWireGuardOnly", n->is_wireguard_only);
    set_bool_omit(o, "IsJailed", n->is_jailed);
    if (n->extra) {
        const char *k;
        json_t *v;
        json_object_foreach(n->extra, k, v) set_ref_omit(o, k, v);
    }
    return o;
}

static bool is_known_node_field(const char *k)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(node_known_fields); i++)
        if (strcmp(k, node_known_fields[i]) == 0)
            return true;
    return false;
}

/* CapMap: {"capability": [any JSON values] | null}; *out takes a reference. */
static int get_cap_map(struct pc *p, const json_t *obj, json_t **out)
{
    json_t *m, *v;
    const char *k;
    int r = get_object(p, obj, "CapMap", &m);
    if (r <= 0)
        return r;
    json_object_foreach(m, k, v)
    {
        if (!json_is_array(v) && !json_is_null(v))
            return fail(p, "CapMap", "\"%.60s\": expected an array of values", k);
    }
    *out = json_incref(m);
    return 1;
}

int tc_node_parse(const json_t *obj, const char *ctx, struct tc_node *out, char *err,
                  size_t errlen)
{
    struct pc p = {err, errlen, ctx};
    memset(out, 0, sizeof(*out));
    if (!json_is_object(obj))
        return fail(&p, NULL, "expected a Node object");
    const char *s;
    if (get_int(&p, obj, "ID", INT64_MIN, INT64_MAX, &out->id) < 0)
        goto bad;
    if (out->id == 0) {
        fail(&p, "ID", "missing or zero");
        goto bad;
    }
    if (get_str(&p, obj, "StableID", &s) < 0)
        goto bad;
    out->stable_id = dup_or_null(s);
    if (get_str(&p, obj, "Name", &s) < 0)
        goto bad;
    out->name = hw_strdup(s ? s : "");
    if (get_int(&p, obj, "User", INT64_MIN, INT64_MAX, &out->user) < 0 ||
        get_int(&p, obj, "Sharer", INT64_MIN, INT64_MAX, &out->sharer) < 0 ||
        get_key(&p, obj, "Key", "nodekey", out->key, true) < 0 ||
        get_time(&p, obj, "KeyExpiry", &out->key_expiry) < 0 ||
        get_key(&p, obj, "Machine", "mkey", out->machine, false) < 0 ||
        get_key(&p, obj, "DiscoKey", "discokey", out->disco_key, false) < 0 ||
        get_strv(&p, obj, "Addresses", tc_valid_prefix, "an IP prefix", &out->addresses) < 0)
        goto bad;
    int r = get_strv(&p, obj, "AllowedIPs", tc_valid_prefix, "an IP prefix", &out->allowed_ips);
    if (r < 0)
        goto bad;
    out->allowed_ips_null = r == 0;
    if (get_strv(&p, obj, "Endpoints", tc_valid_addrport, "an ip:port", &out->endpoints) < 0)
        goto bad;
    if (get_int32(&p, obj, "HomeDERP", &out->home_derp) < 0)
        goto bad;
    if (get_str(&p, obj, "DERP", &s) < 0)
        goto bad;
    if (s && *s) {
        /* Only the magic "127.3.3.40:<region>" form means anything (upgradeNode). */
        const char *colon = strrchr(s, ':');
        unsigned long region;
        if (colon && (size_t)(colon - s) == strlen(TC_DERP_MAGIC_IP) &&
            strncmp(s, TC_DERP_MAGIC_IP, (size_t)(colon - s)) == 0 &&
            parse_uint(colon + 1, 65535, &region)) {
            out->legacy_derp = true;
            if (out->home_derp == 0)
                out->home_derp = (int)region;
        }
    }
    json_t *o;
    if (get_object(&p, obj, "Hostinfo", &o) < 0)
        goto bad;
    out->hostinfo = o ? json_incref(o) : NULL;
    if (get_time(&p, obj, "Created", &out->created) < 0 ||
        get_int32_from(&p, obj, "Cap", 0, &out->cap) < 0)
        goto bad;
    if (get_strv(&p, obj, "Tags", any_str, "a string", &out->tags) < 0 ||
        get_strv(&p, obj, "PrimaryRoutes", tc_valid_prefix, "an IP prefix",
                 &out->primary_routes) < 0 ||
        get_time(&p, obj, "LastSeen", &out->last_seen) < 0 ||
        get_optbool(&p, obj, "Online", &out->online) < 0 ||
        get_bool(&p, obj, "MachineAuthorized", &out->machine_authorized) < 0 ||
        get_cap_map(&p, obj, &out->cap_map) < 0)
        goto bad;
    if (get_bool(&p, obj, "UnsignedPeerAPIOnly", &out->unsigned_peerapi_only) < 0)
        goto bad;
    if (get_str(&p, obj, "ComputedName", &s) < 0)
        goto bad;
    out->computed_name = dup_or_null(s);
    if (get_str(&p, obj, "ComputedNameWithHost", &s) < 0)
        goto bad;
    out->computed_name_with_host = dup_or_null(s);
    if (get_str(&p, obj, "DataPlaneAuditLogID", &s) < 0)
        goto bad;
    out->data_plane_audit_log_id = dup_or_null(s);
    if (get_bool(&p, obj, "Expired", &out->expired) < 0 ||
        get_bool(&p, obj, "IsWireGuardOnly", &out->is_wireguard_only) < 0 ||
        get_bool(&p, obj, "IsJailed", &out->is_jailed) < 0)
        goto bad;
    const char *k;
    json_t *val;
    json_object_foreach((json_t *)obj, k, val)
    {
        if (is_known_node_field(k))
            continue;
        if (!out->extra)
            out->extra = json_object();
        json_object_set(out->extra, k, val);
    }
    return 0;
bad:
    tc_node_clear(out);
    return -1;
}

void tc_node_upgrade(struct tc_node *n)
{
    n->legacy_derp = false;
    if (n->allowed_ips_null) {
        tc_strv_copy(&n->allowed_ips, &n->addresses);
        n->allowed_ips_null = false;
    }
}

/* ---- PeerChange ---------------------------------------------------------------------- */

void tc_peer_change_clear(struct tc_peer_change *pc)
{
    json_decref(pc->cap_map);
    tc_strv_clear(&pc->endpoints);
    free(pc->key_signature);
    memset(pc, 0, sizeof(*pc));
}

json_t *tc_peer_change_to_json(const struct tc_peer_change *pc)
{
    json_t *o = json_object();
    set_int(o, "NodeID", pc->node_id);
    set_int_omit(o, "DERPRegion", pc->derp_region);
    set_int_omit(o, "Cap", pc->cap);
    if (pc->cap_map)
        set_ref_omit(o, "CapMap", pc->cap_map);
    if (pc->endpoints_set && pc->endpoints.n)
        set_new(o, "Endpoints", strv_json(&pc->endpoints));
    if (pc->has_key)
        set_key(o, "Key", "nodekey", pc->key);
    set_str_omit(o, "KeySignature", pc->key_signature);
    if (pc->has_disco_key)
        set_key(o, "DiscoKey", "discokey", pc->disco_key);
    if (pc->online != TC_UNSET)
        set_bool(o, "Online", pc->online == TC_TRUE);
    if (pc->has_last_seen)
        set_new(o, "LastSeen", time_json(&pc->last_seen));
    if (pc->has_key_expiry)
        set_new(o, "KeyExpiry", time_json(&pc->key_expiry));
    return o;
}

int tc_peer_change_parse(const json_t *obj, const char *ctx, struct tc_peer_change *out, char *err,
                         size_t errlen)
{
    struct pc p = {err, errlen, ctx};
    memset(out, 0, sizeof(*out));
    if (!json_is_object(obj))
        return fail(&p, NULL, "expected a PeerChange object");
    const char *s;
    if (get_int(&p, obj, "NodeID", INT64_MIN, INT64_MAX, &out->node_id) < 0 ||
        get_int32(&p, obj, "DERPRegion", &out->derp_region) < 0 ||
        get_int32_from(&p, obj, "Cap", 0, &out->cap) < 0 ||
        get_cap_map(&p, obj, &out->cap_map) < 0)
        goto bad;
    int r = get_strv(&p, obj, "Endpoints", tc_valid_addrport, "an ip:port", &out->endpoints);
    if (r < 0)
        goto bad;
    out->endpoints_set = r == 1;
    if ((r = get_key(&p, obj, "Key", "nodekey", out->key, false)) < 0)
        goto bad;
    out->has_key = r == 1;
    if (get_str(&p, obj, "KeySignature", &s) < 0)
        goto bad;
    out->key_signature = s && *s ? hw_strdup(s) : NULL;
    if ((r = get_key(&p, obj, "DiscoKey", "discokey", out->disco_key, false)) < 0)
        goto bad;
    out->has_disco_key = r == 1;
    if (get_optbool(&p, obj, "Online", &out->online) < 0)
        goto bad;
    /* Pointers in Go: present, even as the zero time, means "patch". */
    if ((r = get_time(&p, obj, "LastSeen", &out->last_seen)) < 0)
        goto bad;
    out->has_last_seen = r == 1;
    if ((r = get_time(&p, obj, "KeyExpiry", &out->key_expiry)) < 0)
        goto bad;
    out->has_key_expiry = r == 1;
    return 0;
bad:
    tc_peer_change_clear(out);
    return -1;
}

/* ---- DERP map ------------------------------------------------------------------------------ */

/* Go's encoding/json writes map keys sorted as strings ("1000" before "901"); doing
 * the same makes our bytes comparable with a Go server's. */
static int cmp_region(const void *a, const void *b)
{
    const struct tc_derp_region *x = a, *y = b;
    char kx[16], ky[16];
    snprintf(kx, sizeof kx, "%d", x->region_id);
    snprintf(ky, sizeof ky, "%d", y->region_id);
    return strcmp(kx, ky);
}

static int cmp_route(const void *a, const void *b)
{
    const struct tc_dns_route *const *x = a, *const *y = b;
    return strcmp((*x)->suffix, (*y)->suffix);
}

json_t *tc_derp_map_to_json(const struct tc_derp_map *m)
{
    json_t *o = json_object();
    set_ref_omit(o, "HomeParams", m->home_params);
    json_t *regions = json_object();
    struct tc_derp_region *sorted = NULL;
    if (m->n_regions) {
        sorted = hw_calloc(m->n_regions, sizeof(*sorted));
        memcpy(sorted, m->regions, m->n_regions * sizeof(*sorted));
        qsort(sorted, m->n_regions, sizeof(*sorted), cmp_region);
    }
    for (size_t i = 0; i < m->n_regions; i++) {
        const struct tc_derp_region *r = &sorted[i];
        json_t *ro = json_object();
        set_int(ro, "RegionID", r->region_id);
        set_str(ro, "RegionCode", r->region_code);
        set_str(ro, "RegionName", r->region_name);
        if (r->latitude != 0)
            set_new(ro, "Latitude", json_real(r->latitude));
        if (r->longitude != 0)
            set_new(ro, "Longitude", json_real(r->longitude));
        set_bool_omit(ro, "Avoid", r->avoid);
        set_bool_omit(ro, "NoMeasureNoHome", r->no_measure_no_home);
        json_t *nodes = json_array();
        for (size_t j = 0; j < r->n_nodes; j++) {
            const struct tc_derp_node *n = &r->nodes[j];
            json_t *no = json_object();
            set_str(no, "Name", n->name);
            set_int(no, "RegionID", n->region_id ? n->region_id : r->region_id);
            set_str(no, "HostName", n->host_name);
            set_str_omit(no, "CertName", n->cert_name);
            set_str_omit(no, "IPv4", n->ipv4);
            set_str_omit(no, "IPv6", n->ipv6);
            set_int_omit(no, "STUNPort", n->stun_port);
            set_bool_omit(no, "STUNOnly", n->stun_only);
            set_int_omit(no, "DERPPort", n->derp_port);
            set_bool_omit(no, "InsecureForTests", n->insecure_for_tests);
            set_str_omit(no, "STUNTestIP", n->stun_test_ip);
            set_bool_omit(no, "CanPort80", n->can_port80);
            json_array_append_new(nodes, no);
        }
        set_new(ro, "Nodes", nodes);
        char key[16];
        snprintf(key, sizeof key, "%d", r->region_id);
        set_new(regions, key, ro);
    }
    free(sorted);
    set_new(o, "Regions", regions);
    set_bool_omit(o, "omitDefaultRegions", m->omit_default_regions);
    return o;
}

struct tc_derp_region *tc_derp_map_add_region(struct tc_derp_map *m, int region_id,
                                              const char *code, const char *name)
{
    struct tc_derp_region *r = realloc(m->regions, (m->n_regions + 1) * sizeof(*r));
    if (!r)
        abort();
    m->regions = r;
    r = &m->regions[m->n_regions++];
    memset(r, 0, sizeof(*r));
    r->region_id = region_id;
    r->region_code = hw_strdup(code ? code : "");
    r->region_name = hw_strdup(name ? name : "");
    return r;
}

struct tc_derp_node *tc_derp_region_add_node(struct tc_derp_region *r, const char *name,
                                             const char *host_name)
{
    struct tc_derp_node *n = realloc(r->nodes, (r->n_nodes + 1) * sizeof(*n));
    if (!n)
        abort();
    r->nodes = n;
    n = &r->nodes[r->n_nodes++];
    memset(n, 0, sizeof(*n));
    n->name = hw_strdup(name ? name : "");
    n->host_name = hw_strdup(host_name ? host_name : "");
    n->region_id = r->region_id;
    return n;
}

const struct tc_derp_region *tc_derp_map_region(const struct tc_derp_map *m, int region_id)
{
    for (size_t i = 0; i < m->n_regions; i++)
        if (m->regions[i].region_id == region_id)
            return &m->regions[i];
    return NULL;
}

void tc_derp_map_clear(struct tc_derp_map *m)
{
    for (size_t i = 0; i < m->n_regions; i++) {
        struct tc_derp_region *r = &m->regions[i];
        for (size_t j = 0; j < r->n_nodes; j++) {
            struct tc_derp_node *n = &r->nodes[j];
            free(n->name);
            free(n->host_name);
            free(n->cert_name);
            free(n->ipv4);
            free(n->ipv6);
            free(n->stun_test_ip);
        }
        free(r->nodes);
        free(r->region_code);
        free(r->region_name);
    }
    free(m->regions);
    json_decref(m->home_params);
    memset(m, 0, sizeof(*m));
}

static int parse_derp_node(struct pc *p, const json_t *o, struct tc_derp_node *n)
{
    const char *s;
    if (!json_is_object(o))
        return fail(p, NULL, "expected a DERPNode object");
    struct {
        const char *name;
        char **dst;
    } strs[] = {{"Name", &n->name},   {"HostName", &n->host_name}, {"CertName", &n->cert_name},
                {"IPv4", &n->ipv4},   {"IPv6", &n->ipv6},          {"STUNTestIP", &n->stun_test_ip}};
    for (size_t i = 0; i < HW_ARRAY_LEN(strs); i++) {
        if (get_str(p, o, strs[i].name, &s) < 0)
            return -1;
        *strs[i].dst = dup_or_null(s);
    }
    if (get_int32(p, o, "RegionID", &n->region_id) < 0 ||
        get_int32(p, o, "STUNPort", &n->stun_port) < 0 ||
        get_bool(p, o, "STUNOnly", &n->stun_only) < 0 ||
        get_int32(p, o, "DERPPort", &n->derp_port) < 0 ||
        get_bool(p, o, "InsecureForTests", &n->insecure_for_tests) < 0 ||
        get_bool(p, o, "CanPort80", &n->can_port80) < 0)
        return -1;
    if (n->derp_port < 0 || n->derp_port > 65535 || n->stun_port < -1 || n->stun_port > 65535)
        return fail(p, "DERPPort", "port out of range");
    if (!n->host_name || !*n->host_name) {
        if (!n->stun_only)
            return fail(p, "HostName", "missing");
    }
    return 0;
}

static int get_double(struct pc *p, const json_t *o, const char *name, double *out)
{
    json_t *v;
    int r = get_typed(p, o, name, 1u << JSON_INTEGER | 1u << JSON_REAL, "a number", &v);
    *out = r == 1 ? json_number_value(v) : 0;
    return r;
}

int tc_derp_map_parse(const json_t *obj, struct tc_derp_map *out, char *err, size_t errlen)
{
    struct pc p = {err, errlen, "DERPMap"};
    memset(out, 0, sizeof(*out));
    if (!json_is_object(obj))
        return fail(&p, NULL, "expected an object");
    json_t *hp, *regions;
    if (get_object(&p, obj, "HomeParams", &hp) < 0 || get_object(&p, obj, "Regions", &regions) < 0 ||
        get_bool(&p, obj, "omitDefaultRegions", &out->omit_default_regions) < 0)
        goto bad;
    out->home_params = hp ? json_incref(hp) : NULL;
    out->regions_null = regions == NULL;
    if (regions) {
        const char *k;
        json_t *ro;
        json_object_foreach(regions, k, ro)
        {
            char ctx[64];
            snprintf(ctx, sizeof ctx, "DERPMap.Regions[%.12s]", k);
            struct pc rp = {err, errlen, ctx};
            unsigned long id;
            if (!parse_uint(k, 0x7fffffff, &id) || id == 0) {
                fail(&rp, NULL, "region key must be a positive decimal id");
                goto bad;
            }
            if (json_is_null(ro))
                continue; /* upstream drops nil regions (Headscale once sent them) */
            if (!json_is_object(ro)) {
                fail(&rp, NULL, "expected a DERPRegion object");
                goto bad;
            }
            struct tc_derp_region *r = tc_derp_map_add_region(out, (int)id, NULL, NULL);
            const char *s;
            int rid;
            if (get_int32(&rp, ro, "RegionID", &rid) < 0)
                goto bad;
            if (rid != (int)id) {
                fail(&rp, "RegionID", "%d does not match its key", rid);
                goto bad;
            }
            if (get_str(&rp, ro, "RegionCode", &s) < 0)
                goto bad;
            free(r->region_code);
            r->region_code = hw_strdup(s ? s : "");
            if (get_str(&rp, ro, "RegionName", &s) < 0)
                goto bad;
            free(r->region_name);
            r->region_name = hw_strdup(s ? s : "");
            if (get_double(&rp, ro, "Latitude", &r->latitude) < 0 ||
                get_double(&rp, ro, "Longitude", &r->longitude) < 0 ||
                get_bool(&rp, ro, "Avoid", &r->avoid) < 0 ||
                get_bool(&rp, ro, "NoMeasureNoHome", &r->no_measure_no_home) < 0)
                goto bad;
            json_t *nodes;
            if (get_array(&rp, ro, "Nodes", &nodes) < 0)
                goto bad;
            size_t nn = json_array_size(nodes);
            for (size_t j = 0; j < nn; j++) {
                char nctx[112];
                snprintf(nctx, sizeof nctx, "%s.Nodes[%zu]", ctx, j);
                struct pc np = {err, errlen, nctx};
                struct tc_derp_node *n = tc_derp_region_add_node(r, NULL, NULL);
                free(n->name);
                free(n->host_name);
                n->name = n->host_name = NULL;
                if (parse_derp_node(&np, json_array_get(nodes, j), n) < 0)
                    goto bad;
                if (!n->name)
                    n->name = hw_strdup("");
                if (!n->host_name)
                    n->host_name = hw_strdup("");
            }
        }
    }
    return 0;
bad:
    tc_derp_map_clear(out);
    return -1;
}

/* ---- DNS config ----------------------------------------------------------------------- */

static json_t *resolvers_json(const struct tc_strv *addrs)
{
    json_t *a = json_array();
    for (size_t i = 0; i < addrs->n; i++) {
        json_t *r = json_object();
        set_str(r, "Addr", addrs->v[i]);
        json_array_append_new(a, r);
    }
    return a;
}

json_t *tc_dns_config_to_json(const struct tc_dns_config *c)
{
    json_t *o = json_object();
    if (c->resolvers.n)
        set_new(o, "Resolvers", resolvers_json(&c->resolvers));
    if (c->n_routes) {
        const struct tc_dns_route **sorted = hw_calloc(c->n_routes, sizeof(*sorted));
        for (size_t i = 0; i < c->n_routes; i++)
            sorted[i] = &c->routes[i];
        qsort(sorted, c->n_routes, sizeof(*sorted), cmp_route);
        json_t *routes = json_object();
        for (size_t i = 0; i < c->n_routes; i++)
            set_new(routes, sorted[i]->suffix, resolvers_json(&sorted[i]->resolvers));
        free(sorted);
        set_new(o, "Routes", routes);
    }
    if (c->fallback_resolvers.n)
        set_new(o, "FallbackResolvers", resolvers_json(&c->fallback_resolvers));
    set_strv_omit(o, "Domains", &c->domains);
    set_bool_omit(o, "Proxied", c->proxied);
    set_strv_omit(o, "Nameservers", &c->nameservers);
    set_strv_omit(o, "CertDomains", &c->cert_domains);
    if (c->n_extra_records) {
        json_t *recs = json_array();
        for (size_t i = 0; i < c->n_extra_records; i++) {
            json_t *r = json_object();
            set_str(r, "Name", c->extra_records[i].name);
            set_str_omit(r, "Type", c->extra_records[i].type);
            set_str(r, "Value", c->extra_records[i].value);
            json_array_append_new(recs, r);
        }
        set_new(o, "ExtraRecords", recs);
    }
    return o;
}

void tc_dns_config_add_route(struct tc_dns_config *c, const char *suffix,
                             const struct tc_strv *resolvers)
{
    struct tc_dns_route *r = realloc(c->routes, (c->n_routes + 1) * sizeof(*r));
    if (!r)
        abort();
    c->routes = r;
    r = &c->routes[c->n_routes++];
    r->suffix = hw_strdup(suffix);
    if (resolvers)
        tc_strv_copy(&r->resolvers, resolvers);
    else
        memset(&r->resolvers, 0, sizeof(r->resolvers));
}

void tc_dns_config_add_magic_reverse_routes(struct tc_dns_config *c)
{
    /* 100.64.0.0/10 spans second octets 64..127; fd7a:115c:a1e0::/48 is 12 nibbles. */
    char zone[32];
    for (int octet = 64; octet <= 127; octet++) {
        snprintf(zone, sizeof zone, "%d.100.in-addr.arpa", octet);
        tc_dns_config_add_route(c, zone, NULL);
    }
    tc_dns_config_add_route(c, "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa", NULL);
}

void tc_dns_config_add_record(struct tc_dns_config *c, const char *name, const char *type,
                              const char *value)
{
    struct tc_dns_record *r = realloc(c->extra_records, (c->n_extra_records + 1) * sizeof(*r));
    if (!r)
        abort();
    c->extra_records = r;
    r = &c->extra_records[c->n_extra_records++];
    r->name = hw_strdup(name);
    r->type = dup_or_null(type);
    r->value = hw_strdup(value);
}

void tc_dns_config_clear(struct tc_dns_config *c)
{
    tc_strv_clear(&c->resolvers);
    for (size_t i = 0; i < c->n_routes; i++) {
        free(c->routes[i].suffix);
        tc_strv_clear(&c->routes[i].resolvers);
    }
    free(c->routes);
    tc_strv_clear(&c->fallback_resolvers);
    tc_strv_clear(&c->domains);
    tc_strv_clear(&c->nameservers);
    tc_strv_clear(&c->cert_domains);
    for (size_t i = 0; i < c->n_extra_records; i++) {
        free(c->extra_records[i].name);
        free(c->extra_records[i].type);
        free(c->extra_records[i].value);
    }
    free(c->extra_records);
    memset(c, 0, sizeof(*c));
}

/* ---- packet filter, user profiles --------------------------------------------------------- */

json_t *tc_filter_rule_to_json(const struct tc_filter_rule *r)
{
    json_t *o = json_object();
    set_new(o, "SrcIPs", strv_json(&r->src_ips));
    if (r->n_dst_ports) {
        json_t *dst = json_array();
        for (size_t i = 0; i < r->n_dst_ports; i++) {
            json_t *d = json_object();
            set_str(d, "IP", r->dst_ports[i].ip);
            json_t *ports = json_object();
            set_int(ports, "First", r->dst_ports[i].first);
            set_int(ports, "Last", r->dst_ports[i].last);
            set_new(d, "Ports", ports);
            json_array_append_new(dst, d);
        }
        set_new(o, "DstPorts", dst);
    }
    if (r->n_ip_proto) {
        json_t *pr = json_array();
        for (size_t i = 0; i < r->n_ip_proto; i++)
            json_array_append_new(pr, json_integer(r->ip_proto[i]));
        set_new(o, "IPProto", pr);
    }
    return o;
}

json_t *tc_filter_allow_all(void)
{
    char *star = "*";
    struct tc_port_range any = {.ip = star, .first = 0, .last = 65535};
    struct tc_filter_rule rule = {.src_ips = {.v = &star, .n = 1}, .dst_ports = &any, .n_dst_ports = 1};
    json_t *rules = json_array();
    json_array_append_new(rules, tc_filter_rule_to_json(&rule));
    return rules;
}

json_t *tc_filter_allow_among(const struct tc_strv *ips)
{
    struct tc_filter_rule rule = {.src_ips = *ips};
    rule.dst_ports = ips->n ? hw_calloc(ips->n, sizeof(*rule.dst_ports)) : NULL;
    rule.n_dst_ports = ips->n;
    for (size_t i = 0; i < ips->n; i++)
        rule.dst_ports[i] = (struct tc_port_range){.ip = ips->v[i], .first = 0, .last = 65535};
    json_t *rules = json_array();
    /* With no members the rule would match nothing; send an empty list instead. */
    if (ips->n)
        json_array_append_new(rules, tc_filter_rule_to_json(&rule));
    free(rule.dst_ports);
    return rules;
}

int tc_filter_rules_check(const json_t *rules, const char *ctx, char *err, size_t errlen)
{
    struct pc p = {err, errlen, ctx};
    if (!json_is_array(rules))
        return fail(&p, NULL, "expected an array of FilterRule");
    for (size_t i = 0; i < json_array_size(rules); i++) {
        json_t *r = json_array_get(rules, i);
        char rctx[96];
        snprintf(rctx, sizeof rctx, "%s[%zu]", ctx, i);
        struct pc rp = {err, errlen, rctx};
        if (!json_is_object(r))
            return fail(&rp, NULL, "expected a FilterRule object");
        const char **arr;
        size_t n;
        if (get_str_array(&rp, r, "SrcIPs", any_str, "a string", &arr, &n) < 0)
            return -1;
        free(arr);
        json_t *dst, *proto;
        if (get_array(&rp, r, "DstPorts", &dst) < 0 || get_array(&rp, r, "IPProto", &proto) < 0)
            return -1;
        for (size_t j = 0; j < json_array_size(dst); j++) {
            json_t *d = json_array_get(dst, j), *ports;
            const char *ip;
            int64_t first, last;
            if (!json_is_object(d))
                return fail(&rp, "DstPorts", "element %zu: expected an object", j);
            if (get_str(&rp, d, "IP", &ip) < 0 || get_object(&rp, d, "Ports", &ports) < 0)
                return -1;
            if (ports && (get_int(&rp, ports, "First", 0, 65535, &first) < 0 ||
                          get_int(&rp, ports, "Last", 0, 65535, &last) < 0))
                return -1;
        }
        for (size_t j = 0; j < json_array_size(proto); j++)
            if (!json_is_integer(json_array_get(proto, j)))
                return fail(&rp, "IPProto", "element %zu: expected an integer", j);
    }
    return 0;
}

json_t *tc_user_profile_to_json(const struct tc_user_profile *u)
{
    json_t *o = json_object();
    set_int(o, "ID", u->id);
    set_str(o, "LoginName", u->login_name);
    set_str(o, "DisplayName", u->display_name);
    set_str_omit(o, "ProfilePicURL", u->profile_pic_url);
    return o;
}

/* ---- MapResponse builder -------------------------------------------------------------------- */

static json_t *id_bool_map(const struct tc_id_bool *v, size_t n)
{
    json_t *o = json_object();
    char key[24];
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%lld", (long long)v[i].id);
        set_bool(o, key, v[i].value);
    }
    return o;
}

json_t *tc_map_response_to_json(const struct tc_map_response *m)
{
    json_t *o = json_object();
    set_bool_omit(o, "KeepAlive", m->keep_alive);
    set_ref_omit(o, "PingRequest", m->ping_request);
    set_str_omit(o, "PopBrowserURL", m->pop_browser_url);
    set_ref_omit(o, "Node", m->node);
    set_ref_omit(o, "DERPMap", m->derp_map);
    if (m->n_peers)
        set_new(o, "Peers", ref_array(m->peers, m->n_peers));
    if (m->n_peers_changed)
        set_new(o, "PeersChanged", ref_array(m->peers_changed, m->n_peers_changed));
    if (m->n_peers_removed) {
        json_t *a = json_array();
        for (size_t i = 0; i < m->n_peers_removed; i++)
            json_array_append_new(a, json_integer(m->peers_removed[i]));
        set_new(o, "PeersRemoved", a);
    }
    if (m->n_peers_changed_patch)
        set_new(o, "PeersChangedPatch",
                ref_array(m->peers_changed_patch, m->n_peers_changed_patch));
    if (m->n_peer_seen_change)
        set_new(o, "PeerSeenChange", id_bool_map(m->peer_seen_change, m->n_peer_seen_change));
    if (m->n_online_change)
        set_new(o, "OnlineChange", id_bool_map(m->online_change, m->n_online_change));
    set_ref_omit(o, "DNSConfig", m->dns_config);
    set_str_omit(o, "Domain", m->domain);
    if (m->collect_services != TC_UNSET)
        set_bool(o, "CollectServices", m->collect_services == TC_TRUE);
    set_ref_omit(o, "PacketFilter", m->packet_filter);
    set_ref_omit(o, "PacketFilters", m->packet_filters);
    if (m->user_profiles && json_array_size(m->user_profiles))
        set_ref_omit(o, "UserProfiles", m->user_profiles);
    if (m->health && json_array_size(m->health))
        set_ref_omit(o, "Health", m->health);
    if (m->display_messages && json_object_size(m->display_messages))
        set_ref_omit(o, "DisplayMessages", m->display_messages);
    set_ref_omit(o, "SSHPolicy", m->ssh_policy);
    set_time_omit(o, "ControlTime", &m->control_time);
    set_ref_omit(o, "TKAInfo", m->tka_info);
    set_ref_omit(o, "Debug", m->debug);
    return o;
}

/* ---- MapResponse parse (client) --------------------------------------------------------------- */

static int parse_id_bool_map(struct pc *p, const json_t *root, const char *name,
                             struct tc_id_bool **out, size_t *n_out)
{
    json_t *m;
    *out = NULL;
    *n_out = 0;
    int r = get_object(p, root, name, &m);
    if (r <= 0)
        return r;
    size_t n = json_object_size(m), i = 0;
    struct tc_id_bool *v = n ? hw_calloc(n, sizeof(*v)) : NULL;
    const char *k;
    json_t *val;
    json_object_foreach(m, k, val)
    {
        char *end;
        long long id = strtoll(k, &end, 10);
        if (!*k || *end || !json_is_boolean(val)) {
            free(v);
            return fail(p, name, "\"%.24s\": expected a node id mapped to true/false", k);
        }
        v[i].id = id;
        v[i].value = json_is_true(val);
        i++;
    }
    *out = v;
    *n_out = n;
    return 1;
}

static int parse_node_array(struct pc *p, const json_t *root, const char *name,
                            struct tc_node **out, size_t *n_out)
{
    json_t *a;
    *out = NULL;
    *n_out = 0;
    int r = get_array(p, root, name, &a);
    if (r <= 0)
        return r;
    size_t n = json_array_size(a);
    struct tc_node *nodes = n ? hw_calloc(n, sizeof(*nodes)) : NULL;
    for (size_t i = 0; i < n; i++) {
        char ctx[64];
        snprintf(ctx, sizeof ctx, "MapResponse.%s[%zu]", name, i);
        if (tc_node_parse(json_array_get(a, i), ctx, &nodes[i], p->err, p->errlen) < 0) {
            for (size_t j = 0; j < i; j++)
                tc_node_clear(&nodes[j]);
            free(nodes);
            return -1;
        }
    }
    *out = nodes;
    *n_out = n;
    return 1;
}

int tc_map_update_from_json(json_t *root, struct tc_map_update *out, char *err, size_t errlen)
{
    struct pc p = {err, errlen, "MapResponse"};
    memset(out, 0, sizeof(*out));
    if (!json_is_object(root))
        return fail(&p, NULL, "expected a JSON object");
    out->root = json_incref(root);
    json_t *o;
    if (get_bool(&p, root, "KeepAlive", &out->keep_alive) < 0 ||
        get_int(&p, root, "Seq", INT64_MIN, INT64_MAX, &out->seq) < 0 ||
        get_object(&p, root, "PingRequest", &out->ping_request) < 0 ||
        get_str(&p, root, "PopBrowserURL", &out->pop_browser_url) < 0 ||
        get_time(&p, root, "ControlTime", &out->control_time) < 0)
        goto bad;
    if (get_object(&p, root, "Node", &o) < 0)
        goto bad;
    if (o) {
        if (tc_node_parse(o, "MapResponse.Node", &out->node, err, errlen) < 0)
            goto bad;
        out->has_node = true;
    }
    if (get_object(&p, root, "DERPMap", &o) < 0)
        goto bad;
    if (o) {
        if (tc_derp_map_parse(o, &out->derp_map, err, errlen) < 0)
            goto bad;
        out->has_derp_map = true;
    }
    if (parse_node_array(&p, root, "Peers", &out->peers, &out->n_peers) < 0 ||
        parse_node_array(&p, root, "PeersChanged", &out->peers_changed, &out->n_peers_changed) < 0)
        goto bad;
    json_t *a;
    if (get_array(&p, root, "PeersRemoved", &a) < 0)
        goto bad;
    if (a && json_array_size(a)) {
        out->n_peers_removed = json_array_size(a);
        out->peers_removed = hw_calloc(out->n_peers_removed, sizeof(int64_t));
        for (size_t i = 0; i < out->n_peers_removed; i++) {
            json_t *e = json_array_get(a, i);
            if (!json_is_integer(e)) {
                fail(&p, "PeersRemoved", "element %zu: expected a node id", i);
                goto bad;
            }
            out->peers_removed[i] = json_integer_value(e);
        }
    }
    if (get_array(&p, root, "PeersChangedPatch", &a) < 0)
        goto bad;
    if (a && json_array_size(a)) {
        size_t n = json_array_size(a);
        out->patches = hw_calloc(n, sizeof(*out->patches));
        for (size_t i = 0; i < n; i++) {
            char ctx[64];
            snprintf(ctx, sizeof ctx, "MapResponse.PeersChangedPatch[%zu]", i);
            if (tc_peer_change_parse(json_array_get(a, i), ctx, &out->patches[i], err, errlen) < 0)
                goto bad;
            out->n_patches = i + 1;
        }
    }
    if (parse_id_bool_map(&p, root, "OnlineChange", &out->online_change, &out->n_online_change) < 0 ||
        parse_id_bool_map(&p, root, "PeerSeenChange", &out->peer_seen_change,
                          &out->n_peer_seen_change) < 0)
        goto bad;
    if (get_object(&p, root, "DNSConfig", &out->dns_config) < 0 ||
        get_str(&p, root, "Domain", &out->domain) < 0 ||
        get_optbool(&p, root, "CollectServices", &out->collect_services) < 0 ||
        get_array(&p, root, "PacketFilter", &out->packet_filter) < 0 ||
        get_object(&p, root, "PacketFilters", &out->packet_filters) < 0 ||
        get_array(&p, root, "UserProfiles", &out->user_profiles) < 0 ||
        get_array(&p, root, "Health", &out->health) < 0 ||
        get_object(&p, root, "DisplayMessages", &out->display_messages) < 0 ||
        get_object(&p, root, "SSHPolicy", &out->ssh_policy) < 0 ||
        get_object(&p, root, "TKAInfo", &out->tka_info) < 0 ||
        get_object(&p, root, "Debug", &out->debug) < 0)
        goto bad;
    if (out->packet_filter &&
        tc_filter_rules_check(out->packet_filter, "MapResponse.PacketFilter", err, errlen) < 0)
        goto bad;
    if (out->packet_filters) {
        const char *k;
        json_t *v;
        json_object_foreach(out->packet_filters, k, v)
        {
            char ctx[96];
            snprintf(ctx, sizeof ctx, "MapResponse.PacketFilters[%.40s]", k);
            if (!json_is_null(v) && tc_filter_rules_check(v, ctx, err, errlen) < 0)
                goto bad;
        }
    }
    for (size_t i = 0; i < json_array_size(out->user_profiles); i++) {
        json_t *u = json_array_get(out->user_profiles, i);
        if (!json_is_object(u) || !json_is_integer(json_object_get(u, "ID"))) {
            fail(&p, "UserProfiles", "element %zu: expected a profile with an integer ID", i);
            goto bad;
        }
    }
    for (size_t i = 0; i < json_array_size(out->health); i++)
        if (!json_is_string(json_array_get(out->health, i))) {
            fail(&p, "Health", "element %zu: expected a string", i);
            goto bad;
        }
    return 0;
bad:
    tc_map_update_free(out);
    return -1;
}

int tc_map_update_parse(const uint8_t *json, size_t len, size_t max_len,
                        struct tc_map_update *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    json_t *root = tc_json_load(json, len, max_len, "MapResponse", err, errlen);
    if (!root)
        return -1;
    int r = tc_map_update_from_json(root, out, err, errlen);
    json_decref(root);
    return r;
}

void tc_map_update_free(struct tc_map_update *u)
{
    tc_node_clear(&u->node);
    for (size_t i = 0; i < u->n_peers; i++)
        tc_node_clear(&u->peers[i]);
    free(u->peers);
    for (size_t i = 0; i < u->n_peers_changed; i++)
        tc_node_clear(&u->peers_changed[i]);
    free(u->peers_changed);
    free(u->peers_removed);
    for (size_t i = 0; i < u->n_patches; i++)
        tc_peer_change_clear(&u->patches[i]);
    free(u->patches);
    free(u->online_change);
    free(u->peer_seen_change);
    tc_derp_map_clear(&u->derp_map);
    json_decref(u->root);
    memset(u, 0, sizeof(*u));
}

/* ---- pre-serialised peers ---------------------------------------------------------------- */

struct hw_sbuf *tc_node_serialize(const struct tc_node *n)
{
    json_t *j = tc_node_to_json(n);
    size_t len;
    char *text = tc_json_dump(j, &len);
    struct hw_sbuf *b = hw_sbuf_copy(text, len);
    free(text);
    json_decref(j);
    return b;
}

char *tc_map_response_dump_with_peers(const struct tc_map_response *m, const char *list,
                                      struct hw_sbuf *const *frags, size_t n_frags,
                                      size_t *len_out)
{
    json_t *head = tc_map_response_to_json(m);
    size_t hlen;
    char *htext = tc_json_dump(head, &hlen);
    json_decref(head);
    if (n_frags == 0) {
        if (len_out)
            *len_out = hlen;
        return htext;
    }
    /* head is "{}" or "{...}": drop its closing brace, append the list, close again. */
    json_t *name = json_string(list);
    char *ntext = json_dumps(name, JSON_ENCODE_ANY);
    json_decref(name);
    if (!ntext)
        abort();
    size_t nlen = strlen(ntext);
    size_t total = hlen - 1 + (hlen > 2 ? 1 : 0) + nlen + 2 + 1 + 1;
    for (size_t i = 0; i < n_frags; i++)
        total += frags[i]->len + 1;
    char *out = hw_malloc(total + 1);
    size_t pos = hlen - 1;
    memcpy(out, htext, pos);
    if (hlen > 2)
        out[pos++] = ',';
    memcpy(out + pos, ntext, nlen);
    pos += nlen;
    out[pos++] = ':';
    out[pos++] = '[';
    for (size_t i = 0; i < n_frags; i++) {
        if (i)
            out[pos++] = ',';
        memcpy(out + pos, frags[i]->data, frags[i]->len);
        pos += frags[i]->len;
    }
    out[pos++] = ']';
    out[pos++] = '}';
    out[pos] = '\0';
    free(htext);
    free(ntext);
    if (len_out)
        *len_out = pos;
    return out;
}
