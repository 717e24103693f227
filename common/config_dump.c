/* The effective configuration written back as YAML with Headscale's current key names.
 * libyaml's emitter does the quoting; strings are always double-quoted because a plain
 * 0770 or yes would read back as a number or a boolean in Go's YAML. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "common/config.h"
#include "common/util.h"

struct dump {
    yaml_emitter_t emitter;
    bool failed;
};

/* The emitter owns each event it is given, failed or not; after a failure the rest are
 * only freed. */
static void emit(struct dump *d, yaml_event_t *event)
{
    if (d->failed)
        yaml_event_delete(event);
    else if (!yaml_emitter_emit(&d->emitter, event))
        d->failed = true;
}

static void scalar(struct dump *d, const char *text, yaml_scalar_style_t style)
{
    yaml_event_t event;
    yaml_scalar_event_initialize(&event, NULL, NULL, (yaml_char_t *)text, (int)strlen(text), 1, 1,
                                 style);
    emit(d, &event);
}

static void key(struct dump *d, const char *name) { scalar(d, name, YAML_PLAIN_SCALAR_STYLE); }

static void begin_section(struct dump *d, const char *name)
{
    yaml_event_t event;
    if (name)
        key(d, name);
    yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
    emit(d, &event);
}

static void end_section(struct dump *d)
{
    yaml_event_t event;
    yaml_mapping_end_event_initialize(&event);
    emit(d, &event);
}

/* NULL ("not set") is written as "", which reads back as not set. */
static void put_string(struct dump *d, const char *name, const char *value)
{
    key(d, name);
    scalar(d, value ? value : "", YAML_DOUBLE_QUOTED_SCALAR_STYLE);
}

/* For the keys a config file resolves against its own directory: a path relative to
 * the working directory (as in the embedded defaults) is written out absolute, so the
 * dump means the same files wherever it is saved. */
static void put_path(struct dump *d, const char *name, const char *value)
{
    char *cwd = value && value[0] != '/' ? getcwd(NULL, 0) : NULL;
    if (!cwd) {
        put_string(d, name, value);
        return;
    }
    while (value[0] == '.' && value[1] == '/')
        value += 2;
    char *absolute = hw_sprintf("%s/%s", cwd, value);
    put_string(d, name, absolute);
    free(absolute);
    free(cwd);
}

static void put_plain(struct dump *d, const char *name, const char *value)
{
    key(d, name);
    scalar(d, value, YAML_PLAIN_SCALAR_STYLE);
}

static void put_bool(struct dump *d, const char *name, bool value)
{
    put_plain(d, name, value ? "true" : "false");
}

static void put_int(struct dump *d, const char *name, long long value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    put_plain(d, name, text);
}

/* Go's time.ParseDuration has no days, so "24h" stays "24h" and 0 is written "0". */
static void put_duration(struct dump *d, const char *name, int64_t ms)
{
    char text[64] = "0";
    size_t used = 0;
    int64_t parts[] = {ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms % 1000};
    static const char *const units[] = {"h", "m", "s", "ms"};
    for (size_t i = 0; i < 4 && ms > 0; i++)
        if (parts[i])
            used += (size_t)snprintf(text + used, sizeof text - used, "%" PRId64 "%s", parts[i],
                                     units[i]);
    put_plain(d, name, text);
}

static void put_list(struct dump *d, const char *name, char *const *items, size_t n)
{
    yaml_event_t event;
    key(d, name);
    /* An empty block list cannot be written; [] reads back as an empty list. */
    yaml_sequence_start_event_initialize(&event, NULL, NULL, 1,
                                         n ? YAML_BLOCK_SEQUENCE_STYLE : YAML_FLOW_SEQUENCE_STYLE);
    emit(d, &event);
    for (size_t i = 0; i < n; i++)
        scalar(d, items[i], YAML_DOUBLE_QUOTED_SCALAR_STYLE);
    yaml_sequence_end_event_initialize(&event);
    emit(d, &event);
}

static void put_split(struct dump *d, const struct hw_config *cfg)
{
    yaml_event_t event;
    key(d, "split");
    yaml_mapping_start_event_initialize(&event, NULL, NULL, 1,
                                        cfg->n_dns_nameservers_split ? YAML_BLOCK_MAPPING_STYLE
                                                                     : YAML_FLOW_MAPPING_STYLE);
    emit(d, &event);
    for (size_t i = 0; i < cfg->n_dns_nameservers_split; i++) {
        const struct hw_dns_nameserver_split *s = &cfg->dns_nameservers_split[i];
        put_list(d, s->domain, s->servers, s->n_servers);
    }
    end_section(d);
}

static void put_extra_records(struct dump *d, const struct hw_config *cfg)
{
    yaml_event_t event;
    key(d, "extra_records");
    yaml_sequence_start_event_initialize(&event, NULL, NULL, 1,
                                         cfg->n_dns_extra_records ? YAML_BLOCK_SEQUENCE_STYLE
                                                                  : YAML_FLOW_SEQUENCE_STYLE);
    emit(d, &event);
    for (size_t i = 0; i < cfg->n_dns_extra_records; i++) {
        const struct hw_dns_extra_record *r = &cfg->dns_extra_records[i];
        begin_section(d, NULL);
        put_string(d, "name", r->name);
        put_string(d, "type", r->type);
        put_string(d, "value", r->value);
        end_section(d);
    }
    yaml_sequence_end_event_initialize(&event);
    emit(d, &event);
}

static void put_body(struct dump *d, const struct hw_config *cfg)
{
    char mode[8];

    put_string(d, "server_url", cfg->server_url);
    put_string(d, "listen_addr", cfg->listen_addr);
    put_string(d, "metrics_listen_addr", cfg->metrics_listen_addr);

    begin_section(d, "noise");
    put_path(d, "private_key_path", cfg->noise_private_key_path);
    end_section(d);

    begin_section(d, "prefixes");
    put_string(d, "v4", cfg->prefix_v4);
    put_string(d, "v6", cfg->prefix_v6);
    put_plain(d, "allocation", cfg->allocation == HW_ALLOC_RANDOM ? "random" : "sequential");
    end_section(d);

    begin_section(d, "database");
    put_string(d, "type", cfg->database_type);
    begin_section(d, "sqlite");
    put_path(d, "path", cfg->database_sqlite_path);
    put_bool(d, "write_ahead_log", cfg->database_sqlite_wal);
    put_int(d, "wal_autocheckpoint", cfg->database_sqlite_wal_autocheckpoint);
    end_section(d);
    end_section(d);

    begin_section(d, "derp");
    begin_section(d, "server");
    put_bool(d, "enabled", cfg->derp_server_enabled);
    put_int(d, "region_id", cfg->derp_server_region_id);
    put_string(d, "region_code", cfg->derp_server_region_code);
    put_string(d, "region_name", cfg->derp_server_region_name);
    put_bool(d, "verify_clients", cfg->derp_server_verify_clients);
    put_string(d, "stun_listen_addr", cfg->derp_server_stun_listen_addr);
    put_path(d, "private_key_path", cfg->derp_server_private_key_path);
    put_bool(d, "automatically_add_embedded_derp_region", cfg->derp_server_auto_add_region);
    put_string(d, "ipv4", cfg->derp_server_ipv4);
    put_string(d, "ipv6", cfg->derp_server_ipv6);
    put_int(d, "per_client_rate_limit_bytes_per_sec", cfg->derp_server_client_rate_bytes_per_sec);
    put_int(d, "per_client_rate_burst_bytes", cfg->derp_server_client_burst_bytes);
    end_section(d);
    put_list(d, "urls", cfg->derp_urls, cfg->n_derp_urls);
    put_list(d, "paths", cfg->derp_paths, cfg->n_derp_paths);
    put_bool(d, "auto_update_enabled", cfg->derp_auto_update_enabled);
    put_duration(d, "update_frequency", cfg->derp_update_frequency_ms);
    end_section(d);

    begin_section(d, "node");
    put_duration(d, "expiry", cfg->node_expiry_ms);
    begin_section(d, "ephemeral");
    put_duration(d, "inactivity_timeout", cfg->ephemeral_node_inactivity_timeout_ms);
    end_section(d);
    end_section(d);

    begin_section(d, "dns");
    put_bool(d, "magic_dns", cfg->dns_magic_dns);
    put_string(d, "base_domain", cfg->dns_base_domain);
    put_bool(d, "override_local_dns", cfg->dns_override_local_dns);
    begin_section(d, "nameservers");
    put_list(d, "global", cfg->dns_nameservers_global, cfg->n_dns_nameservers_global);
    put_split(d, cfg);
    end_section(d);
    put_list(d, "search_domains", cfg->dns_search_domains, cfg->n_dns_search_domains);
    /* Headscale refuses both keys at once, even empty, so only the one in use is written. */
    if (cfg->dns_extra_records_path)
        put_string(d, "extra_records_path", cfg->dns_extra_records_path);
    else
        put_extra_records(d, cfg);
    end_section(d);

    put_string(d, "unix_socket", cfg->unix_socket);
    snprintf(mode, sizeof mode, "0%03o", cfg->unix_socket_permission & 0777);
    put_string(d, "unix_socket_permission", mode);

    begin_section(d, "log");
    put_plain(d, "level", hw_log_level_name(cfg->log_level));
    put_string(d, "format", cfg->log_format);
    end_section(d);

    put_path(d, "tls_cert_path", cfg->tls_cert_path);
    put_path(d, "tls_key_path", cfg->tls_key_path);

    begin_section(d, "policy");
    put_string(d, "mode", cfg->policy_mode);
    put_string(d, "path", cfg->policy_path);
    end_section(d);
}

void hw_config_dump(const struct hw_config *cfg, FILE *out)
{
    struct dump d = {.failed = false};
    yaml_event_t event;

    if (!yaml_emitter_initialize(&d.emitter)) {
        fputs("headwater: out of memory\n", stderr);
        return;
    }
    fputs("# effective configuration, from ", out);
    for (const char *p = cfg->source_path ? cfg->source_path : "the embedded defaults"; *p; p++)
        fputc(*p == '\n' || *p == '\r' ? '?' : *p, out);
    fputc('\n', out);
    fflush(out);
    yaml_emitter_set_output_file(&d.emitter, out);
    yaml_emitter_set_unicode(&d.emitter, 1);
    yaml_emitter_set_width(&d.emitter, -1);   /* never fold a long path or URL */

    yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING);
    emit(&d, &event);
    yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1);
    emit(&d, &event);
    begin_section(&d, NULL);
    put_body(&d, cfg);
    end_section(&d);
    yaml_document_end_event_initialize(&event, 1);
    emit(&d, &event);
    yaml_stream_end_event_initialize(&event);
    emit(&d, &event);
    yaml_emitter_flush(&d.emitter);
    yaml_emitter_delete(&d.emitter);
}
