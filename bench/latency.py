#!/usr/bin/python3
"""bench/latency.py - what one heavy client does to everyone else's latency (issue 21).

Ten reader processes call dict.getitem in a loop on a small dict and record each round
trip; meanwhile one heavy process keeps calling the heavy methods: listing every
object (100,000 named ones exist; paged with START COUNT when the broker has it, the
one-reply form otherwise), manager.stats, list.copy and list.sort of a 1,000,000-item
list. Prints p50/p99/p99.9/max of the readers' round trips, and the heavy calls made.

    /usr/bin/python3 bench/latency.py --server build/mpbroker-server [--seconds 10]

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
                    raise RuntimeError('%s: %r' % (method, msg[2]))
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


def heavy(path, lst, seconds, paged, out):
    c = Conn(path)
    calls = {'objects': 0, 'stats': 0, 'copy': 0, 'sort': 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if paged:
            cursor = 0
            while cursor is not None:
                rows, cursor = c.call('manager.objects', cursor, 1000)
        else:
            c.call('manager.objects')
        calls['objects'] += 1
        c.call('manager.stats')
        calls['stats'] += 1
        c.call('list.copy', lst)
        calls['copy'] += 1
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
    ap.add_argument('--no-heavy', action='store_true', help='readers alone (baseline)')
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    path = os.path.join(d, 'mpb.sock')
    srv = subprocess.Popen([a.server, '-q', '-s', path, '--max-message', '256M'])
    try:
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        c = Conn(path)
        methods = {m['name']: m for m in c.call('manager.methods')['methods']}
        paged = methods['manager.objects']['max'] >= 1
        for i in range(0, a.objects, 1000):  # pipelined opens
            for j in range(i, min(i + 1000, a.objects)):
                c.msgid += 1
                c.s.sendall(msgpack.packb([0, c.msgid, 'manager.open', ['event', 'obj:%d' % j]]))
            c.call('manager.ping')  # skips the opens' replies
        lst = c.call('manager.create', 'list')
        for i in range(10):
            c.call('list.extend', lst, [(k * 7919) % 1000003 for k in range(i * 100000, (i + 1) * 100000)])
        d_ref = c.call('manager.create', 'dict', {'k': 'v'})
        q = mp.Queue()
        procs = [mp.Process(target=reader, args=(path, d_ref, a.seconds, q)) for _ in range(a.readers)]
        if not a.no_heavy:
            procs.append(mp.Process(target=heavy, args=(path, lst, a.seconds, paged, q)))
        for p in procs:
            p.start()
        results = [q.get() for _ in procs]
        for p in procs:
            p.join()
        lat = sorted(x for r in results if isinstance(r, list) for x in r)
        calls = [r for r in results if isinstance(r, dict)]
        print('objects listing: %s; %d getitem round trips from %d readers in %g s' %
              ('paged (START COUNT 1000)' if paged else 'one reply', len(lat), a.readers, a.seconds))
        print('dict.getitem ms: p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f' %
              (pct(lat, 0.5), pct(lat, 0.99), pct(lat, 0.999), lat[-1] * 1e3))
        if calls:
            print('heavy calls made: %r' % calls[0])
        if paged:
            slow = c.call('manager.slowlog', 5)
            print('slowlog (5 newest): %s' % ', '.join('%s %d us' % (e['method'], e['duration_us']) for e in slow))
    finally:
        srv.terminate()
        srv.wait()


if __name__ == '__main__':
    sys.exit(main())
