/* hwclient's own parts: the login server URL, the strict HTTP/1.1 head parser, the dial
 * against servers that answer wrongly (each must end in a message naming the problem),
 * the control socket protocol, and `hwclient status` output. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "client/conn.h"
#include "client/http1.h"
#include "client/localapi.h"
#include "client/status.h"
#include "client/url.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/keys.h"
#include "proto/netmap.h"
#include "tests/unit/testlib.h"
#include "tests/unit/tmpdir.h"

/* ---- URL ---- */

static void url_forms(void)
{
    struct hwc_url u;
    char err[200];
    CHECK(hwc_url_parse("http://127.0.0.1:8080", &u, err, sizeof err) == 0, "%s", err);
    CHECK_STR(u.host, "127.0.0.1");
    CHECK_STR(u.port, "8080");
    CHECK_STR(u.authority, "127.0.0.1:8080");
    CHECK_STR(u.base, "http://127.0.0.1:8080");
    CHECK(!u.https, "http");
    CHECK(hwc_url_parse("http://ctl.example.com/", &u, err, sizeof err) == 0, "%s", err);
    CHECK_STR(u.port, "80");
    CHECK_STR(u.authority, "ctl.example.com");
    CHECK(hwc_url_parse("http://[::1]:9000", &u, err, sizeof err) == 0, "%s", err);
    CHECK_STR(u.host, "::1");
    CHECK_STR(u.authority, "[::1]:9000");
    CHECK(hwc_url_parse("https://ctl.example.com", &u, err, sizeof err) == 0, "%s", err);
    CHECK(u.https, "https");
    CHECK_STR(u.port, "443");
    CHECK_STR(u.authority, "ctl.example.com");
}

static void url_refusals(void)
{
    static const struct {
        const char *url, *why;
    } bad[] = {
        {"ftp://x", "expected a URL starting with http://"},
        {"127.0.0.1:8080", "expected a URL starting with http://"},
        {"http://", "no host"},
        {"http:///x", "no host"},
        {"http://host/path", "expected no path"},
        {"http://host?x=1", "expected no path"},
        {"http://host:0", "invalid port"},
        {"http://host:65536", "invalid port"},
        {"http://host:12a", "invalid port"},
        {"http://host:", "invalid port"},
        {"http://user@host", "user information"},
        {"http://[::1", "unterminated IPv6"},
        {"http://[::1]x", "unexpected text after the IPv6"},
        {"http://ho st", "invalid character"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++) {
        struct hwc_url u;
        char err[200] = "";
        CHECK(hwc_url_parse(bad[i].url, &u, err, sizeof err) < 0, "%s accepted", bad[i].url);
        CHECK(strstr(err, bad[i].why) != NULL, "%s: %s", bad[i].url, err);
    }
}

/* ---- HTTP/1.1 heads ---- */

static int parse(const char *text, struct hwc_http_resp *r, char *err)
{
    return hwc_http_parse_head((const uint8_t *)text, strlen(text), r, err, 200);
}

static void http_heads(void)
{
    static struct hwc_http_resp r;
    char err[200];
    const char *ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n"
                     "Connection: Upgrade, keep-alive\r\nContent-Length:  7 \r\n\r\nrest";
    CHECK_INT(parse(ok, &r, err), 1);
    CHECK_INT(r.status, 101);
    CHECK_STR(r.reason, "Switching Protocols");
    CHECK_INT(r.head_len, strlen(ok) - 4);
    CHECK_STR(hwc_http_header(&r, "upgrade"), "tailscale-control-protocol");
    CHECK(hwc_http_has_token(hwc_http_header(&r, "CONNECTION"), "upgrade"), "token");
    CHECK(!hwc_http_has_token("upgrade-not, close", "upgrade"), "no partial token");
    CHECK_INT(r.content_length, 7);
    CHECK(hwc_http_header(&r, "X-Missing") == NULL, "absent header");
    CHECK_INT(parse("HTTP/1.1 200\r\n\r\n", &r, err), 1);
    CHECK_STR(r.reason, "");
    CHECK_INT(r.content_length, -1);
    /* incomplete, then complete */
    CHECK_INT(parse("HTTP/1.1 200 OK\r\nContent-Le", &r, err), 0);
    CHECK_INT(parse("HTT", &r, err), 0);
}

static void http_head_refusals(void)
{
    static struct hwc_http_resp r;
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"SSH-2.0-OpenSSH_9.2\r\n", "did not answer with HTTP"},
        {"HTTP/2 200\r\n\r\n", "malformed status line"},
        {"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"},
        {"HTTP/1.1 200OK\r\n\r\n", "malformed status line"},
        {"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "folded header"},
        {"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header line"},
        {"HTTP/1.1 200 OK\r\n: empty\r\n\r\n", "malformed header line"},
        {"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "invalid character in a header name"},
        {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999\r\n\r\n", "invalid Content-Length"},
        {"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n", "control character"},
    };
    char err[200];
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        CHECK(parse(bad[i].text, &r, err) < 0, "accepted: %s", bad[i].text);
        CHECK(strstr(err, bad[i].why) != NULL, "%s -> %s", bad[i].text, err);
    }
    /* more headers than allowed */
    char *many = hw_strdup("HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < HWC_HTTP_MAX_HEADERS + 1; i++) {
        char *next = hw_sprintf("%sX-%d: v\r\n", many, i);
        free(many);
        many = next;
    }
    char *full = hw_sprintf("%s\r\n", many);
    free(many);
    int rc = parse(full, &r, err);
    free(full);
    CHECK(rc < 0 && strstr(err, "more than"), "too many headers: %d %s", rc, err);
    /* a head that never ends is refused at the cap, not read for ever */
    size_t big = HWC_HTTP_HEAD_MAX + 10;
    uint8_t *buf = hw_malloc(big);
    memset(buf, 'a', big);
    memcpy(buf, "HTTP/1.1 200 OK\r\nX: ", 20);
    rc = hwc_http_parse_head(buf, big, &r, err, sizeof err);
    free(buf);
    CHECK(rc < 0 && strstr(err, "larger than"), "endless head: %d %s", rc, err);
    char ex[16];
    hwc_http_excerpt((const uint8_t *)"\r\nbad\x01thing here\nsecond", 28, ex, sizeof ex);
    CHECK_STR(ex, "bad?thing here");
}

/* ---- dialing servers that answer wrongly ---- */

struct fake {
    int listen_fd;
    int port;
    const char *key_answer;     /* answer to GET /key (raw bytes) */
    size_t key_len;
    const char *upgrade_answer; /* answer to POST /ts2021, NULL = close */
    size_t upgrade_len;
    pthread_t th;
};

static void read_head(int fd)
{
    char buf[8192];
    size_t have = 0;
    while (have < sizeof buf - 1) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n <= 0)
            return;
        have += (size_t)n;
        buf[have] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            return;
    }
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    for (int i = 0; i < 2; i++) {
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        read_head(fd);
        const char *a = i == 0 ? f->key_answer : f->upgrade_answer;
        size_t len = i == 0 ? f->key_len : f->upgrade_len;
        if (a && write(fd, a, len) < 0) {
            /* the client went away: fine */
        }
        close(fd);
        if (i == 0 && !f->upgrade_answer && !f->upgrade_len)
            break;
    }
    return NULL;
}

static void fake_start(struct fake *f)
{
    f->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(f->listen_fd, (struct sockaddr *)&sa, sizeof sa);
    listen(f->listen_fd, 4);
    socklen_t sl = sizeof sa;
    getsockname(f->listen_fd, (struct sockaddr *)&sa, &sl);
    f->port = ntohs(sa.sin_port);
    pthread_create(&f->th, NULL, fake_main, f);
}

static void fake_stop(struct fake *f)
{
    shutdown(f->listen_fd, SHUT_RDWR);
    pthread_join(f->th, NULL);
    close(f->listen_fd);
}

struct dial_result {
    struct hw_loop *loop;
    char why[400];
    bool ready;
};

static void dial_ready(struct hwc_conn *c, void *arg)
{
    struct dial_result *d = arg;
    d->ready = true;
    hw_loop_stop(d->loop);
}

static void dial_fail(struct hwc_conn *c, const char *why, void *arg)
{
    struct dial_result *d = arg;
    snprintf(d->why, sizeof d->why, "%s", why);
    hw_loop_stop(d->loop);
}

static void dial_guard(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    hw_loop_stop(loop);
}

/* Dials the fake server and returns the failure text ("" when it did not fail). */
static void dial_fake(struct fake *f, struct dial_result *d)
{
    fake_start(f);
    memset(d, 0, sizeof *d);
    d->loop = hw_loop_new();
    char text[64], err[200];
    snprintf(text, sizeof text, "http://127.0.0.1:%d", f->port);
    struct hwc_url url;
    hwc_url_parse(text, &url, err, sizeof err);
    uint8_t machine[32];
    hw_key_generate(machine);
    struct hwc_conn_callbacks cb = {dial_ready, dial_fail};
    struct hwc_conn *c = hwc_conn_dial(d->loop, &url, machine, 133, &cb, d);
    struct hw_timer *guard = hw_timer_start(d->loop, 5000, dial_guard, NULL);
    hw_loop_run(d->loop);
    hwc_conn_free(c);
    hw_timer_cancel(d->loop, guard);
    hw_loop_free(d->loop);
    fake_stop(f);
}

#define KEY_OK "HTTP/1.1 200 OK\r\nContent-Length: 175\r\n\r\n" \
    "{\"legacyPublicKey\":\"mkey:0000000000000000000000000000000000000000000000000000000000000000\"," \
    "\"publicKey\":\"mkey:1111111111111111111111111111111111111111111111111111111111111111\"}"

#define UPGRADE_101 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n" \
    "Connection: upgrade\r\n\r\n"

static void dial_refusals(void)
{
    static const struct {
        const char *key, *upgrade, *why;
    } cases[] = {
        {"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such\r\n", NULL,
         "/key: HTTP 404: no such"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", NULL, "is this a Tailscale control server?"},
        {"HTTP/1.1 200 OK\r\n\r\n{\"publicKey\":\"mkey:zz\"}", NULL, "no valid publicKey"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 85\r\n\r\n"
         "{\"publicKey\":\"mkey:0000000000000000000000000000000000000000000000000000000000000000\"}",
         NULL, "control server is too old; no noise key"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", NULL,
         "chunked answers are not supported"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"pub", NULL,
         "closed the connection in the middle of the answer"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", NULL, "answer larger than 65536 bytes"},
        {"", NULL, "closed the connection without answering"},
        {KEY_OK, "HTTP/1.1 400 Bad Request\r\nContent-Length: 48\r\n\r\n"
                 "missing or invalid X-Tailscale-Handshake header\n",
         "refused the upgrade: HTTP 400: missing or invalid X-Tailscale-Handshake header"},
        {KEY_OK, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
         "101 answer without Upgrade: tailscale-control-protocol"},
        {KEY_OK, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n"
                 "Connection: upgrade\r\n\r\n",
         "closed the connection before its response"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        struct fake f = {.key_answer = cases[i].key, .key_len = strlen(cases[i].key),
                         .upgrade_answer = cases[i].upgrade,
                         .upgrade_len = cases[i].upgrade ? strlen(cases[i].upgrade) : 0};
        struct dial_result d;
        dial_fake(&f, &d);
        CHECK(!d.ready, "case %zu: ready", i);
        CHECK(strstr(d.why, cases[i].why) != NULL, "case %zu: %s", i, d.why);
    }
    /* the Noise error message (0x03, length, text) instead of a response: shown as is */
    static const char refused[] = UPGRADE_101 "\x03\x00\x05nope!";
    struct fake fe = {.key_answer = KEY_OK, .key_len = strlen(KEY_OK), .upgrade_answer = refused,
                      .upgrade_len = sizeof refused - 1};
    struct dial_result de;
    dial_fake(&fe, &de);
    CHECK(strstr(de.why, "server error") && strstr(de.why, "nope!"), "%s", de.why);
    /* nobody listening: the address is named */
    struct fake f = {0};
    fake_start(&f);
    int port = f.port;
    fake_stop(&f);
    struct dial_result d = {.loop = hw_loop_new()};
    char text[64], err[200];
    snprintf(text, sizeof text, "http://127.0.0.1:%d", port);
    struct hwc_url url;
    hwc_url_parse(text, &url, err, sizeof err);
    uint8_t machine[32];
    hw_key_generate(machine);
    struct hwc_conn_callbacks cb = {dial_ready, dial_fail};
    struct hwc_conn *c = hwc_conn_dial(d.loop, &url, machine, 133, &cb, &d);
    hw_loop_run(d.loop);
    hwc_conn_free(c);
    hw_loop_free(d.loop);
    CHECK(strstr(d.why, "cannot connect to http://127.0.0.1:") && strstr(d.why, "refused"), "%s", d.why);
}

/* ---- control socket ---- */

struct api_side {
    struct hw_loop *loop;
    struct hwc_api *api;
    int requests;
};

static void api_handler(struct hwc_api_req *req, const char *cmd, json_t *request, void *arg)
{
    struct api_side *s = arg;
    s->requests++;
    if (strcmp(cmd, "echo") == 0)
        hwc_api_reply(req, json_pack("{s:s, s:O}", "cmd", cmd, "request", request));
    else if (strcmp(cmd, "stop") == 0) {
        hwc_api_reply(req, json_pack("{s:b}", "ok", 1));
        hw_loop_stop(s->loop);
    } else
        hwc_api_reply_error(req, "unknown command \"%s\"", cmd);
}

static void *api_loop(void *arg)
{
    struct api_side *s = arg;
    hw_loop_run(s->loop);
    return NULL;
}

static void control_socket(void)
{
    struct tmpdir t;
    CHECK(tmpdir_make(&t, "api") == 0, "tmpdir");
    const char *dir = t.path;
    char *path = hw_sprintf("%s/c.sock", dir);
    struct api_side s = {.loop = hw_loop_new()};
    char err[300];
    s.api = hwc_api_listen(s.loop, path, api_handler, &s, err, sizeof err);
    CHECK(s.api, "%s", err);
    pthread_t th;
    pthread_create(&th, NULL, api_loop, &s);
    json_t *req = json_pack("{s:s, s:i}", "cmd", "echo", "n", 7);
    json_t *a = hwc_api_call(path, dir, req, 5000, err, sizeof err);
    json_decref(req);
    bool echo_ok = a && json_integer_value(json_object_get(json_object_get(a, "request"), "n")) == 7;
    json_decref(a);
    req = json_pack("{s:s}", "cmd", "nope");
    a = hwc_api_call(path, dir, req, 5000, err, sizeof err);
    json_decref(req);
    bool error_ok = !a && strcmp(err, "unknown command \"nope\"") == 0;
    /* a request without a command, then one that is not JSON: answered, not crashing */
    req = json_pack("{s:s}", "x", "y");
    a = hwc_api_call(path, dir, req, 5000, err, sizeof err);
    json_decref(req);
    bool nocmd_ok = !a && strstr(err, "no \"cmd\"");
    req = json_pack("{s:s}", "cmd", "stop");
    a = hwc_api_call(path, dir, req, 5000, err, sizeof err);
    json_decref(req);
    json_decref(a);
    pthread_join(th, NULL);
    hwc_api_free(s.api);
    hw_loop_free(s.loop);
    char msg[400];
    req = json_pack("{s:s}", "cmd", "status");
    a = hwc_api_call(path, dir, req, 1000, msg, sizeof msg);
    json_decref(req);
    free(path);
    tmpdir_remove(&t);
    CHECK(echo_ok, "echo");
    CHECK(error_ok, "error answer: %s", err);
    CHECK(nocmd_ok, "no cmd");
    CHECK_INT(s.requests, 3);
    CHECK(!a && strstr(msg, "no daemon running in ") && strstr(msg, "start it with `hwclient up"), "%s", msg);
}

/* ---- status ---- */

static const char *MAP =
    "{\"Node\":{\"ID\":1,\"Name\":\"box1.example.com.\",\"User\":1,"
    "\"Key\":\"nodekey:0101010101010101010101010101010101010101010101010101010101010101\","
    "\"Addresses\":[\"100.64.0.1/32\",\"fd7a:115c:a1e0::1/128\"],\"Hostinfo\":{\"Hostname\":\"box1\",\"OS\":\"linux\"},"
    "\"MachineAuthorized\":true},"
    "\"Peers\":["
    "{\"ID\":2,\"Name\":\"zeta.example.com.\",\"User\":2,\"Online\":true,"
    "\"Key\":\"nodekey:0202020202020202020202020202020202020202020202020202020202020202\","
    "\"DiscoKey\":\"discokey:0202020202020202020202020202020202020202020202020202020202020202\","
    "\"Addresses\":[\"100.64.0.2/32\"],\"Hostinfo\":{\"Hostname\":\"zeta\",\"OS\":\"windows\"}},"
    "{\"ID\":3,\"Name\":\"alpha.example.com.\",\"User\":1,\"Online\":false,"
    "\"LastSeen\":\"2000-01-01T00:00:00Z\",\"KeyExpiry\":\"2000-01-01T00:00:00Z\","
    "\"Key\":\"nodekey:0303030303030303030303030303030303030303030303030303030303030303\","
    "\"DiscoKey\":\"discokey:0303030303030303030303030303030303030303030303030303030303030303\","
    "\"Addresses\":[\"100.64.0.3/32\"],\"Hostinfo\":{\"Hostname\":\"alpha\",\"OS\":\"linux\"}},"
    "{\"ID\":4,\"Name\":\"other.elsewhere.net.\",\"User\":3,\"Online\":true,"
    "\"Key\":\"nodekey:0404040404040404040404040404040404040404040404040404040404040404\","
    "\"DiscoKey\":\"discokey:0404040404040404040404040404040404040404040404040404040404040404\","
    "\"Addresses\":[\"100.64.0.4/32\"],\"Hostinfo\":{\"Hostname\":\"other\",\"OS\":\"macOS\"}}],"
    "\"UserProfiles\":[{\"ID\":1,\"LoginName\":\"alice@example.com\",\"DisplayName\":\"Alice\"},"
    "{\"ID\":2,\"LoginName\":\"bob\",\"DisplayName\":\"Bob\"}]}";

static char *print_to_string(const json_t *st, int64_t now, int *rc)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    *rc = hwc_status_print(f, st, now);
    fclose(f);
    return buf;
}

static void status_output(void)
{
    struct tc_netmap nm;
    tc_netmap_init(&nm);
    char err[TC_ERRLEN];
    CHECK(tc_netmap_apply_json(&nm, MAP, strlen(MAP), err, sizeof err) == 0, "%s", err);
    int64_t now = 946684800 + 7200; /* two hours after the peer was last seen */
    struct hwc_status_in in = {.backend_state = "Running", .nm = &nm, .connected = true, .now = now};
    json_t *st = hwc_status_json(&in);
    tc_netmap_clear(&nm);
    CHECK_STR(json_string_value(json_object_get(st, "MagicDNSSuffix")), "example.com");
    const json_t *self = json_object_get(st, "Self");
    CHECK_STR(json_string_value(json_array_get(json_object_get(self, "TailscaleIPs"), 1)), "fd7a:115c:a1e0::1");
    const json_t *p3 = json_object_get(json_object_get(st, "Peer"),
                                       "nodekey:0303030303030303030303030303030303030303030303030303030303030303");
    CHECK(json_is_true(json_object_get(p3, "Expired")), "peer 3 expired");
    int rc;
    char *out = print_to_string(st, now, &rc);
    CHECK_INT(rc, 0);
    const char *want =
        "100.64.0.1  box1                 alice@  linux    -\n"
        "100.64.0.3  alpha                alice@  linux    offline, last seen 2h ago; expired\n"
        "100.64.0.4  other.elsewhere.net  3       macOS    -\n"
        "100.64.0.2  zeta                 bob     windows  -\n";
    bool same = strcmp(out, want) == 0;
    if (!same)
        printf("# got:\n%s", out);
    free(out);
    CHECK(same, "status table");

    /* paths as the daemon merges them from magicsock, in tailscale's words */
    json_t *peers = json_object_get(st, "Peer");
    const char *key;
    json_t *ps;
    json_object_foreach(peers, key, ps) {
        const char *host = json_string_value(json_object_get(ps, "HostName"));
        if (strcmp(host, "zeta") == 0) {
            json_object_set_new(ps, "Active", json_true());
            json_object_set_new(ps, "CurAddr", json_string("203.0.113.2:41641"));
            json_object_set_new(ps, "Relay", json_string("hw"));
            json_object_set_new(ps, "TxBytes", json_integer(1200));
            json_object_set_new(ps, "RxBytes", json_integer(340));
        } else if (json_is_true(json_object_get(ps, "Online"))) {
            json_object_set_new(ps, "Active", json_true());
            json_object_set_new(ps, "CurAddr", json_string(""));
            json_object_set_new(ps, "Relay", json_string("hw"));
        }
    }
    out = print_to_string(st, now, &rc);
    json_decref(st);
    want = "100.64.0.1  box1                 alice@  linux    -\n"
           "100.64.0.3  alpha                alice@  linux    offline, last seen 2h ago; expired\n"
           "100.64.0.4  other.elsewhere.net  3       macOS    active; relay \"hw\"\n"
           "100.64.0.2  zeta                 bob     windows  active; direct 203.0.113.2:41641, tx 1200 rx 340\n";
    same = strcmp(out, want) == 0;
    if (!same)
        printf("# got:\n%s", out);
    free(out);
    CHECK(same, "status table with paths");

    struct hwc_status_in wait = {.backend_state = "NeedsLogin", .auth_url = "http://x/register/abc", .now = now};
    st = hwc_status_json(&wait);
    out = print_to_string(st, now, &rc);
    json_decref(st);
    same = strcmp(out, "Logged out.\nLog in at: http://x/register/abc\n") == 0;
    CHECK(rc == 1 && same, "NeedsLogin: %d %s", rc, out);
    free(out);
    const char *health[] = {"not connected to the control server http://x: refused"};
    struct hwc_status_in starting = {.backend_state = "Starting", .health = health, .n_health = 1, .now = now};
    st = hwc_status_json(&starting);
    out = print_to_string(st, now, &rc);
    json_decref(st);
    same = strcmp(out, "Starting: no network map yet.\n\n# Health check:\n"
                       "#     - not connected to the control server http://x: refused\n") == 0;
    CHECK(rc == 0 && same, "Starting: %d %s", rc, out);
    free(out);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    hw_log_set_level(HW_LOG_ERROR);
    RUN(url_forms);
    RUN(url_refusals);
    RUN(http_heads);
    RUN(http_head_refusals);
    RUN(dial_refusals);
    RUN(control_socket);
    RUN(status_output);
    return TEST_MAIN_END();
}
