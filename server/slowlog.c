/* slowlog.c - the slow log: requests that held the loop longer than --slowlog-us,
 * newest first, in a ring of --slowlog-len entries (Redis's SLOWLOG).
 *
 * The broker is one loop: a request that runs 300 ms stalls every client for 300 ms.
 * dispatch times each request (the handler, and the freeing it caused) and hands the
 * slow ones here; what is recorded is what finding the culprit needs: the method,
 * how big its arguments were, how long it ran, which connection sent it. The argument
 * size is measured only for a request already known to be slow, so a fast request
 * pays two clock reads and nothing else.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "server.h"

typedef struct slow_entry {
    uint64_t id;          /* grows by one per entry ever recorded */
    double time;          /* wall clock at the end of the request, s since the epoch */
    uint64_t duration_us;
    const char *method;   /* the method table's, static */
    uint64_t arg_bytes;   /* params packed: the size of the request's arguments */
    uint32_t nargs;
    uint64_t conn;
    char peer[64];
} slow_entry;

static slow_entry *ring; /* g_config.slowlog_len entries, allocated on first use */
static size_t ring_len;  /* entries held (<= slowlog_len) */
static size_t ring_head; /* where the next one goes */
static uint64_t next_id;

/* Bytes params take in msgpack: walks the arguments (bounded by --max-depth, as the
 * request was). */
static uint64_t packed_size(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
    case MSGPACK_OBJECT_BOOLEAN: return 1;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return o->via.u64 < 128 ? 1 : o->via.u64 < 256 ? 2 : o->via.u64 < 65536 ? 3
               : o->via.u64 <= UINT32_MAX ? 5 : 9;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return o->via.i64 >= -32 ? 1 : o->via.i64 >= -128 ? 2 : o->via.i64 >= -32768 ? 3
               : o->via.i64 >= INT32_MIN ? 5 : 9;
    case MSGPACK_OBJECT_FLOAT32: return 5;
    case MSGPACK_OBJECT_FLOAT64: return 9;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
        uint32_t n = o->via.str.size;
        return n + (n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5);
    }
    case MSGPACK_OBJECT_EXT: return o->via.ext.size + 6;
    case MSGPACK_OBJECT_ARRAY: {
        uint32_t n = o->via.array.size;
        uint64_t s = n < 16 ? 1 : n < 65536 ? 3 : 5;
        for (uint32_t i = 0; i < n; i++) s += packed_size(&o->via.array.ptr[i]);
        return s;
    }
    case MSGPACK_OBJECT_MAP: {
        uint32_t n = o->via.map.size;
        uint64_t s = n < 16 ? 1 : n < 65536 ? 3 : 5;
        for (uint32_t i = 0; i < n; i++)
            s += packed_size(&o->via.map.ptr[i].key) + packed_size(&o->via.map.ptr[i].val);
        return s;
    }
    }
    return 1;
}

void slowlog_record(const mpb_conn *c, const mpb_method_info *m, const msgpack_object *params,
                    uint64_t duration_us)
{
    if (g_config.slowlog_len == 0 || duration_us < g_config.slowlog_us) return;
    if (!ring && !(ring = calloc(g_config.slowlog_len, sizeof *ring))) return;
    slow_entry *e = &ring[ring_head];
    struct timeval now;
    gettimeofday(&now, NULL);
    *e = (slow_entry){
        .id = next_id++,
        .time = (double)now.tv_sec + (double)now.tv_usec / 1e6,
        .duration_us = duration_us,
        .method = m->name,
        .arg_bytes = packed_size(params),
        .nargs = params->via.array.size,
        .conn = c->id,
    };
    snprintf(e->peer, sizeof e->peer, "%s", c->peer);
    ring_head = (ring_head + 1) % g_config.slowlog_len;
    if (ring_len < g_config.slowlog_len) ring_len++;
}

void slowlog_free(void)
{
    free(ring);
    ring = NULL;
    ring_len = ring_head = 0;
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

/* manager.slowlog [COUNT]: the COUNT (10) newest entries, newest first. */
void manager_slowlog(mpb_req *r)
{
    int64_t count;
    if (!arg_int_opt(r, 0, 10, NULL, &count)) return;
    if (count < 0) {
        reply_error(r, MPB_E_VALUE, "manager.slowlog: COUNT must be >= 0");
        return;
    }
    size_t n = (uint64_t)count < ring_len ? (size_t)count : ring_len;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        const slow_entry *e =
            &ring[(ring_head + g_config.slowlog_len - 1 - i) % g_config.slowlog_len];
        msgpack_pack_map(pk, 8);
        pack_key(pk, "id");
        msgpack_pack_uint64(pk, e->id);
        pack_key(pk, "time");
        msgpack_pack_double(pk, e->time);
        pack_key(pk, "duration_us");
        msgpack_pack_uint64(pk, e->duration_us);
        pack_key(pk, "method");
        pack_key(pk, e->method);
        pack_key(pk, "arg_bytes");
        msgpack_pack_uint64(pk, e->arg_bytes);
        pack_key(pk, "nargs");
        msgpack_pack_uint32(pk, e->nargs);
        pack_key(pk, "conn");
        msgpack_pack_uint64(pk, e->conn);
        pack_key(pk, "peer");
        pack_key(pk, e->peer);
    }
}

/* manager.slowlog_reset */
void manager_slowlog_reset(mpb_req *r)
{
    ring_len = ring_head = 0;
    reply_nil(r);
}
