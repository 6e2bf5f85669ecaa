"""A real podman container holds the port: portguard names it and never touches it.

Where users run podman, each in its Debian root (tests/support/roots.py): Debian 12's
podman 4.3 with CNI and with netavark (its default where recommends are installed), and
Debian 13's podman 5 with netavark, its only backend (runtimes.PODMAN_PLATFORMS); runc,
the store on a tmpfs over /var/lib/containers (and libcni's state over /var/lib/cni) so
nothing outlives the sandbox. The image is built here with `podman import` from
busybox-static (no registry is reachable): `localhost/web:1`, whose CMD is busybox httpd
on 8080.

Three ways a container holds 8080, each checked the way an administrator would:
- published on the bridge network: conmon holds the host port (libpod-conmon-ID.scope);
- --network=host: the container's own httpd holds it (libpod-ID.scope);
- conmon killed with SIGKILL: no socket holds 8080, yet the container runs on and the
  kernel's DNAT still sends 8080's connections to it (libcni's cache, netavark's records
  or its NAT rules tell).
For each, `who 8080` names `web` (runtime, name, id, image), preflight of a service that
declares 8080 refuses (exit 1) advising `podman stop web`, its journal record carries
PORTGUARD_HOLDER_CONTAINER=web, and the container's processes are the same afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support import runtimes as rt
from support.availability import require_root
from support.daemons import Field
from support.guard import Guard
from support.roots import RootSandbox
from support.sandbox import Sandbox

DAEMONS_USED: list[str] = []  # podman is checked below: it is no packaged daemon
IMAGE = "localhost/web:1"
PODMAN = ("podman",)  # runc and the backend: containers.conf (runtimes.podman_conf)
RUN = ("run", "-d", "--name", "web")


@pytest.fixture(scope="module", params=sorted(rt.PODMAN_PLATFORMS))
def podman(request: pytest.FixtureRequest) -> Iterator[Field]:
    """A root with podman set up for one backend, a private store and the image built."""
    suite, backend = rt.PODMAN_PLATFORMS[request.param]
    require_root(suite)
    with RootSandbox(suite) as sb:
        rt.require(sb, "podman", "conmon", "runc")
        rt.private_store(sb, "/var/lib/containers", "/var/lib/cni")
        rt.podman_conf(sb, backend)
        built = sb.run([*PODMAN, "import", "-q", "--change",
                        rt.CMD, rt.rootfs_tar(sb), IMAGE], timeout=60)
        assert built.returncode == 0, built.stderr
        yield Field(sb)


@pytest.fixture
def web(podman: Field) -> Iterator[Field]:
    yield podman
    # podman 5 refuses the first rm of a container whose conmon was killed ("conmon
    # exited prematurely") and marks it exited: the second removes it
    for _ in range(3):
        podman.sb.run([*PODMAN, "rm", "-f", "-t", "0", "--all"], timeout=60)
        if not podman.sb.run([*PODMAN, "ps", "-aq"], check=True).stdout.strip():
            return
    raise AssertionError(podman.sb.run([*PODMAN, "ps", "-a"]).stdout)


@pytest.fixture
def guard(podman: Field, uid: str) -> Iterator[Guard]:
    with rt.declaring(podman, uid) as g:
        yield g


def start(sb: Sandbox, *args: str) -> dict[str, Any]:
    out = sb.run([*PODMAN, *RUN, *args, IMAGE], timeout=60)
    assert out.returncode == 0, out.stderr
    return inspect(sb)


def inspect(sb: Sandbox) -> dict[str, Any]:
    out = sb.run([*PODMAN, "inspect", "web"], check=True)
    found: dict[str, Any] = json.loads(out.stdout)[0]
    return found


def assert_names_web(sb: Sandbox, cid: str, via: str | None) -> dict[str, Any]:
    """`who 8080` as text and JSON: runtime, name, id and image of `web`."""
    text, port = rt.who_json(sb)
    [row] = port["holders"]
    assert row["container"] == {"runtime": "podman", "name": "web", "id": cid, "image": IMAGE,
                                "via": via, "source": "containers.json", "user": None,
                                "stop": "podman stop web"}, row
    header = text.splitlines()[0].split()
    assert header[6] == "CONTAINER"
    assert text.splitlines()[1].split()[6] == "web", text
    assert rt.note(via, "podman", cid, IMAGE) in text.splitlines(), text
    return row


def test_published_port_held_by_conmon(web: Field, guard: Guard) -> None:
    sb = web.sb
    info = start(sb, "-p", f"{rt.PORT}:{rt.PORT}")
    cid, conmon = info["Id"], int(info["State"]["ConmonPid"])
    assert web.wait_holders(rt.PORT) == {conmon: "conmon"}
    before = rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope")
    row = assert_names_web(sb, cid, "conmon")
    assert row["pid"] == conmon
    assert row["unit"] == f"libpod-conmon-{cid}.scope"
    rt.assert_refused(guard, "podman stop web")
    # through systemd, as the service would really start: refused before it binds
    assert web.start(guard.installed[0], check=False).returncode != 0
    assert web.is_active(guard.installed[0]) == "failed"
    assert "podman stop web" in web.status(guard.installed[0])
    assert web.holders(rt.PORT) == {conmon: "conmon"}  # conmon untouched
    # unguarded, the service fails to bind; `why` names the container and its command
    bare = guard.installed[0]
    guard.uninstall()
    web.start(bare, check=False)  # Type=simple: it fails after start returns
    sb.wait_unit_state(bare, "failed")
    sb.wait_journal(lambda r: "Address already in use" in r.get("MESSAGE", ""), "-u", bare)
    why = guard.run("why", bare)
    assert why.returncode == 1, why.stdout + why.stderr  # still held
    assert f"podman container web ({cid[:12]}) (through its conmon) holds it" in why.stdout
    assert f"$ podman stop web && systemctl restart {bare}" in why.stdout, why.stdout
    found = guard.run("discover")
    assert found.returncode == 0, found.stderr
    assert (f"(a container's port, never guarded: podman container web ({cid[:12]}): "
            "`podman stop web`)") in found.stdout, found.stdout
    assert rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope") == before
    assert inspect(sb)["State"]["Status"] == "running"


def test_host_network_container_holds_the_port_itself(web: Field, guard: Guard) -> None:
    sb = web.sb
    info = start(sb, "--network=host")
    cid, pid = info["Id"], int(info["State"]["Pid"])
    assert web.wait_holders(rt.PORT) == {pid: "httpd"}
    before = rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope")
    row = assert_names_web(sb, cid, None)
    assert (row["pid"], row["unit"]) == (pid, f"libpod-{cid}.scope")
    rt.assert_refused(guard, "podman stop web")
    status = guard.run("status")
    assert status.returncode == 1 and "HELD BY ANOTHER" in status.stdout
    assert "`podman stop web` frees it" in status.stdout, status.stdout
    assert web.holders(rt.PORT) == {pid: "httpd"}
    assert rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope") == before
    # its conmon killed: httpd is reparented and still holds 8080; still named `web`
    sb.kill(int(info["State"]["ConmonPid"]))
    sb.wait_for(lambda: sb.read_file(f"/proc/{pid}/status").count("PPid:\t1\n") == 1, 10,
                "httpd reparented")
    assert_names_web(sb, cid, None)
    assert rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope") == before


def test_conmon_killed_the_container_runs_on_and_still_takes_the_port(web: Field,
                                                                      guard: Guard) -> None:
    sb = web.sb
    info = start(sb, "-p", f"{rt.PORT}:{rt.PORT}")
    cid, conmon = info["Id"], int(info["State"]["ConmonPid"])
    web.wait_holders(rt.PORT)
    before = rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope")
    sb.kill(conmon)  # SIGKILL: our own test's conmon, by pid
    sb.wait_for(lambda: not web.holders(rt.PORT), 10, "8080 released by the dead conmon")
    assert inspect(sb)["State"]["Status"] == "running"
    # no socket, yet the port is not the service's: its connections reach the container
    page = sb.run(["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{rt.PORT}/"])
    assert page.stdout == rt.PAGE, page.stderr
    text, port = rt.who_json(sb)
    [row] = port["holders"]
    assert (row["state"], row["pid"], row["remote"]) == (
        "PUBLISHED", None, f"{info['NetworkSettings']['IPAddress']}:{rt.PORT}")
    assert row["container"]["name"] == "web" and row["container"]["id"] == cid
    assert row["container"]["image"] == IMAGE
    assert "PUBLISHED" in text and "web" in text.splitlines()[1], text
    rt.assert_refused(guard, "podman stop web")
    assert rt.scope_procs(sb, f"/machine.slice/libpod-{cid}.scope") == before


def test_a_renamed_container_is_named_as_podman_now_calls_it(web: Field, guard: Guard) -> None:
    """`podman rename` while it runs: conmon's argv still says `-n web`; the store (and so
    portguard) says web2, and `podman stop web2` is what works."""
    sb = web.sb
    info = start(sb, "-p", f"{rt.PORT}:{rt.PORT}")
    web.wait_holders(rt.PORT)
    sb.run([*PODMAN, "rename", "web", "web2"], check=True)
    conmon = int(info["State"]["ConmonPid"])
    assert "\0-n\0web\0" in sb.read_file(f"/proc/{conmon}/cmdline")
    text, port = rt.who_json(sb)
    [row] = port["holders"]
    assert (row["container"]["name"], row["container"]["stop"]) == ("web2", "podman stop web2")
    assert rt.note("conmon", "podman", info["Id"], IMAGE, "web2") in text.splitlines(), text
    rt.assert_refused(guard, "podman stop web2", "web2")
