"""Reading the journal: a unit's recent invocations, newest first. The only module that
reads it (portguard.report.journal writes).

Through `journalctl -o json` with exact field matches, not a library: pystemd (the one
systemd binding portguard depends on) can send to the journal but has no reader, and
python3-systemd would be a second binding for one query. journalctl also applies the
caller's own rights: root reads everything, a user what the `systemd-journal` or `adm`
group lets it read, and it says so on stderr when it could not open everything.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from portguard.errors import NotPermittedError, PortguardError
from portguard.model import JOURNAL_SYSTEMD, JournalRecord

JOURNALCTL = "journalctl"
MAX_RECORDS = 4000  # newest records read per query: ample for a few invocations
TIMEOUT = 20.0  # seconds


class Invocation(NamedTuple):
    id: str  # "" for records of no invocation
    unit: str
    records: tuple[JournalRecord, ...]  # oldest first

    @property
    def started(self) -> str:
        return self.records[0].time if self.records else ""


class JournalRead(NamedTuple):
    invocations: tuple[Invocation, ...]  # newest first
    warning: str  # what journalctl said on stderr (e.g. not every file was readable)


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT,
                          check=False, env={"LC_ALL": "C.UTF-8", "SYSTEMD_PAGER": "",
                                            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})


def _text(value: object) -> str:
    """journalctl -o json gives non-UTF-8 or binary fields as arrays of bytes."""
    if isinstance(value, list):
        try:
            return bytes(int(b) for b in value).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return ""
    return value if isinstance(value, str) else ""


def shown_time(usec: int) -> str:
    """A timestamp the way `journalctl` (short format) prints it, in local time."""
    return time.strftime("%b %d %H:%M:%S", time.localtime(usec / 1_000_000))


def parse(stdout: str, units: Sequence[str]) -> list[JournalRecord]:
    """Records of journalctl -o json output, in the order given; unparseable lines
    (a truncated last line) are skipped."""
    records = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            continue
        own = _text(raw.get("_SYSTEMD_UNIT")) in units
        # UNIT= is a field any process may send: only root's (PID 1's, or its sd-listen
        # helper's, which reports a socket unit's bind failure from its cgroup) count
        about = _text(raw.get("UNIT")) in units and _text(raw.get("_UID")) == "0"
        unit = _text(raw.get("_SYSTEMD_UNIT")) if own else _text(raw.get("UNIT"))
        if not (own or about):
            continue
        invocation = _text(raw.get("_SYSTEMD_INVOCATION_ID" if own else "INVOCATION_ID"))
        usec = int(_text(raw.get("__REALTIME_TIMESTAMP")) or 0)
        records.append(JournalRecord(shown_time(usec), usec, unit,
                              _text(raw.get("SYSLOG_IDENTIFIER")) or _text(raw.get("_COMM")),
                              _text(raw.get("_PID")), _text(raw.get("MESSAGE")), invocation,
                              JOURNAL_SYSTEMD if about else _text(raw.get("_TRANSPORT"))))
    return records


def group(records: Sequence[JournalRecord], limit: int) -> list[Invocation]:
    """Records (newest first) into at most `limit` invocations per unit, newest first;
    a record without an invocation id joins the invocation logged around it."""
    order: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], list[JournalRecord]] = {}
    last: dict[str, str] = {}
    for rec in records:
        inv = rec.invocation or last.get(rec.unit, "")
        last[rec.unit] = inv
        key = (rec.unit, inv)
        if key not in by_key:
            if sum(1 for u, _ in order if u == rec.unit) >= limit:
                continue
            order.append(key)
            by_key[key] = []
        by_key[key].append(rec)
    return [Invocation(inv, unit, tuple(reversed(by_key[(unit, inv)])))
            for unit, inv in order]


def invocations(units: Sequence[str], *, limit: int = 5,
                run: Runner = _run) -> JournalRead:
    """The newest `limit` invocations of each of `units` (a service and, say, its
    sockets), newest first: the records of their processes and systemd's about them."""
    argv = [JOURNALCTL, "--no-pager", "-o", "json", "-r", "-n", str(MAX_RECORDS)]
    for i, unit in enumerate(units):
        argv += [*(["+"] if i else []), f"_SYSTEMD_UNIT={unit}", "+", f"UNIT={unit}"]
    try:
        done = run(argv)
    except FileNotFoundError:
        raise PortguardError("journalctl is not installed: cannot read the journal") \
            from None
    except subprocess.TimeoutExpired:
        raise PortguardError(f"journalctl did not answer within {TIMEOUT:g}s") from None
    warning = done.stderr.strip()
    if done.returncode != 0 and not done.stdout.strip():
        if "permission" in warning.lower():
            raise NotPermittedError(f"cannot read the journal ({warning}): run as root, or "
                                    "as a member of the systemd-journal or adm group")
        raise PortguardError(f"journalctl failed: {warning or f'exit {done.returncode}'}")
    return JournalRead(tuple(group(parse(done.stdout, units), limit)), warning)
