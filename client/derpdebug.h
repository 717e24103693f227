#ifndef HW_CLIENT_DERPDEBUG_H
#define HW_CLIENT_DERPDEBUG_H

/* `hwclient debug derp-send` / `derp-stats`: numbered opaque packets between two nodes
 * through their DERP relays, to test and measure the DERP path before the data plane
 * (WireGuard, disco) exists. Not a Tailscale protocol: a peer that is not hwclient
 * drops these packets (they are neither WireGuard nor disco).
 *
 * Packet (big-endian): magic "HWDBG" | version 1 | kind (1 data, 2 ack) | 0 |
 * run id u64 | a u64 | b u64 | zero padding up to the requested size.
 *   data: a = sequence number from 0, b = packets in the run;
 *   ack:  a = data packets of the run received so far, b = the next sequence expected.
 * The receiver acknowledges every HWC_DBG_ACK_EVERY packets and the last one; the sender
 * keeps at most HWC_DBG_WINDOW unacknowledged, below the relay's 32-packet queue per
 * client, so a healthy path loses nothing and the count measures the relay. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct hw_loop;

#define HWC_DBG_HDR_LEN 32
#define HWC_DBG_MAX_SIZE 65536
#define HWC_DBG_MAX_COUNT 100000000ull
#define HWC_DBG_WINDOW 16
#define HWC_DBG_ACK_EVERY 8
/* No acknowledgement for this long ends a send with what it got. */
#define HWC_DBG_STALL_MS 5000
/* Senders a receiver keeps numbers for; more are counted but not itemised. */
#define HWC_DBG_MAX_PEERS 1024

enum { HWC_DBG_DATA = 1, HWC_DBG_ACK = 2 };

struct hwc_dbg_pkt {
    int kind;
    uint64_t run, a, b;
};

/* Writes a packet of size bytes (>= HWC_DBG_HDR_LEN). */
void hwc_dbg_build(uint8_t *out, size_t size, const struct hwc_dbg_pkt *p);
/* 0 when p is one of ours, -1 otherwise. */
int hwc_dbg_parse(const uint8_t *data, size_t len, struct hwc_dbg_pkt *out);

/* ---- receiving ---- */

struct hwc_dbg_rx;
struct hwc_dbg_rx *hwc_dbg_rx_new(void);
void hwc_dbg_rx_free(struct hwc_dbg_rx *rx);
/* Counts a data packet of len bytes from src. True when an ack is due (*ack filled). */
bool hwc_dbg_rx_data(struct hwc_dbg_rx *rx, const uint8_t src[32], const struct hwc_dbg_pkt *p, size_t len,
                     int64_t now_us, struct hwc_dbg_pkt *ack);
/* {"nodekey:...": {Packets, Bytes, Run: {ID, Packets, Total, NextSeq, Lost, Reordered,
 * FirstGap, FirstReorder, Complete, PacketsPerSecond}}} */
json_t *hwc_dbg_rx_json(const struct hwc_dbg_rx *rx);
uint64_t hwc_dbg_rx_untracked(const struct hwc_dbg_rx *rx);

/* ---- sending ---- */

struct hwc_dbg_tx;
/* Sends one packet; -1 with err when it could not go now (retried until the stall limit). */
typedef int (*hwc_dbg_send_fn)(void *arg, const uint8_t *pkt, size_t len, char *err, size_t errlen);
/* The end: result (Sent, Acked, Seconds, PacketsPerSecond, MbitPerSecond) is stolen; err
 * is set when not every packet was acknowledged. Runs from a timer or an ack, never
 * inside hwc_dbg_tx_start. */
typedef void (*hwc_dbg_done_fn)(struct hwc_dbg_tx *tx, json_t *result, const char *err, void *arg);

struct hwc_dbg_tx *hwc_dbg_tx_start(struct hw_loop *loop, uint64_t count, size_t size, hwc_dbg_send_fn send,
                                    hwc_dbg_done_fn done, void *arg);
/* An ack for this run moves the window (and may call done). */
void hwc_dbg_tx_ack(struct hwc_dbg_tx *tx, const struct hwc_dbg_pkt *ack);
uint64_t hwc_dbg_tx_run(const struct hwc_dbg_tx *tx);
void hwc_dbg_tx_free(struct hwc_dbg_tx *tx);

#endif
