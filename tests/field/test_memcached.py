"""memcached under its packaged memcached.service: ExecStart= is a perl wrapper
(/usr/share/memcached/scripts/systemd-memcached-wrapper) that execs /usr/bin/memcached,
which drops to user memcache itself (no User= in the unit).

Identity is by the file ExecStart= runs, so a memcached started by hand is not the
wrapper's program: foreign, never touched; even when the config names
/usr/bin/memcached as a duplicate command it runs as memcache, not as the unit's user
(root), so it stays foreign. When in doubt, foreign: these tests pin that down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.daemons import Field
from support.guard import REFUSED, Guard

DAEMONS_USED = ["memcached"]
UNIT = "memcached.service"
PORT = 11211
BY_HAND = "/usr/bin/memcached -m 64 -p 11211 -u memcache -l 127.0.0.1 -d"


@pytest.fixture
def by_hand(field: Field) -> Iterator[int]:
    field.install("memcached")
    field.spawn_by_hand(BY_HAND)
    held = field.wait_holders(PORT)
    assert field.users(held) == dict.fromkeys(held, "memcache"), field.ps(held)
    (pid,) = held
    yield pid
    field.sb.kill(pid)  # ours: started by this test
    field.sb.wait_for(lambda: not field.holders(PORT), 10, "memcached to exit")


@pytest.mark.parametrize(("duplicates", "reason"), [
    ("", "not memcached.service's program"),
    ("\n  duplicates:\n    commands: ['/usr/bin/memcached']",
     "runs the service's program but as user memcache, not the unit's user"),
])
def test_hand_started_memcached_is_foreign_and_never_touched(
        field: Field, by_hand: int, duplicates: str, reason: str) -> None:
    guard = Guard(field.sb, f"{UNIT}:\n  ports: ['{PORT}']\n  policy: stop{duplicates}")
    guard.install(UNIT)
    try:
        assert field.start(UNIT, check=False).returncode != 0
        # Restart=always: systemd retries (the Restart= loop is issue 11 item 4)
        assert field.is_active(UNIT) in ("failed", "activating")
        assert set(field.holders(PORT)) == {by_hand}
        refused = guard.records(REFUSED, unit=UNIT)
        by_run = [r["_PID"] for r in refused]
        assert refused and len(by_run) == len(set(by_run)), [r["MESSAGE"] for r in refused]
        assert refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert f"(memcached, user memcache) [foreign: {reason}]" in refused[0]["MESSAGE"]
        assert guard.signalled() == set()
    finally:
        field.stop(UNIT)
        guard.uninstall()
        field.sb.systemctl("reset-failed", UNIT)
