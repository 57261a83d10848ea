#!/usr/bin/python3
"""Model test: a real mpbroker-server driven by seeded random operations over several
connections, checked after every step against an executable model of
docs/PROTOCOL.md written in Python (Python's own list/dict semantics are the
reference).

Each step is one random operation on one connection: stores and swaps of references,
holds and releases, names, blocking calls that park (and are woken, time out, or are
cancelled by closing their connection), requests queued behind a parked one,
notifications, half-closes, restarts of the broker on its --data-dir (clean, SIGTERM
with parked calls, SIGKILL), under a tight --max-memory. After every step an observer
connection reads the whole state (every object's existence, type, name, len, holders,
holds, contained count and contents, every connection's holds and parked flag, the
memory counter) and compares it with the model; after each clean restart the memory
counter must equal the one before it.

    model_test.py [--seed N] [--steps N] [--server PATH] [--random] [--quiet]

Without --seed it runs the fixed seeds (what `make test` runs); --random picks a
seed and prints it. A mismatch prints the seed, the step and the trace of the steps
before it, and `--seed N --steps M` replays it.
"""
import argparse, os, random, select, shutil, signal, socket, struct, subprocess, sys
import tempfile, time, traceback
import msgpack

# Operations that reach a known bug that is not fixed yet on main: drawn only when
# named here in --bugs (so that each can be shown to be found). Empty it as the fixes
# land.
KNOWN_BUGS = set()

# ---------------------------------------------------------------------------- values


class Ref:
    """A reference (ext type 1), equal only to a reference with the same id."""
    __slots__ = ("id",)

    def __init__(self, id):
        self.id = id

    def __eq__(self, other):
        return isinstance(other, Ref) and other.id == self.id

    def __hash__(self):
        return hash(("ref", self.id))

    def __repr__(self):
        return "R%x" % (self.id & 0xffffffff)


def ext_hook(code, data):
    if code == 1 and len(data) == 8:
        return Ref(struct.unpack(">Q", data)[0])
    return msgpack.ExtType(code, data)


def default(o):
    if isinstance(o, Ref):
        return msgpack.ExtType(1, struct.pack(">Q", o.id))
    raise TypeError(repr(o))


def same(a, b):
    """Equal and of the same types all the way down (1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(k1, k2) and same(v1, v2) for (k1, v1), (k2, v2)
                                        in zip(a.items(), b.items()))
    return a == b


def refs_in(v, out):
    """Append every Ref inside v to out (a list: a value may hold one twice)."""
    if isinstance(v, Ref):
        out.append(v)
    elif isinstance(v, tuple):
        for x in v:
            refs_in(x, out)
    elif isinstance(v, dict):
        for k, x in v.items():
            refs_in(k, out)
            refs_in(x, out)
    return out


def hashable(v):
    if isinstance(v, dict):
        return False
    if isinstance(v, tuple):
        return all(hashable(x) for x in v)
    return True


def packed_size(v):
    return len(msgpack.packb(v, default=default))


def upper_cost(v):
    """More than the broker can charge for storing v (its slot and heap bytes, maps and
    arrays with room to spare): an OutOfMemory is plausible only past this."""
    n = 64
    if isinstance(v, (str, bytes)):
        n += len(v.encode() if isinstance(v, str) else v) + 16
    elif isinstance(v, tuple):
        n += 64 + sum(upper_cost(x) for x in v) * 2
    elif isinstance(v, dict):
        n += 256 + sum(upper_cost(k) + upper_cost(x) for k, x in v.items()) * 3
    return n


class Py:
    """Python's semantics where msgpack arrays are tuples: helpers for the model."""

    @staticmethod
    def sortable(items):
        """Raise TypeError as the broker's list.sort does: numbers with numbers, str with
        str, bin with bin, arrays lexicographically; anything else is unorderable."""
        def key(v):
            if isinstance(v, (bool, int, float)):
                return K(0, v)
            if isinstance(v, str):
                return K(1, v)
            if isinstance(v, bytes):
                return K(2, v)
            if isinstance(v, tuple):
                return K(3, tuple(key(x) for x in v))
            return K(9, v)
        return [key(v) for v in items]


class K:
    __slots__ = ("c", "v")

    def __init__(self, c, v):
        self.c, self.v = c, v

    def __lt__(self, other):
        if self.c != other.c or self.c == 9:
            raise TypeError("unorderable")
        return self.v < other.v

    def __eq__(self, other):
        # equality is Python's (arrays compare item by item with ==, so two equal maps
        # inside arrays never need ordering); only < between unorderables fails
        return self.c == other.c and self.v == other.v


# -------------------------------------------------------------------------- failures


class Mismatch(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Mismatch(what)

# ------------------------------------------------------------------------------ wire


class Conn:
    """One raw msgpack-rpc connection."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.u = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False,
                                  ext_hook=ext_hook)
        self.msgid = 0
        self.eof = False

    def send_raw(self, data):
        self.s.sendall(data)

    def request(self, method, params):
        self.msgid += 1
        self.s.sendall(msgpack.packb([0, self.msgid, method, list(params)], default=default))
        return self.msgid

    def notify(self, method, params):
        self.s.sendall(msgpack.packb([2, method, list(params)], default=default))

    def recv(self, timeout=20.0):
        """The next message, or None after timeout (EOF sets self.eof)."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.u:
                return msg
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.s], [], [], left)
            if not r:
                return None
            try:
                data = self.s.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.u.feed(data)

    def reply(self, msgid, timeout=20.0):
        msg = self.recv(timeout)
        expect(msg is not None, "no reply to msgid %d (%s)" % (
            msgid, "connection closed" if self.eof else "timed out"))
        expect(len(msg) == 4 and msg[0] == 1 and msg[1] == msgid,
               "expected the reply to msgid %d, got %r" % (msgid, msg))
        return msg[2], msg[3]

    def call(self, method, *params):
        return self.reply(self.request(method, params))

    def quiet(self, wait=0.0):
        """Nothing arrived (what arrived, if anything)."""
        msg = self.recv(wait)
        return msg

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class Broker:
    def __init__(self, server, tmp, max_memory):
        self.server, self.tmp, self.max_memory = server, tmp, max_memory
        self.sock = os.path.join(tmp, "s.sock")
        self.data = os.path.join(tmp, "data")
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.errpath = os.path.join(self.tmp, "stderr.%d" % self.starts)
        args = [self.server, "--socket", self.sock, "--quiet", "--data-dir", self.data,
                "--fsync", "no", "--output-timeout", "0"]
        if self.max_memory:
            args += ["--max-memory", str(self.max_memory)]
        self.err = open(self.errpath, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise Mismatch("the broker exited at start (%d): %s" % (
                    self.proc.returncode, self.stderr()))
            try:
                c = Conn(self.sock)
                err, res = c.call("manager.ping")
                c.close()
                if res == "pong":
                    return
            except (OSError, Mismatch):
                pass
            if time.monotonic() > deadline:
                raise Mismatch("the broker did not start")
            time.sleep(0.02)

    def stderr(self):
        try:
            with open(self.errpath, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Mismatch("the broker did not stop on %s" % sig.name)
        self.err.close()
        if sig == signal.SIGTERM:
            expect(rc == 0, "the broker exited %d on SIGTERM: %s" % (rc, self.stderr()))
        self.proc = None

# ----------------------------------------------------------------------------- model

CONTAINERS = ("list", "dict", "namespace", "set", "queue", "joinablequeue")


class MObj:
    def __init__(self, ref, typ, name, state):
        self.ref, self.type, self.name, self.state = ref, typ, name, state
        self.waiters = []   # MConn parked on it, oldest first

    def values(self):
        """Every value stored in it (for containment)."""
        s = self.state
        if self.type == "list":
            return list(s)
        if self.type in ("dict", "namespace"):
            return [x for kv in s.items() for x in kv]
        if self.type == "set":
            return list(s)
        if self.type == "value":
            return []
        if self.type in ("queue", "joinablequeue"):
            # a parked put's item keeps what it refers to alive until it goes in
            return list(s["items"]) + [w.parked[3] for w in self.waiters
                                       if w.parked[0] == "qput"]
        if self.type == "condition":
            return [s["lock"]] if s["lock"] is not None else []
        return []

    def length(self):
        """manager.objects' len: items, keys or attributes; nil for the other types."""
        s = self.state
        if self.type in ("list", "dict", "namespace", "set"):
            return len(s)
        if self.type in ("queue", "joinablequeue", "array"):
            return len(s["items"])
        return None


class MConn:
    def __init__(self, idx, conn, cid):
        self.idx, self.conn, self.cid = idx, conn, cid
        self.holds = {}       # ref -> count
        self.parked = None    # (kind, obj, msgid or None, extra)
        self.pin = None       # the object its parked request keeps alive
        self.backlog = []     # (msgid, run) behind the parked request
        self.alive = True

    def __repr__(self):
        return "c%d" % self.idx


class Model:
    def __init__(self):
        self.objs = {}     # ref -> MObj, in creation order
        self.names = {}    # name -> ref
        self.seen = set()  # every id ever handed out
        self.dead = []     # refs of freed objects

    def live(self, ref):
        return ref in self.objs

    def contained(self):
        n = {}
        for o in self.objs.values():
            for r in refs_in(tuple(o.values()), []):
                n[r] = n.get(r, 0) + 1
        return n

    def held(self, conns):
        h = {}
        for c in conns:
            for r, k in c.holds.items():
                h.setdefault(r, [0, 0])
                h[r][0] += 1
                h[r][1] += k
        return h

    def collect(self, conns):
        """Free what nothing keeps alive (as reference counting does: cycles stay)."""
        while True:
            cont = self.contained()
            held = self.held(conns)
            pins = {c.pin.ref for c in conns if c.parked}   # a waiting request keeps
            gone = [o for o in self.objs.values()             # its object alive
                    if o.name is None and not cont.get(o.ref) and o.ref not in held
                    and o.ref not in pins]
            if not gone:
                return
            for o in gone:
                del self.objs[o.ref]
                self.dead.append(o.ref)

    def fingerprint(self):
        """What the memory count depends on: every object, its name and what it stores
        (not who holds, owns or waits)."""
        out = []
        for r in sorted(self.objs, key=lambda r: r.id):
            o = self.objs[r]
            st = o.state
            if o.type in ("list", "dict", "namespace", "set"):
                c = repr(list(st.items()) if isinstance(st, dict) else st)
            elif o.type in ("queue", "joinablequeue"):
                # a parked put's item is counted too (PROTOCOL.md, Limits)
                c = repr((st["items"], st["maxsize"],
                          [w.parked[3] for w in o.waiters if w.parked[0] == "qput"]))
            elif o.type in ("value", "array"):
                c = repr(st)
            elif o.type == "condition":
                c = repr(st["lock"])
            else:
                c = ""
            out.append((r.id, o.type, o.name, c))
        return repr(out)

    def reachable_from_names(self):
        seen = set()
        todo = [r for r in self.names.values()]
        while todo:
            r = todo.pop()
            if r in seen or r not in self.objs:
                continue
            seen.add(r)
            todo.extend(refs_in(tuple(self.objs[r].values()), []))
        return seen

    def restart(self):
        """What a broker loaded from its data directory holds: named objects and what
        they refer to, and (as reference cycles are not collected) cycles of anonymous
        objects; nobody holds, owns or waits."""
        for o in self.objs.values():
            o.waiters = []
        self.collect([])
        for o in self.objs.values():
            o.waiters = []
            s = o.state
            if o.type in ("lock", "rlock"):
                s["owner"], s["count"], s["orphan"] = None, 0, False
            elif o.type in ("semaphore", "boundedsemaphore"):
                s["value"] += sum(s["units"].values()) + s["orphans"]
                s["units"], s["orphans"] = {}, 0

# ---------------------------------------------------------------------------- driver


class Driver:
    def __init__(self, args, seed):
        self.args, self.seed = args, seed
        self.rng = random.Random(seed)
        self.tmp = tempfile.mkdtemp(prefix="mpbmodel.")
        self.max_memory = self.rng.choice([0, 12000, 20000, 40000])
        if args.max_memory is not None:
            self.max_memory = args.max_memory
        self.broker = Broker(args.server, self.tmp, self.max_memory)
        self.m = Model()
        self.conns = []
        self.ncreated = 0
        self.trace = []
        self.step = 0
        self.used = 0            # memory_used after the last step
        self.memory_of = {}      # fingerprint of the stored state -> (memory_used, step)
        self.stats = {}
        self.current = ""

    # -- connections

    def connect(self):
        c = Conn(self.broker.sock)
        err, clients = c.call("manager.clients")
        expect(err is None, "manager.clients: %r" % (err,))
        cid = [x["id"] for x in clients if x["self"]][0]
        self.ncreated += 1
        mc = MConn(self.ncreated, c, cid)
        self.conns.append(mc)
        return mc

    def disconnect(self, mc):
        """The model's side of a connection that closed: parked request and what it sent
        after it dropped, holds dropped, locks handed to the next waiter or left locked
        by nobody, semaphore units one each to waiters, the rest orphaned."""
        mc.alive = False
        self.conns.remove(mc)
        if mc.parked:
            self.unpark(mc)
        mc.backlog = []
        # its holds go, and what they alone kept is freed, before anything it owned is
        # handed on (a waiter's queued requests then run without those objects)
        mc.holds = {}
        self.m.collect(self.conns)
        for o in list(self.m.objs.values()):
            s = o.state
            if o.type in ("lock", "rlock") and s["owner"] is mc:
                s["owner"], s["count"] = None, 0
                if o.waiters:
                    self.lock_handoff(o)
                else:
                    s["orphan"] = True
            elif o.type in ("semaphore", "boundedsemaphore") and mc in s["units"]:
                n = s["units"].pop(mc)
                while n and o.waiters:
                    w = o.waiters[0]
                    s["units"][w] = s["units"].get(w, 0) + 1
                    n -= 1
                    self.wake(w, None, True)
                s["orphans"] += n
        mc.holds = {}

    def lock_handoff(self, o):
        s = o.state
        if s["owner"] is None and not s["orphan"] and o.waiters:
            w = o.waiters[0]
            s["owner"], s["count"] = w, (w.parked[3] if w.parked[0] == "creacq" else 1)
            self.wake(w, None, True)

    def sem_handoff(self, o):
        s = o.state
        while s["value"] > 0 and o.waiters:
            w = o.waiters[0]
            s["value"] -= 1
            s["units"][w] = s["units"].get(w, 0) + 1
            self.wake(w, None, True)

    def wait_clients(self):
        """Wait until the broker has seen every close (its client count is ours + 1)."""
        deadline = time.monotonic() + 20
        while True:
            err, clients = self.obs.call("manager.clients")
            if len(clients) == len(self.conns) + 1:
                return clients
            expect(time.monotonic() < deadline,
                   "the broker still shows %d connections, the model %d" % (
                       len(clients), len(self.conns) + 1))
            time.sleep(0.005)

    # -- expected replies

    def answer(self, mc, msgid, err, res, check=None):
        """mc's request msgid is answered now: read it and compare."""
        if msgid is None:       # a notification: nothing comes back
            return
        got_err, got_res = mc.conn.reply(msgid)
        self.compare(mc, msgid, err, res, got_err, got_res, check)

    def compare(self, mc, msgid, err, res, got_err, got_res, check=None):
        """err: the error kind expected (a tuple: any of them), else None and res."""
        if err is not None:
            kinds = err if isinstance(err, tuple) else (err,)
            expect(got_err is not None and got_err[0] in kinds,
                   "%r msgid %d: expected error %s, got %r %r" % (mc, msgid, err, got_err,
                                                                  got_res))
            return
        expect(got_err is None, "%r msgid %d: expected %r, got error %r" % (
            mc, msgid, res, got_err))
        if check:
            check(got_res)
        else:
            expect(same(got_res, res), "%r msgid %d: expected %r, got %r" % (
                mc, msgid, res, got_res))

    # -- parking

    def park(self, mc, obj, kind, msgid, extra=None, pin=None):
        """mc waits on obj (for a condition: in its lock's queue, pinning the condition)."""
        mc.parked = (kind, obj, msgid, extra)
        mc.pin = pin or obj
        obj.waiters.append(mc)

    def unpark(self, mc):
        kind, obj, msgid, extra = mc.parked
        obj.waiters.remove(mc)
        mc.parked = mc.pin = None
        return kind, obj, msgid, extra

    def wake(self, mc, err, res):
        """mc's parked request is answered; then what it queued behind it runs."""
        kind, obj, msgid, extra = self.unpark(mc)
        self.answer(mc, msgid, err, res)
        self.run_backlog(mc)

    def run_backlog(self, mc):
        while mc.backlog and not mc.parked and mc.alive:
            msgid, run = mc.backlog.pop(0)
            run(mc, msgid)

    # -- the whole-state check

    def check_state(self):
        m = self.m
        deadline = time.monotonic() + 10
        while True:
            clients = self.wait_clients()
            byid = {x["id"]: x for x in clients}
            if all(bool(byid.get(mc.cid, {}).get("parked")) == bool(mc.parked)
                   for mc in self.conns) or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        for mc in self.conns:
            x = byid.get(mc.cid)
            expect(x is not None, "%r (broker id %d) is not in manager.clients" % (mc, mc.cid))
            expect(x["holds"] == sum(mc.holds.values()),
                   "%r holds %d, the model %d" % (mc, x["holds"], sum(mc.holds.values())))
            expect(bool(x["parked"]) == bool(mc.parked),
                   "%r parked %r, the model %r" % (mc, x["parked"], mc.parked))
        err, objs = self.obs.call("manager.objects")
        expect(err is None, "manager.objects: %r" % (err,))
        got = {o["ref"]: o for o in objs}
        expect(set(got) == set(m.objs), "objects: broker has %s, model %s" % (
            sorted(got, key=lambda r: r.id), sorted(m.objs, key=lambda r: r.id)))
        cont = m.contained()
        held = m.held(self.conns)
        for r, o in m.objs.items():
            g = got[r]
            what = "%r (%s %r)" % (r, o.type, o.name)
            expect(g["type"] == o.type, "%s: type %r" % (what, g["type"]))
            expect(g["name"] == o.name, "%s: name %r" % (what, g["name"]))
            expect(g["len"] == o.length(), "%s: len %r, model %r" % (what, g["len"], o.length()))
            expect(g["contained"] == cont.get(r, 0), "%s: contained %r, model %r" % (
                what, g["contained"], cont.get(r, 0)))
            h = held.get(r, [0, 0])
            expect([g["holders"], g["holds"]] == h, "%s: holders/holds %r, model %r" % (
                what, [g["holders"], g["holds"]], h))
        # Contents, pipelined: one request per object.
        reads = []
        for r, o in m.objs.items():
            rd = READS.get(o.type)
            if rd:
                method, want = rd
                reads.append((self.obs.request(method, [r]), o, method, want(o)))
        for msgid, o, method, want in reads:
            err, res = self.obs.reply(msgid)
            expect(err is None, "%s %r: %r" % (method, o.ref, err))
            expect(same(res, want), "%s %r (%s %r): broker %r, model %r" % (
                method, o.ref, o.type, o.name, res, want))
        for name, r in m.names.items():
            err, res = self.obs.call("manager.lookup", name)
            expect(err is None and res == r, "lookup %r: %r %r, model %r" % (name, err, res, r))
        err, st = self.obs.call("manager.stats")
        self.used = st["memory_used"]
        self.stats["peak"] = max(self.stats.get("peak", 0), self.used)
        # The count is a function of what is stored: a state seen before has the count
        # it had then (a drift shows at once, not only at the next restart).
        fp = m.fingerprint()
        was = self.memory_of.get(fp)
        if was is not None and was[0] != self.used:
            raise Mismatch("memory_used %d, but %d at step %d in the same stored state" % (
                self.used, was[0], was[1]))
        self.memory_of[fp] = (self.used, self.step)
        if self.max_memory:
            expect(self.used <= self.max_memory, "memory_used %d is past --max-memory %d" % (
                self.used, self.max_memory))
        # Nothing unexpected arrived on any connection (a parked one included).
        for mc in self.conns:
            extra = mc.conn.quiet()
            expect(extra is None and not mc.conn.eof,
                   "%r received %r (eof %r), expected nothing" % (mc, extra, mc.conn.eof))

    # -- restarts

    def restart(self, how):
        m = self.m
        if how == "clean":
            for mc in list(self.conns):
                mc.conn.close()
                self.disconnect(mc)
            self.wait_clients()
            m.collect(self.conns)
            self.check_state()
            before = self.used
        else:
            before = None
        self.obs.close()
        self.broker.stop(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        for mc in list(self.conns):
            mc.conn.close()
            mc.alive = False
            mc.parked = None
            mc.backlog = []
        self.conns = []
        m.restart()
        self.broker.start()
        self.obs = Conn(self.broker.sock)
        for _ in range(self.nconns):
            self.connect()
        self.check_state()
        if before is not None:
            expect(self.used == before, "memory_used %d after a restart, %d before it" % (
                self.used, before))

    # -- the run

    def run(self, steps):
        self.broker.start()
        self.obs = Conn(self.broker.sock)
        self.nconns = self.rng.randint(3, 5)
        for _ in range(self.nconns):
            self.connect()
        ops = Ops(self)
        self.check_state()
        for self.step in range(1, steps + 1):
            desc = ops.random_step()
            self.m.collect(self.conns)
            self.trace.append("%d: %s" % (self.step, desc))
            if self.args.verbose:
                print(self.trace[-1])
            self.check_state()
        self.restart("clean")
        self.obs.close()
        for mc in self.conns:
            mc.conn.close()
        self.broker.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

# ------------------------------------------------------------------------------ reads


def _dict_items(o):
    return tuple((k, v) for k, v in o.state.items())


READS = {
    "list": ("list.copy", lambda o: tuple(o.state)),
    "dict": ("dict.items", _dict_items),
    "namespace": ("namespace.vars", lambda o: dict(o.state)),
    "queue": ("queue.qsize", lambda o: len(o.state["items"])),
    "joinablequeue": ("queue.qsize", lambda o: len(o.state["items"])),
    "lock": ("lock.locked", lambda o: o.state["owner"] is not None or o.state["orphan"]),
    "rlock": ("lock.locked", lambda o: o.state["owner"] is not None or o.state["orphan"]),
    "semaphore": ("semaphore.value", lambda o: o.state["value"]),
    "boundedsemaphore": ("semaphore.value", lambda o: o.state["value"]),
    "event": ("event.is_set", lambda o: o.state["flag"]),
    "set": ("set.copy", lambda o: tuple(o.state)),
    "barrier": ("barrier.n_waiting", lambda o: len(o.waiters)),
    "value": ("value.get", lambda o: o.state["v"]),
    "array": ("array.tolist", lambda o: tuple(o.state["items"])),
}

# ------------------------------------------------------------------------ operations

SMALL = [None, True, False, 0, 1, -1, 7, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, 1.5, 2.0,
         -0.25, "", "a", "b", "hello", b"", b"\x00\x01", (), (1, 2), ("a", (1,)), {},
         {"k": 1}, {"x": (1, 2), "y": None}]
KEYS = [0, 1, 2, 1.0, True, "a", "b", "k", b"a", (1, 2), (), None, 2 ** 64 - 1, "long" * 8]
ATTRS = ["a", "b", "c", "x", "y", "z"]


class Ops:
    def __init__(self, d):
        self.d, self.rng = d, d.rng
        self.table = []
        for name in dir(self):
            if name.startswith("op_") and name[3:] not in d.args.skip.split(","):
                fn = getattr(self, name)
                self.table.append((fn, getattr(fn, "weight", 1)))
        self.table.sort(key=lambda t: t[0].__name__)
        self.total = sum(w for _, w in self.table)

    # -- choosing

    def conn(self, parkable=False):
        """A connection that is not parked (and, to park it, one of several free)."""
        free = [c for c in self.d.conns if not c.parked]
        if parkable and len(free) < 2:
            return None
        return self.rng.choice(free) if free else None

    def obj(self, *types):
        c = [o for o in self.d.m.objs.values() if o.type in types]
        return self.rng.choice(c) if c else None

    def value(self, depth=0):
        r = self.rng.random()
        m = self.d.m
        if r < 0.15 and m.objs:
            return self.rng.choice(list(m.objs))
        if r < 0.17 and m.dead:
            return self.rng.choice(m.dead)
        if r < 0.55 or depth > 2:
            return self.rng.choice(SMALL)
        if r < 0.65:
            return "s" * self.rng.choice([10, 100, 1000, 3000])
        if r < 0.85:
            return tuple(self.value(depth + 1) for _ in range(self.rng.randint(0, 4)))
        d = {}
        for _ in range(self.rng.randint(0, 3)):
            d[self.rng.choice(KEYS)] = self.value(depth + 1)
        return d

    def key(self):
        r = self.rng.random()
        if r < 0.1 and self.d.m.objs:
            return self.rng.choice(list(self.d.m.objs))
        if r < 0.15:
            return {"un": "hashable"}
        if r < 0.2:
            return ({},)
        return self.rng.choice(KEYS)

    def random_step(self):
        while True:
            x = self.rng.random() * self.total
            for fn, w in self.table:
                x -= w
                if x < 0:
                    break
            self.d.current = fn.__name__
            desc = fn()
            if desc:
                return desc

    # -- doing: one request, its expected reply, the model's change if it succeeds

    def bad_refs(self, *values):
        dead = [r for r in refs_in(values, []) if not self.d.m.live(r)]
        return bool(dead)

    def call(self, mc, method, params, err=None, res=None, commit=None, cost=0, check=None,
             alt=()):
        """Send method on mc and compare its reply. cost > 0 marks a write that may be
        refused with OutOfMemory when the memory counter is near the limit; alt lists
        errors the documentation also allows (the call then changes nothing)."""
        d = self.d
        d.current = "%r %s%r" % (mc, method, tuple(params))
        if self.bad_refs(*params) and "NoSuchObject" not in alt:
            # a reference to a freed object, as the target or inside a value
            err = ("NoSuchObject",) + ((err if isinstance(err, tuple) else (err,)) if err
                                       else ())
            commit = None
        msgid = mc.conn.request(method, params)
        got_err, got_res = mc.conn.reply(msgid)
        if err is not None and not cost:
            # a call that fails anyway may be refused for its size first: a write's
            # values are counted before they are checked
            cost = sum(upper_cost(x) for x in params[1:]) + 64
        if (got_err is not None and got_err[0] == "OutOfMemory" and
                cost and d.max_memory and d.used + cost > d.max_memory):
            d.stats["oom"] = d.stats.get("oom", 0) + 1
            return "%r %s%r -> OutOfMemory" % (mc, method, tuple(params))
        if got_err is not None and got_err[0] in alt:
            return "%r %s%r -> %s (allowed)" % (mc, method, tuple(params), got_err[0])
        d.compare(mc, msgid, err, res, got_err, got_res, check)
        if err is None and commit:
            commit()
        d.m.collect(d.conns)
        return "%r %s%r -> %s" % (mc, method, tuple(params),
                                  got_err[0] if got_err else repr(got_res)[:60])

    # ---------------------------------------------------------------- manager.*

    def op_create(self):
        mc = self.conn()
        if not mc:
            return None
        typ, initial = self.new_object()
        return self.create(mc, "manager.create", [typ] + ([initial] if initial is not None
                                                         else []), typ, None, initial)
    op_create.weight = 4

    def op_open(self):
        mc = self.conn()
        if not mc:
            return None
        m = self.d.m
        name = self.rng.choice(["n%d" % i for i in range(8)])
        if name in m.names and self.rng.random() < 0.8:
            o = m.objs[m.names[name]]
            typ = o.type if self.rng.random() < 0.9 else self.rng.choice(["list", "dict"])
            if typ != o.type:
                return self.call(mc, "manager.open", [typ, name], err="TypeError")

            def commit():
                mc.holds[o.ref] = mc.holds.get(o.ref, 0) + 1
            return self.call(mc, "manager.open", [typ, name], res=o.ref, commit=commit)
        if name in m.names:
            return None
        typ, initial = self.new_object()
        return self.create(mc, "manager.open", [typ, name] + (
            [initial] if initial is not None else []), typ, name, initial)
    op_open.weight = 2

    def new_object(self):
        typ = self.rng.choice(self.d.types)
        return typ, INITIAL[typ](self)

    def create(self, mc, method, params, typ, name, initial):
        d, m = self.d, self.d.m
        try:
            state = STATE[typ](initial, m)
        except ModelError as e:
            return self.call(mc, method, params, err=e.kind)
        cost = 600 + (upper_cost(initial) * 2 if initial is not None else 0)
        box = []

        def check(ref):
            expect(isinstance(ref, Ref), "%s returned %r" % (method, ref))
            expect(ref.id not in m.seen, "%s returned %r, an id handed out before" % (method, ref))
            box.append(ref)

        def commit():
            ref = box[0]
            m.seen.add(ref.id)
            if typ == "condition" and state["lock"] is None:
                err, lk = d.obs.call("condition.lock", ref)
                expect(err is None and isinstance(lk, Ref) and lk.id not in m.seen,
                       "condition.lock of a new condition: %r %r" % (err, lk))
                m.seen.add(lk.id)
                m.objs[lk] = MObj(lk, "rlock", None, _state_lock(None, m))
                state["lock"] = lk
            m.objs[ref] = MObj(ref, typ, name, state)
            if name is not None:
                m.names[name] = ref
            mc.holds[ref] = mc.holds.get(ref, 0) + 1
        return self.call(mc, method, params, cost=cost, check=check, commit=commit)

    def op_incref(self):
        mc = self.conn()
        if not mc:
            return None
        m = self.d.m
        if self.rng.random() < 0.1 and m.dead:
            return self.call(mc, "manager.incref", [self.rng.choice(m.dead)], err="NoSuchObject")
        if not m.objs:
            return None
        ref = self.rng.choice(list(m.objs))

        def commit():
            mc.holds[ref] = mc.holds.get(ref, 0) + 1
        return self.call(mc, "manager.incref", [ref], res=ref, commit=commit)
    op_incref.weight = 2

    def op_release(self):
        mc = self.conn()
        if not mc:
            return None
        if mc.holds and self.rng.random() < 0.85:
            ref = self.rng.choice(list(mc.holds))

            def commit():
                mc.holds[ref] -= 1
                if not mc.holds[ref]:
                    del mc.holds[ref]
            return self.call(mc, "manager.release", [ref], commit=commit)
        m = self.d.m
        others = [r for r in m.objs if r not in mc.holds]
        if others:
            return self.call(mc, "manager.release", [self.rng.choice(others)], err="ValueError")
        return None
    op_release.weight = 3

    def op_delete(self):
        mc = self.conn()
        m = self.d.m
        if not mc or not m.names:
            return None
        name = self.rng.choice(list(m.names) + ["nobody"])
        if name not in m.names:
            return self.call(mc, "manager.delete", [name], err="NoSuchObject")

        def commit():
            ref = m.names.pop(name)
            m.objs[ref].name = None
        return self.call(mc, "manager.delete", [name], commit=commit)

    def op_lookup(self):
        mc = self.conn()
        m = self.d.m
        if not mc:
            return None
        name = self.rng.choice(list(m.names) + ["nobody"])
        if name not in m.names:
            return self.call(mc, "manager.lookup", [name], err="NoSuchObject")
        return self.call(mc, "manager.lookup", [name], res=m.names[name])
    op_lookup.weight = 0.5

    def op_reconnect(self):
        """A connection closes (maybe parked, maybe holding) and a new one takes its place."""
        d = self.d
        if not d.conns:
            return None
        mc = self.rng.choice(d.conns)
        mc.conn.close()
        d.disconnect(mc)
        d.wait_clients()
        d.m.collect(d.conns)
        d.connect()
        return "%r closed (parked: %r)" % (mc, mc.parked)
    op_reconnect.weight = 1

    def op_restart(self):
        how = self.rng.choice(["clean", "term", "kill"])
        self.d.current = "restart (%s)" % how
        self.d.restart(how)
        return "restart (%s)" % how
    op_restart.weight = 0.3

    # ---------------------------------------------------------------- blocking calls

    def mode(self, mc, can_notify=True):
        """How a call that may wait is made: at once (nowait), with a short timeout, or
        parked without one (as a request or a notification)."""
        free = [c for c in self.d.conns if not c.parked]
        modes = ["nowait", "nowait", "short"]
        if len(free) >= 2:
            modes += ["park", "park"] + (["notify"] if can_notify and "notify" not in
                                         self.d.args.skip.split(",") else [])
        return self.rng.choice(modes)

    def blocking(self, mc, method, params, o, mode, now, kind, extra=None, timed_out=None,
                 cost=0, pin=None):
        """A call that may wait. now: None when it has to wait, else (err, res, commit)
        for at once. timed_out: the (err, res) of a wait that ends unanswered."""
        d = self.d
        if mode == "notify":
            d.current = "%r notify %s%r" % (mc, method, tuple(params))
            if now is not None and now[0] is not None:
                return None      # a notification that fails: nothing to see
            mc.conn.notify(method, params)
            if now is not None:
                if now[2]:
                    now[2]()
                self.ping(mc)
                d.m.collect(d.conns)
                return "%r notify %s%r -> done" % (mc, method, tuple(params))
            d.park(mc, o, kind, None, extra, pin)
            return "%r notify %s%r -> parked" % (mc, method, tuple(params))
        if now is not None:
            err, res, commit = now
            return self.call(mc, method, params, err=err, res=res, commit=commit, cost=cost)
        if mode in ("nowait", "short"):
            err, res = timed_out
            return self.call(mc, method, params, err=err, res=res, cost=cost)
        d.current = "%r %s%r" % (mc, method, tuple(params))
        msgid = mc.conn.request(method, params)
        d.park(mc, o, kind, msgid, extra, pin)
        return "%r %s%r -> parked" % (mc, method, tuple(params))

    def ping(self, mc):
        err, res = mc.conn.call("manager.ping", "sync")
        expect(err is None and res == "sync", "%r ping after a notification: %r %r" % (
            mc, err, res))

    def timing(self, mode, pos_block):
        """BLOCK/TIMEOUT arguments for a mode (pos_block: the call has a BLOCK flag)."""
        if mode == "nowait":
            return ([False] if pos_block and self.rng.random() < 0.7 else
                    ([True, 0] if pos_block else [0]))
        if mode == "short":
            return ([True] if pos_block else []) + [self.rng.choice([0.01, 0.03])]
        return [] if self.rng.random() < 0.5 else ([True, None] if pos_block else [None])

    # queue

    def op_queue_put(self):
        mc, o = self.conn(), self.obj("queue", "joinablequeue")
        if not mc or not o:
            return None
        d, s = self.d, o.state
        item = self.rng.choice(SMALL) if self.rng.random() < 0.8 else (
            self.rng.choice(list(d.m.objs)) if d.m.objs else 1)
        if d.max_memory and d.used + 4000 > d.max_memory:
            return None
        mode = self.mode(mc)
        nowait = self.rng.random() < 0.2
        if nowait:
            mode = "nowait"
            method, params = "queue.put_nowait", [o.ref, item]
        else:
            method, params = "queue.put", [o.ref, item] + self.timing(mode, True)
        getters = [w for w in o.waiters if w.parked[0] == "qget"]
        full = s["maxsize"] and len(s["items"]) >= s["maxsize"]
        if self.bad_refs(item):
            return self.call(mc, method, params, err="NoSuchObject")
        if getters:
            def commit():
                s["unfinished"] += 1
                d.wake(getters[0], None, item)
            now = (None, None, commit)
        elif not full:
            def commit():
                s["items"].append(item)
                s["unfinished"] += 1
            now = (None, None, commit)
        else:
            now = None
        return self.blocking(mc, method, params, o, mode, now, "qput", item, ("Full", None),
                             cost=upper_cost(item))
    op_queue_put.weight = 3

    def q_admit(self, o):
        """Room in a bounded queue: the oldest parked put goes in."""
        s = o.state
        while not s["maxsize"] or len(s["items"]) < s["maxsize"]:
            putters = [w for w in o.waiters if w.parked[0] == "qput"]
            if not putters:
                return
            w = putters[0]
            s["items"].append(w.parked[3])
            s["unfinished"] += 1
            self.d.wake(w, None, None)

    def op_queue_get(self):
        mc, o = self.conn(), self.obj("queue", "joinablequeue")
        if not mc or not o:
            return None
        s = o.state
        mode = self.mode(mc, can_notify=False)
        if self.rng.random() < 0.2:
            mode = "nowait"
            method, params = "queue.get_nowait", [o.ref]
        else:
            method, params = "queue.get", [o.ref] + self.timing(mode, True)
        if s["items"]:
            item = s["items"][0]

            def commit():
                s["items"].pop(0)
                self.q_admit(o)
            now = (None, item, commit)
        else:
            now = None
        return self.blocking(mc, method, params, o, mode, now, "qget", None, ("Empty", None))
    op_queue_get.weight = 3

    def op_queue_get_notification(self):
        """queue.get as a notification is ignored (PROTOCOL.md, Messages)."""
        mc, o = self.conn(), self.obj("queue", "joinablequeue")
        if not mc or not o:
            return None
        mc.conn.notify("queue.get", [o.ref])
        self.ping(mc)
        return "%r notify queue.get(%r) -> ignored" % (mc, o.ref)
    op_queue_get_notification.weight = 0.5

    def op_queue_misc(self):
        mc, o = self.conn(), self.obj("queue", "joinablequeue")
        if not mc or not o:
            return None
        s = o.state
        what = self.rng.choice(["task_done", "task_done", "join", "empty", "full"])
        if what == "empty":
            return self.call(mc, "queue.empty", [o.ref], res=not s["items"])
        if what == "full":
            return self.call(mc, "queue.full", [o.ref],
                             res=bool(s["maxsize"]) and len(s["items"]) >= s["maxsize"])
        if what == "task_done":
            if not s["joinable"]:
                return self.call(mc, "queue.task_done", [o.ref], err="AttributeError")
            if not s["unfinished"]:
                return self.call(mc, "queue.task_done", [o.ref], err="ValueError")

            def commit():
                s["unfinished"] -= 1
                if not s["unfinished"]:
                    for w in [w for w in o.waiters if w.parked[0] == "qjoin"]:
                        self.d.wake(w, None, True)
            return self.call(mc, "queue.task_done", [o.ref], commit=commit)
        if not s["joinable"]:
            return self.call(mc, "queue.join", [o.ref, 0], err="AttributeError")
        mode = self.mode(mc)
        params = [o.ref] + self.timing(mode, False)
        now = (None, True, None) if not s["unfinished"] else None
        return self.blocking(mc, "queue.join", params, o, mode, now, "qjoin", None, (None, False))

    # lock, rlock

    def op_lock_acquire(self):
        mc, o = self.conn(), self.obj("lock", "rlock")
        if not mc or not o:
            return None
        s = o.state
        mode = self.mode(mc)
        params = [o.ref] + self.timing(mode, True)
        if self.rng.random() < 0.05:
            return self.call(mc, "lock.acquire", [o.ref, False, 1], err="ValueError")
        reenter = s["owner"] is mc and o.type == "rlock"
        free = (s["owner"] is None or s["orphan"]) and not o.waiters
        if reenter or free:
            def commit():
                if reenter:
                    s["count"] += 1
                else:
                    s["owner"], s["count"], s["orphan"] = mc, 1, False
            now = (None, True, commit)
        elif s["owner"] is mc and mode in ("park", "notify"):
            if mode == "notify":
                return None
            return self.call(mc, "lock.acquire", params, err="RuntimeError")
        else:
            now = None
        return self.blocking(mc, "lock.acquire", params, o, mode, now, "lock", None, (None, False))
    op_lock_acquire.weight = 3

    def op_lock_release(self):
        mc, o = self.conn(), self.obj("lock", "rlock")
        if not mc or not o:
            return None
        s = o.state
        if s["owner"] is None and not s["orphan"]:
            return self.call(mc, "lock.release", [o.ref], err="RuntimeError")
        if s["orphan"]:
            def commit():
                s["orphan"] = False
                self.d.lock_handoff(o)
            return self.call(mc, "lock.release", [o.ref], commit=commit)
        if s["owner"] is not mc:
            owner = s["owner"]
            if not owner.parked and self.rng.random() < 0.7:
                mc = owner     # mostly, the owner releases it
            else:
                return self.call(mc, "lock.release", [o.ref], err="RuntimeError")

        def commit():
            s["count"] -= 1
            if not s["count"]:
                s["owner"] = None
                self.d.lock_handoff(o)
        return self.call(mc, "lock.release", [o.ref], commit=commit)
    op_lock_release.weight = 3

    # semaphore, boundedsemaphore

    def op_sem_acquire(self):
        mc, o = self.conn(), self.obj("semaphore", "boundedsemaphore")
        if not mc or not o:
            return None
        s = o.state
        mode = self.mode(mc)
        params = [o.ref] + self.timing(mode, True)
        if s["value"] > 0 and not o.waiters:
            def commit():
                s["value"] -= 1
                s["units"][mc] = s["units"].get(mc, 0) + 1
            now = (None, True, commit)
        elif s["orphans"] > 0:
            def commit():
                s["orphans"] -= 1
                s["units"][mc] = s["units"].get(mc, 0) + 1
            now = (None, True, commit)
        else:
            now = None
        return self.blocking(mc, "semaphore.acquire", params, o, mode, now, "sem", None,
                             (None, False))
    op_sem_acquire.weight = 3

    def op_sem_release(self):
        mc, o = self.conn(), self.obj("semaphore", "boundedsemaphore")
        if not mc or not o:
            return None
        s = o.state
        holders = [c for c in s["units"] if not c.parked]
        if holders and self.rng.random() < 0.7:
            mc = self.rng.choice(holders)
        own = s["units"].get(mc, 0)
        others = sum(n for c, n in s["units"].items() if c is not mc)
        n = self.rng.choice([1, 1, 1, 2, 0])
        args = [o.ref] if n == 1 and self.rng.random() < 0.5 else [o.ref, n]
        if n < 1:
            return self.call(mc, "semaphore.release", args, err="ValueError")
        if n > own + s["orphans"] and others:
            return None   # charged to some other connection's units: not modelled
        if s["bounded"] and s["value"] + n > s["initial"]:
            return self.call(mc, "semaphore.release", args, err="ValueError")

        def commit():
            k = min(n, own)
            if k:
                s["units"][mc] -= k
                if not s["units"][mc]:
                    del s["units"][mc]
            s["orphans"] -= min(n - k, s["orphans"])
            s["value"] += n
            self.d.sem_handoff(o)
        return self.call(mc, "semaphore.release", args, commit=commit)
    op_sem_release.weight = 3

    # event

    def op_event(self):
        mc, o = self.conn(), self.obj("event")
        if not mc or not o:
            return None
        s = o.state
        what = self.rng.choice(["set", "clear", "wait", "wait", "wait"])
        if what == "set":
            def commit():
                s["flag"] = True
                for w in list(o.waiters):
                    self.d.wake(w, None, True)
            return self.call(mc, "event.set", [o.ref], commit=commit)
        if what == "clear":
            return self.call(mc, "event.clear", [o.ref], commit=lambda: s.update(flag=False))
        mode = self.mode(mc)
        params = [o.ref] + self.timing(mode, False)
        now = (None, True, None) if s["flag"] else None
        return self.blocking(mc, "event.wait", params, o, mode, now, "ewait", None, (None, False))
    op_event.weight = 3

    # set

    def other(self):
        """An OTHER operand of the set methods: an array, or a set/list/dict REF."""
        m = self.d.m
        refs = [o for o in m.objs.values() if o.type in ("set", "list", "dict")]
        if refs and self.rng.random() < 0.4:
            o = self.rng.choice(refs)
            if o.type == "list":
                items = list(o.state)
            else:
                items = list(o.state)
            return o.ref, items
        items = tuple(self.rng.choice(KEYS + [self.value()]) for _ in range(self.rng.randint(0, 3)))
        return items, list(items)

    def op_set(self):
        mc, o = self.conn(), self.obj("set")
        if not mc or not o:
            return None
        s = o.state
        what = self.rng.choice(["add", "add", "discard", "remove", "pop", "contains", "clear",
                                "update", "update", "difference_update",
                                "intersection_update", "union", "issubset", "issuperset",
                                "isdisjoint", "intersection", "difference",
                                "symmetric_difference", "symmetric_difference_update"])
        if what in ("add", "discard", "remove", "contains"):
            e = self.rng.choice(list(s)) if s and self.rng.random() < 0.5 else (
                self.rng.choice(KEYS) if self.rng.random() < 0.7 else self.value())
            if not hashable(e):
                return self.call(mc, "set." + what, [o.ref, e], err="TypeError")
            if what == "add":
                def commit():
                    s.setdefault(e, None)
                return self.store(mc, o, "set.add", [o.ref, e], [e], commit=commit)
            if what == "contains":
                return self.call(mc, "set.contains", [o.ref, e], res=e in s)
            if what == "remove" and e not in s:
                return self.call(mc, "set.remove", [o.ref, e], err="KeyError")
            return self.call(mc, "set." + what, [o.ref, e], commit=lambda: s.pop(e, None))
        if what == "pop":
            if not s:
                return self.call(mc, "set.pop", [o.ref], err="KeyError")
            e = list(s)[-1]
            return self.call(mc, "set.pop", [o.ref], res=e, commit=lambda: s.pop(e))
        if what == "clear":
            return self.call(mc, "set.clear", [o.ref], commit=s.clear)
        arg, items = self.other()
        if not all(hashable(x) for x in items):
            return self.call(mc, "set." + what, [o.ref, arg], err="TypeError")
        if what == "update":
            def commit():
                for x in items:
                    s.setdefault(x, None)
            return self.store(mc, o, "set.update", [o.ref, arg], items + [arg], commit=commit)
        if what == "difference_update":
            def commit():
                for x in items:
                    s.pop(x, None)
            return self.call(mc, "set.difference_update", [o.ref, arg], commit=commit)
        if what == "intersection_update":
            keep = [x for x in s if x in items]

            def commit():
                for x in list(s):
                    if x not in keep:
                        del s[x]
            return self.call(mc, "set.intersection_update", [o.ref, arg], commit=commit)
        other = dict.fromkeys(items)
        if what == "union":
            res = dict(s)
            for x in items:
                res.setdefault(x, None)
            return self.call(mc, "set.union", [o.ref, arg], res=tuple(res))
        if what == "intersection":
            return self.call(mc, "set.intersection", [o.ref, arg],
                             res=tuple(x for x in s if x in other))
        if what == "difference":
            return self.call(mc, "set.difference", [o.ref, arg],
                             res=tuple(x for x in s if x not in other))
        sym = [x for x in s if x not in other] + [x for x in other if x not in s]
        if what == "symmetric_difference":
            return self.call(mc, "set.symmetric_difference", [o.ref, arg], res=tuple(sym))
        if what == "symmetric_difference_update":
            def commit():
                for x in other:
                    if x in s:
                        del s[x]
                    else:
                        s[x] = None
            return self.store(mc, o, "set.symmetric_difference_update", [o.ref, arg],
                              list(other) + [arg], commit=commit)
        if what == "issuperset":
            return self.call(mc, "set.issuperset", [o.ref, arg], res=all(x in s for x in other))
        if what == "isdisjoint":
            return self.call(mc, "set.isdisjoint", [o.ref, arg], res=not any(x in s for x in other))
        return self.call(mc, "set.issubset", [o.ref, arg], res=all(x in other for x in s))
    op_set.weight = 4

    # value, array

    def op_value(self):
        mc, o = self.conn(), self.obj("value")
        if not mc or not o:
            return None
        s = o.state
        tc = s["tc"]
        what = self.rng.choice(["get", "set", "set", "incr"])
        if what == "get":
            return self.call(mc, "value.get", [o.ref], res=s["v"])
        if what == "set":
            v = self.rng.choice(TC_SAMPLES[tc] + TC_SAMPLES["bad"])
            err = tc_check(tc, v)

            def commit():
                s["v"] = tc_store(tc, v)
            # the check is on what a write brings, not its net change (PROTOCOL.md,
            # Limits): a value.set near the limit may be refused
            return self.call(mc, "value.set", [o.ref, v], err=err, commit=commit,
                             cost=upper_cost(v))
        delta = self.rng.choice([None, 1, -1, 100, 2 ** 40])
        args = [o.ref] + ([delta] if delta is not None else [])
        new = s["v"] + (1 if delta is None else delta)
        err = tc_check(tc, new)
        if err is None:
            new = tc_store(tc, new)

        def commit():
            s["v"] = new
        return self.call(mc, "value.incr", args, res=new, err=err, commit=commit,
                         cost=upper_cost(delta))
    op_value.weight = 2

    def op_array(self):
        mc, o = self.conn(), self.obj("array")
        if not mc or not o:
            return None
        s = o.state
        tc, items = s["tc"], s["items"]
        n = len(items)
        what = self.rng.choice(["get", "getslice", "set", "setslice", "len"])
        if what == "len":
            return self.call(mc, "array.len", [o.ref], res=n)
        if what in ("get", "set"):
            i = self.rng.randint(-n - 1, n)
            ok = -n <= i < n
            if what == "get":
                return self.call(mc, "array.getitem", [o.ref, i], res=items[i] if ok else None,
                                 err=None if ok else "IndexError")
            v = self.rng.choice(TC_SAMPLES[tc] + TC_SAMPLES["bad"])
            err = tc_check(tc, v) or (None if ok else "IndexError")

            def commit():
                items[i] = tc_store(tc, v)
            return self.call(mc, "array.setitem", [o.ref, i, v], err=err, commit=commit,
                             alt=("IndexError", "TypeError", "OverflowError"),
                             cost=upper_cost(v))
        start, stop, step = self.slice(n)
        if what == "getslice":
            if step == 0:
                return self.call(mc, "array.getitem", [o.ref, start, stop, step], err="ValueError")
            return self.call(mc, "array.getitem", [o.ref, start, stop, step],
                             res=tuple(items[slice(start, stop, step)]))
        k = len(range(n)[slice(start, stop, step if step != 0 else 1)])
        vals = tuple(self.rng.choice(TC_SAMPLES[tc]) for _ in range(k + self.rng.choice([0, 0, 0, 1, -1])))
        err = None
        if step == 0 or len(vals) != k:
            err = "ValueError"
        if err is None and any(tc_check(tc, v) for v in vals):
            err = "TypeError"

        def commit():
            items[slice(start, stop, step)] = [tc_store(tc, v) for v in vals]
        return self.call(mc, "array.setitem", [o.ref, start, stop, step, vals], err=err,
                         commit=commit, alt=("TypeError", "OverflowError", "ValueError"),
                         cost=upper_cost(vals))
    op_array.weight = 2

    # condition: its lock is a lock/rlock object of the model; a waiter notified (or
    # timed out) waits for that lock as "creacq", with the depth it gave up

    def cond_lock(self, o):
        return self.d.m.objs[o.state["lock"]]

    def op_cond_acquire(self):
        mc, o = self.conn(), self.obj("condition")
        if not mc or not o:
            return None
        lk = self.cond_lock(o)
        s = lk.state
        mode = self.mode(mc)
        params = [o.ref] + self.timing(mode, True)
        reenter = s["owner"] is mc and lk.type == "rlock"
        free = (s["owner"] is None or s["orphan"]) and not lk.waiters
        if reenter or free:
            def commit():
                if reenter:
                    s["count"] += 1
                else:
                    s["owner"], s["count"], s["orphan"] = mc, 1, False
            now = (None, True, commit)
        elif s["owner"] is mc:
            if mode in ("park", "notify"):
                return None if mode == "notify" else self.call(
                    mc, "condition.acquire", params, err="RuntimeError")
            now = None
        else:
            now = None
        return self.blocking(mc, "condition.acquire", params, lk, mode, now, "lock", None,
                             (None, False), pin=o)
    op_cond_acquire.weight = 2

    def op_cond_release(self):
        mc, o = self.conn(), self.obj("condition")
        if not mc or not o:
            return None
        lk = self.cond_lock(o)
        s = lk.state
        owner = s["owner"]
        if owner is not None and owner is not mc and not owner.parked and self.rng.random() < 0.7:
            mc = owner
        if s["orphan"]:
            def commit():
                s["orphan"] = False
                self.d.lock_handoff(lk)
            return self.call(mc, "condition.release", [o.ref], commit=commit)
        if s["owner"] is not mc:
            return self.call(mc, "condition.release", [o.ref], err="RuntimeError")

        def commit():
            s["count"] -= 1
            if not s["count"]:
                s["owner"] = None
                self.d.lock_handoff(lk)
        return self.call(mc, "condition.release", [o.ref], commit=commit)
    op_cond_release.weight = 2

    def op_cond_wait(self):
        d = self.d
        mc, o = self.conn(), self.obj("condition")
        if not mc or not o:
            return None
        lk = self.cond_lock(o)
        s = lk.state
        owner = s["owner"]
        if owner is not None and owner is not mc and not owner.parked and self.rng.random() < 0.8:
            mc = owner
        if s["owner"] is not mc:
            return self.call(mc, "condition.wait", [o.ref], err="RuntimeError")
        free = [c for c in d.conns if not c.parked]
        if len(free) >= 2 and self.rng.random() < 0.7:
            msgid = mc.conn.request("condition.wait", [o.ref])
            d.current = "%r condition.wait(%r)" % (mc, o.ref)
            depth = s["count"]
            s["owner"], s["count"] = None, 0
            d.park(mc, o, "cwait", msgid, depth)
            d.lock_handoff(lk)
            return d.current + " -> parked"
        if lk.waiters:
            return None   # a timed-out waiter would wait for the lock behind them
        msgid = mc.conn.request("condition.wait", [o.ref, 0.02])
        d.current = "%r condition.wait(%r, 0.02)" % (mc, o.ref)
        d.answer(mc, msgid, None, False)   # gave the lock up, timed out, took it back
        return d.current + " -> False"
    op_cond_wait.weight = 2

    def op_cond_notify(self):
        d = self.d
        mc, o = self.conn(), self.obj("condition")
        if not mc or not o:
            return None
        lk = self.cond_lock(o)
        s = lk.state
        owner = s["owner"]
        if owner is not None and owner is not mc and not owner.parked and self.rng.random() < 0.8:
            mc = owner
        n = self.rng.choice([None, 1, 2, "all"])
        method = "condition.notify_all" if n == "all" else "condition.notify"
        params = [o.ref] + ([n] if isinstance(n, int) else [])
        if s["owner"] is not mc:
            return self.call(mc, method, params, err="RuntimeError")

        def commit():
            waiting = [w for w in o.waiters if w.parked[0] == "cwait"]
            k = len(waiting) if n == "all" else (n or 1)
            for w in waiting[:k]:
                kind, _, msgid, depth = d.unpark(w)
                d.park(w, lk, "creacq", msgid, depth, pin=o)
        return self.call(mc, method, params, commit=commit)
    op_cond_notify.weight = 2

    # barrier

    def op_barrier(self):
        mc, o = self.conn(), self.obj("barrier")
        if not mc or not o:
            return None
        s, d = o.state, self.d
        what = self.rng.choice(["wait", "wait", "wait", "reset", "abort", "broken", "parties"])
        if what == "broken":
            return self.call(mc, "barrier.broken", [o.ref], res=s["broken"])
        if what == "parties":
            return self.call(mc, "barrier.parties", [o.ref], res=s["parties"])
        if what in ("reset", "abort"):
            def commit():
                s["broken"] = what == "abort"
                for w in list(o.waiters):
                    d.wake(w, "BrokenBarrierError", None)
            return self.call(mc, "barrier." + what, [o.ref], commit=commit)
        mode = self.mode(mc)
        if mode == "nowait":
            mode = "short"
        params = [o.ref] + ([self.rng.choice([0.01, 0.03])] if mode == "short" else [])
        if s["broken"]:
            if mode == "notify":
                return None
            return self.call(mc, "barrier.wait", params, err="BrokenBarrierError")
        if len(o.waiters) + 1 == s["parties"]:
            index = len(o.waiters)

            def commit():
                for i, w in enumerate(list(o.waiters)):
                    d.wake(w, None, i)
            return self.blocking(mc, "barrier.wait", params, o, mode, (None, index, commit),
                                 "bwait")
        if mode == "short":
            # the wait times out: the barrier breaks, for every waiter
            msgid = mc.conn.request("barrier.wait", params)
            d.current = "%r barrier.wait%r" % (mc, tuple(params))
            s["broken"] = True
            for w in list(o.waiters):
                d.wake(w, "BrokenBarrierError", None)
            d.answer(mc, msgid, "BrokenBarrierError", None)
            return d.current + " -> BrokenBarrierError (timed out)"
        return self.blocking(mc, "barrier.wait", params, o, mode, None, "bwait")
    op_barrier.weight = 3

    # on parked connections: requests behind the parked one

    def op_behind_park(self):
        """A parked connection sends more: it waits behind the parked request."""
        parked = [c for c in self.d.conns if c.parked]
        if not parked:
            return None
        mc = self.rng.choice(parked)
        d = self.d
        lists = [o for o in d.m.objs.values() if o.type == "list"]
        if lists and self.rng.random() < 0.5:
            ref = self.rng.choice(lists).ref
            msgid = mc.conn.request("list.len", [ref])

            def run(mc, msgid):
                o = d.m.objs.get(ref)
                if o is None:
                    d.answer(mc, msgid, "NoSuchObject", None)
                else:
                    d.answer(mc, msgid, None, len(o.state))
            mc.backlog.append((msgid, run))
            return "%r list.len(%r) behind its park" % (mc, ref)
        payload = self.rng.randrange(1000)
        msgid = mc.conn.request("manager.ping", [payload])
        mc.backlog.append((msgid, lambda mc, msgid: d.answer(mc, msgid, None, payload)))
        return "%r manager.ping(%d) behind its park" % (mc, payload)

    def op_half_close(self):
        """A batch, then shutdown(SHUT_WR): every request answered, then the close."""
        d = self.d
        mc = self.conn(parkable=True)
        o = self.obj("list")
        if not mc or not o or (d.max_memory and d.used + 1000 > d.max_memory):
            return None
        ev = self.obj("event")
        batch = [("list.append", [o.ref, 1], None, None)]
        if ev is not None:
            batch.append(("event.wait", [ev.ref, 0.02], None, ev.state["flag"]))
        batch += [("list.append", [o.ref, 2], None, None), ("list.len", [o.ref], None, None)]
        ids = [mc.conn.request(m, p) for m, p, _, _ in batch]
        mc.conn.s.shutdown(socket.SHUT_WR)
        d.current = "%r half-closes after %s" % (mc, [m for m, _, _, _ in batch])
        for msgid, (m, p, err, res) in zip(ids, batch):
            if m == "list.append":
                d.answer(mc, msgid, None, None)
                o.state.append(p[1])
            elif m == "list.len":
                d.answer(mc, msgid, None, len(o.state))
            else:
                d.answer(mc, msgid, None, res)
        extra = mc.conn.recv(10)
        expect(extra is None and mc.conn.eof, "%r after its half-close: %r, eof %r" % (
            mc, extra, mc.conn.eof))
        mc.conn.close()
        d.disconnect(mc)
        d.wait_clients()
        d.m.collect(d.conns)
        d.connect()
        return d.current
    op_half_close.weight = 0.5

    # ---------------------------------------------------------------- list

    def lst(self):
        mc = self.conn()
        o = self.obj("list")
        return (mc, o) if mc and o else (None, None)

    def store(self, mc, o, method, params, new_values, err=None, res=None, commit=None):
        """A write that stores new_values: NoSuchObject if one refers to a dead object."""
        cost = sum(upper_cost(v) for v in new_values) + 64
        return self.call(mc, method, params, err=err, res=res, commit=commit, cost=cost)

    def op_list_append(self):
        mc, o = self.lst()
        if not mc:
            return None
        v = self.value()
        return self.store(mc, o, "list.append", [o.ref, v], [v],
                          commit=lambda: o.state.append(v))
    op_list_append.weight = 4

    def op_list_extend(self):
        mc, o = self.lst()
        if not mc:
            return None
        vs = tuple(self.value() for _ in range(self.rng.randint(0, 4)))
        return self.store(mc, o, "list.extend", [o.ref, vs], list(vs),
                          commit=lambda: o.state.extend(vs))
    op_list_extend.weight = 2

    def op_list_insert(self):
        mc, o = self.lst()
        if not mc:
            return None
        v = self.value()
        i = self.rng.randint(-len(o.state) - 2, len(o.state) + 2)
        return self.store(mc, o, "list.insert", [o.ref, i, v], [v],
                          commit=lambda: o.state.insert(i, v))

    def op_list_setitem(self):
        mc, o = self.lst()
        if not mc:
            return None
        s = o.state
        n = len(s)
        if self.rng.random() < 0.5:
            i = self.rng.randint(-n - 1, n)
            v = self.value() if self.rng.random() < 0.6 or not n else self.rng.choice(s)
            if -n <= i < n:
                def commit():
                    s[i] = v
                return self.store(mc, o, "list.setitem", [o.ref, i, v], [v], commit=commit)
            return self.store(mc, o, "list.setitem", [o.ref, i, v], [v], err="IndexError")
        # a slice, often a swap or a permutation of what is there (references included)
        start, stop, step = self.slice(n)
        idx = range(n)[slice(start, stop, step if step != 0 else 1)]
        if self.rng.random() < 0.6 and n:
            items = [s[j] for j in idx]
            self.rng.shuffle(items)
            items = tuple(items)
        else:
            items = tuple(self.value() for _ in range(self.rng.randint(0, 3)))
        err = None
        if step not in (None, 1) and len(items) != len(idx):
            err = "ValueError"
        if step == 0:
            err = "ValueError"

        def commit():
            s[slice(start, stop, step)] = list(items)
        return self.store(mc, o, "list.setitem", [o.ref, start, stop, step, items], list(items),
                          err=err, commit=commit)
    op_list_setitem.weight = 3

    def slice(self, n):
        pick = lambda: self.rng.choice([None, 0, 1, -1, 2, -2, n, n + 3, -n - 3, 2 ** 63 - 1,
                                        -2 ** 63])
        step = self.rng.choice([None, 1, 1, 2, -1, -2, 3, 0] +
                               [-2 ** 63, 2 ** 63 - 1])
        return pick(), pick(), step

    def op_list_getitem(self):
        mc, o = self.lst()
        if not mc:
            return None
        s, n = o.state, len(o.state)
        if self.rng.random() < 0.5:
            i = self.rng.randint(-n - 1, n)
            if -n <= i < n:
                return self.call(mc, "list.getitem", [o.ref, i], res=s[i])
            return self.call(mc, "list.getitem", [o.ref, i], err="IndexError")
        start, stop, step = self.slice(n)
        if step == 0:
            return self.call(mc, "list.getitem", [o.ref, start, stop, step], err="ValueError")
        return self.call(mc, "list.getitem", [o.ref, start, stop, step],
                         res=tuple(s[slice(start, stop, step)]))

    def op_list_delitem(self):
        mc, o = self.lst()
        if not mc:
            return None
        s, n = o.state, len(o.state)
        if self.rng.random() < 0.5:
            i = self.rng.randint(-n - 1, n)
            if -n <= i < n:
                def commit():
                    del s[i]
                return self.call(mc, "list.delitem", [o.ref, i], commit=commit)
            return self.call(mc, "list.delitem", [o.ref, i], err="IndexError")
        start, stop, step = self.slice(n)
        if step == 0:
            return self.call(mc, "list.delitem", [o.ref, start, stop, step], err="ValueError")

        def commit():
            del s[slice(start, stop, step)]
        return self.call(mc, "list.delitem", [o.ref, start, stop, step], commit=commit)

    def op_list_pop(self):
        mc, o = self.lst()
        if not mc:
            return None
        s, n = o.state, len(o.state)
        args = [] if self.rng.random() < 0.5 else [self.rng.randint(-n - 1, n)]
        i = args[0] if args else -1
        if not (-n <= i < n):
            return self.call(mc, "list.pop", [o.ref] + args, err="IndexError")
        return self.call(mc, "list.pop", [o.ref] + args, res=s[i], commit=lambda: s.pop(i))
    op_list_pop.weight = 2

    def op_list_search(self):
        mc, o = self.lst()
        if not mc:
            return None
        s = o.state
        v = self.rng.choice(s) if s and self.rng.random() < 0.6 else self.value()
        what = self.rng.choice(["remove", "index", "count", "contains"])
        if what == "count":
            return self.call(mc, "list.count", [o.ref, v], res=s.count(v))
        if what == "contains":
            return self.call(mc, "list.contains", [o.ref, v], res=v in s)
        if v not in s:
            return self.call(mc, "list." + what, [o.ref, v], err="ValueError")
        if what == "index":
            if self.rng.random() < 0.5:
                a = self.rng.choice([0, 1, -1, -3, 2 ** 63 - 1, -2 ** 63])
                b = self.rng.choice([None, 2, -1, len(s), 2 ** 63 - 1, -2 ** 63])
                args = [o.ref, v, a] + ([] if b is None and self.rng.random() < 0.5 else [b])
                try:
                    res = s.index(v, a, b if b is not None else len(s))
                except ValueError:
                    return self.call(mc, "list.index", args, err="ValueError")
                return self.call(mc, "list.index", args, res=res)
            return self.call(mc, "list.index", [o.ref, v], res=s.index(v))
        return self.call(mc, "list.remove", [o.ref, v], commit=lambda: s.remove(v))

    def op_list_misc(self):
        mc, o = self.lst()
        if not mc:
            return None
        s = o.state
        what = self.rng.choice(["reverse", "sort", "clear", "len", "slice"])
        if what == "reverse":
            return self.call(mc, "list.reverse", [o.ref], commit=s.reverse)
        if what == "clear":
            return self.call(mc, "list.clear", [o.ref], commit=s.clear)
        if what == "len":
            return self.call(mc, "list.len", [o.ref], res=len(s))
        if what == "slice":
            start = self.rng.randint(0, len(s) + 1)
            count = self.rng.choice([None, 1, 2, 5])
            items = s[start:start + count] if count else s[start:]
            nxt = start + len(items) if start + len(items) < len(s) else None
            return self.call(mc, "list.slice", [o.ref, start, count], res=(tuple(items), nxt))
        rev = self.rng.random() < 0.3
        try:
            keys = Py.sortable(s)
            order = sorted(range(len(s)), key=lambda j: keys[j], reverse=rev)
        except TypeError:
            return self.call(mc, "list.sort", [o.ref, rev], err="TypeError")

        def commit():
            s[:] = [s[j] for j in order]
        return self.call(mc, "list.sort", [o.ref, rev], commit=commit)

    # ---------------------------------------------------------------- dict, namespace

    def op_dict_setitem(self):
        mc, o = self.conn(), self.obj("dict")
        if not mc or not o:
            return None
        s = o.state
        k = self.key()
        v = self.value() if self.rng.random() < 0.7 or not s else self.rng.choice(list(s.values()))
        err = None if hashable(k) else "TypeError"

        def commit():
            s[k] = v
        return self.store(mc, o, "dict.setitem", [o.ref, k, v], [k, v], err=err, commit=commit)
    op_dict_setitem.weight = 4

    def op_dict_update(self):
        mc, o = self.conn(), self.obj("dict")
        if not mc or not o:
            return None
        s = o.state
        pairs = []
        for _ in range(self.rng.randint(0, 3)):
            k = self.rng.choice(list(s)) if s and self.rng.random() < 0.5 else self.key()
            v = self.rng.choice(list(s.values())) if s and self.rng.random() < 0.5 else self.value()
            pairs.append((k, v))
        err = None if all(hashable(k) for k, _ in pairs) else "TypeError"

        def commit():
            for k, v in pairs:
                s[k] = v
        arg = tuple(pairs)
        if err is None and self.rng.random() < 0.5:
            arg = {}
            for k, v in pairs:
                arg[k] = v
        # the operand is charged whole (an empty map too), not only the pairs it adds
        return self.store(mc, o, "dict.update", [o.ref, arg], [arg], err=err, commit=commit)

    def op_dict_read(self):
        mc, o = self.conn(), self.obj("dict")
        if not mc or not o:
            return None
        s = o.state
        k = self.rng.choice(list(s)) if s and self.rng.random() < 0.6 else self.key()
        what = self.rng.choice(["getitem", "get", "contains", "keys", "values", "len"])
        if not hashable(k) and what in ("getitem", "get", "contains"):
            return self.call(mc, "dict." + what, [o.ref, k], err="TypeError")
        if what == "getitem":
            if k in s:
                return self.call(mc, "dict.getitem", [o.ref, k], res=s[k])
            return self.call(mc, "dict.getitem", [o.ref, k], err="KeyError")
        if what == "get":
            return self.call(mc, "dict.get", [o.ref, k, "dflt"], res=s.get(k, "dflt"))
        if what == "contains":
            return self.call(mc, "dict.contains", [o.ref, k], res=k in s)
        if what == "keys":
            return self.call(mc, "dict.keys", [o.ref], res=tuple(s.keys()))
        if what == "values":
            return self.call(mc, "dict.values", [o.ref], res=tuple(s.values()))
        return self.call(mc, "dict.len", [o.ref], res=len(s))

    def op_dict_remove(self):
        mc, o = self.conn(), self.obj("dict")
        if not mc or not o:
            return None
        s = o.state
        k = self.rng.choice(list(s)) if s and self.rng.random() < 0.7 else self.key()
        what = self.rng.choice(["delitem", "pop", "popdflt", "popitem", "clear"])
        if what == "clear":
            return self.call(mc, "dict.clear", [o.ref], commit=s.clear)
        if what == "popitem":
            if not s:
                return self.call(mc, "dict.popitem", [o.ref], err="KeyError")
            k = list(s)[-1]
            return self.call(mc, "dict.popitem", [o.ref], res=(k, s[k]), commit=lambda: s.pop(k))
        if not hashable(k):
            return self.call(mc, "dict.delitem", [o.ref, k], err="TypeError")
        if what == "popdflt":
            return self.call(mc, "dict.pop", [o.ref, k, 0], res=s.get(k, 0),
                             commit=lambda: s.pop(k, None))
        method = "dict." + what
        if k not in s:
            return self.call(mc, method, [o.ref, k], err="KeyError")
        return self.call(mc, method, [o.ref, k], res=s[k] if what == "pop" else None,
                         commit=lambda: s.pop(k))
    op_dict_remove.weight = 2

    def op_dict_rmw(self):
        """setdefault, incr, cas on a dict or a namespace."""
        mc, o = self.conn(), self.obj("dict", "namespace")
        if not mc or not o:
            return None
        s = o.state
        ns = o.type == "namespace"
        k = self.rng.choice(ATTRS) if ns else (
            self.rng.choice(list(s)) if s and self.rng.random() < 0.6 else self.key())
        if not hashable(k):
            return self.call(mc, "dict.setdefault", [o.ref, k], err="TypeError")
        what = self.rng.choice(["incr", "cas"] + ([] if ns else ["setdefault"]))
        p = "namespace." if ns else "dict."
        if what == "setdefault":
            v = self.value()
            res = s[k] if k in s else v

            def commit():
                s.setdefault(k, v)
            if k in s and self.bad_refs(v):
                # the key is there: whether the unused DEFAULT is checked is not said
                return self.call(mc, "dict.setdefault", [o.ref, k, v], res=res,
                                 alt=("NoSuchObject",), cost=upper_cost(k) + upper_cost(v) + 64)
            # DEFAULT is charged even where the key is there (as cas's EXPECTED is)
            return self.store(mc, o, "dict.setdefault", [o.ref, k, v], [k, v],
                              res=res, commit=commit)
        if what == "incr":
            delta = self.rng.choice([1, -1, 5, 2.5, 2 ** 62, "x", None, True])
            args = [o.ref, k] + ([delta] if delta is not None else [])
            delta = 1 if delta is None else delta
            cur = s.get(k, 0)
            ok = lambda x: isinstance(x, (int, float))
            if not ok(cur) or not ok(delta):
                return self.call(mc, p + "incr", args, err="TypeError", cost=128)
            new = cur + delta
            if isinstance(new, bool):
                new = int(new)
            if isinstance(new, int) and not -2 ** 63 <= new < 2 ** 63:
                return self.call(mc, p + "incr", args, err="OverflowError")

            def commit():
                s[k] = new
            return self.call(mc, p + "incr", args, res=new, commit=commit, cost=128)
        cur = s.get(k)
        exp = cur if self.rng.random() < 0.6 else self.value()
        new = self.value() if self.rng.random() < 0.7 or not s else self.rng.choice(list(s.values()))
        hit = (k in s and s[k] == exp) or (k not in s and exp is None)
        if self.bad_refs(exp, new):
            return self.call(mc, p + "cas", [o.ref, k, exp, new], err="NoSuchObject")

        def commit():
            if hit:
                s[k] = new
        # the broker charges EXPECTED too (it counts the request's values before it looks)
        return self.call(mc, p + "cas", [o.ref, k, exp, new], res=hit, commit=commit,
                         cost=upper_cost(new) + upper_cost(exp) + 64)
    op_dict_rmw.weight = 2

    def op_ns(self):
        mc, o = self.conn(), self.obj("namespace")
        if not mc or not o:
            return None
        s = o.state
        k = self.rng.choice(ATTRS) if self.rng.random() < 0.95 else 5
        what = self.rng.choice(["setattr", "setattr", "getattr", "delattr"])
        if not isinstance(k, str):
            return self.call(mc, "namespace." + what, [o.ref, k] + ([1] if what == "setattr"
                                                                   else []), err="TypeError")
        if what == "setattr":
            v = self.value() if self.rng.random() < 0.6 or not s else self.rng.choice(list(s.values()))

            def commit():
                s[k] = v
            return self.store(mc, o, "namespace.setattr", [o.ref, k, v], [v], commit=commit)
        if k not in s:
            return self.call(mc, "namespace." + what, [o.ref, k], err="AttributeError")
        if what == "getattr":
            return self.call(mc, "namespace.getattr", [o.ref, k], res=s[k])
        return self.call(mc, "namespace.delattr", [o.ref, k], commit=lambda: s.pop(k))
    op_ns.weight = 3

    def op_wrong_type(self):
        """A method of another type on an object, or on a freed one."""
        mc = self.conn()
        m = self.d.m
        if not mc or not m.objs:
            return None
        if m.dead and self.rng.random() < 0.3:
            return self.call(mc, "list.len", [self.rng.choice(m.dead)], err="NoSuchObject")
        o = self.rng.choice(list(m.objs.values()))
        method = "dict.len" if o.type != "dict" else "list.len"
        return self.call(mc, method, [o.ref], err="TypeError")
    op_wrong_type.weight = 0.5

# -------------------------------------------------------------- initial values, state


class ModelError(Exception):
    def __init__(self, kind):
        self.kind = kind


def _init_list(ops):
    return None if ops.rng.random() < 0.5 else tuple(ops.value() for _ in range(ops.rng.randint(0, 3)))


def _init_dict(ops):
    if ops.rng.random() < 0.5:
        return None
    return {ops.rng.choice(KEYS): ops.value() for _ in range(ops.rng.randint(0, 3))}


def _init_ns(ops):
    if ops.rng.random() < 0.5:
        return None
    return {ops.rng.choice(ATTRS): ops.value() for _ in range(ops.rng.randint(0, 3))}


def _check_refs(values, m):
    for r in refs_in(tuple(values), []):
        if not m.live(r):
            raise ModelError("NoSuchObject")


def _state_list(initial, m):
    items = list(initial or ())
    _check_refs(items, m)
    return items


def _state_dict(initial, m):
    d = dict(initial or {})
    _check_refs(list(d.keys()) + list(d.values()), m)
    return d


def _init_queue(ops):
    return ops.rng.choice([None, 0, 1, 2, 3, -1])


def _state_queue(initial, m, joinable=False):
    return {"items": [], "maxsize": initial if initial and initial > 0 else 0,
            "unfinished": 0, "joinable": joinable}


def _init_sem(ops):
    return ops.rng.choice([None, 0, 1, 2, 3] + (["x"] if ops.rng.random() < 0.1 else []))


def _state_sem(initial, m, bounded=False):
    if initial is None:
        initial = 1
    if not isinstance(initial, int) or isinstance(initial, bool):
        raise ModelError("TypeError")
    if initial < 0:
        raise ModelError("ValueError")
    return {"value": initial, "initial": initial, "bounded": bounded, "units": {}, "orphans": 0}


def _state_lock(initial, m):
    return {"owner": None, "count": 0, "orphan": False}


TC_RANGE = {"b": (-2 ** 7, 2 ** 7), "B": (0, 2 ** 8), "i": (-2 ** 31, 2 ** 31),
            "q": (-2 ** 63, 2 ** 63), "Q": (0, 2 ** 64)}
TC_SAMPLES = {"b": [0, 1, -128, 127, 128, -129], "B": [0, 255, 256, -1],
              "i": [0, 7, -2 ** 31, 2 ** 31 - 1, 2 ** 31], "q": [0, 2 ** 63 - 1, -2 ** 63, 5],
              "Q": [0, 2 ** 64 - 1, 2 ** 63, 3], "d": [0.5, -2.25, 1e300],
              "bad": ["x", None, (1,)]}


def tc_check(tc, v):
    """The error storing v under typecode tc gives (None: it fits)."""
    if tc == "d":
        return None if isinstance(v, float) else "TypeError"
    if not isinstance(v, int) or isinstance(v, bool):
        return "TypeError"
    lo, hi = TC_RANGE[tc]
    return None if lo <= v < hi else "OverflowError"


def tc_store(tc, v):
    return v


def _init_value(ops):
    tc = ops.rng.choice(list(TC_RANGE) + ["d"])
    r = ops.rng.random()
    if r < 0.2:
        return None
    if r < 0.4:
        return (tc,)
    return (tc, ops.rng.choice(TC_SAMPLES[tc]))


def _state_value(initial, m):
    if initial is None:
        return {"tc": "i", "v": 0}
    tc = initial[0]
    v = initial[1] if len(initial) > 1 else (0.0 if tc == "d" else 0)
    err = tc_check(tc, v)
    if err:
        raise ModelError(err)
    return {"tc": tc, "v": v}


def _init_array(ops):
    tc = ops.rng.choice(["b", "i", "Q", "d"])
    if ops.rng.random() < 0.4:
        return (tc, ops.rng.randint(0, 6))
    return (tc, tuple(ops.rng.choice(TC_SAMPLES[tc]) for _ in range(ops.rng.randint(0, 6))))


def _state_array(initial, m):
    tc, x = initial
    if isinstance(x, int):
        return {"tc": tc, "items": [0.0 if tc == "d" else 0] * x}
    for v in x:
        err = tc_check(tc, v)
        if err:
            raise ModelError(err)
    return {"tc": tc, "items": list(x)}


def _init_set(ops):
    if ops.rng.random() < 0.5:
        return None
    return tuple(ops.rng.choice(KEYS) for _ in range(ops.rng.randint(0, 4)))


def _state_set(initial, m):
    d = {}
    for x in initial or ():
        d.setdefault(x, None)
    _check_refs(list(d), m)
    return d


def _init_cond(ops):
    locks = [o.ref for o in ops.d.m.objs.values() if o.type in ("lock", "rlock")]
    if locks and ops.rng.random() < 0.5:
        return ops.rng.choice(locks)
    if ops.rng.random() < 0.1 and ops.d.m.objs:
        return ops.rng.choice(list(ops.d.m.objs))   # maybe not a lock: TypeError
    return None


def _state_cond(initial, m):
    if initial is None:
        return {"lock": None}
    if not m.live(initial):
        raise ModelError("NoSuchObject")
    if m.objs[initial].type not in ("lock", "rlock"):
        raise ModelError("TypeError")
    return {"lock": initial}


INITIAL = {"list": _init_list, "dict": _init_dict, "namespace": _init_ns,
           "queue": _init_queue, "joinablequeue": _init_queue,
           "lock": lambda ops: None, "rlock": lambda ops: None,
           "semaphore": _init_sem, "boundedsemaphore": _init_sem,
           "event": lambda ops: ops.rng.choice([None, True, False]),
           "set": _init_set, "value": _init_value, "array": _init_array,
           "barrier": lambda ops: ops.rng.choice([1, 2, 2, 3]),
           "condition": _init_cond}
STATE = {"list": _state_list, "dict": _state_dict, "namespace": _state_dict,
         "queue": _state_queue,
         "joinablequeue": lambda i, m: _state_queue(i, m, True),
         "lock": _state_lock, "rlock": _state_lock,
         "semaphore": _state_sem,
         "boundedsemaphore": lambda i, m: _state_sem(i, m, True),
         "event": lambda i, m: {"flag": bool(i)},
         "set": _state_set, "value": _state_value, "array": _state_array,
         "barrier": lambda i, m: {"parties": i, "broken": False},
         "condition": _state_cond}

# ------------------------------------------------------------------------------ main

# What `make test` runs: about a minute in the normal build, less under ASan.
FIXED = [(1, 1200), (2, 1200), (3, 1200), (4, 1200), (5, 1200), (6, 1200)]
FIXED_ASAN = [(1, 500), (2, 500), (3, 500), (4, 500)]


def run_one(args, seed, steps):
    d = Driver(args, seed)
    d.types = args.types.split(",") if args.types else list(INITIAL)
    t0 = time.monotonic()
    try:
        d.run(steps)
    except Exception as e:
        if not isinstance(e, Mismatch):
            traceback.print_exc()
        print("FAIL seed %d step %d (--max-memory %d): %s" % (seed, d.step, d.max_memory, e))
        print("replay: %s --seed %d --steps %d" % (sys.argv[0], seed, d.step))
        print("failing step %d: %s" % (d.step, d.current))
        print("trace (last 40 steps):")
        for line in d.trace[-40:]:
            print("  " + line)
        if d.broker.proc and d.broker.proc.poll() is not None:
            print("broker exited %d: %s" % (d.broker.proc.returncode, d.broker.stderr()))
        if d.broker.proc:
            d.broker.proc.kill()
            d.broker.proc.wait()
        print("data kept in %s" % d.tmp)
        return False
    print("ok   seed %d: %d steps in %.1f s (--max-memory %d, %d restarts, %s)" % (
        seed, steps, time.monotonic() - t0, d.max_memory, d.broker.starts - 1,
        ", ".join("%s %d" % kv for kv in sorted(d.stats.items())) or "no OutOfMemory"))
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--random", action="store_true", help="one run with a random seed")
    p.add_argument("--server", default=os.environ.get("MPB_SERVER"))
    p.add_argument("--sanitized", action="store_true",
                   help="the server is an ASan build: fewer fixed steps")
    p.add_argument("-v", "--verbose", action="store_true", help="print every step")
    p.add_argument("--max-memory", type=int, help="instead of one drawn from the seed")
    p.add_argument("--types", default="", help="comma-separated object types to create "
                   "(default: all)")
    p.add_argument("--skip", default="", metavar="OPS",
                   help="comma-separated operations not to draw (e.g. half_close,restart)")
    p.add_argument("--bugs", default="", help="comma-separated KNOWN_BUGS to exercise")
    args = p.parse_args()
    if not args.server:
        p.error("--server or $MPB_SERVER is needed")
    KNOWN_BUGS.update(b for b in args.bugs.split(",") if b)
    asan = args.sanitized
    if args.random:
        runs = [(random.SystemRandom().randrange(1 << 32), args.steps)]
    elif args.seed is not None:
        runs = [(args.seed, args.steps)]
    else:
        runs = FIXED_ASAN if asan else FIXED
    failed = sum(not run_one(args, s, n) for s, n in runs)
    print("%d passed, %d failed" % (len(runs) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
