"""SyncManager: multiprocessing.managers.SyncManager's API over an mpbroker broker.

With no address, start() runs a private mpbroker-server on a fresh Unix socket in a
private directory, with the authkey (default: current_process().authkey, as Python's),
and stops it at shutdown() or when this process exits. With an address
("unix:/path", "/path", "tcp://host:port") connect() joins a running broker.
"""
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref

from .client import get_client, set_default_key
from .proxies import proxy_for, select as _select

__all__ = ['SyncManager', 'Manager', 'find_server']

_STARTUP_TIMEOUT = 10.0


def find_server():
    """The mpbroker-server to run: $MPBROKER_SERVER, else the one this package was built
    or installed with, else the first on PATH."""
    env = os.environ.get('MPBROKER_SERVER')
    if env:
        return env
    try:
        from ._config import SERVER
        if os.access(SERVER, os.X_OK):
            return SERVER
    except ImportError:
        pass
    found = shutil.which('mpbroker-server')
    if found:
        return found
    raise FileNotFoundError('mpbroker-server not found: set $MPBROKER_SERVER')


def _server_env():
    # The ASan tests run Python without leak checks and the broker with them.
    opts = os.environ.get('MPBROKER_SERVER_ASAN_OPTIONS')
    if opts is None:
        return None
    return dict(os.environ, ASAN_OPTIONS=opts)


class _Server:
    """A private broker process and its directory."""

    def __init__(self, authkey, args=()):
        self.dir = tempfile.mkdtemp(prefix='mpbroker-')
        self.path = os.path.join(self.dir, 'broker.sock')
        keyfile = os.path.join(self.dir, 'authkey')
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'wb') as f:
            # The broker drops one trailing newline from a key file (`echo key >
            # file`): end with one, so that a key ending in b'\n' stays whole.
            f.write(authkey + b'\n')
        self.proc = subprocess.Popen(
            [find_server(), '--socket', self.path, '--authkey-file', keyfile, '--quiet',
             *args],
            stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True,
            env=_server_env())
        self.pid = os.getpid()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not self._answers():
            if self.proc.poll() is not None:
                self._cleanup()
                raise RuntimeError('mpbroker-server exited with %d at start'
                                   % self.proc.returncode)
            if time.monotonic() > deadline:
                self.stop(0)
                raise RuntimeError('mpbroker-server did not start')
            time.sleep(0.005)

    def _answers(self):
        # The socket file appears before the broker listens: wait for a connect.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.path)
                return True
            except OSError:
                return False

    def stop(self, timeout=5.0):
        if self.pid != os.getpid():  # a forked child never stops its parent's broker
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()
        return self.proc.returncode

    def _cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class SyncManager:
    """multiprocessing.managers.SyncManager over mpbroker (see the module docstring)."""

    def __init__(self, address=None, authkey=None, serializer='pickle', ctx=None, *,
                 shutdown_timeout=1.0, server_args=()):
        if authkey is None:
            authkey = multiprocessing.current_process().authkey
        self._authkey = bytes(authkey)
        self._address = address
        self._server = None
        self._client = None
        self._shutdown_timeout = shutdown_timeout
        self._server_args = tuple(server_args)
        self._state = 'initial'

    # --- life cycle ---

    def start(self, initializer=None, initargs=()):
        if self._state != 'initial':
            raise RuntimeError('Manager already started' if self._state == 'started'
                               else 'Manager has shut down')
        if self._address is not None:
            raise ValueError('start() runs a private broker: this manager has an address '
                             '(use connect())')
        if initializer is not None:
            initializer(*initargs)  # Python runs it in the server; ours is C
        self._server = _Server(self._authkey, self._server_args)
        self._address = 'unix:' + self._server.path
        self._client = get_client(self._address, self._authkey)
        set_default_key(self._address, self._authkey)
        self._state = 'started'
        self._finalizer = weakref.finalize(self, _finalize, self._server)
        return self

    def connect(self):
        if self._address is None:
            raise ValueError('connect() needs an address')
        self._client = get_client(self._address, self._authkey)
        self._client.call('manager.ping')
        set_default_key(self._address, self._authkey)
        self._state = 'started'

    def shutdown(self):
        """Stop the private broker (a connected manager only disconnects)."""
        if self._server is not None:
            self._finalizer()
        self._state = 'shutdown'

    @property
    def _exitcode(self):
        """The private broker's exit status once stopped (0: a clean stop), else None."""
        return self._server.proc.returncode if self._server is not None else None

    def join(self, timeout=None):
        if self._server is not None and self._server.pid == os.getpid():
            try:
                self._server.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        if self._state == 'initial':
            if self._address is None:
                self.start()
            else:
                self.connect()
        return self

    def __exit__(self, *exc):
        self.shutdown()

    @property
    def address(self):
        return self._address

    def __reduce__(self):
        raise TypeError('a manager cannot be pickled: pass its proxies, or its address')

    # --- what CPython's tests ask of a manager ---

    def _all_objects(self):
        # manager.objects pages (at most 1000 rows a call): walk the cursor.
        rows, start = [], 0
        while start is not None:
            page, start = self._client.hold_call('manager.objects', start, 1000)
            rows.extend(page)
        return rows

    def _number_of_objects(self):
        return len(self._all_objects())

    def _debug_info(self):
        lines = []
        for o in self._all_objects():
            lines.append('  %r: type=%s name=%s holders=%d contained=%d' % (
                o['ref'], o['type'], o['name'], o['holders'], o['contained']))
        return '\n'.join(lines)

    # --- object makers ---

    def _make(self, kind, initial=None, state=None, name=None):
        if self._client is None:
            raise RuntimeError('the manager is not started')
        if name is None:
            ref = self._client.hold_call('manager.create', kind, initial)
        else:
            ref = self._client.hold_call('manager.open', kind, name, initial)
        return proxy_for(self._client, _unwrap(ref), kind, held=True, state=state)

    def version(self, proxy):
        """The version of proxy's object: grows by one with each write to it."""
        return proxy._version()

    def wait_change(self, proxy, version, timeout=None):
        """Sleep until proxy's object is past `version`: its new version, or None
        after timeout seconds."""
        return proxy._wait_change(version, timeout)

    def atomic(self):
        """A batch: operations queued in a with block and sent on exit as one
        manager.atomic, all or none (docs/PROTOCOL.md, "Atomic batches"):

            with m.atomic() as b:
                b.expect(accounts, v)               # Conflict unless still at v
                b.call(accounts, 'incr', 'alice', -5)
                b.call(accounts, 'dict.incr', 'bob', 5)
            b.results                               # [True, 95, 5]

        An exception in the block sends nothing; a failing operation raises its error
        (message "op N: KIND: ...") and nothing of the batch stays."""
        if self._client is None:
            raise RuntimeError('the manager is not started')
        return Batch(self._client)

    def list(self, sequence=()):
        return self._make('list', list(sequence))

    def dict(self, *args, **kwds):
        return self._make('dict', dict(*args, **kwds))

    def Namespace(self, **kwds):
        return self._make('namespace', kwds)

    def Queue(self, maxsize=0):
        return self._make('queue', maxsize)

    def JoinableQueue(self, maxsize=0):
        return self._make('joinablequeue', maxsize)

    def Lock(self):
        return self._make('lock')

    def RLock(self):
        return self._make('rlock')

    def Semaphore(self, value=1):
        return self._make('semaphore', value)

    def BoundedSemaphore(self, value=1):
        return self._make('boundedsemaphore', value)

    def Condition(self, lock=None):
        return self._make('condition', lock._mpb_ref if lock is not None else None)

    def Event(self):
        return self._make('event')

    def Barrier(self, parties, action=None, timeout=None):
        initial = parties if timeout is None else [parties, timeout]
        state = None
        if action is not None:
            gate = self._client.hold_call('manager.create', 'barrier', initial)
            state = (action, _unwrap(gate))
        return self._make('barrier', initial, state)

    def Value(self, typecode, value, lock=True):
        if type(value) is bool and typecode in 'bBhHiIlLqQ':
            value = int(value)
        return self._make('value', [typecode, value], typecode)

    def Array(self, typecode, sequence, lock=True):
        if not isinstance(sequence, int):
            sequence = list(sequence)
        return self._make('array', [typecode, sequence])

    def set(self, iterable=()):
        return self._make('set', list(iterable))

    def Pipe(self, duplex=True):
        """Two connected ends, as multiprocessing.Pipe(duplex): (conn1, conn2); one-way,
        conn1 only receives and conn2 only sends."""
        if self._client is None:
            raise RuntimeError('the manager is not started')
        ref = _unwrap(self._client.hold_call('manager.create', 'pipe', {'duplex': bool(duplex)}))
        a = proxy_for(self._client, ref, 'pipe', held=True, state=(0, bool(duplex)))
        b = proxy_for(self._client, ref, 'pipe', held=False, state=(1, bool(duplex)))
        return a, b

    def Channel(self):
        """A CSP channel (PyCSP's Channel): see ChannelProxy."""
        return self._make('channel')

    def select(self, guards, timeout=None):
        """CSP alternation over channel guards: (index, value), or None after timeout."""
        return _select(self._client, guards, timeout)

    def Pool(self, *args, **kwds):
        raise NotImplementedError('mpbroker has no Pool: the broker does not run Python')

    # --- beyond Python's Manager ---

    def named(self, name):
        """Get-or-create objects by name, so that unrelated programs meet on them:
        manager.named('records').list() is the same list in every process."""
        return _Named(self, name)

    def delete(self, name):
        """Remove a name (the object lives on while some proxy or object holds it)."""
        self._client.call('manager.delete', name)


def _unwrap(ref):
    return getattr(ref, '_mpb_ref', ref)


class _Named:
    def __init__(self, manager, name):
        self._m, self._name = manager, name

    @property
    def _client(self):
        return self._m._client

    def _make(self, kind, initial=None, state=None):
        return self._m._make(kind, initial, state, self._name)

    def __getattr__(self, method):
        maker = getattr(SyncManager, method)
        return lambda *a, **k: maker(self, *a, **k)


def _finalize(server):
    try:
        server.stop()
    except Exception:
        pass


def Manager(address=None, authkey=None):
    """Like multiprocessing.Manager(): a started SyncManager (a private broker), or,
    given an address, one connected to that broker."""
    m = SyncManager(address, authkey)
    if address is None:
        m.start()
    else:
        m.connect()
    return m


# Typeids whose methods are another family's (rlock uses lock.*).
_FAMILY = {'rlock': 'lock', 'joinablequeue': 'queue', 'boundedsemaphore': 'semaphore'}


class Batch:
    """SyncManager.atomic(): see there."""

    def __init__(self, client):
        self._client = client
        self.ops = []
        self.results = None

    def call(self, proxy, method, *args):
        """Queue METHOD on proxy's object: a full name ('dict.incr') or the short one
        ('incr')."""
        if '.' not in method:
            method = _FAMILY.get(proxy._kind, proxy._kind) + '.' + method
        self.ops.append([method, [proxy._mpb_ref, *args]])
        return self

    def expect(self, proxy, version):
        """Fail the batch with Conflict unless proxy's object is at version."""
        self.ops.append(['manager.expect', [proxy._mpb_ref, version]])
        return self

    def send(self):
        self.results = self._client.conn().call('manager.atomic', self.ops)
        return self.results

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.send()
