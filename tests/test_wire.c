/* test_wire.c - bad input over a raw socket against a real broker.
 *
 * Each test writes bytes by hand (no libmpbroker on the sending side) and asserts the
 * documented reply: the error kind, whether the connection stays usable, and that
 * nothing changed for anyone else.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
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
    TCase *tcp = tcase_create("tcp");
    tcase_set_timeout(tcp, 60);
    tcase_add_test(tcp, tcp_listener_serves_requests);
    suite_add_tcase(s, tcp);
    return s;
}

int main(void)
{
    return tb_run(wire_suite());
}
