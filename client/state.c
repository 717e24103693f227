#include "client/state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "proto/keys.h"

int hwc_state_paths(struct hwc_state *s, const char *statedir, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->lock_fd = -1;
    const char *dir = statedir;
    char buf[HWC_PATH_MAX];
    if (!dir || !*dir)
        dir = getenv("HWCLIENT_STATEDIR");
    if (!dir || !*dir) {
        const char *home = getenv("HOME");
        if (geteuid() == 0)
            dir = "/var/lib/hwclient";
        else if (home && *home) {
            snprintf(buf, sizeof buf, "%s/.local/state/hwclient", home);
            dir = buf;
        } else {
            snprintf(err, errlen, "no state directory: pass --statedir DIR");
            return -1;
        }
    }
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    if (n + 32 >= sizeof s->dir) {
        snprintf(err, errlen, "state directory path too long");
        return -1;
    }
    memcpy(s->dir, dir, n);
    snprintf(s->machine_key, sizeof s->machine_key, "%s/machine.key", s->dir);
    snprintf(s->node_key, sizeof s->node_key, "%s/node.key", s->dir);
    snprintf(s->sock, sizeof s->sock, "%s/hwclient.sock", s->dir);
    snprintf(s->lock, sizeof s->lock, "%s/hwclient.lock", s->dir);
    if (strlen(s->sock) >= HWC_SOCK_PATH_MAX) {
        snprintf(err, errlen, "state directory %s: path too long for its control socket "
                 "(at most %d bytes): choose a shorter --statedir", s->dir, HWC_SOCK_PATH_MAX - 15);
        return -1;
    }
    return 0;
}

int hwc_state_lock(struct hwc_state *s, char *err, size_t errlen)
{
    if (hw_mkdir_p(s->dir, 0700) < 0) {
        snprintf(err, errlen, "cannot create state directory %s: %s", s->dir, strerror(errno));
        return -1;
    }
    int fd = open(s->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", s->lock, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(err, errlen, "a daemon is already running in %s%s%s%s: stop it with "
                 "`hwclient down --statedir %s`", s->dir, pid[0] ? " (pid " : "", pid,
                 pid[0] ? ")" : "", s->dir);
        close(fd);
        return -1;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        snprintf(err, errlen, "cannot write %s: %s", s->lock, strerror(errno));
        close(fd);
        return -1;
    }
    s->lock_fd = fd;
    return 0;
}

void hwc_state_unlock(struct hwc_state *s)
{
    if (s->lock_fd >= 0) {
        if (ftruncate(s->lock_fd, 0) < 0) {
            /* a stale pid in the file is harmless: the lock itself is what counts */
        }
        close(s->lock_fd);
        s->lock_fd = -1;
    }
}

int hwc_state_machine_key(struct hwc_state *s, uint8_t priv[32], char *err, size_t errlen)
{
    return hw_key_load_or_create_private(s->machine_key, priv, err, errlen);
}

int hwc_state_load_node_key(struct hwc_state *s, uint8_t priv[32], char *err, size_t errlen)
{
    if (access(s->node_key, F_OK) < 0 && errno == ENOENT)
        return 1;
    return hw_key_load_private(s->node_key, priv, err, errlen) < 0 ? -1 : 0;
}

int hwc_state_save_node_key(struct hwc_state *s, const uint8_t priv[32], char *err, size_t errlen)
{
    return hw_key_save_private(s->node_key, priv, err, errlen);
}

int hwc_state_forget_node_key(struct hwc_state *s, char *err, size_t errlen)
{
    if (unlink(s->node_key) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove %s: %s", s->node_key, strerror(errno));
        return -1;
    }
    return 0;
}
