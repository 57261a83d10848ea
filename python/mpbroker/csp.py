"""CSP through the broker, shaped like PyCSP's pycsp.parallel: Channel, @process,
Parallel, Sequence, Spawn, poison, retire, and alternation (PriSelect, FairSelect,
AltSelect, Alternation), each process an OS process (multiprocessing.Process).

    from mpbroker.csp import *

    @process
    def producer(cout):
        for i in range(10):
            cout(i)
        retire(cout)

    @process
    def consumer(cin):
        while True:
            print(cin())

    ch = Channel()
    Parallel(producer(-ch), consumer(+ch))   # +ch: a reader end, -ch: a writer end

Channels live on a broker: the one of the manager given to set_manager(), else a
private one started at the first Channel(). As in PyCSP, a process that meets poison
(or retirement) ends quietly after passing it on: every channel end among its
arguments is poisoned (retired) too. The broker makes the choice in a select
(manager.select: one call, exactly one guard takes effect).
"""
import multiprocessing
import random

from .proxies import ChannelEnd, ChannelPoisoned, ChannelRetired, select as _select

__all__ = ['Channel', 'process', 'Process', 'Parallel', 'Sequence', 'Spawn', 'poison',
           'retire', 'InputGuard', 'OutputGuard', 'TimeoutGuard', 'Skip', 'PriSelect',
           'FairSelect', 'AltSelect', 'Alternation', 'ChannelPoisoned', 'ChannelRetired',
           'set_manager', 'get_manager']

_manager = None


def set_manager(manager):
    """Make channels on this manager's broker."""
    global _manager
    _manager = manager


def get_manager():
    """The manager channels are made on (a private broker, started at first use)."""
    global _manager
    if _manager is None:
        from .managers import Manager
        _manager = Manager()
    return _manager


class Channel:
    """A CSP channel: reader() / +ch and writer() / -ch give its ends. With a name,
    the channel of that name on the broker (shared by unrelated programs)."""

    def __init__(self, name=None, manager=None):
        m = manager or get_manager()
        self.name = name
        self._ch = m.named(name).Channel() if name else m.Channel()
        self._client = m._client

    def reader(self):
        return self._ch.reader()

    def writer(self):
        return self._ch.writer()

    __pos__ = reader
    __neg__ = writer

    def poison(self):
        self._ch.poison()

    def __getstate__(self):
        return (self.name, self._ch)

    def __setstate__(self, state):
        self.name, self._ch = state
        self._client = self._ch._client


def _ends(args, kwargs):
    return [a for a in list(args) + list(kwargs.values()) if isinstance(a, ChannelEnd)]


def _run(fn, args, kwargs):
    try:
        fn(*args, **kwargs)
    except ChannelPoisoned:
        poison(*_ends(args, kwargs))
    except ChannelRetired:
        retire(*_ends(args, kwargs))


class Process:
    """A CSP process (not started): Parallel, Sequence or Spawn runs it."""

    def __init__(self, fn, *args, **kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self._p = None

    def start(self):
        self._p = multiprocessing.Process(target=_run, args=(self.fn, self.args, self.kwargs),
                                          name=getattr(self.fn, '__name__', 'csp'))
        self._p.start()

    def join(self, timeout=None):
        self._p.join(timeout)

    @property
    def exitcode(self):
        return self._p.exitcode if self._p else None


def process(fn):
    """@process: calling fn(...) makes a Process, run by Parallel/Sequence/Spawn.
    The function must be importable (module level) under spawn and forkserver."""
    def make(*args, **kwargs):
        return Process(fn, *args, **kwargs)
    make.__name__ = fn.__name__
    make.__doc__ = fn.__doc__
    make.__wrapped__ = fn
    return make


def _flat(procs):
    out = []
    for p in procs:
        out.extend(_flat(p) if isinstance(p, (list, tuple)) else [p])
    return out


def Parallel(*procs):
    """Run the processes at once and wait for all; their exit codes."""
    procs = _flat(procs)
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def Sequence(*procs):
    """Run the processes one after the other; their exit codes."""
    codes = []
    for p in _flat(procs):
        p.start()
        p.join()
        codes.append(p.exitcode)
    return codes


def Spawn(*procs):
    """Start the processes and return without waiting."""
    procs = _flat(procs)
    for p in procs:
        p.start()
    return procs


def poison(*ends):
    """Poison the channels of these ends (or Channels)."""
    for e in ends:
        e.poison()


def retire(*ends):
    """Retire these ends: once every reader (or writer) of a channel has retired, its
    other side gets ChannelRetired."""
    for e in ends:
        e.retire()


# --- alternation ---

class InputGuard:
    def __init__(self, cin, action=None):
        self.end, self.action = cin, action

    def _guard(self):
        return self.end.guard()


class OutputGuard:
    def __init__(self, cout, msg=None, action=None):
        self.end, self.msg, self.action = cout, msg, action

    def _guard(self):
        return self.end.guard(self.msg)


class TimeoutGuard:
    def __init__(self, seconds, action=None):
        self.seconds, self.action = seconds, action


class Skip:
    """Chosen when no other guard can complete at once (a timeout of 0)."""

    def __init__(self, action=None):
        self.action = action


def _select_order(guards):
    chans, timeout, fallback = [], None, None
    for g in guards:
        if isinstance(g, ChannelEnd):
            g = InputGuard(g)
        if isinstance(g, TimeoutGuard):
            timeout, fallback = g.seconds, g
        elif isinstance(g, Skip):
            timeout, fallback = 0, g
        else:
            chans.append(g)
    if not chans:
        raise ValueError('a select needs at least one input or output guard')
    client = chans[0].end.channel._client
    res = _select(client, [g._guard() for g in chans], timeout)
    if res is None:
        g, msg = fallback, None
    else:
        g, msg = chans[res[0]], res[1]
    if getattr(g, 'action', None) is not None:
        return g, (g.action(msg) if isinstance(g, InputGuard) else g.action())
    return g, msg


def PriSelect(*guards):
    """The first guard (in order) that can complete: (guard, msg). msg is what an
    input guard read, None for the others."""
    return _select_order(guards)


_fair_next = 0


def FairSelect(*guards):
    """As PriSelect, the guards' priority rotating from call to call."""
    global _fair_next
    chans = [g for g in guards if not isinstance(g, (TimeoutGuard, Skip))]
    rest = [g for g in guards if isinstance(g, (TimeoutGuard, Skip))]
    k = _fair_next % len(chans) if chans else 0
    _fair_next += 1
    return _select_order(chans[k:] + chans[:k] + rest)


def AltSelect(*guards):
    """As PriSelect, the guards' priority in a random order."""
    chans = [g for g in guards if not isinstance(g, (TimeoutGuard, Skip))]
    rest = [g for g in guards if isinstance(g, (TimeoutGuard, Skip))]
    random.shuffle(chans)
    return _select_order(chans + rest)


class Alternation:
    """PyCSP's older form: Alternation([{cin: None, (cout, msg): None}]).select()
    gives (guard end, msg); execute() runs the chosen guard's action (a callable value
    of the dict) with msg for an input, and returns its result."""

    def __init__(self, guards):
        self._items = []
        for d in guards:
            for k, action in d.items():
                if isinstance(k, tuple):
                    self._items.append((k[0], OutputGuard(k[0], k[1], None), action))
                elif isinstance(k, (int, float)):
                    self._items.append((None, TimeoutGuard(k), action))
                else:
                    self._items.append((k, InputGuard(k), action))

    def _choose(self):
        g, msg = PriSelect(*[i[1] for i in self._items])
        for end, guard, action in self._items:
            if guard is g:
                return end, msg, action
        raise AssertionError('select answered a guard it was not given')

    def select(self):
        end, msg, _ = self._choose()
        return end, msg

    def execute(self):
        end, msg, action = self._choose()
        if action is None:
            return msg
        return action(msg) if isinstance(end, ChannelEnd) and end.kind == 'reader' else action()
