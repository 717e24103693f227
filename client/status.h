#ifndef HW_CLIENT_STATUS_H
#define HW_CLIENT_STATUS_H

/* `hwclient status`: the daemon builds a JSON document shaped like upstream's
 * ipnstate.Status (BackendState, AuthURL, TailscaleIPs, Self, Peer keyed by node key,
 * User, MagicDNSSuffix, Health), and the CLI prints it as `tailscale status` does
 * (cmd/tailscale/cli/status.go): one line per node with the first IP, the MagicDNS
 * name without the tailnet suffix, the owner's login, the OS and a status column. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "proto/netmap.h"

struct hwc_status_in {
    const char *backend_state; /* NoState, NeedsLogin, NeedsMachineAuth, Starting, Running */
    const char *auth_url;      /* "" unless an interactive login waits */
    const struct tc_netmap *nm; /* NULL before the first map */
    bool connected;            /* a map stream is delivering */
    const char *const *health;
    size_t n_health;
    const char *control_url;
    int64_t now;               /* unix seconds */
};

json_t *hwc_status_json(const struct hwc_status_in *in);

/* True when the node's key expired by now (the Expired flag, or KeyExpiry in the past). */
bool hwc_node_expired(const struct tc_node *n, int64_t now);

/* Prints the table (or the state's description) and returns the exit status: 0 for
 * Running and Starting, 1 otherwise, as upstream. */
int hwc_status_print(FILE *out, const json_t *status, int64_t now);

#endif
