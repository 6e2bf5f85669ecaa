"""`portguard preflight` against a real systemd: what it must never touch, and addresses.

Foreign holders (refused, or waited for with `on_foreign: wait`), protected units,
units the config does not name, and bind() address overlap. See test_preflight.py.
"""

from __future__ import annotations

import subprocess
import threading
import time

from support.cases import (
    ACTING,
    CONFLICT,
    PORTS_CLEAR,
    REFUSED,
    TIMED_OUT,
    UNIT_NOT_CONFIGURED,
    WAIT,
    WARNED,
    Case,
    config,
    ids,
)
from support.sandbox import listener_argv

# -- 4. a foreign holder ----------------------------------------------------------------


def foreign_service(case: Case, prefix: str, *, extra: str = "") -> tuple[int, str, str, int]:
    """A config for `{prefix}app-UID.service` and a service it does not name,
    `{prefix}other-UID.service`, running and listening on the app's port:
    (port, app, other, the other's main pid)."""
    port = case.port()
    unit, other = f"{prefix}app-{case.uid}.service", f"{prefix}other-{case.uid}.service"
    case.config(config(port, unit, extra=extra))
    case.unit(other, "--port", str(port), "--name", "otherd", guarded=False)
    return port, unit, other, case.start_listening(other, port)



def preflight_while_stopping(case: Case, unit: str, other: str, *, after: float
                             ) -> tuple[subprocess.CompletedProcess[str], float]:
    """`preflight UNIT` while the test stops OTHER `after` seconds in: (result, seconds)."""
    stopper = threading.Timer(after, lambda: case.sb.systemctl("stop", other))
    stopper.start()
    t0 = time.monotonic()
    try:
        done = case.preflight(unit)
    finally:
        stopper.join()
    return done, time.monotonic() - t0


def test_a_foreign_service_is_named_and_never_touched(case: Case) -> None:
    sb = case.sb
    port, unit, other, holder = foreign_service(case, "")
    case.unit(unit, "--port", str(port))

    done = case.preflight(unit)
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr
    assert f"pid {holder}" in err
    assert "python3" in err  # the program (listener.py runs under python3.x)
    assert other in err
    assert f"systemctl stop {other}" in err  # what a person can do about it
    refused = case.record(REFUSED, unit, holder_pid=holder)
    assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert refused["PORTGUARD_HOLDER_UNIT"] == other
    assert refused["PORTGUARD_ACTION"] == "refuse"
    assert refused["PORTGUARD_RESULT"] == "blocked"
    assert refused["PORTGUARD_PORT"] == str(port)
    assert refused["PRIORITY"] == "3"

    started = case.start(unit)
    assert started.returncode != 0
    assert case.state(unit) == "failed"
    assert sb.unit_property(unit, "Result") == "exit-code"
    assert sb.unit_property(unit, "ExecMainStartTimestampMonotonic") == "0"  # never ran
    shown = case.unit_journal(unit)
    assert REFUSED in ids(shown)
    assert all(r["PORTGUARD_HOLDER_KIND"] == "foreign" for r in shown
               if r["MESSAGE_ID"] in (CONFLICT, REFUSED))
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]
    assert sb.pid_alive(holder)
    assert case.state(other) == "active" and case.main_pid(other) == holder


def test_on_foreign_wait_passes_once_the_foreign_service_stops(case: Case) -> None:
    _, unit, other, holder = foreign_service(case, "w", extra="on_foreign: wait\ntimeout: 3s")

    done, took = preflight_while_stopping(case, unit, other, after=1.0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 0.9 < took < 3.5
    waiting = case.record(WAIT, unit, result="waiting")
    assert waiting["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert waiting["PORTGUARD_ACTION"] == "wait"
    assert waiting["PORTGUARD_HOLDER_PID"] == str(holder)
    case.record(WAIT, unit, result="gone")
    case.record(PORTS_CLEAR, unit, result="clear")
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]
    assert case.state(other) == "inactive"  # stopped by the test, not by portguard


def test_on_foreign_wait_times_out_with_75_while_it_stays(case: Case) -> None:
    sb = case.sb
    _, unit, other, holder = foreign_service(case, "t", extra="on_foreign: wait\ntimeout: 3s")

    t0 = time.monotonic()
    done = case.preflight(unit)
    took = time.monotonic() - t0
    assert done.returncode == 75, done.stdout + done.stderr
    assert 2.9 < took < 6
    assert f"pid {holder}" in done.stderr and other in done.stderr
    timed_out = case.record(TIMED_OUT, unit)
    assert timed_out["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert timed_out["PORTGUARD_HOLDER_PID"] == str(holder)
    assert timed_out["PORTGUARD_ACTION"] == "wait"
    assert timed_out["PORTGUARD_RESULT"] == "timeout"
    assert sb.pid_alive(holder)
    assert case.state(other) == "active"


def test_policy_warn_passes_once_the_holder_it_waits_for_goes(case: Case) -> None:
    # Found by the soak: under `warn` a wait for a foreign holder was followed by another
    # wait, for the holders `warn` tolerates, until the whole budget was spent.
    sb, port = case.sb, case.port()
    unit, other = f"wwarn-{case.uid}.service", f"wwother-{case.uid}.service"
    case.config(f"services:\n  {unit}:\n    ports: [\"{port}\"]\n    policy: warn\n"
                "    on_foreign: wait\n    timeout: 5s\n")
    case.unit(unit, "--port", str(port), "--addr", "127.0.0.1")
    stray = case.spawn(port, "--addr", "127.0.0.1")  # tolerated: the unit's own argv
    case.unit(other, "--port", str(port), "--addr", "127.0.0.2", "--name", "otherd",
              guarded=False)
    holder = case.start_listening(other, port)

    done, took = preflight_while_stopping(case, unit, other, after=1.0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 0.9 < took < 3.5  # not the 5 s budget
    case.record(WAIT, unit, result="waiting", holder_pid=holder)
    case.record(WAIT, unit, result="gone")
    tolerated = case.record(WARNED, unit, holder_pid=stray)
    assert (tolerated["PORTGUARD_HOLDER_KIND"], tolerated["PORTGUARD_ACTION"],
            tolerated["PORTGUARD_RESULT"]) == ("stray", "none", "tolerated")
    assert sb.pid_alive(stray)
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]


# -- 11. protected units -----------------------------------------------------------------


def test_a_twin_in_a_protected_unit_is_refused_and_left_running(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"prot-{case.uid}@.service"
    a, b = f"prot-{case.uid}@a.service", f"prot-{case.uid}@b.service"
    case.config(config(port, template, protected=f"[{a}]"))
    case.unit(template, "--port", str(port))
    case.units += [a, b]
    assert case.start(a).returncode == 0
    a_pid = case.main_pid(a)

    done = case.preflight(b)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{a} is protected" in done.stderr and f"pid {a_pid}" in done.stderr
    assert case.start(b).returncode != 0
    assert case.state(b) == "failed"
    refused = case.record(REFUSED, b, holder_pid=a_pid)
    assert refused["PORTGUARD_HOLDER_KIND"] == "twin"
    assert refused["PORTGUARD_HOLDER_UNIT"] == a
    assert refused["PORTGUARD_ACTION"] == "refuse"
    assert REFUSED in ids(case.unit_journal(b))
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]
    assert case.state(a) == "active" and case.main_pid(a) == a_pid and sb.pid_alive(a_pid)


def test_a_stray_in_a_protected_scope_is_refused_and_left_running(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit, scope = f"pscope-{case.uid}.service", f"keep-{case.uid}.scope"
    case.config(config(port, unit, protected=f"[{scope}]"))
    case.unit(unit, "--port", str(port))
    # the same program and argv as the unit's ExecStart=, started in a scope of its own
    # (systemd-run --scope execs it: the pid stays the same)
    pid = sb.spawn(["systemd-run", "--quiet", "--scope", f"--unit={scope}",
                    *listener_argv("--port", str(port))], wait_exec=False)
    case.pids.append(pid)
    case.wait_listening(port, pid)
    assert sb.cgroup_of(pid).endswith(f"/{scope}")

    done = case.preflight(unit)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{scope} is protected" in done.stderr
    refused = case.record(REFUSED, unit, holder_pid=pid)
    assert refused["PORTGUARD_HOLDER_KIND"] == "stray"
    assert refused["PORTGUARD_HOLDER_UNIT"] == scope
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]
    assert sb.pid_alive(pid)


# -- 10. a unit the config does not name ---------------------------------------------------


def test_an_unconfigured_unit_passes_with_a_notice(case: Case) -> None:
    port = case.port()
    case.config(config(port, f"named-{case.uid}.service"))
    unit = f"unnamed-{case.uid}.service"
    done = case.preflight(unit)
    assert done.returncode == 0, done.stderr
    assert "not in" in done.stderr and case.cfg in done.stderr
    notice = case.record(UNIT_NOT_CONFIGURED, unit)
    assert notice["PRIORITY"] == "5"
    assert notice["PORTGUARD_ACTION"] == "none"
    assert notice["PORTGUARD_RESULT"] == "pass"

    case.unit(unit, "--port", str(port))  # and as its ExecStartPre=: it starts
    case.start_active(unit)
    # only the ExecStartPre= run: the direct one ran outside the unit
    assert ids(case.unit_journal(unit)) == [UNIT_NOT_CONFIGURED]


# -- 9. which addresses overlap ----------------------------------------------------------


def test_127_0_0_1_does_not_block_127_0_0_2(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"lo2-{case.uid}.service"
    case.config(config(f"127.0.0.2:{port}", unit))
    case.unit(unit, "--port", str(port), "--addr", "127.0.0.2")
    holder = case.spawn(port, "--addr", "127.0.0.1", "--name", "otherd")

    done = case.preflight(unit)
    assert done.returncode == 0, done.stderr
    case.record(PORTS_CLEAR, unit, result="clear")
    assert CONFLICT not in ids(case.records(unit=unit))
    case.start_active(unit)  # bind() agrees
    assert sb.pid_alive(holder)


def test_a_dual_stack_listener_blocks_0_0_0_0_and_a_v6only_one_does_not(case: Case) -> None:
    sb, port, port6 = case.sb, case.port(), case.port()
    unit = f"dual-{case.uid}.service"
    case.config(config(f"0.0.0.0:{port}", unit))
    dual = case.spawn(port, "--addr", "::", "--no-v6only", "--name", "otherd")

    done = case.preflight(unit)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"pid {dual}" in done.stderr
    refused = case.record(REFUSED, unit, holder_pid=dual)
    assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert sb.pid_alive(dual)

    v6only = case.spawn(port6, "--addr", "::", "--v6only", "--name", "otherd")
    case.config(config(f"0.0.0.0:{port6}", unit))
    done = case.preflight(unit)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sb.pid_alive(v6only)
