/* client.c - the core of libmpbroker: connecting, the request encoder, the reply
 * decoder, and the blocking send/receive loop built from non-blocking pieces.
 *
 * A context owns one output buffer (requests are packed straight into it by
 * mpb_append_call), a ring of the message ids still waiting for replies, and an
 * mpb_reader that socket reads feed. Replies come back in request order, so each one
 * must answer the oldest id in the ring. mpb_buffer_write / mpb_buffer_read /
 * mpb_buffer_take_reply never block; mpb_flush and mpb_get_reply are those plus
 * poll(), and an event-loop layer can drive the same three itself. The typed helpers
 * (mpb_list_append, ...) live in helpers.c; nothing here knows method names except
 * as strings passed through.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "mpb_address.h"
#include "mpb_codec.h"
#include "mpb_reader.h"
#include "auth.h"
#include "internal.h"
#include "mpbroker.h"
#include "tls.h"

#ifndef MSG_NOSIGNAL /* BSDs and macOS: SO_NOSIGPIPE is set on the socket instead */
#define MSG_NOSIGNAL 0
#endif

#define READ_CHUNK (64u << 10)
/* The broker bounds requests, not replies: list.copy of a big list is legitimately
 * large. The cap only keeps a corrupt length header from reserving absurd memory. */
#define MAX_REPLY ((size_t)1 << 30)
/* After a flush, an output buffer grown past this by a big pipeline is given back. */
#define OUT_KEEP (1u << 20)

struct mpb_context_priv {
    msgpack_sbuffer out; /* packed requests; out.data[out_sent, out.size) not yet sent */
    size_t out_sent;
    msgpack_packer pk;   /* writes into out */
    uint32_t *ids;       /* ring of msgids awaiting replies, oldest at ids[head] */
    size_t head, nids, cap;
    uint32_t next_id;    /* msgpack-rpc msgids are 32-bit; they wrap */
    size_t lost;         /* calls in flight when a connection broke, older than any in ids:
                            each is taken as a ConnectionError, in order (never answered by
                            the reply to a call made since) */
    mpb_reader reader;   /* replies read but not yet taken */
    bool eof;            /* the broker closed its side: serve what is buffered, then fail */
    bool wdead;          /* a write failed as the broker closed: read what it answered */
    char broken[32 + 2 + 256]; /* why the connection is gone, for later calls */
    struct mpb_note *notes, *notes_tail; /* notifications read while awaiting replies */
    /* Resilience: where to reconnect, and what to re-open there. */
    unsigned long fork_gen; /* fork_gen when fd was opened: another process must not use it */
    char address[320];
    bool reconnect;
    bool interruptible;       /* a signal ends a blocking wait with MPB_ERR_INTR */
    bool reconnecting;        /* in reconnect(): its own calls must not start another */
    unsigned long conn_gen;   /* connections opened since the first: walks cannot cross */
    int reconnect_wait_ms;
    struct mpb_named **named; /* objects opened by name, re-opened after a reconnect */
    size_t nnamed;
    size_t nxlat;             /* old references translated, all names together */
    unsigned char *authkey; /* the key for the handshake (auth.c), or NULL; owned */
    size_t authkey_len;
    SSL *ssl;               /* tls:// addresses: the session over fd, owned; else NULL */
    char tls_why[200];      /* the last TLS error (errno EPROTO from mpb_client_recv/send) */
};

/* A name this context opened: re-opened by name after a reconnect. */
struct mpb_named {
    mpb_ref ref;  /* its reference now */
    mpb_ref *old; /* its references from brokers that lost their state: translated */
    size_t nold;
    char typeid[24];
    char name[];
};

/* A notification [2, method, params] queued until mpb_get_notification takes it. */
struct mpb_note {
    struct mpb_note *next;
    mpb_value params; /* owned */
    char method[];
};

/* Counts fork()s in this process's ancestry line, so that a context can tell it was
 * inherited without a getpid() system call on every call (pthread_atfork). */
static volatile unsigned long fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { fork_gen++; }

static int after_fork(mpb_context *c);

/* First thing in every entry point that touches the connection: a context inherited
 * through fork() must not read, write or even look at the parent's socket. */
static inline int own_conn(mpb_context *c) {
    return c->priv->fork_gen == fork_gen ? MPB_OK : after_fork(c);
}

/*--- Errors ---*/

static void copy_bounded(char *dst, size_t size, const char *src, size_t n) {
    if (n >= size) n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void set_ok(mpb_context *c) {
    c->err = MPB_OK;
    c->errkind[0] = '\0';
    c->errstr[0] = '\0';
}

static int set_err(mpb_context *c, int err, const char *kind, const char *fmt, ...) {
    va_list ap;
    c->err = err;
    copy_bounded(c->errkind, sizeof c->errkind, kind, strlen(kind));
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
    return err;
}

/*--- I/O: plain or TLS, with recv()/send()'s conventions ---*/

/* Close the socket and drop its TLS session. No close_notify: after a fork the
 * parent's session would hear it, and the broker takes a plain EOF as the end. */
static void close_conn(mpb_context *c) {
    SSL_free(c->priv->ssl);
    c->priv->ssl = NULL;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* An SSL_read/SSL_write failed with r: -1 with errno (EAGAIN: the socket is not ready;
 * EPROTO: a TLS error, described in tls_why), or 0 for the broker's close. */
static ssize_t tls_failed(mpb_context *c, int r) {
    struct mpb_context_priv *p = c->priv;
    switch (SSL_get_error(p->ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0 || errno == EAGAIN) errno = ECONNRESET;
        return -1;
    default: {
        char why[sizeof p->tls_why - 8];
        snprintf(p->tls_why, sizeof p->tls_why, "TLS: %s", mpb_tls_error(why, sizeof why, "error"));
        errno = EPROTO;
        return -1;
    }
    }
}

ssize_t mpb_client_recv(mpb_context *c, void *buf, size_t n, int flags) {
    if (c->priv->ssl == NULL) return recv(c->fd, buf, n, flags);
    size_t got;
    ERR_clear_error();
    int r = SSL_read_ex(c->priv->ssl, buf, n, &got);
    return r == 1 ? (ssize_t)got : tls_failed(c, r);
}

ssize_t mpb_client_send(mpb_context *c, const void *buf, size_t n, int flags) {
    if (c->priv->ssl == NULL) return send(c->fd, buf, n, flags);
    size_t put;
    ERR_clear_error();
    int r = SSL_write_ex(c->priv->ssl, buf, n, &put);
    return r == 1 ? (ssize_t)put : tls_failed(c, r);
}

bool mpb_client_buffered(const mpb_context *c) {
    return c->priv->ssl != NULL && SSL_pending(c->priv->ssl) > 0;
}

const char *mpb_client_strerror(const mpb_context *c, int e) {
    return e == EPROTO && c->priv->tls_why[0] ? c->priv->tls_why : strerror(e);
}

/* The connection cannot be trusted any more (I/O failure, EOF, a reply out of step):
 * close it. c->err/errkind/errstr already describe the cause; later calls repeat it
 * through fail_if_broken. */
static int break_conn(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    close_conn(c);
    snprintf(p->broken, sizeof p->broken, "%s%s%s", c->errkind, c->errkind[0] ? ": " : "",
             c->errstr);
    p->lost += p->nids;
    p->nids = p->head = 0;
    p->out.size = p->out_sent = 0;
    return c->err;
}

static int fail_if_broken(mpb_context *c) {
    if (c->fd >= 0) return MPB_OK;
    return set_err(c, MPB_ERR_IO, "ConnectionError", "not connected (%s)",
                   c->priv->broken[0] ? c->priv->broken : "never connected");
}

/*--- Wire form: requests out, replies in (no I/O here) ---*/

/* A reference as the broker now knows it: the reference an opened name had under a
 * broker that lost its state is the re-created object's. Ids are never reused across
 * such lifetimes (mpb_value.h), so an old reference cannot be confused with a new
 * one: anything not translated here goes out as it is. */
static mpb_ref xlat_ref(const struct mpb_context_priv *p, mpb_ref r) {
    for (size_t i = 0; i < p->nnamed; i++)
        for (size_t k = 0; k < p->named[i]->nold; k++)
            if (p->named[i]->old[k] == r) return p->named[i]->ref;
    return r;
}

/* [0, msgid, method, [args...]] appended to pk. 0, or -1 if the packer failed.
 * References among the args themselves are translated (not those nested in values). */
static int pack_request(const struct mpb_context_priv *p, uint32_t msgid, const char *method,
                        const mpb_value *args, size_t nargs) {
    msgpack_packer *pk = (msgpack_packer *)&p->pk;
    size_t mlen = strlen(method);
    if (msgpack_pack_array(pk, 4) < 0 || msgpack_pack_int(pk, 0) < 0 ||
        msgpack_pack_uint32(pk, msgid) < 0 || msgpack_pack_str(pk, mlen) < 0 ||
        msgpack_pack_str_body(pk, method, mlen) < 0 || msgpack_pack_array(pk, nargs) < 0)
        return -1;
    for (size_t i = 0; i < nargs; i++) {
        mpb_value a = args[i];
        if (a.type == MPB_REF && p->nxlat) a.v.ref = xlat_ref(p, a.v.ref);
        if (mpb_value_pack(pk, &a) < 0) return -1;
    }
    return 0;
}

/* An error object into errkind/errstr. Ours are [kind, message]; other msgpack-rpc
 * servers send anything, which then shows up as its repr under kind "Error". */
static void copy_error(mpb_context *c, const msgpack_object *e) {
    const char *s;
    size_t n;
    if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size >= 1 &&
        mpb_object_bytes(&e->via.array.ptr[0], &s, &n)) {
        copy_bounded(c->errkind, sizeof c->errkind, s, n);
        if (e->via.array.size >= 2 && mpb_object_bytes(&e->via.array.ptr[1], &s, &n))
            copy_bounded(c->errstr, sizeof c->errstr, s, n);
        else
            c->errstr[0] = '\0';
        return;
    }
    copy_bounded(c->errkind, sizeof c->errkind, "Error", 5);
    if (mpb_object_bytes(e, &s, &n)) {
        copy_bounded(c->errstr, sizeof c->errstr, s, n);
        return;
    }
    mpb_value v;
    char *repr = NULL;
    if (mpb_value_from_object(e, &v, MPB_REPLY_MAX_DEPTH, NULL, 0) == MPB_E_NONE) {
        repr = mpb_value_repr(&v);
        mpb_value_free(&v);
    }
    copy_bounded(c->errstr, sizeof c->errstr, repr ? repr : "?", repr ? strlen(repr) : 1);
    free(repr);
}

/* Is it a msgpack-rpc notification, [2, method, params]? */
static bool is_notification(const msgpack_object *o) {
    int64_t type;
    return o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3 &&
           mpb_object_int(&o->via.array.ptr[0], &type) && type == 2;
}

/* Decode a notification into a new queue entry. NULL when out of memory, or when its
 * method or params cannot be decoded (it is then dropped: it answers no call, so the
 * stream stays in step). */
static struct mpb_note *note_from_object(const msgpack_object *o) {
    const char *m;
    size_t mlen;
    const msgpack_object *a = o->via.array.ptr;
    if (!mpb_object_bytes(&a[1], &m, &mlen)) return NULL;
    struct mpb_note *n = malloc(sizeof *n + mlen + 1);
    if (n == NULL) return NULL;
    n->next = NULL;
    memcpy(n->method, m, mlen);
    n->method[mlen] = '\0';
    if (mpb_value_from_object(&a[2], &n->params, MPB_REPLY_MAX_DEPTH, NULL, 0) !=
        MPB_E_NONE) {
        free(n);
        return NULL;
    }
    return n;
}

static void note_push(struct mpb_context_priv *p, struct mpb_note *n) {
    if (p->notes_tail != NULL)
        p->notes_tail->next = n;
    else
        p->notes = n;
    p->notes_tail = n;
}

/* One reply message: must be [1, msgid, error, result] answering the oldest call.
 * Sets the context's error state and *result as mpb_get_reply documents. */
static int handle_reply(mpb_context *c, const msgpack_object *o, mpb_value *result) {
    struct mpb_context_priv *p = c->priv;
    const msgpack_object *a = o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.ptr : NULL;
    int64_t type, msgid;
    if (a == NULL || o->via.array.size != 4 || !mpb_object_int(&a[0], &type) || type != 1) {
        set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "the broker sent a message that is "
                "not a msgpack-rpc response");
        return break_conn(c);
    }
    if (a[1].type == MSGPACK_OBJECT_NIL && a[2].type != MSGPACK_OBJECT_NIL) {
        /* [1, nil, [kind, msg], nil]: the broker rejected our stream and is closing. */
        copy_error(c, &a[2]);
        c->err = MPB_ERR_PROTOCOL;
        return break_conn(c);
    }
    uint32_t want = p->ids[p->head];
    if (!mpb_object_int(&a[1], &msgid) || msgid != (int64_t)want) {
        set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "reply out of step: expected msgid "
                "%u", (unsigned)want);
        return break_conn(c);
    }
    p->head = (p->head + 1) % p->cap;
    p->nids--;
    if (a[2].type != MSGPACK_OBJECT_NIL) {
        copy_error(c, &a[2]);
        c->err = MPB_ERR_REPLY;
        return MPB_ERR_REPLY;
    }
    if (result != NULL) {
        char why[96];
        mpb_errkind k = mpb_value_from_object(&a[3], result, MPB_REPLY_MAX_DEPTH, why,
                                              sizeof why);
        if (k == MPB_E_OUT_OF_MEMORY) /* the stream is still in step: stay usable */
            return set_err(c, MPB_ERR_OOM, "OutOfMemory", "decoding the reply: %s", why);
        if (k != MPB_E_NONE) {
            set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "cannot decode the reply: %s", why);
            return break_conn(c);
        }
    }
    set_ok(c);
    return MPB_OK;
}

/* The reader skipped a reply deeper than MPB_REPLY_MAX_DEPTH, which no broker of this
 * version sends. When it answered the oldest call, only that call fails: the stream is
 * still in step. Anything else is a broken stream. */
static int too_deep_reply(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    if (p->reader.skipped_type != 1 || p->reader.skipped_msgid != p->ids[p->head]) {
        set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "reply nested too deeply: %s",
                p->reader.errstr);
        return break_conn(c);
    }
    p->head = (p->head + 1) % p->cap;
    p->nids--;
    return set_err(c, MPB_ERR_PROTOCOL, "TooDeep", "reply not read: %s", p->reader.errstr);
}

/*--- Connecting ---*/

char *mpb_default_address(char *buf, size_t n) {
    if (buf == NULL || n == 0) return buf;
    return mpb_default_socket_path(buf, n); /* the broker's own default, by construction */
}

/* connect(), finishing one that a signal interrupted (it goes on in the background,
 * and a second connect() would only say EALREADY). */
static int connect_fd(int fd, const struct sockaddr *sa, socklen_t len) {
    if (connect(fd, sa, len) == 0) return 0;
    if (errno != EINTR) return -1;
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    while (poll(&pf, 1, -1) < 0)
        if (errno != EINTR) return -1;
    int e = 0;
    socklen_t elen = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0) return -1;
    if (e != 0) {
        errno = e;
        return -1;
    }
    return 0;
}

static int new_socket(int family) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
#ifdef SO_NOSIGPIPE
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &(int){1}, sizeof(int));
#endif
    return fd;
}

static void connect_unix(mpb_context *c, const char *address) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char path[sizeof sa.sun_path], peer[64]; /* PATH[?peer=WHO] (auth.c) */
    if (mpb_client_unix_address(c, address, path, sizeof path, peer, sizeof peer) != MPB_OK)
        return;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = new_socket(AF_UNIX);
    if (fd < 0 || connect_fd(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        set_err(c, MPB_ERR_CONNECT, "ConnectionError", "connect %s: %s", path,
                strerror(errno));
        if (fd >= 0) close(fd);
        return;
    }
    if (mpb_client_check_peer(c, fd, path, peer) != MPB_OK) { /* not another user's */
        close(fd);
        return;
    }
    c->fd = fd;
}

/* address: "tcp://HOST:PORT" or "tcp://[V6ADDR]:PORT", parsed as the broker does;
 * with tls, "tls://...", and a TLS handshake once connected. */
static void connect_tcp(mpb_context *c, const char *address, bool tls) {
    char host[256], port[16];
    if ((tls ? mpb_parse_tls : mpb_parse_tcp)(address, host, sizeof host, port, sizeof port) < 0) {
        set_err(c, MPB_ERR_CONNECT, "ConnectionError", "bad %s address '%s' (want "
                "%s://HOST:PORT)", tls ? "TLS" : "TCP", address, tls ? "tls" : "tcp");
        return;
    }

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai, *it;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        set_err(c, MPB_ERR_CONNECT, "ConnectionError", "%s:%s: %s", host, port,
                gai_strerror(rc));
        return;
    }
    int fd = -1, saved = 0;
    for (it = ai; it != NULL; it = it->ai_next) {
        if ((fd = new_socket(it->ai_family)) < 0) {
            saved = errno;
            continue;
        }
        if (connect_fd(fd, it->ai_addr, it->ai_addrlen) == 0) break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        set_err(c, MPB_ERR_CONNECT, "ConnectionError", "connect %s:%s: %s", host, port,
                strerror(saved));
        return;
    }
    /* Requests are small and a caller waits for each reply: Nagle would add 40 ms. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    if (tls) {
        char why[sizeof c->errstr - 32];
        /* Leaves fd non-blocking: every read and write below copes (EAGAIN, then poll). */
        if ((c->priv->ssl = mpb_tls_handshake(fd, host, why, sizeof why)) == NULL) {
            set_err(c, MPB_ERR_CONNECT, "TLSError", "%s", why);
            close(fd);
            return;
        }
    }
    c->fd = fd;
}

static void atfork_init(void) { pthread_atfork(NULL, NULL, on_fork_child); }

/* Connect c (not connected) to its address: the one path for the first connection, a
 * reconnect, and a forked child's own connection. */
static void open_conn(mpb_context *c) {
    const char *address = c->priv->address;
    pthread_once(&atfork_once, atfork_init);
    c->priv->fork_gen = fork_gen;
    if (strncmp(address, "tcp://", 6) == 0 || strncmp(address, "tls://", 6) == 0)
        connect_tcp(c, address, address[1] == 'l');
    else if (strncmp(address, "unix:", 5) == 0)
        connect_unix(c, address + 5);
    else
        connect_unix(c, address);
    if (c->fd >= 0 && c->priv->authkey != NULL &&
        mpb_client_handshake(c, c->priv->authkey, c->priv->authkey_len) != MPB_OK) {
        close_conn(c); /* the key was not proved, either way: nothing else goes over it */
    }
    if (c->fd < 0)
        snprintf(c->priv->broken, sizeof c->priv->broken, "%s", c->errstr);
    else
        set_ok(c);
}

mpb_context *mpb_connect(const char *address) {
    return mpb_connect_with_key(address, NULL, 0);
}

mpb_context *mpb_connect_with_key(const char *address, const void *key, size_t keylen) {
    mpb_context *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->fd = -1;
    if ((c->priv = calloc(1, sizeof *c->priv)) == NULL ||
        mpb_reader_init(&c->priv->reader, MAX_REPLY, MPB_REPLY_MAX_DEPTH) < 0) {
        free(c->priv);
        free(c);
        return NULL;
    }
    msgpack_sbuffer_init(&c->priv->out);
    msgpack_packer_init(&c->priv->pk, &c->priv->out, msgpack_sbuffer_write);

    char def[256];
    if (address == NULL) address = getenv("MPBROKER_ADDRESS");
    if (address == NULL || address[0] == '\0')
        address = mpb_default_address(def, sizeof def);
    snprintf(c->priv->address, sizeof c->priv->address, "%s", address);
    c->priv->reconnect_wait_ms = 30000;
    if (mpb_client_key(c, key, keylen, &c->priv->authkey, &c->priv->authkey_len) == MPB_OK)
        open_conn(c);
    else
        snprintf(c->priv->broken, sizeof c->priv->broken, "%s", c->errstr);
    return c;
}

void mpb_free(mpb_context *c) {
    if (c == NULL) return;
    if (c->priv != NULL) close_conn(c);
    else if (c->fd >= 0) close(c->fd);
    if (c->priv != NULL) {
        msgpack_sbuffer_destroy(&c->priv->out);
        free(c->priv->ids);
        mpb_reader_destroy(&c->priv->reader);
        for (size_t i = 0; i < c->priv->nnamed; i++) {
            free(c->priv->named[i]->old);
            free(c->priv->named[i]);
        }
        free(c->priv->named);
        mpb_client_key_free(c->priv->authkey, c->priv->authkey_len);
        while (c->priv->notes != NULL) {
            struct mpb_note *n = c->priv->notes;
            c->priv->notes = n->next;
            mpb_value_free(&n->params);
            free(n);
        }
        free(c->priv);
    }
    free(c);
}

/*--- Resilience: fork, reconnect ---*/

/* Forget everything in flight: after a fork (the parent's) or a lost connection. */
static void reset_stream(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    p->nids = p->head = p->lost = 0;
    p->out.size = p->out_sent = 0;
    p->eof = p->wdead = false;
    mpb_reader_destroy(&p->reader);
    mpb_reader_init(&p->reader, MAX_REPLY, MPB_REPLY_MAX_DEPTH);
}

/* With nothing in flight, is the broker gone (EOF or reset waiting on the socket)? */
static bool peer_gone(int fd) {
    struct pollfd pf = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&pf, 1, 0) <= 0) return false;
    if (pf.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Name n now has reference ref. An id of another space means the broker lost its
 * state and this is the object re-created under the name: the old references are
 * translated to it from now on. An id of the same space means the state was kept and
 * the name now belongs to another object (deleted and created again meanwhile): the old
 * reference still names the old object (NoSuchObject once it is gone), and what was
 * translated to it is no longer. -1 when out of memory. */
static int named_moved(struct mpb_context_priv *p, struct mpb_named *n, mpb_ref ref) {
    if (ref == n->ref) return 0;
    if (mpb_ref_space(ref) == mpb_ref_space(n->ref)) {
        p->nxlat -= n->nold;
        n->nold = 0;
    } else {
        mpb_ref *o = realloc(n->old, (n->nold + 1) * sizeof *o);
        if (o == NULL) return -1;
        n->old = o;
        n->old[n->nold++] = n->ref;
        p->nxlat++;
    }
    n->ref = ref;
    return 0;
}

/* Open every name again, in one round trip, and follow what moved (named_moved). A
 * name that cannot be opened now (another object took it with another type) is left
 * alone: its references fail at the broker. A lost connection fails the attempt. */
static int reopen_named(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    int rc = MPB_OK;
    for (size_t i = 0; i < p->nnamed; i++) {
        struct mpb_named *n = p->named[i];
        mpb_value args[2] = {mpb_str_borrowed(n->typeid, strlen(n->typeid)),
                             mpb_str_borrowed(n->name, strlen(n->name))};
        if ((rc = mpb_append_call(c, "manager.open", args, 2)) != MPB_OK) return rc;
    }
    for (size_t i = 0; i < p->nnamed && c->fd >= 0; i++) {
        mpb_value r;
        int one = mpb_get_reply(c, &r);
        if (one == MPB_OK && r.type == MPB_REF && named_moved(p, p->named[i], r.v.ref) < 0)
            one = set_err(c, MPB_ERR_OOM, "OutOfMemory", "reconnecting");
        mpb_value_free(&r);
        if (one != MPB_OK && one != MPB_ERR_REPLY && rc == MPB_OK) rc = one;
    }
    if (rc == MPB_OK) set_ok(c);
    return rc;
}

static long long now_ms(void);

/* Connect again, backing off from 10 ms to 1 s, for up to reconnect_wait_ms: the last
 * sleep is cut to the time left, and one last attempt is made at the deadline. */
static int reconnect(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    long long deadline = now_ms() + p->reconnect_wait_ms;
    size_t lost = p->lost; /* the caller's, still to be taken (reset_stream clears it) */
    p->reconnecting = true;
    for (long delay = 10;; delay = delay * 2 > 1000 ? 1000 : delay * 2) {
        reset_stream(c);
        open_conn(c);
        if (c->fd >= 0 && reopen_named(c) == MPB_OK) {
            p->reconnecting = false;
            p->lost = lost;
            p->conn_gen++;
            return MPB_OK;
        }
        if (c->fd >= 0) break_conn(c);
        long long left = deadline - now_ms();
        if (!p->reconnect || left <= 0) break;
        long ms = delay < left ? delay : (long)left;
        nanosleep(&(struct timespec){ms / 1000, (ms % 1000) * 1000000}, NULL);
    }
    p->reconnecting = false;
    p->lost = lost;
    return set_err(c, MPB_ERR_IO, "ConnectionError", "cannot reconnect to %s (%s)", p->address,
                   p->broken);
}

/* In a child of fork(): the socket, the requests queued or in flight, and the replies
 * and notifications read so far all belong to the parent, which goes on using them.
 * Drop this process's copies (sending the queued requests would run them twice, and
 * reading would steal the parent's replies) and open a connection of its own. */
static int after_fork(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    close_conn(c); /* our copy only: the parent's stays open */
    reset_stream(c);
    while (p->notes != NULL) {
        struct mpb_note *n = p->notes;
        p->notes = n->next;
        mpb_value_free(&n->params);
        free(n);
    }
    p->notes_tail = NULL;
    bool keep = p->reconnect;
    p->reconnect = false; /* one attempt: the broker is up, the parent uses it */
    int rc = reconnect(c);
    p->reconnect = keep;
    p->fork_gen = fork_gen; /* tried, even if it failed: that is now this context's state */
    return rc;
}

/* Before a call: with reconnect on, a connection the broker closed is opened again. */
static int ensure_conn(mpb_context *c) {
    struct mpb_context_priv *p = c->priv;
    if (!p->reconnect || p->reconnecting) return MPB_OK;
    if (c->fd >= 0 && p->nids == 0 && peer_gone(c->fd)) {
        set_err(c, MPB_ERR_EOF, "ConnectionError", "the broker closed the connection");
        break_conn(c);
    }
    return c->fd >= 0 ? MPB_OK : reconnect(c);
}

int mpb_enable_reconnect(mpb_context *c, int enable, int max_wait_ms) {
    if (c == NULL) return MPB_ERR_ARG;
    c->priv->reconnect = enable != 0;
    if (max_wait_ms >= 0) c->priv->reconnect_wait_ms = max_wait_ms;
    return MPB_OK;
}

unsigned long mpb_client_conn_gen(const mpb_context *c) { return c->priv->conn_gen; }

void mpb_client_note_open(mpb_context *c, const char *typeid, const char *name, mpb_ref ref) {
    struct mpb_context_priv *p = c->priv;
    for (size_t i = 0; i < p->nnamed; i++)
        if (strcmp(p->named[i]->name, name) == 0) {
            named_moved(p, p->named[i], ref); /* out of memory: just not translated */
            /* Re-created as what it is now (another client may have replaced it). */
            snprintf(p->named[i]->typeid, sizeof p->named[i]->typeid, "%s", typeid);
            return;
        }
    struct mpb_named **v = realloc(p->named, (p->nnamed + 1) * sizeof *v);
    if (v == NULL) return; /* it will just not be re-opened */
    p->named = v;
    struct mpb_named *n = malloc(sizeof *n + strlen(name) + 1);
    if (n == NULL) return;
    n->ref = ref;
    n->old = NULL;
    n->nold = 0;
    snprintf(n->typeid, sizeof n->typeid, "%s", typeid);
    strcpy(n->name, name);
    p->named[p->nnamed++] = n;
}

/*--- Queueing, and the non-blocking pieces ---*/

/* Room for one more id in the ring, so that nothing can fail once a request is packed. */
static int ids_reserve(struct mpb_context_priv *p) {
    if (p->nids < p->cap) return 0;
    size_t ncap = p->cap ? p->cap * 2 : 16;
    uint32_t *n = malloc(ncap * sizeof *n);
    if (n == NULL) return -1;
    for (size_t i = 0; i < p->nids; i++) n[i] = p->ids[(p->head + i) % p->cap];
    free(p->ids);
    p->ids = n;
    p->cap = ncap;
    p->head = 0;
    return 0;
}

int mpb_append_call(mpb_context *c, const char *method, const mpb_value *args,
                    size_t nargs) {
    if (c == NULL) return MPB_ERR_ARG;
    if (method == NULL || (args == NULL && nargs > 0))
        return set_err(c, MPB_ERR_ARG, "ValueError", "mpb_append_call: NULL method or args");
    if (own_conn(c) != MPB_OK || ensure_conn(c) != MPB_OK || fail_if_broken(c)) return c->err;
    struct mpb_context_priv *p = c->priv;
    if (ids_reserve(p) < 0) return set_err(c, MPB_ERR_OOM, "OutOfMemory", "queueing a call");
    size_t mark = p->out.size;
    if (pack_request(p, p->next_id, method, args, nargs) < 0) {
        p->out.size = mark; /* drop the partial request: the stream stays well formed */
        return set_err(c, MPB_ERR_OOM, "OutOfMemory", "encoding a %s request", method);
    }
    p->ids[(p->head + p->nids++) % p->cap] = p->next_id++;
    set_ok(c);
    return MPB_OK;
}

/* A write failed. EPIPE or ECONNRESET: the broker closed on us mid-write, having
 * answered what it had read, and perhaps said why it closed ([1, nil, [kind, msg], nil]
 * for a request over --max-message). Those replies may be in the socket or the reader
 * already: stop writing (what is unsent is dropped: it can never arrive) but keep the
 * connection for reading, so that mpb_get_reply serves each call in order with its own
 * outcome, and only the calls the broker never answered fail, at the EOF. */
static int write_failed(mpb_context *c, int e) {
    struct mpb_context_priv *p = c->priv;
    set_err(c, MPB_ERR_IO, e == EPROTO ? "TLSError" : "ConnectionError", "write: %s",
            mpb_client_strerror(c, e));
    if (e != EPIPE && e != ECONNRESET) return break_conn(c);
    p->wdead = true;
    p->out.size = p->out_sent = 0;
    snprintf(p->broken, sizeof p->broken, "%s: %s", c->errkind, c->errstr);
    return c->err;
}

int mpb_buffer_write(mpb_context *c, int *done) {
    if (done != NULL) *done = 0;
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK || fail_if_broken(c)) return c->err;
    struct mpb_context_priv *p = c->priv;
    if (p->wdead) { /* requests queued after the broker closed can never be sent */
        p->out.size = p->out_sent = 0;
        return set_err(c, MPB_ERR_IO, "ConnectionError", "not connected (%s)", p->broken);
    }
    while (p->out_sent < p->out.size) {
        ssize_t n = mpb_client_send(c, p->out.data + p->out_sent, p->out.size - p->out_sent,
                                    MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p->out_sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            return write_failed(c, n < 0 ? errno : EIO);
        }
    }
    if (p->out_sent == p->out.size) {
        p->out.size = p->out_sent = 0;
        if (p->out.alloc > OUT_KEEP) {
            msgpack_sbuffer_destroy(&p->out);
            msgpack_sbuffer_init(&p->out);
        }
        if (done != NULL) *done = 1;
    }
    set_ok(c);
    return MPB_OK;
}

/* Read what has arrived (block: wait for at least one byte, with one recv() and no
 * poll() when the socket is blocking, as it is but for async contexts). */
static int read_some(mpb_context *c, bool block);

/* A signal arrived during a blocking wait of an interruptible context: nothing is
 * lost, the calls stay pending (see mpb_set_interruptible). */
static int interrupted(mpb_context *c) {
    return set_err(c, MPB_ERR_INTR, "Interrupted", "interrupted by a signal");
}

int mpb_buffer_read(mpb_context *c) { return read_some(c, false); }

static int read_some(mpb_context *c, bool block) {
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK || fail_if_broken(c)) return c->err;
    struct mpb_context_priv *p = c->priv;
    if (p->eof) {
        set_ok(c);
        return MPB_OK;
    }
    size_t avail;
    char *space = mpb_reader_space(&p->reader, READ_CHUNK, &avail);
    if (space == NULL) return set_err(c, MPB_ERR_OOM, "OutOfMemory", "read buffer");
    for (;;) {
        ssize_t n = mpb_client_recv(c, space, avail, block ? 0 : MSG_DONTWAIT);
        if (n < 0 && block && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = c->fd, .events = POLLIN}; /* a non-blocking fd */
            if (poll(&pf, 1, -1) >= 0) continue;
            if (errno == EINTR && p->interruptible) return interrupted(c);
            if (errno == EINTR) continue;
        }
        if (n > 0) {
            mpb_reader_commit(&p->reader, (size_t)n);
            if (mpb_client_buffered(c)) { /* decrypted bytes a poll() would not see */
                if ((space = mpb_reader_space(&p->reader, READ_CHUNK, &avail)) == NULL)
                    return set_err(c, MPB_ERR_OOM, "OutOfMemory", "read buffer");
                block = false;
                continue;
            }
        } else if (n == 0 || errno == ECONNRESET) {
            /* Replies already read (and a final BadRequest) are still served. */
            p->eof = true;
        } else if (errno == EINTR) {
            if (block && p->interruptible) return interrupted(c);
            continue;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            /* EPROTO: a TLS alert, such as the broker refusing our certificate. */
            set_err(c, MPB_ERR_IO, errno == EPROTO ? "TLSError" : "ConnectionError", "read: %s",
                    mpb_client_strerror(c, errno));
            return break_conn(c);
        }
        break;
    }
    set_ok(c);
    return MPB_OK;
}

/* The oldest call was lost with a connection: its outcome. */
static int take_lost(mpb_context *c) {
    c->priv->lost--;
    return set_err(c, MPB_ERR_IO, "ConnectionError", "the connection was lost before the "
                   "reply came (%s)", c->priv->broken);
}

static int take_reply(mpb_context *c, mpb_value *result, int *got);

int mpb_buffer_take_reply(mpb_context *c, mpb_value *result, int *got) {
    int dummy;
    if (result != NULL) *result = mpb_nil();
    if (got == NULL) got = &dummy;
    *got = 0;
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK) return c->err;
    struct mpb_context_priv *p = c->priv;
    if (p->lost > 0) {
        *got = 1;
        return take_lost(c);
    }
    if (fail_if_broken(c)) return c->err;
    if (p->nids == 0)
        return set_err(c, MPB_ERR_ARG, "ValueError", "no call is waiting for a reply");
    size_t inflight = p->nids;
    int rc = take_reply(c, result, got);
    if (*got && c->fd < 0) p->lost = inflight - 1; /* the oldest has its outcome */
    return rc;
}

/* mpb_buffer_take_reply, calls awaiting replies. */
static int take_reply(mpb_context *c, mpb_value *result, int *got) {
    struct mpb_context_priv *p = c->priv;
    msgpack_object o;
    mpb_read_status st;
    /* Notifications (monitor events) may come between replies: queue them. One too
     * deep to read answers no call, so skipping it keeps the stream in step. */
    for (;;) {
        st = mpb_reader_next(&p->reader, &o);
        if (st == MPB_READ_MSG && is_notification(&o)) {
            struct mpb_note *n = note_from_object(&o);
            if (n != NULL) note_push(p, n);
        } else if (st != MPB_READ_TOO_DEEP || p->reader.skipped_type != 2) {
            break;
        }
    }
    switch (st) {
    case MPB_READ_MSG:
        *got = 1;
        return handle_reply(c, &o, result);
    case MPB_READ_NEED:
        if (p->eof) {
            set_err(c, MPB_ERR_EOF, "ConnectionError", "the broker closed the connection");
            return break_conn(c);
        }
        set_ok(c);
        return MPB_OK;
    case MPB_READ_TOO_DEEP:
        *got = 1;
        return too_deep_reply(c);
    default:
        set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "bad reply: %s", p->reader.errstr);
        return break_conn(c);
    }
}

/*--- Blocking calls ---*/

/* Wait until fd is ready for events. MPB_OK, or the context is broken. */
static int wait_fd(mpb_context *c, short events, short *revents) {
    struct pollfd pf = {.fd = c->fd, .events = events};
    while (poll(&pf, 1, -1) < 0) {
        if (errno == EINTR && c->priv->interruptible) return interrupted(c);
        if (errno != EINTR) {
            set_err(c, MPB_ERR_IO, "ConnectionError", "poll: %s", strerror(errno));
            return break_conn(c);
        }
    }
    *revents = pf.revents;
    return MPB_OK;
}

int mpb_flush(mpb_context *c) {
    int done, rc;
    short rev = 0;
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK) return c->err;
    while ((rc = mpb_buffer_write(c, &done)) == MPB_OK && !done) {
        /* Read replies while we write: a broker whose output to us is full stops
         * reading, and a long pipeline would otherwise deadlock on both sides. */
        short want = c->priv->eof ? POLLOUT : POLLOUT | POLLIN;
        if ((rc = wait_fd(c, want, &rev)) != MPB_OK) return rc;
        if ((rev & (POLLIN | POLLHUP | POLLERR)) && !c->priv->eof &&
            (rc = mpb_buffer_read(c)) != MPB_OK)
            return rc;
    }
    return rc;
}

int mpb_get_reply(mpb_context *c, mpb_value *result) {
    int rc, got;
    if (result != NULL) *result = mpb_nil();
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK) return c->err;
    struct mpb_context_priv *p = c->priv;
    if (p->lost > 0) return take_lost(c);
    if (fail_if_broken(c)) return c->err;
    if (p->nids == 0)
        return set_err(c, MPB_ERR_ARG, "ValueError", "no call is waiting for a reply");
    size_t inflight = p->nids;
    /* A failed flush may leave replies to read (see write_failed): serve those. */
    if ((rc = mpb_flush(c)) == MPB_OK || (c->fd >= 0 && rc != MPB_ERR_INTR)) {
        while ((rc = mpb_buffer_take_reply(c, result, &got)) == MPB_OK && !got &&
               (rc = read_some(c, true)) == MPB_OK) {
        }
    }
    /* Failed with the connection: that was this call's outcome; the others are lost. */
    if (rc != MPB_OK && c->fd < 0) p->lost = inflight - 1;
    return rc;
}

int mpb_call(mpb_context *c, const char *method, const mpb_value *args, size_t nargs,
             mpb_value *result) {
    int rc;
    if (result != NULL) *result = mpb_nil();
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK) return c->err;
    if (mpb_pending(c) > 0)
        return set_err(c, MPB_ERR_ARG, "ValueError", "mpb_call with %zu pipelined replies "
                       "unread: take them with mpb_get_reply first", mpb_pending(c));
    if ((rc = mpb_append_call(c, method, args, nargs)) != MPB_OK) return rc;
    return mpb_get_reply(c, result);
}

int mpb_set_interruptible(mpb_context *c, int enable) {
    if (c == NULL) return MPB_ERR_ARG;
    c->priv->interruptible = enable != 0;
    return MPB_OK;
}

size_t mpb_pending(const mpb_context *c) {
    /* In a child of fork() the calls in flight are the parent's: none are this one's. */
    return c != NULL && c->priv != NULL && c->priv->fork_gen == fork_gen
               ? c->priv->nids + c->priv->lost : 0;
}

/*--- Notifications ---*/

bool mpb_client_notes_queued(const mpb_context *c) { return c->priv->notes != NULL; }

/* Move the oldest queued notification out to the caller. */
static void note_take(struct mpb_context_priv *p, char *method, size_t n, mpb_value *params) {
    struct mpb_note *note = p->notes;
    if ((p->notes = note->next) == NULL) p->notes_tail = NULL;
    if (method != NULL && n > 0) copy_bounded(method, n, note->method, strlen(note->method));
    if (params != NULL)
        *params = note->params;
    else
        mpb_value_free(&note->params);
    free(note);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int mpb_get_notification(mpb_context *c, int timeout_ms, char *method, size_t n,
                         mpb_value *params, int *got) {
    if (params != NULL) *params = mpb_nil();
    if (got != NULL) *got = 0;
    if (method != NULL && n > 0) method[0] = '\0';
    if (c == NULL) return MPB_ERR_ARG;
    if (own_conn(c) != MPB_OK) return c->err;
    struct mpb_context_priv *p = c->priv;
    if (p->notes != NULL) { /* read before the connection broke, if it did: still good */
        note_take(p, method, n, params);
        if (got != NULL) *got = 1;
        set_ok(c);
        return MPB_OK;
    }
    if (fail_if_broken(c)) return c->err;
    if (p->nids > 0)
        return set_err(c, MPB_ERR_ARG, "ValueError", "%zu calls await replies: take them "
                       "with mpb_get_reply first", p->nids);
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        msgpack_object o;
        switch (mpb_reader_next(&p->reader, &o)) {
        case MPB_READ_MSG:
            if (!is_notification(&o)) {
                set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "the broker sent a message "
                        "that answers no call");
                return break_conn(c);
            }
            struct mpb_note *note = note_from_object(&o);
            if (note == NULL) continue; /* undecodable: dropped, as while awaiting replies */
            note_push(p, note);
            note_take(p, method, n, params);
            if (got != NULL) *got = 1;
            set_ok(c);
            return MPB_OK;
        case MPB_READ_NEED:
            break;
        case MPB_READ_TOO_DEEP: /* skipped whole; answers no call, so still in step */
            continue;
        default:
            set_err(c, MPB_ERR_PROTOCOL, "ProtocolError", "bad message: %s", p->reader.errstr);
            return break_conn(c);
        }
        if (p->eof) {
            set_err(c, MPB_ERR_EOF, "ConnectionError", "the broker closed the connection");
            return break_conn(c);
        }
        long long left = deadline < 0 ? -1 : deadline - now_ms();
        if (deadline >= 0 && left <= 0) break;
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pf, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (r < 0 && errno == EINTR) break; /* let the caller look at its signal flag */
        if (r < 0) {
            set_err(c, MPB_ERR_IO, "ConnectionError", "poll: %s", strerror(errno));
            return break_conn(c);
        }
        if (r == 0) break;
        int rc = mpb_buffer_read(c);
        if (rc != MPB_OK) return rc;
    }
    set_ok(c);
    return MPB_OK;
}
