/* test_resilient.c - libmpbroker across fork() and broker restarts.
 *
 * The restart tests run the broker on a fixed socket path (tb_start picks a new one
 * each time), so that a client can find the restarted broker where it left it.
 */
#include <check.h>
#include <dirent.h>
#include <msgpack.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static char dir[64], sock[128], address[160], data[128];
static pid_t server = -1;

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/mpbres.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sock, sizeof sock, "%s/s.sock", dir);
    snprintf(address, sizeof address, "unix:%s", sock);
    snprintf(data, sizeof data, "%s/data", dir);
}

static void stop_server(int sig)
{
    if (server <= 0) return;
    kill(server, sig);
    int st;
    ck_assert_int_eq(waitpid(server, &st, 0), server);
    if (sig == SIGTERM) ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    server = -1;
}

static void teardown(void)
{
    stop_server(SIGTERM);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Start the broker on the fixed socket; with_data: persist in data/. */
static void start_server(bool with_data)
{
    server = fork();
    ck_assert_int_ge(server, 0);
    if (server == 0) {
        const char *bin = getenv("MPB_SERVER");
        if (with_data)
            execl(bin, bin, "--socket", sock, "--data-dir", data, "--fsync", "always", "--quiet",
                  (char *)NULL);
        else
            execl(bin, bin, "--socket", sock, "--quiet", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        mpb_context *c = mpb_connect(address);
        bool up = c && !c->err && mpb_ping(c) == MPB_OK;
        mpb_free(c);
        if (up) return;
        usleep(10000);
    }
    ck_abort_msg("broker did not start");
}

START_TEST(a_forked_child_gets_its_own_connection)
{
    start_server(false);
    mpb_context *c = mpb_connect(address);
    ck_assert(c && !c->err);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    pid_t pid = fork();
    /* Both processes now use the same context object, concurrently: each payload must
     * come back to the process that sent it. */
    int bad = 0;
    for (int i = 0; i < 2000; i++) {
        char tag[64];
        snprintf(tag, sizeof tag, "%s-%d", pid == 0 ? "child" : "parent", i);
        mpb_value arg = mpb_str_borrowed(tag, strlen(tag)), r;
        if (mpb_call(c, "manager.ping", &arg, 1, &r) != MPB_OK || r.type != MPB_STR ||
            strcmp(r.v.s, tag) != 0)
            bad++;
        mpb_value_free(&r);
    }
    if (pid == 0) {
        mpb_free(c);
        _exit(bad ? 1 : 0);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child got wrong replies");
    ck_assert_int_eq(bad, 0);
    mpb_free(c);
}
END_TEST

/*--- fork() at every point of a pipeline ---*/

enum fork_point { NOTHING_SENT, SENT_UNREAD, HALF_READ, NPOINTS };
static const char *const point_names[] = {"nothing sent", "sent and unread", "half read"};

/* Queue list.append(l, "<who>-<i>") for i in [0, n). */
static void append_tagged(mpb_context *c, mpb_ref l, const char *who, int n)
{
    for (int i = 0; i < n; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "%s-%d", who, i);
        mpb_value a[2] = {mpb_refv(l), mpb_str_borrowed(tag, strlen(tag))};
        ck_assert_int_eq(mpb_append_call(c, "list.append", a, 2), MPB_OK);
    }
}

/* In the child: the parent's pipeline is not ours; our own calls work. 0 if all held. */
static int child_after_fork(mpb_context *c, mpb_ref l)
{
    if (mpb_pending(c) != 0) return 1;
    mpb_value r;
    if (mpb_get_reply(c, &r) != MPB_ERR_ARG) return 2; /* nothing of ours to read */
    char method[16];
    int got;
    if (mpb_get_notification(c, 0, method, sizeof method, &r, &got) != MPB_OK || got) return 3;
    if (mpb_ping(c) != MPB_OK) return 4;
    append_tagged(c, l, "child", 3);
    for (int i = 0; i < 3; i++)
        if (mpb_get_reply(c, &r) != MPB_OK) return 5;
    mpb_value arg = mpb_str_borrowed("child-payload", 13);
    if (mpb_call(c, "manager.ping", &arg, 1, &r) != MPB_OK || r.type != MPB_STR ||
        strcmp(r.v.s, "child-payload") != 0)
        return 6;
    mpb_value_free(&r);
    return 0;
}

START_TEST(fork_at_every_point_of_a_pipeline)
{
    /* The parent has three list.append calls in a pipeline when it forks: not yet sent,
     * sent with no reply read, or with one reply read. The child must neither send them
     * again nor read their replies; both go on calling, each getting its own replies,
     * and every append runs exactly once. */
    start_server(false);
    for (int point = 0; point < NPOINTS; point++) {
        mpb_context *c = mpb_connect(address);
        ck_assert(c && !c->err);
        mpb_ref l;
        ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
        append_tagged(c, l, "parent", 3);
        int read = 0;
        if (point >= SENT_UNREAD) ck_assert_int_eq(mpb_flush(c), MPB_OK);
        if (point == HALF_READ) {
            ck_assert_int_eq(mpb_get_reply(c, NULL), MPB_OK);
            read = 1;
        }
        if (point == SENT_UNREAD) usleep(50000); /* let the replies arrive unread */
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            int rc = child_after_fork(c, l);
            mpb_free(c);
            _exit(rc);
        }
        for (; read < 3; read++)
            ck_assert_msg(mpb_get_reply(c, NULL) == MPB_OK, "%s: parent reply %d: %s: %s",
                          point_names[point], read, c->errkind, c->errstr);
        mpb_value arg = mpb_str_borrowed("parent-payload", 14), r;
        ck_assert_int_eq(mpb_call(c, "manager.ping", &arg, 1, &r), MPB_OK);
        ck_assert_str_eq(r.v.s, "parent-payload");
        mpb_value_free(&r);
        int st;
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the child failed at step %d",
                      point_names[point], WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        /* Each append ran once: three of the parent's, three of the child's. */
        mpb_value all;
        ck_assert_int_eq(mpb_list_copy(c, l, &all), MPB_OK);
        ck_assert_uint_eq(all.v.a->len, 6);
        for (int i = 0; i < 6; i++) {
            char want[32];
            snprintf(want, sizeof want, "%s-%d", i < 3 ? "parent" : "child", i % 3);
            int times = 0;
            for (size_t k = 0; k < 6; k++) times += strcmp(all.v.a->items[k].v.s, want) == 0;
            ck_assert_msg(times == 1, "%s: %s appended %d times", point_names[point], want, times);
        }
        mpb_value_free(&all);
        mpb_free(c);
    }
}
END_TEST

/*--- Backoff ---*/

static long long ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000LL + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

/* fork() in a threaded program copies OpenSSL's locks as they are: one another thread
 * held (the random generator's, inside RAND_bytes) stays held in the child for ever.
 * A child's first connect (a keyed handshake) must take no such lock: with one thread
 * in RAND_bytes nearly all the time and another doing handshakes of its own, every
 * child connects, authenticates and pings. */
static volatile int threads_stop;
static void *rand_loop(void *arg)
{
    (void)arg;
    unsigned char b[64];
    while (!threads_stop) RAND_bytes(b, sizeof b);
    return NULL;
}
#ifndef __SANITIZE_ADDRESS__
static void *handshake_loop(void *arg)
{
    (void)arg;
    while (!threads_stop) mpb_free(mpb_connect(address));
    return NULL;
}
#endif

START_TEST(a_child_forked_while_threads_use_openssl_still_connects)
{
    setenv("MPBROKER_AUTHKEY", "twenty-four bytes of key", 1);
    start_server(false);
    pthread_t t[2];
    threads_stop = 0;
    ck_assert_int_eq(pthread_create(&t[0], NULL, rand_loop, NULL), 0);
#ifdef __SANITIZE_ADDRESS__
    /* GCC 12's ASan allocator takes no lock at fork: a thread that mallocs all along
     * would hang children in the sanitizer itself, not in OpenSSL. */
    t[1] = t[0];
#else
    ck_assert_int_eq(pthread_create(&t[1], NULL, handshake_loop, NULL), 0);
#endif
    int bad = 0;
    for (int i = 0; i < 60; i++) {
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            mpb_context *c = mpb_connect(address);
            _exit(c && !c->err && mpb_ping(c) == MPB_OK ? 0 : 1);
        }
        int st, w = 0;
        for (int ms = 0; ms < 5000 && (w = waitpid(pid, &st, WNOHANG)) == 0; ms += 5) usleep(5000);
        if (w == 0) { /* deadlocked */
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
        }
        if (w == 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad = i + 1;
            break;
        }
    }
    threads_stop = 1;
    pthread_join(t[0], NULL);
    if (t[1] != t[0]) pthread_join(t[1], NULL);
    unsetenv("MPBROKER_AUTHKEY");
    ck_assert_msg(bad == 0, "child %d of 60 hung (5 s) or failed to connect", bad);
}
END_TEST

START_TEST(reconnect_gives_up_at_max_wait_not_a_backoff_step_later)
{
    /* No broker: a call retries for max_wait_ms, and stops then (the last sleep is cut
     * to the time left; it used to overrun by up to the 1 s backoff step). */
    static const int waits[] = {0, 1275};
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
        mpb_context *c = mpb_connect(address);
        ck_assert(c && c->err == MPB_ERR_CONNECT);
        ck_assert_int_eq(mpb_enable_reconnect(c, 1, waits[i]), MPB_OK);
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ck_assert_int_lt(mpb_ping(c), 0);
        long long took = ms_since(&t0);
        ck_assert_str_eq(c->errkind, "ConnectionError");
        ck_assert_msg(took >= waits[i] - 5 && took < waits[i] + 400, "max_wait_ms %d took %lld ms",
                      waits[i], took);
        mpb_free(c);
    }
}
END_TEST

START_TEST(reconnect_finds_a_broker_within_one_backoff_step_of_its_start)
{
    /* The broker appears 2.5 s after the client starts retrying: with steps capped at
     * 1 s, the client is through less than a step (plus start-up) after that. */
    mpb_context *c = mpb_connect(address);
    ck_assert(c && c->err == MPB_ERR_CONNECT);
    ck_assert_int_eq(mpb_enable_reconnect(c, 1, 20000), MPB_OK);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    server = fork();
    ck_assert_int_ge(server, 0);
    if (server == 0) {
        usleep(2500 * 1000);
        const char *bin = getenv("MPB_SERVER");
        execl(bin, bin, "--socket", sock, "--quiet", (char *)NULL);
        _exit(127);
    }
    ck_assert_msg(mpb_ping(c) == MPB_OK, "%s: %s", c->errkind, c->errstr);
    long long took = ms_since(&t0);
    ck_assert_msg(took >= 2500 && took < 2500 + 1000 + 1000, "took %lld ms", took);
    mpb_free(c);
}
END_TEST

START_TEST(without_reconnect_calls_fail_fast_with_connection_error)
{
    start_server(false);
    mpb_context *c = mpb_connect(address);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    stop_server(SIGTERM);
    ck_assert_int_lt(mpb_ping(c), 0);
    ck_assert_str_eq(c->errkind, "ConnectionError");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_lt(mpb_ping(c), 0); /* no waiting, no retrying */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_str_eq(c->errkind, "ConnectionError");
    ck_assert_int_lt(t1.tv_sec - t0.tv_sec, 2);
    mpb_free(c);
}
END_TEST

START_TEST(with_reconnect_a_client_keeps_working_across_a_restart)
{
    start_server(true);
    mpb_context *c = mpb_connect(address);
    ck_assert_int_eq(mpb_enable_reconnect(c, 1, 10000), MPB_OK);
    mpb_ref l;
    ck_assert_int_eq(mpb_open(c, "list", "journal", NULL, &l), MPB_OK);
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 10; k++) {
            mpb_value v = mpb_int(i * 10 + k);
            ck_assert_msg(mpb_list_append(c, l, &v) == MPB_OK, "%s: %s", c->errkind, c->errstr);
        }
        stop_server(i % 2 ? SIGKILL : SIGTERM); /* clean and unclean restarts */
        start_server(true);
    }
    int64_t n = 0;
    ck_assert_msg(mpb_list_len(c, l, &n) == MPB_OK, "%s: %s", c->errkind, c->errstr);
    ck_assert_int_eq(n, 30);
    mpb_free(c);
}
END_TEST

/* Queue manager.ping(tag). */
static void append_ping(mpb_context *c, const char *tag)
{
    mpb_value a = mpb_str_borrowed(tag, strlen(tag));
    ck_assert_int_eq(mpb_append_call(c, "manager.ping", &a, 1), MPB_OK);
}

START_TEST(a_call_lost_with_the_connection_never_takes_a_later_calls_reply)
{
    /* A and B are in a pipeline when the broker restarts: both are lost. A's
     * mpb_get_reply says so; then a new call C reconnects. The next mpb_get_reply is
     * B's: it must fail too, not return C's reply as B's (it did: the lost calls were
     * forgotten, so C's reply answered the oldest call still counted). */
    start_server(false);
    mpb_context *c = mpb_connect(address);
    ck_assert_int_eq(mpb_enable_reconnect(c, 1, 10000), MPB_OK);
    append_ping(c, "A");
    append_ping(c, "B");
    stop_server(SIGTERM);
    start_server(false);
    mpb_value r;
    ck_assert_int_lt(mpb_get_reply(c, &r), 0); /* A */
    ck_assert_str_eq(c->errkind, "ConnectionError");
    ck_assert_uint_eq(mpb_pending(c), 1); /* B, lost too */
    ck_assert_int_eq(mpb_call(c, "manager.ping", NULL, 0, &r), MPB_ERR_ARG); /* B unread */
    append_ping(c, "C");
    ck_assert_uint_eq(mpb_pending(c), 2);
    int rc = mpb_get_reply(c, &r); /* B */
    ck_assert_msg(rc < 0, "B's reply was %s", r.type == MPB_STR ? r.v.s : "?");
    ck_assert_str_eq(c->errkind, "ConnectionError");
    mpb_value_free(&r);
    ck_assert_int_eq(mpb_get_reply(c, &r), MPB_OK); /* C */
    ck_assert_str_eq(r.v.s, "C");
    mpb_value_free(&r);
    ck_assert_uint_eq(mpb_pending(c), 0);
    ck_assert_int_eq(mpb_get_reply(c, &r), MPB_ERR_ARG);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
}
END_TEST

START_TEST(reconnect_to_a_broker_that_lost_its_state_reopens_names)
{
    start_server(false);
    mpb_context *c = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref ns;
    ck_assert_int_eq(mpb_open(c, "namespace", "stats", NULL, &ns), MPB_OK);
    ck_assert_int_eq(mpb_ns_incr(c, ns, "runs", 5, NULL), MPB_OK);
    /* Another client takes the first id, so the restarted broker's "stats" differs. */
    stop_server(SIGTERM);
    start_server(false);
    mpb_context *other = mpb_connect(address);
    mpb_ref taken;
    ck_assert_int_eq(mpb_create(other, "list", NULL, &taken), MPB_OK);
    int64_t runs = 0;
    ck_assert_msg(mpb_ns_incr(c, ns, "runs", 1, &runs) == MPB_OK, "%s: %s", c->errkind, c->errstr);
    ck_assert_int_eq(runs, 1); /* state was lost: re-created empty, under the old reference */
    mpb_ref now;
    ck_assert_int_eq(mpb_lookup(other, "stats", &now), MPB_OK);
    ck_assert_uint_ne(now, ns);
    mpb_free(other);
    mpb_free(c);
}
END_TEST

/*--- Reconnect: no call ever reaches an object it did not name ---*/

static void set_label(mpb_context *c, mpb_ref ns, const char *attr, const char *text)
{
    mpb_value v = mpb_str_borrowed(text, strlen(text));
    ck_assert_msg(mpb_ns_setattr(c, ns, attr, &v) == MPB_OK, "%s: %s", c->errkind, c->errstr);
}

/* A namespace labelled `label`: named when name is not NULL, else anonymous (held by c). */
static mpb_ref labelled(mpb_context *c, const char *name, const char *label)
{
    mpb_ref r;
    if (name != NULL)
        ck_assert_int_eq(mpb_open(c, "namespace", name, NULL, &r), MPB_OK);
    else
        ck_assert_int_eq(mpb_create(c, "namespace", NULL, &r), MPB_OK);
    set_label(c, r, "label", label);
    return r;
}

/* Every namespace the broker has that a call touched must have been touched as what it
 * is: its "touched" attribute equals its "label" (or, re-created empty by a reconnect,
 * its name). Returns how many were touched. */
static int check_touched(const char *why)
{
    mpb_context *obs = mpb_connect(address);
    ck_assert(obs && !obs->err);
    mpb_value objs;
    ck_assert_int_eq(mpb_call(obs, "manager.objects", NULL, 0, &objs), MPB_OK);
    int touched = 0;
    for (size_t i = 0; i < objs.v.a->len; i++) {
        const mpb_value *o = &objs.v.a->items[i];
        mpb_value k = mpb_str_borrowed("type", 4);
        const mpb_value *type = mpb_map_get(o->v.m, &k);
        if (strcmp(type->v.s, "namespace") != 0) continue;
        k = mpb_str_borrowed("ref", 3);
        mpb_ref ref = mpb_map_get(o->v.m, &k)->v.ref;
        k = mpb_str_borrowed("name", 4);
        const mpb_value *name = mpb_map_get(o->v.m, &k);
        mpb_value vars;
        ck_assert_int_eq(mpb_ns_vars(obs, ref, &vars), MPB_OK);
        k = mpb_str_borrowed("touched", 7);
        const mpb_value *t = mpb_map_get(vars.v.m, &k);
        k = mpb_str_borrowed("label", 5);
        const mpb_value *label = mpb_map_get(vars.v.m, &k);
        const char *want = label ? label->v.s : name->type == MPB_STR ? name->v.s : "?";
        if (t != NULL) {
            ck_assert_msg(strcmp(t->v.s, want) == 0, "%s: a call meant for '%s' reached '%s'",
                          why, t->v.s, want);
            touched++;
        }
        mpb_value_free(&vars);
    }
    mpb_value_free(&objs);
    mpb_free(obs);
    return touched;
}

/* c touches ref as `meant`: OK, or NoSuchObject; anything else fails the test. */
static bool touch(mpb_context *c, mpb_ref ref, const char *meant)
{
    mpb_value v = mpb_str_borrowed(meant, strlen(meant));
    int rc = mpb_ns_setattr(c, ref, "touched", &v);
    ck_assert_msg(rc == MPB_OK || (rc == MPB_ERR_REPLY && strcmp(c->errkind, "NoSuchObject") == 0),
                  "touching %s: %s: %s", meant, c->errkind, c->errstr);
    return rc == MPB_OK;
}

#define ROUNDS 4

START_TEST(reconnect_never_sends_a_call_to_an_object_it_did_not_name)
{
    /* _i = 0: restarts that lose the state; 1: with --data-dir. Each round another
     * client makes objects (anonymous and named) before and after a restart, and deletes
     * and re-creates a name; this client, reconnecting, then calls on every reference it
     * ever had. Each call must reach the object the reference named or fail with
     * NoSuchObject: the opened name "stats" always reaches the object named "stats". */
    bool data = _i;
    start_server(data);
    mpb_context *c = mpb_connect(address);
    ck_assert(c && !c->err);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref stats = labelled(c, "stats", "stats");
    mpb_ref anon[ROUNDS], shared[ROUNDS];
    char label[64];
    for (int round = 0; round < ROUNDS; round++) {
        mpb_context *o = mpb_connect(address);
        ck_assert(o && !o->err);
        for (int k = 0; k < 3; k++) {
            snprintf(label, sizeof label, "o-anon-%d-%d", round, k);
            labelled(o, NULL, label);
        }
        snprintf(label, sizeof label, "shared-%d", round);
        labelled(o, label, label);
        snprintf(label, sizeof label, "c-anon-%d", round);
        anon[round] = labelled(c, NULL, label);
        snprintf(label, sizeof label, "shared-%d", round);
        ck_assert_int_eq(mpb_lookup(c, label, &shared[round]), MPB_OK);
        mpb_free(o);

        stop_server(round % 2 ? SIGKILL : SIGTERM);
        start_server(data);

        /* Someone else gets the first ids of the new broker, or of what is left. */
        o = mpb_connect(address);
        ck_assert(o && !o->err);
        for (int k = 0; k < 4; k++) {
            snprintf(label, sizeof label, "o2-anon-%d-%d", round, k);
            labelled(o, NULL, label);
        }
        snprintf(label, sizeof label, "late-%d", round);
        labelled(o, label, label);
        if (data && round > 0) { /* a name deleted and made again: another object */
            snprintf(label, sizeof label, "shared-%d", round - 1);
            ck_assert_int_eq(mpb_delete(o, label), MPB_OK);
            char l2[64];
            snprintf(l2, sizeof l2, "shared-%d-again", round - 1);
            labelled(o, label, l2);
        }

        ck_assert_msg(touch(c, stats, "stats"), "round %d: the opened name was lost", round);
        for (int r = 0; r <= round; r++) {
            snprintf(label, sizeof label, "c-anon-%d", r);
            ck_assert_msg(!touch(c, anon[r], label), "%s outlived its holder", label);
            snprintf(label, sizeof label, "shared-%d", r);
            bool alive = data && r >= round; /* kept, and not yet deleted and made again */
            ck_assert_msg(touch(c, shared[r], label) == alive, "round %d: %s", round, label);
        }
        mpb_free(o);
        int n = check_touched(data ? "with --data-dir" : "losing the state");
        ck_assert_int_ge(n, 1);
    }
    mpb_free(c);
}
END_TEST

START_TEST(two_restarts_that_lose_the_state_translate_the_oldest_reference)
{
    /* "stats" has a new id after each restart; the reference from the first broker, and
     * the one looked up from the second, both reach the third's "stats", never another
     * client's private namespace. */
    start_server(false);
    mpb_context *c = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref first, second;
    ck_assert_int_eq(mpb_open(c, "namespace", "stats", NULL, &first), MPB_OK);
    mpb_context *others[2];
    mpb_ref private[2];
    for (int i = 0; i < 2; i++) {
        stop_server(SIGTERM);
        start_server(false);
        others[i] = mpb_connect(address);
        ck_assert_int_eq(mpb_create(others[i], "namespace", NULL, &private[i]), MPB_OK);
        int64_t v = 0;
        ck_assert_msg(mpb_ns_incr(c, first, "runs", 100, &v) == MPB_OK, "%s: %s", c->errkind,
                      c->errstr);
        ck_assert_int_eq(v, 100); /* a fresh "stats" each time */
        if (i == 0) ck_assert_int_eq(mpb_lookup(c, "stats", &second), MPB_OK);
    }
    int64_t v = 0;
    ck_assert_int_eq(mpb_ns_incr(c, second, "runs", 1, &v), MPB_OK);
    ck_assert_int_eq(v, 101);
    for (int i = 0; i < 2; i++) {
        mpb_value vars;
        if (i == 1) { /* the live one is untouched; the first broker's is gone */
            ck_assert_int_eq(mpb_ns_vars(others[i], private[i], &vars), MPB_OK);
            ck_assert_uint_eq(vars.v.m->len, 0);
            mpb_value_free(&vars);
        }
        mpb_free(others[i]);
    }
    mpb_free(c);
}
END_TEST

START_TEST(a_new_object_with_an_old_objects_number_is_not_translated)
{
    /* After a restart that lost the state, another client's first object is looked up
     * and written through this client: the value lands in that object, not in "stats". */
    start_server(false);
    mpb_context *c = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref stats, other;
    ck_assert_int_eq(mpb_open(c, "namespace", "stats", NULL, &stats), MPB_OK);
    stop_server(SIGTERM);
    start_server(false);
    mpb_context *o = mpb_connect(address);
    ck_assert_int_eq(mpb_open(o, "namespace", "other", NULL, &other), MPB_OK);
    mpb_ref seen;
    ck_assert_int_eq(mpb_lookup(c, "other", &seen), MPB_OK);
    ck_assert_uint_eq(seen, other);
    ck_assert_uint_ne(seen, stats); /* ids are not reused across lifetimes */
    mpb_value x = mpb_int(42), got;
    ck_assert_int_eq(mpb_ns_setattr(c, seen, "x", &x), MPB_OK);
    ck_assert_int_eq(mpb_ns_getattr(o, other, "x", &got), MPB_OK);
    ck_assert_int_eq(got.v.i, 42);
    mpb_ref now;
    ck_assert_int_eq(mpb_lookup(o, "stats", &now), MPB_OK);
    ck_assert_int_eq(mpb_ns_getattr(o, now, "x", &got), MPB_ERR_REPLY);
    ck_assert_str_eq(o->errkind, "AttributeError");
    mpb_free(o);
    mpb_free(c);
}
END_TEST

START_TEST(a_name_opened_again_as_another_type_is_reopened_as_that_type)
{
    /* "x" was a list when this client first opened it; another client replaced it with
     * a dict, which this client then opened. After a restart that lost the state, the
     * reconnect must make "x" a dict again, not a list. */
    start_server(false);
    mpb_context *c = mpb_connect(address), *o = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref l, d, od;
    ck_assert_int_eq(mpb_open(c, "list", "x", NULL, &l), MPB_OK);
    mpb_value name = mpb_str_borrowed("x", 1);
    ck_assert_int_eq(mpb_call(o, "manager.delete", &name, 1, NULL), MPB_OK);
    ck_assert_int_eq(mpb_open(o, "dict", "x", NULL, &od), MPB_OK);
    ck_assert_int_eq(mpb_open(c, "dict", "x", NULL, &d), MPB_OK);
    ck_assert_uint_eq(d, od);
    mpb_free(o);
    stop_server(SIGTERM);
    start_server(false);
    mpb_value k = mpb_int(1), v = mpb_int(2);
    ck_assert_msg(mpb_dict_setitem(c, d, &k, &v) == MPB_OK, "%s: %s", c->errkind, c->errstr);
    o = mpb_connect(address);
    mpb_ref now;
    ck_assert_int_eq(mpb_open(o, "dict", "x", NULL, &now), MPB_OK); /* a dict, holding it */
    mpb_value got;
    ck_assert_int_eq(mpb_dict_getitem(o, now, &k, &got), MPB_OK);
    ck_assert_int_eq(got.v.i, 2);
    mpb_free(o);
    mpb_free(c);
}
END_TEST

static uint64_t id_space_of(mpb_context *c)
{
    mpb_value s;
    ck_assert_int_eq(mpb_call(c, "manager.stats", NULL, 0, &s), MPB_OK);
    mpb_value k = mpb_str_borrowed("id_space", 8);
    const mpb_value *v = mpb_map_get(s.v.m, &k);
    ck_assert_ptr_nonnull(v);
    uint64_t space = (uint64_t)v->v.i;
    mpb_value_free(&s);
    return space;
}

START_TEST(the_id_space_is_kept_with_the_state_and_new_without_it)
{
    start_server(true);
    mpb_context *c = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    uint64_t space = id_space_of(c);
    ck_assert_uint_ge(space, 1);
    ck_assert_uint_lt(space, UINT64_C(1) << MPB_REF_SPACE_BITS);
    mpb_ref a, b;
    ck_assert_int_eq(mpb_open(c, "list", "kept", NULL, &a), MPB_OK);
    ck_assert_uint_eq(mpb_ref_space(a), space);
    ck_assert_uint_lt(a, UINT64_C(1) << 63);
    stop_server(SIGKILL);
    start_server(true);
    ck_assert_uint_eq(id_space_of(c), space); /* the data directory keeps it */
    ck_assert_int_eq(mpb_create(c, "list", NULL, &b), MPB_OK);
    ck_assert_uint_eq(mpb_ref_space(b), space);
    ck_assert_uint_gt(b, a); /* and its count: no id is handed out twice */
    stop_server(SIGTERM);
    start_server(false);
    ck_assert_uint_ne(id_space_of(c), space); /* a broker without the state: a new one */
    mpb_free(c);
}
END_TEST

/* Append ["create", id, typeid, name, nil] to a log being packed. */
static void log_create(msgpack_packer *pk, uint64_t id, const char *typeid, const char *name)
{
    msgpack_pack_array(pk, 5);
    msgpack_pack_str_with_body(pk, "create", 6);
    msgpack_pack_uint64(pk, id);
    msgpack_pack_str_with_body(pk, typeid, strlen(typeid));
    msgpack_pack_str_with_body(pk, name, strlen(name));
    msgpack_pack_nil(pk);
}

START_TEST(a_log_across_a_counter_roll_over_never_gives_an_id_twice)
{
    /* A broker that used up the counter of its space S moved on to a space S2, and its
     * log says so: "b" was the last id of S, then deleted; "c" the first of S2. A
     * restart must go on after "c" in S2: it used to ignore the ids of S2 and hand out
     * b's id again (and report S + 1, a space nobody used). */
    const uint64_t s = 0x1234, s2 = 0x5678;
    ck_assert_int_eq(mkdir(data, 0700), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/log.0.mpb", data);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_str_with_body(&pk, "mpbroker-log", 12);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, 0);
    log_create(&pk, s << 32 | 0xfffffffe, "list", "a");
    log_create(&pk, s << 32 | 0xffffffff, "list", "b");
    msgpack_pack_array(&pk, 3);
    msgpack_pack_str_with_body(&pk, "call", 4);
    msgpack_pack_str_with_body(&pk, "manager.delete", 14);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, "b", 1);
    log_create(&pk, s2 << 32 | 1, "list", "c");
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(sb.data, 1, sb.size, f), sb.size);
    ck_assert_int_eq(fclose(f), 0);
    msgpack_sbuffer_destroy(&sb);
    for (int restart = 0; restart < 2; restart++) {
        start_server(true);
        mpb_context *c = mpb_connect(address);
        ck_assert(c && !c->err);
        ck_assert_uint_eq(id_space_of(c), s2);
        mpb_ref n;
        ck_assert_int_eq(mpb_open(c, "list", restart ? "new1" : "new0", NULL, &n), MPB_OK);
        ck_assert_uint_eq(n, s2 << 32 | (2 + restart));
        mpb_free(c);
        stop_server(SIGTERM);
    }
}
END_TEST

/*--- Iterators across restarts and compaction ---*/

/* A dict {0: 0, ..., n-1: n-1} named `name`. */
static mpb_ref numbered_dict(mpb_context *c, const char *name, int n)
{
    mpb_ref d;
    ck_assert_int_eq(mpb_open(c, "dict", name, NULL, &d), MPB_OK);
    for (int i = 0; i < n; i++) {
        mpb_value k = mpb_int(i);
        ck_assert_int_eq(mpb_dict_setitem(c, d, &k, &k), MPB_OK);
    }
    return d;
}

/* The key of a [key, value] pair from a dict iterator. */
static int64_t pair_key(const mpb_value *item) { return item->v.a->items[0].v.i; }

START_TEST(a_walk_cut_by_a_restart_is_reported_and_starts_over)
{
    /* The consumer pattern across a restart that keeps the state: take ten, delete them,
     * and the broker restarts. The next chunk must not be asked with the old cursor (a
     * restart renumbers positions: it skipped 10..18); the cut is reported, and the walk
     * started over sees exactly the twenty that are left. */
    start_server(true);
    mpb_context *c = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref d = numbered_dict(c, "work", 30);
    mpb_iter *it = mpb_dict_iter(c, d, 10);
    mpb_value *item;
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(mpb_iter_next(it, &item), 1);
        ck_assert_int_eq(pair_key(item), i);
        mpb_value k = mpb_int(i);
        ck_assert_int_eq(mpb_dict_delitem(c, d, &k), MPB_OK);
    }
    stop_server(SIGKILL);
    start_server(true);
    ck_assert_int_eq(mpb_iter_next(it, &item), MPB_ERR_CUT);
    ck_assert_str_eq(c->errkind, "ConnectionError");
    ck_assert_int_eq(mpb_ping(c), MPB_OK); /* the context itself is fine */
    bool seen[30] = {false};
    int n = 0, rc;
    while ((rc = mpb_iter_next(it, &item)) == 1) {
        int64_t k = pair_key(item);
        ck_assert(k >= 10 && k < 30 && !seen[k]);
        seen[k] = true;
        n++;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(n, 20);
    mpb_iter_free(it);

    /* The same for a list and a set, and after a restart that lost the state (the
     * named list is re-created empty: the walk starts over and finds nothing). */
    mpb_ref l, s;
    mpb_value init = tb_lit("[1, 2, 3, 4, 5, 6]");
    ck_assert_int_eq(mpb_open(c, "list", "jobs", &init, &l), MPB_OK);
    ck_assert_int_eq(mpb_create(c, "set", &init, &s), MPB_OK);
    mpb_value_free(&init);
    mpb_iter *li = mpb_list_iter(c, l, 2), *si = mpb_set_iter(c, s, 2);
    ck_assert_int_eq(mpb_iter_next(li, &item), 1);
    ck_assert_int_eq(mpb_iter_next(si, &item), 1);
    ck_assert_int_eq(mpb_iter_next(si, &item), 1);
    stop_server(SIGTERM);
    start_server(false);
    ck_assert_int_eq(mpb_iter_next(li, &item), 1); /* still in the first chunk */
    ck_assert_int_eq(mpb_iter_next(si, &item), MPB_ERR_CUT);
    ck_assert_int_eq(mpb_iter_next(si, &item), MPB_ERR_REPLY); /* it was anonymous: gone */
    ck_assert_str_eq(c->errkind, "NoSuchObject");
    ck_assert_int_eq(mpb_iter_next(li, &item), MPB_ERR_CUT);
    ck_assert_int_eq(mpb_iter_next(li, &item), 0); /* "jobs" re-created empty */
    mpb_iter_free(li);
    mpb_iter_free(si);
    mpb_free(c);
}
END_TEST

START_TEST(a_walk_goes_on_across_compaction)
{
    /* No restart, but the log compacts into a snapshot (--compact-size 1) and the dict
     * compacts its table (the entries behind the cursor are deleted as it goes): the walk
     * is not cut and sees every entry once. */
    server = fork();
    ck_assert_int_ge(server, 0);
    if (server == 0) {
        const char *bin = getenv("MPB_SERVER");
        execl(bin, bin, "--socket", sock, "--data-dir", data, "--compact-size", "1", "--quiet",
              (char *)NULL);
        _exit(127);
    }
    mpb_context *c = mpb_connect(address);
    mpb_enable_reconnect(c, 1, 10000);
    mpb_ref d = numbered_dict(c, "work", 200);
    mpb_iter *it = mpb_dict_iter(c, d, 7);
    mpb_value *item;
    bool seen[200] = {false};
    int n = 0, rc;
    while ((rc = mpb_iter_next(it, &item)) == 1) {
        int64_t k = pair_key(item);
        ck_assert(k >= 0 && k < 200 && !seen[k]);
        seen[k] = true;
        n++;
        mpb_value key = mpb_int(k);
        ck_assert_int_eq(mpb_dict_delitem(c, d, &key), MPB_OK);
    }
    ck_assert_msg(rc == 0, "%d %s: %s", rc, c->errkind, c->errstr);
    ck_assert_int_eq(n, 200);
    mpb_iter_free(it);
    int64_t len = -1;
    ck_assert_int_eq(mpb_dict_len(c, d, &len), MPB_OK);
    ck_assert_int_eq(len, 0);
    DIR *dir = opendir(data);
    ck_assert_ptr_nonnull(dir);
    bool snapshot = false;
    for (struct dirent *e; (e = readdir(dir)) != NULL;)
        snapshot |= strcmp(e->d_name, "snapshot.mpb") == 0;
    closedir(dir);
    ck_assert_msg(snapshot, "the log never compacted");
    mpb_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("resilient");
    TCase *tc = tcase_create("resilient");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_forked_child_gets_its_own_connection);
    tcase_add_test(tc, fork_at_every_point_of_a_pipeline);
    tcase_add_test(tc, a_child_forked_while_threads_use_openssl_still_connects);
    tcase_add_test(tc, reconnect_gives_up_at_max_wait_not_a_backoff_step_later);
    tcase_add_test(tc, reconnect_finds_a_broker_within_one_backoff_step_of_its_start);
    tcase_add_test(tc, without_reconnect_calls_fail_fast_with_connection_error);
    tcase_add_test(tc, with_reconnect_a_client_keeps_working_across_a_restart);
    tcase_add_test(tc, a_call_lost_with_the_connection_never_takes_a_later_calls_reply);
    tcase_add_test(tc, reconnect_to_a_broker_that_lost_its_state_reopens_names);
    tcase_add_loop_test(tc, reconnect_never_sends_a_call_to_an_object_it_did_not_name, 0, 2);
    tcase_add_test(tc, two_restarts_that_lose_the_state_translate_the_oldest_reference);
    tcase_add_test(tc, a_new_object_with_an_old_objects_number_is_not_translated);
    tcase_add_test(tc, a_name_opened_again_as_another_type_is_reopened_as_that_type);
    tcase_add_test(tc, the_id_space_is_kept_with_the_state_and_new_without_it);
    tcase_add_test(tc, a_log_across_a_counter_roll_over_never_gives_an_id_twice);
    tcase_add_test(tc, a_walk_cut_by_a_restart_is_reported_and_starts_over);
    tcase_add_test(tc, a_walk_goes_on_across_compaction);
    suite_add_tcase(s, tc);
    return tb_run(s);
}
