"""Carry out a preflight plan: stop twins, signal strays and remnants, wait; journal each.

Split from preflight.py, which decides; this module only executes what was decided and
records every action with its result.
"""

from __future__ import annotations

from collections.abc import Callable

from portguard.act.signals import Clock, SignalOutcome, signal_process, wait_until
from portguard.act.units import UnitControl, stop_twin
from portguard.config.schema import Service
from portguard.decide.classify import Conflict, Kind
from portguard.decide.policy import Action, Plan, Step
from portguard.errors import BlockedError, TimedOutError
from portguard.observe.procs.cgroups import container_scope
from portguard.observe.systemd.bus_signals import JOB_GONE
from portguard.observe.systemd.units import Systemd
from portguard.report.journal import Event, Journal
from portguard.report.tables import container_text
from portguard.text import command, shown, systemctl


def describe_conflict(c: Conflict) -> str:
    """`pid 1234 (webd, user www-data) in web@blue.service [twin: ...]` for messages."""
    unit = c.holder.unit if c.holder is not None else None
    if unit is not None and unit.id.endswith(".socket") and 1 in c.pids:
        return f"PID 1 (systemd) for {unit.id} [{c.kind}: {c.reason}]"
    if c.processes:
        p = c.processes[0]
        others = f" and {len(c.processes) - 1} more" if len(c.processes) > 1 else ""
        who = f"pid {p.pid}{others} ({p.program}, user {p.user or p.uid})"
    elif c.holder is not None:
        sock = c.holder.socket
        who = f"a {sock.state} socket" + (f" ({c.holder.unknown_reason})"
                                          if c.holder.unknown_reason else "")
    else:
        who = "not listening yet"
    where = f" in {c.unit}" if c.unit else ""
    if c.container is not None:
        # the container's own scope (libpod-conmon-<64 hex>.scope) only repeats its id
        own_scope = c.unit is not None and container_scope(c.unit) is not None
        where = ("" if own_scope else where) + f" ({container_text(c.container)})"
    return f"{who}{where} [{c.kind}: {c.reason}]"


def advice(service: Service, conflict: Conflict) -> str:
    """What a person can do about a refusal; a command only where its words could be
    built (`text.command`), never from a name others chose."""
    if conflict.container is not None:  # its runtime's command, never its conmon's pid
        stop = conflict.container.stop_command or "with its runtime"
        return (f"Stop it ({stop}), move {service.name} to "
                "another port, or set on_foreign: wait to wait for it.")
    if conflict.unit == "init.scope":  # PID 1 for a socket unit D-Bus could not name
        return ("Find the socket unit that listens there with `systemctl list-sockets` and "
                f"stop it, or move {service.name} to another port.")
    if conflict.kind is Kind.FOREIGN:
        target = systemctl("stop", conflict.unit) if conflict.unit else (
            command("kill", str(conflict.pids[0])) if conflict.pids else "")
        target = target or "stop it yourself"
        if conflict.unit and conflict.unit.endswith(".socket") and conflict.holder and \
                conflict.holder.unit and conflict.holder.unit.triggers:
            target += (f"; {shown(', '.join(conflict.holder.unit.triggers))} holds the port "
                       "too while it runs")
        return (f"Stop it ({target}), move {service.name} to another port, or set "
                "on_foreign: wait to wait for it.")
    if conflict.untouchable:
        return "portguard never touches it; stop it yourself or change the port."
    return f"Stop it yourself, or set policy: stop for {service.name} to let portguard do it."


class Executor:
    def __init__(self, unit: str, service: Service, systemd: Systemd | None,
                 journal: Journal, *, clock: Clock, deadline: float,
                 still_held: Callable[[Conflict], bool]) -> None:
        self.unit = unit
        self.service = service
        self.systemd = systemd
        self.journal = journal
        self.clock = clock
        self.deadline = deadline
        self.still_held = still_held

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock.now())

    def execute(self, the_plan: Plan) -> None:
        for step in the_plan.warned:
            self._emit(Event.WARNED, step, f"conflict tolerated: {step.why}", "tolerated")
        signalled: set[int] = set()
        for step in the_plan.acting:
            if step.action is Action.STOP:
                self._stop_unit(step)
            else:
                self._signal(step, signalled)
        if the_plan.waiting:
            self._wait([s.conflict for s in the_plan.waiting], the_plan.waiting[0])

    # -- twin units ---------------------------------------------------------------

    def _stop_unit(self, step: Step) -> None:
        unit = step.conflict.unit or ""
        if self.systemd is None:
            self._emit(Event.REFUSED, step, f"cannot stop {unit}: systemd's D-Bus API is "
                       "unreachable (never falling back to signals for a unit)", "no-dbus",
                       action=Action.REFUSE)
            raise BlockedError(f"{self.unit}: {unit} holds a declared port and must be "
                               "stopped through systemd, whose D-Bus API is unreachable")
        held = step.conflict.holder is not None
        done = stop_twin(UnitControl(self.systemd), unit, kill_after=self.service.kill_after,
                         deadline=self.deadline, clock=self.clock,
                         still_held=(lambda: self.still_held(step.conflict)) if held else None)
        for phase, why in done.kills:
            if phase == "stopping":
                self._emit(Event.KILL, step, f"{why}: KillUnit SIGKILL", "killed",
                           action=Action.KILL)
        if isinstance(done.error, TimedOutError):
            self._emit(Event.TIMED_OUT, step, f"{unit} did not stop even after SIGKILL",
                       "timeout")
            raise TimedOutError(f"{self.unit}: {done.error.message}") from done.error
        if done.error is not None and done.job is None:
            self._emit(Event.REFUSED, step, f"StopUnit {unit} refused: {done.error.message}",
                       "stop-refused", action=Action.REFUSE)
            raise done.error
        job = done.job
        assert job is not None
        self._emit(Event.STOP_UNIT, step, f"StopUnit {unit}: job {job.result}", job.result)
        if job.result not in ("done", JOB_GONE):
            raise BlockedError(f"{self.unit}: stopping {unit} failed (job {job.result})")
        for phase, why in done.kills:
            if phase == "holding":
                self._emit(Event.KILL, step, f"{why}: KillUnit SIGKILL", "killed",
                           action=Action.KILL)
        if done.error is not None:
            raise done.error
        if not done.released:
            raise BlockedError(f"{self.unit}: {unit} still holds the port after SIGKILL")

    # -- remnants and strays -----------------------------------------------------

    def _signal(self, step: Step, signalled: set[int]) -> None:
        c = step.conflict
        inode = c.holder.socket.inode if c.holder else 0
        for proc in c.processes:
            if proc.pid in signalled:
                continue
            signalled.add(proc.pid)
            outcome = signal_process(proc, inode, self.service.signal,
                                     kill_after=self.service.kill_after,
                                     deadline=self.deadline, clock=self.clock)
            self._record_signal(step, outcome)

    def _record_signal(self, step: Step, outcome: SignalOutcome) -> None:
        pid = outcome.pid
        if outcome.result == "identity-changed":
            self._emit(Event.IDENTITY_CHANGED, step, f"pid {pid}: identity changed: "
                       f"{outcome.detail}", outcome.result, pid=pid, action=Action.NONE)
            return
        if outcome.signalled:
            self._emit(Event.SIGNAL, step, f"sent {outcome.signalled[0]} to pid {pid} "
                       "through a pidfd", outcome.result, pid=pid)
        if "SIGKILL" in outcome.signalled:
            self._emit(Event.KILL, step, f"pid {pid}: {outcome.detail}", outcome.result,
                       pid=pid, action=Action.KILL)
        if not outcome.signalled:
            self._emit(Event.SIGNAL, step, f"pid {pid}: {outcome.detail}", outcome.result,
                       pid=pid, action=Action.NONE)
        if outcome.result == "still-running":
            raise BlockedError(f"{self.unit}: pid {pid} {outcome.detail}")
        if outcome.result == "unverified":
            raise BlockedError(f"{self.unit}: pid {pid}: {outcome.detail}")

    # -- waiting --------------------------------------------------------------------

    def _wait(self, conflicts: list[Conflict], first: Step) -> None:
        n = len(conflicts)
        what = (f"{'a' if n == 1 else n} lingering socket{'s' if n > 1 else ''} to expire"
                if all(c.kind == "lingering" for c in conflicts)
                else f"{'the holder' if n == 1 else f'{n} holders'} to go away")
        self._emit(Event.WAIT, first, f"waiting up to {self.remaining():.1f}s for {what}",
                   "waiting")
        gone = wait_until(lambda: not any(self.still_held(c) for c in conflicts),
                          self.deadline, self.clock)
        if not gone:
            left = [c for c in conflicts if self.still_held(c)] or conflicts
            if all(c.kind == "lingering" for c in left):
                # kernel-held leftovers: name them; they expire on their own
                detail = "; ".join(sorted({f"{c.holder.socket.state} "
                                           f"{c.holder.socket.local_address}:{c.port}"
                                           for c in left if c.holder is not None}))
                self._emit(Event.TIMED_OUT, first, "timed out waiting for lingering sockets "
                           f"to expire: {detail}", "timeout", action=Action.WAIT)
                raise TimedOutError(f"{self.unit}: bind() still refused after "
                                    f"{self.service.timeout:.1f}s by lingering sockets "
                                    f"({detail}): they expire on their own; try again later")
            self._emit(Event.TIMED_OUT, first, f"timed out after {self.service.timeout:.1f}s "
                       "waiting for the port", "timeout", action=Action.WAIT)
            raise TimedOutError(f"{self.unit}: still held after waiting "
                                f"{self.service.timeout:.1f}s: {describe_conflict(first.conflict)}")
        self._emit(Event.WAIT, first, "the holder(s) went away", "gone")

    def _emit(self, event: Event, step: Step, text: str, result: str, *,
              pid: int | None = None, action: Action | None = None) -> None:
        c = step.conflict
        self.journal.emit(
            event, f"{self.unit}: {c.port}/{c.proto}: {text}", unit=self.unit, port=c.port,
            proto=str(c.proto), holder_pid=pid if pid is not None else
            (c.pids[0] if c.pids else None), holder_unit=c.unit, holder_kind=str(c.kind),
            holder_container=c.container, action=(action or step.action).value, result=result)
