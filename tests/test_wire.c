/* test_wire.c - bad input over a raw socket against a real broker.
 *
 * Each test writes bytes by hand (no libmpbroker on the sending side) and asserts the
 * documented reply: the error kind, whether the connection stays usable, and that
 * nothing changed for anyone else.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpb_codec.h"
#include "testutil.h"

static tb_broker B;

static void setup(void)
{
    static const char *const args[] = {"--max-message", "65536", NULL};
    tb_start(&B, 0, args);
}
/* The broker must exit 0: under ASan that also means it leaked nothing. */
static void teardown(void) { ck_assert_int_eq(tb_stop(&B), 0); }


/* Read one response; check msgid (has_id false: must be nil) and return it. */
static mpb_value read_response(int fd, bool has_id, uint64_t msgid)
{
    mpb_value m;
    ck_assert_msg(tb_read_msg(fd, &m, 5000) == 0, "no response");
    ck_assert_int_eq(m.type, MPB_ARRAY);
    ck_assert_uint_eq(m.v.a->len, 4);
    ck_assert_int_eq(m.v.a->items[0].v.i, 1);
    if (has_id) {
        ck_assert_int_eq(m.v.a->items[1].type, MPB_INT);
        ck_assert_uint_eq((uint64_t)m.v.a->items[1].v.i, msgid);
    } else {
        ck_assert_int_eq(m.v.a->items[1].type, MPB_NIL);
    }
    return m;
}

/* Expect an error reply of this kind. */
static void expect_error(int fd, bool has_id, uint64_t msgid, const char *kind)
{
    mpb_value m = read_response(fd, has_id, msgid);
    mpb_value *err = &m.v.a->items[2];
    ck_assert_int_eq(err->type, MPB_ARRAY);
    ck_assert_uint_eq(err->v.a->len, 2);
    ck_assert_str_eq(err->v.a->items[0].v.s, kind);
    ck_assert_int_eq(err->v.a->items[1].type, MPB_STR);
    ck_assert_uint_gt(err->v.a->items[1].len, 0);
    mpb_value_free(&m);
}

/* The connection still answers a ping with this msgid. */
static void expect_usable(int fd, uint64_t msgid)
{
    tb_send_call(fd, msgid, "manager.ping", NULL, 0);
    mpb_value m = read_response(fd, true, msgid);
    ck_assert_int_eq(m.v.a->items[2].type, MPB_NIL);
    ck_assert_str_eq(m.v.a->items[3].v.s, "pong");
    mpb_value_free(&m);
}

START_TEST(malformed_msgpack_is_bad_request_then_closed)
{
    int fd = tb_raw_connect(&B), other = tb_raw_connect(&B);
    const char junk[] = "\xc1\x01\x02";
    tb_write_all(fd, junk, 3);
    expect_error(fd, false, 0, "BadRequest");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    expect_usable(other, 9);
    close(fd);
    close(other);
}
END_TEST

START_TEST(non_array_message_is_bad_request_and_connection_stays)
{
    int fd = tb_raw_connect(&B);
    tb_write_all(fd, "\x05", 1); /* the integer 5 */
    expect_error(fd, false, 0, "BadRequest");
    tb_write_all(fd, "\x93\x00\x07\xa4ping", 8); /* [0, 7, "ping"]: 3 elements */
    expect_error(fd, true, 7, "BadRequest");
    tb_write_all(fd, "\x94\x00\x08\x01\x90", 5); /* method not a string */
    expect_error(fd, true, 8, "BadRequest");
    tb_write_all(fd, "\x94\x00\x09\xacmanager.ping\x05", 17); /* params not an array */
    expect_error(fd, true, 9, "BadRequest");
    tb_write_all(fd, "\x94\x07\x09\xacmanager.ping\x90", 17); /* message type 7 */
    expect_error(fd, false, 0, "BadRequest");
    expect_usable(fd, 10);
    close(fd);
}
END_TEST

START_TEST(unknown_method_is_no_such_method)
{
    int fd = tb_raw_connect(&B);
    tb_send_call(fd, 3, "list.frobnicate", NULL, 0);
    expect_error(fd, true, 3, "NoSuchMethod");
    expect_usable(fd, 4);
    close(fd);
}
END_TEST

START_TEST(wrong_arity_and_types_are_type_errors_and_change_nothing)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l, d;
    ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
    ck_assert_int_eq(mpb_create(c, "dict", NULL, &d), MPB_OK);
    int fd = tb_raw_connect(&B);
    mpb_value p[3] = {mpb_refv(l), mpb_int(1), mpb_int(2)};
    tb_send_call(fd, 1, "list.append", p, 3); /* one too many */
    expect_error(fd, true, 1, "TypeError");
    tb_send_call(fd, 2, "list.append", p, 0); /* no reference */
    expect_error(fd, true, 2, "TypeError");
    mpb_value q[2] = {mpb_int(5), mpb_int(1)};
    tb_send_call(fd, 3, "list.append", q, 2); /* an int where the reference goes */
    expect_error(fd, true, 3, "TypeError");
    mpb_value r[2] = {mpb_refv(d), mpb_int(1)};
    tb_send_call(fd, 4, "list.append", r, 2); /* a dict reference to a list method */
    expect_error(fd, true, 4, "TypeError");
    mpb_value s[2] = {mpb_refv(l), mpb_str_borrowed("x", 1)};
    tb_send_call(fd, 5, "list.getitem", s, 2); /* a str index */
    expect_error(fd, true, 5, "TypeError");
    mpb_value t[2] = {mpb_refv(987654), mpb_int(1)};
    tb_send_call(fd, 6, "list.append", t, 2); /* no such object */
    expect_error(fd, true, 6, "NoSuchObject");
    mpb_value inner = mpb_refv(987654);
    mpb_value u[2] = {mpb_refv(l), inner};
    tb_send_call(fd, 7, "list.append", u, 2); /* a dangling reference as a value */
    expect_error(fd, true, 7, "NoSuchObject");
    expect_usable(fd, 8);
    int64_t n = -1;
    ck_assert_int_eq(mpb_list_len(c, l, &n), MPB_OK);
    ck_assert_int_eq(n, 0);
    close(fd);
    mpb_free(c);
}
END_TEST

START_TEST(oversized_message_is_too_large_and_closed)
{
    int fd = tb_raw_connect(&B), other = tb_raw_connect(&B);
    /* A str of 100000 bytes, over the 65536 limit this broker was started with. */
    size_t n = 100000;
    char *big = malloc(n);
    memset(big, 'x', n);
    mpb_value p = mpb_str_borrowed(big, n);
    tb_send_call(fd, 11, "manager.ping", &p, 1);
    expect_error(fd, false, 0, "TooLarge");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    free(big);
    expect_usable(other, 1);
    close(fd);
    close(other);
}
END_TEST

START_TEST(array32_header_claiming_billions_is_refused_at_once)
{
    int fd = tb_raw_connect(&B);
    /* 5 bytes that claim 4 billion elements: refused before anything is allocated. */
    tb_write_all(fd, "\xdd\xff\xff\xff\xff", 5);
    expect_error(fd, false, 0, "TooLarge");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
}
END_TEST

START_TEST(too_deep_nesting_is_an_error_and_connection_stays)
{
    int fd = tb_raw_connect(&B);
    mpb_context *c = tb_connect(&B);
    mpb_ref l;
    ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
    /* [0, 21, "list.append", [ref, [[[[...40 levels...]]]]]] */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 21);
    msgpack_pack_str_with_body(&pk, "list.append", 11);
    msgpack_pack_array(&pk, 2);
    mpb_ref_pack(&pk, l);
    for (int i = 0; i < 40; i++) msgpack_pack_array(&pk, 1);
    msgpack_pack_nil(&pk);
    tb_write_all(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    expect_error(fd, true, 21, "TooDeep");
    expect_usable(fd, 22);
    int64_t n = -1;
    ck_assert_int_eq(mpb_list_len(c, l, &n), MPB_OK);
    ck_assert_int_eq(n, 0);
    mpb_free(c);
    close(fd);
}
END_TEST

START_TEST(disconnect_mid_message_loses_nothing)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l;
    mpb_value v = mpb_int(1);
    ck_assert_int_eq(mpb_open(c, "list", "keep", NULL, &l), MPB_OK);
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    for (int i = 0; i < 20; i++) {
        int fd = tb_raw_connect(&B);
        /* half of a request, then gone */
        tb_write_all(fd, "\x94\x00\x01\xabmanager.cr", 15);
        close(fd);
    }
    int64_t n = -1;
    ck_assert_int_eq(mpb_list_len(c, l, &n), MPB_OK);
    ck_assert_int_eq(n, 1);
    mpb_free(c);
}
END_TEST

START_TEST(tcp_listener_serves_requests)
{
    tb_broker t;
    tb_start(&t, 1, NULL);
    ck_assert_msg(strncmp(t.address, "tcp://", 6) == 0, "address %s", t.address);
    mpb_context *c = mpb_connect(t.address);
    ck_assert_msg(c && !c->err, "connect %s: %s", t.address, c ? c->errstr : "oom");
    mpb_ref ns;
    int64_t x = 0;
    ck_assert_int_eq(mpb_create(c, "namespace", NULL, &ns), MPB_OK);
    ck_assert_int_eq(mpb_ns_incr(c, ns, "x", 41, &x), MPB_OK);
    ck_assert_int_eq(mpb_ns_incr(c, ns, "x", 1, &x), MPB_OK);
    ck_assert_int_eq(x, 42);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- Parked requests and the input behind them ---*/

/* The next message on fd, asserted by its repr. */
static void expect_msg(int fd, const char *want)
{
    mpb_value m;
    ck_assert_msg(tb_read_msg(fd, &m, 10000) == 0, "no message (expected %s)", want);
    char *got = tb_repr(&m);
    ck_assert_str_eq(got, want);
    free(got);
    mpb_value_free(&m);
}

/* Connections with a parked request, from manager.clients. */
static int parked_count(mpb_context *c)
{
    mpb_value cl;
    ck_assert_int_eq(mpb_call(c, "manager.clients", NULL, 0, &cl), MPB_OK);
    int n = 0;
    for (size_t i = 0; i < cl.v.a->len; i++) {
        mpb_value k = mpb_str_borrowed("parked", 6);
        n += (int)mpb_map_get(cl.v.a->items[i].v.m, &k)->v.i;
    }
    mpb_value_free(&cl);
    return n;
}

static void await_parked(mpb_context *c, int n)
{
    for (int i = 0; i < 500 && parked_count(c) < n; i++) usleep(10000);
    ck_assert_int_eq(parked_count(c), n);
}

/* Issue 18 bug 9: after shutdown(SHUT_WR), only the requests before a parked one were
 * answered; the parked one and all behind it were dropped with the connection. */
START_TEST(a_half_closed_client_gets_every_answer_then_is_closed)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l = tb_create(c, "list", NULL), e = tb_create(c, "event", NULL),
            q = tb_create(c, "queue", NULL), big = tb_create(c, "list", NULL);
    /* a parked request that times out */
    int fd = tb_raw_connect(&B);
    tb_send_call(fd, 1, "list.append", (mpb_value[]){mpb_refv(l), mpb_int(1)}, 2);
    tb_send_call(fd, 2, "event.wait", (mpb_value[]){mpb_refv(e), mpb_float(0.3)}, 2);
    tb_send_call(fd, 3, "list.append", (mpb_value[]){mpb_refv(l), mpb_int(2)}, 2);
    tb_send_call(fd, 4, "list.len", (mpb_value[]){mpb_refv(l)}, 1);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    expect_msg(fd, "[1, 1, None, None]");
    expect_msg(fd, "[1, 2, None, False]");
    expect_msg(fd, "[1, 3, None, None]");
    expect_msg(fd, "[1, 4, None, 2]");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    /* a parked request answered by another client after the half-close */
    fd = tb_raw_connect(&B);
    tb_send_call(fd, 5, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    tb_send_call(fd, 6, "list.len", (mpb_value[]){mpb_refv(l)}, 1);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    await_parked(c, 1);
    mpb_value job = mpb_str_borrowed("job", 3);
    ck_assert_int_eq(mpb_queue_put(c, q, &job, -1), MPB_OK);
    expect_msg(fd, "[1, 5, None, 'job']");
    expect_msg(fd, "[1, 6, None, 2]");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    /* more answers than the broker buffers at once (replies of 1 MiB; it writes about
     * 4 MiB, then serves the rest as they drain) */
    char chunk[32768];
    memset(chunk, 'x', sizeof chunk);
    mpb_value v = mpb_str_borrowed(chunk, sizeof chunk);
    for (int i = 0; i < 32; i++) ck_assert_int_eq(mpb_list_append(c, big, &v), MPB_OK);
    fd = tb_raw_connect(&B);
    for (int i = 0; i < 20; i++) tb_send_call(fd, 100 + (uint64_t)i, "list.copy", (mpb_value[]){mpb_refv(big)}, 1);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    usleep(200000); /* let the broker's output fill up */
    for (int i = 0; i < 20; i++) {
        mpb_value m;
        ck_assert_msg(tb_read_msg(fd, &m, 10000) == 0, "reply %d missing", i);
        ck_assert_int_eq(m.v.a->items[1].v.i, 100 + i);
        ck_assert_uint_eq(m.v.a->items[3].v.a->len, 32);
        mpb_value_free(&m);
    }
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    /* a peer gone entirely (a killed process) has its parked request dropped: the
     * item is not handed to nobody */
    fd = tb_raw_connect(&B);
    tb_send_call(fd, 7, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    await_parked(c, 1);
    close(fd);
    for (int i = 0; i < 500 && parked_count(c) > 0; i++) usleep(10000);
    ck_assert_int_eq(parked_count(c), 0);
    ck_assert_int_eq(mpb_queue_put(c, q, &job, -1), MPB_OK);
    mpb_value size;
    ck_assert_int_eq(mpb_call(c, "queue.qsize", (mpb_value[]){mpb_refv(q)}, 1, &size), MPB_OK);
    ck_assert_int_eq(size.v.i, 1);
    mpb_free(c);
}
END_TEST

/* VmRSS of a process, in KiB (from /proc/PID/status). */
static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    fclose(f);
    ck_assert_int_ge(kib, 0);
    return kib;
}

enum { STREAM_MSGS = 6400, STREAM_PAYLOAD = 32000 }; /* about 200 MB */

/* The streaming child: STREAM_MSGS pings of STREAM_PAYLOAD bytes (msgids 2, 3, ...),
 * counting the bytes the socket took in *sent. */
static void stream_pings(int fd, volatile size_t *sent)
{
    static char payload[STREAM_PAYLOAD];
    memset(payload, 'p', sizeof payload);
    mpb_value arg = mpb_str_borrowed(payload, sizeof payload);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (uint64_t i = 0; i < STREAM_MSGS; i++) {
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint64(&pk, 2 + i);
        msgpack_pack_str_with_body(&pk, "manager.ping", 12);
        msgpack_pack_array(&pk, 1);
        mpb_value_pack(&pk, &arg);
        if (tb_write_all(fd, sb.data, sb.size) != 0) _exit(1);
        *sent += sb.size;
    }
    msgpack_sbuffer_destroy(&sb);
    _exit(0);
}

/* Issue 18 bug 7: a connection parked on queue.get then streaming requests had all of
 * them read into the broker's memory (1.5 GB of pings: 1.5 GB of RSS). Reading stops
 * a few MiB behind a park; everything is answered, in order, once it ends. */
START_TEST(input_behind_a_parked_request_is_bounded)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref q = tb_create(c, "queue", NULL);
    int fd = tb_raw_connect(&B);
    tb_send_call(fd, 1, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    await_parked(c, 1);
    long before = rss_kib(B.pid);
    volatile size_t *sent = mmap(NULL, sizeof *sent, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne((void *)sent, MAP_FAILED);
    *sent = 0;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) stream_pings(fd, sent);
    /* Until the stream is all sent, or it has made no progress for a second. */
    size_t last = (size_t)-1;
    for (int still = 0; still < 10; usleep(100000)) {
        size_t now = *sent;
        still = now == last ? still + 1 : 0;
        last = now;
        if (now >= (size_t)STREAM_MSGS * STREAM_PAYLOAD) break;
    }
    long grown = rss_kib(B.pid) - before;
    ck_assert_msg(grown < 64 * 1024, "the broker grew by %ld KiB with %zu bytes sent behind a park",
                  grown, *sent);
    mpb_value item = mpb_str_borrowed("item", 4);
    ck_assert_int_eq(mpb_queue_put(c, q, &item, -1), MPB_OK);
    expect_msg(fd, "[1, 1, None, 'item']");
    for (int i = 0; i < STREAM_MSGS; i++) {
        mpb_value m;
        ck_assert_msg(tb_read_msg(fd, &m, 10000) == 0, "reply %d missing", i);
        ck_assert_int_eq(m.v.a->items[1].v.i, 2 + i);
        ck_assert_int_eq(m.v.a->items[2].type, MPB_NIL);
        ck_assert_uint_eq(m.v.a->items[3].len, STREAM_PAYLOAD);
        mpb_value_free(&m);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    munmap((void *)sent, sizeof *sent);
    close(fd);
    mpb_free(c);
}
END_TEST

/* A getter whose client closed its socket while the broker was not reading it
 * (after a half-close, or with its input paused behind the park) must not be handed
 * an item: nobody would read it. */
START_TEST(a_getter_whose_client_left_unnoticed_gets_no_item)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref q = tb_create(c, "queue", NULL);
    mpb_value item = mpb_str_borrowed("item", 4), size;
    /* half-closed, parked, then gone */
    int fd = tb_raw_connect(&B);
    tb_send_call(fd, 1, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    await_parked(c, 1);
    usleep(100000); /* the broker has read the EOF */
    close(fd);
    ck_assert_int_eq(mpb_queue_put(c, q, &item, -1), MPB_OK);
    ck_assert_int_eq(mpb_call(c, "queue.qsize", (mpb_value[]){mpb_refv(q)}, 1, &size), MPB_OK);
    ck_assert_int_eq(size.v.i, 1);
    ck_assert_int_eq(mpb_call(c, "queue.get", (mpb_value[]){mpb_refv(q)}, 1, &size), MPB_OK);
    mpb_value_free(&size);
    /* parked with so much sent behind it that the broker stopped reading, then gone */
    fd = tb_raw_connect(&B);
    tb_send_call(fd, 2, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    await_parked(c, 1);
    static char payload[30000];
    memset(payload, 'p', sizeof payload);
    mpb_value arg = mpb_str_borrowed(payload, sizeof payload);
    ck_assert_int_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 3);
    msgpack_pack_str_with_body(&pk, "manager.ping", 12);
    msgpack_pack_array(&pk, 1);
    mpb_value_pack(&pk, &arg);
    size_t off = 0, total = 0;
    for (int stalled = 0; stalled < 20 && total < ((size_t)64 << 20);) {
        ssize_t n = write(fd, sb.data + off, sb.size - off);
        if (n > 0) {
            off = (off + (size_t)n) % sb.size;
            total += (size_t)n;
            stalled = 0;
        } else {
            ck_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
            stalled++;
            usleep(50000);
        }
    }
    msgpack_sbuffer_destroy(&sb);
    ck_assert_msg(total < ((size_t)64 << 20), "the broker never stopped reading");
    close(fd);
    ck_assert_int_eq(mpb_queue_put(c, q, &item, -1), MPB_OK);
    ck_assert_int_eq(mpb_call(c, "queue.qsize", (mpb_value[]){mpb_refv(q)}, 1, &size), MPB_OK);
    ck_assert_int_eq(size.v.i, 1);
    for (int i = 0; i < 500 && parked_count(c) > 0; i++) usleep(10000);
    ck_assert_int_eq(parked_count(c), 0);
    mpb_free(c);
}
END_TEST

/* A raw TCP connection to a broker started with TCP (address tcp://127.0.0.1:PORT). */
static int raw_tcp_connect(const tb_broker *t)
{
    int port = atoi(strrchr(t->address, ':') + 1);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* Over TCP a half-close cannot be told from a killed client: a parked request is
 * dropped with what follows it (a queue item is never handed to a dead worker), and
 * everything before it, or with no park, is answered. */
START_TEST(a_tcp_half_close_is_answered_up_to_a_parked_request)
{
    tb_broker t;
    tb_start(&t, 1, NULL);
    mpb_context *c = mpb_connect(t.address);
    ck_assert_msg(c && !c->err, "connect %s", t.address);
    mpb_ref l = tb_create(c, "list", NULL), q = tb_create(c, "queue", NULL);
    int fd = raw_tcp_connect(&t);
    tb_send_call(fd, 1, "list.append", (mpb_value[]){mpb_refv(l), mpb_int(1)}, 2);
    tb_send_call(fd, 2, "list.len", (mpb_value[]){mpb_refv(l)}, 1);
    tb_send_call(fd, 3, "queue.get", (mpb_value[]){mpb_refv(q)}, 1);
    tb_send_call(fd, 4, "list.append", (mpb_value[]){mpb_refv(l), mpb_int(2)}, 2);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    expect_msg(fd, "[1, 1, None, None]");
    expect_msg(fd, "[1, 2, None, 1]");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    mpb_value job = mpb_str_borrowed("job", 3), r;
    ck_assert_int_eq(mpb_queue_put(c, q, &job, -1), MPB_OK);
    ck_assert_int_eq(mpb_call(c, "queue.qsize", (mpb_value[]){mpb_refv(q)}, 1, &r), MPB_OK);
    ck_assert_int_eq(r.v.i, 1); /* the item waits for a live consumer */
    ck_assert_int_eq(mpb_call(c, "list.len", (mpb_value[]){mpb_refv(l)}, 1, &r), MPB_OK);
    ck_assert_int_eq(r.v.i, 1);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* Review of issue 18: serving stops once 4 MiB of replies are unsent (output
 * backpressure). When one send() then took them all (loopback TCP with a large
 * receive window does), no event was left to serve the requests still buffered: a
 * pipelining client waited for its replies for ever. */
START_TEST(requests_held_back_by_output_are_served_when_it_drains_at_once)
{
    tb_broker t;
    tb_start(&t, 1, NULL);
    mpb_context *c = mpb_connect(t.address);
    ck_assert_msg(c && !c->err, "connect %s", t.address);
    mpb_ref l = tb_create(c, "list", NULL);
    static char item[1000];
    memset(item, 'x', sizeof item);
    for (int i = 0; i < 100; i++) /* list.copy answers with about 100 KB */
        TB_EXPECT(c, "None", "list.append", mpb_refv(l), mpb_str_borrowed(item, sizeof item));
    int fd = raw_tcp_connect(&t);
    int big = 32 << 20;
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big), 0);
    enum { N = 60 }; /* 6 MB of replies: past the 4 MiB mark in one read batch */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (int i = 0; i < N; i++) {
        msgpack_pack_array(&pk, 4);
        msgpack_pack_int(&pk, 0);
        msgpack_pack_int(&pk, i);
        msgpack_pack_str_with_body(&pk, "list.copy", 9);
        msgpack_pack_array(&pk, 1);
        mpb_ref_pack(&pk, l);
    }
    ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    usleep(300000); /* not reading: the broker's send takes what the window allows */
    for (int i = 0; i < N; i++) {
        mpb_value m;
        ck_assert_msg(tb_read_msg(fd, &m, 5000) == 0, "reply %d of %d never came", i, N);
        ck_assert_int_eq(m.v.a->items[1].v.i, i);
        ck_assert_uint_eq(m.v.a->items[3].v.a->len, 100);
        mpb_value_free(&m);
    }
    close(fd);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

static Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("bad input");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, malformed_msgpack_is_bad_request_then_closed);
    tcase_add_test(tc, non_array_message_is_bad_request_and_connection_stays);
    tcase_add_test(tc, unknown_method_is_no_such_method);
    tcase_add_test(tc, wrong_arity_and_types_are_type_errors_and_change_nothing);
    tcase_add_test(tc, oversized_message_is_too_large_and_closed);
    tcase_add_test(tc, array32_header_claiming_billions_is_refused_at_once);
    tcase_add_test(tc, too_deep_nesting_is_an_error_and_connection_stays);
    tcase_add_test(tc, disconnect_mid_message_loses_nothing);
    suite_add_tcase(s, tc);
    TCase *park = tcase_create("parked");
    tcase_add_checked_fixture(park, setup, teardown);
    tcase_set_timeout(park, 120);
    tcase_add_test(park, a_half_closed_client_gets_every_answer_then_is_closed);
    tcase_add_test(park, input_behind_a_parked_request_is_bounded);
    tcase_add_test(park, a_getter_whose_client_left_unnoticed_gets_no_item);
    suite_add_tcase(s, park);
    TCase *tcp = tcase_create("tcp");
    tcase_set_timeout(tcp, 60);
    tcase_add_test(tcp, tcp_listener_serves_requests);
    tcase_add_test(tcp, a_tcp_half_close_is_answered_up_to_a_parked_request);
    tcase_add_test(tcp, requests_held_back_by_output_are_served_when_it_drains_at_once);
    suite_add_tcase(s, tcp);
    return s;
}

int main(void)
{
    return tb_run(wire_suite());
}
