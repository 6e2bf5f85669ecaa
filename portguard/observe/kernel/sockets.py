"""Every socket on given local ports: the only module that speaks netlink.

One NETLINK_SOCK_DIAG socket carries one dump request per protocol and family (TCP: one
for both, see netlink.tcp_dump_request), each with inet_diag bytecode so the kernel itself
drops sockets on other ports: the reply, and our parsing, stay the size of the answer
however many sockets the host has. (The kernel still walks its whole hash tables, in C:
see the measurements in netlink.tcp_dump_request.)

Where sock_diag is refused (seccomp, an LSM, a kernel without inet_diag or udp_diag) the
same facts are read from /proc/net/{tcp,tcp6,udp,udp6}, per (family, protocol), which
costs time proportional to all sockets and lacks `v6only` and `cgroup_id`.
"""

from __future__ import annotations

import _socket as socket  # the C module, not socket.py: docs/architecture.md, start costs
import errno
import sys
from collections.abc import Callable, Collection, Iterable, Sequence

from portguard.model import Proto, Socket
from portguard.observe.kernel.netlink import (
    NETLINK_SOCK_DIAG,
    KernelError,
    SocketQueryError,
    dump_request,
    parse_dump,
    port_filter,
    port_ranges,
    state_mask,
    state_name,
    tcp_dump_request,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

__all__ = ["NetlinkUnavailable", "SocketQueryError", "query"]

FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))  # plain ints, as netlink gives
PROC_NET = "/proc/net"
TIMEOUT = 5.0  # seconds; the kernel answers a dump at once, this only bounds a bug
_RECV_BUFFER = 65536  # netlink dump skbs are at most ~32 KiB: no datagram is cut short

# errnos that mean "this path is closed to us", not "something broke": EPERM/EACCES/ENOSYS
# (seccomp, LSM, user namespace), ENOENT (no inet_diag / udp_diag handler, even after
# request_module), EPROTONOSUPPORT/EAFNOSUPPORT (no NETLINK_SOCK_DIAG or no IPv6).
_UNAVAILABLE = frozenset(
    {errno.EPERM, errno.EACCES, errno.ENOSYS, errno.ENOENT, errno.EOPNOTSUPP,
     errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT}
)  # fmt: skip


class NetlinkUnavailable(Exception):
    """sock_diag is refused here (for everything, or for one family/protocol)."""


def query(
    ports: range | Sequence[int],
    protos: Iterable[Proto] = (Proto.TCP, Proto.UDP),
    *,
    states: Iterable[str] | None = None,
    via: Literal["auto", "netlink", "proc"] = "auto",
) -> list[Socket]:
    """Every IPv4 and IPv6 socket of `protos` whose local port is in `ports`.

    `states` limits the result to these state names (LISTEN, ESTABLISHED, TIME_WAIT, ...,
    UNCONN for unconnected UDP); None, the default, means every state. `via` picks the
    source: "auto" (sock_diag, falling back to /proc/net where refused), "netlink" (no
    fallback: refusal raises SocketQueryError) or "proc" (/proc/net only).

    A TCP socket that is bound but neither listening nor connected still holds its port;
    Linux >= 6.8 reports it, in state CLOSE. /proc/net never lists it.

    Raises ValueError for a port outside 0-65535 or an unknown state name, and
    SocketQueryError when neither source can be read or a reply is malformed.
    """
    if via not in ("auto", "netlink", "proc"):
        raise ValueError(f"via must be auto, netlink or proc, not {via!r}")
    mask = state_mask(states)
    protos = tuple(dict.fromkeys(Proto(p) for p in protos))  # "tcp" works, once each
    ranges = port_ranges(ports)
    if not ranges or not protos:
        return []
    wanted: Collection[int] = ports if isinstance(ports, range) else frozenset(ports)
    found: list[Socket] = []
    if via == "proc":
        refused = [(family, proto) for proto in protos for family in FAMILIES]
    else:
        refused = _query_netlink(protos, mask, ranges, found, via)
    for family, proto in refused:
        found.extend(_query_proc(family, proto, wanted, mask))
    # The kernel's filter is exact unless port_ranges merged ranges; checking costs ~1 us.
    return [s for s in found if s.local_port in wanted]


def _query_netlink(
    protos: tuple[Proto, ...],
    mask: int,
    ranges: list[tuple[int, int]],
    found: list[Socket],
    via: str,
) -> list[tuple[int, Proto]]:
    """Dump `protos` over sock_diag into `found`; returns the (family, proto) refused."""
    refused: list[tuple[int, Proto]] = []
    try:
        nl = _open_netlink()
    except NetlinkUnavailable as e:
        pairs = [(family, proto) for proto in protos for family in FAMILIES]
        if via == "netlink":
            raise SocketQueryError(str(e)) from e
        _log_fallback(str(e), pairs)
        return pairs
    bytecode = port_filter(ranges)
    sport = ranges[0][0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else 0
    buf = bytearray(_RECV_BUFFER)
    seq = 0
    try:
        for proto in protos:
            if proto is Proto.TCP:
                seq += 1
                try:
                    request = tcp_dump_request(mask, bytecode, seq, sport=sport)
                    found += _dump(nl, request, seq, proto, buf)
                    continue
                except (KernelError, NetlinkUnavailable):
                    pass  # the old request type is gone or barred: ask per family below
            for family in FAMILIES:
                seq += 1
                request = dump_request(family, proto, mask, bytecode, seq, sport=sport)
                try:
                    found += _dump(nl, request, seq, proto, buf)
                except NetlinkUnavailable as e:
                    if via == "netlink":
                        raise SocketQueryError(str(e)) from e
                    _log_fallback(str(e), [(family, proto)])
                    refused.append((family, proto))
    finally:
        nl.close()
    return refused


def _open_netlink() -> socket.socket:
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG)  # fmt: skip
    except OSError as e:
        if e.errno in _UNAVAILABLE:
            raise NetlinkUnavailable(f"cannot open a sock_diag socket: {e.strerror}") from e
        raise SocketQueryError(f"cannot open a sock_diag socket: {e.strerror}") from e
    nl.settimeout(TIMEOUT)
    return nl


def _dump(nl: socket.socket, request: bytes, seq: int, proto: Proto, buf: bytearray
          ) -> list[Socket]:  # fmt: skip
    """Send one dump request and collect its multipart reply up to NLMSG_DONE."""
    view = memoryview(buf)
    batch: list[Socket] = []
    try:
        nl.sendto(request, (0, 0))  # portid 0: the kernel
        done = False
        while not done:
            n, _, flags, _ = nl.recvmsg_into([view])
            if flags & socket.MSG_TRUNC:
                raise SocketQueryError(f"sock_diag reply cut at {len(buf)} bytes")
            if n == 0:
                raise SocketQueryError("sock_diag reply ended before NLMSG_DONE")
            done = parse_dump(view[:n], seq, proto, batch)
    except TimeoutError as e:
        raise SocketQueryError(f"sock_diag did not answer within {TIMEOUT:g} s") from e
    except KernelError as e:
        if e.errno in _UNAVAILABLE:
            raise NetlinkUnavailable(str(e)) from e
        raise
    except OSError as e:
        if e.errno in _UNAVAILABLE:
            raise NetlinkUnavailable(f"sock_diag: {e.strerror}") from e
        raise SocketQueryError(f"sock_diag: {e.strerror}") from e
    return batch


def _log_fallback(reason: str, pairs: Iterable[tuple[int, Proto]]) -> None:
    # logging is imported here, on the rare path: importing it costs more (~5 ms) than
    # a whole netlink query.
    import logging

    files = ", ".join(_proc_file(family, proto) for family, proto in pairs)
    logging.getLogger("portguard.observe.kernel.sockets").debug(
        "%s; reading %s instead", reason, files)


def _proc_file(family: int, proto: Proto) -> str:
    return f"{PROC_NET}/{proto.value}{'6' if family == socket.AF_INET6 else ''}"


def _query_proc(family: int, proto: Proto, wanted: Collection[int], mask: int) -> list[Socket]:
    path = _proc_file(family, proto)
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []  # e.g. tcp6 on a kernel without IPv6: no such sockets
    except OSError as e:
        raise SocketQueryError(f"cannot read {path}: {e.strerror}") from e
    return parse_proc_net(text, family, proto, wanted=wanted, mask=mask, source=path)


def parse_proc_net(
    text: str,
    family: int,
    proto: Proto,
    *,
    wanted: Collection[int] | None = None,
    mask: int = 0xFFFFFFFF,
    source: str = "/proc/net",
) -> list[Socket]:
    """Sockets listed in the text of /proc/net/{tcp,tcp6,udp,udp6} (header line first).

    Each line reads `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`;
    addresses are the kernel's __be32 words printed as host-order integers (%08X), so
    each 8-digit word is byte-swapped on little-endian hosts; ports are plain hex. Only
    lines whose local port is in `wanted` (None: all) and whose state bit is in `mask`
    are parsed fully.
    """
    out: list[Socket] = []
    addr_len = 8 if family == socket.AF_INET else 32
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            local, remote, st = fields[1], fields[2], int(fields[3], 16)
            if len(local) != addr_len + 5 or len(remote) != addr_len + 5:
                raise ValueError("address of the wrong length")
            port = int(local[-4:], 16)
            if wanted is not None and port not in wanted:
                continue
            # The kernel lists a request socket (NEW_SYN_RECV) as SYN_RECV.
            if not mask & (1 << st) and not (st == 3 and mask & (1 << 12)):
                continue
            out.append(
                Socket(
                    proto=proto,
                    family=family,
                    state=state_name(proto, st),
                    local_address=_proc_address(local[:addr_len], family),
                    local_port=port,
                    remote_address=_proc_address(remote[:addr_len], family),
                    remote_port=int(remote[-4:], 16),
                    uid=int(fields[7]),
                    inode=int(fields[9]),
                )
            )
        except (IndexError, ValueError) as e:
            raise SocketQueryError(f"{source} line {lineno}: cannot parse {line.strip()!r}: "
                                   f"{e}") from e  # fmt: skip
    return out


def _proc_address(hexwords: str, family: int) -> str:
    raw = b"".join(
        int(hexwords[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hexwords), 8)
    )
    return socket.inet_ntop(family, raw)


Query = Callable[[Sequence[int], Iterable[Proto]], list[Socket]]


def on_ports(wanted: Iterable[tuple[int, Proto]], via: Query | None = None) -> list[Socket]:
    """Every socket on these (port, proto) pairs: one `query` per protocol (`via`: the
    query to use, `query` itself unless a test passes another)."""
    by_proto: dict[Proto, list[int]] = {}
    for port, proto in wanted:
        by_proto.setdefault(proto, []).append(port)
    ask = via or query
    found: list[Socket] = []
    for proto, ports in by_proto.items():
        found.extend(ask(sorted(set(ports)), (proto,)))
    return found

