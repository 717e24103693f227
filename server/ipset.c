#include "server/ipset.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static size_t fam_len(uint8_t fam) { return fam == 4 ? 4 : 16; }

int hw_ip_parse(const char *text, struct hw_ip *out)
{
    memset(out, 0, sizeof *out);
    if (!text || !*text)
        return -1;
    /* inet_pton refuses zones ("%eth0") and IPv4 octets with leading zeros, as Go's
     * netip.ParseAddr does. */
    if (strchr(text, ':')) {
        if (inet_pton(AF_INET6, text, out->b) != 1)
            return -1;
        out->fam = 6;
        return 0;
    }
    if (inet_pton(AF_INET, text, out->b) != 1)
        return -1;
    out->fam = 4;
    return 0;
}

void hw_ip_format(const struct hw_ip *ip, char out[HW_IP_STR_MAX])
{
    if (!inet_ntop(ip->fam == 4 ? AF_INET : AF_INET6, ip->b, out, HW_IP_STR_MAX))
        snprintf(out, HW_IP_STR_MAX, "?");
}

int hw_ip_cmp(const struct hw_ip *a, const struct hw_ip *b)
{
    if (a->fam != b->fam)
        return a->fam < b->fam ? -1 : 1;
    return memcmp(a->b, b->b, 16);
}

static void mask_bits(struct hw_ip *ip, int bits, bool set_host)
{
    int total = hw_ip_bits(ip);
    for (int i = 0; i < total / 8; i++) {
        int keep = bits - i * 8;
        uint8_t m = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
        ip->b[i] = set_host ? (uint8_t)(ip->b[i] | ~m) : (uint8_t)(ip->b[i] & m);
    }
}

int hw_ipprefix_parse(const char *text, struct hw_ipprefix *out)
{
    memset(out, 0, sizeof *out);
    if (!text)
        return -1;
    const char *slash = strchr(text, '/');
    char addr[HW_IP_STR_MAX];
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    if (alen == 0 || alen >= sizeof addr)
        return -1;
    memcpy(addr, text, alen);
    addr[alen] = '\0';
    if (hw_ip_parse(addr, &out->addr) < 0)
        return -1;
    int max = hw_ip_bits(&out->addr);
    int bits = max;
    if (slash) {
        const char *d = slash + 1;
        /* Go's netip.ParsePrefix: decimal digits only, no sign, no leading zero. */
        if (!*d || strlen(d) > 3 || (d[0] == '0' && d[1]))
            return -1;
        bits = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9')
                return -1;
            bits = bits * 10 + (*d - '0');
        }
        if (bits > max)
            return -1;
    }
    out->bits = (uint8_t)bits;
    struct hw_ip masked = out->addr;
    mask_bits(&masked, bits, false);
    bool host_bits = memcmp(masked.b, out->addr.b, 16) != 0;
    out->addr = masked;
    return host_bits ? -2 : 0;
}

void hw_ipprefix_format(const struct hw_ipprefix *p, char out[HW_IP_STR_MAX])
{
    char a[HW_IP_STR_MAX];
    hw_ip_format(&p->addr, a);
    snprintf(out, HW_IP_STR_MAX, "%.46s/%u", a, p->bits);
}

void hw_ipprefix_format_short(const struct hw_ipprefix *p, char out[HW_IP_STR_MAX])
{
    if (p->bits == hw_ip_bits(&p->addr))
        hw_ip_format(&p->addr, out);
    else
        hw_ipprefix_format(p, out);
}

struct hw_iprange hw_ipprefix_range(const struct hw_ipprefix *p)
{
    struct hw_iprange r = {p->addr, p->addr};
    mask_bits(&r.last, p->bits, true);
    return r;
}

bool hw_ipprefix_contains(const struct hw_ipprefix *p, const struct hw_ip *ip)
{
    if (p->addr.fam != ip->fam)
        return false;
    struct hw_ip m = *ip;
    mask_bits(&m, p->bits, false);
    return memcmp(m.b, p->addr.b, 16) == 0;
}

bool hw_ipprefix_overlaps(const struct hw_ipprefix *a, const struct hw_ipprefix *b)
{
    if (a->addr.fam != b->addr.fam)
        return false;
    /* Two prefixes overlap exactly when the shorter one contains the other's base. */
    return a->bits <= b->bits ? hw_ipprefix_contains(a, &b->addr) : hw_ipprefix_contains(b, &a->addr);
}

bool hw_ipprefix_covers(const struct hw_ipprefix *a, const struct hw_ipprefix *b)
{
    return a->addr.fam == b->addr.fam && a->bits <= b->bits && hw_ipprefix_contains(a, &b->addr);
}

bool hw_ipprefix_equal(const struct hw_ipprefix *a, const struct hw_ipprefix *b)
{
    return a->bits == b->bits && hw_ip_cmp(&a->addr, &b->addr) == 0;
}

/* The prefix length when [first, last] is exactly one prefix, else -1. */
static int range_prefix_bits(const struct hw_iprange *r)
{
    int total = hw_ip_bits(&r->first);
    for (int bits = 0; bits <= total; bits++) {
        struct hw_ip lo = r->first, hi = r->first;
        mask_bits(&lo, bits, false);
        mask_bits(&hi, bits, true);
        if (memcmp(lo.b, r->first.b, 16) == 0 && memcmp(hi.b, r->last.b, 16) == 0)
            return bits;
    }
    return -1;
}

void hw_iprange_format(const struct hw_iprange *r, char out[HW_IPRANGE_STR_MAX])
{
    char a[HW_IP_STR_MAX], b[HW_IP_STR_MAX];
    hw_ip_format(&r->first, a);
    if (hw_ip_cmp(&r->first, &r->last) == 0) {
        snprintf(out, HW_IPRANGE_STR_MAX, "%s", a);
        return;
    }
    int bits = range_prefix_bits(r);
    if (bits >= 0) {
        snprintf(out, HW_IPRANGE_STR_MAX, "%s/%d", a, bits);
        return;
    }
    hw_ip_format(&r->last, b);
    snprintf(out, HW_IPRANGE_STR_MAX, "%s-%s", a, b);
}

int hw_iprange_parse(const char *text, struct hw_iprange *out)
{
    const char *dash = strchr(text, '-');
    if (!dash) {
        struct hw_ipprefix p;
        if (hw_ipprefix_parse(text, &p) != 0)
            return -1;
        *out = hw_ipprefix_range(&p);
        return 0;
    }
    char a[HW_IP_STR_MAX];
    size_t alen = (size_t)(dash - text);
    if (alen == 0 || alen >= sizeof a)
        return -1;
    memcpy(a, text, alen);
    a[alen] = '\0';
    if (hw_ip_parse(a, &out->first) < 0 || hw_ip_parse(dash + 1, &out->last) < 0)
        return -1;
    if (out->first.fam != out->last.fam || hw_ip_cmp(&out->first, &out->last) > 0)
        return -1;
    return 0;
}

/* ---- sets ---- */

void hw_ipset_add_range(struct hw_ipset *s, const struct hw_iprange *r)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct hw_iprange *grown = realloc(s->r, cap * sizeof *grown);
        if (!grown)
            abort();
        s->r = grown;
        s->cap = cap;
    }
    s->r[s->n++] = *r;
}

void hw_ipset_add_prefix(struct hw_ipset *s, const struct hw_ipprefix *p)
{
    struct hw_iprange r = hw_ipprefix_range(p);
    hw_ipset_add_range(s, &r);
}

void hw_ipset_add_ip(struct hw_ipset *s, const struct hw_ip *ip)
{
    struct hw_iprange r = {*ip, *ip};
    hw_ipset_add_range(s, &r);
}

void hw_ipset_add_set(struct hw_ipset *s, const struct hw_ipset *other)
{
    for (size_t i = 0; i < other->n; i++)
        hw_ipset_add_range(s, &other->r[i]);
}

static int range_cmp(const void *a, const void *b)
{
    const struct hw_iprange *x = a, *y = b;
    int c = hw_ip_cmp(&x->first, &y->first);
    return c ? c : hw_ip_cmp(&x->last, &y->last);
}

/* ip + 1 within its family; false when ip is the family's last address. */
static bool ip_next(const struct hw_ip *ip, struct hw_ip *out)
{
    *out = *ip;
    for (size_t i = fam_len(ip->fam); i-- > 0;)
        if (++out->b[i] != 0)
            return true;
    return false;
}

void hw_ipset_normalize(struct hw_ipset *s)
{
    if (s->n < 2)
        return;
    qsort(s->r, s->n, sizeof *s->r, range_cmp);
    size_t w = 0;
    for (size_t i = 1; i < s->n; i++) {
        struct hw_iprange *cur = &s->r[w];
        const struct hw_iprange *nx = &s->r[i];
        struct hw_ip after;
        bool joins = nx->first.fam == cur->last.fam &&
                     (hw_ip_cmp(&nx->first, &cur->last) <= 0 ||
                      (ip_next(&cur->last, &after) && hw_ip_cmp(&nx->first, &after) == 0));
        if (joins) {
            if (hw_ip_cmp(&nx->last, &cur->last) > 0)
                cur->last = nx->last;
        } else {
            s->r[++w] = *nx;
        }
    }
    s->n = w + 1;
}

void hw_ipset_clear(struct hw_ipset *s)
{
    free(s->r);
    memset(s, 0, sizeof *s);
}

/* Index of the last range whose first address is <= ip, or SIZE_MAX. */
static size_t floor_range(const struct hw_ipset *s, const struct hw_ip *ip)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (hw_ip_cmp(&s->r[mid].first, ip) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? SIZE_MAX : lo - 1;
}

bool hw_ipset_contains(const struct hw_ipset *s, const struct hw_ip *ip)
{
    size_t i = floor_range(s, ip);
    return i != SIZE_MAX && s->r[i].first.fam == ip->fam && hw_ip_cmp(ip, &s->r[i].last) <= 0;
}

bool hw_ipset_overlaps_range(const struct hw_ipset *s, const struct hw_iprange *r)
{
    size_t i = floor_range(s, &r->last);
    /* The candidate is the last range starting at or before r's end; ranges are sorted
     * and disjoint, so it overlaps r exactly when it ends at or after r's start. */
    return i != SIZE_MAX && s->r[i].first.fam == r->first.fam && hw_ip_cmp(&s->r[i].last, &r->first) >= 0;
}

bool hw_ipset_covers_range(const struct hw_ipset *s, const struct hw_iprange *r)
{
    size_t i = floor_range(s, &r->first);
    return i != SIZE_MAX && s->r[i].first.fam == r->first.fam && hw_ip_cmp(&s->r[i].last, &r->last) >= 0;
}

static void add_text_range(struct hw_ipset *s, const char *first, const char *last)
{
    struct hw_iprange r;
    if (hw_ip_parse(first, &r.first) == 0 && hw_ip_parse(last, &r.last) == 0)
        hw_ipset_add_range(s, &r);
}

void hw_ipset_add_tailnet_ranges(struct hw_ipset *s)
{
    add_text_range(s, "100.64.0.0", "100.115.91.255");
    add_text_range(s, "100.115.94.0", "100.127.255.255");
    add_text_range(s, "fd7a:115c:a1e0::", "fd7a:115c:a1e0:ffff:ffff:ffff:ffff:ffff");
}

void hw_ipset_add_internet(struct hw_ipset *s)
{
    /* All of IPv4 and 2000::/3 less the private, link-local and Tailscale ranges. */
    add_text_range(s, "0.0.0.0", "9.255.255.255");
    add_text_range(s, "11.0.0.0", "100.63.255.255");
    add_text_range(s, "100.128.0.0", "169.253.255.255");
    add_text_range(s, "169.255.0.0", "172.15.255.255");
    add_text_range(s, "172.32.0.0", "192.167.255.255");
    add_text_range(s, "192.169.0.0", "255.255.255.255");
    add_text_range(s, "2000::", "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
}
