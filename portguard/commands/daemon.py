"""`portguard daemon`: the long-lived guard (the contract (docs/) "Daemon"; README "The daemon").

One thread, one `selectors` loop over the D-Bus fd (systemd's JobRemoved and unit
PropertiesChanged signals: a change of a configured unit schedules a pass, DEBOUNCE
later), a self-pipe from `signal.set_wakeup_fd` (SIGHUP reload, SIGTERM/SIGINT stop) and
timers (a pass every `daemon.interval`, WATCHDOG=1 every WATCHDOG_USEC/2). Passes are
portguard.commands.daemon_survey (observe, analyse) and
portguard.commands.daemon_heal (act through Preflight).

sd_notify: READY=1 after a valid config and the first pass; STATUS= after every pass;
SIGHUP: RELOADING=1, re-read, a bad config kept out, READY=1; SIGTERM: STOPPING=1, exit 0
at once (the handler raises daemon_heal.Interrupted into a pass in progress). A pass step that
may wait keeps the watchdog fed through notify.Keeper, within its own bound only.

Test hook: PORTGUARD_TEST_HANG_AFTER=N hangs the loop after N passes (no more passes, no
more WATCHDOG=1; SIGTERM still ends it) so tests see systemd's watchdog fire. Unset, it
does nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import selectors
import signal
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from portguard.app import App
from portguard.config.schema import Config, load
from portguard.errors import ConfigError, ExitStatus, NotPermittedError, PortguardError
from portguard.observe.procs import cgroupfs, processes

if TYPE_CHECKING:
    import argparse

    from portguard.report.output import Output
from portguard.commands.daemon_heal import Interrupted, Outcome, PassResult, Reconciler
from portguard.commands.daemon_learn import Learner
from portguard.decide.flap import FlapGuard
from portguard.observe.systemd.dbus_errors import SystemdUnavailable
from portguard.observe.systemd.units import Systemd
from portguard.report.journal import Event
from portguard.report.notify import Keeper, Notifier

DEBOUNCE = 0.2  # seconds from a unit's change to the pass it triggers
PASS_BOUND = 30.0  # seconds the observing part of a pass may take (D-Bus call timeout 25 s)
HANG_ENV = "PORTGUARD_TEST_HANG_AFTER"  # test hook, see the module docstring
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Schedule:
    """When the next pass is due: `interval` after the last one, or DEBOUNCE after the
    first change reported since (later changes do not postpone it)."""

    def __init__(self, interval: float, now: float, debounce: float = DEBOUNCE) -> None:
        self.interval = interval
        self.debounce = debounce
        self.next = now  # the first pass at once

    def poke(self, now: float) -> None:
        self.next = min(self.next, now + self.debounce)

    def passed(self, now: float) -> None:
        self.next = now + self.interval

    def due(self, now: float) -> bool:
        return now >= self.next

    def wait(self, now: float) -> float:
        return max(0.0, self.next - now)


class UnitFilter:
    """Whether a unit's change concerns the config: a configured unit, an instance of a
    configured template, or a `duplicates.units` unit."""

    def __init__(self, config: Config) -> None:
        services = config.services
        self.names = {s.name for s in services if not s.is_template}
        self.prefixes = tuple(s.name.removesuffix(".service") for s in services
                              if s.is_template)
        self.globs = tuple(g for s in services for g in s.duplicates.units)

    def __call__(self, unit: str) -> bool:
        return unit in self.names or (unit.endswith(".service") and
                                      unit.startswith(self.prefixes)) or \
            any(fnmatch.fnmatchcase(unit, g) for g in self.globs)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def status_line(*, services: int, units: int, outcomes: Sequence[Outcome], resolved: int,
                flapping: Sequence[str], dbus_error: str = "", reload_error: str = "",
                metrics_error: str = "", last_pass: tuple[float, float] | None = None,
                interval: float = 30.0) -> str:
    """The STATUS= line: problems first, then what is watched, then the last pass."""
    parts = []
    if reload_error:
        parts.append(f"config reload failed, still running the previous one: {reload_error}")
    if dbus_error:
        parts.append(f"systemd D-Bus unreachable ({dbus_error}): reporting only, retrying"
                     f" every {interval:g}s")
    open_ = [o.text for o in outcomes if o.state in ("refused", "reported")]
    head = f"watching {_plural(services, 'service')} ({_plural(units, 'unit')}), " \
           f"{_plural(len(open_), 'conflict')}"
    if open_:
        head += ": " + "; ".join(open_[:2]) + (f" (+{len(open_) - 2} more)"
                                               if len(open_) > 2 else "")
    parts.append(head)
    if flapping:
        parts.append("flapping, not fought: " + ", ".join(flapping[:3]))
    if resolved:
        parts.append(f"{resolved} resolved since start")
    if metrics_error:
        parts.append(f"metrics not written: {metrics_error}")
    if last_pass is not None:
        at, took = last_pass
        parts.append(f"last pass at {time.strftime('%H:%M:%S', time.localtime(at))}"
                     f" took {took * 1000:.0f} ms")
    return "; ".join(parts)


class Daemon:
    """`portguard daemon`: built by the CLI with its App; `run()` returns at SIGTERM."""

    filter: UnitFilter
    schedule: Schedule
    reconciler: Reconciler

    def __init__(self, app: App, *, notifier: Notifier | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.journal = app.journal
        self.env = os.environ if env is None else env
        self.notifier = notifier if notifier is not None else Notifier(self.env)
        self.config: Config | None = None
        self.systemd: Systemd | None = None
        self.dbus_error = self.reload_error = self.metrics_error = ""
        self.stop_signal = 0
        self.reload_requested = False
        self.passes = 0
        self.last: tuple[float, float, PassResult] | None = None  # wall time, seconds, result
        self._in_pass = False
        self._changed: set[str] = set()
        self.learner = Learner(self.journal)  # profiles, on each start of a unit
        self._selector = selectors.DefaultSelector()
        self._wake: tuple[int, int] | None = None
        self._old_handlers: dict[int, object] = {}
        interval = self.notifier.watchdog_interval
        self.keeper = Keeper(self.notifier.watchdog, interval) if interval else None
        self._next_ping = 0.0

    # -- lifecycle ------------------------------------------------------------------

    def run(self) -> ExitStatus:
        try:
            config = self.config = self.app.config
        except ConfigError as exc:
            self.journal.emit(Event.CONFIG_ERROR, f"daemon not started: invalid config: "
                              f"{'; '.join(exc.problems)}", action="none",
                              result="bad-config", echo=False)  # stderr gets the error
            raise
        self.filter = UnitFilter(config)
        self.learner.note(s.name for s in config.services if not s.is_template)
        self.schedule = Schedule(config.daemon.interval, time.monotonic())
        self.reconciler = Reconciler(
            self.journal, FlapGuard(config.daemon.flap_limit, config.daemon.flap_window),
            cgroup_root=cgroupfs.cgroup2_mount(), hold=self._hold,
            should_stop=lambda: bool(self.stop_signal))
        self._install_signals()
        try:
            if self.keeper is not None:
                self.keeper.start()
            self._connect()
            self.journal.emit(Event.DAEMON_STARTED, f"daemon started: watching "
                              f"{_plural(len(config.services), 'service')} from "
                              f"{self.app.config_path}", action="none", result="started")
            try:
                self._pass()
                if not self.stop_signal:
                    self.notifier.ready(self.status())
                    self._loop()
            except Interrupted:
                pass
            name = signal.Signals(self.stop_signal).name if self.stop_signal else "request"
            self.notifier.stopping(f"stopping on {name}")
            self.journal.emit(Event.DAEMON_STOPPING, f"daemon stopping on {name}",
                              action="none", result="stopping")
        finally:
            self._cleanup()
        return ExitStatus.OK

    def _loop(self) -> None:
        hang_after = self._hang_after()
        while not self.stop_signal:
            if hang_after is not None and self.passes >= hang_after:
                self._hang(hang_after)
                break
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            now = time.monotonic()
            if self.keeper is not None and now >= self._next_ping:
                self.notifier.watchdog()
                self._next_ping = now + self.keeper.interval
            if self.schedule.due(now):
                self._pass()
                continue
            timeout = self.schedule.wait(now)
            if self.keeper is not None:
                timeout = min(timeout, self._next_ping - now)
            for key, _ in self._selector.select(max(0.0, timeout)):
                if key.data == "wake":
                    self._drain_wake()
                else:
                    self._dispatch()

    def _pass(self) -> None:
        assert self.config is not None
        if self.systemd is None:
            self._connect()
        wall, start = time.time(), time.monotonic()
        self._hold(PASS_BOUND)
        self._in_pass = True
        try:
            result = self.reconciler.run(self.config, self.app.config_path, self.systemd,
                                         self._lend)
        finally:
            self._in_pass = False
            if self.keeper is not None:
                self.keeper.release()
        took = time.monotonic() - start
        if result.dbus_error and self.systemd is not None:
            self._drop_bus(result.dbus_error)
        if self.systemd is not None:
            self.learner.run(self.systemd)
        self.passes += 1
        self.last = (wall + took, took, result)
        self.schedule.passed(time.monotonic())
        self._dispatch()  # signals that came in during the pass's calls
        self._write_metrics(result, took, wall + took)
        self.notifier.status(self.status())

    def _reload(self) -> None:
        assert self.config is not None
        self.notifier.reloading()
        path = self.app.config_path
        try:
            new = load(path)
        except (ConfigError, NotPermittedError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [exc.message]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            self.reload_error = problems[0] + more
            self.journal.emit(Event.DAEMON_RELOAD_FAILED, "config reload failed, still "
                              f"running the previous config: {'; '.join(problems)}",
                              action="none", result="bad-config")
            self.notifier.ready(self.status())
            return
        old, self.config, self.reload_error = self.config.daemon, new, ""
        d = new.daemon
        if (d.flap_limit, d.flap_window) != (old.flap_limit, old.flap_window):
            self.reconciler.flap = FlapGuard(d.flap_limit, d.flap_window)
        self.reconciler.told.clear()  # policies may have changed: judge afresh
        self.filter = UnitFilter(new)
        self.schedule.interval = d.interval
        self.schedule.next = time.monotonic()  # a pass with the new config at once
        self.journal.emit(Event.DAEMON_RELOADED, f"config reloaded from {path}: watching "
                          f"{_plural(len(new.services), 'service')}", action="none",
                          result="reloaded")
        self.notifier.ready(self.status())

    def _hang(self, after: int) -> None:
        self.journal.emit(Event.DAEMON_DEGRADED, f"test hook {HANG_ENV}={after}: the loop "
                          f"hangs after {self.passes} pass(es): no more passes or WATCHDOG=1",
                          action="none", result="test-hang")
        while not self.stop_signal:
            time.sleep(0.1)

    def _hang_after(self) -> int | None:
        value = self.env.get(HANG_ENV, "")
        return int(value) if value.isdigit() else None

    def status(self) -> str:
        assert self.config is not None
        result = self.last[2] if self.last else None
        return status_line(
            services=len(self.config.services), units=result.units if result else 0,
            outcomes=result.outcomes if result else (),
            resolved=sum(self.reconciler.resolved_total.values()),
            flapping=[f"{u} vs {h}" for u, h in self._tripped()], dbus_error=self.dbus_error,
            reload_error=self.reload_error, metrics_error=self.metrics_error,
            last_pass=self.last[:2] if self.last else None,
            interval=self.config.daemon.interval)

    def _tripped(self) -> list[tuple[str, str]]:
        return [k for k in self.reconciler.flap.tripped_keys()
                if isinstance(k, tuple) and len(k) == 2]

    def _hold(self, seconds: float) -> None:
        if self.keeper is not None:
            self.keeper.hold(seconds)

    # -- D-Bus ----------------------------------------------------------------------

    def _connect(self) -> None:
        systemd = None
        try:
            systemd = self.app.connect_systemd()
            systemd.keep_open = True  # lent to every Preflight, closed only here
            fd = systemd.watch_units(self._changed.add)
        except PortguardError as exc:
            if systemd is not None:
                systemd.close(force=True)
            self._set_dbus_error(exc.message)
            return
        self.systemd = systemd
        self._selector.register(fd, selectors.EVENT_READ, "bus")
        if self.dbus_error:
            self.journal.emit(Event.DAEMON_DEGRADED, "systemd's D-Bus API is reachable "
                              "again: resolving conflicts again", action="none",
                              result="dbus-back")
        self.dbus_error = ""

    def _set_dbus_error(self, why: str) -> None:
        if not self.dbus_error:
            self.journal.emit(Event.DAEMON_DEGRADED, f"systemd's D-Bus API is unreachable "
                              f"({why}): reporting conflicts only, retrying every pass",
                              action="none", result="no-dbus")
        self.dbus_error = why or "unknown error"

    def _drop_bus(self, why: str) -> None:
        if self.systemd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self.systemd.fileno())
            self.systemd.close(force=True)
            self.systemd = None
        self._set_dbus_error(why)

    def _lend(self) -> Systemd:
        if self.systemd is None:
            raise SystemdUnavailable(f"systemd D-Bus API unreachable: {self.dbus_error}")
        return self.systemd

    def _dispatch(self) -> None:
        if self.systemd is not None:
            try:
                self.systemd.dispatch()
            except PortguardError as exc:
                self._drop_bus(exc.message)
        changed = list(self._changed)  # the listener adds to this very set: clear it
        self._changed.clear()
        if any(self.filter(unit) for unit in changed):
            self.schedule.poke(time.monotonic())
        if self.config is not None:
            self.learner.note(u for u in changed if self.config.service_for(u) is not None)

    # -- metrics --------------------------------------------------------------------

    def _write_metrics(self, result: PassResult, took: float, at: float) -> None:
        assert self.config is not None
        path = self.config.daemon.metrics_file
        told, self.metrics_error = self.metrics_error, ""
        if path is None:
            return
        from portguard.report import metrics

        try:
            metrics.write_atomic(path, self.reconciler.snapshot(
                self.config, result, took, at, processes.own_usage()))
        except OSError as exc:
            self.metrics_error = f"{path}: {exc.strerror or exc}"
            if self.metrics_error != told:  # once per distinct failure, not every pass
                self.journal.emit(Event.DAEMON_DEGRADED, "cannot write the metrics file "
                                  f"{self.metrics_error}", action="none",
                                  result="metrics-failed")

    # -- signals --------------------------------------------------------------------

    def _install_signals(self) -> None:
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = (read, write)
        self._selector.register(read, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, *_STOP_SIGNALS):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
            return
        self.stop_signal = signum
        if self._in_pass:
            raise Interrupted  # abandon the pass: SIGTERM must end us within a second

    def _drain_wake(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake[0], 512):
                    pass

    def _cleanup(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if self.systemd is not None:
            self.systemd.close(force=True)
            self.systemd = None
        signal.set_wakeup_fd(-1)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._selector.close()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        self.notifier.close()


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """`portguard daemon`: until SIGTERM."""
    return Daemon(app).run()
