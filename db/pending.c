/* Interactive logins waiting for an admin's `hwctl nodes register`. */
#include "db/db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void hw_pending_clear(struct hw_pending *p)
{
    if (!p)
        return;
    free(p->hostinfo_json);
    p->hostinfo_json = NULL;
}

int hw_db_pending_insert(struct hw_db *db, const struct hw_pending *p)
{
    static const char sql[] =
        "INSERT INTO pending_registrations (id, machine_key, node_key, disco_key, hostname,"
        " hostinfo, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    if (!p->id[0] || !p->machine_key[0] || !p->node_key[0])
        return db_fail(db, HW_DB_INVALID, "a pending registration needs an id, a machine key and a node key");
    if (p->expires_at < 0)
        return db_fail(db, HW_DB_INVALID, "expires_at must not be negative");
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, p->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, p->machine_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, p->node_key, -1, SQLITE_TRANSIENT);
    db_bind_text_or_null(st, 4, p->disco_key);
    sqlite3_bind_text(st, 5, p->hostname, -1, SQLITE_TRANSIENT);
    db_bind_text_or_null(st, 6, p->hostinfo_json);
    sqlite3_bind_int64(st, 7, p->created_at ? p->created_at : hw_now());
    sqlite3_bind_int64(st, 8, p->expires_at);
    int rc = db_step_done(db, st, "insert pending registration");
    if (rc == HW_DB_EXISTS)
        return db_fail(db, rc, "a pending registration with id %s already exists", p->id);
    return rc;
}

int hw_db_pending_get(struct hw_db *db, const char *id, struct hw_pending *out)
{
    static const char sql[] =
        "SELECT id, machine_key, node_key, disco_key, hostname, hostinfo, created_at, expires_at"
        " FROM pending_registrations WHERE id = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, id ? id : "", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int out_rc = HW_DB_OK;
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        db_column_copy(st, 0, out->id, sizeof out->id);
        db_column_copy(st, 1, out->machine_key, sizeof out->machine_key);
        db_column_copy(st, 2, out->node_key, sizeof out->node_key);
        db_column_copy(st, 3, out->disco_key, sizeof out->disco_key);
        db_column_copy(st, 4, out->hostname, sizeof out->hostname);
        out->hostinfo_json = db_column_dup(st, 5);
        out->created_at = sqlite3_column_int64(st, 6);
        out->expires_at = sqlite3_column_int64(st, 7);
    } else if (rc == SQLITE_DONE) {
        out_rc = db_fail(db, HW_DB_NOT_FOUND, "no pending registration with id %.64s", id ? id : "");
    } else {
        out_rc = db_fail_sqlite(db, rc, "read pending registration");
    }
    db_done(st);
    return out_rc;
}

int hw_db_pending_delete(struct hw_db *db, const char *id)
{
    sqlite3_stmt *st = db_stmt(db, "DELETE FROM pending_registrations WHERE id = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, id ? id : "", -1, SQLITE_TRANSIENT);
    int rc = db_step_done(db, st, "delete pending registration");
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "no pending registration with id %.64s", id ? id : "");
    return rc;
}

int hw_db_pending_delete_expired(struct hw_db *db, int64_t now)
{
    sqlite3_stmt *st = db_stmt(db, "DELETE FROM pending_registrations"
                                   " WHERE expires_at != 0 AND expires_at <= ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, now);
    int rc = db_step_done(db, st, "delete expired registrations");
    return rc == HW_DB_OK ? sqlite3_changes(db->conn) : rc;
}

int hw_db_pending_delete_machine(struct hw_db *db, const char *machine_key)
{
    sqlite3_stmt *st = db_stmt(db, "DELETE FROM pending_registrations WHERE machine_key = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, machine_key, -1, SQLITE_TRANSIENT);
    return db_step_done(db, st, "delete a machine's earlier registrations");
}

int64_t hw_db_pending_count(struct hw_db *db, int64_t now)
{
    sqlite3_stmt *st = db_stmt(db, "SELECT COUNT(*) FROM pending_registrations"
                                   " WHERE expires_at = 0 OR expires_at > ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, now);
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : HW_DB_ERROR;
    sqlite3_reset(st);
    return n;
}
