/* tls.h - libmpbroker's TLS (tls://HOST:PORT addresses): the handshake and errors.
 * Reads and writes over the session are client.c's (mpb_client_recv/_send). */
#ifndef MPB_CLIENT_TLS_H
#define MPB_CLIENT_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

/* Run a TLS client handshake on the connected socket fd with the broker at host (the
 * name or address of the tls:// address: checked against its certificate unless
 * MPB_TLS_NO_VERIFY_NAME), with the CA, certificate and key of mpb_set_tls or the
 * $MPBROKER_TLS_* variables. Leaves fd non-blocking. Returns the session (owned by
 * the caller: SSL_free), or NULL with why in err[0, n). */
SSL *mpb_tls_handshake(int fd, const char *host, char *err, size_t n);
/* The last OpenSSL error of this thread as text into buf (queue cleared), else
 * fallback. Returns buf. */
const char *mpb_tls_error(char *buf, size_t n, const char *fallback);

#endif
