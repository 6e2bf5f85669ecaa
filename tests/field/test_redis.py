"""redis-server under its packaged template redis-server@.service (User=redis, Type=notify,
heavy sandboxing; /usr/bin/redis-server is a symlink to redis-check-rdb; listens on
127.0.0.1:6379 and [::1]:6379)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import Field
from support.guard import CONFLICT, STOP_UNIT, Guard, guarding

DAEMONS_USED = ["redis"]
TEMPLATE = "redis-server@.service"
PORT = 6379


def instance_conf(field: Field, name: str, *, daemonize: bool = False) -> str:
    """The packaged /etc/redis/redis.conf (the root's) as redis-server@.service's comments
    say to make an instance's: its own pid file and database; logging to the journal."""
    base = Path(field.sb.image_path("/etc/redis/redis.conf")).read_text()
    return base + (f"\ndaemonize {'yes' if daemonize else 'no'}\nlogfile \"\"\n"
                   f"pidfile /run/redis-{name}/redis-server.pid\ndbfilename dump-{name}.rdb\n")


@pytest.fixture
def guard(field: Field) -> Iterator[Guard]:
    field.install("redis")
    with guarding(field.sb, TEMPLATE, PORT, stop="redis-server@*.service") as g:
        yield g


def test_twin_instances_on_one_port_the_second_stops_the_first(field: Field, guard: Guard,
                                                               uid: str) -> None:
    a, b = f"redis-server@a{uid}.service", f"redis-server@b{uid}.service"
    field.config("/etc/redis", {f"redis-a{uid}.conf": instance_conf(field, f"a{uid}"),
                                f"redis-b{uid}.conf": instance_conf(field, f"b{uid}")})
    field.start(a)
    first = field.wait_holders(PORT)
    assert set(first) <= field.unit_pids(a)
    field.start(b)
    assert field.is_active(b) == "active"
    assert field.is_active(a) == "inactive"
    after = field.wait_holders(PORT, gone=set(first))
    assert set(after) <= field.unit_pids(b), field.ps(after)
    stopped = guard.records(STOP_UNIT, unit=b)
    assert [r["PORTGUARD_HOLDER_UNIT"] for r in stopped] == [a]
    decided = guard.records(CONFLICT, unit=b)
    assert len(decided) == 1, [r["MESSAGE"] for r in decided]  # 127.0.0.1 and ::1: one
    assert decided[0]["PORTGUARD_HOLDER_KIND"] == "twin"
    assert "(redis-server, user redis)" in decided[0]["MESSAGE"]
    assert guard.signalled() == set()  # a twin unit is stopped through systemd


def test_hand_started_redis_is_a_stray_named_redis_server(field: Field, guard: Guard,
                                                          uid: str) -> None:
    unit = f"redis-server@h{uid}.service"
    by_hand = instance_conf(field, f"hand{uid}", daemonize=True)
    field.config("/etc/redis", {f"redis-h{uid}.conf": instance_conf(field, f"h{uid}"),
                                f"hand{uid}.conf": by_hand.replace(f"/run/redis-hand{uid}/",
                                                                   "/run/")})
    # as an admin would: the unit's user, the same binary, another config and arguments
    field.spawn_by_hand(f"/usr/bin/redis-server /etc/redis/hand{uid}.conf", user="redis")
    held = field.wait_holders(PORT)
    assert set(field.users(held).values()) == {"redis"}
    who = guard.run("who", str(PORT))
    assert "redis-server" in who.stdout and "redis-check-rdb" not in who.stdout, who.stdout
    doc = json.loads(guard.run("--json", "who", str(PORT)).stdout)
    assert {h["program"] for h in doc["ports"][0]["holders"]} == {"redis-server"}
    field.start(unit)
    assert field.is_active(unit) == "active"
    after = field.wait_holders(PORT, gone=set(held))
    assert set(after) <= field.unit_pids(unit)
    assert guard.signalled() == set(held)
    decided = guard.records(CONFLICT, unit=unit)
    assert len(decided) == 1, [r["MESSAGE"] for r in decided]
    assert decided[0]["PORTGUARD_HOLDER_KIND"] == "stray"
    assert "(redis-server, user redis)" in decided[0]["MESSAGE"]

# -- twins started together (issue 11 item 6) ----------------------------------------
# Two redis-server@ instances (the packaged template: Type=notify, User=redis) started
# together on one port (issue 11 item 6): one runs, the other ends `inactive`, stopped by
# its twin like any stopped unit, not `failed (Result: signal)` because its preflight was
# killed by that stop while it waited for the port's lock.


def test_twins_started_together_one_runs_the_other_ends_inactive(field: Field, guard: Guard,
                                                                 uid: str) -> None:
    sb = field.sb
    for round_ in range(3):
        a, b = (f"redis-server@{round_}a{uid}.service", f"redis-server@{round_}b{uid}.service")
        field.config("/etc/redis", {f"redis-{n}.conf": instance_conf(field, n)
                                    for n in (f"{round_}a{uid}", f"{round_}b{uid}")})
        queued = sb.systemctl("start", "--no-block", a, b)
        assert queued.returncode == 0, queued.stderr

        states = sb.wait_settled(a, b, timeout=60)
        assert sorted(states) == ["active", "inactive"], "\n".join(
            (str(states), field.status(a), field.status(b)))
        winner, loser = (a, b) if states[0] == "active" else (b, a)
        assert sb.unit_property(loser, "Result") == "success", field.status(loser)
        assert "Result: signal" not in field.status(loser)
        held = field.wait_holders(PORT)
        assert set(held) <= field.unit_pids(winner), field.ps(held)
        assert guard.signalled() == set()  # twins go through systemd, never a signal
        sb.systemctl("stop", winner, check=True)
    stops = guard.records(STOP_UNIT)
    assert stops and all(r["PORTGUARD_HOLDER_KIND"] == "twin" for r in stops)
