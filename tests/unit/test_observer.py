"""portguard.observe.observer with its three sources faked: sockets (a `query` function), /proc (a
fake tree in tmp_path, searched by the real processes.find_owners) and systemd (a fake
`connect` returning an object with `unit_for_pid` and `close`).

What is checked is what `who` then prints: the JSON document (report.port_doc) and, where
it matters, the table (report.table).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from portguard.model import Proto, Socket, Unit
from portguard.observe import observer
from portguard.observe.containers import lookup
from portguard.observe.observer import Observer, PortReport, UnitLookup
from portguard.observe.procs import processes
from portguard.observe.procs.cgroupfs import CgroupTree
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
from portguard.report import tables as report

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
TCP, UDP = Proto.TCP, Proto.UDP


def sock(port: int, inode: int, state: str = "LISTEN", *, proto: Proto = TCP,
         addr: str = "0.0.0.0", remote: tuple[str, int] = ("0.0.0.0", 0), uid: int = 0,
         family: int = AF_INET) -> Socket:
    return Socket(proto, family, state, addr, port, remote[0], remote[1], uid, inode)


class World:
    """A fake host: its sockets, its /proc, its systemd."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.proc.mkdir()
        self.sockets: list[Socket] = []
        self.queries: list[tuple[list[int], tuple[Proto, ...]]] = []
        self.units: dict[int, Unit | Exception | None] = {}
        self.socket_units: list[Unit] = []
        self.connects = 0
        self.connect_error: Exception | None = None
        self.asked: list[int] = []
        self.deny: set[int] = set()

    def add_process(self, pid: int, cgroup: str, fds: dict[int, int],
                    cmdline: Sequence[str] = ("/usr/bin/python3", "app.py"),
                    ppid: int = 1) -> None:
        d = self.proc / str(pid)
        (d / "fd").mkdir(parents=True)
        rest = " ".join("5000" if n == 22 else str(ppid) if n == 4 else "1"
                        for n in range(4, 53))
        (d / "stat").write_text(f"{pid} (app) S {rest}\n")
        (d / "status").write_text("Name:\tapp\nUid:\t0\t0\t0\t0\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        for fd, inode in fds.items():
            os.symlink(f"socket:[{inode}]", d / "fd" / str(fd))

    # the three sources, as Observer and UnitLookup take them

    def query(self, ports: Sequence[int], protos: Iterable[Proto]) -> list[Socket]:
        protos = tuple(protos)
        self.queries.append((list(ports), protos))
        return [s for s in self.sockets if s.local_port in ports and s.proto in protos]

    def connect(self) -> Any:
        self.connects += 1
        if self.connect_error is not None:
            raise self.connect_error
        world = self

        class FakeSystemd:
            def unit_for_pid(self, pid: int) -> Unit | None:
                world.asked.append(pid)
                found = world.units.get(pid)
                if isinstance(found, Exception):
                    raise found
                return found

            def socket_units(self) -> list[Unit]:
                world.asked.append("socket_units")
                return world.socket_units

            def close(self) -> None:
                pass

        return FakeSystemd()

    def observer(self) -> Observer:
        return Observer(UnitLookup(self.connect), query=self.query)

    def who(self, *wanted: tuple[int, Proto]) -> list[PortReport]:
        return self.observer().ports(list(wanted))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    # processes.find_owners, unchanged, pointed at the fake /proc (no cgroup tree: the
    # fake sockets carry no cgroup id, so the uid ring and the full scan find owners).
    monkeypatch.setattr(processes, "find_owners", functools.partial(
        processes.find_owners, proc=str(w.proc), cgroups=CgroupTree("")))
    real_listdir = os.listdir

    def listdir(path: str | os.PathLike[str] = ".") -> list[str]:
        text = os.fspath(path)
        if text.startswith(str(w.proc)) and text.endswith("/fd") \
                and int(text.split("/")[-2]) in w.deny:
            raise PermissionError(13, "Permission denied", text)  # no CAP_SYS_PTRACE
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    # the fake /proc's cgroups exist nowhere: as on a host, root made them all
    monkeypatch.setattr(lookup, "_cgroup_owner", lambda cgroup: 0)
    return w


def x_service(pid: int = 0) -> Unit:
    return Unit("x.service", "active", "running", pid, "/system.slice/x.service")


# --- free ports ------------------------------------------------------------------------

def test_free_port_is_free_and_never_connects_to_dbus(world: World) -> None:
    [rep] = world.who((8080, TCP))
    assert report.port_doc(rep) == {"port": 8080, "proto": "tcp", "free": True,
                                    "holders": []}
    assert world.connects == 0
    assert "8080/tcp  free" in report.table([rep])


def test_reports_come_in_the_order_asked_with_one_query_per_protocol(world: World) -> None:
    world.sockets = [sock(53, 0, "UNCONN", proto=UDP)]
    reps = world.who((8080, TCP), (53, UDP), (7000, TCP), (8080, UDP))
    assert [(r.port, r.proto) for r in reps] == [(8080, TCP), (53, UDP), (7000, TCP),
                                                 (8080, UDP)]
    assert sorted(world.queries) == sorted([([7000, 8080], (TCP,)), ([53, 8080], (UDP,))])


# --- listeners and their connections ---------------------------------------------------

def test_accepted_connections_are_counted_not_listed(world: World) -> None:
    world.sockets = [
        sock(8080, 100),
        sock(8080, 101, "ESTABLISHED", remote=("10.0.0.5", 40001)),
        sock(8080, 102, "ESTABLISHED", remote=("10.0.0.6", 40002)),
        sock(8080, 0, "SYN_RECV", remote=("10.0.0.7", 40003)),
    ]
    world.add_process(10, "/system.slice/x.service", {3: 100, 4: 101, 5: 102})
    world.units[10] = x_service(10)
    [rep] = world.who((8080, TCP))
    assert rep.connections == 3
    doc = report.port_doc(rep)
    assert doc["free"] is False
    assert doc["connections"] == 3
    assert [(h["pid"], h["state"], h["unit"]) for h in doc["holders"]] == [
        (10, "LISTEN", "x.service")]
    assert "8080/tcp: 3 accepted connection(s) not listed" in report.table([rep])


def test_a_connection_without_a_listener_is_a_holder(world: World) -> None:
    # A client that bound the port itself, or a listener gone with its connections kept.
    world.sockets = [sock(8080, 110, "ESTABLISHED", remote=("10.0.0.5", 443))]
    world.add_process(11, "/system.slice/x.service", {7: 110})
    world.units[11] = x_service(11)
    [rep] = world.who((8080, TCP))
    assert rep.connections == 0
    doc = report.port_doc(rep)
    assert doc["free"] is False
    assert [(h["pid"], h["state"], h["remote"]) for h in doc["holders"]] == [
        (11, "ESTABLISHED", "10.0.0.5:443")]


# --- lingering sockets -----------------------------------------------------------------

def test_lingering_only_port_is_free(world: World) -> None:
    world.sockets = [sock(8080, 0, "TIME_WAIT", addr="127.0.0.1", remote=("127.0.0.1", 5001)),
                     sock(8080, 0, "TIME_WAIT", addr="127.0.0.1", remote=("127.0.0.1", 5002))]
    [rep] = world.who((8080, TCP))
    assert rep.live == ()
    doc = report.port_doc(rep)
    assert doc["free"] is True
    assert [(h["state"], h["pid"], h["cmdline"]) for h in doc["holders"]] == [
        ("TIME_WAIT", None, []), ("TIME_WAIT", None, [])]
    assert world.connects == 0  # nothing to name a unit for


def test_lingering_only_port_does_not_claim_dbus_is_unreachable(world: World) -> None:
    # D-Bus works (it was simply not needed): saying it is unreachable is false.
    world.sockets = [sock(8080, 0, "TIME_WAIT", remote=("127.0.0.1", 5001))]
    [rep] = world.who((8080, TCP))
    assert "units_from" not in report.port_doc(rep)
    assert "D-Bus" not in report.table([rep])


def test_listener_with_lingering_sockets_is_held(world: World) -> None:
    world.sockets = [sock(8080, 120), sock(8080, 0, "TIME_WAIT", remote=("1.2.3.4", 9))]
    world.add_process(12, "/system.slice/x.service", {3: 120})
    world.units[12] = x_service(12)
    [rep] = world.who((8080, TCP))
    assert [h.socket.state for h in rep.live] == ["LISTEN"]
    assert report.port_doc(rep)["free"] is False


# --- holders that cannot be named ------------------------------------------------------

def test_unreadable_fd_tables_make_the_holder_unknown_needs_root(world: World) -> None:
    world.sockets = [sock(8080, 130, uid=1000)]
    world.add_process(13, "/user.slice/user-1000.slice/session-2.scope", {3: 130})
    world.deny.add(13)
    [rep] = world.who((8080, TCP))
    [holder] = rep.holders
    assert holder.unknown_reason == "holder unknown (needs root)"
    doc = report.port_doc(rep)
    assert doc["free"] is False  # not dropped: the port is held, by someone
    [row] = doc["holders"]
    assert (row["pid"], row["unknown"], row["uid"]) == (None, "holder unknown (needs root)",
                                                        1000)
    assert "holder unknown (needs root)" in report.table([rep])


def test_a_socket_nobody_holds_any_more_is_holder_not_found(world: World) -> None:
    world.sockets = [sock(8080, 140)]  # its process exited between the two reads
    world.add_process(14, "/system.slice/x.service", {3: 999})
    [rep] = world.who((8080, TCP))
    assert [h.unknown_reason for h in rep.holders] == ["holder not found"]


# --- units -----------------------------------------------------------------------------

def test_units_come_from_dbus(world: World) -> None:
    world.sockets = [sock(8080, 150), sock(9090, 151)]
    world.add_process(15, "/system.slice/x.service", {3: 150})
    world.add_process(16, "/", {3: 151})  # a stray outside any unit
    world.units = {15: x_service(15), 16: None}
    r8080, r9090 = world.who((8080, TCP), (9090, TCP))
    assert r8080.unit_source == "dbus"
    assert [h["unit"] for h in report.port_doc(r8080)["holders"]] == ["x.service"]
    assert report.port_doc(r8080)["holders"][0]["unit_state"] == "active/running"
    assert [h["unit"] for h in report.port_doc(r9090)["holders"]] == [None]
    assert world.connects == 1


def test_dbus_unreachable_units_come_from_cgroups_and_it_is_said(world: World) -> None:
    world.sockets = [sock(8080, 160), sock(8081, 161)]
    world.add_process(17, "/system.slice/system-web.slice/web@a.service", {3: 160})
    world.add_process(18, "/system.slice/system-web.slice/web@b.service", {3: 161})
    world.connect_error = SystemdUnavailable("cannot connect to the system bus: refused")
    reps = world.who((8080, TCP), (8081, TCP))
    assert [[h.unit.id if h.unit else None for h in r.holders] for r in reps] == [
        ["web@a.service"], ["web@b.service"]]
    assert all(h.unit is not None and not h.unit.from_dbus for r in reps for h in r.holders)
    assert [r.unit_source for r in reps] == ["cgroup", "cgroup"]
    assert report.port_doc(reps[0])["units_from"] == "cgroup (systemd D-Bus unreachable)"
    assert "units named from cgroups: systemd's D-Bus API unreachable" in report.table(reps)
    assert world.connects == 1  # tried once, not once per holder


def test_a_dbus_error_for_one_pid_falls_back_to_its_cgroup(world: World) -> None:
    world.sockets = [sock(8080, 170)]
    world.add_process(19, "/system.slice/x.service", {3: 170})
    world.units[19] = SystemdError("org.freedesktop.systemd1.NoSuchProcess", "gone")
    [rep] = world.who((8080, TCP))
    assert [h.unit.id if h.unit else None for h in rep.holders] == ["x.service"]


def test_each_process_is_named_with_its_own_unit(world: World) -> None:
    # Socket activation: PID 1 keeps the listening socket and passed it to sa.service.
    # `ss -p` lists both; each row must name the unit that process runs in.
    world.sockets = [sock(8080, 180, family=AF_INET6, addr="::")]
    world.add_process(1, "/init.scope", {29: 180}, cmdline=("/sbin/init",))
    world.add_process(50, "/system.slice/sa.service", {3: 180})
    world.units = {1: Unit("init.scope", "active", "running"),
                   50: Unit("sa.service", "active", "running", 50)}
    [rep] = world.who((8080, TCP))
    rows = report.port_doc(rep)["holders"]
    # no socket unit listens there (D-Bus says none): PID 1 stays init.scope
    assert [(r["pid"], r["unit"]) for r in rows] == [(1, "init.scope"), (50, "sa.service")]

    # ... and with sa.socket listening on [::]:8080, PID 1's row is sa.socket's (case 4)
    world.socket_units = [Unit("sa.socket", "active", "listening", triggers=("sa.service",),
                               listen=(("Stream", "[::]:8081"), ("Stream", "[::]:8080")))]
    [rep] = world.who((8080, TCP))
    rows = report.port_doc(rep)["holders"]
    assert [(r["pid"], r["unit"], r.get("activates")) for r in rows] == [
        (1, "sa.socket", ["sa.service"]), (50, "sa.service", None)]
    assert ("note: 8080/tcp: PID 1 (systemd) listens for sa.socket, which activates "
            "sa.service; `systemctl stop sa.socket` frees it") in report.table([rep])


def test_the_master_that_forked_the_only_listener_comes_with_it(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """haproxy -W: the worker (pid 20) alone holds the socket; its parent, the master
    (pid 10), runs in the same cgroup and holds none. It is the holder's master, never
    one of its processes; a parent in another cgroup (a unit's, a shell's) is none."""
    monkeypatch.setattr(observer, "_read_parent", lambda pid: processes.read_process(
        pid, proc=str(world.proc)) if (world.proc / str(pid)).exists() else None)
    haproxy = ("/usr/sbin/haproxy", "-W", "-D", "-f", "/etc/haproxy/haproxy.cfg")
    world.sockets = [sock(8080, 180)]
    world.add_process(10, "/", {}, cmdline=haproxy)
    world.add_process(20, "/", {5: 180}, cmdline=haproxy, ppid=10)
    [rep] = world.who((8080, TCP))
    [h] = rep.holders
    assert [p.pid for p in h.processes] == [20]
    assert h.master is not None and (h.master.pid, h.master.cmdline) == (10, haproxy)
    assert [r["pid"] for r in report.port_doc(rep)["holders"]] == [20]

    world.add_process(30, "/user.slice/session-1.scope", {}, cmdline=("-bash",))
    world.add_process(40, "/", {5: 181}, cmdline=haproxy, ppid=30)
    world.add_process(50, "/", {5: 182}, cmdline=haproxy, ppid=99)  # parent gone
    world.sockets = [sock(8081, 181), sock(8082, 182)]
    reps = world.who((8081, TCP), (8082, TCP))
    assert [h.master for r in reps for h in r.holders] == [None, None]


def test_socket_units_are_asked_only_when_pid_1_holds_a_port(world: World) -> None:
    world.sockets = [sock(8080, 180)]
    world.add_process(50, "/system.slice/web.service", {3: 180})
    world.units = {50: Unit("web.service", "active", "running", 50)}
    world.socket_units = [Unit("web.socket", listen=(("Stream", "0.0.0.0:8080"),))]
    [rep] = world.who((8080, TCP))
    assert "socket_units" not in world.asked
    assert rep.holders[0].unit is not None and rep.holders[0].unit.id == "web.service"


def test_containers_and_docker_proxy_are_named(world: World) -> None:
    cid = "3f2a9c1b2d4e" + "0" * 52
    world.sockets = [sock(8080, 190), sock(8443, 191)]
    world.add_process(20, f"/system.slice/docker-{cid}.scope", {3: 190})
    world.add_process(21, "/system.slice/docker.service", {4: 191}, cmdline=(
        "/usr/bin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", "8443",
        "-container-ip", "172.17.0.2", "-container-port", "443"))
    world.units = {20: Unit(f"docker-{cid}.scope"), 21: Unit("docker.service")}
    r8080, r8443 = world.who((8080, TCP), (8443, TCP))
    doc = report.port_doc(r8080)["holders"][0]["container"]
    assert (doc["runtime"], doc["id"], doc["stop"]) == ("docker", cid, f"docker stop {cid[:12]}")
    assert report.port_doc(r8443)["holders"][0]["container"]["via"] == "docker-proxy"
    assert report.port_doc(r8443)["holders"][0]["notes"] == [
        "docker-proxy for container 172.17.0.2:443/tcp"]
    assert "8443/tcp: docker-proxy for container 172.17.0.2:443/tcp" in report.table([r8443])
