#ifndef HW_SERVER_SERVER_H
#define HW_SERVER_SERVER_H

/* The running headwater process: configuration, store, keys and listeners. Listener
 * threads (public HTTP, admin socket) and the session loop share it; every use of db
 * or of in-memory tailnet state happens with `lock` held. */

#include <pthread.h>
#include <signal.h>
#include <stdint.h>

#include "common/config.h"
#include "db/db.h"

struct MHD_Daemon;

/* What changed, so the map streamer can push the smallest delta to the right sessions. */
enum hw_change_kind {
    HW_CHANGE_NODE_ADDED,
    HW_CHANGE_NODE_REMOVED,
    HW_CHANGE_NODE_UPDATED,     /* rename, expiry, tags, keys, endpoints, hostinfo */
    HW_CHANGE_NODE_MOVED,       /* namespace changed: visibility changes */
    HW_CHANGE_ROUTES,           /* enabled/primary routes changed */
    HW_CHANGE_NAMESPACE,        /* namespace renamed or destroyed */
    HW_CHANGE_POLICY,
};

struct hw_server {
    struct hw_config *cfg;
    struct hw_db *db;
    pthread_mutex_t lock;
    uint8_t noise_private[32];
    uint8_t noise_public[32];
    struct MHD_Daemon *public_http;
    struct MHD_Daemon *admin_http;
    volatile sig_atomic_t stopping;
};

/* Called (with lock held) after a change is committed to the store. Until the map
 * streamer exists it only logs at debug level. */
void hw_server_changed(struct hw_server *s, enum hw_change_kind kind, int64_t id);

#endif
