#ifndef HW_CLIENT_RESOLVE_H
#define HW_CLIENT_RESOLVE_H

/* A name lookup that does not block the event loop: getaddrinfo runs on a helper thread
 * that wakes the loop through a pipe, as conn.c does for the login server. DERP nodes
 * usually carry literal addresses; this is for the ones that only have a HostName. */

#include <netdb.h>

struct hw_loop;
struct hwc_resolve;

/* res is the getaddrinfo list (the callee owns it and frees it with freeaddrinfo), NULL
 * with gai_err set on failure. The handle is gone once the callback runs. */
typedef void (*hwc_resolve_cb)(struct addrinfo *res, int gai_err, void *arg);

/* family AF_UNSPEC, AF_INET or AF_INET6; socktype SOCK_STREAM or SOCK_DGRAM. A literal
 * address is answered on the next loop turn without a thread. NULL only when no thread
 * or pipe could be made (*gai_err = EAI_SYSTEM). */
struct hwc_resolve *hwc_resolve_start(struct hw_loop *loop, const char *host, const char *port,
                                      int family, int socktype, hwc_resolve_cb cb, void *arg,
                                      int *gai_err);
/* No callback afterwards. Waits for the helper thread: getaddrinfo cannot be interrupted
 * and ends within the system resolver's own timeout. */
void hwc_resolve_cancel(struct hwc_resolve *r);

#endif
