#ifndef HW_SERVER_POLICY_H
#define HW_SERVER_POLICY_H

/* The access policy: Tailscale's policy file (HuJSON) parsed once, then compiled
 * against the tailnet's nodes into what each node receives — which peers it sees, its
 * packet filter and its SSH policy — plus the tag-owner and route auto-approval checks
 * the control layer asks when a node registers or advertises routes.
 *
 * Two objects:
 *  - struct hw_policy: the parsed, validated file. Immutable, independent of nodes.
 *    NULL stands for "no policy file": namespaces are the boundary (every node sees
 *    and may reach every node of its own namespace, nothing else), and every function
 *    below accepts NULL with that meaning.
 *  - struct hw_policy_net: a policy compiled against the current nodes. Built once
 *    (hw_policy_net_new + hw_policy_net_set_node per node), then kept current one node
 *    change at a time; each change reports exactly which other nodes must hear what.
 *
 * Semantics follow Tailscale's control server (checked against captures of its
 * netmaps in Headscale's policy tests); docs/policy.md has the admin's view. Users are
 * namespaces: "alice@" and "alice" both name namespace alice. A tagged node belongs to
 * its tags, not to its namespace: user, group, autogroup:member and autogroup:self
 * never match it.
 *
 * Not thread-safe; the control layer owns both objects on its loop. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Tailscale refuses larger policies too. */
#define HW_POLICY_MAX_BYTES (1u << 20)
/* Real policies nest 4 deep (autoApprovers.routes.PREFIX[i]). */
#define HW_POLICY_MAX_DEPTH 16
/* Entries per "acls", "ssh" and "tests". Every node carries a few bits per rule, and
 * each test is checked against every rule; real policies have tens to hundreds. */
#define HW_POLICY_MAX_RULES 4096

struct hw_policy;

/* Parses and validates. source_name prefixes every error, which names the line, the
 * path in the document and the problem:
 *   "policy.hujson:14: acls[2].dst[0]: unknown host \"db\" (not in \"hosts\")".
 * The "tests" section is run here: a failing test refuses the policy and the error
 * names it. Returns NULL with err set on any problem. */
struct hw_policy *hw_policy_parse(const char *text, size_t len, const char *source_name,
                                  char *err, size_t err_len);
/* hw_policy_parse on a file's content; errors name the path. */
struct hw_policy *hw_policy_load_file(const char *path, char *err, size_t err_len);
void hw_policy_free(struct hw_policy *p);

/* A bare word in src/dst that is not in "hosts" is read as a namespace name ("alice"
 * like "alice@"). This checks those words against the namespaces that exist, so a
 * typo of a host name is reported ("unknown host \"db\"") instead of silently matching
 * nothing. Call it when (re)loading the file. 0, or -1 with err set. */
int hw_policy_check_names(const struct hw_policy *p, const char *const *namespaces, size_t n,
                          char *err, size_t err_len);

/* tagOwners: may a node of namespace `ns` carry `tag` ("tag:web") it asked for itself
 * (RequestTags / --advertise-tags)? Only tags listed in tagOwners can be carried; an
 * owner list may name users, groups, or autogroup:admin (only hwctl may apply it).
 * With no policy, no tag may be self-applied. The admin's hwctl is not subject to it. */
bool hw_policy_tag_owner_ok(const struct hw_policy *p, const char *tag, const char *ns);
/* The same for an already tagged node: true when one of its tags owns `tag` (directly
 * or through a chain of tag owners), or `tag` is one of them. */
bool hw_policy_tag_owned_by_tags(const struct hw_policy *p, const char *tag,
                                 const char *const *tags, size_t n_tags);
/* Whether tag is listed in tagOwners. */
bool hw_policy_tag_defined(const struct hw_policy *p, const char *tag);

/* What the engine needs to know about a node. All strings are read during the call
 * only. tags: "tag:x" strings (any tag makes the node tagged). routes: the node's
 * approved routes in CIDR form, exit routes ("0.0.0.0/0", "::/0") included. */
struct hw_policy_node {
    int64_t id;
    const char *ns;               /* namespace name */
    const char *const *tags;
    size_t n_tags;
    const char *ipv4, *ipv6;      /* "100.64.0.1" / "fd7a:115c:a1e0::1"; NULL or "" = none */
    const char *const *routes;
    size_t n_routes;
};

/* The descriptor of one of the control layer's nodes (server/tailnet.h): tags from
 * row.tags_json, namespace, addresses, enabled routes. Strings are borrowed from n
 * except the tag list, which hw_policy_node_release frees. */
struct tn_node;
void hw_policy_node_from_tn(const struct tn_node *n, struct hw_policy_node *out);
void hw_policy_node_release(struct hw_policy_node *out);

/* autoApprovers: is `prefix` (a route the node advertises) approved without the admin?
 * Subnet routes: some autoApprovers.routes entry contains prefix (equal or wider) and
 * names the node (its namespace as a user or group member, or one of its tags). Exit
 * routes (0.0.0.0/0, ::/0) only through autoApprovers.exitNode. No policy: false. */
bool hw_policy_auto_approves(const struct hw_policy *p, const struct hw_policy_node *node,
                             const char *prefix);

/* ---- compiled against the nodes -------------------------------------------------- */

struct hw_policy_net;

/* An empty tailnet under p (NULL = namespace boundaries). p must outlive the net. */
struct hw_policy_net *hw_policy_net_new(const struct hw_policy *p);
void hw_policy_net_free(struct hw_policy_net *net);
size_t hw_policy_net_count(const struct hw_policy_net *net);

/* What one node's change means for the others. Lists are node ids, ascending.
 *  gained / lost: nodes that now see the changed node, or no longer do (send them
 *      the node in PeersChanged / its id in PeersRemoved). The changed node's own peer
 *      list is hw_policy_peers().
 *  filters: nodes whose packet filter or SSH policy changed (send PacketFilters /
 *      SSHPolicy again); may include the changed node itself. */
struct hw_policy_change {
    int64_t *gained, *lost, *filters;
    size_t n_gained, n_lost, n_filters;
};
void hw_policy_change_clear(struct hw_policy_change *c);

/* Adds the node, or replaces the node with that id. Cost: the node's rule memberships,
 * plus word-wide bitmap passes over the tailnet for the lists — never a pass per peer
 * pair. chg may be NULL (initial load). Returns 0, or -1 with err set when a field is
 * malformed (an address or route that does not parse); the net is unchanged then. */
int hw_policy_net_set_node(struct hw_policy_net *net, const struct hw_policy_node *node,
                           struct hw_policy_change *chg, char *err, size_t err_len);
/* Removes the node (no-op when unknown). chg->lost lists the nodes that saw it. */
void hw_policy_net_remove_node(struct hw_policy_net *net, int64_t id, struct hw_policy_change *chg);

/* Compile everything at once: a new net holding nodes[0..n). NULL with err set when a
 * node is malformed. */
struct hw_policy_net *hw_policy_net_build(const struct hw_policy *p, const struct hw_policy_node *nodes,
                                          size_t n, char *err, size_t err_len);

/* After a policy reload: what node `id` must hear when moving from `old` (the net
 * under the previous policy) to `cur` (the same nodes under the new one). gained /
 * lost: its own peer list's difference; filters: {id} when its packet filter or SSH
 * policy differs. check_url as for hw_policy_ssh. */
void hw_policy_net_compare(struct hw_policy_net *old, struct hw_policy_net *cur, int64_t id,
                           const char *check_url, struct hw_policy_change *out);

/* hw_policy_net_compare for every node of cur (old must hold the same nodes), calling
 * fn for each (chg is valid during the call only). When both nets were built by
 * hw_policy_net_build from one node list, peer sets are compared a word at a time and
 * only the differences become ids: a policy change over 10,000 nodes that all see each
 * other costs word passes, not 10,000 sorted 10,000-id lists. */
void hw_policy_net_compare_all(struct hw_policy_net *old, struct hw_policy_net *cur, const char *check_url,
                               void (*fn)(int64_t id, const struct hw_policy_change *chg, void *arg), void *arg);

/* Does a see b? Symmetric: a node sees every node it may reach and every node that
 * may reach it (the WireGuard peer must exist in both directions). False for unknown
 * ids and for a == b. */
bool hw_policy_sees(const struct hw_policy_net *net, int64_t a, int64_t b);
/* The ids node `id` sees, ascending (malloc'd; free it). NULL with *n_out = 0 when it
 * sees none or is unknown. */
int64_t *hw_policy_peers(const struct hw_policy_net *net, int64_t id, size_t *n_out);

/* Should `viewer` get `prefix`, one of router's approved routes, in router's
 * AllowedIPs? Subnet routes: when a rule lets the viewer reach an address range that
 * overlaps it (or lets that range reach the viewer). Exit routes: when the viewer may
 * use the internet (autogroup:internet or "*" as a destination). No policy: same
 * namespace. */
bool hw_policy_route_visible(const struct hw_policy_net *net, int64_t viewer, int64_t router,
                             const char *prefix);

/* The node's packet filter: a new JSON array of tailcfg.FilterRule for
 * MapResponse.PacketFilter(s), holding only the rules that let something reach this
 * node (an empty array denies all inbound). SrcIPs arrays are shared between nodes
 * (treat the result as read-only). NULL for an unknown id. */
json_t *hw_policy_filter(struct hw_policy_net *net, int64_t id);

/* The node's tailcfg.SSHPolicy ({"rules":[...]}), new reference; NULL when the policy
 * has no "ssh" section (send no SSHPolicy) or the id is unknown. check_url is the
 * control server's base URL ("https://hw.example.com") for "check" rules, whose
 * HoldAndDelegate URL points at /machine/ssh/action/... there. */
json_t *hw_policy_ssh(struct hw_policy_net *net, int64_t id, const char *check_url);

#endif
