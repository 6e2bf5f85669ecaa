"""portguard.report.notify against a real AF_UNIX datagram socket standing in for $NOTIFY_SOCKET.

systemd reads each notification datagram as UTF-8 text of `KEY=VALUE` lines. sdnotify
(the dependency underneath) encodes with latin-1 and silently drops what it cannot encode;
these tests read the bytes that actually arrive, on a path socket and on an abstract
(`@name`) one, as systemd would.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sdnotify

from portguard.commands.preflight_stop import tell_systemd
from portguard.errors import ExitStatus
from portguard.report.notify import Notifier, watchdog_interval

STATUS = "watching 3 services — 0 conflicts ✓"


class Manager:
    """The receiving end: an AF_UNIX datagram socket, like systemd's notify socket."""

    def __init__(self, address: str, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.5)
        self.env_value = env_value

    def receive(self) -> bytes:
        return self.sock.recv(65536)

    def nothing(self) -> bool:
        try:
            self.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        m = Manager(path, path)
    else:
        name = f"portguard-test-{secrets.token_hex(6)}"
        m = Manager("\0" + name, "@" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", m.env_value)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield m
    m.close()


def test_status_text_beyond_latin1_arrives_as_utf8(manager: Manager) -> None:
    Notifier().status(STATUS)
    data = manager.receive()
    assert data == ("STATUS=" + STATUS).encode("utf-8")
    assert data.decode("utf-8") == "STATUS=" + STATUS  # what systemd shows


def test_latin1_text_arrives_as_utf8_not_as_latin1(manager: Manager) -> None:
    Notifier().status("Überwachung läuft")
    assert manager.receive() == "STATUS=Überwachung läuft".encode()


def test_plain_sdnotify_drops_what_latin1_cannot_encode(manager: Manager) -> None:
    # Why the wrapper re-spells text: sdnotify alone sends nothing at all here.
    sdnotify.SystemdNotifier().notify("STATUS=" + STATUS)
    time.sleep(0.05)
    assert manager.nothing()


def test_ready_carries_the_status_in_the_same_datagram(manager: Manager) -> None:
    Notifier().ready(STATUS)
    assert manager.receive() == f"READY=1\nSTATUS={STATUS}".encode()


def test_reloading_sends_monotonic_usec_with_it(manager: Manager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = manager.receive().decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_watchdog_and_stopping(manager: Manager) -> None:
    n = Notifier()
    n.watchdog()
    assert manager.receive() == b"WATCHDOG=1"
    n.stopping()
    assert manager.receive() == b"STOPPING=1"
    n.stopping("stopping on SIGTERM")
    assert manager.receive() == b"STOPPING=1\nSTATUS=stopping on SIGTERM"


def test_a_status_is_one_line_so_it_cannot_add_assignments(manager: Manager) -> None:
    Notifier().status("bad config: x.yaml:1: oops\nREADY=1\r\x00")
    assert manager.receive() == b"STATUS=bad config: x.yaml:1: oops READY=1  "


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)  # a manager listens, unnamed
    n = Notifier()
    assert not n.enabled
    n.ready(STATUS)
    n.watchdog()
    n.reloading()
    n.stopping()
    n.close()
    time.sleep(0.05)
    assert manager.nothing()


def test_a_manager_that_went_away_does_not_break_the_daemon(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    path = tmp_path / "notify"
    m = Manager(str(path), str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    n = Notifier()
    m.close()
    os.unlink(path)
    n.status(STATUS)  # ECONNREFUSED: swallowed (sdnotify's debug=False)
    n.watchdog()
    assert n.sent == [f"STATUS={STATUS}", "WATCHDOG=1"]  # tried, and the daemon goes on
    again = Manager(str(path), str(path))  # the manager is back: nothing was queued
    try:
        assert again.nothing()
    finally:
        again.close()


@pytest.mark.parametrize(("env", "interval"), [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 1.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),  # ours
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_when_it_is_ours(
        env: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(env, 4242) == interval
    assert Notifier(env, pid=4242).watchdog_interval == interval


def test_a_clear_preflight_sends_nothing_and_a_refusal_its_reason(manager: Manager) -> None:
    # systemd clears an earlier refusal's STATUS= itself when it starts the unit again
    # (test_preflight_restart): a clear start has nothing to say, and imports no notifier.
    tell_systemd(ExitStatus.OK, "")
    time.sleep(0.05)
    assert manager.nothing()
    tell_systemd(ExitStatus.BLOCKED, "web.service cannot start: 80/tcp is held")
    assert manager.receive() == b"STATUS=portguard: web.service cannot start: 80/tcp is held"
    tell_systemd(ExitStatus.TIMEOUT, "")
    assert manager.receive() == b"STATUS=portguard: exit 75"
