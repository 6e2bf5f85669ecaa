"""`portguard install` / `uninstall` against a real systemd 252 (the sandbox).

/etc/systemd/system is a private tmpfs inside the sandbox. No unit is started with the
drop-in in place: its ExecStartPre= runs `portguard preflight`, which is not what these
tests are about; the wiring is checked through what systemd itself reports
(DropInPaths, ExecStartPre, ExecStartPreEx, `systemctl cat`).
"""

from __future__ import annotations

import json
import os
import sysconfig

import pytest
from support.sandbox import REPO, Sandbox

BASE = "/etc/systemd/system"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def dropin(unit: str) -> str:
    return f"{BASE}/{unit}.d/portguard.conf"


def exists(sb: Sandbox, path: str) -> bool:
    return sb.run(["test", "-e", path]).returncode == 0


def stat(sb: Sandbox, path: str) -> str:
    """mode, owner, inode and mtime: unchanged means not rewritten."""
    return sb.run(["stat", "-c", "%a %U:%G %i %Y.%y", path], check=True).stdout.strip()


def test_install_a_template_wires_every_instance(sandbox: Sandbox, uid: str) -> None:
    template = f"web-{uid}@.service"
    sandbox.write_unit(template, "[Service]\nExecStart=/bin/sleep 1000\n")
    done = sandbox.portguard("install", template)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"installed: {dropin(template)}\n"

    for instance in (f"web-{uid}@a.service", f"web-{uid}@b.service"):
        assert sandbox.unit_property(instance, "DropInPaths") == dropin(template)
        assert sandbox.unit_property(instance, "NeedDaemonReload") == "no"
        pre = sandbox.unit_property(instance, "ExecStartPre")
        assert f"preflight {instance} ;" in pre  # %n, expanded by systemd
        assert "-m portguard" in pre or "/portguard " in pre
        assert "flags=privileged" in sandbox.unit_property(instance, "ExecStartPreEx")
    cat = sandbox.systemctl("cat", f"web-{uid}@a.service", check=True).stdout
    assert f"# {dropin(template)}" in cat
    assert "ExecStartPre=+" in cat and "preflight %n" in cat
    assert stat(sandbox, dropin(template)).startswith("644 root:root")
    assert stat(sandbox, f"{BASE}/{template}.d").startswith("755 root:root")


def test_install_twice_is_already_installed_and_unchanged(sandbox: Sandbox, uid: str) -> None:
    unit = f"twice-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    assert sandbox.portguard("install", unit).returncode == 0
    before = stat(sandbox, dropin(unit))
    again = sandbox.portguard("install", unit)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"already installed: {dropin(unit)}\n"
    assert stat(sandbox, dropin(unit)) == before
    doc = sandbox.portguard("--json", "install", unit)
    assert json.loads(doc.stdout) == {"unit": unit, "dropin": dropin(unit), "changed": False}


def test_uninstall_removes_it_and_reloads(sandbox: Sandbox, uid: str) -> None:
    template = f"gone-{uid}@.service"
    instance = f"gone-{uid}@x.service"
    sandbox.write_unit(template, "[Service]\nExecStart=/bin/sleep 1000\n")
    assert sandbox.portguard("install", template).returncode == 0
    assert sandbox.unit_property(instance, "DropInPaths") == dropin(template)

    done = sandbox.portguard("--json", "uninstall", template)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"unit": template, "dropin": dropin(template),
                                       "changed": True}
    assert sandbox.unit_property(instance, "DropInPaths") == ""
    assert sandbox.unit_property(instance, "ExecStartPre") == ""
    assert sandbox.unit_property(instance, "NeedDaemonReload") == "no"
    assert not exists(sandbox, f"{BASE}/{template}.d")

    again = sandbox.portguard("uninstall", template)
    assert again.returncode == 0
    assert again.stdout == f"not installed: {dropin(template)}\n"
    assert "nothing to remove" in again.stderr


def test_install_a_unit_that_does_not_exist(sandbox: Sandbox, uid: str) -> None:
    for unit in (f"nope-{uid}.service", f"nope-{uid}@.service", f"nope-{uid}@a.service"):
        done = sandbox.portguard("install", unit)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"no such unit: {unit}" in done.stderr
        assert not exists(sandbox, f"{BASE}/{unit}.d")


def test_install_a_plain_unit_by_its_short_name(sandbox: Sandbox, uid: str) -> None:
    unit = f"plain-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    done = sandbox.portguard("install", f"plain-{uid}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"installed: {dropin(unit)}\n"
    assert sandbox.unit_property(unit, "DropInPaths") == dropin(unit)
    assert f"preflight {unit} ;" in sandbox.unit_property(unit, "ExecStartPre")
    assert sandbox.portguard("uninstall", f"plain-{uid}").returncode == 0
    assert sandbox.unit_property(unit, "DropInPaths") == ""


def test_an_instance_gets_its_own_dropin_that_shadows_the_templates(sandbox: Sandbox,
                                                                   uid: str) -> None:
    template, blue, green = (f"inst-{uid}@.service", f"inst-{uid}@blue.service",
                             f"inst-{uid}@green.service")
    sandbox.write_unit(template, "[Service]\nExecStart=/bin/sleep 1000\n")
    assert sandbox.portguard("install", blue).returncode == 0
    assert sandbox.unit_property(blue, "DropInPaths") == dropin(blue)
    assert sandbox.unit_property(green, "DropInPaths") == ""  # only what was named

    assert sandbox.portguard("install", template).returncode == 0
    # same file name: systemd applies the instance's only, so preflight runs once
    assert sandbox.unit_property(blue, "DropInPaths") == dropin(blue)
    assert sandbox.unit_property(blue, "ExecStartPre").count("preflight") == 1
    assert sandbox.unit_property(green, "DropInPaths") == dropin(template)

    done = sandbox.portguard("uninstall", blue)
    assert done.returncode == 0
    assert f"still covers every instance of {template}" in done.stderr
    assert sandbox.unit_property(blue, "DropInPaths") == dropin(template)
    sandbox.portguard("uninstall", template)


def test_install_refuses_other_unit_types(sandbox: Sandbox, uid: str) -> None:
    done = sandbox.portguard("install", f"x-{uid}.socket")
    assert done.returncode == 2
    assert ".socket unit" in done.stderr


def test_install_as_nobody_needs_root(sandbox: Sandbox, uid: str) -> None:
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3")
    unit = f"root-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    env = {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"}  # see test_units_dbus
    for verb in ("install", "uninstall"):
        done = sandbox.run([*NOBODY, "/usr/bin/python3", "-m", "portguard", verb, unit],
                           env=env)
        assert done.returncode == 77, done.stdout + done.stderr
        assert "needs root" in done.stderr
    assert not exists(sandbox, f"{BASE}/{unit}.d")


def test_install_from_a_console_script_writes_that_script(sandbox: Sandbox, uid: str) -> None:
    script = REPO / ".venv" / "bin" / "portguard"
    if not os.access(script, os.X_OK):
        pytest.skip(f"no console script at {script}")
    unit = f"script-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    done = sandbox.run([str(script), "install", unit])
    assert done.returncode == 0, done.stderr
    assert sandbox.read_file(dropin(unit)).splitlines()[-1] == \
        f"ExecStartPre=+{script} preflight %n"
    assert sandbox.unit_property(unit, "ExecStartPre").startswith(f"{{ path={script} ;")
    sandbox.portguard("uninstall", unit, check=True)
