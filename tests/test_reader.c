/* test_reader.c - the stream reader and its scanner, fed bytes with no socket: whole
 * messages, every split point, garbage, size and depth limits, and buffer reuse.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "mpb_reader.h"
#include "mpb_value.h"

/*--- Helpers ---*/

typedef struct bytes {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} bytes;

static void bytes_init(bytes *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void bytes_raw(bytes *b, const void *p, size_t n) { msgpack_sbuffer_write(&b->sb, p, n); }

/* Append v (consumed). */
static void bytes_value(bytes *b, mpb_value v)
{
    ck_assert_int_eq(mpb_value_pack(&b->pk, &v), 0);
    mpb_value_free(&v);
}

static void push(mpb_value *arr, mpb_value item)
{
    ck_assert_int_eq(mpb_value_push(arr, &item), 0);
}

/* depth nested arrays around the int 1. */
static mpb_value nested(int depth)
{
    mpb_value v = mpb_int(1);
    for (int i = 0; i < depth; i++) {
        mpb_value a = mpb_array_value(1);
        push(&a, v);
        v = a;
    }
    return v;
}

/* A request [0, msgid, method, params]. */
static mpb_value request(uint64_t msgid, const char *method, mpb_value params)
{
    mpb_value r = mpb_array_value(4);
    push(&r, mpb_int(0));
    push(&r, mpb_uint(msgid));
    push(&r, mpb_str(method));
    push(&r, params);
    return r;
}

/* Repr of a message, for comparing what two runs decoded. */
static char *repr_of(const msgpack_object *o)
{
    mpb_value v;
    ck_assert_int_eq(mpb_value_from_object(o, &v, 32, NULL, 0), MPB_E_NONE);
    char *s = mpb_value_repr(&v);
    mpb_value_free(&v);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Take every available message; appends their reprs joined by '\n' to *log. Returns
 * the status that stopped it. */
static mpb_read_status drain(mpb_reader *r, char **log, size_t *n)
{
    msgpack_object o;
    mpb_read_status st;
    while ((st = mpb_reader_next(r, &o)) == MPB_READ_MSG || st == MPB_READ_TOO_DEEP) {
        char *s = st == MPB_READ_MSG ? repr_of(&o) : strdup("<too deep>");
        size_t len = strlen(s);
        *log = realloc(*log, *n + len + 2);
        memcpy(*log + *n, s, len);
        *n += len;
        (*log)[(*n)++] = '\n';
        (*log)[*n] = '\0';
        free(s);
    }
    return st;
}

/* A stream with one of each kind of thing, several messages long. */
static void sample_stream(bytes *b)
{
    bytes_init(b);
    mpb_value params = mpb_array_value(2);
    push(&params, mpb_refv(42));
    push(&params, mpb_str("value"));
    bytes_value(b, request(1, "list.append", params));
    mpb_value m = mpb_map_value();
    mpb_value k = mpb_str("k"), v = nested(5);
    ck_assert_int_eq(mpb_map_set(m.v.m, &k, &v, NULL), 1);
    k = mpb_bin("\0\1\2", 3);
    v = mpb_float(2.5);
    ck_assert_int_eq(mpb_map_set(m.v.m, &k, &v, NULL), 1);
    bytes_value(b, request(UINT64_MAX, "dict.update", m));
    char big[300];
    memset(big, 'x', sizeof big);
    bytes_value(b, mpb_strn(big, sizeof big)); /* str16 */
    mpb_value many = mpb_array_value(40);      /* array16 */
    for (int i = 0; i < 40; i++)
        push(&many, i % 2 ? mpb_int(-i * 1000) : mpb_float(i / 3.0));
    bytes_value(b, many);
    bytes_value(b, mpb_nil());
    bytes_value(b, mpb_int(INT64_MIN));
    const unsigned char f32[] = {0xca, 0x3f, 0xc0, 0, 0};
    bytes_raw(b, f32, sizeof f32);
}

static mpb_reader new_reader(size_t max_msg, int max_depth)
{
    mpb_reader r;
    ck_assert_int_eq(mpb_reader_init(&r, max_msg, max_depth), 0);
    return r;
}

/*--- Whole and split messages ---*/

START_TEST(whole_messages_come_out_one_by_one)
{
    bytes b;
    bytes_init(&b);
    bytes_value(&b, request(7, "manager.ping", mpb_array_value(0)));
    bytes_value(&b, mpb_str("two"));
    bytes_value(&b, mpb_int(3));
    mpb_reader r = new_reader(0, 0);
    ck_assert_uint_eq(r.max_msg, MPB_READER_DEFAULT_MAX_MSG);
    ck_assert_int_eq(r.max_depth, 1);
    mpb_reader_destroy(&r);
    r = new_reader(0, 32);
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    msgpack_object o;
    const char *want[] = {"[0, 7, 'manager.ping', []]", "'two'", "3"};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG);
        char *s = repr_of(&o);
        ck_assert_str_eq(s, want[i]);
        free(s);
    }
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    ck_assert_uint_eq(mpb_reader_pending(&r), 0);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(strings_point_into_the_reader_buffer)
{
    bytes b;
    bytes_init(&b);
    bytes_value(&b, mpb_str("zero-copy"));
    mpb_reader r = new_reader(0, 32);
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG);
    ck_assert_int_eq(o.type, MSGPACK_OBJECT_STR);
    ck_assert(o.via.str.ptr > r.buf && o.via.str.ptr < r.buf + r.cap);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(stream_split_at_every_offset_decodes_identically)
{
    bytes b;
    sample_stream(&b);
    char *whole = NULL;
    size_t wn = 0;
    mpb_reader r = new_reader(0, 32);
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    ck_assert_int_eq(drain(&r, &whole, &wn), MPB_READ_NEED);
    mpb_reader_destroy(&r);
    ck_assert_ptr_nonnull(whole);
    for (size_t cut = 0; cut <= b.sb.size; cut++) {
        char *log = NULL;
        size_t n = 0;
        r = new_reader(0, 32);
        ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, cut), 0);
        ck_assert_int_eq(drain(&r, &log, &n), MPB_READ_NEED);
        ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data + cut, b.sb.size - cut), 0);
        ck_assert_int_eq(drain(&r, &log, &n), MPB_READ_NEED);
        ck_assert_msg(log != NULL && strcmp(log, whole) == 0, "split at %zu", cut);
        free(log);
        mpb_reader_destroy(&r);
    }
    free(whole);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(stream_fed_byte_by_byte_decodes_identically)
{
    bytes b;
    sample_stream(&b);
    char *whole = NULL, *log = NULL;
    size_t wn = 0, n = 0;
    mpb_reader r = new_reader(0, 32);
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    drain(&r, &whole, &wn);
    mpb_reader_destroy(&r);
    r = new_reader(0, 32);
    for (size_t i = 0; i < b.sb.size; i++) {
        ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data + i, 1), 0);
        ck_assert_int_eq(drain(&r, &log, &n), MPB_READ_NEED);
    }
    ck_assert_str_eq(log, whole);
    size_t lines = 0;
    for (const char *p = whole; *p; p++)
        lines += *p == '\n';
    ck_assert_uint_eq(lines, 7);
    free(log);
    free(whole);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(space_and_commit_read_straight_into_the_buffer)
{
    bytes b;
    bytes_init(&b);
    bytes_value(&b, request(9, "list.len", mpb_array_value(0)));
    mpb_reader r = new_reader(0, 32);
    size_t avail = 0;
    char *dst = mpb_reader_space(&r, 3, &avail);
    ck_assert_ptr_nonnull(dst);
    ck_assert_uint_ge(avail, 3);
    memcpy(dst, b.sb.data, 3);
    mpb_reader_commit(&r, 3);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    dst = mpb_reader_space(&r, 1 << 20, &avail); /* grows, keeping the 3 bytes */
    ck_assert_ptr_nonnull(dst);
    ck_assert_uint_ge(avail, 1 << 20);
    memcpy(dst, b.sb.data + 3, b.sb.size - 3);
    mpb_reader_commit(&r, b.sb.size - 3);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG);
    char *s = repr_of(&o);
    ck_assert_str_eq(s, "[0, 9, 'list.len', []]");
    free(s);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(many_messages_reuse_the_same_buffer)
{
    bytes b;
    bytes_init(&b);
    for (int i = 0; i < 100; i++) {
        mpb_value params = mpb_array_value(2);
        push(&params, mpb_refv((uint64_t)i));
        push(&params, mpb_str("some payload text"));
        bytes_value(&b, request((uint64_t)i, "list.append", params));
    }
    mpb_reader r = new_reader(0, 32);
    msgpack_object o;
    size_t cap_after_warmup = 0, got = 0;
    for (int round = 0; round < 2000; round++) {
        /* Feed in 1000-byte pieces that cut messages anywhere, draining as we go. */
        for (size_t off = 0; off < b.sb.size; off += 1000) {
            size_t n = b.sb.size - off < 1000 ? b.sb.size - off : 1000;
            ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data + off, n), 0);
            mpb_read_status st;
            while ((st = mpb_reader_next(&r, &o)) == MPB_READ_MSG)
                got++;
            ck_assert_int_eq(st, MPB_READ_NEED);
        }
        if (round == 10)
            cap_after_warmup = r.cap;
    }
    ck_assert_uint_eq(got, 2000 * 100);
    ck_assert_uint_eq(r.cap, cap_after_warmup);
    ck_assert_uint_le(r.cap, 16384);
    ck_assert_uint_eq(mpb_reader_pending(&r), 0);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

/*--- Malformed and oversized ---*/

START_TEST(byte_c1_is_malformed_and_final)
{
    const unsigned char bad[] = {0x92, 0x01, 0xc1};
    mpb_reader r = new_reader(0, 32);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, bad, sizeof bad), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_BAD);
    ck_assert(!r.too_large);
    ck_assert_ptr_nonnull(strstr(r.errstr, "0xc1"));
    const unsigned char good = 0x01;
    ck_assert_int_eq(mpb_reader_feed(&r, &good, 1), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_BAD); /* no resync */
    mpb_reader_destroy(&r);
    size_t size;
    ck_assert_int_eq(mpb_scan((const char *)bad + 2, 1, 0, 32, &size), MPB_READ_BAD);
}
END_TEST

START_TEST(array32_claiming_4e9_items_is_refused_from_its_header)
{
    const unsigned char hdr[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    mpb_reader r = new_reader(0, 32);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, hdr, sizeof hdr), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_BAD);
    ck_assert(r.too_large);
    ck_assert_uint_le(r.cap, 16384); /* nothing reserved for the claimed items */
    mpb_reader_destroy(&r);
    const unsigned char map32[] = {0xdf, 0x80, 0x00, 0x00, 0x00};
    size_t size;
    ck_assert_int_eq(mpb_scan((const char *)map32, sizeof map32, 0, 32, &size), MPB_READ_BAD);
    /* Smaller claims fail against a smaller limit, nested too. */
    const unsigned char inner[] = {0x91, 0xdc, 0x04, 0x00}; /* [array16 of 1024] */
    ck_assert_int_eq(mpb_scan((const char *)inner, sizeof inner, 1000, 32, &size), MPB_READ_BAD);
    ck_assert_int_eq(mpb_scan((const char *)inner, sizeof inner, 2000, 32, &size), MPB_READ_NEED);
}
END_TEST

START_TEST(str32_longer_than_max_msg_is_refused)
{
    const unsigned char str[] = {0xdb, 0x00, 0x00, 0x10, 0x00, 'a'}; /* 4096 bytes claimed */
    mpb_reader r = new_reader(1024, 32);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, str, sizeof str), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_BAD);
    ck_assert(r.too_large);
    mpb_reader_destroy(&r);
    size_t size;
    ck_assert_int_eq(mpb_scan((const char *)str, sizeof str, 8192, 32, &size), MPB_READ_NEED);
    const unsigned char bin[] = {0xc6, 0x7f, 0xff, 0xff, 0xff};
    ck_assert_int_eq(mpb_scan((const char *)bin, sizeof bin, 0, 32, &size), MPB_READ_BAD);
    const unsigned char ext[] = {0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01};
    ck_assert_int_eq(mpb_scan((const char *)ext, sizeof ext, 0, 32, &size), MPB_READ_BAD);
}
END_TEST

START_TEST(message_of_exactly_max_msg_bytes_is_accepted)
{
    bytes b;
    bytes_init(&b);
    char text[100];
    memset(text, 'y', sizeof text);
    bytes_value(&b, request(1, "m", mpb_strn(text, sizeof text)));
    size_t size;
    ck_assert_int_eq(mpb_scan(b.sb.data, b.sb.size, b.sb.size, 32, &size), MPB_READ_MSG);
    ck_assert_uint_eq(size, b.sb.size);
    ck_assert_int_eq(mpb_scan(b.sb.data, b.sb.size, b.sb.size - 1, 32, &size), MPB_READ_BAD);
    /* Every prefix is NEED under the exact limit, never BAD. */
    for (size_t n = 0; n < b.sb.size; n++)
        ck_assert_int_eq(mpb_scan(b.sb.data, n, b.sb.size, 32, &size), MPB_READ_NEED);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

/*--- Depth ---*/

START_TEST(message_at_max_depth_decodes)
{
    bytes b;
    bytes_init(&b);
    bytes_value(&b, request(5, "m", nested(MPB_READER_MAX_DEPTH - 1))); /* 1 + 31 */
    size_t size;
    ck_assert_int_eq(mpb_scan(b.sb.data, b.sb.size, 0, 32, &size), MPB_READ_MSG);
    ck_assert_int_eq(mpb_scan(b.sb.data, b.sb.size, 0, 31, &size), MPB_READ_TOO_DEEP);
    mpb_reader r = new_reader(0, MPB_READER_MAX_DEPTH);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG); /* msgpack-c agrees */
    mpb_value v;
    ck_assert_int_eq(mpb_value_from_object(&o, &v, MPB_READER_MAX_DEPTH, NULL, 0), MPB_E_NONE);
    mpb_value_free(&v);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(one_level_deeper_is_skipped_with_its_msgid)
{
    bytes b;
    bytes_init(&b);
    bytes_value(&b, request(77, "m", nested(MPB_READER_MAX_DEPTH))); /* depth 33 */
    bytes_value(&b, request(UINT64_MAX, "m", nested(MPB_READER_MAX_DEPTH + 5)));
    bytes_value(&b, request(78, "next", mpb_array_value(0)));
    mpb_reader r = new_reader(0, 32);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert(r.has_skipped_msgid);
    ck_assert_uint_eq(r.skipped_msgid, 77);
    ck_assert_ptr_nonnull(strstr(r.errstr, "deeper"));
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert(r.has_skipped_msgid);
    ck_assert_uint_eq(r.skipped_msgid, UINT64_MAX);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG);
    ck_assert(!r.has_skipped_msgid);
    char *s = repr_of(&o);
    ck_assert_str_eq(s, "[0, 78, 'next', []]");
    free(s);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(too_deep_msgid_is_read_in_any_uint_encoding)
{
    /* [0, uint32 70000, "m", [[[1]]]] with max_depth 3; then 0 as uint8. */
    const unsigned char msg1[] = {0x94, 0x00, 0xce, 0x00, 0x01, 0x11, 0x70, 0xa1, 'm',
                                  0x91, 0x91, 0x91, 0x01};
    const unsigned char msg2[] = {0x94, 0xcc, 0x00, 0xd0, 0x09, 0xa1, 'm', 0x91, 0x91, 0x91, 0x01};
    const unsigned char notreq[] = {0x94, 0x01, 0x05, 0xa1, 'm', 0x91, 0x91, 0x91, 0x01};
    mpb_reader r = new_reader(0, 3);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, msg1, sizeof msg1), 0);
    ck_assert_int_eq(mpb_reader_feed(&r, msg2, sizeof msg2), 0);
    ck_assert_int_eq(mpb_reader_feed(&r, notreq, sizeof notreq), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert(r.has_skipped_msgid);
    ck_assert_uint_eq(r.skipped_msgid, 70000);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert(r.has_skipped_msgid);
    ck_assert_uint_eq(r.skipped_msgid, 9);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert(!r.has_skipped_msgid); /* a response [1, 5, ...] has no msgid to answer */
    ck_assert_int_eq(r.skipped_type, 1);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    mpb_reader_destroy(&r);
}
END_TEST

START_TEST(empty_containers_count_toward_depth)
{
    const unsigned char ok[] = {0x91, 0x91, 0x90};           /* [[[]]]: depth 3 */
    const unsigned char deep[] = {0x91, 0x91, 0x91, 0x80};   /* [[[{}]]]: depth 4 */
    const unsigned char wide[] = {0x93, 0x91, 0x90, 0x90, 0x01}; /* [[[]], [], 1] */
    size_t size;
    ck_assert_int_eq(mpb_scan((const char *)ok, sizeof ok, 0, 3, &size), MPB_READ_MSG);
    ck_assert_uint_eq(size, sizeof ok);
    ck_assert_int_eq(mpb_scan((const char *)deep, sizeof deep, 0, 3, &size), MPB_READ_TOO_DEEP);
    ck_assert_uint_eq(size, sizeof deep);
    ck_assert_int_eq(mpb_scan((const char *)wide, sizeof wide, 0, 3, &size), MPB_READ_MSG);
    ck_assert_uint_eq(size, sizeof wide);
    ck_assert_int_eq(mpb_scan((const char *)wide, sizeof wide, 0, 2, &size), MPB_READ_TOO_DEEP);
    const unsigned char scalar = 0x05;
    ck_assert_int_eq(mpb_scan((const char *)&scalar, 1, 0, 1, &size), MPB_READ_MSG);
    ck_assert_uint_eq(size, 1);
}
END_TEST

START_TEST(map_keys_and_values_nest_like_arrays)
{
    /* {[[1]]: 2}: a key array inside the map is depth 2, its inner array depth 3. */
    const unsigned char m[] = {0x81, 0x91, 0x91, 0x01, 0x02};
    size_t size;
    ck_assert_int_eq(mpb_scan((const char *)m, sizeof m, 0, 3, &size), MPB_READ_MSG);
    ck_assert_uint_eq(size, sizeof m);
    ck_assert_int_eq(mpb_scan((const char *)m, sizeof m, 0, 2, &size), MPB_READ_TOO_DEEP);
    ck_assert_int_eq(mpb_scan((const char *)m, sizeof m - 1, 0, 3, &size), MPB_READ_NEED);
}
END_TEST

/* Every scalar encoding and both empty containers, as raw bytes: an array of 26. */
static const unsigned char every_kind[] = {
    0xdc, 0x00, 26,                                     /* array16 header */
    0xc0, 0xc3, 0xc2, 0x00, 0x7f, 0xff, 0xe0,           /* nil true false fixints */
    0xcc, 0x80, 0xcd, 0xff, 0xff, 0xce, 0xff, 0xff, 0xff, 0xff, /* uint8/16/32 */
    0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,       /* uint64 max */
    0xd0, 0x80, 0xd1, 0x80, 0x00, 0xd2, 0x80, 0x00, 0x00, 0x00, /* int8/16/32 min */
    0xd3, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,       /* int64 min */
    0xd0, 0x05,                                         /* int8 holding 5 */
    0xca, 0x40, 0x20, 0x00, 0x00,                       /* float32 2.5 */
    0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,                 /* float64 1.5 */
    0xa3, 'a', 'b', 'c', 0xd9, 0x03, 'x', 'y', 'z',     /* fixstr, str8 */
    0xc4, 0x02, 'h', 'i',                               /* bin8 */
    0xd7, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x07,              /* fixext8: the reference 7 */
    0xc7, 0x08, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x09,        /* ext8: the reference 9 */
    0x81, 0xa1, 'k', 0x01, 0x90, 0x80,                  /* {'k': 1}, [], {} */
};

/* The innermost item of n single-item arrays around it. */
static const msgpack_object *unwrap(const msgpack_object *o, int n)
{
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(o->type, MSGPACK_OBJECT_ARRAY);
        ck_assert_uint_eq(o->via.array.size, 1);
        o = &o->via.array.ptr[0];
    }
    return o;
}

START_TEST(replies_deeper_than_msgpack_c_reads_decode_the_same)
{
    /* A broker reply may nest MPB_REPLY_MAX_DEPTH (34) levels; msgpack-c stops at 32,
     * so the reader decodes such messages itself. Both paths must agree on every kind. */
    const int wraps = MPB_REPLY_MAX_DEPTH - 2; /* + every_kind's array + {'k': 1} */
    mpb_reader r = new_reader(0, MPB_REPLY_MAX_DEPTH);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, every_kind, sizeof every_kind), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG); /* msgpack-c's path */
    char *shallow = repr_of(&o);
    bytes b;
    bytes_init(&b);
    for (int i = 0; i < wraps; i++) bytes_raw(&b, "\x91", 1);
    bytes_raw(&b, every_kind, sizeof every_kind);
    ck_assert_int_eq(mpb_reader_feed(&r, b.sb.data, b.sb.size), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG);
    char *deep = repr_of(unwrap(&o, wraps));
    ck_assert_str_eq(deep, shallow);
    ck_assert_ptr_nonnull(strstr(deep, "18446744073709551615"));
    ck_assert_ptr_nonnull(strstr(deep, "-9223372036854775808"));
    free(deep);
    free(shallow);
    /* Strings point into the buffer, as msgpack-c's do. */
    const msgpack_object *abc = &unwrap(&o, wraps)->via.array.ptr[18];
    ck_assert_int_eq(abc->type, MSGPACK_OBJECT_STR);
    ck_assert(abc->via.str.ptr > r.buf && abc->via.str.ptr < r.buf + r.cap);
    /* One more level is past every legal reply: skipped, and the stream goes on. */
    bytes c;
    bytes_init(&c);
    for (int i = 0; i < wraps + 1; i++) bytes_raw(&c, "\x91", 1);
    bytes_raw(&c, every_kind, sizeof every_kind);
    bytes_raw(&c, every_kind, sizeof every_kind);
    ck_assert_int_eq(mpb_reader_feed(&r, c.sb.data, c.sb.size), 0);
    msgpack_sbuffer_destroy(&c.sb);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_MSG);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    mpb_reader_destroy(&r);
    msgpack_sbuffer_destroy(&b.sb);
}
END_TEST

START_TEST(a_skipped_message_says_whether_it_was_a_response_or_a_notification)
{
    const unsigned char resp[] = {0x94, 0x01, 0xcd, 0x01, 0x00, 0xc0, 0x91, 0x91, 0x91, 0x01};
    const unsigned char note[] = {0x93, 0x02, 0xa1, 'm', 0x91, 0x91, 0x91, 0x01};
    const unsigned char other[] = {0x92, 0x02, 0x91, 0x91, 0x91, 0x01};
    mpb_reader r = new_reader(0, 3);
    msgpack_object o;
    ck_assert_int_eq(mpb_reader_feed(&r, resp, sizeof resp), 0);
    ck_assert_int_eq(mpb_reader_feed(&r, note, sizeof note), 0);
    ck_assert_int_eq(mpb_reader_feed(&r, other, sizeof other), 0);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert_int_eq(r.skipped_type, 1);
    ck_assert_uint_eq(r.skipped_msgid, 256);
    ck_assert(!r.has_skipped_msgid); /* only a request gets an answer */
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert_int_eq(r.skipped_type, 2);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_TOO_DEEP);
    ck_assert_int_eq(r.skipped_type, -1);
    ck_assert_int_eq(mpb_reader_next(&r, &o), MPB_READ_NEED);
    mpb_reader_destroy(&r);
}
END_TEST

/*--- Suite ---*/

static Suite *reader_suite(void)
{
    Suite *s = suite_create("reader");
    struct { const char *name; const TTest *tests[12]; } groups[] = {
        {"stream", {whole_messages_come_out_one_by_one, strings_point_into_the_reader_buffer,
                    stream_split_at_every_offset_decodes_identically,
                    stream_fed_byte_by_byte_decodes_identically,
                    space_and_commit_read_straight_into_the_buffer,
                    many_messages_reuse_the_same_buffer}},
        {"limits", {byte_c1_is_malformed_and_final,
                    array32_claiming_4e9_items_is_refused_from_its_header,
                    str32_longer_than_max_msg_is_refused,
                    message_of_exactly_max_msg_bytes_is_accepted}},
        {"depth", {message_at_max_depth_decodes, one_level_deeper_is_skipped_with_its_msgid,
                   too_deep_msgid_is_read_in_any_uint_encoding,
                   empty_containers_count_toward_depth, map_keys_and_values_nest_like_arrays,
                   replies_deeper_than_msgpack_c_reads_decode_the_same,
                   a_skipped_message_says_whether_it_was_a_response_or_a_notification}},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        TCase *tc = tcase_create(groups[g].name);
        tcase_set_timeout(tc, 30);
        for (size_t i = 0; i < 12 && groups[g].tests[i] != NULL; i++)
            tcase_add_test(tc, groups[g].tests[i]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(reader_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
