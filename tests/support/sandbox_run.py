"""Running commands inside a booted sandbox, reading its journal, and waiting on both.

`SandboxRunner` is the base of `Sandbox` (sandbox.py), which boots the systemd these
methods talk to and sets `pid`, `_join` and `_stopped`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from support.sandbox_base import BASE_ENV, PYTHON, REPO, SandboxError, SandboxTimeout

T = TypeVar("T")


def _cursor_position(cursor: str) -> tuple[int, int]:
    """(realtime usec, seqnum) of a journal cursor "s=..;i=SEQ;b=..;m=..;t=REALTIME;x=.."."""
    parts = dict(p.split("=", 1) for p in cursor.split(";") if "=" in p)
    return int(parts.get("t", "0"), 16), int(parts.get("i", "0"), 16)


class SandboxRunner:
    """Commands, journal and waits inside a running sandbox (see sandbox.py)."""

    pid: int  # host pid of the sandbox's systemd; 0 until booted
    _join: str  # sh that moves $$ into the sandbox's root cgroup(s), from the host
    _stopped: bool

    # -- running things inside ------------------------------------------------------

    def _enter(self) -> list[str]:
        """argv prefix: join the sandbox's root cgroup (from the host side, so it works
        with nsdelegate too), then enter every namespace; setns(mnt) makes cwd /."""
        if not self.pid or self._stopped:
            raise SandboxError("sandbox is not running")
        return ["/bin/sh", "-c", f'{self._join} exec "$@"', "sandbox-run",
                "nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-i", "-C", "--"]

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0,
            check: bool = False, env: Mapping[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run argv inside (all namespaces incl. cgroup, the sandbox's root cgroup, cwd /).

        The environment is BASE_ENV (a clean PATH, LANG, HOME) updated with `env`. On
        timeout the command (nsenter's child, inside) is killed too, then TimeoutExpired.
        """
        full_env = {**BASE_ENV, **(env or {})}
        with subprocess.Popen([*self._enter(), *argv], env=full_env, text=True,
                              stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            try:
                stdout, stderr = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError, ValueError):  # nsenter's one child: argv
                    for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text() \
                            .split():
                        os.kill(int(child), signal.SIGKILL)
                proc.kill()
                stdout, stderr = proc.communicate()
                raise subprocess.TimeoutExpired(proc.args, timeout, stdout, stderr) from None
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise SandboxError(f"{shlex.join(argv)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = False, timeout: float = 30.0,
                  ) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", "--no-ask-password", *args],
                        check=check, timeout=timeout)

    def portguard(self, *args: str, input: str | None = None, timeout: float = 60.0,
                  check: bool = False, env: Mapping[str, str] | None = None,
                  ) -> subprocess.CompletedProcess[str]:
        """`python -m portguard ARGS` inside, with this repo's code."""
        return self.run([PYTHON, "-m", "portguard", *args], input=input, timeout=timeout,
                        check=check, env={"PYTHONPATH": str(REPO), **(env or {})})

    def python(self, code: str, *args: str, timeout: float = 30.0, check: bool = False,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`python -c CODE ARGS` inside, with this repo's code importable."""
        return self.run([PYTHON, "-c", code, *args], timeout=timeout, check=check,
                        env={"PYTHONPATH": str(REPO), **(env or {})})

    # -- journal --------------------------------------------------------------------

    def journal(self, *matches: str, since_cursor: str | None = None) -> list[dict[str, Any]]:
        """Records (journalctl -o json), oldest first.

        `matches` go to journalctl as they are: "FIELD=value", or "-u", "UNIT".
        """
        out = self.run(["journalctl", "--no-pager", "-o", "json", *matches], timeout=15)
        if out.returncode != 0 and out.stderr.strip():
            raise SandboxError(f"journalctl failed: {out.stderr}")
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        if since_cursor:
            # not --after-cursor: journalctl 252 returns nothing when it is combined with a
            # match the cursor's own record does not satisfy
            after = _cursor_position(since_cursor)
            records = [r for r in records if _cursor_position(r["__CURSOR"]) > after]
        return records

    def cursor(self) -> str | None:
        """Cursor of the newest record (pass it as since_cursor to see only newer ones)."""
        records = self.run(["journalctl", "--no-pager", "-o", "json", "-n", "1"], timeout=15)
        for line in records.stdout.splitlines():
            if line.startswith("{"):
                return str(json.loads(line)["__CURSOR"])
        return None

    def wait_journal(self, predicate: Callable[[dict[str, Any]], bool], *matches: str,
                     timeout: float = 10.0, since_cursor: str | None = None,
                     ) -> dict[str, Any]:
        """The first record (matching `matches`) for which predicate is true, polling."""
        seen: list[dict[str, Any]] = []

        def find() -> dict[str, Any] | None:
            nonlocal seen
            seen = self.journal(*matches, since_cursor=since_cursor)
            return next((r for r in seen if predicate(r)), None)

        try:
            return self.wait_for(find, timeout, f"a journal record {' '.join(matches)}",
                                 interval=0.05)
        except SandboxTimeout as exc:
            tail = "\n".join(str(r.get("MESSAGE")) for r in seen[-20:])
            raise SandboxTimeout(f"{exc}; last records:\n{tail}") from None


    # -- waiting --------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0,
                 what: str = "a condition", interval: float = 0.05) -> T:
        """Poll predicate until it returns something truthy; return that. Bounded."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise SandboxTimeout(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, "--", unit, check=True).stdout.rstrip("\n")

    def wait_settled(self, *units: str, timeout: float = 20.0) -> tuple[str, ...]:
        """Wait until no job is queued for the units and none is (de)activating; return
        their ActiveStates, in order (units started together, say)."""
        def settled() -> tuple[str, ...] | None:
            if self.systemctl("list-jobs", "--no-legend", *units).stdout.strip():
                return None
            states = tuple(self.unit_property(u, "ActiveState") for u in units)
            return states if not {"activating", "deactivating"} & set(states) else None

        return self.wait_for(settled, timeout, f"{' and '.join(units)} to settle")

    def wait_unit_state(self, unit: str, *states: str, timeout: float = 10.0) -> str:
        """Wait until the unit's ActiveState is one of `states`; return it."""
        last = ""

        def reached() -> str:
            nonlocal last
            last = self.unit_property(unit, "ActiveState")
            return last if last in states else ""

        try:
            return self.wait_for(reached, timeout, f"{unit} to be {'|'.join(states)}")
        except SandboxTimeout as exc:
            status = self.systemctl("status", "--", unit).stdout
            raise SandboxTimeout(f"{exc} (is {last!r})\n{status}") from None
