"""systemd units over D-Bus: the only module that imports pystemd.

pystemd speaks bytes and builds proxies by introspection (lxml); here it is kept behind
`Systemd`, a small typed facade over raw method calls on a bus that is passed in. The
rest of portguard sees `str`, `int`, `JobResult` and `portguard.model.Unit`. pystemd is
imported lazily (in `Systemd.connect`): importing it costs ~30 ms, and the answers that
need no D-Bus (a free port, a unit named by its cgroup) must not pay it. Only API that
pystemd 0.11 (Debian 12) has too is used: `dbuslib.DBus` open/close/call_method/
match_signal/process/wait, and `apply_signature`.

Jobs (`stop_unit`, `start_unit`) are followed through the Manager's JobRemoved signal;
the pystemd quirks that shapes (a callback pystemd does not keep alive, `process()` that
hides whether it did anything, error names lost on bus-level failures) are described in
tests/integration/test_units_dbus.py, which checks them against systemd 252. The signal
callbacks themselves live in portguard.observe.bus_signals; `watch_units`, `fileno` and
`dispatch` let `portguard daemon` wait for unit changes in its own select loop.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from portguard.errors import TimedOutError
from portguard.model import Unit
from portguard.observe.bus_signals import (
    JOB_GONE,
    PINNED,
    REMEMBERED,
    JobResult,
    Listener,
    SignalHub,
)
from portguard.observe.cgroups import (  # re-exported: they used to live here
    container_from_cgroup,
    docker_proxy_target,
    unit_from_cgroup,
    unit_from_path_only,
)
from portguard.observe.dbus_errors import (  # re-exported: part of this module's API
    _CALL_TIMEOUT,
    _NO_OBJECT,
    _NOT_FOUND,
    MANAGE_UNITS,
    RELOAD_DAEMON,
    SystemdError,
    SystemdUnavailable,
    _dbus_error,
    _errno,
    _is_dbus_error,
    _s,
    dbus_error_name,
)

__all__ = ["JOB_GONE", "Bus", "JobResult", "Systemd", "SystemdError", "SystemdUnavailable",
           "container_from_cgroup", "dbus_error_name", "docker_proxy_target",
           "unit_from_cgroup", "unit_from_path_only"]

DEST = b"org.freedesktop.systemd1"
PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
UNIT_IFACE = b"org.freedesktop.systemd1.Unit"
SERVICE_IFACE = b"org.freedesktop.systemd1.Service"
SOCKET_IFACE = b"org.freedesktop.systemd1.Socket"
JOB_IFACE = b"org.freedesktop.systemd1.Job"
PROPERTIES = b"org.freedesktop.DBus.Properties"

GONE_CHECK = 0.5  # seconds: how often a job that stays silent is looked up
_DRAIN = 256  # process() calls that empty the queue a synchronous call filled
_REMEMBERED = REMEMBERED



class Bus(Protocol):
    """The part of `pystemd.dbuslib.DBus` we use (so tests and callers can pass their own;
    one for lookups only needs call_method and close)."""

    def call_method(self, destination: bytes, path: bytes, interface: bytes,
                    method: bytes, args: Any) -> Any: ...

    def close(self) -> None: ...

    def match_signal(self, sender: bytes, path: bytes | None, interface: bytes, member: bytes,
                     callback: Callable[..., None]) -> None: ...

    def process(self) -> Any: ...

    def wait(self, timeout: int) -> None: ...

    def get_fd(self) -> int: ...


def _one(body: Any) -> Any:
    """A single-value reply: pystemd unwraps it; a hand-made bus may not."""
    return body[0] if isinstance(body, (list, tuple)) and len(body) == 1 else body


# Callbacks registered with pystemd's match_signal (it keeps only a raw pointer to them).
_PINNED = PINNED


class Systemd:
    """systemd's manager API over one bus connection."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._apply_signature: Any = None
        self._hub = SignalHub()
        self._finished = self._hub.finished  # JobRemoved seen, by job path
        self.keep_open = False  # True: close() leaves the connection to its owner

    @classmethod
    def connect(cls) -> Systemd:
        """Open the system bus. Raises SystemdUnavailable with the reason."""
        try:
            from pystemd.dbuslib import DBus
        except ImportError as exc:  # pragma: no cover - packaging error
            raise SystemdUnavailable(f"pystemd is not installed: {exc}") from exc
        bus = DBus()
        try:
            bus.open()
        except Exception as exc:  # pystemd raises DBusError or OSError-like errors
            raise SystemdUnavailable(f"cannot connect to the system bus: {exc}") from exc
        return cls(bus)

    def close(self, *, force: bool = False) -> None:
        """Close the connection; with `keep_open` set (the daemon lends its one connection
        to each Preflight, which closes what it is given) only `force=True` does."""
        if self.keep_open and not force:
            return
        self.bus.close()
        self._hub.release()  # the bus and its matches are gone now

    def _sig(self, signature: bytes, values: list[Any]) -> Any:
        if self._apply_signature is None:
            from pystemd.dbuslib import apply_signature
            self._apply_signature = apply_signature
        return self._apply_signature(signature, values)

    def _call(self, path: bytes, iface: bytes, method: bytes, sig: bytes,
              values: list[Any], *, action: str = MANAGE_UNITS, what: str = "") -> Any:
        try:
            reply = self.bus.call_method(DEST, path, iface, method,
                                         self._sig(sig, values) if sig else None)
        except Exception as exc:
            if _is_dbus_error(exc):
                raise _dbus_error(exc, action, what) from exc
            raise
        return reply.body

    def _get(self, path: bytes, iface: bytes, prop: str) -> Any:
        """One property (Properties.Get; the variant comes back unwrapped)."""
        return self._call(path, PROPERTIES, b"Get", b"ss", [iface, prop.encode()])

    def unit_path_for_pid(self, pid: int) -> bytes | None:
        """GetUnitByPID: None when the pid belongs to no unit (or is gone)."""
        try:
            return bytes(_one(self._call(PATH, MANAGER, b"GetUnitByPID", b"u", [pid])))
        except SystemdError as exc:
            if exc.dbus_name in ("org.freedesktop.systemd1.NoUnitForPID",
                                 "org.freedesktop.systemd1.NoSuchProcess"):
                return None
            raise

    def unit_for_pid(self, pid: int) -> Unit | None:
        path = self.unit_path_for_pid(pid)
        return self.describe_path(path) if path else None

    def unit_path(self, unit_id: str) -> bytes:
        """LoadUnit: the object path of a unit by name (loading it if needed)."""
        return bytes(_one(self._call(PATH, MANAGER, b"LoadUnit", b"s", [unit_id.encode()])))

    def describe(self, unit_id: str) -> Unit:
        return self.describe_path(self.unit_path(unit_id))

    def properties(self, path: bytes, iface: bytes) -> dict[str, Any]:
        body = self._call(path, PROPERTIES, b"GetAll", b"s", [iface])
        props = body[0] if isinstance(body, (list, tuple)) else body
        return {_s(k): v for k, v in dict(props).items()}

    def describe_path(self, path: bytes) -> Unit:
        unit = self.properties(path, UNIT_IFACE)
        uid = _s(unit.get("Id", b""))
        service: dict[str, Any] = {}
        if uid.endswith(".service"):
            service = self.properties(path, SERVICE_IFACE)
        return Unit(
            id=uid,
            active_state=_s(unit.get("ActiveState", b"")),
            sub_state=_s(unit.get("SubState", b"")),
            main_pid=int(service.get("MainPID", 0) or 0),
            control_group=_s(service.get("ControlGroup", b"")),
            invocation_id=_invocation_id(unit.get("InvocationID", b"")),
            exec_start=_exec_argvs(service.get("ExecStart", [])),
            user=_s(service.get("User", b"")),
            from_dbus=True,
            triggers=tuple(_s(t) for t in unit.get("Triggers", ()) or ()),
        )

    def socket_units(self, patterns: Sequence[str] = ("*.socket",)) -> list[Unit]:
        """Loaded .socket units matching the globs, each with `listen` (systemd's Listen:
        ("Stream", "[::]:22"), ...) and `triggers` (the service it activates): case 7."""
        return [self.describe_socket(u) for u in self.list_units(patterns)
                if u.endswith(".socket")]

    def activation_sockets(self, unit_id: str) -> list[Unit]:
        """The .socket units that activate `unit_id` (its TriggeredBy=), described."""
        by = self._get(self.unit_path(unit_id), UNIT_IFACE, "TriggeredBy") or ()
        return [self.describe_socket(_s(s)) for s in by if _s(s).endswith(".socket")]

    def describe_socket(self, unit_id: str) -> Unit:
        path = self.unit_path(unit_id)
        listen = self._get(path, SOCKET_IFACE, "Listen") or ()
        return self.describe_path(path)._replace(
            listen=tuple((_s(kind), _s(addr)) for kind, addr in listen))

    def list_units(self, patterns: Sequence[str], states: Sequence[str] = ()) -> list[str]:
        """ListUnitsByPatterns: ids of loaded units matching the globs."""
        body = self._call(PATH, MANAGER, b"ListUnitsByPatterns", b"asas",
                          [[s.encode() for s in states], [p.encode() for p in patterns]])
        rows = body[0] if body and isinstance(body[0], list) else body
        return [_s(row[0]) for row in rows]

    def unit_states(self, patterns: Sequence[str]) -> list[Unit]:
        """Loaded units matching the globs, with ActiveState and SubState: one call
        (ListUnitsByPatterns rows are name, description, load, active, sub, ...)."""
        body = self._call(PATH, MANAGER, b"ListUnitsByPatterns", b"asas",
                          [[], [p.encode() for p in patterns]])
        rows = body[0] if body and isinstance(body[0], list) else body
        return [Unit(id=_s(r[0]), active_state=_s(r[3]), sub_state=_s(r[4])) for r in rows]

    def reset_failed(self, unit: str) -> None:
        """ResetFailedUnit: forget a failed state and the start rate limit's count."""
        self._call(PATH, MANAGER, b"ResetFailedUnit", b"s", [unit.encode()],
                   what=f"reset the failed state of {unit}")

    # -- signals: for a select loop ----------------------------------------------------

    def watch_units(self, listener: Listener) -> int:
        """Subscribe to systemd's signals and call `listener(unit name)` for every unit
        that changes (PropertiesChanged, JobRemoved), from `dispatch`. Returns the bus fd
        to wait on; when it is readable (and after any other call, which may queue
        signals), call `dispatch()`."""
        try:
            self._hub.watch_units(self.bus.match_signal, listener)
        except Exception as exc:
            if _is_dbus_error(exc):
                raise _dbus_error(exc, what="watch units") from exc
            raise
        self._watch_jobs()
        return self.fileno()

    def fileno(self) -> int:
        return int(self.bus.get_fd())

    def dispatch(self, limit: int = _DRAIN) -> int:
        """Run the callbacks of the signals already received, without blocking; return how
        many. pystemd's process() does not say whether it dispatched anything, so this
        stops after two calls in a row that reached none of our callbacks (a message
        nobody matched, e.g. NameAcquired, is one), or after `limit`. Raises
        SystemdUnavailable when the bus is gone."""
        hub = self._hub
        start = hub.seen
        idle = 0
        for _ in range(limit):
            before = hub.seen
            self._pump(None, what="read systemd's signals")
            idle = idle + 1 if hub.seen == before else 0
            if idle >= 2:
                break
        return hub.seen - start


    # -- jobs and state --------------------------------------------------------------

    def stop_unit(self, unit: str, *, timeout: float) -> JobResult:
        """StopUnit(unit, "replace") and wait, at most `timeout` s, for its job to end."""
        return self._job(b"StopUnit", unit, timeout, "stop")

    def start_unit(self, unit: str, *, timeout: float) -> JobResult:
        """StartUnit(unit, "replace") and wait, at most `timeout` s, for its job to end."""
        return self._job(b"StartUnit", unit, timeout, "start")

    def kill_unit(self, unit: str, signal: int, whom: str = "all") -> None:
        """KillUnit: send `signal` to the unit's processes (whom: main, control, all)."""
        self._call(PATH, MANAGER, b"KillUnit", b"ssi", [unit.encode(), whom.encode(), signal],
                   what=f"kill {unit}")

    def reload(self) -> None:
        """daemon-reload. systemd replies once the reload is done, so this returns then;
        bounded by sd-bus's method call timeout (25 s, or $SYSTEMD_BUS_TIMEOUT)."""
        try:
            self._call(PATH, MANAGER, b"Reload", b"", [], action=RELOAD_DAEMON,
                       what="reload its configuration")
        except SystemdUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception) and dbus_error_name(cause) in _CALL_TIMEOUT:
                raise TimedOutError("systemd did not finish daemon-reload within the D-Bus "
                                    "call timeout (25 s unless $SYSTEMD_BUS_TIMEOUT says)"
                                    ) from exc
            raise

    def load_state(self, unit: str) -> str:
        """LoadState after LoadUnit: loaded, not-found, masked, error, bad-setting, ..."""
        return _s(self._get(self.unit_path(unit), UNIT_IFACE, "LoadState"))

    def active_state(self, unit: str) -> str:
        return _s(self._get(self.unit_path(unit), UNIT_IFACE, "ActiveState"))

    def unit_file_state(self, name: str) -> str | None:
        """GetUnitFileState (enabled, static, masked, ...; templates too); None: no file."""
        try:
            return _s(_one(self._call(PATH, MANAGER, b"GetUnitFileState", b"s",
                                      [name.encode()])))
        except SystemdError as exc:
            if exc.dbus_name in _NOT_FOUND:
                return None
            raise

    def _watch_jobs(self) -> None:
        """Match JobRemoved and Subscribe, once per connection, before any job is queued."""
        if self._hub.jobs_watched:
            return
        try:
            self._hub.watch_jobs(self.bus.match_signal)
        except Exception as exc:
            if _is_dbus_error(exc):
                raise _dbus_error(exc, what="watch jobs") from exc
            raise
        try:
            self._call(PATH, MANAGER, b"Subscribe", b"", [])
        except SystemdError as exc:
            if exc.dbus_name != "org.freedesktop.systemd1.AlreadySubscribed":
                raise

    def _job(self, method: bytes, unit: str, timeout: float, verb: str) -> JobResult:
        deadline = time.monotonic() + timeout
        self._watch_jobs()
        job = _s(_one(self._call(PATH, MANAGER, method, b"ss", [unit.encode(), b"replace"],
                                 what=f"{verb} {unit}")))
        # Its JobRemoved may already sit in the queue (it can come in with the reply):
        # every JobRemoved since _watch_jobs is kept in self._finished, whoever asked.
        look_again = time.monotonic() + GONE_CHECK
        while True:
            self._pump(None)
            if job in self._finished:
                return self._finished.pop(job)
            now = time.monotonic()
            if now >= deadline:
                raise TimedOutError(f"systemd did not {verb} {unit} within {timeout:.1f}s "
                                    f"(its job {job} is still queued or running)")
            if now >= look_again:
                look_again = now + GONE_CHECK
                if not self._job_exists(job):  # the call queued any earlier JobRemoved
                    for _ in range(_DRAIN):
                        self._pump(None)
                        if job in self._finished:
                            return self._finished.pop(job)
                    return JobResult(job, unit, JOB_GONE)
            self._pump(min(deadline, look_again) - now)

    def _job_exists(self, job: str) -> bool:
        try:
            self._get(job.encode(), JOB_IFACE, "State")
        except SystemdError as exc:
            if exc.dbus_name in _NO_OBJECT:
                return False
            raise
        return True

    def _pump(self, wait: float | None, what: str = "wait for a job") -> None:
        """None: dispatch one queued message (callbacks run); else wait up to `wait` s
        for one to arrive."""
        try:
            if wait is None:
                self.bus.process()
            else:
                self.bus.wait(max(0, int(wait * 1_000_000)))
        except Exception as exc:
            if not _is_dbus_error(exc):
                raise
            if _errno(exc) == errno.EINTR:
                return  # a signal: Python runs its handler next, then we go on
            raise _dbus_error(exc, what=what) from exc


def _invocation_id(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)) and len(raw) == 16:
        return bytes(raw).hex()
    if isinstance(raw, (list, tuple)):
        return bytes(int(x) for x in raw).hex()
    return _s(raw)


def _exec_argvs(raw: Iterable[Any]) -> tuple[tuple[str, ...], ...]:
    """ExecStart is a(sasbttttuii): (path, argv, ignore_failure, ...) per line."""
    out = []
    for entry in raw or ():
        try:
            argv = tuple(_s(a) for a in entry[1])
        except (IndexError, TypeError):
            continue
        if argv:
            out.append(argv)
    return tuple(out)
