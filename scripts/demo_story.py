"""The demo's world: the sandbox, the example's services, and what the scenes share."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from demo_output import S, block, labelled, note, out, para, shell, table

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
SUPPORT = REPO / "tests" / "support"  # the test support package: the sandbox
CONFIG = "/etc/portguard/config.yaml"  # inside the sandbox: the default path
BIN = "/run/demo"  # inside: the demo's programs (copies of listener.py)
# the example's units the scenes play with
BLUE, GREEN = "web@blue.service", "web@green.service"
API, GATEWAY = "api.service", "metrics-gateway.service"
PUSHGATEWAY = "prometheus-pushgateway.service"  # not in the config: another program on 9091
CLIENT = """\
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while conn.recv(65536):
    pass
conn.close()
"""

# README "Journal": the event names, by MESSAGE_ID.
EVENTS = {
    "718392d18d1d40e2a9e43cb92f8fe39d": "ports clear",
    "55b39072bbbf4ee39245c02d398d6a82": "unit not configured",
    "d74d81e4b74f43ecb06f332d7e10fca9": "conflict found",
    "32df9301fc754f1285c3344dda6a731d": "twin unit stopped",
    "b7876e4d57b34eef99981e9da9de1233": "process signalled",
    "744a196b2567446ba506391298360d15": "process killed",
    "da25c984d0a14814a1be47f9d2384f7a": "waiting for the port",
    "1dd1d9a38bb34678aad2e121395fc7f2": "refused",
    "7d4a70ad50f6452aa1ac4ef6c64c0ad0": "conflict tolerated",
    "ca5a8ba6bfa04e42a616be49bb49746b": "timed out",
    "8ad43760f38648719a0731aee8185aca": "holder identity changed",
}
CLEAR, CONFLICT, STOPPED, SIGNALLED = ("718392d18d1d40e2a9e43cb92f8fe39d",
                                       "d74d81e4b74f43ecb06f332d7e10fca9",
                                       "32df9301fc754f1285c3344dda6a731d",
                                       "b7876e4d57b34eef99981e9da9de1233")
WAITING, REFUSED = "da25c984d0a14814a1be47f9d2384f7a", "1dd1d9a38bb34678aad2e121395fc7f2"
FINAL = (CLEAR, REFUSED, "ca5a8ba6bfa04e42a616be49bb49746b")  # a preflight's last record


# -- the sandbox --------------------------------------------------------------------------

def load_sandbox() -> ModuleType:
    """tests/support's `sandbox` (stdlib only), its package loaded by path: the demo runs
    from a checkout where tests/ is on no path."""
    spec = importlib.util.spec_from_file_location(
        "support", SUPPORT / "__init__.py", submodule_search_locations=[str(SUPPORT)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SUPPORT}")
    package = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("support", package)
    spec.loader.exec_module(package)
    return importlib.import_module("support.sandbox")


class Unexpected(Exception):
    """A scene did not end as portguard promises."""


def strip_unit(message: str, unit: str) -> str:
    """`web@blue.service: 8080/tcp: ...` -> `8080/tcp: ...` (the unit is in the heading)."""
    prefix = f"{unit}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Unexpected(what)


def find(records: list[dict[str, Any]], message_id: str, **fields: str) -> dict[str, Any]:
    for r in records:
        if r.get("MESSAGE_ID") == message_id and all(
                r.get(f"PORTGUARD_{k.upper()}") == v for k, v in fields.items()):
            return r
    want = " ".join(f"{k}={v}" for k, v in fields.items())
    raise Unexpected(f"no '{EVENTS[message_id]}' record with {want}")


def is_final(r: dict[str, Any]) -> bool:
    return r.get("MESSAGE_ID") in FINAL



class Story:
    """The sandbox, the example's services, and the helpers the scenes share."""

    def __init__(self, sb: Any, sandbox_mod: ModuleType) -> None:
        self.sb = sb
        self.mod = sandbox_mod
        system = "/usr/bin/python3"  # short command lines in `who`; the venv's otherwise
        self.python = system if os.access(system, os.X_OK) else sandbox_mod.PYTHON
        script = REPO / ".venv" / "bin" / "portguard"
        # the user's way: the console script (its path goes into the drop-in)
        self.portguard_argv = [str(script)] if os.access(script, os.X_OK) else \
            [sandbox_mod.PYTHON, "-m", "portguard"]
        self.cursor: str | None = None
        self.spawned: list[int] = []

    # commands ------------------------------------------------------------------------

    def portguard(self, *args: str, show: bool = True,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if show:
            shell("portguard " + shlex.join(args))
        done: subprocess.CompletedProcess[str] = self.sb.run(
            [*self.portguard_argv, *args], timeout=timeout, env={"PYTHONPATH": str(REPO)})
        return done

    def systemctl(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            shell("systemctl " + shlex.join(args))
        done: subprocess.CompletedProcess[str] = self.sb.systemctl(*args, timeout=60)
        return done

    def who(self, *ports: str) -> None:
        done = self.portguard("who", *ports)
        block(done.stdout + done.stderr)

    def program(self, name: str, *args: str) -> list[str]:
        return [self.python, f"{BIN}/{name}", *args]

    # state -----------------------------------------------------------------------------

    def state(self, unit: str) -> str:
        active = self.sb.unit_property(unit, "ActiveState")
        sub = self.sb.unit_property(unit, "SubState")
        return active if sub == active else f"{active} ({sub})"

    def main_pid(self, unit: str) -> int:
        return int(self.sb.unit_property(unit, "MainPID"))

    def listening(self, port: int, pid: int | None = None) -> None:
        def up() -> bool:
            text = self.sb.run(["ss", "-Htlnp", f"sport = :{port}"]).stdout
            return bool(text.strip()) and (pid is None or f"pid={pid}," in text)

        self.sb.wait_for(up, 10, f"a listener on {port}")

    def tcp_states(self, port: int) -> list[str]:
        text = self.sb.run(["ss", "-Htan", f"sport = :{port}"]).stdout
        return [line.split()[0] for line in text.splitlines()]

    def spawn(self, argv: list[str]) -> int:
        pid: int = self.sb.spawn(argv)
        self.spawned.append(pid)
        return pid

    def time_wait(self, unit: str, port: int) -> None:
        """A client connected to `unit`'s port; stopping the unit closes the server side
        first, so the port is left with a TIME_WAIT socket (as after a fast restart)."""
        note(f"a client connects to 127.0.0.1:{port} and stays")
        self.spawn([self.python, "-c", CLIENT, str(port)])
        self.sb.wait_for(lambda: "ESTAB" in self.tcp_states(port), 10, "a connection")
        self.systemctl("stop", unit)
        self.sb.wait_for(lambda: self.tcp_states(port) == ["TIME-WAIT"], 10,
                         f"a TIME_WAIT socket on {port}")

    # the journal -----------------------------------------------------------------------

    def mark_journal(self) -> None:
        self.cursor = self.sb.cursor()

    def records(self, unit: str, until: Callable[[dict[str, Any]], bool] | None = None,
                ) -> list[dict[str, Any]]:
        """portguard's records about `unit` since mark_journal(); with `until`, first
        waits for one that satisfies it (journald takes a moment)."""
        matches = ("SYSLOG_IDENTIFIER=portguard", f"PORTGUARD_UNIT={unit}")
        if until is not None:
            self.sb.wait_journal(until, *matches, since_cursor=self.cursor, timeout=10)
        return list(self.sb.journal(*matches, since_cursor=self.cursor))

    def show_records(self, unit: str, records: list[dict[str, Any]]) -> None:
        """What portguard decided and why (the `conflict found` MESSAGEs), then every
        record as a table row."""
        for r in records:
            if r.get("MESSAGE_ID") == CONFLICT and "PORTGUARD_HOLDER_KIND" in r:
                labelled("decided:", strip_unit(r["MESSAGE"], unit), S.bold("decided:"))
        out(f"  journal: {S.dim(f'journalctl PORTGUARD_UNIT={unit}')}")
        rows = [("EVENT", "PORT", "KIND", "ACTION", "RESULT", "PID", "HOLDER UNIT")]
        for r in records:
            port = f"{r['PORTGUARD_PORT']}/{r.get('PORTGUARD_PROTO', 'tcp')}" \
                if "PORTGUARD_PORT" in r else ""
            rows.append((EVENTS.get(r.get("MESSAGE_ID", ""), "?"), port,
                         r.get("PORTGUARD_HOLDER_KIND", ""), r.get("PORTGUARD_ACTION", ""),
                         r.get("PORTGUARD_RESULT", ""), r.get("PORTGUARD_HOLDER_PID", ""),
                         r.get("PORTGUARD_HOLDER_UNIT", "")))
        table(rows)

    def wait_dead(self, pid: int) -> bool:
        with contextlib.suppress(self.mod.SandboxTimeout):
            self.sb.wait_for(lambda: not self.sb.pid_alive(pid), 5, f"pid {pid} to exit")
            return True
        return False

    # what every scene does ---------------------------------------------------------------

    def guarded(self, verb: str, unit: str, port: str, want: tuple[str, dict[str, str]],
                *flags: str, until: Callable[[dict[str, Any]], bool] = is_final,
                succeeds: bool | None = True,
                ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """Who holds `port`, then `systemctl VERB [FLAGS] UNIT`, which runs preflight first:
        what systemctl said and portguard's records about `unit`, both shown. Expects the
        record `want` (MESSAGE_ID, PORTGUARD_* fields), returned, then (unless `succeeds`
        is None) systemctl to succeed or fail."""
        self.who(port)
        self.mark_journal()
        done = self.systemctl(verb, *flags, unit)
        block(done.stdout + done.stderr)
        records = self.records(unit, until=until)
        self.show_records(unit, records)
        found = find(records, want[0], **want[1])
        if succeeds is not None:
            expect((done.returncode == 0) is succeeds,
                   f"systemctl {verb} {unit} {'failed' if succeeds else 'succeeded'}")
        return done, found

    def expect_state(self, unit: str, prefix: str) -> str:
        """`unit`'s state, which must start with `prefix` ("active", "failed")."""
        state = self.state(unit)
        expect(state.startswith(prefix), f"{unit} is {state}")
        return state


# -- setup --------------------------------------------------------------------------------

def setup(st: Story) -> None:
    sb = st.sb
    version = sb.run(["systemctl", "--version"]).stdout.split()[1:2] or ["?"]
    out(S.bold("Setting the scene"))
    para(f"A throwaway systemd {version[0]}, PID 1 of private namespaces (booted in "
         f"{sb.boot_seconds:.1f} s): its own network, processes and unit files. Its "
         f"{CONFIG} is {EXAMPLE.name}, unchanged. The example's services run a small test "
         "listener as webd, apid and gatewayd:", "  ")
    sb.write_file(CONFIG, EXAMPLE.read_text(), mode=0o644)
    listener = Path(st.mod.LISTENER).read_text()
    for name in ("webd", "apid", "gatewayd", "pushgateway"):
        sb.write_file(f"{BIN}/{name}", listener, mode=0o755)
    units = {
        "web@.service": ("web server, instance %i",
                         st.program("webd", "--port", "8080", "--workers", "1"),
                         "KillMode=process"),
        API: ("API server", st.program("apid", "--port", "9100", "--no-reuseaddr"), ""),
        GATEWAY: ("metrics gateway",
                  st.program("gatewayd", "--addr", "0.0.0.0", "--port", "9091"), ""),
        PUSHGATEWAY: ("Prometheus Pushgateway", st.program("pushgateway", "--port", "9091"), ""),
    }
    rows = [("UNIT", "ExecStart=")]
    for name, (desc, argv, extra) in units.items():
        text = f"[Unit]\nDescription={desc}\n\n[Service]\nExecStart={shlex.join(argv)}\n"
        if extra:
            text += extra + "\n"
        sb.write_unit(name, text, reload=False)
        rows.append((name, shlex.join(argv) + (f"   ({extra})" if extra else "")))
    sb.systemctl("daemon-reload", check=True)
    table(rows)
    note("webd forks a worker that shares its socket; KillMode=process: if the main "
         "process dies, the worker stays")
    done = st.portguard("check-config")
    block(done.stdout + done.stderr)
    expect(done.returncode == 0, "check-config failed on the example config")
    for unit in ("web@.service", API, GATEWAY):
        done = st.portguard("install", unit)
        block(done.stdout + done.stderr)
        expect(done.returncode == 0, f"portguard install {unit} failed")
    pre = sb.unit_property(BLUE, "ExecStartPre")
    expect("preflight" in pre, "the drop-in's ExecStartPre= is not loaded")
    para("Every `systemctl start` below now runs `portguard preflight %n` first "
         "(ExecStartPre=). Each scene's journal table lists portguard's records about the "
         "unit: EVENT names the MESSAGE_ID, the other columns are its PORTGUARD_* fields.",
         "  ")


