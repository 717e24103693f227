/* hwprobe: sends a control server what a broken or hostile client would, over a real
 * ts2021 session, and reports how the server reacted. Used by
 * tests/integration/test_control.py; every mode ends within its deadline.
 *
 *   hwprobe URL post PATH BODY   a valid POST inside Noise + HTTP/2; prints
 *                                "HTTP <status>" and the body, exit 0
 *   hwprobe URL h2-garbage       valid Noise, then bytes that are not HTTP/2 frames
 *   hwprobe URL bad-record       valid Noise, then a record whose tag does not verify
 *   hwprobe URL huge-record      valid Noise, then a record header claiming 65535 bytes
 *
 * The last three expect the server to end the session: they print "closed: <how>" and
 * exit 0 when it does within 5 s, or "still open" and exit 1.
 *
 * The machine key is fresh for each run, unless HWPROBE_MACHINE_KEY names a private key
 * file ("privkey:<hex>", created when missing): several runs are then the same machine,
 * as a client's key rotation or re-login needs. */

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include <sodium.h>

#include "client/conn.h"
#include "client/url.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/keys.h"
#include "proto/tailcfg.h"

#define DEADLINE_MS 10000
#define CLOSE_WAIT_MS 5000

struct probe {
    struct hw_loop *loop;
    const char *mode, *path, *body;
    struct hwc_conn *conn;
    int status;
    char *resp;
    size_t resp_len;
    int exit_code;
    bool sent;
    struct hw_timer *deadline;
};

static void finish(struct probe *p, int code)
{
    p->exit_code = code;
    hw_loop_stop(p->loop);
}

static void on_response(struct hwc_req *r, int status, void *arg)
{
    struct probe *p = arg;
    p->status = status;
}

static void on_data(struct hwc_req *r, const uint8_t *data, size_t len, void *arg)
{
    struct probe *p = arg;
    if (p->resp_len + len > TC_MAX_BODY)
        return;
    p->resp = realloc(p->resp, p->resp_len + len + 1);
    if (!p->resp)
        abort();
    memcpy(p->resp + p->resp_len, data, len);
    p->resp_len += len;
    p->resp[p->resp_len] = '\0';
}

static void on_close(struct hwc_req *r, uint32_t code, void *arg)
{
    struct probe *p = arg;
    if (code != 0 && p->status == 0) {
        printf("reset: HTTP/2 code %u\n", code);
        finish(p, 1);
        return;
    }
    printf("HTTP %d\n%s\n", p->status, p->resp ? p->resp : "");
    finish(p, 0);
}

static const struct hwc_req_handler handler = {on_response, on_data, on_close};

static void on_deadline(struct hw_loop *loop, struct hw_timer *t, void *arg);

static void on_ready(struct hwc_conn *c, void *arg)
{
    struct probe *p = arg;
    if (strcmp(p->mode, "post") == 0) {
        if (!hwc_conn_post(c, p->path, p->body, strlen(p->body), &handler, p)) {
            printf("error: the request could not be sent\n");
            finish(p, 1);
        }
        return;
    }
    uint8_t junk[256];
    if (strcmp(p->mode, "h2-garbage") == 0) {
        /* A frame header with an unknown type would be ignored; a DATA frame on stream 0
         * is a connection error every HTTP/2 server must act on, and the rest is noise. */
        memset(junk, 0, sizeof junk);
        junk[2] = 16;  /* length 16 */
        junk[3] = 0;   /* DATA */
        randombytes_buf(junk + 25, sizeof junk - 25);
        hwc_conn_send_raw(c, junk, sizeof junk, true);
    } else if (strcmp(p->mode, "bad-record") == 0) {
        junk[0] = 4;
        junk[1] = 0;
        junk[2] = 64;
        randombytes_buf(junk + 3, 64);
        hwc_conn_send_raw(c, junk, 67, false);
    } else if (strcmp(p->mode, "huge-record") == 0) {
        junk[0] = 4;
        junk[1] = 0xff;
        junk[2] = 0xff;
        randombytes_buf(junk + 3, sizeof junk - 3);
        hwc_conn_send_raw(c, junk, sizeof junk, false);
    }
    p->sent = true;
    hw_timer_cancel(p->loop, p->deadline);
    p->deadline = hw_timer_start(p->loop, CLOSE_WAIT_MS, on_deadline, p);
}

/* A GOAWAY ends HTTP/2 but not necessarily the socket: the server must close that too. */
static bool tcp_closed(int fd, int wait_ms)
{
    int64_t deadline = hw_now_ms_mono() + wait_ms;
    uint8_t buf[4096];
    for (;;) {
        int64_t left = deadline - hw_now_ms_mono();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return true;
    }
}

static void on_fail(struct hwc_conn *c, const char *why, void *arg)
{
    struct probe *p = arg;
    if (p->sent) {
        int fd = hwc_conn_fd(c);
        if (fd >= 0 && !tcp_closed(fd, CLOSE_WAIT_MS)) {
            printf("not closed: %s, but the TCP connection stayed open %d ms\n", why, CLOSE_WAIT_MS);
            finish(p, 1);
            return;
        }
        printf("closed: %s\n", why);
        finish(p, 0);
    } else {
        printf("error: %s\n", why);
        finish(p, 1);
    }
}

static void on_deadline(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct probe *p = arg;
    p->deadline = NULL;
    printf(p->sent ? "still open %d ms after the bad input\n" : "error: no session within %d ms\n",
           p->sent ? CLOSE_WAIT_MS : DEADLINE_MS);
    finish(p, 1);
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[2], "post") == 0 && argc != 5)) {
        fprintf(stderr, "usage: hwprobe URL post PATH BODY | h2-garbage | bad-record | huge-record\n");
        return 2;
    }
    if (sodium_init() < 0)
        return 1;
    hw_log_set_level(HW_LOG_WARN);
    struct hwc_url url;
    char err[300];
    if (hwc_url_parse(argv[1], &url, err, sizeof err) < 0) {
        fprintf(stderr, "hwprobe: %s\n", err);
        return 2;
    }
    struct probe p = {.mode = argv[2], .exit_code = 1};
    if (strcmp(p.mode, "post") == 0) {
        p.path = argv[3];
        p.body = argv[4];
    } else if (strcmp(p.mode, "h2-garbage") != 0 && strcmp(p.mode, "bad-record") != 0 &&
               strcmp(p.mode, "huge-record") != 0) {
        fprintf(stderr, "hwprobe: unknown mode %s\n", p.mode);
        return 2;
    }
    p.loop = hw_loop_new();
    uint8_t machine[32];
    const char *key_file = getenv("HWPROBE_MACHINE_KEY");
    if (key_file && *key_file) {
        if (hw_key_load_or_create_private(key_file, machine, err, sizeof err) < 0) {
            fprintf(stderr, "hwprobe: %s\n", err);
            hw_loop_free(p.loop);
            return 2;
        }
    } else {
        hw_key_generate(machine);
    }
    struct hwc_conn_callbacks cb = {on_ready, on_fail};
    p.conn = hwc_conn_dial(p.loop, &url, machine, TC_CAPVER, &cb, &p);
    p.deadline = hw_timer_start(p.loop, DEADLINE_MS, on_deadline, &p);
    hw_loop_run(p.loop);
    if (p.deadline)
        hw_timer_cancel(p.loop, p.deadline);
    hwc_conn_free(p.conn);
    free(p.resp);
    hw_loop_free(p.loop);
    fflush(stdout);
    return p.exit_code;
}
