"""`portguard daemon` as a Type=notify service of a real systemd 252 (the sandbox).

What systemd itself sees: READY=1 only after the first pass (the unit stays `activating`
meanwhile), the STATUS= line in `systemctl status`, `systemctl reload` with a broken and
then a fixed config (RELOADING=1 ... READY=1; the old config keeps running), the watchdog
(the test hook PORTGUARD_TEST_HANG_AFTER stops the pings, systemd restarts the daemon),
`systemctl stop` (STOPPING=1, gone within a second, even in the middle of a long pass),
and a bad config at start (exit 78, never READY).

The daemon runs from the shipped unit plus a test drop-in (`Case.daemon_unit`, cases.py),
named after the test, with its own config; the shipped systemd/portguard.service is
tested on its own.
"""

from __future__ import annotations

import time

from support.cases import (
    CONFIG_ERROR,
    CONFLICT,
    DEGRADED,
    RELOAD_FAILED,
    RELOADED,
    RESOLVED,
    RESTARTED,
    STARTED,
    STOPPING,
    SYSTEMD_STARTED,
    WAIT,
    Case,
    before,
    config,
)


def test_ready_only_after_the_first_pass_which_heals_what_it_finds(case: Case) -> None:
    sb, port = case.sb, case.port()
    web = f"slowweb-{case.uid}.service"
    case.config(config(port, web) + "daemon:\n  restart: true\n")
    # A stray that ignores SIGTERM: the first pass needs kill_after (1 s) to clear it.
    case.unit(web, "--port", str(port), "--ignore-term", guarded=False)
    stray = case.spawn(port, "--ignore-term")
    case.start(web)
    sb.wait_unit_state(web, "failed")
    daemon = case.daemon_unit()

    t0 = time.monotonic()
    sb.systemctl("start", "--no-block", daemon, check=True)
    case.daemon_record(STARTED)
    assert case.state(daemon) == "activating"  # the pass is running: no READY=1 yet
    sb.wait_unit_state(daemon, "active", timeout=10)
    assert time.monotonic() - t0 >= 1.0
    resolved = case.daemon_record(RESOLVED, unit=web)
    started = case.systemd_says(daemon, SYSTEMD_STARTED)
    assert before(resolved, started)  # READY=1 came after the first pass
    assert resolved["PORTGUARD_HOLDER_KIND"] == "stray"
    assert resolved["PORTGUARD_HOLDER_PID"] == str(stray)
    assert not sb.pid_alive(stray)
    restarted = case.daemon_record(RESTARTED, unit=web)
    assert restarted["PORTGUARD_RESULT"] == "done" and before(restarted, started)
    assert case.state(web) == "active"

    shown = sb.systemctl("status", daemon).stdout
    assert 'Status: "watching 1 service (1 unit), 0 conflicts; 1 resolved since start; ' \
           "last pass at " in shown, shown


def test_status_reload_broken_then_fixed_config_and_stop(case: Case) -> None:
    sb, port = case.sb, case.port()
    one = f"one-{case.uid}.service"
    case.config(config(port, one))
    daemon = case.daemon_unit()
    t_start = time.monotonic()
    assert case.start(daemon).returncode == 0
    assert case.state(daemon) == "active"
    pid = case.main_pid(daemon)
    status = case.status_text()
    assert status.startswith("watching 1 service (1 unit), 0 conflicts; last pass at "), \
        status
    assert sb.systemctl("status", daemon).stdout.count(f'Status: "{status}"') == 1

    # A broken config: the reload completes, the old config keeps running, and says why.
    case.write_config(config(port, one) + "  two.service:\n    ports: [\"99999\"]\n")
    reload = sb.systemctl("reload", daemon)
    assert reload.returncode == 0, reload.stderr
    assert case.state(daemon) == "active" and case.main_pid(daemon) == pid
    failed = case.daemon_record(RELOAD_FAILED)
    assert failed["PRIORITY"] == "3"
    assert f"{case.cfg}:" in failed["MESSAGE"] and "99999" in failed["MESSAGE"]
    status = case.status_text()
    assert status.startswith("config reload failed, still running the previous one: "
                             f"{case.cfg}:"), status
    assert "watching 1 service" in status

    # Fixed: two services now.
    case.write_config(config(port, one) + f"  two-{case.uid}.service:\n"
                                          f"    ports: [\"{case.port()}\"]\n")
    assert sb.systemctl("reload", daemon).returncode == 0
    case.daemon_record(RELOADED)
    sb.wait_for(lambda: case.status_text().startswith("watching 2 services (2 units), "
                                                      "0 conflicts"), 5, "the new STATUS")
    assert case.main_pid(daemon) == pid

    # Fed the watchdog (WatchdogSec=2) all along.
    time.sleep(max(0.0, 2.5 - (time.monotonic() - t_start)))
    assert case.state(daemon) == "active"
    assert sb.unit_property(daemon, "NRestarts") == "0"

    t0 = time.monotonic()
    assert sb.systemctl("stop", daemon).returncode == 0
    assert time.monotonic() - t0 < 1.0
    assert case.state(daemon) == "inactive"  # exit 0: not failed
    assert sb.unit_property(daemon, "ExecMainStatus") == "0"
    assert not sb.pid_alive(pid)
    case.daemon_record(STOPPING)


def test_a_bad_config_at_start_exits_78_before_ready(case: Case) -> None:
    case.write_config("services:\n  web.service:\n    ports: [\"8080\"]\n    polcy: stop\n")
    daemon = case.daemon_unit()
    started = case.start(daemon)
    assert started.returncode != 0
    assert case.state(daemon) == "failed"
    assert case.sb.unit_property(daemon, "ExecMainStatus") == "78"
    error = case.daemon_record(CONFIG_ERROR)
    assert "polcy" in error["MESSAGE"] and error["PRIORITY"] == "3"
    assert not case.of(STARTED)


def test_stop_in_the_middle_of_a_long_pass_is_still_quick(case: Case) -> None:
    sb, port = case.sb, case.port()
    web = f"waitweb-{case.uid}.service"
    # policy wait with a long timeout: the first pass waits for the stray to go.
    case.config(config(port, web, extra="policy: wait\ntimeout: 30s")
                .replace("    policy: stop\n", ""))
    case.unit(web, "--port", str(port), guarded=False)
    stray = case.spawn(port)
    case.start(web)
    sb.wait_unit_state(web, "failed")
    daemon = case.daemon_unit()
    sb.systemctl("start", "--no-block", daemon, check=True)
    case.record(WAIT, web, result="waiting")  # the pass is waiting now
    assert case.state(daemon) == "activating"
    t0 = time.monotonic()
    assert sb.systemctl("stop", daemon).returncode == 0
    assert time.monotonic() - t0 < 1.0
    assert sb.unit_property(daemon, "ExecMainStatus") == "0"
    case.daemon_record(STOPPING)
    assert sb.pid_alive(stray)  # policy wait: never touched


def test_the_watchdog_restarts_a_daemon_whose_loop_hangs(case: Case) -> None:
    sb = case.sb
    case.config(config(case.port(), f"wd-{case.uid}.service"))
    daemon = case.daemon_unit(watchdog=1, extra="Environment=PORTGUARD_TEST_HANG_AFTER=1\n"
                                                 "Restart=on-watchdog\nRestartSec=100ms\n")
    assert case.start(daemon).returncode == 0
    first = case.main_pid(daemon)
    hang = case.daemon_record(DEGRADED, result="test-hang")
    assert "PORTGUARD_TEST_HANG_AFTER=1" in hang["MESSAGE"]
    sb.wait_journal(lambda r: "Watchdog timeout" in r.get("MESSAGE", ""), f"UNIT={daemon}",
                    since_cursor=case.cursor, timeout=10)
    sb.wait_for(lambda: sb.unit_property(daemon, "NRestarts") != "0", 10, "a restart")
    sb.wait_unit_state(daemon, "active", timeout=10)
    assert case.main_pid(daemon) != first
    t0 = time.monotonic()
    assert sb.systemctl("stop", daemon).returncode == 0  # the hang still honours SIGTERM
    assert time.monotonic() - t0 < 1.0


def test_without_dbus_it_runs_reports_and_says_so(case: Case) -> None:
    sb, port = case.sb, case.port()
    web = f"nodbus-{case.uid}.service"
    case.config(config(port, web) + "daemon:\n  interval: 1s\n")
    case.unit(web, "--port", str(port), guarded=False)
    daemon = case.daemon_unit(
        extra="Environment=DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/no-such-bus\n")
    assert case.start(daemon).returncode == 0  # READY=1 all the same
    degraded = case.daemon_record(DEGRADED, result="no-dbus")
    assert "unreachable" in degraded["MESSAGE"] and degraded["PRIORITY"] == "4"
    assert "systemd D-Bus unreachable (" in case.status_text()
    assert "reporting only, retrying every 1s" in case.status_text()
    stray = case.spawn(port)  # seen at the next interval pass, reported, left alone
    told = case.record(CONFLICT, web, holder_pid=stray)
    assert told["PORTGUARD_RESULT"] == "reported"
    sb.wait_for(lambda: "1 conflict: " in case.status_text(), 5, "the conflict in STATUS")
    assert sb.pid_alive(stray)
    assert len(case.of(DEGRADED, result="no-dbus")) == 1  # said once, not every pass



PROFILE_LEARNED = "e365afea2d0944758b37f68c75546c27"


def test_the_daemon_learns_a_units_profile_each_time_it_starts(case: Case) -> None:
    """docs/identity.md, "Profiles": on the D-Bus signal of a configured unit's start,
    the daemon reads the unit's own cgroup and stores what listens there, root's alone."""
    sb, port = case.sb, case.port()
    web = f"learn-{case.uid}.service"
    case.config(config(port, web) + "daemon:\n  interval: 1s\n")
    case.unit(web, "--port", str(port), guarded=False)
    daemon = case.daemon_unit()
    assert case.start(daemon).returncode == 0
    pid = case.start_listening(web, port)
    learned = case.daemon_record(PROFILE_LEARNED, unit=web, timeout=20)
    assert f"{web}: profile learned: " in learned["MESSAGE"], learned["MESSAGE"]
    assert f"listening on {port}/tcp" in learned["MESSAGE"], learned["MESSAGE"]
    path = f"/var/lib/portguard/profiles/{web}.json"
    mode = sb.run(["stat", "-c", "%U %a", path, "/var/lib/portguard/profiles"]).stdout
    assert mode.split() == ["root", "600", "root", "700"], mode
    assert '"uid": 0' in sb.read_file(path)
    # the next start is learned again (a new invocation), the same run only once
    sb.systemctl("restart", web, check=True)
    case.wait_listening(port, case.main_pid(web))
    sb.wait_for(lambda: len(case.of(PROFILE_LEARNED, unit=web)) == 2, 20,
                "the restart's profile")
    assert case.main_pid(web) != pid
