"""The host's side of a sandbox: its mounts and cgroup hierarchies, whether a sandbox can
run here, and what a killed test run left behind."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.sandbox_base import (
    BASE_ENV,
    DBUS_DAEMON,
    JOURNALD,
    PATH_ENV,
    SYSTEMD,
    TOOLS,
)


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


@functools.cache
def unavailable_reason() -> str | None:
    """Why a sandbox cannot run on this machine, or None when it can (cached)."""
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

