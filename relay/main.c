/* hwrelay: flags named like derper's, the server key file, listeners, signals. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

static struct hw_loop *signal_loop;

static void on_signal(int sig)
{
    (void)sig;
    if (signal_loop)
        hw_loop_stop(signal_loop);   /* a store and a write(): async-signal-safe */
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hwrelay [flags]\n"
            "  -a ADDR                      listen address, \":port\", \"ip:port\" or \"[ip]:port\" (default :443)\n"
            "  -hostname NAME               TLS host name, or the relay's IP for a self-signed certificate\n"
            "  -certmode manual|ipself|http certificate source (default manual); http = plain HTTP, no TLS\n"
            "  -certdir DIR                 where <hostname>.crt and .key live (default /var/lib/hwrelay/certs)\n"
            "  -http-port N                 plain HTTP port for /generate_204 when serving TLS (default 80, -1 = off)\n"
            "  -stun-port N                 UDP STUN port (default 3478)\n"
            "  -stun=false                  no STUN server\n"
            "  -derp=false                  no DERP (STUN and probes only)\n"
            "  -c PATH                      server key file, JSON {\"PrivateKey\":\"privkey:<hex>\"}, created 0600\n"
            "  -verify-client-url URL       admission controller for each new client\n"
            "  -verify-client-url-fail-open allow clients when the controller is unreachable (default false)\n"
            "  -mesh-with HOSTS             comma-separated relays of this region to mesh with\n"
            "  -mesh-psk-file PATH          file with the region's 64-hex-digit mesh key\n"
            "  -tcp-write-timeout DUR       drop a client whose socket takes no data for this long (default 2s)\n"
            "  -rate-config PATH            JSON per-client receive limit, reloaded on SIGHUP:\n"
            "                               {\"PerClientRateLimitBytesPerSec\":N,\"PerClientRateBurstBytes\":N}\n"
            "                               (0 or no file = unlimited; the burst is at least 65568)\n"
            "  -accept-connection-limit N   new TLS connections per second, the rest are closed (default Inf)\n"
            "  -accept-connection-burst N   how many of them may come at once (default unlimited)\n"
            "  -bootstrap-dns-names NAMES   comma-separated names whose addresses /bootstrap-dns serves\n"
            "  -unpublished-bootstrap-dns-names NAMES\n"
            "                               names answered only to /bootstrap-dns?q=NAME\n"
            "  -log-level LEVEL             debug|info|warn|error (default info)\n");
}

/* Go's flag syntax: -name value, -name=value, --name=value; booleans take only =. */
struct flag_iter {
    int argc, i;
    char **argv;
};

static bool take_flag(struct flag_iter *it, const char *name, bool is_bool, const char **value, bool *ok)
{
    const char *arg = it->argv[it->i];
    if (arg[0] != '-')
        return false;
    arg += arg[1] == '-' ? 2 : 1;
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0 || (arg[n] != '\0' && arg[n] != '='))
        return false;
    if (arg[n] == '=') {
        *value = arg + n + 1;
    } else if (is_bool) {
        *value = "true";
    } else if (it->i + 1 < it->argc) {
        *value = it->argv[++it->i];
    } else {
        fprintf(stderr, "hwrelay: flag needs an argument: -%s\n", name);
        *ok = false;
        return true;
    }
    return true;
}

static int parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "1") || !strcmp(s, "t") || !strcmp(s, "TRUE") || !strcmp(s, "True"))
        *out = true;
    else if (!strcmp(s, "false") || !strcmp(s, "0") || !strcmp(s, "f") || !strcmp(s, "FALSE") ||
             !strcmp(s, "False"))
        *out = false;
    else
        return -1;
    return 0;
}

static int parse_int(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < -1 || v > 65535)
        return -1;
    *out = (int)v;
    return 0;
}

/* Go's strconv.ParseFloat forms, including Inf; not negative, not NaN. */
static int parse_rate(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno == ERANGE || v != v || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int parse_count(const char *s, double *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno == ERANGE || v < 0)
        return -1;
    *out = (double)v;
    return 0;
}

static const char *rate_config_path;

static int parse_flags(int argc, char **argv, struct relay_config *cfg, const char **log_level)
{
    struct flag_iter it = {.argc = argc, .argv = argv};
    for (it.i = 1; it.i < argc; it.i++) {
        const char *v = NULL;
        const char *flag = argv[it.i];
        bool ok = true;
        int bad = 0;
        if (!strcmp(argv[it.i], "-h") || !strcmp(argv[it.i], "-help") || !strcmp(argv[it.i], "--help")) {
            usage(stdout);
            exit(0);
        }
        if (take_flag(&it, "a", false, &v, &ok))
            cfg->addr = v;
        else if (take_flag(&it, "hostname", false, &v, &ok))
            cfg->hostname = v;
        else if (take_flag(&it, "certmode", false, &v, &ok)) {
            if (v && !strcmp(v, "manual"))
                cfg->certmode = CERTMODE_MANUAL;
            else if (v && !strcmp(v, "ipself"))
                cfg->certmode = CERTMODE_IPSELF;
            else if (v && !strcmp(v, "http"))
                cfg->certmode = CERTMODE_HTTP;
            else if (v) {
                fprintf(stderr, "hwrelay: -certmode %s: want manual, ipself or http "
                                "(no ACME here: use certmode manual with a certificate from your ACME client)\n", v);
                bad = 1;
            }
        } else if (take_flag(&it, "certdir", false, &v, &ok))
            cfg->certdir = v;
        else if (take_flag(&it, "http-port", false, &v, &ok))
            bad = v && parse_int(v, &cfg->http_port) < 0;
        else if (take_flag(&it, "stun-port", false, &v, &ok))
            bad = v && (parse_int(v, &cfg->stun_port) < 0 || cfg->stun_port <= 0);
        else if (take_flag(&it, "stun", true, &v, &ok))
            bad = v && parse_bool(v, &cfg->stun) < 0;
        else if (take_flag(&it, "derp", true, &v, &ok))
            bad = v && parse_bool(v, &cfg->derp) < 0;
        else if (take_flag(&it, "c", false, &v, &ok))
            cfg->config_path = v;
        else if (take_flag(&it, "verify-client-url-fail-open", true, &v, &ok))
            bad = v && parse_bool(v, &cfg->verify_fail_open) < 0;
        else if (take_flag(&it, "verify-client-url", false, &v, &ok))
            cfg->verify_url = v && *v ? v : NULL;
        else if (take_flag(&it, "mesh-with", false, &v, &ok))
            cfg->mesh_with = v && *v ? v : NULL;
        else if (take_flag(&it, "mesh-psk-file", false, &v, &ok))
            cfg->mesh_psk_file = v && *v ? v : NULL;
        else if (take_flag(&it, "tcp-write-timeout", false, &v, &ok))
            bad = v && hw_parse_duration_ms(v, &cfg->write_timeout_ms) < 0;
        else if (take_flag(&it, "rate-config", false, &v, &ok))
            rate_config_path = v && *v ? v : NULL;
        else if (take_flag(&it, "accept-connection-limit", false, &v, &ok))
            bad = v && parse_rate(v, &cfg->accept_limit) < 0;
        else if (take_flag(&it, "accept-connection-burst", false, &v, &ok))
            bad = v && parse_count(v, &cfg->accept_burst) < 0;
        else if (take_flag(&it, "bootstrap-dns-names", false, &v, &ok))
            cfg->bootstrap_dns_names = v;
        else if (take_flag(&it, "unpublished-bootstrap-dns-names", false, &v, &ok))
            cfg->unpublished_bootstrap_dns_names = v;
        else if (take_flag(&it, "log-level", false, &v, &ok))
            *log_level = v;
        else {
            fprintf(stderr, "hwrelay: unknown flag %s\n", argv[it.i]);
            usage(stderr);
            return -1;
        }
        if (!ok)
            return -1;
        if (bad) {
            /* "-flag=value" names both already; "-flag value" needs the value added. */
            if (strchr(flag, '='))
                fprintf(stderr, "hwrelay: bad value for %s\n", flag);
            else
                fprintf(stderr, "hwrelay: bad value for %s: %s\n", flag, v ? v : "");
            return -1;
        }
    }
    return 0;
}

/* derper's RateConfig file: {"PerClientRateLimitBytesPerSec":N,"PerClientRateBurstBytes":N},
 * names matched without regard to case and other members ignored, as Go's JSON decoder
 * does. Returns 0, or -1 with the reason logged. */
static int load_rate_config(const char *path, uint64_t *rate, uint64_t *burst)
{
    json_error_t err;
    json_t *o = json_load_file(path, 0, &err);
    if (!o) {
        log_error("hwrelay: -rate-config %s:%d: %s", path, err.line, err.text);
        return -1;
    }
    if (!json_is_object(o)) {
        log_error("hwrelay: -rate-config %s: want a JSON object", path);
        json_decref(o);
        return -1;
    }
    *rate = *burst = 0;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        uint64_t *dst = !strcasecmp(k, "PerClientRateLimitBytesPerSec") ? rate
                        : !strcasecmp(k, "PerClientRateBurstBytes")     ? burst
                                                                         : NULL;
        if (!dst || json_is_null(v))
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            log_error("hwrelay: -rate-config %s: %s must be a whole number of bytes, 0 or more", path, k);
            json_decref(o);
            return -1;
        }
        *dst = (uint64_t)json_integer_value(v);
    }
    json_decref(o);
    return 0;
}

static int apply_rate_config(struct relay *r)
{
    uint64_t rate, burst;
    if (load_rate_config(rate_config_path, &rate, &burst) < 0)
        return -1;
    burst = relay_set_client_rate(r, rate, burst);
    log_info("hwrelay: rate config applied: client-rate=%llu bytes/sec, client-burst=%llu bytes",
             (unsigned long long)rate, (unsigned long long)burst);
    return 0;
}

/* SIGHUP reloads -rate-config: the handler only writes a byte; the loop does the work. */
static int sighup_pipe[2] = {-1, -1};

static void on_sighup(int sig)
{
    (void)sig;
    int saved = errno;
    char b = 1;
    if (write(sighup_pipe[1], &b, 1) < 0) {
        /* the pipe is full: a reload is already pending */
    }
    errno = saved;
}

static void on_sighup_pipe(struct hw_loop *loop, int fd, int events, void *arg)
{
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    if (!rate_config_path) {
        log_info("hwrelay: SIGHUP: nothing to reload (no -rate-config)");
        return;
    }
    log_info("hwrelay: SIGHUP: reloading rate config from %s", rate_config_path);
    if (apply_rate_config(arg) < 0)
        log_warn("hwrelay: rate config reload failed; the previous limits stay");
}

/* derper's key file: {"PrivateKey":"privkey:<64 hex>"}, created on first start. */
static int load_or_create_key(struct relay *r)
{
    const char *path = r->cfg.config_path;
    uint8_t priv[32];
    size_t len = 0;
    char *text = hw_read_file(path, &len);
    if (!text) {
        if (errno != ENOENT) {
            log_error("hwrelay: %s: %s", path, strerror(errno));
            return -1;
        }
        randombytes_buf(priv, 32);
        priv[0] &= 248;
        priv[31] = (priv[31] & 127) | 64;
        char hex[65];
        hw_hex_encode(priv, 32, hex);
        char *priv_text = hw_sprintf("privkey:%s", hex);
        json_t *o = json_object();
        json_object_set_new(o, "PrivateKey", json_string(priv_text));
        free(priv_text);
        char *out = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        json_decref(o);
        char *dir = hw_dirname(path);
        hw_mkdir_p(dir, 0700);
        free(dir);
        int rc = hw_write_file_atomic(path, out, strlen(out), 0600);
        sodium_memzero(out, strlen(out));
        free(out);
        if (rc < 0) {
            log_error("hwrelay: cannot write %s: %s", path, strerror(errno));
            return -1;
        }
        log_info("hwrelay: created a new server key in %s", path);
    } else {
        json_error_t err;
        json_t *o = json_loadb(text, len, 0, &err);
        sodium_memzero(text, len);
        free(text);
        const char *pk = json_string_value(json_object_get(o, "PrivateKey"));
        int ok = pk && strncmp(pk, "privkey:", 8) == 0 && strlen(pk) == 72 &&
                 hw_hex_decode(pk + 8, priv, 32) == 32;
        json_decref(o);
        if (!ok) {
            log_error("hwrelay: %s: want {\"PrivateKey\":\"privkey:<64 hex digits>\"}", path);
            return -1;
        }
    }
    relay_set_key(r, priv);
    sodium_memzero(priv, sizeof priv);
    return 0;
}

static int load_mesh_key(struct relay *r)
{
    if (!r->cfg.mesh_psk_file)
        return 0;
    size_t len = 0;
    char *text = hw_read_file(r->cfg.mesh_psk_file, &len);
    if (!text) {
        log_error("hwrelay: mesh key %s: %s", r->cfg.mesh_psk_file, strerror(errno));
        return -1;
    }
    /* Whitespace around the key is trimmed; the key itself is 64 lowercase hex. */
    char *s = text;
    while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t'))
        s[--n] = '\0';
    bool lower = true;
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 'A' && s[i] <= 'F')
            lower = false;
    int ok = n == 64 && lower && hw_hex_decode(s, r->mesh_key, 32) == 32;
    sodium_memzero(text, len);
    free(text);
    if (!ok) {
        log_error("hwrelay: mesh key in %s must be 64 lowercase hex digits", r->cfg.mesh_psk_file);
        return -1;
    }
    r->have_mesh_key = true;
    log_info("hwrelay: DERP mesh key configured");
    return 0;
}

/* Empty host: IPv4 and IPv6 wildcards (v6-only, so each family has its own socket). */
static int relay_listen_tcp(const char *host, int port, int out_fds[2])
{
    const char *hosts[2] = {host, NULL};
    int nh = 1, n = 0;
    if (!host || !*host) {
        hosts[0] = "0.0.0.0";
        hosts[1] = "::";
        nh = 2;
    }
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    for (int i = 0; i < nh; i++) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICHOST};
        struct addrinfo *res = NULL;
        if (getaddrinfo(hosts[i], ps, &hints, &res) != 0 || !res) {
            log_error("hwrelay: bad listen address %s", hosts[i]);
            goto fail;
        }
        int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (res->ai_family == AF_INET6)
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        }
        if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
            int e = errno;
            freeaddrinfo(res);
            if (fd >= 0)
                close(fd);
            if (nh == 2 && i == 1 && (e == EAFNOSUPPORT || e == EADDRNOTAVAIL)) {
                log_warn("hwrelay: no IPv6 listener (%s)", strerror(e));
                continue;
            }
            log_error("hwrelay: cannot listen on %s port %d: %s", hosts[i], port, strerror(e));
            goto fail;
        }
        freeaddrinfo(res);
        out_fds[n++] = fd;
    }
    return n;
fail:
    for (int i = 0; i < n; i++)
        close(out_fds[i]);
    return -1;
}

struct listener {
    struct relay *r;
    bool tls, http_port;
};

static struct listener listeners[4];

static void on_listen(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct listener *l = arg;
    conn_accept(l->r, fd, l->tls, l->http_port);
}

static int start_listeners(struct relay *r, const char *host, int port)
{
    int fds[2];
    int n = relay_listen_tcp(host, port, fds);
    if (n < 0)
        return -1;
    bool tls = r->cfg.certmode != CERTMODE_HTTP;
    listeners[0] = (struct listener){r, tls, false};
    for (int i = 0; i < n; i++) {
        r->listen_fds[r->n_listen++] = fds[i];
        hw_loop_add(r->loop, fds[i], HW_EV_READ, on_listen, &listeners[0]);
    }
    log_info("hwrelay: serving %s on %s (server key %s)", tls ? "HTTPS" : "HTTP", r->cfg.addr, r->pubhex);
    if (tls && r->cfg.http_port > 0) {
        n = relay_listen_tcp(host, r->cfg.http_port, fds);
        if (n < 0)
            return -1;
        listeners[1] = (struct listener){r, false, true};
        for (int i = 0; i < n; i++) {
            r->listen_fds[r->n_listen++] = fds[i];
            hw_loop_add(r->loop, fds[i], HW_EV_READ, on_listen, &listeners[1]);
        }
        log_info("hwrelay: plain HTTP for captive-portal checks on port %d", r->cfg.http_port);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct relay_config cfg;
    relay_config_defaults(&cfg);
    const char *log_level = "info";
    if (parse_flags(argc, argv, &cfg, &log_level) < 0)
        return 2;
    enum hw_log_level lvl;
    if (hw_log_parse_level(log_level, &lvl) < 0) {
        fprintf(stderr, "hwrelay: bad -log-level %s\n", log_level);
        return 2;
    }
    hw_log_set_level(lvl);
    if (sodium_init() < 0) {
        log_error("hwrelay: libsodium failed to start");
        return 1;
    }
    if (!cfg.config_path) {
        if (getuid() != 0) {
            log_error("hwrelay: -c <key file> not given");
            return 2;
        }
        cfg.config_path = "/var/lib/hwrelay/hwrelay.key";
        log_info("hwrelay: no -c given; using %s", cfg.config_path);
    }
    char host[256];
    int port;
    if (relay_split_hostport(cfg.addr, host, sizeof host, &port) < 0) {
        log_error("hwrelay: invalid -a %s: want :port, ip:port or [ip]:port", cfg.addr);
        return 2;
    }
    if (cfg.mesh_with && !cfg.mesh_psk_file) {
        log_error("hwrelay: -mesh-with requires -mesh-psk-file");
        return 2;
    }
    /* Thousands of clients need thousands of descriptors. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    struct hw_loop *loop = hw_loop_new();
    if (!loop)
        return 1;
    struct relay *r = relay_new(loop, &cfg);

    if (load_or_create_key(r) < 0 || load_mesh_key(r) < 0 || tls_init(r) < 0 || verify_init(r) < 0)
        goto out;
    if (rate_config_path && apply_rate_config(r) < 0)
        goto out;
    if (cfg.certmode == CERTMODE_HTTP && (cfg.accept_limit != INFINITY || cfg.accept_burst < (double)INT64_MAX))
        log_warn("hwrelay: -accept-connection-limit and -burst apply to the TLS listener only (as in derper); "
                 "with -certmode http they have no effect");
    if (bootstrap_dns_start(r) < 0)
        goto out;
    if (cfg.stun) {
        char err[256];
        if (relay_stun_listen(r, host, cfg.stun_port, err, sizeof err) < 0) {
            log_error("hwrelay: %s", err);
            goto out;
        }
    }
    if (start_listeners(r, host, port) < 0)
        goto out;
    if (mesh_init(r) < 0)
        goto out;

    signal_loop = loop;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* derper exits on SIGHUP without -rate-config; a reload (systemctl reload) that
     * kills the relay helps nobody, so hwrelay always takes it. */
    if (pipe2(sighup_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        log_error("hwrelay: pipe: %s", strerror(errno));
        goto out;
    }
    hw_loop_add(loop, sighup_pipe[0], HW_EV_READ, on_sighup_pipe, r);
    struct sigaction hup = {.sa_handler = on_sighup, .sa_flags = SA_RESTART};
    sigemptyset(&hup.sa_mask);
    sigaction(SIGHUP, &hup, NULL);
    hw_loop_run(loop);
    log_info("hwrelay: shutting down (%zu connections, %llu packets relayed, %llu dropped)", r->n_conns,
             (unsigned long long)r->packets_relayed, (unsigned long long)r->packets_dropped);
    rc = 0;
out:
    if (sighup_pipe[0] >= 0) {
        signal(SIGHUP, SIG_DFL);
        hw_loop_remove(loop, sighup_pipe[0]);
        close(sighup_pipe[0]);
        close(sighup_pipe[1]);
    }
    relay_free(r);
    hw_loop_free(loop);
    return rc;
}
