/* type_manager.c - the manager.* methods: creating, naming, holding and listing
 * objects, introspection, ping and shutdown. The broker itself is the "object".
 */
#include <string.h>

#include "mpb_codec.h"
#include "limits.h"
#include "persist.h"
#include "server.h"

static void pack_key(msgpack_packer *pk, const char *k);

typedef bool (*init_fn)(mpb_req *r, mpb_object *o, uint32_t i);

static const init_fn init_from[MPB_OT__COUNT] = {
    [MPB_OT_LIST] = list_init_from,
    [MPB_OT_DICT] = dict_init_from,
    [MPB_OT_NAMESPACE] = ns_init_from,
    [MPB_OT_QUEUE] = queue_init_from,
    [MPB_OT_LOCK] = lock_init_from,
    [MPB_OT_SEMAPHORE] = sem_init_from,
    [MPB_OT_CONDITION] = cond_init_from,
    [MPB_OT_EVENT] = event_init_from,
    [MPB_OT_BARRIER] = barrier_init_from,
    [MPB_OT_VALUE] = value_init_from,
    [MPB_OT_ARRAY] = array_init_from,
    [MPB_OT_SET] = set_init_from,
    [MPB_OT_PIPE] = pipe_init_from,
    [MPB_OT_CHANNEL] = channel_init_from,
};

/* The TYPE argument r->args[i]; MPB_OT_NONE after replying ValueError. */
static mpb_otype type_arg_at(mpb_req *r, uint32_t i, int *variant)
{
    const char *p;
    size_t n;
    if (!arg_str(r, i, &p, &n)) return MPB_OT_NONE;
    mpb_otype t = mpb_typeid_lookup(p, n, variant);
    if (t == MPB_OT_NONE)
        reply_error(r, MPB_E_VALUE, "%s: unknown type '%.*s' (see manager.methods)",
                    r->info->name, (int)(n > 64 ? 64 : n), p);
    return t;
}

static mpb_otype type_arg(mpb_req *r, int *variant) { return type_arg_at(r, 0, variant); }

/* Fill a new object from the INITIAL argument r->args[i] (nil or absent: the
 * type's default). */
bool manager_init_object(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!init_from[o->type](r, o, i)) return false;
    objects_charge_state(o);
    return true;
}

/* Hold o for the calling connection and answer with its reference. */
static void hold_and_reply(mpb_req *r, mpb_object *o)
{
    if (objects_hold(&r->conn->holds, o) < 0) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        objects_maybe_free(o);
        return;
    }
    reply_ref(r, o->id);
}

/* manager.create TYPE [INITIAL] */
void manager_create(mpb_req *r)
{
    int variant;
    mpb_otype t = type_arg(r, &variant);
    if (t == MPB_OT_NONE || persist_refuses_create(r)) return;
    mpb_object *o = objects_create(t, variant, NULL, 0);
    if (!o) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "manager.create: out of memory");
        return;
    }
    if (!manager_init_object(r, o, 1) || !limits_memory_after_create(r)) {
        objects_maybe_free(o); /* unheld, unnamed: goes at once */
        return;
    }
    persist_log_create(o, r->nargs > 1 ? &r->args[1] : NULL);
    hold_and_reply(r, o);
}

/* manager.open TYPE NAME [INITIAL] */
void manager_open(mpb_req *r)
{
    int variant;
    mpb_otype t = type_arg(r, &variant);
    const char *name;
    size_t n;
    if (t == MPB_OT_NONE || !arg_str(r, 1, &name, &n)) return;
    mpb_object *o = objects_by_name(name, n);
    if (o && (o->type != t || o->variant != variant)) {
        reply_error(r, MPB_E_TYPE, "%s: object '%.*s' is a %s, not a %s", r->info->name,
                    (int)(n > 64 ? 64 : n), name, objects_typeid(o), mpb_typeid_name(t, variant));
        return;
    }
    if (!o) {
        if (persist_refuses_create(r)) return;
        if (!(o = objects_create(t, variant, name, n))) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "manager.open: out of memory");
            return;
        }
        if (!manager_init_object(r, o, 2) || !limits_memory_after_create(r)) {
            objects_unname(o); /* frees it */
            return;
        }
        persist_log_create(o, r->nargs > 2 ? &r->args[2] : NULL);
    }
    hold_and_reply(r, o);
}

/* manager.lookup NAME */
void manager_lookup(mpb_req *r)
{
    const char *name;
    size_t n;
    if (!arg_str(r, 0, &name, &n)) return;
    mpb_object *o = objects_by_name(name, n);
    if (o) reply_ref(r, o->id);
    else reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: no object named '%.*s'", r->info->name,
                    (int)(n > 64 ? 64 : n), name);
}

/* manager.release REF */
void manager_release(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    if (!o) return;
    if (objects_unhold(&r->conn->holds, o)) reply_nil(r);
    else reply_error(r, MPB_E_VALUE, "manager.release: this connection does not hold object %llu",
                     (unsigned long long)o->id);
}

/* manager.incref REF */
void manager_incref(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    if (o) hold_and_reply(r, o);
}

/* manager.typeof REF: what a client needs to wrap a reference it read out of an
 * object (a Python proxy) without listing every object. */
void manager_typeof(mpb_req *r)
{
    mpb_object *o = arg_object(r);
    if (!o) return;
    msgpack_packer *pk = reply_begin(r);
    pack_key(pk, objects_typeid(o));
}

/* manager.delete NAME */
void manager_delete(mpb_req *r)
{
    const char *name;
    size_t n;
    if (!arg_str(r, 0, &name, &n)) return;
    mpb_object *o = objects_by_name(name, n);
    if (!o) {
        reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: no object named '%.*s'", r->info->name,
                    (int)(n > 64 ? 64 : n), name);
        return;
    }
    objects_unname(o);
    reply_nil(r);
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

/* Types whose length means something: a count of items, keys or attributes. */
static bool has_len(mpb_otype t)
{
    return t == MPB_OT_LIST || t == MPB_OT_DICT || t == MPB_OT_NAMESPACE || t == MPB_OT_QUEUE ||
           t == MPB_OT_ARRAY || t == MPB_OT_SET || t == MPB_OT_PIPE;
}

static void pack_object_row(msgpack_packer *pk, const mpb_object *o)
{
    msgpack_pack_map(pk, 8);
    pack_key(pk, "ref");
    mpb_ref_pack(pk, o->id);
    pack_key(pk, "type");
    pack_key(pk, objects_typeid(o));
    pack_key(pk, "name");
    if (o->name) pack_key(pk, o->name);
    else msgpack_pack_nil(pk);
    pack_key(pk, "len");
    if (has_len(o->type)) msgpack_pack_uint64(pk, objects_len(o));
    else msgpack_pack_nil(pk); /* a lock, an event, a value: no length to speak of */
    pack_key(pk, "holders");
    msgpack_pack_uint32(pk, o->holders);
    pack_key(pk, "holds");
    msgpack_pack_uint64(pk, o->holds);
    pack_key(pk, "contained");
    msgpack_pack_uint64(pk, o->contained);
    pack_key(pk, "bytes");
    msgpack_pack_uint64(pk, objects_memsize(o));
}

/* The filters of a manager.objects page: TYPE (a typeid, nil for any) and PREFIX (of
 * the name; nil for any object, named or not). */
typedef struct objects_filter {
    bool by_type;
    mpb_otype type;
    int variant;
    const char *prefix; /* NULL: no filter */
    size_t prefix_len;
} objects_filter;

static bool filter_args(mpb_req *r, objects_filter *f)
{
    *f = (objects_filter){0};
    if (r->nargs > 2 && r->args[2].type != MSGPACK_OBJECT_NIL) {
        f->by_type = true;
        if ((f->type = type_arg_at(r, 2, &f->variant)) == MPB_OT_NONE) return false;
    }
    if (r->nargs > 3 && r->args[3].type != MSGPACK_OBJECT_NIL &&
        !arg_str(r, 3, &f->prefix, &f->prefix_len))
        return false;
    return true;
}

static bool filter_match(const objects_filter *f, const mpb_object *o)
{
    if (f->by_type && (o->type != f->type || o->variant != f->variant)) return false;
    if (!f->prefix) return true;
    return o->name && strlen(o->name) >= f->prefix_len &&
           memcmp(o->name, f->prefix, f->prefix_len) == 0;
}

/* manager.objects START [COUNT [TYPE [PREFIX]]]: one page, [ROWS, NEXT]. */
static void objects_page(mpb_req *r)
{
    int64_t start, count;
    objects_filter f;
    if (!arg_cursor(r, 0, &start, &count) || !filter_args(r, &f)) return;
    if (r->nargs < 2 || r->args[1].type == MSGPACK_OBJECT_NIL) count = MPB_PAGE_DEFAULT;
    if (count > MPB_PAGE_MAX) count = MPB_PAGE_MAX; /* a hint, as Redis's SCAN COUNT */
    mpb_object *rows[MPB_PAGE_MAX];
    size_t n = 0, budget = MPB_SCAN_BUDGET;
    uint64_t cursor = (uint64_t)start;
    mpb_object *o;
    while (n < (size_t)count && (o = objects_walk(&cursor, &budget)))
        if (filter_match(&f, o)) rows[n++] = o;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) pack_object_row(pk, rows[i]);
    if (objects_walk_more(cursor)) msgpack_pack_uint64(pk, cursor);
    else msgpack_pack_nil(pk);
}

/* manager.objects [START [COUNT [TYPE [PREFIX]]]] */
void manager_objects(mpb_req *r)
{
    if (r->nargs > 0) {
        objects_page(r);
        return;
    }
    /* The old form, every object in one reply: only while that is one page's work. */
    size_t total = objects_count();
    if (total > MPB_PAGE_MAX) {
        reply_error(r, MPB_E_TOO_LARGE,
                    "manager.objects: %zu objects, over %d in one reply: page with START "
                    "[COUNT] (docs/PROTOCOL.md)", total, MPB_PAGE_MAX);
        return;
    }
    mpb_object *rows[MPB_PAGE_MAX];
    size_t n = 0, budget = SIZE_MAX;
    uint64_t cursor = 0;
    mpb_object *o;
    while (n < total && (o = objects_walk(&cursor, &budget))) rows[n++] = o;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) pack_object_row(pk, rows[i]);
}

/* manager.methods */
void manager_methods(mpb_req *r)
{
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_map(pk, 3);
    pack_key(pk, "types");
    size_t ntypes = 0;
    while (mpb_typeids[ntypes]) ntypes++;
    msgpack_pack_array(pk, ntypes);
    for (size_t t = 0; t < ntypes; t++) pack_key(pk, mpb_typeids[t]);
    /* Which methods each type uses: "rlock" -> "lock" (the lock.* methods). */
    pack_key(pk, "families");
    msgpack_pack_map(pk, ntypes);
    for (size_t t = 0; t < ntypes; t++) {
        int variant;
        pack_key(pk, mpb_typeids[t]);
        pack_key(pk, mpb_otype_name(mpb_typeid_lookup(mpb_typeids[t], strlen(mpb_typeids[t]),
                                                      &variant)));
    }
    pack_key(pk, "methods");
    msgpack_pack_array(pk, MPB_M__COUNT);
    for (int i = 0; i < MPB_M__COUNT; i++) {
        const mpb_method_info *m = &mpb_methods[i];
        msgpack_pack_map(pk, 9);
        pack_key(pk, "name");
        pack_key(pk, m->name);
        pack_key(pk, "type");
        if (m->self == MPB_OT_NONE) msgpack_pack_nil(pk);
        else pack_key(pk, mpb_otype_name(m->self));
        pack_key(pk, "min");
        msgpack_pack_uint8(pk, m->min);
        pack_key(pk, "max");
        msgpack_pack_uint8(pk, m->max);
        pack_key(pk, "write");
        if (m->flags & MPB_F_WRITE) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
        pack_key(pk, "read");
        if (m->flags & MPB_F_READ) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
        pack_key(pk, "args");
        pack_key(pk, m->args);
        pack_key(pk, "doc");
        pack_key(pk, m->doc);
        pack_key(pk, "cost");
        pack_key(pk, m->cost);
    }
}

/* manager.ping [PAYLOAD] */
void manager_ping(mpb_req *r)
{
    if (r->nargs == 1) msgpack_pack_object(reply_begin(r), r->args[0]);
    else reply_str(r, "pong");
}

/* manager.shutdown */
void manager_shutdown(mpb_req *r)
{
    reply_nil(r);
    server_stop();
}
