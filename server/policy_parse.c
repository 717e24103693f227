/* The policy file: HuJSON in, a validated struct hw_policy out. Every problem is
 * reported once, as "SOURCE:LINE: PATH: what is wrong", where PATH is the place in
 * the document ("acls[2].dst[0]") and LINE where that value starts. */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"
#include "server/hujson.h"
#include "server/policy_internal.h"

#define PATH_LEN 512
#define MSG_LEN 768

/* Tailscale's default for how long a "check" SSH approval lasts. */
#define SSH_CHECK_DEFAULT_S (12 * 3600)

struct pctx {
    struct hw_policy *p;
    struct hw_hujson_pos *pos;
    char *err;
    size_t err_len;
    struct hw_ipset internet;
};

__attribute__((format(printf, 3, 4))) static int fail(struct pctx *c, const char *path, const char *fmt, ...)
{
    char msg[MSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line = hw_hujson_line(c->pos, path);
    const char *src = c->p->source;
    if (line > 0 && path && *path)
        snprintf(c->err, c->err_len, "%s:%d: %s: %s", src, line, path, msg);
    else if (line > 0)
        snprintf(c->err, c->err_len, "%s:%d: %s", src, line, msg);
    else if (path && *path)
        snprintf(c->err, c->err_len, "%s: %s: %s", src, path, msg);
    else
        snprintf(c->err, c->err_len, "%s: %s", src, msg);
    return -1;
}

static void *grow(void *arr, size_t n, size_t elem)
{
    /* Arrays grow one element at a time but in power-of-two steps. */
    if (n && (n & (n - 1)))
        return arr;
    void *g = realloc(arr, (n ? n * 2 : 1) * elem);
    if (!g)
        abort();
    return g;
}

#define PUSH(arr, n) (*(arr = grow(arr, n, sizeof *(arr)), &(arr)[(n)++]))

static uint32_t intern(char ***names, size_t *n, struct hw_strmap *ids, const char *name)
{
    void *v = hw_strmap_get(ids, name);
    if (v)
        return (uint32_t)((uintptr_t)v - 1);
    uint32_t id = (uint32_t)*n;
    PUSH(*names, *n) = hw_strdup(name);
    hw_strmap_put(ids, name, (void *)(uintptr_t)(id + 1));
    return id;
}

static int32_t lookup(const struct hw_strmap *ids, const char *name)
{
    void *v = hw_strmap_get(ids, name);
    return v ? (int32_t)((uintptr_t)v - 1) : -1;
}

int32_t pol_user_id(const struct hw_policy *p, const char *name) { return p ? lookup(&p->user_ids, name) : -1; }
int32_t pol_tag_id(const struct hw_policy *p, const char *name) { return p ? lookup(&p->tag_ids, name) : -1; }

bool pol_user_in_group(const struct hw_policy *p, int32_t user, uint32_t group)
{
    return user >= 0 && p->group_words && bit_get(p->user_groups + (size_t)user * p->group_words, group);
}

/* ---- names ---- */

static const char *tag_problem(const char *t)
{
    if (strncmp(t, "tag:", 4) != 0)
        return "a tag starts with \"tag:\"";
    const char *n = t + 4;
    if (!*n)
        return "the tag has no name after \"tag:\"";
    if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z')))
        return "a tag name starts with a letter";
    for (; *n; n++)
        if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') || (*n >= '0' && *n <= '9') || *n == '-'))
            return "a tag name holds only letters, digits and '-'";
    return NULL;
}

static bool simple_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
              *s == '_' || *s == '.'))
            return false;
    return true;
}

/* "alice@" or "alice" (a namespace). Tailscale writes e-mail addresses here; Headwater
 * has no e-mail identities, so those could never match and are refused. */
static int user_token(struct pctx *c, const char *path, const char *s, uint32_t *out)
{
    char name[72];
    size_t n = strlen(s);
    if (n && s[n - 1] == '@')
        n--;
    if (memchr(s, '@', n))
        return fail(c, path, "\"%s\": users are namespaces here; write \"NAME@\" for namespace NAME", s);
    if (n == 0 || n >= sizeof name)
        return fail(c, path, "\"%s\" is not a namespace name", s);
    memcpy(name, s, n);
    name[n] = '\0';
    const char *why = hw_dns_label_problem(name);
    if (why)
        return fail(c, path, "\"%s\" is not a namespace name: %s", s, why);
    *out = intern(&c->p->users, &c->p->n_users, &c->p->user_ids, name);
    return 0;
}

static int prefix_value(struct pctx *c, const char *path, const char *s, struct hw_ipprefix *out)
{
    int rc = hw_ipprefix_parse(s, out);
    if (rc == -2) {
        char fixed[HW_IP_STR_MAX];
        hw_ipprefix_format(out, fixed);
        return fail(c, path, "\"%s\" has bits set after the prefix length; the prefix is \"%s\"", s, fixed);
    }
    if (rc < 0)
        return fail(c, path, "\"%s\" is not an IP address or CIDR prefix", s);
    return 0;
}

/* ---- JSON shape helpers ---- */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "a number";
    case JSON_REAL: return "a number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    default: return "null";
    }
}

static int want(struct pctx *c, const char *path, const json_t *v, json_type t, const char *what)
{
    if (!v || json_typeof(v) != t)
        return fail(c, path, "expected %s, got %s", what, v ? type_name(v) : "nothing");
    return 0;
}

/* Array of strings; each element handed to fn with its own path. */
typedef int (*str_fn)(struct pctx *c, const char *path, const char *s, void *ctx);

static int each_string(struct pctx *c, const char *path, const json_t *arr, bool nonempty, str_fn fn,
                       void *ctx)
{
    if (want(c, path, arr, JSON_ARRAY, "an array of strings") < 0)
        return -1;
    if (nonempty && json_array_size(arr) == 0)
        return fail(c, path, "is empty, so the entry would match nothing");
    char ep[PATH_LEN];
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        hw_hujson_path_index(ep, sizeof ep, path, i);
        if (want(c, ep, v, JSON_STRING, "a string") < 0 || fn(c, ep, json_string_value(v), ctx) < 0)
            return -1;
    }
    return 0;
}

/* Object keys are matched without regard to case, as Tailscale does ("ACLs"). */
struct keyspec {
    const char *name;
    json_t *value;
    char path[PATH_LEN];
};

/* Keys past the first n_listed are recognised only to be refused with a better message,
 * so the "known" list leaves them out. */
static int take_keys(struct pctx *c, const char *path, const json_t *obj, struct keyspec *keys, size_t n_keys,
                     size_t n_listed, const char *what, bool skip_hash)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        size_t j = 0;
        while (j < n_keys && strcasecmp(keys[j].name, k) != 0)
            j++;
        char kp[PATH_LEN];
        hw_hujson_path_key(kp, sizeof kp, path, k);
        if (j == n_keys) {
            if (skip_hash && k[0] == '#')
                continue;   /* headscale-admin keeps notes in "#..." keys */
            char list[256] = "";
            for (size_t m = 0; m < n_listed; m++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", m ? ", " : "", keys[m].name);
            return fail(c, kp, "unknown key \"%s\" in %s (known: %s)", k, what, list);
        }
        if (keys[j].value)
            return fail(c, kp, "\"%s\" is given twice (keys are not case-sensitive)", k);
        keys[j].value = v;
        snprintf(keys[j].path, sizeof keys[j].path, "%s", kp);
    }
    return 0;
}

/* ---- groups, hosts, tagOwners ---- */

static int group_member(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct pol_group *g = ctx;
    if (strncmp(s, "group:", 6) == 0)
        return fail(c, path, "\"%s\": groups cannot contain groups", s);
    if (strncmp(s, "tag:", 4) == 0 || strncmp(s, "autogroup:", 10) == 0)
        return fail(c, path, "\"%s\": groups hold users (namespaces) only", s);
    uint32_t u;
    if (user_token(c, path, s, &u) < 0)
        return -1;
    PUSH(g->users, g->n_users) = u;
    return 0;
}

static int parse_groups(struct pctx *c, const char *path, const json_t *obj)
{
    struct hw_policy *p = c->p;
    if (want(c, path, obj, JSON_OBJECT, "an object of \"group:NAME\": [users]") < 0)
        return -1;
    const char *k;
    json_t *v;
    char kp[PATH_LEN];
    json_object_foreach((json_t *)obj, k, v) {
        hw_hujson_path_key(kp, sizeof kp, path, k);
        if (strncmp(k, "group:", 6) != 0 || !simple_name(k + 6))
            return fail(c, kp, "\"%s\": a group is named \"group:NAME\" (letters, digits, '-', '_', '.')", k);
        struct pol_group *g = &PUSH(p->groups, p->n_groups);
        memset(g, 0, sizeof *g);
        g->name = hw_strdup(k);
        hw_strmap_put(&p->group_ids, k, (void *)(uintptr_t)p->n_groups);
        if (each_string(c, kp, v, false, group_member, g) < 0)
            return -1;
    }
    return 0;
}

static int parse_hosts(struct pctx *c, const char *path, const json_t *obj)
{
    struct hw_policy *p = c->p;
    if (want(c, path, obj, JSON_OBJECT, "an object of \"name\": \"address or prefix\"") < 0)
        return -1;
    const char *k;
    json_t *v;
    char kp[PATH_LEN];
    json_object_foreach((json_t *)obj, k, v) {
        hw_hujson_path_key(kp, sizeof kp, path, k);
        struct hw_ipprefix probe;
        if (!simple_name(k) || hw_ipprefix_parse(k, &probe) != -1)
            return fail(c, kp, "\"%s\" cannot be a host name (letters, digits, '-', '_', '.'; not an address)", k);
        if (want(c, kp, v, JSON_STRING, "an IP address or prefix") < 0)
            return -1;
        struct pol_host *h = &PUSH(p->hosts, p->n_hosts);
        h->name = hw_strdup(k);
        hw_strmap_put(&p->host_ids, k, (void *)(uintptr_t)p->n_hosts);
        if (prefix_value(c, kp, json_string_value(v), &h->prefix) < 0)
            return -1;
    }
    return 0;
}

struct owner_ctx {
    struct pol_owner **owners;
    size_t *n;
    bool allow_admin;
};

static int owner_entry(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct owner_ctx *oc = ctx;
    struct pol_owner o;
    if (strncmp(s, "group:", 6) == 0) {
        int32_t g = lookup(&c->p->group_ids, s);
        if (g < 0)
            return fail(c, path, "group \"%s\" is not defined in \"groups\"", s);
        o = (struct pol_owner){PO_GROUP, (uint32_t)g};
    } else if (strncmp(s, "tag:", 4) == 0) {
        const char *why = tag_problem(s);
        if (why)
            return fail(c, path, "\"%s\": %s", s, why);
        int32_t t = lookup(&c->p->tag_ids, s);
        if (t < 0)
            return fail(c, path, "tag \"%s\" is not defined in \"tagOwners\"", s);
        o = (struct pol_owner){PO_TAG, (uint32_t)t};
    } else if (oc->allow_admin && (strcmp(s, "autogroup:admin") == 0 || strcmp(s, "autogroup:owner") == 0)) {
        o = (struct pol_owner){PO_ADMIN, 0};
    } else if (strncmp(s, "autogroup:", 10) == 0) {
        return fail(c, path, "\"%s\" cannot be an owner here (users, groups%s or tags)", s,
                    oc->allow_admin ? ", autogroup:admin" : "");
    } else {
        uint32_t u;
        if (user_token(c, path, s, &u) < 0)
            return -1;
        o = (struct pol_owner){PO_USER, u};
    }
    PUSH(*oc->owners, *oc->n) = o;
    return 0;
}

/* Tag-owns-tag chains must end: "tag:a" owned by "tag:b" owned by "tag:a" means
 * nobody can ever apply either. state: 0 new, 1 on the current path, 2 done. */
static int tag_cycle(const struct hw_policy *p, uint32_t t, uint8_t *state)
{
    if (state[t] == 1)
        return (int)t;
    if (state[t] == 2)
        return -1;
    state[t] = 1;
    for (size_t i = 0; i < p->tags[t].n_owners; i++) {
        const struct pol_owner *o = &p->tags[t].owners[i];
        if (o->kind == PO_TAG) {
            int r = tag_cycle(p, o->ref, state);
            if (r >= 0)
                return r;
        }
    }
    state[t] = 2;
    return -1;
}

static int parse_tag_owners(struct pctx *c, const char *path, const json_t *obj)
{
    struct hw_policy *p = c->p;
    if (want(c, path, obj, JSON_OBJECT, "an object of \"tag:NAME\": [owners]") < 0)
        return -1;
    const char *k;
    json_t *v;
    char kp[PATH_LEN];
    /* Names first: an owner may be a tag defined further down. */
    json_object_foreach((json_t *)obj, k, v) {
        hw_hujson_path_key(kp, sizeof kp, path, k);
        const char *why = tag_problem(k);
        if (why)
            return fail(c, kp, "\"%s\": %s", k, why);
        struct pol_tag *t = &PUSH(p->tags, p->n_tags);
        memset(t, 0, sizeof *t);
        t->name = hw_strdup(k);
        hw_strmap_put(&p->tag_ids, k, (void *)(uintptr_t)p->n_tags);
    }
    size_t i = 0;
    json_object_foreach((json_t *)obj, k, v) {
        hw_hujson_path_key(kp, sizeof kp, path, k);
        struct owner_ctx oc = {&p->tags[i].owners, &p->tags[i].n_owners, true};
        if (each_string(c, kp, v, false, owner_entry, &oc) < 0)
            return -1;
        i++;
    }
    uint8_t *state = hw_calloc(p->n_tags ? p->n_tags : 1, 1);
    for (size_t t = 0; t < p->n_tags; t++) {
        int cyc = tag_cycle(p, (uint32_t)t, state);
        if (cyc >= 0) {
            hw_hujson_path_key(kp, sizeof kp, path, p->tags[cyc].name);
            free(state);
            return fail(c, kp, "\"%s\" owns itself through a chain of tag owners", p->tags[cyc].name);
        }
    }
    free(state);
    return 0;
}

/* ---- aliases ---- */

enum where { W_SRC, W_DST, W_SSH_SRC, W_SSH_DST, W_TEST_SRC, W_TEST_DST };

static void note_bare(struct pctx *c, uint32_t user, const char *path)
{
    struct pol_bare *b = &PUSH(c->p->bare, c->p->n_bare);
    b->user = user;
    b->line = hw_hujson_line(c->pos, path);
    b->path = hw_strdup(path);
}

static int parse_alias(struct pctx *c, const char *path, const char *s, enum where w, struct pa *out)
{
    struct hw_policy *p = c->p;
    bool ssh = w == W_SSH_SRC || w == W_SSH_DST;
    bool test = w == W_TEST_SRC || w == W_TEST_DST;
    bool dst = w == W_DST || w == W_SSH_DST || w == W_TEST_DST;
    memset(out, 0, sizeof *out);
    if (strcmp(s, "*") == 0) {
        if (ssh)
            return fail(c, path, "\"*\" is not allowed in ssh rules; name users, groups, tags, "
                                 "autogroup:member, autogroup:tagged%s", dst ? " or autogroup:self" : "");
        if (test)
            return fail(c, path, "a test names one source or destination, not \"*\"");
        out->kind = PA_ANY;
        return 0;
    }
    struct hw_ipprefix pr;
    int prc = hw_ipprefix_parse(s, &pr);
    if (prc != -1) {
        if (ssh)
            return fail(c, path, "\"%s\": ssh rules name users, groups and tags, not addresses", s);
        if (prefix_value(c, path, s, &pr) < 0)
            return -1;
        if (test && pr.bits != hw_ip_bits(&pr.addr))
            return fail(c, path, "\"%s\": a test names one address, not a range", s);
        out->kind = PA_PREFIX;
        out->prefix = pr;
        return 0;
    }
    if (strncmp(s, "autogroup:", 10) == 0) {
        const char *ag = s + 10;
        if (strcmp(ag, "member") == 0 || strcmp(ag, "tagged") == 0) {
            if (test)
                return fail(c, path, "\"%s\": a test names one user, tag, host or address", s);
            out->kind = ag[0] == 'm' ? PA_MEMBER : PA_TAGGED;
            return 0;
        }
        if (strcmp(ag, "self") == 0) {
            if (!(w == W_DST || w == W_SSH_DST))
                return fail(c, path, "autogroup:self is only a destination");
            out->kind = PA_SELF;
            return 0;
        }
        if (strcmp(ag, "internet") == 0) {
            if (w != W_DST)
                return fail(c, path, "autogroup:internet is only an ACL destination (use of exit nodes)");
            out->kind = PA_INTERNET;
            return 0;
        }
        if (strcmp(ag, "nonroot") == 0)
            return fail(c, path, "autogroup:nonroot belongs in an ssh rule's \"users\"");
        if (strcmp(ag, "admin") == 0 || strcmp(ag, "owner") == 0 || strcmp(ag, "danger-all") == 0 ||
            strcmp(ag, "shared") == 0 || strcmp(ag, "it-admin") == 0 || strcmp(ag, "network-admin") == 0 ||
            strcmp(ag, "billing-admin") == 0 || strcmp(ag, "auditor") == 0)
            return fail(c, path, "\"%s\" is not supported by Headwater", s);
        return fail(c, path, "unknown autogroup \"%s\"", s);
    }
    if (strncmp(s, "group:", 6) == 0) {
        if (w == W_SSH_DST || w == W_TEST_DST)
            return fail(c, path, "\"%s\": a group cannot be a%s destination", s, ssh ? "n ssh" : " test");
        int32_t g = lookup(&p->group_ids, s);
        if (g < 0)
            return fail(c, path, "group \"%s\" is not defined in \"groups\"", s);
        out->kind = PA_GROUP;
        out->ref = (uint32_t)g;
        return 0;
    }
    if (strncmp(s, "tag:", 4) == 0) {
        const char *why = tag_problem(s);
        if (why)
            return fail(c, path, "\"%s\": %s", s, why);
        int32_t t = lookup(&p->tag_ids, s);
        if (t < 0)
            return fail(c, path, "tag \"%s\" is not defined in \"tagOwners\"", s);
        out->kind = PA_TAG;
        out->ref = (uint32_t)t;
        return 0;
    }
    if (strchr(s, '@')) {
        out->kind = PA_USER;
        return user_token(c, path, s, &out->ref);
    }
    if (strchr(s, ':'))
        return fail(c, path, "\"%s\" is not a user, group, tag, autogroup, host or address", s);
    int32_t h = lookup(&p->host_ids, s);
    if (h >= 0) {
        if (ssh)
            return fail(c, path, "host \"%s\": ssh rules name users, groups and tags, not hosts", s);
        out->kind = PA_HOST;
        out->ref = (uint32_t)h;
        out->prefix = p->hosts[h].prefix;
        if (test && out->prefix.bits != hw_ip_bits(&out->prefix.addr))
            return fail(c, path, "host \"%s\" is a range; a test names one address", s);
        return 0;
    }
    /* Not a host: a namespace written without '@'. Whether it exists is only known
     * against the tailnet (hw_policy_check_names). */
    if (hw_dns_label_problem(s))
        return fail(c, path, "unknown host \"%s\" (not in \"hosts\", and not a namespace name)", s);
    out->kind = PA_USER;
    if (user_token(c, path, s, &out->ref) < 0)
        return -1;
    note_bare(c, out->ref, path);
    return 0;
}

/* ---- ports and protocols ---- */

static int parse_port(const char *s, size_t n, uint16_t *out)
{
    if (n == 0 || n > 5)
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int parse_ports(struct pctx *c, const char *path, const char *whole, const char *s, struct pol_dst *d)
{
    if (strcmp(s, "*") == 0) {
        PUSH(d->ports, d->n_ports) = (struct pol_ports){0, 65535};
        return 0;
    }
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *dash = memchr(p, '-', n);
        uint16_t first, last;
        if (dash) {
            if (parse_port(p, (size_t)(dash - p), &first) < 0 ||
                parse_port(dash + 1, n - (size_t)(dash - p) - 1, &last) < 0)
                return fail(c, path, "\"%s\": bad port range \"%.*s\" (want FIRST-LAST, 0-65535)", whole, (int)n, p);
            if (first > last)
                return fail(c, path, "\"%s\": port range \"%.*s\" runs backwards", whole, (int)n, p);
        } else {
            if (parse_port(p, n, &first) < 0 || first == 0)
                return fail(c, path, "\"%s\": bad port \"%.*s\" (want 1-65535, a range, a list or \"*\")", whole,
                            (int)n, p);
            last = first;
        }
        PUSH(d->ports, d->n_ports) = (struct pol_ports){first, last};
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/* "ALIAS:PORTS", where ALIAS may itself hold colons ("tag:web:443",
 * "fd7a:115c:a1e0::1:22") and IPv6 may be bracketed ("[fd7a::1]:22"). */
static int parse_dst(struct pctx *c, const char *path, const char *s, enum where w, struct pol_dst *d)
{
    char buf[PATH_LEN];
    size_t n = strlen(s);
    if (n >= sizeof buf)
        return fail(c, path, "destination is %zu characters long", n);
    memcpy(buf, s, n + 1);
    char *alias = buf, *ports;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close || (close[1] != ':' && close[1] != '/'))
            return fail(c, path, "\"%s\": expected [IPv6]:PORTS", s);
        struct hw_ip ip;
        *close = '\0';
        if (hw_ip_parse(buf + 1, &ip) < 0 || ip.fam != 6)
            return fail(c, path, "\"%s\": brackets hold an IPv6 address", s);
        memmove(close, close + 1, strlen(close + 1) + 1);
        alias = buf + 1;
    }
    ports = strrchr(alias, ':');
    if (!ports || !ports[1] || strspn(ports + 1, "0123456789*,-") != strlen(ports + 1))
        return fail(c, path, "\"%s\": expected ALIAS:PORTS, e.g. \"tag:web:443\" or \"%s:*\"", s, s);
    *ports++ = '\0';
    if (parse_alias(c, path, alias, w, &d->a) < 0)
        return -1;
    return parse_ports(c, path, s, ports, d);
}

static const struct {
    const char *name;
    int num;
} protocols[] = {
    {"icmp", 1},  {"igmp", 2},  {"ipv4", 4},       {"ip-in-ip", 4}, {"tcp", 6},   {"egp", 8},  {"igp", 9},
    {"udp", 17},  {"gre", 47},  {"esp", 50},       {"ah", 51},      {"ipv6-icmp", 58}, {"sctp", 132}, {"fc", 133},
};

static int parse_proto(struct pctx *c, const char *path, const json_t *v, int *out)
{
    if (want(c, path, v, JSON_STRING, "a protocol name or number, e.g. \"tcp\"") < 0)
        return -1;
    const char *s = json_string_value(v);
    for (size_t i = 0; i < HW_ARRAY_LEN(protocols); i++)
        if (strcasecmp(s, protocols[i].name) == 0) {
            *out = protocols[i].num;
            return 0;
        }
    uint16_t num;
    if (s[0] != '0' && parse_port(s, strlen(s), &num) == 0 && num <= 255) {
        *out = num;
        return 0;
    }
    return fail(c, path, "unknown protocol \"%s\" (a name like \"tcp\", \"udp\", \"icmp\" or a number 1-255)", s);
}

static bool proto_has_ports(int proto) { return proto == 0 || proto == 6 || proto == 17 || proto == 132; }

/* ---- acls ---- */

struct alias_list {
    struct pa **arr;
    size_t *n;
    enum where w;
};

static int alias_entry(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct alias_list *al = ctx;
    struct pa a;
    if (parse_alias(c, path, s, al->w, &a) < 0)
        return -1;
    PUSH(*al->arr, *al->n) = a;
    return 0;
}

static int dst_entry(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct pol_acl *acl = ctx;
    struct pol_dst *d = &PUSH(acl->dst, acl->n_dst);
    memset(d, 0, sizeof *d);
    return parse_dst(c, path, s, W_DST, d);
}

static void literal(struct hw_ipset *set, const struct pa *a)
{
    if (a->kind == PA_HOST || a->kind == PA_PREFIX)
        hw_ipset_add_prefix(set, &a->prefix);
}

static int parse_acl(struct pctx *c, const char *path, const json_t *obj, struct pol_acl *acl)
{
    if (want(c, path, obj, JSON_OBJECT, "an object with action, src and dst") < 0)
        return -1;
    struct keyspec k[] = {{"action", NULL, ""}, {"src", NULL, ""}, {"dst", NULL, ""}, {"proto", NULL, ""},
                          {"users", NULL, ""}, {"ports", NULL, ""}};
    if (take_keys(c, path, obj, k, HW_ARRAY_LEN(k), 4, "an ACL", true) < 0)
        return -1;
    acl->line = hw_hujson_line(c->pos, path);
    if (k[4].value || k[5].value)
        return fail(c, k[4].value ? k[4].path : k[5].path,
                    "the old \"users\"/\"ports\" form is not read; write \"src\" and \"dst\"");
    if (!k[0].value)
        return fail(c, path, "\"action\" is missing (it must be \"accept\")");
    if (want(c, k[0].path, k[0].value, JSON_STRING, "\"accept\"") < 0)
        return -1;
    if (strcmp(json_string_value(k[0].value), "accept") != 0)
        return fail(c, k[0].path, "action \"%s\": only \"accept\" exists (what no rule accepts is denied)",
                    json_string_value(k[0].value));
    if (!k[1].value)
        return fail(c, path, "\"src\" is missing");
    if (!k[2].value)
        return fail(c, path, "\"dst\" is missing");
    struct alias_list al = {&acl->src, &acl->n_src, W_SRC};
    if (each_string(c, k[1].path, k[1].value, true, alias_entry, &al) < 0 ||
        each_string(c, k[2].path, k[2].value, true, dst_entry, acl) < 0)
        return -1;
    int proto = 0;
    if (k[3].value) {
        if (parse_proto(c, k[3].path, k[3].value, &proto) < 0)
            return -1;
        acl->proto = hw_malloc(sizeof *acl->proto);
        acl->proto[0] = proto;
        acl->n_proto = 1;
    }
    char ep[PATH_LEN];
    for (size_t i = 0; i < acl->n_dst; i++) {
        const struct pol_dst *d = &acl->dst[i];
        hw_hujson_path_index(ep, sizeof ep, k[2].path, i);
        if (!proto_has_ports(proto))
            for (size_t j = 0; j < d->n_ports; j++)
                if (d->ports[j].first != 0 || d->ports[j].last != 65535)
                    return fail(c, ep, "protocol \"%s\" has no ports; write \"*\" as the port",
                                json_string_value(k[3].value));
        switch (d->a.kind) {
        case PA_ANY: acl->dst_any = acl->to_internet = true; break;
        case PA_SELF: acl->has_self = true; break;
        case PA_INTERNET: acl->to_internet = true; break;
        default: break;
        }
        literal(&acl->dst_lit, &d->a);
        if (d->a.kind == PA_HOST || d->a.kind == PA_PREFIX) {
            struct hw_iprange r = hw_ipprefix_range(&d->a.prefix);
            if (hw_ipset_overlaps_range(&c->internet, &r))
                acl->to_internet = true;
        }
    }
    for (size_t i = 0; i < acl->n_src; i++) {
        const struct pa *a = &acl->src[i];
        hw_hujson_path_index(ep, sizeof ep, k[1].path, i);
        if (a->kind == PA_ANY)
            acl->src_any = true;
        literal(&acl->src_lit, a);
        /* autogroup:self narrows sources to the destination's own devices; that only
         * means something for sources that are people. */
        if (acl->has_self && !(a->kind == PA_ANY || a->kind == PA_USER || a->kind == PA_GROUP || a->kind == PA_MEMBER))
            return fail(c, ep, "with autogroup:self as a destination, sources must be users, groups, "
                               "autogroup:member or \"*\"");
    }
    hw_ipset_normalize(&acl->src_lit);
    hw_ipset_normalize(&acl->dst_lit);
    return 0;
}

/* ---- ssh ---- */

static int ssh_user_entry(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct pol_ssh *r = ctx;
    if (strcmp(s, "root") == 0)
        r->root = true;
    else if (strcmp(s, "autogroup:nonroot") == 0)
        r->nonroot = true;
    else if (!*s || strcmp(s, "*") == 0)
        return fail(c, path, "\"%s\" is not a login name (use autogroup:nonroot for any non-root user)", s);
    else if (strncmp(s, "localpart:", 10) == 0 || strncmp(s, "autogroup:", 10) == 0)
        return fail(c, path, "\"%s\" is not supported by Headwater", s);
    else
        PUSH(r->users, r->n_users) = hw_strdup(s);
    return 0;
}

static int env_entry(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct pol_ssh *r = ctx;
    if (!*s)
        return fail(c, path, "an empty acceptEnv pattern");
    PUSH(r->accept_env, r->n_accept_env) = hw_strdup(s);
    return 0;
}

static int parse_ssh_rule(struct pctx *c, const char *path, const json_t *obj, struct pol_ssh *r)
{
    if (want(c, path, obj, JSON_OBJECT, "an object with action, src, dst and users") < 0)
        return -1;
    struct keyspec k[] = {{"action", NULL, ""}, {"src", NULL, ""},         {"dst", NULL, ""},
                          {"users", NULL, ""},  {"checkPeriod", NULL, ""}, {"acceptEnv", NULL, ""}};
    if (take_keys(c, path, obj, k, HW_ARRAY_LEN(k), HW_ARRAY_LEN(k), "an ssh rule", false) < 0)
        return -1;
    r->line = hw_hujson_line(c->pos, path);
    if (!k[0].value)
        return fail(c, path, "\"action\" is missing (\"accept\" or \"check\")");
    if (want(c, k[0].path, k[0].value, JSON_STRING, "\"accept\" or \"check\"") < 0)
        return -1;
    const char *action = json_string_value(k[0].value);
    if (strcmp(action, "check") == 0)
        r->check = true;
    else if (strcmp(action, "accept") != 0)
        return fail(c, k[0].path, "action \"%s\": an ssh rule is \"accept\" or \"check\"", action);
    for (int i = 1; i <= 3; i++)
        if (!k[i].value)
            return fail(c, path, "\"%s\" is missing", k[i].name);
    struct alias_list src = {&r->src, &r->n_src, W_SSH_SRC}, dst = {&r->dst, &r->n_dst, W_SSH_DST};
    if (each_string(c, k[1].path, k[1].value, true, alias_entry, &src) < 0 ||
        each_string(c, k[2].path, k[2].value, true, alias_entry, &dst) < 0 ||
        each_string(c, k[3].path, k[3].value, true, ssh_user_entry, r) < 0)
        return -1;
    if (k[5].value && each_string(c, k[5].path, k[5].value, false, env_entry, r) < 0)
        return -1;
    r->check_period_s = SSH_CHECK_DEFAULT_S;
    if (k[4].value) {
        if (!r->check)
            return fail(c, k[4].path, "checkPeriod belongs to \"check\" rules");
        if (want(c, k[4].path, k[4].value, JSON_STRING, "a duration like \"12h\" or \"always\"") < 0)
            return -1;
        const char *per = json_string_value(k[4].value);
        int64_t ms;
        if (strcmp(per, "always") == 0)
            r->check_period_s = 0;
        else if (hw_parse_duration_ms(per, &ms) < 0 || ms < 60 * 1000 || ms > 168LL * 3600 * 1000)
            return fail(c, k[4].path, "checkPeriod \"%s\": a duration from 1m to 168h, or \"always\"", per);
        else
            r->check_period_s = ms / 1000;
    }
    /* Who may log in to whose devices (Tailscale's rules): tagged sources never reach
     * people's devices, and one person's devices only by that person. */
    bool src_tagged = false, src_many = false;
    int32_t only_user = -1;
    size_t n_users = 0;
    for (size_t i = 0; i < r->n_src; i++) {
        const struct pa *a = &r->src[i];
        if (a->kind == PA_TAG || a->kind == PA_TAGGED)
            src_tagged = true;
        else if (a->kind == PA_GROUP || a->kind == PA_MEMBER)
            src_many = true;
        else if (a->kind == PA_USER && (int32_t)a->ref != only_user) {
            only_user = (int32_t)a->ref;
            n_users++;
        }
    }
    char ep[PATH_LEN];
    for (size_t i = 0; i < r->n_dst; i++) {
        const struct pa *a = &r->dst[i];
        hw_hujson_path_index(ep, sizeof ep, k[2].path, i);
        if (a->kind == PA_SELF)
            r->has_self = true;
        if ((a->kind == PA_USER || a->kind == PA_MEMBER || a->kind == PA_SELF) && src_tagged)
            return fail(c, ep, "tagged sources cannot reach users' devices over ssh; name tags or "
                               "autogroup:tagged as destinations");
        if (a->kind == PA_USER && (src_many || n_users != 1 || (int32_t)a->ref != only_user))
            return fail(c, ep, "ssh to a user's devices is for that user alone; use autogroup:self for "
                               "\"everyone to their own devices\"");
    }
    return 0;
}

/* ---- autoApprovers ---- */

static int parse_auto_approvers(struct pctx *c, const char *path, const json_t *obj)
{
    struct hw_policy *p = c->p;
    if (want(c, path, obj, JSON_OBJECT, "an object with \"routes\" and \"exitNode\"") < 0)
        return -1;
    struct keyspec k[] = {{"routes", NULL, ""}, {"exitNode", NULL, ""}};
    if (take_keys(c, path, obj, k, HW_ARRAY_LEN(k), HW_ARRAY_LEN(k), "autoApprovers", false) < 0)
        return -1;
    if (k[0].value) {
        if (want(c, k[0].path, k[0].value, JSON_OBJECT, "an object of \"prefix\": [approvers]") < 0)
            return -1;
        const char *key;
        json_t *v;
        char kp[PATH_LEN];
        json_object_foreach(k[0].value, key, v) {
            hw_hujson_path_key(kp, sizeof kp, k[0].path, key);
            struct pol_route_approver *ra = &PUSH(p->route_approvers, p->n_route_approvers);
            memset(ra, 0, sizeof *ra);
            if (prefix_value(c, kp, key, &ra->prefix) < 0)
                return -1;
            struct owner_ctx oc = {&ra->owners, &ra->n_owners, false};
            if (each_string(c, kp, v, false, owner_entry, &oc) < 0)
                return -1;
        }
    }
    if (k[1].value) {
        struct owner_ctx oc = {&p->exit_approvers, &p->n_exit_approvers, false};
        if (each_string(c, k[1].path, k[1].value, false, owner_entry, &oc) < 0)
            return -1;
    }
    return 0;
}

/* ---- tests ----
 * A test asks whether one identity may reach one identity's port. Identities are
 * matched the way rules name them — a user by user, group, autogroup:member or "*";
 * a tag by tag, autogroup:tagged or "*"; an address by a host or prefix containing
 * it — so the answer depends on the policy alone, not on which devices exist now. */

enum pr_kind { PR_USER, PR_TAG, PR_IP };

struct principal {
    enum pr_kind kind;
    uint32_t ref;
    struct hw_ip ip;
};

static bool covers(const struct pctx *c, const struct pa *a, const struct principal *who,
                   const struct principal *from)
{
    const struct hw_policy *p = c->p;
    switch (a->kind) {
    case PA_ANY: return true;
    case PA_USER: return who->kind == PR_USER && who->ref == a->ref;
    case PA_GROUP: return who->kind == PR_USER && pol_user_in_group(p, (int32_t)who->ref, a->ref);
    case PA_TAG: return who->kind == PR_TAG && who->ref == a->ref;
    case PA_MEMBER: return who->kind == PR_USER;
    case PA_TAGGED: return who->kind == PR_TAG;
    case PA_HOST:
    case PA_PREFIX: return who->kind == PR_IP && hw_ipprefix_contains(&a->prefix, &who->ip);
    case PA_SELF: return who->kind == PR_USER && from && from->kind == PR_USER && from->ref == who->ref;
    case PA_INTERNET: return who->kind == PR_IP && hw_ipset_contains(&c->internet, &who->ip);
    }
    return false;
}

static bool acl_allows(const struct pctx *c, const struct pol_acl *acl, const struct principal *src,
                       const struct principal *dst, uint16_t port, int proto)
{
    /* A rule without "proto" carries what the client allows by default. */
    static const int dflt[] = {6, 17, 1, 58};
    bool proto_ok = false;
    if (acl->n_proto == 0)
        for (size_t i = 0; i < HW_ARRAY_LEN(dflt); i++)
            proto_ok |= proto ? proto == dflt[i] : true;
    for (size_t i = 0; i < acl->n_proto; i++)
        proto_ok |= proto ? acl->proto[i] == proto : (acl->proto[i] == 6 || acl->proto[i] == 17 ||
                                                       acl->proto[i] == 1 || acl->proto[i] == 58);
    if (!proto_ok)
        return false;
    bool src_ok = false;
    for (size_t i = 0; i < acl->n_src && !src_ok; i++)
        src_ok = covers(c, &acl->src[i], src, NULL);
    if (!src_ok)
        return false;
    for (size_t i = 0; i < acl->n_dst; i++) {
        const struct pol_dst *d = &acl->dst[i];
        if (!covers(c, &d->a, dst, src))
            continue;
        for (size_t j = 0; j < d->n_ports; j++)
            if (d->ports[j].first <= port && port <= d->ports[j].last)
                return true;
    }
    return false;
}

static bool policy_allows(const struct pctx *c, const struct principal *src, const struct principal *dst,
                          uint16_t port, int proto)
{
    for (size_t i = 0; i < c->p->n_acls; i++)
        if (acl_allows(c, &c->p->acls[i], src, dst, port, proto))
            return true;
    return false;
}

static int principal_of(struct pctx *c, const char *path, const char *s, const struct pa *alias,
                        struct principal *out)
{
    memset(out, 0, sizeof *out);
    switch (alias->kind) {
    case PA_USER: out->kind = PR_USER; out->ref = alias->ref; break;
    case PA_TAG: out->kind = PR_TAG; out->ref = alias->ref; break;
    case PA_HOST:
    case PA_PREFIX: out->kind = PR_IP; out->ip = alias->prefix.addr; break;
    case PA_GROUP: break;   /* expanded by the caller */
    default: return fail(c, path, "\"%s\": a test names one user, group, tag, host or address", s);
    }
    return 0;
}

struct test_ctx {
    const char *src_text;
    const char *src_path;
    struct principal *srcs;      /* a group's members, or the one source */
    size_t n_srcs;
    int proto;
    bool want_accept;
};

static int test_dst_entry(struct pctx *c, const char *path, const char *s, void *ctx)
{
    struct test_ctx *t = ctx;
    struct pol_dst d = {0};
    int rc = parse_dst(c, path, s, W_TEST_DST, &d);
    bool single = rc == 0 && d.n_ports == 1 && d.ports[0].first == d.ports[0].last;
    uint16_t port = d.n_ports ? d.ports[0].first : 0;
    free(d.ports);
    if (rc < 0)
        return -1;
    if (!single)
        return fail(c, path, "\"%s\": a test names one port", s);
    struct principal dst;
    if (principal_of(c, path, s, &d.a, &dst) < 0)
        return -1;
    for (size_t i = 0; i < t->n_srcs; i++) {
        bool ok = policy_allows(c, &t->srcs[i], &dst, port, t->proto);
        if (ok != t->want_accept) {
            char member[96] = "";
            if (strncmp(t->src_text, "group:", 6) == 0)
                snprintf(member, sizeof member, " (member \"%s@\")", c->p->users[t->srcs[i].ref]);
            return fail(c, path, "test failed: \"%s\"%s -> \"%s\": expected %s, got %s", t->src_text, member, s,
                        t->want_accept ? "accepted" : "denied", ok ? "accepted" : "denied");
        }
    }
    return 0;
}

static int parse_test(struct pctx *c, const char *path, const json_t *obj)
{
    if (want(c, path, obj, JSON_OBJECT, "an object with src and accept/deny") < 0)
        return -1;
    struct keyspec k[] = {{"src", NULL, ""}, {"proto", NULL, ""}, {"accept", NULL, ""}, {"deny", NULL, ""}};
    if (take_keys(c, path, obj, k, HW_ARRAY_LEN(k), HW_ARRAY_LEN(k), "a test", false) < 0)
        return -1;
    if (!k[0].value)
        return fail(c, path, "\"src\" is missing");
    if (want(c, k[0].path, k[0].value, JSON_STRING, "a user, group, tag, host or address") < 0)
        return -1;
    if (!k[2].value && !k[3].value)
        return fail(c, path, "a test needs \"accept\" or \"deny\"");
    struct test_ctx t = {.src_text = json_string_value(k[0].value), .src_path = k[0].path};
    if (k[1].value) {
        if (parse_proto(c, k[1].path, k[1].value, &t.proto) < 0)
            return -1;
        if (t.proto != 6 && t.proto != 17 && t.proto != 132)
            return fail(c, k[1].path, "a test's proto is \"tcp\", \"udp\" or \"sctp\"");
    }
    struct principal one;
    struct pa alias;
    if (parse_alias(c, k[0].path, t.src_text, W_TEST_SRC, &alias) < 0 ||
        principal_of(c, k[0].path, t.src_text, &alias, &one) < 0)
        return -1;
    struct principal *members = NULL;
    if (alias.kind == PA_GROUP) {
        const struct pol_group *g = &c->p->groups[alias.ref];
        if (g->n_users == 0)
            return fail(c, k[0].path, "group \"%s\" has no members to test", g->name);
        members = hw_calloc(g->n_users, sizeof *members);
        for (size_t i = 0; i < g->n_users; i++)
            members[i] = (struct principal){.kind = PR_USER, .ref = g->users[i]};
        t.srcs = members;
        t.n_srcs = g->n_users;
    } else {
        t.srcs = &one;
        t.n_srcs = 1;
    }
    int rc = 0;
    t.want_accept = true;
    if (k[2].value)
        rc = each_string(c, k[2].path, k[2].value, false, test_dst_entry, &t);
    t.want_accept = false;
    if (rc == 0 && k[3].value)
        rc = each_string(c, k[3].path, k[3].value, false, test_dst_entry, &t);
    free(members);
    return rc;
}

/* ---- top level ---- */

/* Parts of Tailscale's format Headwater does not implement: refusing them is safer
 * than running a policy whose author expects them to work. */
static const char *const unsupported_keys[] = {
    "grants", "nodeAttrs", "postures", "defaultSrcPosture", "sshTests", "ipsets",
    "derpMap", "disableIPv4", "OneCGNATRoute", "randomizeClientPort", "attrs",
};

enum { K_GROUPS, K_HOSTS, K_TAGOWNERS, K_ACLS, K_SSH, K_AUTOAPPROVERS, K_TESTS, K_COUNT };

static int want_rules(struct pctx *c, const char *path, const json_t *v, const char *what)
{
    if (want(c, path, v, JSON_ARRAY, what) < 0)
        return -1;
    if (json_array_size(v) > HW_POLICY_MAX_RULES)
        return fail(c, path, "%zu entries; at most %d are read", json_array_size(v), HW_POLICY_MAX_RULES);
    return 0;
}

static int parse_document(struct pctx *c, const json_t *root)
{
    struct hw_policy *p = c->p;
    if (!json_is_object(root))
        return fail(c, "", "the policy is %s; expected an object", type_name(root));
    struct keyspec k[K_COUNT] = {
        [K_GROUPS] = {"groups", NULL, ""}, [K_HOSTS] = {"hosts", NULL, ""},
        [K_TAGOWNERS] = {"tagOwners", NULL, ""}, [K_ACLS] = {"acls", NULL, ""},
        [K_SSH] = {"ssh", NULL, ""}, [K_AUTOAPPROVERS] = {"autoApprovers", NULL, ""},
        [K_TESTS] = {"tests", NULL, ""},
    };
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        char kp[PATH_LEN];
        hw_hujson_path_key(kp, sizeof kp, "", key);
        for (size_t i = 0; i < HW_ARRAY_LEN(unsupported_keys); i++)
            if (strcasecmp(key, unsupported_keys[i]) == 0)
                return fail(c, kp, "\"%s\" is not supported by Headwater yet (see docs/policy.md)", key);
    }
    if (take_keys(c, "", root, k, K_COUNT, K_COUNT, "the policy", false) < 0)
        return -1;
    /* Definitions before their users. */
    if (k[K_GROUPS].value && parse_groups(c, k[K_GROUPS].path, k[K_GROUPS].value) < 0)
        return -1;
    p->group_words = words_for(p->n_groups);
    if (k[K_HOSTS].value && parse_hosts(c, k[K_HOSTS].path, k[K_HOSTS].value) < 0)
        return -1;
    if (k[K_TAGOWNERS].value && parse_tag_owners(c, k[K_TAGOWNERS].path, k[K_TAGOWNERS].value) < 0)
        return -1;
    char ep[PATH_LEN];
    size_t i;
    if (k[K_ACLS].value) {
        if (want_rules(c, k[K_ACLS].path, k[K_ACLS].value, "an array of rules") < 0)
            return -1;
        p->acls = hw_calloc(json_array_size(k[K_ACLS].value) + 1, sizeof *p->acls);
        json_array_foreach(k[K_ACLS].value, i, v) {
            hw_hujson_path_index(ep, sizeof ep, k[K_ACLS].path, i);
            p->n_acls = i + 1;
            if (parse_acl(c, ep, v, &p->acls[i]) < 0)
                return -1;
        }
    }
    if (k[K_SSH].value) {
        if (want_rules(c, k[K_SSH].path, k[K_SSH].value, "an array of ssh rules") < 0)
            return -1;
        p->has_ssh = true;
        p->ssh = hw_calloc(json_array_size(k[K_SSH].value) + 1, sizeof *p->ssh);
        json_array_foreach(k[K_SSH].value, i, v) {
            hw_hujson_path_index(ep, sizeof ep, k[K_SSH].path, i);
            p->n_ssh = i + 1;
            if (parse_ssh_rule(c, ep, v, &p->ssh[i]) < 0)
                return -1;
        }
    }
    if (k[K_AUTOAPPROVERS].value && parse_auto_approvers(c, k[K_AUTOAPPROVERS].path, k[K_AUTOAPPROVERS].value) < 0)
        return -1;
    /* Every user is known now (tests may name new ones, which no group holds). */
    p->user_groups = hw_calloc(p->n_users * p->group_words + 1, sizeof *p->user_groups);
    for (size_t g = 0; g < p->n_groups; g++)
        for (size_t m = 0; m < p->groups[g].n_users; m++)
            bit_set(p->user_groups + (size_t)p->groups[g].users[m] * p->group_words, g);
    if (k[K_TESTS].value) {
        if (want_rules(c, k[K_TESTS].path, k[K_TESTS].value, "an array of tests") < 0)
            return -1;
        json_array_foreach(k[K_TESTS].value, i, v) {
            hw_hujson_path_index(ep, sizeof ep, k[K_TESTS].path, i);
            size_t users_before = p->n_users;
            if (parse_test(c, ep, v) < 0)
                return -1;
            if (p->n_users != users_before) {
                /* A test named a user no group holds: give it an empty group row. */
                uint64_t *grown = realloc(p->user_groups, (p->n_users * p->group_words + 1) * sizeof *grown);
                if (!grown)
                    abort();
                memset(grown + users_before * p->group_words, 0,
                       (p->n_users - users_before) * p->group_words * sizeof *grown);
                p->user_groups = grown;
            }
        }
    }
    return 0;
}

struct hw_policy *hw_policy_parse(const char *text, size_t len, const char *source_name, char *err,
                                  size_t err_len)
{
    struct hw_policy *p = hw_calloc(1, sizeof *p);
    p->source = hw_strdup(source_name && *source_name ? source_name : "policy");
    hw_strmap_init(&p->user_ids);
    hw_strmap_init(&p->group_ids);
    hw_strmap_init(&p->tag_ids);
    hw_strmap_init(&p->host_ids);
    struct pctx c = {.p = p, .err = err, .err_len = err_len};
    hw_ipset_add_internet(&c.internet);
    hw_ipset_normalize(&c.internet);
    char jerr[MSG_LEN];
    json_t *root = hw_hujson_load(text ? text : "", text ? len : 0, HW_POLICY_MAX_BYTES, HW_POLICY_MAX_DEPTH,
                                  &c.pos, jerr, sizeof jerr);
    int rc = -1;
    if (!root)
        snprintf(err, err_len, "%s:%s", p->source, jerr);
    else
        rc = parse_document(&c, root);
    json_decref(root);
    hw_hujson_pos_free(c.pos);
    hw_ipset_clear(&c.internet);
    if (rc < 0) {
        hw_policy_free(p);
        return NULL;
    }
    return p;
}

struct hw_policy *hw_policy_load_file(const char *path, char *err, size_t err_len)
{
    size_t len = 0;
    char *text = hw_read_file(path, &len);
    if (!text) {
        snprintf(err, err_len, "%s: cannot read the policy file", path);
        return NULL;
    }
    struct hw_policy *p = hw_policy_parse(text, len, path, err, err_len);
    free(text);
    return p;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void hw_policy_free(struct hw_policy *p)
{
    if (!p)
        return;
    free(p->source);
    free_strv(p->users, p->n_users);
    hw_strmap_free(&p->user_ids);
    for (size_t i = 0; i < p->n_groups; i++) {
        free(p->groups[i].name);
        free(p->groups[i].users);
    }
    free(p->groups);
    hw_strmap_free(&p->group_ids);
    free(p->user_groups);
    for (size_t i = 0; i < p->n_tags; i++) {
        free(p->tags[i].name);
        free(p->tags[i].owners);
    }
    free(p->tags);
    hw_strmap_free(&p->tag_ids);
    for (size_t i = 0; i < p->n_hosts; i++)
        free(p->hosts[i].name);
    free(p->hosts);
    hw_strmap_free(&p->host_ids);
    for (size_t i = 0; i < p->n_acls; i++) {
        struct pol_acl *a = &p->acls[i];
        free(a->src);
        for (size_t j = 0; j < a->n_dst; j++)
            free(a->dst[j].ports);
        free(a->dst);
        free(a->proto);
        hw_ipset_clear(&a->src_lit);
        hw_ipset_clear(&a->dst_lit);
    }
    free(p->acls);
    for (size_t i = 0; i < p->n_ssh; i++) {
        struct pol_ssh *s = &p->ssh[i];
        free(s->src);
        free(s->dst);
        free_strv(s->users, s->n_users);
        free_strv(s->accept_env, s->n_accept_env);
    }
    free(p->ssh);
    for (size_t i = 0; i < p->n_route_approvers; i++)
        free(p->route_approvers[i].owners);
    free(p->route_approvers);
    free(p->exit_approvers);
    for (size_t i = 0; i < p->n_bare; i++)
        free(p->bare[i].path);
    free(p->bare);
    free(p);
}

/* ---- questions about the parsed policy ---- */

int hw_policy_check_names(const struct hw_policy *p, const char *const *namespaces, size_t n, char *err,
                          size_t err_len)
{
    if (!p)
        return 0;
    for (size_t i = 0; i < p->n_bare; i++) {
        const char *name = p->users[p->bare[i].user];
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            found = strcmp(namespaces[j], name) == 0;
        if (found)
            continue;
        if (p->bare[i].line > 0)
            snprintf(err, err_len, "%s:%d: %s: unknown host \"%s\" (not in \"hosts\", and no namespace has that "
                                   "name; write \"%s@\" for a namespace created later)",
                     p->source, p->bare[i].line, p->bare[i].path, name, name);
        else
            snprintf(err, err_len, "%s: %s: unknown host \"%s\" (not in \"hosts\", and no namespace has that name)",
                     p->source, p->bare[i].path, name);
        return -1;
    }
    return 0;
}

static bool owner_matches_ns(const struct hw_policy *p, const struct pol_owner *o, int32_t user)
{
    switch (o->kind) {
    case PO_USER: return user >= 0 && (int32_t)o->ref == user;
    case PO_GROUP: return pol_user_in_group(p, user, o->ref);
    default: return false;
    }
}

bool hw_policy_tag_defined(const struct hw_policy *p, const char *tag)
{
    return p && tag && pol_tag_id(p, tag) >= 0;
}

bool hw_policy_tag_owner_ok(const struct hw_policy *p, const char *tag, const char *ns)
{
    if (!p || !tag || !ns)
        return false;
    int32_t t = pol_tag_id(p, tag);
    if (t < 0)
        return false;
    int32_t user = pol_user_id(p, ns);
    const struct pol_tag *pt = &p->tags[t];
    for (size_t i = 0; i < pt->n_owners; i++)
        if (owner_matches_ns(p, &pt->owners[i], user))
            return true;
    return false;
}

static bool tag_owned_by(const struct hw_policy *p, uint32_t t, const bool *held, uint8_t *seen)
{
    if (held[t])
        return true;
    if (seen[t])
        return false;
    seen[t] = 1;
    for (size_t i = 0; i < p->tags[t].n_owners; i++) {
        const struct pol_owner *o = &p->tags[t].owners[i];
        if (o->kind == PO_TAG && tag_owned_by(p, o->ref, held, seen))
            return true;
    }
    return false;
}

bool hw_policy_tag_owned_by_tags(const struct hw_policy *p, const char *tag, const char *const *tags,
                                 size_t n_tags)
{
    if (!tag)
        return false;
    for (size_t i = 0; i < n_tags; i++)
        if (tags[i] && strcmp(tags[i], tag) == 0)
            return true;
    if (!p)
        return false;
    int32_t t = pol_tag_id(p, tag);
    if (t < 0)
        return false;
    bool *held = hw_calloc(p->n_tags, sizeof *held);
    uint8_t *seen = hw_calloc(p->n_tags, 1);
    for (size_t i = 0; i < n_tags; i++) {
        int32_t h = tags[i] ? pol_tag_id(p, tags[i]) : -1;
        if (h >= 0)
            held[h] = true;
    }
    bool ok = tag_owned_by(p, (uint32_t)t, held, seen);
    free(held);
    free(seen);
    return ok;
}

static bool node_is_approver(const struct hw_policy *p, const struct pol_owner *owners, size_t n,
                             const struct hw_policy_node *node)
{
    bool tagged = node->n_tags > 0;
    int32_t user = node->ns ? pol_user_id(p, node->ns) : -1;
    for (size_t i = 0; i < n; i++) {
        const struct pol_owner *o = &owners[i];
        if (o->kind == PO_TAG) {
            for (size_t j = 0; j < node->n_tags; j++)
                if (node->tags[j] && pol_tag_id(p, node->tags[j]) == (int32_t)o->ref)
                    return true;
        } else if (!tagged && owner_matches_ns(p, o, user)) {
            /* A tagged node is its tags' device, not its namespace's. */
            return true;
        }
    }
    return false;
}

bool hw_policy_auto_approves(const struct hw_policy *p, const struct hw_policy_node *node, const char *prefix)
{
    if (!p || !node || !prefix)
        return false;
    struct hw_ipprefix route;
    if (hw_ipprefix_parse(prefix, &route) != 0)
        return false;
    if (route.bits == 0)
        return node_is_approver(p, p->exit_approvers, p->n_exit_approvers, node);
    for (size_t i = 0; i < p->n_route_approvers; i++) {
        const struct pol_route_approver *ra = &p->route_approvers[i];
        if (hw_ipprefix_covers(&ra->prefix, &route) &&
            node_is_approver(p, ra->owners, ra->n_owners, node))
            return true;
    }
    return false;
}
