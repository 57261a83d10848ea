/* type_queue.c - Queue and JoinableQueue: a FIFO ring of values with parked getters,
 * putters (when a maxsize is set) and joiners.
 *
 * Waiters are served first come, first served: after every change, rebalance()
 * hands items to waiting getters and admits waiting putters until neither can move.
 * A putter waiting for room keeps its item (references counted) in its waiter.
 */
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "persist.h"
#include "wait.h"

typedef struct qstate {
    mpb_value *ring;
    size_t head, len, cap;
    int64_t maxsize; /* <= 0: unbounded */
    int64_t unfinished; /* joinable: items put and not yet task_done */
    mpb_waitq getters, putters, joiners;
} qstate;

#define Q(o) ((qstate *)(o)->u.ptr)

/*--- Queue API ---*/

static int queue_init(mpb_object *o)
{
    o->u.ptr = calloc(1, sizeof(qstate));
    return o->u.ptr ? 0 : -1;
}

static void queue_destroy(mpb_object *o)
{
    qstate *q = Q(o);
    for (size_t i = 0; i < q->len; i++) objects_discard_value(&q->ring[(q->head + i) % q->cap]);
    free(q->ring);
    free(q);
    o->u.ptr = NULL;
}

static size_t queue_length(const mpb_object *o) { return Q(o)->len; }

static size_t queue_memsize(const mpb_object *o)
{
    const qstate *q = Q(o);
    size_t n = sizeof *q + q->cap * sizeof *q->ring;
    for (size_t i = 0; i < q->len; i++) n += mpb_value_memsize(&q->ring[(q->head + i) % q->cap]);
    return n;
}

const mpb_type_ops mpb_queue_ops = {queue_init, queue_destroy, queue_length, queue_memsize, NULL};

/* INITIAL: MAXSIZE, or the full form {"maxsize": N, "unfinished": N} (what a
 * snapshot stores; its items follow as put_nowait calls). */
bool queue_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    const msgpack_object *a = &r->args[i];
    if (a->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t k = 0; k < a->via.map.size; k++) {
            const msgpack_object_kv *kv = &a->via.map.ptr[k];
            int64_t n;
            if (!mpb_object_int(&kv->val, &n) || kv->key.type != MSGPACK_OBJECT_STR) break;
            if (kv->key.via.str.size == 7 && !memcmp(kv->key.via.str.ptr, "maxsize", 7))
                Q(o)->maxsize = n;
            else if (kv->key.via.str.size == 10 && !memcmp(kv->key.via.str.ptr, "unfinished", 10))
                Q(o)->unfinished = n;
        }
        return true;
    }
    int64_t maxsize;
    if (!arg_int(r, i, &maxsize)) return false;
    Q(o)->maxsize = maxsize;
    return true;
}

void queue_dump(const mpb_object *o, msgpack_packer *pk)
{
    const qstate *q = Q(o);
    msgpack_pack_map(pk, 2);
    msgpack_pack_str_with_body(pk, "maxsize", 7);
    msgpack_pack_int64(pk, q->maxsize);
    msgpack_pack_str_with_body(pk, "unfinished", 10);
    msgpack_pack_int64(pk, q->unfinished - (int64_t)q->len); /* the puts below add len */
}

size_t queue_dump_items(const mpb_object *o, msgpack_packer *pk)
{
    const qstate *q = Q(o);
    for (size_t i = 0; i < q->len; i++) {
        msgpack_pack_array(pk, 3);
        msgpack_pack_str_with_body(pk, "call", 4);
        msgpack_pack_str_with_body(pk, "queue.put_nowait", 16);
        msgpack_pack_array(pk, 2);
        mpb_ref_pack(pk, o->id);
        mpb_value_pack(pk, &q->ring[(q->head + i) % q->cap]);
    }
    return q->len;
}

static bool is_full(const qstate *q) { return q->maxsize > 0 && (int64_t)q->len >= q->maxsize; }

/* Append, taking *v. 0, or -1 on allocation failure (v untouched). */
static int push(qstate *q, mpb_value *v)
{
    if (q->len == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 16;
        mpb_value *n = malloc(ncap * sizeof *n);
        if (!n) return -1;
        for (size_t i = 0; i < q->len; i++) n[i] = q->ring[(q->head + i) % q->cap];
        free(q->ring);
        q->ring = n;
        q->cap = ncap;
        q->head = 0;
    }
    q->ring[(q->head + q->len) % q->cap] = *v;
    q->len++;
    q->unfinished++;
    *v = mpb_nil();
    return 0;
}

static mpb_value pop(qstate *q)
{
    mpb_value v = q->ring[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return v;
}

/* Hand items to waiting getters and room to waiting putters, oldest first. These
 * effects happen after their requests parked, so they are logged here. */
static void rebalance(mpb_object *o)
{
    qstate *q = Q(o);
    mpb_value self = mpb_refv(o->id);
    for (bool moved = true; moved;) {
        moved = false;
        while (q->len > 0 && q->getters.head) {
            /* Not to a getter whose client is gone: the item would be lost unread. */
            mpb_waiter *w = waitq_pop_live(&q->getters);
            if (!w) break;
            mpb_value v = pop(q);
            mpb_req r;
            wait_req(w, &r);
            reply_value(&r, &v);
            objects_discard_value(&v);
            wait_done(w);
            persist_log_effect("queue.get_nowait", &self, 1);
            moved = true;
        }
        while (!is_full(q) && q->putters.head) {
            mpb_waiter *w = q->putters.head;
            mpb_value logged[2] = {self, w->item};
            persist_log_effect("queue.put_nowait", logged, 2);
            if (push(q, &w->item) < 0) return; /* out of memory: it keeps waiting */
            w->item_counted = false; /* the queue counts it now */
            waitq_pop(&q->putters);
            mpb_req r;
            wait_req(w, &r);
            reply_nil(&r);
            wait_done(w);
            moved = true;
        }
    }
}

static void on_get_timeout(mpb_waiter *w)
{
    mpb_req r;
    wait_req(w, &r);
    reply_error(&r, MPB_E_EMPTY, "queue.get: no item within the timeout");
    wait_done(w);
}

static void on_put_timeout(mpb_waiter *w)
{
    mpb_req r;
    wait_req(w, &r);
    reply_error(&r, MPB_E_FULL, "queue.put: no room within the timeout");
    wait_done(w);
}

static void do_put(mpb_req *r, mpb_value *item, bool block, double timeout)
{
    qstate *q = Q(r->self);
    if (!is_full(q)) {
        mpb_value kept = *item;
        if (push(q, item) < 0) {
            mpb_value_free(item);
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
            return;
        }
        objects_retain_value(&kept);
        reply_nil(r);
        rebalance(r->self);
        return;
    }
    if (!block || timeout == 0) {
        mpb_value_free(item);
        reply_error(r, MPB_E_FULL, "%s: the queue is full", r->info->name);
        return;
    }
    mpb_waiter *w = wait_park(r, r->self, &q->putters, timeout, on_put_timeout);
    if (!w) {
        mpb_value_free(item);
        return;
    }
    objects_retain_value(item); /* the waiter's item counts as stored */
    w->item = *item;
    w->item_counted = true;
}

static void do_get(mpb_req *r, bool block, double timeout)
{
    qstate *q = Q(r->self);
    if (q->len > 0) {
        mpb_value v = pop(q);
        reply_value(r, &v);
        objects_discard_value(&v);
        rebalance(r->self);
        return;
    }
    if (!block || timeout == 0) {
        reply_error(r, MPB_E_EMPTY, "%s: the queue is empty", r->info->name);
        return;
    }
    wait_park(r, r->self, &q->getters, timeout, on_get_timeout);
}

/*--- Queue Commands ---*/

/* queue.put REF ITEM [BLOCK [TIMEOUT]] */
void queue_put(mpb_req *r)
{
    bool block;
    double timeout;
    mpb_value item;
    if (!arg_bool_opt(r, 1, true, &block) || !arg_timeout(r, 2, &timeout)) return;
    if (!arg_value(r, 0, &item)) return;
    do_put(r, &item, block, timeout);
}

/* queue.get REF [BLOCK [TIMEOUT]] */
void queue_get(mpb_req *r)
{
    bool block;
    double timeout;
    if (!arg_bool_opt(r, 0, true, &block) || !arg_timeout(r, 1, &timeout)) return;
    do_get(r, block, timeout);
}

/* queue.put_nowait REF ITEM */
void queue_put_nowait(mpb_req *r)
{
    mpb_value item;
    if (arg_value(r, 0, &item)) do_put(r, &item, false, 0);
}

/* queue.get_nowait REF */
void queue_get_nowait(mpb_req *r) { do_get(r, false, 0); }

/* queue.qsize REF */
void queue_qsize(mpb_req *r) { reply_int(r, (int64_t)Q(r->self)->len); }

/* queue.empty REF */
void queue_empty(mpb_req *r) { reply_bool(r, Q(r->self)->len == 0); }

/* queue.full REF */
void queue_full(mpb_req *r) { reply_bool(r, is_full(Q(r->self))); }

static bool joinable(mpb_req *r)
{
    if (r->self->variant == 1) return true;
    reply_error(r, MPB_E_ATTRIBUTE, "%s needs a joinablequeue, not a queue", r->info->name);
    return false;
}

/* queue.task_done REF */
void queue_task_done(mpb_req *r)
{
    qstate *q = Q(r->self);
    if (!joinable(r)) return;
    if (q->unfinished <= 0) {
        reply_error(r, MPB_E_VALUE, "task_done() called too many times");
        return;
    }
    reply_nil(r);
    if (--q->unfinished == 0) {
        mpb_waiter *w;
        while ((w = waitq_pop(&q->joiners))) wait_answer_bool(w, true);
    }
}

/* queue.join REF [TIMEOUT] */
void queue_join(mpb_req *r)
{
    double timeout;
    if (!joinable(r) || !arg_timeout(r, 0, &timeout)) return;
    qstate *q = Q(r->self);
    if (q->unfinished == 0) reply_bool(r, true);
    else if (timeout == 0) reply_bool(r, false);
    else wait_park(r, r->self, &q->joiners, timeout, wait_timeout_false);
}
