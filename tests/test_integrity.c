/* test_integrity.c - stored references, the --max-memory count, slice arithmetic and
 * numeric ranges, against a real broker: the regression tests of issue 18's bugs in
 * the shared types (each failed before its fix).
 *
 * Expected results are Python's (list slices as CPython's PySlice_AdjustIndices,
 * ctypes/array ranges for typecodes); results are compared through mpb_value_repr.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

TB_DEFAULT_FIXTURE

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

/* --compact-size 1: the log is compacted into a snapshot as soon as it is twice the
 * last snapshot, so a restart loads objects afresh rather than replaying their
 * history (see compact_now). */
static void start_with_data(const char *max_memory)
{
    const char *args[] = {"--data-dir", datadir, "--max-memory", max_memory,
                          "--compact-size", "1", NULL};
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
 * counts is the truth the running broker's count must equal. Small writes first, so
 * that the state is in a snapshot, not only in the log's calls. */
static void fresh_broker_counts_the_same_at(int line, const char *max_memory)
{
    mpb_ref e;
    ck_assert_int_eq(mpb_open(C, "event", "compact", NULL, &e), MPB_OK);
    for (int i = 0; i < 100; i++) {
        EXPECT("None", "event.set", R(e));
        EXPECT("None", "event.clear", R(e));
    }
    int64_t now = stat_int(C, "memory_used");
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
    start_with_data(max_memory);
    int64_t fresh = stat_int(C, "memory_used");
    ck_assert_msg(fresh == now, "line %d: memory_used %lld, a fresh broker counts %lld", line,
                  (long long)now, (long long)fresh);
}
#define FRESH_BROKER_COUNTS_THE_SAME(max) fresh_broker_counts_the_same_at(__LINE__, max)

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
    FRESH_BROKER_COUNTS_THE_SAME("20000");
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
}
END_TEST

START_TEST(value_and_array_count_characters_as_a_fresh_load_does)
{
    start_with_data("1M");
    int64_t base = stat_int(C, "memory_used");
    mpb_ref v, a;
    mpb_value init = V("['u', 'a']");
    ck_assert_int_eq(mpb_open(C, "value", "V", &init, &v), MPB_OK);
    mpb_value_free(&init);
    init = V("['u', ['a', 'b', 'c']]");
    ck_assert_int_eq(mpb_open(C, "array", "A", &init, &a), MPB_OK);
    mpb_value_free(&init);
    /* 'u' items of 1, 3 and 4 bytes, set one by one and by a slice */
    EXPECT("None", "value.set", R(v), S("\xe2\x82\xac"));
    EXPECT("None", "array.setitem", R(a), I(0), S("\xe2\x82\xac"));
    mpb_value two = mpb_array_value(2), c1 = S("\xf0\x9d\x84\x9e"), c2 = S("x");
    mpb_value_push(&two, &c1);
    mpb_value_push(&two, &c2);
    EXPECT("None", "array.setitem", R(a), I(1), I(3), NIL, two);
    FRESH_BROKER_COUNTS_THE_SAME("1M");
    /* And back down: deleting the names leaves what was there before. */
    v = a = 0;
    ck_assert_int_eq(mpb_lookup(C, "V", &v), MPB_OK);
    ck_assert_int_eq(mpb_lookup(C, "A", &a), MPB_OK);
    EXPECT("None", "value.set", R(v), S("b"));
    EXPECT("None", "array.setitem", R(a), NIL, NIL, NIL, V("['p', 'q', 'r']"));
    FRESH_BROKER_COUNTS_THE_SAME("1M");
    ck_assert_int_eq(mpb_delete(C, "V"), MPB_OK);
    ck_assert_int_eq(mpb_delete(C, "A"), MPB_OK);
    ck_assert_int_eq(mpb_delete(C, "compact"), MPB_OK);
    ck_assert_int_eq(stat_int(C, "memory_used"), base);
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
}
END_TEST

/* Review of issue 18: a condition created without a lock makes its own rlock, and
 * that lock's state was never counted (a fresh load counts it: 40 bytes more). */
START_TEST(a_conditions_own_lock_is_counted_as_a_fresh_load_does)
{
    start_with_data("1M");
    int64_t base = stat_int(C, "memory_used");
    mpb_ref cond;
    ck_assert_int_eq(mpb_open(C, "condition", "C", NULL, &cond), MPB_OK);
    FRESH_BROKER_COUNTS_THE_SAME("1M");
    /* Deleting it takes back exactly what it brought, its lock included. */
    ck_assert_int_eq(mpb_delete(C, "C"), MPB_OK);
    ck_assert_int_eq(mpb_delete(C, "compact"), MPB_OK);
    ck_assert_int_eq(stat_int(C, "memory_used"), base);
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
}
END_TEST

/* Review of issue 18: a semaphore was charged its holders table as it was at
 * creation: empty when created by a client, one entry (a 16-slot table, 256 bytes)
 * when loaded from a snapshot with units held, so the counts differed. */
START_TEST(a_semaphore_with_units_held_is_counted_as_a_fresh_load_does)
{
    start_with_data("1M");
    int64_t base = stat_int(C, "memory_used");
    mpb_ref s;
    mpb_value three = I(3);
    ck_assert_int_eq(mpb_open(C, "semaphore", "S", &three, &s), MPB_OK);
    EXPECT("True", "semaphore.acquire", R(s));
    mpb_context *c2 = tb_connect(&B); /* a unit whose holder died: an orphan */
    TB_EXPECT(c2, "True", "semaphore.acquire", R(s));
    mpb_free(c2);
    FRESH_BROKER_COUNTS_THE_SAME("1M");
    ck_assert_int_eq(mpb_delete(C, "S"), MPB_OK);
    ck_assert_int_eq(mpb_delete(C, "compact"), MPB_OK);
    ck_assert_int_eq(stat_int(C, "memory_used"), base);
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&B), 0);
}
END_TEST

/*--- Bug 8: every way past --max-memory ---*/

static void limited_setup(void)
{
    static const char *const args[] = {"--max-memory", "1M", NULL};
    tb_start(&B, 0, args);
    C = tb_connect(&B);
}

/* The broker's peak resident size so far, in KiB (VmHWM). */
static long peak_rss_kib(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)B.pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kib = strtol(line + 6, NULL, 10);
    fclose(f);
    ck_assert_int_gt(kib, 0);
    return kib;
}

/* A str of n bytes, all c, with a distinct tag in front. */
static mpb_value big_str(size_t n, char c, int tag)
{
    char *p = malloc(n);
    memset(p, c, n);
    snprintf(p, n, "%d", tag);
    mpb_value v = mpb_strn(p, n);
    free(p);
    return v;
}

START_TEST(copies_from_other_objects_and_sized_creations_respect_max_memory)
{
    int64_t base = stat_int(C, "memory_used");
    /* A list of 700 KB: a set copying it would hold 1.4 MB under a 1 MiB limit. */
    mpb_ref l = make("list", NULL), s = make("set", "['keep']"), small = make("list", "['a', 'b']");
    mpb_ref d = make("dict", NULL), n = make("namespace", NULL);
    for (int i = 0; i < 70; i++) EXPECT("None", "list.append", R(l), big_str(10000, 'l', i));
    int64_t used = stat_int(C, "memory_used");
    EXPECT_ERR("OutOfMemory", "set.update", R(s), R(l));
    EXPECT_ERR("OutOfMemory", "set.update", R(s), R(small), R(l)); /* all or nothing */
    EXPECT_ERR("OutOfMemory", "set.symmetric_difference_update", R(s), R(l));
    EXPECT("['keep']", "set.copy", R(s));
    ck_assert_int_eq(stat_int(C, "memory_used"), used);
    /* What fits is still taken. */
    EXPECT("None", "set.update", R(s), R(small));
    EXPECT("None", "set.symmetric_difference_update", R(s), R(small));
    EXPECT("['keep']", "set.copy", R(s));

    /* A key and a value that each fit, but not both. */
    EXPECT_ERR("OutOfMemory", "dict.setitem", R(d), big_str(200000, 'k', 1), big_str(200000, 'v', 2));
    EXPECT("0", "dict.len", R(d));
    /* An attribute name is stored too. */
    EXPECT_ERR("OutOfMemory", "namespace.setattr", R(n), big_str(400000, 'n', 3), I(1));
    EXPECT("{}", "namespace.vars", R(n));
    ck_assert_int_eq(stat_int(C, "memory_used"), used);

    /* An array from a length is refused before its items are made. */
    ck_assert_int_eq(mpb_release(C, l), MPB_OK);
    long peak = peak_rss_kib();
    EXPECT_ERR("OutOfMemory", "manager.create", S("array"), V("['u', 67108864]"));
    EXPECT_ERR("OutOfMemory", "manager.create", S("array"), V("['d', 67108864]"));
    EXPECT_ERR("OutOfMemory", "manager.create", S("array"), V("['u', 70000]"));
    ck_assert_msg(peak_rss_kib() - peak < 64 * 1024, "peak RSS grew from %ld to %ld KiB", peak,
                  peak_rss_kib());
    mpb_ref a = make("array", "['u', 1000]");
    EXPECT("1000", "array.len", R(a));
    mpb_ref all[] = {s, small, d, n, a};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ck_assert_int_eq(mpb_release(C, all[i]), MPB_OK);
    ck_assert_int_eq(stat_int(C, "memory_used"), base);
}
END_TEST

/* An array literal ['X...X', 'tag'] whose first str is n bytes (an OTHER operand). */
static mpb_value big_other(size_t n, const char *tag)
{
    char *text = malloc(n + strlen(tag) + 16);
    text[0] = '[';
    text[1] = '\'';
    memset(text + 2, 'x', n);
    sprintf(text + 2 + n, "', '%s']", tag);
    mpb_value v = tb_lit(text);
    free(text);
    return v;
}

/* Found by the model test: the set updates that only remove were refused near the
 * limit (their OTHER counted as stored), though deletions are never refused. */
START_TEST(set_updates_that_only_remove_are_never_refused)
{
    mpb_ref s = make("set", "['a', 'b', 'c']"), l = make("list", NULL);
    for (int i = 0; i < 100; i++) EXPECT("None", "list.append", R(l), big_str(10000, 'f', i));
    int64_t used = stat_int(C, "memory_used");
    ck_assert_int_gt(used + 60000, 1 << 20);
    EXPECT_ERR("OutOfMemory", "set.update", R(s), big_other(60000, "d"));
    EXPECT("None", "set.difference_update", R(s), big_other(60000, "a"));
    EXPECT("['b', 'c']", "set.copy", R(s));
    EXPECT("None", "set.intersection_update", R(s), big_other(60000, "b"));
    EXPECT("['b']", "set.copy", R(s));
    ck_assert_int_lt(stat_int(C, "memory_used"), used);
}
END_TEST

/*--- Slices: CPython's PySlice_Unpack and PySlice_AdjustIndices, to the last bit ---*/

/* The table below is CPython's own answers: /usr/bin/python3 prints, for a list
 * [0, 1, 2, 3, 4] and every START STOP STEP in B x B x S, what l[s] is, l after
 * l[s] = [10, 11] (plain slices only), l after l[s] = an equal-length list (10, 11...),
 * and l after del l[s]. */
static const char slice_script[] =
    "import itertools\n"
    "B = [None, -2**63, -2**63 + 1, -6, -5, -1, 0, 1, 4, 5, 6, 2**63 - 1, 2**64 - 1]\n"
    "S = [None, 1, 2, -1, -2, -3, 2**63 - 1, -2**63 + 1, -2**63, 2**64 - 1]\n"
    "for a, b, c in itertools.product(B, B, S):\n"
    "    l = list(range(5)); s = slice(a, b, c); get = l[s]\n"
    "    set2 = None\n"
    "    if c in (None, 1):\n"
    "        set2 = l[:]; set2[s] = [10, 11]\n"
    "    seteq = l[:]; seteq[s] = list(range(10, 10 + len(get)))\n"
    "    gone = l[:]; del gone[s]\n"
    "    print(a, b, c, get, set2, seteq, gone, sep='|')\n";

static mpb_value slice_arg(const char *tok)
{
    if (strcmp(tok, "None") == 0) return NIL;
    if (tok[0] == '-') return I(strtoll(tok, NULL, 10));
    return mpb_uint(strtoull(tok, NULL, 10));
}

static mpb_value copy_of(mpb_value v)
{
    mpb_value c;
    ck_assert_int_eq(mpb_value_copy(&c, &v), 0);
    return c;
}

/* [from, from + 1, ... from + n - 1] */
static mpb_value range_value(int64_t from, size_t n)
{
    mpb_value a = mpb_array_value(n);
    for (size_t i = 0; i < n; i++) {
        mpb_value x = I(from + (int64_t)i);
        mpb_value_push(&a, &x);
    }
    return a;
}

/* One line of the table against a list l and an array a, both [0, 1, 2, 3, 4]. */
static void slice_case(int n, mpb_ref l, mpb_ref a, char *line)
{
    char *f[7], *save = NULL;
    for (int i = 0; i < 7; i++) {
        f[i] = strtok_r(i ? NULL : line, "|\n", &save);
        ck_assert_ptr_nonnull(f[i]);
    }
    mpb_value bounds[3] = {slice_arg(f[0]), slice_arg(f[1]), slice_arg(f[2])};
#define B3 copy_of(bounds[0]), copy_of(bounds[1]), copy_of(bounds[2])
    tb_expect_at(n, C, f[3], "list.getitem", TB_ARGS(R(l), B3));
    tb_expect_at(n, C, f[3], "array.getitem", TB_ARGS(R(a), B3));
    size_t len = strcmp(f[3], "[]") == 0 ? 0 : 1;
    for (const char *p = f[3]; *p; p++) len += *p == ',';
    if (strcmp(f[4], "None") != 0) {
        tb_expect_at(n, C, "None", "list.setitem", TB_ARGS(R(l), B3, range_value(10, 2)));
        tb_expect_at(n, C, f[4], "list.copy", TB_ARGS(R(l)));
        EXPECT("None", "list.setitem", R(l), NIL, NIL, range_value(0, 5));
    }
    tb_expect_at(n, C, "None", "list.setitem", TB_ARGS(R(l), B3, range_value(10, len)));
    tb_expect_at(n, C, f[5], "list.copy", TB_ARGS(R(l)));
    EXPECT("None", "list.setitem", R(l), NIL, NIL, range_value(0, 5));
    tb_expect_at(n, C, "None", "array.setitem", TB_ARGS(R(a), B3, range_value(10, len)));
    tb_expect_at(n, C, f[5], "array.tolist", TB_ARGS(R(a)));
    EXPECT("None", "array.setitem", R(a), NIL, NIL, NIL, range_value(0, 5));
    tb_expect_at(n, C, "None", "list.delitem", TB_ARGS(R(l), B3));
    tb_expect_at(n, C, f[6], "list.copy", TB_ARGS(R(l)));
    EXPECT("None", "list.setitem", R(l), NIL, NIL, range_value(0, 5));
#undef B3
    for (int i = 0; i < 3; i++) mpb_value_free(&bounds[i]);
}

START_TEST(slices_clamp_exactly_as_cpython)
{
    if (access("/usr/bin/python3", X_OK) != 0) {
        fprintf(stderr, "slices_clamp_exactly_as_cpython: no /usr/bin/python3, skipped\n");
        return;
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/mpbslice.XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, slice_script, sizeof slice_script - 1), (ssize_t)sizeof slice_script - 1);
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s", path);
    FILE *py = popen(cmd, "r");
    ck_assert_ptr_nonnull(py);
    mpb_ref l = make("list", "[0, 1, 2, 3, 4]"), a = make("array", "['q', [0, 1, 2, 3, 4]]");
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, py)) slice_case(++n, l, a, line);
    ck_assert_int_eq(pclose(py), 0);
    unlink(path);
    ck_assert_int_eq(n, 13 * 13 * 10);
}
END_TEST

/* The cases of the issue and the errors, without Python. */
START_TEST(slice_edges_of_the_int64_range)
{
    mpb_ref l = make("list", "[0, 1, 2, 3, 4]"), a = make("array", "['i', [0, 1, 2, 3, 4]]");
    mpb_value min = I(INT64_MIN), max = I(INT64_MAX);
    EXPECT("[4]", "list.getitem", R(l), NIL, NIL, min); /* step -(2**63 - 1), as CPython */
    EXPECT("[4]", "list.getitem", R(l), I(4), NIL, max);
    EXPECT("[0]", "list.getitem", R(l), NIL, NIL, mpb_uint(UINT64_MAX));
    EXPECT("[4]", "array.getitem", R(a), NIL, NIL, min);
    EXPECT("[]", "list.getitem", R(l), max, min, max);
    EXPECT("[4, 3, 2, 1, 0]", "list.getitem", R(l), max, min, I(-1));
    EXPECT("None", "list.setitem", R(l), I(4), NIL, max, V("[40]"));
    EXPECT("None", "list.setitem", R(l), NIL, NIL, min, V("[44]"));
    EXPECT("[0, 1, 2, 3, 44]", "list.copy", R(l));
    EXPECT("None", "array.setitem", R(a), I(4), NIL, max, V("[40]"));
    EXPECT("None", "array.setitem", R(a), NIL, NIL, min, V("[44]"));
    EXPECT("[0, 1, 2, 3, 44]", "array.tolist", R(a));
    EXPECT("None", "list.delitem", R(l), NIL, NIL, min);
    EXPECT("None", "list.delitem", R(l), I(2), NIL, max);
    EXPECT("[0, 1, 3]", "list.copy", R(l));
    EXPECT_ERR("ValueError", "list.getitem", R(l), NIL, NIL, I(0));
    EXPECT_ERR("ValueError", "list.setitem", R(l), NIL, NIL, I(0), V("[]"));
    EXPECT_ERR("ValueError", "list.delitem", R(l), NIL, NIL, I(0));
    EXPECT_ERR("ValueError", "array.getitem", R(a), NIL, NIL, I(0));
    EXPECT_ERR("ValueError", "array.setitem", R(a), NIL, NIL, I(0), V("[]"));
    EXPECT_ERR("TypeError", "list.getitem", R(l), S("1"), NIL, NIL);
    /* list.index's START and STOP clamp alike */
    EXPECT("1", "list.index", R(l), I(1), I(INT64_MIN), mpb_uint(UINT64_MAX));
    EXPECT_ERR("ValueError", "list.index", R(l), I(1), mpb_uint(UINT64_MAX));
    EXPECT("[0, 1, 3]", "list.copy", R(l));
    EXPECT("[0, 1, 2, 3, 44]", "array.tolist", R(a));
}
END_TEST

/*--- Value: a typecode's range, for set and incr alike ---*/

/* An integer as a value: negative as int, else as uint (normalised). */
static mpb_value num(__int128 x) { return x < 0 ? I((int64_t)x) : mpb_uint((uint64_t)x); }

static const char *num_text(__int128 x, char *buf)
{
    if (x < 0) snprintf(buf, 32, "%lld", (long long)x);
    else snprintf(buf, 32, "%llu", (unsigned long long)x);
    return buf;
}

START_TEST(integer_typecodes_keep_their_range_in_set_and_incr)
{
    static const struct { char tc; __int128 lo, hi; } codes[] = {
        {'b', -128, 127}, {'B', 0, 255}, {'h', -32768, 32767}, {'H', 0, 65535},
        {'i', INT32_MIN, INT32_MAX}, {'I', 0, UINT32_MAX}, {'l', INT64_MIN, INT64_MAX},
        {'q', INT64_MIN, INT64_MAX}, {'L', 0, UINT64_MAX}, {'Q', 0, UINT64_MAX},
    };
    const __int128 u64_top = UINT64_MAX, i64_bottom = INT64_MIN;
    char b1[32], init[48];
    for (size_t c = 0; c < sizeof codes / sizeof *codes; c++) {
        __int128 lo = codes[c].lo, hi = codes[c].hi;
        snprintf(init, sizeof init, "['%c']", codes[c].tc);
        mpb_ref v = make("value", init);
        /* up to the top, and not past it */
        EXPECT("None", "value.set", R(v), num(hi - 1));
        EXPECT(num_text(hi, b1), "value.incr", R(v));
        EXPECT_ERR("OverflowError", "value.incr", R(v));
        EXPECT_ERR("OverflowError", "value.incr", R(v), num(hi)); /* past 2^64 too */
        EXPECT(num_text(hi, b1), "value.get", R(v));
        if (hi < u64_top) EXPECT_ERR("OverflowError", "value.set", R(v), num(hi + 1));
        EXPECT(num_text(hi, b1), "value.get", R(v));
        /* down to the bottom (in steps a msgpack int can carry), and not past it */
        __int128 at = hi, down = lo - hi;
        for (; down < i64_bottom; down -= i64_bottom) {
            at += i64_bottom;
            EXPECT(num_text(at, b1), "value.incr", R(v), I(INT64_MIN));
        }
        EXPECT(num_text(lo, b1), "value.incr", R(v), num(down));
        EXPECT_ERR("OverflowError", "value.incr", R(v), I(-1));
        EXPECT_ERR("OverflowError", "value.incr", R(v), I(INT64_MIN));
        if (lo > i64_bottom) EXPECT_ERR("OverflowError", "value.set", R(v), num(lo - 1));
        EXPECT(num_text(lo, b1), "value.get", R(v));
        /* the whole range in one step, both ways (a uint delta on a signed one) */
        EXPECT(num_text(hi, b1), "value.incr", R(v), num(hi - lo));
        if (lo - hi >= i64_bottom) EXPECT(num_text(lo, b1), "value.incr", R(v), num(lo - hi));
        else EXPECT("None", "value.set", R(v), num(lo));
        EXPECT_ERR("TypeError", "value.incr", R(v), mpb_float(1.5));
        EXPECT_ERR("TypeError", "value.incr", R(v), S("1"));
        EXPECT(num_text(lo, b1), "value.get", R(v));
    }
    /* The case: a 'Q' holding 2**63 takes incr 1. */
    mpb_ref q = make("value", "['Q', 9223372036854775807]");
    EXPECT("9223372036854775808", "value.incr", R(q));
    EXPECT("9223372036854775809", "value.incr", R(q));
    EXPECT("9223372036854775808", "value.incr", R(q), I(-1));
    mpb_ref d = make("value", "['d', 1.5]");
    EXPECT("2.0", "value.incr", R(d), mpb_float(0.5));
    EXPECT("3.0", "value.incr", R(d));
    mpb_ref ch = make("value", "['u', 'a']");
    EXPECT_ERR("TypeError", "value.incr", R(ch));
}
END_TEST

/*--- Semaphore: a negative value is refused, in every form ---*/

START_TEST(a_semaphore_never_starts_negative)
{
    EXPECT_ERR("ValueError", "manager.create", S("semaphore"), I(-5));
    EXPECT_ERR("ValueError", "manager.create", S("boundedsemaphore"), I(-1));
    EXPECT_ERR("ValueError", "manager.open", S("semaphore"), S("s"), I(INT64_MIN));
    /* The snapshot's form, {"value", "initial", "held"}, is checked as strictly. */
    EXPECT_ERR("ValueError", "manager.create", S("semaphore"), V("{'value': -5}"));
    EXPECT_ERR("ValueError", "manager.create", S("semaphore"), V("{'value': 1, 'initial': -1}"));
    EXPECT_ERR("ValueError", "manager.create", S("semaphore"), V("{'value': 1, 'held': -1}"));
    EXPECT_ERR("ValueError", "manager.create", S("boundedsemaphore"),
               V("{'value': 3, 'initial': 2}"));
    EXPECT_ERR("TypeError", "manager.create", S("semaphore"), V("{'value': 'x'}"));
    EXPECT_ERR("ValueError", "manager.create", S("semaphore"), V("{'valu': 1}"));
    EXPECT_ERR("TypeError", "manager.create", S("semaphore"), S("3"));
    EXPECT("[]", "manager.objects");
    mpb_ref z = make("semaphore", "0"), s = make("semaphore", "{'value': 2, 'initial': 3}");
    EXPECT("0", "semaphore.value", R(z));
    EXPECT("2", "semaphore.value", R(s));
    EXPECT("False", "semaphore.acquire", R(z), mpb_bool(false));
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
    tcase_add_test(mem, value_and_array_count_characters_as_a_fresh_load_does);
    tcase_add_test(mem, a_conditions_own_lock_is_counted_as_a_fresh_load_does);
    tcase_add_test(mem, a_semaphore_with_units_held_is_counted_as_a_fresh_load_does);
    suite_add_tcase(s, mem);
    TCase *lim = tcase_create("limits");
    tcase_add_checked_fixture(lim, limited_setup, teardown);
    tcase_set_timeout(lim, 120);
    tcase_add_test(lim, copies_from_other_objects_and_sized_creations_respect_max_memory);
    tcase_add_test(lim, set_updates_that_only_remove_are_never_refused);
    suite_add_tcase(s, lim);
    TCase *sl = tcase_create("slices");
    tcase_add_checked_fixture(sl, setup, teardown);
    tcase_set_timeout(sl, 240);
    tcase_add_test(sl, slice_edges_of_the_int64_range);
    tcase_add_test(sl, slices_clamp_exactly_as_cpython);
    suite_add_tcase(s, sl);
    TCase *num = tcase_create("numbers");
    tcase_add_checked_fixture(num, setup, teardown);
    tcase_set_timeout(num, 60);
    tcase_add_test(num, integer_typecodes_keep_their_range_in_set_and_incr);
    tcase_add_test(num, a_semaphore_never_starts_negative);
    suite_add_tcase(s, num);
    return s;
}

int main(void)
{
    return tb_run(integrity_suite());
}
