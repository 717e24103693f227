/* Tests for common/config.c. Each fixture is written into a fresh directory under /tmp,
 * so the tests need nothing but the repository (for config-example.yaml and
 * derp-example.yaml, read from the repository root, the cwd tests/run.py gives). */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "common/config.h"
#include "common/util.h"
#include "tests/unit/testlib.h"

static char fixture_dir[PATH_MAX];
static char *fixture_files[64];
static size_t n_fixture_files;

/* Writes TEXT to NAME in the fixture directory; the path stays valid until exit. */
static const char *write_fixture(const char *name, const char *text)
{
    char *path = hw_sprintf("%s/%s", fixture_dir, name);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    for (size_t i = 0; i < n_fixture_files; i++) {
        if (!strcmp(fixture_files[i], path)) {
            free(path);
            return fixture_files[i];
        }
    }
    if (n_fixture_files == HW_ARRAY_LEN(fixture_files)) {
        fprintf(stderr, "too many fixtures\n");
        exit(1);
    }
    fixture_files[n_fixture_files++] = path;
    return path;
}

static void remove_fixtures(void)
{
    for (size_t i = 0; i < n_fixture_files; i++) {
        unlink(fixture_files[i]);
        free(fixture_files[i]);
    }
    rmdir(fixture_dir);
}

static int load_text(const char *name, const char *text, struct hw_config *cfg,
                     struct hw_config_result *res)
{
    return hw_config_load(write_fixture(name, text), cfg, res);
}

/* The first diagnostic whose message contains NEEDLE. */
static const struct hw_config_diag *find_diag(const struct hw_config_result *res,
                                              const char *needle)
{
    for (size_t i = 0; i < res->n_diags; i++)
        if (strstr(res->diags[i].message, needle))
            return &res->diags[i];
    return NULL;
}

/* All diagnostics on one line each, for failure messages. */
static const char *diags_text(const struct hw_config_result *res)
{
    static char text[8192];
    size_t used = 0;
    text[0] = '\0';
    for (size_t i = 0; i < res->n_diags && used < sizeof text; i++)
        used +=
            (size_t)snprintf(text + used, sizeof text - used, "[%d %s: %s] ", res->diags[i].line,
                             res->diags[i].is_error ? "error" : "warning", res->diags[i].message);
    return res->n_diags ? text : "(no diagnostics)";
}

#define CHECK_DIAG(res, needle, want_line, want_error)                                     \
    do {                                                                                   \
        const struct hw_config_diag *d_ = find_diag((res), (needle));                      \
        CHECK(d_ != NULL, "no diagnostic contains \"%s\": %s", (needle), diags_text(res)); \
        CHECK_INT(d_->line, (want_line));                                                  \
        CHECK(d_->is_error == (want_error), "\"%s\" should be %s", d_->message,            \
              (want_error) ? "an error" : "a warning");                                    \
    } while (0)

/* Compares every field but source_path; returns NULL when equal, else the first field
 * that differs. */
static const char *config_difference(const struct hw_config *a, const struct hw_config *b)
{
#define SAME_STR(f) \
    if ((a->f == NULL) != (b->f == NULL) || (a->f && strcmp(a->f, b->f))) return #f
#define SAME(f) \
    if (a->f != b->f) return #f
#define SAME_LIST(f)                                     \
    SAME(n_##f);                                         \
    for (size_t k = 0; k < a->n_##f; k++)                \
        if (strcmp(a->f[k], b->f[k])) return #f
    SAME_STR(server_url);
    SAME_STR(listen_addr);
    SAME_STR(metrics_listen_addr);
    SAME_STR(noise_private_key_path);
    SAME_STR(prefix_v4);
    SAME_STR(prefix_v6);
    SAME(allocation);
    SAME_STR(database_type);
    SAME_STR(database_sqlite_path);
    SAME(database_sqlite_wal);
    SAME(database_sqlite_wal_autocheckpoint);
    SAME(derp_server_enabled);
    SAME(derp_server_region_id);
    SAME_STR(derp_server_region_code);
    SAME_STR(derp_server_region_name);
    SAME_STR(derp_server_stun_listen_addr);
    SAME_STR(derp_server_private_key_path);
    SAME(derp_server_verify_clients);
    SAME(derp_server_auto_add_region);
    SAME_STR(derp_server_ipv4);
    SAME_STR(derp_server_ipv6);
    SAME(derp_server_client_rate_bytes_per_sec);
    SAME(derp_server_client_burst_bytes);
    SAME_LIST(derp_urls);
    SAME_LIST(derp_paths);
    SAME(derp_auto_update_enabled);
    SAME(derp_update_frequency_ms);
    SAME(ephemeral_node_inactivity_timeout_ms);
    SAME(node_expiry_ms);
    SAME(dns_magic_dns);
    SAME_STR(dns_base_domain);
    SAME(dns_override_local_dns);
    SAME_LIST(dns_nameservers_global);
    SAME(n_dns_nameservers_split);
    for (size_t i = 0; i < a->n_dns_nameservers_split; i++) {
        const struct hw_dns_nameserver_split *sa = &a->dns_nameservers_split[i];
        const struct hw_dns_nameserver_split *sb = &b->dns_nameservers_split[i];
        if (strcmp(sa->domain, sb->domain) || sa->n_servers != sb->n_servers)
            return "dns_nameservers_split";
        for (size_t j = 0; j < sa->n_servers; j++)
            if (strcmp(sa->servers[j], sb->servers[j]))
                return "dns_nameservers_split";
    }
    SAME_LIST(dns_search_domains);
    SAME(n_dns_extra_records);
    for (size_t i = 0; i < a->n_dns_extra_records; i++) {
        SAME_STR(dns_extra_records[i].name);
        SAME_STR(dns_extra_records[i].type);
        SAME_STR(dns_extra_records[i].value);
    }
    SAME_STR(dns_extra_records_path);
    SAME_STR(unix_socket);
    SAME(unix_socket_permission);
    SAME(log_level);
    SAME_STR(log_format);
    SAME_STR(tls_cert_path);
    SAME_STR(tls_key_path);
    SAME_STR(policy_path);
    SAME_STR(policy_mode);
    return NULL;
#undef SAME_STR
#undef SAME
#undef SAME_LIST
}

/* A file that sets every key headwater reads, each to something other than its default. */
static const char good_config[] =
    "server_url: https://hw.example.com:443/\n"
    "listen_addr: \"[::]:8443\"\n"
    "metrics_listen_addr: 127.0.0.1:9090\n"
    "noise:\n"
    "  private_key_path: /srv/hw/noise.key\n"
    "prefixes:\n"
    "  v4: 100.64.0.0/16\n"
    "  v6: fd7a:115c:a1e0:ab12::/64\n"
    "  allocation: random\n"
    "database:\n"
    "  type: sqlite3\n"
    "  sqlite:\n"
    "    path: /srv/hw/db.sqlite\n"
    "    write_ahead_log: false\n"
    "    wal_autocheckpoint: 0\n"
    "derp:\n"
    "  server:\n"
    "    enabled: true\n"
    "    region_id: 900\n"
    "    region_code: \"hw-fra\"\n"
    "    region_name: 'Relay: \"one\" # not a comment'\n"
    "    verify_clients: false\n"
    "    stun_listen_addr: 0.0.0.0:3479\n"
    "    private_key_path: /srv/hw/derp.key\n"
    "    automatically_add_embedded_derp_region: false\n"
    "    ipv4: 198.51.100.1\n"
    "    ipv6: 2001:db8::1\n"
    "    per_client_rate_limit_bytes_per_sec: 1000000\n"
    "    per_client_rate_burst_bytes: 2000000\n"
    "  urls:\n"
    "    - https://controlplane.tailscale.com/derpmap/default\n"
    "  paths:\n"
    "    - /etc/headwater/derp.yaml\n"
    "  auto_update_enabled: false\n"
    "  update_frequency: 1h30m\n"
    "node:\n"
    "  expiry: 180d\n"
    "  ephemeral:\n"
    "    inactivity_timeout: 2h\n"
    "dns:\n"
    "  magic_dns: true\n"
    "  base_domain: tailnet.example.org\n"
    "  override_local_dns: true\n"
    "  nameservers:\n"
    "    global:\n"
    "      - 9.9.9.9\n"
    "      - https://dns.nextdns.io/abc123\n"
    "    split:\n"
    "      corp.example.com:\n"
    "        - 10.0.0.53\n"
    "        - 10.0.0.54\n"
    "      lab.example.com: [192.168.1.1]\n"
    "  search_domains: [corp.example.com]\n"
    "  extra_records:\n"
    "    - name: grafana.tailnet.example.org\n"
    "      type: A\n"
    "      value: 100.64.0.3\n"
    "    - {name: v6.tailnet.example.org, type: aaaa, value: \"fd7a:115c:a1e0::3\"}\n"
    "unix_socket: /run/hw/admin.sock\n"
    "unix_socket_permission: \"0750\"\n"
    "log:\n"
    "  level: debug\n"
    "  format: json\n"
    "tls_cert_path: /etc/hw/cert.pem\n"
    "tls_key_path: /etc/hw/key.pem\n"
    "policy:\n"
    "  mode: database\n"
    "  path: /etc/hw/policy.hujson\n";

/* Every key and section of Headscale's current config-example.yaml, including the
 * parts it leaves commented out, with values of the kind it uses. */
static const char headscale_config[] =
    "---\n"
    "server_url: http://127.0.0.1:8080\n"
    "listen_addr: 127.0.0.1:8080\n"
    "metrics_listen_addr: 127.0.0.1:9090\n"
    "grpc_listen_addr: 127.0.0.1:50443\n"
    "grpc_allow_insecure: false\n"
    "trusted_proxies: []\n"
    "noise:\n"
    "  private_key_path: /var/lib/headscale/noise_private.key\n"
    "prefixes:\n"
    "  v4: 100.64.0.0/10\n"
    "  v6: fd7a:115c:a1e0::/48\n"
    "  allocation: sequential\n"
    "derp:\n"
    "  server:\n"
    "    enabled: false\n"
    "    region_id: 999\n"
    "    region_code: \"headscale\"\n"
    "    region_name: \"Headscale Embedded DERP\"\n"
    "    verify_clients: true\n"
    "    stun_listen_addr: \"0.0.0.0:3478\"\n"
    "    private_key_path: /var/lib/headscale/derp_server_private.key\n"
    "    automatically_add_embedded_derp_region: true\n"
    "    ipv4: 198.51.100.1\n"
    "    ipv6: 2001:db8::1\n"
    "  urls:\n"
    "    - https://controlplane.tailscale.com/derpmap/default\n"
    "  paths: []\n"
    "  auto_update_enabled: true\n"
    "  update_frequency: 3h\n"
    "disable_check_updates: false\n"
    "node:\n"
    "  expiry: 0\n"
    "  ephemeral:\n"
    "    inactivity_timeout: 30m\n"
    "  routes:\n"
    "    ha:\n"
    "      probe_interval: 10s\n"
    "      probe_timeout: 5s\n"
    "database:\n"
    "  type: sqlite\n"
    "  debug: false\n"
    "  gorm:\n"
    "    prepare_stmt: true\n"
    "    parameterized_queries: true\n"
    "    skip_err_record_not_found: true\n"
    "    slow_threshold: 1000\n"
    "  sqlite:\n"
    "    path: /var/lib/headscale/db.sqlite\n"
    "    write_ahead_log: true\n"
    "    wal_autocheckpoint: 1000\n"
    "  postgres:\n"
    "    host: localhost\n"
    "    port: 5432\n"
    "    name: headscale\n"
    "    user: foo\n"
    "    pass: bar\n"
    "    max_open_conns: 10\n"
    "    max_idle_conns: 10\n"
    "    conn_max_idle_time_secs: 3600\n"
    "    ssl: false\n"
    "acme_url: https://acme-v02.api.letsencrypt.org/directory\n"
    "acme_email: \"\"\n"
    "tls_letsencrypt_hostname: \"\"\n"
    "tls_letsencrypt_cache_dir: /var/lib/headscale/cache\n"
    "tls_letsencrypt_challenge_type: HTTP-01\n"
    "tls_letsencrypt_listen: \":http\"\n"
    "tls_cert_path: \"\"\n"
    "tls_key_path: \"\"\n"
    "log:\n"
    "  level: info\n"
    "  format: text\n"
    "policy:\n"
    "  mode: file\n"
    "  path: \"\"\n"
    "dns:\n"
    "  magic_dns: true\n"
    "  base_domain: example.com\n"
    "  override_local_dns: true\n"
    "  nameservers:\n"
    "    global:\n"
    "      - 1.1.1.1\n"
    "      - 1.0.0.1\n"
    "      - 2606:4700:4700::1111\n"
    "      - 2606:4700:4700::1001\n"
    "    split: {}\n"
    "  search_domains: []\n"
    "  extra_records: []\n"
    "unix_socket: /var/run/headscale/headscale.sock\n"
    "unix_socket_permission: \"0770\"\n"
    "oidc:\n"
    "  only_start_if_oidc_is_available: true\n"
    "  issuer: \"https://sso.example.com/realms/main\"\n"
    "  client_id: \"headscale\"\n"
    "  client_secret: \"s3cret\"\n"
    "  client_secret_path: \"${CREDENTIALS_DIRECTORY}/oidc_client_secret\"\n"
    "  use_expiry_from_token: false\n"
    "  scope: [\"openid\", \"profile\", \"email\"]\n"
    "  email_verified_required: true\n"
    "  extra_params:\n"
    "    domain_hint: example.com\n"
    "  allowed_domains:\n"
    "    - example.com\n"
    "  allowed_users:\n"
    "    - alice@example.com\n"
    "  allowed_groups:\n"
    "    - /headscale\n"
    "  pkce:\n"
    "    enabled: false\n"
    "    method: S256\n"
    "logtail:\n"
    "  enabled: false\n"
    "taildrop:\n"
    "  enabled: true\n"
    "auto_update:\n"
    "  enabled: false\n"
    "tuning:\n"
    "  register_cache_max_entries: 1024\n"
    "  node_store_batch_size: 100\n"
    "  node_store_batch_timeout: 500ms\n";

/* ------------------------------------------------------------------ tests */

static void embedded_defaults(void)
{
    struct hw_config c;
    hw_config_defaults(&c);
    CHECK(c.source_path == NULL, "no source file");
    CHECK_STR(c.server_url, "http://127.0.0.1:8080");
    CHECK_STR(c.listen_addr, "127.0.0.1:8080");
    CHECK(c.metrics_listen_addr == NULL, "metrics off");
    CHECK_STR(c.noise_private_key_path, "./data/noise_private.key");
    CHECK_STR(c.prefix_v4, "100.64.0.0/10");
    CHECK_STR(c.prefix_v6, "fd7a:115c:a1e0::/48");
    CHECK_INT(c.allocation, HW_ALLOC_SEQUENTIAL);
    CHECK_STR(c.database_type, "sqlite");
    CHECK_STR(c.database_sqlite_path, "./data/db.sqlite");
    CHECK(c.database_sqlite_wal, "WAL on");
    CHECK_INT(c.database_sqlite_wal_autocheckpoint, 1000);
    CHECK(c.derp_server_enabled, "built-in relay on");
    CHECK_INT(c.derp_server_region_id, 999);
    CHECK_STR(c.derp_server_region_code, "headwater");
    CHECK_STR(c.derp_server_region_name, "Headwater Embedded DERP");
    CHECK_STR(c.derp_server_stun_listen_addr, "127.0.0.1:3478");
    CHECK_STR(c.derp_server_private_key_path, "./data/derp_server_private.key");
    CHECK(c.derp_server_verify_clients && c.derp_server_auto_add_region, "relay flags");
    CHECK(c.derp_server_ipv4 == NULL && c.derp_server_ipv6 == NULL, "no relay addresses");
    CHECK(c.derp_server_client_rate_bytes_per_sec == 0 && c.derp_server_client_burst_bytes == 0,
          "no per-client rate limit, as derper");
    CHECK_INT(c.n_derp_urls, 0);
    CHECK_INT(c.n_derp_paths, 0);
    CHECK(c.derp_auto_update_enabled, "auto update");
    CHECK_INT(c.derp_update_frequency_ms, 24LL * 3600 * 1000);
    CHECK_INT(c.ephemeral_node_inactivity_timeout_ms, 30LL * 60 * 1000);
    CHECK_INT(c.node_expiry_ms, 0);
    CHECK(c.dns_magic_dns && !c.dns_override_local_dns, "dns flags");
    CHECK_STR(c.dns_base_domain, "headwater.net");
    CHECK_INT(c.n_dns_nameservers_global, 2);
    CHECK_STR(c.dns_nameservers_global[0], "1.1.1.1");
    CHECK_STR(c.dns_nameservers_global[1], "1.0.0.1");
    CHECK_INT(c.n_dns_nameservers_split + c.n_dns_search_domains + c.n_dns_extra_records, 0);
    CHECK_STR(c.unix_socket, "./data/headwater.sock");
    CHECK_INT(c.unix_socket_permission, 0770);
    CHECK_INT(c.log_level, HW_LOG_INFO);
    CHECK_STR(c.log_format, "text");
    CHECK(c.tls_cert_path == NULL && c.tls_key_path == NULL, "no TLS");
    CHECK(c.policy_path == NULL, "no policy");
    CHECK_STR(c.policy_mode, "file");
    hw_config_free(&c);
}

static void file_defaults_use_packaged_paths(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("minimal.yaml",
                       "server_url: https://hw.example.com\n"
                       "derp:\n"
                       "  urls: [https://controlplane.tailscale.com/derpmap/default]\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "%s", diags_text(&r));
    CHECK_STR(c.server_url, "https://hw.example.com");
    CHECK_STR(c.database_sqlite_path, "/var/lib/headwater/db.sqlite");
    CHECK_STR(c.noise_private_key_path, "/var/lib/headwater/noise_private.key");
    CHECK_STR(c.derp_server_private_key_path, "/var/lib/headwater/derp_server_private.key");
    CHECK_STR(c.unix_socket, "/var/run/headwater/headwater.sock");
    CHECK(!c.derp_server_enabled, "built-in relay off under a file");
    CHECK_STR(c.derp_server_stun_listen_addr, "0.0.0.0:3478");
    /* everything else as embedded */
    CHECK_STR(c.listen_addr, "127.0.0.1:8080");
    CHECK_STR(c.prefix_v4, "100.64.0.0/10");
    CHECK_STR(c.prefix_v6, "fd7a:115c:a1e0::/48");
    CHECK_STR(c.dns_base_domain, "headwater.net");
    CHECK_INT(c.unix_socket_permission, 0770);
    CHECK(c.source_path && strstr(c.source_path, "minimal.yaml"), "source path kept");
    hw_config_free(&c);
    hw_config_result_free(&r);

    struct hw_config direct;
    hw_config_file_defaults(&direct);
    CHECK_STR(direct.database_sqlite_path, "/var/lib/headwater/db.sqlite");
    CHECK(!direct.derp_server_enabled, "file defaults: relay off");
    hw_config_free(&direct);
}

static void good_file_sets_every_key(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("good.yaml", good_config, &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "%s", diags_text(&r));
    CHECK_STR(c.server_url, "https://hw.example.com:443");
    CHECK_STR(c.listen_addr, "[::]:8443");
    CHECK_STR(c.metrics_listen_addr, "127.0.0.1:9090");
    CHECK_STR(c.noise_private_key_path, "/srv/hw/noise.key");
    CHECK_STR(c.prefix_v4, "100.64.0.0/16");
    CHECK_STR(c.prefix_v6, "fd7a:115c:a1e0:ab12::/64");
    CHECK_INT(c.allocation, HW_ALLOC_RANDOM);
    CHECK_STR(c.database_type, "sqlite");
    CHECK_STR(c.database_sqlite_path, "/srv/hw/db.sqlite");
    CHECK(!c.database_sqlite_wal, "WAL off");
    CHECK_INT(c.database_sqlite_wal_autocheckpoint, 0);
    CHECK(c.derp_server_enabled, "relay on");
    CHECK_INT(c.derp_server_region_id, 900);
    CHECK_STR(c.derp_server_region_code, "hw-fra");
    CHECK_STR(c.derp_server_region_name, "Relay: \"one\" # not a comment");
    CHECK(!c.derp_server_verify_clients, "verify off");
    CHECK_STR(c.derp_server_stun_listen_addr, "0.0.0.0:3479");
    CHECK_STR(c.derp_server_private_key_path, "/srv/hw/derp.key");
    CHECK(!c.derp_server_auto_add_region, "auto add off");
    CHECK_STR(c.derp_server_ipv4, "198.51.100.1");
    CHECK_STR(c.derp_server_ipv6, "2001:db8::1");
    CHECK_INT(c.derp_server_client_rate_bytes_per_sec, 1000000);
    CHECK_INT(c.derp_server_client_burst_bytes, 2000000);
    CHECK_INT(c.n_derp_urls, 1);
    CHECK_STR(c.derp_urls[0], "https://controlplane.tailscale.com/derpmap/default");
    CHECK_INT(c.n_derp_paths, 1);
    CHECK_STR(c.derp_paths[0], "/etc/headwater/derp.yaml");
    CHECK(!c.derp_auto_update_enabled, "auto update off");
    CHECK_INT(c.derp_update_frequency_ms, 90LL * 60 * 1000);
    CHECK_INT(c.node_expiry_ms, 180LL * 86400 * 1000);
    CHECK_INT(c.ephemeral_node_inactivity_timeout_ms, 2LL * 3600 * 1000);
    CHECK_STR(c.dns_base_domain, "tailnet.example.org");
    CHECK(c.dns_override_local_dns, "override");
    CHECK_INT(c.n_dns_nameservers_global, 2);
    CHECK_STR(c.dns_nameservers_global[1], "https://dns.nextdns.io/abc123");
    CHECK_INT(c.n_dns_nameservers_split, 2);
    CHECK_STR(c.dns_nameservers_split[0].domain, "corp.example.com");
    CHECK_INT(c.dns_nameservers_split[0].n_servers, 2);
    CHECK_STR(c.dns_nameservers_split[0].servers[1], "10.0.0.54");
    CHECK_STR(c.dns_nameservers_split[1].domain, "lab.example.com");
    CHECK_STR(c.dns_nameservers_split[1].servers[0], "192.168.1.1");
    CHECK_INT(c.n_dns_search_domains, 1);
    CHECK_STR(c.dns_search_domains[0], "corp.example.com");
    CHECK_INT(c.n_dns_extra_records, 2);
    CHECK_STR(c.dns_extra_records[0].name, "grafana.tailnet.example.org");
    CHECK_STR(c.dns_extra_records[0].type, "A");
    CHECK_STR(c.dns_extra_records[0].value, "100.64.0.3");
    CHECK_STR(c.dns_extra_records[1].type, "AAAA");
    CHECK_STR(c.unix_socket, "/run/hw/admin.sock");
    CHECK_INT(c.unix_socket_permission, 0750);
    CHECK_INT(c.log_level, HW_LOG_DEBUG);
    CHECK_STR(c.log_format, "json");
    CHECK_STR(c.tls_cert_path, "/etc/hw/cert.pem");
    CHECK_STR(c.tls_key_path, "/etc/hw/key.pem");
    CHECK_STR(c.policy_mode, "database");
    CHECK_STR(c.policy_path, "/etc/hw/policy.hujson");
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void unknown_key_warns_and_still_loads(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("unknown.yaml",
                       "server_url: http://127.0.0.1:8080\n"
                       "derp:\n"
                       "  urls: [https://controlplane.tailscale.com/derpmap/default]\n"
                       "  srever:\n"
                       "    enabled: true\n"
                       "colour: blue\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_errors == 0, "%s", diags_text(&r));
    CHECK_INT(r.n_diags, 2);
    CHECK_DIAG(&r, "unknown key \"derp.srever\" ignored", 4, false);
    CHECK_DIAG(&r, "did you mean \"derp.server\"", 4, false);
    CHECK_DIAG(&r, "unknown key \"colour\" ignored", 6, false);
    CHECK(!c.derp_server_enabled, "the misspelt section changed nothing");
    CHECK_INT(c.n_derp_urls, 1);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void wrong_type_names_line_and_key(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("badtype.yaml",
                       "# a comment\n"
                       "server_url: http://127.0.0.1:8080\n"
                       "\n"
                       "listen_addr: 8080\n",
                       &c, &r);
    CHECK(rc == -1, "a bad value is an error");
    CHECK_INT(r.n_errors, 1);
    CHECK_INT(r.diags[0].line, 4);
    CHECK_STR(r.diags[0].message,
              "listen_addr: expected HOST:PORT (like 0.0.0.0:8080), got \"8080\"");
    /* cfg is whole after a failure: the packaged defaults, safe to free */
    CHECK_STR(c.listen_addr, "127.0.0.1:8080");
    CHECK_STR(c.database_sqlite_path, "/var/lib/headwater/db.sqlite");
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("badbool.yaml", "derp:\n  server:\n    enabled: [true]\n", &c, &r);
    CHECK(rc == -1, "a list for a boolean");
    CHECK_DIAG(&r, "derp.server.enabled: expected true or false, got a list", 3, true);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("badsection.yaml", "derp: yes\n", &c, &r);
    CHECK(rc == -1, "a scalar for a section");
    CHECK_DIAG(&r, "derp: expected a section of keys, got \"yes\"", 1, true);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void all_errors_are_reported(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("many.yaml",
                       "server_url: ftp://hw.example.com\n"            /* 1 */
                       "derp:\n"                                      /* 2 */
                       "  server:\n"                                  /* 3 */
                       "    region_id: 70000\n"                       /* 4 */
                       "  update_frequency: soon\n"                   /* 5 */
                       "unix_socket_permission: \"0888\"\n"           /* 6 */
                       "log:\n"                                       /* 7 */
                       "  level: verbose\n"                           /* 8 */
                       "  format: xml\n"                              /* 9 */
                       "dns:\n"                                       /* 10 */
                       "  nameservers:\n"                             /* 11 */
                       "    global: [1.1.1.1, \"not a server\"]\n"    /* 12 */
                       "policy:\n"                                    /* 13 */
                       "  mode: db\n",                                /* 14 */
                       &c, &r);
    CHECK(rc == -1, "errors");
    CHECK_INT(r.n_errors, 8);
    CHECK_DIAG(&r, "server_url: expected http://HOST[:PORT] or https://HOST[:PORT]", 1, true);
    CHECK_DIAG(&r, "derp.server.region_id: expected a whole number from 1 to 65535, got \"70000\"",
               4, true);
    CHECK_DIAG(&r, "derp.update_frequency: expected a duration like 3h or 24h, got \"soon\"", 5,
               true);
    CHECK_DIAG(&r, "unix_socket_permission: expected an octal mode up to 0777", 6, true);
    CHECK_DIAG(&r, "log.level: expected one of trace, debug, info", 8, true);
    CHECK_DIAG(&r, "log.format: expected text or json, got \"xml\"", 9, true);
    CHECK_DIAG(&r, "dns.nameservers.global: expected an IP address", 12, true);
    CHECK_DIAG(&r, "policy.mode: expected file or database, got \"db\"", 14, true);
    for (size_t i = 1; i < r.n_diags; i++)
        CHECK(r.diags[i - 1].line <= r.diags[i].line, "diagnostics in file order: %s",
              diags_text(&r));
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void headscale_full_config_loads(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("headscale.yaml", headscale_config, &c, &r);
    CHECK(rc == 0 && r.n_errors == 0, "%s", diags_text(&r));
    /* the one feature it asks for that headwater lacks */
    CHECK_INT(r.n_diags, 1);
    CHECK_DIAG(&r, "oidc is not supported by headwater; ignored", 93, false);
    CHECK_STR(c.noise_private_key_path, "/var/lib/headscale/noise_private.key");
    CHECK_STR(c.database_sqlite_path, "/var/lib/headscale/db.sqlite");
    CHECK_STR(c.derp_server_region_code, "headscale");
    CHECK_STR(c.derp_server_ipv4, "198.51.100.1");
    CHECK_INT(c.derp_update_frequency_ms, 3LL * 3600 * 1000);
    CHECK_STR(c.dns_base_domain, "example.com");
    CHECK(c.dns_override_local_dns, "override");
    CHECK_INT(c.n_dns_nameservers_global, 4);
    CHECK_STR(c.dns_nameservers_global[3], "2606:4700:4700::1001");
    CHECK_STR(c.unix_socket, "/var/run/headscale/headscale.sock");
    CHECK(c.tls_cert_path == NULL && c.policy_path == NULL, "empty strings are unset");
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void headscale_only_features_warn_when_asked_for(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("features.yaml",
                       "derp:\n"
                       "  urls: [https://controlplane.tailscale.com/derpmap/default]\n"
                       "tls_letsencrypt_hostname: hw.example.com\n"
                       "logtail:\n"
                       "  enabled: true\n"
                       "randomize_client_port: false\n"
                       "grpc_listen_addr: 0.0.0.0:50443\n"
                       "trusted_proxies: [127.0.0.1/32]\n"
                       "cli:\n"
                       "  timeout: 5s\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_errors == 0, "%s", diags_text(&r));
    CHECK_INT(r.n_diags, 3);
    CHECK_DIAG(&r,
               "Let's Encrypt (tls_letsencrypt_hostname) is not supported by headwater; ignored", 3,
               false);
    CHECK_DIAG(&r, "logtail is not supported by headwater; ignored", 5, false);
    CHECK_DIAG(&r, "trusted_proxies", 8, false);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void older_headscale_keys_map_to_fields(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("old.yaml",
                       "server_url: http://127.0.0.1:8080\n"
                       "ip_prefixes:\n"
                       "  - fd7a:115c:a1e0::/48\n"
                       "  - 100.64.0.0/10\n"
                       "db_type: sqlite3\n"
                       "db_path: /var/lib/headscale/old.sqlite\n"
                       "acl_policy_path: /etc/headscale/acl.hujson\n"
                       "ephemeral_node_inactivity_timeout: 45m\n"
                       "log_level: warn\n"
                       "derp:\n"
                       "  urls: [https://controlplane.tailscale.com/derpmap/default]\n"
                       "dns_config:\n"
                       "  override_local_dns: true\n"
                       "  nameservers:\n"
                       "    - 9.9.9.9\n"
                       "  restricted_nameservers:\n"
                       "    corp.example.com:\n"
                       "      - 10.0.0.53\n"
                       "  domains: [corp.example.com]\n"
                       "  magic_dns: true\n"
                       "  base_domain: old.example.com\n"
                       "  extra_records:\n"
                       "    - name: db.old.example.com\n"
                       "      type: A\n"
                       "      value: 100.64.0.9\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "%s", diags_text(&r));
    CHECK_STR(c.prefix_v4, "100.64.0.0/10");
    CHECK_STR(c.prefix_v6, "fd7a:115c:a1e0::/48");
    CHECK_STR(c.database_type, "sqlite");
    CHECK_STR(c.database_sqlite_path, "/var/lib/headscale/old.sqlite");
    CHECK_STR(c.policy_path, "/etc/headscale/acl.hujson");
    CHECK_INT(c.ephemeral_node_inactivity_timeout_ms, 45LL * 60 * 1000);
    CHECK_INT(c.log_level, HW_LOG_WARN);
    CHECK(c.dns_override_local_dns && c.dns_magic_dns, "dns flags");
    CHECK_INT(c.n_dns_nameservers_global, 1);
    CHECK_STR(c.dns_nameservers_global[0], "9.9.9.9");
    CHECK_INT(c.n_dns_nameservers_split, 1);
    CHECK_STR(c.dns_nameservers_split[0].domain, "corp.example.com");
    CHECK_STR(c.dns_nameservers_split[0].servers[0], "10.0.0.53");
    CHECK_INT(c.n_dns_search_domains, 1);
    CHECK_STR(c.dns_base_domain, "old.example.com");
    CHECK_INT(c.n_dns_extra_records, 1);
    CHECK_STR(c.dns_extra_records[0].value, "100.64.0.9");
    hw_config_free(&c);
    hw_config_result_free(&r);

    /* an IPv4-only list leaves no IPv6 prefix, as it did in Headscale */
    rc = load_text("old4.yaml",
                   "ip_prefixes: [100.64.0.0/10]\n"
                   "derp: {urls: [https://controlplane.tailscale.com/derpmap/default]}\n",
                   &c, &r);
    CHECK(rc == 0, "%s", diags_text(&r));
    CHECK_STR(c.prefix_v4, "100.64.0.0/10");
    CHECK(c.prefix_v6 == NULL, "no IPv6 prefix");
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("old44.yaml", "ip_prefixes:\n  - 100.64.0.0/10\n  - 100.100.0.0/16\n", &c, &r);
    CHECK(rc == -1, "two IPv4 prefixes");
    CHECK_DIAG(&r, "ip_prefixes: 100.100.0.0/16 is a second IPv4 prefix (the first is at line 2)",
               3, true);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void newer_key_wins_over_older_one(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("both.yaml",
                       "db_path: /old/db.sqlite\n"
                       "database:\n"
                       "  sqlite:\n"
                       "    path: /new/db.sqlite\n"
                       "ip_prefixes: [100.64.0.0/10]\n"
                       "prefixes:\n"
                       "  v4: 100.64.1.0/24\n"
                       "derp: {urls: [https://controlplane.tailscale.com/derpmap/default]}\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_errors == 0, "%s", diags_text(&r));
    CHECK_STR(c.database_sqlite_path, "/new/db.sqlite");
    CHECK_DIAG(&r, "db_path is ignored: database.sqlite.path (line 4) takes precedence", 1, false);
    CHECK_STR(c.prefix_v4, "100.64.1.0/24");
    CHECK(c.prefix_v6 == NULL, "a prefixes section without v6 means no IPv6");
    CHECK_DIAG(&r, "ip_prefixes is ignored: prefixes.v4 (line 7) takes precedence", 5, false);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void not_yaml_reports_a_line(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("garbage.yaml",
                       "server_url: http://127.0.0.1:8080\n"
                       "listen_addr: [127.0.0.1:8080\n"
                       "log: {level: info\n",
                       &c, &r);
    CHECK(rc == -1, "garbage is an error");
    CHECK_INT(r.n_diags, 1);
    CHECK(r.diags[0].is_error && r.diags[0].line >= 2, "%s", diags_text(&r));
    CHECK(strstr(r.diags[0].message, "not valid YAML") != NULL, "%s", r.diags[0].message);
    CHECK(strstr(r.diags[0].message, "starts at line 2") != NULL, "%s", r.diags[0].message);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("binary.yaml", "\x7f" "ELF\x02\x01\x01", &c, &r);
    CHECK(rc == -1, "binary is an error");
    CHECK_DIAG(&r, "not valid YAML", 1, true);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("words.yaml", "\nthis is just a sentence\n", &c, &r);
    CHECK(rc == -1, "a bare scalar is an error");
    CHECK_DIAG(&r, "expected keys like \"server_url: https://...\" at the top level", 2, true);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void missing_file_is_one_error(void)
{
    struct hw_config c;
    struct hw_config_result r;
    char *path = hw_sprintf("%s/no-such-config.yaml", fixture_dir);
    int rc = hw_config_load(path, &c, &r);
    CHECK(rc == -1, "missing file");
    CHECK_INT(r.n_diags, 1);
    CHECK_INT(r.n_errors, 1);
    char *want = hw_sprintf("cannot read %s: No such file or directory", path);
    CHECK_STR(r.diags[0].message, want);
    CHECK_INT(r.diags[0].line, 0);
    free(want);
    free(path);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void postgres_is_refused_at_its_line(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("pg.yaml",
                       "database:\n"
                       "  type: postgres\n"
                       "  postgres:\n"
                       "    host: localhost\n",
                       &c, &r);
    CHECK(rc == -1, "postgres refused");
    CHECK_INT(r.n_errors, 1);
    CHECK_DIAG(&r, "database.type: PostgreSQL is not supported yet", 2, true);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("pgold.yaml", "db_type: postgres\n", &c, &r);
    CHECK(rc == -1, "older db_type postgres refused too");
    CHECK_DIAG(&r, "db_type: PostgreSQL is not supported yet", 1, true);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void prefixes_outside_tailscale_ranges_are_refused(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("prefix.yaml",
                       "prefixes:\n"
                       "  v4: 10.0.0.0/8\n"
                       "  v6: fd00::/8\n",
                       &c, &r);
    CHECK(rc == -1, "outside the ranges");
    CHECK_DIAG(&r, "prefixes.v4: expected an IPv4 prefix inside 100.64.0.0/10, got \"10.0.0.0/8\"",
               2, true);
    CHECK_DIAG(&r,
               "prefixes.v6: expected an IPv6 prefix inside fd7a:115c:a1e0::/48, got \"fd00::/8\"",
               3, true);
    CHECK(find_diag(&r, "no address range") == NULL, "no follow-on error: %s", diags_text(&r));
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("hostbits.yaml",
                   "prefixes:\n"
                   "  v4: 100.64.0.1/10\n"
                   "  v6: \"\"\n"
                   "derp: {urls: [https://controlplane.tailscale.com/derpmap/default]}\n",
                   &c, &r);
    CHECK(rc == 0, "%s", diags_text(&r));
    CHECK_DIAG(&r, "prefixes.v4: \"100.64.0.1/10\" has host bits set; using 100.64.0.0/10", 2,
               false);
    CHECK_STR(c.prefix_v4, "100.64.0.0/10");
    CHECK(c.prefix_v6 == NULL, "v6 off");
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("noprefix.yaml", "prefixes:\n  v4: \"\"\n  v6: \"\"\n", &c, &r);
    CHECK(rc == -1, "no prefix left");
    CHECK_DIAG(&r, "prefixes: no address range is left", 2, true);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void cross_key_rules(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("cross.yaml",
                       "server_url: https://hw.tailnet.example.com\n"   /* 1 */
                       "tls_cert_path: /etc/hw/cert.pem\n"               /* 2 */
                       "dns:\n"                                           /* 3 */
                       "  base_domain: tailnet.example.com\n"             /* 4 */
                       "  override_local_dns: true\n"                     /* 5 */
                       "  nameservers:\n"                                 /* 6 */
                       "    global: []\n"                                 /* 7 */
                       "  extra_records: [{name: a.b, type: A, value: 100.64.0.1}]\n" /* 8 */
                       "  extra_records_path: /x.json\n"                  /* 9 */
                       "node:\n"                                          /* 10 */
                       "  ephemeral:\n"                                   /* 11 */
                       "    inactivity_timeout: 60s\n"                    /* 12 */
                       "derp:\n"                                          /* 13 */
                       "  server:\n"                                      /* 14 */
                       "    enabled: true\n"                              /* 15 */
                       "    stun_listen_addr: \"\"\n"                     /* 16 */
                       "    automatically_add_embedded_derp_region: false\n", /* 17 */
                       &c, &r);
    CHECK(rc == -1, "cross-key errors");
    CHECK_DIAG(&r, "tls_cert_path is set but tls_key_path is not", 2, true);
    CHECK_DIAG(&r, "dns.base_domain: clients take over tailnet.example.com for MagicDNS", 4, true);
    CHECK_DIAG(&r, "dns.override_local_dns: replacing the nodes' own DNS needs at least one server",
               5, true);
    CHECK_DIAG(&r, "set either dns.extra_records or dns.extra_records_path", 9, true);
    CHECK_DIAG(&r, "node.ephemeral.inactivity_timeout: expected more than 65s", 12, true);
    CHECK_DIAG(&r, "derp.server.stun_listen_addr: the built-in relay", 16, true);
    CHECK_DIAG(&r, "automatically_add_embedded_derp_region is false", 17, true);
    CHECK_INT(r.n_errors, 7);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("nobase.yaml", "dns:\n  magic_dns: true\n  base_domain: \"\"\n", &c, &r);
    CHECK(rc == -1, "MagicDNS without a base domain");
    CHECK_DIAG(&r, "dns.base_domain: MagicDNS (dns.magic_dns) needs a base domain", 3, true);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("burst.yaml",
                   "derp:\n  server:\n    per_client_rate_burst_bytes: 100000\n"
                   "    per_client_rate_limit_bytes_per_sec: -1\n", &c, &r);
    CHECK(rc == -1, "a negative rate");
    CHECK_DIAG(&r, "derp.server.per_client_rate_limit_bytes_per_sec: expected a whole number from 0 to "
               "2147483647, got \"-1\"", 4, true);
    CHECK_INT(r.n_errors, 1);
    for (size_t i = 0; i < r.n_diags; i++)   /* the refused rate leaves the burst unjudged */
        CHECK(!strstr(r.diags[i].message, "has no effect"), "%s", r.diags[i].message);
    hw_config_free(&c);
    hw_config_result_free(&r);
    rc = load_text("burst2.yaml", "derp:\n  server:\n    per_client_rate_burst_bytes: 100000\n", &c, &r);
    CHECK(rc == 0, "a burst alone is only a warning");
    CHECK_DIAG(&r, "derp.server.per_client_rate_burst_bytes has no effect while "
               "derp.server.per_client_rate_limit_bytes_per_sec is 0", 3, false);
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("noderp.yaml", "server_url: http://127.0.0.1:8080\n", &c, &r);
    CHECK(rc == 0, "no relay is only a warning");
    CHECK_DIAG(&r, "no DERP relay is configured", 0, false);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void values_in_go_yaml_forms(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("forms.yaml",
                       "derp:\n"
                       "  server:\n"
                       "    enabled: yes\n"
                       "    verify_clients: Off\n"
                       "    automatically_add_embedded_derp_region: \"true\"\n"
                       "  urls: https://derp.example.com/map.json\n"
                       "  update_frequency: 90m\n"
                       "unix_socket_permission: 0o750\n"
                       "node:\n"
                       "  expiry: \"0\"\n"
                       "log:\n"
                       "  level: WARN\n"
                       "  format: \"\"\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "%s", diags_text(&r));
    CHECK(c.derp_server_enabled && !c.derp_server_verify_clients && c.derp_server_auto_add_region,
          "YAML 1.1 booleans");
    CHECK_INT(c.n_derp_urls, 1);
    CHECK_STR(c.derp_urls[0], "https://derp.example.com/map.json");
    CHECK_INT(c.derp_update_frequency_ms, 90LL * 60 * 1000);
    CHECK_INT(c.unix_socket_permission, 0750);
    CHECK_INT(c.node_expiry_ms, 0);
    CHECK_INT(c.log_level, HW_LOG_WARN);
    CHECK_STR(c.log_format, "text");
    hw_config_free(&c);
    hw_config_result_free(&r);

    /* unquoted, YAML 1.1 would make 0770 a number; the digits are what the admin meant */
    rc = load_text("mode.yaml", "unix_socket_permission: 0770\n", &c, &r);
    CHECK_INT(c.unix_socket_permission, 0770);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void relative_paths_follow_the_config_file(void)
{
    struct hw_config c;
    struct hw_config_result r;
    char *real = realpath(fixture_dir, NULL);
    CHECK(real != NULL, "realpath");
    int rc = load_text("relative.yaml",
                       "noise:\n"
                       "  private_key_path: ./keys/noise.key\n"
                       "database:\n"
                       "  sqlite:\n"
                       "    path: db.sqlite\n"
                       "unix_socket: ./admin.sock\n"
                       "derp: {urls: [https://controlplane.tailscale.com/derpmap/default]}\n",
                       &c, &r);
    CHECK(rc == 0, "%s", diags_text(&r));
    char *want = hw_sprintf("%s/keys/noise.key", real);
    CHECK_STR(c.noise_private_key_path, want);
    free(want);
    want = hw_sprintf("%s/db.sqlite", real);
    CHECK_STR(c.database_sqlite_path, want);
    free(want);
    /* Headscale takes the socket from the working directory, and so do we */
    CHECK_STR(c.unix_socket, "./admin.sock");
    free(real);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void duplicate_key_is_an_error(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("dup.yaml",
                       "listen_addr: 0.0.0.0:8080\n"
                       "log:\n"
                       "  level: info\n"
                       "listen_addr: 0.0.0.0:9090\n",
                       &c, &r);
    CHECK(rc == -1, "duplicate");
    CHECK_DIAG(&r, "listen_addr: duplicate key (first set at line 1)", 4, true);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void merge_keys_are_honoured(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("merge.yaml",
                       "derp:\n"
                       "  urls: [https://controlplane.tailscale.com/derpmap/default]\n"
                       "  server: &relay\n"
                       "    region_id: 901\n"
                       "    region_code: one\n"
                       "log:\n"
                       "  level: debug\n"
                       "dns:\n"
                       "  nameservers:\n"
                       "    global: &resolvers [9.9.9.9]\n"
                       "    split:\n"
                       "      corp.example.com: *resolvers\n",
                       &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "%s", diags_text(&r));
    CHECK_STR(c.dns_nameservers_split[0].servers[0], "9.9.9.9");
    hw_config_free(&c);
    hw_config_result_free(&r);

    rc = load_text("merge2.yaml",
                   "derp:\n"
                   "  urls: [https://controlplane.tailscale.com/derpmap/default]\n"
                   "  server:\n"
                   "    <<: {region_id: 901, region_code: merged}\n"
                   "    region_code: own\n",
                   &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "%s", diags_text(&r));
    CHECK_INT(c.derp_server_region_id, 901);
    CHECK_STR(c.derp_server_region_code, "own");
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void diagnostics_print_as_file_line(void)
{
    struct hw_config c;
    struct hw_config_result r;
    const char *path = write_fixture("print.yaml", "listen_addr: 8080\nderp:\n  srever: {}\n");
    hw_config_load(path, &c, &r);
    char *out = NULL;
    size_t out_len = 0;
    FILE *f = open_memstream(&out, &out_len);
    CHECK(f != NULL, "memstream");
    hw_config_print_diags("config.yaml", &r, f);
    fclose(f);
    CHECK_STR(out, "config.yaml:1: error: listen_addr: expected HOST:PORT (like 0.0.0.0:8080), "
                   "got \"8080\"\n"
                   "config.yaml:2: warning: no DERP relay is configured (derp.server.enabled is "
                   "false, derp.urls and derp.paths are empty): nodes that cannot reach each "
                   "other directly will not connect\n"
                   "config.yaml:3: warning: unknown key \"derp.srever\" ignored (did you mean "
                   "\"derp.server\"?)\n");
    free(out);
    hw_config_free(&c);
    hw_config_result_free(&r);
}

static void repository_example_loads_clean(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = hw_config_load("config-example.yaml", &c, &r);
    CHECK(rc == 0 && r.n_diags == 0, "config-example.yaml (cwd must be the repository root): %s",
          diags_text(&r));
    CHECK_STR(c.listen_addr, "0.0.0.0:8080");
    CHECK_STR(c.database_sqlite_path, "/var/lib/headwater/db.sqlite");
    CHECK_STR(c.unix_socket, "/var/run/headwater/headwater.sock");
    hw_config_free(&c);
    hw_config_result_free(&r);
}

/* The derp map format is parsed elsewhere; here only its shape: YAML with regions whose
 * nodes carry the lower-case Headscale field names. */
static void derp_example_is_a_derp_map(void)
{
    size_t len;
    char *text = hw_read_file("derp-example.yaml", &len);
    CHECK(text != NULL, "derp-example.yaml at the repository root");
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int loaded = yaml_parser_load(&parser, &doc);
    yaml_parser_delete(&parser);
    free(text);
    CHECK(loaded, "derp-example.yaml is YAML");
    size_t regions = 0, nodes = 0, certnames = 0, without_ipv4 = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *key = yaml_document_get_node(&doc, p->key);
        if (strcmp((char *)key->data.scalar.value, "regions"))
            continue;
        yaml_node_t *map = yaml_document_get_node(&doc, p->value);
        for (yaml_node_pair_t *rp = map->data.mapping.pairs.start; rp < map->data.mapping.pairs.top;
             rp++) {
            yaml_node_t *region = yaml_document_get_node(&doc, rp->value);
            regions++;
            for (yaml_node_pair_t *f = region->data.mapping.pairs.start;
                 f < region->data.mapping.pairs.top; f++) {
                yaml_node_t *fk = yaml_document_get_node(&doc, f->key);
                if (strcmp((char *)fk->data.scalar.value, "nodes"))
                    continue;
                yaml_node_t *list = yaml_document_get_node(&doc, f->value);
                for (yaml_node_item_t *i = list->data.sequence.items.start;
                     i < list->data.sequence.items.top; i++) {
                    yaml_node_t *node = yaml_document_get_node(&doc, *i);
                    bool has_ipv4 = false;
                    nodes++;
                    for (yaml_node_pair_t *nf = node->data.mapping.pairs.start;
                         nf < node->data.mapping.pairs.top; nf++) {
                        const char *name =
                            (char *)yaml_document_get_node(&doc, nf->key)->data.scalar.value;
                        const char *value =
                            (char *)yaml_document_get_node(&doc, nf->value)->data.scalar.value;
                        has_ipv4 |= !strcmp(name, "ipv4");
                        certnames +=
                            !strcmp(name, "certname") && !strncmp(value, "sha256-raw:", 11);
                    }
                    without_ipv4 += !has_ipv4;
                }
            }
        }
    }
    yaml_document_delete(&doc);
    CHECK_INT(regions, 3);
    CHECK_INT(nodes, 4);
    CHECK_INT(certnames, 1);
    CHECK_INT(without_ipv4, 1);
}

/* Dumps C to a file, loads it back and compares with WANT (C itself when NULL). */
static void check_round_trip(const struct hw_config *c, const struct hw_config *want,
                             const char *name)
{
    char *path = hw_sprintf("%s/%s", fixture_dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "open %s", path);
    hw_config_dump(c, f);
    fclose(f);
    char *text = hw_read_file(path, NULL);
    free(path);
    struct hw_config again;
    struct hw_config_result r;
    int rc = load_text(name, text, &again, &r);
    const char *difference = config_difference(want ? want : c, &again);
    if (rc != 0 || r.n_diags != 0 || difference)
        fprintf(stderr, "--- dump of %s ---\n%s", name, text);
    free(text);
    CHECK(rc == 0 && r.n_diags == 0, "reloading the dump: %s", diags_text(&r));
    CHECK(difference == NULL, "%s differs after the round trip", difference);
    hw_config_free(&again);
    hw_config_result_free(&r);
}

static void dump_round_trips(void)
{
    struct hw_config c;
    struct hw_config_result r;
    int rc = load_text("trip.yaml", good_config, &c, &r);
    CHECK(rc == 0, "%s", diags_text(&r));
    hw_config_result_free(&r);
    check_round_trip(&c, NULL, "trip-dump.yaml");
    hw_config_free(&c);

    rc = load_text(
        "trip-old.yaml",
        "ip_prefixes: [fd7a:115c:a1e0::/48]\n"
        "dns_config: {base_domain: b.example, override_local_dns: false, magic_dns: false}\n"
        "derp: {urls: [http://10.0.0.1:8080/derp.json]}\n"
        "dns:\n"
        "  extra_records_path: /var/lib/headwater/records.json\n"
        "node: {expiry: 1h30m45s}\n",
        &c, &r);
    CHECK(rc == 0, "%s", diags_text(&r));
    hw_config_result_free(&r);
    check_round_trip(&c, NULL, "trip-old-dump.yaml");
    hw_config_free(&c);

    /* The embedded defaults name files relative to the working directory; a config
     * file's relative paths follow the file, so the dump spells them out in full. */
    hw_config_defaults(&c);
    struct hw_config want;
    hw_config_defaults(&want);
    char *cwd = getcwd(NULL, 0);
    char **paths[] = {&want.noise_private_key_path, &want.database_sqlite_path,
                      &want.derp_server_private_key_path};
    for (size_t i = 0; i < HW_ARRAY_LEN(paths); i++) {
        char *absolute = hw_sprintf("%s/%s", cwd, *paths[i] + 2 /* "./" */);
        free(*paths[i]);
        *paths[i] = absolute;
    }
    free(cwd);
    check_round_trip(&c, &want, "trip-defaults.yaml");
    hw_config_free(&want);
    hw_config_free(&c);
}

static void dump_uses_headscale_names_and_quotes_strings(void)
{
    struct hw_config c;
    hw_config_defaults(&c);
    free(c.derp_server_region_name);
    c.derp_server_region_name = hw_strdup("line one\n\"two\": #three");
    char *out = NULL;
    size_t out_len = 0;
    FILE *f = open_memstream(&out, &out_len);
    CHECK(f != NULL, "memstream");
    hw_config_dump(&c, f);
    fclose(f);
    CHECK(strstr(out, "\nunix_socket_permission: \"0770\"\n") != NULL, "%s", out);
    CHECK(strstr(out, "    region_name: \"line one\\n\\\"two\\\": #three\"\n") != NULL, "%s", out);
    CHECK(strstr(out, "  update_frequency: 24h\n") != NULL, "%s", out);
    CHECK(strstr(out, "  ephemeral:\n    inactivity_timeout: 30m\n") != NULL, "%s", out);
    CHECK(strstr(out, "\n    global:\n    - \"1.1.1.1\"\n") != NULL, "%s", out);
    free(out);
    hw_config_free(&c);
}

int main(void)
{
    snprintf(fixture_dir, sizeof fixture_dir, "/tmp/hw-test-config-XXXXXX");
    if (!mkdtemp(fixture_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(embedded_defaults);
    RUN(file_defaults_use_packaged_paths);
    RUN(good_file_sets_every_key);
    RUN(unknown_key_warns_and_still_loads);
    RUN(wrong_type_names_line_and_key);
    RUN(all_errors_are_reported);
    RUN(headscale_full_config_loads);
    RUN(headscale_only_features_warn_when_asked_for);
    RUN(older_headscale_keys_map_to_fields);
    RUN(newer_key_wins_over_older_one);
    RUN(not_yaml_reports_a_line);
    RUN(missing_file_is_one_error);
    RUN(postgres_is_refused_at_its_line);
    RUN(prefixes_outside_tailscale_ranges_are_refused);
    RUN(cross_key_rules);
    RUN(values_in_go_yaml_forms);
    RUN(relative_paths_follow_the_config_file);
    RUN(duplicate_key_is_an_error);
    RUN(merge_keys_are_honoured);
    RUN(diagnostics_print_as_file_line);
    RUN(repository_example_loads_clean);
    RUN(derp_example_is_a_derp_map);
    RUN(dump_round_trips);
    RUN(dump_uses_headscale_names_and_quotes_strings);
    remove_fixtures();
    return TEST_MAIN_END();
}
