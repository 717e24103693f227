#include "server/server.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "api/admin_api.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "server/http_public.h"
#include "server/control.h"
#include "server/derp_embed.h"
#include "server/policy_source.h"
#include "proto/keys.h"
#include "server/ts2021.h"

static const char *change_name(enum hw_change_kind kind)
{
    switch (kind) {
    case HW_CHANGE_NODE_ADDED: return "node added";
    case HW_CHANGE_NODE_REMOVED: return "node removed";
    case HW_CHANGE_NODE_UPDATED: return "node updated";
    case HW_CHANGE_NODE_MOVED: return "node moved";
    case HW_CHANGE_ROUTES: return "routes";
    case HW_CHANGE_NAMESPACE: return "namespace";
    case HW_CHANGE_POLICY: return "policy";
    }
    return "?";
}

void hw_server_changed(struct hw_server *s, enum hw_change_kind kind, int64_t id)
{
    log_debug("change: %s, id %lld", change_name(kind), (long long)id);
    if (s->control)
        hw_control_notify(s->control, kind, id);
}

int hw_server_check_config(const struct hw_config *cfg, char *err, size_t err_len)
{
    char host[256], port[16], why[200];
    if (!cfg->listen_addr ||
        hw_split_host_port(cfg->listen_addr, host, sizeof host, port, sizeof port, why,
                           sizeof why) < 0) {
        snprintf(err, err_len, "listen_addr %s", cfg->listen_addr ? why : "is not set");
        return -1;
    }
    if (cfg->database_type && strcmp(cfg->database_type, "sqlite") != 0 &&
        strcmp(cfg->database_type, "sqlite3") != 0) {
        snprintf(err, err_len, "database.type \"%s\" is not supported: use sqlite",
                 cfg->database_type);
        return -1;
    }
    static const struct {
        size_t offset;
        const char *key;
    } paths[] = {
        {offsetof(struct hw_config, database_sqlite_path), "database.sqlite.path"},
        {offsetof(struct hw_config, noise_private_key_path), "noise.private_key_path"},
        {offsetof(struct hw_config, unix_socket), "unix_socket"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(paths); i++) {
        const char *p = *(char *const *)((const char *)cfg + paths[i].offset);
        if (!p || !*p) {
            snprintf(err, err_len, "%s is not set", paths[i].key);
            return -1;
        }
    }
    /* sockaddr_un.sun_path holds 108 bytes with the NUL. */
    if (strlen(cfg->unix_socket) > 107) {
        snprintf(err, err_len, "unix_socket \"%s\" is longer than the 107 bytes a socket path "
                 "may have", cfg->unix_socket);
        return -1;
    }
    return 0;
}

static int make_parent_dir(const char *path, unsigned mode, char *err, size_t err_len)
{
    char *dir = hw_dirname(path);
    int rc = hw_mkdir_p(dir, mode);
    if (rc < 0)
        snprintf(err, err_len, "cannot create directory %s (for %s): %s", dir, path,
                 strerror(errno));
    free(dir);
    return rc;
}

static void on_signal(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hw_server *s = arg;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            /* systemctl reload: re-read the DERP map sources and the policy file now
             * (the rest of the configuration needs a restart). */
            log_info("received SIGHUP: re-reading the DERP map sources and the policy file");
            if (s->control)
                hw_control_reload_derp_map(s->control);
            hw_policy_source_reload(s, "SIGHUP");
            continue;
        }
        log_info("received %s: shutting down", si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        s->stopping = 1;
    }
    if (s->stopping)
        hw_loop_stop(loop);
}

/* SIGINT/SIGTERM (and SIGHUP) are taken through a signalfd on the loop, so shutdown runs as plain
 * code on the main thread instead of inside a handler. The mask is set before any
 * thread starts, so every thread inherits it and only the signalfd sees them. */
static int setup_signals(struct hw_server *s, char *err, size_t err_len)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) {
        snprintf(err, err_len, "cannot block signals: %s", strerror(errno));
        return -1;
    }
    /* A client vanishing mid-write must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    s->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->signal_fd < 0) {
        snprintf(err, err_len, "cannot create a signalfd: %s", strerror(errno));
        return -1;
    }
    s->loop = hw_loop_new();
    if (!s->loop || hw_loop_add(s->loop, s->signal_fd, HW_EV_READ, on_signal, s) < 0) {
        snprintf(err, err_len, "cannot set up the event loop: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int hw_server_start(struct hw_server *s, struct hw_config *cfg, char *err, size_t err_len)
{
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->signal_fd = s->public_fd = s->admin_fd = s->policy_watch_fd = -1;
    pthread_mutex_init(&s->lock, NULL);

    if (hw_server_check_config(cfg, err, err_len) < 0 || setup_signals(s, err, err_len) < 0)
        goto fail;

    /* Data directories are private to the server; the socket's directory must let
     * through whoever the socket's own mode lets in. */
    unsigned sock_dir_mode = (cfg->unix_socket_permission & 007) ? 0755 : 0750;
    if (make_parent_dir(cfg->database_sqlite_path, 0750, err, err_len) < 0 ||
        make_parent_dir(cfg->noise_private_key_path, 0700, err, err_len) < 0 ||
        make_parent_dir(cfg->unix_socket, sock_dir_mode, err, err_len) < 0)
        goto fail;

    /* Both listeners are bound before the store is touched: a second instance or a
     * taken port stops here, having changed nothing. */
    s->admin_fd = hw_admin_socket_bind(cfg->unix_socket, cfg->unix_socket_permission,
                                       &s->admin_socket_dev, &s->admin_socket_ino, err, err_len);
    if (s->admin_fd < 0)
        goto fail;
    s->admin_socket_path = hw_strdup(cfg->unix_socket);
    char bound[80];
    s->public_fd = hw_listen_tcp(cfg->listen_addr, bound, sizeof bound, err, err_len);
    if (s->public_fd < 0)
        goto fail;
    if (cfg->derp_server_enabled && !(s->derp = hw_derp_embed_new(s, err, err_len)))
        goto fail;

    char why[512];
    s->db = hw_db_open(cfg->database_sqlite_path, why, sizeof why);
    if (!s->db) {
        snprintf(err, err_len, "cannot open database %s: %s", cfg->database_sqlite_path, why);
        goto fail;
    }
    log_info("database %s (schema version %d)", cfg->database_sqlite_path,
             hw_db_schema_version(s->db));

    int key_state = hw_key_load_or_create_private(cfg->noise_private_key_path, s->noise_private,
                                                  err, err_len);
    if (key_state < 0)
        goto fail;
    bool created = key_state == 1;
    hw_key_public(s->noise_private, s->noise_public);
    char pub_hex[65];
    hw_hex_encode(s->noise_public, 32, pub_hex);
    log_info("noise key %s (%s), public key mkey:%s", cfg->noise_private_key_path,
             created ? "created" : "loaded", pub_hex);

    s->control = hw_control_new(s, s->loop);
    if (!s->control) {
        snprintf(err, err_len, "cannot start the control server: the tailnet in %s, the DERP "
                 "map or the DNS records file failed (see the log above)", cfg->database_sqlite_path);
        goto fail;
    }
    /* A broken policy stops the start: serving without it would open what it closes. */
    if (hw_policy_source_load(s, err, err_len) < 0 || hw_policy_source_watch(s, err, err_len) < 0)
        goto fail;
    s->ts2021 = hw_ts2021_new(s->loop, s->control, s->noise_private);
    if (s->derp && hw_derp_embed_start(s->derp, s->noise_private, err, err_len) < 0)
        goto fail;

    if (hw_http_public_start(s, err, err_len) < 0 || hw_admin_api_start(s, err, err_len) < 0)
        goto fail;
    log_info("listening on %s://%s (clients use server_url %s)", cfg->tls_cert_path ? "https" : "http", bound,
             cfg->server_url ? cfg->server_url : "(not set)");
    log_info("admin API on %s (mode %04o)", cfg->unix_socket, cfg->unix_socket_permission & 0777);
    return 0;

fail:
    hw_server_stop(s);
    return -1;
}

void hw_server_run(struct hw_server *s)
{
    if (!s->stopping)
        hw_loop_run(s->loop);
}

void hw_server_stop(struct hw_server *s)
{
    /* Noise sessions and DERP clients first: their sockets are upgraded libmicrohttpd
     * connections, which must be handed back before that daemon stops. Then the listeners: requests in
     * progress finish under the lock and their changes are committed before the store
     * closes. */
    hw_ts2021_free(s->ts2021);
    s->ts2021 = NULL;
    hw_derp_embed_stop(s->derp);
    hw_http_public_stop(s);
    hw_derp_embed_free(s->derp);
    s->derp = NULL;
    hw_admin_api_stop(s);
    if (s->public_fd >= 0)
        close(s->public_fd);
    if (s->admin_fd >= 0)
        close(s->admin_fd);
    s->public_fd = s->admin_fd = -1;
    if (s->admin_socket_path) {
        /* Only the file this process created: a newer server may have replaced it. */
        struct stat st;
        if (lstat(s->admin_socket_path, &st) == 0 && (uint64_t)st.st_dev == s->admin_socket_dev &&
            (uint64_t)st.st_ino == s->admin_socket_ino)
            unlink(s->admin_socket_path);
        free(s->admin_socket_path);
        s->admin_socket_path = NULL;
    }
    hw_policy_source_unwatch(s);
    hw_control_free(s->control);
    s->control = NULL;
    if (s->db) {
        hw_db_close(s->db);
        s->db = NULL;
    }
    if (s->loop) {
        if (s->signal_fd >= 0)
            hw_loop_remove(s->loop, s->signal_fd);
        hw_loop_free(s->loop);
        s->loop = NULL;
    }
    if (s->signal_fd >= 0)
        close(s->signal_fd);
    s->signal_fd = -1;
    sodium_memzero(s->noise_private, sizeof s->noise_private);
    pthread_mutex_destroy(&s->lock);
}
