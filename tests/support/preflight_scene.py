"""preflight in the sandbox, as a person runs it: a scene of units and a config
(`Scene`), and what its output says (Python's import log, the lines a person reads).

Used by test_preflight_fastpath.py and test_preflight_compiled.py (the whole way's
free-port check, the compiled config) and test_fastpath_installed.py (the import log).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from typing import Any

from support.cases import wait_record
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
