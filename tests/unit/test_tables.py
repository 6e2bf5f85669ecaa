"""portguard.report.tables: the table people read and the JSON scripts parse, from fixed facts."""

from __future__ import annotations

import json
import socket

import pytest

from portguard.model import Container, Holder, Process, Proto, Socket, Unit
from portguard.observe.observer import PortReport
from portguard.report import tables as report

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
TCP, UDP = Proto.TCP, Proto.UDP
WEB = Unit("web@blue.service", "active", "running", 1234,
           "/system.slice/system-web.slice/web@blue.service")


def listen(port: int = 8080, inode: int = 4711, *, addr: str = "0.0.0.0",
           family: int = AF_INET, proto: Proto = TCP, state: str = "LISTEN",
           remote: tuple[str, int] = ("0.0.0.0", 0), uid: int = 33,
           v6only: bool | None = None) -> Socket:
    return Socket(proto, family, state, addr, port, remote[0], remote[1], uid, inode, v6only)


def proc(pid: int = 1234, cmdline: tuple[str, ...] = ("/opt/web/bin/webd", "--port", "8080"),
         user: str = "www-data", uid: int = 33) -> Process:
    return Process(pid, 777, 1, uid, user, "/opt/web/bin/webd", cmdline,
                   "/system.slice/system-web.slice/web@blue.service", (3,))


def held(*holders: Holder, port: int = 8080, proto: Proto = TCP, connections: int = 0,
         source: str = "dbus") -> PortReport:
    return PortReport(port, proto, holders, connections, source)


def free(port: int = 8080, proto: Proto = TCP) -> PortReport:
    return PortReport(port, proto, (), 0, "")


def lines(text: str) -> list[str]:
    return text.splitlines()


# --- endpoint ---------------------------------------------------------------------------

def test_endpoint_brackets_ipv6_only() -> None:
    assert report.endpoint("0.0.0.0", 80, AF_INET) == "0.0.0.0:80"
    assert report.endpoint("::1", 80, AF_INET6) == "[::1]:80"
    assert report.endpoint("::", 8443, AF_INET6) == "[::]:8443"
    assert report.endpoint("::ffff:127.0.0.1", 80, AF_INET6) == "[::ffff:127.0.0.1]:80"


# --- JSON -------------------------------------------------------------------------------

def test_port_doc_has_designs_shape_and_types() -> None:
    doc = report.port_doc(held(Holder(listen(), (proc(),), WEB)))
    json.dumps(doc)  # serialisable as it is
    assert {k: doc[k] for k in ("port", "proto", "free")} == {"port": 8080, "proto": "tcp",
                                                              "free": False}
    [row] = doc["holders"]
    assert {k: row[k] for k in ("pid", "address", "state", "cmdline", "user", "unit")} == {
        "pid": 1234, "address": "0.0.0.0", "state": "LISTEN",
        "cmdline": ["/opt/web/bin/webd", "--port", "8080"], "user": "www-data",
        "unit": "web@blue.service"}
    assert row["unit_state"] == "active/running"
    assert (row["family"], row["uid"], row["inode"], row["fds"]) == ("ipv4", 33, 4711, [3])
    assert "kind" not in row  # only where a service context exists
    assert "remote" not in row  # a listener has no peer
    assert "units_from" not in doc
    assert "connections" not in doc


def test_port_doc_of_a_free_port() -> None:
    assert report.port_doc(free(53, UDP)) == {"port": 53, "proto": "udp", "free": True,
                                              "holders": []}


def test_port_doc_one_row_per_process_of_a_shared_socket() -> None:
    workers = [proc(pid) for pid in (100, 101, 102, 103)]
    doc = report.port_doc(held(Holder(listen(inode=99), tuple(workers), WEB)))
    assert [(r["pid"], r["inode"], r["unit"]) for r in doc["holders"]] == [
        (100, 99, "web@blue.service"), (101, 99, "web@blue.service"),
        (102, 99, "web@blue.service"), (103, 99, "web@blue.service")]


def test_port_doc_kinds_by_inode() -> None:
    a, b = Holder(listen(inode=1), (proc(10),), WEB), Holder(listen(inode=2), (proc(20),))
    doc = report.port_doc(held(a, b), kinds={1: "twin", 2: "foreign"})
    assert [r["kind"] for r in doc["holders"]] == ["twin", "foreign"]


def test_port_doc_without_a_process() -> None:
    tw = Holder(listen(inode=0, state="TIME_WAIT", remote=("127.0.0.1", 51000), uid=0))
    unknown = Holder(listen(inode=5), unknown_reason="holder unknown (needs root)")
    doc = report.port_doc(held(tw, unknown))
    tw_row, unknown_row = doc["holders"]
    assert (tw_row["pid"], tw_row["user"], tw_row["cmdline"], tw_row["unit"]) == (
        None, None, [], None)
    assert tw_row["remote"] == "127.0.0.1:51000"
    assert "unknown" not in tw_row
    assert unknown_row["unknown"] == "holder unknown (needs root)"
    assert doc["free"] is False  # the unknown holder is live


def test_port_doc_free_when_only_lingering() -> None:
    doc = report.port_doc(held(
        Holder(listen(inode=0, state="TIME_WAIT", remote=("10.0.0.1", 4000))),
        Holder(listen(inode=0, state="FIN_WAIT2", remote=("10.0.0.2", 4001))),
        source=""))
    assert doc["free"] is True
    assert [r["state"] for r in doc["holders"]] == ["TIME_WAIT", "FIN_WAIT2"]


def test_port_doc_extras() -> None:
    six = Holder(listen(addr="::", family=AF_INET6, v6only=False), (proc(),),
                 Unit("x.service"), Container("docker", "3f2a9c1b2d4e" * 5, "web", "nginx:1",
                                              "", "config.v2.json"), "", ("a note",))
    doc = report.port_doc(held(six, connections=4, source="cgroup"))
    [row] = doc["holders"]
    assert (row["address"], row["family"], row["v6only"]) == ("::", "ipv6", False)
    assert row["container"] == {"runtime": "docker", "name": "web", "id": "3f2a9c1b2d4e" * 5,
                                "image": "nginx:1", "via": None, "source": "config.v2.json",
                                "user": None, "stop": "docker stop web"}
    assert row["notes"] == ["a note"]
    assert row["unit_state"] is None  # a unit known only by name
    assert doc["connections"] == 4
    assert doc["units_from"] == "cgroup (systemd D-Bus unreachable)"


def test_port_doc_user_of_an_unnamed_uid_is_none_not_empty() -> None:
    doc = report.port_doc(held(Holder(listen(), (proc(user="", uid=-1),))))
    assert doc["holders"][0]["user"] is None


# --- the table ----------------------------------------------------------------------------

def test_table_header_free_and_held_rows() -> None:
    text = report.table([
        held(Holder(listen(), (proc(),), WEB)),
        free(5353, UDP),
    ])
    header, row, free_row = lines(text)
    assert header.split() == ["PORT", "STATE", "ADDRESS", "PID", "USER", "UNIT", "COMMAND"]
    assert row.split() == ["8080/tcp", "LISTEN", "0.0.0.0:8080", "1234", "www-data",
                           "web@blue.service", "(active)", "/opt/web/bin/webd", "--port",
                           "8080"]
    assert free_row.split() == ["5353/udp", "free"]


def test_table_columns_line_up() -> None:
    text = report.table([
        held(Holder(listen(addr="::1", family=AF_INET6), (proc(7),), None), port=8080),
        held(Holder(listen(port=53, proto=UDP, state="UNCONN"), (proc(123456),), WEB),
             port=53, proto=UDP),
    ])
    rows = lines(text)
    starts = [rows[0].index(col) for col in ("STATE", "ADDRESS", "PID", "USER", "UNIT",
                                             "COMMAND")]
    for row in rows[1:]:
        assert [row[s - 2:s] == "  " and row[s] != " " for s in starts] == [True] * 6, row


def test_table_brackets_ipv6_and_marks_no_unit() -> None:
    text = report.table([held(Holder(listen(addr="::", family=AF_INET6), (proc(),), None))])
    row = lines(text)[1].split()
    assert row[2] == "[::]:8080"
    assert row[5] == "-"


def test_table_shows_a_container_with_or_without_a_unit() -> None:
    cid = "3f2a9c1b2d4e" + "0" * 52
    in_unit = Holder(listen(inode=1), (proc(1),), Unit("libpod-conmon-abc.scope"),
                     Container("podman", cid, "web", "localhost/web:1", "conmon"))
    bare = Holder(listen(inode=2), (proc(2),), None, Container("podman", "a" * 64))
    plain = Holder(listen(inode=3), (proc(3),), WEB)
    text = report.table([held(in_unit, bare, plain)])
    header, first, second, third = lines(text)[:4]
    assert header.split() == ["PORT", "STATE", "ADDRESS", "PID", "USER", "UNIT", "CONTAINER",
                              "COMMAND"]
    assert first.split()[5:7] == ["libpod-conmon-abc.scope", "web"]
    assert second.split()[5:7] == ["-", "aaaaaaaaaaaa"]  # no name known: the short id
    assert third.split()[5:7] == ["web@blue.service", "(active)"]
    assert third.split()[7] == "-"
    assert ("note: 8080/tcp: held by conmon for podman container web (3f2a9c1b2d4e, image "
            "localhost/web:1): `podman stop web` frees it") in text.splitlines()
    assert "note: 8080/tcp: held by podman container aaaaaaaaaaaa: `podman stop aaaaaaaaaaaa` " \
        "frees it" in text.splitlines()


def test_table_names_a_published_port_no_process_holds() -> None:
    sock = listen(inode=0, state="PUBLISHED", remote=("10.88.0.2", 8080), uid=0)
    text = report.table([held(Holder(sock, container=Container("podman", "b" * 64, "web")))])
    row = lines(text)[1]
    assert row.split()[:2] == ["8080/tcp", "PUBLISHED"]
    assert row.split()[3:7] == ["-", "-", "-", "web"]
    assert row.endswith("(no process: the kernel forwards it to 10.88.0.2:8080)")


def test_table_every_worker_gets_a_row() -> None:
    holder = Holder(listen(), tuple(proc(pid) for pid in (10, 11, 12)), WEB)
    rows = lines(report.table([held(holder)]))[1:]
    assert [r.split()[3] for r in rows] == ["10", "11", "12"]


def test_table_rows_without_a_process() -> None:
    tw = Holder(listen(inode=0, state="TIME_WAIT", remote=("127.0.0.1", 5), uid=0))
    unknown = Holder(listen(inode=5, uid=1000), unknown_reason="holder unknown (needs root)")
    rows = lines(report.table([held(tw, unknown)]))[1:3]
    assert "(no process: kernel-held)" in rows[0]
    assert rows[1].split()[3:5] == ["-", "1000"]
    assert rows[1].endswith("holder unknown (needs root)")


def test_table_command_is_quoted_and_shortened() -> None:
    spaced = proc(1, ("/usr/bin/python3", "-c", "print('a b')"))
    long = proc(2, ("/usr/bin/python3", *(["--flag"] * 20)))
    kthread = Process(3, 1, 2, 0, "root", "", ())
    rows = lines(report.table([held(Holder(listen(inode=1), (spaced, long, kthread)))]))[1:]
    assert rows[0].endswith("/usr/bin/python3 -c 'print('\"'\"'a b'\"'\"')'")
    command = rows[1][rows[0].index("/usr/bin"):]
    assert len(command) == 60 and command.endswith("...")
    assert rows[2].endswith("[?]")


def test_table_notes() -> None:
    dbusless = held(Holder(listen(), (proc(),), Unit("x.service", from_dbus=False),
                           notes=("docker-proxy for container 172.17.0.2:80/tcp",)),
                    connections=2, source="cgroup")
    lingering = held(Holder(listen(port=9090, inode=0, state="TIME_WAIT",
                                   remote=("127.0.0.1", 6))), port=9090, source="")
    notes = [line for line in lines(report.table([dbusless, lingering]))
             if line.startswith("note: ")]
    assert notes == [
        "note: 8080/tcp: docker-proxy for container 172.17.0.2:80/tcp",
        "note: 8080/tcp: 2 accepted connection(s) not listed",
        "note: 8080/tcp: units named from cgroups: systemd's D-Bus API unreachable",
        "note: 9090/tcp: only lingering sockets (TIME_WAIT): free for a service that sets "
        "SO_REUSEADDR, if the old socket set it too",
    ]


def test_table_notes_are_not_repeated() -> None:
    a = Holder(listen(inode=1), (proc(1),), notes=("same",))
    b = Holder(listen(inode=2), (proc(2),), notes=("same",))
    text = report.table([held(a, b)])
    assert text.count("note: 8080/tcp: same") == 1


@pytest.mark.parametrize("state", ["FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK"])
def test_table_names_the_lingering_states(state: str) -> None:
    rep = held(Holder(listen(inode=0, state="TIME_WAIT", remote=("1.1.1.1", 1))),
               Holder(listen(inode=0, state=state, remote=("1.1.1.1", 2))), source="")
    assert f"only lingering sockets ({', '.join(sorted([state, 'TIME_WAIT']))})" \
        in report.table([rep])
