"""`portguard status`: every configured service, its ports, their holders, its units."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from portguard.commands.who import judged_doc
from portguard.config.schema import Config, Service
from portguard.decide import conflicts
from portguard.errors import ExitStatus
from portguard.model import Holder, PortSpec, Profile, Unit
from portguard.observe import profiles
from portguard.observe.kernel import probe
from portguard.observe.observer import Observer, PortReport
from portguard.observe.procs import processes, programs
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
from portguard.observe.systemd.units import Systemd
from portguard.report import tables as report
from portguard.text import format_ports

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.report.output import Output


class PortState(NamedTuple):
    spec: PortSpec
    reports: tuple[PortReport, ...]  # one per port of the spec (ranges have several)
    foreign: tuple[Holder, ...]  # holders that stop the service's bind(), not its own
    judged: tuple[conflicts.Judgement, ...] = ()  # per report: preflight's verdict

    @property
    def free(self) -> bool:
        """bind() as the service does it would succeed on every port now."""
        return all(j.free for j in self.judged)


class ServiceState(NamedTuple):
    service: Service
    units: tuple[Unit, ...]  # the unit, or every loaded instance of a template
    ports: tuple[PortState, ...]
    units_error: str  # why unit states are unknown ("" when known)
    learned: bool = False  # not in the config: guarded on its learned profile's ports


def _own(service: Service, holder: Holder) -> bool:
    """Whether the holder runs in this service's unit (or one of its instances), or is
    PID 1 listening for the service's own .socket unit (docs/commands.md: socket activation).
    A holder this user cannot read (not root) is the service's when the kernel says the
    socket was made in the service's cgroup: never "held by another" for want of rights."""
    if holder.unit is None:
        return bool(holder.unknown_reason) and service.matches(_made_in(holder) or "")
    return service.matches(holder.unit.id) or any(
        service.matches(t) for t in holder.unit.triggers if holder.unit.id.endswith(".socket"))


def _made_in(holder: Holder) -> str | None:
    """The unit whose cgroup created the socket (sock_diag's cgroup id), read from the
    cgroup tree, which any user may read."""
    from portguard.observe.procs.cgroupfs import CgroupTree
    from portguard.observe.procs.cgroups import unit_from_cgroup
    tree = CgroupTree()
    path = tree.path_of(holder.socket.cgroup_id) if holder.socket.cgroup_id else None
    return unit_from_cgroup(path[len(tree.root):] or "/") if path else None


def service_units(service: Service, systemd: Systemd) -> tuple[Unit, ...]:
    if service.is_template:
        ids = systemd.list_units([service.instance_glob])
        return tuple(systemd.describe(uid) for uid in sorted(ids))
    return (systemd.describe(service.name),)


def collect(config: Config, observer: Observer,
            connect: Callable[[], Systemd]) -> list[ServiceState]:
    systemd: Systemd | None = None
    error = ""
    try:
        systemd = connect()
    except SystemdUnavailable as exc:
        error = exc.message
    states = []
    learned = [found[0] for unit in profiles.stored_units()
               if config.service_for(unit) is None
               and (found := profiles.learned_service(config.defaults, unit)) is not None]
    try:
        for service in (*config.services, *learned):
            units: tuple[Unit, ...] = ()
            units_error = error
            if systemd is not None:
                try:
                    units = service_units(service, systemd)
                except (SystemdUnavailable, SystemdError) as exc:
                    units_error = exc.message
            ports = []
            for spec in service.ports:
                ports.append(port_state(service, spec, observer))
            states.append(ServiceState(service, units, tuple(ports), units_error,
                                       service in learned))
    finally:
        if systemd is not None:
            systemd.close()
    return states


def port_state(service: Service, spec: PortSpec, observer: Observer) -> PortState:
    """What stops the service's bind() on each port of `spec`: preflight's own verdict
    (`conflicts.judge`), so a socket on 127.0.0.2:P does not hold 127.0.0.1:P, and a
    lingering socket counts when bind() says it does."""
    reps = tuple(observer.ports([(p, spec.proto) for p in spec.ports]))
    binds = {i.port: i for i in conflicts.intents(spec, reuse_address=service.reuse_address)}
    judged = tuple(conflicts.judge(binds[r.port], [h.socket for h in r.holders],
                                   probe.Kernel(r.holders)) for r in reps)
    foreign = tuple(h for r, j in zip(reps, judged, strict=True) for h in r.holders
                    if any(h.socket is b for b in j.blockers) and not _own(service, h)
                    and not (h.socket.inode == 0 and _held_by_itself(service, r, j)))
    return PortState(spec, reps, foreign, judged)


def _held_by_itself(service: Service, report: PortReport, judged: conflicts.Judgement,
                    ) -> bool:
    """The service (or its own activation socket) listens there: a kernel-held leftover
    that bind() cannot tell apart from it is no one else's hold on the port."""
    return any(_own(service, h) and any(h.socket is b for b in judged.blockers)
               for h in report.holders)


def unit_profile(service: Service, unit: Unit) -> tuple[Profile | None, str]:
    """The unit's profile as preflight would use it, or why there is none."""
    found = [programs.of_exec_start(line) for line in unit.exec_start]
    return profiles.for_service(unit.id, service.program, service.user,
                                processes.uid_of(unit.user), found)


def profile_doc(service: Service, unit: Unit, now: float) -> dict[str, Any]:
    profile, note = unit_profile(service, unit)
    if profile is None:
        return {"profile": None, "profile_note": note}
    return {"profile": {
        "source": profile.source, "files": list(profile.paths), "uid": profile.uid,
        "user": profile.user, "worker_users": [processes.user_name(u)
                                               for u in profile.worker_uids],
        "sockets": [{"address": s.address, "port": s.port, "proto": str(s.proto),
                     "reuse_address": s.reuse_address, "reuse_port": s.reuse_port}
                    for s in profile.sockets],
        "seen": profile.seen or None,
        "age_seconds": round(now - profile.seen) if profile.seen else None},
        "profile_note": None}


def profile_line(service: Service, unit: Unit, now: float) -> str:
    profile, note = unit_profile(service, unit)
    if profile is None:
        return f"    profile: none ({note})"
    if profile.source == "config":
        return f"    profile: {profile} (the config's program/user)"
    workers = "".join(f", workers as {processes.user_name(u)}" for u in profile.worker_uids)
    ports = format_ports((s.port, s.proto) for s in profile.sockets)
    return (f"    profile: {profile}{workers}, listening on {ports}; learned "
            f"{_age(now - profile.seen)} ago")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def any_held(states: Sequence[ServiceState]) -> bool:
    return any(p.foreign or any(j.unseen for j in p.judged) for s in states for p in s.ports)


def document(states: Sequence[ServiceState]) -> dict[str, Any]:
    now = time.time()
    services = []
    for st in states:
        ports = []
        for ps in st.ports:
            docs = [judged_doc(r, j) for r, j in zip(ps.reports, ps.judged, strict=True)]
            ports.append({"spec": str(ps.spec), "free": ps.free,
                          "held_by_others": bool(ps.foreign), "ports": docs})
        services.append({
            "service": st.service.name,
            "policy": str(st.service.policy.value),
            "ports_from": "profile" if st.learned else "config",
            "units": [{"unit": u.id, "active_state": u.active_state,
                       "sub_state": u.sub_state, "main_pid": u.main_pid or None,
                       **profile_doc(st.service, u, now)}
                      for u in st.units],
            "units_error": st.units_error or None,
            "ports": ports,
        })
    return {"services": services}


def text(states: Sequence[ServiceState]) -> str:
    if not states:
        return "no services configured"
    out: list[str] = []
    now = time.time()
    errors = {st.units_error for st in states if st.units_error}
    shared = errors.pop() if len(errors) == 1 and all(st.units_error for st in states) else ""
    if shared:  # the bus is down for everyone: say it once, not under every service
        out.append(f"unit states unknown: {shared}")
    for st in states:
        svc = st.service
        learned = "; not in the config: its ports are its profile's" if st.learned else ""
        out.append(f"{svc.name}  (policy {svc.policy.value}, on_foreign "
                   f"{svc.on_foreign.value}{learned})")
        if st.units_error:
            if not shared:
                out.append(f"  unit state unknown: {st.units_error}")
        elif not st.units:
            out.append("  no instance loaded")
        for unit in st.units:
            pid = f", main pid {unit.main_pid}" if unit.main_pid else ""
            out.append(f"  unit {unit.id}: {unit.active_state}/{unit.sub_state}{pid}")
            out.append(profile_line(svc, unit, now))
        for ps in st.ports:
            held = [r for r in ps.reports if r.holders]
            own = any(_own(svc, h) for r in ps.reports for h in r.live)
            mark = _mark(ps, own)
            out.append(f"  port {ps.spec}: {mark}")
            if held:
                out.extend("    " + line for line in report.table(held).splitlines())
    return "\n".join(out)


def _mark(ps: PortState, own: bool) -> str:
    if any(h.processes for h in ps.foreign):
        return "HELD BY ANOTHER"
    unknown = sorted({h.unknown_reason for h in ps.foreign if h.unknown_reason})
    if unknown:  # held, by whom this user cannot see: never said to be another's
        return "HELD, " + "; ".join(unknown)
    if ps.foreign:
        return "BLOCKED by lingering sockets (they expire on their own)"
    if any(j.unseen for j in ps.judged):
        return "BLOCKED: bind() refused, no socket on it visible"
    if own and all(h.processes or not h.unknown_reason for r in ps.reports for h in r.live):
        return "in use by the service"
    return "in use by the service (its cgroup made the socket; root sees the process)" \
        if own else "free"


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """`portguard status`: exit 0 when no declared port is held by another process."""
    result = collect(app.config, app.observer, app.connect_systemd)
    if out.json:
        out.document(document(result))
    else:
        out.result(text(result))
    return ExitStatus.BLOCKED if any_held(result) else ExitStatus.OK
