/* The connection: opening, pragmas, the statement cache, errors and transactions. */
#include "db/db_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

/* The database holds the pepper and the hashes of every key: create it readable by the
 * owner only. SQLite gives its -wal and -shm files the mode of the main file. */
static int create_private_file(const char *path, char *err, size_t err_len)
{
    struct stat st;
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0 || stat(path, &st) == 0)
        return 0;
    if (errno != ENOENT) {
        snprintf(err, err_len, "cannot open database %s: %s", path, strerror(errno));
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
        snprintf(err, err_len, "cannot create database %s: %s", path, strerror(errno));
        return -1;
    }
    if (fd >= 0)
        close(fd);
    return 0;
}

static int exec_pragma(sqlite3 *conn, const char *sql, const char *path, char *err, size_t err_len)
{
    char *msg = NULL;
    int rc = sqlite3_exec(conn, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        return 0;
    if ((rc & 0xff) == SQLITE_NOTADB)
        snprintf(err, err_len, "%s is not a SQLite database (%s)", path, msg ? msg : "");
    else
        snprintf(err, err_len, "cannot open database %s: %s", path, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return -1;
}

/* WAL so readers (the admin API listing nodes) never wait for the writer.
 * synchronous=FULL rather than NORMAL: with WAL both survive a crash or SIGKILL intact,
 * but NORMAL may drop the last commits on power loss. The server announces a change to
 * peers only after it is committed (DESIGN.md), and a node or a used-up key that
 * vanished after being announced would hand out an address twice or a one-off key
 * twice. Writes are rare (logins, admin commands), so one fsync per commit is cheap. */
static int configure(sqlite3 *conn, const char *path, char *err, size_t err_len)
{
    sqlite3_extended_result_codes(conn, 1);
    sqlite3_busy_timeout(conn, 5000);
    /* Double-quoted "strings" silently become identifiers or literals: refuse both, so a
     * typo in our SQL fails at prepare time instead of matching nothing. */
    sqlite3_db_config(conn, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL);
    sqlite3_db_config(conn, SQLITE_DBCONFIG_DQS_DDL, 0, (int *)NULL);

    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(conn, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        if ((rc & 0xff) == SQLITE_NOTADB)
            snprintf(err, err_len, "%s is not a SQLite database (%s)", path, sqlite3_errmsg(conn));
        else
            snprintf(err, err_len, "cannot open database %s: %s", path, sqlite3_errmsg(conn));
        sqlite3_finalize(st);
        return -1;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0)) {
        snprintf(err, err_len, "cannot open database %s: WAL mode refused (journal mode is %s); "
                 "is it on a network file system?", path, mode ? mode : "unknown");
        sqlite3_finalize(st);
        return -1;
    }
    sqlite3_finalize(st);
    return exec_pragma(conn, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", path, err, err_len);
}

struct hw_db *hw_db_open_with(const char *path, const struct hw_migration *migrations,
                              size_t n_migrations, char *err, size_t err_len)
{
    if (sodium_init() < 0) {
        snprintf(err, err_len, "libsodium failed to initialise");
        return NULL;
    }
    if (create_private_file(path, err, err_len) < 0)
        return NULL;

    sqlite3 *conn = NULL;
    int rc = sqlite3_open_v2(path, &conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "cannot open database %s: %s", path,
                 conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
        sqlite3_close(conn);
        return NULL;
    }
    if (configure(conn, path, err, err_len) < 0 ||
        hw_schema_migrate(conn, path, migrations, n_migrations, err, err_len) < 0) {
        sqlite3_close(conn);
        return NULL;
    }

    struct hw_db *db = hw_calloc(1, sizeof *db);
    db->conn = conn;
    if (hw_secrets_load_pepper(db) != HW_DB_OK) {
        snprintf(err, err_len, "cannot read the key pepper from %s: %s", path, db->errmsg);
        hw_db_close(db);
        return NULL;
    }
    if (db_name_hints_install(db) != HW_DB_OK) {
        snprintf(err, err_len, "cannot prepare %s for node naming: %s", path, db->errmsg);
        hw_db_close(db);
        return NULL;
    }
    return db;
}

struct hw_db *hw_db_open(const char *path, char *err, size_t err_len)
{
    return hw_db_open_with(path, hw_schema_migrations, hw_schema_n_migrations, err, err_len);
}

void hw_db_close(struct hw_db *db)
{
    if (!db)
        return;
    if (db->tx_depth > 0 && !sqlite3_get_autocommit(db->conn))
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
    for (size_t i = 0; i < db->n_stmts; i++)
        sqlite3_finalize(db->stmts[i].stmt);
    free(db->stmts);
    sqlite3_close(db->conn);
    db_name_hints_free(db);
    sodium_memzero(db->pepper, sizeof db->pepper);
    free(db);
}

const char *hw_db_errmsg(struct hw_db *db)
{
    return db->errmsg[0] ? db->errmsg : "no error";
}

int hw_db_schema_version(struct hw_db *db)
{
    int version = 0;
    if (hw_schema_current_version(db->conn, &version) != 0)
        return db_fail_sqlite(db, sqlite3_extended_errcode(db->conn), "read schema version");
    return version;
}

int hw_db_latest_version(void)
{
    return hw_schema_migrations[hw_schema_n_migrations - 1].version;
}

/* ---- errors ---- */

int db_fail(struct hw_db *db, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(db->errmsg, sizeof db->errmsg, fmt, ap);
    va_end(ap);
    return rc;
}

int db_fail_sqlite(struct hw_db *db, int sqlite_rc, const char *what)
{
    int rc;
    switch (sqlite_rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        rc = HW_DB_EXISTS;
        break;
    case SQLITE_CONSTRAINT_FOREIGNKEY:   /* the row it points at (namespace, node) is missing */
        rc = HW_DB_NOT_FOUND;
        break;
    case SQLITE_CONSTRAINT_NOTNULL:
    case SQLITE_CONSTRAINT_CHECK:
        rc = HW_DB_INVALID;
        break;
    default:
        rc = HW_DB_ERROR;
    }
    const char *msg = sqlite3_errmsg(db->conn);
    if (sqlite3_extended_errcode(db->conn) != sqlite_rc)
        msg = sqlite3_errstr(sqlite_rc);
    return db_fail(db, rc, "%s: %s", what, msg);
}

/* ---- statements ---- */

sqlite3_stmt *db_stmt(struct hw_db *db, const char *sql)
{
    for (size_t i = 0; i < db->n_stmts; i++) {
        if (db->stmts[i].sql == sql) {
            sqlite3_stmt *st = db->stmts[i].stmt;
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            return st;
        }
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(db->conn, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK) {
        db_fail(db, HW_DB_ERROR, "prepare failed: %s (in: %.120s)", sqlite3_errmsg(db->conn), sql);
        return NULL;
    }
    if (db->n_stmts == db->cap_stmts) {
        size_t cap = db->cap_stmts ? db->cap_stmts * 2 : 32;
        struct hw_cached_stmt *grown = realloc(db->stmts, cap * sizeof *grown);
        if (!grown) {
            sqlite3_finalize(st);
            db_fail(db, HW_DB_ERROR, "out of memory caching a statement");
            return NULL;
        }
        db->stmts = grown;
        db->cap_stmts = cap;
    }
    db->stmts[db->n_stmts++] = (struct hw_cached_stmt){.sql = sql, .stmt = st};
    return st;
}

void db_done(sqlite3_stmt *st)
{
    if (st)
        sqlite3_reset(st);
}

int db_step_done(struct hw_db *db, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int out = HW_DB_OK;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        out = db_fail_sqlite(db, sqlite3_extended_errcode(db->conn), what);
    sqlite3_reset(st);
    return out;
}

int db_read_rows(struct hw_db *db, sqlite3_stmt *st, const struct db_row_kind *kind, void **rows,
                 size_t *n_rows)
{
    char *list = NULL;
    size_t n = 0, cap = 0;
    int rc;
    *rows = NULL;
    *n_rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            char *grown = realloc(list, cap * kind->size);
            if (!grown)
                break;
            list = grown;
        }
        kind->read(st, list + n++ * kind->size);
    }
    db_done(st);
    if (rc == SQLITE_DONE) {
        *rows = list;
        *n_rows = n;
        return HW_DB_OK;
    }
    for (size_t i = 0; kind->clear && i < n; i++)
        kind->clear(list + i * kind->size);
    free(list);
    if (rc == SQLITE_ROW) /* the loop stopped on realloc */
        return db_fail(db, HW_DB_ERROR, "out of memory %s", kind->listing);
    return db_fail_sqlite(db, rc, kind->what);
}

int db_read_one(struct hw_db *db, sqlite3_stmt *st, void (*read)(sqlite3_stmt *st, void *row),
                void *row, const char *noun, const char *which)
{
    int rc = sqlite3_step(st);
    int out_rc = HW_DB_OK;
    if (rc == SQLITE_ROW) {
        if (row)
            read(st, row);
    } else if (rc == SQLITE_DONE) {
        out_rc = db_fail(db, HW_DB_NOT_FOUND, "%s %s not found", noun, which);
    } else {
        char what[64];
        snprintf(what, sizeof what, "read %s", noun);
        out_rc = db_fail_sqlite(db, rc, what);
    }
    db_done(st);
    return out_rc;
}

int db_bind_text_or_null(sqlite3_stmt *st, int idx, const char *text)
{
    if (!text || !*text)
        return sqlite3_bind_null(st, idx);
    return sqlite3_bind_text(st, idx, text, -1, SQLITE_TRANSIENT);
}

int db_bind_id_or_null(sqlite3_stmt *st, int idx, int64_t id)
{
    if (id == 0)
        return sqlite3_bind_null(st, idx);
    return sqlite3_bind_int64(st, idx, id);
}

void db_column_copy(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const char *text = (const char *)sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", text ? text : "");
}

char *db_column_dup(sqlite3_stmt *st, int col)
{
    const char *text = (const char *)sqlite3_column_text(st, col);
    return text && *text ? hw_strdup(text) : NULL;
}

/* ---- transactions ----
 * Nested calls become savepoints, so a function that needs its own transaction (force
 * destroy, registering a node) works both alone and inside a caller's transaction. */

static int exec_simple(struct hw_db *db, const char *sql, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db->conn, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        return HW_DB_OK;
    int out = db_fail(db, HW_DB_ERROR, "%s: %s", what, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return out;
}

int hw_db_begin(struct hw_db *db)
{
    /* SQLite may have rolled back on its own (disk full, I/O error): resynchronise. */
    if (db->tx_depth > 0 && sqlite3_get_autocommit(db->conn))
        db->tx_depth = 0;
    int rc;
    if (db->tx_depth == 0) {
        rc = exec_simple(db, "BEGIN IMMEDIATE", "begin transaction");
    } else {
        char sql[48];
        snprintf(sql, sizeof sql, "SAVEPOINT hw_%d", db->tx_depth);
        rc = exec_simple(db, sql, "begin nested transaction");
    }
    if (rc == HW_DB_OK)
        db->tx_depth++;
    return rc;
}

int hw_db_commit(struct hw_db *db)
{
    if (db->tx_depth <= 0)
        return db_fail(db, HW_DB_INVALID, "commit without a transaction");
    if (sqlite3_get_autocommit(db->conn)) {
        db->tx_depth = 0;
        return db_fail(db, HW_DB_ERROR, "commit: the transaction was already rolled back by SQLite");
    }
    int rc;
    if (db->tx_depth == 1) {
        rc = exec_simple(db, "COMMIT", "commit");
        if (rc != HW_DB_OK) {
            /* A failed COMMIT (I/O error) leaves the transaction open: end it. */
            if (!sqlite3_get_autocommit(db->conn))
                sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
            db->tx_depth = 0;
            return rc;
        }
    } else {
        char sql[48];
        snprintf(sql, sizeof sql, "RELEASE hw_%d", db->tx_depth - 1);
        rc = exec_simple(db, sql, "commit nested transaction");
        if (rc != HW_DB_OK)
            return rc;
    }
    db->tx_depth--;
    return HW_DB_OK;
}

void hw_db_rollback(struct hw_db *db)
{
    if (db->tx_depth <= 0)
        return;
    if (sqlite3_get_autocommit(db->conn)) {
        db->tx_depth = 0;
        return;
    }
    if (db->tx_depth == 1) {
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
    } else {
        char sql[80];
        snprintf(sql, sizeof sql, "ROLLBACK TO hw_%d; RELEASE hw_%d", db->tx_depth - 1,
                 db->tx_depth - 1);
        sqlite3_exec(db->conn, sql, NULL, NULL, NULL);
        /* SQLite's rollback hook sees only whole transactions; an undone savepoint may
         * have un-inserted given names just the same. */
        db_name_hints_forget(db);
    }
    db->tx_depth--;
}
