#ifndef HW_SERVER_POLICY_INTERNAL_H
#define HW_SERVER_POLICY_INTERNAL_H

/* The parsed policy as policy_parse.c leaves it for policy_net.c. Names are interned:
 * users, groups, tags and hosts are referred to by index, so compiling against nodes
 * compares small integers and tests bits instead of strings. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/strmap.h"
#include "server/ipset.h"
#include "server/policy.h"

enum pa_kind {
    PA_ANY,        /* "*" */
    PA_USER,       /* namespace, untagged nodes only */
    PA_GROUP,
    PA_TAG,
    PA_HOST,       /* a "hosts" entry: a literal prefix */
    PA_PREFIX,     /* an IP or CIDR written in place */
    PA_MEMBER,     /* autogroup:member: every untagged node */
    PA_TAGGED,     /* autogroup:tagged */
    PA_SELF,       /* autogroup:self: the destination's own namespace, untagged */
    PA_INTERNET,   /* autogroup:internet: through exit nodes */
};

struct pa {
    enum pa_kind kind;
    uint32_t ref;                 /* user, group, tag or host index */
    struct hw_ipprefix prefix;    /* PA_HOST, PA_PREFIX */
};

struct pol_ports {
    uint16_t first, last;
};

struct pol_dst {
    struct pa a;
    struct pol_ports *ports;
    size_t n_ports;
};

struct pol_acl {
    int line;
    struct pa *src;
    size_t n_src;
    struct pol_dst *dst;
    size_t n_dst;
    int *proto;                   /* IPProto; none = the client's default TCP, UDP, ICMP */
    size_t n_proto;
    bool src_any;                 /* "*" is a source */
    bool dst_any;                 /* "*" is a destination */
    bool has_self;                /* autogroup:self is a destination */
    bool to_internet;             /* may use exit nodes: "*", autogroup:internet or a public range */
    struct hw_ipset src_lit;      /* literal sources (hosts, prefixes), normalised */
    struct hw_ipset dst_lit;      /* literal destinations */
};

enum po_kind { PO_USER, PO_GROUP, PO_TAG, PO_ADMIN };

struct pol_owner {
    enum po_kind kind;
    uint32_t ref;
};

struct pol_group {
    char *name;
    uint32_t *users;
    size_t n_users;
};

struct pol_tag {
    char *name;
    struct pol_owner *owners;
    size_t n_owners;
};

struct pol_host {
    char *name;
    struct hw_ipprefix prefix;
};

struct pol_ssh {
    int line;
    bool check;
    int64_t check_period_s;       /* check: how long an approval lasts; 0 = every time */
    struct pa *src;
    size_t n_src;
    struct pa *dst;
    size_t n_dst;
    bool has_self;
    char **users;                 /* login names other than root */
    size_t n_users;
    bool root, nonroot;
    char **accept_env;
    size_t n_accept_env;
};

struct pol_route_approver {
    struct hw_ipprefix prefix;
    struct pol_owner *owners;
    size_t n_owners;
};

/* A bare word read as a namespace name, remembered for hw_policy_check_names. */
struct pol_bare {
    uint32_t user;
    int line;
    char *path;
};

struct hw_policy {
    char *source;
    char **users;                 /* namespace names, without '@' */
    size_t n_users;
    struct hw_strmap user_ids;    /* name -> index + 1 */
    struct pol_group *groups;
    size_t n_groups;
    struct hw_strmap group_ids;
    uint64_t *user_groups;        /* n_users rows of group_words: the groups a user is in */
    size_t group_words;
    struct pol_tag *tags;
    size_t n_tags;
    struct hw_strmap tag_ids;
    struct pol_host *hosts;
    size_t n_hosts;
    struct hw_strmap host_ids;
    struct pol_acl *acls;
    size_t n_acls;
    struct pol_ssh *ssh;
    size_t n_ssh;
    bool has_ssh;                 /* an "ssh" section exists (maybe empty) */
    struct pol_route_approver *route_approvers;
    size_t n_route_approvers;
    struct pol_owner *exit_approvers;
    size_t n_exit_approvers;
    struct pol_bare *bare;
    size_t n_bare;
};

static inline bool bit_get(const uint64_t *w, size_t i) { return (w[i >> 6] >> (i & 63)) & 1; }
static inline void bit_set(uint64_t *w, size_t i) { w[i >> 6] |= (uint64_t)1 << (i & 63); }
static inline void bit_clr(uint64_t *w, size_t i) { w[i >> 6] &= ~((uint64_t)1 << (i & 63)); }
static inline size_t words_for(size_t bits) { return (bits + 63) / 64; }

/* Interned index of a user / tag name, or -1 when the policy never names it. */
int32_t pol_user_id(const struct hw_policy *p, const char *name);
int32_t pol_tag_id(const struct hw_policy *p, const char *name);
bool pol_user_in_group(const struct hw_policy *p, int32_t user, uint32_t group);

#endif
