/* Tests for server/derpmap.c: the YAML and JSON forms with their checks, the merge
 * order, the embedded region, the JSON clients get, and the refresher against a small
 * HTTP server on 127.0.0.1 run by this test. Fixture files go to a fresh directory
 * under /tmp; derp-example.yaml is read from the repository root (the cwd run.py
 * gives). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/tailcfg.h"
#include "server/derpmap.h"
#include "tests/unit/testlib.h"
#include "tests/unit/tmpdir.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

/* "LINE: message" of the first error, "" when there is none. */
static const char *first_error(const struct hw_derpmap_diags *d, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (size_t i = 0; i < d->n; i++) {
        if (d->items[i].is_error) {
            snprintf(buf, cap, "%d: %s", d->items[i].line, d->items[i].message);
            break;
        }
    }
    return buf;
}

static const struct hw_derpmap_diag *find_diag(const struct hw_derpmap_diags *d, const char *needle)
{
    for (size_t i = 0; i < d->n; i++)
        if (strstr(d->items[i].message, needle))
            return &d->items[i];
    return NULL;
}

static const char *all_diags(const struct hw_derpmap_diags *d)
{
    static char buf[4096];
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < d->n && off < sizeof buf - 1; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "[%s:%d %s] ", d->items[i].source,
                                d->items[i].line, d->items[i].message);
    return buf;
}

static const json_t *region_of(const json_t *map, const char *id)
{
    return json_object_get(json_object_get(map, "Regions"), id);
}

static const json_t *node_of(const json_t *map, const char *id, size_t i)
{
    return json_array_get(json_object_get(region_of(map, id), "Nodes"), i);
}

static const char *str_of(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "(absent)";
}

static long long int_of(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return v ? json_integer_value(v) : -12345;
}

/* A config with only the DERP fields, nothing embedded; strings through hw_config_free. */
static void bare_config(struct hw_config *c)
{
    memset(c, 0, sizeof *c);
    c->derp_auto_update_enabled = true;
    c->derp_update_frequency_ms = 3600 * 1000;
}

static void add_path(struct hw_config *c, const char *path)
{
    c->derp_paths = realloc(c->derp_paths, (c->n_derp_paths + 1) * sizeof(char *));
    c->derp_paths[c->n_derp_paths++] = hw_strdup(path);
}

static void add_url(struct hw_config *c, const char *url)
{
    c->derp_urls = realloc(c->derp_urls, (c->n_derp_urls + 1) * sizeof(char *));
    c->derp_urls[c->n_derp_urls++] = hw_strdup(url);
}

static void embedded_config(struct hw_config *c, const char *server_url, const char *stun)
{
    c->derp_server_enabled = true;
    c->derp_server_auto_add_region = true;
    c->derp_server_region_id = 999;
    c->derp_server_region_code = hw_strdup("headwater");
    c->derp_server_region_name = hw_strdup("Headwater Embedded DERP");
    c->server_url = hw_strdup(server_url);
    c->derp_server_stun_listen_addr = hw_strdup(stun);
}

static int parse_yaml(const char *text, struct hw_derpmap_source *s, struct hw_derpmap_diags *d)
{
    memset(d, 0, sizeof *d);
    return hw_derpmap_parse_yaml("t.yaml", text, strlen(text), s, d);
}

/* ---- the YAML form ---------------------------------------------------------------------- */

static void example_file_parses_with_exact_values(void)
{
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d = {0};
    int rc = hw_derpmap_load_file("derp-example.yaml", &s, &d);
    CHECK(rc == 0 && d.n == 0, "%s", all_diags(&d));
    CHECK_INT(s.map.n_regions, 3);
    CHECK_INT(s.n_removed, 0);

    const struct tc_derp_region *r = tc_derp_map_region(&s.map, 900);
    CHECK(r != NULL, "region 900");
    CHECK_STR(r->region_code, "fra");
    CHECK_STR(r->region_name, "Frankfurt");
    CHECK_INT(r->n_nodes, 2);
    CHECK_STR(r->nodes[0].name, "900a");
    CHECK_INT(r->nodes[0].region_id, 900);
    CHECK_STR(r->nodes[0].host_name, "derp1.example.com");
    CHECK_STR(r->nodes[0].ipv4, "198.51.100.11");
    CHECK_STR(r->nodes[0].ipv6, "2001:db8:900::11");
    CHECK_INT(r->nodes[0].derp_port, 443);
    CHECK_INT(r->nodes[0].stun_port, 3478);
    CHECK(!r->nodes[0].stun_only && r->nodes[0].can_port80 && !r->nodes[0].insecure_for_tests, "flags");
    CHECK(r->nodes[0].cert_name == NULL, "no certname");
    CHECK_STR(r->nodes[1].name, "900b");
    CHECK_STR(r->nodes[1].host_name, "derp2.example.com");
    CHECK_STR(r->nodes[1].ipv4, "198.51.100.12");

    r = tc_derp_map_region(&s.map, 901);
    CHECK(r != NULL && r->n_nodes == 1, "region 901");
    CHECK_STR(r->region_code, "vps");
    CHECK_STR(r->nodes[0].host_name, "203.0.113.40");
    CHECK_STR(r->nodes[0].ipv4, "203.0.113.40");
    CHECK_STR(r->nodes[0].ipv6, "none");
    CHECK_STR(r->nodes[0].cert_name,
              "sha256-raw:5d41402abc4b2a76b9719d911017c592a2b0e7e39b0e2c4c2e4e4b8e3f6a7d10");
    CHECK(!r->nodes[0].can_port80, "canport80 absent");

    r = tc_derp_map_region(&s.map, 902);
    CHECK(r != NULL && r->n_nodes == 1, "region 902");
    CHECK_STR(r->region_name, "Home line");
    CHECK_STR(r->nodes[0].host_name, "relay.home.example.net");
    CHECK(r->nodes[0].ipv4 == NULL && r->nodes[0].ipv6 == NULL, "home line resolves its name");
    CHECK_INT(r->nodes[0].derp_port, 8443);
    /* Lines point at what the admin wrote. */
    CHECK(s.region_lines[0] > 0 && s.node_lines[0][1] > s.node_lines[0][0], "lines %d %d %d",
          s.region_lines[0], s.node_lines[0][0], s.node_lines[0][1]);
    hw_derpmap_source_clear(&s);
    hw_derpmap_diags_free(&d);
}

static const char every_field_yaml[] =
    "regions:\n"
    "  1: null\n"
    "  910:\n"
    "    regionid: 910\n"
    "    regioncode: lab\n"
    "    regionname: \"Lab: test relays\"\n"
    "    latitude: 52.52\n"
    "    longitude: -13.4\n"
    "    avoid: false\n"
    "    nomeasurenohome: yes\n"
    "    nodes:\n"
    "      - name: 910a\n"
    "        hostname: 127.0.0.1\n"
    "        ipv4: 127.0.0.1\n"
    "        ipv6: none\n"
    "        stunport: -1\n"
    "        derpport: 0\n"
    "        stunonly: false\n"
    "        insecurefortests: true\n"
    "        stuntestip: 127.0.0.2\n"
    "        canport80: off\n"
    "        certname: Relay.Example.COM\n";

static void every_field_and_null_region(void)
{
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d;
    int rc = parse_yaml(every_field_yaml, &s, &d);
    CHECK(rc == 0 && d.n_errors == 0, "%s", all_diags(&d));
    /* insecurefortests gets a warning, and only that. */
    CHECK_INT(d.n, 1);
    CHECK_INT(d.items[0].line, 19);
    CHECK(strstr(d.items[0].message, "insecurefortests: certificate checks are off") != NULL, "%s",
          d.items[0].message);
    CHECK_INT(s.n_removed, 1);
    CHECK_INT(s.removed[0], 1);
    CHECK_INT(s.map.n_regions, 1);
    const struct tc_derp_region *r = &s.map.regions[0];
    CHECK_INT(r->region_id, 910);
    CHECK_STR(r->region_name, "Lab: test relays");
    CHECK(r->latitude == 52.52 && r->longitude == -13.4, "coordinates");
    CHECK(!r->avoid && r->no_measure_no_home, "region flags");
    const struct tc_derp_node *n = &r->nodes[0];
    CHECK_INT(n->region_id, 910); /* from the region when the node does not say */
    CHECK_INT(n->stun_port, -1);
    CHECK_INT(n->derp_port, 0);
    CHECK(n->insecure_for_tests && !n->can_port80 && !n->stun_only, "node flags");
    CHECK_STR(n->stun_test_ip, "127.0.0.2");
    CHECK_STR(n->cert_name, "Relay.Example.COM");
    CHECK_INT(s.region_lines[0], 3);
    CHECK_INT(s.node_lines[0][0], 12);
    hw_derpmap_source_clear(&s);
    hw_derpmap_diags_free(&d);
}

static void merge_keys_and_empty_files(void)
{
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d;
    int rc = parse_yaml("regions:\n"
                        "  900:\n"
                        "    regioncode: a\n"
                        "    regionname: A\n"
                        "    nodes:\n"
                        "      - &base {name: 900a, hostname: a.example.com, derpport: 8443}\n"
                        "      - <<: *base\n"
                        "        name: 900b\n",
                        &s, &d);
    CHECK(rc == 0 && d.n == 0, "%s", all_diags(&d));
    CHECK_STR(s.map.regions[0].nodes[1].name, "900b");
    CHECK_STR(s.map.regions[0].nodes[1].host_name, "a.example.com");
    CHECK_INT(s.map.regions[0].nodes[1].derp_port, 8443);
    hw_derpmap_source_clear(&s);
    hw_derpmap_diags_free(&d);

    /* An empty file or an empty regions map is valid but worth a word. */
    const char *empties[] = {"", "regions:\n", "regions: {}\n", "# nothing\n"};
    for (size_t i = 0; i < HW_ARRAY_LEN(empties); i++) {
        rc = parse_yaml(empties[i], &s, &d);
        CHECK(rc == 0 && d.n_errors == 0 && s.map.n_regions == 0, "case %zu: %s", i, all_diags(&d));
        CHECK(find_diag(&d, "no regions") != NULL, "case %zu: %s", i, all_diags(&d));
        hw_derpmap_source_clear(&s);
        hw_derpmap_diags_free(&d);
    }
}

/* Line 1..10 of a valid file; each case swaps one line (or appends) to break it. */
static const char *const base_lines[] = {
    "regions:",                   /* 1 */
    "  900:",                     /* 2 */
    "    regionid: 900",          /* 3 */
    "    regioncode: fra",        /* 4 */
    "    regionname: Frankfurt",  /* 5 */
    "    nodes:",                 /* 6 */
    "      - name: 900a",         /* 7 */
    "        regionid: 900",      /* 8 */
    "        hostname: derp1.example.com", /* 9 */
    "        derpport: 443",      /* 10 */
};

struct bad_case {
    int replace_line;    /* 0: none */
    const char *replacement; /* NULL with replace_line: delete the line */
    const char *append;  /* text after the base (lines 11...) */
    const char *want;    /* "LINE: message" of the first error */
};

static const struct bad_case bad_cases[] = {
    {10, "        derpport: abc", NULL,
     "10: regions.900.nodes[0].derpport: expected a port number (0 means 443), got \"abc\""},
    {10, "        derpport: 70000", NULL,
     "10: regions.900.nodes[0].derpport: expected a port number (0 means 443), got \"70000\""},
    {10, "        derpport: -1", NULL,
     "10: regions.900.nodes[0].derpport: expected a port number (0 means 443), got \"-1\""},
    {10, "        derpport: \"443\"", NULL,
     "10: regions.900.nodes[0].derpport: expected a port number (0 means 443), got \"443\""},
    {10, "        stunport: -2", NULL,
     "10: regions.900.nodes[0].stunport: expected a port number (0 means 3478, -1 no STUN), got "
     "\"-2\""},
    {10, "        stunport: [3478]", NULL,
     "10: regions.900.nodes[0].stunport: expected a port number (0 means 3478, -1 no STUN), got a "
     "list"},
    {2, "  0:", NULL, "2: regions.0: expected a region id from 1 to 65535 as the key"},
    {2, "  70000:", NULL, "2: regions.70000: expected a region id from 1 to 65535 as the key"},
    {2, "  fra:", NULL, "2: regions.fra: expected a region id from 1 to 65535 as the key"},
    {3, "    regionid: 901", NULL, "3: regions.900.regionid: 901 does not match the region's key 900"},
    {3, "    regionid: 0", NULL,
     "3: regions.900.regionid: expected a region id from 1 to 65535, got \"0\""},
    {8, "        regionid: 901", NULL,
     "8: regions.900.nodes[0].regionid: 901 is not the id of the region the node is listed in (900)"},
    {9, NULL, NULL,
     "7: regions.900.nodes[0]: missing hostname (the DNS name or IP address clients dial)"},
    {9, "        hostname: \"\"", NULL,
     "7: regions.900.nodes[0]: missing hostname (the DNS name or IP address clients dial)"},
    {9, "        hostname: https://derp1.example.com", NULL,
     "9: regions.900.nodes[0].hostname: \"https://derp1.example.com\" is a URL; give only the host "
     "name (like derp1.example.com)"},
    {9, "        hostname: derp1.example.com:443", NULL,
     "9: regions.900.nodes[0].hostname: \"derp1.example.com:443\" has a port; give only the host "
     "name, and the port in derpport"},
    {9, "        hostname: derp1 example com", NULL,
     "9: regions.900.nodes[0].hostname: \"derp1 example com\" is not a DNS name (like "
     "derp1.example.com) or an IP address"},
    {7, "      - name: \"\"", NULL,
     "7: regions.900.nodes[0]: missing name (unique across the map, like \"900a\")"},
    {0, NULL, "        ipv4: 2001:db8::1\n",
     "11: regions.900.nodes[0].ipv4: expected an IPv4 address (like 198.51.100.1) or \"none\", got "
     "\"2001:db8::1\""},
    {0, NULL, "        ipv4: 198.51.100.300\n",
     "11: regions.900.nodes[0].ipv4: expected an IPv4 address (like 198.51.100.1) or \"none\", got "
     "\"198.51.100.300\""},
    {0, NULL, "        ipv6: 198.51.100.1\n",
     "11: regions.900.nodes[0].ipv6: expected an IPv6 address (like 2001:db8::1) or \"none\", got "
     "\"198.51.100.1\""},
    {0, NULL, "        certname: sha256-raw:abc\n",
     "11: regions.900.nodes[0].certname: expected \"sha256-raw:\" and 64 hex digits (the SHA-256 of "
     "the DER certificate), got \"sha256-raw:abc\""},
    {0, NULL,
     "        certname: sha256-raw:5D41402ABC4B2A76B9719D911017C592A2B0E7E39B0E2C4C2E4E4B8E3F6A7D10\n",
     "11: regions.900.nodes[0].certname: the hex digits after \"sha256-raw:\" must be lower case "
     "(clients compare the text), got "
     "\"sha256-raw:5D41402ABC4B2A76B9719D911017C592A2B0E7E39B0E2C4C2E4E4B8E3F6A7D10\""},
    {0, NULL, "        certname: \"*bad name*\"\n",
     "11: regions.900.nodes[0].certname: expected the name on the certificate (like "
     "derp1.example.com), or \"sha256-raw:\" and 64 lower-case hex digits, got \"*bad name*\""},
    {0, NULL, "        stunonly: maybe\n",
     "11: regions.900.nodes[0].stunonly: expected true or false, got \"maybe\""},
    {0, NULL, "        stunonly: true\n        stunport: -1\n",
     "12: regions.900.nodes[0].stunport: -1 turns STUN off, but stunonly is true: the node would do "
     "nothing"},
    {0, NULL, "        hostname: derp9.example.com\n",
     "11: regions.900.nodes[0].hostname: set twice (first at line 9)"},
    {0, NULL, "        stuntestip: localhost\n",
     "11: regions.900.nodes[0].stuntestip: expected an IP address, got \"localhost\""},
    {0, NULL, "      - 900b\n", "11: regions.900.nodes[1]: expected a node (name, hostname, ...), got \"900b\""},
    {0, NULL, "      - name: 900a\n        hostname: derp2.example.com\n",
     "11: regions.900.nodes[1].name: \"900a\" is already the name of regions.900.nodes[0] (line 7); "
     "node names are unique across the map"},
    {0, NULL,
     "  901:\n    regioncode: b\n    nodes:\n      - name: 900a\n        hostname: b.example.com\n",
     "14: regions.901.nodes[0].name: \"900a\" is already the name of regions.900.nodes[0] (line 7); "
     "node names are unique across the map"},
    {0, NULL, "  900:\n    regioncode: again\n", "11: regions.900: set twice (first at line 2)"},
    {0, NULL, "  901:\n    regioncode: b\n    nodes: []\n",
     "13: regions.901.nodes: a region needs at least one node"},
    {0, NULL, "  901:\n    regioncode: b\n", "11: regions.901: missing nodes (the relays of the region)"},
    {0, NULL, "  901: [1]\n",
     "11: regions.901: expected a region (regionid, regioncode, regionname, nodes) or null to remove "
     "the region, got a list"},
    {0, NULL, "  901:\n    latitude: 100\n    nodes: [{name: x, hostname: x.example.com}]\n",
     "12: regions.901.latitude: expected a number from -90 to 90, got \"100\""},
    {4, "    regioncode: [fra]", NULL,
     "4: regions.900.regioncode: expected a short code like \"fra\", got a list"},
    {0, NULL, "        certname: \"x\\0y\"\n",
     "11: regions.900.nodes[0].certname: the value contains a NUL character"},
    {0, NULL, "      - name: \"unterminated\n", "12: not valid YAML: found unexpected end of stream (while "
     "scanning a quoted scalar)"},
    {1, "- regions", NULL, "1: the file: expected a mapping with a \"regions\" key, got a list"},
    {1, "regions: [900]", NULL, "1: regions: expected a mapping of region id to region, got a list"},
};

static char *build_case(const struct bad_case *c)
{
    char *out = hw_strdup("");
    for (size_t i = 0; i < HW_ARRAY_LEN(base_lines); i++) {
        const char *line = base_lines[i];
        if ((int)i + 1 == c->replace_line)
            line = c->replacement;
        if (c->replace_line == 1 && line)
            i = HW_ARRAY_LEN(base_lines); /* a new first line replaces the whole file */
        if (!line)
            continue;
        char *next = hw_sprintf("%s%s\n", out, line);
        free(out);
        out = next;
    }
    if (c->append) {
        char *next = hw_sprintf("%s%s", out, c->append);
        free(out);
        out = next;
    }
    return out;
}

static void every_check_names_its_line(void)
{
    for (size_t i = 0; i < HW_ARRAY_LEN(bad_cases); i++) {
        char *text = build_case(&bad_cases[i]);
        struct hw_derpmap_source s;
        struct hw_derpmap_diags d;
        int rc = parse_yaml(text, &s, &d);
        char got[512];
        first_error(&d, got, sizeof got);
        int ok = rc == -1 && s.map.n_regions == 0 && !strcmp(got, bad_cases[i].want);
        hw_derpmap_source_clear(&s);
        hw_derpmap_diags_free(&d);
        free(text);
        CHECK(ok, "case %zu: got [%s] want [%s]", i, got, bad_cases[i].want);
    }
}

static void all_errors_are_collected_and_printed(void)
{
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d;
    int rc = parse_yaml("regions:\n"
                        "  900:\n"
                        "    nodes:\n"
                        "      - name: 900a\n"
                        "        hostname: derp1.example.com\n"
                        "        derpport: x\n"
                        "        HostName: y\n"
                        "        hostnme: z\n"
                        "      - name: 900b\n"
                        "        ipv4: nope\n"
                        "homeparams:\n"
                        "  regionscore: {900: 0.5}\n",
                        &s, &d);
    CHECK_INT(rc, -1);
    CHECK_INT(d.n_errors, 3); /* derpport, ipv4, missing hostname of 900b */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    hw_derpmap_diags_print(&d, f);
    fclose(f);
    const char *want =
        "t.yaml:6: error: regions.900.nodes[0].derpport: expected a port number (0 means 443), got \"x\"\n"
        "t.yaml:7: warning: regions.900.nodes[0].HostName: unknown key, ignored (keys are lower case: "
        "hostname)\n"
        "t.yaml:8: warning: regions.900.nodes[0].hostnme: unknown key, ignored\n"
        "t.yaml:10: error: regions.900.nodes[1].ipv4: expected an IPv4 address (like 198.51.100.1) or "
        "\"none\", got \"nope\"\n"
        "t.yaml:9: error: regions.900.nodes[1]: missing hostname (the DNS name or IP address clients "
        "dial)\n"
        "t.yaml:11: warning: homeparams: ignored: only regions are merged into the map clients get (as "
        "in Headscale)\n";
    int same = buf && !strcmp(buf, want);
    CHECK(same, "got [%s] want [%s]", buf ? buf : "", want);
    free(buf);
    hw_derpmap_source_clear(&s);
    hw_derpmap_diags_free(&d);
}

static void unreadable_and_oversized_files(void)
{
    struct tmpdir t;
    CHECK(tmpdir_make(&t, "derpmap") == 0, "tmpdir");
    char path[300];
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d = {0};
    int rc = hw_derpmap_load_file(tmpdir_file(&t, "missing.yaml", path, sizeof path), &s, &d);
    int ok1 = rc == -1 && d.n_errors == 1 && d.items[0].line == 0 &&
              strstr(d.items[0].message, "cannot open: No such file") != NULL &&
              !strcmp(d.items[0].source, path);
    hw_derpmap_diags_free(&d);

    tmpdir_file(&t, "big.yaml", path, sizeof path);
    FILE *f = fopen(path, "w");
    for (size_t i = 0; f && i < HW_DERPMAP_MAX_BODY / 64 + 1; i++)
        fprintf(f, "# %61s\n", "padding to make the file larger than the limit allows");
    if (f)
        fclose(f);
    rc = hw_derpmap_load_file(path, &s, &d);
    int ok2 = rc == -1 && d.n_errors == 1 && strstr(d.items[0].message, "larger than the") != NULL;
    hw_derpmap_diags_free(&d);
    tmpdir_remove(&t);
    CHECK(ok1, "missing file");
    CHECK(ok2, "oversized file");
}

static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Parses a file of n one-node regions and merges it twice; returns the CPU seconds
 * taken, or -1 when the result is not n regions without a diagnostic. */
static double parse_and_merge(int n)
{
    size_t cap = (size_t)n * 96, len = 0;
    char *text = hw_malloc(cap);
    len += (size_t)snprintf(text + len, cap - len, "regions:\n");
    for (int id = 1; id <= n; id++)
        len += (size_t)snprintf(text + len, cap - len,
                                "  %d: {nodes: [{name: n%d, hostname: h%d.example.com}]}\n", id, id, id);
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d = {0};
    double t0 = cpu_seconds();
    int rc = hw_derpmap_parse_yaml("big.yaml", text, len, &s, &d);
    const struct hw_derpmap_source *srcs[] = {rc == 0 ? &s : NULL, rc == 0 ? &s : NULL};
    const char *names[] = {"big.yaml", "again.yaml"};
    json_t *m = hw_derpmap_merge(srcs, names, 2, NULL, &d);
    double took = cpu_seconds() - t0;
    bool ok = rc == 0 && json_object_size(json_object_get(m, "Regions")) == (size_t)n && d.n == 0;
    json_decref(m);
    free(text);
    if (rc == 0)
        hw_derpmap_source_clear(&s);
    hw_derpmap_diags_free(&d);
    return ok ? took : -1;
}

/* Work stays linear in the size of a file: four times the regions take about four
 * times the CPU (a quadratic step would take sixteen), and "<<" merges that multiply
 * at every level are cut off. CPU time, not wall time, so a loaded machine does not
 * fail the test. */
static void large_files_stay_bounded(void)
{
    double small = parse_and_merge(5000);
    double large = parse_and_merge(20000);
    CHECK(small >= 0 && large >= 0, "parse or merge failed");
    CHECK(large < 30, "20000 regions took %.2f s of CPU", large);
    if (small > 0.01)
        CHECK(large / small < 10, "5000 regions: %.3f s, 20000: %.3f s", small, large);

    struct hw_derpmap_source s;
    struct hw_derpmap_diags d;
    double t0;
    int rc;
    /* Ten aliases per level, eight levels: 10^8 merges unless cut off. */
    char *bomb = hw_strdup("t0: &t0 {hostname: x.example.com}\n");
    for (int level = 1; level <= 8; level++) {
        char *next = hw_sprintf("%st%d: &t%d {<<: [*t%d, *t%d, *t%d, *t%d, *t%d, *t%d, *t%d, *t%d, "
                                "*t%d, *t%d]}\n",
                                bomb, level, level, level - 1, level - 1, level - 1, level - 1,
                                level - 1, level - 1, level - 1, level - 1, level - 1, level - 1);
        free(bomb);
        bomb = next;
    }
    char *full = hw_sprintf("%sregions:\n  900:\n    nodes:\n      - <<: *t8\n        name: 900a\n", bomb);
    free(bomb);
    t0 = cpu_seconds();
    rc = parse_yaml(full, &s, &d);
    double took = cpu_seconds() - t0;
    free(full);
    const struct hw_derpmap_diag *e = find_diag(&d, "\"<<\" merges in one file");
    int cut = rc == -1 && e != NULL;
    hw_derpmap_diags_free(&d);
    CHECK(cut, "merge bomb not refused");
    CHECK(took < 5, "merge bomb took %.2f s of CPU", took);
}

/* ---- the JSON form ---------------------------------------------------------------------- */

static const char upstream_json[] =
    "{\"Regions\":{"
    "\"1\":{\"RegionID\":1,\"RegionCode\":\"nyc\",\"RegionName\":\"New York City\","
    "\"Nodes\":[{\"Name\":\"1f\",\"RegionID\":1,\"HostName\":\"derp1f.tailscale.com\","
    "\"IPv4\":\"199.38.181.104\",\"IPv6\":\"2607:f740:f::bc\",\"CanPort80\":true}]},"
    "\"2\":{\"RegionID\":2,\"RegionCode\":\"sfo\",\"RegionName\":\"San Francisco\","
    "\"Latitude\":37.7,\"Nodes\":[{\"Name\":\"2d\",\"RegionID\":2,\"HostName\":\"derp2d.tailscale.com\","
    "\"IPv4\":\"192.73.252.65\",\"STUNPort\":3478,\"SomethingNew\":1}]},"
    "\"3\":null},"
    "\"omitDefaultRegions\":false}";

static void upstream_json_parses(void)
{
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d = {0};
    int rc = hw_derpmap_parse_json("https://x/derpmap", upstream_json, strlen(upstream_json), &s, &d);
    CHECK(rc == 0 && d.n == 0, "%s", all_diags(&d));
    CHECK_INT(s.map.n_regions, 2);
    CHECK_INT(s.n_removed, 1);
    CHECK_INT(s.removed[0], 3);
    const struct tc_derp_region *r = tc_derp_map_region(&s.map, 1);
    CHECK(r && r->n_nodes == 1, "region 1");
    CHECK_STR(r->nodes[0].host_name, "derp1f.tailscale.com");
    CHECK(r->nodes[0].can_port80, "CanPort80");
    r = tc_derp_map_region(&s.map, 2);
    CHECK(r && r->latitude == 37.7 && r->nodes[0].stun_port == 3478, "region 2");
    hw_derpmap_source_clear(&s);
}

static void upstream_json_checks(void)
{
    static const struct {
        const char *body;
        const char *want;
    } cases[] = {
        {"{\"Regions\":{\"1\":{\"RegionID\":1,\"Nodes\":[{\"Name\":\"1a\",\"HostName\":\"a\","
         "\"IPv4\":\"::1\"}]}}}",
         "DERPMap.Regions[1].Nodes[0].IPv4: expected an IPv4 address or \"none\", got \"::1\""},
        {"{\"Regions\":{\"1\":{\"RegionID\":1,\"Nodes\":[{\"Name\":\"1a\",\"HostName\":\"a\"}]},"
         "\"2\":{\"RegionID\":2,\"Nodes\":[{\"Name\":\"1a\",\"HostName\":\"b\"}]}}}",
         "DERPMap.Regions[2].Nodes[0].Name: \"1a\" is used twice; node names are unique across the map"},
        {"{\"Regions\":{\"70000\":{\"RegionID\":70000,\"Nodes\":[{\"Name\":\"x\",\"HostName\":\"a\"}]}}}",
         "DERPMap.Regions[70000]: region id out of range (1 to 65535)"},
        {"{\"Regions\":{\"1\":{\"RegionID\":1,\"Nodes\":[{\"Name\":\"1a\",\"STUNOnly\":true}]}}}",
         "DERPMap.Regions[1].Nodes[0].HostName: missing"},
        {"{\"Regions\":{\"1\":{\"RegionID\":1,\"Nodes\":[]}}}",
         "DERPMap.Regions[1].Nodes: a region needs at least one node"},
        {"{\"Regions\":{\"1\":{\"RegionID\":1,\"Nodes\":[{\"Name\":\"1a\",\"HostName\":\"a\","
         "\"CertName\":\"sha256-raw:00\"}]}}}",
         "DERPMap.Regions[1].Nodes[0].CertName: expected \"sha256-raw:\" and 64 hex digits (the "
         "SHA-256 of the DER certificate)"},
        {"{\"Regions\":{\"1\":{\"RegionID\":2,\"Nodes\":[]}}}",
         "DERPMap.Regions[1].RegionID: 2 does not match its key"},
        {"{\"Regions\":[]}", "DERPMap.Regions: expected an object"},
        {"<html>Not found</html>", "DERPMap: invalid JSON at line 1 column 1:"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        struct hw_derpmap_source s;
        struct hw_derpmap_diags d = {0};
        int rc = hw_derpmap_parse_json("u", cases[i].body, strlen(cases[i].body), &s, &d);
        int ok = rc == -1 && d.n_errors >= 1 && s.map.n_regions == 0 &&
                 strncmp(d.items[0].message, cases[i].want, strlen(cases[i].want)) == 0;
        char got[512];
        snprintf(got, sizeof got, "%s", d.n ? d.items[0].message : "(nothing)");
        hw_derpmap_diags_free(&d);
        CHECK(ok, "case %zu: got [%s] want [%s]", i, got, cases[i].want);
    }
}

/* ---- the embedded region ---------------------------------------------------------------- */

static void embedded_region_follows_server_url(void)
{
    static const struct {
        const char *url, *stun, *host;
        int derp_port, stun_port;
    } cases[] = {
        {"https://hw.example.com", "0.0.0.0:3478", "hw.example.com", 443, 3478},
        {"http://hw.example.com", "0.0.0.0:3478", "hw.example.com", 80, 3478},
        {"https://hw.example.com:8443/", "127.0.0.1:3479", "hw.example.com", 8443, 3479},
        {"http://[2001:db8::1]:8080", "[::]:3478", "2001:db8::1", 8080, 3478},
        {"http://127.0.0.1:8080", "127.0.0.1:3478", "127.0.0.1", 8080, 3478},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        struct hw_config c;
        bare_config(&c);
        embedded_config(&c, cases[i].url, cases[i].stun);
        if (i == 0) {
            c.derp_server_ipv4 = hw_strdup("198.51.100.1");
            c.derp_server_ipv6 = hw_strdup("2001:db8::1");
        }
        struct tc_derp_map m = {0};
        char err[256] = "";
        int rc = hw_derpmap_add_embedded_region(&c, &m, err, sizeof err);
        hw_config_free(&c);
        CHECK(rc == 0 && m.n_regions == 1 && m.regions[0].n_nodes == 1, "case %zu: %s", i, err);
        const struct tc_derp_region *r = &m.regions[0];
        const struct tc_derp_node *n = &r->nodes[0];
        int ok = r->region_id == 999 && !strcmp(r->region_code, "headwater") &&
                 !strcmp(r->region_name, "Headwater Embedded DERP") && !strcmp(n->name, "999") &&
                 !strcmp(n->host_name, cases[i].host) && n->derp_port == cases[i].derp_port &&
                 n->stun_port == cases[i].stun_port;
        int ips_ok = i == 0 ? (n->ipv4 && !strcmp(n->ipv4, "198.51.100.1") && n->ipv6 &&
                               !strcmp(n->ipv6, "2001:db8::1"))
                            : (n->ipv4 == NULL && n->ipv6 == NULL);
        char got[300];
        snprintf(got, sizeof got, "%s %s:%d stun %d", n->name, n->host_name, n->derp_port, n->stun_port);
        tc_derp_map_clear(&m);
        CHECK(ok && ips_ok, "case %zu: got %s", i, got);
    }
    struct hw_config c;
    bare_config(&c);
    embedded_config(&c, "http://hw.example.com", "0.0.0.0:3478");
    free(c.server_url);
    c.server_url = NULL;
    struct tc_derp_map m = {0};
    char err[256] = "";
    int rc = hw_derpmap_add_embedded_region(&c, &m, err, sizeof err);
    hw_config_free(&c);
    CHECK(rc == -1 && m.n_regions == 0 && strstr(err, "server_url") != NULL, "%s", err);
}

/* ---- merging ---------------------------------------------------------------------------- */

static void merge_order_and_embedded_region(void)
{
    struct hw_derpmap_source a, b, c;
    struct hw_derpmap_diags d = {0};
    /* A derp.urls source: 1, 2, 900. */
    const char *url_body =
        "{\"Regions\":{"
        "\"1\":{\"RegionID\":1,\"RegionCode\":\"nyc\",\"RegionName\":\"NYC\",\"Nodes\":[{\"Name\":\"1a\","
        "\"RegionID\":1,\"HostName\":\"derp1.example.net\"}]},"
        "\"2\":{\"RegionID\":2,\"RegionCode\":\"sfo\",\"RegionName\":\"SFO\",\"Nodes\":[{\"Name\":\"2a\","
        "\"RegionID\":2,\"HostName\":\"derp2.example.net\"}]},"
        "\"900\":{\"RegionID\":900,\"RegionCode\":\"old\",\"RegionName\":\"Old\",\"Nodes\":[{\"Name\":"
        "\"900x\",\"RegionID\":900,\"HostName\":\"old.example.net\"}]}}}";
    CHECK(hw_derpmap_parse_json("https://maps.example/a", url_body, strlen(url_body), &a, &d) == 0, "%s",
          all_diags(&d));
    /* First derp.paths file: replaces 900, removes 1, adds 901, and a 999 the embedded
     * region will replace. */
    const char *btext = "regions:\n"
                        "  1: null\n"
                        "  900:\n"
                        "    regioncode: fra\n"
                        "    regionname: Frankfurt\n"
                        "    nodes: [{name: 900a, hostname: derp1.example.com}]\n"
                        "  901:\n"
                        "    regioncode: vps\n"
                        "    regionname: VPS\n"
                        "    nodes: [{name: 901a, hostname: 203.0.113.40}]\n"
                        "  999:\n"
                        "    regioncode: mine\n"
                        "    regionname: Mine\n"
                        "    nodes: [{name: 999z, hostname: mine.example.com}]\n";
    CHECK(hw_derpmap_parse_yaml("b.yaml", btext, strlen(btext), &b, &d) == 0, "%s", all_diags(&d));
    /* Second file: replaces 901; its 902 takes the node name "2a" from the URL's region 2,
     * which then has no node left. */
    const char *ctext = "regions:\n"
                        "  901:\n"
                        "    regioncode: vps2\n"
                        "    regionname: VPS 2\n"
                        "    nodes: [{name: 901b, hostname: 203.0.113.41, derpport: 8443}]\n"
                        "  902:\n"
                        "    regioncode: home\n"
                        "    regionname: Home\n"
                        "    nodes: [{name: 2a, hostname: relay.home.example.net}]\n";
    CHECK(hw_derpmap_parse_yaml("c.yaml", ctext, strlen(ctext), &c, &d) == 0, "%s", all_diags(&d));
    hw_derpmap_diags_free(&d);

    struct hw_config cfg;
    bare_config(&cfg);
    embedded_config(&cfg, "https://hw.example.com", "0.0.0.0:3478");
    const struct hw_derpmap_source *srcs[] = {&a, NULL, &b, &c};
    const char *names[] = {"https://maps.example/a", "https://maps.example/broken", "b.yaml", "c.yaml"};
    json_t *m = hw_derpmap_merge(srcs, names, 4, &cfg, &d);
    char *dump = tc_json_dump(m, NULL);
    const json_t *regions = json_object_get(m, "Regions");
    int ok = json_object_size(regions) == 4 && !region_of(m, "1") && !region_of(m, "2") &&
             !strcmp(str_of(node_of(m, "900", 0), "Name"), "900a") &&
             !strcmp(str_of(node_of(m, "901", 0), "Name"), "901b") &&
             int_of(node_of(m, "901", 0), "DERPPort") == 8443 &&
             !strcmp(str_of(node_of(m, "902", 0), "Name"), "2a") &&
             !strcmp(str_of(region_of(m, "999"), "RegionCode"), "headwater") &&
             !strcmp(str_of(node_of(m, "999", 0), "HostName"), "hw.example.com");
    /* Go's map-key order: keys sorted as strings. */
    const char *keys[4];
    size_t ki = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)regions, k, v) if (ki < 4) keys[ki++] = k;
    int order_ok = ki == 4 && !strcmp(keys[0], "900") && !strcmp(keys[1], "901") &&
                   !strcmp(keys[2], "902") && !strcmp(keys[3], "999");
    const struct hw_derpmap_diag *w1 = find_diag(&d, "region 999 is replaced by the embedded relay");
    const struct hw_derpmap_diag *w2 = find_diag(&d, "node \"2a\" left out: region 902 of c.yaml");
    const struct hw_derpmap_diag *w3 = find_diag(&d, "region 2 left out");
    int warn_ok = d.n_errors == 0 && w1 && !strcmp(w1->source, "b.yaml") && w1->line == 11 && w2 &&
                  !strcmp(w2->source, "https://maps.example/a") && w3;
    char diag_text[4096];
    snprintf(diag_text, sizeof diag_text, "%s", all_diags(&d));
    json_decref(m);
    hw_derpmap_diags_free(&d);
    hw_config_free(&cfg);
    hw_derpmap_source_clear(&a);
    hw_derpmap_source_clear(&b);
    hw_derpmap_source_clear(&c);
    CHECK(ok, "%s", dump);
    CHECK(order_ok, "%s", dump);
    CHECK(warn_ok, "%s", diag_text);
    free(dump);
}

/* The bytes a client decodes: region keys as decimal strings, Go's field names and
 * omissions (PROTOCOL.md §5.5). */
static void clients_get_the_documented_json(void)
{
    struct hw_derpmap_source s;
    struct hw_derpmap_diags d = {0};
    CHECK(hw_derpmap_load_file("derp-example.yaml", &s, &d) == 0, "%s", all_diags(&d));
    struct hw_config cfg;
    bare_config(&cfg);
    embedded_config(&cfg, "https://hw.example.com", "0.0.0.0:3478");
    cfg.derp_server_ipv4 = hw_strdup("198.51.100.1");
    const struct hw_derpmap_source *srcs[] = {&s};
    const char *names[] = {"derp-example.yaml"};
    json_t *m = hw_derpmap_merge(srcs, names, 1, &cfg, &d);
    char *got = tc_json_dump(m, NULL);
    json_decref(m);
    hw_config_free(&cfg);
    hw_derpmap_source_clear(&s);
    hw_derpmap_diags_free(&d);
    const char *want =
        "{\"Regions\":{"
        "\"900\":{\"RegionID\":900,\"RegionCode\":\"fra\",\"RegionName\":\"Frankfurt\",\"Nodes\":["
        "{\"Name\":\"900a\",\"RegionID\":900,\"HostName\":\"derp1.example.com\",\"IPv4\":\"198.51.100.11\","
        "\"IPv6\":\"2001:db8:900::11\",\"STUNPort\":3478,\"DERPPort\":443,\"CanPort80\":true},"
        "{\"Name\":\"900b\",\"RegionID\":900,\"HostName\":\"derp2.example.com\",\"IPv4\":\"198.51.100.12\","
        "\"IPv6\":\"2001:db8:900::12\",\"STUNPort\":3478,\"DERPPort\":443,\"CanPort80\":true}]},"
        "\"901\":{\"RegionID\":901,\"RegionCode\":\"vps\",\"RegionName\":\"Budget VPS\",\"Nodes\":["
        "{\"Name\":\"901a\",\"RegionID\":901,\"HostName\":\"203.0.113.40\",\"CertName\":"
        "\"sha256-raw:5d41402abc4b2a76b9719d911017c592a2b0e7e39b0e2c4c2e4e4b8e3f6a7d10\",\"IPv4\":"
        "\"203.0.113.40\",\"IPv6\":\"none\",\"STUNPort\":3478,\"DERPPort\":443}]},"
        "\"902\":{\"RegionID\":902,\"RegionCode\":\"home\",\"RegionName\":\"Home line\",\"Nodes\":["
        "{\"Name\":\"902a\",\"RegionID\":902,\"HostName\":\"relay.home.example.net\",\"STUNPort\":3478,"
        "\"DERPPort\":8443}]},"
        "\"999\":{\"RegionID\":999,\"RegionCode\":\"headwater\",\"RegionName\":\"Headwater Embedded DERP\","
        "\"Nodes\":[{\"Name\":\"999\",\"RegionID\":999,\"HostName\":\"hw.example.com\",\"IPv4\":"
        "\"198.51.100.1\",\"STUNPort\":3478,\"DERPPort\":443}]}}}";
    int same = !strcmp(got, want);
    CHECK(same, "got [%s] want [%s]", got, want);

    /* The client-side decoder takes it back unchanged. */
    json_t *again = json_loads(got, 0, NULL);
    struct tc_derp_map parsed;
    char err[TC_ERRLEN] = "";
    int prc = tc_derp_map_parse(again, &parsed, err, sizeof err);
    json_t *round = prc == 0 ? tc_derp_map_to_json(&parsed) : NULL;
    int round_ok = round && json_equal(round, again);
    json_decref(round);
    json_decref(again);
    if (prc == 0)
        tc_derp_map_clear(&parsed);
    free(got);
    CHECK(round_ok, "round trip: %s", err);
}

static void check_paths_reports_cross_file_problems(void)
{
    struct tmpdir t;
    CHECK(tmpdir_make(&t, "derpmap") == 0, "tmpdir");
    char pa[300], pb[300], pc[300], pd[300];
    tmpdir_file(&t, "a.yaml", pa, sizeof pa);
    tmpdir_file(&t, "b.yaml", pb, sizeof pb);
    tmpdir_file(&t, "c.yaml", pc, sizeof pc);
    tmpdir_file(&t, "d.yaml", pd, sizeof pd);
    write_text(pa, "regions:\n"
                   "  900:\n"
                   "    regioncode: a\n"
                   "    nodes:\n"
                   "      - name: 900a\n"
                   "        hostname: a.example.com\n");
    write_text(pb, "regions:\n"
                   "  901:\n"
                   "    regioncode: b\n"
                   "    nodes:\n"
                   "      - name: 900a\n"
                   "        hostname: b.example.com\n"
                   "      - name: \"999\"\n"
                   "        hostname: c.example.com\n"
                   "  999:\n"
                   "    regioncode: mine\n"
                   "    nodes: [{name: m, hostname: m.example.com}]\n");
    write_text(pc, "regions:\n  903:\n    nodes: [{name: x, hostname: x.example.com, derpport: huge}]\n");
    struct hw_config cfg;
    bare_config(&cfg);
    embedded_config(&cfg, "https://hw.example.com", "0.0.0.0:3478");
    add_path(&cfg, pa);
    add_path(&cfg, pb);
    add_path(&cfg, pc);
    add_path(&cfg, pd); /* missing */
    struct hw_derpmap_diags d = {0};
    size_t errors = hw_derpmap_check_paths(&cfg, &d);
    const struct hw_derpmap_diag *e1 = find_diag(&d, "node name \"900a\" is also used in region 901");
    const struct hw_derpmap_diag *e2 = find_diag(&d, "node name \"999\" is also used in region 999 of the "
                                                     "embedded relay");
    const struct hw_derpmap_diag *e3 = find_diag(&d, "derpport: expected a port number");
    const struct hw_derpmap_diag *e4 = find_diag(&d, "cannot open");
    const struct hw_derpmap_diag *w1 = find_diag(&d, "region 999 is replaced by the embedded relay");
    int ok = errors == 4 && d.n_errors == 4 && e1 && e1->is_error && !strcmp(e1->source, pa) &&
             e1->line == 5 && e2 && e2->is_error && !strcmp(e2->source, pb) && e2->line == 7 && e3 &&
             !strcmp(e3->source, pc) && e3->line == 3 && e4 && !strcmp(e4->source, pd) && w1 &&
             !w1->is_error && !strcmp(w1->source, pb) && w1->line == 9;
    char text[4096];
    snprintf(text, sizeof text, "%s", all_diags(&d));
    hw_derpmap_diags_free(&d);

    /* The repository's example passes on its own. */
    hw_config_free(&cfg);
    bare_config(&cfg);
    add_path(&cfg, "derp-example.yaml");
    size_t errors2 = hw_derpmap_check_paths(&cfg, &d);
    size_t n2 = d.n;
    hw_derpmap_diags_free(&d);
    hw_config_free(&cfg);
    tmpdir_remove(&t);
    CHECK(ok, "%zu errors: %s", errors, text);
    CHECK(errors2 == 0 && n2 == 0, "example: %zu errors", errors2);
}

/* ---- a tiny HTTP server for derp.urls ----------------------------------------------------- */

enum srv_mode { SRV_OK, SRV_STATUS, SRV_HANG };

struct srv {
    int fd;
    int port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    char *body;           /* answered with 200 in SRV_OK */
    int status;           /* answered in SRV_STATUS */
    enum srv_mode mode;
    int requests;
    int hung[8];
    int n_hung;
};

static void srv_set(struct srv *s, enum srv_mode mode, int status, const char *body)
{
    pthread_mutex_lock(&s->mu);
    s->mode = mode;
    s->status = status;
    free(s->body);
    s->body = hw_strdup(body ? body : "");
    pthread_mutex_unlock(&s->mu);
}

static int srv_requests(struct srv *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->requests;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void *srv_main(void *arg)
{
    struct srv *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            continue;
        /* Read the request head (bounded); the body of a GET is empty. */
        struct timeval tv = {.tv_sec = 2};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[8192];
        size_t len = 0;
        while (len < sizeof req - 1) {
            ssize_t r = read(c, req + len, sizeof req - 1 - len);
            if (r <= 0)
                break;
            len += (size_t)r;
            req[len] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        pthread_mutex_lock(&s->mu);
        s->requests++;
        enum srv_mode mode = s->mode;
        int status = s->status;
        char *body = hw_strdup(s->body ? s->body : "");
        if (mode == SRV_HANG && s->n_hung < (int)HW_ARRAY_LEN(s->hung)) {
            s->hung[s->n_hung++] = c;
            c = -1;
        }
        pthread_mutex_unlock(&s->mu);
        if (c >= 0) {
            int code = mode == SRV_OK ? 200 : status;
            char *head = hw_sprintf("HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                                    "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                                    code, strlen(body));
            write_all(c, head, strlen(head));
            write_all(c, body, strlen(body));
            free(head);
            close(c);
        }
        free(body);
    }
    return NULL;
}

static int srv_start(struct srv *s, const char *body)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->body = hw_strdup(body);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(s->fd, 16) < 0 ||
        getsockname(s->fd, (struct sockaddr *)&a, &al) < 0)
        return -1;
    s->port = ntohs(a.sin_port);
    atomic_init(&s->stop, false);
    return pthread_create(&s->thread, NULL, srv_main, s) == 0 ? 0 : -1;
}

static void srv_stop(struct srv *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    close(s->fd);
    for (int i = 0; i < s->n_hung; i++)
        close(s->hung[i]);
    free(s->body);
    pthread_mutex_destroy(&s->mu);
}

/* ---- the refresher ---------------------------------------------------------------------- */

/* The loop runs on its own thread, as in the server; the test thread talks to it with
 * loop_call(), which also proves that every post queued before it has run (posts run in
 * order). */
struct tloop {
    struct hw_loop *loop;
    pthread_t thread;
};

static void *tloop_main(void *arg)
{
    hw_loop_run(arg);
    return NULL;
}

static void tloop_start(struct tloop *t)
{
    t->loop = hw_loop_new();
    pthread_create(&t->thread, NULL, tloop_main, t->loop);
}

static void tloop_finish(struct tloop *t)
{
    hw_loop_stop(t->loop);
    pthread_join(t->thread, NULL);
    hw_loop_free(t->loop);
}

struct call {
    void (*fn)(void *);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void run_call(struct hw_loop *loop, void *arg)
{
    struct call *c = arg;
    if (c->fn)
        c->fn(c->arg);
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Runs fn(arg) on the loop thread and waits for it. */
static void loop_call(struct tloop *t, void (*fn)(void *), void *arg)
{
    struct call c = {.fn = fn, .arg = arg};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    hw_loop_post(t->loop, run_call, &c);
    pthread_mutex_lock(&c.mu);
    while (!c.done)
        pthread_cond_wait(&c.cv, &c.mu);
    pthread_mutex_unlock(&c.mu);
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv);
}

static void stop_derpmap(void *arg) { hw_derpmap_stop(arg); }

/* Holds the loop thread until released, so posts pile up behind it. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open, entered;
    struct hw_derpmap *stop_then; /* stopped on the loop thread once the gate opens */
};

static void gate_job(struct hw_loop *loop, void *arg)
{
    struct gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    if (g->stop_then)
        hw_derpmap_stop(g->stop_then);
}

static void gate_close(struct tloop *t, struct gate *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    hw_loop_post(t->loop, gate_job, g);
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(struct tloop *t, struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    loop_call(t, NULL, NULL);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

struct watch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    json_t *last;
    pthread_t loop_thread;
    bool wrong_thread;
};

static void watch_init(struct watch *w, struct tloop *t)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->loop_thread = t->thread;
}

static void watch_free(struct watch *w)
{
    json_decref(w->last);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void on_change(json_t *map, void *arg)
{
    struct watch *w = arg;
    pthread_mutex_lock(&w->mu);
    w->calls++;
    if (!pthread_equal(pthread_self(), w->loop_thread))
        w->wrong_thread = true;
    json_decref(w->last);
    w->last = json_incref(map);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Waits up to 5 s for the callback count to reach want; returns the count and, in
 * *last, a reference to the newest map delivered. */
static int wait_calls(struct watch *w, int want, json_t **last)
{
    struct timespec end;
    clock_gettime(CLOCK_REALTIME, &end);
    end.tv_sec += 5;
    pthread_mutex_lock(&w->mu);
    while (w->calls < want && pthread_cond_timedwait(&w->cv, &w->mu, &end) == 0)
        ;
    int n = w->calls;
    if (last)
        *last = w->last ? json_incref(w->last) : NULL;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* Waits (up to 5 s) until the worker has finished round `want`. */
static bool wait_rounds(struct hw_derpmap *d, uint64_t want)
{
    int64_t end = hw_now_ms_mono() + 5000;
    while (hw_derpmap_rounds(d) < want) {
        if (hw_now_ms_mono() > end)
            return false;
        usleep(2000);
    }
    return true;
}

/* A refresh round that changed nothing: it ran, and nothing is queued for the loop. */
static bool quiet_round(struct tloop *t, struct hw_derpmap *d, uint64_t round)
{
    hw_derpmap_refresh(d);
    bool ok = wait_rounds(d, round);
    loop_call(t, NULL, NULL);
    return ok;
}

static char *region_json(int id, const char *node, const char *host)
{
    json_t *n = json_pack("{s:s, s:i, s:s}", "Name", node, "RegionID", id, "HostName", host);
    json_t *r = json_pack("{s:i, s:s, s:s, s:[o]}", "RegionID", id, "RegionCode", "up", "RegionName",
                          "Upstream", "Nodes", n);
    char key[16];
    snprintf(key, sizeof key, "%d", id);
    json_t *m = json_pack("{s:{s:o}}", "Regions", key, r);
    char *s = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    return s;
}

static struct hw_derpmap *start_on(struct tloop *t, struct hw_config *cfg, struct watch *w)
{
    char err[256] = "";
    struct hw_derpmap *d = hw_derpmap_start(cfg, t->loop, on_change, w, err, sizeof err);
    hw_config_free(cfg);
    if (!d)
        fprintf(stderr, "hw_derpmap_start: %s\n", err);
    return d;
}

static void start_with_no_source_gives_an_empty_map(void)
{
    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    json_t *m = d ? hw_derpmap_current(d) : NULL;
    char *dump = m ? tc_json_dump(m, NULL) : hw_strdup("(none)");
    json_decref(m);
    if (d)
        loop_call(&t, stop_derpmap, d);
    tloop_finish(&t);
    int calls = w.calls;
    watch_free(&w);
    int ok = !strcmp(dump, "{\"Regions\":{}}");
    free(dump);
    CHECK(ok, "empty map expected");
    CHECK_INT(calls, 0);
}

static void broken_source_at_start_is_left_out(void)
{
    struct tmpdir td;
    CHECK(tmpdir_make(&td, "derpmap") == 0, "tmpdir");
    char good[300], bad[300];
    write_text(tmpdir_file(&td, "good.yaml", good, sizeof good),
               "regions:\n  900:\n    nodes: [{name: 900a, hostname: a.example.com}]\n");
    write_text(tmpdir_file(&td, "bad.yaml", bad, sizeof bad), "regions:\n  900: [\n");
    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    cfg.derp_auto_update_enabled = false;
    add_path(&cfg, bad);
    add_path(&cfg, good);
    add_url(&cfg, "http://127.0.0.1:1/nothing-listens-here");
    embedded_config(&cfg, "http://127.0.0.1:8080", "127.0.0.1:3478");
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    json_t *m = d ? hw_derpmap_current(d) : NULL;
    int ok = m && json_object_size(json_object_get(m, "Regions")) == 2 && region_of(m, "900") &&
             region_of(m, "999");
    char *dump = m ? tc_json_dump(m, NULL) : hw_strdup("(none)");
    json_decref(m);
    if (d)
        loop_call(&t, stop_derpmap, d);
    tloop_finish(&t);
    watch_free(&w);
    tmpdir_remove(&td);
    CHECK(ok, "%s", dump);
    free(dump);
}

static void url_source_changes_reach_the_loop_once(void)
{
    struct srv s;
    char *v1 = region_json(1, "1a", "derp1.example.net");
    char *v2 = region_json(1, "1a", "derp1-new.example.net");
    CHECK(srv_start(&s, v1) == 0, "server");
    struct tmpdir td;
    CHECK(tmpdir_make(&td, "derpmap") == 0, "tmpdir");
    char file[300];
    write_text(tmpdir_file(&td, "derp.yaml", file, sizeof file),
               "regions:\n  900:\n    regioncode: own\n    nodes: [{name: 900a, hostname: a.example.com}]\n");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/derpmap/default", s.port);

    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    add_url(&cfg, url);
    add_path(&cfg, file);
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    CHECK(d != NULL, "start");
    json_t *m0 = hw_derpmap_current(d);
    int start_ok = srv_requests(&s) == 1 && json_object_size(json_object_get(m0, "Regions")) == 2 &&
                   !strcmp(str_of(node_of(m0, "1", 0), "HostName"), "derp1.example.net") &&
                   region_of(m0, "900");

    /* Nothing changed: a round runs, no callback. */
    bool r1 = quiet_round(&t, d, 1);
    int calls_unchanged = wait_calls(&w, 0, NULL);

    /* The URL serves a new map: one callback, with it; current follows. */
    srv_set(&s, SRV_OK, 0, v2);
    hw_derpmap_refresh(d);
    json_t *last = NULL;
    wait_calls(&w, 1, &last);
    bool r2 = wait_rounds(d, 2);
    loop_call(&t, NULL, NULL);
    int calls_changed = wait_calls(&w, 0, NULL);
    int new_ok = last && !strcmp(str_of(node_of(last, "1", 0), "HostName"), "derp1-new.example.net") &&
                 region_of(last, "900") != NULL;
    json_t *m1 = hw_derpmap_current(d);
    int current_ok = json_equal(m1, last);
    json_decref(last);

    /* The URL breaks three ways: the last good map stays, no callback. */
    srv_set(&s, SRV_STATUS, 500, "oops");
    bool r3 = quiet_round(&t, d, 3);
    srv_set(&s, SRV_OK, 0, "{not json");
    bool r4 = quiet_round(&t, d, 4);
    srv_set(&s, SRV_OK, 0, "{\"Regions\":{\"1\":{\"RegionID\":1,\"Nodes\":[{\"Name\":\"1a\"}]}}}");
    bool r5 = quiet_round(&t, d, 5);
    int calls_broken = wait_calls(&w, 0, NULL);
    json_t *m2 = hw_derpmap_current(d);
    int kept = json_equal(m1, m2);

    /* The file breaks too, then comes back changed: that change is delivered, and the
     * still-broken URL keeps contributing its last good region. */
    write_text(file, "regions:\n  900: {nodes: [\n");
    bool r6 = quiet_round(&t, d, 6);
    int calls_file_broken = wait_calls(&w, 0, NULL);
    write_text(file, "regions:\n  901:\n    nodes: [{name: 901a, hostname: b.example.com}]\n");
    hw_derpmap_refresh(d);
    int calls_final = wait_calls(&w, 2, &last);
    int file_ok = last && region_of(last, "901") && !region_of(last, "900") &&
                  !strcmp(str_of(node_of(last, "1", 0), "HostName"), "derp1-new.example.net");
    json_decref(last);

    int requests = srv_requests(&s);
    loop_call(&t, stop_derpmap, d);
    tloop_finish(&t);
    bool wrong_thread = w.wrong_thread;
    watch_free(&w);
    srv_stop(&s);
    tmpdir_remove(&td);
    json_decref(m0);
    json_decref(m1);
    json_decref(m2);
    free(v1);
    free(v2);
    CHECK(start_ok, "start");
    CHECK(r1 && r2 && r3 && r4 && r5 && r6, "rounds did not complete");
    CHECK_INT(calls_unchanged, 0);
    CHECK_INT(calls_changed, 1);
    CHECK(new_ok && current_ok, "new map delivered and current");
    CHECK_INT(calls_broken, 1);
    CHECK(kept, "last good map kept");
    CHECK_INT(calls_file_broken, 1);
    CHECK_INT(calls_final, 2);
    CHECK(file_ok, "file change delivered");
    CHECK_INT(requests, 8);
    CHECK(!wrong_thread, "callback ran off the loop thread");
}

static void changes_before_the_loop_runs_are_delivered_once(void)
{
    struct srv s;
    char *v1 = region_json(1, "1a", "one.example.net");
    char *v2 = region_json(1, "1a", "two.example.net");
    char *v3 = region_json(1, "1a", "three.example.net");
    CHECK(srv_start(&s, v1) == 0, "server");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    add_url(&cfg, url);
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    CHECK(d != NULL, "start");

    /* The loop is busy while two changes arrive. */
    struct gate g;
    gate_close(&t, &g);
    srv_set(&s, SRV_OK, 0, v2);
    hw_derpmap_refresh(d);
    bool r1 = wait_rounds(d, 1);
    srv_set(&s, SRV_OK, 0, v3);
    hw_derpmap_refresh(d);
    bool r2 = wait_rounds(d, 2);
    /* The map only moves when the loop delivers it. */
    json_t *before = hw_derpmap_current(d);
    int still_old = !strcmp(str_of(node_of(before, "1", 0), "HostName"), "one.example.net");
    json_decref(before);
    gate_open(&t, &g);
    json_t *last = NULL;
    int calls = wait_calls(&w, 1, &last);
    int newest = last && !strcmp(str_of(node_of(last, "1", 0), "HostName"), "three.example.net");
    json_decref(last);

    /* A change still queued when stop runs is dropped: no callback after stop. */
    gate_close(&t, &g);
    g.stop_then = d;
    srv_set(&s, SRV_OK, 0, v1);
    hw_derpmap_refresh(d);
    bool r3 = wait_rounds(d, 3);
    gate_open(&t, &g);
    loop_call(&t, NULL, NULL);
    int calls_after_stop = wait_calls(&w, 0, NULL);
    tloop_finish(&t);
    watch_free(&w);
    srv_stop(&s);
    free(v1);
    free(v2);
    free(v3);
    CHECK(r1 && r2 && r3, "rounds");
    CHECK(still_old, "current moved before delivery");
    CHECK_INT(calls, 1);
    CHECK(newest, "newest map delivered");
    CHECK_INT(calls_after_stop, 1);
}

static void periodic_refresh_picks_up_a_change(void)
{
    struct srv s;
    char *v1 = region_json(5, "5a", "one.example.net");
    char *v2 = region_json(5, "5a", "two.example.net");
    CHECK(srv_start(&s, v1) == 0, "server");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/map.json", s.port);
    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    cfg.derp_update_frequency_ms = 50;
    add_url(&cfg, url);
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    CHECK(d != NULL, "start");
    bool r = wait_rounds(d, 2); /* two periods without a change */
    loop_call(&t, NULL, NULL);
    int calls_before = wait_calls(&w, 0, NULL);
    srv_set(&s, SRV_OK, 0, v2);
    json_t *last = NULL;
    int calls = wait_calls(&w, 1, &last);
    int ok = last && !strcmp(str_of(node_of(last, "5", 0), "HostName"), "two.example.net");
    json_decref(last);
    loop_call(&t, stop_derpmap, d);
    tloop_finish(&t);
    watch_free(&w);
    int requests = srv_requests(&s);
    srv_stop(&s);
    free(v1);
    free(v2);
    CHECK(r, "periodic rounds");
    CHECK_INT(calls_before, 0);
    CHECK_INT(calls, 1);
    CHECK(ok, "new map");
    CHECK(requests >= 4, "requests %d", requests);
}

static void stop_abandons_a_hanging_fetch(void)
{
    struct srv s;
    char *v1 = region_json(1, "1a", "one.example.net");
    CHECK(srv_start(&s, v1) == 0, "server");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    add_url(&cfg, url);
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    CHECK(d != NULL, "start");
    srv_set(&s, SRV_HANG, 0, NULL);
    hw_derpmap_refresh(d);
    int64_t end = hw_now_ms_mono() + 5000;
    while (srv_requests(&s) < 2 && hw_now_ms_mono() < end)
        usleep(2000);
    int64_t t0 = hw_now_ms_mono();
    loop_call(&t, stop_derpmap, d);
    int64_t took = hw_now_ms_mono() - t0;
    tloop_finish(&t);
    int calls = w.calls;
    watch_free(&w);
    srv_stop(&s);
    free(v1);
    CHECK(took < 2000, "stop took %lld ms", (long long)took);
    CHECK_INT(calls, 0);
}

static void oversized_answer_is_refused(void)
{
    size_t big = HW_DERPMAP_MAX_BODY + 1024;
    char *body = hw_malloc(big + 1);
    memset(body, ' ', big);
    body[0] = '{';
    body[big - 1] = '}';
    body[big] = '\0';
    struct srv s;
    int started = srv_start(&s, body);
    free(body);
    CHECK(started == 0, "server");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    struct tloop t;
    tloop_start(&t);
    struct watch w;
    watch_init(&w, &t);
    struct hw_config cfg;
    bare_config(&cfg);
    cfg.derp_auto_update_enabled = false;
    add_url(&cfg, url);
    struct hw_derpmap *d = start_on(&t, &cfg, &w);
    CHECK(d != NULL, "start");
    json_t *m = hw_derpmap_current(d);
    size_t n = json_object_size(json_object_get(m, "Regions"));
    json_decref(m);
    /* Auto-update is off, but an explicit refresh still works. */
    char *v = region_json(7, "7a", "seven.example.net");
    srv_set(&s, SRV_OK, 0, v);
    free(v);
    hw_derpmap_refresh(d);
    json_t *last = NULL;
    int calls = wait_calls(&w, 1, &last);
    int ok = last && region_of(last, "7") != NULL;
    json_decref(last);
    loop_call(&t, stop_derpmap, d);
    tloop_finish(&t);
    watch_free(&w);
    srv_stop(&s);
    CHECK_INT(n, 0);
    CHECK_INT(calls, 1);
    CHECK(ok, "refresh without auto-update");
}

int main(void)
{
    /* The refresher logs every source problem on purpose; keep test output to failures. */
    hw_log_set_level(getenv("HW_TEST_VERBOSE") ? HW_LOG_DEBUG : HW_LOG_ERROR);
    RUN(example_file_parses_with_exact_values);
    RUN(every_field_and_null_region);
    RUN(merge_keys_and_empty_files);
    RUN(every_check_names_its_line);
    RUN(all_errors_are_collected_and_printed);
    RUN(unreadable_and_oversized_files);
    RUN(large_files_stay_bounded);
    RUN(upstream_json_parses);
    RUN(upstream_json_checks);
    RUN(embedded_region_follows_server_url);
    RUN(merge_order_and_embedded_region);
    RUN(clients_get_the_documented_json);
    RUN(check_paths_reports_cross_file_problems);
    RUN(start_with_no_source_gives_an_empty_map);
    RUN(broken_source_at_start_is_left_out);
    RUN(url_source_changes_reach_the_loop_once);
    RUN(changes_before_the_loop_runs_are_delivered_once);
    RUN(periodic_refresh_picks_up_a_change);
    RUN(stop_abandons_a_hanging_fetch);
    RUN(oversized_answer_is_refused);
    return TEST_MAIN_END();
}
