/* test_client.c - libmpbroker's promises about what it reads and how a pipeline ends:
 * the deepest value the broker stores comes back through every read path and as a
 * notification; replies it cannot read fail only their own call; a pipeline broken
 * at any position gives each call its own outcome.
 *
 * Most tests run a real broker (testutil.c). A few need replies no broker of this
 * version sends: a scripted fake broker, forked, answers on a Unix socket of its own.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpb_codec.h"
#include "mpb_reader.h"
#include "testutil.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* A request puts an argument at level 3 ([0, id, m, [ARG]]): the deepest value the
 * broker accepts has this many levels. */
#define DEEPEST (MPB_READER_MAX_DEPTH - 2)

/* levels nested arrays around inner (consumed). */
static mpb_value deep(int levels, mpb_value inner)
{
    mpb_value v = inner;
    for (int i = 0; i < levels; i++) {
        mpb_value a = mpb_array_value(1);
        ck_assert_int_eq(mpb_value_push(&a, &v), 0);
        v = a;
    }
    return v;
}

/* Levels of nesting: 0 for a scalar. */
static int depth_of(const mpb_value *v)
{
    int d = 0;
    if (v->type == MPB_ARRAY) {
        for (size_t i = 0; i < v->v.a->len; i++) {
            int k = depth_of(&v->v.a->items[i]);
            if (k > d) d = k;
        }
        return d + 1;
    }
    if (v->type == MPB_MAP) {
        size_t it = 0;
        mpb_map_entry *e;
        while ((e = mpb_map_next(v->v.m, &it)) != NULL) {
            int k = depth_of(&e->key), l = depth_of(&e->val);
            if (k > d) d = k;
            if (l > d) d = l;
        }
        return d + 1;
    }
    return 0;
}

/* Call method(ref, extra...) and assert that it worked and that its result holds a
 * value of DEEPEST levels, wrapped `wraps` levels deep. */
static void expect_deep_at(int line, mpb_context *c, int wraps, const char *method, mpb_ref ref,
                           const mpb_value *extra, size_t n)
{
    mpb_value args[4] = {mpb_refv(ref)}, r;
    for (size_t i = 0; i < n; i++) args[1 + i] = extra[i];
    int rc = mpb_call(c, method, args, 1 + n, &r);
    ck_assert_msg(rc == MPB_OK, "line %d: %s: %s: %s", line, method, c->errkind, c->errstr);
    ck_assert_msg(depth_of(&r) == DEEPEST + wraps, "line %d: %s gave %d levels, want %d", line,
                  method, depth_of(&r), DEEPEST + wraps);
    mpb_value_free(&r);
}
#define EXPECT_DEEP(c, wraps, method, ref, ...) \
    expect_deep_at(__LINE__, c, wraps, method, ref, (mpb_value[]){__VA_ARGS__}, \
                   N(((mpb_value[]){__VA_ARGS__})))
#define EXPECT_DEEP0(c, wraps, method, ref) expect_deep_at(__LINE__, c, wraps, method, ref, NULL, 0)

/* Walk an iterator to its end, asserting every item; returns how many there were. */
static int walk_deep(mpb_context *c, mpb_iter *it, int item_levels)
{
    mpb_value *item;
    int n = 0, rc;
    while ((rc = mpb_iter_next(it, &item)) == 1) {
        ck_assert_int_eq(depth_of(item), item_levels);
        n++;
    }
    ck_assert_msg(rc == 0, "iterating: %s: %s", c->errkind, c->errstr);
    mpb_iter_free(it);
    return n;
}

START_TEST(the_broker_refuses_one_level_more_than_the_deepest_value)
{
    /* Pins where DEEPEST comes from: the other tests are only as strong as this. */
    tb_broker b;
    tb_start(&b, 0, NULL);
    mpb_context *c = tb_connect(&b);
    mpb_ref l = tb_create(c, "list", NULL);
    mpb_value v = deep(DEEPEST + 1, mpb_int(1));
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_ERR_REPLY);
    ck_assert_str_eq(c->errkind, "TooDeep");
    mpb_value_free(&v);
    v = deep(DEEPEST, mpb_int(1));
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    mpb_value_free(&v);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&b), 0);
}
END_TEST

START_TEST(the_deepest_value_comes_back_through_every_read_path)
{
    tb_broker b;
    tb_start(&b, 0, NULL);
    mpb_context *c = tb_connect(&b);
    mpb_value v = deep(DEEPEST, mpb_int(1)), k = mpb_str("k");
    mpb_value dk = deep(DEEPEST, mpb_int(2)); /* arrays are tuples: a key, an element */

    /* dict: the value under "k", and a deep key */
    mpb_ref d = tb_create(c, "dict", NULL);
    ck_assert_int_eq(mpb_dict_setitem(c, d, &k, &v), MPB_OK);
    mpb_value one = mpb_int(1);
    ck_assert_int_eq(mpb_dict_setitem(c, d, &dk, &one), MPB_OK);
    EXPECT_DEEP(c, 0, "dict.getitem", d, k);
    EXPECT_DEEP(c, 0, "dict.get", d, k);
    EXPECT_DEEP(c, 0, "dict.setdefault", d, k);
    EXPECT_DEEP0(c, 1, "dict.copy", d);
    EXPECT_DEEP0(c, 1, "dict.keys", d);
    EXPECT_DEEP0(c, 1, "dict.values", d);
    EXPECT_DEEP0(c, 2, "dict.items", d);
    EXPECT_DEEP(c, 3, "dict.items", d, mpb_int(0), mpb_int(10)); /* the deepest reply */
    ck_assert_int_eq(walk_deep(c, mpb_dict_iter(c, d, 1), DEEPEST + 1), 2);
    mpb_value got;
    ck_assert_int_eq(mpb_dict_getitem(c, d, &k, &got), MPB_OK);
    ck_assert_int_eq(depth_of(&got), DEEPEST);
    mpb_value_free(&got);
    ck_assert_int_eq(mpb_dict_copy(c, d, &got), MPB_OK);
    mpb_value_free(&got);
    EXPECT_DEEP0(c, 1, "dict.popitem", d); /* [deep key, 1] */
    EXPECT_DEEP(c, 0, "dict.pop", d, k);

    /* list */
    mpb_ref l = tb_create(c, "list", NULL);
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    EXPECT_DEEP(c, 0, "list.getitem", l, mpb_int(0));
    EXPECT_DEEP(c, 1, "list.getitem", l, mpb_int(0), mpb_int(2));
    EXPECT_DEEP0(c, 1, "list.copy", l);
    EXPECT_DEEP(c, 2, "list.slice", l, mpb_int(0), mpb_int(10));
    ck_assert_int_eq(walk_deep(c, mpb_list_iter(c, l, 1), DEEPEST), 2);
    EXPECT_DEEP0(c, 0, "list.pop", l);

    /* set */
    mpb_ref s = tb_create(c, "set", NULL);
    ck_assert_int_eq(mpb_set_add(c, s, &dk), MPB_OK);
    EXPECT_DEEP0(c, 1, "set.copy", s);
    EXPECT_DEEP0(c, 1, "set.items", s);
    EXPECT_DEEP(c, 2, "set.items", s, mpb_int(0), mpb_int(10));
    EXPECT_DEEP0(c, 1, "set.union", s);
    ck_assert_int_eq(walk_deep(c, mpb_set_iter(c, s, 1), DEEPEST), 1);
    EXPECT_DEEP0(c, 0, "set.pop", s);

    /* namespace, queue */
    mpb_ref ns = tb_create(c, "namespace", NULL);
    ck_assert_int_eq(mpb_ns_setattr(c, ns, "x", &v), MPB_OK);
    EXPECT_DEEP(c, 0, "namespace.getattr", ns, mpb_str_borrowed("x", 1));
    EXPECT_DEEP0(c, 1, "namespace.vars", ns);
    mpb_ref q = tb_create(c, "queue", NULL);
    ck_assert_int_eq(mpb_queue_put(c, q, &v, 0), MPB_OK);
    EXPECT_DEEP0(c, 0, "queue.get", q);

    /* Pipelined, through the non-blocking pieces. */
    mpb_value args[3] = {mpb_refv(d), mpb_int(0), mpb_int(10)};
    ck_assert_int_eq(mpb_dict_setitem(c, d, &k, &v), MPB_OK);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(mpb_append_call(c, "dict.items", args, 3), MPB_OK);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(mpb_get_reply(c, &got), MPB_OK);
        ck_assert_int_eq(depth_of(&got), DEEPEST + 3);
        mpb_value_free(&got);
    }
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_value_free(&v);
    mpb_value_free(&k);
    mpb_value_free(&dk);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&b), 0);
}
END_TEST

START_TEST(a_monitor_receives_the_deepest_value_as_a_notification)
{
    tb_broker b;
    tb_start(&b, 0, NULL);
    mpb_context *c = tb_connect(&b), *m = tb_connect(&b);
    ck_assert_int_eq(mpb_call(m, "manager.monitor", NULL, 0, NULL), MPB_OK);
    mpb_ref l = tb_create(c, "list", NULL);
    mpb_value v = deep(DEEPEST, mpb_int(1));
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    mpb_value_free(&v);
    /* [2, "monitor", [{..., params: [L, V]}]]: V sits at level 5. */
    char method[32];
    mpb_value params;
    int got, seen = 0;
    for (int i = 0; i < 10 && !seen; i++) {
        ck_assert_int_eq(mpb_get_notification(m, 5000, method, sizeof method, &params, &got), MPB_OK);
        ck_assert(got);
        ck_assert_str_eq(method, "monitor");
        seen = depth_of(&params) == DEEPEST + 3;
        mpb_value_free(&params);
    }
    ck_assert_msg(seen, "the monitor never saw the deep list.append");
    ck_assert_int_eq(mpb_ping(m), MPB_OK); /* and it is still usable */
    mpb_free(m);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&b), 0);
}
END_TEST

/*--- A scripted fake broker, for replies no real broker sends ---*/

typedef struct fake {
    pid_t pid;
    char dir[64], address[128];
} fake;

/* Read one whole request from fd into r; its msgid into *msgid. 0, or -1 at EOF. */
static int fake_read_request(int fd, mpb_reader *r, uint64_t *msgid)
{
    msgpack_object o;
    for (;;) {
        mpb_read_status st = mpb_reader_next(r, &o);
        if (st == MPB_READ_MSG) {
            if (o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size != 4) return -1;
            *msgid = o.via.array.ptr[1].via.u64;
            return 0;
        }
        if (st != MPB_READ_NEED) return -1;
        size_t avail;
        char *space = mpb_reader_space(r, 4096, &avail);
        ssize_t n = read(fd, space, avail);
        if (n <= 0) return -1;
        mpb_reader_commit(r, (size_t)n);
    }
}

/* The fake's script: for each request, write `before` (notifications, say), then the
 * response [1, msgid, nil, result] with `result` given as raw bytes. */
typedef struct fake_step {
    const void *before;
    size_t before_len;
    const void *result;
    size_t result_len;
} fake_step;

static void fake_start(fake *f, const fake_step *steps, size_t n)
{
    snprintf(f->dir, sizeof f->dir, "/tmp/mpbfake.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(f->dir));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/s.sock", f->dir);
    snprintf(f->address, sizeof f->address, "unix:%s", sa.sun_path);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_ge(lfd, 0);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(lfd, 4), 0);
    f->pid = fork();
    ck_assert_int_ge(f->pid, 0);
    if (f->pid > 0) {
        close(lfd);
        return;
    }
    int fd = accept(lfd, NULL, NULL);
    mpb_reader r;
    if (fd < 0 || mpb_reader_init(&r, 0, MPB_READER_MAX_DEPTH) < 0) _exit(2);
    for (size_t i = 0; i < n; i++) {
        uint64_t msgid;
        if (fake_read_request(fd, &r, &msgid) < 0) _exit(3);
        unsigned char head[16] = {0x94, 0x01, 0xcf};
        for (int k = 0; k < 8; k++) head[3 + k] = (unsigned char)(msgid >> (56 - 8 * k));
        head[11] = 0xc0;
        if ((steps[i].before_len && tb_write_all(fd, steps[i].before, steps[i].before_len) < 0) ||
            tb_write_all(fd, head, 12) < 0 ||
            tb_write_all(fd, steps[i].result, steps[i].result_len) < 0)
            _exit(4);
    }
    char b;
    while (read(fd, &b, 1) > 0) {
    }
    _exit(0);
}

static void fake_stop(fake *f)
{
    int st;
    ck_assert_int_eq(waitpid(f->pid, &st, 0), f->pid);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the fake broker failed (%d)", st);
}

/* levels nested one-item arrays around the int 1, as raw bytes. */
static size_t raw_deep(unsigned char *buf, int levels)
{
    memset(buf, 0x91, (size_t)levels);
    buf[levels] = 0x01;
    return (size_t)levels + 1;
}

START_TEST(a_reply_too_deep_to_read_fails_only_its_own_call)
{
    /* A notification too deep to read is skipped; a reply too deep fails its call with
     * TooDeep; both leave the context in step and usable. */
    unsigned char tdn[64] = {0x93, 0x02, 0xa7, 'm', 'o', 'n', 'i', 't', 'o', 'r'};
    size_t tdn_len = 10 + raw_deep(tdn + 10, MPB_REPLY_MAX_DEPTH); /* 1 + 34 levels */
    unsigned char okn[] = {0x93, 0x02, 0xa2, 'o', 'k', 0x91, 0x07};
    unsigned char too_deep[64], legal[64];
    size_t td_len = raw_deep(too_deep, MPB_REPLY_MAX_DEPTH); /* 1 + 34 levels */
    size_t legal_len = raw_deep(legal, MPB_REPLY_MAX_DEPTH - 1);
    const unsigned char pong[] = {0xa4, 'p', 'o', 'n', 'g'};
    fake_step steps[] = {
        {tdn, tdn_len, pong, sizeof pong},  /* a too-deep notification, then the reply */
        {NULL, 0, too_deep, td_len},        /* a reply one level past the limit */
        {okn, sizeof okn, legal, legal_len}, /* the deepest legal reply */
    };
    fake f;
    fake_start(&f, steps, N(steps));
    mpb_context *c = mpb_connect(f.address);
    ck_assert(c && !c->err);
    mpb_value r;
    ck_assert_msg(mpb_call(c, "manager.ping", NULL, 0, &r) == MPB_OK, "%s: %s", c->errkind, c->errstr);
    ck_assert_str_eq(r.v.s, "pong");
    mpb_value_free(&r);
    ck_assert_int_eq(mpb_call(c, "manager.ping", NULL, 0, &r), MPB_ERR_PROTOCOL);
    ck_assert_str_eq(c->errkind, "TooDeep");
    ck_assert_int_eq(r.type, MPB_NIL);
    ck_assert_msg(mpb_call(c, "manager.ping", NULL, 0, &r) == MPB_OK, "%s: %s", c->errkind, c->errstr);
    ck_assert_int_eq(depth_of(&r), MPB_REPLY_MAX_DEPTH - 1);
    mpb_value_free(&r);
    char method[16];
    int got;
    ck_assert_int_eq(mpb_get_notification(c, 0, method, sizeof method, &r, &got), MPB_OK);
    ck_assert(got); /* only the readable one was queued */
    ck_assert_str_eq(method, "ok");
    mpb_value_free(&r);
    ck_assert_int_eq(mpb_get_notification(c, 0, method, sizeof method, &r, &got), MPB_OK);
    ck_assert(!got);
    mpb_free(c);
    fake_stop(&f);
}
END_TEST

/*--- Pipelines broken at each position ---*/

#define PIPE_LEN 6
#define HUGE_ARG ((size_t)32 << 20) /* over the broker's 16 MiB --max-message */

/* A pipeline of PIPE_LEN list.append calls whose call at position `bad` is too large:
 * the broker answers the calls before it, says TooLarge, and closes. Each call gets its
 * own outcome: the ones before it OK (they ran), it TooLarge, the rest ConnectionError
 * (never sent); and the context then fails fast. */
static void broken_pipeline(const tb_broker *b, int bad, int tcp)
{
    mpb_context *c = tb_connect(b), *check = tb_connect(b);
    mpb_ref l = tb_create(c, "list", NULL);
    char *huge = malloc(HUGE_ARG);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'x', HUGE_ARG);
    for (int i = 0; i < PIPE_LEN; i++) {
        mpb_value a[2] = {mpb_refv(l), i == bad ? mpb_str_borrowed(huge, HUGE_ARG) : mpb_int(i)};
        ck_assert_int_eq(mpb_append_call(c, "list.append", a, 2), MPB_OK);
    }
    free(huge);
    for (int i = 0; i < PIPE_LEN; i++) {
        int rc = mpb_get_reply(c, NULL);
        if (i < bad)
            ck_assert_msg(rc == MPB_OK, "tcp %d, bad %d: reply %d: %s: %s", tcp, bad, i,
                          c->errkind, c->errstr);
        else if (i == bad)
            ck_assert_msg(rc < 0 && strcmp(c->errkind, "TooLarge") == 0,
                          "tcp %d, bad %d: reply %d: %d %s: %s", tcp, bad, i, rc, c->errkind, c->errstr);
        else
            ck_assert_msg(rc < 0 && strcmp(c->errkind, "ConnectionError") == 0,
                          "tcp %d, bad %d: reply %d: %d %s: %s", tcp, bad, i, rc, c->errkind, c->errstr);
    }
    ck_assert_uint_eq(mpb_pending(c), 0);
    ck_assert_int_lt(mpb_ping(c), 0);
    ck_assert_str_eq(c->errkind, "ConnectionError");
    int64_t n = -1;
    ck_assert_int_eq(mpb_list_len(check, l, &n), MPB_ERR_REPLY); /* c's hold went with it */
    mpb_free(check);
    mpb_free(c);
}

START_TEST(a_pipeline_broken_at_each_position_reads_each_reply_in_order)
{
    tb_broker b;
    tb_start(&b, _i, NULL);
    for (int bad = 0; bad < PIPE_LEN; bad++) broken_pipeline(&b, bad, _i);
    ck_assert_int_eq(tb_stop(&b), 0);
}
END_TEST

START_TEST(the_appends_before_the_break_ran_once)
{
    /* The same, with a named list: the calls answered OK are exactly those applied. */
    tb_broker b;
    tb_start(&b, 0, NULL);
    mpb_context *c = tb_connect(&b), *check = tb_connect(&b);
    mpb_ref l;
    ck_assert_int_eq(mpb_open(c, "list", "journal", NULL, &l), MPB_OK);
    char *huge = malloc(HUGE_ARG);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'x', HUGE_ARG);
    for (int i = 0; i < 5; i++) {
        mpb_value a[2] = {mpb_refv(l), mpb_int(i)};
        ck_assert_int_eq(mpb_append_call(c, "list.append", a, 2), MPB_OK);
    }
    mpb_value a[2] = {mpb_refv(l), mpb_str_borrowed(huge, HUGE_ARG)};
    ck_assert_int_eq(mpb_append_call(c, "list.append", a, 2), MPB_OK);
    free(huge);
    int ok = 0;
    while (mpb_pending(c) > 0) ok += mpb_get_reply(c, NULL) == MPB_OK;
    ck_assert_int_eq(ok, 5);
    TB_EXPECT(check, "[0, 1, 2, 3, 4]", "list.copy", mpb_refv(l));
    mpb_free(check);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&b), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("depth");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, the_broker_refuses_one_level_more_than_the_deepest_value);
    tcase_add_test(tc, the_deepest_value_comes_back_through_every_read_path);
    tcase_add_test(tc, a_monitor_receives_the_deepest_value_as_a_notification);
    tcase_add_test(tc, a_reply_too_deep_to_read_fails_only_its_own_call);
    suite_add_tcase(s, tc);
    tc = tcase_create("pipeline");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, a_pipeline_broken_at_each_position_reads_each_reply_in_order, 0, 2);
    tcase_add_test(tc, the_appends_before_the_break_ran_once);
    suite_add_tcase(s, tc);
    return tb_run(s);
}
