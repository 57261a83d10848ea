/* fuzz_reader.c - libFuzzer target for the stream reader (shared_types/reader.c) with
 * a client's limits: MPB_REPLY_MAX_DEPTH levels, so that messages deeper than msgpack-c
 * decodes (32) go through the reader's own decoder.
 *
 * Each input is used three ways:
 * - as a byte stream, split in two at a point the first byte picks, read to the end
 *   (every message turned into an mpb_value and its repr, as the client does);
 * - behind a 33-level prefix, so that whatever follows is read by the deep decoder;
 * - differentially: when the input starts with a message msgpack-c decodes (checked by
 *   mpb_scan first: msgpack-c itself has no size limit), that message put at level 2
 *   of a message 33 levels deep must decode to exactly what msgpack-c gave, whole and
 *   fed one byte at a time. A difference aborts.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpb_codec.h"
#include "mpb_reader.h"
#include "mpb_value.h"

#define MAX_MSG (1u << 20)
/* [ [[...32 levels, the innermost empty...]], MESSAGE ]: 33 levels before MESSAGE. */
#define PREFIX_LEN 33

static void make_prefix(unsigned char *p)
{
    p[0] = 0x92;
    memset(p + 1, 0x91, PREFIX_LEN - 2);
    p[PREFIX_LEN - 1] = 0x90;
}

static int same_bytes(const char *a, const char *b, uint32_t n)
{
    return n == 0 || memcmp(a, b, n) == 0; /* msgpack-c gives NULL for empty ones */
}

static int same(const msgpack_object *a, const msgpack_object *b)
{
    if (a->type != b->type) return 0;
    switch (a->type) {
    case MSGPACK_OBJECT_NIL: return 1;
    case MSGPACK_OBJECT_BOOLEAN: return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return a->via.u64 == b->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return a->via.i64 == b->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return memcmp(&a->via.f64, &b->via.f64, sizeof(double)) == 0;
    case MSGPACK_OBJECT_STR:
        return a->via.str.size == b->via.str.size &&
               same_bytes(a->via.str.ptr, b->via.str.ptr, a->via.str.size);
    case MSGPACK_OBJECT_BIN:
        return a->via.bin.size == b->via.bin.size &&
               same_bytes(a->via.bin.ptr, b->via.bin.ptr, a->via.bin.size);
    case MSGPACK_OBJECT_EXT:
        return a->via.ext.type == b->via.ext.type && a->via.ext.size == b->via.ext.size &&
               same_bytes(a->via.ext.ptr, b->via.ext.ptr, a->via.ext.size);
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size) return 0;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!same(&a->via.array.ptr[i], &b->via.array.ptr[i])) return 0;
        return 1;
    case MSGPACK_OBJECT_MAP:
        if (a->via.map.size != b->via.map.size) return 0;
        for (uint32_t i = 0; i < a->via.map.size; i++)
            if (!same(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key) ||
                !same(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val))
                return 0;
        return 1;
    }
    return 0;
}

/* Read every whole message, as a client would use it. */
static void drain(mpb_reader *r)
{
    msgpack_object o;
    mpb_read_status st;
    while ((st = mpb_reader_next(r, &o)) == MPB_READ_MSG || st == MPB_READ_TOO_DEEP) {
        mpb_value v;
        if (st == MPB_READ_MSG &&
            mpb_value_from_object(&o, &v, MPB_REPLY_MAX_DEPTH, NULL, 0) == MPB_E_NONE) {
            free(mpb_value_repr(&v));
            mpb_value_free(&v);
        }
    }
}

static void stream(const uint8_t *data, size_t size)
{
    mpb_reader r;
    if (mpb_reader_init(&r, MAX_MSG, MPB_REPLY_MAX_DEPTH) < 0) return;
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (mpb_reader_feed(&r, data, cut) == 0) drain(&r);
    if (mpb_reader_feed(&r, data + cut, size - cut) == 0) drain(&r);
    mpb_reader_destroy(&r);
}

static void behind_prefix(const uint8_t *data, size_t size)
{
    unsigned char prefix[PREFIX_LEN];
    mpb_reader r;
    make_prefix(prefix);
    if (mpb_reader_init(&r, MAX_MSG, MPB_REPLY_MAX_DEPTH) < 0) return;
    if (mpb_reader_feed(&r, prefix, sizeof prefix) == 0 && mpb_reader_feed(&r, data, size) == 0)
        drain(&r);
    mpb_reader_destroy(&r);
}

/* The deep message m[0, n) must read back as [prefix, *want], whole or byte by byte. */
static void expect_deep(const unsigned char *m, size_t n, const msgpack_object *want, int bytewise)
{
    mpb_reader r;
    msgpack_object o;
    mpb_read_status st = MPB_READ_NEED;
    if (mpb_reader_init(&r, 0, MPB_REPLY_MAX_DEPTH) < 0) return;
    for (size_t i = 0; i < n; i += bytewise ? 1 : n) {
        if (mpb_reader_feed(&r, m + i, bytewise ? 1 : n) < 0) goto out;
        st = mpb_reader_next(&r, &o);
        if (i + (bytewise ? 1 : n) < n && st != MPB_READ_NEED) {
            fprintf(stderr, "fuzz_reader: status %d with %zu of %zu bytes\n", st, i + 1, n);
            abort();
        }
    }
    if (st != MPB_READ_MSG || o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size != 2 ||
        !same(&o.via.array.ptr[1], want)) {
        fprintf(stderr, "fuzz_reader: the deep decoder differs from msgpack-c (status %d: %s)\n",
                st, r.errstr);
        abort();
    }
    if (mpb_reader_next(&r, &o) != MPB_READ_NEED) abort();
out:
    mpb_reader_destroy(&r);
}

static void differential(const uint8_t *data, size_t size)
{
    size_t msg, used = 0;
    if (mpb_scan((const char *)data, size, MAX_MSG, MPB_READER_MAX_DEPTH, &msg) != MPB_READ_MSG)
        return;
    msgpack_zone zone;
    msgpack_object want;
    if (!msgpack_zone_init(&zone, 8192)) return;
    msgpack_unpack_return rc = msgpack_unpack((const char *)data, msg, &used, &zone, &want);
    unsigned char *m = malloc(PREFIX_LEN + msg);
    if (m != NULL && (rc == MSGPACK_UNPACK_SUCCESS || rc == MSGPACK_UNPACK_EXTRA_BYTES) &&
        used == msg) {
        make_prefix(m);
        memcpy(m + PREFIX_LEN, data, msg);
        expect_deep(m, PREFIX_LEN + msg, &want, 0);
        expect_deep(m, PREFIX_LEN + msg, &want, 1);
    }
    free(m);
    msgpack_zone_destroy(&zone);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    stream(data, size);
    behind_prefix(data, size);
    differential(data, size);
    return 0;
}
