"""The per-process side of a broker: connections, holds, errors.

A Client stands for one broker address in one process. It gives each thread its own
Connection (a blocking call parks its connection on the broker, so threads must not
share one), and keeps every hold of the process on one more connection, the holder:
a proxy holds its object there from its creation to its deletion, whatever thread made
or drops it, as a reference held by a Python proxy keeps a Manager's object alive.
After fork() the child starts with fresh connections and no holds of its own (the
parent's keep the objects alive); proxies it unpickles hold in its own name.
"""
import ast
import collections
import multiprocessing
import os
import queue
import threading
import weakref
from multiprocessing import util as mp_util

from . import _mpbroker
from ._mpbroker import Ref

__all__ = ['BrokerError', 'NoSuchObject', 'TooLarge', 'TooDeep', 'OutOfMemory',
           'PersistenceError', 'Client', 'get_client']


class BrokerError(Exception):
    """An error the broker reported that has no Python counterpart; .kind is its kind."""
    kind = 'Error'

    def __init__(self, message='', kind=None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class NoSuchObject(BrokerError, LookupError):
    kind = 'NoSuchObject'


class TooLarge(BrokerError, ValueError):
    kind = 'TooLarge'


class TooDeep(BrokerError, ValueError):
    kind = 'TooDeep'


class OutOfMemory(BrokerError, MemoryError):
    kind = 'OutOfMemory'


class PersistenceError(BrokerError, OSError):
    kind = 'PersistenceError'


class Conflict(BrokerError):
    """manager.expect: the object's version moved on (a batch was undone): read again
    and retry."""
    kind = 'Conflict'


def _key_error(message):
    # The broker's KeyError message is the key's repr: give Python's KeyError(key).
    try:
        return KeyError(ast.literal_eval(message))
    except Exception:
        return KeyError(message)


_ERRORS = {
    'TypeError': TypeError, 'ValueError': ValueError, 'KeyError': _key_error,
    'IndexError': IndexError, 'AttributeError': AttributeError,
    'OverflowError': OverflowError, 'RuntimeError': RuntimeError,
    'Empty': lambda m: queue.Empty(), 'Full': lambda m: queue.Full(),
    'BrokenBarrierError': lambda m: threading.BrokenBarrierError(),
    'AuthError': multiprocessing.AuthenticationError,
    'ConnectionError': ConnectionError, 'ProtocolError': ConnectionError,
    'NoSuchObject': NoSuchObject, 'TooLarge': TooLarge, 'TooDeep': TooDeep,
    'OutOfMemory': OutOfMemory, 'PersistenceError': PersistenceError,
    'Conflict': Conflict,
    'EOFError': EOFError, 'OSError': OSError, 'BrokenPipeError': BrokenPipeError,
    'TimeoutError': TimeoutError,
    'ChannelPoisoned': lambda m: _channel_error('ChannelPoisoned', m),
    'ChannelRetired': lambda m: _channel_error('ChannelRetired', m),
}


def _channel_error(kind, message):
    from . import proxies
    return getattr(proxies, kind)(message)


def _make_error(kind, message):
    factory = _ERRORS.get(kind)
    if factory is None:
        return BrokerError(message, kind)
    return factory(message)


_mpbroker.set_hooks(_make_error)


class Client:
    """One broker address in this process (see the module's docstring)."""

    def __init__(self, address, authkey):
        self.address = address
        self.authkey = authkey
        self._reset()
        # A multiprocessing child of fork() holds its inherited proxies' objects as it
        # starts, before its target runs (as Python's proxies incref there); any other
        # child of fork() does at its first call.
        mp_util.register_after_fork(self, Client._hold_inherited_now)

    def _hold_inherited_now(self):
        if self._rehold:
            try:
                self._hold_inherited()
            except Exception:  # the broker is gone: the first call will say so
                pass

    def _reset(self):
        self.pid = os.getpid()
        self._local = threading.local()
        self._hlock = threading.Lock()
        self._holder = None
        self._releases = collections.deque()  # refs whose proxies died: released later
        self._rehold = []  # proxies inherited through fork(): held again at first use
        self._types = {}  # ref id -> typeid; ids are never reused, so never stale

    def conn(self):
        """This thread's connection."""
        try:
            return self._local.c
        except AttributeError:
            c = self._local.c = _mpbroker.Connection(self.address, self.authkey,
                                                     self._proxy_for_ref)
            if self._rehold:
                self._hold_inherited()
            return c

    def _hold_inherited(self):
        # A child of fork() holds what the proxies it inherited name, as Python's
        # proxies incref after fork: the parent may drop its own proxy (Process.start()
        # deletes its args) while the child still works on the object.
        proxies, self._rehold = self._rehold, []
        calls = []
        for p in proxies:  # its object, and any it keeps beside (a barrier's gate)
            calls += [('manager.incref', (r,)) for r in p._held_refs()]
        with self._hlock:
            if self._holder is None:
                self._holder = self._new_holder()
            results = iter(self._holder.pipeline(calls))
        pid = os.getpid()
        for p in proxies:
            ok = [not isinstance(next(results), BaseException) for _ in p._held_refs()]
            if ok[0]:
                object.__setattr__(p, '_held_pid', pid)

    def _new_holder(self):
        # Not interruptible: a Ctrl-C (any raising signal handler) in a holder round
        # trip would give the holder up, and with it every hold of this process (the
        # broker would free objects that live proxies name). Holder calls never park,
        # so the wait is short; the exception comes right after it.
        return _mpbroker.Connection(self.address, self.authkey, interruptible=False)

    def call(self, method, *args):
        return self.conn().call(method, *args)

    # --- holds, on the holder connection ---

    def hold_call(self, method, *args):
        """A call on the holder connection, after the releases waiting for it."""
        with self._hlock:
            if self._holder is None:
                self._holder = self._new_holder()
            calls = []
            while self._releases:
                calls.append(('manager.release', (self._releases.popleft(),)))
            if not calls:
                return self._holder.call(method, *args)
            calls.append((method, args))
            res = self._holder.pipeline(calls)[-1]
        if isinstance(res, BaseException):
            raise res
        return res

    def release_later(self, ref):
        # Called from __del__, perhaps inside a holder call of this very thread (the
        # garbage collector runs anywhere): queue it, never take the lock here.
        self._releases.append(ref)

    def flush_releases(self):
        if self._releases:
            self.hold_call('manager.ping')

    def typeof(self, ref):
        t = self._types.get(ref.id)
        if t is None:
            t = self._types[ref.id] = self.call('manager.typeof', ref)
        return t

    def _proxy_for_ref(self, ref):
        # A reference read out of an object comes back as a proxy holding it.
        from .proxies import proxy_for
        return proxy_for(self, ref, None, held=False)

    def proxy_hold(self, ref):
        """Hold ref for a new proxy: True, or False when the object is gone already."""
        try:
            self.hold_call('manager.incref', ref)
            return True
        except NoSuchObject:
            return False


_clients = {}       # (address, authkey) -> Client
_default_keys = {}  # address -> the authkey this process first used for it
_clients_lock = threading.Lock()


def get_client(address, authkey=None):
    """The Client of this process for address; authkey None: the key this process
    first used for it, else current_process().authkey (as Python's proxies do)."""
    with _clients_lock:
        if authkey is None:
            authkey = _default_keys.get(address)
            if authkey is None:
                authkey = bytes(multiprocessing.current_process().authkey)
        c = _clients.get((address, authkey))
        if c is None:
            c = _clients[(address, authkey)] = Client(address, authkey)
        return c


def set_default_key(address, authkey):
    """A manager connected to address with authkey: proxies of address that come
    without a key (pickled by a process that was not spawning) use it."""
    with _clients_lock:
        _default_keys.setdefault(address, authkey)


def _after_fork_in_child():
    # The parent's connections, locks and queued releases are not the child's. Its
    # libmpbroker contexts would reconnect by themselves, but threads' locals and the
    # holder lock may be in any state at fork(): start over, keeping only the keys.
    global _clients_lock
    _clients_lock = threading.Lock()
    for c in list(_clients.values()):
        c._reset()
    from .proxies import live_proxies
    for p in live_proxies():
        if p._held_pid is not None:  # held by the parent: the child holds it anew
            object.__setattr__(p, '_held_pid', None)
            p._client._rehold.append(p)


os.register_at_fork(after_in_child=_after_fork_in_child)
