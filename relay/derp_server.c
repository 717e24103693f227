/* The DERP server proper: registration, routing, per-client queues, PeerGone and
 * mesh watcher notices. The rules follow derper (derp/derpserver/derpserver.go). */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

/* Output is built from the queues only while less than this is waiting for the
 * socket, so a slow reader's backlog stays in the bounded queues (where old packets
 * are dropped) instead of in an ever-growing byte buffer. */
#define OUT_HIGH (64 << 10)
#define KEEPALIVE_MS 60000
#define KEEPALIVE_JITTER_MS 5000

void key_to_hex(const uint8_t key[32], char out[65]) { hw_hex_encode(key, 32, out); }

/* ---- sets of connections ---- */

static void set_add(struct client_set *s, struct conn *c)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 2;
        struct conn **grown = realloc(s->v, s->cap * sizeof *grown);
        if (!grown)
            abort();
        s->v = grown;
    }
    s->v[s->n++] = c;
}

static bool set_remove(struct client_set *s, struct conn *c)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i] == c) {
            s->v[i] = s->v[--s->n];
            return true;
        }
    }
    return false;
}

static void set_free(struct client_set *s)
{
    free(s->v);
    free(s);
}

struct conn *derp_lookup(struct relay *r, const uint8_t key[32])
{
    char hex[65];
    key_to_hex(key, hex);
    struct client_set *s = hw_strmap_get(&r->clients, hex);
    return s ? s->active : NULL;
}

/* ---- output ---- */

void derp_note(struct conn *c, const struct gone_note *n)
{
    if (c->state == CONN_CLOSED)
        return;
    struct gone_note *copy = hw_malloc(sizeof *copy);
    *copy = *n;
    copy->next = NULL;
    if (c->notes_tail)
        c->notes_tail->next = copy;
    else
        c->notes = copy;
    c->notes_tail = copy;
    conn_mark_dirty(c);
}

/* dst is about to receive a packet from src: remember it, so dst hears when src
 * leaves the region (derper's noteSendFromSrc). */
static void note_sender(struct conn *dst, const uint8_t src[32])
{
    if (dst->have_last_src && memcmp(dst->last_src, src, 32) == 0)
        return;
    memcpy(dst->last_src, src, 32);
    dst->have_last_src = true;
    char hex[65];
    key_to_hex(src, hex);
    if (!dst->saw_src) {
        dst->saw_src = hw_calloc(1, sizeof *dst->saw_src);
        hw_strmap_init(dst->saw_src);
    }
    if (hw_strmap_get(dst->saw_src, hex))
        return;
    hw_strmap_put(dst->saw_src, hex, dst);
    if (dst->n_saw == dst->cap_saw) {
        dst->cap_saw = dst->cap_saw ? dst->cap_saw * 2 : 4;
        uint8_t(*grown)[32] = realloc(dst->saw_keys, dst->cap_saw * sizeof *grown);
        if (!grown)
            abort();
        dst->saw_keys = grown;
    }
    memcpy(dst->saw_keys[dst->n_saw++], src, 32);
    struct relay *r = dst->relay;
    struct client_set *s = hw_strmap_get(&r->gone_watchers, hex);
    if (!s) {
        s = hw_calloc(1, sizeof *s);
        hw_strmap_put(&r->gone_watchers, hex, s);
    }
    set_add(s, dst);
}

static void forget_sender(struct conn *dst, const uint8_t src[32], const char *hex)
{
    if (dst->saw_src)
        hw_strmap_del(dst->saw_src, hex);
    for (size_t i = 0; i < dst->n_saw; i++) {
        if (memcmp(dst->saw_keys[i], src, 32) == 0) {
            memcpy(dst->saw_keys[i], dst->saw_keys[--dst->n_saw], 32);
            break;
        }
    }
    if (dst->have_last_src && memcmp(dst->last_src, src, 32) == 0)
        dst->have_last_src = false;
}

static void write_recv_packet(struct conn *c, const uint8_t src[32], const uint8_t *data, size_t len)
{
    note_sender(c, src);
    uint8_t *p = conn_reserve(c, HW_DERP_HDR_LEN + HW_DERP_KEY_LEN + len);
    hw_derp_put_header(p, HW_DERP_RECV_PACKET, (uint32_t)(HW_DERP_KEY_LEN + len));
    memcpy(p + HW_DERP_HDR_LEN, src, HW_DERP_KEY_LEN);
    memcpy(p + HW_DERP_HDR_LEN + HW_DERP_KEY_LEN, data, len);
    c->relay->packets_relayed++;
}

static void pktq_free(struct pktq *q)
{
    free(q->ring);
    q->ring = NULL;
    q->head = q->len = 0;
}

void derp_build_output(struct conn *c)
{
    int depth = c->relay->cfg.queue_depth;
    bool disco_turn = true;
    while (conn_out_pending(c) < OUT_HIGH) {
        uint8_t frame[64];
        if (c->pong_pending) {
            c->pong_pending = false;
            conn_write(c, frame, hw_derp_build_pong(frame, sizeof frame, c->pong_data));
            continue;
        }
        if (c->keepalive_due) {
            c->keepalive_due = false;
            conn_write(c, frame, hw_derp_build_keep_alive(frame, sizeof frame));
            continue;
        }
        if (c->notes) {
            struct gone_note *n = c->notes;
            c->notes = n->next;
            if (!c->notes)
                c->notes_tail = NULL;
            size_t fl = n->kind == 1 ? hw_derp_build_peer_present(frame, sizeof frame, n->key, n->ip, n->port,
                                                                  n->flags)
                                     : hw_derp_build_peer_gone(frame, sizeof frame, n->key, n->reason);
            conn_write(c, frame, fl);
            free(n);
            continue;
        }
        /* Alternate between the two queues so neither kind starves the other. */
        struct pktq *first = disco_turn ? &c->disco_queue : &c->queue;
        struct pktq *second = disco_turn ? &c->queue : &c->disco_queue;
        disco_turn = !disco_turn;
        struct pktq *q = first->len ? first : second->len ? second : NULL;
        if (!q)
            break;
        struct pkt p = q->ring[q->head];
        q->head = (uint16_t)((q->head + 1) % depth);
        q->len--;
        write_recv_packet(c, p.src, p.data->data, p.data->len);
        hw_sbuf_unref(p.data);
    }
}

void derp_enqueue_packet(struct conn *dst, const uint8_t src[32], const uint8_t *data, size_t len)
{
    struct relay *r = dst->relay;
    /* Nothing queued ahead of it: write straight into the output buffer, skipping the
     * copy into a queue entry. Order is kept because both queues are empty. */
    if (dst->queue.len == 0 && dst->disco_queue.len == 0 && conn_out_pending(dst) < OUT_HIGH) {
        write_recv_packet(dst, src, data, len);
        conn_mark_dirty(dst);
        return;
    }
    int depth = r->cfg.queue_depth;
    struct pktq *q = hw_derp_looks_like_disco(data, len) ? &dst->disco_queue : &dst->queue;
    if (!q->ring)
        q->ring = hw_calloc((size_t)depth, sizeof *q->ring);
    if (q->len == depth) {
        /* Full: drop the oldest, as derper does, so fresh packets win. */
        hw_sbuf_unref(q->ring[q->head].data);
        q->head = (uint16_t)((q->head + 1) % depth);
        q->len--;
        r->packets_dropped++;
    }
    struct pkt *slot = &q->ring[(q->head + q->len) % depth];
    memcpy(slot->src, src, 32);
    slot->data = hw_sbuf_copy(data, len);
    q->len++;
    conn_mark_dirty(dst);
}

static void send_not_here(struct conn *c, const uint8_t dst[32], const uint8_t *data, size_t len)
{
    if (!hw_derp_looks_like_disco(data, len))
        return;
    /* Token bucket: one per second, burst of three. */
    int64_t now = hw_loop_now_ms(c->relay->loop);
    c->nothere_tokens += (double)(now - c->nothere_at) / 1000.0;
    if (c->nothere_tokens > 3)
        c->nothere_tokens = 3;
    c->nothere_at = now;
    if (c->nothere_tokens < 1)
        return;
    c->nothere_tokens -= 1;
    struct gone_note n = {.reason = HW_DERP_GONE_NOT_HERE};
    memcpy(n.key, dst, 32);
    derp_note(c, &n);
}

void derp_send_local_or_drop(struct relay *r, struct conn *from, const uint8_t src[32],
                             const uint8_t dst[32], const uint8_t *data, size_t len, bool forwarded)
{
    struct conn *to = derp_lookup(r, dst);
    if (to) {
        derp_enqueue_packet(to, src, data, len);
        return;
    }
    if (!forwarded && mesh_forward(r, src, dst, data, len)) {
        r->packets_forwarded++;
        return;
    }
    r->packets_dropped++;
    if (from)
        send_not_here(from, dst, data, len);
}

/* ---- registration ---- */

static void broadcast_to_watchers(struct relay *r, const struct gone_note *n)
{
    for (size_t i = 0; i < r->n_watchers; i++)
        derp_note(r->watchers[i], n);
}

static uint8_t present_flags(const struct conn *c)
{
    uint8_t f = 0;
    if (c->info.is_prober)
        f |= HW_DERP_PRESENT_PROBER;
    if (c->can_mesh)
        f |= HW_DERP_PRESENT_MESH_PEER;
    if (c->not_ideal)
        f |= HW_DERP_PRESENT_NOT_IDEAL;
    return f ? f : HW_DERP_PRESENT_REGULAR;
}

static void present_note(const struct conn *c, struct gone_note *n)
{
    memset(n, 0, sizeof *n);
    memcpy(n->key, c->key, 32);
    n->kind = 1;
    if (c->remote.family == 4) {
        n->ip[10] = n->ip[11] = 0xff;
        memcpy(n->ip + 12, c->remote.ip, 4);
    } else {
        memcpy(n->ip, c->remote.ip, 16);
    }
    n->port = c->remote.port;
    n->flags = present_flags(c);
}

static void on_keepalive(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct conn *c = arg;
    c->keepalive = hw_timer_start(loop, c->ka_interval_ms, on_keepalive, c);
    c->keepalive_due = true;
    conn_mark_dirty(c);
    relay_flush_dirty(c->relay);
}

void derp_admit(struct conn *c)
{
    struct relay *r = c->relay;
    if (c->deadline) {
        hw_timer_cancel(r->loop, c->deadline);
        c->deadline = NULL;
    }
    c->state = CONN_ACTIVE;
    c->registered = true;
    c->activity_seq = ++r->activity_seq;
    struct client_set *s = hw_strmap_get(&r->clients, c->keyhex);
    if (!s) {
        s = hw_calloc(1, sizeof *s);
        hw_strmap_put(&r->clients, c->keyhex, s);
    }
    set_add(s, c);
    c->cset = s;
    /* The newest connection for a key is the one that gets its packets. */
    s->active = c;

    struct gone_note pn;
    present_note(c, &pn);
    broadcast_to_watchers(r, &pn);

    struct hw_derp_server_info si = {.version = HW_DERP_PROTOCOL_VERSION};
    size_t n = 0;
    uint8_t *frame = hw_derp_build_server_info(r->priv, c->key, &si, NULL, &n);
    if (!frame) {
        conn_close(c, "cannot seal ServerInfo");
        return;
    }
    conn_write(c, frame, n);
    free(frame);
    c->ka_interval_ms = KEEPALIVE_MS + (int64_t)randombytes_uniform(KEEPALIVE_JITTER_MS);
    c->keepalive = hw_timer_start(r->loop, c->ka_interval_ms, on_keepalive, c);
    c->nothere_tokens = 3;
    c->nothere_at = hw_loop_now_ms(r->loop);
    if (s->n > 1)
        log_info("derp: %s %s connected (%zu connections for this key; the newest is active)", c->short_key,
                 c->remote_text, s->n);
    else
        log_info("derp: %s %s connected%s", c->short_key, c->remote_text, c->can_mesh ? " (mesh peer)" : "");
    conn_resume_after_verify(c);
}

void derp_gone_from_region(struct relay *r, const uint8_t key[32])
{
    char hex[65];
    key_to_hex(key, hex);
    if (hw_strmap_get(&r->clients, hex) || hw_strmap_get(&r->forwarders, hex))
        return;
    struct client_set *s = hw_strmap_del(&r->gone_watchers, hex);
    if (!s)
        return;
    struct gone_note n = {.reason = HW_DERP_GONE_DISCONNECTED};
    memcpy(n.key, key, 32);
    for (size_t i = 0; i < s->n; i++) {
        forget_sender(s->v[i], key, hex);
        derp_note(s->v[i], &n);
    }
    set_free(s);
}

static void notify_gone_from_region(struct relay *r, const uint8_t key[32], const char *hex)
{
    struct client_set *s = hw_strmap_del(&r->gone_watchers, hex);
    if (!s)
        return;
    struct gone_note n = {.reason = HW_DERP_GONE_DISCONNECTED};
    memcpy(n.key, key, 32);
    for (size_t i = 0; i < s->n; i++) {
        forget_sender(s->v[i], key, hex);
        derp_note(s->v[i], &n);
    }
    set_free(s);
}

void derp_unregister(struct conn *c)
{
    struct relay *r = c->relay;
    c->registered = false;
    struct client_set *s = c->cset;
    c->cset = NULL;
    if (s && set_remove(s, c)) {
        if (s->n == 0) {
            hw_strmap_del(&r->clients, c->keyhex);
            set_free(s);
            /* Still reachable through a mesh peer: not gone from the region. */
            if (!hw_strmap_get(&r->forwarders, c->keyhex))
                notify_gone_from_region(r, c->key, c->keyhex);
            struct gone_note n = {.reason = HW_DERP_GONE_DISCONNECTED};
            memcpy(n.key, c->key, 32);
            broadcast_to_watchers(r, &n);
        } else if (s->active == c) {
            struct conn *best = s->v[0];
            for (size_t i = 1; i < s->n; i++)
                if (s->v[i]->activity_seq > best->activity_seq)
                    best = s->v[i];
            s->active = best;
        }
    }
    if (c->watcher) {
        for (size_t i = 0; i < r->n_watchers; i++) {
            if (r->watchers[i] == c) {
                r->watchers[i] = r->watchers[--r->n_watchers];
                break;
            }
        }
        c->watcher = false;
    }
    /* Stop being told about senders that leave. */
    for (size_t i = 0; i < c->n_saw; i++) {
        char hex[65];
        key_to_hex(c->saw_keys[i], hex);
        struct client_set *w = hw_strmap_get(&r->gone_watchers, hex);
        if (w && set_remove(w, c) && w->n == 0) {
            hw_strmap_del(&r->gone_watchers, hex);
            set_free(w);
        }
    }
    c->n_saw = 0;
}

void derp_free_conn_state(struct conn *c)
{
    for (int k = 0; k < 2; k++) {
        struct pktq *q = k ? &c->disco_queue : &c->queue;
        while (q->len > 0) {
            hw_sbuf_unref(q->ring[q->head].data);
            q->head = (uint16_t)((q->head + 1) % c->relay->cfg.queue_depth);
            q->len--;
        }
        pktq_free(q);
    }
    while (c->notes) {
        struct gone_note *n = c->notes;
        c->notes = n->next;
        free(n);
    }
    c->notes_tail = NULL;
    if (c->saw_src) {
        hw_strmap_free(c->saw_src);
        free(c->saw_src);
        c->saw_src = NULL;
    }
    free(c->saw_keys);
    c->saw_keys = NULL;
    c->n_saw = c->cap_saw = 0;
}

/* ---- frames from a client ---- */

static void on_client_info(struct conn *c, const struct hw_derp_frame *f)
{
    struct relay *r = c->relay;
    if (f->type != HW_DERP_CLIENT_INFO) {
        conn_close(c, "first frame is not ClientInfo");
        return;
    }
    const char *err = NULL;
    if (hw_derp_open_client_info(r->priv, f->payload, f->len, c->key, &c->info, &err) < 0) {
        conn_close(c, err);
        return;
    }
    key_to_hex(c->key, c->keyhex);
    hw_derp_key_short(c->key, c->short_key);
    /* Constant time, so the mesh key can't be guessed byte by byte. */
    c->can_mesh = r->have_mesh_key && c->info.has_mesh_key &&
                  sodium_memcmp(r->mesh_key, c->info.mesh_key, 32) == 0;
    if (c->info.has_mesh_key && !c->can_mesh)
        log_warn("derp: %s %s sent a wrong mesh key", c->short_key, c->remote_text);
    if (!c->can_mesh && r->admit) {
        c->state = CONN_VERIFYING;
        admission_start(c);
        return;
    }
    derp_admit(c);
}

static void add_watcher(struct conn *c)
{
    struct relay *r = c->relay;
    /* A mesh loop back to ourselves has nothing to learn. */
    if (memcmp(c->key, r->pub, 32) == 0 || c->watcher)
        return;
    /* First the clients already here, then every change. */
    for (struct conn *o = r->all; o; o = o->all_next) {
        if (!o->registered)
            continue;
        struct client_set *s = hw_strmap_get(&r->clients, o->keyhex);
        if (!s || s->active != o)
            continue;
        struct gone_note n;
        present_note(o, &n);
        derp_note(c, &n);
    }
    if (r->n_watchers == r->cap_watchers) {
        r->cap_watchers = r->cap_watchers ? r->cap_watchers * 2 : 4;
        struct conn **grown = realloc(r->watchers, r->cap_watchers * sizeof *grown);
        if (!grown)
            abort();
        r->watchers = grown;
    }
    r->watchers[r->n_watchers++] = c;
    c->watcher = true;
}

static void close_peer(struct conn *c, const uint8_t key[32])
{
    struct relay *r = c->relay;
    char hex[65];
    key_to_hex(key, hex);
    struct client_set *s = hw_strmap_get(&r->clients, hex);
    if (!s) {
        log_info("derp: ClosePeer from %s: %s is not connected", c->short_key, hex);
        return;
    }
    log_info("derp: ClosePeer from %s closes %zu connection(s) of %s", c->short_key, s->n, hex);
    /* Closing the last member frees the set, so take them from the end. */
    while ((s = hw_strmap_get(&r->clients, hex)) != NULL && s->n > 0)
        conn_close(s->v[s->n - 1], "closed by mesh peer (ClosePeer)");
}

void derp_on_frame(struct conn *c, const struct hw_derp_frame *f)
{
    struct relay *r = c->relay;
    if (c->state == CONN_WAIT_INFO) {
        on_client_info(c, f);
        return;
    }
    if (c->state != CONN_ACTIVE)
        return;
    /* Duplicate connections: whichever spoke last gets the traffic (derper's default
     * lastWriterIsActive policy). */
    c->activity_seq = ++r->activity_seq;
    if (c->cset->n > 1)
        c->cset->active = c;

    switch (f->type) {
    case HW_DERP_SEND_PACKET: {
        const uint8_t *dst, *data;
        uint32_t dlen;
        if (hw_derp_parse_send_packet(f->payload, f->len, &dst, &data, &dlen) < 0) {
            conn_close(c, "short SendPacket");
            return;
        }
        derp_send_local_or_drop(r, c, c->key, dst, data, dlen, false);
        return;
    }
    case HW_DERP_FORWARD_PACKET: {
        if (!c->can_mesh) {
            conn_close(c, "ForwardPacket without the mesh key");
            return;
        }
        const uint8_t *src, *dst, *data;
        uint32_t dlen;
        if (hw_derp_parse_forward_packet(f->payload, f->len, &src, &dst, &data, &dlen) < 0) {
            conn_close(c, "short ForwardPacket");
            return;
        }
        derp_send_local_or_drop(r, c, src, dst, data, dlen, true);
        return;
    }
    case HW_DERP_NOTE_PREFERRED:
        if (f->len != 1) {
            conn_close(c, "NotePreferred of wrong size");
            return;
        }
        c->preferred = f->payload[0] != 0;
        return;
    case HW_DERP_WATCH_CONNS:
        if (!c->can_mesh) {
            conn_close(c, "WatchConns without the mesh key");
            return;
        }
        add_watcher(c);
        return;
    case HW_DERP_CLOSE_PEER:
        if (f->len != HW_DERP_KEY_LEN) {
            conn_close(c, "ClosePeer of wrong size");
            return;
        }
        if (!c->can_mesh) {
            conn_close(c, "ClosePeer without the mesh key");
            return;
        }
        close_peer(c, f->payload);
        return;
    case HW_DERP_PING:
        if (f->len < HW_DERP_PING_LEN) {
            conn_close(c, "short ping");
            return;
        }
        /* One pong pending at most; a client pinging faster is ignored. */
        if (!c->pong_pending) {
            c->pong_pending = true;
            memcpy(c->pong_data, f->payload, HW_DERP_PING_LEN);
            conn_mark_dirty(c);
        }
        return;
    default:
        return;
    }
}
