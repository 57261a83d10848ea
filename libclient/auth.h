/* auth.h - the client side of the authkey handshake (libclient/auth.c), for client.c.
 * Not part of the public API: mpbroker.h has mpb_connect_with_key. */
#ifndef MPB_CLIENT_AUTH_H
#define MPB_CLIENT_AUTH_H

#include <stddef.h>

#include "mpbroker.h"

/* The key a new context uses: a copy of key[0, len) when key is not NULL, else the
 * contents of the file $MPBROKER_AUTHKEY_FILE (one trailing newline dropped), else
 * $MPBROKER_AUTHKEY, else none (*out NULL). *out is malloc'ed: free it with
 * mpb_client_key_free. MPB_OK, or an error set on c (kind "AuthError"). */
int mpb_client_key(mpb_context *c, const void *key, size_t len, unsigned char **out,
                   size_t *outlen);
/* Wipe and free a key from mpb_client_key. */
void mpb_client_key_free(unsigned char *key, size_t len);
/* Run the handshake on the freshly connected c->fd, before any other request (it
 * reads and writes the socket itself, with a 10 s limit for each reply). MPB_OK, or
 * an error set on c: kind "AuthError" when either side failed to prove the key (the
 * broker's proof comes after ours and is checked before anything else is sent: a
 * broker that cannot prove the key is not trusted with anything), "ConnectionError"
 * for I/O. The caller closes on error. */
int mpb_client_handshake(mpb_context *c, const unsigned char *key, size_t len);

#endif
