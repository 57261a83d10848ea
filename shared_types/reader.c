/* reader.c - splits a byte stream into whole msgpack messages, under size and depth
 * limits, without touching a socket.
 *
 * Bytes arrive through mpb_reader_feed or mpb_reader_space/commit. mpb_reader_next
 * first runs the scanner over the unread bytes: it walks item headers only, counting
 * items still owed (an array of n owes n, a map of n owes 2n), so it finds the end of
 * a message without recursion, refuses a message as soon as it provably exceeds
 * max_msg (every owed item costs at least one byte), and measures nesting against
 * max_depth. Its progress is kept in the reader, so a message trickling in over many
 * reads is scanned once. Only a complete message that passed is handed to msgpack-c,
 * which decodes it into the reader's one reused zone; the objects point into the
 * reader's buffer, which is therefore only compacted at the next call.
 *
 * Turning objects into mpb_values is codec.c's job; sockets are the caller's.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpb_reader.h"

#ifndef MSGPACK_EMBED_STACK_SIZE /* msgpack/unpack_define.h: the unpacker's depth */
#define MSGPACK_EMBED_STACK_SIZE 32
#endif

#define INITIAL_CAP 16384          /* first buffer */
#define SHRINK_ABOVE ((size_t)1 << 20) /* an emptied buffer bigger than this is freed */
#define ZONE_CHUNK 8192            /* msgpack-c's default; the zone keeps one chunk */
#define MAX_MSG_CAP ((size_t)1 << 62) /* keeps the scanner's uint64 sums from wrapping */

typedef struct mpb_scan_state scan_state;

static void scan_reset(scan_state *st)
{
    memset(st, 0, sizeof *st);
    st->pending = 1;
}

static size_t norm_max_msg(size_t max_msg)
{
    if (max_msg == 0)
        return MPB_READER_DEFAULT_MAX_MSG;
    return max_msg > MAX_MSG_CAP ? MAX_MSG_CAP : max_msg;
}

static int norm_max_depth(int d)
{
    return d < 1 ? 1 : (d > MPB_REPLY_MAX_DEPTH ? MPB_REPLY_MAX_DEPTH : d);
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*--- Scanner ---*/

enum { K_SCALAR, K_BYTES, K_ARRAY, K_MAP };

/* What a header says about its item. */
typedef struct head {
    size_t hdr;     /* header bytes */
    int lenbytes;   /* big-endian length field right after the type byte (0: none) */
    int kind;       /* K_* */
    uint64_t count; /* body bytes (K_BYTES) or elements (K_ARRAY / K_MAP) */
} head;

static uint64_t read_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Classify type byte b; false when it is not msgpack (0xc1). */
static bool classify(unsigned b, head *h)
{
    static const unsigned char fixed_size[] = {2, 3, 5, 9}; /* 8/16/32/64-bit payload */
    memset(h, 0, sizeof *h);
    h->hdr = 1;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return true; /* fixints, nil, bools */
    if (b <= 0x8f || (b >= 0x90 && b <= 0x9f)) {
        h->kind = b <= 0x8f ? K_MAP : K_ARRAY;
        h->count = b & 0x0f;
    } else if (b <= 0xbf) {
        h->kind = K_BYTES;
        h->count = b & 0x1f; /* fixstr */
    } else if (b >= 0xcc && b <= 0xd3) {
        h->hdr = fixed_size[(b - 0xcc) & 3]; /* uint8..64, int8..64 */
    } else if (b == 0xca || b == 0xcb) {
        h->hdr = b == 0xca ? 5 : 9;
    } else if (b >= 0xd4 && b <= 0xd8) {
        h->hdr = 2; /* fixext: type byte, then 1..16 bytes */
        h->kind = K_BYTES;
        h->count = 1u << (b - 0xd4);
    } else if (b >= 0xc4 && b <= 0xc6) { /* bin 8/16/32 */
        h->lenbytes = 1 << (b - 0xc4);
        h->hdr = 1 + (size_t)h->lenbytes;
        h->kind = K_BYTES;
    } else if (b >= 0xc7 && b <= 0xc9) { /* ext 8/16/32: length, then type byte */
        h->lenbytes = 1 << (b - 0xc7);
        h->hdr = 2 + (size_t)h->lenbytes;
        h->kind = K_BYTES;
    } else if (b >= 0xd9 && b <= 0xdb) { /* str 8/16/32 */
        h->lenbytes = 1 << (b - 0xd9);
        h->hdr = 1 + (size_t)h->lenbytes;
        h->kind = K_BYTES;
    } else if (b >= 0xdc && b <= 0xdf) { /* array 16/32, map 16/32 */
        h->lenbytes = (b & 1) ? 4 : 2;
        h->hdr = 1 + (size_t)h->lenbytes;
        h->kind = b <= 0xdd ? K_ARRAY : K_MAP;
    } else {
        return false; /* 0xc1, never used */
    }
    return true;
}

/* Count one item of the current message in the depth bookkeeping. */
static void track_depth(scan_state *st, const head *h, int max_depth)
{
    if (st->too_deep)
        return; /* the verdict is in; only the end of the message still matters */
    if (st->depth > 0)
        st->remain[st->depth - 1]--;
    if (h->kind == K_ARRAY || h->kind == K_MAP) {
        /* This container sits at depth + 1, empty or not, as msgpack-c counts. */
        uint64_t items = h->kind == K_MAP ? 2 * h->count : h->count;
        if (st->depth + 1 > max_depth)
            st->too_deep = true;
        else if (st->depth + 1 > st->peak)
            st->peak = st->depth + 1;
        if (!st->too_deep && items > 0)
            st->remain[st->depth++] = items;
    }
    while (st->depth > 0 && st->remain[st->depth - 1] == 0)
        st->depth--;
}

/* Resume scanning the message at p[0, len) from st. On MPB_READ_MSG/TOO_DEEP *size is
 * its length; on BAD *too_large says which failure it was. */
static mpb_read_status scan_resume(scan_state *st, const unsigned char *p, size_t len,
                                   size_t max_msg, int max_depth, size_t *size,
                                   bool *too_large, char *err, size_t errlen)
{
    *size = 0;
    *too_large = false;
    while (st->pending > 0) {
        size_t off = st->off;
        head h;
        if (off >= len)
            return MPB_READ_NEED;
        if (!classify(p[off], &h)) {
            set_err(err, errlen, "malformed msgpack: byte 0x%02x at offset %zu", p[off], off);
            return MPB_READ_BAD;
        }
        if (h.lenbytes > 0) {
            if (len - off < 1 + (size_t)h.lenbytes)
                return MPB_READ_NEED;
            h.count = read_be(p + off + 1, h.lenbytes);
        }
        uint64_t body = h.kind == K_BYTES ? h.count : 0;
        uint64_t items = h.kind == K_MAP ? 2 * h.count : (h.kind == K_ARRAY ? h.count : 0);
        /* The message is at least what is scanned, this item, its elements and the
         * other owed items, one byte each: refuse it before waiting for any of it. */
        if ((uint64_t)off + h.hdr + body + items + (st->pending - 1) > max_msg) {
            *too_large = true;
            set_err(err, errlen, "message over the %zu-byte limit", max_msg);
            return MPB_READ_BAD;
        }
        if (len - off < h.hdr + body)
            return MPB_READ_NEED; /* rescan just this header next time */
        st->off = off + h.hdr + (size_t)body;
        st->pending += items - 1;
        track_depth(st, &h, max_depth);
    }
    *size = st->off;
    return st->too_deep ? MPB_READ_TOO_DEEP : MPB_READ_MSG;
}

mpb_read_status mpb_scan(const char *buf, size_t len, size_t max_msg, int max_depth,
                         size_t *size)
{
    scan_state st;
    bool too_large;
    scan_reset(&st);
    return scan_resume(&st, (const unsigned char *)buf, len, norm_max_msg(max_msg),
                       norm_max_depth(max_depth), size, &too_large, NULL, 0);
}

/* An unsigned integer in any msgpack encoding (signed ones too when >= 0, as msgpack-c
 * reads them as positive). Bytes used, or 0. */
static size_t peek_uint(const unsigned char *p, size_t n, uint64_t *v)
{
    static const unsigned char width[] = {1, 2, 4, 8};
    unsigned b = p[0];
    if (b <= 0x7f) {
        *v = b;
        return 1;
    }
    if (b < 0xcc || b > 0xd3)
        return 0;
    size_t w = width[(b - 0xcc) & 3];
    if (n < 1 + w)
        return 0;
    *v = read_be(p + 1, (int)w);
    if (b >= 0xd0 && (*v >> (8 * w - 1)) != 0)
        return 0; /* negative */
    return 1 + w;
}

/* What the message p[0, n) looks like: a request [0, msgid, m, p] or response
 * [1, msgid, e, r] (*msgid set), a notification [2, m, p], or none of them (-1). */
static int peek_rpc(const unsigned char *p, size_t n, uint64_t *msgid)
{
    size_t off, used, len;
    uint64_t type;
    if (n >= 1 && p[0] >= 0x90 && p[0] <= 0x9f)
        off = 1, len = p[0] & 0x0f;
    else if (n >= 3 && p[0] == 0xdc)
        off = 3, len = (size_t)read_be(p + 1, 2);
    else if (n >= 5 && p[0] == 0xdd)
        off = 5, len = (size_t)read_be(p + 1, 4);
    else
        return -1;
    if (off >= n || (used = peek_uint(p + off, n - off, &type)) == 0)
        return -1;
    off += used;
    if (type == 2 && len == 3)
        return 2;
    if (type > 1 || len != 4 || off >= n || peek_uint(p + off, n - off, msgid) == 0)
        return -1;
    return (int)type;
}

/*--- Reader ---*/

int mpb_reader_init(mpb_reader *r, size_t max_msg, int max_depth)
{
    memset(r, 0, sizeof *r);
    r->max_msg = norm_max_msg(max_msg);
    r->max_depth = norm_max_depth(max_depth);
    scan_reset(&r->scan);
    if (!msgpack_zone_init(&r->zone, ZONE_CHUNK))
        return -1;
    return 0; /* the buffer comes with the first mpb_reader_space */
}

void mpb_reader_destroy(mpb_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->start = r->end = r->cap = 0;
    msgpack_zone_destroy(&r->zone);
}

/* Move the unread bytes to the front. Only here and in space: a message returned by
 * mpb_reader_next points into buf until the next call. */
static void compact_front(mpb_reader *r)
{
    if (r->start == 0)
        return;
    memmove(r->buf, r->buf + r->start, r->end - r->start);
    r->end -= r->start;
    r->start = 0;
}

char *mpb_reader_space(mpb_reader *r, size_t want, size_t *avail)
{
    if (want == 0)
        want = 1;
    if (r->cap - r->end < want) {
        compact_front(r);
        if (r->cap - r->end < want) {
            /* A reader limited to small messages (the broker's before a handshake)
             * starts small. */
            size_t cap = r->cap ? r->cap : r->max_msg < INITIAL_CAP ? r->max_msg : INITIAL_CAP;
            while (cap - r->end < want) {
                if (cap > SIZE_MAX / 2)
                    return NULL;
                cap *= 2;
            }
            char *buf = realloc(r->buf, cap);
            if (buf == NULL)
                return NULL;
            r->buf = buf;
            r->cap = cap;
        }
    }
    *avail = r->cap - r->end;
    return r->buf + r->end;
}

void mpb_reader_commit(mpb_reader *r, size_t n)
{
    r->end += n <= r->cap - r->end ? n : r->cap - r->end;
}

int mpb_reader_feed(mpb_reader *r, const void *p, size_t n)
{
    size_t avail;
    if (n == 0)
        return 0;
    char *dst = mpb_reader_space(r, n, &avail);
    if (dst == NULL)
        return -1;
    memcpy(dst, p, n);
    mpb_reader_commit(r, n);
    return 0;
}

/* All bytes consumed: start over at the front, and give back a buffer that a big
 * message inflated, so an idle connection does not keep megabytes. */
static void reset_empty(mpb_reader *r)
{
    r->start = r->end = 0;
    if (r->cap > SHRINK_ABOVE) {
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
}

static mpb_read_status skip_too_deep(mpb_reader *r, size_t size)
{
    const unsigned char *p = (const unsigned char *)r->buf + r->start;
    r->skipped_type = peek_rpc(p, size, &r->skipped_msgid);
    r->has_skipped_msgid = r->skipped_type == 0;
    snprintf(r->errstr, sizeof r->errstr, "message nested deeper than %d levels",
             r->max_depth);
    r->start += size;
    scan_reset(&r->scan);
    return MPB_READ_TOO_DEEP;
}

/*--- Decoding past msgpack-c's depth ---*/

/* msgpack-c's unpacker stops at MSGPACK_EMBED_STACK_SIZE (32) levels, compiled in. A
 * client reads replies up to MPB_REPLY_MAX_DEPTH, so a message the scanner measured
 * deeper than that is decoded here instead, into the same zone and with strings
 * pointing into the buffer, exactly as msgpack-c would. The scanner has already checked
 * every header and length, and bounded the depth, so the recursion is bounded too;
 * the bounds are checked again anyway. */
typedef struct deep_in {
    const unsigned char *p;
    size_t n, off;
    msgpack_zone *zone;
} deep_in;

static bool deep_take(deep_in *d, size_t k, const unsigned char **at)
{
    if (d->n - d->off < k)
        return false;
    *at = d->p + d->off;
    d->off += k;
    return true;
}

static bool deep_obj(deep_in *d, msgpack_object *o, int depth);

static bool deep_container(deep_in *d, msgpack_object *o, int kind, uint64_t count, int depth)
{
    if (depth >= MPB_REPLY_MAX_DEPTH || count > d->n - d->off)
        return false; /* every element takes at least one byte */
    if (kind == K_ARRAY) {
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)count;
        o->via.array.ptr = count ? msgpack_zone_malloc(d->zone, count * sizeof(msgpack_object)) : NULL;
        if (count && o->via.array.ptr == NULL)
            return false;
        for (uint64_t i = 0; i < count; i++)
            if (!deep_obj(d, &o->via.array.ptr[i], depth + 1))
                return false;
        return true;
    }
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = (uint32_t)count;
    o->via.map.ptr = count ? msgpack_zone_malloc(d->zone, count * sizeof(msgpack_object_kv)) : NULL;
    if (count && o->via.map.ptr == NULL)
        return false;
    for (uint64_t i = 0; i < count; i++)
        if (!deep_obj(d, &o->via.map.ptr[i].key, depth + 1) ||
            !deep_obj(d, &o->via.map.ptr[i].val, depth + 1))
            return false;
    return true;
}

/* A number: fixints, [u]int8..64, float32/64. */
static bool deep_number(deep_in *d, unsigned b, msgpack_object *o)
{
    static const unsigned char width[] = {1, 2, 4, 8};
    const unsigned char *q;
    if (b <= 0x7f || b >= 0xe0) {
        int64_t v = b <= 0x7f ? (int64_t)b : (int64_t)(int8_t)b;
        o->type = v >= 0 ? MSGPACK_OBJECT_POSITIVE_INTEGER : MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = v;
        return true;
    }
    if (b == 0xca || b == 0xcb) {
        if (!deep_take(d, b == 0xca ? 4 : 8, &q))
            return false;
        uint64_t bits = read_be(q, b == 0xca ? 4 : 8);
        if (b == 0xca) {
            uint32_t b32 = (uint32_t)bits;
            float f;
            memcpy(&f, &b32, sizeof f);
            o->type = MSGPACK_OBJECT_FLOAT32;
            o->via.f64 = f;
        } else {
            double f;
            memcpy(&f, &bits, sizeof f);
            o->type = MSGPACK_OBJECT_FLOAT64;
            o->via.f64 = f;
        }
        return true;
    }
    int w = width[(b - 0xcc) & 3];
    if (!deep_take(d, (size_t)w, &q))
        return false;
    uint64_t u = read_be(q, w);
    if (b <= 0xcf) { /* uint8..64 */
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = u;
        return true;
    }
    int64_t v = w == 8 ? (int64_t)u : (int64_t)(u ^ (1ull << (8 * w - 1))) - (int64_t)(1ull << (8 * w - 1));
    o->type = v >= 0 ? MSGPACK_OBJECT_POSITIVE_INTEGER : MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o->via.i64 = v; /* a non-negative one reads as u64 too, as msgpack-c gives it */
    return true;
}

static bool deep_obj(deep_in *d, msgpack_object *o, int depth)
{
    const unsigned char *q;
    head h;
    if (!deep_take(d, 1, &q) || !classify(*q, &h))
        return false;
    unsigned b = *q;
    if (h.lenbytes > 0) {
        if (!deep_take(d, (size_t)h.lenbytes, &q))
            return false;
        h.count = read_be(q, h.lenbytes);
    }
    if (h.kind == K_ARRAY || h.kind == K_MAP)
        return deep_container(d, o, h.kind, h.count, depth);
    if (h.kind == K_BYTES) {
        bool ext = (b >= 0xd4 && b <= 0xd8) || (b >= 0xc7 && b <= 0xc9);
        const unsigned char *t = NULL;
        if ((ext && !deep_take(d, 1, &t)) || !deep_take(d, (size_t)h.count, &q))
            return false;
        if (ext) {
            o->type = MSGPACK_OBJECT_EXT;
            o->via.ext.type = (int8_t)*t;
            o->via.ext.size = (uint32_t)h.count;
            o->via.ext.ptr = (const char *)q;
        } else if (b >= 0xc4 && b <= 0xc6) {
            o->type = MSGPACK_OBJECT_BIN;
            o->via.bin.size = (uint32_t)h.count;
            o->via.bin.ptr = (const char *)q;
        } else {
            o->type = MSGPACK_OBJECT_STR;
            o->via.str.size = (uint32_t)h.count;
            o->via.str.ptr = (const char *)q;
        }
        return true;
    }
    if (b == 0xc0) {
        o->type = MSGPACK_OBJECT_NIL;
        return true;
    }
    if (b == 0xc2 || b == 0xc3) {
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = b == 0xc3;
        return true;
    }
    return deep_number(d, b, o);
}

static bool decode_deep(const char *p, size_t size, msgpack_zone *zone, msgpack_object *out)
{
    deep_in d = {(const unsigned char *)p, size, 0, zone};
    return deep_obj(&d, out, 0) && d.off == size;
}

static mpb_read_status decode_msg(mpb_reader *r, size_t size, msgpack_object *out)
{
    size_t off = 0;
    if (r->scan.peak > MSGPACK_EMBED_STACK_SIZE) {
        if (!decode_deep(r->buf + r->start, size, &r->zone, out)) {
            r->failed = true;
            snprintf(r->errstr, sizeof r->errstr, "cannot decode a message %d levels deep",
                     r->scan.peak);
            return MPB_READ_BAD;
        }
        r->start += size;
        scan_reset(&r->scan);
        return MPB_READ_MSG;
    }
    msgpack_unpack_return rc = msgpack_unpack(r->buf + r->start, size, &off, &r->zone, out);
    if ((rc != MSGPACK_UNPACK_SUCCESS && rc != MSGPACK_UNPACK_EXTRA_BYTES) || off != size) {
        /* The scanner let it through, so this is msgpack-c's own limit or memory. */
        r->failed = true;
        snprintf(r->errstr, sizeof r->errstr, "msgpack-c could not decode the message (%d)",
                 (int)rc);
        return MPB_READ_BAD;
    }
    r->start += size;
    scan_reset(&r->scan);
    return MPB_READ_MSG;
}

mpb_read_status mpb_reader_next(mpb_reader *r, msgpack_object *out)
{
    if (r->failed)
        return MPB_READ_BAD; /* too_large and errstr still describe the failure */
    /* The previous message's objects die here, as documented. */
    msgpack_zone_clear(&r->zone);
    r->has_skipped_msgid = false;
    r->skipped_type = -1;
    if (r->start == r->end) {
        reset_empty(r);
        return MPB_READ_NEED;
    }
    size_t size;
    mpb_read_status st = scan_resume(&r->scan, (const unsigned char *)r->buf + r->start,
                                     r->end - r->start, r->max_msg, r->max_depth, &size,
                                     &r->too_large, r->errstr, sizeof r->errstr);
    switch (st) {
    case MPB_READ_MSG: return decode_msg(r, size, out);
    case MPB_READ_TOO_DEEP: return skip_too_deep(r, size);
    case MPB_READ_BAD: r->failed = true; return st;
    default: return st;
    }
}
