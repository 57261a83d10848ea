/* conn.c - client connections: reading, writing, backpressure, closing.
 *
 * Each connection has a raw read event that read()s straight into its mpb_reader and
 * a write event used only while the kernel will not take all the output. Replies to
 * one read batch are written with one write(). A connection whose output passes
 * OUT_HIGH stops being served until it drains below OUT_LOW (a client that does not
 * read its replies cannot make the broker buffer without bound); when it resumes,
 * requests already buffered are served first, since no read event will announce them.
 * A parked request holds back the requests behind it; past IN_HIGH of them, reading
 * stops too until the park ends. After EOF (a half-close) everything read is still
 * served, parked requests included, then the connection closes; a peer gone entirely
 * (peer_gone) has its parked request dropped, so nothing is handed to nobody.
 * Limits (see limits.c): a connection whose unsent output passes --max-output, or
 * takes no byte of it for --output-timeout seconds, is closed: a client that stops
 * reading cannot hold the broker's memory.
 * TLS connections (--tls-listen) take the same path: SSL_read/SSL_write on the same
 * raw socket instead of read()/send() (conn_recv, conn_send), so the buffers, batching
 * and backpressure rules are the same. What TLS adds: the handshake first (with its
 * own deadline); an SSL_read that needs to write or an SSL_write that needs to read
 * (want flags below); and decrypted bytes OpenSSL holds (SSL_pending) that epoll never
 * announces, so the read event is activated by hand while any remain.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "clock.h"
#include "auth.h"
#include "conn.h"
#include "limits.h"
#include "persist.h"
#include "server.h"
#include "tls.h"
#include "wait.h"
#include "watch.h"

#define READ_CHUNK (64 * 1024)
#define OUT_HIGH (4u << 20)
#define OUT_LOW (1u << 20)
/* Input read but held back by a parked request: past this, read no more until the
 * park ends (the socket's buffers, then the sender, hold the rest). */
#define IN_HIGH (4u << 20)

static mpb_conn *conns;
static size_t nconns;
static uint64_t next_conn_id = 1;

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);
static void conn_free(mpb_conn *c);

/* Group commit state (see group_commit_wait). */
static struct event commit_ev;
static bool commit_ev_ready;
static mpb_conn *commit_list;  /* waiting for the next round's fsync */
static mpb_conn *commit_round; /* being written out by on_commit now */

static void on_commit(evutil_socket_t fd, short what, void *arg);

size_t conn_count(void) { return nconns; }
mpb_conn *conn_first(void) { return conns; }

static void peer_describe(mpb_conn *c)
{
    if (!c->is_tcp) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
            c->peer_pid = cred.pid;
            c->peer_uid = cred.uid;
        }
        snprintf(c->peer, sizeof c->peer, "unix:pid=%ld", (long)c->peer_pid);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[48] = "?";
    int port = 0;
    if (getpeername(c->fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *s = (struct sockaddr_in *)&ss;
            evutil_inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
            port = ntohs(s->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
            evutil_inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
            port = ntohs(s->sin6_port);
        }
    }
    snprintf(c->peer, sizeof c->peer, "tcp:%s:%d", host, port);
}

/* msgpack_packer write callback: append to the connection's output buffer. */
static int out_write(void *data, const char *buf, size_t len)
{
    return msgpack_sbuffer_write(data, buf, len);
}

mpb_conn *conn_new(struct event_base *base, int fd, bool is_tcp)
{
    mpb_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (mpb_reader_init(&c->in, g_config.max_msg, g_config.max_depth) < 0) {
        free(c);
        return NULL;
    }
    c->id = next_conn_id++;
    if (admin_conn_opened(c) < 0) { /* listed by manager.clients */
        mpb_reader_destroy(&c->in);
        free(c);
        return NULL;
    }
    c->since = mpb_mono_seconds();
    c->fd = fd;
    c->is_tcp = is_tcp;
    msgpack_sbuffer_init(&c->out);
    msgpack_packer_init(&c->pk, &c->out, out_write);
    event_assign(&c->rev, base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(&c->wev, base, fd, EV_WRITE, on_write, c);
    event_add(&c->rev, NULL);
    if (!commit_ev_ready) {
        event_assign(&commit_ev, base, -1, 0, on_commit, NULL);
        commit_ev_ready = true;
    }
    peer_describe(c);
    auth_conn_new(c);
    if (!g_config.quiet) {
        char uid[32] = ""; /* a TCP peer has none the broker could know */
        if (!c->is_tcp) snprintf(uid, sizeof uid, " uid=%ld", (long)c->peer_uid);
        fprintf(stderr, "mpbroker-server: connection %llu from %s%s%s\n",
                (unsigned long long)c->id, c->peer, uid, c->authed ? "" : " (authenticating)");
    }
    c->next = conns;
    if (conns) conns->prev = c;
    conns = c;
    nconns++;
    return c;
}

static size_t out_pending(const mpb_conn *c) { return c->out.size - c->out_sent; }

/*--- I/O: plain or TLS, with read()/send()'s conventions ---*/

/* An SSL_read/SSL_write of c failed with r: map it to read()'s conventions (0: the
 * peer closed; -1 with errno, EAGAIN: try again when the socket is ready). */
static ssize_t tls_io_failed(mpb_conn *c, int r, bool reading)
{
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (!reading) c->tls_write_wants_read = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        if (reading) c->tls_read_wants_write = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN: /* close_notify (or EOF: SSL_OP_IGNORE_UNEXPECTED_EOF) */
        return 0;
    case SSL_ERROR_SYSCALL:
        c->tls_failed = true;
        if (errno == 0) errno = ECONNRESET;
        return -1;
    default: {
        char err[256];
        c->tls_failed = true;
        if (!g_config.quiet)
            fprintf(stderr, "mpbroker-server: connection %llu (%s): TLS: %s\n",
                    (unsigned long long)c->id, c->peer, tls_error(err, sizeof err, "error"));
        errno = EPROTO;
        return -1;
    }
    }
}

static ssize_t conn_recv(mpb_conn *c, void *buf, size_t n)
{
    if (!c->ssl) return read(c->fd, buf, n);
    size_t got;
    ERR_clear_error();
    int r = SSL_read_ex(c->ssl, buf, n, &got);
    return r == 1 ? (ssize_t)got : tls_io_failed(c, r, true);
}

static ssize_t conn_send(mpb_conn *c, const void *buf, size_t n)
{
    if (!c->ssl) return send(c->fd, buf, n, MSG_NOSIGNAL);
    size_t put;
    ERR_clear_error();
    int r = SSL_write_ex(c->ssl, buf, n, &put);
    return r == 1 ? (ssize_t)put : tls_io_failed(c, r, false);
}

static void on_tls_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mpb_conn *c = arg;
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: connection %llu (%s) did not finish the TLS "
                "handshake within %g s%s: closed\n", (unsigned long long)c->id, c->peer,
                g_config.auth_timeout, c->plain_on_tls ? " (a plain client on the TLS port)" : "");
    conn_close(c); /* a timer callback: no connection's callback is running */
}

bool conn_start_tls(mpb_conn *c)
{
    c->ssl = tls_new_session(c->fd);
    if (!c->ssl) {
        conn_close(c);
        return false;
    }
    c->tls_handshaking = true;
    auth_tls_start(c); /* a stranger until the handshake is done */
    memcpy(c->peer, "tls", 3); /* "tcp:HOST:PORT" -> "tls:HOST:PORT" */
    if (g_config.auth_timeout > 0) {
        double whole = (double)(long)g_config.auth_timeout;
        struct timeval tv = {(time_t)whole,
                             (suseconds_t)((g_config.auth_timeout - whole) * 1e6)};
        evtimer_assign(&c->tls_timer, event_get_base(&c->rev), on_tls_timeout, c);
        evtimer_add(&c->tls_timer, &tv);
    }
    return true;
}

/* Not a TLS ClientHello (0x16, a handshake record) first: a plain msgpack-rpc client
 * on the TLS port. It gets one plain BadRequest saying so, then the connection closes:
 * better than a silent close it could only guess about. It is still a stranger (no
 * certificate, no key): its first message may be at most AUTH_MAX_MSG bytes, and the
 * handshake's deadline stays, or it could hold a connection and --max-message bytes
 * of the broker's memory for ever. */
static bool plain_client(mpb_conn *c)
{
    if (!SSL_in_before(c->ssl)) return false; /* only the first byte tells */
    unsigned char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n != 1 || b == 0x16) return false;
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->tls_handshaking = false;
    c->plain_on_tls = true;
    if (c->in.max_msg > AUTH_MAX_MSG) c->in.max_msg = AUTH_MAX_MSG;
    return true;
}

/* Advance c's TLS handshake: 1 done, 0 not yet (waiting for the socket), -1 failed
 * (logged; the caller frees c). */
static int tls_handshake(mpb_conn *c)
{
    if (plain_client(c)) return 1;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->tls_handshaking = false;
        auth_tls_done(c);
        if (event_initialized(&c->tls_timer)) evtimer_del(&c->tls_timer);
        if (!g_config.quiet) {
            X509 *peer = SSL_get1_peer_certificate(c->ssl);
            char subject[128] = "";
            if (peer) X509_NAME_oneline(X509_get_subject_name(peer), subject, sizeof subject);
            X509_free(peer);
            fprintf(stderr, "mpbroker-server: connection %llu (%s): %s %s%s%s\n",
                    (unsigned long long)c->id, c->peer, SSL_get_version(c->ssl),
                    SSL_get_cipher_name(c->ssl), peer ? ", client " : "", subject);
        }
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) return 0;
    if (e == SSL_ERROR_WANT_WRITE) {
        event_add(&c->wev, NULL);
        return 0;
    }
    c->tls_failed = true;
    if (!g_config.quiet) {
        char err[256];
        long v = SSL_get_verify_result(c->ssl);
        fprintf(stderr, "mpbroker-server: connection %llu (%s): TLS handshake failed: %s%s%s\n",
                (unsigned long long)c->id, c->peer,
                tls_error(err, sizeof err, e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN
                                               ? "the peer closed the connection" : "error"),
                v != X509_V_OK ? ": " : "", v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
    }
    return -1;
}

/* Wait for the socket to take output. With --output-timeout the wait is bounded, and
 * restarted only by progress: a client that reads nothing times out even while more
 * output (monitor events, answers to parked calls) keeps being added. */
static void want_write(mpb_conn *c, bool progressed)
{
    if (g_config.output_timeout <= 0) {
        event_add(&c->wev, NULL);
        return;
    }
    if (!progressed && event_pending(&c->wev, EV_WRITE | EV_TIMEOUT, NULL)) return;
    double whole = (double)(long)g_config.output_timeout;
    struct timeval tv = {(time_t)whole, (suseconds_t)((g_config.output_timeout - whole) * 1e6)};
    event_add(&c->wev, &tv);
}

/* Unsent output over --max-output: the client is not reading (or asked for more than
 * it may buffer). */
static bool output_over(const mpb_conn *c)
{
    return g_config.max_output > 0 && out_pending(c) > g_config.max_output;
}

/* Close c at its next callback, dropping its unsent output. Safe from any callback. */
static void kill_soon(mpb_conn *c, const char *why)
{
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: closing connection %llu (%s): %s\n",
                (unsigned long long)c->id, c->peer, why);
    c->out_sent = c->out.size;
    c->closing = true;
    event_active(&c->wev, EV_WRITE, 0);
}

/* Write what the socket takes. Returns -1 when the connection is dead. */
static int flush_out(mpb_conn *c)
{
    /* Nothing is acknowledged before it is in the log (and fsynced, under always). */
    if (persist_pending()) persist_sync();
    if (c->held) return 0; /* the log failed: conn_release_held sends it */
    bool progressed = false;
    while (out_pending(c) > 0) {
        ssize_t n = conn_send(c, c->out.data + c->out_sent, out_pending(c));
        if (n > 0) {
            c->out_sent += (size_t)n;
            progressed = true;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* An SSL_write waiting for the peer's bytes: the read event retries it
             * (on_read); a write event would only fire again and again. */
            if (!c->tls_write_wants_read) want_write(c, progressed);
            else if (!c->closing && !c->eof) event_add(&c->rev, NULL);
            return 0;
        }
        return -1;
    }
    /* All written: reuse the buffer from the start; give back a big one. */
    c->out_sent = 0;
    if (c->out.alloc > (4u << 20)) {
        msgpack_sbuffer_destroy(&c->out);
        msgpack_sbuffer_init(&c->out);
    } else {
        msgpack_sbuffer_clear(&c->out);
    }
    return 0;
}

/* Serve whole messages already buffered, as long as the connection may proceed.
 * Returns how many were taken out of the reader. */
static size_t serve_buffered(mpb_conn *c)
{
    size_t served = 0;
    while (!c->blocked && !c->closing && out_pending(c) < OUT_HIGH) {
        msgpack_object msg;
        mpb_read_status st = mpb_reader_next(&c->in, &msg);
        if (st == MPB_READ_NEED) break;
        served++;
        if (c->plain_on_tls) { /* whatever it sent: one reply (its msgid if it can) */
            const msgpack_object *f = st == MPB_READ_MSG ? msg.via.array.ptr : NULL;
            bool req = st == MPB_READ_MSG && msg.type == MSGPACK_OBJECT_ARRAY &&
                       msg.via.array.size == 4 && f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
            dispatch_reply_bad(c, req, req ? f[1].via.u64 : 0, MPB_E_BAD_REQUEST,
                               "this port speaks TLS: connect with tls://HOST:PORT");
            if (!g_config.quiet)
                fprintf(stderr, "mpbroker-server: connection %llu (%s): not TLS (a plain "
                        "client on the TLS port): refused\n", (unsigned long long)c->id, c->peer);
            c->closing = true;
            break;
        }
        if (st == MPB_READ_BAD) {
            dispatch_reply_bad(c, false, 0,
                               c->in.too_large ? MPB_E_TOO_LARGE : MPB_E_BAD_REQUEST,
                               c->in.errstr);
            c->closing = true; /* the stream cannot be resynchronised */
            break;
        }
        if (st == MPB_READ_TOO_DEEP) {
            dispatch_reply_bad(c, c->in.has_skipped_msgid, c->in.skipped_msgid,
                               MPB_E_TOO_DEEP, c->in.errstr);
            if (!c->authed) c->closing = true; /* before the handshake: one error, then out */
            continue;
        }
        dispatch_message(c, &msg); /* collects what the request freed */
    }
    c->out_stopped = !c->blocked && !c->closing && out_pending(c) >= OUT_HIGH;
    return served;
}

/*--- Group commit (--fsync always) ---
 * Replies may not leave before their writes are fsynced. Rather than one fsync per
 * connection served, connections served in one loop round wait on a list, and one
 * event, activated behind the round's read events, fsyncs once and lets them all
 * write. */

/* Should c's replies wait for the round's fsync? Then c is queued and true. */
static bool group_commit_wait(mpb_conn *c)
{
    if (c->commit_wait) return true;
    if (!persist_pending() || g_persist.fsync != MPB_FSYNC_ALWAYS || !commit_ev_ready)
        return false;
    c->commit_wait = true;
    c->commit_next = commit_list;
    commit_list = c;
    event_active(&commit_ev, EV_TIMEOUT, 0);
    return true;
}

static void commit_unlink(mpb_conn *c)
{
    for (mpb_conn **list = &commit_list; list; list = list == &commit_list ? &commit_round : NULL)
        for (mpb_conn **p = list; *p; p = &(*p)->commit_next)
            if (*p == c) {
                *p = c->commit_next;
                c->commit_wait = false;
                return;
            }
    c->commit_wait = false;
}

static void after_serving(mpb_conn *c);

static void on_commit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    persist_sync(); /* one write + fdatasync for the whole round */
    /* Only this round: a connection that logs again while the round is written out
     * (a semaphore unit returned as another connection is freed) waits for the next
     * round, which its group_commit_wait schedules. Looping until the list is empty
     * would re-queue it for ever. */
    commit_round = commit_list;
    commit_list = NULL;
    while (commit_round) {
        mpb_conn *c = commit_round;
        commit_round = c->commit_next;
        c->commit_wait = false;
        after_serving(c);
    }
}

/* Has the peer closed its socket entirely, not only its sending side? A Unix socket
 * tells (POLLHUP once both directions are shut). Over TCP a FIN reads the same either
 * way; a killed worker parked on queue.get is the common case, and answering it
 * would hand a queue item to nobody, so a TCP peer that sent its FIN counts as gone. */
static bool peer_gone(const mpb_conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) != 1) return false;
    if (p.revents & (POLLHUP | POLLERR)) return true;
    return c->is_tcp && (p.revents & POLLRDHUP);
}

bool conn_peer_left(mpb_conn *c)
{
    if (c->closing) return true;
    /* A connection still reading learns of a close from its read event. */
    if (!c->eof && !c->in_paused && !c->read_paused) return false;
    if (!peer_gone(c)) return false;
    kill_soon(c, "its peer closed the socket while it was not read");
    return true;
}

/* A parked connection the broker does not read (after EOF, or with its input held
 * back) hears of no close from its read event, and its park may never end (a
 * queue.get without timeout): once a second, ask whether the peer is gone. */
static bool unread_while_parked(const mpb_conn *c)
{
    return c->blocked && !c->closing && (c->eof || c->in_paused || c->read_paused);
}

static void on_gone_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mpb_conn *c = arg;
    if (!unread_while_parked(c)) evtimer_del(&c->gone_timer);
    else conn_peer_left(c); /* gone: closes at its next callback */
}

static void watch_for_gone_peer(mpb_conn *c)
{
    bool want = unread_while_parked(c);
    if (!event_initialized(&c->gone_timer)) {
        if (!want) return;
        event_assign(&c->gone_timer, event_get_base(&c->rev), -1, EV_PERSIST, on_gone_check, c);
    }
    if (want == (evtimer_pending(&c->gone_timer, NULL) != 0)) return;
    struct timeval one = {1, 0};
    if (want) evtimer_add(&c->gone_timer, &one);
    else evtimer_del(&c->gone_timer);
}

bool conn_peer_gone(mpb_conn *c)
{
    if (c->closing) return true;
    if (!peer_gone(c)) return false;
    kill_soon(c, "its peer closed the socket");
    return true;
}

/* After serving: write, apply backpressure, close when done. May free c. */
static void after_serving(mpb_conn *c)
{
    for (;;) {
        if (group_commit_wait(c)) return;
        if (flush_out(c) < 0) {
            conn_free(c);
            return;
        }
        if (output_over(c) && !c->closing) {
            kill_soon(c, "unsent output over --max-output");
            return; /* freed by its write callback, now pending */
        }
        if (c->closing) {
            if (out_pending(c) == 0) conn_free(c);
            else event_del(&c->rev); /* only finishing the output now */
            return;
        }
        if (!c->eof) break;
        /* The peer has sent all it will: serve every whole message it sent, parked
         * ones included, answer them all, then close. */
        if (c->blocked) {
            if (peer_gone(c)) conn_free(c); /* nobody is left to read the answer */
            else watch_for_gone_peer(c); /* else answered later: wait_done wakes on_write */
            return;
        }
        if (out_pending(c) > 0) return; /* on_write serves the rest as it drains */
        if (serve_buffered(c) == 0) { /* only a partial message is left, for ever */
            conn_free(c);
            return;
        }
    }
    /* Serving stopped at OUT_HIGH, then the socket took all of it at once (a large
     * TCP window does): no write event will come, and no read event need (the
     * requests left may all be read already). Serve them from a fresh callback, so
     * that other connections get their turn in between. */
    if (c->out_stopped && out_pending(c) < OUT_LOW) {
        c->out_stopped = false;
        event_active(&c->wev, EV_WRITE, 0);
    }
    if (out_pending(c) >= OUT_HIGH && !c->read_paused) {
        c->read_paused = true;
        event_del(&c->rev);
    }
    /* A parked request holds back what follows it. Past IN_HIGH of that, read no more
     * until the park ends: one client streaming behind a park cannot fill the
     * broker's memory. */
    bool hold = c->blocked && mpb_reader_pending(&c->in) >= IN_HIGH;
    if (hold != c->in_paused) {
        c->in_paused = hold;
        if (hold) event_del(&c->rev);
        else if (!c->read_paused) event_add(&c->rev, NULL);
    }
    watch_for_gone_peer(c);
    /* Bytes OpenSSL decrypted but nobody read yet: epoll will not announce them. */
    if (c->ssl && !c->tls_handshaking && SSL_pending(c->ssl) > 0 &&
        event_pending(&c->rev, EV_READ, NULL))
        event_active(&c->rev, EV_READ, 0);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)fd;
    mpb_conn *c = arg;
    if (c->tls_handshaking) {
        int h = tls_handshake(c);
        if (h < 0) conn_free(c);
        if (h <= 0) return;
    }
    if (c->tls_write_wants_read) { /* the socket readable: retry the write */
        c->tls_write_wants_read = false;
        event_active(&c->wev, EV_WRITE, 0);
    }
    for (int round = 0; round < 4; round++) {
        /* Before the handshake nothing is read past AUTH_MAX_MSG bytes: a stranger's
         * bytes wait in the kernel until the ones before them are served. */
        size_t pend = mpb_reader_pending(&c->in);
        bool stranger = !c->authed || c->plain_on_tls;
        size_t want = !stranger ? READ_CHUNK : pend < AUTH_MAX_MSG ? AUTH_MAX_MSG - pend : 0;
        size_t avail;
        char *space = want ? mpb_reader_space(&c->in, want, &avail) : NULL;
        if (!space) {
            c->closing = true;
            break;
        }
        if (stranger) avail = want;
        ssize_t n = conn_recv(c, space, avail);
        if (n > 0) {
            mpb_reader_commit(&c->in, (size_t)n);
            /* Short: the socket is empty (TLS: this record was, SSL_pending says if
             * OpenSSL holds more; epoll tells of the socket). */
            if (((size_t)n < avail && (!c->ssl || SSL_pending(c->ssl) == 0)) || stranger)
                break;
            continue;
        }
        if (n == 0) {
            c->eof = true;
            event_del(&c->rev);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_free(c);
            return;
        }
        break;
    }
    serve_buffered(c);
    after_serving(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    mpb_conn *c = arg;
    if (c->tls_handshaking) {
        int h = tls_handshake(c);
        if (h < 0) conn_free(c);
        else if (h > 0) event_active(&c->rev, EV_READ, 0);
        return;
    }
    if (c->tls_read_wants_write) { /* the socket writable: retry the read */
        c->tls_read_wants_write = false;
        event_active(&c->rev, EV_READ, 0);
    }
    if (what == EV_TIMEOUT && out_pending(c) > 0) {
        if (!g_config.quiet)
            fprintf(stderr, "mpbroker-server: closing connection %llu (%s): it read none of "
                    "its %zu bytes of replies for %g s\n", (unsigned long long)c->id,
                    c->peer, out_pending(c), g_config.output_timeout);
        conn_free(c);
        return;
    }
    if (flush_out(c) < 0) {
        conn_free(c);
        return;
    }
    if (out_pending(c) < OUT_LOW) {
        if (c->read_paused) {
            c->read_paused = false;
            if (!c->eof && !c->closing && !c->in_paused) event_add(&c->rev, NULL);
        }
        serve_buffered(c); /* what was read while paused or parked */
    }
    after_serving(c);
}

void conn_hold_unsent(void)
{
    for (mpb_conn *c = conns; c; c = c->next)
        if (out_pending(c) > 0 || c->commit_wait) c->held = true;
}

void conn_release_held(void)
{
    for (mpb_conn *c = conns; c; c = c->next)
        if (c->held) {
            c->held = false;
            event_active(&c->wev, EV_WRITE, 0);
        }
}

void conn_schedule_flush(mpb_conn *c)
{
    if (output_over(c) && !c->closing) kill_soon(c, "unsent output over --max-output");
    else event_active(&c->wev, EV_WRITE, 0);
}

void conn_unblock(mpb_conn *c)
{
    c->blocked = false;
    if (output_over(c) && !c->closing) {
        kill_soon(c, "unsent output over --max-output");
        return;
    }
    /* Requests that arrived while parked sit in the reader: the write callback
     * serves them (no read event would). */
    event_active(&c->wev, EV_WRITE, 0);
}


static void conn_free(mpb_conn *c)
{
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: connection %llu (%s) closed after %.1f s, %llu "
                "request%s\n", (unsigned long long)c->id, c->peer, mpb_mono_seconds() - c->since,
                (unsigned long long)c->ops, c->ops == 1 ? "" : "s");
    if (c->commit_wait) commit_unlink(c);
    admin_conn_closed(c);
    watch_conn_closed(c);
    auth_conn_free(c);
    event_del(&c->rev);
    event_del(&c->wev);
    if (event_initialized(&c->tls_timer)) evtimer_del(&c->tls_timer);
    if (event_initialized(&c->gone_timer)) evtimer_del(&c->gone_timer);
    if (c->ssl) {
        /* A close_notify when it can go at once (non-blocking, best effort): the peer
         * then knows the close was the broker's, not an attacker's truncation. */
        if (!c->tls_failed && !c->tls_handshaking) {
            ERR_clear_error();
            SSL_shutdown(c->ssl);
        }
        SSL_free(c->ssl);
        ERR_clear_error();
    }
    /* First its parked request, then what it owns (waking others), then its holds. */
    wait_conn_closed(c);
    objects_drop_owned(&c->owned, c->id);
    objects_drop_holds(&c->holds);
    objects_collect();
    close(c->fd);
    mpb_reader_destroy(&c->in);
    msgpack_sbuffer_destroy(&c->out);
    if (c->prev) c->prev->next = c->next;
    else conns = c->next;
    if (c->next) c->next->prev = c->prev;
    nconns--;
    free(c);
}

void conn_serve(mpb_conn *c) { serve_buffered(c); }

void conn_close(mpb_conn *c) { conn_free(c); }

void conn_refuse(mpb_conn *c, const char *why)
{
    if (!c->tls_handshaking) {
        dispatch_reply_bad(c, false, 0, MPB_E_TOO_MANY_CLIENTS, why);
        (void)flush_out(c);
    }
    conn_free(c);
}

void conn_drain_all(struct event_base *base, double seconds)
{
    /* Read-only after a disk failure: one more try to store the state, so that the
     * held replies can go; if it fails they never will (connections close unanswered). */
    persist_try_recover();
    /* As if every peer had closed its side: the usual path then answers what was
     * read (more as the output drains), writes it, and frees the connection. A parked
     * request is not waited for: its connection goes like one whose peer left. */
    for (mpb_conn *c = conns, *next; c; c = next) {
        next = c->next;
        c->eof = true;
        event_del(&c->rev);
        event_active(&c->wev, EV_WRITE, 0);
    }
    double deadline = mpb_mono_seconds() + seconds;
    while (conns && mpb_mono_seconds() < deadline) {
        /* A connection that is parked with nothing to write waits for nobody. */
        bool busy = false;
        for (mpb_conn *c = conns, *next; c; c = next) {
            next = c->next;
            if (c->held || (out_pending(c) == 0 && (c->blocked || mpb_reader_pending(&c->in) == 0) &&
                            !event_pending(&c->wev, EV_WRITE, NULL)))
                conn_free(c);
            else
                busy = true;
        }
        if (!busy) break;
        event_base_loop(base, EVLOOP_ONCE);
    }
}

void conn_close_all(void)
{
    while (conns) {
        (void)flush_out(conns);
        conn_free(conns);
    }
}
