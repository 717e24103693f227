#include "client/derpdebug.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "common/loop.h"
#include "common/strmap.h"
#include "common/util.h"
#include "proto/keys.h"

#define MAGIC "HWDBG"
#define MAGIC_LEN 5
#define VERSION 1
/* While packets cannot go (the relay is reconnecting), try again this often. */
#define RETRY_MS 50

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void hwc_dbg_build(uint8_t *out, size_t size, const struct hwc_dbg_pkt *p)
{
    memset(out, 0, size);
    memcpy(out, MAGIC, MAGIC_LEN);
    out[5] = VERSION;
    out[6] = (uint8_t)p->kind;
    put64(out + 8, p->run);
    put64(out + 16, p->a);
    put64(out + 24, p->b);
}

int hwc_dbg_parse(const uint8_t *data, size_t len, struct hwc_dbg_pkt *out)
{
    if (len < HWC_DBG_HDR_LEN || len > HWC_DBG_MAX_SIZE || memcmp(data, MAGIC, MAGIC_LEN) != 0 ||
        data[5] != VERSION || (data[6] != HWC_DBG_DATA && data[6] != HWC_DBG_ACK))
        return -1;
    out->kind = data[6];
    out->run = get64(data + 8);
    out->a = get64(data + 16);
    out->b = get64(data + 24);
    if (out->kind == HWC_DBG_DATA && (out->b == 0 || out->b > HWC_DBG_MAX_COUNT || out->a >= out->b))
        return -1;
    return 0;
}

/* ---- receiving ---- */

struct rx_peer {
    uint8_t key[32];
    uint64_t packets, bytes;
    uint64_t run, run_packets, run_total, next_seq, lost, reordered;
    bool gap_set, reorder_set;
    uint64_t gap_expected, gap_got, reorder_expected, reorder_got;
    int64_t first_us, last_us;
};

struct hwc_dbg_rx {
    struct hw_strmap peers; /* hex key -> rx_peer */
    struct rx_peer **list;
    size_t n;
    uint64_t untracked;
};

struct hwc_dbg_rx *hwc_dbg_rx_new(void)
{
    struct hwc_dbg_rx *rx = hw_calloc(1, sizeof *rx);
    hw_strmap_init(&rx->peers);
    return rx;
}

void hwc_dbg_rx_free(struct hwc_dbg_rx *rx)
{
    if (!rx)
        return;
    for (size_t i = 0; i < rx->n; i++)
        free(rx->list[i]);
    free(rx->list);
    hw_strmap_free(&rx->peers);
    free(rx);
}

bool hwc_dbg_rx_data(struct hwc_dbg_rx *rx, const uint8_t src[32], const struct hwc_dbg_pkt *p, size_t len,
                     int64_t now_us, struct hwc_dbg_pkt *ack)
{
    char hex[65];
    hw_hex_encode(src, 32, hex);
    struct rx_peer *pe = hw_strmap_get(&rx->peers, hex);
    if (!pe) {
        if (rx->n >= HWC_DBG_MAX_PEERS) {
            rx->untracked++;
            return false;
        }
        pe = hw_calloc(1, sizeof *pe);
        memcpy(pe->key, src, 32);
        hw_strmap_put(&rx->peers, hex, pe);
        rx->list = realloc(rx->list, (rx->n + 1) * sizeof *rx->list);
        if (!rx->list)
            abort();
        rx->list[rx->n++] = pe;
    }
    pe->packets++;
    pe->bytes += len;
    if (p->run != pe->run || pe->run_packets == 0) {
        uint64_t packets = pe->packets, bytes = pe->bytes;
        uint8_t key[32];
        memcpy(key, pe->key, 32);
        memset(pe, 0, sizeof *pe);
        memcpy(pe->key, key, 32);
        pe->packets = packets;
        pe->bytes = bytes;
        pe->run = p->run;
        pe->run_total = p->b;
        pe->first_us = now_us;
    }
    pe->run_packets++;
    pe->last_us = now_us;
    if (p->a == pe->next_seq) {
        pe->next_seq++;
    } else if (p->a > pe->next_seq) {
        if (!pe->gap_set) {
            pe->gap_set = true;
            pe->gap_expected = pe->next_seq;
            pe->gap_got = p->a;
        }
        pe->lost += p->a - pe->next_seq;
        pe->next_seq = p->a + 1;
    } else {
        /* behind what we expected: a late packet (counted lost before) or a duplicate */
        if (!pe->reorder_set) {
            pe->reorder_set = true;
            pe->reorder_expected = pe->next_seq;
            pe->reorder_got = p->a;
        }
        pe->reordered++;
        if (pe->lost)
            pe->lost--;
    }
    if (pe->run_packets % HWC_DBG_ACK_EVERY != 0 && p->a + 1 != p->b)
        return false;
    *ack = (struct hwc_dbg_pkt){.kind = HWC_DBG_ACK, .run = p->run, .a = pe->run_packets, .b = pe->next_seq};
    return true;
}

static json_t *pair(uint64_t expected, uint64_t got)
{
    json_t *o = json_object();
    json_object_set_new(o, "Expected", json_integer((json_int_t)expected));
    json_object_set_new(o, "Got", json_integer((json_int_t)got));
    return o;
}

json_t *hwc_dbg_rx_json(const struct hwc_dbg_rx *rx)
{
    json_t *o = json_object();
    for (size_t i = 0; i < rx->n; i++) {
        const struct rx_peer *pe = rx->list[i];
        json_t *p = json_object();
        json_object_set_new(p, "Packets", json_integer((json_int_t)pe->packets));
        json_object_set_new(p, "Bytes", json_integer((json_int_t)pe->bytes));
        json_t *run = json_object();
        char id[17];
        snprintf(id, sizeof id, "%016llx", (unsigned long long)pe->run);
        json_object_set_new(run, "ID", json_string(id));
        json_object_set_new(run, "Packets", json_integer((json_int_t)pe->run_packets));
        json_object_set_new(run, "Total", json_integer((json_int_t)pe->run_total));
        json_object_set_new(run, "NextSeq", json_integer((json_int_t)pe->next_seq));
        json_object_set_new(run, "Lost", json_integer((json_int_t)pe->lost));
        json_object_set_new(run, "Reordered", json_integer((json_int_t)pe->reordered));
        json_object_set_new(run, "FirstGap", pe->gap_set ? pair(pe->gap_expected, pe->gap_got) : json_null());
        json_object_set_new(run, "FirstReorder",
                            pe->reorder_set ? pair(pe->reorder_expected, pe->reorder_got) : json_null());
        json_object_set_new(run, "Complete", json_boolean(pe->run_packets == pe->run_total && !pe->gap_set &&
                                                          !pe->reorder_set && pe->next_seq == pe->run_total));
        double secs = (double)(pe->last_us - pe->first_us) / 1e6;
        if (secs > 0 && pe->run_packets > 1)
            json_object_set_new(run, "PacketsPerSecond", json_real((double)(pe->run_packets - 1) / secs));
        json_object_set_new(p, "Run", run);
        char key[HW_KEY_TEXT_MAX];
        json_object_set_new(o, hw_key_format(HW_KEY_NODE, pe->key, key), p);
    }
    return o;
}

uint64_t hwc_dbg_rx_untracked(const struct hwc_dbg_rx *rx) { return rx->untracked; }

/* ---- sending ---- */

struct hwc_dbg_tx {
    struct hw_loop *loop;
    uint64_t run, count, sent, acked;
    size_t size;
    hwc_dbg_send_fn send;
    hwc_dbg_done_fn done;
    void *arg;
    uint8_t *buf;
    int64_t start_us, end_us, progress_ms;
    struct hw_timer *timer;
    bool finished;
    char last_error[300];
};

static void finish(struct hwc_dbg_tx *tx)
{
    if (tx->finished)
        return;
    tx->finished = true;
    if (tx->timer) {
        hw_timer_cancel(tx->loop, tx->timer);
        tx->timer = NULL;
    }
    if (!tx->end_us)
        tx->end_us = mono_us();
    double secs = (double)(tx->end_us - tx->start_us) / 1e6;
    json_t *r = json_object();
    json_object_set_new(r, "Sent", json_integer((json_int_t)tx->sent));
    json_object_set_new(r, "Acked", json_integer((json_int_t)tx->acked));
    json_object_set_new(r, "Size", json_integer((json_int_t)tx->size));
    json_object_set_new(r, "Seconds", json_real(secs));
    if (secs > 0) {
        json_object_set_new(r, "PacketsPerSecond", json_real((double)tx->acked / secs));
        json_object_set_new(r, "MbitPerSecond", json_real((double)tx->acked * (double)tx->size * 8 / secs / 1e6));
    }
    char err[500] = "";
    if (tx->acked < tx->count)
        snprintf(err, sizeof err, "the peer acknowledged %llu of %llu packets, then nothing for %d s%s%s",
                 (unsigned long long)tx->acked, (unsigned long long)tx->count, HWC_DBG_STALL_MS / 1000,
                 tx->last_error[0] ? ": " : " (lost on the way, or the peer is not an hwclient on its home relay)",
                 tx->last_error);
    tx->done(tx, r, err[0] ? err : NULL, tx->arg);
}

static void timer_cb(struct hw_loop *loop, struct hw_timer *t, void *arg);

/* Fills the window. */
static void pump(struct hwc_dbg_tx *tx)
{
    while (tx->sent < tx->count && tx->sent - tx->acked < HWC_DBG_WINDOW) {
        struct hwc_dbg_pkt p = {.kind = HWC_DBG_DATA, .run = tx->run, .a = tx->sent, .b = tx->count};
        hwc_dbg_build(tx->buf, tx->size, &p);
        if (tx->send(tx->arg, tx->buf, tx->size, tx->last_error, sizeof tx->last_error) < 0)
            break; /* the timer tries again */
        tx->last_error[0] = '\0';
        tx->sent++;
    }
}

static void timer_cb(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct hwc_dbg_tx *tx = arg;
    tx->timer = NULL;
    if (hw_loop_now_ms(loop) - tx->progress_ms >= HWC_DBG_STALL_MS) {
        finish(tx);
        return;
    }
    pump(tx);
    tx->timer = hw_timer_start(loop, RETRY_MS, timer_cb, tx);
}

struct hwc_dbg_tx *hwc_dbg_tx_start(struct hw_loop *loop, uint64_t count, size_t size, hwc_dbg_send_fn send,
                                    hwc_dbg_done_fn done, void *arg)
{
    struct hwc_dbg_tx *tx = hw_calloc(1, sizeof *tx);
    tx->loop = loop;
    randombytes_buf(&tx->run, sizeof tx->run);
    tx->count = count;
    tx->size = size < HWC_DBG_HDR_LEN ? HWC_DBG_HDR_LEN : size;
    tx->send = send;
    tx->done = done;
    tx->arg = arg;
    tx->buf = hw_malloc(tx->size);
    tx->start_us = mono_us();
    tx->progress_ms = hw_loop_now_ms(loop);
    pump(tx);
    tx->timer = hw_timer_start(loop, RETRY_MS, timer_cb, tx);
    return tx;
}

void hwc_dbg_tx_ack(struct hwc_dbg_tx *tx, const struct hwc_dbg_pkt *ack)
{
    if (tx->finished || ack->run != tx->run || ack->a <= tx->acked)
        return;
    tx->acked = ack->a > tx->sent ? tx->sent : ack->a;
    tx->progress_ms = hw_loop_now_ms(tx->loop);
    if (tx->acked >= tx->count) {
        tx->end_us = mono_us();
        finish(tx);
        return;
    }
    pump(tx);
}

uint64_t hwc_dbg_tx_run(const struct hwc_dbg_tx *tx) { return tx->run; }

void hwc_dbg_tx_free(struct hwc_dbg_tx *tx)
{
    if (!tx)
        return;
    if (tx->timer)
        hw_timer_cancel(tx->loop, tx->timer);
    free(tx->buf);
    free(tx);
}
