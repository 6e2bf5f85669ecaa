"""Running portguard and its targets as someone else, and holding it mid-run: what the
fault and hostile-input suites share (tests/integration/test_faults_*.py,
test_hostile_system.py).

`NOBODY`/`CAPLESS` are setpriv prefixes (another user; root without the capabilities that
read others' /proc); `nobody_portguard` runs a copy of the package as nobody; `Paused`
holds a portguard run just before a named function so a test can change the world
between portguard's scan and its act; `shared_copy` is listener.py where nobody can read
it; `gone` and `signals_sent` are what those tests assert with.
"""

from __future__ import annotations

import os
import sysconfig
import threading
import time
from collections.abc import Sequence
from subprocess import CompletedProcess

from support.availability import skip_or_fail
from support.cases import SIGNAL, Case
from support.sandbox import REPO, Sandbox

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody may not reach the venv's interpreter
SITE = sysconfig.get_paths()["purelib"]  # pystemd, PyYAML: world-readable, same ABI
CAPLESS = ["setpriv", "--inh-caps=-all",
           "--bounding-set=-sys_ptrace,-dac_read_search,-dac_override", "--"]


def nobody_portguard(sb: Sandbox, uid: str, *, caps: Sequence[str] = ()
                     ) -> tuple[list[str], dict[str, str]]:
    """argv prefix and env running `python3 -m portguard` as nobody, with `caps` ambient.

    The code comes from a copy under the sandbox's /tmp (the repository may sit where
    nobody cannot read, e.g. under /root); Debian's python3 (3.11, the venv's ABI) runs
    it with the venv's site-packages for pystemd and PyYAML.
    """
    copy = f"/tmp/pg-{uid}"
    sb.run(["mkdir", "-p", copy], check=True)
    sb.run(["cp", "-r", f"{REPO}/portguard", copy], check=True)
    env = {"PYTHONPATH": f"{copy}:{SITE}"}
    argv = list(NOBODY)
    if caps:
        wanted = ",".join(f"+{c}" for c in caps)
        argv += [f"--inh-caps={wanted}", f"--ambient-caps={wanted}"]
    argv += [SYSTEM_PYTHON, "-m", "portguard"]
    probe = sb.run([*argv[:-2], "-c", "import pystemd.dbuslib, portguard.observe.systemd.units"],
                   env=env)
    if probe.returncode != 0:
        skip_or_fail(f"nobody cannot import portguard with {SYSTEM_PYTHON}: {probe.stderr}")
    return argv, env


PAUSE = r"""
import importlib, os, sys, time
state, target, *argv = sys.argv[1:]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)

def paused(*args, **kwargs):
    with open(state + "/paused", "w") as f:
        f.write("paused\n")
    end = time.monotonic() + 30
    while not os.path.exists(state + "/go"):
        if time.monotonic() > end:
            raise SystemExit("test hook: never told to go on")
        time.sleep(0.01)
    return real(*args, **kwargs)

setattr(owner, name, paused)
from portguard.cli import main
sys.exit(main(argv))
"""


class Paused:
    """`portguard ARGS` in the sandbox (in a thread), held just before `target`
    ("module:function" or "module:Class.method") runs, until `go()`: the test changes the
    world between portguard's scan and its act. Later calls of `target` run at once."""

    def __init__(self, sb: Sandbox, uid: str, target: str, *args: str) -> None:
        self.sb = sb
        self.state = f"/run/pause-{uid}"
        sb.run(["mkdir", "-p", self.state], check=True)
        self.result: CompletedProcess[str] | None = None
        self.took = 0.0
        self._thread = threading.Thread(target=self._run, args=(target, args), daemon=True)
        self._thread.start()

    def _run(self, target: str, args: Sequence[str]) -> None:
        t0 = time.monotonic()
        self.result = self.sb.python(PAUSE, self.state, target, *args, timeout=60)
        self.took = time.monotonic() - t0

    def wait_paused(self) -> None:
        flag = f"/proc/{self.sb.pid}/root{self.state}/paused"

        def paused() -> bool:
            if not self._thread.is_alive():
                raise AssertionError(f"portguard ended before pausing: {self.result}")
            return os.path.exists(flag)

        self.sb.wait_for(paused, 20, "portguard to pause")

    def go(self) -> CompletedProcess[str]:
        self.sb.write_file(f"{self.state}/go", "go\n")
        self._thread.join(60)
        assert self.result is not None, "portguard did not finish"
        return self.result


def gone(sb: Sandbox, pid: int) -> bool:
    """Not even a zombie: the pid is free for the taking."""
    return sb.run(["test", "-e", f"/proc/{pid}"]).returncode != 0


def signals_sent(case: Case, unit: str) -> list[dict[str, str]]:
    return [r for r in case.records(unit=unit)
            if r["MESSAGE_ID"] == SIGNAL and r["PORTGUARD_ACTION"] == "signal"]


def shared_copy(sb: Sandbox, uid: str) -> list[str]:
    """listener.py where nobody can read it, run by Debian's python3: the argv both the
    unit and a copy started by another user run."""
    path = f"/tmp/pg-{uid}/listener.py"
    sb.run(["mkdir", "-p", f"/tmp/pg-{uid}"], check=True)
    sb.run(["cp", f"{REPO}/tests/support/listener.py", path], check=True)
    return [SYSTEM_PYTHON, path]
