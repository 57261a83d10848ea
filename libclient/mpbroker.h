/* mpbroker.h - libmpbroker, the C client of the mpbroker shared-object broker.
 *
 * The whole public contract is in this header. A context is one connection to one
 * broker; it is not thread-safe (use one per thread, as with hiredis).
 *
 *   mpb_context *c = mpb_connect(NULL);          // $MPBROKER_ADDRESS or the default
 *   if (c == NULL || c->err) { ...c->errstr... }
 *   mpb_ref l;
 *   mpb_create(c, "list", NULL, &l);
 *   mpb_value v = mpb_int(42);
 *   mpb_list_append(c, l, &v);
 *   mpb_free(c);
 *
 * Every call returns MPB_OK (0) or a negative MPB_ERR_* code, and sets c->err,
 * c->errkind (the wire error kind, e.g. "KeyError") and c->errstr (its message). No call
 * prints, aborts or exits. A broker error (MPB_ERR_REPLY) leaves the context usable;
 * MPB_ERR_IO / MPB_ERR_EOF / MPB_ERR_PROTOCOL leave it broken (every later call fails
 * fast with kind "ConnectionError", or reconnects: mpb_enable_reconnect), except where
 * a function says otherwise (a failed flush whose replies can still be read, a reply
 * too deep or of the wrong type for a typed helper, a cut walk).
 *
 * Results written to an mpb_value *out are owned by the caller: free them with
 * mpb_value_free. On error *out is left nil.
 *
 * Pipelining: mpb_append_call queues a request without waiting; mpb_get_reply reads
 * the replies back in order (it flushes first). mpb_call is append + get_reply.
 * Asynchronous calls with callbacks on a libevent loop: mpb_async_connect, below.
 */
#ifndef MPBROKER_H
#define MPBROKER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mpb_errors.h"
#include "mpb_methods.h"
#include "mpb_value.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MPB_OK 0
#define MPB_ERR_IO (-1)       /* socket error; errstr has strerror */
#define MPB_ERR_EOF (-2)      /* the broker closed the connection */
#define MPB_ERR_PROTOCOL (-3) /* the broker sent something we cannot parse */
#define MPB_ERR_OOM (-4)
#define MPB_ERR_REPLY (-5)   /* the broker answered with an error: see errkind, errstr */
#define MPB_ERR_CONNECT (-6) /* could not connect */
#define MPB_ERR_ARG (-7)     /* a bad argument to this library call */
#define MPB_ERR_CUT (-9)     /* mpb_iter_next: a new connection cut the walk; the next call
                                starts it over (the context is fine) */
#define MPB_ERR_INTR (-10)   /* a signal interrupted a blocking wait (mpb_set_interruptible);
                                the calls stay pending and the context is fine */

typedef struct mpb_context {
    int err;           /* last error code, MPB_OK when none */
    char errkind[32];  /* wire error kind ("KeyError"), or "" */
    char errstr[256];  /* human-readable detail */
    int fd;            /* the socket, -1 when not connected */
    struct mpb_context_priv *priv; /* buffers and reader: not for you */
} mpb_context;

/*--- Connecting ---*/
/* Connect to address: "unix:/path", "/path" (a Unix socket), "tcp://HOST:PORT", or
 * "tls://HOST:PORT" (TLS: see mpb_set_tls).
 * NULL means $MPBROKER_ADDRESS when set, else mpb_default_address().
 * On a Unix socket the broker must run as this process's effective uid or as root:
 * another user's broker (one that took the path first, say) is refused with
 * MPB_ERR_CONNECT, kind "AuthError", before a byte is sent. "?peer=USER" after the
 * path (a name or a uid) trusts that user's broker instead, "?peer=any" any broker,
 * as libpq's requirepeer.
 * Always returns a context unless out of memory (NULL): check c->err. Free it with
 * mpb_free. */
mpb_context *mpb_connect(const char *address);
/* As mpb_connect, and authenticate with key[0, len) (docs/PROTOCOL.md,
 * "Authentication"): this context proves it knows the key, then the broker does.
 * key NULL: the key is read from the file named by $MPBROKER_AUTHKEY_FILE (one
 * trailing newline dropped), else taken from $MPBROKER_AUTHKEY; neither set: no
 * handshake. mpb_connect(address) is mpb_connect_with_key(address, NULL, 0). A failed
 * handshake is MPB_ERR_CONNECT with errkind "AuthError". The key is copied (and wiped
 * at mpb_free); a reconnect authenticates again. */
mpb_context *mpb_connect_with_key(const char *address, const void *key, size_t len);
/* TLS ("tls://HOST:PORT" addresses, a broker's --tls-listen). The broker's certificate
 * must chain to ca_file (PEM; NULL: the system's trust store) and name HOST (a DNS
 * name, or an IP address in its IP SANs) unless flags has MPB_TLS_NO_VERIFY_NAME
 * (only for a certificate you cannot fix: anyone with a certificate from that CA can
 * then pose as the broker). cert_file and key_file (PEM; key NULL: in cert_file) are
 * this client's certificate, for a broker with --tls-ca. Until this is called, they
 * come from $MPBROKER_TLS_CA, $MPBROKER_TLS_CERT, $MPBROKER_TLS_KEY and
 * $MPBROKER_TLS_NO_VERIFY_NAME=1; once it is, from its arguments only. Process-wide,
 * for connections opened after it (reconnects included); the strings are copied.
 * A failed TLS handshake is MPB_ERR_CONNECT with errkind "TLSError" and the reason
 * (an expired certificate, a wrong name, an unknown CA, not a TLS port, ...). Under
 * TLS 1.3 the broker judges this client's certificate after the client's handshake
 * is done: its refusal ("certificate required", "unknown ca") comes with the first
 * call (or the authkey handshake), MPB_ERR_IO with errkind "TLSError".
 * MPB_OK or MPB_ERR_OOM. TLS 1.2 and 1.3 only. */
#define MPB_TLS_NO_VERIFY_NAME 1
int mpb_set_tls(const char *ca_file, const char *cert_file, const char *key_file, int flags);
/* fork(). A context inherited through fork() is the parent's until the child first
 * uses it: then (at any call that takes the context, mpb_pending aside) the child
 * drops its copies of what belongs to the parent (the socket, requests queued but not
 * yet sent, calls awaiting replies, replies and notifications already read) and opens
 * a connection of its own (one attempt; after that, as reconnect says). So
 * parent and child never share a socket; a call queued or in flight at fork() is sent
 * and answered once, in the parent only; in the child mpb_pending is 0 and
 * mpb_get_reply has nothing to read (MPB_ERR_ARG) until it makes calls of its own. The
 * parent goes on as if nothing happened. This holds for fork() (pthread_atfork), not
 * for a raw clone() or vfork(). Async contexts: see mpb_async_connect.
 *
 * Reconnect (off by default; this call turns it on or off). With it on, a call made
 * after the broker closed the connection (a restart) first connects again:
 * - Backoff: attempts 10 ms apart, doubling to at most 1 s between attempts, for
 *   max_wait_ms in all (-1: keep the current setting, 30 s at first; 0: one attempt).
 *   The last wait is cut to the time left: the call fails ("ConnectionError", "cannot
 *   reconnect") no later than max_wait_ms after it began (plus one connect attempt).
 * - Authentication is done again with the same key.
 * - Every name this context opened with mpb_open is opened again (one round trip; a
 *   hold of the new connection). If the broker kept its state (--data-dir), the names
 *   have the same references and nothing changes. If it lost its state, each name is
 *   created again empty (the initial value is not sent again), and from then on every
 *   reference that name ever had under an earlier broker is translated to the new one
 *   where it is a call's own parameter (not inside a value). Walks in progress are
 *   cut (see "Iterating in chunks").
 * - A reference never silently changes what it names. Any other reference (an
 *   anonymous object, a name looked up with mpb_lookup, a reference read out of an
 *   object, or one inside a value) goes to the broker as it is: the broker never gives
 *   one id to two objects across its lifetimes (docs/PROTOCOL.md, "References"), so a
 *   reference from a lifetime that lost its state fails with "NoSuchObject" instead of
 *   reaching whatever now has its number. A name deleted and made again while the state
 *   was kept is not translated either: the old reference names the old object.
 *   (These guarantees need a broker that numbers ids in spaces, as this version does.)
 * - Calls are never resent: a call whose reply was lost with the connection fails with
 *   "ConnectionError" (it may or may not have been applied), as do the calls queued
 *   behind it; the next call reconnects. Each lost call keeps its place: mpb_pending
 *   counts it and its own mpb_get_reply reports the loss, in call order, before any
 *   call made since is answered (mpb_call refuses until they are taken), so no reply
 *   is ever taken as another call's. Holds, lock ownership and parked requests of
 *   the old connection are gone with it (the broker dropped them).
 * With reconnect off, calls on a lost connection fail fast with "ConnectionError". */
int mpb_enable_reconnect(mpb_context *c, int enable, int max_wait_ms);
/* Close the connection and free the context. NULL is fine. */
void mpb_free(mpb_context *c);
/* The broker's default Unix socket path: $XDG_RUNTIME_DIR/mpbroker.sock when
 * XDG_RUNTIME_DIR is set, else ${TMPDIR:-/tmp}/mpbroker-$EUID/mpbroker.sock. Written
 * into buf (size n); returns buf. */
char *mpb_default_address(char *buf, size_t n);

/*--- The generic call ---*/
/* Call `method` with params args[0..nargs). The args are borrowed. On success the
 * result is stored in *result (caller frees; may pass NULL to discard it). *result is
 * overwritten, not freed. MPB_ERR_ARG while pipelined replies are unread (take them
 * with mpb_get_reply first), so a call never returns another call's reply. */
int mpb_call(mpb_context *c, const char *method, const mpb_value *args, size_t nargs,
             mpb_value *result);
/* Queue a call without waiting for the reply. */
int mpb_append_call(mpb_context *c, const char *method, const mpb_value *args,
                    size_t nargs);
/* Send everything queued. When the broker closes the connection while we write (a
 * request over its --max-message, a shutdown), the flush fails with "ConnectionError"
 * but the replies the broker sent before closing stay readable: mpb_get_reply then gives
 * each call its own outcome, in order (the calls answered, the one the broker refused
 * with why, e.g. "TooLarge"), and ConnectionError only to the calls it never answered.
 * A broken pipeline therefore never discards a reply that arrived. */
int mpb_flush(mpb_context *c);
/* Flush, then read the reply to the oldest call still unanswered, in order.
 * MPB_ERR_REPLY for an error reply (the pipeline stays in step). MPB_ERR_ARG when
 * no call is outstanding.
 * Depth: every reply a broker can legally send is read (MPB_REPLY_MAX_DEPTH levels,
 * mpb_reader.h: two more than the deepest request, since dict.items chunks and monitor
 * events wrap a stored value two levels deeper than the request that stored it). A
 * reply deeper than that fails its own call with MPB_ERR_PROTOCOL, errkind "TooDeep",
 * and the context stays usable; a notification deeper than that is dropped. */
int mpb_get_reply(mpb_context *c, mpb_value *result);
/* Interruptible mode (off by default; this call turns it on or off). Off, a signal
 * that interrupts a blocking wait (in mpb_call, mpb_flush, mpb_get_reply) is ignored and
 * the wait goes on. On, the wait returns MPB_ERR_INTR (errkind "Interrupted") at once
 * and nothing is lost: every call stays pending, so the caller can look at its signal
 * flags (Python: PyErr_CheckSignals) and then either wait on with mpb_get_reply or give
 * up the connection with mpb_free (the broker then drops a parked request). A signal
 * handler installed with SA_RESTART never interrupts a wait. */
int mpb_set_interruptible(mpb_context *c, int enable);
/* Number of calls sent or queued whose replies have not been read. */
size_t mpb_pending(const mpb_context *c);

/*--- Non-blocking pieces, for an event loop that watches c->fd itself ---*/
/* mpb_flush and mpb_get_reply are these three plus poll(). Queue with mpb_append_call,
 * then:
 * mpb_buffer_write sends what the socket takes now; *done (may be NULL) is set to 1
 *   once everything queued is sent.
 * mpb_buffer_read reads what has arrived, without blocking. An EOF is remembered and
 *   reported by mpb_buffer_take_reply once the replies read before it are taken.
 * mpb_buffer_take_reply takes the oldest call's reply if it is wholly buffered:
 *   *got = 1 and the return is that call's outcome, exactly as from mpb_get_reply;
 *   else *got = 0 and MPB_OK (read more). */
int mpb_buffer_write(mpb_context *c, int *done);
int mpb_buffer_read(mpb_context *c);
int mpb_buffer_take_reply(mpb_context *c, mpb_value *result, int *got);

/*--- Notifications ---*/
/* The broker may send notifications, [2, method, params], that answer no call: after
 * manager.monitor, a "monitor" notification for every request of another connection.
 * Those that arrive while mpb_get_reply / mpb_buffer_take_reply wait for a reply are
 * queued on the context (without limit: a context that subscribes should take them).
 * mpb_get_notification takes the oldest queued one, else waits up to timeout_ms (0: do
 * not wait, -1: no limit) for one to arrive. On success *got = 1, method gets its name
 * (NUL-terminated, truncated to n bytes; may be NULL) and *params its params array
 * (owned by the caller: mpb_value_free; may be NULL to discard). *got = 0 and MPB_OK
 * when the time ran out or a signal interrupted the wait (so the caller can look at
 * its flags). MPB_ERR_ARG while calls await replies and none is queued: take the
 * replies first. A notification that cannot be decoded, or nested deeper than
 * MPB_REPLY_MAX_DEPTH (which no broker of this version sends), is dropped: it answers
 * no call, so the context stays in step and usable. */
int mpb_get_notification(mpb_context *c, int timeout_ms, char *method, size_t n,
                         mpb_value *params, int *got);

/*--- Broker ---*/
/* The typed helpers below are mpb_call with the params of mpb_methods.def. A pointer
 * out-parameter may be NULL to discard the result. A helper whose reply has the wrong
 * type (an int expected, a float came) fails with MPB_ERR_PROTOCOL, kind
 * "ProtocolError", but leaves the context usable: the stream is still in step. */
/* Create an object of type typeid ("list", "dict", "namespace") with an optional
 * initial value (NULL for empty); this connection holds it until mpb_release or
 * disconnect. */
int mpb_create(mpb_context *c, const char *typeid, const mpb_value *initial, mpb_ref *out);
/* Get or create the object with this name. initial is used only when creating. */
int mpb_open(mpb_context *c, const char *typeid, const char *name, const mpb_value *initial,
             mpb_ref *out);
/* Reference of an existing named object (MPB_ERR_REPLY, kind NoSuchObject, if none). */
int mpb_lookup(mpb_context *c, const char *name, mpb_ref *out);
int mpb_release(mpb_context *c, mpb_ref ref);
int mpb_incref(mpb_context *c, mpb_ref ref);
/* Remove a name (the object lives on while held or contained). */
int mpb_delete(mpb_context *c, const char *name);
int mpb_ping(mpb_context *c);
/* Ask the broker to stop. */
int mpb_shutdown(mpb_context *c);

/*--- list ---*/
int mpb_list_append(mpb_context *c, mpb_ref l, const mpb_value *v);
int mpb_list_extend(mpb_context *c, mpb_ref l, const mpb_value *array);
int mpb_list_getitem(mpb_context *c, mpb_ref l, int64_t index, mpb_value *out);
int mpb_list_setitem(mpb_context *c, mpb_ref l, int64_t index, const mpb_value *v);
int mpb_list_pop(mpb_context *c, mpb_ref l, int64_t index, mpb_value *out);
int mpb_list_len(mpb_context *c, mpb_ref l, int64_t *out);
/* The whole list as an MPB_ARRAY value. Past the broker's --max-op-items (default 1M
 * items) this and the other whole-container reads (mpb_dict_copy, mpb_set_copy,
 * mpb_shared_array_tolist, namespace.vars) fail with errkind "TooLarge": walk such a
 * container with the mpb_iter_* functions below. */
int mpb_list_copy(mpb_context *c, mpb_ref l, mpb_value *out);

/*--- dict ---*/
int mpb_dict_setitem(mpb_context *c, mpb_ref d, const mpb_value *key, const mpb_value *v);
int mpb_dict_getitem(mpb_context *c, mpb_ref d, const mpb_value *key, mpb_value *out);
/* def may be NULL (nil). */
int mpb_dict_get(mpb_context *c, mpb_ref d, const mpb_value *key, const mpb_value *def,
                 mpb_value *out);
int mpb_dict_delitem(mpb_context *c, mpb_ref d, const mpb_value *key);
int mpb_dict_len(mpb_context *c, mpb_ref d, int64_t *out);
int mpb_dict_incr(mpb_context *c, mpb_ref d, const mpb_value *key, int64_t delta,
                  int64_t *out);
/* The whole dict as an MPB_MAP value. */
int mpb_dict_copy(mpb_context *c, mpb_ref d, mpb_value *out);

/*--- namespace ---*/
int mpb_ns_setattr(mpb_context *c, mpb_ref ns, const char *name, const mpb_value *v);
int mpb_ns_getattr(mpb_context *c, mpb_ref ns, const char *name, mpb_value *out);
int mpb_ns_delattr(mpb_context *c, mpb_ref ns, const char *name);
/* Atomic add; *out (may be NULL) gets the new value. Integer form. */
int mpb_ns_incr(mpb_context *c, mpb_ref ns, const char *name, int64_t delta, int64_t *out);
/* Atomic add with any number (int or float delta); *out gets the new value. */
int mpb_ns_incr_value(mpb_context *c, mpb_ref ns, const char *name, const mpb_value *delta,
                      mpb_value *out);
/* Compare-and-set; *swapped tells whether NEW was stored. NULL expected or newv
 * means nil. */
int mpb_ns_cas(mpb_context *c, mpb_ref ns, const char *name, const mpb_value *expected,
               const mpb_value *newv, int *swapped);
/* Every attribute as an MPB_MAP value. */
int mpb_ns_vars(mpb_context *c, mpb_ref ns, mpb_value *out);

/*--- Sync types (blocking calls park on the broker; see docs/PROTOCOL.md) ---
 * Timeouts are seconds: < 0 waits forever, 0 does not wait, > 0 waits that long.
 * A blocking call blocks only this context: use one context per waiting thread. */

/* queue / joinablequeue: get on an empty queue past the timeout is MPB_ERR_REPLY
 * with errkind "Empty"; put on a full one "Full". */
int mpb_queue_put(mpb_context *c, mpb_ref q, const mpb_value *item, double timeout);
int mpb_queue_get(mpb_context *c, mpb_ref q, double timeout, mpb_value *out);
int mpb_queue_qsize(mpb_context *c, mpb_ref q, int64_t *out);
int mpb_queue_task_done(mpb_context *c, mpb_ref q);
/* *done (may be NULL): 1 when every item was task_done, 0 on timeout. */
int mpb_queue_join(mpb_context *c, mpb_ref q, double timeout, int *done);

/* lock / rlock / semaphore / condition: *acquired is 1, or 0 after the timeout. A
 * lock belongs to the connection that acquired it; if that connection closes it goes
 * to the next waiter, or with none, anyone may release or take it (docs/PROTOCOL.md,
 * "Blocking calls"). */
int mpb_lock_acquire(mpb_context *c, mpb_ref l, double timeout, int *acquired);
int mpb_lock_release(mpb_context *c, mpb_ref l);
int mpb_sem_acquire(mpb_context *c, mpb_ref s, double timeout, int *acquired);
int mpb_sem_release(mpb_context *c, mpb_ref s);
int mpb_cond_acquire(mpb_context *c, mpb_ref cv, double timeout, int *acquired);
int mpb_cond_release(mpb_context *c, mpb_ref cv);
/* *notified: 1 if notified, 0 if the timeout passed (the lock is held again either way). */
int mpb_cond_wait(mpb_context *c, mpb_ref cv, double timeout, int *notified);
int mpb_cond_notify(mpb_context *c, mpb_ref cv, int64_t n);
int mpb_cond_notify_all(mpb_context *c, mpb_ref cv);

/* event / barrier */
int mpb_event_set(mpb_context *c, mpb_ref e);
int mpb_event_clear(mpb_context *c, mpb_ref e);
int mpb_event_is_set(mpb_context *c, mpb_ref e, int *set);
int mpb_event_wait(mpb_context *c, mpb_ref e, double timeout, int *set);
/* *index: the arrival index; errkind "BrokenBarrierError" when broken. */
int mpb_barrier_wait(mpb_context *c, mpb_ref b, double timeout, int64_t *index);

/* value / array (typed as multiprocessing.Value / Array) */
int mpb_shared_value_get(mpb_context *c, mpb_ref v, mpb_value *out);
int mpb_shared_value_set(mpb_context *c, mpb_ref v, const mpb_value *x);
int mpb_shared_array_getitem(mpb_context *c, mpb_ref a, int64_t index, mpb_value *out);
int mpb_shared_array_setitem(mpb_context *c, mpb_ref a, int64_t index, const mpb_value *x);
int mpb_shared_array_len(mpb_context *c, mpb_ref a, int64_t *out);
int mpb_shared_array_tolist(mpb_context *c, mpb_ref a, mpb_value *out);

/*--- set (elements in insertion order; Python's set semantics) ---*/
int mpb_set_add(mpb_context *c, mpb_ref s, const mpb_value *elem);
int mpb_set_discard(mpb_context *c, mpb_ref s, const mpb_value *elem);
/* MPB_ERR_REPLY, errkind "KeyError", if absent. */
int mpb_set_remove(mpb_context *c, mpb_ref s, const mpb_value *elem);
int mpb_set_contains(mpb_context *c, mpb_ref s, const mpb_value *elem, int *present);
int mpb_set_len(mpb_context *c, mpb_ref s, int64_t *out);
/* Removes and returns the most recently added element ("KeyError" if empty). */
int mpb_set_pop(mpb_context *c, mpb_ref s, mpb_value *out);
/* Every element as an MPB_ARRAY value. */
int mpb_set_copy(mpb_context *c, mpb_ref s, mpb_value *out);
/* Add every element of other: an MPB_ARRAY value, or mpb_refv() of a set, list or
 * dict (its keys). */
int mpb_set_update(mpb_context *c, mpb_ref s, const mpb_value *other);

/*--- Versions, watches and atomic batches (docs/PROTOCOL.md, "Versions, watches and
 * batches") ---*/
/* The object's version: grows by one with each write to it. */
int mpb_version(mpb_context *c, mpb_ref r, int64_t *out);
/* Watch r: after each write to it the broker sends a "changed" notification, read
 * with mpb_next_change (or mpb_get_notification). *version (may be NULL): the version
 * the watch starts from. */
int mpb_watch(mpb_context *c, mpb_ref r, int64_t *version);
int mpb_unwatch(mpb_context *c, mpb_ref r);
/* Wait until r's version is above `version`: *out the new version, or 0 when timeout
 * seconds passed first (timeout < 0: no limit). */
int mpb_wait_change(mpb_context *c, mpb_ref r, int64_t version, double timeout, int64_t *out);
/* One change of a watched object. */
typedef struct mpb_change {
    mpb_ref ref;
    int64_t version;  /* after the write; for an overflow, the first one missed */
    int overflow;     /* 1: changes were dropped (the watcher fell behind): read the
                         object again; method and args are empty */
    char method[48];  /* "dict.setitem" */
    mpb_value args;   /* the write's params after the reference; the caller frees it */
} mpb_change;
/* Take the next change or overflow notification (others, such as monitor events, are
 * skipped), waiting up to timeout_ms (0: not at all, -1: no limit). *got = 1 when one
 * came, else 0. As mpb_get_notification: no calls may await replies. */
int mpb_next_change(mpb_context *c, int timeout_ms, mpb_change *ch, int *got);
/* A batch for manager.atomic: operations added in order (args copied), then sent with
 * mpb_atomic, which answers the array of their results (caller frees) or the failing
 * operation's error ("op N: KIND: message" in errstr, the kind in errkind; nothing of
 * the batch stays). A batch may be sent again (a retry after "Conflict"). */
typedef struct mpb_batch mpb_batch;
mpb_batch *mpb_batch_new(void); /* NULL when out of memory */
/* Add [method, args]: args are the whole params, the reference first. */
int mpb_batch_add(mpb_batch *b, const char *method, const mpb_value *args, size_t nargs);
/* Add manager.expect [r, version]: the batch fails with "Conflict" unless r is still
 * at that version. */
int mpb_batch_expect(mpb_batch *b, mpb_ref r, int64_t version);
size_t mpb_batch_len(const mpb_batch *b);
int mpb_atomic(mpb_context *c, const mpb_batch *b, mpb_value *results);
void mpb_batch_free(mpb_batch *b);

/*--- Iterating in chunks: one round trip per chunk, not per item ---
 * Over a list's items (list.slice), a dict's [key, value] pairs (dict.items) or a
 * set's elements (set.items), `chunk` (<= 0: 1000) per call, fetched lazily by
 * mpb_iter_next. The context stays usable between calls (other calls may be made on
 * it); the iterator must not outlive it. NULL only when out of memory; free with
 * mpb_iter_free (NULL is fine).
 * What a walk sees:
 * - Over one connection: every chunk is taken at one instant; between chunks other
 *   clients' changes show as docs/PROTOCOL.md, "Cursors" says (a dict or set walk sees
 *   every entry present for the whole walk exactly once, across deletions and the
 *   broker compacting its table or its log; a list walk follows indexes).
 * - A walk never goes on across connections: positions belong to one broker process.
 *   When the context connected again since the last chunk (a reconnect, or the first
 *   call in a child of fork()), the next mpb_iter_next returns MPB_ERR_CUT (errkind
 *   "ConnectionError") instead of a chunk and rewinds: the call after it starts the
 *   walk over from the first position, so entries may be seen again, but none is
 *   skipped in silence. Items of a chunk already fetched are still returned first. */
typedef struct mpb_iter mpb_iter;
mpb_iter *mpb_list_iter(mpb_context *c, mpb_ref l, int64_t chunk);
mpb_iter *mpb_dict_iter(mpb_context *c, mpb_ref d, int64_t chunk);
mpb_iter *mpb_set_iter(mpb_context *c, mpb_ref s, int64_t chunk);
/* 1 and *item points at the next item (owned by the iterator, valid until the next
 * call; to keep it, copy the struct and set **item to nil); 0 at the end; MPB_ERR_CUT
 * (see above: calling again starts over); or another negative MPB_ERR_* with the
 * detail on the context (calling again retries the chunk that failed). */
int mpb_iter_next(mpb_iter *it, mpb_value **item);
void mpb_iter_free(mpb_iter *it);

/*--- Asynchronous calls on a libevent loop (async.c; hiredis's async API) ---*/
/* A mpb_async_context is one connection driven by a libevent event_base: calls return
 * at once and their replies arrive in callbacks, in call order. It wraps a blocking
 * context (ac->c: its fd, encoder and reader) and drives it with the mpb_buffer_*
 * steps; never make blocking calls on ac->c yourself. Not thread-safe; one loop.
 *
 *   void done(mpb_async_context *ac, mpb_reply *r, void *priv) {
 *       if (r->err) fprintf(stderr, "%s: %s\n", r->errkind, r->errstr);
 *   }
 *   mpb_async_context *ac = mpb_async_connect(base, NULL);
 *   if (ac == NULL || ac->err) { ...ac->errstr...; mpb_async_free(ac); }
 *   mpb_async_call(ac, "list.append", args, 2, done, NULL);
 *   event_base_dispatch(base);
 *
 * Notifications (manager.watch's changes, manager.monitor's events) go to the callbacks
 * set with mpb_async_watch / mpb_async_set_notification_callback; with none set they
 * stay queued on ac->c, unread. A
 * lost connection ends the context (as in hiredis): do not turn mpb_enable_reconnect on
 * for ac->c, and do not use an async context in a child after fork() (connect anew). */
struct event_base;
typedef struct mpb_async_context mpb_async_context;

/* What a callback receives; valid only until the callback returns. */
typedef struct mpb_reply {
    int err;           /* MPB_OK; MPB_ERR_REPLY (the broker's error, the connection goes
                          on); MPB_ERR_OOM (reply too big to decode, goes on);
                          MPB_ERR_PROTOCOL with errkind "TooDeep" (see mpb_get_reply, goes
                          on); else the connection is lost: errkind "ConnectionError" or
                          "ProtocolError" */
    char errkind[32];  /* "" on success, else "KeyError", "ConnectionError", ... */
    char errstr[256];
    mpb_value value;   /* the result; nil on error. The library frees it after the
                          callback returns: to keep it, move it out (copy the struct and
                          set r->value = mpb_nil()) */
} mpb_reply;

/* Called exactly once per accepted call, with its reply or, if the connection is lost
 * or the context freed first, with a ConnectionError. It may make calls and may free
 * or disconnect ac (the free happens when it returns). */
typedef void mpb_async_fn(mpb_async_context *ac, mpb_reply *reply, void *privdata);
/* Called once when the connection ends, after every pending callback: status MPB_OK
 * after mpb_async_disconnect / mpb_async_free, else the error (ac->errkind/errstr say
 * why). The library frees ac when it returns. */
typedef void mpb_async_disconnect_fn(const mpb_async_context *ac, int status);

struct mpb_async_context {
    int err;          /* last error of a call or of the connection, MPB_OK when none */
    char errkind[32];
    char errstr[256];
    mpb_context *c;   /* the connection underneath (read-only for you) */
    void *data;       /* yours */
    struct mpb_async_priv *priv;
};

/* Connect (as mpb_connect, blocking until connected) and watch the socket on base.
 * Returns NULL only when out of memory; on failure ac->err is set and ac must be
 * freed with mpb_async_free (no callback runs). */
mpb_async_context *mpb_async_connect(struct event_base *base, const char *address);
void mpb_async_set_disconnect_callback(mpb_async_context *ac, mpb_async_disconnect_fn *fn);
/* Queue a call; it is sent when the loop next runs (calls made together leave in one
 * write). args are borrowed and encoded before this returns. fn may be NULL (the
 * reply is dropped). MPB_OK, or an error (ac->err...) and then fn is never called. */
int mpb_async_call(mpb_async_context *ac, const char *method, const mpb_value *args,
                   size_t nargs, mpb_async_fn *fn, void *privdata);
/* Accept no more calls; close and free ac once every pending reply has been delivered
 * (then the disconnect callback gets MPB_OK). */
void mpb_async_disconnect(mpb_async_context *ac);
/* Close now: pending callbacks get a ConnectionError, the disconnect callback MPB_OK,
 * and ac is freed (after the current callback, when called from one). NULL is fine. */
void mpb_async_free(mpb_async_context *ac);
/* Calls whose callbacks have not run yet. */
size_t mpb_async_pending(const mpb_async_context *ac);
/* Notifications [2, method, params] as they arrive: fn gets the method and the params
 * (the library frees them after fn returns; fn may move them out). NULL: none (they
 * stay queued on ac->c). fn may make calls and may free ac. */
typedef void mpb_async_note_fn(mpb_async_context *ac, const char *method, mpb_value *params,
                               void *privdata);
void mpb_async_set_notification_callback(mpb_async_context *ac, mpb_async_note_fn *fn,
                                         void *privdata);
/* Watch r (manager.watch): fn gets each change or overflow of every object this context
 * watches (one fn per context: the last one given), ch valid until it returns. done
 * (may be NULL) gets the reply to manager.watch, the version the watch starts from. */
typedef void mpb_async_change_fn(mpb_async_context *ac, const mpb_change *ch, void *privdata);
int mpb_async_watch(mpb_async_context *ac, mpb_ref r, mpb_async_change_fn *fn, void *privdata,
                    mpb_async_fn *done, void *done_privdata);

#ifdef __cplusplus
}
#endif
#endif
