/* test_async.c - the asynchronous API (libclient/async.c) against a real broker on a
 * libevent loop: many calls in flight, callbacks in call order exactly once, error
 * replies, calls made from callbacks, freeing from inside a callback, and a lost
 * connection delivering ConnectionError to every pending call.
 *
 * Run with CK_FORK=no (see meson.build) so that, under AddressSanitizer, the leak check
 * at exit covers everything the library allocated in every test.
 */
#include <check.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "mpb_reader.h"
#include "testutil.h"

static tb_broker B;
static mpb_context *C; /* a blocking connection for setting up and checking */
static struct event_base *base;

static void setup(void)
{
    tb_start(&B, 0, NULL);
    C = tb_connect(&B);
    base = event_base_new();
    ck_assert_ptr_nonnull(base);
}
static void teardown(void)
{
    event_base_free(base);
    mpb_free(C);
    /* The broker must exit 0: under ASan that also means it leaked nothing. */
    if (B.pid > 0) ck_assert_int_eq(tb_stop(&B), 0);
}

static mpb_async_context *connect_async(void)
{
    mpb_async_context *ac = mpb_async_connect(base, B.address);
    ck_assert_ptr_nonnull(ac);
    ck_assert_msg(ac->err == MPB_OK, "mpb_async_connect: %s", ac->errstr);
    return ac;
}

static mpb_ref make(const char *type)
{
    mpb_ref r;
    ck_assert_int_eq(mpb_create(C, type, NULL, &r), MPB_OK);
    return r;
}

/* What the callbacks saw. */
typedef struct seen {
    int calls;       /* callbacks run */
    int expect;      /* stop the loop once calls reaches this */
    int in_order;    /* every privdata was the call's number, in order */
    int ok, errors;  /* replies by outcome */
    int conn_errors; /* ConnectionError among the errors */
    char kind[32], str[256]; /* the last error */
    mpb_value kept;  /* a result moved out of the last callback */
    int disconnects, disconnect_status;
} seen;

static seen S;

static void reset_seen(int expect)
{
    mpb_value_free(&S.kept);
    memset(&S, 0, sizeof S);
    S.expect = expect;
    S.in_order = 1;
}

static void record(mpb_async_context *ac, mpb_reply *r, void *privdata)
{
    (void)ac;
    if ((intptr_t)privdata != S.calls) S.in_order = 0;
    S.calls++;
    if (r->err == MPB_OK) {
        S.ok++;
        ck_assert_str_eq(r->errkind, "");
        mpb_value_free(&S.kept);
        S.kept = r->value; /* take the result: the library must not free it now */
        r->value = mpb_nil();
    } else {
        S.errors++;
        ck_assert_int_eq(r->value.type, MPB_NIL);
        if (strcmp(r->errkind, "ConnectionError") == 0) S.conn_errors++;
        snprintf(S.kind, sizeof S.kind, "%s", r->errkind);
        snprintf(S.str, sizeof S.str, "%s", r->errstr);
    }
    if (S.calls == S.expect) event_base_loopbreak(base);
}

static void on_disconnect(const mpb_async_context *ac, int status)
{
    (void)ac;
    S.disconnects++;
    S.disconnect_status = status;
    event_base_loopbreak(base); /* the context is gone: nothing more will come */
}

/* Run the loop until the callbacks say stop, with a 20 s guard against hangs. */
static void run_loop(void)
{
    struct timeval guard = {20, 0};
    event_base_loopexit(base, &guard);
    event_base_dispatch(base);
}

static void call(mpb_async_context *ac, const char *method, const mpb_value *args, size_t n,
                 int number)
{
    int rc = mpb_async_call(ac, method, args, n, record, (void *)(intptr_t)number);
    ck_assert_msg(rc == MPB_OK, "mpb_async_call %s: %s", method, ac->errstr);
}

START_TEST(async_many_calls_in_flight_answer_in_order)
{
    enum { N = 20000 };
    mpb_ref l = make("list");
    mpb_async_context *ac = connect_async();
    reset_seen(N + 1);
    for (int i = 0; i < N; i++) {
        mpb_value a[] = {mpb_refv(l), mpb_int(i)};
        call(ac, "list.append", a, 2, i);
    }
    mpb_value a[] = {mpb_refv(l)};
    call(ac, "list.len", a, 1, N);
    ck_assert_uint_eq(mpb_async_pending(ac), N + 1);
    run_loop();
    ck_assert_int_eq(S.calls, N + 1);
    ck_assert(S.in_order);
    ck_assert_int_eq(S.ok, N + 1);
    ck_assert_int_eq(S.kept.type, MPB_INT);
    ck_assert_int_eq(S.kept.v.i, N);
    ck_assert_uint_eq(mpb_async_pending(ac), 0);
    /* The broker saw them in order too. */
    mpb_value v;
    ck_assert_int_eq(mpb_list_getitem(C, l, 12345, &v), MPB_OK);
    ck_assert_int_eq(v.v.i, 12345);
    mpb_async_free(ac);
    reset_seen(0);
}
END_TEST

START_TEST(async_error_replies_leave_the_connection_usable)
{
    mpb_ref d = make("dict");
    mpb_async_context *ac = connect_async();
    mpb_async_set_disconnect_callback(ac, on_disconnect);
    reset_seen(4);
    mpb_value k = mpb_str_borrowed("absent", 6);
    mpb_value a[] = {mpb_refv(d), k};
    call(ac, "dict.getitem", a, 2, 0);
    call(ac, "no.such.method", NULL, 0, 1);
    mpb_value b[] = {mpb_refv(d), k, mpb_int(7)};
    call(ac, "dict.setitem", b, 3, 2);
    call(ac, "dict.getitem", a, 2, 3);
    run_loop();
    ck_assert_int_eq(S.calls, 4);
    ck_assert(S.in_order);
    ck_assert_int_eq(S.errors, 2);
    ck_assert_int_eq(S.conn_errors, 0);
    ck_assert_int_eq(S.kept.v.i, 7);
    mpb_async_free(ac); /* from outside a callback: at once, disconnect callback MPB_OK */
    ck_assert_int_eq(S.disconnects, 1);
    ck_assert_int_eq(S.disconnect_status, MPB_OK);
    reset_seen(0);
}
END_TEST

/* The first error's kind, by call number. */
static char kinds[4][32];
static void record_kind(mpb_async_context *ac, mpb_reply *r, void *privdata)
{
    snprintf(kinds[(intptr_t)privdata], sizeof kinds[0], "%s", r->errkind);
    record(ac, r, privdata);
}

START_TEST(async_error_reply_carries_kind_and_message)
{
    mpb_ref d = make("dict");
    mpb_async_context *ac = connect_async();
    reset_seen(3);
    mpb_value a[] = {mpb_refv(d), mpb_str_borrowed("k", 1)};
    ck_assert_int_eq(mpb_async_call(ac, "dict.getitem", a, 2, record_kind, (void *)0), MPB_OK);
    ck_assert_int_eq(mpb_async_call(ac, "manager.nope", NULL, 0, record_kind, (void *)1),
                     MPB_OK);
    mpb_value bad[] = {mpb_refv(d)}; /* too few arguments */
    ck_assert_int_eq(mpb_async_call(ac, "dict.setitem", bad, 1, record_kind, (void *)2),
                     MPB_OK);
    run_loop();
    ck_assert_str_eq(kinds[0], "KeyError");
    ck_assert_str_eq(kinds[1], "NoSuchMethod");
    ck_assert_str_eq(kinds[2], "TypeError");
    ck_assert_ptr_nonnull(strstr(S.str, "dict.setitem"));
    mpb_async_free(ac);
    reset_seen(0);
}
END_TEST

/* Each callback makes the next call: writes scheduled from inside callbacks. */
static int chain_left;
static void chain(mpb_async_context *ac, mpb_reply *r, void *privdata)
{
    ck_assert_int_eq(r->err, MPB_OK);
    if (--chain_left == 0) {
        event_base_loopbreak(base);
        return;
    }
    mpb_value *args = privdata;
    ck_assert_int_eq(mpb_async_call(ac, "namespace.incr", args, 3, chain, privdata), MPB_OK);
}

START_TEST(async_calls_made_from_callbacks_are_sent)
{
    mpb_ref ns = make("namespace");
    mpb_async_context *ac = connect_async();
    mpb_value args[] = {mpb_refv(ns), mpb_str_borrowed("n", 1), mpb_int(1)};
    chain_left = 1000;
    ck_assert_int_eq(mpb_async_call(ac, "namespace.incr", args, 3, chain, args), MPB_OK);
    run_loop();
    ck_assert_int_eq(chain_left, 0);
    int64_t n;
    mpb_value v;
    ck_assert_int_eq(mpb_ns_getattr(C, ns, "n", &v), MPB_OK);
    n = v.v.i;
    ck_assert_int_eq(n, 1000);
    mpb_async_free(ac);
}
END_TEST

START_TEST(async_big_reply_spans_many_reads)
{
    enum { N = 200000 };
    mpb_value init = mpb_array_value(N);
    for (int i = 0; i < N; i++) {
        mpb_value x = mpb_int(i);
        ck_assert_int_eq(mpb_value_push(&init, &x), 0);
    }
    mpb_ref l;
    ck_assert_int_eq(mpb_create(C, "list", &init, &l), MPB_OK);
    mpb_value_free(&init);
    mpb_async_context *ac = connect_async();
    reset_seen(2);
    mpb_value a[] = {mpb_refv(l)};
    call(ac, "list.copy", a, 1, 0);
    call(ac, "list.len", a, 1, 1);
    run_loop();
    ck_assert_int_eq(S.ok, 2);
    ck_assert_int_eq(S.kept.v.i, N);
    mpb_async_free(ac);
    reset_seen(0);
}
END_TEST

START_TEST(async_reads_the_deepest_reply_the_broker_sends)
{
    /* A value of the deepest nesting the broker stores, in a dict.items chunk: two
     * levels deeper than the request that stored it (MPB_REPLY_WRAP_DEPTH). */
    mpb_value v = mpb_int(1);
    for (int i = 0; i < MPB_READER_MAX_DEPTH - 2; i++) {
        mpb_value a = mpb_array_value(1);
        ck_assert_int_eq(mpb_value_push(&a, &v), 0);
        v = a;
    }
    mpb_ref d = make("dict");
    mpb_value k = mpb_str_borrowed("k", 1);
    ck_assert_int_eq(mpb_dict_setitem(C, d, &k, &v), MPB_OK);
    mpb_value_free(&v);
    mpb_async_context *ac = connect_async();
    reset_seen(2);
    mpb_value a[] = {mpb_refv(d), mpb_int(0), mpb_int(10)};
    call(ac, "dict.items", a, 3, 0);
    call(ac, "dict.len", a, 1, 1);
    run_loop();
    ck_assert_msg(S.ok == 2, "%s: %s", S.kind, S.str);
    ck_assert_int_eq(S.kept.v.i, 1);
    mpb_async_free(ac);
    reset_seen(0);
}
END_TEST

static char outcome[8][32]; /* errkind per call, "" for success */
static int outcomes;

static void record_outcome(mpb_async_context *ac, mpb_reply *r, void *privdata)
{
    (void)ac;
    (void)privdata;
    snprintf(outcome[outcomes++], sizeof outcome[0], "%s", r->errkind);
}

static void stop_loop(const mpb_async_context *ac, int status)
{
    (void)ac;
    (void)status;
    event_base_loopbreak(base);
}

START_TEST(async_pipeline_broken_by_a_too_large_call_answers_each_call)
{
    /* The broker answers three appends, refuses the fourth call (over --max-message)
     * and closes: the callbacks get OK three times, TooLarge, then ConnectionError. */
    enum { HUGE = 32 << 20 };
    mpb_ref l = make("list");
    mpb_async_context *ac = connect_async();
    mpb_async_set_disconnect_callback(ac, stop_loop);
    char *huge = malloc(HUGE);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'x', HUGE);
    outcomes = 0;
    for (int i = 0; i < 5; i++) {
        mpb_value a[] = {mpb_refv(l), i == 3 ? mpb_str_borrowed(huge, HUGE) : mpb_int(i)};
        ck_assert_int_eq(mpb_async_call(ac, "list.append", a, 2, record_outcome, NULL), MPB_OK);
    }
    free(huge);
    run_loop();
    ck_assert_int_eq(outcomes, 5);
    for (int i = 0; i < 3; i++) ck_assert_str_eq(outcome[i], "");
    ck_assert_str_eq(outcome[3], "TooLarge");
    ck_assert_str_eq(outcome[4], "ConnectionError");
    int64_t n;
    ck_assert_int_eq(mpb_list_len(C, l, &n), MPB_OK);
    ck_assert_int_eq(n, 3);
}
END_TEST

START_TEST(async_many_contexts_share_one_loop)
{
    enum { CONNS = 20, CALLS = 500 };
    mpb_ref ns = make("namespace");
    mpb_async_context *ac[CONNS];
    reset_seen(CONNS * CALLS);
    mpb_value args[] = {mpb_refv(ns), mpb_str_borrowed("n", 1), mpb_int(1)};
    for (int i = 0; i < CONNS; i++) ac[i] = connect_async();
    for (int k = 0; k < CALLS; k++)
        for (int i = 0; i < CONNS; i++)
            ck_assert_int_eq(mpb_async_call(ac[i], "namespace.incr", args, 3, record, NULL),
                             MPB_OK);
    S.in_order = 0; /* privdata is not a call number here */
    run_loop();
    ck_assert_int_eq(S.ok, CONNS * CALLS);
    mpb_value v;
    ck_assert_int_eq(mpb_ns_getattr(C, ns, "n", &v), MPB_OK);
    ck_assert_int_eq(v.v.i, CONNS * CALLS);
    for (int i = 0; i < CONNS; i++) mpb_async_free(ac[i]);
    reset_seen(0);
}
END_TEST

/* A queue.get on an empty queue parks, and the broker serves nothing after it on that
 * connection: the calls behind it stay pending until the broker goes away. */
START_TEST(async_lost_connection_fails_every_pending_call)
{
    mpb_ref q = make("queue");
    mpb_async_context *ac = connect_async();
    mpb_async_set_disconnect_callback(ac, on_disconnect);
    reset_seen(7);
    mpb_value ping[] = {mpb_str_borrowed("x", 1)};
    call(ac, "manager.ping", ping, 1, 0); /* answered */
    mpb_value g[] = {mpb_refv(q)};
    call(ac, "queue.get", g, 1, 1); /* parks */
    for (int i = 2; i < 7; i++) call(ac, "manager.ping", ping, 1, i);
    /* Run the loop until the ping is answered and the rest is sent. */
    struct timeval t = {0, 300000};
    event_base_loopexit(base, &t);
    event_base_dispatch(base);
    ck_assert_int_eq(S.calls, 1);
    ck_assert_uint_eq(mpb_async_pending(ac), 6);

    mpb_free(C);
    C = NULL;
    ck_assert_int_eq(tb_stop(&B), 0); /* SIGTERM: the broker closes every connection */
    run_loop();                       /* the close arrives: ac is freed after the callbacks */
    ck_assert_int_eq(S.calls, 7);
    ck_assert(S.in_order);
    ck_assert_int_eq(S.conn_errors, 6);
    ck_assert_int_eq(S.disconnects, 1);
    ck_assert_int_ne(S.disconnect_status, MPB_OK);
    reset_seen(0);
}
END_TEST

/* Free from inside the third callback: the loop must not touch ac after that callback
 * returns, and the calls still pending get ConnectionError. */
static void free_on_third(mpb_async_context *ac, mpb_reply *r, void *privdata)
{
    record(ac, r, privdata);
    if (S.calls == 3) {
        mpb_async_free(ac);
        mpb_async_free(ac); /* twice in one callback: still one free */
        ck_assert_int_ne(mpb_async_call(ac, "manager.ping", NULL, 0, NULL, NULL), MPB_OK);
    }
}

START_TEST(async_free_inside_a_callback_is_deferred)
{
    mpb_async_context *ac = connect_async();
    mpb_async_set_disconnect_callback(ac, on_disconnect);
    reset_seen(-1);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(mpb_async_call(ac, "manager.ping", NULL, 0, free_on_third,
                                        (void *)(intptr_t)i),
                         MPB_OK);
    run_loop(); /* until the disconnect callback */
    ck_assert_int_eq(S.calls, 10);
    ck_assert(S.in_order);
    ck_assert_int_eq(S.ok, 3);
    ck_assert_int_eq(S.conn_errors, 7);
    ck_assert_int_eq(S.disconnects, 1);
    ck_assert_int_eq(S.disconnect_status, MPB_OK);
    reset_seen(0);
}
END_TEST

START_TEST(async_free_with_calls_pending_fails_them_at_once)
{
    mpb_async_context *ac = connect_async();
    reset_seen(-1);
    for (int i = 0; i < 5; i++) call(ac, "manager.ping", NULL, 0, i);
    mpb_async_free(ac); /* the loop never ran: nothing was sent */
    ck_assert_int_eq(S.calls, 5);
    ck_assert(S.in_order);
    ck_assert_int_eq(S.conn_errors, 5);
    ck_assert_ptr_nonnull(strstr(S.str, "freed"));
    reset_seen(0);
}
END_TEST

START_TEST(async_disconnect_waits_for_pending_replies)
{
    mpb_async_context *ac = connect_async();
    mpb_async_set_disconnect_callback(ac, on_disconnect);
    reset_seen(-1); /* the disconnect callback stops the loop */
    for (int i = 0; i < 100; i++) call(ac, "manager.ping", NULL, 0, i);
    mpb_async_disconnect(ac);
    ck_assert_int_ne(mpb_async_call(ac, "manager.ping", NULL, 0, record, NULL), MPB_OK);
    ck_assert_str_eq(ac->errkind, "ConnectionError");
    run_loop(); /* returns once ac has removed its events */
    ck_assert_int_eq(S.calls, 100);
    ck_assert_int_eq(S.ok, 100);
    ck_assert_int_eq(S.disconnects, 1);
    ck_assert_int_eq(S.disconnect_status, MPB_OK);
    reset_seen(0);
}
END_TEST

START_TEST(async_connect_failure_is_reported_on_the_context)
{
    char path[400];
    snprintf(path, sizeof path, "%s/absent.sock", B.dir);
    mpb_async_context *ac = mpb_async_connect(base, path);
    ck_assert_ptr_nonnull(ac);
    ck_assert_int_eq(ac->err, MPB_ERR_CONNECT);
    ck_assert_str_eq(ac->errkind, "ConnectionError");
    ck_assert_int_ne(mpb_async_call(ac, "manager.ping", NULL, 0, record, NULL), MPB_OK);
    mpb_async_free(ac);
    mpb_async_free(NULL);
}
END_TEST

START_TEST(async_null_callback_drops_the_reply)
{
    mpb_ref l = make("list");
    mpb_async_context *ac = connect_async();
    reset_seen(1);
    mpb_value a[] = {mpb_refv(l), mpb_str_borrowed("dropped", 7)};
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(mpb_async_call(ac, "list.append", a, 2, NULL, NULL), MPB_OK);
    mpb_value b[] = {mpb_refv(l)};
    call(ac, "list.len", b, 1, 0);
    run_loop();
    ck_assert_int_eq(S.kept.v.i, 10);
    mpb_async_free(ac);
    reset_seen(0);
}
END_TEST

/*--- Watches on the loop ---*/

typedef struct changes {
    int n, overflow;
    int64_t versions[64];
    char methods[64][48];
    int notes; /* other notifications (the generic callback) */
} changes;

static void on_change(mpb_async_context *ac, const mpb_change *ch, void *privdata)
{
    (void)ac;
    changes *x = privdata;
    if (ch->overflow) x->overflow++;
    else if (x->n < 64) {
        x->versions[x->n] = ch->version;
        snprintf(x->methods[x->n], sizeof x->methods[0], "%s", ch->method);
        x->n++;
    }
    if (x->n == 5) event_base_loopbreak(base);
}

static void on_note(mpb_async_context *ac, const char *method, mpb_value *params, void *privdata)
{
    (void)ac;
    (void)params;
    changes *x = privdata;
    if (strcmp(method, "monitor") == 0 && params->type == MPB_ARRAY) {
        x->notes++;
        event_base_loopbreak(base);
    }
}

START_TEST(async_watch_delivers_changes_with_and_without_calls_in_flight)
{
    mpb_async_context *ac = connect_async();
    mpb_ref d = make("dict");
    changes x = {0};
    reset_seen(1);
    ck_assert_int_eq(mpb_async_watch(ac, d, on_change, &x, record, (void *)0), MPB_OK);
    run_loop();
    ck_assert_int_eq(S.ok, 1);
    ck_assert_int_eq(S.kept.v.i, 0);
    /* Written by another connection while this one has nothing in flight. */
    mpb_value k = mpb_str("k");
    for (int i = 0; i < 3; i++) {
        mpb_value v = mpb_int(i);
        ck_assert_int_eq(mpb_dict_setitem(C, d, &k, &v), MPB_OK);
    }
    mpb_value_free(&k);
    /* And by this one: its own writes come too, around the replies. */
    mpb_value args[3] = {mpb_refv(d), mpb_str("j"), mpb_int(1)};
    reset_seen(2);
    call(ac, "dict.incr", args, 3, 0);
    call(ac, "dict.incr", args, 3, 1);
    mpb_value_free(&args[1]);
    run_loop();
    if (x.n < 5) run_loop();
    ck_assert_int_eq(x.n, 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(x.versions[i], i + 1);
    ck_assert_str_eq(x.methods[0], "dict.setitem");
    ck_assert_str_eq(x.methods[4], "dict.incr");
    ck_assert_int_eq(x.overflow, 0);
    /* Other notifications go to the generic callback. */
    mpb_async_set_notification_callback(ac, on_note, &x);
    reset_seen(1);
    ck_assert_int_eq(mpb_async_call(ac, "manager.monitor", NULL, 0, record, (void *)0), MPB_OK);
    run_loop();
    ck_assert_int_eq(S.ok, 1);
    ck_assert_int_eq(mpb_ping(C), MPB_OK);
    run_loop();
    ck_assert_int_ge(x.notes, 1);
    mpb_async_free(ac);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("async");
    TCase *tc = tcase_create("async");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, async_many_calls_in_flight_answer_in_order);
    tcase_add_test(tc, async_error_replies_leave_the_connection_usable);
    tcase_add_test(tc, async_error_reply_carries_kind_and_message);
    tcase_add_test(tc, async_calls_made_from_callbacks_are_sent);
    tcase_add_test(tc, async_big_reply_spans_many_reads);
    tcase_add_test(tc, async_reads_the_deepest_reply_the_broker_sends);
    tcase_add_test(tc, async_pipeline_broken_by_a_too_large_call_answers_each_call);
    tcase_add_test(tc, async_many_contexts_share_one_loop);
    tcase_add_test(tc, async_lost_connection_fails_every_pending_call);
    tcase_add_test(tc, async_free_inside_a_callback_is_deferred);
    tcase_add_test(tc, async_free_with_calls_pending_fails_them_at_once);
    tcase_add_test(tc, async_disconnect_waits_for_pending_replies);
    tcase_add_test(tc, async_connect_failure_is_reported_on_the_context);
    tcase_add_test(tc, async_null_callback_drops_the_reply);
    tcase_add_test(tc, async_watch_delivers_changes_with_and_without_calls_in_flight);
    suite_add_tcase(s, tc);
    return tb_run(s);
}
