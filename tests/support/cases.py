"""`Case`: one preflight or daemon test's config, units, processes and journal view.

Used through the `case` and `fresh_case` fixtures (conftest.py) by test_preflight*.py,
test_faults_*.py and test_daemon_*.py. Every case writes its own config
(/etc/portguard/<uid>.yaml, given with --config on the command line and in the units), its
own units (names carry the uid) and takes its own ports, so tests share the module's
sandbox. Timeouts are short (kill_after 1s, timeout 8s).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.sandbox import PYTHON, REPO, Sandbox, _cursor_position, listener_argv, listener_exec

# MESSAGE_IDs: the contract (README "Journal"), spelled out here rather than imported, so
# a changed id in portguard/report/journal.py fails these tests.
PORTS_CLEAR = "718392d18d1d40e2a9e43cb92f8fe39d"
UNIT_NOT_CONFIGURED = "55b39072bbbf4ee39245c02d398d6a82"
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
STOP_UNIT = "32df9301fc754f1285c3344dda6a731d"
SIGNAL = "b7876e4d57b34eef99981e9da9de1233"
KILL = "744a196b2567446ba506391298360d15"
WAIT = "da25c984d0a14814a1be47f9d2384f7a"
REFUSED = "1dd1d9a38bb34678aad2e121395fc7f2"
TIMED_OUT = "ca5a8ba6bfa04e42a616be49bb49746b"
WARNED = "7d4a70ad50f6452aa1ac4ef6c64c0ad0"
ACTING = (STOP_UNIT, SIGNAL, KILL)
# ... and the daemon's
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

_ports = itertools.count(21000, 7)  # each sandbox has its own netns; unique per process


def has_fields(record: Mapping[str, Any], message_id: str, fields: Mapping[str, str | int]
               ) -> bool:
    """The record has this MESSAGE_ID and these PORTGUARD_* fields (holder_pid=1 means
    PORTGUARD_HOLDER_PID=1)."""
    return record.get("MESSAGE_ID") == message_id and all(
        record.get(f"PORTGUARD_{k.upper()}") == str(v) for k, v in fields.items())


def wait_record(sb: Sandbox, message_id: str, *matches: str, since_cursor: str | None,
                timeout: float, **fields: str | int) -> dict[str, Any]:
    """portguard's first record since the cursor (journalctl `matches` too) that
    has_fields(), waiting for it."""
    return sb.wait_journal(lambda r: has_fields(r, message_id, fields),
                           "SYSLOG_IDENTIFIER=portguard", *matches,
                           since_cursor=since_cursor, timeout=timeout)


class Case:
    """One test's config, units, processes and journal view inside a shared sandbox; and a
    daemon unit of its own (`daemon_unit`), for the daemon's tests."""

    def __init__(self, sb: Sandbox, uid: str) -> None:
        self.sb = sb
        self.uid = uid
        self.cfg = f"/etc/portguard/{uid}.yaml"
        self.daemon = f"pgd-{uid}.service"
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

    def write_config(self, text: str) -> None:
        """Any text, valid or not (config() insists on a valid one)."""
        self.sb.write_file(self.cfg, text)

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

    def start_active(self, unit: str) -> float:
        """`systemctl start UNIT`, asserted to succeed and leave it active; the seconds
        it took (preflight, as its ExecStartPre=, runs inside that)."""
        t0 = time.monotonic()
        started = self.start(unit)
        took = time.monotonic() - t0
        assert started.returncode == 0, started.stderr
        assert self.state(unit) == "active"
        return took

    def start_listening(self, unit: str, port: int) -> int:
        """Start the unit and wait until its main process listens on the port; its pid."""
        started = self.start(unit)
        assert started.returncode == 0, started.stderr
        pid = self.main_pid(unit)
        self.wait_listening(port, pid)
        return pid

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
        return wait_record(self.sb, message_id, f"PORTGUARD_UNIT={unit}",
                           since_cursor=self.cursor, timeout=5, **fields)

    def unit_journal(self, unit: str) -> list[dict[str, Any]]:
        """What `journalctl -u UNIT` shows of portguard since this case began."""
        return [r for r in self.sb.journal("-u", unit, since_cursor=self.cursor)
                if r.get("SYSLOG_IDENTIFIER") == "portguard"]

    def wait_dead(self, pid: int, timeout: float = 5) -> None:
        self.sb.wait_for(lambda: not self.sb.pid_alive(pid), timeout, f"pid {pid} to exit")

    # -- the daemon -------------------------------------------------------------------

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
        return wait_record(self.sb, message_id, since_cursor=self.cursor, timeout=timeout,
                           **fields)

    def of(self, message_id: str, **fields: str) -> list[dict[str, Any]]:
        return [r for r in self.records(f"MESSAGE_ID={message_id}")
                if has_fields(r, message_id, fields)]

    def systemd_says(self, unit: str, message_id: str, timeout: float = 10) -> dict[str, Any]:
        return self.sb.wait_journal(lambda r: r.get("MESSAGE_ID") == message_id,
                                    f"UNIT={unit}", since_cursor=self.cursor, timeout=timeout)

    def cleanup(self) -> None:
        if self.units:  # SIGKILL first: some of them ignore SIGTERM
            self.sb.systemctl("kill", "--signal=SIGKILL", *self.units)
            self.sb.systemctl("stop", *self.units)
            self.sb.systemctl("reset-failed", *self.units)
        for pid in dict.fromkeys(self.pids):  # once each: a reused pid is listed twice
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


def before(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Record a went into the journal before record b (seqnum order)."""
    return _cursor_position(a["__CURSOR"])[1] < _cursor_position(b["__CURSOR"])[1]
