"""Two redis-server@ instances (the packaged template: Type=notify, User=redis) started
together on one port (issue 11 item 6): one runs, the other ends `inactive`, stopped by
its twin like any stopped unit, not `failed (Result: signal)` because its preflight was
killed by that stop while it waited for the port's lock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemons import Field
from guard import STOP_UNIT, Guard, guarding
from test_redis import PORT, TEMPLATE, instance_conf

DAEMONS_USED = ["redis"]


@pytest.fixture
def guard(field: Field) -> Iterator[Guard]:
    field.install("redis")
    with guarding(field.sb, TEMPLATE, PORT, stop="redis-server@*.service") as g:
        yield g


def test_twins_started_together_one_runs_the_other_ends_inactive(field: Field, guard: Guard,
                                                                 uid: str) -> None:
    sb = field.sb
    for round_ in range(3):
        a, b = (f"redis-server@{round_}a{uid}.service", f"redis-server@{round_}b{uid}.service")
        field.config("/etc/redis", {f"redis-{round_}a{uid}.conf": instance_conf(f"{round_}a{uid}"),
                                    f"redis-{round_}b{uid}.conf": instance_conf(f"{round_}b{uid}")})
        queued = sb.systemctl("start", "--no-block", a, b)
        assert queued.returncode == 0, queued.stderr

        def settled(a: str = a, b: str = b) -> tuple[str, str] | None:
            if sb.systemctl("list-jobs", "--no-legend", a, b).stdout.strip():
                return None
            states = (field.is_active(a), field.is_active(b))
            return states if not {"activating", "deactivating"} & set(states) else None

        states = sb.wait_for(settled, 60, f"{a} and {b} to settle")
        assert sorted(states) == ["active", "inactive"], "\n".join((str(states), field.status(a),
                                                          field.status(b)))
        winner, loser = (a, b) if states[0] == "active" else (b, a)
        assert sb.unit_property(loser, "Result") == "success", field.status(loser)
        assert "Result: signal" not in field.status(loser)
        held = field.wait_holders(PORT)
        assert set(held) <= field.unit_pids(winner), field.ps(held)
        assert guard.signalled() == set()  # twins go through systemd, never a signal
        sb.systemctl("stop", winner, check=True)
    stops = guard.records(STOP_UNIT)
    assert stops and all(r["PORTGUARD_HOLDER_KIND"] == "twin" for r in stops)
