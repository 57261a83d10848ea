/* auth.h - the authkey handshake on the broker side, and loading the key.
 *
 * With a key (--authkey-file, $MPBROKER_AUTHKEY_FILE or $MPBROKER_AUTHKEY) a new
 * connection may call only auth.challenge and auth.response until it has proved that
 * it knows the key; then the broker proves the same to it (docs/PROTOCOL.md,
 * "Authentication"). Anything else first gets one error, and the connection closes.
 * Without a key every connection starts authenticated.
 */
#ifndef MPB_AUTH_H
#define MPB_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "server.h"

/* Until the handshake is done a request larger than this is TooLarge, and conn.c
 * reads no further ahead: a client without the key cannot make the broker buffer
 * more. */
#define AUTH_MAX_MSG 1024

/* Read the key into g_config.authkey: from `file` when not NULL, else from the file
 * named by $MPBROKER_AUTHKEY_FILE, else $MPBROKER_AUTHKEY itself; none of them: no
 * key. A file must not be readable or writable by group or others; one trailing
 * newline is not part of the key. Prints why and returns -1 when the key is unusable. */
int auth_load_key(const char *file);
/* Free the key (at exit). */
void auth_unload_key(void);
/* Admission of an accepted socket while connections are authenticating (limits.c
 * decides with these): when its peer (uid on a Unix socket, but for the broker's own
 * and root; IP address over TCP) already has --max-handshakes-per-peer connections
 * authenticating, auth_make_room_for_peer closes the oldest of them, telling it why,
 * and returns true with why written; auth_pending counts them all; auth_evict_oldest
 * closes the oldest of them, telling it why (false when there is none). Only from the
 * listener's callback. */
bool auth_make_room_for_peer(int fd, bool tcp, char *why, size_t n);
size_t auth_pending(void);
bool auth_evict_oldest(const char *why);
/* A new connection: authenticated at once when there is no key. */
void auth_conn_new(mpb_conn *c);
/* The connection is going: forget its handshake state. */
void auth_conn_free(mpb_conn *c);
/* A TLS connection in its TLS handshake is a stranger even on a keyless broker (with
 * --tls-ca its certificate is its proof): counted and evicted by the admission rules
 * above as one still authenticating, until auth_tls_done (after the TLS handshake:
 * then only the authkey handshake, if any, keeps it counted). Its deadline is conn.c's. */
void auth_tls_start(mpb_conn *c);
void auth_tls_done(mpb_conn *c);
/* A whole message from a connection that has not authenticated: served when it is a
 * well-formed auth.challenge or auth.response request; anything else (another method,
 * a bad shape, a notification, a failed step) gets at most one error reply and marks
 * the connection closing. */
void auth_serve(mpb_conn *c, const msgpack_object *msg);

#endif
