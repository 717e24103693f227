#ifndef HW_PROTO_DERP_H
#define HW_PROTO_DERP_H

/* DERP wire format (PROTOCOL.md section 8): frames are type(1) | u32be length | payload.
 * This module only knows bytes: frame header, an incremental reader that can be fed
 * arbitrary chunks, builders for every frame type, and the NaCl-boxed JSON of the
 * ClientInfo / ServerInfo handshake. Connections, queues and routing live in relay/. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HW_DERP_KEY_LEN 32
#define HW_DERP_NONCE_LEN 24
#define HW_DERP_BOX_OVERHEAD 16            /* Poly1305 tag in front of the ciphertext */
#define HW_DERP_HDR_LEN 5
#define HW_DERP_MAGIC "DERP\xf0\x9f\x94\x91"
#define HW_DERP_MAGIC_LEN 8
#define HW_DERP_PROTOCOL_VERSION 2

/* Limits, as derper enforces them. */
#define HW_DERP_MAX_PACKET (64u << 10)             /* data bytes, keys excluded */
#define HW_DERP_MAX_CLIENT_INFO (256u << 10)       /* server: ClientInfo payload */
#define HW_DERP_MIN_CLIENT_INFO (HW_DERP_KEY_LEN + HW_DERP_NONCE_LEN)
#define HW_DERP_MAX_PING 1000u                     /* server: ping payload */
#define HW_DERP_PING_LEN 8
#define HW_DERP_CLIENT_MAX_FRAME (1u << 20)        /* client: any frame */
#define HW_DERP_MAX_SERVER_KEY 1024u               /* client: ServerKey greeting */
#define HW_DERP_SERVER_KEY_LEN (HW_DERP_MAGIC_LEN + HW_DERP_KEY_LEN)
#define HW_DERP_PEER_PRESENT_LEN (HW_DERP_KEY_LEN + 16 + 2 + 1)

enum hw_derp_frame_type {
    HW_DERP_SERVER_KEY = 0x01,
    HW_DERP_CLIENT_INFO = 0x02,
    HW_DERP_SERVER_INFO = 0x03,
    HW_DERP_SEND_PACKET = 0x04,
    HW_DERP_RECV_PACKET = 0x05,
    HW_DERP_KEEP_ALIVE = 0x06,
    HW_DERP_NOTE_PREFERRED = 0x07,
    HW_DERP_PEER_GONE = 0x08,
    HW_DERP_PEER_PRESENT = 0x09,
    HW_DERP_FORWARD_PACKET = 0x0a,
    HW_DERP_WATCH_CONNS = 0x10,
    HW_DERP_CLOSE_PEER = 0x11,
    HW_DERP_PING = 0x12,
    HW_DERP_PONG = 0x13,
    HW_DERP_HEALTH = 0x14,
    HW_DERP_RESTARTING = 0x15,
};

enum hw_derp_peer_gone_reason {
    HW_DERP_GONE_DISCONNECTED = 0x00,
    HW_DERP_GONE_NOT_HERE = 0x01,
    HW_DERP_GONE_MESH_CONN_BROKE = 0xf0,   /* local only, never on the wire */
};

enum hw_derp_present_flags {
    HW_DERP_PRESENT_REGULAR = 1 << 0,
    HW_DERP_PRESENT_MESH_PEER = 1 << 1,
    HW_DERP_PRESENT_PROBER = 1 << 2,
    HW_DERP_PRESENT_NOT_IDEAL = 1 << 3,
};

const char *hw_derp_frame_name(uint8_t type);   /* "SendPacket", or "unknown" */

/* ---- reading ---- */

/* Which side reads decides the size rules. A client refuses any frame over 1 MiB.
 * A server has a limit per frame type (derper's) and discards frames of types it does
 * not handle without buffering them, whatever their length. */
enum hw_derp_side { HW_DERP_SIDE_CLIENT, HW_DERP_SIDE_SERVER };

/* Largest payload the server accepts for a type; 0 for types it skips. */
uint32_t hw_derp_server_limit(uint8_t type);

struct hw_derp_frame {
    uint8_t type;
    uint32_t len;
    const uint8_t *payload;   /* valid until the next hw_derp_reader_next() call */
};

struct hw_derp_reader {
    enum hw_derp_side side;
    uint8_t hdr[HW_DERP_HDR_LEN];
    size_t hdr_have;
    uint8_t type;
    uint32_t len;
    uint32_t have;            /* payload bytes buffered (or skipped) so far */
    bool skipping;
    uint8_t *buf;             /* only while a frame straddles two chunks */
    size_t buf_cap;
    uint64_t skipped_frames;
    const char *error;        /* why HW_DERP_READ_ERROR was returned */
};

enum hw_derp_read_result {
    HW_DERP_READ_MORE = 0,    /* all input consumed, no complete frame */
    HW_DERP_READ_FRAME = 1,   /* *frame is filled; call again with the rest */
    HW_DERP_READ_ERROR = -1,  /* the stream is unusable; reader->error says why */
};

void hw_derp_reader_init(struct hw_derp_reader *r, enum hw_derp_side side);
void hw_derp_reader_free(struct hw_derp_reader *r);
/* Consumes bytes from *data / *len (advancing both). A frame wholly inside the chunk is
 * returned without copying; only a frame split across chunks is buffered, and that
 * buffer is released again once it is delivered, so an idle connection holds none. */
int hw_derp_reader_next(struct hw_derp_reader *r, const uint8_t **data, size_t *len,
                        struct hw_derp_frame *frame);
/* True between frames: nothing half-read. */
bool hw_derp_reader_idle(const struct hw_derp_reader *r);

/* ---- decoding payloads (each returns 0, or -1 when the payload is malformed) ---- */

/* Accepts 40..1024 bytes with the magic, like the Go client. */
int hw_derp_parse_server_key(const uint8_t *p, uint32_t len, uint8_t server_pub[32]);
/* SendPacket: dst(32) + data; data <= 64 KiB. */
int hw_derp_parse_send_packet(const uint8_t *p, uint32_t len, const uint8_t **dst,
                              const uint8_t **data, uint32_t *data_len);
/* RecvPacket (v2): src(32) + data. */
int hw_derp_parse_recv_packet(const uint8_t *p, uint32_t len, const uint8_t **src,
                              const uint8_t **data, uint32_t *data_len);
/* ForwardPacket: src(32) + dst(32) + data. */
int hw_derp_parse_forward_packet(const uint8_t *p, uint32_t len, const uint8_t **src,
                                 const uint8_t **dst, const uint8_t **data, uint32_t *data_len);
/* PeerGone: key(32) [+ reason; missing = Disconnected]. */
int hw_derp_parse_peer_gone(const uint8_t *p, uint32_t len, const uint8_t **key, uint8_t *reason);

struct hw_derp_peer_present {
    uint8_t key[32];
    bool has_addr;
    uint8_t ip[16];           /* IPv4 arrives v4-mapped */
    uint16_t port;
    bool has_flags;
    uint8_t flags;
};
/* Accepts 32+ bytes; older servers send fewer fields. */
int hw_derp_parse_peer_present(const uint8_t *p, uint32_t len, struct hw_derp_peer_present *out);
int hw_derp_parse_restarting(const uint8_t *p, uint32_t len, uint32_t *reconnect_ms,
                             uint32_t *try_for_ms);
/* True for a packet the relay treats as disco (magic "TS💬" and >= 62 bytes):
 * derper answers an undeliverable one with PeerGone NotHere and queues these apart. */
bool hw_derp_looks_like_disco(const uint8_t *p, size_t len);

/* ---- building frames ----
 * Each builder writes a whole frame (header included) into out and returns its length,
 * or 0 when out_cap is too small or an argument breaks a protocol limit. */

size_t hw_derp_put_header(uint8_t *out, uint8_t type, uint32_t len);
size_t hw_derp_build_server_key(uint8_t *out, size_t out_cap, const uint8_t server_pub[32]);
size_t hw_derp_build_send_packet(uint8_t *out, size_t out_cap, const uint8_t dst[32],
                                 const uint8_t *data, size_t data_len);
size_t hw_derp_build_recv_packet(uint8_t *out, size_t out_cap, const uint8_t src[32],
                                 const uint8_t *data, size_t data_len);
size_t hw_derp_build_forward_packet(uint8_t *out, size_t out_cap, const uint8_t src[32],
                                    const uint8_t dst[32], const uint8_t *data, size_t data_len);
size_t hw_derp_build_keep_alive(uint8_t *out, size_t out_cap);
size_t hw_derp_build_note_preferred(uint8_t *out, size_t out_cap, bool preferred);
size_t hw_derp_build_peer_gone(uint8_t *out, size_t out_cap, const uint8_t key[32], uint8_t reason);
/* ip is 16 bytes (IPv4 v4-mapped) */
size_t hw_derp_build_peer_present(uint8_t *out, size_t out_cap, const uint8_t key[32],
                                  const uint8_t ip[16], uint16_t port, uint8_t flags);
size_t hw_derp_build_watch_conns(uint8_t *out, size_t out_cap);
size_t hw_derp_build_close_peer(uint8_t *out, size_t out_cap, const uint8_t key[32]);
size_t hw_derp_build_ping(uint8_t *out, size_t out_cap, const uint8_t data[8]);
size_t hw_derp_build_pong(uint8_t *out, size_t out_cap, const uint8_t data[8]);
size_t hw_derp_build_health(uint8_t *out, size_t out_cap, const char *problem);
size_t hw_derp_build_restarting(uint8_t *out, size_t out_cap, uint32_t reconnect_ms,
                                uint32_t try_for_ms);

/* ---- handshake: NaCl box + JSON ---- */

/* Tailscale's box layout: nonce(24) || tag(16) || ciphertext. seal writes
 * HW_DERP_NONCE_LEN + HW_DERP_BOX_OVERHEAD + len bytes; a NULL nonce means random.
 * open returns the plaintext length, or -1 when the box does not authenticate. */
size_t hw_derp_box_seal(uint8_t *out, const uint8_t *msg, size_t len, const uint8_t *nonce,
                        const uint8_t peer_pub[32], const uint8_t my_priv[32]);
long hw_derp_box_open(uint8_t *out, const uint8_t *box, size_t box_len,
                      const uint8_t peer_pub[32], const uint8_t my_priv[32]);

struct hw_derp_client_info {
    int version;              /* omitted from JSON when 0 */
    bool has_mesh_key;
    uint8_t mesh_key[32];
    bool can_ack_pings;       /* always emitted */
    bool is_prober;           /* omitted when false */
};

struct hw_derp_server_info {
    int version;
    long long token_bucket_bytes_per_second;   /* 0 = unlimited, omitted */
    long long token_bucket_bytes_burst;
};

/* JSON exactly as Go's encoding/json writes it (field order, omitempty). malloc'd. */
char *hw_derp_client_info_json(const struct hw_derp_client_info *info);
char *hw_derp_server_info_json(const struct hw_derp_server_info *info);
/* Field names match case-insensitively, as Go's decoder does; unknown fields are
 * ignored. Returns 0, or -1 with *err set to a static reason. */
int hw_derp_client_info_parse(const uint8_t *json, size_t len, struct hw_derp_client_info *out,
                              const char **err);
int hw_derp_server_info_parse(const uint8_t *json, size_t len, struct hw_derp_server_info *out,
                              const char **err);

/* Whole ClientInfo frame: header + client_pub + nonce + box(JSON). nonce NULL = random.
 * Returns a malloc'd frame and its length in *out_len. */
uint8_t *hw_derp_build_client_info(const uint8_t client_priv[32], const uint8_t client_pub[32],
                                   const uint8_t server_pub[32],
                                   const struct hw_derp_client_info *info,
                                   const uint8_t *nonce, size_t *out_len);
/* Server side of the same frame's payload. */
int hw_derp_open_client_info(const uint8_t server_priv[32], const uint8_t *payload, uint32_t len,
                             uint8_t client_pub[32], struct hw_derp_client_info *info,
                             const char **err);
uint8_t *hw_derp_build_server_info(const uint8_t server_priv[32], const uint8_t client_pub[32],
                                   const struct hw_derp_server_info *info, const uint8_t *nonce,
                                   size_t *out_len);
int hw_derp_open_server_info(const uint8_t client_priv[32], const uint8_t server_pub[32],
                             const uint8_t *payload, uint32_t len,
                             struct hw_derp_server_info *info, const char **err);

/* "[ABCDE]": the first 5 base64 characters of the key, Tailscale's log short form. */
void hw_derp_key_short(const uint8_t key[32], char out[8]);

#endif
