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

/* A Unix socket address, "PATH" or "PATH?peer=WHO" (the caller has taken any
 * "unix:" off): the path into path (size n, with room for sun_path), WHO into peer
 * (size pn; "" when absent). MPB_OK, or an error set on c (ConnectionError). */
int mpb_client_unix_address(mpb_context *c, const char *address, char *path, size_t n,
                            char *peer, size_t pn);
/* Is the broker on the other end of the connected Unix socket fd one this process
 * may talk to? With peer "" it must run as our effective uid or as root; peer names
 * the one user to accept instead (a name or a number), "any" accepts anyone. MPB_OK,
 * or MPB_ERR_CONNECT with kind "AuthError" and why (the caller closes fd). */
int mpb_client_check_peer(mpb_context *c, int fd, const char *path, const char *peer);

#endif
