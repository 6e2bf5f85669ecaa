"""php-fpm under its packaged phpV-fpm.service (V: 8.2 in Debian 12, 8.4 in 13;
Type=notify, master as root retitled `php-fpm: master process (...)`, pool workers
`php-fpm: pool www` as www-data), its www pool moved from the unix socket to TCP port
9000 on a tmpfs copy of pool.d."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, Guard, guarding

DAEMONS_USED = ["php-fpm", "nginx"]
PORT = 9000


def names(field: Field) -> tuple[str, str, str]:
    """(its unit, its version, its pool directory) in this Debian."""
    v = field.daemon("php-fpm").version
    return f"php{v}-fpm.service", v, f"/etc/php/{v}/fpm/pool.d"


@pytest.fixture
def guard(field: Field) -> Iterator[Guard]:
    field.install("php-fpm")
    unit, v, pool_d = names(field)
    www = Path(field.sb.image_path(pool_d), "www.conf").read_text()
    field.config(pool_d, {"www.conf": www.replace(f"\nlisten = /run/php/php{v}-fpm.sock",
                                                  f"\nlisten = {PORT}")})
    with guarding(field.sb, unit, PORT) as g:
        yield g


def test_hand_started_php_fpm_is_a_stray_stopped_with_its_pool(field: Field, guard: Guard
                                                               ) -> None:
    unit, v, _ = names(field)
    field.spawn_by_hand(f"/usr/sbin/php-fpm{v} --fpm-config /etc/php/{v}/fpm/php-fpm.conf")
    master, by_hand = field.wait_master(PORT)
    assert "php-fpm: master process" in field.ps({master})
    field.start(unit)
    assert field.is_active(unit) == "active"
    after = field.wait_holders(PORT, gone=by_hand)
    assert set(after) <= field.unit_pids(unit), field.ps(after)
    assert not any(field.sb.pid_alive(p) for p in by_hand)
    assert guard.signalled() == {master}
    decided = guard.records(CONFLICT, unit=unit)
    assert len(decided) == 1, [r["MESSAGE"] for r in decided]
    assert decided[0]["PORTGUARD_HOLDER_KIND"] == "stray"
    assert f"(php-fpm{v}, user root)" in decided[0]["MESSAGE"]


def test_nginx_on_its_port_is_foreign_and_left_alone(field: Field, guard: Guard) -> None:
    unit, _, _ = names(field)
    field.install("nginx")
    field.config("/etc/nginx/sites-enabled", {"default": f"server {{ listen {PORT}; }}\n"})
    field.start("nginx.service")
    try:
        field.wait_master(PORT)
        held = field.holders(PORT)
        assert field.start(unit, check=False).returncode != 0
        # Debian 13's unit has Restart=on-failure: each retry is refused again
        restarts = field.sb.unit_property(unit, "Restart")
        assert field.is_active(unit) in (("failed", "activating") if restarts != "no"
                                         else ("failed",)), restarts
        assert field.holders(PORT) == held
        refused = guard.records(REFUSED, unit=unit)
        assert refused and (len(refused) == 1 or restarts != "no"), refused
        assert {r["PORTGUARD_HOLDER_UNIT"] for r in refused} == {"nginx.service"}
        assert {r["PORTGUARD_HOLDER_KIND"] for r in refused} == {"foreign"}
        assert all("systemctl stop nginx.service" in r["MESSAGE"] for r in refused)
        assert guard.signalled() == set()
    finally:
        field.stop("nginx.service")
