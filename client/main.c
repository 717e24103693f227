/* hwclient: the reference client. `up` is the daemon (in the foreground, like running
 * tailscaled and `tailscale up` in one); the other commands talk to it through the
 * control socket in its state directory. */

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "client/daemon.h"
#include "client/localapi.h"
#include "client/state.h"
#include "client/status.h"
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"

/* logout waits for the server, which the daemon bounds at 10 s */
#define CALL_TIMEOUT_MS 20000

static const char usage[] =
    "hwclient: Headwater's reference client (the control half of tailscaled + tailscale)\n"
    "\n"
    "usage:\n"
    "  hwclient up --login-server URL [--authkey KEY] [--hostname NAME]\n"
    "              [--advertise-routes CIDR,...] [--statedir DIR] [--ephemeral] [--verbose]\n"
    "        log in and stay in the foreground, keeping the network map current\n"
    "        (without --authkey: prints a URL for the admin to complete)\n"
    "  hwclient status [--statedir DIR] [--json]    this node and its peers\n"
    "  hwclient netmap [-o json] [--statedir DIR]   the whole network map as JSON\n"
    "  hwclient logout [--statedir DIR]             expire this node's key on the server\n"
    "  hwclient down [--statedir DIR]               stop the daemon (also: stop)\n"
    "  hwclient --version | --help\n"
    "\n"
    "The state directory (default: $HWCLIENT_STATEDIR, /var/lib/hwclient as root,\n"
    "~/.local/state/hwclient otherwise) holds the keys and the daemon's control socket;\n"
    "run several daemons side by side with different --statedir values.\n"
    "--authkey file:PATH reads the key from a file.\n";

static void die_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "hwclient%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see `hwclient --help`)\n");
    exit(2);
}

/* --name value or --name=value; returns the value or NULL when argv[*i] is not --name. */
static const char *flag_value(const char *cmd, int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    if (a[0] == '-' && a[1] == '-')
        a++;
    if (a[0] != '-')
        return NULL;
    a++;
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        die_usage(cmd, "flag -%s needs a value", name);
    return argv[++*i];
}

static bool flag_bool(const char *arg, const char *name)
{
    const char *a = arg;
    if (a[0] == '-' && a[1] == '-')
        a++;
    return a[0] == '-' && strcmp(a + 1, name) == 0;
}

/* Tailscale's rule: an advertised route is a canonical prefix (no bits past the mask). */
static char *canonical_route(const char *text, char *err, size_t errlen)
{
    char addr[64];
    const char *slash = strchr(text, '/');
    if (!slash || (size_t)(slash - text) >= sizeof addr) {
        snprintf(err, errlen, "%s is not a CIDR prefix (like 192.168.1.0/24)", text);
        return NULL;
    }
    memcpy(addr, text, (size_t)(slash - text));
    addr[slash - text] = '\0';
    uint8_t bytes[16];
    int family = strchr(addr, ':') ? AF_INET6 : AF_INET;
    int bits = family == AF_INET ? 32 : 128;
    char *end;
    long len = strtol(slash + 1, &end, 10);
    if (inet_pton(family, addr, bytes) != 1 || !slash[1] || *end || len < 0 || len > bits) {
        snprintf(err, errlen, "%s is not a CIDR prefix (like 192.168.1.0/24)", text);
        return NULL;
    }
    uint8_t masked[16];
    memcpy(masked, bytes, sizeof masked);
    for (int b = (int)len; b < bits; b++)
        masked[b / 8] &= (uint8_t) ~(0x80 >> (b % 8));
    if (memcmp(masked, bytes, (size_t)bits / 8) != 0) {
        char canon[64];
        inet_ntop(family, masked, canon, sizeof canon);
        snprintf(err, errlen, "%s has non-address bits set; expected %s/%ld", text, canon, len);
        return NULL;
    }
    char canon[64];
    inet_ntop(family, bytes, canon, sizeof canon);
    return hw_sprintf("%s/%ld", canon, len);
}

static char *read_authkey_file(const char *path)
{
    size_t len;
    char *text = hw_read_file(path, &len);
    if (!text) {
        fprintf(stderr, "hwclient up: cannot read the auth key from %s: %s\n", path, strerror(errno));
        exit(1);
    }
    text[strcspn(text, "\r\n")] = '\0';
    return text;
}

static int cmd_up(int argc, char **argv)
{
    struct hwc_up_opts o = {0};
    char **routes = NULL;
    size_t n_routes = 0;
    char *key_from_file = NULL;
    for (int i = 2; i < argc; i++) {
        const char *v;
        if ((v = flag_value("up", argc, argv, &i, "login-server")))
            o.login_server = v;
        else if ((v = flag_value("up", argc, argv, &i, "authkey")) ||
                 (v = flag_value("up", argc, argv, &i, "auth-key"))) {
            if (strncmp(v, "file:", 5) == 0) {
                free(key_from_file);
                key_from_file = read_authkey_file(v + 5);
                v = key_from_file;
            }
            o.authkey = *v ? v : NULL;
        } else if ((v = flag_value("up", argc, argv, &i, "hostname")))
            o.hostname = v;
        else if ((v = flag_value("up", argc, argv, &i, "statedir")))
            o.statedir = v;
        else if ((v = flag_value("up", argc, argv, &i, "advertise-routes"))) {
            char *copy = hw_strdup(v), *save = NULL;
            for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                while (*tok == ' ')
                    tok++;
                if (!*tok)
                    continue;
                char err[200];
                char *canon = canonical_route(tok, err, sizeof err);
                if (!canon) {
                    fprintf(stderr, "hwclient up: --advertise-routes: %s\n", err);
                    exit(2);
                }
                routes = realloc(routes, (n_routes + 1) * sizeof *routes);
                if (!routes)
                    abort();
                routes[n_routes++] = canon;
            }
            free(copy);
        } else if (flag_bool(argv[i], "ephemeral"))
            o.ephemeral = true;
        else if (flag_bool(argv[i], "verbose") || flag_bool(argv[i], "v"))
            hw_log_set_level(HW_LOG_DEBUG);
        else if (flag_bool(argv[i], "help") || flag_bool(argv[i], "h")) {
            fputs(usage, stdout);
            exit(0);
        } else
            die_usage("up", "unknown argument %s", argv[i]);
    }
    if (!o.login_server)
        die_usage("up", "%s", "--login-server URL is required (the headwater server, e.g. http://127.0.0.1:8080)");
    if (o.hostname && (!*o.hostname || strlen(o.hostname) > 255))
        die_usage("up", "--hostname %s: expected 1 to 255 characters", o.hostname);
    o.routes = (const char *const *)routes;
    o.n_routes = n_routes;
    int rc = hwc_daemon_run(&o);
    for (size_t i = 0; i < n_routes; i++)
        free(routes[i]);
    free(routes);
    if (key_from_file) {
        sodium_memzero(key_from_file, strlen(key_from_file));
        free(key_from_file);
    }
    return rc;
}

/* The commands that ask the daemon: parse --statedir and the command's own flags. */
struct client_args {
    const char *statedir;
    bool json;
};

static void parse_client_args(const char *cmd, int argc, char **argv, struct client_args *a,
                              bool allow_json, bool allow_output)
{
    for (int i = 2; i < argc; i++) {
        const char *v;
        if ((v = flag_value(cmd, argc, argv, &i, "statedir")))
            a->statedir = v;
        else if (allow_json && flag_bool(argv[i], "json"))
            a->json = true;
        else if (allow_output && ((v = flag_value(cmd, argc, argv, &i, "o")) ||
                                  (v = flag_value(cmd, argc, argv, &i, "output")))) {
            if (strcmp(v, "json") != 0)
                die_usage(cmd, "output format %s is not supported: only json", v);
            a->json = true;
        } else if (flag_bool(argv[i], "help") || flag_bool(argv[i], "h")) {
            fputs(usage, stdout);
            exit(0);
        } else
            die_usage(cmd, "unknown argument %s", argv[i]);
    }
}

static json_t *call(const char *cmd, const struct client_args *a, const char *what)
{
    struct hwc_state st;
    char err[600];
    if (hwc_state_paths(&st, a->statedir, err, sizeof err) < 0) {
        fprintf(stderr, "hwclient %s: %s\n", what, err);
        exit(1);
    }
    json_t *req = json_object();
    json_object_set_new(req, "cmd", json_string(cmd));
    json_t *answer = hwc_api_call(st.sock, st.dir, req, CALL_TIMEOUT_MS, err, sizeof err);
    json_decref(req);
    if (!answer) {
        fprintf(stderr, "hwclient: %s\n", err);
        exit(1);
    }
    return answer;
}

static void print_json(const json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        free(text);
    }
}

static int cmd_status(int argc, char **argv)
{
    struct client_args a = {0};
    parse_client_args("status", argc, argv, &a, true, false);
    json_t *st = call("status", &a, "status");
    int rc = 0;
    if (a.json)
        print_json(st);
    else
        rc = hwc_status_print(stdout, st, hw_now());
    json_decref(st);
    return rc;
}

static int cmd_netmap(int argc, char **argv)
{
    struct client_args a = {0};
    parse_client_args("netmap", argc, argv, &a, false, true);
    json_t *nm = call("netmap", &a, "netmap");
    print_json(nm);
    json_decref(nm);
    return 0;
}

static int cmd_logout(int argc, char **argv)
{
    struct client_args a = {0};
    parse_client_args("logout", argc, argv, &a, false, false);
    json_t *r = call("logout", &a, "logout");
    const char *note = json_string_value(json_object_get(r, "note"));
    if (note && *note)
        printf("Logged out (%s).\n", note);
    else
        printf("Logged out.\n");
    json_decref(r);
    return 0;
}

static int cmd_down(int argc, char **argv)
{
    struct client_args a = {0};
    parse_client_args("down", argc, argv, &a, false, false);
    json_t *r = call("down", &a, "down");
    json_decref(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "hwclient: libsodium failed to initialise\n");
        return 1;
    }
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-version") == 0 || strcmp(cmd, "version") == 0) {
        printf("hwclient %s\n", HW_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "up") == 0)
        return cmd_up(argc, argv);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(argc, argv);
    if (strcmp(cmd, "netmap") == 0)
        return cmd_netmap(argc, argv);
    if (strcmp(cmd, "logout") == 0)
        return cmd_logout(argc, argv);
    if (strcmp(cmd, "down") == 0 || strcmp(cmd, "stop") == 0)
        return cmd_down(argc, argv);
    die_usage(NULL, "unknown command %s", cmd);
}
