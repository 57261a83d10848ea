/* conn.h - client connections: sockets, buffers, backpressure, parked requests.
 *
 * conn.c reads straight into each connection's mpb_reader (no 4 KiB evbuffer cap, no
 * copy), hands whole messages to dispatch, and writes replies from one output buffer
 * per connection, once per read batch. It knows nothing about methods or objects
 * beyond dropping a dead connection's holds.
 */
#ifndef MPB_CONN_H
#define MPB_CONN_H

#include <event2/event.h>
#include <event2/event_struct.h> /* events embedded in mpb_conn */
#include <msgpack.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "mpb_reader.h"
#include "objects.h"

typedef struct mpb_conn {
    uint64_t id;
    int fd;
    struct event rev, wev;
    mpb_reader in;
    msgpack_sbuffer out; /* replies not yet written: out.data[out_sent, out.size) */
    size_t out_sent;
    msgpack_packer pk; /* writes into out */
    mpb_idmap holds;   /* object id -> hold count */
    mpb_idmap owned;   /* lock/semaphore id -> times acquired by this connection */
    struct mpb_waiter *parked; /* the request waiting (wait.h), or NULL */
    bool is_tcp;
    bool eof;          /* peer closed its side: answer what was read (parked requests
                        * included), then close */
    bool closing;      /* close once the output is written */
    bool read_paused;  /* backpressure: output above the high mark */
    bool in_paused;    /* input held back by a parked request above its high mark */
    bool out_stopped;  /* serving stopped at the output high mark: maybe more to serve */
    bool blocked;      /* a parked request: later requests wait their turn */
    bool commit_wait;  /* replies wait for the round's fsync (conn.c group commit) */
    bool held;         /* persistence failed: unsent replies wait until it recovers */
    struct mpb_conn *commit_next;
    pid_t peer_pid;    /* from SO_PEERCRED on Unix sockets, else 0 */
    uid_t peer_uid;
    char peer[64];     /* printable peer address */
    uint64_t ops;      /* requests handled */
    double since;      /* CLOCK_MONOTONIC seconds at accept */
    bool monitor;      /* receives "monitor" notifications */
    mpb_idmap watching; /* object id -> the object: manager.watch (watch.c) */
    uint64_t monitor_dropped; /* events not sent since the last one that was */
    bool authed;       /* may call every method (auth.c: always, without an authkey) */
    struct mpb_auth *auth; /* handshake state, owned by auth.c; NULL when none */
    /* TLS (--tls-listen): the session over fd, owned; NULL on a plain connection. */
    SSL *ssl;
    struct event tls_timer; /* the TLS handshake's deadline (--auth-timeout) */
    struct event gone_timer; /* parked and not read: looks for the peer's close */
    bool tls_handshaking;   /* no application data before the handshake is done */
    bool tls_failed;        /* a fatal TLS error: no close_notify */
    bool tls_read_wants_write; /* SSL_read needs the socket writable (rare: key update) */
    bool tls_write_wants_read; /* SSL_write needs the socket readable */
    bool plain_on_tls;      /* a plain client on the TLS port: one error reply, close */
    struct mpb_conn *prev, *next;
} mpb_conn;

/* Start serving an accepted, non-blocking socket. */
mpb_conn *conn_new(struct event_base *base, int fd, bool is_tcp);
/* Serve c (just made by conn_new) over TLS: the handshake runs first, bounded by
 * --auth-timeout. False when out of memory (c is then closed). */
bool conn_start_tls(mpb_conn *c);
/* Output was appended from outside this connection's own callbacks (a parked request
 * answered by another client's action): write it soon. */
void conn_schedule_flush(mpb_conn *c);
/* Is c's peer known to have closed its socket, though c is open? Asked before
 * handing c's parked request something that would be lost unread (a queue item):
 * c may not be reading (after a half-close, or paused by backpressure), so its read
 * event would not tell. When true, c closes at its next callback. */
bool conn_peer_left(mpb_conn *c);
/* The same asked of every connection, reading or not (one poll(2)): for a hand-off
 * that must never reach a dead peer, even one whose read event is still pending in
 * this loop round (a channel rendezvous, a pipe end). */
bool conn_peer_gone(mpb_conn *c);
/* A parked request was answered: resume reading this connection's requests. */
void conn_unblock(mpb_conn *c);
/* Close every connection (at exit), writing what output the sockets take at once. */
void conn_close_all(void);
/* Graceful stop: read nothing more, answer the requests already read, write every
 * reply (up to `seconds` for slow readers), closing each connection once done. Runs
 * the loop until all are closed or the time is up. */
void conn_drain_all(struct event_base *base, double seconds);
/* Serve the whole requests already buffered in c's reader, as a read would (output
 * stays in c->out). For the fuzzer; never frees c. */
void conn_serve(mpb_conn *c);
/* Close c now (its holds, ownership and parked request go). Never from inside
 * another connection's callback. */
void conn_close(mpb_conn *c);
/* conn_close after a TooManyClients error reply saying why, written if the socket
 * takes it at once: plain, or through TLS once its handshake is done (plain bytes in
 * a TLS stream read as a broken record; a TLS handshake under way gets nothing). */
void conn_refuse(mpb_conn *c, const char *why);
/* Persistence failed (persist.c): every reply not yet sent may acknowledge a write
 * that is not stored, so every connection with unsent output keeps it until
 * conn_release_held, called once the whole state is stored again. */
void conn_hold_unsent(void);
void conn_release_held(void);
size_t conn_count(void);
mpb_conn *conn_first(void);

#endif
