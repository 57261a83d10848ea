/* test_channel.c - CSP channels and manager.select against a real broker (issue 16):
 * rendezvous, poison, retirement, alternation over several channels, a network of
 * processes stopped by poison, and dead peers that never lose or half-deliver a value.
 *
 * Waits are asserted with generous bounds (never a speed claim).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpb_codec.h"
#include "testutil.h"

TB_DEFAULT_FIXTURE

#define V(text) tb_lit(text)
#define R(r) mpb_refv(r)
#define S(s) mpb_str(s)
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)
#define EXPECT_ERR(kind, method, ...) TB_EXPECT_ERR(C, kind, method, __VA_ARGS__)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int reap(pid_t pid)
{
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* One entry of channel.info (repr). */
static char *info_of(mpb_ref ch, const char *key)
{
    mpb_value info, arg = R(ch);
    ck_assert_int_eq(mpb_call(C, "channel.info", &arg, 1, &info), MPB_OK);
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    char *got = mpb_value_repr(mpb_map_get(info.v.m, &k));
    mpb_value_free(&info);
    return got;
}

/* Wait (bounded) until channel.info shows want under key. */
static void await_info(mpb_ref ch, const char *key, const char *want)
{
    char *got = NULL;
    for (int i = 0; i < 500; i++) {
        free(got);
        got = info_of(ch, key);
        if (strcmp(got, want) == 0) break;
        usleep(10000);
    }
    ck_assert_str_eq(got, want);
    free(got);
}

static void assert_info(mpb_ref ch, const char *key, const char *want)
{
    char *got = info_of(ch, key);
    ck_assert_str_eq(got, want);
    free(got);
}

/* Send a call on its own connection without waiting for its reply. */
static mpb_context *start_call(const char *method, mpb_value *args, size_t n)
{
    mpb_context *c = tb_connect(&B);
    ck_assert_int_eq(mpb_append_call(c, method, args, n), MPB_OK);
    ck_assert_int_eq(mpb_flush(c), MPB_OK);
    for (size_t i = 0; i < n; i++) mpb_value_free(&args[i]);
    return c;
}
#define START(method, ...) start_call(method, TB_ARGS(__VA_ARGS__))

/* Has c's pending call been answered yet? (Does not block.) */
static bool answered(mpb_context *c)
{
    mpb_value v;
    int got = 0;
    ck_assert_int_ge(mpb_buffer_read(c), 0);
    int rc = mpb_buffer_take_reply(c, &v, &got);
    if (got && rc == MPB_OK) mpb_value_free(&v);
    return got;
}

/* The reply of c's pending call as a repr, "!Kind" for an error; frees c. */
static char *finish(mpb_context *c)
{
    mpb_value v;
    int rc = mpb_get_reply(c, &v);
    char *out;
    if (rc == MPB_ERR_REPLY) {
        out = malloc(strlen(c->errkind) + 2);
        sprintf(out, "!%s", c->errkind);
    } else {
        ck_assert_int_eq(rc, MPB_OK);
        out = mpb_value_repr(&v);
        mpb_value_free(&v);
    }
    mpb_free(c);
    return out;
}

static void expect_finish(mpb_context *c, const char *want)
{
    char *got = finish(c);
    ck_assert_str_eq(got, want);
    free(got);
}


/* The "waiting" entries of manager.clients that are not nil, as one repr. */
static char *waiting_repr(void)
{
    mpb_value cl;
    ck_assert_int_eq(mpb_call(C, "manager.clients", NULL, 0, &cl), MPB_OK);
    mpb_value all = mpb_array_value(2);
    for (size_t i = 0; i < cl.v.a->len; i++) {
        mpb_value k = mpb_str_borrowed("waiting", 7);
        mpb_value *w = mpb_map_get(cl.v.a->items[i].v.m, &k);
        ck_assert_ptr_nonnull(w);
        if (w->type == MPB_NIL) continue;
        mpb_value copy = *w;
        *w = mpb_nil(); /* moved */
        mpb_value_push(&all, &copy);
    }
    mpb_value_free(&cl);
    char *s = mpb_value_repr(&all);
    mpb_value_free(&all);
    return s;
}

/*--- Rendezvous ---*/

START_TEST(a_write_is_answered_only_when_a_reader_takes_it)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    mpb_context *w = START("channel.write", R(ch), V("'hello'"));
    await_info(ch, "waiting_writers", "1");
    usleep(200000);
    ck_assert(!answered(w)); /* unbuffered: no reader yet */
    EXPECT("'hello'", "channel.read", R(ch));
    expect_finish(w, "None");
    assert_info(ch, "rendezvous", "1");
    /* The other way round: the read waits for the writer. */
    mpb_context *r = START("channel.read", R(ch));
    await_info(ch, "waiting_readers", "1");
    ck_assert(!answered(r));
    EXPECT("None", "channel.write", R(ch), V("[1, None, 'x']"));
    expect_finish(r, "[1, None, 'x']");
    EXPECT_ERR("TimeoutError", "channel.read", R(ch), V("0"));
    double t0 = now();
    EXPECT_ERR("TimeoutError", "channel.write", R(ch), V("1"), V("0.2"));
    ck_assert(now() - t0 >= 0.15);
    assert_info(ch, "waiting_writers", "0"); /* the timed-out write was withdrawn */
    EXPECT_ERR("TimeoutError", "channel.read", R(ch), V("0"));
}
END_TEST

/*--- Poison ---*/

START_TEST(poison_reaches_parked_readers_and_writers)
{
    mpb_ref a = tb_create(C, "channel", NULL), b = tb_create(C, "channel", NULL);
    mpb_ref other = tb_create(C, "channel", NULL);
    mpb_context *r1 = START("channel.read", R(a));
    mpb_context *r2 = START("channel.read", R(a), V("30"));
    mpb_context *sel = START("manager.select", V("[]"));
    expect_finish(sel, "!ValueError");
    mpb_value g = mpb_array_value(2), g1 = mpb_array_value(2), g2 = mpb_array_value(2);
    mpb_value x = R(other), rd = S("read"), y = R(a), rd2 = S("read");
    mpb_value_push(&g1, &x);
    mpb_value_push(&g1, &rd);
    mpb_value_push(&g2, &y);
    mpb_value_push(&g2, &rd2);
    mpb_value_push(&g, &g1);
    mpb_value_push(&g, &g2);
    sel = START("manager.select", g);
    mpb_context *w1 = START("channel.write", R(b), V("'never'"));
    await_info(a, "waiting_readers", "3");
    await_info(b, "waiting_writers", "1");
    EXPECT("None", "channel.poison", R(a));
    expect_finish(r1, "!ChannelPoisoned");
    expect_finish(r2, "!ChannelPoisoned");
    expect_finish(sel, "!ChannelPoisoned"); /* a select with a poisoned guard fails whole */
    assert_info(other, "waiting_readers", "0");
    ck_assert(!answered(w1));
    EXPECT("None", "channel.poison", R(b));
    expect_finish(w1, "!ChannelPoisoned");
    EXPECT("None", "channel.poison", R(b)); /* again: nothing more */
    EXPECT_ERR("ChannelPoisoned", "channel.read", R(a), V("0"));
    EXPECT_ERR("ChannelPoisoned", "channel.write", R(b), V("1"));
    EXPECT_ERR("ChannelPoisoned", "channel.join", R(a), S("reader"));
    assert_info(a, "poisoned", "True");
    assert_info(other, "poisoned", "False");
}
END_TEST

/*--- Retirement ---*/

START_TEST(retire_counts_joined_ends)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    mpb_context *a = tb_connect(&B), *b = tb_connect(&B);
    TB_EXPECT(a, "None", "channel.join", R(ch), S("writer"));
    TB_EXPECT(b, "None", "channel.join", R(ch), S("writer"));
    TB_EXPECT(b, "None", "channel.join", R(ch), S("writer")); /* b: two ends */
    EXPECT("None", "channel.join", R(ch), S("reader"));
    assert_info(ch, "writers", "3");
    assert_info(ch, "readers", "1");
    TB_EXPECT_ERR(a, "ValueError", "channel.retire", R(ch), S("reader")); /* not joined */
    mpb_context *r = START("channel.read", R(ch));
    await_info(ch, "waiting_readers", "1");
    TB_EXPECT(a, "None", "channel.retire", R(ch), S("writer"));
    TB_EXPECT_ERR(a, "ValueError", "channel.retire", R(ch), S("writer")); /* once */
    TB_EXPECT(b, "None", "channel.retire", R(ch), S("writer"));
    usleep(100000);
    ck_assert(!answered(r)); /* one writer is left */
    assert_info(ch, "writers", "1");
    TB_EXPECT(b, "None", "channel.retire", R(ch), S("writer"));
    expect_finish(r, "!ChannelRetired");
    assert_info(ch, "retired", "True");
    EXPECT_ERR("ChannelRetired", "channel.read", R(ch));
    EXPECT_ERR("ChannelRetired", "channel.write", R(ch), V("1"));
    EXPECT_ERR("ChannelRetired", "channel.join", R(ch), S("writer"));
    mpb_free(a);
    mpb_free(b);
}
END_TEST

START_TEST(a_closed_connection_retires_its_ends)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    mpb_context *a = tb_connect(&B);
    TB_EXPECT(a, "None", "channel.join", R(ch), S("writer"));
    mpb_context *r = START("channel.read", R(ch));
    await_info(ch, "waiting_readers", "1");
    mpb_free(a); /* the only writer's process is gone */
    expect_finish(r, "!ChannelRetired");
    assert_info(ch, "writers", "0");
}
END_TEST

/*--- Alternation ---*/

/* [[CHAN, "read"] | [CHAN, "write", VALUE]...] from a Python-like spec: ch[i] and
 * "r"/"w:VALUE" per guard. */
static mpb_value guards(int n, const mpb_ref *chans, const char *const *kinds)
{
    mpb_value gs = mpb_array_value(n);
    for (int i = 0; i < n; i++) {
        mpb_value g = mpb_array_value(3), ref = R(chans[i]);
        mpb_value_push(&g, &ref);
        mpb_value kind = S(kinds[i][0] == 'r' ? "read" : "write");
        mpb_value_push(&g, &kind);
        if (kinds[i][0] == 'w') {
            mpb_value v = V(kinds[i] + 2);
            mpb_value_push(&g, &v);
        }
        mpb_value_push(&gs, &g);
    }
    return gs;
}

START_TEST(select_over_three_channels_fires_exactly_one_guard)
{
    mpb_ref ch[3] = {tb_create(C, "channel", NULL), tb_create(C, "channel", NULL),
                     tb_create(C, "channel", NULL)};
    const char *const kinds[3] = {"r", "r", "w:'y'"};
    /* Nothing can complete: nil after the timeout, and no offer is left behind. */
    double t0 = now();
    EXPECT("None", "manager.select", guards(3, ch, kinds), V("0.2"));
    ck_assert(now() - t0 >= 0.15);
    EXPECT("None", "manager.select", guards(3, ch, kinds), V("0"));
    for (int i = 0; i < 3; i++) assert_info(ch[i], "waiting_readers", "0");
    assert_info(ch[2], "waiting_writers", "0");

    /* A writer on ch1 and a reader on ch2 wait: both guards 0 and 2 could fire; guard
     * order decides, and only guard 0 takes effect. */
    mpb_context *w0 = START("channel.write", R(ch[0]), V("'from w0'"));
    mpb_context *r2 = START("channel.read", R(ch[2]));
    await_info(ch[0], "waiting_writers", "1");
    await_info(ch[2], "waiting_readers", "1");
    EXPECT("[0, 'from w0']", "manager.select", guards(3, ch, kinds), V("5"));
    expect_finish(w0, "None");
    usleep(100000);
    ck_assert(!answered(r2)); /* guard 2 did not fire */
    EXPECT("[2, None]", "manager.select", guards(3, ch, kinds));
    expect_finish(r2, "'y'");

    /* A parked select: one write completes it, its other offers are withdrawn. */
    mpb_context *s = START("manager.select", guards(3, ch, kinds), V("30"));
    await_info(ch[1], "waiting_readers", "1");
    char *wr = waiting_repr(), want[128];
    snprintf(want, sizeof want, "[{'method': 'manager.select', 'ref': <ref %llu>, 'guards': 3}]",
             (unsigned long long)ch[0]);
    ck_assert_str_eq(wr, want);
    free(wr);
    assert_info(ch[0], "waiting_readers", "1");
    assert_info(ch[2], "waiting_writers", "1");
    EXPECT("None", "channel.write", R(ch[1]), V("'to one'"));
    expect_finish(s, "[1, 'to one']");
    for (int i = 0; i < 3; i++) assert_info(ch[i], "waiting_readers", "0");
    assert_info(ch[2], "waiting_writers", "0");
    EXPECT_ERR("TimeoutError", "channel.read", R(ch[2]), V("0")); /* 'y' was not written */

    /* A parked select whose write guard is taken answers [2, None]. */
    s = START("manager.select", guards(3, ch, kinds), V("30"));
    await_info(ch[2], "waiting_writers", "1");
    EXPECT("'y'", "channel.read", R(ch[2]));
    expect_finish(s, "[2, None]");
    assert_info(ch[0], "waiting_readers", "0");

    /* A parked select times out: nil, nothing left. */
    s = START("manager.select", guards(3, ch, kinds), V("0.2"));
    expect_finish(s, "None");
    assert_info(ch[1], "waiting_readers", "0");
    assert_info(ch[2], "waiting_writers", "0");
}
END_TEST

START_TEST(select_and_channel_bad_arguments_change_nothing)
{
    mpb_ref ch = tb_create(C, "channel", NULL), l = tb_create(C, "list", NULL);
    mpb_ref lst[1] = {l};
    const char *const rd[1] = {"r"};
    EXPECT_ERR("ValueError", "manager.select", V("[]"));
    EXPECT_ERR("TypeError", "manager.select", V("5"));
    EXPECT_ERR("TypeError", "manager.select", V("[5]"));
    EXPECT_ERR("TypeError", "manager.select", guards(1, lst, rd));
    mpb_ref bad[1] = {l + 1000};
    EXPECT_ERR("NoSuchObject", "manager.select", guards(1, bad, rd));
    mpb_ref chs[2] = {ch, ch};
    const char *const peek[2] = {"w:1", "r"};
    mpb_value g = guards(2, chs, peek);
    mpb_value_free(&g.v.a->items[1].v.a->items[1]);
    g.v.a->items[1].v.a->items[1] = S("peek");
    EXPECT_ERR("ValueError", "manager.select", g);
    EXPECT_ERR("ValueError", "manager.select", guards(2, chs, peek), V("-1"));
    EXPECT_ERR("ValueError", "channel.join", R(ch), S("both"));
    EXPECT_ERR("TypeError", "channel.join", R(ch), V("1"));
    EXPECT_ERR("ValueError", "channel.write", R(ch), V("1"), V("-1"));
    EXPECT_ERR("TypeError", "channel.read", R(l));
    EXPECT_ERR("TypeError", "manager.create", S("channel"), V("5"));
    EXPECT("{'poisoned': False, 'retired': False, 'readers': 0, 'writers': 0, "
           "'waiting_readers': 0, 'waiting_writers': 0, 'rendezvous': 0}", "channel.info", R(ch));
}
END_TEST

/*--- Dead peers ---*/

static pid_t child_call(const char *method, mpb_value *args, size_t n)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        mpb_context *c = mpb_connect(B.address);
        int rc = c && !c->err ? mpb_call(c, method, args, n, NULL) : 99;
        _exit(rc == MPB_OK ? 0 : 1);
    }
    for (size_t i = 0; i < n; i++) mpb_value_free(&args[i]);
    return pid;
}
#define CHILD_CALL(method, ...) child_call(method, TB_ARGS(__VA_ARGS__))

START_TEST(a_dead_reader_never_loses_a_written_value)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    for (int round = 0; round < 5; round++) {
        pid_t pid = CHILD_CALL("channel.read", R(ch));
        await_info(ch, "waiting_readers", "1");
        kill(pid, SIGKILL);
        ck_assert_int_eq(reap(pid), 128 + SIGKILL);
        /* At once, before the broker may have seen the reader go: the write must not
         * be answered "done" (the value would be lost); it waits, then times out. */
        EXPECT_ERR("TimeoutError", "channel.write", R(ch), V("'precious'"), V("0.3"));
        await_info(ch, "waiting_readers", "0");
    }
    assert_info(ch, "rendezvous", "0");
    /* And a dead writer delivers nothing. */
    pid_t pid = CHILD_CALL("channel.write", R(ch), V("'half'"));
    await_info(ch, "waiting_writers", "1");
    kill(pid, SIGKILL);
    ck_assert_int_eq(reap(pid), 128 + SIGKILL);
    EXPECT_ERR("TimeoutError", "channel.read", R(ch), V("0.3"));
    assert_info(ch, "waiting_writers", "0");
}
END_TEST

/* A reader gone before its read runs (its request and its hang-up read in one loop
 * round): a parked writer must not hear "done" for a value that went to nobody. */
START_TEST(a_reader_gone_before_its_read_runs_takes_nothing)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    mpb_context *w = START("channel.write", R(ch), V("'precious'"));
    await_info(ch, "waiting_writers", "1");
    mpb_value read[] = {R(ch)};
    tb_call_then_hang_up(&B, C, "channel.read", read, 1);
    const char *const r[] = {"r"};
    mpb_value sel[] = {guards(1, &ch, r)};
    tb_call_then_hang_up(&B, C, "manager.select", sel, 1);
    mpb_value_free(&sel[0]);
    ck_assert(!answered(w));
    assert_info(ch, "rendezvous", "0");
    assert_info(ch, "waiting_writers", "1");
    EXPECT("'precious'", "channel.read", R(ch));
    expect_finish(w, "None");
    /* A writer gone before its write runs delivers nothing to a parked reader. */
    mpb_context *rd = START("channel.read", R(ch));
    await_info(ch, "waiting_readers", "1");
    mpb_value write[] = {R(ch), S("half")};
    tb_call_then_hang_up(&B, C, "channel.write", write, 2);
    mpb_value_free(&write[1]);
    ck_assert(!answered(rd));
    EXPECT("None", "channel.write", R(ch), V("'whole'"));
    expect_finish(rd, "'whole'");
}
END_TEST

/* manager.select has no object of its own: a select that completes on a channel
 * counts as a write to that channel (its version, its watchers), on either side. */
START_TEST(a_select_that_completes_bumps_its_channels_version)
{
    mpb_ref ch[2] = {tb_create(C, "channel", NULL), tb_create(C, "channel", NULL)};
    const char *const rr[2] = {"r", "r"}, *const w[1] = {"w:5"};
    EXPECT("0", "manager.version", R(ch[1]));
    mpb_context *s = START("manager.select", guards(2, ch, rr));
    await_info(ch[1], "waiting_readers", "1");
    EXPECT("[0, None]", "manager.select", guards(1, &ch[1], w)); /* select meets select */
    expect_finish(s, "[1, 5]");
    EXPECT("2", "manager.version", R(ch[1])); /* one per select */
    EXPECT("0", "manager.version", R(ch[0])); /* the guard that did not fire */
    s = START("manager.select", guards(2, ch, rr));
    await_info(ch[1], "waiting_readers", "1");
    EXPECT("None", "channel.write", R(ch[1]), V("6")); /* a write meets a select */
    expect_finish(s, "[1, 6]");
    EXPECT("4", "manager.version", R(ch[1]));
    EXPECT("0", "manager.version", R(ch[0]));
    /* Plain calls: one each, the parked one when it completes. */
    mpb_context *wr = START("channel.write", R(ch[0]), V("7"));
    await_info(ch[0], "waiting_writers", "1");
    EXPECT("7", "channel.read", R(ch[0]));
    expect_finish(wr, "None");
    EXPECT("2", "manager.version", R(ch[0]));
}
END_TEST

/* The undo of a failed manager.atomic puts back a copy made from the snapshot form,
 * which holds only the poison: channel.poison is refused there, so no batch can wipe
 * a channel's joined ends or its retirement. */
START_TEST(poison_is_refused_in_an_atomic_batch)
{
    mpb_ref ch = tb_create(C, "channel", NULL), l = tb_create(C, "list", NULL);
    EXPECT("None", "channel.join", R(ch), S("writer"));
    EXPECT("None", "channel.join", R(ch), S("reader"));
    mpb_value ops = mpb_array_value(2), op = mpb_array_value(2), params = mpb_array_value(1);
    mpb_value ref = R(ch), name = S("channel.poison");
    mpb_value_push(&params, &ref);
    mpb_value_push(&op, &name);
    mpb_value_push(&op, &params);
    mpb_value_push(&ops, &op);
    op = mpb_array_value(2), params = mpb_array_value(1), ref = R(l), name = S("list.pop");
    mpb_value_push(&params, &ref);
    mpb_value_push(&op, &name);
    mpb_value_push(&op, &params);
    mpb_value_push(&ops, &op); /* fails: the list is empty */
    EXPECT_ERR("BadRequest", "manager.atomic", ops);
    assert_info(ch, "poisoned", "False");
    assert_info(ch, "readers", "1");
    assert_info(ch, "writers", "1");
    EXPECT("None", "channel.retire", R(ch), S("writer"));
    assert_info(ch, "retired", "True");
}
END_TEST

/* Retirement by a closing connection is a change no call made: it counts as a write. */
START_TEST(retirement_by_a_closing_connection_bumps_the_version)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    mpb_context *a = tb_connect(&B);
    TB_EXPECT(a, "None", "channel.join", R(ch), S("writer"));
    EXPECT("1", "manager.version", R(ch));
    mpb_free(a);
    await_info(ch, "retired", "True");
    EXPECT("2", "manager.version", R(ch));
}
END_TEST

/*--- What a parked write keeps ---*/

static int64_t stat_int(const char *key)
{
    mpb_value st;
    ck_assert_int_eq(mpb_call(C, "manager.stats", NULL, 0, &st), MPB_OK);
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    int64_t n = mpb_map_get(st.v.m, &k)->v.i;
    mpb_value_free(&st);
    return n;
}

START_TEST(a_parked_value_is_counted_and_keeps_its_references_alive)
{
    mpb_ref ch = tb_create(C, "channel", NULL);
    int64_t base = stat_int("memory_used");
    for (int round = 0; round < 3; round++) {
        mpb_ref l = tb_create(C, "list", "[1, 2, 3]");
        mpb_value v = mpb_array_value(2), ref = R(l), pad = mpb_str("x");
        mpb_value_push(&v, &ref);
        mpb_value_push(&v, &pad);
        mpb_context *w = START("channel.write", R(ch), v, V("30"));
        await_info(ch, "waiting_writers", "1");
        ck_assert_int_eq(mpb_release(C, l), MPB_OK);
        ck_assert_int_eq(stat_int("objects"), 2); /* the waiting value holds the list */
        ck_assert_int_gt(stat_int("memory_used"), base);
        if (round == 0) { /* taken: the reader gets the reference, nothing keeps it */
            mpb_value got;
            mpb_value a = R(ch);
            ck_assert_int_eq(mpb_call(C, "channel.read", &a, 1, &got), MPB_OK);
            ck_assert_int_eq(got.v.a->items[0].v.ref, l);
            mpb_value_free(&got);
            expect_finish(w, "None");
        } else if (round == 1) { /* withdrawn by its connection's death */
            mpb_free(w);
            await_info(ch, "waiting_writers", "0");
        } else { /* failed by poison */
            EXPECT("None", "channel.poison", R(ch));
            expect_finish(w, "!ChannelPoisoned");
        }
        ck_assert_int_eq(stat_int("objects"), 1);
        ck_assert_int_eq(stat_int("memory_used"), base);
    }
}
END_TEST

/*--- A network stopped by poison ---*/

#define WORKERS 8
#define ITEMS 100

static bool poisoned(mpb_context *c) { return strcmp(c->errkind, "ChannelPoisoned") == 0; }

static void poison(mpb_context *c, mpb_ref ch)
{
    mpb_value a = R(ch);
    mpb_call(c, "channel.poison", &a, 1, NULL);
}

/* producer: 0, 1, 2... into `in` until poisoned. */
static int producer(mpb_context *c, mpb_ref in, mpb_ref out)
{
    (void)out;
    for (int64_t i = 0;; i++) {
        mpb_value a[2] = {R(in), mpb_int(i)};
        if (mpb_call(c, "channel.write", a, 2, NULL) != MPB_OK) return poisoned(c) ? 0 : 1;
    }
}

/* worker: squares from `in` to `out`; on poison, poisons both and stops. */
static int worker(mpb_context *c, mpb_ref in, mpb_ref out)
{
    for (;;) {
        mpb_value a = R(in), v;
        if (mpb_call(c, "channel.read", &a, 1, &v) != MPB_OK) break;
        mpb_value b[2] = {R(out), mpb_int(v.v.i * v.v.i)};
        if (mpb_call(c, "channel.write", b, 2, NULL) != MPB_OK) break;
    }
    if (!poisoned(c)) return 1;
    poison(c, in);
    poison(c, out);
    return 0;
}

/* consumer: ITEMS squares, then poison upstream. Exit 0 when each was a square. */
static int consumer(mpb_context *c, mpb_ref in, mpb_ref out)
{
    (void)out;
    for (int i = 0; i < ITEMS; i++) {
        mpb_value a = R(in), v;
        if (mpb_call(c, "channel.read", &a, 1, &v) != MPB_OK || v.type != MPB_INT) return 1;
        int64_t r = 0;
        while (r * r < v.v.i) r++;
        if (r * r != v.v.i) return 2;
    }
    poison(c, in);
    return 0;
}

static pid_t proc(int (*fn)(mpb_context *, mpb_ref, mpb_ref), mpb_ref in, mpb_ref out)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        mpb_context *c = mpb_connect(B.address);
        int rc = c && !c->err ? fn(c, in, out) : 99;
        mpb_free(c);
        _exit(rc);
    }
    return pid;
}

START_TEST(a_network_of_ten_processes_stops_on_poison)
{
    mpb_ref a = tb_create(C, "channel", NULL), b = tb_create(C, "channel", NULL);
    pid_t pids[WORKERS + 2];
    pids[0] = proc(producer, a, b);
    for (int i = 0; i < WORKERS; i++) pids[1 + i] = proc(worker, a, b);
    pids[WORKERS + 1] = proc(consumer, b, a);
    for (int i = 0; i < WORKERS + 2; i++) ck_assert_int_eq(reap(pids[i]), 0);
    assert_info(a, "poisoned", "True");
    assert_info(b, "poisoned", "True");
    assert_info(a, "waiting_readers", "0");
    assert_info(a, "waiting_writers", "0");
    assert_info(b, "waiting_writers", "0");
    char *n = info_of(b, "rendezvous");
    ck_assert_int_ge(atoi(n), ITEMS);
    free(n);
}
END_TEST

static Suite *channel_suite(void)
{
    Suite *s = suite_create("channel");
    TCase *tc = tcase_create("channel");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_write_is_answered_only_when_a_reader_takes_it);
    tcase_add_test(tc, poison_reaches_parked_readers_and_writers);
    tcase_add_test(tc, retire_counts_joined_ends);
    tcase_add_test(tc, a_closed_connection_retires_its_ends);
    tcase_add_test(tc, select_over_three_channels_fires_exactly_one_guard);
    tcase_add_test(tc, select_and_channel_bad_arguments_change_nothing);
    tcase_add_test(tc, a_dead_reader_never_loses_a_written_value);
    tcase_add_test(tc, a_network_of_ten_processes_stops_on_poison);
    tcase_add_test(tc, a_parked_value_is_counted_and_keeps_its_references_alive);
    tcase_add_test(tc, a_reader_gone_before_its_read_runs_takes_nothing);
    tcase_add_test(tc, a_select_that_completes_bumps_its_channels_version);
    tcase_add_test(tc, poison_is_refused_in_an_atomic_batch);
    tcase_add_test(tc, retirement_by_a_closing_connection_bumps_the_version);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tb_run(channel_suite()); }
