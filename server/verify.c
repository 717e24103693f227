#include "server/verify.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "db/db.h"
#include "proto/keys.h"
#include "server/server.h"

/* derper reads at most 4 KiB of the answer and Headscale at most 4 KiB of the request. */
#define MAX_VERIFY_BODY 4096

struct verify_request {
    size_t len;
    bool too_large;
    char body[MAX_VERIFY_BODY + 1];
};

int hw_verify_node_key(struct hw_server *s, const char *node_key)
{
    struct hw_node n = {0};
    pthread_mutex_lock(&s->lock);
    int rc = hw_db_node_get_by_node_key(s->db, node_key, &n);
    pthread_mutex_unlock(&s->lock);
    bool allow = rc == HW_DB_OK && (n.expiry == 0 || n.expiry > hw_now());
    hw_node_clear(&n);
    return allow;
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result refuse(struct MHD_Connection *conn, unsigned status, const char *why)
{
    return answer(conn, status, json_pack("{s:s}", "error", why));
}

int hw_verify_handle(struct hw_server *s, struct MHD_Connection *conn, const char *method,
                     const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
        return refuse(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
    struct verify_request *vr = *req_cls;
    if (!vr) {
        vr = hw_calloc(1, sizeof *vr);
        *req_cls = vr;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (vr->len + *upload_data_size > MAX_VERIFY_BODY)
            vr->too_large = true;
        else {
            memcpy(vr->body + vr->len, upload_data, *upload_data_size);
            vr->len += *upload_data_size;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (vr->too_large)
        return refuse(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than 4096 bytes");
    vr->body[vr->len] = '\0';
    json_error_t jerr;
    json_t *req = json_loadb(vr->body, vr->len, 0, &jerr);
    const char *key = json_string_value(json_object_get(req, "NodePublic"));
    uint8_t raw[HW_KEY_LEN];
    if (!json_is_object(req) || !key || hw_key_parse(HW_KEY_NODE, key, raw, NULL) < 0) {
        json_decref(req);
        return refuse(conn, MHD_HTTP_BAD_REQUEST,
                      "expected {\"NodePublic\":\"nodekey:<64 hex>\",\"Source\":\"<ip>\"}");
    }
    char canonical[HW_KEY_TEXT_MAX];
    hw_key_format(HW_KEY_NODE, raw, canonical);
    bool allow = hw_verify_node_key(s, canonical);
    const char *source = json_string_value(json_object_get(req, "Source"));
    if (!allow)
        log_info("verify: relay admission refused for %.20s… from %s: not a node of this tailnet",
                 canonical, source ? source : "?");
    json_decref(req);
    return answer(conn, MHD_HTTP_OK, json_pack("{s:b}", "Allow", allow));
}

void hw_verify_request_done(void *req_cls)
{
    free(req_cls);
}
