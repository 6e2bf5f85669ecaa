"""Sockets made for the bind() oracle, and the kernel's own answer: no portguard in here.

A socket is described by a `Desc` (JSON-able): protocol, what it is (`listen`, `bound`:
bind() only, `timewait`: a listener that accepted a connection and closed it first, the
server side's TIME_WAIT left behind, the listener kept or not), address, IPV6_V6ONLY
(None: not set), SO_REUSEADDR, SO_REUSEPORT and the user it is created as (sk_uid is
the creator's fsuid). `build` makes one on a port, `refused` is what bind() (+ listen()
for TCP) says to a service's bind. `serve_scratch` answers "does this socket alone
stop this bind?" in a network namespace of its own, one fresh port per question.
Also run as a script: `bind_zoo.py scratch` serves those questions on stdin/stdout.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import Any, NamedTuple

NOBODY = 65534
ZOO_ADDRESSES = ("0.0.0.0", "127.0.0.1", "127.0.0.2", "::", "::1", "::ffff:127.0.0.1")


class Desc(NamedTuple):
    proto: str  # tcp | udp
    kind: str  # listen | bound | timewait
    addr: str
    v6only: bool | None = None
    reuseaddr: bool = False
    reuseport: bool = False
    user: str = "root"  # root | nobody
    dest: str = ""  # timewait: the address the client connected to
    keep: bool = False  # timewait: the listener stays open

    def alone(self) -> list[Desc]:
        """The sockets this makes that hold the port: a kept listener is one of its own."""
        if self.kind != "timewait":
            return [self]
        tw = [self._replace(keep=False)]
        return tw + ([self._replace(kind="listen", dest="", keep=False)] if self.keep else [])


class Intent(NamedTuple):
    """A service's bind: address None is the wildcard of either family (dual-stack [::])."""

    proto: str
    addr: str | None
    reuse: bool

    def spec(self, port: int) -> str:
        """As the config and `who` write it."""
        host = "" if self.addr is None else (
            f"[{self.addr}]:" if ":" in self.addr else f"{self.addr}:")
        return f"{host}{port}/{self.proto}"


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _type(proto: str) -> int:
    return socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM


def _new(d: Desc) -> socket.socket:
    if d.user == "nobody":
        os.seteuid(NOBODY)  # sk_uid is the fsuid at socket(), nothing else
    try:
        s = socket.socket(_family(d.addr), _type(d.proto))
    finally:
        if d.user == "nobody":
            os.seteuid(0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(d.reuseaddr))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(d.reuseport))
    if d.v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(d.v6only))
    return s


def build(d: Desc, port: int) -> list[socket.socket]:
    """Make the socket(s) of `d` on `port`; return those to keep open. OSError: refused."""
    s = _new(d)
    try:
        s.bind((d.addr, port))
        if d.kind == "bound":
            return [s]
        if d.proto == "tcp":
            s.listen(8)
        if d.kind == "listen":
            return [s]
        cli = socket.create_connection((d.dest, port), timeout=5)
        s.settimeout(5)  # never hang the zoo: a timeout is an OSError, "not made"
        conn, _ = s.accept()
        conn.close()  # the server closes first: its side goes TIME_WAIT
        cli.recv(1)
        cli.close()
        time.sleep(0.01)
        if d.keep:
            return [s]
    except BaseException:
        s.close()
        raise
    s.close()
    return []


def refused(intent: Intent, port: int) -> int:
    """The errno of bind() (+ listen() for TCP) as the service does it; 0: it works."""
    addr = "::" if intent.addr is None else intent.addr
    s = socket.socket(_family(addr), _type(intent.proto))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(intent.reuse))
        if intent.addr is None:  # either family: the dual-stack wildcard
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((addr, port))
        if intent.proto == "tcp":
            s.listen(1)
    except OSError as err:
        return err.errno or -1
    finally:
        s.close()
    return 0


def serve_scratch(first_port: int = 20000) -> None:
    """Answer JSON lines `{"desc": Desc, "intent": Intent}` with `{"conflicts": bool}`:
    the socket made alone on a port never used before, then the service's bind tried."""
    port = first_port
    for line in sys.stdin:
        q = json.loads(line)
        d, intent = Desc(*q["desc"]), Intent(*q["intent"])
        port += 1
        answer: dict[str, Any]
        try:
            kept = build(d, port)
        except OSError as err:
            answer = {"error": f"{d}: {err}"}
        else:
            code = refused(intent, port)
            answer = {"conflicts": code == errno.EADDRINUSE} if code in (
                0, errno.EADDRINUSE) else {"error": f"{intent}: {os.strerror(code)}"}
            for s in kept:
                s.close()
        print(json.dumps(answer), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["scratch"]:
    serve_scratch()
