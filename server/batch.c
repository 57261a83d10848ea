/* batch.c - manager.atomic [OPS]: run [METHOD, PARAMS] operations in order with no
 * other request in between; if one fails, undo every change the batch made.
 *
 * Undo by copy: before an operation first writes an object, the object's whole state
 * is copied into a hidden object (its snapshot form, persist_dump_state, filled the
 * way a snapshot load fills it). On failure each written object gets its copy's state
 * back (the two states are swapped, and the hidden object frees what the batch left);
 * on success the copies are dropped. Why a copy rather than an undo log of inverse
 * operations: it is one generic path for every type and every write method, with no
 * inverse to get wrong for list.sort, set.symmetric_difference_update or a slice
 * assignment, and a new write method needs nothing here. The price is O(N) per object
 * written (a batch on a big list copies it) and room for the copy under --max-memory;
 * batches are meant for a few small objects.
 *
 * What an undo could not take back is refused: methods that may wait (MPB_F_BLOCKS),
 * writes that are not logged (lock and condition ownership, holds), the ones acting
 * on the broker or this connection (manager.* other than reads), semaphore.release
 * (it changes ownership), and a write to an object with parked requests on it (the
 * write could answer one: a queue item handed to another connection cannot be taken
 * back). wait_change requests do not count: they are answered after the batch.
 *
 * Persistence: the calls the operations log are collected and logged as one
 * ["batch", ...] record on success (persist_batch_begin/end), so that replay has all
 * of a batch or none. Notifications wait for the end of the request (watch.c) and
 * are dropped with the bumps of a failed batch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "mpb_codec.h"
#include "persist.h"
#include "watch.h"

/* watch.c */
size_t watch_pending_mark(void);
void watch_pending_drop(size_t mark);

typedef struct touched {
    mpb_object *o;
    mpb_object *copy; /* pinned while the batch runs */
    uint64_t version;
    size_t charged;   /* o->charged before the batch */
} touched;

static bool active;
static touched *tv;
static size_t ntv, tv_cap;

bool batch_active(void) { return active; }

static touched *find(const mpb_object *o)
{
    for (size_t i = 0; i < ntv; i++)
        if (tv[i].o == o) return &tv[i];
    return NULL;
}

/* Fill copy with o's state: its snapshot form, then (queues) its items. Replies to r
 * and returns false when that fails (out of memory, --max-memory). */
static bool fill_copy(mpb_req *r, mpb_object *o, mpb_object *copy)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    persist_dump_state(o, &pk);
    size_t state_len = sb.size;
    size_t nitems = o->type == MPB_OT_QUEUE ? queue_dump_items(o, &pk) : 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    bool ok = msgpack_unpack_next(&u, sb.data, state_len, &off) == MSGPACK_UNPACK_SUCCESS;
    if (ok) {
        mpb_req cr = {.conn = r->conn, .msgid = r->msgid, .pk = r->pk, .method = r->method,
                      .info = r->info, .args = &u.data, .nargs = 1};
        ok = manager_init_object(&cr, copy, 0);
        if (!ok) r->failed = r->replied = true;
    }
    /* A dict, namespace or set copied by reinserting its entries is compacted: its
     * entries would get new positions, and a cursor walk (dict.items / set.items START)
     * running across a failed batch would skip or repeat entries. The copy takes the
     * original's layout, tombstones included, so that an undo puts back the positions. */
    if (ok && (o->type == MPB_OT_DICT || o->type == MPB_OT_NAMESPACE || o->type == MPB_OT_SET) &&
        mpb_map_layout_like(copy->u.map, o->u.map) != 0) {
        ok = false;
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: no room to copy object %llu for the batch's undo",
                    r->info->name, (unsigned long long)o->id);
    }
    /* Queue items: ["call", "queue.put_nowait", [REF, ITEM]] each. */
    for (size_t i = 0; ok && i < nitems; i++) {
        ok = msgpack_unpack_next(&u, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS;
        if (!ok) break;
        const msgpack_object *params = &u.data.via.array.ptr[2];
        mpb_req qr = {.conn = r->conn, .msgid = r->msgid, .pk = r->pk,
                      .method = MPB_M_QUEUE_PUT_NOWAIT,
                      .info = &mpb_methods[MPB_M_QUEUE_PUT_NOWAIT], .self = copy,
                      .args = params->via.array.ptr + 1, .nargs = 1};
        msgpack_sbuffer scratch; /* the put's nil reply: not the op's */
        msgpack_packer spk;
        msgpack_sbuffer_init(&scratch);
        msgpack_packer_init(&spk, &scratch, msgpack_sbuffer_write);
        qr.pk = &spk;
        queue_put_nowait(&qr);
        ok = !qr.failed;
        msgpack_sbuffer_destroy(&scratch);
        if (!ok)
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: no room to copy object %llu for the batch's undo",
                        r->info->name, (unsigned long long)o->id);
    }
    if (!ok && !r->replied)
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: cannot copy object %llu for the batch's undo",
                    r->info->name, (unsigned long long)o->id);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return ok;
}

/* Copy o before the batch's first write to it. false after replying. */
static bool touch(mpb_req *r, mpb_object *o)
{
    if (find(o)) return true;
    if (ntv == tv_cap) {
        size_t ncap = tv_cap ? tv_cap * 2 : 8;
        touched *n = realloc(tv, ncap * sizeof *n);
        if (!n) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
            return false;
        }
        tv = n;
        tv_cap = ncap;
    }
    mpb_object *copy = objects_create(o->type, o->variant, NULL, 0);
    if (!copy) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        return false;
    }
    objects_pin(copy); /* nothing else holds it; unpinned at the end, then freed */
    if (!fill_copy(r, o, copy)) {
        objects_unpin(copy);
        return false;
    }
    tv[ntv++] = (touched){.o = o, .copy = copy, .version = o->version, .charged = o->charged};
    return true;
}

bool batch_admit(mpb_req *r)
{
    if (!(r->info->flags & MPB_F_WRITE) || !r->self) return true;
    mpb_object *o = r->self;
    if (o->pins > watch_change_waiters(o)) {
        reply_error(r, MPB_E_RUNTIME, "%s: object %llu has requests parked on it: a batch may "
                    "not write it (it could answer them, which no undo takes back)",
                    r->info->name, (unsigned long long)o->id);
        return false;
    }
    return touch(r, o);
}

/* Give every touched object its state and version from before the batch. */
static void undo(void)
{
    for (size_t i = ntv; i-- > 0;) {
        touched *t = &tv[i];
        mpb_object *o = t->o, *c = t->copy;
        /* The copy's state was charged as the copy's; the state the batch left goes
         * to the copy (and is freed with it), so the charges follow the states. */
        size_t now = o->charged;
        c->charged = c->charged + now - t->charged;
        o->charged = t->charged;
        unsigned char tmp[sizeof o->u];
        memcpy(tmp, &o->u, sizeof o->u);
        memcpy(&o->u, &c->u, sizeof o->u);
        memcpy(&c->u, tmp, sizeof o->u);
        o->version = t->version;
    }
}

static void finish(void)
{
    for (size_t i = 0; i < ntv; i++) objects_unpin(tv[i].copy); /* freed by objects_collect */
    ntv = 0;
    active = false;
}

/* Why an op may never be in a batch; NULL when it may. */
static const char *refused(int id)
{
    const mpb_method_info *m = &mpb_methods[id];
    if (id == MPB_M_MANAGER_ATOMIC) return "batches do not nest";
    if (m->flags & MPB_F_BLOCKS) return "it may wait (use the _nowait form)";
    if (m->flags & MPB_F_ADMIN) return "an admin method";
    if (m->self == MPB_OT_NONE && !(m->flags & MPB_F_READ))
        return "it acts on the broker or the connection, which no undo takes back";
    if ((m->flags & (MPB_F_WRITE | MPB_F_NOLOG)) == (MPB_F_WRITE | MPB_F_NOLOG))
        return "its effect (ownership) is not one an undo takes back";
    if (id == MPB_M_SEM_RELEASE) return "it changes ownership, which no undo takes back";
    /* A copy is made from the snapshot form, and a pipe's or channel's is not its whole
     * state (values in flight, the connections joined, the rendezvous count): an undo
     * from it would lose them (a failed batch that poisoned a channel would unjoin
     * every reader and writer). */
    if ((m->flags & MPB_F_WRITE) && (m->self == MPB_OT_CHANNEL || m->self == MPB_OT_PIPE))
        return "a channel's or pipe's state is not one an undo can copy";
    return NULL;
}

/* The error an op's reply holds (its kind and message), from [1, 0, [KIND, MSG], nil]. */
static void op_error(const msgpack_sbuffer *sb, mpb_errkind *kind, char *msg, size_t msglen)
{
    *kind = MPB_E_RUNTIME;
    snprintf(msg, msglen, "?");
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, sb->data, sb->size, NULL) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size == 4) {
        const msgpack_object *e = &u.data.via.array.ptr[2];
        const char *k, *m;
        size_t kl, ml;
        if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size == 2 &&
            mpb_object_bytes(&e->via.array.ptr[0], &k, &kl) &&
            mpb_object_bytes(&e->via.array.ptr[1], &m, &ml)) {
            mpb_errkind ek = mpb_errkind_from_name(k, kl);
            if (ek != MPB_E_NONE) *kind = ek;
            snprintf(msg, msglen, "%.*s", (int)ml, m);
        }
    }
    msgpack_unpacked_destroy(&u);
}

/* manager.atomic OPS */
void manager_atomic(mpb_req *r)
{
    const msgpack_object *ops = &r->args[0];
    if (ops->type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, MPB_E_TYPE, "manager.atomic: OPS must be an array of [METHOD, PARAMS]");
        return;
    }
    uint32_t n = ops->via.array.size;
    int *ids = calloc(n ? n : 1, sizeof *ids);
    if (!ids) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "manager.atomic: out of memory");
        return;
    }
    /* Every op is looked at before any runs: a malformed batch changes nothing. */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *op = &ops->via.array.ptr[i];
        const char *name;
        size_t len;
        if (op->type != MSGPACK_OBJECT_ARRAY || op->via.array.size != 2 ||
            !mpb_object_bytes(&op->via.array.ptr[0], &name, &len) ||
            op->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY) {
            reply_error(r, MPB_E_TYPE, "op %u: TypeError: manager.atomic: an op is [METHOD, PARAMS]", i);
            free(ids);
            return;
        }
        ids[i] = mpb_method_lookup(name, len);
        if (ids[i] < 0) {
            reply_error(r, MPB_E_NO_SUCH_METHOD, "op %u: NoSuchMethod: no method '%.*s'", i,
                        (int)(len > 64 ? 64 : len), name);
            free(ids);
            return;
        }
        const char *why = refused(ids[i]);
        if (why) {
            reply_error(r, MPB_E_BAD_REQUEST, "op %u: BadRequest: %s is not allowed in a batch: %s",
                        i, mpb_methods[ids[i]].name, why);
            free(ids);
            return;
        }
    }
    msgpack_sbuffer results, one;
    msgpack_packer rpk, opk;
    msgpack_sbuffer_init(&results);
    msgpack_sbuffer_init(&one);
    msgpack_packer_init(&rpk, &results, msgpack_sbuffer_write);
    msgpack_packer_init(&opk, &one, msgpack_sbuffer_write);
    msgpack_pack_array(&rpk, n);
    size_t mark = watch_pending_mark();
    active = true;
    persist_batch_begin();
    uint32_t failed_at = n;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *op = &ops->via.array.ptr[i];
        msgpack_sbuffer_clear(&one);
        mpb_req sub = {.conn = r->conn, .msgid = 0, .pk = &opk, .method = ids[i],
                       .info = &mpb_methods[ids[i]]};
        dispatch_run(&sub, &op->via.array.ptr[1]);
        if (sub.failed || !sub.replied) {
            failed_at = i;
            break;
        }
        /* The reply is [1, 0, nil, RESULT]: 4 bytes of header, then the result. */
        msgpack_sbuffer_write(&results, one.data + 4, one.size - 4);
    }
    if (failed_at < n) {
        mpb_errkind kind;
        char msg[256];
        op_error(&one, &kind, msg, sizeof msg);
        undo();
        watch_pending_drop(mark);
        persist_batch_end(false);
        finish();
        reply_error(r, kind, "op %u: %s: %s", failed_at, mpb_errkind_name(kind), msg);
    } else {
        persist_batch_end(true);
        finish();
        msgpack_packer *pk = reply_begin(r);
        pk->callback(pk->data, results.data, results.size);
    }
    msgpack_sbuffer_destroy(&results);
    msgpack_sbuffer_destroy(&one);
    free(ids);
}
