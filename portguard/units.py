"""systemd units and containers: the only module that imports pystemd.

pystemd speaks bytes and builds proxies by introspection (lxml); here it is kept behind
`Systemd`, a small typed facade over raw method calls on a bus that is passed in. The
rest of portguard sees `str`, `int` and `portguard.model.Unit`.

pystemd is imported lazily (in `Systemd.connect`): importing it costs ~30 ms, and the
answers that need no D-Bus (a free port, a unit named by its cgroup) must not pay it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from portguard.errors import NotPermittedError, PortguardError
from portguard.model import Unit

DEST = b"org.freedesktop.systemd1"
PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
UNIT_IFACE = b"org.freedesktop.systemd1.Unit"
SERVICE_IFACE = b"org.freedesktop.systemd1.Service"
PROPERTIES = b"org.freedesktop.DBus.Properties"

_ACCESS_DENIED = {"org.freedesktop.DBus.Error.AccessDenied",
                  "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"}


class SystemdUnavailable(PortguardError):
    """The system bus or systemd cannot be reached; callers fall back or fail closed."""


class SystemdError(PortguardError):
    """systemd answered with an error (NoSuchUnit, a failed job, ...)."""

    def __init__(self, dbus_name: str, text: str) -> None:
        super().__init__(f"systemd: {text} ({dbus_name})")
        self.dbus_name = dbus_name


_UNREACHABLE = {
    "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.NameHasNoOwner", "org.freedesktop.DBus.Error.NoServer",
    "org.freedesktop.DBus.Error.Disconnected", "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.IOError",
}


class Bus(Protocol):
    """The part of `pystemd.dbuslib.DBus` we use (so tests and callers can pass their own)."""

    def call_method(self, destination: bytes, path: bytes, interface: bytes,
                    method: bytes, args: Any) -> Any: ...

    def close(self) -> None: ...


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_dbus_error(exc: Exception) -> bool:
    # pystemd's DBusBaseError and its per-name subclasses (pystemd.dbusexc); matched by
    # shape, not by import, so this module does not import pystemd until connecting.
    return hasattr(exc, "err_message") and hasattr(exc, "errno")


def dbus_error_name(exc: Exception) -> str:
    """The D-Bus error name: pystemd keeps it only on the base class, or in the class name."""
    name = _s(getattr(exc, "err_name", "") or "")
    if name:
        return name
    cls = type(exc).__name__
    if cls.startswith("DBus") and cls.endswith("Error") and cls != "DBusBaseError":
        return "org.freedesktop.DBus.Error." + cls[4:-5]
    return cls


def _dbus_error(exc: Exception) -> PortguardError:
    """Turn a pystemd D-Bus error into ours: AccessDenied means polkit/root is needed."""
    name = dbus_error_name(exc)
    text = _s(getattr(exc, "err_message", "") or exc)
    if name in _ACCESS_DENIED:
        return NotPermittedError(
            f"systemd refused: {text} (run as root, or grant polkit action "
            "org.freedesktop.systemd1.manage-units)")
    if name in _UNREACHABLE:
        return SystemdUnavailable(f"systemd D-Bus API unreachable: {name}: {text}")
    return SystemdError(name, text)


class Systemd:
    """systemd's manager API over one bus connection."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._apply_signature: Any = None

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

    def close(self) -> None:
        self.bus.close()

    def _sig(self, signature: bytes, values: list[Any]) -> Any:
        if self._apply_signature is None:
            from pystemd.dbuslib import apply_signature
            self._apply_signature = apply_signature
        return self._apply_signature(signature, values)

    def _call(self, path: bytes, iface: bytes, method: bytes, sig: bytes,
              values: list[Any]) -> Any:
        try:
            reply = self.bus.call_method(DEST, path, iface, method,
                                         self._sig(sig, values) if sig else None)
        except Exception as exc:
            if _is_dbus_error(exc):
                raise _dbus_error(exc) from exc
            raise
        return reply.body

    def unit_path_for_pid(self, pid: int) -> bytes | None:
        """GetUnitByPID: None when the pid belongs to no unit (or is gone)."""
        try:
            return bytes(self._call(PATH, MANAGER, b"GetUnitByPID", b"u", [pid]))
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
        return bytes(self._call(PATH, MANAGER, b"LoadUnit", b"s", [unit_id.encode()]))

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
        )

    def list_units(self, patterns: Sequence[str], states: Sequence[str] = ()) -> list[str]:
        """ListUnitsByPatterns: ids of loaded units matching the globs."""
        body = self._call(PATH, MANAGER, b"ListUnitsByPatterns", b"asas",
                          [[s.encode() for s in states], [p.encode() for p in patterns]])
        rows = body[0] if body and isinstance(body[0], list) else body
        return [_s(row[0]) for row in rows]


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


# --- pure: what a cgroup path says --------------------------------------------------

_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".slice")


def unit_from_cgroup(path: str) -> str | None:
    """The unit a cgroup path belongs to, as systemd itself would derive it.

    `/system.slice/web@blue.service` -> `web@blue.service`; a unit's sub-cgroups
    (`.../payload`, delegated trees) belong to the deepest unit above them; slices alone
    are not a holder's unit.
    """
    found = None
    for part in path.strip("/").split("/"):
        if part.endswith(_UNIT_SUFFIXES) and not part.endswith(".slice"):
            found = part
    return found


# docker-<64 hex>.scope, libpod-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope
_CONTAINER_SCOPE = re.compile(
    r"(?:^|/)(docker|libpod|cri-containerd|crio|containerd)-([0-9a-f]{12,64})\.scope(?:/|$)")
# cgroupfs driver layouts: /docker/<id>, /kubepods/.../<id>
_CONTAINER_DIR = re.compile(r"(?:^|/)(docker|lxc)/([0-9a-f]{12,64})(?:/|$)")
_NSPAWN = re.compile(r"(?:^|/)(?:machine-([^/]+)\.scope|systemd-nspawn@([^/]+)\.service)")
_RUNTIME_NAMES = {"libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o"}


def container_from_cgroup(path: str) -> str | None:
    """`docker:3f2a9c1b2d4e`, `podman:...`, `nspawn:mybox` or None."""
    m = _CONTAINER_SCOPE.search(path) or _CONTAINER_DIR.search(path)
    if m:
        runtime = _RUNTIME_NAMES.get(m.group(1), m.group(1))
        return f"{runtime}:{m.group(2)[:12]}"
    m = _NSPAWN.search(path)
    if m:
        name = (m.group(1) or m.group(2)).replace("\\x2d", "-")  # systemd's escaping
        return f"nspawn:{name}"
    return None


def docker_proxy_target(cmdline: Sequence[str]) -> str | None:
    """What a docker-proxy forwards to, from its own arguments.

    `docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2
    -container-port 80` -> `172.17.0.2:80/tcp`.
    """
    if not cmdline or not cmdline[0].endswith("docker-proxy"):
        return None
    args: dict[str, str] = {}
    it = iter(cmdline[1:])
    for arg in it:
        if arg.startswith("-"):
            key, eq, value = arg.lstrip("-").partition("=")
            args[key] = value if eq else next(it, "")
    ip, port = args.get("container-ip"), args.get("container-port")
    if not (ip and port):
        return None
    return f"{ip}:{port}/{args.get('proto', 'tcp')}"


def unit_from_path_only(cgroup: str) -> Unit | None:
    """A Unit built from the cgroup alone (D-Bus unreachable): only the id is known."""
    uid = unit_from_cgroup(cgroup)
    if uid is None:
        return None
    return Unit(id=uid, control_group=cgroup, from_dbus=False)
