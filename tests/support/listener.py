"""A small service stand-in: binds a port the way real services do, and holds it.

Standalone (stdlib only) so it runs as a unit's `ExecStart=`, as a stray started by hand,
or on the host:

    /work/main/.venv/bin/python tests/support/listener.py --port 8080 --name webd

Options mirror what decides whether two binds clash: protocol, address (IPv4 or IPv6,
`[::]` accepted), SO_REUSEADDR (on by default, as most servers set it), SO_REUSEPORT,
IPV6_V6ONLY (kernel default unless given). `--workers N` forks N children that inherit
the listening socket (prefork style: the parent only supervises; kill the parent with
SIGKILL and the children keep the port, which is the "remnant" case). `--ignore-term`
makes every process ignore SIGTERM (a service that will not stop). `--name` sets the
process name (PR_SET_NAME, at most 15 bytes), which `ss -p`, `ps -o comm` and
/proc/PID/comm show.

TCP connections are accepted and held open; UDP datagrams are read and dropped.

On success one line goes to stdout: `listening on ADDR:PORT/PROTO pid=PID` (PORT is the
real one when `--port 0`), and `--ready-file PATH` gets `PID PORT` once every worker runs.
On a bind error the message is what a service prints, e.g. `bind: Address already in use`
on stderr, and the exit status is the errno (98 for EADDRINUSE).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import time

PR_SET_NAME = 15


def set_name(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    proto = p.add_mutually_exclusive_group()
    proto.add_argument("--tcp", dest="proto", action="store_const", const="tcp")
    proto.add_argument("--udp", dest="proto", action="store_const", const="udp")
    p.set_defaults(proto="tcp")
    p.add_argument("--addr", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, required=True, help="port (0: any free one)")
    p.add_argument("--reuseaddr", action=argparse.BooleanOptionalAction, default=True,
                   help="set SO_REUSEADDR (default: yes)")
    p.add_argument("--reuseport", action="store_true", help="set SO_REUSEPORT")
    p.add_argument("--v6only", action=argparse.BooleanOptionalAction, default=None,
                   help="set IPV6_V6ONLY on or off (default: the kernel's)")
    p.add_argument("--workers", type=int, default=0,
                   help="fork N children that inherit the socket and serve it")
    p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM")
    p.add_argument("--name", help="process name (PR_SET_NAME)")
    p.add_argument("--ready-file", help="write 'PID PORT' here once listening")
    p.add_argument("--backlog", type=int, default=128)
    return p.parse_args(argv)


def make_socket(args: argparse.Namespace) -> socket.socket:
    addr = args.addr.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    if args.reuseaddr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6 and args.v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(args.v6only))
    where = f"[{addr}]:{args.port}" if family == socket.AF_INET6 else f"{addr}:{args.port}"
    try:
        sock.bind((addr, args.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(args.backlog)
    except OSError as exc:
        print(f"bind: {os.strerror(exc.errno or 0)} ({where}/{args.proto})",
              file=sys.stderr, flush=True)
        sys.exit(exc.errno if exc.errno and exc.errno < 256 else 1)
    return sock


def serve(sock: socket.socket) -> None:
    """Accept and hold TCP connections / drain UDP datagrams, forever."""
    held: list[socket.socket] = []
    tcp = sock.type == socket.SOCK_STREAM
    while True:
        try:
            readable, _, _ = select.select([sock, *held], [], [])
        except InterruptedError:
            continue
        for r in readable:
            try:
                if r is sock and tcp:
                    conn, _ = sock.accept()
                    held.append(conn)
                elif r is sock:
                    sock.recvfrom(65536)
                elif not r.recv(65536):  # peer closed: let it go
                    held.remove(r)
                    r.close()
            except (BlockingIOError, InterruptedError):
                pass  # another worker took it
            except OSError:
                if r is not sock:
                    held.remove(r)
                    r.close()


def supervise(children: list[int], ignore_term: bool) -> None:
    """Prefork parent: wait for the workers; on SIGTERM pass it on and leave."""

    def on_term(signum: int, frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        sys.exit(0)

    if not ignore_term:
        signal.signal(signal.SIGTERM, on_term)
    alive = set(children)
    while alive:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        alive.discard(pid)
    while True:  # workers gone (killed one by one): the parent still holds the socket
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.name:
        set_name(args.name)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = make_socket(args)
    port = sock.getsockname()[1]
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                sock.setblocking(False)
                serve(sock)
            finally:
                os._exit(0)
        children.append(pid)
    where = sock.getsockname()[0]
    where = f"[{where}]" if ":" in where else where
    print(f"listening on {where}:{port}/{args.proto} pid={os.getpid()}"
          + (f" workers={','.join(map(str, children))}" if children else ""), flush=True)
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {port}\n")
        os.rename(tmp, args.ready_file)
    if children:
        supervise(children, args.ignore_term)
    else:
        serve(sock)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
