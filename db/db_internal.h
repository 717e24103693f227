#ifndef HW_DB_DB_INTERNAL_H
#define HW_DB_DB_INTERNAL_H

/* Shared by the files of db/ (and by tests/unit/test_db.c, which drives the migration
 * runner with its own list). Nothing outside db/ and its tests includes this. */

#include <sqlite3.h>
#include <stdarg.h>

#include "db/db.h"

#define HW_PEPPER_LEN 32

struct hw_cached_stmt {
    const char *sql;          /* keyed by the address of the SQL text at its call site */
    sqlite3_stmt *stmt;
};

struct hw_db {
    sqlite3 *conn;
    char errmsg[512];
    struct hw_cached_stmt *stmts;
    size_t n_stmts, cap_stmts;
    int tx_depth;             /* 0: autocommit; 1: BEGIN; >1: nested savepoints */
    struct hw_name_hints *name_hints;   /* given_names.c; NULL without a nodes table */
    unsigned char pepper[HW_PEPPER_LEN];
};

/* One forward step of the schema. `sql` may hold several statements. Versions are
 * 1, 2, 3 ... in order; a shipped step is never edited, only followed by a new one. */
struct hw_migration {
    int version;
    const char *name;
    const char *sql;
};

extern const struct hw_migration hw_schema_migrations[];
extern const size_t hw_schema_n_migrations;

/* hw_db_open with an explicit migration list, so a test can feed a failing step. */
struct hw_db *hw_db_open_with(const char *path, const struct hw_migration *migrations,
                              size_t n_migrations, char *err, size_t err_len);

/* Brings the connection's schema up to the last migration of the list, all pending
 * steps in one transaction. Returns 0, or -1 with err set and the file untouched. */
int hw_schema_migrate(sqlite3 *conn, const char *path, const struct hw_migration *migrations,
                      size_t n_migrations, char *err, size_t err_len);
int hw_schema_current_version(sqlite3 *conn, int *version_out);

/* given_names.c: the per-stem floors of the given-name search. install registers the
 * TEMP triggers and rollback hook that keep them true (once, at open); forget drops them
 * all (any rollback); free releases them at close. */
int db_name_hints_install(struct hw_db *db);
void db_name_hints_forget(struct hw_db *db);
void db_name_hints_free(struct hw_db *db);

/* Reads (creating on first open) the random pepper that keys the secret hashes. */
int hw_secrets_load_pepper(struct hw_db *db);

/* A cached prepared statement, reset and with its bindings cleared; NULL with the
 * error recorded when SQLite refuses the text (a bug in db/, reported loudly). */
sqlite3_stmt *db_stmt(struct hw_db *db, const char *sql);
/* Resets a statement after use, so it does not pin a read snapshot of the WAL. */
void db_done(sqlite3_stmt *st);

/* Records a message for hw_db_errmsg() and returns rc. */
int db_fail(struct hw_db *db, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Maps the SQLite result of a failed step to an hw_db_rc, recording what SQLite said
 * prefixed by `what` ("insert node"). */
int db_fail_sqlite(struct hw_db *db, int sqlite_rc, const char *what);
/* Steps a statement that returns no rows, then resets it. Returns HW_DB_OK or the
 * mapped error. */
int db_step_done(struct hw_db *db, sqlite3_stmt *st, const char *what);

/* Binding and reading helpers: "" and NULL are the same to the store (NULL in SQL). */
int db_bind_text_or_null(sqlite3_stmt *st, int idx, const char *text);
int db_bind_id_or_null(sqlite3_stmt *st, int idx, int64_t id);
void db_column_copy(sqlite3_stmt *st, int col, char *dst, size_t cap);
char *db_column_dup(sqlite3_stmt *st, int col);

/* One kind of row for db_read_rows: its size, how to read one, how to free what reading
 * allocated (NULL: nothing), and the words of its two errors. */
struct db_row_kind {
    size_t size;
    void (*read)(sqlite3_stmt *st, void *row);
    void (*clear)(void *row);
    const char *listing;        /* "listing nodes": "out of memory listing nodes" */
    const char *what;           /* "list nodes": SQLite's error, prefixed */
};
/* Steps a bound statement to its end, every row read into one malloc'd array (*rows,
 * *n_rows; NULL and 0 for none). On failure nothing is left allocated. */
int db_read_rows(struct hw_db *db, sqlite3_stmt *st, const struct db_row_kind *kind, void **rows,
                 size_t *n_rows);

/* Reads the one row a bound statement returns into *row (when row is not NULL). No row
 * is NOT_FOUND, "<noun> <which> not found" ("node 7 not found"). */
int db_read_one(struct hw_db *db, sqlite3_stmt *st, void (*read)(sqlite3_stmt *st, void *row),
                void *row, const char *noun, const char *which);

/* HW_DB_OK when the namespace exists, HW_DB_NOT_FOUND ("namespace 7 not found") if not. */
int db_require_namespace(struct hw_db *db, int64_t namespace_id);

/* Lowercase hex prefix of a secret key text, parsed from "hwkey-<kind>-<prefix>-..." or
 * given bare. Returns 0 and fills prefix_out, or -1. */
int db_parse_key_prefix(const char *kind, const char *key_or_prefix, char prefix_out[24]);

#endif
