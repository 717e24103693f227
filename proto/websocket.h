#ifndef HW_PROTO_WEBSOCKET_H
#define HW_PROTO_WEBSOCKET_H

/* RFC 6455 framing for the server side of the two protocols Tailscale also carries over
 * WebSocket (browser and WASM clients): ts2021 on /ts2021 and DERP on /derp. Both use
 * binary messages as a plain byte stream, so the reader hands out payload bytes as they
 * arrive and does not care where messages begin or end. No I/O here. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HW_WS_ACCEPT_LEN 29   /* base64 of a SHA-1, with NUL */
/* One frame's payload may not exceed this (the streams are chopped into small records
 * anyway: Noise records are at most 4096 bytes, DERP frames 64 KiB + headers). */
#define HW_WS_MAX_FRAME (1u << 20)

enum hw_ws_opcode {
    HW_WS_CONT = 0x0, HW_WS_TEXT = 0x1, HW_WS_BINARY = 0x2,
    HW_WS_CLOSE = 0x8, HW_WS_PING = 0x9, HW_WS_PONG = 0xA,
};

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key. -1 when the key is not 16 bytes of base64. */
int hw_ws_accept_key(const char *client_key, char out[HW_WS_ACCEPT_LEN]);

/* Header of an unmasked server frame with FIN set: 2, 4 or 10 bytes. */
size_t hw_ws_frame_header(enum hw_ws_opcode op, size_t payload_len, uint8_t out[10]);

/* Incremental reader of client frames (which must be masked). */
struct hw_ws_reader {
    char error[96];
    bool failed;
    bool closed;               /* a close frame arrived */
    /* internal */
    uint8_t hdr[14];
    size_t hdr_have, hdr_need;
    uint64_t left;             /* payload bytes of the current frame still to come */
    uint8_t mask[4];
    size_t mask_pos;
    uint8_t opcode;            /* of the current frame */
    uint8_t message_opcode;    /* of the message being continued */
    uint8_t control[125];      /* a ping/close payload is collected whole */
    size_t control_len;
};

/* What the reader asks its owner to do. */
struct hw_ws_events {
    /* Payload bytes of binary messages, in order. Return 0, or <0 to stop reading. */
    int (*data)(void *arg, const uint8_t *p, size_t len);
    /* A ping arrived: send a pong with this payload. */
    void (*ping)(void *arg, const uint8_t *p, size_t len);
};

void hw_ws_reader_init(struct hw_ws_reader *r);
/* Consumes all of in. Returns 0, -1 on a protocol error (r->error; close with 1002), or
 * the data callback's negative value. After a close frame r->closed is set and the rest
 * is ignored. */
int hw_ws_reader_feed(struct hw_ws_reader *r, const uint8_t *in, size_t len,
                      const struct hw_ws_events *ev, void *arg);

#endif
