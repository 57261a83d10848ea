/* watch.h - versions, watches, wait_change and atomic batches (docs/PROTOCOL.md,
 * "Versions, watches and batches").
 *
 * Every object has a version that grows by one with each write to it. A write is
 * counted where it takes effect: dispatch_run for a call answered at once, the type's
 * logged effect (persist_log_effect) for a parked call served later or a change no
 * call made (a dead holder's semaphore unit), wait_done for a parked call whose effect
 * is not logged (a lock granted). Replay of the log goes through the same paths, so a
 * restart finds the versions it left.
 *
 * Notifications and wait_change answers are not sent at the bump but at the end of
 * the request (watch_flush): a batch that fails takes its bumps back and nobody has
 * heard of them, and effects a call caused are numbered after the call itself.
 */
#ifndef MPB_WATCH_H
#define MPB_WATCH_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "server.h"

/* o was written by method with params args[0..nargs) (after the reference): bump its
 * version, and queue the "changed" notification for its watchers. */
void watch_bump(mpb_object *o, const char *method, const msgpack_object *args, uint32_t nargs);
/* A logged effect (persist_log_effect): args[0] is the object's reference. Inside a
 * request it is bumped after the request's own write (watch_call_end). */
void watch_effect(const char *method, const mpb_value *args, size_t n);
/* Around one request (dispatch_run): at the outermost end, effects are bumped and
 * every queued notification and wait_change answer goes out. */
void watch_call_begin(void);
void watch_call_end(void);
/* A connection closes: its watches end. */
void watch_conn_closed(mpb_conn *c);
/* An object is being freed: its watches end (object_destroy). */
void watch_object_freed(mpb_object *o);
/* Parked wait_change requests on o (they pin it, but a batch may write it). */
size_t watch_change_waiters(const mpb_object *o);

/* Unsent output past which a watcher's notifications are dropped (then one
 * "overflow" per object). Never more than half of --max-output. */
#define WATCH_MAX_BACKLOG ((size_t)1 << 20)

#endif
