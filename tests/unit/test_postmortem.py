"""`why`'s and `discover`'s pure judgements: where ports come from, the next step per
kind of holder, exit statuses, journal grouping, and the proposal's grouping and YAML."""

from __future__ import annotations

import json
import socket

import pytest

from portguard.config.schema import Service, loads
from portguard.decide import bindfail, postmortem, proposal
from portguard.decide.bindfail import BindFailure
from portguard.decide.classify import Conflict, Kind
from portguard.errors import ExitStatus
from portguard.model import Holder, PortSpec, Process, Proto, Socket, Unit
from portguard.observe.systemd import journal

TCP = Proto.TCP


def _sock(port: int = 8080) -> Socket:
    return Socket(TCP, socket.AF_INET, "LISTEN", "0.0.0.0", port, "0.0.0.0", 0, 0, 77)


def _conflict(kind: Kind, unit: str | None = None, pid: int = 42,
              untouchable: str = "") -> Conflict:
    holder = Holder(_sock(), (Process(pid, 1),), Unit(unit) if unit else None)
    return Conflict(8080, TCP, kind, "", holder, unit, holder.processes, untouchable)


def test_ports_come_from_the_message_first() -> None:
    f = BindFailure("nginx", "0.0.0.0", 80, TCP, "...")
    svc = Service("web.service", (PortSpec(9000, 9000),))
    got = postmortem.wanted_ports([f], svc, {"web.socket": (("Stream", "81"),)}, [])
    assert [(w.port, w.address, w.source) for w in got] == [(80, "0.0.0.0", "message")]


def test_then_config_then_socket_units_then_listening_now() -> None:
    f = BindFailure("java", None, None, TCP, "...")
    svc = Service("web.service", (PortSpec(9000, 9001, TCP, "127.0.0.1"),))
    assert [(w.port, w.source) for w in postmortem.wanted_ports([f], svc, {}, [])] == [
        (9000, "config"), (9001, "config")]
    sockets = {"web.socket": (("Stream", "[::]:81"), ("Datagram", "0.0.0.0:53"),
                              ("Stream", "/run/web.sock"))}
    got = postmortem.wanted_ports([f], None, sockets, [(7, TCP, "::")])
    assert [(w.port, w.proto, w.address, w.detail) for w in got] == [
        (81, TCP, "::", "web.socket"), (53, Proto.UDP, "0.0.0.0", "web.socket")]
    got = postmortem.wanted_ports([f], None, {}, [(7, TCP, "::")])
    assert [(w.port, w.source) for w in got] == [(7, "listening now")]
    assert postmortem.wanted_ports([f], None, {}, []) == []


@pytest.mark.parametrize(("kind", "unit", "command"), [
    (Kind.TWIN, "web@a.service", "systemctl stop web@a.service"),
    (Kind.STRAY, None, "kill 42 && systemctl restart web@b.service"),
    (Kind.SELF, "web@b.service",
     "systemctl stop web@b.service && systemctl start web@b.service"),
    (Kind.FOREIGN, "nginx.service", "systemctl stop nginx.service"),
    (Kind.FOREIGN, None, ""),  # never `kill` for a program that is not the unit's
    (Kind.FOREIGN, "session-3.scope", ""),
    (Kind.LINGERING, None, "systemctl restart web@b.service"),
])
def test_next_step_per_kind(kind: Kind, unit: str | None, command: str) -> None:
    step = postmortem.next_step("web@b.service", str(kind), _conflict(kind, unit))
    assert step.command == command
    if kind in (Kind.TWIN, Kind.STRAY, Kind.SELF):
        assert "portguard install web@.service" in step.advice


def test_untouchable_holders_get_no_command_and_activation_names_the_socket() -> None:
    step = postmortem.next_step("web.service", "foreign",
                                _conflict(Kind.FOREIGN, "init.scope", 1, "PID 1 holds it"))
    assert step.command == "" and "never touches" in step.advice
    step = postmortem.next_step("web.service", postmortem.ACTIVATION,
                                _conflict(Kind.FOREIGN, "init.scope", 1), "web.socket")
    assert step.command == "systemctl stop web.socket" and "sd_listen_fds" in step.advice
    step = postmortem.next_step("web.service", postmortem.RUNNING,
                                _conflict(Kind.SELF, "web.service"))
    assert step.command == "" and "runs again" in step.advice
    unseen = Holder(_sock(), (), None, unknown_reason="holder unknown (needs root)")
    hidden = Conflict(8080, TCP, Kind.FOREIGN, "", unseen, None, (), "")
    step = postmortem.next_step("web.service", "foreign", hidden)
    assert step.command == "sudo portguard why web.service"
    free = postmortem.next_step("web.service", "", None)
    assert free.advice == "the port is free now: `systemctl restart web.service`"


def test_own_activation_needs_pid_1_and_a_socket_unit_that_activates_the_unit() -> None:
    web_socket = Unit("web.socket", triggers=("web.service",))
    pid1 = Holder(_sock(), (Process(1, 1),), web_socket)
    other = Holder(_sock(), (Process(5, 1),), web_socket)
    assert postmortem.is_own_activation(pid1, "web.service")
    assert not postmortem.is_own_activation(pid1, "db.service")
    assert not postmortem.is_own_activation(other, "web.service")


def test_exit_statuses() -> None:
    assert postmortem.exit_status(False, True, True) == ExitStatus.NO_BIND_FAILURE == 3
    assert postmortem.exit_status(True, False, False) == ExitStatus.OK
    assert postmortem.exit_status(True, True, False) == ExitStatus.BLOCKED
    assert postmortem.exit_status(True, False, True) == ExitStatus.NO_PORT_FOUND == 4
    assert postmortem.exit_status(True, True, True) == ExitStatus.NO_PORT_FOUND


def _record(usec: int, unit: str, inv: str, msg: str, own: bool = True) -> str:
    key = "_SYSTEMD_UNIT" if own else "UNIT"
    inv_key = "_SYSTEMD_INVOCATION_ID" if own else "INVOCATION_ID"
    return json.dumps({"__REALTIME_TIMESTAMP": str(usec), key: unit, inv_key: inv,
                       "MESSAGE": msg, "SYSLOG_IDENTIFIER": "x", "_PID": "9", "_UID": "0"})


def test_journal_records_group_into_invocations_newest_first() -> None:
    lines = [_record(30, "w.service", "c", "3"), _record(25, "w.service", "", "3b"),
             _record(20, "w.service", "b", "2", own=False), _record(10, "w.service", "a", "1"),
             json.dumps({"MESSAGE": [104, 105], "_SYSTEMD_UNIT": "w.service",
                         "__REALTIME_TIMESTAMP": "5", "_SYSTEMD_INVOCATION_ID": "a"}),
             "not json", json.dumps({"UNIT": "w.service", "_UID": "1000", "MESSAGE": "forged",
                                     "__REALTIME_TIMESTAMP": "4", "INVOCATION_ID": "a"})]
    records = journal.parse("\n".join(lines), ["w.service"])
    assert records[-1].message == "hi"  # bytes arrays decoded; a user's UNIT= is no record
    assert "forged" not in [r.message for r in records]
    groups = journal.group(records, limit=2)
    assert [(g.id, [r.message for r in g.records]) for g in groups] == [
        ("c", ["3b", "3"]), ("b", ["2"])]


def _seen(unit: str | None, port: int, address: str = "0.0.0.0", pid: int = 10,
          proto: Proto = TCP) -> proposal.Seen:
    return proposal.Seen(unit, address, port, proto, ":" in address, pid, "/usr/bin/x")


def test_proposal_groups_twins_under_the_template_and_keeps_different_ports_apart() -> None:
    seen = [_seen("web@a.service", 80), _seen("web@a.service", 80, "::"),
            _seen("job@1.service", 9001), _seen("job@2.service", 9002),
            _seen("ssh.service", 22), _seen("systemd-resolved.service", 53),
            _seen("x.socket", 7000, pid=1), _seen(None, 6000, pid=99),
            _seen("session-2.scope", 5000), _seen("dns.service", 53, "127.0.0.1", 5,
                                                  Proto.UDP)]
    found, skipped = proposal.entries(seen, proposal.DEFAULT_PROTECTED)
    assert [(e.key, e.ports) for e in found] == [
        ("dns.service", ("127.0.0.1:53/udp",)),
        ("job@1.service", ("0.0.0.0:9001/tcp",)),
        ("job@2.service", ("0.0.0.0:9002/tcp",)),
        ("web@.service", ("0.0.0.0:80/tcp", "[::]:80/tcp")),
    ]
    assert "0.0.0.0:80 and [::]:80" in found[-1].comment
    text = "\n".join(skipped)
    for expected in ("ssh.service: pid 10 /usr/bin/x, 0.0.0.0:22 (protected)",
                     "systemd-resolved.service", "x.service: socket-activated",
                     "pid 99 /usr/bin/x, 0.0.0.0:6000 (outside any unit)",
                     "session-2.scope"):
        assert expected in text
    rendered = proposal.render(found, skipped, proposal.DEFAULT_PROTECTED, "hello\n\nthere")
    cfg = loads(rendered)
    assert [s.name for s in cfg.services] == [e.key for e in found]
    assert cfg.protected[:2] == ("sshd.service", "ssh.service")
    assert loads(proposal.render([], skipped, (), "x")).services == ()
    _, skipped = proposal.entries([_seen("x.socket", 7000, pid=1)], (),
                                  {"x.socket": ("y.service",)})
    assert skipped[0].startswith("y.service: socket-activated: PID 1 holds 0.0.0.0:7000 "
                                 "for x.socket")


def test_an_unreadable_journal_is_not_permitted_not_never_ran() -> None:
    import subprocess

    from portguard.errors import NotPermittedError, PortguardError

    def refused(argv: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "No journal files were opened due to "
                                           "insufficient permissions.\n")

    def broken(argv: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "Failed to open journal: I/O error\n")

    with pytest.raises(NotPermittedError, match="systemd-journal"):
        journal.invocations(["w.service"], run=refused)
    with pytest.raises(PortguardError, match="I/O error"):
        journal.invocations(["w.service"], run=broken)


def test_ports_from_a_units_command_line_and_environment() -> None:
    lines = [("/usr/bin/python3", "-m", "uvicorn", "app:main", "--port", "8000"),
             ("/opt/x", "--listen=0.0.0.0:9001", "--admin-port=9002", "-p", "7000",
              "--upstream", "http://db:5432")]
    assert postmortem.ports_in_command(lines, ["PORT=8080", "HTTP_PORT=8081", "X=1:2"]) == [
        (8000, "--port 8000"), (9001, "--listen=0.0.0.0:9001"), (9002, "--admin-port=9002"),
        (8080, "PORT=8080"), (8081, "HTTP_PORT=8081")]
    assert postmortem.ports_in_command([("/bin/x", "--port")], ["PORT=99999"]) == []


def test_the_profile_then_the_command_line_when_nothing_else_names_a_port() -> None:
    failures = bindfail.find(["OSError: [Errno 98] Address already in use"])
    got = postmortem.wanted_ports(failures, None, {}, [], learned=[(53, Proto.UDP, "::1")],
                                  named=[(8000, "--port 8000")])
    assert [(w.port, w.proto, w.source) for w in got] == [(53, "udp", "profile")]
    got = postmortem.wanted_ports(failures, None, {}, [], named=[(8000, "--port 8000")])
    assert [(w.port, w.source, w.detail) for w in got] == [(8000, "command line",
                                                            "--port 8000")]


def test_discover_writes_what_a_unit_really_runs_when_its_listeners_agree() -> None:
    pg = [proposal.Seen("postgresql@15-main.service", a, 5432, TCP, ":" in a, 900,
                        "/usr/lib/postgresql/15/bin/postgres", exe="/usr/lib/postgresql/15/"
                        "bin/postgres", user="postgres") for a in ("127.0.0.1", "::1")]
    mixed = [proposal.Seen("odd.service", "0.0.0.0", 7000 + i, TCP, False, 900 + i, "/x",
                           exe="/usr/bin/x", user=u) for i, u in enumerate(("root", "nobody"))]
    odd = [proposal.Seen("glob.service", "0.0.0.0", 7100, TCP, False, 950, "/x",
                         exe="/opt/x*/bin", user="root")]
    found, skipped = proposal.entries([*pg, *mixed, *odd], proposal.DEFAULT_PROTECTED)
    cfg = loads(proposal.render(found, skipped, proposal.DEFAULT_PROTECTED, "x"))
    runs = {s.name: (s.program, s.user) for s in cfg.services}
    assert runs == {"postgresql@.service": ("/usr/lib/postgresql/15/bin/postgres", "postgres"),
                    "odd.service": ("", ""), "glob.service": ("", "")}
