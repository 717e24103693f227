#include "proto/websocket.h"

#include <openssl/evp.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

int hw_ws_accept_key(const char *client_key, char out[HW_WS_ACCEPT_LEN])
{
    uint8_t raw[32];
    size_t raw_len = 0;
    if (!client_key || strlen(client_key) > 64 ||
        sodium_base642bin(raw, sizeof raw, client_key, strlen(client_key), NULL, &raw_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        raw_len != 16)
        return -1;
    char joined[128];
    int n = snprintf(joined, sizeof joined, "%s%s", client_key, WS_GUID);
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned digest_len = 0;
    if (!EVP_Digest(joined, (size_t)n, digest, &digest_len, EVP_sha1(), NULL) || digest_len != 20)
        return -1;
    sodium_bin2base64(out, HW_WS_ACCEPT_LEN, digest, 20, sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

size_t hw_ws_frame_header(enum hw_ws_opcode op, size_t payload_len, uint8_t out[10])
{
    out[0] = 0x80 | (uint8_t)op;
    if (payload_len < 126) {
        out[1] = (uint8_t)payload_len;
        return 2;
    }
    if (payload_len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)((uint64_t)payload_len >> (56 - 8 * i));
    return 10;
}

void hw_ws_reader_init(struct hw_ws_reader *r)
{
    memset(r, 0, sizeof *r);
    r->hdr_need = 2;
}

static int fail(struct hw_ws_reader *r, const char *why)
{
    r->failed = true;
    snprintf(r->error, sizeof r->error, "WebSocket: %s", why);
    return -1;
}

/* Validates a complete header; sets up the payload phase. */
static int start_frame(struct hw_ws_reader *r)
{
    uint8_t b0 = r->hdr[0], b1 = r->hdr[1];
    bool fin = b0 & 0x80;
    uint8_t op = b0 & 0x0f;
    if (b0 & 0x70)
        return fail(r, "reserved bits set (no extension was negotiated)");
    if (!(b1 & 0x80))
        return fail(r, "client frame not masked");
    uint64_t len = b1 & 0x7f;
    const uint8_t *p = r->hdr + 2;
    if (len == 126) {
        len = (uint64_t)p[0] << 8 | p[1];
        p += 2;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[i];
        p += 8;
    }
    memcpy(r->mask, p, 4);
    r->mask_pos = 0;
    bool control = op & 0x8;
    if (control) {
        if (!fin || len > 125)
            return fail(r, "fragmented or oversized control frame");
        if (op != HW_WS_CLOSE && op != HW_WS_PING && op != HW_WS_PONG)
            return fail(r, "unknown control opcode");
    } else if (op == HW_WS_CONT) {
        if (!r->message_opcode)
            return fail(r, "continuation without a message");
    } else if (op == HW_WS_BINARY) {
        if (r->message_opcode)
            return fail(r, "new message inside a fragmented one");
        r->message_opcode = op;
    } else {
        return fail(r, op == HW_WS_TEXT ? "text message (this stream is binary)" : "unknown opcode");
    }
    if (len > HW_WS_MAX_FRAME)
        return fail(r, "frame larger than 1 MiB");
    if (!control && fin)
        r->message_opcode = 0;   /* this frame ends the message */
    r->opcode = op;
    r->left = len;
    r->control_len = 0;
    return 0;
}

static int finish_control(struct hw_ws_reader *r, const struct hw_ws_events *ev, void *arg)
{
    if (r->opcode == HW_WS_PING && ev->ping)
        ev->ping(arg, r->control, r->control_len);
    else if (r->opcode == HW_WS_CLOSE)
        r->closed = true;
    return 0;
}

int hw_ws_reader_feed(struct hw_ws_reader *r, const uint8_t *in, size_t len,
                      const struct hw_ws_events *ev, void *arg)
{
    if (r->failed)
        return -1;
    while (len > 0 && !r->closed) {
        if (r->hdr_need > 0) {
            r->hdr[r->hdr_have++] = *in++;
            len--;
            if (r->hdr_have == 2) {
                if (!(r->hdr[1] & 0x80))
                    return fail(r, "client frame not masked");
                size_t ext = (r->hdr[1] & 0x7f) == 126 ? 2 : (r->hdr[1] & 0x7f) == 127 ? 8 : 0;
                r->hdr_need = 2 + ext + 4;
            }
            if (r->hdr_have < r->hdr_need)
                continue;
            r->hdr_have = r->hdr_need = 0;
            if (start_frame(r) < 0)
                return -1;
            if (r->left == 0 && (r->opcode & 0x8) && finish_control(r, ev, arg) < 0)
                return -1;
            if (r->left == 0)
                r->hdr_need = 2;
            continue;
        }
        size_t take = len < r->left ? len : (size_t)r->left;
        /* Unmask into a bounded scratch buffer and hand the bytes on. */
        uint8_t scratch[4096];
        if (take > sizeof scratch)
            take = sizeof scratch;
        for (size_t i = 0; i < take; i++)
            scratch[i] = in[i] ^ r->mask[r->mask_pos++ & 3];
        in += take;
        len -= take;
        r->left -= take;
        if (r->opcode & 0x8) {
            memcpy(r->control + r->control_len, scratch, take);
            r->control_len += take;
        } else if (ev->data) {
            int rc = ev->data(arg, scratch, take);
            if (rc < 0)
                return rc;
        }
        if (r->left == 0) {
            if ((r->opcode & 0x8) && finish_control(r, ev, arg) < 0)
                return -1;
            r->hdr_need = 2;
        }
    }
    return 0;
}
