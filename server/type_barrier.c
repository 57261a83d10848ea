/* type_barrier.c - Barrier: parties wait until all have arrived, as Python's.
 *
 * wait returns the arrival index (0 for the first). A wait that times out breaks the
 * barrier: every waiter gets BrokenBarrierError, as do later waits until reset. A
 * waiter whose connection dies is simply withdrawn (arrival indexes of those after
 * it move down), so the barrier stays usable: another process can take its place.
 */
#include <stdlib.h>

#include "persist.h"
#include "wait.h"

typedef struct barstate {
    int64_t parties, count;
    double timeout; /* default for wait, < 0: none */
    bool broken;
    mpb_waitq waiters;
} barstate;

#define BAR(o) ((barstate *)(o)->u.ptr)

static int bar_init(mpb_object *o)
{
    barstate *b = calloc(1, sizeof *b);
    if (!b) return -1;
    b->parties = 1;
    b->timeout = -1;
    o->u.ptr = b;
    return 0;
}

static void bar_destroy(mpb_object *o)
{
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t bar_length(const mpb_object *o) { return (size_t)BAR(o)->count; }
static size_t bar_memsize(const mpb_object *o) { (void)o; return sizeof(barstate); }

const mpb_type_ops mpb_barrier_ops = {bar_init, bar_destroy, bar_length, bar_memsize, NULL};

/* INITIAL: PARTIES, or [PARTIES, TIMEOUT], or (a snapshot) [PARTIES, TIMEOUT, BROKEN]. */
bool barrier_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    barstate *b = BAR(o);
    const msgpack_object *a = &r->args[i];
    bool ok = false;
    if (has_initial(r, i) && a->type == MSGPACK_OBJECT_ARRAY && a->via.array.size == 3 &&
        a->via.array.ptr[2].type == MSGPACK_OBJECT_BOOLEAN) {
        b->broken = a->via.array.ptr[2].via.boolean;
        mpb_req sub = *r;
        msgpack_object two = *a;
        two.via.array.size = 2;
        sub.args = &two;
        sub.nargs = 1;
        return barrier_init_from(&sub, o, 0);
    }
    if (has_initial(r, i) && a->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        b->parties = (int64_t)a->via.u64;
        ok = a->via.u64 >= 1 && a->via.u64 <= INT32_MAX;
    } else if (has_initial(r, i) && a->type == MSGPACK_OBJECT_ARRAY && a->via.array.size == 2 &&
               a->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        const msgpack_object *t = &a->via.array.ptr[1];
        b->parties = (int64_t)a->via.array.ptr[0].via.u64;
        ok = b->parties >= 1 && b->parties <= INT32_MAX;
        if (t->type == MSGPACK_OBJECT_POSITIVE_INTEGER) b->timeout = (double)t->via.u64;
        else if (t->type == MSGPACK_OBJECT_FLOAT64 || t->type == MSGPACK_OBJECT_FLOAT32)
            b->timeout = t->via.f64, ok = ok && t->via.f64 >= 0;
        else ok = ok && t->type == MSGPACK_OBJECT_NIL;
    }
    if (!ok) reply_error(r, MPB_E_VALUE, "%s: a barrier needs PARTIES >= 1, or [PARTIES, TIMEOUT]", r->info->name);
    return ok;
}

static void fail_all(barstate *b)
{
    b->count = 0;
    waitq_fail_all(&b->waiters, MPB_E_BROKEN_BARRIER, "the barrier is broken");
}

static void on_wait_timeout(mpb_waiter *w)
{
    barstate *b = BAR(w->obj);
    b->broken = true;
    mpb_value self = mpb_refv(w->obj->id);
    persist_log_effect("barrier.abort", &self, 1);
    fail_all(b); /* this waiter too: it is still queued */
}

static void on_cancel(mpb_waiter *w)
{
    barstate *b = BAR(w->obj);
    for (mpb_waiter *x = w->next; x; x = x->next) x->n--;
    b->count--;
}

/* barrier.wait REF [TIMEOUT] */
void barrier_wait(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 0, &timeout)) return;
    barstate *b = BAR(r->self);
    if (timeout < 0) timeout = b->timeout;
    if (b->broken) {
        reply_error(r, MPB_E_BROKEN_BARRIER, "%s: the barrier is broken", r->info->name);
        return;
    }
    int64_t index = b->count++;
    if (b->count < b->parties) {
        mpb_waiter *w = wait_park(r, r->self, &b->waiters, timeout, on_wait_timeout);
        if (w) {
            w->n = index;
            w->on_cancel = on_cancel;
        } else {
            b->count--;
        }
        return;
    }
    /* The last party: everyone passes. */
    reply_int(r, index);
    b->count = 0;
    mpb_waiter *w;
    while ((w = waitq_pop(&b->waiters))) {
        mpb_req wr;
        wait_req(w, &wr);
        reply_int(&wr, w->n);
        wait_done(w);
    }
}

/* barrier.reset REF */
void barrier_reset(mpb_req *r)
{
    barstate *b = BAR(r->self);
    reply_nil(r);
    fail_all(b);
    b->broken = false;
}

/* barrier.abort REF */
void barrier_abort(mpb_req *r)
{
    barstate *b = BAR(r->self);
    b->broken = true;
    reply_nil(r);
    fail_all(b);
}

/* barrier.broken REF */
void barrier_broken(mpb_req *r) { reply_bool(r, BAR(r->self)->broken); }

/* barrier.n_waiting REF */
void barrier_n_waiting(mpb_req *r) { reply_int(r, BAR(r->self)->count); }

/* barrier.parties REF */
void barrier_parties(mpb_req *r) { reply_int(r, BAR(r->self)->parties); }

void barrier_dump(const mpb_object *o, msgpack_packer *pk)
{
    const barstate *b = BAR(o);
    msgpack_pack_array(pk, 3);
    msgpack_pack_int64(pk, b->parties);
    if (b->timeout >= 0) msgpack_pack_double(pk, b->timeout);
    else msgpack_pack_nil(pk);
    if (b->broken) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}
