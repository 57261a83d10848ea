/* test_value.c - the value model, map, codec, method table and error names, with no
 * network: Python semantics (equality, ordering, hashing, repr) pinned case by case,
 * and msgpack round trips through the real msgpack-c.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "mpb_errors.h"
#include "mpb_methods.h"
#include "mpb_value.h"

/*--- Helpers ---*/

/* Same types and values all the way down (mpb_value_equal would accept 1 == 1.0). */
static bool identical(const mpb_value *a, const mpb_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case MPB_FLOAT:
        return memcmp(&a->v.f, &b->v.f, sizeof a->v.f) == 0;
    case MPB_ARRAY:
        if (a->v.a->len != b->v.a->len)
            return false;
        for (size_t i = 0; i < a->v.a->len; i++)
            if (!identical(&a->v.a->items[i], &b->v.a->items[i]))
                return false;
        return true;
    case MPB_MAP: {
        size_t ia = 0, ib = 0;
        mpb_map_entry *ea, *eb;
        if (a->v.m->len != b->v.m->len)
            return false;
        while ((ea = mpb_map_next(a->v.m, &ia)) && (eb = mpb_map_next(b->v.m, &ib)))
            if (!identical(&ea->key, &eb->key) || !identical(&ea->val, &eb->val))
                return false;
        return true;
    }
    default:
        return mpb_value_equal(a, b);
    }
}

static msgpack_sbuffer packed(const mpb_value *v)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    ck_assert_int_eq(mpb_value_pack(&pk, v), 0);
    return sb;
}

/* Decode bytes with msgpack-c, then mpb_value_from_object. */
static mpb_errkind decode_bytes(const char *p, size_t n, mpb_value *out, int max_depth,
                                char *err, size_t errlen)
{
    msgpack_zone zone;
    msgpack_object obj;
    size_t off = 0;
    msgpack_zone_init(&zone, 8192);
    ck_assert_int_eq(msgpack_unpack(p, n, &off, &zone, &obj), MSGPACK_UNPACK_SUCCESS);
    mpb_errkind k = mpb_value_from_object(&obj, out, max_depth, err, errlen);
    msgpack_zone_destroy(&zone);
    return k;
}

static void roundtrip(const mpb_value *v, mpb_value *out)
{
    msgpack_sbuffer sb = packed(v);
    char err[96];
    ck_assert_int_eq(decode_bytes(sb.data, sb.size, out, 32, err, sizeof err), MPB_E_NONE);
    msgpack_sbuffer_destroy(&sb);
}

static void push(mpb_value *arr, mpb_value item)
{
    ck_assert_int_eq(mpb_value_push(arr, &item), 0);
}

static void put(mpb_value *map, mpb_value k, mpb_value v)
{
    ck_assert_int_ge(mpb_map_set(map->v.m, &k, &v, NULL), 0);
}

static mpb_value array_of_ints(int n, const int64_t *xs)
{
    mpb_value a = mpb_array_value(0);
    for (int i = 0; i < n; i++)
        push(&a, mpb_int(xs[i]));
    return a;
}

/* depth nested arrays around the int 1: depth 2 is [[1]]. */
static mpb_value nested(int depth)
{
    mpb_value v = mpb_int(1);
    for (int i = 0; i < depth; i++) {
        mpb_value a = mpb_array_value(1);
        push(&a, v);
        v = a;
    }
    return v;
}

static void check_repr(const mpb_value *v, const char *want)
{
    char *s = mpb_value_repr(v);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, want);
    free(s);
}

static void check_float_repr(double f, const char *want)
{
    mpb_value v = mpb_float(f);
    check_repr(&v, want);
}

static int cmp(const mpb_value *a, const mpb_value *b)
{
    int r = 99;
    ck_assert_int_eq(mpb_value_compare(a, b, &r), 0);
    return r;
}

static uint64_t hash(const mpb_value *v)
{
    uint64_t h;
    ck_assert_int_eq(mpb_value_hash(v, &h), 0);
    return h;
}

/*--- Constructors and lifetime ---*/

START_TEST(uint_normalises_small_values_to_int)
{
    mpb_value a = mpb_uint(5), b = mpb_uint((uint64_t)INT64_MAX);
    mpb_value c = mpb_uint((uint64_t)INT64_MAX + 1);
    ck_assert_int_eq(a.type, MPB_INT);
    ck_assert_int_eq(a.v.i, 5);
    ck_assert_int_eq(b.type, MPB_INT);
    ck_assert_int_eq(c.type, MPB_UINT);
    ck_assert_uint_eq(c.v.u, (uint64_t)INT64_MAX + 1);
}
END_TEST

START_TEST(strn_copies_embedded_nul_and_terminates)
{
    char src[] = {'a', 0, 'b'};
    mpb_value s = mpb_strn(src, 3), b = mpb_bin(src, 3);
    ck_assert_int_eq(s.type, MPB_STR);
    ck_assert_int_eq(s.len, 3);
    ck_assert_ptr_ne(s.v.s, src);
    ck_assert_mem_eq(s.v.s, src, 3);
    ck_assert_int_eq(s.v.s[3], 0);
    ck_assert_int_eq(b.type, MPB_BIN);
    ck_assert_int_eq(b.v.s[3], 0);
    mpb_value_free(&s);
    mpb_value_free(&b);
    ck_assert_int_eq(s.type, MPB_NIL);
}
END_TEST

START_TEST(copy_is_deep_and_owns_borrowed_bytes)
{
    char text[] = "hello";
    mpb_value a = mpb_array_value(2), c;
    push(&a, mpb_str_borrowed(text, 5));
    push(&a, nested(3));
    ck_assert_int_eq(mpb_value_copy(&c, &a), 0);
    const mpb_value *s = &c.v.a->items[0];
    ck_assert_int_eq(s->flags & MPB_VF_BORROWED, 0);
    ck_assert_ptr_ne(s->v.s, text);
    ck_assert_str_eq(s->v.s, "hello");
    ck_assert(identical(&a.v.a->items[1], &c.v.a->items[1]));
    ck_assert_ptr_ne(a.v.a->items[1].v.a, c.v.a->items[1].v.a);
    mpb_value_free(&a); /* leaves the borrowed text alone */
    ck_assert_str_eq(text, "hello");
    mpb_value_free(&c);
}
END_TEST

/*--- Codec ---*/

START_TEST(codec_round_trips_every_type)
{
    mpb_value m = mpb_map_value(), got;
    put(&m, mpb_str("nil"), mpb_nil());
    put(&m, mpb_str("t"), mpb_bool(true));
    put(&m, mpb_str("f"), mpb_bool(false));
    put(&m, mpb_int(-3), mpb_int(INT64_MIN));
    put(&m, mpb_int(7), mpb_uint(UINT64_MAX));
    put(&m, mpb_float(2.5), mpb_float(-0.0));
    put(&m, mpb_str(""), mpb_strn("", 0));
    put(&m, mpb_bin("\0\1", 2), mpb_bin("", 0));
    put(&m, mpb_refv(7), mpb_refv(UINT64_MAX));
    int64_t xs[] = {1, 2, 3};
    put(&m, array_of_ints(3, xs), mpb_array_value(0));
    mpb_value inner = mpb_map_value();
    put(&inner, mpb_str("k"), array_of_ints(3, xs));
    put(&m, mpb_str("map"), inner);
    put(&m, mpb_str("inf"), mpb_float(INFINITY));
    roundtrip(&m, &got);
    ck_assert(identical(&m, &got));
    ck_assert(mpb_value_equal(&m, &got));
    mpb_value_free(&m);
    mpb_value_free(&got);
}
END_TEST

START_TEST(codec_round_trips_nesting_at_the_limit)
{
    mpb_value v = nested(32), got;
    roundtrip(&v, &got);
    ck_assert(identical(&v, &got));
    mpb_value_free(&v);
    mpb_value_free(&got);
}
END_TEST

START_TEST(codec_ref_is_ext1_with_big_endian_id)
{
    mpb_value r = mpb_refv(0x0102030405060708ULL);
    msgpack_sbuffer sb = packed(&r);
    const unsigned char want[] = {0xd7, 0x01, 1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_uint_eq(sb.size, sizeof want);
    ck_assert_mem_eq(sb.data, want, sizeof want);
    msgpack_zone z;
    msgpack_object o;
    size_t off = 0;
    mpb_ref id = 0;
    msgpack_zone_init(&z, 1024);
    ck_assert_int_eq(msgpack_unpack(sb.data, sb.size, &off, &z, &o), MSGPACK_UNPACK_SUCCESS);
    ck_assert(mpb_object_is_ref(&o, &id));
    ck_assert_uint_eq(id, 0x0102030405060708ULL);
    msgpack_zone_destroy(&z);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(codec_float32_decodes_as_float)
{
    const char f32[] = {(char)0xca, 0x3f, (char)0xc0, 0, 0}; /* 1.5f */
    mpb_value v;
    ck_assert_int_eq(decode_bytes(f32, sizeof f32, &v, 32, NULL, 0), MPB_E_NONE);
    ck_assert_int_eq(v.type, MPB_FLOAT);
    ck_assert(v.v.f == 1.5);
}
END_TEST

START_TEST(codec_ints_at_int64_and_uint64_boundaries)
{
    struct { mpb_value v; unsigned char first; } cases[] = {
        {mpb_int(INT64_MIN), 0xd3},
        {mpb_int(-1), 0xff},
        {mpb_int(INT64_MAX), 0xcf},
        {mpb_uint((uint64_t)INT64_MAX + 1), 0xcf},
        {mpb_uint(UINT64_MAX), 0xcf},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mpb_value got;
        msgpack_sbuffer sb = packed(&cases[i].v);
        ck_assert_uint_eq((unsigned char)sb.data[0], cases[i].first);
        ck_assert_int_eq(decode_bytes(sb.data, sb.size, &got, 32, NULL, 0), MPB_E_NONE);
        ck_assert_msg(identical(&cases[i].v, &got), "case %zu", i);
        msgpack_sbuffer_destroy(&sb);
    }
    /* A signed encoding of a positive number still comes back as MPB_INT. */
    const char i8[] = {(char)0xd0, 0x05};
    mpb_value v;
    ck_assert_int_eq(decode_bytes(i8, sizeof i8, &v, 32, NULL, 0), MPB_E_NONE);
    ck_assert_int_eq(v.type, MPB_INT);
    ck_assert_int_eq(v.v.i, 5);
}
END_TEST

START_TEST(object_int_accepts_only_integers_in_int64)
{
    msgpack_object o = {0};
    int64_t x = 0;
    o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o.via.u64 = (uint64_t)INT64_MAX;
    ck_assert(mpb_object_int(&o, &x));
    ck_assert_int_eq(x, INT64_MAX);
    o.via.u64 = (uint64_t)INT64_MAX + 1;
    ck_assert(!mpb_object_int(&o, &x));
    o.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o.via.i64 = INT64_MIN;
    ck_assert(mpb_object_int(&o, &x));
    ck_assert_int_eq(x, INT64_MIN);
    o.type = MSGPACK_OBJECT_FLOAT64;
    o.via.f64 = 1.0;
    ck_assert(!mpb_object_int(&o, &x));
}
END_TEST

START_TEST(object_bytes_accepts_str_and_bin_only)
{
    msgpack_object o = {0};
    const char *p;
    size_t n;
    o.type = MSGPACK_OBJECT_STR;
    o.via.str.ptr = "abc";
    o.via.str.size = 3;
    ck_assert(mpb_object_bytes(&o, &p, &n) && n == 3 && p == o.via.str.ptr);
    o.type = MSGPACK_OBJECT_BIN;
    o.via.bin.ptr = "xy";
    o.via.bin.size = 2;
    ck_assert(mpb_object_bytes(&o, &p, &n) && n == 2);
    o.type = MSGPACK_OBJECT_NIL;
    ck_assert(!mpb_object_bytes(&o, &p, &n));
}
END_TEST

START_TEST(from_object_too_deep_is_error_and_out_nil)
{
    mpb_value v = nested(5), got = mpb_int(42);
    msgpack_sbuffer sb = packed(&v);
    char err[96];
    ck_assert_int_eq(decode_bytes(sb.data, sb.size, &got, 4, err, sizeof err), MPB_E_TOO_DEEP);
    ck_assert_int_eq(got.type, MPB_NIL);
    ck_assert_ptr_nonnull(strstr(err, "deeper"));
    ck_assert_int_eq(decode_bytes(sb.data, sb.size, &got, 5, NULL, 0), MPB_E_NONE);
    mpb_value_free(&got);
    mpb_value_free(&v);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(from_object_bad_ext_is_type_error)
{
    const char other[] = {(char)0x92, 0x01, (char)0xd4, 0x02, 0x00};      /* [1, ext2] */
    const char short_ref[] = {(char)0x91, (char)0xd6, 0x01, 0, 0, 0, 7}; /* ext1, 4 bytes */
    mpb_value got = mpb_int(1);
    char err[96];
    ck_assert_int_eq(decode_bytes(other, sizeof other, &got, 32, err, sizeof err), MPB_E_TYPE);
    ck_assert_int_eq(got.type, MPB_NIL);
    ck_assert_int_eq(decode_bytes(short_ref, sizeof short_ref, &got, 32, err, sizeof err),
                     MPB_E_TYPE);
    ck_assert_int_eq(got.type, MPB_NIL);
}
END_TEST

START_TEST(from_object_unhashable_key_is_type_error)
{
    /* {"a": [1, 2], {}: 1}: the first pair is built, then freed on the error. */
    const char bytes[] = {(char)0x82, (char)0xa1, 'a', (char)0x92, 1, 2, (char)0x80, 1};
    mpb_value got = mpb_int(1);
    char err[96];
    ck_assert_int_eq(decode_bytes(bytes, sizeof bytes, &got, 32, err, sizeof err), MPB_E_TYPE);
    ck_assert_str_eq(err, "unhashable type: 'dict'");
    ck_assert_int_eq(got.type, MPB_NIL);
}
END_TEST

START_TEST(from_object_duplicate_keys_keep_first_key_last_value)
{
    /* {1: "a", 1.0: "b"} */
    const char bytes[] = {(char)0x82, 1, (char)0xa1, 'a',
                          (char)0xcb, 0x3f, (char)0xf0, 0, 0, 0, 0, 0, 0, (char)0xa1, 'b'};
    mpb_value got;
    ck_assert_int_eq(decode_bytes(bytes, sizeof bytes, &got, 32, NULL, 0), MPB_E_NONE);
    check_repr(&got, "{1: 'b'}");
    mpb_value_free(&got);
}
END_TEST

/*--- Equality ---*/

START_TEST(numbers_equal_across_types)
{
    mpb_value one = mpb_int(1), onef = mpb_float(1.0), t = mpb_bool(true);
    mpb_value zero = mpb_int(0), f = mpb_bool(false), negz = mpb_float(-0.0);
    ck_assert(mpb_value_equal(&one, &onef));
    ck_assert(mpb_value_equal(&onef, &t) && mpb_value_equal(&t, &one));
    ck_assert(mpb_value_equal(&zero, &f) && mpb_value_equal(&f, &negz));
    mpb_value u63 = mpb_uint((uint64_t)1 << 63), d63 = mpb_float(9.223372036854775808e18);
    mpb_value imax = mpb_int(INT64_MAX);
    ck_assert(mpb_value_equal(&u63, &d63));
    ck_assert(!mpb_value_equal(&imax, &d63)); /* (double)INT64_MAX rounds up to 2^63 */
    mpb_value big = mpb_int(((int64_t)1 << 53) + 1), bigf = mpb_float(9007199254740992.0);
    ck_assert(!mpb_value_equal(&big, &bigf)); /* rounding through double would say equal */
    mpb_value umax = mpb_uint(UINT64_MAX), two64 = mpb_float(18446744073709551616.0);
    ck_assert(!mpb_value_equal(&umax, &two64));
    mpb_value imin = mpb_int(INT64_MIN), dmin = mpb_float(-9.223372036854775808e18);
    ck_assert(mpb_value_equal(&imin, &dmin));
}
END_TEST

START_TEST(nan_is_not_equal_to_itself)
{
    mpb_value n = mpb_float(NAN);
    ck_assert(!mpb_value_equal(&n, &n));
}
END_TEST

START_TEST(str_bin_and_other_types_are_never_equal)
{
    mpb_value s = mpb_str("a"), b = mpb_bin("a", 1), one = mpb_int(1), r = mpb_refv(1);
    mpb_value nil = mpb_nil(), f = mpb_bool(false);
    ck_assert(!mpb_value_equal(&s, &b));
    ck_assert(!mpb_value_equal(&one, &r));
    ck_assert(!mpb_value_equal(&nil, &f));
    ck_assert(mpb_value_equal(&nil, &nil));
    mpb_value_free(&s);
    mpb_value_free(&b);
}
END_TEST

START_TEST(maps_equal_as_sets_of_pairs)
{
    mpb_value a = mpb_map_value(), b = mpb_map_value();
    put(&a, mpb_str("x"), mpb_int(1));
    put(&a, mpb_int(2), mpb_str("y"));
    put(&b, mpb_float(2.0), mpb_str("y"));
    put(&b, mpb_str("x"), mpb_bool(true));
    ck_assert(mpb_value_equal(&a, &b));
    put(&b, mpb_str("z"), mpb_nil());
    ck_assert(!mpb_value_equal(&a, &b));
    mpb_value_free(&a);
    mpb_value_free(&b);
}
END_TEST

START_TEST(arrays_equal_item_by_item)
{
    int64_t xs[] = {1, 2}, ys[] = {1, 2, 3};
    mpb_value a = array_of_ints(2, xs), b = mpb_array_value(2), c = array_of_ints(3, ys);
    push(&b, mpb_float(1.0));
    push(&b, mpb_bool(false));
    ck_assert(!mpb_value_equal(&a, &b));
    b.v.a->items[1] = mpb_uint(2);
    ck_assert(mpb_value_equal(&a, &b));
    ck_assert(!mpb_value_equal(&a, &c));
    mpb_value_free(&a);
    mpb_value_free(&b);
    mpb_value_free(&c);
}
END_TEST

/*--- Ordering ---*/

START_TEST(numbers_order_exactly_across_types)
{
    mpb_value big = mpb_int(((int64_t)1 << 53) + 1), bigf = mpb_float(9007199254740992.0);
    ck_assert_int_gt(cmp(&big, &bigf), 0);
    ck_assert_int_lt(cmp(&bigf, &big), 0);
    mpb_value imax = mpb_int(INT64_MAX), d63 = mpb_float(9.223372036854775808e18);
    ck_assert_int_lt(cmp(&imax, &d63), 0);
    mpb_value u63 = mpb_uint((uint64_t)1 << 63), u63p = mpb_uint(((uint64_t)1 << 63) + 1);
    ck_assert_int_eq(cmp(&u63, &d63), 0);
    ck_assert_int_gt(cmp(&u63p, &d63), 0);
    ck_assert_int_gt(cmp(&u63, &imax), 0);
    ck_assert_int_lt(cmp(&imax, &u63), 0);
    mpb_value umax = mpb_uint(UINT64_MAX), two64 = mpb_float(18446744073709551616.0);
    ck_assert_int_lt(cmp(&umax, &two64), 0);
    mpb_value ninf = mpb_float(-INFINITY), inf = mpb_float(INFINITY), imin = mpb_int(INT64_MIN);
    ck_assert_int_lt(cmp(&ninf, &imin), 0);
    ck_assert_int_gt(cmp(&inf, &umax), 0);
    mpb_value half = mpb_float(0.5), zero = mpb_int(0), t = mpb_bool(true), neg = mpb_float(-0.5);
    ck_assert_int_gt(cmp(&half, &zero), 0);
    ck_assert_int_lt(cmp(&half, &t), 0);
    ck_assert_int_lt(cmp(&neg, &zero), 0);
    mpb_value negh = mpb_float(-1.5), m1 = mpb_int(-1), m2 = mpb_int(-2);
    ck_assert_int_lt(cmp(&negh, &m1), 0);
    ck_assert_int_gt(cmp(&negh, &m2), 0);
}
END_TEST

START_TEST(nan_orders_as_neither_less_nor_greater)
{
    mpb_value n = mpb_float(NAN), one = mpb_int(1);
    ck_assert_int_eq(cmp(&n, &one), 0);
    ck_assert_int_eq(cmp(&one, &n), 0);
}
END_TEST

START_TEST(strings_order_bytewise_then_by_length)
{
    mpb_value a = mpb_str("a"), b = mpb_str("b"), ab = mpb_str("ab"), e = mpb_str("\xc3\xa9");
    mpb_value z = mpb_str("z"), empty = mpb_str(""), ba = mpb_bin("a", 1), bb = mpb_bin("b", 1);
    ck_assert_int_lt(cmp(&a, &b), 0);
    ck_assert_int_gt(cmp(&ab, &a), 0);
    ck_assert_int_gt(cmp(&e, &z), 0); /* code point order */
    ck_assert_int_lt(cmp(&empty, &a), 0);
    ck_assert_int_eq(cmp(&a, &a), 0);
    ck_assert_int_lt(cmp(&ba, &bb), 0);
    mpb_value *all[] = {&a, &b, &ab, &e, &z, &empty, &ba, &bb};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mpb_value_free(all[i]);
}
END_TEST

START_TEST(arrays_order_lexicographically)
{
    int64_t x12[] = {1, 2}, x13[] = {1, 3}, x1[] = {1}, x10[] = {1, 0};
    mpb_value a12 = array_of_ints(2, x12), a13 = array_of_ints(2, x13);
    mpb_value a1 = array_of_ints(1, x1), a10 = array_of_ints(2, x10);
    ck_assert_int_lt(cmp(&a12, &a13), 0);
    ck_assert_int_lt(cmp(&a1, &a10), 0); /* equal prefix: shorter first */
    ck_assert_int_gt(cmp(&a10, &a1), 0);
    ck_assert_int_eq(cmp(&a12, &a12), 0);
    mpb_value nn1 = mpb_array_value(1), nn2 = mpb_array_value(1);
    push(&nn1, mpb_nil());
    push(&nn2, mpb_nil());
    ck_assert_int_eq(cmp(&nn1, &nn2), 0); /* equal items are never ordered */
    mpb_value mixed = mpb_array_value(2);
    push(&mixed, mpb_int(1));
    push(&mixed, mpb_str("a"));
    int r;
    ck_assert_int_eq(mpb_value_compare(&mixed, &a12, &r), -1); /* 'a' < 2: TypeError */
    ck_assert_int_eq(mpb_value_compare(&nn1, &a1, &r), -1);
    mpb_value *all[] = {&a12, &a13, &a1, &a10, &nn1, &nn2, &mixed};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mpb_value_free(all[i]);
}
END_TEST

START_TEST(unorderable_types_are_type_error)
{
    mpb_value nil = mpb_nil(), one = mpb_int(1), s = mpb_str("a"), b = mpb_bin("a", 1);
    mpb_value m1 = mpb_map_value(), m2 = mpb_map_value(), r1 = mpb_refv(1), r2 = mpb_refv(2);
    int r;
    ck_assert_int_eq(mpb_value_compare(&nil, &nil, &r), -1);
    ck_assert_int_eq(mpb_value_compare(&one, &s, &r), -1);
    ck_assert_int_eq(mpb_value_compare(&s, &b, &r), -1);
    ck_assert_int_eq(mpb_value_compare(&m1, &m2, &r), -1);
    ck_assert_int_eq(mpb_value_compare(&r1, &r2, &r), -1);
    ck_assert_int_eq(mpb_value_compare(&nil, &one, &r), -1);
    mpb_value *all[] = {&s, &b, &m1, &m2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mpb_value_free(all[i]);
}
END_TEST

/*--- Hashing ---*/

START_TEST(equal_numbers_hash_alike)
{
    mpb_value one = mpb_int(1), onef = mpb_float(1.0), t = mpb_bool(true);
    ck_assert_uint_eq(hash(&one), hash(&onef));
    ck_assert_uint_eq(hash(&one), hash(&t));
    mpb_value zero = mpb_int(0), f = mpb_bool(false), negz = mpb_float(-0.0);
    ck_assert_uint_eq(hash(&zero), hash(&f));
    ck_assert_uint_eq(hash(&zero), hash(&negz));
    mpb_value u63 = mpb_uint((uint64_t)1 << 63), d63 = mpb_float(9.223372036854775808e18);
    ck_assert_uint_eq(hash(&u63), hash(&d63));
    mpb_value imin = mpb_int(INT64_MIN), dmin = mpb_float(-9.223372036854775808e18);
    ck_assert_uint_eq(hash(&imin), hash(&dmin));
    mpb_value m7 = mpb_int(-7), m7f = mpb_float(-7.0), two = mpb_int(2);
    ck_assert_uint_eq(hash(&m7), hash(&m7f));
    ck_assert_uint_ne(hash(&one), hash(&two));
}
END_TEST

START_TEST(arrays_hash_from_their_items)
{
    mpb_value a = mpb_array_value(2), b = mpb_array_value(2), c = mpb_array_value(2);
    push(&a, mpb_int(1));
    push(&a, mpb_str("x"));
    push(&b, mpb_float(1.0));
    push(&b, mpb_str("x"));
    push(&c, mpb_str("x"));
    push(&c, mpb_int(1));
    ck_assert(mpb_value_equal(&a, &b));
    ck_assert_uint_eq(hash(&a), hash(&b));
    ck_assert_uint_ne(hash(&a), hash(&c));
    mpb_value_free(&a);
    mpb_value_free(&b);
    mpb_value_free(&c);
}
END_TEST

START_TEST(maps_and_arrays_holding_maps_are_unhashable)
{
    mpb_value m = mpb_map_value(), a = mpb_array_value(1);
    uint64_t h;
    ck_assert_int_eq(mpb_value_hash(&m, &h), -1);
    push(&a, mpb_int(1));
    push(&a, m);
    ck_assert_int_eq(mpb_value_hash(&a, &h), -1);
    mpb_value_free(&a);
}
END_TEST

/*--- Maps ---*/

START_TEST(map_insert_then_replace_keeps_first_key)
{
    mpb_map *m = mpb_map_new();
    mpb_value k = mpb_int(1), v = mpb_str("a"), old;
    ck_assert_int_eq(mpb_map_set(m, &k, &v, NULL), 1);
    ck_assert_int_eq(k.type, MPB_NIL);
    ck_assert_int_eq(v.type, MPB_NIL);
    k = mpb_float(1.0);
    v = mpb_str("b");
    ck_assert_int_eq(mpb_map_set(m, &k, &v, &old), 0);
    ck_assert_int_eq(k.type, MPB_NIL);
    ck_assert_str_eq(old.v.s, "a");
    mpb_value_free(&old);
    ck_assert_uint_eq(m->len, 1);
    mpb_value want = {0};
    want.type = MPB_MAP;
    want.v.m = m;
    check_repr(&want, "{1: 'b'}");
    mpb_map_free(m);
}
END_TEST

START_TEST(map_keeps_insertion_order_after_delete)
{
    mpb_value m = mpb_map_value(), key = mpb_str("b"), k, v;
    put(&m, mpb_str("a"), mpb_int(1));
    put(&m, mpb_str("b"), mpb_int(2));
    put(&m, mpb_str("c"), mpb_int(3));
    ck_assert(mpb_map_del(m.v.m, &key, &k, &v));
    ck_assert_str_eq(k.v.s, "b");
    ck_assert_int_eq(v.v.i, 2);
    mpb_value_free(&k);
    ck_assert(!mpb_map_del(m.v.m, &key, NULL, NULL));
    put(&m, mpb_str("b"), mpb_int(4)); /* re-inserted: goes last */
    check_repr(&m, "{'a': 1, 'c': 3, 'b': 4}");
    mpb_value_free(&key);
    mpb_value_free(&m);
}
END_TEST

START_TEST(map_pop_last_returns_most_recent_entry)
{
    mpb_value m = mpb_map_value(), k, v, key = mpb_int(3);
    for (int i = 0; i < 20; i++)
        put(&m, mpb_int(i), mpb_int(i * 10));
    ck_assert(mpb_map_del(m.v.m, &key, NULL, NULL));
    for (int i = 19; i >= 0; i--) {
        if (i == 3)
            continue;
        ck_assert(mpb_map_pop_last(m.v.m, &k, &v));
        ck_assert_int_eq(k.v.i, i);
        ck_assert_int_eq(v.v.i, i * 10);
    }
    ck_assert(!mpb_map_pop_last(m.v.m, &k, &v));
    ck_assert_uint_eq(m.v.m->len, 0);
    put(&m, mpb_str("again"), mpb_nil());
    check_repr(&m, "{'again': None}");
    mpb_value_free(&m);
}
END_TEST

START_TEST(map_compacts_tombstones_and_keeps_order)
{
    mpb_value m = mpb_map_value();
    for (int i = 0; i < 1000; i++)
        put(&m, mpb_int(i), mpb_int(-i));
    for (int i = 0; i < 1000; i++) {
        mpb_value k = mpb_int(i);
        if (i % 10 != 0)
            ck_assert(mpb_map_del(m.v.m, &k, NULL, NULL));
    }
    ck_assert_uint_eq(m.v.m->len, 100);
    ck_assert_uint_le(m.v.m->used, 200); /* tombstones never outnumber live entries */
    size_t it = 0, n = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m.v.m, &it)) != NULL) {
        ck_assert_int_eq(e->key.v.i, (int64_t)n * 10);
        n++;
    }
    ck_assert_uint_eq(n, 100);
    for (int i = 0; i < 1000; i += 10) {
        mpb_value k = mpb_int(i);
        mpb_value *got = mpb_map_get(m.v.m, &k);
        ck_assert_ptr_nonnull(got);
        ck_assert_int_eq(got->v.i, -i);
    }
    mpb_value_free(&m);
}
END_TEST

START_TEST(map_holds_1e5_int_and_str_keys)
{
    enum { N = 100000 };
    mpb_value m = mpb_map_value();
    char buf[32];
    for (int i = 0; i < N; i++) {
        put(&m, mpb_int(i), mpb_int(i));
        snprintf(buf, sizeof buf, "key%d", i);
        put(&m, mpb_str(buf), mpb_int(-i));
    }
    ck_assert_uint_eq(m.v.m->len, 2 * N);
    for (int i = 0; i < N; i++) {
        mpb_value k = mpb_float(i);
        snprintf(buf, sizeof buf, "key%d", i);
        mpb_value s = mpb_str_borrowed(buf, strlen(buf));
        ck_assert_int_eq(mpb_map_get(m.v.m, &k)->v.i, i);
        ck_assert_int_eq(mpb_map_get(m.v.m, &s)->v.i, -i);
        if (i % 2)
            ck_assert(mpb_map_del(m.v.m, &s, NULL, NULL));
    }
    ck_assert_uint_eq(m.v.m->len, N + N / 2);
    mpb_value missing = mpb_int(N);
    ck_assert_ptr_null(mpb_map_get(m.v.m, &missing));
    mpb_value copy;
    ck_assert_int_eq(mpb_value_copy(&copy, &m), 0);
    ck_assert(mpb_value_equal(&copy, &m));
    mpb_value_free(&copy);
    mpb_value_free(&m);
}
END_TEST

START_TEST(map_rejects_unhashable_key_without_taking_it)
{
    mpb_map *m = mpb_map_new();
    mpb_value k = mpb_map_value(), v = mpb_str("kept");
    ck_assert_int_eq(mpb_map_set(m, &k, &v, NULL), -2);
    ck_assert_int_eq(k.type, MPB_MAP);
    ck_assert_str_eq(v.v.s, "kept");
    ck_assert_ptr_null(mpb_map_get(m, &k));
    ck_assert(!mpb_map_del(m, &k, NULL, NULL));
    ck_assert_uint_eq(m->len, 0);
    mpb_value_free(&k);
    mpb_value_free(&v);
    mpb_map_free(m);
}
END_TEST

START_TEST(map_dup_is_deep_and_clear_leaves_it_usable)
{
    mpb_value m = mpb_map_value(), key = mpb_str("l");
    put(&m, mpb_str("l"), nested(2));
    mpb_map *d = mpb_map_dup(m.v.m);
    ck_assert_ptr_nonnull(d);
    mpb_value *orig = mpb_map_get(m.v.m, &key), *dup = mpb_map_get(d, &key);
    ck_assert(identical(orig, dup));
    ck_assert_ptr_ne(orig->v.a, dup->v.a);
    mpb_map_clear(m.v.m);
    ck_assert_uint_eq(m.v.m->len, 0);
    ck_assert_ptr_null(mpb_map_get(m.v.m, &key));
    put(&m, mpb_int(1), mpb_int(2));
    check_repr(&m, "{1: 2}");
    mpb_map_free(d);
    mpb_value_free(&key);
    mpb_value_free(&m);
}
END_TEST

START_TEST(map_cursor_resumes_across_compaction_and_clear)
{
    mpb_value m = mpb_map_value();
    for (int i = 0; i < 1000; i++)
        put(&m, mpb_int(i), mpb_nil());
    /* walk in chunks of 10 from a saved cursor, deleting each chunk behind the cursor
     * (the map compacts many times): every key once, in order */
    uint64_t cursor = 0;
    int next = 0;
    for (;;) {
        size_t it = mpb_map_seek(m.v.m, cursor);
        mpb_map_entry *e;
        int got[10], n = 0;
        while (n < 10 && (e = mpb_map_next(m.v.m, &it)) != NULL)
            got[n++] = (int)e->key.v.i;
        cursor = mpb_map_cursor(m.v.m, it);
        for (int j = 0; j < n; j++) {
            ck_assert_int_eq(got[j], next++);
            mpb_value k = mpb_int(got[j]);
            ck_assert(mpb_map_del(m.v.m, &k, NULL, NULL));
        }
        if (n < 10)
            break;
    }
    ck_assert_int_eq(next, 1000);
    ck_assert_uint_gt(m.v.m->base, 0);
    /* a cursor from before a clear resumes at the start of what came after it */
    put(&m, mpb_int(1), mpb_nil());
    put(&m, mpb_int(2), mpb_nil());
    cursor = mpb_map_cursor(m.v.m, 1);
    mpb_map_clear(m.v.m);
    put(&m, mpb_int(3), mpb_nil());
    size_t it = mpb_map_seek(m.v.m, cursor);
    mpb_map_entry *e = mpb_map_next(m.v.m, &it);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->key.v.i, 3);
    mpb_value_free(&m);
}
END_TEST

/*--- Repr ---*/

START_TEST(repr_of_scalars_matches_python)
{
    mpb_value nil = mpb_nil(), t = mpb_bool(true), f = mpb_bool(false), i = mpb_int(-7);
    mpb_value u = mpb_uint(UINT64_MAX), r = mpb_refv(7);
    check_repr(&nil, "None");
    check_repr(&t, "True");
    check_repr(&f, "False");
    check_repr(&i, "-7");
    check_repr(&u, "18446744073709551615");
    check_repr(&r, "<ref 7>");
}
END_TEST

START_TEST(repr_of_floats_is_shortest_round_trip_like_python)
{
    check_float_repr(2.5, "2.5");
    check_float_repr(1.0, "1.0");
    check_float_repr(100.0, "100.0");
    check_float_repr(0.1, "0.1");
    check_float_repr(0.3, "0.3");
    check_float_repr(2.0 / 3.0, "0.6666666666666666");
    check_float_repr(1e16, "1e+16");
    check_float_repr(1234567890123456.0, "1234567890123456.0");
    check_float_repr(123456789012345678.0, "1.2345678901234568e+17");
    check_float_repr(0.0001, "0.0001");
    check_float_repr(0.00001, "1e-05");
    check_float_repr(1.5e-7, "1.5e-07");
    check_float_repr(1e100, "1e+100");
    check_float_repr(5e-324, "5e-324");
    check_float_repr(1.7976931348623157e308, "1.7976931348623157e+308");
    check_float_repr(-0.0, "-0.0");
    check_float_repr(0.0, "0.0");
    check_float_repr(-2.5, "-2.5");
    check_float_repr(INFINITY, "inf");
    check_float_repr(-INFINITY, "-inf");
    check_float_repr(NAN, "nan");
}
END_TEST

START_TEST(repr_of_text_escapes_like_python)
{
    struct { const char *in; size_t n; bool bin; const char *want; } cases[] = {
        {"text", 4, false, "'text'"},
        {"it's", 4, false, "\"it's\""},
        {"a\"b'c", 5, false, "'a\"b\\'c'"},
        {"a\\b\n\t\r", 6, false, "'a\\\\b\\n\\t\\r'"},
        {"\0\x1f\x7f", 3, false, "'\\x00\\x1f\\x7f'"},
        {"caf\xc3\xa9", 5, false, "'caf\xc3\xa9'"},
        {"\xc2\xa0", 2, false, "'\\xa0'"},
        {"\xe2\x80\x8b", 3, false, "'\\u200b'"},
        {"\xff", 1, false, "'\\xff'"},
        {"", 0, false, "''"},
        {"\0", 1, true, "b'\\x00'"},
        {"ab'\xc3\xa9", 5, true, "b\"ab'\\xc3\\xa9\""},
        {"", 0, true, "b''"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mpb_value v = cases[i].bin ? mpb_bin(cases[i].in, cases[i].n)
                                   : mpb_strn(cases[i].in, cases[i].n);
        check_repr(&v, cases[i].want);
        mpb_value_free(&v);
    }
}
END_TEST

START_TEST(repr_of_containers_matches_python)
{
    int64_t xs[] = {1, 2};
    mpb_value a = array_of_ints(2, xs), m = mpb_map_value(), e = mpb_array_value(0);
    mpb_value em = mpb_map_value();
    check_repr(&a, "[1, 2]");
    check_repr(&e, "[]");
    check_repr(&em, "{}");
    put(&m, mpb_str("a"), mpb_int(1));
    put(&m, mpb_str("b"), a);
    mpb_value inner = mpb_array_value(3);
    push(&inner, mpb_nil());
    push(&inner, mpb_float(2.5));
    push(&inner, mpb_refv(3));
    put(&m, mpb_bin("\0", 1), inner);
    check_repr(&m, "{'a': 1, 'b': [1, 2], b'\\x00': [None, 2.5, <ref 3>]}");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_int_eq(mpb_value_print(f, &m), 0);
    fclose(f);
    ck_assert_str_eq(buf, "{'a': 1, 'b': [1, 2], b'\\x00': [None, 2.5, <ref 3>]}");
    free(buf);
    mpb_value_free(&m);
    mpb_value_free(&e);
    mpb_value_free(&em);
}
END_TEST

/*--- Names and truth ---*/

START_TEST(type_names_are_pythons)
{
    mpb_value vs[] = {mpb_nil(), mpb_bool(1), mpb_int(1), mpb_uint(UINT64_MAX), mpb_float(1),
                      mpb_str("s"), mpb_bin("b", 1), mpb_array_value(0), mpb_map_value(),
                      mpb_refv(1)};
    const char *want[] = {"NoneType", "bool", "int", "int", "float",
                          "str", "bytes", "list", "dict", "ref"};
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        ck_assert_str_eq(mpb_type_name(&vs[i]), want[i]);
        ck_assert_int_eq(mpb_value_is_number(&vs[i]), i >= 1 && i <= 4);
        mpb_value_free(&vs[i]);
    }
}
END_TEST

START_TEST(truthiness_follows_python)
{
    mpb_value falsy[] = {mpb_nil(), mpb_bool(0), mpb_int(0), mpb_float(-0.0), mpb_str(""),
                         mpb_bin("", 0), mpb_array_value(4), mpb_map_value()};
    mpb_value truthy[] = {mpb_bool(1), mpb_int(-1), mpb_uint(UINT64_MAX), mpb_float(NAN),
                          mpb_str("0"), mpb_refv(0), nested(1)};
    for (size_t i = 0; i < sizeof falsy / sizeof falsy[0]; i++) {
        ck_assert_msg(!mpb_value_truthy(&falsy[i]), "falsy %zu", i);
        mpb_value_free(&falsy[i]);
    }
    for (size_t i = 0; i < sizeof truthy / sizeof truthy[0]; i++) {
        ck_assert_msg(mpb_value_truthy(&truthy[i]), "truthy %zu", i);
        mpb_value_free(&truthy[i]);
    }
}
END_TEST

/*--- Method table and error names ---*/

START_TEST(every_method_is_found_by_name)
{
    for (int id = 0; id < MPB_M__COUNT; id++) {
        const char *name = mpb_methods[id].name;
        ck_assert_ptr_nonnull(name);
        ck_assert_int_eq(mpb_method_lookup(name, strlen(name)), id);
        ck_assert_int_le(mpb_methods[id].min, mpb_methods[id].max);
    }
    ck_assert_int_eq(mpb_methods[MPB_M_LIST_APPEND].self, MPB_OT_LIST);
    ck_assert_int_eq(mpb_methods[MPB_M_MANAGER_CREATE].self, MPB_OT_NONE);
    ck_assert_uint_eq(mpb_methods[MPB_M_DICT_SETITEM].flags, MPB_F_WRITE);
}
END_TEST

START_TEST(unknown_method_is_minus_one)
{
    const char *bad[] = {"", "list.appen", "list.appendx", "LIST.APPEND", "nope"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_int_eq(mpb_method_lookup(bad[i], strlen(bad[i])), -1);
    ck_assert_int_eq(mpb_method_lookup("list.append\0xyz", 15), -1);
    ck_assert_int_eq(mpb_method_lookup("list.appendxyz", 11), MPB_M_LIST_APPEND);
}
END_TEST

START_TEST(otype_and_errkind_names_round_trip)
{
    for (int t = MPB_OT_NONE + 1; t < MPB_OT__COUNT; t++) {
        const char *n = mpb_otype_name((mpb_otype)t);
        ck_assert_int_eq(mpb_otype_from_name(n, strlen(n)), t);
    }
    ck_assert_str_eq(mpb_otype_name(MPB_OT_DICT), "dict");
    ck_assert_str_eq(mpb_otype_name(MPB_OT_NONE), "");
    ck_assert_int_eq(mpb_otype_from_name("dic", 3), MPB_OT_NONE);
    for (int k = MPB_E_NONE + 1; k < MPB_E__COUNT; k++) {
        const char *n = mpb_errkind_name((mpb_errkind)k);
        ck_assert_int_gt(strlen(n), 0);
        ck_assert_int_eq(mpb_errkind_from_name(n, strlen(n)), k);
    }
    ck_assert_str_eq(mpb_errkind_name(MPB_E_KEY), "KeyError");
    ck_assert_str_eq(mpb_errkind_name(MPB_E_NONE), "");
    ck_assert_int_eq(mpb_errkind_from_name("KeyErro", 7), MPB_E_NONE);
}

START_TEST(hashable_agrees_with_hash)
{
    mpb_value vals[5] = {mpb_int(1), mpb_str("s"), mpb_array_value(2), mpb_map_value(),
                         mpb_array_value(1)};
    mpb_value inner = mpb_map_value(), one = mpb_int(1);
    mpb_value_push(&vals[2], &one);
    mpb_value_push(&vals[4], &inner); /* a tuple holding a dict */
    for (int i = 0; i < 5; i++) {
        uint64_t h;
        ck_assert_int_eq(mpb_value_hashable(&vals[i]), mpb_value_hash(&vals[i], &h) == 0);
        mpb_value_free(&vals[i]);
    }
}
END_TEST

START_TEST(hash_randomize_changes_hashes_and_keeps_equal_values_equal)
{
    mpb_value one = mpb_int(1), onef = mpb_float(1.0), t = mpb_bool(true), s = mpb_str("key");
    uint64_t h1, h2, hf, ht, hs1, hs2;
    ck_assert_int_eq(mpb_value_hash(&one, &h1), 0);
    ck_assert_int_eq(mpb_value_hash(&s, &hs1), 0);
    mpb_hash_randomize();
    ck_assert_int_eq(mpb_value_hash(&one, &h2), 0);
    ck_assert_int_eq(mpb_value_hash(&s, &hs2), 0);
    ck_assert(h1 != h2 || hs1 != hs2); /* a new secret (2^-128 odds of a false failure) */
    ck_assert_int_eq(mpb_value_hash(&onef, &hf), 0);
    ck_assert_int_eq(mpb_value_hash(&t, &ht), 0);
    ck_assert(hf == h2 && ht == h2);
    mpb_value_free(&s);
}
END_TEST

END_TEST

/*--- Suite ---*/

static Suite *value_suite(void)
{
    Suite *s = suite_create("value");
    struct { const char *name; const TTest *tests[16]; } groups[] = {
        {"lifetime", {uint_normalises_small_values_to_int, strn_copies_embedded_nul_and_terminates,
                      copy_is_deep_and_owns_borrowed_bytes}},
        {"codec", {codec_round_trips_every_type, codec_round_trips_nesting_at_the_limit,
                   codec_ref_is_ext1_with_big_endian_id, codec_float32_decodes_as_float,
                   codec_ints_at_int64_and_uint64_boundaries,
                   object_int_accepts_only_integers_in_int64, object_bytes_accepts_str_and_bin_only,
                   from_object_too_deep_is_error_and_out_nil, from_object_bad_ext_is_type_error,
                   from_object_unhashable_key_is_type_error,
                   from_object_duplicate_keys_keep_first_key_last_value}},
        {"equality", {numbers_equal_across_types, nan_is_not_equal_to_itself,
                      str_bin_and_other_types_are_never_equal, maps_equal_as_sets_of_pairs,
                      arrays_equal_item_by_item}},
        {"ordering", {numbers_order_exactly_across_types, nan_orders_as_neither_less_nor_greater,
                      strings_order_bytewise_then_by_length, arrays_order_lexicographically,
                      unorderable_types_are_type_error}},
        {"hashing", {equal_numbers_hash_alike, arrays_hash_from_their_items,
                     maps_and_arrays_holding_maps_are_unhashable,
                     hash_randomize_changes_hashes_and_keeps_equal_values_equal,
                     hashable_agrees_with_hash}},
        {"map", {map_insert_then_replace_keeps_first_key, map_keeps_insertion_order_after_delete,
                 map_pop_last_returns_most_recent_entry, map_compacts_tombstones_and_keeps_order,
                 map_holds_1e5_int_and_str_keys, map_rejects_unhashable_key_without_taking_it,
                 map_dup_is_deep_and_clear_leaves_it_usable,
                 map_cursor_resumes_across_compaction_and_clear}},
        {"repr", {repr_of_scalars_matches_python, repr_of_floats_is_shortest_round_trip_like_python,
                  repr_of_text_escapes_like_python, repr_of_containers_matches_python,
                  type_names_are_pythons, truthiness_follows_python}},
        {"methods", {every_method_is_found_by_name, unknown_method_is_minus_one,
                     otype_and_errkind_names_round_trip}},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        TCase *tc = tcase_create(groups[g].name);
        tcase_set_timeout(tc, 30);
        for (size_t i = 0; i < 16 && groups[g].tests[i] != NULL; i++)
            tcase_add_test(tc, groups[g].tests[i]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(value_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
