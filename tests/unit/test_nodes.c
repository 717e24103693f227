/* Node lifecycle rules (server/nodes.c) against a real SQLite file. */
#include "tests/unit/tmpdir.h"

#include <arpa/inet.h>

#include "common/util.h"
#include "db/db.h"
#include "server/nodes.h"
#include "tests/unit/testlib.h"

static struct tmpdir dir;

static struct hw_db *fresh_db(void)
{
    tmpdir_remove(&dir);
    if (tmpdir_make(&dir, "nodes") < 0)
        return NULL;
    char path[512], err[512];
    tmpdir_file(&dir, "headwater.sqlite", path, sizeof path);
    struct hw_db *db = hw_db_open(path, err, sizeof err);
    if (!db)
        printf("# open failed: %s\n", err);
    return db;
}

static struct hw_config config(const char *v4, const char *v6, enum hw_alloc_strategy strategy)
{
    struct hw_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.prefix_v4 = (char *)v4;
    cfg.prefix_v6 = (char *)v6;
    cfg.allocation = strategy;
    return cfg;
}

static int next_key = 1;

/* Stores a node holding the given addresses, as registration would. */
static int store_node(struct hw_db *db, int64_t namespace_id, const char *v4, const char *v6,
                      int64_t *id_out)
{
    struct hw_node n;
    memset(&n, 0, sizeof n);
    int k = next_key++;
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:%064d", k);
    snprintf(n.node_key, sizeof n.node_key, "nodekey:%064d", k);
    snprintf(n.given_name, sizeof n.given_name, "n%d", k);
    snprintf(n.ipv4, sizeof n.ipv4, "%s", v4 ? v4 : "");
    snprintf(n.ipv6, sizeof n.ipv6, "%s", v6 ? v6 : "");
    n.namespace_id = namespace_id;
    int rc = hw_db_node_insert(db, &n);
    if (id_out)
        *id_out = n.id;
    return rc;
}

/* Allocates with cfg and stores a node with the result. */
static int alloc_and_store(struct hw_db *db, const struct hw_config *cfg, int64_t ns,
                           char v4[HW_IP_TEXT_MAX], char v6[HW_IP_TEXT_MAX], char *err, size_t err_len)
{
    if (hw_ipalloc_pick(db, cfg, v4, v6, err, err_len) < 0)
        return -1;
    int rc = store_node(db, ns, v4, v6, NULL);
    if (rc != HW_DB_OK)
        snprintf(err, err_len, "store: %s", hw_db_errmsg(db));
    return rc == HW_DB_OK ? 0 : -1;
}

/* ---- prefixes ---- */

static void prefix_canonical_forms(void)
{
    char out[HW_PREFIX_TEXT_MAX], err[256];
    CHECK(hw_prefix_canonical("192.168.1.77/24", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "192.168.1.0/24");
    CHECK(hw_prefix_canonical("10.1.2.3/8", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "10.0.0.0/8");
    CHECK(hw_prefix_canonical("10.1.2.3/32", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "10.1.2.3/32");
    CHECK(hw_prefix_canonical("0.0.0.0/0", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "0.0.0.0/0");
    CHECK(hw_prefix_canonical("1.2.3.4/0", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "0.0.0.0/0");
    CHECK(hw_prefix_canonical("::/0", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "::/0");
    CHECK(hw_prefix_canonical("FD00:0:0:0::1/64", out, err, sizeof err) == 0, "%s", err);
    CHECK_STR(out, "fd00::/64");
    CHECK(hw_prefix_canonical("fd7a:115c:a1e0:ab12:4843:cd96:626b:430b/52", out, err, sizeof err) == 0,
          "%s", err);
    CHECK_STR(out, "fd7a:115c:a1e0:a000::/52");

    CHECK(hw_prefix_canonical("10.0.0.0", out, err, sizeof err) < 0, "no length");
    CHECK_STR(err, "prefix \"10.0.0.0\" has no /length (e.g. 192.168.1.0/24)");
    CHECK(hw_prefix_canonical("10.0.0.0/33", out, err, sizeof err) < 0, "too long");
    CHECK_STR(err, "prefix \"10.0.0.0/33\": length must be a number from 0 to 32");
    CHECK(hw_prefix_canonical("fd00::/129", out, err, sizeof err) < 0, "too long v6");
    CHECK(hw_prefix_canonical("router/24", out, err, sizeof err) < 0, "not an address");
    CHECK_STR(err, "prefix \"router/24\": \"router\" is not an IPv4 or IPv6 address");
    CHECK(hw_prefix_canonical("10.0.0.0/8x", out, err, sizeof err) < 0, "junk after length");
    CHECK(hw_prefix_canonical("10.0.0.0/-1", out, err, sizeof err) < 0, "negative");
    CHECK(hw_prefix_canonical("10.0.0.0/ 8", out, err, sizeof err) < 0, "space");
    CHECK(hw_prefix_canonical("10.0.0.0/08", out, err, sizeof err) < 0, "leading zero");
    CHECK(hw_prefix_canonical("10.0.0/8", out, err, sizeof err) < 0, "short address");
    CHECK(hw_prefix_canonical("", out, err, sizeof err) < 0, "empty");
    CHECK(hw_prefix_canonical(NULL, out, err, sizeof err) < 0, "null");
}

/* ---- allocation ---- */

static void sequential_until_full(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    struct hw_config cfg = config("100.64.0.0/30", "fd7a:115c:a1e0::/126", HW_ALLOC_SEQUENTIAL);
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256];

    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.0.1");
    CHECK_STR(v6, "fd7a:115c:a1e0::1");
    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.0.2");
    CHECK_STR(v6, "fd7a:115c:a1e0::2");
    /* .3 is the IPv4 broadcast address: the /30 is full. */
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "v4 full");
    CHECK_STR(err, "IPv4 prefix 100.64.0.0/30 is full: widen prefixes.v4 in the configuration or "
                   "delete unused nodes");
    CHECK_STR(v4, "");

    /* IPv6 has no broadcast: ::3 is a host, then the /126 is full. */
    struct hw_config v6only = config(NULL, "fd7a:115c:a1e0::/126", HW_ALLOC_SEQUENTIAL);
    CHECK(alloc_and_store(db, &v6only, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "");
    CHECK_STR(v6, "fd7a:115c:a1e0::3");
    CHECK(hw_ipalloc_pick(db, &v6only, v4, v6, err, sizeof err) < 0, "v6 full");
    CHECK_STR(err, "IPv6 prefix fd7a:115c:a1e0::/126 is full: widen prefixes.v6 in the configuration or "
                   "delete unused nodes");
    hw_db_close(db);
}

static void sequential_reuses_freed_addresses(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    struct hw_config cfg = config("100.64.0.0/24", NULL, HW_ALLOC_SEQUENTIAL);
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256];
    int64_t ids[6];
    for (int i = 1; i <= 5; i++) {
        CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) == 0, "%s", err);
        CHECK_INT(store_node(db, ns.id, v4, NULL, &ids[i]), HW_DB_OK);
    }
    CHECK_STR(v4, "100.64.0.5");
    CHECK_INT(hw_db_node_delete(db, ids[2]), HW_DB_OK);
    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.0.2");
    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.0.6");
    /* An address taken by hand (not through the allocator) is skipped too. */
    CHECK_INT(store_node(db, ns.id, "100.64.0.7", NULL, NULL), HW_DB_OK);
    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.0.8");
    hw_db_close(db);
}

static void sequential_skips_tailscale_reserved(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256], addr[HW_IP_TEXT_MAX];

    /* 100.100.100.97..99 held, .100 is Quad100. */
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    for (int i = 97; i <= 99; i++) {
        snprintf(addr, sizeof addr, "100.100.100.%d", i);
        CHECK_INT(store_node(db, ns.id, addr, NULL, NULL), HW_DB_OK);
    }
    /* The ChromeOS range 100.115.92.0/23 is skipped as a block: hold what lies below it. */
    for (int i = 1; i < 4 * 256; i++) {
        snprintf(addr, sizeof addr, "100.115.%d.%d", 88 + i / 256, i % 256);
        CHECK_INT(store_node(db, ns.id, addr, NULL, NULL), HW_DB_OK);
    }
    /* fd7a:115c:a1e0::53 is Quad100 over IPv6. */
    for (int i = 1; i < 0x53; i++) {
        snprintf(addr, sizeof addr, "fd7a:115c:a1e0::%x", i);
        CHECK_INT(store_node(db, ns.id, NULL, addr, NULL), HW_DB_OK);
    }
    CHECK_INT(hw_db_commit(db), HW_DB_OK);

    struct hw_config cfg = config("100.100.100.96/28", NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.100.100.101");
    cfg = config("100.115.88.0/21", NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.115.94.0");
    cfg = config(NULL, "fd7a:115c:a1e0::/120", HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v6, "fd7a:115c:a1e0::54");
    /* A prefix that is all reserved is full from the start. */
    cfg = config("100.115.92.0/23", NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "all reserved");
    CHECK(strstr(err, "100.115.92.0/23 is full") != NULL, "%s", err);
    hw_db_close(db);
}

static void random_until_full(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    /* /29 around Quad100: hosts .97-.102 without .100 leave five. */
    struct hw_config cfg = config("100.100.100.96/29", "fd7a:115c:a1e0::/125", HW_ALLOC_RANDOM);
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256];
    bool seen4[8] = {false}, seen6[8] = {false};
    for (int i = 0; i < 5; i++) {
        CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%d: %s", i, err);
        unsigned char b[16];
        CHECK(inet_pton(AF_INET, v4, b) == 1, "%s", v4);
        CHECK(b[3] >= 97 && b[3] <= 102 && b[3] != 100, "%s", v4);
        CHECK(!seen4[b[3] - 96], "twice: %s", v4);
        seen4[b[3] - 96] = true;
        CHECK(inet_pton(AF_INET6, v6, b) == 1, "%s", v6);
        CHECK(b[15] >= 1 && b[15] <= 7, "%s", v6);
        CHECK(!seen6[b[15]], "twice: %s", v6);
        seen6[b[15]] = true;
    }
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "full");
    CHECK_STR(err, "IPv4 prefix 100.100.100.96/29 is full: widen prefixes.v4 in the configuration or "
                   "delete unused nodes");
    struct hw_config v6only = config(NULL, "fd7a:115c:a1e0::/125", HW_ALLOC_RANDOM);
    CHECK(alloc_and_store(db, &v6only, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK(alloc_and_store(db, &v6only, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK(hw_ipalloc_pick(db, &v6only, v4, v6, err, sizeof err) < 0, "v6 full");

    struct hw_config tiny = config("100.64.0.0/30", "fd7a:115c:a1e0:1::/126", HW_ALLOC_RANDOM);
    char first[HW_IP_TEXT_MAX];
    CHECK(alloc_and_store(db, &tiny, ns.id, first, v6, err, sizeof err) == 0, "%s", err);
    CHECK(alloc_and_store(db, &tiny, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK(strcmp(first, v4) != 0, "both hosts: %s %s", first, v4);
    CHECK(strcmp(v4, "100.64.0.1") == 0 || strcmp(v4, "100.64.0.2") == 0, "%s", v4);
    CHECK(hw_ipalloc_pick(db, &tiny, v4, v6, err, sizeof err) < 0, "/30 full");
    CHECK_STR(err, "IPv4 prefix 100.64.0.0/30 is full: widen prefixes.v4 in the configuration or "
                   "delete unused nodes");
    hw_db_close(db);
}

static void random_spreads_over_the_prefix(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_config cfg = config("100.64.0.0/10", "fd7a:115c:a1e0::/48", HW_ALLOC_RANDOM);
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256];
    int low_half = 0;
    for (int i = 0; i < 64; i++) {
        CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) == 0, "%s", err);
        unsigned char b[16];
        CHECK(inet_pton(AF_INET, v4, b) == 1 && b[0] == 100 && b[1] >= 64 && b[1] < 128, "%s", v4);
        low_half += b[1] < 96;
        CHECK(inet_pton(AF_INET6, v6, b) == 1, "%s", v6);
        CHECK(memcmp(b, "\xfd\x7a\x11\x5c\xa1\xe0", 6) == 0, "%s", v6);
    }
    CHECK(low_half > 8 && low_half < 56, "64 picks, %d in the lower half", low_half);
    hw_db_close(db);
}

static void configuration_errors(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256];
    struct hw_config cfg = config("fd7a:115c:a1e0::/48", NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "v6 in v4");
    CHECK_STR(err, "prefixes.v4 \"fd7a:115c:a1e0::/48\" is not an IPv4 prefix");
    cfg = config("100.64.0.0", NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "no length");
    CHECK(strncmp(err, "prefixes.v4: ", 13) == 0, "%s", err);
    cfg = config(NULL, NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "none");
    CHECK_STR(err, "no address prefix configured: set prefixes.v4 and/or prefixes.v6");
    cfg = config("100.64.0.0/31", NULL, HW_ALLOC_SEQUENTIAL);
    CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) < 0, "/31 has no host");
    CHECK(strstr(err, "is full") != NULL, "%s", err);
    hw_db_close(db);
}

/* Tens of thousands of nodes: each allocation must cost about one index probe. */
static void allocation_scales(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "big", &ns), HW_DB_OK);
    struct hw_config cfg = config("100.64.0.0/10", "fd7a:115c:a1e0::/48", HW_ALLOC_SEQUENTIAL);
    char v4[HW_IP_TEXT_MAX], v6[HW_IP_TEXT_MAX], err[256];
    enum { N = 20000 };
    int first_key = next_key;

    int64_t t0 = hw_now_ms_mono();
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    for (int i = 0; i < N; i++)
        CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%d: %s", i, err);
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    int64_t sequential_ms = hw_now_ms_mono() - t0;
    CHECK_STR(v4, "100.64.78.32");   /* the 20000th host: 20000 = 78 * 256 + 32 */

    /* With the tailnet full to there, one more is still one probe, not a scan. */
    t0 = hw_now_ms_mono();
    for (int i = 0; i < 200; i++)
        CHECK(hw_ipalloc_pick(db, &cfg, v4, v6, err, sizeof err) == 0, "%s", err);
    int64_t repeat_ms = hw_now_ms_mono() - t0;
    CHECK_STR(v4, "100.64.78.33");

    struct hw_config rnd = config("100.64.0.0/10", "fd7a:115c:a1e0::/48", HW_ALLOC_RANDOM);
    t0 = hw_now_ms_mono();
    CHECK_INT(hw_db_begin(db), HW_DB_OK);
    for (int i = 0; i < 2000; i++)
        CHECK(alloc_and_store(db, &rnd, ns.id, v4, v6, err, sizeof err) == 0, "%d: %s", i, err);
    CHECK_INT(hw_db_commit(db), HW_DB_OK);
    int64_t random_ms = hw_now_ms_mono() - t0;
    /* A hole low down (an ephemeral node left): refilled first, then one walk over the
     * held run brings the cursor back to the top. */
    struct hw_node low;
    char tenth[HW_KEY_TEXT_MAX];
    snprintf(tenth, sizeof tenth, "mkey:%064d", first_key + 9);
    CHECK_INT(hw_db_node_get_by_machine_key(db, tenth, &low), HW_DB_OK);
    CHECK_STR(low.ipv4, "100.64.0.10");
    hw_node_clear(&low);
    CHECK_INT(hw_db_node_delete(db, low.id), HW_DB_OK);
    t0 = hw_now_ms_mono();
    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.0.10");
    CHECK(alloc_and_store(db, &cfg, ns.id, v4, v6, err, sizeof err) == 0, "%s", err);
    CHECK_STR(v4, "100.64.78.33");
    int64_t refill_ms = hw_now_ms_mono() - t0;

    printf("# refilling a hole and walking back up: %lld ms\n", (long long)refill_ms);
    printf("# %d sequential allocations+inserts: %lld ms; 200 more picks: %lld ms; "
           "2000 random: %lld ms\n", N, (long long)sequential_ms, (long long)repeat_ms,
           (long long)random_ms);
    /* Generous bounds (sanitizer builds, slow disks); a per-allocation scan would take
     * minutes here. */
    CHECK(sequential_ms < 60000, "sequential took %lld ms", (long long)sequential_ms);
    CHECK(repeat_ms < 5000, "200 picks took %lld ms", (long long)repeat_ms);
    hw_db_close(db);
}

/* ---- given names ---- */

static void given_names_from_hostnames(void)
{
    char out[HW_NAME_MAX];
    hw_given_name_from_hostname("My Laptop!!", out);
    CHECK_STR(out, "my-laptop");
    hw_given_name_from_hostname("Laptop.local", out);
    CHECK_STR(out, "laptop");
    hw_given_name_from_hostname("web_01", out);
    CHECK_STR(out, "web-01");
    hw_given_name_from_hostname("--edge--", out);
    CHECK_STR(out, "edge");
    hw_given_name_from_hostname("a   b", out);
    CHECK_STR(out, "a-b");
    hw_given_name_from_hostname("\xc3\x9c" "berhost", out);   /* "Überhost" */
    CHECK_STR(out, "berhost");
    hw_given_name_from_hostname("", out);
    CHECK_STR(out, "node");
    hw_given_name_from_hostname("!!!", out);
    CHECK_STR(out, "node");
    hw_given_name_from_hostname(".hidden", out);
    CHECK_STR(out, "node");
    hw_given_name_from_hostname(NULL, out);
    CHECK_STR(out, "node");
    char long_name[100];
    memset(long_name, 'x', 62);
    memcpy(long_name + 62, "-yyyyyy", 8);
    hw_given_name_from_hostname(long_name, out);
    CHECK_INT(strlen(out), 62);   /* cut at 63 would end in '-': trimmed */
    CHECK(hw_dns_label_problem(out) == NULL, "valid label: %s", out);
}

static void given_names_unique(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "a", &ns), HW_DB_OK);
    char name[HW_NAME_MAX];
    CHECK_INT(hw_given_name_unique(db, "laptop", 0, name), 0);
    CHECK_STR(name, "laptop");

    struct hw_node n;
    memset(&n, 0, sizeof n);
    n.namespace_id = ns.id;
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:1");
    snprintf(n.node_key, sizeof n.node_key, "nodekey:1");
    snprintf(n.given_name, sizeof n.given_name, "%s", name);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    int64_t first_id = n.id;

    CHECK_INT(hw_given_name_unique(db, "laptop", 0, name), 0);
    CHECK_STR(name, "laptop-1");
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:2");
    snprintf(n.node_key, sizeof n.node_key, "nodekey:2");
    snprintf(n.given_name, sizeof n.given_name, "%s", name);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    int64_t second_id = n.id;

    /* A node keeps its own name; "laptop-10" and "laptop-x" do not block "laptop-2". */
    CHECK_INT(hw_given_name_unique(db, "laptop", first_id, name), 0);
    CHECK_STR(name, "laptop");
    const char *others[] = {"laptop-10", "laptop-x", "laptop-03"};
    for (int i = 0; i < 3; i++) {
        snprintf(n.machine_key, sizeof n.machine_key, "mkey:o%d", i);
        snprintf(n.node_key, sizeof n.node_key, "nodekey:o%d", i);
        snprintf(n.given_name, sizeof n.given_name, "%s", others[i]);
        CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    }
    CHECK_INT(hw_given_name_unique(db, "laptop", 0, name), 0);
    CHECK_STR(name, "laptop-2");
    /* A hole is filled first. */
    CHECK_INT(hw_db_node_delete(db, second_id), HW_DB_OK);
    CHECK_INT(hw_given_name_unique(db, "laptop", 0, name), 0);
    CHECK_STR(name, "laptop-1");

    /* A 63-character name is shortened so the suffix fits. */
    char base[HW_NAME_MAX];
    memset(base, 'a', 63);
    base[63] = '\0';
    snprintf(n.machine_key, sizeof n.machine_key, "mkey:long");
    snprintf(n.node_key, sizeof n.node_key, "nodekey:long");
    snprintf(n.given_name, sizeof n.given_name, "%s", base);
    CHECK_INT(hw_db_node_insert(db, &n), HW_DB_OK);
    CHECK_INT(hw_given_name_unique(db, base, 0, name), 0);
    CHECK(strlen(name) <= 63 && hw_dns_label_problem(name) == NULL, "label: %s", name);
    CHECK(strcmp(name + strlen(name) - 2, "-1") == 0, "suffix: %s", name);
    hw_db_close(db);
}

/* ---- registration ---- */

static int add_pending(struct hw_db *db, const char *id, const char *mkey, const char *nkey,
                       const char *hostname, int64_t expires_at)
{
    struct hw_pending p;
    memset(&p, 0, sizeof p);
    snprintf(p.id, sizeof p.id, "%s", id);
    snprintf(p.machine_key, sizeof p.machine_key, "%s", mkey);
    snprintf(p.node_key, sizeof p.node_key, "%s", nkey);
    snprintf(p.disco_key, sizeof p.disco_key, "discokey:%s", id);
    snprintf(p.hostname, sizeof p.hostname, "%s", hostname);
    p.hostinfo_json = "{\"OS\":\"linux\"}";
    p.expires_at = expires_at;
    return hw_db_pending_insert(db, &p);
}

static void register_pending_new_node(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "default", &ns), HW_DB_OK);
    struct hw_config cfg = config("100.64.0.0/10", "fd7a:115c:a1e0::/48", HW_ALLOC_SEQUENTIAL);
    cfg.node_expiry_ms = 90LL * 86400 * 1000;
    CHECK_INT(add_pending(db, "reg1", "mkey:aa", "nodekey:aa", "My Laptop", hw_now() + 600), HW_DB_OK);
    CHECK_INT(add_pending(db, "reg2", "mkey:bb", "nodekey:bb", "my-laptop", 0), HW_DB_OK);

    struct hw_node node;
    char err[256];
    int64_t before = hw_now();
    CHECK(hw_nodes_register_pending(db, &cfg, "reg1", ns.id, &node, err, sizeof err) == 0, "%s", err);
    CHECK(node.id > 0, "id");
    CHECK_STR(node.machine_key, "mkey:aa");
    CHECK_STR(node.node_key, "nodekey:aa");
    CHECK_STR(node.disco_key, "discokey:reg1");
    CHECK_STR(node.hostname, "My Laptop");
    CHECK_STR(node.given_name, "my-laptop");
    CHECK_STR(node.ipv4, "100.64.0.1");
    CHECK_STR(node.ipv6, "fd7a:115c:a1e0::1");
    CHECK_STR(node.namespace_name, "default");
    CHECK_STR(node.register_method, "cli");
    CHECK_STR(node.hostinfo_json, "{\"OS\":\"linux\"}");
    CHECK(node.expiry >= before + 90 * 86400 && node.expiry <= hw_now() + 90 * 86400, "expiry");
    CHECK(!node.ephemeral, "not ephemeral");
    hw_node_clear(&node);
    struct hw_pending p;
    CHECK_INT(hw_db_pending_get(db, "reg1", &p), HW_DB_NOT_FOUND);

    cfg.node_expiry_ms = 0;
    CHECK(hw_nodes_register_pending(db, &cfg, "reg2", ns.id, &node, err, sizeof err) == 0, "%s", err);
    CHECK_STR(node.given_name, "my-laptop-1");
    CHECK_STR(node.ipv4, "100.64.0.2");
    CHECK_INT(node.expiry, 0);
    hw_node_clear(&node);

    /* Used up: the id is gone. */
    CHECK(hw_nodes_register_pending(db, &cfg, "reg1", ns.id, &node, err, sizeof err) < 0, "again");
    CHECK_STR(err, "no pending registration with id reg1");
    hw_db_close(db);
}

static void register_pending_relogin_keeps_addresses(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace home, work;
    CHECK_INT(hw_db_namespace_create(db, "home", &home), HW_DB_OK);
    CHECK_INT(hw_db_namespace_create(db, "work", &work), HW_DB_OK);
    struct hw_config cfg = config("100.64.0.0/10", NULL, HW_ALLOC_SEQUENTIAL);
    char err[256];
    struct hw_node first, again;

    CHECK_INT(add_pending(db, "r1", "mkey:m", "nodekey:old", "box", 0), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "r1", home.id, &first, err, sizeof err) == 0, "%s", err);
    CHECK_INT(hw_db_node_set_given_name(db, first.id, "renamed-box"), HW_DB_OK);
    CHECK_INT(add_pending(db, "other", "mkey:o", "nodekey:o", "other", 0), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "other", home.id, &again, err, sizeof err) == 0, "%s", err);
    hw_node_clear(&again);

    /* The configuration gained IPv6 since: the re-login adds only that address. */
    cfg.prefix_v6 = "fd7a:115c:a1e0::/48";
    CHECK_INT(add_pending(db, "r2", "mkey:m", "nodekey:new", "box", 0), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "r2", work.id, &again, err, sizeof err) == 0, "%s", err);
    CHECK_INT(again.id, first.id);
    CHECK_STR(again.ipv4, first.ipv4);
    CHECK_STR(again.ipv6, "fd7a:115c:a1e0::1");
    CHECK_STR(again.node_key, "nodekey:new");
    CHECK_STR(again.disco_key, "discokey:r2");
    CHECK_STR(again.given_name, "renamed-box");
    CHECK_STR(again.namespace_name, "work");
    hw_node_clear(&again);
    hw_node_clear(&first);

    struct hw_node *list;
    size_t n;
    CHECK_INT(hw_db_node_list(db, 0, &list, &n), HW_DB_OK);
    CHECK_INT(n, 2);
    hw_node_list_free(list, n);
    CHECK_INT(hw_db_node_get_by_node_key(db, "nodekey:old", &again), HW_DB_NOT_FOUND);
    hw_db_close(db);
}

static void register_pending_refusals_change_nothing(void)
{
    struct hw_db *db = fresh_db();
    CHECK(db, "open");
    struct hw_namespace ns;
    CHECK_INT(hw_db_namespace_create(db, "default", &ns), HW_DB_OK);
    struct hw_config cfg = config("100.64.0.0/30", NULL, HW_ALLOC_SEQUENTIAL);
    char err[256];
    struct hw_node node;

    CHECK(hw_nodes_register_pending(db, &cfg, "nope", ns.id, &node, err, sizeof err) < 0, "unknown");
    CHECK_STR(err, "no pending registration with id nope");

    CHECK_INT(add_pending(db, "old", "mkey:1", "nodekey:1", "x", hw_now() - 1), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "old", ns.id, &node, err, sizeof err) < 0, "expired");
    CHECK_STR(err, "registration id old expired: run the login again on the client");

    CHECK_INT(add_pending(db, "ok1", "mkey:2", "nodekey:2", "x", 0), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "ok1", 999, &node, err, sizeof err) < 0, "namespace");
    CHECK_STR(err, "namespace 999 not found");

    /* Fill the /30, then a third login fails on addresses and leaves its request waiting. */
    CHECK(hw_nodes_register_pending(db, &cfg, "ok1", ns.id, &node, err, sizeof err) == 0, "%s", err);
    hw_node_clear(&node);
    CHECK_INT(add_pending(db, "ok2", "mkey:3", "nodekey:3", "x", 0), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "ok2", ns.id, &node, err, sizeof err) == 0, "%s", err);
    hw_node_clear(&node);
    CHECK_INT(add_pending(db, "ok3", "mkey:4", "nodekey:4", "x", 0), HW_DB_OK);
    CHECK(hw_nodes_register_pending(db, &cfg, "ok3", ns.id, &node, err, sizeof err) < 0, "full");
    CHECK(strstr(err, "100.64.0.0/30 is full") != NULL, "%s", err);
    struct hw_pending p;
    CHECK_INT(hw_db_pending_get(db, "ok3", &p), HW_DB_OK);
    hw_pending_clear(&p);
    CHECK_INT(hw_db_pending_get(db, "old", &p), HW_DB_OK);   /* expired rows are left to the sweeper */
    hw_pending_clear(&p);

    /* A node key already used by another machine is refused, cleanly. */
    CHECK_INT(add_pending(db, "clash", "mkey:5", "nodekey:2", "x", 0), HW_DB_OK);
    cfg.prefix_v4 = "100.64.0.0/24";
    CHECK(hw_nodes_register_pending(db, &cfg, "clash", ns.id, &node, err, sizeof err) < 0, "clash");
    CHECK(strstr(err, "node key nodekey:2 already belongs to another node") != NULL, "%s", err);

    struct hw_node *list;
    size_t n;
    CHECK_INT(hw_db_node_list(db, 0, &list, &n), HW_DB_OK);
    CHECK_INT(n, 2);
    hw_node_list_free(list, n);
    hw_db_close(db);
}

int main(void)
{
    RUN(prefix_canonical_forms);
    RUN(sequential_until_full);
    RUN(sequential_reuses_freed_addresses);
    RUN(sequential_skips_tailscale_reserved);
    RUN(random_until_full);
    RUN(random_spreads_over_the_prefix);
    RUN(configuration_errors);
    RUN(allocation_scales);
    RUN(given_names_from_hostnames);
    RUN(given_names_unique);
    RUN(register_pending_new_node);
    RUN(register_pending_relogin_keeps_addresses);
    RUN(register_pending_refusals_change_nothing);
    tmpdir_remove(&dir);
    return TEST_MAIN_END();
}
