#ifndef HW_PROTO_MAPFRAME_H
#define HW_PROTO_MAPFRAME_H

/* The body of a /machine/map response: a sequence of messages, each
 *     u32 little-endian length | payload of that many bytes
 * where the payload is one zstd frame of the MapResponse JSON when the MapRequest said
 * "Compress":"zstd" (every current client does), else the JSON itself. The length
 * counts the payload only (PROTOCOL.md §5.2; fixture real-client-map.json: prefix
 * e5040000 = 1253 = zstd_len).
 *
 * Limits. The upstream client sets none: it allocates whatever u32 length it reads and
 * zstd-decodes without a MaxDecodedSize (control/controlclient/direct.go, read loop and
 * mapSession.decodeMsg). A hostile or broken server could make it allocate 4 GiB per
 * message. We refuse, on both sides, any message whose payload or decompressed JSON is
 * larger than TC_MAPFRAME_MAX; a real 10,000-node netmap is a few MiB of JSON. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/sbuf.h"

#define TC_MAPFRAME_MAX (16u << 20)
/* zstd level 1 = the fastest standard level; Headscale uses klauspost's SpeedFastest.
 * Full maps compress about 3:1 with it, at several hundred MB/s per core. */
#define TC_ZSTD_LEVEL_FAST 1

/* ---- encoder (server) ------------------------------------------------------------------ */

/* One per thread: it owns a ZSTD_CCtx and a scratch buffer reused for every message. */
struct tc_zenc;

struct tc_zenc *tc_zenc_new(int level);
void tc_zenc_free(struct tc_zenc *z);

/* Frames json[0..len) as one message. The result is an immutable refcounted buffer:
 * the same bytes can be queued on every session that must receive them (hw_h2_push).
 * NULL with err set when len exceeds TC_MAPFRAME_MAX or zstd fails. */
struct hw_sbuf *tc_mapframe_encode(struct tc_zenc *z, const void *json, size_t len, bool compress,
                                   char *err, size_t errlen);
/* One message may be several zstd frames back to back (the client's decoder reads them
 * all), which lets a server keep compressed pieces of a large map and reuse them for
 * many recipients. tc_zstd_frame compresses one piece into a new buffer, leaving
 * prefix_room bytes in front of it (for the length prefix of the message it starts);
 * tc_mapframe_put_length writes that prefix: the total size of all the pieces. */
struct hw_sbuf *tc_zstd_frame(struct tc_zenc *z, const void *data, size_t len, size_t prefix_room,
                              char *err, size_t errlen);
void tc_mapframe_put_length(uint8_t out[4], size_t payload_len);
/* Same, for a json_t (dumped compact). */
struct hw_sbuf *tc_mapframe_encode_json(struct tc_zenc *z, const json_t *msg, bool compress,
                                        char *err, size_t errlen);
/* The framed {"KeepAlive":true}, built once per encoder and form. Identical bytes every
 * time matter: the client caches the last keep-alive frame and compares bytes before
 * decompressing. Returns a new reference. */
struct hw_sbuf *tc_mapframe_keepalive(struct tc_zenc *z, bool compress);

/* ---- decoder (client) ------------------------------------------------------------------ */

/* Incremental: feed the response body in whatever pieces HTTP/2 DATA frames deliver. */
struct tc_mapdec;

/* max_size 0 means TC_MAPFRAME_MAX. */
struct tc_mapdec *tc_mapdec_new(bool compressed, size_t max_size);
/* A zstd decompression context that the decoders of one thread can share: a decoder
 * uses it only while it inflates a complete message, inside tc_mapdec_feed. A context
 * keeps up to a window of buffers (about 1 MiB after a large map), so a process holding
 * thousands of map streams (bench/swarm) wants one context, not one per stream. The
 * context must outlive its decoders. */
struct tc_zdec;
struct tc_zdec *tc_zdec_new(void);
void tc_zdec_free(struct tc_zdec *z);
/* A compressed-stream decoder using the shared context. */
struct tc_mapdec *tc_mapdec_new_shared(struct tc_zdec *z, size_t max_size);
void tc_mapdec_free(struct tc_mapdec *d);

/* Called once per complete message with its JSON text (NUL-terminated; valid only
 * during the call). A nonzero return stops tc_mapdec_feed, which returns that value;
 * the rest of that chunk is dropped. */
typedef int (*tc_mapdec_cb)(const char *json, size_t len, void *arg);

/* 0 when all of data was consumed, -1 on a framing/zstd error (the stream is then
 * unusable: tc_mapdec_error says why), or the callback's nonzero value. */
int tc_mapdec_feed(struct tc_mapdec *d, const uint8_t *data, size_t len, tc_mapdec_cb cb,
                   void *arg);
const char *tc_mapdec_error(const struct tc_mapdec *d);

/* Bytes of an unfinished message held (0 at a message boundary). */
size_t tc_mapdec_pending(const struct tc_mapdec *d);

/* Optional, for a compressed stream: sees each complete payload (the zstd frames, before
 * anything is inflated) and may handle the message itself, with the arg given to
 * tc_mapdec_feed. bench/swarm uses it to share the decoding of byte-identical frames
 * between its simulated nodes; hwclient sets none, so every payload is inflated. Returns
 * TC_MAPDEC_PAYLOAD_INFLATE to have the payload inflated and passed to the message
 * callback as usual, TC_MAPDEC_PAYLOAD_DONE when it handled the message, or any other
 * value to stop tc_mapdec_feed, which returns it (as with the message callback). */
enum { TC_MAPDEC_PAYLOAD_INFLATE = 0, TC_MAPDEC_PAYLOAD_DONE = 1 };
typedef int (*tc_mapdec_payload_hook)(const uint8_t *payload, size_t len, void *arg);
void tc_mapdec_set_payload_hook(struct tc_mapdec *d, tc_mapdec_payload_hook hook);

/* Decompresses one payload (one or more zstd frames) into a malloc'd NUL-terminated
 * buffer of at most max_out bytes. Returns 0 or -1 with err. */
int tc_zstd_decompress(const uint8_t *in, size_t len, size_t max_out, uint8_t **out,
                       size_t *out_len, char *err, size_t errlen);

#endif
