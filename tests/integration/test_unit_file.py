"""systemd/portguard.service, as shipped, against a real systemd 252 (the sandbox).

How the unit is loaded: the shipped file is copied byte for byte to
/etc/systemd/system/portguard.service (the sandbox's private tmpfs), and one drop-in,
portguard.service.d/50-test.conf, replaces ExecStart= only (the venv's `python -m
portguard daemon`: /usr/bin/portguard is not installed on a test machine, and the host's
/usr/bin is not ours to write) and adds Environment=PYTHONPATH=REPO. A drop-in rather
than a rewritten copy: every other line that systemd loads is the shipped file's own, and
DropInPaths shows the drop-in is the only one. `systemd-analyze verify` reads the drop-in
too (it is what makes ExecStart= exist), and `systemd-analyze security` judges the unit
systemd loaded.

What the hardening must still let portguard do is proved twice. A probe (unit_probe.py) runs
as the unit's main process, with every setting of the shipped file, and does each thing
the daemon does that a setting could refuse: sock_diag dumps, reading another user's fd
table and exe, a bind() probe on a privileged port, pidfd signals to another user's
stray, StopUnit/StartUnit over D-Bus, the lock directory, the metrics directory, the
journal, importing pystemd/lxml under MemoryDenyWriteExecute=; and checks that what the
unit forbids is refused. Removing each capability of the bounding set in turn then shows
each one is needed. The daemon itself, once `portguard daemon` exists, runs under the
same unit and must name another unit's listener and signal a stray.

The metrics directory of the shipped unit, /var/lib/prometheus/node-exporter, is not on
the sandbox's private mounts; the `unit_sandbox` fixture mounts an overlay on /var/lib in
the sandbox's own mount namespace (upper layer on the sandbox's /run tmpfs, its
/var/lib/systemd tmpfs moved back on top), so the directory can exist in there while the
host's /var/lib never changes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.sandbox import LISTENER, PYTHON, REPO, Sandbox
from support.unit_probe import PROBE

UNIT = "portguard.service"
SHIPPED = REPO / "systemd" / UNIT
DROPIN_DIR = f"/etc/systemd/system/{UNIT}.d"
TEST_DROPIN = f"{DROPIN_DIR}/50-test.conf"
METRICS_DIR = "/var/lib/prometheus/node-exporter"
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot reach the venv's python under /root
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
MAX_EXPOSURE = 2.5
BOUNDING_SET = {"cap_dac_read_search", "cap_kill", "cap_net_bind_service", "cap_sys_ptrace"}
# What `systemd-analyze security` still counts against the unit, each deliberately (the
# README's "Running the daemon" says why): anything else exposed is a lost setting.
EXPOSED_ON_PURPOSE = {
    "RootDirectory=/RootImage=", "User=/DynamicUser=", "PrivateNetwork=", "PrivateUsers=",
    "ProtectProc=", "ProcSubset=", "ProtectHome=", "DeviceAllow=",
    "CapabilityBoundingSet=~CAP_KILL", "CapabilityBoundingSet=~CAP_SYS_PTRACE",
    "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
    "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
    "RestrictAddressFamilies=~AF_UNIX", "RestrictAddressFamilies=~AF_NETLINK",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
}

HELD_TCP, HELD_PRIVILEGED, HELD_UDP, FREE_PRIVILEGED, FREE_TCP = 18080, 81, 15353, 80, 18081
STRAY_PORT = 19090
PROBE_DIR = "/run/portguard-test"
PROBE_OUT = "/run/portguard/probe.json"  # RuntimeDirectory, kept (RuntimeDirectoryPreserve)


# --- helpers ------------------------------------------------------------------------------

def install_unit(sb: Sandbox, **dropins: str) -> None:
    """The shipped unit, the ExecStart= drop-in, and `dropins` (name -> [Service] lines)
    in place of any earlier ones; then daemon-reload."""
    sb.systemctl("stop", UNIT, timeout=60)
    sb.systemctl("reset-failed", UNIT)
    sb.run(["rm", "-rf", DROPIN_DIR], check=True)
    sb.write_file(f"/etc/systemd/system/{UNIT}", SHIPPED.read_text())
    sb.write_file(TEST_DROPIN, "[Service]\nExecStart=\n"
                  f"ExecStart={PYTHON} -m portguard daemon\n"
                  f"Environment=PYTHONPATH={REPO}\n"
                  # a checkout under /tmp (CI's clean clone) vanishes behind PrivateTmp=
                  f"BindReadOnlyPaths={REPO}\n")
    for name, body in dropins.items():
        sb.write_file(f"{DROPIN_DIR}/{name}.conf", f"[Service]\n{body}\n")
    sb.systemctl("daemon-reload", check=True)


def start_stray(sb: Sandbox, port: int, *argv: str) -> int:
    """A listener as nobody outside any unit (like one started by hand); its pid. Any
    earlier listener on the port (a failed test's stray) is killed first."""
    for old in sb.listening_pids(port):
        sb.kill(old)
    sb.wait_for(lambda: not sb.listening_pids(port), 10, f"{port} to be free")
    argv = argv or (SYSTEM_PYTHON, LISTENER, "--port", str(port), "--name", "strayd")
    pid = sb.spawn([*NOBODY, *argv], wait_exec=False)  # setsid, setpriv: both exec
    sb.wait_for(lambda: pid in sb.listening_pids(port), 10, f"the stray to listen on {port}")
    return pid


def run_probe(sb: Sandbox, uid: str, victim: str, extra: str = "") -> tuple[dict[str, Any], int]:
    """Start the unit with PROBE as its main process; its report and the stray's pid."""
    stray = start_stray(sb, STRAY_PORT)
    env = {
        "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "PROBE_ID": uid,
        "PROBE_PORTS": f"{HELD_TCP}/tcp {HELD_PRIVILEGED}/tcp {HELD_UDP}/udp {STRAY_PORT}/tcp"
                       f" {FREE_TCP}/tcp",
        "PROBE_BIND": f"{FREE_PRIVILEGED}/tcp {HELD_PRIVILEGED}/tcp {FREE_TCP}/tcp"
                      f" {HELD_TCP}/tcp",
        "PROBE_STRAY": str(stray), "PROBE_VICTIM": victim, "PROBE_LOCK_PORT": str(HELD_TCP),
        "PROBE_METRICS": f"{METRICS_DIR}/portguard-{uid}.prom",
    }
    sb.write_file(f"{PROBE_DIR}/probe.py", PROBE)
    sb.run(["rm", "-f", PROBE_OUT])
    lines = "\n".join(f"Environment={shlex.quote(f'{k}={v}')}" for k, v in env.items())
    install_unit(sb, **{"60-probe": f"ExecStart=\nExecStart={PYTHON} {PROBE_DIR}/probe.py"
                                    f" {PROBE_OUT}\nRestart=no\n{lines}\n{extra}"})
    started = sb.systemctl("start", UNIT, timeout=60)
    try:
        assert started.returncode == 0, (
            started.stderr + sb.run(["journalctl", "--no-pager", "-n", "40", "-u", UNIT]).stdout)
        report: dict[str, Any] = json.loads(sb.read_file(PROBE_OUT))
    finally:
        sb.systemctl("stop", UNIT, timeout=60)
    return report, stray


def stray_alive(sb: Sandbox, pid: int) -> bool:
    """Whether the stray still runs (a zombie is dead: PID 1 reaps it in a moment)."""
    try:
        return sb.wait_for(lambda: "gone" if not sb.pid_alive(pid) else None, 3,
                           "the stray to exit") != "gone"
    except TimeoutError:
        return True


def listener_unit(sb: Sandbox, name: str, *args: str, extra: str = "") -> None:
    sb.write_unit(name, f"[Service]\nUser=nobody\n{extra}\n"
                        f"ExecStart={shlex.join([SYSTEM_PYTHON, LISTENER, *args])}\n")
    sb.systemctl("start", name, check=True)


def private_var_lib(sb: Sandbox) -> None:
    """An overlay on /var/lib inside the sandbox's mount namespace only (see the module
    docstring), with /var/lib/prometheus/node-exporter in it as Debian's package makes it
    (root:root 0755)."""
    script = """set -eu
d=/run/portguard-test/var-lib
mkdir -p $d/upper $d/work $d/systemd
mount --bind /var/lib/systemd $d/systemd
mount -t overlay portguard-test-var-lib \\
    -o lowerdir=/var/lib,upperdir=$d/upper,workdir=$d/work /var/lib
mount --move $d/systemd /var/lib/systemd
install -d -m 0755 /var/lib/prometheus /var/lib/prometheus/node-exporter
"""
    on_host = os.path.exists(METRICS_DIR)
    sb.run(["/bin/sh", "-c", script], check=True)
    assert os.path.exists(METRICS_DIR) == on_host  # the host's /var/lib is unchanged


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unit_sandbox(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The module's sandbox with the metrics directory, three listeners as nobody (one on
    a privileged port, one UDP) and a unit to stop and start."""
    private_var_lib(sandbox)
    listener_unit(sandbox, "pg-held.service", "--port", str(HELD_TCP), "--name", "helddd")
    listener_unit(sandbox, "pg-held81.service", "--port", str(HELD_PRIVILEGED), "--name",
                  "held81", extra="AmbientCapabilities=CAP_NET_BIND_SERVICE")
    listener_unit(sandbox, "pg-heldudp.service", "--udp", "--port", str(HELD_UDP), "--name",
                  "heldudp")
    sandbox.write_unit("pg-victim.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    sandbox.systemctl("start", "pg-victim.service", check=True)
    yield sandbox
    sandbox.systemctl("stop", UNIT, "pg-held.service", "pg-held81.service",
                      "pg-heldudp.service", "pg-victim.service")


# --- the unit file ------------------------------------------------------------------------

def test_the_shipped_unit_loads_with_only_the_test_drop_in(unit_sandbox: Sandbox) -> None:
    sb = unit_sandbox
    install_unit(sb)
    assert sb.unit_property(UNIT, "FragmentPath") == f"/etc/systemd/system/{UNIT}"
    assert sb.unit_property(UNIT, "DropInPaths") == TEST_DROPIN
    assert sb.read_file(f"/etc/systemd/system/{UNIT}") == SHIPPED.read_text()
    assert "ExecStart=/usr/bin/portguard daemon\n" in SHIPPED.read_text()
    show = dict(line.split("=", 1) for line in sb.systemctl(
        "show", UNIT, "-p", "Type,NotifyAccess,Restart,RestartPreventExitStatus,UMask,"
        "RuntimeDirectory,RuntimeDirectoryMode,RuntimeDirectoryPreserve,ProtectProc,"
        "PrivateNetwork,PrivateUsers,NoNewPrivileges,ProtectSystem,ProtectHome,"
        "CapabilityBoundingSet,AmbientCapabilities,ReadWritePaths,MemoryDenyWriteExecute,"
        "ExecReload", check=True).stdout.splitlines())
    assert show["Type"] == "notify" and show["NotifyAccess"] == "main"
    assert show["Restart"] == "on-failure" and show["RestartPreventExitStatus"] == "78"
    assert set(show["CapabilityBoundingSet"].split()) == BOUNDING_SET
    assert show["AmbientCapabilities"] == ""
    assert show["RuntimeDirectory"] == "portguard" and show["RuntimeDirectoryMode"] == "0700"
    assert show["RuntimeDirectoryPreserve"] == "yes"
    assert show["ProtectProc"] == "default" and show["PrivateNetwork"] == "no"
    assert show["PrivateUsers"] == "no" and show["NoNewPrivileges"] == "yes"
    assert show["ProtectSystem"] == "strict" and show["ProtectHome"] == "read-only"
    assert show["ReadWritePaths"] == f"-{METRICS_DIR}"
    assert show["MemoryDenyWriteExecute"] == "yes"
    assert "/bin/kill -HUP $MAINPID" in show["ExecReload"] or \
        "argv[]=/bin/kill -HUP" in show["ExecReload"]


def test_systemd_analyze_verify_is_clean(unit_sandbox: Sandbox) -> None:
    install_unit(unit_sandbox)
    # --man=no: the man page named by Documentation= ships with the package, not here
    done = unit_sandbox.run(["systemd-analyze", "verify", "--man=no", UNIT], timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_security_exposure_is_at_most_2_5(unit_sandbox: Sandbox) -> None:
    sb = unit_sandbox
    install_unit(sb)
    table = sb.run(["systemd-analyze", "security", "--no-pager", UNIT], timeout=60)
    assert table.returncode == 0, table.stderr
    found = re.search(r"Overall exposure level for portguard\.service: (\d+\.\d+)",
                      table.stdout)
    assert found, table.stdout
    assert float(found.group(1)) <= MAX_EXPOSURE, table.stdout
    items = json.loads(sb.run(["systemd-analyze", "security", "--no-pager", "--json=short",
                               UNIT], check=True, timeout=60).stdout)
    exposed = {item["name"] for item in items if item["set"] is False}
    assert exposed <= EXPOSED_ON_PURPOSE, f"newly exposed: {exposed - EXPOSED_ON_PURPOSE}"


# --- what the hardened unit lets portguard do -------------------------------------------

def test_the_hardened_unit_allows_everything_the_daemon_does(unit_sandbox: Sandbox,
                                                             uid: str) -> None:
    sb = unit_sandbox
    report, stray = run_probe(sb, uid, "pg-victim.service")
    errors = {k: v for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert errors == {}, errors
    status = report["status"]
    assert status["Uid"] == "0" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    caps = {bit for bit in range(64) if int(status["CapBnd"], 16) >> bit & 1}
    assert caps == {2, 5, 10, 19}  # DAC_READ_SEARCH, KILL, NET_BIND_SERVICE, SYS_PTRACE
    assert status["CapEff"] == status["CapBnd"] and int(status["CapAmb"], 16) == 0
    assert report["imports"] == "ok"
    # sock_diag without CAP_NET_ADMIN: every listener, other users' too, with its cgroup
    assert {f"{HELD_TCP}/tcp uid=65534 cgroup=True", f"{HELD_PRIVILEGED}/tcp uid=65534"
            " cgroup=True", f"{HELD_UDP}/udp uid=65534 cgroup=True",
            f"{STRAY_PORT}/tcp uid=65534 cgroup=True"} <= set(report["sockdiag"])
    who = report["who"]
    for port, unit in ((f"{HELD_TCP}/tcp", "pg-held.service"),
                       (f"{HELD_PRIVILEGED}/tcp", "pg-held81.service"),
                       (f"{HELD_UDP}/udp", "pg-heldudp.service")):
        (holder,) = who[port]
        assert holder["unit"] == unit and holder["users"] == ["nobody"], who
        assert holder["exe"][0].startswith("/usr/bin/python3"), who  # exe: needs ptrace
    (stray_holder,) = who[f"{STRAY_PORT}/tcp"]
    assert stray_holder["pids"] == [stray] and stray_holder["unit"] is None
    assert who[f"{FREE_TCP}/tcp"] == []
    assert report["bind"] == {f"{FREE_PRIVILEGED}/tcp": 0, f"{HELD_PRIVILEGED}/tcp": 98,
                              f"{FREE_TCP}/tcp": 0, f"{HELD_TCP}/tcp": 98}
    assert report["read_fds"]["fds"] >= 3
    assert report["dbus"] == ["done", "inactive", "done", "active"]
    assert report["lock"] == "0o700"
    assert report["metrics"] == "0o644"
    assert report["journal"] is True
    sb.wait_journal(lambda r: r.get("PORTGUARD_PROBE") == uid, "SYSLOG_IDENTIFIER=portguard")
    assert report["signal"] == "sent"
    assert not stray_alive(sb, stray)
    # ... and what it must not do
    assert report["forbidden"] == {
        "write_usr": 30, "write_etc": 30,  # EROFS: ProtectSystem=strict
        "sched_setaffinity": 1, "setuid": 1,  # EPERM: SystemCallFilter=~@resources @privileged
        "af_packet": 97,  # EAFNOSUPPORT: RestrictAddressFamilies=
        "mknod": 1,  # EPERM: no CAP_MKNOD, PrivateDevices=
    }


# Each capability, removed, costs exactly the function it is there for.
@pytest.mark.parametrize("cap", sorted(BOUNDING_SET))
def test_each_capability_is_needed(unit_sandbox: Sandbox, uid: str, cap: str) -> None:
    sb = unit_sandbox
    report, stray = run_probe(sb, uid, "pg-victim.service",
                              extra=f"CapabilityBoundingSet=~{cap.upper()}")
    who = report["who"]
    if cap in ("cap_dac_read_search", "cap_sys_ptrace"):
        # DAC_READ_SEARCH: /proc/PID/fd of another user is mode 0500 (listing it);
        # SYS_PTRACE: its fd links and exe (ptrace access mode checks)
        assert report["read_fds"]["errno"] == 13
        assert who[f"{HELD_TCP}/tcp"][0]["pids"] == []
    elif cap == "cap_kill":  # signalling another user's process
        assert report["signal"]["errno"] == 1
        assert stray_alive(sb, stray)
    else:  # bind() probes below ip_unprivileged_port_start: EACCES, whatever holds them
        assert report["bind"][f"{FREE_PRIVILEGED}/tcp"] == 13
        assert report["bind"][f"{HELD_PRIVILEGED}/tcp"] == 13
    if stray_alive(sb, stray):
        sb.kill(stray)


def test_metrics_dir_needs_read_write_paths_and_may_be_missing(unit_sandbox: Sandbox,
                                                               uid: str) -> None:
    sb = unit_sandbox
    report, _ = run_probe(sb, uid, "pg-victim.service", extra="ReadWritePaths=")
    assert report["metrics"]["errno"] == 30  # EROFS: ProtectSystem=strict
    sb.run(["mv", METRICS_DIR, f"{METRICS_DIR}.away"], check=True)
    try:  # "-": the unit starts without the directory; only the write fails
        report, _ = run_probe(sb, uid, "pg-victim.service")
        assert report["metrics"]["errno"] == 2
    finally:
        sb.run(["mv", f"{METRICS_DIR}.away", METRICS_DIR], check=True)


# --- the daemon itself --------------------------------------------------------------------

def daemon_available() -> str | None:
    """Why `portguard daemon` cannot be run yet, or None."""
    done = subprocess.run([PYTHON, "-m", "portguard", "daemon", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()[:300]


def require_daemon() -> None:
    reason = daemon_available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and `portguard daemon` is not available: {reason}",
                    pytrace=False)
    pytest.skip(f"`portguard daemon` is not available yet: {reason}")


DAEMON_CONFIG = """\
services:
  pg-foreign-{uid}.service:
    ports: ["{held}"]
    policy: stop
  pg-app-{uid}.service:
    ports: ["{stray_port}"]
    policy: stop
    kill_after: 2s
daemon:
  interval: 1s
  restart: true
  metrics_file: {metrics}
"""


def test_the_daemon_under_the_hardened_unit_sees_holders_and_signals_a_stray(
        unit_sandbox: Sandbox, uid: str) -> None:
    """A foreign listener (another unit, as nobody) on one service's port is named with
    its pid and unit. A stray copy of the other service (its ExecStart= argv, as its
    user, outside any unit) has made that service fail with EADDRINUSE; the daemon
    signals the stray and starts the service again. All of it needs what the unit keeps:
    the capabilities (fd tables, exe and signals of another user's processes) and D-Bus.
    The service fails before the daemon starts, so its first pass finds it failed."""
    require_daemon()
    sb = unit_sandbox
    stray_port = STRAY_PORT + 1
    app = f"pg-app-{uid}.service"
    argv = [SYSTEM_PYTHON, LISTENER, "--port", str(stray_port), "--name", "appd"]
    sb.write_unit(app, f"[Service]\nUser=nobody\nExecStart={shlex.join(argv)}\n")
    metrics = f"{METRICS_DIR}/portguard.prom"
    sb.write_file("/etc/portguard/config.yaml", DAEMON_CONFIG.format(
        uid=uid, held=HELD_TCP, stray_port=stray_port, metrics=metrics))
    holder_pid = int(sb.unit_property("pg-held.service", "MainPID"))
    stray = start_stray(sb, stray_port, *argv)
    sb.systemctl("start", app)  # Type=simple: started, then exits 98 (EADDRINUSE)
    sb.wait_unit_state(app, "failed")
    cursor = sb.cursor()
    install_unit(sb)
    try:
        started = sb.systemctl("start", UNIT, timeout=90)  # READY=1 after the first pass
        assert started.returncode == 0, started.stderr + sb.run(
            ["journalctl", "--no-pager", "-n", "60", "-u", UNIT]).stdout
        assert sb.unit_property(UNIT, "ActiveState") == "active"
        assert sb.unit_property(UNIT, "WatchdogUSec") == "30s"
        sb.wait_journal(lambda r: r.get("PORTGUARD_HOLDER_PID") == str(holder_pid)
                        and r.get("PORTGUARD_HOLDER_UNIT") == "pg-held.service",
                        "SYSLOG_IDENTIFIER=portguard", timeout=30, since_cursor=cursor)
        sb.wait_journal(lambda r: r.get("PORTGUARD_HOLDER_PID") == str(stray)
                        and r.get("PORTGUARD_ACTION") in ("signal", "kill"),
                        "SYSLOG_IDENTIFIER=portguard", timeout=30, since_cursor=cursor)
        sb.wait_for(lambda: not sb.pid_alive(stray), 15, "the stray to be stopped")
        sb.wait_unit_state(app, "active", timeout=30)  # restart: true, over D-Bus
        assert sb.listening_pids(stray_port) == {int(sb.unit_property(app, "MainPID"))}
        assert sb.pid_alive(holder_pid), "a foreign holder must never be touched"
        text = sb.wait_for(lambda: sb.run(["cat", metrics]).stdout, 15, "the metrics file")
        assert text.endswith("\n") and "portguard_services 2\n" in text, text
        assert re.search(rf'portguard_port_held\{{[^}}]*service="pg-foreign-{uid}\.service"'
                         rf'[^}}]*port="{HELD_TCP}"[^}}]*\}} 1\n', text), text
        mode = sb.run(["stat", "-c", "%a", metrics], check=True).stdout.strip()
        assert mode == "644"
        reload = sb.systemctl("reload", UNIT, timeout=60)  # ExecReload= under the filter
        assert reload.returncode == 0, reload.stderr
        time.sleep(0.5)
        assert sb.unit_property(UNIT, "ActiveState") == "active"
    finally:
        sb.systemctl("stop", UNIT, app, timeout=60)
        if sb.pid_alive(stray):
            sb.kill(stray, signal.SIGKILL)
    assert sb.unit_property(UNIT, "Result") == "success"
