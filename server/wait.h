/* wait.h - parked requests: a blocking call (queue.get, lock.acquire, ...) that
 * cannot proceed becomes a waiter, queued FIFO on its object, answered later by
 * another client's action or by its timer. The loop never blocks.
 *
 * While a connection has a waiter it serves no further requests (they stay buffered
 * and run after the answer, so responses stay in request order); hence at most one
 * waiter per connection. A waiter pins its object (it cannot be freed under it) and
 * is cancelled when its connection closes.
 */
#ifndef MPB_WAIT_H
#define MPB_WAIT_H

#include <event2/event_struct.h>
#include <stdbool.h>
#include <stdint.h>

#include "server.h"

typedef struct mpb_waiter mpb_waiter;

typedef struct mpb_waitq {
    mpb_waiter *head, *tail;
    size_t len;
} mpb_waitq;

/* Called when the waiter's timer fires (it is still queued; the callback replies
 * and calls wait_done, or moves it on). */
typedef void (*mpb_wait_fn)(mpb_waiter *w);

struct mpb_waiter {
    mpb_conn *conn;
    uint64_t msgid;
    bool notify;         /* parked by a notification: its answer is discarded */
    int method;          /* mpb_method_id of the parked request */
    mpb_object *obj;     /* pinned until wait_done */
    mpb_waitq *q;        /* the queue it sits in, or NULL */
    mpb_waiter *prev, *next;
    struct event timer;
    bool timer_on;
    mpb_wait_fn on_timeout;
    mpb_wait_fn on_cancel; /* optional: its connection closed (before it is freed) */
    mpb_value item;      /* owned: what a queue.put waits to store */
    bool item_counted;   /* item is counted as stored (objects_retain_value): released
                            when the waiter goes, unless handed on (then cleared) */
    int64_t n;           /* per type: rlock depth to restore, barrier generation, ... */
    bool flag;           /* per type: condition wait's result */
    bool failed;         /* answered with an error (reply_error through wait_req) */
    bool timed_out;      /* answered by its timeout (wait_timeout_false) */
    void *ext;           /* per type: more state (a channel select's offers), owned by
                            the type: freed before wait_done and in on_cancel */
};

/* Park r on object o in queue q. timeout < 0: no timer. The connection stops serving
 * requests until wait_done. Returns the waiter, or NULL after replying OutOfMemory. */
mpb_waiter *wait_park(mpb_req *r, mpb_object *o, mpb_waitq *q, double timeout,
                      mpb_wait_fn on_timeout);
/* A request to reply through: reply_*(&req) answers the parked request. */
void wait_req(mpb_waiter *w, mpb_req *r);
/* Take w out of its queue and stop its timer (it stays parked). */
void wait_unlink(mpb_waiter *w);
/* Append w to q (its timer, if any, keeps running). */
void wait_enqueue(mpb_waiter *w, mpb_waitq *q);
/* Answered: unlink, unpin, free, and let its connection go on. Call after replying. */
void wait_done(mpb_waiter *w);
/* Answer w with a bool result and let its connection go on. */
void wait_answer_bool(mpb_waiter *w, bool result);
/* An mpb_wait_fn for waits whose timeout answers false (acquire, wait, join). */
void wait_timeout_false(mpb_waiter *w);
/* Pop the oldest waiter of q (unlinked), or NULL. */
mpb_waiter *waitq_pop(mpb_waitq *q);
/* waitq_pop, cancelling on the way waiters whose peer has left (conn_peer_gone, one
 * poll(2) each): for a hand-off that must not be lost unread. */
mpb_waiter *waitq_pop_live(mpb_waitq *q);
/* Answer every waiter in q with an error (an object going away, a barrier broken). */
void waitq_fail_all(mpb_waitq *q, mpb_errkind kind, const char *msg);
/* Is the calling connection's peer gone (conn_peer_gone: its socket hung up, though
 * the loop may not have seen it yet)? Then r is marked failed and left unanswered: a
 * call that would take a value (a read, a recv, a rendezvous) must not, since its
 * answer would go to nobody. One poll(2); call it only when a value is about to move. */
bool wait_caller_gone(mpb_req *r);
/* Its connection is closing: cancel the waiter without replying. */
void wait_conn_closed(mpb_conn *c);
size_t wait_parked_count(void);

#endif
