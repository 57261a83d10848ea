/* type_semaphore.c - Semaphore and BoundedSemaphore, handed FIFO to waiters.
 *
 * Python's semaphores have no owner; to give back what a dead connection acquired,
 * each semaphore counts acquisitions per connection id (holders). A release is
 * charged to the releasing connection's own acquisitions first, else to orphans, else
 * to anyone's, so a dead connection never returns units that someone else already
 * returned.
 *
 * A dead holder's units go to waiters at once, one each; those left over become
 * orphans (as a dead owner's lock, type_lock.c): still acquired, by nobody. Any
 * connection may release one (a BoundedSemaphore's unit acquired by a process that
 * exited can be released by another, as in Python), and an acquire that finds no
 * free unit takes one, so no waiter is ever stuck behind a dead holder. For
 * persistence an orphan is a unit still held by the replay (a restart returns it, as
 * every held unit): only the units handed to waiters are logged as released.
 */
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "persist.h"
#include "wait.h"

typedef struct semstate {
    int64_t value, initial;
    int64_t orphans; /* units acquired by connections that died, released by nobody */
    mpb_waitq waiters;
    mpb_idmap holders; /* conn id -> units acquired and not released */
} semstate;

#define SEM(o) ((semstate *)(o)->u.ptr)

static int sem_init(mpb_object *o)
{
    semstate *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->value = s->initial = 1;
    o->u.ptr = s;
    return 0;
}

static void sem_destroy(mpb_object *o)
{
    idmap_free(&SEM(o)->holders);
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t sem_length(const mpb_object *o) { return (size_t)SEM(o)->value; }
/* The fixed state only, as a lock's (its owner is bookkeeping of the connections,
 * not stored data): it is charged once, at creation, when the holders table is
 * empty if a client creates it but not if a snapshot with units held is loaded;
 * counting the table would make the two counts differ. */
static size_t sem_memsize(const mpb_object *o)
{
    (void)o;
    return sizeof(semstate);
}

/* Record one unit taken by c. false on allocation failure (nothing taken). */
static bool take(mpb_object *o, mpb_conn *c)
{
    semstate *s = SEM(o);
    uintptr_t n = (uintptr_t)idmap_get(&s->holders, c->id);
    if (idmap_put(&s->holders, c->id, (void *)(n + 1)) < 0) return false;
    if (n == 0 && objects_own(&c->owned, o) < 0) {
        idmap_del(&s->holders, c->id);
        return false;
    }
    s->value--;
    return true;
}

static void uncharge(semstate *s, uint64_t conn_id, int64_t units);

/* Uncharge `units` from the holders: conn_id's own first, then anyone's. */
static void uncharge_holders(semstate *s, uint64_t conn_id, int64_t units)
{
    while (units > 0) {
        uint64_t id = conn_id;
        uintptr_t n = (uintptr_t)idmap_get(&s->holders, id);
        if (n == 0) {
            size_t it = 0;
            void *v;
            if (!idmap_next(&s->holders, &it, &id, &v)) return; /* nobody: over-release */
            n = (uintptr_t)v;
        }
        uintptr_t k = (uintptr_t)units < n ? (uintptr_t)units : n;
        if (n - k) idmap_put(&s->holders, id, (void *)(n - k));
        else idmap_del(&s->holders, id);
        units -= (int64_t)k;
    }
}

/* Hand units to waiters, oldest first. */
static void handoff(mpb_object *o)
{
    semstate *s = SEM(o);
    mpb_waiter *w;
    while (s->value > 0 && (w = waitq_pop(&s->waiters))) {
        mpb_req r;
        wait_req(w, &r);
        if (take(o, w->conn)) {
            reply_bool(&r, true);
            mpb_value args[2] = {mpb_refv(o->id), mpb_bool(false)};
            persist_log_effect("semaphore.acquire", args, 2); /* granted after parking */
        } else {
            reply_error(&r, MPB_E_OUT_OF_MEMORY, "semaphore.acquire: out of memory");
        }
        wait_done(w);
    }
}

/* The replay's connection (persist.c): at the end of a load it gives back every unit,
 * orphans included, since a restart returns what connections held. */
#define REPLAY_CONN_ID UINT64_MAX

static void sem_conn_gone(mpb_object *o, uint64_t conn_id, uintptr_t count)
{
    (void)count;
    semstate *s = SEM(o);
    int64_t n = (int64_t)(uintptr_t)idmap_del(&s->holders, conn_id);
    if (conn_id == REPLAY_CONN_ID) {
        n += s->orphans;
        s->orphans = 0;
    }
    if (n == 0) return;
    /* value > 0 only while nobody waits: so each waiter takes one of these units. */
    int64_t waiting = (int64_t)s->waiters.len;
    int64_t give = conn_id == REPLAY_CONN_ID || waiting > n ? n : waiting;
    s->orphans += n - give;
    if (give == 0) return;
    s->value += give;
    mpb_value args[2] = {mpb_refv(o->id), mpb_int(give)};
    persist_log_effect("semaphore.release", args, 2); /* its holder died */
    handoff(o);
}

const mpb_type_ops mpb_semaphore_ops = {sem_init, sem_destroy, sem_length, sem_memsize,
                                        sem_conn_gone};

/* The full form {"value": V, "initial": I, "held": H} into *value, *initial, *held;
 * false after replying. Every number must be an int >= 0 (as Python's "semaphore
 * initial value must be >= 0"), and a bounded semaphore's value within its initial
 * one: a client may send this form too, and a negative value would read as 2^64-5
 * units. */
static bool full_form(mpb_req *r, const msgpack_object *a, bool bounded, int64_t *value,
                      int64_t *initial, int64_t *held)
{
    static const char *const keys[] = {"value", "initial", "held"};
    int64_t *slots[] = {value, initial, held};
    for (uint32_t k = 0; k < a->via.map.size; k++) {
        const msgpack_object_kv *kv = &a->via.map.ptr[k];
        const char *key;
        size_t kl;
        int j = 0;
        if (mpb_object_bytes(&kv->key, &key, &kl))
            while (j < 3 && (strlen(keys[j]) != kl || memcmp(key, keys[j], kl) != 0)) j++;
        else
            j = 3;
        if (j == 3) {
            reply_error(r, MPB_E_VALUE, "a semaphore's initial map takes only value, initial, held");
            return false;
        }
        if (kv->val.type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
            kv->val.type != MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            reply_error(r, MPB_E_TYPE, "semaphore %s must be an integer", keys[j]);
            return false;
        }
        if (!mpb_object_int(&kv->val, slots[j]) || *slots[j] < 0) {
            reply_error(r, MPB_E_VALUE, "semaphore %s value must be >= 0 (and below 2^63)",
                        j == 0 ? "initial" : keys[j]); /* Python's words for the value */
            return false;
        }
    }
    if (bounded && *value > *initial) {
        reply_error(r, MPB_E_VALUE, "a bounded semaphore's value cannot pass its initial value");
        return false;
    }
    return true;
}

/* INITIAL: VALUE, or the full form {"value": V, "initial": I, "held": H} (a
 * snapshot: H units acquired by the creating connection). */
bool sem_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    const msgpack_object *a = &r->args[i];
    if (a->type == MSGPACK_OBJECT_MAP) {
        semstate *s = SEM(o);
        int64_t held = 0;
        if (!full_form(r, a, o->variant == 1, &s->value, &s->initial, &held)) return false;
        if (held > 0 && (idmap_put(&s->holders, r->conn->id, (void *)(uintptr_t)held) < 0 ||
                         objects_own(&r->conn->owned, o) < 0)) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
            return false;
        }
        return true;
    }
    int64_t v;
    if (!arg_int(r, i, &v)) return false;
    if (v < 0) {
        reply_error(r, MPB_E_VALUE, "semaphore initial value must be >= 0");
        return false;
    }
    SEM(o)->value = SEM(o)->initial = v;
    return true;
}

/* semaphore.acquire REF [BLOCKING [TIMEOUT]] */
void sem_acquire(mpb_req *r)
{
    bool blocking;
    double timeout;
    if (!arg_bool_opt(r, 0, true, &blocking) || !arg_timeout(r, 1, &timeout)) return;
    if (!blocking && timeout >= 0) {
        reply_error(r, MPB_E_VALUE, "can't specify a timeout for a non-blocking call");
        return;
    }
    semstate *s = SEM(r->self);
    if (s->value > 0 && !s->waiters.head) {
        if (take(r->self, r->conn)) reply_bool(r, true);
        else reply_error(r, MPB_E_OUT_OF_MEMORY, "semaphore.acquire: out of memory");
        return;
    }
    /* An orphan (see above) is taken rather than waited for. In a replay the log holds
     * no orphans: an acquire that succeeded at once with no free unit took one, a unit
     * the replay holds already. */
    if (s->value == 0 && !s->waiters.head && (s->orphans > 0 || persist_is_replay(r->conn))) {
        s->value++;
        if (!take(r->self, r->conn)) {
            s->value--;
            reply_error(r, MPB_E_OUT_OF_MEMORY, "semaphore.acquire: out of memory");
            return;
        }
        if (persist_is_replay(r->conn)) uncharge(s, r->conn->id, 1);
        else s->orphans--;
        reply_bool(r, true);
        return;
    }
    if (!blocking || timeout == 0) reply_bool(r, false);
    else wait_park(r, r->self, &s->waiters, timeout, wait_timeout_false);
}

/* semaphore.release REF [N] */
void sem_release(mpb_req *r)
{
    int64_t n;
    if (!arg_int_opt(r, 0, 1, NULL, &n)) return;
    if (n < 1) {
        reply_error(r, MPB_E_VALUE, "n must be one or more");
        return;
    }
    semstate *s = SEM(r->self);
    if (n > INT64_MAX - s->value) {
        reply_error(r, MPB_E_OVERFLOW, "%s: semaphore value out of the 64-bit range", r->info->name);
        return;
    }
    if (r->self->variant == 1 && s->value + n > s->initial) {
        reply_error(r, MPB_E_VALUE, "Semaphore released too many times");
        return;
    }
    s->value += n;
    uncharge(s, r->conn->id, n);
    reply_nil(r);
    handoff(r->self);
}

/* Uncharge `units` released by conn_id: its own first, then orphans, then anyone's. */
static void uncharge(semstate *s, uint64_t conn_id, int64_t units)
{
    int64_t own = (int64_t)(uintptr_t)idmap_get(&s->holders, conn_id);
    int64_t from_orphans = units - own;
    if (from_orphans > s->orphans) from_orphans = s->orphans;
    if (from_orphans > 0) {
        s->orphans -= from_orphans;
        units -= from_orphans;
    }
    uncharge_holders(s, conn_id, units);
}

/* semaphore.value REF */
void sem_value(mpb_req *r) { reply_int(r, SEM(r->self)->value); }

void sem_dump(const mpb_object *o, msgpack_packer *pk)
{
    const semstate *s = SEM(o);
    int64_t held = 0;
    size_t it = 0;
    uint64_t id;
    void *n;
    while (idmap_next(&s->holders, &it, &id, &n)) held += (int64_t)(uintptr_t)n;
    held += s->orphans; /* still acquired: a restart returns them, as every held unit */
    msgpack_pack_map(pk, 3);
    msgpack_pack_str_with_body(pk, "value", 5);
    msgpack_pack_int64(pk, s->value);
    msgpack_pack_str_with_body(pk, "initial", 7);
    msgpack_pack_int64(pk, s->initial);
    msgpack_pack_str_with_body(pk, "held", 4);
    msgpack_pack_int64(pk, held);
}
