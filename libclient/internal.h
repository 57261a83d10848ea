/* internal.h - what helpers.c tells client.c, not part of the public API. */
#ifndef MPB_CLIENT_INTERNAL_H
#define MPB_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <sys/types.h>

#include "mpbroker.h"

/* recv()/send() on c's connection, through its TLS session when it has one (then
 * EAGAIN also means the session waits for the socket, and EPROTO a TLS error that
 * mpb_client_strerror describes). */
ssize_t mpb_client_recv(mpb_context *c, void *buf, size_t n, int flags);
ssize_t mpb_client_send(mpb_context *c, const void *buf, size_t n, int flags);
/* Does the TLS session hold decrypted bytes not yet read? (poll() cannot tell.) */
bool mpb_client_buffered(const mpb_context *c);
/* strerror(e), or the TLS error behind an EPROTO. */
const char *mpb_client_strerror(const mpb_context *c, int e);

/* Remember that name was opened as typeid (its reference ref), to re-open it after a
 * reconnect. */
void mpb_client_note_open(mpb_context *c, const char *typeid, const char *name, mpb_ref ref);

/* Counts the connections this context opened after its first (reconnects, and a
 * forked child's own): what a broker said about positions (cursors) holds only while
 * it stays the same. */
unsigned long mpb_client_conn_gen(const mpb_context *c);

/* Notifications read and queued on c, not yet taken (async.c delivers them). */
bool mpb_client_notes_queued(const mpb_context *c);

#endif
