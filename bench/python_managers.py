"""Python through mpbroker against Python through multiprocessing.Manager: the same
caller, the same proxies' calls (list.append, dict set), 1 client and 50 client
processes. Prints a Markdown table; speed is measured here, never asserted in tests.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_managers.py [ROUNDS] [--quick]

--quick: tiny runs (1 and 5 clients), one round: the smoke test, not a measurement.
bench/compare runs it (without --quick) and adds its table to compare.md.

Each figure is the best of ROUNDS (default 3) runs: every client is started and
connected (one call made) first, then all start together on an event; ops/s is the
total over the time from that start to the last client's end (process start-up
excluded). Clients are forked (the default start method).
"""
import multiprocessing
import sys
import time

import mpbroker

CONFIGS = [(1, 20000), (50, 1000)]  # (clients, ops per client)
KINDS = ['list.append', 'dict set']


def work(kind, obj, n, ready, go, out):
    len(obj)  # connected before the clock starts
    ready.release()
    go.wait()
    if kind == 'list.append':
        for i in range(n):
            obj.append(i)
    else:
        for i in range(n):
            obj[i % 1000] = i
    out.put(time.time())


def run(manager_factory, kind, clients, n):
    with manager_factory() as m:
        obj = m.list() if kind == 'list.append' else m.dict()
        ready, go, out = multiprocessing.Semaphore(0), multiprocessing.Event(), multiprocessing.Queue()
        ps = [multiprocessing.Process(target=work, args=(kind, obj, n, ready, go, out))
              for _ in range(clients)]
        for p in ps:
            p.start()
        for _ in ps:
            ready.acquire()
        t0 = time.time()
        go.set()
        end = max(out.get() for _ in ps)
        for p in ps:
            p.join()
        assert all(p.exitcode == 0 for p in ps)
        if kind == 'list.append':
            assert len(obj) == clients * n
        return clients * n / (end - t0)


def main():
    global CONFIGS
    args = [a for a in sys.argv[1:] if a != '--quick']
    rounds = int(args[0]) if args else 3
    if '--quick' in sys.argv:
        CONFIGS, rounds = [(1, 200), (5, 50)], 1
    print('| caller | clients | Python Manager ops/s | mpbroker ops/s | ratio |')
    print('|---|---|---|---|---|')
    for clients, n in CONFIGS:
        for kind in KINDS:
            py = max(run(multiprocessing.Manager, kind, clients, n) for _ in range(rounds))
            mb = max(run(mpbroker.Manager, kind, clients, n) for _ in range(rounds))
            print('| %s | %d | %.0f | %.0f | %.1fx |' % (kind, clients, py, mb, mb / py),
                  flush=True)


if __name__ == '__main__':
    main()
