#include <string.h>

#include "server/tailnet.h"
#include "tests/unit/testlib.h"

static struct hw_node row(int64_t id, int64_t ns)
{
    struct hw_node n;
    memset(&n, 0, sizeof n);
    n.id = id;
    n.namespace_id = ns;
    snprintf(n.namespace_name, sizeof n.namespace_name, "ns%lld", (long long)ns);
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:%064lld", (long long)id);
    snprintf(n.node_key, sizeof n.node_key, "nodekey:%064lld", (long long)id);
    return n;
}

static void applied_nodes_are_found_and_removed(void)
{
    struct hw_tailnet tn;
    hw_tailnet_init(&tn);
    struct hw_node a = row(5, 1), b = row(3, 1);
    struct tn_node *na = hw_tailnet_apply(&tn, &a, NULL, 0);
    struct tn_node *nb = hw_tailnet_apply(&tn, &b, NULL, 0);
    CHECK(hw_tailnet_node(&tn, 5) == na, "node 5 not indexed by id");
    CHECK(hw_tailnet_node(&tn, 3) == nb, "node 3 not indexed by id");
    CHECK(hw_tailnet_by_machine_key(&tn, a.machine_key) == na, "machine key index");
    struct tn_namespace *ns = hw_tailnet_namespace(&tn, 1);
    CHECK(ns && ns->count == 2 && ns->head == nb && ns->tail == na, "members sorted by id");

    hw_tailnet_remove(&tn, 3);
    hw_tailnet_remove(&tn, 5);
    CHECK(hw_tailnet_node(&tn, 5) == NULL, "node 5 still indexed");
    CHECK(ns->head == NULL && ns->count == 0, "namespace still has members");
    hw_tailnet_free(&tn);
}

int main(void)
{
    RUN(applied_nodes_are_found_and_removed);
    return TEST_MAIN_END();
}
