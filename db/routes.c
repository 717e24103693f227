/* Subnet and exit routes: advertised by a node, enabled by the admin.
 * A row exists while the route is advertised or enabled; one that is neither is
 * deleted, so the table never fills with routes nobody remembers. */
#include "db/db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define ROUTE_SELECT                                                                     \
    "SELECT r.id, r.node_id, n.given_name, r.prefix, r.advertised, r.enabled,"          \
    " r.is_primary, r.created_at, r.updated_at FROM routes r JOIN nodes n ON n.id = r.node_id"

static void read_route(sqlite3_stmt *st, void *row)
{
    struct hw_route *out = row;
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    out->node_id = sqlite3_column_int64(st, 1);
    db_column_copy(st, 2, out->node_name, sizeof out->node_name);
    db_column_copy(st, 3, out->prefix, sizeof out->prefix);
    out->advertised = sqlite3_column_int(st, 4) != 0;
    out->enabled = sqlite3_column_int(st, 5) != 0;
    out->is_primary = sqlite3_column_int(st, 6) != 0;
    out->created_at = sqlite3_column_int64(st, 7);
    out->updated_at = sqlite3_column_int64(st, 8);
}

static const struct db_row_kind route_rows = {sizeof(struct hw_route), read_route, NULL,
                                              "listing routes", "list routes"};

int hw_db_route_list(struct hw_db *db, int64_t node_id, struct hw_route **out, size_t *n_out)
{
    static const char sql[] =
        ROUTE_SELECT " WHERE ?1 = 0 OR r.node_id = ?1 ORDER BY r.node_id, r.prefix";
    *out = NULL;
    *n_out = 0;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, node_id);
    void *rows;
    int rc = db_read_rows(db, st, &route_rows, &rows, n_out);
    *out = rows;
    return rc;
}

static int require_node(struct hw_db *db, int64_t node_id)
{
    sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM nodes WHERE id = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, node_id);
    int rc = sqlite3_step(st);
    db_done(st);
    if (rc == SQLITE_ROW)
        return HW_DB_OK;
    if (rc == SQLITE_DONE)
        return db_fail(db, HW_DB_NOT_FOUND, "node %lld not found", (long long)node_id);
    return db_fail_sqlite(db, rc, "look up node");
}

static bool in_list(const char *prefix, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(prefix, list[i]) == 0)
            return true;
    }
    return false;
}

struct stored_route {
    char prefix[HW_PREFIX_TEXT_MAX];
    bool advertised, enabled;
};

static void read_stored_route(sqlite3_stmt *st, void *row)
{
    struct stored_route *r = row;
    db_column_copy(st, 0, r->prefix, sizeof r->prefix);
    r->advertised = sqlite3_column_int(st, 1) != 0;
    r->enabled = sqlite3_column_int(st, 2) != 0;
}

static const struct db_row_kind stored_route_rows = {sizeof(struct stored_route), read_stored_route,
                                                     NULL, "reading routes", "read routes"};

static int load_node_routes(struct hw_db *db, int64_t node_id, struct stored_route **out, size_t *n_out)
{
    sqlite3_stmt *st = db_stmt(db, "SELECT prefix, advertised, enabled FROM routes WHERE node_id = ?1");
    *out = NULL;
    *n_out = 0;
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, node_id);
    void *rows;
    int rc = db_read_rows(db, st, &stored_route_rows, &rows, n_out);
    *out = rows;
    return rc;
}

/* One statement on (node, prefix) with the current time as ?1 (the deletes leave ?1
 * unused, which SQLite allows). */
static int route_exec(struct hw_db *db, const char *sql, int64_t node_id, const char *prefix,
                      const char *what)
{
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, hw_now());
    sqlite3_bind_int64(st, 2, node_id);
    sqlite3_bind_text(st, 3, prefix, -1, SQLITE_TRANSIENT);
    return db_step_done(db, st, what);
}

static const char withdraw_sql[] =
    "UPDATE routes SET advertised = 0, is_primary = 0, updated_at = ?1"
    " WHERE node_id = ?2 AND prefix = ?3";
static const char forget_sql[] =
    "DELETE FROM routes WHERE node_id = ?2 AND prefix = ?3";
static const char readvertise_sql[] =
    "UPDATE routes SET advertised = 1, updated_at = ?1 WHERE node_id = ?2 AND prefix = ?3";
static const char advertise_sql[] =
    "INSERT INTO routes (node_id, prefix, advertised, enabled, is_primary, created_at, updated_at)"
    " VALUES (?2, ?3, 1, 0, 0, ?1, ?1)";

static int apply_advertised(struct hw_db *db, int64_t node_id, const char *const *prefixes, size_t n,
                            const struct stored_route *old, size_t n_old)
{
    int rc = HW_DB_OK;
    for (size_t i = 0; i < n_old && rc == HW_DB_OK; i++) {
        if (!old[i].advertised || in_list(old[i].prefix, prefixes, n))
            continue;
        /* An enabled route keeps its approval for when the router comes back. */
        if (old[i].enabled)
            rc = route_exec(db, withdraw_sql, node_id, old[i].prefix, "withdraw route");
        else
            rc = route_exec(db, forget_sql, node_id, old[i].prefix, "forget route");
    }
    for (size_t i = 0; i < n && rc == HW_DB_OK; i++) {
        if (in_list(prefixes[i], prefixes, i))
            continue;   /* listed twice */
        const struct stored_route *known = NULL;
        for (size_t j = 0; j < n_old; j++) {
            if (strcmp(old[j].prefix, prefixes[i]) == 0)
                known = &old[j];
        }
        if (!known)
            rc = route_exec(db, advertise_sql, node_id, prefixes[i], "add route");
        else if (!known->advertised)
            rc = route_exec(db, readvertise_sql, node_id, prefixes[i], "re-advertise route");
    }
    return rc;
}

int hw_db_route_set_advertised(struct hw_db *db, int64_t node_id, const char *const *prefixes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!prefixes[i] || !*prefixes[i] || strlen(prefixes[i]) >= HW_PREFIX_TEXT_MAX)
            return db_fail(db, HW_DB_INVALID, "route prefix %zu is empty or too long", i);
    }
    int rc = hw_db_begin(db);
    if (rc != HW_DB_OK)
        return rc;
    struct stored_route *old = NULL;
    size_t n_old = 0;
    rc = require_node(db, node_id);
    if (rc == HW_DB_OK)
        rc = load_node_routes(db, node_id, &old, &n_old);
    if (rc == HW_DB_OK)
        rc = apply_advertised(db, node_id, prefixes, n, old, n_old);
    free(old);
    if (rc != HW_DB_OK) {
        hw_db_rollback(db);
        return rc;
    }
    return hw_db_commit(db);
}

int hw_db_route_set_enabled(struct hw_db *db, int64_t node_id, const char *prefix, bool enabled)
{
    static const char enable_sql[] =
        "UPDATE routes SET enabled = 1, updated_at = ?1"
        " WHERE node_id = ?2 AND prefix = ?3 AND advertised = 1";
    /* Disabling also works on a withdrawn route: the admin revokes a remembered approval. */
    static const char disable_sql[] =
        "UPDATE routes SET enabled = 0, is_primary = 0, updated_at = ?1"
        " WHERE node_id = ?2 AND prefix = ?3";
    static const char drop_unused_sql[] =
        "DELETE FROM routes WHERE node_id = ?2 AND prefix = ?3"
        " AND advertised = 0 AND enabled = 0";
    if (!prefix || !*prefix)
        return db_fail(db, HW_DB_INVALID, "route prefix must not be empty");
    int rc = route_exec(db, enabled ? enable_sql : disable_sql, node_id, prefix,
                        enabled ? "enable route" : "disable route");
    if (rc != HW_DB_OK)
        return rc;
    if (sqlite3_changes(db->conn) == 0) {
        rc = require_node(db, node_id);
        if (rc != HW_DB_OK)
            return rc;
        return db_fail(db, HW_DB_NOT_FOUND, "node %lld does not advertise %s", (long long)node_id, prefix);
    }
    if (!enabled)
        rc = route_exec(db, drop_unused_sql, node_id, prefix, "forget route");
    return rc;
}

int hw_db_route_set_primary(struct hw_db *db, int64_t route_id, bool is_primary)
{
    sqlite3_stmt *st = db_stmt(db, "UPDATE routes SET is_primary = ?1, updated_at = ?2 WHERE id = ?3");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int(st, 1, is_primary);
    sqlite3_bind_int64(st, 2, hw_now());
    sqlite3_bind_int64(st, 3, route_id);
    int rc = db_step_done(db, st, "set primary route");
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "route %lld not found", (long long)route_id);
    return rc;
}
