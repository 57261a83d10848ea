/* type_array.c - Array: a fixed-length typed sequence, as multiprocessing.Array.
 *
 * Items obey the typecode rules of type_value.c. The length never changes: slice
 * assignment must supply exactly as many items as the slice has (ValueError), as
 * with ctypes arrays.
 */
#include <stdlib.h>

#include "limits.h"
#include "mpb_codec.h"
#include "persist.h"
#include "server.h"

typedef struct arrstate {
    char tc;
    mpb_array a;
} arrstate;

#define ARR(o) ((arrstate *)(o)->u.ptr)

static int arr_init(mpb_object *o)
{
    arrstate *a = calloc(1, sizeof *a);
    if (!a) return -1;
    a->tc = 'i';
    o->u.ptr = a;
    return 0;
}

static void arr_destroy(mpb_object *o)
{
    mpb_array_clear(&ARR(o)->a);
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t arr_length(const mpb_object *o) { return ARR(o)->a.len; }
static size_t arr_memsize(const mpb_object *o)
{
    const mpb_array *a = &ARR(o)->a;
    size_t n = sizeof(arrstate) + a->cap * sizeof *a->items;
    for (size_t i = 0; i < a->len; i++) n += mpb_value_memsize(&a->items[i]);
    return n;
}

const mpb_type_ops mpb_array_ops = {arr_init, arr_destroy, arr_length, arr_memsize, NULL};

#define ARRAY_MAX_LEN (64u << 20)

/* INITIAL: [TYPECODE, SIZE] (zeros) or [TYPECODE, [ITEMS...]] (or a bytes/str for
 * 'c'/'u', one item per character). */
bool array_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    const msgpack_object *a = &r->args[i];
    if (!has_initial(r, i) || a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 2) {
        reply_error(r, MPB_E_TYPE, "%s: an array's initial value is [TYPECODE, SIZE or ITEMS]", r->info->name);
        return false;
    }
    arrstate *s = ARR(o);
    if (!arg_typecode(r, &a->via.array.ptr[0], &s->tc)) return false;
    const msgpack_object *init = &a->via.array.ptr[1];
    mpb_req sub = *r;
    sub.args = a->via.array.ptr;
    sub.nargs = 2;
    if (init->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (init->via.u64 > ARRAY_MAX_LEN) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: array of %llu items: too large",
                        r->info->name, (unsigned long long)init->via.u64);
            return false;
        }
        /* --max-memory before allocating: what the zeros will cost, as counted once
         * the array exists (a slot each, and a 'c'/'u' item's bytes). */
        mpb_value zero = typecode_zero(s->tc);
        size_t each = objects_value_cost(&zero);
        mpb_value_free(&zero);
        if (!limits_memory_for_bytes(r, (size_t)init->via.u64 * each)) return false;
        if (mpb_array_reserve(&s->a, init->via.u64) < 0) {
            reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: array of %llu items: out of memory",
                        r->info->name, (unsigned long long)init->via.u64);
            return false;
        }
        for (uint64_t k = 0; k < init->via.u64; k++) s->a.items[s->a.len++] = typecode_zero(s->tc);
        return true;
    }
    mpb_value items;
    if (!arg_value(&sub, 1, &items)) return false;
    bool ok = true;
    if (items.type != MPB_ARRAY) {
        reply_error(r, MPB_E_TYPE, "%s: an array's items must be an array (or a size)", r->info->name);
        ok = false;
    }
    for (size_t k = 0; ok && k < items.v.a->len; k++) {
        mpb_value x;
        char err[128];
        mpb_errkind e = typecode_coerce(s->tc, &items.v.a->items[k], &x, err, sizeof err);
        if (e != MPB_E_NONE) reply_error(r, e, "array item %zu: %s", k, err);
        else if (mpb_array_push(&s->a, &x) < 0) e = MPB_E_OUT_OF_MEMORY, mpb_value_free(&x),
            reply_error(r, e, "manager.create: out of memory");
        ok = e == MPB_E_NONE;
    }
    mpb_value_free(&items);
    return ok; /* on failure the object is freed with what it holds */
}

/* Replace the item in *slot with *x (taken). A 'u' character takes 1 to 4 bytes: the
 * memory count follows, as a fresh load of the array would count it. */
static void store(mpb_object *o, mpb_value *slot, mpb_value *x)
{
    objects_recharge_state(o, mpb_value_memsize(slot), mpb_value_memsize(x));
    mpb_value_free(slot);
    *slot = *x;
    *x = mpb_nil();
}

/* array.len REF */
void array_len(mpb_req *r) { reply_int(r, (int64_t)ARR(r->self)->a.len); }

/* array.getitem REF INDEX | REF START STOP [STEP] */
void array_getitem(mpb_req *r) { seq_getitem(r, &ARR(r->self)->a, "array"); }

/* array.setitem REF INDEX VALUE | REF START STOP [STEP] ARRAY */
void array_setitem(mpb_req *r)
{
    arrstate *s = ARR(r->self);
    mpb_array *a = &s->a;
    if (r->nargs == 2) {
        int64_t i = seq_index(r, 0, (int64_t)a->len, "array assignment");
        mpb_value x;
        if (i < 0 || !arg_typed(r, 1, s->tc, &x)) return;
        store(r->self, &a->items[i], &x);
        reply_nil(r);
        return;
    }
    uint32_t vi = r->nargs - 1;
    int64_t start, stop, step;
    int64_t n = seq_slice(r, 0, r->nargs == 4, (int64_t)a->len, &start, &stop, &step);
    if (n < 0) return;
    const msgpack_object *src = &r->args[vi];
    if (src->type != MSGPACK_OBJECT_ARRAY || (int64_t)src->via.array.size != n) {
        reply_error(r, MPB_E_VALUE, "Can only assign sequence of same size"); /* ctypes' */
        return;
    }
    /* Convert everything first, so a bad item changes nothing. */
    mpb_value *conv = calloc((size_t)n + 1, sizeof *conv);
    if (!conv) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "array.setitem: out of memory");
        return;
    }
    mpb_req sub = *r;
    sub.args = src->via.array.ptr;
    sub.nargs = src->via.array.size;
    int64_t k = 0;
    while (k < n && arg_typed(&sub, (uint32_t)k, s->tc, &conv[k])) k++;
    if (k == n) {
        for (int64_t j = 0; j < n; j++) /* no running index: see seq_getitem */
            store(r->self, &a->items[start + j * step], &conv[j]);
        reply_nil(r);
    } else {
        for (int64_t j = 0; j < k; j++) mpb_value_free(&conv[j]);
    }
    free(conv);
}

/* array.tolist REF */
void array_tolist(mpb_req *r)
{
    if (!limits_reply_items(r, ARR(r->self)->a.len, "array.getitem START STOP, a slice at a time"))
        return;
    mpb_value v = {.type = MPB_ARRAY, .v.a = &ARR(r->self)->a};
    reply_value(r, &v);
}

void array_dump(const mpb_object *o, msgpack_packer *pk)
{
    mpb_value items = {.type = MPB_ARRAY, .v.a = &ARR(o)->a};
    msgpack_pack_array(pk, 2);
    msgpack_pack_str_with_body(pk, &ARR(o)->tc, 1);
    mpb_value_pack(pk, &items);
}
