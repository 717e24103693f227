#ifndef HW_DB_DB_H
#define HW_DB_DB_H

/* The store: every SQL statement of the project lives in db/. One struct hw_db wraps one
 * sqlite3 connection (WAL, foreign keys on, busy timeout) and is NOT thread-safe: the
 * server serialises access with its own lock (see server/server.h).
 *
 * Conventions: functions return HW_DB_OK (0) or a negative enum hw_db_rc; on
 * HW_DB_ERROR, hw_db_errmsg() tells what SQLite said. Text keys are stored in their
 * Tailscale text form ("mkey:<hex>", "nodekey:<hex>", "discokey:<hex>"). Times are unix
 * seconds, 0 meaning "none" (no expiry, never seen). JSON columns hold the exact JSON
 * text (NULL or "" when absent). Out-structs are filled by value; free what they own
 * with the matching *_clear / *_list_free. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum hw_db_rc {
    HW_DB_OK = 0,
    HW_DB_NOT_FOUND = -1,  /* no such row */
    HW_DB_EXISTS = -2,     /* a unique column (name, key, address) is already taken */
    HW_DB_CONFLICT = -3,   /* refused by a rule: namespace still has nodes, key used up */
    HW_DB_INVALID = -4,    /* argument out of range */
    HW_DB_ERROR = -5,      /* SQLite failure: see hw_db_errmsg() */
};

#define HW_KEY_TEXT_MAX 80   /* "discokey:" + 64 hex + NUL fits */
#define HW_NAME_MAX 64       /* DNS label (63) + NUL */
#define HW_IP_TEXT_MAX 48
#define HW_PREFIX_TEXT_MAX 52
#define HW_SECRET_TEXT_MAX 96

struct hw_db;

/* Opens (creating if needed) the SQLite file, applies pending migrations in one
 * transaction. On failure returns NULL and writes a one-line reason into err
 * (e.g. "migration 3 (add routes.is_primary) failed: ...; database left at version 2"). */
struct hw_db *hw_db_open(const char *path, char *err, size_t err_len);
void hw_db_close(struct hw_db *db);
const char *hw_db_errmsg(struct hw_db *db);
int hw_db_schema_version(struct hw_db *db);   /* highest applied migration */
int hw_db_latest_version(void);               /* highest migration this build knows */

/* BEGIN IMMEDIATE; called inside an open transaction it opens a savepoint instead, and
 * the matching commit/rollback releases or undoes just that part. So functions that need
 * a transaction of their own (namespace destroy with force, route_set_advertised,
 * hw_nodes_register_pending) also work inside a caller's transaction. */
int hw_db_begin(struct hw_db *db);
int hw_db_commit(struct hw_db *db);
void hw_db_rollback(struct hw_db *db);

/* ---- namespaces (Headscale: users) ---- */
struct hw_namespace {
    int64_t id;
    char name[HW_NAME_MAX];
    int64_t created_at;
    int64_t node_count;                        /* filled by get/list */
};
int hw_db_namespace_create(struct hw_db *db, const char *name, struct hw_namespace *out);
int hw_db_namespace_get(struct hw_db *db, int64_t id, struct hw_namespace *out);
int hw_db_namespace_get_by_name(struct hw_db *db, const char *name, struct hw_namespace *out);
int hw_db_namespace_list(struct hw_db *db, struct hw_namespace **out, size_t *n_out);
int hw_db_namespace_rename(struct hw_db *db, int64_t id, const char *new_name);
/* HW_DB_CONFLICT when nodes remain and !force; with force its nodes, routes and keys go too. */
int hw_db_namespace_destroy(struct hw_db *db, int64_t id, bool force);

/* ---- nodes ---- */
struct hw_node {
    int64_t id;
    char machine_key[HW_KEY_TEXT_MAX];
    char node_key[HW_KEY_TEXT_MAX];
    char disco_key[HW_KEY_TEXT_MAX];
    char ipv4[HW_IP_TEXT_MAX];                 /* "" when none */
    char ipv6[HW_IP_TEXT_MAX];
    char hostname[256];                        /* as the client reported it */
    char given_name[HW_NAME_MAX];              /* MagicDNS name, unique in the tailnet */
    int64_t namespace_id;
    char namespace_name[HW_NAME_MAX];          /* filled by reads */
    char *hostinfo_json;                       /* malloc'd or NULL */
    char *endpoints_json;                      /* malloc'd JSON array or NULL */
    char *tags_json;                           /* malloc'd JSON array of "tag:x" or NULL */
    int64_t expiry;                            /* 0 = never */
    int64_t last_seen;
    bool ephemeral;
    int64_t auth_key_id;                       /* 0 = none */
    char register_method[16];                  /* "authkey" | "cli" */
    int64_t created_at;
    int64_t updated_at;
};
void hw_node_clear(struct hw_node *n);         /* frees the malloc'd fields */
void hw_node_list_free(struct hw_node *list, size_t n);

/* Inserts; sets n->id, created_at, updated_at. HW_DB_EXISTS when the machine key, node
 * key, an address or the given name is taken. */
int hw_db_node_insert(struct hw_db *db, struct hw_node *n);
/* Writes every mutable column of n (keys, addresses, names, namespace, JSON fields,
 * expiry, last_seen, ephemeral) back by id; bumps updated_at. */
int hw_db_node_update(struct hw_db *db, struct hw_node *n);
int hw_db_node_get(struct hw_db *db, int64_t id, struct hw_node *out);
int hw_db_node_get_by_machine_key(struct hw_db *db, const char *mkey, struct hw_node *out);
int hw_db_node_get_by_node_key(struct hw_db *db, const char *nodekey, struct hw_node *out);
/* namespace_id 0 = all namespaces. Ordered by id. */
int hw_db_node_list(struct hw_db *db, int64_t namespace_id, struct hw_node **out, size_t *n_out);
int hw_db_node_delete(struct hw_db *db, int64_t id);
int hw_db_node_set_expiry(struct hw_db *db, int64_t id, int64_t expiry);
int hw_db_node_set_given_name(struct hw_db *db, int64_t id, const char *given_name);
int hw_db_node_set_namespace(struct hw_db *db, int64_t id, int64_t namespace_id);
int hw_db_node_set_tags(struct hw_db *db, int64_t id, const char *tags_json);
int hw_db_node_touch(struct hw_db *db, int64_t id, int64_t last_seen);
/* Addresses are stored in canonical text: insert/update rewrite n->ipv4/ipv6 to it
 * ("fd7a:115c:a1e0:0::1" becomes "fd7a:115c:a1e0::1"); an unparsable address or one of
 * the wrong family is HW_DB_INVALID.
 * ip_taken: true when a node holds ip (either family), and also when the check itself
 * failed, so an allocator never hands out an address it could not verify; false for a
 * string that is not an address (hw_db_errmsg says so). */
bool hw_db_ip_taken(struct hw_db *db, const char *ip);
bool hw_db_given_name_taken(struct hw_db *db, const char *given_name, int64_t except_node_id);
/* Given names starting with `prefix` (e.g. "laptop-") held by nodes other than
 * except_node_id, in one index range query: lets the namer pick the lowest free
 * suffix without one query per candidate. Free with hw_db_string_list_free. */
int hw_db_given_names_with_prefix(struct hw_db *db, const char *prefix, int64_t except_node_id,
                                  char ***out, size_t *n_out);
void hw_db_string_list_free(char **list, size_t n);
/* The lowest n >= 1 such that "<stem>-<n>" is no node's given name (nodes other than
 * except_node_id's). With except_node_id 0 it costs a few index lookups, amortised: the
 * handle remembers per stem a floor below which every suffix is taken, and lowers or
 * forgets it whenever a name may have been freed (a node deleted or renamed by any
 * statement, a rollback of a transaction or savepoint, another connection's commit).
 * Otherwise, and for a stem not seen yet, one range read of the stem's names. */
int hw_db_given_name_first_free_suffix(struct hw_db *db, const char *stem, int64_t except_node_id,
                                       unsigned long *suffix_out);

/* ---- address allocation support (the policy lives in server/nodes.c) ---- */
/* Lowest address in [from, to] (both of one family) that no node holds; HW_DB_NOT_FOUND
 * when every one is held. Walks the held addresses in order on an index from `from`, so
 * it costs the run of consecutive held addresses after `from`, not the tailnet size. */
int hw_db_ip_first_free(struct hw_db *db, const char *from, const char *to,
                        char out[HW_IP_TEXT_MAX]);
/* The sequential allocator's memory, per family (4 or 6): every address in [base, next)
 * is known not to be free (held by a node or reserved). Triggers pull `next` back when a
 * node gives an address up (delete or address change), so the claim stays true whoever
 * changes nodes. get: HW_DB_NOT_FOUND when never set. set: the family is base's. */
int hw_db_ip_cursor_get(struct hw_db *db, int family, char base_out[HW_IP_TEXT_MAX],
                        char next_out[HW_IP_TEXT_MAX]);
int hw_db_ip_cursor_set(struct hw_db *db, const char *base, const char *next);

/* ---- routes (advertised by a node, enabled by the admin) ---- */
struct hw_route {
    int64_t id;
    int64_t node_id;
    char node_name[HW_NAME_MAX];               /* given name, filled by reads */
    char prefix[HW_PREFIX_TEXT_MAX];           /* canonical "192.168.1.0/24" */
    bool advertised;
    bool enabled;
    bool is_primary;
    int64_t created_at;
    int64_t updated_at;
};
/* node_id 0 = all nodes. Ordered by node id, then prefix. */
int hw_db_route_list(struct hw_db *db, int64_t node_id, struct hw_route **out, size_t *n_out);
/* Makes exactly `prefixes` the advertised set of the node: new ones are added
 * (not enabled), missing ones marked not advertised (their enabled flag is kept, so a
 * router that re-advertises gets its approval back). */
int hw_db_route_set_advertised(struct hw_db *db, int64_t node_id,
                               const char *const *prefixes, size_t n);
/* HW_DB_NOT_FOUND when the node does not advertise that prefix. */
int hw_db_route_set_enabled(struct hw_db *db, int64_t node_id, const char *prefix, bool enabled);
int hw_db_route_set_primary(struct hw_db *db, int64_t route_id, bool is_primary);

/* ---- the access policy (policy.mode: database) ---- */
/* The stored policy text (malloc'd) and when it was stored; HW_DB_NOT_FOUND when none. */
int hw_db_policy_get(struct hw_db *db, char **text, int64_t *updated_at);
/* Replaces the stored policy. Validate it first: the store keeps any text. */
int hw_db_policy_set(struct hw_db *db, const char *text);

/* ---- secrets: pre-auth keys and API keys ----
 * Text form "hwkey-auth-<prefix>-<secret>" / "hwkey-api-<prefix>-<secret>": the prefix
 * (12 lowercase hex) is stored in clear to find the row, the secret (≥128 random bits)
 * only as a keyed BLAKE2b hash (key: a random pepper kept in the database), compared in
 * constant time. The full text is returned once, at creation. */
struct hw_preauth_key {
    int64_t id;
    char prefix[24];
    int64_t namespace_id;
    char namespace_name[HW_NAME_MAX];
    bool reusable;
    bool ephemeral;
    bool used;
    int64_t expiration;                        /* unix seconds, 0 = never */
    int64_t created_at;
    char *tags_json;                           /* malloc'd JSON array or NULL */
};
void hw_preauth_key_clear(struct hw_preauth_key *k);
void hw_preauth_key_list_free(struct hw_preauth_key *list, size_t n);
int hw_db_preauth_create(struct hw_db *db, int64_t namespace_id, bool reusable, bool ephemeral,
                         int64_t expiration, const char *tags_json,
                         char key_text_out[HW_SECRET_TEXT_MAX], struct hw_preauth_key *out);
/* Finds the key by its full text. HW_DB_NOT_FOUND for an unknown or wrong key (same
 * answer either way). Does not judge used/expired: the caller does, to say which. */
int hw_db_preauth_lookup(struct hw_db *db, const char *key_text, struct hw_preauth_key *out);
int hw_db_preauth_mark_used(struct hw_db *db, int64_t id);
/* namespace_id 0 = all. */
int hw_db_preauth_list(struct hw_db *db, int64_t namespace_id,
                       struct hw_preauth_key **out, size_t *n_out);
/* Sets expiration to now (an already expired key keeps its date). key_or_prefix: the
 * full key text or its prefix; HW_DB_INVALID when it is neither, HW_DB_NOT_FOUND when
 * no key (of that namespace, unless 0) has it. */
int hw_db_preauth_expire(struct hw_db *db, int64_t namespace_id, const char *key_or_prefix);

struct hw_api_key {
    int64_t id;
    char prefix[24];
    int64_t expiration;
    int64_t last_seen;
    int64_t created_at;
};
int hw_db_apikey_create(struct hw_db *db, int64_t expiration,
                        char key_text_out[HW_SECRET_TEXT_MAX], struct hw_api_key *out);
/* HW_DB_OK and last_seen set to now for a valid key; HW_DB_NOT_FOUND for an unknown or
 * wrong one; HW_DB_CONFLICT (out filled) when it has expired. */
int hw_db_apikey_verify(struct hw_db *db, const char *key_text, struct hw_api_key *out);
int hw_db_apikey_list(struct hw_db *db, struct hw_api_key **out, size_t *n_out);
int hw_db_apikey_expire(struct hw_db *db, const char *key_or_prefix);

/* ---- pending registrations (interactive login waiting for `hwctl nodes register`) ---- */
struct hw_pending {
    char id[64];                               /* registration id in the AuthURL */
    char machine_key[HW_KEY_TEXT_MAX];
    char node_key[HW_KEY_TEXT_MAX];
    char disco_key[HW_KEY_TEXT_MAX];
    char hostname[256];
    char *hostinfo_json;                       /* malloc'd or NULL */
    int64_t created_at;
    int64_t expires_at;                        /* after this the id is refused */
};
void hw_pending_clear(struct hw_pending *p);
int hw_db_pending_insert(struct hw_db *db, const struct hw_pending *p);
int hw_db_pending_get(struct hw_db *db, const char *id, struct hw_pending *out);
int hw_db_pending_delete(struct hw_db *db, const char *id);
/* Removes registrations with 0 < expires_at <= now; returns how many, or an error. */
int hw_db_pending_delete_expired(struct hw_db *db, int64_t now);
/* A machine waits for one login at a time: its earlier pending rows go. */
int hw_db_pending_delete_machine(struct hw_db *db, const char *machine_key);
/* Pending registrations not yet expired, or a negative hw_db_rc. */
int64_t hw_db_pending_count(struct hw_db *db, int64_t now);

#endif
