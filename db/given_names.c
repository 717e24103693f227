/* The lowest free "<stem>-<n>" given name, in amortised O(1).
 *
 * Hundreds of machines may report one host name ("localhost", "raspberrypi"); each new
 * one gets the smallest free suffix. Reading every taken "<stem>-*" name per
 * registration costs O(k) for k such nodes. Instead the connection remembers, per stem,
 * a floor and a few holes: every suffix in [1, floor) is taken except perhaps the holes
 * (suffixes freed since the floor was found). A pick checks the holes, smallest first,
 * then probes from the floor upward, each a single index lookup, and keeps what it saw.
 *
 * The claim can only become false when a name is freed, so:
 *   - TEMP triggers on this connection report every deleted or renamed node's old name
 *     (whatever SQL did it: single delete, namespace destroy, rename, full update); a
 *     suffix below the floor becomes a hole (too many holes: the floor drops to the
 *     lowest of them instead);
 *   - a rollback (whole transaction or savepoint, explicit or SQLite's own) may un-insert
 *     names: every stem is forgotten;
 *   - another connection's commit (PRAGMA data_version moves) may have freed names:
 *     every stem is forgotten.
 * A forgotten stem is found again with one range read of its names (the old O(k) way).
 * The database stays the truth: a hint only ever skips names it saw taken. Ephemeral
 * churn (a node deleted, a new one named into its hole) stays O(1) per registration. */
#include "db/db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

enum {
    HINT_SLOTS = 2048,          /* open addressing, power of two */
    HINT_MAX_STEMS = 1024,      /* kept at most; on overflow all are forgotten */
    HINT_MAX_HOLES = 16,
    PROBES_BEFORE_RESCAN = 32,  /* past a long run of taken names one range read is cheaper */
};

struct name_hint {
    char stem[HW_NAME_MAX];     /* "" = empty slot */
    uint32_t floor;             /* every suffix in [1, floor) is taken but the holes */
    uint32_t holes[HINT_MAX_HOLES];   /* below floor, freed since; unordered */
    unsigned n_holes;
};

struct hw_name_hints {
    struct name_hint slots[HINT_SLOTS];
    size_t n_stems;
    int64_t data_version;       /* of the connection when the hints were last checked */
    bool data_version_known;
};

static uint32_t stem_hash(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* The slot holding stem, or the empty slot where it would go. */
static struct name_hint *hint_slot(struct hw_name_hints *h, const char *stem)
{
    for (uint32_t i = stem_hash(stem) & (HINT_SLOTS - 1);; i = (i + 1) & (HINT_SLOTS - 1)) {
        struct name_hint *slot = &h->slots[i];
        if (!slot->stem[0] || strcmp(slot->stem, stem) == 0)
            return slot;
    }
}

void db_name_hints_forget(struct hw_db *db)
{
    struct hw_name_hints *h = db->name_hints;
    if (!h || h->n_stems == 0)
        return;
    for (size_t i = 0; i < HINT_SLOTS; i++)
        h->slots[i].stem[0] = '\0';
    h->n_stems = 0;
}

/* Everything below floor is taken: a stem's state after a full read of its names. */
static void remember_floor(struct hw_db *db, const char *stem, uint32_t floor)
{
    struct hw_name_hints *h = db->name_hints;
    struct name_hint *slot = hint_slot(h, stem);
    if (!slot->stem[0]) {
        if (h->n_stems == HINT_MAX_STEMS) {
            db_name_hints_forget(db);
            slot = hint_slot(h, stem);
        }
        snprintf(slot->stem, sizeof slot->stem, "%s", stem);
        h->n_stems++;
    }
    slot->floor = floor;
    slot->n_holes = 0;
}

static void hole_freed(struct name_hint *slot, uint32_t n)
{
    if (n >= slot->floor)
        return;
    uint32_t lowest = n;
    for (unsigned i = 0; i < slot->n_holes; i++) {
        if (slot->holes[i] == n)
            return;
        if (slot->holes[i] < lowest)
            lowest = slot->holes[i];
    }
    if (slot->n_holes < HINT_MAX_HOLES) {
        slot->holes[slot->n_holes++] = n;
        return;
    }
    /* A mass delete: below its lowest hole everything is still taken. */
    slot->floor = lowest;
    slot->n_holes = 0;
}

static unsigned lowest_hole(const struct name_hint *slot)
{
    unsigned at = 0;
    for (unsigned i = 1; i < slot->n_holes; i++)
        if (slot->holes[i] < slot->holes[at])
            at = i;
    return at;
}

/* "7" -> 7; anything but a plain decimal without a leading zero -> 0 (never a suffix the
 * namer hands out, so never one that matters to a floor). */
static unsigned long suffix_number(const char *s)
{
    size_t digits = strspn(s, "0123456789");
    if (digits == 0 || digits > 9 || s[digits] != '\0' || s[0] == '0')
        return 0;
    return strtoul(s, NULL, 10);
}

/* hw_given_name_freed(old_name): called by the TEMP triggers for every name a node gives
 * up; "<stem>-<n>" lowers that stem's floor to n. */
static void name_freed(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    struct hw_db *db = sqlite3_user_data(ctx);
    const char *name = argc == 1 ? (const char *)sqlite3_value_text(argv[0]) : NULL;
    if (!db->name_hints || !name)
        return;
    const char *dash = strrchr(name, '-');
    if (!dash || dash == name || (size_t)(dash - name) >= HW_NAME_MAX)
        return;
    unsigned long n = suffix_number(dash + 1);
    if (n == 0)
        return;
    char stem[HW_NAME_MAX];
    memcpy(stem, name, (size_t)(dash - name));
    stem[dash - name] = '\0';
    struct name_hint *slot = hint_slot(db->name_hints, stem);
    if (slot->stem[0])
        hole_freed(slot, (uint32_t)n);
}

static void rolled_back(void *arg)
{
    db_name_hints_forget(arg);
}

int db_name_hints_install(struct hw_db *db)
{
    /* A test's own migration list may have no nodes table: then no hints, every pick
     * reads the names (still exact). */
    sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nodes'");
    if (!st)
        return HW_DB_ERROR;
    int rc = sqlite3_step(st);
    db_done(st);
    if (rc == SQLITE_DONE)
        return HW_DB_OK;
    if (rc != SQLITE_ROW)
        return db_fail_sqlite(db, rc, "look for the nodes table");

    rc = sqlite3_create_function_v2(db->conn, "hw_given_name_freed", 1, SQLITE_UTF8, db,
                                    name_freed, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_fail_sqlite(db, rc, "register hw_given_name_freed");
    /* TEMP: per connection, not part of the stored schema (no migration, nothing left in
     * the file for another program to trip over). */
    static const char triggers[] =
        "CREATE TEMP TRIGGER hw_names_freed_by_delete AFTER DELETE ON main.nodes"
        " BEGIN SELECT hw_given_name_freed(OLD.given_name); END;"
        "CREATE TEMP TRIGGER hw_names_freed_by_rename AFTER UPDATE OF given_name ON main.nodes"
        " WHEN OLD.given_name IS NOT NEW.given_name"
        " BEGIN SELECT hw_given_name_freed(OLD.given_name); END;";
    char *msg = NULL;
    rc = sqlite3_exec(db->conn, triggers, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        db_fail(db, HW_DB_ERROR, "create the name triggers: %s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return HW_DB_ERROR;
    }
    sqlite3_rollback_hook(db->conn, rolled_back, db);
    db->name_hints = hw_calloc(1, sizeof *db->name_hints);
    return HW_DB_OK;
}

void db_name_hints_free(struct hw_db *db)
{
    free(db->name_hints);   /* after sqlite3_close: its last ROLLBACK may call the hook */
    db->name_hints = NULL;
}

/* Forgets every floor when another connection committed since the last look. */
static int check_other_writers(struct hw_db *db)
{
    struct hw_name_hints *h = db->name_hints;
    sqlite3_stmt *st = db_stmt(db, "PRAGMA data_version");
    if (!st)
        return HW_DB_ERROR;
    int rc = sqlite3_step(st);
    int64_t version = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    db_done(st);
    if (rc != SQLITE_ROW)
        return db_fail_sqlite(db, rc, "read data_version");
    if (h->data_version_known && version != h->data_version)
        db_name_hints_forget(db);
    h->data_version = version;
    h->data_version_known = true;
    return HW_DB_OK;
}

/* 1 taken, 0 free, <0 the check failed (never guessed either way). */
static int suffix_taken(struct hw_db *db, const char *stem, unsigned long n)
{
    char name[HW_NAME_MAX + 16];
    snprintf(name, sizeof name, "%s-%lu", stem, n);
    sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM nodes WHERE given_name = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    db_done(st);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    return db_fail_sqlite(db, rc, "check node name");
}

/* The lowest free suffix from all the stem's names, in one index range read. */
static int first_free_by_scan(struct hw_db *db, const char *stem, int64_t except_node_id,
                              unsigned long *out)
{
    char prefix[HW_NAME_MAX + 1];
    snprintf(prefix, sizeof prefix, "%s-", stem);
    char **names = NULL;
    size_t n_names = 0;
    int rc = hw_db_given_names_with_prefix(db, prefix, except_node_id, &names, &n_names);
    if (rc != HW_DB_OK)
        return rc;
    /* With k names taken, one of the suffixes 1..k+1 is free. */
    bool *used = hw_calloc(n_names + 2, sizeof *used);
    size_t prefix_len = strlen(prefix);
    for (size_t i = 0; i < n_names; i++) {
        unsigned long k = suffix_number(names[i] + prefix_len);
        if (k >= 1 && k <= n_names + 1)
            used[k] = true;
    }
    unsigned long k = 1;
    while (used[k])
        k++;
    free(used);
    hw_db_string_list_free(names, n_names);
    *out = k;
    return HW_DB_OK;
}

int hw_db_given_name_first_free_suffix(struct hw_db *db, const char *stem, int64_t except_node_id,
                                       unsigned long *suffix_out)
{
    size_t len = stem ? strlen(stem) : 0;
    if (len == 0 || len >= HW_NAME_MAX - 1)
        return db_fail(db, HW_DB_INVALID, "name stem must be 1 to %d characters", HW_NAME_MAX - 2);
    /* A floor is about every node; a node keeping its own name is the rare rename path. */
    if (!db->name_hints || except_node_id != 0)
        return first_free_by_scan(db, stem, except_node_id, suffix_out);

    int rc = check_other_writers(db);
    if (rc != HW_DB_OK)
        return rc;
    struct name_hint *slot = hint_slot(db->name_hints, stem);
    if (slot->stem[0]) {
        /* Below the floor only a hole can be free; the lowest free one is the answer. It
         * stays a hole until seen taken: the caller may never store the name. */
        while (slot->n_holes > 0) {
            unsigned at = lowest_hole(slot);
            int taken = suffix_taken(db, stem, slot->holes[at]);
            if (taken < 0)
                return taken;
            if (!taken) {
                *suffix_out = slot->holes[at];
                return HW_DB_OK;
            }
            slot->holes[at] = slot->holes[--slot->n_holes];
        }
        uint32_t n = slot->floor;
        for (int probes = 0; probes < PROBES_BEFORE_RESCAN; probes++, n++) {
            int taken = suffix_taken(db, stem, n);
            if (taken < 0)
                return taken;
            if (!taken) {
                slot->floor = n;   /* not n + 1: the caller may never store the name */
                *suffix_out = n;
                return HW_DB_OK;
            }
        }
        slot->floor = n;           /* [old floor, n) was just seen taken */
    }
    unsigned long n = 0;
    rc = first_free_by_scan(db, stem, 0, &n);
    if (rc != HW_DB_OK)
        return rc;
    remember_floor(db, stem, (uint32_t)n);
    *suffix_out = n;
    return HW_DB_OK;
}
