"""Observe: who holds a port. Sockets -> processes -> units, in that order, read-only.

`Observer` is the one object that knows how to combine the three sources; the command
line and (later) preflight and the daemon are handed one, never build their own.
"""

from __future__ import annotations

import _socket
import os
from collections.abc import Callable, Iterable, Sequence

from portguard.model import LINGERING_STATES, Holder, Process, Proto, Socket, Unit
from portguard.observe.containers.hints import may_publish
from portguard.observe.kernel import sockets
from portguard.observe.procs import cgroups, processes
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
from portguard.records import NamedTuple

TYPE_CHECKING = False

if TYPE_CHECKING:
    from portguard.observe.containers import lookup
    from portguard.observe.systemd.units import Systemd

# States of a socket that is on its way out: no process holds it any more, or the
# process is only draining it. They block a bind() only without SO_REUSEADDR.
# No socket: a container's published port, forwarded by the kernel (DNAT) after the
# runtime's helper that held it is gone (observe/containers/lookup.py, source 4).
PUBLISHED = "PUBLISHED"
# Sockets accepted from (or being accepted by) a listener on the same address: the
# listener is the holder that matters; its connections are only counted.
CHILD_STATES = frozenset({"ESTABLISHED", "SYN_RECV", "NEW_SYN_RECV"})


class PortReport(NamedTuple):
    """Everything observed on one port: the holders worth naming, and the rest counted."""

    port: int
    proto: Proto
    holders: tuple[Holder, ...]
    connections: int  # established children of a listener on this port, not listed
    unit_source: str  # "dbus", "cgroup" (D-Bus unreachable) or "" (no holders)

    @property
    def live(self) -> tuple[Holder, ...]:
        """Holders that are not merely lingering sockets."""
        return tuple(h for h in self.holders if h.socket.state not in LINGERING_STATES)


class UnitLookup:
    """pid -> unit, over D-Bus when possible, else from the process's cgroup path.

    D-Bus is connected on first use only, and never for a free port. With no `connect`
    the unit comes from the cgroup alone: the same answer GetUnitByPID gives (systemd
    maps a pid to its unit by its cgroup), without the unit's state, and without the
    ~30 ms of importing pystemd. `who` does that unless the state is asked for.

    A listener PID 1 holds is named by its .socket unit, which only D-Bus knows:
    `sockets_connect` is used for that alone when `connect` is None.
    """

    def __init__(self, connect: Callable[[], Systemd] | None,
                 sockets_connect: Callable[[], Systemd] | None = None) -> None:
        self._connect = connect
        self._sockets_connect = sockets_connect or connect
        self._systemd: Systemd | None = None
        self.failure = ""  # why D-Bus was not used, for the output
        self._cache: dict[int, Unit | None] = {}
        self._socket_units: list[Unit] | None = None

    def _bus(self, connect: Callable[[], Systemd] | None = None) -> Systemd | None:
        connect = connect or self._connect
        if self._systemd is None and connect is not None and not self.failure:
            try:
                self._systemd = connect()
            except SystemdUnavailable as exc:
                self.failure = exc.message
        return self._systemd

    def socket_unit_for(self, sock: Socket) -> Unit | None:
        """The .socket unit whose Listen= PID 1 holds this socket for (None: unknown)."""
        if self._socket_units is None:
            systemd = self._bus(self._sockets_connect)
            self._socket_units = []
            if systemd is not None:
                try:
                    self._socket_units = systemd.socket_units()
                except SystemdUnavailable as exc:
                    self.failure = exc.message
                except SystemdError:
                    pass  # e.g. a socket unit unloaded meanwhile: named from cgroups
        from portguard.observe.systemd import activation  # PID 1's listeners only (ipaddress)
        return activation.socket_unit_for(sock, self._socket_units)

    @property
    def source(self) -> str:
        """"dbus"; "cgroup" when D-Bus was wanted but unreachable; "" when not wanted."""
        if self.failure:
            return "cgroup"
        return "dbus" if self._systemd is not None and self._connect is not None else ""

    def unit_of(self, proc: Process) -> Unit | None:
        if proc.pid in self._cache:
            return self._cache[proc.pid]
        unit: Unit | None = None
        systemd = self._bus() if self._connect is not None else None
        if systemd is not None and not self.failure:
            try:
                unit = systemd.unit_for_pid(proc.pid)
            except SystemdUnavailable as exc:
                self.failure = exc.message
                unit = cgroups.unit_from_path_only(proc.cgroup)
            except SystemdError:
                unit = cgroups.unit_from_path_only(proc.cgroup)  # e.g. exited meanwhile
            if unit is None:
                # GetUnitByPID says NoUnitForPID for a pid reaped since /proc was read;
                # the cgroup read then, while it held the socket, still names its unit
                # (a live process outside any unit has none there either)
                unit = cgroups.unit_from_path_only(proc.cgroup)
        else:
            unit = cgroups.unit_from_path_only(proc.cgroup)
        self._cache[proc.pid] = unit
        return unit

    def close(self) -> None:
        if self._systemd is not None:
            self._systemd.close()
            self._systemd = None


class Observer:
    """Answers "who holds these ports?" from the kernel, /proc and systemd."""

    def __init__(self, unit_lookup: UnitLookup, *,
                 query: sockets.Query | None = None,
                 ) -> None:
        self.unit_lookup = unit_lookup
        self._query = query or sockets.query

    def ports(self, wanted: Sequence[tuple[int, Proto]],
              suspects: Iterable[int] = (),
              empty: Callable[[int, Proto], bool] | None = None,
              listeners_decide: bool = False) -> list[PortReport]:
        """One report per (port, proto), in the order asked.

        Both options spare sock_diag's walk of every socket on the host. `empty`, when
        given, proves a port has no socket at all (`who` passes a bind() probe): such
        ports are not dumped. `listeners_decide`: a TCP port with a listener is reported
        with its listeners alone (its accepted connections and lingering sockets are not
        looked up: the kernel keeps listeners in a table of their own, answered at once).
        """
        asked = [p for p in wanted if not empty(*p)] if empty is not None else list(wanted)
        found: list[Socket] = []
        if listeners_decide:
            found = sockets.on_ports([p for p in asked if p[1] == Proto.TCP], self._listeners)
            decided = {(s.local_port, s.proto) for s in found}
            asked = [p for p in asked if p not in decided]
        if asked:
            found += sockets.on_ports(asked, self._query)
        named = [s for s in found if _worth_naming(s, found)]
        owners = processes.find_owners(named, suspects=suspects)
        ident = None
        publishing = may_publish()  # else no runtime has published a port: none to read
        if owners.by_inode or publishing:
            from portguard.observe.containers import lookup
            ident = lookup.Identifier(_read_parent)  # fresh: names change, containers go
        reports = []
        for port, proto in wanted:
            mine = [s for s in found if s.local_port == port and s.proto == proto]
            holders = tuple(h for s in mine if _worth_naming(s, mine)
                            for h in self._holders(s, owners, ident))
            if ident is not None and publishing:
                holders += _published(ident, port, proto, holders)
            children = sum(1 for s in mine if not _worth_naming(s, mine))
            # A unit source only where a unit was looked up: a port with only TIME_WAIT
            # or unreadable holders asked neither D-Bus nor a cgroup.
            looked_up = any(h.processes for h in holders)
            reports.append(PortReport(port, proto, holders, children,
                                      self.unit_lookup.source if looked_up else ""))
        return reports

    def _listeners(self, ports: Sequence[int], protos: Iterable[Proto]) -> list[Socket]:
        if self._query is sockets.query:  # the kernel's listening table alone
            return sockets.query(ports, protos, states=("LISTEN",))
        return [s for s in self._query(ports, protos) if s.state == "LISTEN"]

    def _holders(self, sock: Socket, owners: processes.Owners,
                 ident: lookup.Identifier | None) -> list[Holder]:
        """The socket and what holds it: one Holder per unit among its processes.

        Processes sharing a socket usually share a unit (prefork workers), not always:
        PID 1 keeps a socket-activated listener it passed to the service. Each process
        is named with its own unit, looked up once per cgroup.
        """
        procs = owners.by_inode.get(sock.inode, ())
        if not procs:
            if not sock.inode:
                return [Holder(sock)]  # TIME_WAIT and friends: owned by the kernel alone
            # Not root: a process of another user may be hidden (hidepid) as well as
            # unreadable; either way only root can name it.
            hidden = os.geteuid() not in (0, sock.uid)
            reason = ("holder unknown (needs root)" if owners.unreadable or hidden
                      else "holder unknown (the fd scan hit its bound)" if owners.cut
                      else "holder not found")
            return [Holder(sock, unknown_reason=reason)]
        by_cgroup: dict[str, list[Process]] = {}
        for proc in procs:
            by_cgroup.setdefault(proc.cgroup, []).append(proc)
        by_unit: dict[str | None, tuple[Unit | None, list[Process]]] = {}
        for group in by_cgroup.values():
            unit = self.unit_lookup.unit_of(group[0])
            if any(p.pid == 1 for p in group) and (unit is None or unit.id == "init.scope"):
                # systemd holds it for a .socket unit (case 7): that unit is the holder
                unit = self.unit_lookup.socket_unit_for(sock) or unit
            by_unit.setdefault(unit.id if unit else None, (unit, []))[1].extend(group)
        holders = []
        for unit, group in by_unit.values():
            group.sort(key=lambda p: p.pid)
            proxy = cgroups.docker_proxy_target(group[0].cmdline)
            notes = (f"docker-proxy for container {proxy}",) if proxy else ()
            container = (ident.identify(group, (sock.local_port, sock.proto))
                         if ident is not None else None)
            holders.append(Holder(sock, tuple(group), unit, container, "", notes,
                                  _master(group)))
        return holders


def _master(group: Sequence[Process]) -> Process | None:
    """The one parent of a holder group's roots when it runs in their cgroup but holds
    none of the socket (haproxy -W/-Ws: the root master forks a worker that alone listens);
    classification judges such a tree by that master, as it judges nginx's by its own."""
    pids = {p.pid for p in group}
    parents = {p.ppid for p in group if p.ppid not in pids}
    if len(parents) != 1 or min(parents) <= 1:
        return None
    parent = _read_parent(parents.pop())
    if parent is None or parent.cgroup != group[0].cgroup or \
            any(p.cgroup != parent.cgroup for p in group):
        return None
    return parent


def _read_parent(pid: int) -> Process | None:
    try:
        return processes.read_process(pid)
    except (processes.ProcessGone, PermissionError):
        return None


def _published(ident: lookup.Identifier, port: int, proto: Proto,
               holders: Sequence[Holder]) -> tuple[Holder, ...]:
    """Ports a container publishes that no socket of its own holds (its helper is gone).

    The kernel still forwards the port's connections to the container: a service that
    binds it would start and never see a client. Named as a holder with no process.
    """
    seen = {h.container.id for h in holders if h.container is not None}
    out = []
    for pub, container in ident.published(port, proto):
        if container.id in seen:
            continue  # its conmon (or the container itself) holds the port: named already
        seen.add(container.id)
        family = _socket.AF_INET6 if ":" in pub.host_ip else _socket.AF_INET
        wildcard = "::" if family == _socket.AF_INET6 else "0.0.0.0"
        sock = Socket(proto, family, PUBLISHED, pub.host_ip or wildcard, port,
                      pub.container_ip, pub.container_port, uid=0, inode=0)
        note = (f"published by {container} to {pub.container_ip}:{pub.container_port} "
                f"by the kernel (DNAT, network {pub.network}); no process holds the host "
                "port (its runtime's helper is gone): connections go to the container")
        out.append(Holder(sock, container=container, notes=(note,)))
    return tuple(out)


def _worth_naming(sock: Socket, sockets_on_port: Sequence[Socket]) -> bool:
    """False for a listener's accepted connections: the listener is what blocks."""
    if sock.state not in CHILD_STATES:
        return True
    return not any(
        s.state == "LISTEN" and s.proto == sock.proto and s.local_port == sock.local_port
        for s in sockets_on_port)
