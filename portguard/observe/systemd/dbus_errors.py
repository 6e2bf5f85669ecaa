"""systemd's D-Bus errors, mapped to portguard's exceptions (and so to exit codes).

pystemd raises `DBusBaseError` and per-name subclasses that lose the error's name; they are
matched here by shape, not by import, so nothing imports pystemd before connecting. The one
place a D-Bus error becomes NotPermittedError (77), SystemdUnavailable or SystemdError.
"""

from __future__ import annotations

import errno
import os

from portguard.errors import NotPermittedError, PortguardError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MANAGE_UNITS = "org.freedesktop.systemd1.manage-units"  # polkit actions
RELOAD_DAEMON = "org.freedesktop.systemd1.reload-daemon"

_ACCESS_DENIED = {"org.freedesktop.DBus.Error.AccessDenied",
                  "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"}
_UNREACHABLE = {f"org.freedesktop.DBus.Error.{n}" for n in (
    "ServiceUnknown", "NoReply", "NameHasNoOwner", "NoServer", "Disconnected", "Timeout",
    "IOError", "ConnectionRefused")}
CALL_TIMEOUT = {"org.freedesktop.DBus.Error.Timeout", "org.freedesktop.DBus.Error.NoReply"}
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
NOT_FOUND = {NO_SUCH_UNIT, "org.freedesktop.DBus.Error.FileNotFound"}
NO_OBJECT = {f"org.freedesktop.DBus.Error.Unknown{n}" for n in ("Object", "Interface",
                                                                  "Method")}
# pystemd classes whose name is not "org.freedesktop.DBus.Error." + the class's stem
_CLASS_NAMES = {"DBusNoSuchUnitError": NO_SUCH_UNIT,
                "DBusInterruptedError": "System.Error.EINTR"}
_DBUS_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"  # matched when it fails
_BUS_GONE = {errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE, errno.ECONNREFUSED,
             errno.ESHUTDOWN, errno.EBADF}


class SystemdUnavailable(PortguardError):
    """The system bus or systemd cannot be reached; callers fall back or fail closed."""


class SystemdError(PortguardError):
    """systemd answered with an error (NoSuchUnit, a failed job, ...)."""

    def __init__(self, dbus_name: str, text: str) -> None:
        super().__init__(f"systemd: {text} ({dbus_name})")
        self.dbus_name = dbus_name


def as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def is_dbus_error(exc: Exception) -> bool:
    # pystemd's DBusBaseError and its per-name subclasses (pystemd.dbusexc); matched by
    # shape, not by import, so this module does not import pystemd until connecting.
    return hasattr(exc, "err_message") and hasattr(exc, "errno")


def errno_of(exc: Exception) -> int:
    value = getattr(exc, "errno", 0)
    return abs(value) if isinstance(value, int) else 0


def dbus_error_name(exc: Exception) -> str:
    """The D-Bus error name: pystemd keeps it only on the base class, or in the class name."""
    name = as_text(getattr(exc, "err_name", "") or "")
    if name:
        return name
    cls = type(exc).__name__
    if cls in _CLASS_NAMES:
        return _CLASS_NAMES[cls]
    if cls.startswith("DBus") and cls.endswith("Error") and cls != "DBusBaseError":
        return "org.freedesktop.DBus.Error." + cls[4:-5]
    return cls


def to_portguard_error(exc: Exception, action: str = MANAGE_UNITS,
                       what: str = "") -> PortguardError:
    """Turn a pystemd D-Bus error into ours: AccessDenied means polkit/root is needed.

    `action` is the polkit action the refused call needs; `what` says what was asked
    ("stop web.service").
    """
    name = dbus_error_name(exc)
    text = as_text(getattr(exc, "err_message", "") or exc)
    asked = f" to {what}" if what else ""
    if name in _ACCESS_DENIED:
        return NotPermittedError(
            f"systemd refused{asked}: {text} (run as root, or grant polkit action "
            f"{action})")
    if name in _UNREACHABLE:
        return SystemdUnavailable(f"systemd D-Bus API unreachable: {name}: {text}")
    import re  # only when a D-Bus call failed: observer and `who` import this module

    if not re.fullmatch(_DBUS_NAME, name):  # a bus-level failure: only errno is reliable
        code = errno_of(exc)
        why = f"{text or name}{asked}: {os.strerror(code) if code else 'unknown error'}"
        if code in _BUS_GONE:
            return SystemdUnavailable(f"lost the system bus: {why}")
        return SystemdError(f"errno {code}", f"D-Bus failure: {why}")
    return SystemdError(name, text)
