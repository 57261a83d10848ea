/* internal.h - what helpers.c tells client.c, not part of the public API. */
#ifndef MPB_CLIENT_INTERNAL_H
#define MPB_CLIENT_INTERNAL_H

#include "mpbroker.h"

/* Remember that name was opened as typeid (its reference ref), to re-open it after a
 * reconnect. */
void mpb_client_note_open(mpb_context *c, const char *typeid, const char *name, mpb_ref ref);

/* Counts the connections this context opened after its first (reconnects, and a
 * forked child's own): what a broker said about positions (cursors) holds only while
 * it stays the same. */
unsigned long mpb_client_conn_gen(const mpb_context *c);

#endif
