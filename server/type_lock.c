/* type_lock.c - Lock and RLock, owned by connections, handed FIFO to waiters.
 *
 * Unlike Python's Lock, release by a connection that does not own it is an error,
 * and a lock never deadlocks a waiter because its owner died (Python's would): a dead
 * owner's lock goes to the next waiter at once, or, with nobody waiting, stays locked
 * with no owner (robust-mutex semantics): then any connection may release it or
 * acquire it. That keeps Python's own rule where its tests check it (a process locks
 * a Lock and exits, another releases it). A plain lock acquired again by its owner
 * with no timeout would wait forever (the owner is the one blocked), so that is a
 * RuntimeError instead.
 */
#include <stdlib.h>

#include "sync.h"

static int lock_init(mpb_object *o)
{
    o->u.ptr = calloc(1, sizeof(lockstate));
    return o->u.ptr ? 0 : -1;
}

static void lock_destroy(mpb_object *o)
{
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t lock_length(const mpb_object *o) { return LOCK(o)->owner ? 1 : 0; }
static size_t lock_memsize(const mpb_object *o) { (void)o; return sizeof(lockstate); }

/* Answer a waiter that just got the lock. */
static void answer_granted(mpb_waiter *w)
{
    wait_answer_bool(w, w->method == MPB_M_COND_WAIT ? w->flag : true);
}

/* Free lock: give it to the oldest waiter. */
static void handoff(mpb_object *lk)
{
    lockstate *l = LOCK(lk);
    mpb_waiter *w;
    while (l->owner == 0 && (w = waitq_pop(&l->waiters))) {
        if (lock_try(lk, w->conn, w->n > 0 ? w->n : 1)) {
            answer_granted(w);
            continue;
        }
        mpb_req r; /* the lock is free: only recording the owner can have failed */
        wait_req(w, &r);
        reply_error(&r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r.info->name);
        wait_done(w);
    }
}

static void lock_conn_gone(mpb_object *o, uint64_t conn_id, uintptr_t count)
{
    (void)count;
    lockstate *l = LOCK(o);
    if (l->owner != conn_id) return;
    l->owner = l->waiters.head ? 0 : LOCK_ORPHANED;
    l->depth = 0;
    handoff(o);
}

const mpb_type_ops mpb_lock_ops = {lock_init, lock_destroy, lock_length, lock_memsize,
                                   lock_conn_gone};

bool lock_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    (void)o;
    if (!has_initial(r, i)) return true;
    reply_error(r, MPB_E_TYPE, "%s: a lock takes no initial value", r->info->name);
    return false;
}

bool lock_try(mpb_object *lk, mpb_conn *c, int64_t depth)
{
    lockstate *l = LOCK(lk);
    if (l->owner == c->id && lk->variant == 1) {
        l->depth += depth;
        return true;
    }
    if (l->owner != 0 && l->owner != LOCK_ORPHANED) return false;
    if (objects_own(&c->owned, lk) < 0) return false;
    l->owner = c->id;
    l->depth = depth;
    return true;
}

void lock_release_levels(mpb_object *lk, mpb_conn *c, bool all, int64_t *depth)
{
    lockstate *l = LOCK(lk);
    int64_t n = all ? l->depth : 1;
    if (depth) *depth = n;
    l->depth -= n;
    if (l->depth > 0) return;
    l->owner = 0;
    objects_disown(&c->owned, lk);
    handoff(lk);
}

void lock_grant_or_queue(mpb_object *lk, mpb_waiter *w)
{
    lockstate *l = LOCK(lk);
    if ((l->owner == 0 || l->owner == LOCK_ORPHANED) && !l->waiters.head &&
        lock_try(lk, w->conn, w->n > 0 ? w->n : 1))
        answer_granted(w);
    else
        wait_enqueue(w, &l->waiters);
}

/* The acquire logic shared with condition.acquire: lk is the lock, r the request
 * (BLOCKING and TIMEOUT in r->args[0..1]), pin the object waited on. */
void lock_acquire_req(mpb_req *r, mpb_object *lk, mpb_object *pin)
{
    bool blocking;
    double timeout;
    if (!arg_bool_opt(r, 0, true, &blocking) || !arg_timeout(r, 1, &timeout)) return;
    if (!blocking && timeout >= 0) {
        reply_error(r, MPB_E_VALUE, "can't specify a timeout for a non-blocking call");
        return;
    }
    lockstate *l = LOCK(lk);
    /* FIFO: a free lock with waiters queued is being handed on; do not jump them. An
     * rlock's owner jumps nobody by going one level deeper: it enters at once, as
     * Python's RLock lets its owner in whoever else waits. */
    bool reenter = l->owner == r->conn->id && lk->variant == 1;
    if ((reenter || !l->waiters.head) && lock_try(lk, r->conn, 1)) {
        reply_bool(r, true);
        return;
    }
    if (!blocking || timeout == 0) {
        reply_bool(r, false);
        return;
    }
    if (l->owner == r->conn->id && timeout < 0) {
        reply_error(r, MPB_E_RUNTIME, "%s would deadlock: this connection already holds the lock",
                    r->info->name);
        return;
    }
    wait_park(r, pin, &l->waiters, timeout, wait_timeout_false);
}

/* Release shared with condition.release. */
void lock_release_req(mpb_req *r, mpb_object *lk)
{
    lockstate *l = LOCK(lk);
    if (l->owner == 0) {
        reply_error(r, MPB_E_RUNTIME, "release unlocked lock");
        return;
    }
    if (l->owner == LOCK_ORPHANED) { /* its owner died: anyone may release it */
        reply_nil(r);
        l->owner = 0;
        handoff(lk);
        return;
    }
    if (l->owner != r->conn->id) {
        reply_error(r, MPB_E_RUNTIME, "%s: cannot release a lock held by another connection", r->info->name);
        return;
    }
    reply_nil(r);
    lock_release_levels(lk, r->conn, false, NULL);
}

/* lock.acquire REF [BLOCKING [TIMEOUT]] */
void lock_acquire(mpb_req *r) { lock_acquire_req(r, r->self, r->self); }

/* lock.release REF */
void lock_release(mpb_req *r) { lock_release_req(r, r->self); }

/* lock.locked REF */
void lock_locked(mpb_req *r) { reply_bool(r, LOCK(r->self)->owner != 0); }
