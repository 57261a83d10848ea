/* helpers.c - the typed helpers of mpbroker.h (mpb_create, mpb_list_append, ...).
 *
 * Each is a thin wrapper over mpb_call: it lays its params out on the stack exactly
 * as mpb_methods.def says (the reference first for typed methods; names as borrowed
 * strings, so nothing is copied or allocated before packing), then checks the type of
 * the result where the C signature promises one. No I/O or protocol logic lives here:
 * that is client.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mpbroker.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* A name as a borrowed str param; callers have checked it is not NULL. */
static mpb_value name_arg(const char *s) { return mpb_str_borrowed(s, strlen(s)); }

/* A required pointer argument was NULL: the context stays usable. */
static int null_arg(mpb_context *c, const char *fn, const char *what) {
    if (c == NULL) return MPB_ERR_ARG;
    c->err = MPB_ERR_ARG;
    strcpy(c->errkind, "ValueError");
    snprintf(c->errstr, sizeof c->errstr, "%s: %s is NULL", fn, what);
    return MPB_ERR_ARG;
}

/* The reply was well formed but not what this helper promises. Frees *got. */
static int wrong_type(mpb_context *c, const char *method, const char *want, mpb_value *got) {
    c->err = MPB_ERR_PROTOCOL;
    strcpy(c->errkind, "ProtocolError");
    snprintf(c->errstr, sizeof c->errstr, "%s: expected %s result, got %s", method, want,
             mpb_type_name(got));
    mpb_value_free(got);
    return MPB_ERR_PROTOCOL;
}

/* mpb_call whose result must have type `type`; moved to *out (freed when out is NULL). */
static int call_typed(mpb_context *c, const char *method, const mpb_value *args, size_t n,
                      mpb_type type, const char *want, mpb_value *out) {
    mpb_value r;
    if (out != NULL) *out = mpb_nil();
    int rc = mpb_call(c, method, args, n, &r);
    if (rc != MPB_OK) return rc;
    if (r.type != type) return wrong_type(c, method, want, &r);
    if (out != NULL)
        *out = r;
    else
        mpb_value_free(&r);
    return MPB_OK;
}

static int call_int(mpb_context *c, const char *method, const mpb_value *args, size_t n,
                    int64_t *out) {
    mpb_value r;
    if (out != NULL) *out = 0;
    int rc = call_typed(c, method, args, n, MPB_INT, "an int", &r);
    if (rc == MPB_OK && out != NULL) *out = r.v.i;
    return rc;
}

static int call_ref(mpb_context *c, const char *method, const mpb_value *args, size_t n,
                    mpb_ref *out) {
    mpb_value r;
    if (out != NULL) *out = 0;
    int rc = call_typed(c, method, args, n, MPB_REF, "a reference", &r);
    if (rc == MPB_OK && out != NULL) *out = r.v.ref;
    return rc;
}

/* A call whose result, if any, nobody needs (None for setters). */
static int call_void(mpb_context *c, const char *method, const mpb_value *args, size_t n) {
    return mpb_call(c, method, args, n, NULL);
}

/*--- Broker ---*/

int mpb_create(mpb_context *c, const char *typeid, const mpb_value *initial, mpb_ref *out) {
    if (typeid == NULL) return null_arg(c, "mpb_create", "typeid");
    mpb_value a[] = {name_arg(typeid), initial ? *initial : mpb_nil()};
    /* Without an initial value send [typeid] alone: MIN is 1 in the method table. */
    return call_ref(c, "manager.create", a, initial ? 2 : 1, out);
}

int mpb_open(mpb_context *c, const char *typeid, const char *name, const mpb_value *initial,
             mpb_ref *out) {
    if (typeid == NULL || name == NULL)
        return null_arg(c, "mpb_open", typeid ? "name" : "typeid");
    mpb_value a[] = {name_arg(typeid), name_arg(name), initial ? *initial : mpb_nil()};
    mpb_ref ref;
    int rc = call_ref(c, "manager.open", a, initial ? 3 : 2, &ref);
    if (rc == MPB_OK) mpb_client_note_open(c, typeid, name, ref);
    if (out != NULL) *out = rc == MPB_OK ? ref : 0;
    return rc;
}

int mpb_lookup(mpb_context *c, const char *name, mpb_ref *out) {
    if (name == NULL) return null_arg(c, "mpb_lookup", "name");
    mpb_value a[] = {name_arg(name)};
    return call_ref(c, "manager.lookup", a, N(a), out);
}

int mpb_release(mpb_context *c, mpb_ref ref) {
    mpb_value a[] = {mpb_refv(ref)};
    return call_void(c, "manager.release", a, N(a));
}

int mpb_incref(mpb_context *c, mpb_ref ref) {
    mpb_value a[] = {mpb_refv(ref)};
    return call_void(c, "manager.incref", a, N(a));
}

int mpb_delete(mpb_context *c, const char *name) {
    if (name == NULL) return null_arg(c, "mpb_delete", "name");
    mpb_value a[] = {name_arg(name)};
    return call_void(c, "manager.delete", a, N(a));
}

int mpb_ping(mpb_context *c) {
    return call_typed(c, "manager.ping", NULL, 0, MPB_STR, "a str", NULL);
}

int mpb_shutdown(mpb_context *c) { return call_void(c, "manager.shutdown", NULL, 0); }

/*--- list ---*/

int mpb_list_append(mpb_context *c, mpb_ref l, const mpb_value *v) {
    if (v == NULL) return null_arg(c, "mpb_list_append", "v");
    mpb_value a[] = {mpb_refv(l), *v};
    return call_void(c, "list.append", a, N(a));
}

int mpb_list_extend(mpb_context *c, mpb_ref l, const mpb_value *array) {
    if (array == NULL) return null_arg(c, "mpb_list_extend", "array");
    mpb_value a[] = {mpb_refv(l), *array};
    return call_void(c, "list.extend", a, N(a));
}

int mpb_list_getitem(mpb_context *c, mpb_ref l, int64_t index, mpb_value *out) {
    mpb_value a[] = {mpb_refv(l), mpb_int(index)};
    return mpb_call(c, "list.getitem", a, N(a), out);
}

int mpb_list_setitem(mpb_context *c, mpb_ref l, int64_t index, const mpb_value *v) {
    if (v == NULL) return null_arg(c, "mpb_list_setitem", "v");
    mpb_value a[] = {mpb_refv(l), mpb_int(index), *v};
    return call_void(c, "list.setitem", a, N(a));
}

int mpb_list_pop(mpb_context *c, mpb_ref l, int64_t index, mpb_value *out) {
    mpb_value a[] = {mpb_refv(l), mpb_int(index)};
    return mpb_call(c, "list.pop", a, N(a), out);
}

int mpb_list_len(mpb_context *c, mpb_ref l, int64_t *out) {
    mpb_value a[] = {mpb_refv(l)};
    return call_int(c, "list.len", a, N(a), out);
}

int mpb_list_copy(mpb_context *c, mpb_ref l, mpb_value *out) {
    mpb_value a[] = {mpb_refv(l)};
    return call_typed(c, "list.copy", a, N(a), MPB_ARRAY, "an array", out);
}

/*--- dict ---*/

int mpb_dict_setitem(mpb_context *c, mpb_ref d, const mpb_value *key, const mpb_value *v) {
    if (key == NULL || v == NULL) return null_arg(c, "mpb_dict_setitem", key ? "v" : "key");
    mpb_value a[] = {mpb_refv(d), *key, *v};
    return call_void(c, "dict.setitem", a, N(a));
}

int mpb_dict_getitem(mpb_context *c, mpb_ref d, const mpb_value *key, mpb_value *out) {
    if (out != NULL) *out = mpb_nil();
    if (key == NULL) return null_arg(c, "mpb_dict_getitem", "key");
    mpb_value a[] = {mpb_refv(d), *key};
    return mpb_call(c, "dict.getitem", a, N(a), out);
}

int mpb_dict_get(mpb_context *c, mpb_ref d, const mpb_value *key, const mpb_value *def,
                 mpb_value *out) {
    if (out != NULL) *out = mpb_nil();
    if (key == NULL) return null_arg(c, "mpb_dict_get", "key");
    mpb_value a[] = {mpb_refv(d), *key, def ? *def : mpb_nil()};
    return mpb_call(c, "dict.get", a, N(a), out);
}

int mpb_dict_delitem(mpb_context *c, mpb_ref d, const mpb_value *key) {
    if (key == NULL) return null_arg(c, "mpb_dict_delitem", "key");
    mpb_value a[] = {mpb_refv(d), *key};
    return call_void(c, "dict.delitem", a, N(a));
}

int mpb_dict_len(mpb_context *c, mpb_ref d, int64_t *out) {
    mpb_value a[] = {mpb_refv(d)};
    return call_int(c, "dict.len", a, N(a), out);
}

int mpb_dict_incr(mpb_context *c, mpb_ref d, const mpb_value *key, int64_t delta,
                  int64_t *out) {
    if (out != NULL) *out = 0;
    if (key == NULL) return null_arg(c, "mpb_dict_incr", "key");
    mpb_value a[] = {mpb_refv(d), *key, mpb_int(delta)};
    return call_int(c, "dict.incr", a, N(a), out);
}

int mpb_dict_copy(mpb_context *c, mpb_ref d, mpb_value *out) {
    mpb_value a[] = {mpb_refv(d)};
    return call_typed(c, "dict.copy", a, N(a), MPB_MAP, "a map", out);
}

/*--- namespace ---*/

int mpb_ns_setattr(mpb_context *c, mpb_ref ns, const char *name, const mpb_value *v) {
    if (name == NULL || v == NULL) return null_arg(c, "mpb_ns_setattr", name ? "v" : "name");
    mpb_value a[] = {mpb_refv(ns), name_arg(name), *v};
    return call_void(c, "namespace.setattr", a, N(a));
}

int mpb_ns_getattr(mpb_context *c, mpb_ref ns, const char *name, mpb_value *out) {
    if (out != NULL) *out = mpb_nil();
    if (name == NULL) return null_arg(c, "mpb_ns_getattr", "name");
    mpb_value a[] = {mpb_refv(ns), name_arg(name)};
    return mpb_call(c, "namespace.getattr", a, N(a), out);
}

int mpb_ns_delattr(mpb_context *c, mpb_ref ns, const char *name) {
    if (name == NULL) return null_arg(c, "mpb_ns_delattr", "name");
    mpb_value a[] = {mpb_refv(ns), name_arg(name)};
    return call_void(c, "namespace.delattr", a, N(a));
}

int mpb_ns_incr(mpb_context *c, mpb_ref ns, const char *name, int64_t delta, int64_t *out) {
    if (out != NULL) *out = 0;
    if (name == NULL) return null_arg(c, "mpb_ns_incr", "name");
    mpb_value a[] = {mpb_refv(ns), name_arg(name), mpb_int(delta)};
    return call_int(c, "namespace.incr", a, N(a), out);
}

int mpb_ns_incr_value(mpb_context *c, mpb_ref ns, const char *name, const mpb_value *delta,
                      mpb_value *out) {
    if (out != NULL) *out = mpb_nil();
    if (name == NULL || delta == NULL)
        return null_arg(c, "mpb_ns_incr_value", name ? "delta" : "name");
    mpb_value a[] = {mpb_refv(ns), name_arg(name), *delta};
    return mpb_call(c, "namespace.incr", a, N(a), out);
}

int mpb_ns_cas(mpb_context *c, mpb_ref ns, const char *name, const mpb_value *expected,
               const mpb_value *newv, int *swapped) {
    mpb_value r;
    if (swapped != NULL) *swapped = 0;
    if (name == NULL) return null_arg(c, "mpb_ns_cas", "name");
    mpb_value a[] = {mpb_refv(ns), name_arg(name), expected ? *expected : mpb_nil(),
                     newv ? *newv : mpb_nil()};
    int rc = call_typed(c, "namespace.cas", a, N(a), MPB_BOOL, "a bool", &r);
    if (rc == MPB_OK && swapped != NULL) *swapped = r.v.b;
    return rc;
}

int mpb_ns_vars(mpb_context *c, mpb_ref ns, mpb_value *out) {
    mpb_value a[] = {mpb_refv(ns)};
    return call_typed(c, "namespace.vars", a, N(a), MPB_MAP, "a map", out);
}

/*--- sync types: timeouts ---*/

/* The [BLOCK, TIMEOUT] params of a blocking call: timeout < 0 waits forever (nil
 * timeout), 0 does not wait (block false), > 0 waits that many seconds. */
static void block_args(double timeout, mpb_value *block, mpb_value *tmo) {
    *block = mpb_bool(timeout != 0);
    *tmo = timeout > 0 ? mpb_float(timeout) : mpb_nil();
}

/* Just the TIMEOUT param of a wait: < 0 nil (forever). */
static mpb_value timeout_arg(double timeout) {
    return timeout >= 0 ? mpb_float(timeout) : mpb_nil();
}

static int call_bool(mpb_context *c, const char *method, const mpb_value *args, size_t n,
                     int *out) {
    mpb_value r;
    if (out != NULL) *out = 0;
    int rc = call_typed(c, method, args, n, MPB_BOOL, "a bool", &r);
    if (rc == MPB_OK && out != NULL) *out = r.v.b;
    return rc;
}

/*--- queue ---*/

int mpb_queue_put(mpb_context *c, mpb_ref q, const mpb_value *item, double timeout) {
    if (item == NULL) return null_arg(c, "mpb_queue_put", "item");
    mpb_value args[4] = {mpb_refv(q), *item};
    block_args(timeout, &args[2], &args[3]);
    return call_void(c, "queue.put", args, N(args));
}

int mpb_queue_get(mpb_context *c, mpb_ref q, double timeout, mpb_value *out) {
    mpb_value args[3] = {mpb_refv(q)};
    block_args(timeout, &args[1], &args[2]);
    mpb_value r;
    if (out != NULL) *out = mpb_nil();
    int rc = mpb_call(c, "queue.get", args, N(args), &r);
    if (rc == MPB_OK && out != NULL) *out = r;
    else if (rc == MPB_OK) mpb_value_free(&r);
    return rc;
}

int mpb_queue_qsize(mpb_context *c, mpb_ref q, int64_t *out) {
    mpb_value args[1] = {mpb_refv(q)};
    return call_int(c, "queue.qsize", args, N(args), out);
}

int mpb_queue_task_done(mpb_context *c, mpb_ref q) {
    mpb_value args[1] = {mpb_refv(q)};
    return call_void(c, "queue.task_done", args, N(args));
}

int mpb_queue_join(mpb_context *c, mpb_ref q, double timeout, int *done) {
    mpb_value args[2] = {mpb_refv(q), timeout_arg(timeout)};
    return call_bool(c, "queue.join", args, N(args), done);
}

/*--- lock, rlock, semaphore, condition ---*/

static int acquire(mpb_context *c, const char *method, mpb_ref ref, double timeout,
                   int *acquired) {
    mpb_value args[3] = {mpb_refv(ref)};
    block_args(timeout, &args[1], &args[2]);
    return call_bool(c, method, args, N(args), acquired);
}

int mpb_lock_acquire(mpb_context *c, mpb_ref l, double timeout, int *acquired) {
    return acquire(c, "lock.acquire", l, timeout, acquired);
}

int mpb_lock_release(mpb_context *c, mpb_ref l) {
    mpb_value args[1] = {mpb_refv(l)};
    return call_void(c, "lock.release", args, N(args));
}

int mpb_sem_acquire(mpb_context *c, mpb_ref s, double timeout, int *acquired) {
    return acquire(c, "semaphore.acquire", s, timeout, acquired);
}

int mpb_sem_release(mpb_context *c, mpb_ref s) {
    mpb_value args[1] = {mpb_refv(s)};
    return call_void(c, "semaphore.release", args, N(args));
}

int mpb_cond_acquire(mpb_context *c, mpb_ref cv, double timeout, int *acquired) {
    return acquire(c, "condition.acquire", cv, timeout, acquired);
}

int mpb_cond_release(mpb_context *c, mpb_ref cv) {
    mpb_value args[1] = {mpb_refv(cv)};
    return call_void(c, "condition.release", args, N(args));
}

int mpb_cond_wait(mpb_context *c, mpb_ref cv, double timeout, int *notified) {
    mpb_value args[2] = {mpb_refv(cv), timeout_arg(timeout)};
    return call_bool(c, "condition.wait", args, N(args), notified);
}

int mpb_cond_notify(mpb_context *c, mpb_ref cv, int64_t n) {
    mpb_value args[2] = {mpb_refv(cv), mpb_int(n)};
    return call_void(c, "condition.notify", args, N(args));
}

int mpb_cond_notify_all(mpb_context *c, mpb_ref cv) {
    mpb_value args[1] = {mpb_refv(cv)};
    return call_void(c, "condition.notify_all", args, N(args));
}

/*--- event, barrier ---*/

int mpb_event_set(mpb_context *c, mpb_ref e) {
    mpb_value args[1] = {mpb_refv(e)};
    return call_void(c, "event.set", args, N(args));
}

int mpb_event_clear(mpb_context *c, mpb_ref e) {
    mpb_value args[1] = {mpb_refv(e)};
    return call_void(c, "event.clear", args, N(args));
}

int mpb_event_is_set(mpb_context *c, mpb_ref e, int *set) {
    mpb_value args[1] = {mpb_refv(e)};
    return call_bool(c, "event.is_set", args, N(args), set);
}

int mpb_event_wait(mpb_context *c, mpb_ref e, double timeout, int *set) {
    mpb_value args[2] = {mpb_refv(e), timeout_arg(timeout)};
    return call_bool(c, "event.wait", args, N(args), set);
}

int mpb_barrier_wait(mpb_context *c, mpb_ref b, double timeout, int64_t *index) {
    mpb_value args[2] = {mpb_refv(b), timeout_arg(timeout)};
    return call_int(c, "barrier.wait", args, N(args), index);
}

/*--- value, array ---*/

int mpb_shared_value_get(mpb_context *c, mpb_ref v, mpb_value *out) {
    mpb_value args[1] = {mpb_refv(v)};
    return mpb_call(c, "value.get", args, N(args), out);
}

int mpb_shared_value_set(mpb_context *c, mpb_ref v, const mpb_value *x) {
    if (x == NULL) return null_arg(c, "mpb_shared_value_set", "x");
    mpb_value args[2] = {mpb_refv(v), *x};
    return call_void(c, "value.set", args, N(args));
}

int mpb_shared_array_getitem(mpb_context *c, mpb_ref a, int64_t index, mpb_value *out) {
    mpb_value args[2] = {mpb_refv(a), mpb_int(index)};
    return mpb_call(c, "array.getitem", args, N(args), out);
}

int mpb_shared_array_setitem(mpb_context *c, mpb_ref a, int64_t index, const mpb_value *x) {
    if (x == NULL) return null_arg(c, "mpb_shared_array_setitem", "x");
    mpb_value args[3] = {mpb_refv(a), mpb_int(index), *x};
    return call_void(c, "array.setitem", args, N(args));
}

int mpb_shared_array_len(mpb_context *c, mpb_ref a, int64_t *out) {
    mpb_value args[1] = {mpb_refv(a)};
    return call_int(c, "array.len", args, N(args), out);
}

int mpb_shared_array_tolist(mpb_context *c, mpb_ref a, mpb_value *out) {
    mpb_value args[1] = {mpb_refv(a)};
    return call_typed(c, "array.tolist", args, N(args), MPB_ARRAY, "an array", out);
}

/*--- set ---*/

int mpb_set_add(mpb_context *c, mpb_ref s, const mpb_value *elem) {
    if (elem == NULL) return null_arg(c, "mpb_set_add", "elem");
    mpb_value args[2] = {mpb_refv(s), *elem};
    return call_void(c, "set.add", args, N(args));
}

int mpb_set_discard(mpb_context *c, mpb_ref s, const mpb_value *elem) {
    if (elem == NULL) return null_arg(c, "mpb_set_discard", "elem");
    mpb_value args[2] = {mpb_refv(s), *elem};
    return call_void(c, "set.discard", args, N(args));
}

int mpb_set_remove(mpb_context *c, mpb_ref s, const mpb_value *elem) {
    if (elem == NULL) return null_arg(c, "mpb_set_remove", "elem");
    mpb_value args[2] = {mpb_refv(s), *elem};
    return call_void(c, "set.remove", args, N(args));
}

int mpb_set_contains(mpb_context *c, mpb_ref s, const mpb_value *elem, int *present) {
    if (present != NULL) *present = 0;
    if (elem == NULL) return null_arg(c, "mpb_set_contains", "elem");
    mpb_value args[2] = {mpb_refv(s), *elem};
    return call_bool(c, "set.contains", args, N(args), present);
}

int mpb_set_len(mpb_context *c, mpb_ref s, int64_t *out) {
    mpb_value args[1] = {mpb_refv(s)};
    return call_int(c, "set.len", args, N(args), out);
}

int mpb_set_pop(mpb_context *c, mpb_ref s, mpb_value *out) {
    mpb_value args[1] = {mpb_refv(s)};
    return mpb_call(c, "set.pop", args, N(args), out);
}

int mpb_set_copy(mpb_context *c, mpb_ref s, mpb_value *out) {
    mpb_value args[1] = {mpb_refv(s)};
    return call_typed(c, "set.copy", args, N(args), MPB_ARRAY, "an array", out);
}

int mpb_set_update(mpb_context *c, mpb_ref s, const mpb_value *other) {
    if (other == NULL) return null_arg(c, "mpb_set_update", "other");
    mpb_value args[2] = {mpb_refv(s), *other};
    return call_void(c, "set.update", args, N(args));
}

/*--- Iterating in chunks ---*/

struct mpb_iter {
    mpb_context *c;
    const char *method; /* list.slice, dict.items or set.items: REF START COUNT */
    mpb_ref ref;
    int64_t chunk;
    mpb_value cursor; /* START of the next chunk; nil once the last one is in */
    mpb_value items;  /* the current chunk (an array), or nil before the first */
    size_t pos;       /* next item in it */
    unsigned long gen; /* the connection the cursor came over (mpb_client_conn_gen) */
};

static mpb_iter *iter_new(mpb_context *c, const char *method, mpb_ref ref, int64_t chunk) {
    mpb_iter *it = calloc(1, sizeof *it);
    if (it == NULL) return NULL;
    it->c = c;
    it->method = method;
    it->ref = ref;
    it->chunk = chunk > 0 ? chunk : 1000;
    it->cursor = mpb_int(0);
    return it;
}

mpb_iter *mpb_list_iter(mpb_context *c, mpb_ref l, int64_t chunk) {
    return iter_new(c, "list.slice", l, chunk);
}

mpb_iter *mpb_dict_iter(mpb_context *c, mpb_ref d, int64_t chunk) {
    return iter_new(c, "dict.items", d, chunk);
}

mpb_iter *mpb_set_iter(mpb_context *c, mpb_ref s, int64_t chunk) {
    return iter_new(c, "set.items", s, chunk);
}

/* Start the walk over: the next call fetches from position 0. */
static void iter_rewind(mpb_iter *it) {
    mpb_value_free(&it->items);
    it->cursor = mpb_int(0);
    it->pos = 0;
}

/* Fetch the chunk at it->cursor. The iterator changes only on success, or when a new
 * connection cut the walk: a cursor is a position in one broker process, and a
 * reconnect may have reached another (a restart renumbers dict and set positions, and
 * a list may have changed in between), so a chunk asked for with a cursor from before
 * is not used: the walk is rewound and MPB_ERR_CUT reported. */
static int iter_fetch(mpb_iter *it) {
    mpb_value args[3] = {mpb_refv(it->ref), it->cursor, mpb_int(it->chunk)}, r;
    bool resuming = it->cursor.type == MPB_INT && it->cursor.v.i != 0;
    int rc = call_typed(it->c, it->method, args, N(args), MPB_ARRAY, "an [items, next] array", &r);
    if (resuming && mpb_client_conn_gen(it->c) != it->gen) {
        if (rc == MPB_OK) mpb_value_free(&r);
        if (rc == MPB_OK || it->c->fd >= 0) { /* reconnected: the walk is cut */
            iter_rewind(it);
            it->c->err = MPB_ERR_CUT;
            strcpy(it->c->errkind, "ConnectionError");
            snprintf(it->c->errstr, sizeof it->c->errstr, "%s: a reconnect cut the walk (positions "
                     "do not survive one); the next call starts it over", it->method);
            return MPB_ERR_CUT;
        }
    }
    if (rc != MPB_OK) return rc;
    it->gen = mpb_client_conn_gen(it->c);
    mpb_value *f = r.v.a->items;
    /* An empty chunk that is not the last would make mpb_iter_next spin. */
    if (r.v.a->len != 2 || f[0].type != MPB_ARRAY ||
        (f[1].type != MPB_NIL && (f[1].type != MPB_INT || f[0].v.a->len == 0)))
        return wrong_type(it->c, it->method, "an [items, next] array", &r);
    mpb_value_free(&it->items);
    it->items = f[0];
    it->cursor = f[1];
    it->pos = 0;
    f[0] = mpb_nil();
    mpb_value_free(&r);
    return MPB_OK;
}

int mpb_iter_next(mpb_iter *it, mpb_value **item) {
    if (item == NULL) return MPB_ERR_ARG;
    *item = NULL;
    if (it == NULL) return MPB_ERR_ARG;
    while (it->items.type != MPB_ARRAY || it->pos == it->items.v.a->len) {
        if (it->cursor.type == MPB_NIL) return 0;
        int rc = iter_fetch(it);
        if (rc != MPB_OK) return rc;
    }
    *item = &it->items.v.a->items[it->pos++];
    return 1;
}

void mpb_iter_free(mpb_iter *it) {
    if (it == NULL) return;
    mpb_value_free(&it->items);
    free(it);
}

/*--- Versions, watches and batches (docs/PROTOCOL.md) ---*/

int mpb_version(mpb_context *c, mpb_ref r, int64_t *out) {
    mpb_value args[1] = {mpb_refv(r)};
    return call_int(c, "manager.version", args, N(args), out);
}

int mpb_watch(mpb_context *c, mpb_ref r, int64_t *version) {
    mpb_value args[1] = {mpb_refv(r)};
    return call_int(c, "manager.watch", args, N(args), version);
}

int mpb_unwatch(mpb_context *c, mpb_ref r) {
    mpb_value args[1] = {mpb_refv(r)};
    return call_bool(c, "manager.unwatch", args, N(args), NULL);
}

int mpb_wait_change(mpb_context *c, mpb_ref r, int64_t version, double timeout, int64_t *out) {
    mpb_value args[3] = {mpb_refv(r), mpb_int(version),
                         timeout < 0 ? mpb_nil() : mpb_float(timeout)};
    mpb_value res;
    if (out != NULL) *out = 0;
    int rc = mpb_call(c, "manager.wait_change", args, N(args), &res);
    if (rc != MPB_OK) return rc;
    if (res.type == MPB_BOOL && !res.v.b) return MPB_OK; /* the timeout passed */
    if (res.type != MPB_INT) return wrong_type(c, "manager.wait_change", "an int or false", &res);
    if (out != NULL) *out = res.v.i;
    return MPB_OK;
}

int mpb_next_change(mpb_context *c, int timeout_ms, mpb_change *ch, int *got) {
    if (ch == NULL || got == NULL) return null_arg(c, "mpb_next_change", "ch or got");
    *got = 0;
    memset(ch, 0, sizeof *ch);
    ch->args = mpb_nil();
    for (;;) {
        char method[16];
        mpb_value p;
        int g = 0;
        int rc = mpb_get_notification(c, timeout_ms, method, sizeof method, &p, &g);
        if (rc != MPB_OK || !g) return rc;
        bool changed = strcmp(method, "changed") == 0, over = strcmp(method, "overflow") == 0;
        size_t want = changed ? 4 : 2;
        if ((!changed && !over) || p.type != MPB_ARRAY || p.v.a->len != want ||
            p.v.a->items[0].type != MPB_REF || p.v.a->items[1].type != MPB_INT) {
            mpb_value_free(&p); /* another kind (a monitor event): not ours */
            continue;
        }
        mpb_value *it = p.v.a->items;
        ch->ref = it[0].v.ref;
        ch->version = it[1].v.i;
        ch->overflow = over;
        if (changed && it[2].type == MPB_STR)
            snprintf(ch->method, sizeof ch->method, "%.*s", (int)it[2].len, it[2].v.s);
        if (changed) {
            ch->args = it[3];
            it[3] = mpb_nil();
        }
        mpb_value_free(&p);
        *got = 1;
        return MPB_OK;
    }
}

struct mpb_batch {
    mpb_value ops; /* the OPS array being built */
    int err;       /* the first failure to add, reported by mpb_atomic */
};

mpb_batch *mpb_batch_new(void) {
    mpb_batch *b = calloc(1, sizeof *b);
    if (b == NULL) return NULL;
    b->ops = mpb_array_value(8);
    if (b->ops.type != MPB_ARRAY) {
        free(b);
        return NULL;
    }
    return b;
}

int mpb_batch_add(mpb_batch *b, const char *method, const mpb_value *args, size_t nargs) {
    if (b == NULL || method == NULL || (args == NULL && nargs > 0)) return MPB_ERR_ARG;
    mpb_value op = mpb_array_value(2), m = mpb_str(method), params = mpb_array_value(nargs);
    bool ok = op.type == MPB_ARRAY && m.type == MPB_STR && params.type == MPB_ARRAY;
    for (size_t i = 0; ok && i < nargs; i++) {
        mpb_value x;
        ok = mpb_value_copy(&x, &args[i]) == 0 && mpb_value_push(&params, &x) == 0;
    }
    ok = ok && mpb_value_push(&op, &m) == 0 && mpb_value_push(&op, &params) == 0 &&
         mpb_value_push(&b->ops, &op) == 0;
    mpb_value_free(&m);
    mpb_value_free(&params);
    mpb_value_free(&op);
    if (!ok) b->err = MPB_ERR_OOM;
    return ok ? MPB_OK : MPB_ERR_OOM;
}

int mpb_batch_expect(mpb_batch *b, mpb_ref r, int64_t version) {
    mpb_value args[2] = {mpb_refv(r), mpb_int(version)};
    return mpb_batch_add(b, "manager.expect", args, 2);
}

size_t mpb_batch_len(const mpb_batch *b) { return b ? b->ops.v.a->len : 0; }

int mpb_atomic(mpb_context *c, const mpb_batch *b, mpb_value *results) {
    if (results != NULL) *results = mpb_nil();
    if (b == NULL) return null_arg(c, "mpb_atomic", "b");
    if (b->err) {
        c->err = b->err;
        strcpy(c->errkind, "OutOfMemory");
        snprintf(c->errstr, sizeof c->errstr, "mpb_atomic: the batch could not be built");
        return b->err;
    }
    return call_typed(c, "manager.atomic", &b->ops, 1, MPB_ARRAY, "an array", results);
}

void mpb_batch_free(mpb_batch *b) {
    if (b == NULL) return;
    mpb_value_free(&b->ops);
    free(b);
}
