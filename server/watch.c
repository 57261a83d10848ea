/* watch.c - versions, "changed" notifications, manager.version/watch/unwatch/
 * wait_change/expect (see watch.h; atomic batches are batch.c's).
 *
 * A bump is queued as a pending change: the object, its new version and, when the
 * object has watchers, the whole notification packed once. Pending changes go out at
 * the end of the outermost request (watch_call_end), in the order of their versions:
 * to each watcher (unless it is over its backlog) and to the wait_change requests the
 * new version satisfies. batch.c takes pending changes back when a batch fails.
 */
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "persist.h"
#include "wait.h"
#include "watch.h"

typedef struct watcher {
    mpb_conn *conn;
    bool overflowed; /* "overflow" sent: changes dropped until the backlog drains */
} watcher;

typedef struct mpb_watch {
    watcher *w;
    size_t n, cap;
    mpb_waitq changes; /* parked wait_change requests; waiter->n is their VERSION */
} mpb_watch;

/* Changes bumped in this request, not yet sent. */
typedef struct pending {
    mpb_object *o;
    uint64_t version;
    size_t off, len; /* the notification in pend_buf (len 0: no watcher to tell) */
} pending;

static pending *pend;
static size_t npend, pend_cap;
static msgpack_sbuffer pend_buf;
static msgpack_packer pend_pk;
static bool pend_ready;

/* Effects logged inside a request, bumped after the request's own write. */
typedef struct deferred {
    mpb_ref ref;
    const char *method; /* a literal (persist_log_effect's callers) */
    size_t off, len;    /* ARGS packed in eff_buf */
} deferred;

static deferred *defer;
static size_t ndefer, defer_cap;
static msgpack_sbuffer eff_buf;
static msgpack_packer eff_pk;

#define MAX_DEPTH 16
static size_t depth, defer_mark[MAX_DEPTH];

static void ready(void)
{
    if (pend_ready) return;
    msgpack_sbuffer_init(&pend_buf);
    msgpack_packer_init(&pend_pk, &pend_buf, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&eff_buf);
    msgpack_packer_init(&eff_pk, &eff_buf, msgpack_sbuffer_write);
    pend_ready = true;
}

static bool has_listeners(const mpb_object *o)
{
    return o->watch && (o->watch->n > 0 || o->watch->changes.len > 0);
}

size_t watch_change_waiters(const mpb_object *o) { return o->watch ? o->watch->changes.len : 0; }

/* Queue a pending change of o (just bumped); the notification's ARGS are written by
 * pack_args (NULL: args_bytes as they are). */
static void queue_change(mpb_object *o, const char *method, const msgpack_object *args,
                         uint32_t nargs, const char *args_bytes, size_t args_len)
{
    if (!has_listeners(o)) return;
    ready();
    if (npend == pend_cap) {
        size_t ncap = pend_cap ? pend_cap * 2 : 16;
        pending *p = realloc(pend, ncap * sizeof *p);
        if (!p) return; /* out of memory: this change is not told (wait_change still
                           sees the version at its next check) */
        pend = p;
        pend_cap = ncap;
    }
    pending *e = &pend[npend++];
    e->o = o;
    e->version = o->version;
    e->off = pend_buf.size;
    e->len = 0;
    if (o->watch->n == 0) return;
    msgpack_packer *pk = &pend_pk;
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint8(pk, 2);
    msgpack_pack_str_with_body(pk, "changed", 7);
    msgpack_pack_array(pk, 4);
    mpb_ref_pack(pk, o->id);
    msgpack_pack_uint64(pk, o->version);
    msgpack_pack_str_with_body(pk, method, strlen(method));
    if (args_bytes) {
        msgpack_sbuffer_write(&pend_buf, args_bytes, args_len);
    } else {
        msgpack_pack_array(pk, nargs);
        for (uint32_t i = 0; i < nargs; i++) msgpack_pack_object(pk, args[i]);
    }
    e->len = pend_buf.size - e->off;
}

void watch_bump(mpb_object *o, const char *method, const msgpack_object *args, uint32_t nargs)
{
    o->version++;
    queue_change(o, method, args, nargs, NULL, 0);
    /* Outside a request (a lock granted by a timer or by a closing connection): send it
     * now, before anything can free o. */
    if (depth == 0) {
        watch_call_begin();
        watch_call_end();
    }
}

void watch_effect(const char *method, const mpb_value *args, size_t n)
{
    mpb_ref ref;
    if (n == 0 || args[0].type != MPB_REF) return;
    ref = args[0].v.ref;
    if (depth == 0) { /* outside any request (a connection closing): now */
        mpb_object *o = objects_get(ref);
        if (!o) return;
        o->version++;
        if (!has_listeners(o)) return;
        msgpack_sbuffer b;
        msgpack_packer pk;
        msgpack_sbuffer_init(&b);
        msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, n - 1);
        for (size_t i = 1; i < n; i++) mpb_value_pack(&pk, &args[i]);
        queue_change(o, method, NULL, 0, b.data, b.size);
        msgpack_sbuffer_destroy(&b);
        watch_call_begin();
        watch_call_end(); /* sends it */
        return;
    }
    ready();
    if (ndefer == defer_cap) {
        size_t ncap = defer_cap ? defer_cap * 2 : 8;
        deferred *d = realloc(defer, ncap * sizeof *d);
        if (!d) return;
        defer = d;
        defer_cap = ncap;
    }
    deferred *d = &defer[ndefer++];
    d->ref = ref;
    d->method = method;
    d->off = eff_buf.size;
    msgpack_pack_array(&eff_pk, n - 1);
    for (size_t i = 1; i < n; i++) mpb_value_pack(&eff_pk, &args[i]);
    d->len = eff_buf.size - d->off;
}

void watch_call_begin(void)
{
    if (depth < MAX_DEPTH) defer_mark[depth] = ndefer;
    depth++;
}

/* Write a notification (or the overflow that replaces it) to one watcher. */
static void tell(watcher *w, const pending *e)
{
    mpb_conn *c = w->conn;
    if (c->closing) return;
    size_t limit = WATCH_MAX_BACKLOG;
    if (g_config.max_output > 0 && g_config.max_output / 2 < limit) limit = g_config.max_output / 2;
    size_t backlog = c->out.size - c->out_sent;
    if (w->overflowed && backlog < limit / 2) w->overflowed = false; /* caught up */
    if (w->overflowed) return;
    if (backlog >= limit) {
        w->overflowed = true;
        msgpack_packer *pk = &c->pk;
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint8(pk, 2);
        msgpack_pack_str_with_body(pk, "overflow", 8);
        msgpack_pack_array(pk, 2);
        mpb_ref_pack(pk, e->o->id);
        msgpack_pack_uint64(pk, e->version);
    } else {
        msgpack_sbuffer_write(&c->out, pend_buf.data + e->off, e->len);
    }
    conn_schedule_flush(c);
}

/* Answer the wait_change requests on o that its version now satisfies. */
static void wake_changes(mpb_object *o)
{
    if (!o->watch) return;
    mpb_waiter *w = o->watch->changes.head, *next;
    for (; w; w = next) {
        next = w->next;
        if (o->version <= (uint64_t)w->n) continue;
        mpb_req r;
        wait_req(w, &r);
        reply_int(&r, (int64_t)o->version);
        wait_done(w);
    }
}

void watch_call_end(void)
{
    if (depth == 0) return;
    depth--;
    if (depth < MAX_DEPTH) {
        size_t mark = defer_mark[depth];
        for (size_t i = mark; i < ndefer; i++) {
            mpb_object *o = objects_get(defer[i].ref);
            if (!o) continue;
            o->version++;
            queue_change(o, defer[i].method, NULL, 0, eff_buf.data + defer[i].off, defer[i].len);
        }
        ndefer = mark;
        if (ndefer == 0) msgpack_sbuffer_clear(&eff_buf);
    }
    if (depth > 0 || npend == 0) return;
    /* Out in version order. A wait_change answered here may not free anything: the
     * objects live until the request's objects_collect. */
    for (size_t i = 0; i < npend; i++) {
        pending e = pend[i]; /* a copy: answering a waiter must not move it */
        if (e.len && e.o->watch)
            for (size_t k = 0; k < e.o->watch->n; k++) tell(&e.o->watch->w[k], &e);
        if (i + 1 == npend || pend[i + 1].o != e.o) wake_changes(e.o);
    }
    npend = 0;
    msgpack_sbuffer_clear(&pend_buf);
}

/*--- Taking changes back (batch.c) ---*/

size_t watch_pending_mark(void) { return npend; }

void watch_pending_drop(size_t mark)
{
    if (mark >= npend) return;
    pend_buf.size = pend[mark].off;
    npend = mark;
}

/*--- Watchers ---*/

static mpb_watch *watch_of(mpb_object *o)
{
    if (!o->watch) o->watch = calloc(1, sizeof *o->watch);
    return o->watch;
}

/* Room for one more watcher; false when out of memory. */
static bool grow_watchers(mpb_watch *w)
{
    if (w->n < w->cap) return true;
    size_t ncap = w->cap ? w->cap * 2 : 4;
    watcher *n = realloc(w->w, ncap * sizeof *n);
    if (!n) return false;
    w->w = n;
    w->cap = ncap;
    return true;
}

/* Remove c from o's watchers; true if it was one. */
static bool remove_watcher(mpb_object *o, const mpb_conn *c)
{
    mpb_watch *w = o->watch;
    if (!w) return false;
    for (size_t i = 0; i < w->n; i++)
        if (w->w[i].conn == c) {
            w->w[i] = w->w[--w->n];
            return true;
        }
    return false;
}

void watch_conn_closed(mpb_conn *c)
{
    size_t it = 0;
    uint64_t k;
    void *v;
    while (idmap_next(&c->watching, &it, &k, &v)) remove_watcher(v, c);
    idmap_free(&c->watching);
}

void watch_object_freed(mpb_object *o)
{
    mpb_watch *w = o->watch;
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) idmap_del(&w->w[i].conn->watching, o->id);
    /* Pending changes of o are sent before any object is freed (watch_call_end runs
     * before objects_collect), and wait_change requests pin it. */
    free(w->w);
    free(w);
    o->watch = NULL;
}

/*--- Methods ---*/

/* A VERSION argument (an int >= 0); false after replying. */
static bool version_arg(mpb_req *r, uint32_t i, uint64_t *out)
{
    int64_t v;
    if (!arg_int(r, i, &v)) return false;
    if (v < 0) {
        reply_error(r, MPB_E_VALUE, "%s: a version is an int >= 0", r->info->name);
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

/* manager.version REF */
void manager_version(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    if (o) msgpack_pack_uint64(reply_begin(r), o->version);
}

/* manager.watch REF: answers the version the watch starts from. */
void manager_watch(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    if (!o) return;
    mpb_conn *c = r->conn;
    if (!idmap_get(&c->watching, o->id)) {
        mpb_watch *w = watch_of(o);
        if (!w || !grow_watchers(w)) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
            return;
        }
        if (idmap_put(&c->watching, o->id, o) < 0) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
            return;
        }
        w->w[w->n++] = (watcher){.conn = c};
    }
    msgpack_pack_uint64(reply_begin(r), o->version);
}

/* manager.unwatch REF: true if it was watched. */
void manager_unwatch(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    if (!o) return;
    bool was = idmap_del(&r->conn->watching, o->id) != NULL;
    if (was) remove_watcher(o, r->conn);
    reply_bool(r, was);
}

/* manager.wait_change REF VERSION [TIMEOUT] */
void manager_wait_change(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    uint64_t v;
    double timeout;
    if (!o || !version_arg(r, 1, &v) || !arg_timeout(r, 2, &timeout)) return;
    if (o->version > v) {
        msgpack_pack_uint64(reply_begin(r), o->version);
        return;
    }
    if (r->notify) { /* nobody would read the answer: nothing to wait for */
        reply_nil(r);
        return;
    }
    mpb_watch *w = watch_of(o);
    if (!w) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        return;
    }
    mpb_waiter *wt = wait_park(r, o, &w->changes, timeout, wait_timeout_false);
    if (wt) wt->n = (int64_t)v;
}

/* manager.expect REF VERSION */
void manager_expect(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    uint64_t v;
    if (!o || !version_arg(r, 1, &v)) return;
    if (o->version != v) {
        reply_error(r, MPB_E_CONFLICT, "manager.expect: object %llu is at version %llu, not %llu",
                    (unsigned long long)o->id, (unsigned long long)o->version,
                    (unsigned long long)v);
        return;
    }
    reply_bool(r, true);
}
