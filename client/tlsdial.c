#include "client/tlsdial.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "common/util.h"

/* derper's meta certificate carries the server key in its CN; it is not the server's
 * identity and upstream skips it when pinning. */
#define META_CERT_CN_PREFIX "derpkey"

static SSL_CTX *shared_ctx;

static SSL_CTX *ctx(void)
{
    if (!shared_ctx) {
        shared_ctx = SSL_CTX_new(TLS_client_method());
        if (!shared_ctx)
            return NULL;
        SSL_CTX_set_min_proto_version(shared_ctx, TLS1_2_VERSION);
        SSL_CTX_set_default_verify_paths(shared_ctx);
        SSL_CTX_set_mode(shared_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    return shared_ctx;
}

void hwc_tls_cleanup(void)
{
    SSL_CTX_free(shared_ctx);
    shared_ctx = NULL;
}

static bool is_ip(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static bool is_pin(const char *cert_name)
{
    return cert_name && strncmp(cert_name, HWC_CERT_PIN_PREFIX, strlen(HWC_CERT_PIN_PREFIX)) == 0;
}

SSL *hwc_tls_new(int fd, const char *host, const char *cert_name, bool insecure, char *err,
                 size_t errlen)
{
    SSL_CTX *c = ctx();
    SSL *ssl = c ? SSL_new(c) : NULL;
    if (!ssl) {
        snprintf(err, errlen, "TLS: OpenSSL cannot make a client connection");
        return NULL;
    }
    SSL_set_fd(ssl, fd);
    if (!is_ip(host))
        SSL_set_tlsext_host_name(ssl, host);
    if (insecure || is_pin(cert_name)) {
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL); /* checked by hwc_tls_check */
    } else {
        const char *name = cert_name && *cert_name ? cert_name : host;
        X509_VERIFY_PARAM *p = SSL_get0_param(ssl);
        if (is_ip(name))
            X509_VERIFY_PARAM_set1_ip_asc(p, name);
        else
            X509_VERIFY_PARAM_set1_host(p, name, 0);
        SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    }
    return ssl;
}

void hwc_tls_handshake_error(SSL *ssl, int rc, char *err, size_t errlen)
{
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK) {
        snprintf(err, errlen, "TLS handshake: certificate not trusted: %s (give the node a CertName "
                 "\"sha256-raw:...\" pin for a self-signed certificate)", X509_verify_cert_error_string(vr));
        ERR_clear_error();
        return;
    }
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        snprintf(err, errlen, "TLS handshake: %s", buf);
    } else if (SSL_get_error(ssl, rc) == SSL_ERROR_SYSCALL || SSL_get_error(ssl, rc) == SSL_ERROR_ZERO_RETURN) {
        snprintf(err, errlen, "TLS handshake: the server closed the connection (is this port serving "
                 "plain HTTP? then run hwclient with TS_DEBUG_USE_DERP_HTTP=1)");
    } else {
        snprintf(err, errlen, "TLS handshake failed (OpenSSL error %d)", SSL_get_error(ssl, rc));
    }
}

static bool cn_has_prefix(X509 *x, const char *prefix)
{
    char cn[256];
    X509_NAME *subj = X509_get_subject_name(x);
    if (!subj || X509_NAME_get_text_by_NID(subj, NID_commonName, cn, sizeof cn) < 0)
        return false;
    return strncmp(cn, prefix, strlen(prefix)) == 0;
}

static int check_pinned_leaf(X509 *x, const char *host, const char *pin_hex, char *err, size_t errlen)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = len > 0 && EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha256(), NULL) && mdlen == 32;
    OPENSSL_free(der);
    char hex[65];
    if (!ok) {
        snprintf(err, errlen, "TLS: cannot hash the server's certificate");
        return -1;
    }
    hw_hex_encode(md, 32, hex);
    /* Upstream compares the text as is: an upper-case pin never matches there either. */
    if (strcmp(hex, pin_hex) != 0) {
        snprintf(err, errlen, "TLS: the server's certificate (sha256 %s) is not the one pinned by the "
                 "node's CertName (sha256-raw:%.64s): update CertName in the DERP map if the relay has a "
                 "new certificate", hex, pin_hex);
        return -1;
    }
    if (host && *host) {
        int m = is_ip(host) ? X509_check_ip_asc(x, host, 0) : X509_check_host(x, host, 0, 0, NULL);
        if (m != 1) {
            snprintf(err, errlen, "TLS: the pinned certificate does not name %s (it needs %s for that host)",
                     host, is_ip(host) ? "an IP subjectAltName" : "a DNS subjectAltName");
            return -1;
        }
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
        snprintf(err, errlen, "TLS: the pinned certificate has expired: the relay must issue a new one "
                 "(and the DERP map its new pin)");
        return -1;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        snprintf(err, errlen, "TLS: the pinned certificate is not valid yet: is this machine's clock right?");
        return -1;
    }
    return 0;
}

static int check_pin_chain(STACK_OF(X509) *chain, const char *host, const char *pin_hex, char *err,
                           size_t errlen)
{
    int good = 0;
    for (int i = 0; chain && i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        if (cn_has_prefix(x, META_CERT_CN_PREFIX))
            continue;
        if (good) {
            snprintf(err, errlen, "TLS: the server presented more than one certificate, a pinned relay "
                     "must present exactly one");
            return -1;
        }
        if (check_pinned_leaf(x, host, pin_hex, err, errlen) < 0)
            return -1;
        good = 1;
    }
    if (!good) {
        snprintf(err, errlen, "TLS: the server presented no certificate to check against the pin");
        return -1;
    }
    return 0;
}

int hwc_tls_check(SSL *ssl, const char *host, const char *cert_name, bool insecure, char *err,
                  size_t errlen)
{
    if (insecure)
        return 0;
    if (is_pin(cert_name))
        return check_pin_chain(SSL_get_peer_cert_chain(ssl), host,
                               cert_name + strlen(HWC_CERT_PIN_PREFIX), err, errlen);
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK) {
        snprintf(err, errlen, "TLS: certificate not trusted: %s", X509_verify_cert_error_string(vr));
        return -1;
    }
    return 0;
}

int hwc_tls_check_pin(const unsigned char *const *der, const int *der_len, int n, const char *host,
                      const char *pin_hex, char *err, size_t errlen)
{
    STACK_OF(X509) *chain = sk_X509_new_null();
    int rc = -1;
    for (int i = 0; i < n; i++) {
        const unsigned char *p = der[i];
        X509 *x = d2i_X509(NULL, &p, der_len[i]);
        if (!x) {
            snprintf(err, errlen, "TLS: certificate %d does not parse", i);
            goto out;
        }
        sk_X509_push(chain, x);
    }
    rc = check_pin_chain(chain, host, pin_hex, err, errlen);
out:
    sk_X509_pop_free(chain, X509_free);
    return rc;
}
