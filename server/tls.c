/* tls.c - the broker's TLS context: see tls.h. */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include "tls.h"

mpb_tls_config g_tls;
static SSL_CTX *ctx; /* the context new connections get; NULL without TLS */

const char *tls_error(char *buf, size_t n, const char *fallback)
{
    unsigned long e = ERR_get_error();
    unsigned long last = e;
    while (e != 0) { /* the last queued is the nearest to the cause reported */
        last = e;
        e = ERR_get_error();
    }
    if (last == 0) snprintf(buf, n, "%s", fallback);
    else ERR_error_string_n(last, buf, n);
    return buf;
}

/* A new context from g_tls's files, or NULL after printing why (prefixed by what). */
static SSL_CTX *build(const char *what)
{
    char err[256];
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c) {
        fprintf(stderr, "mpbroker-server: %s: %s\n", what, tls_error(err, sizeof err, "SSL_CTX_new"));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    /* No renegotiation (TLS 1.2's is a DoS lever and an old source of bugs); no
     * compression. Ciphers: OpenSSL's defaults. A peer that closes without a
     * close_notify is an EOF like a plain one (a killed client is common; a
     * truncation attack cannot cut a msgpack-rpc message into another valid one). */
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* conn.c writes from a buffer that may move (realloc) between a partial
     * SSL_write and its retry, and takes partial writes as send() does. */
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_num_tickets(c, 0); /* no resumption: nothing would use the tickets */
    const char *step = "";
    if (SSL_CTX_use_certificate_chain_file(c, g_tls.cert) != 1) step = "--tls-cert";
    else if (SSL_CTX_use_PrivateKey_file(c, g_tls.key, SSL_FILETYPE_PEM) != 1) step = "--tls-key";
    else if (SSL_CTX_check_private_key(c) != 1) step = "--tls-key does not match --tls-cert:";
    else if (g_tls.ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(g_tls.ca);
        if (SSL_CTX_load_verify_locations(c, g_tls.ca, NULL) != 1 || !names) {
            step = "--tls-ca";
            sk_X509_NAME_pop_free(names, X509_NAME_free);
        } else {
            SSL_CTX_set_client_CA_list(c, names); /* takes names */
            SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        }
    }
    if (step[0]) {
        const char *file = !strcmp(step, "--tls-ca") ? g_tls.ca
                           : !strcmp(step, "--tls-cert") ? g_tls.cert : g_tls.key;
        fprintf(stderr, "mpbroker-server: %s: %s %s: %s\n", what, step, file,
                tls_error(err, sizeof err, "cannot load"));
        SSL_CTX_free(c);
        return NULL;
    }
    return c;
}

int tls_setup(void)
{
    if (g_tls.nlisten == 0) return 0;
    if (!g_tls.cert || !g_tls.key) {
        fprintf(stderr, "mpbroker-server: --tls-listen needs --tls-cert and --tls-key\n");
        return -1;
    }
    ctx = build("TLS");
    return ctx ? 0 : -1;
}

int tls_reload(void)
{
    if (!ctx) return 0;
    SSL_CTX *c = build("SIGHUP: TLS reload failed, keeping the old certificate");
    if (!c) return -1;
    SSL_CTX_free(ctx); /* sessions open keep their own reference */
    ctx = c;
    return 0;
}

SSL *tls_new_session(int fd)
{
    SSL *s = ctx ? SSL_new(ctx) : NULL;
    if (!s) return NULL;
    if (SSL_set_fd(s, fd) != 1) {
        SSL_free(s);
        return NULL;
    }
    SSL_set_accept_state(s);
    return s;
}

void tls_shutdown(void)
{
    SSL_CTX_free(ctx);
    ctx = NULL;
}
