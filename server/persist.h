/* persist.h - durable state: an append-only log of state changes, compacted into a
 * snapshot (see persist.c for the file formats and docs/PROTOCOL.md for guarantees).
 *
 * Off unless --data-dir is given. What is logged is each write's lasting effect, as a
 * call that replays without waiting: dispatch logs writes that took effect at once;
 * the types log effects that happen later (a parked put admitted, a parked get
 * served, a semaphore unit granted or returned by a dead connection, a barrier broken
 * by a timeout). Holds and lock ownership are not persisted: after a restart no
 * connection holds or owns anything.
 */
#ifndef MPB_PERSIST_H
#define MPB_PERSIST_H

#include <msgpack.h>
#include <stdbool.h>

#include "server.h"

typedef enum { MPB_FSYNC_ALWAYS, MPB_FSYNC_EVERYSEC, MPB_FSYNC_NO } mpb_fsync_policy;

#define PERSIST_DEFAULT_COMPACT_MIN (64u << 20) /* --compact-size */

typedef struct mpb_persist_config {
    const char *dir;           /* NULL: persistence off */
    mpb_fsync_policy fsync;
    size_t compact_min;        /* compact when the log passes this and twice the snapshot */
    bool repair;               /* --repair: cut a damaged log, then exit */
} mpb_persist_config;

extern mpb_persist_config g_persist;

/* Load the snapshot and log from g_persist.dir (creating it), then open the log for
 * appending. Exits the process with a message when the data cannot be trusted
 * (persist_load.h) or the directory is unusable. */
void persist_open(struct event_base *base);
static inline bool persist_enabled(void) { return g_persist.dir != NULL; }
/* Log a call: method with its params as received (params an array). */
void persist_log_call(const char *method, const msgpack_object *params);
/* Log a call built from values (a synthetic effect: "queue.get_nowait" [ref]). Inside
 * persist_call_begin/end the effect is logged after the call being served, whatever
 * the order they happen in: a put that serves a parked get replays as the put, then
 * the get. */
void persist_log_effect(const char *method, const mpb_value *args, size_t n);
/* A NOLOG write bumped o's version (lock.acquire): record the version, without making
 * anyone wait for it (written with the next write or tick), so that a restart goes on
 * from it. */
void persist_log_version(const mpb_object *o);
/* An atomic batch (batch.c): between begin and end the calls logged are collected;
 * end(true) logs them as one ["batch", [[METHOD, PARAMS]...]] record, end(false)
 * drops them. */
void persist_batch_begin(void);
void persist_batch_end(bool commit);
/* Around one request's handler and its persist_log_call (dispatch_run). */
void persist_call_begin(void);
void persist_call_end(void);
/* Log that an object was created (manager.create/open): its id, typeid, name and
 * the INITIAL argument (NULL for none). */
void persist_log_create(const mpb_object *o, const msgpack_object *initial);
/* Write what was logged to the file (and fsync under --fsync always). Called before
 * any reply is sent, so an acknowledged write is in the log. false when that failed,
 * now or before: the broker is read-only, and replies that were waiting are held
 * (conn_hold_unsent) until the state is stored again (conn_release_held). */
bool persist_sync(void);
static inline bool persist_pending(void);
/* Final sync and fsync at exit; false (after saying so) when writes were not stored. */
bool persist_close(void);

/*--- Read-only mode (a failed write or fsync, a removed directory) ---*/
bool persist_failed(void);
/* "off", "ok" or "read-only" (manager.stats). */
const char *persist_state(void);
/* What failed, or NULL. */
const char *persist_failure(void);
/* How many times the broker turned read-only since it started. */
uint64_t persist_failures(void);
/* While read-only: answer a logged write with PersistenceError and return true. */
bool persist_refuses(mpb_req *r);
/* The same for a request about to create an object (manager.create/open). */
bool persist_refuses_create(mpb_req *r);
/* While read-only: try to store the state now (at shutdown, so held replies can go). */
void persist_try_recover(void);
/* Is c the connection that replays the log at start-up? */
bool persist_is_replay(const mpb_conn *c);

/* Per type: pack the full INITIAL form that rebuilds o's state (what a snapshot
 * stores). In the type files. */
void list_dump(const mpb_object *o, msgpack_packer *pk);
void dict_dump(const mpb_object *o, msgpack_packer *pk);
void queue_dump(const mpb_object *o, msgpack_packer *pk);
void sem_dump(const mpb_object *o, msgpack_packer *pk);
void cond_dump(const mpb_object *o, msgpack_packer *pk);
void event_dump(const mpb_object *o, msgpack_packer *pk);
void barrier_dump(const mpb_object *o, msgpack_packer *pk);
void value_dump(const mpb_object *o, msgpack_packer *pk);
void array_dump(const mpb_object *o, msgpack_packer *pk);
void set_dump(const mpb_object *o, msgpack_packer *pk);
/* Pack o's INITIAL form (the fill record of a snapshot; nil for a lock). */
void persist_dump_state(const mpb_object *o, msgpack_packer *pk);
void pipe_dump(const mpb_object *o, msgpack_packer *pk);
void channel_dump(const mpb_object *o, msgpack_packer *pk);
/* A queue's items as ["call", "queue.put_nowait", [REF, ITEM]] records; returns how
 * many (they go after the fills: an item may refer to any object). */
size_t queue_dump_items(const mpb_object *o, msgpack_packer *pk);

extern size_t g_persist_buffered;
static inline bool persist_pending(void) { return g_persist_buffered > 0; }

#endif
