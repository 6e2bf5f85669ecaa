"""Wrapped and self-dropping Debian daemons under their packaged units, judged by the
profiles portguard learns from their own runs (docs/identity.md, "Profiles").

- apache2.service runs `apachectl start` (a sh wrapper): apache2's master runs as root,
  its workers as www-data;
- named.service runs `named -f -u bind` (from /etc/default/named): the unit has no User=,
  named drops to bind;
- dnsmasq.service runs Debian's systemd-helper (sh), which execs dnsmasq; it drops to
  user dnsmasq;
- unbound.service runs unbound, which drops to user unbound.

The administrator's flow, for each: the service already runs when portguard is adopted
(`portguard install` while it runs, a config with its port only); later the unit is
stopped and a copy started by hand the way admins do; then `systemctl start UNIT`: the
copy is a stray of the unit by its profile, stopped, and the unit ends active. The safety
side: another program running as the daemon's own user on its port is never touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, Guard

DAEMONS_USED = ["apache2", "named", "dnsmasq", "unbound"]


class Case(NamedTuple):
    daemon: str  # support.daemons.DAEMONS key
    unit: str
    port: int
    by_hand: str  # as an administrator starts it from a root shell
    program: str  # what the profile learns: the program file ...
    user: str  # ... and the user of the tree's root
    other_user: str  # who runs another program on the port in the safety test


CASES = [
    # apachectl hands a start outside systemd to systemctl unless told it is systemd
    Case("apache2", "apache2.service", 80, "APACHE_STARTED_BY_SYSTEMD=true apachectl start",
         "/usr/sbin/apache2", "root", "www-data"),
    Case("named", "named.service", 53, "named -u bind", "/usr/sbin/named", "bind", "bind"),
    # the user as Debian's helper gives it: a bare `dnsmasq` runs as nobody (foreign)
    Case("dnsmasq", "dnsmasq.service", 53, "dnsmasq -u dnsmasq", "/usr/sbin/dnsmasq",
         "dnsmasq", "dnsmasq"),
    Case("unbound", "unbound.service", 53, "unbound", "/usr/sbin/unbound", "unbound",
         "unbound"),
]


@pytest.fixture(params=CASES, ids=lambda c: c.daemon)
def case(request: pytest.FixtureRequest, field: Field) -> Iterator[Case]:
    c: Case = request.param
    field.install(c.daemon)
    field.sb.run(["rm", "-f", f"/var/lib/portguard/profiles/{c.unit}.json"])
    yield c
    field.stop(c.unit)
    field.sb.systemctl("reset-failed", c.unit)
    field.sb.wait_for(lambda: not field.holders(c.port), 15, f"{c.port} to be free")


def adopt(field: Field, c: Case) -> Guard:
    """The unit runs; `portguard install` learns its profile."""
    field.start(c.unit)
    held = field.wait_holders(c.port)
    assert set(held) <= field.unit_pids(c.unit), field.ps(held)
    guard = Guard(field.sb, f"{c.unit}:\n  ports: ['{c.port}']\n  policy: stop")
    done = guard.run("install", c.unit)
    assert done.returncode == 0, done.stdout + done.stderr
    guard.installed.append(c.unit)
    assert f"learned {c.unit}'s profile: {c.program} as {c.user}, listening on " in \
        done.stderr, done.stderr
    return guard


def test_adopted_while_running_a_copy_started_by_hand_is_a_stray_by_its_profile(
        field: Field, case: Case) -> None:
    c = case
    guard = adopt(field, c)
    try:
        field.stop(c.unit)
        field.sb.wait_for(lambda: not field.holders(c.port), 15, "the unit to let go")
        field.spawn_by_hand(c.by_hand)
        held = field.wait_holders(c.port)
        by_hand = set().union(*(field.tree(p) for p in held))
        assert all(field.sb.cgroup_of(p) == "/" for p in held), field.ps(held)
        field.start(c.unit)
        assert field.is_active(c.unit) == "active", field.status(c.unit)
        field.sb.wait_for(lambda: not any(field.sb.pid_alive(p) for p in by_hand), 10,
                          "the copy to be gone")
        now = field.wait_holders(c.port, gone=by_hand)
        assert set(now) <= field.unit_pids(c.unit), field.ps(now)
        decided = guard.records(CONFLICT, unit=c.unit)
        assert decided and {r["PORTGUARD_HOLDER_KIND"] for r in decided} == {"stray"}, \
            [r["MESSAGE"] for r in decided]
        said = decided[0]["MESSAGE"]
        assert "outside any unit" in said and "by the profile learned at " in said, said
        assert f"({c.program} as {c.user})" in said, said
        assert guard.signalled() and guard.signalled() <= by_hand
    finally:
        field.stop(c.unit)
        guard.uninstall()


def test_another_program_as_the_daemons_user_on_its_port_is_never_touched(
        field: Field, case: Case) -> None:
    c = case
    guard = adopt(field, c)
    field.stop(c.unit)
    field.sb.wait_for(lambda: not field.holders(c.port), 15, "the unit to let go")
    # python's http.server as the daemon's own (worker) user, allowed a port below 1024
    group = field.shell(f"id -g {c.other_user}").strip()  # dnsmasq's is nogroup
    other = field.sb.spawn(
        ["setpriv", "--reuid", c.other_user, "--regid", group, "--clear-groups",
         "--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service",
         "/usr/bin/python3", "-m", "http.server", str(c.port), "--bind", "127.0.0.1"],
        wait_exec=False)
    try:
        held = field.wait_holders(c.port)
        assert field.users(held) == {other: c.other_user}, field.ps(held)
        assert field.start(c.unit, check=False).returncode != 0
        assert field.sb.pid_alive(other)
        refused = guard.records(REFUSED, unit=c.unit)
        assert refused and refused[0]["PORTGUARD_HOLDER_KIND"] == "foreign"
        assert "nor its profile's" in refused[0]["MESSAGE"], refused[0]["MESSAGE"]
        assert guard.signalled() == set()
    finally:
        field.stop(c.unit)
        guard.uninstall()
        field.sb.kill(other)


# Holds PORT over TCP and UDP, IPv4 and IPv6 wildcards, as root: another program.
HOLD = """
import socket, sys, time
held = []
for family, any_ in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_, int(sys.argv[1])))
        if kind == socket.SOCK_STREAM:
            s.listen()
        held.append(s)
time.sleep(3600)
"""


@pytest.mark.parametrize(("daemon", "source"), [
    ("apache2", "message"),  # (98)Address already in use: ... could not bind to ... :80
    ("dnsmasq", "message"),  # failed to create listening socket for port 53: Address ...
    ("unbound", "profile"),  # error: bind: address already in use (no port)
])
def test_why_names_the_port_and_the_holder_of_a_real_failure(
        field: Field, daemon: str, source: str) -> None:
    """named is not here: at its default log level it says `creating IPv4 interface lo
    failed; interface ignored`, never the kernel's words, so `why` finds no bind failure."""
    import json
    [c] = [c for c in CASES if c.daemon == daemon]
    field.install(c.daemon)
    guard = adopt(field, c)  # the profile names unbound's ports: its line does not
    field.stop(c.unit)
    guard.uninstall()  # a plain failed start: nothing guards it
    field.sb.wait_for(lambda: not field.holders(c.port), 15, "the unit to let go")
    holder = field.sb.spawn(["/usr/bin/python3", "-c", HOLD, str(c.port)], wait_exec=False)
    try:
        field.wait_holders(c.port)
        assert field.start(c.unit, check=False).returncode != 0
        done = field.sb.portguard("--json", "why", c.unit)
        assert done.returncode == 1, done.stdout + done.stderr
        doc = json.loads(done.stdout)
        ports = {(p["port"], p["source"]) for p in doc["ports"]}
        assert (c.port, source) in ports, doc["ports"]
        holders = {(h["pid"], h["kind"]) for p in doc["ports"] for h in p["holders"]}
        assert holders == {(holder, "foreign")}, doc["ports"]
        text = field.sb.portguard("why", c.unit).stdout
        assert f"pid {holder}" in text and str(c.port) in text, text
    finally:
        field.stop(c.unit)
        field.sb.systemctl("reset-failed", c.unit)
        field.sb.kill(holder)


def test_with_no_config_entry_at_all_install_guards_the_learned_ports(field: Field) -> None:
    """Zero-config: named is not in the config; `portguard install` while it runs learns
    its profile, and its guarded starts are checked on the ports named listened on."""
    import json
    [c] = [c for c in CASES if c.daemon == "named"]
    field.install(c.daemon)
    field.sb.run(["rm", "-f", f"/var/lib/portguard/profiles/{c.unit}.json"])
    field.start(c.unit)
    field.wait_holders(c.port)
    guard = Guard(field.sb, "placeholder.service:\n  ports: ['9']")  # no named.service
    done = guard.run("install", c.unit)
    assert done.returncode == 0, done.stdout + done.stderr
    guard.installed.append(c.unit)
    assert f"learned {c.unit}'s profile: {c.program} as {c.user}" in done.stderr
    try:
        shown = guard.run("status").stdout
        assert f"{c.unit}  (policy stop, on_foreign fail; not in the config: its ports are " \
            "its profile's)" in shown, shown
        doc = json.loads(guard.run("--json", "status").stdout)
        [named] = [s for s in doc["services"] if s["service"] == c.unit]
        assert named["ports_from"] == "profile"
        assert {p["spec"] for p in named["ports"]} >= {f"127.0.0.1:{c.port}/tcp",
                                                       f"127.0.0.1:{c.port}/udp"}, named
        field.stop(c.unit)
        field.sb.wait_for(lambda: not field.holders(c.port), 15, "the unit to let go")
        field.spawn_by_hand(c.by_hand)
        held = field.wait_holders(c.port)
        field.start(c.unit)
        assert field.is_active(c.unit) == "active", field.status(c.unit)
        assert not any(field.sb.pid_alive(p) for p in held)
        decided = [r for r in guard.records(CONFLICT, unit=c.unit)
                   if r["PORTGUARD_HOLDER_KIND"] != "lingering"]  # a closed connection's
        assert decided and {r["PORTGUARD_HOLDER_KIND"] for r in decided} == {"stray"}
        assert "by the profile learned at " in decided[0]["MESSAGE"]
        assert guard.signalled() <= set(held)
    finally:
        field.stop(c.unit)
        guard.uninstall()


def test_discover_writes_what_the_wrapped_daemons_really_run(field: Field) -> None:
    """`discover` while apache2 (behind apachectl) and unbound (dropping to unbound) run:
    each entry says the program and user its listeners really are."""
    from portguard.config.schema import loads
    running = [c for c in CASES if c.daemon in ("apache2", "unbound")]
    for c in running:
        field.install(c.daemon)
        field.start(c.unit)
        field.wait_holders(c.port)
    try:
        done = field.sb.portguard("discover")
        assert done.returncode == 0, done.stdout + done.stderr
        runs = {s.name: (s.program, s.user) for s in loads(done.stdout).services}
        for c in running:
            assert runs[c.unit] == (c.program, c.user), done.stdout
    finally:
        for c in running:
            field.stop(c.unit)
