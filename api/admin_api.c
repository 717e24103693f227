#include "api/admin_api.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api/admin_internal.h"
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "server/httputil.h"

#define ADMIN_BODY_LIMIT (64 * 1024)
/* A policy may be 1 MiB (HW_POLICY_MAX_BYTES); as a JSON string its quotes and line
 * ends are escaped. */
#define ADMIN_POLICY_BODY_LIMIT (4 * 1024 * 1024)

static size_t body_limit(const char *url)
{
    return strncmp(url, "/api/v1/policy", 14) == 0 ? ADMIN_POLICY_BODY_LIMIT : ADMIN_BODY_LIMIT;
}
/* Admins and scripts, not clients: a few connections, each request quick. */
#define ADMIN_CONNECTION_LIMIT 64
#define ADMIN_IDLE_TIMEOUT_S 60
/* Every tag travels in each peer's netmap entry: keep the set small. */
#define ADMIN_MAX_TAGS 64

/* ---- the socket ---- */

static int fill_sockaddr(const char *path, struct sockaddr_un *sa, char *err, size_t err_len)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof sa->sun_path) {
        snprintf(err, err_len, "unix_socket path \"%s\" must be 1 to %zu bytes long", path,
                 sizeof sa->sun_path - 1);
        return -1;
    }
    memcpy(sa->sun_path, path, n + 1);
    return 0;
}

/* 1: something accepts connections on path; 0: nobody (stale file); -1: cannot tell. */
static int socket_is_live(const struct sockaddr_un *sa, int *why)
{
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0) {
        *why = errno;
        return -1;
    }
    int rc = connect(probe, (const struct sockaddr *)sa, sizeof *sa);
    int e = errno;
    close(probe);
    if (rc == 0 || e == EAGAIN || e == EINPROGRESS)
        return 1; /* EAGAIN: a live listener whose backlog is full */
    if (e == ECONNREFUSED || e == ENOENT)
        return 0;
    *why = e;
    return -1;
}

int hw_admin_socket_bind(const char *path, unsigned mode, uint64_t *dev, uint64_t *ino,
                         char *err, size_t err_len)
{
    struct sockaddr_un sa;
    if (fill_sockaddr(path, &sa, err, err_len) < 0)
        return -1;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, err_len, "unix_socket %s exists and is not a socket: move it away or "
                     "set unix_socket to another path", path);
            return -1;
        }
        int why = 0;
        int live = socket_is_live(&sa, &why);
        if (live > 0) {
            snprintf(err, err_len, "another headwater is already serving on %s", path);
            return -1;
        }
        if (live < 0) {
            snprintf(err, err_len, "cannot check whether %s is in use: %s", path, strerror(why));
            return -1;
        }
        log_info("removing stale admin socket %s (nothing answers on it)", path);
        if (unlink(path) < 0 && errno != ENOENT) {
            snprintf(err, err_len, "cannot remove stale socket %s: %s", path, strerror(errno));
            return -1;
        }
    }

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_len, "cannot create the admin socket: %s", strerror(errno));
        return -1;
    }
    /* The file must never be reachable with looser permissions than configured, not even
     * between bind and chmod. umask is process-wide, which is fine here: this runs
     * before any thread is started. */
    mode_t old_umask = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    int bind_errno = errno;
    umask(old_umask);
    if (rc < 0) {
        close(fd);
        if (bind_errno == EADDRINUSE)
            snprintf(err, err_len, "another headwater is already serving on %s", path);
        else
            snprintf(err, err_len, "cannot create the admin socket %s: %s", path,
                     strerror(bind_errno));
        return -1;
    }
    if (chmod(path, mode & 0777) < 0 || listen(fd, 32) < 0 || stat(path, &st) < 0) {
        int e = errno;
        unlink(path);
        close(fd);
        snprintf(err, err_len, "cannot set up the admin socket %s: %s", path, strerror(e));
        return -1;
    }
    *dev = (uint64_t)st.st_dev;
    *ino = (uint64_t)st.st_ino;
    return fd;
}

/* ---- answers and field helpers (admin_internal.h) ---- */

void admin_ok(struct admin_req *r, unsigned status, json_t *answer)
{
    json_decref(r->answer);
    r->status = status;
    r->answer = answer ? answer : json_object();
}

void admin_fail(struct admin_req *r, unsigned status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_decref(r->answer);
    r->status = status;
    r->answer = json_pack("{s:s}", "error", msg);
}

void admin_fail_db(struct admin_req *r, int rc, const char *what)
{
    switch (rc) {
    case HW_DB_NOT_FOUND:
        admin_fail(r, MHD_HTTP_NOT_FOUND, "%s not found", what);
        break;
    case HW_DB_EXISTS:
        admin_fail(r, MHD_HTTP_CONFLICT, "%s already exists", what);
        break;
    case HW_DB_CONFLICT:
        admin_fail(r, MHD_HTTP_CONFLICT, "%s: %s", what, hw_db_errmsg(r->db));
        break;
    case HW_DB_INVALID:
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "%s: %s", what, hw_db_errmsg(r->db));
        break;
    default:
        admin_fail(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "store error: %s", hw_db_errmsg(r->db));
        break;
    }
}

bool admin_begin(struct admin_req *r)
{
    if (hw_db_begin(r->db) == HW_DB_OK)
        return true;
    admin_fail(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "store error: %s", hw_db_errmsg(r->db));
    return false;
}

bool admin_commit(struct admin_req *r)
{
    if (hw_db_commit(r->db) == HW_DB_OK)
        return true;
    admin_fail(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "store error: %s; nothing was changed",
               hw_db_errmsg(r->db));
    hw_db_rollback(r->db);
    return false;
}

void admin_rollback(struct admin_req *r) { hw_db_rollback(r->db); }

bool admin_commit_or_fail(struct admin_req *r, int rc, const char *what)
{
    if (rc == HW_DB_OK)
        return admin_commit(r);
    admin_rollback(r);
    admin_fail_db(r, rc, what);
    return false;
}

static json_t *field(struct admin_req *r, const char *name)
{
    json_t *v = json_object_get(r->body, name);
    return json_is_null(v) ? NULL : v;
}

/* What a field reader returns for an absent field: 0, or -1 (400) when it was required. */
static int field_absent(struct admin_req *r, const char *name, bool required)
{
    if (!required)
        return 0;
    admin_fail(r, MHD_HTTP_BAD_REQUEST, "missing field \"%s\"", name);
    return -1;
}

int admin_field_string(struct admin_req *r, const char *name, bool required, const char **out)
{
    json_t *v = field(r, name);
    if (!v)
        return field_absent(r, name, required);
    if (!json_is_string(v)) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "field \"%s\" must be a string", name);
        return -1;
    }
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "field \"%s\" must not contain NUL characters", name);
        return -1;
    }
    if (required && !*s) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "field \"%s\" must not be empty", name);
        return -1;
    }
    *out = s;
    return 1;
}

int admin_field_bool(struct admin_req *r, const char *name, bool *out)
{
    json_t *v = field(r, name);
    if (!v)
        return 0;
    if (!json_is_boolean(v)) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "field \"%s\" must be true or false", name);
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

int admin_field_id(struct admin_req *r, const char *name, bool required, int64_t *out)
{
    json_t *v = field(r, name);
    if (!v)
        return field_absent(r, name, required);
    if (!json_is_integer(v) || json_integer_value(v) <= 0) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "field \"%s\" must be a positive integer", name);
        return -1;
    }
    *out = (int64_t)json_integer_value(v);
    return 1;
}

int admin_field_string_array(struct admin_req *r, const char *name, json_t **out)
{
    json_t *v = field(r, name);
    if (!v)
        return 0;
    bool ok = json_is_array(v);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        if (!json_is_string(item))
            ok = false;
    }
    if (!ok) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "field \"%s\" must be an array of strings", name);
        return -1;
    }
    *out = v;
    return 1;
}

static bool valid_tag(const char *tag)
{
    if (strncmp(tag, "tag:", 4) != 0)
        return false;
    size_t n = strlen(tag + 4);
    if (n < 1 || n > 63)
        return false;
    for (const char *p = tag + 4; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
            return false;
    }
    return true;
}

int admin_field_tags(struct admin_req *r, const char *name, bool required, char **tags_json)
{
    json_t *arr = NULL;
    int rc = admin_field_string_array(r, name, &arr);
    if (rc < 0)
        return -1;
    *tags_json = NULL;
    if (rc == 0)
        return field_absent(r, name, required);
    size_t n = json_array_size(arr);
    if (n > ADMIN_MAX_TAGS) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST, "too many tags (%zu): at most %d", n, ADMIN_MAX_TAGS);
        return -1;
    }
    const char **tags = hw_calloc(n, sizeof *tags);
    for (size_t i = 0; i < n; i++) {
        tags[i] = json_string_value(json_array_get(arr, i));
        if (!valid_tag(tags[i]) || strlen(tags[i]) != json_string_length(json_array_get(arr, i))) {
            admin_fail(r, MHD_HTTP_BAD_REQUEST,
                       "invalid tag \"%.100s\": tags look like tag:name, the name made of a-z, "
                       "0-9, '-' and '_' (1 to 63 characters)", tags[i]);
            free(tags);
            return -1;
        }
    }
    /* A set in the admin's order: duplicates dropped, the first one kept. */
    json_t *out = json_array();
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(tags[i], tags[j]) == 0;
        if (!seen)
            json_array_append_new(out, json_string(tags[i]));
    }
    free(tags);
    if (json_array_size(out) > 0)
        *tags_json = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    return 1;
}

const char *admin_query(struct admin_req *r, const char *name)
{
    const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
    return v && *v ? v : NULL;
}

int admin_field_expiration(struct admin_req *r, const char *name, const char *dflt,
                           int64_t *expires_at)
{
    const char *text = dflt;
    if (admin_field_string(r, name, false, &text) < 0)
        return -1;
    int64_t ms;
    if (hw_parse_duration_ms(text, &ms) < 0) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST,
                   "invalid %s \"%s\": expected a duration like 30m, 24h, 1h30m or 90d, or 0 "
                   "for never", name, text);
        return -1;
    }
    /* Beyond a century the sum below could overflow; nobody means that but "never". */
    if (ms > 100LL * 365 * 86400 * 1000) {
        admin_fail(r, MHD_HTTP_BAD_REQUEST,
                   "invalid %s \"%s\": longer than 100 years; use 0 for never", name, text);
        return -1;
    }
    /* Round up so "1s" never expires in the past of the same second. */
    *expires_at = ms == 0 ? 0 : hw_now() + (ms + 999) / 1000;
    return 1;
}

json_t *admin_str(const char *s)
{
    json_t *v = json_string(s ? s : "");
    if (v)
        return v;
    char *copy = hw_strdup(s);
    for (char *p = copy; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    }
    v = json_string(copy);
    free(copy);
    return v;
}

json_t *admin_time(int64_t unix_seconds)
{
    if (unix_seconds == 0)
        return json_null();
    char buf[40];
    hw_format_time(unix_seconds, buf, sizeof buf);
    return json_string(buf);
}

json_t *admin_json_array(const char *text)
{
    json_t *v = text && *text ? json_loads(text, 0, NULL) : NULL;
    if (!json_is_array(v)) {
        json_decref(v);
        return json_array();
    }
    return v;
}

bool admin_namespace_by_name(struct admin_req *r, const char *name, struct hw_namespace *out)
{
    int rc = hw_db_namespace_get_by_name(r->db, name, out);
    if (rc == HW_DB_OK)
        return true;
    if (rc == HW_DB_NOT_FOUND)
        admin_fail(r, MHD_HTTP_NOT_FOUND, "namespace \"%s\" not found", name);
    else
        admin_fail_db(r, rc, "namespace");
    return false;
}

bool admin_begin_in_namespace(struct admin_req *r, const char *name, struct hw_namespace *out)
{
    if (!admin_begin(r))
        return false;
    if (admin_namespace_by_name(r, name, out))
        return true;
    admin_rollback(r);
    return false;
}

bool admin_node_by_id(struct admin_req *r, int64_t id, struct hw_node *out)
{
    int rc = hw_db_node_get(r->db, id, out);
    if (rc == HW_DB_OK)
        return true;
    if (rc == HW_DB_NOT_FOUND)
        admin_fail(r, MHD_HTTP_NOT_FOUND, "node %lld not found", (long long)id);
    else
        admin_fail_db(r, rc, "node");
    return false;
}

/* ---- health ---- */

static void admin_health(struct admin_req *r)
{
    int version = hw_db_schema_version(r->db);
    if (version < 0) {
        admin_fail(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "store error: %s", hw_db_errmsg(r->db));
        return;
    }
    admin_ok(r, MHD_HTTP_OK, json_pack("{s:s, s:s, s:i}", "status", "ok", "version", HW_VERSION,
                                       "schema_version", version));
}

/* ---- HTTP ---- */

static const struct {
    const char *method;
    const char *path;
    admin_handler fn;
} routes[] = {
    {"GET", "/api/v1/health", admin_health},
    {"GET", "/api/v1/namespaces", admin_namespaces_list},
    {"POST", "/api/v1/namespaces", admin_namespaces_create},
    {"POST", "/api/v1/namespaces/rename", admin_namespaces_rename},
    {"POST", "/api/v1/namespaces/destroy", admin_namespaces_destroy},
    {"GET", "/api/v1/nodes", admin_nodes_list},
    {"POST", "/api/v1/nodes/register", admin_nodes_register},
    {"POST", "/api/v1/nodes/delete", admin_nodes_delete},
    {"POST", "/api/v1/nodes/expire", admin_nodes_expire},
    {"POST", "/api/v1/nodes/rename", admin_nodes_rename},
    {"POST", "/api/v1/nodes/move", admin_nodes_move},
    {"POST", "/api/v1/nodes/tag", admin_nodes_tag},
    {"GET", "/api/v1/preauthkeys", admin_preauthkeys_list},
    {"POST", "/api/v1/preauthkeys", admin_preauthkeys_create},
    {"POST", "/api/v1/preauthkeys/expire", admin_preauthkeys_expire},
    {"GET", "/api/v1/routes", admin_routes_list},
    {"POST", "/api/v1/routes/enable", admin_routes_enable},
    {"POST", "/api/v1/routes/disable", admin_routes_disable},
    {"GET", "/api/v1/policy", admin_policy_get},
    {"POST", "/api/v1/policy", admin_policy_set},
    {"POST", "/api/v1/policy/check", admin_policy_check},
    {"GET", "/api/v1/apikeys", admin_apikeys_list},
    {"POST", "/api/v1/apikeys", admin_apikeys_create},
    {"POST", "/api/v1/apikeys/expire", admin_apikeys_expire},
};

/* Per request: the body as it arrives. */
struct admin_upload {
    char *buf;
    size_t len;
    bool too_large;
};

static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *fmt,
                                   ...) __attribute__((format(printf, 3, 4)));
static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *fmt,
                                   ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return hw_http_reply_json(conn, status, json_pack("{s:s}", "error", msg), NULL);
}

static enum MHD_Result reply_405(struct MHD_Connection *conn, const char *method, const char *url,
                                 const char *allow)
{
    char msg[300];
    snprintf(msg, sizeof msg, "method %s not allowed on %s (use %s)", method, url, allow);
    json_t *answer = json_pack("{s:s}", "error", msg);
    char *text = json_dumps(answer, JSON_COMPACT);
    json_decref(answer);
    if (!text)
        return MHD_NO;
    char *body = hw_sprintf("%s\n", text);
    free(text);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result dispatch(struct hw_server *s, struct MHD_Connection *conn, const char *url,
                                const char *method, struct admin_upload *up)
{
    admin_handler fn = NULL;
    bool path_known = false;
    char allow[32] = "";
    for (size_t i = 0; i < HW_ARRAY_LEN(routes); i++) {
        if (strcmp(routes[i].path, url) != 0)
            continue;
        path_known = true;
        if (strcmp(routes[i].method, method) == 0) {
            fn = routes[i].fn;
            break;
        }
        snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                 allow[0] ? ", " : "", routes[i].method);
    }
    if (!fn && path_known)
        return reply_405(conn, method, url, allow);
    if (!fn)
        return reply_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint: %s %s", method, url);

    json_t *body;
    /* Only POST carries arguments in its body; whatever else sends one is not read. */
    if (up->len == 0 || strcmp(method, "POST") != 0) {
        body = json_object();
    } else {
        json_error_t jerr;
        body = json_loadb(up->buf, up->len, JSON_REJECT_DUPLICATES, &jerr);
        if (!body)
            return reply_error(conn, MHD_HTTP_BAD_REQUEST, "malformed JSON: %s (line %d, column %d)",
                               jerr.text, jerr.line, jerr.column);
        if (!json_is_object(body)) {
            json_decref(body);
            return reply_error(conn, MHD_HTTP_BAD_REQUEST, "the request body must be a JSON object");
        }
    }

    struct admin_req r = {.s = s, .db = s->db, .conn = conn, .body = body};
    pthread_mutex_lock(&s->lock);
    fn(&r);
    pthread_mutex_unlock(&s->lock);
    json_decref(body);
    if (!r.answer)
        admin_fail(&r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error: %s %s gave no answer",
                   method, url);

    /* Changes are an admin's actions: keep a trail of them in the log. */
    if (strcmp(method, "GET") != 0) {
        json_t *e = json_object_get(r.answer, "error");
        if (e)
            log_info("admin: %s %s -> %u: %s", method, url, r.status, json_string_value(e));
        else
            log_info("admin: %s %s -> %u", method, url, r.status);
    }
    return hw_http_reply_json(conn, r.status, r.answer, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    struct hw_server *s = cls;
    struct admin_upload *up = *req_cls;
    if (!up) {
        up = calloc(1, sizeof *up);
        if (!up)
            return MHD_NO;
        *req_cls = up;
        /* A declared oversize body is refused before a byte of it is read. */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > body_limit(url)) {
            up->too_large = true;
            return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE,
                               "request body too large (at most %zu bytes)", body_limit(url));
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (up->too_large)
            return MHD_YES;
        if (up->len + n > body_limit(url)) {
            /* Chunked bodies carry no length: drop what came and keep discarding, so
             * memory stays bounded and the client still gets its 413. */
            up->too_large = true;
            free(up->buf);
            up->buf = NULL;
            up->len = 0;
            return MHD_YES;
        }
        char *grown = realloc(up->buf, up->len + n + 1);
        if (!grown)
            return MHD_NO;
        up->buf = grown;
        memcpy(up->buf + up->len, upload_data, n);
        up->len += n;
        return MHD_YES;
    }
    if (up->too_large)
        return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE,
                           "request body too large (at most %zu bytes)", body_limit(url));
    return dispatch(s, conn, url, method, up);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct admin_upload *up = *req_cls;
    if (!up)
        return;
    free(up->buf);
    free(up);
    *req_cls = NULL;
}

int hw_admin_api_start(struct hw_server *s, char *err, size_t err_len)
{
    /* One internal thread: admin traffic is light, and every handler serialises on the
     * server lock anyway. */
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    int fd = s->admin_fd;
    s->admin_http = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, hw_mhd_logger, (void *)"admin api",
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)ADMIN_CONNECTION_LIMIT,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ADMIN_IDLE_TIMEOUT_S,
        MHD_OPTION_END);
    s->admin_fd = -1; /* libmicrohttpd owns it now, see hw_http_public_start */
    if (!s->admin_http) {
        snprintf(err, err_len, "cannot start the admin API on %s (see the log above)",
                 s->cfg->unix_socket);
        return -1;
    }
    return 0;
}

void hw_admin_api_stop(struct hw_server *s)
{
    if (s->admin_http) {
        MHD_stop_daemon(s->admin_http);
        s->admin_http = NULL;
    }
}
