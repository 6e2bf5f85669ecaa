"""sd_notify(3) for `portguard daemon`: a typed wrapper over sdnotify.

sdnotify (0.3.1 in Debian 12 and 0.3.2 on PyPI run the same code) connects a datagram
socket to $NOTIFY_SOCKET (`@name` is an abstract address) when it is constructed, and
`notify(text)` encodes the text as latin-1, silently dropping the message when that fails.
systemd reads the datagram as UTF-8. So each message goes to sdnotify as its UTF-8 bytes
spelled as latin-1 characters (`text.encode("utf-8").decode("latin-1")`): sdnotify's
latin-1 encoding then yields exactly the UTF-8 bytes, and a STATUS= such as
"watching 3 services — 0 conflicts ✓" arrives intact instead of being dropped (or, had it
been latin-1 text, shown as mojibake).

A STATUS= text is one line: newlines, carriage returns and NULs become spaces, so text
that comes from a config error can never add an assignment of its own (`\\nREADY=1`).
Outside systemd ($NOTIFY_SOCKET unset) every call does nothing. `Keeper` pings the
watchdog from a thread while the main thread is in a step it declared bounded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from portguard.text import shown

SEND_TIMEOUT = 1.0  # seconds: a wedged manager costs at most this per message


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, when it is set and
    $WATCHDOG_PID is unset or this process (as sd_watchdog_enabled(3) decides); else None."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


def one_line(text: str) -> str:
    """STATUS= is one line: portguard's own line breaks become spaces, and any other
    control character (a process's name can hold one) is `shown`."""
    return shown(text.replace("\r", " ").replace("\n", " ").replace("\0", " "))


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 to the service manager."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        self._sd: Any = None
        if self.enabled:
            import sdnotify  # reads $NOTIFY_SOCKET from os.environ itself

            self._sd = sdnotify.SystemdNotifier()
            sock = getattr(self._sd, "socket", None)
            if isinstance(sock, socket.socket):
                sock.settimeout(SEND_TIMEOUT)  # every wait has a bound
        self.sent: list[str] = []  # the last few messages, for tests and diagnostics

    def send(self, *assignments: str) -> None:
        """One datagram with these `KEY=VALUE` assignments, UTF-8 on the wire."""
        message = "\n".join(assignments)
        self.sent = [*self.sent[-9:], message]
        if self._sd is not None:
            self._sd.notify(message.encode("utf-8").decode("latin-1"))

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *self._status(status))

    def status(self, text: str) -> None:
        self.send(*self._status(text))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC= (CLOCK_MONOTONIC in µs, as systemd 253's
        Type=notify-reload requires); READY=1 ends the reload."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *self._status(status))

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={one_line(text)}",)

    def close(self) -> None:
        sock = getattr(self._sd, "socket", None)
        if isinstance(sock, socket.socket):
            sock.close()
        self._sd = None


class Keeper:
    """WATCHDOG=1 from a thread, but only until the bound the main thread declared with
    `hold(seconds)` for the step it is in (the daemon: a pass step that may wait, up to a
    service's timeout). A main thread stuck past its own bound, or anywhere outside a held
    step, gets no pings from here: the watchdog still catches it."""

    def __init__(self, ping: Callable[[], None], interval: float) -> None:
        self.ping = ping
        self.interval = interval
        self.until = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portguard-watchdog",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hold(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def release(self) -> None:
        self.until = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if time.monotonic() < self.until:
                self.ping()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
