/* hwctl: command line, socket lookup, help. Command names, flags and aliases follow
 * Headscale's CLI so an admin's habits carry over (`namespaces` is also `users`,
 * `nodes` also `node`/`machines`, -i/--identifier, -n/--namespace, -o json ...). */
#include "api/hwctl.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/util.h"
#include "common/version.h"

#define HWCTL_DEFAULT_CONFIG "/etc/headwater/config.yaml"
#define HWCTL_DEV_SOCKET "./data/headwater.sock"
#define HWCTL_SYSTEM_SOCKET "/var/run/headwater/headwater.sock"

/* ---- options ---- */

enum opt_id {
    OPT_SOCKET, OPT_CONFIG, OPT_OUTPUT, OPT_HELP, OPT_NAMESPACE, OPT_FORCE, OPT_YES,
    OPT_IDENTIFIER, OPT_KEY, OPT_ROUTE, OPT_TAGS, OPT_REUSABLE, OPT_EPHEMERAL,
    OPT_EXPIRATION, OPT_PREFIX, OPT_NAME, OPT_NEW_NAME, OPT_FILE, OPT_LOCAL,
};
#define O(x) (1u << (x))
#define GLOBAL_OPTS (O(OPT_SOCKET) | O(OPT_CONFIG) | O(OPT_OUTPUT) | O(OPT_HELP))

struct optdef {
    enum opt_id id;
    const char *longs[3];      /* after "--"; the first is the name shown */
    const char *shorts;        /* letters after "-" */
    bool value;
    const char *arg;           /* value placeholder in help */
    const char *help;
};

/* A letter may appear twice (-r: --route or --new-name) as long as both take a value:
 * the command decides which one it means. */
static const struct optdef optdefs[] = {
    {OPT_SOCKET, {"socket"}, "s", true, "PATH", "admin socket (default: see below)"},
    {OPT_CONFIG, {"config"}, "c", true, "FILE", "read unix_socket from this config file"},
    {OPT_OUTPUT, {"output"}, "o", true, "FORMAT", "table (default), json, json-line or yaml"},
    {OPT_HELP, {"help"}, "h", false, NULL, "show help"},
    {OPT_NAMESPACE, {"namespace", "user"}, "nu", true, "NS", "namespace (alias -u/--user)"},
    {OPT_FORCE, {"force"}, "", false, NULL, "do not ask for confirmation"},
    {OPT_YES, {"yes"}, "y", false, NULL, "answer yes to the confirmation question"},
    {OPT_IDENTIFIER, {"identifier", "id"}, "i", true, "ID", "node id (see 'hwctl nodes list')"},
    {OPT_KEY, {"key"}, "k", true, "KEY", "registration id shown to the client"},
    {OPT_ROUTE, {"route"}, "r", true, "CIDR", "route prefix, e.g. 192.168.1.0/24"},
    {OPT_TAGS, {"tags", "tag"}, "t", true, "TAGS", "tag:x (repeat, or comma-separated)"},
    {OPT_REUSABLE, {"reusable"}, "", false, NULL, "the key can register more than one node"},
    {OPT_EPHEMERAL, {"ephemeral"}, "", false, NULL, "nodes registered with it are ephemeral"},
    {OPT_EXPIRATION, {"expiration"}, "e", true, "DURATION", "lifetime: 30m, 24h, 90d; 0 = never"},
    {OPT_PREFIX, {"prefix"}, "p", true, "PREFIX", "API key prefix (or the full key)"},
    {OPT_NAME, {"name"}, "", true, "NAME", "the namespace's current name"},
    {OPT_NEW_NAME, {"new-name"}, "r", true, "NEW", "the new name"},
    {OPT_FILE, {"file"}, "f", true, "FILE", "a policy file (HuJSON)"},
    {OPT_LOCAL, {"local"}, "", false, NULL, "check here without the server (namespace names unchecked)"},
};

/* ---- commands ---- */

struct hwctl_group {
    const char *name;
    const char *aliases;       /* space separated */
    const char *summary;
};

struct hwctl_cmd {
    const char *group;
    const char *action;        /* NULL: a one-word command */
    const char *aliases;       /* of the action, space separated */
    const char *synopsis;      /* shown in help after the command words */
    const char *required;      /* what the min_args positional words are, for errors */
    size_t min_args, max_args;
    uint32_t opts;             /* besides GLOBAL_OPTS */
    const char *summary;
    int (*run)(struct hwctl_ctx *ctx);
};

static const struct hwctl_group groups[] = {
    {"namespaces", "namespace ns users user", "namespaces (Headscale's users)"},
    {"nodes", "node machines machine", "nodes of the tailnet"},
    {"preauthkeys", "preauthkey authkeys authkey", "pre-auth keys for `tailscale up --authkey`"},
    {"routes", "route", "subnet routes and exit nodes"},
    {"apikeys", "apikey api", "API keys"},
    {"policy", "acl acls", "the access policy (docs/policy.md)"},
    {"version", "", "print hwctl's and the server's version"},
};

static const struct hwctl_cmd cmds[] = {
    {"namespaces", "create", "c new", "NAME", "NAME", 1, 1, 0,
     "create a namespace", hwctl_namespaces_create},
    {"namespaces", "list", "ls show", "", NULL, 0, 0, 0,
     "list namespaces", hwctl_namespaces_list},
    {"namespaces", "rename", "mv", "OLD NEW  (or --name OLD --new-name NEW)", NULL, 0, 2,
     O(OPT_NAME) | O(OPT_NEW_NAME) | O(OPT_NAMESPACE),
     "rename a namespace", hwctl_namespaces_rename},
    {"namespaces", "destroy", "delete del rm", "NAME [--force]", NULL, 0, 1,
     O(OPT_NAME) | O(OPT_NAMESPACE) | O(OPT_FORCE) | O(OPT_YES),
     "destroy a namespace (--force: with its nodes)", hwctl_namespaces_destroy},

    {"nodes", "list", "ls show", "[-n NS]", NULL, 0, 0, O(OPT_NAMESPACE),
     "list nodes", hwctl_nodes_list},
    {"nodes", "register", "", "-n NS --key KEY", NULL, 0, 0, O(OPT_NAMESPACE) | O(OPT_KEY),
     "register a node waiting for approval", hwctl_nodes_register},
    {"nodes", "delete", "del rm", "-i ID [--force]", NULL, 0, 0,
     O(OPT_IDENTIFIER) | O(OPT_FORCE) | O(OPT_YES),
     "delete a node", hwctl_nodes_delete},
    {"nodes", "expire", "logout exp", "-i ID", NULL, 0, 0, O(OPT_IDENTIFIER),
     "expire a node: it must log in again", hwctl_nodes_expire},
    {"nodes", "rename", "", "-i ID NEW_NAME", NULL, 0, 1, O(OPT_IDENTIFIER) | O(OPT_NEW_NAME),
     "set a node's name (its MagicDNS name)", hwctl_nodes_rename},
    {"nodes", "move", "mv", "-i ID -n NS", NULL, 0, 0, O(OPT_IDENTIFIER) | O(OPT_NAMESPACE),
     "move a node to another namespace", hwctl_nodes_move},
    {"nodes", "tag", "tags", "-i ID [-t tag:x ...]", NULL, 0, 0, O(OPT_IDENTIFIER) | O(OPT_TAGS),
     "set a node's tags (no -t clears them)", hwctl_nodes_tag},

    {"preauthkeys", "create", "c new", "-n NS [--reusable] [--ephemeral] [-e 1h] [-t T]",
     NULL, 0, 0,
     O(OPT_NAMESPACE) | O(OPT_REUSABLE) | O(OPT_EPHEMERAL) | O(OPT_EXPIRATION) | O(OPT_TAGS),
     "create a pre-auth key and print it", hwctl_preauthkeys_create},
    {"preauthkeys", "list", "ls show", "[-n NS]", NULL, 0, 0, O(OPT_NAMESPACE),
     "list pre-auth keys", hwctl_preauthkeys_list},
    {"preauthkeys", "expire", "revoke exp", "-n NS KEY", "KEY", 1, 1, O(OPT_NAMESPACE),
     "expire a pre-auth key (full key or prefix)", hwctl_preauthkeys_expire},

    {"routes", "list", "ls show", "[-i ID]", NULL, 0, 0, O(OPT_IDENTIFIER),
     "list routes", hwctl_routes_list},
    {"routes", "enable", "", "-i ID -r CIDR", NULL, 0, 0, O(OPT_IDENTIFIER) | O(OPT_ROUTE),
     "enable a route a node advertises", hwctl_routes_enable},
    {"routes", "disable", "", "-i ID -r CIDR", NULL, 0, 0, O(OPT_IDENTIFIER) | O(OPT_ROUTE),
     "disable a route", hwctl_routes_disable},

    {"apikeys", "create", "c new", "[-e 90d]", NULL, 0, 0, O(OPT_EXPIRATION),
     "create an API key and print it", hwctl_apikeys_create},
    {"apikeys", "list", "ls show", "", NULL, 0, 0, 0, "list API keys", hwctl_apikeys_list},
    {"apikeys", "expire", "revoke exp", "-p PREFIX", NULL, 0, 0, O(OPT_PREFIX),
     "expire an API key", hwctl_apikeys_expire},

    {"policy", "get", "show", "", NULL, 0, 0, 0,
     "print the policy in force", hwctl_policy_get},
    {"policy", "set", "", "-f FILE", NULL, 0, 0, O(OPT_FILE),
     "validate FILE and put it in force (policy.mode: database)", hwctl_policy_set},
    {"policy", "check", "", "-f FILE [--local]", NULL, 0, 0, O(OPT_FILE) | O(OPT_LOCAL),
     "validate FILE, change nothing (here, without namespace names, if no server runs)",
     hwctl_policy_check},

    {"version", NULL, "", "", NULL, 0, 0, 0, "print hwctl's and the server's version", hwctl_version},
};

/* ---- errors ---- */

static void verr(const char *fmt, va_list ap)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) {
        fputs("hwctl: out of memory\n", stderr);
        return;
    }
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "hwctl: %s\n", msg);
    free(msg);
}

void hwctl_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(fmt, ap);
    va_end(ap);
}

int hwctl_usage_err(const struct hwctl_ctx *ctx, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg = NULL;
    hwctl_err("%s: %s", ctx->cmd_name, msg ? msg : "usage error");
    free(msg);
    return HWCTL_USAGE;
}

/* ---- lookups ---- */

static bool word_in(const char *word, const char *list)
{
    size_t n = strlen(word);
    for (const char *p = list; p && *p;) {
        while (*p == ' ')
            p++;
        const char *end = strchr(p, ' ');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && len > 0 && strncmp(p, word, n) == 0)
            return true;
        p += len;
    }
    return false;
}

static const struct hwctl_group *find_group(const char *word)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(groups); i++)
        if (strcmp(word, groups[i].name) == 0 || word_in(word, groups[i].aliases))
            return &groups[i];
    return NULL;
}

static const struct hwctl_cmd *find_cmd(const struct hwctl_group *g, const char *action)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(cmds); i++) {
        const struct hwctl_cmd *c = &cmds[i];
        if (strcmp(c->group, g->name) != 0)
            continue;
        if (!c->action)
            return c;
        if (action && (strcmp(action, c->action) == 0 || word_in(action, c->aliases)))
            return c;
    }
    return NULL;
}

static uint32_t cmd_opts(const struct hwctl_cmd *c)
{
    return GLOBAL_OPTS | (c ? c->opts : 0);
}

/* The option named name (long) or letter (short) that cmd accepts; failing that, any
 * option of that name so the error can say it does not apply here. */
static const struct optdef *find_opt(const char *lng, size_t lng_len, char shrt,
                                     const struct hwctl_cmd *cmd, bool *applies)
{
    const struct optdef *any = NULL;
    for (size_t i = 0; i < HW_ARRAY_LEN(optdefs); i++) {
        const struct optdef *d = &optdefs[i];
        bool match = false;
        if (lng) {
            for (size_t j = 0; j < HW_ARRAY_LEN(d->longs) && d->longs[j]; j++)
                if (strlen(d->longs[j]) == lng_len && strncmp(d->longs[j], lng, lng_len) == 0)
                    match = true;
        } else {
            match = shrt && strchr(d->shorts, shrt) != NULL;
        }
        if (!match)
            continue;
        if (cmd_opts(cmd) & O(d->id)) {
            *applies = true;
            return d;
        }
        if (!any)
            any = d;
    }
    *applies = false;
    return any;
}

static void opt_label(const struct optdef *d, char *out, size_t len)
{
    if (d->shorts[0])
        snprintf(out, len, "-%c/--%s", d->shorts[0], d->longs[0]);
    else
        snprintf(out, len, "--%s", d->longs[0]);
}

/* ---- help ---- */

static void print_cmd_line(FILE *out, const struct hwctl_cmd *c)
{
    char words[64];
    snprintf(words, sizeof(words), "%s%s%s", c->group, c->action ? " " : "",
             c->action ? c->action : "");
    fprintf(out, "  %-19s %-48s %s\n", words, c->synopsis, c->summary);
}

static void print_opts(FILE *out, uint32_t mask)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(optdefs); i++) {
        const struct optdef *d = &optdefs[i];
        if (!(mask & O(d->id)))
            continue;
        char left[64];
        if (d->shorts[0])
            snprintf(left, sizeof(left), "-%c, --%s%s%s", d->shorts[0], d->longs[0],
                     d->value ? " " : "", d->value ? d->arg : "");
        else
            snprintf(left, sizeof(left), "    --%s%s%s", d->longs[0], d->value ? " " : "",
                     d->value ? d->arg : "");
        fprintf(out, "  %-28s %s\n", left, d->help);
    }
}

static void help_all(FILE *out)
{
    fputs("hwctl: manage a headwater tailnet through the server's admin socket\n\n"
          "Usage: hwctl [OPTIONS] COMMAND [ARGS] [OPTIONS]\n\nCommands:\n", out);
    for (size_t i = 0; i < HW_ARRAY_LEN(cmds); i++)
        print_cmd_line(out, &cmds[i]);
    fputs("\nAliases: namespaces = users, ns; nodes = node, machines; preauthkeys = "
          "preauthkey; apikeys = apikey;\n  list = ls; delete = del; move = mv; expire "
          "(keys) = revoke.\n\nGlobal options (before or after the command):\n", out);
    print_opts(out, GLOBAL_OPTS | O(OPT_NAMESPACE));
    fputs("\nThe socket: --socket, else $HEADWATER_SOCKET, else unix_socket from the config\n"
          "file (--config, $HEADWATER_CONFIG, or " HWCTL_DEFAULT_CONFIG " if it exists),\n"
          "else " HWCTL_DEV_SOCKET " if it exists (the `make run` default), else\n"
          HWCTL_SYSTEM_SOCKET ".\n\n"
          "-o json prints the API's objects (docs/admin-api.md); list commands print the\n"
          "array itself, as Headscale does. Exit status: 0 done, 1 refused or failed,\n"
          "2 usage error. 'hwctl COMMAND --help' shows a command's options.\n", out);
}

static void help_group(FILE *out, const struct hwctl_group *g)
{
    fprintf(out, "hwctl %s: %s\n\nUsage:\n", g->name, g->summary);
    for (size_t i = 0; i < HW_ARRAY_LEN(cmds); i++)
        if (strcmp(cmds[i].group, g->name) == 0)
            print_cmd_line(out, &cmds[i]);
    if (g->aliases[0])
        fprintf(out, "\nAliases: %s\n", g->aliases);
    fprintf(out, "\n'hwctl %s COMMAND --help' shows a command's options.\n", g->name);
}

static void help_cmd(FILE *out, const struct hwctl_cmd *c)
{
    fprintf(out, "hwctl %s%s%s: %s\n\nUsage: hwctl %s%s%s %s\n", c->group,
            c->action ? " " : "", c->action ? c->action : "", c->summary, c->group,
            c->action ? " " : "", c->action ? c->action : "", c->synopsis);
    if (c->aliases[0])
        fprintf(out, "Aliases: %s\n", c->aliases);
    fputs("\nOptions:\n", out);
    print_opts(out, cmd_opts(c));
}

static void group_actions(const struct hwctl_group *g, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < HW_ARRAY_LEN(cmds) && used < len; i++)
        if (strcmp(cmds[i].group, g->name) == 0 && cmds[i].action)
            used += snprintf(out + used, len - used, "%s%s", used ? ", " : "", cmds[i].action);
}

/* ---- command line ---- */

static int parse_identifier(struct hwctl_ctx *ctx, const char *label, const char *v)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || *end || n <= 0)
        return hwctl_usage_err(ctx, "%s must be a node id (a positive number), not \"%s\": "
                               "see 'hwctl nodes list'", label, v);
    ctx->identifier = n;
    ctx->have_identifier = true;
    return 0;
}

static void add_tags(struct hwctl_ctx *ctx, const char *v)
{
    ctx->tags_given = true;
    char *copy = hw_strdup(v), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t n = strlen(tok);
        while (n > 0 && tok[n - 1] == ' ')
            tok[--n] = '\0';
        if (!n)
            continue;
        char **p = realloc(ctx->tags, (ctx->n_tags + 1) * sizeof(char *));
        if (!p)
            abort();
        ctx->tags = p;
        ctx->tags[ctx->n_tags++] = hw_strdup(tok);
    }
    free(copy);
}

static int set_opt(struct hwctl_ctx *ctx, const struct optdef *d, const char *label,
                   const char *v)
{
    switch (d->id) {
    case OPT_SOCKET: ctx->socket_opt = v; break;
    case OPT_CONFIG: ctx->config_opt = v; break;
    case OPT_OUTPUT:
        if (strcmp(v, "json") == 0)
            ctx->output = HWCTL_OUT_JSON;
        else if (strcmp(v, "json-line") == 0)
            ctx->output = HWCTL_OUT_JSON_LINE;
        else if (strcmp(v, "yaml") == 0)
            ctx->output = HWCTL_OUT_YAML;
        else if (strcmp(v, "table") == 0 || strcmp(v, "") == 0)
            ctx->output = HWCTL_OUT_TABLE;
        else
            return hwctl_usage_err(ctx, "unknown output format \"%s\" for %s: use table, "
                                   "json, json-line or yaml", v, label);
        break;
    case OPT_HELP: break;
    case OPT_NAMESPACE: ctx->namespace_name = v; break;
    case OPT_FORCE: ctx->force = true; break;
    case OPT_YES: ctx->yes = true; break;
    case OPT_IDENTIFIER: return parse_identifier(ctx, label, v);
    case OPT_KEY: ctx->key = v; break;
    case OPT_ROUTE: ctx->route = v; break;
    case OPT_TAGS: add_tags(ctx, v); break;
    case OPT_REUSABLE: ctx->reusable = true; break;
    case OPT_EPHEMERAL: ctx->ephemeral = true; break;
    case OPT_EXPIRATION: ctx->expiration = v; break;
    case OPT_PREFIX: ctx->prefix = v; break;
    case OPT_NAME: ctx->name = v; break;
    case OPT_NEW_NAME: ctx->new_name = v; break;
    case OPT_FILE: ctx->file = v; break;
    case OPT_LOCAL: ctx->local = true; break;
    }
    return 0;
}

/* One pass over argv. With apply false it only sorts words from options (so the
 * command can be found wherever the global options are); with apply true it sets ctx
 * and reports every misuse. Positional words go to pos (capacity argc). */
static int scan(int argc, char **argv, struct hwctl_ctx *ctx, bool apply, const char **pos,
                size_t *n_pos, bool *want_help)
{
    const struct hwctl_cmd *cmd = ctx->cmd;
    bool only_words = false;
    *n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_words || a[0] != '-' || a[1] == '\0') {
            pos[(*n_pos)++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_words = true;
            continue;
        }
        bool is_long = a[1] == '-';
        const char *p = is_long ? a + 2 : a + 1;
        do {
            const struct optdef *d;
            bool applies;
            char label[48];
            const char *inline_v = NULL;
            if (is_long) {
                const char *eq = strchr(p, '=');
                size_t n = eq ? (size_t)(eq - p) : strlen(p);
                d = find_opt(p, n, 0, cmd, &applies);
                inline_v = eq ? eq + 1 : NULL;
                if (!d && apply)
                    return hwctl_usage_err(ctx, "unknown option --%.*s: see 'hwctl %s --help'",
                                           (int)n, p, ctx->cmd_name);
                p += strlen(p);
            } else {
                d = find_opt(NULL, 0, *p, cmd, &applies);
                if (!d && apply)
                    return hwctl_usage_err(ctx, "unknown option -%c: see 'hwctl %s --help'",
                                           *p, ctx->cmd_name);
                p++;
                if (d && d->value && *p) {
                    inline_v = p;
                    p += strlen(p);
                }
            }
            if (!d)
                continue;           /* first pass: reported by the second */
            opt_label(d, label, sizeof(label));
            if (d->id == OPT_HELP)
                *want_help = true;
            const char *v = NULL;
            if (d->value) {
                if (inline_v)
                    v = inline_v;
                else if (i + 1 < argc)
                    v = argv[++i];
                else if (apply)
                    return hwctl_usage_err(ctx, "%s needs a value (%s)", label, d->arg);
            } else if (inline_v && apply) {
                return hwctl_usage_err(ctx, "%s takes no value", label);
            }
            if (!apply)
                continue;
            if (!applies)
                return hwctl_usage_err(ctx, "%s does not apply to this command: see "
                                       "'hwctl %s --help'", label, ctx->cmd_name);
            if (d->value && !v)
                continue;
            int rc = set_opt(ctx, d, label, d->value ? v : "");
            if (rc)
                return rc;
        } while (!is_long && *p);
    }
    return 0;
}

/* ---- socket lookup ---- */

static char *socket_from_config(const char *path, bool explicit_path, bool quiet)
{
    struct hw_config cfg;
    struct hw_config_result res;
    char *sock = NULL;
    if (access(path, R_OK) != 0) {
        if (!explicit_path)
            return NULL;            /* the packaged file, not readable by this user */
        if (!quiet)
            hwctl_err("cannot read config %s: %s: give the right file with -c, or the socket "
                      "with --socket", path, strerror(errno));
        return (char *)-1;
    }
    if (hw_config_load(path, &cfg, &res) < 0) {
        if (!quiet) {
            const struct hw_config_diag *first = NULL;
            for (size_t i = 0; i < res.n_diags && !first; i++)
                if (res.diags[i].is_error)
                    first = &res.diags[i];
            char where[32] = "";
            if (first && first->line > 0)
                snprintf(where, sizeof(where), ":%d", first->line);
            hwctl_err("cannot use config %s%s: %s%s (see 'headwater configtest -c %s'), or give "
                      "the socket with --socket", path, where,
                      first ? first->message : "it has errors",
                      res.n_errors > 1 ? ", and more errors" : "", path);
        }
        hw_config_result_free(&res);
        hw_config_free(&cfg);
        return (char *)-1;
    }
    if (cfg.unix_socket && *cfg.unix_socket)
        sock = hw_strdup(cfg.unix_socket);
    hw_config_result_free(&res);
    hw_config_free(&cfg);
    return sock;
}

static const char *resolve_socket(struct hwctl_ctx *ctx, bool quiet)
{
    if (ctx->socket_path)
        return ctx->socket_path;
    if (ctx->socket_opt) {
        if (!*ctx->socket_opt) {
            if (!quiet)
                hwctl_err("--socket needs a path");
            return NULL;
        }
        return ctx->socket_path = hw_strdup(ctx->socket_opt);
    }
    const char *env = getenv("HEADWATER_SOCKET");
    if (env && *env)
        return ctx->socket_path = hw_strdup(env);

    const char *cfg_path = ctx->config_opt;
    bool explicit_path = cfg_path != NULL;
    if (!cfg_path && (env = getenv("HEADWATER_CONFIG")) && *env) {
        cfg_path = env;
        explicit_path = true;
    }
    if (!cfg_path && access(HWCTL_DEFAULT_CONFIG, F_OK) == 0)
        cfg_path = HWCTL_DEFAULT_CONFIG;
    if (cfg_path) {
        char *s = socket_from_config(cfg_path, explicit_path, quiet);
        if (s == (char *)-1)
            return NULL;
        if (s)
            return ctx->socket_path = s;
    }
    if (access(HWCTL_DEV_SOCKET, F_OK) == 0)
        return ctx->socket_path = hw_strdup(HWCTL_DEV_SOCKET);
    return ctx->socket_path = hw_strdup(HWCTL_SYSTEM_SOCKET);
}

const char *hwctl_socket_path(struct hwctl_ctx *ctx)
{
    return resolve_socket(ctx, false);
}

/* ---- confirmation ---- */

int hwctl_confirm(const struct hwctl_ctx *ctx, const char *what, const char *prompt)
{
    if (ctx->force || ctx->yes)
        return HWCTL_OK;
    if (!isatty(STDIN_FILENO))
        return hwctl_usage_err(ctx, "will not %s without confirmation, and stdin is not a "
                               "terminal to ask on: pass --yes to go ahead", what);
    fprintf(stderr, "%s [y/N] ", prompt);
    fflush(stderr);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    int yes = n > 0 && (line[0] == 'y' || line[0] == 'Y');
    free(line);
    if (yes)
        return HWCTL_OK;
    hwctl_err("%s: not confirmed: did not %s", ctx->cmd_name, what);
    return HWCTL_FAIL;
}

/* ---- version ---- */

int hwctl_version(struct hwctl_ctx *ctx)
{
    json_t *health = NULL;
    char why[512] = "";
    const char *sock = resolve_socket(ctx, true);
    int rc = sock ? hwctl_call_quiet(ctx, "GET", "/api/v1/health", &health, why, sizeof(why))
                  : -1;
    if (!sock)
        snprintf(why, sizeof(why), "no socket found");
    if (ctx->output != HWCTL_OUT_TABLE) {
        json_t *server = rc == 0 ? json_incref(health)
                                 : json_pack("{s:s, s:s?}", "error", why, "socket", sock);
        json_t *v = json_pack("{s:s, s:o}", "version", HW_VERSION, "server", server);
        int prc = hwctl_print_value(ctx, v);
        json_decref(v);
        json_decref(health);
        return prc < 0 ? HWCTL_FAIL : HWCTL_OK;
    }
    printf("hwctl %s\n", HW_VERSION);
    if (rc == 0)
        printf("server: headwater %s (database schema %lld) at %s\n",
               hwctl_jstr(health, "version"), hwctl_jint(health, "schema_version"), sock);
    else
        printf("server: %s\n", why);
    json_decref(health);
    return HWCTL_OK;
}

/* ---- main ---- */

static void ctx_free(struct hwctl_ctx *ctx)
{
    for (size_t i = 0; i < ctx->n_tags; i++)
        free(ctx->tags[i]);
    free(ctx->tags);
    free(ctx->socket_path);
}

static int run(int argc, char **argv)
{
    struct hwctl_ctx ctx = {0};
    const char **pos = hw_calloc((size_t)argc + 1, sizeof(char *));
    size_t n_pos = 0;
    bool want_help = false;
    int rc = HWCTL_OK;

    ctx.cmd_name = "hwctl";
    scan(argc, argv, &ctx, false, pos, &n_pos, &want_help);

    size_t words = 0;
    const struct hwctl_group *g = NULL;
    if (n_pos > 0 && strcmp(pos[0], "help") == 0) {
        want_help = true;          /* "hwctl help [GROUP [ACTION]]" */
        words = 1;
    }
    if (n_pos > words) {
        g = find_group(pos[words]);
        if (!g) {
            hwctl_err("unknown command \"%s\": try 'hwctl --help'", pos[words]);
            rc = HWCTL_USAGE;
            goto out;
        }
        words++;
    }
    if (!g) {
        if (want_help) {
            help_all(stdout);
        } else {
            hwctl_err("missing command: try 'hwctl --help'");
            rc = HWCTL_USAGE;
        }
        goto out;
    }
    if (n_pos > words && strcmp(pos[words], "help") == 0) {
        want_help = true;          /* "hwctl nodes help" */
        words++;
    }
    const struct hwctl_cmd *c = find_cmd(g, n_pos > words ? pos[words] : NULL);
    if (c && c->action)
        words++;
    if (!c) {
        char actions[160];
        group_actions(g, actions, sizeof(actions));
        if (want_help)
            help_group(stdout, g);
        else if (n_pos > words)
            hwctl_err("%s: unknown command \"%s\": use one of %s", g->name, pos[words], actions);
        else
            hwctl_err("%s: missing command: use one of %s (see 'hwctl %s --help')", g->name,
                      actions, g->name);
        rc = want_help ? HWCTL_OK : HWCTL_USAGE;
        goto out;
    }
    if (want_help) {
        help_cmd(stdout, c);
        goto out;
    }

    char name[64];
    snprintf(name, sizeof(name), "%s%s%s", c->group, c->action ? " " : "",
             c->action ? c->action : "");
    ctx.cmd = c;
    ctx.cmd_name = name;
    rc = scan(argc, argv, &ctx, true, pos, &n_pos, &want_help);
    if (rc)
        goto out;
    /* The same words again, now that the command is known. */
    ctx.args = pos + words;
    ctx.n_args = n_pos - words;
    if (ctx.n_args > c->max_args) {
        rc = hwctl_usage_err(&ctx, "unexpected argument \"%s\": usage: hwctl %s %s",
                             ctx.args[c->max_args], name, c->synopsis);
        goto out;
    }
    if (ctx.n_args < c->min_args) {
        rc = hwctl_usage_err(&ctx, "%s is required: usage: hwctl %s %s",
                             c->required ? c->required : "an argument", name, c->synopsis);
        goto out;
    }
    rc = c->run(&ctx);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        hwctl_err("cannot write to stdout: %s", strerror(errno));
        rc = HWCTL_FAIL;
    }
out:
    ctx_free(&ctx);
    free(pos);
    return rc;
}

int main(int argc, char **argv)
{
    if (curl_global_init(CURL_GLOBAL_NOTHING) != CURLE_OK) {
        hwctl_err("cannot initialise libcurl");
        return HWCTL_FAIL;
    }
    int rc = run(argc, argv);
    curl_global_cleanup();
    return rc;
}
