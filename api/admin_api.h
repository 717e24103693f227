#ifndef HW_API_ADMIN_API_H
#define HW_API_ADMIN_API_H

/* The admin API (docs/admin-api.md) served by headwater on its unix socket. */

#include <stddef.h>
#include <stdint.h>

struct hw_server;

/* Creates the socket file at path with the given mode and listens on it. A socket file
 * left by a dead server is replaced; one a live server answers on is not ("another
 * headwater is already serving on PATH"), nor is anything that is not a socket.
 * Returns the fd (dev/ino of the new file in *dev, *ino, so the owner removes only its
 * own file), or -1 with err set. */
int hw_admin_socket_bind(const char *path, unsigned mode, uint64_t *dev, uint64_t *ino,
                         char *err, size_t err_len);

/* Serves s->admin_fd (taking it over) on one internal thread. Returns 0 or -1 + err. */
int hw_admin_api_start(struct hw_server *s, char *err, size_t err_len);
void hw_admin_api_stop(struct hw_server *s);

#endif
