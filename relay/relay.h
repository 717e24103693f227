#ifndef HW_RELAY_RELAY_H
#define HW_RELAY_RELAY_H

/* The relay's insides, shared by the files of relay/ (the API for other programs is core.h).
 * A DERP relay with STUN that upstream tailscaled uses exactly as it uses derper. One
 * epoll loop owns every socket; hwrelay's admission checks run on worker threads and
 * come back with hw_loop_post(). */

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/loop.h"
#include "common/ratelimit.h"
#include "common/sbuf.h"
#include "common/strmap.h"
#include "proto/derp.h"
#include "proto/stun.h"
#include "proto/websocket.h"
#include "relay/core.h"

/* ---- connections ---- */

enum conn_state {
    CONN_TLS_HANDSHAKE,
    CONN_HTTP,           /* reading the request head */
    CONN_HTTP_REPLY,     /* answer queued; close once written */
    CONN_WAIT_INFO,      /* ServerKey sent, waiting for ClientInfo */
    CONN_VERIFYING,      /* admission controller asked */
    CONN_ACTIVE,         /* registered DERP client */
    CONN_MESH_CONNECTING, /* outgoing mesh connection: TCP connect in progress */
    CONN_MESH_TLS,       /* ... TLS client handshake */
    CONN_MESH_HEAD,      /* ... upgrade request sent, reading the 101 */
    CONN_MESH_RUN,       /* ... DERP frames from the peer relay */
    CONN_CLOSED,
};

/* One packet waiting for a slow reader. */
struct pkt {
    uint8_t src[32];
    struct hw_sbuf *data;
};

/* Bounded ring; allocated on first use so idle clients carry none. */
struct pktq {
    struct pkt *ring;
    uint16_t head, len;
};

struct gone_note {
    uint8_t key[32];
    uint8_t reason;
    uint8_t kind;        /* 0 = PeerGone, 1 = PeerPresent (mesh watchers) */
    uint8_t ip[16];
    uint16_t port;
    uint8_t flags;
    struct gone_note *next;
};

struct relay;
struct mesh_peer;

struct conn {
    struct relay *relay;
    int fd;
    uint64_t id;
    int refs;                         /* the loop's, plus one per pending admission check */
    enum conn_state state;
    bool via_tls, is_http_port;
    struct mesh_peer *mesh_peer;      /* set on our outgoing connection to a mesh peer */
    SSL *ssl;
    bool want_write;                  /* epoll interest currently includes WRITE */
    bool read_off;                    /* epoll interest currently excludes READ */
    struct hw_stun_addr remote;
    char remote_text[64];

    /* adopted from another server (headwater): hand the socket back instead of closing it */
    void (*release)(void *arg, int fd);
    void *release_arg;

    /* HTTP head, bounded; after ClientInfo, the DERP bytes held back during admission or
     * while the client waits for its rate limit */
    char *http_buf;
    size_t http_len;

    /* WebSocket (/derp with the "derp" subprotocol): DERP bytes still gather in out and
     * become binary messages in ws just before they are written. */
    bool websocket;
    struct hw_ws_reader *ws_reader;
    uint8_t *ws;
    size_t ws_len, ws_off, ws_cap;

    /* output bytes not yet written */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    int64_t last_write_progress;
    struct hw_timer *stall_timer;

    struct hw_timer *deadline;        /* TLS + HTTP + ClientInfo must finish in time */
    struct hw_timer *keepalive;

    /* DERP client */
    struct hw_derp_reader reader;
    uint8_t key[32];
    char keyhex[65];
    char short_key[8];
    struct hw_derp_client_info info;
    bool can_mesh, preferred, not_ideal, registered, watcher;
    uint64_t activity_seq;            /* duplicate keys: the latest to speak is active */
    struct client_set *cset;          /* this key's connections, while registered */
    struct pktq queue, disco_queue;
    bool pong_pending;
    uint8_t pong_data[8];
    bool keepalive_due;
    struct gone_note *notes, *notes_tail;
    /* Keys this client received packets from: it gets a PeerGone when they leave. */
    struct hw_strmap *saw_src;        /* keyhex -> non-NULL, membership */
    uint8_t (*saw_keys)[32];
    size_t n_saw, cap_saw;
    uint8_t last_src[32];             /* skips the lookup for runs from one sender */
    bool have_last_src;
    int64_t ka_interval_ms;
    /* PeerGone NotHere token bucket: 1/s, burst 3 (derper's). */
    double nothere_tokens;
    int64_t nothere_at;
    /* Receive rate limit: while rate_wait runs, nothing is read and the first frame in
     * http_buf is already paid for. */
    struct hw_bucket recv_bucket;
    struct hw_timer *rate_wait;

    bool dirty;                       /* on relay->dirty, output to build and flush */
    struct conn *dirty_next;
    struct conn *all_prev, *all_next;
    const char *close_reason;
};

/* All connections that share one key. */
struct client_set {
    struct conn **v;
    size_t n, cap;
    struct conn *active;
};

struct tls_state;
struct verifier;
struct mesh;

struct relay {
    struct relay_config cfg;
    struct hw_loop *loop;
    uint8_t priv[32], pub[32];
    char pubhex[65];
    bool have_mesh_key;
    uint8_t mesh_key[32];
    struct tls_state *tls;
    struct verifier *verifier;
    relay_admit_fn admit;             /* NULL: everyone is admitted */
    void *admit_arg;
    struct mesh *mesh;

    int listen_fds[4];
    int n_listen;
    int stun_fds[2];
    int n_stun;

    uint64_t next_conn_id, activity_seq;
    struct conn *all;                 /* every open connection */
    struct conn *dirty;               /* connections with output to build */
    size_t n_conns;
    bool stopping;
    struct hw_strmap clients;         /* keyhex -> struct client_set */
    struct hw_strmap gone_watchers;   /* src keyhex -> struct client_set of receivers */
    struct hw_strmap forwarders;      /* keyhex -> struct fwd_list: mesh peers that have it */
    struct conn **watchers;           /* mesh peers that sent WatchConns */
    size_t n_watchers, cap_watchers;
    double client_rate, client_burst; /* bytes/s (0 = unlimited) and bucket depth */
    struct hw_bucket accept_bucket;
    struct bootstrap_dns *bootstrap;  /* NULL: no names configured */
    uint8_t *rbuf;                    /* shared read buffer */
    size_t rbuf_cap;

    /* counters, for logs and tests */
    uint64_t packets_relayed, packets_dropped, packets_forwarded;
    uint64_t rate_limit_waits, accepts_rejected;
};

/* conn.c */
void conn_accept(struct relay *r, int lfd, bool tls, bool http_port);
void conn_close(struct conn *c, const char *reason);
void conn_unref(struct conn *c);
/* Appends bytes to the output buffer; flushing happens at the end of the event. */
void conn_write(struct conn *c, const void *data, size_t len);
uint8_t *conn_reserve(struct conn *c, size_t len);
void conn_mark_dirty(struct conn *c);
/* Re-derives the epoll interest from the state and the pending output. */
void conn_update_interest(struct conn *c);
void relay_flush_dirty(struct relay *r);
size_t conn_out_pending(const struct conn *c);
void conn_start_derp(struct conn *c, const uint8_t *early, size_t early_len);
/* After a verdict of allow: process held-back frames and resume reading. */
void conn_resume_after_verify(struct conn *c);

/* The answer to an upgrade is in c->out; from here on the stream is WebSocket framed. */
void conn_enter_websocket(struct conn *c);

/* http.c: a complete request head has been read (data = head + any bytes after it). */
enum http_result { HTTP_NEED_MORE, HTTP_DONE, HTTP_UPGRADE_DERP, HTTP_UPGRADE_WEBSOCKET, HTTP_BAD };
enum http_result http_handle(struct conn *c, size_t *head_len);

/* derp_server.c */
void derp_on_frame(struct conn *c, const struct hw_derp_frame *f);
void derp_admit(struct conn *c);                 /* verification passed */
void derp_unregister(struct conn *c);
void derp_build_output(struct conn *c);          /* moves queued items into c->out */
void derp_enqueue_packet(struct conn *dst, const uint8_t src[32], const uint8_t *data, size_t len);
void derp_send_local_or_drop(struct relay *r, struct conn *from, const uint8_t src[32],
                             const uint8_t dst[32], const uint8_t *data, size_t len, bool forwarded);
void derp_free_conn_state(struct conn *c);
struct conn *derp_lookup(struct relay *r, const uint8_t key[32]);
void derp_note(struct conn *c, const struct gone_note *n);

/* tls.c */
int tls_init(struct relay *r);
SSL *tls_new_ssl(struct relay *r);
void tls_free(struct relay *r);

/* bootstrap_dns.c: resolves the names on a thread, every 10 minutes (derper's). */
int bootstrap_dns_start(struct relay *r);
void bootstrap_dns_stop(struct relay *r);
/* The answer to /bootstrap-dns?q=... (q may be NULL); malloc'd, NULL = empty body. */
char *bootstrap_dns_answer(struct relay *r, const char *q);

/* stun_server.c */
void stun_close(struct relay *r);

/* relay.c: asks r->admit about a client in CONN_VERIFYING. */
void admission_start(struct conn *c);

/* verify.c: -verify-client-url as the relay's admission callback. */
int verify_init(struct relay *r);
void verify_free(struct relay *r);

/* An outgoing connection (mesh): fd is connecting; ssl (client mode) may be NULL. */
struct conn *conn_new_outgoing(struct relay *r, int fd, SSL *ssl, struct mesh_peer *peer);
/* derp_server.c: key left the region (no local connection, no mesh route). */
void derp_gone_from_region(struct relay *r, const uint8_t key[32]);

/* mesh.c */
int mesh_init(struct relay *r);
/* Our outgoing mesh connection: the 101 head arrived, a frame arrived, it closed. */
void mesh_on_frame(struct conn *c, const struct hw_derp_frame *f);
void mesh_on_close(struct conn *c);
/* The upgrade request to send once connected (and TLS is up). malloc'd. */
char *mesh_upgrade_request(struct conn *c);
void mesh_free(struct relay *r);
/* Forwards to the mesh peer that has dst, if any. Returns true when sent. */
bool mesh_forward(struct relay *r, const uint8_t src[32], const uint8_t dst[32],
                  const uint8_t *data, size_t len);

/* helpers */
void key_to_hex(const uint8_t key[32], char out[65]);
/* ":port", "ip:port", "[ip]:port" (no lookup). */
int relay_split_hostport(const char *addr, char *host, size_t host_len, int *port);

#endif
