#ifndef HW_SERVER_CONTROL_H
#define HW_SERVER_CONTROL_H

/* The control protocol's requests inside ts2021 sessions: /machine/register and
 * /machine/map (streams, deltas, keep-alives), and polite answers for the other
 * other machine paths. Runs on the event-loop thread. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/server.h"

struct hw_control;
struct hw_h2_stream;
struct ts_session;
struct hw_loop;

struct hw_control *hw_control_new(struct hw_server *srv, struct hw_loop *loop);
void hw_control_free(struct hw_control *c);

/* A complete request arrived on one of a session's streams. */
void hw_control_request(struct hw_control *c, struct ts_session *s, struct hw_h2_stream *st);
/* The stream is gone (finished, reset, or its session closed). */
void hw_control_stream_closed(struct hw_control *c, struct hw_h2_stream *st);

/* Thread-safe: a change was committed to the store (admin API); the loop applies it to
 * the live tailnet and pushes the deltas. */
void hw_control_notify(struct hw_control *c, enum hw_change_kind kind, int64_t id);

/* Re-reads the DERP map sources now (SIGHUP); a change reaches clients as usual. */
void hw_control_reload_derp_map(struct hw_control *c);

/* The access policy (server/policy.h). Call these with the server lock held.
 * hw_control_set_policy puts p in force (NULL: none, namespaces are the boundary),
 * taking p and text (the source, for `hwctl policy get`; may be NULL): the policy is
 * compiled over every node, and each connected client hears at once what changed for
 * it (peers gained and lost, packet filter, SSH policy); advertised routes are checked
 * against autoApprovers again. Run it on the loop thread. On failure (a node the
 * policy cannot compile) returns -1 with err set, frees p and text, and keeps the old. */
struct hw_policy;
int hw_control_set_policy(struct hw_control *c, struct hw_policy *p, char *text, char *err, size_t err_len);
/* Thread-safe: hw_control_set_policy on the loop thread, soon (the admin API). */
void hw_control_post_policy(struct hw_control *c, struct hw_policy *p, char *text);
const struct hw_policy *hw_control_policy(struct hw_control *c);
const char *hw_control_policy_text(struct hw_control *c);

/* Whether the node has a live map stream (or lost it less than the grace period ago).
 * Call with the server lock held. */
bool hw_control_node_online(struct hw_control *c, int64_t node_id);

/* Whether the node is the elected primary router of prefix (server/routes.h); exit
 * routes never are. Call with the server lock held. */
bool hw_control_route_is_primary(struct hw_control *c, int64_t node_id, const char *prefix);

#endif
