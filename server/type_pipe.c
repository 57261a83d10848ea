/* type_pipe.c - pipe: two connected ends, 0 and 1, as multiprocessing.Pipe().
 *
 * Each end has a FIFO of the values sent to it (unbounded, counted against
 * --max-memory) and the recv/poll requests parked on it. A duplex pipe sends both
 * ways; a one-way pipe, as Pipe(duplex=False) returns (reader, writer), reads at end 0
 * and writes at end 1.
 *
 * Ends and connections: an end is bound to every connection that sends, receives or
 * polls on it (conn->owned holds the bits: 1 for end 0, 2 for end 1), and closes when
 * the last of them closes, as an OS pipe end closes with its last descriptor. So a
 * process killed while its peer waits in recv gives that peer EOFError at once.
 * pipe.close closes the end for every connection at once.
 *
 * Pipes are not logged (their methods are MPB_F_NOLOG): after a restart no connection
 * is bound to anything, so a pipe comes back empty, both ends open, duplex as made.
 */
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "persist.h"
#include "wait.h"
#include "watch.h"

typedef struct pend {
    mpb_value *ring; /* values sent to this end, unread: ring[(head + i) % cap] */
    size_t head, len, cap;
    bool closed;
    uint32_t bound;  /* connections bound to this end */
    mpb_waitq waiters; /* pipe.recv and pipe.poll parked on this end */
} pend;

typedef struct pstate {
    bool duplex;
    pend end[2];
} pstate;

#define P(o) ((pstate *)(o)->u.ptr)

static int pipe_init(mpb_object *o)
{
    pstate *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->duplex = true;
    o->u.ptr = p;
    return 0;
}

static void drop_pending(pend *e)
{
    for (size_t i = 0; i < e->len; i++) objects_discard_value(&e->ring[(e->head + i) % e->cap]);
    e->len = e->head = 0;
}

static void pipe_destroy(mpb_object *o)
{
    pstate *p = P(o);
    for (int i = 0; i < 2; i++) {
        drop_pending(&p->end[i]);
        free(p->end[i].ring);
    }
    free(p);
    o->u.ptr = NULL;
}

static size_t pipe_length(const mpb_object *o) { return P(o)->end[0].len + P(o)->end[1].len; }

static size_t pipe_memsize(const mpb_object *o)
{
    const pstate *p = P(o);
    size_t n = sizeof *p;
    for (int i = 0; i < 2; i++) {
        const pend *e = &p->end[i];
        n += e->cap * sizeof *e->ring;
        for (size_t k = 0; k < e->len; k++) n += mpb_value_memsize(&e->ring[(e->head + k) % e->cap]);
    }
    return n;
}

static void close_end(mpb_object *o, int e);

/* A connection bound to ends of o closed (count: its bits): an end whose last
 * connection this was closes. */
static void pipe_conn_gone(mpb_object *o, uint64_t conn_id, uintptr_t count)
{
    (void)conn_id;
    pstate *p = P(o);
    for (int e = 0; e < 2; e++) {
        if (!(count & ((uintptr_t)1 << e)) || p->end[e].bound == 0) continue;
        if (--p->end[e].bound == 0 && !p->end[e].closed) {
            /* A change no call made: counted as the pipe.close it amounts to, before
             * the polls it answers count theirs. */
            msgpack_object end = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = (uint64_t)e};
            watch_bump(o, "pipe.close", &end, 1);
            persist_log_version(o);
            close_end(o, e);
        }
    }
}

const mpb_type_ops mpb_pipe_ops = {pipe_init, pipe_destroy, pipe_length, pipe_memsize,
                                   pipe_conn_gone};

/* INITIAL: nil (duplex), a bool, or {"duplex": BOOL} (what a snapshot stores). */
bool pipe_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    const msgpack_object *a = &r->args[i];
    if (a->type == MSGPACK_OBJECT_BOOLEAN) {
        P(o)->duplex = a->via.boolean;
        return true;
    }
    if (a->type != MSGPACK_OBJECT_MAP) {
        reply_error(r, MPB_E_TYPE, "%s: a pipe's INITIAL is {\"duplex\": BOOL}", r->info->name);
        return false;
    }
    for (uint32_t k = 0; k < a->via.map.size; k++) {
        const msgpack_object_kv *kv = &a->via.map.ptr[k];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 6 ||
            memcmp(kv->key.via.str.ptr, "duplex", 6) != 0) {
            reply_error(r, MPB_E_VALUE, "%s: a pipe's INITIAL has only the key \"duplex\"",
                        r->info->name);
            return false;
        }
        if (kv->val.type != MSGPACK_OBJECT_BOOLEAN) {
            reply_error(r, MPB_E_TYPE, "%s: \"duplex\" must be a bool", r->info->name);
            return false;
        }
        P(o)->duplex = kv->val.via.boolean;
    }
    return true;
}

void pipe_dump(const mpb_object *o, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "duplex", 6);
    if (P(o)->duplex) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

/*--- Ends ---*/

static bool readable(const pstate *p, int e) { return p->duplex || e == 0; }
static bool writable(const pstate *p, int e) { return p->duplex || e == 1; }

/* Append to e's FIFO, taking *v (left nil). 0, or -1 on allocation failure. */
static int push(pend *e, mpb_value *v)
{
    if (e->len == e->cap) {
        size_t ncap = e->cap ? e->cap * 2 : 8;
        mpb_value *n = malloc(ncap * sizeof *n);
        if (!n) return -1;
        for (size_t i = 0; i < e->len; i++) n[i] = e->ring[(e->head + i) % e->cap];
        free(e->ring);
        e->ring = n;
        e->cap = ncap;
        e->head = 0;
    }
    e->ring[(e->head + e->len) % e->cap] = *v;
    e->len++;
    *v = mpb_nil();
    return 0;
}

static mpb_value pop(pend *e)
{
    mpb_value v = e->ring[e->head];
    e->head = (e->head + 1) % e->cap;
    e->len--;
    return v;
}

/* Answer what waits on end e now that it has values, or its peer closed: polls get
 * true, receivers values in FIFO order, or EOFError once the FIFO is empty. A receiver
 * whose client is gone is skipped (the value would be read by nobody). */
static void serve_end(mpb_object *o, int e)
{
    pend *d = &P(o)->end[e];
    bool eof = P(o)->end[1 - e].closed;
    mpb_waiter *w;
    while ((w = d->waiters.head) && (d->len > 0 || eof)) {
        waitq_pop(&d->waiters);
        if (w->method == MPB_M_PIPE_POLL) {
            wait_answer_bool(w, true);
            continue;
        }
        mpb_req r;
        wait_req(w, &r);
        if (d->len == 0) {
            reply_error(&r, MPB_E_EOF_ERROR, "pipe.recv: the other end is closed");
            wait_done(w);
            continue;
        }
        if (conn_peer_gone(w->conn)) {
            wait_conn_closed(w->conn);
            continue;
        }
        mpb_value v = pop(d);
        reply_value(&r, &v);
        objects_discard_value(&v);
        wait_done(w);
    }
}

/* Close end e: its unread values go, requests parked on it (other connections bound
 * to it) get OSError, and the other end's waiters learn (EOFError, poll true). */
static void close_end(mpb_object *o, int e)
{
    pstate *p = P(o);
    p->end[e].closed = true;
    drop_pending(&p->end[e]);
    waitq_fail_all(&p->end[e].waiters, MPB_E_OS, "pipe: handle is closed");
    serve_end(o, 1 - e);
}

/* The END argument r->args[0]: 0 or 1; -1 after replying. */
static int end_arg(mpb_req *r)
{
    int64_t e;
    if (!arg_int(r, 0, &e)) return -1;
    if (e != 0 && e != 1) {
        reply_error(r, MPB_E_VALUE, "%s: END must be 0 or 1, not %lld", r->info->name,
                    (long long)e);
        return -1;
    }
    if (P(r->self)->end[e].closed) {
        reply_error(r, MPB_E_OS, "%s: handle is closed (end %d)", r->info->name, (int)e);
        return -1;
    }
    return (int)e;
}

/* Bind end e to the calling connection (once). false after replying OutOfMemory. */
static bool bind_end(mpb_req *r, int e)
{
    if (persist_is_replay(r->conn)) return true; /* never logged: cannot happen */
    mpb_idmap *owned = &r->conn->owned;
    uintptr_t bits = (uintptr_t)idmap_get(owned, r->self->id), bit = (uintptr_t)1 << e;
    if (bits & bit) return true;
    if (idmap_put(owned, r->self->id, (void *)(bits | bit)) < 0) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        return false;
    }
    P(r->self)->end[e].bound++;
    return true;
}

/* Checks shared by recv and poll: a readable, open end, bound. -1 after replying. */
static int reading_end(mpb_req *r)
{
    int e = end_arg(r);
    if (e < 0) return -1;
    if (!readable(P(r->self), e)) {
        reply_error(r, MPB_E_OS, "%s: connection is write-only (end 1 of a one-way pipe)",
                    r->info->name);
        return -1;
    }
    return bind_end(r, e) ? e : -1;
}

/*--- Commands ---*/

/* pipe.send REF END VALUE */
void pipe_send(mpb_req *r)
{
    int e = end_arg(r);
    if (e < 0) return;
    pstate *p = P(r->self);
    if (!writable(p, e)) {
        reply_error(r, MPB_E_OS, "pipe.send: connection is read-only (end 0 of a one-way pipe)");
        return;
    }
    if (p->end[1 - e].closed) {
        reply_error(r, MPB_E_BROKEN_PIPE, "pipe.send: the other end is closed");
        return;
    }
    mpb_value v;
    if (!arg_value(r, 1, &v)) return;
    if (!bind_end(r, e)) {
        mpb_value_free(&v);
        return;
    }
    mpb_value kept = v;
    if (push(&p->end[1 - e], &v) < 0) {
        mpb_value_free(&v);
        reply_error(r, MPB_E_OUT_OF_MEMORY, "pipe.send: out of memory");
        return;
    }
    objects_retain_value(&kept);
    reply_nil(r);
    serve_end(r->self, 1 - e);
}

static void on_recv_timeout(mpb_waiter *w)
{
    mpb_req r;
    wait_req(w, &r);
    reply_error(&r, MPB_E_TIMEOUT, "pipe.recv: nothing received within the timeout");
    wait_done(w);
}

/* pipe.recv REF END [TIMEOUT] */
void pipe_recv(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 1, &timeout)) return;
    int e = reading_end(r);
    if (e < 0) return;
    pstate *p = P(r->self);
    pend *d = &p->end[e];
    if (d->len > 0) {
        /* A receiver gone since it sent this takes nothing: another connection bound
         * to the end may still receive the value. Alone on the end, its going closes
         * the end and drops the value anyway: no poll(2) then. */
        if (d->bound > 1 && wait_caller_gone(r)) return;
        mpb_value v = pop(d);
        reply_value(r, &v);
        objects_discard_value(&v);
    } else if (p->end[1 - e].closed) {
        reply_error(r, MPB_E_EOF_ERROR, "pipe.recv: the other end is closed");
    } else if (timeout == 0) {
        reply_error(r, MPB_E_TIMEOUT, "pipe.recv: nothing to receive");
    } else {
        mpb_waiter *w = wait_park(r, r->self, &d->waiters, timeout, on_recv_timeout);
        if (w) w->n = e; /* for manager.clients' "waiting" */
    }
}

/* pipe.poll REF END [TIMEOUT]: absent is 0 and nil forever, as Python's poll(). */
void pipe_poll(mpb_req *r)
{
    double timeout = 0;
    if (r->nargs > 1 && !arg_timeout(r, 1, &timeout)) return;
    int e = reading_end(r);
    if (e < 0) return;
    pstate *p = P(r->self);
    if (p->end[e].len > 0 || p->end[1 - e].closed) reply_bool(r, true);
    else if (timeout == 0) reply_bool(r, false);
    else {
        mpb_waiter *w = wait_park(r, r->self, &p->end[e].waiters, timeout, wait_timeout_false);
        if (w) w->n = e;
    }
}

/* pipe.close REF END: closing a closed end does nothing, as Connection.close(). */
void pipe_close(mpb_req *r)
{
    int64_t e;
    if (!arg_int(r, 0, &e)) return;
    if (e != 0 && e != 1) {
        reply_error(r, MPB_E_VALUE, "pipe.close: END must be 0 or 1, not %lld", (long long)e);
        return;
    }
    reply_nil(r);
    if (!P(r->self)->end[e].closed) close_end(r->self, (int)e);
}

static void pack_pair_bool(msgpack_packer *pk, bool a, bool b)
{
    msgpack_pack_array(pk, 2);
    if (a) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    if (b) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

static void pack_pair_u64(msgpack_packer *pk, uint64_t a, uint64_t b)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, a);
    msgpack_pack_uint64(pk, b);
}

/* pipe.info REF */
void pipe_info(mpb_req *r)
{
    const pstate *p = P(r->self);
    const pend *a = &p->end[0], *b = &p->end[1];
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_map(pk, 5);
    msgpack_pack_str_with_body(pk, "duplex", 6);
    if (p->duplex) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    msgpack_pack_str_with_body(pk, "closed", 6);
    pack_pair_bool(pk, a->closed, b->closed);
    msgpack_pack_str_with_body(pk, "pending", 7);
    pack_pair_u64(pk, a->len, b->len);
    msgpack_pack_str_with_body(pk, "bound", 5);
    pack_pair_u64(pk, a->bound, b->bound);
    msgpack_pack_str_with_body(pk, "waiting", 7);
    pack_pair_u64(pk, a->waiters.len, b->waiters.len);
}
