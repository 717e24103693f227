#include "client/localapi.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/tailcfg.h"

/* A connection that has not sent its request within this is dropped, so a stuck local
 * client cannot hold a slot for ever. */
#define READ_TIMEOUT_MS 5000
/* And one that does not read its answer within this. */
#define WRITE_TIMEOUT_MS 30000
#define MAX_CONNECTIONS 64

struct hwc_api_req {
    struct hwc_api *api;
    int fd;
    char *in;
    size_t in_len;
    char *out;
    size_t out_len, out_off;
    bool dispatched;
    bool gone; /* hung up while its answer was being prepared */
    struct hw_timer *timer;
    struct hwc_api_req *next, *prev;
};

struct hwc_api {
    struct hw_loop *loop;
    int fd;
    char path[108];
    hwc_api_handler handler;
    void *arg;
    struct hwc_api_req *reqs;
    size_t n_reqs;
};

static void req_free(struct hwc_api_req *r)
{
    struct hwc_api *api = r->api;
    if (r->timer)
        hw_timer_cancel(api->loop, r->timer);
    hw_loop_remove(api->loop, r->fd);
    close(r->fd);
    if (r->prev)
        r->prev->next = r->next;
    else
        api->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    api->n_reqs--;
    free(r->in);
    free(r->out);
    free(r);
}

static void req_timeout(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_api_req *r = arg;
    r->timer = NULL;
    req_free(r);
}

static void reply_now(struct hwc_api_req *r, json_t *answer);

static void dispatch(struct hwc_api_req *r)
{
    char err[TC_ERRLEN];
    json_t *req = tc_json_load((const uint8_t *)r->in, r->in_len, HWC_API_MAX_REQUEST, "request", err,
                               sizeof err);
    r->dispatched = true;
    hw_loop_modify(r->api->loop, r->fd, 0);
    if (r->timer) {
        hw_timer_cancel(r->api->loop, r->timer);
        r->timer = NULL;
    }
    const char *cmd = req ? json_string_value(json_object_get(req, "cmd")) : NULL;
    if (!req || !cmd) {
        hwc_api_reply_error(r, "bad request to the daemon: %s", req ? "no \"cmd\"" : err);
        json_decref(req);
        return;
    }
    r->api->handler(r, cmd, req, r->api->arg);
    json_decref(req);
}

static void req_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_api_req *r = arg;
    if (r->dispatched) {
        if (!r->out) {
            /* Only a hang-up can be reported here; stop watching so it does not spin. */
            hw_loop_remove(loop, fd);
            r->gone = true;
            return;
        }
        while (r->out_off < r->out_len) {
            ssize_t n = send(fd, r->out + r->out_off, r->out_len - r->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                req_free(r);
                return;
            }
            r->out_off += (size_t)n;
        }
        req_free(r);
        return;
    }
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        req_free(r);
        return;
    }
    if (r->in_len + (size_t)n > HWC_API_MAX_REQUEST) {
        hwc_api_reply_error(r, "request larger than %d bytes", HWC_API_MAX_REQUEST);
        return;
    }
    r->in = realloc(r->in, r->in_len + (size_t)n + 1);
    if (!r->in)
        abort();
    memcpy(r->in + r->in_len, buf, (size_t)n);
    r->in_len += (size_t)n;
    r->in[r->in_len] = '\0';
    char *nl = memchr(r->in, '\n', r->in_len);
    if (nl) {
        r->in_len = (size_t)(nl - r->in);
        *nl = '\0';
        dispatch(r);
    }
}

static void accept_event(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hwc_api *api = arg;
    for (;;) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
            return;
        if (api->n_reqs >= MAX_CONNECTIONS) {
            static const char busy[] = "{\"error\":\"the daemon is busy: try again\"}\n";
            ssize_t w = send(cfd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            close(cfd);
            continue;
        }
        struct hwc_api_req *r = hw_calloc(1, sizeof *r);
        r->api = api;
        r->fd = cfd;
        if (hw_loop_add(loop, cfd, HW_EV_READ, req_event, r) < 0) {
            close(cfd);
            free(r);
            continue;
        }
        r->timer = hw_timer_start(loop, READ_TIMEOUT_MS, req_timeout, r);
        r->next = api->reqs;
        if (api->reqs)
            api->reqs->prev = r;
        api->reqs = r;
        api->n_reqs++;
    }
}

struct hwc_api *hwc_api_listen(struct hw_loop *loop, const char *path, hwc_api_handler h, void *arg,
                               char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "control socket path %s is too long", path);
        return NULL;
    }
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        return NULL;
    }
    /* The caller holds the state directory's lock, so a socket file here is a leftover
     * of a daemon that died. */
    unlink(path);
    mode_t old = umask(077);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    struct hwc_api *api = hw_calloc(1, sizeof *api);
    api->loop = loop;
    api->fd = fd;
    snprintf(api->path, sizeof api->path, "%s", path);
    api->handler = h;
    api->arg = arg;
    hw_loop_add(loop, fd, HW_EV_READ, accept_event, api);
    return api;
}

static void reply_now(struct hwc_api_req *r, json_t *answer)
{
    if (r->gone) {
        json_decref(answer);
        req_free(r);
        return;
    }
    size_t len = 0;
    char *text = json_dumps(answer, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(answer);
    if (!text)
        text = hw_strdup("{\"error\":\"the daemon could not encode its answer\"}");
    len = strlen(text);
    r->out = realloc(text, len + 2);
    if (!r->out)
        abort();
    r->out[len++] = '\n';
    r->out[len] = '\0';
    r->out_len = len;
    r->dispatched = true;
    if (r->timer)
        hw_timer_cancel(r->api->loop, r->timer);
    r->timer = hw_timer_start(r->api->loop, WRITE_TIMEOUT_MS, req_timeout, r);
    hw_loop_modify(r->api->loop, r->fd, HW_EV_WRITE);
}

void hwc_api_reply(struct hwc_api_req *r, json_t *answer)
{
    reply_now(r, answer);
}

void hwc_api_reply_error(struct hwc_api_req *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string(msg));
    reply_now(r, o);
}

void hwc_api_free(struct hwc_api *api)
{
    if (!api)
        return;
    /* Answers already queued get one last chance to go out: a `down` should hear "ok". */
    for (struct hwc_api_req *r = api->reqs; r; r = r->next) {
        if (r->out && r->out_off < r->out_len) {
            ssize_t n = send(r->fd, r->out + r->out_off, r->out_len - r->out_off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;
        }
    }
    while (api->reqs)
        req_free(api->reqs);
    hw_loop_remove(api->loop, api->fd);
    close(api->fd);
    unlink(api->path);
    free(api);
}

/* ---- CLI side ---- */

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - hw_now_ms_mono();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        return rc;
    }
}

json_t *hwc_api_call(const char *sock_path, const char *statedir, json_t *request, int timeout_ms,
                     char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        if (e == ENOENT || e == ECONNREFUSED)
            snprintf(err, errlen, "no daemon running in %s: start it with `hwclient up "
                     "--login-server URL --statedir %s`", statedir, statedir);
        else
            snprintf(err, errlen, "cannot reach the daemon at %s: %s", sock_path, strerror(e));
        return NULL;
    }
    int64_t deadline = hw_now_ms_mono() + timeout_ms;
    char *text = json_dumps(request, JSON_COMPACT);
    size_t len = strlen(text);
    text = realloc(text, len + 2);
    if (!text)
        abort();
    text[len++] = '\n';
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot talk to the daemon in %s: %s", statedir, strerror(errno));
            free(text);
            close(fd);
            return NULL;
        }
        off += (size_t)n;
    }
    free(text);
    char *in = NULL;
    size_t in_len = 0, in_cap = 0;
    json_t *answer = NULL;
    for (;;) {
        int w = wait_fd(fd, POLLIN, deadline);
        if (w <= 0) {
            snprintf(err, errlen, "the daemon in %s did not answer within %d s", statedir, timeout_ms / 1000);
            break;
        }
        if (in_len + 65536 > in_cap) {
            in_cap = in_cap ? in_cap * 2 : 131072;
            in = realloc(in, in_cap + 1);
            if (!in)
                abort();
        }
        ssize_t n = read(fd, in + in_len, in_cap - in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "reading the daemon's answer: %s", strerror(errno));
            break;
        }
        if (n == 0) {
            if (in_len == 0) {
                snprintf(err, errlen, "the daemon in %s closed the connection without answering", statedir);
                break;
            }
            json_error_t je;
            answer = json_loadb(in, in_len, 0, &je);
            if (!answer || !json_is_object(answer)) {
                snprintf(err, errlen, "the daemon's answer is not a JSON object: %s", je.text);
                json_decref(answer);
                answer = NULL;
            }
            break;
        }
        in_len += (size_t)n;
        if (in_len > HWC_API_MAX_ANSWER) {
            snprintf(err, errlen, "the daemon's answer is larger than %u bytes", HWC_API_MAX_ANSWER);
            break;
        }
    }
    free(in);
    close(fd);
    if (answer) {
        const char *e = json_string_value(json_object_get(answer, "error"));
        if (e) {
            snprintf(err, errlen, "%s", e);
            json_decref(answer);
            return NULL;
        }
    }
    return answer;
}
