"""`portguard daemon` heals what preflight never saw, in a real systemd 252 (the sandbox).

None of these units runs preflight (`ExecStartPre=` is empty): the daemon alone notices the
conflict from systemd's signals and resolves it by the service's policy, through the same
Preflight code, and the journal tells the story. Scenarios:

- a unit stuck in auto-restart because a stray copy holds its port: the stray is signalled
  and the unit's next restart succeeds;
- a failed unit (Restart=no) whose port its twin held: the twin is stopped and, with
  `daemon: restart: true`, the unit is started again;
- two twins kept fighting by a helper that restarts the loser: the flap guard trips
  (DAEMON_FLAPPING, priority err) and the resolutions stop;
- a foreign holder: refused once (journaled), never touched, however often the unit
  restarts;
- a stray on the port of a unit that is inactive: reported, not acted on.
"""

from __future__ import annotations

import collections
import re
import time
from pathlib import Path

from support.cases import (
    CONFLICT,
    FLAPPING,
    REFUSED,
    RESOLVED,
    RESTARTED,
    SIGNAL,
    STOP_UNIT,
    SYSTEMD_STARTED,
    Case,
    before,
    config,
)
from support.sandbox import LISTENER, PYTHON, listener_exec


def test_a_unit_in_auto_restart_behind_a_stray_is_healed(case: Case) -> None:
    sb, port = case.sb, case.port()
    web = f"heal-{case.uid}.service"
    case.config(config(port, web))
    case.unit(web, "--port", str(port), guarded=False, extra="Restart=always\nRestartSec=1\n")
    assert sb.unit_property(web, "ExecStartPre") == ""
    assert case.start(case.daemon_unit()).returncode == 0
    stray = case.spawn(port)
    case.start(web)

    # (a pass that ran before `systemctl start` saw the unit inactive and reported the
    # stray, "not acted on": the decision to look at is the one that acts)
    conflict = case.record(CONFLICT, web, holder_pid=stray, action="signal")
    assert conflict["PORTGUARD_HOLDER_KIND"] == "stray"
    signalled = case.record(SIGNAL, web, holder_pid=stray)
    assert signalled["PORTGUARD_RESULT"] == "exited"
    resolved = case.daemon_record(RESOLVED, unit=web)
    assert resolved["PORTGUARD_HOLDER_KIND"] == "stray"
    assert resolved["PORTGUARD_ACTION"] == "signal"
    assert resolved["PORTGUARD_PORT"] == str(port)
    assert "(activating/auto-restart)" in resolved["MESSAGE"]
    sb.wait_unit_state(web, "active", timeout=5)
    assert not sb.pid_alive(stray)
    # systemd's own story of the unit: it failed (the stray had the port) before the
    # daemon acted, and started for good after it
    failed = sb.wait_journal(lambda r: "Failed with result" in r.get("MESSAGE", ""),
                             f"UNIT={web}", since_cursor=case.cursor)
    started = sb.wait_journal(  # (Type=simple: each attempt is "Started" before it binds)
        lambda r: r.get("MESSAGE_ID") == SYSTEMD_STARTED and before(resolved, r),
        f"UNIT={web}", since_cursor=case.cursor)
    assert before(failed, conflict) and before(conflict, signalled)
    assert before(signalled, resolved) and before(resolved, started)
    assert case.main_pid(web) != stray
    sb.wait_for(lambda: "1 resolved since start" in case.status_text(), 5, "the STATUS")


def test_a_failed_unit_whose_twin_held_its_port_is_started_again(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"tw-{case.uid}@.service"
    a, b = f"tw-{case.uid}@a.service", f"tw-{case.uid}@b.service"
    case.config(config(port, template) + "daemon:\n  restart: true\n")
    case.unit(template, "--port", str(port), guarded=False)  # Restart=no
    case.units += [a, b]
    assert case.start(case.daemon_unit()).returncode == 0
    twin = case.start_listening(a, port)
    case.start(b)

    stopped = case.record(STOP_UNIT, b, holder_unit=a)
    assert stopped["PORTGUARD_RESULT"] == "done"
    resolved = case.daemon_record(RESOLVED, unit=b)
    assert resolved["PORTGUARD_HOLDER_KIND"] == "twin"
    assert resolved["PORTGUARD_HOLDER_UNIT"] == a
    assert resolved["PORTGUARD_ACTION"] == "stop"
    assert "(failed/failed)" in resolved["MESSAGE"]
    restarted = case.daemon_record(RESTARTED, unit=b)
    assert restarted["PORTGUARD_RESULT"] == "done"
    assert before(stopped, resolved) and before(resolved, restarted)
    assert case.state(b) == "active" and case.state(a) == "inactive"
    assert not sb.pid_alive(twin)
    case.wait_listening(port, case.main_pid(b))


def test_two_twins_kept_fighting_trip_the_flap_guard(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"fight-{case.uid}@.service"
    a, b = f"fight-{case.uid}@a.service", f"fight-{case.uid}@b.service"
    case.config(config(port, template) + "daemon:\n  flap_limit: 2\n  flap_window: 5m\n"
                "  restart: false\n")
    sb.write_unit(template, "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
                  f"ExecStart={listener_exec('--port', str(port))}\n"
                  "Restart=always\nRestartSec=300ms\n")
    # The other automation: every second it starts whichever twin is not running.
    fighter = f"fighter-{case.uid}.service"
    sb.write_unit(fighter, "[Service]\nExecStart=/bin/sh -c 'while :; do for u in "
                  f"{a} {b}; do systemctl is-active -q $u || systemctl start --no-block $u;"
                  " done; sleep 1; done'\n")
    case.units += [fighter, a, b]
    assert case.start(case.daemon_unit()).returncode == 0
    case.start_listening(a, port)
    assert case.start(fighter).returncode == 0

    flapping = case.daemon_record(FLAPPING, timeout=25)
    assert flapping["PRIORITY"] == "3"
    assert flapping["PORTGUARD_RESULT"] == "flapping"
    pair = (flapping["PORTGUARD_UNIT"], flapping["PORTGUARD_HOLDER_UNIT"])
    assert set(pair) == {a, b}
    resolved = case.of(RESOLVED)
    per_pair = collections.Counter((r["PORTGUARD_UNIT"], r["PORTGUARD_HOLDER_UNIT"])
                                   for r in resolved)
    assert per_pair[pair] == 2  # flap_limit resolutions, then no more
    assert all(n <= 2 for n in per_pair.values())
    time.sleep(3)  # the fighter goes on; the daemon does not
    assert len(case.of(RESOLVED)) == len(resolved)
    assert len(case.of(FLAPPING)) == 1
    assert f"flapping, not fought: {pair[0]} vs {pair[1]}" in case.status_text()


def test_a_foreign_holder_is_never_touched_and_refused_once(case: Case) -> None:
    sb, port = case.sb, case.port()
    web = f"fweb-{case.uid}.service"
    case.config(config(port, web))
    case.unit(web, "--port", str(port), guarded=False,
              extra="Restart=always\nRestartSec=300ms\n")
    # another program (a copy of listener.py is another file: DESIGN case 3), so foreign
    otherd = f"/run/otherd-{case.uid}.py"
    sb.write_file(otherd, Path(LISTENER).read_text())
    foreign = sb.spawn([PYTHON, otherd, "--port", str(port), "--name", "otherd"])
    case.pids.append(foreign)
    case.wait_listening(port, foreign)
    assert case.start(case.daemon_unit()).returncode == 0
    case.start(web)

    refused = case.record(REFUSED, web, holder_pid=foreign)
    assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert refused["PRIORITY"] == "3"
    restarts = int(sb.unit_property(web, "NRestarts"))
    sb.wait_for(lambda: int(sb.unit_property(web, "NRestarts")) >= restarts + 3, 10,
                "more restarts of the unit")
    assert sb.pid_alive(foreign)
    for r in case.records(unit=web):
        print("REC", r["MESSAGE_ID"], r.get("_PID"), r["MESSAGE"])
    assert len(case.records(f"MESSAGE_ID={REFUSED}", unit=web)) == 1  # not at every restart
    assert not [r for r in case.records(unit=web)
                if r["MESSAGE_ID"] in (SIGNAL, STOP_UNIT, RESOLVED)]
    assert f"{web}: {port}/tcp held by pid {foreign}" in case.status_text()
    assert "refused" in case.status_text()


def test_a_stray_on_the_port_of_an_inactive_unit_is_reported_not_acted_on(
        case: Case) -> None:
    sb, port = case.sb, case.port()
    web = f"idle-{case.uid}.service"
    metrics = f"/run/pgd-{case.uid}.prom"
    case.config(config(port, web) + f"daemon:\n  metrics_file: {metrics}\n")
    case.unit(web, "--port", str(port), guarded=False)  # never started
    stray = case.spawn(port)
    assert case.start(case.daemon_unit()).returncode == 0

    told = case.record(CONFLICT, web, holder_pid=stray)
    assert told["PORTGUARD_RESULT"] == "reported"
    assert told["PORTGUARD_HOLDER_KIND"] == "stray"
    assert told["PORTGUARD_ACTION"] == "none"
    assert f"not acted on: {web} is inactive" in told["MESSAGE"]
    assert "not acted on" in case.status_text()
    text = sb.read_file(metrics)
    labels = f'service="{web}",unit="{web}",port="{port}",proto="tcp"'
    assert f"portguard_port_held{{{labels}}} 1" in text
    assert f'portguard_port_holder_kind{{{labels},kind="stray"}} 1' in text
    # the daemon's account of itself agrees with the kernel's and systemd's
    own = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^portguard_process_(\w+) (\S+)$", text, re.MULTILINE)}
    vm_rss = next(int(line.split()[1]) * 1024 for line in sb.read_file(
        f"/proc/{case.main_pid(case.daemon)}/status").splitlines()
        if line.startswith("VmRSS:"))
    assert abs(own["resident_memory_bytes"] - vm_rss) < vm_rss * 0.25, (own, vm_rss)
    mono = int(sb.unit_property(case.daemon, "ExecMainStartTimestampMonotonic")) / 1e6
    started = time.time() - (time.monotonic() - mono)  # one CLOCK_MONOTONIC, no time ns
    assert abs(own["start_time_seconds"] - started) < 2, (own, started)
    assert 0 < own["cpu_seconds_total"] < 30 and 3 <= own["open_fds"] < 64, own
    assert sb.pid_alive(stray)
    assert len(case.records(unit=web)) == 1  # the dry run's own records stay out
