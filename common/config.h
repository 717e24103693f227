#ifndef HW_COMMON_CONFIG_H
#define HW_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/log.h"

/* The server's configuration, read from a YAML file whose keys are Headscale's
 * config.yaml keys (so an existing Headscale config works unchanged where the feature
 * exists). Strings are malloc'd and owned by the struct; NULL means "not set". */

enum hw_alloc_strategy { HW_ALLOC_SEQUENTIAL = 0, HW_ALLOC_RANDOM };

struct hw_dns_nameserver_split {
    char *domain;        /* "corp.example.com" */
    char **servers;      /* "10.0.0.1", "https://dns.nextdns.io/abc" */
    size_t n_servers;
};

struct hw_dns_extra_record {
    char *name;          /* FQDN */
    char *type;          /* "A" or "AAAA" */
    char *value;         /* address */
};

struct hw_config {
    char *source_path;                 /* file it came from, NULL for the embedded default */

    char *server_url;                  /* "http://127.0.0.1:8080" */
    char *listen_addr;                 /* "127.0.0.1:8080" */
    char *metrics_listen_addr;         /* NULL = off */
    char *noise_private_key_path;      /* created 0600 on first start */

    char *prefix_v4;                   /* "100.64.0.0/10", NULL = no IPv4 */
    char *prefix_v6;                   /* "fd7a:115c:a1e0::/48", NULL = no IPv6 */
    enum hw_alloc_strategy allocation;

    char *database_type;               /* "sqlite" (also "sqlite3"); "postgres" refused for now */
    char *database_sqlite_path;
    bool database_sqlite_wal;          /* default true */
    int database_sqlite_wal_autocheckpoint; /* pages; 1000 (SQLite's own default), 0 = off */

    /* derp.server.* : the built-in relay */
    bool derp_server_enabled;
    int derp_server_region_id;         /* 999 */
    char *derp_server_region_code;     /* "headwater" */
    char *derp_server_region_name;     /* "Headwater Embedded DERP" */
    char *derp_server_stun_listen_addr;/* "0.0.0.0:3478" */
    char *derp_server_private_key_path;
    bool derp_server_verify_clients;   /* default true */
    bool derp_server_auto_add_region;  /* automatically_add_embedded_derp_region, default true */
    char *derp_server_ipv4;
    char *derp_server_ipv6;
    /* derper's per-client receive limit (RateConfig): bytes/s, 0 = unlimited; burst bytes */
    int derp_server_client_rate_bytes_per_sec;
    int derp_server_client_burst_bytes;
    char **derp_urls;
    size_t n_derp_urls;
    char **derp_paths;
    size_t n_derp_paths;
    bool derp_auto_update_enabled;
    int64_t derp_update_frequency_ms;  /* "24h" */

    int64_t ephemeral_node_inactivity_timeout_ms; /* "30m" */
    int64_t node_expiry_ms;            /* node.expiry, 0 = never */

    /* dns.* */
    bool dns_magic_dns;
    char *dns_base_domain;
    bool dns_override_local_dns;
    char **dns_nameservers_global;
    size_t n_dns_nameservers_global;
    struct hw_dns_nameserver_split *dns_nameservers_split;
    size_t n_dns_nameservers_split;
    char **dns_search_domains;
    size_t n_dns_search_domains;
    struct hw_dns_extra_record *dns_extra_records;
    size_t n_dns_extra_records;
    char *dns_extra_records_path;

    char *unix_socket;                 /* admin API socket */
    unsigned unix_socket_permission;   /* octal, default 0770 */

    enum hw_log_level log_level;
    char *log_format;                  /* "text" | "json" */

    char *tls_cert_path;
    char *tls_key_path;
    char *policy_path;                 /* policy.path (or the older acl_policy_path) */
    char *policy_mode;                 /* "file" | "database" */
};

/* One problem found while reading a file: "FILE:LINE: message". */
struct hw_config_diag {
    int line;
    bool is_error;                     /* false = warning (unknown key, ignored feature) */
    char *message;
};

struct hw_config_result {
    struct hw_config_diag *diags;
    size_t n_diags;
    size_t n_errors;
};

/* The embedded default `make run` uses: data under ./data, 127.0.0.1:8080, built-in
 * relay and STUN on loopback. Never fails. */
void hw_config_defaults(struct hw_config *cfg);

/* The defaults under a config file, i.e. for an installed server: the embedded
 * defaults with packaged paths (/var/lib/headwater/{db.sqlite,noise_private.key,
 * derp_server_private.key}, /var/run/headwater/headwater.sock), the built-in relay
 * off and STUN on 0.0.0.0:3478 for when it is turned on. Never fails. */
void hw_config_file_defaults(struct hw_config *cfg);

/* Reads FILE over hw_config_file_defaults(). cfg and res are outputs only: their old
 * contents are neither read nor freed (so do not call hw_config_defaults first).
 * Returns 0 when there is no error (warnings may be present in res), -1 otherwise.
 * Every diagnostic names the line; errors name the key and the expected form, and all
 * of them are collected, not just the first. Nothing is left half-set on error: cfg
 * then holds hw_config_file_defaults(), so hw_config_free is always safe.
 * As in Headscale, a relative key, database or certificate path is taken relative to
 * the directory holding FILE. */
int hw_config_load(const char *path, struct hw_config *cfg, struct hw_config_result *res);

/* Prints each diagnostic as "PATH:LINE: warning: ..." / "PATH:LINE: error: ...";
 * a diagnostic about the whole file (line 0, e.g. it cannot be read) as "error: ...". */
void hw_config_print_diags(const char *path, const struct hw_config_result *res, FILE *out);
void hw_config_result_free(struct hw_config_result *res);

/* The effective configuration as YAML with Headscale's current key names, for
 * `headwater configtest`. Loading the output gives the same configuration back. */
void hw_config_dump(const struct hw_config *cfg, FILE *out);
void hw_config_free(struct hw_config *cfg);

#endif
