"""namespace.py - a shared Namespace changed by a child process, as in Python's docs:
the child does ns.x += 5 and ns.y *= 10.

    before Namespace(x=1, y=1)
    after Namespace(x=6, y=10)

With Python's Manager, `ns.x += 5` is a read and a write: two processes doing it at
once can lose an update. The child does it as Python writes it; the comment shows the
atomic forms mpbroker adds (ns._incr, and ns._cas for any other function).
"""
import multiprocessing

from mpbroker import Manager


def child(ns):
    ns.x += 5   # atomic: ns._incr('x', 5)
    ns.y *= 10  # atomic: while not ns._cas('y', y := ns.y, y * 10): pass


if __name__ == '__main__':
    with Manager() as manager:
        ns = manager.Namespace()
        ns.x = 1
        ns.y = 1
        print('before', ns)
        p = multiprocessing.Process(target=child, args=(ns,))
        p.start()
        p.join()
        print('after', ns)
