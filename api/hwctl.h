#ifndef HW_API_HWCTL_H
#define HW_API_HWCTL_H

/* hwctl: the admin CLI, a thin client of the admin API (docs/admin-api.md) on the unix
 * socket. hwctl.c parses the command line and finds the socket, hwctl_http.c talks
 * HTTP over the socket (libcurl), hwctl_output.c prints tables / JSON / YAML, and
 * hwctl_cmd_*.c implement the commands. Every error is reported once, as one line
 * "hwctl: ..." on stderr, by the function that found it. */

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit statuses: 0 done, 1 refused or failed (server error, unreachable), 2 usage. */
enum { HWCTL_OK = 0, HWCTL_FAIL = 1, HWCTL_USAGE = 2 };

enum hwctl_output { HWCTL_OUT_TABLE = 0, HWCTL_OUT_JSON, HWCTL_OUT_JSON_LINE, HWCTL_OUT_YAML };

struct hwctl_cmd;

/* Everything the command line said, after parsing. */
struct hwctl_ctx {
    const struct hwctl_cmd *cmd;
    const char *cmd_name;          /* "nodes rename", for messages */

    const char *socket_opt;        /* --socket */
    const char *config_opt;        /* --config */
    enum hwctl_output output;
    const char *namespace_name;    /* --namespace / --user */

    bool have_identifier;
    int64_t identifier;            /* --identifier */
    const char *key;               /* --key */
    const char *route;             /* --route (a CIDR prefix) */
    const char *name;              /* --name (namespaces rename/destroy) */
    const char *new_name;          /* --new-name */
    const char *expiration;        /* --expiration */
    const char *prefix;            /* --prefix (apikeys expire) */
    const char *file;              /* --file (policy set/check) */
    bool tags_given;
    char **tags;                   /* --tags, split at commas, empty pieces dropped */
    size_t n_tags;
    bool reusable, ephemeral, force, yes;
    bool local;                    /* --local (policy check without the server) */

    const char **args;             /* positional arguments after the command words */
    size_t n_args;

    char *socket_path;             /* resolved lazily by hwctl_socket_path() */
};

/* ---- hwctl.c ---- */
/* "hwctl: " + message on stderr, newlines in the message folded to spaces. */
void hwctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The usage error for the current command; returns HWCTL_USAGE. */
int hwctl_usage_err(const struct hwctl_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The socket to talk to (see the lookup order in hwctl.c), or NULL after reporting why. */
const char *hwctl_socket_path(struct hwctl_ctx *ctx);
/* Asks "PROMPT [y/N]" on the terminal unless --force/--yes. Returns HWCTL_OK to go on,
 * else the exit status: HWCTL_FAIL when the user said no, HWCTL_USAGE when stdin is not a
 * terminal (error reported). */
int hwctl_confirm(const struct hwctl_ctx *ctx, const char *what, const char *prompt);

/* ---- hwctl_http.c ---- */
/* One request to the admin API. body may be NULL (GET). On a 2xx answer returns 0 and
 * *answer (owned by the caller; `{}` when the body was empty). Otherwise reports the
 * error (the server's {"error"} text, or why the socket could not be reached) and
 * returns -1. */
int hwctl_call(struct hwctl_ctx *ctx, const char *method, const char *path, json_t *body,
               json_t **answer);
/* GET path?name=value with value URL-encoded; value NULL or "" = no query. */
int hwctl_get(struct hwctl_ctx *ctx, const char *path, const char *qname, const char *qvalue,
              json_t **answer);
/* POST path with body, which it takes (and frees): hwctl_call's answer and result. */
int hwctl_post(struct hwctl_ctx *ctx, const char *path, json_t *body, json_t **answer);
/* hwctl_post for commands that can do without the server: 0 with *answer; 1 (nothing
 * reported, the reason in why) when no server listens on the socket (no socket file,
 * connection refused); -1 for any other failure, reported. Takes body. */
int hwctl_post_if_running(struct hwctl_ctx *ctx, const char *path, json_t *body, json_t **answer,
                          char *why, size_t why_len);
/* Used by `version`: like hwctl_call, but reports nothing. Returns 0 on success. */
int hwctl_call_quiet(struct hwctl_ctx *ctx, const char *method, const char *path,
                     json_t **answer, char *why, size_t why_len);

/* ---- hwctl_output.c ---- */
struct hwctl_table;
struct hwctl_table *hwctl_table_new(size_t n_cols, const char *const *headers);
/* Appends one row of n_cols cells (copied; NULL prints as empty). */
void hwctl_table_add(struct hwctl_table *t, const char *const *cells);
/* Columns aligned to the widest cell, separated by " | ". */
void hwctl_table_print(const struct hwctl_table *t, FILE *out);
void hwctl_table_free(struct hwctl_table *t);

/* Prints v as pretty JSON, one-line JSON or YAML per ctx->output. 0, or -1 reported. */
int hwctl_print_value(const struct hwctl_ctx *ctx, json_t *v);

/* Ends a command that changed something: prints answer per ctx->output, or in table
 * mode the printf-style message and a newline. Frees answer. Returns the exit status. */
int hwctl_done(const struct hwctl_ctx *ctx, json_t *answer, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* answer[field] when it is an array (borrowed), else NULL reported. */
json_t *hwctl_list(json_t *answer, const char *field);
/* Ends a list command: the array answer[field] as JSON/YAML, or a table whose cells row()
 * fills with malloc'd strings (one per column). Frees answer. Returns the exit status. */
int hwctl_show_list(const struct hwctl_ctx *ctx, json_t *answer, const char *field,
                    size_t n_cols, const char *const *headers,
                    void (*row)(json_t *item, char **cells));

/* Field readers for the API's objects: absent or null fields read as "" / 0 / false. */
const char *hwctl_jstr(json_t *obj, const char *field);
long long hwctl_jint(json_t *obj, const char *field);
bool hwctl_jbool(json_t *obj, const char *field);
/* An RFC 3339 time field as "2026-11-25 19:45:00" (UTC), "-" when null. */
void hwctl_jtime(json_t *obj, const char *field, char *out, size_t out_len);
/* The strings of an array field joined with sep (malloc'd; "" when empty). */
char *hwctl_jjoin(json_t *obj, const char *field, const char *sep);

/* ---- commands (hwctl_cmd_*.c) ---- */
int hwctl_namespaces_create(struct hwctl_ctx *ctx);
int hwctl_namespaces_list(struct hwctl_ctx *ctx);
int hwctl_namespaces_rename(struct hwctl_ctx *ctx);
int hwctl_namespaces_destroy(struct hwctl_ctx *ctx);

int hwctl_nodes_list(struct hwctl_ctx *ctx);
int hwctl_nodes_register(struct hwctl_ctx *ctx);
int hwctl_nodes_delete(struct hwctl_ctx *ctx);
int hwctl_nodes_expire(struct hwctl_ctx *ctx);
int hwctl_nodes_rename(struct hwctl_ctx *ctx);
int hwctl_nodes_move(struct hwctl_ctx *ctx);
int hwctl_nodes_tag(struct hwctl_ctx *ctx);

int hwctl_preauthkeys_create(struct hwctl_ctx *ctx);
int hwctl_preauthkeys_list(struct hwctl_ctx *ctx);
int hwctl_preauthkeys_expire(struct hwctl_ctx *ctx);

int hwctl_apikeys_create(struct hwctl_ctx *ctx);
int hwctl_apikeys_list(struct hwctl_ctx *ctx);
int hwctl_apikeys_expire(struct hwctl_ctx *ctx);

int hwctl_routes_list(struct hwctl_ctx *ctx);
int hwctl_routes_enable(struct hwctl_ctx *ctx);
int hwctl_routes_disable(struct hwctl_ctx *ctx);

int hwctl_policy_get(struct hwctl_ctx *ctx);
int hwctl_policy_set(struct hwctl_ctx *ctx);
int hwctl_policy_check(struct hwctl_ctx *ctx);

int hwctl_version(struct hwctl_ctx *ctx);

#endif
