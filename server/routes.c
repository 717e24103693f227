#include "server/routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

bool hw_route_is_exit(const char *prefix)
{
    return strcmp(prefix, "0.0.0.0/0") == 0 || strcmp(prefix, "::/0") == 0;
}

void hw_primaries_free(struct hw_primaries *p)
{
    free(p->v);
    p->v = NULL;
    p->n = 0;
}

static int cmp_key(int64_t scope_a, const char *prefix_a, int64_t scope_b, const char *prefix_b)
{
    if (scope_a != scope_b)
        return scope_a < scope_b ? -1 : 1;
    return strcmp(prefix_a, prefix_b);
}

static int cmp_offer(const void *a, const void *b)
{
    const struct hw_route_offer *x = *(const struct hw_route_offer *const *)a;
    const struct hw_route_offer *y = *(const struct hw_route_offer *const *)b;
    int c = cmp_key(x->scope, x->prefix, y->scope, y->prefix);
    if (c)
        return c;
    return x->node_id < y->node_id ? -1 : x->node_id > y->node_id;
}

int64_t hw_primaries_get(const struct hw_primaries *p, int64_t scope, const char *prefix)
{
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_key(p->v[mid].scope, p->v[mid].prefix, scope, prefix);
        if (c == 0)
            return p->v[mid].node_id;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static void add_change(struct hw_primary_change **changes, size_t *n, size_t *cap, int64_t scope,
                       const char *prefix, int64_t from, int64_t to)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        struct hw_primary_change *grown = realloc(*changes, *cap * sizeof **changes);
        if (!grown)
            abort();
        *changes = grown;
    }
    struct hw_primary_change *c = &(*changes)[(*n)++];
    c->scope = scope;
    snprintf(c->prefix, sizeof c->prefix, "%s", prefix);
    c->from = from;
    c->to = to;
}

size_t hw_primaries_elect(struct hw_primaries *p, const struct hw_route_offer *offers,
                          size_t n_offers, struct hw_primary_change **changes)
{
    const struct hw_route_offer **sorted = hw_calloc(n_offers + 1, sizeof *sorted);
    size_t n_sorted = 0;
    for (size_t i = 0; i < n_offers; i++)
        if (!hw_route_is_exit(offers[i].prefix))
            sorted[n_sorted++] = &offers[i];
    qsort(sorted, n_sorted, sizeof *sorted, cmp_offer);

    struct hw_primaries next = {.v = hw_calloc(n_sorted + 1, sizeof *next.v)};
    for (size_t i = 0; i < n_sorted;) {
        size_t end = i;
        while (end < n_sorted && cmp_key(sorted[end]->scope, sorted[end]->prefix, sorted[i]->scope,
                                         sorted[i]->prefix) == 0)
            end++;
        int64_t previous = hw_primaries_get(p, sorted[i]->scope, sorted[i]->prefix);
        int64_t chosen = 0;
        for (size_t k = i; k < end; k++) {
            if (!sorted[k]->up)
                continue;
            if (sorted[k]->node_id == previous) {
                chosen = previous;
                break;
            }
            if (!chosen)
                chosen = sorted[k]->node_id;   /* the lowest id: sorted ascending */
        }
        if (chosen) {
            struct hw_primary *e = &next.v[next.n++];
            e->scope = sorted[i]->scope;
            snprintf(e->prefix, sizeof e->prefix, "%s", sorted[i]->prefix);
            e->node_id = chosen;
        }
        i = end;
    }
    free(sorted);

    /* Both lists are ordered by (scope, prefix): walk them together for the changes. */
    size_t n_changes = 0, cap = 0;
    *changes = NULL;
    size_t a = 0, b = 0;
    while (a < p->n || b < next.n) {
        int c = a == p->n ? 1
                : b == next.n
                    ? -1
                    : cmp_key(p->v[a].scope, p->v[a].prefix, next.v[b].scope, next.v[b].prefix);
        if (c < 0) {
            add_change(changes, &n_changes, &cap, p->v[a].scope, p->v[a].prefix, p->v[a].node_id, 0);
            a++;
        } else if (c > 0) {
            add_change(changes, &n_changes, &cap, next.v[b].scope, next.v[b].prefix, 0,
                       next.v[b].node_id);
            b++;
        } else {
            if (p->v[a].node_id != next.v[b].node_id)
                add_change(changes, &n_changes, &cap, p->v[a].scope, p->v[a].prefix,
                           p->v[a].node_id, next.v[b].node_id);
            a++;
            b++;
        }
    }
    hw_primaries_free(p);
    *p = next;
    return n_changes;
}
