"""`portguard why` and `portguard discover` on real Debian daemons under their packaged
units: nginx that really failed because lighttpd (packaged config: port 80) holds its
port, with no portguard config at all; and a config discovered from running nginx and
redis-server that check-config accepts and that preflight then guards nginx with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import Field
from support.guard import KILL, SIGNAL

DAEMONS_USED = ["nginx", "lighttpd", "redis"]
NGINX, LIGHTTPD, REDIS = "nginx.service", "lighttpd.service", "redis-server.service"


@pytest.fixture
def daemons(field: Field) -> Iterator[Field]:
    for name in DAEMONS_USED:
        field.install(name)
    yield field
    for unit in (NGINX, LIGHTTPD, REDIS):
        field.stop(unit)
        field.sb.systemctl("reset-failed", unit)


def test_why_after_nginx_really_failed_names_lighttpd_and_the_fix(daemons: Field) -> None:
    field = daemons
    field.start(LIGHTTPD)
    held = field.wait_holders(80)
    assert field.start(NGINX, check=False).returncode != 0
    assert field.is_active(NGINX) == "failed"
    assert field.sb.run(["test", "-e", "/etc/portguard/config.yaml"]).returncode != 0

    done = field.sb.portguard("why", NGINX)  # a new user: no config anywhere
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bind() to 0.0.0.0:80 failed (98: Address already in use)" in done.stdout
    assert "$ systemctl stop lighttpd.service" in done.stdout
    doc = json.loads(field.sb.portguard("--json", "why", NGINX).stdout)
    (port,) = [p for p in doc["ports"] if p["address"] == "0.0.0.0"]
    assert (port["port"], port["source"], port["free"]) == (80, "message", False)
    assert {h["pid"] for h in port["holders"]} == set(held)  # what ss says
    assert {(h["unit"], h["kind"]) for h in port["holders"]} == {(LIGHTTPD, "foreign")}
    assert field.is_active(LIGHTTPD) == "active"  # why only looks

    field.stop(LIGHTTPD)
    done = field.sb.portguard("why", NGINX)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"the port is free now: `systemctl restart {NGINX}`" in done.stdout
    field.start(NGINX)  # and it does start now
    assert field.is_active(NGINX) == "active"


def test_why_after_lighttpd_restarted_until_the_start_limit_names_nginx(daemons: Field
                                                                        ) -> None:
    """lighttpd's packaged unit has Restart=on-failure: it fails again and again against
    nginx on 80 until systemd's start limit stops it; the newest run still explains."""
    field = daemons
    field.start(NGINX)
    held = field.wait_holders(80)
    field.start(LIGHTTPD, check=False)
    field.sb.wait_unit_state(LIGHTTPD, "failed", timeout=30)
    doc = json.loads(field.sb.portguard("--json", "why", LIGHTTPD).stdout)
    assert doc["exit_status"] == 1, doc
    assert doc["failures"][0]["wording"] == "lighttpd"
    # 1.4.69 (Debian 12): "can't bind to socket: [::]:80: ..."; 1.4.79 (13): "bind() [::]:80: ..."
    assert "[::]:80: Address already in use" in doc["failures"][0]["line"], doc["failures"]
    # Debian's lighttpd binds [::]:80 first (use-ipv6.pl) and stops at that failure
    assert {(p["port"], p["address"]) for p in doc["ports"]} == {(80, "::")}
    holders = {(h["pid"], h["unit"], h["kind"]) for p in doc["ports"] for h in p["holders"]}
    assert {pid for pid, _, _ in holders} <= set(held)
    assert {(u, k) for _, u, k in holders} == {(NGINX, "foreign")}
    assert doc["ports"][0]["next"][0]["command"] == f"systemctl stop {NGINX}"


def test_why_reads_redis_words_when_redis_logs_to_the_journal(daemons: Field) -> None:
    """Debian's redis logs to /var/log/redis by default (why then finds no bind failure in
    the journal and says so, exit 3); with `logfile ""` its words are in the journal."""
    field = daemons
    holder = field.sb.spawn(["/usr/bin/python3", "-m", "http.server", "6379",
                             "--bind", "127.0.0.1"])
    try:
        field.wait_holders(6379)
        field.start(REDIS, check=False)
        field.sb.wait_unit_state(REDIS, "failed", "activating", timeout=30)
        field.stop(REDIS)
        assert field.sb.portguard("why", REDIS).returncode == 3
        conf = Path(field.sb.image_path("/etc/redis/redis.conf")).read_text()
        field.config("/etc/redis", {"redis.conf": conf.replace(
            "logfile /var/log/redis/redis-server.log", 'logfile ""')})
        field.sb.systemctl("reset-failed", REDIS)
        field.start(REDIS, check=False)
        field.sb.wait_journal(lambda r: "Could not create server TCP" in str(r.get("MESSAGE")),
                              "-u", REDIS, timeout=30)
        field.stop(REDIS)
        doc = json.loads(field.sb.portguard("--json", "why", REDIS).stdout)
        assert doc["exit_status"] == 1, doc
        assert {(f["wording"], f["port"]) for f in doc["failures"]} >= {("redis", 6379)}
        holders = {h["pid"] for p in doc["ports"] for h in p["holders"]}
        assert holders == {holder}
        assert {h["kind"] for p in doc["ports"] for h in p["holders"]} == {"foreign"}
    finally:
        field.sb.kill(holder)


def test_discovered_config_passes_check_config_and_guards_nginx(daemons: Field,
                                                                uid: str) -> None:
    field = daemons
    field.start(NGINX)
    field.start(REDIS)
    field.wait_holders(80)
    field.wait_holders(6379)
    path = f"/etc/portguard/discovered-{uid}.yaml"
    done = field.sb.portguard("discover", "--write", path)
    assert done.returncode == 0, done.stderr
    text = field.sb.read_file(path)
    assert f'  {NGINX}:\n    ports: ["0.0.0.0:80/tcp", "[::]:80/tcp"]' in text
    assert f'  {REDIS}:\n    ports: ["127.0.0.1:6379/tcp", "[::1]:6379/tcp"]' in text
    assert "/usr/sbin/nginx (nginx: master process" in text
    assert "/usr/bin/redis-check-rdb (/usr/bin/redis-server 127.0.0.1:6379)" in text
    checked = field.sb.portguard("--config", path, "check-config")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # guard nginx with it: a copy started by hand holds 80; the unit's start clears it
    field.stop(NGINX)
    cursor = field.sb.cursor()
    installed = field.sb.portguard("--config", path, "install", NGINX)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
        field.spawn_by_hand("/usr/sbin/nginx")
        stray = field.wait_holders(80)
        field.start(NGINX)
        assert field.is_active(NGINX) == "active"
        now = field.wait_holders(80, gone=set(stray))
        assert set(now) <= field.unit_pids(NGINX)
        signalled = {int(r["PORTGUARD_HOLDER_PID"]) for r in field.sb.journal(
            "SYSLOG_IDENTIFIER=portguard", since_cursor=cursor)
            if r.get("MESSAGE_ID") in (SIGNAL, KILL)}
        assert signalled & set(stray)
    finally:
        field.sb.portguard("--config", path, "uninstall", NGINX)
