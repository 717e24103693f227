/* The schema as an ordered list of forward migrations, and the runner that applies
 * the pending ones at start-up. */
#include "db/db_internal.h"

#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

/* Version 1. Notes on choices a reader may question:
 * - Addresses are kept twice: ipv4/ipv6 as canonical text (what admins read with the
 *   sqlite3 shell, what the API returns) and ipv4_bin/ipv6_bin as big-endian bytes,
 *   whose BLOB order is numeric order, so the allocator can walk them with an index.
 *   db/nodes.c derives the bytes from the text on every write.
 * - ip_alloc_cursor remembers, per family, that every address in [base, next) is not
 *   free, so sequential allocation does not rescan the whole tailnet. The triggers pull
 *   `next` back whenever a node gives an address up, whoever deletes it.
 * - nodes.namespace_id is ON DELETE RESTRICT: destroying a namespace with nodes is a
 *   decision (hw_db_namespace_destroy with force), never a cascade by accident. */
static const char schema_v1[] =
    "CREATE TABLE namespaces ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL"
    ");"
    "CREATE TABLE preauth_keys ("
    "  id INTEGER PRIMARY KEY,"
    "  prefix TEXT NOT NULL UNIQUE,"
    "  hash BLOB NOT NULL,"
    "  namespace_id INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,"
    "  reusable INTEGER NOT NULL DEFAULT 0,"
    "  ephemeral INTEGER NOT NULL DEFAULT 0,"
    "  used INTEGER NOT NULL DEFAULT 0,"
    "  expiration INTEGER NOT NULL DEFAULT 0,"
    "  tags TEXT,"
    "  created_at INTEGER NOT NULL"
    ");"
    "CREATE INDEX preauth_keys_namespace ON preauth_keys(namespace_id);"
    "CREATE TABLE nodes ("
    "  id INTEGER PRIMARY KEY,"
    "  machine_key TEXT NOT NULL UNIQUE,"
    "  node_key TEXT NOT NULL UNIQUE,"
    "  disco_key TEXT,"
    "  ipv4 TEXT UNIQUE,"
    "  ipv6 TEXT UNIQUE,"
    "  ipv4_bin BLOB UNIQUE CHECK (ipv4_bin IS NULL OR length(ipv4_bin) = 4),"
    "  ipv6_bin BLOB UNIQUE CHECK (ipv6_bin IS NULL OR length(ipv6_bin) = 16),"
    "  hostname TEXT NOT NULL DEFAULT '',"
    "  given_name TEXT NOT NULL UNIQUE,"
    "  namespace_id INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE RESTRICT,"
    "  hostinfo TEXT,"
    "  endpoints TEXT,"
    "  tags TEXT,"
    "  expiry INTEGER NOT NULL DEFAULT 0,"
    "  last_seen INTEGER NOT NULL DEFAULT 0,"
    "  ephemeral INTEGER NOT NULL DEFAULT 0,"
    "  auth_key_id INTEGER REFERENCES preauth_keys(id) ON DELETE SET NULL,"
    "  register_method TEXT NOT NULL DEFAULT '',"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL"
    ");"
    "CREATE INDEX nodes_namespace ON nodes(namespace_id);"
    "CREATE INDEX nodes_auth_key ON nodes(auth_key_id);"
    "CREATE TABLE routes ("
    "  id INTEGER PRIMARY KEY,"
    "  node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,"
    "  prefix TEXT NOT NULL,"
    "  advertised INTEGER NOT NULL DEFAULT 1,"
    "  enabled INTEGER NOT NULL DEFAULT 0,"
    "  is_primary INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  UNIQUE (node_id, prefix)"
    ");"
    "CREATE TABLE api_keys ("
    "  id INTEGER PRIMARY KEY,"
    "  prefix TEXT NOT NULL UNIQUE,"
    "  hash BLOB NOT NULL,"
    "  expiration INTEGER NOT NULL DEFAULT 0,"
    "  last_seen INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL"
    ");"
    "CREATE TABLE pending_registrations ("
    "  id TEXT PRIMARY KEY,"
    "  machine_key TEXT NOT NULL,"
    "  node_key TEXT NOT NULL,"
    "  disco_key TEXT,"
    "  hostname TEXT NOT NULL DEFAULT '',"
    "  hostinfo TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  expires_at INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX pending_registrations_expires ON pending_registrations(expires_at);"
    "CREATE TABLE secrets ("
    "  name TEXT PRIMARY KEY,"
    "  value BLOB NOT NULL"
    ");"
    "CREATE TABLE ip_alloc_cursor ("
    "  family INTEGER PRIMARY KEY CHECK (family IN (4, 6)),"
    "  base BLOB NOT NULL,"
    "  next BLOB NOT NULL"
    ");"
    "CREATE TRIGGER nodes_give_back_addresses AFTER DELETE ON nodes BEGIN"
    "  UPDATE ip_alloc_cursor SET next = OLD.ipv4_bin"
    "   WHERE family = 4 AND OLD.ipv4_bin >= base AND OLD.ipv4_bin < next;"
    "  UPDATE ip_alloc_cursor SET next = OLD.ipv6_bin"
    "   WHERE family = 6 AND OLD.ipv6_bin >= base AND OLD.ipv6_bin < next;"
    "END;"
    "CREATE TRIGGER nodes_give_back_ipv4 AFTER UPDATE OF ipv4_bin ON nodes"
    "  WHEN OLD.ipv4_bin IS NOT NEW.ipv4_bin BEGIN"
    "  UPDATE ip_alloc_cursor SET next = OLD.ipv4_bin"
    "   WHERE family = 4 AND OLD.ipv4_bin >= base AND OLD.ipv4_bin < next;"
    "END;"
    "CREATE TRIGGER nodes_give_back_ipv6 AFTER UPDATE OF ipv6_bin ON nodes"
    "  WHEN OLD.ipv6_bin IS NOT NEW.ipv6_bin BEGIN"
    "  UPDATE ip_alloc_cursor SET next = OLD.ipv6_bin"
    "   WHERE family = 6 AND OLD.ipv6_bin >= base AND OLD.ipv6_bin < next;"
    "END;";

/* policy.mode database: the policy file's text, one row. */
static const char schema_v2[] =
    "CREATE TABLE policy ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  data TEXT NOT NULL,"
    "  updated_at INTEGER NOT NULL"
    ");";

const struct hw_migration hw_schema_migrations[] = {
    {1, "initial schema", schema_v1},
    {2, "add policy", schema_v2},
};
const size_t hw_schema_n_migrations = HW_ARRAY_LEN(hw_schema_migrations);

static int query_int(sqlite3 *conn, const char *sql, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(conn, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : -1;
}

int hw_schema_current_version(sqlite3 *conn, int *version_out)
{
    int has_table = 0;
    if (query_int(conn,
                  "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
                  &has_table) < 0)
        return -1;
    if (!has_table) {
        *version_out = 0;
        return 0;
    }
    return query_int(conn, "SELECT coalesce(max(version), 0) FROM schema_version", version_out);
}

/* Another program's database (Headscale's has a `nodes` table too) must not be
 * half-converted by our first migration. */
static int is_foreign_database(sqlite3 *conn, int *foreign)
{
    int objects = 0;
    if (query_int(conn, "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                  &objects) < 0)
        return -1;
    *foreign = objects > 0;
    return 0;
}

static int check_list(const struct hw_migration *migrations, size_t n, char *err, size_t err_len)
{
    if (n == 0) {
        snprintf(err, err_len, "internal error: empty migration list");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (migrations[i].version != (int)i + 1) {
            snprintf(err, err_len, "internal error: migration %zu has version %d, want %zu", i,
                     migrations[i].version, i + 1);
            return -1;
        }
    }
    return 0;
}

static int apply_pending(sqlite3 *conn, const char *path, const struct hw_migration *migrations,
                         size_t n, int *current, char *err, size_t err_len)
{
    /* Re-read under the write lock: another headwater may have migrated meanwhile. */
    if (hw_schema_current_version(conn, current) < 0) {
        snprintf(err, err_len, "cannot read the schema version of %s: %s", path, sqlite3_errmsg(conn));
        return -1;
    }
    int latest = migrations[n - 1].version;
    if (*current > latest) {
        snprintf(err, err_len, "database schema version %d is newer than this headwater (knows %d): "
                 "upgrade headwater", *current, latest);
        return -1;
    }
    if (*current == 0) {
        int foreign = 0;
        if (is_foreign_database(conn, &foreign) < 0) {
            snprintf(err, err_len, "cannot read %s: %s", path, sqlite3_errmsg(conn));
            return -1;
        }
        if (foreign) {
            snprintf(err, err_len, "%s holds tables but no headwater schema_version: it is not a "
                     "headwater database (refusing to change it)", path);
            return -1;
        }
    }
    char *msg = NULL;
    if (sqlite3_exec(conn,
                     "CREATE TABLE IF NOT EXISTS schema_version ("
                     "  version INTEGER PRIMARY KEY,"
                     "  name TEXT NOT NULL,"
                     "  applied_at INTEGER NOT NULL)",
                     NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, err_len, "cannot create schema_version in %s: %s", path, msg ? msg : "");
        sqlite3_free(msg);
        return -1;
    }
    sqlite3_stmt *record = NULL;
    if (sqlite3_prepare_v2(conn, "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
                           -1, &record, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "cannot record migrations in %s: %s", path, sqlite3_errmsg(conn));
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const struct hw_migration *m = &migrations[i];
        if (m->version <= *current)
            continue;
        int rc = sqlite3_exec(conn, m->sql, NULL, NULL, &msg);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int(record, 1, m->version);
            sqlite3_bind_text(record, 2, m->name, -1, SQLITE_STATIC);
            sqlite3_bind_int64(record, 3, hw_now());
            rc = sqlite3_step(record) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
            sqlite3_reset(record);
        }
        if (rc != SQLITE_OK) {
            snprintf(err, err_len, "migration %d (%s) failed: %s; database left at version %d",
                     m->version, m->name, msg ? msg : sqlite3_errmsg(conn), *current);
            sqlite3_free(msg);
            sqlite3_finalize(record);
            return -1;
        }
    }
    sqlite3_finalize(record);
    return 0;
}

int hw_schema_migrate(sqlite3 *conn, const char *path, const struct hw_migration *migrations,
                      size_t n, char *err, size_t err_len)
{
    if (check_list(migrations, n, err, err_len) < 0)
        return -1;
    int current = 0, latest = migrations[n - 1].version;
    if (hw_schema_current_version(conn, &current) < 0) {
        snprintf(err, err_len, "cannot read the schema version of %s: %s", path, sqlite3_errmsg(conn));
        return -1;
    }
    if (current == latest)
        return 0;   /* the usual start: nothing to do, no write lock taken */
    if (current > latest) {
        snprintf(err, err_len, "database schema version %d is newer than this headwater (knows %d): "
                 "upgrade headwater", current, latest);
        return -1;
    }

    /* IMMEDIATE takes the write lock before reading the version, so two processes
     * starting together cannot both apply the same step. */
    if (sqlite3_exec(conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "cannot lock %s to migrate it: %s", path, sqlite3_errmsg(conn));
        return -1;
    }
    if (apply_pending(conn, path, migrations, n, &current, err, err_len) < 0) {
        sqlite3_exec(conn, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (sqlite3_exec(conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "committing migrations to %s failed: %s; database left at version %d",
                 path, sqlite3_errmsg(conn), current);
        sqlite3_exec(conn, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (migrations[i].version > current)
            log_info("database %s: applied migration %d (%s)", path, migrations[i].version,
                     migrations[i].name);
    }
    return 0;
}
