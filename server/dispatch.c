/* dispatch.c - from a decoded message to a handler, and the reply/argument helpers.
 *
 * The method table (mpb_methods.def) is expanded here into handler pointers. The
 * checks every method shares run once, before any handler: message shape, method
 * existence, parameter count, and the reference's existence and type, with one text
 * per failure (as Redis's commandCheckArity). Handlers only see valid requests.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "auth.h"
#include "limits.h"
#include "mpb_codec.h"
#include "batch.h"
#include "persist.h"
#include "server.h"
#include "wait.h"
#include "watch.h"

typedef void (*mpb_handler)(mpb_req *r);

static const mpb_handler handlers[MPB_M__COUNT] = {
#define MPB_METHOD(id, name, handler, self, min, max, flags, args, doc, cost) [MPB_M_##id] = handler,
#include "mpb_methods.def"
#undef MPB_METHOD
};

uint64_t g_ops_total;

/* Stray packer for notifications: everything written to it is dropped. */
static int null_write(void *data, const char *buf, size_t len)
{
    (void)data;
    (void)buf;
    (void)len;
    return 0;
}
static msgpack_packer null_pk = {NULL, null_write};

/*--- Replies ---*/

static msgpack_packer *pk_of(mpb_req *r)
{
    return r->pk ? r->pk : r->notify ? &null_pk : &r->conn->pk;
}

msgpack_packer *reply_begin(mpb_req *r)
{
    msgpack_packer *pk = pk_of(r);
    r->replied = true;
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint64(pk, r->msgid);
    msgpack_pack_nil(pk);
    return pk;
}

void reply_nil(mpb_req *r) { msgpack_pack_nil(reply_begin(r)); }

void reply_bool(mpb_req *r, bool b)
{
    msgpack_packer *pk = reply_begin(r);
    if (b) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

void reply_int(mpb_req *r, int64_t i) { msgpack_pack_int64(reply_begin(r), i); }

void reply_value(mpb_req *r, const mpb_value *v) { mpb_value_pack(reply_begin(r), v); }

void reply_ref(mpb_req *r, mpb_ref ref) { mpb_ref_pack(reply_begin(r), ref); }

void reply_str(mpb_req *r, const char *s)
{
    msgpack_pack_str_with_body(reply_begin(r), s, strlen(s));
}

static void pack_error(msgpack_packer *pk, bool has_msgid, uint64_t msgid,
                       mpb_errkind kind, const char *msg)
{
    const char *name = mpb_errkind_name(kind);
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 1);
    if (has_msgid) msgpack_pack_uint64(pk, msgid);
    else msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 2);
    msgpack_pack_str_with_body(pk, name, strlen(name));
    msgpack_pack_str_with_body(pk, msg, strlen(msg));
    msgpack_pack_nil(pk);
}

void reply_error(mpb_req *r, mpb_errkind kind, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->replied = true;
    r->failed = true;
    if (r->waiter) r->waiter->failed = true;
    pack_error(pk_of(r), true, r->msgid, kind, msg);
}

void dispatch_reply_bad(mpb_conn *c, bool has_msgid, uint64_t msgid, mpb_errkind kind,
                        const char *msg)
{
    pack_error(&c->pk, has_msgid, msgid, kind, msg);
}

/*--- Arguments ---*/

static const char *obj_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "NoneType";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_BIN: return "bytes";
    case MSGPACK_OBJECT_ARRAY: return "list";
    case MSGPACK_OBJECT_MAP: return "dict";
    case MSGPACK_OBJECT_EXT: return mpb_object_is_ref(o, &(mpb_ref){0}) ? "ref" : "ext";
    }
    return "?";
}

bool arg_int(mpb_req *r, uint32_t i, int64_t *out)
{
    const msgpack_object *o = &r->args[i];
    if (mpb_object_int(o, out)) return true;
    if (o->type == MSGPACK_OBJECT_BOOLEAN) { /* Python's bool is an int: L[True] is L[1] */
        *out = o->via.boolean;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        reply_error(r, MPB_E_INDEX, "%s: integer %llu out of range", r->info->name,
                    (unsigned long long)o->via.u64);
    else
        reply_error(r, MPB_E_TYPE, "%s: argument %u must be an integer, not %s",
                    r->info->name, i + 1, obj_type_name(o));
    return false;
}

bool arg_int_opt(mpb_req *r, uint32_t i, int64_t def, bool *given, int64_t *out)
{
    bool present = i < r->nargs && r->args[i].type != MSGPACK_OBJECT_NIL;
    if (given) *given = present;
    if (!present) {
        *out = def;
        return true;
    }
    return arg_int(r, i, out);
}

bool arg_str(mpb_req *r, uint32_t i, const char **p, size_t *n)
{
    if (mpb_object_bytes(&r->args[i], p, n)) return true;
    reply_error(r, MPB_E_TYPE, "%s: argument %u must be a string, not %s", r->info->name,
                i + 1, obj_type_name(&r->args[i]));
    return false;
}

bool arg_bool(mpb_req *r, uint32_t i, bool *out)
{
    const msgpack_object *o = &r->args[i];
    if (o->type == MSGPACK_OBJECT_BOOLEAN) *out = o->via.boolean;
    else if (o->type == MSGPACK_OBJECT_NIL) *out = false;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) *out = o->via.u64 != 0;
    else {
        reply_error(r, MPB_E_TYPE, "%s: argument %u must be a bool, not %s", r->info->name,
                    i + 1, obj_type_name(o));
        return false;
    }
    return true;
}

bool arg_bool_opt(mpb_req *r, uint32_t i, bool def, bool *out)
{
    *out = def;
    return i >= r->nargs || r->args[i].type == MSGPACK_OBJECT_NIL || arg_bool(r, i, out);
}

bool arg_timeout(mpb_req *r, uint32_t i, double *out)
{
    *out = -1;
    if (i >= r->nargs || r->args[i].type == MSGPACK_OBJECT_NIL) return true;
    const msgpack_object *o = &r->args[i];
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (o->via.f64 >= 0) {
            *out = o->via.f64;
            return true;
        }
        __attribute__((fallthrough)); /* negative (or NaN) */
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        reply_error(r, MPB_E_VALUE, "%s: timeout must be a non-negative number", r->info->name);
        return false;
    default:
        reply_error(r, MPB_E_TYPE, "%s: timeout must be a number or nil, not %s", r->info->name,
                    obj_type_name(o));
        return false;
    }
}

bool arg_value(mpb_req *r, uint32_t i, mpb_value *out)
{
    char err[160];
    mpb_errkind k = mpb_value_from_object(&r->args[i], out, g_config.max_depth, err, sizeof err);
    if (k != MPB_E_NONE) {
        reply_error(r, k, "%s: %s", r->info->name, err);
        return false;
    }
    mpb_ref bad;
    if (!objects_refs_valid(out, &bad)) {
        mpb_value_free(out);
        reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: no object %llu (released or never created)",
                    r->info->name, (unsigned long long)bad);
        return false;
    }
    if (!limits_memory_for_value(r, out)) { /* --max-memory, before anything changes */
        mpb_value_free(out);
        return false;
    }
    return true;
}

mpb_object *arg_object(mpb_req *r)
{
    mpb_ref ref;
    if (!mpb_object_is_ref(&r->args[0], &ref)) {
        reply_error(r, MPB_E_TYPE, "%s: argument 1 must be a reference", r->info->name);
        return NULL;
    }
    mpb_object *o = objects_get(ref);
    if (!o)
        reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: no object %llu (released or never created)",
                    r->info->name, (unsigned long long)ref);
    return o;
}

bool arg_key(mpb_req *r, uint32_t i, mpb_value *out)
{
    if (!arg_value(r, i, out)) return false;
    if (!mpb_value_hashable(out)) { /* the map computes the hash itself */
        reply_error(r, MPB_E_TYPE, "%s: unhashable type: '%s'", r->info->name,
                    out->type == MPB_MAP ? "dict" : "list");
        mpb_value_free(out);
        return false;
    }
    return true;
}

/*--- Numbers ---*/

static double as_double(const mpb_value *v)
{
    switch (v->type) {
    case MPB_BOOL: return v->v.b;
    case MPB_INT: return (double)v->v.i;
    case MPB_UINT: return (double)v->v.u;
    default: return v->v.f;
    }
}

/* An integer value (int, uint or bool) in 128 bits. */
static __int128 int_of(const mpb_value *v)
{
    return v->type == MPB_BOOL ? v->v.b : v->type == MPB_UINT ? (__int128)v->v.u : v->v.i;
}

mpb_errkind value_add(mpb_value *cur, const mpb_value *delta, char *err, size_t errlen)
{
    if (!mpb_value_is_number(cur) || !mpb_value_is_number(delta)) {
        snprintf(err, errlen, "unsupported operand type(s) for +: '%s' and '%s'",
                 mpb_type_name(cur), mpb_type_name(delta));
        return MPB_E_TYPE;
    }
    if (cur->type == MPB_FLOAT || delta->type == MPB_FLOAT) {
        *cur = mpb_float(as_double(cur) + as_double(delta));
        return MPB_E_NONE;
    }
    /* In 128 bits, so that 2**63 + -1 is 2**63-1 as in Python: only a result outside
     * what the broker stores, [-2**63, 2**64-1], is an OverflowError. */
    __int128 s = int_of(cur) + int_of(delta);
    if (s < INT64_MIN || s > (__int128)UINT64_MAX) {
        snprintf(err, errlen, "integer out of the stored range [-2**63, 2**64-1]");
        return MPB_E_OVERFLOW;
    }
    *cur = s > INT64_MAX ? mpb_uint((uint64_t)s) : mpb_int((int64_t)s);
    return MPB_E_NONE;
}

/*--- Dispatch ---*/

/* Parameter count and reference checks shared by every method. */
static bool check_params(mpb_req *r, const msgpack_object_array *params)
{
    const mpb_method_info *m = r->info;
    uint32_t n = params->size;
    if (m->self != MPB_OT_NONE) {
        mpb_ref ref;
        if (n == 0 || !mpb_object_is_ref(&params->ptr[0], &ref)) {
            reply_error(r, MPB_E_TYPE, "%s: the first parameter must be a %s reference",
                        m->name, mpb_otype_name(m->self));
            return false;
        }
        r->self = objects_get(ref);
        if (!r->self) {
            reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: no object %llu (released or never created)",
                        m->name, (unsigned long long)ref);
            return false;
        }
        if (r->self->type != m->self) {
            reply_error(r, MPB_E_TYPE, "%s: object %llu is a %s, not a %s", m->name,
                        (unsigned long long)ref, mpb_otype_name(r->self->type),
                        mpb_otype_name(m->self));
            return false;
        }
        r->args = params->ptr + 1;
        r->nargs = n - 1;
    } else {
        r->args = params->ptr;
        r->nargs = n;
    }
    if (r->nargs < m->min || r->nargs > m->max) {
        const char *after = m->self != MPB_OT_NONE ? " after the reference" : "";
        if (m->min == m->max)
            reply_error(r, MPB_E_TYPE, "%s takes %u argument%s%s (%u given)", m->name, m->min,
                        m->min == 1 ? "" : "s", after, r->nargs);
        else
            reply_error(r, MPB_E_TYPE, "%s takes %u to %u arguments%s (%u given)", m->name,
                        m->min, m->max, after, r->nargs);
        return false;
    }
    return true;
}

void dispatch_message(mpb_conn *c, const msgpack_object *msg)
{
    /* Before the handshake only the handshake, strictly (and no monitor sees it). */
    if (!c->authed) {
        auth_serve(c, msg);
        return;
    }
    mpb_req r = {.conn = c};
    if (msg->type != MSGPACK_OBJECT_ARRAY || msg->via.array.size == 0 ||
        msg->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        dispatch_reply_bad(c, false, 0, MPB_E_BAD_REQUEST,
                           "expected a msgpack-rpc message: [0, msgid, method, params]");
        return;
    }
    const msgpack_object *f = msg->via.array.ptr;
    uint32_t size = msg->via.array.size;
    uint64_t type = f[0].via.u64;
    if (type == 1) return; /* a response from the client (pynvim sends them): ignore */
    const msgpack_object *method, *params;
    if (type == 0 && size == 4 && f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        r.msgid = f[1].via.u64;
        method = &f[2];
        params = &f[3];
    } else if (type == 2 && size == 3) {
        r.notify = true;
        method = &f[1];
        params = &f[2];
    } else {
        bool has_id = type == 0 && size >= 2 && f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
        dispatch_reply_bad(c, has_id, has_id ? f[1].via.u64 : 0, MPB_E_BAD_REQUEST,
                           "expected [0, msgid, method, params] or [2, method, params]");
        return;
    }
    const char *name;
    size_t len;
    if (!mpb_object_bytes(method, &name, &len)) {
        if (!r.notify)
            dispatch_reply_bad(c, true, r.msgid, MPB_E_BAD_REQUEST, "method name must be a string");
        return;
    }
    int id = mpb_method_lookup(name, len);
    if (params->type == MSGPACK_OBJECT_ARRAY)
        admin_monitor_feed(c, id < 0 ? NULL : &mpb_methods[id], name, len, params);
    if (id < 0) {
        /* Unknown notifications are ignored: real clients send their own. */
        if (!r.notify)
            reply_error(&r, MPB_E_NO_SUCH_METHOD, "no method '%.*s' (see manager.methods)",
                        (int)(len > 64 ? 64 : len), name);
        return;
    }
    /* queue.get answers with the item it takes, and a notification is answered to
     * nobody: run, it would throw a producer's item away, maybe long after it was
     * sent. It is ignored instead (get_nowait says "take one now", and runs). */
    if (r.notify && (id == MPB_M_QUEUE_GET || id == MPB_M_PIPE_RECV || id == MPB_M_CHANNEL_READ ||
                     id == MPB_M_MANAGER_SELECT))
        return; /* the same for the other calls that take a value to answer with */
    r.method = id;
    r.info = &mpb_methods[id];
    if (params->type != MSGPACK_OBJECT_ARRAY) {
        reply_error(&r, MPB_E_BAD_REQUEST, "%s: params must be an array", r.info->name);
        return;
    }
    c->ops++;
    g_ops_total++;
    size_t mark = c->out.size;
    uint64_t t0 = mpb_mono_us();
    dispatch_run(&r, params);
    limits_check_reply(&r, mark); /* --max-output: a read too big is TooLarge instead */
    objects_collect(); /* what the request freed is part of its cost (a big list dropped) */
    slowlog_record(c, r.info, params, mpb_mono_us() - t0);
}

void dispatch_run(mpb_req *r, const msgpack_object *params)
{
    if (!check_params(r, &params->via.array)) return;
    if (persist_refuses(r)) return; /* read-only after a disk failure */
    if (batch_active() && !batch_admit(r)) return; /* refused in a batch, or no undo */
    bool was_blocked = r->conn->blocked;
    persist_call_begin();
    watch_call_begin();
    handlers[r->method](r);
    /* A write that took effect now bumps its object's version; a parked one counts
     * when its effect happens (watch.h). NOLOG writes leave a version record, so that
     * a restart does not hand out their versions again. */
    unsigned f = r->info->flags;
    bool now = r->conn->blocked == was_blocked;
    if ((f & MPB_F_WRITE) && !r->failed && now && r->self) {
        watch_bump(r->self, r->info->name, r->args, r->nargs);
        if (f & MPB_F_NOLOG) persist_log_version(r->self);
    }
    /* Persistence logs a write that took effect now; a parked one is logged by its
     * type when its effect happens. Effects the call caused (a parked get it served)
     * are logged after it. */
    if ((f & (MPB_F_WRITE | MPB_F_NOLOG)) == MPB_F_WRITE && !r->failed && now &&
        persist_enabled())
        persist_log_call(r->info->name, params);
    watch_call_end();
    persist_call_end();
}
