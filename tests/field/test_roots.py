"""The Debian roots (tests/support/roots.py) boot, and this checkout runs in each.

Each root is Debian's own: its systemd as PID 1 (252 in 12, 257 in 13), its Python
(3.11, 3.13) with Debian's python3-pystemd/-psutil/-yaml/-sdnotify, the checkout
bind-mounted read-only. `who` on a port a unit holds names the unit there, and the unit
tests pass on Debian 13's Python with Debian's pytest and hypothesis.
"""

from __future__ import annotations

import re
import subprocess

from support.availability import require_root
from support.roots import RootSandbox
from support.sandbox import REPO, listener_exec

SYSTEMD = {"12": 252, "13": 257}
PYTHON = {"12": "3.11", "13": "3.13"}
# Not the product's code, or not installed in the root: the docs generator needs the pip
# tools of the test extra (shtab, argparse-manpage), and preflight_command() needs
# portguard installed (here it is on PYTHONPATH only; test_deb.py installs the package).
NOT_IN_ROOT = ("tests/unit/test_docs_drift.py::test_make_docs_check_lists_a_command_the_docs_lack",
               "tests/unit/test_install.py::test_preflight_command_of_this_test_run_works")


def test_the_root_is_debians_own(root_sb: RootSandbox) -> None:
    release = root_sb.read_file("/etc/os-release")
    assert f'VERSION_ID="{root_sb.version}"' in release, release
    version = root_sb.run(["systemctl", "--version"], check=True).stdout
    assert int(version.split()[1]) == SYSTEMD[root_sb.version], version
    assert root_sb.systemctl("is-system-running").stdout.strip() == "running"
    py = root_sb.python("import sys, pystemd; print(sys.executable, sys.version)", check=True)
    assert py.stdout.split()[1].startswith(PYTHON[root_sb.version] + "."), py.stdout
    # the checkout is there, read-only: nothing a test does inside reaches it
    touch = root_sb.run(["touch", f"{REPO}/pyproject.toml"])
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def test_who_names_the_unit_on_the_roots_python(root_sb: RootSandbox) -> None:
    unit = "roots-web.service"
    root_sb.write_unit(unit, f"[Service]\nExecStart={listener_exec('--port', '8080')}\n")
    root_sb.systemctl("start", unit, check=True)
    try:
        [pid] = root_sb.wait_listening(8080)
        out = root_sb.portguard("who", "8080")
        assert out.returncode == 1, out.stdout + out.stderr
        assert re.search(rf"8080/tcp\s+LISTEN\s+0\.0\.0\.0:8080\s+{pid}\s+root\s+{unit}",
                         out.stdout), out.stdout
        exe = root_sb.run(["readlink", f"/proc/{pid}/exe"], check=True).stdout.strip()
        assert exe.startswith("/usr/bin/python3"), exe
    finally:
        root_sb.systemctl("stop", unit)


def test_a_pid_resolves_to_its_unit_by_pidfd_on_257_by_pid_on_252(root_sb: RootSandbox
                                                                   ) -> None:
    """systemd 257 (13) has GetUnitByPIDFD, 252 (12) does not: both name the unit."""
    unit = "roots-pidfd.service"
    root_sb.write_unit(unit, f"[Service]\nExecStart={listener_exec('--port', '8081')}\n")
    root_sb.systemctl("start", unit, check=True)
    try:
        [pid] = root_sb.wait_listening(8081)
        out = root_sb.python(
            "import sys; from portguard.observe.systemd.units import Systemd\n"
            "sd = Systemd.connect(); u = sd.unit_for_pid(int(sys.argv[1]))\n"
            "print(u.id if u else None, sd.pid_lookup)", str(pid), check=True)
        assert out.stdout.split() == [unit, {"12": "pid", "13": "pidfd"}[root_sb.version]]
        assert pid in {int(p) for p in root_sb.read_file(
            f"/sys/fs/cgroup/system.slice/{unit}/cgroup.procs").split()}
    finally:
        root_sb.systemctl("stop", unit)


def test_unit_tests_pass_on_debian_13s_python() -> None:
    """(Debian 12's Python is the host's: tests/unit runs there already.)"""
    require_root("trixie")
    with RootSandbox("trixie") as sb:
        out = run_unit_tests(sb)
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    assert re.search(r"\b\d{3,} passed\b", out.stdout), tail


def run_unit_tests(root_sb: RootSandbox) -> subprocess.CompletedProcess[str]:
    deselect = [a for t in NOT_IN_ROOT for a in ("--deselect", t)]
    return root_sb.run(["sh", "-c", f'cd "{REPO}" && exec python3 -m pytest -q -p '
                       'no:cacheprovider tests/unit "$@"', "unit", *deselect],
                      timeout=900, env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
