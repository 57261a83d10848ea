/* auth.h - the authkey handshake on the broker side, and loading the key.
 *
 * With a key (--authkey-file, $MPBROKER_AUTHKEY_FILE or $MPBROKER_AUTHKEY) a new
 * connection may call only auth.challenge and auth.response until it has proved that
 * it knows the key, and the broker proves the same to it (docs/PROTOCOL.md,
 * "Authentication"). Anything else first is AuthError, and the connection closes.
 * Without a key every connection starts authenticated.
 */
#ifndef MPB_AUTH_H
#define MPB_AUTH_H

#include <stdbool.h>

#include "server.h"

/* Requests larger than this are TooLarge until the handshake is done: a client
 * without the key cannot make the broker buffer megabytes. */
#define AUTH_MAX_MSG 1024

/* Read the key into g_config.authkey: from `file` when not NULL, else from the file
 * named by $MPBROKER_AUTHKEY_FILE, else $MPBROKER_AUTHKEY itself; none of them: no
 * key. A file must not be readable or writable by group or others; one trailing
 * newline is not part of the key. Prints why and returns -1 when the key is unusable. */
int auth_load_key(const char *file);
/* Free the key (at exit). */
void auth_unload_key(void);
/* A new connection: authenticated at once when there is no key. */
void auth_conn_new(mpb_conn *c);
/* The connection is going: forget its handshake state. */
void auth_conn_free(mpb_conn *c);
/* An unauthenticated connection called method id (-1: unknown). true when that is a
 * handshake method; otherwise replies AuthError (not to a notification), marks the
 * connection closing and returns false. */
bool auth_gate(mpb_req *r, int id);

#endif
