"""The journal's verdict: portguard's records must tell the processes' and the oracle's story.

Checked ten scenarios at a time, after `journalctl --sync`: each planned conflict has the
oracle's kind and action; SIGNAL/KILL/STOP_UNIT name only permitted pids and units; every
signal a holder saw from portguard (or the SIGKILL it died of) and every stop systemd did
has its record.
"""

from __future__ import annotations

from typing import Any

from support.soak.model import HolderSpec, Outcome, ProcLog, Scenario
from support.soak.oracle import unprobeable
from support.soak.world import (
    ACT,
    CONFLICT,
    KILL,
    LINGERING,
    NONE,
    REFUSE,
    SELF,
    SIGNAL,
    STOP_UNIT,
    STRAY,
    TOLERATE,
    TWIN,
    WAIT,
)


def _find_holder(sc: Scenario, r: dict[str, Any]) -> HolderSpec | None:
    pid, unit = r.get("PORTGUARD_HOLDER_PID"), r.get("PORTGUARD_HOLDER_UNIT")
    for h in sc.holders:
        if pid and pid.isdigit() and int(pid) in h.pids:
            return h
    for h in sc.holders:
        if unit and h.unit == unit and h.made != "remnant":
            return h
    if r.get("PORTGUARD_HOLDER_KIND") == LINGERING:
        for h in sc.holders:
            if h.made == "lingering" and str(h.ports[0]) == r.get("PORTGUARD_PORT"):
                return h
    return None


def _vanished(sc: Scenario, r: dict[str, Any]) -> bool:
    """A "holder not found" record on a port a leaving holder held."""
    return "holder not found" in str(r.get("MESSAGE")) and any(
        h.racing and str(r.get("PORTGUARD_PORT")) in map(str, h.ports) for h in sc.holders)


PLANNED = {ACT: ("stop", "signal"), WAIT: ("wait",), REFUSE: ("refuse",),
           TOLERATE: ("none",), NONE: ("none",)}


def check_journal(out: Outcome, records: list[dict[str, Any]],
                  logs: dict[int, ProcLog]) -> list[str]:
    """The journal must tell the same story as the processes and the oracle."""
    sc, exp, v = out.sc, out.expected, []
    permitted = [h for h in sc.holders if h.index in exp.permitted]
    ok_pids = {p for h in permitted if h.kind in (SELF, STRAY) for p in h.pids}
    ok_units = {h.unit for h in permitted if h.kind == TWIN}
    seen: set[int] = set()
    stopping = {r.get("PORTGUARD_HOLDER_UNIT") for r in records
                if r.get("MESSAGE_ID") == CONFLICT and r.get("PORTGUARD_ACTION") == "stop"}
    for r in records:
        mid, kind = r.get("MESSAGE_ID"), r.get("PORTGUARD_HOLDER_KIND")
        pid, unit = r.get("PORTGUARD_HOLDER_PID"), r.get("PORTGUARD_HOLDER_UNIT")
        action = r.get("PORTGUARD_ACTION")
        if mid == CONFLICT and kind:
            h = _find_holder(sc, r)
            if h is None and _vanished(sc, r):
                out.observations.append(f"a racing holder vanished mid-scan: {r.get('MESSAGE')}")
                continue  # a holder that left while portguard looked: its socket, no owner
            if h is None:
                v.append(f"journal: a {kind} holder the soak did not make: pid {pid} unit "
                         f"{unit}: {r.get('MESSAGE')}")
                continue
            seen.add(h.index)
            want = PLANNED[h.action]
            if unprobeable(sc, h):  # wait (to see) or none (assumed harmless): both fine
                want = ("none", "wait")
            if h.racing and (kind, action) != (h.kind, want[0]):
                out.observations.append(f"racing h{h.index} ({h.made}/{h.variant}, "
                                        f"{h.kind}) taken for {kind}: {r.get('MESSAGE')}")
            elif kind != h.kind:
                v.append(f"journal: h{h.index} ({h.made}/{h.variant}) classified {kind}, "
                         f"the oracle says {h.kind}: {r.get('MESSAGE')}")
            elif action not in want and not (action == "none" and unit in stopping):
                v.append(f"journal: h{h.index} ({h.kind}) planned {action}, the oracle says "
                         f"{'/'.join(want)}: {r.get('MESSAGE')}")
        elif mid == SIGNAL and action == "signal":
            if not (pid and int(pid) in ok_pids):
                v.append(f"journal: SIGNAL to pid {pid} ({kind}), not a permitted target")
        elif mid == KILL:
            if kind == TWIN and unit not in ok_units:
                v.append(f"journal: KillUnit {unit}, not a permitted twin")
            elif kind != TWIN and not (pid and int(pid) in ok_pids):
                v.append(f"journal: SIGKILL to pid {pid} ({kind}), not a permitted target")
        elif mid == STOP_UNIT and unit not in ok_units:
            v.append(f"journal: StopUnit {unit} ({kind}), not a permitted twin")
    for h in sc.holders:
        must = h.action != NONE and not h.racing
        if must and h.index not in seen:
            v.append(f"journal: h{h.index} ({h.describe()}) is missing from the plan")
    return v + check_journal_against_logs(out, records, logs)


def check_journal_against_logs(out: Outcome, records: list[dict[str, Any]],
                               logs: dict[int, ProcLog]) -> list[str]:
    """Every signal a holder saw (or SIGKILL it died of) has its journal record."""
    sc, exp, v = out.sc, out.expected, []
    signalled = {int(r["PORTGUARD_HOLDER_PID"]) for r in records
                 if r.get("MESSAGE_ID") == SIGNAL and r.get("PORTGUARD_HOLDER_PID")}
    killed = {r.get("PORTGUARD_HOLDER_PID") for r in records if r.get("MESSAGE_ID") == KILL}
    killed_units = {r.get("PORTGUARD_HOLDER_UNIT") for r in records
                    if r.get("MESSAGE_ID") == KILL and r.get("PORTGUARD_HOLDER_KIND") == TWIN}
    stopped_units = {r.get("PORTGUARD_HOLDER_UNIT") for r in records
                     if r.get("MESSAGE_ID") == STOP_UNIT}
    for h in sc.holders:
        for pid in h.pids:
            log = logs.get(pid)
            if log is None:
                continue
            senders = {s for _, s in log.signals}
            if senders - {1, h.parent.get(pid, -1)} and pid not in signalled:
                v.append(f"journal: h{h.index} pid {pid} got a signal from portguard but no "
                         "SIGNAL record names it")
            if 1 in senders and h.unit not in stopped_units | killed_units:
                v.append(f"journal: h{h.index} pid {pid} got a signal from systemd but no "
                         f"StopUnit/KillUnit record names {h.unit}")
            if log.exit or h.index not in exp.permitted or log.alive:
                continue
            if h.kind == TWIN and h.unit not in killed_units:
                v.append(f"journal: h{h.index} pid {pid} of {h.unit} died of SIGKILL with "
                         "no KillUnit record")
            elif h.kind != TWIN and str(pid) not in killed:
                v.append(f"journal: h{h.index} pid {pid} died of SIGKILL with no KILL record")
    return v
