"""haproxy under its packaged haproxy.service (Type=notify, `-Ws` master-worker: the master
runs as root, its forked worker drops to user haproxy in a chroot and is the only one that
listens; BindReadOnlyPaths=/dev/log; Restart=always), on a haproxy.cfg of the test's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, guarding

DAEMONS_USED = ["haproxy", "nginx"]
UNIT, NGINX = "haproxy.service", "nginx.service"
PORT = 18080
CFG = f"""\
global
    log /dev/log local0
    chroot /var/lib/haproxy
    stats socket /run/haproxy/admin.sock mode 660 level admin
    user haproxy
    group haproxy

defaults
    log global
    mode http
    timeout connect 5s
    timeout client 50s
    timeout server 50s

frontend web
    bind :{PORT}
    default_backend none

backend none
"""


@pytest.fixture
def haproxy(field: Field) -> Iterator[Field]:
    field.install("haproxy")
    field.config("/etc/haproxy", {"haproxy.cfg": CFG})
    yield field
    field.stop(UNIT)
    field.sb.systemctl("reset-failed", UNIT)


@pytest.fixture
def nginx(field: Field) -> Iterator[dict[int, str]]:
    """The packaged nginx on haproxy's port: another program, another service."""
    field.install("nginx")
    field.config("/etc/nginx/sites-enabled", {"default": f"server {{ listen {PORT}; }}\n"})
    field.start(NGINX)
    # systemd's start returns once the master wrote its pid file; the workers it forks
    # then hold the listener too. Wait for them, or a slow host compares a set still growing.
    deadline = time.monotonic() + 10
    while len(held := field.wait_holders(PORT)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(held) >= 2, held  # nginx's master and at least one worker
    yield held
    field.stop(NGINX)


def test_hand_started_haproxy_is_a_stray_stopped_for_haproxy_service(haproxy: Field) -> None:
    field = haproxy
    with guarding(field.sb, UNIT, PORT) as guard:
        # as an admin would from a root shell: the same binary and config, master-worker
        field.spawn_by_hand("/usr/sbin/haproxy -W -D -f /etc/haproxy/haproxy.cfg")
        held = field.wait_holders(PORT)
        (worker,) = held
        master = int(field.sb.run(["ps", "-o", "ppid=", "-p", str(worker)]).stdout)
        by_hand = field.tree(master)
        assert field.users(by_hand) == {master: "root", worker: "haproxy"}, field.ps(by_hand)

        field.start(UNIT)
        assert field.is_active(UNIT) == "active"
        after = field.wait_holders(PORT, gone=set(held))
        ours = field.unit_pids(UNIT)
        assert set(after) <= ours, field.ps(after)
        assert field.users(ours) == {int(field.sb.unit_property(UNIT, "MainPID")): "root",
                                     **dict.fromkeys(after, "haproxy")}, field.ps(ours)
        assert not any(field.sb.pid_alive(p) for p in by_hand), field.ps(by_hand)
        decided = guard.records(CONFLICT, unit=UNIT)
        assert len(decided) == 1, [r["MESSAGE"] for r in decided]
        assert decided[0]["PORTGUARD_HOLDER_KIND"] == "stray", decided[0]["MESSAGE"]
        # judged by the root master that forked it, not by the haproxy-user worker alone
        assert f"pid {worker} (haproxy, user haproxy) [stray: a copy of {UNIT}'s program " \
            f"started outside any unit (forked by its master, pid {master}, user root)]" \
            in decided[0]["MESSAGE"], decided[0]["MESSAGE"]
        assert guard.signalled() == {worker}  # the listener; its master exits with it


def test_nginx_on_its_port_is_foreign_named_and_left_alone(haproxy: Field,
                                                           nginx: dict[int, str]) -> None:
    field = haproxy
    with guarding(field.sb, UNIT, PORT) as guard:
        assert field.start(UNIT, check=False).returncode != 0
        # Restart=always: systemd retries, each attempt refused, until the start limit
        assert field.is_active(UNIT) in ("failed", "activating")
        assert field.holders(PORT) == nginx  # untouched
        assert field.is_active(NGINX) == "active"
        refused = guard.records(REFUSED, unit=UNIT)
        assert refused, guard.records()
        assert {r["PORTGUARD_HOLDER_UNIT"] for r in refused} == {NGINX}
        assert {r["PORTGUARD_HOLDER_KIND"] for r in refused} == {"foreign"}
        assert "(nginx, user root)" in refused[0]["MESSAGE"]
        assert "systemctl stop nginx.service" in refused[0]["MESSAGE"]
        assert guard.signalled() == set()


def test_why_after_haproxy_really_failed_names_nginx(haproxy: Field,
                                                    nginx: dict[int, str]) -> None:
    field = haproxy  # no portguard config, nothing installed: a plain failed start
    assert field.start(UNIT, check=False).returncode != 0
    field.sb.wait_unit_state(UNIT, "failed", timeout=30)  # Restart=always, start limit
    done = field.sb.portguard("why", UNIT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot bind socket (Address already in use) for [0.0.0.0:{PORT}]" in done.stdout
    assert f"$ systemctl stop {NGINX}" in done.stdout
    doc = json.loads(field.sb.portguard("--json", "why", UNIT).stdout)
    assert {(f["wording"], f["address"], f["port"]) for f in doc["failures"]} == \
        {("haproxy", "0.0.0.0", PORT)}, doc["failures"]
    holders = {(h["pid"], h["unit"], h["kind"]) for p in doc["ports"] for h in p["holders"]}
    assert holders == {(pid, NGINX, "foreign") for pid in nginx}
    assert field.holders(PORT) == nginx  # why only looks
