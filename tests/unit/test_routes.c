/* Primary route election (server/routes.c): one primary per prefix, kept while up,
 * failover to the lowest up id, no flapping back, exit routes never elected. */
#include "server/routes.h"
#include "tests/unit/testlib.h"

#define NET "192.168.50.0/24"

static int64_t elect(struct hw_primaries *p, const struct hw_route_offer *o, size_t n,
                     size_t *n_changes)
{
    struct hw_primary_change *ch = NULL;
    *n_changes = hw_primaries_elect(p, o, n, &ch);
    free(ch);
    return hw_primaries_get(p, 1, NET);
}

static void lowest_up_router_becomes_primary(void)
{
    struct hw_primaries p = {0};
    struct hw_route_offer o[] = {
        {1, 7, NET, true}, {1, 3, NET, false}, {1, 5, NET, true},
    };
    struct hw_primary_change *ch = NULL;
    size_t n = hw_primaries_elect(&p, o, 3, &ch);
    CHECK_INT(n, 1);
    CHECK_INT(ch[0].from, 0);
    CHECK_INT(ch[0].to, 5);
    CHECK_STR(ch[0].prefix, NET);
    free(ch);
    CHECK_INT(hw_primaries_get(&p, 1, NET), 5);
    CHECK_INT(hw_primaries_get(&p, 2, NET), 0);
    CHECK_INT(hw_primaries_get(&p, 1, "10.0.0.0/8"), 0);
    hw_primaries_free(&p);
}

static void failover_without_flapping(void)
{
    struct hw_primaries p = {0};
    size_t n;
    struct hw_route_offer o[] = {{1, 1, NET, true}, {1, 2, NET, true}, {1, 3, NET, true}};
    CHECK_INT(elect(&p, o, 3, &n), 1);
    /* Same input: nothing changes. */
    CHECK_INT(elect(&p, o, 3, &n), 1);
    CHECK_INT(n, 0);
    /* The primary goes down: the next lowest takes over. */
    o[0].up = false;
    CHECK_INT(elect(&p, o, 3, &n), 2);
    CHECK_INT(n, 1);
    /* It returns: the new primary keeps the prefix. */
    o[0].up = true;
    CHECK_INT(elect(&p, o, 3, &n), 2);
    CHECK_INT(n, 0);
    /* The new primary fails: the old one (lowest up) takes it back. */
    o[1].up = false;
    CHECK_INT(elect(&p, o, 3, &n), 1);
    /* Everyone down: no primary; the first to return gets it. */
    o[0].up = o[2].up = false;
    CHECK_INT(elect(&p, o, 3, &n), 0);
    CHECK_INT(n, 1);
    o[2].up = true;
    CHECK_INT(elect(&p, o, 3, &n), 3);
    o[0].up = o[1].up = true;
    CHECK_INT(elect(&p, o, 3, &n), 3);
    hw_primaries_free(&p);
}

static void removed_or_disabled_router_is_replaced(void)
{
    struct hw_primaries p = {0};
    size_t n;
    struct hw_route_offer o[] = {{1, 4, NET, true}, {1, 9, NET, true}};
    CHECK_INT(elect(&p, o, 2, &n), 4);
    /* Node 4 deleted or its route disabled: it is no longer offered. */
    CHECK_INT(elect(&p, o + 1, 1, &n), 9);
    CHECK_INT(n, 1);
    CHECK_INT(elect(&p, NULL, 0, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(p.n, 0);
    hw_primaries_free(&p);
}

static void exit_routes_and_scopes(void)
{
    struct hw_primaries p = {0};
    struct hw_route_offer o[] = {
        {1, 2, "0.0.0.0/0", true}, {1, 2, "::/0", true}, {1, 3, "0.0.0.0/0", true},
        {1, 2, NET, true},         {2, 1, NET, true},    {1, 2, "10.9.0.0/16", true},
        {1, 6, "10.9.0.0/16", true},
    };
    struct hw_primary_change *ch = NULL;
    size_t n = hw_primaries_elect(&p, o, sizeof o / sizeof o[0], &ch);
    CHECK_INT(n, 3);
    /* Changes come in (scope, prefix) order. */
    CHECK_STR(ch[0].prefix, "10.9.0.0/16");
    CHECK_INT(ch[0].to, 2);
    CHECK_STR(ch[1].prefix, NET);
    CHECK_INT(ch[2].scope, 2);
    free(ch);
    CHECK_INT(hw_primaries_get(&p, 1, "0.0.0.0/0"), 0);
    CHECK_INT(hw_primaries_get(&p, 1, "::/0"), 0);
    /* Each namespace has its own primary for the same prefix. */
    CHECK_INT(hw_primaries_get(&p, 1, NET), 2);
    CHECK_INT(hw_primaries_get(&p, 2, NET), 1);
    CHECK(hw_route_is_exit("::/0") && hw_route_is_exit("0.0.0.0/0"), "exit routes");
    CHECK(!hw_route_is_exit("0.0.0.0/1"), "0.0.0.0/1 is not an exit route");
    hw_primaries_free(&p);
}

static void many_prefixes(void)
{
    enum { N = 2000 };
    static struct hw_route_offer o[N];
    static char text[N][HW_PREFIX_TEXT_MAX];
    for (int i = 0; i < N; i++) {
        snprintf(text[i], sizeof text[i], "10.%d.%d.0/24", (i / 2) / 256, (i / 2) % 256);
        o[i] = (struct hw_route_offer){1, 100 - (i % 2), text[i], true};
    }
    struct hw_primaries p = {0};
    struct hw_primary_change *ch = NULL;
    CHECK_INT(hw_primaries_elect(&p, o, N, &ch), N / 2);
    free(ch);
    for (int i = 0; i < N; i += 2)
        CHECK_INT(hw_primaries_get(&p, 1, text[i]), 99);
    hw_primaries_free(&p);
}

int main(void)
{
    RUN(lowest_up_router_becomes_primary);
    RUN(failover_without_flapping);
    RUN(removed_or_disabled_router_is_replaced);
    RUN(exit_routes_and_scopes);
    RUN(many_prefixes);
    return TEST_MAIN_END();
}
