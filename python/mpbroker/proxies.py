"""Proxies: Python objects that stand for broker objects, with the API of
multiprocessing.managers' proxies (ListProxy, DictProxy, AcquirerProxy, ...).

Every method is one call to the broker on the calling thread's connection. A proxy
pickles as its reference (plus the manager's authkey while a spawn or forkserver child
is being prepared, as Python's do), so passing one to a Process works under every
start method; the child's proxy holds the object in the child's name.
"""
import collections
import os
import threading
import time
import weakref
from multiprocessing import context as _mpctx

from ._mpbroker import Connection, Ref
from .client import TooLarge, get_client

__all__ = ['BaseProxy', 'ListProxy', 'DictProxy', 'NamespaceProxy', 'QueueProxy',
           'AcquirerProxy', 'ConditionProxy', 'EventProxy', 'BarrierProxy', 'ValueProxy',
           'ArrayProxy', 'SetProxy', 'PipeConnection', 'ChannelProxy', 'ChannelEnd',
           'ChannelPoisoned', 'ChannelRetired', 'select', 'proxy_for']

# Broker type -> proxy class, filled by the classes below.
_BY_KIND = {}
# Every proxy holding its object in this process, for the child of a fork (client.py).
_LIVE = weakref.WeakSet()


def live_proxies():
    return list(_LIVE)


def _register(*kinds):
    def deco(cls):
        for k in kinds:
            _BY_KIND[k] = cls
        return cls
    return deco


def proxy_for(client, ref, kind=None, held=False, state=None):
    """A proxy for ref. held: the holder connection holds it already for this proxy
    (manager.create / open); else it is held now."""
    if kind is None:
        kind = client.typeof(ref)
    cls = _BY_KIND.get(kind, BaseProxy)
    p = cls.__new__(cls)
    p._init(client, ref, kind, held or client.proxy_hold(ref), state)
    return p


def _rebuild(kind, ref_id, address, authkey, state):
    client = get_client(address, authkey)
    p = proxy_for(client, Ref(ref_id), kind, False, state)
    p._hold_extra()
    return p


class BaseProxy:
    _typeid = None  # Python's name for the type ('list', 'Event', ...)

    def _init(self, client, ref, kind, held, state):
        object.__setattr__(self, '_client', client)
        object.__setattr__(self, '_mpb_ref', ref)
        object.__setattr__(self, '_kind', kind)
        object.__setattr__(self, '_held_pid', os.getpid() if held else None)
        if held:
            _LIVE.add(self)
        self._setstate(state)

    def _setstate(self, state):
        pass

    def _hold_extra(self):
        """Hold the objects the state refers to (an unpickled proxy)."""

    def _held_refs(self):
        """The references this proxy holds while alive: its own first."""
        return (self._mpb_ref,)

    def _getstate(self):
        return None

    def _call(self, method, *args):
        return self._client.conn().call(method, self._mpb_ref, *args)

    def __reduce__(self):
        # The key travels only to a child being spawned (as Python's proxies do); a
        # forked child has it already. The child being spawned holds the object once
        # it has unpickled this; until then this proxy, kept alive by the child's
        # Popen, holds it for the child (Process.start() drops its args at once).
        popen = _mpctx.get_spawning_popen()
        key = None
        if popen is not None:
            key = self._client.authkey
            try:
                popen._mpbroker_keep.append(self)
            except AttributeError:
                try:
                    popen._mpbroker_keep = [self]
                except AttributeError:  # a Popen without a __dict__: nothing to pin on
                    pass
        return (_rebuild, (self._kind, self._mpb_ref.id, self._client.address, key,
                           self._getstate()))

    def __del__(self):
        try:
            if self._held_pid == os.getpid():
                self._client.release_later(self._mpb_ref)
        except Exception:  # interpreter shutdown: the connection drops the hold anyway
            pass

    def __repr__(self):
        return '<%s object, typeid %r at %#x>' % (type(self).__name__,
                                                  self._typeid or self._kind, id(self))

    def __str__(self):
        try:
            return repr(self._getvalue())
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"

    def _getvalue(self):
        return self

    # Versions and watches (docs/PROTOCOL.md, "Versions, watches and batches").

    def _version(self):
        """The object's version: grows by one with each write to it."""
        return self._call('manager.version')

    def _wait_change(self, version, timeout=None):
        """Sleep until the version is above `version`: the new version, or None when
        timeout seconds passed first."""
        v = self._client.conn().call('manager.wait_change', self._mpb_ref, version, timeout)
        return None if v is False else v

    def watch(self, timeout=None):
        """The object's changes, as they happen, whoever makes them: an iterator of
        Change(version, method, args, overflow), on a connection of its own (the
        watch starts now). overflow True: changes were dropped while this watcher fell
        behind (method and args None): read the object again. Iteration ends after
        `timeout` seconds without a change (None: never); close() (or a with block)
        ends the watch."""
        return _Watch(self, timeout)

    def __eq__(self, other):
        if isinstance(other, BaseProxy):
            return self._mpb_ref == other._mpb_ref
        return NotImplemented

    def __hash__(self):
        return hash(self._mpb_ref)


Change = collections.namedtuple('Change', 'version method args overflow')


class _Watch:
    """proxy.watch(): see there."""

    def __init__(self, proxy, timeout):
        c = proxy._client
        self._client = c
        # No ref hook: the watched object's own Ref is compared, not made a proxy (a
        # hold per change); references inside ARGS become proxies (_proxies).
        self._conn = Connection(c.address, c.authkey)
        self._timeout = timeout
        self.ref = proxy._mpb_ref
        self.version = self._conn.call('manager.watch', self.ref)  # where it starts

    def __iter__(self):
        return self

    def __next__(self):
        while self._conn is not None:
            n = self._conn.notification(self._timeout)
            if n is None:
                raise StopIteration
            name, p = n
            if name == 'changed' and p[0] == self.ref:
                return Change(p[1], p[2], self._proxies(p[3]), False)
            if name == 'overflow' and p[0] == self.ref:
                return Change(p[1], None, None, True)
        raise StopIteration

    def _proxies(self, v):
        if isinstance(v, Ref):
            return self._client._proxy_for_ref(v)
        if isinstance(v, list):
            return [self._proxies(x) for x in v]
        if isinstance(v, dict):
            return {k: self._proxies(x) for k, x in v.items()}
        return v

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _Chunks:
    """Lazy iteration over a list, dict or set, one round trip per chunk."""
    CHUNK = 1000

    def __init__(self, proxy, method, check_len=None):
        self._p, self._m, self._pos = proxy, method, 0
        self._buf, self._i = [], 0
        self._len = check_len  # a dict's length when iteration began, or None

    def __iter__(self):
        return self

    def __next__(self):
        if self._i >= len(self._buf):
            if self._pos is None:
                raise StopIteration
            if self._len is not None and self._p._call('dict.len') != self._len:
                self._pos = None
                raise RuntimeError('dictionary changed size during iteration')
            self._buf, self._pos = self._p._call(self._m, self._pos, self.CHUNK)
            self._i = 0
            if not self._buf:
                self._pos = None
                raise StopIteration
        item = self._buf[self._i]
        self._i += 1
        return item


def _whole(proxy, method, walk, *args):
    """The reply of a whole-container read: one call, taken at one instant, while the
    broker allows it; past its --max-op-items (TooLarge) walk() reads the same through
    the cursor form, a bounded chunk per call, so a big container stays readable (not
    at one instant then, as iterating over it is not)."""
    try:
        return proxy._call(method, *args)
    except TooLarge:
        return walk()


def _pairs(proxy, method):
    """Every [key, value] pair of a dict or namespace, a chunk per call."""
    return [(_hashable(k), v) for k, v in _Chunks(proxy, method)]


def _slice_pages(proxy, method, s):
    """proxy[s] for a list or array (getitem START STOP [STEP]) through slices of at
    most _Chunks.CHUNK items each."""
    out = []
    r = range(*s.indices(proxy._call(method[:method.index('.')] + '.len')))
    for k in range(0, len(r), _Chunks.CHUNK):
        part = r[k:k + _Chunks.CHUNK]
        stop = part.stop if part.stop >= 0 else None  # -1 as a stop means "before 0"
        out.extend(proxy._call(method, part.start, stop, part.step))
    return out


def _clamp(i):
    # A slice bound past int64 means "past the end", as in Python's slices (the
    # broker takes int64 bounds only).
    if type(i) is int and not -2**63 <= i < 2**63:
        return -2**63 if i < 0 else 2**63 - 1
    return i


def _ssize(i):
    # list.insert and list.pop take a C ssize_t in Python: past it, OverflowError
    # (else the int would travel pickled, and the broker would say "not dict").
    if type(i) is int and not -2**63 <= i < 2**63:
        raise OverflowError('Python int too large to convert to C ssize_t')
    return i


def _slice_args(s):
    if s.step is None:
        return (_clamp(s.start), _clamp(s.stop))
    return (_clamp(s.start), _clamp(s.stop), _clamp(s.step))


def _key(k):
    # A list travels as the broker's array, which is hashable there (tuples are
    # arrays too): refuse what Python cannot hash, as a dict or set would.
    hash(k)
    return k


@_register('list')
class ListProxy(BaseProxy):
    _typeid = 'list'

    def __len__(self):
        return self._call('list.len')

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _whole(self, 'list.getitem', lambda: _slice_pages(self, 'list.getitem', i),
                          *_slice_args(i))
        return self._call('list.getitem', _clamp(i))

    def __setitem__(self, i, v):
        if isinstance(i, slice):
            return self._call('list.setitem', *_slice_args(i), list(v))
        return self._call('list.setitem', _clamp(i), v)

    def __delitem__(self, i):
        if isinstance(i, slice):
            return self._call('list.delitem', *_slice_args(i))
        return self._call('list.delitem', _clamp(i))

    def __contains__(self, v):
        return self._call('list.contains', v)

    def __iter__(self):
        return (item for chunk in [_Chunks(self, 'list.slice')] for item in chunk)

    def __reversed__(self):
        return reversed(self.copy())

    def __add__(self, other):
        return self.copy() + other

    def __mul__(self, n):
        return self.copy() * n

    __rmul__ = __mul__

    def __iadd__(self, other):
        self._call('list.extend', list(other))
        return self

    def __imul__(self, n):
        # Not atomic: the copy and the extend are two calls.
        if n <= 0:
            self._call('list.clear')
        elif n > 1:
            self._call('list.extend', self.copy() * (n - 1))
        return self

    def append(self, v):
        return self._call('list.append', v)

    def extend(self, it):
        return self._call('list.extend', list(it))

    def insert(self, i, v):
        return self._call('list.insert', _ssize(i), v)

    def pop(self, i=-1):
        return self._call('list.pop', _ssize(i))

    def remove(self, v):
        return self._call('list.remove', v)

    def index(self, v, *bounds):
        return self._call('list.index', v, *map(_clamp, bounds))

    def count(self, v):
        return self._call('list.count', v)

    def reverse(self):
        return self._call('list.reverse')

    def sort(self, *, key=None, reverse=False):
        if key is None:
            return self._call('list.sort', reverse)
        items = sorted(self.copy(), key=key, reverse=reverse)  # not atomic
        self._call('list.setitem', None, None, items)

    def clear(self):
        return self._call('list.clear')

    def copy(self):
        return _whole(self, 'list.copy', lambda: list(_Chunks(self, 'list.slice')))

    _getvalue = copy


class _DictIter(_Chunks):
    def __init__(self, proxy, what):
        super().__init__(proxy, 'dict.items', proxy._call('dict.len'))
        self._what = what

    def __next__(self):
        kv = super().__next__()
        return _hashable(kv[0]) if self._what == 0 else (_hashable(kv[0]), kv[1])


@_register('dict')
class DictProxy(BaseProxy):
    _typeid = 'dict'

    def __len__(self):
        return self._call('dict.len')

    def __getitem__(self, k):
        return self._call('dict.getitem', _key(k))

    def __setitem__(self, k, v):
        return self._call('dict.setitem', _key(k), v)

    def __delitem__(self, k):
        return self._call('dict.delitem', _key(k))

    def __contains__(self, k):
        return self._call('dict.contains', _key(k))

    def __iter__(self):
        return _DictIter(self, 0)

    def get(self, k, default=None):
        return self._call('dict.get', _key(k), default)

    def keys(self):
        return [_hashable(k) for k in
                _whole(self, 'dict.keys', lambda: [k for k, _ in _pairs(self, 'dict.items')])]

    def values(self):
        return _whole(self, 'dict.values', lambda: [v for _, v in _pairs(self, 'dict.items')])

    def items(self):
        return [(_hashable(k), v) for k, v in
                _whole(self, 'dict.items', lambda: _pairs(self, 'dict.items'))]

    def pop(self, k, *default):
        return self._call('dict.pop', _key(k), *default)

    def popitem(self):
        k, v = self._call('dict.popitem')
        return (_hashable(k), v)

    def setdefault(self, k, default=None):
        return self._call('dict.setdefault', _key(k), default)

    def update(self, *args, **kw):
        d = dict(*args, **kw)
        return self._call('dict.update', d)

    def clear(self):
        return self._call('dict.clear')

    def copy(self):
        return _whole(self, 'dict.copy', lambda: dict(_pairs(self, 'dict.items')))

    _getvalue = copy

    def incr(self, k, delta=1):
        """Add delta to d[k] (absent: 0) at once on the broker; returns the new value."""
        return self._call('dict.incr', k, delta)

    def cas(self, k, expected, new):
        """Store new at k if d[k] == expected (absent matches None); True if stored."""
        return self._call('dict.cas', k, expected, new)


@_register('namespace')
class NamespaceProxy(BaseProxy):
    _typeid = 'Namespace'

    def __getattr__(self, key):
        if key[0] == '_':
            return object.__getattribute__(self, key)
        return self._call('namespace.getattr', key)

    def __setattr__(self, key, value):
        if key[0] == '_':
            return object.__setattr__(self, key, value)
        return self._call('namespace.setattr', key, value)

    def __delattr__(self, key):
        if key[0] == '_':
            return object.__delattr__(self, key)
        return self._call('namespace.delattr', key)

    # Names without "_" are shared attributes, so the extensions start with one.
    def _incr(self, name, delta=1):
        """ns.name += delta at once on the broker (never loses an update)."""
        return self._call('namespace.incr', name, delta)

    def _cas(self, name, expected, new):
        return self._call('namespace.cas', name, expected, new)

    def _vars(self):
        return _whole(self, 'namespace.vars', lambda: dict(_pairs(self, 'namespace.vars')))

    def __str__(self):
        items = self._vars().items()
        return 'Namespace(%s)' % ', '.join('%s=%r' % kv for kv in items if kv[0][:1] != '_')


@_register('queue', 'joinablequeue')
class QueueProxy(BaseProxy):
    _typeid = 'Queue'

    def put(self, item, block=True, timeout=None):
        if not block:
            return self._call('queue.put', item, False)
        return self._call('queue.put', item, True, timeout)

    def get(self, block=True, timeout=None):
        if not block:
            return self._call('queue.get', False)
        return self._call('queue.get', True, timeout)

    def put_nowait(self, item):
        return self._call('queue.put_nowait', item)

    def get_nowait(self):
        return self._call('queue.get_nowait')

    def qsize(self):
        return self._call('queue.qsize')

    def empty(self):
        return self._call('queue.empty')

    def full(self):
        return self._call('queue.full')

    def task_done(self):
        return self._call('queue.task_done')

    def join(self):
        return self._call('queue.join')

    def __repr__(self):
        return '<AutoProxy[%s] object, typeid %r at %#x>' % (
            self._typeid_name(), self._typeid_name(), id(self))

    def _typeid_name(self):
        return 'JoinableQueue' if self._kind == 'joinablequeue' else 'Queue'


def _acquire_args(blocking, timeout):
    if not blocking:
        # As Python's Lock: a timeout other than the default -1 is ValueError (the
        # broker says so when it gets one).
        return (False,) if timeout is None or timeout == -1 else (False, timeout)
    if timeout is None or timeout < 0:
        return ()
    return (True, timeout)


class AcquirerProxy(BaseProxy):
    _ns = 'lock'

    def acquire(self, blocking=True, timeout=None):
        return self._call(self._ns + '.acquire', *_acquire_args(blocking, timeout))

    def release(self):
        return self._call(self._ns + '.release')

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        return self.release()


@_register('lock', 'rlock')
class LockProxy(AcquirerProxy):
    def locked(self):
        return self._call('lock.locked')

    def __repr__(self):
        return '<AcquirerProxy object, typeid %r at %#x>' % (
            'RLock' if self._kind == 'rlock' else 'Lock', id(self))


@_register('semaphore', 'boundedsemaphore')
class SemaphoreProxy(AcquirerProxy):
    _ns = 'semaphore'

    def release(self, n=1):
        return self._call('semaphore.release', n)

    def __repr__(self):
        return '<AcquirerProxy object, typeid %r at %#x>' % (
            'BoundedSemaphore' if self._kind == 'boundedsemaphore' else 'Semaphore', id(self))


@_register('condition')
class ConditionProxy(AcquirerProxy):
    _typeid = 'Condition'
    _ns = 'condition'

    def wait(self, timeout=None):
        return self._call('condition.wait', timeout)

    def notify(self, n=1):
        return self._call('condition.notify', n)

    def notify_all(self):
        return self._call('condition.notify_all')

    def wait_for(self, predicate, timeout=None):
        # Python's ConditionProxy.wait_for, which also runs in the client.
        result = predicate()
        if result:
            return result
        if timeout is not None:
            endtime = time.monotonic() + timeout
        else:
            endtime = None
            waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


@_register('event')
class EventProxy(BaseProxy):
    _typeid = 'Event'

    def is_set(self):
        return self._call('event.is_set')

    def set(self):
        return self._call('event.set')

    def clear(self):
        return self._call('event.clear')

    def wait(self, timeout=None):
        return self._call('event.wait', timeout)


@_register('barrier')
class BarrierProxy(BaseProxy):
    """A Barrier. The broker cannot run Python, so an action runs in the client whose
    wait returned 0, while every party waits at a second, hidden barrier (the gate)
    until it is done: as in Python, no party leaves wait() before the action has run,
    and an action that raises breaks the barrier for all."""
    _typeid = 'Barrier'

    def _setstate(self, state):
        action, gate = state if state else (None, None)
        object.__setattr__(self, '_action', action)
        object.__setattr__(self, '_gate', gate)

    def _getstate(self):
        return (self._action, self._gate) if self._action is not None else None

    def _hold_extra(self):
        if self._gate is not None and self._held_pid is not None:
            self._client.proxy_hold(self._gate)

    def _held_refs(self):
        return (self._mpb_ref,) if self._gate is None else (self._mpb_ref, self._gate)

    def wait(self, timeout=None):
        args = () if timeout is None else (timeout,)
        index = self._call('barrier.wait', *args)
        if self._action is None:
            return index
        if index == 0:
            try:
                self._action()
            except BaseException:
                self.abort()
                raise
        self._client.call('barrier.wait', self._gate, *args)
        return index

    def reset(self):
        if self._gate is not None:
            self._client.call('barrier.reset', self._gate)
        return self._call('barrier.reset')

    def abort(self):
        if self._gate is not None:
            self._client.call('barrier.abort', self._gate)
        return self._call('barrier.abort')

    @property
    def parties(self):
        return self._call('barrier.parties')

    @property
    def n_waiting(self):
        return self._call('barrier.n_waiting')

    @property
    def broken(self):
        return self._call('barrier.broken')

    def __del__(self):
        super().__del__()
        try:
            if self._gate is not None and self._held_pid == os.getpid():
                self._client.release_later(self._gate)
        except Exception:
            pass


_INT_CODES = frozenset('bBhHiIlLqQ')


@_register('value')
class ValueProxy(BaseProxy):
    _typeid = 'Value'

    def _setstate(self, state):
        object.__setattr__(self, '_typecode', state)

    def _getstate(self):
        return self._typecode

    def get(self):
        return self._call('value.get')

    def set(self, value):
        if type(value) is bool and self._typecode in _INT_CODES:
            value = int(value)  # Python's Value takes a bool for an int
        return self._call('value.set', value)

    value = property(get, set)

    def __repr__(self):
        return '<ValueProxy object, typeid %r at %#x>' % ('Value', id(self))


@_register('array')
class ArrayProxy(BaseProxy):
    _typeid = 'Array'

    def __len__(self):
        return self._call('array.len')

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _whole(self, 'array.getitem',
                          lambda: _slice_pages(self, 'array.getitem', i), *_slice_args(i))
        return self._call('array.getitem', _clamp(i))

    def __setitem__(self, i, v):
        if isinstance(i, slice):
            return self._call('array.setitem', *_slice_args(i), list(v))
        return self._call('array.setitem', _clamp(i), v)

    def __iter__(self):
        return iter(self.tolist())

    def tolist(self):
        return _whole(self, 'array.tolist',
                      lambda: _slice_pages(self, 'array.getitem', slice(None)))

    _getvalue = tolist


@_register('set')
class SetProxy(BaseProxy):
    """Python 3.14's SyncManager.set(). Results that are sets come back as sets."""
    _typeid = 'set'

    def __len__(self):
        return self._call('set.len')

    def __contains__(self, x):
        return self._call('set.contains', _key(x))

    def __iter__(self):
        return map(_hashable, _Chunks(self, 'set.items'))

    def add(self, x):
        return self._call('set.add', _key(x))

    def discard(self, x):
        return self._call('set.discard', _key(x))

    def remove(self, x):
        return self._call('set.remove', _key(x))

    def pop(self):
        return self._call('set.pop')

    def clear(self):
        return self._call('set.clear')

    def copy(self):
        return set(_hashable(x) for x in
                   _whole(self, 'set.copy', lambda: list(_Chunks(self, 'set.items'))))

    _getvalue = copy

    def update(self, *others):
        return self._call('set.update', *[_operand(o) for o in others])

    def _algebra(self, op, others):
        # A result past --max-op-items is computed here from paged copies instead.
        return set(map(_hashable, _whole(
            self, 'set.' + op, lambda: getattr(self.copy(), op)(*map(_local, others)),
            *[_operand(o) for o in others])))

    def union(self, *others):
        return self._algebra('union', others)

    def intersection(self, *others):
        return self._algebra('intersection', others)

    def difference(self, *others):
        return self._algebra('difference', others)

    def issubset(self, other):
        return self._call('set.issubset', _operand(other))

    def issuperset(self, other):
        return self._call('set.issuperset', _operand(other))

    def isdisjoint(self, other):
        return self._call('set.isdisjoint', _operand(other))


def _hashable(x):
    return tuple(map(_hashable, x)) if isinstance(x, list) else x


def _local(o):
    """What the broker takes an OTHER operand to be, read here: a set, list or dict's
    keys (a namespace's attribute names), or the iterable itself."""
    if isinstance(o, SetProxy):
        return o.copy()
    if isinstance(o, (ListProxy, DictProxy)):
        return map(_hashable, o.copy())
    if isinstance(o, NamespaceProxy):
        return o._vars().keys()
    return o


def _operand(o):
    if isinstance(o, BaseProxy):
        return o._mpb_ref
    return list(o)


@_register('pipe')
class PipeConnection(BaseProxy):
    """One end of a broker pipe, with the methods of multiprocessing.connection's
    Connection: send, recv, poll, close, send_bytes, recv_bytes, recv_bytes_into.
    Manager.Pipe(duplex) makes the pair; each end pickles into child processes.

    Values travel as the broker's values (a tuple comes back as a list, as from the
    other proxies; what has no broker form is pickled). An end is bound to each
    connection that uses it and closes when the last of them does: a process that dies
    closes the ends it used. close() closes the end for everyone if this process used
    it; an end this process never used (the parent's copy of a child's end) is only
    dropped here, as closing an inherited descriptor would.
    """
    _typeid = 'Connection'

    def _setstate(self, state):
        end, duplex = state if state is not None else (0, True)
        object.__setattr__(self, '_end', end)
        object.__setattr__(self, '_duplex', duplex)
        object.__setattr__(self, '_closed', False)
        object.__setattr__(self, '_used_pid', None)

    def _getstate(self):
        return (self._end, self._duplex)

    @property
    def closed(self):
        return self._closed

    @property
    def readable(self):
        return self._duplex or self._end == 0

    @property
    def writable(self):
        return self._duplex or self._end == 1

    def _use(self, method, *args):
        if self._closed:
            raise OSError('handle is closed')
        object.__setattr__(self, '_used_pid', os.getpid())
        return self._call(method, self._end, *args)

    def send(self, obj):
        """Send obj to the other end."""
        if not self.writable:
            raise OSError('connection is read-only')
        self._use('pipe.send', obj)

    def recv(self):
        """The next object sent by the other end; EOFError once it is closed and
        everything it sent is read."""
        if not self.readable:
            raise OSError('connection is write-only')
        return self._use('pipe.recv')

    def poll(self, timeout=0.0):
        """Is there something to recv? timeout None waits for ever."""
        if not self.readable:
            raise OSError('connection is write-only')
        return self._use('pipe.poll', timeout)

    def send_bytes(self, buf, offset=0, size=None):
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast('B')
        n = m.nbytes
        if offset < 0:
            raise ValueError('offset is negative')
        if n < offset:
            raise ValueError('buffer length < offset')
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError('size is negative')
        elif offset + size > n:
            raise ValueError('buffer length < offset + size')
        self.send(bytes(m[offset:offset + size]))

    def _recv_bytes(self):
        data = self.recv()
        if not isinstance(data, (bytes, bytearray)):
            raise OSError('recv_bytes: the message is not bytes (it was sent with send())')
        return bytes(data)

    def recv_bytes(self, maxlength=None):
        if maxlength is not None and maxlength < 0:
            raise ValueError('negative maxlength')
        data = self._recv_bytes()
        if maxlength is not None and len(data) > maxlength:
            raise OSError('bad message length')
        return data

    def recv_bytes_into(self, buf, offset=0):
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast('B')
        if offset < 0 or offset > m.nbytes:
            raise ValueError('offset out of bounds' if offset > m.nbytes else 'negative offset')
        data = self._recv_bytes()
        if len(data) > m.nbytes - offset:
            from multiprocessing import BufferTooShort
            raise BufferTooShort(data)
        m[offset:offset + len(data)] = data
        return len(data)

    def close(self):
        if self._closed:
            return
        object.__setattr__(self, '_closed', True)
        if self._used_pid == os.getpid():
            try:
                self._call('pipe.close', self._end)
            except (ConnectionError, OSError):
                pass

    def fileno(self):
        raise OSError('a broker pipe end has no file descriptor')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return '<mpbroker PipeConnection end %d of %r%s>' % (
            self._end, self._mpb_ref, ', closed' if self._closed else '')


class ChannelPoisoned(Exception):
    """The channel was poisoned (PyCSP's ChannelPoisonException)."""


class ChannelRetired(Exception):
    """Every reader or every writer of the channel retired (PyCSP's
    ChannelRetireException)."""


@_register('channel')
class ChannelProxy(BaseProxy):
    """A CSP channel (PyCSP's Channel): write() waits until a reader takes the value,
    read() until a writer comes. reader() and writer() give PyCSP-style ends: calling
    an end reads or writes; the end joins the channel in each process that uses it
    (on the process's holder connection, so a process that dies retires its ends)."""
    _typeid = 'Channel'

    def write(self, value, timeout=None):
        return self._call('channel.write', value, timeout)

    def read(self, timeout=None):
        return self._call('channel.read', timeout)

    def poison(self):
        return self._call('channel.poison')

    def info(self):
        return self._call('channel.info')

    _getvalue = info

    def join(self, kind):
        return self._client.hold_call('channel.join', self._mpb_ref, kind)

    def retire(self, kind):
        return self._client.hold_call('channel.retire', self._mpb_ref, kind)

    def reader(self):
        return ChannelEnd(self, 'reader')

    def writer(self):
        return ChannelEnd(self, 'writer')


class ChannelEnd:
    """A reader or writer end of a channel (PyCSP's ChannelEndRead/ChannelEndWrite):
    cin() reads, cout(value) writes. Picklable; joins in the process that uses it."""

    def __init__(self, channel, kind):
        self.channel, self.kind = channel, kind
        self._joined_pid = None

    def __getstate__(self):
        return (self.channel, self.kind)

    def __setstate__(self, state):
        self.channel, self.kind = state
        self._joined_pid = None

    def _join(self):
        if self._joined_pid != os.getpid():
            self.channel.join(self.kind)
            self._joined_pid = os.getpid()

    def __call__(self, *value, timeout=None):
        self._join()
        if self.kind == 'reader':
            if value:
                raise TypeError('a reader end takes no value')
            return self.channel.read(timeout)
        (v,) = value
        return self.channel.write(v, timeout)

    def guard(self, value=None):
        """This end as a guard of select(): a read, or a write of value."""
        self._join()
        if self.kind == 'reader':
            return [self.channel._mpb_ref, 'read']
        return [self.channel._mpb_ref, 'write', value]

    def retire(self):
        if self._joined_pid == os.getpid():
            self._joined_pid = None
            self.channel.retire(self.kind)

    def poison(self):
        self.channel.poison()

    def __repr__(self):
        return '<mpbroker ChannelEnd %s of %r>' % (self.kind, self.channel)


def select(client, guards, timeout=None):
    """CSP alternation: guards are channel ends' guard() lists (or [channel, 'read'] /
    [channel, 'write', value]); waits until the first that can complete does and
    returns (index, value), or None after timeout. Priority: guard order."""
    gs = []
    for g in guards:
        if isinstance(g, ChannelEnd):
            g = g.guard()
        gs.append([_unref(g[0])] + list(g[1:]))
    res = client.conn().call('manager.select', gs, timeout)
    return None if res is None else (res[0], res[1])


def _unref(x):
    return getattr(x, '_mpb_ref', x)
