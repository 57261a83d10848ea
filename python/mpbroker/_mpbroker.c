/* _mpbroker.c - the C half of the Python package: a connection to the broker and the
 * conversion between Python objects and mpb_value, over libmpbroker.
 *
 * What lives here: Connection (one libmpbroker context: connect, authenticate, call,
 * pipeline; the GIL is released around every wait, and a signal ends a wait so that
 * Ctrl-C raises KeyboardInterrupt), Ref (a bare object reference), and the two
 * conversions. What does not: proxies, the Manager and the mapping from the broker's
 * error kinds to Python exceptions (the .py files; registered here with set_hooks).
 *
 * Conversion rules (docs in python/README section of the top README):
 *   None, bool, int (int64 and uint64 ranges), float, str, bytes: the msgpack scalars;
 *   list and tuple: array (read back as list; as tuple where a dict key or set element
 *   must be hashable); dict: map; Ref, or any object with a Ref in `_mpb_ref` (a proxy):
 *   a reference. Anything else (a subclass, a set, a bigger int, ...) is pickled and
 *   travels as the map {PICKLE_MARK: bin}, unpickled on the way back.
 * Fork: a Connection inherited through fork() reconnects in the child at its first
 * call (libmpbroker does it); parent and child never share a socket.
 * One thread at a time per Connection (a second one gets RuntimeError): use one per
 * thread, as the proxies do.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mpbroker.h"

/* The key of the one-entry map that carries a pickled object. A bin key, so that no
 * str-keyed dict a program stores can be mistaken for it. */
#define PICKLE_MARK "\x00mpbroker.pickle"
#define PICKLE_MARK_LEN (sizeof PICKLE_MARK - 1)

static PyObject *error_factory; /* (kind, message) -> exception instance; set_hooks */
static PyObject *pickle_dumps, *pickle_loads;
static PyObject *str_mpb_ref;   /* interned "_mpb_ref" */
static PyTypeObject RefType;

/*--- Ref: an object id, hashable, picklable ---*/

typedef struct {
    PyObject_HEAD
    uint64_t id;
} RefObject;

/* New reference to a Ref for id, or NULL with an exception. */
static PyObject *ref_new_id(uint64_t id)
{
    RefObject *r = PyObject_New(RefObject, &RefType);
    if (r != NULL) r->id = id;
    return (PyObject *)r;
}

static PyObject *Ref_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned long long id;
    static char *kwlist[] = {"id", NULL};
    (void)type;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "K", kwlist, &id)) return NULL;
    return ref_new_id(id);
}

static PyObject *Ref_repr(PyObject *self)
{
    char buf[32];
    snprintf(buf, sizeof buf, "Ref(0x%llx)", (unsigned long long)((RefObject *)self)->id);
    return PyUnicode_FromString(buf);
}

static Py_hash_t Ref_hash(PyObject *self)
{
    Py_hash_t h = (Py_hash_t)(((RefObject *)self)->id ^ (((RefObject *)self)->id >> 32));
    return h == -1 ? -2 : h;
}

static PyObject *Ref_richcompare(PyObject *a, PyObject *b, int op)
{
    if (!PyObject_TypeCheck(b, &RefType) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    int eq = ((RefObject *)a)->id == ((RefObject *)b)->id;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyObject *Ref_reduce(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("O(K)", (PyObject *)Py_TYPE(self),
                         (unsigned long long)((RefObject *)self)->id);
}

static PyObject *Ref_get_id(PyObject *self, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(((RefObject *)self)->id);
}

static PyMethodDef Ref_methods[] = {
    {"__reduce__", Ref_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ref_getset[] = {
    {"id", Ref_get_id, NULL, "the object id (int)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RefType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mpbroker._mpbroker.Ref",
    .tp_basicsize = sizeof(RefObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ref(id): a reference to a broker object, as the broker sends it.",
    .tp_new = Ref_new,
    .tp_repr = Ref_repr,
    .tp_hash = Ref_hash,
    .tp_richcompare = Ref_richcompare,
    .tp_methods = Ref_methods,
    .tp_getset = Ref_getset,
};

/*--- Python -> mpb_value ---*/

static int to_value(PyObject *o, mpb_value *out, int top);

static int pickled_value(PyObject *o, mpb_value *out)
{
    PyObject *b = PyObject_CallFunction(pickle_dumps, "Oi", o, 5);
    if (b == NULL) return -1;
    mpb_value m = mpb_map_value(), k = mpb_bin(PICKLE_MARK, PICKLE_MARK_LEN),
              v = mpb_bin(PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    Py_DECREF(b);
    if (m.type != MPB_MAP || k.type != MPB_BIN || v.type != MPB_BIN ||
        mpb_map_set(m.v.m, &k, &v, NULL) < 0) {
        mpb_value_free(&m), mpb_value_free(&k), mpb_value_free(&v);
        PyErr_NoMemory();
        return -1;
    }
    *out = m;
    return 0;
}

static int int_value(PyObject *o, mpb_value *out)
{
    int overflow;
    long long i = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (!overflow) {
        *out = mpb_int(i);
        return 0;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (!(u == (unsigned long long)-1 && PyErr_Occurred())) {
            *out = mpb_uint(u);
            return 0;
        }
        PyErr_Clear();
    }
    return pickled_value(o, out); /* past 64 bits: only Python can read it back */
}

static int seq_value(PyObject *o, mpb_value *out)
{
    PyObject *fast = PySequence_Fast(o, "not a sequence"); /* a list is its own */
    if (fast == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    mpb_value a = mpb_array_value((size_t)n);
    if (a.type != MPB_ARRAY) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    /* A list may change under us (a __reduce__ run by pickle can mutate it): re-read
     * the size each time, and hold each item while converting it. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        mpb_value v;
        Py_INCREF(item);
        int rc = to_value(item, &v, 0);
        Py_DECREF(item);
        if (rc < 0) goto fail;
        if (mpb_value_push(&a, &v) < 0) {
            mpb_value_free(&v);
            PyErr_NoMemory();
            goto fail;
        }
    }
    Py_DECREF(fast);
    *out = a;
    return 0;
fail:
    Py_DECREF(fast);
    mpb_value_free(&a);
    return -1;
}

static int dict_value(PyObject *o, mpb_value *out)
{
    mpb_value m = mpb_map_value();
    if (m.type != MPB_MAP) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *items = PyDict_Items(o); /* a snapshot: safe against mutation */
    if (items == NULL) goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        mpb_value k, v;
        if (to_value(PyTuple_GET_ITEM(kv, 0), &k, 0) < 0) goto fail;
        if (to_value(PyTuple_GET_ITEM(kv, 1), &v, 0) < 0) {
            mpb_value_free(&k);
            goto fail;
        }
        int rc = mpb_map_set(m.v.m, &k, &v, NULL);
        if (rc < 0) {
            mpb_value_free(&k), mpb_value_free(&v);
            if (rc == -2)
                PyErr_Format(PyExc_TypeError, "unhashable dict key for the broker: %R",
                             PyTuple_GET_ITEM(kv, 0));
            else
                PyErr_NoMemory();
            goto fail;
        }
    }
    Py_DECREF(items);
    *out = m;
    return 0;
fail:
    Py_XDECREF(items);
    mpb_value_free(&m);
    return -1;
}

/* A str that is not valid UTF-8 (lone surrogates): the bytes that from_value's
 * "surrogateescape" decoding reads back as the same str, so that a str read from the
 * broker (invalid UTF-8 stored by another client) can be sent back, compared and
 * looked up. A surrogate that escapes no byte (U+D800..U+DC7F, U+DD00..U+DFFF) stays
 * a UnicodeEncodeError. 0, or -1 with an exception. */
static int str_escaped_value(PyObject *o, mpb_value *out)
{
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
    PyErr_Clear();
    PyObject *b = PyUnicode_AsEncodedString(o, "utf-8", "surrogateescape");
    if (b == NULL) return -1;
    if ((size_t)PyBytes_GET_SIZE(b) > UINT32_MAX) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_OverflowError, "str too long for the broker");
        return -1;
    }
    *out = mpb_strn(PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    Py_DECREF(b);
    if (out->type == MPB_NIL) return PyErr_NoMemory(), -1;
    return 0;
}

/* o as an mpb_value in *out (owned by the caller: mpb_value_free). 0, or -1 with a
 * Python exception set. top: o is a call argument that outlives the call (the args
 * tuple holds it), so its bytes may be borrowed instead of copied. */
static int to_value(PyObject *o, mpb_value *out, int top)
{
    PyTypeObject *t = Py_TYPE(o);
    *out = mpb_nil();
    if (o == Py_None) return 0;
    if (t == &PyBool_Type) {
        *out = mpb_bool(o == Py_True);
        return 0;
    }
    if (t == &PyLong_Type) return int_value(o, out);
    if (t == &PyFloat_Type) {
        *out = mpb_float(PyFloat_AS_DOUBLE(o));
        return 0;
    }
    if (t == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) return str_escaped_value(o, out);
        if ((size_t)n > UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "str too long for the broker");
            return -1;
        }
        *out = top ? mpb_str_borrowed(s, (size_t)n) : mpb_strn(s, (size_t)n);
        if (out->type == MPB_NIL) return PyErr_NoMemory(), -1;
        return 0;
    }
    if (t == &PyBytes_Type) {
        if ((size_t)PyBytes_GET_SIZE(o) > UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "bytes too long for the broker");
            return -1;
        }
        const char *s = PyBytes_AS_STRING(o);
        size_t n = (size_t)PyBytes_GET_SIZE(o);
        *out = top ? mpb_bin_borrowed(s, n) : mpb_bin(s, n);
        if (out->type == MPB_NIL) return PyErr_NoMemory(), -1;
        return 0;
    }
    if (t == &RefType) {
        *out = mpb_refv(((RefObject *)o)->id);
        return 0;
    }
    if (Py_EnterRecursiveCall(" while converting a value for the broker")) return -1;
    int rc;
    if (t == &PyList_Type || t == &PyTuple_Type) {
        rc = seq_value(o, out);
    } else if (t == &PyDict_Type) {
        rc = dict_value(o, out);
    } else {
        /* A proxy stands for its object: its reference is what gets stored. */
        PyObject *ref = PyObject_GetAttr(o, str_mpb_ref);
        if (ref != NULL && Py_TYPE(ref) == &RefType) {
            *out = mpb_refv(((RefObject *)ref)->id);
            rc = 0;
        } else if (ref == NULL && !PyErr_ExceptionMatches(PyExc_AttributeError)) {
            rc = -1;
        } else {
            PyErr_Clear();
            rc = pickled_value(o, out);
        }
        Py_XDECREF(ref);
    }
    Py_LeaveRecursiveCall();
    return rc;
}

/*--- mpb_value -> Python ---*/

/* New reference for v, or NULL with an exception. key: v is a dict key or inside one,
 * so arrays become tuples (hashable). ref_hook: called with each Ref (a proxy factory),
 * or NULL/None to return Refs as they are. */
static PyObject *from_value(const mpb_value *v, int key, PyObject *ref_hook)
{
    switch ((mpb_type)v->type) {
    case MPB_NIL:
        Py_RETURN_NONE;
    case MPB_BOOL:
        return PyBool_FromLong(v->v.b);
    case MPB_INT:
        return PyLong_FromLongLong(v->v.i);
    case MPB_UINT:
        return PyLong_FromUnsignedLongLong(v->v.u);
    case MPB_FLOAT:
        return PyFloat_FromDouble(v->v.f);
    case MPB_STR:
        return PyUnicode_DecodeUTF8(v->v.s, v->len, "surrogateescape");
    case MPB_BIN:
        return PyBytes_FromStringAndSize(v->v.s, v->len);
    case MPB_REF: {
        PyObject *r = ref_new_id(v->v.ref);
        if (r == NULL || ref_hook == NULL || ref_hook == Py_None) return r;
        PyObject *p = PyObject_CallOneArg(ref_hook, r);
        Py_DECREF(r);
        return p;
    }
    default:
        break;
    }
    if (Py_EnterRecursiveCall(" while converting a value from the broker")) return NULL;
    PyObject *res = NULL;
    if (v->type == MPB_ARRAY) {
        const mpb_array *a = v->v.a;
        res = key ? PyTuple_New((Py_ssize_t)a->len) : PyList_New((Py_ssize_t)a->len);
        for (size_t i = 0; res != NULL && i < a->len; i++) {
            PyObject *item = from_value(&a->items[i], key, ref_hook);
            if (item == NULL) Py_CLEAR(res);
            else if (key) PyTuple_SET_ITEM(res, (Py_ssize_t)i, item);
            else PyList_SET_ITEM(res, (Py_ssize_t)i, item);
        }
    } else if (v->type == MPB_MAP) {
        const mpb_map *m = v->v.m;
        size_t it = 0;
        mpb_map_entry *e;
        if (m->len == 1 && (e = mpb_map_next(m, &it)) != NULL && e->key.type == MPB_BIN &&
            e->key.len == PICKLE_MARK_LEN && !memcmp(e->key.v.s, PICKLE_MARK, PICKLE_MARK_LEN) &&
            e->val.type == MPB_BIN) {
            PyObject *b = PyBytes_FromStringAndSize(e->val.v.s, e->val.len);
            if (b != NULL) res = PyObject_CallOneArg(pickle_loads, b);
            Py_XDECREF(b);
        } else if ((res = PyDict_New()) != NULL) {
            it = 0;
            while ((e = mpb_map_next(m, &it)) != NULL) {
                PyObject *k = from_value(&e->key, 1, ref_hook);
                PyObject *val = k ? from_value(&e->val, 0, ref_hook) : NULL;
                int rc = val ? PyDict_SetItem(res, k, val) : -1;
                Py_XDECREF(k);
                Py_XDECREF(val);
                if (rc < 0) {
                    Py_CLEAR(res);
                    break;
                }
            }
        }
    } else {
        PyErr_Format(PyExc_ValueError, "unknown value type %d from the broker", v->type);
    }
    Py_LeaveRecursiveCall();
    return res;
}

/*--- Connection ---*/

typedef struct {
    PyObject_HEAD
    mpb_context *c;      /* NULL after close, or after a wait was given up */
    PyObject *address;   /* str */
    PyObject *authkey;   /* bytes or None */
    PyObject *ref_hook;  /* callable or None */
    int busy;            /* a call is under way (another thread must not enter) */
    pid_t busy_pid;      /* the process whose thread set busy */
    int interruptible;   /* a signal whose handler raises ends a wait (and the connection) */
} ConnObject;

static double mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A call of this process is under way. One of the parent's, inherited through fork()
 * with the thread that made it, is not: that thread does not exist in the child, which
 * would otherwise find the connection busy for ever (libmpbroker gives the child its
 * own socket). */
static int conn_busy(ConnObject *self)
{
    return self->busy && self->busy_pid == getpid();
}

/* The exception for the context's last error, set as the current one. NULL. */
static PyObject *raise_ctx_error(mpb_context *c)
{
    const char *kind = c->errkind[0] ? c->errkind : "ConnectionError";
    PyObject *exc = NULL;
    if (error_factory != NULL)
        exc = PyObject_CallFunction(error_factory, "ss", kind, c->errstr);
    if (exc == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "%s: %s", kind, c->errstr);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Connect now. 0, or -1 with an exception (self->c stays NULL). */
static int conn_open(ConnObject *self)
{
    const char *addr = PyUnicode_AsUTF8(self->address);
    const char *key = NULL;
    Py_ssize_t keylen = 0;
    if (addr == NULL) return -1;
    if (self->authkey != Py_None && PyBytes_AsStringAndSize(self->authkey, (char **)&key, &keylen) < 0)
        return -1;
    mpb_context *c;
    Py_BEGIN_ALLOW_THREADS
    /* key NULL (authkey None): libmpbroker's default, $MPBROKER_AUTHKEY_FILE or
     * $MPBROKER_AUTHKEY, else no handshake. */
    c = mpb_connect_with_key(addr, key, (size_t)keylen);
    Py_END_ALLOW_THREADS
    if (c == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (c->err) {
        raise_ctx_error(c);
        mpb_free(c);
        return -1;
    }
    mpb_set_interruptible(c, self->interruptible);
    self->c = c;
    return 0;
}

/* Give the connection up (a wait interrupted, a broken socket): the next call opens a
 * new one. The broker drops what the old one held, parked or owned. */
static void conn_drop(ConnObject *self)
{
    mpb_context *c = self->c;
    self->c = NULL;
    if (c != NULL) {
        Py_BEGIN_ALLOW_THREADS
        mpb_free(c);
        Py_END_ALLOW_THREADS
    }
}

static int conn_enter(ConnObject *self)
{
    if (conn_busy(self)) {
        PyErr_SetString(PyExc_RuntimeError, "this mpbroker connection is in use by another "
                        "thread (use one connection per thread)");
        return -1;
    }
    /* Busy before connecting: conn_open releases the GIL, and a second thread must
     * not connect too (its context would replace the first one's under its call). */
    self->busy = 1;
    self->busy_pid = getpid();
    if (self->c == NULL && conn_open(self) < 0) {
        self->busy = 0;
        return -1;
    }
    return 0;
}

/* Wait for the oldest pending reply with the GIL released; on a signal run the Python
 * handlers, and if one raises (KeyboardInterrupt) give the connection up. rc of
 * mpb_get_reply, or MPB_ERR_INTR with a Python exception set. */
static int wait_reply(ConnObject *self, mpb_value *result)
{
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = mpb_get_reply(self->c, result);
        Py_END_ALLOW_THREADS
        if (rc != MPB_ERR_INTR) return rc;
        if (PyErr_CheckSignals() < 0) {
            conn_drop(self);
            return MPB_ERR_INTR;
        }
    }
}

/* The outcome of a reply as a new reference, or NULL with an exception. A broken
 * connection is dropped, so that the next call connects again. */
static PyObject *reply_object(ConnObject *self, int rc, mpb_value *result)
{
    if (rc == MPB_OK) {
        PyObject *r = from_value(result, 0, self->ref_hook);
        mpb_value_free(result);
        return r;
    }
    if (rc == MPB_ERR_INTR) return NULL; /* the exception is set */
    raise_ctx_error(self->c);
    if (self->c->fd < 0) conn_drop(self);
    return NULL;
}

static int append(ConnObject *self, PyObject *method, PyObject *args, Py_ssize_t first)
{
    const char *m = PyUnicode_AsUTF8(method);
    if (m == NULL) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(args) - first;
    mpb_value stack[8], *vals = n <= 8 ? stack : PyMem_Calloc((size_t)n, sizeof *vals);
    if (vals == NULL) return PyErr_NoMemory(), -1;
    Py_ssize_t done = 0;
    int rc = 0;
    for (; done < n; done++)
        if (to_value(PyTuple_GET_ITEM(args, first + done), &vals[done], 1) < 0) {
            rc = -1;
            break;
        }
    if (rc == 0 && mpb_append_call(self->c, m, vals, (size_t)n) != MPB_OK) {
        raise_ctx_error(self->c);
        if (self->c->fd < 0) conn_drop(self);
        rc = -1;
    }
    for (Py_ssize_t i = 0; i < done; i++) mpb_value_free(&vals[i]);
    if (vals != stack) PyMem_Free(vals);
    return rc;
}

/* call(method, *args) -> result */
static PyObject *Conn_call(ConnObject *self, PyObject *args)
{
    if (PyTuple_GET_SIZE(args) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(args, 0))) {
        PyErr_SetString(PyExc_TypeError, "call(method: str, *args)");
        return NULL;
    }
    if (conn_enter(self) < 0) return NULL;
    PyObject *res = NULL;
    if (append(self, PyTuple_GET_ITEM(args, 0), args, 1) == 0) {
        mpb_value result;
        int rc = wait_reply(self, &result);
        self->busy = 0; /* before conversion: a ref hook may call on this connection */
        return reply_object(self, rc, &result);
    }
    self->busy = 0;
    return res;
}

/* The current exception as an instance (cleared), for returning it as a value. */
static PyObject *take_exception(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL && tb != NULL) PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}

/* pipeline([(method, args), ...]) -> [result or exception instance, ...]: every call
 * is sent in one write and the replies read in order. */
static PyObject *Conn_pipeline(ConnObject *self, PyObject *calls)
{
    /* A tuple of our own: converting a value runs Python code (pickling) that may
     * change the caller's list; ours holds every (method, args) while we read it. */
    PyObject *seq = PySequence_Tuple(calls);
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), sent = 0, got = 0;
    PyObject *out = NULL, **errs = NULL;
    mpb_value *results = NULL;
    if (conn_enter(self) < 0) goto done;
    results = PyMem_Calloc((size_t)n + 1, sizeof *results);
    errs = PyMem_Calloc((size_t)n + 1, sizeof *errs);
    if (results == NULL || errs == NULL) {
        PyErr_NoMemory();
        self->busy = 0;
        goto done;
    }
    for (; sent < n; sent++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, sent), *m, *a;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_Check(m = PyTuple_GET_ITEM(item, 0)) ||
            !PyTuple_Check(a = PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "pipeline items are (method: str, args: tuple)");
            break;
        }
        if (append(self, m, a, 0) < 0) break;
    }
    if (sent < n) {
        /* Some were queued: take their replies so the connection stays in step. */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        for (Py_ssize_t i = 0; i < sent && self->c != NULL; i++) {
            if (wait_reply(self, &results[i]) == MPB_ERR_INTR) PyErr_Clear();
        }
        PyErr_Restore(t, v, tb);
        self->busy = 0;
        goto done;
    }
    for (; got < n; got++) {
        int rc = wait_reply(self, &results[got]);
        if (rc == MPB_ERR_INTR) break; /* the connection is gone with the rest */
        if (rc != MPB_OK) { /* the later calls of a lost connection fail at once */
            raise_ctx_error(self->c);
            errs[got] = take_exception();
        }
    }
    if (self->c != NULL && self->c->fd < 0) conn_drop(self);
    self->busy = 0;
    if (got < n || (out = PyList_New(n)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = errs[i];
        errs[i] = NULL;
        if (r == NULL && (r = from_value(&results[i], 0, self->ref_hook)) == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, r);
    }
done:
    for (Py_ssize_t i = 0; results != NULL && i < n; i++) mpb_value_free(&results[i]);
    for (Py_ssize_t i = 0; errs != NULL && i < n; i++) Py_XDECREF(errs[i]);
    PyMem_Free(results);
    PyMem_Free(errs);
    Py_DECREF(seq);
    return out;
}

/* notification(timeout=None) -> (method, params), or None when timeout (seconds)
 * passed first. For watches (manager.watch) and monitors: no call may be pending. */
static PyObject *Conn_notification(ConnObject *self, PyObject *args)
{
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &timeout)) return NULL;
    double t = -1;
    if (timeout != Py_None) {
        t = PyFloat_AsDouble(timeout);
        if (t == -1 && PyErr_Occurred()) return NULL;
        if (t < 0) t = 0;
    }
    if (conn_enter(self) < 0) return NULL;
    double deadline = t < 0 ? 0 : mono_seconds() + t;
    char method[64];
    mpb_value params;
    int got = 0, rc;
    for (;;) {
        int ms = -1;
        if (t >= 0) {
            double left = deadline - mono_seconds();
            ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = mpb_get_notification(self->c, ms, method, sizeof method, &params, &got);
        Py_END_ALLOW_THREADS
        if (rc != MPB_OK || got) break;
        if (PyErr_CheckSignals() < 0) { /* a handler raised (KeyboardInterrupt) */
            self->busy = 0;
            return NULL;
        }
        if (t >= 0 && mono_seconds() >= deadline) break;
    }
    self->busy = 0;
    if (rc != MPB_OK) {
        raise_ctx_error(self->c);
        if (self->c->fd < 0) conn_drop(self);
        return NULL;
    }
    if (!got) Py_RETURN_NONE;
    PyObject *p = from_value(&params, 0, self->ref_hook);
    mpb_value_free(&params);
    if (p == NULL) return NULL;
    return Py_BuildValue("(sN)", method, p);
}

static PyObject *Conn_close(ConnObject *self, PyObject *unused)
{
    (void)unused;
    if (conn_busy(self)) {
        PyErr_SetString(PyExc_RuntimeError, "close() while a call is under way");
        return NULL;
    }
    conn_drop(self);
    Py_RETURN_NONE;
}

static PyObject *Conn_fileno(ConnObject *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(self->c != NULL ? self->c->fd : -1);
}

static int Conn_init(ConnObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"address", "authkey", "ref_hook", "lazy", "interruptible", NULL};
    PyObject *address, *authkey = Py_None, *hook = Py_None;
    int lazy = 0, interruptible = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|OOpp", kwlist, &address, &authkey, &hook,
                                     &lazy, &interruptible))
        return -1;
    if (authkey != Py_None && !PyBytes_Check(authkey)) {
        PyErr_SetString(PyExc_TypeError, "authkey must be bytes or None");
        return -1;
    }
    if (authkey != Py_None && PyBytes_GET_SIZE(authkey) == 0) authkey = Py_None;
    if (conn_busy(self)) { /* its context is in use, the GIL released: keep it */
        PyErr_SetString(PyExc_RuntimeError, "__init__() while a call is under way");
        return -1;
    }
    self->interruptible = interruptible;
    Py_INCREF(address);
    Py_XSETREF(self->address, address);
    Py_INCREF(authkey);
    Py_XSETREF(self->authkey, authkey);
    Py_INCREF(hook);
    Py_XSETREF(self->ref_hook, hook);
    conn_drop(self);
    return lazy ? 0 : conn_open(self);
}

static void Conn_dealloc(ConnObject *self)
{
    mpb_free(self->c); /* no GIL release: may run at interpreter exit */
    Py_XDECREF(self->address);
    Py_XDECREF(self->authkey);
    Py_XDECREF(self->ref_hook);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Conn_get_address(ConnObject *self, void *unused)
{
    (void)unused;
    return Py_NewRef(self->address);
}

static PyObject *Conn_get_hook(ConnObject *self, void *unused)
{
    (void)unused;
    return Py_NewRef(self->ref_hook);
}

static int Conn_set_hook(ConnObject *self, PyObject *v, void *unused)
{
    (void)unused;
    if (v == NULL) v = Py_None;
    Py_INCREF(v);
    Py_XSETREF(self->ref_hook, v);
    return 0;
}

static PyMethodDef Conn_methods[] = {
    {"call", (PyCFunction)Conn_call, METH_VARARGS,
     "call(method, *args) -> result: one request, waiting for its reply (GIL released)"},
    {"pipeline", (PyCFunction)Conn_pipeline, METH_O,
     "pipeline([(method, args), ...]) -> [result or exception, ...] in one round trip"},
    {"notification", (PyCFunction)Conn_notification, METH_VARARGS,
     "notification(timeout=None) -> (method, params), or None after timeout seconds: the "
     "next notification the broker sent (manager.watch, manager.monitor)"},
    {"close", (PyCFunction)Conn_close, METH_NOARGS, "close the socket (a call reopens it)"},
    {"fileno", (PyCFunction)Conn_fileno, METH_NOARGS, "the socket, or -1"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Conn_getset[] = {
    {"address", (getter)Conn_get_address, NULL, "the broker's address", NULL},
    {"ref_hook", (getter)Conn_get_hook, (setter)Conn_set_hook,
     "called with each Ref in a result (None: Refs as they are)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mpbroker._mpbroker.Connection",
    .tp_basicsize = sizeof(ConnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Connection(address, authkey=None, ref_hook=None, lazy=False, "
              "interruptible=True): one connection to a broker (libmpbroker context); one "
              "thread at a time. interruptible: a signal whose handler raises ends a wait "
              "and gives the connection up (with what it held); False: the wait goes on "
              "and the handler's exception comes after the reply.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_methods = Conn_methods,
    .tp_getset = Conn_getset,
};

/*--- Module functions ---*/

static PyObject *mod_set_hooks(PyObject *mod, PyObject *args)
{
    PyObject *factory;
    (void)mod;
    if (!PyArg_ParseTuple(args, "O", &factory)) return NULL;
    Py_INCREF(factory);
    Py_XSETREF(error_factory, factory);
    Py_RETURN_NONE;
}

/* Round trip through the conversion alone, for tests: Python -> mpb_value -> Python. */
static PyObject *mod_roundtrip(PyObject *mod, PyObject *o)
{
    (void)mod;
    mpb_value v;
    if (to_value(o, &v, 0) < 0) return NULL;
    PyObject *r = from_value(&v, 0, NULL);
    mpb_value_free(&v);
    return r;
}

/* The repr the broker would print for a value: shows what travels. */
static PyObject *mod_wire_repr(PyObject *mod, PyObject *o)
{
    (void)mod;
    mpb_value v;
    if (to_value(o, &v, 0) < 0) return NULL;
    char *s = mpb_value_repr(&v);
    mpb_value_free(&v);
    if (s == NULL) return PyErr_NoMemory();
    PyObject *r = PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
    free(s);
    return r;
}

static PyObject *mod_default_address(PyObject *mod, PyObject *unused)
{
    char buf[320];
    (void)mod, (void)unused;
    return PyUnicode_FromString(mpb_default_address(buf, sizeof buf));
}

static PyMethodDef mod_methods[] = {
    {"set_hooks", mod_set_hooks, METH_VARARGS,
     "set_hooks(error_factory): error_factory(kind, message) -> exception instance"},
    {"roundtrip", mod_roundtrip, METH_O, "convert to the broker's value and back (tests)"},
    {"wire_repr", mod_wire_repr, METH_O, "the broker's repr of the value o converts to"},
    {"default_address", mod_default_address, METH_NOARGS, "the broker's default socket"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_mpbroker", "mpbroker's C core: Connection, Ref, conversion.",
    -1, mod_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mpbroker(void)
{
    if (PyType_Ready(&RefType) < 0 || PyType_Ready(&ConnType) < 0) return NULL;
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) return NULL;
    pickle_dumps = PyObject_GetAttrString(pickle, "dumps");
    pickle_loads = PyObject_GetAttrString(pickle, "loads");
    Py_DECREF(pickle);
    str_mpb_ref = PyUnicode_InternFromString("_mpb_ref");
    if (pickle_dumps == NULL || pickle_loads == NULL || str_mpb_ref == NULL) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Ref", (PyObject *)&RefType) < 0 ||
        PyModule_AddObjectRef(m, "Connection", (PyObject *)&ConnType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DEPTH", 32) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
