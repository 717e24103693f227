/* The store against real SQLite files in a temporary directory. */
#include "tests/unit/tmpdir.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include "common/util.h"
#include "db/db.h"
#include "db/db_internal.h"
#include "tests/unit/testlib.h"

static struct tmpdir dir;
static char db_path[512];

/* A fresh directory and database for one test. */
static struct hw_db *fresh_db(void)
{
    tmpdir_remove(&dir);
    if (tmpdir_make(&dir, "db") < 0)
        return NULL;
    tmpdir_file(&dir, "headwater.sqlite", db_path, sizeof db_path);
    char err[512];
    struct hw_db *db = hw_db_open(db_path, err, sizeof err);
    if (!db)
        printf("# open failed: %s\n", err);
    return db;
}

static void fill_node(struct hw_node *n, int i, int64_t namespace_id)
{
    memset(n, 0, sizeof *n);
    snprintf(n->machine_key, sizeof n->machine_key, "mkey:%064d", i);
    snprintf(n->node_key, sizeof n->node_key, "nodekey:%064d", i);
    snprintf(n->disco_key, sizeof n->disco_key, "discokey:%064d", i);
    snprintf(n->ipv4, sizeof n->ipv4, "100.64.%d.%d", i / 256, i % 256);
    snprintf(n->ipv6, sizeof n->ipv6, "fd7a:115c:a1e0::%x", i);
    snprintf(n->hostname, sizeof n->hostname, "Host-%d", i);
    snprintf(n->given_name, sizeof n->given_name, "host-%d", i);
    snprintf(n->register_method, sizeof n->register_method, "cli");
    n->namespace_id = namespace_id;
}

/* Runs one query on a separate raw connection and returns the first column as an int. */
static long long raw_int(const char *sql)
{
    sqlite3 *conn = NULL;
    long long v = -1;
    if (sqlite3_open(db_path, &conn) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(conn, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(conn);
    return v;
}

static int raw_exec(const char *sql)
{
    sqlite3 *conn = NULL;
    int rc = sqlite3_open(db_path, &conn);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(conn, sql, NULL, NULL, NULL);
    sqlite3_close(conn);
    return rc;
}

static char *slurp(const char *path, size_t *len)
{
    return hw_read_file(path, len);
}

/* ---- open and migrations ---- */

static void open_creates_schema(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    CHECK_INT(hw_db_schema_version(db), hw_db_latest_version());
    CHECK(hw_db_latest_version() >= 1, "at least one migration");
    hw_db_close(db);
    CHECK_INT(raw_int("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN"
                      " ('namespaces', 'nodes', 'routes', 'preauth_keys', 'api_keys',"
                      " 'pending_registrations', 'secrets', 'schema_version')"), 8);
    CHECK_INT(raw_int("SELECT length(value) FROM secrets WHERE name = 'key_hash_pepper'"), 32);
    CHECK_INT(raw_int("SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"), 1);
    struct stat st;
    CHECK(stat(db_path, &st) == 0, "stat");
    CHECK_INT(st.st_mode & 0777, 0600);
}

static void reopen_is_idempotent(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "default", &ns), HW_DB_OK);
    char key[HW_SECRET_TEXT_MAX];
    struct hw_preauth_key pk;
    CHECK_INT(hw_db_preauth_create(db, ns.id, true, false, 0, NULL, key, &pk), HW_DB_OK);
    hw_preauth_key_clear(&pk);
    hw_db_close(db);
    long long migrations = raw_int("SELECT count(*) FROM schema_version");

    char err[512];
    db = hw_db_open(db_path, err, sizeof err);
    CHECK(db, "reopen: %s", err);
    CHECK_INT(hw_db_schema_version(db), hw_db_latest_version());
    CHECK_INT(hw_db_namespace_get_by_name(db, "default", &ns), HW_DB_OK);
    /* Same pepper: a key made before the restart still verifies. */
    CHECK_INT(hw_db_preauth_lookup(db, key, &pk), HW_DB_OK);
    hw_preauth_key_clear(&pk);
    hw_db_close(db);
    CHECK_INT(raw_int("SELECT count(*) FROM schema_version"), migrations);
    CHECK_INT(raw_int("SELECT count(*) FROM secrets"), 1);
}

static void failing_migration_leaves_file_untouched(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    CHECK_INT(hw_db_namespace_create(db, "kept", NULL), HW_DB_OK);
    hw_db_close(db);
    size_t before_len, after_len;
    char *before = slurp(db_path, &before_len);
    CHECK(before, "read db file");

    /* A good step followed by a broken one: neither may stick, they share a transaction. */
    size_t n = hw_schema_n_migrations;
    struct hw_migration list[16];
    CHECK(n + 2 <= HW_ARRAY_LEN(list), "room");
    memcpy(list, hw_schema_migrations, n * sizeof *list);
    list[n] = (struct hw_migration){(int)n + 1, "add widgets", "CREATE TABLE widgets (id INTEGER)"};
    list[n + 1] = (struct hw_migration){(int)n + 2, "fill gadgets",
                                        "INSERT INTO gadgets (id) VALUES (1)"};
    char err[512], want[128];
    db = hw_db_open_with(db_path, list, n + 2, err, sizeof err);
    CHECK(db == NULL, "open must fail");
    snprintf(want, sizeof want, "migration %zu (fill gadgets) failed: ", n + 2);
    CHECK(strstr(err, want) != NULL, "err names the step: %s", err);
    CHECK(strstr(err, "no such table: gadgets") != NULL, "err has SQLite's reason: %s", err);
    snprintf(want, sizeof want, "database left at version %zu", n);
    CHECK(strstr(err, want) != NULL, "err says the version: %s", err);

    char *after = slurp(db_path, &after_len);
    CHECK(after, "read db file again");
    CHECK(before_len == after_len && memcmp(before, after, before_len) == 0, "file changed");
    free(before);
    free(after);
    CHECK_INT(raw_int("SELECT count(*) FROM sqlite_master WHERE name = 'widgets'"), 0);
    CHECK_INT(raw_int("SELECT max(version) FROM schema_version"), (long long)n);

    db = hw_db_open(db_path, err, sizeof err);
    CHECK(db, "the real list still opens it: %s", err);
    CHECK_INT(hw_db_namespace_get_by_name(db, "kept", NULL), HW_DB_OK);
    hw_db_close(db);

    /* And a working extra step applies once, then never again. */
    list[n + 1] = (struct hw_migration){(int)n + 2, "fill widgets", "INSERT INTO widgets (id) VALUES (1)"};
    db = hw_db_open_with(db_path, list, n + 2, err, sizeof err);
    CHECK(db, "good steps: %s", err);
    CHECK_INT(hw_db_schema_version(db), (long long)n + 2);
    hw_db_close(db);
    db = hw_db_open_with(db_path, list, n + 2, err, sizeof err);
    CHECK(db, "reopen: %s", err);
    hw_db_close(db);
    CHECK_INT(raw_int("SELECT count(*) FROM widgets"), 1);
}

static void newer_schema_refused(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    hw_db_close(db);
    CHECK_INT(raw_exec("INSERT INTO schema_version (version, name, applied_at) VALUES (9, 'future', 0)"),
              SQLITE_OK);
    char err[512], want[160];
    db = hw_db_open(db_path, err, sizeof err);
    CHECK(db == NULL, "must refuse");
    snprintf(want, sizeof want,
             "database schema version 9 is newer than this headwater (knows %d): upgrade headwater",
             hw_db_latest_version());
    CHECK_STR(err, want);
}

static void not_a_database_refused(void)
{
    tmpdir_remove(&dir);
    CHECK(tmpdir_make(&dir, "db") == 0, "tmpdir");
    tmpdir_file(&dir, "junk.sqlite", db_path, sizeof db_path);
    const char junk[] = "this is a configuration file, not a database. it is long enough to have "
                        "a header-sized first page so SQLite reads it and gives up.";
    CHECK(hw_write_file_atomic(db_path, junk, sizeof junk, 0600) == 0, "write");
    char err[512];
    struct hw_db *db = hw_db_open(db_path, err, sizeof err);
    CHECK(db == NULL, "must refuse");
    CHECK(strstr(err, "is not a SQLite database") != NULL, "err: %s", err);
    size_t len;
    char *content = slurp(db_path, &len);
    CHECK(content && len == sizeof junk && memcmp(content, junk, len) == 0, "file changed");
    free(content);

    /* Another program's SQLite file (a Headscale database) is refused, not converted. */
    tmpdir_file(&dir, "other.sqlite", db_path, sizeof db_path);
    CHECK_INT(raw_exec("CREATE TABLE nodes (id INTEGER PRIMARY KEY, hostname TEXT)"), SQLITE_OK);
    db = hw_db_open(db_path, err, sizeof err);
    CHECK(db == NULL, "must refuse a foreign database");
    CHECK(strstr(err, "not a headwater database") != NULL, "err: %s", err);

    tmpdir_file(&dir, "missing/dir/x.sqlite", db_path, sizeof db_path);
    db = hw_db_open(db_path, err, sizeof err);
    CHECK(db == NULL, "missing directory");
    CHECK(strstr(err, "missing/dir/x.sqlite") != NULL, "err names the file: %s", err);
}

/* ---- namespaces ---- */

static void namespaces_crud(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace a, b, got;
    CHECK_INT(hw_db_namespace_create(db, "default", &a), HW_DB_OK);
    CHECK(a.id > 0 && a.created_at > 0, "ids");
    CHECK_STR(a.name, "default");
    CHECK_INT(hw_db_namespace_create(db, "default", NULL), HW_DB_EXISTS);
    CHECK_STR(hw_db_errmsg(db), "namespace \"default\" already exists");
    CHECK_INT(hw_db_namespace_create(db, "", NULL), HW_DB_INVALID);
    CHECK_INT(hw_db_namespace_create(db, "ops", &b), HW_DB_OK);

    CHECK_INT(hw_db_namespace_get(db, a.id, &got), HW_DB_OK);
    CHECK_STR(got.name, "default");
    CHECK_INT(got.node_count, 0);
    CHECK_INT(hw_db_namespace_get_by_name(db, "ops", &got), HW_DB_OK);
    CHECK_INT(got.id, b.id);
    CHECK_INT(hw_db_namespace_get(db, 999, &got), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "namespace 999 not found");
    CHECK_INT(hw_db_namespace_get_by_name(db, "nope", &got), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "namespace \"nope\" not found");

    CHECK_INT(hw_db_namespace_rename(db, b.id, "default"), HW_DB_EXISTS);
    CHECK_INT(hw_db_namespace_rename(db, 999, "x"), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_namespace_rename(db, b.id, "operations"), HW_DB_OK);

    struct hw_node n;
    fill_node(&n, 1, b.id);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);

    struct hw_namespace *list;
    size_t count;
    CHECK_INT(hw_db_namespace_list(db, &list, &count), HW_DB_OK);
    CHECK_INT(count, 2);
    CHECK_STR(list[0].name, "default");
    CHECK_STR(list[1].name, "operations");
    CHECK_INT(list[0].node_count, 0);
    CHECK_INT(list[1].node_count, 1);
    free(list);
    hw_db_close(db);
}

static void namespace_destroy_rules(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns, other;
    CHECK_INT(hw_db_namespace_create(db, "doomed", &ns), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "other", &other), HW_DB_OK);
    char key[HW_SECRET_TEXT_MAX];
    struct hw_preauth_key pk;
    CHECK_INT(hw_db_preauth_create(db, ns.id, false, false, 0, NULL, key, &pk), HW_DB_OK);
    struct hw_node n1, n2, n3;
    fill_node(&n1, 1, ns.id);
    n1.auth_key_id = pk.id;
    fill_node(&n2, 2, ns.id);
    fill_node(&n3, 3, other.id);
    n3.auth_key_id = pk.id;   /* moved away later, keeps pointing at the key */
    CHECK_INT(hw_db_node_insert(db, &n1), HW_DB_OK);
    CHECK_INT(hw_db_node_insert(db, &n2), HW_DB_OK);
    CHECK_INT(hw_db_node_insert(db, &n3), HW_DB_OK);
    const char *routes[] = {"10.0.0.0/24"};
    CHECK_INT(hw_db_route_set_advertised(db, n1.id, routes, 1), HW_DB_OK);

    CHECK_INT(hw_db_namespace_destroy(db, ns.id, false), HW_DB_CONFLICT);
    CHECK_STR(hw_db_errmsg(db), "namespace \"doomed\" still has 2 nodes");
    CHECK_INT(hw_db_node_get(db, n1.id, &n1), HW_DB_OK);
    hw_node_clear(&n1);

    CHECK_INT(hw_db_namespace_destroy(db, ns.id, true), HW_DB_OK);
    CHECK_INT(hw_db_namespace_get(db, ns.id, NULL), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_get(db, n1.id, &n1), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_get(db, n2.id, &n2), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_preauth_lookup(db, key, &pk), HW_DB_NOT_FOUND);
    struct hw_route *rl;
    size_t nr;
    CHECK_INT(hw_db_route_list(db, 0, &rl, &nr), HW_DB_OK);
    CHECK_INT(nr, 0);
    free(rl);
    CHECK_INT(hw_db_node_get(db, n3.id, &n3), HW_DB_OK);
    CHECK_INT(n3.auth_key_id, 0);
    hw_node_clear(&n3);

    CHECK_INT(hw_db_namespace_destroy(db, other.id, false), HW_DB_CONFLICT);
    CHECK_INT(hw_db_namespace_destroy(db, 12345, true), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_delete(db, n3.id), HW_DB_OK);
    CHECK_INT(hw_db_namespace_destroy(db, other.id, false), HW_DB_OK);
    hw_db_close(db);
}

/* ---- nodes ---- */

static void nodes_insert_get_list_update_delete(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace a, b;
    CHECK_INT(hw_db_namespace_create(db, "a", &a), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "b", &b), HW_DB_OK);

    struct hw_node n, got;
    fill_node(&n, 1, a.id);
    snprintf(n.ipv6, sizeof n.ipv6, "FD7A:115C:A1E0:0:0:0:0:1");
    n.hostinfo_json = hw_strdup("{\"OS\":\"linux\"}");
    n.endpoints_json = hw_strdup("[\"1.2.3.4:41641\"]");
    n.tags_json = hw_strdup("[\"tag:web\"]");
    n.expiry = 2000000000;
    n.ephemeral = true;
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    CHECK(n.id > 0 && n.created_at > 0 && n.updated_at == n.created_at, "insert sets id and times");
    CHECK_STR(n.ipv6, "fd7a:115c:a1e0::1");

    CHECK_INT(hw_db_node_get(db, n.id, &got), HW_DB_OK);
    CHECK_STR(got.machine_key, n.machine_key);
    CHECK_STR(got.node_key, n.node_key);
    CHECK_STR(got.disco_key, n.disco_key);
    CHECK_STR(got.ipv4, "100.64.0.1");
    CHECK_STR(got.ipv6, "fd7a:115c:a1e0::1");
    CHECK_STR(got.hostname, "Host-1");
    CHECK_STR(got.given_name, "host-1");
    CHECK_STR(got.namespace_name, "a");
    CHECK_STR(got.hostinfo_json, "{\"OS\":\"linux\"}");
    CHECK_STR(got.endpoints_json, "[\"1.2.3.4:41641\"]");
    CHECK_STR(got.tags_json, "[\"tag:web\"]");
    CHECK_INT(got.expiry, 2000000000);
    CHECK(got.ephemeral, "ephemeral");
    CHECK_INT(got.auth_key_id, 0);
    CHECK_STR(got.register_method, "cli");
    hw_node_clear(&got);

    CHECK_INT(hw_db_node_get_by_machine_key(db, n.machine_key, &got), HW_DB_OK);
    CHECK_INT(got.id, n.id);
    hw_node_clear(&got);
    CHECK_INT(hw_db_node_get_by_node_key(db, n.node_key, &got), HW_DB_OK);
    CHECK_INT(got.id, n.id);
    hw_node_clear(&got);
    CHECK_INT(hw_db_node_get_by_node_key(db, "nodekey:00", &got), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_get(db, 777, &got), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "node 777 not found");

    /* update writes every mutable column; "" clears */
    snprintf(n.node_key, sizeof n.node_key, "nodekey:new");
    n.ipv6[0] = '\0';
    free(n.endpoints_json);
    n.endpoints_json = NULL;
    n.namespace_id = b.id;
    n.last_seen = 1234;
    n.ephemeral = false;
    CHECK_INT(hw_db_node_update(db, &n), HW_DB_OK);
    CHECK_INT(hw_db_node_get(db, n.id, &got), HW_DB_OK);
    CHECK_STR(got.node_key, "nodekey:new");
    CHECK_STR(got.ipv6, "");
    CHECK(got.endpoints_json == NULL, "endpoints cleared");
    CHECK_STR(got.namespace_name, "b");
    CHECK_INT(got.last_seen, 1234);
    CHECK(!got.ephemeral, "not ephemeral");
    hw_node_clear(&got);

    struct hw_node other;
    fill_node(&other, 2, a.id);
    other.ipv6[0] = '\0';   /* two nodes without IPv6: NULLs do not collide */
    CHECK_INT(hw_db_node_insert(db, &other), HW_DB_OK);

    struct hw_node *list;
    size_t count;
    CHECK_INT(hw_db_node_list(db, 0, &list, &count), HW_DB_OK);
    CHECK_INT(count, 2);
    CHECK_INT(list[0].id, n.id);
    CHECK_INT(list[1].id, other.id);
    hw_node_list_free(list, count);
    CHECK_INT(hw_db_node_list(db, a.id, &list, &count), HW_DB_OK);
    CHECK_INT(count, 1);
    CHECK_INT(list[0].id, other.id);
    hw_node_list_free(list, count);

    CHECK_INT(hw_db_node_delete(db, n.id), HW_DB_OK);
    CHECK_INT(hw_db_node_delete(db, n.id), HW_DB_NOT_FOUND);
    n.id = 4242;
    CHECK_INT(hw_db_node_update(db, &n), HW_DB_NOT_FOUND);
    hw_node_clear(&n);
    hw_db_close(db);
}

static void node_unique_conflicts(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    struct hw_node first, n;
    fill_node(&first, 1, ns.id);
    CHECK_INT(hw_db_node_insert(db, &first), HW_DB_OK);

    fill_node(&n, 2, ns.id);
    snprintf(n.machine_key, sizeof n.machine_key, "%s", first.machine_key);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_EXISTS);
    CHECK(strstr(hw_db_errmsg(db), "machine key") != NULL, "%s", hw_db_errmsg(db));

    fill_node(&n, 2, ns.id);
    snprintf(n.node_key, sizeof n.node_key, "%s", first.node_key);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_EXISTS);
    CHECK(strstr(hw_db_errmsg(db), "node key") != NULL, "%s", hw_db_errmsg(db));

    fill_node(&n, 2, ns.id);
    snprintf(n.ipv4, sizeof n.ipv4, "%s", first.ipv4);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_EXISTS);
    CHECK_STR(hw_db_errmsg(db), "address 100.64.0.1 is already held by another node");

    fill_node(&n, 2, ns.id);
    snprintf(n.ipv6, sizeof n.ipv6, "fd7a:115c:a1e0:0::1");   /* same address, other spelling */
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_EXISTS);

    fill_node(&n, 2, ns.id);
    snprintf(n.given_name, sizeof n.given_name, "%s", first.given_name);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_EXISTS);
    CHECK_STR(hw_db_errmsg(db), "name \"host-1\" is already taken by another node");

    fill_node(&n, 2, ns.id);
    snprintf(n.ipv4, sizeof n.ipv4, "fd00::1");
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_INVALID);
    snprintf(n.ipv4, sizeof n.ipv4, "100.64.0.300");
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_INVALID);
    CHECK_STR(hw_db_errmsg(db), "\"100.64.0.300\" is not an IPv4 address");

    fill_node(&n, 2, 999);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "namespace 999 not found");

    fill_node(&n, 2, ns.id);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    /* an update that collides */
    snprintf(n.given_name, sizeof n.given_name, "host-1");
    CHECK_INT(hw_db_node_update(db, &n), HW_DB_EXISTS);

    CHECK(hw_db_ip_taken(db, "100.64.0.1"), "held v4");
    CHECK(hw_db_ip_taken(db, "fd7a:115c:a1e0:0:0:0:0:1"), "held v6 in another spelling");
    CHECK(!hw_db_ip_taken(db, "100.64.0.9"), "free v4");
    CHECK(hw_db_given_name_taken(db, "host-1", 0), "taken");
    CHECK(!hw_db_given_name_taken(db, "host-1", first.id), "taken only by itself");
    hw_db_close(db);
}

static void node_single_column_setters(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace a, b;
    CHECK_INT(hw_db_namespace_create(db, "a", &a), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "b", &b), HW_DB_OK);
    struct hw_node n1, n2, got;
    fill_node(&n1, 1, a.id);
    fill_node(&n2, 2, a.id);
    CHECK_INT(hw_db_node_insert(db, &n1), HW_DB_OK);
    CHECK_INT(hw_db_node_insert(db, &n2), HW_DB_OK);

    CHECK_INT(hw_db_node_set_expiry(db, n1.id, 1700000000), HW_DB_OK);
    CHECK_INT(hw_db_node_set_given_name(db, n1.id, "web"), HW_DB_OK);
    CHECK_INT(hw_db_node_set_given_name(db, n2.id, "web"), HW_DB_EXISTS);
    CHECK_INT(hw_db_node_set_given_name(db, n2.id, ""), HW_DB_INVALID);
    CHECK_INT(hw_db_node_set_namespace(db, n1.id, b.id), HW_DB_OK);
    CHECK_INT(hw_db_node_set_namespace(db, n1.id, 999), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "namespace 999 not found");
    CHECK_INT(hw_db_node_set_tags(db, n1.id, "[\"tag:a\"]"), HW_DB_OK);
    CHECK_INT(hw_db_node_touch(db, n1.id, 1600000000), HW_DB_OK);

    CHECK_INT(hw_db_node_get(db, n1.id, &got), HW_DB_OK);
    CHECK_INT(got.expiry, 1700000000);
    CHECK_STR(got.given_name, "web");
    CHECK_STR(got.namespace_name, "b");
    CHECK_STR(got.tags_json, "[\"tag:a\"]");
    CHECK_INT(got.last_seen, 1600000000);
    hw_node_clear(&got);

    CHECK_INT(hw_db_node_set_tags(db, n1.id, ""), HW_DB_OK);
    CHECK_INT(hw_db_node_get(db, n1.id, &got), HW_DB_OK);
    CHECK(got.tags_json == NULL, "tags cleared");
    hw_node_clear(&got);

    CHECK_INT(hw_db_node_set_expiry(db, 99, 0), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_set_given_name(db, 99, "x"), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_set_namespace(db, 99, a.id), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_set_tags(db, 99, NULL), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_node_touch(db, 99, 1), HW_DB_NOT_FOUND);
    hw_db_close(db);
}

/* ---- routes ---- */

static int find_route(struct hw_route *list, size_t n, int64_t node_id, const char *prefix)
{
    for (size_t i = 0; i < n; i++) {
        if (list[i].node_id == node_id && strcmp(list[i].prefix, prefix) == 0)
            return (int)i;
    }
    return -1;
}

static void routes_advertise_enable_disable(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    struct hw_node router, other;
    fill_node(&router, 1, ns.id);
    fill_node(&other, 2, ns.id);
    CHECK_INT(hw_db_node_insert(db, &router), HW_DB_OK);
    CHECK_INT(hw_db_node_insert(db, &other), HW_DB_OK);

    const char *two[] = {"192.168.1.0/24", "10.0.0.0/8", "10.0.0.0/8"};
    CHECK_INT(hw_db_route_set_advertised(db, router.id, two, 3), HW_DB_OK);
    const char *one[] = {"172.16.0.0/12"};
    CHECK_INT(hw_db_route_set_advertised(db, other.id, one, 1), HW_DB_OK);
    CHECK_INT(hw_db_route_set_advertised(db, 999, one, 1), HW_DB_NOT_FOUND);

    struct hw_route *list;
    size_t n;
    CHECK_INT(hw_db_route_list(db, 0, &list, &n), HW_DB_OK);
    CHECK_INT(n, 3);
    CHECK_STR(list[0].prefix, "10.0.0.0/8");   /* by node, then prefix */
    CHECK_STR(list[1].prefix, "192.168.1.0/24");
    CHECK_STR(list[2].prefix, "172.16.0.0/12");
    CHECK_STR(list[0].node_name, "host-1");
    CHECK(list[0].advertised && !list[0].enabled && !list[0].is_primary, "new route not enabled");
    free(list);

    CHECK_INT(hw_db_route_set_enabled(db, router.id, "192.168.1.0/24", true), HW_DB_OK);
    CHECK_INT(hw_db_route_set_enabled(db, router.id, "192.168.1.0/24", true), HW_DB_OK);
    CHECK_INT(hw_db_route_set_enabled(db, router.id, "172.16.0.0/12", true), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "node 1 does not advertise 172.16.0.0/12");
    CHECK_INT(hw_db_route_set_enabled(db, router.id, "172.16.0.0/12", false), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_route_set_enabled(db, 999, "10.0.0.0/8", true), HW_DB_NOT_FOUND);
    CHECK_STR(hw_db_errmsg(db), "node 999 not found");

    /* The router stops advertising 192.168.1.0/24 and 10.0.0.0/8: the enabled one is
     * remembered (approval kept), the other forgotten. */
    CHECK_INT(hw_db_route_set_advertised(db, router.id, NULL, 0), HW_DB_OK);
    CHECK_INT(hw_db_route_list(db, router.id, &list, &n), HW_DB_OK);
    CHECK_INT(n, 1);
    CHECK_STR(list[0].prefix, "192.168.1.0/24");
    CHECK(!list[0].advertised && list[0].enabled, "withdrawn but approved");
    free(list);
    CHECK_INT(hw_db_route_set_enabled(db, router.id, "192.168.1.0/24", true), HW_DB_NOT_FOUND);

    const char *back[] = {"192.168.1.0/24"};
    CHECK_INT(hw_db_route_set_advertised(db, router.id, back, 1), HW_DB_OK);
    CHECK_INT(hw_db_route_list(db, router.id, &list, &n), HW_DB_OK);
    CHECK_INT(n, 1);
    CHECK(list[0].advertised && list[0].enabled, "approval came back");
    int64_t route_id = list[0].id;
    free(list);

    CHECK_INT(hw_db_route_set_primary(db, route_id, true), HW_DB_OK);
    CHECK_INT(hw_db_route_set_primary(db, 999, true), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_route_list(db, router.id, &list, &n), HW_DB_OK);
    CHECK(list[0].is_primary, "primary");
    free(list);

    CHECK_INT(hw_db_route_set_enabled(db, router.id, "192.168.1.0/24", false), HW_DB_OK);
    CHECK_INT(hw_db_route_list(db, router.id, &list, &n), HW_DB_OK);
    CHECK_INT(n, 1);
    CHECK(list[0].advertised && !list[0].enabled && !list[0].is_primary, "disabled, not primary");
    free(list);

    /* Deleting the node takes its routes along. */
    CHECK_INT(hw_db_node_delete(db, other.id), HW_DB_OK);
    CHECK_INT(hw_db_route_list(db, 0, &list, &n), HW_DB_OK);
    CHECK_INT(n, 1);
    CHECK(find_route(list, n, other.id, "172.16.0.0/12") < 0, "cascade");
    free(list);
    hw_db_close(db);
}

/* ---- secrets ---- */

static bool all_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static void preauth_keys(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns, other;
    CHECK_INT(hw_db_namespace_create(db, "default", &ns), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "other", &other), HW_DB_OK);

    char key[HW_SECRET_TEXT_MAX], key2[HW_SECRET_TEXT_MAX];
    struct hw_preauth_key k, got;
    CHECK_INT(hw_db_preauth_create(db, ns.id, true, true, 2000000000, "[\"tag:ci\"]", key, &k), HW_DB_OK);
    /* hwkey-auth-<12 hex>-<32 hex> */
    CHECK_INT(strlen(key), 11 + 12 + 1 + 32);
    CHECK(strncmp(key, "hwkey-auth-", 11) == 0 && key[23] == '-', "format: %s", key);
    CHECK(all_lower_hex(key + 11, 12) && all_lower_hex(key + 24, 32), "hex: %s", key);
    CHECK(strncmp(k.prefix, key + 11, 12) == 0 && strlen(k.prefix) == 12, "prefix %s", k.prefix);
    CHECK(k.reusable && k.ephemeral && !k.used, "flags");
    CHECK_INT(k.expiration, 2000000000);
    CHECK_STR(k.namespace_name, "default");
    CHECK_STR(k.tags_json, "[\"tag:ci\"]");

    CHECK_INT(hw_db_preauth_lookup(db, key, &got), HW_DB_OK);
    CHECK_INT(got.id, k.id);
    hw_preauth_key_clear(&got);

    /* A wrong secret, an unknown prefix and garbage all get the same answer. */
    char wrong[HW_SECRET_TEXT_MAX];
    snprintf(wrong, sizeof wrong, "%s", key);
    wrong[30] = wrong[30] == 'a' ? 'b' : 'a';
    CHECK_INT(hw_db_preauth_lookup(db, wrong, &got), HW_DB_NOT_FOUND);
    snprintf(wrong, sizeof wrong, "%s", key);
    wrong[12] = wrong[12] == 'a' ? 'b' : 'a';
    CHECK_INT(hw_db_preauth_lookup(db, wrong, &got), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_preauth_lookup(db, "hwkey-auth-", &got), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_preauth_lookup(db, "", &got), HW_DB_NOT_FOUND);
    char upper[HW_SECRET_TEXT_MAX];
    snprintf(upper, sizeof upper, "%s", key);
    for (char *p = upper + 11; *p; p++)
        *p = (char)(*p >= 'a' && *p <= 'f' ? *p - 32 : *p);
    CHECK_INT(hw_db_preauth_lookup(db, upper, &got), HW_DB_NOT_FOUND);

    /* Nothing stored contains the secret, in text or as its bytes. */
    hw_db_close(db);
    const char *secret = key + 24;
    char sql[640];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM preauth_keys WHERE instr(hex(hash), upper('%s')) > 0"
             " OR instr(hash, '%s') > 0 OR instr(prefix, '%s') > 0 OR instr(coalesce(tags, ''), '%s') > 0",
             secret, secret, secret, secret);
    CHECK_INT(raw_int(sql), 0);
    CHECK_INT(raw_int("SELECT length(hash) FROM preauth_keys"), 32);
    size_t file_len;
    char *file = slurp(db_path, &file_len);
    CHECK(file, "read");
    CHECK(memmem(file, file_len, secret, 32) == NULL, "secret text in the file");
    free(file);
    char err[256];
    db = hw_db_open(db_path, err, sizeof err);
    CHECK(db, "reopen: %s", err);

    CHECK_INT(hw_db_preauth_mark_used(db, k.id), HW_DB_OK);
    CHECK_INT(hw_db_preauth_mark_used(db, 999), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_preauth_lookup(db, key, &got), HW_DB_OK);
    CHECK(got.used, "used");
    hw_preauth_key_clear(&got);

    struct hw_preauth_key k2;
    CHECK_INT(hw_db_preauth_create(db, other.id, false, false, 0, NULL, key2, &k2), HW_DB_OK);
    CHECK(k2.tags_json == NULL && k2.expiration == 0, "defaults");
    CHECK_INT(hw_db_preauth_create(db, 999, false, false, 0, NULL, key2, NULL), HW_DB_NOT_FOUND);

    struct hw_preauth_key *list;
    size_t n;
    CHECK_INT(hw_db_preauth_list(db, 0, &list, &n), HW_DB_OK);
    CHECK_INT(n, 2);
    hw_preauth_key_list_free(list, n);
    CHECK_INT(hw_db_preauth_list(db, other.id, &list, &n), HW_DB_OK);
    CHECK_INT(n, 1);
    CHECK_INT(list[0].id, k2.id);
    hw_preauth_key_list_free(list, n);

    /* expire by prefix, by full key; wrong namespace and garbage refused */
    int64_t before = hw_now();
    CHECK_INT(hw_db_preauth_expire(db, other.id, k.prefix), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_preauth_expire(db, ns.id, k.prefix), HW_DB_OK);
    CHECK_INT(hw_db_preauth_lookup(db, key, &got), HW_DB_OK);
    CHECK(got.expiration >= before && got.expiration <= hw_now(), "expired now");
    hw_preauth_key_clear(&got);
    CHECK_INT(hw_db_preauth_expire(db, 0, key2), HW_DB_OK);
    CHECK_INT(hw_db_preauth_lookup(db, key2, &got), HW_DB_OK);
    CHECK(got.expiration != 0 && got.expiration <= hw_now(), "expired by full key");
    hw_preauth_key_clear(&got);
    CHECK_INT(hw_db_preauth_expire(db, 0, "nonsense"), HW_DB_INVALID);
    CHECK_INT(hw_db_preauth_expire(db, 0, "000000000000"), HW_DB_NOT_FOUND);

    hw_preauth_key_clear(&k);
    hw_preauth_key_clear(&k2);
    hw_db_close(db);
}

static void api_keys(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    char key[HW_SECRET_TEXT_MAX];
    struct hw_api_key k, got;
    CHECK_INT(hw_db_apikey_create(db, 0, key, &k), HW_DB_OK);
    CHECK(strncmp(key, "hwkey-api-", 10) == 0 && strlen(key) == 10 + 12 + 1 + 32, "format: %s", key);
    CHECK(strncmp(k.prefix, key + 10, 12) == 0, "prefix");
    CHECK_INT(k.last_seen, 0);

    CHECK_INT(hw_db_apikey_verify(db, key, &got), HW_DB_OK);
    CHECK_INT(got.id, k.id);
    CHECK(got.last_seen > 0, "last_seen recorded");
    char wrong[HW_SECRET_TEXT_MAX];
    snprintf(wrong, sizeof wrong, "%s", key);
    wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == '0' ? '1' : '0';
    CHECK_INT(hw_db_apikey_verify(db, wrong, &got), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_apikey_verify(db, "hwkey-auth-000000000000-00000000000000000000000000000000", &got),
              HW_DB_NOT_FOUND);

    char key2[HW_SECRET_TEXT_MAX];
    CHECK_INT(hw_db_apikey_create(db, 2000000000, key2, NULL), HW_DB_OK);
    struct hw_api_key *list;
    size_t n;
    CHECK_INT(hw_db_apikey_list(db, &list, &n), HW_DB_OK);
    CHECK_INT(n, 2);
    CHECK_INT(list[1].expiration, 2000000000);
    free(list);

    CHECK_INT(hw_db_apikey_expire(db, key), HW_DB_OK);
    CHECK_INT(hw_db_apikey_verify(db, key, &got), HW_DB_CONFLICT);
    CHECK_INT(got.id, k.id);
    CHECK_INT(hw_db_apikey_expire(db, key2 + 10 /* bare prefix+secret is not a prefix */), HW_DB_INVALID);
    char prefix2[16];
    snprintf(prefix2, sizeof prefix2, "%.12s", key2 + 10);
    CHECK_INT(hw_db_apikey_expire(db, prefix2), HW_DB_OK);
    CHECK_INT(hw_db_apikey_verify(db, key2, &got), HW_DB_CONFLICT);
    CHECK_INT(hw_db_apikey_expire(db, "ffffffffffff"), HW_DB_NOT_FOUND);
    hw_db_close(db);
}

/* ---- pending registrations ---- */

static void pending_registrations(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_pending p = {0}, got;
    snprintf(p.id, sizeof p.id, "reg-abc");
    snprintf(p.machine_key, sizeof p.machine_key, "mkey:1");
    snprintf(p.node_key, sizeof p.node_key, "nodekey:1");
    snprintf(p.hostname, sizeof p.hostname, "laptop");
    p.hostinfo_json = "{\"Hostname\":\"laptop\"}";
    p.expires_at = 1000;
    CHECK_INT(hw_db_pending_insert(db, &p), HW_DB_OK);
    CHECK_INT(hw_db_pending_insert(db, &p), HW_DB_EXISTS);
    snprintf(p.id, sizeof p.id, "reg-later");
    p.expires_at = 5000;
    CHECK_INT(hw_db_pending_insert(db, &p), HW_DB_OK);
    snprintf(p.id, sizeof p.id, "reg-never");
    p.expires_at = 0;
    p.hostinfo_json = NULL;
    CHECK_INT(hw_db_pending_insert(db, &p), HW_DB_OK);

    CHECK_INT(hw_db_pending_get(db, "reg-abc", &got), HW_DB_OK);
    CHECK_STR(got.machine_key, "mkey:1");
    CHECK_STR(got.node_key, "nodekey:1");
    CHECK_STR(got.disco_key, "");
    CHECK_STR(got.hostname, "laptop");
    CHECK_STR(got.hostinfo_json, "{\"Hostname\":\"laptop\"}");
    CHECK_INT(got.expires_at, 1000);
    CHECK(got.created_at > 0, "created_at defaulted");
    hw_pending_clear(&got);
    CHECK_INT(hw_db_pending_get(db, "nope", &got), HW_DB_NOT_FOUND);

    CHECK_INT(hw_db_pending_delete_expired(db, 2000), 1);
    CHECK_INT(hw_db_pending_get(db, "reg-abc", &got), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_pending_delete_expired(db, 2000), 0);
    CHECK_INT(hw_db_pending_delete_expired(db, 999999), 1);
    CHECK_INT(hw_db_pending_get(db, "reg-never", &got), HW_DB_OK);
    hw_pending_clear(&got);
    CHECK_INT(hw_db_pending_delete(db, "reg-never"), HW_DB_OK);
    CHECK_INT(hw_db_pending_delete(db, "reg-never"), HW_DB_NOT_FOUND);
    hw_db_close(db);
}

/* ---- transactions and concurrency ---- */

static void nested_transactions(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "outer", NULL), HW_DB_OK);
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "inner", NULL), HW_DB_OK);
    hw_db_rollback(db);
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "inner2", NULL), HW_DB_OK);
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    CHECK_INT(hw_db_namespace_get_by_name(db, "outer", NULL), HW_DB_OK);
    CHECK_INT(hw_db_namespace_get_by_name(db, "inner", NULL), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_namespace_get_by_name(db, "inner2", NULL), HW_DB_OK);
    CHECK_INT(hw_db_commit(db), HW_DB_INVALID);

    /* A function with its own transaction, inside the caller's, undone with it. */
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_get_by_name(db, "outer", &ns), HW_DB_OK);
    struct hw_node n;
    fill_node(&n, 1, ns.id);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(hw_db_namespace_destroy(db, ns.id, true), HW_DB_OK);
    CHECK_INT(hw_db_namespace_get(db, ns.id, NULL), HW_DB_NOT_FOUND);
    hw_db_rollback(db);
    CHECK_INT(hw_db_namespace_get(db, ns.id, &ns), HW_DB_OK);
    CHECK_INT(ns.node_count, 1);
    hw_db_close(db);
}

static void reader_not_blocked_by_writer(void)
{
    struct hw_db *writer = fresh_db();
    CHECK(writer, "open writer");
    char err[256];
    struct hw_db *reader = hw_db_open(db_path, err, sizeof err);
    CHECK(reader, "open reader: %s", err);
    CHECK_INT(hw_db_namespace_create(writer, "before", NULL), HW_DB_OK);

    CHECK_INT(hw_db_begin(writer), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(writer, "during", NULL), HW_DB_OK);
    /* The write transaction is open; the reader still answers, from the last commit. */
    int64_t t0 = hw_now_ms_mono();
    struct hw_namespace *list;
    size_t n;
    CHECK_INT(hw_db_namespace_list(reader, &list, &n), HW_DB_OK);
    CHECK(hw_now_ms_mono() - t0 < 1000, "reader waited for the writer");
    CHECK_INT(n, 1);
    CHECK_STR(list[0].name, "before");
    free(list);
    CHECK_INT(hw_db_namespace_get_by_name(reader, "during", NULL), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_commit(writer), HW_DB_OK);

    CHECK_INT(hw_db_namespace_get_by_name(reader, "during", NULL), HW_DB_OK);
    hw_db_close(reader);
    hw_db_close(writer);
}

/* ---- allocation support ---- */

static void ip_first_free_and_cursor(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    struct hw_node n;
    int64_t ids[8];
    for (int i = 1; i <= 5; i++) {   /* 100.64.0.1 .. 100.64.0.5 */
        fill_node(&n, i, ns.id);
        CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
        ids[i] = n.id;
    }
    char out[HW_IP_TEXT_MAX];
    CHECK_INT(hw_db_ip_first_free(db, "100.64.0.1", "100.64.0.254", out), HW_DB_OK);
    CHECK_STR(out, "100.64.0.6");
    CHECK_INT(hw_db_ip_first_free(db, "100.64.0.0", "100.64.0.254", out), HW_DB_OK);
    CHECK_STR(out, "100.64.0.0");
    CHECK_INT(hw_db_ip_first_free(db, "100.64.0.2", "100.64.0.5", out), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_ip_first_free(db, "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::ff", out), HW_DB_OK);
    CHECK_STR(out, "fd7a:115c:a1e0::6");
    CHECK_INT(hw_db_ip_first_free(db, "100.64.0.1", "fd7a::1", out), HW_DB_INVALID);
    CHECK_INT(hw_db_ip_first_free(db, "100.64.0.9", "100.64.0.1", out), HW_DB_INVALID);

    char base[HW_IP_TEXT_MAX], next[HW_IP_TEXT_MAX];
    CHECK_INT(hw_db_ip_cursor_get(db, 4, base, next), HW_DB_NOT_FOUND);
    CHECK_INT(hw_db_ip_cursor_set(db, "100.64.0.1", "100.64.0.6"), HW_DB_OK);
    CHECK_INT(hw_db_ip_cursor_set(db, "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::6"), HW_DB_OK);
    /* Deleting a node pulls the cursor back to its address; so does readdressing one. */
    CHECK_INT(hw_db_node_delete(db, ids[4]), HW_DB_OK);
    CHECK_INT(hw_db_ip_cursor_get(db, 4, base, next), HW_DB_OK);
    CHECK_STR(base, "100.64.0.1");
    CHECK_STR(next, "100.64.0.4");
    CHECK_INT(hw_db_ip_cursor_get(db, 6, base, next), HW_DB_OK);
    CHECK_STR(next, "fd7a:115c:a1e0::4");
    CHECK_INT(hw_db_node_get(db, ids[2], &n), HW_DB_OK);
    snprintf(n.ipv4, sizeof n.ipv4, "100.64.9.9");
    CHECK_INT(hw_db_node_update(db, &n), HW_DB_OK);
    hw_node_clear(&n);
    CHECK_INT(hw_db_ip_cursor_get(db, 4, base, next), HW_DB_OK);
    CHECK_STR(next, "100.64.0.2");
    CHECK_INT(hw_db_ip_cursor_get(db, 6, base, next), HW_DB_OK);
    CHECK_STR(next, "fd7a:115c:a1e0::4");   /* its IPv6 did not change */

    char **names;
    size_t count;
    fill_node(&n, 20, ns.id);
    snprintf(n.given_name, sizeof n.given_name, "host-10");
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    CHECK_INT(hw_db_given_names_with_prefix(db, "host-", 0, &names, &count), HW_DB_OK);
    CHECK_INT(count, 5);   /* host-1, -2, -3, -5, -10 */
    CHECK_STR(names[0], "host-1");
    CHECK_STR(names[1], "host-10");
    hw_db_string_list_free(names, count);
    CHECK_INT(hw_db_given_names_with_prefix(db, "host-1", n.id, &names, &count), HW_DB_OK);
    CHECK_INT(count, 1);
    hw_db_string_list_free(names, count);
    hw_db_close(db);
}

int main(void)
{
    RUN(open_creates_schema);
    RUN(reopen_is_idempotent);
    RUN(failing_migration_leaves_file_untouched);
    RUN(newer_schema_refused);
    RUN(not_a_database_refused);
    RUN(namespaces_crud);
    RUN(namespace_destroy_rules);
    RUN(nodes_insert_get_list_update_delete);
    RUN(node_unique_conflicts);
    RUN(node_single_column_setters);
    RUN(routes_advertise_enable_disable);
    RUN(preauth_keys);
    RUN(api_keys);
    RUN(pending_registrations);
    RUN(nested_transactions);
    RUN(reader_not_blocked_by_writer);
    RUN(ip_first_free_and_cursor);
    tmpdir_remove(&dir);
    return TEST_MAIN_END();
}
