#ifndef HW_SERVER_DERP_EMBED_H
#define HW_SERVER_DERP_EMBED_H

/* The built-in relay (derp.server.*, Headscale's embedded DERP): the relay core
 * (relay/core.h) on headwater's loop, fed with /derp sockets that libmicrohttpd has
 * upgraded, STUN on derp.server.stun_listen_addr, and admission answered in-process by
 * hw_verify_node_key() (derp.server.verify_clients, fail-closed). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;
struct hw_server;
struct hw_derp_embed;

/* Makes the relay and binds STUN. Called before the store is opened, so a taken STUN
 * port stops a configured server having changed nothing. With the embedded default
 * (no config file) a taken STUN port is only a warning: the relay runs without STUN.
 * NULL with one line in err on failure. */
struct hw_derp_embed *hw_derp_embed_new(struct hw_server *s, char *err, size_t err_len);
/* Loads or creates derp.server.private_key_path ("privkey:<hex>", 0600, Headscale's
 * form) and starts taking connections. 0, or -1 with err. */
int hw_derp_embed_start(struct hw_derp_embed *d, const uint8_t noise_private[32], char *err,
                        size_t err_len);

/* Whether STUN is being served (false only when the embedded default found its port taken). */
bool hw_derp_embed_has_stun(const struct hw_derp_embed *d);

/* Public pages (libmicrohttpd access handlers, headers complete; return MHD_Result).
 * d may be NULL (relay off): 404, as Headscale has no such routes then. */
int hw_derp_page(struct hw_derp_embed *d, struct MHD_Connection *conn, const char *method);
int hw_derp_probe_page(struct hw_derp_embed *d, struct MHD_Connection *conn, const char *method);
int hw_derp_generate_204(struct hw_derp_embed *d, struct MHD_Connection *conn, const char *method);

/* On the loop thread, before the HTTP daemon stops: no new clients, every DERP
 * connection handed back to libmicrohttpd (MHD_UPGRADE_ACTION_CLOSE), STUN closed. */
void hw_derp_embed_stop(struct hw_derp_embed *d);
/* After the HTTP daemon has stopped (a late upgrade callback may still use d). */
void hw_derp_embed_free(struct hw_derp_embed *d);

#endif
