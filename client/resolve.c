#include "client/resolve.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/loop.h"
#include "common/util.h"

struct hwc_resolve {
    struct hw_loop *loop;
    char *host, *port;
    int family, socktype;
    hwc_resolve_cb cb;
    void *arg;
    bool thread;          /* a helper thread runs (or ran and was not joined yet) */
    pthread_t tid;
    int pipe[2];
    struct hw_timer *literal; /* answers a literal on the next turn */
    struct addrinfo *res;
    int rc;
};

static void *resolver_main(void *arg)
{
    struct hwc_resolve *r = arg;
    struct addrinfo hints = {.ai_family = r->family, .ai_socktype = r->socktype,
                             .ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV};
    r->rc = getaddrinfo(r->host, r->port, &hints, &r->res);
    char b = 1;
    ssize_t n = write(r->pipe[1], &b, 1);
    (void)n;
    return NULL;
}

static void release(struct hwc_resolve *r)
{
    if (r->res)
        freeaddrinfo(r->res);
    free(r->host);
    free(r->port);
    free(r);
}

static void deliver(struct hwc_resolve *r)
{
    struct addrinfo *res = r->res;
    int rc = r->rc;
    r->res = NULL;
    hwc_resolve_cb cb = r->cb;
    void *arg = r->arg;
    release(r);
    cb(res, res ? 0 : (rc ? rc : EAI_NONAME), arg);
}

static void join(struct hwc_resolve *r)
{
    hw_loop_remove(r->loop, r->pipe[0]);
    pthread_join(r->tid, NULL);
    r->thread = false;
    close(r->pipe[0]);
    close(r->pipe[1]);
}

static void thread_done(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_resolve *r = arg;
    join(r);
    deliver(r);
}

static void literal_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_resolve *r = arg;
    r->literal = NULL;
    deliver(r);
}

struct hwc_resolve *hwc_resolve_start(struct hw_loop *loop, const char *host, const char *port,
                                      int family, int socktype, hwc_resolve_cb cb, void *arg,
                                      int *gai_err)
{
    struct hwc_resolve *r = hw_calloc(1, sizeof *r);
    r->loop = loop;
    r->host = hw_strdup(host);
    r->port = hw_strdup(port);
    r->family = family;
    r->socktype = socktype;
    r->cb = cb;
    r->arg = arg;
    r->pipe[0] = r->pipe[1] = -1;
    struct addrinfo hints = {.ai_family = family, .ai_socktype = socktype,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    r->rc = getaddrinfo(host, port, &hints, &r->res);
    if (r->rc == 0 || r->rc == EAI_FAMILY || r->rc == EAI_ADDRFAMILY) {
        /* a literal (possibly of the other family: that is an answer too, "none") */
        r->literal = hw_timer_start(loop, 0, literal_cb, r);
        return r;
    }
    r->res = NULL;
    if (pipe2(r->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        release(r);
        *gai_err = EAI_SYSTEM;
        return NULL;
    }
    if (pthread_create(&r->tid, NULL, resolver_main, r) != 0) {
        close(r->pipe[0]);
        close(r->pipe[1]);
        release(r);
        *gai_err = EAI_SYSTEM;
        return NULL;
    }
    r->thread = true;
    hw_loop_add(loop, r->pipe[0], HW_EV_READ, thread_done, r);
    return r;
}

void hwc_resolve_cancel(struct hwc_resolve *r)
{
    if (!r)
        return;
    if (r->literal)
        hw_timer_cancel(r->loop, r->literal);
    if (r->thread)
        join(r);
    release(r);
}
