/* type_condition.c - Condition over a Lock or RLock object.
 *
 * condition.wait releases the lock completely (remembering an rlock's depth), parks
 * on the condition, and once notified (or timed out) queues for the lock again; the
 * reply comes when the lock is re-acquired, with true if notified and false on
 * timeout, as Python's wait returns. The timeout covers only the wait for notify.
 * The lock is its own object: created with the condition when none is given, and
 * kept alive by the condition's reference to it.
 */
#include <stdlib.h>

#include "mpb_codec.h"
#include "persist.h"
#include "sync.h"

typedef struct condstate {
    mpb_object *lock;
    mpb_ref lock_id;   /* for destroy: at exit the lock may be freed first */
    mpb_waitq waiters; /* waiting for notify */
} condstate;

#define COND(o) ((condstate *)(o)->u.ptr)

static int cond_init(mpb_object *o)
{
    o->u.ptr = calloc(1, sizeof(condstate));
    return o->u.ptr ? 0 : -1;
}

static void cond_destroy(mpb_object *o)
{
    condstate *c = COND(o);
    if (c->lock) {
        mpb_value ref = mpb_refv(c->lock_id);
        objects_release_value(&ref);
    }
    free(c);
    o->u.ptr = NULL;
}

static size_t cond_length(const mpb_object *o) { return COND(o)->waiters.len; }
static size_t cond_memsize(const mpb_object *o) { (void)o; return sizeof(condstate); }

const mpb_type_ops mpb_condition_ops = {cond_init, cond_destroy, cond_length, cond_memsize, NULL};

bool cond_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    mpb_object *lk;
    if (has_initial(r, i)) {
        mpb_ref ref;
        if (!mpb_object_is_ref(&r->args[i], &ref) || !(lk = objects_get(ref)) ||
            lk->type != MPB_OT_LOCK) {
            reply_error(r, MPB_E_TYPE, "%s: a condition's initial value must be a lock or rlock reference", r->info->name);
            return false;
        }
    } else if (!(lk = objects_create(MPB_OT_LOCK, 1, NULL, 0))) { /* an rlock, as Python */
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        return false;
    } else {
        objects_charge_state(lk); /* as manager.create does for a lock (a fresh load too) */
    }
    mpb_value ref = mpb_refv(lk->id);
    objects_retain_value(&ref); /* the condition contains its lock */
    COND(o)->lock = lk;
    COND(o)->lock_id = lk->id;
    return true;
}

/* condition.acquire REF [BLOCKING [TIMEOUT]] */
void cond_acquire(mpb_req *r) { lock_acquire_req(r, COND(r->self)->lock, r->self); }

/* condition.release REF */
void cond_release(mpb_req *r) { lock_release_req(r, COND(r->self)->lock); }

/* Notified or timed out: go for the lock (the reply comes when it is ours). */
static void requeue_for_lock(mpb_waiter *w, bool notified)
{
    wait_unlink(w);
    w->flag = notified;
    lock_grant_or_queue(COND(w->obj)->lock, w);
}

static void on_wait_timeout(mpb_waiter *w) { requeue_for_lock(w, false); }

/* condition.wait REF [TIMEOUT] */
void cond_wait(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 0, &timeout)) return;
    condstate *c = COND(r->self);
    if (!lock_owned_by(c->lock, r->conn)) {
        reply_error(r, MPB_E_RUNTIME, "cannot wait on un-acquired lock");
        return;
    }
    mpb_waiter *w = wait_park(r, r->self, &c->waiters, timeout, on_wait_timeout);
    if (!w) return;
    lock_release_levels(c->lock, r->conn, true, &w->n);
    if (timeout == 0) requeue_for_lock(w, false);
}

static void notify(mpb_req *r, int64_t n)
{
    condstate *c = COND(r->self);
    if (!lock_owned_by(c->lock, r->conn)) {
        reply_error(r, MPB_E_RUNTIME, "cannot notify on un-acquired lock");
        return;
    }
    reply_nil(r);
    /* The notifier holds the lock: the woken queue for it behind anyone waiting. */
    for (; n > 0 && c->waiters.head; n--) requeue_for_lock(c->waiters.head, true);
}

/* condition.notify REF [N] */
void cond_notify(mpb_req *r)
{
    int64_t n;
    if (arg_int_opt(r, 0, 1, NULL, &n)) notify(r, n);
}

/* condition.notify_all REF */
void cond_notify_all(mpb_req *r) { notify(r, INT64_MAX); }

/* condition.lock REF */
void cond_lock(mpb_req *r) { reply_ref(r, COND(r->self)->lock->id); }

void cond_dump(const mpb_object *o, msgpack_packer *pk) { mpb_ref_pack(pk, COND(o)->lock->id); }
