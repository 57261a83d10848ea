/* type_namespace.c - the shared Namespace: named attributes, as Python's
 * multiprocessing Namespace, plus atomic incr and cas on an attribute.
 *
 * Attributes are kept in an ordered map with str keys, so vars() lists them in the
 * order they were first set. The read-modify-write logic is dict's (map_incr,
 * map_cas in type_dict.c): one implementation for both, and so is the storage
 * (objects.c gives namespaces dict's type operations).
 */
#include "limits.h"
#include "server.h"

bool ns_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    return !has_initial(r, i) || map_update_from(r, o->u.map, i, true);
}

/* The attribute name argument: a str, as Python's getattr wants (a bin is refused
 * as Python refuses bytes, though the broker takes bin for other strings). false
 * after replying TypeError. */
static bool name_arg(mpb_req *r, const char **p, size_t *n)
{
    if (r->args[0].type == MSGPACK_OBJECT_BIN) {
        reply_error(r, MPB_E_TYPE, "attribute name must be string, not 'bytes'");
        return false;
    }
    return arg_str(r, 0, p, n);
}

/* The attribute name argument as an owned str value; false after replying. A name
 * that will be stored counts against --max-memory as a dict key does. */
static bool attr_arg(mpb_req *r, mpb_value *out)
{
    const char *p;
    size_t n;
    if (!name_arg(r, &p, &n)) return false;
    if (!limits_memory_for_bytes(r, sizeof(mpb_value) + n + 1)) return false; /* as stored */
    *out = mpb_strn(p, n);
    if (out->type != MPB_STR) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
        return false;
    }
    return true;
}

static void reply_no_attr(mpb_req *r, const mpb_value *name)
{
    reply_error(r, MPB_E_ATTRIBUTE, "'Namespace' object has no attribute '%.*s'",
                (int)(name->len > 100 ? 100 : name->len), name->v.s);
}

#define NS(r) ((r)->self->u.map)

/* namespace.getattr REF NAME */
void ns_getattr(mpb_req *r)
{
    const char *p;
    size_t n;
    if (!name_arg(r, &p, &n)) return;
    mpb_value key = mpb_str_borrowed(p, n);
    mpb_value *v = mpb_map_get(NS(r), &key);
    if (v) reply_value(r, v);
    else reply_no_attr(r, &key);
}

/* namespace.setattr REF NAME VALUE */
void ns_setattr(mpb_req *r)
{
    mpb_value key, v;
    if (!attr_arg(r, &key)) return;
    if (!arg_value(r, 1, &v)) {
        mpb_value_free(&key);
        return;
    }
    if (map_store(NS(r), &key, &v) < 0) {
        mpb_value_free(&key);
        mpb_value_free(&v);
        reply_error(r, MPB_E_OUT_OF_MEMORY, "namespace.setattr: out of memory");
        return;
    }
    reply_nil(r);
}

/* namespace.delattr REF NAME */
void ns_delattr(mpb_req *r)
{
    const char *p;
    size_t n;
    if (!name_arg(r, &p, &n)) return;
    mpb_value key = mpb_str_borrowed(p, n), ko, vo;
    if (!mpb_map_del(NS(r), &key, &ko, &vo)) {
        reply_no_attr(r, &key);
        return;
    }
    objects_discard_value(&ko); /* released as it was retained: --max-memory counts keys */
    objects_discard_value(&vo);
    reply_nil(r);
}

/* namespace.vars REF [START [COUNT]] */
void ns_vars(mpb_req *r)
{
    if (r->nargs > 0) {
        map_reply_chunk(r, NS(r), true, 0);
        return;
    }
    if (!limits_reply_items(r, NS(r)->len, "namespace.vars START [COUNT]")) return;
    mpb_value v = {.type = MPB_MAP, .v.m = NS(r)};
    reply_value(r, &v);
}

/* namespace.incr REF NAME [DELTA] */
void ns_incr(mpb_req *r)
{
    mpb_value key;
    if (attr_arg(r, &key)) map_incr(r, NS(r), &key, 1);
}

/* namespace.cas REF NAME EXPECTED NEW */
void ns_cas(mpb_req *r)
{
    mpb_value key;
    if (attr_arg(r, &key)) map_cas(r, NS(r), &key, 1);
}
