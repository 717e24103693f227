#include "proto/disco.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/keys.h"

bool hw_disco_is(const uint8_t *pkt, size_t len)
{
    return len >= HW_DISCO_WRAPPER_LEN && memcmp(pkt, HW_DISCO_MAGIC, HW_DISCO_MAGIC_LEN) == 0;
}

const uint8_t *hw_disco_sender(const uint8_t *pkt) { return pkt + HW_DISCO_MAGIC_LEN; }

long hw_disco_seal(uint8_t *out, size_t cap, const uint8_t sender_pub[32], const uint8_t shared[32],
                   const uint8_t *nonce, const uint8_t *plain, size_t plain_len)
{
    if (cap < HW_DISCO_OVERHEAD || plain_len > cap - HW_DISCO_OVERHEAD)
        return -1;
    memcpy(out, HW_DISCO_MAGIC, HW_DISCO_MAGIC_LEN);
    memcpy(out + HW_DISCO_MAGIC_LEN, sender_pub, HW_DISCO_KEY_LEN);
    /* hw_box_seal_shared writes nonce || tag || ciphertext: exactly disco's tail. */
    if (hw_box_seal_shared(out + HW_DISCO_MAGIC_LEN + HW_DISCO_KEY_LEN, plain, plain_len, nonce, shared) < 0)
        return -1;
    return (long)(HW_DISCO_OVERHEAD + plain_len);
}

long hw_disco_open(const uint8_t *pkt, size_t len, const uint8_t shared[32], uint8_t *plain, size_t cap)
{
    if (!hw_disco_is(pkt, len) || len < HW_DISCO_OVERHEAD || len - HW_DISCO_OVERHEAD > cap)
        return -1;
    const uint8_t *box = pkt + HW_DISCO_MAGIC_LEN + HW_DISCO_KEY_LEN;
    if (hw_box_open_shared(plain, box, len - HW_DISCO_MAGIC_LEN - HW_DISCO_KEY_LEN, shared) < 0)
        return -1;
    return (long)(len - HW_DISCO_OVERHEAD);
}

static void put_addr(uint8_t *p, const struct hw_disco_addr *a)
{
    memcpy(p, a->ip, 16);
    p[16] = (uint8_t)(a->port >> 8);
    p[17] = (uint8_t)a->port;
}

static void get_addr(const uint8_t *p, struct hw_disco_addr *a)
{
    memcpy(a->ip, p, 16);
    a->port = (uint16_t)(p[16] << 8 | p[17]);
}

long hw_disco_encode(const struct hw_disco_msg *m, uint8_t *out, size_t cap)
{
    size_t need;
    switch (m->type) {
    case HW_DISCO_PING:
        need = 2 + HW_DISCO_TXID_LEN + (m->has_node_key ? 32 : 0) + m->padding;
        break;
    case HW_DISCO_PONG:
        need = 2 + HW_DISCO_TXID_LEN + 18;
        break;
    case HW_DISCO_CALL_ME_MAYBE:
        if (m->n_endpoints > HW_DISCO_MAX_ENDPOINTS)
            return -1;
        need = 2 + 18 * m->n_endpoints;
        break;
    default:
        return -1;
    }
    if (need > cap)
        return -1;
    out[0] = m->type;
    out[1] = 0; /* every message we send is version 0, as upstream's */
    uint8_t *p = out + 2;
    switch (m->type) {
    case HW_DISCO_PING:
        memcpy(p, m->txid, HW_DISCO_TXID_LEN);
        p += HW_DISCO_TXID_LEN;
        if (m->has_node_key) {
            memcpy(p, m->node_key, 32);
            p += 32;
        }
        memset(p, 0, m->padding);
        break;
    case HW_DISCO_PONG:
        memcpy(p, m->txid, HW_DISCO_TXID_LEN);
        put_addr(p + HW_DISCO_TXID_LEN, &m->src);
        break;
    case HW_DISCO_CALL_ME_MAYBE:
        for (size_t i = 0; i < m->n_endpoints; i++)
            put_addr(p + 18 * i, &m->endpoints[i]);
        break;
    }
    return (long)need;
}

int hw_disco_decode(const uint8_t *plain, size_t len, struct hw_disco_msg *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (len < 2) {
        snprintf(err, errlen, "disco message of %zu bytes: shorter than its 2-byte header", len);
        return -1;
    }
    m->type = plain[0];
    m->version = plain[1];
    const uint8_t *p = plain + 2;
    size_t n = len - 2;
    switch (m->type) {
    case HW_DISCO_PING:
        if (n < HW_DISCO_TXID_LEN) {
            snprintf(err, errlen, "disco Ping of %zu bytes: a TxID needs %d", n, HW_DISCO_TXID_LEN);
            return -1;
        }
        memcpy(m->txid, p, HW_DISCO_TXID_LEN);
        p += HW_DISCO_TXID_LEN;
        n -= HW_DISCO_TXID_LEN;
        if (n >= 32) {
            m->has_node_key = true;
            memcpy(m->node_key, p, 32);
            n -= 32;
        }
        m->padding = n;
        return 0;
    case HW_DISCO_PONG:
        if (n < HW_DISCO_TXID_LEN + 18) {
            snprintf(err, errlen, "disco Pong of %zu bytes: TxID and source need %d", n, HW_DISCO_TXID_LEN + 18);
            return -1;
        }
        memcpy(m->txid, p, HW_DISCO_TXID_LEN);
        get_addr(p + HW_DISCO_TXID_LEN, &m->src);
        return 0;
    case HW_DISCO_CALL_ME_MAYBE:
        if (n % 18 != 0 || m->version != 0)
            return 0; /* upstream: such a CallMeMaybe carries no endpoints */
        for (size_t i = 0; i < n / 18; i++) {
            if (m->n_endpoints == HW_DISCO_MAX_ENDPOINTS) {
                m->endpoints_dropped++;
                continue;
            }
            get_addr(p + 18 * i, &m->endpoints[m->n_endpoints++]);
        }
        return 0;
    default:
        return 1;
    }
}

static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool hw_disco_addr_is_v4(const struct hw_disco_addr *a) { return memcmp(a->ip, v4_prefix, 12) == 0; }

void hw_disco_addr_from_sockaddr(const struct sockaddr *sa, struct hw_disco_addr *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memcpy(out->ip, v4_prefix, 12);
        memcpy(out->ip + 12, &s4->sin_addr, 4);
        out->port = ntohs(s4->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        memcpy(out->ip, &s6->sin6_addr, 16);
        out->port = ntohs(s6->sin6_port);
    }
}

void hw_disco_addr_to_sockaddr(const struct hw_disco_addr *a, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (hw_disco_addr_is_v4(a)) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, a->ip + 12, 4);
        s4->sin_port = htons(a->port);
        *len = sizeof *s4;
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, a->ip, 16);
        s6->sin6_port = htons(a->port);
        *len = sizeof *s6;
    }
}

char *hw_disco_addr_format(const struct hw_disco_addr *a, char *out)
{
    char ip[INET6_ADDRSTRLEN];
    if (hw_disco_addr_is_v4(a)) {
        inet_ntop(AF_INET, a->ip + 12, ip, sizeof ip);
        snprintf(out, HW_DISCO_ADDR_TEXT, "%s:%u", ip, a->port);
    } else {
        inet_ntop(AF_INET6, a->ip, ip, sizeof ip);
        snprintf(out, HW_DISCO_ADDR_TEXT, "[%s]:%u", ip, a->port);
    }
    return out;
}

int hw_disco_addr_parse(const char *text, struct hw_disco_addr *out)
{
    memset(out, 0, sizeof *out);
    char host[INET6_ADDRSTRLEN + 2];
    const char *port_s;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':' || (size_t)(close - text - 1) >= sizeof host)
            return -1;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        port_s = close + 2;
        if (inet_pton(AF_INET6, host, out->ip) != 1)
            return -1;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof host)
            return -1;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port_s = colon + 1;
        memcpy(out->ip, v4_prefix, 12);
        if (inet_pton(AF_INET, host, out->ip + 12) != 1)
            return -1;
    }
    char *end;
    long port = strtol(port_s, &end, 10);
    if (!*port_s || *end || port < 0 || port > 65535)
        return -1;
    out->port = (uint16_t)port;
    return 0;
}

bool hw_disco_addr_equal(const struct hw_disco_addr *a, const struct hw_disco_addr *b)
{
    return a->port == b->port && memcmp(a->ip, b->ip, 16) == 0;
}
