/* Nodes, their addresses and MagicDNS names. */
#include "db/db_internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define NODE_SELECT                                                                        \
    "SELECT n.id, n.machine_key, n.node_key, n.disco_key, n.ipv4, n.ipv6, n.hostname,"    \
    " n.given_name, n.namespace_id, ns.name, n.hostinfo, n.endpoints, n.tags, n.expiry,"  \
    " n.last_seen, n.ephemeral, n.auth_key_id, n.register_method, n.created_at,"          \
    " n.updated_at FROM nodes n JOIN namespaces ns ON ns.id = n.namespace_id"

void hw_node_clear(struct hw_node *n)
{
    if (!n)
        return;
    free(n->hostinfo_json);
    free(n->endpoints_json);
    free(n->tags_json);
    n->hostinfo_json = n->endpoints_json = n->tags_json = NULL;
}

void hw_node_list_free(struct hw_node *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        hw_node_clear(&list[i]);
    free(list);
}

static void read_node(sqlite3_stmt *st, void *row)
{
    struct hw_node *out = row;
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    db_column_copy(st, 1, out->machine_key, sizeof out->machine_key);
    db_column_copy(st, 2, out->node_key, sizeof out->node_key);
    db_column_copy(st, 3, out->disco_key, sizeof out->disco_key);
    db_column_copy(st, 4, out->ipv4, sizeof out->ipv4);
    db_column_copy(st, 5, out->ipv6, sizeof out->ipv6);
    db_column_copy(st, 6, out->hostname, sizeof out->hostname);
    db_column_copy(st, 7, out->given_name, sizeof out->given_name);
    out->namespace_id = sqlite3_column_int64(st, 8);
    db_column_copy(st, 9, out->namespace_name, sizeof out->namespace_name);
    out->hostinfo_json = db_column_dup(st, 10);
    out->endpoints_json = db_column_dup(st, 11);
    out->tags_json = db_column_dup(st, 12);
    out->expiry = sqlite3_column_int64(st, 13);
    out->last_seen = sqlite3_column_int64(st, 14);
    out->ephemeral = sqlite3_column_int(st, 15) != 0;
    out->auth_key_id = sqlite3_column_int64(st, 16);
    db_column_copy(st, 17, out->register_method, sizeof out->register_method);
    out->created_at = sqlite3_column_int64(st, 18);
    out->updated_at = sqlite3_column_int64(st, 19);
}

static void clear_node(void *row) { hw_node_clear(row); }

static const struct db_row_kind node_rows = {sizeof(struct hw_node), read_node, clear_node,
                                             "listing nodes", "list nodes"};

/* ---- addresses ---- */

/* Parses an address of either family into big-endian bytes. Returns 4 or 6, or 0. */
static int parse_address(const char *text, unsigned char bin[16])
{
    if (!text)
        return 0;
    if (inet_pton(AF_INET, text, bin) == 1)
        return 4;
    if (inet_pton(AF_INET6, text, bin) == 1)
        return 6;
    return 0;
}

static size_t family_len(int family) { return family == 4 ? 4 : 16; }

static void format_address(int family, const unsigned char *bin, char out[HW_IP_TEXT_MAX])
{
    inet_ntop(family == 4 ? AF_INET : AF_INET6, bin, out, HW_IP_TEXT_MAX);
}

/* The node's address of one family, rewritten in canonical text ("" when absent) so the
 * UNIQUE text column and the byte column always agree. */
static int canonical_address(struct hw_db *db, int family, char text[HW_IP_TEXT_MAX],
                             unsigned char bin[16], bool *present)
{
    *present = false;
    if (!text[0])
        return HW_DB_OK;
    int got = parse_address(text, bin);
    if (got != family)
        return db_fail(db, HW_DB_INVALID, "\"%s\" is not an IPv%d address", text, family);
    format_address(family, bin, text);
    *present = true;
    return HW_DB_OK;
}

/* ---- insert and update ---- */

/* Friendlier words for SQLite's "UNIQUE constraint failed: nodes.<column>". */
static int node_write_failed(struct hw_db *db, int rc, const struct hw_node *n, const char *what)
{
    if (rc != HW_DB_EXISTS)
        return rc;
    const char *msg = db->errmsg;
    if (strstr(msg, "nodes.machine_key"))
        return db_fail(db, rc, "machine key %s already belongs to another node", n->machine_key);
    if (strstr(msg, "nodes.node_key"))
        return db_fail(db, rc, "node key %s already belongs to another node", n->node_key);
    if (strstr(msg, "nodes.given_name"))
        return db_fail(db, rc, "name \"%s\" is already taken by another node", n->given_name);
    if (strstr(msg, "nodes.ipv4"))
        return db_fail(db, rc, "address %s is already held by another node", n->ipv4);
    if (strstr(msg, "nodes.ipv6"))
        return db_fail(db, rc, "address %s is already held by another node", n->ipv6);
    return db_fail(db, rc, "%s: %s", what, msg);
}

/* Checks and binds ?1..?18, the columns insert and update share. */
static int bind_node_columns(struct hw_db *db, sqlite3_stmt *st, struct hw_node *n)
{
    if (!n->machine_key[0] || !n->node_key[0])
        return db_fail(db, HW_DB_INVALID, "a node needs a machine key and a node key");
    if (!n->given_name[0])
        return db_fail(db, HW_DB_INVALID, "a node needs a given name");
    if (n->expiry < 0 || n->last_seen < 0 || n->auth_key_id < 0)
        return db_fail(db, HW_DB_INVALID, "negative time or id in node");
    unsigned char v4[16], v6[16];
    bool has_v4, has_v6;
    int rc = canonical_address(db, 4, n->ipv4, v4, &has_v4);
    if (rc == HW_DB_OK)
        rc = canonical_address(db, 6, n->ipv6, v6, &has_v6);
    if (rc != HW_DB_OK)
        return rc;
    sqlite3_bind_text(st, 1, n->machine_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, n->node_key, -1, SQLITE_TRANSIENT);
    db_bind_text_or_null(st, 3, n->disco_key);
    db_bind_text_or_null(st, 4, n->ipv4);
    db_bind_text_or_null(st, 5, n->ipv6);
    if (has_v4)
        sqlite3_bind_blob(st, 6, v4, 4, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 6);
    if (has_v6)
        sqlite3_bind_blob(st, 7, v6, 16, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 7);
    sqlite3_bind_text(st, 8, n->hostname, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 9, n->given_name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 10, n->namespace_id);
    db_bind_text_or_null(st, 11, n->hostinfo_json);
    db_bind_text_or_null(st, 12, n->endpoints_json);
    db_bind_text_or_null(st, 13, n->tags_json);
    sqlite3_bind_int64(st, 14, n->expiry);
    sqlite3_bind_int64(st, 15, n->last_seen);
    sqlite3_bind_int(st, 16, n->ephemeral);
    db_bind_id_or_null(st, 17, n->auth_key_id);
    sqlite3_bind_text(st, 18, n->register_method, -1, SQLITE_TRANSIENT);
    return HW_DB_OK;
}

/* The part insert and update share: their columns, now as ?19, the step, and a failure
 * in words the admin can act on. */
static int write_node(struct hw_db *db, sqlite3_stmt *st, struct hw_node *n, int64_t now,
                      const char *what)
{
    int rc = bind_node_columns(db, st, n);
    if (rc != HW_DB_OK) {
        db_done(st);
        return rc;
    }
    sqlite3_bind_int64(st, 19, now);
    rc = db_step_done(db, st, what);
    /* A foreign key failure: the namespace (its message set by the check) or the key. */
    if (rc == HW_DB_NOT_FOUND && db_require_namespace(db, n->namespace_id) == HW_DB_OK)
        return db_fail(db, rc, "pre-auth key %lld not found", (long long)n->auth_key_id);
    return node_write_failed(db, rc, n, what);
}

int hw_db_node_insert(struct hw_db *db, struct hw_node *n)
{
    static const char sql[] =
        "INSERT INTO nodes (machine_key, node_key, disco_key, ipv4, ipv6, ipv4_bin, ipv6_bin,"
        " hostname, given_name, namespace_id, hostinfo, endpoints, tags, expiry, last_seen,"
        " ephemeral, auth_key_id, register_method, created_at, updated_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,"
        " ?18, ?19, ?19)";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    int64_t now = hw_now();
    int rc = write_node(db, st, n, now, "insert node");
    if (rc != HW_DB_OK)
        return rc;
    n->id = sqlite3_last_insert_rowid(db->conn);
    n->created_at = n->updated_at = now;
    return HW_DB_OK;
}

int hw_db_node_update(struct hw_db *db, struct hw_node *n)
{
    static const char sql[] =
        "UPDATE nodes SET machine_key = ?1, node_key = ?2, disco_key = ?3, ipv4 = ?4,"
        " ipv6 = ?5, ipv4_bin = ?6, ipv6_bin = ?7, hostname = ?8, given_name = ?9,"
        " namespace_id = ?10, hostinfo = ?11, endpoints = ?12, tags = ?13, expiry = ?14,"
        " last_seen = ?15, ephemeral = ?16, auth_key_id = ?17, register_method = ?18,"
        " updated_at = ?19 WHERE id = ?20";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 20, n->id);
    int64_t now = hw_now();
    int rc = write_node(db, st, n, now, "update node");
    if (rc != HW_DB_OK)
        return rc;
    if (sqlite3_changes(db->conn) == 0)
        return db_fail(db, HW_DB_NOT_FOUND, "node %lld not found", (long long)n->id);
    n->updated_at = now;
    return HW_DB_OK;
}

/* ---- reads ---- */

int hw_db_node_get(struct hw_db *db, int64_t id, struct hw_node *out)
{
    static const char sql[] = NODE_SELECT " WHERE n.id = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    char what[32];
    snprintf(what, sizeof what, "%lld", (long long)id);
    return db_read_one(db, st, read_node, out, "node", what);
}

int hw_db_node_get_by_machine_key(struct hw_db *db, const char *mkey, struct hw_node *out)
{
    static const char sql[] = NODE_SELECT " WHERE n.machine_key = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, mkey ? mkey : "", -1, SQLITE_TRANSIENT);
    char what[HW_KEY_TEXT_MAX + 16];
    snprintf(what, sizeof what, "with machine key %.*s", HW_KEY_TEXT_MAX - 1, mkey ? mkey : "");
    return db_read_one(db, st, read_node, out, "node", what);
}

int hw_db_node_get_by_node_key(struct hw_db *db, const char *nodekey, struct hw_node *out)
{
    static const char sql[] = NODE_SELECT " WHERE n.node_key = ?1";
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, nodekey ? nodekey : "", -1, SQLITE_TRANSIENT);
    char what[HW_KEY_TEXT_MAX + 16];
    snprintf(what, sizeof what, "with node key %.*s", HW_KEY_TEXT_MAX - 1, nodekey ? nodekey : "");
    return db_read_one(db, st, read_node, out, "node", what);
}

int hw_db_node_list(struct hw_db *db, int64_t namespace_id, struct hw_node **out, size_t *n_out)
{
    static const char sql[] = NODE_SELECT " WHERE ?1 = 0 OR n.namespace_id = ?1 ORDER BY n.id";
    *out = NULL;
    *n_out = 0;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, namespace_id);
    void *rows;
    int rc = db_read_rows(db, st, &node_rows, &rows, n_out);
    *out = rows;
    return rc;
}

/* ---- single-column changes ---- */

/* Finishes an UPDATE/DELETE by id: NOT_FOUND when it touched no row. */
static int by_id_done(struct hw_db *db, sqlite3_stmt *st, int64_t id, const char *what)
{
    int rc = db_step_done(db, st, what);
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "node %lld not found", (long long)id);
    return rc;
}

int hw_db_node_delete(struct hw_db *db, int64_t id)
{
    sqlite3_stmt *st = db_stmt(db, "DELETE FROM nodes WHERE id = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return by_id_done(db, st, id, "delete node");
}

int hw_db_node_set_expiry(struct hw_db *db, int64_t id, int64_t expiry)
{
    if (expiry < 0)
        return db_fail(db, HW_DB_INVALID, "expiry must not be negative");
    sqlite3_stmt *st = db_stmt(db, "UPDATE nodes SET expiry = ?1, updated_at = ?2 WHERE id = ?3");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, expiry);
    sqlite3_bind_int64(st, 2, hw_now());
    sqlite3_bind_int64(st, 3, id);
    return by_id_done(db, st, id, "set node expiry");
}

int hw_db_node_set_given_name(struct hw_db *db, int64_t id, const char *given_name)
{
    if (!given_name || !*given_name || strlen(given_name) >= HW_NAME_MAX)
        return db_fail(db, HW_DB_INVALID, "a node name must be 1 to %d characters", HW_NAME_MAX - 1);
    sqlite3_stmt *st = db_stmt(db, "UPDATE nodes SET given_name = ?1, updated_at = ?2 WHERE id = ?3");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, given_name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, hw_now());
    sqlite3_bind_int64(st, 3, id);
    int rc = by_id_done(db, st, id, "rename node");
    if (rc == HW_DB_EXISTS)
        return db_fail(db, rc, "name \"%s\" is already taken by another node", given_name);
    return rc;
}

int hw_db_node_set_namespace(struct hw_db *db, int64_t id, int64_t namespace_id)
{
    sqlite3_stmt *st = db_stmt(db, "UPDATE nodes SET namespace_id = ?1, updated_at = ?2 WHERE id = ?3");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, namespace_id);
    sqlite3_bind_int64(st, 2, hw_now());
    sqlite3_bind_int64(st, 3, id);
    int rc = db_step_done(db, st, "move node");
    if (rc == HW_DB_NOT_FOUND)
        return db_fail(db, rc, "namespace %lld not found", (long long)namespace_id);
    if (rc == HW_DB_OK && sqlite3_changes(db->conn) == 0)
        rc = db_fail(db, HW_DB_NOT_FOUND, "node %lld not found", (long long)id);
    return rc;
}

int hw_db_node_set_tags(struct hw_db *db, int64_t id, const char *tags_json)
{
    sqlite3_stmt *st = db_stmt(db, "UPDATE nodes SET tags = ?1, updated_at = ?2 WHERE id = ?3");
    if (!st)
        return HW_DB_ERROR;
    db_bind_text_or_null(st, 1, tags_json);
    sqlite3_bind_int64(st, 2, hw_now());
    sqlite3_bind_int64(st, 3, id);
    return by_id_done(db, st, id, "set node tags");
}

/* last_seen is liveness, not configuration: updated_at stays, so "what changed since"
 * queries are not flooded by every map poll. */
int hw_db_node_touch(struct hw_db *db, int64_t id, int64_t last_seen)
{
    sqlite3_stmt *st = db_stmt(db, "UPDATE nodes SET last_seen = ?1 WHERE id = ?2");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int64(st, 1, last_seen);
    sqlite3_bind_int64(st, 2, id);
    return by_id_done(db, st, id, "record node last seen");
}

/* ---- lookups for the allocator and the namer ---- */

bool hw_db_ip_taken(struct hw_db *db, const char *ip)
{
    unsigned char bin[16];
    int family = parse_address(ip, bin);
    if (!family) {
        db_fail(db, HW_DB_INVALID, "\"%s\" is not an IP address", ip ? ip : "");
        return false;
    }
    sqlite3_stmt *st = db_stmt(db, family == 4 ? "SELECT 1 FROM nodes WHERE ipv4_bin = ?1"
                                               : "SELECT 1 FROM nodes WHERE ipv6_bin = ?1");
    if (!st)
        return true;   /* unsure: never hand out an address we could not check */
    sqlite3_bind_blob(st, 1, bin, (int)family_len(family), SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    db_done(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        db_fail_sqlite(db, rc, "check address");
        return true;
    }
    return rc == SQLITE_ROW;
}

bool hw_db_given_name_taken(struct hw_db *db, const char *given_name, int64_t except_node_id)
{
    sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM nodes WHERE given_name = ?1 AND id != ?2");
    if (!st)
        return true;
    sqlite3_bind_text(st, 1, given_name ? given_name : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, except_node_id);
    int rc = sqlite3_step(st);
    db_done(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        db_fail_sqlite(db, rc, "check node name");
        return true;
    }
    return rc == SQLITE_ROW;
}

void hw_db_string_list_free(char **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        free(list[i]);
    free(list);
}

static void read_name(sqlite3_stmt *st, void *row)
{
    const char *name = (const char *)sqlite3_column_text(st, 0);
    *(char **)row = hw_strdup(name ? name : "");
}

static void free_name(void *row) { free(*(char **)row); }

static const struct db_row_kind name_rows = {sizeof(char *), read_name, free_name,
                                             "listing node names", "list node names"};

int hw_db_given_names_with_prefix(struct hw_db *db, const char *prefix, int64_t except_node_id,
                                  char ***out, size_t *n_out)
{
    /* A range on the UNIQUE index instead of LIKE, which is case-blind and would scan. */
    static const char sql[] =
        "SELECT given_name FROM nodes WHERE given_name >= ?1 AND (?2 IS NULL OR given_name < ?2)"
        " AND id != ?3 ORDER BY given_name";
    *out = NULL;
    *n_out = 0;
    size_t len = prefix ? strlen(prefix) : 0;
    if (len == 0 || len >= HW_NAME_MAX)
        return db_fail(db, HW_DB_INVALID, "name prefix must be 1 to %d characters", HW_NAME_MAX - 1);
    char upper[HW_NAME_MAX];
    memcpy(upper, prefix, len + 1);
    bool bounded = (unsigned char)upper[len - 1] < 0xff;
    if (bounded)
        upper[len - 1]++;
    sqlite3_stmt *st = db_stmt(db, sql);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_text(st, 1, prefix, -1, SQLITE_TRANSIENT);
    if (bounded)
        sqlite3_bind_text(st, 2, upper, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, except_node_id);
    void *rows;
    int rc = db_read_rows(db, st, &name_rows, &rows, n_out);
    *out = rows;
    return rc;
}

/* Two addresses of one family, parsed; INVALID unless both parse and agree. */
static int parse_pair(struct hw_db *db, const char *a, const char *b, unsigned char abin[16],
                      unsigned char bbin[16], int *family)
{
    int fa = parse_address(a, abin), fb = parse_address(b, bbin);
    if (!fa || fa != fb)
        return db_fail(db, HW_DB_INVALID, "\"%s\" and \"%s\" are not two addresses of one family",
                       a ? a : "", b ? b : "");
    *family = fa;
    return HW_DB_OK;
}

static void increment(unsigned char *bin, size_t len)
{
    for (size_t i = len; i-- > 0;) {
        if (++bin[i] != 0)
            break;
    }
}

int hw_db_ip_first_free(struct hw_db *db, const char *from, const char *to, char out[HW_IP_TEXT_MAX])
{
    /* Walks the held addresses upward from `from` on the index: stops at the first
     * hole, so the cost is the run of consecutive held addresses, not the tailnet. */
    static const char sql4[] =
        "SELECT ipv4_bin FROM nodes WHERE ipv4_bin >= ?1 AND ipv4_bin <= ?2 ORDER BY ipv4_bin";
    static const char sql6[] =
        "SELECT ipv6_bin FROM nodes WHERE ipv6_bin >= ?1 AND ipv6_bin <= ?2 ORDER BY ipv6_bin";
    unsigned char expect[16], last[16];
    int family = 0;
    int rc = parse_pair(db, from, to, expect, last, &family);
    if (rc != HW_DB_OK)
        return rc;
    size_t len = family_len(family);
    if (memcmp(expect, last, len) > 0)
        return db_fail(db, HW_DB_INVALID, "empty range %s - %s", from, to);

    sqlite3_stmt *st = db_stmt(db, family == 4 ? sql4 : sql6);
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_blob(st, 1, expect, (int)len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, last, (int)len, SQLITE_TRANSIENT);
    bool found = false;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *held = sqlite3_column_blob(st, 0);
        if (!held || (size_t)sqlite3_column_bytes(st, 0) != len || memcmp(held, expect, len) != 0) {
            found = true;   /* rows are ascending and >= expect: expect is a hole */
            break;
        }
        if (memcmp(expect, last, len) == 0)
            break;          /* the whole range is held */
        increment(expect, len);
    }
    if (step == SQLITE_DONE)
        found = true;       /* past the last held address, still within the range */
    else if (step != SQLITE_ROW) {
        db_done(st);
        return db_fail_sqlite(db, step, "scan addresses");
    }
    db_done(st);
    if (!found)
        return db_fail(db, HW_DB_NOT_FOUND, "every address from %s to %s is held", from, to);
    format_address(family, expect, out);
    return HW_DB_OK;
}

int hw_db_ip_cursor_get(struct hw_db *db, int family, char base_out[HW_IP_TEXT_MAX],
                        char next_out[HW_IP_TEXT_MAX])
{
    if (family != 4 && family != 6)
        return db_fail(db, HW_DB_INVALID, "address family must be 4 or 6");
    sqlite3_stmt *st = db_stmt(db, "SELECT base, next FROM ip_alloc_cursor WHERE family = ?1");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int(st, 1, family);
    int rc = sqlite3_step(st);
    int out_rc = HW_DB_OK;
    size_t len = family_len(family);
    if (rc == SQLITE_ROW && (size_t)sqlite3_column_bytes(st, 0) == len &&
        (size_t)sqlite3_column_bytes(st, 1) == len) {
        format_address(family, sqlite3_column_blob(st, 0), base_out);
        format_address(family, sqlite3_column_blob(st, 1), next_out);
    } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        out_rc = db_fail(db, HW_DB_NOT_FOUND, "no IPv%d allocation cursor", family);
    } else {
        out_rc = db_fail_sqlite(db, rc, "read allocation cursor");
    }
    db_done(st);
    return out_rc;
}

int hw_db_ip_cursor_set(struct hw_db *db, const char *base, const char *next)
{
    unsigned char bbin[16], nbin[16];
    int family = 0;
    int rc = parse_pair(db, base, next, bbin, nbin, &family);
    if (rc != HW_DB_OK)
        return rc;
    sqlite3_stmt *st = db_stmt(db, "INSERT OR REPLACE INTO ip_alloc_cursor (family, base, next)"
                                   " VALUES (?1, ?2, ?3)");
    if (!st)
        return HW_DB_ERROR;
    sqlite3_bind_int(st, 1, family);
    sqlite3_bind_blob(st, 2, bbin, (int)family_len(family), SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, nbin, (int)family_len(family), SQLITE_TRANSIENT);
    return db_step_done(db, st, "store allocation cursor");
}
