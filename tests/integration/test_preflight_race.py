"""`portguard preflight` against a real systemd: --dry-run, and two instances racing.

See test_preflight.py.
"""

from __future__ import annotations

import json

from support.cases import (
    ACTING,
    CONFLICT,
    KILL,
    SIGNAL,
    STOP_UNIT,
    WAIT,
    Case,
    config,
)
from support.sandbox import PYTHON, REPO

# -- 7. --dry-run ----------------------------------------------------------------------


def test_dry_run_says_what_it_would_do_and_touches_nothing(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"dry-{case.uid}@.service"
    a, b = f"dry-{case.uid}@a.service", f"dry-{case.uid}@b.service"
    case.config(config(port, template))
    # SO_REUSEPORT (same uid): the twin and the stray share the port, both hold it
    case.unit(template, "--port", str(port), "--reuseport")
    case.units += [a, b]
    assert case.start(a).returncode == 0
    twin = case.main_pid(a)
    stray = case.spawn(port, "--reuseport")

    done = case.preflight(b, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert f"would stop: policy: stop (StopUnit {a})" in said
    assert "would signal: policy: stop (SIGTERM" in said
    assert "nothing touched" in said

    records = case.records(unit=b)
    planned = [r for r in records if r["MESSAGE_ID"] == CONFLICT and "PORTGUARD_HOLDER_KIND"
               in r]
    assert {(r["PORTGUARD_HOLDER_KIND"], r["PORTGUARD_ACTION"], r["PORTGUARD_HOLDER_PID"])
            for r in planned} == {("twin", "stop", str(twin)), ("stray", "signal", str(stray))}
    assert all(r["PORTGUARD_RESULT"] == "dry-run" for r in planned)
    summary = case.record(CONFLICT, b, action="none", result="dry-run")
    assert "would stop or signal 2 and wait for 0 holder(s)" in summary["MESSAGE"]
    assert not [r for r in records if r["MESSAGE_ID"] in ACTING]

    assert case.state(a) == "active" and case.main_pid(a) == twin and sb.pid_alive(twin)
    assert sb.pid_alive(stray)
    assert case.state(b) == "inactive"


# -- 8. two instances racing for one port ---------------------------------------------------


def test_two_instances_started_together_end_with_exactly_one_running(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"race-{case.uid}@.service"
    canary_unit = f"canary-{case.uid}.service"
    case.config(config(port, template))
    case.unit(template, "--port", str(port))
    # bystanders: a unit and a process outside any unit, both listener.py (on other ports)
    case.unit(canary_unit, "--port", str(case.port()), guarded=False)
    assert case.start(canary_unit).returncode == 0
    canary_main = case.main_pid(canary_unit)
    canary = case.spawn(case.port())

    for round_ in range(3):
        a, b = (f"race-{case.uid}@{round_}a.service", f"race-{case.uid}@{round_}b.service")
        case.units += [a, b]
        queued = sb.systemctl("start", "--no-block", a, b)
        assert queued.returncode == 0, queued.stderr

        states = sb.wait_settled(a, b, timeout=20)
        assert states.count("active") == 1, states
        winner, loser = (a, b) if states[0] == "active" else (b, a)
        # stopped by its twin like any stopped unit (issue 11 item 6), never
        # `failed (Result: signal)` from a preflight killed while it waited for the lock
        assert (case.state(loser), sb.unit_property(loser, "Result")) == (
            "inactive", "success"), sb.systemctl("status", loser).stdout
        [held] = json.loads(sb.portguard("--json", "who", str(port)).stdout)["ports"]
        assert {h["unit"] for h in held["holders"]} == {winner}
        sb.systemctl("stop", winner, check=True)

    acting = [r for r in case.records() if r["MESSAGE_ID"] in ACTING]
    ours = {f"race-{case.uid}@{n}{x}.service" for n in range(3) for x in "ab"}
    assert {r["PORTGUARD_UNIT"] for r in acting} <= ours
    assert {r.get("PORTGUARD_HOLDER_UNIT") for r in acting} <= ours
    assert str(canary) not in {r.get("PORTGUARD_HOLDER_PID") for r in acting}
    assert str(canary_main) not in {r.get("PORTGUARD_HOLDER_PID") for r in acting}
    assert not [r for r in acting if r["MESSAGE_ID"] in (SIGNAL, KILL)]  # twins: StopUnit
    assert all(r["PORTGUARD_HOLDER_KIND"] == "twin" for r in acting
               if r["MESSAGE_ID"] == STOP_UNIT)
    assert sb.pid_alive(canary)
    assert case.state(canary_unit) == "active" and case.main_pid(canary_unit) == canary_main


def test_a_sigterm_that_is_no_stop_of_the_unit_fails_closed(case: Case) -> None:
    # preflight waits for a port's lock (another guard holds it) and gets SIGTERM while
    # its unit is not being stopped: it must not exit 0 (the service would start unguarded)
    sb, port = case.sb, case.port()
    unit = f"term-{case.uid}.service"
    case.config(config(port, unit))
    case.unit(unit, "--port", str(port))
    case.spawn(port)  # a holder: preflight takes the slow path, under the lock
    lock = f"/run/portguard/tcp-{port}.lock"
    hold = f"import fcntl, time; f = open('{lock}', 'w'); fcntl.flock(f, 2); time.sleep(20)"
    script = (f"mkdir -p /run/portguard; {PYTHON} -c \"{hold}\" >/dev/null 2>&1 & holder=$!; "
              "sleep 0.5; "
              f"{PYTHON} -m portguard --config {case.cfg} preflight {unit} & pre=$!; "
              f"sleep 2; kill -TERM $pre; wait $pre; echo rc=$?; kill $holder")
    done = sb.run(["sh", "-c", script], env={"PYTHONPATH": str(REPO)}, timeout=30)
    assert "rc=1" in done.stdout, done.stdout + done.stderr
    assert "got SIGTERM while the unit is not being stopped" in done.stderr
    assert case.record(WAIT, unit, result="locked")  # it was waiting for the lock
