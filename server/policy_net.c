/* The policy compiled against the nodes.
 *
 * Every node gets a signature: for each ACL, whether it is a source (S), a destination
 * (D) and a source by identity (SI: its own addresses appear in SrcIPs); for each ssh
 * rule, whether it is a source and a destination. The same bits are kept per rule as
 * columns over all nodes. Then
 *   a sees b    <=> some rule has a in S and b in D or the other way round (or both are
 *                   one namespace's untagged devices under an autogroup:self rule),
 * a test on two signature rows, and a's peers are the union of the D columns of the
 * rules a is a source of and the S columns of the rules it is a destination of: word-
 * wide ORs over the tailnet, never a loop over node pairs.
 *
 * A node change recomputes that node's row, flips its bit in the columns, and derives
 * who must hear about it from the same bitmaps: the nodes whose view of it changed
 * (its old and new peer sets differ exactly there) and the destinations of the rules
 * whose source addresses changed. SrcIPs arrays are built lazily per rule (and per
 * namespace for autogroup:self) and shared by every node's filter. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "server/policy_internal.h"

/* ---- int64 -> slot map (open addressing, backward-shift deletion) ---- */

struct i64map {
    int64_t *keys;
    uint32_t *vals;
    uint8_t *used;
    size_t cap, n;
};

static size_t i64_hash(int64_t k, size_t cap)
{
    uint64_t x = (uint64_t)k * 0x9e3779b97f4a7c15ULL;
    return (size_t)(x >> 17) & (cap - 1);
}

static bool i64_get(const struct i64map *m, int64_t k, uint32_t *out)
{
    if (!m->cap)
        return false;
    for (size_t i = i64_hash(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (!m->used[i])
            return false;
        if (m->keys[i] == k) {
            *out = m->vals[i];
            return true;
        }
    }
}

static void i64_put(struct i64map *m, int64_t k, uint32_t v);

static void i64_grow(struct i64map *m)
{
    struct i64map old = *m;
    m->cap = old.cap ? old.cap * 2 : 64;
    m->keys = hw_calloc(m->cap, sizeof *m->keys);
    m->vals = hw_calloc(m->cap, sizeof *m->vals);
    m->used = hw_calloc(m->cap, 1);
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.used[i])
            i64_put(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
    free(old.used);
}

static void i64_put(struct i64map *m, int64_t k, uint32_t v)
{
    if ((m->n + 1) * 2 > m->cap)
        i64_grow(m);
    size_t i = i64_hash(k, m->cap);
    while (m->used[i] && m->keys[i] != k)
        i = (i + 1) & (m->cap - 1);
    if (!m->used[i])
        m->n++;
    m->used[i] = 1;
    m->keys[i] = k;
    m->vals[i] = v;
}

static void i64_del(struct i64map *m, int64_t k)
{
    if (!m->cap)
        return;
    size_t mask = m->cap - 1, i = i64_hash(k, m->cap);
    while (m->used[i] && m->keys[i] != k)
        i = (i + 1) & mask;
    if (!m->used[i])
        return;
    m->used[i] = 0;
    m->n--;
    /* Pull later members of the probe run back over the hole. */
    for (size_t j = (i + 1) & mask; m->used[j]; j = (j + 1) & mask) {
        size_t home = i64_hash(m->keys[j], m->cap);
        bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            m->used[i] = 1;
            m->used[j] = 0;
            i = j;
        }
    }
}

static void i64_free(struct i64map *m)
{
    free(m->keys);
    free(m->vals);
    free(m->used);
    memset(m, 0, sizeof *m);
}

/* ---- the net ---- */

struct pn_ns {
    char *name;
    int32_t user;                 /* policy user index, -1 when the policy never names it */
    uint32_t *members;            /* slots */
    size_t n, cap;
    json_t *default_src;          /* no policy: the namespace's SrcIPs */
    json_t **self_src;            /* per ACL with autogroup:self: sources among our devices */
    json_t **ssh_self;            /* per ssh rule with autogroup:self */
};

/* What the engine keeps of a node. */
struct pn_node {
    int64_t id;
    bool used;
    bool tagged;
    bool exit;                    /* has an approved exit route */
    uint32_t ns;
    size_t ns_pos;
    struct hw_ip addr[2];
    uint8_t n_addr;
    struct hw_ipprefix *routes;   /* approved subnet routes */
    size_t n_routes;
};

struct hw_policy_net {
    const struct hw_policy *p;
    struct pn_node *nodes;        /* by slot */
    size_t n_slots, cap_slots;
    uint32_t *free_slots;
    size_t n_free;
    size_t count;
    size_t words;                 /* words per column and per temporary bitmap */
    struct i64map by_id;
    struct pn_ns *ns;
    size_t n_ns;
    struct hw_strmap ns_ids;
    /* Signature rows: segments S, D, SI (one bit per ACL) and SS, SD (per ssh rule),
     * each word-aligned so rows combine a word at a time. */
    size_t wa, ws, sig_words;
    uint64_t *sigs;
    size_t tag_words;
    uint64_t *tagbits;            /* per slot: which policy tags the node carries */
    uint64_t **col;               /* 3 * n_acls + 2 * n_ssh columns */
    uint64_t *selfmask;           /* wa words: ACLs with autogroup:self */
    bool any_self;
    json_t **src_json;            /* per ACL */
    json_t **ssh_principals;      /* per ssh rule */
    struct hw_ipset internet;
    struct hw_ipset tailnet;
};

enum seg { SEG_S, SEG_D, SEG_SI, SEG_SS, SEG_SD };

static size_t seg_off(const struct hw_policy_net *net, enum seg s)
{
    switch (s) {
    case SEG_S: return 0;
    case SEG_D: return net->wa;
    case SEG_SI: return 2 * net->wa;
    case SEG_SS: return 3 * net->wa;
    default: return 3 * net->wa + net->ws;
    }
}

static size_t n_acls(const struct hw_policy_net *net) { return net->p ? net->p->n_acls : 0; }
static size_t n_ssh(const struct hw_policy_net *net) { return net->p ? net->p->n_ssh : 0; }

static uint64_t *column(const struct hw_policy_net *net, enum seg s, size_t i)
{
    size_t a = n_acls(net);
    switch (s) {
    case SEG_S: return net->col[i];
    case SEG_D: return net->col[a + i];
    case SEG_SI: return net->col[2 * a + i];
    case SEG_SS: return net->col[3 * a + i];
    default: return net->col[3 * a + n_ssh(net) + i];
    }
}

static size_t n_cols(const struct hw_policy_net *net) { return 3 * n_acls(net) + 2 * n_ssh(net); }

static uint64_t *sig_row(const struct hw_policy_net *net, uint32_t slot) { return net->sigs + (size_t)slot * net->sig_words; }

static bool row_bit(const struct hw_policy_net *net, const uint64_t *row, enum seg s, size_t i)
{
    return bit_get(row + seg_off(net, s), i);
}

struct hw_policy_net *hw_policy_net_new(const struct hw_policy *p)
{
    struct hw_policy_net *net = hw_calloc(1, sizeof *net);
    net->p = p;
    hw_strmap_init(&net->ns_ids);
    net->wa = words_for(n_acls(net));
    net->ws = words_for(n_ssh(net));
    net->sig_words = 3 * net->wa + 2 * net->ws;
    if (net->sig_words == 0)
        net->sig_words = 1;
    net->tag_words = p ? words_for(p->n_tags) : 0;
    if (net->tag_words == 0)
        net->tag_words = 1;
    net->col = hw_calloc(n_cols(net) + 1, sizeof *net->col);
    net->selfmask = hw_calloc(net->wa + 1, sizeof *net->selfmask);
    for (size_t i = 0; i < n_acls(net); i++)
        if (p->acls[i].has_self) {
            bit_set(net->selfmask, i);
            net->any_self = true;
        }
    net->src_json = hw_calloc(n_acls(net) + 1, sizeof *net->src_json);
    net->ssh_principals = hw_calloc(n_ssh(net) + 1, sizeof *net->ssh_principals);
    hw_ipset_add_internet(&net->internet);
    hw_ipset_normalize(&net->internet);
    hw_ipset_add_tailnet_ranges(&net->tailnet);
    hw_ipset_normalize(&net->tailnet);
    return net;
}

static void ns_drop_caches(struct hw_policy_net *net, struct pn_ns *ns)
{
    json_decref(ns->default_src);
    ns->default_src = NULL;
    for (size_t i = 0; ns->self_src && i < n_acls(net); i++) {
        json_decref(ns->self_src[i]);
        ns->self_src[i] = NULL;
    }
    for (size_t i = 0; ns->ssh_self && i < n_ssh(net); i++) {
        json_decref(ns->ssh_self[i]);
        ns->ssh_self[i] = NULL;
    }
}

void hw_policy_net_free(struct hw_policy_net *net)
{
    if (!net)
        return;
    for (size_t i = 0; i < net->n_slots; i++)
        free(net->nodes[i].routes);
    free(net->nodes);
    free(net->free_slots);
    i64_free(&net->by_id);
    for (size_t i = 0; i < net->n_ns; i++) {
        ns_drop_caches(net, &net->ns[i]);
        free(net->ns[i].name);
        free(net->ns[i].members);
        free(net->ns[i].self_src);
        free(net->ns[i].ssh_self);
    }
    free(net->ns);
    hw_strmap_free(&net->ns_ids);
    free(net->sigs);
    free(net->tagbits);
    for (size_t i = 0; i < n_cols(net); i++)
        free(net->col[i]);
    free(net->col);
    free(net->selfmask);
    for (size_t i = 0; i < n_acls(net); i++)
        json_decref(net->src_json[i]);
    free(net->src_json);
    for (size_t i = 0; i < n_ssh(net); i++)
        json_decref(net->ssh_principals[i]);
    free(net->ssh_principals);
    hw_ipset_clear(&net->internet);
    hw_ipset_clear(&net->tailnet);
    free(net);
}

size_t hw_policy_net_count(const struct hw_policy_net *net) { return net ? net->count : 0; }

void hw_policy_change_clear(struct hw_policy_change *c)
{
    if (!c)
        return;
    free(c->gained);
    free(c->lost);
    free(c->filters);
    memset(c, 0, sizeof *c);
}

static void *xrealloc(void *p, size_t n)
{
    void *g = realloc(p, n ? n : 1);
    if (!g)
        abort();
    return g;
}

static void grow_slots(struct hw_policy_net *net)
{
    size_t old = net->cap_slots, cap = old ? old * 2 : 64;
    size_t old_words = net->words, words = words_for(cap);
    net->nodes = xrealloc(net->nodes, cap * sizeof *net->nodes);
    memset(net->nodes + old, 0, (cap - old) * sizeof *net->nodes);
    net->sigs = xrealloc(net->sigs, cap * net->sig_words * sizeof *net->sigs);
    memset(net->sigs + old * net->sig_words, 0, (cap - old) * net->sig_words * sizeof *net->sigs);
    net->tagbits = xrealloc(net->tagbits, cap * net->tag_words * sizeof *net->tagbits);
    memset(net->tagbits + old * net->tag_words, 0, (cap - old) * net->tag_words * sizeof *net->tagbits);
    for (size_t c = 0; c < n_cols(net); c++) {
        net->col[c] = xrealloc(net->col[c], words * sizeof **net->col);
        memset(net->col[c] + old_words, 0, (words - old_words) * sizeof **net->col);
    }
    net->cap_slots = cap;
    net->words = words;
}

static uint32_t ns_index(struct hw_policy_net *net, const char *name)
{
    void *v = hw_strmap_get(&net->ns_ids, name);
    if (v)
        return (uint32_t)((uintptr_t)v - 1);
    net->ns = xrealloc(net->ns, (net->n_ns + 1) * sizeof *net->ns);
    struct pn_ns *ns = &net->ns[net->n_ns];
    memset(ns, 0, sizeof *ns);
    ns->name = hw_strdup(name);
    ns->user = pol_user_id(net->p, name);
    hw_strmap_put(&net->ns_ids, name, (void *)(uintptr_t)(net->n_ns + 1));
    return (uint32_t)net->n_ns++;
}

static void ns_add(struct hw_policy_net *net, uint32_t slot)
{
    struct pn_node *n = &net->nodes[slot];
    struct pn_ns *ns = &net->ns[n->ns];
    if (ns->n == ns->cap) {
        ns->cap = ns->cap ? ns->cap * 2 : 8;
        ns->members = xrealloc(ns->members, ns->cap * sizeof *ns->members);
    }
    n->ns_pos = ns->n;
    ns->members[ns->n++] = slot;
}

static void ns_remove(struct hw_policy_net *net, uint32_t slot)
{
    struct pn_node *n = &net->nodes[slot];
    struct pn_ns *ns = &net->ns[n->ns];
    uint32_t last = ns->members[--ns->n];
    ns->members[n->ns_pos] = last;
    net->nodes[last].ns_pos = n->ns_pos;
}

/* ---- matching one node against aliases ---- */

/* A candidate node state, before it is installed in a slot. */
struct nstate {
    bool present;
    int32_t user;                 /* policy user of its namespace */
    uint32_t ns;
    bool tagged, exit;
    const uint64_t *tagbits;
    struct hw_ip addr[2];
    uint8_t n_addr;
    const struct hw_ipprefix *routes;
    size_t n_routes;
};

static bool ident_match(const struct hw_policy *p, const struct pa *a, const struct nstate *st)
{
    switch (a->kind) {
    case PA_USER: return !st->tagged && st->user >= 0 && (uint32_t)st->user == a->ref;
    case PA_GROUP: return !st->tagged && pol_user_in_group(p, st->user, a->ref);
    case PA_TAG: return st->tagged && bit_get(st->tagbits, a->ref);
    case PA_MEMBER: return !st->tagged;
    case PA_TAGGED: return st->tagged;
    default: return false;
    }
}

/* A literal range names a node when it holds one of its addresses or overlaps a
 * subnet it routes (subnet routers act for their subnets). */
static bool lit_match(const struct pa *a, const struct nstate *st)
{
    if (a->kind != PA_HOST && a->kind != PA_PREFIX)
        return false;
    for (uint8_t i = 0; i < st->n_addr; i++)
        if (hw_ipprefix_contains(&a->prefix, &st->addr[i]))
            return true;
    for (size_t i = 0; i < st->n_routes; i++)
        if (hw_ipprefix_overlaps(&a->prefix, &st->routes[i]))
            return true;
    return false;
}

/* ... and an exit node stands for the public internet. */
static bool lit_reaches_exit(const struct hw_policy_net *net, const struct pa *a, const struct nstate *st)
{
    if (!st->exit || (a->kind != PA_HOST && a->kind != PA_PREFIX))
        return false;
    struct hw_iprange r = hw_ipprefix_range(&a->prefix);
    return hw_ipset_overlaps_range(&net->internet, &r);
}

static bool dst_match(const struct hw_policy_net *net, const struct pa *a, const struct nstate *st)
{
    if (a->kind == PA_ANY)
        return true;
    if (a->kind == PA_INTERNET)
        return st->exit;
    return ident_match(net->p, a, st) || lit_match(a, st) || lit_reaches_exit(net, a, st);
}

static void compute_row(const struct hw_policy_net *net, const struct nstate *st, uint64_t *row)
{
    memset(row, 0, net->sig_words * sizeof *row);
    const struct hw_policy *p = net->p;
    if (!p || !st->present)
        return;
    for (size_t i = 0; i < p->n_acls; i++) {
        const struct pol_acl *acl = &p->acls[i];
        bool s = false, si = false, d = false;
        for (size_t k = 0; k < acl->n_src; k++) {
            const struct pa *a = &acl->src[k];
            bool id = ident_match(p, a, st);
            si |= id;
            s |= id || a->kind == PA_ANY || lit_match(a, st);
        }
        for (size_t k = 0; k < acl->n_dst && !d; k++)
            d = dst_match(net, &acl->dst[k].a, st);
        if (s)
            bit_set(row + seg_off(net, SEG_S), i);
        if (si)
            bit_set(row + seg_off(net, SEG_SI), i);
        if (d)
            bit_set(row + seg_off(net, SEG_D), i);
    }
    for (size_t j = 0; j < p->n_ssh; j++) {
        const struct pol_ssh *r = &p->ssh[j];
        bool s = false, d = false;
        for (size_t k = 0; k < r->n_src && !s; k++)
            s = ident_match(p, &r->src[k], st);
        for (size_t k = 0; k < r->n_dst && !d; k++)
            d = ident_match(p, &r->dst[k], st);
        if (s)
            bit_set(row + seg_off(net, SEG_SS), j);
        if (d)
            bit_set(row + seg_off(net, SEG_SD), j);
    }
}

static struct nstate state_of(const struct hw_policy_net *net, uint32_t slot)
{
    const struct pn_node *n = &net->nodes[slot];
    struct nstate st = {.present = n->used, .user = net->ns[n->ns].user, .ns = n->ns, .tagged = n->tagged,
                        .exit = n->exit, .tagbits = net->tagbits + (size_t)slot * net->tag_words,
                        .n_addr = n->n_addr, .routes = n->routes, .n_routes = n->n_routes};
    memcpy(st.addr, n->addr, sizeof st.addr);
    return st;
}

/* ---- visibility ---- */

static bool row_has_self_source(const struct hw_policy_net *net, const uint64_t *row)
{
    for (size_t w = 0; w < net->wa; w++)
        if (row[seg_off(net, SEG_S) + w] & net->selfmask[w])
            return true;
    return false;
}

static void peers_bitmap(const struct hw_policy_net *net, uint32_t slot, uint64_t *out)
{
    memset(out, 0, net->words * sizeof *out);
    const struct pn_node *me = &net->nodes[slot];
    const struct pn_ns *ns = &net->ns[me->ns];
    if (!net->p) {
        for (size_t k = 0; k < ns->n; k++)
            bit_set(out, ns->members[k]);
        bit_clr(out, slot);
        return;
    }
    const uint64_t *row = sig_row(net, slot);
    for (size_t i = 0; i < n_acls(net); i++) {
        const uint64_t *c = NULL;
        if (row_bit(net, row, SEG_S, i)) {
            c = column(net, SEG_D, i);
            for (size_t w = 0; w < net->words; w++)
                out[w] |= c[w];
        }
        if (row_bit(net, row, SEG_D, i)) {
            c = column(net, SEG_S, i);
            for (size_t w = 0; w < net->words; w++)
                out[w] |= c[w];
        }
    }
    if (net->any_self && !me->tagged) {
        bool mine = row_has_self_source(net, row);
        for (size_t k = 0; k < ns->n; k++) {
            uint32_t m = ns->members[k];
            if (!net->nodes[m].tagged && (mine || row_has_self_source(net, sig_row(net, m))))
                bit_set(out, m);
        }
    }
    bit_clr(out, slot);
}

static bool slots_see(const struct hw_policy_net *net, uint32_t a, uint32_t b)
{
    if (a == b)
        return false;
    const struct pn_node *na = &net->nodes[a], *nb = &net->nodes[b];
    if (!net->p)
        return na->ns == nb->ns;
    const uint64_t *ra = sig_row(net, a), *rb = sig_row(net, b);
    size_t s = seg_off(net, SEG_S), d = seg_off(net, SEG_D);
    for (size_t w = 0; w < net->wa; w++)
        if ((ra[s + w] & rb[d + w]) | (ra[d + w] & rb[s + w]))
            return true;
    return net->any_self && na->ns == nb->ns && !na->tagged && !nb->tagged &&
           (row_has_self_source(net, ra) || row_has_self_source(net, rb));
}

static bool slot_of(const struct hw_policy_net *net, int64_t id, uint32_t *slot)
{
    return net && i64_get(&net->by_id, id, slot);
}

bool hw_policy_sees(const struct hw_policy_net *net, int64_t a, int64_t b)
{
    uint32_t sa, sb;
    return slot_of(net, a, &sa) && slot_of(net, b, &sb) && slots_see(net, sa, sb);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t *bitmap_ids(const struct hw_policy_net *net, const uint64_t *bm, size_t *n_out)
{
    size_t n = 0;
    for (size_t w = 0; w < net->words; w++)
        n += (size_t)__builtin_popcountll(bm[w]);
    *n_out = n;
    if (!n)
        return NULL;
    int64_t *ids = hw_malloc(n * sizeof *ids);
    size_t k = 0;
    bool ascending = true;
    for (size_t w = 0; w < net->words; w++)
        for (uint64_t bits = bm[w]; bits; bits &= bits - 1) {
            ids[k] = net->nodes[w * 64 + (size_t)__builtin_ctzll(bits)].id;
            ascending = ascending && (k == 0 || ids[k - 1] < ids[k]);
            k++;
        }
    /* Slots follow ids when nodes were added in id order (the usual case): a 10,000-id
     * sort per call would cost more than building the bitmap. */
    if (!ascending)
        qsort(ids, n, sizeof *ids, cmp_i64);
    return ids;
}

int64_t *hw_policy_peers(const struct hw_policy_net *net, int64_t id, size_t *n_out)
{
    *n_out = 0;
    uint32_t slot;
    if (!slot_of(net, id, &slot))
        return NULL;
    uint64_t *bm = hw_malloc(net->words * sizeof *bm);
    peers_bitmap(net, slot, bm);
    int64_t *ids = bitmap_ids(net, bm, n_out);
    free(bm);
    return ids;
}

/* ---- routes ---- */

bool hw_policy_route_visible(const struct hw_policy_net *net, int64_t viewer, int64_t router, const char *prefix)
{
    uint32_t sv, sr;
    struct hw_ipprefix route;
    if (!slot_of(net, viewer, &sv) || !slot_of(net, router, &sr) || sv == sr || !prefix ||
        hw_ipprefix_parse(prefix, &route) != 0)
        return false;
    if (!net->p)
        return net->nodes[sv].ns == net->nodes[sr].ns;
    const uint64_t *row = sig_row(net, sv);
    struct hw_iprange rr = hw_ipprefix_range(&route);
    for (size_t i = 0; i < net->p->n_acls; i++) {
        const struct pol_acl *acl = &net->p->acls[i];
        bool src = row_bit(net, row, SEG_S, i), dst = row_bit(net, row, SEG_D, i);
        if (route.bits == 0) {
            if (src && acl->to_internet)
                return true;
            continue;
        }
        if (src && (acl->dst_any || hw_ipset_overlaps_range(&acl->dst_lit, &rr)))
            return true;
        /* Traffic from the subnet to the viewer needs the route for the answers. */
        if (dst && (acl->src_any || hw_ipset_overlaps_range(&acl->src_lit, &rr)))
            return true;
    }
    return false;
}

/* ---- node changes ---- */

static bool same_addrs(const struct nstate *a, const struct nstate *b)
{
    if (a->n_addr != b->n_addr)
        return false;
    for (uint8_t i = 0; i < a->n_addr; i++)
        if (hw_ip_cmp(&a->addr[i], &b->addr[i]) != 0)
            return false;
    return true;
}

static bool same_subnets(const struct nstate *a, const struct nstate *b)
{
    if (a->n_routes != b->n_routes)
        return false;
    for (size_t i = 0; i < a->n_routes; i++)
        if (!hw_ipprefix_equal(&a->routes[i], &b->routes[i]))
            return false;
    return true;
}

static bool same_routes(const struct nstate *a, const struct nstate *b)
{
    return a->exit == b->exit && same_subnets(a, b);
}

/* What a node adds to "*" as a source beyond the Tailscale ranges: addresses outside
 * them and its subnet routes. Absent nodes add nothing. */
static bool same_star_part(const struct hw_policy_net *net, const struct nstate *a, const struct nstate *b)
{
    static const struct nstate none = {0};
    const struct nstate *x = a->present ? a : &none, *y = b->present ? b : &none;
    if (!same_subnets(x, y))
        return false;
    struct hw_ip ox[2], oy[2];
    size_t nx = 0, ny = 0;
    for (uint8_t i = 0; i < x->n_addr; i++)
        if (!hw_ipset_contains(&net->tailnet, &x->addr[i]))
            ox[nx++] = x->addr[i];
    for (uint8_t i = 0; i < y->n_addr; i++)
        if (!hw_ipset_contains(&net->tailnet, &y->addr[i]))
            oy[ny++] = y->addr[i];
    if (nx != ny)
        return false;
    for (size_t i = 0; i < nx; i++)
        if (hw_ip_cmp(&ox[i], &oy[i]) != 0)
            return false;
    return true;
}

static void mark_untagged_members(const struct hw_policy_net *net, uint32_t ns, uint64_t *out)
{
    const struct pn_ns *n = &net->ns[ns];
    for (size_t k = 0; k < n->n; k++)
        if (!net->nodes[n->members[k]].tagged)
            bit_set(out, n->members[k]);
}

static void or_column(const struct hw_policy_net *net, const uint64_t *c, uint64_t *out)
{
    for (size_t w = 0; w < net->words; w++)
        out[w] |= c[w];
}

/* Drops the cached source lists the change invalidates and marks in `filters` every
 * node whose filter or SSH policy reads one of them. o / n: the node before and after
 * (either may be absent), with their signature rows. */
static void invalidate(struct hw_policy_net *net, uint32_t slot, const struct nstate *o, const uint64_t *orow,
                       const struct nstate *n, const uint64_t *nrow, uint64_t *filters)
{
    bool addrs = !(o->present && n->present && same_addrs(o, n));
    bool star = !same_star_part(net, o, n);
    uint32_t nss[2];
    size_t n_nss = 0;
    if (o->present)
        nss[n_nss++] = o->ns;
    if (n->present && !(o->present && o->ns == n->ns))
        nss[n_nss++] = n->ns;

    if (!net->p) {
        bool changed = addrs || !(o->present && n->present && same_routes(o, n)) || n_nss > 1;
        if (!changed)
            return;
        for (size_t k = 0; k < n_nss; k++) {
            struct pn_ns *ns = &net->ns[nss[k]];
            json_decref(ns->default_src);
            ns->default_src = NULL;
            if (filters)
                for (size_t m = 0; m < ns->n; m++)
                    bit_set(filters, ns->members[m]);
        }
        return;
    }

    const struct hw_policy *p = net->p;
    for (size_t i = 0; i < p->n_acls; i++) {
        const struct pol_acl *acl = &p->acls[i];
        bool so = o->present && row_bit(net, orow, SEG_SI, i), sn = n->present && row_bit(net, nrow, SEG_SI, i);
        if (so != sn || ((so || sn) && addrs) || (acl->src_any && star)) {
            json_decref(net->src_json[i]);
            net->src_json[i] = NULL;
            if (filters)
                or_column(net, column(net, SEG_D, i), filters);
        }
        if (!acl->has_self)
            continue;
        for (size_t k = 0; k < n_nss; k++) {
            bool co = o->present && o->ns == nss[k] && !o->tagged && row_bit(net, orow, SEG_S, i);
            bool cn = n->present && n->ns == nss[k] && !n->tagged && row_bit(net, nrow, SEG_S, i);
            if (co == cn && !((co || cn) && addrs))
                continue;
            struct pn_ns *ns = &net->ns[nss[k]];
            if (ns->self_src) {
                json_decref(ns->self_src[i]);
                ns->self_src[i] = NULL;
            }
            if (filters)
                mark_untagged_members(net, nss[k], filters);
        }
    }
    for (size_t j = 0; j < p->n_ssh; j++) {
        bool so = o->present && row_bit(net, orow, SEG_SS, j), sn = n->present && row_bit(net, nrow, SEG_SS, j);
        if (so != sn || ((so || sn) && addrs)) {
            json_decref(net->ssh_principals[j]);
            net->ssh_principals[j] = NULL;
            if (filters)
                or_column(net, column(net, SEG_SD, j), filters);
        }
        if (!p->ssh[j].has_self)
            continue;
        for (size_t k = 0; k < n_nss; k++) {
            bool co = o->present && o->ns == nss[k] && !o->tagged && so;
            bool cn = n->present && n->ns == nss[k] && !n->tagged && sn;
            if (co == cn && !((co || cn) && addrs))
                continue;
            struct pn_ns *ns = &net->ns[nss[k]];
            if (ns->ssh_self) {
                json_decref(ns->ssh_self[j]);
                ns->ssh_self[j] = NULL;
            }
            if (filters)
                mark_untagged_members(net, nss[k], filters);
        }
    }
    /* The node's own filter depends on its destinations, addresses, routes and
     * whether autogroup:self applies to it. */
    if (filters && n->present) {
        bool own = !o->present || addrs || !same_routes(o, n) || o->tagged != n->tagged || o->ns != n->ns;
        size_t d = seg_off(net, SEG_D), sd = seg_off(net, SEG_SD);
        for (size_t w = 0; w < net->wa && !own; w++)
            own = orow[d + w] != nrow[d + w];
        for (size_t w = 0; w < net->ws && !own; w++)
            own = orow[sd + w] != nrow[sd + w];
        if (own)
            bit_set(filters, slot);
    }
}

static void write_columns(struct hw_policy_net *net, uint32_t slot, const uint64_t *row)
{
    const struct hw_policy *p = net->p;
    if (!p)
        return;
    static const enum seg acl_segs[] = {SEG_S, SEG_D, SEG_SI}, ssh_segs[] = {SEG_SS, SEG_SD};
    for (size_t s = 0; s < 3; s++)
        for (size_t i = 0; i < p->n_acls; i++) {
            if (row_bit(net, row, acl_segs[s], i))
                bit_set(column(net, acl_segs[s], i), slot);
            else
                bit_clr(column(net, acl_segs[s], i), slot);
        }
    for (size_t s = 0; s < 2; s++)
        for (size_t j = 0; j < p->n_ssh; j++) {
            if (row_bit(net, row, ssh_segs[s], j))
                bit_set(column(net, ssh_segs[s], j), slot);
            else
                bit_clr(column(net, ssh_segs[s], j), slot);
        }
}

static void fill_change(const struct hw_policy_net *net, const uint64_t *before, const uint64_t *after,
                        const uint64_t *filters, struct hw_policy_change *chg)
{
    uint64_t *tmp = hw_malloc(net->words * sizeof *tmp);
    for (size_t w = 0; w < net->words; w++)
        tmp[w] = after[w] & ~before[w];
    chg->gained = bitmap_ids(net, tmp, &chg->n_gained);
    for (size_t w = 0; w < net->words; w++)
        tmp[w] = before[w] & ~after[w];
    chg->lost = bitmap_ids(net, tmp, &chg->n_lost);
    chg->filters = bitmap_ids(net, filters, &chg->n_filters);
    free(tmp);
}

static int parse_node(const struct hw_policy_net *net, const struct hw_policy_node *node, struct nstate *st,
                      uint64_t *tagbits, struct hw_ipprefix **routes_out, char *err, size_t err_len)
{
    memset(st, 0, sizeof *st);
    st->present = true;
    st->tagged = node->n_tags > 0;
    st->tagbits = tagbits;
    for (size_t i = 0; i < node->n_tags; i++) {
        int32_t t = node->tags[i] ? pol_tag_id(net->p, node->tags[i]) : -1;
        if (t >= 0)
            bit_set(tagbits, (size_t)t);
    }
    const char *fams[2] = {node->ipv4, node->ipv6};
    for (int f = 0; f < 2; f++) {
        if (!fams[f] || !*fams[f])
            continue;
        struct hw_ip ip;
        if (hw_ip_parse(fams[f], &ip) < 0 || ip.fam != (f ? 6 : 4)) {
            snprintf(err, err_len, "node %lld: \"%s\" is not an IPv%d address", (long long)node->id, fams[f],
                     f ? 6 : 4);
            return -1;
        }
        st->addr[st->n_addr++] = ip;
    }
    struct hw_ipprefix *routes = node->n_routes ? hw_calloc(node->n_routes, sizeof *routes) : NULL;
    for (size_t i = 0; i < node->n_routes; i++) {
        struct hw_ipprefix r;
        if (!node->routes[i] || hw_ipprefix_parse(node->routes[i], &r) != 0) {
            snprintf(err, err_len, "node %lld: route \"%s\" is not a canonical CIDR prefix", (long long)node->id,
                     node->routes[i] ? node->routes[i] : "(null)");
            free(routes);
            return -1;
        }
        if (r.bits == 0)
            st->exit = true;
        else
            routes[st->n_routes++] = r;
    }
    *routes_out = routes;
    st->routes = routes;
    return 0;
}

int hw_policy_net_set_node(struct hw_policy_net *net, const struct hw_policy_node *node,
                           struct hw_policy_change *chg, char *err, size_t err_len)
{
    if (chg)
        memset(chg, 0, sizeof *chg);
    if (!net || !node || !node->ns) {
        snprintf(err, err_len, "node without a namespace");
        return -1;
    }
    uint64_t *tagbits = hw_calloc(net->tag_words, sizeof *tagbits);
    struct hw_ipprefix *routes = NULL;
    struct nstate n;
    if (parse_node(net, node, &n, tagbits, &routes, err, err_len) < 0) {
        free(tagbits);
        return -1;
    }
    n.ns = ns_index(net, node->ns);
    n.user = net->ns[n.ns].user;

    uint32_t slot;
    bool existed = slot_of(net, node->id, &slot);
    if (!existed) {
        if (net->n_free) {
            slot = net->free_slots[--net->n_free];
        } else {
            if (net->n_slots == net->cap_slots)
                grow_slots(net);
            slot = (uint32_t)net->n_slots++;
        }
    }
    uint64_t *before = NULL, *after = NULL, *filters = NULL;
    if (chg) {
        before = hw_calloc(net->words, sizeof *before);
        after = hw_malloc(net->words * sizeof *after);
        filters = hw_calloc(net->words, sizeof *filters);
        if (existed)
            peers_bitmap(net, slot, before);
    }
    /* The old state stays readable (rows, routes) until the new one is in place. */
    struct nstate o = existed ? state_of(net, slot) : (struct nstate){0};
    uint64_t *orow = hw_malloc(net->sig_words * sizeof *orow), *nrow = hw_malloc(net->sig_words * sizeof *nrow);
    memcpy(orow, sig_row(net, slot), net->sig_words * sizeof *orow);
    uint64_t *otags = hw_malloc(net->tag_words * sizeof *otags);
    memcpy(otags, net->tagbits + (size_t)slot * net->tag_words, net->tag_words * sizeof *otags);
    o.tagbits = otags;
    compute_row(net, &n, nrow);

    struct pn_node *pn = &net->nodes[slot];
    if (existed && pn->ns != n.ns)
        ns_remove(net, slot);
    struct hw_ipprefix *old_routes = pn->routes;
    bool join_ns = !existed || pn->ns != n.ns;
    pn->id = node->id;
    pn->used = true;
    pn->tagged = n.tagged;
    pn->exit = n.exit;
    pn->ns = n.ns;
    memcpy(pn->addr, n.addr, sizeof pn->addr);
    pn->n_addr = n.n_addr;
    pn->routes = routes;
    pn->n_routes = n.n_routes;
    if (join_ns)
        ns_add(net, slot);
    memcpy(net->tagbits + (size_t)slot * net->tag_words, tagbits, net->tag_words * sizeof *tagbits);
    n.tagbits = net->tagbits + (size_t)slot * net->tag_words;
    memcpy(sig_row(net, slot), nrow, net->sig_words * sizeof *nrow);
    write_columns(net, slot, nrow);
    if (!existed) {
        i64_put(&net->by_id, node->id, slot);
        net->count++;
    }

    invalidate(net, slot, &o, orow, &n, nrow, filters);
    if (chg) {
        peers_bitmap(net, slot, after);
        fill_change(net, before, after, filters, chg);
    }
    free(old_routes);
    free(before);
    free(after);
    free(filters);
    free(orow);
    free(nrow);
    free(otags);
    free(tagbits);
    return 0;
}

void hw_policy_net_remove_node(struct hw_policy_net *net, int64_t id, struct hw_policy_change *chg)
{
    if (chg)
        memset(chg, 0, sizeof *chg);
    uint32_t slot;
    if (!slot_of(net, id, &slot))
        return;
    uint64_t *before = NULL, *filters = NULL, *none = NULL;
    if (chg) {
        before = hw_malloc(net->words * sizeof *before);
        filters = hw_calloc(net->words, sizeof *filters);
        none = hw_calloc(net->words, sizeof *none);
        peers_bitmap(net, slot, before);
    }
    struct nstate o = state_of(net, slot), gone = {0};
    uint64_t *orow = hw_malloc(net->sig_words * sizeof *orow), *zero = hw_calloc(net->sig_words, sizeof *zero);
    memcpy(orow, sig_row(net, slot), net->sig_words * sizeof *orow);
    ns_remove(net, slot);
    write_columns(net, slot, zero);
    memset(sig_row(net, slot), 0, net->sig_words * sizeof *orow);
    struct pn_node *pn = &net->nodes[slot];
    pn->used = false;
    invalidate(net, slot, &o, orow, &gone, zero, filters);
    free(pn->routes);
    memset(pn, 0, sizeof *pn);
    memset(net->tagbits + (size_t)slot * net->tag_words, 0, net->tag_words * sizeof *net->tagbits);
    i64_del(&net->by_id, id);
    net->count--;
    if (net->n_free % 64 == 0)
        net->free_slots = xrealloc(net->free_slots, (net->n_free + 64) * sizeof *net->free_slots);
    net->free_slots[net->n_free++] = slot;
    if (chg) {
        bit_clr(filters, slot);
        fill_change(net, before, none, filters, chg);
    }
    free(before);
    free(filters);
    free(none);
    free(orow);
    free(zero);
}

struct hw_policy_net *hw_policy_net_build(const struct hw_policy *p, const struct hw_policy_node *nodes,
                                          size_t n, char *err, size_t err_len)
{
    struct hw_policy_net *net = hw_policy_net_new(p);
    for (size_t i = 0; i < n; i++)
        if (hw_policy_net_set_node(net, &nodes[i], NULL, err, err_len) < 0) {
            hw_policy_net_free(net);
            return NULL;
        }
    return net;
}

static bool same_json(json_t *a, json_t *b)
{
    bool same = (!a && !b) || (a && b && json_equal(a, b));
    json_decref(a);
    json_decref(b);
    return same;
}

void hw_policy_net_compare(struct hw_policy_net *old, struct hw_policy_net *cur, int64_t id, const char *check_url,
                           struct hw_policy_change *out)
{
    memset(out, 0, sizeof *out);
    size_t no, nn;
    int64_t *po = hw_policy_peers(old, id, &no), *pn = hw_policy_peers(cur, id, &nn);
    /* Both lists ascend: one merge pass splits them. */
    size_t i = 0, j = 0;
    out->gained = hw_malloc((nn + 1) * sizeof *out->gained);
    out->lost = hw_malloc((no + 1) * sizeof *out->lost);
    while (i < no || j < nn) {
        if (j == nn || (i < no && po[i] < pn[j]))
            out->lost[out->n_lost++] = po[i++];
        else if (i == no || pn[j] < po[i])
            out->gained[out->n_gained++] = pn[j++];
        else
            i++, j++;
    }
    free(po);
    free(pn);
    if (!same_json(hw_policy_filter(old, id), hw_policy_filter(cur, id)) ||
        !same_json(hw_policy_ssh(old, id, check_url), hw_policy_ssh(cur, id, check_url))) {
        out->filters = hw_malloc(sizeof *out->filters);
        out->filters[0] = id;
        out->n_filters = 1;
    }
}

/* Whether both nets hold the same ids in the same slots (built from one node list). */
static bool same_layout(const struct hw_policy_net *a, const struct hw_policy_net *b)
{
    if (a->n_slots != b->n_slots || a->words != b->words || a->count != b->count)
        return false;
    for (size_t i = 0; i < a->n_slots; i++)
        if (a->nodes[i].id != b->nodes[i].id || a->nodes[i].used != b->nodes[i].used)
            return false;
    return true;
}

void hw_policy_net_compare_all(struct hw_policy_net *old, struct hw_policy_net *cur, const char *check_url,
                               void (*fn)(int64_t id, const struct hw_policy_change *chg, void *arg), void *arg)
{
    if (!same_layout(old, cur)) {
        for (size_t i = 0; i < cur->n_slots; i++) {
            if (!cur->nodes[i].used)
                continue;
            struct hw_policy_change chg;
            hw_policy_net_compare(old, cur, cur->nodes[i].id, check_url, &chg);
            fn(cur->nodes[i].id, &chg, arg);
            hw_policy_change_clear(&chg);
        }
        return;
    }
    /* One slot layout: the peer sets compare a word at a time, and only differences
     * become ids. */
    uint64_t *bo = hw_malloc(cur->words * sizeof *bo), *bn = hw_malloc(cur->words * sizeof *bn);
    for (size_t slot = 0; slot < cur->n_slots; slot++) {
        if (!cur->nodes[slot].used)
            continue;
        int64_t id = cur->nodes[slot].id;
        struct hw_policy_change chg;
        memset(&chg, 0, sizeof chg);
        peers_bitmap(old, (uint32_t)slot, bo);
        peers_bitmap(cur, (uint32_t)slot, bn);
        size_t n_lost = 0, n_gained = 0;
        for (size_t w = 0; w < cur->words; w++) {
            n_lost += (size_t)__builtin_popcountll(bo[w] & ~bn[w]);
            n_gained += (size_t)__builtin_popcountll(bn[w] & ~bo[w]);
        }
        if (n_lost)
            chg.lost = hw_malloc(n_lost * sizeof *chg.lost);
        if (n_gained)
            chg.gained = hw_malloc(n_gained * sizeof *chg.gained);
        for (size_t w = 0; w < cur->words && (n_lost || n_gained); w++) {
            for (uint64_t lost = bo[w] & ~bn[w]; lost; lost &= lost - 1)
                chg.lost[chg.n_lost++] = cur->nodes[w * 64 + (size_t)__builtin_ctzll(lost)].id;
            for (uint64_t gained = bn[w] & ~bo[w]; gained; gained &= gained - 1)
                chg.gained[chg.n_gained++] = cur->nodes[w * 64 + (size_t)__builtin_ctzll(gained)].id;
        }
        if (chg.n_lost > 1)
            qsort(chg.lost, chg.n_lost, sizeof *chg.lost, cmp_i64);
        if (chg.n_gained > 1)
            qsort(chg.gained, chg.n_gained, sizeof *chg.gained, cmp_i64);
        if (!same_json(hw_policy_filter(old, id), hw_policy_filter(cur, id)) ||
            !same_json(hw_policy_ssh(old, id, check_url), hw_policy_ssh(cur, id, check_url))) {
            chg.filters = hw_malloc(sizeof *chg.filters);
            chg.filters[0] = id;
            chg.n_filters = 1;
        }
        fn(id, &chg, arg);
        hw_policy_change_clear(&chg);
    }
    free(bo);
    free(bn);
}

/* ---- packet filters ---- */

struct strv {
    char **v;
    size_t n, cap;
};

static void strv_add(struct strv *s, const char *text)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = hw_strdup(text);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The set's ranges and the extra strings, sorted and without repeats, as Tailscale's
 * control server lists SrcIPs. Consumes both. */
static json_t *src_array(struct hw_ipset *set, struct strv *extra)
{
    hw_ipset_normalize(set);
    char buf[HW_IPRANGE_STR_MAX];
    for (size_t i = 0; i < set->n; i++) {
        hw_iprange_format(&set->r[i], buf);
        strv_add(extra, buf);
    }
    if (extra->n)
        qsort(extra->v, extra->n, sizeof *extra->v, cmp_str);
    json_t *arr = json_array();
    for (size_t i = 0; i < extra->n; i++)
        if (i == 0 || strcmp(extra->v[i], extra->v[i - 1]) != 0)
            json_array_append_new(arr, json_string(extra->v[i]));
    for (size_t i = 0; i < extra->n; i++)
        free(extra->v[i]);
    free(extra->v);
    hw_ipset_clear(set);
    return arr;
}

static void add_node_addrs(struct hw_ipset *set, const struct pn_node *n)
{
    for (uint8_t i = 0; i < n->n_addr; i++)
        hw_ipset_add_ip(set, &n->addr[i]);
}

static void add_node_routes(struct strv *extra, const struct pn_node *n)
{
    char buf[HW_IP_STR_MAX];
    for (size_t i = 0; i < n->n_routes; i++) {
        hw_ipprefix_format(&n->routes[i], buf);
        strv_add(extra, buf);
    }
}

static json_t *acl_src(struct hw_policy_net *net, size_t i)
{
    if (net->src_json[i])
        return net->src_json[i];
    const struct pol_acl *acl = &net->p->acls[i];
    struct hw_ipset set = {0};
    struct strv extra = {0};
    const uint64_t *si = column(net, SEG_SI, i);
    for (size_t w = 0; w < net->words; w++)
        for (uint64_t bits = si[w]; bits; bits &= bits - 1)
            add_node_addrs(&set, &net->nodes[w * 64 + (size_t)__builtin_ctzll(bits)]);
    hw_ipset_add_set(&set, &acl->src_lit);
    if (acl->src_any) {
        /* "*": the Tailscale ranges, any node address outside them, and every approved
         * subnet (listed as routed, not merged). */
        hw_ipset_add_set(&set, &net->tailnet);
        for (size_t s = 0; s < net->n_slots; s++) {
            const struct pn_node *n = &net->nodes[s];
            if (!n->used)
                continue;
            for (uint8_t k = 0; k < n->n_addr; k++)
                if (!hw_ipset_contains(&net->tailnet, &n->addr[k]))
                    hw_ipset_add_ip(&set, &n->addr[k]);
            add_node_routes(&extra, n);
        }
    }
    net->src_json[i] = src_array(&set, &extra);
    return net->src_json[i];
}

static bool self_source(const struct hw_policy_net *net, uint32_t m, enum seg seg, size_t i)
{
    return !net->nodes[m].tagged && row_bit(net, sig_row(net, m), seg, i);
}

static json_t **self_cache(struct hw_policy_net *net, struct pn_ns *ns, enum seg seg, size_t i)
{
    json_t ***slot = seg == SEG_S ? &ns->self_src : &ns->ssh_self;
    if (!*slot)
        *slot = hw_calloc((seg == SEG_S ? n_acls(net) : n_ssh(net)) + 1, sizeof **slot);
    return &(*slot)[i];
}

/* Sources of rule i among the namespace's own untagged devices (autogroup:self). */
static json_t *self_src(struct hw_policy_net *net, uint32_t ns_idx, size_t i)
{
    struct pn_ns *ns = &net->ns[ns_idx];
    json_t **cache = self_cache(net, ns, SEG_S, i);
    if (*cache)
        return *cache;
    struct hw_ipset set = {0};
    struct strv extra = {0};
    for (size_t k = 0; k < ns->n; k++)
        if (self_source(net, ns->members[k], SEG_S, i))
            add_node_addrs(&set, &net->nodes[ns->members[k]]);
    *cache = src_array(&set, &extra);
    return *cache;
}

static json_t *default_src(struct hw_policy_net *net, uint32_t ns_idx)
{
    struct pn_ns *ns = &net->ns[ns_idx];
    if (ns->default_src)
        return ns->default_src;
    struct hw_ipset set = {0};
    struct strv extra = {0};
    for (size_t k = 0; k < ns->n; k++) {
        add_node_addrs(&set, &net->nodes[ns->members[k]]);
        add_node_routes(&extra, &net->nodes[ns->members[k]]);
    }
    ns->default_src = src_array(&set, &extra);
    return ns->default_src;
}

static void add_port_entries(json_t *dst, const char *ip, const struct pol_ports *ports, size_t n_ports)
{
    for (size_t j = 0; j < n_ports; j++)
        json_array_append_new(dst, json_pack("{s:s,s:{s:i,s:i}}", "IP", ip, "Ports", "First",
                                             (int)ports[j].first, "Last", (int)ports[j].last));
}

static void add_node_entries(json_t *dst, const struct pn_node *n, const struct pol_ports *ports, size_t n_ports)
{
    char buf[HW_IP_STR_MAX];
    for (uint8_t k = 0; k < n->n_addr; k++) {
        hw_ip_format(&n->addr[k], buf);
        add_port_entries(dst, buf, ports, n_ports);
    }
}

static json_t *rule_json(json_t *src, json_t *dst_ports, const struct pol_acl *acl)
{
    json_t *r = json_object();
    json_object_set(r, "SrcIPs", src);
    json_object_set_new(r, "DstPorts", dst_ports);
    if (acl && acl->n_proto) {
        json_t *pr = json_array();
        for (size_t k = 0; k < acl->n_proto; k++)
            json_array_append_new(pr, json_integer(acl->proto[k]));
        json_object_set_new(r, "IPProto", pr);
    }
    return r;
}

/* autogroup:internet in an exit node's filter, written as Tailscale's control server
 * writes it (2000::/3 as a range too), so filters compare equal to its netmaps. */
static const char *const internet_text[] = {
    "0.0.0.0-9.255.255.255",       "11.0.0.0-100.63.255.255",     "100.128.0.0-169.253.255.255",
    "169.255.0.0-172.15.255.255",  "172.32.0.0-192.167.255.255",  "192.169.0.0-255.255.255.255",
    "2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
};

/* DstPorts of rule i as node `slot` receives it: only entries naming this node. */
static json_t *dst_ports_for(const struct hw_policy_net *net, const struct pol_acl *acl, uint32_t slot)
{
    const struct pn_node *me = &net->nodes[slot];
    struct nstate st = state_of(net, slot);
    json_t *dst = json_array();
    char buf[HW_IPRANGE_STR_MAX];
    for (size_t k = 0; k < acl->n_dst; k++) {
        const struct pol_dst *d = &acl->dst[k];
        switch (d->a.kind) {
        case PA_ANY:
            add_port_entries(dst, "*", d->ports, d->n_ports);
            break;
        case PA_SELF:
            break;
        case PA_INTERNET:
            if (me->exit)
                for (size_t r = 0; r < HW_ARRAY_LEN(internet_text); r++)
                    add_port_entries(dst, internet_text[r], d->ports, d->n_ports);
            break;
        case PA_HOST:
        case PA_PREFIX:
            if (lit_match(&d->a, &st) || lit_reaches_exit(net, &d->a, &st)) {
                hw_ipprefix_format_short(&d->a.prefix, buf);
                add_port_entries(dst, buf, d->ports, d->n_ports);
            }
            break;
        default:
            if (ident_match(net->p, &d->a, &st))
                add_node_entries(dst, me, d->ports, d->n_ports);
            break;
        }
    }
    return dst;
}

json_t *hw_policy_filter(struct hw_policy_net *net, int64_t id)
{
    uint32_t slot;
    if (!slot_of(net, id, &slot))
        return NULL;
    const struct pn_node *me = &net->nodes[slot];
    json_t *rules = json_array();
    if (!net->p) {
        /* Namespaces as the boundary: anything the namespace's devices (and the
         * subnets they route) send may come in, to any address this node serves. */
        json_t *src = default_src(net, me->ns);
        if (json_array_size(src)) {
            struct pol_ports all = {0, 65535};
            json_t *dst = json_array();
            add_port_entries(dst, "*", &all, 1);
            json_array_append_new(rules, rule_json(src, dst, NULL));
        }
        return rules;
    }
    const uint64_t *row = sig_row(net, slot);
    for (size_t i = 0; i < net->p->n_acls; i++) {
        const struct pol_acl *acl = &net->p->acls[i];
        if (row_bit(net, row, SEG_D, i)) {
            json_t *src = acl_src(net, i);
            json_t *dst = json_array_size(src) ? dst_ports_for(net, acl, slot) : NULL;
            if (json_array_size(dst))
                json_array_append_new(rules, rule_json(src, dst, acl));
            else
                json_decref(dst);
        }
        if (acl->has_self && !me->tagged) {
            json_t *src = self_src(net, me->ns, i);
            if (!json_array_size(src))
                continue;
            json_t *dst = json_array();
            for (size_t k = 0; k < acl->n_dst; k++)
                if (acl->dst[k].a.kind == PA_SELF)
                    add_node_entries(dst, me, acl->dst[k].ports, acl->dst[k].n_ports);
            json_array_append_new(rules, rule_json(src, dst, acl));
        }
    }
    return rules;
}

/* ---- SSH policy ---- */

static int cmp_ip(const void *a, const void *b) { return hw_ip_cmp(a, b); }

static json_t *principals_json(struct hw_ip *ips, size_t n)
{
    qsort(ips, n, sizeof *ips, cmp_ip);
    json_t *arr = json_array();
    char buf[HW_IP_STR_MAX];
    for (size_t i = 0; i < n; i++) {
        if (i && hw_ip_cmp(&ips[i], &ips[i - 1]) == 0)
            continue;
        hw_ip_format(&ips[i], buf);
        json_array_append_new(arr, json_pack("{s:s}", "nodeIP", buf));
    }
    return arr;
}

struct ipv {
    struct hw_ip *v;
    size_t n, cap;
};

static void ipv_add_node(struct ipv *v, const struct pn_node *n)
{
    for (uint8_t k = 0; k < n->n_addr; k++) {
        if (v->n == v->cap) {
            v->cap = v->cap ? v->cap * 2 : 16;
            v->v = xrealloc(v->v, v->cap * sizeof *v->v);
        }
        v->v[v->n++] = n->addr[k];
    }
}

static json_t *ssh_principals(struct hw_policy_net *net, size_t j)
{
    if (net->ssh_principals[j])
        return net->ssh_principals[j];
    struct ipv v = {0};
    const uint64_t *c = column(net, SEG_SS, j);
    for (size_t w = 0; w < net->words; w++)
        for (uint64_t bits = c[w]; bits; bits &= bits - 1)
            ipv_add_node(&v, &net->nodes[w * 64 + (size_t)__builtin_ctzll(bits)]);
    net->ssh_principals[j] = principals_json(v.v, v.n);
    free(v.v);
    return net->ssh_principals[j];
}

static json_t *ssh_self_principals(struct hw_policy_net *net, uint32_t ns_idx, size_t j)
{
    struct pn_ns *ns = &net->ns[ns_idx];
    json_t **cache = self_cache(net, ns, SEG_SS, j);
    if (*cache)
        return *cache;
    struct ipv v = {0};
    for (size_t k = 0; k < ns->n; k++)
        if (self_source(net, ns->members[k], SEG_SS, j))
            ipv_add_node(&v, &net->nodes[ns->members[k]]);
    *cache = principals_json(v.v, v.n);
    free(v.v);
    return *cache;
}

static json_t *ssh_rule_json(const struct pol_ssh *r, json_t *principals, const char *check_url)
{
    json_t *users = json_object();
    if (r->nonroot)
        json_object_set_new(users, "*", json_string("="));
    json_object_set_new(users, "root", json_string(r->root ? "root" : ""));
    for (size_t k = 0; k < r->n_users; k++)
        json_object_set_new(users, r->users[k], json_string(r->users[k]));
    json_t *action = json_object();
    if (r->check) {
        char *url = hw_sprintf("%s/machine/ssh/action/from/$SRC_NODE_ID/to/$DST_NODE_ID"
                               "?ssh_user=$SSH_USER&local_user=$LOCAL_USER",
                               check_url ? check_url : "");
        /* Go's time.Duration is nanoseconds on the wire. */
        if (r->check_period_s)
            json_object_set_new(action, "sessionDuration", json_integer(r->check_period_s * 1000000000LL));
        json_object_set_new(action, "holdAndDelegate", json_string(url));
        free(url);
    } else {
        json_object_set_new(action, "accept", json_true());
    }
    json_object_set_new(action, "allowAgentForwarding", json_true());
    json_object_set_new(action, "allowLocalPortForwarding", json_true());
    json_object_set_new(action, "allowRemotePortForwarding", json_true());
    json_t *rule = json_object();
    json_object_set(rule, "principals", principals);
    json_object_set_new(rule, "sshUsers", users);
    json_object_set_new(rule, "action", action);
    if (r->n_accept_env) {
        json_t *env = json_array();
        for (size_t k = 0; k < r->n_accept_env; k++)
            json_array_append_new(env, json_string(r->accept_env[k]));
        json_object_set_new(rule, "acceptEnv", env);
    }
    return rule;
}

json_t *hw_policy_ssh(struct hw_policy_net *net, int64_t id, const char *check_url)
{
    uint32_t slot;
    if (!slot_of(net, id, &slot) || !net->p || !net->p->has_ssh)
        return NULL;
    const struct pn_node *me = &net->nodes[slot];
    const uint64_t *row = sig_row(net, slot);
    /* The client takes the first rule that matches: "check" rules go first so an
     * accept elsewhere cannot skip the check. */
    json_t *checks = json_array(), *accepts = json_array();
    for (size_t j = 0; j < net->p->n_ssh; j++) {
        const struct pol_ssh *r = &net->p->ssh[j];
        json_t *into = r->check ? checks : accepts;
        if (r->has_self && !me->tagged) {
            json_t *pr = ssh_self_principals(net, me->ns, j);
            if (json_array_size(pr))
                json_array_append_new(into, ssh_rule_json(r, pr, check_url));
        }
        if (row_bit(net, row, SEG_SD, j)) {
            json_t *pr = ssh_principals(net, j);
            if (json_array_size(pr))
                json_array_append_new(into, ssh_rule_json(r, pr, check_url));
        }
    }
    json_array_extend(checks, accepts);
    json_decref(accepts);
    return json_pack("{s:o}", "rules", checks);
}
