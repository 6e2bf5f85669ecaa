"""`portguard daemon` as a Type=notify service of a real systemd 252 (the sandbox).

What systemd itself sees: READY=1 only after the first pass (the unit stays `activating`
meanwhile), the STATUS= line in `systemctl status`, `systemctl reload` with a broken and
then a fixed config (RELOADING=1 ... READY=1; the old config keeps running), the watchdog
(the test hook PORTGUARD_TEST_HANG_AFTER stops the pings, systemd restarts the daemon),
`systemctl stop` (STOPPING=1, gone within a second, even in the middle of a long pass),
and a bad config at start (exit 78, never READY).

The daemon runs from a minimal unit written here (`DaemonCase.daemon_unit`), named after
the test, with its own config; the shipped systemd/portguard.service is tested on its own.
test_daemon_heal.py imports DaemonCase.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox import PYTHON, REPO, Sandbox, _cursor_position
from test_preflight import CONFLICT, REFUSED, SIGNAL, STOP_UNIT, WAIT, Case, config

# MESSAGE_IDs of the daemon's events (README "Journal"), spelled out: a changed id fails.
CONFIG_ERROR = "9619d2ce1faf4c26b65cf1b21f2153f4"
STARTED = "50df78044c0e45c0a806b058db7cdbba"
RELOADED = "36f10409e50641afa9fcb493fa7f1bc9"
RELOAD_FAILED = "190d1cd15f6641c7b8935e3545c49f7f"
RESOLVED = "6550dfb63bd24c669011ebfc5fa96e9a"
RESTARTED = "079ab1f707a54b2f94a198fa543f532a"
FLAPPING = "b64a90c88375492ab53c0219c80d5e57"
DEGRADED = "71685a1b3c8a4f5b9a6f5056c192bbed"
STOPPING = "c05b8fff3fa74d0195d2b6f875af14eb"
SYSTEMD_STARTED = "39f53479d3a045ac8e11786248231fbf"  # systemd's "Started UNIT"
__all__ = ["CONFLICT", "REFUSED", "SIGNAL", "STOP_UNIT", "DaemonCase", "config"]


class DaemonCase(Case):
    """Case (test_preflight.py) plus a daemon unit of the test's own."""

    def __init__(self, sb: Sandbox, uid: str) -> None:
        super().__init__(sb, uid)
        self.daemon = f"pgd-{uid}.service"

    def write_config(self, text: str) -> None:
        """Any text, valid or not (Case.config insists on a valid one)."""
        self.sb.write_file(self.cfg, text)

    def daemon_unit(self, *, watchdog: float = 2, extra: str = "") -> str:
        """The shipped systemd/portguard.service, byte for byte, plus a drop-in that runs
        this checkout's portguard on this test's config (and a short watchdog). The
        checkout is bound in: under /tmp (CI's clean clone) PrivateTmp= would hide it."""
        self.sb.write_file(f"/etc/systemd/system/{self.daemon}.d/test.conf", f"""\
[Service]
ExecStart=
ExecStart={PYTHON} -m portguard --config {self.cfg} daemon
Environment=PYTHONPATH={REPO}
BindReadOnlyPaths={REPO}
WatchdogSec={watchdog:g}
LimitCORE=0
TimeoutStopSec=5
{extra}""")
        self.sb.write_unit(self.daemon, (Path(REPO) / "systemd" / "portguard.service").read_text())
        self.units.append(self.daemon)
        return self.daemon

    def status_text(self) -> str:
        return self.sb.unit_property(self.daemon, "StatusText")

    def daemon_record(self, message_id: str, timeout: float = 10, **fields: str | int
                      ) -> dict[str, Any]:
        """The daemon's record with this MESSAGE_ID (and fields), waiting for it."""
        want = {f"PORTGUARD_{k.upper()}": str(v) for k, v in fields.items()}
        return self.sb.wait_journal(
            lambda r: r.get("MESSAGE_ID") == message_id and all(
                r.get(k) == v for k, v in want.items()),
            "SYSLOG_IDENTIFIER=portguard", since_cursor=self.cursor, timeout=timeout)

    def of(self, message_id: str, **fields: str) -> list[dict[str, Any]]:
        want = {f"PORTGUARD_{k.upper()}": v for k, v in fields.items()}
        return [r for r in self.records(f"MESSAGE_ID={message_id}")
                if all(r.get(k) == v for k, v in want.items())]

    def systemd_says(self, unit: str, message_id: str, timeout: float = 10) -> dict[str, Any]:
        return self.sb.wait_journal(lambda r: r.get("MESSAGE_ID") == message_id,
                                    f"UNIT={unit}", since_cursor=self.cursor, timeout=timeout)


def before(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Record a went into the journal before record b (seqnum order)."""
    return _cursor_position(a["__CURSOR"])[1] < _cursor_position(b["__CURSOR"])[1]


@pytest.fixture
def case(sandbox: Sandbox, uid: str) -> Iterator[DaemonCase]:
    c = DaemonCase(sandbox, uid)
    yield c
    c.cleanup()


def test_ready_only_after_the_first_pass_which_heals_what_it_finds(case: DaemonCase) -> None:
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


def test_status_reload_broken_then_fixed_config_and_stop(case: DaemonCase) -> None:
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


def test_a_bad_config_at_start_exits_78_before_ready(case: DaemonCase) -> None:
    case.write_config("services:\n  web.service:\n    ports: [\"8080\"]\n    polcy: stop\n")
    daemon = case.daemon_unit()
    started = case.start(daemon)
    assert started.returncode != 0
    assert case.state(daemon) == "failed"
    assert case.sb.unit_property(daemon, "ExecMainStatus") == "78"
    error = case.daemon_record(CONFIG_ERROR)
    assert "polcy" in error["MESSAGE"] and error["PRIORITY"] == "3"
    assert not case.of(STARTED)


def test_stop_in_the_middle_of_a_long_pass_is_still_quick(case: DaemonCase) -> None:
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


def test_the_watchdog_restarts_a_daemon_whose_loop_hangs(case: DaemonCase) -> None:
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


def test_without_dbus_it_runs_reports_and_says_so(case: DaemonCase) -> None:
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

