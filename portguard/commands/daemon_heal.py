"""Resolve what a pass found, by reusing Preflight; remember what outlives a pass.

For a unit whose verdict is `act` (see portguard.commands.daemon_survey), the flap guard is
asked first with (unit, holder identity) for each holder: a pair resolved `flap_limit` times within
`flap_window` is not fought (DAEMON_FLAPPING, once) until the window has passed. Then
`Preflight(app, unit).run()`: the same classification, policy, locks and actions as the
`ExecStartPre=` guard; a PortguardError is a refusal, journaled once for the same unit and
holders. With `daemon.restart: true` a failed unit whose ports are clear is reset and
started again. A `report` verdict is classified by a Preflight dry run whose own records
stay out of the journal, and told once.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from portguard.act.units import UnitControl
from portguard.app import App
from portguard.commands.daemon_survey import (
    Check,
    analyse,
    flap_keys,
    holder_identity,
    observe,
    wants_port,
)
from portguard.commands.preflight import Preflight, describe_holder
from portguard.commands.preflight_execute import describe_conflict
from portguard.config.schema import Config
from portguard.decide.policy import Action, Plan
from portguard.errors import PortguardError, TimedOutError
from portguard.model import Holder, Usage
from portguard.observe.systemd.units import Systemd
from portguard.report.journal import Event, Journal, Priority

if TYPE_CHECKING:
    from pathlib import Path

    from portguard.decide.flap import FlapGuard
    from portguard.report.metrics import PortSample, Snapshot

_DONE = {Action.STOP: "stopped", Action.SIGNAL: "signalled", Action.WAIT: "waited out"}
Told = tuple[str, str, frozenset[str]]  # (verdict, unit or service, holder identities)


class Interrupted(BaseException):
    """Raised (from the daemon's SIGTERM handler) to abandon a pass at once. Not an
    Exception, so nothing on the way catches it."""


class Outcome(NamedTuple):
    service: str
    unit: str
    state: str  # resolved | refused | flapping | reported | gone
    text: str  # for STATUS


class PassResult(NamedTuple):
    units: int
    outcomes: tuple[Outcome, ...]
    samples: tuple[PortSample, ...]
    dbus_error: str  # why unit states were unknown this pass ("" when known)


class PassApp(App):
    """The App a pass hands to Preflight: the daemon's accepted config (never re-read from
    disk mid-run), its one bus connection, and a fresh Observer (no pid->unit cache from
    an earlier pass, where pids may have been reused)."""

    def __init__(self, config: Config, path: Path, journal: Journal,
                 connect: Callable[[], Systemd]) -> None:
        super().__init__(path, journal=journal, connect_systemd=connect)
        self._accepted = config

    @property
    def config(self) -> Config:
        return self._accepted


class Reconciler:
    """Passes, and what outlives one: the flap guard, counters, conflicts already told."""

    def __init__(self, journal: Journal, flap: FlapGuard, *, cgroup_root: str,
                 hold: Callable[[float], None] = lambda seconds: None,
                 should_stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.journal = journal
        self.flap = flap
        self.cgroup_root = cgroup_root
        self.hold = hold  # "this step may take up to N s" (keeps the watchdog fed)
        self.should_stop = should_stop
        self.clock = clock
        self.resolved_total: dict[str, int] = {}
        self.refused_total: dict[str, int] = {}
        self.told: dict[Told, tuple[float, str]] = {}  # told once: when, and as what
        self.kinds: dict[int, str] = {}  # socket inode -> kind a plan gave it

    def run(self, config: Config, path: Path, systemd: Systemd | None,
            connect: Callable[[], Systemd]) -> PassResult:
        window, start = config.daemon.flap_window, self.clock()
        self.told = {k: t for k, t in self.told.items() if start - t[0] < window}
        facts, dbus_error = observe(config, systemd, self.cgroup_root)
        checks = analyse(config, facts)
        app = PassApp(config, path, self.journal, connect)
        outcomes: list[Outcome] = []
        seen: set[Told] = set()
        for check in checks:
            if self.should_stop():
                raise Interrupted
            if check.verdict == "ok":
                continue
            failed: Told = ("error", check.unit.id, frozenset())
            if failed in self.told:  # it failed before: tried again after flap_window
                seen.add(failed)
                outcomes.append(Outcome(check.service.name, check.unit.id, "refused",
                                        f"{check.unit.id}: failed, see the journal"))
                continue
            try:
                outcome = self._handle(app, config, check, systemd, seen)
            except Exception as exc:  # the bus went away, or a bug: one unit's problem
                seen.add(failed)  # must not stop the guard, nor fill the journal
                self.told[failed] = (self.clock(), "failed")
                outcome = self._refused(check, check.unit.id, exc, None)
            if outcome is not None:
                outcomes.append(outcome)
        # Forget what was told only once its holders are gone: a unit that flips between
        # auto-restart (act) and failed (report) with the same holders was told already.
        holders_seen = {k[2] for k in seen if k[2]}
        self.told = {k: t for k, t in self.told.items()
                     if k in seen or k[2] in holders_seen}
        live = {b.socket.inode for c in checks for p in c.ports for b in p.blockers}
        self.kinds = {i: k for i, k in self.kinds.items() if i in live}
        self.journal.history.clear()  # a long-lived process must not keep every record
        return PassResult(len(checks), tuple(outcomes), self._samples(checks), dbus_error)

    def _handle(self, app: App, config: Config, check: Check, systemd: Systemd | None,
                seen: set[Told]) -> Outcome | None:
        unit, service = check.unit.id, check.service
        holders = self._holders(app, check)
        if not holders:  # gone since the sockets were read, or lingering sockets only:
            return None  # those expire by themselves, there is nothing to fight
        who = frozenset(holder_identity(h.unit.id if h.unit else None, h.processes)
                        for h in holders)
        sig = (check.verdict, unit if check.verdict == "act" else service.name, who)
        seen.add(sig)
        text = f"{unit}: " + "; ".join(sorted(
            f"{h.socket.local_port}/{h.socket.proto} held by {describe_holder(h)}"
            for h in holders))
        if check.verdict == "report":
            acted = self.told.get(("act", unit, who))
            if acted is not None and acted[1] == "refused":
                # a Restart= unit between two attempts (briefly active, or failed): what
                # the guard did about these holders is still the story
                return Outcome(service.name, unit, "refused", f"{text}, refused")
            if sig not in self.told:
                self.told[sig] = (self.clock(), "not acted on")
                self._report(app, check, holders)
            return Outcome(service.name, unit, "reported", text + ", not acted on")
        keys = flap_keys(unit, holders)
        if any(self.flap.tripped(k) for k in keys):
            return Outcome(service.name, unit, "flapping", f"{unit} vs {_others(keys)}")
        if sig in self.told:
            state, how = ("reported", self.told[sig][1]) if "warn" in self.told[sig][1] \
                else ("refused", "refused")
            return Outcome(service.name, unit, state, f"{text}, {how}")
        for key in keys:  # before acting: at most flap_limit resolutions per window
            if not self.flap.record(key):
                self._flapping(config, check, key)
                return Outcome(service.name, unit, "flapping", f"{unit} vs {key[1]}")
        self.hold(2 * service.timeout + 10)
        preflight = Preflight(app, unit)
        try:
            preflight.run()
        except PortguardError as exc:
            self.told[sig] = (self.clock(), "refused")
            return self._refused(check, text, exc, preflight.plan)
        return self._resolved(config, check, preflight.plan, systemd=systemd, text=text,
                              sig=sig)

    def _holders(self, app: App, check: Check) -> list[Holder]:
        inodes = {b.socket.inode for b in check.blocking() if b.socket.inode}
        ports = sorted({(p.port, p.proto) for p in check.ports if p.blockers})
        return [h for r in app.observer.ports(ports) for h in r.holders
                if h.socket.inode in inodes]

    def _resolved(self, config: Config, check: Check, plan: Plan | None, *,
                  systemd: Systemd | None, text: str,
                  sig: Told) -> Outcome:
        unit, service = check.unit.id, check.service
        steps = [s for s in (plan.steps if plan else ()) if s.action in
                 (Action.STOP, Action.SIGNAL, Action.WAIT)]
        if plan is not None and plan.warned and not steps:  # policy warn: tell it once
            self.told[sig] = (self.clock(), "tolerated (policy warn)")
            return Outcome(service.name, unit, "reported", text + ", tolerated (policy warn)")
        for step in steps:
            c = step.conflict
            if c.holder is not None:
                self.kinds[c.holder.socket.inode] = str(c.kind)
            self.journal.emit(
                Event.DAEMON_RESOLVED, f"{unit} ({check.unit.active_state}/"
                f"{check.unit.sub_state}): {c.port}/{c.proto} cleared: "
                f"{_DONE[step.action]} {describe_conflict(c)}", unit=unit, port=c.port,
                proto=str(c.proto), holder_pid=c.pids[0] if c.pids else None,
                holder_unit=c.unit, holder_kind=str(c.kind), holder_container=c.container,
                action=step.action.value,
                result="resolved")
        if steps:
            self.resolved_total[service.name] = self.resolved_total.get(service.name, 0) + 1
        if config.daemon.restart and check.unit.active_state == "failed" and systemd:
            self._restart(check, systemd)  # ports are clear: Preflight verified them
        return Outcome(service.name, unit, "resolved" if steps else "gone",
                       text + (", resolved" if steps else ", gone by itself"))

    def _restart(self, check: Check, systemd: Systemd) -> None:
        unit = check.unit.id
        self.hold(check.service.timeout + 10)
        try:
            control = UnitControl(systemd)
            control.reset_failed(unit)  # so a start rate limit it hit does not refuse us
            job = control.start(unit, timeout=check.service.timeout)
            result, detail = job.result, f"job {job.result}"
        except PortguardError as exc:
            result, detail = "error", exc.message
        self.journal.emit(Event.DAEMON_RESTARTED, f"{unit} was failed; its ports are clear:"
                          f" started it again ({detail})", unit=unit, result=result,
                          priority=None if result == "done" else Priority.WARNING)

    def _refused(self, check: Check, text: str, exc: BaseException,
                 plan: Plan | None) -> Outcome:
        unit, service = check.unit.id, check.service
        told = {r.event for r in self.journal.history if r.fields.get("PORTGUARD_UNIT") == unit}
        timed_out = isinstance(exc, TimedOutError)
        event = Event.TIMED_OUT if timed_out else Event.REFUSED
        if event not in told:  # Preflight journals most refusals itself
            why = exc.message if isinstance(exc, PortguardError) else repr(exc)
            self.journal.emit(event, f"{unit}: the daemon leaves this conflict: {why}",
                              unit=unit, action="refuse",
                              result="timeout" if timed_out else "blocked")
        for step in plan.steps if plan else ():
            if step.conflict.holder is not None:
                self.kinds[step.conflict.holder.socket.inode] = str(step.conflict.kind)
        self.refused_total[service.name] = self.refused_total.get(service.name, 0) + 1
        return Outcome(service.name, unit, "refused", text + ", refused")

    def _report(self, app: App, check: Check, holders: Sequence[Holder]) -> None:
        """Tell a conflict the daemon does not act on; classify it by a Preflight dry run
        whose own records are kept out of the journal (they would read as decisions)."""
        unit = check.unit.id
        quiet = PassApp(app.config, app.config_path,
                        Journal(socket_path="", stream=io.StringIO(), echo=False),
                        app.connect_systemd)
        dry = Preflight(quiet, unit, dry_run=True)
        plan = None
        if check.unit.id != check.service.name or not check.service.is_template:
            self.hold(check.service.timeout + 10)
            with contextlib.suppress(PortguardError):  # a refusal: the plan is still there
                dry.run()
            plan = dry.plan
        for c in plan.steps if plan else ():
            if c.conflict.holder is not None:
                self.kinds[c.conflict.holder.socket.inode] = str(c.conflict.kind)
        why = (f"{unit} is {check.unit.active_state or 'of unknown state'} and does not want"
               " its ports now" if not wants_port(check.unit) else "systemd's state unknown")
        for h in holders:
            kind = self.kinds.get(h.socket.inode) or _blocker_kind(check, h)
            self.journal.emit(
                Event.CONFLICT, f"{unit}: {h.socket.local_port}/{h.socket.proto} is held by "
                f"{describe_holder(h)} [{kind}]; not acted on: {why}", unit=unit,
                port=h.socket.local_port, proto=str(h.socket.proto),
                holder_pid=h.processes[0].pid if h.processes else None,
                holder_unit=h.unit.id if h.unit else None, holder_kind=kind,
                holder_container=h.container, action="none",
                result="reported")

    def _flapping(self, config: Config, check: Check, key: tuple[str, str]) -> None:
        d = config.daemon
        self.journal.emit(
            Event.DAEMON_FLAPPING, f"{key[0]} vs {key[1]}: resolved {d.flap_limit} time(s)"
            f" within {_seconds(d.flap_window)} and back again: reported, no longer fought"
            f" until {_seconds(d.flap_window)} pass", unit=key[0],
            holder_unit=key[1] if key[1].endswith(".service") else None, action="refuse",
            result="flapping")

    def snapshot(self, config: Config, result: PassResult, took: float, at: float,
                 own: Usage | None = None) -> Snapshot:
        """The metrics file's content after a pass (`own`: the daemon's own cost)."""
        from portguard.report.metrics import Snapshot
        names = [s.name for s in config.services]
        tripped = {k[0] for k in self.flap.tripped_keys() if isinstance(k, tuple)}
        return Snapshot(result.samples, {s: self.resolved_total.get(s, 0) for s in names},
                        {s: self.refused_total.get(s, 0) for s in names},
                        {s.name: any(s.matches(u) for u in tripped) for s in config.services},
                        took, at, len(names), own)

    def _samples(self, checks: Sequence[Check]) -> tuple[PortSample, ...]:
        from portguard.report.metrics import PortSample
        out = []
        for check in checks:
            for p in check.ports:
                b = next((b for b in p.blockers if b.kind != "self"), None) or \
                    (p.blockers[0] if p.blockers else None)
                kind = "" if b is None else (self.kinds.get(b.socket.inode, "unknown")
                                             if b.kind == "other" else b.kind)
                out.append(PortSample(check.service.name, check.unit.id, p.port,
                                      str(p.proto), b is not None, kind))
        return tuple(out)


def _blocker_kind(check: Check, holder: Holder) -> str:
    kind = next((b.kind for p in check.ports for b in p.blockers
                 if b.socket.inode == holder.socket.inode), "other")
    return "unknown" if kind == "other" else kind


def _others(keys: Sequence[tuple[str, str]]) -> str:
    return ", ".join(k[1] for k in keys)


def _seconds(value: float) -> str:
    return f"{value / 60:g}m" if value >= 60 else f"{value:g}s"
