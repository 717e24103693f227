#ifndef HW_PROTO_NETMAP_H
#define HW_PROTO_NETMAP_H

/* The client's view of the tailnet, built from the MapResponses of one map stream the
 * way upstream's mapSession does it (control/controlclient/map.go,
 * updateStateFromResponse / updatePeersStateFromResponse / patchifyPeersChanged):
 *
 *   - a keep-alive changes nothing but the last control time;
 *   - the first other message must carry Node ("initial MapResponse lacked node");
 *   - a non-empty Peers replaces the whole peer set, and then PeersRemoved,
 *     PeersChanged and every patch in that message are ignored;
 *   - otherwise: PeersRemoved, then PeersChanged, then PeerSeenChange, OnlineChange,
 *     then PeersChangedPatch; a PeersChanged entry that differs from the stored peer
 *     only in patchable fields is applied as a patch (so a missing Online/LastSeen
 *     keeps the stored value), anything else replaces the peer whole;
 *   - DERPMap, DNSConfig, Domain, SSHPolicy, CollectServices, Health, TKAInfo are
 *     sticky: absent means unchanged; a DERPMap without Regions/HomeParams keeps the
 *     previous ones; PacketFilter sets the "base" chunk and PacketFilters the named
 *     chunks ("*": null clears all); UserProfiles accumulate.
 *
 * Peers are kept sorted by node ID, so lookups are binary searches and a 10,000-peer
 * full map costs one pass. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "proto/tailcfg.h"

struct tc_netmap {
    bool has_self;
    struct tc_node self;
    struct tc_node *peers; /* sorted by id */
    size_t n_peers, cap_peers;
    bool has_derp_map;
    struct tc_derp_map derp_map;
    json_t *dns_config;     /* {} until the server sends one */
    char *domain;
    json_t *packet_filters; /* name -> rule array */
    json_t *packet_filter_rules; /* all chunks concatenated in name order */
    json_t *user_profiles;  /* "id" -> UserProfile */
    json_t *ssh_policy;
    bool collect_services;
    json_t *health;
    json_t *display_messages;
    json_t *tka_info;
    struct tc_time control_time;
    uint64_t messages;      /* non-keep-alive messages applied */
};

void tc_netmap_init(struct tc_netmap *nm);
void tc_netmap_clear(struct tc_netmap *nm);

/* Applies one parsed message. Takes the nodes out of u (they are moved, not copied);
 * u must still be freed with tc_map_update_free. Returns 0, or -1 with err when the
 * stream is unusable (first real message without Node). A rejected message leaves the
 * netmap unchanged. */
int tc_netmap_apply(struct tc_netmap *nm, struct tc_map_update *u, char *err, size_t errlen);
/* Parse (bounded by TC_MAPFRAME_MAX) and apply one message's JSON text. */
int tc_netmap_apply_json(struct tc_netmap *nm, const char *json, size_t len, char *err,
                         size_t errlen);

const struct tc_node *tc_netmap_peer(const struct tc_netmap *nm, int64_t id);
/* The peer holding a node key, or NULL (linear; for DERP/disco lookups by key the
 * caller should index). */
const struct tc_node *tc_netmap_peer_by_key(const struct tc_netmap *nm, const uint8_t key[32]);

/* The whole state for `hwclient netmap -o json`, with names following upstream's
 * netmap.NetworkMap: SelfNode, Name, Expiry, Peers, DNS, PacketFilterRules, SSHPolicy,
 * CollectServices, DERPMap, DisplayMessages/Health, Domain, UserProfiles, ControlTime. */
json_t *tc_netmap_to_json(const struct tc_netmap *nm);

#endif
