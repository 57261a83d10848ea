"""Messages per second from one process to another: multiprocessing.Pipe (an OS pipe),
mpbroker's pipe, mpbroker's queue, and mpbroker's channel (a rendezvous each).

    PYTHONPATH=build/python /usr/bin/python3 bench/pipe_channel.py [N]

One sender process, the receiver in this process, N small messages (an int) one call
each (no pipelining), timed from the first receive to the last. Figures depend on
the machine's load: never asserted anywhere.
"""
import multiprocessing
import os
import sys
import time

import mpbroker


def send_pipe(conn, n):
    for i in range(n):
        conn.send(i)


def put_queue(q, n):
    for i in range(n):
        q.put(i)


def write_channel(cout, n):
    for i in range(n):
        cout(i)


def run(name, target, args, recv, n):
    p = multiprocessing.Process(target=target, args=args)
    p.start()
    first = recv()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        recv()
    dt = time.perf_counter() - t0
    p.join()
    assert first == 0
    print('%-28s %9.0f msg/s' % (name, (n - 1) / dt), flush=True)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print('n=%d, load average %.2f %.2f %.2f, %d CPUs' % ((n,) + os.getloadavg() + (os.cpu_count(),)))
    a, b = multiprocessing.Pipe()
    run('multiprocessing.Pipe', send_pipe, (b, n), a.recv, n)
    with mpbroker.Manager() as m:
        a, b = m.Pipe()
        run('mpbroker pipe', send_pipe, (b, n), a.recv, n)
        q = m.Queue()
        run('mpbroker queue', put_queue, (q, n), q.get, n)
        ch = m.Channel()
        run('mpbroker channel (rendezvous)', write_channel, (ch.writer(), n), ch.reader(), n)


if __name__ == '__main__':
    main()
