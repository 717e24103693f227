#ifndef HW_PROTO_NOISE_H
#define HW_PROTO_NOISE_H

/* ts2021, the Noise channel under Tailscale's control protocol (PROTOCOL.md §3.4-3.6):
 * the Noise IK handshake for both roles, the transport records, and the early payload.
 *
 * Everything here works on caller-supplied buffers and never touches a socket, so the
 * server's epoll loop and the client's blocking reads drive the same code. The usual
 * life of a connection:
 *
 *   client: hw_noise_client_start -> send the 101 bytes (base64, in the upgrade request)
 *           -> hw_noise_client_finish on what follows the HTTP 101 -> session
 *   server: hw_noise_server_respond on the decoded initiation -> write the 51 bytes
 *           (or, when hs.refuse, hw_noise_error_message) -> session
 *   then:   hw_noise_seal with the own direction's cipher, a hw_noise_reader on the other.
 *
 * Return codes: HW_NOISE_OK (0), HW_NOISE_AGAIN (1: feed more bytes), HW_NOISE_ERROR (-1:
 * the reason is in the object's error text; the connection must be closed). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { HW_NOISE_ERROR = -1, HW_NOISE_OK = 0, HW_NOISE_AGAIN = 1 };

#define HW_NOISE_KEY_LEN 32
#define HW_NOISE_HASH_LEN 32
#define HW_NOISE_INITIATION_LEN 101   /* version(2) type(1) len(2) e(32) s(48) tag(16) */
#define HW_NOISE_RESPONSE_LEN 51      /* type(1) len(2) e(32) tag(16) */
#define HW_NOISE_HEADER_LEN 3         /* type(1) u16be length, every message but the initiation */
#define HW_NOISE_TAG_LEN 16
#define HW_NOISE_MAX_RECORD 4096      /* whole record on the wire, header included */
#define HW_NOISE_MAX_PLAINTEXT (HW_NOISE_MAX_RECORD - HW_NOISE_HEADER_LEN - HW_NOISE_TAG_LEN)
#define HW_NOISE_RECORD_OVERHEAD (HW_NOISE_HEADER_LEN + HW_NOISE_TAG_LEN)

#define HW_NOISE_MSG_INITIATION 1
#define HW_NOISE_MSG_RESPONSE 2
#define HW_NOISE_MSG_ERROR 3
#define HW_NOISE_MSG_RECORD 4

/* One direction of the transport: ChaCha20-Poly1305 key and the next nonce counter.
 * The counter value UINT64_MAX is never used; reaching it exhausts the cipher. */
struct hw_noise_cipher {
    uint8_t key[HW_NOISE_KEY_LEN];
    uint64_t nonce;
};

/* What a finished handshake yields. The client seals with c2s and reads with s2c; the
 * server the other way round. */
struct hw_noise_session {
    struct hw_noise_cipher c2s, s2c;
    uint8_t handshake_hash[HW_NOISE_HASH_LEN];  /* binds later messages to this connection */
    uint8_t peer[HW_NOISE_KEY_LEN];   /* client: the server key; server: the client machine key */
    uint16_t version;                 /* protocol version from the initiation (the capver) */
};

/* Optional observer of the symmetric state after each Noise step, for tests and for
 * finding the step where an interop mismatch starts. Steps, in order: "initialize",
 * "prologue", "s" (responder static), "e", "es", "ss", "e" (responder), "ee", "se". */
typedef void (*hw_noise_trace_fn)(void *arg, const char *step, const uint8_t h[HW_NOISE_HASH_LEN],
                                  const uint8_t ck[HW_NOISE_HASH_LEN]);

/* An in-flight handshake. Zero it, optionally set trace, then start. Secrets are wiped
 * when the handshake ends either way; hw_noise_handshake_wipe is for abandoning one. */
struct hw_noise_handshake {
    hw_noise_trace_fn trace;
    void *trace_arg;
    char error[200];   /* why the last call failed */
    bool refuse;       /* server: error is a text Tailscale's server sends the client */
    /* internal */
    int stage;
    uint16_t version;
    uint8_t h[HW_NOISE_HASH_LEN], ck[HW_NOISE_HASH_LEN];
    uint8_t e_priv[HW_NOISE_KEY_LEN], s_priv[HW_NOISE_KEY_LEN], rs[HW_NOISE_KEY_LEN];
};

/* Initiator. ephemeral_priv is NULL except in tests (then that key is used). Writes the
 * initiation message. */
int hw_noise_client_start(struct hw_noise_handshake *hs, uint16_t version,
                          const uint8_t machine_priv[HW_NOISE_KEY_LEN],
                          const uint8_t server_pub[HW_NOISE_KEY_LEN],
                          const uint8_t *ephemeral_priv, uint8_t initiation[HW_NOISE_INITIATION_LEN]);
/* Feed the bytes the server sent after its HTTP 101 (all of them so far). AGAIN: the
 * response is not complete yet, call again with more. OK: *used bytes were the response;
 * the bytes after them are transport records (the server corks the early payload behind it). ERROR:
 * hs->error says why; a 0x03 message from the server reads `server error: "<text>"`
 * (its first 128 bytes, escaped; no more than those are waited for). */
int hw_noise_client_finish(struct hw_noise_handshake *hs, const uint8_t *in, size_t len,
                           size_t *used, struct hw_noise_session *out);

/* Responder, in one step: the initiation arrives whole in the upgrade request header.
 * On ERROR with hs->refuse set, send hw_noise_error_message(hs->error) and close (the
 * size/type/length checks Tailscale's server answers); otherwise just close, as a
 * failed authentication deserves no answer. */
int hw_noise_server_respond(struct hw_noise_handshake *hs, const uint8_t server_priv[HW_NOISE_KEY_LEN],
                            const uint8_t *initiation, size_t len, const uint8_t *ephemeral_priv,
                            uint8_t response[HW_NOISE_RESPONSE_LEN], struct hw_noise_session *out);

/* The 0x03 error message for text (cut at 65535 bytes and at what fits cap). Returns the
 * bytes written: 3 + text length, or 0 when cap < 3. */
size_t hw_noise_error_message(const char *text, uint8_t *out, size_t cap);

void hw_noise_handshake_wipe(struct hw_noise_handshake *hs);
void hw_noise_session_wipe(struct hw_noise_session *s);

/* ---- transport ---- */

/* The 12-byte AEAD nonce for a counter: 4 zero bytes, then the counter big-endian. */
void hw_noise_nonce(uint64_t counter, uint8_t out[12]);

/* Wire bytes for len plaintext bytes: HW_NOISE_MAX_PLAINTEXT per record, 19 bytes of
 * overhead each. 0 for 0 (an empty write sends nothing, as upstream does). */
size_t hw_noise_sealed_len(size_t len);
/* One record of len <= HW_NOISE_MAX_PLAINTEXT bytes (0 allowed) into out, which holds
 * len + HW_NOISE_RECORD_OVERHEAD. Fails only when the cipher is exhausted. */
int hw_noise_seal_record(struct hw_noise_cipher *c, const uint8_t *pt, size_t len, uint8_t *out);
/* Any length, split into records. out must hold hw_noise_sealed_len(len) bytes and must
 * not overlap pt. On failure nothing is consumed and *why says why. */
int hw_noise_seal(struct hw_noise_cipher *c, const uint8_t *pt, size_t len, uint8_t *out,
                  size_t cap, size_t *written, const char **why);

/* Incremental record reader for one direction. Input may be cut anywhere; at most one
 * record is held back. Any record over 4096 bytes, of a type other than 4, too short for
 * its tag, or failing authentication is fatal and permanent. */
struct hw_noise_reader {
    struct hw_noise_cipher cipher;
    bool failed;
    char error[96];
    size_t have;   /* bytes of the current record in buf */
    size_t need;   /* its total size once the header is known, else 0 */
    uint8_t buf[HW_NOISE_MAX_RECORD];
};

void hw_noise_reader_init(struct hw_noise_reader *r, const struct hw_noise_cipher *cipher);
/* Takes bytes from *in (advancing *in and *in_len) until one non-empty record is
 * complete. Returns 1 with *pt and *pt_len set to its plaintext (inside r, valid until the
 * next call), 0 once the input is used up, -1 on a fatal error (r->error). */
int hw_noise_reader_next(struct hw_noise_reader *r, const uint8_t **in, size_t *in_len,
                         const uint8_t **pt, size_t *pt_len);
/* The same as a loop: fn gets every plaintext in data. Returns 0 when all of data was
 * used, -1 on a reader error (r->error), or fn's own negative return, which stops it. */
typedef int (*hw_noise_plaintext_fn)(void *arg, const uint8_t *pt, size_t len);
int hw_noise_reader_feed(struct hw_noise_reader *r, const uint8_t *data, size_t len,
                         hw_noise_plaintext_fn fn, void *arg);
void hw_noise_reader_wipe(struct hw_noise_reader *r);

/* ---- early payload (server -> client, first bytes of the plaintext stream) ---- */

#define HW_NOISE_EARLY_MAGIC "\xff\xff\xffTS"
#define HW_NOISE_EARLY_MAGIC_LEN 5
#define HW_NOISE_EARLY_MAX_JSON (10u << 20)   /* the Go client's limit */

/* magic + u32be length + {"nodeKeyChallenge":"chalpub:<hex>"}. malloc'd; never NULL. */
uint8_t *hw_noise_early_payload(const uint8_t challenge_pub[HW_NOISE_KEY_LEN], size_t *len);

/* Client-side recogniser. Zero it, then feed the server's plaintext from its first byte.
 * AGAIN: all of data consumed, undecided. OK: decided; *used bytes of data belonged to the
 * payload and data[*used..] is HTTP/2. If present is false the server sent no payload:
 * first hand HTTP/2 the pending_len bytes held back from earlier calls (they are a prefix
 * of HW_NOISE_EARLY_MAGIC). ERROR: error says why. */
struct hw_noise_early {
    bool present;
    uint8_t challenge[HW_NOISE_KEY_LEN];   /* zero when the JSON has none */
    size_t pending_len;
    char error[96];
    /* internal */
    int state;
    size_t have;
    uint8_t len_bytes[4];
    uint32_t json_len;
    char *json;
};

int hw_noise_early_feed(struct hw_noise_early *ep, const uint8_t *data, size_t len, size_t *used);
/* Frees what an unfinished parse holds (a finished or failed one holds nothing). */
void hw_noise_early_free(struct hw_noise_early *ep);

#endif
