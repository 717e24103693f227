#ifndef HW_SERVER_HTTP_PUBLIC_H
#define HW_SERVER_HTTP_PUBLIC_H

/* The public HTTP listener on listen_addr: what Tailscale clients and browsers reach
 * before any Noise session (/key, /health, the small pages), and later the /ts2021
 * upgrade that hands the socket to the event loop. */

#include <stddef.h>

struct hw_server;

/* Splits "127.0.0.1:8080", "[::]:8080" or ":8080" (all addresses) into host ("" for
 * all) and port, without any lookup. Returns 0, or -1 with the reason in err. */
int hw_split_host_port(const char *addr, char *host, size_t host_len, char *port,
                       size_t port_len, char *err, size_t err_len);

/* Binds and listens on addr (a name is resolved once, here, at start). Returns the
 * socket and the address it got in bound ("127.0.0.1:8080", "[::]:8080": the real port
 * when addr asked for port 0), or -1 with "cannot listen on ADDR: reason" in err. */
int hw_listen_tcp(const char *addr, char *bound, size_t bound_len, char *err, size_t err_len);

/* Serves s->public_fd (taking it over) with one epoll thread. Returns 0 or -1 + err. */
int hw_http_public_start(struct hw_server *s, char *err, size_t err_len);
void hw_http_public_stop(struct hw_server *s);

#endif
