#ifndef HW_SERVER_ROUTES_H
#define HW_SERVER_ROUTES_H

/* Primary subnet routers. When several online nodes serve the same prefix (advertised
 * and enabled), exactly one of them is its primary: only the primary carries the prefix
 * in PrimaryRoutes and AllowedIPs, the others only their own addresses. The rules are
 * Headscale's (hscontrol/state/node_store.go, electPrimaryRoutes) and Tailscale's:
 * - the current primary keeps the prefix while it is up (no flapping back to an older
 *   router that returns);
 * - otherwise the up router with the lowest node id (the oldest) takes it;
 * - with no router up the prefix has no primary.
 * Exit routes (0.0.0.0/0, ::/0) are never elected: every exit node offers them.
 * Routers compete within a scope (headwater passes the namespace: namespaces are the
 * tailnet boundary without a policy). Pure and in memory; the control loop owns it. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db/db.h"

/* One enabled, advertised, non-exit route of a node. */
struct hw_route_offer {
    int64_t scope;
    int64_t node_id;
    const char *prefix;          /* canonical text */
    bool up;                     /* may be primary now (online) */
};

struct hw_primary {
    int64_t scope;
    char prefix[HW_PREFIX_TEXT_MAX];
    int64_t node_id;
};

/* The elected primaries, ordered by (scope, prefix). */
struct hw_primaries {
    struct hw_primary *v;
    size_t n;
};

/* A prefix whose primary changed: from 0 = it had none, to 0 = it has none now. */
struct hw_primary_change {
    int64_t scope;
    char prefix[HW_PREFIX_TEXT_MAX];
    int64_t from, to;
};

bool hw_route_is_exit(const char *prefix);

void hw_primaries_free(struct hw_primaries *p);
/* Re-elects from the complete list of offers (order does not matter; exit routes in it
 * are ignored). Returns the number of changes; *changes (malloc'd, caller frees; NULL
 * when none) lists them in (scope, prefix) order. */
size_t hw_primaries_elect(struct hw_primaries *p, const struct hw_route_offer *offers,
                          size_t n_offers, struct hw_primary_change **changes);
/* The primary node of the prefix in scope, 0 when none. */
int64_t hw_primaries_get(const struct hw_primaries *p, int64_t scope, const char *prefix);

#endif
