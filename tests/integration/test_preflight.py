"""`portguard preflight` against a real systemd 252 (the sandbox): duplicates are stopped.

Issue 4, "Done when". Each scenario asserts three things: the outcome (exit status, the
unit's ActiveState), the surviving processes (by pid), and the journal records (MESSAGE_ID
and the PORTGUARD_* fields), including that `journalctl -u UNIT` shows them when preflight
ran as the unit's ExecStartPre=.

Files: this one holds the shared `Case` helper and the "stop the duplicate" scenarios
(remnant, twin, stray); test_preflight_refuse.py the refusals (foreign, protected,
unconfigured, addresses); test_preflight_edges.py stubborn and stopped holders and
lingering sockets; test_preflight_race.py --dry-run and two instances racing.

Every test writes its own config (/etc/portguard/<uid>.yaml, given with --config on the
command line and in the units), its own units (names carry the uid) and its own ports,
so tests share the module's sandbox. Timeouts are short (kill_after 1s, timeout 8s).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox import PYTHON, REPO, Sandbox, listener_argv, listener_exec

# MESSAGE_IDs: the contract (README "Journal"), spelled out here rather than imported, so
# a changed id in portguard/journal.py fails these tests.
PORTS_CLEAR = "718392d18d1d40e2a9e43cb92f8fe39d"
UNIT_NOT_CONFIGURED = "55b39072bbbf4ee39245c02d398d6a82"
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
STOP_UNIT = "32df9301fc754f1285c3344dda6a731d"
SIGNAL = "b7876e4d57b34eef99981e9da9de1233"
KILL = "744a196b2567446ba506391298360d15"
WAIT = "da25c984d0a14814a1be47f9d2384f7a"
REFUSED = "1dd1d9a38bb34678aad2e121395fc7f2"
TIMED_OUT = "ca5a8ba6bfa04e42a616be49bb49746b"
ACTING = (STOP_UNIT, SIGNAL, KILL)

_ports = itertools.count(21000, 7)  # each sandbox has its own netns; unique per process


class Case:
    """One test's config, units, processes and journal view inside a shared sandbox."""

    def __init__(self, sb: Sandbox, uid: str) -> None:
        self.sb = sb
        self.uid = uid
        self.cfg = f"/etc/portguard/{uid}.yaml"
        self.units: list[str] = []
        self.pids: list[int] = []
        self.cursor = sb.cursor()

    @staticmethod
    def port() -> int:
        return next(_ports)

    def config(self, text: str) -> None:
        self.sb.write_file(self.cfg, text)
        checked = self.sb.portguard("--config", self.cfg, "check-config")
        assert checked.returncode == 0, checked.stdout + checked.stderr

    def unit(self, name: str, *listener_args: str, extra: str = "",
             guarded: bool = True) -> str:
        """Write a service running listener.py; `guarded`: preflight as ExecStartPre=."""
        pre = (f"Environment=PYTHONPATH={REPO}\n"
               f"ExecStartPre=+{PYTHON} -m portguard --config {self.cfg} preflight %n\n"
               if guarded else "")
        self.sb.write_unit(name, f"[Service]\n{pre}ExecStart={listener_exec(*listener_args)}\n"
                                 f"{extra}")
        self.units.append(name)
        return name

    def spawn(self, port: int, *listener_args: str) -> int:
        """listener.py --port PORT ARGS started by hand, outside any unit (the same argv
        as a unit's ExecStart= makes it a stray copy); returns once it listens."""
        pid = self.sb.spawn(listener_argv("--port", str(port), *listener_args))
        self.pids.append(pid)
        self.wait_listening(port, pid)
        return pid

    def wait_listening(self, port: int, pid: int) -> None:
        def listening() -> bool:
            out = self.sb.run(["ss", "-Htulnp", f"sport = :{port}"]).stdout
            return f"pid={pid}," in out

        self.sb.wait_for(listening, 10, f"pid {pid} to listen on {port}")

    def wait_file(self, path: str) -> None:
        self.sb.wait_for(lambda: self.sb.run(["test", "-s", path]).returncode == 0, 10,
                         f"{path} to be written")

    def start(self, unit: str) -> subprocess.CompletedProcess[str]:
        return self.sb.systemctl("start", unit, timeout=30)

    def preflight(self, unit: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sb.portguard("--config", self.cfg, "preflight", unit, *args, timeout=30)

    def main_pid(self, unit: str) -> int:
        return int(self.sb.unit_property(unit, "MainPID"))

    def state(self, unit: str) -> str:
        return self.sb.unit_property(unit, "ActiveState")

    def unit_pids(self, unit: str) -> list[int]:
        cgroup = self.sb.unit_property(unit, "ControlGroup")
        return sorted(int(p) for p in
                      self.sb.read_file(f"/sys/fs/cgroup{cgroup}/cgroup.procs").split())

    def children(self, pid: int) -> list[int]:
        text = self.sb.read_file(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in text.split()]

    def proc_state(self, pid: int) -> str:
        return self.sb.read_file(f"/proc/{pid}/stat").rpartition(")")[2].split()[0]

    def records(self, *matches: str, unit: str | None = None) -> list[dict[str, Any]]:
        """portguard's records since this case began (for `unit`, when given)."""
        where = [f"PORTGUARD_UNIT={unit}"] if unit else []
        return self.sb.journal("SYSLOG_IDENTIFIER=portguard", *where, *matches,
                               since_cursor=self.cursor)

    def record(self, message_id: str, unit: str, **fields: str | int) -> dict[str, Any]:
        """The record with this MESSAGE_ID for `unit` whose fields match (waits for it)."""
        want = {f"PORTGUARD_{k.upper()}": str(v) for k, v in fields.items()}

        def match(r: dict[str, Any]) -> bool:
            return r.get("MESSAGE_ID") == message_id and all(
                r.get(k) == v for k, v in want.items())

        return self.sb.wait_journal(match, "SYSLOG_IDENTIFIER=portguard",
                                    f"PORTGUARD_UNIT={unit}", since_cursor=self.cursor,
                                    timeout=5)

    def unit_journal(self, unit: str) -> list[dict[str, Any]]:
        """What `journalctl -u UNIT` shows of portguard since this case began."""
        return [r for r in self.sb.journal("-u", unit, since_cursor=self.cursor)
                if r.get("SYSLOG_IDENTIFIER") == "portguard"]

    def wait_dead(self, pid: int, timeout: float = 5) -> None:
        self.sb.wait_for(lambda: not self.sb.pid_alive(pid), timeout, f"pid {pid} to exit")

    def cleanup(self) -> None:
        if self.units:  # SIGKILL first: some of them ignore SIGTERM
            self.sb.systemctl("kill", "--signal=SIGKILL", *self.units)
            self.sb.systemctl("stop", *self.units)
            self.sb.systemctl("reset-failed", *self.units)
        for pid in self.pids:
            if self.sb.pid_alive(pid):
                self.sb.kill(pid)


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["MESSAGE_ID"] for r in records]


def config(port_spec: str | int, service: str, *, extra: str = "",
           protected: str = "[]") -> str:
    """One service, policy stop, kill_after 1s, timeout 8s; `extra`: its own keys."""
    return (f"defaults:\n  kill_after: 1s\n  timeout: 8s\nprotected: {protected}\n"
            f"services:\n  {service}:\n    ports: [\"{port_spec}\"]\n    policy: stop\n"
            + "".join(f"    {line}\n" for line in extra.splitlines()))


@pytest.fixture
def case(sandbox: Sandbox, uid: str) -> Iterator[Case]:
    c = Case(sandbox, uid)
    yield c
    c.cleanup()


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

    started = case.start(unit)
    assert started.returncode == 0, started.stderr
    assert case.state(unit) == "active"
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

    started = case.start(b)
    assert started.returncode == 0, started.stderr
    assert case.state(b) == "active"
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

    started = case.start(unit)
    assert started.returncode == 0, started.stderr
    assert case.state(unit) == "active"
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
