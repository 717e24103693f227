#include "proto/stun.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#define ATTR_MAPPED_ADDRESS 0x0001
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_XOR_MAPPED_ADDRESS_ALT 0x8020
#define ATTR_SOFTWARE 0x8022
#define ATTR_FINGERPRINT 0x8028
#define FINGERPRINT_XOR 0x5354554eu
#define FINGERPRINT_ATTR_LEN 8

static const uint8_t cookie[4] = {0x21, 0x12, 0xa4, 0x42};
static const char software[] = "tailnode";

const char *hw_stun_strerror(int err)
{
    switch (err) {
    case HW_STUN_OK: return "ok";
    case HW_STUN_NOT_STUN: return "not a STUN packet";
    case HW_STUN_NOT_BINDING_REQUEST: return "not a binding request";
    case HW_STUN_BAD_ATTRS: return "malformed attributes";
    case HW_STUN_WRONG_SOFTWARE: return "SOFTWARE is not tailnode";
    case HW_STUN_NO_FINGERPRINT: return "FINGERPRINT is not the last attribute";
    case HW_STUN_BAD_FINGERPRINT: return "wrong FINGERPRINT";
    case HW_STUN_NOT_SUCCESS: return "not a binding success response";
    case HW_STUN_NO_ADDRESS: return "no mapped address";
    default: return "unknown STUN error";
    }
}

/* CRC-32 (IEEE 802.3, reflected), which the FINGERPRINT attribute is built on. A
 * checksum over 32 bytes, not a cryptographic primitive: bitwise is fast enough and
 * needs no shared table. */
static uint32_t crc32_ieee(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xffffffffu;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

bool hw_stun_is(const uint8_t *pkt, size_t len)
{
    return len >= HW_STUN_HEADER_LEN && (pkt[0] & 0xc0) == 0 && memcmp(pkt + 4, cookie, 4) == 0;
}

typedef int (*attr_fn)(uint16_t type, const uint8_t *val, uint16_t len, void *arg);

/* Values are padded to 4 bytes; a value running past the end is malformed. */
static int foreach_attr(const uint8_t *p, size_t len, attr_fn fn, void *arg)
{
    while (len > 0) {
        if (len < 4)
            return HW_STUN_BAD_ATTRS;
        uint16_t type = get16(p), alen = get16(p + 2);
        size_t padded = ((size_t)alen + 3) & ~(size_t)3;
        p += 4;
        len -= 4;
        if (padded > len)
            return HW_STUN_BAD_ATTRS;
        int rc = fn(type, p, alen, arg);
        if (rc)
            return rc;
        p += padded;
        len -= padded;
    }
    return 0;
}

struct req_scan {
    bool software_ok;
    uint16_t last;
    bool have_fp;
    uint32_t fp;
};

static int scan_request_attr(uint16_t type, const uint8_t *val, uint16_t len, void *arg)
{
    struct req_scan *s = arg;
    s->last = type;
    if (type == ATTR_SOFTWARE && len == sizeof software - 1 && memcmp(val, software, len) == 0)
        s->software_ok = true;
    if (type == ATTR_FINGERPRINT && len == 4) {
        s->have_fp = true;
        s->fp = get32(val);
    }
    return 0;
}

int hw_stun_parse_binding_request(const uint8_t *pkt, size_t len, uint8_t txid[HW_STUN_TXID_LEN])
{
    if (!hw_stun_is(pkt, len))
        return HW_STUN_NOT_STUN;
    if (pkt[0] != 0x00 || pkt[1] != 0x01)
        return HW_STUN_NOT_BINDING_REQUEST;
    struct req_scan s = {0};
    /* Like derper, the attributes run to the end of the datagram. */
    int rc = foreach_attr(pkt + HW_STUN_HEADER_LEN, len - HW_STUN_HEADER_LEN, scan_request_attr, &s);
    if (rc)
        return rc;
    if (!s.software_ok)
        return HW_STUN_WRONG_SOFTWARE;
    if (s.last != ATTR_FINGERPRINT || !s.have_fp)
        return HW_STUN_NO_FINGERPRINT;
    if (s.fp != (crc32_ieee(pkt, len - FINGERPRINT_ATTR_LEN) ^ FINGERPRINT_XOR))
        return HW_STUN_BAD_FINGERPRINT;
    memcpy(txid, pkt + 8, HW_STUN_TXID_LEN);
    return HW_STUN_OK;
}

size_t hw_stun_build_response(uint8_t out[HW_STUN_MAX_RESPONSE], const uint8_t txid[HW_STUN_TXID_LEN],
                              const struct hw_stun_addr *addr)
{
    size_t alen = addr->family == 4 ? 4 : 16;
    out[0] = 0x01;
    out[1] = 0x01;
    put16(out + 2, (uint16_t)(8 + alen));
    memcpy(out + 4, cookie, 4);
    memcpy(out + 8, txid, HW_STUN_TXID_LEN);
    uint8_t *a = out + HW_STUN_HEADER_LEN;
    put16(a, ATTR_XOR_MAPPED_ADDRESS);
    put16(a + 2, (uint16_t)(4 + alen));
    a[4] = 0;
    a[5] = addr->family == 4 ? 0x01 : 0x02;
    put16(a + 6, addr->port ^ 0x2112);
    /* The address is XORed with the cookie, then (IPv6) the transaction ID. */
    for (size_t i = 0; i < alen; i++)
        a[8 + i] = addr->ip[i] ^ (i < 4 ? cookie[i] : txid[i - 4]);
    return HW_STUN_HEADER_LEN + 8 + alen;
}

size_t hw_stun_build_request(uint8_t out[HW_STUN_REQUEST_LEN], const uint8_t txid[HW_STUN_TXID_LEN])
{
    out[0] = 0x00;
    out[1] = 0x01;
    put16(out + 2, 20);
    memcpy(out + 4, cookie, 4);
    memcpy(out + 8, txid, HW_STUN_TXID_LEN);
    put16(out + 20, ATTR_SOFTWARE);
    put16(out + 22, sizeof software - 1);
    memcpy(out + 24, software, sizeof software - 1);
    put16(out + 32, ATTR_FINGERPRINT);
    put16(out + 34, 4);
    put32(out + 36, crc32_ieee(out, 32) ^ FINGERPRINT_XOR);
    return HW_STUN_REQUEST_LEN;
}

struct resp_scan {
    const uint8_t *txid;
    bool have_xor, have_plain;
    struct hw_stun_addr xor_addr, plain_addr;
};

static void unmap(struct hw_stun_addr *a)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (a->family == 6 && memcmp(a->ip, prefix, 12) == 0) {
        memmove(a->ip, a->ip + 12, 4);
        memset(a->ip + 4, 0, 12);
        a->family = 4;
    }
}

static int decode_addr(const uint8_t *val, uint16_t len, const uint8_t *txid, struct hw_stun_addr *out)
{
    if (len < 4)
        return HW_STUN_BAD_ATTRS;
    size_t alen = val[1] == 0x01 ? 4 : val[1] == 0x02 ? 16 : 0;
    if (alen == 0 || len < 4 + alen)
        return HW_STUN_BAD_ATTRS;
    memset(out, 0, sizeof *out);
    out->family = alen == 4 ? 4 : 6;
    out->port = get16(val + 2);
    for (size_t i = 0; i < alen; i++)
        out->ip[i] = val[4 + i];
    if (txid) {
        out->port ^= 0x2112;
        for (size_t i = 0; i < alen; i++)
            out->ip[i] ^= i < 4 ? cookie[i] : txid[i - 4];
    }
    unmap(out);
    return 0;
}

static int scan_response_attr(uint16_t type, const uint8_t *val, uint16_t len, void *arg)
{
    struct resp_scan *s = arg;
    int rc = 0;
    if (type == ATTR_XOR_MAPPED_ADDRESS || type == ATTR_XOR_MAPPED_ADDRESS_ALT) {
        rc = decode_addr(val, len, s->txid, &s->xor_addr);
        s->have_xor = rc == 0;
    } else if (type == ATTR_MAPPED_ADDRESS) {
        rc = decode_addr(val, len, NULL, &s->plain_addr);
        s->have_plain = rc == 0;
    }
    return rc;
}

int hw_stun_parse_response(const uint8_t *pkt, size_t len, uint8_t txid[HW_STUN_TXID_LEN],
                           struct hw_stun_addr *addr)
{
    if (!hw_stun_is(pkt, len))
        return HW_STUN_NOT_STUN;
    memcpy(txid, pkt + 8, HW_STUN_TXID_LEN);
    if (pkt[0] != 0x01 || pkt[1] != 0x01)
        return HW_STUN_NOT_SUCCESS;
    size_t attrs = get16(pkt + 2);
    if (attrs > len - HW_STUN_HEADER_LEN)
        return HW_STUN_BAD_ATTRS;
    struct resp_scan s = {.txid = pkt + 8};
    int rc = foreach_attr(pkt + HW_STUN_HEADER_LEN, attrs, scan_response_attr, &s);
    if (rc)
        return rc;
    if (s.have_xor)
        *addr = s.xor_addr;
    else if (s.have_plain)
        *addr = s.plain_addr;
    else
        return HW_STUN_NO_ADDRESS;
    return HW_STUN_OK;
}

int hw_stun_addr_from_sockaddr(const struct sockaddr *sa, struct hw_stun_addr *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        out->family = 4;
        memcpy(out->ip, &in->sin_addr, 4);
        out->port = ntohs(in->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        out->family = 6;
        memcpy(out->ip, &in6->sin6_addr, 16);
        out->port = ntohs(in6->sin6_port);
        unmap(out);
        return 0;
    }
    return -1;
}

void hw_stun_addr_format(const struct hw_stun_addr *a, char *out, size_t out_len)
{
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->ip, ip, sizeof ip);
    snprintf(out, out_len, a->family == 4 ? "%s:%u" : "[%s]:%u", ip, a->port);
}
