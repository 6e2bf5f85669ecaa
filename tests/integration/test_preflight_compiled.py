"""The compiled config (portguard.config.compiled) on a real systemd: a guarded start on
free ports skips argparse and PyYAML, and never trusts what it must not.

Each test runs preflight exactly as the drop-in does (`portguard preflight UNIT`, the
config from $PORTGUARD_CONFIG) after `check-config` compiled the config as root, and reads
Python's own import log to tell which way it went. bench/preflight_bench.py measures the
time; this file proves the behaviour:
- the fast way: exit 0, the same words and journal record as the whole way, no yaml, no
  argparse, no config schema imported;
- a config edited since (same size, another port, now held) is not answered from the
  compiled form: the whole way refuses;
- a config others can now write is refused (78) as by a full load, not passed;
- a compiled file that is not root's own 0600 file is ignored.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from support.cases import PORTS_CLEAR, REFUSED
from support.preflight_scene import Scene, is_clear_line, modules, said
from support.sandbox import PYTHON, REPO, Sandbox

COMPILED_DIR = "/run/portguard/compiled"


@pytest.fixture
def scene(sandbox: Sandbox, uid: str) -> Iterator[Scene]:
    s = Scene(sandbox, uid)  # its check-config, as root, compiled the config
    yield s
    s.cleanup()


def drop_in_run(scene: Scene, unit: str) -> subprocess.CompletedProcess[str]:
    """`portguard preflight UNIT` as ExecStartPre= runs it, with Python's import log."""
    return scene.sb.run([PYTHON, "-X", "importtime", "-m", "portguard", "preflight", unit],
                        env={"PYTHONPATH": str(REPO), "PORTGUARD_CONFIG": scene.cfg},
                        timeout=60)


def went_fast(out: subprocess.CompletedProcess[str]) -> bool:
    loaded = modules(out.stderr)
    return not {"yaml", "argparse", "portguard.config.schema"} & loaded


def compiled_file(scene: Scene) -> str:
    return f"{COMPILED_DIR}/{scene.cfg.replace('/', '%2F')}"


@pytest.mark.parametrize("kind", ["plain", "template"])
def test_free_ports_are_cleared_without_argparse_or_yaml(scene: Scene, kind: str) -> None:
    unit, _ = scene.ports[kind]
    out = drop_in_run(scene, unit)
    assert out.returncode == 0, out.stderr
    assert went_fast(out), sorted(modules(out.stderr))
    [line] = said(out.stderr)
    assert is_clear_line(line, unit), line
    clear = scene.record(PORTS_CLEAR, unit, action="none", result="clear")
    assert clear["MESSAGE"] == line.removeprefix("portguard: ")
    # the whole way says the very same
    whole = scene.preflight(unit)
    assert whole.returncode == 0 and said(whole.stderr) == [line], whole.stderr


def test_an_edited_config_is_read_again_not_answered_from_the_compiled_form(
        scene: Scene) -> None:
    unit, ports = scene.ports["plain"]
    pid = scene.hold()
    text = scene.sb.read_file(scene.cfg)
    edited = text.replace(f'"{ports[0]}"', f'"{scene.held_port}"', 1)
    assert edited != text and len(edited) == len(text)  # same size: only the bytes differ
    scene.sb.write_file(scene.cfg, edited, mode=0o600)
    # the held port is now the plain unit's first; its policy (stop) would stop a stray,
    # but the holder runs another program: foreign, so refused
    out = drop_in_run(scene, unit)
    assert not went_fast(out), "answered from a compiled form of another config"
    assert out.returncode == 1, out.stderr
    assert f"{scene.held_port}/tcp is held by pid {pid}" in out.stderr
    assert scene.sb.pid_alive(pid)
    scene.record(REFUSED, unit)


def test_a_config_others_can_write_is_refused_not_passed(scene: Scene) -> None:
    unit, _ = scene.ports["plain"]
    assert drop_in_run(scene, unit).returncode == 0  # compiled and trusted
    scene.sb.run(["chmod", "o+w", scene.cfg], check=True)
    try:
        out = drop_in_run(scene, unit)
    finally:
        scene.sb.run(["chmod", "o-w", scene.cfg], check=True)
    assert out.returncode == 78, out.stderr
    assert "writable by group or others" in out.stderr
    assert not went_fast(out)


@pytest.mark.parametrize("change", [["chmod", "0644"], ["chown", "nobody"]])
def test_a_compiled_file_that_is_not_roots_own_is_ignored(scene: Scene,
                                                          change: list[str]) -> None:
    unit, _ = scene.ports["plain"]
    path = compiled_file(scene)
    assert scene.sb.run(["test", "-f", path]).returncode == 0, "check-config compiled nothing"
    scene.sb.run([*change, path], check=True)
    out = drop_in_run(scene, unit)
    assert out.returncode == 0, out.stderr
    assert not went_fast(out), "trusted a compiled file others could have written"
    # the whole way compiled it afresh, as root's own 0600 file: the next start is fast
    assert scene.sb.run(["stat", "-c", "%U %a", path]).stdout.split() == ["root", "600"]
    assert went_fast(drop_in_run(scene, unit))
