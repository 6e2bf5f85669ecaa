"""`portguard preflight UNIT`: clear a unit's declared ports before it starts.

config -> observe -> classify -> plan -> act -> verify -> report, in that order.

The fast path answers when every declared port is free: one sock_diag query, a glance at
the cgroup tree for a twin instance that is starting, and a bind() probe per port. It
never connects to D-Bus nor imports pystemd. Everything else runs under the per-port
locks in /run/portguard, so two guards never act on one port at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from portguard.act.lock import LockTimedOut, port_locks
from portguard.act.signals import REAL_CLOCK, Clock, wait_until
from portguard.commands import preflight_fast
from portguard.commands.preflight_execute import Executor, advice, describe_conflict
from portguard.commands.preflight_fast import on_port
from portguard.commands.preflight_stop import (
    StopRequested,
    settle,
    stop_signals,
    tell_systemd,
)
from portguard.config.schema import ALWAYS_PROTECTED, Config, Service
from portguard.config.unitnames import mangle_unit
from portguard.decide import conflicts
from portguard.decide.classify import (
    Conflict,
    Context,
    Kind,
    classify,
    own_activation,
    profile_text,
)
from portguard.decide.policy import Action, Plan, Step, plan
from portguard.errors import BlockedError, ExitStatus, PortguardError, TimedOutError
from portguard.model import BindIntent, Holder, Proto, Unit
from portguard.observe import profiles
from portguard.observe.kernel import probe, sockets
from portguard.observe.observer import PUBLISHED
from portguard.observe.procs import processes, programs
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
from portguard.observe.systemd.units import Systemd
from portguard.report.journal import Event
from portguard.report.tables import container_text

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.report.output import Output


class Preflight:
    """One preflight run for one unit; built by the CLI from the App's collaborators."""

    def __init__(self, app: App, unit: str, *, dry_run: bool = False,
                 clock: Clock = REAL_CLOCK) -> None:
        self.app = app
        self.journal = app.journal
        self.unit = mangle_unit(unit)
        self.dry_run = dry_run
        self.clock = clock
        self._systemd: Systemd | None = None
        self.plan: Plan | None = None  # what was decided (the daemon counts and flap-guards it)
        self._own_sockets = ""  # how its own .socket units hold its ports, if they do
        self._own_inodes: dict[int, int] = {}  # their sockets' inodes -> port
        self._clear = "all declared ports are free"  # what a clear record says

    # -- entry ---------------------------------------------------------------------

    def run(self) -> ExitStatus:
        cfg = self.app.config
        service = cfg.service_for(self.unit)
        clear = "all declared ports are free"
        if service is None:
            learned = profiles.learned_service(cfg.defaults, self.unit)
            if learned is None:
                self.journal.emit(Event.UNIT_NOT_CONFIGURED, f"{self.unit} is not in "
                                  f"{self.app.config_path}: nothing to check",
                                  unit=self.unit, action="none", result="pass")
                return ExitStatus.OK
            service, profile = learned  # zero-config: the ports its own runs listened on
            clear = f"all ports learned by {profile_text(profile)} are free"
        self._clear = clear
        deadline = self.clock.now() + service.timeout
        intents = [i for spec in service.ports
                   for i in conflicts.intents(spec, reuse_address=service.reuse_address)]
        ports = sorted({(i.port, i.proto) for i in intents})
        if self._fast_path_clear(service, intents, ports):
            self._report_clear(service, ports, clear)
            return ExitStatus.OK
        try:
            with port_locks(ports, timeout=max(0.0, deadline - self.clock.now()),
                            on_wait=self._waiting_for_lock):
                return self._slow_path(cfg, service, intents, ports, deadline)
        except LockTimedOut as exc:
            self.journal.emit(Event.TIMED_OUT, exc.message, unit=self.unit, action="wait",
                              result="timeout", echo=False)  # stderr gets the error itself
            raise

    def _waiting_for_lock(self, port: int, proto: Proto) -> None:
        self.journal.emit(Event.WAIT, f"{self.unit}: another portguard is acting on "
                          f"{port}/{proto}; waiting for its lock", unit=self.unit,
                          port=port, proto=str(proto), action="wait", result="locked")

    # -- fast path -----------------------------------------------------------------

    def _fast_path_clear(self, service: Service, intents: Sequence[BindIntent],
                         ports: Sequence[tuple[int, Proto]]) -> bool:
        return preflight_fast.ports_clear(self.unit, intents, service.twin_globs)

    def _starting_twins(self, service: Service) -> list[str]:
        return preflight_fast.starting_twins(self.unit, service.twin_globs)

    # -- slow path -----------------------------------------------------------------

    def _slow_path(self, cfg: Config, service: Service,
                   intents: Sequence[BindIntent],
                   ports: Sequence[tuple[int, Proto]], deadline: float) -> ExitStatus:
        systemd = self._systemd = self._connect()
        try:
            ctx = self._context(cfg, service, systemd)
            found_conflicts, bind_refused = self._observe(ctx, intents, ports)
            the_plan = self.plan = plan(service, found_conflicts, bind_refused=bind_refused)
            if not the_plan.steps:
                self._report_clear(service, ports, self._own_sockets or self._clear)
                return ExitStatus.OK
            for step in distinct(the_plan.steps):
                self._record_decision(step.conflict, step.action, step.why)
            if the_plan.refused:
                return self._refuse(service, the_plan)
            if self.dry_run:
                return self._dry_run_summary(the_plan)
            executor = Executor(self.unit, service, systemd, self.journal, clock=self.clock,
                                deadline=deadline,
                                still_held=lambda c: self._still_held(c, intents))
            executor.execute(the_plan)
            if the_plan.warned and not the_plan.acting:
                # policy warn: whatever was waited for went (else TimedOutError); the
                # holders left are tolerated, and the service tries anyway
                return ExitStatus.OK
            return self._verify(service, intents, ports, deadline)
        finally:
            if systemd is not None:
                systemd.close()

    def _connect(self) -> Systemd | None:
        try:
            return self.app.connect_systemd()
        except SystemdUnavailable as exc:
            self.journal.emit(Event.CONFLICT, f"{self.unit}: systemd's D-Bus API is "
                              f"unreachable ({exc.message}); units are named from cgroups "
                              "and no unit can be stopped", unit=self.unit, action="none",
                              result="no-dbus")
            return None

    def _context(self, cfg: Config, service: Service, systemd: Systemd | None) -> Context:
        return service_context(self.unit, service, systemd, cfg.protected)

    def _observe(self, ctx: Context, intents: Sequence[BindIntent],
                 ports: Sequence[tuple[int, Proto]],
                 ) -> tuple[list[Conflict], set[tuple[int, Proto]]]:
        """Classified conflicts on the declared ports, and the ports bind() refuses."""
        reports = self.app.observer.ports(list(ports))
        relevant: dict[int, Holder] = {}
        judgements: list[tuple[BindIntent, conflicts.Judgement]] = []
        for intent in intents:
            rep = next(r for r in reports if (r.port, r.proto) == (intent.port, intent.proto))
            judged = conflicts.judge(intent, [h.socket for h in rep.holders],
                                     probe.Kernel(rep.holders))
            judgements.append((intent, judged))
            keep = {id(s) for s in judged.blockers}
            for holder in rep.holders:
                # a published port has no socket to bind() against: its DNAT takes the
                # port's connections on the addresses it covers
                published = holder.socket.state == PUBLISHED and conflicts.overlaps(
                    intent, holder.socket)
                if id(holder.socket) in keep or published:
                    relevant[id(holder)] = holder
        found = classify(ctx, relevant.values())
        mine = [h for h in relevant.values() if h.unit and own_activation(ctx, h)]
        self._own_inodes = {h.socket.inode: h.socket.local_port for h in mine}
        if own := {h.unit.id for h in mine if h.unit}:
            self._own_sockets = (f"held only by its own activation socket ({', '.join(own)}"
                                 "), which systemd passes to it")
        # refused by bind(), unless only the unit's own activation sockets are in the way
        bind_refused = {(i.port, i.proto) for i, j in judgements if not j.free and (
            j.unseen or any(s.inode not in self._own_inodes for s in j.blockers))}
        unseen = any(j.unseen for _, j in judgements if not j.free)
        if unseen and not found:
            raise BlockedError(f"{self.unit}: bind() is refused on a declared port but no "
                               "socket on it is visible (another network namespace?)")
        return found, bind_refused

    def _still_held(self, conflict: Conflict,
                    intents: Sequence[BindIntent]) -> bool:
        """Whether the socket behind a conflict still blocks one of the service's binds."""
        if conflict.holder is None:  # a twin claiming the port: held while it is up
            return self._twin_up(conflict.unit)
        sock = conflict.holder.socket
        if sock.state == PUBLISHED and conflict.container is not None:
            from portguard.observe.containers import lookup
            return lookup.published_by(conflict.container.id, sock.local_port, sock.proto)
        current = on_port(sockets.on_ports([(sock.local_port, sock.proto)]), sock.local_port,
                           sock.proto)
        if conflict.kind is Kind.LINGERING:
            # No identity to follow: kernel-owned sockets have no inode and change state
            # (FIN_WAIT2 -> TIME_WAIT) as they go. Held while the bind would still fail.
            kernel = probe.Kernel()
            return any(not conflicts.judge(i, current, kernel).free
                       for i in intents if (i.port, i.proto) == (sock.local_port, sock.proto))
        same = [s for s in current if s.inode == sock.inode and s.local_address ==
                sock.local_address and s.state == sock.state]
        if not same:
            return False
        return any(conflicts.judge(i, same).blockers
                   for i in intents if (i.port, i.proto) == (sock.local_port, sock.proto))

    def _twin_up(self, unit: str | None) -> bool:
        if unit is None or self._systemd is None:
            return False
        try:
            return self._systemd.active_state(unit) in ("active", "activating", "reloading")
        except SystemdError:
            return False  # unloaded: gone

    # -- verify and report ---------------------------------------------------------

    def _verify(self, service: Service, intents: Sequence[BindIntent],
                ports: Sequence[tuple[int, Proto]], deadline: float) -> ExitStatus:
        """The ports must be free now: sockets say so and the kernel agrees (but for the
        unit's own activation sockets, which stay)."""
        own = self._own_inodes

        def judged() -> list[conflicts.Judgement]:
            found = [s for s in sockets.on_ports(ports) if s.inode not in own]
            kernel = probe.Kernel()
            return [conflicts.judge(i, on_port(found, i.port, i.proto), kernel)
                    for i in intents if i.port not in own.values()]

        def clear() -> bool:
            return all(j.free for j in judged())

        if wait_until(clear, deadline, self.clock):
            self._report_clear(service, ports, "ports cleared")
            return ExitStatus.OK
        found = sockets.on_ports(ports)
        if not any(s.inode for j in judged() for s in j.blockers):
            # No live socket left, yet bind() fails: lingering sockets whose own socket did
            # not set SO_REUSEADDR. They expire on their own: this is a wait that timed
            # out, as when it was planned.
            detail = "; ".join(f"{s.state} {s.local_address}:{s.local_port}" for s in found
                               if s.inode == 0) or "lingering sockets"
            self.journal.emit(Event.TIMED_OUT, f"{self.unit}: timed out waiting for "
                              f"lingering sockets to expire: {detail}", unit=self.unit,
                              action="wait", result="timeout", echo=False)
            raise TimedOutError(f"{self.unit}: bind() still refused after "
                                f"{service.timeout:.1f}s by lingering sockets ({detail}): "
                                "they expire on their own; try again later")
        reports = self.app.observer.ports(list(ports))
        named = [describe_holder(h) for r in reports for h in (r.live or r.holders)]
        detail = "; ".join(named) or "a socket portguard cannot see"
        self.journal.emit(Event.REFUSED, f"{self.unit}: ports still held after acting: "
                          f"{detail}", unit=self.unit, action="refuse", result="still-held")
        raise BlockedError(f"{self.unit}: a declared port is still held after acting "
                           f"({detail}); not retrying, to avoid a fight")

    def _record_decision(self, conflict: Conflict, action: Action, why: str) -> None:
        verb = "would " if self.dry_run and action not in (Action.REFUSE, Action.NONE) else ""
        self.journal.emit(
            Event.CONFLICT,
            f"{self.unit}: {conflict.port}/{conflict.proto}: {describe_conflict(conflict)}; "
            f"{verb}{action.value}: {why}",
            unit=self.unit, port=conflict.port, proto=str(conflict.proto),
            holder_pid=conflict.pids[0] if conflict.pids else None,
            holder_unit=conflict.unit, holder_kind=str(conflict.kind),
            holder_container=conflict.container,
            action=action.value, result="dry-run" if self.dry_run else "planned")

    def _refuse(self, service: Service, the_plan: Plan) -> ExitStatus:
        lines = []
        for step in distinct(the_plan.refused):
            c = step.conflict
            lines.append(f"{c.port}/{c.proto} is held by {describe_conflict(c)}; "
                         f"{step.why}. {advice(service, c)}")
            self.journal.emit(Event.REFUSED, f"{self.unit} refused: {lines[-1]}",
                              unit=self.unit, port=c.port, proto=str(c.proto),
                              holder_pid=c.pids[0] if c.pids else None, holder_unit=c.unit,
                              holder_kind=str(c.kind), holder_container=c.container,
                              action="refuse", result="blocked",
                              echo=False)  # the error below says the same on stderr
        raise BlockedError(f"{self.unit} cannot start: " + " | ".join(lines))

    def _dry_run_summary(self, the_plan: Plan) -> ExitStatus:
        self.journal.emit(Event.CONFLICT, f"{self.unit}: dry run: would stop or signal "
                          f"{len(the_plan.acting)} and wait for {len(the_plan.waiting)} "
                          "holder(s); nothing touched", unit=self.unit,
                          action="none", result="dry-run")
        return ExitStatus.OK

    def _report_clear(self, service: Service, ports: Iterable[tuple[int, Proto]],
                      how: str) -> None:
        preflight_fast.report_clear(self.journal, self.unit, ports, how)


def service_context(unit: str, service: Service, systemd: Systemd | None,
                    protected: Sequence[str]) -> Context:
    """What classification needs about `unit` (`portguard why` builds one too): its unit
    and ExecStart= from systemd, its twins that are up, portguard's own pids."""
    unit_info: Unit | None = None
    twins: list[Unit] = []
    if systemd is not None:
        unit_info = systemd.describe(unit)
        globs = service.twin_globs
        if globs:
            for uid in systemd.list_units(globs):
                if uid != unit:
                    try:
                        twins.append(systemd.describe(uid))
                    except SystemdError:
                        continue  # unloaded meanwhile
    found = [programs.of_exec_start(line) for line in
             (unit_info.exec_start if unit_info is not None else ())]
    # Without D-Bus the unit's User= is unknown, not root: nothing is a stray then
    # unless systemd could say whose it is (classify: unknown user -> foreign).
    unit_uid = processes.uid_of(unit_info.user) if unit_info is not None else None
    profile, note = profiles.for_service(unit, service.program, service.user, unit_uid,
                                         found)
    return Context(
        unit=unit,
        service=service,
        unit_info=unit_info,
        unit_uid=unit_uid,
        profile=profile,
        profile_note=note,
        protected_units=(*ALWAYS_PROTECTED, *protected),
        own_pids=processes.ancestors(),
        own_pid_namespace=processes.pid_namespace(),
        claiming_twins=tuple(twins),
        unit_programs=tuple(p for p in found if p is not None),
    )


def distinct(steps: Iterable[Step]) -> list[Step]:
    """One step per holder and port, for records and messages: a daemon listening on
    0.0.0.0:P and [::]:P is two sockets (two conflicts, two steps), but one holder a person
    hears about once. The first step is kept (a twin's StopUnit over "already planned")."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for step in steps:
        c = step.conflict
        # a container is one holder however many helpers hold the port for it (docker
        # runs a docker-proxy per address family)
        key = (c.port, c.proto, c.kind, c.unit, c.container.id if c.container else c.pids)
        if c.pids or c.unit or c.container:  # sockets nobody owns (TIME_WAIT): each its own
            if key in seen:
                continue
            seen.add(key)
        out.append(step)
    return out


def describe_holder(holder: Holder) -> str:
    sock = holder.socket
    if not holder.processes:
        what = f"{sock.state} socket {sock.local_address}:{sock.local_port}"
        return what + (f" ({container_text(holder.container)})" if holder.container else "")
    p = holder.processes[0]
    unit = f" in {holder.unit.id}" if holder.unit else " outside any unit"
    container = f" ({container_text(holder.container)})" if holder.container else ""
    return f"pid {p.pid} ({p.program}){unit}{container}"


__all__ = ["Preflight", "TimedOutError", "advice", "describe_holder", "service_context"]


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """`portguard preflight UNIT [--dry-run]`; with --json, the decisions as one document."""
    status, error = ExitStatus.OK, ""
    try:
        try:
            with stop_signals():
                status = Preflight(app, args.unit, dry_run=args.dry_run).run()
        except StopRequested as stop:
            unit = mangle_unit(args.unit)
            status = settle(unit, stop, app.connect_systemd, lambda said: app.journal.emit(
                Event.WAIT, said, unit=unit, action="none", result="stopped"))
        return status
    except PortguardError as exc:
        status = exc.exit_status
        error = exc.message
        raise
    except BaseException:
        status = ExitStatus.BLOCKED  # the CLI fails closed on the rest
        raise
    finally:
        tell_systemd(status, error)
        if out.json:
            out.document({"unit": args.unit, "exit_status": int(status),
                          "dry_run": args.dry_run,
                          "records": [r.all_fields() for r in app.journal.history]})
