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
struct hw_loop;
struct hw_control;
struct hw_ts2021;
struct hw_derp_embed;

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
    char *tls_cert_pem, *tls_key_pem; /* tls_cert_path/tls_key_path while serving HTTPS */
    struct MHD_Daemon *admin_http;
    volatile sig_atomic_t stopping;

    /* Process plumbing (server/server.c). The loop runs on the main thread; SIGINT and
     * SIGTERM arrive there through signal_fd, blocked in every other thread. */
    struct hw_loop *loop;
    int signal_fd;
    int public_fd;                 /* bound TCP listener until MHD owns it, else -1 */
    int admin_fd;                  /* bound unix socket until MHD owns it, else -1 */
    char *admin_socket_path;       /* set while the socket file is ours to remove */
    uint64_t admin_socket_dev, admin_socket_ino;

    /* The control protocol on the loop: Noise sessions and the live tailnet. */
    struct hw_control *control;
    struct hw_ts2021 *ts2021;
    /* The built-in relay (derp.server.enabled), NULL when off. */
    struct hw_derp_embed *derp;
    /* policy.mode file: inotify on the policy file's directory (server/policy_source.c). */
    int policy_watch_fd;
    struct hw_timer *policy_reload_timer;
};

/* Checks what the server needs beyond what the config reader checks (listen_addr form,
 * paths set, socket path length). Used by serve and configtest. 0, or -1 + err. */
int hw_server_check_config(const struct hw_config *cfg, char *err, size_t err_len);

/* Everything `headwater serve` does before serving: data directories, both listeners
 * bound (so a second instance or a taken port fails before the store is touched), the
 * store opened, the Noise key loaded or created, the HTTP daemons started. cfg stays
 * owned by the caller and must outlive the server. On failure returns -1 with one
 * line in err, having undone whatever it had done. */
int hw_server_start(struct hw_server *s, struct hw_config *cfg, char *err, size_t err_len);
/* Runs the event loop until SIGINT or SIGTERM. */
void hw_server_run(struct hw_server *s);
/* Stops the listeners (requests in progress finish), closes the store, removes the
 * socket file. Safe after a failed or partial start. */
void hw_server_stop(struct hw_server *s);

/* Called (with lock held) after a change is committed to the store: the live tailnet
 * catches up on the loop thread and connected clients get the delta. */
void hw_server_changed(struct hw_server *s, enum hw_change_kind kind, int64_t id);

#endif
