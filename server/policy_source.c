/* Where the access policy comes from (policy.mode): a file, re-read on SIGHUP and when
 * it changes, or the store, written by `hwctl policy set`. Every text goes through
 * hw_policy_source_validate before it is put in force, so a broken policy is refused
 * as a whole and the one in force stays. */
#include "server/policy_source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "server/control.h"
#include "server/policy.h"

/* Editors write a file in several steps: reload once they are done. */
#define RELOAD_SETTLE_MS 50

bool hw_policy_mode_database(const struct hw_config *cfg)
{
    return cfg->policy_mode && strcmp(cfg->policy_mode, "database") == 0;
}

struct hw_policy *hw_policy_source_validate(struct hw_db *db, const char *text, size_t len,
                                            const char *source, char *err, size_t err_len)
{
    struct hw_policy *p = hw_policy_parse(text, len, source, err, err_len);
    if (!p)
        return NULL;
    struct hw_namespace *spaces = NULL;
    size_t n = 0;
    if (hw_db_namespace_list(db, &spaces, &n) != HW_DB_OK) {
        snprintf(err, err_len, "%s: cannot list the namespaces to check the names it uses: %s", source,
                 hw_db_errmsg(db));
        hw_policy_free(p);
        return NULL;
    }
    const char **names = hw_calloc(n + 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
        names[i] = spaces[i].name;
    int rc = hw_policy_check_names(p, names, n, err, err_len);
    free(names);
    free(spaces);
    if (rc < 0) {
        hw_policy_free(p);
        return NULL;
    }
    return p;
}

/* The configured text: 0 with *text NULL when there is no policy. */
static int read_source(struct hw_server *s, char **text, size_t *len, const char **source, char *err,
                       size_t err_len)
{
    *text = NULL;
    *len = 0;
    if (hw_policy_mode_database(s->cfg)) {
        *source = "policy (database)";
        int rc = hw_db_policy_get(s->db, text, NULL);
        if (rc == HW_DB_NOT_FOUND)
            return 0;
        if (rc != HW_DB_OK) {
            snprintf(err, err_len, "cannot read the policy from the database: %s", hw_db_errmsg(s->db));
            return -1;
        }
        *len = strlen(*text);
        return 0;
    }
    *source = s->cfg->policy_path;
    if (!s->cfg->policy_path || !*s->cfg->policy_path)
        return 0;
    *text = hw_read_file(s->cfg->policy_path, len);
    if (!*text) {
        snprintf(err, err_len, "%s: cannot read the policy file: %s", s->cfg->policy_path, strerror(errno));
        return -1;
    }
    return 0;
}

int hw_policy_source_load(struct hw_server *s, char *err, size_t err_len)
{
    char *text;
    size_t len;
    const char *source = NULL;
    if (read_source(s, &text, &len, &source, err, err_len) < 0)
        return -1;
    if (!text) {
        log_info("no policy: namespaces are the boundary (all within a namespace, nothing across)");
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    struct hw_policy *p = hw_policy_source_validate(s->db, text, len, source, err, err_len);
    int rc = p ? hw_control_set_policy(s->control, p, text, err, err_len) : -1;
    pthread_mutex_unlock(&s->lock);
    if (!p)
        free(text);
    if (rc == 0)
        log_info("policy %s loaded", source);
    return rc;
}

void hw_policy_source_reload(struct hw_server *s, const char *why)
{
    if (!s->control || hw_policy_mode_database(s->cfg) || !s->cfg->policy_path || !*s->cfg->policy_path)
        return;
    char err[1024];
    char *text;
    size_t len;
    const char *source = NULL;
    if (read_source(s, &text, &len, &source, err, sizeof err) < 0) {
        log_error("policy reload (%s): %s; the policy in force stays", why, err);
        return;
    }
    pthread_mutex_lock(&s->lock);
    const char *cur = hw_control_policy_text(s->control);
    if (cur && strlen(cur) == len && memcmp(cur, text, len) == 0) {
        pthread_mutex_unlock(&s->lock);
        free(text);
        log_debug("policy reload (%s): %s unchanged", why, source);
        return;
    }
    struct hw_policy *p = hw_policy_source_validate(s->db, text, len, source, err, sizeof err);
    int rc = -1;
    if (p)
        rc = hw_control_set_policy(s->control, p, text, err, sizeof err);
    else
        free(text);
    pthread_mutex_unlock(&s->lock);
    if (rc < 0)
        log_error("policy reload (%s) refused, the policy in force stays: %s", why, err);
    else
        log_info("policy reload (%s): %s is in force", why, source);
}

/* ---- watching the file ---- */

static void reload_after_settling(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_server *s = arg;
    s->policy_reload_timer = NULL;
    hw_policy_source_reload(s, "the file changed");
}

static void on_inotify(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hw_server *s = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    const char *base = strrchr(s->cfg->policy_path, '/');
    base = base ? base + 1 : s->cfg->policy_path;
    bool ours = false;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len && strcmp(ev->name, base) == 0)
                ours = true;
            p += sizeof *ev + ev->len;
        }
    }
    if (ours && !s->policy_reload_timer)
        s->policy_reload_timer = hw_timer_start(loop, RELOAD_SETTLE_MS, reload_after_settling, s);
}

int hw_policy_source_watch(struct hw_server *s, char *err, size_t err_len)
{
    s->policy_watch_fd = -1;
    if (hw_policy_mode_database(s->cfg) || !s->cfg->policy_path || !*s->cfg->policy_path)
        return 0;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_len, "cannot watch the policy file: inotify: %s", strerror(errno));
        return -1;
    }
    /* The directory, not the file: editors and config managers replace the file. */
    char *dir = hw_dirname(s->cfg->policy_path);
    int wd = inotify_add_watch(fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB);
    if (wd < 0) {
        snprintf(err, err_len, "cannot watch %s for changes of the policy file: %s", dir, strerror(errno));
        free(dir);
        close(fd);
        return -1;
    }
    free(dir);
    if (hw_loop_add(s->loop, fd, HW_EV_READ, on_inotify, s) < 0) {
        snprintf(err, err_len, "cannot watch the policy file: %s", strerror(errno));
        close(fd);
        return -1;
    }
    s->policy_watch_fd = fd;
    return 0;
}

void hw_policy_source_unwatch(struct hw_server *s)
{
    if (s->policy_reload_timer && s->loop)
        hw_timer_cancel(s->loop, s->policy_reload_timer);
    s->policy_reload_timer = NULL;
    if (s->policy_watch_fd >= 0) {
        if (s->loop)
            hw_loop_remove(s->loop, s->policy_watch_fd);
        close(s->policy_watch_fd);
    }
    s->policy_watch_fd = -1;
}
