"""The harness itself, and the real behaviour portguard is built on, against systemd 252."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.sandbox import (
    PRIVATE_MOUNTS,
    PYTHON,
    REPO,
    SEED_DIR,
    Sandbox,
    SandboxError,
    listener_argv,
    listener_exec,
)

from portguard.report.journal import Event

CONFLICT_FIELDS = {
    "PORTGUARD_UNIT": "web@b.service",
    "PORTGUARD_PORT": "8080",
    "PORTGUARD_PROTO": "tcp",
    "PORTGUARD_HOLDER_PID": "123",
    "PORTGUARD_HOLDER_UNIT": "web@a.service",
    "PORTGUARD_HOLDER_KIND": "twin",
    "PORTGUARD_ACTION": "refuse",
    "PORTGUARD_RESULT": "blocked",
}


def emit_code(message: str, *, after: str = "") -> str:
    """Python source that emits one CONFLICT record with every DESIGN field."""
    return (
        "import sys\n"
        "from portguard.report.journal import Journal, Event\n"
        f"Journal().emit(Event.CONFLICT, {message!r}, unit='web@b.service', port=8080,"
        " proto='tcp', holder_pid=123, holder_unit='web@a.service', holder_kind='twin',"
        " action='refuse', result='blocked')\n"
        f"{after}"
    )


def assert_conflict_record(record: dict[str, object], message: str) -> None:
    assert record["MESSAGE"] == message
    assert record["SYSLOG_IDENTIFIER"] == "portguard"
    assert record["MESSAGE_ID"] == Event.CONFLICT.message_id
    assert record["PRIORITY"] == "4"
    for key, value in CONFLICT_FIELDS.items():
        assert record.get(key) == value, key


def listeners(sb: Sandbox, port: int, proto: str = "t") -> str:
    return sb.run(["ss", f"-Hl{proto}np", f"sport = :{port}"], check=True).stdout


@contextlib.contextmanager
def host_marker(directory: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=directory, prefix="portguard-host-marker-", suffix=".txt")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# -- 1. boot and isolation ---------------------------------------------------------------


def test_boot_systemd_is_pid1_and_running(sandbox: Sandbox) -> None:
    assert sandbox.systemctl("is-system-running").stdout.strip() == "running"
    assert sandbox.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert Path(f"/proc/{sandbox.pid}/comm").read_text().strip() == "systemd"
    assert sandbox.boot_seconds < 5, sandbox.boot_seconds
    # exactly our two unit dirs: no trailing ':' letting the host's defaults in
    unit_path = sandbox.run(["systemctl", "show", "-P", "UnitPath"]).stdout.split()
    assert unit_path == ["/etc/systemd/system", SEED_DIR]
    # pure cgroup v2, rooted at the sandbox's own subtree
    assert sandbox.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
    assert sandbox.cgroup_of(1) == "/init.scope"
    assert os.path.isdir(os.path.join(sandbox.cgroup_root, "init.scope"))
    # D-Bus (what portguard uses) answers for the sandbox's systemd
    out = sandbox.python("from pystemd.systemd1 import Manager\nm = Manager(); m.load()\n"
                         "print(m.Manager.GetUnitByPID(1).decode())", check=True)
    assert out.stdout.strip() == "/org/freedesktop/systemd1/unit/init_2escope"
    # the project's CLI runs inside, from this checkout
    assert sandbox.portguard("--version", check=True).returncode == 0


def test_private_mounts_hide_the_host(sandbox: Sandbox, uid: str) -> None:
    for mount in PRIVATE_MOUNTS:
        fstype = sandbox.run(["stat", "-f", "-c", "%T", mount]).stdout
        assert fstype.strip() == "tmpfs", mount
    with host_marker("/tmp") as tmp_marker, host_marker("/etc/systemd/system") as unit_marker:
        for marker in (tmp_marker, unit_marker):
            assert sandbox.run(["test", "-e", str(marker)]).returncode == 1, marker
    inside = [f"/tmp/inside-{uid}", f"/etc/systemd/system/inside-{uid}.txt",
              f"/etc/portguard/inside-{uid}.yaml", f"/var/tmp/inside-{uid}"]
    for path in inside:
        sandbox.write_file(path, "x\n")
        assert sandbox.read_file(path) == "x\n"
    sandbox.run(["touch", f"/etc/inside-{uid}"], check=True)  # /etc itself: the overlay
    for path in [*inside, f"/etc/inside-{uid}"]:
        assert not os.path.exists(path), path
    assert sandbox.run(["hostname"]).stdout.strip() != os.uname().nodename
    # global sysctls are read-only (tried with the value it has: harmless if it worked);
    # the network namespace's own ones are writable
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    assert sandbox.run(["sysctl", "-w", f"kernel.core_pattern={pattern}"]).returncode != 0
    assert sandbox.run(["sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40100"]).returncode == 0


def test_write_file_refuses_paths_off_the_private_mounts(sandbox: Sandbox, uid: str) -> None:
    for path in ("/etc/passwd", "/usr/local/bin/x", "/tmp/../etc/x", "relative/x", "/tmp",
                 "/run/portguard-sandbox/etc-upper/passwd"):
        with pytest.raises(SandboxError):
            sandbox.write_file(path, "no\n")
    # an absolute symlink inside would resolve against the HOST's root through
    # /proc/PID/root: point them at host markers and check those stay untouched
    with host_marker("/tmp") as marker:
        sandbox.run(["ln", "-s", "/tmp", f"/tmp/link-{uid}"], check=True)
        with pytest.raises(SandboxError, match="symlink"):
            sandbox.write_file(f"/tmp/link-{uid}/{marker.name}", "no\n")
        sandbox.run(["ln", "-s", str(marker), f"/tmp/file-link-{uid}"], check=True)
        with pytest.raises(SandboxError):
            sandbox.write_file(f"/tmp/file-link-{uid}", "no\n")
        assert marker.read_text() == ""
    sandbox.write_file(f"/run/{uid}/a/b/c.txt", "deep\n", mode=0o600)
    assert sandbox.run(["stat", "-c", "%a", f"/run/{uid}/a/b/c.txt"]).stdout.strip() == "600"


# -- 2. the problem portguard solves --------------------------------------------------------


def test_second_instance_fails_with_eaddrinuse(sandbox: Sandbox, uid: str) -> None:
    template = f"web-{uid}@.service"
    a, b = f"web-{uid}@a.service", f"web-{uid}@b.service"
    sandbox.write_unit(template, f"""\
[Unit]
Description=test web %i

[Service]
Type=simple
ExecStart={listener_exec("--port", "8080", "--name", "web-%i")}
""")
    try:
        sandbox.systemctl("start", a, check=True)
        assert sandbox.wait_unit_state(a, "active") == "active"
        main_pid = sandbox.unit_property(a, "MainPID")
        ss = sandbox.wait_for(lambda: listeners(sandbox, 8080), 10, "web@a to listen")
        assert f'("web-a",pid={main_pid},' in ss

        cursor = sandbox.cursor()
        sandbox.systemctl("start", b)  # Type=simple: the start job itself succeeds
        assert sandbox.wait_unit_state(b, "failed") == "failed"
        assert sandbox.unit_property(b, "ExecMainStatus") == "98"
        record = sandbox.wait_journal(
            lambda r: "Address already in use" in str(r.get("MESSAGE")),
            "-u", b, since_cursor=cursor)
        assert record["_SYSTEMD_UNIT"] == b
        assert record["MESSAGE"] == "bind: Address already in use (0.0.0.0:8080/tcp)"
        assert sandbox.unit_property(a, "ActiveState") == "active"
    finally:
        sandbox.systemctl("stop", a, b)
        sandbox.systemctl("reset-failed", b)


def socket_cgroup(sb: Sandbox, port: int) -> str:
    """The cgroup sock_diag reports for the listener on port (INET_DIAG_CGROUP_ID, which
    `ss --cgroup` resolves to a path by the inode numbers under the cgroup2 mount)."""
    out = sb.run(["ss", "-Hltne", "--cgroup", f"sport = :{port}"], check=True).stdout
    match = re.search(r" cgroup:(\S+)", out)
    assert match, out
    return match.group(1)


def test_unit_socket_cgroup_id_names_the_unit(sandbox: Sandbox, uid: str) -> None:
    """A unit's listener carries the unit's cgroup id; its prefork workers share it."""
    unit = f"pre-{uid}.service"
    exec_start = listener_exec("--port", "8090", "--workers", "2")
    sandbox.write_unit(unit, f"[Service]\nExecStart={exec_start}\n")
    try:
        sandbox.systemctl("start", unit, check=True)
        # the parent and two workers hold it
        sandbox.wait_for(lambda: listeners(sandbox, 8090).count("pid=") == 3, 10,
                         f"{unit}'s three processes to hold the socket")
        cgroup = sandbox.unit_property(unit, "ControlGroup")
        assert cgroup == f"/system.slice/{unit}"
        assert socket_cgroup(sandbox, 8090) == cgroup
        assert sandbox.cgroup_of(int(sandbox.unit_property(unit, "MainPID"))) == cgroup
        ino = os.stat(sandbox.cgroup_root + cgroup).st_ino  # the same id, seen from the host
        assert sandbox.run(["stat", "-c", "%i", f"/sys/fs/cgroup{cgroup}"]).stdout.strip() == \
            str(ino)
    finally:
        sandbox.systemctl("stop", unit)


def test_socket_activated_listener_belongs_to_the_socket_unit(sandbox: Sandbox, uid: str) -> None:
    """systemd creates a .socket unit's socket in that unit's cgroup, and PID 1 holds it."""
    sock = f"act-{uid}.socket"
    sandbox.write_unit(sock, "[Socket]\nListenStream=8091\n")
    sandbox.write_unit(f"act-{uid}.service", "[Service]\nExecStart=/bin/sleep 600\n")
    try:
        sandbox.systemctl("start", sock, check=True)
        assert '("systemd",pid=1,' in listeners(sandbox, 8091)
        assert socket_cgroup(sandbox, 8091) == f"/system.slice/{sock}"
    finally:
        sandbox.systemctl("stop", sock)


def test_hybrid_layout(make_sandbox: Callable[..., Sandbox], uid: str) -> None:
    """The cgroup layout of hosts like this CI VM: name=systemd v1 + cgroup2 at unified."""
    try:
        sb = make_sandbox(cgroup_layout="hybrid")
    except SandboxError as exc:
        if "needs a name=systemd hierarchy" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        unit = f"hy-{uid}.service"
        sb.write_unit(unit, f"[Service]\nExecStart={listener_exec('--port', '8080')}\n")
        sb.systemctl("start", unit, check=True)
        sb.wait_for(lambda: listeners(sb, 8080), 10, f"{unit} to listen")
        cgroup = f"/system.slice/{unit}"
        lines = sb.run(["cat", f"/proc/{sb.unit_property(unit, 'MainPID')}/cgroup"]).stdout
        assert f"0::{cgroup}\n" in lines and f":name=systemd:{cgroup}\n" in lines, lines
        assert socket_cgroup(sb, 8080) == cgroup
        assert os.path.isdir(sb.cgroup_root + cgroup)
        dirs = list(sb._cgroup_dirs)
    finally:
        sb.stop()
    assert not any(os.path.exists(d) for d in dirs)


def test_spawn_runs_outside_any_unit(sandbox: Sandbox, uid: str) -> None:
    argv = listener_argv("--port", "9000", "--name", f"stray{uid[:4]}", "--ignore-term")
    pid = sandbox.spawn(argv)
    try:
        host = sandbox.host_pid(pid)
        assert Path(f"/proc/{host}/cmdline").read_bytes().split(b"\0")[:-1] == \
            [a.encode() for a in argv]
        assert sandbox.cgroup_of(pid) == "/"
        ss = sandbox.wait_for(lambda: listeners(sandbox, 9000), 10, "the stray to listen")
        assert f'("stray{uid[:4]}",pid={pid},' in ss
        # systemd 252 maps a process in the root cgroup to no unit at all
        unit = sandbox.python(
            "import sys\nfrom pystemd.systemd1 import Manager\nm = Manager(); m.load()\n"
            "print(m.Manager.GetUnitByPID(int(sys.argv[1])).decode())", str(pid))
        assert "org.freedesktop.systemd1.NoUnitForPID" in unit.stderr, unit.stderr
        sandbox.kill(pid, 15)  # --ignore-term
        assert sandbox.pid_alive(pid)
    finally:
        sandbox.kill(pid)
    sandbox.wait_for(lambda: not sandbox.pid_alive(pid), 5, "the stray to die")


def test_listener_binds_like_a_service(sandbox: Sandbox) -> None:
    """listener.py's options decide clashes as in a real service; a second one that cannot
    bind says so and exits 98. (Two SO_REUSEPORT listeners share a port.)"""

    def second(*args: str) -> tuple[int, str]:
        out = sandbox.run(listener_argv(*args), timeout=10)
        return out.returncode, out.stderr

    pids = [sandbox.spawn(listener_argv("--addr", "[::]", "--port", "8100", "--no-v6only")),
            sandbox.spawn(listener_argv("--udp", "--addr", "127.0.0.1", "--port", "8101")),
            sandbox.spawn(listener_argv("--addr", "127.0.0.1", "--port", "8102", "--reuseport")),
            sandbox.spawn(listener_argv("--addr", "127.0.0.1", "--port", "8102", "--reuseport"))]
    try:
        sandbox.wait_for(lambda: listeners(sandbox, 8100) and listeners(sandbox, 8101, "u")
                         and listeners(sandbox, 8102).count("pid=") == 2, 10, "the listeners")
        # dual-stack [::] blocks IPv4's wildcard
        assert second("--port", "8100") == (
            98, "bind: Address already in use (0.0.0.0:8100/tcp)\n")
        # UDP: SO_REUSEADDR on both would share the port; without it on the second, no
        assert second("--udp", "--port", "8101", "--no-reuseaddr")[0] == 98
        assert second("--addr", "127.0.0.1", "--port", "8102")[0] == 98  # not in the group
    finally:
        for pid in pids:
            sandbox.kill(pid)


# -- 3. portguard's records in the real journal ------------------------------------------


def test_journal_event_lands_with_every_field(sandbox: Sandbox, uid: str) -> None:
    message = f"web@b.service: port 8080/tcp held by web@a.service ({uid})"
    cursor = sandbox.cursor()
    out = sandbox.python(emit_code(message), check=True)
    # stderr is a pipe, not the journal: the readable line is echoed, without fields
    assert out.stderr == f"portguard: {message}\n"
    record = sandbox.wait_journal(lambda r: r.get("MESSAGE") == message,
                                  "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    assert_conflict_record(record, message)

    # a multi-line value takes the protocol's length-prefixed form
    multi = f"first line {uid}\nsecond line"
    sandbox.python(emit_code(multi), check=True)
    record = sandbox.wait_journal(lambda r: r.get("MESSAGE") == multi,
                                  "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
    assert_conflict_record(record, multi)


def test_journal_event_from_a_unit_is_attributed_to_it(sandbox: Sandbox, uid: str) -> None:
    unit = f"emit-{uid}.service"
    message = f"conflict from a unit {uid}"
    sentinel = f"sentinel {uid}"
    script = f"/run/emit-{uid}.py"
    sandbox.write_file(script, emit_code(message, after=f"print({sentinel!r}, file=sys.stderr)\n"))
    sandbox.write_unit(unit, f"""\
[Service]
Type=oneshot
Environment=PYTHONPATH={REPO}
ExecStart={PYTHON} {script}
""")
    sandbox.systemctl("start", unit, check=True)
    record = sandbox.wait_journal(lambda r: r.get("MESSAGE") == message, "-u", unit)
    assert record["_SYSTEMD_UNIT"] == unit
    assert_conflict_record(record, message)
    # stderr is the journal stream there ($JOURNAL_STREAM): no echo of the message;
    # the sentinel, written after it on the same stream, proves the stream was read
    sandbox.wait_journal(lambda r: r.get("MESSAGE") == sentinel, "-u", unit)
    texts = [r.get("MESSAGE") for r in sandbox.journal("-u", unit)]
    assert f"portguard: {message}" not in texts


# -- 4. no journal: stderr -----------------------------------------------------------------


def test_journald_stopped_record_goes_to_stderr(fresh_sandbox: Sandbox, uid: str) -> None:
    sb = fresh_sandbox
    sb.systemctl("stop", "systemd-journald.socket", "systemd-journald.service", check=True)
    assert sb.unit_property("systemd-journald.service", "ActiveState") == "inactive"
    message = f"no journal here {uid}"
    out = sb.python(emit_code(message), check=True)
    fields = " ".join(f"{k}={v}" for k, v in CONFLICT_FIELDS.items())
    assert out.stderr == (
        f"portguard: {message} [MESSAGE_ID={Event.CONFLICT.message_id} PRIORITY=4 "
        f"SYSLOG_IDENTIFIER=portguard {fields}]\n")


# -- 5. teardown ---------------------------------------------------------------------------


def sandbox_host_pids(pidns: int) -> set[int]:
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry.name}/ns/pid").st_ino == pidns:
                    pids.add(int(entry.name))
    return pids


def test_teardown_leaves_no_process_or_cgroup_behind(fresh_sandbox: Sandbox, uid: str) -> None:
    sb = fresh_sandbox
    with host_marker("/tmp") as marker:
        exec_start = listener_exec("--port", "7000", "--ignore-term", "--workers", "2")
        sb.write_unit(f"stubborn-{uid}.service", f"[Service]\nExecStart={exec_start}\n")
        sb.systemctl("start", f"stubborn-{uid}.service", check=True)
        sb.spawn(listener_argv("--port", "7001", "--ignore-term", "--workers", "1"))
        sb.wait_for(lambda: listeners(sb, 7000) and listeners(sb, 7001), 10, "listeners")
        pidns = os.stat(f"/proc/{sb.pid}/ns/pid").st_ino
        inside = sandbox_host_pids(pidns)
        assert sb.pid in inside
        assert len(inside) >= 7  # systemd, journald, 3 + 2 listeners
        stage, cgroups = sb._stage, list(sb._cgroup_dirs)
        assert stage and os.path.isdir(stage) and cgroups

        sb.stop()
        assert sandbox_host_pids(pidns) == set()  # the systemd pid among them
        with contextlib.suppress(FileNotFoundError):  # or its pid is someone else's now
            assert os.stat(f"/proc/{sb.pid}/ns/pid").st_ino != pidns
        assert not os.path.exists(stage)
        for path in cgroups:
            assert not os.path.exists(path)
        sb.stop()  # idempotent
        assert marker.exists()  # the host's /tmp is untouched
