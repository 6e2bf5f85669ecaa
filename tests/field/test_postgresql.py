"""PostgreSQL V (15 in Debian 12, 17 in 13) under Debian's packaged postgresql@.service
(Type=forking; ExecStart= is `pg_ctlcluster --skip-systemctl-redirect %i start`, a perl
wrapper whose postmaster runs as user postgres; no User= in the unit; children retitled
`postgres: V/main: ...`). Clusters V/main and V/other are made inside by
pg_createcluster, on one port, in a tmpfs over /var/lib/postgresql and /etc/postgresql
(the host's cluster is never used).

Identity (docs/identity.md, "Profiles"): the unit's program is the wrapper, and the
postmaster runs as postgres, not as the unit's user (root). Without a profile a
postmaster started outside the unit is foreign and never touched, even when the config
names the postgres binary in `duplicates.commands`; once `portguard install` has learned
the instance's profile while it ran (postgres as user postgres), it is a stray.
Another instance of the template on the same port is a twin, stopped through systemd."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, STOP_UNIT, guarding

DAEMONS_USED = ["postgresql"]
TEMPLATE = "postgresql@.service"
PORT = 15432
NO_PROFILE = "no profile yet: run the unit once, or `portguard install` it while it runs"


class Pg(NamedTuple):
    """The clusters' field and the names its Debian's PostgreSQL version gives."""

    field: Field
    v: str  # 15, 17

    @property
    def main(self) -> str:
        return f"postgresql@{self.v}-main.service"

    @property
    def other(self) -> str:
        return f"postgresql@{self.v}-other.service"

    @property
    def postgres(self) -> str:
        return f"/usr/lib/postgresql/{self.v}/bin/postgres"

    @property
    def by_hand(self) -> str:
        return f"pg_ctlcluster --skip-systemctl-redirect {self.v} main start"


@pytest.fixture(scope="module")
def clusters(field: Field) -> Pg:
    """V/main and V/other on PORT, made as an administrator would, inside."""
    v = field.install("postgresql").version
    for d in ("/var/lib/postgresql", "/etc/postgresql"):  # the host's cluster stays put
        assert field.shell(f"findmnt -n -o FSTYPE {d}").strip() == "tmpfs"
    made = field.sb.run(["/bin/sh", "-c", f"set -e; pg_dropcluster {v} main; "
                         f"pg_createcluster -p {PORT} {v} main; "
                         f"pg_createcluster -p {PORT} {v} other"], timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    return Pg(field, v)


@pytest.fixture
def pg(clusters: Pg) -> Iterator[Pg]:
    yield clusters
    clusters.field.sb.systemctl("stop", clusters.main, clusters.other, timeout=60)
    clusters.field.sb.systemctl("reset-failed", clusters.main, clusters.other)


def postmaster(pg: Pg, cluster: str) -> tuple[int, set[int]]:
    """The postmaster holding PORT, checked to be `cluster`'s: (pid, it and its children)."""
    field = pg.field
    (pid,) = field.wait_holders(PORT)
    field.sb.wait_for(lambda: len(field.tree(pid)) > 1, 10, "postgres's children")
    pids = field.tree(pid)
    shown = field.ps(pids)
    assert f"{pg.postgres} -D /var/lib/postgresql/{pg.v}/{cluster}" in shown, shown
    assert f"postgres: {pg.v}/{cluster}: checkpointer" in shown, shown
    assert set(field.users(pids).values()) == {"postgres"}, shown
    return pid, pids


def test_another_cluster_of_the_template_on_the_port_is_a_twin_stopped_by_systemd(
        pg: Pg) -> None:
    field = pg.field
    with guarding(field.sb, TEMPLATE, PORT, stop="postgresql@*.service") as guard:
        field.start(pg.main)
        first, _ = postmaster(pg, "main")
        assert first in field.unit_pids(pg.main)
        field.start(pg.other)
        assert field.is_active(pg.other) == "active"
        assert field.is_active(pg.main) == "inactive"
        now, _ = postmaster(pg, "other")
        assert now in field.unit_pids(pg.other)
        [stopped] = guard.records(STOP_UNIT, unit=pg.other)
        assert stopped["PORTGUARD_HOLDER_UNIT"] == pg.main
        [decided] = guard.records(CONFLICT, unit=pg.other)
        assert decided["PORTGUARD_HOLDER_KIND"] == "twin"
        assert f"pid {first} (postgres, user postgres)" in decided["MESSAGE"]
        assert guard.signalled() == set()  # a twin unit is stopped through systemd


@pytest.mark.parametrize(("duplicates", "reason"), [
    ("", f"not {TEMPLATE}'s program; {NO_PROFILE}"),
    ("  duplicates:\n    commands: ['{postgres}']\n",
     f"runs the service's program but as user postgres, not the unit's user; {NO_PROFILE}"),
])
def test_a_postmaster_started_outside_the_unit_is_foreign_and_never_touched(
        pg: Pg, duplicates: str, reason: str) -> None:
    """`pg_ctlcluster --skip-systemctl-redirect V main start` from a root shell: the same
    cluster's postmaster, outside the unit, as user postgres."""
    field = pg.field
    field.sb.run(["rm", "-f", f"/var/lib/portguard/profiles/{pg.main}.json"])
    field.spawn_by_hand(pg.by_hand)
    try:
        pid, by_hand = postmaster(pg, "main")
        assert field.sb.cgroup_of(pid) == "/"  # in no unit
        with guarding(field.sb, TEMPLATE, PORT, keys=duplicates.format(postgres=pg.postgres),
                      stop="postgresql@*.service") as guard:
            assert field.start(pg.main, check=False).returncode != 0
            assert field.is_active(pg.main) == "failed"
            assert all(field.sb.pid_alive(p) for p in by_hand), field.ps(by_hand)
            assert set(field.holders(PORT)) == {pid}
            [refused] = guard.records(REFUSED, unit=pg.main)
            assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
            assert f"pid {pid} (postgres, user postgres) [foreign: {reason}]" in \
                refused["MESSAGE"], refused["MESSAGE"]
            assert guard.signalled() == set()
    finally:
        field.sb.run(["pg_ctlcluster", "--skip-systemctl-redirect", pg.v, "main", "stop"],
                     timeout=60)
        field.sb.wait_for(lambda: not field.holders(PORT), 10, "the postmaster to stop")


def test_adopted_while_running_a_postmaster_started_by_hand_is_a_stray_by_its_profile(
        pg: Pg) -> None:
    """The administrator's flow: V/main runs under its unit; `portguard install` of the
    instance (config with ports only, on the template) learns what pg_ctlcluster really
    starts: postgres as user postgres. Later the unit is stopped, the cluster started by
    hand with pg_ctlcluster, and `systemctl start` stops that postmaster."""
    field = pg.field
    with guarding(field.sb, TEMPLATE, PORT, stop="postgresql@*.service") as guard:
        field.start(pg.main)
        postmaster(pg, "main")
        done = guard.run("install", pg.main)
        assert done.returncode == 0, done.stdout + done.stderr
        guard.installed.append(pg.main)
        assert f"learned {pg.main}'s profile: {pg.postgres} as postgres, listening on " \
            f"{PORT}/tcp" in done.stderr, done.stderr
        field.stop(pg.main)
        field.spawn_by_hand(pg.by_hand)
        pid, by_hand = postmaster(pg, "main")
        assert field.sb.cgroup_of(pid) == "/"
        field.start(pg.main)
        assert field.is_active(pg.main) == "active"
        assert not any(field.sb.pid_alive(p) for p in by_hand), field.ps(by_hand)
        now, _ = postmaster(pg, "main")
        assert now in field.unit_pids(pg.main)
        [decided] = guard.records(CONFLICT, unit=pg.main)
        assert decided["PORTGUARD_HOLDER_KIND"] == "stray", decided["MESSAGE"]
        assert "by the profile learned at " in decided["MESSAGE"]
        assert f"({pg.postgres} as postgres)" in decided["MESSAGE"], decided["MESSAGE"]
        assert pid in guard.signalled()


def why(field: Field, unit: str) -> dict[str, object]:
    done = field.sb.portguard("--json", "why", unit)
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def test_why_reads_postgres_words_when_another_program_holds_the_port(pg: Pg) -> None:
    """Debian's /etc/hosts names localhost as 127.0.0.1 and ::1: postgres binds both and
    starts if either works, so another program holds the port on both."""
    field = pg.field  # no portguard config, nothing installed: a plain failed start
    holders = {field.sb.spawn(["/usr/bin/python3", "-m", "http.server", str(PORT),
                               "--bind", addr]) for addr in ("127.0.0.1", "::1")}
    try:
        field.sb.wait_listening(PORT, count=2)
        assert field.start(pg.main, check=False).returncode != 0
        assert field.is_active(pg.main) == "failed"
        done = field.sb.portguard("why", pg.main)
        assert done.returncode == 1, done.stdout + done.stderr
        for family, addr in (("IPv4", "127.0.0.1"), ("IPv6", "::1")):
            assert f'could not bind {family} address "{addr}": Address already in use' in \
                done.stdout, done.stdout
        python = os.readlink(field.sb.image_path("/usr/bin/python3"))  # python3.11, 3.13
        assert f"{python} http.server on 127.0.0.1:{PORT}" in done.stdout, done.stdout
        for holder in holders:
            assert f"pid {holder}, not {pg.main}'s program, holds it" in done.stdout
        doc = why(field, pg.main)
        assert sorted((f["wording"], f["address"], f["port"]) for f in doc["failures"]) == [
            ("postgres", "127.0.0.1", PORT), ("postgres", "::1", PORT)], doc["failures"]
        assert {(h["pid"], h["kind"]) for p in doc["ports"] for h in p["holders"]} == \
            {(holder, "foreign") for holder in holders}
    finally:
        for holder in holders:
            field.sb.kill(holder)


def test_why_reads_pg_ctlcluster_words_when_the_other_cluster_holds_the_port(
        pg: Pg) -> None:
    """pg_ctlcluster sees the other cluster's socket lock on the port and refuses before
    postgres tries to bind: its own words name the port."""
    field = pg.field
    field.start(pg.other)
    other, _ = postmaster(pg, "other")
    assert field.start(pg.main, check=False).returncode != 0
    assert field.is_active(pg.main) == "failed"
    done = field.sb.portguard("why", pg.main)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("Error: Port conflict: another instance is already running on "
            f"/var/run/postgresql with port {PORT}") in done.stdout, done.stdout
    assert f"$ systemctl stop {pg.other}" in done.stdout, done.stdout
    doc = why(field, pg.main)
    assert [(f["wording"], f["port"]) for f in doc["failures"]] == [
        ("pg_ctlcluster", PORT)], doc["failures"]
    holders = {(h["pid"], h["unit"], h["kind"]) for p in doc["ports"] for h in p["holders"]}
    assert holders == {(other, pg.other, "twin")}, holders
