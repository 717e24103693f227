/* proto/mapscan: the light MapResponse reader must see the same ids as the full parser
 * (tc_map_update_parse) on every real message, and refuse broken text without crashing. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mapframe.h"
#include "proto/mapscan.h"
#include "proto/tailcfg.h"
#include "tests/unit/fixture.h"
#include "tests/unit/testlib.h"

static json_t *g_map; /* real-client-map.json */

static int scan(struct tc_mapscan *s, const char *text)
{
    char err[TC_ERRLEN];
    return tc_mapscan_run(s, text, strlen(text), err, sizeof err);
}

/* Every element span is itself a JSON object carrying the id the scanner reported. */
static bool spans_hold_ids(const char *text, const struct tc_mapscan_list *l, const char *idkey)
{
    for (size_t i = 0; i < l->n; i++) {
        json_error_t je;
        json_t *o = json_loadb(text + l->v[i].off, l->v[i].len, 0, &je);
        bool ok = json_is_object(o) && json_integer_value(json_object_get(o, idkey)) == l->v[i].id;
        json_decref(o);
        if (!ok)
            return false;
    }
    return true;
}

static void fixture_messages_match_the_full_parser(void)
{
    static const char *streams[] = {"map_stream_fx_node1", "map_stream_fx_node2", "map_stream_fx_node4"};
    struct tc_mapscan s;
    tc_mapscan_init(&s);
    int checked = 0;
    for (size_t k = 0; k < HW_ARRAY_LEN(streams); k++) {
        json_t *msgs = json_object_get(json_object_get(g_map, streams[k]), "messages");
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m) {
            const char *text = json_string_value(json_object_get(m, "json_text"));
            if (!text)
                continue;
            struct tc_map_update u;
            char err[TC_ERRLEN];
            if (tc_map_update_parse((const uint8_t *)text, strlen(text), TC_MAPFRAME_MAX, &u, err,
                                    sizeof err) < 0)
                continue; /* the full parser's own tests cover what it refuses */
            int rc = scan(&s, text);
            bool same = rc == 0 && s.keep_alive == u.keep_alive && s.has_node == u.has_node &&
                        (!u.has_node || s.node.id == u.node.id) && s.peers.n == u.n_peers &&
                        s.peers_changed.n == u.n_peers_changed && s.patches.n == u.n_patches &&
                        s.n_removed == u.n_peers_removed && s.online_change.n == u.n_online_change &&
                        s.has_packet_filter == (u.packet_filter || u.packet_filters);
            for (size_t j = 0; same && j < u.n_peers; j++)
                same = s.peers.v[j].id == u.peers[j].id;
            for (size_t j = 0; same && j < u.n_peers_changed; j++)
                same = s.peers_changed.v[j].id == u.peers_changed[j].id;
            for (size_t j = 0; same && j < u.n_patches; j++)
                same = s.patches.v[j].id == u.patches[j].node_id;
            for (size_t j = 0; same && j < u.n_peers_removed; j++)
                same = s.removed[j] == u.peers_removed[j];
            same = same && spans_hold_ids(text, &s.peers, "ID") &&
                   spans_hold_ids(text, &s.peers_changed, "ID") &&
                   spans_hold_ids(text, &s.patches, "NodeID");
            tc_map_update_free(&u);
            if (!same)
                tc_mapscan_free(&s);
            CHECK(same, "%s message %zu scanned differently", streams[k], i);
            checked++;
        }
    }
    tc_mapscan_free(&s);
    CHECK(checked >= 30, "only %d fixture messages checked", checked);
}

static void deltas_of_every_kind(void)
{
    struct tc_mapscan s;
    tc_mapscan_init(&s);
    const char *text =
        "{ \"PeersChanged\" : [ {\"Name\":\"a\\\"}{\",\"ID\":7,\"Endpoints\":[\"1.2.3.4:5\"]} ],"
        "\"PeersRemoved\":[3, 4],\"PeersChangedPatch\":[{\"NodeID\":9,\"Online\":false}],"
        "\"OnlineChange\":{\"12\":true},\"Node\":null,\"PacketFilters\":{\"base\":null},"
        "\"ControlTime\":\"2026-01-01T00:00:00Z\",\"X\":[1.5e3,-2,true,null,{}]}";
    int rc = scan(&s, text);
    bool ok = rc == 0 && s.peers_changed.n == 1 && s.peers_changed.v[0].id == 7 &&
              s.n_removed == 2 && s.removed[0] == 3 && s.removed[1] == 4 && s.patches.n == 1 &&
              s.patches.v[0].id == 9 && s.online_change.n == 1 && s.online_change.v[0].id == 12 &&
              s.online_change.v[0].len == 4 && !s.has_node && s.has_packet_filter && !s.keep_alive;
    /* the escaped quote inside Name must not end the string */
    ok = ok && memmem(text + s.peers_changed.v[0].off, s.peers_changed.v[0].len, "1.2.3.4:5", 9);
    CHECK(ok, "rc %d", rc);
    CHECK_INT(scan(&s, "{\"KeepAlive\":true}"), 0);
    CHECK(s.keep_alive && s.peers_changed.n == 0 && s.n_removed == 0, "keep-alive, lists reset");
    CHECK_INT(scan(&s, "{}"), 0);
    CHECK_INT(scan(&s, "{\"Peers\":null,\"PeersChanged\":[]}"), 0);
    tc_mapscan_free(&s);
}

static void broken_text_is_refused(void)
{
    static const char *bad[] = {
        "", "[]", "{", "{\"Peers\":[{\"ID\":1}", "{\"Peers\":[{\"Name\":\"x\"}]}",
        "{\"Peers\":[{\"ID\":\"1\"}]}", "{\"PeersRemoved\":[1,]}", "{\"a\":tru}",
        "{\"a\":\"unterminated}", "{\"a\":1}x", "{\"a\" 1}", "{\"Peers\":[{\"ID\":12x}]}",
        "{\"OnlineChange\":{\"x\":true}}", "{\"PeersChangedPatch\":[{\"ID\":1}]}",
        "{\"a\":[1 2]}", "{\"a\":\"\\\\\"\"}",
    };
    struct tc_mapscan s;
    tc_mapscan_init(&s);
    for (size_t i = 0; i < HW_ARRAY_LEN(bad); i++) {
        int rc = scan(&s, bad[i]);
        if (rc != -1)
            tc_mapscan_free(&s);
        CHECK(rc == -1, "accepted %s", bad[i]);
    }
    /* nesting past TC_MAX_DEPTH */
    char deep[200] = "{\"a\":";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    CHECK_INT(scan(&s, deep), -1);
    tc_mapscan_free(&s);
}

/* Strings are searched 16 bytes at a time: escaped quotes and backslashes at every
 * offset around those blocks, and a string cut anywhere, must read as jansson reads them. */
static void escapes_at_every_offset(void)
{
    struct tc_mapscan s;
    tc_mapscan_init(&s);
    char text[512];
    for (int pad = 0; pad < 40; pad++) {
        char filler[64];
        memset(filler, 'x', (size_t)pad);
        filler[pad] = '\0';
        /* Name holds a\"b\\ then a quote-looking tail: the id after it must be found. */
        snprintf(text, sizeof text,
                 "{\"Peers\":[{\"Name\":\"%s\\\"b\\\\\",\"Hostinfo\":{\"K\":\"\\\\\\\"}\"},\"ID\":%d}]}",
                 filler, pad + 1);
        json_error_t je;
        json_t *ref = json_loads(text, 0, &je);
        CHECK(ref != NULL, "pad %d: test text is JSON: %s", pad, je.text);
        CHECK_INT(scan(&s, text), 0);
        CHECK_INT(s.peers.n, 1);
        CHECK_INT(s.peers.v[0].id, pad + 1);
        CHECK(spans_hold_ids(text, &s.peers, "ID"), "pad %d: span", pad);
        json_decref(ref);
        /* Cut inside the Name string (before its closing quote): refused, never read past. */
        size_t cut = strlen("{\"Peers\":[{\"Name\":\"") + (size_t)pad + 3;
        char err[TC_ERRLEN];
        CHECK_INT(tc_mapscan_run(&s, text, cut, err, sizeof err), -1);
    }
    tc_mapscan_free(&s);
}

int main(void)
{
    g_map = fxj_load("real-client-map.json");
    RUN(fixture_messages_match_the_full_parser);
    RUN(deltas_of_every_kind);
    RUN(broken_text_is_refused);
    RUN(escapes_at_every_offset);
    json_decref(g_map);
    return TEST_MAIN_END();
}
