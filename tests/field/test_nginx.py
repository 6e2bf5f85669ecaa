"""nginx under its packaged nginx.service (Type=forking, master as root retitled
`nginx: master process ...`, workers as www-data, listening on 0.0.0.0:80 and [::]:80)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemons import Field
from guard import REFUSED, Guard

DAEMONS_USED = ["nginx", "lighttpd"]
NGINX = "nginx.service"


@pytest.fixture
def guard(field: Field) -> Iterator[Guard]:
    field.install("nginx")
    g = Guard(field.sb, f"{NGINX}:\n  ports: ['80']\n  policy: stop")
    g.install(NGINX)
    yield g
    field.stop(NGINX)
    g.uninstall()


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
        assert "systemctl stop lighttpd.service" in refused[0]["MESSAGE"] or \
            "lighttpd.service" in field.status(NGINX)
        assert guard.signalled() == set()
    finally:
        field.stop("lighttpd.service")
