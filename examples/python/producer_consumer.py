"""producer_consumer.py - a writer process puts messages on a shared queue, a reader
process gets them with get(timeout=3) until the queue stays empty that long.

    m1
    m2
    m3
    all messages read
"""
import multiprocessing
import queue
import sys

from mpbroker import Manager

TIMEOUT = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0


def writer(q):
    for m in ('m1', 'm2', 'm3'):
        q.put(m)


def reader(q):
    while True:
        try:
            print(q.get(timeout=TIMEOUT), flush=True)
        except queue.Empty:
            print('all messages read', flush=True)
            return


if __name__ == '__main__':
    with Manager() as manager:
        q = manager.Queue()
        w = multiprocessing.Process(target=writer, args=(q,))
        r = multiprocessing.Process(target=reader, args=(q,))
        w.start()
        r.start()
        w.join()
        r.join()
