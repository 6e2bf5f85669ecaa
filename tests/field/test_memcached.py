"""memcached under its packaged memcached.service: ExecStart= is a perl wrapper
(/usr/share/memcached/scripts/systemd-memcached-wrapper) that execs /usr/bin/memcached,
which drops to user memcache itself (no User= in the unit).

The unit file cannot say what the daemon is; its profile can (docs/identity.md,
"Profiles"). Without one, a memcached started by hand is foreign and never touched, and
the refusal says a profile would decide. Adopted the way administrators do (memcached
already runs when `portguard install` is run), the profile is learned from the unit's
own cgroup, and a copy started by hand as memcache is a stray, stopped by policy; another
program as memcache on the port stays foreign."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, Guard

DAEMONS_USED = ["memcached"]
UNIT = "memcached.service"
PORT = 11211
BY_HAND = "/usr/bin/memcached -m 64 -p 11211 -u memcache -l 127.0.0.1 -d"
STORED = f"/var/lib/portguard/profiles/{UNIT}.json"
NO_PROFILE = "no profile yet: run the unit once, or `portguard install` it while it runs"


@pytest.fixture
def memcached(field: Field) -> Iterator[Field]:
    field.install("memcached")
    yield field
    field.stop(UNIT)
    field.sb.systemctl("reset-failed", UNIT)


def by_hand(field: Field, command: str = BY_HAND, *, user: str = "root") -> int:
    field.spawn_by_hand(command, user=user)
    held = field.wait_holders(PORT)
    assert field.users(held) == dict.fromkeys(held, "memcache"), field.ps(held)
    (pid,) = held
    return pid


def gone(field: Field, pid: int) -> None:
    if field.sb.pid_alive(pid):
        field.sb.kill(pid)  # ours: started by this test
    field.sb.wait_for(lambda: not field.holders(PORT), 10, "the port to be free")


@pytest.mark.parametrize(("duplicates", "reason"), [
    ("", f"not memcached.service's program; {NO_PROFILE}"),
    ("\n  duplicates:\n    commands: ['/usr/bin/memcached']",
     f"runs the service's program but as user memcache, not the unit's user; {NO_PROFILE}"),
])
def test_without_a_profile_a_hand_started_memcached_is_foreign_and_never_touched(
        memcached: Field, duplicates: str, reason: str) -> None:
    field = memcached
    field.sb.run(["rm", "-f", STORED])
    pid = by_hand(field)
    guard = Guard(field.sb, f"{UNIT}:\n  ports: ['{PORT}']\n  policy: stop{duplicates}")
    guard.install(UNIT)  # the unit is not running: nothing learned
    try:
        assert field.start(UNIT, check=False).returncode != 0
        # Restart=always: systemd retries (the Restart= loop is issue 11 item 4)
        assert field.is_active(UNIT) in ("failed", "activating")
        assert set(field.holders(PORT)) == {pid}
        refused = guard.records(REFUSED, unit=UNIT)
        by_run = [r["_PID"] for r in refused]
        assert refused and len(by_run) == len(set(by_run)), [r["MESSAGE"] for r in refused]
        assert refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert f"(memcached, user memcache) [foreign: {reason}]" in refused[0]["MESSAGE"]
        assert guard.signalled() == set()
    finally:
        field.stop(UNIT)
        guard.uninstall()
        gone(field, pid)


def test_adopted_while_running_a_copy_started_by_hand_is_a_stray_by_its_profile(
        memcached: Field) -> None:
    """The administrator's flow: memcached runs; `portguard install` (config with ports
    only) learns its profile; later the unit is stopped, a copy started by hand as root
    (dropping to memcache with -u), and `systemctl start` stops the copy."""
    field = memcached
    field.start(UNIT)
    (unit_pid,) = field.wait_holders(PORT)
    assert unit_pid in field.unit_pids(UNIT)
    guard = Guard(field.sb, f"{UNIT}:\n  ports: ['{PORT}']\n  policy: stop")
    done = guard.run("install", UNIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"learned {UNIT}'s profile: /usr/bin/memcached as memcache, listening on "
            f"{PORT}/tcp") in done.stderr, done.stderr
    guard.installed.append(UNIT)
    mode = field.shell(f"stat -c '%U %a' {STORED} /var/lib/portguard/profiles").split()
    assert mode == ["root", "600", "root", "700"], mode
    status = json.loads(guard.run("--json", "status").stdout)
    [unit] = status["services"][0]["units"]
    assert unit["profile"]["user"] == "memcache", unit
    assert unit["profile"]["files"] == ["/usr/bin/memcached"], unit
    # as the packaged memcached.conf says: -l 127.0.0.1 (12), and -l ::1 too (13)
    conf = Path(field.sb.image_path("/etc/memcached.conf")).read_text()
    listens = re.findall(r"^-l (\S+)$", conf, re.M)
    assert "127.0.0.1" in listens, conf
    assert sorted((s["address"], s["port"]) for s in unit["profile"]["sockets"]) == sorted(
        (addr, PORT) for addr in listens), unit
    assert 0 <= unit["profile"]["age_seconds"] < 120, unit
    assert "profile: /usr/bin/memcached as memcache" in guard.run("status").stdout
    try:
        field.stop(UNIT)
        pid = by_hand(field)
        assert field.sb.cgroup_of(pid) == "/"  # in no unit
        field.start(UNIT)
        assert field.is_active(UNIT) == "active"
        assert not field.sb.pid_alive(pid)
        (now,) = field.wait_holders(PORT, gone={pid})
        assert now in field.unit_pids(UNIT)
        [decided] = guard.records(CONFLICT, unit=UNIT)
        assert decided["PORTGUARD_HOLDER_KIND"] == "stray", decided["MESSAGE"]
        assert "outside any unit, by the profile learned at " in decided["MESSAGE"]
        assert "(/usr/bin/memcached as memcache)" in decided["MESSAGE"]
        assert guard.signalled() == {pid}
    finally:
        field.stop(UNIT)
        guard.uninstall()


def test_another_program_as_memcache_on_its_port_is_never_touched(memcached: Field) -> None:
    """The safety side: with the profile learned, a different program running as the
    daemon's own user on its port is foreign."""
    field = memcached
    field.start(UNIT)
    field.wait_holders(PORT)
    guard = Guard(field.sb, f"{UNIT}:\n  ports: ['{PORT}']\n  policy: stop")
    guard.install(UNIT)
    field.stop(UNIT)
    other = field.sb.spawn(["setpriv", "--reuid", "memcache", "--regid", "memcache",
                            "--clear-groups", "/usr/bin/python3", "-m", "http.server",
                            str(PORT), "--bind", "127.0.0.1"], wait_exec=False)
    try:
        held = field.wait_holders(PORT)
        assert field.users(held) == {other: "memcache"}
        assert field.start(UNIT, check=False).returncode != 0
        assert all(field.sb.pid_alive(p) for p in held)
        refused = guard.records(REFUSED, unit=UNIT)
        assert refused and refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert "nor its profile's (memcached as user memcache)" in refused[0]["MESSAGE"], \
            refused[0]["MESSAGE"]
        assert guard.signalled() == set()
    finally:
        field.stop(UNIT)
        guard.uninstall()
        field.sb.kill(other)
        field.sb.wait_for(lambda: not field.holders(PORT), 10, "python to exit")
