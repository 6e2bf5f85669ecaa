"""portguard.report.journal without a journal: the native protocol against a fake journald.

The fake journal is an AF_UNIX datagram socket bound in tmp_path; the datagrams it
receives are parsed with an independent reader of https://systemd.io/JOURNAL_NATIVE_PROTOCOL/.
The real journald is exercised in tests/integration/test_sandbox.py.
"""

from __future__ import annotations

import io
import os
import select
import socket
import struct
import syslog
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from portguard.report import native
from portguard.report.journal import Event, Journal, Priority, Record
from portguard.report.native import IDENTIFIER, encode, stderr_is_journal

ALL_FIELDS: dict[str, Any] = dict(
    unit="web@b.service", port=8080, proto="tcp", holder_pid=123, holder_unit="web@a.service",
    holder_kind="twin", action="refuse", result="blocked")
ALL_FIELDS_ENCODED = {
    "PORTGUARD_UNIT": "web@b.service",
    "PORTGUARD_PORT": "8080",
    "PORTGUARD_PROTO": "tcp",
    "PORTGUARD_HOLDER_PID": "123",
    "PORTGUARD_HOLDER_UNIT": "web@a.service",
    "PORTGUARD_HOLDER_KIND": "twin",
    "PORTGUARD_ACTION": "refuse",
    "PORTGUARD_RESULT": "blocked",
}


def parse_native(data: bytes) -> dict[str, bytes]:
    """Decode one native-protocol datagram (KEY=VALUE\\n, or KEY\\n<le64 size>VALUE\\n)."""
    fields: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = end + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start:start + size]
            assert data[start + size:start + size + 1] == b"\n", "value not newline-terminated"
            i = start + size + 1
        assert key.decode() not in fields, f"duplicate field {key!r}"
        fields[key.decode()] = value
    return fields


class FakeJournal:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(1 << 20)
        return {k: v.decode() for k, v in parse_native(data).items()}

    def pending(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])


@pytest.fixture
def fake_journal(tmp_path: Path) -> Iterator[FakeJournal]:
    fake = FakeJournal(tmp_path / "socket")
    yield fake
    fake.sock.close()


@pytest.fixture(autouse=True)
def no_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


# -- encode ----------------------------------------------------------------------------


def test_encode_plain_fields_as_key_value_lines() -> None:
    assert encode({"MESSAGE": "hello", "PRIORITY": "6", "EMPTY": ""}) == \
        b"MESSAGE=hello\nPRIORITY=6\nEMPTY=\n"


def test_encode_value_with_newline_is_length_prefixed() -> None:
    value = "first\nsecond"
    data = encode({"MESSAGE": value, "A": "b"})
    assert data == (b"MESSAGE\n" + struct.pack("<Q", len(value)) + value.encode() + b"\n"
                    + b"A=b\n")
    assert parse_native(data) == {"MESSAGE": value.encode(), "A": b"b"}


def test_encode_length_counts_utf8_bytes_not_characters() -> None:
    value = "pört\n→ 8080"
    data = encode({"MESSAGE": value})
    assert struct.unpack_from("<Q", data, len(b"MESSAGE\n"))[0] == len(value.encode("utf-8"))
    assert parse_native(data)["MESSAGE"].decode() == value


def test_encode_keeps_equals_signs_and_unencodable_text() -> None:
    data = encode({"MESSAGE": "a=b=c", "X": "bad \udcff surrogate"})
    assert parse_native(data) == {"MESSAGE": b"a=b=c", "X": b"bad ? surrogate"}


def test_encode_trailing_newline_value() -> None:
    data = encode({"MESSAGE": "ends\n"})
    assert parse_native(data) == {"MESSAGE": b"ends\n"}


# -- priorities and events --------------------------------------------------------------


def test_priorities_are_the_syslog_levels_0_to_7() -> None:
    assert [int(p) for p in Priority] == list(range(8))
    assert [p.name for p in Priority] == ["EMERG", "ALERT", "CRIT", "ERR", "WARNING",
                                          "NOTICE", "INFO", "DEBUG"]
    for p in Priority:
        assert int(p) == getattr(syslog, f"LOG_{p.name}")


def test_every_event_has_a_distinct_128_bit_id_and_a_priority() -> None:
    ids = [e.message_id for e in Event]
    assert len(set(ids)) == len(ids)
    for event in Event:
        assert len(event.message_id) == 32
        assert set(event.message_id) <= set("0123456789abcdef"), event  # lowercase hex
        assert isinstance(event.priority, Priority)


def test_record_fields_put_the_standard_ones_first() -> None:
    record = Record(Event.REFUSED, "no", Priority.ERR, {"PORTGUARD_PORT": "80"})
    assert record.all_fields() == {"MESSAGE": "no", "MESSAGE_ID": Event.REFUSED.message_id,
                                   "PRIORITY": "3", "SYSLOG_IDENTIFIER": IDENTIFIER,
                                   "PORTGUARD_PORT": "80"}


# -- sending to a (fake) journal -----------------------------------------------------------


def test_emit_sends_every_field(fake_journal: FakeJournal) -> None:
    stream = io.StringIO()
    j = Journal(socket_path=fake_journal.path, stream=stream, echo=False)
    record = j.emit(Event.CONFLICT, "web@b.service: port 8080 taken", **ALL_FIELDS)
    got = fake_journal.receive()
    assert got == {
        "MESSAGE": "web@b.service: port 8080 taken",
        "MESSAGE_ID": Event.CONFLICT.message_id,
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "portguard",
        **ALL_FIELDS_ENCODED,
    }
    assert record.all_fields() == got
    assert stream.getvalue() == ""
    j.close()


def test_emit_leaves_out_unset_fields_and_prefixes_extra(fake_journal: FakeJournal) -> None:
    j = Journal(socket_path=fake_journal.path, stream=io.StringIO(), echo=False)
    j.emit(Event.WAIT, "waiting", port=53, extra={"timeout": "30s"})
    got = fake_journal.receive()
    assert {k for k in got if k.startswith("PORTGUARD_")} == {"PORTGUARD_PORT",
                                                              "PORTGUARD_TIMEOUT"}
    assert got["PORTGUARD_TIMEOUT"] == "30s"
    assert got["PRIORITY"] == str(int(Event.WAIT.priority))


def test_emit_priority_override(fake_journal: FakeJournal) -> None:
    j = Journal(socket_path=fake_journal.path, stream=io.StringIO(), echo=False)
    record = j.emit(Event.CONFLICT, "loud", priority=Priority.CRIT)
    assert record.priority is Priority.CRIT
    assert fake_journal.receive()["PRIORITY"] == "2"


def test_multiline_message_arrives_whole(fake_journal: FakeJournal) -> None:
    j = Journal(socket_path=fake_journal.path, stream=io.StringIO(), echo=False)
    j.emit(Event.REFUSED, "port 8080 is held by:\n  nginx (pid 77)")
    assert fake_journal.receive()["MESSAGE"] == "port 8080 is held by:\n  nginx (pid 77)"


def test_close_then_emit_reconnects(fake_journal: FakeJournal) -> None:
    j = Journal(socket_path=fake_journal.path, stream=io.StringIO(), echo=False)
    j.emit(Event.WAIT, "one")
    j.close()
    j.close()  # idempotent
    j.emit(Event.WAIT, "two")
    assert [fake_journal.receive()["MESSAGE"] for _ in range(2)] == ["one", "two"]


# -- no journal: stderr --------------------------------------------------------------------


def fallback_line(message: str, event: Event = Event.CONFLICT) -> str:
    pairs = " ".join(f"{k}={v}" for k, v in ALL_FIELDS_ENCODED.items())
    return (f"portguard: {message} [MESSAGE_ID={event.message_id} "
            f"PRIORITY={int(event.priority)} SYSLOG_IDENTIFIER=portguard {pairs}]\n")


def test_no_socket_file_writes_record_with_fields_to_stream(tmp_path: Path) -> None:
    stream = io.StringIO()
    j = Journal(socket_path=str(tmp_path / "absent"), stream=stream, echo=False)
    j.emit(Event.CONFLICT, "nobody listens", **ALL_FIELDS)
    assert stream.getvalue() == fallback_line("nobody listens")


def test_socket_file_without_listener_writes_to_stream(tmp_path: Path) -> None:
    path = tmp_path / "stale"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody reads: ECONNREFUSED
    assert path.exists()
    stream = io.StringIO()
    Journal(socket_path=str(path), stream=stream, echo=True).emit(
        Event.CONFLICT, "journald stopped", **ALL_FIELDS)
    assert stream.getvalue() == fallback_line("journald stopped")  # once, with fields


def test_record_too_big_for_a_datagram_goes_to_stream(fake_journal: FakeJournal) -> None:
    stream = io.StringIO()
    j = Journal(socket_path=fake_journal.path, stream=stream, echo=False)
    big = "x" * (native._MAX_DATAGRAM + 1)
    j.emit(Event.WAIT, big)
    assert not fake_journal.pending()
    assert stream.getvalue().startswith(f"portguard: {big} [MESSAGE_ID=")


def test_closed_stream_is_not_an_error(tmp_path: Path) -> None:
    stream = io.StringIO()
    stream.close()
    record = Journal(socket_path=str(tmp_path / "absent"), stream=stream).emit(
        Event.WAIT, "lost")
    assert record.message == "lost"


# -- echo rules ----------------------------------------------------------------------------


def journal_stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_echo_on_a_terminal_or_pipe(fake_journal: FakeJournal) -> None:
    stream = io.StringIO()  # no JOURNAL_STREAM: stderr is not the journal
    j = Journal(socket_path=fake_journal.path, stream=stream)
    assert j.sender.echo is True
    j.emit(Event.CONFLICT, "visible", **ALL_FIELDS)
    assert stream.getvalue() == "portguard: visible\n"
    assert fake_journal.receive()["MESSAGE"] == "visible"


def test_echo_verbose_adds_the_fields(fake_journal: FakeJournal) -> None:
    stream = io.StringIO()
    Journal(socket_path=fake_journal.path, stream=stream, verbose=True).emit(
        Event.CONFLICT, "detailed", **ALL_FIELDS)
    assert stream.getvalue() == fallback_line("detailed")


def test_no_echo_when_stderr_is_the_journal_stream(
        fake_journal: FakeJournal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(path))
        assert stderr_is_journal(stream)
        j = Journal(socket_path=fake_journal.path, stream=stream)
        assert j.sender.echo is False
        j.emit(Event.CONFLICT, "once is enough", **ALL_FIELDS)
    assert path.read_text() == ""
    assert fake_journal.receive()["MESSAGE"] == "once is enough"


def test_journal_stream_fallback_still_carries_fields(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(path))
        Journal(socket_path=str(tmp_path / "absent"), stream=stream).emit(
            Event.CONFLICT, "socket gone", **ALL_FIELDS)
    assert path.read_text() == fallback_line("socket gone")


def test_explicit_echo_wins(fake_journal: FakeJournal, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(path))
        Journal(socket_path=fake_journal.path, stream=stream, echo=True).emit(
            Event.WAIT, "forced")
    assert path.read_text() == "portguard: forced\n"
    quiet = io.StringIO()
    monkeypatch.delenv("JOURNAL_STREAM")
    Journal(socket_path=fake_journal.path, stream=quiet, echo=False).emit(Event.WAIT, "quiet")
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("value", ["", "garbage", "12:", ":34", "12:34:56", "-1:2", "a:b"])
def test_malformed_journal_stream_is_not_the_journal(
        value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with (tmp_path / "f").open("w") as stream:
        assert not stderr_is_journal(stream)


def closed_file(path: Path) -> TextIO:
    stream = path.open("w")
    stream.close()
    return stream


@pytest.mark.parametrize("stream_for", [
    pytest.param(lambda path: (path.parent / "mine").open("w"), id="another file"),
    pytest.param(lambda path: io.StringIO(), id="no file descriptor"),
    pytest.param(closed_file, id="closed file descriptor"),
])
def test_a_stream_that_is_not_the_file_journal_stream_names_is_not_the_journal(
        stream_for: Callable[[Path], TextIO], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal-stream"
    path.write_text("")
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(path))
    stream = stream_for(path)
    try:
        assert not stderr_is_journal(stream)
    finally:
        stream.close()
