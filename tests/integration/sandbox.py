"""A real systemd (PID 1 of private namespaces) for integration tests and bench scripts.

No pytest in here: bench/ scripts use it too. The team note systemd-sandbox.md says why a
systemd boots this way; the short version:

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
    .cgroup_of(pid) -> str                            # the 0:: line of /proc/PID/cgroup

    run() gets a clean environment (BASE_ENV: PATH, LANG, HOME, no pager) plus `env`;
    portguard()/python() add PYTHONPATH=REPO.
    PYTHON, REPO, LISTENER, PRIVATE_MOUNTS, SEED_DIR: module constants;
    listener_argv(*args) -> list[str] and listener_exec(*args) -> str (an ExecStart=
    value) run tests/integration/listener.py with PYTHON.

Quirks worth knowing: journalctl 252 returns nothing for --after-cursor combined with a
match the cursor's own record fails, so since_cursor is applied here, in Python. A .socket
unit's listening socket is created in the .socket unit's cgroup and held by PID 1.

Errors: SandboxError (boot failure, refused path, check=True failure); SandboxTimeout
(also a TimeoutError) for every bounded wait, with diagnostics in its message.

pytest fixtures (tests/integration/conftest.py): `sandbox` (module-scoped: tests share it
and use unique unit names, e.g. f"web-{uid}@.service", and stop what they start),
`fresh_sandbox` (one per test), `make_sandbox(**kwargs)` (factory, e.g.
cgroup_layout="hybrid"), `uid` (short unique string). Every test under tests/integration
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
import errno
import functools
import json
import os
import posixpath
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() \
    else sys.executable
LISTENER = str(REPO / "tests/integration/listener.py")

SYSTEMD = "/usr/bin/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
DBUS_DAEMON = "/usr/bin/dbus-daemon"
TOOLS = ("unshare", "nsenter", "setpriv", "ip", "systemctl", "journalctl", "ss", "mount")

# Mounted fresh (tmpfs) inside; the only places write_file() writes to.
PRIVATE_MOUNTS = ("/run", "/tmp", "/var/tmp", "/var/log", "/var/lib/systemd", "/var/cache",
                  "/dev/shm", "/etc/systemd/system", "/etc/portguard")
SEED_DIR = "/run/portguard-sandbox/units"  # inside; filled from the host staging dir
TARGET = "portguard-sandbox.target"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {"PATH": PATH_ENV, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
            "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LESS": ""}

TARGET_UNIT = """\
[Unit]
Description=portguard test sandbox
Wants=dbus.socket systemd-journald.socket systemd-journald.service
"""
JOURNALD_SOCKET = """\
[Unit]
Description=Journal Socket (sandbox)
DefaultDependencies=no

[Socket]
ListenStream=/run/systemd/journal/stdout
ListenDatagram=/run/systemd/journal/socket
SocketMode=0666
PassCredentials=yes
PassSecurity=yes
ReceiveBuffer=8M
Service=systemd-journald.service
"""
JOURNALD_SERVICE = f"""\
[Unit]
Description=Journal Service (sandbox)
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket

[Service]
Type=notify
Sockets=systemd-journald.socket
ExecStart={JOURNALD}
Restart=always
RestartSec=0
RuntimeDirectory=systemd/journal
RuntimeDirectoryPreserve=yes
StandardOutput=null
FileDescriptorStoreMax=4224
"""
JOURNALD_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
RateLimitIntervalSec=0
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""
EMPTY_TARGETS = ("sysinit", "basic", "shutdown", "sockets", "local-fs", "local-fs-pre", "swap",
                 "umount", "timers", "paths", "slices", "network", "network-online")

# Runs as PID 1 of the new namespaces (cwd: the host staging dir, which stays reachable
# through the cwd after /tmp is covered). Arguments: cgroup layout, then directories to
# carry in at their own path (the repo and the venv when they sit under a private mount).
BOOT_SCRIPT = r"""
set -eu
layout=$1; shift
n=10
for d in "$@"; do
    n=$((n+1)); eval "exec $n<\"\$d\""        # keep a handle before tmpfs covers it
done
for d in /run /tmp /var/tmp /var/log /var/lib/systemd /var/cache /dev/shm; do
    mount -t tmpfs -o mode=0755,nosuid,nodev "sandbox-$(basename "$d")" "$d"
done
chmod 1777 /tmp /var/tmp /dev/shm
mkdir -p /run/systemd/system /run/portguard-sandbox/etc-upper /run/portguard-sandbox/etc-work \
    /run/portguard-sandbox/spawn
ov=/run/portguard-sandbox
mount -t overlay sandbox-etc -o lowerdir=/etc,upperdir=$ov/etc-upper,workdir=$ov/etc-work /etc
mkdir -p /etc/portguard /etc/systemd/journald.conf.d
mount -t tmpfs -o mode=0755,nosuid,nodev sandbox-etc-systemd-system /etc/systemd/system
mount -t tmpfs -o mode=0755,nosuid,nodev sandbox-etc-portguard /etc/portguard
cp -a units /run/portguard-sandbox/units
cp journald.conf /etc/systemd/journald.conf.d/50-portguard-sandbox.conf
n=10
for d in "$@"; do
    n=$((n+1)); mkdir -p "$d"; mount --no-canonicalize --bind "/proc/self/fd/$n" "$d"
    eval "exec $n<&-"
done
# not canonicalized: that would resolve the (now covered) staging path again
touch console; mount --no-canonicalize --bind console /dev/console
mount --bind /proc/sys /proc/sys
mount --bind /proc/sys/net /proc/sys/net
mount -o remount,bind,ro /proc/sys
umount -R /sys/fs/cgroup 2>/dev/null || true   # the host's view; ours goes on a clean dir
if [ "$layout" = hybrid ]; then
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec sandbox-cgroup /sys/fs/cgroup
    mkdir /sys/fs/cgroup/unified /sys/fs/cgroup/systemd
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
    mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
else
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
fi
ip link set lo up
cp hostname /etc/hostname   # the overlay's: systemd sets it at boot (UTS is private)
cd /
exec env -i container=portguard-test PATH="$PATH" LANG=C.UTF-8 \
    SYSTEMD_UNIT_PATH=/etc/systemd/system:/run/portguard-sandbox/units \
    /usr/bin/systemd --unit=portguard-sandbox.target
"""


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked (boot failed, path refused, ...)."""


class SandboxTimeout(SandboxError, TimeoutError):
    """A bounded wait ran out."""


def listener_argv(*args: str) -> list[str]:
    """argv that runs tests/integration/listener.py with the project's Python."""
    return [PYTHON, LISTENER, *args]


def listener_exec(*args: str) -> str:
    """The same, as an `ExecStart=` value."""
    return shlex.join(listener_argv(*args))


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of each mount of this process."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 3:
            point = fields[4].replace("\\040", " ")
            out.append((point, rfields[0], rfields[2]))
    return out


def _cgroup_hierarchies() -> list[tuple[str, str]]:
    """(mount point, this process's cgroup there) per mounted cgroup hierarchy; the
    cgroup2 one first, if mounted."""
    own: dict[frozenset[str], str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        own[frozenset(ctrls.split(",")) if ctrls else frozenset()] = path
    found: dict[frozenset[str], str] = {}
    for point, fstype, opts in _mountinfo():
        key: frozenset[str]
        if fstype == "cgroup2":
            key = frozenset()
        elif fstype == "cgroup":
            key = frozenset(o for o in opts.split(",")
                            if o not in ("rw", "ro") and not o.startswith("release_agent=")
                            and o not in ("noprefix", "clone_children", "xattr", "cpuset_v2_mode"))
        else:
            continue
        if key in own and key not in found:
            found[key] = point
    return [(found[k], own[k]) for k in sorted(found, key=len)]


def _cgroup2_mounts() -> set[str]:
    return {point for point, fstype, _ in _mountinfo() if fstype == "cgroup2"}


def _cursor_position(cursor: str) -> tuple[int, int]:
    """(realtime usec, seqnum) of a journal cursor "s=..;i=SEQ;b=..;m=..;t=REALTIME;x=.."."""
    parts = dict(p.split("=", 1) for p in cursor.split(";") if "=" in p)
    return int(parts.get("t", "0"), 16), int(parts.get("i", "0"), 16)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _rmtree_cgroup(path: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup subtree bottom-up (cgroup dirs only hold kernel files)."""
    deadline = time.monotonic() + timeout
    while os.path.isdir(path):
        try:
            for dirpath, _, _ in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
                os.rmdir(dirpath)
        except FileNotFoundError:
            continue
        except OSError as exc:  # EBUSY while the killed tasks are being released
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _pid_gone(pid: str) -> bool:
    return pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def _remove_stale() -> None:
    """Staging dirs and (empty) cgroups left by a test process that was SIGKILLed: named
    portguard-sandbox-<pid>-..., removed once that pid is gone."""
    for mount, own in _cgroup_hierarchies():
        parent = mount + own.rstrip("/")
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                name = entry.name
                if name.startswith("portguard-sandbox-") and _pid_gone(name.split("-")[2]):
                    with contextlib.suppress(OSError):  # EBUSY: still populated, keep it
                        _rmtree_cgroup(entry.path, timeout=0)
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            name = entry.name
            if name.startswith("portguard-sandbox-") and _pid_gone(name.split("-")[2]) \
                    and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


class Sandbox:
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
    @functools.cache
    def unavailable_reason() -> str | None:
        """Why a sandbox cannot run on this machine, or None when it can."""
        if sys.platform != "linux":
            return "needs Linux"
        if os.geteuid() != 0:
            return "needs root (unshare, mount, nsenter)"
        missing = [t for t in TOOLS if shutil.which(t, path=PATH_ENV) is None]
        missing += [p for p in (SYSTEMD, JOURNALD, DBUS_DAEMON) if not os.access(p, os.X_OK)]
        if missing:
            return f"missing: {', '.join(missing)}"
        hierarchies = _cgroup_hierarchies()
        if not hierarchies or hierarchies[0][0] not in _cgroup2_mounts():
            return "no cgroup2 hierarchy mounted"
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "no overlayfs in this kernel"
        try:
            probe = subprocess.run(
                ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net", "--uts",
                 "--ipc", "--cgroup", "--propagation", "private", "--", "true"],
                check=False, capture_output=True, text=True, timeout=20, env=BASE_ENV)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare failed: {exc}"
        if probe.returncode != 0:
            return f"unshare refused: {probe.stderr.strip() or probe.returncode}"
        return None

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

    def _write_stage(self) -> str:
        stage = tempfile.mkdtemp(prefix=f"portguard-sandbox-{self.id}-")
        units = Path(stage, "units")
        units.mkdir()
        (units / TARGET).write_text(TARGET_UNIT)
        for name in ("dbus.socket", "dbus.service"):
            shutil.copy(f"/lib/systemd/system/{name}", units / name)
        (units / "systemd-journald.socket").write_text(JOURNALD_SOCKET)
        (units / "systemd-journald.service").write_text(JOURNALD_SERVICE)
        for target in EMPTY_TARGETS:
            (units / f"{target}.target").write_text("[Unit]\n")
        Path(stage, "journald.conf").write_text(JOURNALD_CONF)
        Path(stage, "hostname").write_text(f"sandbox-{self.id.split('-')[1][:6]}\n")
        Path(stage, "boot.sh").write_text(self.boot_script)
        for name, text in self.stage_files.items():
            Path(stage, name).write_text(text)
        return stage

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
        self._stage = stage = self._write_stage()
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

    # -- files and units ------------------------------------------------------------

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside, through /proc/PID/root, creating parent directories.

        Only paths on the private mounts (PRIVATE_MOUNTS) are accepted, and no component
        may be a symlink (an absolute one would resolve on the host).
        """
        norm = posixpath.normpath(path)
        if not norm.startswith("/") or norm.startswith("//"):
            raise SandboxError(f"write_file: not an absolute path: {path!r}")
        mount = next((m for m in PRIVATE_MOUNTS if norm.startswith(m + "/")), None)
        if mount is None or norm.startswith("/run/portguard-sandbox/etc-"):
            raise SandboxError(f"write_file: {path!r} is not on a private mount "
                               f"({', '.join(PRIVATE_MOUNTS)})")
        root = os.open(f"/proc/{self.pid}/root", os.O_PATH | os.O_DIRECTORY)
        fds = [root]
        try:
            parts = norm.strip("/").split("/")
            mount_depth = mount.count("/")
            mount_dev = None
            for i, part in enumerate(parts[:-1], start=1):
                try:
                    fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=fds[-1])
                except FileNotFoundError:
                    if i <= mount_depth:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fds[-1])
                    fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=fds[-1])
                except OSError as exc:
                    raise SandboxError(f"write_file: {path!r}: {part!r}: {exc.strerror} "
                                       "(symlinks are refused)") from None
                fds.append(fd)
                if i == mount_depth:
                    mount_dev = os.fstat(fd).st_dev
            if os.fstat(fds[-1]).st_dev != mount_dev:
                raise SandboxError(f"write_file: {path!r} is not on the {mount} tmpfs")
            try:
                out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                              | os.O_CLOEXEC, mode, dir_fd=fds[-1])
            except OSError as exc:
                raise SandboxError(f"write_file: {path!r}: {exc.strerror}") from None
            with os.fdopen(out, "w") as f:
                os.fchmod(f.fileno(), mode)
                f.write(text)
        finally:
            for fd in fds:
                os.close(fd)

    def read_file(self, path: str) -> str:
        """A file's text as the sandbox sees it (symlinks resolved inside)."""
        return self.run(["cat", "--", path], check=True).stdout

    def write_unit(self, name: str, text: str, *, reload: bool = True) -> None:
        """Write /etc/systemd/system/NAME (private tmpfs) and daemon-reload."""
        if "/" in name or not name:
            raise SandboxError(f"bad unit name {name!r}")
        self.write_file(f"/etc/systemd/system/{name}", text)
        if reload:
            self.systemctl("daemon-reload", check=True)

    # -- processes ------------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              log: str | None = None, wait_exec: bool = True) -> int:
        """Start argv inside, outside any unit (the sandbox's root cgroup, -.slice), and
        return its pid as seen inside.

        Like `cmd &` from a script that then exits: its own session, reparented to the
        sandbox's PID 1, stdin /dev/null, output to `log` (default
        /run/portguard-sandbox/spawn/N.log). With wait_exec, returns once its
        /proc/PID/cmdline is argv (the exec has happened).
        """
        self._spawned += 1
        log = log or f"/run/portguard-sandbox/spawn/{self._spawned}.log"
        script = 'log=$1; shift; setsid "$@" </dev/null >>"$log" 2>&1 & echo $!'
        out = self.run(["/bin/sh", "-c", script, "spawn", log, *argv], env=env, check=True)
        try:
            pid = int(out.stdout.split()[-1])
        except (ValueError, IndexError):
            raise SandboxError(f"spawn: no pid from {out.stdout!r} {out.stderr!r}") from None
        if wait_exec:
            want = list(argv)

            def execed() -> bool:
                try:
                    raw = Path(f"/proc/{self.host_pid(pid)}/cmdline").read_bytes()
                except (OSError, SandboxError):
                    logged = self.run(["cat", log]).stdout
                    raise SandboxError(f"spawn: {shlex.join(argv)} exited: {logged}") from None
                return raw.split(b"\0")[:-1] == [a.encode() for a in want]

            self.wait_for(execed, 10, f"{shlex.join(argv)} to exec", interval=0.005)
        return pid

    def host_pid(self, inner_pid: int) -> int:
        """The host pid of the process that is `inner_pid` inside the sandbox."""
        if inner_pid == 1:
            return self.pid
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry.name}/ns/pid").st_ino != self._pidns:
                    continue
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == str(inner_pid):
                    return int(entry.name)
        raise SandboxError(f"no process {inner_pid} in the sandbox")

    def pid_alive(self, pid: int) -> bool:
        """Is `pid` (inside) running (not a zombie)?"""
        try:
            stat = Path(f"/proc/{self.host_pid(pid)}/stat").read_text()
        except (OSError, SandboxError):
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal a process inside by its inside pid (from inside: the pid cannot be reused
        by a host process)."""
        self.run(["kill", f"-{int(sig)}", str(pid)], check=True)

    def cgroup_of(self, pid: int) -> str:
        """The unified-hierarchy path of an inside pid, as the sandbox sees it."""
        text = self.run(["cat", f"/proc/{pid}/cgroup"], check=True).stdout
        for line in text.splitlines():
            if line.startswith("0::"):
                return line[3:]
        raise SandboxError(f"no cgroup2 line for {pid}: {text!r}")

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
