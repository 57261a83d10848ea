/* test_integrity.c - stored references, the --max-memory count, slice arithmetic and
 * numeric ranges, against a real broker: the regression tests of issue 18's bugs in
 * the shared types (each failed before its fix).
 *
 * Expected results are Python's (list slices as CPython's PySlice_AdjustIndices,
 * ctypes/array ranges for typecodes); results are compared through mpb_value_repr.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static tb_broker B;
static mpb_context *C;

static void setup(void)
{
    tb_start(&B, 0, NULL);
    C = tb_connect(&B);
}
static void teardown(void)
{
    mpb_free(C);
    /* The broker must exit 0: under ASan that also means it leaked nothing. */
    ck_assert_int_eq(tb_stop(&B), 0);
}

#define V(text) tb_lit(text)
#define R(r) mpb_refv(r)
#define I(i) mpb_int(i)
#define S(s) mpb_str(s)
#define NIL mpb_nil()
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)
#define EXPECT_ERR(kind, method, ...) TB_EXPECT_ERR(C, kind, method, __VA_ARGS__)

static mpb_ref make(const char *type, const char *initial) { return tb_create(C, type, initial); }

/* An array value of references. */
static mpb_value refs2(mpb_ref a, mpb_ref b)
{
    mpb_value v = mpb_array_value(2), x = R(a), y = R(b);
    ck_assert_int_eq(mpb_value_push(&v, &x), 0);
    ck_assert_int_eq(mpb_value_push(&v, &y), 0);
    return v;
}

/* A map value {k1: v1, k2: v2} of references. */
static mpb_value refmap(const char *k1, mpb_ref v1, const char *k2, mpb_ref v2)
{
    mpb_value m = mpb_map_value(), k = S(k1), v = R(v1);
    ck_assert_int_eq(mpb_map_set(m.v.m, &k, &v, NULL), 1);
    k = S(k2);
    v = R(v2);
    ck_assert_int_eq(mpb_map_set(m.v.m, &k, &v, NULL), 1);
    return m;
}

/* [[k1, v1], [k2, v2]]: update's pairs form. */
static mpb_value refpairs(const char *k1, mpb_ref v1, const char *k2, mpb_ref v2)
{
    mpb_value a = mpb_array_value(2), p = mpb_array_value(2), k = S(k1), v = R(v1);
    mpb_value_push(&p, &k);
    mpb_value_push(&p, &v);
    mpb_value_push(&a, &p);
    p = mpb_array_value(2);
    k = S(k2);
    v = R(v2);
    mpb_value_push(&p, &k);
    mpb_value_push(&p, &v);
    mpb_value_push(&a, &p);
    return a;
}

/* The list object x still exists, holding its one item. */
static void alive_at(int line, mpb_ref x, const char *items)
{
    tb_expect_at(line, C, items, "list.copy", TB_ARGS(R(x)));
}
#define ALIVE(x, items) alive_at(__LINE__, x, items)

/*--- Bug 1: replacing a stored reference with itself, or swapping two ---*/

static mpb_ref X, Y; /* two lists, [1] and [2], that only the container under test keeps */

/* Both X and Y still alive; then the container's release frees them. */
static void both_alive_at(int line, mpb_ref c)
{
    alive_at(line, X, "[1]");
    alive_at(line, Y, "[2]");
    ck_assert_int_eq(mpb_release(C, c), MPB_OK);
    tb_expect_err_at(line, C, "NoSuchObject", "list.copy", TB_ARGS(R(X)));
    tb_expect_err_at(line, C, "NoSuchObject", "list.copy", TB_ARGS(R(Y)));
}
#define BOTH_ALIVE(c) both_alive_at(__LINE__, c)

static mpb_ref list_xy(void)
{
    mpb_ref l = make("list", NULL);
    X = make("list", "[1]");
    Y = make("list", "[2]");
    EXPECT("None", "list.extend", R(l), refs2(X, Y));
    ck_assert_int_eq(mpb_release(C, X), MPB_OK);
    ck_assert_int_eq(mpb_release(C, Y), MPB_OK);
    return l;
}

static mpb_ref map_xy(const char *type)
{
    mpb_ref d = make(type, NULL);
    X = make("list", "[1]");
    Y = make("list", "[2]");
    if (strcmp(type, "dict") == 0) {
        EXPECT("None", "dict.update", R(d), refmap("a", X, "b", Y));
    } else {
        EXPECT("None", "namespace.setattr", R(d), S("a"), R(X));
        EXPECT("None", "namespace.setattr", R(d), S("b"), R(Y));
    }
    ck_assert_int_eq(mpb_release(C, X), MPB_OK);
    ck_assert_int_eq(mpb_release(C, Y), MPB_OK);
    return d;
}

/* One case per iteration (_i), so each shows on its own. */
START_TEST(storing_a_reference_over_itself_or_swapping_keeps_the_objects)
{
    mpb_ref c;
    mpb_value one, x;
    switch (_i) {
    case 0: /* l[0:2] = [y, x] */
        c = list_xy();
        EXPECT("None", "list.setitem", R(c), I(0), I(2), refs2(Y, X));
        break;
    case 1: /* l[::-1] = [y, x]: an extended slice, each stored over itself */
        c = list_xy();
        EXPECT("None", "list.setitem", R(c), NIL, NIL, I(-1), refs2(Y, X));
        break;
    case 2: /* l[0] = x */
        c = list_xy();
        EXPECT("None", "list.setitem", R(c), I(0), R(X));
        break;
    case 3: /* l[0:1] = [x] */
        c = list_xy();
        one = mpb_array_value(1);
        x = R(X);
        mpb_value_push(&one, &x);
        EXPECT("None", "list.setitem", R(c), I(0), I(1), one);
        break;
    case 4: /* a swap by update, from a map */
        c = map_xy("dict");
        EXPECT("None", "dict.update", R(c), refmap("a", Y, "b", X));
        break;
    case 5: /* a swap by update, from pairs */
        c = map_xy("dict");
        EXPECT("None", "dict.update", R(c), refpairs("a", Y, "b", X));
        break;
    case 6:
        c = map_xy("dict");
        EXPECT("None", "dict.setitem", R(c), S("a"), R(X));
        break;
    case 7:
        c = map_xy("dict");
        EXPECT("True", "dict.cas", R(c), S("b"), R(Y), R(Y));
        break;
    case 8:
        c = map_xy("namespace");
        EXPECT("True", "namespace.cas", R(c), S("a"), R(X), R(X));
        break;
    default:
        c = map_xy("namespace");
        EXPECT("None", "namespace.setattr", R(c), S("b"), R(Y));
        break;
    }
    BOTH_ALIVE(c);
}
END_TEST

static Suite *integrity_suite(void)
{
    Suite *s = suite_create("integrity");
    TCase *tc = tcase_create("refs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, storing_a_reference_over_itself_or_swapping_keeps_the_objects, 0, 10);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tb_run(integrity_suite());
}
