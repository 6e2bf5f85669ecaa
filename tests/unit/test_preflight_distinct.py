"""preflight.distinct: one record per holder and port, not per socket (issue 11 item 5)."""

from __future__ import annotations

import socket

from portguard.commands.preflight import distinct
from portguard.decide.classify import Conflict, Kind
from portguard.decide.policy import Action, Step
from portguard.model import Holder, Process, Proto, Socket


def step(family: int, address: str, pids: tuple[int, ...], *, kind: Kind = Kind.FOREIGN,
         unit: str | None = "lighttpd.service", port: int = 80, inode: int = 1) -> Step:
    sock = Socket(Proto.TCP, family, "LISTEN", address, port, "", 0, 0, inode)
    procs = tuple(Process(pid=p, start_time=1) for p in pids)
    c = Conflict(port, Proto.TCP, kind, "why", Holder(sock, procs), unit, procs, "")
    return Step(c, Action.REFUSE, "never stops another program")


def test_one_holder_on_ipv4_and_ipv6_is_one_step() -> None:
    v4 = step(socket.AF_INET, "0.0.0.0", (105, 106, 107), inode=1)
    v6 = step(socket.AF_INET6, "::", (105, 106, 107), inode=2)
    assert distinct([v4, v6]) == [v4]


def test_different_holders_ports_or_kinds_stay_apart() -> None:
    a = step(socket.AF_INET, "0.0.0.0", (105,))
    steps = [a, step(socket.AF_INET, "0.0.0.0", (200,)),
             step(socket.AF_INET, "0.0.0.0", (105,), port=443),
             step(socket.AF_INET, "0.0.0.0", (105,), kind=Kind.STRAY, unit=None),
             step(socket.AF_INET, "0.0.0.0", (), kind=Kind.LINGERING, unit=None, inode=0),
             step(socket.AF_INET, "0.0.0.0", (), kind=Kind.LINGERING, unit=None, inode=0)]
    assert distinct(steps) == steps
