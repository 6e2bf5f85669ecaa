"""The .deb, built once, installed in each Debian root (12 and 13) and smoke-tested there
with the root's own Python, systemd and Debian's pystemd/psutil/yaml/sdnotify: the
packaged /usr/bin/portguard checks a config, installs a drop-in on the packaged nginx,
stops a hand-started nginx as a stray, its daemon reaches READY under its packaged unit,
and `why` explains a real failed start. (tests/integration/test_deb.py covers the
package's life cycle in depth on the host's Debian 12.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cases import CONFLICT, SIGNAL
from support.cases import STARTED as DAEMON_STARTED
from support.daemons import Field
from support.debroot import build_deb
from support.roots import RootSandbox

DAEMONS_USED = ["nginx"]
NGINX = "nginx.service"
PORT = 8080
CONFIG = f"""\
services:
  {NGINX}:
    ports: ["{PORT}"]
    policy: stop
    kill_after: 2s
"""


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_deb()  # once: scripts/build-deb rebuilds only when the project changed


@pytest.fixture(scope="module")
def packaged(root_sb: RootSandbox, field: Field, deb: Path) -> Iterator[Field]:
    """The root with the package installed (its dependencies are the root's: no network)."""
    done = root_sb.run(["dpkg", "-i", str(deb)], timeout=120,
                       env={"DEBIAN_FRONTEND": "noninteractive"})
    assert done.returncode == 0, done.stdout + done.stderr
    # its packaged unit, unchanged, where the sandbox's systemd looks (as Field does)
    root_sb.write_unit("portguard.service",
                       root_sb.read_file("/lib/systemd/system/portguard.service"))
    field.install("nginx")
    field.config("/etc/nginx/sites-enabled", {"default": f"server {{ listen {PORT}; }}\n"})
    root_sb.write_file("/etc/portguard/config.yaml", CONFIG)
    yield field
    root_sb.run(["dpkg", "--purge", "portguard"], timeout=120)


def portguard(sb: RootSandbox, *args: str) -> tuple[int, str, str]:
    """The packaged command (no checkout on its path)."""
    done = sb.run(["/usr/bin/portguard", *args], timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_the_packaged_command_runs_on_the_roots_python(packaged: Field) -> None:
    sb = packaged.sb
    assert isinstance(sb, RootSandbox)
    head = sb.read_file("/usr/bin/portguard").splitlines()[0]
    assert head == "#!/usr/bin/python3", head
    where = sb.run(["/usr/bin/python3", "-c", "import portguard, sys; "
                    "print(portguard.__file__, sys.version_info[:2])"], check=True).stdout
    assert where.startswith("/usr/lib/python3/dist-packages/portguard/"), where
    assert where.split(" ", 1)[1].strip() == {"12": "(3, 11)", "13": "(3, 13)"}[sb.version]
    assert portguard(sb, "check-config")[0] == 0


def test_install_then_a_hand_started_nginx_is_a_stray_stopped(packaged: Field) -> None:
    field, sb = packaged, packaged.sb
    code, out, err = portguard(sb, "install", NGINX)
    assert code == 0, out + err
    assert "ExecStartPre=+/usr/bin/portguard preflight %n\n" in sb.read_file(
        f"/etc/systemd/system/{NGINX}.d/portguard.conf")
    field.spawn_by_hand("/usr/sbin/nginx")  # from a root shell: it daemonizes
    master, by_hand = field.wait_master(PORT)
    cursor = sb.cursor()
    field.start(NGINX)
    assert field.is_active(NGINX) == "active"
    sb.wait_for(lambda: not any(sb.pid_alive(p) for p in by_hand), 10, "the stray gone")
    assert set(field.wait_holders(PORT, gone=by_hand)) <= field.unit_pids(NGINX)
    conflict = sb.wait_journal(lambda r: r.get("MESSAGE_ID") == CONFLICT,
                               "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    assert conflict["PORTGUARD_HOLDER_KIND"] == "stray", conflict["MESSAGE"]
    signal = sb.wait_journal(lambda r: r.get("MESSAGE_ID") == SIGNAL,
                             "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    assert signal["PORTGUARD_HOLDER_PID"] == str(master), signal
    field.stop(NGINX)
    assert portguard(sb, "uninstall", NGINX)[0] == 0


def test_the_daemon_reaches_ready(packaged: Field) -> None:
    sb = packaged.sb
    assert sb.unit_property("portguard.service", "Type") == "notify"
    cursor = sb.cursor()
    started = sb.systemctl("start", "portguard.service", timeout=60)  # returns at READY=1
    assert started.returncode == 0, started.stderr + packaged.status("portguard.service")
    assert sb.unit_property("portguard.service", "SubState") == "running"
    sb.wait_journal(lambda r: r.get("MESSAGE_ID") == DAEMON_STARTED,
                    "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    assert sb.systemctl("stop", "portguard.service").returncode == 0


def test_why_explains_a_real_failed_start(packaged: Field) -> None:
    field, sb = packaged, packaged.sb
    holder = sb.spawn(["/usr/bin/python3", "-m", "http.server", str(PORT)])
    try:
        field.wait_holders(PORT)
        assert field.start(NGINX, check=False).returncode != 0  # unguarded: nginx fails
        assert field.is_active(NGINX) == "failed"
        code, out, err = portguard(sb, "why", NGINX)
        assert code == 1, out + err
        assert f"bind() to 0.0.0.0:{PORT} failed (98: Address already in use)" in out, out
        assert f"{PORT}/tcp: pid {holder}, not {NGINX}'s program, holds it" in out, out
    finally:
        sb.kill(holder)
        sb.systemctl("reset-failed", NGINX)
