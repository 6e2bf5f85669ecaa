"""The daemon's unit-test world: a config, sockets, units and the facts a pass observes
(shared by test_daemon.py and test_heal.py)."""

from __future__ import annotations

import socket
from typing import Any

from portguard.commands.daemon_survey import Facts
from portguard.model import Process, Proto, Socket, Unit
from portguard.report.journal import Event, Journal, Record

CONFIG = """\
defaults: {kill_after: 1s, timeout: 2s}
services:
  web.service: {ports: ["8080"]}
  tw@.service:
    ports: ["9090"]
    duplicates: {units: ["legacy-tw.service"]}
daemon: {flap_limit: 2, flap_window: 60s, restart: true}
"""


def sock(port: int, inode: int, state: str = "LISTEN") -> Socket:
    return Socket(Proto.TCP, socket.AF_INET, state, "0.0.0.0", port, "0.0.0.0", 0, 0, inode,
                  cgroup_id=1000 + inode)


def unit(uid: str, active: str = "active", sub: str = "running") -> Unit:
    return Unit(uid, active, sub)


def facts(units: list[Unit], socks: list[tuple[Socket, str]], dbus: bool = True) -> Facts:
    return Facts({u.id: u for u in units}, tuple(s for s, _ in socks),
                 {s.inode: owner for s, owner in socks}, dbus)


def proc(pid: int, program: str = "/usr/bin/webd", user: str = "www") -> Process:
    return Process(pid, 1, uid=33, user=user, exe=program, cmdline=(program, "--port", "80"))


class Capture(Journal):
    """A Journal that keeps every record it emits and sends none."""

    def __init__(self) -> None:
        super().__init__(echo=False)
        self.sender.deliver = lambda fields, echo=True: None  # type: ignore[method-assign]
        self.sent: list[Record] = []

    def emit(self, *args: Any, **kwargs: Any) -> Record:
        record = super().emit(*args, **kwargs)
        self.sent.append(record)
        return record

    def of(self, event: Event) -> list[Record]:
        return [r for r in self.sent if r.event is event]
