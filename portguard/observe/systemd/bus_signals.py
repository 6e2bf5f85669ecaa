"""systemd's signals on one bus connection: JobRemoved and unit PropertiesChanged.

Split from observe.systemd.units, which owns the connection and turns pystemd's errors into
ours; this module only builds, pins and counts the signal callbacks (it imports neither
pystemd nor `units`). Two users:

- job waits (`Systemd.stop_unit`/`start_unit`): every JobRemoved since the first match is
  kept, by job path, in `SignalHub.finished` (bounded), because a job's JobRemoved may be
  dispatched before the caller knows the job's path;
- `portguard daemon`: `watch_units(listener)` hands the name of every unit systemd says
  changed (PropertiesChanged on a unit object, or a JobRemoved) to the listener.

pystemd's `match_signal` keeps only a raw pointer to its callback and sets
`callback.metadata`: callbacks are plain functions pinned in PINNED until the connection
closes (`release`). A callback must never raise (pystemd would turn it into a failed
`process()`), so each catches everything and only records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from portguard.observe.systemd.dbus_errors import as_text

DEST = b"org.freedesktop.systemd1"
PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
PROPERTIES = b"org.freedesktop.DBus.Properties"
UNIT_PREFIX = "/org/freedesktop/systemd1/unit/"
JOB_GONE = "gone"  # JobResult.result of a job that vanished without a JobRemoved
REMEMBERED = 1024  # JobRemoved results kept for jobs nobody has asked about (yet)

PINNED: set[Callable[..., None]] = set()  # callbacks pystemd holds only a raw pointer to


class JobResult(NamedTuple):
    """How a systemd job ended: `result` is JobRemoved's (done, canceled, timeout,
    failed, dependency, skipped, invalid) or "gone" (vanished without the signal)."""

    job: str  # object path
    unit: str
    result: str

    @property
    def ok(self) -> bool:
        return self.result == "done"


Listener = Callable[[str], None]
Matcher = Callable[[bytes, bytes | None, bytes, bytes, Callable[..., None]], None]



def unit_from_object_path(path: str) -> str | None:
    """`/org/freedesktop/systemd1/unit/web_40blue_2eservice` -> `web@blue.service`.

    sd_bus_path_encode's escaping: every byte outside [A-Za-z0-9] is `_` and two hex
    digits. None for paths that are not a unit object, or not validly escaped.
    """
    if not path.startswith(UNIT_PREFIX):
        return None
    text = path[len(UNIT_PREFIX):]
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "_":
            try:
                out.append(int(text[i + 1:i + 3], 16))
            except ValueError:
                return None
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode("utf-8", "replace") or None


class SignalHub:
    """The signal matches of one connection and what they saw."""

    def __init__(self) -> None:
        self.finished: dict[str, JobResult] = {}  # JobRemoved seen, by job path
        self.listeners: list[Listener] = []
        self.seen = 0  # signals our callbacks received: tells a dispatching process() apart
        self._pinned: list[Callable[..., None]] = []
        self.jobs_watched = False
        self.units_watched = False

    def _tell(self, unit: str) -> None:
        for listener in self.listeners:
            listener(unit)

    def watch_jobs(self, match: Matcher) -> None:
        """Match JobRemoved (the caller subscribes afterwards), once per connection."""
        if self.jobs_watched:
            return
        finished = self.finished

        def on_job_removed(msg: Any, error: Any = None, userdata: Any = None) -> None:
            try:  # never raise: pystemd would turn it into a failed process()
                self.seen += 1
                msg.process_reply(False)
                _, job, unit, result = msg.body
                finished[as_text(job)] = JobResult(as_text(job), as_text(unit), as_text(result))
                while len(finished) > REMEMBERED:
                    del finished[next(iter(finished))]
                self._tell(as_text(unit))
            except Exception:  # a malformed signal (or a listener's bug) is not ours
                pass

        self._match(match, MANAGER, PATH, b"JobRemoved", on_job_removed)
        self.jobs_watched = True

    def watch_units(self, match: Matcher, listener: Listener) -> None:
        """Hand every unit systemd reports a change of to `listener` (unit name)."""
        self.listeners.append(listener)
        if self.units_watched:
            return

        def on_properties(msg: Any, error: Any = None, userdata: Any = None) -> None:
            try:  # the body (every changed property) is not parsed: the path says it all
                self.seen += 1
                unit = unit_from_object_path(as_text(msg.get_path()))
                if unit:
                    self._tell(unit)
            except Exception:
                pass

        # No path: every unit object. systemd sends these only to subscribed clients.
        self._match(match, PROPERTIES, None, b"PropertiesChanged", on_properties)
        self.units_watched = True

    def _match(self, match: Matcher, iface: bytes, path: bytes | None, member: bytes,
               callback: Callable[..., None]) -> None:
        PINNED.add(callback)
        try:
            match(DEST, path, iface, member, callback)
        except BaseException:
            PINNED.discard(callback)
            raise
        self._pinned.append(callback)

    def release(self) -> None:
        """The connection is closed: its matches (and their callbacks) are gone."""
        for callback in self._pinned:
            PINNED.discard(callback)
        self._pinned.clear()
        self.listeners.clear()
        self.jobs_watched = self.units_watched = False
