#!/usr/bin/python3
"""Interop: a msgpack-rpc client that is not ours (Debian's python3-msgpack, speaking
the spec over a raw socket) uses a real mpbroker-server. Also pins what real clients
do: msgid 0 and 2**64-1 echoed, bin method names, float32, stray notifications and
responses from the client tolerated."""
import os, socket, struct, subprocess, sys, tempfile, time
import msgpack

passed = failed = 0

def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")

class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(10)
        self.u = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgid = 0

    def send(self, obj, **kw):
        self.s.sendall(msgpack.packb(obj, **kw))

    def recv(self):
        while True:
            for msg in self.u:
                return msg
            data = self.s.recv(65536)
            if not data:
                raise EOFError
            self.u.feed(data)

    def call(self, method, *params, msgid=None):
        if msgid is None:
            msgid = self.msgid
            self.msgid += 1
        self.send([0, msgid, method, list(params)])
        typ, rid, err, res = self.recv()
        assert typ == 1 and rid == msgid, (typ, rid, msgid)
        return err, res

def doc_handshake():
    """The handshake function exactly as docs/PROTOCOL.md writes it (Authentication,
    "In Python"), so that the text itself is what is tested."""
    doc = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                            "PROTOCOL.md")).read()
    section = doc[doc.index("## Authentication"):doc.index("## Messages")]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    env = {}
    exec(code, env)
    return env["handshake"]

class CallError(Exception):
    pass

def keyed(server):
    """A broker with a key, and a handshake written from PROTOCOL.md's text alone."""
    key = b"interop key, long enough to pass"
    d = tempfile.mkdtemp(prefix="mpbinterop.")
    path = os.path.join(d, "s.sock")
    env = dict(os.environ, MPBROKER_AUTHKEY=key.decode())
    env.pop("MPBROKER_AUTHKEY_FILE", None)
    p = subprocess.Popen([server, "--socket", path, "--quiet"], env=env)
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        handshake = doc_handshake()

        def caller(c):
            def call(method, *params):
                err, res = c.call(method, *params)
                if err is not None:
                    raise CallError(err)
                return res
            return call

        c = Client(path)
        try:
            handshake(caller(c), key)
            ok = True
        except Exception as e:
            ok = repr(e)
        check("PROTOCOL.md's Python handshake authenticates", ok is True, ok)
        err, res = c.call("manager.ping")
        check("then every method is served", err is None and res == "pong", repr((err, res)))
        # The wrong key: AuthError at auth.response, then the connection is closed.
        c = Client(path)
        try:
            handshake(caller(c), b"not the key")
            outcome = "accepted"
        except CallError as e:
            outcome = e.args[0][0]
        check("a wrong key is AuthError", outcome == "AuthError", outcome)
        try:
            c.call("manager.ping")
            closed = False
        except (EOFError, ConnectionResetError, BrokenPipeError):
            closed = True
        check("and the connection is closed", closed)
        # A broker that does not know the key cannot pass the client's check.
        class Impostor:
            def __init__(self):
                self.s = os.urandom(40)
            def __call__(self, method, *params):
                if method == "auth.challenge":
                    return b"{sha256}" + self.s
                return b"{sha256}" + os.urandom(32)
        try:
            handshake(Impostor(), key)
            outcome = "trusted"
        except ConnectionError:
            outcome = "refused"
        check("an impostor's proof is refused", outcome == "refused", outcome)
    finally:
        p.terminate()
        rc = p.wait(10)
        check("keyed broker: clean exit 0", rc == 0, repr(rc))
        os.rmdir(d) if os.path.isdir(d) and not os.listdir(d) else None

def doc_example(server):
    """PROTOCOL.md's "Example session" in Python, run as written, against a broker on
    its default socket: the example's default_socket() must find it where the broker
    put it, with $XDG_RUNTIME_DIR, with only $TMPDIR, and with $MPBROKER_ADDRESS."""
    doc = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                            "PROTOCOL.md")).read()
    section = doc[doc.index("## Example session"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    base = {k: v for k, v in os.environ.items()
            if k not in ("XDG_RUNTIME_DIR", "TMPDIR", "MPBROKER_ADDRESS")}
    for case in ("XDG_RUNTIME_DIR", "TMPDIR", "MPBROKER_ADDRESS"):
        d = tempfile.mkdtemp(prefix="mpbexample.")
        env = dict(base)
        if case == "MPBROKER_ADDRESS":
            env[case] = "unix:" + os.path.join(d, "named.sock")
        else:
            env[case] = d
        p = subprocess.Popen([server, "--quiet"], env=env)
        try:
            for _ in range(200):
                if any(f.endswith(".sock") for _, _, fs in os.walk(d) for f in fs):
                    break
                time.sleep(0.05)
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=30)
            check(f"PROTOCOL.md's Python example finds the broker by ${case}",
                  r.returncode == 0 and r.stdout == "[1, 2, None, [['Computers', 1]]]\n",
                  repr((r.returncode, r.stdout, r.stderr[-300:])))
        finally:
            p.terminate()
            rc = p.wait(10)
            check(f"example broker (${case}): clean exit 0", rc == 0, repr(rc))
            subprocess.run(["rm", "-rf", d])

def main():
    server = os.environ.get("MPB_SERVER", "build/mpbroker-server")
    d = tempfile.mkdtemp(prefix="mpbinterop.")
    path = os.path.join(d, "s.sock")
    p = subprocess.Popen([server, "--socket", path, "--quiet"])
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        c = Client(path)
        err, ref = c.call("manager.create", "list", None)
        check("create list gives an ext reference", err is None and isinstance(ref, msgpack.ExtType) and ref.code == 1, repr((err, ref)))
        for v in ["Computers", 1, 2.5, None, True, [1, "x"], {"k": "v"}, b"\x00\x01"]:
            err, res = c.call("list.append", ref, v)
            check(f"append {v!r}", err is None and res is None, repr(err))
        err, res = c.call("list.copy", ref)
        check("read the list back", err is None and res == ["Computers", 1, 2.5, None, True, [1, "x"], {"k": "v"}, b"\x00\x01"], repr(res))
        err, res = c.call("list.getitem", ref, -1)
        check("getitem -1", res == b"\x00\x01", repr(res))
        err, res = c.call("list.getitem", ref, 10)
        check("IndexError kind", err is not None and err[0] == "IndexError", repr(err))
        # msgid 0 and the largest msgid are echoed as sent
        err, res = c.call("manager.ping", msgid=0)
        check("msgid 0 echoed", res == "pong")
        err, res = c.call("manager.ping", msgid=2**64 - 1)
        check("msgid 2**64-1 echoed", res == "pong")
        # method name as bin (pynvim does this)
        c.send([0, 77, b"list.len", [ref]])
        typ, rid, err, res = c.recv()
        check("bin method name accepted", rid == 77 and err is None and res == 8, repr((rid, err, res)))
        # float32 argument
        c.send([0, 78, "list.append", [ref, 1.5]], use_single_float=True)
        c.recv()
        err, res = c.call("list.getitem", ref, -1)
        check("float32 accepted as float", res == 1.5 and isinstance(res, float), repr(res))
        # stray notification (unknown) and a response from the client: ignored
        c.send([2, b"nvim_subscribe", ["x"]])
        c.send([1, 5, None, "whatever"])
        err, res = c.call("list.len", ref)
        check("unknown notification and stray response ignored", err is None and res == 9, repr((err, res)))
        # a known notification is executed without a reply
        c.send([2, "list.append", [ref, "via-notify"]])
        err, res = c.call("list.getitem", ref, -1)
        check("notification executed, no reply", res == "via-notify", repr(res))
        # namespace incr/cas from this client
        err, ns = c.call("manager.open", "namespace", "interop-ns", {"x": 1})
        err, res = c.call("namespace.incr", ns, "x", 5)
        check("namespace.incr", res == 6, repr((err, res)))
        err, res = c.call("namespace.cas", ns, "x", 6, 60)
        check("namespace.cas", res is True, repr((err, res)))
        err, res = c.call("namespace.vars", ns)
        check("namespace.vars", res == {"x": 60}, repr(res))
        err, res = c.call("no.such", 1)
        check("NoSuchMethod", err is not None and err[0] == "NoSuchMethod", repr(err))
        # a second client sees the same list through the same reference
        c2 = Client(path)
        err, res = c2.call("list.getitem", ref, 0)
        check("second client reads the shared list", res == "Computers", repr(res))
        # pipelined: 100 requests in one write, 100 replies in order
        c2.s.sendall(b"".join(msgpack.packb([0, i, "list.append", [ref, i]]) for i in range(100)))
        ids = [c2.recv()[1] for _ in range(100)]
        check("pipelined replies in order", ids == list(range(100)), repr(ids[:5]))
        err, res = c2.call("list.len", ref)
        check("pipelined appends all applied", res == 110, repr(res))
        # malformed bytes: BadRequest with nil msgid, then the connection closes
        c2.s.sendall(b"\xc1")
        typ, rid, err, res = c2.recv()
        check("malformed msgpack gives BadRequest", rid is None and err[0] == "BadRequest", repr(err))
        try:
            c2.recv()
            closed = False
        except (EOFError, ConnectionResetError):
            closed = True
        check("then the connection is closed", closed)
        err, res = c.call("list.len", ref)
        check("other clients unaffected", res == 110, repr(res))
        c.s.close()
    finally:
        p.terminate()
        rc = p.wait(10)
        check("SIGTERM: clean exit 0", rc == 0, repr(rc))
        check("socket file removed", not os.path.exists(path))
        os.rmdir(d) if os.path.isdir(d) and not os.listdir(d) else None
    keyed(server)
    doc_example(server)
    print(f"interop: {passed} passed, {failed} failed")
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
