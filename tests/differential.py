#!/usr/bin/python3
"""Differential test: the broker's list, dict, namespace and set against real Python
objects.

Seeded random sequences of operations run on one broker object of each type and on a
Python list, dict, namespace (a dict of str names) and set, with the same arguments;
every result and every error kind must agree, and every few operations the whole
state is read back and compared. Values cover what Python's semantics hinge on: small
and huge ints (up to 2**64-1, down to -2**63), bools, floats with -0.0 and inf, str
with non-ASCII, bytes, None, nested arrays and maps, and keys equal across types (1,
1.0, True). Comparison is exact: 1, 1.0 and True are told apart, and so are 0.0 and
-0.0.

Where the broker differs from Python on purpose (docs/PROTOCOL.md, "Differences from
Python"), the model follows the broker's documented behaviour: integers live in
[-2**63, 2**64-1] (OverflowError past them); a failed sort leaves the list unchanged;
a set keeps insertion order and pops the most recent element; a set operation hashes
every element of its operands before it answers (Python's isdisjoint and issuperset
may answer first); an array is hashable (a tuple) and a map is not; the broker-only methods (incr, cas, slice cursors) follow
PROTOCOL.md.

    /usr/bin/python3 tests/differential.py --server build/mpbroker-server     # fixed seeds
    /usr/bin/python3 tests/differential.py --server build/mpbroker-server --random --ops 100000
    /usr/bin/python3 tests/differential.py --server build/mpbroker-server --seed 7 --ops 500 -v

Raw msgpack-rpc over a Unix socket with Debian's python3-msgpack, as tests/interop.py.
"""
import argparse, math, os, random, socket, subprocess, sys, tempfile, time
import msgpack

I64_MIN, I64_MAX, U64_MAX = -2**63, 2**63 - 1, 2**64 - 1


class BrokerError(Exception):
    def __init__(self, kind, message):
        super().__init__(kind, message)
        self.kind, self.message = kind, message


class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(30)
        # use_list=False: an array may be a map key (a tuple); canon() evens it out.
        self.u = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False)
        self.msgid = 0

    def call(self, method, *params):
        self.msgid += 1
        self.s.sendall(msgpack.packb([0, self.msgid, method, list(params)]))
        while True:
            for msg in self.u:
                typ, rid, err, res = msg
                assert typ == 1 and rid == self.msgid, msg
                if err is not None:
                    raise BrokerError(err[0], err[1])
                return res
            data = self.s.recv(1 << 20)
            if not data:
                raise EOFError("the broker closed the connection")
            self.u.feed(data)


def canon(x):
    """A comparable form that keeps what == forgets: the type, -0.0, order of a map."""
    if isinstance(x, bool):
        return ("bool", x)
    if isinstance(x, int):
        return ("int", x)
    if isinstance(x, float):
        return ("float", repr(x))
    if isinstance(x, str):
        return ("str", x)
    if isinstance(x, bytes):
        return ("bytes", x)
    if x is None:
        return ("None",)
    if isinstance(x, (list, tuple)):
        return ("array", tuple(canon(e) for e in x))
    if isinstance(x, dict):
        return ("map", tuple((canon(k), canon(v)) for k, v in x.items()))
    if isinstance(x, msgpack.ExtType):
        return ("ext", x.code, x.data)
    raise TypeError(f"canon: {type(x)}")


def canon_set(xs):
    return sorted(repr(canon(e)) for e in xs)


#--- Values ---

ASCII_WORDS = ["a", "b", "x", "key", "", "name", "Computers"]
OTHER_WORDS = ["é", "naïve", "日本", "😀", "a\x00b", "\u2028"]
INTS = [0, 1, -1, 2, 7, 42, -42, 255, 256, 2**31, -2**31, I64_MAX, I64_MAX - 1, 2**63,
        2**63 + 1, U64_MAX, U64_MAX - 1, I64_MIN, I64_MIN + 1]
FLOATS = [0.0, -0.0, 1.0, 2.0, 1.5, -2.5, 1e300, -1e-300, float("inf"), float("-inf"),
          7.0, 2.0**63, 2.0**64]


class Gen:
    def __init__(self, rng):
        self.r = rng

    def scalar(self):
        r = self.r
        k = r.randrange(10)
        if k < 3:
            return r.choice(INTS)
        if k == 3:
            return r.randrange(-5, 6)
        if k == 4:
            return r.choice([True, False])
        if k == 5:
            return r.choice(FLOATS)
        if k == 6:
            return r.choice(ASCII_WORDS)
        if k == 7:
            return r.choice(OTHER_WORDS)
        if k == 8:
            return r.choice([b"", b"\x00\xff", b"a", b"key"])
        return None

    def value(self, depth=0):
        k = self.r.randrange(10)
        if depth < 2 and k == 0:
            return [self.value(depth + 1) for _ in range(self.r.randrange(4))]
        if depth < 2 and k == 1:
            return {self.key(depth + 1, maps=False): self.value(depth + 1)
                    for _ in range(self.r.randrange(3))}
        return self.scalar()

    def key(self, depth=0, maps=True):
        """Hashable: a scalar (often one of the few that collide: 1, 1.0, True), or a
        tuple; rarely a map, which is unhashable."""
        k = self.r.randrange(12)
        if k < 4:
            return self.r.choice([0, 1, 1.0, True, False, 0.0, -0.0, 2, 2.0, "a", "b", None,
                                  2**63, 2.0**63, U64_MAX, 2.0**64, I64_MIN, -2.0**63,
                                  I64_MAX, float(I64_MAX)])
        if k == 4 and depth < 2:
            return tuple(self.key(depth + 1, maps) for _ in range(self.r.randrange(3)))
        if k == 5 and maps and depth < 2 and self.r.randrange(4) == 0:
            return {"unhashable": 1}
        return self.scalar()

    def index(self, n):
        """An index or slice bound: mostly in or near range, sometimes huge, a bool,
        or not an integer at all."""
        r = self.r
        k = r.randrange(14)
        if k < 8:
            return r.randrange(-n - 2, n + 3)
        if k == 8:
            return r.choice([True, False])
        if k == 9:
            return r.choice([I64_MAX, I64_MIN, 2**63, U64_MAX, -2**62, 2**62])
        if k == 10:
            return r.choice([1.0, "1", None, b"\x01", [1]])
        return r.randrange(-3, 4)


def to_key(v):
    """A value as Python sees it in a key position: arrays are tuples (the wire does not
    tell a list from a tuple; the broker takes an array as a tuple)."""
    if isinstance(v, list):
        return tuple(to_key(e) for e in v)
    return v


def hashable(k):
    try:
        hash(to_key(k))
        return True
    except TypeError:
        return False


def check_key(k):
    """What Python says of a key: TypeError when unhashable."""
    hash(to_key(k))


def check_range(v):
    """The broker stores integers in [-2**63, 2**64-1]."""
    if isinstance(v, int) and not isinstance(v, bool) and not I64_MIN <= v <= U64_MAX:
        raise OverflowError("out of the stored range")
    return v


def add(cur, delta):
    """dict.incr / namespace.incr: cur + delta as Python adds, in the stored range."""
    num = (int, float)
    if not isinstance(cur, num) or not isinstance(delta, num):
        raise TypeError("unsupported operand type(s) for +")
    s = cur + delta
    if isinstance(s, bool):
        s = int(s)
    return check_range(s)


#--- The operations, each on the broker and on the Python object ---

class ListOps:
    typ = "list"

    def __init__(self, g):
        self.g = g
        self.m = []

    def ops(self):
        g, m = self.g, self.m
        n = len(m)
        r = g.r
        k = r.randrange(22)
        if k == 0:
            v = g.value()
            return ("list.append", [v], lambda: m.append(v))
        if k == 1:
            vs = [g.value() for _ in range(r.randrange(3))]
            return ("list.extend", [vs], lambda: m.extend(vs))
        if k == 2:
            i, v = g.index(n), g.value()
            return ("list.insert", [i, v], lambda: m.insert(i, v))
        if k == 3:
            if r.randrange(3) == 0:
                return ("list.pop", [], lambda: m.pop())
            i = g.index(n)  # nil: absent, as for every optional parameter (PROTOCOL.md)
            return ("list.pop", [i], lambda: m.pop() if i is None else m.pop(i))
        if k == 4:
            v = r.choice(m) if m and r.randrange(2) else g.value()
            return ("list.remove", [v], lambda: m.remove(v))
        if k == 5:
            v = r.choice(m) if m and r.randrange(2) else g.value()
            args = [v] + [g.index(n) for _ in range(r.randrange(3))]
            def index():
                bounds = [a if a is not None else d
                          for a, d in zip(args[1:], [0, sys.maxsize])]  # nil: absent
                return m.index(v, *bounds)
            return ("list.index", args, index)
        if k == 6:
            v = r.choice(m) if m and r.randrange(2) else g.value()
            return ("list.count", [v], lambda: m.count(v))
        if k == 7:
            return ("list.reverse", [], lambda: m.reverse())
        if k == 8:
            rev = r.choice([[], [True], [False]])
            def sort():
                s = sorted(m, reverse=bool(rev and rev[0]))  # unchanged on TypeError
                m[:] = s
            return ("list.sort", rev, sort)
        if k == 9:
            return ("list.len", [], lambda: len(m))
        if k in (10, 11):
            i = g.index(n)
            return ("list.getitem", [i], lambda: m[i])
        if k == 12:
            args = [g.index(n), g.index(n)] + ([g.index(n) or 1] if r.randrange(3) == 0 else [])
            return ("list.getitem", args, lambda: m[slice(*args)])
        if k == 13:
            i, v = g.index(n), g.value()
            def setitem():
                m[i] = v
            return ("list.setitem", [i, v], setitem)
        if k == 14:
            step = [r.choice([1, 2, -1, -2, None, 0])] if r.randrange(2) else []
            args = [g.index(n), g.index(n)] + step
            vs = [g.value() for _ in range(r.randrange(4))]
            def setslice():
                m[slice(*args)] = vs
            return ("list.setitem", args + [vs], setslice)
        if k == 15:
            i = g.index(n)
            def delitem():
                del m[i]
            return ("list.delitem", [i], delitem)
        if k == 16:
            step = [r.choice([1, 2, -1, -3, None, 0])] if r.randrange(2) else []
            args = [g.index(n), g.index(n)] + step
            def delslice():
                del m[slice(*args)]
            return ("list.delitem", args, delslice)
        if k == 17:
            v = r.choice(m) if m and r.randrange(2) else g.value()
            return ("list.contains", [v], lambda: v in m)
        if k == 18 and r.randrange(4) == 0:
            return ("list.clear", [], lambda: m.clear())
        if k == 19:
            start = r.randrange(-1, n + 3)
            count = [r.randrange(0, 4)] if r.randrange(2) else []
            def chunk():
                if start < 0 or (count and count[0] < 1):
                    raise ValueError("bad cursor")
                end = start + count[0] if count else len(m)
                return [m[start:end], end if end < len(m) else None]
            return ("list.slice", [start] + count, chunk)
        return ("list.copy", [], lambda: list(m))

    def state(self, c, ref):
        return canon(c.call("list.copy", ref)), canon(self.m)


class DictOps:
    typ = "dict"

    def __init__(self, g):
        self.g = g
        self.m = {}

    def key(self):
        if self.m and self.g.r.randrange(2):
            return self.g.r.choice(list(self.m))
        return self.g.key()

    def ops(self):
        g, m, r = self.g, self.m, self.g.r
        k = r.randrange(17)
        key = self.key()
        hk = to_key(key) if hashable(key) else None
        if k in (0, 1):
            v = g.value()
            def setitem():
                check_key(key)
                m[hk] = v
            return ("dict.setitem", [key, v], setitem)
        if k == 2:
            def getitem():
                check_key(key)
                return m[hk]
            return ("dict.getitem", [key], getitem)
        if k == 3:
            def delitem():
                check_key(key)
                del m[hk]
            return ("dict.delitem", [key], delitem)
        if k == 4:
            d = [g.value()] if r.randrange(2) else []
            def get():
                check_key(key)
                return m.get(hk, *d)
            return ("dict.get", [key] + d, get)
        if k == 5:
            return ("dict.len", [], lambda: len(m))
        if k == 6:
            def contains():
                check_key(key)
                return hk in m
            return ("dict.contains", [key], contains)
        if k == 7:
            return (r.choice(["dict.keys", "dict.values", "dict.items"]), [], None)
        if k == 8:
            d = [g.value()] if r.randrange(2) else []
            def pop():
                check_key(key)
                return m.pop(hk, *d)
            return ("dict.pop", [key] + d, pop)
        if k == 9:
            return ("dict.popitem", [], lambda: list(m.popitem()))
        if k == 10:
            d = [g.value()] if r.randrange(2) else []
            def setdefault():
                check_key(key)
                return m.setdefault(hk, *d)
            return ("dict.setdefault", [key] + d, setdefault)
        if k == 11:
            pairs = [[self.key(), g.value()] for _ in range(r.randrange(3))]
            as_map = r.randrange(2) and all(hashable(p[0]) for p in pairs)
            arg = {to_key(p[0]): p[1] for p in pairs} if as_map else pairs
            def update():
                for p in pairs:
                    check_key(p[0])
                for p in pairs:
                    m[to_key(p[0])] = p[1]
            return ("dict.update", [arg], update)
        if k == 12 and r.randrange(5) == 0:
            return ("dict.clear", [], lambda: m.clear())
        if k == 13:
            delta = [r.choice([1, -1, 5, 2.5, True, 2**63, -2**63, U64_MAX, "x", None])] \
                if r.randrange(3) else []
            def incr():
                check_key(key)
                s = add(m.get(hk, 0), delta[0] if delta else 1)
                m[hk] = s
                return s
            return ("dict.incr", [key] + delta, incr)
        if k == 14:
            exp = m.get(hk) if hk is not None and hk in m and r.randrange(2) else g.value()
            new = g.value()
            def cas():
                check_key(key)
                if (m[hk] if hk in m else None) == exp and (hk in m or exp is None):
                    m[hk] = new
                    return True
                return False
            return ("dict.cas", [key, exp, new], cas)
        return ("dict.copy", [], None)

    def expect_read(self, method):
        m = self.m
        return {"dict.keys": lambda: list(m), "dict.values": lambda: list(m.values()),
                "dict.items": lambda: [list(p) for p in m.items()],
                "dict.copy": lambda: dict(m)}[method]

    def state(self, c, ref):
        return canon(c.call("dict.items", ref)), canon([list(p) for p in self.m.items()])


class NamespaceOps:
    typ = "namespace"
    NAMES = ["x", "y", "count", "é", "_", "a b"]

    def __init__(self, g):
        self.g = g
        self.m = {}

    def name(self):
        r = self.g.r
        if r.randrange(12) == 0:
            return r.choice([1, b"x", None, ["x"], 1.5])
        return r.choice(self.NAMES)

    def ops(self):
        g, m, r = self.g, self.m, self.g.r
        name = self.name()

        def must_str():
            if not isinstance(name, str):
                raise TypeError("attribute name must be string")
        k = r.randrange(8)
        if k in (0, 1):
            v = g.value()
            def setattr_():
                must_str()
                m[name] = v
            return ("namespace.setattr", [name, v], setattr_)
        if k == 2:
            def getattr_():
                must_str()
                if name not in m:
                    raise AttributeError(name)
                return m[name]
            return ("namespace.getattr", [name], getattr_)
        if k == 3:
            def delattr_():
                must_str()
                if name not in m:
                    raise AttributeError(name)
                del m[name]
            return ("namespace.delattr", [name], delattr_)
        if k == 4:
            return ("namespace.vars", [], lambda: dict(m))
        if k == 5:
            delta = [r.choice([1, -1, 3, 0.5, True, 2**63, -2**63, "s"])] if r.randrange(2) else []
            def incr():
                must_str()
                s = add(m.get(name, 0), delta[0] if delta else 1)
                m[name] = s
                return s
            return ("namespace.incr", [name] + delta, incr)
        if k == 6:
            exp = m.get(name) if isinstance(name, str) and name in m and r.randrange(2) else g.value()
            new = g.value()
            def cas():
                must_str()
                cur = m.get(name)
                if cur == exp and (name in m or exp is None):
                    m[name] = new
                    return True
                return False
            return ("namespace.cas", [name, exp, new], cas)
        v = g.value()
        def setattr2():
            must_str()
            m[name] = v
        return ("namespace.setattr", [name, v], setattr2)

    def state(self, c, ref):
        return canon(c.call("namespace.vars", ref)), canon(self.m)


class SetOps:
    """The model: a dict used as an insertion-ordered set (Python's equality and
    hashing, the broker's documented order)."""
    typ = "set"

    def __init__(self, g):
        self.g = g
        self.m = {}

    def elem(self):
        if self.m and self.g.r.randrange(2):
            return self.g.r.choice(list(self.m))
        return self.g.key()

    def other(self):
        r = self.g.r
        es = [self.elem() for _ in range(r.randrange(4))]
        if r.randrange(4) == 0 and all(map(hashable, es)):
            return {to_key(e): 1 for e in es}, es  # a map: its keys
        return es, es

    def ops(self):
        g, m, r = self.g, self.m, self.g.r
        k = r.randrange(16)
        e = self.elem()
        he = to_key(e) if hashable(e) else None
        if k in (0, 1):
            def add_():
                check_key(e)
                m.setdefault(he, None)
            return ("set.add", [e], add_)
        if k == 2:
            def discard():
                check_key(e)
                m.pop(he, None)
            return ("set.discard", [e], discard)
        if k == 3:
            def remove():
                check_key(e)
                del m[he]
            return ("set.remove", [e], remove)
        if k == 4:
            def pop():
                if not m:
                    raise KeyError("pop from an empty set")
                return m.popitem()[0]
            return ("set.pop", [], pop)
        if k == 5:
            def contains():
                check_key(e)
                return he in m
            return ("set.contains", [e], contains)
        if k == 6:
            return ("set.len", [], lambda: len(m))
        if k == 7 and r.randrange(5) == 0:
            return ("set.clear", [], lambda: m.clear())
        if k in (8, 9, 10, 11):
            name = r.choice(["union", "intersection", "difference", "symmetric_difference",
                             "issubset", "issuperset", "isdisjoint"])
            n = 1 if name.startswith(("symmetric", "is")) else r.randrange(0, 3)
            others = [self.other() for _ in range(n)]

            def query():
                sets = []
                for _, es in others:
                    for x in es:
                        check_key(x)
                    sets.append(set(to_key(x) for x in es))
                me = set(m)
                res = getattr(me, name)(*sets)
                return res
            return ("set." + name, [o[0] for o in others], query)
        if k in (12, 13):
            name = r.choice(["update", "intersection_update", "difference_update",
                             "symmetric_difference_update"])
            n = 1 if name.startswith("symmetric") else r.randrange(0, 3)
            others = [self.other() for _ in range(n)]

            def update():
                sets = []
                for _, es in others:
                    for x in es:
                        check_key(x)
                    sets.append([to_key(x) for x in es])
                if name == "update":
                    for es in sets:
                        for x in es:
                            m.setdefault(x, None)
                elif name == "intersection_update":
                    keep = [x for x in m if all(x in set(es) for es in sets)]
                    for x in list(m):
                        if x not in keep:
                            del m[x]
                elif name == "difference_update":
                    for es in sets:
                        for x in es:
                            m.pop(x, None)
                else:
                    other = {}
                    for x in sets[0]:
                        other.setdefault(x, None)
                    for x in other:
                        if x in m:
                            del m[x]
                        else:
                            m[x] = None
            return ("set." + name, [o[0] for o in others], update)
        return ("set.copy", [], lambda: list(m))

    def state(self, c, ref):
        return canon_set(c.call("set.copy", ref)), canon_set(self.m)


KINDS = {KeyError: "KeyError", IndexError: "IndexError", TypeError: "TypeError",
         ValueError: "ValueError", AttributeError: "AttributeError",
         OverflowError: "OverflowError"}

UNORDERED = ("set.copy", "set.union", "set.intersection", "set.difference",
             "set.symmetric_difference")


def run(server, seed, nops, verbose):
    d = tempfile.mkdtemp(prefix="mpbdiff.")
    path = os.path.join(d, "s.sock")
    p = subprocess.Popen([server, "--socket", path, "--quiet"])
    history = []
    try:
        for _ in range(400):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        c = Client(path)
        rng = random.Random(seed)
        g = Gen(rng)
        models = [ListOps(g), DictOps(g), NamespaceOps(g), SetOps(g)]
        refs = [c.call("manager.create", mdl.typ) for mdl in models]
        for step in range(nops):
            i = rng.randrange(len(models))
            mdl, ref = models[i], refs[i]
            method, args, fn = mdl.ops()
            if fn is None:
                fn = mdl.expect_read(method)
            line = f"{method}({', '.join(map(repr, args))})"
            history.append(line)
            try:
                want, want_err = fn(), None
            except tuple(KINDS) as e:
                want, want_err = None, KINDS[type(e)]
            try:
                got, got_err = c.call(method, ref, *args), None
            except BrokerError as e:
                got, got_err = None, e.kind
            if method in UNORDERED[1:] and want_err is None:
                # Equal elements of different types (False, 0, -0.0): Python's
                # intersection may hold the other operand's, the broker the set's own.
                same = got_err is None and set(map(to_key, got)) == set(want) and \
                    len(got) == len(want)
            elif method in UNORDERED or method.startswith("set.") and isinstance(want, set):
                same = got_err == want_err and (want_err or canon_set(got) == canon_set(want))
            elif method == "set.pop" and want_err is None:
                same = got_err is None and canon(got) == canon(want)
            else:
                same = got_err == want_err and (want_err or canon(got) == canon(want))
            if verbose:
                print(f"{step}: {line} -> {got_err or repr(got)}")
            if not same:
                return fail(seed, step, history, f"broker: {got_err or repr(got)}\n"
                            f"  Python: {want_err or repr(want)}", server, nops)
            if step % 10 == 9 or step == nops - 1:
                for mdl, ref in zip(models, refs):
                    b, py = mdl.state(c, ref)
                    if b != py:
                        return fail(seed, step, history, f"{mdl.typ} state differs:\n"
                                    f"  broker: {b}\n  Python: {py}", server, nops)
        return 0
    finally:
        p.terminate()
        rc = p.wait(30)
        if rc != 0:
            print(f"differential: the broker exited {rc}")
            sys.exit(1)
        os.rmdir(d) if os.path.isdir(d) and not os.listdir(d) else None


def fail(seed, step, history, what, server, nops):
    print(f"differential: seed {seed}, step {step}: {history[-1]}\n  {what}")
    print("last steps:\n  " + "\n  ".join(history[-15:]))
    print(f"replay: /usr/bin/python3 {sys.argv[0]} --server {server} --seed {seed} "
          f"--ops {step + 1} -v")
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=os.environ.get("MPB_SERVER", "build/mpbroker-server"))
    ap.add_argument("--seed", type=int, action="append",
                    help="run this seed (repeatable; default: the fixed seeds)")
    ap.add_argument("--random", action="store_true", help="one run with a fresh seed")
    ap.add_argument("--ops", type=int, default=1500, help="operations per seed")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every operation")
    a = ap.parse_args()
    seeds = a.seed or ([random.randrange(1 << 32)] if a.random else [1, 2, 3, 4, 5])
    failed = 0
    for s in seeds:
        rc = run(a.server, s, a.ops, a.verbose)
        print(f"differential: seed {s}: {a.ops} operations, {'FAILED' if rc else 'same as Python'}")
        failed += rc
    print(f"differential: {len(seeds) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
