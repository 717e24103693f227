#include "server/dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/tailcfg.h"

/* A records file is a short list of names; anything near this size is a wrong path. */
#define RECORDS_FILE_MAX (4u << 20)
/* Editors write a file in several steps: read it once things settle. */
#define RELOAD_DELAY_MS 100

struct hw_dns {
    const struct hw_config *cfg;
    struct hw_loop *loop;
    hw_dns_change_cb on_change;
    void *arg;
    json_t *current;
    char *path;                 /* dns.extra_records_path, or NULL */
    char *base;                 /* its file name, as inotify reports it */
    char *text;                 /* the last good content */
    size_t n_records;
    int inotify_fd;
    struct hw_timer *reload_timer;
};

void hw_dns_records_free(struct hw_dns_extra_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(records[i].name);
        free(records[i].type);
        free(records[i].value);
    }
    free(records);
}

/* The member key of obj, whatever its case (Go's encoding/json matches names so). */
static const char *member(json_t *obj, const char *key)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        if (strcasecmp(k, key) == 0)
            return json_is_string(v) ? json_string_value(v) : NULL;
    }
    return NULL;
}

static bool has_member(json_t *obj, const char *key)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) if (strcasecmp(k, key) == 0) return true;
    return false;
}

static bool is_address(int family, const char *text)
{
    unsigned char buf[16];
    return inet_pton(family, text, buf) == 1;
}

int hw_dns_records_parse(const char *text, size_t len, struct hw_dns_extra_record **out,
                         size_t *n_out, char *err, size_t err_len)
{
    *out = NULL;
    *n_out = 0;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, err_len, "not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return -1;
    }
    if (!json_is_array(root)) {
        snprintf(err, err_len, "expected a JSON array of {\"name\", \"type\", \"value\"} records");
        json_decref(root);
        return -1;
    }
    size_t n = json_array_size(root), kept = 0;
    struct hw_dns_extra_record *records = hw_calloc(n + 1, sizeof *records);
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(root, i);
        const char *name = json_is_object(r) ? member(r, "name") : NULL;
        const char *type = json_is_object(r) ? member(r, "type") : NULL;
        const char *value = json_is_object(r) ? member(r, "value") : NULL;
        const char *problem = NULL;
        if (!json_is_object(r))
            problem = "is not an object like {\"name\": \"grafana.example.com\", \"type\": \"A\", "
                      "\"value\": \"100.64.0.3\"}";
        else if (!name || !*name)
            problem = "has no \"name\" string";
        else if (!value || !*value)
            problem = "has no \"value\" string";
        else if (has_member(r, "type") && !type)
            problem = "has a \"type\" that is not a string";
        if (problem) {
            snprintf(err, err_len, "record %zu %s", i + 1, problem);
            goto fail;
        }
        int family;
        if (!type || !*type)
            family = strchr(value, ':') ? AF_INET6 : AF_INET;
        else if (!strcasecmp(type, "A"))
            family = AF_INET;
        else if (!strcasecmp(type, "AAAA"))
            family = AF_INET6;
        else {
            log_warn("dns extra records: record %zu (%s): type \"%s\" is not served by Tailscale "
                     "clients (only A and AAAA): skipped", i + 1, name, type);
            continue;
        }
        if (!is_address(family, value)) {
            snprintf(err, err_len, "record %zu (%s): an %s record needs an %s address, not \"%s\"",
                     i + 1, name, family == AF_INET ? "A" : "AAAA",
                     family == AF_INET ? "IPv4" : "IPv6", value);
            goto fail;
        }
        records[kept].name = hw_strdup(name);
        records[kept].type = hw_strdup(family == AF_INET ? "A" : "AAAA");
        records[kept].value = hw_strdup(value);
        kept++;
    }
    json_decref(root);
    *out = records;
    *n_out = kept;
    return 0;
fail:
    json_decref(root);
    hw_dns_records_free(records, kept);
    return -1;
}

json_t *hw_dns_config_json(const struct hw_config *cfg, const struct hw_dns_extra_record *records,
                           size_t n_records)
{
    struct tc_dns_config d = {0};
    struct tc_strv *global = cfg->dns_override_local_dns ? &d.resolvers : &d.fallback_resolvers;
    for (size_t i = 0; i < cfg->n_dns_nameservers_global; i++)
        tc_strv_push(global, cfg->dns_nameservers_global[i]);
    for (size_t i = 0; i < cfg->n_dns_nameservers_split; i++) {
        struct tc_strv servers = {0};
        for (size_t j = 0; j < cfg->dns_nameservers_split[i].n_servers; j++)
            tc_strv_push(&servers, cfg->dns_nameservers_split[i].servers[j]);
        tc_dns_config_add_route(&d, cfg->dns_nameservers_split[i].domain, &servers);
        tc_strv_clear(&servers);
    }
    if (cfg->dns_base_domain && *cfg->dns_base_domain)
        tc_strv_push(&d.domains, cfg->dns_base_domain);
    if (cfg->dns_magic_dns && cfg->dns_base_domain && *cfg->dns_base_domain) {
        d.proxied = true;
        tc_dns_config_add_magic_reverse_routes(&d);
    }
    for (size_t i = 0; i < cfg->n_dns_search_domains; i++)
        tc_strv_push(&d.domains, cfg->dns_search_domains[i]);
    for (size_t i = 0; i < n_records; i++)
        tc_dns_config_add_record(&d, records[i].name, records[i].type, records[i].value);
    json_t *j = tc_dns_config_to_json(&d);
    tc_dns_config_clear(&d);
    return j;
}

/* The file's content (NUL-terminated), or NULL with err. */
static char *read_records_file(const char *path, size_t *len, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_len, "cannot open it: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "not a regular file");
        close(fd);
        return NULL;
    }
    if ((size_t)st.st_size > RECORDS_FILE_MAX) {
        snprintf(err, err_len, "%lld bytes, more than the %u allowed", (long long)st.st_size,
                 RECORDS_FILE_MAX);
        close(fd);
        return NULL;
    }
    char *buf = hw_malloc((size_t)st.st_size + 1);
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, err_len, "cannot read it: %s", strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0 || (got += (size_t)r) == (size_t)st.st_size)
            break;
    }
    close(fd);
    buf[got] = '\0';
    *len = got;
    return buf;
}

/* Reads the records file; replaces the config when it changed. Returns -1 (err set)
 * when the file cannot be used; the previous config stays. */
static int load_records(struct hw_dns *d, bool *changed, char *err, size_t err_len)
{
    *changed = false;
    size_t len = 0;
    char *text = read_records_file(d->path, &len, err, err_len);
    if (!text)
        return -1;
    if (len == 0 || (d->text && strcmp(text, d->text) == 0)) {
        free(text);
        return 0;
    }
    struct hw_dns_extra_record *records;
    size_t n;
    if (hw_dns_records_parse(text, len, &records, &n, err, err_len) < 0) {
        free(text);
        return -1;
    }
    json_t *next = hw_dns_config_json(d->cfg, records, n);
    hw_dns_records_free(records, n);
    free(d->text);
    d->text = text;
    d->n_records = n;
    json_decref(d->current);
    d->current = next;
    *changed = true;
    return 0;
}

static void reload(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_dns *d = arg;
    d->reload_timer = NULL;
    char err[400];
    bool changed;
    if (load_records(d, &changed, err, sizeof err) < 0) {
        log_error("dns.extra_records_path %s: %s; keeping the previous %zu records", d->path, err,
                  d->n_records);
        return;
    }
    if (!changed)
        return;
    log_info("dns.extra_records_path %s: %zu records loaded", d->path, d->n_records);
    d->on_change(d->current, d->arg);
}

static void on_inotify(struct hw_loop *loop, int fd, int events, void *arg)
{
    struct hw_dns *d = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool ours = false;
    for (;;) {
        ssize_t len = read(fd, buf, sizeof buf);
        if (len <= 0)
            break;
        for (char *p = buf; p < buf + len;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (ev->len && strcmp(ev->name, d->base) == 0)
                ours = true;
            p += sizeof *ev + ev->len;
        }
    }
    if (ours && !d->reload_timer)
        d->reload_timer = hw_timer_start(loop, RELOAD_DELAY_MS, reload, d);
}

/* The directory is watched rather than the file: editors and config tools replace a
 * file by renaming a new one over it, which a watch on the old inode would miss. */
static int watch(struct hw_dns *d, char *err, size_t err_len)
{
    char *dir = hw_strdup(d->path);
    char *slash = strrchr(dir, '/');
    if (!slash) {
        free(dir);
        dir = hw_strdup(".");
        d->base = hw_strdup(d->path);
    } else {
        d->base = hw_strdup(slash + 1);
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
    }
    d->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int rc = -1;
    if (d->inotify_fd < 0)
        snprintf(err, err_len, "cannot watch it: inotify: %s", strerror(errno));
    else if (inotify_add_watch(d->inotify_fd, dir,
                               IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE |
                                   IN_MOVED_FROM | IN_ATTRIB | IN_MODIFY) < 0)
        snprintf(err, err_len, "cannot watch its directory %s: %s", dir, strerror(errno));
    else if (hw_loop_add(d->loop, d->inotify_fd, HW_EV_READ, on_inotify, d) < 0)
        snprintf(err, err_len, "cannot watch it: the event loop refused the inotify descriptor");
    else
        rc = 0;
    free(dir);
    return rc;
}

struct hw_dns *hw_dns_start(const struct hw_config *cfg, struct hw_loop *loop,
                            hw_dns_change_cb on_change, void *arg, char *err, size_t err_len)
{
    struct hw_dns *d = hw_calloc(1, sizeof *d);
    d->cfg = cfg;
    d->loop = loop;
    d->on_change = on_change;
    d->arg = arg;
    d->inotify_fd = -1;
    if (!cfg->dns_extra_records_path || !*cfg->dns_extra_records_path) {
        d->current = hw_dns_config_json(cfg, cfg->dns_extra_records, cfg->n_dns_extra_records);
        return d;
    }
    d->path = hw_strdup(cfg->dns_extra_records_path);
    d->current = hw_dns_config_json(cfg, NULL, 0);
    char why[400];
    bool changed;
    if (load_records(d, &changed, why, sizeof why) < 0 || watch(d, why, sizeof why) < 0) {
        snprintf(err, err_len, "dns.extra_records_path %s: %s", d->path, why);
        hw_dns_stop(d);
        return NULL;
    }
    log_info("dns.extra_records_path %s: %zu records loaded; watching it for changes", d->path,
             d->n_records);
    return d;
}

json_t *hw_dns_current(struct hw_dns *d)
{
    return d->current;
}

void hw_dns_stop(struct hw_dns *d)
{
    if (!d)
        return;
    if (d->reload_timer)
        hw_timer_cancel(d->loop, d->reload_timer);
    if (d->inotify_fd >= 0) {
        hw_loop_remove(d->loop, d->inotify_fd);
        close(d->inotify_fd);
    }
    json_decref(d->current);
    free(d->path);
    free(d->base);
    free(d->text);
    free(d);
}
