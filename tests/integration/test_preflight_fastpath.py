"""The preflight fast path needs neither pystemd nor D-Bus (issue 4, item 7), in the sandbox.

When every declared port is free, `portguard preflight UNIT` answers from sock_diag, the
cgroup tree and bind() probes alone. Shown here from the outside, on a real systemd 252:

- `python -X importtime -m portguard preflight UNIT` exits 0 and its import log has no
  pystemd module (while it does list portguard.commands.preflight, so the log covers the command);
- with the system bus unreachable (`DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent`) it
  still exits 0, tells the person the ports are free, and journals PORTS_CLEAR;
- the controls, which make those two mean something: once a holder is present, the same
  unreachable bus is reported to the person (the slow path does use D-Bus), and with the
  bus in place the same import log does list pystemd.

Correctness only; bench/preflight_bench.py measures the time. Each case covers a plain
unit (three TCP ports) and a template instance (TCP, UDP and a loopback address, plus the
cgroup tree walk for a starting twin). Every test has its own config
(/etc/portguard/<uid>.yaml), unit names carrying the uid, and ports, so the module's
sandbox is shared.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support.cases import CONFLICT, PORTS_CLEAR, wait_record
from support.sandbox import PYTHON, REPO, Sandbox, listener_argv, listener_exec

NO_BUS = "unix:path=/nonexistent"
_IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \| (.*)$")
_ports = itertools.count(23000, 5)  # the module's sandbox has its own network namespace


class Scene:
    """A config with a plain unit, a template and a unit whose port a stray will hold."""

    def __init__(self, sb: Sandbox, uid: str) -> None:
        self.sb = sb
        self.cfg = f"/etc/portguard/{uid}.yaml"
        p, q, self.held_port = next(_ports), next(_ports), next(_ports)
        self.ports = {
            "plain": (f"fp-{uid}.service", [str(p), str(p + 1), str(p + 2)]),
            "template": (f"fpt-{uid}@blue.service", [str(q), f"{q + 1}/udp",
                                                     f"127.0.0.1:{q + 2}"]),
        }
        self.held = f"held-{uid}.service"
        args = ("--port", str(self.held_port), "--name", "heldd")
        self.stray_argv = listener_argv(*args)
        self.pids: list[int] = []
        sb.write_file(self.cfg, (  # JSON lists are YAML flow sequences
            f"services:\n"
            f"  fp-{uid}.service:\n    ports: {json.dumps(self.ports['plain'][1])}\n"
            f"  fpt-{uid}@.service:\n    ports: {json.dumps(self.ports['template'][1])}\n"
            f"  {self.held}:\n    ports: [\"{self.held_port}\"]\n    policy: fail\n"))
        checked = sb.portguard("--config", self.cfg, "check-config")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # Loaded, not started: its ExecStart= makes a hand-started copy a stray.
        sb.write_unit(self.held, f"[Service]\nExecStart={listener_exec(*args)}\n")
        self.cursor = sb.cursor()

    def preflight(self, unit: str, *, importtime: bool = False, no_bus: bool = False,
                  ) -> subprocess.CompletedProcess[str]:
        """`python [-X importtime] -m portguard --config=CFG preflight UNIT`, as a person
        would run it (stderr is a pipe, so the messages are echoed there too). `--config=`
        is a form `install` never writes: it goes the whole way, `Preflight`, whose own
        free-port check is what this file tests (the drop-in's forms answer before it:
        test_fastpath_installed.py)."""
        env = {"PYTHONPATH": str(REPO)}
        if no_bus:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = NO_BUS
        flags = ["-X", "importtime"] if importtime else []
        return self.sb.run([PYTHON, *flags, "-m", "portguard", f"--config={self.cfg}",
                            "preflight", unit], env=env, timeout=60)

    def hold(self) -> int:
        """A copy of the held unit's program started by hand, listening on its port."""
        pid = self.sb.spawn(self.stray_argv)
        self.pids.append(pid)
        self.sb.wait_for(lambda: f"pid={pid}," in self.sb.run(
            ["ss", "-Hltnp", f"sport = :{self.held_port}"]).stdout, 10,
            f"pid {pid} to listen on {self.held_port}")
        return pid

    def record(self, message_id: str, unit: str, **fields: str) -> dict[str, Any]:
        return wait_record(self.sb, message_id, f"PORTGUARD_UNIT={unit}",
                           since_cursor=self.cursor, timeout=5, **fields)

    def cleanup(self) -> None:
        for pid in self.pids:
            if self.sb.pid_alive(pid):
                self.sb.kill(pid)


def modules(stderr: str) -> set[str]:
    """Every module in a `-X importtime` log."""
    return {m.group(1).strip() for line in stderr.splitlines()
            if (m := _IMPORT_LINE.match(line))}


def pystemd_modules(stderr: str) -> list[str]:
    return sorted(m for m in modules(stderr) if m == "pystemd" or m.startswith("pystemd."))


def said(stderr: str) -> list[str]:
    """What the person reads on stderr: everything but the import log."""
    return [line for line in stderr.splitlines()
            if line and not line.startswith("import time:")]


def is_clear_line(line: str, unit: str) -> bool:
    """The fast path's one line (the port list's format is the journal's business)."""
    return line.startswith(f"portguard: {unit}: all declared ports are free (") and \
        line.endswith(")")


@pytest.fixture
def scene(sandbox: Sandbox, uid: str) -> Iterator[Scene]:
    s = Scene(sandbox, uid)
    yield s
    s.cleanup()


KINDS = ["plain", "template"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_fast_path_imports_no_pystemd(scene: Scene, kind: str) -> None:
    unit, _ = scene.ports[kind]
    out = scene.preflight(unit, importtime=True)
    assert out.returncode == 0, out.stderr
    [line] = said(out.stderr)
    assert is_clear_line(line, unit), line
    loaded = modules(out.stderr)
    assert "portguard.commands.preflight" in loaded, "the import log does not cover preflight"
    assert pystemd_modules(out.stderr) == []
    assert "psutil" not in loaded  # ~20 ms; the daemon's own metrics only
    scene.record(PORTS_CLEAR, unit, action="none", result="clear")


@pytest.mark.parametrize("kind", KINDS)
def test_the_fast_path_answers_with_the_system_bus_unreachable(scene: Scene,
                                                                kind: str) -> None:
    unit, _ = scene.ports[kind]
    with_bus = scene.preflight(unit)
    assert with_bus.returncode == 0, with_bus.stderr
    scene.cursor = scene.sb.cursor()  # the records below are the bus-less run's

    out = scene.preflight(unit, no_bus=True)
    assert out.returncode == 0, out.stderr
    # Exactly what it says with the bus in place: the ports are free, nothing about D-Bus.
    [line] = said(out.stderr)
    assert is_clear_line(line, unit), line
    assert said(out.stderr) == said(with_bus.stderr)
    clear = scene.record(PORTS_CLEAR, unit, action="none", result="clear")
    assert clear["MESSAGE"] == line.removeprefix("portguard: ")
    records = scene.sb.journal("SYSLOG_IDENTIFIER=portguard", f"PORTGUARD_UNIT={unit}",
                               since_cursor=scene.cursor)
    assert [r["MESSAGE_ID"] for r in records] == [PORTS_CLEAR], records


def test_with_a_holder_the_unreachable_bus_is_reported(scene: Scene) -> None:
    """The control: the slow path does use D-Bus, and says so when it cannot."""
    pid = scene.hold()
    out = scene.preflight(scene.held, no_bus=True)
    assert out.returncode == 1, out.stderr
    lines = said(out.stderr)
    [unreachable] = [ln for ln in lines if "D-Bus" in ln]
    assert unreachable.startswith(f"portguard: {scene.held}: systemd's D-Bus API is "
                                  "unreachable (cannot connect to the system bus: "), lines
    assert unreachable.endswith("units are named from cgroups and no unit can be stopped")
    refusal = lines[-1]
    assert refusal.startswith(f"portguard: {scene.held} cannot start: "
                              f"{scene.held_port}/tcp is held by pid {pid} "), lines
    assert scene.sb.pid_alive(pid)  # refused: nothing is touched
    scene.record(CONFLICT, scene.held, action="none", result="no-dbus")


def test_with_a_holder_and_the_bus_pystemd_is_imported(scene: Scene) -> None:
    """The control for the import log: the same method does see pystemd on the slow path."""
    pid = scene.hold()
    out = scene.preflight(scene.held, importtime=True)
    assert out.returncode == 1, out.stderr
    assert "pystemd" in pystemd_modules(out.stderr)
    assert "psutil" not in modules(out.stderr)  # not even on the slow path
    lines = said(out.stderr)
    assert not [ln for ln in lines if "D-Bus" in ln], lines
    assert lines[-1].startswith(f"portguard: {scene.held} cannot start: "
                                f"{scene.held_port}/tcp is held by pid {pid} "), lines
    assert "[stray:" in lines[-1]  # named from its unit's ExecStart=, read over D-Bus
    assert scene.sb.pid_alive(pid)


@pytest.mark.parametrize("kind", KINDS)
def test_the_fast_path_opens_no_socket_to_the_bus(scene: Scene, kind: str) -> None:
    """The bluntest check, where strace is installed: no connect() to the system bus
    (/run/dbus/system_bus_socket; today the fast path calls connect() on nothing at all:
    the journal is sendto() on a datagram socket). The slow path, traced the same way,
    does connect to the bus."""
    if scene.sb.run(["sh", "-c", "command -v strace"]).returncode != 0:
        pytest.skip("strace is not installed")
    unit, _ = scene.ports[kind]
    trace = f"/tmp/{unit}.strace"
    out = scene.sb.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", trace, PYTHON,
                        "-m", "portguard", "--config", scene.cfg, "preflight", unit],
                       env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 0, out.stderr
    connects = [ln for ln in scene.sb.read_file(trace).splitlines() if "connect(" in ln]
    assert not [ln for ln in connects if "dbus" in ln], connects

    scene.hold()
    out = scene.sb.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", trace, PYTHON,
                        "-m", "portguard", "--config", scene.cfg, "preflight", scene.held],
                       env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 1, out.stderr
    assert 'sun_path="/run/dbus/system_bus_socket"' in scene.sb.read_file(trace)
