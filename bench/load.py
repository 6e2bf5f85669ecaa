"""One service unit's share of the benchmark's load: processes holding sockets.

Runs as the `ExecStart=` of `load@.service` inside the benchmark's sandbox (stdlib only):

    python bench/load.py --instance 7 --procs 10 --socks 50 --tw 30 \
        --p-instance 37 --p-port 8080 --p-holders 10

The main process (the unit's MainPID) forks `--procs - 1` children; all of them stay in
the unit's cgroup. Every process, main included, opens `--socks` sockets of its own
(`split_sockets`): TCP listeners on distinct ports (the first one dual-stack `[::]`, the
others `0.0.0.0`), UDP sockets bound to distinct ports (every third one IPv6), and
established loopback pairs (a connect to one of its own listeners plus the accepted
child: two sockets each). Ports come from the global process index, so units never clash
(`listener_port`, `udp_port`); the benchmark uses the same functions to pick the ports
whose holders it checks against `ss`.

The instance named by `--p-instance` also holds the measured port: its main process opens
a listener on `--p-port` (and `--p-conns` established connections to it) *before* forking,
so it is shared prefork-style; children from index `--p-holders` on close their inherited
copies, leaving exactly `--p-holders` holder processes. `--udp-instance` does the same for
one UDP port, held by the main process only.

TIME_WAIT: the main process keeps about `--tw` sockets in TIME_WAIT (connect + close to a
private listener, client closing first). TIME_WAIT lasts 60 s on Linux, so after the
initial batch it makes one more every 60/tw seconds: a steady state, at a cost of one
connect per unit every few seconds.

The main process signals readiness with sd_notify READY=1 (the unit is Type=notify) once
every child has opened its sockets, so `systemctl start load@...` returns when the load
is in place; a child that fails makes the main process exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import sys
import time

TCP_BASE = 10000  # listener ports: TCP_BASE + global_index * listeners + i
UDP_BASE = 10000  # UDP ports: UDP_BASE + global_index * udp + i (another protocol)
EPHEMERAL = "30000 65000"  # net.ipv4.ip_local_port_range the benchmark sets: above both


def split_sockets(socks: int) -> tuple[int, int, int]:
    """(listeners, udp, pairs) for a process holding about `socks` sockets."""
    listeners = max(1, socks // 12)
    udp = max(1, socks // 8)
    pairs = max(1, (socks - listeners - udp) // 2)
    return listeners, udp, pairs


def global_index(instance: int, procs: int, j: int) -> int:
    """Process j (0 = main) of unit `instance` (1-based) as a host-wide index."""
    return (instance - 1) * procs + j


def listener_port(g: int, socks: int, i: int) -> int:
    return TCP_BASE + g * split_sockets(socks)[0] + i


def udp_port(g: int, socks: int, i: int) -> int:
    return UDP_BASE + g * split_sockets(socks)[1] + i


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(message.encode(), addr)


def tcp_listener(port: int, family: int = socket.AF_INET, backlog: int = 256) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack, like [::]
        s.bind(("::", port))
    else:
        s.bind(("0.0.0.0", port))
    s.listen(backlog)
    return s


def pair(port: int) -> tuple[socket.socket, socket.socket]:
    """An established loopback connection to our own listener on `port`: (client, child)."""
    client = socket.create_connection(("127.0.0.1", port))
    return client, _accept(port)


_listeners: dict[int, socket.socket] = {}


def _accept(port: int) -> socket.socket:
    child, _ = _listeners[port].accept()
    return child


def open_sockets(g: int, socks: int) -> list[socket.socket]:
    """This process's own sockets (kept referenced so they stay open)."""
    n_listen, n_udp, n_pairs = split_sockets(socks)
    held: list[socket.socket] = []
    for i in range(n_listen):
        port = listener_port(g, socks, i)
        family = socket.AF_INET6 if i == 0 and n_listen > 1 else socket.AF_INET
        _listeners[port] = tcp_listener(port, family)
        held.append(_listeners[port])
    for i in range(n_udp):
        if i % 3 == 2:
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            u.bind(("::", udp_port(g, socks, i)))
        else:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", udp_port(g, socks, i)))
        held.append(u)
    for i in range(n_pairs):
        held.extend(pair(listener_port(g, socks, i % n_listen)))
    return held


def time_wait(listener: socket.socket) -> bool:
    """One TIME_WAIT socket: connect, accept, the client closes first. False on failure."""
    try:
        client = socket.create_connection(listener.getsockname()[:2])
        child, _ = listener.accept()
    except OSError as e:  # e.g. EADDRNOTAVAIL: no ephemeral port left; try again later
        print(f"load: TIME_WAIT connect: {e}", file=sys.stderr)
        return False
    client.close()  # FIN from the client: the client side ends in TIME_WAIT
    child.close()
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instance", type=int, required=True, help="1-based unit number")
    p.add_argument("--procs", type=int, required=True, help="processes in this unit")
    p.add_argument("--socks", type=int, required=True, help="sockets per process")
    p.add_argument("--tw", type=int, default=0, help="TIME_WAIT sockets to keep")
    p.add_argument("--p-instance", type=int, default=0, help="the unit holding --p-port")
    p.add_argument("--p-port", type=int, default=0)
    p.add_argument("--p-holders", type=int, default=1, help="processes sharing --p-port")
    p.add_argument("--p-conns", type=int, default=5, help="connections to --p-port")
    p.add_argument("--udp-instance", type=int, default=0, help="the unit holding --udp-port")
    p.add_argument("--udp-port", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear recipe
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    shared: list[socket.socket] = []  # the measured port, inherited by the holders
    if args.p_port and args.instance == args.p_instance:
        lst = tcp_listener(args.p_port)
        _listeners[args.p_port] = lst
        shared.append(lst)
        for _ in range(args.p_conns):
            shared.extend(pair(args.p_port))

    r, w = os.pipe()
    children = []
    for j in range(1, args.procs):
        pid = os.fork()
        if pid == 0:  # child j
            status = 1
            try:
                os.close(r)
                if j >= args.p_holders:
                    for s in shared:
                        s.close()
                    _listeners.pop(args.p_port, None)
                _held = open_sockets(global_index(args.instance, args.procs, j), args.socks)
                os.write(w, b".")
                os.close(w)
                while True:  # `_held` keeps the sockets open for the life of the process
                    signal.pause()
            except BaseException as e:  # report anything, then exit
                print(f"load: child {j}: {e!r}", file=sys.stderr)
            finally:
                os._exit(status)
        children.append(pid)
    os.close(w)

    held = open_sockets(global_index(args.instance, args.procs, 0), args.socks)
    if args.udp_port and args.instance == args.udp_instance:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", args.udp_port))
        held.append(u)

    ready = 0
    while ready < len(children):
        chunk = os.read(r, 4096)
        if not chunk:
            print(f"load: only {ready} of {len(children)} children ready", file=sys.stderr)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return 1
        ready += len(chunk)
    os.close(r)

    tw_listener = None
    made = 0
    if args.tw > 0:
        tw_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tw_listener.bind(("127.0.0.1", 0))
        tw_listener.listen(64)
        made = sum(time_wait(tw_listener) for _ in range(args.tw))
    notify(f"READY=1\nSTATUS={args.procs} processes, {args.socks} sockets each, "
           f"{made} TIME_WAIT")
    if tw_listener is None:
        while True:
            signal.pause()
    interval = 60.0 / args.tw  # TIME_WAIT lasts 60 s: keep about args.tw of them
    next_at = time.monotonic() + interval
    while True:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        time_wait(tw_listener)


if __name__ == "__main__":
    sys.exit(main())
