#ifndef HW_PROTO_TAILCFG_H
#define HW_PROTO_TAILCFG_H

/* tailcfg JSON: the bodies of /machine/register and /machine/map (PROTOCOL.md §0, §4, §5).
 *
 * Field names, omission rules and value forms follow the upstream Go structs
 * (tailscale tailcfg/tailcfg.go, tailcfg/derpmap.go), because the peer on the other end
 * decodes with encoding/json into those structs. Objects are emitted in Go's field order
 * so a dump reads like what tailscaled logs with TS_DEBUG_MAP.
 *
 * Both roles use this file: headwater parses requests and builds responses, hwclient
 * builds requests and parses responses. Every parser takes a byte bound, checks types
 * strictly and reports the first problem as "Struct.Field: expected ..." in err.
 *
 * Differences from Go's bytes, none of which a Go decoder can see: real numbers (only
 * Hostinfo.NetInfo.DERPLatency in practice) are printed by jansson with 17 significant
 * digits instead of Go's shortest form; bodies carry no trailing newline (Go's
 * json.Encoder adds one); spliced full maps (tc_map_response_dump_with_peers) put the
 * peer list last.
 *
 * Ownership: structs filled by a tc_*_parse function own their strings and json_t
 * references and are released with the matching clear or free function. Structs the
 * caller fills for a to_json builder are only read. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define TC_ERRLEN 256
/* Register and map request bodies, and the register response the client reads
 * (upstream reads at most 1 MiB of a register response, direct.go decode()). */
#define TC_MAX_BODY (1u << 20)
/* Nesting deeper than this is refused before jansson sees the text: real messages
 * nest about 6 deep (MapResponse.DERPMap.Regions.N.Nodes[i]). */
#define TC_MAX_DEPTH 32
/* "discokey:" + 64 hex + NUL, the longest key text we emit. */
#define TC_KEY_TEXT_MAX 80
/* Go's "2006-01-02T15:04:05.999999999Z07:00", plus room. */
#define TC_TIME_TEXT_MAX 40
/* Capability version this code was checked against (fixtures: tailscale v1.96.5). */
#define TC_CAPVER 133
/* Headscale refuses clients older than this (Tailscale v1.80). */
#define TC_MIN_CAPVER 113
/* 127.3.3.40 is the magic IP of the legacy "DERP" endpoint string "127.3.3.40:<region>". */
#define TC_DERP_MAGIC_IP "127.3.3.40"

/* ---- small value types ------------------------------------------------------------ */

/* Go's time.Time as JSON. set=false is Go's zero time ("0001-01-01T00:00:00Z"), which
 * omitzero fields leave out and plain fields print. */
struct tc_time {
    int64_t sec; /* unix seconds (may be negative) */
    uint32_t nsec;
    bool set;
};

/* *bool / opt.Bool: zero-initialised means absent (JSON field omitted or null). */
enum tc_optbool { TC_UNSET = 0, TC_FALSE = 1, TC_TRUE = 2 };

/* An owned list of strings (prefixes, addr:ports, tags...). */
struct tc_strv {
    char **v;
    size_t n;
};

void tc_strv_push(struct tc_strv *s, const char *str);
void tc_strv_clear(struct tc_strv *s);
void tc_strv_copy(struct tc_strv *dst, const struct tc_strv *src);
bool tc_strv_equal(const struct tc_strv *a, const struct tc_strv *b);

/* 32-byte Curve25519 public keys in text form "<prefix>:<64 hex>" (PROTOCOL.md §1).
 * prefix is "nodekey", "mkey", "discokey", "nlpub"... without the colon. Parsing accepts
 * upper-case hex like Go does. */
int tc_key_parse(const char *text, const char *prefix, uint8_t out[32]);
void tc_key_format(const char *prefix, const uint8_t key[32], char out[TC_KEY_TEXT_MAX]);
bool tc_key_is_zero(const uint8_t key[32]);

/* RFC 3339 with optional fraction and zone offset. The Go zero time parses as !set. */
int tc_time_parse(const char *text, struct tc_time *out);
/* Go's RFC3339Nano in UTC (trailing zeros of the fraction trimmed); !set prints the
 * zero time. */
void tc_time_format(const struct tc_time *t, char out[TC_TIME_TEXT_MAX]);
struct tc_time tc_time_now(void);
struct tc_time tc_time_from_unix(int64_t sec);
int tc_time_cmp(const struct tc_time *a, const struct tc_time *b);

/* netip.Prefix ("100.64.0.1/32") and netip.AddrPort ("1.2.3.4:41641", "[::1]:41641"). */
bool tc_valid_prefix(const char *text);
bool tc_valid_addrport(const char *text);

/* Loads a JSON document of at most max_len bytes and TC_MAX_DEPTH nesting. what names
 * the message in errors ("MapRequest"). Returns a new reference or NULL with err set. */
json_t *tc_json_load(const uint8_t *data, size_t len, size_t max_len, const char *what,
                     char *err, size_t errlen);
/* Compact dump (JSON_COMPACT | JSON_PRESERVE_ORDER); malloc'd, NUL-terminated. */
char *tc_json_dump(const json_t *j, size_t *len_out);

/* ---- Hostinfo ----------------------------------------------------------------------- */

/* The fields of Hostinfo a control server acts on. The whole object is kept in raw so
 * it can be stored and handed to peers unchanged. Strings point into raw. */
struct tc_hostinfo {
    json_t *raw; /* owned reference; NULL when the request had none */
    const char *hostname, *os, *os_version, *ipn_version, *backend_log_id;
    const char *go_arch, *machine, *distro, *distro_version, *device_model;
    const char **routable_ips; /* validated prefixes: advertised subnet/exit routes */
    size_t n_routable_ips;
    const char **request_tags;
    size_t n_request_tags;
    bool shields_up;
    int preferred_derp; /* NetInfo.PreferredDERP, the node's home DERP region; 0 = none */
};

int tc_hostinfo_parse(json_t *obj, const char *ctx, struct tc_hostinfo *out, char *err,
                      size_t errlen);
void tc_hostinfo_clear(struct tc_hostinfo *h);

/* ---- /machine/register ------------------------------------------------------------ */

struct tc_register_request {
    int version;
    uint8_t node_key[32];
    uint8_t old_node_key[32]; /* zero when not rotating */
    char nl_key[TC_KEY_TEXT_MAX]; /* "nlpub:<hex>" as sent, or "" */
    bool has_auth;
    const char *auth_key;    /* Auth.AuthKey; NULL when absent */
    const char *auth_provider, *auth_login_name; /* pre-2023 Auth fields, kept if sent */
    struct tc_time expiry;   /* in the past => logout */
    const char *followup;    /* "" or the AuthURL being waited on */
    struct tc_hostinfo hostinfo;
    bool ephemeral;
    const char *tailnet;     /* "" unless set by system policy */
    json_t *root;            /* owns everything the pointers above point into */
};

int tc_register_request_parse(const uint8_t *body, size_t len, struct tc_register_request *out,
                              char *err, size_t errlen);
void tc_register_request_free(struct tc_register_request *r);
/* Client side. hostinfo is borrowed (a reference is taken). auth_key NULL = no Auth. */
struct tc_register_request_build {
    int version;
    const uint8_t *node_key, *old_node_key; /* old may be NULL (zero key) */
    const char *nl_key;                     /* "nlpub:<hex>"; NULL or "" -> zero key */
    const char *auth_key;
    struct tc_time expiry;
    const char *followup;
    json_t *hostinfo;
    bool ephemeral;
};
json_t *tc_register_request_to_json(const struct tc_register_request_build *b);

/* RegisterResponse. Headscale always sends every field; so do we (PROTOCOL.md §4.2,
 * fixture real-client-register.json). */
struct tc_register_response {
    int64_t user_id;
    const char *user_display_name, *user_profile_pic_url;
    struct tc_time user_created;
    int64_t login_id;
    const char *login_provider, *login_name, *login_display_name, *login_profile_pic_url;
    bool node_key_expired;
    bool machine_authorized;
    const char *auth_url;
    const char *error;
    json_t *root; /* set by parse only */
};
json_t *tc_register_response_to_json(const struct tc_register_response *r);
int tc_register_response_parse(const uint8_t *body, size_t len, struct tc_register_response *out,
                               char *err, size_t errlen);
void tc_register_response_free(struct tc_register_response *r);

/* ---- /machine/map request ------------------------------------------------------------ */

struct tc_map_request {
    int version;
    const char *compress; /* "zstd" or "" */
    bool keep_alive;
    uint8_t node_key[32];
    uint8_t disco_key[32];
    bool stream;
    bool omit_peers;
    bool read_only;
    struct tc_hostinfo hostinfo;
    const char **endpoints; /* validated addr:port */
    size_t n_endpoints;
    int *endpoint_types;    /* parallel to endpoints when sent, else NULL */
    size_t n_endpoint_types;
    const char **debug_flags;
    size_t n_debug_flags;
    const char *tka_head;
    const char *map_session_handle;
    int64_t map_session_seq;
    const char *connection_handle_for_test;
    json_t *root;
};

int tc_map_request_parse(const uint8_t *body, size_t len, struct tc_map_request *out, char *err,
                         size_t errlen);
void tc_map_request_free(struct tc_map_request *r);
/* A streaming poll (stream=true) vs a "lite update" (stream=false, omit_peers=true). */
static inline bool tc_map_request_is_lite(const struct tc_map_request *r)
{
    return !r->stream && r->omit_peers;
}

struct tc_map_request_build {
    int version;
    bool compress_zstd;
    bool keep_alive;
    const uint8_t *node_key, *disco_key;
    bool stream, omit_peers;
    json_t *hostinfo; /* borrowed */
    const char *const *endpoints;
    const int *endpoint_types; /* may be NULL */
    size_t n_endpoints;
    const char *const *debug_flags;
    size_t n_debug_flags;
};
json_t *tc_map_request_to_json(const struct tc_map_request_build *b);

/* ---- Node ---------------------------------------------------------------------------- */

/* tailcfg.Node as the control server knows it, and as the client keeps it. */
struct tc_node {
    int64_t id;
    char *stable_id;      /* NULL -> the decimal id, as headscale does */
    char *name;           /* MagicDNS FQDN with trailing dot */
    int64_t user;
    int64_t sharer;       /* omitted when 0 */
    uint8_t key[32];
    struct tc_time key_expiry; /* !set = never expires */
    uint8_t machine[32];  /* zero = omitted */
    uint8_t disco_key[32];/* zero = omitted (and unreachable for peers) */
    struct tc_strv addresses;
    struct tc_strv allowed_ips;
    bool allowed_ips_null; /* nil in Go: omitted; client treats as = addresses */
    struct tc_strv endpoints;
    bool legacy_derp;     /* also emit "DERP":"127.3.3.40:<home_derp>" (headscale does) */
    int home_derp;
    json_t *hostinfo;     /* owned reference, NULL = omitted */
    struct tc_time created;
    int cap;
    struct tc_strv tags;
    struct tc_strv primary_routes;
    struct tc_time last_seen; /* !set = omitted */
    enum tc_optbool online;
    bool machine_authorized;
    json_t *cap_map;      /* owned; {"cap": [values] | null} ; NULL or {} = omitted */
    bool unsigned_peerapi_only;
    char *computed_name, *computed_name_with_host, *data_plane_audit_log_id;
    bool expired;
    bool is_wireguard_only, is_jailed;
    /* Fields this code does not model (KeySignature, Capabilities, masquerade addresses,
     * ExitNodeDNSResolvers...), kept so a parsed node prints back whole. */
    json_t *extra;
};

void tc_node_clear(struct tc_node *n);
void tc_node_copy(struct tc_node *dst, const struct tc_node *src);
/* The JSON object a client expects. Build once per node change and share the reference
 * among every session's message (json_incref / json_array_append). */
json_t *tc_node_to_json(const struct tc_node *n);
int tc_node_parse(const json_t *obj, const char *ctx, struct tc_node *out, char *err,
                  size_t errlen);
/* What upstream's upgradeNode does on receipt: legacy DERP string -> HomeDERP, nil
 * AllowedIPs -> a copy of Addresses. */
void tc_node_upgrade(struct tc_node *n);

/* PeersChangedPatch element. Zero/unset members are not changed by the patch. */
struct tc_peer_change {
    int64_t node_id;
    int derp_region;
    int cap;
    json_t *cap_map;          /* owned; non-NULL replaces */
    struct tc_strv endpoints; /* replaces when endpoints_set */
    bool endpoints_set;
    bool has_key;
    uint8_t key[32];
    char *key_signature;      /* base64; NULL = unchanged */
    bool has_disco_key;
    uint8_t disco_key[32];
    enum tc_optbool online;
    bool has_last_seen, has_key_expiry; /* present => patch (even to the zero time) */
    struct tc_time last_seen;
    struct tc_time key_expiry;
};
void tc_peer_change_clear(struct tc_peer_change *pc);
json_t *tc_peer_change_to_json(const struct tc_peer_change *pc);
int tc_peer_change_parse(const json_t *obj, const char *ctx, struct tc_peer_change *out, char *err,
                         size_t errlen);

/* ---- DERP map ------------------------------------------------------------------------ */

struct tc_derp_node {
    char *name, *host_name, *cert_name, *ipv4, *ipv6, *stun_test_ip;
    int region_id;
    int stun_port; /* 0 -> 3478, -1 disables STUN */
    bool stun_only;
    int derp_port; /* 0 -> 443 */
    bool insecure_for_tests;
    bool can_port80;
};

struct tc_derp_region {
    int region_id;
    char *region_code, *region_name;
    double latitude, longitude;
    bool avoid, no_measure_no_home;
    struct tc_derp_node *nodes;
    size_t n_nodes;
};

struct tc_derp_map {
    struct tc_derp_region *regions; /* emitted keyed by decimal region id */
    size_t n_regions;
    bool regions_null;  /* client: "Regions" absent/null => keep the previous regions */
    bool omit_default_regions;
    json_t *home_params; /* owned, NULL = omitted */
};

json_t *tc_derp_map_to_json(const struct tc_derp_map *m);
int tc_derp_map_parse(const json_t *obj, struct tc_derp_map *out, char *err, size_t errlen);
void tc_derp_map_clear(struct tc_derp_map *m);
struct tc_derp_region *tc_derp_map_add_region(struct tc_derp_map *m, int region_id,
                                              const char *code, const char *name);
struct tc_derp_node *tc_derp_region_add_node(struct tc_derp_region *r, const char *name,
                                             const char *host_name);
const struct tc_derp_region *tc_derp_map_region(const struct tc_derp_map *m, int region_id);

/* ---- DNS config ------------------------------------------------------------------------ */

struct tc_dns_route {
    char *suffix;              /* "example.com." or a reverse zone */
    struct tc_strv resolvers;  /* resolver Addr values; empty = handled by MagicDNS */
};

struct tc_dns_record {
    char *name, *type, *value;
};

struct tc_dns_config {
    struct tc_strv resolvers;          /* Resolvers[].Addr */
    struct tc_dns_route *routes;
    size_t n_routes;
    struct tc_strv fallback_resolvers;
    struct tc_strv domains;            /* search domains */
    bool proxied;                      /* MagicDNS */
    struct tc_strv nameservers;        /* legacy */
    struct tc_strv cert_domains;
    struct tc_dns_record *extra_records;
    size_t n_extra_records;
};

json_t *tc_dns_config_to_json(const struct tc_dns_config *c);
void tc_dns_config_clear(struct tc_dns_config *c);
void tc_dns_config_add_route(struct tc_dns_config *c, const char *suffix,
                             const struct tc_strv *resolvers);
/* MagicDNS answers reverse lookups for the tailnet ranges: the 64 IPv4 zones of
 * 100.64.0.0/10 and the ip6.arpa zone of fd7a:115c:a1e0::/48, each routed to no
 * resolver (the same set Headscale sends). */
void tc_dns_config_add_magic_reverse_routes(struct tc_dns_config *c);
void tc_dns_config_add_record(struct tc_dns_config *c, const char *name, const char *type,
                              const char *value);

/* ---- packet filter and user profiles ------------------------------------------------- */

struct tc_port_range {
    char *ip; /* IP, CIDR, range or "*" */
    uint16_t first, last;
};

struct tc_filter_rule {
    struct tc_strv src_ips;
    struct tc_port_range *dst_ports;
    size_t n_dst_ports;
    int *ip_proto; /* empty = TCP+UDP+ICMP */
    size_t n_ip_proto;
};

json_t *tc_filter_rule_to_json(const struct tc_filter_rule *r);
/* [{"SrcIPs":["*"],"DstPorts":[{"IP":"*","Ports":{"First":0,"Last":65535}}]}]: every
 * node may reach every port of every other (tailcfg.FilterAllowAll). */
json_t *tc_filter_allow_all(void);
/* Isolation inside one namespace (user): every listed address may reach every port of
 * every other listed address, and nothing else gets in. ips are node addresses
 * ("100.64.0.1" or prefixes); the result is a rule array like tc_filter_allow_all's. */
json_t *tc_filter_allow_among(const struct tc_strv *ips);
/* Checks a rule list's shape as the client's decoder would. */
int tc_filter_rules_check(const json_t *rules, const char *ctx, char *err, size_t errlen);

struct tc_user_profile {
    int64_t id;
    const char *login_name, *display_name, *profile_pic_url;
};
json_t *tc_user_profile_to_json(const struct tc_user_profile *u);

/* ---- MapResponse (server side builder) ---------------------------------------------- */

/* Every part is a borrowed json_t built by the functions above (or by the caller from
 * cached pieces); the builder takes its own references, so one peer object can sit in
 * thousands of messages. NULL / zero-count parts are omitted, as Go's omitempty does. */
struct tc_id_bool {
    int64_t id;
    bool value;
};

struct tc_map_response {
    bool keep_alive;
    json_t *ping_request;
    const char *pop_browser_url;
    json_t *node;
    json_t *derp_map;
    json_t *const *peers;
    size_t n_peers;
    json_t *const *peers_changed;
    size_t n_peers_changed;
    const int64_t *peers_removed;
    size_t n_peers_removed;
    json_t *const *peers_changed_patch;
    size_t n_peers_changed_patch;
    const struct tc_id_bool *peer_seen_change;
    size_t n_peer_seen_change;
    const struct tc_id_bool *online_change;
    size_t n_online_change;
    json_t *dns_config;
    const char *domain;
    enum tc_optbool collect_services;
    json_t *packet_filter;  /* rule array ("base" chunk, the old single-list form) */
    json_t *packet_filters; /* {"name": rules | null}; what Headscale v0.28 sends */
    json_t *user_profiles;  /* array */
    json_t *health;         /* array of strings */
    json_t *display_messages; /* {"id": DisplayMessage | null}; "*": null clears */
    json_t *ssh_policy;
    struct tc_time control_time; /* set = sent */
    json_t *tka_info;
    json_t *debug;
};

json_t *tc_map_response_to_json(const struct tc_map_response *m);

/* Full maps for many sessions. Dumping a 10,000-peer MapResponse with jansson costs
 * ~190 ms per session (12 MB of text); splicing node objects that were serialised once
 * costs a memcpy. tc_node_serialize gives a node's compact JSON as a shared buffer
 * (cache it per node version); tc_map_response_dump_with_peers writes m (whose own
 * peer lists must be empty) followed by "list":[frag,frag,...] as the last member.
 * Member order is free in JSON and the Go decoder does not care; the result parses
 * to exactly what tc_map_response_to_json gives with those nodes as Peers. list is
 * "Peers" or "PeersChanged". Returns malloc'd NUL-terminated text. */
struct hw_sbuf;
struct hw_sbuf *tc_node_serialize(const struct tc_node *n);
char *tc_map_response_dump_with_peers(const struct tc_map_response *m, const char *list,
                                      struct hw_sbuf *const *frags, size_t n_frags,
                                      size_t *len_out);
/* {"KeepAlive":true}: exactly the text the client's fast path compares against. */
#define TC_KEEPALIVE_JSON "{\"KeepAlive\":true}"

/* ---- MapResponse (client side parse) ------------------------------------------------- */

/* One received MapResponse, validated as a whole so a bad message changes nothing. */
struct tc_map_update {
    bool keep_alive;
    bool has_node;
    struct tc_node node;
    struct tc_node *peers;          /* n_peers > 0 => full replacement */
    size_t n_peers;
    struct tc_node *peers_changed;
    size_t n_peers_changed;
    int64_t *peers_removed;
    size_t n_peers_removed;
    struct tc_peer_change *patches;
    size_t n_patches;
    struct tc_id_bool *online_change;
    size_t n_online_change;
    struct tc_id_bool *peer_seen_change;
    size_t n_peer_seen_change;
    bool has_derp_map;
    struct tc_derp_map derp_map;
    json_t *dns_config;      /* the rest: borrowed from root, NULL when absent */
    const char *domain;
    enum tc_optbool collect_services;
    json_t *packet_filter;
    json_t *packet_filters;
    json_t *user_profiles;
    json_t *health;
    json_t *display_messages;
    json_t *ssh_policy;
    json_t *tka_info;
    json_t *debug;
    json_t *ping_request;
    const char *pop_browser_url;
    struct tc_time control_time;
    int64_t seq;
    json_t *root;
};

int tc_map_update_parse(const uint8_t *json, size_t len, size_t max_len,
                        struct tc_map_update *out, char *err, size_t errlen);
int tc_map_update_from_json(json_t *root, struct tc_map_update *out, char *err, size_t errlen);
void tc_map_update_free(struct tc_map_update *u);

#endif
