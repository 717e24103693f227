#ifndef HW_PROTO_STUN_H
#define HW_PROTO_STUN_H

/* The minimal RFC 5389 Binding exchange Tailscale uses (PROTOCOL.md section 9):
 * a 40-byte request with SOFTWARE "tailnode" and FINGERPRINT, answered by a single
 * XOR-MAPPED-ADDRESS and nothing else, exactly as derper does. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define HW_STUN_TXID_LEN 12
#define HW_STUN_HEADER_LEN 20
#define HW_STUN_REQUEST_LEN 40
#define HW_STUN_MAX_RESPONSE 44      /* IPv6 */

struct hw_stun_addr {
    int family;                      /* 4 or 6 */
    uint8_t ip[16];                  /* IPv4 in the first 4 bytes */
    uint16_t port;
};

enum hw_stun_error {
    HW_STUN_OK = 0,
    HW_STUN_NOT_STUN = -1,           /* short, top bits set, or no magic cookie */
    HW_STUN_NOT_BINDING_REQUEST = -2,
    HW_STUN_BAD_ATTRS = -3,
    HW_STUN_WRONG_SOFTWARE = -4,
    HW_STUN_NO_FINGERPRINT = -5,
    HW_STUN_BAD_FINGERPRINT = -6,
    HW_STUN_NOT_SUCCESS = -7,
    HW_STUN_NO_ADDRESS = -8,
};
const char *hw_stun_strerror(int err);

/* Header check shared by both sides: >= 20 bytes, top two bits zero, magic cookie. */
bool hw_stun_is(const uint8_t *pkt, size_t len);

/* Server side, as strict as derper: Binding Request, SOFTWARE "tailnode", FINGERPRINT
 * last and correct. */
int hw_stun_parse_binding_request(const uint8_t *pkt, size_t len, uint8_t txid[HW_STUN_TXID_LEN]);
/* Binding Success with one XOR-MAPPED-ADDRESS. Returns the length (32 or 44). */
size_t hw_stun_build_response(uint8_t out[HW_STUN_MAX_RESPONSE], const uint8_t txid[HW_STUN_TXID_LEN],
                              const struct hw_stun_addr *addr);

/* Client side. */
size_t hw_stun_build_request(uint8_t out[HW_STUN_REQUEST_LEN], const uint8_t txid[HW_STUN_TXID_LEN]);
/* Reads XOR-MAPPED-ADDRESS (0x0020 or 0x8020), else MAPPED-ADDRESS; un-maps v4-mapped
 * IPv6 like the Go client. */
int hw_stun_parse_response(const uint8_t *pkt, size_t len, uint8_t txid[HW_STUN_TXID_LEN],
                           struct hw_stun_addr *addr);

/* Socket address <-> hw_stun_addr. A v4-mapped IPv6 source becomes IPv4, so a
 * dual-stack socket answers IPv4 clients with the IPv4 family as derper does. */
int hw_stun_addr_from_sockaddr(const struct sockaddr *sa, struct hw_stun_addr *out);
/* "1.2.3.4:5" / "[::1]:5" */
void hw_stun_addr_format(const struct hw_stun_addr *a, char *out, size_t out_len);

#endif
