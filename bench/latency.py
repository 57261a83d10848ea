#!/usr/bin/python3
"""bench/latency.py - what one heavy client does to everyone else's latency (issue 21).

Ten reader processes call dict.getitem in a loop on a small dict and record each round
trip; meanwhile one heavy process keeps calling the heavy methods: listing every
object (100,000 named ones exist), manager.stats, a copy of a 1,000,000-item list and a
sort of it. Prints p50/p99/p99.9/max of the readers' round trips, the heavy calls made
and the load average (the machine's other work shows in the tails).

    /usr/bin/python3 bench/latency.py --server build/mpbroker-server [--seconds 10]
        [--heavy one-reply|paged|auto] [--no-sort] [--list-items N] [--objects N]
        [--server-arg=--max-op-items=100K ...]

--heavy says how the heavy client reads: one-reply (before: manager.objects and
list.copy in one reply each, as a client did before issue 21; a broker with the guard
refuses them, which the run reports), paged (after: manager.objects START 1000 and
list.slice START 1000 walks), auto (the default: the one-reply form, and the paged
one when the broker answers TooLarge, as the Python proxies do; with the broker's
--max-op-items below the list's size this is the guard at work). --no-sort leaves
list.sort out: it is O(N log N) by nature, unbounded, and dominates the tails.

Plain msgpack over the Unix socket (python3-msgpack): no client library needed, so the
same script measures an old broker and a new one. Speed depends on the machine and its
load: compare runs made side by side.
"""
import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time

import msgpack


class BrokerError(RuntimeError):
    def __init__(self, method, err):
        super().__init__('%s: %r' % (method, err))
        self.kind = err[0] if isinstance(err, list) and err else None


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.u = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
        self.msgid = 0

    def call(self, method, *params):
        self.msgid += 1
        self.s.sendall(msgpack.packb([0, self.msgid, method, list(params)]))
        while True:
            for msg in self.u:
                if msg[0] != 1 or msg[1] != self.msgid:
                    continue  # a notification, or the reply to a pipelined call
                if msg[2] is not None:
                    raise BrokerError(method, msg[2])
                return msg[3]
            data = self.s.recv(1 << 20)
            if not data:
                raise EOFError(method)
            self.u.feed(data)


def reader(path, ref, seconds, out):
    c = Conn(path)
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        c.call('dict.getitem', ref, 'k')
        lat.append(time.perf_counter() - t)
    out.put(lat)


def walk(c, method, *args):
    """Every chunk of a cursor walk, 1000 at a time; the items read."""
    cursor, n = 0, 0
    while cursor is not None:
        rows, cursor = c.call(method, *args, cursor, 1000)
        n += len(rows)
    return n


def whole(c, how, calls, one, paged):
    """one() or paged() as --heavy says; auto: one(), then paged() on TooLarge."""
    if how == 'paged':
        return paged()
    try:
        return one()
    except BrokerError as e:
        if e.kind != 'TooLarge':
            raise
        calls['too_large'] += 1
        if how == 'one-reply':
            return None
        return paged()


def heavy(path, lst, seconds, how, sort, out):
    c = Conn(path)
    calls = {'objects': 0, 'stats': 0, 'copy': 0, 'sort': 0, 'too_large': 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        whole(c, how, calls, lambda: c.call('manager.objects'),
              lambda: walk(c, 'manager.objects'))
        calls['objects'] += 1
        c.call('manager.stats')
        calls['stats'] += 1
        whole(c, how, calls, lambda: c.call('list.copy', lst), lambda: walk(c, 'list.slice', lst))
        calls['copy'] += 1
        if sort:
            c.call('list.sort', lst, calls['sort'] % 2 == 0)  # alternate: always real work
            calls['sort'] += 1
    out.put(calls)


def pct(sorted_lat, p):
    return sorted_lat[min(len(sorted_lat) - 1, int(len(sorted_lat) * p))] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--server', required=True)
    ap.add_argument('--seconds', type=float, default=10)
    ap.add_argument('--objects', type=int, default=100000)
    ap.add_argument('--readers', type=int, default=10)
    ap.add_argument('--list-items', type=int, default=1000000)
    ap.add_argument('--no-heavy', action='store_true', help='readers alone (baseline)')
    ap.add_argument('--heavy', choices=['one-reply', 'paged', 'auto'], default='auto')
    ap.add_argument('--no-sort', action='store_true', help='the heavy client sorts nothing')
    ap.add_argument('--server-arg', action='append', default=[],
                    help='one more argument for the broker (--server-arg=--max-op-items=100K)')
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    path = os.path.join(d, 'mpb.sock')
    srv = subprocess.Popen([a.server, '-q', '-s', path, '--max-message', '256M'] + a.server_arg)
    try:
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        c = Conn(path)
        methods = {m['name']: m for m in c.call('manager.methods')['methods']}
        if methods['manager.objects']['max'] < 1 and a.heavy != 'one-reply':
            sys.exit('this broker has no paged listings: --heavy one-reply only')
        for i in range(0, a.objects, 1000):  # pipelined opens
            for j in range(i, min(i + 1000, a.objects)):
                c.msgid += 1
                c.s.sendall(msgpack.packb([0, c.msgid, 'manager.open', ['event', 'obj:%d' % j]]))
            c.call('manager.ping')  # skips the opens' replies
        lst = c.call('manager.create', 'list')
        for i in range(0, a.list_items, 100000):
            c.call('list.extend', lst, [(k * 7919) % 1000003
                                        for k in range(i, min(i + 100000, a.list_items))])
        d_ref = c.call('manager.create', 'dict', {'k': 'v'})
        q = mp.Queue()
        procs = [mp.Process(target=reader, args=(path, d_ref, a.seconds, q)) for _ in range(a.readers)]
        if not a.no_heavy:
            procs.append(mp.Process(target=heavy, args=(path, lst, a.seconds, a.heavy,
                                                        not a.no_sort, q)))
        load0 = os.getloadavg()[0]
        for p in procs:
            p.start()
        results = [q.get() for _ in procs]
        for p in procs:
            p.join()
        lat = sorted(x for r in results if isinstance(r, list) for x in r)
        calls = [r for r in results if isinstance(r, dict)]
        print('heavy client: %s%s; %d objects, a %d-item list; %d getitem round trips from '
              '%d readers in %g s' % ('none' if a.no_heavy else a.heavy,
                                      ', no sort' if a.no_sort else '', a.objects, a.list_items,
                                      len(lat), a.readers, a.seconds))
        print('dict.getitem ms: p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f' %
              (pct(lat, 0.5), pct(lat, 0.99), pct(lat, 0.999), lat[-1] * 1e3))
        print('load average (1 min) at start %.2f, at end %.2f' % (load0, os.getloadavg()[0]))
        if calls:
            print('heavy calls made: %r' % calls[0])
        if 'manager.slowlog' in methods:
            slow = c.call('manager.slowlog', 5)
            print('slowlog (5 newest): %s' % ', '.join('%s %d us' % (e['method'], e['duration_us']) for e in slow))
    finally:
        srv.terminate()
        srv.wait()


if __name__ == '__main__':
    sys.exit(main())
