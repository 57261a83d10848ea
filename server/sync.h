/* sync.h - lock internals that Condition builds on (type_lock.c).
 *
 * A lock is owned by a connection (its id), recursively for an rlock. Ownership is
 * recorded in the connection's `owned` map so that a connection that dies gives its
 * locks back; a stale entry there is harmless (conn_gone checks the owner).
 */
#ifndef MPB_SYNC_H
#define MPB_SYNC_H

#include "wait.h"

/* The owner of a lock whose owner died with nobody waiting: locked, and any
 * connection may release or acquire it (no connection id is ever this). */
#define LOCK_ORPHANED (UINT64_MAX - 1)

typedef struct lockstate {
    uint64_t owner; /* connection id; 0 when free; LOCK_ORPHANED */
    int64_t depth;  /* recursion depth (1 for a plain lock) */
    mpb_waitq waiters;
} lockstate;

#define LOCK(o) ((lockstate *)(o)->u.ptr)

/* Take the lock for c if it is free (or c owns this rlock). */
bool lock_try(mpb_object *lk, mpb_conn *c, int64_t depth);
/* Does c own it? */
static inline bool lock_owned_by(const mpb_object *lk, const mpb_conn *c)
{
    return LOCK(lk)->owner == c->id;
}
/* Release one level (all levels when `all`; the depth released goes to *depth).
 * The caller checked ownership. Hands the lock on to the next waiter when free. */
void lock_release_levels(mpb_object *lk, mpb_conn *c, bool all, int64_t *depth);
/* Give the lock to waiter w (with w->n levels) when free, else queue w for it. A
 * waiter granted the lock is answered: true for an acquire, w->flag for a
 * condition.wait. */
void lock_grant_or_queue(mpb_object *lk, mpb_waiter *w);

/* The request-level acquire and release, shared by lock.* and condition.*: pin is
 * the object the request is about (the lock, or the condition). */
void lock_acquire_req(mpb_req *r, mpb_object *lk, mpb_object *pin);
void lock_release_req(mpb_req *r, mpb_object *lk);

#endif
