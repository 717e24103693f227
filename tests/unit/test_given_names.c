/* The "smallest free <stem>-N" naming rule (server/nodes.c over db/given_names.c, whose
 * per-stem floors make a pick a few index lookups) against a real SQLite file: the rule
 * must hold after every way a name can be freed or a write undone. */
#include "tests/unit/tmpdir.h"

#include "common/util.h"
#include "db/db.h"
#include "server/nodes.h"
#include "tests/unit/testlib.h"

static struct tmpdir dir;
static char db_path[512];

static struct hw_db *fresh_db(void)
{
    tmpdir_remove(&dir);
    if (tmpdir_make(&dir, "names") < 0)
        return NULL;
    char err[512];
    tmpdir_file(&dir, "headwater.sqlite", db_path, sizeof db_path);
    struct hw_db *db = hw_db_open(db_path, err, sizeof err);
    if (!db)
        printf("# open failed: %s\n", err);
    return db;
}

static int next_key = 1000000;   /* clear of the keys the registration test uses */

/* Names a node after `hostname` as registration does and stores it; the name in out. */
static int add_named(struct hw_db *db, int64_t ns, const char *hostname, char out[HW_NAME_MAX],
                     int64_t *id_out)
{
    char base[HW_NAME_MAX];
    hw_given_name_from_hostname(hostname, base);
    int rc = hw_given_name_unique(db, base, 0, out);
    if (rc != 0)
        return rc;
    struct hw_node n;
    memset(&n, 0, sizeof n);
    int k = next_key++;
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:%064d", k);
    snprintf(n.node_key, sizeof n.node_key, "nodekey:%064d", k);
    snprintf(n.given_name, sizeof n.given_name, "%s", out);
    n.namespace_id = ns;
    rc = hw_db_node_insert(db, &n);
    if (id_out)
        *id_out = n.id;
    return rc;
}

/* What the rule says, from the full node list: base when free, else the smallest free
 * base-N. */
static void expected_name(struct hw_db *db, const char *base, char *out, size_t cap)
{
    struct hw_node *nodes = NULL;
    size_t n = 0;
    if (hw_db_node_list(db, 0, &nodes, &n) != HW_DB_OK) {
        snprintf(out, cap, "(list failed)");
        return;
    }
    bool base_taken = false;
    bool *used = hw_calloc(n + 2, sizeof *used);
    size_t base_len = strlen(base);
    for (size_t i = 0; i < n; i++) {
        const char *g = nodes[i].given_name;
        if (strcmp(g, base) == 0)
            base_taken = true;
        if (strncmp(g, base, base_len) == 0 && g[base_len] == '-' && g[base_len + 1] != '0') {
            char *end;
            unsigned long k = strtoul(g + base_len + 1, &end, 10);
            if (*end == '\0' && k >= 1 && k <= n + 1 && end != g + base_len + 1)
                used[k] = true;
        }
    }
    size_t k = 1;
    while (used[k])
        k++;
    if (base_taken)
        snprintf(out, cap, "%s-%zu", base, k);
    else
        snprintf(out, cap, "%s", base);
    free(used);
    hw_node_list_free(nodes, n);
}

static int64_t namespace(struct hw_db *db, const char *name)
{
    struct hw_namespace ns;
    return hw_db_namespace_create(db, name, &ns) == HW_DB_OK ? ns.id : 0;
}

/* 2,000 registrations of one host name, through the real registration path, in savepoints
 * of one outer transaction as the server's group commit does. */
static void two_thousand_same_named_registrations(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    int64_t ns = namespace(db, "default");
    struct hw_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.prefix_v4 = "100.64.0.0/10";
    cfg.prefix_v6 = "fd7a:115c:a1e0::/48";
    cfg.allocation = HW_ALLOC_SEQUENTIAL;
    enum { N = 2000 };
    int64_t *ids = hw_calloc(N, sizeof *ids);
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    for (int i = 0; i < N; i++) {
        struct hw_pending p;
        memset(&p, 0, sizeof p);
        snprintf(p.id, sizeof p.id, "reg%d", i);
        snprintf(p.machine_key, sizeof p.machine_key, "mkey:%064d", i);
        snprintf(p.node_key, sizeof p.node_key, "nodekey:%064d", i);
        snprintf(p.hostname, sizeof p.hostname, "Bench");
        CHECK_INT(hw_db_pending_insert(db, &p), HW_DB_OK);
        struct hw_node node;
        char err[256], want[HW_NAME_MAX];
        CHECK(hw_nodes_register_pending(db, &cfg, p.id, ns, &node, err, sizeof err) == 0, "%s", err);
        if (i == 0)
            snprintf(want, sizeof want, "bench");
        else
            snprintf(want, sizeof want, "bench-%d", i);
        ids[i] = node.id;
        bool same = strcmp(node.given_name, want) == 0;
        hw_node_clear(&node);
        CHECK(same, "registration %d named %s, want %s", i, node.given_name, want);
    }
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    struct hw_node *nodes;
    size_t n;
    CHECK_INT(hw_db_node_list(db, 0, &nodes, &n), HW_DB_OK);
    CHECK_INT(n, N);
    hw_node_list_free(nodes, n);

    /* A deleted middle name is the next one handed out, then the count goes on. */
    char name[HW_NAME_MAX];
    CHECK_INT(hw_db_node_delete(db, ids[1000]), HW_DB_OK);
    CHECK_INT(hw_db_node_delete(db, ids[1500]), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "bench", name, NULL), HW_DB_OK);
    CHECK_STR(name, "bench-1000");
    CHECK_INT(add_named(db, ns, "bench", name, NULL), HW_DB_OK);
    CHECK_STR(name, "bench-1500");
    CHECK_INT(add_named(db, ns, "bench", name, NULL), HW_DB_OK);
    CHECK_STR(name, "bench-2000");
    free(ids);
    hw_db_close(db);
}

/* Every way a name is freed or a write undone, each followed by the pick the rule says. */
static void smallest_free_after_every_kind_of_change(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    int64_t ns = namespace(db, "a"), other_ns = namespace(db, "b");
    char name[HW_NAME_MAX];
    int64_t id[8];
    for (int i = 0; i < 6; i++)   /* pi, pi-1 .. pi-5 */
        CHECK_INT(add_named(db, ns, "pi", name, &id[i]), HW_DB_OK);
    CHECK_STR(name, "pi-5");

    /* delete */
    CHECK_INT(hw_db_node_delete(db, id[2]), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, &id[2]), HW_DB_OK);
    CHECK_STR(name, "pi-2");

    /* rename away (hw_db_node_set_given_name), then the full-row update */
    CHECK_INT(hw_db_node_set_given_name(db, id[3], "renamed"), HW_DB_OK);
    struct hw_node row;
    CHECK_INT(hw_db_node_get(db, id[1], &row), HW_DB_OK);
    snprintf(row.given_name, sizeof row.given_name, "renamed-too");
    CHECK_INT(hw_db_node_update(db, &row), HW_DB_OK);
    hw_node_clear(&row);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-1");
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-3");
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-6");

    /* a rename onto the next free name takes it */
    CHECK_INT(hw_db_node_set_given_name(db, id[3], "pi-7"), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-8");

    /* a force-destroyed namespace frees its nodes' names */
    int64_t gone[2];
    CHECK_INT(add_named(db, other_ns, "pi", name, &gone[0]), HW_DB_OK);
    CHECK_STR(name, "pi-9");
    CHECK_INT(add_named(db, other_ns, "pi", name, &gone[1]), HW_DB_OK);
    CHECK_STR(name, "pi-10");
    CHECK_INT(hw_db_node_delete(db, id[4]), HW_DB_OK);   /* pi-4 */
    CHECK_INT(add_named(db, ns, "pi", name, &id[4]), HW_DB_OK);
    CHECK_STR(name, "pi-4");
    CHECK_INT(hw_db_node_set_namespace(db, id[4], other_ns), HW_DB_OK);
    CHECK_INT(hw_db_namespace_destroy(db, other_ns, true), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-4");
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-9");

    /* a rolled-back transaction un-takes the names it took */
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-10");
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-11");
    hw_db_rollback(db);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-10");

    /* ... and so does a rolled-back savepoint inside a transaction that commits */
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-11");
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-12");
    hw_db_rollback(db);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-12");
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-13");

    /* a name picked but never stored stays the next one */
    CHECK_INT(hw_given_name_unique(db, "pi", 0, name), 0);
    CHECK_STR(name, "pi-14");
    CHECK_INT(hw_given_name_unique(db, "pi", 0, name), 0);
    CHECK_STR(name, "pi-14");
    CHECK_INT(hw_db_node_delete(db, id[2]), HW_DB_OK);   /* pi-2, below the run */
    CHECK_INT(hw_given_name_unique(db, "pi", 0, name), 0);
    CHECK_STR(name, "pi-2");
    CHECK_INT(hw_given_name_unique(db, "pi", 0, name), 0);
    CHECK_STR(name, "pi-2");
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-2");
    CHECK_INT(hw_given_name_unique(db, "pi", 0, name), 0);
    CHECK_STR(name, "pi-14");

    /* another connection to the same file frees a name */
    char err[256];
    struct hw_db *other = hw_db_open(db_path, err, sizeof err);
    CHECK(other, "second connection: %s", err);
    CHECK_INT(hw_db_node_delete(other, id[0]), HW_DB_OK);   /* "pi" itself */
    CHECK_INT(hw_db_node_set_given_name(other, id[5], "elsewhere"), HW_DB_OK);   /* pi-5 */
    hw_db_close(other);
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi");
    CHECK_INT(add_named(db, ns, "pi", name, NULL), HW_DB_OK);
    CHECK_STR(name, "pi-5");
    hw_db_close(db);
}

/* Random deletes, renames, rollbacks and picks over a few host names; after each step the
 * pick must be what the full node list says. */
static void random_changes_match_the_rule(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    int64_t ns = namespace(db, "a");
    const char *hosts[] = {"localhost", "raspberrypi", "web-1"};
    srand(7);
    char name[HW_NAME_MAX], want[HW_NAME_MAX + 24];
    for (int step = 0; step < 800; step++) {
        const char *host = hosts[rand() % 3];
        int op = rand() % 10;
        struct hw_node *nodes = NULL;
        size_t n = 0;
        CHECK_INT(hw_db_node_list(db, 0, &nodes, &n), HW_DB_OK);
        int64_t victim = n ? nodes[rand() % n].id : 0;
        hw_node_list_free(nodes, n);
        if (op == 0 && victim) {
            CHECK_INT(hw_db_node_delete(db, victim), HW_DB_OK);
        } else if (op == 1 && victim) {
            char to[HW_NAME_MAX];
            snprintf(to, sizeof to, "%s-%d", hosts[rand() % 3], 1 + rand() % 40);
            int rc = hw_db_node_set_given_name(db, victim, to);
            CHECK(rc == HW_DB_OK || rc == HW_DB_EXISTS, "rename: %s", hw_db_errmsg(db));
        } else if (op == 2) {
            /* a batch that is undone, whole or as a savepoint */
            bool nested = rand() % 2;
            if (nested)
                CHECK_INT(hw_db_begin(db), HW_DB_OK);
            CHECK_INT(hw_db_begin(db), HW_DB_OK);
            for (int i = rand() % 4; i >= 0; i--)
                CHECK_INT(add_named(db, ns, hosts[rand() % 3], name, NULL), HW_DB_OK);
            if (victim)
                CHECK_INT(hw_db_node_delete(db, victim), HW_DB_OK);
            hw_db_rollback(db);
            if (nested)
                CHECK_INT(hw_db_commit(db), HW_DB_OK);
        }
        char base[HW_NAME_MAX];
        hw_given_name_from_hostname(host, base);
        expected_name(db, base, want, sizeof want);
        CHECK_INT(add_named(db, ns, host, name, NULL), HW_DB_OK);
        CHECK(strcmp(name, want) == 0, "step %d: got %s, want %s", step, name, want);
    }
    hw_db_close(db);
}

/* Ephemeral churn (one node goes, a new one takes its name) and a mass delete of more
 * names than the handle keeps as holes. */
static void churn_and_mass_delete(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    int64_t ns = namespace(db, "a");
    enum { K = 200 };
    int64_t by_suffix[K + 1];   /* 0: the plain "box" */
    char name[HW_NAME_MAX], want[HW_NAME_MAX];
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    for (int i = 0; i < K; i++)
        CHECK_INT(add_named(db, ns, "box", name, &by_suffix[i]), HW_DB_OK);
    CHECK_STR(name, "box-199");
    srand(11);
    for (int round = 0; round < 300; round++) {
        /* one to three go, as many come back: lowest first */
        int gone[3], n_gone = 1 + rand() % 3;
        for (int g = 0; g < n_gone; g++) {
            int suffix;
            bool dup;
            do {
                suffix = 1 + rand() % (K - 1);
                dup = false;
                for (int j = 0; j < g; j++)
                    dup |= gone[j] == suffix;
            } while (dup);
            gone[g] = suffix;
            CHECK_INT(hw_db_node_delete(db, by_suffix[suffix]), HW_DB_OK);
        }
        for (int g = 0; g < n_gone; g++) {
            int lowest = 0;
            for (int j = 1; j < n_gone; j++)
                if (gone[j] < gone[lowest])
                    lowest = j;
            snprintf(want, sizeof want, "box-%d", gone[lowest]);
            CHECK_INT(add_named(db, ns, "box", name, &by_suffix[gone[lowest]]), HW_DB_OK);
            CHECK(strcmp(name, want) == 0, "round %d: got %s, want %s", round, name, want);
            gone[lowest] = 1 << 30;
        }
    }
    /* 60 names freed at once (every third from 10), handed out again in order */
    for (int suffix = 10; suffix < 190; suffix += 3)
        CHECK_INT(hw_db_node_delete(db, by_suffix[suffix]), HW_DB_OK);
    for (int suffix = 10; suffix < 190; suffix += 3) {
        CHECK_INT(add_named(db, ns, "box", name, NULL), HW_DB_OK);
        snprintf(want, sizeof want, "box-%d", suffix);
        CHECK_STR(name, want);
    }
    CHECK_INT(add_named(db, ns, "box", name, NULL), HW_DB_OK);
    CHECK_STR(name, "box-200");
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    hw_db_close(db);
}

/* More stems than the handle keeps: it forgets them all and stays exact. */
static void many_stems(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    int64_t ns = namespace(db, "a");
    enum { STEMS = 1500 };
    int64_t first_suffix[STEMS];
    char host[32], name[HW_NAME_MAX], want[HW_NAME_MAX];
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    for (int round = 0; round < 3; round++) {
        for (int s = 0; s < STEMS; s++) {
            snprintf(host, sizeof host, "h%d", s);
            int64_t id;
            CHECK_INT(add_named(db, ns, host, name, &id), HW_DB_OK);
            if (round == 1)
                first_suffix[s] = id;
            if (round == 0)
                snprintf(want, sizeof want, "h%d", s);
            else
                snprintf(want, sizeof want, "h%d-%d", s, round);
            CHECK_STR(name, want);
        }
    }
    for (int s = 0; s < STEMS; s += 7)
        CHECK_INT(hw_db_node_delete(db, first_suffix[s]), HW_DB_OK);
    for (int s = 0; s < STEMS; s++) {
        snprintf(host, sizeof host, "h%d", s);
        CHECK_INT(add_named(db, ns, host, name, NULL), HW_DB_OK);
        snprintf(want, sizeof want, "h%d-%d", s, s % 7 == 0 ? 1 : 3);
        CHECK_STR(name, want);
    }
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    hw_db_close(db);
}

int main(void)
{
    RUN(two_thousand_same_named_registrations);
    RUN(smallest_free_after_every_kind_of_change);
    RUN(random_changes_match_the_rule);
    RUN(churn_and_mass_delete);
    RUN(many_stems);
    tmpdir_remove(&dir);
    return TEST_MAIN_END();
}
