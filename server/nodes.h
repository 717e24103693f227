#ifndef HW_SERVER_NODES_H
#define HW_SERVER_NODES_H

/* Node lifecycle rules shared by the admin API and the control protocol: address
 * allocation, MagicDNS given names, turning a login into a stored node. Callers hold
 * the server lock. Errors are written to err as one line a user can act on. */

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "db/db.h"

/* Picks free addresses from cfg->prefix_v4 / prefix_v6 (sequential: lowest free after
 * the network's reserved addresses; random: uniformly among free ones), skipping
 * addresses already held by a node. Writes "" where that family is not configured.
 * Returns 0, or -1 with err set ("IPv4 prefix 100.64.0.0/30 is full"). */
int hw_ipalloc_pick(struct hw_db *db, const struct hw_config *cfg,
                    char v4_out[HW_IP_TEXT_MAX], char v6_out[HW_IP_TEXT_MAX],
                    char *err, size_t err_len);

/* DNS-label form of a client hostname: lowercased, invalid runs turned to '-',
 * trimmed, at most 63 chars; "node" when nothing is left. */
void hw_given_name_from_hostname(const char *hostname, char out[HW_NAME_MAX]);
/* base, or base-1, base-2 ... : the first not taken by a node other than except_id
 * (a long base is shortened so the suffix fits in 63 characters). Returns 0, or a
 * negative enum hw_db_rc with hw_db_errmsg() set. */
int hw_given_name_unique(struct hw_db *db, const char *base, int64_t except_node_id,
                         char out[HW_NAME_MAX]);

/* Canonical form of a route prefix: parses an IPv4 or IPv6 CIDR ("192.168.1.77/24"),
 * clears the host bits ("192.168.1.0/24"), prints IPv6 compressed ("fd00::/64").
 * Returns 0, or -1 with a reason in err ("prefix \"10.0.0.0\" has no /length ..."). */
int hw_prefix_canonical(const char *in, char out[HW_PREFIX_TEXT_MAX], char *err, size_t err_len);

/* Turns the pending registration `reg_id` into a node of namespace_id, in one
 * transaction: addresses, given name, expiry from cfg->node_expiry_ms, pending row
 * deleted. If the machine key is already a node, that node is re-keyed and moved
 * instead (a re-login keeps its addresses and given name).
 * Errors: "no pending registration with id X", "registration id X expired: run the login
 * again on the client", "namespace N not found", a full prefix, or a store failure.
 * Returns 0 (out filled, free with hw_node_clear) or -1; on -1 nothing was changed
 * (except when only reading the committed node back failed: the message says so). */
int hw_nodes_register_pending(struct hw_db *db, const struct hw_config *cfg, const char *reg_id,
                              int64_t namespace_id, struct hw_node *out, char *err, size_t err_len);

#endif
