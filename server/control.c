#include "server/control.h"

#include <jansson.h>
#include <microhttpd.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/util.h"
#include "proto/h2conn.h"
#include "proto/keys.h"
#include "proto/mapframe.h"
#include "proto/tailcfg.h"
#include "server/derpmap.h"
#include "server/dns.h"
#include "server/nodes.h"
#include "server/routes.h"
#include "server/policy.h"
#include "server/tailnet.h"
#include "server/ts2021.h"

/* The oldest client we talk to: Tailscale v1.66. Older ones get a message they show. */
#define MIN_CAPVER 95
/* Changes are gathered this long, then pushed as one delta per namespace: a burst of
 * joins costs each client one message, not one per join. */
#define DELTA_BATCH_MS 25
/* ... and under a storm of changes (a join storm: the previous flush was less than
 * DELTA_STORM_GAP_MS ago) the window widens with the fan-out the last flush cost, so
 * that pushing deltas takes at most about a third of the loop: two times (messages
 * pushed x DELTA_PUSH_COST_US), at most DELTA_BATCH_MAX_MS. Each message then carries
 * more changes (fewer messages, better compression), and one change still reaches
 * everyone in well under a second: the window plus one fan-out (~200 ms at 10,000). */
#define DELTA_STORM_GAP_MS 500
#define DELTA_PUSH_COST_US 20      /* seal + write of one small message, measured at 10,000 */
#define DELTA_BATCH_MAX_MS 400
/* Keep-alive cadence: well inside the client's 120 s watchdog, with per-stream jitter
 * so that 10,000 streams do not all wake in the same second. */
#define KEEPALIVE_MS 50000
#define KEEPALIVE_JITTER_MS 9000
#define SWEEP_MS 1000
/* An interactive login waits this long for `hwctl nodes register`. */
#define PENDING_REGISTRATION_S (30 * 60)
/* Logins waiting at once. Each costs a client only a Noise handshake, so without a cap
 * anyone who can reach the server could fill the database with them. */
#define MAX_PENDING_REGISTRATIONS 10000
/* A node whose last stream closed stays "online" this long, so a quick reconnect is
 * not announced as offline-then-online to every peer. */
#define OFFLINE_GRACE_MS 10000
/* A primary subnet router whose last stream closed hands its prefixes to another router
 * after this long, while its peers still see it online for the rest of OFFLINE_GRACE_MS:
 * a quick reconnect keeps its role, and failover (sweep included) stays well within 10 s
 * of the disconnect (Headscale waits its full 10 s offline grace; Tailscale documents up
 * to ~15 s). */
#define ROUTE_FAILOVER_GRACE_MS 5000
#define TAGGED_USER_ID 2147455555   /* Headscale's synthetic owner of tagged nodes */
/* Bytes a map stream may have queued and unsent: several full 10,000-peer maps. */
#define STREAM_QUEUE_LIMIT (64u << 20)
/* Map bytes queued on all streams together (shared blocks counted once per stream)
 * above which new streams wait for their first map: after a restart every client asks
 * at once, and their maps should go out as fast as they are read, not all be built
 * into memory first. */
#define FULL_MAP_BUDGET (256u << 20)
#define ADMIT_RETRY_MS 20

/* Registrations with a pre-auth key that arrive in one pass of the event loop are
 * stored in one transaction: one fsync (synchronous=FULL) for the group instead of one
 * each. Every one is still answered only after the COMMIT that made it durable. */
#define REGISTER_GROUP_MAX 256

enum stream_kind { STREAM_MAP = 1, STREAM_FOLLOWUP, STREAM_REGISTER };

/* A long-lived map response. */
struct tn_stream {
    enum stream_kind kind;
    struct hw_control *ctl;
    struct tn_node *node;
    struct hw_h2_stream *st;
    struct ts_session *sess;
    bool compress;
    bool initial_sent;
    bool abandoned;                     /* reset for not reading; waits for its close */
    bool waiting;                       /* in c->waiting: its first map is not built yet */
    struct tn_stream *wait_next;
    int64_t keepalive_due;
    struct tn_stream *node_next;        /* in node->streams */
    struct tn_stream *all_prev, *all_next;
};

/* An interactive login's follow-up, held until the admin registers the node. */
struct followup {
    enum stream_kind kind;
    struct hw_control *ctl;
    struct hw_h2_stream *st;
    struct ts_session *sess;
    char reg_id[64];
    char machine_key[HW_KEY_TEXT_MAX];
    char node_key[HW_KEY_TEXT_MAX];
    int64_t deadline;                   /* unix seconds */
    struct followup *prev, *next;
};

/* Ids gathered for one recipient's next delta. */
struct idvec {
    int64_t *v;
    size_t n, cap;
};

/* With a policy, what one node's next delta must carry beyond the pending nodes it
 * sees: peers it gained or lost, and whether its packet filter / SSH policy changed. */
struct pol_pending {
    struct idvec changed, patched, removed;
    bool filter, self, touched;
};

/* With a policy, a block of TN_CHUNK ids is shared between viewers that see all of it.
 * src holds (a reference to) the node texts the frames were built from: the frames are
 * current exactly while every node of the block still has that text. */
struct pol_chunk {
    struct hw_sbuf *frame[2];
    struct hw_sbuf *src[TN_CHUNK];
};

/* A pre-auth key registration waiting for its group's commit. */
struct queued_reg {
    enum stream_kind kind;
    struct hw_h2_stream *st;            /* NULL once the client went away */
    struct ts_session *sess;
    char machine_key[HW_KEY_TEXT_MAX];
    char node_key[HW_KEY_TEXT_MAX];
    struct tc_register_request req;     /* owned */
    struct tn_node *created;            /* after the store, before the commit: unset */
    int64_t stored_id;                  /* > 0: stored in the open group transaction */
    char answer_error[200];             /* "" = success */
    bool expired_answer;                /* answer with NodeKeyExpired */
    struct queued_reg *next;
};

struct hw_control {
    struct hw_server *srv;
    struct hw_loop *loop;
    struct hw_tailnet tn;
    struct tc_zenc *zenc;
    struct hw_sbuf *keepalive[2];       /* [compressed] */
    struct hw_sbuf *close_frame;        /* the zstd frame of "]}" ending a blocked full map */
    struct hw_derpmap *derpmap;         /* sources of the DERP map, refreshed off the loop */
    json_t *derp_map;
    struct hw_dns *dns;                 /* DNSConfig from dns.*, records file watched */
    json_t *dns_config;
    json_t *packet_filters;
    char *domain;
    struct tn_stream *streams;          /* every map stream, for the keep-alive sweep */
    struct followup *followups;
    struct hw_timer *flush_timer;
    struct hw_timer *sweep_timer;
    struct tn_stream *waiting, *waiting_tail;  /* streams waiting for their first map */
    struct hw_timer *admit_timer;
    size_t queued_estimate;             /* map bytes queued on all streams, roughly */
    struct tn_node **offline_candidates;
    size_t n_offline, cap_offline;
    struct hw_primaries primaries;      /* elected subnet routers (server/routes.h) */
    bool election_due;                  /* re-elect before the next flush */
    int64_t expiry_checked;             /* unix seconds up to which key expiries were announced */
    /* The access policy. NULL: namespaces are the boundary, and none of the rest is used. */
    struct hw_policy *policy;
    struct hw_policy_net *pnet;         /* the policy compiled over every node */
    char *policy_text;                  /* the text in force, for `hwctl policy get` */
    struct pol_pending *pend;           /* indexed by node id */
    size_t pend_cap;
    struct idvec touched;               /* ids with pend[id].touched */
    struct pol_chunk *pchunks;          /* indexed by id / TN_CHUNK */
    size_t n_pchunks;
    int64_t last_flush_ms;              /* monotonic; 0 = never */
    size_t last_flush_pushes;           /* messages the last flush pushed */
    struct queued_reg *reg_head, *reg_tail;   /* registrations of the current group */
    size_t n_reg_queued;
    struct hw_timer *reg_timer;
};

static void schedule_flush(struct hw_control *c);
static void push_to_stream(struct tn_stream *ms, struct hw_sbuf *frame);
static void push_full_map_policy(struct hw_control *c, struct tn_stream *ms);
static struct hw_sbuf *policy_whole_map(struct hw_control *c, struct tn_node *self, bool compress);
static void flush_policy(struct hw_control *c, struct hw_policy_net *net);
static void policy_track_node(struct hw_control *c, struct tn_node *n);
static void policy_forget_node(struct hw_control *c, int64_t id);

/* ---- helpers ---- */

static json_t *json_or_null(const char *text)
{
    if (!text || !*text)
        return NULL;
    return json_loads(text, 0, NULL);
}

static bool node_expired(const struct tn_node *n, int64_t now)
{
    return n->row.expiry != 0 && n->row.expiry <= now;
}

static bool node_is_tagged(const struct tn_node *n)
{
    return n->row.tags_json && strcmp(n->row.tags_json, "[]") != 0 && n->row.tags_json[0] == '[' &&
           n->row.tags_json[1] != ']';
}

static int64_t node_user_id(const struct tn_node *n)
{
    return node_is_tagged(n) ? TAGGED_USER_ID : n->row.namespace_id;
}

/* PeersChangedPatch entry for a node that only went online or offline. */
static json_t *online_patch(const struct tn_node *n)
{
    struct tc_peer_change pc = {.node_id = n->row.id, .online = n->online ? TC_TRUE : TC_FALSE};
    if (!n->online && n->row.last_seen) {
        pc.has_last_seen = true;
        pc.last_seen = tc_time_from_unix(n->row.last_seen);
    }
    return tc_peer_change_to_json(&pc);
}

/* The patches as the borrowed array tc_map_response takes (free it, not its items). */
static json_t **patch_items_of(json_t *patches)
{
    json_t **items = hw_calloc(json_array_size(patches) + 1, sizeof *items);
    for (size_t i = 0; i < json_array_size(patches); i++)
        items[i] = json_array_get(patches, i);
    return items;
}

/* Where routers compete for a prefix. Without a policy a node sees only its own
 * namespace, so each namespace elects its own primary; a policy can let a node see
 * routers of several namespaces, and then one primary per prefix serves the tailnet. */
static int64_t route_scope(const struct hw_control *c, const struct tn_node *n)
{
    return c->pnet ? 0 : n->row.namespace_id;
}

static void strv_from_json_array(struct tc_strv *out, const char *json_text)
{
    json_t *arr = json_or_null(json_text);
    size_t i;
    json_t *v;
    if (json_is_array(arr))
        json_array_foreach(arr, i, v) if (json_is_string(v)) tc_strv_push(out, json_string_value(v));
    json_decref(arr);
}

/* The node as every client (itself and its peers) sees it: tailcfg.Node. name must
 * outlive tn (it is borrowed). */
static void fill_tc_node(struct hw_control *c, const struct tn_node *n, struct tc_node *tn,
                         char *name, size_t name_len, const struct tn_node *viewer)
{
    int64_t now = hw_now();
    memset(tn, 0, sizeof *tn);
    tn->id = n->row.id;
    if (c->domain && *c->domain)
        snprintf(name, name_len, "%s.%s.", n->row.given_name, c->domain);
    else
        snprintf(name, name_len, "%s.", n->row.given_name);
    tn->name = name;
    tn->user = node_user_id(n);
    hw_key_parse(HW_KEY_NODE, n->row.node_key, tn->key, NULL);
    hw_key_parse(HW_KEY_MACHINE, n->row.machine_key, tn->machine, NULL);
    if (n->row.disco_key[0])
        hw_key_parse(HW_KEY_DISCO, n->row.disco_key, tn->disco_key, NULL);
    if (n->row.expiry)
        tn->key_expiry = tc_time_from_unix(n->row.expiry);
    char addr[HW_IP_TEXT_MAX + 8];
    if (n->row.ipv4[0]) {
        snprintf(addr, sizeof addr, "%s/32", n->row.ipv4);
        tc_strv_push(&tn->addresses, addr);
    }
    if (n->row.ipv6[0]) {
        snprintf(addr, sizeof addr, "%s/128", n->row.ipv6);
        tc_strv_push(&tn->addresses, addr);
    }
    tc_strv_copy(&tn->allowed_ips, &tn->addresses);
    /* Exit routes go to every peer; a subnet route only from its elected primary. */
    for (size_t i = 0; i < n->n_routes; i++) {
        if (viewer && c->pnet && !hw_policy_route_visible(c->pnet, viewer->row.id, n->row.id, n->routes[i]))
            continue;
        if (hw_route_is_exit(n->routes[i])) {
            tc_strv_push(&tn->allowed_ips, n->routes[i]);
        } else if (hw_primaries_get(&c->primaries, route_scope(c, n), n->routes[i]) == n->row.id) {
            tc_strv_push(&tn->allowed_ips, n->routes[i]);
            tc_strv_push(&tn->primary_routes, n->routes[i]);
        }
    }
    strv_from_json_array(&tn->endpoints, n->row.endpoints_json);
    tn->legacy_derp = true;
    tn->hostinfo = json_or_null(n->row.hostinfo_json);
    if (!json_is_object(tn->hostinfo)) {
        json_decref(tn->hostinfo);
        tn->hostinfo = json_pack("{s:s}", "Hostname", n->row.hostname);
    }
    /* The home region peers reach it through, as the node last reported it. */
    tn->home_derp = (int)json_integer_value(
        json_object_get(json_object_get(tn->hostinfo, "NetInfo"), "PreferredDERP"));
    tn->created = tc_time_from_unix(n->row.created_at);
    tn->cap = n->cap_version;
    strv_from_json_array(&tn->tags, n->row.tags_json);
    bool expired = node_expired(n, now);
    tn->online = n->online ? TC_TRUE : TC_FALSE;
    if (!n->online && n->row.last_seen)
        tn->last_seen = tc_time_from_unix(n->row.last_seen);
    tn->machine_authorized = !expired;
    tn->expired = expired;
    tn->cap_map = json_pack("{s:[],s:[],s:[]}", "https://tailscale.com/cap/file-sharing",
                            "https://tailscale.com/cap/is-admin", "https://tailscale.com/cap/ssh");
}

static void release_tc_node(struct tc_node *tn)
{
    tn->name = NULL;   /* borrowed */
    tc_node_clear(tn);
}

/* Serialised once per change and reused in every message that carries the node. */
static struct hw_sbuf *node_text(struct hw_control *c, struct tn_node *n)
{
    if (!n->peer_json) {
        struct tc_node tn;
        char name[HW_NAME_MAX + 260];
        fill_tc_node(c, n, &tn, name, sizeof name, NULL);
        n->peer_json = tc_node_serialize(&tn);
        release_tc_node(&tn);
    }
    return n->peer_json;
}

/* The node as a json_t, for the "Node" member (the text is cached; parsing it back is
 * cheaper than rebuilding, and keeps the two forms identical). */
static json_t *node_json(struct hw_control *c, struct tn_node *n)
{
    struct hw_sbuf *t = node_text(c, n);
    return json_loadb((const char *)t->data, t->len, 0, NULL);
}

static json_t *user_profiles_for(struct tn_node *n)
{
    json_t *arr = json_array();
    struct tc_user_profile owner = {.id = n->row.namespace_id, .login_name = n->ns ? n->ns->name : "",
                                    .display_name = n->ns ? n->ns->name : ""};
    json_array_append_new(arr, tc_user_profile_to_json(&owner));
    struct tc_user_profile tagged = {.id = TAGGED_USER_ID, .login_name = "tagged-devices",
                                     .display_name = "Tagged devices"};
    json_array_append_new(arr, tc_user_profile_to_json(&tagged));
    return arr;
}

/* ---- messages ----
 * The small members come from a tc_map_response; the large peer list is spliced in
 * from cached node texts, so a 10,000-peer map costs copies of cached bytes rather
 * than 10,000 re-serialisations. */

static struct hw_sbuf *encode(struct hw_control *c, const struct tc_map_response *m,
                              const char *list, struct tn_node *const *items, size_t n_items,
                              const struct tn_node *skip, bool compress)
{
    struct hw_sbuf **frags = hw_calloc(n_items + 1, sizeof *frags);
    size_t k = 0;
    for (size_t i = 0; i < n_items; i++)
        if (items[i] != skip)
            frags[k++] = node_text(c, items[i]);
    size_t len = 0;
    char *text = tc_map_response_dump_with_peers(m, list, frags, k, &len);
    free(frags);
    char err[160];
    struct hw_sbuf *f = tc_mapframe_encode(c->zenc, text, len, compress, err, sizeof err);
    if (!f)
        log_error("map message of %zu bytes not sent: %s", len, err);
    free(text);
    return f;
}

/* ---- the full map ---- */

/* The members of one block (ids with the same id / TN_CHUNK) from `first` on, joined by
 * commas, without `skip`. NULL when nothing is left; *next gets the next block's first. */
static char *block_text(struct hw_control *c, struct tn_node *first, const struct tn_node *skip,
                        bool leading_comma, size_t *len_out, struct tn_node **next)
{
    size_t block = (size_t)first->row.id / TN_CHUNK, total = 0, count = 0;
    struct tn_node *p;
    for (p = first; p && (size_t)p->row.id / TN_CHUNK == block; p = p->ns_next) {
        if (p != skip) {
            total += node_text(c, p)->len + 1;
            count++;
        }
    }
    *next = p;
    if (count == 0)
        return NULL;
    char *out = hw_malloc(total + 1);
    size_t pos = 0;
    bool comma = leading_comma;
    for (p = first; p != *next; p = p->ns_next) {
        if (p == skip)
            continue;
        if (comma)
            out[pos++] = ',';
        comma = true;
        struct hw_sbuf *t = node_text(c, p);
        memcpy(out + pos, t->data, t->len);
        pos += t->len;
    }
    *len_out = pos;
    return out;
}

static struct hw_sbuf *zframe(struct hw_control *c, const void *data, size_t len, size_t room)
{
    char err[160];
    struct hw_sbuf *f = tc_zstd_frame(c->zenc, data, len, room, err, sizeof err);
    if (!f) {
        log_error("compressing a map piece of %zu bytes failed: %s", len, err);
        abort();   /* only out of memory makes zstd fail on valid input */
    }
    return f;
}

/* Everything of a first map but the peers. The caller drops m->node and
 * m->user_profiles (owned references). */
static struct tc_map_response map_head(struct hw_control *c, struct tn_node *self)
{
    return (struct tc_map_response){
        .node = node_json(c, self),
        .derp_map = c->derp_map,
        .dns_config = c->dns_config,
        .domain = c->domain,
        .packet_filters = c->packet_filters,
        .user_profiles = user_profiles_for(self),
        .control_time = tc_time_now(),
    };
}

static void map_head_release(struct tc_map_response *m)
{
    json_decref(m->node);
    json_decref(m->user_profiles);
}

/* The node's whole map as one message (one zstd frame, or plain JSON). */
static struct hw_sbuf *whole_map(struct hw_control *c, struct tn_node *self, bool compress)
{
    if (c->pnet)
        return policy_whole_map(c, self, compress);
    struct tn_namespace *ns = self->ns;
    struct tn_node **peers = hw_calloc(ns ? ns->count + 1 : 1, sizeof *peers);
    size_t k = 0;
    for (struct tn_node *p = ns ? ns->head : NULL; p; p = p->ns_next)
        peers[k++] = p;
    struct tc_map_response m = map_head(c, self);
    struct hw_sbuf *frame = encode(c, &m, "Peers", peers, k, self, compress);
    map_head_release(&m);
    free(peers);
    return frame;
}

/* The first frame of a map sent in blocks: m's members and the opening of "Peers",
 * with room for the length prefix of the whole message. */
static struct hw_sbuf *map_open_frame(struct hw_control *c, const struct tc_map_response *m)
{
    size_t head_len = 0;
    json_t *head_json = tc_map_response_to_json(m);
    char *head = tc_json_dump(head_json, &head_len);
    json_decref(head_json);
    /* "{...}" becomes "{...,"Peers":[" */
    static const char peers_key[] = "\"Peers\":[";
    char *open_text = hw_malloc(head_len + sizeof peers_key + 1);
    size_t open_len = head_len - 1;
    memcpy(open_text, head, open_len);
    if (head_len > 2)
        open_text[open_len++] = ',';
    memcpy(open_text + open_len, peers_key, sizeof peers_key - 1);
    open_len += sizeof peers_key - 1;
    free(head);
    struct hw_sbuf *f = zframe(c, open_text, open_len, 4);
    free(open_text);
    return f;
}

/* Ends a full map built as frames (parts[0] opens it; room for one more is left):
 * appends the shared closing frame, writes the total length into the first frame's
 * header, and queues every frame on the stream. Consumes parts. */
static void push_full_map_parts(struct hw_control *c, struct tn_stream *ms, struct hw_sbuf **parts,
                                size_t n_parts)
{
    if (!c->close_frame)
        c->close_frame = zframe(c, "]}", 2, 0);
    parts[n_parts++] = hw_sbuf_ref(c->close_frame);
    size_t total = 0;
    for (size_t i = 0; i < n_parts; i++)
        total += parts[i]->len;
    tc_mapframe_put_length(parts[0]->data, total - 4);
    for (size_t i = 0; i < n_parts; i++) {
        push_to_stream(ms, parts[i]);
        hw_sbuf_unref(parts[i]);
    }
    free(parts);
}

/* Sends the first map of a stream. With zstd (every current client) the message is
 * one frame for the small members, then one frame per block of peers -- reused from the
 * namespace's cache for every block that does not hold the recipient -- and a closing
 * frame: a reconnect storm of N nodes costs N small frames plus the few blocks that
 * changed, not N full compressions of an N-peer map. */
static void push_full_map(struct hw_control *c, struct tn_stream *ms)
{
    struct tn_node *self = ms->node;
    struct tn_namespace *ns = self->ns;
    if (c->pnet) {
        push_full_map_policy(c, ms);
        return;
    }
    if (!ms->compress || !ns || ns->count <= 1) {
        struct hw_sbuf *frame = whole_map(c, self, ms->compress);
        push_to_stream(ms, frame);
        hw_sbuf_unref(frame);
        return;
    }

    struct tc_map_response m = map_head(c, self);
    size_t n_blocks = ns->count / TN_CHUNK + 3, n_parts = 0;
    struct hw_sbuf **parts = hw_calloc(n_blocks + 2, sizeof *parts);
    parts[n_parts++] = map_open_frame(c, &m);
    map_head_release(&m);
    bool first = true;
    for (struct tn_node *p = ns->head; p;) {
        size_t block = (size_t)p->row.id / TN_CHUNK;
        bool holds_self = (size_t)self->row.id / TN_CHUNK == block;
        struct tn_chunk *ch = hw_tailnet_chunk(ns, p->row.id);
        int variant = first ? 1 : 0;
        struct tn_node *next;
        if (!holds_self && ch->frame[variant] && ch->last) {
            next = ch->last->ns_next;
            parts[n_parts++] = hw_sbuf_ref(ch->frame[variant]);
        } else {
            size_t len = 0;
            char *text = block_text(c, p, self, !first, &len, &next);
            if (!text) {
                p = next;
                continue;
            }
            struct hw_sbuf *f = zframe(c, text, len, 0);
            free(text);
            if (!holds_self) {
                hw_sbuf_unref(ch->frame[variant]);
                ch->frame[variant] = hw_sbuf_ref(f);
                ch->last = next ? next->ns_prev : ns->tail;
            }
            parts[n_parts++] = f;
        }
        if (n_parts == n_blocks + 1) {
            n_blocks *= 2;
            struct hw_sbuf **grown = realloc(parts, (n_blocks + 2) * sizeof *parts);
            if (!grown)
                abort();
            parts = grown;
        }
        first = false;
        p = next;
    }
    push_full_map_parts(c, ms, parts, n_parts);
}

/* ---- deltas ---- */

static void push_to_stream(struct tn_stream *ms, struct hw_sbuf *frame)
{
    if (!frame || !ms->st || ms->abandoned)
        return;
    /* A client that stops reading must not make the server hold every delta for it
     * forever: past the limit its stream is reset, and its next poll starts over with
     * a fresh full map. */
    if (hw_h2_queued(ms->st) + frame->len > STREAM_QUEUE_LIMIT) {
        log_warn("map stream of node %lld: %zu bytes not taken by the client: reset",
                 ms->node ? (long long)ms->node->row.id : 0LL, hw_h2_queued(ms->st));
        ms->abandoned = true;
        hw_h2_reset(ms->st, 8 /* CANCEL */);
        ts_session_kick(ms->sess);
        return;
    }
    hw_h2_push(ms->st, frame);
    ms->keepalive_due = hw_now_ms_mono() + KEEPALIVE_MS + (int64_t)randombytes_uniform(KEEPALIVE_JITTER_MS);
    ts_session_kick(ms->sess);
}

static bool node_has_live_streams(const struct tn_node *n)
{
    for (const struct tn_stream *ms = n->streams; ms; ms = ms->node_next)
        if (ms->initial_sent)
            return true;
    return false;
}

/* One namespace's pending changes, as messages: the same bytes for every member that
 * is not itself among the changed nodes, and a variant for each changed member (it must
 * not receive itself as a peer, and it gets its own Node). */
static size_t flush_namespace(struct hw_control *c, struct tn_namespace *ns)
{
    size_t pushes = 0;
    size_t n_changed = 0;
    for (struct tn_node *n = ns->pending_head; n; n = n->pending_next)
        if (n->pending & TN_PEER_CHANGED)
            n_changed++;
    struct tn_node **changed = hw_calloc(n_changed + 1, sizeof *changed);
    json_t *patches = json_array();
    size_t k = 0;
    for (struct tn_node *n = ns->pending_head; n; n = n->pending_next) {
        if (n->pending & TN_PEER_CHANGED) {
            changed[k++] = n;
        } else if (n->pending & TN_PEER_ONLINE) {
            json_array_append_new(patches, online_patch(n));
        }
    }

    json_t **patch_items = patch_items_of(patches);
    struct tc_map_response m = {
        .peers_removed = ns->removed,
        .n_peers_removed = ns->n_removed,
        .peers_changed_patch = patch_items,
        .n_peers_changed_patch = json_array_size(patches),
        .control_time = tc_time_now(),
    };

    bool anything = ns->n_removed > 0 || json_array_size(patches) > 0 || n_changed > 0;
    struct hw_sbuf *shared[2] = {NULL, NULL};
    for (struct tn_node *mem = anything ? ns->head : NULL; mem; mem = mem->ns_next) {
        if (!node_has_live_streams(mem) || (mem->pending & (TN_PEER_CHANGED | TN_SELF_CHANGED)))
            continue;
        for (struct tn_stream *ms = mem->streams; ms; ms = ms->node_next) {
            if (!ms->initial_sent)
                continue;
            if (!shared[ms->compress])
                shared[ms->compress] = encode(c, &m, "PeersChanged", changed, n_changed, NULL, ms->compress);
            push_to_stream(ms, shared[ms->compress]);
            pushes++;
        }
    }
    /* Members that changed themselves: their own Node, the others' changes. */
    for (struct tn_node *mem = ns->pending_head; mem; mem = mem->pending_next) {
        if (!(mem->pending & (TN_PEER_CHANGED | TN_SELF_CHANGED)) || !node_has_live_streams(mem))
            continue;
        struct tc_map_response own = m;
        json_t *node = NULL, *profiles = NULL;
        if (mem->pending & TN_SELF_CHANGED) {
            own.node = node = node_json(c, mem);
            own.user_profiles = profiles = user_profiles_for(mem);
        }
        for (int z = 0; z < 2; z++) {
            struct hw_sbuf *frame = NULL;
            for (struct tn_stream *ms = mem->streams; ms; ms = ms->node_next) {
                if (!ms->initial_sent || ms->compress != z)
                    continue;
                if (!frame)
                    frame = encode(c, &own, "PeersChanged", changed, n_changed, mem, z);
                push_to_stream(ms, frame);
                pushes++;
            }
            hw_sbuf_unref(frame);
        }
        json_decref(node);
        json_decref(profiles);
    }
    hw_sbuf_unref(shared[0]);
    hw_sbuf_unref(shared[1]);
    free(patch_items);
    json_decref(patches);
    free(changed);

    for (struct tn_node *n = ns->pending_head, *next; n; n = next) {
        next = n->pending_next;
        n->pending = 0;
        n->pending_next = NULL;
    }
    ns->pending_head = NULL;
    ns->n_removed = 0;
    return pushes;
}

/* ---- primary subnet routers ---- */

static bool router_up(const struct tn_node *n, int64_t now_ms)
{
    return n->online && (n->streams || now_ms - n->streams_gone_ms < ROUTE_FAILOVER_GRACE_MS);
}

/* Something that decides primaries changed (routes, a router's connection, a node
 * removed): the election runs once, just before the next flush. */
static void want_election(struct hw_control *c)
{
    c->election_due = true;
    schedule_flush(c);
}

/* Re-elects every prefix from the routers' current state; the nodes that gained or lost
 * a primary route are sent again to their peers and themselves in this flush. */
static void elect_primaries(struct hw_control *c)
{
    c->election_due = false;
    int64_t now_ms = hw_now_ms_mono();
    size_t n_offers = 0, cap = 0;
    struct hw_route_offer *offers = NULL;
    for (size_t i = 0; i < c->tn.by_id_cap; i++) {
        struct tn_node *n = c->tn.by_id[i];
        if (!n || n->n_routes == 0)
            continue;
        for (size_t r = 0; r < n->n_routes; r++) {
            if (n_offers == cap) {
                cap = cap ? cap * 2 : 16;
                struct hw_route_offer *grown = realloc(offers, cap * sizeof *offers);
                if (!grown)
                    abort();
                offers = grown;
            }
            offers[n_offers++] = (struct hw_route_offer){.scope = route_scope(c, n),
                                                         .node_id = n->row.id,
                                                         .prefix = n->routes[r],
                                                         .up = router_up(n, now_ms)};
        }
    }
    struct hw_primary_change *changes = NULL;
    size_t n_changes = hw_primaries_elect(&c->primaries, offers, n_offers, &changes);
    free(offers);
    for (size_t i = 0; i < n_changes; i++) {
        const struct hw_primary_change *ch = &changes[i];
        struct tn_namespace *ns = ch->scope ? hw_tailnet_namespace(&c->tn, ch->scope) : NULL;
        log_info("routes: %s in %s%s: primary router %s%lld (was %s%lld)", ch->prefix,
                 ch->scope ? "namespace " : "the tailnet", ch->scope ? (ns ? ns->name : "?") : "",
                 ch->to ? "node " : "none", (long long)ch->to,
                 ch->from ? "node " : "none", (long long)ch->from);
        int64_t ids[2] = {ch->from, ch->to};
        for (int k = 0; k < 2; k++) {
            struct tn_node *n = hw_tailnet_node(&c->tn, ids[k]);
            if (!n)
                continue;
            hw_tailnet_invalidate(n);
            hw_tailnet_mark(n, TN_PEER_CHANGED | TN_SELF_CHANGED);
        }
    }
    free(changes);
}

bool hw_control_route_is_primary(struct hw_control *c, int64_t node_id, const char *prefix)
{
    struct tn_node *n = hw_tailnet_node(&c->tn, node_id);
    return n && hw_primaries_get(&c->primaries, route_scope(c, n), prefix) == node_id;
}

static void flush_deltas(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_control *c = arg;
    c->flush_timer = NULL;
    if (c->election_due) {
        /* The admin API reads the primaries (`hwctl routes list`) under the lock. */
        pthread_mutex_lock(&c->srv->lock);
        elect_primaries(c);
        pthread_mutex_unlock(&c->srv->lock);
    }
    if (c->pnet) {
        flush_policy(c, c->pnet);
        return;
    }
    size_t pushes = 0;
    for (struct tn_namespace *ns = c->tn.namespaces; ns; ns = ns->next)
        if (ns->pending_head || ns->n_removed)
            pushes += flush_namespace(c, ns);
    c->last_flush_ms = hw_now_ms_mono();
    c->last_flush_pushes = pushes;
}

/* The batch window for changes starting now: DELTA_BATCH_MS, wider in a storm. */
static int64_t batch_window_ms(const struct hw_control *c)
{
    if (!c->last_flush_ms || hw_now_ms_mono() - c->last_flush_ms >= DELTA_STORM_GAP_MS)
        return DELTA_BATCH_MS;
    int64_t fanout_ms = (int64_t)(c->last_flush_pushes * DELTA_PUSH_COST_US / 1000);
    int64_t window = 2 * fanout_ms;
    if (window < DELTA_BATCH_MS)
        return DELTA_BATCH_MS;
    return window < DELTA_BATCH_MAX_MS ? window : DELTA_BATCH_MAX_MS;
}

static void schedule_flush(struct hw_control *c)
{
    if (!c->flush_timer)
        c->flush_timer = hw_timer_start(c->loop, batch_window_ms(c), flush_deltas, c);
}

/* ---- the access policy ----
 * Without a policy (c->pnet NULL) nothing here runs: namespaces are the boundary and
 * the namespace code above shares every message. With one, each node sees the peers
 * hw_policy_peers gives it and gets its own packet filter, so messages are built per
 * recipient -- except where recipients would get the same bytes: a delta that every
 * recipient hears whole, and blocks of a full map whose every node a viewer sees. */

static void idvec_push(struct idvec *iv, int64_t id)
{
    if (iv->n == iv->cap) {
        iv->cap = iv->cap ? iv->cap * 2 : 8;
        int64_t *grown = realloc(iv->v, iv->cap * sizeof *grown);
        if (!grown)
            abort();
        iv->v = grown;
    }
    iv->v[iv->n++] = id;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void idvec_sort_uniq(struct idvec *iv)
{
    if (iv->n < 2)
        return;
    qsort(iv->v, iv->n, sizeof *iv->v, cmp_id);
    size_t k = 1;
    for (size_t i = 1; i < iv->n; i++)
        if (iv->v[i] != iv->v[k - 1])
            iv->v[k++] = iv->v[i];
    iv->n = k;
}

static bool idvec_has(const struct idvec *iv, int64_t id)   /* iv sorted */
{
    return iv->n && bsearch(&id, iv->v, iv->n, sizeof *iv->v, cmp_id) != NULL;
}

static bool idvec_equal(const struct idvec *a, const struct idvec *b)
{
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

static void idvec_free(struct idvec *iv)
{
    free(iv->v);
    memset(iv, 0, sizeof *iv);
}

/* Empties a per-node list after a flush. A small one keeps its room for the next batch;
 * a large one is freed: a newcomer's list holds every peer it gained (the whole tailnet),
 * and the room kept for every node was O(N^2) in all -- at 3,000 nodes 58 MB live that
 * nothing used again. */
#define IDVEC_KEEP 64
static void idvec_reset(struct idvec *iv)
{
    if (iv->cap > IDVEC_KEEP)
        idvec_free(iv);
    iv->n = 0;
}

static struct pol_pending *pend_of(struct hw_control *c, int64_t id)
{
    if (id <= 0)
        return NULL;
    hw_grow_to_index((void **)&c->pend, &c->pend_cap, (size_t)id, sizeof *c->pend, 256);
    struct pol_pending *p = &c->pend[id];
    if (!p->touched) {
        p->touched = true;
        idvec_push(&c->touched, id);
    }
    return p;
}

/* What a compiled change means for the next deltas: `id` changed (or was compared). */
static void policy_note(struct hw_control *c, int64_t id, const struct hw_policy_change *chg)
{
    for (size_t i = 0; i < chg->n_gained; i++)
        idvec_push(&pend_of(c, id)->changed, chg->gained[i]);
    for (size_t i = 0; i < chg->n_lost; i++) {
        idvec_push(&pend_of(c, chg->lost[i])->removed, id);
        idvec_push(&pend_of(c, id)->removed, chg->lost[i]);
    }
    for (size_t i = 0; i < chg->n_filters; i++)
        pend_of(c, chg->filters[i])->filter = true;
}

/* Sends `viewer` the routers it sees again: which of their routes it may use shows
 * in their AllowedIPs. */
static void policy_resend_routers(struct hw_control *c, struct hw_policy_net *net, int64_t viewer)
{
    size_t np = 0;
    int64_t *peers = hw_policy_peers(net, viewer, &np);
    for (size_t i = 0; i < np; i++) {
        struct tn_node *p = hw_tailnet_node(&c->tn, peers[i]);
        if (p && p->n_routes)
            idvec_push(&pend_of(c, viewer)->changed, peers[i]);
    }
    free(peers);
}

/* The node changed in the store and in memory: recompile its part of the policy. */
static void policy_track_node(struct hw_control *c, struct tn_node *n)
{
    if (!c->pnet || !n)
        return;
    struct hw_policy_node d;
    hw_policy_node_from_tn(n, &d);
    struct hw_policy_change chg = {0};
    char err[256];
    if (hw_policy_net_set_node(c->pnet, &d, &chg, err, sizeof err) < 0) {
        log_error("policy: node %lld (%s) left as it was: %s", (long long)n->row.id, n->row.given_name, err);
    } else {
        policy_note(c, n->row.id, &chg);
        /* Its rules changed (tags, namespace): the subnet routes it may use may have
         * changed with them, and those show in the routers' AllowedIPs. */
        bool own_filter = false;
        for (size_t i = 0; i < chg.n_filters && !own_filter; i++)
            own_filter = chg.filters[i] == n->row.id;
        if (own_filter || chg.n_gained || chg.n_lost)
            policy_resend_routers(c, c->pnet, n->row.id);
    }
    hw_policy_change_clear(&chg);
    hw_policy_node_release(&d);
}

static void policy_forget_node(struct hw_control *c, int64_t id)
{
    if (!c->pnet)
        return;
    struct hw_policy_change chg = {0};
    hw_policy_net_remove_node(c->pnet, id, &chg);
    policy_note(c, id, &chg);
    hw_policy_change_clear(&chg);
}

/* A peer as `viewer` sees it: the shared text, unless the policy hides some of its
 * routes from the viewer. A new reference. */
static struct hw_sbuf *peer_text_for(struct hw_control *c, const struct tn_node *viewer, struct tn_node *n)
{
    bool all_visible = true;
    for (size_t i = 0; viewer && c->pnet && i < n->n_routes && all_visible; i++)
        all_visible = hw_policy_route_visible(c->pnet, viewer->row.id, n->row.id, n->routes[i]);
    if (all_visible)
        return hw_sbuf_ref(node_text(c, n));
    struct tc_node tn;
    char name[HW_NAME_MAX + 260];
    fill_tc_node(c, n, &tn, name, sizeof name, viewer);
    struct hw_sbuf *t = tc_node_serialize(&tn);
    release_tc_node(&tn);
    return t;
}

static bool routes_visible_to(struct hw_control *c, const struct tn_node *viewer, const struct tn_node *n)
{
    for (size_t i = 0; i < n->n_routes; i++)
        if (!hw_policy_route_visible(c->pnet, viewer->row.id, n->row.id, n->routes[i]))
            return false;
    return true;
}

/* {"base": rules} for the node: its policy filter, or the namespace default. */
static json_t *filters_for(struct hw_control *c, const struct tn_node *n)
{
    if (!c->pnet)
        return json_incref(c->packet_filters);
    json_t *rules = hw_policy_filter(c->pnet, n->row.id);
    return json_pack("{s:o}", "base", rules ? rules : json_array());
}

/* The node's SSHPolicy; an empty one when the policy has no ssh section (it replaces
 * what an earlier policy gave). */
static json_t *ssh_for(struct hw_control *c, const struct tn_node *n)
{
    json_t *ssh = c->pnet ? hw_policy_ssh(c->pnet, n->row.id, c->srv->cfg->server_url) : NULL;
    return ssh ? ssh : json_pack("{s:[]}", "rules");
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
    return x < y ? -1 : x > y;
}

/* UserProfiles naming the owners of `nodes` (and of self): with a policy, peers come
 * from several namespaces. */
static json_t *profiles_for_nodes(struct hw_control *c, struct tn_node *self, struct tn_node *const *nodes,
                                  size_t n)
{
    json_t *arr = self ? user_profiles_for(self) : json_array();
    struct tn_namespace **spaces = hw_calloc(n + 1, sizeof *spaces);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!node_is_tagged(nodes[i]) && nodes[i]->ns && (!self || nodes[i]->ns != self->ns))
            spaces[k++] = nodes[i]->ns;
    if (k > 1)
        qsort(spaces, k, sizeof *spaces, cmp_ptr);
    for (size_t i = 0; i < k; i++) {
        if (i > 0 && spaces[i] == spaces[i - 1])
            continue;
        struct tc_user_profile up = {.id = spaces[i]->id, .login_name = spaces[i]->name,
                                     .display_name = spaces[i]->name};
        json_array_append_new(arr, tc_user_profile_to_json(&up));
    }
    free(spaces);
    if (!self && n > 0) {
        struct tc_user_profile tagged = {.id = TAGGED_USER_ID, .login_name = "tagged-devices",
                                         .display_name = "Tagged devices"};
        json_array_append_new(arr, tc_user_profile_to_json(&tagged));
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

static struct hw_sbuf *encode_frags(struct hw_control *c, const struct tc_map_response *m, const char *list,
                                    struct hw_sbuf *const *frags, size_t k, bool compress)
{
    size_t len = 0;
    char *text = tc_map_response_dump_with_peers(m, list, frags, k, &len);
    char err[160];
    struct hw_sbuf *f = tc_mapframe_encode(c->zenc, text, len, compress, err, sizeof err);
    if (!f)
        log_error("map message of %zu bytes not sent: %s", len, err);
    free(text);
    return f;
}

/* One delta: `viewer` NULL builds the shared form (full peer texts, no filter/self). */
static struct hw_sbuf *policy_delta(struct hw_control *c, struct tn_node *viewer, const struct idvec *changed,
                                    const struct idvec *patched, const struct idvec *removed, bool filter,
                                    bool self, bool compress)
{
    struct tn_node **nodes = hw_calloc(changed->n + 1, sizeof *nodes);
    struct hw_sbuf **frags = hw_calloc(changed->n + 1, sizeof *frags);
    size_t k = 0;
    for (size_t i = 0; i < changed->n; i++) {
        struct tn_node *p = hw_tailnet_node(&c->tn, changed->v[i]);
        if (!p)
            continue;
        nodes[k] = p;
        frags[k++] = viewer ? peer_text_for(c, viewer, p) : hw_sbuf_ref(node_text(c, p));
    }
    json_t *patches = json_array();
    for (size_t i = 0; i < patched->n; i++) {
        struct tn_node *p = hw_tailnet_node(&c->tn, patched->v[i]);
        if (!p)
            continue;
        json_array_append_new(patches, online_patch(p));
    }
    json_t **patch_items = patch_items_of(patches);
    struct tc_map_response m = {
        .peers_removed = removed->v,
        .n_peers_removed = removed->n,
        .peers_changed_patch = patch_items,
        .n_peers_changed_patch = json_array_size(patches),
        .control_time = tc_time_now(),
    };
    json_t *node = NULL, *profiles = NULL, *pf = NULL, *ssh = NULL;
    if (viewer && self)
        m.node = node = node_json(c, viewer);
    profiles = profiles_for_nodes(c, viewer && self ? viewer : NULL, nodes, k);
    m.user_profiles = profiles;
    if (viewer && filter) {
        m.packet_filters = pf = filters_for(c, viewer);
        m.ssh_policy = ssh = ssh_for(c, viewer);
    }
    struct hw_sbuf *f = encode_frags(c, &m, "PeersChanged", frags, k, compress);
    for (size_t i = 0; i < k; i++)
        hw_sbuf_unref(frags[i]);
    free(frags);
    free(nodes);
    free(patch_items);
    json_decref(patches);
    json_decref(node);
    json_decref(profiles);
    json_decref(pf);
    json_decref(ssh);
    return f;
}

static void push_to_node(struct tn_node *n, struct hw_sbuf *frames[2], struct hw_control *c,
                         struct hw_sbuf *(*build)(struct hw_control *, struct tn_node *, bool, void *), void *arg)
{
    for (struct tn_stream *ms = n->streams; ms; ms = ms->node_next) {
        if (!ms->initial_sent)
            continue;
        if (!frames[ms->compress])
            frames[ms->compress] = build(c, n, ms->compress, arg);
        push_to_stream(ms, frames[ms->compress]);
    }
}

struct delta_args {
    struct idvec *changed, *patched, *removed;
    bool filter, self, shared;
};

static struct hw_sbuf *build_delta(struct hw_control *c, struct tn_node *n, bool compress, void *arg)
{
    struct delta_args *a = arg;
    return policy_delta(c, a->shared ? NULL : n, a->changed, a->patched, a->removed, a->filter, a->self,
                        compress);
}

/* Pushes everything pending under the policy compiled in `net`: the pending nodes of
 * every namespace to the nodes that see them, and what pend[] gathered. */
static void flush_policy(struct hw_control *c, struct hw_policy_net *net)
{
    struct idvec all_changed = {0}, all_patched = {0}, all_removed = {0};
    for (struct tn_namespace *ns = c->tn.namespaces; ns; ns = ns->next) {
        for (struct tn_node *n = ns->pending_head, *next; n; n = next) {
            next = n->pending_next;
            if (n->pending & (TN_PEER_CHANGED | TN_PEER_ONLINE)) {
                bool whole = n->pending & TN_PEER_CHANGED;
                idvec_push(whole ? &all_changed : &all_patched, n->row.id);
                size_t np = 0;
                int64_t *peers = hw_policy_peers(net, n->row.id, &np);
                for (size_t i = 0; i < np; i++) {
                    struct pol_pending *p = pend_of(c, peers[i]);
                    idvec_push(whole ? &p->changed : &p->patched, n->row.id);
                }
                free(peers);
            }
            if (n->pending & TN_SELF_CHANGED)
                pend_of(c, n->row.id)->self = true;
            n->pending = 0;
            n->pending_next = NULL;
        }
        ns->pending_head = NULL;
        ns->n_removed = 0;   /* the policy's lost lists say who must hear a removal */
    }
    idvec_sort_uniq(&all_changed);
    idvec_sort_uniq(&all_patched);
    for (size_t t = 0; t < c->touched.n; t++) {
        struct pol_pending *p = &c->pend[c->touched.v[t]];
        for (size_t i = 0; i < p->removed.n; i++)
            idvec_push(&all_removed, p->removed.v[i]);
    }
    idvec_sort_uniq(&all_removed);
    /* Recipients of exactly the whole batch share one message. */
    struct hw_sbuf *shared[2] = {NULL, NULL};
    struct delta_args shared_args = {&all_changed, &all_patched, &all_removed, false, false, true};
    bool changed_have_routes = false;
    for (size_t i = 0; i < all_changed.n && !changed_have_routes; i++) {
        struct tn_node *p = hw_tailnet_node(&c->tn, all_changed.v[i]);
        changed_have_routes = p && p->n_routes > 0;
    }
    for (size_t t = 0; t < c->touched.n; t++) {
        int64_t id = c->touched.v[t];
        struct pol_pending *p = &c->pend[id];
        struct tn_node *n = hw_tailnet_node(&c->tn, id);
        if (n && node_has_live_streams(n)) {
            /* Only what holds now: a peer gained and lost in one batch is not sent. */
            idvec_sort_uniq(&p->changed);
            idvec_sort_uniq(&p->patched);
            idvec_sort_uniq(&p->removed);
            size_t k = 0;
            for (size_t i = 0; i < p->changed.n; i++)
                if (hw_tailnet_node(&c->tn, p->changed.v[i]) && hw_policy_sees(net, id, p->changed.v[i]))
                    p->changed.v[k++] = p->changed.v[i];
            p->changed.n = k;
            k = 0;
            for (size_t i = 0; i < p->patched.n; i++)
                if (!idvec_has(&p->changed, p->patched.v[i]) && hw_policy_sees(net, id, p->patched.v[i]))
                    p->patched.v[k++] = p->patched.v[i];
            p->patched.n = k;
            k = 0;
            for (size_t i = 0; i < p->removed.n; i++)
                if (!hw_policy_sees(net, id, p->removed.v[i]))
                    p->removed.v[k++] = p->removed.v[i];
            p->removed.n = k;
            bool anything = p->changed.n || p->patched.n || p->removed.n || p->filter || p->self;
            bool same = !p->filter && !p->self && idvec_equal(&p->changed, &all_changed) &&
                        idvec_equal(&p->patched, &all_patched) && idvec_equal(&p->removed, &all_removed);
            for (size_t i = 0; same && changed_have_routes && i < p->changed.n; i++)
                same = routes_visible_to(c, n, hw_tailnet_node(&c->tn, p->changed.v[i]));
            if (anything && same) {
                push_to_node(n, shared, c, build_delta, &shared_args);
            } else if (anything) {
                struct delta_args own = {&p->changed, &p->patched, &p->removed, p->filter, p->self, false};
                struct hw_sbuf *frames[2] = {NULL, NULL};
                push_to_node(n, frames, c, build_delta, &own);
                hw_sbuf_unref(frames[0]);
                hw_sbuf_unref(frames[1]);
            }
        }
        idvec_reset(&p->changed);
        idvec_reset(&p->patched);
        idvec_reset(&p->removed);
        p->filter = p->self = p->touched = false;
    }
    c->touched.n = 0;
    hw_sbuf_unref(shared[0]);
    hw_sbuf_unref(shared[1]);
    idvec_free(&all_changed);
    idvec_free(&all_patched);
    idvec_free(&all_removed);
}

/* The shared frame of block b (ids b*TN_CHUNK ...), current for the nodes as they are. */
static struct hw_sbuf *policy_chunk(struct hw_control *c, size_t b, int variant)
{
    hw_grow_to_index((void **)&c->pchunks, &c->n_pchunks, b, sizeof *c->pchunks, 64);
    struct pol_chunk *ch = &c->pchunks[b];
    bool current = true;
    struct hw_sbuf *now[TN_CHUNK];
    for (size_t k = 0; k < TN_CHUNK; k++) {
        struct tn_node *n = hw_tailnet_node(&c->tn, (int64_t)(b * TN_CHUNK + k));
        now[k] = n ? node_text(c, n) : NULL;
        current = current && now[k] == ch->src[k];
    }
    if (!current) {
        for (int v = 0; v < 2; v++) {
            hw_sbuf_unref(ch->frame[v]);
            ch->frame[v] = NULL;
        }
        for (size_t k = 0; k < TN_CHUNK; k++) {
            hw_sbuf_unref(ch->src[k]);
            ch->src[k] = now[k] ? hw_sbuf_ref(now[k]) : NULL;
        }
    }
    if (!ch->frame[variant]) {
        size_t total = 0;
        for (size_t k = 0; k < TN_CHUNK; k++)
            total += ch->src[k] ? ch->src[k]->len + 1 : 0;
        char *text = hw_malloc(total + 1);
        size_t pos = 0;
        bool comma = variant == 0;
        for (size_t k = 0; k < TN_CHUNK; k++) {
            if (!ch->src[k])
                continue;
            if (comma)
                text[pos++] = ',';
            comma = true;
            memcpy(text + pos, ch->src[k]->data, ch->src[k]->len);
            pos += ch->src[k]->len;
        }
        ch->frame[variant] = zframe(c, text, pos, 0);
        free(text);
    }
    return hw_sbuf_ref(ch->frame[variant]);
}

static void pchunks_free(struct hw_control *c)
{
    for (size_t b = 0; b < c->n_pchunks; b++) {
        for (int v = 0; v < 2; v++)
            hw_sbuf_unref(c->pchunks[b].frame[v]);
        for (size_t k = 0; k < TN_CHUNK; k++)
            hw_sbuf_unref(c->pchunks[b].src[k]);
    }
    free(c->pchunks);
    c->pchunks = NULL;
    c->n_pchunks = 0;
}

/* The first map under a policy: the node's own peers, filter and SSH policy. */
static struct tc_map_response policy_map_head(struct hw_control *c, struct tn_node *self, struct tn_node **peers,
                                              size_t np)
{
    struct tc_map_response m = map_head(c, self);
    json_decref(m.user_profiles);
    json_t *profiles = profiles_for_nodes(c, self, peers, np);
    m.user_profiles = profiles;
    m.packet_filters = filters_for(c, self);
    m.ssh_policy = hw_policy_ssh(c->pnet, self->row.id, c->srv->cfg->server_url);
    return m;
}

static void policy_map_head_release(struct tc_map_response *m)
{
    json_decref(m->packet_filters);
    json_decref(m->ssh_policy);
    map_head_release(m);
}

static struct tn_node **policy_peer_nodes(struct hw_control *c, struct tn_node *self, size_t *n_out)
{
    size_t np = 0, k = 0;
    int64_t *ids = hw_policy_peers(c->pnet, self->row.id, &np);
    struct tn_node **peers = hw_calloc(np + 1, sizeof *peers);
    for (size_t i = 0; i < np; i++) {
        struct tn_node *p = hw_tailnet_node(&c->tn, ids[i]);
        if (p)
            peers[k++] = p;
    }
    free(ids);
    *n_out = k;
    return peers;
}

static struct hw_sbuf *policy_whole_map(struct hw_control *c, struct tn_node *self, bool compress)
{
    size_t np;
    struct tn_node **peers = policy_peer_nodes(c, self, &np);
    struct hw_sbuf **frags = hw_calloc(np + 1, sizeof *frags);
    for (size_t i = 0; i < np; i++)
        frags[i] = peer_text_for(c, self, peers[i]);
    struct tc_map_response m = policy_map_head(c, self, peers, np);
    struct hw_sbuf *frame = encode_frags(c, &m, "Peers", frags, np, compress);
    policy_map_head_release(&m);
    for (size_t i = 0; i < np; i++)
        hw_sbuf_unref(frags[i]);
    free(frags);
    free(peers);
    return frame;
}

static void push_full_map_policy(struct hw_control *c, struct tn_stream *ms)
{
    struct tn_node *self = ms->node;
    if (!ms->compress) {
        struct hw_sbuf *frame = policy_whole_map(c, self, false);
        push_to_stream(ms, frame);
        hw_sbuf_unref(frame);
        return;
    }
    size_t np;
    struct tn_node **peers = policy_peer_nodes(c, self, &np);
    struct tc_map_response m = policy_map_head(c, self, peers, np);
    size_t n_parts = 0;
    struct hw_sbuf **parts = hw_calloc(np + 3, sizeof *parts);
    parts[n_parts++] = map_open_frame(c, &m);
    policy_map_head_release(&m);
    size_t self_block = (size_t)self->row.id / TN_CHUNK;
    bool first = true;
    for (size_t i = 0; i < np;) {
        size_t b = (size_t)peers[i]->row.id / TN_CHUNK, j = i;
        bool routes_ok = true;
        for (; j < np && (size_t)peers[j]->row.id / TN_CHUNK == b; j++)
            if (peers[j]->n_routes && routes_ok)
                routes_ok = routes_visible_to(c, self, peers[j]);
        size_t members = 0;
        for (size_t k = 0; k < TN_CHUNK; k++)
            members += hw_tailnet_node(&c->tn, (int64_t)(b * TN_CHUNK + k)) != NULL;
        if (b != self_block && routes_ok && members == j - i) {
            parts[n_parts++] = policy_chunk(c, b, first ? 1 : 0);
        } else {
            size_t total = 0, pos = 0;
            struct hw_sbuf *texts[TN_CHUNK];
            for (size_t k = i; k < j; k++) {
                texts[k - i] = peer_text_for(c, self, peers[k]);
                total += texts[k - i]->len + 1;
            }
            char *text = hw_malloc(total + 1);
            for (size_t k = i; k < j; k++) {
                if (!first || k > i)
                    text[pos++] = ',';
                memcpy(text + pos, texts[k - i]->data, texts[k - i]->len);
                pos += texts[k - i]->len;
                hw_sbuf_unref(texts[k - i]);
            }
            parts[n_parts++] = zframe(c, text, pos, 0);
            free(text);
        }
        first = false;
        i = j;
    }
    free(peers);
    push_full_map_parts(c, ms, parts, n_parts);
}

static struct hw_policy_node *policy_nodes_of(struct hw_control *c, size_t *n_out)
{
    struct hw_policy_node *descs = hw_calloc(c->tn.n_nodes + 1, sizeof *descs);
    size_t k = 0;
    for (size_t i = 0; i < c->tn.by_id_cap; i++)
        if (c->tn.by_id[i])
            hw_policy_node_from_tn(c->tn.by_id[i], &descs[k++]);
    *n_out = k;
    return descs;
}

static void policy_nodes_free(struct hw_policy_node *descs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        hw_policy_node_release(&descs[i]);
    free(descs);
}

/* ---- answering ---- */

static void respond_json(struct hw_h2_stream *st, int status, json_t *body)
{
    size_t len = 0;
    char *text = tc_json_dump(body, &len);
    hw_h2_respond(st, status, "application/json; charset=utf-8", text, len);
    free(text);
    json_decref(body);
}

static void respond_text(struct hw_h2_stream *st, int status, const char *text)
{
    hw_h2_respond(st, status, "text/plain; charset=utf-8", text, strlen(text));
}

static void register_answer(struct hw_h2_stream *st, const struct tn_node *n, const char *auth_url,
                            const char *error, bool key_expired)
{
    struct tc_register_response r = {.auth_url = auth_url ? auth_url : "", .error = error ? error : ""};
    char name[HW_NAME_MAX] = "";
    if (n) {
        snprintf(name, sizeof name, "%s", node_is_tagged(n) ? "tagged-devices" : (n->ns ? n->ns->name : ""));
        r.user_id = r.login_id = node_user_id(n);
        r.user_display_name = r.login_name = r.login_display_name = name;
        r.login_provider = "";
        r.machine_authorized = true;
        r.node_key_expired = key_expired;
    }
    respond_json(st, 200, tc_register_response_to_json(&r));
}

/* ---- tailnet changes: store first, then memory, then the wire ---- */

static struct tn_node *reload_node(struct hw_control *c, int64_t id)
{
    struct hw_node row = {0};
    struct hw_route *routes = NULL;
    size_t n_routes = 0;
    if (hw_db_node_get(c->srv->db, id, &row) != HW_DB_OK)
        return NULL;
    hw_db_route_list(c->srv->db, id, &routes, &n_routes);
    struct tn_node *n = hw_tailnet_apply(&c->tn, &row, routes, n_routes);
    free(routes);
    hw_node_clear(&row);
    policy_track_node(c, n);
    schedule_flush(c);
    /* Its routes, namespace or key may have changed what it serves. */
    want_election(c);
    return n;
}

static void close_node_streams(struct tn_node *n, uint32_t code)
{
    for (struct tn_stream *ms = n->streams; ms; ms = ms->node_next) {
        if (ms->st) {
            hw_h2_reset(ms->st, code);
            ts_session_kick(ms->sess);
        }
    }
}

static void answer_followups_for(struct hw_control *c, struct tn_node *n)
{
    for (struct followup *f = c->followups; f; f = f->next) {
        if (!f->st || strcmp(f->machine_key, n->row.machine_key) != 0)
            continue;
        register_answer(f->st, n, NULL, NULL, false);
        ts_session_kick(f->sess);
    }
}

static void detach_and_remove(struct hw_control *c, struct tn_node *n)
{
    close_node_streams(n, 8 /* CANCEL */);
    for (struct tn_stream *ms = n->streams; ms; ms = ms->node_next)
        ms->node = NULL;
    n->streams = NULL;
    bool routed = n->n_routes > 0;
    policy_forget_node(c, n->row.id);
    hw_tailnet_remove(&c->tn, n->row.id);
    schedule_flush(c);
    if (routed)
        want_election(c);
}

/* A namespace was renamed or destroyed: names show in UserProfiles; a destroyed one
 * takes its nodes along. */
static void resync_namespaces(struct hw_control *c)
{
    for (struct tn_namespace *ns = c->tn.namespaces; ns; ns = ns->next) {
        struct hw_namespace row;
        if (hw_db_namespace_get(c->srv->db, ns->id, &row) != HW_DB_OK) {
            while (ns->head)
                detach_and_remove(c, ns->head);
            continue;
        }
        if (strcmp(row.name, ns->name) != 0) {
            snprintf(ns->name, sizeof ns->name, "%s", row.name);
            for (struct tn_node *n = ns->head; n; n = n->ns_next) {
                hw_tailnet_mark(n, TN_SELF_CHANGED);
                policy_track_node(c, n);   /* the policy names namespaces */
            }
            schedule_flush(c);
        }
    }
}

struct change {
    struct hw_control *ctl;
    enum hw_change_kind kind;
    int64_t id;
};

static void apply_change(struct hw_loop *loop, void *arg)
{
    struct change *ch = arg;
    struct hw_control *c = ch->ctl;
    pthread_mutex_lock(&c->srv->lock);
    switch (ch->kind) {
    case HW_CHANGE_NODE_REMOVED: {
        struct tn_node *n = hw_tailnet_node(&c->tn, ch->id);
        if (n)
            detach_and_remove(c, n);
        break;
    }
    case HW_CHANGE_NODE_MOVED: {
        struct tn_node *n = reload_node(c, ch->id);
        /* Its whole peer set changed: a fresh map stream is the simplest correct delta. */
        if (n)
            close_node_streams(n, 8);
        break;
    }
    case HW_CHANGE_NODE_ADDED: {
        struct tn_node *n = reload_node(c, ch->id);
        if (n)
            answer_followups_for(c, n);
        break;
    }
    case HW_CHANGE_NODE_UPDATED:
    case HW_CHANGE_ROUTES:
        reload_node(c, ch->id);
        break;
    case HW_CHANGE_NAMESPACE:
        resync_namespaces(c);
        break;
    case HW_CHANGE_POLICY:
        break;
    }
    pthread_mutex_unlock(&c->srv->lock);
    free(ch);
}

void hw_control_notify(struct hw_control *c, enum hw_change_kind kind, int64_t id)
{
    struct change *ch = hw_malloc(sizeof *ch);
    ch->ctl = c;
    ch->kind = kind;
    ch->id = id;
    hw_loop_post(c->loop, apply_change, ch);
}

/* Makes the stored advertised routes match Hostinfo.RoutableIPs, writing only when they
 * differ (map requests are frequent; the routes rarely change). Call in a transaction. */
static int sync_advertised_routes(struct hw_db *db, int64_t node_id, const struct tc_hostinfo *hi)
{
    struct hw_route *routes = NULL;
    size_t n = 0;
    int rc = hw_db_route_list(db, node_id, &routes, &n);
    if (rc != HW_DB_OK)
        return rc;
    size_t advertised = 0;
    bool same = true;
    for (size_t i = 0; i < n && same; i++) {
        if (!routes[i].advertised)
            continue;
        advertised++;
        bool found = false;
        for (size_t j = 0; j < hi->n_routable_ips && !found; j++) {
            char canon[HW_PREFIX_TEXT_MAX], why[120];
            found = hw_prefix_canonical(hi->routable_ips[j], canon, why, sizeof why) == 0 &&
                    strcmp(canon, routes[i].prefix) == 0;
        }
        same = found;
    }
    free(routes);
    if (same && advertised == hi->n_routable_ips)
        return HW_DB_OK;
    return hw_db_route_set_advertised(db, node_id, hi->routable_ips, hi->n_routable_ips);
}

static bool same_text(const char *a, const char *b);

/* ---- policy: tags, route approval, reloads ---- */

/* Enables the node's advertised routes that the policy's autoApprovers allow. The
 * number enabled, or -1 on a store error. */
static int auto_approve_routes(struct hw_control *c, const struct hw_node *row)
{
    if (!c->policy)
        return 0;
    struct hw_route *routes = NULL;
    size_t n = 0;
    if (hw_db_route_list(c->srv->db, row->id, &routes, &n) != HW_DB_OK)
        return -1;
    struct tn_node tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.row = *row;   /* borrowed: never cleared */
    tmp.ns = hw_tailnet_namespace(&c->tn, row->namespace_id);
    struct hw_policy_node d;
    hw_policy_node_from_tn(&tmp, &d);
    int count = 0;
    for (size_t i = 0; i < n && count >= 0; i++) {
        if (!routes[i].advertised || routes[i].enabled ||
            !hw_policy_auto_approves(c->policy, &d, routes[i].prefix))
            continue;
        if (hw_db_route_set_enabled(c->srv->db, row->id, routes[i].prefix, true) != HW_DB_OK) {
            count = -1;
            break;
        }
        log_info("policy: route %s of node %lld (%s) approved by autoApprovers", routes[i].prefix,
                 (long long)row->id, row->given_name);
        count++;
    }
    /* As an admin's `routes enable`: whatever follows route changes (primary routes)
     * hears of it once the caller's transaction is in. */
    if (count > 0)
        hw_server_changed(c->srv, HW_CHANGE_ROUTES, row->id);
    hw_policy_node_release(&d);
    free(routes);
    return count;
}

/* Applies the tags a node asks for itself (Hostinfo.RequestTags: --advertise-tags)
 * that tagOwners lets its namespace, or the tags it already carries, own. Refused
 * tags are logged and left off. True when row's tags changed. */
static bool apply_request_tags(struct hw_control *c, struct hw_node *row, const struct tc_hostinfo *hi)
{
    if (!hi || hi->n_request_tags == 0)
        return false;
    struct tn_namespace *ns = hw_tailnet_namespace(&c->tn, row->namespace_id);
    const char *ns_name = ns ? ns->name : row->namespace_name;
    struct tc_strv cur = {0};
    strv_from_json_array(&cur, row->tags_json);
    json_t *out = json_array();
    for (size_t i = 0; i < hi->n_request_tags; i++) {
        const char *tag = hi->request_tags[i];
        bool ok = hw_policy_tag_owner_ok(c->policy, tag, ns_name) ||
                  (cur.n > 0 && hw_policy_tag_owned_by_tags(c->policy, tag, (const char *const *)cur.v, cur.n));
        if (!ok) {
            log_warn("node %lld (%s) asked for %s, which %s does not own in the policy's tagOwners: "
                     "not applied", (long long)row->id, row->given_name[0] ? row->given_name : row->hostname,
                     tag, c->policy ? ns_name : "nobody (no policy is loaded)");
            continue;
        }
        bool dup = false;
        for (size_t k = 0; k < json_array_size(out) && !dup; k++)
            dup = strcmp(json_string_value(json_array_get(out, k)), tag) == 0;
        if (!dup)
            json_array_append_new(out, json_string(tag));
    }
    tc_strv_clear(&cur);
    bool changed = false;
    if (json_array_size(out) > 0) {
        char *text = json_dumps(out, JSON_COMPACT);
        if (!same_text(text, row->tags_json)) {
            log_info("node %lld (%s) now carries the tags %s it asked for", (long long)row->id,
                     row->given_name[0] ? row->given_name : row->hostname, text);
            free(row->tags_json);
            row->tags_json = text;
            text = NULL;
            row->expiry = 0;   /* a tagged node does not expire */
            changed = true;
        }
        free(text);
    }
    json_decref(out);
    return changed;
}

/* Re-checks every advertised, not yet enabled route against autoApprovers. */
static void auto_approve_all(struct hw_control *c)
{
    struct hw_route *routes = NULL;
    size_t n = 0;
    if (!c->policy || hw_db_route_list(c->srv->db, 0, &routes, &n) != HW_DB_OK) {
        free(routes);
        return;
    }
    int64_t last = 0;
    for (size_t i = 0; i < n; i++) {
        if (!routes[i].advertised || routes[i].enabled || routes[i].node_id == last)
            continue;
        last = routes[i].node_id;
        struct tn_node *node = hw_tailnet_node(&c->tn, last);
        if (node && auto_approve_routes(c, &node->row) > 0)
            reload_node(c, last);
    }
    free(routes);
}

const struct hw_policy *hw_control_policy(struct hw_control *c)
{
    return c->policy;
}

const char *hw_control_policy_text(struct hw_control *c)
{
    return c->policy_text;
}

/* A node that gains this many peers at once gets a new full map rather than a delta
 * listing them: its blocks are shared with other viewers, a delta's are not, and no
 * per-node list of thousands of ids is kept meanwhile. */
#define POLICY_FULL_MAP_GAIN 256

struct compare_ctx {
    struct hw_control *ctl;
    bool every_filter;
};

/* One node's part of a policy change, sent at once (nothing is gathered per node: a
 * change that gives every node every other would otherwise hold nodes^2 ids). */
static void send_compared(int64_t id, const struct hw_policy_change *chg, void *arg)
{
    struct compare_ctx *cc = arg;
    struct hw_control *c = cc->ctl;
    struct tn_node *n = hw_tailnet_node(&c->tn, id);
    bool filter = cc->every_filter || chg->n_filters > 0;
    if (!n || !node_has_live_streams(n) || (!filter && !chg->n_gained && !chg->n_lost))
        return;
    if (chg->n_gained > POLICY_FULL_MAP_GAIN) {
        for (struct tn_stream *ms = n->streams; ms; ms = ms->node_next)
            if (ms->initial_sent && ms->st)
                push_full_map(c, ms);
        return;
    }
    struct idvec gained = {chg->gained, chg->n_gained, chg->n_gained};
    struct idvec lost = {chg->lost, chg->n_lost, chg->n_lost};
    struct idvec none = {0};
    struct delta_args a = {&gained, &none, &lost, filter, false, false};
    struct hw_sbuf *frames[2] = {NULL, NULL};
    push_to_node(n, frames, c, build_delta, &a);
    hw_sbuf_unref(frames[0]);
    hw_sbuf_unref(frames[1]);
}

int hw_control_set_policy(struct hw_control *c, struct hw_policy *p, char *text, char *err, size_t err_len)
{
    size_t n = 0;
    struct hw_policy_node *descs = policy_nodes_of(c, &n);
    /* Both compiled from one node list: the comparison runs a word at a time. The
     * kept net (c->pnet) has the same content, but its slots follow the node history. */
    struct hw_policy_net *cur = hw_policy_net_build(p, descs, n, err, err_len);
    struct hw_policy_net *old = cur ? hw_policy_net_build(c->policy, descs, n, err, err_len) : NULL;
    if (!cur || !old) {
        hw_policy_net_free(old);
        policy_nodes_free(descs, n);
        hw_policy_net_free(cur);
        hw_policy_free(p);
        free(text);
        return -1;
    }
    /* The new policy is in force before anything is sent: messages are built from it. */
    bool every_filter = !c->pnet || !p;   /* the namespace default is an allow-all filter */
    struct hw_policy *old_policy = c->policy;   /* `old` refers to it */
    hw_policy_net_free(c->pnet);
    free(c->policy_text);
    c->policy = p;
    c->pnet = p ? cur : NULL;
    c->policy_text = text;
    if (c->flush_timer) {
        hw_timer_cancel(c->loop, c->flush_timer);
        c->flush_timer = NULL;
    }
    /* Routers compete per namespace without a policy, tailnet-wide with one. */
    if ((old_policy != NULL) != (p != NULL))
        elect_primaries(c);
    /* What was pending goes out first, under the new policy. */
    flush_policy(c, cur);
    struct compare_ctx cc = {c, every_filter};
    hw_policy_net_compare_all(old, cur, c->srv->cfg->server_url, send_compared, &cc);
    /* Which routes each viewer may use follows the rules too. */
    for (size_t i = 0; i < n; i++) {
        struct tn_node *router = hw_tailnet_node(&c->tn, descs[i].id);
        if (!router || !router->n_routes)
            continue;
        size_t np = 0;
        int64_t *peers = hw_policy_peers(cur, router->row.id, &np);
        for (size_t k = 0; k < np; k++)
            idvec_push(&pend_of(c, peers[k])->changed, router->row.id);
        free(peers);
    }
    policy_nodes_free(descs, n);
    hw_policy_net_free(old);
    hw_policy_free(old_policy);
    auto_approve_all(c);
    flush_policy(c, cur);
    if (!p)
        hw_policy_net_free(cur);
    if (c->flush_timer) {
        hw_timer_cancel(c->loop, c->flush_timer);
        c->flush_timer = NULL;
    }
    return 0;
}

struct policy_post {
    struct hw_control *ctl;
    struct hw_policy *policy;
    char *text;
};

static void apply_policy_post(struct hw_loop *loop, void *arg)
{
    struct policy_post *pp = arg;
    char err[512];
    pthread_mutex_lock(&pp->ctl->srv->lock);
    if (hw_control_set_policy(pp->ctl, pp->policy, pp->text, err, sizeof err) < 0)
        log_error("the new policy was not put in force: %s", err);
    else
        log_info("policy: a new policy is in force");
    pthread_mutex_unlock(&pp->ctl->srv->lock);
    free(pp);
}

void hw_control_post_policy(struct hw_control *c, struct hw_policy *p, char *text)
{
    struct policy_post *pp = hw_malloc(sizeof *pp);
    *pp = (struct policy_post){c, p, text};
    hw_loop_post(c->loop, apply_policy_post, pp);
}

/* ---- /machine/register ---- */

static void random_id(char *out, size_t len)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (size_t i = 0; i + 1 < len; i++)
        out[i] = alphabet[randombytes_uniform(sizeof alphabet - 1)];
    out[len - 1] = '\0';
}

static int64_t default_expiry(struct hw_control *c, const struct tc_register_request *r, bool tagged)
{
    int64_t now = hw_now();
    if (tagged)
        return 0;
    if (r->expiry.set && r->expiry.sec > now)
        return r->expiry.sec;
    if (c->srv->cfg->node_expiry_ms > 0)
        return now + c->srv->cfg->node_expiry_ms / 1000;
    return 0;
}

static void set_hostinfo(struct hw_node *row, const struct tc_hostinfo *hi)
{
    if (!hi->raw)
        return;
    free(row->hostinfo_json);
    row->hostinfo_json = tc_json_dump(hi->raw, NULL);
    if (hi->hostname && *hi->hostname)
        snprintf(row->hostname, sizeof row->hostname, "%s", hi->hostname);
}

/* Answers the AuthURL of a new pending registration. */
static void start_interactive(struct hw_control *c, struct hw_h2_stream *st, const char *mkey,
                              const struct tc_register_request *r)
{
    struct hw_pending p = {0};
    random_id(p.id, 25);
    snprintf(p.machine_key, sizeof p.machine_key, "%s", mkey);
    hw_key_format(HW_KEY_NODE, r->node_key, p.node_key);
    snprintf(p.hostname, sizeof p.hostname, "%s",
             r->hostinfo.hostname && *r->hostinfo.hostname ? r->hostinfo.hostname : "node");
    p.hostinfo_json = r->hostinfo.raw ? tc_json_dump(r->hostinfo.raw, NULL) : NULL;
    p.created_at = hw_now();
    p.expires_at = p.created_at + PENDING_REGISTRATION_S;
    hw_db_pending_delete_machine(c->srv->db, mkey);
    if (hw_db_pending_count(c->srv->db, p.created_at) >= MAX_PENDING_REGISTRATIONS) {
        free(p.hostinfo_json);
        log_warn("register: %d logins already wait for an admin: refusing %s",
                 MAX_PENDING_REGISTRATIONS, mkey);
        register_answer(st, NULL, NULL,
                        "too many logins are waiting for an administrator; try again later", false);
        return;
    }
    int rc = hw_db_pending_insert(c->srv->db, &p);
    free(p.hostinfo_json);
    if (rc != HW_DB_OK) {
        log_error("register: storing a pending registration failed: %s", hw_db_errmsg(c->srv->db));
        register_answer(st, NULL, NULL, "the server could not store the login request; try again", false);
        return;
    }
    char *url = hw_sprintf("%s/register/%s", c->srv->cfg->server_url, p.id);
    log_info("register: %s (%s) waits for `hwctl nodes register --key %s -n NAMESPACE`", p.hostname,
             mkey, p.id);
    register_answer(st, NULL, url, NULL, false);
    free(url);
}

static void hold_followup(struct hw_control *c, struct ts_session *sess, struct hw_h2_stream *st,
                          const struct hw_pending *p)
{
    struct followup *f = hw_calloc(1, sizeof *f);
    f->kind = STREAM_FOLLOWUP;
    f->ctl = c;
    f->st = st;
    f->sess = sess;
    snprintf(f->reg_id, sizeof f->reg_id, "%s", p->id);
    snprintf(f->machine_key, sizeof f->machine_key, "%s", p->machine_key);
    snprintf(f->node_key, sizeof f->node_key, "%s", p->node_key);
    f->deadline = p->expires_at;
    f->next = c->followups;
    if (c->followups)
        c->followups->prev = f;
    c->followups = f;
    hw_h2_set_user(st, f);
}

/* Stores the machine's node (new, or re-keyed) for a valid pre-auth key, in one
 * transaction with marking a single-use key used -- a savepoint of the group's
 * transaction. Returns the node id, or 0 with err set (nothing of it stored). The
 * tailnet in memory follows only after the group's COMMIT (commit_registrations). */
static int64_t store_with_key(struct hw_control *c, const char *mkey, const struct tc_register_request *r,
                              const struct hw_preauth_key *key, char *err, size_t err_len)
{
    struct hw_db *db = c->srv->db;
    bool tagged = key->tags_json && strlen(key->tags_json) > 2;
    struct hw_node row = {0};
    struct tn_node *existing = hw_tailnet_by_machine_key(&c->tn, mkey);
    if (hw_db_begin(db) != HW_DB_OK) {
        snprintf(err, err_len, "the server's database is busy; try again");
        return 0;
    }
    int rc;
    if (existing) {
        hw_db_node_get(db, existing->row.id, &row);
        hw_key_format(HW_KEY_NODE, r->node_key, row.node_key);
        row.namespace_id = key->namespace_id;
        row.ephemeral = key->ephemeral;
        row.expiry = default_expiry(c, r, tagged);
        row.auth_key_id = key->id;
        if (tagged) {
            free(row.tags_json);
            row.tags_json = hw_strdup(key->tags_json);
        }
        set_hostinfo(&row, &r->hostinfo);
        rc = hw_db_node_update(db, &row);
    } else {
        snprintf(row.machine_key, sizeof row.machine_key, "%s", mkey);
        hw_key_format(HW_KEY_NODE, r->node_key, row.node_key);
        snprintf(row.hostname, sizeof row.hostname, "%s",
                 r->hostinfo.hostname && *r->hostinfo.hostname ? r->hostinfo.hostname : "node");
        set_hostinfo(&row, &r->hostinfo);
        row.namespace_id = key->namespace_id;
        row.ephemeral = key->ephemeral;
        row.expiry = default_expiry(c, r, tagged);
        row.auth_key_id = key->id;
        row.tags_json = tagged ? hw_strdup(key->tags_json) : NULL;
        snprintf(row.register_method, sizeof row.register_method, "authkey");
        char base[HW_NAME_MAX];
        hw_given_name_from_hostname(row.hostname, base);
        if (hw_ipalloc_pick(db, c->srv->cfg, row.ipv4, row.ipv6, err, err_len) < 0 ||
            hw_given_name_unique(db, base, 0, row.given_name) != HW_DB_OK) {
            hw_db_rollback(db);
            hw_node_clear(&row);
            if (!*err)
                snprintf(err, err_len, "the server could not name the node; try again");
            return 0;
        }
        rc = hw_db_node_insert(db, &row);
    }
    if (rc == HW_DB_OK && r->hostinfo.raw)
        rc = sync_advertised_routes(db, row.id, &r->hostinfo);
    if (rc == HW_DB_OK && !tagged && apply_request_tags(c, &row, &r->hostinfo))
        rc = hw_db_node_update(db, &row);
    if (rc == HW_DB_OK && auto_approve_routes(c, &row) < 0)
        rc = HW_DB_ERROR;
    if (rc == HW_DB_OK && !key->reusable)
        rc = hw_db_preauth_mark_used(db, key->id);
    if (rc != HW_DB_OK || hw_db_commit(db) != HW_DB_OK) {
        log_error("register: storing node for %s failed: %s", mkey, hw_db_errmsg(db));
        hw_db_rollback(db);
        hw_node_clear(&row);
        snprintf(err, err_len, "the server could not store the node; try again");
        return 0;
    }
    int64_t id = row.id;
    hw_node_clear(&row);
    return id;
}

/* The pre-auth key part of /machine/register for one queued request, inside the group's
 * transaction: checks the key (it may have been used by an earlier member of the same
 * group) and stores the node. Decides the answer; sends nothing. */
static void register_queued(struct hw_control *c, struct queued_reg *q, int64_t now)
{
    struct hw_preauth_key key = {0};
    const char *problem = NULL;
    if (hw_db_preauth_lookup(c->srv->db, q->req.auth_key, &key) != HW_DB_OK)
        problem = "invalid pre-auth key: check the key, or create one with `hwctl preauthkeys create`";
    else if (key.expiration && key.expiration <= now)
        problem = "the pre-auth key has expired: create a new one with `hwctl preauthkeys create`";
    else if (key.used && !key.reusable) {
        /* A container restarting with the same single-use key and state keeps its node. */
        struct tn_node *same = hw_tailnet_by_machine_key(&c->tn, q->machine_key);
        if (same && same->row.auth_key_id == key.id && strcmp(same->row.node_key, q->node_key) == 0 &&
            !node_expired(same, now)) {
            q->created = same;
            hw_preauth_key_clear(&key);
            return;
        }
        problem = "the pre-auth key was already used (it is single-use): create a new one, "
                  "or a reusable one with `hwctl preauthkeys create --reusable`";
    }
    if (problem) {
        log_info("register: %s refused: %s", q->machine_key, problem);
        snprintf(q->answer_error, sizeof q->answer_error, "%s", problem);
        hw_preauth_key_clear(&key);
        return;
    }
    q->stored_id = store_with_key(c, q->machine_key, &q->req, &key, q->answer_error, sizeof q->answer_error);
    if (!q->stored_id && !q->answer_error[0])
        snprintf(q->answer_error, sizeof q->answer_error, "the server could not store the node; try again");
    hw_preauth_key_clear(&key);
}

static void queued_reg_free(struct queued_reg *q)
{
    if (q->st)
        hw_h2_set_user(q->st, NULL);
    tc_register_request_free(&q->req);
    free(q);
}

/* Stores every queued registration in one transaction (one fsync), then -- only once
 * the COMMIT returned -- brings the tailnet up to date and answers each client. Called
 * with srv->lock held. */
static void commit_registrations_locked(struct hw_control *c)
{
    struct queued_reg *group = c->reg_head;
    size_t n = c->n_reg_queued;
    c->reg_head = c->reg_tail = NULL;
    c->n_reg_queued = 0;
    if (!group)
        return;
    struct hw_db *db = c->srv->db;
    int64_t now = hw_now();
    bool open = hw_db_begin(db) == HW_DB_OK;
    if (!open)
        log_error("register: a transaction for %zu registrations could not start: %s", n, hw_db_errmsg(db));
    for (struct queued_reg *q = group; q; q = q->next) {
        if (open)
            register_queued(c, q, now);
        else
            snprintf(q->answer_error, sizeof q->answer_error, "the server's database is busy; try again");
    }
    bool durable = open && hw_db_commit(db) == HW_DB_OK;
    if (n > 1)
        log_debug("register: %zu registrations stored in one transaction", n);
    if (open && !durable) {
        log_error("register: committing %zu registrations failed: %s", n, hw_db_errmsg(db));
        hw_db_rollback(db);
    }
    for (struct queued_reg *q = group, *next; q; q = next) {
        next = q->next;
        struct tn_node *answer_node = q->created;
        if (q->stored_id) {
            if (durable) {
                answer_node = reload_node(c, q->stored_id);
                if (answer_node)
                    log_info("register: node %lld %s joined namespace %s with a pre-auth key (%s %s)",
                             (long long)q->stored_id, answer_node->row.given_name,
                             answer_node->ns ? answer_node->ns->name : "?", answer_node->row.ipv4,
                             answer_node->row.ipv6);
                else
                    snprintf(q->answer_error, sizeof q->answer_error, "the server could not store the node; try again");
            } else {
                snprintf(q->answer_error, sizeof q->answer_error, "the server could not store the node; try again");
            }
        }
        if (q->st) {
            if (q->answer_error[0])
                register_answer(q->st, NULL, NULL, q->answer_error, false);
            else
                register_answer(q->st, answer_node, NULL, NULL, false);
            ts_session_kick(q->sess);
        }
        queued_reg_free(q);
    }
}

static void commit_registrations(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_control *c = arg;
    c->reg_timer = NULL;
    pthread_mutex_lock(&c->srv->lock);
    commit_registrations_locked(c);
    pthread_mutex_unlock(&c->srv->lock);
}

/* Queues a pre-auth key registration for the group commit at the end of this pass of the
 * event loop. A second request of the same machine or node key waits for the first's
 * group to be committed, so each sees the other's result. Takes over *r. */
static void queue_registration(struct hw_control *c, struct ts_session *sess, struct hw_h2_stream *st,
                               const char *mkey, const char *nodekey, struct tc_register_request *r)
{
    for (struct queued_reg *q = c->reg_head; q; q = q->next) {
        if (strcmp(q->machine_key, mkey) == 0 || strcmp(q->node_key, nodekey) == 0) {
            commit_registrations_locked(c);
            break;
        }
    }
    if (c->n_reg_queued >= REGISTER_GROUP_MAX)
        commit_registrations_locked(c);
    struct queued_reg *q = hw_calloc(1, sizeof *q);
    q->kind = STREAM_REGISTER;
    q->st = st;
    q->sess = sess;
    snprintf(q->machine_key, sizeof q->machine_key, "%s", mkey);
    snprintf(q->node_key, sizeof q->node_key, "%s", nodekey);
    q->req = *r;
    memset(r, 0, sizeof *r);
    hw_h2_set_user(st, q);
    if (c->reg_tail)
        c->reg_tail->next = q;
    else
        c->reg_head = q;
    c->reg_tail = q;
    c->n_reg_queued++;
    if (!c->reg_timer)
        c->reg_timer = hw_timer_start(c->loop, 0, commit_registrations, c);
}

static const char *registration_id_of(const char *followup_url)
{
    const char *p = strstr(followup_url, "/register/");
    return p ? p + strlen("/register/") : NULL;
}

static void handle_register(struct hw_control *c, struct ts_session *sess, struct hw_h2_stream *st)
{
    size_t len;
    const uint8_t *body = hw_h2_body(st, &len);
    struct tc_register_request r;
    char err[TC_ERRLEN];
    if (tc_register_request_parse(body, len, &r, err, sizeof err) < 0) {
        respond_text(st, 400, err);
        return;
    }
    const char *mkey = ts_session_machine_key(sess);
    char nodekey[HW_KEY_TEXT_MAX];
    hw_key_format(HW_KEY_NODE, r.node_key, nodekey);
    if (r.version < MIN_CAPVER) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "this Tailscale client is too old for this server (capability version %d; "
                 "v1.66 or later is needed): please update it", r.version);
        register_answer(st, NULL, NULL, msg, false);
        tc_register_request_free(&r);
        return;
    }
    pthread_mutex_lock(&c->srv->lock);
    int64_t now = hw_now();
    struct tn_node *n = hw_tailnet_by_node_key(&c->tn, nodekey);
    if (n && strcmp(n->row.machine_key, mkey) != 0) {
        register_answer(st, NULL, NULL, "this node key belongs to another machine", false);
        goto done;
    }

    /* Logout: an expiry in the past. */
    if (r.expiry.set && r.expiry.sec < now && n) {
        if (n->row.ephemeral) {
            int64_t id = n->row.id;
            hw_db_node_delete(c->srv->db, id);
            log_info("register: ephemeral node %lld logged out and was removed", (long long)id);
            register_answer(st, n, NULL, NULL, true);
            detach_and_remove(c, n);
        } else {
            if (!node_expired(n, now))
                hw_db_node_set_expiry(c->srv->db, n->row.id, now);
            n = reload_node(c, n->row.id);
            log_info("register: node %lld logged out", n ? (long long)n->row.id : 0LL);
            register_answer(st, n, NULL, NULL, true);
        }
        goto done;
    }

    /* A known, valid key and no new credentials: a restart or a refresh. */
    if (n && !r.auth_key) {
        if (node_expired(n, now))
            register_answer(st, n, NULL, NULL, true);
        else
            register_answer(st, n, NULL, NULL, false);
        goto done;
    }

    /* Key rotation of a node that has not expired: the machine key (proven by Noise)
     * vouches for the new node key. An expired node goes through login below. */
    if (!n && !r.auth_key && !tc_key_is_zero(r.old_node_key)) {
        char oldkey[HW_KEY_TEXT_MAX];
        hw_key_format(HW_KEY_NODE, r.old_node_key, oldkey);
        struct tn_node *old = hw_tailnet_by_node_key(&c->tn, oldkey);
        if (old && strcmp(old->row.machine_key, mkey) == 0 && !node_expired(old, now)) {
            struct hw_node row = {0};
            if (hw_db_node_get(c->srv->db, old->row.id, &row) == HW_DB_OK) {
                snprintf(row.node_key, sizeof row.node_key, "%s", nodekey);
                if (hw_db_node_update(c->srv->db, &row) == HW_DB_OK) {
                    n = reload_node(c, row.id);
                    log_info("register: node %lld rotated its node key", (long long)row.id);
                    register_answer(st, n, NULL, NULL, false);
                    hw_node_clear(&row);
                    goto done;
                }
            }
            hw_node_clear(&row);
        }
    }

    /* The follow-up of an interactive login: wait for the admin. */
    if (r.followup && *r.followup && !r.auth_key) {
        const char *id = registration_id_of(r.followup);
        struct hw_pending p = {0};
        struct tn_node *by_machine = hw_tailnet_by_machine_key(&c->tn, mkey);
        if (by_machine && strcmp(by_machine->row.node_key, nodekey) == 0 && !node_expired(by_machine, now)) {
            register_answer(st, by_machine, NULL, NULL, false);
            goto done;
        }
        if (id && hw_db_pending_get(c->srv->db, id, &p) == HW_DB_OK &&
            strcmp(p.machine_key, mkey) == 0 && p.expires_at > now) {
            hold_followup(c, sess, st, &p);
            hw_pending_clear(&p);
            goto done;
        }
        hw_pending_clear(&p);
        /* Unknown or expired: a new URL (the client shows it again). */
    }

    if (r.auth_key) {
        queue_registration(c, sess, st, mkey, nodekey, &r);
        goto done;
    }

    start_interactive(c, st, mkey, &r);
done:
    pthread_mutex_unlock(&c->srv->lock);
    tc_register_request_free(&r);
}

/* ---- /machine/map ---- */

static char *endpoints_json(const struct tc_map_request *r)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < r->n_endpoints; i++)
        json_array_append_new(arr, json_string(r->endpoints[i]));
    char *text = tc_json_dump(arr, NULL);
    json_decref(arr);
    return text;
}

static bool same_text(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* The streaming request's Hostinfo often lacks NetInfo (it comes in the lite updates
 * that follow), and upstream clients treat a missing NetInfo as "unchanged": keep the
 * stored one rather than forgetting the node's home DERP region. */
static char *merged_hostinfo(json_t *incoming, const char *stored_text)
{
    json_t *hi = json_deep_copy(incoming);
    if (!json_object_get(hi, "NetInfo")) {
        json_t *stored = json_or_null(stored_text);
        json_t *netinfo = json_object_get(stored, "NetInfo");
        if (json_is_object(netinfo))
            json_object_set(hi, "NetInfo", netinfo);
        json_decref(stored);
    }
    char *text = tc_json_dump(hi, NULL);
    json_decref(hi);
    return text;
}

/* Stores what the client tells about itself (one transaction, and none at all when
 * nothing changed: lite updates are frequent); returns true when peers must hear of it. */
static bool update_from_map_request(struct hw_control *c, struct tn_node *n, const struct tc_map_request *r)
{
    struct hw_node row = {0};
    if (hw_db_node_get(c->srv->db, n->row.id, &row) != HW_DB_OK)
        return false;
    bool changed = false, hostinfo_changed = false;
    char disco[HW_KEY_TEXT_MAX] = "";
    if (!tc_key_is_zero(r->disco_key))
        hw_key_format(HW_KEY_DISCO, r->disco_key, disco);
    if (disco[0] && strcmp(disco, row.disco_key) != 0) {
        snprintf(row.disco_key, sizeof row.disco_key, "%s", disco);
        changed = true;
    }
    if (r->hostinfo.raw) {
        char *hi = merged_hostinfo(r->hostinfo.raw, row.hostinfo_json);
        if (!same_text(hi, row.hostinfo_json)) {
            free(row.hostinfo_json);
            row.hostinfo_json = hi;
            hi = NULL;
            if (r->hostinfo.hostname && *r->hostinfo.hostname)
                snprintf(row.hostname, sizeof row.hostname, "%s", r->hostinfo.hostname);
            changed = hostinfo_changed = true;
        }
        free(hi);
    }
    if (r->n_endpoints > 0) {
        char *ep = endpoints_json(r);
        if (!same_text(ep, row.endpoints_json)) {
            free(row.endpoints_json);
            row.endpoints_json = ep;
            ep = NULL;
            changed = true;
        }
        free(ep);
    }
    /* Routes are checked on every new stream too: a node registered through an
     * interactive login has its Hostinfo stored already, so "changed" says nothing. */
    bool check_routes = r->hostinfo.raw && (hostinfo_changed || r->stream);
    /* Requested tags are applied when the client asks anew (its Hostinfo changed), or
     * on the first stream of an untagged node (an interactive login stored the Hostinfo
     * already): an admin's later `hwctl nodes tag` is not undone by every reconnect. */
    bool untagged = !row.tags_json || strlen(row.tags_json) <= 2;
    if ((hostinfo_changed || (r->stream && untagged)) && apply_request_tags(c, &row, &r->hostinfo))
        changed = true;
    if (changed || check_routes) {
        if (changed)
            row.last_seen = hw_now();
        int rc = hw_db_begin(c->srv->db);
        if (rc == HW_DB_OK && changed)
            rc = hw_db_node_update(c->srv->db, &row);
        if (rc == HW_DB_OK && check_routes)
            rc = sync_advertised_routes(c->srv->db, n->row.id, &r->hostinfo);
        if (rc == HW_DB_OK && check_routes) {
            int approved = auto_approve_routes(c, &row);
            if (approved < 0)
                rc = HW_DB_ERROR;
            else if (approved > 0)
                changed = true;
        }
        if (rc == HW_DB_OK)
            rc = hw_db_commit(c->srv->db);
        if (rc != HW_DB_OK) {
            hw_db_rollback(c->srv->db);
            log_error("map: storing node %lld failed: %s", (long long)row.id, hw_db_errmsg(c->srv->db));
            changed = false;
        }
    }
    hw_node_clear(&row);
    if (changed) {
        struct tn_node *fresh = reload_node(c, n->row.id);
        if (fresh)
            fresh->cap_version = r->version;
        return true;
    }
    if (r->version != n->cap_version) {
        n->cap_version = r->version;
        hw_tailnet_invalidate(n);
    }
    return false;
}

static void stream_link(struct hw_control *c, struct tn_stream *ms)
{
    ms->node_next = ms->node->streams;
    ms->node->streams = ms;
    ms->all_next = c->streams;
    if (c->streams)
        c->streams->all_prev = ms;
    c->streams = ms;
}

static void stream_unlink(struct hw_control *c, struct tn_stream *ms)
{
    if (ms->node) {
        for (struct tn_stream **pp = &ms->node->streams; *pp; pp = &(*pp)->node_next) {
            if (*pp == ms) {
                *pp = ms->node_next;
                break;
            }
        }
    }
    if (ms->all_prev)
        ms->all_prev->all_next = ms->all_next;
    else
        c->streams = ms->all_next;
    if (ms->all_next)
        ms->all_next->all_prev = ms->all_prev;
}

static void set_online(struct hw_control *c, struct tn_node *n, bool online)
{
    if (n->online == online)
        return;
    n->online = online;
    if (!online) {
        n->row.last_seen = hw_now();
        hw_db_node_touch(c->srv->db, n->row.id, n->row.last_seen);
    }
    hw_tailnet_invalidate(n);
    hw_tailnet_mark(n, TN_PEER_ONLINE);
    schedule_flush(c);
    if (n->n_routes)
        want_election(c);
}

static size_t queued_total(struct hw_control *c)
{
    size_t total = 0;
    for (struct tn_stream *ms = c->streams; ms; ms = ms->all_next)
        if (ms->st)
            total += hw_h2_queued(ms->st);
    return total;
}

/* Sends the first map and counts what it queued against the budget. */
static void start_stream(struct hw_control *c, struct tn_stream *ms)
{
    size_t before = hw_h2_queued(ms->st);
    ms->initial_sent = true;
    push_full_map(c, ms);
    c->queued_estimate += hw_h2_queued(ms->st) - before;
}

static void admit_waiting(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_control *c = arg;
    c->admit_timer = NULL;
    pthread_mutex_lock(&c->srv->lock);
    c->queued_estimate = queued_total(c);
    while (c->waiting && c->queued_estimate < FULL_MAP_BUDGET) {
        struct tn_stream *ms = c->waiting;
        c->waiting = ms->wait_next;
        if (!c->waiting)
            c->waiting_tail = NULL;
        ms->waiting = false;
        ms->wait_next = NULL;
        if (ms->st && ms->node && !ms->abandoned)
            start_stream(c, ms);
    }
    if (c->waiting)
        c->admit_timer = hw_timer_start(loop, ADMIT_RETRY_MS, admit_waiting, c);
    pthread_mutex_unlock(&c->srv->lock);
}

static void wait_for_budget(struct hw_control *c, struct tn_stream *ms)
{
    ms->waiting = true;
    if (c->waiting_tail)
        c->waiting_tail->wait_next = ms;
    else
        c->waiting = ms;
    c->waiting_tail = ms;
    if (!c->admit_timer)
        c->admit_timer = hw_timer_start(c->loop, ADMIT_RETRY_MS, admit_waiting, c);
}

static void unwait(struct hw_control *c, struct tn_stream *ms)
{
    struct tn_stream *prev = NULL;
    for (struct tn_stream *it = c->waiting; it; prev = it, it = it->wait_next) {
        if (it != ms)
            continue;
        if (prev)
            prev->wait_next = it->wait_next;
        else
            c->waiting = it->wait_next;
        if (c->waiting_tail == it)
            c->waiting_tail = prev;
        break;
    }
    ms->waiting = false;
}

static void handle_map(struct hw_control *c, struct ts_session *sess, struct hw_h2_stream *st)
{
    size_t len;
    const uint8_t *body = hw_h2_body(st, &len);
    struct tc_map_request r;
    char err[TC_ERRLEN];
    if (tc_map_request_parse(body, len, &r, err, sizeof err) < 0) {
        respond_text(st, 400, err);
        return;
    }
    if (r.version < MIN_CAPVER) {
        respond_text(st, 400, "this Tailscale client is too old for this server: please update it to v1.66 or later");
        tc_map_request_free(&r);
        return;
    }
    char nodekey[HW_KEY_TEXT_MAX];
    hw_key_format(HW_KEY_NODE, r.node_key, nodekey);
    pthread_mutex_lock(&c->srv->lock);
    struct tn_node *n = hw_tailnet_by_node_key(&c->tn, nodekey);
    if (!n || strcmp(n->row.machine_key, ts_session_machine_key(sess)) != 0) {
        respond_text(st, 404, "node not found: log in again");
        goto done;
    }
    int64_t id = n->row.id;
    update_from_map_request(c, n, &r);
    n = hw_tailnet_node(&c->tn, id);
    if (!n) {
        respond_text(st, 404, "node not found: log in again");
        goto done;
    }
    if (!r.stream && r.omit_peers) {
        /* A lite update: stored above; the client ignores the body. */
        hw_h2_respond(st, 200, NULL, NULL, 0);
        goto done;
    }
    if (!r.stream) {
        /* One map, then the end of the response (`tailscale debug`-style polls). */
        struct hw_sbuf *frame = whole_map(c, n, r.compress && strcmp(r.compress, "zstd") == 0);
        if (frame)
            hw_h2_respond(st, 200, "application/octet-stream", frame->data, frame->len);
        else
            respond_text(st, 500, "the map is too large to send");
        hw_sbuf_unref(frame);
        goto done;
    }
    struct tn_stream *ms = hw_calloc(1, sizeof *ms);
    ms->kind = STREAM_MAP;
    ms->ctl = c;
    ms->node = n;
    ms->st = st;
    ms->sess = sess;
    ms->compress = r.compress && strcmp(r.compress, "zstd") == 0;
    hw_h2_set_user(st, ms);
    stream_link(c, ms);
    hw_h2_respond_streaming(st, 200, "application/octet-stream");
    set_online(c, n, true);
    /* A router back within the offline grace may have lost its prefixes meanwhile. */
    if (n->n_routes)
        want_election(c);
    /* Streams already waiting go first, so the budget is shared in arrival order. */
    if (c->waiting || c->queued_estimate >= FULL_MAP_BUDGET)
        wait_for_budget(c, ms);
    else
        start_stream(c, ms);
done:
    pthread_mutex_unlock(&c->srv->lock);
    tc_map_request_free(&r);
}

void hw_control_reload_derp_map(struct hw_control *c)
{
    hw_derpmap_refresh(c->derpmap);
}

bool hw_control_node_online(struct hw_control *c, int64_t node_id)
{
    struct tn_node *n = hw_tailnet_node(&c->tn, node_id);
    return n && n->online;
}

/* ---- dispatch ---- */

void hw_control_request(struct hw_control *c, struct ts_session *s, struct hw_h2_stream *st)
{
    const char *path = hw_h2_path(st);
    const char *method = hw_h2_method(st);
    if (strcmp(path, "/machine/register") == 0 && strcmp(method, "POST") == 0)
        handle_register(c, s, st);
    else if (strcmp(path, "/machine/map") == 0 && strcmp(method, "POST") == 0)
        handle_map(c, s, st);
    else if (strcmp(path, "/machine/audit-log") == 0)
        hw_h2_respond(st, 200, NULL, NULL, 0);
    else if (strncmp(path, "/machine/", 9) == 0)
        respond_text(st, 501, "not supported by this control server\n");
    else
        respond_text(st, 404, "not found\n");
}

void hw_control_stream_closed(struct hw_control *c, struct hw_h2_stream *st)
{
    void *user = hw_h2_get_user(st);
    if (!user)
        return;
    enum stream_kind kind = *(enum stream_kind *)user;
    pthread_mutex_lock(&c->srv->lock);
    if (kind == STREAM_REGISTER) {
        struct queued_reg *q = user;
        q->st = NULL;
        q->sess = NULL;
    } else if (kind == STREAM_FOLLOWUP) {
        struct followup *f = user;
        if (f->prev)
            f->prev->next = f->next;
        else
            c->followups = f->next;
        if (f->next)
            f->next->prev = f->prev;
        free(f);
    } else {
        struct tn_stream *ms = user;
        struct tn_node *n = ms->node;
        if (ms->waiting)
            unwait(c, ms);
        stream_unlink(c, ms);
        free(ms);
        /* The node goes offline only if no stream comes back within the grace period
         * (the sweep decides). */
        if (n && !n->streams) {
            n->row.last_seen = hw_now();
            n->streams_gone_ms = hw_now_ms_mono();
        }
    }
    pthread_mutex_unlock(&c->srv->lock);
}

/* ---- periodic work: keep-alives, offline nodes, ephemeral nodes, stale logins ---- */

static void sweep(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hw_control *c = arg;
    int64_t now_ms = hw_now_ms_mono();
    int64_t now = hw_now();
    pthread_mutex_lock(&c->srv->lock);
    for (struct tn_stream *ms = c->streams; ms; ms = ms->all_next) {
        if (ms->initial_sent && ms->st && now_ms >= ms->keepalive_due)
            push_to_stream(ms, c->keepalive[ms->compress]);
    }
    c->queued_estimate = queued_total(c);
    int64_t ephemeral_timeout = c->srv->cfg->ephemeral_node_inactivity_timeout_ms / 1000;
    for (size_t i = 0; i < c->tn.by_id_cap; i++) {
        struct tn_node *n = c->tn.by_id[i];
        /* A key that just expired: the node is told (it must log in again) and its peers
         * see it expired, as when an admin expires it. */
        if (n && n->row.expiry > c->expiry_checked && n->row.expiry <= now) {
            log_info("node %lld (%s): its key expired; it must log in again", (long long)n->row.id,
                     n->row.given_name);
            hw_tailnet_invalidate(n);
            hw_tailnet_mark(n, TN_PEER_CHANGED | TN_SELF_CHANGED);
            schedule_flush(c);
        }
        if (!n || n->streams)
            continue;
        if (n->online && now - n->row.last_seen >= OFFLINE_GRACE_MS / 1000)
            set_online(c, n, false);
        /* A router that lost its streams may have to hand its prefixes over before it
         * counts as offline. */
        if (n->online && n->n_routes && now_ms - n->streams_gone_ms >= ROUTE_FAILOVER_GRACE_MS &&
            now_ms - n->streams_gone_ms < ROUTE_FAILOVER_GRACE_MS + 2 * SWEEP_MS)
            want_election(c);
        if (n->row.ephemeral && !n->online && n->row.last_seen &&
            now - n->row.last_seen >= ephemeral_timeout) {
            log_info("ephemeral node %lld (%s) offline for %llds: removed", (long long)n->row.id,
                     n->row.given_name, (long long)(now - n->row.last_seen));
            hw_db_node_delete(c->srv->db, n->row.id);
            detach_and_remove(c, n);
        }
    }
    c->expiry_checked = now;
    for (struct followup *f = c->followups; f; f = f->next) {
        if (f->st && now >= f->deadline) {
            register_answer(f->st, NULL, NULL,
                            "the login was not approved in time: run `tailscale up` again", false);
            ts_session_kick(f->sess);
            f->st = NULL;
        }
    }
    if (now % 60 == 0)
        hw_db_pending_delete_expired(c->srv->db, now);
    pthread_mutex_unlock(&c->srv->lock);
    c->sweep_timer = hw_timer_start(loop, SWEEP_MS, sweep, c);
}

/* ---- setup ---- */

/* Sends m to every map stream that has had its first map; returns how many. Call with
 * the server lock held. */
static size_t broadcast(struct hw_control *c, const struct tc_map_response *m)
{
    struct hw_sbuf *frames[2] = {NULL, NULL};
    size_t pushed = 0;
    for (struct tn_stream *ms = c->streams; ms; ms = ms->all_next) {
        if (!ms->initial_sent || !ms->st)
            continue;
        if (!frames[ms->compress])
            frames[ms->compress] = encode(c, m, NULL, NULL, 0, NULL, ms->compress);
        push_to_stream(ms, frames[ms->compress]);
        pushed++;
    }
    hw_sbuf_unref(frames[0]);
    hw_sbuf_unref(frames[1]);
    return pushed;
}

/* A new DERP map (a source changed): every connected client gets it as a delta. */
static void on_derp_map_change(json_t *map, void *arg)
{
    struct hw_control *c = arg;
    pthread_mutex_lock(&c->srv->lock);
    json_decref(c->derp_map);
    c->derp_map = json_incref(map);
    struct tc_map_response m = {.derp_map = map, .control_time = tc_time_now()};
    size_t pushed = broadcast(c, &m);
    pthread_mutex_unlock(&c->srv->lock);
    log_info("DERP map changed: %zu regions, sent to %zu map streams", json_object_size(json_object_get(map, "Regions")), pushed);
}

/* The extra records file changed: every connected client gets the new DNSConfig. */
static void on_dns_change(json_t *dns_config, void *arg)
{
    struct hw_control *c = arg;
    pthread_mutex_lock(&c->srv->lock);
    json_decref(c->dns_config);
    c->dns_config = json_incref(dns_config);
    struct tc_map_response m = {.dns_config = dns_config, .control_time = tc_time_now()};
    size_t pushed = broadcast(c, &m);
    pthread_mutex_unlock(&c->srv->lock);
    log_info("DNS config changed: sent to %zu map streams", pushed);
}

struct hw_control *hw_control_new(struct hw_server *srv, struct hw_loop *loop)
{
    struct hw_control *c = hw_calloc(1, sizeof *c);
    c->srv = srv;
    c->loop = loop;
    hw_tailnet_init(&c->tn);
    pthread_mutex_lock(&srv->lock);
    int rc = hw_tailnet_load(&c->tn, srv->db);
    pthread_mutex_unlock(&srv->lock);
    if (rc < 0) {
        log_error("loading the tailnet from the database failed: %s", hw_db_errmsg(srv->db));
        hw_tailnet_free(&c->tn);
        free(c);
        return NULL;
    }
    c->zenc = tc_zenc_new(TC_ZSTD_LEVEL_FAST);
    c->keepalive[0] = tc_mapframe_keepalive(c->zenc, false);
    c->keepalive[1] = tc_mapframe_keepalive(c->zenc, true);
    char err[256];
    c->derpmap = hw_derpmap_start(srv->cfg, loop, on_derp_map_change, c, err, sizeof err);
    if (!c->derpmap) {
        log_error("DERP map: %s", err);
        hw_control_free(c);
        return NULL;
    }
    c->derp_map = hw_derpmap_current(c->derpmap);
    c->dns = hw_dns_start(srv->cfg, loop, on_dns_change, c, err, sizeof err);
    if (!c->dns) {
        log_error("%s", err);
        hw_control_free(c);
        return NULL;
    }
    c->dns_config = json_incref(hw_dns_current(c->dns));
    c->domain = hw_strdup(srv->cfg->dns_base_domain ? srv->cfg->dns_base_domain : "");
    c->packet_filters = json_pack("{s:o}", "base", tc_filter_allow_all());
    c->expiry_checked = hw_now();
    c->sweep_timer = hw_timer_start(loop, SWEEP_MS, sweep, c);
    log_info("tailnet loaded: %zu nodes", c->tn.n_nodes);
    return c;
}

void hw_control_free(struct hw_control *c)
{
    if (!c)
        return;
    hw_derpmap_stop(c->derpmap);
    hw_dns_stop(c->dns);
    if (c->sweep_timer)
        hw_timer_cancel(c->loop, c->sweep_timer);
    if (c->flush_timer)
        hw_timer_cancel(c->loop, c->flush_timer);
    if (c->admit_timer)
        hw_timer_cancel(c->loop, c->admit_timer);
    if (c->reg_timer)
        hw_timer_cancel(c->loop, c->reg_timer);
    for (struct queued_reg *q = c->reg_head, *next; q; q = next) {
        next = q->next;
        q->st = NULL;   /* the sessions are gone or going: nothing to answer */
        queued_reg_free(q);
    }
    for (struct followup *f = c->followups, *next; f; f = next) {
        next = f->next;
        free(f);
    }
    for (struct tn_stream *ms = c->streams, *next; ms; ms = next) {
        next = ms->all_next;
        free(ms);
    }
    hw_sbuf_unref(c->close_frame);
    hw_sbuf_unref(c->keepalive[0]);
    hw_sbuf_unref(c->keepalive[1]);
    json_decref(c->derp_map);
    json_decref(c->dns_config);
    json_decref(c->packet_filters);
    hw_primaries_free(&c->primaries);
    hw_policy_net_free(c->pnet);
    hw_policy_free(c->policy);
    free(c->policy_text);
    for (size_t i = 0; i < c->pend_cap; i++) {
        idvec_free(&c->pend[i].changed);
        idvec_free(&c->pend[i].patched);
        idvec_free(&c->pend[i].removed);
    }
    free(c->pend);
    idvec_free(&c->touched);
    pchunks_free(c);
    free(c->domain);
    tc_zenc_free(c->zenc);
    hw_tailnet_free(&c->tn);
    free(c);
}
