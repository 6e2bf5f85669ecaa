"""Bind failures in the words real daemons log them: pure, one journal MESSAGE at a time.

`parse_line` knows the wordings of nginx, redis, Python, Node, Go, Java (and Spring Boot),
OpenSSH, PostgreSQL (and Debian's pg_ctlcluster), HAProxy, lighttpd and systemd's own
socket units, each as captured from a real run (tests/data/bindfail/), and takes the
address and port out of the line when the daemon wrote them. Any other line in the
kernel's own words (`Address already in use`, `EADDRINUSE`, errno 98) is a bind failure
too, in whatever format (Apache, dnsmasq, unbound, memcached are in the corpus that
way), with the endpoint read from the line when it names one. Only EADDRINUSE counts:
"Permission denied" or "Cannot assign requested address" on the same line is another
failure, never this one. `find` reads an invocation's lines in order and lends a
port-less failure (PostgreSQL, redis) the port a neighbouring line names ("Is another
postmaster already running on port 5432?").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from portguard.model import Proto


class BindFailure(NamedTuple):
    wording: str  # whose words matched: nginx, redis, python, ...; "generic" for the rest
    address: str | None  # as bound: 0.0.0.0, ::, 127.0.0.1; None when the line names none
    port: int | None  # None when the line names none (Python, Java)
    proto: Proto
    line: str  # the journal MESSAGE, as logged

    @property
    def endpoint(self) -> str:
        if self.port is None:
            return self.address or "?"
        if self.address is None:
            return f"*:{self.port}"
        return f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"


_IN_USE = r"[Aa]ddress already in use"
# (wording, pattern): named groups ep (ADDR:PORT as the daemon prints it), addr, port,
# proto. The first match wins, so the specific wordings precede the generic ones.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx)) for name, rx in (
        # nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)
        ("nginx", r"bind\(\) to (?P<ep>\S+) failed \(98: " + _IN_USE + r"\)"),
        # redis: Could not create server TCP listening socket *:6379: bind: Address ...
        ("redis", r"Could not create server (?:TCP|TLS) listening socket (?P<ep>\S+): "
         r"bind: " + _IN_USE),
        # asyncio (uvicorn, aiohttp): [Errno 98] error while attempting to bind on
        # address ('0.0.0.0', 8000): address already in use
        ("python", r"\[Errno 98\] error while attempting to bind on address "
         r"\('(?P<addr>[^']*)', (?P<port>\d+)[^)]*\): " + _IN_USE),
        # Python: OSError: [Errno 98] Address already in use
        ("python", r"(?:OSError|socket\.error|error): \[Errno 98\] " + _IN_USE),
        # Node: Error: listen EADDRINUSE: address already in use :::3000
        ("node", r"listen EADDRINUSE(?:: " + _IN_USE + r")? (?P<ep>[^\s,]+)"),
        # Go's net package: listen tcp :9090: bind: address already in use
        ("go", r"listen (?P<proto>tcp|udp)[46]? (?P<ep>[^\s\"]+?): bind: " + _IN_USE),
        # Spring Boot: Web server failed to start. Port 8080 was already in use.
        ("java", r"Port (?P<port>\d+) was already in use"),
        # Java: java.net.BindException: Address already in use
        ("java", r"java\.net\.BindException: " + _IN_USE),
        # OpenSSH: Bind to port 22 on 0.0.0.0 failed: Address already in use.
        ("sshd", r"Bind to port (?P<port>\d+) on (?P<addr>\S+) failed: " + _IN_USE),
        # PostgreSQL: could not bind IPv4 address "127.0.0.1": Address already in use
        ("postgres", r"could not bind IPv[46] address \"(?P<addr>[^\"]*)\": " + _IN_USE),
        # Debian's pg_ctlcluster, before it starts postgres, when another cluster's socket
        # lock holds the port: Error: Port conflict: another instance is already running
        # on /var/run/postgresql with port 5432
        ("pg_ctlcluster", r"Port conflict: another instance is already running on \S+ "
         r"with port (?P<port>\d+)$"),
        # HAProxy 2.x: Binding [cfg:9] for frontend web: cannot bind socket (Address
        # already in use) for [0.0.0.0:8082]; 1.8/2.0 had no "for"
        ("haproxy", r"cannot bind socket \(" + _IN_USE + r"\) (?:for )?\[(?P<ep>.+)\]"),
        # lighttpd 1.4.56+: (network.c.537) can't bind to socket: 0.0.0.0:8081: Address ...
        ("lighttpd", r"can't bind to socket: (?P<ep>\S+): " + _IN_USE),
        # lighttpd 1.4.7x (Debian 13): (network.c.640) bind() [::]:80: Address already in use
        ("lighttpd", r"\(network\.c\.\d+\) bind\(\) (?P<ep>\S+): " + _IN_USE),
        # lighttpd before 1.4.56: can't bind to port: 0.0.0.0 80 Address already in use
        ("lighttpd", r"can't bind to port: (?:(?P<addr>\S+) )?(?P<port>\d+) " + _IN_USE),
        # systemd's socket units: Failed to create listening socket ([::]:8080): Address...
        ("systemd", r"Failed to create listening socket \((?P<ep>[^)]+)\): " + _IN_USE),
        # anything else in the kernel's own words, whatever the daemon's format: Apache's
        # (98)Address already in use: AH00072: make_sock: could not bind to address
        # [::]:80, dnsmasq's failed to create listening socket for port 53: Address
        # already in use, unbound's error: bind: address already in use; its endpoint,
        # if any, is read by `_endpoint_in`
        ("generic", r"(?i)\baddress already in use\b|\bEADDRINUSE\b|\berrno:? ?98\b"),
    ))
# Where a line in an unknown format names the endpoint: ADDR:PORT ([v6]:PORT, v4:PORT),
# then "port N", then a bare ":PORT".
_ENDPOINTS = (
    re.compile(r"(?P<ep>\[[0-9A-Fa-f:.]+\]:\d{1,5}|\b\d{1,3}(?:\.\d{1,3}){3}:\d{1,5})\b"),
    re.compile(r"(?i)\bport (?P<port>\d{1,5})\b"),
    re.compile(r"(?:^|[\s(])\*?:(?P<port>\d{1,5})\b"),
)
# Lines that name the port of a port-less failure logged next to them.
_PORT_HINTS = (
    re.compile(r"Is another postmaster already running on port (\d+)\?"),  # PostgreSQL
    re.compile(r"Failed listening on port (\d+) \((?:TCP|TLS)\)"),  # redis
)


def _split_endpoint(ep: str) -> tuple[str | None, int | None]:
    """`0.0.0.0:80`, `[::]:80`, `:::3000` (Node), `*:6379` (redis), `:9090` (Go)."""
    host, sep, port = ep.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None, None
    host = host.strip("[]")
    return (host if host not in ("", "*") else None), int(port)


def parse_line(message: str) -> BindFailure | None:
    """The bind failure this one line reports, or None."""
    if "in use" not in message and "EADDRINUSE" not in message and \
            "Port conflict" not in message and "rrno" not in message:
        return None  # cheap: most lines of a journal say nothing like it
    for wording, pattern in _PATTERNS:
        m = pattern.search(message)
        if m is None:
            continue
        found = m.groupdict()
        if wording == "generic":
            found = _endpoint_in(message)
        address: str | None = found.get("addr")
        port = int(found["port"]) if found.get("port") else None
        if found.get("ep"):
            address, port = _split_endpoint(found["ep"])
        if port is not None and not 0 < port < 65536:
            port = None
        proto = Proto.UDP if found.get("proto") == "udp" else Proto.TCP
        return BindFailure(wording, address or None, port, proto, message)
    return None


def _endpoint_in(message: str) -> dict[str, str]:
    """The endpoint a line in an unknown format names ({} when none), as groups."""
    for pattern in _ENDPOINTS:
        m = pattern.search(message)
        if m is not None:
            return {k: v for k, v in m.groupdict().items() if v}
    return {}


def port_hint(message: str) -> int | None:
    """The port a daemon names beside a port-less bind failure, or None."""
    for pattern in _PORT_HINTS:
        m = pattern.search(message)
        if m and 0 < int(m.group(1)) < 65536:
            return int(m.group(1))
    return None


def find(messages: Iterable[str]) -> list[BindFailure]:
    """Every bind failure among one invocation's lines, in order, repeats folded (nginx
    retries five times); a port-less one takes the port a hint line of the run names."""
    failures: list[BindFailure] = []
    hints: list[int] = []
    for message in messages:
        failure = parse_line(message)
        if failure is not None:
            failures.append(failure)
        else:
            hint = port_hint(message)
            if hint is not None:
                hints.append(hint)
    if hints:
        failures = [f._replace(port=hints[0]) if f.port is None else f for f in failures]
    # nginx says "still could not bind()" last, with no endpoint: only a summary
    named = [f for f in failures if f.port is not None or f.wording != "generic"]
    out: dict[tuple[str | None, int | None, Proto, str], BindFailure] = {}
    for f in named or failures:
        out.setdefault((f.address, f.port, f.proto, f.wording), f)
    return list(out.values())
