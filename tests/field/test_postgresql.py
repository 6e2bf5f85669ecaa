"""PostgreSQL 15 under Debian's packaged postgresql@.service (Type=forking; ExecStart= is
`pg_ctlcluster --skip-systemctl-redirect %i start`, a perl wrapper whose postmaster runs
as user postgres; no User= in the unit; children retitled `postgres: 15/main: ...`).
Clusters 15/main and 15/other are made inside by pg_createcluster, on one port, in a
tmpfs over /var/lib/postgresql and /etc/postgresql (the host's cluster is never used).

Identity (docs/identity.md, "Profiles"): the unit's program is the wrapper, and the
postmaster runs as postgres, not as the unit's user (root). Without a profile a
postmaster started outside the unit is foreign and never touched, even when the config
names the postgres binary in `duplicates.commands`; once `portguard install` has learned
the instance's profile while it ran (postgres as user postgres), it is a stray.
Another instance of the template on the same port is a twin, stopped through systemd."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, STOP_UNIT, guarding

DAEMONS_USED = ["postgresql"]
TEMPLATE = "postgresql@.service"
MAIN, OTHER = "postgresql@15-main.service", "postgresql@15-other.service"
PORT = 15432
POSTGRES = "/usr/lib/postgresql/15/bin/postgres"
NO_PROFILE = "no profile yet: run the unit once, or `portguard install` it while it runs"
BY_HAND = "pg_ctlcluster --skip-systemctl-redirect 15 main start"


@pytest.fixture(scope="module")
def clusters(field: Field) -> Field:
    """15/main and 15/other on PORT, made as an administrator would, inside."""
    field.install("postgresql")
    for d in ("/var/lib/postgresql", "/etc/postgresql"):  # the host's cluster stays put
        assert field.shell(f"findmnt -n -o FSTYPE {d}").strip() == "tmpfs"
    made = field.sb.run(["/bin/sh", "-c", "set -e; pg_dropcluster 15 main; "
                         f"pg_createcluster -p {PORT} 15 main; "
                         f"pg_createcluster -p {PORT} 15 other"], timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    return field


@pytest.fixture
def pg(clusters: Field) -> Iterator[Field]:
    yield clusters
    clusters.sb.systemctl("stop", MAIN, OTHER, timeout=60)
    clusters.sb.systemctl("reset-failed", MAIN, OTHER)


def postmaster(field: Field, cluster: str) -> tuple[int, set[int]]:
    """The postmaster holding PORT, checked to be `cluster`'s: (pid, it and its children)."""
    (pid,) = field.wait_holders(PORT)
    field.sb.wait_for(lambda: len(field.tree(pid)) > 1, 10, "postgres's children")
    pids = field.tree(pid)
    shown = field.ps(pids)
    assert f"{POSTGRES} -D /var/lib/postgresql/15/{cluster}" in shown, shown
    assert f"postgres: 15/{cluster}: checkpointer" in shown, shown
    assert set(field.users(pids).values()) == {"postgres"}, shown
    return pid, pids


def test_another_cluster_of_the_template_on_the_port_is_a_twin_stopped_by_systemd(
        pg: Field) -> None:
    field = pg
    with guarding(field.sb, TEMPLATE, PORT, stop="postgresql@*.service") as guard:
        field.start(MAIN)
        first, _ = postmaster(field, "main")
        assert first in field.unit_pids(MAIN)
        field.start(OTHER)
        assert field.is_active(OTHER) == "active"
        assert field.is_active(MAIN) == "inactive"
        now, _ = postmaster(field, "other")
        assert now in field.unit_pids(OTHER)
        [stopped] = guard.records(STOP_UNIT, unit=OTHER)
        assert stopped["PORTGUARD_HOLDER_UNIT"] == MAIN
        [decided] = guard.records(CONFLICT, unit=OTHER)
        assert decided["PORTGUARD_HOLDER_KIND"] == "twin"
        assert f"pid {first} (postgres, user postgres)" in decided["MESSAGE"]
        assert guard.signalled() == set()  # a twin unit is stopped through systemd


@pytest.mark.parametrize(("duplicates", "reason"), [
    ("", f"not {TEMPLATE}'s program; {NO_PROFILE}"),
    (f"  duplicates:\n    commands: ['{POSTGRES}']\n",
     f"runs the service's program but as user postgres, not the unit's user; {NO_PROFILE}"),
])
def test_a_postmaster_started_outside_the_unit_is_foreign_and_never_touched(
        pg: Field, duplicates: str, reason: str) -> None:
    """`pg_ctlcluster --skip-systemctl-redirect 15 main start` from a root shell: the same
    cluster's postmaster, outside the unit, as user postgres."""
    field = pg
    field.sb.run(["rm", "-f", f"/var/lib/portguard/profiles/{MAIN}.json"])
    field.spawn_by_hand(BY_HAND)
    try:
        pid, by_hand = postmaster(field, "main")
        assert field.sb.cgroup_of(pid) == "/"  # in no unit
        with guarding(field.sb, TEMPLATE, PORT, keys=duplicates,
                      stop="postgresql@*.service") as guard:
            assert field.start(MAIN, check=False).returncode != 0
            assert field.is_active(MAIN) == "failed"
            assert all(field.sb.pid_alive(p) for p in by_hand), field.ps(by_hand)
            assert set(field.holders(PORT)) == {pid}
            [refused] = guard.records(REFUSED, unit=MAIN)
            assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
            assert f"pid {pid} (postgres, user postgres) [foreign: {reason}]" in \
                refused["MESSAGE"], refused["MESSAGE"]
            assert guard.signalled() == set()
    finally:
        field.sb.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "stop"],
                     timeout=60)
        field.sb.wait_for(lambda: not field.holders(PORT), 10, "the postmaster to stop")


def test_adopted_while_running_a_postmaster_started_by_hand_is_a_stray_by_its_profile(
        pg: Field) -> None:
    """The administrator's flow: 15/main runs under its unit; `portguard install` of the
    instance (config with ports only, on the template) learns what pg_ctlcluster really
    starts: postgres as user postgres. Later the unit is stopped, the cluster started by
    hand with pg_ctlcluster, and `systemctl start` stops that postmaster."""
    field = pg
    with guarding(field.sb, TEMPLATE, PORT, stop="postgresql@*.service") as guard:
        field.start(MAIN)
        postmaster(field, "main")
        done = guard.run("install", MAIN)
        assert done.returncode == 0, done.stdout + done.stderr
        guard.installed.append(MAIN)
        assert f"learned {MAIN}'s profile: {POSTGRES} as postgres, listening on " \
            f"{PORT}/tcp" in done.stderr, done.stderr
        field.stop(MAIN)
        field.spawn_by_hand(BY_HAND)
        pid, by_hand = postmaster(field, "main")
        assert field.sb.cgroup_of(pid) == "/"
        field.start(MAIN)
        assert field.is_active(MAIN) == "active"
        assert not any(field.sb.pid_alive(p) for p in by_hand), field.ps(by_hand)
        now, _ = postmaster(field, "main")
        assert now in field.unit_pids(MAIN)
        [decided] = guard.records(CONFLICT, unit=MAIN)
        assert decided["PORTGUARD_HOLDER_KIND"] == "stray", decided["MESSAGE"]
        assert "by the profile learned at " in decided["MESSAGE"]
        assert f"({POSTGRES} as postgres)" in decided["MESSAGE"], decided["MESSAGE"]
        assert pid in guard.signalled()


def why(field: Field, unit: str) -> dict[str, object]:
    done = field.sb.portguard("--json", "why", unit)
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def test_why_reads_postgres_words_when_another_program_holds_the_port(pg: Field) -> None:
    field = pg  # no portguard config, nothing installed: a plain failed start
    holder = field.sb.spawn(["/usr/bin/python3", "-m", "http.server", str(PORT),
                             "--bind", "127.0.0.1"])
    try:
        field.wait_holders(PORT)
        assert field.start(MAIN, check=False).returncode != 0
        assert field.is_active(MAIN) == "failed"
        done = field.sb.portguard("why", MAIN)
        assert done.returncode == 1, done.stdout + done.stderr
        assert 'could not bind IPv4 address "127.0.0.1": Address already in use' in \
            done.stdout, done.stdout
        assert f"python3.11 http.server on 127.0.0.1:{PORT}" in done.stdout, done.stdout
        assert f"{PORT}/tcp: pid {holder}, not {MAIN}'s program, holds it" in done.stdout
        doc = why(field, MAIN)
        assert [(f["wording"], f["address"], f["port"]) for f in doc["failures"]] == [
            ("postgres", "127.0.0.1", PORT)], doc["failures"]
        assert {(h["pid"], h["kind"]) for p in doc["ports"] for h in p["holders"]} == \
            {(holder, "foreign")}
    finally:
        field.sb.kill(holder)


def test_why_reads_pg_ctlcluster_words_when_the_other_cluster_holds_the_port(
        pg: Field) -> None:
    """pg_ctlcluster sees the other cluster's socket lock on the port and refuses before
    postgres tries to bind: its own words name the port."""
    field = pg
    field.start(OTHER)
    other, _ = postmaster(field, "other")
    assert field.start(MAIN, check=False).returncode != 0
    assert field.is_active(MAIN) == "failed"
    done = field.sb.portguard("why", MAIN)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("Error: Port conflict: another instance is already running on "
            f"/var/run/postgresql with port {PORT}") in done.stdout, done.stdout
    assert f"$ systemctl stop {OTHER}" in done.stdout, done.stdout
    doc = why(field, MAIN)
    assert [(f["wording"], f["port"]) for f in doc["failures"]] == [
        ("pg_ctlcluster", PORT)], doc["failures"]
    holders = {(h["pid"], h["unit"], h["kind"]) for p in doc["ports"] for h in p["holders"]}
    assert holders == {(other, OTHER, "twin")}, holders
