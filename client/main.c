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
#include "client/derpdebug.h"
#include "client/derp.h"
#include "client/localapi.h"
#include "client/magicsock.h"
#include "client/netcheck.h"
#include "client/state.h"
#include "client/status.h"
#include "client/tlsdial.h"
#include "client/tun.h"
#include "client/wgconf.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "common/version.h"
#include "proto/tailcfg.h"

/* logout waits for the server, which the daemon bounds at 10 s */
#define CALL_TIMEOUT_MS 20000

static const char usage[] =
    "hwclient: Headwater's reference client (the control half of tailscaled + tailscale)\n"
    "\n"
    "usage:\n"
    "  hwclient up --login-server URL [--authkey KEY] [--hostname NAME]\n"
    "              [--advertise-routes CIDR,...] [--advertise-tags tag:x,...]\n"
    "              [--statedir DIR] [--ephemeral] [--verbose]\n"
    "              [--port N] [--debug-derp-http] [--tun NAME] [--accept-routes]\n"
    "              [--advertise-exit-node] [--snat-subnet-routes=false]\n"
    "              [--exit-node PEER] [--exit-node-allow-lan-access]\n"
    "              [--tun=userspace [--socks5 ADDR] [--http-proxy ADDR]]\n"
    "        log in and stay in the foreground, keeping the network map current and\n"
    "        a connection to the home DERP relay (without --authkey: prints a URL for\n"
    "        the admin to complete). --port: UDP port (default 41641, or any free one)\n"
    "        --tun NAME: the TUN device carrying the node's packets (default hw0; needs\n"
    "        root): the node's addresses, WireGuard to every peer; --tun none runs only\n"
    "        the control and DERP halves. --accept-routes: use peers' subnet routes\n"
    "        With --tun, advertising routes or an exit node turns on IP forwarding and\n"
    "        masquerade (undone on exit); --exit-node PEER (name or IP) sends the host's\n"
    "        default route through PEER (own sockets bypass it; see docs/dataplane.md)\n"
    "        --tun=userspace: no TUN device (no root needed); a SOCKS5 proxy on ADDR\n"
    "        (default 127.0.0.1:1055) and, with --http-proxy, an HTTP CONNECT proxy\n"
    "        open TCP connections into the tailnet (MagicDNS short names and FQDNs)\n"
    "  hwclient netcheck [--statedir DIR] [--format json] [--derp-map FILE]\n"
    "        UDP reachability, public address and latency to each DERP region, measured\n"
    "        by the daemon (or, with --derp-map FILE holding a DERPMap JSON, by this\n"
    "        command alone)\n"
    "  hwclient ping PEER [-c N] [--statedir DIR]\n"
    "        disco pings to PEER (name, tailnet IP or node key) like `tailscale ping`:\n"
    "        up to N (default 10) a second apart until a direct path answers; prints\n"
    "        `pong from NAME (IP) via DERP(REGION)|IP:PORT in TIME`; exit 0 on any pong\n"
    "  hwclient status [--statedir DIR] [--json]    this node and its peers\n"
    "  hwclient netmap [-o json] [--statedir DIR]   the whole network map as JSON\n"
    "  hwclient logout [--statedir DIR]             expire this node's key on the server\n"
    "  hwclient down [--statedir DIR]               stop the daemon (also: stop)\n"
    "  hwclient wg -c FILE [--tun NAME]\n"
    "        plain WireGuard without a control server: a wg-quick style file\n"
    "        ([Interface] PrivateKey/ListenPort/Address/MTU, [Peer] PublicKey/Endpoint/\n"
    "        AllowedIPs/PersistentKeepalive) on TUN device NAME (default hw0)\n"
    "  hwclient --version | --help\n"
    "\n"
    "debug commands (opaque numbered packets through DERP, until the data plane exists):\n"
    "  hwclient debug derp-send PEER [--count N] [--size BYTES] [--statedir DIR] [--json]\n"
    "        send N packets (default 100 of 1200 bytes) to PEER (its name or IP) through\n"
    "        its home DERP region; the peer acknowledges them; prints the rate\n"
    "  hwclient debug derp-stats [--statedir DIR] [--json]\n"
    "        the DERP connections and what arrived from each sender (count, loss, order)\n"
    "  hwclient debug force-prefer-derp REGION [--statedir DIR]\n"
    "        make REGION the home whenever it answers (0: back to the nearest), as\n"
    "        `tailscale debug force-prefer-derp`\n"
    "\n"
    "The state directory (default: $HWCLIENT_STATEDIR, /var/lib/hwclient as root,\n"
    "~/.local/state/hwclient otherwise) holds the keys and the daemon's control socket;\n"
    "run several daemons side by side with different --statedir values.\n"
    "--authkey file:PATH reads the key from a file. TS_DEBUG_USE_DERP_HTTP=1 (or\n"
    "--debug-derp-http) speaks plain HTTP to relays, port 3340 unless DERPPort: tests only.\n";

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

/* "a, b,,c" -> {"a", "b", "c"}: the items of a comma-separated flag value, leading
 * spaces and empty items dropped. */
static char **comma_list(const char *value, size_t *n_out)
{
    char *copy = hw_strdup(value), *save = NULL;
    char **items = NULL;
    size_t n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (!*tok)
            continue;
        items = realloc(items, (n + 1) * sizeof *items);
        if (!items)
            abort();
        items[n++] = hw_strdup(tok);
    }
    free(copy);
    *n_out = n;
    return items;
}

static void free_list(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
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
    /* As tailscaled makes tailscale0, a node gets its TUN device unless told otherwise. */
    struct hwc_up_opts o = {.snat_subnet_routes = true, .tun = HWC_TUN_DEFAULT_NAME};
    bool advertise_exit = false;
    char **routes = NULL, **tags = NULL;
    size_t n_routes = 0, n_tags = 0;
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
            size_t n_items;
            char **items = comma_list(v, &n_items);
            for (size_t k = 0; k < n_items; k++) {
                char err[200];
                char *canon = canonical_route(items[k], err, sizeof err);
                if (!canon) {
                    fprintf(stderr, "hwclient up: --advertise-routes: %s\n", err);
                    exit(2);
                }
                routes = realloc(routes, (n_routes + 1) * sizeof *routes);
                if (!routes)
                    abort();
                routes[n_routes++] = canon;
            }
            free_list(items, n_items);
        } else if ((v = flag_value("up", argc, argv, &i, "advertise-tags"))) {
            size_t n_items;
            char **items = comma_list(v, &n_items);
            for (size_t k = 0; k < n_items; k++) {
                if (strncmp(items[k], "tag:", 4) != 0 || !items[k][4]) {
                    fprintf(stderr, "hwclient up: --advertise-tags: \"%s\" is not a tag (tag:name)\n", items[k]);
                    exit(2);
                }
                tags = realloc(tags, (n_tags + 1) * sizeof *tags);
                if (!tags)
                    abort();
                tags[n_tags++] = items[k];
            }
            free(items);   /* the strings now belong to tags */
        } else if ((v = flag_value("up", argc, argv, &i, "port"))) {
            char *end;
            long port = strtol(v, &end, 10);
            if (!*v || *end || port < 0 || port > 65535)
                die_usage("up", "--port %s: expected 0 to 65535 (0: any free port)", v);
            o.port = (int)port;
            o.port_set = true;
        } else if ((v = flag_value("up", argc, argv, &i, "tun"))) {
            if (strcmp(v, "userspace") == 0 || strcmp(v, "userspace-networking") == 0) {
                o.userspace = true;
                o.tun = NULL;
            } else {
                o.userspace = false;
                o.tun = strcmp(v, "none") == 0 ? NULL : v;
            }
        } else if ((v = flag_value("up", argc, argv, &i, "socks5")) ||
                   (v = flag_value("up", argc, argv, &i, "socks5-server")))
            o.socks5 = v;
        else if ((v = flag_value("up", argc, argv, &i, "http-proxy")) ||
                 (v = flag_value("up", argc, argv, &i, "outbound-http-proxy-listen")))
            o.http_proxy = v;
        else if (flag_bool(argv[i], "accept-routes"))
            o.accept_routes = true;
        else if (flag_bool(argv[i], "advertise-exit-node"))
            advertise_exit = true;
        else if (flag_bool(argv[i], "exit-node-allow-lan-access"))
            o.exit_node_allow_lan = true;
        else if ((v = flag_value("up", argc, argv, &i, "exit-node")))
            o.exit_node = *v ? v : NULL;
        else if ((v = flag_value("up", argc, argv, &i, "snat-subnet-routes"))) {
            if (strcmp(v, "true") == 0)
                o.snat_subnet_routes = true;
            else if (strcmp(v, "false") == 0)
                o.snat_subnet_routes = false;
            else
                die_usage("up", "--snat-subnet-routes=%s: expected true or false", v);
        }
        else if (flag_bool(argv[i], "debug-derp-http"))
            o.derp_http = true;
        else if (flag_bool(argv[i], "ephemeral"))
            o.ephemeral = true;
        else if (flag_bool(argv[i], "verbose") || flag_bool(argv[i], "v"))
            hw_log_set_level(HW_LOG_DEBUG);
        else if (flag_bool(argv[i], "help") || flag_bool(argv[i], "h")) {
            fputs(usage, stdout);
            exit(0);
        } else
            die_usage("up", "unknown argument %s", argv[i]);
    }
    if ((o.socks5 || o.http_proxy) && !o.userspace)
        die_usage("up", "%s", "--socks5 and --http-proxy need --tun=userspace");
    if (!o.login_server)
        die_usage("up", "%s", "--login-server URL is required (the headwater server, e.g. http://127.0.0.1:8080)");
    if (o.hostname && (!*o.hostname || strlen(o.hostname) > 255))
        die_usage("up", "--hostname %s: expected 1 to 255 characters", o.hostname);
    if (advertise_exit) {
        /* what `tailscale up --advertise-exit-node` adds to RoutableIPs */
        static const char *const defaults[2] = {"0.0.0.0/0", "::/0"};
        for (int k = 0; k < 2; k++) {
            bool have = false;
            for (size_t j = 0; j < n_routes && !have; j++)
                have = strcmp(routes[j], defaults[k]) == 0;
            if (have)
                continue;
            routes = realloc(routes, (n_routes + 1) * sizeof *routes);
            if (!routes)
                abort();
            routes[n_routes++] = hw_strdup(defaults[k]);
        }
    }
    if (o.exit_node && !o.tun)
        die_usage("up", "--exit-node %s needs a TUN device (the host's default route goes through it), "
                  "not --tun=%s", o.exit_node, o.userspace ? "userspace" : "none");
    o.routes = (const char *const *)routes;
    o.n_routes = n_routes;
    o.tags = (const char *const *)tags;
    o.n_tags = n_tags;
    int rc = hwc_daemon_run(&o);
    free_list(routes, n_routes);
    free_list(tags, n_tags);
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

/* One request to the daemon with its own fields (stolen), or exit 1 with the reason. */
static json_t *call_with(json_t *req, const char *statedir, int timeout_ms, const char *what)
{
    struct hwc_state st;
    char err[600];
    if (hwc_state_paths(&st, statedir, err, sizeof err) < 0) {
        fprintf(stderr, "hwclient %s: %s\n", what, err);
        exit(1);
    }
    json_t *answer = hwc_api_call(st.sock, st.dir, req, timeout_ms, err, sizeof err);
    json_decref(req);
    if (!answer) {
        fprintf(stderr, "hwclient %s: %s\n", what, err);
        exit(1);
    }
    return answer;
}

/* ---- ping ---- */

/* Go's time.Duration text of a latency rounded to the millisecond, as `tailscale ping`
 * prints it ("0s" below half a millisecond, "12ms", "1.5s"). */
static void format_rounded_ms(double seconds, char *out, size_t len)
{
    long long ms = (long long)(seconds * 1000.0 + 0.5);
    if (ms == 0)
        snprintf(out, len, "0s");
    else if (ms < 1000)
        snprintf(out, len, "%lldms", ms);
    else {
        char t[32];
        snprintf(t, sizeof t, "%.3f", (double)ms / 1000.0);
        size_t n = strlen(t);
        while (n && t[n - 1] == '0')
            t[--n] = '\0';
        if (n && t[n - 1] == '.')
            t[--n] = '\0';
        snprintf(out, len, "%ss", t);
    }
}

static int cmd_ping(int argc, char **argv)
{
    const char *statedir = NULL, *peer = NULL;
    long long count = 10;
    for (int i = 2; i < argc; i++) {
        const char *v;
        char *end;
        if ((v = flag_value("ping", argc, argv, &i, "statedir")))
            statedir = v;
        else if ((v = flag_value("ping", argc, argv, &i, "c"))) {
            count = strtoll(v, &end, 10);
            if (!*v || *end || count < 1 || count > 1000000)
                die_usage("ping", "-c %s: expected a count of 1 or more", v);
        } else if (flag_bool(argv[i], "help") || flag_bool(argv[i], "h")) {
            fputs(usage, stdout);
            exit(0);
        } else if (argv[i][0] != '-' && !peer)
            peer = argv[i];
        else
            die_usage("ping", "unknown argument %s", argv[i]);
    }
    if (!peer)
        die_usage("ping", "%s", "which peer? give its name, tailnet IP or node key");
    bool any = false, direct = false;
    for (long long n = 1; n <= count && !direct; n++) {
        json_t *req = json_object();
        json_object_set_new(req, "cmd", json_string("ping"));
        json_object_set_new(req, "peer", json_string(peer));
        json_t *r = call_with(req, statedir, CALL_TIMEOUT_MS, "ping");
        const char *ip = json_string_value(json_object_get(r, "NodeIP"));
        if (json_is_true(json_object_get(r, "TimedOut"))) {
            printf("ping \"%s\" timed out\n", ip && *ip ? ip : peer);
            fflush(stdout);
            json_decref(r);
            continue;
        }
        char lat[64], via[128];
        format_rounded_ms(json_real_value(json_object_get(r, "LatencySeconds")), lat, sizeof lat);
        const char *ep = json_string_value(json_object_get(r, "Endpoint"));
        if (ep && *ep) {
            snprintf(via, sizeof via, "%s", ep);
            direct = true;
        } else {
            const char *code = json_string_value(json_object_get(r, "DERPRegionCode"));
            if (code && *code)
                snprintf(via, sizeof via, "DERP(%s)", code);
            else
                snprintf(via, sizeof via, "DERP(%lld)", (long long)json_integer_value(json_object_get(r, "DERPRegionID")));
        }
        printf("pong from %s (%s) via %s in %s\n", json_string_value(json_object_get(r, "NodeName")), ip ? ip : "",
               via, lat);
        fflush(stdout);
        any = true;
        json_decref(r);
        if (!direct && n < count)
            sleep(1);
    }
    if (!any) {
        fprintf(stderr, "hwclient ping: no reply\n");
        return 1;
    }
    if (!direct)
        fprintf(stderr, "hwclient ping: direct connection not established (the peer answers through DERP)\n");
    return 0;
}

/* ---- netcheck ---- */

struct standalone {
    struct hw_loop *loop;
    json_t *report;
    char err[300];
};

static void standalone_done(const struct hwc_nc_report *r, const char *err, void *arg)
{
    struct standalone *sa = arg;
    if (r)
        sa->report = hwc_nc_report_json(r);
    else
        snprintf(sa->err, sizeof sa->err, "%s", err);
    hw_loop_stop(sa->loop);
}

static void standalone_netinfo(const json_t *ni, void *arg) {}
static void standalone_packet(const uint8_t src[32], int region, const uint8_t *d, size_t n, void *arg) {}

/* `tailscale netcheck` runs in the CLI too; here that is the --derp-map form. The file
 * holds a DERPMap (or anything with one under "DERPMap", like `hwclient netmap -o json`). */
static json_t *netcheck_standalone(const char *path, bool plain_http, json_t **dm_out)
{
    size_t len;
    char *text = hw_read_file(path, &len);
    if (!text) {
        fprintf(stderr, "hwclient netcheck: cannot read %s: %s\n", path, strerror(errno));
        exit(1);
    }
    char err[TC_ERRLEN];
    json_t *j = tc_json_load((const uint8_t *)text, len, 4u << 20, path, err, sizeof err);
    free(text);
    if (!j) {
        fprintf(stderr, "hwclient netcheck: %s\n", err);
        exit(1);
    }
    json_t *dmj = json_object_get(j, "DERPMap") ? json_object_get(j, "DERPMap") : j;
    struct tc_derp_map dm;
    if (tc_derp_map_parse(dmj, &dm, err, sizeof err) < 0) {
        fprintf(stderr, "hwclient netcheck: %s: not a DERP map: %s\n", path, err);
        exit(1);
    }
    *dm_out = json_incref(dmj);
    json_decref(j);
    struct standalone sa = {.loop = hw_loop_new()};
    struct hwc_magic_opts mo = {.plain_http = plain_http};
    struct hwc_magic_callbacks cb = {.on_netinfo = standalone_netinfo, .on_derp_packet = standalone_packet};
    hw_log_set_level(hw_log_get_level() == HW_LOG_DEBUG ? HW_LOG_DEBUG : HW_LOG_WARN);
    struct hwc_magic *m = hwc_magic_new(sa.loop, &mo, &cb, &sa, err, sizeof err);
    if (!m) {
        fprintf(stderr, "hwclient netcheck: %s\n", err);
        exit(1);
    }
    hwc_magic_set_derp_map(m, &dm);
    tc_derp_map_clear(&dm);
    if (hwc_magic_netcheck(m, standalone_done, &sa, sa.err, sizeof sa.err) == 0)
        hw_loop_run(sa.loop);
    hwc_magic_free(m);
    hw_loop_free(sa.loop);
    hwc_tls_cleanup();
    if (!sa.report) {
        fprintf(stderr, "hwclient netcheck: %s\n", sa.err);
        exit(1);
    }
    return sa.report;
}

static int cmd_netcheck(int argc, char **argv)
{
    const char *statedir = NULL, *format = "", *derp_map = NULL;
    bool plain_http = hwc_derp_env_plain_http();
    for (int i = 2; i < argc; i++) {
        const char *v;
        if ((v = flag_value("netcheck", argc, argv, &i, "statedir")))
            statedir = v;
        else if ((v = flag_value("netcheck", argc, argv, &i, "format")))
            format = v;
        else if ((v = flag_value("netcheck", argc, argv, &i, "derp-map")))
            derp_map = v;
        else if (flag_bool(argv[i], "debug-derp-http"))
            plain_http = true;
        else if (flag_bool(argv[i], "verbose") || flag_bool(argv[i], "v"))
            hw_log_set_level(HW_LOG_DEBUG);
        else if (flag_bool(argv[i], "help") || flag_bool(argv[i], "h")) {
            fputs(usage, stdout);
            exit(0);
        } else
            die_usage("netcheck", "unknown argument %s", argv[i]);
    }
    if (*format && strcmp(format, "json") != 0 && strcmp(format, "json-line") != 0)
        die_usage("netcheck", "unknown output format \"%s\" (json or json-line)", format);
    json_t *report, *dm;
    if (derp_map) {
        report = netcheck_standalone(derp_map, plain_http, &dm);
    } else {
        json_t *req = json_object();
        json_object_set_new(req, "cmd", json_string("netcheck"));
        json_t *a = call_with(req, statedir, CALL_TIMEOUT_MS, "netcheck");
        report = json_incref(json_object_get(a, "Report"));
        dm = json_incref(json_object_get(a, "DERPMap"));
        json_decref(a);
    }
    if (*format) {
        char *text = json_dumps(report, JSON_PRESERVE_ORDER | (strcmp(format, "json") == 0 ? JSON_INDENT(2) : JSON_COMPACT));
        printf("%s\n", text ? text : "null");
        free(text);
    } else {
        hwc_nc_print(stdout, report, dm);
    }
    json_decref(report);
    json_decref(dm);
    return 0;
}

/* ---- debug ---- */

static double num(const json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

static int cmd_debug_derp_send(int argc, char **argv)
{
    const char *statedir = NULL, *peer = NULL;
    long long count = 100, size = 1200;
    bool json = false;
    for (int i = 3; i < argc; i++) {
        const char *v;
        char *end;
        if ((v = flag_value("debug derp-send", argc, argv, &i, "statedir")))
            statedir = v;
        else if ((v = flag_value("debug derp-send", argc, argv, &i, "count"))) {
            count = strtoll(v, &end, 10);
            if (!*v || *end || count < 1 || (unsigned long long)count > HWC_DBG_MAX_COUNT)
                die_usage("debug derp-send", "--count %s: expected 1 to %llu", v, HWC_DBG_MAX_COUNT);
        } else if ((v = flag_value("debug derp-send", argc, argv, &i, "size"))) {
            size = strtoll(v, &end, 10);
            if (!*v || *end || size < HWC_DBG_HDR_LEN || size > HWC_DBG_MAX_SIZE)
                die_usage("debug derp-send", "--size %s: expected %d to %d bytes", v, HWC_DBG_HDR_LEN,
                          HWC_DBG_MAX_SIZE);
        } else if (flag_bool(argv[i], "json"))
            json = true;
        else if (argv[i][0] != '-' && !peer)
            peer = argv[i];
        else
            die_usage("debug derp-send", "unknown argument %s", argv[i]);
    }
    if (!peer)
        die_usage("debug derp-send", "%s", "which peer? give its name or IP address");
    json_t *req = json_object();
    json_object_set_new(req, "cmd", json_string("derp-send"));
    json_object_set_new(req, "peer", json_string(peer));
    json_object_set_new(req, "count", json_integer(count));
    json_object_set_new(req, "size", json_integer(size));
    /* The daemon answers when the peer acknowledged everything or went quiet for 5 s;
     * allow for a slow path (100 packets/s) before giving up on it. */
    long long timeout = 60000 + count * 10;
    json_t *r = call_with(req, statedir, timeout > INT32_MAX ? INT32_MAX : (int)timeout, "debug derp-send");
    const char *problem = json_string_value(json_object_get(r, "Problem"));
    if (json)
        print_json(r);
    else
        printf("derp-send to %s: %lld of %lld packets of %lld bytes acknowledged in %.3f s "
               "(%.0f packets/s, %.1f Mbit/s)\n",
               json_string_value(json_object_get(r, "Peer")), (long long)num(r, "Acked"), (long long)num(r, "Sent"),
               size, num(r, "Seconds"), num(r, "PacketsPerSecond"), num(r, "MbitPerSecond"));
    if (problem)
        fprintf(stderr, "hwclient debug derp-send: %s\n", problem);
    json_decref(r);
    return problem ? 1 : 0;
}

static void print_derp_stats(const json_t *st)
{
    const json_t *derp = json_object_get(st, "DERP");
    printf("home region: %lld, UDP port %lld\n", (long long)num(derp, "HomeRegion"), (long long)num(derp, "UDPPort"));
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(derp, "Connections"), i, c) {
        printf("derp-%lld%s: %s", (long long)num(c, "RegionID"), json_is_true(json_object_get(c, "Home")) ? " (home)" : "",
               json_string_value(json_object_get(c, "State")));
        if (json_object_get(c, "Node"))
            printf(", node %s at %s (%s)", json_string_value(json_object_get(c, "Node")),
                   json_string_value(json_object_get(c, "Addr")),
                   json_is_true(json_object_get(c, "TLS")) ? "TLS" : "plain HTTP");
        if (json_object_get(c, "PingRTTms"))
            printf(", rtt %.2f ms", num(c, "PingRTTms"));
        printf(", sent %lld, received %lld, dropped %lld\n", (long long)num(c, "TxPackets"),
               (long long)num(c, "RxPackets"), (long long)num(c, "TxDrops"));
        const char *e = json_string_value(json_object_get(c, "Error"));
        if (e)
            printf("    %s\n", e);
    }
    const char *key;
    json_t *p;
    bool any = false;
    json_object_foreach((json_t *)json_object_get(st, "Received"), key, p) {
        if (!any)
            printf("received:\n");
        any = true;
        const json_t *run = json_object_get(p, "Run");
        const char *name = json_string_value(json_object_get(p, "Peer"));
        printf("  %s %s: %lld packets; last run %lld of %lld, lost %lld, reordered %lld%s\n",
               name && *name ? name : "(not in the netmap)", key, (long long)num(p, "Packets"),
               (long long)num(run, "Packets"), (long long)num(run, "Total"), (long long)num(run, "Lost"),
               (long long)num(run, "Reordered"), json_is_true(json_object_get(run, "Complete")) ? ", complete" : "");
    }
    if (!any)
        printf("received: nothing yet\n");
}

static int cmd_debug(int argc, char **argv)
{
    const char *sub = argc > 2 ? argv[2] : "";
    if (strcmp(sub, "derp-send") == 0)
        return cmd_debug_derp_send(argc, argv);
    if (strcmp(sub, "derp-stats") == 0) {
        const char *statedir = NULL;
        bool json = false;
        for (int i = 3; i < argc; i++) {
            const char *v;
            if ((v = flag_value("debug derp-stats", argc, argv, &i, "statedir")))
                statedir = v;
            else if (flag_bool(argv[i], "json"))
                json = true;
            else
                die_usage("debug derp-stats", "unknown argument %s", argv[i]);
        }
        json_t *req = json_object();
        json_object_set_new(req, "cmd", json_string("derp-stats"));
        json_t *st = call_with(req, statedir, CALL_TIMEOUT_MS, "debug derp-stats");
        if (json)
            print_json(st);
        else
            print_derp_stats(st);
        json_decref(st);
        return 0;
    }
    if (strcmp(sub, "force-prefer-derp") == 0) {
        const char *statedir = NULL, *region = NULL;
        for (int i = 3; i < argc; i++) {
            const char *v;
            if ((v = flag_value("debug force-prefer-derp", argc, argv, &i, "statedir")))
                statedir = v;
            else if (argv[i][0] != '-' && !region)
                region = argv[i];
            else
                die_usage("debug force-prefer-derp", "unknown argument %s", argv[i]);
        }
        char *end;
        long r = region ? strtol(region, &end, 10) : -1;
        if (!region || !*region || *end || r < 0 || r > INT32_MAX)
            die_usage("debug force-prefer-derp", "%s", "expected a region id (0 to stop forcing)");
        json_t *req = json_object();
        json_object_set_new(req, "cmd", json_string("force-prefer-derp"));
        json_object_set_new(req, "region", json_integer(r));
        json_decref(call_with(req, statedir, CALL_TIMEOUT_MS, "debug force-prefer-derp"));
        return 0;
    }
    die_usage("debug", "unknown debug command \"%s\" (derp-send, derp-stats, force-prefer-derp)", sub);
}

static int cmd_down(int argc, char **argv)
{
    struct client_args a = {0};
    parse_client_args("down", argc, argv, &a, false, false);
    json_t *r = call("down", &a, "down");
    json_decref(r);
    return 0;
}

static int cmd_wg(int argc, char **argv)
{
    const char *conf = NULL, *tun = HWC_TUN_DEFAULT_NAME, *v;
    for (int i = 2; i < argc; i++) {
        if ((v = flag_value("wg", argc, argv, &i, "c")) || (v = flag_value("wg", argc, argv, &i, "config")))
            conf = v;
        else if ((v = flag_value("wg", argc, argv, &i, "tun")))
            tun = v;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else
            die_usage("wg", "unknown argument %s", argv[i]);
    }
    if (!conf)
        die_usage("wg", "%s", "-c FILE is required (a wg-quick style [Interface]/[Peer] file)");
    if (strcmp(tun, "userspace") == 0) {
        fprintf(stderr, "hwclient wg: --tun=userspace (no TUN device, SOCKS5) is not supported yet\n");
        return 1;
    }
    struct hwc_wgconf c;
    char err[512];
    if (hwc_wgconf_load(conf, &c, err, sizeof err) != 0) {
        fprintf(stderr, "hwclient wg: %s\n", err);
        return 1;
    }
    int rc = hwc_wg_run(&c, tun);
    hwc_wgconf_free(&c);
    return rc;
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
    if (strcmp(cmd, "netcheck") == 0)
        return cmd_netcheck(argc, argv);
    if (strcmp(cmd, "ping") == 0)
        return cmd_ping(argc, argv);
    if (strcmp(cmd, "debug") == 0)
        return cmd_debug(argc, argv);
    if (strcmp(cmd, "wg") == 0)
        return cmd_wg(argc, argv);
    die_usage(NULL, "unknown command %s", cmd);
}
