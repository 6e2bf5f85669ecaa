"""Every listening socket on the host and the unit it belongs to (for `discover`, and for
`why` when nothing else says which ports a unit used).

sock_diag lists the listeners (TCP LISTEN, unconnected UDP bound to a port), /proc names
their processes, and each process's cgroup names its unit, as systemd itself derives it.
A socket PID 1 holds belongs to the .socket unit whose cgroup it was created in
(sock_diag's cgroup id), not to PID 1's init.scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from portguard.model import Process, Proto, Socket
from portguard.observe.kernel import sockets
from portguard.observe.procs import cgroupfs, cgroups, processes

LISTEN_STATES = ("LISTEN", "UNCONN")
ALL_PORTS = range(1, 65536)


class Listener(NamedTuple):
    socket: Socket
    processes: tuple[Process, ...]  # who holds it; PID 1 for a .socket unit's listener
    unit: str | None  # the unit it belongs to: x.service, x.socket, a scope, or None
    unknown: bool  # its holder could not be read (not root)


def listeners(protos: Iterable[Proto] = (Proto.TCP, Proto.UDP), *,
              tree: cgroupfs.CgroupTree | None = None) -> list[Listener]:
    """Every listener, grouped by socket; a prefork master and its workers share one."""
    found = [s for s in sockets.query(ALL_PORTS, protos, states=LISTEN_STATES)
             if s.inode and s.local_port]
    owners = processes.find_owners(found)
    tree = tree or cgroupfs.CgroupTree()
    paths: dict[int, str | None] = {}
    out = []
    for sock in found:
        procs = owners.by_inode.get(sock.inode, ())
        unit = _unit(sock, procs, tree, paths)
        out.append(Listener(sock, procs, unit, not procs))
    return out


def _unit(sock: Socket, procs: tuple[Process, ...], tree: cgroupfs.CgroupTree,
          paths: dict[int, str | None]) -> str | None:
    if procs and not any(p.pid == 1 for p in procs):
        # the unit of the oldest holder: the master that bound it, not a worker it forked
        return cgroups.unit_from_cgroup(min(procs, key=lambda p: p.start_time).cgroup)
    return socket_unit_of(sock, tree, paths)


def socket_unit_of(sock: Socket, tree: cgroupfs.CgroupTree | None = None,
                   cache: dict[int, str | None] | None = None) -> str | None:
    """The unit whose cgroup the socket was created in (a .socket unit's, when PID 1
    holds it), from sock_diag's cgroup id; None when the kernel did not say."""
    if not sock.cgroup_id:
        return None
    cache = cache if cache is not None else {}
    if sock.cgroup_id not in cache:
        path = (tree or cgroupfs.CgroupTree()).path_of(sock.cgroup_id)
        root = (tree.root if tree else cgroupfs.cgroup2_mount()) or ""
        cache[sock.cgroup_id] = (cgroups.unit_from_cgroup(path.removeprefix(root))
                                 if path else None)
    return cache[sock.cgroup_id]
