/* How long the policy engine takes on a large tailnet: parse a 50-rule policy, compile
 * it against 10,000 nodes, answer every node's peers, packet filter and SSH policy,
 * then apply single-node changes one at a time with their change reports, and compare
 * every node between no policy and the policy (what a policy reload costs the engine).
 * Usage: policy_compile [NODES] [RULES]   (defaults 10000 50). Prints numbers only. */

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/policy.h"

#define N_NS 200
#define N_TAGS 20
#define N_GROUPS 10

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static unsigned long long rng = 88172645463325252ULL;
static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap ? b->cap * 2 : 65536;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
}

/* A policy in the shape real ones have: people in groups reach tagged services on a
 * few ports, services reach each other, everyone reaches their own devices and the
 * exit nodes, a couple of subnets, some rules by host or CIDR. */
static char *make_policy(int rules)
{
    struct buf b = {0};
    put(&b, "{\n  \"groups\": {\n");
    for (int g = 0; g < N_GROUPS; g++) {
        put(&b, "    \"group:g%d\": [", g);
        for (int k = 0; k < 8; k++)
            put(&b, "%s\"user%d@\"", k ? ", " : "", (g * 17 + k * 13) % N_NS);
        put(&b, "],\n");
    }
    put(&b, "  },\n  \"hosts\": {\"lan\": \"192.168.0.0/16\", \"legacy\": \"100.64.3.0/24\"},\n");
    put(&b, "  \"tagOwners\": {\n");
    for (int t = 0; t < N_TAGS; t++)
        put(&b, "    \"tag:t%d\": [\"group:g%d\"],\n", t, t % N_GROUPS);
    put(&b, "  },\n  \"acls\": [\n");
    put(&b, "    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\"]},\n");
    put(&b, "    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:internet:*\"]},\n");
    put(&b, "    {\"action\": \"accept\", \"src\": [\"group:g0\"], \"dst\": [\"lan:22,443\"]},\n");
    put(&b, "    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"tag:t0:53\"], \"proto\": \"udp\"},\n");
    for (int r = 4; r < rules; r++) {
        switch (r % 5) {
        case 0: put(&b, "    {\"action\": \"accept\", \"src\": [\"group:g%d\"], \"dst\": [\"tag:t%d:80,443\"]},\n",
                    r % N_GROUPS, r % N_TAGS); break;
        case 1: put(&b, "    {\"action\": \"accept\", \"src\": [\"tag:t%d\"], \"dst\": [\"tag:t%d:5432\"]},\n",
                    r % N_TAGS, (r * 7) % N_TAGS); break;
        case 2: put(&b, "    {\"action\": \"accept\", \"src\": [\"user%d@\"], \"dst\": [\"tag:t%d:*\", \"user%d@:22\"]},\n",
                    r % N_NS, r % N_TAGS, (r * 3) % N_NS); break;
        case 3: put(&b, "    {\"action\": \"accept\", \"src\": [\"legacy\"], \"dst\": [\"group:g%d:8000-8100\"]},\n",
                    r % N_GROUPS); break;
        default: put(&b, "    {\"action\": \"accept\", \"src\": [\"autogroup:tagged\"], \"dst\": [\"tag:t%d:9100\"]},\n",
                     r % N_TAGS); break;
        }
    }
    put(&b, "  ],\n  \"ssh\": [\n");
    put(&b, "    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self\"], "
            "\"users\": [\"autogroup:nonroot\"]},\n");
    put(&b, "    {\"action\": \"check\", \"src\": [\"group:g1\"], \"dst\": [\"tag:t1\"], \"users\": [\"root\"]},\n");
    put(&b, "  ],\n}\n");
    return b.p;
}

struct node_text {
    char ns[24], v4[48], v6[48], tag[24];
    const char *tags[1];
    const char *routes[2];
};

static struct hw_policy_node make_node(struct node_text *t, long id)
{
    snprintf(t->ns, sizeof t->ns, "user%u", rnd(N_NS));
    snprintf(t->v4, sizeof t->v4, "100.64.%ld.%ld", id / 256, id % 256);
    snprintf(t->v6, sizeof t->v6, "fd7a:115c:a1e0::%lx", id);
    snprintf(t->tag, sizeof t->tag, "tag:t%u", rnd(N_TAGS));
    t->tags[0] = t->tag;
    struct hw_policy_node n = {.id = id, .ns = t->ns, .ipv4 = t->v4, .ipv6 = t->v6};
    if (rnd(5) == 0) {
        n.tags = t->tags;
        n.n_tags = 1;
    }
    if (id % 500 == 0) {
        t->routes[0] = "0.0.0.0/0";
        t->routes[1] = "::/0";
        n.routes = t->routes;
        n.n_routes = 2;
    } else if (id % 250 == 0) {
        t->routes[0] = "192.168.10.0/24";
        n.routes = t->routes;
        n.n_routes = 1;
    }
    return n;
}

/* The policy the no-policy run changes to (set by main). */
static const struct hw_policy *other_policy;

static void count_change(int64_t id, const struct hw_policy_change *chg, void *arg)
{
    size_t *counts = arg;
    (void)id;
    counts[0] += chg->n_gained + chg->n_lost;
    counts[1] += chg->n_filters;
}

static void run(const struct hw_policy *p, long nodes, const char *label)
{
    struct node_text *texts = calloc((size_t)nodes, sizeof *texts);
    char err[512];
    double t0 = now_ms();
    struct hw_policy_net *net = hw_policy_net_new(p);
    for (long i = 0; i < nodes; i++) {
        struct hw_policy_node n = make_node(&texts[i], i + 1);
        if (hw_policy_net_set_node(net, &n, NULL, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            exit(1);
        }
    }
    double t1 = now_ms();
    size_t peers = 0, rules = 0, bytes = 0;
    for (long i = 0; i < nodes; i++) {
        size_t n;
        free(hw_policy_peers(net, i + 1, &n));
        peers += n;
    }
    double t2 = now_ms();
    for (long i = 0; i < nodes; i++) {
        json_t *f = hw_policy_filter(net, i + 1);
        rules += json_array_size(f);
        json_decref(f);
    }
    double t3 = now_ms();
    for (long i = 0; i < nodes; i++)
        json_decref(hw_policy_ssh(net, i + 1, "https://hw.example.com"));
    double t4 = now_ms();
    /* What the control layer would send for a filter: the dumped text. */
    for (long i = 0; i < nodes; i += 100) {
        json_t *f = hw_policy_filter(net, i + 1);
        char *s = json_dumps(f, JSON_COMPACT);
        bytes += strlen(s);
        free(s);
        json_decref(f);
    }
    double t5 = now_ms();
    enum { CHANGES = 200 };
    double worst = 0;
    size_t reported = 0;
    for (int c = 0; c < CHANGES; c++) {
        long id = 1 + (long)rnd((unsigned)nodes);
        struct node_text t;
        struct hw_policy_node n = make_node(&t, id);
        struct hw_policy_change chg;
        double s = now_ms();
        hw_policy_net_set_node(net, &n, &chg, err, sizeof err);
        double e = now_ms() - s;
        worst = e > worst ? e : worst;
        reported += chg.n_gained + chg.n_lost + chg.n_filters;
        hw_policy_change_clear(&chg);
    }
    double t6 = now_ms();
    /* A policy change: the same nodes under the other policy (none <-> this one),
     * compared node by node as a reload does. */
    struct hw_policy_net *other = hw_policy_net_new(p ? NULL : other_policy);
    for (long i = 0; i < nodes; i++) {
        struct hw_policy_node n = make_node(&texts[i], i + 1);
        hw_policy_net_set_node(other, &n, NULL, err, sizeof err);
    }
    size_t compared[2] = {0, 0};
    double t7 = now_ms();
    hw_policy_net_compare_all(other, net, "https://hw.example.com", count_change, compared);
    double t8 = now_ms();
    hw_policy_net_free(other);
    printf("%s: %ld nodes\n", label, nodes);
    printf("  compile (every node added):       %8.1f ms\n", t1 - t0);
    printf("  peers of every node:              %8.1f ms  (%.1f peers per node)\n", t2 - t1,
           (double)peers / (double)nodes);
    printf("  packet filter of every node:      %8.1f ms  (%.1f rules per node)\n", t3 - t2,
           (double)rules / (double)nodes);
    printf("  ssh policy of every node:         %8.1f ms\n", t4 - t3);
    printf("  filter as text, 1 node in 100:    %8.1f ms  (%zu bytes on average)\n", t5 - t4,
           bytes / (size_t)((nodes + 99) / 100));
    printf("  one node changed, with report:    %8.3f ms average, %.3f ms worst (%zu ids reported per change)\n",
           (t6 - t5) / CHANGES, worst, reported / CHANGES);
    printf("  policy change, every node compared: %6.1f ms  (%zu peer ids gained or lost, %zu filters changed)\n",
           t8 - t7, compared[0], compared[1]);
    hw_policy_net_free(net);
    free(texts);
}

int main(int argc, char **argv)
{
    long nodes = argc > 1 ? atol(argv[1]) : 10000;
    int rules = argc > 2 ? atoi(argv[2]) : 50;
    if (nodes < 1 || nodes > 60000 || rules < 4) {
        fprintf(stderr, "usage: %s [NODES <= 60000] [RULES >= 4]\n", argv[0]);
        return 2;
    }
    char *text = make_policy(rules);
    char err[1024];
    double t0 = now_ms();
    struct hw_policy *p = hw_policy_parse(text, strlen(text), "bench", err, sizeof err);
    double t1 = now_ms();
    if (!p) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("policy: %d rules, %zu bytes, parsed in %.2f ms\n", rules, strlen(text), t1 - t0);
    other_policy = p;
    run(p, nodes, "with the policy");
    run(NULL, nodes, "without a policy (namespaces)");
    hw_policy_free(p);
    free(text);
    return 0;
}
