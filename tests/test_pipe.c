/* test_pipe.c - the pipe shared type against a real broker (issue 16): the seed's
 * multiprocessing.Pipe programs, EOF after close, one-way pipes, a peer killed while
 * the other end waits, many messages in order, and bad arguments that change nothing.
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
#define I(i) mpb_int(i)
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)
#define EXPECT_ERR(kind, method, ...) TB_EXPECT_ERR(C, kind, method, __VA_ARGS__)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Fork a child that runs fn(c, ref) on its own connection and exits with its result. */
static pid_t child(int (*fn)(mpb_context *, mpb_ref), mpb_ref arg)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        mpb_context *c = mpb_connect(B.address);
        int rc = c && !c->err ? fn(c, arg) : 99;
        mpb_free(c);
        _exit(rc);
    }
    return pid;
}

static int reap(pid_t pid)
{
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The repr of a call's result, or "!Kind" for an error reply (caller frees). */
static char *call_repr(mpb_context *c, const char *method, mpb_value *args, size_t n)
{
    mpb_value res;
    int rc = mpb_call(c, method, args, n, &res);
    for (size_t i = 0; i < n; i++) mpb_value_free(&args[i]);
    char *out;
    if (rc == MPB_ERR_REPLY) {
        out = malloc(strlen(c->errkind) + 2);
        sprintf(out, "!%s", c->errkind);
    } else if (rc != MPB_OK) {
        out = strdup("!io");
    } else {
        out = mpb_value_repr(&res);
        mpb_value_free(&res);
    }
    return out;
}

/* In a child: does the call answer want? */
static bool gives(mpb_context *c, const char *want, const char *method, mpb_value *args, size_t n)
{
    char *got = call_repr(c, method, args, n);
    bool ok = got && strcmp(got, want) == 0;
    if (!ok) fprintf(stderr, "%s: got %s, want %s\n", method, got ? got : "?", want);
    free(got);
    return ok;
}
#define GIVES(c, want, method, ...) gives(c, want, method, TB_ARGS(__VA_ARGS__))

/* Wait (bounded) until the pipe's info shows `want` under key. */
static void await_info(mpb_ref p, const char *key, const char *want)
{
    char *got = NULL;
    for (int i = 0; i < 500; i++) {
        mpb_value info;
        mpb_value arg = R(p);
        ck_assert_int_eq(mpb_call(C, "pipe.info", &arg, 1, &info), MPB_OK);
        mpb_value k = mpb_str_borrowed(key, strlen(key));
        free(got);
        got = mpb_value_repr(mpb_map_get(info.v.m, &k));
        mpb_value_free(&info);
        if (strcmp(got, want) == 0) break;
        usleep(10000);
    }
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

/*--- The seed's programs ---*/

/* def f(conn): conn.send([42, None, 'hello']); conn.close() */
static int seed_f(mpb_context *c, mpb_ref p)
{
    bool ok = GIVES(c, "None", "pipe.send", R(p), I(1), V("[42, None, 'hello']")) &&
              GIVES(c, "None", "pipe.close", R(p), I(1));
    return ok ? 0 : 1;
}

START_TEST(seed_child_sends_a_list_the_parent_receives)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    pid_t pid = child(seed_f, p);
    EXPECT("[42, None, 'hello']", "pipe.recv", R(p), I(0));
    ck_assert_int_eq(reap(pid), 0);
    EXPECT_ERR("EOFError", "pipe.recv", R(p), I(0));
    EXPECT("True", "pipe.poll", R(p), I(0)); /* recv would not block: it raises */
}
END_TEST

static int greet_child(mpb_context *c, mpb_ref p)
{
    bool ok = GIVES(c, "'hello from the parent'", "pipe.recv", R(p), I(1), V("10")) &&
              GIVES(c, "None", "pipe.send", R(p), I(1), V("'hello from the child'"));
    return ok ? 0 : 1;
}

START_TEST(two_processes_greet_each_other_through_a_duplex_pipe)
{
    mpb_ref p = tb_create(C, "pipe", "{'duplex': True}");
    pid_t pid = child(greet_child, p);
    EXPECT("None", "pipe.send", R(p), I(0), V("'hello from the parent'"));
    EXPECT("'hello from the child'", "pipe.recv", R(p), I(0), V("10"));
    ck_assert_int_eq(reap(pid), 0);
    /* The child's connection was bound to end 1: its exit closed it. */
    await_info(p, "closed", "[False, True]");
    EXPECT_ERR("EOFError", "pipe.recv", R(p), I(0));
}
END_TEST

/*--- Closing ---*/

START_TEST(eof_after_close_once_drained)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    EXPECT("False", "pipe.poll", R(p), I(0));
    EXPECT("None", "pipe.send", R(p), I(1), V("1"));
    EXPECT("None", "pipe.send", R(p), I(1), V("'two'"));
    EXPECT("None", "pipe.send", R(p), I(0), V("'to one'"));
    EXPECT("None", "pipe.close", R(p), I(1));
    EXPECT("None", "pipe.close", R(p), I(1)); /* as Connection.close(): twice is fine */
    EXPECT("{'duplex': True, 'closed': [False, True], 'pending': [2, 0], 'bound': [1, 1], "
           "'waiting': [0, 0]}", "pipe.info", R(p)); /* end 1's unread value went */
    EXPECT("1", "pipe.recv", R(p), I(0));
    EXPECT("'two'", "pipe.recv", R(p), I(0));
    EXPECT_ERR("EOFError", "pipe.recv", R(p), I(0));
    EXPECT_ERR("EOFError", "pipe.recv", R(p), I(0), V("5"));
    EXPECT("True", "pipe.poll", R(p), I(0), V("None"));
    EXPECT_ERR("BrokenPipeError", "pipe.send", R(p), I(0), V("3"));
    EXPECT_ERR("OSError", "pipe.recv", R(p), I(1));
    EXPECT_ERR("OSError", "pipe.send", R(p), I(1), V("3"));
    EXPECT_ERR("OSError", "pipe.poll", R(p), I(1));
}
END_TEST

static int recv_one(mpb_context *c, mpb_ref p)
{
    return GIVES(c, "!EOFError", "pipe.recv", R(p), I(0), V("20")) ? 0 : 1;
}

START_TEST(close_answers_a_parked_recv_with_eof)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    pid_t pid = child(recv_one, p);
    await_info(p, "waiting", "[1, 0]");
    double t0 = now();
    EXPECT("None", "pipe.close", R(p), I(1));
    ck_assert_int_eq(reap(pid), 0);
    ck_assert(now() - t0 < 10);
}
END_TEST

/*--- One-way ---*/

START_TEST(one_way_pipe_reads_at_end_0_and_writes_at_end_1)
{
    mpb_ref p = tb_create(C, "pipe", "{'duplex': False}");
    EXPECT_ERR("OSError", "pipe.send", R(p), I(0), V("'x'"));
    EXPECT_ERR("OSError", "pipe.recv", R(p), I(1));
    EXPECT_ERR("OSError", "pipe.poll", R(p), I(1));
    EXPECT("{'duplex': False, 'closed': [False, False], 'pending': [0, 0], 'bound': [0, 0], "
           "'waiting': [0, 0]}", "pipe.info", R(p)); /* refused calls bound nothing */
    EXPECT("None", "pipe.send", R(p), I(1), V("'x'"));
    EXPECT("True", "pipe.poll", R(p), I(0));
    EXPECT("'x'", "pipe.recv", R(p), I(0));
    mpb_ref q = tb_create(C, "pipe", "False"); /* a bare bool is duplex too */
    EXPECT_ERR("OSError", "pipe.send", R(q), I(0), V("1"));
}
END_TEST

/*--- A peer dies ---*/

/* Bind end 1 (poll is a use), then sleep until killed. */
static int bind_and_sleep(mpb_context *c, mpb_ref p)
{
    mpb_value res;
    mpb_value send[3] = {R(p), I(1), mpb_str("bound")};
    if (mpb_call(c, "pipe.send", send, 3, &res) != MPB_OK) return 1;
    mpb_value_free(&send[2]);
    sleep(60);
    return 0;
}

START_TEST(peer_killed_while_recv_waits_gives_eof_at_once)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    pid_t pid = child(bind_and_sleep, p);
    EXPECT("'bound'", "pipe.recv", R(p), I(0), V("10"));
    await_info(p, "bound", "[1, 1]");
    mpb_context *w = tb_connect(&B);
    mpb_value args[2] = {R(p), I(0)};
    ck_assert_int_eq(mpb_append_call(w, "pipe.recv", args, 2), MPB_OK);
    ck_assert_int_eq(mpb_flush(w), MPB_OK);
    await_info(p, "waiting", "[1, 0]");
    char *wr = waiting_repr(); /* the debug view: who waits on which end */
    char want[128];
    snprintf(want, sizeof want, "[{'method': 'pipe.recv', 'ref': <ref %llu>, 'end': 0}]",
             (unsigned long long)p);
    ck_assert_str_eq(wr, want);
    free(wr);
    double t0 = now();
    kill(pid, SIGKILL);
    ck_assert_int_eq(reap(pid), 128 + SIGKILL);
    mpb_value res;
    ck_assert_int_eq(mpb_get_reply(w, &res), MPB_ERR_REPLY);
    ck_assert_str_eq(w->errkind, "EOFError");
    ck_assert_msg(now() - t0 < 5, "EOF took %f s", now() - t0);
    mpb_free(w);
    EXPECT("{'duplex': True, 'closed': [False, True], 'pending': [0, 0], 'bound': [1, 0], "
           "'waiting': [0, 0]}", "pipe.info", R(p));
}
END_TEST

START_TEST(an_end_closes_when_its_last_bound_connection_does)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    mpb_context *a = tb_connect(&B), *b = tb_connect(&B);
    TB_EXPECT(a, "False", "pipe.poll", R(p), I(1));
    TB_EXPECT(b, "None", "pipe.send", R(p), I(1), V("'from b'"));
    EXPECT("{'duplex': True, 'closed': [False, False], 'pending': [1, 0], 'bound': [0, 2], "
           "'waiting': [0, 0]}", "pipe.info", R(p));
    mpb_free(a);
    await_info(p, "bound", "[0, 1]");
    EXPECT("'from b'", "pipe.recv", R(p), I(0)); /* still open: b uses it */
    mpb_free(b);
    await_info(p, "closed", "[False, True]");
    EXPECT_ERR("EOFError", "pipe.recv", R(p), I(0));
}
END_TEST

/* A receiver gone before its recv runs (its request and its hang-up read in one loop
 * round) takes nothing: the value stays for another connection bound to the end. */
START_TEST(a_receiver_gone_before_its_recv_runs_takes_nothing)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    EXPECT("False", "pipe.poll", R(p), I(0)); /* C is bound to end 0 too */
    EXPECT("None", "pipe.send", R(p), I(1), V("'kept'"));
    mpb_value recv[] = {R(p), I(0)};
    tb_call_then_hang_up(&B, C, "pipe.recv", recv, 2);
    await_info(p, "bound", "[1, 1]");
    await_info(p, "pending", "[1, 0]");
    EXPECT("'kept'", "pipe.recv", R(p), I(0), V("0"));
}
END_TEST

/* An end closed by its last connection going is a change no call made: it counts as
 * a write (the version, watchers), as a dead holder's semaphore unit does. */
START_TEST(an_end_closed_by_its_last_connection_bumps_the_version)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    mpb_context *a = tb_connect(&B);
    TB_EXPECT(a, "None", "pipe.send", R(p), I(1), V("1"));
    EXPECT("1", "manager.version", R(p));
    mpb_free(a);
    await_info(p, "closed", "[False, True]");
    EXPECT("2", "manager.version", R(p));
}
END_TEST

/*--- Many messages ---*/

#define MANY 100000
#define BATCH 500

static int send_many(mpb_context *c, mpb_ref p)
{
    for (int i = 0; i < MANY; i += BATCH) {
        for (int k = i; k < i + BATCH; k++) {
            mpb_value args[3] = {R(p), I(1), I(k)};
            if (mpb_append_call(c, "pipe.send", args, 3) != MPB_OK) return 1;
        }
        for (int k = i; k < i + BATCH; k++)
            if (mpb_get_reply(c, NULL) != MPB_OK) return 2;
    }
    return 0;
}

START_TEST(a_hundred_thousand_messages_arrive_in_order)
{
    mpb_ref p = tb_create(C, "pipe", "{'duplex': False}");
    pid_t pid = child(send_many, p);
    for (int i = 0; i < MANY; i += BATCH) {
        for (int k = i; k < i + BATCH; k++) {
            mpb_value args[3] = {R(p), I(0), mpb_int(60)};
            ck_assert_int_eq(mpb_append_call(C, "pipe.recv", args, 3), MPB_OK);
        }
        for (int k = i; k < i + BATCH; k++) {
            mpb_value v;
            ck_assert_int_eq(mpb_get_reply(C, &v), MPB_OK);
            ck_assert_int_eq(v.type, MPB_INT);
            ck_assert_int_eq(v.v.i, k);
        }
    }
    ck_assert_int_eq(reap(pid), 0);
    EXPECT_ERR("EOFError", "pipe.recv", R(p), I(0)); /* the sender's exit closed end 1 */
}
END_TEST

/*--- Timeouts and bad input ---*/

START_TEST(recv_and_poll_timeouts)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    EXPECT_ERR("TimeoutError", "pipe.recv", R(p), I(0), V("0"));
    double t0 = now();
    EXPECT_ERR("TimeoutError", "pipe.recv", R(p), I(0), V("0.2"));
    ck_assert(now() - t0 >= 0.15);
    t0 = now();
    EXPECT("False", "pipe.poll", R(p), I(0), V("0.2"));
    ck_assert(now() - t0 >= 0.15);
    EXPECT("False", "pipe.poll", R(p), I(0)); /* absent: 0, as poll() */
    await_info(p, "waiting", "[0, 0]");
}
END_TEST

START_TEST(bad_arguments_get_clear_errors_and_change_nothing)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    mpb_ref l = tb_create(C, "list", NULL);
    const char *clean = "{'duplex': True, 'closed': [False, False], 'pending': [0, 0], "
                        "'bound': [0, 0], 'waiting': [0, 0]}";
    EXPECT_ERR("ValueError", "pipe.send", R(p), I(2), V("1"));
    EXPECT_ERR("ValueError", "pipe.send", R(p), I(-1), V("1"));
    EXPECT_ERR("TypeError", "pipe.send", R(p), V("'0'"), V("1"));
    EXPECT_ERR("TypeError", "pipe.send", R(p), I(0)); /* arity */
    EXPECT_ERR("NoSuchObject", "pipe.send", R(p), I(0), mpb_refv(l + 1000));
    EXPECT_ERR("ValueError", "pipe.recv", R(p), I(0), V("-1"));
    EXPECT_ERR("TypeError", "pipe.recv", R(p), I(0), V("'soon'"));
    EXPECT_ERR("ValueError", "pipe.poll", R(p), I(0), V("-0.5"));
    EXPECT_ERR("ValueError", "pipe.close", R(p), I(7));
    EXPECT_ERR("TypeError", "pipe.send", R(l), I(0), V("1"));
    EXPECT(clean, "pipe.info", R(p));
    mpb_value init = V("{'duplex': 1}"), out;
    ck_assert_int_eq(mpb_create(C, "pipe", &init, &out.v.ref), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "TypeError");
    mpb_value_free(&init);
    init = V("{'simplex': True}");
    ck_assert_int_eq(mpb_create(C, "pipe", &init, &out.v.ref), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "ValueError");
    mpb_value_free(&init);
    init = V("5");
    ck_assert_int_eq(mpb_create(C, "pipe", &init, &out.v.ref), MPB_ERR_REPLY);
    ck_assert_str_eq(C->errkind, "TypeError");
    mpb_value_free(&init);
    mpb_value objs;
    ck_assert_int_eq(mpb_call(C, "manager.objects", NULL, 0, &objs), MPB_OK);
    ck_assert_int_eq(objs.v.a->len, 2); /* the refused creates made nothing */
    mpb_value_free(&objs);
}
END_TEST

static int64_t stat_int(const char *key)
{
    mpb_value st;
    ck_assert_int_eq(mpb_call(C, "manager.stats", NULL, 0, &st), MPB_OK);
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    int64_t n = mpb_map_get(st.v.m, &k)->v.i;
    mpb_value_free(&st);
    return n;
}

START_TEST(pending_values_are_counted_and_keep_their_references_alive)
{
    mpb_ref p = tb_create(C, "pipe", NULL);
    for (int round = 0; round < 3; round++) {
        int64_t base = stat_int("memory_used"), objects = stat_int("objects");
        mpb_ref l = tb_create(C, "list", "[1, 2, 3]");
        mpb_value v = mpb_array_value(1), ref = R(l);
        mpb_value_push(&v, &ref);
        EXPECT("None", "pipe.send", R(p), I(1), v);
        ck_assert_int_eq(mpb_release(C, l), MPB_OK);
        ck_assert_int_eq(stat_int("objects"), objects + 1); /* the value holds the list */
        ck_assert_int_gt(stat_int("memory_used"), base);
        if (round == 0) { /* received: the reference goes to the reader, nothing keeps it */
            mpb_value got, args[2] = {R(p), I(0)};
            ck_assert_int_eq(mpb_call(C, "pipe.recv", args, 2, &got), MPB_OK);
            ck_assert_int_eq(got.v.a->items[0].v.ref, l);
            mpb_value_free(&got);
        } else if (round == 1) { /* dropped unread by closing the end it waited at */
            EXPECT("None", "pipe.close", R(p), I(0));
        } else { /* the pipe goes, and what it held */
            ck_assert_int_eq(mpb_release(C, p), MPB_OK);
            ck_assert_int_eq(stat_int("objects"), objects - 1);
            break;
        }
        ck_assert_int_eq(stat_int("objects"), objects);
        ck_assert_int_eq(stat_int("memory_used"), base);
        if (round == 1) p = tb_create(C, "pipe", NULL);
    }
}
END_TEST

static Suite *pipe_suite(void)
{
    Suite *s = suite_create("pipe");
    TCase *tc = tcase_create("pipe");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, seed_child_sends_a_list_the_parent_receives);
    tcase_add_test(tc, two_processes_greet_each_other_through_a_duplex_pipe);
    tcase_add_test(tc, eof_after_close_once_drained);
    tcase_add_test(tc, close_answers_a_parked_recv_with_eof);
    tcase_add_test(tc, one_way_pipe_reads_at_end_0_and_writes_at_end_1);
    tcase_add_test(tc, peer_killed_while_recv_waits_gives_eof_at_once);
    tcase_add_test(tc, an_end_closes_when_its_last_bound_connection_does);
    tcase_add_test(tc, a_hundred_thousand_messages_arrive_in_order);
    tcase_add_test(tc, recv_and_poll_timeouts);
    tcase_add_test(tc, bad_arguments_get_clear_errors_and_change_nothing);
    tcase_add_test(tc, pending_values_are_counted_and_keep_their_references_alive);
    tcase_add_test(tc, a_receiver_gone_before_its_recv_runs_takes_nothing);
    tcase_add_test(tc, an_end_closed_by_its_last_connection_bumps_the_version);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tb_run(pipe_suite()); }
