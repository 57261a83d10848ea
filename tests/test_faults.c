/* test_faults.c - a real broker under hostile and broken clients.
 *
 * Clients SIGKILLed mid-request under load, requests written a byte at a time,
 * half-closed sockets, a thousand connections at once, a client trickling one byte a
 * second, a client that never reads. After each: the broker answers, nothing stored is
 * lost or corrupted, and no hold, lock or semaphore unit of a dead client survives
 * (checked through manager.objects, manager.clients and the objects themselves).
 *
 * Every loop is bounded in count and time; nothing asserts speed. Each test prints one
 * line of figures (faults injected, connections held) for the record.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpb_codec.h"
#include "testutil.h"

static tb_broker B;

static void setup(void)
{
    static const char *const args[] = {"--quiet", NULL};
    tb_start(&B, 0, args);
}
static void teardown(void) { ck_assert_int_eq(tb_stop(&B), 0); }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* A child that dies with the test (or its Check fork) instead of lingering. */
static void die_with_parent(void)
{
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
}

static mpb_value map_get(const mpb_value *m, const char *key)
{
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    mpb_value *v = mpb_map_get(m->v.m, &k);
    ck_assert_msg(v != NULL, "no key %s", key);
    return *v;
}

/* Connections the broker serves now. */
static int64_t connections(mpb_context *c)
{
    mpb_value st;
    ck_assert_int_eq(mpb_call(c, "manager.stats", NULL, 0, &st), MPB_OK);
    int64_t n = map_get(&st, "connections").v.i;
    mpb_value_free(&st);
    return n;
}

/* Wait (bounded) until the broker serves exactly n connections. */
static void await_connections(mpb_context *c, int64_t n)
{
    for (int i = 0; i < 1000 && connections(c) != n; i++) sleep_ms(10);
    ck_assert_int_eq(connections(c), n);
}

/* The invariants after any fault, seen from c (which holds nothing): no object is held
 * by anyone, no connection is parked, every lock given is free or was left by a dead
 * owner with nobody waiting (docs/PROTOCOL.md, robust-mutex semantics): either way c
 * takes it at once, without waiting. */
static void assert_nothing_leaked(mpb_context *c, const mpb_ref *locks, int nlocks)
{
    mpb_value objs, cl;
    ck_assert_int_eq(mpb_call(c, "manager.objects", NULL, 0, &objs), MPB_OK);
    for (size_t i = 0; i < objs.v.a->len; i++) {
        mpb_value *o = &objs.v.a->items[i];
        ck_assert_msg(map_get(o, "holds").v.i == 0 && map_get(o, "holders").v.i == 0,
                      "object %llu still held", (unsigned long long)map_get(o, "ref").v.ref);
    }
    mpb_value_free(&objs);
    ck_assert_int_eq(mpb_call(c, "manager.clients", NULL, 0, &cl), MPB_OK);
    for (size_t i = 0; i < cl.v.a->len; i++)
        ck_assert_int_eq(map_get(&cl.v.a->items[i], "parked").v.i, 0);
    mpb_value_free(&cl);
    for (int i = 0; i < nlocks; i++) {
        TB_EXPECT(c, "True", "lock.acquire", mpb_refv(locks[i]), mpb_bool(false));
        TB_EXPECT(c, "None", "lock.release", mpb_refv(locks[i]));
    }
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
}

static void send_call(int fd, uint64_t msgid, const char *method, const mpb_value *params,
                      size_t n, msgpack_sbuffer *into)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, into ? into : &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint64(&pk, msgid);
    msgpack_pack_str_with_body(&pk, method, strlen(method));
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) mpb_value_pack(&pk, &params[i]);
    if (!into) ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* Read the response to msgid; return its result (caller frees); fail on an error. */
static mpb_value read_result(int fd, uint64_t msgid)
{
    mpb_value m;
    ck_assert_msg(tb_read_msg(fd, &m, 10000) == 0, "no response to %llu",
                  (unsigned long long)msgid);
    ck_assert_uint_eq(m.v.a->len, 4);
    ck_assert_int_eq(m.v.a->items[1].v.i, (int64_t)msgid);
    ck_assert_msg(m.v.a->items[2].type == MPB_NIL, "error reply to %llu",
                  (unsigned long long)msgid);
    mpb_value r = m.v.a->items[3];
    m.v.a->items[3] = mpb_nil();
    mpb_value_free(&m);
    return r;
}

/*--- SIGKILL under load ---*/

#define WORKERS 6
#define MAX_SPAWNS 512
#define PIPELINE 16

/* What each worker had acknowledged when it died, in memory shared with the test. */
typedef struct acked {
    uint64_t incr, append, guarded;
} acked;

/* A worker: pipelined incrs, appends, increments under the lock, semaphore units;
 * counts each acknowledged effect. Runs until killed. */
static void worker(int id, acked *a)
{
    die_with_parent();
    mpb_context *c = mpb_connect(B.address);
    mpb_ref ns, log, lk, d, sem;
    if (!c || c->err || mpb_open(c, "namespace", "ctr", NULL, &ns) || mpb_open(c, "list", "log", NULL, &log) ||
        mpb_open(c, "lock", "L", NULL, &lk) || mpb_open(c, "dict", "guarded", NULL, &d) ||
        mpb_open(c, "semaphore", "S", NULL, &sem))
        _exit(3);
    mpb_value key = mpb_str("n");
    for (int64_t seq = 0;; seq++) {
        mpb_value args[2] = {mpb_refv(ns), mpb_str_borrowed("x", 1)};
        for (int i = 0; i < PIPELINE; i++) mpb_append_call(c, "namespace.incr", args, 2);
        for (int i = 0; i < PIPELINE; i++)
            if (mpb_get_reply(c, NULL) == MPB_OK) a->incr++;
        mpb_value item = mpb_array_value(2);
        mpb_value w = mpb_int(id), s = mpb_int(seq);
        mpb_value_push(&item, &w);
        mpb_value_push(&item, &s);
        if (mpb_list_append(c, log, &item) == MPB_OK) a->append++;
        mpb_value_free(&item);
        int got = 0;
        if (mpb_lock_acquire(c, lk, 5, &got) == MPB_OK && got) {
            if (mpb_dict_incr(c, d, &key, 1, NULL) == MPB_OK) a->guarded++;
            mpb_lock_release(c, lk);
        }
        if (mpb_sem_acquire(c, sem, 5, &got) == MPB_OK && got) mpb_sem_release(c, sem);
    }
}

static pid_t spawn(int id, acked *a)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) worker(id, &a[id]);
    return pid;
}

START_TEST(sigkill_mid_request_under_load_loses_and_leaks_nothing)
{
    acked *a = mmap(NULL, MAX_SPAWNS * sizeof *a, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(a, MAP_FAILED);
    memset(a, 0, MAX_SPAWNS * sizeof *a);
    mpb_context *c = tb_connect(&B);
    mpb_ref ns, log, lk, d, sem;
    /* Create them here (the checker then drops its holds: names keep them). */
    mpb_value two = mpb_int(2);
    ck_assert_int_eq(mpb_open(c, "namespace", "ctr", NULL, &ns), MPB_OK);
    ck_assert_int_eq(mpb_open(c, "list", "log", NULL, &log), MPB_OK);
    ck_assert_int_eq(mpb_open(c, "lock", "L", NULL, &lk), MPB_OK);
    ck_assert_int_eq(mpb_open(c, "dict", "guarded", NULL, &d), MPB_OK);
    ck_assert_int_eq(mpb_open(c, "semaphore", "S", &two, &sem), MPB_OK);
    mpb_ref all[] = {ns, log, lk, d, sem};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(mpb_release(c, all[i]), MPB_OK);

    pid_t pids[WORKERS];
    int spawned = 0, kills = 0;
    for (int i = 0; i < WORKERS; i++) pids[i] = spawn(spawned++, a);
    srand(12345);
    double end = now() + 4.0;
    while (now() < end && spawned < MAX_SPAWNS) {
        sleep_ms(10 + rand() % 60);
        int v = rand() % WORKERS;
        kill(pids[v], SIGKILL);
        int st;
        ck_assert_int_eq(waitpid(pids[v], &st, 0), pids[v]);
        ck_assert_msg(WIFSIGNALED(st), "worker exited early (%d)", WEXITSTATUS(st));
        kills++;
        pids[v] = spawn(spawned++, a);
    }
    for (int i = 0; i < WORKERS; i++) { /* the last ones die the same way */
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
        kills++;
    }
    await_connections(c, 1);

    uint64_t incr = 0, append = 0, guarded = 0;
    for (int i = 0; i < spawned; i++) {
        incr += a[i].incr;
        append += a[i].append;
        guarded += a[i].guarded;
    }
    /* Every acknowledged effect is there; at most the requests in flight when each
     * worker died were applied without an acknowledgement. */
    mpb_value args[2] = {mpb_refv(ns), mpb_str("x")};
    mpb_value x;
    int rc = mpb_call(c, "namespace.getattr", args, 2, &x);
    mpb_value_free(&args[1]);
    ck_assert_int_eq(rc, MPB_OK);
    ck_assert_msg(x.v.i >= (int64_t)incr && x.v.i <= (int64_t)(incr + (uint64_t)kills * PIPELINE),
                  "x = %lld, acknowledged %llu", (long long)x.v.i, (unsigned long long)incr);
    mpb_value key = mpb_str("n"), n;
    ck_assert_int_eq(mpb_dict_get(c, d, &key, NULL, &n), MPB_OK);
    int64_t nv = n.type == MPB_INT ? n.v.i : 0;
    ck_assert_msg(nv >= (int64_t)guarded && nv <= (int64_t)(guarded + (uint64_t)kills),
                  "guarded = %lld, acknowledged %llu", (long long)nv, (unsigned long long)guarded);
    mpb_value_free(&key);
    /* The log: every item intact, each worker's sequence numbers strictly rising. */
    mpb_value items;
    ck_assert_int_eq(mpb_list_copy(c, log, &items), MPB_OK);
    ck_assert_msg(items.v.a->len >= append && items.v.a->len <= append + (uint64_t)kills,
                  "log has %zu, acknowledged %llu", items.v.a->len, (unsigned long long)append);
    int64_t *last = malloc(MAX_SPAWNS * sizeof *last);
    for (int i = 0; i < MAX_SPAWNS; i++) last[i] = -1;
    for (size_t i = 0; i < items.v.a->len; i++) {
        mpb_value *it = &items.v.a->items[i];
        ck_assert_int_eq(it->type, MPB_ARRAY);
        ck_assert_uint_eq(it->v.a->len, 2);
        int64_t w = it->v.a->items[0].v.i, s = it->v.a->items[1].v.i;
        ck_assert(w >= 0 && w < spawned);
        ck_assert_int_gt(s, last[w]);
        last[w] = s;
    }
    free(last);
    mpb_value_free(&items);
    /* Every unit came back, or is an orphan of a killed client that anyone takes at
     * once (docs/PROTOCOL.md, robust-mutex semantics): nothing waits for the dead. */
    TB_EXPECT(c, "True", "semaphore.acquire", mpb_refv(sem), mpb_bool(false));
    TB_EXPECT(c, "True", "semaphore.acquire", mpb_refv(sem), mpb_bool(false));
    TB_EXPECT(c, "None", "semaphore.release", mpb_refv(sem), mpb_int(2));
    TB_EXPECT(c, "2", "semaphore.value", mpb_refv(sem));
    assert_nothing_leaked(c, &lk, 1);
    printf("faults: %d clients SIGKILLed mid-request (%d spawned); acknowledged %llu incr, "
           "%llu appends, %llu locked increments: all present\n", kills, spawned,
           (unsigned long long)incr, (unsigned long long)append, (unsigned long long)guarded);
    mpb_free(c);
    munmap(a, MAX_SPAWNS * sizeof *a);
}
END_TEST

/*--- Partial writes, half-closed sockets ---*/

START_TEST(requests_written_a_byte_at_a_time_and_in_odd_pieces)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l;
    ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
    int fd = tb_raw_connect(&B);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    char text[3000];
    memset(text, 'p', sizeof text);
    mpb_value p[2] = {mpb_refv(l), mpb_str_borrowed(text, sizeof text)};
    for (int i = 0; i < 5; i++) send_call(fd, (uint64_t)i, "list.append", p, 2, &sb);
    send_call(fd, 5, "list.len", p, 1, &sb);
    /* The first request one byte per write (1 ms apart), the rest in pieces of 1 to 700
     * bytes; the other connection is served all along. */
    size_t off = 0, first = sb.size / 6, pieces = 0;
    srand(7);
    while (off < sb.size) {
        size_t k = off < first ? 1 : 1 + (size_t)(rand() % 700);
        if (k > sb.size - off) k = sb.size - off;
        ck_assert_int_eq(tb_write_all(fd, sb.data + off, k), 0);
        off += k;
        pieces++;
        if (off < first) sleep_ms(1);
        if (pieces % 64 == 0) ck_assert_int_eq(mpb_ping(c), MPB_OK);
    }
    for (int i = 0; i < 5; i++) {
        mpb_value r = read_result(fd, (uint64_t)i);
        mpb_value_free(&r);
    }
    mpb_value n = read_result(fd, 5);
    ck_assert_int_eq(n.v.i, 5);
    printf("faults: %zu bytes written in %zu pieces (the first request a byte at a time)\n",
           sb.size, pieces);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    mpb_free(c);
}
END_TEST

START_TEST(half_closed_socket_still_gets_every_reply)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l;
    ck_assert_int_eq(mpb_open(c, "list", "half", NULL, &l), MPB_OK);
    int fd = tb_raw_connect(&B);
    mpb_value p[2] = {mpb_refv(l), mpb_int(1)};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (int i = 0; i < 200; i++) send_call(fd, (uint64_t)i, "list.append", p, 2, &sb);
    send_call(fd, 200, "list.len", p, 1, &sb);
    ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    for (int i = 0; i < 200; i++) read_result(fd, (uint64_t)i);
    mpb_value n = read_result(fd, 200);
    ck_assert_int_eq(n.v.i, 200);
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1); /* then the broker closes its side */
    close(fd);
    /* Half a request, then the write side shut: nothing happens, nothing leaks. */
    fd = tb_raw_connect(&B);
    tb_write_all(fd, "\x94\x00\x01\xabmanager.cr", 15);
    shutdown(fd, SHUT_WR);
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    ck_assert_int_eq(mpb_release(c, l), MPB_OK);
    await_connections(c, 1);
    assert_nothing_leaked(c, NULL, 0);
    mpb_free(c);
}
END_TEST

/* A connection parked on a call that never ends (queue.get, no timeout) and no longer
 * read by the broker (half-closed, or its input held back behind the park) hears of
 * no close from a read event: the broker still notices that its peer is gone, drops
 * the park (nothing is handed to nobody) and closes it. */
START_TEST(a_peer_gone_while_parked_for_ever_is_closed)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref q;
    ck_assert_int_eq(mpb_open(c, "queue", "forever", NULL, &q), MPB_OK);
    for (int held_back = 0; held_back < 2; held_back++) {
        int fd = tb_raw_connect(&B);
        mpb_value p[1] = {mpb_refv(q)};
        send_call(fd, 1, "queue.get", p, 1, NULL);
        if (!held_back) {
            ck_assert_int_eq(shutdown(fd, SHUT_WR), 0); /* EOF read: no more read events */
        } else { /* requests behind the park, until the broker stops reading (IN_HIGH) */
            msgpack_sbuffer sb;
            msgpack_sbuffer_init(&sb);
            for (int i = 0; i < 2000; i++) send_call(fd, 2 + (uint64_t)i, "manager.ping", NULL, 0, &sb);
            ck_assert_int_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
            size_t total = 0;
            for (int stuck = 0; stuck < 50 && total < (64u << 20);) {
                ssize_t n = write(fd, sb.data, sb.size);
                if (n > 0) total += (size_t)n, stuck = 0;
                else stuck++, sleep_ms(10);
            }
            msgpack_sbuffer_destroy(&sb);
            ck_assert_uint_lt(total, 64u << 20); /* it did stop reading */
        }
        sleep_ms(200);
        ck_assert_int_eq(connections(c), 2);
        close(fd);
        await_connections(c, 1);
    }
    mpb_value item = mpb_int(7);
    ck_assert_int_eq(mpb_queue_put(c, q, &item, -1), MPB_OK);
    int64_t n;
    ck_assert_int_eq(mpb_queue_qsize(c, q, &n), MPB_OK);
    ck_assert_int_eq(n, 1); /* no dead getter took it */
    mpb_free(c);
}
END_TEST

/*--- A thousand connections ---*/

#define PROCS 4
#define PER_PROC 250

/* Hold PER_PROC connections, each doing work; report through `up`, wait for `go`. */
static void holder(int up, int go)
{
    die_with_parent();
    mpb_context *cs[PER_PROC];
    mpb_ref ns = 0, lk = 0;
    for (int i = 0; i < PER_PROC; i++) {
        cs[i] = mpb_connect(B.address);
        if (!cs[i] || cs[i]->err) _exit(3);
        if (mpb_open(cs[i], "namespace", "many", NULL, &ns) != MPB_OK ||
            mpb_open(cs[i], "lock", "many-lock", NULL, &lk) != MPB_OK ||
            mpb_ns_incr(cs[i], ns, "conns", 1, NULL) != MPB_OK)
            _exit(4);
    }
    char b = 'u';
    if (write(up, &b, 1) != 1 || read(go, &b, 1) != 1) _exit(5);
    /* Round two, all connections still open: every one queues on the same lock and
     * adds under it. */
    mpb_value args[2] = {mpb_refv(lk), mpb_bool(true)};
    for (int i = 0; i < PER_PROC; i++) mpb_append_call(cs[i], "lock.acquire", args, 2);
    for (int i = 0; i < PER_PROC; i++) {
        mpb_value got;
        if (mpb_get_reply(cs[i], &got) != MPB_OK || got.type != MPB_BOOL || !got.v.b) _exit(6);
        if (mpb_ns_incr(cs[i], ns, "locked", 1, NULL) != MPB_OK ||
            mpb_lock_release(cs[i], lk) != MPB_OK)
            _exit(7);
    }
    for (int i = 0; i < PER_PROC; i++) mpb_free(cs[i]);
    _exit(0);
}

START_TEST(a_thousand_concurrent_connections_each_doing_work)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < PER_PROC + 64 && rl.rlim_max >= PER_PROC + 64) {
        rl.rlim_cur = PER_PROC + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    mpb_context *c = tb_connect(&B);
    int up[2], go[2];
    ck_assert_int_eq(pipe(up), 0);
    ck_assert_int_eq(pipe(go), 0);
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) holder(up[1], go[0]);
    }
    for (int i = 0; i < PROCS; i++) {
        char b;
        ck_assert_int_eq(read(up[0], &b, 1), 1);
    }
    int64_t held = connections(c);
    ck_assert_int_ge(held, PROCS * PER_PROC + 1);
    /* Listed page by page: past a page (1000) the one-reply form is TooLarge. */
    size_t listed = 0;
    int64_t cursor = 0;
    do {
        mpb_value cl, args[2] = {mpb_int(cursor), mpb_int(1000)};
        ck_assert_int_eq(mpb_call(c, "manager.clients", args, 2, &cl), MPB_OK);
        listed += cl.v.a->items[0].v.a->len;
        cursor = cl.v.a->items[1].type == MPB_INT ? cl.v.a->items[1].v.i : -1;
        mpb_value_free(&cl);
    } while (cursor >= 0);
    ck_assert_uint_ge(listed, PROCS * PER_PROC + 1);
    char g[PROCS] = {0};
    ck_assert_int_eq(write(go[1], g, PROCS), PROCS);
    for (int i = 0; i < PROCS; i++) {
        int st;
        ck_assert_int_eq(waitpid(pids[i], &st, 0), pids[i]);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "holder %d failed (%d)", i,
                      WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
    }
    close(up[0]);
    close(up[1]);
    close(go[0]);
    close(go[1]);
    mpb_ref ns, lk;
    ck_assert_int_eq(mpb_lookup(c, "many", &ns), MPB_OK);
    ck_assert_int_eq(mpb_lookup(c, "many-lock", &lk), MPB_OK);
    TB_EXPECT(c, "1000", "namespace.getattr", mpb_refv(ns), mpb_str("conns"));
    TB_EXPECT(c, "1000", "namespace.getattr", mpb_refv(ns), mpb_str("locked"));
    await_connections(c, 1);
    assert_nothing_leaked(c, &lk, 1);
    printf("faults: %lld connections held at once (%d processes), each did 2 rounds of work "
           "with all of them queued on one lock\n", (long long)held, PROCS);
    mpb_free(c);
}
END_TEST

/*--- Slowloris ---*/

#define SLOW_CLIENTS 20
#define SLOW_SECONDS 4

START_TEST(one_byte_a_second_does_not_hold_up_anyone)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref ns;
    ck_assert_int_eq(mpb_open(c, "namespace", "fast", NULL, &ns), MPB_OK);
    int fds[SLOW_CLIENTS];
    msgpack_sbuffer req;
    msgpack_sbuffer_init(&req);
    mpb_value p[2] = {mpb_refv(ns), mpb_str_borrowed("slow", 4)};
    send_call(-1, 42, "namespace.incr", p, 2, &req);
    for (int i = 0; i < SLOW_CLIENTS; i++) fds[i] = tb_raw_connect(&B);
    pid_t fast = fork(); /* full speed alongside, on its own connection */
    ck_assert_int_ge(fast, 0);
    if (fast == 0) {
        die_with_parent();
        mpb_context *f = mpb_connect(B.address);
        int ok = f && !f->err;
        for (int i = 0; ok && i < 5000; i++) ok = mpb_ns_incr(f, ns, "fast", 1, NULL) == MPB_OK;
        mpb_free(f);
        _exit(ok ? 0 : 1);
    }
    double t0 = now(), fast_done = -1;
    for (int s = 0; s < SLOW_SECONDS; s++) {
        for (int i = 0; i < SLOW_CLIENTS; i++) ck_assert_int_eq(tb_write_all(fds[i], req.data + s, 1), 0);
        sleep_ms(1000);
        int st;
        if (fast_done < 0 && waitpid(fast, &st, WNOHANG) == fast) {
            ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
            fast_done = now() - t0;
        }
    }
    if (fast_done < 0) { /* no speed claim: it only has to finish */
        int st;
        ck_assert_int_eq(waitpid(fast, &st, 0), fast);
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        fast_done = now() - t0;
    }
    TB_EXPECT(c, "5000", "namespace.getattr", mpb_refv(ns), mpb_str("fast"));
    /* The slow ones finish their requests; each is answered correctly. */
    for (int i = 0; i < SLOW_CLIENTS; i++)
        ck_assert_int_eq(tb_write_all(fds[i], req.data + SLOW_SECONDS, req.size - SLOW_SECONDS), 0);
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        mpb_value r = read_result(fds[i], 42);
        ck_assert(r.v.i >= 1 && r.v.i <= SLOW_CLIENTS);
        close(fds[i]);
    }
    TB_EXPECT(c, "20", "namespace.getattr", mpb_refv(ns), mpb_str("slow"));
    msgpack_sbuffer_destroy(&req);
    printf("faults: %d clients sent one byte a second for %d s; a full-speed client did "
           "5000 calls meanwhile (done after %.1f s)\n", SLOW_CLIENTS, SLOW_SECONDS, fast_done);
    mpb_free(c);
}
END_TEST

/*--- A client that never reads ---*/

static void stall_setup(void)
{
    static const char *const args[] = {"--quiet", "--output-timeout", "1", NULL};
    tb_start(&B, 0, args);
}

START_TEST(client_that_never_reads_is_disconnected_others_unaffected)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l;
    ck_assert_int_eq(mpb_open(c, "list", "big", NULL, &l), MPB_OK);
    char chunk[16384];
    memset(chunk, 'r', sizeof chunk);
    mpb_value v = mpb_str_borrowed(chunk, sizeof chunk);
    for (int i = 0; i < 64; i++) ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    /* 200 copies of a 1 MiB list asked for, none read. */
    int fd = tb_raw_connect(&B);
    int rcv = 4096; /* keep the kernel from soaking up much on our side */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mpb_value r = mpb_refv(l);
    for (int i = 0; i < 200; i++) send_call(fd, (uint64_t)i, "list.copy", &r, 1, &sb);
    ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    /* Meanwhile everyone else goes on; then the broker drops the stalled one. */
    mpb_ref ns;
    ck_assert_int_eq(mpb_create(c, "namespace", NULL, &ns), MPB_OK);
    double t0 = now();
    for (int i = 0; i < 500; i++) ck_assert_int_eq(mpb_ns_incr(c, ns, "x", 1, NULL), MPB_OK);
    ck_assert_int_eq(mpb_release(c, ns), MPB_OK);
    await_connections(c, 1);
    double gone = now() - t0;
    int64_t n;
    ck_assert_int_eq(mpb_list_len(c, l, &n), MPB_OK);
    ck_assert_int_eq(n, 64);
    ck_assert_int_eq(tb_wait_closed(fd, 10000), 1);
    close(fd);
    ck_assert_int_eq(mpb_release(c, l), MPB_OK);
    assert_nothing_leaked(c, NULL, 0);
    printf("faults: a client that read none of 200 MiB of replies was disconnected after "
           "%.1f s (--output-timeout 1); others served throughout\n", gone);
    mpb_free(c);
}
END_TEST

/*--- Regressions the fuzzer found, at the broker level ---*/

START_TEST(list_sort_then_append_stays_in_bounds)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l, q;
    mpb_value init = tb_lit("[3, 1, 2]");
    ck_assert_int_eq(mpb_create(c, "list", &init, &l), MPB_OK);
    mpb_value_free(&init);
    for (int i = 0; i < 40; i++) TB_EXPECT(c, "None", "list.append", mpb_refv(l), mpb_int(i));
    TB_EXPECT(c, "None", "list.sort", mpb_refv(l));
    for (int i = 0; i < 40; i++) TB_EXPECT(c, "None", "list.append", mpb_refv(l), mpb_int(i));
    TB_EXPECT(c, "None", "list.extend", mpb_refv(l), tb_lit("[[], [1], 'x']"));
    TB_EXPECT(c, "86", "list.len", mpb_refv(l));
    TB_EXPECT(c, "None", "list.setitem", mpb_refv(l), mpb_int(0), mpb_int(0), tb_lit("[]"));
    TB_EXPECT(c, "None", "list.delitem", mpb_refv(l), mpb_int(5), mpb_int(5));
    /* A timeout too large for a time_t means no timeout. */
    ck_assert_int_eq(mpb_create(c, "queue", NULL, &q), MPB_OK);
    mpb_context *w = tb_connect(&B);
    mpb_value args[3] = {mpb_refv(q), mpb_bool(true), mpb_float(1e223)};
    ck_assert_int_eq(mpb_append_call(w, "queue.get", args, 3), MPB_OK);
    ck_assert_int_eq(mpb_flush(w), MPB_OK);
    TB_EXPECT(c, "None", "queue.put", mpb_refv(q), mpb_str("x"));
    mpb_value got;
    ck_assert_int_eq(mpb_get_reply(w, &got), MPB_OK);
    ck_assert_str_eq(got.v.s, "x");
    mpb_value_free(&got);
    mpb_free(w);
    mpb_free(c);
}
END_TEST

static Suite *faults_suite(void)
{
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("faults");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, sigkill_mid_request_under_load_loses_and_leaks_nothing);
    tcase_add_test(tc, requests_written_a_byte_at_a_time_and_in_odd_pieces);
    tcase_add_test(tc, half_closed_socket_still_gets_every_reply);
    tcase_add_test(tc, a_peer_gone_while_parked_for_ever_is_closed);
    tcase_add_test(tc, a_thousand_concurrent_connections_each_doing_work);
    tcase_add_test(tc, one_byte_a_second_does_not_hold_up_anyone);
    tcase_add_test(tc, list_sort_then_append_stays_in_bounds);
    suite_add_tcase(s, tc);
    tc = tcase_create("stall");
    tcase_add_checked_fixture(tc, stall_setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, client_that_never_reads_is_disconnected_others_unaffected);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    return tb_run(faults_suite());
}
