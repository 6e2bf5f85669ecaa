"""The Debian package: built, installed into an isolated Debian root, run by systemd 252.

Issue 6, item 1. Once per module (so once per session: nothing else uses it):

1. `scripts/build-deb` builds dist/portguard_<version>_all.deb (it rebuilds only when the
   project's files changed; ~10 s when it does).
2. An isolated root: an overlayfs whose lower layer is this machine's `/` (Debian 12, the
   same systemd, dbus and python3) and whose upper layer is a fresh directory, mounted
   only in private mount namespaces, so nothing is ever written to the host's own root.
   In that root, with the host's network, apt downloads the package's dependencies from
   Debian's repositories (python3-pystemd 0.11, python3-psutil 5.9, python3-sdnotify
   0.3.1, ...) into its own archive cache: the booted root has no network.
3. systemd 252 boots as PID 1 of fresh namespaces with that root as `/` (pivot_root), the
   way tests/integration/sandbox.py boots one on the host's `/` (`DebRoot` below reuses
   its whole API and changes only the boot script; see ROOT_BOOT_SCRIPT).
4. Inside, with systemd running: `dpkg -i portguard.deb` (its dependencies are missing,
   so it stays unconfigured) and `apt-get install -f` (offline, from the cache), so the
   maintainer scripts run against a live systemd, as on a real host.

The root hides what is not Debian's: /usr/local (pip packages, .pth files) and this
repository are covered by empty tmpfs mounts, /etc/systemd/system (the host's enabled
units) starts empty, and the units the host's stock targets would pull in are masked,
so only the seed units (dbus, journald), the package's unit and the tests' units run.

Then the tests, in file order (they share the root; the last one removes the package).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_sandbox
from sandbox import BASE_ENV, REPO, Sandbox, SandboxError

# MESSAGE_IDs (README "Journal"), spelled out: a changed id fails.
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
SIGNAL = "b7876e4d57b34eef99981e9da9de1233"
DAEMON_STARTED = "50df78044c0e45c0a806b058db7cdbba"
DAEMON_RELOADED = "36f10409e50641afa9fcb493fa7f1bc9"

CI = os.environ.get("CI", "").lower() == "true"
PKG_DIR = "/var/cache/portguard-test"  # inside the root: the .deb under test
WEB_PORT = 8080  # the root has a network namespace of its own
WEBD = "/run/portguard-test/webd.py"
DSH_STATE = "/var/lib/systemd/deb-systemd-helper-enabled/portguard.service.dsh-also"
# Debian 12's versions: the package must work with exactly these.
DEBIAN_VERSIONS = {"python3-pystemd": "0.11.", "python3-sdnotify": "0.3.1",
                   "python3-psutil": "5.9.", "python3-yaml": "6.0"}
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
touch console; mount --no-canonicalize --bind console "$R/dev/console"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro "$R/proc/sys"
umount -R "$R/sys/fs/cgroup" 2>/dev/null || true
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
ip link set lo up
mkdir "$R/run/portguard-debroot/oldroot"
cd "$R"
pivot_root . run/portguard-debroot/oldroot
umount -l /run/portguard-debroot/oldroot
rmdir /run/portguard-debroot/oldroot
cd /
units=/etc/systemd/system:/run/portguard-debroot/masks:/run/portguard-sandbox/units
exec env -i container=portguard-test PATH="$PATH" LANG=C.UTF-8 \
    SYSTEMD_UNIT_PATH=$units:/lib/systemd/system /usr/bin/systemd --unit=portguard-sandbox.target
"""

WEBD_SOURCE = """\
import signal, socket, sys, time
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
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


# -- fixtures --------------------------------------------------------------------------------

def _fail_or_skip(message: str) -> None:
    if CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def deb() -> Path:
    """dist/portguard_<version>_all.deb, built now unless up to date."""
    require_sandbox()  # root, unshare, systemd: the same needs, checked first
    started = time.monotonic()
    done = subprocess.run([str(REPO / "scripts/build-deb")], capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-deb failed:\n{done.stdout}{done.stderr}", pytrace=False)
    found = re.search(r"dist/(portguard_\S+_all\.deb)", done.stderr)
    assert found, done.stderr
    path = REPO / "dist" / found.group(1)
    print(f"build-deb: {time.monotonic() - started:.1f} s: {done.stderr.strip()}")
    return path


def _remove_stale() -> None:
    """Layer dirs of a test run that was killed (its pid is gone): nothing is mounted
    there on the host (the mounts lived in its namespaces, which died with it)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            parts = entry.name.split("-")
            if entry.name.startswith("portguard-debroot-") and len(parts) > 2 \
                    and parts[2].isdigit() and not os.path.exists(f"/proc/{parts[2]}"):
                _rmtree_layers(Path(entry.path))


def _rmtree_layers(path: Path) -> None:
    if os.path.ismount(path / "merged"):  # never: mounts are private; but never follow one
        raise SandboxError(f"{path}/merged is a mount point on the host; not removing")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def debroot(deb: Path) -> Iterator[DebRoot]:
    """The isolated root with systemd running and the package installed (dpkg -i, then
    apt-get install -f); removed with everything in it afterwards."""
    _remove_stale()
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
            _fail_or_skip(f"could not prepare the root (apt-get --download-only of the "
                          f"package's dependencies):\n{prep.stdout[-3000:]}{prep.stderr[-3000:]}")
        prepared = time.monotonic()
        sb = DebRoot(layers)
        sb.start()
        booted = time.monotonic()
        sb.install_log = _install(sb, deb)
        print(f"debroot: prepare {prepared - started:.1f} s, boot {booted - prepared:.1f} s, "
              f"install {time.monotonic() - booted:.1f} s")
        yield sb
    finally:
        if sb is not None:
            sb.stop()
        _rmtree_layers(layers)


def _install(sb: DebRoot, deb: Path) -> str:
    """dpkg -i (fails: dependencies missing), then apt-get install -f, offline."""
    path = f"{PKG_DIR}/{deb.name}"
    first = sb.sh(f"dpkg -i {shlex.quote(path)} 2>&1", check=False)
    # 1: unconfigured for lack of its dependencies (0 where the host had them all)
    assert first.returncode == 0 or (
        first.returncode == 1 and "dependency problems" in first.stdout), first.stdout
    fixed = sb.sh("apt-get install -f -y -q --no-download --no-install-recommends 2>&1",
                  check=False)
    assert fixed.returncode == 0, fixed.stdout
    return first.stdout + fixed.stdout


def dpkg_version(sb: DebRoot, package: str) -> str:
    out = sb.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], check=True).stdout
    status, _, version = out.rpartition(" ")
    assert status == "install ok installed", out
    return version


# -- the package file ------------------------------------------------------------------------

def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_package_file(deb: Path) -> None:
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version
    assert deb.name == f"portguard_{version.group(1)}-1_all.deb"
    assert deb_field(deb, "Package") == "portguard"
    assert deb_field(deb, "Architecture") == "all"
    depends = {d.strip() for d in deb_field(deb, "Depends").split(",")}
    assert {"python3-pystemd (>= 0.11)", "python3-psutil (>= 5.9)", "python3-yaml (>= 6.0)",
            "python3-sdnotify (>= 0.3.1)"} <= depends, depends

    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    files = {line.split()[-1].removeprefix("."): line.split()[:2]
             for line in listing.splitlines()}
    for path in ("/usr/bin/portguard", "/lib/systemd/system/portguard.service",
                 "/etc/portguard/config.yaml", "/usr/share/doc/portguard/README.Debian",
                 "/usr/lib/python3/dist-packages/portguard/cli.py",
                 "/usr/share/doc/portguard/examples/config.example.yaml"):
        assert path in files, path
    assert files["/etc/portguard/config.yaml"] == ["-rw-r--r--", "root/root"]
    assert files["/usr/bin/portguard"] == ["-rwxr-xr-x", "root/root"]
    # The generated man page and completions ship whenever they are in the tree.
    for source, installed in (
            ("packaging/man/portguard.8", "/usr/share/man/man8/portguard.8.gz"),
            ("packaging/completion/portguard.bash",
             "/usr/share/bash-completion/completions/portguard"),
            ("packaging/completion/_portguard", "/usr/share/zsh/vendor-completions/_portguard")):
        assert (installed in files) == (REPO / source).exists(), (source, installed)

    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["tar", "-x", "-C", tmp], input=control, check=True)
        assert Path(tmp, "conffiles").read_text().split() == ["/etc/portguard/config.yaml"]
        postinst = Path(tmp, "postinst").read_text()
        assert "deb-systemd-helper update-state 'portguard.service'" in postinst
        assert "deb-systemd-invoke $_dh_action 'portguard.service'" in postinst
        assert "deb-systemd-helper enable" in postinst  # only under `was-enabled`: not at
        assert "was-enabled 'portguard.service'" in postinst  # first install (--no-enable)
        assert "deb-systemd-invoke stop 'portguard.service'" in Path(tmp, "prerm").read_text()
        assert "deb-systemd-helper purge 'portguard.service'" in Path(tmp, "postrm").read_text()


# -- installed into the isolated root --------------------------------------------------------

def test_installed_with_debians_libraries(debroot: DebRoot) -> None:
    sb = debroot
    assert dpkg_version(sb, "portguard") == "0.1.0-1"
    for package, prefix in DEBIAN_VERSIONS.items():
        assert dpkg_version(sb, package).startswith(prefix), package
    # The installed code and the libraries it imports are Debian's, from dist-packages
    # (the checkout and /usr/local are hidden in this root).
    probe = sb.run(["/usr/bin/python3", "-c", """\
import json, sys, importlib.metadata as md
import portguard, pystemd, pystemd.dbuslib, sdnotify, psutil, yaml
print(json.dumps({"python": sys.version.split()[0],
                  "files": {m.__name__: m.__file__ for m in
                            (portguard, pystemd, pystemd.dbuslib, sdnotify, psutil, yaml)},
                  "versions": {d: md.version(d) for d in
                               ("portguard", "pystemd", "sdnotify", "psutil", "PyYAML")}}))
"""], check=True, timeout=30)
    found = json.loads(probe.stdout)
    assert found["python"].startswith("3.11."), found
    for name, file in found["files"].items():
        assert file.startswith("/usr/lib/python3/dist-packages/"), (name, file)
    assert found["versions"]["portguard"] == "0.1.0"
    assert found["versions"]["pystemd"].startswith("0.11"), found
    assert found["versions"]["sdnotify"] == "0.3.1", found
    assert found["versions"]["psutil"].startswith("5.9."), found

    assert sb.read_file("/usr/bin/portguard").splitlines()[0] == "#!/usr/bin/python3"
    assert sb.run(["portguard", "--version"], check=True).stdout == "portguard 0.1.0\n"
    # The conffile: root's, 0644, valid, and it guards nothing.
    assert sb.run(["stat", "-c", "%U:%G %a", "/etc/portguard/config.yaml"],
                  check=True).stdout.split() == ["root:root", "644"]
    checked = sb.run(["portguard", "check-config"])
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "OK: /etc/portguard/config.yaml"
    status = sb.run(["portguard", "--json", "status"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout).get("services") == [], status.stdout
    conffiles = sb.run(["dpkg-query", "-W", "-f=${Conffiles}", "portguard"], check=True).stdout
    assert "/etc/portguard/config.yaml" in conffiles
    # Man page and completion, when the package has them.
    listed = sb.run(["dpkg", "-L", "portguard"], check=True).stdout.split()
    if "/usr/share/man/man8/portguard.8.gz" in listed:
        shown = sb.run(["sh", "-c", "zcat /usr/share/man/man8/portguard.8.gz | head -c 4000"],
                       check=True).stdout
        assert "portguard" in shown


def test_the_unit_is_installed_disabled_and_not_started(debroot: DebRoot) -> None:
    sb = debroot
    assert sb.unit_property("portguard.service", "FragmentPath") == \
        "/lib/systemd/system/portguard.service"
    assert sb.unit_property("portguard.service", "LoadState") == "loaded"
    assert sb.systemctl("is-enabled", "portguard.service").stdout.strip() == "disabled"
    assert sb.unit_property("portguard.service", "ActiveState") == "inactive"
    # postinst ran with systemd up: it reloaded it and asked deb-systemd-invoke to start
    # the unit, which declines a disabled one.
    assert "portguard.service is a disabled or a static unit, not starting it" in \
        sb.install_log
    # deb-systemd-helper's state: what enabling creates, for purge to remove.
    also = sb.read_file(DSH_STATE)
    assert "/etc/systemd/system/multi-user.target.wants/portguard.service" in also
    verify = sb.run(["systemd-analyze", "verify", "/lib/systemd/system/portguard.service"])
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_daemon_starts_ready_and_reloads(debroot: DebRoot) -> None:
    sb = debroot
    cursor = sb.cursor()
    started = sb.systemctl("start", "portguard.service", timeout=60)  # Type=notify: READY=1
    assert started.returncode == 0, started.stderr + sb.systemctl(
        "status", "portguard.service").stdout
    assert sb.unit_property("portguard.service", "ActiveState") == "active"
    assert sb.unit_property("portguard.service", "SubState") == "running"
    assert sb.unit_property("portguard.service", "StatusText").startswith("watching 0 services")
    pid = int(sb.unit_property("portguard.service", "MainPID"))
    cmdline = sb.run(["cat", f"/proc/{pid}/cmdline"], check=True).stdout.split("\0")
    assert cmdline[:3] == ["/usr/bin/python3", "/usr/bin/portguard", "daemon"], cmdline
    sb.wait_journal(lambda r: r.get("MESSAGE_ID") == DAEMON_STARTED,
                    "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    # The daemon talks to systemd through Debian's pystemd 0.11 (its compiled modules are
    # mapped from dist-packages) and its READY=1 went through Debian's sdnotify.
    maps = sb.run(["cat", f"/proc/{pid}/maps"], check=True).stdout
    assert "/usr/lib/python3/dist-packages/pystemd/dbuslib.cpython-311" in maps

    cursor = sb.cursor()
    reloaded = sb.systemctl("reload", "portguard.service", timeout=30)
    assert reloaded.returncode == 0, reloaded.stderr
    sb.wait_journal(lambda r: r.get("MESSAGE_ID") == DAEMON_RELOADED,
                    "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    assert sb.wait_unit_state("portguard.service", "active") == "active"
    assert int(sb.unit_property("portguard.service", "MainPID")) == pid
    # Stopped again: the preflight test below must be the only guard acting on its port.
    assert sb.systemctl("stop", "portguard.service").returncode == 0
    assert sb.unit_property("portguard.service", "ActiveState") == "inactive"


def test_install_a_unit_and_preflight_clears_a_stray(debroot: DebRoot) -> None:
    sb = debroot
    sb.put(WEBD, WEBD_SOURCE)
    argv = ["/usr/bin/python3", WEBD, str(WEB_PORT)]
    sb.write_unit("web.service", f"[Service]\nExecStart={shlex.join(argv)}\n")
    sb.put("/etc/portguard/config.yaml", f"""\
services:
  web.service:
    ports: ["{WEB_PORT}"]
    policy: stop
    kill_after: 2s
    timeout: 15s
""")
    assert sb.run(["portguard", "check-config"]).returncode == 0

    installed = sb.run(["portguard", "install", "web.service"], timeout=60)
    assert installed.returncode == 0, installed.stderr
    dropin = "/etc/systemd/system/web.service.d/portguard.conf"
    assert installed.stdout == f"installed: {dropin}\n"
    assert "ExecStartPre=+/usr/bin/portguard preflight %n\n" in sb.read_file(dropin)
    assert sb.unit_property("web.service", "DropInPaths") == dropin

    # A copy of web's own program, started by hand outside any unit, holds the port.
    stray = sb.spawn(argv)
    sb.wait_for(lambda: sb.run(["portguard", "who", str(WEB_PORT)]).returncode == 1, 10,
                "the stray to listen")
    cursor = sb.cursor()
    started = sb.systemctl("start", "web.service", timeout=60)
    assert started.returncode == 0, started.stderr + sb.systemctl("status", "web.service").stdout
    assert sb.wait_unit_state("web.service", "active") == "active"
    sb.wait_for(lambda: not sb.pid_alive(stray), 10, "the stray to be gone")

    # The records came from the packaged command, as web.service's ExecStartPre=.
    conflict = sb.wait_journal(lambda r: r.get("MESSAGE_ID") == CONFLICT,
                               "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    signalled = sb.wait_journal(lambda r: r.get("MESSAGE_ID") == SIGNAL,
                                "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    for record in (conflict, signalled):
        assert record["PORTGUARD_UNIT"] == "web.service"
        assert record["PORTGUARD_PORT"] == str(WEB_PORT)
        assert record["PORTGUARD_HOLDER_KIND"] == "stray"
        assert record["PORTGUARD_HOLDER_PID"] == str(stray)
        assert record["_SYSTEMD_UNIT"] == "web.service"
        assert record["_CMDLINE"] == "/usr/bin/python3 /usr/bin/portguard preflight web.service"
        assert record["_EXE"].startswith("/usr/bin/python3")
    assert signalled["PORTGUARD_ACTION"] == "signal"

    # web itself holds the port now.
    who = json.loads(sb.run(["portguard", "--json", "who", str(WEB_PORT)]).stdout)
    holders = who["ports"][0]["holders"]
    main = int(sb.unit_property("web.service", "MainPID"))
    assert {h["pid"] for h in holders} == {main}
    assert {h["unit"] for h in holders} == {"web.service"}


def test_an_enabled_daemon_is_restarted_by_an_upgrade(debroot: DebRoot, deb: Path) -> None:
    sb = debroot
    assert sb.systemctl("enable", "--now", "portguard.service", timeout=60).returncode == 0
    before = int(sb.unit_property("portguard.service", "MainPID"))
    again = sb.sh(f"dpkg -i {shlex.quote(f'{PKG_DIR}/{deb.name}')} 2>&1", check=False)
    assert again.returncode == 0, again.stdout
    assert sb.wait_unit_state("portguard.service", "active") == "active"
    after = int(sb.unit_property("portguard.service", "MainPID"))
    assert after not in (0, before)
    assert sb.systemctl("is-enabled", "portguard.service").stdout.strip() == "enabled"
    # The admin's config (a conffile they changed) is kept as it is.
    assert "web.service" in sb.read_file("/etc/portguard/config.yaml")


def test_remove_then_purge(debroot: DebRoot) -> None:
    sb = debroot
    removed = sb.sh("apt-get remove -y -q portguard 2>&1", check=False)
    assert removed.returncode == 0, removed.stdout
    # prerm names the units whose drop-ins still run /usr/bin/portguard.
    assert "web.service  /etc/systemd/system/web.service.d/portguard.conf" in removed.stdout
    assert sb.unit_property("portguard.service", "ActiveState") in ("inactive", "failed")
    assert sb.run(["test", "-e", "/usr/bin/portguard"]).returncode != 0
    assert sb.run(["test", "-e", "/etc/portguard/config.yaml"]).returncode == 0  # conffile
    assert "web.service" in sb.read_file("/etc/portguard/config.yaml")
    assert sb.run(["test", "-e", "/usr/lib/python3/dist-packages/portguard"]).returncode != 0

    purged = sb.sh("dpkg --purge portguard 2>&1", check=False)
    assert purged.returncode == 0, purged.stdout
    assert sb.run(["test", "-e", "/etc/portguard/config.yaml"]).returncode != 0
    assert sb.run(["test", "-e", "/etc/systemd/system/multi-user.target.wants/"
                   "portguard.service"]).returncode != 0
    assert sb.run(["test", "-e", DSH_STATE]).returncode != 0
    assert sb.unit_property("portguard.service", "LoadState") == "not-found"
