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
   way tests/support/sandbox.py boots one on the host's `/` (`DebRoot` reuses
   its whole API and changes only the boot script; see debroot.py).
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

import json
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.availability import require_sandbox, skip_or_fail
from support.cases import CONFLICT, SIGNAL
from support.cases import RELOADED as DAEMON_RELOADED
from support.cases import STARTED as DAEMON_STARTED
from support.debroot import PKG_DIR, DebRoot, PrepareFailed, booted_root, build_deb
from support.sandbox import REPO, SandboxError

WEB_PORT = 8080  # the root has a network namespace of its own
WEBD = "/run/portguard-test/webd.py"
DSH_STATE = "/var/lib/systemd/deb-systemd-helper-enabled/portguard.service.dsh-also"
# Debian 12's versions: the package must work with exactly these.
DEBIAN_VERSIONS = {"python3-pystemd": "0.11.", "python3-sdnotify": "0.3.1",
                   "python3-psutil": "5.9.", "python3-yaml": "6.0"}

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


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deb() -> Path:
    """dist/portguard_<version>_all.deb, built now unless up to date."""
    require_sandbox()  # root, unshare, systemd: the same needs, checked first
    try:
        return build_deb()
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def debroot(deb: Path) -> Iterator[DebRoot]:
    """The isolated root with systemd running and the package installed (dpkg -i, then
    apt-get install -f); removed with everything in it afterwards."""
    try:
        with booted_root(deb) as sb:
            started = time.monotonic()
            sb.install_log = _install(sb, deb)
            print(f"debroot: install {time.monotonic() - started:.1f} s")
            yield sb
    except PrepareFailed as exc:
        skip_or_fail(str(exc))


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
