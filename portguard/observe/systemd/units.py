"""systemd units over D-Bus: the only module that imports pystemd.

pystemd speaks bytes and builds proxies by introspection (lxml); here it is kept behind
`Systemd`, a small typed facade over raw method calls on a bus that is passed in. The
rest of portguard sees `str`, `int`, `JobResult` and `portguard.model.Unit`. pystemd is
imported lazily (in `Systemd.connect`): importing it costs ~30 ms, and the answers that
need no D-Bus (a free port, a unit named by its cgroup) must not pay it. Only API that
pystemd 0.11 (Debian 12) has too is used: `dbuslib.DBus` open/close/call_method/
match_signal/process/wait, and `apply_signature`.

Only reads are here. What changes a unit (StopUnit, StartUnit, KillUnit, Reload,
ResetFailedUnit, and following their jobs) is `portguard.act.units.UnitControl`, which
speaks through this connection's typed primitives (`call`, `get`, `pump`, `watch_jobs`,
`finished_job`), so pystemd stays behind this one module. The pystemd quirks that shape
job waits (a callback pystemd does not keep alive, `process()` that hides whether it did
anything, error names lost on bus-level failures) are described in
tests/integration/test_units_dbus.py, which checks them against systemd 252. The signal
callbacks themselves live in `bus_signals`; `watch_units`, `fileno` and `dispatch` let
`portguard daemon` wait for unit changes in its own select loop.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from portguard.errors import NotPermittedError
from portguard.model import Unit
from portguard.observe.systemd.bus_signals import (
    DEST,
    MANAGER,
    PATH,
    PROPERTIES,
    JobResult,
    Listener,
    SignalHub,
)
from portguard.observe.systemd.dbus_errors import (
    MANAGE_UNITS,
    NO_OBJECT,
    NOT_FOUND,
    SystemdError,
    SystemdUnavailable,
    as_text,
    errno_of,
    is_dbus_error,
    to_portguard_error,
)

UNIT_IFACE = b"org.freedesktop.systemd1.Unit"
SERVICE_IFACE = b"org.freedesktop.systemd1.Service"
SOCKET_IFACE = b"org.freedesktop.systemd1.Socket"
JOB_IFACE = b"org.freedesktop.systemd1.Job"

DRAIN = 256  # process() calls that empty the queue a synchronous call filled



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


def single_value(body: Any) -> Any:
    """A single-value reply: pystemd unwraps it; a hand-made bus may not."""
    return body[0] if isinstance(body, (list, tuple)) and len(body) == 1 else body


_NO_UNIT = ("org.freedesktop.systemd1.NoUnitForPID", "org.freedesktop.systemd1.NoSuchProcess")


class _NoPidfdLookup(Exception):
    """This systemd (or kernel) cannot resolve a pidfd to its unit."""


class Systemd:
    """systemd's manager API over one bus connection."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._apply_signature: Any = None
        self._hub = SignalHub()
        self.keep_open = False  # True: close() leaves the connection to its owner
        self.pid_lookup = ""  # how pids resolve to units: "pidfd", "pid" ("" untried)

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

    def call(self, path: bytes, iface: bytes, method: bytes, sig: bytes,
              values: list[Any], *, action: str = MANAGE_UNITS, what: str = "") -> Any:
        try:
            reply = self.bus.call_method(DEST, path, iface, method,
                                         self._sig(sig, values) if sig else None)
        except Exception as exc:
            if is_dbus_error(exc):
                raise to_portguard_error(exc, action, what) from exc
            raise
        return reply.body

    def get(self, path: bytes, iface: bytes, prop: str) -> Any:
        """One property (Properties.Get; the variant comes back unwrapped)."""
        return self.call(path, PROPERTIES, b"Get", b"ss", [iface, prop.encode()])

    def unit_path_for_pid(self, pid: int) -> bytes | None:
        """The unit a process belongs to; None when it belongs to none (or is gone).

        By pidfd where systemd has GetUnitByPIDFD (253 and later, e.g. Debian 13's 257):
        the answer is about that very process, never about a pid reused since it was
        read. Else (Debian 12's 252 answers UnknownMethod, remembered) GetUnitByPID.
        `pid_lookup` says which one answered last ("pidfd", "pid")."""
        if self.pid_lookup != "pid":
            try:
                return self._unit_path_for_pidfd(pid)
            except _NoPidfdLookup:
                self.pid_lookup = "pid"
        try:
            return bytes(single_value(self.call(PATH, MANAGER, b"GetUnitByPID", b"u", [pid])))
        except SystemdError as exc:
            if exc.dbus_name in _NO_UNIT:
                return None
            raise

    def _unit_path_for_pidfd(self, pid: int) -> bytes | None:
        import os
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as exc:  # no pidfd_open (kernel < 5.3): the pid path it is
            raise _NoPidfdLookup from exc
        try:
            body = self.call(PATH, MANAGER, b"GetUnitByPIDFD", b"h", [fd])
        except NotPermittedError as exc:
            # systemd 252's bus policy lets an unprivileged caller send only the methods
            # it knows: a method it lacks is "Rejected send message" (AccessDenied) for
            # them, where root hears UnknownMethod
            raise _NoPidfdLookup from exc
        except SystemdError as exc:
            if exc.dbus_name == "org.freedesktop.DBus.Error.UnknownMethod":
                raise _NoPidfdLookup from exc
            if exc.dbus_name in _NO_UNIT:
                return None
            raise
        finally:
            os.close(fd)
        self.pid_lookup = "pidfd"
        return bytes(body[0])  # (unit path, unit id, invocation id)

    def unit_for_pid(self, pid: int) -> Unit | None:
        path = self.unit_path_for_pid(pid)
        return self.describe_path(path) if path else None

    def unit_path(self, unit_id: str) -> bytes:
        """LoadUnit: the object path of a unit by name (loading it if needed)."""
        return bytes(single_value(self.call(PATH, MANAGER, b"LoadUnit", b"s", [unit_id.encode()])))

    def describe(self, unit_id: str) -> Unit:
        return self.describe_path(self.unit_path(unit_id))

    def properties(self, path: bytes, iface: bytes) -> dict[str, Any]:
        body = self.call(path, PROPERTIES, b"GetAll", b"s", [iface])
        props = body[0] if isinstance(body, (list, tuple)) else body
        return {as_text(k): v for k, v in dict(props).items()}

    def describe_path(self, path: bytes) -> Unit:
        unit = self.properties(path, UNIT_IFACE)
        uid = as_text(unit.get("Id", b""))
        service: dict[str, Any] = {}
        if uid.endswith(".service"):
            service = self.properties(path, SERVICE_IFACE)
        return Unit(
            id=uid,
            active_state=as_text(unit.get("ActiveState", b"")),
            sub_state=as_text(unit.get("SubState", b"")),
            main_pid=int(service.get("MainPID", 0) or 0),
            control_group=as_text(service.get("ControlGroup", b"")),
            invocation_id=_invocation_id(unit.get("InvocationID", b"")),
            exec_start=_exec_argvs(service.get("ExecStart", [])),
            user=as_text(service.get("User", b"")),
            from_dbus=True,
            triggers=tuple(as_text(t) for t in unit.get("Triggers", ()) or ()),
        )

    def socket_units(self, patterns: Sequence[str] = ("*.socket",)) -> list[Unit]:
        """Loaded .socket units matching the globs, each with `listen` (systemd's Listen:
        ("Stream", "[::]:22"), ...) and `triggers` (the service it activates): case 7."""
        return [self.describe_socket(u) for u in self.list_units(patterns)
                if u.endswith(".socket")]

    def activation_sockets(self, unit_id: str) -> list[Unit]:
        """The .socket units that activate `unit_id`: its TriggeredBy=, and the socket
        named like it (ssh.socket for ssh.service), loaded here if need be, since systemd
        252 lists it in TriggeredBy only when it was loaded first."""
        by = [as_text(s) for s in self.get(self.unit_path(unit_id), UNIT_IFACE, "TriggeredBy")]
        pair = unit_id.rpartition(".")[0] + ".socket"
        if pair not in by and self.load_state(pair) == "loaded":
            by.append(pair)
        found = [self.describe_socket(s) for s in by if s.endswith(".socket")]
        return [u for u in found if unit_id in u.triggers or u.id != pair]

    def last_run(self, unit_id: str) -> tuple[str, int]:
        """(InvocationID, ExecMainPID) of the unit's newest run: its main process's pid
        stays known after it exited, so `why` can tell that process's lines apart."""
        path = self.unit_path(unit_id)
        main = self.get(path, SERVICE_IFACE, "ExecMainPID") if unit_id.endswith(
            ".service") else 0
        return _invocation_id(self.get(path, UNIT_IFACE, "InvocationID")), int(main or 0)

    def describe_socket(self, unit_id: str) -> Unit:
        path = self.unit_path(unit_id)
        listen = self.get(path, SOCKET_IFACE, "Listen") or ()
        return self.describe_path(path)._replace(
            listen=tuple((as_text(kind), as_text(addr)) for kind, addr in listen))

    def list_units(self, patterns: Sequence[str], states: Sequence[str] = ()) -> list[str]:
        """ListUnitsByPatterns: ids of loaded units matching the globs."""
        body = self.call(PATH, MANAGER, b"ListUnitsByPatterns", b"asas",
                          [[s.encode() for s in states], [p.encode() for p in patterns]])
        rows = body[0] if body and isinstance(body[0], list) else body
        return [as_text(row[0]) for row in rows]

    def unit_states(self, patterns: Sequence[str]) -> list[Unit]:
        """Loaded units matching the globs, with ActiveState and SubState: one call
        (ListUnitsByPatterns rows are name, description, load, active, sub, ...)."""
        body = self.call(PATH, MANAGER, b"ListUnitsByPatterns", b"asas",
                          [[], [p.encode() for p in patterns]])
        rows = body[0] if body and isinstance(body[0], list) else body
        return [Unit(id=as_text(r[0]), active_state=as_text(r[3]), sub_state=as_text(r[4]))
                for r in rows]

    # -- signals: for a select loop ----------------------------------------------------

    def watch_units(self, listener: Listener) -> int:
        """Subscribe to systemd's signals and call `listener(unit name)` for every unit
        that changes (PropertiesChanged, JobRemoved), from `dispatch`. Returns the bus fd
        to wait on; when it is readable (and after any other call, which may queue
        signals), call `dispatch()`."""
        try:
            self._hub.watch_units(self.bus.match_signal, listener)
        except Exception as exc:
            if is_dbus_error(exc):
                raise to_portguard_error(exc, what="watch units") from exc
            raise
        self.watch_jobs()
        return self.fileno()

    def fileno(self) -> int:
        return int(self.bus.get_fd())

    def dispatch(self, limit: int = DRAIN) -> int:
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
            self.pump(None, what="read systemd's signals")
            idle = idle + 1 if hub.seen == before else 0
            if idle >= 2:
                break
        return hub.seen - start


    # -- state -----------------------------------------------------------------------

    def load_state(self, unit: str) -> str:
        """LoadState after LoadUnit: loaded, not-found, masked, error, bad-setting, ..."""
        return as_text(self.get(self.unit_path(unit), UNIT_IFACE, "LoadState"))

    def active_state(self, unit: str) -> str:
        return as_text(self.get(self.unit_path(unit), UNIT_IFACE, "ActiveState"))

    def unit_file_state(self, name: str) -> str | None:
        """GetUnitFileState (enabled, static, masked, ...; templates too); None: no file."""
        try:
            return as_text(single_value(self.call(PATH, MANAGER, b"GetUnitFileState", b"s",
                                          [name.encode()])))
        except SystemdError as exc:
            if exc.dbus_name in NOT_FOUND:
                return None
            raise

    # -- the typed primitives act.units changes units with ---------------------------------

    def watch_jobs(self) -> None:
        """Match JobRemoved and Subscribe, once per connection, before any job is queued."""
        if self._hub.jobs_watched:
            return
        try:
            self._hub.watch_jobs(self.bus.match_signal)
        except Exception as exc:
            if is_dbus_error(exc):
                raise to_portguard_error(exc, what="watch jobs") from exc
            raise
        try:
            self.call(PATH, MANAGER, b"Subscribe", b"", [])
        except SystemdError as exc:
            if exc.dbus_name != "org.freedesktop.systemd1.AlreadySubscribed":
                raise

    def finished_job(self, job: str) -> JobResult | None:
        """The JobRemoved seen for `job` (taken: asked once), or None yet. Every JobRemoved
        since `watch_jobs` is kept, whoever asked, since it can come in with the reply."""
        return self._hub.finished.pop(job, None)

    def job_exists(self, job: str) -> bool:
        try:
            self.get(job.encode(), JOB_IFACE, "State")
        except SystemdError as exc:
            if exc.dbus_name in NO_OBJECT:
                return False
            raise
        return True

    def pump(self, wait: float | None, what: str = "wait for a job") -> None:
        """None: dispatch one queued message (callbacks run); else wait up to `wait` s
        for one to arrive."""
        try:
            if wait is None:
                self.bus.process()
            else:
                self.bus.wait(max(0, int(wait * 1_000_000)))
        except Exception as exc:
            if not is_dbus_error(exc):
                raise
            if errno_of(exc) == errno.EINTR:
                return  # a signal: Python runs its handler next, then we go on
            raise to_portguard_error(exc, what=what) from exc


def _invocation_id(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)) and len(raw) == 16:
        return bytes(raw).hex()
    if isinstance(raw, (list, tuple)):
        return bytes(int(x) for x in raw).hex()
    return as_text(raw)


def _exec_argvs(raw: Iterable[Any]) -> tuple[tuple[str, ...], ...]:
    """ExecStart is a(sasbttttuii): (path, argv, ignore_failure, ...) per line."""
    out = []
    for entry in raw or ():
        try:
            argv = tuple(as_text(a) for a in entry[1])
        except (IndexError, TypeError):
            continue
        if argv:
            out.append(argv)
    return tuple(out)
