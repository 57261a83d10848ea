"""Unit tests of the C extension (mpbroker._mpbroker) and the proxies' basics, against
a private broker started by mpbroker.Manager().

    PYTHONPATH=build/python /usr/bin/python3 python/tests/test_extension.py -v
"""
import gc
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import tracemalloc
import unittest

import mpbroker
from mpbroker import _mpbroker


class Thing:
    """An object the broker cannot store natively: travels pickled."""

    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Thing) and other.x == self.x


def setUpModule():
    global M
    M = mpbroker.Manager()


def tearDownModule():
    M.shutdown()
    if M._exitcode != 0:  # under ASan a leak in the broker shows here
        raise RuntimeError('the broker exited with %r' % M._exitcode)


class _Append:
    def __init__(self, l):
        self.l = l

    def __call__(self):
        self.l.append(True)


def _trip(b, runs):
    for i in range(2):
        b.wait(10)
        if len(runs) != 2 * i + 1:  # the action ran once, before anyone left the wait
            raise SystemExit(1)
        b.wait(10)  # a second trip (its action too): nobody goes on before all checked


def _child_reads(l, done):
    try:
        done.put(l[:])
    except Exception as e:
        done.put(repr(e))


def _child_reads_late(l, started, go, done):
    started.set()  # no call yet: the child holds l from its start
    go.wait(10)
    done.put(l[:])


class Conversion(unittest.TestCase):
    def rt(self, v):
        return _mpbroker.roundtrip(v)

    def test_ints_across_64_bits(self):
        for v in [0, 1, -1, 2**31, 2**63 - 1, -2**63, 2**63, 2**64 - 1]:
            r = self.rt(v)
            self.assertEqual(r, v)
            self.assertIs(type(r), int)
        # Past uint64 and below int64: pickled, still exact.
        for v in [2**64, -2**63 - 1, 10**40, -10**40]:
            self.assertEqual(self.rt(v), v)
        self.assertEqual(_mpbroker.wire_repr(2**64 - 1), '18446744073709551615')
        self.assertNotEqual(_mpbroker.wire_repr(2**64), str(2**64))  # a pickle map

    def test_ints_past_int64_are_stored_and_compared_by_the_broker(self):
        l = M.list([2**64 - 1, -2**63])
        self.assertEqual(l[:], [2**64 - 1, -2**63])
        self.assertIn(2**64 - 1, l)
        l.append(2**100)
        self.assertEqual(l[-1], 2**100)

    def test_bool_float_none_stay_what_they_are(self):
        for v in [True, False, None, 1.5, -0.0, float('inf')]:
            r = self.rt(v)
            self.assertIs(type(r), type(v))
            self.assertEqual(repr(r), repr(v))

    def test_bytes_and_str_stay_apart(self):
        self.assertIs(type(self.rt(b'abc')), bytes)
        self.assertIs(type(self.rt('abc')), str)
        self.assertEqual(self.rt('é€😀'), 'é€😀')
        self.assertEqual(self.rt(b'\x00\xff'), b'\x00\xff')
        d = M.dict()
        d[b'k'] = 1
        d['k'] = 2
        self.assertEqual(len(d), 2)
        self.assertEqual(d[b'k'], 1)
        self.assertEqual(d['k'], 2)

    def test_a_lone_surrogate_is_refused_not_mangled(self):
        with self.assertRaises(UnicodeEncodeError):
            M.list().append('\ud800')  # escapes no byte: no UTF-8 stands for it

    def test_a_str_read_as_invalid_utf8_goes_back_as_it_came(self):
        # Regression: a str holding invalid UTF-8 (another client's) was read with
        # "surrogateescape" but could not be sent back (UnicodeEncodeError): not
        # appended again, not found with `in`, not a dict key.
        s = 'a\udc80\udcff'
        self.assertEqual(self.rt(s), s)
        self.assertIn(r'\x80', _mpbroker.wire_repr(s))  # travels as the bytes it escapes
        l = M.list()
        l.append(s)
        self.assertEqual(l[0], s)
        self.assertIn(s, l)
        self.assertNotIn('a', l)
        d = M.dict()
        d[s] = 1
        self.assertEqual(d[s], 1)

    def test_nested_containers(self):
        v = {'a': [1, {'b': [None, b'x', 2.5]}, []], 'c': {}}
        self.assertEqual(self.rt(v), v)
        l = M.list([v, [v]])
        self.assertEqual(l[0], v)
        self.assertEqual(l[1], [v])

    def test_tuples_become_lists_but_tuple_keys_come_back_as_tuples(self):
        self.assertEqual(self.rt((1, (2, 3))), [1, [2, 3]])
        d = M.dict()
        d[(1, (2, 'x'))] = 'v'
        self.assertEqual(d[(1, (2, 'x'))], 'v')
        self.assertEqual(d.keys(), [(1, (2, 'x'))])
        self.assertEqual(d.copy(), {(1, (2, 'x')): 'v'})

    def test_other_objects_travel_pickled(self):
        for v in [{1, 2}, frozenset([3]), Thing(5), bytearray(b'ab'), 3 + 4j]:
            self.assertEqual(self.rt(v), v)
            self.assertIs(type(self.rt(v)), type(v))
        q = M.Queue()
        q.put(Thing([1, 2]))
        self.assertEqual(q.get(), Thing([1, 2]))

    def test_unhashable_key_is_type_error(self):
        with self.assertRaises(TypeError):
            M.dict()[{1, 2}] = 1  # a set travels as a map: not a key for the broker

    def test_big_payload(self):
        blob = os.urandom(8 << 20)
        l = M.list()
        l.append(blob)
        self.assertEqual(l[0], blob)
        big = list(range(200000))
        l.append(big)
        self.assertEqual(l[1], big)

    def test_too_deep_is_an_error_and_the_connection_goes_on(self):
        v = []
        for _ in range(40):
            v = [v]
        with self.assertRaises(mpbroker.TooDeep):
            M.list().append(v)
        w = []
        for _ in range(100000):
            w = [w]
        with self.assertRaises(RecursionError):
            _mpbroker.roundtrip(w)
        self.assertEqual(M.list([1])[:], [1])

    def test_refcounts_do_not_move(self):
        l = M.list()
        s = 'a string to count ' + str(os.getpid())
        b = b'bytes to count' + bytes(4)
        big = 2**70
        key = ('k', 1)
        before = [sys.getrefcount(x) for x in (s, b, big, key)]
        for _ in range(200):
            l.append(s)
            l.append([s, b, {key: big}])
            _mpbroker.roundtrip([s, b, big, key, {key: s}])
            M.dict()[key] = s
        l.clear()
        gc.collect()
        self.assertEqual([sys.getrefcount(x) for x in (s, b, big, key)], before)

    def test_results_do_not_leak(self):
        l = M.list([{'k': [1, 2.5, 'x' * 100, b'y' * 100, (1, 2)]}] * 50)
        d = M.dict({(1, 2): 'x'})
        q = M.Queue()
        for _ in range(50):  # warm up caches and free lists
            l[:], d.copy(), d.keys()
        tracemalloc.start()
        gc.collect()
        snap = tracemalloc.take_snapshot()
        for _ in range(500):
            l[:], d.copy(), d.keys(), _mpbroker.roundtrip(l[0])
            try:
                q.get_nowait()
            except queue.Empty:
                pass
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap, 'filename'))
        tracemalloc.stop()
        self.assertLess(grown, 64 << 10)

    def test_ref_pickles_and_compares(self):
        r = _mpbroker.Ref(0x123456789)
        self.assertEqual(pickle.loads(pickle.dumps(r)), r)
        self.assertEqual(hash(_mpbroker.Ref(5)), hash(_mpbroker.Ref(5)))
        self.assertEqual(r.id, 0x123456789)
        self.assertEqual(repr(r), 'Ref(0x123456789)')


class ConnectionTests(unittest.TestCase):
    def conn(self):
        return _mpbroker.Connection(M.address, M._authkey)

    def test_wrong_key_is_authentication_error(self):
        import multiprocessing
        with self.assertRaises(multiprocessing.AuthenticationError):
            _mpbroker.Connection(M.address, b'not the key')

    def test_pipeline_gives_each_call_its_own_outcome(self):
        c = self.conn()
        ref = c.call('manager.create', 'dict', None)
        out = c.pipeline([('dict.setitem', (ref, 'a', 1)), ('dict.getitem', (ref, 'zz')),
                          ('dict.getitem', (ref, 'a')), ('no.such', ())])
        self.assertIsNone(out[0])
        self.assertIsInstance(out[1], KeyError)
        self.assertEqual(out[2], 1)
        self.assertIsInstance(out[3], mpbroker.BrokerError)
        self.assertEqual(out[3].kind, 'NoSuchMethod')
        self.assertEqual(c.call('dict.len', ref), 1)

    def test_a_pipeline_whose_list_changes_while_converting_is_safe(self):
        # Regression: pipeline() read its items from the caller's list, borrowed; a
        # value whose pickling empties that list (its __reduce__ runs mid-conversion)
        # made it read freed tuples and past the list's end (SIGSEGV).
        c = self.conn()
        ref = c.call('manager.create', 'list', None)
        calls = []

        class Emptier:
            def __reduce__(self):
                calls.clear()
                return (int, (7,))
        calls += [('list.extend', (ref, [Emptier(), 'z' * 100]))]
        calls += [('list.append', (ref, 'w' * 100))] * 3
        out = c.pipeline(calls)
        self.assertEqual(out, [None] * 4)
        self.assertEqual(c.call('list.copy', ref), [7, 'z' * 100] + ['w' * 100] * 3)

    def test_a_fork_child_can_use_a_connection_busy_in_the_parent(self):
        # Regression: a Connection busy in another thread at fork() stayed busy in the
        # child for ever (that thread does not exist there): RuntimeError on every call.
        c = self.conn()
        q = c.call('manager.create', 'queue', None)
        t = threading.Thread(target=c.call, args=('queue.get', q, True, 10))
        t.start()
        time.sleep(0.3)  # the thread is parked in queue.get
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                ok = c.call('manager.ping') == 'pong'
            except BaseException:
                ok = False
            os.write(w, b'1' if ok else b'0')
            os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        self.conn().call('queue.put', q, 'done')
        t.join(10)
        self.assertEqual(got, b'1')

    def test_init_again_while_a_call_waits_is_refused(self):
        # Regression: __init__ freed the context another thread was waiting on with
        # the GIL released (heap-use-after-free under ASan).
        c = self.conn()
        q = c.call('manager.create', 'queue', None)
        t2 = threading.Thread(target=c.call, args=('queue.get', q, True, 10))
        t2.start()
        time.sleep(0.3)  # t2 is parked in queue.get
        with self.assertRaises(RuntimeError):
            c.__init__(M.address, M._authkey)
        self.conn().call('queue.put', q, 'done')
        t2.join(10)

    def test_a_signal_in_a_holder_call_keeps_the_process_holds(self):
        # Regression: the holder connection (every hold of the process) was
        # interruptible: a signal handler raising (Ctrl-C) during a holder round trip,
        # e.g. in m.dict(), gave it up, and the broker freed every object the
        # process's live proxies named (NoSuchObject afterwards).
        class Alarm(Exception):
            pass

        def handler(signum, frame):
            raise Alarm()
        m = mpbroker.Manager(authkey=b'holder-signal-test')
        try:
            keep = m.list([1, 2, 3])
            q = m.Queue()
            threading.Thread(target=lambda: (time.sleep(0.6), q.put('x'))).start()
            old = signal.signal(signal.SIGALRM, handler)
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.2)
                with self.assertRaises(Alarm):  # raised once the reply is in
                    # A holder call that waits (holder calls never park in real
                    # use: this makes the round trip long enough to be hit).
                    m._client.hold_call('queue.get', q._mpb_ref, True, 10)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
            self.assertEqual(keep[:], [1, 2, 3])
        finally:
            m.shutdown()

    def test_a_connection_that_is_not_interruptible_finishes_its_wait(self):
        c = _mpbroker.Connection(M.address, M._authkey, interruptible=False)
        q = c.call('manager.create', 'queue', None)
        hits = []
        old = signal.signal(signal.SIGALRM, lambda s, f: hits.append(s))
        threading.Thread(target=lambda: (time.sleep(0.5), self.conn().call('queue.put', q, 7))).start()
        fd = c.fileno()
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            self.assertEqual(c.call('queue.get', q, True, 10), 7)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        self.assertEqual(hits, [signal.SIGALRM])
        self.assertEqual(c.fileno(), fd)

    def test_the_gil_is_released_while_a_call_waits(self):
        q = M.Queue()
        got = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
        t.start()
        time.sleep(0.2)  # the thread is parked in q.get; this thread still runs
        q.put('x')
        t.join(5)
        self.assertEqual(got, ['x'])

    def test_a_signal_interrupts_a_wait_and_the_connection_recovers(self):
        class Alarm(Exception):
            pass

        def handler(signum, frame):
            raise Alarm()
        old = signal.signal(signal.SIGALRM, handler)
        q = M.Queue()
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            t0 = time.monotonic()
            with self.assertRaises(Alarm):
                q.get(timeout=30)
            self.assertLess(time.monotonic() - t0, 10)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        q.put(1)  # a fresh connection: the old one was given up with its parked get
        self.assertEqual(q.get(timeout=5), 1)

    def test_a_signal_whose_handler_returns_does_not_end_the_wait(self):
        hits = []
        old = signal.signal(signal.SIGALRM, lambda s, f: hits.append(s))
        q = M.Queue()
        t = threading.Thread(target=lambda: (time.sleep(0.5), q.put('late')))
        t.start()
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            self.assertEqual(q.get(timeout=10), 'late')
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            t.join()
        self.assertEqual(hits, [signal.SIGALRM])

    def test_one_connection_per_thread(self):
        l = M.list()
        ths = [threading.Thread(target=lambda: [l.append(i) for i in range(100)])
               for _ in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        self.assertEqual(len(l), 400)


    def test_a_lazy_connection_is_entered_by_one_thread_at_a_time(self):
        # Regression: the busy flag was set after the first call's connect, which
        # releases the GIL: two threads both connected, one context overwrote the
        # other (its socket leaked, its caller waited on the other's context).
        before = len(os.listdir('/proc/self/fd'))
        for _ in range(20):
            c = _mpbroker.Connection(M.address, M._authkey, None, True)
            out = []

            def f():
                try:
                    out.append(c.call('manager.ping'))
                except RuntimeError:
                    out.append('busy')
            ths = [threading.Thread(target=f) for _ in range(2)]
            for t in ths:
                t.start()
            for t in ths:
                t.join()
            self.assertEqual(len(out), 2)
            self.assertTrue(all(r in ('busy', 'pong') for r in out), out)
            self.assertIn('pong', out)
            c.close()
            del c
        self.assertLessEqual(len(os.listdir('/proc/self/fd')), before + 1)


class Proxies(unittest.TestCase):
    def test_a_proxy_inside_an_object_comes_back_as_a_proxy(self):
        inner = M.list([1])
        outer = M.dict(x=inner)
        got = outer['x']
        self.assertIsInstance(got, mpbroker.ListProxy)
        got.append(2)
        self.assertEqual(inner[:], [1, 2])
        self.assertEqual(got, inner)

    def test_a_proxy_read_out_holds_its_object(self):
        d = M.dict(x=M.list([7]))
        x = d['x']
        d.clear()
        gc.collect()
        self.assertEqual(x[:], [7])

    def test_dead_proxies_release_their_objects(self):
        n = M._number_of_objects()
        l = M.list([1])
        self.assertEqual(M._number_of_objects(), n + 1)
        del l
        gc.collect()
        self.assertEqual(M._number_of_objects(), n)

    def test_pickle_in_process(self):
        l = M.list([1, 2])
        l2 = pickle.loads(pickle.dumps(l))
        self.assertEqual(l2[:], [1, 2])
        self.assertEqual(l2, l)

    def test_fork_child_uses_its_own_connection(self):
        l = M.list()
        l.append('parent')
        pid = os.fork()
        if pid == 0:
            try:
                l.append('child')
                os._exit(0 if l[0] == 'parent' else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        l.append('parent again')
        self.assertEqual(l[:], ['parent', 'child', 'parent again'])

    def test_a_forked_child_holds_what_it_inherited(self):
        # Process.start() drops its args in the parent: the child's proxy must hold the
        # object itself, or the parent's release would free it under the child.
        import multiprocessing
        ctx = multiprocessing.get_context('fork')
        started, go, done = ctx.Event(), ctx.Event(), ctx.Queue()
        p = ctx.Process(target=_child_reads_late, args=(M.list([1, 2]), started, go, done))
        p.start()
        self.assertTrue(started.wait(10))
        gc.collect()
        M._number_of_objects()  # a holder call: the parent's release goes out now
        go.set()
        self.assertEqual(done.get(timeout=10), [1, 2])
        p.join(10)
        self.assertEqual(p.exitcode, 0)

    def test_a_second_manager_connects_to_a_running_broker(self):
        a = M.named('meeting').dict()
        a['from'] = 'first'
        other = mpbroker.SyncManager(address=M.address, authkey=M._authkey)
        other.connect()
        b = other.named('meeting').dict()
        self.assertEqual(b['from'], 'first')
        with mpbroker.Manager(M.address, M._authkey) as third:
            self.assertEqual(third.named('meeting').dict().copy(), {'from': 'first'})
        other.shutdown()  # a connected manager only disconnects: the broker goes on
        self.assertEqual(a['from'], 'first')
        M.delete('meeting')
        with self.assertRaises(multiprocessing.AuthenticationError):
            mpbroker.Manager(M.address, b'wrong key')

    def test_number_of_objects_pages_past_one_reply(self):
        # manager.objects answers at most 1000 rows a call: the count walks the pages.
        before = M._number_of_objects()
        keep = [M.list() for _ in range(1200)]
        self.assertEqual(M._number_of_objects(), before + 1200)
        self.assertEqual(M._debug_info().count('type=list'), sum(
            1 for o in M._all_objects() if o['type'] == 'list'))
        del keep

    def test_a_private_broker_takes_any_key_bytes(self):
        # The broker drops one trailing newline from a key file (`echo key > file`):
        # a random key that ends in one (1 start in 256 with Python's default key)
        # must still be the broker's key.
        for key in (b'ends in a newline\n', b'two newlines\n\n', b'\n', bytes(range(256))):
            with mpbroker.Manager(authkey=key) as m:
                d = m.dict()
                d['k'] = key
                self.assertEqual(d['k'], key)

    def test_a_barrier_action_runs_once_per_trip_before_anyone_leaves(self):
        import multiprocessing as mp
        ctx = mp.get_context('fork')
        runs = M.list()
        b = M.Barrier(3, action=_Append(runs))
        ps = [ctx.Process(target=_trip, args=(b, runs)) for _ in range(2)]
        for p in ps:
            p.start()
        _trip(b, runs)
        for p in ps:
            p.join(10)
            self.assertEqual(p.exitcode, 0)
        self.assertEqual(len(runs), 4)

    def test_a_spawned_child_finds_what_the_parent_dropped_at_start(self):
        import multiprocessing
        for method in ('spawn', 'forkserver'):
            ctx = multiprocessing.get_context(method)
            done = ctx.Queue()
            p = ctx.Process(target=_child_reads, args=(M.list([1, 2]), done))
            p.start()  # drops its args: our proxy goes, its release goes out next
            gc.collect()
            M._number_of_objects()
            self.assertEqual(done.get(timeout=60), [1, 2], method)
            p.join(10)
            self.assertEqual(p.exitcode, 0)

    def test_named_objects_are_shared_by_name(self):
        a = M.named('records').list()
        a.append(1)
        b = M.named('records').list()
        self.assertEqual(b[:], [1])
        M.delete('records')

    def test_incr_and_cas(self):
        ns = M.Namespace(x=1)
        self.assertEqual(ns._incr('x', 5), 6)
        self.assertTrue(ns._cas('x', 6, 60))
        self.assertFalse(ns._cas('x', 6, 70))
        self.assertEqual(ns.x, 60)
        d = M.dict()
        self.assertEqual(d.incr('n'), 1)
        self.assertTrue(d.cas('n', 1, 'one'))
        self.assertEqual(d['n'], 'one')

    def test_list_api_as_python(self):
        py, l = list(range(10)), M.list(range(10))
        for op in [lambda x: x.__setitem__(slice(2, 5), ['a', 'b']),
                   lambda x: x.__delitem__(slice(None, None, 3)),
                   lambda x: x.insert(1, 'i'), lambda x: x.reverse(),
                   lambda x: x.__iadd__([7, 8]), lambda x: x.__imul__(2),
                   lambda x: x.remove(7), lambda x: x.pop(0),
                   lambda x: x.sort(key=str), lambda x: x.__setitem__(-1, 'z')]:
            op(py)
            op(l)
            self.assertEqual(l[:], py)
        self.assertEqual(list(reversed(l)), list(reversed(py)))
        self.assertEqual(l[::-2], py[::-2])
        self.assertEqual(l.index('z'), py.index('z'))
        self.assertEqual(l.count(8), py.count(8))
        self.assertEqual(l * 2, py * 2)
        self.assertEqual(2 * l, 2 * py)
        self.assertEqual(list(l), py)
        self.assertEqual(len(M.list(range(2500))), 2500)
        self.assertEqual(list(M.list(range(2500))), list(range(2500)))  # 3 chunks

    def test_dict_api_as_python(self):
        py, d = {'a': 1}, M.dict(a=1)
        for op in [lambda x: x.update({'b': 2}, c=3), lambda x: x.setdefault('d', 4),
                   lambda x: x.pop('a'), lambda x: x.pop('zz', None),
                   lambda x: x.__delitem__('b')]:
            self.assertEqual(op(d), op(py))
            self.assertEqual(d.copy(), py)
        self.assertEqual(d.get('c'), 3)
        self.assertEqual(d.get('nope', 'x'), 'x')
        self.assertEqual(d.popitem(), py.popitem())
        self.assertEqual(list(d), list(py))
        self.assertIn('c', d)

    def test_sync_types_api(self):
        lock = M.Lock()
        cond = M.Condition(lock)
        with cond:
            self.assertTrue(lock.locked())
            self.assertFalse(cond.wait(0.01))
            self.assertTrue(cond.wait_for(lambda: True))
        self.assertFalse(lock.locked())
        r = M.RLock()
        with r:
            with r:
                pass
        self.assertIn("typeid 'RLock'", repr(r))
        self.assertIn("AutoProxy[JoinableQueue]", repr(M.JoinableQueue()))
        jq = M.JoinableQueue()
        jq.put(1)
        self.assertEqual(jq.get(), 1)
        jq.task_done()
        jq.join()
        e = M.Event()
        self.assertFalse(e.wait(0.01))
        e.set()
        self.assertTrue(e.wait())
        a = M.Array('d', [0.5, 1.5, 2.5])
        a[1:3] = [9.0, 8.0]
        self.assertEqual(list(a), [0.5, 9.0, 8.0])
        self.assertEqual(a[::2], [0.5, 8.0])
        v = M.Value('i', True)
        self.assertEqual(v.value, 1)
        v.value = 41
        self.assertEqual(v.get() + 1, 42)
        st = M.set([1, 2, 3])
        st.add((4, 5))
        self.assertIn((4, 5), st)
        self.assertEqual(st.copy(), {1, 2, 3, (4, 5)})
        self.assertEqual(st.union([9]), {1, 2, 3, (4, 5), 9})
        self.assertTrue(st.issuperset([1, 2]))
        self.assertEqual(set(st), {1, 2, 3, (4, 5)})

    def test_a_non_blocking_acquire_with_a_timeout_is_value_error(self):
        # Regression: the proxy dropped the timeout of acquire(False, t), so it
        # acquired where Python's Lock (and Manager) raise ValueError.
        for p in (M.Lock(), M.RLock(), M.Semaphore(1), M.Condition()):
            with self.assertRaises(ValueError):
                p.acquire(False, 1)
            self.assertTrue(p.acquire(False, -1))  # Python's default timeout: allowed
            p.release()
            self.assertTrue(p.acquire(blocking=False))
            p.release()

    def test_unhashable_keys_and_huge_slice_bounds_as_python(self):
        # Regression: a list key reached the broker as an array (hashable there):
        # d[[1]] was KeyError and [1] in d False, where Python's dict (and Manager)
        # say TypeError; slice bounds past int64 were TypeError where Python clamps.
        d, st = M.dict(), M.set()
        for f in (lambda: d[[1]], lambda: [1] in d, lambda: d.__setitem__([1], 2),
                  lambda: d.get({}), lambda: d.pop(([1],)), lambda: st.add([1]),
                  lambda: [1] in st):
            with self.assertRaises(TypeError):
                f()
        self.assertEqual(len(d), 0)
        d[(1, 2)] = 3
        self.assertIn((1, 2), d)
        l = M.list([5, 6, 7])
        self.assertEqual(l[1:2**70], [6, 7])
        self.assertEqual(l[-2**70:1], [5])
        self.assertEqual(l[::-2**70], [7])
        with self.assertRaises(IndexError):
            l[2**70]
        # Regression (issue 22 review): an index past 64 bits travelled pickled, and
        # the broker said "argument 1 must be an integer, not dict" (TypeError).
        # Python: insert and pop need a ssize_t (OverflowError), index() clamps its
        # bounds, an item index past the end is IndexError.
        for f in (lambda: l.insert(2**70, 1), lambda: l.insert(-2**70, 1),
                  lambda: l.pop(2**70), lambda: l.pop(-2**70)):
            with self.assertRaises(OverflowError):
                f()
        self.assertEqual(l.index(7, 0, 2**70), 2)
        self.assertEqual(l.index(5, -2**70), 0)
        with self.assertRaises(ValueError):
            l.index(5, 2**70)
        self.assertEqual(l[:], [5, 6, 7])
        a = M.Array('i', [1, 2])
        for f in (lambda: a[2**70], lambda: a.__setitem__(-2**70, 1)):
            with self.assertRaises(IndexError):
                f()

    def test_exceptions_are_pythons(self):
        import threading as th
        with self.assertRaises(IndexError):
            M.list().pop()
        with self.assertRaises(KeyError) as cm:
            M.dict()['nope']
        self.assertEqual(cm.exception.args, ('nope',))
        with self.assertRaises(AttributeError):
            M.Namespace().missing
        with self.assertRaises(queue.Full):
            q = M.Queue(1)
            q.put(1)
            q.put(2, timeout=0.05)
        with self.assertRaises(th.BrokenBarrierError):
            M.Barrier(2).wait(0.05)
        with self.assertRaises(ValueError):
            M.list().remove(1)


def _bank_worker(address, authkey, n):
    m = mpbroker.SyncManager(address, authkey)
    m.connect()
    d = m.named('pybank').dict()
    done = 0
    while done < n:
        v = m.version(d)
        try:
            with m.atomic() as b:
                b.expect(d, v)
                b.call(d, 'incr', 'a', -1)
                b.call(d, 'incr', 'b', 1)
            done += 1
        except mpbroker.Conflict:
            pass


class WatchAndAtomic(unittest.TestCase):
    def test_watch_iterates_over_changes_from_another_process(self):
        d = M.dict()
        with d.watch(timeout=5) as w:
            self.assertEqual(w.version, 0)
            p = multiprocessing.get_context('fork').Process(
                target=lambda: [d.__setitem__('k', i) for i in range(3)])
            p.start()
            p.join()
            got = [next(w) for _ in range(3)]
        self.assertEqual([c.version for c in got], [1, 2, 3])
        self.assertEqual([c.args for c in got], [['k', 0], ['k', 1], ['k', 2]])
        self.assertEqual({c.method for c in got}, {'dict.setitem'})
        self.assertEqual(M.version(d), 3)
        self.assertIsNone(M.wait_change(d, 3, 0.05))
        self.assertEqual(M.wait_change(d, 2), 3)

    def test_atomic_is_all_or_none(self):
        l = M.list([1, 2])
        d = M.dict({'x': 1})
        with M.atomic() as b:
            b.call(l, 'append', 3).call(d, 'dict.incr', 'x', 10).expect(d, 1)
        self.assertEqual(b.results, [None, 11, True])
        with self.assertRaises(KeyError) as e:
            with M.atomic() as b:
                b.call(l, 'clear')
                b.call(d, 'pop', 'nope')
        self.assertIn("op 1: KeyError: 'nope'", str(e.exception))
        self.assertEqual(l[:], [1, 2, 3])
        with self.assertRaises(mpbroker.Conflict):
            with M.atomic() as b:
                b.expect(d, 0).call(d, 'incr', 'x')
        self.assertEqual(d['x'], 11)
        with self.assertRaises(ZeroDivisionError):  # nothing is sent
            with M.atomic() as b:
                b.call(l, 'clear')
                1 / 0
        self.assertEqual(len(l), 3)

    def test_bank_total_is_kept_under_conflicts(self):
        d = M.named('pybank').dict({'a': 1000, 'b': 0})
        ctx = multiprocessing.get_context('fork')
        ps = [ctx.Process(target=_bank_worker, args=(M.address, M._authkey, 50))
              for _ in range(4)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
            self.assertEqual(p.exitcode, 0)
        self.assertEqual(d.copy(), {'a': 800, 'b': 200})


class BigContainers(unittest.TestCase):
    """Past the broker's --max-op-items a whole-container read is TooLarge; the proxies
    then read the same through the cursor forms (issue 21)."""

    @classmethod
    def setUpClass(cls):
        cls.m = mpbroker.SyncManager(server_args=['--max-op-items', '1000'])
        cls.m.start()

    @classmethod
    def tearDownClass(cls):
        cls.m.shutdown()
        if cls.m._exitcode != 0:
            raise RuntimeError('the broker exited with %r' % cls.m._exitcode)

    def test_the_broker_refuses_the_one_reply_form(self):
        l = self.m.list(range(1001))
        with self.assertRaises(mpbroker.TooLarge):
            l._call('list.copy')
        self.assertEqual(len(l), 1001)

    def test_list(self):
        want = list(range(2500))
        l = self.m.list(want)
        self.assertEqual(l.copy(), want)
        self.assertEqual(l[:], want)
        self.assertEqual(l[::-1], want[::-1])
        self.assertEqual(l[10:2400:3], want[10:2400:3])
        self.assertEqual(l[-5::-7], want[-5::-7])
        self.assertEqual(list(reversed(l)), want[::-1])
        self.assertEqual(l + [1], want + [1])
        self.assertEqual(str(l), str(want))
        l.sort(key=lambda x: -x)
        self.assertEqual(l[:], sorted(want, reverse=True))

    def test_dict(self):
        want = {i: str(i) for i in range(2500)}
        want[(1, 2)] = 'tuple key'
        d = self.m.dict(want)
        self.assertEqual(d.copy(), want)
        self.assertEqual(d.keys(), list(want.keys()))
        self.assertEqual(d.values(), list(want.values()))
        self.assertEqual(d.items(), list(want.items()))

    def test_namespace(self):
        want = {'a%d' % i: i for i in range(1500)}
        ns = self.m.Namespace(**want)
        self.assertEqual(ns._vars(), want)
        self.assertIn('a1499=1499', str(ns))

    def test_set(self):
        want = set(range(2500))
        s = self.m.set(want)
        small = self.m.set(range(10))
        self.assertEqual(s.copy(), want)
        self.assertEqual(s.union([-1, (1, 2)]), want | {-1, (1, 2)})
        self.assertEqual(s.difference(small, [20]), want - set(range(10)) - {20})
        self.assertEqual(s.intersection(range(5)), set(range(5)))  # small: one call
        self.assertEqual(small.union(self.m.list(range(5000, 6000))),
                         set(range(10)) | set(range(5000, 6000)))

    def test_array(self):
        want = list(range(2500))
        a = self.m.Array('i', want)
        self.assertEqual(a.tolist(), want)
        self.assertEqual(a[:], want)
        self.assertEqual(a[::-2], want[::-2])
        self.assertEqual(list(a), want)


if __name__ == '__main__':
    unittest.main()
