/* Forwarding, masquerade and the bypass mark of a subnet router / exit node: see hostnet.h. */
#include "client/hostnet.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/log.h"

/* ---- the bypass mark ---- */

static bool bypass_on;

void hwc_bypass_mark_enable(bool on) { bypass_on = on; }

void hwc_bypass_mark(int fd)
{
    if (!bypass_on || fd < 0)
        return;
    unsigned mark = HWC_BYPASS_MARK;
    static bool warned;
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) < 0 && !warned) {
        warned = true;
        log_warn("SO_MARK 0x%x on hwclient's sockets: %s (needs CAP_NET_ADMIN); with an exit node its own "
                 "traffic would loop into the tunnel", mark, strerror(errno));
    }
}

/* ---- running iptables: argv only, no shell ---- */

/* Runs argv[0] from PATH with stdout discarded; 0 when it exits 0. Its stderr's first
 * line goes to err (when err is given). */
static int run_argv(char *const argv[], char *err, size_t errlen)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        if (err)
            snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        if (err)
            snprintf(err, errlen, "fork: %s", strerror(errno));
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        /* the daemon blocks SIGINT/SIGTERM for its signalfd; the child must not */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        dup2(pipefd[1], 2);
        execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    char buf[512];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(pipefd[0], buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == sizeof buf - 1) {
            char sink[256];
            while (read(pipefd[0], sink, sizeof sink) > 0)
                ;
            break;
        }
    }
    close(pipefd[0]);
    buf[got] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && err) {
        size_t off = 0;
        for (int i = 0; argv[i] && off < errlen; i++)
            off += (size_t)snprintf(err + off, errlen - off, "%s%s", i ? " " : "`", argv[i]);
        if (off < errlen)
            snprintf(err + off, errlen - off, "`: %s", buf[0] ? buf : "failed");
    }
    return ok ? 0 : -1;
}

#define MAXARGS 24

/* iptables or ip6tables with -w (wait for the xtables lock) and the arguments. */
static int ipt(bool v6, char *err, size_t errlen, ...)
{
    char *argv[MAXARGS];
    int n = 0;
    argv[n++] = v6 ? "ip6tables" : "iptables";
    argv[n++] = "-w";
    va_list ap;
    va_start(ap, errlen);
    char *a;
    while ((a = va_arg(ap, char *)) && n < MAXARGS - 1)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return run_argv(argv, err, errlen);
}

#define FWD_CHAIN "hw-forward"
#define NAT_CHAIN "hw-postrouting"

/* Hooks out (every copy, should there be several), then the chains flushed and deleted.
 * Quiet: most of it is absent most of the time. */
static void remove_rules(bool v6)
{
    for (int i = 0; i < 8 && ipt(v6, NULL, 0, "-D", "FORWARD", "-j", FWD_CHAIN, (char *)NULL) == 0; i++)
        ;
    for (int i = 0; i < 8 && ipt(v6, NULL, 0, "-t", "nat", "-D", "POSTROUTING", "-j", NAT_CHAIN, (char *)NULL) == 0; i++)
        ;
    if (ipt(v6, NULL, 0, "-F", FWD_CHAIN, (char *)NULL) == 0)
        ipt(v6, NULL, 0, "-X", FWD_CHAIN, (char *)NULL);
    if (ipt(v6, NULL, 0, "-t", "nat", "-F", NAT_CHAIN, (char *)NULL) == 0)
        ipt(v6, NULL, 0, "-t", "nat", "-X", NAT_CHAIN, (char *)NULL);
}

/* tailscaled's ts-forward / ts-postrouting: mark what comes in on the TUN device in
 * FORWARD (POSTROUTING cannot see the input interface), accept it, masquerade it on the
 * way out; keep spoofed tailnet sources out of the tunnel. */
static int add_rules(bool v6, const char *tun, bool snat, char *err, size_t errlen)
{
    char setmark[32], mark[32];
    snprintf(setmark, sizeof setmark, "0x%x/0x%x", HWC_SUBNET_ROUTE_MARK, HWC_FWMARK_MASK);
    snprintf(mark, sizeof mark, "0x%x/0x%x", HWC_SUBNET_ROUTE_MARK, HWC_FWMARK_MASK);
    char *t = (char *)tun;
    if (ipt(v6, err, errlen, "-N", FWD_CHAIN, (char *)NULL) < 0 ||
        ipt(v6, err, errlen, "-t", "nat", "-N", NAT_CHAIN, (char *)NULL) < 0 ||
        ipt(v6, err, errlen, "-A", FWD_CHAIN, "-i", t, "-j", "MARK", "--set-mark", setmark, (char *)NULL) < 0 ||
        ipt(v6, err, errlen, "-A", FWD_CHAIN, "-m", "mark", "--mark", mark, "-j", "ACCEPT", (char *)NULL) < 0)
        return -1;
    if (!v6 && ipt(v6, err, errlen, "-A", FWD_CHAIN, "-o", t, "-s", "100.64.0.0/10", "-j", "DROP", (char *)NULL) < 0)
        return -1;
    if (ipt(v6, err, errlen, "-A", FWD_CHAIN, "-o", t, "-j", "ACCEPT", (char *)NULL) < 0)
        return -1;
    if (snat && ipt(v6, err, errlen, "-t", "nat", "-A", NAT_CHAIN, "-m", "mark", "--mark", mark, "-j",
                    "MASQUERADE", (char *)NULL) < 0)
        return -1;
    if (ipt(v6, err, errlen, "-I", "FORWARD", "1", "-j", FWD_CHAIN, (char *)NULL) < 0 ||
        ipt(v6, err, errlen, "-t", "nat", "-I", "POSTROUTING", "1", "-j", NAT_CHAIN, (char *)NULL) < 0)
        return -1;
    return 0;
}

/* ---- forwarding sysctls ---- */

static const char *const sysctl_paths[2] = {
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
};

static int read_sysctl(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int v = -1;
    if (fscanf(f, "%d", &v) != 1)
        v = -1;
    fclose(f);
    return v;
}

static int write_sysctl(const char *path, int v)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int rc = fprintf(f, "%d\n", v) < 0 ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

struct hwc_router {
    int saved[2];   /* the value before us, -1 when we did not change it */
    bool v6_rules;
    char *saved_path;
};

/* The saved file: one line per sysctl we changed, "PATH VALUE". */
static void restore_saved_file(const char *saved_path)
{
    FILE *f = fopen(saved_path, "r");
    if (!f)
        return;
    char path[128];
    int v;
    while (fscanf(f, "%127s %d", path, &v) == 2) {
        for (int i = 0; i < 2; i++)
            if (strcmp(path, sysctl_paths[i]) == 0) {
                if (write_sysctl(path, v) == 0)
                    log_info("router: %s back to %d (left by an earlier run)", path, v);
            }
    }
    fclose(f);
    unlink(saved_path);
}

void hwc_router_cleanup(const char *saved_path)
{
    remove_rules(false);
    remove_rules(true);
    if (saved_path)
        restore_saved_file(saved_path);
}

struct hwc_router *hwc_router_start(const char *tun, bool snat, const char *saved_path, char *err, size_t errlen)
{
    hwc_router_cleanup(saved_path);
    struct hwc_router *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->saved[0] = r->saved[1] = -1;
    r->saved_path = saved_path ? strdup(saved_path) : NULL;
    FILE *save = saved_path ? fopen(saved_path, "w") : NULL;
    for (int i = 0; i < 2; i++) {
        int old = read_sysctl(sysctl_paths[i]);
        if (old < 0) {
            if (i == 0) {
                snprintf(err, errlen, "reading %s: %s", sysctl_paths[i], strerror(errno));
                goto fail;
            }
            log_warn("router: no IPv6 forwarding (%s: %s)", sysctl_paths[i], strerror(errno));
            continue;
        }
        if (old == 1)
            continue;
        if (write_sysctl(sysctl_paths[i], 1) < 0) {
            if (i == 0) {
                snprintf(err, errlen, "setting %s to 1: %s (needs root)", sysctl_paths[i], strerror(errno));
                goto fail;
            }
            log_warn("router: setting %s to 1: %s", sysctl_paths[i], strerror(errno));
            continue;
        }
        r->saved[i] = old;
        if (save) {
            fprintf(save, "%s %d\n", sysctl_paths[i], old);
            fflush(save);
        }
    }
    if (save)
        fclose(save);
    save = NULL;
    if (add_rules(false, tun, snat, err, errlen) < 0)
        goto fail;
    char err6[300];
    if (add_rules(true, tun, snat, err6, sizeof err6) < 0) {
        log_warn("router: IPv6 forwarding rules: %s; IPv6 is forwarded without them", err6);
        remove_rules(true);
    } else {
        r->v6_rules = true;
    }
    log_info("router: forwarding on, chains %s and %s%s for %s", FWD_CHAIN, NAT_CHAIN,
             snat ? " (masquerade)" : " (no SNAT: --snat-subnet-routes=false)", tun);
    return r;
fail:
    if (save)
        fclose(save);
    hwc_router_stop(r);
    return NULL;
}

void hwc_router_stop(struct hwc_router *r)
{
    if (!r)
        return;
    remove_rules(false);
    remove_rules(true);
    for (int i = 0; i < 2; i++)
        if (r->saved[i] >= 0 && write_sysctl(sysctl_paths[i], r->saved[i]) < 0)
            log_warn("router: putting %s back to %d: %s", sysctl_paths[i], r->saved[i], strerror(errno));
    if (r->saved_path)
        unlink(r->saved_path);
    free(r->saved_path);
    free(r);
}
