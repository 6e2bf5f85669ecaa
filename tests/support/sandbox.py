"""A real systemd (PID 1 of private namespaces) for integration tests and bench scripts.

No pytest in here: bench/ scripts use it too. This module boots and stops the sandbox and
is the one to import (`from sandbox import ...`, or loaded by path as scripts/demo.py
does); the rest lives beside it: sandbox_base.py (paths, seed units, PID 1's script,
errors), sandbox_host.py (host cgroups, availability, stale leftovers), sandbox_run.py
(commands, journal, waits inside) and sandbox_inside.py (files, units, processes).
The team note systemd-sandbox.md says why a systemd boots this way; the short version:

    with Sandbox() as sb:                      # boots /usr/bin/systemd in ~0.1-1 s
        sb.write_unit("web@.service", "...")   # /etc/systemd/system (private tmpfs) + reload
        sb.systemctl("start", "web@a.service")
        sb.wait_journal(lambda r: "Address already in use" in r["MESSAGE"], "-u", "web@b.service")
        sb.portguard("who", "8080")            # the project's CLI, inside the sandbox

What is private to the sandbox (the host never sees a write there): tmpfs on /run, /tmp,
/var/tmp, /var/log, /var/lib/systemd, /var/cache, /dev/shm, /etc/systemd/system and
/etc/portguard; the rest of /etc is an overlay whose writes land in the sandbox's /run; a
network namespace with only `lo` (up), so ports never clash with the host; its own PID,
UTS, IPC and cgroup namespaces; /proc/sys read-only except /proc/sys/net (per-netns).
The unit path is exactly `/etc/systemd/system:/run/portguard-sandbox/units` (the latter
holds the seed units: the boot target, dbus, a small journald, empty stock targets).
The repository and the venv are bind-mounted at their own paths, so a clone under /tmp
works too.

cgroups: the sandbox gets its own subtree of the host's cgroup2 hierarchy,
`<cgroup2 mount>/portguard-sandbox-<id>`, which is the root of its cgroup namespace and
is mounted as /sys/fs/cgroup inside. With `cgroup_layout="unified"` (default) the
sandbox's systemd runs pure cgroup v2, as on a stock Debian 12 host; with "hybrid" it sees
a name=systemd v1 hierarchy at /sys/fs/cgroup/systemd and cgroup2 at
/sys/fs/cgroup/unified (needs a name=systemd hierarchy on the host). Everything run
inside (`run`, `spawn`, `portguard`) enters the cgroup namespace (`nsenter -C`) and joins
the sandbox's root cgroup, so /proc/PID/cgroup reads as on a real host (`0::/` for a
stray, `0::/system.slice/system-web.slice/web@a.service` for a template instance,
`0::/system.slice/x.service` for a plain unit). The subtree is removed at `stop()`.
A socket's sock_diag INET_DIAG_CGROUP_ID is the inode of the creating process's cgroup2
directory: /sys/fs/cgroup<ControlGroup> inside, <cgroup_root><ControlGroup> on the host.

API (all paths are as seen inside the sandbox; pids are inside pids unless named host_):

    Sandbox.unavailable_reason() -> str | None        # static, cached: why it cannot run
    Sandbox(*, boot_timeout=20.0, cgroup_layout="unified", boot_script=BOOT_SCRIPT,
            stage_files=None)                 # another PID 1 script (e.g. another root),
                                              # and files it reads from its cwd, by name
    .start() -> Sandbox                               # boot + wait `running`; also __enter__
    .stop() -> None                                   # SIGKILL systemd, reap, clean; idempotent
    .id: str; .pid: int (host pid of the sandbox's systemd); .cgroup_root: str (host path)
    .run(argv, *, input=None, timeout=30.0, check=False, env=None) -> CompletedProcess[str]
    .systemctl(*args, check=False, timeout=30.0) -> CompletedProcess[str]
    .portguard(*args, input=None, timeout=60.0, check=False, env=None) -> CompletedProcess[str]
    .python(code, *args, timeout=30.0, check=False, env=None) -> CompletedProcess[str]
    .journal(*matches, since_cursor=None) -> list[dict[str, Any]]   # journalctl -o json;
        # matches as journalctl takes them: "SYSLOG_IDENTIFIER=portguard", or "-u", UNIT
    .cursor() -> str | None                           # of the newest record, for since_cursor
    .wait_journal(predicate, *matches, timeout=10.0, since_cursor=None) -> dict[str, Any]
        # journald takes a moment: polls until a record satisfies predicate
    .write_unit(name, text, *, reload=True) -> None
    .write_file(path, text, mode=0o644) -> None       # only under the private mounts
    .read_file(path) -> str
    .spawn(argv, *, env=None, log=None, wait_exec=True) -> int   # outside any unit:
        # root cgroup "/", parent PID 1, own session; GetUnitByPID says NoUnitForPID
    .host_pid(inner_pid) -> int
    .kill(pid, sig=signal.SIGKILL) -> None             # inside pid
    .pid_alive(pid) -> bool
    .wait_for(predicate, timeout=10.0, what="...", interval=0.05) -> T
    .unit_property(unit, prop) -> str                 # systemctl show -P
    .wait_unit_state(unit, *states, timeout=10.0) -> str   # ActiveState in states
    .wait_settled(*units, timeout=20.0) -> tuple[str, ...]  # no job, none (de)activating
    .cgroup_of(pid) -> str                            # the 0:: line of /proc/PID/cgroup
    .listening_pids(port, proto="tcp") -> set[int]    # what `ss -lnp` lists there now
    .wait_listening(port, proto="tcp", count=1) -> set[int]   # ... once it lists `count`

    run() gets a clean environment (BASE_ENV: PATH, LANG, HOME, no pager) plus `env`;
    portguard()/python() add PYTHONPATH=REPO.
    PYTHON, REPO, LISTENER, PRIVATE_MOUNTS, SEED_DIR: module constants;
    listener_argv(*args) -> list[str] and listener_exec(*args) -> str (an ExecStart=
    value) run tests/support/listener.py with PYTHON.

Quirks worth knowing: journalctl 252 returns nothing for --after-cursor combined with a
match the cursor's own record fails, so since_cursor is applied here, in Python. A .socket
unit's listening socket is created in the .socket unit's cgroup and held by PID 1.

Errors: SandboxError (boot failure, refused path, check=True failure); SandboxTimeout
(also a TimeoutError) for every bounded wait, with diagnostics in its message.

pytest fixtures (tests/integration/conftest.py): `sandbox` (module-scoped: tests share it
and use unique unit names, e.g. f"web-{uid}@.service", and stop what they start),
`fresh_sandbox` (one per test), `make_sandbox(**kwargs)` (factory, e.g.
cgroup_layout="hybrid"), `uid` (short unique string), and `case`/`fresh_case` (cases.Case,
for preflight and daemon tests). Every test under tests/integration
is marked `sandbox`; without root/unshare they skip, or fail when CI=true.

Process hygiene: the chain is setpriv(pdeathsig=KILL) -> unshare --kill-child=KILL ->
systemd, so the sandbox dies with the thread that created it (create it from a long-lived
thread, e.g. the main one); `stop()` kills the systemd pid only (the namespace's init:
everything inside dies with it) and is registered with atexit as a safety net. Names
carry the creating pid (`portguard-sandbox-<pid>-<random>`: staging dir under $TMPDIR,
cgroups); what a SIGKILLed test run left behind is removed by the next start().
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from support.sandbox_base import (
    BASE_ENV,
    BOOT_SCRIPT,
    LISTENER,
    PRIVATE_MOUNTS,
    PYTHON,
    REPO,
    SEED_DIR,
    SYSTEMD,
    SandboxError,
    SandboxTimeout,
    listener_argv,
    listener_exec,
    write_stage,
)
from support.sandbox_host import (
    _cgroup2_mounts,
    _cgroup_hierarchies,
    _remove_stale,
    _rmtree_cgroup,
    _under,
    unavailable_reason,
)
from support.sandbox_inside import SandboxInside
from support.sandbox_run import _cursor_position

__all__ = [
    "BASE_ENV", "LISTENER", "PRIVATE_MOUNTS", "PYTHON", "REPO", "SEED_DIR", "Sandbox",
    "SandboxError", "SandboxTimeout", "_cgroup_hierarchies", "_cursor_position",
    "listener_argv", "listener_exec",
]


class Sandbox(SandboxInside):
    """systemd 252 as PID 1 of fresh namespaces; see the module docstring."""

    def __init__(self, *, boot_timeout: float = 20.0,
                 cgroup_layout: Literal["unified", "hybrid"] = "unified",
                 boot_script: str = BOOT_SCRIPT,
                 stage_files: Mapping[str, str] | None = None) -> None:
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.boot_timeout = boot_timeout
        self.cgroup_layout = cgroup_layout
        self.pid = 0  # host pid of the sandbox's systemd
        self.cgroup_root = ""  # host path of its cgroup2 subtree
        self._cgroup_dirs: list[str] = []
        self._join = ""  # sh that moves $$ into the sandbox's root cgroup(s), from the host
        self._stage: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidns = 0
        self._stopped = False
        self._spawned = 0
        self.boot_seconds = 0.0
        # PID 1's script: run by bash with cwd the staging dir, args: layout, then the
        # directories to carry in; it must end by exec'ing /usr/bin/systemd (BOOT_SCRIPT).
        self.boot_script = boot_script
        self.stage_files = dict(stage_files or {})  # more files in the staging dir

    # -- availability ---------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a sandbox cannot run on this machine, or None when it can (cached)."""
        return unavailable_reason()

    # -- life cycle -----------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Sandbox:
        if self._proc is not None:
            raise SandboxError("already started")
        reason = self.unavailable_reason()
        if reason:
            raise SandboxError(f"sandbox unavailable: {reason}")
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            self._boot()
            self._wait_running()
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _make_cgroups(self) -> None:
        """A child of our own cgroup, per hierarchy, to be the sandbox's cgroupns root.

        unified: the cgroup2 hierarchy only (systemd there touches nothing else).
        hybrid: every hierarchy, since that systemd mounts the v1 controllers too.
        """
        hierarchies = _cgroup_hierarchies()
        if self.cgroup_layout == "hybrid":
            if not any(m.endswith("/systemd") for m, _ in hierarchies):
                raise SandboxError("hybrid layout needs a name=systemd hierarchy on the host")
        else:
            hierarchies = hierarchies[:1]
        if not hierarchies or hierarchies[0][0] not in _cgroup2_mounts():
            raise SandboxError("no cgroup2 hierarchy mounted")
        for mount, own in hierarchies:
            path = os.path.join(mount + own.rstrip("/"), f"portguard-sandbox-{self.id}")
            os.mkdir(path)
            self._cgroup_dirs.append(path)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset starts empty
                if os.path.exists(os.path.join(path, knob)):
                    parent = Path(os.path.dirname(path), knob).read_text()
                    Path(path, knob).write_text(parent)
        self.cgroup_root = self._cgroup_dirs[0]
        self._join = " ".join(f"echo $$ > {shlex.quote(d)}/cgroup.procs;"
                              for d in self._cgroup_dirs)

    def _boot(self) -> None:
        _remove_stale()
        self._stage = stage = write_stage(self.id, self.boot_script, self.stage_files)
        self._make_cgroups()
        carry: list[str] = []
        for path in sorted({str(REPO), sys.prefix, os.path.dirname(PYTHON)}):
            hidden = any(_under(path, m) for m in PRIVATE_MOUNTS)
            if hidden and not any(_under(path, c) for c in carry):
                carry.append(path)
        unshare = ["setpriv", "--pdeathsig", "KILL", "--",
                   "unshare", "--pid", "--fork", "--kill-child=KILL", "--mount", "--mount-proc",
                   "--net", "--uts", "--ipc", "--cgroup", "--propagation", "private",
                   "--", "/bin/bash", "boot.sh", self.cgroup_layout, *carry]
        argv = ["/bin/sh", "-c", f'{self._join} exec "$@"', "portguard-sandbox", *unshare]
        with open(os.path.join(stage, "boot.log"), "wb") as log:
            self._proc = subprocess.Popen(argv, cwd=stage, env=BASE_ENV, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)
        # unshare's one child is the namespace's init: bash (boot.sh), then systemd.
        outer = self._proc.pid
        children = f"/proc/{outer}/task/{outer}/children"
        systemd = os.path.realpath(SYSTEMD)

        def init_is_systemd() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                raise SandboxError(f"sandbox exited during boot:\n{self._diagnostics()}")
            with contextlib.suppress(OSError, ValueError):
                if not self.pid:
                    kids = Path(children).read_text().split()
                    if Path(f"/proc/{outer}/exe").resolve().name == "unshare" and kids:
                        self.pid = int(kids[0])
                if self.pid:
                    return os.path.realpath(f"/proc/{self.pid}/exe") == systemd
            return False

        self.wait_for(init_is_systemd, self.boot_timeout, "systemd to be exec'd in the sandbox",
                      interval=0.005)
        self._pidns = os.stat(f"/proc/{self.pid}/ns/pid").st_ino

    def _wait_running(self) -> None:
        state = ""

        def running() -> bool:
            nonlocal state
            if self._proc is None or self._proc.poll() is not None:
                raise SandboxError(f"sandbox exited during boot:\n{self._diagnostics()}")
            state = self.systemctl("is-system-running", timeout=5).stdout.strip()
            if state == "degraded":
                failed = self.systemctl("list-units", "--failed", "--plain", "--no-legend")
                raise SandboxError(f"sandbox booted degraded; failed units:\n{failed.stdout}"
                                   f"{self._diagnostics()}")
            return state == "running"

        try:
            self.wait_for(running, self.boot_timeout, "systemctl is-system-running = running",
                          interval=0.02)
        except SandboxTimeout as exc:
            raise SandboxTimeout(f"{exc} (last: {state!r})\n{self._diagnostics()}") from None

    def _diagnostics(self) -> str:
        parts = []
        if self._stage:
            for name in ("boot.log", "console"):
                with contextlib.suppress(OSError):
                    text = Path(self._stage, name).read_text(errors="replace").strip()
                    if text:
                        parts.append(f"--- {name} ---\n{text[-4000:]}")
        if self.pid and self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(Exception):
                out = self.run(["journalctl", "--no-pager", "-n", "60", "-o", "short-monotonic"],
                               timeout=5)
                parts.append(f"--- journal ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts) or "(no diagnostics)"

    def stop(self) -> None:
        """Kill the sandbox's systemd (and with it everything inside), reap, clean up."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                if proc.poll() is None:
                    if self.pid:  # the namespace's init: the whole sandbox goes with it
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.pid, signal.SIGKILL)
                    else:  # still booting: our own child (unshare --kill-child) goes
                        proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:  # unshare stuck: it is ours, by pid
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            for path in reversed(self._cgroup_dirs):
                with contextlib.suppress(OSError):
                    _rmtree_cgroup(path)
            if self._stage:
                shutil.rmtree(self._stage, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
