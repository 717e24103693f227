/* What naming costs when many nodes share one host name: NODES nodes that all report
 * "box" are named (box, box-1, box-2 ...) and stored, then CHURN times a random one is
 * deleted and a new "box" takes the freed name (ephemeral containers coming and going).
 * The database layer alone (server/nodes.c naming + db/, a real SQLite file in $TMPDIR,
 * all in one transaction so fsync does not hide the search), no network.
 * Usage: name_churn [NODES] [CHURN]   (defaults 10000 5000). Prints numbers only. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db/db.h"
#include "server/nodes.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int next_key = 1;

static int add_box(struct hw_db *db, int64_t ns, int64_t *id_out)
{
    struct hw_node n;
    memset(&n, 0, sizeof n);
    if (hw_given_name_unique(db, "box", 0, n.given_name) != 0)
        return -1;
    int k = next_key++;
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:%064d", k);
    snprintf(n.node_key, sizeof n.node_key, "nodekey:%064d", k);
    n.namespace_id = ns;
    int rc = hw_db_node_insert(db, &n);
    *id_out = n.id;
    return rc;
}

static int count_arg(const char *s, int fallback)
{
    if (!s)
        return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 2 || v > 1000000) {
        fprintf(stderr, "name_churn: counts must be 2..1000000, not \"%s\"\n", s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    int nodes = count_arg(argc > 1 ? argv[1] : NULL, 10000);
    int churn = count_arg(argc > 2 ? argv[2] : NULL, 5000);
    const char *tmp = getenv("TMPDIR");
    char dir[256], path[300], err[512];
    snprintf(dir, sizeof dir, "%s/hw-name-churn-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("name_churn: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/headwater.sqlite", dir);
    struct hw_db *db = hw_db_open(path, err, sizeof err);
    if (!db) {
        fprintf(stderr, "name_churn: %s\n", err);
        rmdir(dir);
        return 1;
    }
    struct hw_namespace ns;
    int64_t *ids = calloc((size_t)nodes, sizeof *ids);
    int rc = ids && hw_db_namespace_create(db, "bench", &ns) == HW_DB_OK && hw_db_begin(db) == HW_DB_OK
                 ? 0 : -1;
    double t0 = now_us(), t1 = t0, t2 = t0;
    for (int i = 0; rc == 0 && i < nodes; i++)
        rc = add_box(db, ns.id, &ids[i]);
    t1 = now_us();
    srand(3);
    for (int i = 0; rc == 0 && i < churn; i++) {
        int victim = 1 + rand() % (nodes - 1);
        rc = hw_db_node_delete(db, ids[victim]);
        if (rc == 0)
            rc = add_box(db, ns.id, &ids[victim]);
    }
    t2 = now_us();
    if (rc != 0)
        fprintf(stderr, "name_churn: %s\n", hw_db_errmsg(db));
    else
        printf("%d nodes named \"box\": %.1f us per name + insert; %d churn (delete a random "
               "one, name + insert a new one): %.1f us each\n",
               nodes, (t1 - t0) / nodes, churn, (t2 - t1) / churn);
    hw_db_rollback(db);
    hw_db_close(db);
    free(ids);
    char side[320];
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(side, sizeof side, "%s%s", path, suffixes[i]);
        unlink(side);
    }
    rmdir(dir);
    return rc == 0 ? 0 : 1;
}
