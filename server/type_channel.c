/* type_channel.c - channel: CSP's unbuffered rendezvous, as PyCSP's channels, and
 * manager.select, its alternation.
 *
 * Nothing is stored in a channel: a write waits until a reader takes its VALUE, a read
 * until a writer comes. Every blocking call is a "select" of one or more guards; a
 * plain channel.read or channel.write is a select of one. A call first tries its
 * guards in order (priority: the first that can complete now wins, as PyCSP's
 * PriSelect); if none can, it parks with one offer per guard queued on each guard's
 * channel (readers or writers, oldest first). A later call that completes against an
 * offer completes that whole select and withdraws its other offers: exactly one guard
 * of a select ever takes effect.
 *
 * Since every arrival tries the parked offers first, a channel never holds live
 * readers and writers waiting at once: a rendezvous happens when the second side comes.
 *
 * Dead peers: an offer whose connection is gone is withdrawn (its on_cancel), and one
 * found gone (conn_peer_gone: its socket hung up, though the loop has not seen it yet)
 * is cancelled instead of matched: a dead writer delivers nothing, and a value is never
 * handed to a dead reader while its writer is told "done".
 *
 * Poison and retirement: poison fails every parked and later operation with
 * ChannelPoisoned. channel.join counts readers and writers by connection (in
 * conn->owned: readers in the low 32 bits, writers in the high); when the last joined
 * reader or writer retires, or its connection closes, the channel is retired for good
 * and every parked and later operation fails with ChannelRetired (PyCSP's
 * ChannelRetireException). Only poison is persisted: after a restart no connection has
 * joined anything.
 */
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "mpb_codec.h"
#include "persist.h"
#include "wait.h"
#include "watch.h"

typedef struct chan_sel chan_sel;

typedef struct chan_offer {
    struct chan_offer *prev, *next; /* in its channel's readers or writers */
    mpb_object *chan;               /* pinned while the offer exists */
    chan_sel *sel;
    uint32_t index;                 /* the guard's position in its select */
    bool write;
    bool linked;
    bool counted;                   /* item is counted as stored (objects_retain_value) */
    mpb_value item;                 /* a write's VALUE */
} chan_offer;

struct chan_sel {
    mpb_waiter *w;
    bool select; /* manager.select: answers [INDEX, VALUE] (nil on timeout) */
    uint32_t n;
    chan_offer offers[];
};

typedef struct olist {
    chan_offer *head, *tail;
    size_t len;
} olist;

typedef struct cstate {
    olist readers, writers; /* parked offers, oldest first */
    bool poisoned, retired;
    uint32_t nreaders, nwriters; /* joined now */
    uint64_t rendezvous;
} cstate;

#define CH(o) ((cstate *)(o)->u.ptr)
#define MAX_GUARDS 1000

static int channel_init(mpb_object *o)
{
    o->u.ptr = calloc(1, sizeof(cstate));
    return o->u.ptr ? 0 : -1;
}

/* Offers pin their channel: none is left when it goes. */
static void channel_destroy(mpb_object *o)
{
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t channel_length(const mpb_object *o)
{
    return CH(o)->readers.len + CH(o)->writers.len;
}

static size_t channel_memsize(const mpb_object *o)
{
    (void)o;
    return sizeof(cstate); /* parked values are counted with their waiters */
}

static void retire_channel(mpb_object *o);

_Static_assert(sizeof(uintptr_t) >= 8, "join counts: 32 bits each in a uintptr_t");
#define READER_BITS ((uintptr_t)0xffffffffu)
#define WRITER_ONE ((uintptr_t)1 << 32)

static void channel_conn_gone(mpb_object *o, uint64_t conn_id, uintptr_t count)
{
    (void)conn_id;
    cstate *c = CH(o);
    uint32_t nr = (uint32_t)(count & READER_BITS), nw = (uint32_t)(count >> 32);
    c->nreaders -= nr <= c->nreaders ? nr : c->nreaders;
    c->nwriters -= nw <= c->nwriters ? nw : c->nwriters;
    if ((nr && c->nreaders == 0) || (nw && c->nwriters == 0)) {
        if (c->retired) return;
        retire_channel(o);
        /* A change no call made: counted as the channel.retire it amounts to. */
        const char *end = nr && c->nreaders == 0 ? "reader" : "writer";
        msgpack_object arg = {.type = MSGPACK_OBJECT_STR,
                              .via.str = {.size = (uint32_t)strlen(end), .ptr = end}};
        watch_bump(o, "channel.retire", &arg, 1);
        persist_log_version(o);
    }
}

const mpb_type_ops mpb_channel_ops = {channel_init, channel_destroy, channel_length,
                                      channel_memsize, channel_conn_gone};

/* INITIAL: nil, or {"poisoned": BOOL} (what a snapshot stores). */
bool channel_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    const msgpack_object *a = &r->args[i];
    if (a->type != MSGPACK_OBJECT_MAP) {
        reply_error(r, MPB_E_TYPE, "%s: a channel takes no INITIAL (nil)", r->info->name);
        return false;
    }
    for (uint32_t k = 0; k < a->via.map.size; k++) {
        const msgpack_object_kv *kv = &a->via.map.ptr[k];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 8 ||
            memcmp(kv->key.via.str.ptr, "poisoned", 8) != 0 ||
            kv->val.type != MSGPACK_OBJECT_BOOLEAN) {
            reply_error(r, MPB_E_VALUE, "%s: a channel's INITIAL is nil or {\"poisoned\": BOOL}",
                        r->info->name);
            return false;
        }
        CH(o)->poisoned = kv->val.via.boolean;
    }
    return true;
}

void channel_dump(const mpb_object *o, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "poisoned", 8);
    if (CH(o)->poisoned) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

/*--- Offers ---*/

static olist *list_of(mpb_object *ch, bool write)
{
    return write ? &CH(ch)->writers : &CH(ch)->readers;
}

static void offer_link(chan_offer *f)
{
    olist *l = list_of(f->chan, f->write);
    f->prev = l->tail;
    f->next = NULL;
    if (l->tail) l->tail->next = f;
    else l->head = f;
    l->tail = f;
    l->len++;
    f->linked = true;
}

static void offer_unlink(chan_offer *f)
{
    if (!f->linked) return;
    olist *l = list_of(f->chan, f->write);
    if (f->prev) f->prev->next = f->next;
    else l->head = f->next;
    if (f->next) f->next->prev = f->prev;
    else l->tail = f->prev;
    l->len--;
    f->linked = false;
}

/* Withdraw every offer of the select and free it (values released, channels
 * unpinned); its waiter stays, for the caller to answer or free. */
static void sel_free(chan_sel *s)
{
    for (uint32_t i = 0; i < s->n; i++) {
        chan_offer *f = &s->offers[i];
        offer_unlink(f);
        if (f->counted) objects_discard_value(&f->item); /* a nil costs too: flag */
        objects_unpin(f->chan);
    }
    s->w->ext = NULL;
    free(s);
}

static void on_cancel(mpb_waiter *w)
{
    if (w->ext) sel_free(w->ext);
}

static void on_timeout(mpb_waiter *w)
{
    chan_sel *s = w->ext;
    bool select = s->select;
    sel_free(s);
    mpb_req r;
    wait_req(w, &r);
    if (select) reply_nil(&r);
    else reply_error(&r, MPB_E_TIMEOUT, "%s: no rendezvous within the timeout", r.info->name);
    wait_done(w);
}

/* Answer a parked select: [INDEX, VALUE] or, plain, VALUE (nil for a write). */
static void answer(mpb_req *r, bool select, uint32_t index, const mpb_value *v)
{
    if (!select) {
        reply_value(r, v);
        return;
    }
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint32(pk, index);
    mpb_value_pack(pk, v);
}

/* Fail the parked select of offer f with kind. */
static void fail_offer(chan_offer *f, mpb_errkind kind, const char *msg)
{
    mpb_waiter *w = f->sel->w;
    sel_free(f->sel);
    mpb_req r;
    wait_req(w, &r);
    reply_error(&r, kind, "%s: %s", r.info->name, msg);
    wait_done(w);
}

static void fail_all(mpb_object *o, mpb_errkind kind, const char *msg)
{
    cstate *c = CH(o);
    while (c->readers.head) fail_offer(c->readers.head, kind, msg);
    while (c->writers.head) fail_offer(c->writers.head, kind, msg);
}

static void retire_channel(mpb_object *o)
{
    if (CH(o)->retired) return;
    CH(o)->retired = true;
    fail_all(o, MPB_E_CHANNEL_RETIRED, "the channel is retired");
}

/* The oldest offer on the other side of a guard (write: a reader; read: a writer)
 * whose connection is alive; offers of gone connections are cancelled on the way. */
static chan_offer *live_partner(mpb_object *ch, bool write)
{
    olist *l = list_of(ch, !write);
    chan_offer *f;
    while ((f = l->head) && conn_peer_gone(f->sel->w->conn)) wait_conn_closed(f->sel->w->conn);
    return f;
}

/*--- Guards ---*/

typedef struct guard {
    mpb_object *chan;
    bool write;
    mpb_value item; /* a write's VALUE (owned, not yet counted as stored) */
} guard;

static void guards_free(guard *g, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) mpb_value_free(&g[i].item);
    free(g);
}

/* A select that completed on channel ch counts as a write to ch: manager.select has
 * no object of its own, so neither dispatch_run nor wait_done bumps a version for it
 * (a plain read or write is bumped there, as its channel is its object). */
static void select_bump(mpb_object *ch)
{
    watch_bump(ch, "manager.select", NULL, 0);
    persist_log_version(ch); /* lazy, as for every write that is not logged */
}

/* Complete guard i of the calling request against the parked offer f. */

static void rendezvous(mpb_req *r, bool select, guard *g, uint32_t i, chan_offer *f)
{
    mpb_waiter *w = f->sel->w;
    bool their_select = f->sel->select;
    uint32_t their_index = f->index;
    mpb_value v = mpb_nil();
    if (!g[i].write) { /* we read what the parked writer offered */
        v = f->item;
        f->item = mpb_nil();
        f->counted = false; /* v is: released below, once sent */
    }
    sel_free(f->sel);
    CH(g[i].chan)->rendezvous++;
    /* A rendezvous is a write to the channel by each side (watch.h): a channel.read or
     * channel.write counts as its own write (dispatch_run, or wait_done when parked),
     * but manager.select has no object of its own, so its side is counted here, on
     * the channel that met. */
    if (select) select_bump(g[i].chan);
    if (their_select) select_bump(g[i].chan);
    mpb_req them;
    wait_req(w, &them);
    mpb_value nil = mpb_nil();
    if (g[i].write) {
        answer(&them, their_select, their_index, &g[i].item);
        answer(r, select, i, &nil);
    } else {
        answer(&them, their_select, their_index, &nil);
        answer(r, select, i, &v);
        objects_discard_value(&v);
    }
    wait_done(w);
}

static void on_park_failed(guard *g, uint32_t n, chan_sel *s)
{
    free(s);
    guards_free(g, n);
}

/* Run the guards of a select (plain read/write: one guard), taking g. */
static void run_guards(mpb_req *r, guard *g, uint32_t n, bool select, double timeout)
{
    for (uint32_t i = 0; i < n; i++) {
        if (CH(g[i].chan)->poisoned) {
            reply_error(r, MPB_E_CHANNEL_POISONED, "%s: channel %llu is poisoned", r->info->name,
                        (unsigned long long)g[i].chan->id);
            guards_free(g, n);
            return;
        }
        if (CH(g[i].chan)->retired) {
            reply_error(r, MPB_E_CHANNEL_RETIRED, "%s: channel %llu is retired", r->info->name,
                        (unsigned long long)g[i].chan->id);
            guards_free(g, n);
            return;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        chan_offer *f = live_partner(g[i].chan, g[i].write);
        if (f) {
            /* A caller gone since it sent this (its request and its hang-up read in
             * one loop round) completes nothing: its partner stays parked, never told
             * "done" for a value that would go to nobody (or delivered one from a
             * writer that is gone). */
            if (!wait_caller_gone(r)) rendezvous(r, select, g, i, f);
            guards_free(g, n);
            return;
        }
    }
    if (timeout == 0) {
        if (select) reply_nil(r);
        else reply_error(r, MPB_E_TIMEOUT, "%s: no rendezvous now", r->info->name);
        guards_free(g, n);
        return;
    }
    chan_sel *s = calloc(1, sizeof *s + n * sizeof(chan_offer));
    if (!s) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        guards_free(g, n);
        return;
    }
    mpb_waiter *w = wait_park(r, g[0].chan, NULL, timeout, on_timeout);
    if (!w) {
        on_park_failed(g, n, s);
        return;
    }
    s->w = w;
    s->select = select;
    s->n = n;
    w->n = n; /* for manager.clients' "waiting" */
    w->ext = s;
    w->on_cancel = on_cancel;
    for (uint32_t i = 0; i < n; i++) {
        chan_offer *f = &s->offers[i];
        f->chan = g[i].chan;
        f->sel = s;
        f->index = i;
        f->write = g[i].write;
        f->item = g[i].item;
        g[i].item = mpb_nil();
        if (f->write) { /* stored while it waits */
            objects_retain_value(&f->item);
            f->counted = true;
        }
        objects_pin(f->chan);
        offer_link(f);
    }
    free(g);
}

/* Is m the string s? */
static bool str_is(const msgpack_object *m, const char *s)
{
    const char *p;
    size_t n;
    return mpb_object_bytes(m, &p, &n) && n == strlen(s) && memcmp(p, s, n) == 0;
}

/* VALUE from a guard (checked as arg_value checks a parameter). */
static bool guard_value(mpb_req *r, const msgpack_object *m, uint32_t i, mpb_value *out)
{
    char err[160];
    mpb_errkind k = mpb_value_from_object(m, out, g_config.max_depth, err, sizeof err);
    if (k != MPB_E_NONE) {
        reply_error(r, k, "%s: guard %u: %s", r->info->name, i, err);
        return false;
    }
    mpb_ref bad;
    if (!objects_refs_valid(out, &bad)) {
        mpb_value_free(out);
        reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: guard %u: no object %llu", r->info->name, i,
                    (unsigned long long)bad);
        return false;
    }
    if (!limits_memory_for_value(r, out)) {
        mpb_value_free(out);
        return false;
    }
    return true;
}

/* Guard i: [CHAN, "read"] or [CHAN, "write", VALUE]. false after replying. */
static bool parse_guard(mpb_req *r, const msgpack_object *m, uint32_t i, guard *g)
{
    if (m->type != MSGPACK_OBJECT_ARRAY || m->via.array.size < 2) {
        reply_error(r, MPB_E_TYPE, "%s: guard %u must be [CHAN, \"read\"] or [CHAN, \"write\", "
                    "VALUE]", r->info->name, i);
        return false;
    }
    const msgpack_object *a = m->via.array.ptr;
    mpb_ref ref;
    if (!mpb_object_is_ref(&a[0], &ref)) {
        reply_error(r, MPB_E_TYPE, "%s: guard %u: CHAN must be a reference", r->info->name, i);
        return false;
    }
    g->chan = objects_get(ref);
    if (!g->chan) {
        reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: guard %u: no object %llu", r->info->name, i,
                    (unsigned long long)ref);
        return false;
    }
    if (g->chan->type != MPB_OT_CHANNEL) {
        reply_error(r, MPB_E_TYPE, "%s: guard %u: object %llu is a %s, not a channel",
                    r->info->name, i, (unsigned long long)ref, objects_typeid(g->chan));
        return false;
    }
    if (str_is(&a[1], "read") && m->via.array.size == 2) {
        g->write = false;
        return true;
    }
    if (str_is(&a[1], "write") && m->via.array.size == 3) {
        g->write = true;
        return guard_value(r, &a[2], i, &g->item);
    }
    reply_error(r, MPB_E_VALUE, "%s: guard %u must be [CHAN, \"read\"] or [CHAN, \"write\", "
                "VALUE]", r->info->name, i);
    return false;
}

/*--- Commands ---*/

/* manager.select GUARDS [TIMEOUT] */
void manager_select(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 1, &timeout)) return;
    const msgpack_object *a = &r->args[0];
    if (a->type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, MPB_E_TYPE, "manager.select: GUARDS must be an array");
        return;
    }
    uint32_t n = a->via.array.size;
    if (n == 0 || n > MAX_GUARDS) {
        reply_error(r, MPB_E_VALUE, "manager.select: 1 to %d guards, not %u", MAX_GUARDS, n);
        return;
    }
    guard *g = calloc(n, sizeof *g);
    if (!g) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "manager.select: out of memory");
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!parse_guard(r, &a->via.array.ptr[i], i, &g[i])) {
            guards_free(g, n);
            return;
        }
    }
    run_guards(r, g, n, true, timeout);
}

/* channel.write REF VALUE [TIMEOUT] */
void channel_write(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 1, &timeout)) return;
    guard *g = calloc(1, sizeof *g);
    if (!g) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "channel.write: out of memory");
        return;
    }
    *g = (guard){.chan = r->self, .write = true};
    if (!arg_value(r, 0, &g->item)) {
        free(g);
        return;
    }
    run_guards(r, g, 1, false, timeout);
}

/* channel.read REF [TIMEOUT] */
void channel_read(mpb_req *r)
{
    double timeout;
    if (!arg_timeout(r, 0, &timeout)) return;
    guard *g = calloc(1, sizeof *g);
    if (!g) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "channel.read: out of memory");
        return;
    }
    *g = (guard){.chan = r->self, .write = false};
    run_guards(r, g, 1, false, timeout);
}

/* channel.poison REF */
void channel_poison(mpb_req *r)
{
    reply_nil(r);
    if (CH(r->self)->poisoned) return;
    CH(r->self)->poisoned = true;
    fail_all(r->self, MPB_E_CHANNEL_POISONED, "the channel is poisoned");
}

/* The "reader"|"writer" argument: 0 reader, 1 writer, -1 after replying. */
static int kind_arg(mpb_req *r)
{
    const char *p;
    size_t n;
    if (!arg_str(r, 0, &p, &n)) return -1;
    if (str_is(&r->args[0], "reader")) return 0;
    if (str_is(&r->args[0], "writer")) return 1;
    reply_error(r, MPB_E_VALUE, "%s: the end is \"reader\" or \"writer\"", r->info->name);
    return -1;
}

/* channel.join REF "reader"|"writer" */
void channel_join(mpb_req *r)
{
    int k = kind_arg(r);
    if (k < 0) return;
    cstate *c = CH(r->self);
    if (c->poisoned) {
        reply_error(r, MPB_E_CHANNEL_POISONED, "channel.join: the channel is poisoned");
        return;
    }
    if (c->retired) {
        reply_error(r, MPB_E_CHANNEL_RETIRED, "channel.join: the channel is retired");
        return;
    }
    uintptr_t bits = (uintptr_t)idmap_get(&r->conn->owned, r->self->id);
    uintptr_t one = k ? WRITER_ONE : 1;
    uint32_t mine = k ? (uint32_t)(bits >> 32) : (uint32_t)(bits & READER_BITS);
    if (mine == UINT32_MAX || (k ? c->nwriters : c->nreaders) == UINT32_MAX) {
        reply_error(r, MPB_E_OVERFLOW, "channel.join: too many joins");
        return;
    }
    if (idmap_put(&r->conn->owned, r->self->id, (void *)(bits + one)) < 0) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "channel.join: out of memory");
        return;
    }
    if (k) c->nwriters++;
    else c->nreaders++;
    reply_nil(r);
}

/* channel.retire REF "reader"|"writer" */
void channel_retire(mpb_req *r)
{
    int k = kind_arg(r);
    if (k < 0) return;
    cstate *c = CH(r->self);
    uintptr_t bits = (uintptr_t)idmap_get(&r->conn->owned, r->self->id);
    uint32_t mine = k ? (uint32_t)(bits >> 32) : (uint32_t)(bits & READER_BITS);
    if (mine == 0) {
        reply_error(r, MPB_E_VALUE, "channel.retire: this connection has not joined as a %s",
                    k ? "writer" : "reader");
        return;
    }
    bits -= k ? WRITER_ONE : 1;
    if (bits) idmap_put(&r->conn->owned, r->self->id, (void *)bits); /* key exists */
    else idmap_del(&r->conn->owned, r->self->id);
    uint32_t *count = k ? &c->nwriters : &c->nreaders;
    if (*count > 0) (*count)--;
    reply_nil(r);
    if (*count == 0) retire_channel(r->self);
}

/* channel.info REF */
void channel_info(mpb_req *r)
{
    const cstate *c = CH(r->self);
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_map(pk, 7);
    msgpack_pack_str_with_body(pk, "poisoned", 8);
    if (c->poisoned) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    msgpack_pack_str_with_body(pk, "retired", 7);
    if (c->retired) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    msgpack_pack_str_with_body(pk, "readers", 7);
    msgpack_pack_uint32(pk, c->nreaders);
    msgpack_pack_str_with_body(pk, "writers", 7);
    msgpack_pack_uint32(pk, c->nwriters);
    msgpack_pack_str_with_body(pk, "waiting_readers", 15);
    msgpack_pack_uint64(pk, c->readers.len);
    msgpack_pack_str_with_body(pk, "waiting_writers", 15);
    msgpack_pack_uint64(pk, c->writers.len);
    msgpack_pack_str_with_body(pk, "rendezvous", 10);
    msgpack_pack_uint64(pk, c->rendezvous);
}
