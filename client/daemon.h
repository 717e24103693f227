#ifndef HW_CLIENT_DAEMON_H
#define HW_CLIENT_DAEMON_H

/* `hwclient up`: the foreground daemon. It logs in (auth key or interactive), keeps a
 * streaming map request open, applies every MapResponse to its netmap, reconnects with
 * backoff, and answers the CLI on its control socket. */

#include <stdbool.h>
#include <stddef.h>

struct hwc_up_opts {
    const char *login_server;
    const char *authkey;       /* NULL: interactive login */
    const char *hostname;      /* NULL: the system's host name */
    const char *const *routes; /* validated, canonical prefixes */
    size_t n_routes;
    const char *const *tags;   /* --advertise-tags: "tag:x" (Hostinfo.RequestTags) */
    size_t n_tags;
    const char *statedir;      /* NULL: the default */
    bool ephemeral;
    int port;                  /* UDP port for magicsock, when port_set (0 = any) */
    bool port_set;             /* else 41641, or any port when that one is taken */
    bool derp_http;            /* plain HTTP to DERP relays (upstream's TS_DEBUG_USE_DERP_HTTP) */
    const char *tun;           /* TUN device for the data plane; NULL: none (control and DERP only) */
    bool accept_routes;        /* peers' subnet routes in AllowedIPs and the routing table */
    bool snat_subnet_routes;   /* masquerade what is forwarded from the tailnet (default true) */
    const char *exit_node;     /* --exit-node: a peer's name or tailnet IP; NULL: none */
    bool exit_node_allow_lan;  /* --exit-node-allow-lan-access */
    /* --tun=userspace: no TUN device; a userspace TCP/IP stack with a SOCKS5 proxy (and an
     * HTTP CONNECT proxy when http_proxy is set) into the tailnet. */
    bool userspace;
    const char *socks5;        /* NULL: 127.0.0.1:1055 */
    const char *http_proxy;    /* NULL: none */
};

/* Runs until `hwclient down`, SIGINT/SIGTERM, or a refused login (exit status 1). */
int hwc_daemon_run(const struct hwc_up_opts *o);

#endif
