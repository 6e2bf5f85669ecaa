"""What one pass of `portguard daemon` sees and decides: observe, then analyse (pure).

Observe is cheap whatever the number of services: one sock_diag query per protocol for
every declared port, one ListUnitsByPatterns call for the state of every configured unit,
and one walk of the cgroup tree to name the unit each socket was created in (sock_diag
gives its cgroup id). /proc is read only for sockets without a cgroup id.

Analyse (`analyse`, pure but for the `Kernel` in the facts: `conflicts.judge` reads an
owner's socket options or tries bind() where the rules alone cannot answer, and never
on a port where no socket is seen) says, for each configured unit (every loaded
instance of a template), which sockets block its declared binds and whose they are:
`self` (its own cgroup), `twin` (another instance, a `duplicates.units` unit),
`lingering`, or `other` (a stray or a foreign program: only Preflight's classification
tells them apart), and its verdict:

- `act`: the unit **wants its port** (failed; activating, auto-restart included) and is
  blocked (by a twin, an other, lingering sockets, or a remnant in its own cgroup while
  its main process is not running). portguard.commands.daemon_heal runs Preflight for it.
- `report`: the unit does not want its port, and an other holds it, or a twin holds it
  while the unit itself is active (twins at once). Told, never acted on.
- `ok`: nothing to do (its own port, or a twin holding the port of a stopped instance).

The flap guard's key for a holder (`holder_identity`): a twin by its unit, a holder
outside any service by its program and user.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from portguard.config.schema import Config, Service
from portguard.decide import conflicts
from portguard.decide.classify import is_outside_service
from portguard.model import LINGERING_STATES, Holder, Process, Proto, Socket, Unit
from portguard.observe.kernel import probe, sockets
from portguard.observe.procs import cgroups, processes
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
from portguard.observe.systemd.units import Systemd

BEFORE_MAIN = ("auto-restart", "condition", "start-pre")  # activating sub-states


def wants_port(unit: Unit) -> bool:
    """failed, or activating (auto-restart included): it needs its ports now or soon."""
    return unit.active_state in ("failed", "activating")


def before_main(unit: Unit) -> bool:
    """Its main process cannot be the one holding the ports: a socket in its own cgroup
    is a remnant of an earlier run."""
    return unit.active_state == "failed" or (
        unit.active_state == "activating" and unit.sub_state in BEFORE_MAIN)


class Facts(NamedTuple):
    units: Mapping[str, Unit]  # loaded configured units by id (state known only with D-Bus)
    sockets: tuple[Socket, ...]  # every socket on a declared port
    owners: Mapping[int, str]  # socket inode -> its unit ("" for none); absent: unknown
    dbus: bool
    # Asked where the rules cannot know (the live one from `observe`; None: assumptions).
    kernel: conflicts.Kernel | None = None


class Blocker(NamedTuple):
    socket: Socket
    unit: str | None  # the unit its cgroup names; None: none or unknown
    kind: str  # self | twin | lingering | other


class PortState(NamedTuple):
    port: int
    proto: Proto
    blockers: tuple[Blocker, ...]


class Check(NamedTuple):
    service: Service
    unit: Unit
    ports: tuple[PortState, ...]
    verdict: str  # ok | act | report

    def blocking(self) -> list[Blocker]:
        return [b for p in self.ports for b in p.blockers
                if b.kind != "self" or before_main(self.unit)]



# -- analyse (pure) ---------------------------------------------------------------------


def _kind(service: Service, unit_id: str, sock: Socket, owner: str | None) -> str:
    if not sock.inode or sock.state in LINGERING_STATES:
        return "lingering"
    if owner == unit_id:
        return "self"
    if owner and (service.matches(owner) or
                  any(fnmatch.fnmatchcase(owner, g) for g in service.duplicates.units)):
        return "twin"
    return "other"


def units_of(service: Service, facts: Facts) -> list[Unit]:
    if not service.is_template:
        return [facts.units.get(service.name) or Unit(service.name, "inactive", "dead")]
    found = sorted((u for u in facts.units.values() if service.matches(u.id)),
                   key=lambda u: u.id)
    return found or [Unit(service.name, "inactive", "dead")]


def judge(unit: Unit, ports: Sequence[PortState], dbus: bool) -> str:
    kinds = {b.kind for p in ports for b in p.blockers}
    if not dbus:
        return "report" if "other" in kinds else "ok"
    if wants_port(unit):
        blocked = any(b.kind != "self" or before_main(unit) for p in ports for b in p.blockers)
        return "act" if blocked else "ok"
    if "other" in kinds or ("twin" in kinds and unit.active_state in ("active", "reloading")):
        return "report"
    return "ok"


def analyse(config: Config, facts: Facts) -> list[Check]:
    by_port: dict[tuple[int, Proto], list[Socket]] = {}
    for sock in facts.sockets:
        by_port.setdefault((sock.local_port, sock.proto), []).append(sock)
    checks = []
    for service in config.services:
        blocked = []  # (port, proto, blocking sockets) per declared bind
        for spec in service.ports:
            for intent in conflicts.intents(spec, reuse_address=service.reuse_address):
                on_port = by_port.get((intent.port, intent.proto), [])
                # No probe where no socket is seen: a probe holds the port for a moment,
                # and the daemon must not race a service starting meanwhile.
                found = conflicts.judge(intent, on_port, facts.kernel).blockers \
                    if on_port else ()
                blocked.append((intent.port, intent.proto, found))
        for unit in units_of(service, facts):
            ports = tuple(PortState(port, proto, tuple(
                Blocker(s, facts.owners.get(s.inode) or None,
                        _kind(service, unit.id, s, facts.owners.get(s.inode)))
                for s in socks)) for port, proto, socks in blocked)
            checks.append(Check(service, unit, ports, judge(unit, ports, facts.dbus)))
    return checks


def holder_identity(unit: str | None, procs: Sequence[Process]) -> str:
    """Who a holder is, for the flap guard: a service unit by name; anything outside a
    service (no unit, a session scope, user@) by program and user, so a stray that comes
    back with a new pid is the same holder."""
    if unit and not is_outside_service(Unit(unit)):
        return unit
    if procs:
        return f"{procs[0].program} as {procs[0].user or procs[0].uid}"
    return unit or "an unseen holder"


def flap_keys(unit: str, holders: Iterable[Holder]) -> list[tuple[str, str]]:
    return sorted({(unit, holder_identity(h.unit.id if h.unit else None, h.processes))
                   for h in holders if h.processes})


# -- observe ----------------------------------------------------------------------------


def cgroup_paths(ids: set[int], root: str) -> dict[int, str]:
    """cgroup id (the directory's inode) -> path below `root` ("/" for root itself)."""
    found: dict[int, str] = {}
    if not ids or not root:
        return found
    try:
        if os.stat(root).st_ino in ids:
            found[os.stat(root).st_ino] = "/"
    except OSError:
        return found
    stack = [root]
    while stack and len(found) < len(ids):
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.inode() in ids:
                        found[entry.inode()] = entry.path[len(root):]
                    stack.append(entry.path)
    return found


def socket_units(socks: Sequence[Socket], cgroup_root: str) -> dict[int, str]:
    """socket inode -> unit ("" none), from its cgroup id; from its owner's cgroup where
    sock_diag gave none (the /proc/net fallback) or the cgroup is gone."""
    owned = [s for s in socks if s.inode]
    paths = cgroup_paths({s.cgroup_id for s in owned if s.cgroup_id}, cgroup_root)
    out: dict[int, str] = {}
    unknown = []
    for sock in owned:
        path = paths.get(sock.cgroup_id or 0)
        if path is None:
            unknown.append(sock)
        else:
            out[sock.inode] = cgroups.unit_from_cgroup(path) or ""
    if unknown:
        found = processes.find_owners(unknown)
        for sock in unknown:
            procs = found.by_inode.get(sock.inode)
            if procs:
                out[sock.inode] = cgroups.unit_from_cgroup(procs[0].cgroup) or ""
    return out


def observe(config: Config, systemd: Systemd | None, cgroup_root: str) -> tuple[Facts, str]:
    wanted: dict[Proto, set[int]] = {}
    globs = []
    for service in config.services:
        globs.append(service.instance_glob)
        for spec in service.ports:
            wanted.setdefault(spec.proto, set()).update(spec.ports)
    found: list[Socket] = []
    for proto, ports in wanted.items():
        found.extend(sockets.query(sorted(ports), (proto,)))
    units: dict[str, Unit] = {}
    error = "not connected" if systemd is None else ""
    if systemd is not None and globs:
        try:
            units = {u.id: u for u in systemd.unit_states(globs)}
        except (SystemdUnavailable, SystemdError) as exc:
            error = exc.message
    facts = Facts(units, tuple(found), socket_units(found, cgroup_root), not error,
                  probe.Kernel(lookup=True))
    return facts, error
