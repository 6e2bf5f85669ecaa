"""php-fpm under its packaged php8.2-fpm.service (Type=notify, master as root retitled
`php-fpm: master process (...)`, pool workers `php-fpm: pool www` as www-data), its www
pool moved from the unix socket to TCP port 9000 on a tmpfs copy of pool.d."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, Guard, guarding

DAEMONS_USED = ["php-fpm", "nginx"]
UNIT = "php8.2-fpm.service"
POOL_D = "/etc/php/8.2/fpm/pool.d"
PORT = 9000


@pytest.fixture
def guard(field: Field) -> Iterator[Guard]:
    field.install("php-fpm")
    www = Path(POOL_D, "www.conf").read_text()
    field.config(POOL_D, {"www.conf": www.replace("\nlisten = /run/php/php8.2-fpm.sock",
                                                  f"\nlisten = {PORT}")})
    with guarding(field.sb, UNIT, PORT) as g:
        yield g


def test_hand_started_php_fpm_is_a_stray_stopped_with_its_pool(field: Field, guard: Guard
                                                               ) -> None:
    field.spawn_by_hand("/usr/sbin/php-fpm8.2 --fpm-config /etc/php/8.2/fpm/php-fpm.conf")
    master, by_hand = field.wait_master(PORT)
    assert "php-fpm: master process" in field.ps({master})
    field.start(UNIT)
    assert field.is_active(UNIT) == "active"
    after = field.wait_holders(PORT, gone=by_hand)
    assert set(after) <= field.unit_pids(UNIT), field.ps(after)
    assert not any(field.sb.pid_alive(p) for p in by_hand)
    assert guard.signalled() == {master}
    decided = guard.records(CONFLICT, unit=UNIT)
    assert len(decided) == 1, [r["MESSAGE"] for r in decided]
    assert decided[0]["PORTGUARD_HOLDER_KIND"] == "stray"
    assert "(php-fpm8.2, user root)" in decided[0]["MESSAGE"]


def test_nginx_on_its_port_is_foreign_and_left_alone(field: Field, guard: Guard) -> None:
    field.install("nginx")
    field.config("/etc/nginx/sites-enabled", {"default": f"server {{ listen {PORT}; }}\n"})
    field.start("nginx.service")
    try:
        held = field.wait_holders(PORT)
        assert field.start(UNIT, check=False).returncode != 0
        assert field.is_active(UNIT) == "failed"
        assert field.holders(PORT) == held
        refused = guard.records(REFUSED, unit=UNIT)
        assert len(refused) == 1, [r["MESSAGE"] for r in refused]
        assert refused[0]["PORTGUARD_HOLDER_UNIT"] == "nginx.service"
        assert refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert "systemctl stop nginx.service" in refused[0]["MESSAGE"]
        assert guard.signalled() == set()
    finally:
        field.stop("nginx.service")
