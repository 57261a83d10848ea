"""records.py - a shared list of records, the multiprocessing.Manager tutorial program
with Manager() taken from mpbroker.

Four workers each append one (name, score) record to a list owned by the broker; the
parent prints them all, sorted:

    PYTHONPATH=build/python /usr/bin/python3 examples/python/records.py
"""
import multiprocessing

from mpbroker import Manager


def worker(records, name, score):
    records.append((name, score))


if __name__ == '__main__':
    with Manager() as manager:
        records = manager.list()
        procs = [multiprocessing.Process(target=worker, args=(records, name, score))
                 for name, score in [('Computers', 1), ('Histoire', 5),
                                     ('Physics', 9), ('Maths', 6)]]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        for name, score in sorted(records):
            print(name, score)
