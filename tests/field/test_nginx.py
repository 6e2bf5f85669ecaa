"""nginx under its packaged nginx.service (Type=forking, master as root retitled
`nginx: master process ...`, workers as www-data, listening on 0.0.0.0:80 and [::]:80)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.daemons import Field
from support.guard import CONFLICT, PORTS_CLEAR, REFUSED, Guard, guarding

DAEMONS_USED = ["nginx", "lighttpd"]
NGINX = "nginx.service"


@pytest.fixture(params=["", "  duplicates:\n    commands: ['/usr/sbin/nginx']"],
                ids=["execstart", "commands"])
def guard(field: Field, request: pytest.FixtureRequest) -> Iterator[Guard]:
    """nginx.service guarded; matched by its ExecStart= alone, and with the README's
    `duplicates.commands` too (which once made the www-data workers count)."""
    field.install("nginx")
    with guarding(field.sb, NGINX, 80, keys=request.param) as g:
        yield g


def test_another_daemon_on_80_is_foreign_named_and_left_alone(field: Field, guard: Guard
                                                              ) -> None:
    field.install("lighttpd")
    field.start("lighttpd.service")
    try:
        held = field.wait_holders(80)
        started = field.start(NGINX, check=False)
        assert started.returncode != 0
        assert field.is_active(NGINX) == "failed"
        assert field.holders(80) == held  # lighttpd untouched
        assert field.is_active("lighttpd.service") == "active"
        refused = guard.records(REFUSED, unit=NGINX)
        assert len(refused) == 1, [r["MESSAGE"] for r in refused]
        assert refused[0]["PORTGUARD_HOLDER_UNIT"] == "lighttpd.service"
        assert refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert "lighttpd" in refused[0]["MESSAGE"]
        assert "systemctl stop lighttpd.service" in refused[0]["MESSAGE"]
        assert "lighttpd.service" in field.status(NGINX)  # `Status:`, the unit's own lines
        assert guard.signalled() == set()
    finally:
        field.stop("lighttpd.service")


def hand_started_nginx(field: Field) -> tuple[int, set[int]]:
    """`/usr/sbin/nginx` from a root shell, outside any unit: it daemonizes; its master
    (root) retitles itself and its workers run as www-data. (master pid, all pids)."""
    field.spawn_by_hand("/usr/sbin/nginx")
    master, pids = field.wait_master(80)
    assert "nginx: master process /usr/sbin/nginx" in field.ps({master})
    return master, pids


def test_hand_started_nginx_is_a_stray_stopped_for_nginx_service(field: Field, guard: Guard
                                                                 ) -> None:
    master, by_hand = hand_started_nginx(field)
    field.start(NGINX)
    assert field.is_active(NGINX) == "active"
    ours = field.unit_pids(NGINX)
    after = field.holders(80)
    assert after and set(after) <= ours, field.ps(after)
    assert not any(field.sb.pid_alive(p) for p in by_hand), field.ps(by_hand)
    # the master was signalled (through a pidfd); its workers went with it
    assert guard.signalled() == {master}
    decided = guard.records(CONFLICT, unit=NGINX)
    assert len(decided) == 1, [r["MESSAGE"] for r in decided]  # IPv4 + IPv6: one record
    assert decided[0]["PORTGUARD_HOLDER_KIND"] == "stray"
    assert decided[0]["PORTGUARD_HOLDER_PID"] == str(master)
    assert "(nginx, user root)" in decided[0]["MESSAGE"]
    assert "nginx.service's program started outside any unit" in decided[0]["MESSAGE"]


def test_no_remnant_when_the_master_is_killed_the_next_start_is_clear(field: Field,
                                                                      guard: Guard) -> None:
    """Remnant (DESIGN case 1) does not happen to nginx under its packaged unit: with
    KillMode=mixed systemd SIGKILLs the workers as soon as the master dies."""
    field.start(NGINX)
    master, _ = field.wait_master(80)
    field.sb.kill(master)
    field.sb.wait_for(lambda: not field.holders(80), 10, "the workers to be killed")
    assert field.is_active(NGINX) == "failed"
    assert "Killing process" in field.status(NGINX)
    field.start(NGINX)
    assert field.is_active(NGINX) == "active"
    assert guard.records(PORTS_CLEAR, unit=NGINX)
    assert guard.records(CONFLICT, unit=NGINX) == []


def test_orphaned_workers_of_a_hand_started_nginx_are_never_touched(field: Field,
                                                                    guard: Guard) -> None:
    """The master of a hand-started nginx SIGKILLed: its www-data workers keep :80,
    outside any unit. Judged by themselves they run as another user than nginx.service:
    foreign, refused, not signalled."""
    master, pids = hand_started_nginx(field)
    workers = pids - {master}
    field.sb.kill(master)
    try:
        field.sb.wait_for(lambda: set(field.holders(80)) == workers, 10, "orphaned workers")
        assert field.start(NGINX, check=False).returncode != 0
        assert set(field.holders(80)) == workers
        refused = guard.records(REFUSED, unit=NGINX)
        assert len(refused) == 1, [r["MESSAGE"] for r in refused]
        assert refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert "as user www-data, not the unit's user" in refused[0]["MESSAGE"]
        assert guard.signalled() == set()
    finally:
        for pid in workers:  # ours: started by this test
            field.sb.kill(pid)
