/* admin.c - looking at the broker itself: manager.stats, manager.clients and
 * manager.monitor (a redis-cli MONITOR for msgpack-rpc).
 *
 * A monitoring connection gets, for every request another connection makes, the
 * notification [2, "monitor", [{time, conn, peer, method, params}]]. A monitor that
 * does not read falls behind: past MONITOR_MAX_BACKLOG of unsent output its events are
 * dropped (and counted in "dropped" of the next one it gets) rather than buffered.
 */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "mpb_codec.h"
#include "persist.h"
#include "seqidx.h"
#include "server.h"
#include "wait.h"

#define MONITOR_MAX_BACKLOG (16u << 20)

static size_t nmonitors;
static mpb_seqidx conn_index; /* id -> mpb_conn, for paging manager.clients */
static double started; /* mpb_mono_seconds() at admin_init */
static uint64_t ops_at_last_tick, ops_last_second;

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    ops_last_second = g_ops_total - ops_at_last_tick;
    ops_at_last_tick = g_ops_total;
}

void admin_init(struct event_base *base)
{
    started = mpb_mono_seconds();
    static struct event tick;
    struct timeval one = {1, 0};
    event_assign(&tick, base, -1, EV_PERSIST, on_tick, NULL);
    event_add(&tick, &one);
}

double admin_uptime(void)
{
    return mpb_mono_seconds() - started;
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

/* Resident set size in bytes, from /proc; 0 when unknown. */
static uint64_t rss_bytes(void)
{
    unsigned long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

/* manager.stats */
void manager_stats(mpb_req *r)
{
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_map(pk, 16);
    pack_key(pk, "pid");
    msgpack_pack_int64(pk, getpid());
    pack_key(pk, "uptime");
    msgpack_pack_double(pk, admin_uptime());
    pack_key(pk, "connections");
    msgpack_pack_uint64(pk, conn_count());
    pack_key(pk, "objects");
    msgpack_pack_uint64(pk, objects_count());
    pack_key(pk, "ops_total");
    msgpack_pack_uint64(pk, g_ops_total);
    pack_key(pk, "ops_per_sec");
    msgpack_pack_uint64(pk, ops_last_second);
    pack_key(pk, "rss_bytes");
    msgpack_pack_uint64(pk, rss_bytes());
    pack_key(pk, "max_message");
    msgpack_pack_uint64(pk, g_config.max_msg);
    pack_key(pk, "max_depth");
    msgpack_pack_int32(pk, g_config.max_depth);
    pack_key(pk, "memory_used"); /* what --max-memory limits */
    msgpack_pack_uint64(pk, objects_mem_used());
    pack_key(pk, "max_memory");
    msgpack_pack_uint64(pk, g_config.max_memory);
    pack_key(pk, "id_space"); /* of the next object id (PROTOCOL.md "References") */
    msgpack_pack_uint64(pk, mpb_ref_space(objects_peek_next_id()));
    pack_key(pk, "persistence"); /* "off", "ok", or "read-only" after a disk failure */
    pack_key(pk, persist_state());
    pack_key(pk, "persistence_error");
    if (persist_failure()) pack_key(pk, persist_failure());
    else msgpack_pack_nil(pk);
    pack_key(pk, "persistence_failures");
    msgpack_pack_uint64(pk, persist_failures());
    pack_key(pk, "objects_scanned"); /* work of paged listings: what stats itself never adds to */
    msgpack_pack_uint64(pk, g_objects_scanned);
}

/* nil, or {method, ref} of a parked request, with the pipe end a pipe.recv/poll waits
 * at ("end") or the number of guards of a manager.select ("guards"). */
static void pack_waiting(msgpack_packer *pk, const mpb_waiter *w)
{
    if (!w) {
        msgpack_pack_nil(pk);
        return;
    }
    bool pipe = w->method == MPB_M_PIPE_RECV || w->method == MPB_M_PIPE_POLL;
    bool select = w->method == MPB_M_MANAGER_SELECT;
    msgpack_pack_map(pk, pipe || select ? 3 : 2);
    pack_key(pk, "method");
    pack_key(pk, mpb_methods[w->method].name);
    pack_key(pk, "ref");
    mpb_ref_pack(pk, w->obj->id);
    if (pipe || select) {
        pack_key(pk, pipe ? "end" : "guards");
        msgpack_pack_int64(pk, w->n);
    }
}

static void pack_client_row(msgpack_packer *pk, const mpb_conn *c, const mpb_conn *self)
{
    msgpack_pack_map(pk, 11);
    pack_key(pk, "id");
    msgpack_pack_uint64(pk, c->id);
    pack_key(pk, "peer");
    pack_key(pk, c->peer);
    pack_key(pk, "pid");
    msgpack_pack_int64(pk, c->peer_pid);
    pack_key(pk, "uid");
    msgpack_pack_int64(pk, c->is_tcp ? -1 : (int64_t)c->peer_uid);
    pack_key(pk, "age");
    msgpack_pack_double(pk, mpb_mono_seconds() - c->since);
    pack_key(pk, "ops");
    msgpack_pack_uint64(pk, c->ops);
    pack_key(pk, "holds");
    msgpack_pack_uint64(pk, c->holds.sum); /* kept by objects_hold: O(1) */
    pack_key(pk, "parked");
    msgpack_pack_uint32(pk, c->blocked ? 1 : 0);
    pack_key(pk, "waiting"); /* what its parked request waits on: the debug view */
    pack_waiting(pk, c->parked);
    pack_key(pk, "monitor");
    if (c->monitor) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    pack_key(pk, "self");
    if (c == self) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

/* manager.clients [START [COUNT]]: without START every connection (while that is at
 * most a page), with START a page [ROWS, NEXT] in connection id order. */
void manager_clients(mpb_req *r)
{
    int64_t start = 0, count = MPB_PAGE_MAX;
    bool paged = r->nargs > 0;
    if (paged) {
        if (!arg_cursor(r, 0, &start, &count)) return;
        if (r->nargs < 2 || r->args[1].type == MSGPACK_OBJECT_NIL) count = MPB_PAGE_DEFAULT;
        if (count > MPB_PAGE_MAX) count = MPB_PAGE_MAX;
    } else if (conn_count() > MPB_PAGE_MAX) {
        reply_error(r, MPB_E_TOO_LARGE,
                    "manager.clients: %zu connections, over %d in one reply: page with "
                    "START [COUNT] (docs/PROTOCOL.md)", conn_count(), MPB_PAGE_MAX);
        return;
    }
    /* Connection ids grow: the index is already sorted by id, holes are closed ones. */
    size_t it = seqidx_seek(&conn_index, (uint64_t)start), end = it, n = 0;
    while (n < (size_t)count && seqidx_next(&conn_index, &end)) n++;
    msgpack_packer *pk = reply_begin(r);
    if (paged) msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, n);
    const mpb_seqidx_entry *e;
    while (it < end && (e = seqidx_next(&conn_index, &it))) pack_client_row(pk, e->ptr, r->conn);
    if (!paged) return;
    size_t more = end;
    if ((e = seqidx_next(&conn_index, &more))) msgpack_pack_uint64(pk, e->key);
    else msgpack_pack_nil(pk);
}

int admin_conn_opened(mpb_conn *c) { return seqidx_append(&conn_index, c->id, c); }

/* manager.monitor */
void manager_monitor(mpb_req *r)
{
    if (!r->conn->monitor) {
        r->conn->monitor = true;
        nmonitors++;
    }
    reply_nil(r);
}

void admin_conn_closed(mpb_conn *c)
{
    seqidx_remove(&conn_index, c->id);
    if (c->monitor) nmonitors--;
}

void admin_monitor_feed(const mpb_conn *from, const mpb_method_info *m, const char *name,
                        size_t name_len, const msgpack_object *params)
{
    if (nmonitors == 0) return;
    struct timeval now;
    gettimeofday(&now, NULL);
    for (mpb_conn *c = conn_first(); c; c = c->next) {
        if (!c->monitor || c == from) continue;
        if (c->out.size - c->out_sent > MONITOR_MAX_BACKLOG) {
            c->monitor_dropped++;
            continue;
        }
        msgpack_packer *pk = &c->pk;
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint8(pk, 2);
        pack_key(pk, "monitor");
        msgpack_pack_array(pk, 1);
        msgpack_pack_map(pk, c->monitor_dropped ? 6 : 5);
        pack_key(pk, "time");
        msgpack_pack_double(pk, (double)now.tv_sec + (double)now.tv_usec / 1e6);
        pack_key(pk, "conn");
        msgpack_pack_uint64(pk, from->id);
        pack_key(pk, "peer");
        pack_key(pk, from->peer);
        pack_key(pk, "method");
        if (m) pack_key(pk, m->name);
        else msgpack_pack_str_with_body(pk, name, name_len);
        pack_key(pk, "params");
        msgpack_pack_object(pk, *params);
        if (c->monitor_dropped) {
            pack_key(pk, "dropped");
            msgpack_pack_uint64(pk, c->monitor_dropped);
            c->monitor_dropped = 0;
        }
        conn_schedule_flush(c);
    }
}
