/* The access policy in policy.mode database: one row, replaced as a whole. */
#include "db/db_internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

int hw_db_policy_get(struct hw_db *db, char **text, int64_t *updated_at)
{
    *text = NULL;
    if (updated_at)
        *updated_at = 0;
    sqlite3_stmt *st = db_stmt(db, "SELECT data, updated_at FROM policy WHERE id = 1");
    if (!st)
        return HW_DB_ERROR;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *text = db_column_dup(st, 0);
        if (updated_at)
            *updated_at = sqlite3_column_int64(st, 1);
    }
    db_done(st);
    if (rc == SQLITE_ROW)
        return HW_DB_OK;
    if (rc == SQLITE_DONE)
        return db_fail(db, HW_DB_NOT_FOUND, "no policy is stored");
    return db_fail_sqlite(db, rc, "read the policy");
}

int hw_db_policy_set(struct hw_db *db, const char *text)
{
    if (!text)
        return db_fail(db, HW_DB_INVALID, "policy text must not be NULL");
    sqlite3_stmt *st = db_stmt(db, "INSERT INTO policy (id, data, updated_at) VALUES (1, ?1, ?2)"
                                   " ON CONFLICT (id) DO UPDATE SET data = ?1, updated_at = ?2");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, hw_now());
    return db_step_done(db, st, "store the policy");
}
