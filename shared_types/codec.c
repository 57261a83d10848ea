/* codec.c - mpb_value <-> msgpack, and the ext form of a reference.
 *
 * Encoding appends to a caller's msgpack_packer; decoding deep-copies a borrowed
 * msgpack_object into an owned mpb_value, enforcing the depth limit and Python's rule
 * that dict keys be hashable. Splitting a byte stream into messages is reader.c's job.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mpb_codec.h"

/*--- Encoding ---*/

int mpb_ref_pack(msgpack_packer *pk, mpb_ref ref)
{
    unsigned char be[8];
    for (int i = 0; i < 8; i++)
        be[i] = (unsigned char)(ref >> (56 - 8 * i));
    if (msgpack_pack_ext(pk, sizeof be, MPB_EXT_REF) != 0)
        return -1;
    return msgpack_pack_ext_body(pk, be, sizeof be) != 0 ? -1 : 0;
}

static int pack_bytes(msgpack_packer *pk, const mpb_value *v)
{
    int rc = v->type == MPB_STR ? msgpack_pack_str(pk, v->len) : msgpack_pack_bin(pk, v->len);
    if (rc != 0 || v->len == 0) /* no body call for "": some write callbacks dislike n=0 */
        return rc != 0 ? -1 : 0;
    rc = v->type == MPB_STR ? msgpack_pack_str_body(pk, v->v.s, v->len)
                            : msgpack_pack_bin_body(pk, v->v.s, v->len);
    return rc != 0 ? -1 : 0;
}

static int pack_array(msgpack_packer *pk, const mpb_array *a)
{
    if (a->len > UINT32_MAX || msgpack_pack_array(pk, a->len) != 0)
        return -1;
    for (size_t i = 0; i < a->len; i++)
        if (mpb_value_pack(pk, &a->items[i]) != 0)
            return -1;
    return 0;
}

static int pack_map(msgpack_packer *pk, const mpb_map *m)
{
    if (m->len > UINT32_MAX || msgpack_pack_map(pk, m->len) != 0)
        return -1;
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it)) != NULL)
        if (mpb_value_pack(pk, &e->key) != 0 || mpb_value_pack(pk, &e->val) != 0)
            return -1;
    return 0;
}

int mpb_value_pack(msgpack_packer *pk, const mpb_value *v)
{
    int rc;
    switch (v->type) {
    case MPB_NIL: rc = msgpack_pack_nil(pk); break;
    case MPB_BOOL: rc = v->v.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
    case MPB_INT: rc = msgpack_pack_int64(pk, v->v.i); break;
    case MPB_UINT: rc = msgpack_pack_uint64(pk, v->v.u); break;
    case MPB_FLOAT: rc = msgpack_pack_double(pk, v->v.f); break;
    case MPB_STR:
    case MPB_BIN: return pack_bytes(pk, v);
    case MPB_ARRAY: return pack_array(pk, v->v.a);
    case MPB_MAP: return pack_map(pk, v->v.m);
    case MPB_REF: return mpb_ref_pack(pk, v->v.ref);
    default: return -1; /* a tombstone or garbage: nothing sensible to send */
    }
    return rc != 0 ? -1 : 0;
}

/*--- Borrowed views of msgpack objects ---*/

bool mpb_object_is_ref(const msgpack_object *o, mpb_ref *ref)
{
    if (o->type != MSGPACK_OBJECT_EXT || o->via.ext.type != MPB_EXT_REF ||
        o->via.ext.size != 8)
        return false;
    const unsigned char *p = (const unsigned char *)o->via.ext.ptr;
    mpb_ref r = 0;
    for (int i = 0; i < 8; i++)
        r = (r << 8) | p[i];
    *ref = r;
    return true;
}

bool mpb_object_bytes(const msgpack_object *o, const char **p, size_t *n)
{
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *n = o->via.str.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *n = o->via.bin.size;
        return true;
    }
    return false;
}

bool mpb_object_int(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    return false;
}

/*--- Decoding ---*/

typedef struct decoder {
    int max_depth;
    char *err;
    size_t errlen;
} decoder;

static mpb_errkind fail(decoder *d, mpb_errkind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static mpb_errkind fail(decoder *d, mpb_errkind kind, const char *fmt, ...)
{
    if (d->err != NULL && d->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->err, d->errlen, fmt, ap);
        va_end(ap);
    }
    return kind;
}

static mpb_errkind decode(decoder *d, const msgpack_object *o, mpb_value *out, int depth);

static mpb_errkind decode_array(decoder *d, const msgpack_object_array *a, mpb_value *out,
                                int depth)
{
    mpb_value arr = mpb_array_value(a->size);
    if (arr.type != MPB_ARRAY)
        return fail(d, MPB_E_OUT_OF_MEMORY, "out of memory");
    for (uint32_t i = 0; i < a->size; i++) {
        mpb_value item;
        mpb_errkind k = decode(d, &a->ptr[i], &item, depth);
        if (k != MPB_E_NONE) {
            mpb_value_free(&arr);
            return k;
        }
        arr.v.a->items[arr.v.a->len++] = item; /* room reserved above */
    }
    *out = arr;
    return MPB_E_NONE;
}

static mpb_errkind decode_map(decoder *d, const msgpack_object_map *m, mpb_value *out,
                              int depth)
{
    mpb_value map = mpb_map_value();
    if (map.type != MPB_MAP)
        return fail(d, MPB_E_OUT_OF_MEMORY, "out of memory");
    for (uint32_t i = 0; i < m->size; i++) {
        mpb_value key, val;
        mpb_errkind k = decode(d, &m->ptr[i].key, &key, depth);
        if (k == MPB_E_NONE && (k = decode(d, &m->ptr[i].val, &val, depth)) != MPB_E_NONE)
            mpb_value_free(&key);
        if (k == MPB_E_NONE) {
            /* A repeated key replaces the value, keeps the first key: Python's
             * {1: 'a', 1.0: 'b'} is {1: 'b'}. */
            int rc = mpb_map_set(map.v.m, &key, &val, NULL);
            if (rc < 0) {
                mpb_value_free(&key);
                mpb_value_free(&val);
                /* Only a map makes a key unhashable (arrays are tuples here). */
                k = rc == -2 ? fail(d, MPB_E_TYPE, "unhashable type: 'dict'")
                             : fail(d, MPB_E_OUT_OF_MEMORY, "out of memory");
            }
        }
        if (k != MPB_E_NONE) {
            mpb_value_free(&map);
            return k;
        }
    }
    *out = map;
    return MPB_E_NONE;
}

static mpb_errkind decode_bytes(decoder *d, uint8_t type, const char *p, uint32_t n,
                                mpb_value *out)
{
    *out = type == MPB_STR ? mpb_strn(p, n) : mpb_bin(p, n);
    if (out->type != type)
        return fail(d, MPB_E_OUT_OF_MEMORY, "out of memory");
    return MPB_E_NONE;
}

/* o into *out (left nil on error). depth counts the containers around o. */
static mpb_errkind decode(decoder *d, const msgpack_object *o, mpb_value *out, int depth)
{
    mpb_ref ref;
    *out = mpb_nil();
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return MPB_E_NONE;
    case MSGPACK_OBJECT_BOOLEAN: *out = mpb_bool(o->via.boolean); return MPB_E_NONE;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = mpb_uint(o->via.u64); return MPB_E_NONE;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = mpb_int(o->via.i64); return MPB_E_NONE;
    case MSGPACK_OBJECT_FLOAT32: /* msgpack-c widens float32 into f64 already */
    case MSGPACK_OBJECT_FLOAT64: *out = mpb_float(o->via.f64); return MPB_E_NONE;
    case MSGPACK_OBJECT_STR:
        return decode_bytes(d, MPB_STR, o->via.str.ptr, o->via.str.size, out);
    case MSGPACK_OBJECT_BIN:
        return decode_bytes(d, MPB_BIN, o->via.bin.ptr, o->via.bin.size, out);
    case MSGPACK_OBJECT_ARRAY:
    case MSGPACK_OBJECT_MAP:
        if (depth + 1 > d->max_depth)
            return fail(d, MPB_E_TOO_DEEP, "nested deeper than %d levels", d->max_depth);
        return o->type == MSGPACK_OBJECT_ARRAY
                   ? decode_array(d, &o->via.array, out, depth + 1)
                   : decode_map(d, &o->via.map, out, depth + 1);
    case MSGPACK_OBJECT_EXT:
        if (mpb_object_is_ref(o, &ref)) {
            *out = mpb_refv(ref);
            return MPB_E_NONE;
        }
        if (o->via.ext.type == MPB_EXT_REF)
            return fail(d, MPB_E_TYPE, "reference must be 8 bytes, not %u",
                        (unsigned)o->via.ext.size);
        return fail(d, MPB_E_TYPE, "unsupported msgpack ext type %d", o->via.ext.type);
    default:
        return fail(d, MPB_E_TYPE, "unsupported msgpack type %d", (int)o->type);
    }
}

mpb_errkind mpb_value_from_object(const msgpack_object *o, mpb_value *out, int max_depth,
                                  char *err, size_t errlen)
{
    decoder d = {max_depth, err, errlen};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    return decode(&d, o, out, 0);
}
