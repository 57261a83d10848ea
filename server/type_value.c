/* type_value.c - Value: one typed number or character, as multiprocessing.Value,
 * and the typecode rules that Array shares.
 *
 * Typecodes are Python's array/ctypes ones: b B h H i I l L q Q (integers of 8 to 64
 * bits; 'l' and 'L' are 64-bit as on Linux x86-64), f d (float, double), c (a bytes of
 * length 1), u (a str of one character). Storing the wrong type is TypeError; an
 * integer out of the typecode's range is OverflowError (Python's ctypes would wrap
 * silently; array.array refuses, and so do we).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "persist.h"
#include "server.h"

typedef struct valstate {
    char tc;
    mpb_value v;
} valstate;

#define VAL(o) ((valstate *)(o)->u.ptr)

/* Integer range of an integer typecode; false for the others. */
static bool int_range(char tc, int64_t *lo, uint64_t *hi)
{
    switch (tc) {
    case 'b': *lo = INT8_MIN, *hi = INT8_MAX; return true;
    case 'B': *lo = 0, *hi = UINT8_MAX; return true;
    case 'h': *lo = INT16_MIN, *hi = INT16_MAX; return true;
    case 'H': *lo = 0, *hi = UINT16_MAX; return true;
    case 'i': *lo = INT32_MIN, *hi = INT32_MAX; return true;
    case 'I': *lo = 0, *hi = UINT32_MAX; return true;
    case 'l': case 'q': *lo = INT64_MIN, *hi = INT64_MAX; return true;
    case 'L': case 'Q': *lo = 0, *hi = UINT64_MAX; return true;
    default: return false;
    }
}

bool typecode_valid(char tc) { return tc && strchr("bBhHiIlLqQfdcu", tc) != NULL; }

/* Length in code points of UTF-8 bytes. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

mpb_errkind typecode_coerce(char tc, const mpb_value *in, mpb_value *out, char *err, size_t errlen)
{
    int64_t lo;
    uint64_t hi;
    if (int_range(tc, &lo, &hi)) {
        if (in->type != MPB_INT && in->type != MPB_UINT && in->type != MPB_BOOL) {
            snprintf(err, errlen, "integer expected for typecode '%c', got %s", tc, mpb_type_name(in));
            return MPB_E_TYPE;
        }
        bool ok = in->type == MPB_BOOL ||
                  (in->type == MPB_UINT ? in->v.u <= hi
                                        : in->v.i >= lo && (in->v.i < 0 || (uint64_t)in->v.i <= hi));
        if (!ok) {
            snprintf(err, errlen, "value out of range for typecode '%c'", tc);
            return MPB_E_OVERFLOW;
        }
        *out = in->type == MPB_BOOL ? mpb_int(in->v.b) : *in;
        return MPB_E_NONE;
    }
    if (tc == 'f' || tc == 'd') {
        if (!mpb_value_is_number(in)) {
            snprintf(err, errlen, "a number is required for typecode '%c', got %s", tc, mpb_type_name(in));
            return MPB_E_TYPE;
        }
        double d = in->type == MPB_FLOAT ? in->v.f
                   : in->type == MPB_INT ? (double)in->v.i
                   : in->type == MPB_UINT ? (double)in->v.u : (double)in->v.b;
        *out = mpb_float(tc == 'f' ? (double)(float)d : d);
        return MPB_E_NONE;
    }
    bool is_c = tc == 'c';
    if (in->type != (is_c ? MPB_BIN : MPB_STR) ||
        (is_c ? in->len != 1 : utf8_chars(in->v.s, in->len) != 1)) {
        snprintf(err, errlen, "typecode '%c' stores %s, got %s", tc,
                 is_c ? "a bytes of length 1" : "a str of one character", mpb_type_name(in));
        return MPB_E_TYPE;
    }
    return mpb_value_copy(out, in) < 0 ? MPB_E_OUT_OF_MEMORY : MPB_E_NONE;
}

mpb_value typecode_zero(char tc)
{
    if (tc == 'f' || tc == 'd') return mpb_float(0);
    if (tc == 'c') return mpb_bin("", 1);
    if (tc == 'u') return mpb_strn("", 1);
    return mpb_int(0);
}

bool arg_typecode(mpb_req *r, const msgpack_object *o, char *tc)
{
    if (o->type == MSGPACK_OBJECT_STR && o->via.str.size == 1 && typecode_valid(o->via.str.ptr[0])) {
        *tc = o->via.str.ptr[0];
        return true;
    }
    reply_error(r, MPB_E_VALUE, "%s: bad typecode (must be one of b, B, h, H, i, I, l, L, q, Q, f, d, c, u)",
                r->info->name);
    return false;
}

bool arg_typed(mpb_req *r, uint32_t i, char tc, mpb_value *out)
{
    mpb_value v;
    char err[128];
    if (!arg_value(r, i, &v)) return false;
    mpb_errkind k = typecode_coerce(tc, &v, out, err, sizeof err);
    mpb_value_free(&v);
    if (k != MPB_E_NONE) reply_error(r, k, "%s: %s", r->info->name, err);
    return k == MPB_E_NONE;
}

/*--- Value API ---*/

static int val_init(mpb_object *o)
{
    valstate *v = calloc(1, sizeof *v);
    if (!v) return -1;
    v->tc = 'i';
    v->v = mpb_int(0);
    o->u.ptr = v;
    return 0;
}

static void val_destroy(mpb_object *o)
{
    mpb_value_free(&VAL(o)->v);
    free(o->u.ptr);
    o->u.ptr = NULL;
}

static size_t val_length(const mpb_object *o) { (void)o; return 1; }
static size_t val_memsize(const mpb_object *o) { return sizeof(valstate) + mpb_value_memsize(&VAL(o)->v); }

const mpb_type_ops mpb_value_ops = {val_init, val_destroy, val_length, val_memsize, NULL};

/* INITIAL: [TYPECODE] or [TYPECODE, VALUE]; nil: 'i' holding 0. */
bool value_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    const msgpack_object *a = &r->args[i];
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size < 1 || a->via.array.size > 2) {
        reply_error(r, MPB_E_TYPE, "%s: a value's initial value is [TYPECODE] or [TYPECODE, VALUE]", r->info->name);
        return false;
    }
    valstate *v = VAL(o);
    if (!arg_typecode(r, &a->via.array.ptr[0], &v->tc)) return false;
    mpb_value_free(&v->v);
    v->v = typecode_zero(v->tc);
    if (a->via.array.size == 1) return true;
    /* Read the VALUE through a request view whose args are the pair. */
    mpb_req sub = *r;
    sub.args = a->via.array.ptr;
    sub.nargs = 2;
    mpb_value x;
    if (!arg_typed(&sub, 1, v->tc, &x)) return false;
    mpb_value_free(&v->v);
    v->v = x;
    return true;
}

/* value.get REF */
void value_get(mpb_req *r) { reply_value(r, &VAL(r->self)->v); }

/* value.set REF VALUE */
void value_set(mpb_req *r)
{
    valstate *v = VAL(r->self);
    mpb_value x;
    if (!arg_typed(r, 0, v->tc, &x)) return;
    /* A 'u' character takes 1 to 4 bytes: the count follows, as a fresh load would. */
    objects_recharge_state(r->self, mpb_value_memsize(&v->v), mpb_value_memsize(&x));
    mpb_value_free(&v->v);
    v->v = x;
    reply_nil(r);
}

/* value.incr REF [DELTA] */
void value_incr(mpb_req *r)
{
    valstate *v = VAL(r->self);
    mpb_value delta = mpb_int(1), sum = v->v, x;
    char err[128];
    if (r->nargs == 1 && !arg_value(r, 0, &delta)) return;
    /* value_add sums exactly (128 bits) within what the broker stores; the typecode's
     * own range (a 'b' stops at 127, a 'Q' goes to 2**64-1) is typecode_coerce's. */
    int64_t lo;
    uint64_t hi;
    mpb_errkind k = value_add(&sum, &delta, err, sizeof err);
    if (k == MPB_E_OVERFLOW && int_range(v->tc, &lo, &hi))
        snprintf(err, sizeof err, "value out of range for typecode '%c'", v->tc);
    if (k == MPB_E_NONE) k = typecode_coerce(v->tc, &sum, &x, err, sizeof err);
    mpb_value_free(&delta);
    if (k != MPB_E_NONE) {
        reply_error(r, k, "value.incr: %s", err);
        return;
    }
    v->v = x; /* numbers own no memory */
    reply_value(r, &x);
}

void value_dump(const mpb_object *o, msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_str_with_body(pk, &VAL(o)->tc, 1);
    mpb_value_pack(pk, &VAL(o)->v);
}
