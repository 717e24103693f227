#include <stdlib.h>
#include <string.h>

#include "common/sbuf.h"
#include "proto/tailcfg.h"
#include "tests/unit/fixture.h"
#include "tests/unit/testlib.h"

static json_t *g_reg, *g_map;

/* First path where two JSON values differ ("" when equal), for readable failures. */
static int json_diff(const json_t *a, const json_t *b, const char *path, char *out, size_t len)
{
    if (json_equal(a, b))
        return 0;
    if (json_is_object(a) && json_is_object(b)) {
        const char *k;
        json_t *v;
        char sub[512];
        json_object_foreach((json_t *)a, k, v)
        {
            snprintf(sub, sizeof sub, "%s.%s", path, k);
            json_t *w = json_object_get(b, k);
            if (!w) {
                snprintf(out, len, "%.300s: only in ours", sub);
                return 1;
            }
            if (json_diff(v, w, sub, out, len))
                return 1;
        }
        json_object_foreach((json_t *)b, k, v) if (!json_object_get(a, k))
        {
            snprintf(out, len, "%.200s.%.100s: only in theirs", path, k);
            return 1;
        }
    }
    if (json_is_array(a) && json_is_array(b) && json_array_size(a) == json_array_size(b)) {
        char sub[512];
        for (size_t i = 0; i < json_array_size(a); i++) {
            snprintf(sub, sizeof sub, "%s[%zu]", path, i);
            if (json_diff(json_array_get(a, i), json_array_get(b, i), sub, out, len))
                return 1;
        }
    }
    char *x = json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY),
         *y = json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(out, len, "%.200s: ours %.120s, theirs %.120s", path, x ? x : "?", y ? y : "?");
    free(x);
    free(y);
    return 1;
}

static json_t *parse_text(const char *text)
{
    return json_loads(text, 0, NULL);
}

static const uint8_t *u8(const char *s) { return (const uint8_t *)s; }

/* tmpl with its "%s" replaced by key (the cases are data, not format strings). */
static void with_key(char *out, size_t cap, const char *tmpl, const char *key)
{
    const char *at = strstr(tmpl, "%s");
    if (!at) {
        snprintf(out, cap, "%s", tmpl);
        return;
    }
    snprintf(out, cap, "%.*s%s%s", (int)(at - tmpl), tmpl, key, at + 2);
}

/* ---- value forms ------------------------------------------------------------------------ */

static void times_parse_and_print_like_go(void)
{
    struct tc_time t;
    char buf[TC_TIME_TEXT_MAX];
    CHECK(tc_time_parse("0001-01-01T00:00:00Z", &t) == 0 && !t.set, "Go zero time is unset");
    tc_time_format(&t, buf);
    CHECK_STR(buf, "0001-01-01T00:00:00Z");
    CHECK(tc_time_parse("1970-01-01T00:02:03Z", &t) == 0 && t.set && t.sec == 123, "logout");
    tc_time_format(&t, buf);
    CHECK_STR(buf, "1970-01-01T00:02:03Z");
    CHECK(tc_time_parse("2026-11-25T17:40:32.55279507Z", &t) == 0, "fraction");
    CHECK_INT(t.nsec, 552795070);
    tc_time_format(&t, buf);
    CHECK_STR(buf, "2026-11-25T17:40:32.55279507Z");
    CHECK(tc_time_parse("2026-11-25T19:40:32+02:00", &t) == 0, "offset");
    tc_time_format(&t, buf);
    CHECK_STR(buf, "2026-11-25T17:40:32Z");
    CHECK(tc_time_parse("1969-12-31T23:59:59.5Z", &t) == 0 && t.sec == -1, "before 1970");
    tc_time_format(&t, buf);
    CHECK_STR(buf, "1969-12-31T23:59:59.5Z");
    const char *bad[] = {"", "2026-02-30T00:00:00Z", "2026-11-25 17:40:32Z", "2026-11-25T17:40:32",
                         "2026-11-25T17:40:32.Z", "2026-11-25T24:00:00Z", "2026-11-25T17:40:32Zx"};
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++)
        CHECK(tc_time_parse(bad[i], &t) < 0, "rejects \"%s\"", bad[i]);
}

static void keys_and_addresses(void)
{
    uint8_t k[32];
    const char *hex = "964a9e45804b2dfa64a99cf3a2a899d5e2d60f78301fc9f5d95d31866f33a505";
    char text[TC_KEY_TEXT_MAX], upper[TC_KEY_TEXT_MAX];
    snprintf(text, sizeof text, "nodekey:%s", hex);
    CHECK(tc_key_parse(text, "nodekey", k) == 0, "parse");
    char back[TC_KEY_TEXT_MAX];
    tc_key_format("nodekey", k, back);
    CHECK_STR(back, text);
    snprintf(upper, sizeof upper, "nodekey:%s", hex);
    for (char *p = upper + 8; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 32);
    CHECK(tc_key_parse(upper, "nodekey", k) == 0, "upper-case hex accepted");
    CHECK(tc_key_parse(text, "discokey", k) < 0, "wrong prefix");
    text[strlen(text) - 1] = '\0';
    CHECK(tc_key_parse(text, "nodekey", k) < 0, "63 digits");
    CHECK(tc_key_parse("nodekey964a", "nodekey", k) < 0, "no colon");

    CHECK(tc_valid_prefix("100.64.0.1/32") && tc_valid_prefix("fd7a:115c:a1e0::1/128") &&
              tc_valid_prefix("0.0.0.0/0") && tc_valid_prefix("::/0"),
          "good prefixes");
    CHECK(!tc_valid_prefix("100.64.0.1") && !tc_valid_prefix("100.64.0.1/33") &&
              !tc_valid_prefix("10.0.0.0/") && !tc_valid_prefix("x/8") && !tc_valid_prefix("::/129"),
          "bad prefixes");
    CHECK(tc_valid_addrport("127.0.0.1:18641") && tc_valid_addrport("[2001:db8::1]:41641") &&
              tc_valid_addrport("[fe80::1%eth0]:1"),
          "good endpoints");
    CHECK(!tc_valid_addrport("127.0.0.1") && !tc_valid_addrport("2001:db8::1:41641") &&
              !tc_valid_addrport("1.2.3.4:65536") && !tc_valid_addrport("[1.2.3.4]:1") &&
              !tc_valid_addrport("host:80"),
          "bad endpoints");
}

/* ---- /machine/register ------------------------------------------------------------------ */

struct reg_case {
    const char *path; /* key, or key[index] */
    bool auth;
    bool followup;
    bool logout;
    const char *hostname;
};

static json_t *reg_exchange(const char *key, int index)
{
    json_t *v = json_object_get(g_reg, key);
    return index >= 0 ? json_array_get(v, (size_t)index) : v;
}

static void register_requests_parse(void)
{
    struct {
        const char *key;
        int index;
        bool auth, followup, logout;
        const char *hostname;
    } cases[] = {
        {"authkey_flow_fx_node1", -1, true, false, false, "fx-node1"},
        {"interactive_flow_fx_node2", 0, false, false, false, "fx-node2"},
        {"interactive_flow_fx_node2", 1, false, true, false, "fx-node2"},
        {"logout_fx_node2", -1, false, false, true, "fx-node2"},
        {"authkey_flow_fx_node4", -1, true, false, false, "fx-node4"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        json_t *ex = reg_exchange(cases[i].key, cases[i].index);
        const char *body = fxj_str(ex, "request_body");
        json_t *parsed = json_object_get(ex, "request_body_parsed");
        struct tc_register_request r;
        char err[TC_ERRLEN];
        CHECK(tc_register_request_parse(u8(body), strlen(body), &r, err, sizeof err) == 0,
              "%s: %s", cases[i].key, err);
        CHECK_INT(r.version, 133);
        char nk[TC_KEY_TEXT_MAX];
        tc_key_format("nodekey", r.node_key, nk);
        CHECK_STR(nk, fxj_str(parsed, "NodeKey"));
        CHECK(tc_key_is_zero(r.old_node_key), "no rotation");
        CHECK_STR(r.nl_key, fxj_str(parsed, "NLKey"));
        CHECK(r.has_auth == cases[i].auth, "%s auth", cases[i].key);
        if (cases[i].auth)
            CHECK_STR(r.auth_key, fxj_str(json_object_get(parsed, "Auth"), "AuthKey"));
        else
            CHECK(r.auth_key == NULL, "no auth key");
        if (cases[i].followup)
            CHECK_STR(r.followup, "http://127.0.0.1:18080/register/jbvaUIFXN_TTEq8WEAIlbprj");
        else
            CHECK_STR(r.followup, "");
        if (cases[i].logout) {
            CHECK(r.expiry.set && r.expiry.sec == 123, "logout expiry");
            CHECK_INT(r.hostinfo.preferred_derp, 901);
        } else {
            CHECK(!r.expiry.set, "no expiry");
        }
        CHECK_STR(r.hostinfo.hostname, cases[i].hostname);
        CHECK_STR(r.hostinfo.os, "linux");
        CHECK_STR(r.hostinfo.ipn_version, "1.96.5-t88200dbb4");
        CHECK(!r.ephemeral, "not ephemeral");
        CHECK(json_equal(r.hostinfo.raw, json_object_get(parsed, "Hostinfo")), "raw hostinfo kept");

        /* Client side: the same request built from those fields is the same JSON; without
         * floats in it, byte for byte what tailscaled sent. */
        struct tc_register_request_build b = {
            .version = r.version, .node_key = r.node_key, .old_node_key = r.old_node_key,
            .nl_key = r.nl_key, .auth_key = r.auth_key, .expiry = r.expiry,
            .followup = r.followup, .hostinfo = r.hostinfo.raw};
        json_t *built = tc_register_request_to_json(&b);
        char why[512];
        CHECK(!json_diff(built, parsed, "RegisterRequest", why, sizeof why), "%s: %s", cases[i].key,
              why);
        if (!json_object_get(json_object_get(parsed, "Hostinfo"), "NetInfo")) {
            char *text = tc_json_dump(built, NULL);
            CHECK(strcmp(text, body) == 0, "%s: bytes differ:\n%s\n%s", cases[i].key, text, body);
            free(text);
        }
        json_decref(built);
        tc_register_request_free(&r);
    }
}

static void register_responses_match_headscale(void)
{
    struct tc_time alice_created, bob_created;
    tc_time_parse("2026-11-25T17:40:32.55279507Z", &alice_created);
    tc_time_parse("2026-11-25T17:40:32.566311913Z", &bob_created);
    struct {
        const char *key;
        int index;
        struct tc_register_response r;
    } cases[] = {
        {"authkey_flow_fx_node1", -1,
         {.user_id = 1, .user_display_name = "alice", .user_created = alice_created,
          .login_id = 1, .login_provider = "", .login_name = "alice",
          .login_display_name = "alice", .machine_authorized = true}},
        {"interactive_flow_fx_node2", 0,
         {.auth_url = "http://127.0.0.1:18080/register/jbvaUIFXN_TTEq8WEAIlbprj"}},
        {"interactive_flow_fx_node2", 1,
         {.user_id = 2, .user_display_name = "bob", .user_created = bob_created, .login_id = 2,
          .login_provider = "", .login_name = "bob", .login_display_name = "bob",
          .machine_authorized = true}},
        /* Headscale v0.28 answers a logout with NodeKeyExpired and still authorized. */
        {"logout_fx_node2", -1,
         {.user_id = 2, .user_display_name = "bob", .user_created = bob_created, .login_id = 2,
          .login_provider = "", .login_name = "bob", .login_display_name = "bob",
          .node_key_expired = true, .machine_authorized = true}},
        {"authkey_flow_fx_node4", -1,
         {.user_id = 1, .user_display_name = "alice", .user_created = alice_created,
          .login_id = 1, .login_provider = "", .login_name = "alice",
          .login_display_name = "alice", .machine_authorized = true}},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        json_t *ex = reg_exchange(cases[i].key, cases[i].index);
        const char *want_text = fxj_str(ex, "response_body");
        json_t *want = parse_text(want_text);
        json_t *got = tc_register_response_to_json(&cases[i].r);
        char why[512];
        CHECK(!json_diff(got, want, "RegisterResponse", why, sizeof why), "%s: %s", cases[i].key, why);
        /* Headscale writes with Go's json.Encoder, which ends the body with "\n". */
        char *text = tc_json_dump(got, NULL);
        size_t wl = strlen(want_text);
        CHECK(wl > 0 && want_text[wl - 1] == '\n' && strlen(text) == wl - 1 &&
                  memcmp(text, want_text, wl - 1) == 0,
              "%s bytes:\n%s\n%s", cases[i].key, text, want_text);
        free(text);
        json_decref(got);
        json_decref(want);

        /* And the client reads headscale's bytes back into the same fields. */
        struct tc_register_response back;
        char err[TC_ERRLEN];
        CHECK(tc_register_response_parse(u8(want_text), strlen(want_text), &back, err,
                                         sizeof err) == 0,
              "%s", err);
        CHECK_INT(back.user_id, cases[i].r.user_id);
        CHECK(back.machine_authorized == cases[i].r.machine_authorized, "authorized");
        CHECK(back.node_key_expired == cases[i].r.node_key_expired, "expired");
        CHECK_STR(back.auth_url, cases[i].r.auth_url ? cases[i].r.auth_url : "");
        CHECK_STR(back.error, "");
        CHECK(tc_time_cmp(&back.user_created, &cases[i].r.user_created) == 0, "created");
        tc_register_response_free(&back);
    }
}

static void register_error_response(void)
{
    struct tc_register_response r = {.error = "invalid pre auth key"};
    json_t *j = tc_register_response_to_json(&r);
    char *text = tc_json_dump(j, NULL);
    CHECK_STR(text, "{\"User\":{\"ID\":0,\"DisplayName\":\"\"},\"Login\":{\"ID\":0,\"Provider\":\"\","
                    "\"LoginName\":\"\",\"DisplayName\":\"\"},\"NodeKeyExpired\":false,"
                    "\"MachineAuthorized\":false,\"AuthURL\":\"\",\"NodeKeySignature\":null,"
                    "\"Error\":\"invalid pre auth key\"}");
    free(text);
    json_decref(j);
}

/* ---- /machine/map requests ---------------------------------------------------------------- */

static void check_map_request(const char *body, const json_t *parsed, bool lite, char *why,
                              size_t whylen, int *ok)
{
    struct tc_map_request r;
    char err[TC_ERRLEN];
    *ok = 0;
    if (tc_map_request_parse(u8(body), strlen(body), &r, err, sizeof err) < 0) {
        snprintf(why, whylen, "parse: %s", err);
        return;
    }
    json_t *eps = json_object_get(parsed, "Endpoints");
    if (r.version != 133 || strcmp(r.compress, "zstd") != 0 || !r.keep_alive ||
        tc_map_request_is_lite(&r) != lite || r.stream == lite || r.read_only ||
        r.n_endpoints != json_array_size(eps) ||
        (r.n_endpoints && (strcmp(r.endpoints[0], json_string_value(json_array_get(eps, 0))) ||
                           r.n_endpoint_types != 1 || r.endpoint_types[0] != 2)) ||
        r.n_debug_flags != 1 || strcmp(r.debug_flags[0], "netstack") != 0 ||
        !r.hostinfo.hostname || tc_key_is_zero(r.disco_key)) {
        snprintf(why, whylen, "fields differ from %.200s", body);
        tc_map_request_free(&r);
        return;
    }
    json_t *ni = json_object_get(json_object_get(parsed, "Hostinfo"), "NetInfo");
    if (ni && r.hostinfo.preferred_derp != 901) {
        snprintf(why, whylen, "PreferredDERP %d", r.hostinfo.preferred_derp);
        tc_map_request_free(&r);
        return;
    }
    struct tc_map_request_build b = {.version = r.version, .compress_zstd = true,
                                     .keep_alive = r.keep_alive, .node_key = r.node_key,
                                     .disco_key = r.disco_key, .stream = r.stream,
                                     .omit_peers = r.omit_peers, .hostinfo = r.hostinfo.raw,
                                     .endpoints = r.endpoints, .endpoint_types = r.endpoint_types,
                                     .n_endpoints = r.n_endpoints, .debug_flags = r.debug_flags,
                                     .n_debug_flags = r.n_debug_flags};
    json_t *built = tc_map_request_to_json(&b);
    if (json_diff(built, parsed, "MapRequest", why, whylen) == 0)
        *ok = 1;
    json_decref(built);
    tc_map_request_free(&r);
}

static void map_requests_parse(void)
{
    const char *streams[] = {"map_stream_fx_node1", "map_stream_fx_node4", "map_stream_fx_node2"};
    char why[512];
    int ok;
    for (size_t i = 0; i < HW_ARRAY_LEN(streams); i++) {
        json_t *s = json_object_get(g_map, streams[i]);
        check_map_request(fxj_str(s, "request_body"), json_object_get(s, "request_body_parsed"),
                          false, why, sizeof why, &ok);
        CHECK(ok, "%s: %s", streams[i], why);
    }
    json_t *lite = json_object_get(g_map, "lite_updates");
    CHECK_INT(json_array_size(lite), 9);
    int with_endpoints = 0;
    for (size_t i = 0; i < json_array_size(lite); i++) {
        json_t *l = json_array_get(lite, i);
        json_t *parsed = json_object_get(l, "request_body_parsed");
        check_map_request(fxj_str(l, "request_body"), parsed, true, why, sizeof why, &ok);
        CHECK(ok, "lite[%zu]: %s", i, why);
        with_endpoints += json_object_get(parsed, "Endpoints") != NULL;
    }
    CHECK(with_endpoints >= 3, "lite updates with endpoints: %d", with_endpoints);
}

/* ---- MapResponse: build the first full message from structs ----------------------------- */

static void fill_node1_self(struct tc_node *n, const json_t *fixture_node)
{
    memset(n, 0, sizeof(*n));
    n->id = 1;
    n->name = hw_strdup("fx-node1.fixture.test.");
    n->user = 1;
    tc_key_parse("nodekey:964a9e45804b2dfa64a99cf3a2a899d5e2d60f78301fc9f5d95d31866f33a505",
                 "nodekey", n->key);
    tc_key_parse("mkey:cc0a6f4367ed9c273b06ceec4ca78aad4bb019b861c5a9e1384ee1bc4b362b28", "mkey",
                 n->machine);
    tc_key_parse("discokey:d5b720f1dcc40cc7da99f4de6c6ff89bc69bb88b87b1f5c56312d402b8423857",
                 "discokey", n->disco_key);
    tc_strv_push(&n->addresses, "100.64.0.1/32");
    tc_strv_push(&n->addresses, "fd7a:115c:a1e0::1/128");
    tc_strv_copy(&n->allowed_ips, &n->addresses);
    n->legacy_derp = true; /* no NetInfo yet: headscale sends "DERP":"127.3.3.40:0" */
    n->home_derp = 0;
    /* Hostinfo is stored as the client sent it in its MapRequest. */
    json_t *s = json_object_get(g_map, "map_stream_fx_node1");
    n->hostinfo = json_incref(json_object_get(json_object_get(s, "request_body_parsed"), "Hostinfo"));
    tc_time_parse("2026-11-25T17:40:52.682769089Z", &n->created);
    n->cap = 133;
    n->online = TC_TRUE;
    n->machine_authorized = true;
    n->cap_map = json_pack("{s:[],s:[],s:[]}", "https://tailscale.com/cap/file-sharing",
                           "https://tailscale.com/cap/is-admin", "https://tailscale.com/cap/ssh");
    (void)fixture_node;
}

static json_t *fixture_derp_map(void)
{
    struct tc_derp_map m = {0};
    struct tc_derp_region *r = tc_derp_map_add_region(&m, 901, "fxl", "fixturelab derper (plain HTTP)");
    struct tc_derp_node *dn = tc_derp_region_add_node(r, "901a", "127.0.0.1");
    dn->ipv4 = hw_strdup("127.0.0.1");
    dn->ipv6 = hw_strdup("none");
    dn->stun_port = 18478;
    dn->derp_port = 18340;
    json_t *j = tc_derp_map_to_json(&m);
    tc_derp_map_clear(&m);
    return j;
}

static json_t *fixture_dns(void)
{
    struct tc_dns_config c = {0};
    tc_dns_config_add_magic_reverse_routes(&c);
    tc_strv_push(&c.domains, "fixture.test");
    c.proxied = true;
    json_t *j = tc_dns_config_to_json(&c);
    tc_dns_config_clear(&c);
    return j;
}

static void first_map_response_matches_headscale(void)
{
    json_t *msg0 = json_array_get(json_object_get(json_object_get(g_map, "map_stream_fx_node1"),
                                                  "messages"), 0);
    const char *want_text = fxj_str(msg0, "json_text");
    json_t *want = parse_text(want_text);

    struct tc_node self;
    fill_node1_self(&self, json_object_get(want, "Node"));
    json_t *node = tc_node_to_json(&self);
    json_t *derp = fixture_derp_map(), *dns = fixture_dns();
    json_t *filters = json_pack("{s:o}", "base", tc_filter_allow_all());
    struct tc_user_profile alice = {.id = 1, .login_name = "alice", .display_name = "alice"};
    json_t *profiles = json_pack("[o]", tc_user_profile_to_json(&alice));
    struct tc_map_response m = {.node = node, .derp_map = derp, .dns_config = dns,
                                .domain = "127.0.0.1", .packet_filters = filters,
                                .user_profiles = profiles};
    tc_time_parse("2026-11-25T17:40:54.267348297Z", &m.control_time);
    json_t *got = tc_map_response_to_json(&m);

    char why[512];
    CHECK(!json_diff(got, want, "MapResponse", why, sizeof why), "%s", why);
    /* Same field order as Go and no floats in this message: the bytes match too. */
    char *text = tc_json_dump(got, NULL);
    CHECK(strcmp(text, want_text) == 0, "bytes differ:\n%s\n%s", text, want_text);
    free(text);

    json_decref(got);
    json_decref(node);
    json_decref(derp);
    json_decref(dns);
    json_decref(filters);
    json_decref(profiles);
    json_decref(want);
    tc_node_clear(&self);
}

/* fx-node4's first message has three peers. Peers come from stored state, so here they
 * are filled by parsing the fixture's own node objects (parse -> struct -> JSON). */
static void full_map_with_peers_matches_headscale(void)
{
    json_t *msg0 = json_array_get(json_object_get(json_object_get(g_map, "map_stream_fx_node4"),
                                                  "messages"), 0);
    json_t *want = parse_text(fxj_str(msg0, "json_text"));
    char err[TC_ERRLEN];
    struct tc_node self, peers[3];
    CHECK(tc_node_parse(json_object_get(want, "Node"), "Node", &self, err, sizeof err) == 0, "%s",
          err);
    json_t *wp = json_object_get(want, "Peers");
    CHECK_INT(json_array_size(wp), 3);
    json_t *pj[3];
    for (size_t i = 0; i < 3; i++) {
        CHECK(tc_node_parse(json_array_get(wp, i), "Peer", &peers[i], err, sizeof err) == 0, "%s",
              err);
        pj[i] = tc_node_to_json(&peers[i]);
    }
    CHECK_INT(peers[1].online, TC_FALSE);
    CHECK(peers[1].expired && peers[1].last_seen.set, "logged-out peer");
    json_t *node = tc_node_to_json(&self);
    json_t *derp = fixture_derp_map(), *dns = fixture_dns();
    json_t *filters = json_pack("{s:o}", "base", tc_filter_allow_all());
    struct tc_user_profile up[2] = {{.id = 1, .login_name = "alice", .display_name = "alice"},
                                    {.id = 2, .login_name = "bob", .display_name = "bob"}};
    json_t *profiles = json_pack("[o,o]", tc_user_profile_to_json(&up[0]),
                                 tc_user_profile_to_json(&up[1]));
    struct tc_map_response m = {.node = node, .derp_map = derp, .peers = pj, .n_peers = 3,
                                .dns_config = dns, .domain = "127.0.0.1",
                                .packet_filters = filters, .user_profiles = profiles};
    tc_time_parse(json_string_value(json_object_get(want, "ControlTime")), &m.control_time);
    json_t *got = tc_map_response_to_json(&m);
    char why[512];
    CHECK(!json_diff(got, want, "MapResponse", why, sizeof why), "%s", why);
    /* Spliced from pre-serialised peers: same message once parsed. */
    struct hw_sbuf *frags[3];
    for (size_t i = 0; i < 3; i++)
        frags[i] = tc_node_serialize(&peers[i]);
    struct tc_map_response head = m;
    head.peers = NULL;
    head.n_peers = 0;
    size_t slen;
    char *spliced = tc_map_response_dump_with_peers(&head, "Peers", frags, 3, &slen);
    CHECK_INT(slen, strlen(spliced));
    json_t *sj = parse_text(spliced);
    CHECK(sj && !json_diff(sj, want, "Spliced", why, sizeof why), "%s", why);
    json_decref(sj);
    free(spliced);
    struct tc_map_response empty = {0};
    spliced = tc_map_response_dump_with_peers(&empty, "PeersChanged", frags, 1, NULL);
    sj = parse_text(spliced);
    CHECK(sj && json_array_size(json_object_get(sj, "PeersChanged")) == 1, "%s", spliced);
    json_decref(sj);
    free(spliced);
    spliced = tc_map_response_dump_with_peers(&empty, "Peers", frags, 0, NULL);
    CHECK_STR(spliced, "{}");
    free(spliced);
    for (size_t i = 0; i < 3; i++)
        hw_sbuf_unref(frags[i]);

    /* The same peer objects can go into another session's message unchanged. */
    struct tc_map_response other = {.peers_changed = pj, .n_peers_changed = 3};
    json_t *delta = tc_map_response_to_json(&other);
    CHECK(json_array_get(json_object_get(delta, "PeersChanged"), 0) == pj[0], "shared object");
    CHECK(pj[0]->refcount == 3, "refcount %zu", pj[0]->refcount);
    json_decref(delta);
    json_decref(got);
    for (size_t i = 0; i < 3; i++) {
        json_decref(pj[i]);
        tc_node_clear(&peers[i]);
    }
    json_decref(node);
    json_decref(derp);
    json_decref(dns);
    json_decref(filters);
    json_decref(profiles);
    json_decref(want);
    tc_node_clear(&self);
}

/* Every message Headscale sent parses, and every node and patch in it prints back as
 * the same JSON. */
static void every_fixture_message_round_trips(void)
{
    const char *streams[] = {"map_stream_fx_node1", "map_stream_fx_node4", "map_stream_fx_node2"};
    int nodes = 0, patches = 0, msgs = 0;
    char err[TC_ERRLEN], why[512];
    for (size_t s = 0; s < HW_ARRAY_LEN(streams); s++) {
        json_t *ms = json_object_get(json_object_get(g_map, streams[s]), "messages");
        for (size_t i = 0; i < json_array_size(ms); i++) {
            const char *text = fxj_str(json_array_get(ms, i), "json_text");
            struct tc_map_update u;
            CHECK(tc_map_update_parse(u8(text), strlen(text), 1u << 24, &u, err, sizeof err) == 0,
                  "%s[%zu]: %s", streams[s], i, err);
            msgs++;
            json_t *j = parse_text(text);
            const char *lists[] = {"Peers", "PeersChanged"};
            if (u.has_node) {
                json_t *back = tc_node_to_json(&u.node);
                CHECK(!json_diff(back, json_object_get(j, "Node"), "Node", why, sizeof why),
                      "%s[%zu] %s", streams[s], i, why);
                json_decref(back);
                nodes++;
            }
            for (size_t l = 0; l < 2; l++) {
                json_t *arr = json_object_get(j, lists[l]);
                struct tc_node *parsed = l == 0 ? u.peers : u.peers_changed;
                for (size_t k = 0; k < json_array_size(arr); k++) {
                    json_t *back = tc_node_to_json(&parsed[k]);
                    CHECK(!json_diff(back, json_array_get(arr, k), lists[l], why, sizeof why),
                          "%s[%zu] %s", streams[s], i, why);
                    json_decref(back);
                    nodes++;
                }
            }
            json_t *pa = json_object_get(j, "PeersChangedPatch");
            for (size_t k = 0; k < json_array_size(pa); k++) {
                json_t *back = tc_peer_change_to_json(&u.patches[k]);
                CHECK(!json_diff(back, json_array_get(pa, k), "Patch", why, sizeof why), "%s", why);
                json_decref(back);
                patches++;
            }
            if (u.has_derp_map) {
                json_t *back = tc_derp_map_to_json(&u.derp_map);
                CHECK(!json_diff(back, json_object_get(j, "DERPMap"), "DERPMap", why, sizeof why),
                      "%s", why);
                json_decref(back);
            }
            json_decref(j);
            tc_map_update_free(&u);
        }
    }
    CHECK(msgs >= 56 && nodes >= 40 && patches >= 8, "msgs %d nodes %d patches %d", msgs, nodes,
          patches);
}

static void keepalive_and_small_builders(void)
{
    struct tc_map_response ka = {.keep_alive = true};
    json_t *j = tc_map_response_to_json(&ka);
    char *text = tc_json_dump(j, NULL);
    CHECK_STR(text, TC_KEEPALIVE_JSON);
    free(text);
    json_decref(j);

    struct tc_peer_change pc = {.node_id = 1, .online = TC_TRUE};
    j = tc_peer_change_to_json(&pc);
    int64_t removed[] = {5, 6};
    struct tc_id_bool online[] = {{3, false}};
    struct tc_map_response d = {.peers_changed_patch = &j, .n_peers_changed_patch = 1,
                                .peers_removed = removed, .n_peers_removed = 2,
                                .online_change = online, .n_online_change = 1,
                                .collect_services = TC_FALSE};
    tc_time_parse("2026-11-25T17:40:54.9283Z", &d.control_time);
    json_t *m = tc_map_response_to_json(&d);
    text = tc_json_dump(m, NULL);
    CHECK_STR(text, "{\"PeersRemoved\":[5,6],\"PeersChangedPatch\":[{\"NodeID\":1,\"Online\":true}],"
                    "\"OnlineChange\":{\"3\":false},\"CollectServices\":false,"
                    "\"ControlTime\":\"2026-11-25T17:40:54.9283Z\"}");
    free(text);
    json_decref(m);
    json_decref(j);

    /* Namespace isolation rule. */
    struct tc_strv ips = {0};
    tc_strv_push(&ips, "100.64.0.1");
    tc_strv_push(&ips, "fd7a:115c:a1e0::1");
    j = tc_filter_allow_among(&ips);
    text = tc_json_dump(j, NULL);
    CHECK_STR(text, "[{\"SrcIPs\":[\"100.64.0.1\",\"fd7a:115c:a1e0::1\"],\"DstPorts\":["
                    "{\"IP\":\"100.64.0.1\",\"Ports\":{\"First\":0,\"Last\":65535}},"
                    "{\"IP\":\"fd7a:115c:a1e0::1\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]");
    char ferr[TC_ERRLEN];
    CHECK(tc_filter_rules_check(j, "PacketFilter", ferr, sizeof ferr) == 0, "%s", ferr);
    free(text);
    json_decref(j);
    tc_strv_clear(&ips);

    /* DERP map corner forms: STUN disabled (-1) is sent, keys are decimal strings. */
    struct tc_derp_map dm = {.omit_default_regions = true};
    struct tc_derp_region *r = tc_derp_map_add_region(&dm, 1000, "big", "Big");
    tc_derp_region_add_node(r, "1000a", "derp.example.com")->stun_port = -1;
    tc_derp_map_add_region(&dm, 901, "a", "A");
    j = tc_derp_map_to_json(&dm);
    text = tc_json_dump(j, NULL);
    CHECK_STR(text, "{\"Regions\":{\"1000\":{\"RegionID\":1000,\"RegionCode\":\"big\","
                    "\"RegionName\":\"Big\",\"Nodes\":[{\"Name\":\"1000a\",\"RegionID\":1000,"
                    "\"HostName\":\"derp.example.com\",\"STUNPort\":-1}]},\"901\":{\"RegionID\":901,"
                    "\"RegionCode\":\"a\",\"RegionName\":\"A\",\"Nodes\":[]}},"
                    "\"omitDefaultRegions\":true}");
    struct tc_derp_map back;
    char err[TC_ERRLEN];
    CHECK(tc_derp_map_parse(j, &back, err, sizeof err) == 0, "%s", err);
    CHECK(back.n_regions == 2 && back.omit_default_regions, "parsed back");
    CHECK_INT(tc_derp_map_region(&back, 1000)->nodes[0].stun_port, -1);
    tc_derp_map_clear(&back);
    free(text);
    json_decref(j);
    tc_derp_map_clear(&dm);
}

/* ---- hostile input -------------------------------------------------------------------------- */

static void expect_reg_error(const char *body, const char *needle, char *why, size_t len, int *ok)
{
    struct tc_register_request r;
    char err[TC_ERRLEN] = "";
    int rc = tc_register_request_parse(u8(body), strlen(body), &r, err, sizeof err);
    *ok = rc == -1 && strstr(err, needle) != NULL;
    snprintf(why, len, "rc=%d err=\"%s\" want \"%s\"", rc, err, needle);
    if (rc == 0)
        tc_register_request_free(&r);
}

static void garbage_register_requests(void)
{
    char why[600];
    int ok;
    const char *nk = "\"nodekey:964a9e45804b2dfa64a99cf3a2a899d5e2d60f78301fc9f5d95d31866f33a505\"";
    char body[1024];
    struct {
        const char *fmt;
        const char *needle;
    } cases[] = {
        {"{\"Version\":133,\"NodeKey\":", "invalid JSON"},
        {"[1,2]", "expected a JSON object"},
        {"{\"Version\":\"133\",\"NodeKey\":%s}", "RegisterRequest.Version: expected an integer"},
        {"{\"Version\":133,\"NodeKey\":5}", "RegisterRequest.NodeKey: expected a string"},
        {"{\"Version\":133,\"NodeKey\":\"nodekey:abc\"}",
         "RegisterRequest.NodeKey: expected nodekey:<64 hex>"},
        {"{\"Version\":133}", "RegisterRequest.NodeKey: missing"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Expiry\":\"yesterday\"}",
         "RegisterRequest.Expiry: expected an RFC 3339 time"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Auth\":\"key\"}", "RegisterRequest.Auth: expected an object"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Auth\":{\"AuthKey\":7}}",
         "RegisterRequest.Auth.AuthKey: expected a string"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Hostinfo\":{\"Hostname\":[]}}",
         "RegisterRequest.Hostinfo.Hostname: expected a string"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Hostinfo\":{\"RoutableIPs\":[\"10.0.0.0/99\"]}}",
         "RegisterRequest.Hostinfo.RoutableIPs: element 0"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Hostinfo\":{\"NetInfo\":{\"PreferredDERP\":\"x\"}}}",
         "Hostinfo.NetInfo.PreferredDERP: expected an integer"},
        {"{\"Version\":133,\"NodeKey\":%s,\"NLKey\":\"nlpub:00\"}", "RegisterRequest.NLKey"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Ephemeral\":\"yes\"}",
         "RegisterRequest.Ephemeral: expected true or false"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        with_key(body, sizeof body, cases[i].fmt, nk);
        expect_reg_error(body, cases[i].needle, why, sizeof why, &ok);
        CHECK(ok, "case %zu: %s", i, why);
    }
    /* Size and depth bounds. */
    size_t big = TC_MAX_BODY + 1;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[0] = '{';
    huge[big - 1] = '}';
    huge[big] = '\0';
    expect_reg_error(huge, "exceeds the 1048576-byte limit", why, sizeof why, &ok);
    free(huge);
    CHECK(ok, "%s", why);
    char deep[400] = "{\"a\":";
    for (int i = 0; i < 60; i++)
        strcat(deep, "[");
    expect_reg_error(deep, "nested deeper", why, sizeof why, &ok);
    CHECK(ok, "%s", why);
    expect_reg_error("", "empty body", why, sizeof why, &ok);
    CHECK(ok, "%s", why);
}

static void garbage_map_requests(void)
{
    const char *nk = "\"nodekey:964a9e45804b2dfa64a99cf3a2a899d5e2d60f78301fc9f5d95d31866f33a505\"";
    struct {
        const char *fmt;
        const char *needle;
    } cases[] = {
        {"{\"Version\":133,\"NodeKey\":%s,\"Compress\":\"gzip\"}", "MapRequest.Compress"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Endpoints\":[\"1.2.3.4\"]}",
         "MapRequest.Endpoints: element 0: expected an ip:port"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Endpoints\":[\"1.2.3.4:1\"],\"EndpointTypes\":[1,2]}",
         "2 types for 1 endpoints"},
        {"{\"Version\":133,\"NodeKey\":%s,\"EndpointTypes\":[\"x\"]}", "MapRequest.EndpointTypes"},
        {"{\"Version\":133,\"NodeKey\":%s,\"DiscoKey\":\"nodekey:00\"}",
         "MapRequest.DiscoKey: expected discokey:<64 hex>"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Stream\":1}", "MapRequest.Stream: expected true or false"},
        {"{\"Version\":133,\"NodeKey\":%s,\"DebugFlags\":[1]}", "MapRequest.DebugFlags"},
        {"{\"Version\":133,\"NodeKey\":%s,\"Hostinfo\":7}", "MapRequest.Hostinfo: expected an object"},
    };
    char body[512];
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        with_key(body, sizeof body, cases[i].fmt, nk);
        struct tc_map_request r;
        char err[TC_ERRLEN] = "";
        int rc = tc_map_request_parse(u8(body), strlen(body), &r, err, sizeof err);
        CHECK(rc == -1 && strstr(err, cases[i].needle), "case %zu: rc=%d err=%s", i, rc, err);
    }
    /* Uncompressed form requested: allowed and reported. */
    snprintf(body, sizeof body, "{\"Version\":133,\"NodeKey\":%s}", nk);
    struct tc_map_request r;
    char err[TC_ERRLEN];
    CHECK(tc_map_request_parse(u8(body), strlen(body), &r, err, sizeof err) == 0, "%s", err);
    CHECK_STR(r.compress, "");
    CHECK(!r.stream && !r.omit_peers && !r.hostinfo.raw, "defaults");
    tc_map_request_free(&r);
}

static void garbage_map_responses(void)
{
    struct {
        const char *text;
        const char *needle;
    } cases[] = {
        {"{\"Node\":{\"ID\":1}}", "MapResponse.Node.Key: missing"},
        {"{\"Node\":{\"ID\":0,\"Key\":\"nodekey:0000000000000000000000000000000000000000000000000000000000000000\"}}",
         "MapResponse.Node.ID: missing or zero"},
        {"{\"Peers\":[null]}", "MapResponse.Peers[0]: expected a Node object"},
        {"{\"PeersRemoved\":[\"1\"]}", "MapResponse.PeersRemoved"},
        {"{\"DERPMap\":{\"Regions\":{\"abc\":{}}}}", "region key must be a positive decimal id"},
        {"{\"DERPMap\":{\"Regions\":{\"900\":{\"RegionID\":901}}}}", "does not match its key"},
        {"{\"DERPMap\":{\"Regions\":{\"900\":{\"RegionID\":900,\"Nodes\":[{\"Name\":\"a\"}]}}}}",
         "HostName: missing"},
        {"{\"PacketFilter\":[{\"SrcIPs\":\"*\"}]}", "PacketFilter[0].SrcIPs"},
        {"{\"PacketFilters\":{\"base\":[{\"SrcIPs\":[\"*\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":70000}}]}]}}",
         "out of range"},
        {"{\"UserProfiles\":[{\"LoginName\":\"x\"}]}", "MapResponse.UserProfiles"},
        {"{\"ControlTime\":5}", "MapResponse.ControlTime: expected a string"},
        {"{\"CollectServices\":\"maybe\"}", "MapResponse.CollectServices"},
    };
    for (size_t i = 0; i < HW_ARRAY_LEN(cases); i++) {
        struct tc_map_update u;
        char err[TC_ERRLEN] = "";
        int rc = tc_map_update_parse(u8(cases[i].text), strlen(cases[i].text), 1 << 20, &u, err,
                                     sizeof err);
        CHECK(rc == -1 && strstr(err, cases[i].needle), "case %zu: rc=%d err=%s", i, rc, err);
    }
    /* Region set to null is dropped, as upstream does. */
    const char *nullregion = "{\"DERPMap\":{\"Regions\":{\"900\":null}}}";
    struct tc_map_update u;
    char err[TC_ERRLEN];
    CHECK(tc_map_update_parse(u8(nullregion), strlen(nullregion), 1 << 20, &u, err, sizeof err) == 0,
          "%s", err);
    CHECK(u.has_derp_map && u.derp_map.n_regions == 0 && !u.derp_map.regions_null, "dropped");
    tc_map_update_free(&u);
}

/* Deterministic byte mutations of real bodies: every parser must answer (either way)
 * without crashing or leaking; run under ASan this is a small fuzz pass. */
static void mutated_inputs_never_crash(void)
{
    const char *bodies[3];
    bodies[0] = fxj_str(reg_exchange("logout_fx_node2", -1), "request_body");
    bodies[1] = fxj_str(json_array_get(json_object_get(g_map, "lite_updates"), 1), "request_body");
    bodies[2] = fxj_str(json_array_get(json_object_get(json_object_get(g_map, "map_stream_fx_node4"),
                                                      "messages"), 0), "json_text");
    uint32_t seed = 12345;
    int accepted = 0;
    for (int round = 0; round < 3000; round++) {
        const char *src = bodies[round % 3];
        size_t len = strlen(src);
        char *buf = malloc(len + 1);
        memcpy(buf, src, len + 1);
        int flips = 1 + round % 4;
        for (int f = 0; f < flips; f++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % len;
            seed = seed * 1103515245u + 12345u;
            const char pool[] = "{}[]\":,0129aefz-.nulltrue \\";
            buf[at] = pool[(seed >> 8) % (sizeof pool - 1)];
        }
        char err[TC_ERRLEN];
        if (round % 3 == 0) {
            struct tc_register_request r;
            if (tc_register_request_parse(u8(buf), len, &r, err, sizeof err) == 0) {
                accepted++;
                tc_register_request_free(&r);
            }
        } else if (round % 3 == 1) {
            struct tc_map_request r;
            if (tc_map_request_parse(u8(buf), len, &r, err, sizeof err) == 0) {
                accepted++;
                tc_map_request_free(&r);
            }
        } else {
            struct tc_map_update u;
            if (tc_map_update_parse(u8(buf), len, 1u << 24, &u, err, sizeof err) == 0) {
                accepted++;
                tc_map_update_free(&u);
            }
        }
        free(buf);
    }
    CHECK(accepted > 0 && accepted < 3000, "accepted %d of 3000 mutants", accepted);
}

int main(void)
{
    g_reg = fxj_load("real-client-register.json");
    g_map = fxj_load("real-client-map.json");
    RUN(times_parse_and_print_like_go);
    RUN(keys_and_addresses);
    RUN(register_requests_parse);
    RUN(register_responses_match_headscale);
    RUN(register_error_response);
    RUN(map_requests_parse);
    RUN(first_map_response_matches_headscale);
    RUN(full_map_with_peers_matches_headscale);
    RUN(every_fixture_message_round_trips);
    RUN(keepalive_and_small_builders);
    RUN(garbage_register_requests);
    RUN(garbage_map_requests);
    RUN(garbage_map_responses);
    RUN(mutated_inputs_never_crash);
    json_decref(g_reg);
    json_decref(g_map);
    return TEST_MAIN_END();
}
