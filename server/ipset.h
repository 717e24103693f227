#ifndef HW_SERVER_IPSET_H
#define HW_SERVER_IPSET_H

/* IP addresses, prefixes and range sets for the policy engine: parse and print them in
 * the forms Tailscale's packet filter reads ("100.64.0.1", "10.0.0.0/8",
 * "100.64.0.0-100.115.91.255"), test containment and overlap, and merge many addresses
 * into the fewest ranges. IPv4 and IPv6 never mix: a range or prefix is of one family,
 * and IPv4 sorts before IPv6. Addresses are big-endian bytes so memcmp orders them. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128" plus NUL, and twice that plus '-'. */
#define HW_IP_STR_MAX 56
#define HW_IPRANGE_STR_MAX (2 * HW_IP_STR_MAX)

struct hw_ip {
    uint8_t fam;      /* 4 or 6 */
    uint8_t b[16];    /* IPv4 uses b[0..3]; the rest stays zero */
};

struct hw_ipprefix {
    struct hw_ip addr;  /* host bits are zero */
    uint8_t bits;
};

struct hw_iprange {
    struct hw_ip first, last;   /* inclusive, same family, first <= last */
};

/* A set of ranges. After hw_ipset_normalize the ranges are sorted, disjoint and not
 * adjacent, which is what the contains/overlaps queries assume. */
struct hw_ipset {
    struct hw_iprange *r;
    size_t n, cap;
};

int hw_ip_parse(const char *text, struct hw_ip *out);
void hw_ip_format(const struct hw_ip *ip, char out[HW_IP_STR_MAX]);
int hw_ip_cmp(const struct hw_ip *a, const struct hw_ip *b);
static inline int hw_ip_bits(const struct hw_ip *ip) { return ip->fam == 4 ? 32 : 128; }

/* "10.0.0.0/8", or a bare address meaning a single-address prefix. Returns 0, -1 when
 * the text is no address or prefix, -2 when it is a prefix with host bits set
 * ("10.0.0.1/8"); out is filled (masked) in that case too, so callers can suggest it. */
int hw_ipprefix_parse(const char *text, struct hw_ipprefix *out);
/* "a/n" always; hw_ipprefix_format_short prints a single address without "/32". */
void hw_ipprefix_format(const struct hw_ipprefix *p, char out[HW_IP_STR_MAX]);
void hw_ipprefix_format_short(const struct hw_ipprefix *p, char out[HW_IP_STR_MAX]);
bool hw_ipprefix_contains(const struct hw_ipprefix *p, const struct hw_ip *ip);
bool hw_ipprefix_overlaps(const struct hw_ipprefix *a, const struct hw_ipprefix *b);
/* b lies wholly inside a. */
bool hw_ipprefix_covers(const struct hw_ipprefix *a, const struct hw_ipprefix *b);
bool hw_ipprefix_equal(const struct hw_ipprefix *a, const struct hw_ipprefix *b);
struct hw_iprange hw_ipprefix_range(const struct hw_ipprefix *p);

/* One address, "a/n" when the range is exactly a prefix, else "first-last". */
void hw_iprange_format(const struct hw_iprange *r, char out[HW_IPRANGE_STR_MAX]);
/* "a-b" with a <= b of one family; also accepts what hw_ipprefix_parse accepts. */
int hw_iprange_parse(const char *text, struct hw_iprange *out);

void hw_ipset_add_range(struct hw_ipset *s, const struct hw_iprange *r);
void hw_ipset_add_prefix(struct hw_ipset *s, const struct hw_ipprefix *p);
void hw_ipset_add_ip(struct hw_ipset *s, const struct hw_ip *ip);
void hw_ipset_add_set(struct hw_ipset *s, const struct hw_ipset *other);
void hw_ipset_normalize(struct hw_ipset *s);
void hw_ipset_clear(struct hw_ipset *s);
bool hw_ipset_contains(const struct hw_ipset *s, const struct hw_ip *ip);
bool hw_ipset_overlaps_range(const struct hw_ipset *s, const struct hw_iprange *r);
bool hw_ipset_covers_range(const struct hw_ipset *s, const struct hw_iprange *r);

/* The ranges Tailscale's "*" source and autogroup:internet stand for (tsaddr): the
 * CGNAT range without the ChromeOS VM range, the Tailscale ULA, and the public
 * internet as Tailscale's control server writes it in exit-node filters. */
void hw_ipset_add_tailnet_ranges(struct hw_ipset *s);
void hw_ipset_add_internet(struct hw_ipset *s);

#endif
