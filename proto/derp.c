#include "proto/derp.h"

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

static void put_u32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_u32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

const char *hw_derp_frame_name(uint8_t type)
{
    switch (type) {
    case HW_DERP_SERVER_KEY: return "ServerKey";
    case HW_DERP_CLIENT_INFO: return "ClientInfo";
    case HW_DERP_SERVER_INFO: return "ServerInfo";
    case HW_DERP_SEND_PACKET: return "SendPacket";
    case HW_DERP_RECV_PACKET: return "RecvPacket";
    case HW_DERP_KEEP_ALIVE: return "KeepAlive";
    case HW_DERP_NOTE_PREFERRED: return "NotePreferred";
    case HW_DERP_PEER_GONE: return "PeerGone";
    case HW_DERP_PEER_PRESENT: return "PeerPresent";
    case HW_DERP_FORWARD_PACKET: return "ForwardPacket";
    case HW_DERP_WATCH_CONNS: return "WatchConns";
    case HW_DERP_CLOSE_PEER: return "ClosePeer";
    case HW_DERP_PING: return "Ping";
    case HW_DERP_PONG: return "Pong";
    case HW_DERP_HEALTH: return "Health";
    case HW_DERP_RESTARTING: return "Restarting";
    default: return "unknown";
    }
}

/* ---- reader ---- */

uint32_t hw_derp_server_limit(uint8_t type)
{
    switch (type) {
    case HW_DERP_CLIENT_INFO: return HW_DERP_MAX_CLIENT_INFO;
    case HW_DERP_SEND_PACKET: return HW_DERP_KEY_LEN + HW_DERP_MAX_PACKET;
    case HW_DERP_FORWARD_PACKET: return 2 * HW_DERP_KEY_LEN + HW_DERP_MAX_PACKET;
    case HW_DERP_NOTE_PREFERRED: return 1;
    case HW_DERP_WATCH_CONNS: return 0;
    case HW_DERP_CLOSE_PEER: return HW_DERP_KEY_LEN;
    case HW_DERP_PING: return HW_DERP_MAX_PING;
    /* A limit of 0 would be ambiguous with WatchConns; the caller never asks for
     * skipped types, see server_skips(). */
    default: return 0;
    }
}

/* derper's read loop discards frames of any type it has no handler for, without a
 * size limit, so a server reader must do the same rather than fail. */
static bool server_skips(uint8_t type)
{
    switch (type) {
    case HW_DERP_CLIENT_INFO:
    case HW_DERP_SEND_PACKET:
    case HW_DERP_FORWARD_PACKET:
    case HW_DERP_NOTE_PREFERRED:
    case HW_DERP_WATCH_CONNS:
    case HW_DERP_CLOSE_PEER:
    case HW_DERP_PING:
        return false;
    default:
        return true;
    }
}

void hw_derp_reader_init(struct hw_derp_reader *r, enum hw_derp_side side)
{
    memset(r, 0, sizeof *r);
    r->side = side;
}

void hw_derp_reader_free(struct hw_derp_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->buf_cap = 0;
}

bool hw_derp_reader_idle(const struct hw_derp_reader *r)
{
    return r->hdr_have == 0;
}

/* Small buffers are kept for the next straddling frame; big ones go back to the
 * allocator so one large frame doesn't pin memory on an otherwise idle connection. */
static void release_buf(struct hw_derp_reader *r)
{
    if (r->buf_cap > 4096) {
        free(r->buf);
        r->buf = NULL;
        r->buf_cap = 0;
    }
}

static int start_frame(struct hw_derp_reader *r)
{
    r->type = r->hdr[0];
    r->len = get_u32be(r->hdr + 1);
    r->have = 0;
    r->skipping = false;
    if (r->side == HW_DERP_SIDE_CLIENT) {
        if (r->len > HW_DERP_CLIENT_MAX_FRAME) {
            r->error = "frame larger than 1 MiB";
            return -1;
        }
    } else if (server_skips(r->type)) {
        r->skipping = true;
    } else if (r->len > hw_derp_server_limit(r->type)) {
        r->error = "frame longer than the limit for its type";
        return -1;
    }
    return 0;
}

int hw_derp_reader_next(struct hw_derp_reader *r, const uint8_t **data, size_t *len,
                        struct hw_derp_frame *frame)
{
    if (r->error)
        return HW_DERP_READ_ERROR;
    while (*len > 0) {
        if (r->hdr_have < HW_DERP_HDR_LEN) {
            size_t take = HW_DERP_HDR_LEN - r->hdr_have;
            if (take > *len)
                take = *len;
            memcpy(r->hdr + r->hdr_have, *data, take);
            r->hdr_have += take;
            *data += take;
            *len -= take;
            if (r->hdr_have < HW_DERP_HDR_LEN)
                return HW_DERP_READ_MORE;
            if (start_frame(r) < 0)
                return HW_DERP_READ_ERROR;
            /* Zero copy: the whole payload is already in this chunk. */
            if (!r->skipping && *len >= r->len) {
                frame->type = r->type;
                frame->len = r->len;
                frame->payload = *data;
                *data += r->len;
                *len -= r->len;
                r->hdr_have = 0;
                return HW_DERP_READ_FRAME;
            }
        }
        uint32_t want = r->len - r->have;
        size_t take = want < *len ? want : *len;
        if (r->skipping) {
            r->have += (uint32_t)take;
            *data += take;
            *len -= take;
            if (r->have == r->len) {
                r->hdr_have = 0;
                r->skipped_frames++;
            }
            continue;
        }
        if (take > 0) {
            if (r->buf_cap < r->len) {
                uint8_t *grown = realloc(r->buf, r->len);
                if (!grown) {
                    r->error = "out of memory";
                    return HW_DERP_READ_ERROR;
                }
                r->buf = grown;
                r->buf_cap = r->len;
            }
            memcpy(r->buf + r->have, *data, take);
            r->have += (uint32_t)take;
            *data += take;
            *len -= take;
        }
        if (r->have == r->len) {
            frame->type = r->type;
            frame->len = r->len;
            frame->payload = r->buf;
            r->hdr_have = 0;
            /* The payload must stay valid until the next call, so the buffer is
             * released on entry to the next frame instead of here. */
            return HW_DERP_READ_FRAME;
        }
        return HW_DERP_READ_MORE;
    }
    if (r->hdr_have == 0)
        release_buf(r);
    return HW_DERP_READ_MORE;
}

/* ---- payload decoders ---- */

int hw_derp_parse_server_key(const uint8_t *p, uint32_t len, uint8_t server_pub[32])
{
    if (len < HW_DERP_SERVER_KEY_LEN || len > HW_DERP_MAX_SERVER_KEY)
        return -1;
    if (memcmp(p, HW_DERP_MAGIC, HW_DERP_MAGIC_LEN) != 0)
        return -1;
    memcpy(server_pub, p + HW_DERP_MAGIC_LEN, HW_DERP_KEY_LEN);
    return 0;
}

int hw_derp_parse_send_packet(const uint8_t *p, uint32_t len, const uint8_t **dst,
                              const uint8_t **data, uint32_t *data_len)
{
    if (len < HW_DERP_KEY_LEN || len - HW_DERP_KEY_LEN > HW_DERP_MAX_PACKET)
        return -1;
    *dst = p;
    *data = p + HW_DERP_KEY_LEN;
    *data_len = len - HW_DERP_KEY_LEN;
    return 0;
}

int hw_derp_parse_recv_packet(const uint8_t *p, uint32_t len, const uint8_t **src,
                              const uint8_t **data, uint32_t *data_len)
{
    if (len < HW_DERP_KEY_LEN)
        return -1;
    *src = p;
    *data = p + HW_DERP_KEY_LEN;
    *data_len = len - HW_DERP_KEY_LEN;
    return 0;
}

int hw_derp_parse_forward_packet(const uint8_t *p, uint32_t len, const uint8_t **src,
                                 const uint8_t **dst, const uint8_t **data, uint32_t *data_len)
{
    if (len < 2 * HW_DERP_KEY_LEN || len - 2 * HW_DERP_KEY_LEN > HW_DERP_MAX_PACKET)
        return -1;
    *src = p;
    *dst = p + HW_DERP_KEY_LEN;
    *data = p + 2 * HW_DERP_KEY_LEN;
    *data_len = len - 2 * HW_DERP_KEY_LEN;
    return 0;
}

int hw_derp_parse_peer_gone(const uint8_t *p, uint32_t len, const uint8_t **key, uint8_t *reason)
{
    if (len < HW_DERP_KEY_LEN)
        return -1;
    *key = p;
    *reason = len > HW_DERP_KEY_LEN ? p[HW_DERP_KEY_LEN] : HW_DERP_GONE_DISCONNECTED;
    return 0;
}

int hw_derp_parse_peer_present(const uint8_t *p, uint32_t len, struct hw_derp_peer_present *out)
{
    memset(out, 0, sizeof *out);
    if (len < HW_DERP_KEY_LEN)
        return -1;
    memcpy(out->key, p, HW_DERP_KEY_LEN);
    if (len >= HW_DERP_KEY_LEN + 18) {
        out->has_addr = true;
        memcpy(out->ip, p + HW_DERP_KEY_LEN, 16);
        out->port = (uint16_t)(p[HW_DERP_KEY_LEN + 16] << 8 | p[HW_DERP_KEY_LEN + 17]);
    }
    if (len >= HW_DERP_PEER_PRESENT_LEN) {
        out->has_flags = true;
        out->flags = p[HW_DERP_KEY_LEN + 18];
    }
    return 0;
}

int hw_derp_parse_restarting(const uint8_t *p, uint32_t len, uint32_t *reconnect_ms,
                             uint32_t *try_for_ms)
{
    if (len < 8)
        return -1;
    *reconnect_ms = get_u32be(p);
    *try_for_ms = get_u32be(p + 4);
    return 0;
}

bool hw_derp_looks_like_disco(const uint8_t *p, size_t len)
{
    static const uint8_t magic[6] = {0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac};
    return len >= sizeof magic + 32 + 24 && memcmp(p, magic, sizeof magic) == 0;
}

/* ---- builders ---- */

size_t hw_derp_put_header(uint8_t *out, uint8_t type, uint32_t len)
{
    out[0] = type;
    put_u32be(out + 1, len);
    return HW_DERP_HDR_LEN;
}

/* Header plus up to three pieces; the shape of every fixed frame. */
static size_t build3(uint8_t *out, size_t out_cap, uint8_t type, const void *a, size_t alen,
                     const void *b, size_t blen, const void *c, size_t clen)
{
    size_t total = HW_DERP_HDR_LEN + alen + blen + clen;
    if (total > out_cap || total - HW_DERP_HDR_LEN > UINT32_MAX)
        return 0;
    uint8_t *p = out + hw_derp_put_header(out, type, (uint32_t)(total - HW_DERP_HDR_LEN));
    if (alen)
        memcpy(p, a, alen);
    p += alen;
    if (blen)
        memcpy(p, b, blen);
    p += blen;
    if (clen)
        memcpy(p, c, clen);
    return total;
}

size_t hw_derp_build_server_key(uint8_t *out, size_t out_cap, const uint8_t server_pub[32])
{
    return build3(out, out_cap, HW_DERP_SERVER_KEY, HW_DERP_MAGIC, HW_DERP_MAGIC_LEN, server_pub,
                  HW_DERP_KEY_LEN, NULL, 0);
}

size_t hw_derp_build_send_packet(uint8_t *out, size_t out_cap, const uint8_t dst[32],
                                 const uint8_t *data, size_t data_len)
{
    if (data_len > HW_DERP_MAX_PACKET)
        return 0;
    return build3(out, out_cap, HW_DERP_SEND_PACKET, dst, HW_DERP_KEY_LEN, data, data_len, NULL, 0);
}

size_t hw_derp_build_recv_packet(uint8_t *out, size_t out_cap, const uint8_t src[32],
                                 const uint8_t *data, size_t data_len)
{
    if (data_len > HW_DERP_MAX_PACKET)
        return 0;
    return build3(out, out_cap, HW_DERP_RECV_PACKET, src, HW_DERP_KEY_LEN, data, data_len, NULL, 0);
}

size_t hw_derp_build_forward_packet(uint8_t *out, size_t out_cap, const uint8_t src[32],
                                    const uint8_t dst[32], const uint8_t *data, size_t data_len)
{
    if (data_len > HW_DERP_MAX_PACKET)
        return 0;
    return build3(out, out_cap, HW_DERP_FORWARD_PACKET, src, HW_DERP_KEY_LEN, dst, HW_DERP_KEY_LEN,
                  data, data_len);
}

size_t hw_derp_build_keep_alive(uint8_t *out, size_t out_cap)
{
    return build3(out, out_cap, HW_DERP_KEEP_ALIVE, NULL, 0, NULL, 0, NULL, 0);
}

size_t hw_derp_build_note_preferred(uint8_t *out, size_t out_cap, bool preferred)
{
    uint8_t v = preferred ? 1 : 0;
    return build3(out, out_cap, HW_DERP_NOTE_PREFERRED, &v, 1, NULL, 0, NULL, 0);
}

size_t hw_derp_build_peer_gone(uint8_t *out, size_t out_cap, const uint8_t key[32], uint8_t reason)
{
    return build3(out, out_cap, HW_DERP_PEER_GONE, key, HW_DERP_KEY_LEN, &reason, 1, NULL, 0);
}

size_t hw_derp_build_peer_present(uint8_t *out, size_t out_cap, const uint8_t key[32],
                                  const uint8_t ip[16], uint16_t port, uint8_t flags)
{
    uint8_t tail[3] = {(uint8_t)(port >> 8), (uint8_t)port, flags};
    return build3(out, out_cap, HW_DERP_PEER_PRESENT, key, HW_DERP_KEY_LEN, ip, 16, tail, 3);
}

size_t hw_derp_build_watch_conns(uint8_t *out, size_t out_cap)
{
    return build3(out, out_cap, HW_DERP_WATCH_CONNS, NULL, 0, NULL, 0, NULL, 0);
}

size_t hw_derp_build_close_peer(uint8_t *out, size_t out_cap, const uint8_t key[32])
{
    return build3(out, out_cap, HW_DERP_CLOSE_PEER, key, HW_DERP_KEY_LEN, NULL, 0, NULL, 0);
}

size_t hw_derp_build_ping(uint8_t *out, size_t out_cap, const uint8_t data[8])
{
    return build3(out, out_cap, HW_DERP_PING, data, HW_DERP_PING_LEN, NULL, 0, NULL, 0);
}

size_t hw_derp_build_pong(uint8_t *out, size_t out_cap, const uint8_t data[8])
{
    return build3(out, out_cap, HW_DERP_PONG, data, HW_DERP_PING_LEN, NULL, 0, NULL, 0);
}

size_t hw_derp_build_health(uint8_t *out, size_t out_cap, const char *problem)
{
    return build3(out, out_cap, HW_DERP_HEALTH, problem, problem ? strlen(problem) : 0, NULL, 0,
                  NULL, 0);
}

size_t hw_derp_build_restarting(uint8_t *out, size_t out_cap, uint32_t reconnect_ms,
                                uint32_t try_for_ms)
{
    uint8_t p[8];
    put_u32be(p, reconnect_ms);
    put_u32be(p + 4, try_for_ms);
    return build3(out, out_cap, HW_DERP_RESTARTING, p, sizeof p, NULL, 0, NULL, 0);
}

/* ---- boxes ---- */

size_t hw_derp_box_seal(uint8_t *out, const uint8_t *msg, size_t len, const uint8_t *nonce,
                        const uint8_t peer_pub[32], const uint8_t my_priv[32])
{
    if (nonce)
        memcpy(out, nonce, HW_DERP_NONCE_LEN);
    else
        randombytes_buf(out, HW_DERP_NONCE_LEN);
    if (crypto_box_easy(out + HW_DERP_NONCE_LEN, msg, len, out, peer_pub, my_priv) != 0)
        return 0;
    return HW_DERP_NONCE_LEN + HW_DERP_BOX_OVERHEAD + len;
}

long hw_derp_box_open(uint8_t *out, const uint8_t *box, size_t box_len,
                      const uint8_t peer_pub[32], const uint8_t my_priv[32])
{
    if (box_len < HW_DERP_NONCE_LEN + HW_DERP_BOX_OVERHEAD)
        return -1;
    size_t clen = box_len - HW_DERP_NONCE_LEN;
    if (crypto_box_open_easy(out, box + HW_DERP_NONCE_LEN, clen, box, peer_pub, my_priv) != 0)
        return -1;
    return (long)(clen - HW_DERP_BOX_OVERHEAD);
}

/* ---- JSON ---- */

static char *dump_compact(json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (!s)
        abort();   /* only on out-of-memory */
    return s;
}

char *hw_derp_client_info_json(const struct hw_derp_client_info *info)
{
    json_t *o = json_object();
    /* Go's field order: meshKey, version, CanAckPings, IsProber. */
    if (info->has_mesh_key) {
        char hex[65];
        hw_hex_encode(info->mesh_key, 32, hex);
        json_object_set_new(o, "meshKey", json_string(hex));
    }
    if (info->version)
        json_object_set_new(o, "version", json_integer(info->version));
    json_object_set_new(o, "CanAckPings", json_boolean(info->can_ack_pings));
    if (info->is_prober)
        json_object_set_new(o, "IsProber", json_true());
    return dump_compact(o);
}

char *hw_derp_server_info_json(const struct hw_derp_server_info *info)
{
    json_t *o = json_object();
    if (info->version)
        json_object_set_new(o, "version", json_integer(info->version));
    if (info->token_bucket_bytes_per_second)
        json_object_set_new(o, "TokenBucketBytesPerSecond",
                            json_integer(info->token_bucket_bytes_per_second));
    if (info->token_bucket_bytes_burst)
        json_object_set_new(o, "TokenBucketBytesBurst", json_integer(info->token_bucket_bytes_burst));
    return dump_compact(o);
}

static json_t *load_object(const uint8_t *json, size_t len, const char **err)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        *err = "invalid JSON";
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *err = "JSON is not an object";
        return NULL;
    }
    return root;
}

/* Go accepts JSON null for any field (leaving the zero value), so null is skipped. */
static int get_int(json_t *v, long long *out, const char **err)
{
    if (json_is_null(v))
        return 0;
    if (!json_is_integer(v)) {
        *err = "expected an integer";
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int get_bool(json_t *v, bool *out, const char **err)
{
    if (json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        *err = "expected a boolean";
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int hw_derp_client_info_parse(const uint8_t *json, size_t len, struct hw_derp_client_info *out,
                              const char **err)
{
    memset(out, 0, sizeof *out);
    json_t *root = load_object(json, len, err);
    if (!root)
        return -1;
    const char *name;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, name, v) {
        long long n = 0;
        if (strcasecmp(name, "version") == 0) {
            rc = get_int(v, &n, err);
            if (rc == 0 && (n < 0 || n > 1000000)) {
                *err = "version out of range";
                rc = -1;
            }
            out->version = (int)n;
        } else if (strcasecmp(name, "CanAckPings") == 0) {
            rc = get_bool(v, &out->can_ack_pings, err);
        } else if (strcasecmp(name, "IsProber") == 0) {
            rc = get_bool(v, &out->is_prober, err);
        } else if (strcasecmp(name, "meshKey") == 0 && !json_is_null(v)) {
            const char *s = json_string_value(v);
            if (!s || strlen(s) != 64 || hw_hex_decode(s, out->mesh_key, 32) != 32) {
                *err = "meshKey must be 64 hex digits";
                rc = -1;
            } else {
                out->has_mesh_key = !sodium_is_zero(out->mesh_key, 32);
            }
        }
        if (rc < 0)
            break;
    }
    json_decref(root);
    return rc;
}

int hw_derp_server_info_parse(const uint8_t *json, size_t len, struct hw_derp_server_info *out,
                              const char **err)
{
    memset(out, 0, sizeof *out);
    json_t *root = load_object(json, len, err);
    if (!root)
        return -1;
    const char *name;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, name, v) {
        long long n = 0;
        if (strcasecmp(name, "version") == 0) {
            rc = get_int(v, &n, err);
            out->version = (int)n;
        } else if (strcasecmp(name, "TokenBucketBytesPerSecond") == 0) {
            rc = get_int(v, &out->token_bucket_bytes_per_second, err);
        } else if (strcasecmp(name, "TokenBucketBytesBurst") == 0) {
            rc = get_int(v, &out->token_bucket_bytes_burst, err);
        }
        if (rc < 0)
            break;
    }
    json_decref(root);
    return rc;
}

/* ---- handshake frames ---- */

/* A ClientInfo or ServerInfo frame: [sender_pub] box(json), the sender's public key in
 * front only in ClientInfo. Frees json. */
static uint8_t *build_info_frame(uint8_t type, const uint8_t *sender_pub, char *json,
                                 const uint8_t *nonce, const uint8_t peer_pub[32],
                                 const uint8_t my_priv[32], size_t *out_len)
{
    size_t jlen = strlen(json), key_len = sender_pub ? HW_DERP_KEY_LEN : 0;
    size_t payload = key_len + HW_DERP_NONCE_LEN + HW_DERP_BOX_OVERHEAD + jlen;
    uint8_t *frame = hw_malloc(HW_DERP_HDR_LEN + payload);
    hw_derp_put_header(frame, type, (uint32_t)payload);
    if (sender_pub)
        memcpy(frame + HW_DERP_HDR_LEN, sender_pub, key_len);
    size_t sealed = hw_derp_box_seal(frame + HW_DERP_HDR_LEN + key_len, (const uint8_t *)json,
                                     jlen, nonce, peer_pub, my_priv);
    free(json);
    if (sealed == 0) {
        free(frame);
        return NULL;
    }
    *out_len = HW_DERP_HDR_LEN + payload;
    return frame;
}

uint8_t *hw_derp_build_client_info(const uint8_t client_priv[32], const uint8_t client_pub[32],
                                   const uint8_t server_pub[32],
                                   const struct hw_derp_client_info *info,
                                   const uint8_t *nonce, size_t *out_len)
{
    return build_info_frame(HW_DERP_CLIENT_INFO, client_pub, hw_derp_client_info_json(info), nonce,
                            server_pub, client_priv, out_len);
}

int hw_derp_open_client_info(const uint8_t server_priv[32], const uint8_t *payload, uint32_t len,
                             uint8_t client_pub[32], struct hw_derp_client_info *info,
                             const char **err)
{
    if (len < HW_DERP_MIN_CLIENT_INFO) {
        *err = "short client info";
        return -1;
    }
    if (len > HW_DERP_MAX_CLIENT_INFO) {
        *err = "long client info";
        return -1;
    }
    memcpy(client_pub, payload, HW_DERP_KEY_LEN);
    const uint8_t *box = payload + HW_DERP_KEY_LEN;
    size_t box_len = len - HW_DERP_KEY_LEN;
    uint8_t *plain = hw_malloc(box_len + 1);
    long n = hw_derp_box_open(plain, box, box_len, client_pub, server_priv);
    int rc = -1;
    if (n < 0)
        *err = "client info box does not open with the client key";
    else
        rc = hw_derp_client_info_parse(plain, (size_t)n, info, err);
    free(plain);
    return rc;
}

uint8_t *hw_derp_build_server_info(const uint8_t server_priv[32], const uint8_t client_pub[32],
                                   const struct hw_derp_server_info *info, const uint8_t *nonce,
                                   size_t *out_len)
{
    return build_info_frame(HW_DERP_SERVER_INFO, NULL, hw_derp_server_info_json(info), nonce,
                            client_pub, server_priv, out_len);
}

int hw_derp_open_server_info(const uint8_t client_priv[32], const uint8_t server_pub[32],
                             const uint8_t *payload, uint32_t len,
                             struct hw_derp_server_info *info, const char **err)
{
    if (len < HW_DERP_NONCE_LEN) {
        *err = "short server info";
        return -1;
    }
    if (len > HW_DERP_NONCE_LEN + HW_DERP_CLIENT_MAX_FRAME) {
        *err = "long server info";
        return -1;
    }
    uint8_t *plain = hw_malloc(len + 1);
    long n = hw_derp_box_open(plain, payload, len, server_pub, client_priv);
    int rc = -1;
    if (n < 0)
        *err = "server info box does not open with the server key";
    else
        rc = hw_derp_server_info_parse(plain, (size_t)n, info, err);
    free(plain);
    return rc;
}

void hw_derp_key_short(const uint8_t key[32], char out[8])
{
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, key, 32, sodium_base64_VARIANT_ORIGINAL);
    out[0] = '[';
    memcpy(out + 1, b64, 5);
    out[6] = ']';
    out[7] = '\0';
}
