"""`portguard preflight` against a real systemd 252 (the sandbox): duplicates are stopped.

Issue 4, "Done when". Each scenario asserts three things: the outcome (exit status, the
unit's ActiveState), the surviving processes (by pid), and the journal records (MESSAGE_ID
and the PORTGUARD_* fields), including that `journalctl -u UNIT` shows them when preflight
ran as the unit's ExecStartPre=.

Files: this one holds the "stop the duplicate" scenarios (remnant, twin, stray);
test_preflight_refuse.py the refusals (foreign, protected, unconfigured, addresses);
test_preflight_edges.py stubborn and stopped holders and lingering sockets;
test_preflight_race.py --dry-run and two instances racing.

Every test works through the `case` fixture (cases.Case: its own config, units and
ports in the module's shared sandbox; short timeouts, kill_after 1s, timeout 8s).
"""

from __future__ import annotations

import time

from support.cases import CONFLICT, KILL, PORTS_CLEAR, SIGNAL, STOP_UNIT, Case, config, ids

# -- 1. a remnant of the unit's previous run -----------------------------------------------


def test_a_remnant_of_the_previous_run_is_signalled_and_the_unit_starts(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"rem-{case.uid}.service"
    case.config(config(port, unit))
    ready = f"/run/rem-{case.uid}"
    # KillMode=process: when the main process dies, its prefork worker stays in the
    # unit's cgroup with the listening socket, the classic remnant.
    case.unit(unit, "--port", str(port), "--workers", "1", "--ready-file", ready,
              extra="KillMode=process\n")
    assert case.start(unit).returncode == 0
    case.wait_file(ready)
    old_main = case.main_pid(unit)
    [worker] = [p for p in case.unit_pids(unit) if p != old_main]
    sb.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", unit, check=True)
    case.wait_dead(old_main)
    sb.wait_unit_state(unit, "failed", "inactive")
    assert sb.pid_alive(worker)
    assert sb.cgroup_of(worker).endswith(f"/{unit}")  # still in the unit's cgroup

    case.start_active(unit)
    new_main = case.main_pid(unit)
    assert new_main not in (0, old_main) and sb.pid_alive(new_main)
    assert not sb.pid_alive(worker)
    assert worker not in case.unit_pids(unit)

    signalled = case.record(SIGNAL, unit, holder_pid=worker, action="signal")
    assert signalled["PORTGUARD_HOLDER_KIND"] == "self"
    assert signalled["PORTGUARD_RESULT"] == "exited"
    assert signalled["PORTGUARD_PORT"] == str(port)
    assert signalled["PORTGUARD_PROTO"] == "tcp"
    assert signalled["PORTGUARD_HOLDER_UNIT"] == unit
    assert "SIGTERM" in signalled["MESSAGE"] and "pidfd" in signalled["MESSAGE"]
    conflict = case.record(CONFLICT, unit, holder_pid=worker)
    assert conflict["PORTGUARD_HOLDER_KIND"] == "self"
    assert conflict["PORTGUARD_ACTION"] == "signal"
    case.record(PORTS_CLEAR, unit, result="clear")
    assert KILL not in ids(case.records(unit=unit))
    shown = ids(case.unit_journal(unit))
    assert CONFLICT in shown and SIGNAL in shown and PORTS_CLEAR in shown


# -- 2. a twin instance of the template --------------------------------------------------


def test_a_template_twin_is_stopped_through_systemd_and_stays_stopped(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"twin-{case.uid}@.service"
    a, b = f"twin-{case.uid}@a.service", f"twin-{case.uid}@b.service"
    case.config(config(port, template))
    # The user's way: the template's unit file has no ExecStartPre=; `portguard install`
    # adds the drop-in (with --config, as this config is not the default one).
    case.unit(template, "--port", str(port), guarded=False,
              extra="Restart=always\nRestartSec=200ms\n")
    case.units += [a, b]
    installed = sb.portguard("--config", case.cfg, "install", template)
    assert installed.returncode == 0, installed.stderr
    assert f"--config {case.cfg} preflight" in sb.unit_property(a, "ExecStartPre")

    assert case.start(a).returncode == 0
    a_pid = case.main_pid(a)
    case.record(PORTS_CLEAR, a)  # a's own preflight found the port free

    case.start_active(b)
    assert case.state(a) == "inactive"
    assert not sb.pid_alive(a_pid)
    time.sleep(1.2)  # Restart=always must not bring a back: it was stopped, not crashed
    assert case.state(a) == "inactive"
    assert case.state(b) == "active"
    assert sb.unit_property(a, "NRestarts") == "0"

    stopped = case.record(STOP_UNIT, b)
    assert stopped["PORTGUARD_HOLDER_UNIT"] == a
    assert stopped["PORTGUARD_HOLDER_KIND"] == "twin"
    assert stopped["PORTGUARD_ACTION"] == "stop"
    assert stopped["PORTGUARD_RESULT"] == "done"
    assert stopped["PORTGUARD_HOLDER_PID"] == str(a_pid)
    assert stopped["PORTGUARD_PORT"] == str(port)
    case.record(PORTS_CLEAR, b, result="clear")
    assert not [r for r in case.records(unit=b) if r["MESSAGE_ID"] in (SIGNAL, KILL)]
    shown = ids(case.unit_journal(b))
    assert STOP_UNIT in shown and PORTS_CLEAR in shown
    assert sb.portguard("uninstall", template).returncode == 0


# -- 3. a copy started by hand -------------------------------------------------------------


def test_a_stray_copy_started_by_hand_is_signalled_by_pidfd(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"stray-{case.uid}.service"
    case.config(config(port, unit))
    case.unit(unit, "--port", str(port))
    stray = case.spawn(port)
    assert sb.cgroup_of(stray) == "/"

    case.start_active(unit)
    assert not sb.pid_alive(stray)
    assert sb.pid_alive(case.main_pid(unit))

    signalled = case.record(SIGNAL, unit, holder_pid=stray)
    assert signalled["PORTGUARD_HOLDER_KIND"] == "stray"
    assert signalled["PORTGUARD_ACTION"] == "signal"
    assert signalled["PORTGUARD_RESULT"] == "exited"
    assert signalled["PORTGUARD_PORT"] == str(port)
    assert "PORTGUARD_HOLDER_UNIT" not in signalled
    conflict = case.record(CONFLICT, unit, holder_pid=stray)
    assert "outside any unit" in conflict["MESSAGE"]
    assert KILL not in ids(case.records(unit=unit))
    shown = ids(case.unit_journal(unit))
    assert SIGNAL in shown and PORTS_CLEAR in shown
