/* tls.c - libmpbroker's TLS handshake: see tls.h and mpb_set_tls in mpbroker.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mpbroker.h"
#include "tls.h"

#define HANDSHAKE_TIMEOUT_MS 10000 /* as the authkey handshake's reply wait */

/* mpb_set_tls's settings; unset: the environment's. Owned copies. */
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;
static char *cfg_ca, *cfg_cert, *cfg_key;
static int cfg_flags;
static int cfg_set;

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int mpb_set_tls(const char *ca_file, const char *cert_file, const char *key_file, int flags)
{
    char *ca = dup_or_null(ca_file), *cert = dup_or_null(cert_file), *key = dup_or_null(key_file);
    if ((ca_file && !ca) || (cert_file && !cert) || (key_file && !key)) {
        free(ca);
        free(cert);
        free(key);
        return MPB_ERR_OOM;
    }
    pthread_mutex_lock(&cfg_lock);
    free(cfg_ca);
    free(cfg_cert);
    free(cfg_key);
    cfg_ca = ca;
    cfg_cert = cert;
    cfg_key = key;
    cfg_flags = flags;
    cfg_set = 1;
    pthread_mutex_unlock(&cfg_lock);
    return MPB_OK;
}

const char *mpb_tls_error(char *buf, size_t n, const char *fallback)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0) last = e;
    if (last == 0) snprintf(buf, n, "%s", fallback);
    else snprintf(buf, n, "%s", ERR_reason_error_string(last) ? ERR_reason_error_string(last)
                                                              : ERR_error_string(last, NULL));
    return buf;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

/* A context from the settings, or NULL with why in err. */
static SSL_CTX *make_ctx(int *flags, char *err, size_t n)
{
    char why[200];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, n, "TLS: %s", mpb_tls_error(why, sizeof why, "SSL_CTX_new failed"));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Writes are partial as send()'s are, and the output buffer may move between a
     * write that would block and its retry. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    pthread_mutex_lock(&cfg_lock);
    const char *ca = cfg_set ? cfg_ca : env("MPBROKER_TLS_CA");
    const char *cert = cfg_set ? cfg_cert : env("MPBROKER_TLS_CERT");
    const char *key = cfg_set ? cfg_key : env("MPBROKER_TLS_KEY");
    *flags = cfg_set ? cfg_flags : 0;
    /* Only "1" skips the name check: a "false" or "no" meant to keep it must not turn
     * it off; any value but 1 and 0 is refused rather than guessed at. */
    const char *skip = cfg_set ? NULL : env("MPBROKER_TLS_NO_VERIFY_NAME");
    bool bad_skip = skip && strcmp(skip, "1") != 0 && strcmp(skip, "0") != 0;
    if (skip && strcmp(skip, "1") == 0) *flags |= MPB_TLS_NO_VERIFY_NAME;
    if (cert && !key) key = cert; /* one PEM file holding both */
    const char *bad = NULL, *file = NULL;
    if (bad_skip)
        snprintf(err, n, "TLS: $MPBROKER_TLS_NO_VERIFY_NAME is '%.40s': 1 skips the check "
                 "that the broker's certificate names its host, 0 (or unset) keeps it", skip);
    else if (ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1
           : SSL_CTX_set_default_verify_paths(ctx) != 1)
        bad = "CA file", file = ca ? ca : "(system default)";
    else if (cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        bad = "certificate", file = cert;
    else if (cert && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        bad = "key", file = key;
    else if (cert && SSL_CTX_check_private_key(ctx) != 1)
        bad = "key (it does not match the certificate)", file = key;
    if (bad) snprintf(err, n, "TLS: cannot load the %s %s: %s", bad, file,
                      mpb_tls_error(why, sizeof why, "error"));
    pthread_mutex_unlock(&cfg_lock);
    if (bad || bad_skip) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Verify the broker's certificate names host (an IP address matches IP SANs). */
static int set_host(SSL *ssl, const char *host, int flags)
{
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!is_ip && SSL_set_tlsext_host_name(ssl, host) != 1) return -1; /* SNI */
    if (flags & MPB_TLS_NO_VERIFY_NAME) return 0;
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
                  : X509_VERIFY_PARAM_set1_host(param, host, 0)) == 1 ? 0 : -1;
}

/*--- The socket under the session ---
 * OpenSSL's socket BIO writes with write(): to a broker that closed or died that
 * raises SIGPIPE, whose default action kills the application, where the plain path
 * (send with MSG_NOSIGNAL) returns EPIPE. This BIO is the socket BIO with recv() and
 * send(MSG_NOSIGNAL); the fd is the caller's (BIO_NOCLOSE). */

static BIO_METHOD *sock_method;
static pthread_once_t sock_method_once = PTHREAD_ONCE_INIT;

static int sock_fd(BIO *b) { return (int)(intptr_t)BIO_get_data(b); }

static int sock_write(BIO *b, const char *buf, int len)
{
    errno = 0;
    int r = (int)send(sock_fd(b), buf, (size_t)len, MSG_NOSIGNAL);
    BIO_clear_retry_flags(b);
    if (r <= 0 && BIO_sock_should_retry(r)) BIO_set_retry_write(b);
    return r;
}

static int sock_read(BIO *b, char *buf, int len)
{
    errno = 0;
    int r = (int)recv(sock_fd(b), buf, (size_t)len, 0);
    BIO_clear_retry_flags(b);
    if (r <= 0 && BIO_sock_should_retry(r)) BIO_set_retry_read(b);
    else if (r == 0) BIO_set_flags(b, BIO_FLAGS_IN_EOF); /* BIO_eof: a clean EOF */
    return r;
}

static int sock_puts(BIO *b, const char *s) { return sock_write(b, s, (int)strlen(s)); }

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    switch (cmd) {
    case BIO_C_SET_FD:
        BIO_set_data(b, (void *)(intptr_t)*(int *)ptr);
        BIO_set_shutdown(b, (int)num);
        BIO_set_init(b, 1);
        return 1;
    case BIO_C_GET_FD:
        if (!BIO_get_init(b)) return -1;
        if (ptr) *(int *)ptr = sock_fd(b);
        return sock_fd(b);
    case BIO_CTRL_GET_CLOSE: return BIO_get_shutdown(b);
    case BIO_CTRL_SET_CLOSE: BIO_set_shutdown(b, (int)num); return 1;
    case BIO_CTRL_EOF: return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    case BIO_CTRL_DUP:
    case BIO_CTRL_FLUSH: return 1;
    default: return 0;
    }
}

static void sock_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK |
                                     BIO_TYPE_DESCRIPTOR, "mpbroker socket");
    if (m && BIO_meth_set_write(m, sock_write) == 1 && BIO_meth_set_read(m, sock_read) == 1 &&
        BIO_meth_set_puts(m, sock_puts) == 1 && BIO_meth_set_ctrl(m, sock_ctrl) == 1) {
        sock_method = m; /* kept for the process's life, as OpenSSL keeps its own */
        return;
    }
    BIO_meth_free(m);
}

/* ssl reads and writes fd through the BIO above. 1, or 0 (out of memory). */
static int set_socket(SSL *ssl, int fd)
{
    pthread_once(&sock_method_once, sock_method_init);
    BIO *b = sock_method ? BIO_new(sock_method) : NULL;
    if (!b) return 0;
    BIO_set_fd(b, fd, BIO_NOCLOSE);
    SSL_set_bio(ssl, b, b); /* takes b */
    return 1;
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

SSL *mpb_tls_handshake(int fd, const char *host, char *err, size_t n)
{
    int flags = 0;
    SSL_CTX *ctx = make_ctx(&flags, err, n);
    if (!ctx) return NULL;
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* ssl holds its own reference */
    char why[200];
    if (!ssl || set_socket(ssl, fd) != 1 || set_host(ssl, host, flags) < 0) {
        snprintf(err, n, "TLS: %s", mpb_tls_error(why, sizeof why, "setup failed"));
        SSL_free(ssl);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    long long deadline = now_ms() + HANDSHAKE_TIMEOUT_MS;
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(ssl);
        if (r == 1) return ssl;
        int e = SSL_get_error(ssl, r);
        long long left = deadline - now_ms();
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && left > 0) {
            struct pollfd pf = {.fd = fd, .events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
            if (poll(&pf, 1, (int)left) >= 0 || errno == EINTR) continue;
        }
        long v = SSL_get_verify_result(ssl);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            snprintf(err, n, "TLS handshake with %s: no answer in %d s", host,
                     HANDSHAKE_TIMEOUT_MS / 1000);
        else if (v != X509_V_OK)
            snprintf(err, n, "TLS handshake with %s: the broker's certificate: %s", host,
                     X509_verify_cert_error_string(v));
        else {
            /* Bytes that are no TLS record: the broker answered in plain msgpack-rpc,
             * being a plain port, or refusing the connection (--max-clients). */
            int reason = ERR_GET_REASON(ERR_peek_last_error());
            bool plain = reason == SSL_R_WRONG_VERSION_NUMBER ||
                         reason == SSL_R_PACKET_LENGTH_TOO_LONG;
            snprintf(err, n, "TLS handshake with %s: %s%s", host,
                     mpb_tls_error(why, sizeof why, e == SSL_ERROR_SYSCALL
                                   ? "the broker closed the connection (is it a TLS port?)"
                                   : "failed"),
                     plain ? " (the broker answered without TLS: not its TLS port, or it "
                             "refused the connection: --max-clients?)" : "");
        }
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
}
