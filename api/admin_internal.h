#ifndef HW_API_ADMIN_INTERNAL_H
#define HW_API_ADMIN_INTERNAL_H

/* Shared by the admin API's files: admin_api.c (socket, HTTP, routing) and one file
 * per resource (admin_namespaces.c, admin_nodes.c, admin_keys.c, admin_routes.c).
 * A handler runs with the server lock held, reads r->body / the query, and ends by
 * calling admin_ok() or admin_fail() exactly once. */

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "db/db.h"
#include "server/server.h"

struct MHD_Connection;

struct admin_req {
    struct hw_server *s;
    struct hw_db *db;
    struct MHD_Connection *conn;
    json_t *body;                /* the request's JSON object; {} for GET */
    unsigned status;             /* answer, set by admin_ok / admin_fail */
    json_t *answer;
};

typedef void (*admin_handler)(struct admin_req *r);

void admin_ok(struct admin_req *r, unsigned status, json_t *answer);
void admin_fail(struct admin_req *r, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Maps a db result to the answer: HW_DB_ERROR -> 500 with SQLite's words, others to
 * 400/404/409 with `what` ("namespace \"x\"") in the message. */
void admin_fail_db(struct admin_req *r, int rc, const char *what);

/* Transactions: begin/commit failing answer 500 themselves (commit rolls back). */
bool admin_begin(struct admin_req *r);
bool admin_commit(struct admin_req *r);
void admin_rollback(struct admin_req *r);
/* Ends a handler's transaction on the result rc of its writes: commits when it is
 * HW_DB_OK, else rolls back and answers as admin_fail_db does. True once committed. */
bool admin_commit_or_fail(struct admin_req *r, int rc, const char *what);

/* Body fields. Each returns 1 (present and valid: *out set), 0 (absent or null: *out
 * untouched; only for optional fields) or -1 (answer 400 already set). */
int admin_field_string(struct admin_req *r, const char *name, bool required, const char **out);
int admin_field_bool(struct admin_req *r, const char *name, bool *out);
int admin_field_id(struct admin_req *r, const char *name, bool required, int64_t *out);
/* An array of strings; *out borrowed from the body. */
int admin_field_string_array(struct admin_req *r, const char *name, json_t **out);

/* Tags ("tag:name", name of a-z 0-9 - _, 1-63 chars) in the given order without duplicates,
 * as the JSON array text to store (malloc'd), or NULL for none. */
int admin_field_tags(struct admin_req *r, const char *name, bool required, char **tags_json);

/* Query parameter, NULL when absent or empty. */
const char *admin_query(struct admin_req *r, const char *name);

/* Duration field ("24h", "90d", "0" = never) to an absolute unix time (0 = never). */
int admin_field_expiration(struct admin_req *r, const char *name, const char *dflt,
                           int64_t *expires_at);

/* A JSON string that never fails: bytes that are not valid UTF-8 (a client's hostname
 * cut at a byte limit) become '?'. */
json_t *admin_str(const char *s);
/* RFC 3339 string, or null for 0. */
json_t *admin_time(int64_t unix_seconds);
/* Parses a stored JSON array text; [] when NULL, empty or not an array. */
json_t *admin_json_array(const char *text);
/* Looks up a namespace by name; answers 404 (or 500) and returns false when it fails. */
bool admin_namespace_by_name(struct admin_req *r, const char *name, struct hw_namespace *out);
/* admin_begin, then admin_namespace_by_name inside the transaction (rolled back when
 * the namespace is not there). */
bool admin_begin_in_namespace(struct admin_req *r, const char *name, struct hw_namespace *out);
/* Reads a node (free with hw_node_clear); answers 404 (or 500) and returns false when it fails. */
bool admin_node_by_id(struct admin_req *r, int64_t id, struct hw_node *out);

/* Resource handlers. */
void admin_namespaces_list(struct admin_req *r);
void admin_namespaces_create(struct admin_req *r);
void admin_namespaces_rename(struct admin_req *r);
void admin_namespaces_destroy(struct admin_req *r);

void admin_nodes_list(struct admin_req *r);
void admin_nodes_register(struct admin_req *r);
void admin_nodes_delete(struct admin_req *r);
void admin_nodes_expire(struct admin_req *r);
void admin_nodes_rename(struct admin_req *r);
void admin_nodes_move(struct admin_req *r);
void admin_nodes_tag(struct admin_req *r);

void admin_preauthkeys_list(struct admin_req *r);
void admin_preauthkeys_create(struct admin_req *r);
void admin_preauthkeys_expire(struct admin_req *r);
void admin_apikeys_list(struct admin_req *r);
void admin_apikeys_create(struct admin_req *r);
void admin_apikeys_expire(struct admin_req *r);

void admin_routes_list(struct admin_req *r);
void admin_routes_enable(struct admin_req *r);
void admin_routes_disable(struct admin_req *r);

void admin_policy_get(struct admin_req *r);
void admin_policy_set(struct admin_req *r);
void admin_policy_check(struct admin_req *r);

#endif
