/* TLS for the relay listener (OpenSSL). certmode=manual reads certdir/<hostname>.crt
 * and .key and picks up replaced files without a restart; a bare-IP relay gets a
 * self-signed certificate with an IP SAN, which clients pin with the DERP map's
 * CertName "sha256-raw:<hex>" (PROTOCOL.md 5.5, derper's cmd/derper/cert.go). */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define RELOAD_CHECK_MS 5000
#define SELF_SIGNED_DAYS 365
#define RENEW_BEFORE_DAYS 30

struct tls_state {
    SSL_CTX *ctx;
    char *crt_path, *key_path;
    bool hostname_is_ip;
    struct stat crt_st, key_st;
    struct hw_timer *reload;
};

static void log_ssl_errors(const char *what)
{
    unsigned long e;
    char buf[256];
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof buf);
        log_error("%s: %s", what, buf);
    }
}

static bool is_ip(const char *s)
{
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* derper strips everything but [a-zA-Z0-9-.] from the hostname for file names. */
static char *safe_name(const char *host)
{
    char *out = hw_strdup(host);
    size_t j = 0;
    for (size_t i = 0; host[i]; i++) {
        char ch = host[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.')
            out[j++] = ch;
    }
    out[j] = '\0';
    return out;
}

static int add_ext(X509 *cert, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* P-256 key, 128-bit random serial, CN and SAN = the IP, one year: what derper makes. */
static int create_self_signed(const char *ip, const char *crt_path, const char *key_path)
{
    int rc = -1;
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    BIGNUM *serial = BN_new();
    if (!pkey || !cert || !serial)
        goto out;
    if (!BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)))
        goto out;
    X509_set_version(cert, 2);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), (long)SELF_SIGNED_DAYS * 86400);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)ip, -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, pkey);
    char *san = hw_sprintf("IP:%s", ip);
    int ext_rc = add_ext(cert, NID_subject_alt_name, san);
    free(san);
    if (ext_rc < 0 || add_ext(cert, NID_key_usage, "critical,digitalSignature,keyEncipherment") < 0 ||
        add_ext(cert, NID_ext_key_usage, "serverAuth") < 0 ||
        add_ext(cert, NID_basic_constraints, "critical,CA:FALSE") < 0)
        goto out;
    if (!X509_sign(cert, pkey, EVP_sha256()))
        goto out;
    char *dir = hw_dirname(crt_path);
    hw_mkdir_p(dir, 0700);
    free(dir);
    /* The key first, created 0600 before anything is written into it. */
    BIO *kb = BIO_new(BIO_s_mem());
    BIO *cb = BIO_new(BIO_s_mem());
    if (!kb || !cb || !PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) ||
        !PEM_write_bio_X509(cb, cert)) {
        BIO_free(kb);
        BIO_free(cb);
        goto out;
    }
    char *kdata, *cdata;
    long klen = BIO_get_mem_data(kb, &kdata), clen = BIO_get_mem_data(cb, &cdata);
    int w1 = hw_write_file_atomic(key_path, kdata, (size_t)klen, 0600);
    int w2 = w1 == 0 ? hw_write_file_atomic(crt_path, cdata, (size_t)clen, 0644) : -1;
    BIO_free(kb);
    BIO_free(cb);
    if (w1 < 0 || w2 < 0) {
        log_error("hwrelay: cannot write %s / %s: %s", crt_path, key_path, strerror(errno));
        goto out;
    }
    log_info("hwrelay: created a self-signed certificate for %s in %s", ip, crt_path);
    rc = 0;
out:
    if (rc < 0)
        log_ssl_errors("hwrelay: self-signed certificate");
    BN_free(serial);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    return rc;
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

/* The self-signed certificate is reissued when missing, for another IP, or close to
 * expiry (clients refuse an expired pinned certificate too). */
static bool self_signed_usable(const char *crt_path, const char *ip)
{
    X509 *x = read_cert(crt_path);
    if (!x)
        return false;
    bool ok = X509_check_ip_asc(x, ip, 0) == 1;
    time_t soon = time(NULL) + (time_t)RENEW_BEFORE_DAYS * 86400;
    if (ok && X509_cmp_time(X509_get0_notAfter(x), &soon) <= 0)
        ok = false;
    X509_free(x);
    return ok;
}

static int sni_check(SSL *ssl, int *alert, void *arg)
{
    struct relay *r = arg;
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    /* Like derper: a DNS-named relay only serves its own name; an IP relay anything. */
    if (r->tls->hostname_is_ip)
        return SSL_TLSEXT_ERR_OK;
    if (!sni || strcasecmp(sni, r->cfg.hostname) != 0) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof ours, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *load_ctx(struct relay *r, const char *crt, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, crt) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        log_ssl_errors("hwrelay: loading certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    int match = r->tls->hostname_is_ip ? X509_check_ip_asc(leaf, r->cfg.hostname, 0)
                                       : X509_check_host(leaf, r->cfg.hostname, 0, 0, NULL);
    if (match != 1) {
        log_error("hwrelay: %s is not valid for hostname %s", crt, r->cfg.hostname);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_check);
    SSL_CTX_set_tlsext_servername_arg(ctx, r);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, r);
    return ctx;
}

static void print_derp_map_entry(struct relay *r, SSL_CTX *ctx)
{
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    unsigned char *der = NULL;
    int len = i2d_X509(leaf, &der);
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (len <= 0 || !EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha256(), NULL)) {
        OPENSSL_free(der);
        return;
    }
    OPENSSL_free(der);
    char hex[65];
    hw_hex_encode(md, 32, hex);
    char host[256];
    int port = 443;
    relay_split_hostport(r->cfg.addr, host, sizeof host, &port);
    json_t *node = json_object();
    json_object_set_new(node, "Name", json_string("custom"));
    json_object_set_new(node, "RegionID", json_integer(900));
    json_object_set_new(node, "HostName", json_string(r->cfg.hostname));
    char *cn = hw_sprintf("sha256-raw:%s", hex);
    json_object_set_new(node, "CertName", json_string(cn));
    free(cn);
    if (r->cfg.stun && r->cfg.stun_port != 3478)
        json_object_set_new(node, "STUNPort", json_integer(r->cfg.stun_port));
    if (!r->cfg.stun)
        json_object_set_new(node, "STUNPort", json_integer(-1));
    if (port != 443)
        json_object_set_new(node, "DERPPort", json_integer(port));
    char *text = json_dumps(node, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(node);
    log_info("hwrelay: self-signed certificate for IP %s; put this node in the DERP map:", r->cfg.hostname);
    /* On stdout too, alone on its line, so a script can take it. */
    printf("%s\n", text);
    fflush(stdout);
    log_info("  %s", text);
    free(text);
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void on_reload_check(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    struct relay *r = arg;
    struct tls_state *ts = r->tls;
    ts->reload = hw_timer_start(loop, RELOAD_CHECK_MS, on_reload_check, r);
    struct stat cs, ks;
    if (stat(ts->crt_path, &cs) < 0 || stat(ts->key_path, &ks) < 0)
        return;
    if (same_file(&cs, &ts->crt_st) && same_file(&ks, &ts->key_st))
        return;
    if (r->cfg.certmode == CERTMODE_IPSELF && !self_signed_usable(ts->crt_path, r->cfg.hostname))
        return;
    /* Connections keep the context they started with; new ones get the new one. */
    SSL_CTX *ctx = load_ctx(r, ts->crt_path, ts->key_path);
    if (!ctx) {
        log_warn("hwrelay: %s changed but does not load; keeping the previous certificate", ts->crt_path);
        ts->crt_st = cs;
        ts->key_st = ks;
        return;
    }
    SSL_CTX_free(ts->ctx);
    ts->ctx = ctx;
    ts->crt_st = cs;
    ts->key_st = ks;
    log_info("hwrelay: reloaded certificate %s", ts->crt_path);
    if (ts->hostname_is_ip)
        print_derp_map_entry(r, ctx);
}

int tls_init(struct relay *r)
{
    if (r->cfg.certmode == CERTMODE_HTTP)
        return 0;
    struct tls_state *ts = hw_calloc(1, sizeof *ts);
    r->tls = ts;
    ts->hostname_is_ip = is_ip(r->cfg.hostname);
    char *name = safe_name(r->cfg.hostname);
    ts->crt_path = hw_sprintf("%s/%s.crt", r->cfg.certdir, name);
    ts->key_path = hw_sprintf("%s/%s.key", r->cfg.certdir, name);
    free(name);
    if (r->cfg.certmode == CERTMODE_IPSELF && !ts->hostname_is_ip) {
        log_error("hwrelay: -certmode=ipself needs -hostname to be the relay's IP address, not %s",
                  r->cfg.hostname);
        return -1;
    }
    bool missing = access(ts->crt_path, F_OK) != 0 && access(ts->key_path, F_OK) != 0;
    bool make = (r->cfg.certmode == CERTMODE_MANUAL && ts->hostname_is_ip && missing) ||
                (r->cfg.certmode == CERTMODE_IPSELF && !self_signed_usable(ts->crt_path, r->cfg.hostname));
    if (make && create_self_signed(r->cfg.hostname, ts->crt_path, ts->key_path) < 0)
        return -1;
    ts->ctx = load_ctx(r, ts->crt_path, ts->key_path);
    if (!ts->ctx) {
        log_error("hwrelay: no usable certificate for %s (want %s and %s)", r->cfg.hostname, ts->crt_path,
                  ts->key_path);
        return -1;
    }
    stat(ts->crt_path, &ts->crt_st);
    stat(ts->key_path, &ts->key_st);
    if (ts->hostname_is_ip)
        print_derp_map_entry(r, ts->ctx);
    ts->reload = hw_timer_start(r->loop, RELOAD_CHECK_MS, on_reload_check, r);
    return 0;
}

SSL *tls_new_ssl(struct relay *r)
{
    SSL *ssl = SSL_new(r->tls->ctx);
    if (!ssl)
        log_ssl_errors("hwrelay: SSL_new");
    return ssl;
}

void tls_free(struct relay *r)
{
    struct tls_state *ts = r->tls;
    if (!ts)
        return;
    if (ts->reload)
        hw_timer_cancel(r->loop, ts->reload);
    SSL_CTX_free(ts->ctx);
    free(ts->crt_path);
    free(ts->key_path);
    free(ts);
    r->tls = NULL;
}
