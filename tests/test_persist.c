/* test_persist.c - --data-dir: what survives a broker killed with SIGKILL, a torn log
 * tail, a corrupted snapshot, and compaction under load.
 *
 * Every broker here is a real process on its own socket; the data directory lives
 * apart from it so that a restarted broker finds it.
 */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static char datadir[64];
static tb_broker B;
static mpb_context *C;

#define V(text) tb_lit(text)
#define R(r) mpb_refv(r)
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)

static void start(const char *fsync_policy, const char *compact)
{
    const char *args[] = {"--data-dir", datadir, "--fsync", fsync_policy, "--compact-size",
                          compact, NULL};
    tb_start(&B, 0, args);
    C = tb_connect(&B);
}

/* SIGKILL the broker: no chance to flush anything. */
static void crash(void)
{
    mpb_free(C);
    C = NULL;
    kill(B.pid, SIGKILL);
    waitpid(B.pid, NULL, 0);
    B.pid = -1;
    tb_stop(&B); /* only removes its socket directory */
}

static void stop(void)
{
    mpb_free(C);
    C = NULL;
    ck_assert_int_eq(tb_stop(&B), 0);
}

static void setup(void)
{
    snprintf(datadir, sizeof datadir, "/tmp/mpbdata.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(datadir));
}

static void teardown(void)
{
    if (C) stop();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", datadir);
    ck_assert_int_eq(system(cmd), 0);
}

static mpb_ref lookup(const char *name)
{
    mpb_ref r;
    ck_assert_msg(mpb_lookup(C, name, &r) == MPB_OK, "lookup %s: %s", name, C->errstr);
    return r;
}

/* Append 0, 1, 2, ... to the named list until the connection dies; returns how many
 * were acknowledged. Runs in a child, reporting through the pipe. */
static void append_until_dead(const char *address, const char *name, int fd)
{
    mpb_context *c = mpb_connect(address);
    mpb_ref l;
    long acked = 0;
    if (c && !c->err && mpb_open(c, "list", name, NULL, &l) == MPB_OK)
        for (;; acked++) {
            mpb_value v = mpb_int(acked);
            if (mpb_list_append(c, l, &v) != MPB_OK) break;
        }
    ck_assert_int_eq(write(fd, &acked, sizeof acked), sizeof acked);
    mpb_free(c);
    _exit(0);
}

/* Crash a broker in the middle of a write load from `writers` clients (each its own
 * list); every acknowledged write must be there after a restart, in order, and at
 * most the one in flight besides. */
static void crash_under_load(const char *policy, const char *compact, int writers)
{
    enum { MAXW = 8 };
    start(policy, compact);
    int p[MAXW][2];
    pid_t w[MAXW];
    char names[MAXW][16];
    for (int k = 0; k < writers; k++) {
        snprintf(names[k], sizeof names[k], "log%d", k);
        ck_assert_int_eq(pipe(p[k]), 0);
        if ((w[k] = fork()) == 0) append_until_dead(B.address, names[k], p[k][1]);
    }
    /* Kill it mid-load: once every writer has written and the first is well under way
     * (bounded wait). A writer that had not yet opened its list would find nothing to
     * check after the restart (on a loaded machine the crash came first). Each writer
     * has one call in flight, so a list of 201 means at least 200 acknowledged. */
    for (int i = 0; i < 1000; i++) {
        int64_t first = 0, n;
        int started = 0;
        for (int k = 0; k < writers; k++) {
            mpb_ref l;
            n = 0;
            if (mpb_lookup(C, names[k], &l) == MPB_OK) mpb_list_len(C, l, &n);
            started += n > 0;
            if (k == 0) first = n;
        }
        if (first > 200 && started == writers) break;
        usleep(10000);
    }
    crash();
    long acked[MAXW];
    for (int k = 0; k < writers; k++) {
        ck_assert_int_eq(read(p[k][0], &acked[k], sizeof acked[k]), sizeof acked[k]);
        waitpid(w[k], NULL, 0);
        close(p[k][0]);
        close(p[k][1]);
    }
    ck_assert_int_ge(acked[0], 200);
    start(policy, compact);
    for (int k = 0; k < writers; k++) {
        mpb_value all;
        ck_assert_int_eq(mpb_list_copy(C, lookup(names[k]), &all), MPB_OK);
        long n = (long)all.v.a->len;
        ck_assert_msg(n == acked[k] || n == acked[k] + 1, "%s: %ld items after restart, %ld acknowledged",
                      names[k], n, acked[k]);
        for (long i = 0; i < n; i++) ck_assert_int_eq(all.v.a->items[i].v.i, i);
        mpb_value_free(&all);
    }
}

START_TEST(sigkill_with_fsync_always_keeps_every_acknowledged_write)
{
    crash_under_load("always", "67108864", 1);
}
END_TEST

START_TEST(sigkill_with_group_commit_keeps_every_clients_acknowledged_writes)
{
    crash_under_load("always", "67108864", 6); /* one fsync serves many clients */
}
END_TEST

START_TEST(sigkill_during_compactions_keeps_every_acknowledged_write)
{
    /* A tiny compaction threshold: the load compacts over and over. */
    crash_under_load("everysec", "20000", 3);
}
END_TEST

START_TEST(named_objects_persist_and_unheld_anonymous_ones_go)
{
    start("always", "67108864");
    mpb_ref l, kept, gone, q, s, e, v, a, b;
    mpb_value init = V("[('Computers', 1), ('History', 5)]");
    ck_assert_int_eq(mpb_open(C, "list", "records", &init, &l), MPB_OK);
    mpb_value_free(&init);
    ck_assert_int_eq(mpb_create(C, "dict", NULL, &kept), MPB_OK);
    ck_assert_int_eq(mpb_create(C, "list", NULL, &gone), MPB_OK);
    EXPECT("None", "dict.setitem", R(kept), V("(1, 2)"), V("'tuple key'"));
    EXPECT("None", "list.append", R(l), R(kept)); /* contained: survives */
    ck_assert_int_eq(mpb_open(C, "joinablequeue", "jobs", NULL, &q), MPB_OK);
    for (int i = 0; i < 3; i++) EXPECT("None", "queue.put", R(q), mpb_int(i));
    EXPECT("0", "queue.get", R(q));
    ck_assert_int_eq(mpb_open(C, "semaphore", "sem", NULL, &s), MPB_OK);
    EXPECT("True", "semaphore.acquire", R(s)); /* held by a connection that dies */
    ck_assert_int_eq(mpb_open(C, "event", "ev", NULL, &e), MPB_OK);
    EXPECT("None", "event.set", R(e));
    init = V("('d', 2.5)");
    ck_assert_int_eq(mpb_open(C, "value", "pi", &init, &v), MPB_OK);
    mpb_value_free(&init);
    init = V("('i', 4)");
    ck_assert_int_eq(mpb_open(C, "array", "arr", &init, &a), MPB_OK);
    mpb_value_free(&init);
    EXPECT("None", "array.setitem", R(a), V("1"), V("-7"));
    init = mpb_int(2);
    ck_assert_int_eq(mpb_open(C, "barrier", "bar", &init, &b), MPB_OK);
    mpb_ref st;
    ck_assert_int_eq(mpb_open(C, "set", "tags", NULL, &st), MPB_OK);
    EXPECT("None", "set.add", R(st), V("'red'"));
    EXPECT("None", "set.add", R(st), V("(1, 2)"));
    EXPECT("None", "set.discard", R(st), V("'red'"));
    EXPECT("None", "set.add", R(st), V("'blue'"));
    EXPECT("None", "barrier.abort", R(b));
    crash();

    start("always", "67108864");
    ck_assert_uint_eq(lookup("records"), l); /* same ids: references stay valid */
    EXPECT("3", "list.len", R(l));
    EXPECT("['History', 5]", "list.getitem", R(l), V("1"));
    mpb_value ref;
    ck_assert_int_eq(mpb_list_getitem(C, l, 2, &ref), MPB_OK);
    ck_assert_int_eq(ref.type, MPB_REF);
    ck_assert_uint_eq(ref.v.ref, kept);
    EXPECT("{(1, 2): 'tuple key'}", "dict.copy", R(kept));
    TB_EXPECT_ERR(C, "NoSuchObject", "list.len", R(gone));
    EXPECT("2", "queue.qsize", R(q));
    EXPECT("1", "queue.get", R(q));
    EXPECT("None", "queue.task_done", R(q));
    EXPECT("False", "queue.join", R(q), V("0")); /* two puts still unfinished */
    EXPECT("1", "semaphore.value", R(s));       /* the dead holder's unit came back */
    EXPECT("True", "event.is_set", R(e));
    EXPECT("2.5", "value.get", R(v));
    EXPECT("[0, -7, 0, 0]", "array.tolist", R(a));
    EXPECT("True", "barrier.broken", R(b));
    EXPECT("[[1, 2], 'blue']", "set.copy", R(st));
    /* new objects never reuse an old id */
    mpb_ref fresh;
    ck_assert_int_eq(mpb_create(C, "list", NULL, &fresh), MPB_OK);
    ck_assert_uint_gt(fresh, b);
}
END_TEST

/* Path of the data directory's only log file. */
static void log_path(char *buf, size_t n)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "ls %s/log.*.mpb", datadir);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(fgets(buf, (int)n, p));
    buf[strcspn(buf, "\n")] = '\0';
    pclose(p);
}

/* Offset and length of the last record of a format-2 file (records are LEN u32 LE,
 * HCRC, BODY, BCRC). */
static void last_record(const char *path, long *at, long *size)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    unsigned char h[4];
    long off = 0;
    *at = -1;
    while (fseek(f, off, SEEK_SET) == 0 && fread(h, 1, 4, f) == 4) {
        long len = (long)(h[0] | h[1] << 8 | h[2] << 16 | (unsigned long)h[3] << 24);
        *at = off;
        *size = len + 12;
        off += len + 12;
    }
    fclose(f);
    ck_assert_int_ge(*at, 0);
}

START_TEST(a_torn_log_tail_is_truncated_with_a_warning)
{
    start("always", "67108864");
    mpb_ref l;
    ck_assert_int_eq(mpb_open(C, "list", "l", NULL, &l), MPB_OK);
    for (int i = 0; i < 10; i++) EXPECT("None", "list.append", R(l), mpb_int(i));
    crash();
    char path[256];
    log_path(path, sizeof path);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    /* A write cut short: the first half of a record (a copy of the last one). */
    long at, size;
    last_record(path, &at, &size);
    char rec[256];
    int fd = open(path, O_RDWR | O_APPEND);
    ck_assert_int_eq(pread(fd, rec, (size_t)size, at), size);
    ck_assert_int_eq(write(fd, rec, (size_t)size / 2), size / 2);
    close(fd);
    start("always", "67108864");
    EXPECT("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "list.copy", R(l));
    struct stat after;
    ck_assert_int_eq(stat(path, &after), 0);
    ck_assert_int_eq(after.st_size, st.st_size); /* the torn record is gone */
    EXPECT("None", "list.append", R(l), mpb_int(10)); /* and the log goes on */
    crash();
    start("always", "67108864");
    EXPECT("11", "list.len", R(l));
}
END_TEST

START_TEST(a_corrupted_snapshot_refuses_to_start)
{
    start("always", "100"); /* compacts at once */
    mpb_ref l;
    ck_assert_int_eq(mpb_open(C, "list", "l", NULL, &l), MPB_OK);
    for (int i = 0; i < 50; i++) EXPECT("None", "list.append", R(l), V("'some data to snapshot'"));
    stop();
    char path[128], cmd[400];
    snprintf(path, sizeof path, "%s/snapshot.mpb", datadir);
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "X", 1, 60), 1); /* one byte inside a string */
    close(fd);
    const char *server = getenv("MPB_SERVER");
    snprintf(cmd, sizeof cmd, "%s --socket %s/s.sock --data-dir %s 2>&1", server, datadir, datadir);
    FILE *p = popen(cmd, "r");
    char out[512] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d: %s", status, out);
    ck_assert_msg(strstr(out, "snapshot.mpb") && strstr(out, "refusing to start"), "%s", out);
}
END_TEST

/* A named object's reference, opened on C with INITIAL as a Python literal (or none). */
static mpb_ref open_named(const char *type, const char *name, const char *initial)
{
    mpb_ref r;
    mpb_value init = initial ? V(initial) : mpb_nil();
    int rc = mpb_open(C, type, name, initial ? &init : NULL, &r);
    ck_assert_msg(rc == MPB_OK, "open %s %s: %s", type, name, C->errstr);
    mpb_value_free(&init);
    return r;
}

/* Read one reply from a raw connection and assert its result's repr. */
static void raw_expect(int fd, const char *want, int timeout_ms)
{
    mpb_value msg;
    ck_assert_msg(tb_read_msg(fd, &msg, timeout_ms) == 0, "no reply within %d ms (want %s)",
                  timeout_ms, want);
    ck_assert_int_eq(msg.type, MPB_ARRAY);
    ck_assert_int_eq(msg.v.a->len, 4);
    char *got = tb_repr(&msg.v.a->items[3]);
    char *err = tb_repr(&msg.v.a->items[2]);
    ck_assert_msg(strcmp(got, want) == 0, "reply %s (error %s), want %s", got, err, want);
    free(got);
    free(err);
    mpb_value_free(&msg);
}

/* Wait (bounded) until n connections have a parked request (manager.clients). */
static void wait_parked(int n)
{
    int parked = -1;
    for (int i = 0; i < 1000 && parked != n; i++) {
        mpb_value all;
        ck_assert_int_eq(mpb_call(C, "manager.clients", NULL, 0, &all), MPB_OK);
        parked = 0;
        for (size_t k = 0; k < all.v.a->len; k++) {
            mpb_value key = mpb_str_borrowed("parked", 6);
            mpb_value *v = mpb_map_get(all.v.a->items[k].v.m, &key);
            parked += v && v->v.i == 1;
        }
        mpb_value_free(&all);
        if (parked != n) usleep(5000);
    }
    ck_assert_int_eq(parked, n);
}

START_TEST(a_get_served_by_a_put_is_not_undone_by_a_restart)
{
    /* Bug 4: the parked get's effect was logged before the put that caused it. */
    start("always", "67108864");
    mpb_ref q = open_named("queue", "jobs", NULL);
    int getter = tb_raw_connect(&B);
    tb_send_call(getter, 1, "queue.get", TB_ARGS(R(q)));
    wait_parked(1);
    EXPECT("None", "queue.put", R(q), V("'job-1'"));
    raw_expect(getter, "'job-1'", 5000);
    close(getter);
    EXPECT("0", "queue.qsize", R(q));
    crash();
    start("always", "67108864");
    EXPECT("0", "queue.qsize", R(q)); /* was 1: the delivered job came back */
}
END_TEST

/* Issue 16: a pipe comes back empty, open and unbound, its kind kept; a channel keeps
 * its poison and nothing else. Once from the log, once from a snapshot. */
START_TEST(pipes_and_channels_come_back_empty_keeping_kind_and_poison)
{
    const char *compact[2] = {"67108864", "1"};
    for (int round = 0; round < 2; round++) {
        start("always", compact[round]);
        mpb_ref p = open_named("pipe", "p", "{'duplex': False}");
        mpb_ref c = open_named("channel", "c", NULL), c2 = open_named("channel", "c2", NULL);
        EXPECT("None", "pipe.send", R(p), V("1"), V("'lost'"));
        EXPECT("None", "pipe.close", R(p), V("0"));
        EXPECT("None", "channel.poison", R(c));
        EXPECT("None", "channel.join", R(c2), V("'writer'"));
        crash();
        start("always", compact[round]);
        EXPECT("{'duplex': False, 'closed': [False, False], 'pending': [0, 0], 'bound': [0, 0], "
               "'waiting': [0, 0]}", "pipe.info", R(p));
        EXPECT("{'poisoned': True, 'retired': False, 'readers': 0, 'writers': 0, "
               "'waiting_readers': 0, 'waiting_writers': 0, 'rendezvous': 0}", "channel.info", R(c));
        EXPECT("{'poisoned': False, 'retired': False, 'readers': 0, 'writers': 0, "
               "'waiting_readers': 0, 'waiting_writers': 0, 'rendezvous': 0}", "channel.info", R(c2));
        EXPECT("None", "manager.delete", V("'p'"));
        EXPECT("None", "manager.delete", V("'c'"));
        EXPECT("None", "manager.delete", V("'c2'"));
        stop();
    }
}
END_TEST

START_TEST(a_put_admitted_by_a_get_survives_a_restart)
{
    /* Bug 4: the admitted put was logged before the get that made room for it. */
    start("always", "67108864");
    mpb_ref q = open_named("queue", "bounded", "1");
    EXPECT("None", "queue.put", R(q), V("'a'"));
    int putter = tb_raw_connect(&B);
    mpb_value b = V("'b'");
    tb_send_call(putter, 1, "queue.put", TB_ARGS(R(q), b));
    mpb_value_free(&b);
    wait_parked(1); /* the queue is full */
    EXPECT("'a'", "queue.get", R(q));
    raw_expect(putter, "None", 5000);
    close(putter);
    EXPECT("1", "queue.qsize", R(q));
    crash();
    start("always", "67108864");
    EXPECT("1", "queue.qsize", R(q)); /* was 0: 'b' was lost */
    EXPECT("'b'", "queue.get_nowait", R(q));
}
END_TEST

START_TEST(a_semaphore_handoff_survives_a_restart)
{
    /* Bug 4: the hand-off was logged before the release that made it. */
    start("always", "67108864");
    mpb_ref s = open_named("semaphore", "sem", "1");
    EXPECT("True", "semaphore.acquire", R(s));
    int waiter = tb_raw_connect(&B);
    tb_send_call(waiter, 1, "semaphore.acquire", TB_ARGS(R(s)));
    wait_parked(1);
    EXPECT("None", "semaphore.release", R(s));
    raw_expect(waiter, "True", 5000);
    EXPECT("0", "semaphore.value", R(s));
    close(waiter); /* its unit: nobody waits, so an orphan (held by nobody) */
    usleep(100000);
    EXPECT("0", "semaphore.value", R(s));
    crash();
    start("always", "67108864");
    EXPECT("1", "semaphore.value", R(s)); /* a restart returns held units; was 2 */
}
END_TEST

/* A dead holder's unit released by another connection (CPython's
 * test_bounded_semaphore), or taken by one: the log replays to the same state, and a
 * BoundedSemaphore's replay never goes past its bound (which would refuse the start). */
START_TEST(orphaned_semaphore_units_replay_as_they_happened)
{
    start("always", "67108864");
    mpb_ref b = open_named("boundedsemaphore", "b", "1");
    mpb_ref s = open_named("semaphore", "s", "1");
    for (int round = 0; round < 2; round++) {
        int holder = tb_raw_connect(&B);
        tb_send_call(holder, 1, "semaphore.acquire", TB_ARGS(R(b)));
        raw_expect(holder, "True", 5000);
        tb_send_call(holder, 2, "semaphore.acquire", TB_ARGS(R(s)));
        raw_expect(holder, "True", 5000);
        close(holder);
        usleep(100000);
        EXPECT("0", "semaphore.value", R(b));
        if (round == 0) {
            EXPECT("None", "semaphore.release", R(b)); /* the orphan, by another */
            EXPECT("1", "semaphore.value", R(b));
        }
    }
    /* Round 1 left b's unit orphaned, and s has two: take one, release nothing. */
    EXPECT("True", "semaphore.acquire", R(s), V("False"));
    EXPECT("0", "semaphore.value", R(s));
    crash();
    start("always", "67108864");
    EXPECT("1", "semaphore.value", R(b)); /* the restart returned the orphan */
    EXPECT("1", "semaphore.value", R(s)); /* and every held unit */
    EXPECT("None", "semaphore.release", R(s));
    TB_EXPECT_ERR(C, "ValueError", "semaphore.release", R(b));
}
END_TEST

/* Found by the model test: a restart returns held units, and the log must say so, or
 * the next restart replays the later records against units the replay still holds
 * (here the second restart gave 1: the release after the first read as the return of
 * the unit acquired before it). */
START_TEST(units_a_restart_returned_stay_returned_after_the_next_one)
{
    start("always", "67108864");
    mpb_ref s = open_named("semaphore", "s", "1");
    EXPECT("True", "semaphore.acquire", R(s));
    stop();
    start("always", "67108864");
    EXPECT("1", "semaphore.value", R(s)); /* the unit came back */
    EXPECT("None", "semaphore.release", R(s));
    EXPECT("2", "semaphore.value", R(s)); /* a Semaphore has no bound */
    crash();
    start("always", "67108864");
    EXPECT("2", "semaphore.value", R(s));
    EXPECT("True", "semaphore.acquire", R(s));
    stop();
    start("everysec", "67108864");
    EXPECT("2", "semaphore.value", R(s));
}
END_TEST

START_TEST(group_commit_survives_a_release_logged_while_a_connection_is_freed)
{
    /* Bug 3: c1 holds a unit; while the loop is busy, c2 sends a write, then c1 sends
     * one and closes. The release logged as c1 is freed kept c2 re-queued in the group
     * commit for ever: 100% CPU, SIGTERM ignored. */
    start("always", "67108864");
    mpb_ref s = open_named("semaphore", "sem", "1");
    mpb_ref l = open_named("list", "l", NULL);
    mpb_ref big = open_named("list", "big", NULL);
    mpb_value items = mpb_array_value(1 << 20);
    for (int i = 0; i < 1 << 20; i++) {
        mpb_value v = mpb_int(i & 63);
        ck_assert_int_eq(mpb_value_push(&items, &v), 0);
    }
    EXPECT("None", "list.extend", R(big), items);
    int c1 = tb_raw_connect(&B), c2 = tb_raw_connect(&B), busy = tb_raw_connect(&B);
    tb_send_call(c1, 1, "semaphore.acquire", TB_ARGS(R(s)));
    raw_expect(c1, "True", 5000);
    /* Keep the loop busy: list.count scans the whole list. */
    enum { SCANS = 40 };
    mpb_value absent = V("'absent'");
    for (int i = 0; i < SCANS; i++) tb_send_call(busy, (uint64_t)i, "list.count", TB_ARGS(R(big), absent));
    mpb_value_free(&absent);
    usleep(20000);
    tb_send_call(c2, 1, "list.append", TB_ARGS(R(l), mpb_int(2)));
    usleep(2000);
    tb_send_call(c1, 2, "list.append", TB_ARGS(R(l), mpb_int(1)));
    close(c1);
    for (int i = 0; i < SCANS; i++) raw_expect(busy, "0", 60000);
    raw_expect(c2, "None", 10000); /* never came */
    close(c2);
    close(busy);
    EXPECT("0", "semaphore.value", R(s)); /* c1's unit: an orphan, which anyone takes */
    EXPECT("True", "semaphore.acquire", R(s), V("False"));
    stop(); /* exits 0 on SIGTERM */
}
END_TEST

START_TEST(bad_fsync_policy_is_refused)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "%s --socket %s/s.sock --data-dir %s --fsync sometimes 2>/dev/null",
             getenv("MPB_SERVER"), datadir, datadir);
    int status = system(cmd);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2);
}
END_TEST

static Suite *persist_suite(void)
{
    Suite *s = suite_create("persist");
    TCase *tc = tcase_create("persist");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, sigkill_with_fsync_always_keeps_every_acknowledged_write);
    tcase_add_test(tc, sigkill_with_group_commit_keeps_every_clients_acknowledged_writes);
    tcase_add_test(tc, sigkill_during_compactions_keeps_every_acknowledged_write);
    tcase_add_test(tc, named_objects_persist_and_unheld_anonymous_ones_go);
    tcase_add_test(tc, a_torn_log_tail_is_truncated_with_a_warning);
    tcase_add_test(tc, a_corrupted_snapshot_refuses_to_start);
    tcase_add_test(tc, bad_fsync_policy_is_refused);
    tcase_add_test(tc, a_get_served_by_a_put_is_not_undone_by_a_restart);
    tcase_add_test(tc, a_put_admitted_by_a_get_survives_a_restart);
    tcase_add_test(tc, pipes_and_channels_come_back_empty_keeping_kind_and_poison);
    tcase_add_test(tc, a_semaphore_handoff_survives_a_restart);
    tcase_add_test(tc, orphaned_semaphore_units_replay_as_they_happened);
    tcase_add_test(tc, group_commit_survives_a_release_logged_while_a_connection_is_freed);
    tcase_add_test(tc, units_a_restart_returned_stay_returned_after_the_next_one);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tb_run(persist_suite());
}
