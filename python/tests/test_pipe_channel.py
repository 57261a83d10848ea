"""Pipes and CSP channels through the Python package (issue 16), against a private
broker started by mpbroker.Manager(): the seed's Pipe programs under every start
method, EOF and one-way pipes, a killed peer, send_bytes/recv_bytes, channels with
poison, retirement and select, and a producer / workers / consumer network.

    PYTHONPATH=build/python /usr/bin/python3 python/tests/test_pipe_channel.py -v
"""
import multiprocessing
import os
import pickle
import signal
import sys
import time
import unittest

import mpbroker
from mpbroker import csp
from mpbroker.csp import (Channel, FairSelect, InputGuard, OutputGuard, Parallel, PriSelect,
                          Skip, TimeoutGuard, poison, process, retire)


def setUpModule():
    global M
    M = mpbroker.Manager()
    csp.set_manager(M)


def tearDownModule():
    M.shutdown()
    if M._exitcode != 0:  # under ASan a leak in the broker shows here
        raise RuntimeError('the broker exited with %r' % M._exitcode)


# --- the seed's programs (module level: spawn and forkserver children import them) ---

def f(conn):
    conn.send([42, None, 'hello'])
    conn.close()


def greet(conn):
    conn.send('hello from the child')
    if conn.recv() != 'hello from the parent':
        raise SystemExit(3)


def bind_then_sleep(conn):
    conn.send('bound')
    time.sleep(60)


def send_bytes_child(conn):
    conn.send_bytes(b'0123456789', 2, 5)
    conn.send_bytes(bytearray(b'xyz'))


def producer(cout, n):
    try:
        for i in range(n):
            cout(i)
        cout.retire()
    except mpbroker.ChannelPoisoned:
        pass


def worker(cin, cout):
    try:
        while True:
            cout(cin() ** 2)
    except (mpbroker.ChannelPoisoned, mpbroker.ChannelRetired):
        cin.poison()
        cout.poison()


def consumer(cin, n, total):
    s = 0
    for _ in range(n):
        s += cin()
    total.value = s
    cin.poison()


# --- PyCSP-shaped processes (module level, for spawn) ---

@process
def csp_producer(cout, n):
    for i in range(n):
        cout(i)
    retire(cout)


@process
def csp_collect(cin, out):
    while True:  # ends on ChannelRetired, quietly
        out.append(cin())


@process
def csp_source(cout):
    i = 0
    while True:  # ends when poisoned downstream
        cout(i)
        i += 1


@process
def csp_worker(cin, cout):
    while True:
        x = cin()
        cout(x * x)


@process
def csp_sink(cin, n, out):
    for _ in range(n):
        out.append(cin())
    poison(cin)


class Pipes(unittest.TestCase):

    def test_seed_program_under_every_start_method(self):
        for method in ('fork', 'spawn', 'forkserver'):
            with self.subTest(method=method):
                ctx = multiprocessing.get_context(method)
                parent_conn, child_conn = M.Pipe()
                p = ctx.Process(target=f, args=(child_conn,))
                p.start()
                child_conn.close()  # the parent's copy: the child's stays open
                self.assertEqual(parent_conn.recv(), [42, None, 'hello'])
                p.join(30)
                self.assertEqual(p.exitcode, 0)
                with self.assertRaises(EOFError):
                    parent_conn.recv()

    def test_two_processes_greet_each_other(self):
        a, b = M.Pipe(duplex=True)
        p = multiprocessing.Process(target=greet, args=(b,))
        p.start()
        self.assertEqual(a.recv(), 'hello from the child')
        a.send('hello from the parent')
        p.join(30)
        self.assertEqual(p.exitcode, 0)

    def test_one_way_pipe(self):
        r, w = M.Pipe(duplex=False)
        self.assertTrue(r.readable and not r.writable)
        self.assertTrue(w.writable and not w.readable)
        with self.assertRaises(OSError):
            r.send(1)
        with self.assertRaises(OSError):
            w.recv()
        w.send({'k': (1, 2)})
        self.assertTrue(r.poll())
        self.assertEqual(r.recv(), {'k': [1, 2]})  # tuples come back as lists
        self.assertFalse(r.poll(0.05))
        w.close()
        self.assertTrue(r.poll(None))  # recv would raise at once
        with self.assertRaises(EOFError):
            r.recv()
        with self.assertRaises(OSError):
            w.send(2)  # this end is closed here

    def test_killed_peer_gives_eof_to_a_waiting_recv(self):
        a, b = M.Pipe()
        p = multiprocessing.Process(target=bind_then_sleep, args=(b,))
        p.start()
        self.assertEqual(a.recv(), 'bound')
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
        with self.assertRaises(EOFError):
            a.recv()
        self.assertLess(time.monotonic() - t0, 10)
        p.join(10)

    def test_send_bytes_and_recv_bytes(self):
        a, b = M.Pipe()
        p = multiprocessing.Process(target=send_bytes_child, args=(b,))
        p.start()
        self.assertEqual(a.recv_bytes(), b'23456')
        buf = bytearray(8)
        self.assertEqual(a.recv_bytes_into(buf, 2), 3)
        self.assertEqual(bytes(buf), b'\0\0xyz\0\0\0')
        p.join(30)
        with self.assertRaises(EOFError):  # the child's exit closed the end it used
            a.recv_bytes()
        a, b = M.Pipe()
        b.send('not bytes')
        with self.assertRaises(OSError):
            a.recv_bytes()
        b.send_bytes(b'long message')
        with self.assertRaises(OSError):
            a.recv_bytes(4)

    def test_ends_pickle_with_their_end(self):
        a, b = M.Pipe(duplex=False)
        b2 = pickle.loads(pickle.dumps(b))
        self.assertTrue(b2.writable and not b2.readable)
        b2.send('via the copy')
        self.assertEqual(a.recv(), 'via the copy')


class Channels(unittest.TestCase):

    def test_rendezvous_poison_and_retire(self):
        ch = M.Channel()
        with self.assertRaises(TimeoutError):
            ch.read(0.05)
        with self.assertRaises(TimeoutError):
            ch.write('nobody', 0.05)
        cin, cout = ch.reader(), ch.writer()
        p = multiprocessing.Process(target=producer, args=(cout, 3))
        p.start()
        self.assertEqual([cin(), cin(), cin()], [0, 1, 2])
        p.join(30)
        # The producer retired its only writer end: the channel is retired.
        with self.assertRaises(mpbroker.ChannelRetired):
            cin()
        ch2 = M.Channel()
        ch2.poison()
        with self.assertRaises(mpbroker.ChannelPoisoned):
            ch2.write(1)

    def test_select_takes_exactly_one_guard(self):
        a, b, c = M.Channel(), M.Channel(), M.Channel()
        self.assertIsNone(M.select([[a, 'read'], [b, 'read'], [c, 'write', 'v']], 0.05))
        p = multiprocessing.Process(target=producer, args=(b.writer(), 1))
        p.start()
        self.assertEqual(M.select([[a, 'read'], [b, 'read'], [c, 'write', 'v']], 30),
                         (1, 0))
        p.join(30)

    def test_a_network_stopped_by_poison(self):
        src, sq = M.Channel(), M.Channel()
        total = M.Value('q', 0)
        n = 50
        procs = [multiprocessing.Process(target=producer, args=(src.writer(), 10 ** 6))]
        procs += [multiprocessing.Process(target=worker, args=(src.reader(), sq.writer()))
                  for _ in range(4)]
        procs.append(multiprocessing.Process(target=consumer, args=(sq.reader(), n, total)))
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            self.assertEqual(p.exitcode, 0)
        # Every value the consumer took was a square of a distinct 0..n-1 ... or more
        # (workers race): at least the sum of the n smallest squares.
        self.assertGreaterEqual(total.value, sum(i * i for i in range(n)))
        self.assertTrue(src.info()['poisoned'] and sq.info()['poisoned'])


class CSP(unittest.TestCase):

    def test_seed_two_processes(self):
        ch = Channel()
        out = M.list()
        codes = Parallel(csp_producer(-ch, 5), csp_collect(+ch, out))
        self.assertEqual(codes, [0, 0])
        self.assertEqual(out[:], [0, 1, 2, 3, 4])

    def test_producer_worker_pool_consumer_stopped_by_poison(self):
        jobs, results = Channel(), Channel()
        out = M.list()
        n = 40
        codes = Parallel(csp_source(-jobs),
                         [csp_worker(+jobs, -results) for _ in range(5)],
                         csp_sink(+results, n, out))
        self.assertEqual(codes, [0] * 7)
        got = out[:]
        self.assertEqual(len(got), n)
        roots = [round(v ** 0.5) for v in got]
        self.assertEqual([r * r for r in roots], got)  # squares...
        self.assertEqual(len(set(roots)), n)  # ...of distinct jobs
        self.assertTrue(jobs._ch.info()['poisoned'])  # poison went upstream

    def test_alternation(self):
        a, b = Channel(), Channel()
        g, msg = PriSelect(InputGuard(+a), OutputGuard(-b, 'x'), Skip())
        self.assertIsInstance(g, Skip)
        t0 = time.monotonic()
        g, msg = FairSelect(InputGuard(+a), TimeoutGuard(0.1))
        self.assertIsInstance(g, TimeoutGuard)
        self.assertGreaterEqual(time.monotonic() - t0, 0.05)
        p = multiprocessing.Process(target=_write_one, args=(-a, 'hi'))
        p.start()
        g, msg = PriSelect(InputGuard(+a, action=lambda m: m.upper()), TimeoutGuard(30))
        self.assertIsInstance(g, InputGuard)
        self.assertEqual(msg, 'HI')
        p.join(30)


def _write_one(cout, v):
    cout(v)


if __name__ == '__main__':
    unittest.main()
