/* The policy engine: HuJSON, parsing and its errors (file, line, path, problem), the
 * compiled view of a tailnet (peers, packet filters, routes, SSH), tagOwners,
 * autoApprovers, the "tests" section, and incremental changes checked against a
 * from-scratch compile. Expected results were worked out by hand from Tailscale's
 * documented semantics and its control server's netmaps. */

#include <jansson.h>
#include <stdint.h>
#include <time.h>

#include "server/hujson.h"
#include "server/ipset.h"
#include "server/policy.h"
#include "server/tailnet.h"
#include "tests/unit/testlib.h"

static char err[1024];

/* ---- helpers ---- */

struct tn {
    int64_t id;
    const char *ns;
    const char *tags[3];
    const char *v4, *v6;
    const char *routes[3];
};

static struct hw_policy_node pnode(const struct tn *t)
{
    size_t nt = 0, nr = 0;
    while (nt < 3 && t->tags[nt])
        nt++;
    while (nr < 3 && t->routes[nr])
        nr++;
    return (struct hw_policy_node){.id = t->id, .ns = t->ns, .tags = t->tags, .n_tags = nt,
                                   .ipv4 = t->v4, .ipv6 = t->v6, .routes = t->routes, .n_routes = nr};
}

static struct hw_policy_net *build(const struct hw_policy *p, const struct tn *nodes, size_t n)
{
    struct hw_policy_net *net = hw_policy_net_new(p);
    for (size_t i = 0; i < n; i++) {
        struct hw_policy_node pn = pnode(&nodes[i]);
        if (hw_policy_net_set_node(net, &pn, NULL, err, sizeof err) < 0) {
            printf("# set_node %lld: %s\n", (long long)nodes[i].id, err);
            hw_policy_net_free(net);
            return NULL;
        }
    }
    return net;
}

/* "1,2,3" form of an id list, for messages and comparisons. */
static const char *ids_text(const int64_t *ids, size_t n)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ & 3];
    b[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(b + strlen(b), 512 - strlen(b), "%s%lld", i ? "," : "", (long long)ids[i]);
    return b;
}

static const char *peers_text(const struct hw_policy_net *net, int64_t id)
{
    size_t n;
    int64_t *ids = hw_policy_peers(net, id, &n);
    const char *t = ids_text(ids, n);
    free(ids);
    return t;
}

/* NULL when got equals the JSON text want; else a message (static). */
static const char *json_diff(const json_t *got, const char *want)
{
    static char msg[8192];
    json_error_t je;
    json_t *w = json_loads(want, 0, &je);
    if (!w) {
        snprintf(msg, sizeof msg, "expected JSON does not parse: %s", je.text);
        return msg;
    }
    bool same = got && json_equal(got, w);
    json_decref(w);
    if (same)
        return NULL;
    char *g = got ? json_dumps(got, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    snprintf(msg, sizeof msg, "\n  got  %s\n  want %s", g ? g : "NULL", want);
    free(g);
    return msg;
}

#define CHECK_JSON(got, want)                                                                                  \
    do {                                                                                                       \
        json_t *cj_got = (got);                                                                                \
        const char *cj_d = json_diff(cj_got, want);                                                            \
        json_decref(cj_got);                                                                                   \
        CHECK(cj_d == NULL, "%s", cj_d);                                                                       \
    } while (0)

static struct hw_policy *parse(const char *text)
{
    struct hw_policy *p = hw_policy_parse(text, strlen(text), "policy.hujson", err, sizeof err);
    if (!p)
        printf("# parse: %s\n", err);
    return p;
}

/* Parsing must fail with exactly this message. */
static const char *parse_error(const char *text)
{
    struct hw_policy *p = hw_policy_parse(text, strlen(text), "policy.hujson", err, sizeof err);
    if (p) {
        hw_policy_free(p);
        return "(parsed)";
    }
    return err;
}

/* ---- the Acme tailnet: one realistic policy, worked out by hand ---- */

static const char acme_policy[] =
    "// Acme's tailnet policy.\n"                                            /* 1 */
    "{\n"                                                                    /* 2 */
    "  /* People. Headscale spells users \"alice@\"; both forms work. */\n"  /* 3 */
    "  \"groups\": {\n"                                                      /* 4 */
    "    \"group:eng\": [\"alice@\", \"bob\"],\n"                            /* 5 */
    "    \"group:ops\": [\"carol@\",],   // trailing comma\n"                /* 6 */
    "  },\n"                                                                 /* 7 */
    "  \"hosts\": {\n"                                                       /* 8 */
    "    \"office-lan\": \"192.168.10.0/24\",\n"                             /* 9 */
    "    \"db\": \"100.64.0.40\",\n"                                         /* 10 */
    "  },\n"                                                                 /* 11 */
    "  \"tagOwners\": {\n"                                                   /* 12 */
    "    \"tag:web\": [\"group:eng\"],\n"                                    /* 13 */
    "    \"tag:db\": [\"group:ops\", \"tag:web\"],\n"                        /* 14 */
    "    \"tag:exit\": [\"autogroup:admin\"],\n"                             /* 15 */
    "    \"tag:router\": [\"carol@\"],\n"                                    /* 16 */
    "  },\n"                                                                 /* 17 */
    "  \"acls\": [\n"                                                        /* 18 */
    "    // engineers reach the web servers\n"                               /* 19 */
    "    {\"action\": \"accept\", \"src\": [\"group:eng\"], \"dst\": [\"tag:web:80,443\"]},\n" /* 20 */
    "    {\"action\": \"accept\", \"src\": [\"tag:web\"], \"dst\": [\"tag:db:5432\"]},\n"      /* 21 */
    "    {\"action\": \"accept\", \"src\": [\"group:ops\"], \"dst\": [\"*:*\"]},\n"            /* 22 */
    "    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\"]},\n" /* 23 */
    "    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:internet:*\"]},\n" /* 24 */
    "    {\"action\": \"accept\", \"src\": [\"group:eng\"], \"dst\": [\"office-lan:22,3389\"]},\n" /* 25 */
    "    {\"action\": \"accept\", \"src\": [\"dave@\"], \"proto\": \"udp\", \"dst\": [\"db:53\"]},\n" /* 26 */
    "  ],\n"                                                                 /* 27 */
    "  \"ssh\": [\n"                                                         /* 28 */
    "    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self\"],\n" /* 29 */
    "     \"users\": [\"autogroup:nonroot\", \"root\"]},\n"                  /* 30 */
    "    {\"action\": \"check\", \"src\": [\"group:ops\"], \"dst\": [\"tag:db\"],\n" /* 31 */
    "     \"users\": [\"root\", \"postgres\"], \"checkPeriod\": \"1h\"},\n"  /* 32 */
    "  ],\n"                                                                 /* 33 */
    "  \"autoApprovers\": {\n"                                               /* 34 */
    "    \"routes\": {\"192.168.0.0/16\": [\"tag:router\"], \"10.0.0.0/8\": [\"group:ops\"]},\n" /* 35 */
    "    \"exitNode\": [\"tag:exit\"],\n"                                    /* 36 */
    "  },\n"                                                                 /* 37 */
    "  \"tests\": [\n"                                                       /* 38 */
    "    {\"src\": \"alice@\", \"accept\": [\"tag:web:443\", \"alice@:22\"],\n" /* 39 */
    "     \"deny\": [\"tag:db:5432\", \"bob@:22\"]},\n"                      /* 40 */
    "    {\"src\": \"group:ops\", \"accept\": [\"tag:db:5432\", \"alice@:22\"]},\n" /* 41 */
    "    {\"src\": \"tag:web\", \"accept\": [\"tag:db:5432\"], \"deny\": [\"tag:db:22\"]},\n" /* 42 */
    "    {\"src\": \"dave@\", \"proto\": \"udp\", \"accept\": [\"db:53\"], \"deny\": [\"db:80\"]},\n" /* 43 */
    "  ],\n"                                                                 /* 44 */
    "}\n";

static const struct tn acme_nodes[] = {
    {1, "alice", {0}, "100.64.0.1", "fd7a:115c:a1e0::1", {0}},   /* alice-laptop */
    {2, "alice", {0}, "100.64.0.2", NULL, {0}},                  /* alice-phone */
    {3, "bob", {0}, "100.64.0.3", NULL, {0}},
    {4, "carol", {0}, "100.64.0.4", NULL, {0}},
    {5, "dave", {0}, "100.64.0.5", NULL, {0}},
    {10, "alice", {"tag:web"}, "100.64.0.10", NULL, {0}},
    {11, "carol", {"tag:db"}, "100.64.0.40", NULL, {0}},
    {12, "carol", {"tag:exit"}, "100.64.0.12", NULL, {"0.0.0.0/0", "::/0"}},
    {13, "carol", {"tag:router"}, "100.64.0.13", NULL, {"192.168.10.0/24"}},
};

#define ACME_N (sizeof acme_nodes / sizeof acme_nodes[0])

static void acme_parses_with_comments_and_trailing_commas(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "%s", err);
    const char *ns[] = {"alice", "bob", "carol", "dave"};
    CHECK(hw_policy_check_names(p, ns, 4, err, sizeof err) == 0, "%s", err);
    hw_policy_free(p);
}

static void acme_peers_both_directions(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    struct hw_policy_net *net = build(p, acme_nodes, ACME_N);
    CHECK(net, "build");
    /* group:eng -> tag:web, ops -> *, own devices, exit nodes, the office router. */
    CHECK_STR(peers_text(net, 1), "2,4,10,12,13");
    CHECK_STR(peers_text(net, 2), "1,4,10,12,13");
    CHECK_STR(peers_text(net, 3), "4,10,12,13");
    CHECK_STR(peers_text(net, 4), "1,2,3,5,10,11,12,13");   /* ops reaches everything */
    CHECK_STR(peers_text(net, 5), "4,11,12");               /* dave: the db host, exit, ops */
    CHECK_STR(peers_text(net, 10), "1,2,3,4,11");           /* reached by eng, reaches db */
    CHECK_STR(peers_text(net, 11), "4,5,10");
    CHECK_STR(peers_text(net, 12), "1,2,3,4,5");            /* every member may use it */
    CHECK_STR(peers_text(net, 13), "1,2,3,4");
    for (size_t i = 0; i < ACME_N; i++)
        for (size_t j = 0; j < ACME_N; j++) {
            int64_t a = acme_nodes[i].id, b = acme_nodes[j].id;
            CHECK(hw_policy_sees(net, a, b) == hw_policy_sees(net, b, a), "sees(%lld,%lld) not symmetric",
                  (long long)a, (long long)b);
        }
    CHECK(!hw_policy_sees(net, 1, 1), "a node is not its own peer");
    CHECK(!hw_policy_sees(net, 1, 999), "unknown id");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void acme_filters(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    struct hw_policy_net *net = build(p, acme_nodes, ACME_N);
    CHECK(net, "build");
    /* The web server: eng's untagged devices on 80 and 443, ops on anything. */
    CHECK_JSON(hw_policy_filter(net, 10),
               "[{\"SrcIPs\":[\"100.64.0.1-100.64.0.3\",\"fd7a:115c:a1e0::1\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.10\",\"Ports\":{\"First\":80,\"Last\":80}},"
               "{\"IP\":\"100.64.0.10\",\"Ports\":{\"First\":443,\"Last\":443}}]},"
               "{\"SrcIPs\":[\"100.64.0.4\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    /* Alice's laptop: ops, and her own devices (itself included) through autogroup:self. */
    CHECK_JSON(hw_policy_filter(net, 1),
               "[{\"SrcIPs\":[\"100.64.0.4\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]},"
               "{\"SrcIPs\":[\"100.64.0.1-100.64.0.2\",\"fd7a:115c:a1e0::1\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.1\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"fd7a:115c:a1e0::1\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    /* The database: tag:web on 5432, ops, and dave by host name over UDP only. */
    CHECK_JSON(hw_policy_filter(net, 11),
               "[{\"SrcIPs\":[\"100.64.0.10\"],\"DstPorts\":[{\"IP\":\"100.64.0.40\",\"Ports\":{\"First\":5432,\"Last\":5432}}]},"
               "{\"SrcIPs\":[\"100.64.0.4\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]},"
               "{\"SrcIPs\":[\"100.64.0.5\"],\"DstPorts\":[{\"IP\":\"100.64.0.40\",\"Ports\":{\"First\":53,\"Last\":53}}],"
               "\"IPProto\":[17]}]");
    /* The exit node: members may reach the public internet through it. */
    CHECK_JSON(hw_policy_filter(net, 12),
               "[{\"SrcIPs\":[\"100.64.0.4\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]},"
               "{\"SrcIPs\":[\"100.64.0.1-100.64.0.5\",\"fd7a:115c:a1e0::1\"],\"DstPorts\":["
               "{\"IP\":\"0.0.0.0-9.255.255.255\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"11.0.0.0-100.63.255.255\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"100.128.0.0-169.253.255.255\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"169.255.0.0-172.15.255.255\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"172.32.0.0-192.167.255.255\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"192.169.0.0-255.255.255.255\",\"Ports\":{\"First\":0,\"Last\":65535}},"
               "{\"IP\":\"2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    /* The subnet router carries the office LAN rule for eng. */
    CHECK_JSON(hw_policy_filter(net, 13),
               "[{\"SrcIPs\":[\"100.64.0.4\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]},"
               "{\"SrcIPs\":[\"100.64.0.1-100.64.0.3\",\"fd7a:115c:a1e0::1\"],"
               "\"DstPorts\":[{\"IP\":\"192.168.10.0/24\",\"Ports\":{\"First\":22,\"Last\":22}},"
               "{\"IP\":\"192.168.10.0/24\",\"Ports\":{\"First\":3389,\"Last\":3389}}]}]");
    /* Bob has one device: autogroup:self lets it reach itself. */
    CHECK_JSON(hw_policy_filter(net, 3),
               "[{\"SrcIPs\":[\"100.64.0.4\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]},"
               "{\"SrcIPs\":[\"100.64.0.3\"],\"DstPorts\":[{\"IP\":\"100.64.0.3\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    CHECK(hw_policy_filter(net, 999) == NULL, "unknown id");
    /* SrcIPs arrays are shared between nodes, not rebuilt per node. */
    json_t *f1 = hw_policy_filter(net, 10), *f2 = hw_policy_filter(net, 13);
    /* acls[2] (ops to everything): second rule of the web server, first of the router. */
    CHECK(json_object_get(json_array_get(f1, 1), "SrcIPs") == json_object_get(json_array_get(f2, 0), "SrcIPs"),
          "SrcIPs of the same rule are one object");
    json_decref(f1);
    json_decref(f2);
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void acme_routes_visible_by_policy(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    struct hw_policy_net *net = build(p, acme_nodes, ACME_N);
    CHECK(net, "build");
    CHECK(hw_policy_route_visible(net, 1, 12, "0.0.0.0/0"), "members may use the exit node");
    CHECK(hw_policy_route_visible(net, 1, 12, "::/0"), "both families");
    CHECK(!hw_policy_route_visible(net, 10, 12, "0.0.0.0/0"), "tagged web server is not a member");
    CHECK(hw_policy_route_visible(net, 1, 13, "192.168.10.0/24"), "eng reaches the office LAN");
    CHECK(hw_policy_route_visible(net, 4, 13, "192.168.10.0/24"), "ops reaches *");
    CHECK(!hw_policy_route_visible(net, 5, 13, "192.168.10.0/24"), "dave does not");
    CHECK(!hw_policy_route_visible(net, 10, 13, "192.168.10.0/24"), "nor the web server");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void acme_ssh_policy(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    struct hw_policy_net *net = build(p, acme_nodes, ACME_N);
    CHECK(net, "build");
    CHECK_JSON(hw_policy_ssh(net, 11, "https://hw.example.com"),
               "{\"rules\":[{\"principals\":[{\"nodeIP\":\"100.64.0.4\"}],"
               "\"sshUsers\":{\"root\":\"root\",\"postgres\":\"postgres\"},"
               "\"action\":{\"sessionDuration\":3600000000000,\"holdAndDelegate\":"
               "\"https://hw.example.com/machine/ssh/action/from/$SRC_NODE_ID/to/$DST_NODE_ID"
               "?ssh_user=$SSH_USER&local_user=$LOCAL_USER\",\"allowAgentForwarding\":true,"
               "\"allowLocalPortForwarding\":true,\"allowRemotePortForwarding\":true}}]}");
    CHECK_JSON(hw_policy_ssh(net, 1, "https://hw.example.com"),
               "{\"rules\":[{\"principals\":[{\"nodeIP\":\"100.64.0.1\"},{\"nodeIP\":\"100.64.0.2\"},"
               "{\"nodeIP\":\"fd7a:115c:a1e0::1\"}],\"sshUsers\":{\"*\":\"=\",\"root\":\"root\"},"
               "\"action\":{\"accept\":true,\"allowAgentForwarding\":true,"
               "\"allowLocalPortForwarding\":true,\"allowRemotePortForwarding\":true}}]}");
    CHECK_JSON(hw_policy_ssh(net, 12, "https://hw.example.com"), "{\"rules\":[]}");
    hw_policy_net_free(net);
    /* No "ssh" section: no SSHPolicy at all. */
    struct hw_policy *bare = parse("{\"acls\":[{\"action\":\"accept\",\"src\":[\"*\"],\"dst\":[\"*:*\"]}]}");
    CHECK(bare, "parse");
    net = build(bare, acme_nodes, ACME_N);
    CHECK(hw_policy_ssh(net, 1, "x") == NULL, "no ssh section");
    hw_policy_net_free(net);
    hw_policy_free(bare);
    hw_policy_free(p);
}

static void acme_tag_owners(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    CHECK(hw_policy_tag_owner_ok(p, "tag:web", "alice"), "eng owns tag:web");
    CHECK(hw_policy_tag_owner_ok(p, "tag:web", "bob"), "bob (written without @) too");
    CHECK(!hw_policy_tag_owner_ok(p, "tag:web", "carol"), "carol is not in eng");
    CHECK(hw_policy_tag_owner_ok(p, "tag:router", "carol"), "user owner");
    CHECK(!hw_policy_tag_owner_ok(p, "tag:exit", "carol"), "autogroup:admin: only hwctl");
    CHECK(!hw_policy_tag_owner_ok(p, "tag:nope", "alice"), "undefined tag");
    CHECK(!hw_policy_tag_owner_ok(p, "tag:web", "zed"), "unknown namespace");
    const char *web[] = {"tag:web"}, *router[] = {"tag:router"};
    CHECK(hw_policy_tag_owned_by_tags(p, "tag:db", web, 1), "tag:web owns tag:db");
    CHECK(!hw_policy_tag_owned_by_tags(p, "tag:db", router, 1), "tag:router does not");
    CHECK(hw_policy_tag_owned_by_tags(p, "tag:router", router, 1), "a tag it carries");
    CHECK(hw_policy_tag_defined(p, "tag:exit") && !hw_policy_tag_defined(p, "tag:x"), "defined");
    CHECK(!hw_policy_tag_owner_ok(NULL, "tag:web", "alice"), "no policy: no self-applied tags");
    hw_policy_free(p);
}

static void acme_auto_approvers(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    struct hw_policy_node router = pnode(&acme_nodes[8]), exitn = pnode(&acme_nodes[7]);
    struct hw_policy_node carol = pnode(&acme_nodes[3]), db = pnode(&acme_nodes[6]);
    CHECK(hw_policy_auto_approves(p, &router, "192.168.10.0/24"), "inside the approved /16");
    CHECK(hw_policy_auto_approves(p, &router, "192.168.0.0/16"), "the approved prefix itself");
    CHECK(!hw_policy_auto_approves(p, &router, "192.168.0.0/15"), "wider than approved");
    CHECK(!hw_policy_auto_approves(p, &router, "192.169.0.0/24"), "outside");
    CHECK(!hw_policy_auto_approves(p, &router, "0.0.0.0/0"), "not an exit approver");
    CHECK(hw_policy_auto_approves(p, &carol, "10.20.0.0/16"), "group member approves 10/8 routes");
    CHECK(!hw_policy_auto_approves(p, &db, "10.20.0.0/16"), "a tagged node is not its namespace's user");
    CHECK(hw_policy_auto_approves(p, &exitn, "0.0.0.0/0"), "exitNode approver, IPv4");
    CHECK(hw_policy_auto_approves(p, &exitn, "::/0"), "exitNode approver, IPv6");
    CHECK(!hw_policy_auto_approves(p, &exitn, "10.0.0.0/8"), "exit approver is not a route approver");
    CHECK(!hw_policy_auto_approves(p, &router, "not a prefix"), "garbage");
    CHECK(!hw_policy_auto_approves(NULL, &router, "192.168.10.0/24"), "no policy");
    hw_policy_free(p);
}

/* The example in docs/policy.md parses, passes its own tests, and means what the
 * guide says (tests run from the repository root). */
static void guide_example_parses(void)
{
    size_t len;
    char *doc = NULL;
    FILE *f = fopen("docs/policy.md", "rb");
    if (!f)
        SKIP("docs/policy.md not found from %s", ".");
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    doc = malloc(len + 1);
    CHECK(doc && fread(doc, 1, len, f) == len, "read");
    fclose(f);
    doc[len] = '\0';
    char *start = strstr(doc, "```jsonc\n");
    char *end = start ? strstr(start + 9, "\n```") : NULL;
    if (!start || !end)
        free(doc);
    CHECK(start && end, "no jsonc block in docs/policy.md");
    start += 9;
    struct hw_policy *p = hw_policy_parse(start, (size_t)(end - start), "docs/policy.md", err, sizeof err);
    free(doc);
    CHECK(p, "%s", err);
    const char *ns[] = {"alice", "bob", "carol", "dave"};
    CHECK(hw_policy_check_names(p, ns, 4, err, sizeof err) == 0, "%s", err);
    const char *web[] = {"tag:web"};
    CHECK(hw_policy_tag_owned_by_tags(p, "tag:db", web, 1), "as the comment says");
    hw_policy_free(p);
}

/* ---- the default: namespaces are the boundary ---- */

static void no_policy_namespace_boundary(void)
{
    static const struct tn nodes[] = {
        {1, "alice", {0}, "100.64.0.1", "fd7a:115c:a1e0::1", {0}},
        {2, "alice", {"tag:server"}, "100.64.0.2", NULL, {"10.1.0.0/16"}},
        {3, "bob", {0}, "100.64.0.3", NULL, {0}},
        {4, "bob", {0}, "100.64.0.4", NULL, {"0.0.0.0/0"}},
    };
    struct hw_policy_net *net = build(NULL, nodes, 4);
    CHECK(net, "build");
    CHECK_STR(peers_text(net, 1), "2");
    CHECK_STR(peers_text(net, 3), "4");
    CHECK(!hw_policy_sees(net, 1, 3), "nothing across namespaces");
    CHECK_JSON(hw_policy_filter(net, 1),
               "[{\"SrcIPs\":[\"10.1.0.0/16\",\"100.64.0.1-100.64.0.2\",\"fd7a:115c:a1e0::1\"],"
               "\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    CHECK(hw_policy_route_visible(net, 1, 2, "10.1.0.0/16"), "own namespace's routes");
    CHECK(hw_policy_route_visible(net, 3, 4, "0.0.0.0/0"), "own namespace's exit node");
    CHECK(!hw_policy_route_visible(net, 1, 4, "0.0.0.0/0"), "not another namespace's");
    CHECK(hw_policy_ssh(net, 1, "x") == NULL, "no SSH policy without a policy");
    /* Moving bob's laptop into alice's namespace moves its visibility. */
    struct hw_policy_change chg;
    struct tn moved = {3, "alice", {0}, "100.64.0.3", NULL, {0}};
    struct hw_policy_node pn = pnode(&moved);
    CHECK(hw_policy_net_set_node(net, &pn, &chg, err, sizeof err) == 0, "%s", err);
    CHECK_STR(ids_text(chg.gained, chg.n_gained), "1,2");
    CHECK_STR(ids_text(chg.lost, chg.n_lost), "4");
    CHECK_STR(ids_text(chg.filters, chg.n_filters), "1,2,3,4");
    hw_policy_change_clear(&chg);
    hw_policy_net_free(net);
}

/* ---- aliases one by one ---- */

static void ports_protocols_and_ipv6_destinations(void)
{
    struct hw_policy *p = parse(
        "{\"acls\":[{\"action\":\"accept\",\"src\":[\"alice@\"],\"proto\":\"tcp\","
        "\"dst\":[\"100.64.0.2:22\",\"[fd7a:115c:a1e0::2]:80,443\",\"fd7a:115c:a1e0::2:8000-8080\"]},"
        "{\"action\":\"accept\",\"src\":[\"alice@\"],\"proto\":\"icmp\",\"dst\":[\"100.64.0.0/24:*\"]}]}");
    CHECK(p, "parse");
    static const struct tn nodes[] = {
        {1, "alice", {0}, "100.64.0.1", NULL, {0}},
        {2, "bob", {0}, "100.64.0.2", "fd7a:115c:a1e0::2", {0}},
        {3, "bob", {0}, "100.64.1.3", NULL, {0}},
    };
    struct hw_policy_net *net = build(p, nodes, 3);
    CHECK(net, "build");
    CHECK_STR(peers_text(net, 1), "2");     /* 100.64.1.3 is outside both literals */
    CHECK_JSON(hw_policy_filter(net, 2),
               "[{\"SrcIPs\":[\"100.64.0.1\"],\"DstPorts\":["
               "{\"IP\":\"100.64.0.2\",\"Ports\":{\"First\":22,\"Last\":22}},"
               "{\"IP\":\"fd7a:115c:a1e0::2\",\"Ports\":{\"First\":80,\"Last\":80}},"
               "{\"IP\":\"fd7a:115c:a1e0::2\",\"Ports\":{\"First\":443,\"Last\":443}},"
               "{\"IP\":\"fd7a:115c:a1e0::2\",\"Ports\":{\"First\":8000,\"Last\":8080}}],\"IPProto\":[6]},"
               "{\"SrcIPs\":[\"100.64.0.1\"],\"DstPorts\":["
               "{\"IP\":\"100.64.0.0/24\",\"Ports\":{\"First\":0,\"Last\":65535}}],\"IPProto\":[1]}]");
    CHECK_JSON(hw_policy_filter(net, 3), "[]");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void users_with_and_without_at_and_groups(void)
{
    struct hw_policy *p = parse("{\"groups\":{\"group:a\":[\"alice\",\"bob@\"]},"
                                "\"acls\":[{\"action\":\"accept\",\"src\":[\"group:a\"],\"dst\":[\"carol:22\"]},"
                                "{\"action\":\"accept\",\"src\":[\"dave\"],\"dst\":[\"erin@:22\"]}]}");
    CHECK(p, "parse");
    static const struct tn nodes[] = {
        {1, "alice", {0}, "100.64.0.1", NULL, {0}}, {2, "bob", {0}, "100.64.0.2", NULL, {0}},
        {3, "carol", {0}, "100.64.0.3", NULL, {0}}, {4, "dave", {0}, "100.64.0.4", NULL, {0}},
        {5, "erin", {0}, "100.64.0.5", NULL, {0}},
        {6, "carol", {"tag:x"}, "100.64.0.6", NULL, {0}},   /* tagged: not carol's */
    };
    struct hw_policy_net *net = build(p, nodes, 6);
    CHECK(net, "build");
    CHECK_STR(peers_text(net, 3), "1,2");
    CHECK_STR(peers_text(net, 4), "5");
    CHECK_STR(peers_text(net, 6), "");
    CHECK_JSON(hw_policy_filter(net, 3),
               "[{\"SrcIPs\":[\"100.64.0.1-100.64.0.2\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.3\",\"Ports\":{\"First\":22,\"Last\":22}}]}]");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void tags_and_autogroups_member_tagged(void)
{
    struct hw_policy *p = parse("{\"tagOwners\":{\"tag:ci\":[],\"tag:prod\":[]},\"acls\":["
                                "{\"action\":\"accept\",\"src\":[\"autogroup:tagged\"],\"dst\":[\"tag:prod:443\"]},"
                                "{\"action\":\"accept\",\"src\":[\"autogroup:member\"],\"dst\":[\"autogroup:tagged:22\"]}]}");
    CHECK(p, "parse");
    static const struct tn nodes[] = {
        {1, "alice", {0}, "100.64.0.1", NULL, {0}},
        {2, "ops", {"tag:ci"}, "100.64.0.2", NULL, {0}},
        {3, "ops", {"tag:prod", "tag:ci"}, "100.64.0.3", NULL, {0}},
        {4, "ops", {"tag:unlisted"}, "100.64.0.4", NULL, {0}},   /* tagged all the same */
    };
    struct hw_policy_net *net = build(p, nodes, 4);
    CHECK(net, "build");
    CHECK_STR(peers_text(net, 1), "2,3,4");
    CHECK_STR(peers_text(net, 2), "1,3");
    CHECK_STR(peers_text(net, 4), "1,3");
    CHECK_JSON(hw_policy_filter(net, 3),
               "[{\"SrcIPs\":[\"100.64.0.2-100.64.0.4\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.3\",\"Ports\":{\"First\":443,\"Last\":443}}]},"
               "{\"SrcIPs\":[\"100.64.0.1\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.3\",\"Ports\":{\"First\":22,\"Last\":22}}]}]");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void star_source_lists_ranges_and_subnets(void)
{
    struct hw_policy *p = parse("{\"acls\":[{\"action\":\"accept\",\"src\":[\"*\"],\"dst\":[\"alice@:22\"]}]}");
    CHECK(p, "parse");
    static const struct tn nodes[] = {
        {1, "alice", {0}, "100.64.0.1", NULL, {0}},
        {2, "bob", {0}, "100.64.0.2", NULL, {"10.0.0.0/8"}},
        {3, "bob", {0}, "100.64.0.3", NULL, {"10.33.0.0/16"}},
    };
    struct hw_policy_net *net = build(p, nodes, 3);
    CHECK(net, "build");
    /* As Tailscale's control server writes "*": CGNAT without the ChromeOS range, the
     * ULA, and every approved subnet on its own. */
    CHECK_JSON(hw_policy_filter(net, 1),
               "[{\"SrcIPs\":[\"10.0.0.0/8\",\"10.33.0.0/16\",\"100.115.94.0-100.127.255.255\","
               "\"100.64.0.0-100.115.91.255\",\"fd7a:115c:a1e0::/48\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.1\",\"Ports\":{\"First\":22,\"Last\":22}}]}]");
    CHECK_STR(peers_text(net, 1), "2,3");
    CHECK(hw_policy_route_visible(net, 1, 2, "10.0.0.0/8"), "the subnet answers through its router");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void cidr_and_host_destinations_reach_subnet_routers(void)
{
    struct hw_policy *p = parse("{\"hosts\":{\"lab\":\"10.20.0.0/16\"},\"acls\":["
                                "{\"action\":\"accept\",\"src\":[\"alice@\"],\"dst\":[\"lab:*\",\"10.30.1.0/24:443\"]},"
                                "{\"action\":\"accept\",\"src\":[\"10.20.5.0/24\"],\"dst\":[\"alice@:8080\"]}]}");
    CHECK(p, "parse");
    static const struct tn nodes[] = {
        {1, "alice", {0}, "100.64.0.1", NULL, {0}},
        {2, "infra", {0}, "100.64.0.2", NULL, {"10.20.0.0/24"}},   /* part of lab */
        {3, "infra", {0}, "100.64.0.3", NULL, {"10.30.0.0/16"}},   /* holds 10.30.1.0/24 */
        {4, "infra", {0}, "100.64.0.4", NULL, {"10.40.0.0/16"}},
    };
    struct hw_policy_net *net = build(p, nodes, 4);
    CHECK(net, "build");
    CHECK_STR(peers_text(net, 1), "2,3");
    CHECK_JSON(hw_policy_filter(net, 2),
               "[{\"SrcIPs\":[\"100.64.0.1\"],"
               "\"DstPorts\":[{\"IP\":\"10.20.0.0/16\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    CHECK_JSON(hw_policy_filter(net, 3),
               "[{\"SrcIPs\":[\"100.64.0.1\"],"
               "\"DstPorts\":[{\"IP\":\"10.30.1.0/24\",\"Ports\":{\"First\":443,\"Last\":443}}]}]");
    /* The lab subnet may call alice back on 8080: its router is the source. */
    CHECK_JSON(hw_policy_filter(net, 1),
               "[{\"SrcIPs\":[\"10.20.5.0/24\"],"
               "\"DstPorts\":[{\"IP\":\"100.64.0.1\",\"Ports\":{\"First\":8080,\"Last\":8080}}]}]");
    CHECK(hw_policy_route_visible(net, 1, 2, "10.20.0.0/24"), "alice reaches lab");
    CHECK(!hw_policy_route_visible(net, 1, 4, "10.40.0.0/16"), "not 10.40");
    hw_policy_net_free(net);
    hw_policy_free(p);
}

/* ---- errors: the file, the line, the path, the problem ---- */

static void error_unknown_host_named_by_line(void)
{
    const char *text = "{\n"
                       "  \"hosts\": {\"web\": \"100.64.0.9\"},\n"
                       "  \"acls\": [\n"
                       "    {\"action\": \"accept\", \"src\": [\"alice@\"], \"dst\": [\"web:443\"]},\n"
                       "    {\"action\": \"accept\", \"src\": [\"alice@\"],\n"
                       "     \"dst\": [\"db:5432\"]},\n"
                       "  ],\n"
                       "}\n";
    struct hw_policy *p = parse(text);
    CHECK(p, "\"db\" could be a namespace until the namespaces are known");
    const char *ns[] = {"alice", "bob"};
    CHECK(hw_policy_check_names(p, ns, 2, err, sizeof err) < 0, "db is no namespace");
    CHECK_STR(err, "policy.hujson:6: acls[1].dst[0]: unknown host \"db\" (not in \"hosts\", and no namespace "
                   "has that name; write \"db@\" for a namespace created later)");
    const char *ns2[] = {"alice", "db"};
    CHECK(hw_policy_check_names(p, ns2, 2, err, sizeof err) == 0, "a namespace named db: fine");
    hw_policy_free(p);
    CHECK_STR(parse_error("{\"acls\":[\n{\"action\":\"accept\",\"src\":[\"*\"],\n\"dst\":[\"my_db:5432\"]}]}"),
              "policy.hujson:3: acls[0].dst[0]: unknown host \"my_db\" (not in \"hosts\", and not a namespace name)");
}

static void error_syntax_line_after_comments(void)
{
    CHECK_STR(parse_error("// a comment\n"
                          "/* a block\n"
                          "   comment */\n"
                          "{\n"
                          "  \"acls\": [\n"
                          "    {\"action\": \"accept\" \"src\": [\"*\"]}\n"
                          "  ]\n"
                          "}\n"),
              "policy.hujson:6: '}' expected near '\"src\"'");
    CHECK_STR(parse_error("{\n  /* never closed\n  \"acls\": []\n}\n"),
              "policy.hujson:2: unterminated /* comment");
    CHECK_STR(parse_error("{\"acls\": [,]}"), "policy.hujson:1: unexpected token near ','");
    CHECK_STR(parse_error("{\n\"hosts\": {\"a\": \"100.64.0.1\",\n\"a\": \"100.64.0.2\"}}"),
              "policy.hujson:3: duplicate object key near '\"a\"'");
    CHECK_STR(parse_error("[]"), "policy.hujson:1: the policy is an array; expected an object");
}

static void error_keys(void)
{
    CHECK_STR(parse_error("{\n  \"groups\": {},\n  \"acl\": []\n}"),
              "policy.hujson:3: acl: unknown key \"acl\" in the policy (known: groups, hosts, tagOwners, acls, ssh, "
              "autoApprovers, tests)");
    CHECK_STR(parse_error("{\n\n  \"grants\": []\n}"),
              "policy.hujson:3: grants: \"grants\" is not supported by Headwater yet (see docs/policy.md)");
    CHECK_STR(parse_error("{\"acls\": [], \"ACLs\": []}"),
              "policy.hujson:1: ACLs: \"ACLs\" is given twice (keys are not case-sensitive)");
    struct hw_policy *p = parse("{\"ACLs\": [{\"Action\": \"accept\", \"SRC\": [\"*\"], \"dst\": [\"*:*\"],"
                                " \"#note\": \"ignored\"}]}");
    CHECK(p, "keys are not case-sensitive; '#' keys in rules are notes");
    hw_policy_free(p);
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"users\": [\"*\"], \"ports\": [\"*:*\"]}]}"),
              "policy.hujson:1: acls[0].users: the old \"users\"/\"ports\" form is not read; write \"src\" and \"dst\"");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"], \"srcPosture\": []}]}"),
              "policy.hujson:1: acls[0].srcPosture: unknown key \"srcPosture\" in an ACL (known: action, src, dst, "
              "proto)");
}

static void error_rules(void)
{
    CHECK_STR(parse_error("{\"acls\": [\n{\"action\": \"deny\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}"),
              "policy.hujson:2: acls[0].action: action \"deny\": only \"accept\" exists (what no rule accepts is denied)");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"],\n \"dst\": [\"tag:db:5432\"]}]}"),
              "policy.hujson:2: acls[0].dst[0]: tag \"tag:db\" is not defined in \"tagOwners\"");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"group:x\"], \"dst\": [\"*:*\"]}]}"),
              "policy.hujson:1: acls[0].src[0]: group \"group:x\" is not defined in \"groups\"");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"alice@\"]}]}"),
              "policy.hujson:1: acls[0].dst[0]: \"alice@\": expected ALIAS:PORTS, e.g. \"tag:web:443\" or "
              "\"alice@:*\"");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"alice@:70000\"]}]}"),
              "policy.hujson:1: acls[0].dst[0]: \"alice@:70000\": bad port \"70000\" (want 1-65535, a range, a list "
              "or \"*\")");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"alice@:90-80\"]}]}"),
              "policy.hujson:1: acls[0].dst[0]: \"alice@:90-80\": port range \"90-80\" runs backwards");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"proto\": \"icmp\", "
                          "\"dst\": [\"alice@:22\"]}]}"),
              "policy.hujson:1: acls[0].dst[0]: protocol \"icmp\" has no ports; write \"*\" as the port");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"proto\": \"quic\", "
                          "\"dst\": [\"alice@:*\"]}]}"),
              "policy.hujson:1: acls[0].proto: unknown protocol \"quic\" (a name like \"tcp\", \"udp\", \"icmp\" or a "
              "number 1-255)");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"autogroup:self\"], \"dst\": [\"*:*\"]}]}"),
              "policy.hujson:1: acls[0].src[0]: autogroup:self is only a destination");
    CHECK_STR(parse_error("{\"tagOwners\": {\"tag:ci\": []}, \"acls\": [{\"action\": \"accept\", "
                          "\"src\": [\"tag:ci\"], \"dst\": [\"autogroup:self:*\"]}]}"),
              "policy.hujson:1: acls[0].src[0]: with autogroup:self as a destination, sources must be users, groups, "
              "autogroup:member or \"*\"");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"alice@example.com\"], \"dst\": [\"*:*\"]}]}"),
              "policy.hujson:1: acls[0].src[0]: \"alice@example.com\": users are namespaces here; write \"NAME@\" for "
              "namespace NAME");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [], \"dst\": [\"*:*\"]}]}"),
              "policy.hujson:1: acls[0].src: is empty, so the entry would match nothing");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": \"*\", \"dst\": [\"*:*\"]}]}"),
              "policy.hujson:1: acls[0].src: expected an array of strings, got a string");
}

static void error_definitions(void)
{
    CHECK_STR(parse_error("{\"groups\": {\n\"group:a\": [\"alice@\"],\n\"group:b\": [\"group:a\"]}}"),
              "policy.hujson:3: groups[\"group:b\"][0]: \"group:a\": groups cannot contain groups");
    CHECK_STR(parse_error("{\"hosts\": {\"db\": \"10.0.0.1/8\"}}"),
              "policy.hujson:1: hosts.db: \"10.0.0.1/8\" has bits set after the prefix length; the prefix is "
              "\"10.0.0.0/8\"");
    CHECK_STR(parse_error("{\"hosts\": {\"db\": \"ten.zero\"}}"),
              "policy.hujson:1: hosts.db: \"ten.zero\" is not an IP address or CIDR prefix");
    CHECK_STR(parse_error("{\"tagOwners\": {\n\"tag:a\": [\"tag:b\"],\n\"tag:b\": [\"tag:a\"]}}"),
              "policy.hujson:2: tagOwners[\"tag:a\"]: \"tag:a\" owns itself through a chain of tag owners");
    CHECK_STR(parse_error("{\"tagOwners\": {\"tag:9lives\": []}}"),
              "policy.hujson:1: tagOwners[\"tag:9lives\"]: \"tag:9lives\": a tag name starts with a letter");
    CHECK_STR(parse_error("{\"autoApprovers\": {\"routes\": {\"10.0.0.0/8\": [\"tag:nope\"]}}}"),
              "policy.hujson:1: autoApprovers.routes[\"10.0.0.0/8\"][0]: tag \"tag:nope\" is not defined in "
              "\"tagOwners\"");
    CHECK_STR(parse_error("{\"autoApprovers\": {\"exitnode\": [], \"subnets\": {}}}"),
              "policy.hujson:1: autoApprovers.subnets: unknown key \"subnets\" in autoApprovers (known: routes, "
              "exitNode)");
}

static void error_ssh(void)
{
    CHECK_STR(parse_error("{\"ssh\": [{\"action\": \"accept\", \"src\": [\"alice@\"], \"dst\": [\"*\"], "
                          "\"users\": [\"root\"]}]}"),
              "policy.hujson:1: ssh[0].dst[0]: \"*\" is not allowed in ssh rules; name users, groups, tags, "
              "autogroup:member, autogroup:tagged or autogroup:self");
    CHECK_STR(parse_error("{\"ssh\": [{\"action\": \"accept\", \"src\": [\"alice@\"], \"dst\": [\"autogroup:self\"]}]}"),
              "policy.hujson:1: ssh[0]: \"users\" is missing");
    CHECK_STR(parse_error("{\"tagOwners\": {\"tag:ci\": []}, \"ssh\": [{\"action\": \"accept\", \"src\": "
                          "[\"tag:ci\"], \"dst\": [\"alice@\"], \"users\": [\"root\"]}]}"),
              "policy.hujson:1: ssh[0].dst[0]: tagged sources cannot reach users' devices over ssh; name tags or "
              "autogroup:tagged as destinations");
    CHECK_STR(parse_error("{\"ssh\": [{\"action\": \"accept\", \"src\": [\"bob@\"], \"dst\": [\"alice@\"], "
                          "\"users\": [\"root\"]}]}"),
              "policy.hujson:1: ssh[0].dst[0]: ssh to a user's devices is for that user alone; use autogroup:self for "
              "\"everyone to their own devices\"");
    CHECK_STR(parse_error("{\"ssh\": [{\"action\": \"accept\", \"src\": [\"bob@\"], \"dst\": [\"autogroup:self\"], "
                          "\"users\": [\"root\"], \"checkPeriod\": \"1h\"}]}"),
              "policy.hujson:1: ssh[0].checkPeriod: checkPeriod belongs to \"check\" rules");
    CHECK_STR(parse_error("{\"ssh\": [{\"action\": \"check\", \"src\": [\"bob@\"], \"dst\": [\"autogroup:self\"], "
                          "\"users\": [\"*\"]}]}"),
              "policy.hujson:1: ssh[0].users[0]: \"*\" is not a login name (use autogroup:nonroot for any non-root "
              "user)");
}

static void error_bounds(void)
{
    size_t big = HW_POLICY_MAX_BYTES + 1;
    char *text = malloc(big);
    CHECK(text, "malloc");
    memset(text, ' ', big);
    text[0] = '{';
    text[big - 1] = '}';
    struct hw_policy *p = hw_policy_parse(text, big, "big.hujson", err, sizeof err);
    free(text);
    CHECK(!p, "over the size bound");
    CHECK_STR(err, "big.hujson:1: 1048577 bytes; the limit is 1048576");
    size_t cap = 64 + (HW_POLICY_MAX_RULES + 1) * 4;
    char *many = malloc(cap);
    CHECK(many, "malloc");
    char *w = many + sprintf(many, "{\"tests\": [");
    for (int i = 0; i <= HW_POLICY_MAX_RULES; i++)
        w += sprintf(w, "%s{}", i ? "," : "");
    strcpy(w, "]}");
    p = hw_policy_parse(many, strlen(many), "many.hujson", err, sizeof err);
    free(many);
    CHECK(!p, "too many entries");
    CHECK_STR(err, "many.hujson:1: tests: 4097 entries; at most 4096 are read");
    char deep[200] = "{\"hosts\":";
    for (int i = 0; i < 20; i++)
        strcat(deep, "[");
    CHECK_STR(parse_error(deep), "policy.hujson:1: nested deeper than 16 levels");
}

/* ---- the tests section ---- */

static void tests_section_pass_and_fail(void)
{
    /* acme_policy's tests all pass (it parsed above); now one that does not. */
    const char *text = "{\n"
                       "  \"tagOwners\": {\"tag:db\": []},\n"
                       "  \"groups\": {\"group:eng\": [\"alice@\", \"bob@\"]},\n"
                       "  \"acls\": [\n"
                       "    {\"action\": \"accept\", \"src\": [\"alice@\"], \"dst\": [\"tag:db:5432\"]},\n"
                       "  ],\n"
                       "  \"tests\": [\n"
                       "    {\"src\": \"alice@\", \"accept\": [\"tag:db:5432\"], \"deny\": [\"tag:db:22\"]},\n"
                       "    {\"src\": \"group:eng\",\n"
                       "     \"accept\": [\"tag:db:5432\"]},\n"
                       "  ],\n"
                       "}\n";
    CHECK_STR(parse_error(text), "policy.hujson:10: tests[1].accept[0]: test failed: \"group:eng\" (member \"bob@\") -> "
                                 "\"tag:db:5432\": expected accepted, got denied");
    CHECK_STR(parse_error("{\"tagOwners\": {\"tag:db\": []}, \"acls\": [{\"action\": \"accept\", "
                          "\"src\": [\"*\"], \"dst\": [\"tag:db:*\"]}],\n"
                          "\"tests\": [{\"src\": \"alice@\", \"deny\": [\"tag:db:22\"]}]}"),
              "policy.hujson:2: tests[0].deny[0]: test failed: \"alice@\" -> \"tag:db:22\": expected denied, "
              "got accepted");
    CHECK_STR(parse_error("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"proto\": \"udp\", "
                          "\"dst\": [\"100.64.0.9:53\"]}],\n"
                          "\"tests\": [{\"src\": \"100.64.0.5\", \"proto\": \"tcp\", \"accept\": [\"100.64.0.9:53\"]}]}"),
              "policy.hujson:2: tests[0].accept[0]: test failed: \"100.64.0.5\" -> \"100.64.0.9:53\": expected "
              "accepted, got denied");
    struct hw_policy *p = parse("{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"proto\": \"udp\", "
                                "\"dst\": [\"100.64.0.9:53\"]}],"
                                "\"tests\": [{\"src\": \"100.64.0.5\", \"proto\": \"udp\", \"accept\": [\"100.64.0.9:53\"]},"
                                "{\"src\": \"100.64.0.5\", \"accept\": [\"100.64.0.9:53\"]}]}");
    CHECK(p, "udp, and a test without proto (any of TCP, UDP, ICMP) passes");
    hw_policy_free(p);
    CHECK_STR(parse_error("{\"acls\": [], \"tests\": [{\"src\": \"alice@\", \"accept\": [\"bob@:1-2\"]}]}"),
              "policy.hujson:1: tests[0].accept[0]: \"bob@:1-2\": a test names one port");
    CHECK_STR(parse_error("{\"acls\": [], \"tests\": [{\"src\": \"alice@\"}]}"),
              "policy.hujson:1: tests[0]: a test needs \"accept\" or \"deny\"");
}

/* ---- HuJSON and addresses ---- */

static void hujson_keeps_lines_and_strings(void)
{
    const char *text = "{\n"
                       "  // \"not\": \"a key\",\n"
                       "  \"url\": \"http://x/*y*/\", /* a comment, with a comma */\n"
                       "  \"list\": [1, 2, /* c */ 3,\n"
                       "  ],\n"
                       "  \"deep\": {\"k\": [{\"z\": true},],},\n"
                       "}";
    struct hw_hujson_pos *pos;
    char e[256];
    json_t *j = hw_hujson_load(text, strlen(text), 4096, 8, &pos, e, sizeof e);
    CHECK(j, "%s", e);
    CHECK_STR(json_string_value(json_object_get(j, "url")), "http://x/*y*/");
    CHECK_INT(json_array_size(json_object_get(j, "list")), 3);
    CHECK(json_object_get(j, "not") == NULL, "commented out");
    CHECK_INT(hw_hujson_line(pos, "url"), 3);
    CHECK_INT(hw_hujson_line(pos, "list[2]"), 4);
    CHECK_INT(hw_hujson_line(pos, "deep.k[0].z"), 6);
    CHECK_INT(hw_hujson_line(pos, "deep.k[0].missing"), 6);   /* nearest ancestor */
    char path[128];
    CHECK_STR(hw_hujson_path_key(path, sizeof path, "groups", "group:a"), "groups[\"group:a\"]");
    CHECK_STR(hw_hujson_path_key(path, sizeof path, "", "acls"), "acls");
    json_decref(j);
    hw_hujson_pos_free(pos);
}

static void ipset_ranges_and_prefixes(void)
{
    struct hw_ipset s = {0};
    const char *ips[] = {"100.64.0.3", "100.64.0.1", "100.64.0.2", "100.64.0.8", "100.64.0.9", "fd7a:115c:a1e0::1"};
    for (size_t i = 0; i < 6; i++) {
        struct hw_ip ip;
        CHECK(hw_ip_parse(ips[i], &ip) == 0, "%s", ips[i]);
        hw_ipset_add_ip(&s, &ip);
    }
    hw_ipset_normalize(&s);
    CHECK_INT(s.n, 3);
    char buf[HW_IPRANGE_STR_MAX];
    hw_iprange_format(&s.r[0], buf);
    CHECK_STR(buf, "100.64.0.1-100.64.0.3");
    hw_iprange_format(&s.r[1], buf);
    CHECK_STR(buf, "100.64.0.8/31");
    hw_iprange_format(&s.r[2], buf);
    CHECK_STR(buf, "fd7a:115c:a1e0::1");
    struct hw_ip probe;
    hw_ip_parse("100.64.0.2", &probe);
    CHECK(hw_ipset_contains(&s, &probe), "contains");
    hw_ip_parse("100.64.0.4", &probe);
    CHECK(!hw_ipset_contains(&s, &probe), "gap");
    hw_ipset_clear(&s);
    struct hw_ipprefix pf;
    CHECK_INT(hw_ipprefix_parse("10.1.2.3/8", &pf), -2);
    CHECK_INT(hw_ipprefix_parse("10.0.0.0/33", &pf), -1);
    CHECK_INT(hw_ipprefix_parse("010.0.0.0/8", &pf), -1);
    CHECK_INT(hw_ipprefix_parse("fd7a:115c:a1e0::/48", &pf), 0);
    struct hw_iprange r;
    CHECK(hw_iprange_parse("100.64.0.9-100.64.0.1", &r) < 0, "backwards range");
    CHECK(hw_iprange_parse("100.64.0.1-fd7a::1", &r) < 0, "mixed families");
}

/* Damaged policies: every mutation either parses or fails with "FILE:LINE: ..." (or
 * "FILE: ..." for the few whole-document problems); none may crash or leak (ASan). */
static void parser_survives_mutations(void)
{
    static const char inserts[] = "{}[],:\"\\/*\n 0@-";
    size_t base_len = strlen(acme_policy);
    char *buf = malloc(base_len + 8);
    CHECK(buf, "malloc");
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    int parsed = 0, refused = 0;
    for (int round = 0; round < 3000; round++) {
        memcpy(buf, acme_policy, base_len + 1);
        size_t len = base_len;
        for (int m = 0; m < 1 + round % 3; m++) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            size_t at = (size_t)(seed % len);
            switch ((seed >> 32) % 4) {
            case 0: buf[at] = inserts[(seed >> 40) % (sizeof inserts - 1)]; break;
            case 1: memmove(buf + at, buf + at + 1, len - at); len--; break;
            case 2:
                memmove(buf + at + 1, buf + at, len - at + 1);
                buf[at] = inserts[(seed >> 40) % (sizeof inserts - 1)];
                len++;
                break;
            default: len = at; buf[len] = '\0'; break;
            }
            if (len < 2)
                break;
        }
        struct hw_policy *p = hw_policy_parse(buf, len, "m.hujson", err, sizeof err);
        if (p) {
            parsed++;
            hw_policy_free(p);
            continue;
        }
        refused++;
        CHECK(strncmp(err, "m.hujson", 8) == 0 && (err[8] == ':' ), "round %d: %s", round, err);
    }
    free(buf);
    CHECK(parsed > 0 && refused > 0, "parsed %d refused %d", parsed, refused);
}

/* ---- incremental changes against a fresh compile ---- */

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

#define RN 24
static const char *const ns_pool[] = {"alice", "bob", "carol", "dave"};
static const char *const tag_pool[] = {"tag:web", "tag:db", "tag:exit", "tag:router", "tag:stray"};
static const char *const route_pool[] = {"192.168.10.0/24", "10.1.0.0/16", "0.0.0.0/0", "::/0", "100.64.0.0/30"};

struct rnode {
    bool present;
    struct tn t;
    char v4[32], v6[48];
};

static void random_node(struct rnode *n, int64_t id)
{
    memset(n, 0, sizeof *n);
    n->present = true;
    n->t.id = id;
    n->t.ns = ns_pool[rnd(4)];
    size_t nt = rnd(4) == 0 ? 1 + rnd(2) : 0;
    for (size_t i = 0; i < nt; i++)
        n->t.tags[i] = tag_pool[rnd(5)];
    snprintf(n->v4, sizeof n->v4, "100.64.0.%u", 1 + rnd(60));
    n->t.v4 = n->v4;
    if (rnd(2)) {
        snprintf(n->v6, sizeof n->v6, "fd7a:115c:a1e0::%x", 1 + rnd(60));
        n->t.v6 = n->v6;
    }
    size_t nr = rnd(3) == 0 ? 1 + rnd(2) : 0;
    for (size_t i = 0; i < nr; i++)
        n->t.routes[i] = route_pool[rnd(5)];
}

static struct hw_policy_net *fresh(const struct hw_policy *p, const struct rnode *nodes)
{
    struct hw_policy_net *net = hw_policy_net_new(p);
    for (size_t i = 0; i < RN; i++)
        if (nodes[i].present) {
            struct hw_policy_node pn = pnode(&nodes[i].t);
            hw_policy_net_set_node(net, &pn, NULL, err, sizeof err);
        }
    return net;
}

static char *dump_or_null(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s ? s : strdup("null");
}

static bool id_in(const int64_t *ids, size_t n, int64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* One random policy-driven tailnet, 400 random changes: after each, the incremental
 * net must agree with a fresh compile on every peer list, filter and SSH policy, and
 * the change report must name exactly the nodes whose view of the changed node moved
 * and every node whose filter or SSH policy text changed. */
static void incremental_matches_fresh_compile(const char *policy_text)
{
    struct hw_policy *p = policy_text ? parse(policy_text) : NULL;
    CHECK(!policy_text || p, "parse");
    struct rnode nodes[RN] = {0};
    struct hw_policy_net *net = hw_policy_net_new(p);
    char *filters_before[RN], *ssh_before[RN];
    for (int step = 0; step < 400; step++) {
        size_t k = rnd(RN);
        int64_t id = (int64_t)k + 1;
        for (size_t i = 0; i < RN; i++) {
            filters_before[i] = dump_or_null(nodes[i].present ? hw_policy_filter(net, (int64_t)i + 1) : NULL);
            ssh_before[i] = dump_or_null(nodes[i].present ? hw_policy_ssh(net, (int64_t)i + 1, "u") : NULL);
        }
        size_t n_before;
        int64_t *peers_before = hw_policy_peers(net, id, &n_before);
        struct hw_policy_change chg;
        if (nodes[k].present && rnd(5) == 0) {
            hw_policy_net_remove_node(net, id, &chg);
            nodes[k].present = false;
        } else {
            random_node(&nodes[k], id);
            struct hw_policy_node pn = pnode(&nodes[k].t);
            int rc = hw_policy_net_set_node(net, &pn, &chg, err, sizeof err);
            if (rc < 0) {
                free(peers_before);
                CHECK(rc == 0, "%s", err);
            }
        }
        struct hw_policy_net *ref = fresh(p, nodes);
        size_t n_after;
        int64_t *peers_after = hw_policy_peers(net, id, &n_after);
        bool ok = true;
        char why[512] = "";
        for (size_t i = 0; i < RN && ok; i++) {
            int64_t other = (int64_t)i + 1;
            if (!nodes[i].present)
                continue;
            const char *a = peers_text(net, other), *b = peers_text(ref, other);
            if (strcmp(a, b) != 0) {
                snprintf(why, sizeof why, "step %d: peers of %lld: incremental %s, fresh %s", step, (long long)other, a, b);
                ok = false;
                break;
            }
            char *fa = dump_or_null(hw_policy_filter(net, other)), *fb = dump_or_null(hw_policy_filter(ref, other));
            char *sa = dump_or_null(hw_policy_ssh(net, other, "u")), *sb = dump_or_null(hw_policy_ssh(ref, other, "u"));
            if (strcmp(fa, fb) != 0 || strcmp(sa, sb) != 0) {
                snprintf(why, sizeof why, "step %d: filter/ssh of %lld differs from a fresh compile", step, (long long)other);
                ok = false;
            } else if (other != id && (strcmp(fa, filters_before[i]) != 0 || strcmp(sa, ssh_before[i]) != 0) &&
                       !id_in(chg.filters, chg.n_filters, other)) {
                snprintf(why, sizeof why, "step %d: filter/ssh of %lld changed but was not reported", step, (long long)other);
                ok = false;
            }
            bool saw = id_in(peers_before, n_before, other), sees = id_in(peers_after, n_after, other);
            if (ok && (id_in(chg.gained, chg.n_gained, other) != (sees && !saw) ||
                       id_in(chg.lost, chg.n_lost, other) != (saw && !sees))) {
                snprintf(why, sizeof why, "step %d: gained/lost wrong for %lld", step, (long long)other);
                ok = false;
            }
            if (ok && hw_policy_sees(net, id, other) != sees) {
                snprintf(why, sizeof why, "step %d: sees() disagrees with peers()", step);
                ok = false;
            }
            free(fa);
            free(fb);
            free(sa);
            free(sb);
        }
        for (size_t i = 0; i < RN; i++) {
            free(filters_before[i]);
            free(ssh_before[i]);
        }
        free(peers_before);
        free(peers_after);
        hw_policy_change_clear(&chg);
        hw_policy_net_free(ref);
        if (!ok) {
            hw_policy_net_free(net);
            hw_policy_free(p);
        }
        CHECK(ok, "%s", why);
    }
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static const char random_policy[] =
    "{\"groups\": {\"group:eng\": [\"alice@\", \"bob@\"]},"
    " \"hosts\": {\"lan\": \"192.168.10.0/24\", \"low\": \"100.64.0.0/28\"},"
    " \"tagOwners\": {\"tag:web\": [], \"tag:db\": [], \"tag:exit\": [], \"tag:router\": []},"
    " \"acls\": ["
    "  {\"action\": \"accept\", \"src\": [\"group:eng\"], \"dst\": [\"tag:web:443\", \"lan:22\"]},"
    "  {\"action\": \"accept\", \"src\": [\"tag:web\"], \"dst\": [\"tag:db:5432\"]},"
    "  {\"action\": \"accept\", \"src\": [\"carol@\"], \"dst\": [\"*:*\"]},"
    "  {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\", \"low:80\"]},"
    "  {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:internet:*\"]},"
    "  {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"dave@:8080\"]},"
    "  {\"action\": \"accept\", \"src\": [\"low\", \"autogroup:tagged\"], \"dst\": [\"tag:router:*\"]},"
    " ],"
    " \"ssh\": ["
    "  {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self\"], \"users\": [\"root\"]},"
    "  {\"action\": \"check\", \"src\": [\"group:eng\"], \"dst\": [\"tag:db\"], \"users\": [\"postgres\"]},"
    " ]}";

static void incremental_with_policy(void) { incremental_matches_fresh_compile(random_policy); }
static void incremental_without_policy(void) { incremental_matches_fresh_compile(NULL); }

static void unchanged_node_reports_nothing(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    struct hw_policy_net *net = build(p, acme_nodes, ACME_N);
    CHECK(net, "build");
    struct hw_policy_change chg;
    struct hw_policy_node pn = pnode(&acme_nodes[5]);
    CHECK(hw_policy_net_set_node(net, &pn, &chg, err, sizeof err) == 0, "%s", err);
    CHECK(chg.n_gained == 0 && chg.n_lost == 0 && chg.n_filters == 0, "gained %zu lost %zu filters %zu",
          chg.n_gained, chg.n_lost, chg.n_filters);
    hw_policy_change_clear(&chg);
    /* Retagging the web server as a database: eng loses it, ops keeps it, the old
     * database's filter loses tag:web's sources. */
    struct tn retag = {10, "alice", {"tag:db"}, "100.64.0.10", NULL, {0}};
    pn = pnode(&retag);
    CHECK(hw_policy_net_set_node(net, &pn, &chg, err, sizeof err) == 0, "%s", err);
    CHECK_STR(ids_text(chg.lost, chg.n_lost), "1,2,3,11");
    CHECK_STR(ids_text(chg.gained, chg.n_gained), "");
    CHECK_STR(ids_text(chg.filters, chg.n_filters), "10,11");
    hw_policy_change_clear(&chg);
    struct tn bad = {20, "alice", {0}, "fd7a::1", NULL, {0}};
    pn = pnode(&bad);
    CHECK(hw_policy_net_set_node(net, &pn, &chg, err, sizeof err) < 0, "IPv6 in the IPv4 field");
    CHECK_STR(err, "node 20: \"fd7a::1\" is not an IPv4 address");
    CHECK_INT(hw_policy_net_count(net), ACME_N);
    hw_policy_net_free(net);
    hw_policy_free(p);
}

static void policy_reload_compare(void)
{
    struct hw_policy *p1 = parse(acme_policy);
    CHECK(p1, "parse");
    /* The new policy drops the ops-to-everything rule and lets eng reach the db. */
    struct hw_policy *p2 = parse("{\"groups\": {\"group:eng\": [\"alice@\", \"bob@\"]},"
                                 "\"tagOwners\": {\"tag:web\": [], \"tag:db\": []},"
                                 "\"acls\": [{\"action\": \"accept\", \"src\": [\"group:eng\"], "
                                 "\"dst\": [\"tag:web:80,443\", \"tag:db:5432\"]}]}");
    CHECK(p2, "parse");
    struct hw_policy_node nodes[ACME_N];
    for (size_t i = 0; i < ACME_N; i++)
        nodes[i] = pnode(&acme_nodes[i]);
    struct hw_policy_net *old = hw_policy_net_build(p1, nodes, ACME_N, err, sizeof err);
    struct hw_policy_net *cur = hw_policy_net_build(p2, nodes, ACME_N, err, sizeof err);
    CHECK(old && cur, "%s", err);
    struct hw_policy_change chg;
    hw_policy_net_compare(old, cur, 11, "u", &chg);   /* the database */
    CHECK_STR(ids_text(chg.gained, chg.n_gained), "1,2,3");
    CHECK_STR(ids_text(chg.lost, chg.n_lost), "4,5,10");
    CHECK_STR(ids_text(chg.filters, chg.n_filters), "11");
    hw_policy_change_clear(&chg);
    hw_policy_net_compare(cur, cur, 11, "u", &chg);
    CHECK(chg.n_gained + chg.n_lost + chg.n_filters == 0, "no change against itself");
    hw_policy_change_clear(&chg);
    hw_policy_net_free(old);
    hw_policy_net_free(cur);
    hw_policy_free(p1);
    hw_policy_free(p2);
}

/* compare_all gives what compare gives node by node: on one slot layout (word passes)
 * and on two layouts (a net kept through changes against a fresh one). */
struct compare_log {
    struct hw_policy_net *old, *cur;
    size_t calls, mismatches;
};

static void check_against_compare(int64_t id, const struct hw_policy_change *chg, void *arg)
{
    struct compare_log *log = arg;
    struct hw_policy_change want;
    hw_policy_net_compare(log->old, log->cur, id, "u", &want);
    log->calls++;
    if (strcmp(ids_text(chg->gained, chg->n_gained), ids_text(want.gained, want.n_gained)) != 0 ||
        strcmp(ids_text(chg->lost, chg->n_lost), ids_text(want.lost, want.n_lost)) != 0 ||
        strcmp(ids_text(chg->filters, chg->n_filters), ids_text(want.filters, want.n_filters)) != 0) {
        printf("# node %lld: gained %s lost %s filters %s, compare says %s / %s / %s\n", (long long)id,
               ids_text(chg->gained, chg->n_gained), ids_text(chg->lost, chg->n_lost),
               ids_text(chg->filters, chg->n_filters), ids_text(want.gained, want.n_gained),
               ids_text(want.lost, want.n_lost), ids_text(want.filters, want.n_filters));
        log->mismatches++;
    }
    hw_policy_change_clear(&want);
}

static void compare_all_matches_compare(void)
{
    struct hw_policy *p1 = parse(acme_policy);
    struct hw_policy *p2 = parse(random_policy);
    CHECK(p1 && p2, "parse");
    struct hw_policy_node nodes[ACME_N];
    for (size_t i = 0; i < ACME_N; i++)
        nodes[i] = pnode(&acme_nodes[i]);
    const struct hw_policy *pairs[][2] = {{p1, p2}, {NULL, p1}, {p2, NULL}, {p1, p1}};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        struct compare_log log = {hw_policy_net_build(pairs[k][0], nodes, ACME_N, err, sizeof err),
                                  hw_policy_net_build(pairs[k][1], nodes, ACME_N, err, sizeof err), 0, 0};
        CHECK(log.old && log.cur, "%s", err);
        hw_policy_net_compare_all(log.old, log.cur, "u", check_against_compare, &log);
        CHECK_INT(log.calls, ACME_N);
        CHECK_INT(log.mismatches, 0);
        /* Another layout: the old net built in reverse order. */
        hw_policy_net_free(log.old);
        log.old = hw_policy_net_new(pairs[k][0]);
        for (size_t i = ACME_N; i-- > 0;)
            CHECK(hw_policy_net_set_node(log.old, &nodes[i], NULL, err, sizeof err) == 0, "%s", err);
        log.calls = log.mismatches = 0;
        hw_policy_net_compare_all(log.old, log.cur, "u", check_against_compare, &log);
        CHECK_INT(log.calls, ACME_N);
        CHECK_INT(log.mismatches, 0);
        hw_policy_net_free(log.old);
        hw_policy_net_free(log.cur);
    }
    hw_policy_free(p1);
    hw_policy_free(p2);
}

static void descriptor_from_tailnet_node(void)
{
    struct tn_namespace ns = {.id = 3, .name = "carol"};
    struct tn_node n = {0};
    n.row.id = 13;
    snprintf(n.row.ipv4, sizeof n.row.ipv4, "100.64.0.13");
    n.row.tags_json = strdup("[\"tag:router\", \"tag:exit\"]");
    char *routes[] = {"192.168.10.0/24", "0.0.0.0/0"};
    n.routes = routes;
    n.n_routes = 2;
    n.ns = &ns;
    struct hw_policy_node pn;
    hw_policy_node_from_tn(&n, &pn);
    free(n.row.tags_json);
    CHECK_INT(pn.id, 13);
    CHECK_STR(pn.ns, "carol");
    CHECK_STR(pn.ipv4, "100.64.0.13");
    CHECK_STR(pn.ipv6, "");
    CHECK_INT(pn.n_tags, 2);
    CHECK_STR(pn.tags[1], "tag:exit");
    CHECK_INT(pn.n_routes, 2);
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    CHECK(hw_policy_auto_approves(p, &pn, "192.168.10.0/24"), "tag:router approves the LAN");
    CHECK(hw_policy_auto_approves(p, &pn, "0.0.0.0/0"), "tag:exit approves the exit route");
    hw_policy_free(p);
    hw_policy_node_release(&pn);
    n.row.tags_json = NULL;
    hw_policy_node_from_tn(&n, &pn);
    CHECK_INT(pn.n_tags, 0);
    hw_policy_node_release(&pn);
}

/* ---- scale ---- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void ten_thousand_nodes_compile_quickly(void)
{
    struct hw_policy *p = parse(acme_policy);
    CHECK(p, "parse");
    enum { N = 10000 };
    static const char *const nss[] = {"alice", "bob", "carol", "dave"};
    static const char *const tags[] = {"tag:web", "tag:db", "tag:router"};
    double t0 = now_ms();
    struct hw_policy_net *net = hw_policy_net_new(p);
    for (int i = 0; i < N; i++) {
        char v4[32];
        snprintf(v4, sizeof v4, "100.64.%d.%d", (i + 1) / 256, (i + 1) % 256);
        const char *tag[1] = {tags[i % 3]};
        struct hw_policy_node pn = {.id = i + 1, .ns = nss[i % 4], .tags = tag, .n_tags = i % 5 == 0,
                                    .ipv4 = v4};
        CHECK(hw_policy_net_set_node(net, &pn, NULL, err, sizeof err) == 0, "%s", err);
    }
    double t1 = now_ms();
    size_t total = 0;
    for (int i = 0; i < N; i += 97) {
        size_t n;
        free(hw_policy_peers(net, i + 1, &n));
        json_decref(hw_policy_filter(net, i + 1));
        total += n;
    }
    double t2 = now_ms();
    printf("# policy: 10000 nodes compiled in %.1f ms; peers+filter for 104 nodes in %.1f ms (%zu peers)\n",
           t1 - t0, t2 - t1, total);
    CHECK(t1 - t0 < 5000, "compile took %.0f ms", t1 - t0);
    hw_policy_net_free(net);
    hw_policy_free(p);
}

int main(void)
{
    RUN(acme_parses_with_comments_and_trailing_commas);
    RUN(acme_peers_both_directions);
    RUN(acme_filters);
    RUN(acme_routes_visible_by_policy);
    RUN(acme_ssh_policy);
    RUN(acme_tag_owners);
    RUN(acme_auto_approvers);
    RUN(guide_example_parses);
    RUN(no_policy_namespace_boundary);
    RUN(ports_protocols_and_ipv6_destinations);
    RUN(users_with_and_without_at_and_groups);
    RUN(tags_and_autogroups_member_tagged);
    RUN(star_source_lists_ranges_and_subnets);
    RUN(cidr_and_host_destinations_reach_subnet_routers);
    RUN(error_unknown_host_named_by_line);
    RUN(error_syntax_line_after_comments);
    RUN(error_keys);
    RUN(error_rules);
    RUN(error_definitions);
    RUN(error_ssh);
    RUN(error_bounds);
    RUN(tests_section_pass_and_fail);
    RUN(hujson_keeps_lines_and_strings);
    RUN(ipset_ranges_and_prefixes);
    RUN(parser_survives_mutations);
    RUN(incremental_with_policy);
    RUN(incremental_without_policy);
    RUN(unchanged_node_reports_nothing);
    RUN(policy_reload_compare);
    RUN(compare_all_matches_compare);
    RUN(descriptor_from_tailnet_node);
    RUN(ten_thousand_nodes_compile_quickly);
    return TEST_MAIN_END();
}
