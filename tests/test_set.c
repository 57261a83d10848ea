/* test_set.c - the shared set, and walking lists, dicts and sets in chunks (cursors),
 * against a real broker.
 *
 * Expected results are Python's: every sequence below was run on a Python set (the
 * elements compared as sets) and on an insertion-ordered model of it (dict.fromkeys),
 * which gives the order the broker promises; results are compared through
 * mpb_value_repr, which prints Python's repr.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

TB_DEFAULT_FIXTURE

#define V(text) tb_lit(text)
#define R(r) mpb_refv(r)
#define I(i) mpb_int(i)
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)
#define EXPECT_ERR(kind, method, ...) TB_EXPECT_ERR(C, kind, method, __VA_ARGS__)

static mpb_ref make(const char *type, const char *initial) { return tb_create(C, type, initial); }

/* An array value of references. */
static mpb_value refs(size_t n, const mpb_ref *r)
{
    mpb_value a = mpb_array_value(n);
    for (size_t i = 0; i < n; i++) {
        mpb_value x = R(r[i]);
        ck_assert_int_eq(mpb_value_push(&a, &x), 0);
    }
    return a;
}

/*--- set: Python's semantics ---*/

START_TEST(set_methods_behave_as_python)
{
    mpb_ref s = make("set", "[3, 1, 'a', 1.0, True, 3]");
    EXPECT("[3, 1, 'a']", "set.copy", R(s)); /* 1 == 1.0 == True: the first one stays */
    EXPECT("3", "set.len", R(s));
    EXPECT("None", "set.add", R(s), V("'b'"));
    EXPECT("None", "set.add", R(s), V("'a'"));
    EXPECT("None", "set.add", R(s), V("(1, 2)"));
    EXPECT("True", "set.contains", R(s), V("[1, 2]")); /* arrays are tuples */
    EXPECT("True", "set.contains", R(s), V("1.0"));
    EXPECT("False", "set.contains", R(s), V("2"));
    EXPECT_ERR("TypeError", "set.add", R(s), V("{'k': 1}"));
    EXPECT_ERR("TypeError", "set.add", R(s), V("[1, {'k': 1}]"));
    EXPECT_ERR("TypeError", "set.contains", R(s), V("{}"));
    EXPECT("None", "set.discard", R(s), V("'zz'"));
    EXPECT("None", "set.discard", R(s), V("True"));
    EXPECT_ERR("KeyError", "set.remove", R(s), V("1"));
    EXPECT("None", "set.remove", R(s), V("3"));
    EXPECT("['a', 'b', [1, 2]]", "set.copy", R(s));
    EXPECT("[1, 2]", "set.pop", R(s)); /* the most recently added */
    EXPECT("'b'", "set.pop", R(s));
    EXPECT("['a']", "set.items", R(s));
    EXPECT("None", "set.clear", R(s));
    EXPECT("0", "set.len", R(s));
    EXPECT_ERR("KeyError", "set.pop", R(s));
    EXPECT("[]", "set.copy", R(s));
    mpb_ref e = make("set", NULL);
    EXPECT("[]", "set.copy", R(e));
    EXPECT_ERR("TypeError", "set.add", R(e)); /* arity, checked by dispatch */
}
END_TEST

START_TEST(set_operations_take_arrays_maps_and_references)
{
    mpb_ref s = make("set", "[1, 2, 3, 4]");
    mpb_ref t = make("set", "[3, 4, 5]");
    mpb_ref l = make("list", "[4, 6, 6, 1]");
    mpb_ref d = make("dict", "{1: 'x', 7: 'y'}");
    EXPECT("[1, 2, 3, 4]", "set.union", R(s));
    EXPECT("[1, 2, 3, 4, 5, 6, 7]", "set.union", R(s), R(t), R(l), R(d));
    EXPECT("[1, 2, 3, 4, 9, 8]", "set.union", R(s), V("[9, 2, 9]"), V("{8: None}"));
    EXPECT("[3, 4]", "set.intersection", R(s), R(t));
    EXPECT("[4]", "set.intersection", R(s), R(t), R(l));
    EXPECT("[1, 2, 3, 4]", "set.intersection", R(s));
    EXPECT("[]", "set.intersection", R(s), V("[]"));
    EXPECT("[1, 2]", "set.difference", R(s), R(t));
    EXPECT("[2]", "set.difference", R(s), R(t), V("[1]"));
    EXPECT("[2, 3]", "set.difference", R(s), R(l));
    EXPECT("[2, 3, 4]", "set.difference", R(s), R(d)); /* a dict's keys */
    EXPECT("[1, 2, 5]", "set.symmetric_difference", R(s), R(t));
    EXPECT("[]", "set.symmetric_difference", R(s), R(s));
    EXPECT("[]", "set.difference", R(s), R(s));
    EXPECT("True", "set.issubset", R(s), V("[1, 2, 3, 4, 5]"));
    EXPECT("False", "set.issubset", R(s), R(t));
    EXPECT("True", "set.issubset", R(s), R(s));
    EXPECT("True", "set.issuperset", R(s), V("[1, 1, 4]"));
    EXPECT("False", "set.issuperset", R(s), R(l));
    EXPECT("True", "set.issuperset", R(s), V("[]"));
    EXPECT("False", "set.isdisjoint", R(s), R(t));
    EXPECT("True", "set.isdisjoint", R(s), V("[5, 'a', (1, 2)]"));
    EXPECT("True", "set.isdisjoint", R(t), R(d));
    /* the set itself is unchanged by all of that */
    EXPECT("[1, 2, 3, 4]", "set.copy", R(s));
}
END_TEST

START_TEST(set_updates_in_place_behave_as_python)
{
    mpb_ref s = make("set", "[1, 2, 3]");
    mpb_ref t = make("set", "[3, 4]");
    mpb_ref l = make("list", "[5, 1]");
    EXPECT("None", "set.update", R(s), R(t), V("[5, 6, 5]"), R(l));
    EXPECT("[1, 2, 3, 4, 5, 6]", "set.copy", R(s));
    EXPECT("None", "set.update", R(s));
    EXPECT("None", "set.update", R(s), R(s));
    EXPECT("[1, 2, 3, 4, 5, 6]", "set.copy", R(s));
    EXPECT("None", "set.intersection_update", R(s), V("[6, 5, 4, 3, 2]"), V("[2, 4, 6, 8]"));
    EXPECT("[2, 4, 6]", "set.copy", R(s));
    EXPECT("None", "set.intersection_update", R(s), R(s));
    EXPECT("[2, 4, 6]", "set.copy", R(s));
    EXPECT("None", "set.difference_update", R(s), V("[2]"), R(t));
    EXPECT("[6]", "set.copy", R(s));
    EXPECT("None", "set.symmetric_difference_update", R(s), V("[6, 7, 8, 7]"));
    EXPECT("[7, 8]", "set.copy", R(s));
    EXPECT("None", "set.symmetric_difference_update", R(s), R(t));
    EXPECT("[7, 8, 3, 4]", "set.copy", R(s));
    EXPECT("None", "set.symmetric_difference_update", R(s), R(s));
    EXPECT("[]", "set.copy", R(s));
    EXPECT("None", "set.update", R(s), V("['x', 'y']"));
    EXPECT("None", "set.difference_update", R(s), R(s));
    EXPECT("[]", "set.copy", R(s));
    EXPECT("None", "set.update", R(s), V("[1, 2]"));
    EXPECT("None", "set.intersection_update", R(s), V("[]"));
    EXPECT("[]", "set.copy", R(s));
    /* the operands are never changed */
    EXPECT("[3, 4]", "set.copy", R(t));
    EXPECT("[5, 1]", "list.copy", R(l));
}
END_TEST

START_TEST(failing_set_calls_change_nothing)
{
    mpb_ref s = make("set", "[1, 2]");
    mpb_ref lk = make("lock", NULL);
    /* the bad operand comes last: the good ones before it must not have been applied
     * (Python's update would have added 3 and 4 before failing) */
    EXPECT_ERR("TypeError", "set.update", R(s), V("[3, 4]"), V("[5, {}]"));
    EXPECT_ERR("TypeError", "set.update", R(s), V("[3]"), V("5"));
    EXPECT_ERR("TypeError", "set.update", R(s), V("[3]"), V("'abc'")); /* no str iteration */
    EXPECT_ERR("TypeError", "set.update", R(s), V("[3]"), R(lk));
    EXPECT_ERR("NoSuchObject", "set.update", R(s), V("[3]"), R(99999));
    EXPECT_ERR("NoSuchObject", "set.add", R(s), R(99999));
    EXPECT_ERR("TypeError", "set.intersection_update", R(s), V("[1]"), V("[{}]"));
    EXPECT_ERR("TypeError", "set.difference_update", R(s), V("[1]"), V("None"));
    EXPECT_ERR("TypeError", "set.symmetric_difference_update", R(s), V("[{}]"));
    EXPECT_ERR("TypeError", "set.symmetric_difference_update", R(s));
    EXPECT_ERR("TypeError", "set.union", R(s), V("[[{}]]"));
    EXPECT_ERR("TypeError", "set.issubset", R(s), V("3"));
    EXPECT("[1, 2]", "set.copy", R(s));
    /* a bad INITIAL creates nothing */
    EXPECT_ERR("TypeError", "manager.create", V("'set'"), V("{1: 2}"));
    EXPECT_ERR("TypeError", "manager.create", V("'set'"), V("[1, {}]"));
    EXPECT_ERR("TypeError", "manager.open", V("'set'"), V("'s'"), V("[{}]"));
    mpb_ref got;
    ck_assert_int_eq(mpb_lookup(C, "s", &got), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "NoSuchObject");
    EXPECT_ERR("TypeError", "set.len", R(lk)); /* a lock is not a set */
}
END_TEST

/* Is the object alive? (its len answers) */
static bool alive(mpb_ref r, const char *len_method)
{
    mpb_value args[1] = {R(r)}, out;
    int rc = mpb_call(C, len_method, args, 1, &out);
    if (rc == MPB_OK) return true;
    ck_assert_str_eq(C->errkind, "NoSuchObject");
    return false;
}

START_TEST(set_elements_holding_references_keep_their_objects_alive)
{
    mpb_ref s, t, d[4];
    ck_assert_int_eq(mpb_open(C, "set", "refs", NULL, &s), MPB_OK);
    ck_assert_int_eq(mpb_open(C, "set", "refs2", NULL, &t), MPB_OK);
    mpb_context *c2 = tb_connect(&B);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(mpb_create(c2, "dict", NULL, &d[i]), MPB_OK);
    mpb_value e = R(d[0]);
    ck_assert_int_eq(mpb_set_add(c2, s, &e), MPB_OK);
    mpb_value a = refs(3, (mpb_ref[]){d[1], d[2], d[3]});
    ck_assert_int_eq(mpb_set_update(c2, t, &a), MPB_OK);
    mpb_value_free(&a);
    mpb_value pair = mpb_array_value(2); /* a tuple that holds a reference */
    mpb_value x = V("'tag'"), y = R(d[3]);
    mpb_value_push(&pair, &x);
    mpb_value_push(&pair, &y);
    ck_assert_int_eq(mpb_set_add(c2, s, &pair), MPB_OK);
    mpb_value_free(&pair);
    mpb_free(c2); /* its holds go: only the sets keep the dicts */
    usleep(100000);
    for (int i = 0; i < 4; i++) ck_assert(alive(d[i], "dict.len"));
    /* remove, discard, pop, difference_update, intersection_update, clear each let go */
    EXPECT("None", "set.remove", R(s), R(d[0]));
    ck_assert(!alive(d[0], "dict.len"));
    EXPECT("None", "set.update", R(s), R(t)); /* d[1..3] now in both sets */
    EXPECT("None", "set.difference_update", R(t), refs(1, (mpb_ref[]){d[1]}));
    ck_assert(alive(d[1], "dict.len"));
    EXPECT("None", "set.intersection_update", R(s), refs(2, (mpb_ref[]){d[2], d[3]}));
    ck_assert(!alive(d[1], "dict.len"));
    EXPECT("None", "set.symmetric_difference_update", R(t), refs(1, (mpb_ref[]){d[2]}));
    ck_assert(alive(d[2], "dict.len")); /* still in s */
    EXPECT("None", "set.discard", R(s), R(d[2]));
    ck_assert(!alive(d[2], "dict.len"));
    EXPECT("1", "set.len", R(s));
    EXPECT("1", "set.len", R(t));
    mpb_value got;
    ck_assert_int_eq(mpb_set_pop(C, t, &got), MPB_OK);
    ck_assert_int_eq(got.type, MPB_REF);
    ck_assert_uint_eq(got.v.ref, d[3]);
    ck_assert(alive(d[3], "dict.len")); /* still in s */
    EXPECT("None", "set.clear", R(s));
    ck_assert(!alive(d[3], "dict.len"));
    EXPECT_ERR("NoSuchObject", "set.add", R(s), R(d[3]));
    /* a set stored in a dict lives as long as it is stored */
    mpb_ref outer = make("dict", NULL);
    mpb_ref inner = make("set", "[1]");
    EXPECT("None", "dict.setitem", R(outer), V("'s'"), R(inner));
    ck_assert_int_eq(mpb_release(C, inner), MPB_OK);
    EXPECT("1", "set.len", R(inner));
    EXPECT("None", "dict.clear", R(outer));
    ck_assert(!alive(inner, "set.len"));
}
END_TEST

START_TEST(set_helpers_of_libmpbroker)
{
    mpb_ref s;
    ck_assert_int_eq(mpb_create(C, "set", NULL, &s), MPB_OK);
    mpb_value a = V("'a'"), b = V("(1, 2)"), m = V("{}");
    ck_assert_int_eq(mpb_set_add(C, s, &a), MPB_OK);
    ck_assert_int_eq(mpb_set_add(C, s, &b), MPB_OK);
    ck_assert_int_eq(mpb_set_add(C, s, &a), MPB_OK);
    ck_assert_int_eq(mpb_set_add(C, s, &m), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "TypeError");
    int present = -1;
    ck_assert_int_eq(mpb_set_contains(C, s, &a, &present), MPB_OK);
    ck_assert_int_eq(present, 1);
    int64_t n = -1;
    ck_assert_int_eq(mpb_set_len(C, s, &n), MPB_OK);
    ck_assert_int_eq(n, 2);
    mpb_value other = V("['c', 'a']"), got;
    ck_assert_int_eq(mpb_set_update(C, s, &other), MPB_OK);
    ck_assert_int_eq(mpb_set_copy(C, s, &got), MPB_OK);
    char *r = tb_repr(&got);
    ck_assert_str_eq(r, "['a', [1, 2], 'c']");
    free(r);
    mpb_value_free(&got);
    ck_assert_int_eq(mpb_set_discard(C, s, &a), MPB_OK);
    ck_assert_int_eq(mpb_set_discard(C, s, &a), MPB_OK);
    ck_assert_int_eq(mpb_set_remove(C, s, &a), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "KeyError");
    ck_assert_int_eq(mpb_set_contains(C, s, &a, &present), MPB_OK);
    ck_assert_int_eq(present, 0);
    ck_assert_int_eq(mpb_set_pop(C, s, &got), MPB_OK);
    ck_assert_str_eq(got.v.s, "c");
    mpb_value_free(&got);
    ck_assert_int_eq(mpb_set_remove(C, s, &b), MPB_OK);
    ck_assert_int_eq(mpb_set_pop(C, s, &got), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "KeyError");
    ck_assert_int_eq(got.type, MPB_NIL);
    ck_assert_int_eq(mpb_set_add(C, s, NULL), MPB_ERR_ARG);
    mpb_value_free(&a);
    mpb_value_free(&b);
    mpb_value_free(&m);
    mpb_value_free(&other);
    /* manager.methods lists the type and its methods */
    mpb_value methods;
    ck_assert_int_eq(mpb_call(C, "manager.methods", NULL, 0, &methods), MPB_OK);
    r = tb_repr(&methods);
    ck_assert_ptr_nonnull(strstr(r, "'name': 'set.symmetric_difference_update', 'type': 'set'"));
    ck_assert_ptr_nonnull(strstr(r, ", 'set'")); /* in the list of types */
    free(r);
    mpb_value_free(&methods);
}
END_TEST

/*--- Cursors: [ITEMS, NEXT] chunks ---*/

START_TEST(chunks_have_one_shape_for_list_dict_and_set)
{
    mpb_ref l = make("list", "[10, 11, 12, 13, 14]");
    EXPECT("[[10, 11], 2]", "list.slice", R(l), V("0"), V("2"));
    EXPECT("[[12, 13], 4]", "list.slice", R(l), V("2"), V("2"));
    EXPECT("[[14], None]", "list.slice", R(l), V("4"), V("2"));
    EXPECT("[[13, 14], None]", "list.slice", R(l), V("3"));
    EXPECT("[[10, 11, 12, 13, 14], None]", "list.slice", R(l), V("0"), V("5"));
    EXPECT("[[], None]", "list.slice", R(l), V("5"), V("2"));
    EXPECT("[[], None]", "list.slice", R(l), V("1000"));
    EXPECT("[[10], 1]", "list.slice", R(l), V("0"), V("1"));
    EXPECT("[[10, 11, 12, 13, 14], None]", "list.slice", R(l), V("0"), V("None"));
    EXPECT_ERR("ValueError", "list.slice", R(l), V("-1"), V("2"));
    EXPECT_ERR("ValueError", "list.slice", R(l), V("0"), V("0"));
    EXPECT_ERR("TypeError", "list.slice", R(l), V("None"), V("2"));
    EXPECT_ERR("TypeError", "list.slice", R(l), V("0.5"));
    EXPECT_ERR("TypeError", "list.slice", R(l));

    mpb_ref d = make("dict", "{'a': 1, 'b': 2, 'c': 3}");
    EXPECT("[['a', 1], ['b', 2], ['c', 3]]", "dict.items", R(d)); /* unchanged without START */
    EXPECT("[[['a', 1], ['b', 2]], 2]", "dict.items", R(d), V("0"), V("2"));
    EXPECT("[[['c', 3]], None]", "dict.items", R(d), V("2"), V("2"));
    EXPECT("[[['b', 2], ['c', 3]], None]", "dict.items", R(d), V("1"));
    EXPECT("[[], None]", "dict.items", R(d), V("3"), V("2"));
    EXPECT_ERR("ValueError", "dict.items", R(d), V("0"), V("-5"));
    mpb_ref e = make("dict", NULL);
    EXPECT("[[], None]", "dict.items", R(e), V("0"), V("10"));

    mpb_ref s = make("set", "['x', 'y', 'z']");
    EXPECT("['x', 'y', 'z']", "set.items", R(s));
    EXPECT("[['x', 'y'], 2]", "set.items", R(s), V("0"), V("2"));
    EXPECT("[['z'], None]", "set.items", R(s), V("2"), V("2"));
    /* positions are stable: deleting 'x' does not move 'z' */
    EXPECT("None", "set.discard", R(s), V("'x'"));
    EXPECT("[['z'], None]", "set.items", R(s), V("2"), V("2"));
    EXPECT("[['y'], 2]", "set.items", R(s), V("0"), V("1"));
    /* a deleted last entry leaves nothing after: the end, not an empty chunk */
    EXPECT("None", "set.discard", R(s), V("'z'"));
    EXPECT("[['y'], None]", "set.items", R(s), V("0"), V("1"));
    EXPECT("[[], None]", "set.items", R(s), V("2"), V("1"));
}
END_TEST

/* Append n ints [from, from + n) to list l, in batches. */
static void fill_list(mpb_ref l, int64_t from, int64_t n)
{
    const int64_t batch = 100000;
    for (int64_t b = 0; b < n; b += batch) {
        int64_t k = n - b < batch ? n - b : batch;
        mpb_value a = mpb_array_value((size_t)k);
        for (int64_t i = 0; i < k; i++) {
            mpb_value x = I(from + b + i);
            mpb_value_push(&a, &x);
        }
        ck_assert_int_eq(mpb_list_extend(C, l, &a), MPB_OK);
        mpb_value_free(&a);
    }
}

/* dict.update with {k: k * 2} for k in [from, from + n), in batches. */
static void fill_dict(mpb_ref d, int64_t from, int64_t n)
{
    const int64_t batch = 50000;
    for (int64_t b = 0; b < n; b += batch) {
        int64_t k = n - b < batch ? n - b : batch;
        mpb_value a = mpb_array_value((size_t)k);
        for (int64_t i = 0; i < k; i++) {
            mpb_value p = mpb_array_value(2), x = I(from + b + i), y = I((from + b + i) * 2);
            mpb_value_push(&p, &x);
            mpb_value_push(&p, &y);
            mpb_value_push(&a, &p);
        }
        mpb_value args[2] = {R(d), a};
        ck_assert_int_eq(mpb_call(C, "dict.update", args, 2, NULL), MPB_OK);
        mpb_value_free(&a);
    }
}

START_TEST(a_million_element_list_walks_in_chunks_each_item_once_in_order)
{
    const int64_t n = 1000000;
    mpb_ref l = make("list", NULL);
    fill_list(l, 0, n);
    mpb_iter *it = mpb_list_iter(C, l, 10000);
    ck_assert_ptr_nonnull(it);
    mpb_value *v;
    int64_t i = 0;
    int rc;
    while ((rc = mpb_iter_next(it, &v)) == 1) {
        ck_assert_int_eq(v->type, MPB_INT);
        if (v->v.i != i) ck_abort_msg("item %lld is %lld", (long long)i, (long long)v->v.i);
        i++;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(i, n);
    ck_assert_int_eq(mpb_iter_next(it, &v), 0); /* stays at the end */
    ck_assert_ptr_null(v);
    mpb_iter_free(it);
    /* the default chunk, and a chunk larger than the list */
    mpb_ref small = make("list", "[1, 2, 3]");
    for (int64_t chunk = 0; chunk <= 4; chunk += 4) {
        it = mpb_list_iter(C, small, chunk);
        int64_t sum = 0;
        while ((rc = mpb_iter_next(it, &v)) == 1) sum += v->v.i;
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(sum, 6);
        mpb_iter_free(it);
    }
    mpb_iter_free(NULL);
}
END_TEST

START_TEST(a_200k_entry_dict_walks_in_chunks_each_pair_once_in_order)
{
    const int64_t n = 200000;
    mpb_ref d = make("dict", NULL);
    fill_dict(d, 0, n);
    mpb_iter *it = mpb_dict_iter(C, d, 7000);
    mpb_value *v;
    int64_t i = 0;
    int rc;
    while ((rc = mpb_iter_next(it, &v)) == 1) {
        ck_assert_int_eq(v->type, MPB_ARRAY);
        ck_assert_int_eq(v->v.a->len, 2);
        mpb_value *kv = v->v.a->items;
        if (kv[0].v.i != i || kv[1].v.i != 2 * i)
            ck_abort_msg("pair %lld is [%lld, %lld]", (long long)i, (long long)kv[0].v.i,
                         (long long)kv[1].v.i);
        i++;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(i, n);
    mpb_iter_free(it);
}
END_TEST

/* Walk dict d (keys 0..n-1 present at the start, ints) in chunks of 1000; after each
 * chunk, delete the keys it showed that are not multiples of 3 (behind the cursor),
 * delete some keys not seen yet when `ahead` (marked in ahead_gone[]), and add one
 * new key. Counts the sightings of each key in seen[]; returns the keys in all. */
static int64_t walk_while_changing(mpb_ref d, int64_t n, bool ahead, int *seen,
                                   bool *ahead_gone)
{
    mpb_iter *it = mpb_dict_iter(C, d, 1000);
    mpb_value *v, args[2] = {R(d), I(0)};
    int64_t added = n, last = -1, chunk[1000];
    int rc, in_chunk = 0;
    while ((rc = mpb_iter_next(it, &v)) == 1) {
        int64_t k = v->v.a->items[0].v.i;
        ck_assert_int_ge(k, 0);
        ck_assert_int_lt(k, added);
        ck_assert_msg(!ahead_gone[k], "key %lld deleted before the walk got there", (long long)k);
        if (seen[k] == 0) {
            ck_assert_msg(k > last, "key %lld first seen after %lld", (long long)k, (long long)last);
            last = k;
        }
        seen[k]++;
        chunk[in_chunk++] = k;
        if (in_chunk < 1000) continue;
        in_chunk = 0; /* the next mpb_iter_next fetches the next chunk */
        for (int i = 0; i < 1000; i++) {
            if (chunk[i] % 3 == 0 || seen[chunk[i]] > 1) continue; /* a repeat: gone */
            args[1] = I(chunk[i]);
            ck_assert_int_eq(mpb_call(C, "dict.delitem", args, 2, NULL), MPB_OK);
        }
        for (int64_t j = last + 18; ahead && j < last + 5000 && j < n; j += 97) {
            if (ahead_gone[j]) continue;
            args[1] = I(j);
            ck_assert_int_eq(mpb_call(C, "dict.delitem", args, 2, NULL), MPB_OK);
            ahead_gone[j] = true;
        }
        mpb_value nk = I(added++), nv = I(-1);
        ck_assert_int_eq(mpb_dict_setitem(C, d, &nk, &nv), MPB_OK);
    }
    ck_assert_int_eq(rc, 0);
    mpb_iter_free(it);
    return added;
}

START_TEST(dict_cursor_survives_deletions_and_compaction)
{
    const int64_t n = 100000, room = n + n / 500;
    int *seen = calloc((size_t)room, sizeof *seen);
    bool *ahead_gone = calloc((size_t)room, sizeof *ahead_gone);
    /* deleting behind the cursor (which compacts the map many times over) and adding
     * at the end: every key, old and new, exactly once, in insertion order (the key
     * added after the last chunk may be missed: it came after the walk ended) */
    mpb_ref d = make("dict", NULL);
    fill_dict(d, 0, n);
    int64_t added = walk_while_changing(d, n, false, seen, ahead_gone);
    ck_assert_int_gt(added, n + 90);
    for (int64_t k = 0; k < added - 1; k++)
        ck_assert_msg(seen[k] == 1, "key %lld seen %d times", (long long)k, seen[k]);
    ck_assert_int_le(seen[added - 1], 1);
    /* deleting ahead too: a key deleted before the walk got there is never seen, every
     * other key at least once, first sightings in insertion order; a compaction may
     * make the walk repeat, at most as many keys as were deleted ahead */
    memset(seen, 0, (size_t)room * sizeof *seen);
    mpb_ref d2 = make("dict", NULL);
    fill_dict(d2, 0, n);
    added = walk_while_changing(d2, n, true, seen, ahead_gone);
    int64_t repeats = 0, gone = 0;
    for (int64_t k = 0; k < added - 1; k++) {
        if (ahead_gone[k]) {
            gone++;
            continue;
        }
        ck_assert_msg(seen[k] >= 1, "key %lld never seen", (long long)k);
        repeats += seen[k] - 1;
    }
    ck_assert_int_gt(gone, 0);
    ck_assert_int_le(repeats, gone);
    free(seen);
    free(ahead_gone);
}
END_TEST

START_TEST(set_walks_in_chunks_while_elements_go)
{
    const int64_t n = 50000;
    mpb_ref s = make("set", NULL);
    mpb_ref l = make("list", NULL);
    fill_list(l, 0, n);
    EXPECT("None", "set.update", R(s), R(l));
    /* pop everything walked so far (the consumer pattern): nothing skipped or repeated */
    mpb_iter *it = mpb_set_iter(C, s, 999);
    mpb_value *v;
    int64_t i = 0;
    int rc;
    while ((rc = mpb_iter_next(it, &v)) == 1) {
        ck_assert_int_eq(v->v.i, i);
        mpb_value k = *v;
        ck_assert_int_eq(mpb_set_discard(C, s, &k), MPB_OK);
        i++;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(i, n);
    mpb_iter_free(it);
    EXPECT("0", "set.len", R(s));
    /* a cleared set: a cursor from before goes on with what was added since */
    mpb_ref s2 = make("set", "[1, 2, 3]");
    EXPECT("[[1], 1]", "set.items", R(s2), V("0"), V("1"));
    EXPECT("None", "set.clear", R(s2));
    EXPECT("None", "set.update", R(s2), V("[7, 8]"));
    EXPECT("[[7, 8], None]", "set.items", R(s2), V("1"));
}
END_TEST

START_TEST(list_positions_shift_as_documented)
{
    mpb_ref l = make("list", "[0, 1, 2, 3, 4, 5]");
    /* a chunk is a consistent snapshot; positions are indexes, so a removal before the
     * cursor skips, an insertion before it repeats, an append is seen */
    EXPECT("[[0, 1], 2]", "list.slice", R(l), V("0"), V("2"));
    EXPECT("0", "list.pop", R(l), V("0"));
    EXPECT("[[3, 4], 4]", "list.slice", R(l), V("2"), V("2")); /* 2 skipped */
    EXPECT("None", "list.insert", R(l), V("0"), V("'new'"));
    EXPECT("None", "list.append", R(l), V("6"));
    EXPECT("[[4, 5, 6], None]", "list.slice", R(l), V("4")); /* 4 again */
}
END_TEST

START_TEST(iterators_report_errors_and_retry)
{
    mpb_value *v = (mpb_value *)1;
    mpb_iter *it = mpb_list_iter(C, 99999, 10);
    ck_assert_int_eq(mpb_iter_next(it, &v), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "NoSuchObject");
    ck_assert_ptr_null(v);
    mpb_iter_free(it);
    mpb_ref d = make("dict", "{'k': 1}");
    it = mpb_set_iter(C, d, 10);
    ck_assert_int_eq(mpb_iter_next(it, &v), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "TypeError");
    mpb_iter_free(it);
    it = mpb_dict_iter(C, d, 10);
    ck_assert_int_eq(mpb_iter_next(it, &v), 1);
    char *r = tb_repr(v);
    ck_assert_str_eq(r, "['k', 1]");
    free(r);
    ck_assert_int_eq(mpb_iter_next(it, &v), 0);
    ck_assert_int_eq(mpb_iter_next(NULL, &v), MPB_ERR_ARG);
    mpb_iter_free(it);
}
END_TEST

static Suite *set_suite(void)
{
    Suite *s = suite_create("set");
    TCase *tc = tcase_create("set");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, set_methods_behave_as_python);
    tcase_add_test(tc, set_operations_take_arrays_maps_and_references);
    tcase_add_test(tc, set_updates_in_place_behave_as_python);
    tcase_add_test(tc, failing_set_calls_change_nothing);
    tcase_add_test(tc, set_elements_holding_references_keep_their_objects_alive);
    tcase_add_test(tc, set_helpers_of_libmpbroker);
    suite_add_tcase(s, tc);
    TCase *cur = tcase_create("cursors");
    tcase_add_checked_fixture(cur, setup, teardown);
    tcase_set_timeout(cur, 240);
    tcase_add_test(cur, chunks_have_one_shape_for_list_dict_and_set);
    tcase_add_test(cur, a_million_element_list_walks_in_chunks_each_item_once_in_order);
    tcase_add_test(cur, a_200k_entry_dict_walks_in_chunks_each_pair_once_in_order);
    tcase_add_test(cur, dict_cursor_survives_deletions_and_compaction);
    tcase_add_test(cur, set_walks_in_chunks_while_elements_go);
    tcase_add_test(cur, list_positions_shift_as_documented);
    tcase_add_test(cur, iterators_report_errors_and_retry);
    suite_add_tcase(s, cur);
    return s;
}

int main(void)
{
    return tb_run(set_suite());
}
