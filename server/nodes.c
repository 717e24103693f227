/* Node lifecycle rules: address allocation, MagicDNS names, turning a login into a node. */
#include "server/nodes.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* ---- prefixes ---- */

struct ip_prefix {
    int family;                 /* 4 or 6 */
    size_t len;                 /* address bytes: 4 or 16 */
    unsigned char addr[16];     /* network address, host bits cleared */
    int bits;
};

static void mask_host_bits(unsigned char *addr, size_t len, int bits)
{
    for (size_t i = 0; i < len; i++) {
        int keep = bits - (int)i * 8;
        if (keep >= 8)
            continue;
        addr[i] &= keep <= 0 ? 0 : (unsigned char)(0xff << (8 - keep));
    }
}

static int parse_prefix(const char *in, struct ip_prefix *out, char *err, size_t err_len)
{
    char buf[HW_PREFIX_TEXT_MAX];
    if (!in || !*in) {
        snprintf(err, err_len, "empty prefix");
        return -1;
    }
    if (strlen(in) >= sizeof buf) {
        snprintf(err, err_len, "prefix \"%.60s...\" is too long", in);
        return -1;
    }
    memcpy(buf, in, strlen(in) + 1);
    char *slash = strchr(buf, '/');
    if (!slash) {
        snprintf(err, err_len, "prefix \"%s\" has no /length (e.g. 192.168.1.0/24)", in);
        return -1;
    }
    *slash = '\0';
    const char *length = slash + 1;

    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = 4;
        out->len = 4;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = 6;
        out->len = 16;
    } else {
        snprintf(err, err_len, "prefix \"%s\": \"%s\" is not an IPv4 or IPv6 address", in, buf);
        return -1;
    }
    int max_bits = (int)out->len * 8;
    size_t digits = strspn(length, "0123456789");
    if (digits == 0 || digits > 3 || length[digits] != '\0' || atoi(length) > max_bits ||
        (digits > 1 && length[0] == '0')) {
        snprintf(err, err_len, "prefix \"%s\": length must be a number from 0 to %d", in, max_bits);
        return -1;
    }
    out->bits = atoi(length);
    mask_host_bits(out->addr, out->len, out->bits);
    return 0;
}

static void format_prefix(const struct ip_prefix *p, char out[HW_PREFIX_TEXT_MAX])
{
    char addr[HW_IP_TEXT_MAX];
    inet_ntop(p->family == 4 ? AF_INET : AF_INET6, p->addr, addr, sizeof addr);
    snprintf(out, HW_PREFIX_TEXT_MAX, "%s/%d", addr, p->bits);
}

int hw_prefix_canonical(const char *in, char out[HW_PREFIX_TEXT_MAX], char *err, size_t err_len)
{
    struct ip_prefix p;
    if (parse_prefix(in, &p, err, err_len) < 0)
        return -1;
    format_prefix(&p, out);
    return 0;
}

/* ---- address allocation ---- */

/* Addresses Tailscale gives a meaning inside its own ranges (as Headscale skips them). */
static const struct {
    int family;
    const char *first, *last;
} tailscale_reserved[] = {
    {4, "100.100.100.100", "100.100.100.100"},       /* Quad100: MagicDNS and the local API */
    {4, "100.115.92.0", "100.115.93.255"},           /* ChromeOS VM range (100.115.92.0/23) */
    {6, "fd7a:115c:a1e0::53", "fd7a:115c:a1e0::53"}, /* Quad100 over IPv6 */
};

struct host_range {
    int family;
    size_t len;
    unsigned char first[16], last[16];
    struct ip_prefix prefix;
};

static int cmp_addr(const unsigned char *a, const unsigned char *b, size_t len)
{
    return memcmp(a, b, len);
}

static bool increment(unsigned char *addr, size_t len)
{
    for (size_t i = len; i-- > 0;) {
        if (++addr[i] != 0)
            return true;
    }
    return false;   /* wrapped past the top */
}

static void decrement(unsigned char *addr, size_t len)
{
    for (size_t i = len; i-- > 0;) {
        if (addr[i]-- != 0)
            return;
    }
}

static void to_text(int family, const unsigned char *addr, char out[HW_IP_TEXT_MAX])
{
    inet_ntop(family == 4 ? AF_INET : AF_INET6, addr, out, HW_IP_TEXT_MAX);
}

/* If addr is reserved, writes the last address of its reserved range. */
static bool reserved_until(int family, const unsigned char *addr, unsigned char last_out[16])
{
    size_t len = family == 4 ? 4 : 16;
    for (size_t i = 0; i < HW_ARRAY_LEN(tailscale_reserved); i++) {
        unsigned char lo[16], hi[16];
        if (tailscale_reserved[i].family != family)
            continue;
        inet_pton(family == 4 ? AF_INET : AF_INET6, tailscale_reserved[i].first, lo);
        inet_pton(family == 4 ? AF_INET : AF_INET6, tailscale_reserved[i].last, hi);
        if (cmp_addr(addr, lo, len) >= 0 && cmp_addr(addr, hi, len) <= 0) {
            memcpy(last_out, hi, len);
            return true;
        }
    }
    return false;
}

/* Hosts of a configured prefix: the network address is never handed out, nor the IPv4
 * broadcast address. Returns -1 (err set) on a bad prefix, 1 when it has no host. */
static int host_range_of(const char *config_key, const char *text, int family,
                         struct host_range *r, char *err, size_t err_len)
{
    char why[160];
    if (parse_prefix(text, &r->prefix, why, sizeof why) < 0) {
        snprintf(err, err_len, "%s: %s", config_key, why);
        return -1;
    }
    if (r->prefix.family != family) {
        snprintf(err, err_len, "%s \"%s\" is not an IPv%d prefix", config_key, text, family);
        return -1;
    }
    r->family = family;
    r->len = r->prefix.len;
    memcpy(r->first, r->prefix.addr, r->len);
    memcpy(r->last, r->prefix.addr, r->len);
    for (size_t i = 0; i < r->len; i++) {
        int keep = r->prefix.bits - (int)i * 8;
        if (keep < 8)
            r->last[i] |= keep <= 0 ? 0xff : (unsigned char)(0xff >> keep);
    }
    increment(r->first, r->len);
    if (family == 4)
        decrement(r->last, r->len);
    return cmp_addr(r->first, r->last, r->len) > 0 ? 1 : 0;
}

static void full_error(const struct host_range *r, char *err, size_t err_len)
{
    char prefix[HW_PREFIX_TEXT_MAX];
    format_prefix(&r->prefix, prefix);
    snprintf(err, err_len, "IPv%d prefix %s is full: widen prefixes.v%d in the configuration or "
             "delete unused nodes", r->family, prefix, r->family);
}

/* Lowest address in [from, r->last] that no node holds and Tailscale does not reserve.
 * Returns 0, 1 when there is none, -1 on a store error (err set). */
static int first_free_from(struct hw_db *db, const struct host_range *r, const unsigned char *from,
                           const unsigned char *to, unsigned char out[16], char *err, size_t err_len)
{
    unsigned char start[16];
    memcpy(start, from, r->len);
    /* Each turn either returns or jumps past one reserved range: a handful of turns. */
    for (size_t turn = 0; turn <= HW_ARRAY_LEN(tailscale_reserved); turn++) {
        if (cmp_addr(start, to, r->len) > 0)
            return 1;
        char from_text[HW_IP_TEXT_MAX], to_text_[HW_IP_TEXT_MAX], found[HW_IP_TEXT_MAX];
        to_text(r->family, start, from_text);
        to_text(r->family, to, to_text_);
        int rc = hw_db_ip_first_free(db, from_text, to_text_, found);
        if (rc == HW_DB_NOT_FOUND)
            return 1;
        if (rc != HW_DB_OK) {
            snprintf(err, err_len, "allocating an IPv%d address failed: %s", r->family, hw_db_errmsg(db));
            return -1;
        }
        inet_pton(r->family == 4 ? AF_INET : AF_INET6, found, out);
        unsigned char reserved_last[16];
        if (!reserved_until(r->family, out, reserved_last))
            return 0;
        memcpy(start, reserved_last, r->len);
        if (!increment(start, r->len))
            return 1;
    }
    return 1;
}

/* Lowest free host. The cursor lets consecutive allocations skip the addresses already
 * handed out instead of walking them again: amortised, one index probe per call. */
static int pick_sequential(struct hw_db *db, const struct host_range *r, unsigned char out[16],
                           char *err, size_t err_len)
{
    unsigned char start[16];
    memcpy(start, r->first, r->len);
    char base_text[HW_IP_TEXT_MAX], next_text[HW_IP_TEXT_MAX];
    int rc = hw_db_ip_cursor_get(db, r->family, base_text, next_text);
    if (rc == HW_DB_OK) {
        unsigned char base[16], next[16];
        int af = r->family == 4 ? AF_INET : AF_INET6;
        if (inet_pton(af, base_text, base) == 1 && inet_pton(af, next_text, next) == 1 &&
            cmp_addr(base, r->first, r->len) == 0 && cmp_addr(next, r->first, r->len) > 0)
            memcpy(start, next, r->len);
    } else if (rc != HW_DB_NOT_FOUND) {
        snprintf(err, err_len, "allocating an IPv%d address failed: %s", r->family, hw_db_errmsg(db));
        return -1;
    }
    rc = first_free_from(db, r, start, r->last, out, err, err_len);
    if (rc != 0 || cmp_addr(out, start, r->len) == 0)
        return rc;   /* nothing new learnt: spare the write */
    char first_text[HW_IP_TEXT_MAX], out_text[HW_IP_TEXT_MAX];
    to_text(r->family, r->first, first_text);
    to_text(r->family, out, out_text);
    if (hw_db_ip_cursor_set(db, first_text, out_text) != HW_DB_OK) {
        snprintf(err, err_len, "allocating an IPv%d address failed: %s", r->family, hw_db_errmsg(db));
        return -1;
    }
    return 0;
}

/* A uniformly random address of the prefix; may be the network or broadcast address. */
static void random_in_prefix(const struct host_range *r, unsigned char out[16])
{
    unsigned char noise[16];
    randombytes_buf(noise, r->len);
    for (size_t i = 0; i < r->len; i++) {
        int keep = r->prefix.bits - (int)i * 8;
        unsigned char host_mask = keep >= 8 ? 0 : keep <= 0 ? 0xff : (unsigned char)(0xff >> keep);
        out[i] = (unsigned char)((r->prefix.addr[i] & ~host_mask) | (noise[i] & host_mask));
    }
}

/* Uniform among free addresses by rejection sampling; a nearly full prefix, where that
 * keeps missing, falls back to the first free address after a random point. */
static int pick_random(struct hw_db *db, const struct host_range *r, unsigned char out[16],
                       char *err, size_t err_len)
{
    enum { ATTEMPTS = 64 };
    unsigned char candidate[16], reserved_last[16];
    char text[HW_IP_TEXT_MAX];
    for (int i = 0; i < ATTEMPTS; i++) {
        random_in_prefix(r, candidate);
        if (cmp_addr(candidate, r->first, r->len) < 0 || cmp_addr(candidate, r->last, r->len) > 0 ||
            reserved_until(r->family, candidate, reserved_last))
            continue;
        to_text(r->family, candidate, text);
        if (!hw_db_ip_taken(db, text)) {
            memcpy(out, candidate, r->len);
            return 0;
        }
    }
    random_in_prefix(r, candidate);
    if (cmp_addr(candidate, r->first, r->len) < 0)
        memcpy(candidate, r->first, r->len);
    if (cmp_addr(candidate, r->last, r->len) > 0)
        memcpy(candidate, r->last, r->len);
    int rc = first_free_from(db, r, candidate, r->last, out, err, err_len);
    if (rc != 1 || cmp_addr(candidate, r->first, r->len) == 0)
        return rc;
    decrement(candidate, r->len);
    return first_free_from(db, r, r->first, candidate, out, err, err_len);
}

/* One family: "" in out when the prefix is not configured. */
static int pick_family(struct hw_db *db, const struct hw_config *cfg, int family,
                       char out[HW_IP_TEXT_MAX], char *err, size_t err_len)
{
    const char *text = family == 4 ? cfg->prefix_v4 : cfg->prefix_v6;
    out[0] = '\0';
    if (!text || !*text)
        return 0;
    struct host_range r;
    int rc = host_range_of(family == 4 ? "prefixes.v4" : "prefixes.v6", text, family, &r, err, err_len);
    if (rc < 0)
        return -1;
    unsigned char addr[16];
    if (rc == 0)
        rc = cfg->allocation == HW_ALLOC_RANDOM ? pick_random(db, &r, addr, err, err_len)
                                                : pick_sequential(db, &r, addr, err, err_len);
    if (rc == 1)
        full_error(&r, err, err_len);
    if (rc != 0)
        return -1;
    to_text(family, addr, out);
    return 0;
}

int hw_ipalloc_pick(struct hw_db *db, const struct hw_config *cfg, char v4_out[HW_IP_TEXT_MAX],
                    char v6_out[HW_IP_TEXT_MAX], char *err, size_t err_len)
{
    v4_out[0] = v6_out[0] = '\0';
    if ((!cfg->prefix_v4 || !*cfg->prefix_v4) && (!cfg->prefix_v6 || !*cfg->prefix_v6)) {
        snprintf(err, err_len, "no address prefix configured: set prefixes.v4 and/or prefixes.v6");
        return -1;
    }
    if (pick_family(db, cfg, 4, v4_out, err, err_len) < 0 ||
        pick_family(db, cfg, 6, v6_out, err, err_len) < 0) {
        v4_out[0] = v6_out[0] = '\0';
        return -1;
    }
    return 0;
}

/* ---- given names ---- */

void hw_given_name_from_hostname(const char *hostname, char out[HW_NAME_MAX])
{
    size_t n = 0;
    /* "Laptop.local" names the machine "laptop": the domain is not part of the name. */
    for (const char *p = hostname ? hostname : ""; *p && *p != '.' && n < HW_NAME_MAX - 1; p++) {
        unsigned char c = (unsigned char)*p;
        if (isascii(c) && isalnum(c))
            out[n++] = (char)tolower(c);
        else if (n > 0 && out[n - 1] != '-')
            out[n++] = '-';
    }
    while (n > 0 && out[n - 1] == '-')
        n--;
    out[n] = '\0';
    if (n == 0)
        snprintf(out, HW_NAME_MAX, "node");
}

int hw_given_name_unique(struct hw_db *db, const char *base, int64_t except_node_id,
                         char out[HW_NAME_MAX])
{
    enum { SUFFIX_ROOM = 8 };   /* "-" and up to 7 digits */
    const char *wanted = base && *base ? base : "node";
    if (!hw_db_given_name_taken(db, wanted, except_node_id)) {
        snprintf(out, HW_NAME_MAX, "%.*s", HW_NAME_MAX - 1, wanted);
        return 0;
    }
    char stem[HW_NAME_MAX];
    snprintf(stem, sizeof stem, "%.*s", HW_NAME_MAX - 1 - SUFFIX_ROOM, wanted);
    size_t stem_len = strlen(stem);
    while (stem_len > 1 && stem[stem_len - 1] == '-')
        stem[--stem_len] = '\0';
    unsigned long k = 0;
    int rc = hw_db_given_name_first_free_suffix(db, stem, except_node_id, &k);
    if (rc != HW_DB_OK)
        return rc;
    int len = snprintf(out, HW_NAME_MAX, "%s-%lu", stem, k);
    if (len < 0 || len >= HW_NAME_MAX)   /* cannot happen: the stem left room for 7 digits */
        return HW_DB_INVALID;
    return 0;
}

/* ---- registration ---- */

static int64_t expiry_from_config(const struct hw_config *cfg, int64_t now)
{
    if (cfg->node_expiry_ms <= 0)
        return 0;
    return now + (cfg->node_expiry_ms + 999) / 1000;
}

/* A machine that logs in again keeps its node: new keys and expiry, same addresses and
 * name; only an address family added to the configuration since gets one now. */
static int relogin(struct hw_db *db, const struct hw_config *cfg, const struct hw_pending *p,
                   int64_t namespace_id, int64_t now, struct hw_node *node, char *err, size_t err_len)
{
    snprintf(node->node_key, sizeof node->node_key, "%s", p->node_key);
    if (p->disco_key[0])
        snprintf(node->disco_key, sizeof node->disco_key, "%s", p->disco_key);
    snprintf(node->hostname, sizeof node->hostname, "%s", p->hostname);
    if (p->hostinfo_json) {
        free(node->hostinfo_json);
        node->hostinfo_json = hw_strdup(p->hostinfo_json);
    }
    node->namespace_id = namespace_id;
    node->expiry = expiry_from_config(cfg, now);
    snprintf(node->register_method, sizeof node->register_method, "cli");
    if (!node->ipv4[0] && pick_family(db, cfg, 4, node->ipv4, err, err_len) < 0)
        return -1;
    if (!node->ipv6[0] && pick_family(db, cfg, 6, node->ipv6, err, err_len) < 0)
        return -1;
    if (hw_db_node_update(db, node) != HW_DB_OK) {
        snprintf(err, err_len, "updating node %lld failed: %s", (long long)node->id, hw_db_errmsg(db));
        return -1;
    }
    return 0;
}

static int create_node(struct hw_db *db, const struct hw_config *cfg, const struct hw_pending *p,
                       int64_t namespace_id, int64_t now, struct hw_node *node, char *err, size_t err_len)
{
    memset(node, 0, sizeof *node);
    snprintf(node->machine_key, sizeof node->machine_key, "%s", p->machine_key);
    snprintf(node->node_key, sizeof node->node_key, "%s", p->node_key);
    snprintf(node->disco_key, sizeof node->disco_key, "%s", p->disco_key);
    snprintf(node->hostname, sizeof node->hostname, "%s", p->hostname);
    node->hostinfo_json = p->hostinfo_json ? hw_strdup(p->hostinfo_json) : NULL;
    node->namespace_id = namespace_id;
    node->expiry = expiry_from_config(cfg, now);
    snprintf(node->register_method, sizeof node->register_method, "cli");
    if (hw_ipalloc_pick(db, cfg, node->ipv4, node->ipv6, err, err_len) < 0)
        return -1;
    char base[HW_NAME_MAX];
    hw_given_name_from_hostname(p->hostname, base);
    if (hw_given_name_unique(db, base, 0, node->given_name) != 0) {
        snprintf(err, err_len, "choosing a name for the node failed: %s", hw_db_errmsg(db));
        return -1;
    }
    if (hw_db_node_insert(db, node) != HW_DB_OK) {
        snprintf(err, err_len, "storing the node failed: %s", hw_db_errmsg(db));
        return -1;
    }
    return 0;
}

int hw_nodes_register_pending(struct hw_db *db, const struct hw_config *cfg, const char *reg_id,
                              int64_t namespace_id, struct hw_node *out, char *err, size_t err_len)
{
    struct hw_pending p = {0};
    struct hw_node node = {0};
    struct hw_namespace ns;
    int64_t now = hw_now();
    const char *id = reg_id ? reg_id : "";
    int rc = -1;

    if (hw_db_begin(db) != HW_DB_OK) {
        snprintf(err, err_len, "cannot start a transaction: %s", hw_db_errmsg(db));
        return -1;
    }
    int got = hw_db_pending_get(db, id, &p);
    if (got == HW_DB_NOT_FOUND) {
        snprintf(err, err_len, "no pending registration with id %.64s", id);
        goto done;
    }
    if (got != HW_DB_OK) {
        snprintf(err, err_len, "reading registration %.64s failed: %s", id, hw_db_errmsg(db));
        goto done;
    }
    if (p.expires_at != 0 && p.expires_at <= now) {
        snprintf(err, err_len, "registration id %.64s expired: run the login again on the client", id);
        goto done;
    }
    got = hw_db_namespace_get(db, namespace_id, &ns);
    if (got != HW_DB_OK) {
        snprintf(err, err_len, "%s", hw_db_errmsg(db));
        goto done;
    }

    got = hw_db_node_get_by_machine_key(db, p.machine_key, &node);
    if (got == HW_DB_OK) {
        if (relogin(db, cfg, &p, namespace_id, now, &node, err, err_len) < 0)
            goto done;
    } else if (got == HW_DB_NOT_FOUND) {
        if (create_node(db, cfg, &p, namespace_id, now, &node, err, err_len) < 0)
            goto done;
    } else {
        snprintf(err, err_len, "looking up the machine key failed: %s", hw_db_errmsg(db));
        goto done;
    }

    if (hw_db_pending_delete(db, id) != HW_DB_OK) {
        snprintf(err, err_len, "removing registration %.64s failed: %s", id, hw_db_errmsg(db));
        goto done;
    }
    if (hw_db_commit(db) != HW_DB_OK) {
        snprintf(err, err_len, "saving the registration failed: %s", hw_db_errmsg(db));
        hw_node_clear(&node);
        hw_pending_clear(&p);
        return -1;
    }
    rc = 0;
    if (out && hw_db_node_get(db, node.id, out) != HW_DB_OK) {
        snprintf(err, err_len, "node %lld was registered but reading it back failed: %s",
                 (long long)node.id, hw_db_errmsg(db));
        rc = -1;
    }
    hw_node_clear(&node);
    hw_pending_clear(&p);
    return rc;

done:
    hw_db_rollback(db);
    hw_node_clear(&node);
    hw_pending_clear(&p);
    return rc;
}
