/* wait.c - parked requests and their FIFO queues (see wait.h). */
#include <math.h>
#include <stdlib.h>

#include "persist.h"
#include "wait.h"
#include "watch.h"

static size_t nparked;

size_t wait_parked_count(void) { return nparked; }

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mpb_waiter *w = arg;
    w->timer_on = false;
    w->on_timeout(w);
    objects_collect(); /* an answered waiter may have been the last thing pinning */
}

mpb_waiter *wait_park(mpb_req *r, mpb_object *o, mpb_waitq *q, double timeout,
                      mpb_wait_fn on_timeout)
{
    if (persist_is_replay(r->conn)) { /* logged calls never wait: a bug, not a hang */
        reply_error(r, MPB_E_RUNTIME, "%s would wait during replay", r->info->name);
        return NULL;
    }
    mpb_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        return NULL;
    }
    w->conn = r->conn;
    w->msgid = r->msgid;
    w->notify = r->notify;
    w->method = r->method;
    w->obj = o;
    w->on_timeout = on_timeout;
    objects_pin(o);
    r->conn->blocked = true;
    r->conn->parked = w;
    nparked++;
    if (q) wait_enqueue(w, q);
    /* A timeout past a century is no limit at all, and would not fit a time_t. */
    if (timeout >= 0 && timeout < 3.2e9) {
        double whole = floor(timeout);
        struct timeval tv = {(time_t)whole, (suseconds_t)((timeout - whole) * 1e6)};
        evtimer_assign(&w->timer, event_get_base(&r->conn->rev), on_timer, w);
        evtimer_add(&w->timer, &tv);
        w->timer_on = true;
    }
    return w;
}

void wait_req(mpb_waiter *w, mpb_req *r)
{
    *r = (mpb_req){.conn = w->conn, .msgid = w->msgid, .notify = w->notify,
                   .method = w->method, .info = &mpb_methods[w->method], .self = w->obj,
                   .waiter = w};
}

static void unlink_q(mpb_waiter *w)
{
    mpb_waitq *q = w->q;
    if (!q) return;
    if (w->prev) w->prev->next = w->next;
    else q->head = w->next;
    if (w->next) w->next->prev = w->prev;
    else q->tail = w->prev;
    q->len--;
    w->q = NULL;
    w->prev = w->next = NULL;
}

void wait_unlink(mpb_waiter *w)
{
    unlink_q(w);
    if (w->timer_on) {
        evtimer_del(&w->timer);
        w->timer_on = false;
    }
}

void wait_enqueue(mpb_waiter *w, mpb_waitq *q)
{
    w->q = q;
    w->prev = q->tail;
    w->next = NULL;
    if (q->tail) q->tail->next = w;
    else q->head = w;
    q->tail = w;
    q->len++;
}

static void wait_free(mpb_waiter *w)
{
    wait_unlink(w);
    if (w->item_counted) objects_discard_value(&w->item); /* else nil, or handed on */
    w->conn->parked = NULL;
    nparked--;
    objects_unpin(w->obj);
    free(w);
}

void wait_done(mpb_waiter *w)
{
    mpb_conn *c = w->conn;
    /* A parked write whose effect is not logged (a lock granted, a condition woken, a
     * barrier passed) counts as a write now; logged ones count through their effect
     * (persist_log_effect), which replay repeats. */
    unsigned f = mpb_methods[w->method].flags;
    if ((f & (MPB_F_WRITE | MPB_F_NOLOG)) == (MPB_F_WRITE | MPB_F_NOLOG) && !w->failed &&
        !w->timed_out && mpb_methods[w->method].self != MPB_OT_NONE)
        watch_bump(w->obj, mpb_methods[w->method].name, NULL, 0);
    wait_free(w);
    conn_unblock(c);
}

void wait_answer_bool(mpb_waiter *w, bool result)
{
    mpb_req r;
    wait_req(w, &r);
    reply_bool(&r, result);
    wait_done(w);
}

void wait_timeout_false(mpb_waiter *w)
{
    w->timed_out = true; /* nothing happened: no version bump */
    wait_answer_bool(w, false);
}

mpb_waiter *waitq_pop(mpb_waitq *q)
{
    mpb_waiter *w = q->head;
    if (w) unlink_q(w);
    return w;
}

mpb_waiter *waitq_pop_live(mpb_waitq *q)
{
    mpb_waiter *w;
    /* conn_peer_gone, not conn_peer_left: a getter whose socket hung up in this loop
     * round, before its read event ran, is as gone as one not read any more. */
    while ((w = waitq_pop(q)) && conn_peer_gone(w->conn)) wait_conn_closed(w->conn);
    return w;
}

void waitq_fail_all(mpb_waitq *q, mpb_errkind kind, const char *msg)
{
    mpb_waiter *w;
    while ((w = waitq_pop(q))) {
        mpb_req r;
        wait_req(w, &r);
        reply_error(&r, kind, "%s", msg);
        wait_done(w);
    }
}

bool wait_caller_gone(mpb_req *r)
{
    if (r->notify || !conn_peer_gone(r->conn)) return false;
    r->failed = true; /* no effect: no version bump */
    return true;
}

void wait_conn_closed(mpb_conn *c)
{
    mpb_waiter *w = c->parked;
    if (!w) return;
    if (w->on_cancel) w->on_cancel(w);
    wait_free(w);
}
