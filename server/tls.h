/* tls.h - the broker's TLS context (OpenSSL libssl): loading, reloading, new sessions.
 *
 * The connection I/O over TLS is conn.c's (SSL_read/SSL_write on the raw socket, as
 * plain connections read()/send(): the same buffers, limits and backpressure). This
 * file only owns the SSL_CTX: certificate, key, optional client CA, and the rules
 * (TLS 1.2 and 1.3 only, no renegotiation, OpenSSL's default ciphers).
 */
#ifndef MPB_TLS_H
#define MPB_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>

/* Where the TLS context comes from (main.c fills it from --tls-cert/--tls-key/--tls-ca). */
typedef struct mpb_tls_config {
    const char *listen[8]; /* "tls://HOST:PORT" */
    int nlisten;
    const char *cert, *key; /* PEM files: the certificate (chain) and its private key */
    const char *ca;         /* PEM CA file: clients must present a certificate it signed */
} mpb_tls_config;

extern mpb_tls_config g_tls;

/* Build the context from g_tls. 0, or -1 after printing why on stderr. */
int tls_setup(void);
/* SIGHUP: build a new context from the same files and use it for new connections;
 * connections open keep theirs (each SSL holds a reference to its context). On a
 * failure the old context stays, and the reason is printed. 0 or -1. */
int tls_reload(void);
/* A server-side session for an accepted socket, or NULL (out of memory). Owned by the
 * caller (SSL_free). */
SSL *tls_new_session(int fd);
/* The last OpenSSL error of this thread as one line into buf (size n), queue cleared;
 * "fallback" when OpenSSL queued none. Returns buf. */
const char *tls_error(char *buf, size_t n, const char *fallback);
/* Free the context (at exit). */
void tls_shutdown(void);

#endif
