"""Socket activation: which .socket unit a listener PID 1 holds belongs to.

See docs/identity.md (socket activation).

systemd binds a socket unit's `Listen*=` itself and holds the socket in PID 1 until (and
while) the service it activates runs: `ss` shows `systemd` (pid 1, init.scope) on the
port. The socket unit is what a person stops, and a service's own activation sockets are
never a conflict for it, so PID 1's listeners are attributed to their socket unit by
matching the kernel socket against each socket unit's Listen= (type and address, as
D-Bus reports them: ("Stream", "[::]:22"), ("Datagram", "0.0.0.0:53")).

Pure functions here; `Systemd.socket_units` (observe/systemd/units) reads the units.
"""

from __future__ import annotations

import _socket
from collections.abc import Iterable

from portguard.model import Proto, Socket, Unit

_PROTO_OF_TYPE = {"Stream": Proto.TCP, "Datagram": Proto.UDP}


def parse_listen(kind: str, address: str) -> tuple[Proto, str, int] | None:
    """("Stream", "[::]:22") -> (tcp, "::", 22); None for what is no IP port (a path,
    netlink, a FIFO, a special file)."""
    proto = _PROTO_OF_TYPE.get(kind)
    host, sep, port = address.rpartition(":")
    if proto is None or not sep or not port.isdigit():
        return None
    host = host.strip("[]").partition("%")[0]  # "[fe80::1%eth0]": the interface aside
    import ipaddress  # here: observer imports this module, and `who` must stay fast

    try:
        return proto, str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


def listens_on(unit: Unit, sock: Socket) -> bool:
    """Whether this socket is one of the socket unit's Listen= sockets."""
    import ipaddress

    try:
        here = str(ipaddress.ip_address(sock.local_address))
    except ValueError:
        return False
    for kind, address in unit.listen:
        parsed = parse_listen(kind, address)
        if parsed is None:
            continue
        proto, host, port = parsed
        v6 = ":" in host
        if (proto, port, host) == (sock.proto, sock.local_port, here) and \
                v6 == (sock.family == _socket.AF_INET6):
            return True
    return False


def socket_unit_for(sock: Socket, socket_units: Iterable[Unit]) -> Unit | None:
    """The socket unit whose Listen= is this kernel socket, or None."""
    return next((u for u in socket_units if listens_on(u, sock)), None)


def held_for(unit: Unit | None, service: str) -> bool:
    """Whether `unit` is a socket unit that activates `service` (a template's socket,
    `foo@.service` with Accept=yes, activates every instance foo@*.service)."""
    if unit is None or not unit.id.endswith(".socket"):
        return False
    for target in unit.triggers:
        if target == service:
            return True
        prefix, at, rest = target.partition("@")
        if at and rest.startswith(".") and service.startswith(prefix + "@") and \
                service.endswith(rest):
            return True
    return False


def activated_by_note(unit: Unit) -> str:
    """`ssh.socket, which activates ssh.service`, for messages and advice."""
    if unit.triggers:
        return f"{unit.id}, which activates {', '.join(unit.triggers)}"
    return unit.id
