/* The DERP map: sources parsed and checked, merged as Headscale merges them, and a
 * refresher that re-reads them off the event loop. See derpmap.h for the rules. */
#include "server/derpmap.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <yaml.h>

#include "common/config.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/strmap.h"
#include "common/util.h"
#include "common/version.h"

/* Longest accepted texts. DNS names stop at 253; the rest only need a sane bound so
 * one bad source cannot blow up every MapResponse. */
#define MAX_HOSTNAME 253
#define MAX_NAME 64
#define MAX_REGION_CODE 64
#define MAX_REGION_NAME 256
#define SHA256_RAW_PREFIX "sha256-raw:"

/* Makes room for one more element in a vector of *cap, doubling: one element at a time
 * would be quadratic wherever realloc copies (always, under ASan). */
static void *grow(void *v, size_t n, size_t *cap, size_t elem)
{
    if (n < *cap)
        return v;
    size_t c = *cap ? *cap * 2 : 8;
    void *p = realloc(v, c * elem);
    if (!p)
        abort();
    *cap = c;
    return p;
}

/* ---- diagnostics ---------------------------------------------------------------------- */

static void diag_vadd(struct hw_derpmap_diags *d, const char *source, int line, bool is_error,
                      const char *fmt, va_list ap)
{
    if (!d)
        return;
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    d->items = grow(d->items, d->n, &d->cap, sizeof *d->items);
    d->items[d->n++] = (struct hw_derpmap_diag){hw_strdup(source ? source : ""), line, is_error, msg};
    if (is_error)
        d->n_errors++;
}

static void diag_add(struct hw_derpmap_diags *d, const char *source, int line, bool is_error,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void diag_add(struct hw_derpmap_diags *d, const char *source, int line, bool is_error,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, source, line, is_error, fmt, ap);
    va_end(ap);
}

void hw_derpmap_diags_print(const struct hw_derpmap_diags *d, FILE *out)
{
    for (size_t i = 0; i < d->n; i++) {
        const struct hw_derpmap_diag *g = &d->items[i];
        const char *kind = g->is_error ? "error" : "warning";
        if (g->line > 0)
            fprintf(out, "%s:%d: %s: %s\n", g->source, g->line, kind, g->message);
        else
            fprintf(out, "%s: %s: %s\n", g->source, kind, g->message);
    }
}

void hw_derpmap_diags_free(struct hw_derpmap_diags *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->items[i].source);
        free(d->items[i].message);
    }
    free(d->items);
    memset(d, 0, sizeof *d);
}

/* ---- one source ----------------------------------------------------------------------- */

void hw_derpmap_source_clear(struct hw_derpmap_source *s)
{
    if (s->node_lines)
        for (size_t i = 0; i < s->map.n_regions; i++)
            free(s->node_lines[i]);
    free(s->node_lines);
    free(s->region_lines);
    free(s->removed);
    tc_derp_map_clear(&s->map);
    memset(s, 0, sizeof *s);
}

/* The arrays of a map are sized once, from counts known beforehand (the document's, or
 * the merge's): growing them one element at a time is quadratic wherever realloc
 * copies, as it always does under ASan. The add functions then fill the next slot. */
static void reserve_regions(struct tc_derp_map *m, size_t cap)
{
    m->regions = hw_calloc(cap ? cap : 1, sizeof *m->regions);
}

static struct tc_derp_region *next_region(struct tc_derp_map *m, int id, const char *code,
                                          const char *name)
{
    struct tc_derp_region *r = &m->regions[m->n_regions++];
    memset(r, 0, sizeof *r);
    r->region_id = id;
    r->region_code = hw_strdup(code ? code : "");
    r->region_name = hw_strdup(name ? name : "");
    return r;
}

static struct tc_derp_node *next_node(struct tc_derp_region *r)
{
    struct tc_derp_node *n = &r->nodes[r->n_nodes++];
    memset(n, 0, sizeof *n);
    n->region_id = r->region_id;
    return n;
}

/* Room for cap region entries (regions and removals) with their lines. */
static void source_reserve(struct hw_derpmap_source *s, size_t cap)
{
    reserve_regions(&s->map, cap);
    s->region_lines = hw_calloc(cap ? cap : 1, sizeof *s->region_lines);
    s->node_lines = hw_calloc(cap ? cap : 1, sizeof *s->node_lines);
    s->removed = hw_calloc(cap ? cap : 1, sizeof *s->removed);
}

static struct tc_derp_region *source_add_region(struct hw_derpmap_source *s, int id, int line)
{
    s->region_lines[s->map.n_regions] = line;
    return next_region(&s->map, id, NULL, NULL);
}

static void source_reserve_nodes(struct hw_derpmap_source *s, struct tc_derp_region *r, size_t cap)
{
    r->nodes = hw_calloc(cap ? cap : 1, sizeof *r->nodes);
    s->node_lines[r - s->map.regions] = hw_calloc(cap ? cap : 1, sizeof(int));
}

static struct tc_derp_node *source_add_node(struct hw_derpmap_source *s, struct tc_derp_region *r,
                                            int line)
{
    s->node_lines[r - s->map.regions][r->n_nodes] = line;
    return next_node(r);
}

static void source_add_removed(struct hw_derpmap_source *s, int id) { s->removed[s->n_removed++] = id; }

/* ---- value checks shared by both forms ------------------------------------------------ */

static bool is_ip(int family, const char *t)
{
    unsigned char buf[16];
    return inet_pton(family, t, buf) == 1;
}

static bool is_any_ip(const char *t) { return is_ip(AF_INET, t) || is_ip(AF_INET6, t); }

/* Letters, digits, '-' and '_' (some internal names have it) in dot-separated labels of
 * 1..63 characters. Upper case is fine: DNS and TLS compare names without case. */
static bool is_dns_name(const char *t)
{
    size_t len = strlen(t);
    if (len == 0 || len > MAX_HOSTNAME)
        return false;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = t[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || label > 63 || t[i - 1] == '-' || t[i - label] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!isalnum((unsigned char)c) && c != '-' && c != '_')
            return false;
        label++;
    }
    return true;
}

/* NULL when t can be dialled and checked as a TLS name; otherwise how to fix it. The
 * common mistakes get their own words: a URL, or a port that belongs in derpport. */
static const char *host_problem(const char *t)
{
    if (is_any_ip(t) || is_dns_name(t))
        return NULL;
    if (strstr(t, "://"))
        return "is a URL; give only the host name (like derp1.example.com)";
    const char *colon = strrchr(t, ':');
    if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1))
        return "has a port; give only the host name, and the port in derpport";
    if (t[0] && t[strlen(t) - 1] == '.')
        return "ends with a dot; give the name without it";
    return "is not a DNS name (like derp1.example.com) or an IP address";
}

/* CertName: a name the certificate must carry, or a pin of the certificate itself.
 * Clients compare the pin as text against lower-case hex (tlsdial
 * SetConfigExpectedCertHash), so upper case would never match. */
static const char *certname_problem(const char *t)
{
    if (strncmp(t, SHA256_RAW_PREFIX, strlen(SHA256_RAW_PREFIX)) == 0) {
        const char *hex = t + strlen(SHA256_RAW_PREFIX);
        if (strlen(hex) != 64 || strspn(hex, "0123456789abcdefABCDEF") != 64)
            return "expected \"sha256-raw:\" and 64 hex digits (the SHA-256 of the DER "
                   "certificate)";
        if (strspn(hex, "0123456789abcdef") != 64)
            return "the hex digits after \"sha256-raw:\" must be lower case (clients compare "
                   "the text)";
        return NULL;
    }
    if (is_any_ip(t) || is_dns_name(t))
        return NULL;
    return "expected the name on the certificate (like derp1.example.com), or \"sha256-raw:\" "
           "and 64 lower-case hex digits";
}

static bool ip_or_none(int family, const char *t)
{
    return strcmp(t, "none") == 0 || is_ip(family, t);
}

/* ---- YAML form ------------------------------------------------------------------------ */

struct yparse {
    const char *source;
    yaml_document_t *doc;
    struct hw_derpmap_diags *diags;
    size_t errors;
    struct hw_derpmap_source *out;
    struct hw_strmap names; /* node name -> struct name_use */
    struct name_use *uses;  /* every name_use, to free them */
    int merges;             /* "<<" merges applied so far */
};

struct name_use {
    char path[128];
    int line;
    struct name_use *next;
};

static void yerr(struct yparse *P, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void yerr(struct yparse *P, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(P->diags, P->source, line, true, fmt, ap);
    va_end(ap);
    P->errors++;
}

static void ywarn(struct yparse *P, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ywarn(struct yparse *P, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(P->diags, P->source, line, false, fmt, ap);
    va_end(ap);
}

static int yline(const yaml_node_t *n) { return (int)n->start_mark.line + 1; }

static const char *ytext(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static bool yis_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *t = ytext(n);
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

/* How a value looks, for "got ..." in messages; at most ~40 characters of it. */
static void ydescribe(const yaml_node_t *n, char *out, size_t cap)
{
    if (n->type == YAML_SEQUENCE_NODE)
        snprintf(out, cap, "a list");
    else if (n->type == YAML_MAPPING_NODE)
        snprintf(out, cap, "a mapping");
    else if (yis_null(n))
        snprintf(out, cap, "nothing");
    else if (n->data.scalar.length > 40)
        snprintf(out, cap, "\"%.37s...\"", ytext(n));
    else
        snprintf(out, cap, "\"%s\"", ytext(n));
}

static void yexpected(struct yparse *P, const yaml_node_t *v, const char *path, const char *form)
{
    char got[64];
    ydescribe(v, got, sizeof got);
    yerr(P, yline(v), "%s: expected %s, got %s", path, form, got);
}

/* A scalar's text, refusing embedded NULs (libyaml allows "\0" escapes in quoted text). */
static const char *yscalar(struct yparse *P, const yaml_node_t *v, const char *path, const char *form)
{
    if (v->type != YAML_SCALAR_NODE) {
        yexpected(P, v, path, form);
        return NULL;
    }
    if (strlen(ytext(v)) != v->data.scalar.length) {
        yerr(P, yline(v), "%s: the value contains a NUL character", path);
        return NULL;
    }
    return ytext(v);
}

/* Numbers and booleans are unquoted, as Headscale's YAML decoder wants them: a file
 * that passes here also works there. */
static bool yint(struct yparse *P, const yaml_node_t *v, const char *path, long min, long max,
                 const char *form, int *out)
{
    const char *t = yscalar(P, v, path, form);
    if (!t)
        return false;
    const char *digits = t[0] == '-' ? t + 1 : t;
    bool canonical = *digits && strspn(digits, "0123456789") == strlen(digits) &&
                     (digits[0] != '0' || digits[1] == '\0') && strlen(digits) <= 9;
    long value = canonical ? strtol(t, NULL, 10) : 0;
    if (v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !canonical || value < min || value > max) {
        yexpected(P, v, path, form);
        return false;
    }
    *out = (int)value;
    return true;
}

static bool ybool(struct yparse *P, const yaml_node_t *v, const char *path, bool *out)
{
    /* YAML 1.1's spellings, which Headscale's decoder also takes for a bool field. */
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    const char *t = yscalar(P, v, path, "true or false");
    if (!t)
        return false;
    if (v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        for (size_t i = 0; i < HW_ARRAY_LEN(yes); i++) {
            if (!strcmp(t, yes[i]) || !strcmp(t, no[i])) {
                *out = !strcmp(t, yes[i]);
                return true;
            }
        }
    }
    yexpected(P, v, path, "true or false");
    return false;
}

static bool ydouble(struct yparse *P, const yaml_node_t *v, const char *path, double lim, double *out)
{
    char form[64];
    snprintf(form, sizeof form, "a number from %g to %g", -lim, lim);
    const char *t = yscalar(P, v, path, form);
    if (!t)
        return false;
    char *end;
    errno = 0;
    double x = strtod(t, &end);
    if (v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !*t || *end || errno || isspace((unsigned char)*t) ||
        !(x >= -lim && x <= lim)) {
        yexpected(P, v, path, form);
        return false;
    }
    *out = x;
    return true;
}

/* A text value into *dst (replacing nothing: duplicate keys are refused earlier). A null
 * leaves *dst NULL, as Go leaves the field empty. */
static bool ystring(struct yparse *P, const yaml_node_t *v, const char *path, size_t max,
                    const char *form, char **dst)
{
    if (yis_null(v))
        return true;
    const char *t = yscalar(P, v, path, form);
    if (!t)
        return false;
    if (!*t)
        return true; /* "" is Go's empty field, i.e. not set */
    if (strlen(t) > max) {
        yerr(P, yline(v), "%s: longer than %zu characters", path, max);
        return false;
    }
    *dst = hw_strdup(t);
    return true;
}

/* One key of a mapping after "<<" merges are applied. */
struct yentry {
    const char *key;
    const yaml_node_t *k, *v;
};

/* The keys of one mapping, indexed: a regions mapping can hold thousands of keys, and
 * checking each against all the others would be quadratic. */
struct yentries {
    struct yentry *v;
    size_t n, cap;
    struct hw_strmap index; /* key -> entry number + 1 */
};

static void yentries_free(struct yentries *e)
{
    free(e->v);
    if (e->index.slots)
        hw_strmap_free(&e->index);
    memset(e, 0, sizeof *e);
}

static const struct yentry *yfind(const struct yentries *e, const char *key)
{
    size_t i = (size_t)(uintptr_t)(e->index.slots ? hw_strmap_get(&e->index, key) : NULL);
    return i ? &e->v[i - 1] : NULL;
}

static void yentries_push(struct yentries *e, const char *key, const yaml_node_t *k, const yaml_node_t *v)
{
    e->v = grow(e->v, e->n, &e->cap, sizeof *e->v);
    e->v[e->n++] = (struct yentry){key, k, v};
    if (!e->index.slots)
        hw_strmap_init(&e->index);
    hw_strmap_put(&e->index, key, (void *)(uintptr_t)e->n);
}

/* Merges nest no deeper than this, and a file gets at most MAX_MERGES of them: "<<"
 * lists of aliases can otherwise multiply the work at every level. */
#define MAX_MERGE_DEPTH 8
#define MAX_MERGES 10000

/* The keys of map, each a unique scalar, with "<<" merges (Go's YAML decoder honours
 * them, so node templates written for Headscale work here too): keys written out win
 * over merged ones, and earlier merged mappings over later ones, as YAML says. */
static void ycollect(struct yparse *P, const yaml_node_t *map, const char *path, int depth,
                     struct yentries *out)
{
    if (depth > MAX_MERGE_DEPTH) {
        yerr(P, yline(map), "%s: \"<<\" merges nest too deep", path);
        return;
    }
    struct yentries own = {0};
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(P->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(P->doc, pair->value);
        if (!k || !v)
            continue;
        if (k->type != YAML_SCALAR_NODE || strlen(ytext(k)) != k->data.scalar.length) {
            yerr(P, yline(k), "%s%skeys must be plain words", path, *path ? ": " : "");
            continue;
        }
        if (!strcmp(ytext(k), "<<") && k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            continue;
        const struct yentry *first = yfind(&own, ytext(k));
        if (first)
            yerr(P, yline(k), "%s%s%s: set twice (first at line %d)", path, *path ? "." : "",
                 ytext(k), yline(first->k));
        else
            yentries_push(&own, ytext(k), k, v);
    }
    for (size_t i = 0; i < own.n; i++)
        if (!yfind(out, own.v[i].key))
            yentries_push(out, own.v[i].key, own.v[i].k, own.v[i].v);
    yentries_free(&own);
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(P->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(P->doc, pair->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE || strcmp(ytext(k), "<<") ||
            k->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
            continue;
        size_t count = v->type == YAML_SEQUENCE_NODE
                           ? (size_t)(v->data.sequence.items.top - v->data.sequence.items.start)
                           : 1;
        for (size_t i = 0; i < count; i++) {
            const yaml_node_t *m = v->type == YAML_SEQUENCE_NODE
                                       ? yaml_document_get_node(P->doc, v->data.sequence.items.start[i])
                                       : v;
            if (!m || m->type != YAML_MAPPING_NODE) {
                yexpected(P, m ? m : v, "<<", "a mapping to merge");
                continue;
            }
            if (++P->merges > MAX_MERGES) {
                if (P->merges == MAX_MERGES + 1)
                    yerr(P, yline(m), "%s: more than %d \"<<\" merges in one file", path, MAX_MERGES);
                return;
            }
            /* Keys already present (written out, or from an earlier merge) win, so the
             * merged mapping's keys are simply added when new. */
            ycollect(P, m, path, depth + 1, out);
        }
    }
}

static void yunknown(struct yparse *P, const struct yentry *e, const char *path,
                     const char *const *known, size_t n_known)
{
    for (size_t i = 0; i < n_known; i++) {
        if (!strcasecmp(known[i], e->key)) {
            ywarn(P, yline(e->k), "%s: unknown key, ignored (keys are lower case: %s)", path, known[i]);
            return;
        }
    }
    ywarn(P, yline(e->k), "%s: unknown key, ignored", path);
}

static const char *const node_keys[] = {"name",      "regionid", "hostname",         "certname",
                                        "ipv4",      "ipv6",     "stunport",         "stunonly",
                                        "derpport",  "insecurefortests", "stuntestip", "canport80"};

static void ynode_item(struct yparse *P, const yaml_node_t *v, const char *npath,
                       struct tc_derp_region *r)
{
    if (v->type != YAML_MAPPING_NODE) {
        yexpected(P, v, npath, "a node (name, hostname, ...)");
        return;
    }
    struct tc_derp_node *n = source_add_node(P->out, r, yline(v));
    int name_line = 0, stun_line = 0;
    struct yentries entries = {0};
    ycollect(P, v, npath, 0, &entries);
    for (size_t ei = 0; ei < entries.n; ei++) {
        const char *key = entries.v[ei].key;
        const yaml_node_t *val = entries.v[ei].v;
        char path[192];
        snprintf(path, sizeof path, "%s.%.40s", npath, key);
        if (!strcmp(key, "name")) {
            if (ystring(P, val, path, MAX_NAME, "a node name like \"900a\"", &n->name))
                name_line = yline(val);
        } else if (!strcmp(key, "regionid")) {
            int id;
            if (yint(P, val, path, 1, 65535, "a region id from 1 to 65535", &id) && id != r->region_id)
                yerr(P, yline(val), "%s: %d is not the id of the region the node is listed in (%d)",
                     path, id, r->region_id);
        } else if (!strcmp(key, "hostname") || !strcmp(key, "certname")) {
            bool host = key[0] == 'h';
            char **dst = host ? &n->host_name : &n->cert_name;
            if (ystring(P, val, path, host ? MAX_HOSTNAME : 128, "a host name", dst) && *dst) {
                const char *why = host ? host_problem(*dst) : certname_problem(*dst);
                if (why && host)
                    yerr(P, yline(val), "%s: \"%s\" %s", path, *dst, why);
                else if (why)
                    yerr(P, yline(val), "%s: %s, got \"%s\"", path, why, *dst);
            }
        } else if (!strcmp(key, "ipv4") || !strcmp(key, "ipv6")) {
            bool v6 = key[3] == '6';
            char **dst = v6 ? &n->ipv6 : &n->ipv4;
            const char *form = v6 ? "an IPv6 address (like 2001:db8::1) or \"none\""
                                  : "an IPv4 address (like 198.51.100.1) or \"none\"";
            if (ystring(P, val, path, 64, form, dst) && *dst && !ip_or_none(v6 ? AF_INET6 : AF_INET, *dst))
                yexpected(P, val, path, form);
        } else if (!strcmp(key, "stuntestip")) {
            if (ystring(P, val, path, 64, "an IP address", &n->stun_test_ip) && n->stun_test_ip &&
                !is_any_ip(n->stun_test_ip))
                yexpected(P, val, path, "an IP address");
        } else if (!strcmp(key, "stunport")) {
            if (yint(P, val, path, -1, 65535, "a port number (0 means 3478, -1 no STUN)", &n->stun_port))
                stun_line = yline(val);
        } else if (!strcmp(key, "derpport")) {
            yint(P, val, path, 0, 65535, "a port number (0 means 443)", &n->derp_port);
        } else if (!strcmp(key, "stunonly")) {
            ybool(P, val, path, &n->stun_only);
        } else if (!strcmp(key, "canport80")) {
            ybool(P, val, path, &n->can_port80);
        } else if (!strcmp(key, "insecurefortests")) {
            if (ybool(P, val, path, &n->insecure_for_tests) && n->insecure_for_tests)
                ywarn(P, yline(val), "%s: certificate checks are off for this node; for test "
                      "setups only", path);
        } else {
            yunknown(P, &entries.v[ei], path, node_keys, HW_ARRAY_LEN(node_keys));
        }
    }
    yentries_free(&entries);
    if (!n->name || !*n->name) {
        yerr(P, yline(v), "%s: missing name (unique across the map, like \"900a\")", npath);
    } else {
        struct name_use *prev = hw_strmap_get(&P->names, n->name);
        if (prev) {
            yerr(P, name_line, "%s.name: \"%s\" is already the name of %s (line %d); node names "
                 "are unique across the map", npath, n->name, prev->path, prev->line);
        } else {
            struct name_use *u = hw_malloc(sizeof *u);
            snprintf(u->path, sizeof u->path, "%s", npath);
            u->line = name_line;
            u->next = P->uses;
            P->uses = u;
            hw_strmap_put(&P->names, n->name, u);
        }
    }
    if (!n->host_name || !*n->host_name)
        yerr(P, yline(v), "%s: missing hostname (the DNS name or IP address clients dial)", npath);
    if (n->stun_only && n->stun_port == -1)
        yerr(P, stun_line, "%s.stunport: -1 turns STUN off, but stunonly is true: the node would "
             "do nothing", npath);
    if (!n->name)
        n->name = hw_strdup("");
    if (!n->host_name)
        n->host_name = hw_strdup("");
}

static const char *const region_keys[] = {"regionid", "regioncode", "regionname", "latitude",
                                          "longitude", "avoid", "nomeasurenohome", "nodes"};

static void yregion(struct yparse *P, const char *rpath, int id, int key_line, const yaml_node_t *v)
{
    struct tc_derp_region *r = source_add_region(P->out, id, key_line);
    const yaml_node_t *nodes = NULL;
    struct yentries entries = {0};
    ycollect(P, v, rpath, 0, &entries);
    for (size_t ei = 0; ei < entries.n; ei++) {
        const char *key = entries.v[ei].key;
        const yaml_node_t *val = entries.v[ei].v;
        char path[128];
        snprintf(path, sizeof path, "%s.%.40s", rpath, key);
        if (!strcmp(key, "regionid")) {
            int rid;
            if (yint(P, val, path, 1, 65535, "a region id from 1 to 65535", &rid) && rid != id)
                yerr(P, yline(val), "%s: %d does not match the region's key %d", path, rid, id);
        } else if (!strcmp(key, "regioncode") || !strcmp(key, "regionname")) {
            bool code = key[6] == 'c';
            char *s = NULL;
            if (ystring(P, val, path, code ? MAX_REGION_CODE : MAX_REGION_NAME,
                        code ? "a short code like \"fra\"" : "a name like \"Frankfurt\"", &s) && s) {
                char **dst = code ? &r->region_code : &r->region_name;
                free(*dst);
                *dst = s;
            }
        } else if (!strcmp(key, "latitude")) {
            ydouble(P, val, path, 90, &r->latitude);
        } else if (!strcmp(key, "longitude")) {
            ydouble(P, val, path, 180, &r->longitude);
        } else if (!strcmp(key, "avoid")) {
            ybool(P, val, path, &r->avoid);
        } else if (!strcmp(key, "nomeasurenohome")) {
            ybool(P, val, path, &r->no_measure_no_home);
        } else if (!strcmp(key, "nodes")) {
            nodes = val;
        } else {
            yunknown(P, &entries.v[ei], path, region_keys, HW_ARRAY_LEN(region_keys));
        }
    }
    yentries_free(&entries);
    char npath[80];
    snprintf(npath, sizeof npath, "%.60s.nodes", rpath);
    if (!nodes || yis_null(nodes)) {
        yerr(P, nodes ? yline(nodes) : key_line, "%s: missing nodes (the relays of the region)",
             nodes ? npath : rpath);
        return;
    }
    if (nodes->type != YAML_SEQUENCE_NODE) {
        yexpected(P, nodes, npath, "a list of nodes");
        return;
    }
    size_t count = (size_t)(nodes->data.sequence.items.top - nodes->data.sequence.items.start);
    if (count == 0) {
        yerr(P, yline(nodes), "%s: a region needs at least one node", npath);
        return;
    }
    source_reserve_nodes(P->out, r, count);
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *item = yaml_document_get_node(P->doc, nodes->data.sequence.items.start[i]);
        char ipath[112];
        snprintf(ipath, sizeof ipath, "%s[%zu]", npath, i);
        if (item)
            ynode_item(P, item, ipath, r);
    }
}

static void yregions(struct yparse *P, const yaml_node_t *regions)
{
    if (yis_null(regions))
        return;
    if (regions->type != YAML_MAPPING_NODE) {
        yexpected(P, regions, "regions", "a mapping of region id to region");
        return;
    }
    struct yentries entries = {0};
    ycollect(P, regions, "regions", 0, &entries);
    source_reserve(P->out, entries.n);
    for (size_t ei = 0; ei < entries.n; ei++) {
        const char *key = entries.v[ei].key;
        const yaml_node_t *val = entries.v[ei].v;
        const yaml_node_t *k = entries.v[ei].k;
        char rpath[64];
        snprintf(rpath, sizeof rpath, "regions.%.40s", key);
        bool canonical = *key && strspn(key, "0123456789") == strlen(key) && key[0] != '0' &&
                         strlen(key) <= 5 && k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        long id = canonical ? strtol(key, NULL, 10) : 0;
        if (id < 1 || id > 65535) {
            yerr(P, yline(k), "%s: expected a region id from 1 to 65535 as the key", rpath);
            continue;
        }
        if (yis_null(val)) {
            source_add_removed(P->out, (int)id);
        } else if (val->type != YAML_MAPPING_NODE) {
            yexpected(P, val, rpath, "a region (regionid, regioncode, regionname, nodes) or null "
                      "to remove the region");
        } else {
            yregion(P, rpath, (int)id, yline(k), val);
        }
    }
    yentries_free(&entries);
}

static void free_name_uses(struct yparse *P)
{
    for (struct name_use *u = P->uses, *next; u; u = next) {
        next = u->next;
        free(u);
    }
    hw_strmap_free(&P->names);
}

int hw_derpmap_parse_yaml(const char *source, const char *text, size_t len,
                          struct hw_derpmap_source *out, struct hw_derpmap_diags *diags)
{
    memset(out, 0, sizeof *out);
    struct yparse P = {.source = source, .diags = diags, .out = out};
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        if (parser.error == YAML_MEMORY_ERROR)
            abort();
        yerr(&P, (int)parser.problem_mark.line + 1, "not valid YAML: %s%s%s%s",
             parser.problem ? parser.problem : "unreadable input", parser.context ? " (" : "",
             parser.context ? parser.context : "", parser.context ? ")" : "");
        yaml_parser_delete(&parser);
        return -1;
    }
    P.doc = &doc;
    hw_strmap_init(&P.names);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type == YAML_MAPPING_NODE) {
        struct yentries entries = {0};
        ycollect(&P, root, "", 0, &entries);
        for (size_t ei = 0; ei < entries.n; ei++) {
            const char *key = entries.v[ei].key;
            const yaml_node_t *val = entries.v[ei].v;
            const yaml_node_t *k = entries.v[ei].k;
            if (!strcmp(key, "regions")) {
                yregions(&P, val);
            } else if (!strcmp(key, "homeparams") || !strcmp(key, "omitdefaultregions")) {
                ywarn(&P, yline(k), "%s: ignored: only regions are merged into the map clients get "
                      "(as in Headscale)", key);
            } else {
                static const char *const top_keys[] = {"regions", "homeparams", "omitdefaultregions"};
                char path[64];
                snprintf(path, sizeof path, "%.40s", key);
                yunknown(&P, &entries.v[ei], path, top_keys, HW_ARRAY_LEN(top_keys));
            }
        }
        yentries_free(&entries);
    } else if (root && !yis_null(root)) {
        yexpected(&P, root, "the file", "a mapping with a \"regions\" key");
    }
    if (P.errors == 0 && out->map.n_regions == 0 && out->n_removed == 0)
        ywarn(&P, 0, "no regions: the file adds nothing to the DERP map");
    free_name_uses(&P);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (P.errors) {
        hw_derpmap_source_clear(out);
        return -1;
    }
    return 0;
}

/* Reads at most max bytes: a DERP map file has no business being larger, and a
 * mistaken path (a log, a device) must not eat memory. */
static char *read_bounded(const char *path, size_t max, size_t *len_out, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "cannot open: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 64 * 1024, len = 0;
    char *buf = hw_malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            if (cap > max) {
                snprintf(err, err_len, "larger than the %zu-byte limit", max);
                goto bad;
            }
            cap *= 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown)
                abort();
            buf = grown;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, err_len, "cannot read: %s", strerror(errno));
        goto bad;
    }
    if (len > max) {
        snprintf(err, err_len, "larger than the %zu-byte limit", max);
        goto bad;
    }
    fclose(f);
    buf[len] = '\0';
    *len_out = len;
    return buf;
bad:
    fclose(f);
    free(buf);
    return NULL;
}

int hw_derpmap_load_file(const char *path, struct hw_derpmap_source *out,
                         struct hw_derpmap_diags *diags)
{
    memset(out, 0, sizeof *out);
    char err[160];
    size_t len;
    char *text = read_bounded(path, HW_DERPMAP_MAX_BODY, &len, err, sizeof err);
    if (!text) {
        diag_add(diags, path, 0, true, "%s", err);
        return -1;
    }
    int rc = hw_derpmap_parse_yaml(path, text, len, out, diags);
    free(text);
    return rc;
}

/* ---- JSON form ------------------------------------------------------------------------ */

static int check_json_map(const char *source, struct hw_derpmap_source *s, struct hw_derpmap_diags *diags)
{
    size_t errors = 0;
    struct hw_strmap names;
    hw_strmap_init(&names);
#define JERR(...)                                                                          \
    do {                                                                                   \
        diag_add(diags, source, 0, true, __VA_ARGS__);                                     \
        errors++;                                                                          \
    } while (0)
    for (size_t i = 0; i < s->map.n_regions; i++) {
        const struct tc_derp_region *r = &s->map.regions[i];
        char rp[48];
        snprintf(rp, sizeof rp, "DERPMap.Regions[%d]", r->region_id);
        if (r->region_id < 1 || r->region_id > 65535)
            JERR("%s: region id out of range (1 to 65535)", rp);
        if (strlen(r->region_code) > MAX_REGION_CODE || strlen(r->region_name) > MAX_REGION_NAME)
            JERR("%s: RegionCode or RegionName too long", rp);
        if (r->n_nodes == 0)
            JERR("%s.Nodes: a region needs at least one node", rp);
        for (size_t j = 0; j < r->n_nodes; j++) {
            const struct tc_derp_node *n = &r->nodes[j];
            char np[80];
            snprintf(np, sizeof np, "%s.Nodes[%zu]", rp, j);
            const char *why;
            if (!*n->name || strlen(n->name) > MAX_NAME)
                JERR("%s.Name: expected a node name of 1 to %d characters", np, MAX_NAME);
            else if (hw_strmap_get(&names, n->name))
                JERR("%s.Name: \"%s\" is used twice; node names are unique across the map", np, n->name);
            else
                hw_strmap_put(&names, n->name, (void *)1);
            if (n->region_id && n->region_id != r->region_id)
                JERR("%s.RegionID: %d is not the id of its region", np, n->region_id);
            if (!*n->host_name)
                JERR("%s.HostName: missing", np);
            else if ((why = host_problem(n->host_name)) != NULL)
                JERR("%s.HostName: \"%.100s\" %s", np, n->host_name, why);
            if (n->cert_name && (why = certname_problem(n->cert_name)) != NULL)
                JERR("%s.CertName: %s", np, why);
            if (n->ipv4 && !ip_or_none(AF_INET, n->ipv4))
                JERR("%s.IPv4: expected an IPv4 address or \"none\", got \"%.64s\"", np, n->ipv4);
            if (n->ipv6 && !ip_or_none(AF_INET6, n->ipv6))
                JERR("%s.IPv6: expected an IPv6 address or \"none\", got \"%.64s\"", np, n->ipv6);
            if (n->stun_test_ip && !is_any_ip(n->stun_test_ip))
                JERR("%s.STUNTestIP: expected an IP address", np);
        }
    }
#undef JERR
    hw_strmap_free(&names);
    return errors ? -1 : 0;
}

int hw_derpmap_parse_json(const char *source, const char *body, size_t len,
                          struct hw_derpmap_source *out, struct hw_derpmap_diags *diags)
{
    memset(out, 0, sizeof *out);
    char err[TC_ERRLEN];
    json_t *root = tc_json_load((const uint8_t *)body, len, HW_DERPMAP_MAX_BODY, "DERPMap", err, sizeof err);
    if (!root) {
        diag_add(diags, source, 0, true, "%s", err);
        return -1;
    }
    if (tc_derp_map_parse(root, &out->map, err, sizeof err) < 0) {
        diag_add(diags, source, 0, true, "%s", err);
        json_decref(root);
        return -1;
    }
    /* tc_derp_map_parse drops null regions (what a client does); as a source, a null
     * region removes that region from earlier sources, so keep the ids. */
    json_t *regions = json_object_get(root, "Regions");
    out->removed = hw_calloc(json_object_size(regions) + 1, sizeof *out->removed);
    const char *k;
    json_t *v;
    json_object_foreach(regions, k, v)
    {
        if (json_is_null(v))
            source_add_removed(out, atoi(k)); /* keys were checked by tc_derp_map_parse */
    }
    json_decref(root);
    out->region_lines = hw_calloc(out->map.n_regions + 1, sizeof *out->region_lines);
    out->node_lines = hw_calloc(out->map.n_regions + 1, sizeof *out->node_lines);
    if (check_json_map(source, out, diags) < 0) {
        hw_derpmap_source_clear(out);
        return -1;
    }
    return 0;
}

/* ---- the embedded region -------------------------------------------------------------- */

int hw_derpmap_add_embedded_region(const struct hw_config *cfg, struct tc_derp_map *m, char *err,
                                   size_t err_len)
{
    if (!cfg->server_url) {
        snprintf(err, err_len, "server_url is not set, so the embedded relay has no address");
        return -1;
    }
    CURLU *u = curl_url();
    if (!u)
        abort();
    char *host = NULL, *port = NULL;
    int rc = -1;
    if (curl_url_set(u, CURLUPART_URL, cfg->server_url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        snprintf(err, err_len, "server_url \"%.200s\" gives no host and port for the embedded relay",
                 cfg->server_url);
        goto out;
    }
    /* curl keeps an IPv6 host in brackets; a DERP HostName is the bare address. */
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    const char *stun = cfg->derp_server_stun_listen_addr;
    const char *colon = stun ? strrchr(stun, ':') : NULL;
    long stun_port = -1;
    if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) && strlen(colon + 1) <= 5)
        stun_port = strtol(colon + 1, NULL, 10);
    if (stun_port < 0 || stun_port > 65535) {
        snprintf(err, err_len, "derp.server.stun_listen_addr \"%.100s\" has no port for the embedded "
                 "relay's STUN", stun ? stun : "");
        goto out;
    }
    struct tc_derp_region *r = tc_derp_map_add_region(m, cfg->derp_server_region_id,
                                                      cfg->derp_server_region_code,
                                                      cfg->derp_server_region_name);
    char name[16];
    snprintf(name, sizeof name, "%d", cfg->derp_server_region_id);
    struct tc_derp_node *n = tc_derp_region_add_node(r, name, host);
    n->derp_port = atoi(port);
    n->stun_port = (int)stun_port;
    if (cfg->derp_server_ipv4 && *cfg->derp_server_ipv4)
        n->ipv4 = hw_strdup(cfg->derp_server_ipv4);
    if (cfg->derp_server_ipv6 && *cfg->derp_server_ipv6)
        n->ipv6 = hw_strdup(cfg->derp_server_ipv6);
    rc = 0;
out:
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

static bool wants_embedded(const struct hw_config *cfg)
{
    return cfg && cfg->derp_server_enabled && cfg->derp_server_auto_add_region;
}

/* ---- merging -------------------------------------------------------------------------- */

/* A region chosen for the merged map, with where it came from. */
struct pick {
    const struct tc_derp_region *r;
    size_t rank;        /* source index; the embedded region ranks last */
    const char *source;
    int line;           /* of the region key, 0 when unknown */
    const int *node_lines;
    bool *drop;         /* per node: lost its name to a later source */
};

/* Picks in the order they were made; a replaced or removed pick stays with r = NULL.
 * pos indexes the live pick of each region id, so a merge of many regions stays linear. */
struct picks {
    struct pick *v;
    size_t n, cap;
    uint32_t *pos; /* region id -> index + 1 of its live pick, 0 for none */
};

/* Region ids are checked to be 1..65535 in both forms before they get here. */
#define MAX_REGION_ID 65535

static void picks_remove(struct picks *p, int id)
{
    if (id < 1 || id > MAX_REGION_ID || !p->pos[id])
        return;
    p->v[p->pos[id] - 1].r = NULL;
    p->pos[id] = 0;
}

static void picks_add(struct picks *p, struct pick k)
{
    int id = k.r->region_id;
    if (id < 1 || id > MAX_REGION_ID)
        return;
    picks_remove(p, id);
    p->v = grow(p->v, p->n, &p->cap, sizeof *p->v);
    p->v[p->n++] = k;
    p->pos[id] = (uint32_t)p->n;
}

static const struct pick *picks_find(const struct picks *p, int id)
{
    if (id < 1 || id > MAX_REGION_ID || !p->pos[id])
        return NULL;
    return &p->v[p->pos[id] - 1];
}

static const char *const embedded_source = "the embedded relay (derp.server)";

/* Builds the picks for sources then the embedded region (in emb, may be NULL), and
 * resolves node-name collisions: the later source keeps the name. strict reports the
 * collisions as errors (configtest), otherwise as warnings with the earlier node
 * dropped. */
static void merge_picks(const struct hw_derpmap_source *const *sources, const char *const *names,
                        size_t n, const struct tc_derp_map *emb, bool strict, struct picks *out,
                        struct hw_derpmap_diags *diags)
{
    memset(out, 0, sizeof *out);
    out->pos = hw_calloc(MAX_REGION_ID + 1, sizeof *out->pos);
    for (size_t i = 0; i < n; i++) {
        const struct hw_derpmap_source *s = sources[i];
        if (!s)
            continue;
        for (size_t j = 0; j < s->n_removed; j++)
            picks_remove(out, s->removed[j]);
        for (size_t j = 0; j < s->map.n_regions; j++)
            picks_add(out, (struct pick){&s->map.regions[j], i, names[i],
                                         s->region_lines ? s->region_lines[j] : 0,
                                         s->node_lines ? s->node_lines[j] : NULL, NULL});
    }
    if (emb && emb->n_regions) {
        const struct pick *old = picks_find(out, emb->regions[0].region_id);
        if (old)
            diag_add(diags, old->source, old->line, false,
                     "region %d is replaced by the embedded relay's region (derp.server.region_id); "
                     "the embedded region wins, as in Headscale",
                     old->r->region_id);
        picks_add(out, (struct pick){&emb->regions[0], n, embedded_source, 0, NULL, NULL});
    }
    for (size_t i = 0; i < out->n; i++)
        if (out->v[i].r)
            out->v[i].drop = hw_calloc(out->v[i].r->n_nodes + 1, sizeof(bool));

    /* Walk from the latest source to the earliest so the first holder of a name is
     * the one that keeps it. */
    struct hw_strmap seen;
    hw_strmap_init(&seen);
    size_t max_rank = n;
    for (size_t rank = max_rank + 1; rank-- > 0;) {
        for (size_t i = 0; i < out->n; i++) {
            struct pick *p = &out->v[i];
            if (!p->r || p->rank != rank)
                continue;
            for (size_t j = 0; j < p->r->n_nodes; j++) {
                const char *nm = p->r->nodes[j].name;
                struct pick *holder = hw_strmap_get(&seen, nm);
                if (!holder) {
                    hw_strmap_put(&seen, nm, p);
                    continue;
                }
                if (holder == p)
                    continue; /* cannot happen: a source's own names were checked when read */
                int line = p->node_lines ? p->node_lines[j] : 0;
                if (strict)
                    diag_add(diags, p->source, line, true,
                             "region %d: node name \"%s\" is also used in region %d of %s; node names "
                             "are unique across the map",
                             p->r->region_id, nm, holder->r->region_id, holder->source);
                else
                    diag_add(diags, p->source, line, false,
                             "region %d: node \"%s\" left out: region %d of %s, read later, uses the "
                             "same name",
                             p->r->region_id, nm, holder->r->region_id, holder->source);
                p->drop[j] = true;
            }
        }
    }
    hw_strmap_free(&seen);
}

static void picks_free(struct picks *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i].drop);
    free(p->v);
    free(p->pos);
    memset(p, 0, sizeof *p);
}

static void copy_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src ? hw_strdup(src) : NULL;
}

json_t *hw_derpmap_merge(const struct hw_derpmap_source *const *sources, const char *const *names,
                         size_t n, const struct hw_config *cfg, struct hw_derpmap_diags *diags)
{
    struct tc_derp_map emb = {0};
    if (wants_embedded(cfg)) {
        char err[300];
        if (hw_derpmap_add_embedded_region(cfg, &emb, err, sizeof err) < 0)
            diag_add(diags, embedded_source, 0, false, "left out of the DERP map: %s", err);
    }
    struct picks picks;
    merge_picks(sources, names, n, &emb, false, &picks, diags);

    struct tc_derp_map out = {0};
    reserve_regions(&out, picks.n);
    for (size_t i = 0; i < picks.n; i++) {
        const struct pick *p = &picks.v[i];
        if (!p->r)
            continue;
        size_t kept = 0;
        for (size_t j = 0; j < p->r->n_nodes; j++)
            kept += !p->drop[j];
        if (kept == 0) {
            diag_add(diags, p->source, p->line, false,
                     "region %d left out: every node in it lost its name to a later source",
                     p->r->region_id);
            continue;
        }
        struct tc_derp_region *r = next_region(&out, p->r->region_id, p->r->region_code,
                                               p->r->region_name);
        r->nodes = hw_calloc(kept, sizeof *r->nodes);
        r->latitude = p->r->latitude;
        r->longitude = p->r->longitude;
        r->avoid = p->r->avoid;
        r->no_measure_no_home = p->r->no_measure_no_home;
        for (size_t j = 0; j < p->r->n_nodes; j++) {
            if (p->drop[j])
                continue;
            const struct tc_derp_node *s = &p->r->nodes[j];
            struct tc_derp_node *d = next_node(r);
            d->name = hw_strdup(s->name);
            d->host_name = hw_strdup(s->host_name);
            copy_str(&d->cert_name, s->cert_name);
            copy_str(&d->ipv4, s->ipv4);
            copy_str(&d->ipv6, s->ipv6);
            copy_str(&d->stun_test_ip, s->stun_test_ip);
            d->region_id = r->region_id;
            d->stun_port = s->stun_port;
            d->stun_only = s->stun_only;
            d->derp_port = s->derp_port;
            d->insecure_for_tests = s->insecure_for_tests;
            d->can_port80 = s->can_port80;
        }
    }
    picks_free(&picks);
    json_t *j = tc_derp_map_to_json(&out);
    tc_derp_map_clear(&out);
    tc_derp_map_clear(&emb);
    return j;
}

size_t hw_derpmap_check_paths(const struct hw_config *cfg, struct hw_derpmap_diags *diags)
{
    size_t before = diags->n_errors;
    size_t n = cfg->n_derp_paths;
    struct hw_derpmap_source *srcs = hw_calloc(n ? n : 1, sizeof *srcs);
    const struct hw_derpmap_source **ptrs = hw_calloc(n ? n : 1, sizeof *ptrs);
    for (size_t i = 0; i < n; i++)
        if (hw_derpmap_load_file(cfg->derp_paths[i], &srcs[i], diags) == 0)
            ptrs[i] = &srcs[i];
    struct tc_derp_map emb = {0};
    if (wants_embedded(cfg)) {
        char err[300];
        if (hw_derpmap_add_embedded_region(cfg, &emb, err, sizeof err) < 0)
            diag_add(diags, embedded_source, 0, true, "%s", err);
    }
    struct picks picks;
    merge_picks(ptrs, (const char *const *)cfg->derp_paths, n, &emb, true, &picks, diags);
    picks_free(&picks);
    tc_derp_map_clear(&emb);
    for (size_t i = 0; i < n; i++)
        hw_derpmap_source_clear(&srcs[i]);
    free(srcs);
    free(ptrs);
    return diags->n_errors - before;
}

/* ---- fetching a URL ------------------------------------------------------------------- */

struct fetch_buf {
    char *data;
    size_t len, cap;
    bool too_big;
    atomic_bool *cancel;
};

static size_t fetch_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct fetch_buf *b = userdata;
    size_t n = size * nmemb;
    if (n > HW_DERPMAP_MAX_BODY - b->len) {
        b->too_big = true;
        return 0; /* curl stops with CURLE_WRITE_ERROR */
    }
    while (b->len + n + 1 > b->cap)
        b->data = grow(b->data, b->cap, &b->cap, 1);
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static int fetch_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                          curl_off_t ulnow)
{
    struct fetch_buf *b = userdata;
    return b->cancel && atomic_load(b->cancel) ? 1 : 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* GET url, at most HW_DERPMAP_MAX_BODY bytes in HW_DERPMAP_FETCH_TIMEOUT_MS, redirects
 * included (Headscale uses Go's default client: redirects followed, proxies from the
 * environment, loopback never proxied). Returns the body or NULL with err set. */
static char *fetch_url(const char *url, atomic_bool *cancel, size_t *len_out, char *err, size_t err_len)
{
    pthread_once(&curl_once, curl_init_once);
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, err_len, "cannot start libcurl");
        return NULL;
    }
    struct fetch_buf b = {.cancel = cancel};
    char curl_err[CURL_ERROR_SIZE] = "";
    const char *env_np = getenv("no_proxy");
    if (!env_np)
        env_np = getenv("NO_PROXY");
    char *noproxy = hw_sprintf("localhost,127.0.0.1,::1%s%.1000s", env_np && *env_np ? "," : "",
                               env_np ? env_np : "");
    struct curl_slist *hdr = curl_slist_append(NULL, "Accept: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)HW_DERPMAP_FETCH_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, noproxy);
    curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)HW_DERPMAP_MAX_BODY);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "headwater/" HW_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, fetch_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &b);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdr);
    free(noproxy);
    if (rc == CURLE_OK && status == 200) {
        if (!b.data)
            b.data = hw_strdup("");
        *len_out = b.len;
        return b.data;
    }
    free(b.data);
    if (b.too_big || rc == CURLE_FILESIZE_EXCEEDED)
        snprintf(err, err_len, "answer larger than the %u-byte limit", HW_DERPMAP_MAX_BODY);
    else if (rc == CURLE_ABORTED_BY_CALLBACK)
        snprintf(err, err_len, "fetch abandoned: shutting down");
    else if (rc != CURLE_OK)
        snprintf(err, err_len, "%s", curl_err[0] ? curl_err : curl_easy_strerror(rc));
    else
        snprintf(err, err_len, "HTTP status %ld (expected 200)", status);
    return NULL;
}

/* ---- the refresher -------------------------------------------------------------------- */

struct src_state {
    bool is_url;
    char *name;                     /* URL or path */
    bool have_good;
    struct hw_derpmap_source good;  /* last contents that parsed and checked */
    char *last_problem;             /* to log a failure once, not every round */
};

struct hw_derpmap {
    /* Set at start, then read-only. */
    struct hw_config cfg;           /* only the derp fields and server_url are filled */
    struct hw_loop *loop;
    hw_derpmap_change_cb on_change;
    void *arg;
    bool periodic;
    int64_t period_ms;

    /* Worker thread only (after start). */
    struct src_state *srcs;
    size_t n_srcs;
    json_t *last_merged;

    atomic_bool cancel;             /* abandons a fetch in progress */
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;             /* guards everything below */
    pthread_cond_t cv;
    bool stop_req, refresh_req;
    json_t *current;
    json_t *pending;                /* newest map not yet delivered to the loop */
    bool post_queued;
    bool stopped;
    uint64_t rounds;
};

static void copy_config(struct hw_config *dst, const struct hw_config *src)
{
    memset(dst, 0, sizeof *dst);
    dst->server_url = src->server_url ? hw_strdup(src->server_url) : NULL;
    dst->derp_server_enabled = src->derp_server_enabled;
    dst->derp_server_auto_add_region = src->derp_server_auto_add_region;
    dst->derp_server_region_id = src->derp_server_region_id;
    dst->derp_server_region_code = src->derp_server_region_code ? hw_strdup(src->derp_server_region_code) : NULL;
    dst->derp_server_region_name = src->derp_server_region_name ? hw_strdup(src->derp_server_region_name) : NULL;
    dst->derp_server_stun_listen_addr =
        src->derp_server_stun_listen_addr ? hw_strdup(src->derp_server_stun_listen_addr) : NULL;
    dst->derp_server_ipv4 = src->derp_server_ipv4 ? hw_strdup(src->derp_server_ipv4) : NULL;
    dst->derp_server_ipv6 = src->derp_server_ipv6 ? hw_strdup(src->derp_server_ipv6) : NULL;
    dst->derp_auto_update_enabled = src->derp_auto_update_enabled;
    dst->derp_update_frequency_ms = src->derp_update_frequency_ms;
}

static void log_diags(enum hw_log_level level, const struct hw_derpmap_diags *d)
{
    for (size_t i = 0; i < d->n; i++) {
        const struct hw_derpmap_diag *g = &d->items[i];
        if (g->line > 0)
            hw_log(level, "DERP map: %s:%d: %s", g->source, g->line, g->message);
        else
            hw_log(level, "DERP map: %s: %s", g->source, g->message);
    }
}

/* Reads one source. On failure the last good contents stay; the reason is logged when
 * it differs from the last one logged, so a source that stays broken does not fill the
 * log every period. */
static void read_source(struct hw_derpmap *d, struct src_state *s, bool at_start)
{
    struct hw_derpmap_diags diags = {0};
    struct hw_derpmap_source fresh;
    int rc;
    if (s->is_url) {
        char err[CURL_ERROR_SIZE + 64];
        size_t len = 0;
        char *body = fetch_url(s->name, &d->cancel, &len, err, sizeof err);
        if (body) {
            rc = hw_derpmap_parse_json(s->name, body, len, &fresh, &diags);
            free(body);
        } else {
            if (atomic_load(&d->cancel))
                return;
            diag_add(&diags, s->name, 0, true, "%s", err);
            rc = -1;
        }
    } else {
        rc = hw_derpmap_load_file(s->name, &fresh, &diags);
    }
    const char *kind = s->is_url ? "derp.urls" : "derp.paths";
    if (rc == 0) {
        if (s->last_problem || at_start || !s->have_good)
            log_diags(HW_LOG_WARN, &diags); /* warnings only: once per recovery */
        if (s->last_problem)
            log_info("DERP map: %s %s is readable again", kind, s->name);
        free(s->last_problem);
        s->last_problem = NULL;
        if (s->have_good)
            hw_derpmap_source_clear(&s->good);
        s->good = fresh;
        s->have_good = true;
    } else {
        /* The first error names the problem well enough for the log line. */
        const struct hw_derpmap_diag *first = NULL;
        for (size_t i = 0; i < diags.n && !first; i++)
            if (diags.items[i].is_error)
                first = &diags.items[i];
        char *problem = first ? hw_sprintf("%s", first->message) : hw_strdup("unreadable");
        if (!s->last_problem || strcmp(s->last_problem, problem) != 0) {
            log_warn("DERP map: %s %s cannot be used (%s); %s", kind, s->name,
                     diags.n_errors == 1 ? "1 error" : "several errors",
                     s->have_good ? "keeping its last good contents" : "left out of the map");
            log_diags(HW_LOG_WARN, &diags);
        }
        free(s->last_problem);
        s->last_problem = problem;
    }
    hw_derpmap_diags_free(&diags);
}

/* The merged map; conflicts between sources go to diags. */
static json_t *merge_now(struct hw_derpmap *d, struct hw_derpmap_diags *diags)
{
    const struct hw_derpmap_source **ptrs = hw_calloc(d->n_srcs + 1, sizeof *ptrs);
    const char **names = hw_calloc(d->n_srcs + 1, sizeof *names);
    for (size_t i = 0; i < d->n_srcs; i++) {
        ptrs[i] = d->srcs[i].have_good ? &d->srcs[i].good : NULL;
        names[i] = d->srcs[i].name;
    }
    json_t *m = hw_derpmap_merge(ptrs, names, d->n_srcs, &d->cfg, diags);
    free(ptrs);
    free(names);
    return m;
}

static void deliver(struct hw_loop *loop, void *arg)
{
    struct hw_derpmap *d = arg;
    pthread_mutex_lock(&d->mu);
    json_t *m = d->pending;
    d->pending = NULL;
    d->post_queued = false;
    bool stopped = d->stopped;
    if (m && !stopped) {
        json_decref(d->current);
        d->current = json_incref(m);
    }
    pthread_mutex_unlock(&d->mu);
    if (stopped) {
        /* hw_derpmap_stop left the struct for this last queued post to free. */
        json_decref(m);
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        free(d);
        return;
    }
    if (m) {
        if (d->on_change)
            d->on_change(m, d->arg);
        json_decref(m);
    }
}

static void refresh_round(struct hw_derpmap *d)
{
    for (size_t i = 0; i < d->n_srcs && !atomic_load(&d->cancel); i++)
        read_source(d, &d->srcs[i], false);
    if (atomic_load(&d->cancel))
        return;
    struct hw_derpmap_diags conflicts = {0};
    json_t *m = merge_now(d, &conflicts);
    bool changed = !json_equal(m, d->last_merged);
    if (changed) {
        /* Conflicts are logged when what clients get changes, not every round. */
        log_diags(HW_LOG_WARN, &conflicts);
        log_info("DERP map changed: %zu regions; pushing it to connected clients",
                 json_object_size(json_object_get(m, "Regions")));
        json_decref(d->last_merged);
        d->last_merged = json_incref(m);
    }
    pthread_mutex_lock(&d->mu);
    if (changed) {
        json_decref(d->pending);
        d->pending = json_incref(m);
        if (!d->post_queued) {
            d->post_queued = true;
            hw_loop_post(d->loop, deliver, d);
        }
    }
    d->rounds++;
    pthread_mutex_unlock(&d->mu);
    json_decref(m);
    hw_derpmap_diags_free(&conflicts);
}

static void deadline_after(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *worker(void *arg)
{
    struct hw_derpmap *d = arg;
    struct timespec next;
    deadline_after(&next, d->period_ms);
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->stop_req && !d->refresh_req) {
            if (!d->periodic) {
                pthread_cond_wait(&d->cv, &d->mu);
                continue;
            }
            if (pthread_cond_timedwait(&d->cv, &d->mu, &next) == ETIMEDOUT)
                break;
        }
        if (d->stop_req)
            break;
        d->refresh_req = false;
        pthread_mutex_unlock(&d->mu);
        refresh_round(d);
        deadline_after(&next, d->period_ms);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void free_sources(struct hw_derpmap *d)
{
    for (size_t i = 0; i < d->n_srcs; i++) {
        struct src_state *s = &d->srcs[i];
        if (s->have_good)
            hw_derpmap_source_clear(&s->good);
        free(s->name);
        free(s->last_problem);
    }
    free(d->srcs);
    d->srcs = NULL;
    d->n_srcs = 0;
}

struct hw_derpmap *hw_derpmap_start(const struct hw_config *cfg, struct hw_loop *loop,
                                    hw_derpmap_change_cb on_change, void *arg, char *err,
                                    size_t err_len)
{
    pthread_once(&curl_once, curl_init_once);
    struct hw_derpmap *d = hw_calloc(1, sizeof *d);
    copy_config(&d->cfg, cfg);
    d->loop = loop;
    d->on_change = on_change;
    d->arg = arg;
    d->periodic = cfg->derp_auto_update_enabled && cfg->derp_update_frequency_ms > 0;
    d->period_ms = cfg->derp_update_frequency_ms > 0 ? cfg->derp_update_frequency_ms : 0;
    atomic_init(&d->cancel, false);
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* Headscale's order: every URL, then every file. */
    d->n_srcs = cfg->n_derp_urls + cfg->n_derp_paths;
    d->srcs = hw_calloc(d->n_srcs ? d->n_srcs : 1, sizeof *d->srcs);
    for (size_t i = 0; i < cfg->n_derp_urls; i++)
        d->srcs[i] = (struct src_state){.is_url = true, .name = hw_strdup(cfg->derp_urls[i])};
    for (size_t i = 0; i < cfg->n_derp_paths; i++)
        d->srcs[cfg->n_derp_urls + i] = (struct src_state){.name = hw_strdup(cfg->derp_paths[i])};

    for (size_t i = 0; i < d->n_srcs; i++)
        read_source(d, &d->srcs[i], true);
    struct hw_derpmap_diags conflicts = {0};
    d->last_merged = merge_now(d, &conflicts);
    log_diags(HW_LOG_WARN, &conflicts);
    hw_derpmap_diags_free(&conflicts);
    d->current = json_incref(d->last_merged);
    size_t n_regions = json_object_size(json_object_get(d->current, "Regions"));
    if (d->n_srcs == 0 && !wants_embedded(cfg))
        log_warn("DERP map: no source (derp.urls, derp.paths, derp.server) — clients get an empty "
                 "map and can only reach peers directly");
    else if (n_regions == 0)
        log_warn("DERP map: no usable region in any source — clients get an empty map and can "
                 "only reach peers directly");
    else
        log_info("DERP map: %zu regions from %zu sources%s", n_regions, d->n_srcs,
                 wants_embedded(cfg) ? " and the embedded relay" : "");

    if (pthread_create(&d->thread, NULL, worker, d) != 0) {
        snprintf(err, err_len, "cannot start the DERP map refresher thread: %s", strerror(errno));
        d->stopped = true;
        hw_derpmap_stop(d);
        return NULL;
    }
    d->thread_started = true;
    return d;
}

json_t *hw_derpmap_current(struct hw_derpmap *d)
{
    pthread_mutex_lock(&d->mu);
    json_t *m = json_incref(d->current);
    pthread_mutex_unlock(&d->mu);
    return m;
}

void hw_derpmap_refresh(struct hw_derpmap *d)
{
    pthread_mutex_lock(&d->mu);
    d->refresh_req = true;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

uint64_t hw_derpmap_rounds(struct hw_derpmap *d)
{
    pthread_mutex_lock(&d->mu);
    uint64_t r = d->rounds;
    pthread_mutex_unlock(&d->mu);
    return r;
}

void hw_derpmap_stop(struct hw_derpmap *d)
{
    if (!d)
        return;
    if (d->thread_started) {
        atomic_store(&d->cancel, true);
        pthread_mutex_lock(&d->mu);
        d->stop_req = true;
        pthread_cond_signal(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
        d->thread_started = false;
    }
    pthread_mutex_lock(&d->mu);
    d->stopped = true;
    d->on_change = NULL;
    bool queued = d->post_queued;
    json_decref(d->pending);
    d->pending = NULL;
    json_decref(d->current);
    d->current = NULL;
    pthread_mutex_unlock(&d->mu);
    json_decref(d->last_merged);
    d->last_merged = NULL;
    free_sources(d);
    hw_config_free(&d->cfg);
    if (!queued) {
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        free(d);
    }
}
