"""The isolated Debian root test_deb.py installs the package into (its docstring tells
the story): the overlay root prepared on the host (PREPARE_SCRIPT), and `DebRoot`, a
Sandbox that boots systemd with that root as `/` (ROOT_BOOT_SCRIPT) and otherwise has the
whole Sandbox API. `build_deb()` builds the package, `booted_root(deb)` prepares and
boots a root with the .deb in PKG_DIR (not installed: test_deb.py installs it with dpkg,
test_fleet_ansible.py with the Ansible role)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.sandbox import BASE_ENV, REPO, Sandbox, SandboxError

PKG_DIR = "/var/cache/portguard-test"  # inside the root: the .deb under test


class PrepareFailed(SandboxError):
    """apt-get could not download the package's dependencies into the root."""

# The stock targets (seeded empty by the sandbox) whose .wants/ in the root's /lib and
# /etc would pull the host's units (udev, tmpfiles, timesyncd, getty, ...) into the boot.
WANTS_OF = ("sysinit", "basic", "sockets", "local-fs", "local-fs-pre", "swap", "timers",
            "paths", "slices", "network", "network-online", "multi-user", "getty",
            "graphical", "default", "cryptsetup", "remote-fs")

# Runs in a mount namespace of its own (the host's network): the overlay root, then
# apt-get --download-only of the package's dependencies into the root's archive cache.
PREPARE_SCRIPT = r"""
set -eu
L=$1; deb=$2
R=$L/merged
mount -t overlay portguard-debroot -o "lowerdir=/,upperdir=$L/upper,workdir=$L/work" "$R"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --rbind /sys "$R/sys"
mount -t tmpfs -o mode=0755 debroot-run "$R/run"
mount -t tmpfs -o mode=1777 debroot-tmp "$R/tmp"
mount -t tmpfs -o mode=0755 debroot-usr-local "$R/usr/local"
# A machine that never had portguard; invoke-rc.d/deb-systemd-invoke allowed to start
# services (a container image's policy-rc.d forbids it); no man-db index rebuilds.
rm -rf "$R/etc/portguard"
rm -f "$R/usr/sbin/policy-rc.d" "$R/var/lib/man-db/auto-update"
if chroot "$R" dpkg-query -W -f='${Status}' portguard 2>/dev/null | grep -q installed; then
    chroot "$R" dpkg --purge portguard
fi
mkdir -p "$R/var/cache/portguard-test"
cp "$deb" "$R/var/cache/portguard-test/"
debname=/var/cache/portguard-test/${deb##*/}
download() {
    chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive ${http_proxy:+http_proxy=$http_proxy} \
        ${https_proxy:+https_proxy=$https_proxy} \
        apt-get install -y -q --download-only --no-install-recommends "$debname"
}
if ! download; then
    echo "--- apt-get update (the package lists may be stale), then again" >&2
    chroot "$R" apt-get update -q || true
    download
fi
"""

# The end of a boot script that makes "$R" the root: /dev/console, /proc/sys read-only
# but its net/, cgroup2 in the sandbox's cgroup namespace, lo up, then pivot_root.
PIVOT = r"""
touch console; mount --no-canonicalize --bind console "$R/dev/console"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro "$R/proc/sys"
umount -R "$R/sys/fs/cgroup" 2>/dev/null || true
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
ip link set lo up
mkdir "$R/run/portguard-oldroot"
cd "$R"
pivot_root . run/portguard-oldroot
umount -l /run/portguard-oldroot
rmdir /run/portguard-oldroot
cd /
"""

# PID 1 of the sandbox's namespaces (cwd: the sandbox's staging dir), in place of
# sandbox.py's BOOT_SCRIPT: the same mounts, but on the overlay root, then pivot_root.
ROOT_BOOT_SCRIPT = r"""
set -eu
layout=$1; shift
L=$(cat layers); repo=$(cat repo)
R=$L/merged
mount -t overlay portguard-debroot -o "lowerdir=/,upperdir=$L/upper,workdir=$L/work" "$R"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
for d in run tmp var/tmp dev/shm etc/systemd/system usr/local; do
    mount -t tmpfs -o mode=0755,nosuid,nodev "debroot-$(basename "$d")" "$R/$d"
done
chmod 1777 "$R/tmp" "$R/var/tmp" "$R/dev/shm"
case "$repo" in  # the checkout (and its venv) must not be what runs: hide it
    /run/*|/tmp/*|/var/tmp/*|/usr/local/*) ;;
    *) mount -t tmpfs -o mode=0755,ro debroot-repo "$R$repo" ;;
esac
mkdir -p "$R/run/systemd/system" "$R/run/portguard-sandbox/spawn" "$R/run/portguard-debroot/masks" \
    "$R/etc/systemd/journald.conf.d"
cp -a units "$R/run/portguard-sandbox/units"
cp journald.conf "$R/etc/systemd/journald.conf.d/50-portguard-sandbox.conf"
cp hostname "$R/etc/hostname"
for t in $(cat wants-of); do
    for w in "$R/lib/systemd/system/$t.target.wants/"* "$R/etc/systemd/system/$t.target.wants/"*; do
        n=${w##*/}
        [ -e "$w" ] || [ -L "$w" ] || continue
        [ -e "$R/run/portguard-sandbox/units/$n" ] && continue
        ln -sf /dev/null "$R/run/portguard-debroot/masks/$n"
    done
done
""" + PIVOT + r"""
units=/etc/systemd/system:/run/portguard-debroot/masks:/run/portguard-sandbox/units
exec env -i container=portguard-test PATH="$PATH" LANG=C.UTF-8 \
    SYSTEMD_UNIT_PATH=$units:/lib/systemd/system /usr/bin/systemd --unit=portguard-sandbox.target
"""


class DebRoot(Sandbox):
    """A Sandbox whose `/` is the overlay root in `layers` (upper/, work/, merged/)."""

    def __init__(self, layers: Path, **kwargs: Any) -> None:
        super().__init__(boot_script=ROOT_BOOT_SCRIPT, stage_files={
            "layers": str(layers), "repo": str(REPO), "wants-of": " ".join(WANTS_OF)},
            **kwargs)
        self.layers = layers
        self.install_log = ""  # dpkg -i and apt-get install -f, as they printed it

    def put(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file anywhere in the root (root-owned), as a root shell would."""
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && umask 022 && cat >"$1" '
                  '&& chmod "$2" "$1"', "put", path, f"{mode:o}"], input=text, check=True)

    def sh(self, script: str, check: bool = True, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], check=check, timeout=timeout,
                        env={"DEBIAN_FRONTEND": "noninteractive"})


def remove_stale() -> None:
    """Layer dirs of a test run that was killed (its pid is gone): nothing is mounted
    there on the host (the mounts lived in its namespaces, which died with it)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            parts = entry.name.split("-")
            if entry.name.startswith("portguard-debroot-") and len(parts) > 2 \
                    and parts[2].isdigit() and not os.path.exists(f"/proc/{parts[2]}"):
                rmtree_layers(Path(entry.path))


def rmtree_layers(path: Path) -> None:
    if os.path.ismount(path / "merged"):  # never: mounts are private; but never follow one
        raise SandboxError(f"{path}/merged is a mount point on the host; not removing")
    shutil.rmtree(path, ignore_errors=True)


def build_deb() -> Path:
    """dist/portguard_<version>_all.deb, built now unless up to date (scripts/build-deb)."""
    started = time.monotonic()
    done = subprocess.run([str(REPO / "scripts/build-deb")], capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        raise SandboxError(f"scripts/build-deb failed:\n{done.stdout}{done.stderr}")
    found = re.search(r"dist/(portguard_\S+_all\.deb)", done.stderr)
    assert found, done.stderr
    print(f"build-deb: {time.monotonic() - started:.1f} s: {done.stderr.strip()}")
    return REPO / "dist" / found.group(1)


@contextlib.contextmanager
def booted_root(deb: Path) -> Iterator[DebRoot]:
    """An isolated root with the package's dependencies in its apt cache and `deb` in
    PKG_DIR, booted; stopped and removed with everything in it afterwards. PrepareFailed
    when apt could not download the dependencies."""
    remove_stale()
    layers = Path(tempfile.mkdtemp(prefix=f"portguard-debroot-{os.getpid()}-"))
    sb: DebRoot | None = None
    try:
        for sub in ("upper", "work", "merged"):
            (layers / sub).mkdir()
        started = time.monotonic()
        prep = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/bash", "-c",
             PREPARE_SCRIPT, "prepare", str(layers), str(deb)],
            capture_output=True, text=True, timeout=600, check=False,
            env={**BASE_ENV, **{k: v for k, v in os.environ.items() if k.endswith("_proxy")}})
        if prep.returncode != 0:
            raise PrepareFailed(f"could not prepare the root (apt-get --download-only of the "
                                f"package's dependencies):\n{prep.stdout[-3000:]}"
                                f"{prep.stderr[-3000:]}")
        prepared = time.monotonic()
        sb = DebRoot(layers)
        sb.start()
        print(f"debroot: prepare {prepared - started:.1f} s, boot "
              f"{time.monotonic() - prepared:.1f} s")
        yield sb
    finally:
        if sb is not None:
            sb.stop()
        rmtree_layers(layers)
