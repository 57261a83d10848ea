/* test_sync.c - queues, locks, semaphores, conditions, events, barriers, values and
 * arrays against a real broker: Python's semantics, timeouts, FIFO waiters, and
 * what happens when a waiting or owning process dies.
 *
 * Timeouts are asserted with generous bounds (a wait lasts at least about its
 * timeout, and ends well within seconds): never a speed claim.
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
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)
#define EXPECT_ERR(kind, method, ...) TB_EXPECT_ERR(C, kind, method, __VA_ARGS__)

static mpb_ref make(const char *type, const char *initial) { return tb_create(C, type, initial); }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Number of connections with a parked request (from manager.clients). */
static int parked_count(void)
{
    mpb_value cl;
    ck_assert_int_eq(mpb_call(C, "manager.clients", NULL, 0, &cl), MPB_OK);
    int n = 0;
    for (size_t i = 0; i < cl.v.a->len; i++) {
        mpb_value k = mpb_str_borrowed("parked", 6);
        n += (int)mpb_map_get(cl.v.a->items[i].v.m, &k)->v.i;
    }
    mpb_value_free(&cl);
    return n;
}

/* Wait (bounded) until n connections are parked. */
static void await_parked(int n)
{
    for (int i = 0; i < 500 && parked_count() < n; i++) usleep(10000);
    ck_assert_int_eq(parked_count(), n);
}

/* Fork a child that runs fn(arg) on its own connection and exits with its result. */
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

/*--- queue ---*/

START_TEST(queue_is_fifo_with_python_outcomes)
{
    mpb_ref q = make("queue", "2");
    EXPECT("True", "queue.empty", R(q));
    EXPECT("None", "queue.put", R(q), V("'a'"));
    EXPECT("None", "queue.put_nowait", R(q), V("[1, 2]"));
    EXPECT("True", "queue.full", R(q));
    EXPECT_ERR("Full", "queue.put_nowait", R(q), V("'c'"));
    EXPECT_ERR("Full", "queue.put", R(q), V("'c'"), V("False"));
    EXPECT_ERR("Full", "queue.put", R(q), V("'c'"), V("True"), V("0"));
    EXPECT("2", "queue.qsize", R(q));
    EXPECT("'a'", "queue.get", R(q));
    EXPECT("[1, 2]", "queue.get_nowait", R(q));
    EXPECT_ERR("Empty", "queue.get_nowait", R(q));
    EXPECT_ERR("Empty", "queue.get", R(q), V("False"));
    EXPECT_ERR("ValueError", "queue.get", R(q), V("True"), V("-1"));
    EXPECT_ERR("AttributeError", "queue.task_done", R(q));
    double t0 = now();
    EXPECT_ERR("Empty", "queue.get", R(q), V("True"), V("0.3"));
    double waited = now() - t0;
    ck_assert_msg(waited >= 0.25 && waited < 10, "waited %f", waited);
    t0 = now();
    EXPECT("None", "queue.put", R(q), V("1"));
    EXPECT("None", "queue.put", R(q), V("2"));
    EXPECT_ERR("Full", "queue.put", R(q), V("3"), V("True"), V("0.2"));
    ck_assert(now() - t0 >= 0.15);
    EXPECT("[1, 2]", "manager.ping", V("[1, 2]")); /* still serving this connection */
}
END_TEST

static int consume_three(mpb_context *c, mpb_ref q)
{
    for (int i = 0; i < 3; i++) {
        mpb_value v;
        if (mpb_queue_get(c, q, 10, &v) != MPB_OK || v.v.i != i) return 1;
    }
    return 0;
}

START_TEST(blocked_get_is_answered_by_another_process_put)
{
    mpb_ref q = make("queue", NULL);
    pid_t pid = child(consume_three, q);
    await_parked(1);
    for (int i = 0; i < 3; i++) {
        mpb_value v = mpb_int(i);
        ck_assert_int_eq(mpb_queue_put(C, q, &v, -1), MPB_OK);
    }
    ck_assert_int_eq(reap(pid), 0);
    EXPECT("0", "queue.qsize", R(q));
}
END_TEST

static int put_blocking(mpb_context *c, mpb_ref q)
{
    mpb_value v = mpb_str_borrowed("late", 4);
    return mpb_queue_put(c, q, &v, 10) == MPB_OK ? 0 : 1;
}

START_TEST(blocked_put_gets_room_when_an_item_is_taken)
{
    mpb_ref q = make("queue", "1");
    EXPECT("None", "queue.put", R(q), V("'first'"));
    pid_t pid = child(put_blocking, q);
    await_parked(1);
    EXPECT("'first'", "queue.get", R(q));
    ck_assert_int_eq(reap(pid), 0);
    EXPECT("'late'", "queue.get", R(q));
}
END_TEST

static int work_and_task_done(mpb_context *c, mpb_ref q)
{
    for (;;) {
        mpb_value v;
        int rc = mpb_queue_get(c, q, 0.5, &v);
        if (rc == MPB_ERR_REPLY && !strcmp(c->errkind, "Empty")) return 0;
        if (rc != MPB_OK) return 1;
        mpb_value_free(&v);
        if (mpb_queue_task_done(c, q) != MPB_OK) return 2;
    }
}

START_TEST(joinable_queue_join_waits_for_every_task_across_processes)
{
    mpb_ref q = make("joinablequeue", NULL);
    for (int i = 0; i < 50; i++) {
        mpb_value v = mpb_int(i);
        ck_assert_int_eq(mpb_queue_put(C, q, &v, -1), MPB_OK);
    }
    int done = -1;
    ck_assert_int_eq(mpb_queue_join(C, q, 0.1, &done), MPB_OK);
    ck_assert_int_eq(done, 0); /* nobody worked yet: the join times out */
    pid_t a = child(work_and_task_done, q), b = child(work_and_task_done, q);
    ck_assert_int_eq(mpb_queue_join(C, q, 20, &done), MPB_OK);
    ck_assert_int_eq(done, 1);
    EXPECT("0", "queue.qsize", R(q));
    ck_assert_int_eq(reap(a), 0);
    ck_assert_int_eq(reap(b), 0);
    EXPECT_ERR("ValueError", "queue.task_done", R(q));
}
END_TEST

START_TEST(queue_holds_a_million_items)
{
    mpb_ref q = make("queue", NULL);
    enum { N = 1000000, BATCH = 1000 };
    for (int i = 0; i < N; i += BATCH) {
        for (int j = 0; j < BATCH; j++) {
            mpb_value args[2] = {mpb_refv(q), mpb_int(i + j)};
            ck_assert_int_eq(mpb_append_call(C, "queue.put", args, 2), MPB_OK);
        }
        for (int j = 0; j < BATCH; j++) ck_assert_int_eq(mpb_get_reply(C, NULL), MPB_OK);
    }
    int64_t n = 0;
    ck_assert_int_eq(mpb_queue_qsize(C, q, &n), MPB_OK);
    ck_assert_int_eq(n, N);
    mpb_value v;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(mpb_queue_get(C, q, 0, &v), MPB_OK);
        ck_assert_int_eq(v.v.i, i);
    }
}
END_TEST

static int get_forever(mpb_context *c, mpb_ref q)
{
    return mpb_queue_get(c, q, -1, NULL) == MPB_OK ? 0 : 1;
}

START_TEST(a_killed_waiter_does_not_swallow_an_item)
{
    mpb_ref q = make("queue", NULL);
    pid_t pid = child(get_forever, q);
    await_parked(1);
    kill(pid, SIGKILL);
    reap(pid);
    for (int i = 0; i < 500 && parked_count() > 0; i++) usleep(10000);
    EXPECT("None", "queue.put", R(q), V("'kept'"));
    EXPECT("1", "queue.qsize", R(q));
}
END_TEST

/* A parked getter that hangs up in the same loop round as a put arrives, the put
 * read first (the broker stopped meanwhile): the item must not go to the getter whose
 * socket is already closed, though its read event has not run yet. */
START_TEST(a_getter_gone_in_the_same_round_as_a_put_does_not_swallow_the_item)
{
    mpb_ref q = make("queue", NULL);
    mpb_context *putter = tb_connect(&B);
    for (int round = 0; round < 3; round++) {
        int fd = tb_raw_connect(&B);
        mpb_value args[] = {R(q)};
        tb_send_call(fd, 1, "queue.get", args, 1);
        await_parked(1);
        tb_pause(&B);
        mpb_value put[] = {R(q), V("'kept'")};
        ck_assert_int_eq(mpb_append_call(putter, "queue.put", put, 2), MPB_OK);
        mpb_value_free(&put[1]);
        ck_assert_int_eq(mpb_flush(putter), MPB_OK);
        usleep(20000); /* the put's bytes are in the broker's socket before the hang-up */
        close(fd);
        tb_resume(&B);
        ck_assert_int_eq(mpb_get_reply(putter, NULL), MPB_OK);
        for (int i = 0; i < 500 && parked_count() > 0; i++) usleep(10000);
        EXPECT("1", "queue.qsize", R(q));
        EXPECT("'kept'", "queue.get", R(q));
    }
    mpb_free(putter);
}
END_TEST

START_TEST(a_parked_request_holds_back_later_requests_on_its_connection)
{
    mpb_ref q = make("queue", NULL);
    mpb_context *w = tb_connect(&B);
    mpb_value get[1] = {mpb_refv(q)};
    mpb_value ping[1] = {mpb_str_borrowed("after", 5)};
    ck_assert_int_eq(mpb_append_call(w, "queue.get", get, 1), MPB_OK);
    ck_assert_int_eq(mpb_append_call(w, "manager.ping", ping, 1), MPB_OK);
    ck_assert_int_eq(mpb_flush(w), MPB_OK);
    await_parked(1);
    EXPECT("None", "queue.put", R(q), V("'item'"));
    mpb_value r;
    ck_assert_int_eq(mpb_get_reply(w, &r), MPB_OK);
    ck_assert_str_eq(r.v.s, "item");
    mpb_value_free(&r);
    ck_assert_int_eq(mpb_get_reply(w, &r), MPB_OK);
    ck_assert_str_eq(r.v.s, "after");
    mpb_value_free(&r);
    mpb_free(w);
}
END_TEST

START_TEST(two_hundred_parked_waiters_while_others_keep_working)
{
    enum { W = 200 };
    mpb_ref q = make("queue", NULL), l = make("list", NULL);
    mpb_context *ws[W];
    for (int i = 0; i < W; i++) {
        ws[i] = tb_connect(&B);
        mpb_value args[1] = {mpb_refv(q)};
        ck_assert_int_eq(mpb_append_call(ws[i], "queue.get", args, 1), MPB_OK);
        ck_assert_int_eq(mpb_flush(ws[i]), MPB_OK);
    }
    await_parked(W);
    for (int i = 0; i < 2000; i++) {
        mpb_value v = mpb_int(i);
        ck_assert_int_eq(mpb_list_append(C, l, &v), MPB_OK);
    }
    EXPECT("2000", "list.len", R(l));
    for (int i = 0; i < W; i++) {
        mpb_value v = mpb_int(i);
        ck_assert_int_eq(mpb_queue_put(C, q, &v, -1), MPB_OK);
    }
    for (int i = 0; i < W; i++) { /* first come, first served */
        mpb_value r;
        ck_assert_int_eq(mpb_get_reply(ws[i], &r), MPB_OK);
        ck_assert_int_eq(r.v.i, i);
        mpb_free(ws[i]);
    }
}
END_TEST

/* Write the notification [2, method, params] to a raw socket. */
static void send_notification(int fd, const char *method, const mpb_value *params, size_t n)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, 2);
    msgpack_pack_str_with_body(&pk, method, strlen(method));
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) mpb_value_pack(&pk, &params[i]);
    ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* Ping fd with msgid: the very next message it receives must be that reply. */
static void expect_next_is_pong(int fd, uint64_t msgid)
{
    tb_send_call(fd, msgid, "manager.ping", NULL, 0);
    mpb_value m;
    ck_assert_int_eq(tb_read_msg(fd, &m, 5000), 0);
    char *got = tb_repr(&m), want[64];
    snprintf(want, sizeof want, "[1, %llu, None, 'pong']", (unsigned long long)msgid);
    ck_assert_str_eq(got, want);
    free(got);
    mpb_value_free(&m);
}

/* Issue 18 bug 6: a parked notification was answered when it ended, with msgid 0
 * ([1, 0, nil, "secret"] for a queue.get). A notification is never answered; it still
 * waits in order (what follows it waits behind it), except queue.get, which is
 * ignored rather than take an item for nobody. */
START_TEST(blocking_calls_sent_as_notifications_are_never_answered)
{
    mpb_ref q = make("queue", NULL), full = make("queue", "1"), e = make("event", NULL),
            l = make("lock", NULL);
    int fd = tb_raw_connect(&B);
    /* queue.get: ignored, the item stays for a real consumer */
    send_notification(fd, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    expect_next_is_pong(fd, 1);
    EXPECT("None", "queue.put", R(q), V("'secret'"));
    expect_next_is_pong(fd, 2);
    EXPECT("1", "queue.qsize", R(q));
    /* event.wait: waits, and what follows waits behind it */
    send_notification(fd, "event.wait", (mpb_value[]){mpb_refv(e)}, 1);
    await_parked(1);
    tb_send_call(fd, 3, "manager.ping", NULL, 0);
    EXPECT("None", "event.set", R(e));
    mpb_value m;
    ck_assert_int_eq(tb_read_msg(fd, &m, 5000), 0);
    char *got = tb_repr(&m);
    ck_assert_str_eq(got, "[1, 3, None, 'pong']");
    free(got);
    mpb_value_free(&m);
    EXPECT("None", "event.clear", R(e));
    send_notification(fd, "event.wait", (mpb_value[]){mpb_refv(e), mpb_float(0.05)}, 2);
    expect_next_is_pong(fd, 4); /* after the timeout, which answers nothing */
    /* queue.put on a full queue: waits for room, then the item goes in */
    EXPECT("None", "queue.put", R(full), V("'a'"));
    send_notification(fd, "queue.put", (mpb_value[]){mpb_refv(full), mpb_str_borrowed("b", 1)}, 2);
    await_parked(1);
    EXPECT("'a'", "queue.get", R(full));
    expect_next_is_pong(fd, 5);
    EXPECT("'b'", "queue.get", R(full));
    /* lock.acquire: handed over when released, silently; the lock is fd's */
    EXPECT("True", "lock.acquire", R(l));
    send_notification(fd, "lock.acquire", (mpb_value[]){mpb_refv(l)}, 1);
    await_parked(1);
    EXPECT("None", "lock.release", R(l));
    expect_next_is_pong(fd, 6);
    EXPECT("True", "lock.locked", R(l));
    EXPECT_ERR("RuntimeError", "lock.release", R(l));
    close(fd);
}
END_TEST

/*--- lock, rlock ---*/

START_TEST(lock_is_owned_by_its_connection)
{
    mpb_ref l = make("lock", NULL);
    mpb_context *other = tb_connect(&B);
    int got = -1;
    EXPECT("False", "lock.locked", R(l));
    EXPECT_ERR("RuntimeError", "lock.release", R(l));
    EXPECT("True", "lock.acquire", R(l));
    EXPECT("True", "lock.locked", R(l));
    EXPECT("False", "lock.acquire", R(l), V("False"));
    EXPECT_ERR("RuntimeError", "lock.acquire", R(l)); /* would wait for itself forever */
    EXPECT_ERR("ValueError", "lock.acquire", R(l), V("False"), V("1"));
    ck_assert_int_eq(mpb_lock_acquire(other, l, 0, &got), MPB_OK);
    ck_assert_int_eq(got, 0);
    double t0 = now();
    ck_assert_int_eq(mpb_lock_acquire(other, l, 0.2, &got), MPB_OK);
    ck_assert_int_eq(got, 0);
    ck_assert(now() - t0 >= 0.15);
    ck_assert_int_eq(mpb_lock_release(other, l), MPB_ERR_REPLY);
    ck_assert_str_eq(other->errkind, "RuntimeError");
    EXPECT("None", "lock.release", R(l));
    ck_assert_int_eq(mpb_lock_acquire(other, l, 0, &got), MPB_OK);
    ck_assert_int_eq(got, 1);
    mpb_free(other); /* nobody waits: its lock stays locked, owned by nobody */
    usleep(100000);
    EXPECT("True", "lock.locked", R(l));
}
END_TEST

/* Robust-mutex semantics (docs/PROTOCOL.md, "Ownership"): a dead owner's lock goes to
 * the next waiter at once; with nobody waiting it stays locked and anyone may release
 * it (CPython's test_lock: a child locks a Lock and exits, the parent releases it) or
 * acquire it. */
START_TEST(a_dead_owners_lock_goes_to_the_next_waiter_at_once)
{
    mpb_ref l = make("lock", NULL);
    mpb_context *owner = tb_connect(&B);
    int got = -1;
    ck_assert_int_eq(mpb_lock_acquire(owner, l, 0, &got), MPB_OK);
    ck_assert_int_eq(got, 1);
    int waiter = tb_raw_connect(&B);
    tb_send_call(waiter, 1, "lock.acquire", TB_ARGS(R(l)));
    while (parked_count() != 1) usleep(1000);
    mpb_free(owner);
    mpb_value msg;
    ck_assert_int_eq(tb_read_msg(waiter, &msg, 5000), 0);
    ck_assert(msg.v.a->items[3].type == MPB_BOOL && msg.v.a->items[3].v.b);
    mpb_value_free(&msg);
    EXPECT_ERR("RuntimeError", "lock.release", R(l)); /* the waiter owns it now */
    close(waiter);
}
END_TEST

START_TEST(a_dead_owners_lock_with_no_waiter_may_be_released_or_taken_by_anyone)
{
    mpb_ref l = make("lock", NULL), r = make("rlock", NULL);
    for (int i = 0; i < 2; i++) {
        mpb_context *owner = tb_connect(&B);
        int got = -1;
        ck_assert_int_eq(mpb_lock_acquire(owner, l, 0, &got), MPB_OK);
        ck_assert_int_eq(mpb_lock_acquire(owner, r, 0, &got), MPB_OK);
        ck_assert_int_eq(mpb_lock_acquire(owner, r, 0, &got), MPB_OK); /* depth 2 */
        mpb_free(owner);
        usleep(100000);
        EXPECT("True", "lock.locked", R(l));
        EXPECT("True", "lock.locked", R(r));
        if (i == 0) { /* released by another connection: free, whatever the depth */
            EXPECT("None", "lock.release", R(l));
            EXPECT("None", "lock.release", R(r));
            EXPECT_ERR("RuntimeError", "lock.release", R(l)); /* already released */
            EXPECT("False", "lock.locked", R(r));
        } else { /* acquired by another connection, without waiting */
            EXPECT("True", "lock.acquire", R(l), V("False"));
            EXPECT("True", "lock.acquire", R(r), V("False"));
            EXPECT("None", "lock.release", R(l));
            EXPECT("None", "lock.release", R(r));
            EXPECT("False", "lock.locked", R(r)); /* depth 1: its own, not the dead one's */
        }
    }
}
END_TEST

/* The same for semaphores: a dead holder's units go to waiters at once, one each; the
 * rest are orphans that anyone may release (a BoundedSemaphore included: CPython's
 * test_bounded_semaphore) or take. */
START_TEST(a_dead_holders_semaphore_units_go_to_waiters_and_the_rest_to_anyone)
{
    mpb_ref s = make("boundedsemaphore", "3");
    mpb_context *holder = tb_connect(&B);
    int got = -1;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(mpb_sem_acquire(holder, s, 0, &got), MPB_OK);
        ck_assert_int_eq(got, 1);
    }
    int waiter = tb_raw_connect(&B);
    tb_send_call(waiter, 1, "semaphore.acquire", TB_ARGS(R(s)));
    while (parked_count() != 1) usleep(1000);
    mpb_free(holder);
    mpb_value msg;
    ck_assert_int_eq(tb_read_msg(waiter, &msg, 5000), 0);
    ck_assert(msg.v.a->items[3].type == MPB_BOOL && msg.v.a->items[3].v.b);
    mpb_value_free(&msg);
    EXPECT("0", "semaphore.value", R(s));         /* two orphans, one held by waiter */
    EXPECT("True", "semaphore.acquire", R(s), V("False")); /* takes an orphan */
    EXPECT("None", "semaphore.release", R(s));    /* ours */
    EXPECT("None", "semaphore.release", R(s));    /* the last orphan, released by us */
    EXPECT("2", "semaphore.value", R(s));
    close(waiter); /* its unit: nobody waits, so an orphan */
    usleep(100000);
    EXPECT("2", "semaphore.value", R(s));
    EXPECT("None", "semaphore.release", R(s));
    EXPECT_ERR("ValueError", "semaphore.release", R(s)); /* past the bound */
    EXPECT("3", "semaphore.value", R(s));
}
END_TEST

START_TEST(rlock_counts_recursion_per_owner)
{
    mpb_ref l = make("rlock", NULL);
    mpb_context *other = tb_connect(&B);
    int got = -1;
    EXPECT("True", "lock.acquire", R(l));
    EXPECT("True", "lock.acquire", R(l));
    EXPECT("None", "lock.release", R(l));
    ck_assert_int_eq(mpb_lock_acquire(other, l, 0, &got), MPB_OK);
    ck_assert_int_eq(got, 0); /* still held once */
    EXPECT("None", "lock.release", R(l));
    EXPECT_ERR("RuntimeError", "lock.release", R(l));
    ck_assert_int_eq(mpb_lock_acquire(other, l, 0, &got), MPB_OK);
    ck_assert_int_eq(got, 1);
    mpb_free(other);
}
END_TEST

/* The reply to a call appended earlier on w (a parked one), asserted by repr. */
static void expect_reply(mpb_context *w, const char *want)
{
    mpb_value r;
    ck_assert_int_eq(mpb_get_reply(w, &r), MPB_OK);
    char *got = tb_repr(&r);
    ck_assert_str_eq(got, want);
    free(got);
    mpb_value_free(&r);
}

/* Append one call on w and send it without waiting for its reply. */
static void send_call(mpb_context *w, const char *method, mpb_value *args, size_t n)
{
    ck_assert_int_eq(mpb_append_call(w, method, args, n), MPB_OK);
    ck_assert_int_eq(mpb_flush(w), MPB_OK);
}

/* Issue 18 bug 5: with another connection parked on the rlock, its owner's acquire
 * was refused ("would deadlock", or false after its timeout). */
START_TEST(rlock_owner_reenters_while_another_connection_waits)
{
    mpb_ref l = make("rlock", NULL);
    mpb_context *b = tb_connect(&B);
    EXPECT("True", "lock.acquire", R(l));
    send_call(b, "lock.acquire", (mpb_value[]){mpb_refv(l)}, 1);
    await_parked(1);
    EXPECT("True", "lock.acquire", R(l));
    EXPECT("True", "lock.acquire", R(l), V("True"), V("5"));
    EXPECT("True", "lock.acquire", R(l), V("False"));
    for (int i = 0; i < 3; i++) { /* four levels: the fourth release hands it on */
        EXPECT("None", "lock.release", R(l));
        ck_assert_int_eq(parked_count(), 1);
    }
    EXPECT("None", "lock.release", R(l));
    expect_reply(b, "True");
    EXPECT_ERR("RuntimeError", "lock.release", R(l));
    EXPECT("False", "lock.acquire", R(l), V("False"));
    TB_EXPECT(b, "None", "lock.release", R(l));
    mpb_free(b);
}
END_TEST

/* The same through condition.acquire on a condition's default rlock, and a wait that
 * gives up every level (handing the lock to the waiter) and takes them all back. */
START_TEST(condition_owner_reenters_and_wait_restores_every_level)
{
    mpb_ref cv = make("condition", NULL), l;
    mpb_value lk;
    ck_assert_int_eq(mpb_call(C, "condition.lock", (mpb_value[]){mpb_refv(cv)}, 1, &lk), MPB_OK);
    ck_assert_int_eq(lk.type, MPB_REF);
    l = lk.v.ref;
    mpb_context *a = tb_connect(&B), *b = tb_connect(&B);
    TB_EXPECT(a, "True", "condition.acquire", R(cv));
    send_call(b, "condition.acquire", (mpb_value[]){mpb_refv(cv)}, 1);
    await_parked(1);
    TB_EXPECT(a, "True", "condition.acquire", R(cv));
    TB_EXPECT(a, "True", "condition.acquire", R(cv), V("True"), V("5"));
    send_call(a, "condition.wait", (mpb_value[]){mpb_refv(cv), mpb_int(20)}, 2);
    expect_reply(b, "True"); /* all three levels released at once */
    TB_EXPECT(b, "None", "condition.notify", R(cv));
    TB_EXPECT(b, "None", "condition.release", R(cv));
    expect_reply(a, "True"); /* notified, and the owner again with three levels */
    TB_EXPECT(b, "False", "condition.acquire", R(cv), V("False"));
    for (int i = 0; i < 3; i++) {
        EXPECT("True", "lock.locked", R(l));
        TB_EXPECT(a, "None", "condition.release", R(cv));
    }
    EXPECT("False", "lock.locked", R(l));
    TB_EXPECT_ERR(a, "RuntimeError", "condition.release", R(cv));
    mpb_free(a);
    mpb_free(b);
}
END_TEST

static int hold_lock_forever(mpb_context *c, mpb_ref l)
{
    if (mpb_lock_acquire(c, l, -1, NULL) != MPB_OK) return 1;
    pause();
    return 0;
}

START_TEST(a_lock_held_by_a_killed_process_goes_to_the_next_waiter)
{
    mpb_ref l = make("lock", NULL);
    pid_t pid = child(hold_lock_forever, l);
    for (int i = 0; i < 500; i++) {
        mpb_value r;
        ck_assert_int_eq(mpb_call(C, "lock.locked", (mpb_value[]){mpb_refv(l)}, 1, &r), MPB_OK);
        if (r.v.b) break;
        usleep(10000);
    }
    EXPECT("True", "lock.locked", R(l));
    kill(pid, SIGKILL);
    reap(pid);
    int got = 0;
    double t0 = now();
    ck_assert_int_eq(mpb_lock_acquire(C, l, 1.0, &got), MPB_OK);
    ck_assert_msg(got == 1, "not acquired within a second of the holder's death");
    ck_assert(now() - t0 < 1.0);
}
END_TEST

/* Each child takes the lock and appends its number to the list, in turn. */
static mpb_ref order_list;
static int take_turn(mpb_context *c, mpb_ref l)
{
    if (mpb_lock_acquire(c, l, 20, NULL) != MPB_OK) return 1;
    mpb_value me = mpb_int(getpid());
    if (mpb_list_append(c, order_list, &me) != MPB_OK) return 2;
    return mpb_lock_release(c, l) == MPB_OK ? 0 : 3;
}

START_TEST(lock_waiters_are_served_first_come_first_served)
{
    enum { N = 6 };
    mpb_ref l = make("lock", NULL);
    order_list = make("list", NULL);
    EXPECT("True", "lock.acquire", R(l));
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = child(take_turn, l);
        await_parked(i + 1); /* arrival order is known */
    }
    EXPECT("None", "lock.release", R(l));
    for (int i = 0; i < N; i++) ck_assert_int_eq(reap(pids[i]), 0);
    mpb_value all;
    ck_assert_int_eq(mpb_list_copy(C, order_list, &all), MPB_OK);
    ck_assert_uint_eq(all.v.a->len, N);
    for (int i = 0; i < N; i++) ck_assert_int_eq(all.v.a->items[i].v.i, pids[i]);
    mpb_value_free(&all);
}
END_TEST

/*--- semaphore ---*/

static int take_one_unit(mpb_context *c, mpb_ref s)
{
    int got = 0;
    if (mpb_sem_acquire(c, s, -1, &got) != MPB_OK || !got) return 1;
    pause();
    return 0;
}

START_TEST(semaphore_counts_and_bounded_refuses_over_release)
{
    mpb_ref s = make("semaphore", "2"), b = make("boundedsemaphore", "1");
    EXPECT("True", "semaphore.acquire", R(s));
    EXPECT("True", "semaphore.acquire", R(s));
    EXPECT("False", "semaphore.acquire", R(s), V("False"));
    EXPECT("False", "semaphore.acquire", R(s), V("True"), V("0.1"));
    EXPECT("0", "semaphore.value", R(s));
    EXPECT("None", "semaphore.release", R(s), V("3"));
    EXPECT("3", "semaphore.value", R(s)); /* unbounded: may go past the start */
    EXPECT_ERR("ValueError", "semaphore.release", R(s), V("0"));
    EXPECT_ERR("ValueError", "semaphore.release", R(b));
    EXPECT("True", "semaphore.acquire", R(b));
    EXPECT("None", "semaphore.release", R(b));
    EXPECT_ERR("ValueError", "manager.create", V("'semaphore'"), V("-1"));
    /* a killed holder's unit comes back and goes to the waiter */
    mpb_ref k = make("semaphore", "1");
    pid_t pid = child(take_one_unit, k);
    for (int i = 0; i < 500; i++) {
        mpb_value r;
        ck_assert_int_eq(mpb_call(C, "semaphore.value", (mpb_value[]){mpb_refv(k)}, 1, &r), MPB_OK);
        if (r.v.i == 0) break;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    reap(pid);
    int got = 0;
    ck_assert_int_eq(mpb_sem_acquire(C, k, 5, &got), MPB_OK);
    ck_assert_int_eq(got, 1);
}
END_TEST

/*--- condition ---*/

static int wait_for_notify(mpb_context *c, mpb_ref cv)
{
    int got = 0, notified = 0;
    if (mpb_cond_acquire(c, cv, -1, &got) != MPB_OK || !got) return 1;
    if (mpb_cond_wait(c, cv, 20, &notified) != MPB_OK || !notified) return 2;
    return mpb_cond_release(c, cv) == MPB_OK ? 0 : 3; /* it holds the lock again */
}

START_TEST(condition_wait_notify_across_processes)
{
    mpb_ref cv = make("condition", NULL);
    EXPECT_ERR("RuntimeError", "condition.wait", R(cv), V("0.1"));
    EXPECT_ERR("RuntimeError", "condition.notify", R(cv));
    pid_t a = child(wait_for_notify, cv), b = child(wait_for_notify, cv);
    await_parked(2);
    EXPECT("True", "condition.acquire", R(cv));
    EXPECT("None", "condition.notify", R(cv));
    EXPECT("None", "condition.release", R(cv));
    for (int i = 0; i < 500 && parked_count() > 1; i++) usleep(10000);
    ck_assert_int_eq(parked_count(), 1); /* one woken, one still waiting */
    EXPECT("True", "condition.acquire", R(cv));
    EXPECT("None", "condition.notify_all", R(cv));
    EXPECT("None", "condition.release", R(cv));
    ck_assert_int_eq(reap(a), 0);
    ck_assert_int_eq(reap(b), 0);
    /* a timed-out wait returns false with the lock held again */
    EXPECT("True", "condition.acquire", R(cv));
    EXPECT("False", "condition.wait", R(cv), V("0.1"));
    EXPECT("None", "condition.release", R(cv));
    /* over an explicit rlock: recursion is restored after the wait */
    mpb_ref rl = make("rlock", NULL), cv2;
    mpb_value init = mpb_refv(rl);
    ck_assert_int_eq(mpb_create(C, "condition", &init, &cv2), MPB_OK);
    EXPECT("True", "condition.acquire", R(cv2));
    EXPECT("True", "lock.acquire", R(rl));
    EXPECT("False", "condition.wait", R(cv2), V("0.05"));
    EXPECT("None", "lock.release", R(rl));
    EXPECT("True", "lock.locked", R(rl));
    EXPECT("None", "condition.release", R(cv2));
    EXPECT("False", "lock.locked", R(rl));
}
END_TEST

/*--- event ---*/

static int wait_event(mpb_context *c, mpb_ref e)
{
    int set = 0;
    return mpb_event_wait(c, e, 20, &set) == MPB_OK && set ? 0 : 1;
}

START_TEST(event_wakes_every_waiter)
{
    mpb_ref e = make("event", NULL);
    EXPECT("False", "event.is_set", R(e));
    EXPECT("False", "event.wait", R(e), V("0.1"));
    pid_t a = child(wait_event, e), b = child(wait_event, e);
    await_parked(2);
    EXPECT("None", "event.set", R(e));
    ck_assert_int_eq(reap(a), 0);
    ck_assert_int_eq(reap(b), 0);
    EXPECT("True", "event.wait", R(e));
    EXPECT("None", "event.clear", R(e));
    EXPECT("False", "event.is_set", R(e));
}
END_TEST

/*--- barrier ---*/

static int pass_barrier(mpb_context *c, mpb_ref b)
{
    int64_t index = -1;
    if (mpb_barrier_wait(c, b, 20, &index) != MPB_OK) return 100;
    return (int)index;
}

START_TEST(barrier_lets_all_parties_through_together)
{
    mpb_ref b = make("barrier", "3");
    EXPECT("3", "barrier.parties", R(b));
    pid_t p1 = child(pass_barrier, b), p2 = child(pass_barrier, b);
    await_parked(2);
    EXPECT("2", "barrier.n_waiting", R(b));
    EXPECT("2", "barrier.wait", R(b)); /* the third arrival */
    int i1 = reap(p1), i2 = reap(p2);
    ck_assert((i1 == 0 && i2 == 1) || (i1 == 1 && i2 == 0));
    EXPECT("0", "barrier.n_waiting", R(b));
    /* a timeout breaks it for everyone */
    pid_t p3 = child(pass_barrier, b);
    await_parked(1);
    EXPECT_ERR("BrokenBarrierError", "barrier.wait", R(b), V("0.1"));
    ck_assert_int_eq(reap(p3), 100);
    EXPECT("True", "barrier.broken", R(b));
    EXPECT_ERR("BrokenBarrierError", "barrier.wait", R(b));
    EXPECT("None", "barrier.reset", R(b));
    EXPECT("False", "barrier.broken", R(b));
    EXPECT("None", "barrier.abort", R(b));
    EXPECT("True", "barrier.broken", R(b));
    EXPECT_ERR("ValueError", "manager.create", V("'barrier'"), V("0"));
}
END_TEST

/*--- value, array ---*/

START_TEST(value_and_array_keep_their_typecode)
{
    mpb_ref d = make("value", "('d', 1.5)"), b = make("value", "('b',)"), u = make("value", "('u', 'x')");
    EXPECT("1.5", "value.get", R(d));
    EXPECT("None", "value.set", R(d), V("2"));
    EXPECT("2.0", "value.get", R(d));
    EXPECT_ERR("TypeError", "value.set", R(d), V("'x'"));
    EXPECT("0", "value.get", R(b));
    EXPECT("127", "value.incr", R(b), V("127"));
    EXPECT_ERR("OverflowError", "value.incr", R(b));
    EXPECT("127", "value.get", R(b));
    EXPECT_ERR("TypeError", "value.set", R(b), V("1.5"));
    EXPECT_ERR("OverflowError", "value.set", R(b), V("-129"));
    EXPECT_ERR("TypeError", "value.set", R(u), V("'xy'"));
    EXPECT("None", "value.set", R(u), V("'é'"));
    EXPECT_ERR("ValueError", "manager.create", V("'value'"), V("('z', 1)"));
    mpb_ref a = make("array", "('i', [0, 1, 2, 3, 4, 5])"), z = make("array", "('H', 3)");
    EXPECT("[0, 0, 0]", "array.tolist", R(z));
    EXPECT_ERR("OverflowError", "array.setitem", R(z), V("0"), V("65536"));
    EXPECT("6", "array.len", R(a));
    EXPECT("5", "array.getitem", R(a), V("-1"));
    EXPECT_ERR("IndexError", "array.getitem", R(a), V("6"));
    EXPECT("[1, 3, 5]", "array.getitem", R(a), V("1"), V("None"), V("2"));
    EXPECT("None", "array.setitem", R(a), V("0"), V("2"), V("[10, 11]"));
    EXPECT_ERR("ValueError", "array.setitem", R(a), V("0"), V("2"), V("[1]"));
    EXPECT_ERR("TypeError", "array.setitem", R(a), V("2"), V("4"), V("[1, 'x']"));
    EXPECT("[10, 11, 2, 3, 4, 5]", "array.tolist", R(a));
    EXPECT_ERR("OverflowError", "manager.create", V("'array'"), V("('b', [1, 300])"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sync");
    TCase *tc = tcase_create("sync");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, queue_is_fifo_with_python_outcomes);
    tcase_add_test(tc, blocked_get_is_answered_by_another_process_put);
    tcase_add_test(tc, blocked_put_gets_room_when_an_item_is_taken);
    tcase_add_test(tc, joinable_queue_join_waits_for_every_task_across_processes);
    tcase_add_test(tc, queue_holds_a_million_items);
    tcase_add_test(tc, a_killed_waiter_does_not_swallow_an_item);
    tcase_add_test(tc, a_getter_gone_in_the_same_round_as_a_put_does_not_swallow_the_item);
    tcase_add_test(tc, a_parked_request_holds_back_later_requests_on_its_connection);
    tcase_add_test(tc, two_hundred_parked_waiters_while_others_keep_working);
    tcase_add_test(tc, blocking_calls_sent_as_notifications_are_never_answered);
    tcase_add_test(tc, lock_is_owned_by_its_connection);
    tcase_add_test(tc, a_dead_owners_lock_goes_to_the_next_waiter_at_once);
    tcase_add_test(tc, a_dead_owners_lock_with_no_waiter_may_be_released_or_taken_by_anyone);
    tcase_add_test(tc, a_dead_holders_semaphore_units_go_to_waiters_and_the_rest_to_anyone);
    tcase_add_test(tc, rlock_counts_recursion_per_owner);
    tcase_add_test(tc, rlock_owner_reenters_while_another_connection_waits);
    tcase_add_test(tc, condition_owner_reenters_and_wait_restores_every_level);
    tcase_add_test(tc, a_lock_held_by_a_killed_process_goes_to_the_next_waiter);
    tcase_add_test(tc, lock_waiters_are_served_first_come_first_served);
    tcase_add_test(tc, semaphore_counts_and_bounded_refuses_over_release);
    tcase_add_test(tc, condition_wait_notify_across_processes);
    tcase_add_test(tc, event_wakes_every_waiter);
    tcase_add_test(tc, barrier_lets_all_parties_through_together);
    tcase_add_test(tc, value_and_array_keep_their_typecode);
    suite_add_tcase(s, tc);
    return tb_run(s);
}
