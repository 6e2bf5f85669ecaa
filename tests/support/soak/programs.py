"""The programs the soak runs inside the sandbox (python3 -I -S, stdlib only)."""

from __future__ import annotations

HOLDER_CODE = r'''"""portguard soak holder: binds $SOAK_PORTS, logs each signal with its sender.

Env: SOAK_SIGDIR, SOAK_TAG, SOAK_PORTS (comma list), SOAK_PROTO (tcp|udp), SOAK_ADDR
(an address, or "any" = dual-stack [::]), SOAK_REUSE (1: SO_REUSEADDR), SOAK_WORKERS
(forked children sharing the sockets), SOAK_IGNORE (1: ignore stop signals),
SOAK_LEAVE_FILE (exit once this file exists). Log: SOAK_SIGDIR/TAG.PID.log, one line per
event: "start role=.. ppid=.. uid=..", "sig N from=PID code=C", "exit sig N|leave".
Ready: SOAK_SIGDIR/TAG.ready = "PID [WORKER...]", or "FAIL errno port" when bind() fails.
"""
import os
import signal
import socket
import time

E = os.environ
DIR, TAG = E["SOAK_SIGDIR"], E["SOAK_TAG"]
IGNORE = E.get("SOAK_IGNORE") == "1"
LEAVE = E.get("SOAK_LEAVE_FILE", "")
STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}
WATCH = STOPS | {signal.SIGCONT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
                 signal.SIGPIPE}
signal.pthread_sigmask(signal.SIG_BLOCK, WATCH)  # inherited by the workers


def log(line):
    fd = os.open(f"{DIR}/{TAG}.{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, f"{line} t={time.monotonic():.3f}\n".encode())
    finally:
        os.close(fd)


def ready(text):
    tmp = f"{DIR}/{TAG}.ready.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, f"{DIR}/{TAG}.ready")


def bind_all():
    socks = []
    udp = E.get("SOAK_PROTO") == "udp"
    addr = E.get("SOAK_ADDR", "any")
    host = "::" if addr == "any" else addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in [int(p) for p in E.get("SOAK_PORTS", "").split(",") if p]:
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        if E.get("SOAK_REUSE", "1") == "1":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(addr != "any"))
        try:
            s.bind((host, port))
            if not udp:
                s.listen(16)
        except OSError as exc:
            log(f"bindfail errno={exc.errno} port={port}")
            ready(f"FAIL {exc.errno} {port}")
            os._exit(98)
        socks.append(s)
    return socks


def serve(children):
    while True:
        if LEAVE:
            info = signal.sigtimedwait(WATCH, 0.03)
            if info is None:
                if os.path.exists(LEAVE):
                    for child in children:  # they leave too: go last, as a unit's main
                        os.waitpid(child, 0)
                    log("exit leave")
                    os._exit(0)
                continue
        else:
            info = signal.sigwaitinfo(WATCH)
        log(f"sig {info.si_signo} from={info.si_pid} code={info.si_code}")
        if info.si_signo in STOPS and not IGNORE:
            for child in children:  # a prefork parent passes a stop on, then leaves
                try:
                    os.kill(child, info.si_signo)
                except ProcessLookupError:
                    pass
            log(f"exit sig {info.si_signo}")
            os._exit(0)


SOCKS = bind_all()
log(f"start role=main ppid={os.getppid()} uid={os.getuid()}")
CHILDREN = []
for _ in range(int(E.get("SOAK_WORKERS", "0"))):
    pid = os.fork()
    if pid == 0:
        log(f"start role=worker ppid={os.getppid()} uid={os.getuid()}")
        serve([])
    CHILDREN.append(pid)
ready(" ".join(map(str, [os.getpid(), *CHILDREN])))
serve(CHILDREN)
'''

# Run inside with `python3 -I -S -c HELPER_CODE CMD ...`:
#   tw ADDR:PORT:REUSE ...   leave a TIME_WAIT socket on each (the server side closes
#                            first; REUSE 1/0: SO_REUSEADDR on the listener, which the
#                            TIME_WAIT socket keeps), and wait until /proc/net/tcp shows it
#   probe PROTO REUSE PORT.. bind() [::]:PORT dual-stack as the service would; print
#                            "PORT ok" or "PORT errno"
HELPER_CODE = r"""
import socket, sys, time
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "tw":
    want = set()
    for spec in args:
        addr, port, reuse = spec.rsplit(":", 2)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
        srv.bind((addr, int(port)))
        srv.listen()
        cli = socket.create_connection((addr, int(port)))
        conn, _ = srv.accept()
        conn.close()
        cli.recv(1)
        cli.close()
        srv.close()
        want.add("%04X" % int(port))
    deadline = time.monotonic() + 5
    while True:
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        have = {r[1].split(":")[1] for r in rows if r[3] == "06"}
        if want <= have:
            break
        if time.monotonic() > deadline:
            sys.exit("no TIME_WAIT on " + ",".join(sorted(want - have)))
        time.sleep(0.005)
elif cmd == "probe":
    kind = socket.SOCK_DGRAM if args[0] == "udp" else socket.SOCK_STREAM
    for port in map(int, args[2:]):
        s = socket.socket(socket.AF_INET6, kind)
        if args[1] == "1":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            s.bind(("::", port))
            print(port, "ok")
        except OSError as exc:
            print(port, exc.errno)
        s.close()
"""
