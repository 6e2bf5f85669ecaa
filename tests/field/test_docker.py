"""A real dockerd container holds the port: portguard names it and never touches it.

Debian's docker.io (dockerd 20.10, containerd 1.6, runc) under its packaged units
(docker.socket, docker.service, containerd.service, copied unchanged) inside the field
sandbox; /var/lib/docker and /var/lib/containerd are tmpfs there. The machine image's
/usr/local/bin/docker (28) is a client only, so the CLI used is /usr/bin/docker. The image
is imported from busybox-static, as for podman.

- published (bridge): docker-proxy holds 8080, once for 0.0.0.0 and once for [::], in
  docker.service; it names only the container's address, so portguard finds the container
  whose config.v2.json has that address. The advice is `docker stop web`, never
  `systemctl stop docker.service` (which would stop every container).
- --network=host: the container's own httpd holds 8080, in docker-<id>.scope.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import runtimes as rt
from support.daemons import Field
from support.guard import Guard
from support.sandbox import Sandbox

DAEMONS_USED: list[str] = []  # dockerd is checked below
DOCKER = "/usr/bin/docker"
UNITS = ("containerd.service", "docker.socket", "docker.service")
IMAGE = "localhost/web:1"


@pytest.fixture(scope="module")
def docker(field: Field) -> Iterator[Field]:
    sb = field.sb
    rt.require(sb, "/usr/sbin/dockerd", "/usr/bin/containerd", DOCKER, "runc")
    rt.private_store(sb, "/var/lib/docker", "/var/lib/containerd")
    for unit in UNITS:
        sb.write_unit(unit, Path(sb.image_path(f"/lib/systemd/system/{unit}")).read_text(),
                      reload=False)
    sb.systemctl("daemon-reload", check=True)
    field.start("docker.service")
    built = sb.run([DOCKER, "import", "--change", rt.CMD, rt.rootfs_tar(sb), IMAGE], timeout=60)
    assert built.returncode == 0, built.stderr
    yield field
    field.stop("docker.service")


@pytest.fixture
def web(docker: Field) -> Iterator[Field]:
    yield docker
    docker.sb.run([DOCKER, "rm", "-f", "web"], timeout=60)


@pytest.fixture
def guard(docker: Field, uid: str) -> Iterator[Guard]:
    with rt.declaring(docker, uid) as g:
        yield g


def start(sb: Sandbox, *args: str) -> dict[str, Any]:
    out = sb.run([DOCKER, "run", "-d", "--name", "web", *args, IMAGE], timeout=60)
    assert out.returncode == 0, out.stderr
    found: dict[str, Any] = json.loads(sb.run([DOCKER, "inspect", "web"], check=True).stdout)[0]
    return found


def expected(cid: str, via: str | None) -> dict[str, Any]:
    return {"runtime": "docker", "name": "web", "id": cid, "image": IMAGE, "via": via,
            "source": "config.v2.json", "user": None, "stop": "docker stop web"}


def test_published_port_held_by_docker_proxy(web: Field, guard: Guard) -> None:
    sb = web.sb
    info = start(sb, "-p", f"{rt.PORT}:{rt.PORT}")
    cid = info["Id"]
    proxies = web.wait_holders(rt.PORT)
    assert set(proxies.values()) == {"docker-proxy"}, proxies
    before = rt.scope_procs(sb, f"/system.slice/docker-{cid}.scope")
    text, port = rt.who_json(sb)
    assert {r["pid"] for r in port["holders"]} == set(proxies)
    for row in port["holders"]:
        assert row["container"] == expected(cid, "docker-proxy"), row
        assert row["unit"] == "docker.service"
    assert rt.note("docker-proxy", "docker", cid, IMAGE) in text.splitlines(), text
    rt.assert_refused(guard, "docker stop web")
    out = guard.run("preflight", guard.installed[0])
    assert "systemctl stop docker.service" not in out.stderr, out.stderr
    assert web.holders(rt.PORT) == proxies
    assert rt.scope_procs(sb, f"/system.slice/docker-{cid}.scope") == before
    assert web.is_active("docker.service") == "active"


def test_host_network_container_holds_the_port_itself(web: Field, guard: Guard) -> None:
    sb = web.sb
    info = start(sb, "--network=host")
    cid, pid = info["Id"], int(info["State"]["Pid"])
    assert web.wait_holders(rt.PORT) == {pid: "httpd"}
    before = rt.scope_procs(sb, f"/system.slice/docker-{cid}.scope")
    text, port = rt.who_json(sb)
    [row] = port["holders"]
    assert row["container"] == expected(cid, None), row
    assert (row["pid"], row["unit"]) == (pid, f"docker-{cid}.scope")
    assert rt.note(None, "docker", cid, IMAGE) in text.splitlines(), text
    rt.assert_refused(guard, "docker stop web")
    assert web.holders(rt.PORT) == {pid: "httpd"}
    assert rt.scope_procs(sb, f"/system.slice/docker-{cid}.scope") == before


def test_without_userland_proxy_dockerd_holds_the_published_port(web: Field,
                                                                  guard: Guard) -> None:
    """dockerd with `"userland-proxy": false` publishes 8080 by DNAT and binds the port
    itself to reserve it: the holder is dockerd in docker.service, and the advice must be
    `docker stop web`, not stopping docker.service (every container)."""
    sb = web.sb
    web.config("/etc/docker", {"daemon.json": '{"userland-proxy": false}\n'})
    sb.systemctl("restart", "docker.service", check=True, timeout=60)
    try:
        info = start(sb, "-p", f"{rt.PORT}:{rt.PORT}")
        cid = info["Id"]
        dockerd = int(sb.unit_property("docker.service", "MainPID"))
        assert web.holders(rt.PORT) == {dockerd: "dockerd"}
        dnat = sb.run(["iptables", "-t", "nat", "-S", "DOCKER"], check=True).stdout
        assert f"--dport {rt.PORT} -j DNAT" in dnat, dnat
        before = rt.scope_procs(sb, f"/system.slice/docker-{cid}.scope")
        text, port = rt.who_json(sb)
        assert {r["pid"] for r in port["holders"]} == {dockerd}
        for row in port["holders"]:
            assert row["container"] == expected(cid, "dockerd"), row
        assert rt.note("dockerd", "docker", cid, IMAGE) in text.splitlines(), text
        rt.assert_refused(guard, "docker stop web")
        out = guard.run("preflight", guard.installed[0])
        assert "systemctl stop docker.service" not in out.stderr, out.stderr
        assert web.holders(rt.PORT) == {dockerd: "dockerd"}
        assert rt.scope_procs(sb, f"/system.slice/docker-{cid}.scope") == before
    finally:
        sb.run([DOCKER, "rm", "-f", "web"], timeout=60)
        web.config("/etc/docker", {}, remove=("daemon.json",))
        sb.systemctl("restart", "docker.service", timeout=60)
