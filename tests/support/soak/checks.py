"""The process-level verdict, right after preflight: who was signalled, who is gone.

Each holder logs every signal with its sender's pid (portguard through a pidfd, PID 1 for
systemd's stop, or its own parent passing a stop on), so a signal to anyone the oracle
did not permit is seen, and so is a permitted target left alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from support.soak.model import HolderSpec, LaneView, Outcome, ProcLog, Scenario
from support.soak.programs import HELPER_CODE
from support.soak.world import PY3, SIGDIR, TWIN


def read_log(lane: LaneView, sc: Scenario, h: HolderSpec, pid: int) -> ProcLog:
    path = lane.soak.host(f"{SIGDIR}/s{sc.n}/{h.tag}.{pid}.log")
    signals, exit_ = [], ""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(path).read_text().splitlines():
            words = line.split()
            if words[0] == "sig":
                signals.append((int(words[1]), int(words[2].split("=")[1])))
            elif words[0] == "exit":
                exit_ = " ".join(words[1:-1])
    return ProcLog(pid, signals, exit_)


def check_after_preflight(lane: LaneView, sc: Scenario, out: Outcome) -> dict[int, ProcLog]:
    """Process-level checks, right after preflight: signals, deaths, exit, ports."""
    exp, v = out.expected, out.violations
    if out.exit != exp.exit and out.exit not in exp.also:
        v.append(f"exit status {out.exit}, the oracle says {exp.exit} ({exp.why})")
    all_logs: dict[int, ProcLog] = {}
    grace_until = time.monotonic() + 1.0
    for h in sc.holders:
        if not h.live:
            continue
        permitted = h.index in exp.permitted
        if h.unit and h.unit.endswith(".service") and h.made != "remnant":
            check_unit(lane, sc, out, h, permitted)
        for pid in h.pids:
            # liveness first, then the log: a process logs its exit before it dies
            alive = alive_after(lane, out, h, pid, permitted=permitted, grace_until=grace_until)
            log = all_logs[pid] = read_log(lane, sc, h, pid)
            log.alive = alive
            check_process(out, h, log, permitted=permitted)
    if out.exit == 0 and exp.exit == 0 and exp.cleared:  # (not for `also`)
        check_cleared(lane, sc, out)
    return all_logs


def alive_after(lane: LaneView, out: Outcome, h: HolderSpec, pid: int, *, permitted: bool,
                grace_until: float) -> bool:
    """Alive now; a permitted target gets until `grace_until` to be gone."""
    if permitted and out.exit in (0, 75) and out.expected.exit in (0, 75):
        while lane.alive(h, pid) and time.monotonic() < grace_until:
            time.sleep(0.01)
    return lane.alive(h, pid)


def check_process(out: Outcome, h: HolderSpec, log: ProcLog, *,
                  permitted: bool) -> None:
    pid, alive = log.pid, log.alive
    v, who = out.violations, f"h{h.index} pid {pid} ({h.kind}, {h.made}/{h.variant})"
    from_portguard = [s for s, sender in log.signals
                      if sender not in (1, h.parent.get(pid, -1))]
    from_systemd = [s for s, sender in log.signals if sender == 1]
    allowed = {signal.Signals[sc_signal(out)], signal.SIGCONT}
    if from_portguard and not set(from_portguard) <= allowed:
        v.append(f"{who} got {sigs(from_portguard)} from portguard; the config says "
                 f"{sc_signal(out)} (then SIGCONT, SIGKILL)")
    if from_portguard:
        out.signalled += 1
        if not permitted:
            v.append(f"{who} was signalled by portguard ({sigs(from_portguard)}) but "
                     "is not a permitted target")
        elif h.kind == TWIN:
            v.append(f"{who} is a twin but was signalled directly "
                     f"({sigs(from_portguard)}), not through systemd")
    if from_systemd and not (permitted and h.kind == TWIN):
        v.append(f"{who} got {sigs(from_systemd)} from systemd but its unit was not "
                 "to be stopped")
    if permitted and out.exit in (0, 75) and out.expected.exit in (0, 75) and alive:
        v.append(f"{who} is a permitted target but still alive after exit "
                 f"{out.exit} (its conflict was not cleared)")
    if not alive and not log.exit:
        if permitted:
            out.killed += 1
        else:
            v.append(f"{who} died without an exit of its own (SIGKILL?) but is not a "
                     "permitted target")
    if not permitted and not alive and log.exit and log.exit != "leave":
        v.append(f"{who} exited on {log.exit} but is not a permitted target")
    if not permitted and not alive and log.exit == "leave" and h.leave is None:
        v.append(f"{who} left by itself although it never was to")  # harness bug


def check_unit(lane: LaneView, sc: Scenario, out: Outcome, h: HolderSpec, permitted: bool) -> None:
    assert h.unit is not None
    state = lane.sb.systemctl("show", "-P", "ActiveState", h.unit).stdout.strip()
    logs = {pid: read_log(lane, sc, h, pid) for pid in h.pids}  # after the state
    who = f"h{h.index} {h.unit} ({h.kind}, {h.made}/{h.variant})"
    if any(sender == 1 for log in logs.values() for _, sender in log.signals):
        out.stopped_units += 1
    left = h.leave is not None and any(log.exit == "leave" for log in logs.values())
    if not permitted and not left and h.variant != "remnant" and state != "active":
        out.violations.append(f"{who} is {state}, but portguard was not to stop it")
    if permitted and out.exit in (0, 75) and state in ("active", "activating",
                                                        "deactivating"):
        out.violations.append(f"{who} is still {state} after exit {out.exit}")


def check_cleared(lane: LaneView, sc: Scenario, out: Outcome) -> None:
    if sc.via_unit:  # the service itself binds its ports: the real proof
        path = lane.soak.host(f"{SIGDIR}/s{sc.n}/subject.ready")
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        text = Path(path).read_text() if os.path.exists(path) else "never ready"
        if not text[:1].isdigit():
            out.violations.append(f"exit 0 but {out.subject} could not bind its ports: "
                                  f"{text.strip()}")
        return
    probe = lane.sb.run([PY3, "-I", "-S", "-c", HELPER_CODE, "probe", sc.proto,
                         str(int(sc.reuse)), *map(str, sc.ports)])
    bad = [line for line in probe.stdout.splitlines() if not line.endswith(" ok")]
    if bad or probe.returncode != 0:
        held = lane.sb.run(["ss", "-Htuanp"]).stdout
        mine = [line for line in held.splitlines()
                if any(f":{p} " in line for p in sc.ports)]
        out.violations.append(f"exit 0 but bind() still fails on {', '.join(bad)} "
                              f"{probe.stderr.strip()} (ss: {mine})")

# -- the journal ---------------------------------------------------------------------------


def sc_signal(out: Outcome) -> str:
    return out.sc.signal


def sigs(signos: Iterable[int]) -> str:
    names = []
    for s in signos:
        try:
            names.append(signal.Signals(s).name)
        except ValueError:
            names.append(str(s))
    return "+".join(names)
