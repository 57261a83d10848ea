/* mpb_reader.h - splits a byte stream into msgpack messages; never touches a socket.
 *
 * The broker and the client both feed it bytes (mpb_reader_feed, or read() straight
 * into mpb_reader_space + mpb_reader_commit) and take whole messages out with
 * mpb_reader_next. Before msgpack-c sees a message, a scanner walks its headers and
 * enforces the limits msgpack-c lacks: a size cap (an array32 header cannot make us
 * reserve gigabytes, because a message is only decoded once all of its bytes are here,
 * and every element costs at least one byte) and a depth cap (msgpack-c stops at 32
 * levels and calls it out-of-memory; we say TooDeep, and skip just that message, so
 * the connection stays usable).
 */
#ifndef MPB_READER_H
#define MPB_READER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nesting limits (a message's own array is level 1). The broker reads requests up to
 * MPB_READER_MAX_DEPTH levels (its --max-depth is at most this). A request puts an
 * argument at level 3 ([0, id, m, [ARG]]); a reply or notification may carry a stored
 * value up to MPB_REPLY_WRAP_DEPTH levels deeper than that: a dict.items chunk
 * [1, id, nil, [[[KEY, VALUE], ...], NEXT]] and a monitor event
 * [2, "monitor", [{..., params: [ARG]}]] both put it at level 5. So a client must read
 * MPB_REPLY_MAX_DEPTH levels to read every reply the broker can legally send. The
 * reader decodes up to that (msgpack-c alone stops at 32). */
#define MPB_READER_MAX_DEPTH 32
#define MPB_REPLY_WRAP_DEPTH 2
#define MPB_REPLY_MAX_DEPTH (MPB_READER_MAX_DEPTH + MPB_REPLY_WRAP_DEPTH)
#define MPB_READER_DEFAULT_MAX_MSG (16u << 20) /* decoded, each element costs msgpack-c 24 bytes */

typedef enum mpb_read_status {
    MPB_READ_MSG = 1,       /* *out holds the next message */
    MPB_READ_NEED = 0,      /* no whole message buffered yet: feed more */
    MPB_READ_TOO_DEEP = -1, /* a whole message nested deeper than max_depth was skipped;
                               skipped_type and skipped_msgid say what it looked like */
    MPB_READ_BAD = -2,      /* malformed or over max_msg: the stream cannot be resynced */
} mpb_read_status;

typedef struct mpb_reader {
    char *buf;
    size_t start, end, cap; /* unread bytes are buf[start, end) */
    size_t max_msg;         /* bytes */
    int max_depth;          /* 1..MPB_REPLY_MAX_DEPTH */
    msgpack_zone zone;      /* reused for every message */
    bool too_large;         /* after MPB_READ_BAD: it was the size limit (else malformed) */
    bool has_skipped_msgid; /* after MPB_READ_TOO_DEEP: it looked like a request */
    int skipped_type;       /* after MPB_READ_TOO_DEEP: 0 request [0, msgid, m, p], 1
                               response [1, msgid, e, r], 2 notification [2, m, p], or -1 */
    uint64_t skipped_msgid; /* of a skipped request or response */
    char errstr[96]; /* after MPB_READ_BAD / MPB_READ_TOO_DEEP: what was wrong */
    /* Private: how far the scanner got into the message at buf[start], so that a
     * message arriving in many small reads is scanned once, not once per read. */
    struct mpb_scan_state {
        size_t off;        /* bytes of the message scanned (whole items only) */
        uint64_t pending;  /* items still to come */
        int depth;         /* open containers with items left */
        int peak;          /* the deepest level reached */
        bool too_deep;
        uint64_t remain[MPB_REPLY_MAX_DEPTH]; /* items left in each open container */
    } scan;
    bool failed; /* private: MPB_READ_BAD is final */
} mpb_reader;

/* 0, or -1 on allocation failure. max_msg 0 means the default; max_depth is clamped
 * to [1, MPB_REPLY_MAX_DEPTH]. */
int mpb_reader_init(mpb_reader *r, size_t max_msg, int max_depth);
void mpb_reader_destroy(mpb_reader *r);
/* Copy n bytes in. 0, or -1 on allocation failure. */
int mpb_reader_feed(mpb_reader *r, const void *p, size_t n);
/* A writable area of at least `want` bytes at the end of the buffer, for read().
 * Returns NULL on allocation failure; *avail gets its real size. */
char *mpb_reader_space(mpb_reader *r, size_t want, size_t *avail);
/* Account for n bytes written into the area from mpb_reader_space. */
void mpb_reader_commit(mpb_reader *r, size_t n);
/* Take the next message. On MPB_READ_MSG, *out is borrowed: it points into the
 * reader's buffer and zone and is valid only until the next call on this reader. */
mpb_read_status mpb_reader_next(mpb_reader *r, msgpack_object *out);
/* Bytes buffered and not yet returned as messages. */
static inline size_t mpb_reader_pending(const mpb_reader *r) { return r->end - r->start; }

/* The scanner alone (exposed for tests and the fuzzer): looks at buf[0, len) and
 * returns the size of the first whole message in *size (MPB_READ_MSG), MPB_READ_NEED,
 * MPB_READ_TOO_DEEP (whole message of *size bytes, too deep) or MPB_READ_BAD. */
mpb_read_status mpb_scan(const char *buf, size_t len, size_t max_msg, int max_depth,
                         size_t *size);

#ifdef __cplusplus
}
#endif
#endif
