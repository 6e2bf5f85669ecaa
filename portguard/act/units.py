"""Changes to systemd units: jobs (StopUnit, StartUnit), KillUnit, Reload, ResetFailedUnit.

Everything that changes a unit goes through `UnitControl`, which speaks over the
connection `observe.systemd.units.Systemd` holds (the one pystemd module) with its typed
primitives. Jobs are followed through the Manager's JobRemoved signal, bounded by the
caller's timeout. `stop_twin` is the whole stop of a twin unit by policy `stop`
(docs/commands.md): StopUnit, KillUnit SIGKILL after `kill_after`, and a bounded wait for
the port; it returns what it did so that the caller journals every step.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from portguard.act.signals import Clock, wait_until
from portguard.errors import PortguardError, TimedOutError
from portguard.observe.systemd.bus_signals import JOB_GONE, MANAGER, PATH, JobResult
from portguard.observe.systemd.dbus_errors import (
    CALL_TIMEOUT,
    NO_SUCH_UNIT,
    RELOAD_DAEMON,
    SystemdError,
    SystemdUnavailable,
    as_text,
    dbus_error_name,
)
from portguard.observe.systemd.units import DRAIN, Systemd, single_value
from portguard.records import NamedTuple

GONE_CHECK = 0.5  # seconds: how often a job that stays silent is looked up


class ManagerCalls(Protocol):
    """The one primitive a plain manager method needs (`Systemd.call`; tests fake it)."""

    def call(self, path: bytes, iface: bytes, method: bytes, sig: bytes,
             values: list[Any], *, action: str = ..., what: str = "") -> Any: ...


def reload(systemd: ManagerCalls) -> None:
    """daemon-reload. systemd replies once the reload is done, so this returns then;
    bounded by sd-bus's method call timeout (25 s, or $SYSTEMD_BUS_TIMEOUT)."""
    try:
        systemd.call(PATH, MANAGER, b"Reload", b"", [], action=RELOAD_DAEMON,
                     what="reload its configuration")
    except SystemdUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, Exception) and dbus_error_name(cause) in CALL_TIMEOUT:
            raise TimedOutError("systemd did not finish daemon-reload within the D-Bus "
                                "call timeout (25 s unless $SYSTEMD_BUS_TIMEOUT says)"
                                ) from exc
        raise


class UnitControl:
    """systemd's manager methods that change units, over one `Systemd` connection."""

    def __init__(self, systemd: Systemd) -> None:
        self.systemd = systemd

    def stop(self, unit: str, *, timeout: float) -> JobResult:
        """StopUnit(unit, "replace") and wait, at most `timeout` s, for its job to end."""
        return self._job(b"StopUnit", unit, timeout, "stop")

    def start(self, unit: str, *, timeout: float) -> JobResult:
        """StartUnit(unit, "replace") and wait, at most `timeout` s, for its job to end."""
        return self._job(b"StartUnit", unit, timeout, "start")

    def kill(self, unit: str, signo: int, whom: str = "all") -> None:
        """KillUnit: send `signo` to the unit's processes (whom: main, control, all)."""
        self.systemd.call(PATH, MANAGER, b"KillUnit", b"ssi", [unit.encode(), whom.encode(),
                                                              signo], what=f"kill {unit}")

    def reset_failed(self, unit: str) -> None:
        """ResetFailedUnit: forget a failed state and the start rate limit's count."""
        self.systemd.call(PATH, MANAGER, b"ResetFailedUnit", b"s", [unit.encode()],
                          what=f"reset the failed state of {unit}")

    def reload(self) -> None:
        reload(self.systemd)

    def _job(self, method: bytes, unit: str, timeout: float, verb: str) -> JobResult:
        sd = self.systemd
        deadline = time.monotonic() + timeout
        sd.watch_jobs()
        reply = sd.call(PATH, MANAGER, method, b"ss", [unit.encode(), b"replace"],
                        what=f"{verb} {unit}")
        job = as_text(single_value(reply))
        # Its JobRemoved may already sit in the queue (it can come in with the reply).
        look_again = time.monotonic() + GONE_CHECK
        while True:
            sd.pump(None)
            if (done := sd.finished_job(job)) is not None:
                return done
            now = time.monotonic()
            if now >= deadline:
                raise TimedOutError(f"systemd did not {verb} {unit} within {timeout:.1f}s "
                                    f"(its job {job} is still queued or running)")
            if now >= look_again:
                look_again = now + GONE_CHECK
                if not sd.job_exists(job):  # the call queued any earlier JobRemoved
                    for _ in range(DRAIN):
                        sd.pump(None)
                        if (done := sd.finished_job(job)) is not None:
                            return done
                    return JobResult(job, unit, JOB_GONE)
            sd.pump(min(deadline, look_again) - now)


class TwinStop(NamedTuple):
    """What `stop_twin` did, in order, for the journal. `kills`: (phase, why) for each
    KillUnit SIGKILL, phase "stopping" (the stop job outlived kill_after) or "holding"
    (stopped, yet the port still held after kill_after). `error`: what ended it early."""

    unit: str
    job: JobResult | None
    kills: tuple[tuple[str, str], ...] = ()
    error: PortguardError | None = None
    released: bool = True  # the port was let go (False: still held after SIGKILL)


def stop_twin(control: UnitControl, unit: str, *, kill_after: float, deadline: float,
              clock: Clock, still_held: Callable[[], bool] | None) -> TwinStop:
    """Stop a twin unit through systemd, SIGKILL it through systemd when it outlives
    `kill_after`, and wait (bounded by `deadline`) until `still_held` says the port is
    free. Never falls back to signals: a unit's processes are systemd's to stop."""
    kills: list[tuple[str, str]] = []

    def remaining() -> float:
        return max(0.0, deadline - clock.now())

    grace = min(kill_after, remaining())
    try:
        try:
            job = control.stop(unit, timeout=grace)
        except TimedOutError:
            # Still stopping after kill_after (SIGTERM ignored, ExecStop= hanging): SIGKILL
            # it; asking again follows the same (merged) stop job.
            control.kill(unit, signal.SIGKILL)
            kills.append(("stopping", f"{unit} still stopping {grace:.1f}s after StopUnit"))
            job = control.stop(unit, timeout=remaining())
    except SystemdError as exc:
        if exc.dbus_name != NO_SUCH_UNIT:
            return TwinStop(unit, None, tuple(kills), exc)
        job = JobResult("", unit, JOB_GONE)  # unloaded since the scan: the port tells
    except PortguardError as exc:  # timed out after SIGKILL, polkit, the bus lost
        return TwinStop(unit, None, tuple(kills), exc)
    if job.result not in ("done", JOB_GONE) or still_held is None:
        return TwinStop(unit, job, tuple(kills))  # gone: finished unseen; the port tells

    def released() -> bool:
        return not still_held()

    grace = min(kill_after, remaining())
    if wait_until(released, clock.now() + grace, clock):
        return TwinStop(unit, job, tuple(kills))
    try:
        control.kill(unit, signal.SIGKILL)
    except PortguardError as exc:
        return TwinStop(unit, job, tuple(kills), exc)
    kills.append(("holding", f"{unit} still holds the port {grace:.1f}s after StopUnit"))
    return TwinStop(unit, job, tuple(kills), released=wait_until(released, deadline, clock))
