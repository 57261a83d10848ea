/* server.h - what dispatch and the type files share: the request being served, the
 * reply and argument helpers, the broker's configuration and handler prototypes.
 *
 * A handler has one signature, void h(mpb_req *r), and ends in exactly one of: a
 * result written (reply_*), an error written (reply_error), or the request parked.
 * It never touches a socket.
 */
#ifndef MPB_SERVER_H
#define MPB_SERVER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "mpb_errors.h"
#include "mpb_methods.h"
#include "mpb_value.h"
#include "objects.h"

typedef struct mpb_config {
    const char *socket_path; /* Unix socket, or NULL for none */
    const char *tcp[8];      /* "HOST:PORT" listen addresses */
    int ntcp;
    size_t max_msg;
    int max_depth;
    bool quiet;
    /* Security and limits (auth.c, limits.c): */
    const unsigned char *authkey; /* NULL: no authentication; owned (read at start) */
    size_t authkey_len;
    size_t max_clients;    /* connections served at once */
    size_t max_output;     /* unsent output per connection, bytes (0: unlimited) */
    double output_timeout; /* s a connection's output may stall (0: forever) */
    size_t max_memory;     /* bytes of stored data (0: unlimited) */
    double auth_timeout;   /* s to complete the handshake (0: forever) */
    size_t max_handshakes; /* connections authenticating at once */
    size_t max_handshakes_per_peer; /* the same, from one uid (Unix) or IP address */
    /* The slow log (slowlog.c): */
    uint64_t slowlog_us; /* record requests that run this long or longer */
    size_t slowlog_len;  /* entries kept (0: no slow log) */
    /* Items a read may answer in one reply (limits_reply_items; 0: unlimited). */
    size_t max_op_items;
} mpb_config;

#define MPB_DEFAULT_SLOWLOG_US 10000
#define MPB_DEFAULT_SLOWLOG_LEN 128
/* --max-op-items: 1M (2^20, as the option's M suffix reads): a reply that big takes
 * tens of milliseconds to build, so no whole-container read holds the loop longer. */
#define MPB_DEFAULT_MAX_OP_ITEMS ((size_t)1 << 20)

extern mpb_config g_config;
extern bool g_shutdown_requested;
extern uint64_t g_ops_total;

/* main.c: stop the loop after this iteration (replies already queued are written). */
void server_stop(void);

typedef struct mpb_req {
    mpb_conn *conn;
    uint64_t msgid;
    bool notify;  /* a notification: nothing is written back */
    bool replied; /* set by the reply functions */
    bool failed;  /* the reply was an error */
    int method;   /* mpb_method_id */
    const mpb_method_info *info;
    mpb_object *self;            /* params[0] resolved, or NULL for manager.* */
    const msgpack_object *args;  /* params after the reference (all, for manager.*) */
    uint32_t nargs;
    size_t mem_granted; /* bytes --max-memory let this request bring so far (limits.c) */
    msgpack_packer *pk; /* where replies go instead of the connection (a batch's ops) */
    struct mpb_waiter *waiter; /* answering this parked request (wait_req), or NULL */
} mpb_req;

/*--- dispatch.c ---*/
/* Serve one decoded message (request, notification or stray response). */
void dispatch_message(mpb_conn *c, const msgpack_object *msg);
/* Check params and run the handler of r->method (r->conn, msgid, info set); logs
 * the call for persistence when it changed state. */
void dispatch_run(mpb_req *r, const msgpack_object *params);
/* Reply [1, nil, [kind, message], nil]: for input that has no usable msgid. */
void dispatch_reply_bad(mpb_conn *c, bool has_msgid, uint64_t msgid, mpb_errkind kind,
                        const char *msg);

/* Replies: each writes the whole response. The packer variant writes the header and
 * returns the packer; the caller packs exactly one result value. */
msgpack_packer *reply_begin(mpb_req *r);
void reply_nil(mpb_req *r);
void reply_bool(mpb_req *r, bool b);
void reply_int(mpb_req *r, int64_t i);
void reply_value(mpb_req *r, const mpb_value *v);
void reply_ref(mpb_req *r, mpb_ref ref);
void reply_str(mpb_req *r, const char *s);
void reply_error(mpb_req *r, mpb_errkind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Arguments (index into r->args). On failure each replies with the error itself and
 * returns false, so handlers read: if (!arg_int(r, 0, &i)) return; */
bool arg_int(mpb_req *r, uint32_t i, int64_t *out);
/* An optional int: nil or absent gives def. */
bool arg_int_opt(mpb_req *r, uint32_t i, int64_t def, bool *given, int64_t *out);
bool arg_str(mpb_req *r, uint32_t i, const char **p, size_t *n);
bool arg_bool(mpb_req *r, uint32_t i, bool *out);
/* Deep copy into *out (caller owns it): checks depth and that every reference inside
 * is live (NoSuchObject). */
bool arg_value(mpb_req *r, uint32_t i, mpb_value *out);
/* Like arg_value, and the value must be hashable (a dict key). */
bool arg_key(mpb_req *r, uint32_t i, mpb_value *out);
/* The object argument 0 (a reference) names; NULL after replying TypeError or
 * NoSuchObject. For manager.* methods, whose object is an argument. */
mpb_object *arg_object(mpb_req *r);

/* Sequences (type_list.c, also used by array): Python's slice.indices() over
 * r->args[first..] (START STOP [STEP], each nil or int); returns the slice length
 * or -1 after replying. seq_index: r->args[i] as an index into len items, negative
 * counting from the end; -1 after replying IndexError "<what> index out of range". */
int64_t seq_slice(mpb_req *r, uint32_t first, bool has_step, int64_t len, int64_t *start,
                  int64_t *stop, int64_t *step);
int64_t seq_index(mpb_req *r, uint32_t i, int64_t len, const char *what);
/* getitem on a sequence: r->args is INDEX or START STOP [STEP]; replies. */
void seq_getitem(mpb_req *r, const mpb_array *a, const char *what);
/* Cursor params START [COUNT] at r->args[i..] (list.slice, dict.items, set.items):
 * START an int >= 0, COUNT an int >= 1, nil or absent (no limit); a COUNT over
 * --max-op-items is lowered to it (a chunk is a hint: NEXT says where to go on).
 * false after replying TypeError/ValueError. */
bool arg_cursor(mpb_req *r, uint32_t i, int64_t *start, int64_t *count);

/* Typecodes (type_value.c), shared by value and array. */
bool typecode_valid(char tc);
/* *out = in converted for typecode tc (owned); or an error kind with err set. */
mpb_errkind typecode_coerce(char tc, const mpb_value *in, mpb_value *out, char *err, size_t errlen);
mpb_value typecode_zero(char tc);
/* A typecode string argument; false after replying ValueError. */
bool arg_typecode(mpb_req *r, const msgpack_object *o, char *tc);
/* r->args[i] converted for typecode tc; false after replying. */
bool arg_typed(mpb_req *r, uint32_t i, char tc, mpb_value *out);

/* Numbers, shared by dict.incr / namespace.incr: *cur = *cur + delta, Python-style
 * (int + int stays int, computed in 128 bits: OverflowError only for a result outside
 * [-2**63, 2**64-1]; any float makes a float). */
mpb_errkind value_add(mpb_value *cur, const mpb_value *delta, char *err, size_t errlen);

/*--- admin.c ---*/
void admin_init(struct event_base *base);
double admin_uptime(void);
/* A request is about to run on `from` (m NULL when the method is unknown): tell the
 * monitors. */
void admin_monitor_feed(const mpb_conn *from, const mpb_method_info *m, const char *name,
                        size_t name_len, const msgpack_object *params);
void admin_conn_closed(mpb_conn *c);
/* A connection opened (conn_new): 0, or -1 on allocation failure (then refuse it). */
int admin_conn_opened(mpb_conn *c);

/*--- slowlog.c ---*/
/* A request ran for duration_us (dispatch): keep it if it was slow. */
void slowlog_record(const mpb_conn *c, const mpb_method_info *m, const msgpack_object *params,
                    uint64_t duration_us);
/* At exit. */
void slowlog_free(void);

/* Paged listings (manager.objects, manager.clients): rows per page when COUNT is not
 * given, the most a page holds (a larger COUNT is a hint, as Redis's SCAN COUNT), and
 * the most entries one page examines while filtering. The one-reply forms (no START)
 * answer only while everything fits in one page. */
#define MPB_PAGE_DEFAULT 100
#define MPB_PAGE_MAX 1000
#define MPB_SCAN_BUDGET 10000

/* Handlers, from the method table. */
#define MPB_METHOD(id, name, handler, self, min, max, flags, args, doc, cost) \
    void handler(mpb_req *r);
#include "mpb_methods.def"
#undef MPB_METHOD

/* Initial contents for manager.create/open, per type (in each type file): r->args[i]
 * is the initial value (nil for empty); replies with an error and returns false on
 * bad input, leaving o empty. */
/* Fill a new object from INITIAL r->args[i] through its type's init_from
 * (type_manager.c). */
bool manager_init_object(mpb_req *r, mpb_object *o, uint32_t i);
static inline bool has_initial(const mpb_req *r, uint32_t i)
{
    return i < r->nargs && r->args[i].type != MSGPACK_OBJECT_NIL;
}
bool list_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool dict_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool ns_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool queue_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool lock_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool sem_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool cond_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool event_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool barrier_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool value_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool array_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool set_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool pipe_init_from(mpb_req *r, mpb_object *o, uint32_t i);
bool channel_init_from(mpb_req *r, mpb_object *o, uint32_t i);

/* Timeout argument r->args[i] in seconds: absent or nil is -1 (wait forever).
 * Negative or not a number: ValueError/TypeError replied, false returned. */
bool arg_timeout(mpb_req *r, uint32_t i, double *out);
/* An optional bool argument r->args[i], default def. */
bool arg_bool_opt(mpb_req *r, uint32_t i, bool def, bool *out);

/* Shared by dict and namespace (type_dict.c). map_store: store v under k, taking both
 * (left nil), replacing and releasing an old value; 0, or -1 on allocation failure
 * (then the caller still owns both). */
int map_store(mpb_map *m, mpb_value *k, mpb_value *v);
/* The read-modify-write operations on a map. key is owned by the callee. delta_i / expected_i index r->args. */
void map_incr(mpb_req *r, mpb_map *m, mpb_value *key, uint32_t delta_i);
void map_cas(mpb_req *r, mpb_map *m, mpb_value *key, uint32_t expected_i);
/* Store every pair of r->args[i] (a map, or an array of [key, value] pairs) into m,
 * all or nothing. */
bool map_update_from(mpb_req *r, mpb_map *m, uint32_t i, bool str_keys);
/* Reply [ITEMS, NEXT] for cursor params at r->args[first..]: up to COUNT keys (or
 * [key, value] pairs) of m from logical position START (mpb_map_seek), NEXT the
 * position to go on from, nil when no entry follows. (dict.items, set.items) */
void map_reply_chunk(mpb_req *r, const mpb_map *m, bool pairs, uint32_t first);

#endif
