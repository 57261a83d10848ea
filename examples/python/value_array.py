"""value_array.py - Value and Array shared with a child, as in Python's docs (there
with shared memory; here on the broker): the child sets num to pi and negates arr.

    3.1415927
    [0, -1, -2, -3, -4, -5, -6, -7, -8, -9]
"""
import multiprocessing

from mpbroker import Manager


def f(n, a):
    n.value = 3.1415927
    for i in range(len(a)):
        a[i] = -a[i]


if __name__ == '__main__':
    with Manager() as manager:
        num = manager.Value('d', 0.0)
        arr = manager.Array('i', range(10))
        p = multiprocessing.Process(target=f, args=(num, arr))
        p.start()
        p.join()
        print(num.value)
        print(arr[:])
