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

from collections.abc import Iterator

import pytest
from support.cases import CONFLICT, PORTS_CLEAR
from support.preflight_scene import (
    Scene,
    is_clear_line,
    modules,
    pystemd_modules,
    said,
)
from support.sandbox import PYTHON, REPO, Sandbox


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
