"""Socket activation, pure parts: Listen= parsing, matching a kernel socket to its socket
unit, and whether a socket unit activates a service (DESIGN cases 4 and 7)."""

from __future__ import annotations

from socket import AF_INET, AF_INET6

import pytest

from portguard.model import Proto, Socket, Unit
from portguard.observe.systemd.activation import (
    activated_by_note,
    held_for,
    listens_on,
    parse_listen,
    socket_unit_for,
)

TCP, UDP = Proto.TCP, Proto.UDP


def sock(port: int, addr: str = "::", proto: Proto = TCP, family: int = AF_INET6) -> Socket:
    state = "LISTEN" if proto is TCP else "UNCONN"
    return Socket(proto, family, state, addr, port, "::" if family == AF_INET6 else "0.0.0.0",
                  0, 0, 100)


@pytest.mark.parametrize(("kind", "address", "parsed"), [
    ("Stream", "[::]:22", (TCP, "::", 22)),
    ("Stream", "0.0.0.0:80", (TCP, "0.0.0.0", 80)),
    ("Datagram", "127.0.0.1:53", (UDP, "127.0.0.1", 53)),
    ("Stream", "[fe80::1%eth0]:8080", (TCP, "fe80::1", 8080)),
    ("Stream", "[0:0:0:0:0:0:0:1]:8080", (TCP, "::1", 8080)),  # normalised like the kernel's
    ("Stream", "/run/foo.sock", None),
    ("SequentialPacket", "[::]:22", None),
    ("Netlink", "route 0", None),
    ("FIFO", "/run/fifo", None),
])
def test_parse_listen(kind: str, address: str, parsed: tuple[Proto, str, int] | None) -> None:
    assert parse_listen(kind, address) == parsed


def test_a_socket_matches_only_its_own_listen_line() -> None:
    ssh = Unit("ssh.socket", triggers=("ssh.service",), listen=(("Stream", "[::]:22"),))
    dns = Unit("dns.socket", listen=(("Datagram", "127.0.0.1:53"), ("Stream", "127.0.0.1:53")))
    assert listens_on(ssh, sock(22))
    assert not listens_on(ssh, sock(22, "0.0.0.0", family=AF_INET))  # another socket
    assert not listens_on(ssh, sock(22, proto=UDP))
    assert not listens_on(ssh, sock(2222))
    assert listens_on(dns, sock(53, "127.0.0.1", UDP, AF_INET))
    assert listens_on(dns, sock(53, "127.0.0.1", TCP, AF_INET))
    assert not listens_on(dns, sock(53, "127.0.0.2", UDP, AF_INET))
    assert socket_unit_for(sock(22), [dns, ssh]) is ssh
    assert socket_unit_for(sock(80), [dns, ssh]) is None


def test_held_for_the_services_it_activates_only() -> None:
    ssh = Unit("ssh.socket", triggers=("ssh.service",))
    assert held_for(ssh, "ssh.service")
    assert not held_for(ssh, "sshd-second.service")
    per_connection = Unit("web.socket", triggers=("web@.service",))  # Accept=yes
    assert held_for(per_connection, "web@0-127.0.0.1:8080-127.0.0.1:4242.service")
    assert not held_for(per_connection, "webx@a.service")
    assert not held_for(Unit("init.scope", triggers=("ssh.service",)), "ssh.service")
    assert not held_for(None, "ssh.service")


def test_named_with_the_service_it_activates() -> None:
    assert activated_by_note(Unit("ssh.socket", triggers=("ssh.service",))) == (
        "ssh.socket, which activates ssh.service")
    assert activated_by_note(Unit("x.socket")) == "x.socket"
