/* Pre-auth keys and API keys: generated here, stored only as keyed hashes.
 *
 * Text form "hwkey-<kind>-<prefix>-<secret>": prefix = 12 lowercase hex (48 random bits,
 * stored in clear to find the row), secret = 32 lowercase hex (128 random bits). The
 * hash is BLAKE2b-256 keyed with a per-database random pepper: a copy of the hashes
 * without the pepper is useless, and 128-bit secrets need no slow password hash. */
#include "db/db_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define PREFIX_BYTES 6
#define PREFIX_HEX (2 * PREFIX_BYTES)
#define SECRET_BYTES 16
#define SECRET_HEX (2 * SECRET_BYTES)
#define HASH_LEN crypto_generichash_BYTES   /* 32 */

static const char pepper_name[] = "key_hash_pepper";

int hw_secrets_load_pepper(struct hw_db *db)
{
    static const char select_sql[] = "SELECT value FROM secrets WHERE name = ?1";
    static const char insert_sql[] = "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)";
    for (int attempt = 0; attempt < 2; attempt++) {
        sqlite3_stmt *st = db_stmt(db, select_sql);
        if (!st)
            return HW_DB_ERROR;
        sqlite3_bind_text(st, 1, pepper_name, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            int len = sqlite3_column_bytes(st, 0);
            const void *blob = sqlite3_column_blob(st, 0);
            if (len != HW_PEPPER_LEN || !blob) {
                db_done(st);
                return db_fail(db, HW_DB_ERROR, "secret %s is damaged (%d bytes, want %d)",
                               pepper_name, len, HW_PEPPER_LEN);
            }
            memcpy(db->pepper, blob, HW_PEPPER_LEN);
            db_done(st);
            return HW_DB_OK;
        }
        if (rc != SQLITE_DONE) {
            db_done(st);
            return db_fail_sqlite(db, sqlite3_extended_errcode(db->conn), "read pepper");
        }
        db_done(st);

        /* First open. OR IGNORE + re-read: if another process created one meanwhile,
         * both end up using the stored value. */
        unsigned char fresh[HW_PEPPER_LEN];
        randombytes_buf(fresh, sizeof fresh);
        st = db_stmt(db, insert_sql);
        if (!st)
            return HW_DB_ERROR;
        sqlite3_bind_text(st, 1, pepper_name, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, fresh, sizeof fresh, SQLITE_TRANSIENT);
        sodium_memzero(fresh, sizeof fresh);
        rc = db_step_done(db, st, "store pepper");
        if (rc != HW_DB_OK)
            return rc;
    }
    return db_fail(db, HW_DB_ERROR, "pepper vanished right after it was stored");
}

static void hash_secret(struct hw_db *db, const char *secret, unsigned char out[HASH_LEN])
{
    crypto_generichash(out, HASH_LEN, (const unsigned char *)secret, strlen(secret), db->pepper,
                       HW_PEPPER_LEN);
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* "hwkey-<kind>-" */
static size_t kind_head(const char *kind, char *head, size_t cap)
{
    return (size_t)snprintf(head, cap, "hwkey-%s-", kind);
}

int db_parse_key_prefix(const char *kind, const char *key_or_prefix, char prefix_out[24])
{
    char head[24];
    size_t head_len = kind_head(kind, head, sizeof head);
    const char *p = key_or_prefix;
    if (!p)
        return -1;
    if (strncmp(p, head, head_len) == 0) {
        p += head_len;
        if (strlen(p) < PREFIX_HEX + 1 || p[PREFIX_HEX] != '-')
            return -1;
    } else if (strlen(p) != PREFIX_HEX) {
        return -1;
    }
    if (!is_lower_hex(p, PREFIX_HEX))
        return -1;
    memcpy(prefix_out, p, PREFIX_HEX);
    prefix_out[PREFIX_HEX] = '\0';
    return 0;
}

/* Splits a full key text; -1 for anything that is not exactly our format. */
static int parse_key(const char *kind, const char *key_text, char prefix_out[24],
                     char secret_out[SECRET_HEX + 1])
{
    char head[24];
    size_t head_len = kind_head(kind, head, sizeof head);
    if (!key_text || strncmp(key_text, head, head_len) != 0)
        return -1;
    if (db_parse_key_prefix(kind, key_text, prefix_out) < 0)
        return -1;
    const char *secret = key_text + head_len + PREFIX_HEX + 1;
    if (strlen(secret) != SECRET_HEX || !is_lower_hex(secret, SECRET_HEX))
        return -1;
    memcpy(secret_out, secret, SECRET_HEX + 1);
    return 0;
}

/* A fresh prefix, secret, full text and hash. */
static void generate_key(struct hw_db *db, const char *kind, char prefix[24],
                         char key_text[HW_SECRET_TEXT_MAX], unsigned char hash[HASH_LEN])
{
    unsigned char prefix_raw[PREFIX_BYTES], secret_raw[SECRET_BYTES];
    char secret[SECRET_HEX + 1];
    randombytes_buf(prefix_raw, sizeof prefix_raw);
    randombytes_buf(secret_raw, sizeof secret_raw);
    hw_hex_encode(prefix_raw, sizeof prefix_raw, prefix);
    hw_hex_encode(secret_raw, sizeof secret_raw, secret);
    snprintf(key_text, HW_SECRET_TEXT_MAX, "hwkey-%s-%s-%s", kind, prefix, secret);
    hash_secret(db, secret, hash);
    sodium_memzero(secret_raw, sizeof secret_raw);
    sodium_memzero(secret, sizeof secret);
}

/* Steps an INSERT whose ?1 and ?2 are a fresh key's prefix and hash (the caller bound
 * the rest: a reset keeps bindings). A 48-bit prefix collides about never; drawing
 * again keeps "never" true. The key text stays in key_text_out only if the row went in. */
static int insert_fresh_key(struct hw_db *db, sqlite3_stmt *st, const char *kind, const char *what,
                            char key_text_out[HW_SECRET_TEXT_MAX])
{
    int rc = HW_DB_ERROR;
    for (int attempt = 0; attempt < 4; attempt++) {
        char prefix[24];
        unsigned char hash[HASH_LEN];
        generate_key(db, kind, prefix, key_text_out, hash);
        sqlite3_bind_text(st, 1, prefix, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, hash, HASH_LEN, SQLITE_TRANSIENT);
        rc = db_step_done(db, st, what);
        if (rc != HW_DB_EXISTS)
            break;
    }
    if (rc != HW_DB_OK) {
        sodium_memzero(key_text_out, HW_SECRET_TEXT_MAX);
        key_text_out[0] = '\0';
    }
    return rc;
}

/* Compares in constant time; a row whose hash has the wrong length never matches. */
static bool hash_matches(sqlite3_stmt *st, int col, const unsigned char want[HASH_LEN])
{
    const void *stored = sqlite3_column_blob(st, col);
    return stored && sqlite3_column_bytes(st, col) == HASH_LEN &&
           sodium_memcmp(stored, want, HASH_LEN) == 0;
}

/* ---- pre-auth keys ---- */

void hw_preauth_key_clear(struct hw_preauth_key *k)
{
    if (!k)
        return;
    free(k->tags_json);
    k->tags_json = NULL;
}

void hw_preauth_key_list_free(struct hw_preauth_key *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        hw_preauth_key_clear(&list[i]);
    free(list);
}

#define PREAUTH_SELECT                                                                   \
    "SELECT k.id, k.prefix, k.namespace_id, ns.name, k.reusable, k.ephemeral, k.used,"  \
    " k.expiration, k.created_at, k.tags, k.hash"                                        \
    " FROM preauth_keys k JOIN namespaces ns ON ns.id = k.namespace_id"
enum { PK_HASH_COL = 10 };

static void read_preauth(sqlite3_stmt *st, void *row)
{
    struct hw_preauth_key *out = row;
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    db_column_copy(st, 1, out->prefix, sizeof out->prefix);
    out->namespace_id = sqlite3_column_int64(st, 2);
    db_column_copy(st, 3, out->namespace_name, sizeof out->namespace_name);
    out->reusable = sqlite3_column_int(st, 4) != 0;
    out->ephemeral = sqlite3_column_int(st, 5) != 0;
    out->used = sqlite3_column_int(st, 6) != 0;
    out->expiration = sqlite3_column_int64(st, 7);
    out->created_at = sqlite3_column_int64(st, 8);
    out->tags_json = db_column_dup(st, 9);
}

static void clear_preauth(void *row) { hw_preauth_key_clear(row); }

static const struct db_row_kind preauth_rows = {sizeof(struct hw_preauth_key), read_preauth,
                                                clear_preauth, "listing pre-auth keys",
                                                "list pre-auth keys"};

static int preauth_get_by_id(struct hw_db *db, int64_t id, struct hw_preauth_key *out)
{
    static const char sql[] = PREAUTH_SELECT " WHERE k.id = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    char what[32];
    snprintf(what, sizeof what, "%lld", (long long)id);
    return db_read_one(db, st, read_preauth, out, "pre-auth key", what);
}

int hw_db_preauth_create(struct hw_db *db, int64_t namespace_id, bool reusable, bool ephemeral,
                         int64_t expiration, const char *tags_json,
                         char key_text_out[HW_SECRET_TEXT_MAX], struct hw_preauth_key *out)
{
    static const char sql[] =
        "INSERT INTO preauth_keys (prefix, hash, namespace_id, reusable, ephemeral, used,"
        " expiration, tags, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)";
    if (expiration < 0)
        return db_fail(db, HW_DB_INVALID, "expiration must not be negative");
    int rc = db_require_namespace(db, namespace_id);
    if (rc != HW_DB_OK)
        return rc;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 3, namespace_id);
    sqlite3_bind_int(st, 4, reusable);
    sqlite3_bind_int(st, 5, ephemeral);
    sqlite3_bind_int64(st, 6, expiration);
    db_bind_text_or_null(st, 7, tags_json);
    sqlite3_bind_int64(st, 8, hw_now());
    rc = insert_fresh_key(db, st, "auth", "insert pre-auth key", key_text_out);
    if (rc != HW_DB_OK || !out)
        return rc;
    return preauth_get_by_id(db, sqlite3_last_insert_rowid(db->conn), out);
}

int hw_db_preauth_lookup(struct hw_db *db, const char *key_text, struct hw_preauth_key *out)
{
    static const char sql[] = PREAUTH_SELECT " WHERE k.prefix = ?1";
    char prefix[24], secret[SECRET_HEX + 1];
    if (parse_key("auth", key_text, prefix, secret) < 0)
        return db_fail(db, HW_DB_NOT_FOUND, "invalid or unknown pre-auth key");
    unsigned char want[HASH_LEN];
    hash_secret(db, secret, want);
    sodium_memzero(secret, sizeof secret);

    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, prefix, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int out_rc;
    if (rc == SQLITE_ROW && hash_matches(st, PK_HASH_COL, want)) {
        read_preauth(st, out);
        out_rc = HW_DB_OK;
    } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        out_rc = db_fail(db, HW_DB_NOT_FOUND, "invalid or unknown pre-auth key");
    } else {
        out_rc = db_fail_sqlite(db, sqlite3_extended_errcode(db->conn), "look up pre-auth key");
    }
    db_done(st);
    return out_rc;
}

int hw_db_preauth_mark_used(struct hw_db *db, int64_t id)
{
    sqlite3_stmt *st = db_stmt(db, "UPDATE preauth_keys SET used = 1 WHERE id = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    int rc = db_step_done(db, st, "mark pre-auth key used");
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "pre-auth key %lld not found", (long long)id);
    return rc;
}

int hw_db_preauth_list(struct hw_db *db, int64_t namespace_id, struct hw_preauth_key **out,
                       size_t *n_out)
{
    static const char sql[] = PREAUTH_SELECT " WHERE ?1 = 0 OR k.namespace_id = ?1 ORDER BY k.id";
    *out = NULL;
    *n_out = 0;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, namespace_id);
    void *rows;
    int rc = db_read_rows(db, st, &preauth_rows, &rows, n_out);
    *out = rows;
    return rc;
}

int hw_db_preauth_expire(struct hw_db *db, int64_t namespace_id, const char *key_or_prefix)
{
    /* An already expired key keeps its older expiration: expiring twice must not
     * move the date forward. */
    static const char sql[] =
        "UPDATE preauth_keys SET expiration ="
        " CASE WHEN expiration != 0 AND expiration <= ?1 THEN expiration ELSE ?1 END"
        " WHERE prefix = ?2 AND (?3 = 0 OR namespace_id = ?3)";
    char prefix[24];
    if (db_parse_key_prefix("auth", key_or_prefix, prefix) < 0)
        return db_fail(db, HW_DB_INVALID,
                       "\"%s\" is neither a pre-auth key (hwkey-auth-...) nor its 12-hex-digit prefix",
                       key_or_prefix ? key_or_prefix : "");
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, hw_now());
    sqlite3_bind_text(st, 2, prefix, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, namespace_id);
    int rc = db_step_done(db, st, "expire pre-auth key");
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "pre-auth key %s not found%s", prefix,
                     namespace_id ? " in that namespace" : "");
    return rc;
}

/* ---- API keys ---- */

#define APIKEY_SELECT "SELECT id, prefix, expiration, last_seen, created_at, hash FROM api_keys"
enum { AK_HASH_COL = 5 };

static void read_apikey(sqlite3_stmt *st, void *row)
{
    struct hw_api_key *out = row;
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    db_column_copy(st, 1, out->prefix, sizeof out->prefix);
    out->expiration = sqlite3_column_int64(st, 2);
    out->last_seen = sqlite3_column_int64(st, 3);
    out->created_at = sqlite3_column_int64(st, 4);
}

static const struct db_row_kind apikey_rows = {sizeof(struct hw_api_key), read_apikey, NULL,
                                               "listing API keys", "list API keys"};

int hw_db_apikey_create(struct hw_db *db, int64_t expiration,
                        char key_text_out[HW_SECRET_TEXT_MAX], struct hw_api_key *out)
{
    static const char sql[] =
        "INSERT INTO api_keys (prefix, hash, expiration, last_seen, created_at)"
        " VALUES (?1, ?2, ?3, 0, ?4)";
    static const char get_sql[] = APIKEY_SELECT " WHERE id = ?1";
    if (expiration < 0)
        return db_fail(db, HW_DB_INVALID, "expiration must not be negative");
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 3, expiration);
    sqlite3_bind_int64(st, 4, hw_now());
    int rc = insert_fresh_key(db, st, "api", "insert API key", key_text_out);
    if (rc != HW_DB_OK || !out)
        return rc;
    int64_t id = sqlite3_last_insert_rowid(db->conn);
    st = db_stmt(db, get_sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        read_apikey(st, out);
    else
        rc = db_fail_sqlite(db, sqlite3_extended_errcode(db->conn), "read API key");
    db_done(st);
    return rc;
}

int hw_db_apikey_verify(struct hw_db *db, const char *key_text, struct hw_api_key *out)
{
    static const char sql[] = APIKEY_SELECT " WHERE prefix = ?1";
    static const char seen_sql[] = "UPDATE api_keys SET last_seen = ?1 WHERE id = ?2";
    char prefix[24], secret[SECRET_HEX + 1];
    if (parse_key("api", key_text, prefix, secret) < 0)
        return db_fail(db, HW_DB_NOT_FOUND, "invalid or unknown API key");
    unsigned char want[HASH_LEN];
    hash_secret(db, secret, want);
    sodium_memzero(secret, sizeof secret);

    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, prefix, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    struct hw_api_key key;
    if (rc == SQLITE_ROW && hash_matches(st, AK_HASH_COL, want)) {
        read_apikey(st, &key);
        db_done(st);
    } else {
        db_done(st);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE)
            return db_fail(db, HW_DB_NOT_FOUND, "invalid or unknown API key");
        return db_fail_sqlite(db, rc, "look up API key");
    }
    int64_t now = hw_now();
    if (out)
        *out = key;
    if (key.expiration != 0 && key.expiration <= now)
        return db_fail(db, HW_DB_CONFLICT, "API key %s has expired", key.prefix);

    st = db_stmt(db, seen_sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int64(st, 2, key.id);
    int seen_rc = db_step_done(db, st, "record API key use");
    if (seen_rc != HW_DB_OK)
        return seen_rc;
    if (out)
        out->last_seen = now;
    return HW_DB_OK;
}

int hw_db_apikey_list(struct hw_db *db, struct hw_api_key **out, size_t *n_out)
{
    static const char sql[] = APIKEY_SELECT " ORDER BY id";
    *out = NULL;
    *n_out = 0;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    void *rows;
    int rc = db_read_rows(db, st, &apikey_rows, &rows, n_out);
    *out = rows;
    return rc;
}

int hw_db_apikey_expire(struct hw_db *db, const char *key_or_prefix)
{
    static const char sql[] =
        "UPDATE api_keys SET expiration ="
        " CASE WHEN expiration != 0 AND expiration <= ?1 THEN expiration ELSE ?1 END"
        " WHERE prefix = ?2";
    char prefix[24];
    if (db_parse_key_prefix("api", key_or_prefix, prefix) < 0)
        return db_fail(db, HW_DB_INVALID,
                       "\"%s\" is neither an API key (hwkey-api-...) nor its 12-hex-digit prefix",
                       key_or_prefix ? key_or_prefix : "");
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, hw_now());
    sqlite3_bind_text(st, 2, prefix, -1, SQLITE_TRANSIENT);
    int rc = db_step_done(db, st, "expire API key");
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "API key %s not found", prefix);
    return rc;
}
