#ifndef HW_CLIENT_TLSDIAL_H
#define HW_CLIENT_TLSDIAL_H

/* TLS to DERP nodes, checked the way upstream's net/tlsdial checks them
 * (PROTOCOL.md §5.5, §8.1), all with OpenSSL:
 *   - CertName "sha256-raw:<hex>": no CA; the server presents exactly one certificate
 *     (besides derper's "derpkey..." meta certificate) whose DER hashes to <hex>, that
 *     names the dialed host and is within its validity period;
 *   - another CertName: the system roots must vouch for a certificate of that name;
 *   - none: the system roots, for HostName;
 *   - InsecureForTests: nothing is checked. */

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#define HWC_CERT_PIN_PREFIX "sha256-raw:"

/* A client SSL on fd with SNI (unless host is an IP literal) and the verification the
 * node asks for. NULL with err set when OpenSSL cannot make one. */
SSL *hwc_tls_new(int fd, const char *host, const char *cert_name, bool insecure, char *err,
                 size_t errlen);
/* After the handshake: 0 when the server is the one the node names, else -1 with a
 * message that says what did not match. */
int hwc_tls_check(SSL *ssl, const char *host, const char *cert_name, bool insecure, char *err,
                  size_t errlen);
/* Why a handshake failed, from OpenSSL's error queue and the verify result. */
void hwc_tls_handshake_error(SSL *ssl, int rc, char *err, size_t errlen);
/* Frees the shared context (at exit, so leak checkers see nothing). */
void hwc_tls_cleanup(void);

/* The pin check alone, on DER certificates (for the unit tests): the leaf list in the
 * order the server sent it. */
int hwc_tls_check_pin(const unsigned char *const *der, const int *der_len, int n, const char *host,
                      const char *pin_hex, char *err, size_t errlen);

#endif
