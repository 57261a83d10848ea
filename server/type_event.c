/* type_event.c - Event: a flag that waiters park on until it is set. */
#include <stdlib.h>

#include "persist.h"
#include "wait.h"

typedef struct evstate {
    bool flag;
    mpb_waitq waiters;
} evstate;

#define EV(o) ((evstate *)(o)->u.ptr)

static int ev_init(mpb_object *o)
{
    o->u.ptr = calloc(1, sizeof(evstate));
    return o->u.ptr ? 0 : -1;
}

static void ev_destroy(mpb_object *o)
{
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t ev_length(const mpb_object *o) { return EV(o)->flag; }
static size_t ev_memsize(const mpb_object *o) { (void)o; return sizeof(evstate); }

const mpb_type_ops mpb_event_ops = {ev_init, ev_destroy, ev_length, ev_memsize, NULL};

bool event_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    return !has_initial(r, i) || arg_bool(r, i, &EV(o)->flag);
}

/* event.set REF */
void event_set(mpb_req *r)
{
    evstate *e = EV(r->self);
    e->flag = true;
    reply_nil(r);
    mpb_waiter *w;
    while ((w = waitq_pop(&e->waiters))) wait_answer_bool(w, true);
}

/* event.clear REF */
void event_clear(mpb_req *r)
{
    EV(r->self)->flag = false;
    reply_nil(r);
}

/* event.is_set REF */
void event_is_set(mpb_req *r) { reply_bool(r, EV(r->self)->flag); }

/* event.wait REF [TIMEOUT] */
void event_wait(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 0, &timeout)) return;
    evstate *e = EV(r->self);
    if (e->flag || timeout == 0) reply_bool(r, e->flag);
    else wait_park(r, r->self, &e->waiters, timeout, wait_timeout_false);
}

void event_dump(const mpb_object *o, msgpack_packer *pk)
{
    if (EV(o)->flag) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}
