"""Naming the container behind a port: conmon's argv, the runtimes' state files, cgroups.

The argv and JSON below are what podman 4.3.1 (Debian 12) wrote in the sandbox for
`podman run -d --name web -p 8080:8080 localhost/web:1`; docker's is a config.v2.json cut
down to the fields read. tests/field/test_podman.py proves the same against a real podman.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portguard.model import Container, Process, Proto
from portguard.observe.containers.lookup import Identifier
from portguard.observe.containers.records import (
    ConmonArgs,
    DockerRecord,
    Published,
    conmon_args,
    graphroot_from_conf,
    parse_cni_cache,
    parse_containers_json,
    parse_docker_config,
    store_root,
)
from portguard.observe.procs.cgroups import container_scope

CID = "94c1a2e552a21821fdf0b0d414e166bd9e86ed358ddaa2884a8d4b0da16ea127"
ROOT = "/var/lib/containers/storage"
BUNDLE = f"{ROOT}/overlay-containers/{CID}/userdata"
CONMON = (
    "/usr/bin/conmon", "--api-version", "1", "-c", CID, "-u", CID, "-r", "/usr/bin/runc",
    "-b", BUNDLE, "-p", f"/run/containers/storage/overlay-containers/{CID}/userdata/pidfile",
    "-n", "web", "--exit-dir", "/run/libpod/exits", "--full-attach", "-s", "-l", "journald",
    "--log-level", "warning", "--runtime-arg", "--log-format=json", "--exit-command",
    "/usr/bin/podman", "--exit-command-arg", "--root", "--exit-command-arg", ROOT,
    "--exit-command-arg", "container", "--exit-command-arg", "cleanup",
    "--exit-command-arg", CID)
CONTAINERS_JSON = json.dumps([{
    "id": CID, "names": ["web"], "image": "8012dcc0049c", "layer": "7f70e0c3b566",
    "metadata": json.dumps({"image-name": "localhost/web:1", "image-id": "8012dcc0049c",
                            "name": "web", "created-at": 1796232509}),
    "created": "2026-12-02T17:28:30.00039408Z"}])
CNI_CACHE = json.dumps({
    "kind": "cniCacheV1", "containerId": CID, "config": "e30=", "ifName": "eth0",
    "networkName": "podman", "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "web"]],
    "capabilityArgs": {"aliases": {"podman": [CID[:12]]}, "portMappings": [
        {"hostPort": 8080, "containerPort": 8080, "protocol": "tcp"}]},
    "result": {"cniVersion": "0.4.0", "ips": [
        {"address": "10.88.0.2/16", "gateway": "10.88.0.1", "interface": 2, "version": "4"}]}})
DOCKER_ID = "3f2a9c1b2d4e" + "5" * 52
DOCKER_CONFIG = json.dumps({
    "ID": DOCKER_ID, "Name": "/shop", "Config": {"Image": "nginx:1.25"},
    "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2",
                                                "GlobalIPv6Address": ""}}}})


def proc(pid: int, argv: tuple[str, ...], cgroup: str, ppid: int = 1, uid: int = 0) -> Process:
    return Process(pid=pid, start_time=1, ppid=ppid, uid=uid, cmdline=argv, cgroup=cgroup)


class Disk:
    """The files an Identifier may read, and a record of what it read."""

    def __init__(self, files: dict[str, str], procs: tuple[Process, ...] = ()) -> None:
        self.files = files
        self.procs = {p.pid: p for p in procs}
        self.reads: list[str] = []

    @staticmethod
    def owner(path: str) -> int:
        """Who owns a file here: u1000 what is under /home/u1000, root the rest."""
        return int(path.split("/")[2][1:]) if path.startswith("/home/u") else 0

    def read(self, path: str, owner: int) -> str | None:
        self.reads.append(path)
        return self.files.get(path) if self.owner(path) == owner else None

    def listdir(self, path: str, owner: int) -> list[str]:
        prefix = path.rstrip("/") + "/"
        if self.owner(path) != owner:
            return []
        return sorted({f[len(prefix):].split("/")[0] for f in self.files if f.startswith(prefix)})

    def identifier(self) -> Identifier:
        return Identifier(self.procs.get, read=self.read, listdir=self.listdir,
                          home=lambda uid: f"/home/u{uid}", owner_of=cgroup_owner,
                          user_name=lambda uid: f"u{uid}")


def cgroup_owner(cgroup: str) -> int:
    """As systemd makes them: root's, except in user@UID.service's subtree (the user's)."""
    import re
    m = re.search(r"/user@(\d+)\.service/", cgroup)
    return int(m.group(1)) if m else 0


PODMAN_DISK = {f"{ROOT}/overlay-containers/containers.json": CONTAINERS_JSON}


# --- the pure parsers -------------------------------------------------------------------

def test_conmon_args_name_the_container_and_its_store() -> None:
    args = conmon_args(CONMON)
    assert args == ConmonArgs("podman", CID, "web", BUNDLE)
    assert store_root(BUNDLE) == ROOT


def test_conmon_args_long_and_equals_forms_and_cri_o() -> None:
    argv = ("conmon", "--cid=abc123def456", "--name=k8s_web_pod", "--bundle",
            "/run/containers/storage/overlay-containers/abc123def456/userdata",
            "--exit-dir", "/var/run/crio/exits")
    assert conmon_args(argv) == ConmonArgs(
        "cri-o", "abc123def456", "k8s_web_pod",
        "/run/containers/storage/overlay-containers/abc123def456/userdata")


@pytest.mark.parametrize("argv", [(), ("/usr/bin/podman", "-c", CID), ("conmon", "-n", "web"),
                                  ("/usr/bin/python3", "conmon", "-c", CID)])
def test_not_conmon_or_no_id(argv: tuple[str, ...]) -> None:
    assert conmon_args(argv) is None


@pytest.mark.parametrize("bundle", ["", "/run/x/userdata", f"{ROOT}/overlay/{CID}/userdata",
                                    f"{ROOT}/overlay-containers/{CID}"])
def test_store_root_only_from_the_storage_layout(bundle: str) -> None:
    assert store_root(bundle) is None


def test_containers_json_gives_name_and_image() -> None:
    assert parse_containers_json(CONTAINERS_JSON) == {CID: ("web", "localhost/web:1")}


@pytest.mark.parametrize("text", ["", "{", "{}", "[1, null]", '[{"id": 5}]'])
def test_containers_json_damaged_reads_as_empty(text: str) -> None:
    assert parse_containers_json(text) == {}


def test_docker_config_gives_name_image_and_addresses() -> None:
    assert parse_docker_config(DOCKER_CONFIG) == DockerRecord(
        DOCKER_ID, "shop", "nginx:1.25", ("172.17.0.2",))
    assert parse_docker_config("[]") is None
    assert parse_docker_config('{"Name": "/x"}') is None


def test_cni_cache_gives_the_published_ports() -> None:
    assert parse_cni_cache(CNI_CACHE) == [
        Published(CID, "web", "podman", "", 8080, "10.88.0.2", 8080, Proto.TCP)]
    assert parse_cni_cache("{}") == []
    bad = json.loads(CNI_CACHE)
    bad["capabilityArgs"]["portMappings"] = [{"hostPort": "x"}, {"protocol": "sctp"}]
    assert parse_cni_cache(json.dumps(bad)) == []


def test_graphroot_from_storage_conf() -> None:
    assert graphroot_from_conf('[storage]\ndriver = "overlay"\ngraphroot = "/srv/c"\n') == \
        "/srv/c"
    assert graphroot_from_conf("[storage]\n") is None
    assert graphroot_from_conf("[storage\n") is None


@pytest.mark.parametrize(("path", "scope"), [
    (f"/machine.slice/libpod-conmon-{CID}.scope", ("podman", CID, True)),
    (f"/machine.slice/libpod-{CID}.scope", ("podman", CID, False)),
    (f"/machine.slice/libpod-{CID}.scope/container", ("podman", CID, False)),
    (f"/system.slice/docker-{DOCKER_ID}.scope", ("docker", DOCKER_ID, False)),
    (f"/kubepods.slice/crio-conmon-{CID}.scope", ("cri-o", CID, True)),
    ("/machine.slice/machine-my\\x2dbox.scope/payload", ("nspawn", "my-box", False)),
    ("/system.slice/web.service", None),
])
def test_container_scope(path: str, scope: tuple[str, str, bool] | None) -> None:
    assert container_scope(path) == scope


# --- the Identifier over a fake disk ----------------------------------------------------

def test_conmon_is_named_from_the_store_its_bundle_names() -> None:
    disk = Disk(PODMAN_DISK)
    conmon = proc(202, CONMON, f"/machine.slice/libpod-conmon-{CID}.scope")
    assert disk.identifier().identify([conmon]) == Container(
        "podman", CID, "web", "localhost/web:1", "conmon", "containers.json")


def test_a_renamed_container_is_named_as_the_store_says_not_as_conmon_started() -> None:
    disk = Disk({f"{ROOT}/overlay-containers/containers.json":
                 CONTAINERS_JSON.replace('["web"]', '["web2"]')})
    conmon = proc(202, CONMON, f"/machine.slice/libpod-conmon-{CID}.scope")
    found = disk.identifier().identify([conmon])
    assert found is not None and found.name == "web2"
    assert found.stop_command == "podman stop web2"


def test_without_a_readable_store_conmons_argv_names_it() -> None:
    disk = Disk({})
    conmon = proc(202, CONMON, "/machine.slice/libpod-conmon-x.scope")
    assert disk.identifier().identify([conmon]) == Container(
        "podman", CID, "web", "", "conmon", "conmon argv")


def test_the_containers_own_process_on_the_host_network() -> None:
    conmon = proc(279, CONMON, f"/machine.slice/libpod-conmon-{CID}.scope")
    httpd = proc(290, ("/bin/httpd", "-f", "-p", "8081"), f"/machine.slice/libpod-{CID}.scope",
                 ppid=279)
    assert Disk(PODMAN_DISK, (conmon,)).identifier().identify([httpd]) == Container(
        "podman", CID, "web", "localhost/web:1", "", "containers.json")
    # its conmon killed: reparented, yet named from the cgroup and the default store
    orphan = httpd._replace(ppid=1)
    assert Disk(PODMAN_DISK).identifier().identify([orphan]) == Container(
        "podman", CID, "web", "localhost/web:1", "", "containers.json")
    # and with no store to read at all: the cgroup's id is all there is
    bare = Disk({}).identifier().identify([orphan])
    assert bare == Container("podman", CID, "", "", "", "cgroup")
    assert bare.label == CID[:12] and bare.stop_command == f"podman stop {CID[:12]}"


def test_a_store_named_in_storage_conf_is_searched() -> None:
    disk = Disk({"/etc/containers/storage.conf": '[storage]\ngraphroot = "/srv/c"\n',
                 "/srv/c/vfs-containers/containers.json": CONTAINERS_JSON})
    httpd = proc(290, ("/bin/httpd",), f"/machine.slice/libpod-{CID}.scope")
    found = disk.identifier().identify([httpd])
    assert found is not None and found.name == "web"


def test_a_rootless_container_is_found_in_its_users_store() -> None:
    disk = Disk({"/home/u1000/.local/share/containers/storage/overlay-containers/"
                 "containers.json": CONTAINERS_JSON})
    helper = proc(300, ("rootlessport",), f"/user.slice/user-1000.slice/user@1000.service/"
                  f"user.slice/libpod-conmon-{CID}.scope", uid=1000)
    found = disk.identifier().identify([helper])
    assert found == Container(
        "podman", CID, "web", "localhost/web:1", "rootlessport", "containers.json", "u1000")
    assert found.stop_command == "runuser -u u1000 -- podman stop web"  # its user's podman


def test_a_rootless_helper_outside_any_scope_is_named_through_its_parents() -> None:
    conmon = proc(40, CONMON, "/user.slice/user-1000.slice/session-1.scope", uid=1000)
    slirp = proc(41, ("/usr/bin/slirp4netns", "--mtu=65520", "-c", "tap0"),
                 "/user.slice/user-1000.slice/session-1.scope", ppid=40, uid=1000)
    found = Disk(PODMAN_DISK, (conmon,)).identifier().identify([slirp])
    assert found is not None and (found.name, found.via) == ("web", "slirp4netns")
    lost = Disk({}).identifier().identify([slirp._replace(ppid=1)])
    assert lost == Container("podman", "", via="slirp4netns", user="u1000")
    assert lost.stop_command == "runuser -u u1000 -- podman ps"  # nothing names it: find it


def test_store_files_are_read_once_per_observation() -> None:
    disk = Disk(PODMAN_DISK)
    ident = disk.identifier()
    conmon = proc(202, CONMON, f"/machine.slice/libpod-conmon-{CID}.scope")
    ident.identify([conmon])
    ident.identify([conmon])
    assert disk.reads.count(f"{ROOT}/overlay-containers/containers.json") == 1


def test_docker_proxy_is_attributed_by_the_address_it_forwards_to() -> None:
    disk = Disk({f"/var/lib/docker/containers/{DOCKER_ID}/config.v2.json": DOCKER_CONFIG})
    proxy = proc(50, ("/usr/bin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0",
                      "-host-port", "8080", "-container-ip", "172.17.0.2",
                      "-container-port", "80"), "/system.slice/docker.service")
    assert disk.identifier().identify([proxy]) == Container(
        "docker", DOCKER_ID, "shop", "nginx:1.25", "docker-proxy", "config.v2.json")
    other = proxy._replace(cmdline=tuple(a.replace("172.17.0.2", "172.17.0.9")
                                         for a in proxy.cmdline))
    assert disk.identifier().identify([other]) == Container("docker", "", via="docker-proxy")


def test_docker_host_network_container_and_a_moved_data_root() -> None:
    disk = Disk({"/etc/docker/daemon.json": '{"data-root": "/srv/docker"}',
                 f"/srv/docker/containers/{DOCKER_ID}/config.v2.json": DOCKER_CONFIG})
    nginx = proc(60, ("nginx: master process",), f"/system.slice/docker-{DOCKER_ID}.scope")
    found = disk.identifier().identify([nginx])
    assert found == Container("docker", DOCKER_ID, "shop", "nginx:1.25", "", "config.v2.json")
    assert found.stop_command == "docker stop shop"


def test_nspawn_and_unstored_runtimes_and_plain_processes() -> None:
    ident = Disk({}).identifier()
    box = ident.identify([proc(7, ("/bin/httpd",), "/machine.slice/machine-box.scope/payload")])
    assert box == Container("nspawn", "", "box", "", "", "cgroup")
    assert box.stop_command == "machinectl stop box"
    crio = ident.identify([proc(8, ("/app",), f"/kubepods.slice/crio-{CID}.scope")])
    assert crio is not None and crio.stop_command == f"crictl stop {CID}"
    assert ident.identify([proc(9, ("/usr/sbin/nginx",), "/system.slice/nginx.service")]) is None
    assert ident.identify([]) is None


def test_published_ports_from_the_cni_cache() -> None:
    disk = Disk({**PODMAN_DISK, f"/var/lib/cni/results/podman-{CID}-eth0": CNI_CACHE})
    ident = disk.identifier()
    [(pub, container)] = ident.published(8080, Proto.TCP)
    assert (pub.container_ip, pub.container_port) == ("10.88.0.2", 8080)
    assert container == Container("podman", CID, "web", "localhost/web:1", "",
                                  "containers.json")
    assert ident.published(8080, Proto.UDP) == []
    assert ident.published(8081, Proto.TCP) == []
    # the store gone: the name CNI was given still names it
    [(_, alone)] = Disk({f"/var/lib/cni/results/podman-{CID}-eth0": CNI_CACHE}
                        ).identifier().published(8080, Proto.TCP)
    assert (alone.name, alone.source) == ("web", "cni cache")


def test_container_value_text() -> None:
    web = Container("podman", CID, "web", "localhost/web:1", "conmon")
    assert str(web) == f"podman container web ({CID[:12]})"
    assert web.label == "web" and web.stop_command == "podman stop web"
    assert Container("lxc", "", "box").stop_command == "lxc-stop -n box"
    assert Container("cni", CID).stop_command == ""  # no tool of its own: named, not offered


def test_a_container_is_one_holder_however_many_helpers_hold_its_port() -> None:
    """docker runs a docker-proxy for 0.0.0.0 and one for [::]: one refusal, not two."""
    from portguard.commands.preflight import distinct
    from portguard.decide.classify import Conflict, Kind
    from portguard.decide.policy import Action, Step
    from portguard.model import Holder, Socket

    web = Container("docker", DOCKER_ID, "web", via="docker-proxy")

    def step(pid: int, container: Container) -> Step:
        sock = Socket(Proto.TCP, 2, "LISTEN", "0.0.0.0", 8080, "0.0.0.0", 0, 0, pid)
        holder = Holder(sock, (proc(pid, ("docker-proxy",), "/system.slice/docker.service"),),
                        container=container)
        c = Conflict(8080, Proto.TCP, Kind.FOREIGN, "", holder, "docker.service",
                     holder.processes, "a container")
        return Step(c, Action.REFUSE, "")

    other = web._replace(id="f" * 64, name="other")
    kept = distinct([step(227, web), step(233, web), step(300, other)])
    assert [s.conflict.pids for s in kept] == [(227,), (300,)]


def test_may_publish_only_where_a_runtime_recorded_something(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's question: nothing there (most hosts) -> no reading, no import."""
    from portguard.observe.containers import hints
    monkeypatch.setattr(hints, "CNI_RESULTS", str(tmp_path / "cni/results"))
    monkeypatch.setattr(hints, "DOCKER_ROOT", str(tmp_path / "docker"))
    monkeypatch.setattr(hints, "DOCKER_DAEMON_JSON", str(tmp_path / "daemon.json"))
    monkeypatch.setattr(hints, "NETAVARK_PORTS", str(tmp_path / "nv/firewall/ports"))
    monkeypatch.setattr(hints, "NETAVARK_IPAM", str(tmp_path / "nv/ipam.db"))
    assert not hints.may_publish()  # none of them exists
    (tmp_path / "cni/results").mkdir(parents=True)
    (tmp_path / "docker/containers").mkdir(parents=True)
    assert not hints.may_publish()  # empty
    (tmp_path / "docker/containers" / DOCKER_ID).mkdir()
    assert hints.may_publish()
    (tmp_path / "docker/containers" / DOCKER_ID).rmdir()
    (tmp_path / "daemon.json").write_text("{}")
    assert hints.may_publish()  # the data root may be elsewhere


def test_docker_published_ports_of_running_containers_only() -> None:
    """dockerd with userland-proxy off publishes by DNAT alone: no docker-proxy holds it."""
    doc = json.loads(DOCKER_CONFIG)
    doc["State"] = {"Running": True}
    doc["NetworkSettings"]["Ports"] = {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
        "53/udp": None, "443/tcp": [{"HostIp": "", "HostPort": "x"}]}
    rec = parse_docker_config(json.dumps(doc))
    assert rec is not None and rec.running
    assert rec.ports == (Published(DOCKER_ID, "shop", "bridge", "0.0.0.0", 8080, "172.17.0.2", 80,
                                   Proto.TCP),
                         Published(DOCKER_ID, "shop", "bridge", "::", 8080, "", 80, Proto.TCP))
    path = f"/var/lib/docker/containers/{DOCKER_ID}/config.v2.json"
    [(_, c), _] = Disk({path: json.dumps(doc)}).identifier().published(8080, Proto.TCP)
    assert c == Container("docker", DOCKER_ID, "shop", "nginx:1.25", "", "config.v2.json")
    doc["State"] = {"Running": False}
    assert Disk({path: json.dumps(doc)}).identifier().published(8080, Proto.TCP) == []


def test_dockerd_holding_a_published_port_is_attributed_to_the_container() -> None:
    """userland-proxy off: dockerd binds the port to reserve it (seen with dockerd 20.10)."""
    doc = json.loads(DOCKER_CONFIG)
    doc["State"] = {"Running": True}
    doc["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    disk = Disk({f"/var/lib/docker/containers/{DOCKER_ID}/config.v2.json": json.dumps(doc)})
    dockerd = proc(99, ("/usr/sbin/dockerd", "-H", "fd://"), "/system.slice/docker.service")
    assert disk.identifier().identify([dockerd], (8080, Proto.TCP)) == Container(
        "docker", DOCKER_ID, "shop", "nginx:1.25", "dockerd", "config.v2.json")
    # any other socket dockerd holds is dockerd's own
    assert disk.identifier().identify([dockerd], (2375, Proto.TCP)) is None
    assert disk.identifier().identify([dockerd]) is None


def test_why_advises_the_runtimes_command_for_a_container() -> None:
    from portguard.decide.classify import Conflict, Kind
    from portguard.decide.postmortem import next_step
    from portguard.model import Holder, Socket

    web = Container("podman", CID, "web", "localhost/web:1", "conmon")
    sock = Socket(Proto.TCP, 2, "LISTEN", "0.0.0.0", 8080, "0.0.0.0", 0, 0, 7)
    conmon = proc(202, CONMON, f"/machine.slice/libpod-conmon-{CID}.scope")
    c = Conflict(8080, Proto.TCP, Kind.FOREIGN, "", Holder(sock, (conmon,), container=web),
                 f"libpod-conmon-{CID}.scope", (conmon,), "a container")
    step = next_step("app.service", "foreign", c)
    assert step.command == "podman stop web && systemctl restart app.service"
    assert step.advice.startswith(f"podman container web ({CID[:12]}) (through its conmon) "
                                  "holds it")


def test_discover_names_a_containers_port_as_a_comment_never_an_entry() -> None:
    from portguard.decide.proposal import Seen, entries
    proxy = Seen("docker.service", "0.0.0.0", 8080, Proto.TCP, False, 227, "docker-proxy",
                 "docker container web (3f2a9c1b2d4e): `docker stop web`")
    api = Seen("docker.service", "0.0.0.0", 2375, Proto.TCP, False, 99, "/usr/sbin/dockerd")
    found, skipped = entries([proxy, api], ())
    assert [(e.key, e.ports) for e in found] == [("docker.service", ("0.0.0.0:2375/tcp",))]
    assert skipped == ["docker.service: pid 227 docker-proxy, 0.0.0.0:8080 (a container's "
                       "port, never guarded: docker container web (3f2a9c1b2d4e): "
                       "`docker stop web`)"]


def test_names_that_are_no_names_are_dropped_never_put_in_advice() -> None:
    """A container's owner writes its name; a pasted `podman stop NAME` must stay one."""
    hostile = CONTAINERS_JSON.replace('["web"]', '["web; rm -rf /"]').replace(
        "localhost/web:1", "x $(reboot)")
    assert parse_containers_json(hostile) == {CID: ("", "")}
    argv = tuple("web`id`" if a == "web" else a for a in CONMON)
    args = conmon_args(argv)
    assert args is not None and args.name == ""
    found = Disk({}).identifier().identify([proc(202, argv, "/")])
    assert found is not None and found.stop_command == f"podman stop {CID[:12]}"
    assert conmon_args(("conmon", "-c", "../../etc", "-n", "web")) is None  # no id: no trust


def test_a_process_that_only_calls_itself_conmon_is_not_believed() -> None:
    fake = Process(pid=5, start_time=1, uid=1000, exe="/home/u/bin/evil", cmdline=CONMON,
                   cgroup="/user.slice/user-1000.slice/session-1.scope")
    assert Disk(PODMAN_DISK).identifier().identify([fake]) is None
    proxy = fake._replace(cmdline=("docker-proxy", "-container-ip", "172.17.0.2",
                                   "-container-port", "80"))
    assert Disk({}).identifier().identify([proxy]) is None
    real = fake._replace(exe="/usr/bin/conmon")
    found = Disk(PODMAN_DISK).identifier().identify([real])
    assert found is not None and found.name == "web"


def test_a_users_cgroup_named_after_roots_container_never_borrows_its_record() -> None:
    """Anyone may name a cgroup `docker-<id>.scope` in their own delegated subtree: root's
    records name root's containers only, so the advice never names root's container."""
    disk = Disk({f"/var/lib/docker/containers/{DOCKER_ID}/config.v2.json": DOCKER_CONFIG})
    fake = proc(70, ("/srv/x",), f"/user.slice/user-1000.slice/user@1000.service/"
                f"docker-{DOCKER_ID}.scope", uid=1000)
    found = disk.identifier().identify([fake])
    assert found is not None and (found.name, found.user) == ("", "u1000")
    assert found.stop_command == f"runuser -u u1000 -- docker stop {DOCKER_ID[:12]}"
    assert not any(r.endswith("config.v2.json") for r in disk.reads)
    podman = proc(71, ("/srv/x",), f"/user.slice/user-1000.slice/user@1000.service/"
                  f"libpod-{CID}.scope", uid=1000)
    assert Disk(PODMAN_DISK).identifier().identify([podman]).name == ""  # root's store: no
