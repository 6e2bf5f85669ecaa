"""Faults around portguard (issue 7, item 2): StopUnit of a twin does not simply work.

A twin instance holds the port and policy is `stop`, so preflight asks systemd to stop it
(StopUnit, then waits for the job). Here the job ends otherwise than `done`, or systemd
refuses the call:

- `canceled` (a start of the twin replaces the stop job) and `timeout` (JobTimeoutSec=):
  exit 1, the job's result journaled, nothing killed by portguard;
- an ExecStop= that fails, a TimeoutStopSec= that systemd enforces, a masked twin: the job
  is `done`, the port is free, exit 0;
- RefuseManualStop= (OnlyByDependency), AccessDenied as nobody (polkit says no): exit 1 /
  77, the twin untouched, the refusal journaled (it was not: a bug these tests found);
- the twin unloaded between the scan and StopUnit (NoSuchUnit): it counts as stopped and
  the port decides, exit 0 (it failed the start: a bug these tests found).

Also the helpers the other test_faults_* files use: `Paused` (portguard stopped just
before a given function runs, so a test can change the world between scan and act) and
`nobody_portguard` (argv and env that run portguard as nobody from a copy of the code).
"""

from __future__ import annotations

import threading
import time
from subprocess import CompletedProcess

import pytest
from support.cases import (
    ACTING,
    CONFLICT,
    KILL,
    PORTS_CLEAR,
    REFUSED,
    SIGNAL,
    STOP_UNIT,
    Case,
    config,
)
from support.sandbox import listener_exec
from support.unprivileged import Paused, nobody_portguard

MANAGE_UNITS = "org.freedesktop.systemd1.manage-units"


def twin(case: Case, name: str, *, unit: str = "", service: str = "",
         settings: str = "kill_after: 4s") -> tuple[int, str, str, list[int]]:
    """A template whose instance `a` runs and holds the port; returns (port, a, b, a's
    pids). `unit`/`service`: extra lines for the [Unit]/[Service] sections."""
    port = case.port()
    template = f"{name}-{case.uid}@.service"
    a, b = f"{name}-{case.uid}@a.service", f"{name}-{case.uid}@b.service"
    case.config(config(port, template, extra=settings))
    case.sb.write_unit(template, f"[Unit]\n{unit}[Service]\n"
                                 f"ExecStart={listener_exec('--port', str(port))}\n{service}")
    case.units += [a, b]
    case.start_listening(a, port)
    return port, a, b, case.unit_pids(a)


def nothing_killed_by_portguard(case: Case, unit: str) -> None:
    assert not [r for r in case.records(unit=unit) if r["MESSAGE_ID"] in (SIGNAL, KILL)]


# -- the stop job ends otherwise than `done` -------------------------------------------------


def test_a_stop_job_canceled_by_a_start_fails_closed(case: Case) -> None:
    sb = case.sb
    _, a, b, pids = twin(case, "cancel", service="ExecStop=/bin/sleep 2\n")
    result: dict[str, CompletedProcess[str]] = {}
    runner = threading.Thread(target=lambda: result.setdefault("done", case.preflight(b)))
    runner.start()
    sb.wait_unit_state(a, "deactivating")  # ExecStop= runs: the stop job is running
    sb.systemctl("start", "--no-block", a, check=True)  # replaces it
    runner.join(30)
    done = result["done"]
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"stopping {a} failed (job canceled)" in done.stderr
    assert all(sb.pid_alive(p) for p in pids)  # stopping still, by systemd, not killed
    stopped = case.record(STOP_UNIT, b, result="canceled")
    assert (stopped["PORTGUARD_HOLDER_UNIT"], stopped["PORTGUARD_ACTION"]) == (a, "stop")
    nothing_killed_by_portguard(case, b)
    assert PORTS_CLEAR not in [r["MESSAGE_ID"] for r in case.records(unit=b)]


def test_a_stop_job_that_times_out_fails_closed_without_killunit(case: Case) -> None:
    sb = case.sb
    _, a, b, pids = twin(case, "jobto", unit="JobTimeoutSec=700ms\n",
                         service="ExecStop=/bin/sleep 5\n")
    t0 = time.monotonic()
    done = case.preflight(b)
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 3.5  # the job's own timeout, well before kill_after (4 s)
    assert f"stopping {a} failed (job timeout)" in done.stderr
    assert all(sb.pid_alive(p) for p in pids)
    case.record(STOP_UNIT, b, result="timeout", holder_unit=a)
    nothing_killed_by_portguard(case, b)


@pytest.mark.parametrize(("how", "service", "result"), [
    ("execstop-fails", "ExecStop=/bin/false\n", "exit-code"),
    ("stop-timeout", "ExecStop=/bin/sleep 30\nTimeoutStopSec=500ms\n", "timeout"),
    ("masked", "", "success"),
], ids=["execstop-fails", "stop-timeout", "masked"])
def test_a_stop_that_goes_wrong_inside_the_twin_is_still_done(
        case: Case, how: str, service: str, result: str) -> None:
    """systemd finishes the job (`done`) and the twin is down: the port is free."""
    sb = case.sb
    port, a, b, pids = twin(case, how, service=service)
    if how == "masked":  # masking forbids starting it again, not stopping it
        sb.systemctl("mask", "--runtime", a, check=True)
    try:
        done = case.preflight(b)
    finally:
        if how == "masked":
            sb.systemctl("unmask", "--runtime", a, check=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(sb.pid_alive(p) for p in pids)
    assert sb.unit_property(a, "Result") == result
    case.record(STOP_UNIT, b, result="done", holder_unit=a)
    case.record(PORTS_CLEAR, b, result="clear")
    nothing_killed_by_portguard(case, b)
    assert not sb.run(["ss", "-Htln", f"sport = :{port}"]).stdout.strip()


# -- systemd refuses the StopUnit call --------------------------------------------------------


def test_a_twin_that_refuses_manual_stop_is_left_running(case: Case) -> None:
    sb = case.sb
    _, a, b, pids = twin(case, "refstop", unit="RefuseManualStop=yes\n")
    done = case.preflight(b)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "org.freedesktop.systemd1.OnlyByDependency" in done.stderr
    assert "Traceback" not in done.stderr
    assert case.state(a) == "active" and case.unit_pids(a) == pids
    assert all(sb.pid_alive(p) for p in pids)
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]


def test_as_nobody_preflight_is_not_permitted_and_touches_nothing(case: Case) -> None:
    sb = case.sb
    _, a, b, pids = twin(case, "nobody")
    argv, env = nobody_portguard(sb, case.uid)
    done = sb.run([*argv, "--config", case.cfg, "preflight", b], env=env)
    assert done.returncode == 77, done.stdout + done.stderr
    assert "preflight needs root to act on ports" in done.stderr
    assert case.state(a) == "active" and all(sb.pid_alive(p) for p in pids)
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]


def access_denied(case: Case) -> tuple[CompletedProcess[str], str, str, list[int]]:
    """preflight as nobody with the capabilities to inspect and lock (as a hardened unit
    with User= and AmbientCapabilities= would have), but no polkit grant: StopUnit is
    refused by systemd."""
    sb = case.sb
    _, a, b, pids = twin(case, "denied")
    sb.run(["mkdir", "-p", "-m", "0700", "/run/portguard"], check=True)  # root's, as always
    argv, env = nobody_portguard(sb, case.uid, caps=("dac_override", "dac_read_search",
                                                     "sys_ptrace", "fowner"))
    done = sb.run([*argv, "--config", case.cfg, "preflight", b], env=env)
    sb.run(["sh", "-c", "find /run/portguard -user nobody -delete"], check=True)
    return done, a, b, pids


def test_access_denied_for_stopunit_is_77_naming_the_polkit_action(case: Case) -> None:
    sb = case.sb
    done, a, b, pids = access_denied(case)
    assert done.returncode == 77, done.stdout + done.stderr
    assert f"systemd refused to stop {a}" in done.stderr
    assert f"grant polkit action {MANAGE_UNITS}" in done.stderr
    assert case.state(a) == "active" and all(sb.pid_alive(p) for p in pids)
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]
    planned = case.record(CONFLICT, b, result="planned")
    assert (planned["PORTGUARD_HOLDER_UNIT"], planned["PORTGUARD_ACTION"]) == (a, "stop")


@pytest.mark.parametrize("how", ["refuse-manual-stop", "access-denied"])
def test_a_refused_stopunit_is_journaled(case: Case, how: str) -> None:
    if how == "access-denied":
        done, a, b, _ = access_denied(case)
    else:
        _, a, b, _ = twin(case, "refj", unit="RefuseManualStop=yes\n")
        done = case.preflight(b)
    assert done.returncode in (1, 77)
    refused = case.sb.wait_journal(
        lambda r: r["MESSAGE_ID"] == REFUSED, "SYSLOG_IDENTIFIER=portguard",
        f"PORTGUARD_UNIT={b}", since_cursor=case.cursor, timeout=2)
    assert (refused["PORTGUARD_HOLDER_UNIT"], refused["PORTGUARD_HOLDER_KIND"],
            refused["PORTGUARD_ACTION"]) == (a, "twin", "refuse")


# -- the twin vanishes between the scan and StopUnit -----------------------------------------


def test_a_twin_unloaded_between_scan_and_stopunit_counts_as_gone(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit, legacy = f"app-{case.uid}.service", f"legacy-{case.uid}.service"
    case.config(config(port, unit, extra=f"duplicates:\n  units: [{legacy}]"))
    case.unit(legacy, "--port", str(port), guarded=False)
    case.start_listening(legacy, port)

    run = Paused(sb, case.uid, "portguard.act.units:UnitControl.stop",
                 "--config", case.cfg, "preflight", unit)
    run.wait_paused()
    sb.systemctl("stop", legacy, check=True)  # gone, and its unit with it
    sb.run(["rm", f"/etc/systemd/system/{legacy}"], check=True)
    sb.systemctl("daemon-reload", check=True)
    assert sb.unit_property(legacy, "LoadState") == "not-found"
    done = run.go()
    assert done.returncode == 0, done.stdout + done.stderr
    case.record(PORTS_CLEAR, unit, result="clear")
