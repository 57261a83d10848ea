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

/*--- Bug 2: the --max-memory count after parked requests ---*/

static int64_t stat_int(mpb_context *c, const char *key)
{
    mpb_value st;
    ck_assert_int_eq(mpb_call(c, "manager.stats", NULL, 0, &st), MPB_OK);
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    mpb_value *v = mpb_map_get(st.v.m, &k);
    ck_assert_ptr_nonnull(v);
    int64_t n = v->v.i;
    mpb_value_free(&st);
    return n;
}

static char datadir[64];

static void start_with_data(const char *max_memory)
{
    const char *args[] = {"--data-dir", datadir, "--max-memory", max_memory, NULL};
    tb_start(&B, 0, args);
    C = tb_connect(&B);
}

static void data_setup(void)
{
    snprintf(datadir, sizeof datadir, "/tmp/mpbdata.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(datadir));
    C = NULL;
}

static void data_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", datadir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Stop the broker (it must exit 0) and start a fresh one on the same data: what it
 * counts is the truth the running broker's count must equal. */
static int64_t memory_after_restart(const char *max_memory)
{
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
    start_with_data(max_memory);
    return stat_int(C, "memory_used");
}

START_TEST(parked_requests_leave_the_memory_count_as_it_was)
{
    start_with_data("20000");
    mpb_context *c2 = tb_connect(&B);
    mpb_ref l, e, q;
    ck_assert_int_eq(mpb_open(C, "list", "L", NULL, &l), MPB_OK);
    ck_assert_int_eq(mpb_open(C, "event", "E", NULL, &e), MPB_OK);
    mpb_value one = V("1");
    ck_assert_int_eq(mpb_open(C, "queue", "Q", &one, &q), MPB_OK);
    char chunk[9000];
    memset(chunk, 'm', sizeof chunk);
    EXPECT("None", "list.append", R(l), mpb_str_borrowed(chunk, sizeof chunk));
    EXPECT("None", "list.append", R(l), mpb_str_borrowed(chunk, sizeof chunk));
    int64_t used = stat_int(C, "memory_used");
    ck_assert_int_gt(used, 18000);

    /* Waits that time out: each parked with no item. */
    for (int i = 0; i < 200; i++) EXPECT("False", "event.wait", R(e), mpb_float(0.0005));
    ck_assert_int_eq(stat_int(C, "memory_used"), used);
    /* The limit still holds: 18000 more bytes are refused. */
    EXPECT_ERR("OutOfMemory", "list.append", R(l), mpb_str_borrowed(chunk, sizeof chunk));

    /* A put parked on a full queue: timed out, then one admitted by a get. */
    EXPECT("None", "queue.put", R(q), S("a"));
    int64_t with_a = stat_int(C, "memory_used");
    TB_EXPECT_ERR(c2, "Full", "queue.put", R(q), S("b"), mpb_bool(true), mpb_float(0.01));
    ck_assert_int_eq(stat_int(C, "memory_used"), with_a);
    mpb_value put[] = {R(q), S("b")};
    ck_assert_int_eq(mpb_append_call(c2, "queue.put", put, 2), MPB_OK);
    ck_assert_int_eq(mpb_flush(c2), MPB_OK);
    mpb_value_free(&put[1]);
    usleep(100000); /* parked by now (a later get would find the queue full anyway) */
    EXPECT("'a'", "queue.get", R(q));
    mpb_value res;
    ck_assert_int_eq(mpb_get_reply(c2, &res), MPB_OK);
    ck_assert_int_eq(res.type, MPB_NIL);
    ck_assert_int_eq(stat_int(C, "memory_used"), with_a); /* 'b' in place of 'a' */
    mpb_free(c2);

    /* A fresh broker loading the same data counts the same. */
    int64_t now = stat_int(C, "memory_used");
    ck_assert_int_eq(memory_after_restart("20000"), now);
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
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
    TCase *mem = tcase_create("memory");
    tcase_add_checked_fixture(mem, data_setup, data_teardown);
    tcase_set_timeout(mem, 120);
    tcase_add_test(mem, parked_requests_leave_the_memory_count_as_it_was);
    suite_add_tcase(s, mem);
    return s;
}

int main(void)
{
    return tb_run(integrity_suite());
}
