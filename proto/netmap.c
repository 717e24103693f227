#include "proto/netmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "proto/mapframe.h"

void tc_netmap_init(struct tc_netmap *nm)
{
    memset(nm, 0, sizeof(*nm));
    nm->dns_config = json_object();
    nm->packet_filters = json_object();
    nm->packet_filter_rules = json_array();
    nm->user_profiles = json_object();
}

void tc_netmap_clear(struct tc_netmap *nm)
{
    tc_node_clear(&nm->self);
    for (size_t i = 0; i < nm->n_peers; i++)
        tc_node_clear(&nm->peers[i]);
    free(nm->peers);
    tc_derp_map_clear(&nm->derp_map);
    json_decref(nm->dns_config);
    free(nm->domain);
    json_decref(nm->packet_filters);
    json_decref(nm->packet_filter_rules);
    json_decref(nm->user_profiles);
    json_decref(nm->ssh_policy);
    json_decref(nm->health);
    json_decref(nm->display_messages);
    json_decref(nm->tka_info);
    memset(nm, 0, sizeof(*nm));
}

/* ---- the sorted peer array ------------------------------------------------------------ */

/* Index of id, or of where it would be inserted (with *found false). */
static size_t peer_search(const struct tc_netmap *nm, int64_t id, bool *found)
{
    size_t lo = 0, hi = nm->n_peers;
    /* Full maps arrive sorted by ID: check the end first so they append in O(1). */
    if (hi && nm->peers[hi - 1].id < id) {
        *found = false;
        return hi;
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (nm->peers[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < nm->n_peers && nm->peers[lo].id == id;
    return lo;
}

const struct tc_node *tc_netmap_peer(const struct tc_netmap *nm, int64_t id)
{
    bool found;
    size_t i = peer_search(nm, id, &found);
    return found ? &nm->peers[i] : NULL;
}

const struct tc_node *tc_netmap_peer_by_key(const struct tc_netmap *nm, const uint8_t key[32])
{
    for (size_t i = 0; i < nm->n_peers; i++)
        if (memcmp(nm->peers[i].key, key, 32) == 0)
            return &nm->peers[i];
    return NULL;
}

/* Stores *n (moved) under its id, replacing any previous node with that id. */
static void peer_upsert(struct tc_netmap *nm, struct tc_node *n)
{
    bool found;
    size_t i = peer_search(nm, n->id, &found);
    if (found) {
        tc_node_clear(&nm->peers[i]);
    } else {
        if (nm->n_peers == nm->cap_peers) {
            nm->cap_peers = nm->cap_peers ? nm->cap_peers * 2 : 16;
            struct tc_node *p = realloc(nm->peers, nm->cap_peers * sizeof(*p));
            if (!p)
                abort();
            nm->peers = p;
        }
        memmove(&nm->peers[i + 1], &nm->peers[i], (nm->n_peers - i) * sizeof(*nm->peers));
        nm->n_peers++;
    }
    nm->peers[i] = *n;
    memset(n, 0, sizeof(*n));
}

static bool peer_remove(struct tc_netmap *nm, int64_t id)
{
    bool found;
    size_t i = peer_search(nm, id, &found);
    if (!found)
        return false;
    tc_node_clear(&nm->peers[i]);
    memmove(&nm->peers[i], &nm->peers[i + 1], (nm->n_peers - i - 1) * sizeof(*nm->peers));
    nm->n_peers--;
    return true;
}

static struct tc_node *peer_mut(struct tc_netmap *nm, int64_t id)
{
    return (struct tc_node *)tc_netmap_peer(nm, id);
}

/* ---- patches --------------------------------------------------------------------------- */

static void apply_patch(struct tc_node *n, struct tc_peer_change *pc)
{
    /* Zero DERPRegion/Cap mean "no change": upstream cannot patch those to 0 either. */
    if (pc->derp_region)
        n->home_derp = pc->derp_region;
    if (pc->cap)
        n->cap = pc->cap;
    if (pc->endpoints_set) {
        tc_strv_clear(&n->endpoints);
        n->endpoints = pc->endpoints;
        memset(&pc->endpoints, 0, sizeof(pc->endpoints));
    }
    if (pc->has_key)
        memcpy(n->key, pc->key, 32);
    if (pc->key_signature) {
        if (!n->extra)
            n->extra = json_object();
        json_object_set_new(n->extra, "KeySignature", json_string(pc->key_signature));
    }
    if (pc->has_disco_key)
        memcpy(n->disco_key, pc->disco_key, 32);
    if (pc->online != TC_UNSET)
        n->online = pc->online;
    if (pc->has_last_seen)
        n->last_seen = pc->last_seen;
    if (pc->has_key_expiry)
        n->key_expiry = pc->key_expiry;
    if (pc->cap_map) {
        json_decref(n->cap_map);
        n->cap_map = pc->cap_map;
        pc->cap_map = NULL;
    }
}

static bool json_equal_or_both_null(const json_t *a, const json_t *b)
{
    if (!a || !b)
        return a == b;
    return json_equal(a, b);
}

static bool cap_map_equal(const json_t *a, const json_t *b)
{
    size_t na = a ? json_object_size(a) : 0, nb = b ? json_object_size(b) : 0;
    if (na != nb)
        return false;
    return na == 0 || json_equal(a, b);
}

/* upstream peerChangeDiff: can "was -> n" be expressed as a PeerChange? Returns false
 * when a field outside PeerChange differs (then the node is replaced whole). Online and
 * LastSeen are only compared when both sides have them, which is why a PeersChanged
 * entry without Online keeps the stored Online. */
static bool patchify(const struct tc_node *was, const struct tc_node *n, struct tc_peer_change *pc,
                     bool *empty)
{
    memset(pc, 0, sizeof(*pc));
    pc->node_id = n->id;
    const char *ws = was->stable_id ? was->stable_id : "", *ns = n->stable_id ? n->stable_id : "";
    if (was->id != n->id || strcmp(ws, ns) != 0 || strcmp(was->name, n->name) != 0 ||
        was->user != n->user || was->sharer != n->sharer ||
        memcmp(was->machine, n->machine, 32) != 0 ||
        !tc_strv_equal(&was->addresses, &n->addresses) ||
        !tc_strv_equal(&was->allowed_ips, &n->allowed_ips) ||
        !json_equal_or_both_null(was->hostinfo, n->hostinfo) ||
        tc_time_cmp(&was->created, &n->created) != 0 || !tc_strv_equal(&was->tags, &n->tags) ||
        !tc_strv_equal(&was->primary_routes, &n->primary_routes) ||
        was->machine_authorized != n->machine_authorized ||
        was->unsigned_peerapi_only != n->unsigned_peerapi_only ||
        was->is_wireguard_only != n->is_wireguard_only || was->is_jailed != n->is_jailed ||
        was->expired != n->expired ||
        /* KeySignature, masquerade addresses, ExitNodeDNSResolvers... */
        !json_equal_or_both_null(was->extra, n->extra))
        return false;
    bool any = false;
    if (memcmp(was->key, n->key, 32) != 0) {
        pc->has_key = true;
        memcpy(pc->key, n->key, 32);
        any = true;
    }
    if (tc_time_cmp(&was->key_expiry, &n->key_expiry) != 0) {
        pc->has_key_expiry = true;
        pc->key_expiry = n->key_expiry;
        any = true;
    }
    if (memcmp(was->disco_key, n->disco_key, 32) != 0) {
        pc->has_disco_key = true;
        memcpy(pc->disco_key, n->disco_key, 32);
        any = true;
    }
    if (!tc_strv_equal(&was->endpoints, &n->endpoints)) {
        pc->endpoints_set = true;
        tc_strv_copy(&pc->endpoints, &n->endpoints);
        any = true;
    }
    if (was->home_derp != n->home_derp) {
        pc->derp_region = n->home_derp;
        any = true;
    }
    if (was->cap != n->cap) {
        pc->cap = n->cap;
        any = true;
    }
    if (!cap_map_equal(was->cap_map, n->cap_map)) {
        pc->cap_map = n->cap_map ? json_incref(n->cap_map) : json_object();
        any = true;
    }
    if (was->online != TC_UNSET && n->online != TC_UNSET && was->online != n->online) {
        pc->online = n->online;
        any = true;
    }
    if (was->last_seen.set && n->last_seen.set && tc_time_cmp(&was->last_seen, &n->last_seen)) {
        pc->has_last_seen = true;
        pc->last_seen = n->last_seen;
        any = true;
    }
    *empty = !any;
    return true;
}

/* ---- the rest of the state ------------------------------------------------------------------ */

static void rebuild_filter_rules(struct tc_netmap *nm)
{
    size_t n = json_object_size(nm->packet_filters), i = 0;
    const char **names = n ? hw_calloc(n, sizeof(*names)) : NULL;
    const char *k;
    json_t *v;
    json_object_foreach(nm->packet_filters, k, v) names[i++] = k;
    for (size_t a = 1; a < n; a++) /* few chunks: insertion sort */
        for (size_t b = a; b > 0 && strcmp(names[b - 1], names[b]) > 0; b--) {
            const char *t = names[b];
            names[b] = names[b - 1];
            names[b - 1] = t;
        }
    json_t *rules = json_array();
    for (i = 0; i < n; i++)
        json_array_extend(rules, json_object_get(nm->packet_filters, names[i]));
    free(names);
    json_decref(nm->packet_filter_rules);
    nm->packet_filter_rules = rules;
}

static void replace_ref(json_t **slot, json_t *v)
{
    json_incref(v);
    json_decref(*slot);
    *slot = v;
}

static void apply_derp_map(struct tc_netmap *nm, struct tc_map_update *u)
{
    struct tc_derp_map *dm = &u->derp_map;
    if (nm->has_derp_map) {
        struct tc_derp_map *old = &nm->derp_map;
        if (dm->regions_null) {
            free(dm->regions);
            dm->regions = old->regions;
            dm->n_regions = old->n_regions;
            dm->regions_null = false;
            dm->omit_default_regions = old->omit_default_regions;
            old->regions = NULL;
            old->n_regions = 0;
        }
        if (!dm->home_params) {
            dm->home_params = old->home_params;
            old->home_params = NULL;
        } else if (old->home_params && !json_object_get(dm->home_params, "RegionScore")) {
            json_t *score = json_object_get(old->home_params, "RegionScore");
            if (score) {
                json_t *hp = json_deep_copy(dm->home_params);
                json_object_set(hp, "RegionScore", score);
                json_decref(dm->home_params);
                dm->home_params = hp;
            }
        }
    }
    tc_derp_map_clear(&nm->derp_map);
    nm->derp_map = *dm;
    memset(dm, 0, sizeof(*dm));
    u->has_derp_map = false;
    nm->has_derp_map = true;
}

int tc_netmap_apply(struct tc_netmap *nm, struct tc_map_update *u, char *err, size_t errlen)
{
    if (u->control_time.set)
        nm->control_time = u->control_time;
    if (u->keep_alive)
        return 0;
    if (nm->messages == 0 && !u->has_node) {
        snprintf(err, errlen, "initial MapResponse lacked node");
        return -1;
    }
    nm->messages++;

    /* Patchify against the state before this message, as upstream does. */
    struct tc_peer_change *auto_patches = NULL;
    size_t n_auto = 0;
    if (u->n_peers_changed)
        auto_patches = hw_calloc(u->n_peers_changed, sizeof(*auto_patches));
    bool *patched = u->n_peers_changed ? hw_calloc(u->n_peers_changed, sizeof(bool)) : NULL;
    for (size_t i = 0; i < u->n_peers_changed; i++) {
        struct tc_node *n = &u->peers_changed[i];
        tc_node_upgrade(n);
        const struct tc_node *was = tc_netmap_peer(nm, n->id);
        bool empty;
        if (was && patchify(was, n, &auto_patches[n_auto], &empty)) {
            patched[i] = true;
            if (empty)
                tc_peer_change_clear(&auto_patches[n_auto]);
            else
                n_auto++;
        }
    }

    if (u->n_peers > 0) {
        /* Not delta encoded: exactly these peers, and nothing else in this message
         * touches the peer set. */
        for (size_t i = 0; i < nm->n_peers; i++)
            tc_node_clear(&nm->peers[i]);
        nm->n_peers = 0;
        for (size_t i = 0; i < u->n_peers; i++) {
            tc_node_upgrade(&u->peers[i]);
            peer_upsert(nm, &u->peers[i]);
        }
    } else {
        for (size_t i = 0; i < u->n_peers_removed; i++)
            peer_remove(nm, u->peers_removed[i]);
        for (size_t i = 0; i < u->n_peers_changed; i++)
            if (!patched[i])
                peer_upsert(nm, &u->peers_changed[i]);
        for (size_t i = 0; i < u->n_peer_seen_change; i++) {
            struct tc_node *p = peer_mut(nm, u->peer_seen_change[i].id);
            if (p)
                p->last_seen = u->peer_seen_change[i].value ? tc_time_now() : (struct tc_time){0};
        }
        for (size_t i = 0; i < u->n_online_change; i++) {
            struct tc_node *p = peer_mut(nm, u->online_change[i].id);
            if (p)
                p->online = u->online_change[i].value ? TC_TRUE : TC_FALSE;
        }
        for (size_t i = 0; i < u->n_patches; i++) {
            struct tc_node *p = peer_mut(nm, u->patches[i].node_id);
            if (p)
                apply_patch(p, &u->patches[i]);
        }
        for (size_t i = 0; i < n_auto; i++) {
            struct tc_node *p = peer_mut(nm, auto_patches[i].node_id);
            if (p)
                apply_patch(p, &auto_patches[i]);
        }
    }
    for (size_t i = 0; i < n_auto; i++)
        tc_peer_change_clear(&auto_patches[i]);
    free(auto_patches);
    free(patched);

    if (u->has_node) {
        tc_node_upgrade(&u->node);
        tc_node_clear(&nm->self);
        nm->self = u->node;
        memset(&u->node, 0, sizeof(u->node));
        u->has_node = false;
        nm->has_self = true;
    }
    for (size_t i = 0; i < json_array_size(u->user_profiles); i++) {
        json_t *up = json_array_get(u->user_profiles, i);
        char key[24];
        snprintf(key, sizeof key, "%lld", (long long)json_integer_value(json_object_get(up, "ID")));
        json_object_set(nm->user_profiles, key, up);
    }
    if (u->has_derp_map)
        apply_derp_map(nm, u);

    bool filter_changed = false;
    if (u->packet_filter) {
        json_object_set(nm->packet_filters, "base", u->packet_filter);
        filter_changed = true;
    }
    if (u->packet_filters) {
        json_t *all = json_object_get(u->packet_filters, "*");
        if (all && json_is_null(all))
            json_object_clear(nm->packet_filters);
        const char *k;
        json_t *v;
        json_object_foreach(u->packet_filters, k, v)
        {
            if (strcmp(k, "*") == 0)
                continue;
            if (json_is_null(v))
                json_object_del(nm->packet_filters, k);
            else
                json_object_set(nm->packet_filters, k, v);
        }
        filter_changed = true;
    }
    if (filter_changed)
        rebuild_filter_rules(nm);

    if (u->dns_config)
        replace_ref(&nm->dns_config, u->dns_config);
    if (u->ssh_policy)
        replace_ref(&nm->ssh_policy, u->ssh_policy);
    if (u->collect_services != TC_UNSET)
        nm->collect_services = u->collect_services == TC_TRUE;
    if (u->domain && *u->domain) {
        free(nm->domain);
        nm->domain = hw_strdup(u->domain);
    }
    if (u->health)
        replace_ref(&nm->health, u->health);
    if (u->display_messages) {
        if (!nm->display_messages)
            nm->display_messages = json_object();
        json_t *all = json_object_get(u->display_messages, "*");
        if (all && json_is_null(all))
            json_object_clear(nm->display_messages);
        const char *k;
        json_t *v;
        json_object_foreach(u->display_messages, k, v)
        {
            if (strcmp(k, "*") == 0)
                continue;
            if (json_is_null(v))
                json_object_del(nm->display_messages, k);
            else
                json_object_set(nm->display_messages, k, v);
        }
    }
    if (u->tka_info)
        replace_ref(&nm->tka_info, u->tka_info);
    return 0;
}

int tc_netmap_apply_json(struct tc_netmap *nm, const char *json, size_t len, char *err,
                         size_t errlen)
{
    struct tc_map_update u;
    if (tc_map_update_parse((const uint8_t *)json, len, TC_MAPFRAME_MAX, &u, err, errlen) < 0)
        return -1;
    int r = tc_netmap_apply(nm, &u, err, errlen);
    tc_map_update_free(&u);
    return r;
}

/* ---- output ----------------------------------------------------------------------------------- */

json_t *tc_netmap_to_json(const struct tc_netmap *nm)
{
    json_t *o = json_object();
    if (nm->has_self) {
        json_object_set_new(o, "SelfNode", tc_node_to_json(&nm->self));
        json_object_set_new(o, "Name", json_string(nm->self.name ? nm->self.name : ""));
        char t[TC_TIME_TEXT_MAX];
        tc_time_format(&nm->self.key_expiry, t);
        json_object_set_new(o, "Expiry", json_string(t));
    }
    json_t *peers = json_array();
    for (size_t i = 0; i < nm->n_peers; i++)
        json_array_append_new(peers, tc_node_to_json(&nm->peers[i]));
    json_object_set_new(o, "Peers", peers);
    json_object_set(o, "DNS", nm->dns_config);
    json_object_set(o, "PacketFilterRules", nm->packet_filter_rules);
    if (nm->ssh_policy)
        json_object_set(o, "SSHPolicy", nm->ssh_policy);
    json_object_set_new(o, "CollectServices", json_boolean(nm->collect_services));
    if (nm->has_derp_map)
        json_object_set_new(o, "DERPMap", tc_derp_map_to_json(&nm->derp_map));
    if (nm->display_messages)
        json_object_set(o, "DisplayMessages", nm->display_messages);
    if (nm->health)
        json_object_set(o, "Health", nm->health);
    json_object_set_new(o, "TKAEnabled",
                        json_boolean(nm->tka_info && !json_is_true(json_object_get(nm->tka_info,
                                                                                   "Disabled"))));
    json_object_set_new(o, "Domain", json_string(nm->domain ? nm->domain : ""));
    json_object_set(o, "UserProfiles", nm->user_profiles);
    if (nm->control_time.set) {
        char t[TC_TIME_TEXT_MAX];
        tc_time_format(&nm->control_time, t);
        json_object_set_new(o, "ControlTime", json_string(t));
    }
    return o;
}
