/* Reading config.yaml. The file is loaded into a libyaml document, flattened into one
 * entry per dotted key ("derp.server.enabled") with the key's line, and each entry is
 * then applied through the key table below. Keeping the walk and the application
 * apart lets newer Headscale key names win over older ones whatever their order in
 * the file, and lets the cross-key checks at the end point at the line the admin
 * wrote. */
#include "common/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

#include "common/util.h"

#define MS_PER_SECOND 1000LL
#define MS_PER_MINUTE (60 * MS_PER_SECOND)
#define MS_PER_HOUR (60 * MS_PER_MINUTE)

/* Clients send a keepalive every 60s; Headscale refuses anything shorter than this so
 * an ephemeral node is never deleted between two keepalives. */
#define MIN_EPHEMERAL_INACTIVITY_MS (65 * MS_PER_SECOND)

/* Known sections nest at most four deep; the limit only stops alias loops and
 * pathological nesting inside sections we accept without reading. */
#define MAX_DEPTH 16

/* ---------------------------------------------------------------- defaults */

static void set_string(char **field, const char *value)
{
    free(*field);
    *field = value ? hw_strdup(value) : NULL;
}

static void free_string_list(char ***items, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*items)[i]);
    free(*items);
    *items = NULL;
    *n = 0;
}

static void set_string_list(char ***items, size_t *n, const char *const *values, size_t n_values)
{
    free_string_list(items, n);
    *items = hw_calloc(n_values, sizeof **items);
    for (size_t i = 0; i < n_values; i++)
        (*items)[i] = hw_strdup(values[i]);
    *n = n_values;
}

void hw_config_defaults(struct hw_config *cfg)
{
    static const char *const global_nameservers[] = {"1.1.1.1", "1.0.0.1"};

    memset(cfg, 0, sizeof *cfg);
    cfg->server_url = hw_strdup("http://127.0.0.1:8080");
    cfg->listen_addr = hw_strdup("127.0.0.1:8080");
    cfg->noise_private_key_path = hw_strdup("./data/noise_private.key");

    cfg->prefix_v4 = hw_strdup("100.64.0.0/10");
    cfg->prefix_v6 = hw_strdup("fd7a:115c:a1e0::/48");
    cfg->allocation = HW_ALLOC_SEQUENTIAL;

    cfg->database_type = hw_strdup("sqlite");
    cfg->database_sqlite_path = hw_strdup("./data/db.sqlite");
    cfg->database_sqlite_wal = true;
    cfg->database_sqlite_wal_autocheckpoint = 1000;

    cfg->derp_server_enabled = true;
    cfg->derp_server_region_id = 999;
    cfg->derp_server_region_code = hw_strdup("headwater");
    cfg->derp_server_region_name = hw_strdup("Headwater Embedded DERP");
    cfg->derp_server_stun_listen_addr = hw_strdup("127.0.0.1:3478");
    cfg->derp_server_private_key_path = hw_strdup("./data/derp_server_private.key");
    cfg->derp_server_verify_clients = true;
    cfg->derp_server_auto_add_region = true;
    cfg->derp_auto_update_enabled = true;
    cfg->derp_update_frequency_ms = 24 * MS_PER_HOUR;

    cfg->ephemeral_node_inactivity_timeout_ms = 30 * MS_PER_MINUTE;
    cfg->node_expiry_ms = 0;

    cfg->dns_magic_dns = true;
    cfg->dns_base_domain = hw_strdup("headwater.net");
    cfg->dns_override_local_dns = false;
    set_string_list(&cfg->dns_nameservers_global, &cfg->n_dns_nameservers_global,
                    global_nameservers, HW_ARRAY_LEN(global_nameservers));

    cfg->unix_socket = hw_strdup("./data/headwater.sock");
    cfg->unix_socket_permission = 0770;

    cfg->log_level = HW_LOG_INFO;
    cfg->log_format = hw_strdup("text");
    cfg->policy_mode = hw_strdup("file");
}

void hw_config_file_defaults(struct hw_config *cfg)
{
    hw_config_defaults(cfg);
    set_string(&cfg->noise_private_key_path, "/var/lib/headwater/noise_private.key");
    set_string(&cfg->database_sqlite_path, "/var/lib/headwater/db.sqlite");
    set_string(&cfg->derp_server_private_key_path, "/var/lib/headwater/derp_server_private.key");
    set_string(&cfg->unix_socket, "/var/run/headwater/headwater.sock");
    /* An installed server answers the world: the relay is an explicit choice, and
     * STUN, once the relay is on, must be reachable from outside. */
    cfg->derp_server_enabled = false;
    set_string(&cfg->derp_server_stun_listen_addr, "0.0.0.0:3478");
}

static void free_split(struct hw_config *cfg)
{
    for (size_t i = 0; i < cfg->n_dns_nameservers_split; i++) {
        struct hw_dns_nameserver_split *s = &cfg->dns_nameservers_split[i];
        free(s->domain);
        free_string_list(&s->servers, &s->n_servers);
    }
    free(cfg->dns_nameservers_split);
    cfg->dns_nameservers_split = NULL;
    cfg->n_dns_nameservers_split = 0;
}

static void free_extra_records(struct hw_config *cfg)
{
    for (size_t i = 0; i < cfg->n_dns_extra_records; i++) {
        free(cfg->dns_extra_records[i].name);
        free(cfg->dns_extra_records[i].type);
        free(cfg->dns_extra_records[i].value);
    }
    free(cfg->dns_extra_records);
    cfg->dns_extra_records = NULL;
    cfg->n_dns_extra_records = 0;
}

void hw_config_free(struct hw_config *cfg)
{
    char **strings[] = {
        &cfg->source_path, &cfg->server_url, &cfg->listen_addr, &cfg->metrics_listen_addr,
        &cfg->noise_private_key_path, &cfg->prefix_v4, &cfg->prefix_v6, &cfg->database_type,
        &cfg->database_sqlite_path, &cfg->derp_server_region_code, &cfg->derp_server_region_name,
        &cfg->derp_server_stun_listen_addr, &cfg->derp_server_private_key_path,
        &cfg->derp_server_ipv4, &cfg->derp_server_ipv6, &cfg->dns_base_domain,
        &cfg->dns_extra_records_path, &cfg->unix_socket, &cfg->log_format, &cfg->tls_cert_path,
        &cfg->tls_key_path, &cfg->policy_path, &cfg->policy_mode,
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(strings); i++)
        free(*strings[i]);
    free_string_list(&cfg->derp_urls, &cfg->n_derp_urls);
    free_string_list(&cfg->derp_paths, &cfg->n_derp_paths);
    free_string_list(&cfg->dns_nameservers_global, &cfg->n_dns_nameservers_global);
    free_string_list(&cfg->dns_search_domains, &cfg->n_dns_search_domains);
    free_split(cfg);
    free_extra_records(cfg);
    memset(cfg, 0, sizeof *cfg);
}

/* ------------------------------------------------------------- diagnostics */

static char *vformat(const char *fmt, va_list ap)
{
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0) {
        fputs("headwater: out of memory\n", stderr);
        abort();
    }
    return out;
}

static void add_diag(struct hw_config_result *res, int line, bool is_error, char *message)
{
    struct hw_config_diag *grown = realloc(res->diags, (res->n_diags + 1) * sizeof *grown);
    if (!grown) {
        fputs("headwater: out of memory\n", stderr);
        abort();
    }
    res->diags = grown;
    res->diags[res->n_diags++] = (struct hw_config_diag){line, is_error, message};
    if (is_error)
        res->n_errors++;
}

void hw_config_print_diags(const char *path, const struct hw_config_result *res, FILE *out)
{
    for (size_t i = 0; i < res->n_diags; i++) {
        const struct hw_config_diag *d = &res->diags[i];
        const char *kind = d->is_error ? "error" : "warning";
        if (d->line > 0)
            fprintf(out, "%s:%d: %s: %s\n", path, d->line, kind, d->message);
        else
            fprintf(out, "%s: %s\n", kind, d->message);
    }
}

void hw_config_result_free(struct hw_config_result *res)
{
    for (size_t i = 0; i < res->n_diags; i++)
        free(res->diags[i].message);
    free(res->diags);
    memset(res, 0, sizeof *res);
}

/* ------------------------------------------------------------ the loader */

struct loader;
struct entry;
typedef void (*apply_fn)(struct loader *L, const struct entry *e);

enum {
    KEY_REQUIRED = 1 << 0,          /* an empty value is an error, not "unset" */
    KEY_CONFIG_RELATIVE = 1 << 1,   /* a relative path is taken from the file's directory */
    KEY_IPV6 = 1 << 2,              /* the IPv6 flavour of an address or prefix key */
    KEY_POSITIVE = 1 << 3,          /* a duration that must not be 0 */
};

/* One key the file may set. Keys with no apply function are Headscale's, for features
 * headwater does not have: accepted, and reported only when `unsupported` is set and
 * the value asks for the feature. */
struct key_spec {
    const char *path;
    apply_fn apply;
    size_t field;              /* offsetof(struct hw_config, ...) for the generic appliers */
    size_t count_field;        /* the matching size_t for list fields */
    unsigned flags;
    long long min, max;        /* integer keys */
    const char *form;          /* the expected form, for error messages */
    const char *replaced_by[2]; /* an older Headscale name: ignored when one of these is set */
    const char *unsupported;   /* the warning for a feature headwater lacks */
};

struct entry {
    char *path;                /* dotted: "derp.server.enabled" */
    int line;                  /* of the key, 1-based */
    yaml_node_t *value;
    const struct key_spec *spec; /* NULL for sections and keys inside accepted sections */
    bool failed;               /* its value was refused, so the default still stands */
};

struct loader {
    yaml_document_t *doc;
    char *config_dir;          /* absolute, for relative paths */
    struct hw_config *cfg;
    struct hw_config_result *res;
    struct entry *entries;
    size_t n_entries;
    bool prefixes_from_file;   /* the file lists its prefixes, so defaults no longer apply */
};

static void report(struct loader *L, int line, bool is_error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(struct loader *L, int line, bool is_error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_diag(L->res, line, is_error, vformat(fmt, ap));
    va_end(ap);
}

#define error_at(L, line, ...) report((L), (line), true, __VA_ARGS__)
#define warning_at(L, line, ...) report((L), (line), false, __VA_ARGS__)

static int node_line(const yaml_node_t *node) { return (int)node->start_mark.line + 1; }

static yaml_node_t *node_at(struct loader *L, int index)
{
    return yaml_document_get_node(L->doc, index);
}

static const char *scalar_text(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

/* YAML's null: an empty or "~"/"null" plain scalar. Quoted "" is an empty string. */
static bool is_null(const yaml_node_t *node)
{
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *t = scalar_text(node);
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

/* How a value looks, for "got ..." in messages. */
static char *describe(const yaml_node_t *node)
{
    if (node->type == YAML_SEQUENCE_NODE)
        return hw_strdup("a list");
    if (node->type == YAML_MAPPING_NODE)
        return hw_strdup("a mapping of keys");
    if (is_null(node))
        return hw_strdup("nothing");
    const char *t = scalar_text(node);
    size_t len = strlen(t), shown = len > 60 ? 60 : len;
    char *out = hw_malloc(shown + 6);
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < shown; i++)
        out[o++] = iscntrl((unsigned char)t[i]) ? '?' : t[i];
    if (shown < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static void expected(struct loader *L, int line, const char *key, const char *form,
                     const yaml_node_t *got)
{
    char *seen = describe(got);
    error_at(L, line, "%s: expected %s, got %s", key, form, seen);
    free(seen);
}

/* The text of a scalar value ("" for null), or NULL after reporting anything else. */
static const char *scalar_value(struct loader *L, int line, const char *key, const char *form,
                                const yaml_node_t *node)
{
    if (node->type != YAML_SCALAR_NODE) {
        expected(L, line, key, form, node);
        return NULL;
    }
    if (is_null(node))
        return "";
    if (strlen(scalar_text(node)) != node->data.scalar.length) {
        error_at(L, line, "%s: the value contains a NUL character", key);
        return NULL;
    }
    return scalar_text(node);
}

static void *field_at(struct loader *L, size_t offset) { return (char *)L->cfg + offset; }

static struct entry *find_entry(struct loader *L, const char *path)
{
    for (size_t i = 0; i < L->n_entries; i++)
        if (!strcmp(L->entries[i].path, path))
            return &L->entries[i];
    return NULL;
}

/* The line of the first of the given keys the file sets, 0 when it sets none. */
static int line_of(struct loader *L, const char *const *paths)
{
    for (; *paths; paths++) {
        struct entry *e = find_entry(L, *paths);
        if (e)
            return e->line;
    }
    return 0;
}
#define LINE_OF(L, ...) line_of((L), (const char *const[]){__VA_ARGS__, NULL})

/* Whether any of the given keys had a refused value: checks across keys then skip, as
 * they would only judge the default left in its place. */
static bool any_failed(struct loader *L, const char *const *paths)
{
    for (; *paths; paths++) {
        struct entry *e = find_entry(L, *paths);
        if (e && e->failed)
            return true;
    }
    return false;
}
#define FAILED(L, ...) any_failed((L), (const char *const[]){__VA_ARGS__, NULL})

/* ------------------------------------------------------ value recognisers */

/* YAML 1.1 booleans, which Go's yaml accepts for bool fields. */
static int parse_bool(const char *t, bool *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES",
                                      "on", "On", "ON", "y", "Y"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO",
                                     "off", "Off", "OFF", "n", "N"};
    for (size_t i = 0; i < HW_ARRAY_LEN(yes); i++) {
        if (!strcmp(t, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcmp(t, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static bool parse_port(const char *t, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    long port = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)t[i]))
            return false;
        port = port * 10 + (t[i] - '0');
    }
    return port >= 1 && port <= 65535;
}

static bool is_ip(int family, const char *t, size_t len)
{
    char buf[INET6_ADDRSTRLEN + 1];
    unsigned char addr[16];
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, t, len);
    buf[len] = '\0';
    return inet_pton(family, buf, addr) == 1;
}

/* A DNS name or an IPv4 address: what may stand before ":port" without brackets. */
static bool is_host(const char *t, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    bool all_numeric = true;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!isalnum(c) && c != '.' && c != '-' && c != '_')
            return false;
        if (!isdigit(c) && c != '.')
            all_numeric = false;
    }
    return !all_numeric || is_ip(AF_INET, t, len);
}

/* HOST:PORT as Go's net.Listen takes it: "0.0.0.0:8080", "[::]:8080", ":8080". */
static bool is_host_port(const char *t)
{
    const char *port;
    if (t[0] == '[') {
        const char *close = strchr(t, ']');
        if (!close || close[1] != ':' || !is_ip(AF_INET6, t + 1, (size_t)(close - t - 1)))
            return false;
        port = close + 2;
    } else {
        const char *colon = strrchr(t, ':');
        if (!colon || memchr(t, ':', (size_t)(colon - t)))
            return false;
        if (colon != t && !is_host(t, (size_t)(colon - t)))
            return false;
        port = colon + 1;
    }
    return parse_port(port, strlen(port));
}

struct url_parts {
    const char *host;          /* into the text; not NUL-terminated */
    size_t host_len;
    const char *rest;          /* path, query and fragment, "" when none */
};

/* http:// or https://, a host (name, IPv4 or [IPv6]), an optional port. */
static bool parse_http_url(const char *t, struct url_parts *out)
{
    const char *p;
    if (!strncasecmp(t, "https://", 8))
        p = t + 8;
    else if (!strncasecmp(t, "http://", 7))
        p = t + 7;
    else
        return false;
    size_t auth_len = strcspn(p, "/?#");
    const char *port = NULL;
    if (p[0] == '[') {
        const char *close = memchr(p, ']', auth_len);
        if (!close || !is_ip(AF_INET6, p + 1, (size_t)(close - p - 1)))
            return false;
        out->host = p + 1;
        out->host_len = (size_t)(close - p - 1);
        if (close + 1 < p + auth_len) {
            if (close[1] != ':')
                return false;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(p, ':', auth_len);
        out->host = p;
        out->host_len = colon ? (size_t)(colon - p) : auth_len;
        if (!is_host(p, out->host_len))
            return false;
        if (colon)
            port = colon + 1;
    }
    if (port && !parse_port(port, (size_t)(p + auth_len - port)))
        return false;
    out->rest = p + auth_len;
    return true;
}

/* "192.0.2.1:53" or "[2001:db8::1]:53" */
static bool is_ip_port(const char *t)
{
    const char *colon = strrchr(t, ':');
    if (!colon || !is_host_port(t))
        return false;
    if (t[0] == '[')
        return true;   /* is_host_port checked the bracketed IPv6 address */
    return is_ip(AF_INET, t, (size_t)(colon - t));
}

/* What Tailscale clients take as a resolver: an address, an address with a port, or a
 * DNS-over-HTTPS (or, to an exit node, DNS-over-HTTP) URL. */
static bool is_nameserver(const char *t)
{
    struct url_parts url;
    return is_ip(AF_INET, t, strlen(t)) || is_ip(AF_INET6, t, strlen(t)) || is_ip_port(t) ||
           parse_http_url(t, &url);
}

struct prefix_range {
    int family;
    unsigned char base[16];
    int bits;
    const char *form;          /* for messages */
};

/* The only address ranges Tailscale clients accept for tailnet addresses. */
static const struct prefix_range tailscale_v4 = {
    AF_INET, {100, 64}, 10, "an IPv4 prefix inside 100.64.0.0/10"};
static const struct prefix_range tailscale_v6 = {
    AF_INET6, {0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0}, 48,
    "an IPv6 prefix inside fd7a:115c:a1e0::/48"};

enum prefix_verdict { PREFIX_BAD, PREFIX_OK, PREFIX_HOST_BITS };

/* An address, a slash and room for any int the compiler imagines there. */
#define PREFIX_TEXT_MAX (INET6_ADDRSTRLEN + 16)

/* Parses T as a prefix inside RANGE; CANONICAL gets the masked form. */
static enum prefix_verdict parse_prefix(const char *t, const struct prefix_range *range,
                                        char *canonical, size_t canonical_len)
{
    const char *slash = strchr(t, '/');
    int max_bits = range->family == AF_INET ? 32 : 128;
    if (!slash || !slash[1] || strlen(slash + 1) > 3)
        return PREFIX_BAD;
    int bits = 0;
    for (const char *p = slash + 1; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return PREFIX_BAD;
        bits = bits * 10 + (*p - '0');
    }
    if (bits > max_bits || (slash[1] == '0' && slash[2]))
        return PREFIX_BAD;
    char text[INET6_ADDRSTRLEN + 1];
    unsigned char addr[16] = {0};
    size_t len = (size_t)(slash - t);
    if (len == 0 || len >= sizeof text)
        return PREFIX_BAD;
    memcpy(text, t, len);
    text[len] = '\0';
    if (inet_pton(range->family, text, addr) != 1)
        return PREFIX_BAD;
    if (bits < range->bits)
        return PREFIX_BAD;
    for (int b = 0; b < range->bits; b++) {
        int mask = 0x80 >> (b % 8);
        if ((addr[b / 8] & mask) != (range->base[b / 8] & mask))
            return PREFIX_BAD;
    }
    bool host_bits = false;
    for (int b = bits; b < max_bits; b++) {
        int mask = 0x80 >> (b % 8);
        if (addr[b / 8] & mask) {
            host_bits = true;
            addr[b / 8] &= (unsigned char)~mask;
        }
    }
    inet_ntop(range->family, addr, text, sizeof text);
    snprintf(canonical, canonical_len, "%s/%d", text, bits);
    return host_bits ? PREFIX_HOST_BITS : PREFIX_OK;
}

/* ------------------------------------------------------------ list values */

struct item {
    const char *text;
    int line;
};

/* The scalar items of a list value. A single scalar counts as a one-item list and null
 * as an empty one, as Headscale (viper) reads them. Returns NULL after reporting a value
 * of the wrong shape; otherwise a malloc'd array, possibly empty. */
static struct item *list_items(struct loader *L, const struct entry *e, const yaml_node_t *node,
                               const char *item_form, size_t *n_out)
{
    *n_out = 0;
    if (node->type == YAML_MAPPING_NODE) {
        char *form = hw_sprintf("a list of %s", item_form);
        expected(L, e->line, e->path, form, node);
        free(form);
        return NULL;
    }
    if (node->type == YAML_SCALAR_NODE) {
        const char *t = scalar_value(L, e->line, e->path, item_form, node);
        if (!t)
            return NULL;
        struct item *items = hw_calloc(1, sizeof *items);
        if (*t) {
            items[0] = (struct item){t, node_line(node)};
            *n_out = 1;
        }
        return items;
    }
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    struct item *items = hw_calloc(n, sizeof *items);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(L, node->data.sequence.items.start[i]);
        const char *t = scalar_value(L, node_line(item), e->path, item_form, item);
        if (!t) {
            ok = false;
            continue;
        }
        if (!*t) {
            expected(L, node_line(item), e->path, item_form, item);
            ok = false;
            continue;
        }
        items[(*n_out)++] = (struct item){t, node_line(item)};
    }
    if (!ok) {
        free(items);
        *n_out = 0;
        return NULL;
    }
    return items;
}

static void store_items(char ***list, size_t *count, const struct item *items, size_t n)
{
    free_string_list(list, count);
    *list = hw_calloc(n, sizeof **list);
    for (size_t i = 0; i < n; i++)
        (*list)[i] = hw_strdup(items[i].text);
    *count = n;
}

/* --------------------------------------------------------------- appliers */

static char *config_relative(struct loader *L, const char *path)
{
    if (path[0] == '/' || !L->config_dir)
        return hw_strdup(path);
    while (path[0] == '.' && path[1] == '/')
        path += 2;
    return hw_sprintf("%s/%s", L->config_dir, path);
}

static void apply_string(struct loader *L, const struct entry *e)
{
    const struct key_spec *s = e->spec;
    const char *form = s->form ? s->form : "a string";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (!t)
        return;
    char **field = field_at(L, s->field);
    if (!*t) {
        if (s->flags & KEY_REQUIRED)
            expected(L, e->line, e->path, form, e->value);
        else
            set_string(field, NULL);
        return;
    }
    free(*field);
    *field = (s->flags & KEY_CONFIG_RELATIVE) ? config_relative(L, t) : hw_strdup(t);
}

static void apply_bool(struct loader *L, const struct entry *e)
{
    const char *t = scalar_value(L, e->line, e->path, "true or false", e->value);
    bool value;
    if (!t)
        return;
    if (parse_bool(t, &value) < 0) {
        expected(L, e->line, e->path, "true or false", e->value);
        return;
    }
    *(bool *)field_at(L, e->spec->field) = value;
}

static void apply_int(struct loader *L, const struct entry *e)
{
    const struct key_spec *s = e->spec;
    char *form = hw_sprintf("a whole number from %lld to %lld", s->min, s->max);
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (t) {
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (!*t || *end || errno || v < s->min || v > s->max || isspace((unsigned char)*t))
            expected(L, e->line, e->path, form, e->value);
        else
            *(int *)field_at(L, s->field) = (int)v;
    }
    free(form);
}

static void apply_duration(struct loader *L, const struct entry *e)
{
    const struct key_spec *s = e->spec;
    const char *form = s->form ? s->form : "a duration like 30m, 24h or 1h30m";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    int64_t ms;
    if (!t)
        return;
    if (hw_parse_duration_ms(t, &ms) < 0 || ((s->flags & KEY_POSITIVE) && ms == 0)) {
        expected(L, e->line, e->path, form, e->value);
        return;
    }
    *(int64_t *)field_at(L, s->field) = ms;
}

static void apply_host_port(struct loader *L, const struct entry *e)
{
    const struct key_spec *s = e->spec;
    char *form = hw_sprintf("HOST:PORT (like %s)%s", s->form,
                            (s->flags & KEY_REQUIRED) ? "" : " or \"\" for off");
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (t) {
        if (!*t && !(s->flags & KEY_REQUIRED))
            set_string(field_at(L, s->field), NULL);
        else if (!is_host_port(t))
            expected(L, e->line, e->path, form, e->value);
        else
            set_string(field_at(L, s->field), t);
    }
    free(form);
}

static void apply_server_url(struct loader *L, const struct entry *e)
{
    const char *form =
        "http://HOST[:PORT] or https://HOST[:PORT] (like https://headwater.example.com)";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    struct url_parts url;
    if (!t)
        return;
    /* Clients append /key, /ts2021 ... to the URL; a path would send them elsewhere. */
    if (!parse_http_url(t, &url) || (url.rest[0] && strcmp(url.rest, "/"))) {
        expected(L, e->line, e->path, form, e->value);
        return;
    }
    char *value = hw_strdup(t);
    size_t len = strlen(value);
    if (value[len - 1] == '/')
        value[len - 1] = '\0';
    free(L->cfg->server_url);
    L->cfg->server_url = value;
}

/* A file that names any prefix replaces both defaults: Headscale has no default
 * prefixes, so a family the file leaves out is one the admin does not want. */
static void prefixes_come_from_file(struct loader *L)
{
    if (L->prefixes_from_file)
        return;
    L->prefixes_from_file = true;
    set_string(&L->cfg->prefix_v4, NULL);
    set_string(&L->cfg->prefix_v6, NULL);
}

static void apply_prefix(struct loader *L, const struct entry *e)
{
    const struct prefix_range *range = (e->spec->flags & KEY_IPV6) ? &tailscale_v6 : &tailscale_v4;
    const char *t = scalar_value(L, e->line, e->path, range->form, e->value);
    char canonical[PREFIX_TEXT_MAX];
    if (!t)
        return;
    prefixes_come_from_file(L);
    if (!*t)
        return;   /* "" turns the family off, as in Headscale */
    switch (parse_prefix(t, range, canonical, sizeof canonical)) {
    case PREFIX_BAD:
        expected(L, e->line, e->path, range->form, e->value);
        return;
    case PREFIX_HOST_BITS:
        warning_at(L, e->line, "%s: \"%s\" has host bits set; using %s", e->path, t, canonical);
        break;
    case PREFIX_OK:
        break;
    }
    set_string(field_at(L, e->spec->field), canonical);
}

/* Headscale before 0.23: one list with prefixes of both families. */
static void apply_ip_prefixes(struct loader *L, const struct entry *e)
{
    const char *form = "prefixes inside 100.64.0.0/10 or fd7a:115c:a1e0::/48";
    size_t n;
    struct item *items = list_items(L, e, e->value, "a prefix", &n);
    if (!items)
        return;
    prefixes_come_from_file(L);
    int v4_line = 0, v6_line = 0;
    for (size_t i = 0; i < n; i++) {
        const struct prefix_range *range =
            strchr(items[i].text, ':') ? &tailscale_v6 : &tailscale_v4;
        char canonical[PREFIX_TEXT_MAX];
        enum prefix_verdict verdict =
            parse_prefix(items[i].text, range, canonical, sizeof canonical);
        if (verdict == PREFIX_BAD) {
            error_at(L, items[i].line, "%s: expected %s, got \"%s\"", e->path, form, items[i].text);
            continue;
        }
        if (verdict == PREFIX_HOST_BITS)
            warning_at(L, items[i].line, "%s: \"%s\" has host bits set; using %s", e->path,
                       items[i].text, canonical);
        int *seen = range == &tailscale_v4 ? &v4_line : &v6_line;
        if (*seen) {
            error_at(L, items[i].line,
                     "%s: %s is a second %s prefix (the first is at line %d); headwater "
                     "allocates from one IPv4 and one IPv6 prefix",
                     e->path, items[i].text, range == &tailscale_v4 ? "IPv4" : "IPv6", *seen);
            continue;
        }
        *seen = items[i].line;
        set_string(range == &tailscale_v4 ? &L->cfg->prefix_v4 : &L->cfg->prefix_v6, canonical);
    }
    free(items);
}

static void apply_allocation(struct loader *L, const struct entry *e)
{
    const char *form = "sequential or random";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (!t)
        return;
    if (!strcmp(t, "sequential"))
        L->cfg->allocation = HW_ALLOC_SEQUENTIAL;
    else if (!strcmp(t, "random"))
        L->cfg->allocation = HW_ALLOC_RANDOM;
    else
        expected(L, e->line, e->path, form, e->value);
}

static void apply_database_type(struct loader *L, const struct entry *e)
{
    const char *t = scalar_value(L, e->line, e->path, "sqlite", e->value);
    if (!t)
        return;
    if (!strcmp(t, "sqlite") || !strcmp(t, "sqlite3"))
        set_string(&L->cfg->database_type, "sqlite");
    else if (!strcasecmp(t, "postgres") || !strcasecmp(t, "postgresql"))
        error_at(L, e->line,
                 "%s: PostgreSQL is not supported yet; use sqlite (with database.sqlite.path)",
                 e->path);
    else
        expected(L, e->line, e->path, "sqlite (or sqlite3)", e->value);
}

static void apply_ip_address(struct loader *L, const struct entry *e)
{
    bool v6 = e->spec->flags & KEY_IPV6;
    const char *form = v6 ? "an IPv6 address (like 2001:db8::1) or \"\""
                          : "an IPv4 address (like 198.51.100.1) or \"\"";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (!t)
        return;
    if (*t && !is_ip(v6 ? AF_INET6 : AF_INET, t, strlen(t))) {
        expected(L, e->line, e->path, form, e->value);
        return;
    }
    set_string(field_at(L, e->spec->field), *t ? t : NULL);
}

static void apply_string_list(struct loader *L, const struct entry *e)
{
    size_t n;
    struct item *items = list_items(L, e, e->value, e->spec->form, &n);
    if (!items)
        return;
    store_items(field_at(L, e->spec->field), field_at(L, e->spec->count_field), items, n);
    free(items);
}

static void apply_url_list(struct loader *L, const struct entry *e)
{
    const char *form = "an http:// or https:// URL";
    size_t n;
    struct item *items = list_items(L, e, e->value, form, &n);
    if (!items)
        return;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        struct url_parts url;
        if (!parse_http_url(items[i].text, &url)) {
            error_at(L, items[i].line, "%s: expected %s, got \"%s\"", e->path, form, items[i].text);
            ok = false;
        }
    }
    if (ok)
        store_items(field_at(L, e->spec->field), field_at(L, e->spec->count_field), items, n);
    free(items);
}

static const char nameserver_form[] =
    "an IP address (like 1.1.1.1) or a DNS-over-HTTPS URL (like https://dns.nextdns.io/abc123)";

/* Checks every item; reports each bad one. */
static bool nameservers_valid(struct loader *L, const char *key, const struct item *items, size_t n)
{
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        if (!is_nameserver(items[i].text)) {
            error_at(L, items[i].line, "%s: expected %s, got \"%s\"", key, nameserver_form,
                     items[i].text);
            ok = false;
        }
    }
    return ok;
}

static void apply_nameservers(struct loader *L, const struct entry *e)
{
    size_t n;
    struct item *items = list_items(L, e, e->value, "a nameserver", &n);
    if (!items)
        return;
    if (nameservers_valid(L, e->path, items, n))
        store_items(&L->cfg->dns_nameservers_global, &L->cfg->n_dns_nameservers_global, items, n);
    free(items);
}

/* dns.nameservers.split: { domain: [servers] } */
static void apply_split(struct loader *L, const struct entry *e)
{
    const char *form =
        "a mapping of domains to nameserver lists (like corp.example.com: [10.0.0.53])";
    if (is_null(e->value)) {
        free_split(L->cfg);
        return;
    }
    if (e->value->type != YAML_MAPPING_NODE) {
        expected(L, e->line, e->path, form, e->value);
        return;
    }
    yaml_node_pair_t *start = e->value->data.mapping.pairs.start;
    size_t n_pairs = (size_t)(e->value->data.mapping.pairs.top - start);
    struct hw_dns_nameserver_split *routes = hw_calloc(n_pairs, sizeof *routes);
    size_t n_routes = 0;
    bool ok = true;
    for (size_t i = 0; i < n_pairs; i++) {
        yaml_node_t *key = node_at(L, start[i].key), *value = node_at(L, start[i].value);
        const char *domain = scalar_value(L, node_line(key), e->path, "a domain name", key);
        if (!domain || !*domain) {
            if (domain)
                expected(L, node_line(key), e->path, "a domain name", key);
            ok = false;
            continue;
        }
        char *key_path = hw_sprintf("%s[%s]", e->path, domain);
        struct entry sub = {key_path, node_line(key), value, e->spec, false};
        size_t n;
        struct item *items = list_items(L, &sub, value, "a nameserver", &n);
        if (items && nameservers_valid(L, key_path, items, n)) {
            struct hw_dns_nameserver_split *r = &routes[n_routes++];
            r->domain = hw_strdup(domain);
            store_items(&r->servers, &r->n_servers, items, n);
        } else {
            ok = false;
        }
        free(items);
        free(key_path);
    }
    free_split(L->cfg);
    L->cfg->dns_nameservers_split = routes;
    L->cfg->n_dns_nameservers_split = n_routes;
    if (!ok)
        free_split(L->cfg);
}

/* One {name, type, value} record. Returns false after reporting. */
static bool read_extra_record(struct loader *L, const char *key, size_t index,
                              const yaml_node_t *node, struct hw_dns_extra_record *out, bool *skip)
{
    static const char form[] =
        "a record like {name: grafana.example.com, type: A, value: 100.64.0.3}";
    const char *fields[3] = {NULL, NULL, NULL};
    static const char *const names[3] = {"name", "type", "value"};
    int line = node_line(node);
    if (node->type != YAML_MAPPING_NODE) {
        expected(L, line, key, form, node);
        return false;
    }
    bool ok = true;
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node_at(L, p->key), *v = node_at(L, p->value);
        const char *name = k->type == YAML_SCALAR_NODE ? scalar_text(k) : "";
        size_t f = 0;
        while (f < 3 && strcmp(name, names[f]))
            f++;
        if (f == 3) {
            warning_at(L, node_line(k), "unknown key \"%s[%zu].%s\" ignored", key, index, name);
            continue;
        }
        char *field_key = hw_sprintf("%s.%s", key, name);
        fields[f] = scalar_value(L, node_line(v), field_key, "a string", v);
        free(field_key);
        if (!fields[f])
            ok = false;
    }
    for (size_t f = 0; ok && f < 3; f++) {
        if (!fields[f] || !*fields[f]) {
            error_at(L, line, "%s: the record has no %s; expected %s", key, names[f], form);
            ok = false;
        }
    }
    if (!ok)
        return false;
    int family;
    if (!strcasecmp(fields[1], "A"))
        family = AF_INET;
    else if (!strcasecmp(fields[1], "AAAA"))
        family = AF_INET6;
    else {
        /* Tailscale clients only answer A and AAAA; Headscale passes others through. */
        warning_at(L, line, "%s: record type \"%s\" for %s is not served by Tailscale clients "
                   "(only A and AAAA); record ignored", key, fields[1], fields[0]);
        *skip = true;
        return true;
    }
    if (!is_ip(family, fields[2], strlen(fields[2]))) {
        error_at(L, line, "%s: the %s record for %s needs an %s address as its value, got \"%s\"",
                 key, family == AF_INET ? "A" : "AAAA", fields[0],
                 family == AF_INET ? "IPv4" : "IPv6", fields[2]);
        return false;
    }
    out->name = hw_strdup(fields[0]);
    out->type = hw_strdup(family == AF_INET ? "A" : "AAAA");
    out->value = hw_strdup(fields[2]);
    return true;
}

static void apply_extra_records(struct loader *L, const struct entry *e)
{
    if (is_null(e->value)) {
        free_extra_records(L->cfg);
        return;
    }
    if (e->value->type != YAML_SEQUENCE_NODE) {
        expected(L, e->line, e->path, "a list of {name, type, value} records", e->value);
        return;
    }
    yaml_node_item_t *start = e->value->data.sequence.items.start;
    size_t n = (size_t)(e->value->data.sequence.items.top - start);
    struct hw_dns_extra_record *records = hw_calloc(n, sizeof *records);
    size_t kept = 0;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        if (!read_extra_record(L, e->path, i, node_at(L, start[i]), &records[kept], &skip))
            ok = false;
        else if (!skip)
            kept++;
    }
    free_extra_records(L->cfg);
    L->cfg->dns_extra_records = records;
    L->cfg->n_dns_extra_records = kept;
    if (!ok)
        free_extra_records(L->cfg);
}

static void apply_base_domain(struct loader *L, const struct entry *e)
{
    const char *form = "a domain name without a trailing dot (like headwater.net)";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (!t)
        return;
    if (!*t) {
        set_string(&L->cfg->dns_base_domain, NULL);
        return;
    }
    char *lower = hw_strdup(t);
    for (char *p = lower; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    const char *problem = NULL;
    char *label_start = lower;
    for (char *p = lower;; p++) {
        if (*p != '.' && *p != '\0')
            continue;
        char end = *p;
        *p = '\0';
        problem = hw_dns_label_problem(label_start);
        if (problem || !end)
            break;
        label_start = p + 1;
    }
    free(lower);
    if (problem) {
        char *seen = describe(e->value);
        error_at(L, e->line, "%s: expected %s, got %s: each label %s", e->path, form, seen,
                 problem);
        free(seen);
        return;
    }
    set_string(&L->cfg->dns_base_domain, t);
}

/* An octal file mode: "0770", "770" or Go's "0o770". */
static void apply_socket_permission(struct loader *L, const struct entry *e)
{
    const char *form = "an octal mode up to 0777 (like \"0770\")";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    if (!t)
        return;
    const char *digits = (t[0] == '0' && (t[1] == 'o' || t[1] == 'O')) ? t + 2 : t;
    unsigned mode = 0;
    size_t n = 0;
    for (; digits[n] >= '0' && digits[n] <= '7' && mode <= 0777; n++)
        mode = mode * 8 + (unsigned)(digits[n] - '0');
    if (n == 0 || digits[n] || mode > 0777) {
        expected(L, e->line, e->path, form, e->value);
        return;
    }
    L->cfg->unix_socket_permission = mode;
}

static void apply_log_level(struct loader *L, const struct entry *e)
{
    const char *form = "one of trace, debug, info, warn, error, fatal, panic";
    const char *t = scalar_value(L, e->line, e->path, form, e->value);
    enum hw_log_level level;
    if (!t)
        return;
    if (hw_log_parse_level(t, &level) < 0) {
        expected(L, e->line, e->path, form, e->value);
        return;
    }
    L->cfg->log_level = level;
}

/* Choices spelled exactly; the accepted words are in the spec's form, "a or b". */
static void apply_choice(struct loader *L, const struct entry *e)
{
    const struct key_spec *s = e->spec;
    const char *t = scalar_value(L, e->line, e->path, s->form, e->value);
    if (!t)
        return;
    const char *or = strstr(s->form, " or ");
    size_t first_len = (size_t)(or - s->form);
    bool is_first = strlen(t) == first_len && !strncmp(t, s->form, first_len);
    if (!is_first && strcmp(t, or + 4)) {
        expected(L, e->line, e->path, s->form, e->value);
        return;
    }
    set_string(field_at(L, s->field), t);
}

/* log.format: Headscale reads "" as text. */
static void apply_log_format(struct loader *L, const struct entry *e)
{
    if (e->value->type == YAML_SCALAR_NODE && !*scalar_text(e->value)) {
        set_string(&L->cfg->log_format, "text");
        return;
    }
    apply_choice(L, e);
}

/* --------------------------------------------------------------- key table */

#define FIELD(f) offsetof(struct hw_config, f)
#define LIST(f) .field = FIELD(f), .count_field = FIELD(n_##f)

static const struct key_spec key_specs[] = {
    {.path = "server_url", .apply = apply_server_url},
    {.path = "listen_addr", .apply = apply_host_port, .field = FIELD(listen_addr),
     .flags = KEY_REQUIRED, .form = "0.0.0.0:8080"},
    {.path = "metrics_listen_addr", .apply = apply_host_port, .field = FIELD(metrics_listen_addr),
     .form = "127.0.0.1:9090"},
    {.path = "noise.private_key_path", .apply = apply_string,
     .field = FIELD(noise_private_key_path), .flags = KEY_REQUIRED | KEY_CONFIG_RELATIVE,
     .form = "a file path"},

    {.path = "prefixes.v4", .apply = apply_prefix, .field = FIELD(prefix_v4)},
    {.path = "prefixes.v6", .apply = apply_prefix, .field = FIELD(prefix_v6), .flags = KEY_IPV6},
    {.path = "prefixes.allocation", .apply = apply_allocation},
    {.path = "ip_prefixes", .apply = apply_ip_prefixes,
     .replaced_by = {"prefixes.v4", "prefixes.v6"}},

    {.path = "database.type", .apply = apply_database_type},
    {.path = "database.sqlite.path", .apply = apply_string, .field = FIELD(database_sqlite_path),
     .flags = KEY_REQUIRED | KEY_CONFIG_RELATIVE, .form = "a file path"},
    {.path = "database.sqlite.write_ahead_log", .apply = apply_bool,
     .field = FIELD(database_sqlite_wal)},
    {.path = "database.sqlite.wal_autocheckpoint", .apply = apply_int,
     .field = FIELD(database_sqlite_wal_autocheckpoint), .min = 0, .max = INT_MAX},
    {.path = "db_type", .apply = apply_database_type, .replaced_by = {"database.type"}},
    {.path = "db_path", .apply = apply_string, .field = FIELD(database_sqlite_path),
     .flags = KEY_REQUIRED | KEY_CONFIG_RELATIVE, .form = "a file path",
     .replaced_by = {"database.sqlite.path"}},

    {.path = "derp.server.enabled", .apply = apply_bool, .field = FIELD(derp_server_enabled)},
    {.path = "derp.server.region_id", .apply = apply_int, .field = FIELD(derp_server_region_id),
     .min = 1, .max = 65535},
    {.path = "derp.server.region_code", .apply = apply_string,
     .field = FIELD(derp_server_region_code), .flags = KEY_REQUIRED,
     .form = "a short region code (like headwater)"},
    {.path = "derp.server.region_name", .apply = apply_string,
     .field = FIELD(derp_server_region_name), .flags = KEY_REQUIRED,
     .form = "a region name (like \"Headwater Embedded DERP\")"},
    {.path = "derp.server.stun_listen_addr", .apply = apply_host_port,
     .field = FIELD(derp_server_stun_listen_addr), .form = "0.0.0.0:3478"},
    {.path = "derp.server.stun.listen_addr", .apply = apply_host_port,
     .field = FIELD(derp_server_stun_listen_addr), .form = "0.0.0.0:3478",
     .replaced_by = {"derp.server.stun_listen_addr"}},
    {.path = "derp.server.private_key_path", .apply = apply_string,
     .field = FIELD(derp_server_private_key_path), .flags = KEY_REQUIRED | KEY_CONFIG_RELATIVE,
     .form = "a file path"},
    {.path = "derp.server.verify_clients", .apply = apply_bool,
     .field = FIELD(derp_server_verify_clients)},
    {.path = "derp.server.automatically_add_embedded_derp_region", .apply = apply_bool,
     .field = FIELD(derp_server_auto_add_region)},
    {.path = "derp.server.ipv4", .apply = apply_ip_address, .field = FIELD(derp_server_ipv4)},
    {.path = "derp.server.ipv6", .apply = apply_ip_address, .field = FIELD(derp_server_ipv6),
     .flags = KEY_IPV6},
    {.path = "derp.server.per_client_rate_limit_bytes_per_sec", .apply = apply_int,
     .field = FIELD(derp_server_client_rate_bytes_per_sec), .min = 0, .max = INT_MAX},
    {.path = "derp.server.per_client_rate_burst_bytes", .apply = apply_int,
     .field = FIELD(derp_server_client_burst_bytes), .min = 0, .max = INT_MAX},
    {.path = "derp.urls", .apply = apply_url_list, LIST(derp_urls)},
    {.path = "derp.paths", .apply = apply_string_list, LIST(derp_paths), .form = "a file path"},
    {.path = "derp.auto_update_enabled", .apply = apply_bool,
     .field = FIELD(derp_auto_update_enabled)},
    {.path = "derp.update_frequency", .apply = apply_duration,
     .field = FIELD(derp_update_frequency_ms), .flags = KEY_POSITIVE,
     .form = "a duration like 3h or 24h"},

    {.path = "node.expiry", .apply = apply_duration, .field = FIELD(node_expiry_ms),
     .form = "0 (never) or a duration like 180d"},
    {.path = "node.ephemeral.inactivity_timeout", .apply = apply_duration,
     .field = FIELD(ephemeral_node_inactivity_timeout_ms)},
    {.path = "ephemeral_node_inactivity_timeout", .apply = apply_duration,
     .field = FIELD(ephemeral_node_inactivity_timeout_ms),
     .replaced_by = {"node.ephemeral.inactivity_timeout"}},

    {.path = "dns.magic_dns", .apply = apply_bool, .field = FIELD(dns_magic_dns)},
    {.path = "dns.base_domain", .apply = apply_base_domain},
    {.path = "dns.override_local_dns", .apply = apply_bool, .field = FIELD(dns_override_local_dns)},
    {.path = "dns.nameservers.global", .apply = apply_nameservers},
    {.path = "dns.nameservers.split", .apply = apply_split},
    {.path = "dns.search_domains", .apply = apply_string_list, LIST(dns_search_domains),
     .form = "a domain name"},
    {.path = "dns.extra_records", .apply = apply_extra_records},
    {.path = "dns.extra_records_path", .apply = apply_string,
     .field = FIELD(dns_extra_records_path), .form = "a file path"},
    /* Headscale before 0.23 */
    {.path = "dns_config.magic_dns", .apply = apply_bool, .field = FIELD(dns_magic_dns),
     .replaced_by = {"dns.magic_dns"}},
    {.path = "dns_config.base_domain", .apply = apply_base_domain,
     .replaced_by = {"dns.base_domain"}},
    {.path = "dns_config.override_local_dns", .apply = apply_bool,
     .field = FIELD(dns_override_local_dns), .replaced_by = {"dns.override_local_dns"}},
    {.path = "dns_config.nameservers", .apply = apply_nameservers,
     .replaced_by = {"dns.nameservers.global"}},
    {.path = "dns_config.restricted_nameservers", .apply = apply_split,
     .replaced_by = {"dns.nameservers.split"}},
    {.path = "dns_config.domains", .apply = apply_string_list, LIST(dns_search_domains),
     .form = "a domain name", .replaced_by = {"dns.search_domains"}},
    {.path = "dns_config.extra_records", .apply = apply_extra_records,
     .replaced_by = {"dns.extra_records"}},

    {.path = "unix_socket", .apply = apply_string, .field = FIELD(unix_socket),
     .flags = KEY_REQUIRED, .form = "a socket path"},
    {.path = "unix_socket_permission", .apply = apply_socket_permission},

    {.path = "log.level", .apply = apply_log_level},
    {.path = "log.format", .apply = apply_log_format, .field = FIELD(log_format),
     .form = "text or json"},
    {.path = "log_level", .apply = apply_log_level, .replaced_by = {"log.level"}},

    {.path = "tls_cert_path", .apply = apply_string, .field = FIELD(tls_cert_path),
     .flags = KEY_CONFIG_RELATIVE, .form = "a file path"},
    {.path = "tls_key_path", .apply = apply_string, .field = FIELD(tls_key_path),
     .flags = KEY_CONFIG_RELATIVE, .form = "a file path"},

    {.path = "policy.path", .apply = apply_string, .field = FIELD(policy_path),
     .form = "a file path"},
    {.path = "policy.mode", .apply = apply_choice, .field = FIELD(policy_mode),
     .form = "file or database"},
    {.path = "acl_policy_path", .apply = apply_string, .field = FIELD(policy_path),
     .form = "a file path", .replaced_by = {"policy.path"}},

    /* Headscale's keys for features headwater does not have. */
    {.path = "grpc_listen_addr"},
    {.path = "grpc_allow_insecure"},
    {.path = "trusted_proxies",
     .unsupported = "trusted_proxies (client addresses from proxy headers) is not supported by "
                    "headwater; ignored"},
    {.path = "disable_check_updates"},
    {.path = "node_update_check_interval"},
    {.path = "node.routes.ha.probe_interval"},
    {.path = "node.routes.ha.probe_timeout"},
    {.path = "preauth_keys.revoked_retention"},
    {.path = "derp.server.stun.enabled"},
    {.path = "database.debug"},
    {.path = "db_host"}, {.path = "db_port"}, {.path = "db_name"},
    {.path = "db_user"}, {.path = "db_pass"}, {.path = "db_ssl"},
    {.path = "acme_url"},
    {.path = "acme_email"},
    {.path = "tls_letsencrypt_hostname",
     .unsupported = "Let's Encrypt (tls_letsencrypt_hostname) is not supported by headwater; "
                    "ignored: set tls_cert_path and tls_key_path, or put a TLS proxy in front"},
    {.path = "tls_letsencrypt_cache_dir"},
    {.path = "tls_letsencrypt_challenge_type"},
    {.path = "tls_letsencrypt_listen"},
    {.path = "tls_client_auth_mode"},
    {.path = "private_key_path"},
    {.path = "oidc.issuer", .unsupported = "oidc is not supported by headwater; ignored"},
    {.path = "logtail.enabled", .unsupported = "logtail is not supported by headwater; ignored"},
    {.path = "taildrop.enabled"},
    {.path = "auto_update.enabled",
     .unsupported = "auto_update (clients update themselves by default) is not supported by "
                    "headwater; ignored"},
    {.path = "randomize_client_port",
     .unsupported = "randomize_client_port is not supported by headwater; ignored"},
    {.path = "dns.use_username_in_magic_dns",
     .unsupported = "use_username_in_magic_dns is not supported by headwater; ignored"},
    {.path = "dns_config.use_username_in_magic_dns",
     .unsupported = "use_username_in_magic_dns is not supported by headwater; ignored"},
    {.path = "ip_prefix",
     .unsupported = "ip_prefix (Headscale before 0.12) is not read by headwater; use prefixes.v4 "
                    "and prefixes.v6"},
    {.path = "derp_map_path",
     .unsupported = "derp_map_path (early Headscale) is not read by headwater; use derp.paths"},
    {.path = "default_machine_registration_duration"},
    {.path = "max_machine_registration_duration"},
};

/* Headscale sections accepted whole, whatever they hold: they belong to features
 * headwater does not have, and Headscale adds keys to them often. */
static const char *const accepted_sections[] = {
    "oidc", "tuning", "cli", "database.postgres", "database.gorm",
};

static const struct key_spec *find_spec(const char *path)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(key_specs); i++)
        if (!strcmp(key_specs[i].path, path))
            return &key_specs[i];
    return NULL;
}

static bool is_section(const char *path)
{
    size_t n = strlen(path);
    for (size_t i = 0; i < HW_ARRAY_LEN(key_specs); i++)
        if (!strncmp(key_specs[i].path, path, n) && key_specs[i].path[n] == '.')
            return true;
    for (size_t i = 0; i < HW_ARRAY_LEN(accepted_sections); i++)
        if (!strcmp(accepted_sections[i], path))
            return true;
    return false;
}

static bool in_accepted_section(const char *path)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(accepted_sections); i++) {
        size_t n = strlen(accepted_sections[i]);
        if (!strncmp(path, accepted_sections[i], n) && path[n] == '.')
            return true;
    }
    return false;
}

/* ------------------------------------------------ suggestions for typos */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t above = row[j];
            size_t best = diagonal + (a[i - 1] != b[j - 1]);
            if (above + 1 < best)
                best = above + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diagonal = above;
        }
    }
    return row[lb];
}

/* The known key or section closest to an unknown PATH with as many components, when
 * it is close enough to be a typo (at most two edits, and a small share of the name).
 * Returns a malloc'd string or NULL. */
static char *suggest(const char *path)
{
    size_t depth = 0;
    for (const char *p = path; *p; p++)
        depth += *p == '.';
    size_t best = SIZE_MAX;
    char *found = NULL;
    for (size_t i = 0; i < HW_ARRAY_LEN(key_specs); i++) {
        const char *candidate = key_specs[i].path, *end = candidate;
        size_t dots = 0;
        for (; *end; end++)
            if (*end == '.' && dots++ == depth)
                break;
        if (dots < depth)
            continue;
        char *prefix = hw_strdup(candidate);
        prefix[end - candidate] = '\0';
        size_t d = edit_distance(path, prefix);
        if (d <= 2 && d * 4 <= strlen(prefix) && d < best) {
            best = d;
            free(found);
            found = prefix;
        } else {
            free(prefix);
        }
    }
    return found;
}

/* ---------------------------------------------------------------- the walk */

static void add_entry(struct loader *L, char *path, int line, yaml_node_t *value,
                      const struct key_spec *spec)
{
    struct entry *grown = realloc(L->entries, (L->n_entries + 1) * sizeof *grown);
    if (!grown) {
        fputs("headwater: out of memory\n", stderr);
        abort();
    }
    L->entries = grown;
    L->entries[L->n_entries++] = (struct entry){path, line, value, spec, false};
}

static void walk_mapping(struct loader *L, yaml_node_t *map, const char *prefix, int depth,
                         bool merged);

/* One key of the file. PATH is malloc'd and passes to the entry list (or is freed). */
static void visit_key(struct loader *L, char *path, int line, yaml_node_t *value, int depth,
                      bool merged)
{
    struct entry *earlier = find_entry(L, path);
    if (earlier) {
        /* A key written out wins over one pulled in by a "<<" merge, as YAML says. */
        if (!merged)
            error_at(L, line, "%s: duplicate key (first set at line %d)", path, earlier->line);
        free(path);
        return;
    }
    const struct key_spec *spec = find_spec(path);
    if (spec) {
        add_entry(L, path, line, value, spec);
        return;
    }
    bool accepted = in_accepted_section(path);
    if (is_section(path) || accepted) {
        add_entry(L, path, line, value, NULL);
        if (value->type == YAML_MAPPING_NODE && depth < MAX_DEPTH)
            walk_mapping(L, value, path, depth + 1, merged);
        else if (!accepted && !is_null(value))
            expected(L, line, path, "a section of keys", value);
        return;
    }
    char *hint = suggest(path);
    if (hint)
        warning_at(L, line, "unknown key \"%s\" ignored (did you mean \"%s\"?)", path, hint);
    else
        warning_at(L, line, "unknown key \"%s\" ignored", path);
    free(hint);
    free(path);
}

static void walk_merge(struct loader *L, yaml_node_t *value, const char *prefix, int depth)
{
    if (value->type == YAML_MAPPING_NODE) {
        walk_mapping(L, value, prefix, depth + 1, true);
        return;
    }
    if (value->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *i = value->data.sequence.items.start;
             i < value->data.sequence.items.top; i++) {
            yaml_node_t *item = node_at(L, *i);
            if (item->type == YAML_MAPPING_NODE)
                walk_mapping(L, item, prefix, depth + 1, true);
            else
                expected(L, node_line(item), "<<", "a mapping to merge", item);
        }
        return;
    }
    expected(L, node_line(value), "<<", "a mapping to merge", value);
}

static void walk_mapping(struct loader *L, yaml_node_t *map, const char *prefix, int depth,
                         bool merged)
{
    yaml_node_pair_t *start = map->data.mapping.pairs.start, *top = map->data.mapping.pairs.top;
    for (yaml_node_pair_t *p = start; p < top; p++) {
        yaml_node_t *key = node_at(L, p->key), *value = node_at(L, p->value);
        if (key->type != YAML_SCALAR_NODE) {
            expected(L, node_line(key), prefix ? prefix : "key", "a plain key name", key);
            continue;
        }
        const char *name = scalar_text(key);
        if (!strcmp(name, "<<"))
            continue;
        char *path = prefix ? hw_sprintf("%s.%s", prefix, name) : hw_strdup(name);
        visit_key(L, path, node_line(key), value, depth, merged);
    }
    /* Merged keys come after the mapping's own, so its own take precedence. */
    for (yaml_node_pair_t *p = start; p < top && depth < MAX_DEPTH; p++) {
        yaml_node_t *key = node_at(L, p->key);
        if (key->type == YAML_SCALAR_NODE && !strcmp(scalar_text(key), "<<"))
            walk_merge(L, node_at(L, p->value), prefix, depth);
    }
}

/* Does a value for an unsupported feature actually ask for it? "" / false / [] do not. */
static bool asks_for_feature(const yaml_node_t *value)
{
    bool b;
    switch (value->type) {
    case YAML_SCALAR_NODE:
        return !is_null(value) && *scalar_text(value) &&
               !(parse_bool(scalar_text(value), &b) == 0 && !b);
    case YAML_SEQUENCE_NODE:
        return value->data.sequence.items.top > value->data.sequence.items.start;
    case YAML_MAPPING_NODE:
        return value->data.mapping.pairs.top > value->data.mapping.pairs.start;
    default:
        return false;
    }
}

static void apply_entries(struct loader *L)
{
    for (size_t i = 0; i < L->n_entries; i++) {
        struct entry *e = &L->entries[i];
        const struct key_spec *s = e->spec;
        if (!s)
            continue;
        if (!s->apply) {
            if (s->unsupported && asks_for_feature(e->value))
                warning_at(L, e->line, "%s", s->unsupported);
            continue;
        }
        const struct entry *newer = NULL;
        for (size_t r = 0; r < HW_ARRAY_LEN(s->replaced_by) && s->replaced_by[r] && !newer; r++)
            newer = find_entry(L, s->replaced_by[r]);
        if (newer) {
            warning_at(L, e->line, "%s is ignored: %s (line %d) takes precedence", e->path,
                       newer->path, newer->line);
            continue;
        }
        size_t errors_before = L->res->n_errors;
        s->apply(L, e);
        e->failed = L->res->n_errors > errors_before;
    }
}

/* ------------------------------------------------------- cross-key checks */

#define BASE_DOMAIN_KEYS "dns.base_domain", "dns_config.base_domain"
#define MAGIC_DNS_KEYS "dns.magic_dns", "dns_config.magic_dns"
#define GLOBAL_NAMESERVER_KEYS "dns.nameservers.global", "dns_config.nameservers"
#define OVERRIDE_DNS_KEYS "dns.override_local_dns", "dns_config.override_local_dns"
#define EXTRA_RECORD_KEYS "dns.extra_records", "dns_config.extra_records", "dns.extra_records_path"
#define EPHEMERAL_KEYS "node.ephemeral.inactivity_timeout", "ephemeral_node_inactivity_timeout"
#define STUN_KEYS "derp.server.stun_listen_addr", "derp.server.stun.listen_addr"

static void check_server_url_vs_base_domain(struct loader *L)
{
    const char *base = L->cfg->dns_base_domain;
    struct url_parts url;
    if (!base || !parse_http_url(L->cfg->server_url, &url) ||
        FAILED(L, "server_url", BASE_DOMAIN_KEYS))
        return;
    size_t base_len = strlen(base);
    bool same = url.host_len == base_len && !strncasecmp(url.host, base, base_len);
    bool inside = url.host_len > base_len + 1 && url.host[url.host_len - base_len - 1] == '.' &&
                  !strncasecmp(url.host + url.host_len - base_len, base, base_len);
    if (same || inside)
        error_at(L, LINE_OF(L, BASE_DOMAIN_KEYS, "server_url"),
                 "dns.base_domain: clients take over %s for MagicDNS, so server_url (%s) must "
                 "not be %s it; choose another base domain",
                 base, L->cfg->server_url, same ? "the same as" : "inside");
}

static void check_dns(struct loader *L)
{
    struct hw_config *c = L->cfg;

    if (c->dns_magic_dns && !c->dns_base_domain && !FAILED(L, MAGIC_DNS_KEYS, BASE_DOMAIN_KEYS))
        error_at(
            L, LINE_OF(L, BASE_DOMAIN_KEYS, MAGIC_DNS_KEYS),
            "dns.base_domain: MagicDNS (dns.magic_dns) needs a base domain, like headwater.net");
    check_server_url_vs_base_domain(L);

    if (c->dns_override_local_dns && c->n_dns_nameservers_global == 0 &&
        !FAILED(L, OVERRIDE_DNS_KEYS, GLOBAL_NAMESERVER_KEYS))
        error_at(L, LINE_OF(L, OVERRIDE_DNS_KEYS, GLOBAL_NAMESERVER_KEYS),
                 "dns.override_local_dns: replacing the nodes' own DNS needs at least one server "
                 "in dns.nameservers.global");

    if (c->n_dns_extra_records > 0 && c->dns_extra_records_path && !FAILED(L, EXTRA_RECORD_KEYS))
        error_at(L, LINE_OF(L, "dns.extra_records_path"),
                 "dns.extra_records_path: set either dns.extra_records or dns.extra_records_path, "
                 "not both");
}

#define RATE_KEY "derp.server.per_client_rate_limit_bytes_per_sec"
#define BURST_KEY "derp.server.per_client_rate_burst_bytes"

static void check_derp(struct loader *L)
{
    struct hw_config *c = L->cfg;
    if (c->derp_server_client_burst_bytes > 0 && c->derp_server_client_rate_bytes_per_sec == 0 &&
        !FAILED(L, RATE_KEY, BURST_KEY))
        warning_at(L, LINE_OF(L, BURST_KEY),
                   BURST_KEY " has no effect while " RATE_KEY " is 0 (no limit)");
    if (FAILED(L, "derp.server.enabled", "derp.server.automatically_add_embedded_derp_region",
               "derp.urls", "derp.paths", STUN_KEYS))
        return;

    if (c->derp_server_enabled && !c->derp_server_stun_listen_addr)
        error_at(L, LINE_OF(L, STUN_KEYS, "derp.server.enabled"),
                 "derp.server.stun_listen_addr: the built-in relay (derp.server.enabled) needs a "
                 "STUN address, like 0.0.0.0:3478");
    if (c->derp_server_enabled && !c->derp_server_auto_add_region && c->n_derp_paths == 0)
        error_at(
            L, LINE_OF(L, "derp.server.automatically_add_embedded_derp_region"),
            "derp.server.automatically_add_embedded_derp_region is false, so the built-in "
            "relay must be listed in a DERP map file under derp.paths, and derp.paths is empty");
    if (!c->derp_server_enabled && c->n_derp_urls == 0 && c->n_derp_paths == 0)
        warning_at(L, LINE_OF(L, "derp.server.enabled", "derp"),
                   "no DERP relay is configured (derp.server.enabled is false, derp.urls and "
                   "derp.paths are empty): nodes that cannot reach each other directly will not "
                   "connect");
}

static void check_cross_keys(struct loader *L)
{
    struct hw_config *c = L->cfg;

    if (!c->prefix_v4 && !c->prefix_v6 && !FAILED(L, "prefixes.v4", "prefixes.v6", "ip_prefixes"))
        error_at(L, LINE_OF(L, "prefixes.v4", "prefixes.v6", "prefixes", "ip_prefixes"),
                 "prefixes: no address range is left; set prefixes.v4 (like 100.64.0.0/10), "
                 "prefixes.v6 (like fd7a:115c:a1e0::/48) or both");

    if (!c->tls_cert_path != !c->tls_key_path && !FAILED(L, "tls_cert_path", "tls_key_path")) {
        bool has_cert = c->tls_cert_path != NULL;
        error_at(L, LINE_OF(L, has_cert ? "tls_cert_path" : "tls_key_path"),
                 "%s is set but %s is not; serving TLS needs both the certificate and its key",
                 has_cert ? "tls_cert_path" : "tls_key_path",
                 has_cert ? "tls_key_path" : "tls_cert_path");
    }

    if (c->ephemeral_node_inactivity_timeout_ms <= MIN_EPHEMERAL_INACTIVITY_MS &&
        !FAILED(L, EPHEMERAL_KEYS)) {
        char got[64];
        hw_format_duration_ms(c->ephemeral_node_inactivity_timeout_ms, got, sizeof got);
        error_at(L, LINE_OF(L, EPHEMERAL_KEYS),
                 "node.ephemeral.inactivity_timeout: expected more than 65s (clients send a "
                 "keepalive every 60s), got %s", got);
    }

    check_dns(L);
    check_derp(L);
}

/* File order reads best; problems with the file as a whole (line 0) go last. */
static void sort_diags_by_line(struct hw_config_result *res)
{
    for (size_t i = 1; i < res->n_diags; i++) {
        struct hw_config_diag d = res->diags[i];
        unsigned key = d.line > 0 ? (unsigned)d.line : UINT_MAX;
        size_t j = i;
        while (j > 0 &&
               (res->diags[j - 1].line > 0 ? (unsigned)res->diags[j - 1].line : UINT_MAX) > key) {
            res->diags[j] = res->diags[j - 1];
            j--;
        }
        res->diags[j] = d;
    }
}

/* ------------------------------------------------------------------- load */

static bool read_config_file(const char *path, char **text, size_t *len,
                             struct hw_config_result *res)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        add_diag(res, 0, true, hw_sprintf("cannot read %s: %s", path, strerror(EISDIR)));
        return false;
    }
    *text = hw_read_file(path, len);
    if (!*text) {
        add_diag(res, 0, true, hw_sprintf("cannot read %s: %s", path, strerror(errno)));
        return false;
    }
    return true;
}

static char *absolute_dir_of(const char *path)
{
    char *dir = hw_dirname(path);
    char *resolved = realpath(dir, NULL);
    if (resolved) {
        free(dir);
        return resolved;
    }
    return dir;
}

static void parse_and_apply(struct loader *L, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        if (parser.error == YAML_MEMORY_ERROR)
            abort();
        const char *problem = parser.problem ? parser.problem : "unreadable input";
        int line = (int)parser.problem_mark.line + 1;
        int context_line = (int)parser.context_mark.line + 1;
        if (parser.context && context_line != line)
            error_at(L, line, "not valid YAML: %s (%s that starts at line %d)", problem,
                     parser.context, context_line);
        else if (parser.context)
            error_at(L, line, "not valid YAML: %s (%s)", problem, parser.context);
        else
            error_at(L, line, "not valid YAML: %s", problem);
        yaml_parser_delete(&parser);
        return;
    }
    L->doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type == YAML_MAPPING_NODE) {
        walk_mapping(L, root, NULL, 0, false);
        apply_entries(L);
        check_cross_keys(L);
    } else if (root && !is_null(root)) {
        char *seen = describe(root);
        error_at(L, node_line(root), "expected keys like \"server_url: https://...\" at the top "
                 "level, got %s", seen);
        free(seen);
    } else {
        check_cross_keys(L);
    }
    for (size_t i = 0; i < L->n_entries; i++)
        free(L->entries[i].path);
    free(L->entries);
    L->entries = NULL;
    L->n_entries = 0;
    L->doc = NULL;
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
}

int hw_config_load(const char *path, struct hw_config *cfg, struct hw_config_result *res)
{
    memset(res, 0, sizeof *res);
    hw_config_file_defaults(cfg);
    char *text;
    size_t len;
    if (!read_config_file(path, &text, &len, res))
        return -1;

    struct hw_config loaded;
    hw_config_file_defaults(&loaded);
    loaded.source_path = hw_strdup(path);
    struct loader L = {.cfg = &loaded, .res = res, .config_dir = absolute_dir_of(path)};
    parse_and_apply(&L, text, len);
    sort_diags_by_line(res);
    free(L.config_dir);
    free(text);

    if (res->n_errors > 0) {
        hw_config_free(&loaded);
        return -1;
    }
    hw_config_free(cfg);
    *cfg = loaded;
    return 0;
}
