/* test_latency.c - issue 21, against a real broker: paged listings (manager.objects and
 * manager.clients with cursors and filters, every survivor seen exactly once while
 * others create and delete), the slow log, the complexity column of the method table,
 * the --max-op-items guard on whole-container reads.
 * Speed itself is never asserted (bench/latency measures it).
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

TB_DEFAULT_FIXTURE

#define I(i) mpb_int(i)
#define S(s) mpb_str(s)
#define NIL mpb_nil()
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)
#define EXPECT_ERR(kind, method, ...) TB_EXPECT_ERR(C, kind, method, __VA_ARGS__)

static const mpb_value *field(const mpb_value *map, const char *key)
{
    ck_assert_int_eq(map->type, MPB_MAP);
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    const mpb_value *v = mpb_map_get(map->v.m, &k);
    ck_assert_msg(v != NULL, "no field %s", key);
    return v;
}

/* Open n named objects "<prefix><i>" of type on c, pipelined (c holds them). */
static void open_many(mpb_context *c, const char *type, const char *prefix, int from, int n)
{
    for (int i = from; i < from + n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%d", prefix, i);
        mpb_value args[] = {mpb_str_borrowed(type, strlen(type)),
                            mpb_str_borrowed(name, strlen(name))};
        ck_assert_int_eq(mpb_append_call(c, "manager.open", args, 2), MPB_OK);
    }
    for (int i = 0; i < n; i++) ck_assert_int_eq(mpb_get_reply(c, NULL), MPB_OK);
}

/* Create n anonymous objects of type on c, pipelined (c holds them). */
static void create_many(mpb_context *c, const char *type, int n)
{
    for (int i = 0; i < n; i++) {
        mpb_value arg = mpb_str_borrowed(type, strlen(type));
        ck_assert_int_eq(mpb_append_call(c, "manager.create", &arg, 1), MPB_OK);
    }
    for (int i = 0; i < n; i++) ck_assert_int_eq(mpb_get_reply(c, NULL), MPB_OK);
}

/* One page of manager.objects / manager.clients: the rows (owned by *page) and the
 * next cursor (-1 for nil). */
static const mpb_array *page(mpb_context *c, const char *method, mpb_value *args, size_t n,
                             mpb_value *pg, int64_t *next)
{
    int rc = mpb_call(c, method, args, n, pg);
    for (size_t i = 0; i < n; i++) mpb_value_free(&args[i]);
    ck_assert_msg(rc == MPB_OK, "%s: %s", method, c->errstr);
    ck_assert_int_eq(pg->type, MPB_ARRAY);
    ck_assert_int_eq(pg->v.a->len, 2);
    const mpb_value *nx = &pg->v.a->items[1];
    if (nx->type == MPB_NIL) *next = -1;
    else {
        ck_assert_int_eq(nx->type, MPB_INT);
        ck_assert_int_ge(nx->v.i, 0);
        *next = nx->v.i;
    }
    ck_assert_int_eq(pg->v.a->items[0].type, MPB_ARRAY);
    return pg->v.a->items[0].v.a;
}

/* Index of "keep:<i>" in name, or -1. */
static int keep_index(const mpb_value *name, const char *prefix)
{
    if (name->type != MPB_STR || strncmp(name->v.s, prefix, strlen(prefix)) != 0) return -1;
    return atoi(name->v.s + strlen(prefix));
}

#define NKEEP 2500

/* The cursor is a creation number, not a hash-table slot: growing the table (new
 * objects), freeing objects and compacting the index between pages neither repeats
 * nor skips an object that lives through the walk. */
START_TEST(object_pages_see_every_survivor_exactly_once_while_others_create_and_delete)
{
    /* Survivors interleaved with objects that go: 2000 anonymous ones held only by
     * churn[0], freed when it closes mid-walk (holes ahead of and behind the cursor;
     * the index compacts), and each round a new connection makes 150 more (the
     * table grows) while the one from two rounds before closes. */
    enum { ROUNDS = 64 };
    mpb_context *churn[ROUNDS + 2] = {0};
    churn[0] = tb_connect(&B);
    for (int i = 0; i < 5; i++) {
        open_many(C, "list", "keep:", i * (NKEEP / 5), NKEEP / 5);
        create_many(churn[0], "dict", 400);
    }
    int seen[NKEEP] = {0};
    mpb_ref *refs = calloc(40000, sizeof *refs);
    size_t nrefs = 0;
    int64_t cursor = 0;
    int round = 0;
    do {
        mpb_value pg;
        const mpb_array *rows = page(C, "manager.objects", TB_ARGS(I(cursor), I(400)), &pg, &cursor);
        ck_assert_int_le(rows->len, 400);
        for (size_t i = 0; i < rows->len; i++) {
            const mpb_value *ref = field(&rows->items[i], "ref");
            ck_assert_int_eq(ref->type, MPB_REF);
            for (size_t j = 0; j < nrefs; j++)
                ck_assert_msg(refs[j] != ref->v.ref, "object %llu listed twice",
                              (unsigned long long)ref->v.ref);
            ck_assert_uint_lt(nrefs, 40000);
            refs[nrefs++] = ref->v.ref;
            int k = keep_index(field(&rows->items[i], "name"), "keep:");
            if (k >= 0) seen[k]++;
        }
        mpb_value_free(&pg);
        round++;
        ck_assert_int_le(round, ROUNDS);
        churn[round] = tb_connect(&B);
        create_many(churn[round], "set", 150);
        if (round >= 2) {
            mpb_free(churn[round - 2]);
            churn[round - 2] = NULL;
        }
        mpb_call(C, "manager.ping", NULL, 0, NULL); /* the close is served before the next page */
    } while (cursor >= 0);
    for (int k = 0; k < NKEEP; k++) ck_assert_msg(seen[k] == 1, "keep:%d seen %d times", k, seen[k]);
    for (int i = 0; i <= round; i++)
        if (churn[i]) mpb_free(churn[i]);
    free(refs);
}
END_TEST

START_TEST(object_pages_filter_by_type_and_name_prefix)
{
    open_many(C, "list", "job:", 0, 30);
    open_many(C, "dict", "job:", 30, 20);
    open_many(C, "list", "other:", 0, 25);
    open_many(C, "rlock", "job:", 50, 5);
    tb_create(C, "list", NULL); /* anonymous: no prefix matches it */
    int lists = 0, jobs = 0, joblists = 0, rlocks = 0;
    const char *types[] = {"list", NULL, "list", "rlock"};
    const char *prefixes[] = {NULL, "job:", "job:", NULL};
    int *counts[] = {&lists, &jobs, &joblists, &rlocks};
    for (int f = 0; f < 4; f++) {
        int64_t cursor = 0;
        do {
            mpb_value pg;
            const mpb_array *rows = page(C, "manager.objects",
                                         TB_ARGS(I(cursor), I(7), types[f] ? S(types[f]) : NIL,
                                                 prefixes[f] ? S(prefixes[f]) : NIL),
                                         &pg, &cursor);
            for (size_t i = 0; i < rows->len; i++) {
                const mpb_value *t = field(&rows->items[i], "type");
                const mpb_value *n = field(&rows->items[i], "name");
                if (types[f]) ck_assert_str_eq(t->v.s, types[f]);
                if (prefixes[f]) {
                    ck_assert_int_eq(n->type, MPB_STR);
                    ck_assert_int_eq(strncmp(n->v.s, prefixes[f], strlen(prefixes[f])), 0);
                }
                (*counts[f])++;
            }
            mpb_value_free(&pg);
        } while (cursor >= 0);
    }
    ck_assert_int_eq(lists, 56);
    ck_assert_int_eq(jobs, 55);
    ck_assert_int_eq(joblists, 30);
    ck_assert_int_eq(rlocks, 5); /* the typeid, not the family: locks are not rlocks */
    /* Without COUNT a page holds up to 100; the old form lists everything. */
    int64_t next;
    mpb_value pg;
    ck_assert_uint_eq(page(C, "manager.objects", TB_ARGS(I(0)), &pg, &next)->len, 81);
    ck_assert_int_eq(next, -1);
    mpb_value_free(&pg);
    ck_assert_int_eq(mpb_call(C, "manager.objects", NULL, 0, &pg), MPB_OK);
    ck_assert_uint_eq(pg.v.a->len, 81);
    mpb_value_free(&pg);
    /* Past the end: empty, NEXT nil. */
    ck_assert_uint_eq(page(C, "manager.objects", TB_ARGS(I(INT64_MAX)), &pg, &next)->len, 0);
    ck_assert_int_eq(next, -1);
    mpb_value_free(&pg);
    EXPECT_ERR("ValueError", "manager.objects", I(0), I(10), S("nosuchtype"));
    EXPECT_ERR("ValueError", "manager.objects", I(-1));
    EXPECT_ERR("ValueError", "manager.objects", I(0), I(0));
    EXPECT_ERR("TypeError", "manager.objects", S("x"));
    EXPECT_ERR("TypeError", "manager.objects", I(0), I(5), NIL, I(3));
}
END_TEST

/* No listing is O(number of objects) in one request: the one-reply form refuses past
 * a page (it used to pack 100,002 rows in 287 ms), and a filtered page that matches
 * nothing stops after examining a bounded number of entries, handing back a cursor. */
START_TEST(listings_are_bounded_per_request)
{
    open_many(C, "event", "e:", 0, 12000);
    EXPECT_ERR("TooLarge", "manager.objects");
    int64_t cursor = 0, pages = 0;
    do {
        mpb_value pg;
        const mpb_array *rows = page(C, "manager.objects", TB_ARGS(I(cursor), I(1000), NIL, S("zzz")),
                                     &pg, &cursor);
        ck_assert_uint_eq(rows->len, 0);
        mpb_value_free(&pg);
        pages++;
    } while (cursor >= 0);
    ck_assert_int_ge(pages, 2); /* 12,000 entries: more than one page's budget */
    /* manager.stats is O(1): with 12,000 objects it examines none of them, while a page
     * of 10 examines exactly 10 (counted by the broker in objects_scanned). */
    mpb_value st;
    ck_assert_int_eq(mpb_call(C, "manager.stats", NULL, 0, &st), MPB_OK);
    int64_t scanned = field(&st, "objects_scanned")->v.i;
    mpb_value_free(&st);
    ck_assert_int_eq(mpb_call(C, "manager.stats", NULL, 0, &st), MPB_OK);
    ck_assert_int_eq(field(&st, "objects_scanned")->v.i, scanned);
    mpb_value_free(&st);
    mpb_value p10;
    ck_assert_uint_eq(page(C, "manager.objects", TB_ARGS(I(0), I(10)), &p10, &cursor)->len, 10);
    mpb_value_free(&p10);
    ck_assert_int_eq(mpb_call(C, "manager.stats", NULL, 0, &st), MPB_OK);
    ck_assert_int_eq(field(&st, "objects_scanned")->v.i, scanned + 10);
    mpb_value_free(&st);
    /* COUNT past the most a page holds is a hint: the page is clamped; none: 100. */
    mpb_value pg;
    ck_assert_uint_eq(page(C, "manager.objects", TB_ARGS(I(0)), &pg, &cursor)->len, 100);
    ck_assert_int_ge(cursor, 0);
    mpb_value_free(&pg);
    ck_assert_uint_eq(page(C, "manager.objects", TB_ARGS(I(0), I(1000000)), &pg, &cursor)->len,
                      1000);
    mpb_value_free(&pg);
}
END_TEST

START_TEST(client_pages_see_every_connection_once)
{
    enum { N = 9 };
    mpb_context *cs[N];
    for (int i = 0; i < N; i++) cs[i] = tb_connect(&B);
    open_many(cs[3], "list", "h:", 0, 3);
    tb_create(cs[3], "list", NULL);
    mpb_ref again;
    ck_assert_int_eq(mpb_open(cs[3], "list", "h:0", NULL, &again), MPB_OK); /* 2 holds on h:0 */
    int64_t cursor = 0, seen = 0, selfs = 0, pages = 0;
    long long last = -1;
    do {
        mpb_value pg;
        const mpb_array *rows = page(C, "manager.clients", TB_ARGS(I(cursor), I(2)), &pg, &cursor);
        ck_assert_uint_le(rows->len, 2);
        for (size_t i = 0; i < rows->len; i++) {
            long long id = field(&rows->items[i], "id")->v.i;
            ck_assert_int_gt(id, last); /* by id, so none twice */
            last = id;
            seen++;
            if (field(&rows->items[i], "self")->v.b) selfs++;
            if (field(&rows->items[i], "holds")->v.i == 5) pages += 1000;
        }
        mpb_value_free(&pg);
        if (pages == 1) { /* a connection closes mid-walk (not yet listed or listed) */
            mpb_free(cs[N - 1]);
            cs[N - 1] = NULL;
        }
        pages++;
    } while (cursor >= 0);
    /* The test's own connection and the 9, minus the one closed (listed or not). */
    ck_assert_int_ge(seen, N);
    ck_assert_int_le(seen, N + 1);
    ck_assert_int_eq(selfs, 1);
    ck_assert_int_ge(pages, 1000); /* cs[3]'s 5 holds, counted without walking them */
    mpb_value all;
    ck_assert_int_eq(mpb_call(C, "manager.clients", NULL, 0, &all), MPB_OK);
    ck_assert_uint_eq(all.v.a->len, N);
    mpb_value_free(&all);
    EXPECT_ERR("ValueError", "manager.clients", I(0), I(0));
    for (int i = 0; i < N; i++)
        if (cs[i]) mpb_free(cs[i]);
}
END_TEST

/*--- The slow log ---*/

static tb_broker SB;

static void slow_start(const char *us, const char *len)
{
    const char *args[] = {"--slowlog-us", us, "--slowlog-len", len, NULL};
    tb_start(&SB, 0, us ? args : NULL);
    C = tb_connect(&SB);
}
static void slow_teardown(void)
{
    mpb_free(C);
    ck_assert_int_eq(tb_stop(&SB), 0);
}

/* A list of n ints in no order, made with list.extend chunks. */
static mpb_ref big_list(int n)
{
    mpb_ref l = tb_create(C, "list", NULL);
    for (int done = 0; done < n;) {
        int k = n - done < 100000 ? n - done : 100000;
        mpb_value chunk = mpb_array_value((size_t)k);
        for (int i = 0; i < k; i++) {
            mpb_value v = mpb_int((int64_t)(((done + i) * 7919LL) % 1000003));
            ck_assert_int_eq(mpb_value_push(&chunk, &v), 0);
        }
        mpb_value args[2] = {mpb_refv(l), chunk};
        ck_assert_int_eq(mpb_call(C, "list.extend", args, 2, NULL), MPB_OK);
        mpb_value_free(&chunk);
        done += k;
    }
    return l;
}

/* The slow log's entries (newest first), owned by *out. */
static const mpb_array *slowlog(mpb_value *out, int64_t count)
{
    mpb_value arg = mpb_int(count);
    ck_assert_int_eq(mpb_call(C, "manager.slowlog", &arg, count < 0 ? 0 : 1, out), MPB_OK);
    ck_assert_int_eq(out->type, MPB_ARRAY);
    return out->v.a;
}

static const mpb_value *find_method(const mpb_array *log, const char *method)
{
    for (size_t i = 0; i < log->len; i++)
        if (strcmp(field(&log->items[i], "method")->v.s, method) == 0) return &log->items[i];
    return NULL;
}

START_TEST(a_sort_of_a_million_items_is_in_the_slow_log_and_not_over_the_threshold)
{
    slow_start(_i == 0 ? NULL : "1G", "128"); /* the default 10 ms, or 2^30 us */
    mpb_ref l = big_list(1000000);
    mpb_value me;
    ck_assert_int_eq(mpb_call(C, "manager.clients", TB_ARGS(I(0), I(1000)), &me), MPB_OK);
    TB_EXPECT(C, "None", "list.sort", mpb_refv(l));
    mpb_value log;
    const mpb_value *e = find_method(slowlog(&log, 128), "list.sort");
    if (_i == 1) {
        ck_assert_ptr_null(e); /* nothing runs for 18 minutes */
    } else {
        /* Sorting 1M items takes well over 10 ms on any machine this runs on (that is
         * a fact about the request, not a speed assertion on the broker). */
        ck_assert_ptr_nonnull(e);
        ck_assert_int_ge(field(e, "duration_us")->v.i, 10000);
        ck_assert_int_eq(field(e, "nargs")->v.i, 1);
        ck_assert_int_ge(field(e, "arg_bytes")->v.i, 2); /* [ref]: the array and an ext */
        ck_assert_int_le(field(e, "arg_bytes")->v.i, 20);
        ck_assert_int_ge(field(e, "id")->v.i, 0);
        ck_assert_int_eq(field(e, "peer")->type, MPB_STR);
        ck_assert_int_gt(field(e, "time")->v.f, 1.6e9);
        /* The connection that sent it. */
        const mpb_array *rows = me.v.a->items[0].v.a;
        int64_t self = -1;
        for (size_t i = 0; i < rows->len; i++)
            if (field(&rows->items[i], "self")->v.b) self = field(&rows->items[i], "id")->v.i;
        ck_assert_int_eq(field(e, "conn")->v.i, self);
    }
    mpb_value_free(&log);
    mpb_value_free(&me);
}
END_TEST

START_TEST(the_slow_log_is_a_bounded_ring_newest_first_and_resets)
{
    slow_start("0", "5"); /* every request is slow: the ring is what is tested */
    char payload[1000];
    memset(payload, 'x', sizeof payload);
    for (int i = 0; i < 20; i++) {
        mpb_value p = mpb_str_borrowed(payload, (size_t)(i == 19 ? 1000 : 1));
        ck_assert_int_eq(mpb_call(C, "manager.ping", &p, 1, NULL), MPB_OK);
    }
    mpb_value log;
    const mpb_array *a = slowlog(&log, 100);
    ck_assert_uint_eq(a->len, 5); /* --slowlog-len */
    for (size_t i = 0; i < a->len; i++) {
        ck_assert_str_eq(field(&a->items[i], "method")->v.s, "manager.ping");
        if (i > 0)
            ck_assert_int_eq(field(&a->items[i], "id")->v.i,
                             field(&a->items[i - 1], "id")->v.i - 1);
    }
    /* [str of 1000]: array header 1 byte, str16 header 3, the bytes. */
    ck_assert_int_eq(field(&a->items[0], "arg_bytes")->v.i, 1004);
    ck_assert_int_eq(field(&a->items[1], "arg_bytes")->v.i, 3);
    mpb_value_free(&log);
    ck_assert_uint_eq(slowlog(&log, -1)->len, 5); /* COUNT defaults to 10 */
    mpb_value_free(&log);
    ck_assert_uint_eq(slowlog(&log, 2)->len, 2);
    ck_assert_str_eq(field(&log.v.a->items[0], "method")->v.s, "manager.slowlog");
    mpb_value_free(&log);
    TB_EXPECT(C, "None", "manager.slowlog_reset");
    a = slowlog(&log, 100);
    ck_assert_uint_eq(a->len, 1); /* only the reset, recorded once it had run */
    ck_assert_str_eq(field(&a->items[0], "method")->v.s, "manager.slowlog_reset");
    mpb_value_free(&log);
    TB_EXPECT_ERR(C, "ValueError", "manager.slowlog", I(-1));
    TB_EXPECT_ERR(C, "TypeError", "manager.slowlog", S("x"));
}
END_TEST

/* The shell's slowlog: the table, and reset. */
START_TEST(the_shell_shows_and_resets_the_slow_log)
{
    slow_start("0", "8");
    char cli[512], out[4096];
    snprintf(cli, sizeof cli, "%s", getenv("MPB_SERVER"));
    char *slash = strrchr(cli, '/');
    ck_assert_ptr_nonnull(slash);
    snprintf(slash + 1, cli + sizeof cli - slash - 1, "mpbroker-cli");
    TB_EXPECT(C, "'pong'", "manager.ping");
    const char *show[] = {cli, "-s", SB.sock, "slowlog", "3", NULL};
    ck_assert_int_eq(tb_run_prog(show, -1, NULL, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "DURATION") && strstr(out, "manager.ping"), "%s", out);
    const char *reset[] = {cli, "-s", SB.sock, "slowlog", "reset", NULL};
    ck_assert_int_eq(tb_run_prog(reset, -1, NULL, out, sizeof out), 0);
    mpb_value log;
    ck_assert_str_eq(field(&slowlog(&log, 10)->items[0], "method")->v.s, "manager.slowlog_reset");
    ck_assert_uint_eq(log.v.a->len, 1);
    mpb_value_free(&log);
    const char *bad[] = {cli, "-s", SB.sock, "slowlog", "-3", NULL};
    ck_assert_int_eq(tb_run_prog(bad, -1, NULL, out, sizeof out), 2);
}
END_TEST

START_TEST(slowlog_options_are_checked)
{
    char out[512];
    const char *bad[][3] = {{"--slowlog-us", "-1", NULL}, {"--slowlog-us", "10X", NULL},
                            {"--slowlog-len", "x", NULL}, {"--slowlog-len", "2000000", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = tb_run_server(bad[i], out, sizeof out);
        ck_assert_msg(st == 2, "%s %s: exit %d: %s", bad[i][0], bad[i][1], st, out);
        ck_assert_ptr_nonnull(strstr(out, bad[i][0]));
    }
}
END_TEST


/*--- --max-op-items: whole-container reads ---*/

/* An object of type with n items (array: n zeros of 'i'), made in one create. Items are
 * the ints 0..n-1 (dict: keys and values; namespace: attributes "a<i>"). */
static mpb_ref make_big(const char *type, int n)
{
    mpb_value init;
    if (strcmp(type, "array") == 0) {
        init = mpb_array_value(2);
        mpb_value tc = mpb_str("i"), len = mpb_int(n);
        ck_assert_int_eq(mpb_value_push(&init, &tc), 0);
        ck_assert_int_eq(mpb_value_push(&init, &len), 0);
    } else if (strcmp(type, "dict") == 0 || strcmp(type, "namespace") == 0) {
        mpb_map *m = mpb_map_new();
        ck_assert_ptr_nonnull(m);
        for (int i = 0; i < n; i++) {
            char name[32];
            snprintf(name, sizeof name, "a%d", i);
            mpb_value k = type[0] == 'd' ? mpb_int(i) : mpb_str(name), v = mpb_int(i);
            ck_assert_int_eq(mpb_map_set(m, &k, &v, NULL), 1);
        }
        init = (mpb_value){.type = MPB_MAP, .v.m = m};
    } else {
        init = mpb_array_value((size_t)n);
        for (int i = 0; i < n; i++) {
            mpb_value v = mpb_int(i);
            ck_assert_int_eq(mpb_value_push(&init, &v), 0);
        }
    }
    mpb_ref r;
    ck_assert_msg(mpb_create(C, type, &init, &r) == MPB_OK, "create %s: %s", type, C->errstr);
    mpb_value_free(&init);
    return r;
}

/* The array [from, from + 1, ... from + n - 1] (owned). */
static mpb_value ints(int from, int n)
{
    mpb_value arr = mpb_array_value((size_t)n);
    for (int i = 0; i < n; i++) {
        mpb_value v = mpb_int(from + i);
        ck_assert_int_eq(mpb_value_push(&arr, &v), 0);
    }
    return arr;
}

static void guard_start(const char *max_op_items)
{
    const char *args[] = {"--max-op-items", max_op_items, NULL};
    tb_start(&SB, 0, max_op_items ? args : NULL);
    C = tb_connect(&SB);
}

/* method on ref (with args) is TooLarge, and the message names the limit and walk. */
#define EXPECT_TOO_LARGE(walk, method, ...)                                               \
    do {                                                                                  \
        EXPECT_ERR("TooLarge", method, __VA_ARGS__);                                      \
        ck_assert_msg(strstr(C->errstr, "--max-op-items") && strstr(C->errstr, walk),     \
                      "%s: '%s' names no --max-op-items and %s", method, C->errstr, walk); \
    } while (0)

/* The length of ref (its family's len method) is n. */
static void expect_len(mpb_ref ref, const char *len_method, int64_t n)
{
    mpb_value arg = mpb_refv(ref), got;
    ck_assert_int_eq(mpb_call(C, len_method, &arg, 1, &got), MPB_OK);
    ck_assert_int_eq(got.type, MPB_INT);
    ck_assert_int_eq(got.v.i, n);
}

/* Every whole-container read of an object one item over the limit is TooLarge naming
 * its cursor form, and changes nothing; at the limit each answers everything. */
START_TEST(whole_container_reads_past_max_op_items_are_too_large_and_change_nothing)
{
    guard_start("1000");
    mpb_ref l = make_big("list", 1001), d = make_big("dict", 1001);
    mpb_ref ns = make_big("namespace", 1001), st = make_big("set", 1001);
    mpb_ref a = make_big("array", 1001), small = make_big("set", 600);
    EXPECT_TOO_LARGE("list.slice", "list.copy", mpb_refv(l));
    EXPECT_TOO_LARGE("list.slice", "list.getitem", mpb_refv(l), NIL, NIL);
    EXPECT_TOO_LARGE("list.slice", "list.getitem", mpb_refv(l), I(-1), NIL, I(-1));
    EXPECT_TOO_LARGE("dict.items START", "dict.keys", mpb_refv(d));
    EXPECT_TOO_LARGE("dict.items START", "dict.values", mpb_refv(d));
    EXPECT_TOO_LARGE("dict.items START", "dict.items", mpb_refv(d));
    EXPECT_TOO_LARGE("dict.items START", "dict.copy", mpb_refv(d));
    EXPECT_TOO_LARGE("namespace.vars START", "namespace.vars", mpb_refv(ns));
    EXPECT_TOO_LARGE("set.items START", "set.copy", mpb_refv(st));
    EXPECT_TOO_LARGE("set.items START", "set.items", mpb_refv(st));
    EXPECT_TOO_LARGE("set.items START", "set.union", mpb_refv(st));
    EXPECT_TOO_LARGE("set.items START", "set.difference", mpb_refv(st), tb_lit("[100000]"));
    EXPECT_TOO_LARGE("array.getitem", "array.tolist", mpb_refv(a));
    EXPECT_TOO_LARGE("array.getitem", "array.getitem", mpb_refv(a), NIL, NIL);
    /* A result over the limit from operands under it: 600 + 500 new elements. */
    EXPECT_TOO_LARGE("set.items START", "set.union", mpb_refv(small), ints(10000, 500));
    EXPECT_TOO_LARGE("set.items START", "set.symmetric_difference", mpb_refv(small),
                     ints(10000, 500));
    /* Nothing changed; small results of the same methods still answer. */
    expect_len(l, "list.len", 1001);
    expect_len(d, "dict.len", 1001);
    expect_len(st, "set.len", 1001);
    expect_len(small, "set.len", 600);
    expect_len(a, "array.len", 1001);
    EXPECT("[1000]", "list.getitem", mpb_refv(l), I(1000), NIL);
    EXPECT("[2]", "set.intersection", mpb_refv(st), tb_lit("[2, 5000]"));
    /* At the limit, everything in one reply. */
    TB_EXPECT(C, "1000", "list.pop", mpb_refv(l));
    TB_EXPECT(C, "1000", "dict.pop", mpb_refv(d), I(1000));
    TB_EXPECT(C, "None", "namespace.delattr", mpb_refv(ns), S("a1000"));
    TB_EXPECT(C, "None", "set.remove", mpb_refv(st), I(1000));
    const char *whole[][2] = {{"list.copy", "L"}, {"dict.keys", "D"}, {"dict.values", "D"},
                              {"dict.items", "D"}, {"dict.copy", "D"}, {"namespace.vars", "N"},
                              {"set.copy", "S"}, {"set.items", "S"}, {"set.union", "S"}};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        char t = whole[i][1][0];
        mpb_value arg = mpb_refv(t == 'L' ? l : t == 'D' ? d : t == 'N' ? ns : st), got;
        ck_assert_msg(mpb_call(C, whole[i][0], &arg, 1, &got) == MPB_OK, "%s: %s", whole[i][0],
                      C->errstr);
        size_t n = got.type == MPB_MAP ? got.v.m->len : got.v.a->len;
        ck_assert_msg(n == 1000, "%s: %zu items", whole[i][0], n);
        mpb_value_free(&got);
    }
}
END_TEST

/* The cursor forms walk what the one-reply forms refuse: a chunk asked bigger than the
 * limit, or with no COUNT, is cut to it, and NEXT goes on to the end. The limit takes
 * K as the other count options do (1K: 1024). */
START_TEST(cursor_forms_walk_everything_past_the_limit)
{
    guard_start("1K");
    mpb_ref l = make_big("list", 2500), d = make_big("dict", 2500);
    mpb_ref ns = make_big("namespace", 2500), st = make_big("set", 2500);
    EXPECT_TOO_LARGE("list.slice", "list.getitem", mpb_refv(l), I(0), I(1025));
    EXPECT_TOO_LARGE("list.slice", "list.copy", mpb_refv(l));
    mpb_value pg, args3[3] = {mpb_refv(l), I(0), I(1024)};
    ck_assert_int_eq(mpb_call(C, "list.getitem", args3, 3, &pg), MPB_OK); /* at the limit */
    ck_assert_uint_eq(pg.v.a->len, 1024);
    mpb_value_free(&pg);
    struct { mpb_ref ref; const char *method; char kind; } walks[] = {
        {l, "list.slice", 'l'}, {d, "dict.items", 'd'}, {ns, "namespace.vars", 'n'},
        {st, "set.items", 's'}};
    for (size_t w = 0; w < sizeof walks / sizeof walks[0]; w++)
        for (int with_count = 0; with_count < 2; with_count++) {
            int64_t cursor = 0, seen = 0, chunks = 0;
            while (cursor >= 0) {
                mpb_value args[3] = {mpb_refv(walks[w].ref), I(cursor), I(1000000)};
                const mpb_array *rows = page(C, walks[w].method, args, with_count ? 3 : 2, &pg,
                                             &cursor);
                ck_assert_uint_le(rows->len, 1024);
                for (size_t i = 0; i < rows->len; i++, seen++) {
                    const mpb_value *it = &rows->items[i];
                    if (walks[w].kind == 'd' || walks[w].kind == 'n') {
                        ck_assert_int_eq(it->v.a->items[1].v.i, seen);
                        it = &it->v.a->items[0];
                    }
                    if (walks[w].kind == 'n') {
                        char name[32];
                        snprintf(name, sizeof name, "a%lld", (long long)seen);
                        ck_assert_str_eq(it->v.s, name);
                    } else {
                        ck_assert_int_eq(it->v.i, seen);
                    }
                }
                mpb_value_free(&pg);
                chunks++;
            }
            ck_assert_msg(seen == 2500 && chunks == 3, "%s: %lld items in %lld chunks",
                          walks[w].method, (long long)seen, (long long)chunks);
        }
}
END_TEST

/* The default limit is 1M (2^20) items; 0 lifts it. */
START_TEST(the_default_is_one_m_items_and_zero_is_no_limit)
{
    guard_start(_i == 0 ? NULL : "0");
    mpb_ref l = big_list((1 << 20) + 1);
    mpb_value arg = mpb_refv(l), got;
    if (_i == 0) {
        EXPECT_TOO_LARGE("list.slice", "list.copy", mpb_refv(l));
        ck_assert_ptr_nonnull(strstr(C->errstr, "1048577 items"));
        ck_assert_ptr_nonnull(strstr(C->errstr, "limit of 1048576"));
        ck_assert_int_eq(mpb_call(C, "list.pop", &arg, 1, NULL), MPB_OK); /* to the limit */
    }
    ck_assert_int_eq(mpb_call(C, "list.copy", &arg, 1, &got), MPB_OK);
    ck_assert_uint_eq(got.v.a->len, _i == 0 ? 1 << 20 : (1 << 20) + 1);
    mpb_value_free(&got);
}
END_TEST

START_TEST(max_op_items_option_is_checked_and_documented)
{
    static char out[32768];
    const char *bad[][3] = {{"--max-op-items", "-1", NULL}, {"--max-op-items", "10X", NULL},
                            {"--max-op-items", "999", NULL}, {"--max-op-items", "", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = tb_run_server(bad[i], out, sizeof out);
        ck_assert_msg(st == 2, "%s '%s': exit %d: %s", bad[i][0], bad[i][1], st, out);
        ck_assert_ptr_nonnull(strstr(out, bad[i][0]));
    }
    const char *help[] = {"--help", NULL};
    ck_assert_int_eq(tb_run_server(help, out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "--max-op-items N"));
}
END_TEST

/*--- The complexity column ---*/

/* Every method has a cost in the method table (served by manager.methods), and
 * PROTOCOL.md's row for it ends with the same cost: the docs cannot drift. */
START_TEST(every_method_has_its_cost_in_the_table_and_in_protocol_md)
{
    const char *path = getenv("MPB_PROTOCOL_MD");
    ck_assert_ptr_nonnull(path);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char doc[1 << 20];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    fclose(f);
    doc[n] = 0;
    mpb_value all;
    ck_assert_int_eq(mpb_call(C, "manager.methods", NULL, 0, &all), MPB_OK);
    const mpb_value *ms = field(&all, "methods");
    ck_assert_uint_gt(ms->v.a->len, 100);
    for (size_t i = 0; i < ms->v.a->len; i++) {
        const char *name = field(&ms->v.a->items[i], "name")->v.s;
        const mpb_value *cost = field(&ms->v.a->items[i], "cost");
        ck_assert_int_eq(cost->type, MPB_STR);
        ck_assert_msg(strncmp(cost->v.s, "O(", 2) == 0, "%s: cost '%s'", name, cost->v.s);
        char head[96], tail[96];
        snprintf(head, sizeof head, "\n| `%s` |", name);
        snprintf(tail, sizeof tail, "| %s |\n", cost->v.s);
        const char *row = strstr(doc, head);
        ck_assert_msg(row != NULL, "PROTOCOL.md has no row for %s", name);
        const char *end = strchr(row + 1, '\n');
        ck_assert_msg(end && (size_t)(end - row) >= strlen(tail) - 1 &&
                          strncmp(end + 1 - strlen(tail), tail, strlen(tail)) == 0,
                      "PROTOCOL.md's row for %s does not end with '%s'", name, tail);
    }
    mpb_value_free(&all);
}
END_TEST

static Suite *latency_suite(void)
{
    Suite *s = suite_create("latency");
    TCase *pg = tcase_create("paging");
    tcase_add_checked_fixture(pg, setup, teardown);
    tcase_set_timeout(pg, 240);
    tcase_add_test(pg, object_pages_see_every_survivor_exactly_once_while_others_create_and_delete);
    tcase_add_test(pg, object_pages_filter_by_type_and_name_prefix);
    tcase_add_test(pg, listings_are_bounded_per_request);
    tcase_add_test(pg, client_pages_see_every_connection_once);
    suite_add_tcase(s, pg);
    TCase *sl = tcase_create("slowlog");
    tcase_set_timeout(sl, 240);
    tcase_add_checked_fixture(sl, NULL, slow_teardown);
    tcase_add_loop_test(sl, a_sort_of_a_million_items_is_in_the_slow_log_and_not_over_the_threshold, 0, 2);
    tcase_add_test(sl, the_slow_log_is_a_bounded_ring_newest_first_and_resets);
    tcase_add_test(sl, the_shell_shows_and_resets_the_slow_log);
    suite_add_tcase(s, sl);
    TCase *gd = tcase_create("max-op-items");
    tcase_set_timeout(gd, 240);
    tcase_add_checked_fixture(gd, NULL, slow_teardown);
    tcase_add_test(gd, whole_container_reads_past_max_op_items_are_too_large_and_change_nothing);
    tcase_add_test(gd, cursor_forms_walk_everything_past_the_limit);
    tcase_add_loop_test(gd, the_default_is_one_m_items_and_zero_is_no_limit, 0, 2);
    suite_add_tcase(s, gd);
    TCase *cx = tcase_create("cost");
    tcase_add_checked_fixture(cx, setup, teardown);
    tcase_set_timeout(cx, 60);
    tcase_add_test(cx, every_method_has_its_cost_in_the_table_and_in_protocol_md);
    suite_add_tcase(s, cx);
    TCase *opt = tcase_create("options");
    tcase_set_timeout(opt, 60); /* four brokers refusing to start, under ASan too */
    tcase_add_test(opt, slowlog_options_are_checked);
    tcase_add_test(opt, max_op_items_option_is_checked_and_documented);
    suite_add_tcase(s, opt);
    return s;
}

int main(void)
{
    return tb_run(latency_suite());
}
