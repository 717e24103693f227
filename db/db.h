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

int hw_db_begin(struct hw_db *db);            /* BEGIN IMMEDIATE */
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
bool hw_db_ip_taken(struct hw_db *db, const char *ip);
bool hw_db_given_name_taken(struct hw_db *db, const char *given_name, int64_t except_node_id);

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
/* Sets expiration to now. key_or_prefix: the full key text or its prefix. */
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
int hw_db_pending_delete_expired(struct hw_db *db, int64_t now);

#endif
