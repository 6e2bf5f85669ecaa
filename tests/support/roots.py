"""Debian roots of their own (12 and 13) for tests that need real daemons, and a Sandbox
that boots one as `/`.

    path = root("trixie")            # built once by scripts/build-root, then cached
    with RootSandbox("trixie") as sb:  # systemd 257 as PID 1, Python 3.13, ...
        sb.portguard("who", "8080")    # this checkout's code on the root's Python

The packages of every root are ONE list, tests/support/root-packages (docs/testing.md
says how to add one); scripts/build-root builds a root from it with mmdebstrap from
Debian's archive. The cache (PORTGUARD_ROOTS, default /var/cache/portguard-roots) holds
`SUITE-KEY/`, KEY a hash of the suite's packages and the build script: change either and
the next run builds that root anew (and removes the suite's older roots). Builds are
serialised by a lock file, so concurrent runs build a root once.

Booting: the cached root is the read-only lower layer of an overlay whose upper layer is
a tmpfs in the sandbox's own mount namespace (nothing a test does reaches the cache or
the host), then the sandbox's usual private mounts, the checkout bind-mounted read-only
at its own path, and pivot_root. The checkout's venv is shadowed inside by one whose
`bin/python` is the root's /usr/bin/python3 with Debian's python3-pystemd, -psutil,
-yaml and -sdnotify and the checkout on its path (as the editable install has it):
every `portguard`, `python` and listener a test runs inside runs on the root's Python,
so the whole Sandbox API (and the field harness on it) works as is.
systemd 257 (13) needs the unified cgroup v2 tree: the sandbox mounts cgroup2 in its own
cgroup namespace, as it does for 12.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from support.debroot import PIVOT
from support.sandbox import BASE_ENV, PYTHON, REPO, Sandbox, SandboxError

SUITES = {"bookworm": "12", "trixie": "13"}  # suite -> Debian version: both in make test
PACKAGES = REPO / "tests/support/root-packages"
BUILD = REPO / "scripts/build-root"
CACHE = Path(os.environ.get("PORTGUARD_ROOTS", "/var/cache/portguard-roots"))
BUILD_TIMEOUT = 1200.0

# PID 1 of the sandbox's namespaces (cwd: its staging dir), in place of sandbox.py's
# BOOT_SCRIPT: the overlay root, the same private mounts, then pivot_root.
ROOT_BOOT_SCRIPT = r"""
set -eu
lower=$(cat lower); repo=$(cat repo); venv=$(cat venv)
mkdir -p layers; mount -t tmpfs -o mode=0700 root-layers layers
mkdir layers/upper layers/work layers/merged
R=$PWD/layers/merged
mount -t overlay portguard-root -o "lowerdir=$lower,upperdir=layers/upper,workdir=layers/work" "$R"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
for d in run tmp var/tmp var/log var/lib/systemd var/cache dev/shm \
         etc/systemd/system etc/portguard; do
    mkdir -p "$R/$d"
    mount -t tmpfs -o mode=0755,nosuid,nodev "sandbox-$(basename "$d")" "$R/$d"
done
chmod 1777 "$R/tmp" "$R/var/tmp" "$R/dev/shm"
mkdir -p "$R$repo"; mount --bind "$repo" "$R$repo"; mount -o remount,bind,ro "$R$repo"
if [ -n "$venv" ]; then   # the checkout's venv, inside: the root's own Python
    mount -t tmpfs -o mode=0755 root-venv "$R$venv"
    py=$(readlink "$R/usr/bin/python3")   # python3.13
    mkdir -p "$R$venv/bin" "$R$venv/lib/$py/site-packages"
    ln -s /usr/bin/python3 "$R$venv/bin/python"
    printf 'home = /usr/bin\ninclude-system-site-packages = true\n' >"$R$venv/pyvenv.cfg"
    echo "$repo" >"$R$venv/lib/$py/site-packages/portguard-checkout.pth"
fi
mkdir -p "$R/run/systemd/system" "$R/run/portguard-sandbox/spawn" "$R/etc/systemd/journald.conf.d"
cp "$R/lib/systemd/system/dbus.socket" "$R/lib/systemd/system/dbus.service" units/
cp -a units "$R/run/portguard-sandbox/units"
cp journald.conf "$R/etc/systemd/journald.conf.d/50-portguard-sandbox.conf"
cp hostname "$R/etc/hostname"
""" + PIVOT + r"""exec env -i container=portguard-test PATH="$PATH" LANG=C.UTF-8 \
    SYSTEMD_UNIT_PATH=/etc/systemd/system:/run/portguard-sandbox/units \
    /lib/systemd/systemd --unit=portguard-sandbox.target
"""


class RootUnavailable(SandboxError):
    """The root cannot be built here (no mmdebstrap, not root, the archive unreachable)."""


def key(suite: str) -> str:
    """The cache key of a suite's root: its packages (as the build script reads the list)
    and the build script."""
    listed = subprocess.run([str(BUILD), "--list", suite], capture_output=True, text=True,
                            check=True).stdout
    digest = hashlib.sha256(f"{suite}\n{listed}".encode())
    digest.update(BUILD.read_bytes())
    return digest.hexdigest()[:16]


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "building a Debian root needs root"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (scripts/bootstrap installs it)"
    return Sandbox.unavailable_reason()


def root(suite: str) -> Path:
    """The cached root of `suite`, built now (under a lock) when missing or stale."""
    if suite not in SUITES:
        raise ValueError(f"no root for {suite!r}: {sorted(SUITES)}")
    path = CACHE / f"{suite}-{key(suite)}"
    if path.is_dir():
        return path
    reason = unavailable_reason()
    if reason:
        raise RootUnavailable(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_dir():  # another run built it while we waited
            return path
        started = time.monotonic()
        done = subprocess.run([str(BUILD), suite, str(path)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False,
                              env={**BASE_ENV, **{k: v for k, v in os.environ.items()
                                                  if k.endswith("_proxy")
                                                  or k.startswith("PORTGUARD_ROOT")}})
        if done.returncode != 0:
            raise RootUnavailable(f"scripts/build-root {suite} failed:\n"
                                  f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        print(f"build-root {suite}: {time.monotonic() - started:.1f} s")
        for old in CACHE.glob(f"{suite}-*"):  # a previous list's root
            if old != path and old.is_dir() and not old.name.endswith(".lock"):
                shutil.rmtree(old, ignore_errors=True)
    return path


def _venv() -> str:
    """The checkout's venv directory when PYTHON is one (shadowed inside), else ""."""
    venv = Path(PYTHON).parent.parent
    return str(venv) if (venv / "pyvenv.cfg").exists() else ""


class RootSandbox(Sandbox):
    """A Sandbox whose `/` is an overlay over the cached Debian root of `suite`."""

    def __init__(self, suite: str, **kwargs: Any) -> None:
        self.suite = suite
        self.version = SUITES[suite]
        self.root = root(suite)
        super().__init__(boot_script=ROOT_BOOT_SCRIPT, stage_files={
            "lower": str(self.root), "repo": str(REPO), "venv": _venv()}, **kwargs)

    def image_path(self, path: str) -> str:
        return f"{self.root}{path}"
