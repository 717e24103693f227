/* DNSConfig building and the extra-records file format (server/dns.c). */
#include <jansson.h>

#include "common/config.h"
#include "common/util.h"
#include "server/dns.h"
#include "tests/unit/testlib.h"

static const char *str_at(json_t *o, const char *key, size_t i, const char *member)
{
    json_t *v = json_array_get(json_object_get(o, key), i);
    return json_string_value(member ? json_object_get(v, member) : v);
}

static void global_nameservers_follow_override_local_dns(void)
{
    struct hw_config cfg;
    hw_config_defaults(&cfg);
    cfg.dns_override_local_dns = false;
    json_t *j = hw_dns_config_json(&cfg, NULL, 0);
    CHECK(!json_object_get(j, "Resolvers"), "Resolvers without override_local_dns");
    CHECK(json_array_size(json_object_get(j, "FallbackResolvers")) == cfg.n_dns_nameservers_global,
          "FallbackResolvers");
    CHECK_STR(str_at(j, "FallbackResolvers", 0, "Addr"), cfg.dns_nameservers_global[0]);
    CHECK(json_is_true(json_object_get(j, "Proxied")), "MagicDNS on by default");
    CHECK_STR(str_at(j, "Domains", 0, NULL), "headwater.net");
    CHECK(json_is_array(json_object_get(json_object_get(j, "Routes"), "64.100.in-addr.arpa")),
          "reverse zone routed to MagicDNS");
    json_decref(j);

    cfg.dns_override_local_dns = true;
    j = hw_dns_config_json(&cfg, NULL, 0);
    CHECK_STR(str_at(j, "Resolvers", 0, "Addr"), cfg.dns_nameservers_global[0]);
    CHECK(!json_object_get(j, "FallbackResolvers"), "no FallbackResolvers with override");
    json_decref(j);
    hw_config_free(&cfg);
}

static void split_search_domains_and_records(void)
{
    struct hw_config cfg;
    hw_config_defaults(&cfg);
    cfg.dns_magic_dns = false;
    char *servers[] = {hw_strdup("10.0.0.53"), hw_strdup("10.0.0.54")};
    struct hw_dns_nameserver_split split = {.domain = hw_strdup("corp.example"),
                                            .servers = hw_calloc(2, sizeof(char *)),
                                            .n_servers = 2};
    split.servers[0] = servers[0];
    split.servers[1] = servers[1];
    cfg.dns_nameservers_split = hw_calloc(1, sizeof split);
    cfg.dns_nameservers_split[0] = split;
    cfg.n_dns_nameservers_split = 1;
    cfg.dns_search_domains = hw_calloc(1, sizeof(char *));
    cfg.dns_search_domains[0] = hw_strdup("lab.example");
    cfg.n_dns_search_domains = 1;
    struct hw_dns_extra_record rec = {"grafana.headwater.net", "A", "100.64.0.3"};
    json_t *j = hw_dns_config_json(&cfg, &rec, 1);
    json_t *routes = json_object_get(j, "Routes");
    CHECK_INT(json_object_size(routes), 1);
    CHECK_STR(str_at(routes, "corp.example", 1, "Addr"), "10.0.0.54");
    CHECK(!json_object_get(j, "Proxied"), "no MagicDNS");
    CHECK_STR(str_at(j, "Domains", 0, NULL), "headwater.net");
    CHECK_STR(str_at(j, "Domains", 1, NULL), "lab.example");
    CHECK_STR(str_at(j, "ExtraRecords", 0, "Name"), "grafana.headwater.net");
    CHECK_STR(str_at(j, "ExtraRecords", 0, "Type"), "A");
    CHECK_STR(str_at(j, "ExtraRecords", 0, "Value"), "100.64.0.3");
    json_decref(j);
    hw_config_free(&cfg);
}

static void records_file_parses(void)
{
    static const char text[] =
        "[{\"name\": \"a.example\", \"type\": \"A\", \"value\": \"100.64.0.7\"},"
        " {\"Name\": \"b.example\", \"Type\": \"aaaa\", \"Value\": \"fd7a:115c:a1e0::7\"},"
        " {\"name\": \"c.example\", \"value\": \"fd7a:115c:a1e0::8\"},"
        " {\"name\": \"d.example\", \"type\": \"CNAME\", \"value\": \"a.example\"}]";
    struct hw_dns_extra_record *r;
    size_t n;
    char err[300];
    CHECK(hw_dns_records_parse(text, sizeof text - 1, &r, &n, err, sizeof err) == 0, "%s", err);
    CHECK_INT(n, 3);
    CHECK_STR(r[1].type, "AAAA");
    CHECK_STR(r[1].name, "b.example");
    CHECK_STR(r[2].type, "AAAA");
    hw_dns_records_free(r, n);
    CHECK(hw_dns_records_parse("[]", 2, &r, &n, err, sizeof err) == 0 && n == 0, "empty list");
    hw_dns_records_free(r, n);
}

static void records_file_errors_name_the_record(void)
{
    struct hw_dns_extra_record *r;
    size_t n;
    char err[300];
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"[{\"name\": \"a\", \"type\": \"A\", \"value\": \"100.64.0.7\"", "not valid JSON"},
        {"{\"name\": \"a\"}", "expected a JSON array"},
        {"[{\"name\": \"a\", \"type\": \"A\", \"value\": \"100.64.0.7\"}, 5]",
         "record 2 is not an object"},
        {"[{\"type\": \"A\", \"value\": \"100.64.0.7\"}]", "record 1 has no \"name\""},
        {"[{\"name\": \"x\", \"type\": \"A\"}]", "record 1 has no \"value\""},
        {"[{\"name\": \"x\", \"type\": \"A\", \"value\": \"fd7a::1\"}]",
         "record 1 (x): an A record needs an IPv4 address"},
        {"[{\"name\": \"x\", \"type\": 1, \"value\": \"1.2.3.4\"}]", "not a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(hw_dns_records_parse(bad[i].text, strlen(bad[i].text), &r, &n, err, sizeof err) < 0,
              "accepted %s", bad[i].text);
        CHECK(strstr(err, bad[i].want), "error for %s: \"%s\", want \"%s\"", bad[i].text, err,
              bad[i].want);
        CHECK(r == NULL && n == 0, "output left set");
    }
}

int main(void)
{
    RUN(global_nameservers_follow_override_local_dns);
    RUN(split_search_domains_and_records);
    RUN(records_file_parses);
    RUN(records_file_errors_name_the_record);
    return TEST_MAIN_END();
}
