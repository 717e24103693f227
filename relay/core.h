#ifndef HW_RELAY_CORE_H
#define HW_RELAY_CORE_H

/* The DERP relay as a library (libhwrelay.a). Two programs drive it: hwrelay
 * (relay/main.c: its own listeners, TLS, mesh, -verify-client-url) and headwater's
 * built-in relay (server/derp_embed.c: sockets upgraded by libmicrohttpd, admission
 * answered in-process). Everything here runs on the thread of the loop the relay was
 * made with, and the loop must outlive the relay. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hw_loop;
struct relay;

enum relay_certmode {
    CERTMODE_MANUAL,     /* certdir/<hostname>.crt+.key; an IP hostname gets a self-signed one */
    CERTMODE_IPSELF,     /* always a self-signed certificate for the IP hostname, kept fresh */
    CERTMODE_HTTP,       /* no TLS: plain HTTP (derper without -certmode manual on a non-443 port) */
};

/* Settings, named after hwrelay's flags. An embedding program only needs the
 * derper limits (queue_depth, write_timeout_ms, client_rate_bytes_per_sec,
 * client_burst_bytes); the rest is read by the hwrelay parts (listeners, TLS, mesh,
 * verify.c, bootstrap DNS). Strings are borrowed and must outlive the relay. */
struct relay_config {
    const char *addr;                 /* -a */
    const char *hostname;             /* -hostname */
    enum relay_certmode certmode;     /* -certmode */
    const char *certdir;              /* -certdir */
    int http_port;                    /* -http-port, -1 = off */
    int stun_port;                    /* -stun-port */
    bool stun;                        /* -stun */
    bool derp;                        /* -derp */
    const char *config_path;          /* -c */
    const char *verify_url;           /* -verify-client-url */
    bool verify_fail_open;            /* -verify-client-url-fail-open */
    const char *mesh_with;            /* -mesh-with */
    const char *mesh_psk_file;        /* -mesh-psk-file */
    int queue_depth;                  /* packets per client per kind, derper's 32 */
    int64_t write_timeout_ms;         /* -tcp-write-timeout, derper's 2 s; 0 = none */
    int64_t verify_allow_ttl_ms, verify_deny_ttl_ms;
    /* derper's RateConfig (hwrelay: -rate-config file): what each client may send the
     * relay, in bytes per second of DERP frame payload, 0 = unlimited; the burst is
     * raised to one largest frame (RELAY_MIN_CLIENT_BURST). A client over its limit is
     * not read from until it is back under (TCP backpressure). Mesh peers are exempt. */
    uint64_t client_rate_bytes_per_sec, client_burst_bytes;
    /* -accept-connection-limit (connections/s, INFINITY = none) and -burst: connections
     * over it on the TLS listener are accepted and closed at once, as in derper. */
    double accept_limit;
    double accept_burst;
    /* -bootstrap-dns-names / -unpublished-bootstrap-dns-names, comma-separated. */
    const char *bootstrap_dns_names, *unpublished_bootstrap_dns_names;
};

/* derper's minimum per-client burst: one SendPacket (64 KiB of packet and a key). */
#define RELAY_MIN_CLIENT_BURST ((64u << 10) + 32u)

/* derper's defaults for every field. */
void relay_config_defaults(struct relay_config *cfg);

/* A relay with no key, no listener and no admission check yet. cfg is copied. */
struct relay *relay_new(struct hw_loop *loop, const struct relay_config *cfg);
/* The server's long-term key (ServerKey, ServerInfo). Must be set before the first
 * connection arrives. */
void relay_set_key(struct relay *r, const uint8_t priv[32]);
const char *relay_public_hex(const struct relay *r);   /* 64 hex digits */
size_t relay_conn_count(const struct relay *r);
/* Changes the per-client receive limit (fields as in relay_config) for new and existing
 * clients, each starting with a full bucket, and returns the burst in effect. */
uint64_t relay_set_client_rate(struct relay *r, uint64_t bytes_per_sec, uint64_t burst_bytes);
/* Closes every connection (each adopted socket goes back through its release
 * callback), stops STUN and frees the relay. */
void relay_free(struct relay *r);

/* STUN on host:port (host "" = both wildcards, IPv6 only if the machine has it).
 * Returns 0, or -1 with one line in err ("STUN: cannot bind 127.0.0.1 port 3478: ..."). */
int relay_stun_listen(struct relay *r, const char *host, int port, char *err, size_t err_len);

/* ---- admission ---- */

/* One client waiting to be let in: its ClientInfo opened, nothing relayed yet. */
struct relay_admission;
/* Called for every new client that is not a mesh peer. The callee answers with
 * relay_admission_done() exactly once, on the loop thread, either before returning or
 * later (the client's frames wait in its socket meanwhile; after 10 s without an
 * answer the client is dropped, and a late answer is then harmless). */
typedef void (*relay_admit_fn)(void *arg, struct relay_admission *a);
/* NULL fn: everyone is admitted (derper without -verify-clients). */
void relay_set_admission(struct relay *r, relay_admit_fn fn, void *arg);
const uint8_t *relay_admission_key(const struct relay_admission *a);   /* 32 bytes */
const char *relay_admission_keyhex(const struct relay_admission *a);   /* 64 hex */
const char *relay_admission_ip(const struct relay_admission *a);       /* without port */
/* allow=false closes the client with `why` in the one log line of the refusal. */
void relay_admission_done(struct relay_admission *a, bool allow, const char *why);

/* ---- derper's request rules, for an HTTP front end of its own ---- */

enum relay_upgrade { RELAY_UPGRADE_NONE, RELAY_UPGRADE_DERP, RELAY_UPGRADE_WEBSOCKET };
/* From the Upgrade and Sec-WebSocket-Protocol headers (either may be NULL): WebSocket
 * only with the "derp" subprotocol; "Upgrade: DERP", or a bare "Upgrade: websocket"
 * (very old tailscaled, plain DERP), is DERP. */
enum relay_upgrade relay_upgrade_kind(const char *upgrade, const char *ws_protocol);
/* Whether a comma-separated header value (may be NULL) lists token, in any case. */
bool relay_header_has_token(const char *value, const char *token);
/* An X-Tailscale-Challenge worth echoing: 1..64 of [A-Za-z0-9._:-]. */
bool relay_challenge_ok(const char *s, size_t len);

/* ---- sockets upgraded elsewhere ---- */

struct relay_adoption {
    int fd;                           /* connected TCP socket, request head already read */
    bool websocket;                   /* DERP inside RFC 6455 binary messages */
    bool not_ideal;                   /* the request carried Ideal-Node */
    const uint8_t *early;             /* bytes read past the request head (copied) */
    size_t early_len;
    /* Called instead of close(fd) when the connection ends (libmicrohttpd wants its
     * upgraded sockets back). NULL: close(fd). */
    void (*release)(void *arg, int fd);
    void *release_arg;
};
/* Takes over a socket whose upgrade answer (the 101) the caller has already sent:
 * the relay sends ServerKey and runs the DERP protocol on it. Returns 0, or -1 when
 * the socket cannot be watched (the caller still owns it then). */
int relay_adopt(struct relay *r, const struct relay_adoption *a);

#endif
