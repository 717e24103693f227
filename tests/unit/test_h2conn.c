/* HTTP/2 client and server connected back to back in memory: what one writes, the other
 * is fed. */
#include "proto/h2conn.h"
#include "tests/unit/testlib.h"

struct pipe_end {
    struct hw_h2 *peer;
    uint8_t buf[1 << 20];
    size_t len;
};

static struct pipe_end to_server, to_client;
static char last_body[8192];
static size_t last_body_len;
static int last_status, closes_server, closes_client;
static struct hw_h2_stream *held_stream;

static int write_to(struct hw_h2 *h2, const uint8_t *data, size_t len, void *arg)
{
    struct pipe_end *p = arg;
    if (p->len + len > sizeof p->buf)
        return -1;
    memcpy(p->buf + p->len, data, len);
    p->len += len;
    return 0;
}

static void on_request(struct hw_h2 *h2, struct hw_h2_stream *st, void *arg)
{
    const char *path = hw_h2_path(st);
    size_t len;
    const uint8_t *body = hw_h2_body(st, &len);
    if (strcmp(path, "/echo") == 0) {
        hw_h2_respond(st, 200, "application/json", body, len);
    } else if (strcmp(path, "/empty") == 0) {
        /* An empty 200 without a content type, as lite map updates get. */
        hw_h2_respond(st, 200, NULL, NULL, 0);
    } else if (strcmp(path, "/stream") == 0) {
        hw_h2_respond_streaming(st, 200, "application/octet-stream");
        held_stream = st;
    } else {
        hw_h2_respond(st, 404, "text/plain", "no\n", 3);
    }
}

static void on_server_close(struct hw_h2 *h2, struct hw_h2_stream *st, uint32_t code, void *arg)
{
    if (st == held_stream)
        held_stream = NULL;
    closes_server++;
}

static void on_response(struct hw_h2 *h2, struct hw_h2_stream *st, int status, void *arg)
{
    last_status = status;
}

static void on_data(struct hw_h2 *h2, struct hw_h2_stream *st, const uint8_t *d, size_t len, void *arg)
{
    if (last_body_len + len < sizeof last_body) {
        memcpy(last_body + last_body_len, d, len);
        last_body_len += len;
        last_body[last_body_len] = '\0';
    }
}

static void on_client_close(struct hw_h2 *h2, struct hw_h2_stream *st, uint32_t code, void *arg)
{
    closes_client++;
}

static int shuttle(struct hw_h2 *server, struct hw_h2 *client)
{
    for (int round = 0; round < 50; round++) {
        if (hw_h2_pump(client) < 0 || hw_h2_pump(server) < 0)
            return -1;
        if (!to_server.len && !to_client.len)
            return 0;
        if (to_server.len) {
            size_t n = to_server.len;
            to_server.len = 0;
            if (hw_h2_feed(server, to_server.buf, n) < 0)
                return -1;
        }
        if (to_client.len) {
            size_t n = to_client.len;
            to_client.len = 0;
            if (hw_h2_feed(client, to_client.buf, n) < 0)
                return -1;
        }
    }
    return 0;
}

static const struct hw_h2_callbacks server_cb = {
    .on_request = on_request, .on_close = on_server_close, .write = write_to};
static const struct hw_h2_callbacks client_cb = {
    .on_response = on_response, .on_data = on_data, .on_close = on_client_close, .write = write_to};

static void reset_state(void)
{
    to_server.len = to_client.len = 0;
    last_body_len = 0;
    last_body[0] = '\0';
    last_status = closes_client = closes_server = 0;
    held_stream = NULL;
}

static void request_response_round_trip(void)
{
    reset_state();
    struct hw_h2 *server = hw_h2_new_server(&server_cb, &to_client, 1024);
    struct hw_h2 *client = hw_h2_new_client(&client_cb, &to_server);
    CHECK(hw_h2_request(client, "POST", "/echo", "ctl", NULL, "{\"a\":1}", 7, NULL) != NULL, "request");
    CHECK(shuttle(server, client) == 0, "shuttle: %s / %s", hw_h2_last_error(server), hw_h2_last_error(client));
    CHECK_INT(last_status, 200);
    CHECK_STR(last_body, "{\"a\":1}");
    CHECK_INT(closes_client, 1);
    CHECK_INT(closes_server, 1);
    hw_h2_free(client);
    hw_h2_free(server);
}

static void empty_response_without_content_type(void)
{
    reset_state();
    struct hw_h2 *server = hw_h2_new_server(&server_cb, &to_client, 1024);
    struct hw_h2 *client = hw_h2_new_client(&client_cb, &to_server);
    hw_h2_request(client, "POST", "/empty", "ctl", NULL, "{}", 2, NULL);
    CHECK(shuttle(server, client) == 0, "shuttle");
    CHECK_INT(last_status, 200);
    CHECK_INT(last_body_len, 0);
    CHECK_INT(closes_client, 1);
    hw_h2_free(client);
    hw_h2_free(server);
}

static void oversize_body_gets_413(void)
{
    reset_state();
    struct hw_h2 *server = hw_h2_new_server(&server_cb, &to_client, 16);
    struct hw_h2 *client = hw_h2_new_client(&client_cb, &to_server);
    char big[100];
    memset(big, 'x', sizeof big);
    hw_h2_request(client, "POST", "/echo", "ctl", NULL, big, sizeof big, NULL);
    CHECK(shuttle(server, client) == 0, "shuttle");
    CHECK_INT(last_status, 413);
    hw_h2_free(client);
    hw_h2_free(server);
}

static void streaming_response_delivers_pushes_in_order(void)
{
    reset_state();
    struct hw_h2 *server = hw_h2_new_server(&server_cb, &to_client, 1024);
    struct hw_h2 *client = hw_h2_new_client(&client_cb, &to_server);
    hw_h2_request(client, "POST", "/stream", "ctl", NULL, "{}", 2, NULL);
    CHECK(shuttle(server, client) == 0, "shuttle");
    CHECK(held_stream != NULL, "stream held");
    CHECK_INT(last_status, 200);
    for (int i = 0; i < 3; i++) {
        char msg[16];
        int n = snprintf(msg, sizeof msg, "m%d;", i);
        struct hw_sbuf *b = hw_sbuf_copy(msg, (size_t)n);
        hw_h2_push(held_stream, b);
        hw_sbuf_unref(b);
        CHECK(shuttle(server, client) == 0, "shuttle");
    }
    CHECK_STR(last_body, "m0;m1;m2;");
    CHECK_INT(closes_client, 0);
    /* The server frees with the stream open: the application hears of it once. */
    hw_h2_free(server);
    CHECK_INT(closes_server, 1);
    hw_h2_free(client);
    CHECK_INT(closes_client, 1);
}

static void many_concurrent_streams(void)
{
    reset_state();
    struct hw_h2 *server = hw_h2_new_server(&server_cb, &to_client, 1024);
    struct hw_h2 *client = hw_h2_new_client(&client_cb, &to_server);
    for (int i = 0; i < 50; i++)
        hw_h2_request(client, "POST", "/echo", "ctl", NULL, "x", 1, NULL);
    CHECK(shuttle(server, client) == 0, "shuttle");
    CHECK_INT(closes_client, 50);
    CHECK_INT(last_body_len, 50);
    hw_h2_free(client);
    hw_h2_free(server);
}

static void garbage_is_a_protocol_error(void)
{
    reset_state();
    struct hw_h2 *server = hw_h2_new_server(&server_cb, &to_client, 1024);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(hw_h2_feed(server, (const uint8_t *)junk, sizeof junk - 1) < 0, "junk accepted");
    CHECK(hw_h2_last_error(server)[0] != '\0', "no error text");
    hw_h2_free(server);
}

int main(void)
{
    RUN(request_response_round_trip);
    RUN(empty_response_without_content_type);
    RUN(oversize_body_gets_413);
    RUN(streaming_response_delivers_pushes_in_order);
    RUN(many_concurrent_streams);
    RUN(garbage_is_a_protocol_error);
    return TEST_MAIN_END();
}
