/* async.c - the asynchronous API of libmpbroker: calls with callbacks, driven by a
 * libevent event_base (hiredis's async.c + adapters/libevent.h in one file).
 *
 * An mpb_async_context wraps a blocking mpb_context and drives its non-blocking steps:
 * mpb_async_call encodes with mpb_append_call and queues the callback; a write event
 * sends with mpb_buffer_write (added once per batch, so the calls made in one loop turn
 * leave in one send); a read event feeds mpb_buffer_read and hands each reply taken by
 * mpb_buffer_take_reply to the oldest callback. Replies come in request order, so a
 * FIFO of callbacks is all the bookkeeping there is. Nothing here encodes or decodes:
 * that is client.c.
 *
 * Every accepted call's callback runs exactly once: with its reply, or with a
 * ConnectionError when the connection is lost or the context freed first. Freeing from
 * inside a callback is deferred until that callback returns (hiredis's
 * REDIS_IN_CALLBACK), so the loop that called it never touches freed memory.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"
#include "mpbroker.h"

#define F_IN_CALLBACK 0x1   /* a user callback is running: free later */
#define F_FREEING 0x2       /* mpb_async_free was called inside a callback */
#define F_DISCONNECTING 0x4 /* mpb_async_disconnect: no new calls; close when drained */
#define F_DEAD 0x8          /* torn down: callbacks are being failed */

struct pending {
    mpb_async_fn *fn;
    void *privdata;
};

struct mpb_async_priv {
    struct event_base *base;
    struct event *rev, *wev;
    struct pending *q; /* ring of callbacks in request order, oldest at q[head] */
    size_t head, n, cap;
    mpb_async_disconnect_fn *on_disconnect;
    int flags;
    mpb_async_note_fn *note_fn; /* notifications, or NULL: left for the blocking context */
    void *note_priv;
    mpb_async_change_fn *change_fn; /* "changed"/"overflow" (mpb_async_watch) */
    void *change_priv;
};

/*--- Errors ---*/

static void copy_str(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

static int set_err(mpb_async_context *ac, int err, const char *kind, const char *fmt, ...) {
    va_list ap;
    ac->err = err;
    copy_str(ac->errkind, sizeof ac->errkind, kind);
    va_start(ap, fmt);
    vsnprintf(ac->errstr, sizeof ac->errstr, fmt, ap);
    va_end(ap);
    return err;
}

/* The blocking context failed: take its description. */
static int err_from_context(mpb_async_context *ac) {
    ac->err = ac->c->err;
    copy_str(ac->errkind, sizeof ac->errkind, ac->c->errkind);
    copy_str(ac->errstr, sizeof ac->errstr, ac->c->errstr);
    return ac->err;
}

/*--- Connecting and freeing ---*/

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);

mpb_async_context *mpb_async_connect(struct event_base *base, const char *address) {
    mpb_async_context *ac = calloc(1, sizeof *ac);
    if (ac == NULL) return NULL;
    if ((ac->priv = calloc(1, sizeof *ac->priv)) == NULL) {
        free(ac);
        return NULL;
    }
    ac->priv->base = base;
    ac->c = mpb_connect(address);
    if (ac->c == NULL) {
        set_err(ac, MPB_ERR_OOM, "OutOfMemory", "connecting");
        return ac;
    }
    if (ac->c->err) {
        err_from_context(ac);
        return ac;
    }
    if (base == NULL) {
        set_err(ac, MPB_ERR_ARG, "ValueError", "mpb_async_connect: NULL event_base");
        return ac;
    }
    ac->priv->rev = event_new(base, ac->c->fd, EV_READ | EV_PERSIST, on_read, ac);
    ac->priv->wev = event_new(base, ac->c->fd, EV_WRITE, on_write, ac);
    if (ac->priv->rev == NULL || ac->priv->wev == NULL || event_add(ac->priv->rev, NULL) < 0) {
        set_err(ac, MPB_ERR_OOM, "OutOfMemory", "creating the context's events");
        return ac;
    }
    return ac;
}

/* Release everything; callbacks have all run. */
static void release(mpb_async_context *ac) {
    struct mpb_async_priv *p = ac->priv;
    if (p->rev) event_free(p->rev); /* before mpb_free closes the fd */
    if (p->wev) event_free(p->wev);
    mpb_free(ac->c);
    free(p->q);
    free(p);
    free(ac);
}

/* One callback, with its reply; the library frees what the callback left in value. */
static void run_callback(mpb_async_context *ac, struct pending *cb, mpb_reply *r) {
    if (cb->fn != NULL) {
        ac->priv->flags |= F_IN_CALLBACK;
        cb->fn(ac, r, cb->privdata);
        ac->priv->flags &= ~F_IN_CALLBACK;
    }
    mpb_value_free(&r->value);
}

/* The connection is over (status MPB_OK: the user ended it; else what broke it, as
 * described in ac->errkind/errstr): fail every pending call with a ConnectionError,
 * tell the disconnect callback, free the context. */
static void teardown(mpb_async_context *ac, int status) {
    struct mpb_async_priv *p = ac->priv;
    p->flags |= F_DEAD;
    if (p->rev) event_del(p->rev);
    if (p->wev) event_del(p->wev);
    while (p->n > 0) {
        struct pending cb = p->q[p->head];
        p->head = (p->head + 1) % p->cap;
        p->n--;
        mpb_reply r = {.err = status != MPB_OK ? status : MPB_ERR_IO, .value = mpb_nil()};
        copy_str(r.errkind, sizeof r.errkind, "ConnectionError");
        if (status == MPB_OK)
            copy_str(r.errstr, sizeof r.errstr, "the context was freed before the reply came");
        else
            snprintf(r.errstr, sizeof r.errstr, "%.31s%s%.220s", ac->errkind,
                     ac->errkind[0] ? ": " : "", ac->errstr);
        run_callback(ac, &cb, &r);
    }
    if (p->on_disconnect != NULL) {
        p->flags |= F_IN_CALLBACK;
        p->on_disconnect(ac, status);
        p->flags &= ~F_IN_CALLBACK;
    }
    release(ac);
}

/* The blocking context broke (its fd is closed): stop watching at once, then fail. */
static void broken(mpb_async_context *ac) {
    if (ac->priv->rev) event_del(ac->priv->rev);
    if (ac->priv->wev) event_del(ac->priv->wev);
    err_from_context(ac);
    teardown(ac, ac->err != MPB_OK ? ac->err : MPB_ERR_IO);
}

void mpb_async_free(mpb_async_context *ac) {
    if (ac == NULL) return;
    struct mpb_async_priv *p = ac->priv;
    if (p->flags & F_DEAD) return; /* teardown is under way and frees it */
    if (p->flags & F_IN_CALLBACK) {
        p->flags |= F_FREEING;
        return;
    }
    if (ac->c == NULL || ac->c->fd < 0 || p->rev == NULL) { /* never connected */
        release(ac);
        return;
    }
    teardown(ac, MPB_OK);
}

void mpb_async_disconnect(mpb_async_context *ac) {
    if (ac == NULL) return;
    struct mpb_async_priv *p = ac->priv;
    p->flags |= F_DISCONNECTING;
    if (p->n == 0 && !(p->flags & (F_IN_CALLBACK | F_DEAD))) mpb_async_free(ac);
}

void mpb_async_set_disconnect_callback(mpb_async_context *ac, mpb_async_disconnect_fn *fn) {
    if (ac != NULL) ac->priv->on_disconnect = fn;
}

size_t mpb_async_pending(const mpb_async_context *ac) {
    return ac != NULL ? ac->priv->n : 0;
}

/*--- Calls ---*/

static int queue_push(struct mpb_async_priv *p, mpb_async_fn *fn, void *privdata) {
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 64;
        struct pending *q = malloc(ncap * sizeof *q);
        if (q == NULL) return -1;
        for (size_t i = 0; i < p->n; i++) q[i] = p->q[(p->head + i) % p->cap];
        free(p->q);
        p->q = q;
        p->cap = ncap;
        p->head = 0;
    }
    p->q[(p->head + p->n++) % p->cap] = (struct pending){fn, privdata};
    return 0;
}

int mpb_async_call(mpb_async_context *ac, const char *method, const mpb_value *args,
                   size_t nargs, mpb_async_fn *fn, void *privdata) {
    if (ac == NULL) return MPB_ERR_ARG;
    struct mpb_async_priv *p = ac->priv;
    if (p->flags & (F_DEAD | F_FREEING | F_DISCONNECTING))
        return set_err(ac, MPB_ERR_IO, "ConnectionError", "the context is disconnecting");
    if (ac->c == NULL || ac->c->fd < 0 || p->rev == NULL)
        return set_err(ac, MPB_ERR_IO, "ConnectionError", "not connected (%s)", ac->errstr);
    /* Room for the callback first: once the request is encoded it cannot be taken back. */
    if (queue_push(p, fn, privdata) < 0)
        return set_err(ac, MPB_ERR_OOM, "OutOfMemory", "queueing a call");
    if (mpb_append_call(ac->c, method, args, nargs) != MPB_OK) {
        p->n--; /* the request was not queued: forget its callback */
        return err_from_context(ac);
    }
    if (!event_pending(p->wev, EV_WRITE, NULL)) event_add(p->wev, NULL);
    ac->err = MPB_OK;
    ac->errkind[0] = ac->errstr[0] = '\0';
    return MPB_OK;
}

/*--- Events ---*/

/* After a callback: honour a free or a disconnect asked for inside it. 1 when ac is
 * gone. */
static int after_callback(mpb_async_context *ac) {
    struct mpb_async_priv *p = ac->priv;
    if (p->flags & F_FREEING) {
        p->flags &= ~F_FREEING;
        teardown(ac, MPB_OK);
        return 1;
    }
    if ((p->flags & F_DISCONNECTING) && p->n == 0) {
        teardown(ac, MPB_OK);
        return 1;
    }
    return 0;
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    mpb_async_context *ac = arg;
    int done;
    if (mpb_buffer_write(ac->c, &done) != MPB_OK) {
        /* Still open: the broker closed on a write but its replies may be waiting; the
         * read event delivers them, then the EOF ends the context. */
        if (ac->c->fd < 0) broken(ac);
        return;
    }
    if (!done) event_add(ac->priv->wev, NULL);
}

/* Readable with no call pending: the broker closed (or sent what nobody asked for).
 * 1 when ac is gone. */
static int read_unexpected(mpb_async_context *ac) {
    char b;
    ssize_t n = recv(ac->c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (n > 0) { /* a notification, say: delivered, or kept for the blocking context */
        if (mpb_buffer_read(ac->c) != MPB_OK) {
            broken(ac);
            return 1;
        }
        return 0;
    }
    set_err(ac, n == 0 ? MPB_ERR_EOF : MPB_ERR_IO, "ConnectionError", "%s",
            n == 0 ? "the broker closed the connection" : strerror(errno));
    teardown(ac, ac->err);
    return 1;
}

/* One notification to the callbacks set. 1 when ac is gone. */
static int deliver_note(mpb_async_context *ac, const char *method, mpb_value *params) {
    struct mpb_async_priv *p = ac->priv;
    bool changed = strcmp(method, "changed") == 0, over = strcmp(method, "overflow") == 0;
    p->flags |= F_IN_CALLBACK;
    if ((changed || over) && p->change_fn != NULL && params->type == MPB_ARRAY &&
        params->v.a->len == (changed ? 4u : 2u) && params->v.a->items[0].type == MPB_REF &&
        params->v.a->items[1].type == MPB_INT) {
        mpb_value *it = params->v.a->items;
        mpb_change ch = {.ref = it[0].v.ref, .version = it[1].v.i, .overflow = over,
                         .args = mpb_nil()};
        if (changed && it[2].type == MPB_STR)
            snprintf(ch.method, sizeof ch.method, "%.*s", (int)it[2].len, it[2].v.s);
        if (changed) ch.args = it[3];
        p->change_fn(ac, &ch, p->change_priv); /* args stay the library's */
    } else if (p->note_fn != NULL) {
        p->note_fn(ac, method, params, p->note_priv);
    }
    p->flags &= ~F_IN_CALLBACK;
    mpb_value_free(params);
    return after_callback(ac);
}

/* Hand every notification read so far to the callbacks (when some are set). */
static void deliver_notes(mpb_async_context *ac) {
    struct mpb_async_priv *p = ac->priv;
    if (p->note_fn == NULL && p->change_fn == NULL) return;
    for (;;) {
        /* With calls pending, only what was queued while taking replies; else also
         * what the reader holds (mpb_get_notification parses it, waiting for nothing). */
        if (p->n > 0 && !mpb_client_notes_queued(ac->c)) return;
        char method[64];
        mpb_value params;
        int got = 0;
        int rc = mpb_get_notification(ac->c, 0, method, sizeof method, &params, &got);
        if (rc != MPB_OK || !got) {
            if (ac->c->fd < 0) broken(ac);
            return;
        }
        if (deliver_note(ac, method, &params)) return;
    }
}

/* Take the replies that have arrived, oldest call first. 1 when ac is gone. */
static int read_replies(mpb_async_context *ac) {
    struct mpb_async_priv *p = ac->priv;
    if (p->n == 0) return read_unexpected(ac);
    if (mpb_buffer_read(ac->c) != MPB_OK) {
        broken(ac);
        return 1;
    }
    while (p->n > 0) {
        mpb_reply r = {.value = mpb_nil()};
        int got;
        int rc = mpb_buffer_take_reply(ac->c, &r.value, &got);
        if (!got) {
            if (rc != MPB_OK) broken(ac); /* EOF or garbage before a whole reply */
            return rc != MPB_OK;
        }
        struct pending cb = p->q[p->head];
        p->head = (p->head + 1) % p->cap;
        p->n--;
        r.err = rc;
        if (rc != MPB_OK) {
            copy_str(r.errkind, sizeof r.errkind, ac->c->errkind);
            copy_str(r.errstr, sizeof r.errstr, ac->c->errstr);
        }
        run_callback(ac, &cb, &r);
        if (ac->c->fd < 0) { /* that reply broke the stream (undecodable): fail the rest */
            broken(ac);
            return 1;
        }
        if (after_callback(ac)) return 1;
    }
    return 0;
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    mpb_async_context *ac = arg;
    if (!read_replies(ac)) deliver_notes(ac);
}

void mpb_async_set_notification_callback(mpb_async_context *ac, mpb_async_note_fn *fn,
                                         void *privdata) {
    if (ac == NULL) return;
    ac->priv->note_fn = fn;
    ac->priv->note_priv = privdata;
}

int mpb_async_watch(mpb_async_context *ac, mpb_ref r, mpb_async_change_fn *fn, void *privdata,
                    mpb_async_fn *done, void *done_privdata) {
    if (ac == NULL) return MPB_ERR_ARG;
    ac->priv->change_fn = fn;
    ac->priv->change_priv = privdata;
    mpb_value args[1] = {mpb_refv(r)};
    return mpb_async_call(ac, "manager.watch", args, 1, done, done_privdata);
}
