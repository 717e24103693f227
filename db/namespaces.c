/* Namespaces (Headscale: users): the owners of nodes and pre-auth keys. */
#include "db/db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define NAMESPACE_SELECT                                                               \
    "SELECT ns.id, ns.name, ns.created_at,"                                            \
    " (SELECT count(*) FROM nodes n WHERE n.namespace_id = ns.id) FROM namespaces ns"

static void read_namespace(sqlite3_stmt *st, void *row)
{
    struct hw_namespace *out = row;
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    db_column_copy(st, 1, out->name, sizeof out->name);
    out->created_at = sqlite3_column_int64(st, 2);
    out->node_count = sqlite3_column_int64(st, 3);
}

static const struct db_row_kind namespace_rows = {sizeof(struct hw_namespace), read_namespace, NULL,
                                                  "listing namespaces", "list namespaces"};

static int check_name(struct hw_db *db, const char *name)
{
    if (!name || !*name)
        return db_fail(db, HW_DB_INVALID, "namespace name must not be empty");
    if (strlen(name) >= HW_NAME_MAX)
        return db_fail(db, HW_DB_INVALID, "namespace name is longer than %d characters", HW_NAME_MAX - 1);
    return HW_DB_OK;
}

int db_require_namespace(struct hw_db *db, int64_t namespace_id)
{
    sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM namespaces WHERE id = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, namespace_id);
    int rc = sqlite3_step(st);
    db_done(st);
    if (rc == SQLITE_ROW)
        return HW_DB_OK;
    if (rc == SQLITE_DONE)
        return db_fail(db, HW_DB_NOT_FOUND, "namespace %lld not found", (long long)namespace_id);
    return db_fail_sqlite(db, rc, "look up namespace");
}

int hw_db_namespace_create(struct hw_db *db, const char *name, struct hw_namespace *out)
{
    int rc = check_name(db, name);
    if (rc != HW_DB_OK)
        return rc;
    sqlite3_stmt *st = db_stmt(db, "INSERT INTO namespaces (name, created_at) VALUES (?1, ?2)");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, hw_now());
    rc = db_step_done(db, st, "create namespace");
    if (rc == HW_DB_EXISTS)
        return db_fail(db, rc, "namespace \"%s\" already exists", name);
    if (rc != HW_DB_OK || !out)
        return rc;
    return hw_db_namespace_get(db, sqlite3_last_insert_rowid(db->conn), out);
}

int hw_db_namespace_get(struct hw_db *db, int64_t id, struct hw_namespace *out)
{
    static const char sql[] = NAMESPACE_SELECT " WHERE ns.id = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    char what[32];
    snprintf(what, sizeof what, "%lld", (long long)id);
    return db_read_one(db, st, read_namespace, out, "namespace", what);
}

int hw_db_namespace_get_by_name(struct hw_db *db, const char *name, struct hw_namespace *out)
{
    static const char sql[] = NAMESPACE_SELECT " WHERE ns.name = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, name ? name : "", -1, SQLITE_TRANSIENT);
    char what[HW_NAME_MAX + 8];
    snprintf(what, sizeof what, "\"%.*s\"", HW_NAME_MAX - 1, name ? name : "");
    return db_read_one(db, st, read_namespace, out, "namespace", what);
}

int hw_db_namespace_list(struct hw_db *db, struct hw_namespace **out, size_t *n_out)
{
    static const char sql[] = NAMESPACE_SELECT " ORDER BY ns.id";
    *out = NULL;
    *n_out = 0;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    void *rows;
    int rc = db_read_rows(db, st, &namespace_rows, &rows, n_out);
    *out = rows;
    return rc;
}

int hw_db_namespace_rename(struct hw_db *db, int64_t id, const char *new_name)
{
    int rc = check_name(db, new_name);
    if (rc != HW_DB_OK)
        return rc;
    sqlite3_stmt *st = db_stmt(db, "UPDATE namespaces SET name = ?1 WHERE id = ?2");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, new_name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, id);
    rc = db_step_done(db, st, "rename namespace");
    if (rc == HW_DB_EXISTS)
        return db_fail(db, rc, "namespace \"%s\" already exists", new_name);
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        return db_fail(db, HW_DB_NOT_FOUND, "namespace %lld not found", (long long)id);
    return rc;
}

int hw_db_namespace_destroy(struct hw_db *db, int64_t id, bool force)
{
    struct hw_namespace ns;
    int rc = hw_db_begin(db);
    if (rc != HW_DB_OK)
        return rc;
    rc = hw_db_namespace_get(db, id, &ns);
    if (rc != HW_DB_OK)
        goto fail;
    if (ns.node_count > 0 && !force) {
        rc = db_fail(db, HW_DB_CONFLICT, "namespace \"%s\" still has %lld node%s", ns.name,
                     (long long)ns.node_count, ns.node_count == 1 ? "" : "s");
        goto fail;
    }
    /* Nodes are RESTRICT on purpose; with force they go explicitly, and their routes
     * follow by cascade. Pre-auth keys cascade with the namespace. */
    sqlite3_stmt *st = db_stmt(db, "DELETE FROM nodes WHERE namespace_id = ?1");
    if (!st) {
        rc = HW_DB_ERROR;
        goto fail;
    }
    sqlite3_bind_int64(st, 1, id);
    rc = db_step_done(db, st, "delete the namespace's nodes");
    if (rc != HW_DB_OK)
        goto fail;
    st = db_stmt(db, "DELETE FROM namespaces WHERE id = ?1");
    if (!st) {
        rc = HW_DB_ERROR;
        goto fail;
    }
    sqlite3_bind_int64(st, 1, id);
    rc = db_step_done(db, st, "delete namespace");
    if (rc == HW_DB_NOT_FOUND)   /* a foreign key refused it: a node slipped in */
        rc = db_fail(db, HW_DB_CONFLICT, "namespace \"%s\" still has nodes", ns.name);
    if (rc != HW_DB_OK)
        goto fail;
    return hw_db_commit(db);
fail:
    hw_db_rollback(db);
    return rc;
}
