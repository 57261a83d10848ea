#!/usr/bin/python3
"""`make run` as a person uses it: on a terminal, Ctrl-C stops the broker, which removes
its socket, and make itself exits 0 (issue 22: it exited 130 though the broker had
stopped cleanly). Run in a pseudo-terminal whose foreground gets the ^C, as a shell's
would. `make -o deps`: the test installs nothing. Skipped (77) without make.

    tests/make_run.py SOURCE_DIR BUILD_DIR
"""
import os, pty, select, shutil, sys, tempfile, time


def read_until(fd, buf, needle, seconds):
    end = time.time() + seconds
    while needle not in buf and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's last process is gone
                break
            if not data:
                break
            buf += data
    return buf


def find_broker(sock):
    """The pid of the mpbroker-server serving sock, or None."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"mpbroker-server") and sock.encode() in args:
            return int(p)
    return None


def main():
    src, build = sys.argv[1], sys.argv[2]
    make = shutil.which("make")
    if make is None:
        print("no make: skipped")
        return 77
    d = tempfile.mkdtemp(prefix="mpbmakerun.")
    sock = os.path.join(d, "s.sock")
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(make, [make, "-s", "-C", src, "-o", "deps", "run",
                         "BUILD=" + os.path.relpath(build, src), "ARGS=-s " + sock], env)
    try:
        buf = read_until(fd, b"", b"listening on", 120)
        if b"listening on" not in buf:
            print("the broker did not start:\n" + buf.decode(errors="replace"))
            return 1
        # A person presses Ctrl-C once the broker runs; make's bash gives it the
        # terminal (fg) just after starting it: wait for that, as a person would.
        broker = None
        end = time.time() + 30
        while time.time() < end:
            broker = broker or find_broker(sock)
            if broker and os.tcgetpgrp(fd) == os.getpgid(broker):
                break
            time.sleep(0.05)
        else:
            print(f"the broker ({broker}) never got the terminal's foreground")
            return 1
        os.write(fd, b"\x03")  # the terminal's INTR: SIGINT to its foreground group
        buf = read_until(fd, buf, b"stopped", 30)
        end = time.time() + 30
        while True:
            got, st = os.waitpid(pid, os.WNOHANG)
            if got or time.time() > end:
                break
            read_until(fd, b"", b"\0", 0.2)  # keep the terminal drained
        if not got:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("make did not exit after Ctrl-C:\n" + buf.decode(errors="replace"))
            return 1
        code = os.waitstatus_to_exitcode(st)
        text = buf.decode(errors="replace")
        ok = code == 0 and "stopped" in text and not os.path.exists(sock)
        print(text)
        print(f"make run after Ctrl-C: exit {code}, socket "
              f"{'left behind' if os.path.exists(sock) else 'removed'}: "
              f"{'ok' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
