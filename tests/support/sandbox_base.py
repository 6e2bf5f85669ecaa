"""What a sandbox is made of: paths, the clean environment, the seed units and PID 1's
boot script, and the errors. sandbox.py says how it all fits together."""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() \
    else sys.executable
LISTENER = str(REPO / "tests/support/listener.py")

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
ListenDatagram=/run/systemd/journal/dev-log
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
# /var/lib too (portguard's state, /var/lib/portguard, must never reach the host's), with
# the private /var/lib/systemd on top again
mkdir -p $ov/varlib-upper $ov/varlib-work
mount -t overlay sandbox-varlib \
    -o lowerdir=/var/lib,upperdir=$ov/varlib-upper,workdir=$ov/varlib-work /var/lib
mount -t tmpfs -o mode=0755,nosuid,nodev sandbox-systemd /var/lib/systemd
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
    """argv that runs tests/support/listener.py with the project's Python."""
    return [PYTHON, LISTENER, *args]


def listener_exec(*args: str) -> str:
    """The same, as an `ExecStart=` value."""
    return shlex.join(listener_argv(*args))


def write_stage(sandbox_id: str, boot_script: str, stage_files: Mapping[str, str]) -> str:
    """A host staging dir for PID 1 (its cwd): the seed units, journald.conf, hostname,
    boot.sh and `stage_files`. Named after the creating pid, so a later run can tell
    whether it is stale."""
    stage = tempfile.mkdtemp(prefix=f"portguard-sandbox-{sandbox_id}-")
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
    Path(stage, "hostname").write_text(f"sandbox-{sandbox_id.split('-')[1][:6]}\n")
    Path(stage, "boot.sh").write_text(boot_script)
    for name, text in stage_files.items():
        Path(stage, name).write_text(text)
    return stage
