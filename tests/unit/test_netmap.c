#include <stdlib.h>
#include <string.h>

#include "proto/netmap.h"
#include "proto/tailcfg.h"
#include "tests/unit/fixture.h"
#include "tests/unit/testlib.h"

static json_t *g_map;

static json_t *messages(const char *stream)
{
    return json_object_get(json_object_get(g_map, stream), "messages");
}

/* Applies messages [from, to) of a fixture stream. */
static int replay(struct tc_netmap *nm, const char *stream, size_t from, size_t to, char *err)
{
    json_t *msgs = messages(stream);
    for (size_t i = from; i < to && i < json_array_size(msgs); i++) {
        const char *text = fxj_str(json_array_get(msgs, i), "json_text");
        if (tc_netmap_apply_json(nm, text, strlen(text), err, TC_ERRLEN) < 0)
            return -1;
    }
    return 0;
}

static bool has_endpoints(const struct tc_node *n, const char *only)
{
    return n->endpoints.n == 1 && strcmp(n->endpoints.v[0], only) == 0;
}

static bool key_is(const uint8_t k[32], const char *text, const char *prefix)
{
    uint8_t want[32];
    return tc_key_parse(text, prefix, want) == 0 && memcmp(k, want, 32) == 0;
}

/* The final state below is read off real-client-map.json by hand:
 *  - self (msg 4): endpoint 127.0.0.1:18641, home DERP 901 (from "DERP"/HomeDERP).
 *  - peer 2 (bob): logged out at msg 21 (KeyExpiry 1970-01-01T00:02:03Z, Expired, no
 *    MachineAuthorized), patched offline at msg 24. Msg 25 repeats it with Online:false
 *    and a LastSeen; since only patchable fields could differ, the client turns it into
 *    a patch, and a LastSeen is only patched over an existing one: none is kept.
 *  - peer 3: msg 25, endpoint 127.0.0.1:18643, online.
 *  - peer 4: appears at msg 22 without a disco key, gets it at 23 (a patch), is
 *    replaced whole at 26 (Hostinfo gained NetInfo; Online:true), endpoints patched at
 *    29 to 127.0.0.1:18644.
 *  - five keep-alives (19, 20, 30-32) change nothing. */
static void fx_node1_stream_final_state(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    json_t *msgs = messages("map_stream_fx_node1");
    CHECK_INT(json_array_size(msgs), 33);

    CHECK(replay(&nm, "map_stream_fx_node1", 0, 1, err) == 0, "%s", err);
    CHECK(nm.has_self, "self after the first message");
    CHECK_INT(nm.n_peers, 0);
    CHECK_INT(nm.self.home_derp, 0); /* "DERP":"127.3.3.40:0" before NetInfo */
    CHECK(nm.has_derp_map && nm.derp_map.n_regions == 1, "DERP map");

    CHECK(replay(&nm, "map_stream_fx_node1", 1, 6, err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 1);
    CHECK_INT(nm.peers[0].id, 2);
    CHECK_INT(nm.peers[0].online, TC_UNSET); /* msgs 5-6 carry no Online for node 2 */
    CHECK(replay(&nm, "map_stream_fx_node1", 6, 9, err) == 0, "%s", err);
    CHECK_INT(nm.peers[0].online, TC_TRUE);

    CHECK(replay(&nm, "map_stream_fx_node1", 9, 23, err) == 0, "%s", err);
    const struct tc_node *p4 = tc_netmap_peer(&nm, 4);
    CHECK(p4 && tc_key_is_zero(p4->disco_key), "msg 22: node 4 without disco key");
    CHECK(replay(&nm, "map_stream_fx_node1", 23, 24, err) == 0, "%s", err);
    p4 = tc_netmap_peer(&nm, 4);
    CHECK(p4 && !tc_key_is_zero(p4->disco_key), "msg 23: node 4 got its disco key");

    CHECK(replay(&nm, "map_stream_fx_node1", 24, 33, err) == 0, "%s", err);
    CHECK_INT(nm.messages, 28);

    CHECK_INT(nm.self.id, 1);
    CHECK_STR(nm.self.name, "fx-node1.fixture.test.");
    CHECK(has_endpoints(&nm.self, "127.0.0.1:18641"), "self endpoints");
    CHECK_INT(nm.self.home_derp, 901);
    CHECK(!nm.self.legacy_derp, "legacy DERP string folded into HomeDERP");
    CHECK_INT(nm.self.allowed_ips.n, 2);
    CHECK(nm.self.machine_authorized, "self authorized");

    CHECK_INT(nm.n_peers, 3);
    CHECK(nm.peers[0].id == 2 && nm.peers[1].id == 3 && nm.peers[2].id == 4, "sorted 2,3,4");

    const struct tc_node *p2 = tc_netmap_peer(&nm, 2);
    CHECK(p2->expired, "node 2 expired");
    CHECK_INT(p2->online, TC_FALSE);
    CHECK(p2->key_expiry.set && p2->key_expiry.sec == 123, "logout expiry");
    CHECK(!p2->machine_authorized, "node 2 not authorized after logout");
    CHECK(!p2->last_seen.set, "LastSeen not patched over an absent one");
    CHECK(has_endpoints(p2, "127.0.0.1:18642"), "node 2 endpoints");
    CHECK_INT(p2->home_derp, 901);
    CHECK(key_is(p2->key, "nodekey:771c11ff772f8cf22c2abef009a9be83a315fd8225561c7384c3a1639829dd2c",
                 "nodekey"), "node 2 key");

    const struct tc_node *p3 = tc_netmap_peer(&nm, 3);
    CHECK_INT(p3->online, TC_TRUE);
    CHECK(has_endpoints(p3, "127.0.0.1:18643"), "node 3 endpoints");
    CHECK_INT(p3->home_derp, 901);
    CHECK_INT(p3->user, 1);
    CHECK(key_is(p3->disco_key,
                 "discokey:e08118aeefb4fd0ca297067f80628181a83e1913cd3544da26fc73850c8c7f5e",
                 "discokey"), "node 3 disco key");

    p4 = tc_netmap_peer(&nm, 4);
    CHECK_INT(p4->online, TC_TRUE);
    CHECK(has_endpoints(p4, "127.0.0.1:18644"), "node 4 endpoints");
    CHECK_INT(p4->home_derp, 901);
    CHECK(key_is(p4->disco_key,
                 "discokey:f4eaa3718f1330a4fe2f8f41d36e20996cd06721695da0ddc40d794bae7c8209",
                 "discokey"), "node 4 disco key");
    CHECK(tc_netmap_peer_by_key(&nm, p4->key) == p4, "lookup by key");

    CHECK_STR(nm.domain, "127.0.0.1");
    CHECK(json_is_true(json_object_get(nm.dns_config, "Proxied")), "MagicDNS on");
    CHECK_INT(json_array_size(nm.packet_filter_rules), 1);
    json_t *allow = tc_filter_allow_all();
    CHECK(json_equal(nm.packet_filter_rules, allow), "allow-all filter");
    json_decref(allow);
    CHECK_INT(json_object_size(nm.user_profiles), 2);
    CHECK_STR(json_string_value(json_object_get(json_object_get(nm.user_profiles, "2"), "LoginName")),
              "bob");
    char t[TC_TIME_TEXT_MAX];
    tc_time_format(&nm.control_time, t);
    CHECK_STR(t, "2026-11-25T17:44:52.528127215Z");
    const struct tc_derp_region *r = tc_derp_map_region(&nm.derp_map, 901);
    CHECK(r && r->n_nodes == 1, "region 901");
    CHECK_STR(r->nodes[0].host_name, "127.0.0.1");
    CHECK_INT(r->nodes[0].derp_port, 18340);
    CHECK_INT(r->nodes[0].stun_port, 18478);
    tc_netmap_clear(&nm);
}

static void fx_node4_first_message_has_three_peers(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    CHECK(replay(&nm, "map_stream_fx_node4", 0, 1, err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 3);
    const struct tc_node *p2 = tc_netmap_peer(&nm, 2);
    CHECK(p2->expired && p2->online == TC_FALSE && p2->last_seen.set, "offline peer 2");
    CHECK_INT(tc_netmap_peer(&nm, 1)->online, TC_TRUE);
    CHECK(replay(&nm, "map_stream_fx_node4", 1, 100, err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 3);
    CHECK(has_endpoints(&nm.self, "127.0.0.1:18644"), "self endpoints from the Node deltas");
    tc_netmap_clear(&nm);
}

/* ---- synthetic sequences ----------------------------------------------------------------- */

static char *hexkey(const char *prefix, int fill)
{
    uint8_t k[32];
    memset(k, fill, sizeof k);
    char *out = malloc(TC_KEY_TEXT_MAX);
    tc_key_format(prefix, k, out);
    return out;
}

static json_t *mknode(int id, const char *endpoint)
{
    char name[32], addr[32];
    snprintf(name, sizeof name, "n%d.example.com.", id);
    snprintf(addr, sizeof addr, "100.64.%d.%d/32", id / 256, id % 256);
    char *k = hexkey("nodekey", id), *d = hexkey("discokey", 100 + id);
    json_t *n = json_pack("{s:i,s:s,s:i,s:s,s:s,s:[s],s:i,s:{s:s}}", "ID", id, "Name", name,
                          "User", 1, "Key", k, "DiscoKey", d, "Addresses", addr, "HomeDERP", 900,
                          "Hostinfo", "Hostname", name);
    if (endpoint)
        json_object_set_new(n, "Endpoints", json_pack("[s]", endpoint));
    free(k);
    free(d);
    return n;
}

static int apply(struct tc_netmap *nm, json_t *msg, char *err)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    int r = tc_netmap_apply_json(nm, text, strlen(text), err, TC_ERRLEN);
    free(text);
    json_decref(msg);
    return r;
}

static json_t *first_message(int n_peers)
{
    json_t *peers = json_array();
    for (int i = 2; i < 2 + n_peers; i++)
        json_array_append_new(peers, mknode(i, "192.0.2.1:41641"));
    json_t *m = json_pack("{s:o,s:o,s:s,s:{s:{s:{s:i,s:s,s:s,s:[{s:s,s:i,s:s}]}}},s:{s:[s]}}",
                          "Node", mknode(1, NULL), "Peers", peers, "Domain", "example.com",
                          "DERPMap", "Regions", "900", "RegionID", 900, "RegionCode", "home",
                          "RegionName", "Home", "Nodes", "Name", "900a", "RegionID", 900, "HostName",
                          "derp.example.com", "DNSConfig", "Domains", "example.com");
    json_object_set_new(m, "PacketFilters", json_pack("{s:o}", "base", tc_filter_allow_all()));
    return m;
}

static void first_message_must_have_node(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    CHECK(apply(&nm, json_pack("{s:b}", "KeepAlive", 1), err) == 0, "keep-alive first is fine");
    CHECK(apply(&nm, json_pack("{s:s}", "Domain", "x"), err) == -1, "no node");
    CHECK(strstr(err, "initial MapResponse lacked node") != NULL, "%s", err);
    CHECK(nm.domain == NULL, "rejected message changed nothing");
    tc_netmap_clear(&nm);
}

static void deltas_follow_upstream_rules(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    CHECK(apply(&nm, first_message(4), err) == 0, "%s", err); /* peers 2..5 */
    CHECK_INT(nm.n_peers, 4);

    /* Keep-alive: nothing moves. */
    CHECK(apply(&nm, json_pack("{s:b}", "KeepAlive", 1), err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 4);
    CHECK_INT(nm.messages, 1);

    /* Sticky fields survive a message without them. */
    CHECK(apply(&nm, json_pack("{s:[i]}", "PeersRemoved", 3), err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 3);
    CHECK(tc_netmap_peer(&nm, 3) == NULL, "3 removed");
    CHECK_STR(nm.domain, "example.com");
    CHECK(nm.has_derp_map && nm.derp_map.n_regions == 1, "DERP map kept");
    CHECK_INT(json_array_size(json_object_get(nm.dns_config, "Domains")), 1);

    /* Online / seen maps; unknown ids are ignored. */
    CHECK(apply(&nm, json_pack("{s:{s:b,s:b},s:{s:b}}", "OnlineChange", "2", 1, "99", 1,
                               "PeerSeenChange", "4", 1),
                err) == 0,
          "%s", err);
    CHECK_INT(tc_netmap_peer(&nm, 2)->online, TC_TRUE);
    CHECK(tc_netmap_peer(&nm, 4)->last_seen.set, "seen now");
    CHECK(apply(&nm, json_pack("{s:{s:b}}", "PeerSeenChange", "4", 0), err) == 0, "%s", err);
    CHECK(!tc_netmap_peer(&nm, 4)->last_seen.set, "seen cleared");

    /* Every patchable field. */
    char *nk = hexkey("nodekey", 0x77), *dk = hexkey("discokey", 0x66);
    json_t *patch = json_pack(
        "{s:[{s:i,s:i,s:i,s:[s,s],s:s,s:s,s:b,s:s,s:s,s:{s:[]}},{s:i,s:b}]}",
        "PeersChangedPatch", "NodeID", 2, "DERPRegion", 901, "Cap", 140, "Endpoints",
        "198.51.100.7:1", "[2001:db8::1]:2", "Key", nk, "DiscoKey", dk, "Online", 0, "LastSeen",
        "2026-01-02T03:04:05Z", "KeyExpiry", "2027-01-01T00:00:00Z", "CapMap", "cap/x", "NodeID",
        12345, "Online", 1);
    CHECK(apply(&nm, patch, err) == 0, "%s", err);
    const struct tc_node *p2 = tc_netmap_peer(&nm, 2);
    CHECK_INT(p2->home_derp, 901);
    CHECK_INT(p2->cap, 140);
    CHECK(p2->endpoints.n == 2 && strcmp(p2->endpoints.v[1], "[2001:db8::1]:2") == 0, "endpoints");
    CHECK(key_is(p2->key, nk, "nodekey") && key_is(p2->disco_key, dk, "discokey"), "keys");
    CHECK_INT(p2->online, TC_FALSE);
    CHECK(p2->last_seen.set && p2->key_expiry.set, "times");
    CHECK(json_object_get(p2->cap_map, "cap/x") != NULL, "cap map replaced");
    CHECK(p2->addresses.n == 1, "untouched fields stay");
    free(nk);
    free(dk);

    /* PeersChanged that only differs in patchable fields keeps a stored Online... */
    CHECK(apply(&nm, json_pack("{s:{s:b}}", "OnlineChange", "4", 1), err) == 0, "%s", err);
    CHECK(apply(&nm, json_pack("{s:[o]}", "PeersChanged", mknode(4, "203.0.113.9:9")), err) == 0,
          "%s", err);
    const struct tc_node *p4 = tc_netmap_peer(&nm, 4);
    CHECK_INT(p4->online, TC_TRUE);
    CHECK(has_endpoints(p4, "203.0.113.9:9"), "endpoints patched");
    /* ...but a structural change replaces the node whole. */
    json_t *n4 = mknode(4, "203.0.113.9:9");
    json_object_set_new(n4, "Tags", json_pack("[s]", "tag:server"));
    CHECK(apply(&nm, json_pack("{s:[o]}", "PeersChanged", n4), err) == 0, "%s", err);
    p4 = tc_netmap_peer(&nm, 4);
    CHECK_INT(p4->online, TC_UNSET);
    CHECK(p4->tags.n == 1, "tags");

    /* A new peer through PeersChanged, inserted in order. */
    CHECK(apply(&nm, json_pack("{s:[o]}", "PeersChanged", mknode(3, NULL)), err) == 0, "%s", err);
    CHECK(nm.n_peers == 4 && nm.peers[1].id == 3, "inserted in id order");

    /* An empty Peers list is "absent"; a non-empty one replaces and ignores removals. */
    CHECK(apply(&nm, json_pack("{s:[]}", "Peers"), err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 4);
    CHECK(apply(&nm, json_pack("{s:[o,o],s:[i]}", "Peers", mknode(7, NULL), mknode(6, NULL),
                               "PeersRemoved", 6),
                err) == 0,
          "%s", err);
    CHECK(nm.n_peers == 2 && nm.peers[0].id == 6 && nm.peers[1].id == 7, "replaced: 6,7");

    /* DERPMap without Regions keeps the regions; HomeParams added. */
    CHECK(apply(&nm, json_pack("{s:{s:{s:{s:f}}}}", "DERPMap", "HomeParams", "RegionScore", "900",
                               0.5),
                err) == 0,
          "%s", err);
    CHECK(nm.derp_map.n_regions == 1 && nm.derp_map.home_params, "regions kept, params set");

    /* Packet filter chunks. */
    CHECK(apply(&nm, json_pack("{s:{s:[]}}", "PacketFilters", "extra"), err) == 0, "%s", err);
    CHECK_INT(json_object_size(nm.packet_filters), 2);
    CHECK_INT(json_array_size(nm.packet_filter_rules), 1);
    CHECK(apply(&nm, json_pack("{s:{s:n,s:[]}}", "PacketFilters", "*", "z"), err) == 0, "%s", err);
    CHECK_INT(json_object_size(nm.packet_filters), 1);
    CHECK_INT(json_array_size(nm.packet_filter_rules), 0);
    CHECK(apply(&nm, json_pack("{s:o}", "PacketFilter", tc_filter_allow_all()), err) == 0, "%s",
          err);
    CHECK_INT(json_array_size(nm.packet_filter_rules), 1);

    /* Self node replaced by Node. */
    json_t *self = mknode(1, "192.0.2.55:1");
    CHECK(apply(&nm, json_pack("{s:o}", "Node", self), err) == 0, "%s", err);
    CHECK(has_endpoints(&nm.self, "192.0.2.55:1"), "self replaced");
    tc_netmap_clear(&nm);
}

static void bad_messages_are_rejected_whole(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    CHECK(apply(&nm, first_message(2), err) == 0, "%s", err);
    /* A valid removal next to a malformed patch: nothing applies. */
    CHECK(apply(&nm, json_pack("{s:[i],s:[{s:i,s:s}]}", "PeersRemoved", 2, "PeersChangedPatch",
                               "NodeID", 3, "Key", "nodekey:zz"),
                err) == -1,
          "bad key");
    CHECK(strstr(err, "PeersChangedPatch[0].Key") != NULL, "%s", err);
    CHECK_INT(nm.n_peers, 2);
    CHECK(apply(&nm, json_pack("{s:[{s:s}]}", "PeersChanged", "ID", "7"), err) == -1, "string ID");
    CHECK(strstr(err, "PeersChanged[0].ID") != NULL, "%s", err);
    CHECK(apply(&nm, json_pack("{s:{s:i}}", "OnlineChange", "x", 1), err) == -1, "bad map");
    CHECK(tc_netmap_apply_json(&nm, "{\"Node\":", 8, err, TC_ERRLEN) == -1, "truncated JSON");
    CHECK(strstr(err, "invalid JSON") != NULL, "%s", err);
    CHECK_INT(nm.n_peers, 2);
    tc_netmap_clear(&nm);
}

static void netmap_json_output(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    CHECK(replay(&nm, "map_stream_fx_node1", 0, 33, err) == 0, "%s", err);
    json_t *j = tc_netmap_to_json(&nm);
    CHECK_STR(json_string_value(json_object_get(j, "Name")), "fx-node1.fixture.test.");
    CHECK_INT(json_array_size(json_object_get(j, "Peers")), 3);
    json_t *p2 = json_array_get(json_object_get(j, "Peers"), 0);
    CHECK(json_is_false(json_object_get(p2, "Online")), "peer 2 offline in JSON");
    CHECK(json_object_get(json_object_get(json_object_get(j, "DERPMap"), "Regions"), "901"),
          "region 901");
    /* Peers print back as Node objects a parser accepts. */
    struct tc_node back;
    CHECK(tc_node_parse(p2, "Peers[0]", &back, err, sizeof err) == 0, "%s", err);
    CHECK_INT(back.id, 2);
    tc_node_clear(&back);
    json_decref(j);
    tc_netmap_clear(&nm);
}

/* A full map of many peers, then one delta: the sorted store must stay cheap. */
static void large_map(void)
{
    struct tc_netmap nm;
    char err[TC_ERRLEN];
    tc_netmap_init(&nm);
    json_t *m = first_message(0);
    json_t *peers = json_array();
    for (int i = 2; i < 5002; i++)
        json_array_append_new(peers, mknode(i, "192.0.2.1:41641"));
    json_object_set_new(m, "Peers", peers);
    CHECK(apply(&nm, m, err) == 0, "%s", err);
    CHECK_INT(nm.n_peers, 5000);
    CHECK(apply(&nm, json_pack("{s:[i,i],s:[{s:i,s:b}]}", "PeersRemoved", 2, 4000,
                               "PeersChangedPatch", "NodeID", 4500, "Online", 1),
                err) == 0,
          "%s", err);
    CHECK_INT(nm.n_peers, 4998);
    CHECK_INT(tc_netmap_peer(&nm, 4500)->online, TC_TRUE);
    for (size_t i = 1; i < nm.n_peers; i++)
        CHECK(nm.peers[i - 1].id < nm.peers[i].id, "sorted at %zu", i);
    tc_netmap_clear(&nm);
}

/* The fx-node1 stream with bytes flipped: whatever parses is applied, the rest is
 * refused; the netmap stays consistent (sorted, no crash, no leak under ASan). */
static void mutated_stream_keeps_netmap_consistent(void)
{
    json_t *msgs = messages("map_stream_fx_node1");
    uint32_t seed = 4242;
    for (int round = 0; round < 40; round++) {
        struct tc_netmap nm;
        tc_netmap_init(&nm);
        for (size_t i = 0; i < json_array_size(msgs); i++) {
            const char *src = fxj_str(json_array_get(msgs, i), "json_text");
            size_t len = strlen(src);
            char *buf = malloc(len + 1);
            memcpy(buf, src, len + 1);
            seed = seed * 1103515245u + 12345u;
            const char pool[] = "0123456789\":,{}[]ntf";
            buf[(seed >> 8) % len] = pool[(seed >> 3) % (sizeof pool - 1)];
            char err[TC_ERRLEN];
            tc_netmap_apply_json(&nm, buf, len, err, sizeof err);
            free(buf);
        }
        for (size_t i = 1; i < nm.n_peers; i++)
            CHECK(nm.peers[i - 1].id < nm.peers[i].id, "sorted");
        json_t *j = tc_netmap_to_json(&nm);
        json_decref(j);
        tc_netmap_clear(&nm);
    }
}

int main(void)
{
    g_map = fxj_load("real-client-map.json");
    RUN(fx_node1_stream_final_state);
    RUN(fx_node4_first_message_has_three_peers);
    RUN(first_message_must_have_node);
    RUN(deltas_follow_upstream_rules);
    RUN(bad_messages_are_rejected_whole);
    RUN(netmap_json_output);
    RUN(large_map);
    RUN(mutated_stream_keeps_netmap_consistent);
    json_decref(g_map);
    return TEST_MAIN_END();
}
