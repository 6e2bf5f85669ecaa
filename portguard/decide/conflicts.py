"""Which observed sockets stop a declared port's bind(), by the kernel's own rules.

Everything here is a pure function of `model` values; `portguard.decide.bind_probe` asks the kernel
itself. The rules follow Linux (read in 6.18, checked on it):

* TCP, `inet_csk_get_port` -> `inet_csk_bind_conflict` -> `inet_bind_conflict` (relax and
  reuseport_ok both true for an explicit bind): a socket sk2 on an overlapping address
  conflicts unless (a) both sockets set SO_REUSEADDR and sk2 is not LISTEN, or (b) both
  set SO_REUSEPORT and sk2 is TIME_WAIT or has the same uid.
* UDP, `udp_lib_get_port` -> `udp_lib_lport_inuse`: a bound socket on an overlapping
  address conflicts unless both set SO_REUSEADDR, or both set SO_REUSEPORT, same uid.
* Address overlap is `inet_rcv_saddr_equal(sk, sk2, match_wildcard=true)`: `_overlap`.

sock_diag does not show an observed socket's SO_REUSEADDR / SO_REUSEPORT, nor (in
`Socket`) its SO_BINDTODEVICE (sockets bound to different devices never conflict). The
pure answer therefore rests on an assumption about the other side (`assumed_peer`);
`Assessment.uncertain` names the sockets for which that assumption decides, and
`probe.probe_bind` is the final authority.

NamedTuples and `socket.inet_pton`, not dataclasses and `ipaddress`: see `model` on
import time; `who` on a free port must stay fast.
"""

from __future__ import annotations

import enum
import functools
import socket
from typing import NamedTuple

from portguard.model import PortSpec, Proto, Socket

LISTEN = "LISTEN"
TIME_WAIT = "TIME_WAIT"
# Non-listening TCP leftovers of a closed connection (DESIGN case 5).
LEFTOVER_STATES = frozenset(
    {"TIME_WAIT", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"}
)
# Request mini-sockets (inet_reqsk_alloc) live in the established hash only, never in the
# bind hash: they hold no port, their listener does. (sock_diag reports them as
# SYN_RECV, which is treated like any accepted child: harmless, the listener is there.)
_NOT_BOUND_STATES = frozenset({"NEW_SYN_RECV"})
_STATE_ALIASES = {  # `ss` spellings -> kernel names
    "ESTAB": "ESTABLISHED",
    "FIN_WAIT_1": "FIN_WAIT1",
    "FIN_WAIT_2": "FIN_WAIT2",
    "CLOSED": "CLOSE",
}


def normalize_state(state: str) -> str:
    """`ESTAB`, `fin-wait-1`, `FIN_WAIT1` ... -> the kernel's name (`FIN_WAIT1`)."""
    name = state.strip().upper().replace("-", "_")
    return _STATE_ALIASES.get(name, name)


class BindIntent(NamedTuple):
    """How the service will bind one port: a `PortSpec` address and port plus options.

    `address` None: the service binds the wildcard of either family; treated as a
    dual-stack `[::]`, which overlaps every address of both families. `v6only` matters
    for an IPv6 wildcard only; None is the system default, taken as dual-stack
    (net.ipv6.bindv6only=0, the default; `probe_bind` uses the real sysctl). `uid` is
    the service's user, used only by the SO_REUSEPORT same-uid rule (None: unknown, so a
    reuseport group is never assumed). Build with `intents()`, which validates.
    """

    address: str | None
    port: int
    proto: Proto = Proto.TCP
    reuse_address: bool = True
    reuse_port: bool = False
    v6only: bool | None = None
    uid: int | None = None

    def __str__(self) -> str:
        host = "*" if self.address is None else self.address
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}/{self.proto}"


class PeerOptions(NamedTuple):
    """Options of an observed socket that sock_diag does not report."""

    reuse_address: bool
    reuse_port: bool = False


def assumed_peer(sock: Socket) -> PeerOptions:
    """What we assume about an observed socket's SO_REUSEADDR / SO_REUSEPORT.

    TCP: SO_REUSEADDR set. It only matters for non-listening sockets (a listener blocks
    whatever its flags), mostly leftovers of a previous run of a server like this one,
    and servers set it: DESIGN case 5, they do not block a `reuse_address: true`
    service. Wrong for a server that did not set it and for outgoing connections that
    use the port: their TIME_WAIT and ESTABLISHED sockets block even a SO_REUSEADDR bind
    (`inet_bind_conflict` wants the flag on *both* sides, and a TIME_WAIT socket keeps
    the flag of the socket it came from, `inet_twsk_alloc`: tw_reuse = sk_reuse).
    UDP: no flags, so any bound UDP socket blocks; sharing (mDNS responders set
    SO_REUSEADDR) is for `probe_bind` to find. SO_REUSEPORT: never assumed.
    """
    return PeerOptions(reuse_address=sock.proto is Proto.TCP)


class Verdict(enum.Enum):
    """What one observed socket means for one bind."""

    NO_CONFLICT = "no-conflict"  # bind() is not stopped by it
    BLOCKS = "blocks"  # stops bind() whatever SO_REUSEADDR says: a listener, a UDP socket
    # A non-listening TCP socket that stops bind() only because SO_REUSEADDR is missing
    # on one side (`inet_bind_conflict`: sk_reuse && sk2->sk_reuse && sk2 not LISTEN).
    LINGERING = "lingering"


# --- addresses -------------------------------------------------------------------------

_V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


class _Endpoint(NamedTuple):
    """A bound local address as `inet_rcv_saddr_equal` sees it.

    `ipv4` covers AF_INET sockets and AF_INET6 ones bound to a v4-mapped address (two
    mapped addresses compare as IPv4 in `ipv6_rcv_saddr_equal`). `v6only` counts only for
    the IPv6 wildcard: `__inet6_bind` makes a socket bound to a specific IPv6 address
    ipv6only, so it never meets IPv4.
    """

    ipv4: bool
    packed: bytes
    v6only: bool

    @property
    def wildcard(self) -> bool:
        return not any(self.packed)


@functools.lru_cache(maxsize=1024)
def _endpoint(text: str, family: int | None, v6only: bool | None) -> _Endpoint:
    """Parse an address as a user, `ss` or sock_diag writes it (`[..]`, `%scope`, `*`)."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]  # the scope picks a device: bound_dev_if not modelled
    if host in ("", "*"):
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    try:
        if ":" in host and family != socket.AF_INET:
            packed = socket.inet_pton(socket.AF_INET6, host)
        else:
            return _Endpoint(True, socket.inet_pton(socket.AF_INET, host), False)
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if packed.startswith(_V4_MAPPED_PREFIX):
        return _Endpoint(True, packed[12:], False)
    # Unknown v6only on an observed [::]: assume dual-stack, the default and the
    # answer that blocks more (`probe_bind` has the last word anyway).
    return _Endpoint(False, packed, bool(v6only))


def _intent_endpoint(intent: BindIntent) -> _Endpoint:
    if intent.address is None:
        return _endpoint("::", socket.AF_INET6, False)
    return _endpoint(intent.address, None, intent.v6only)


def _socket_endpoint(sock: Socket) -> _Endpoint:
    return _endpoint(sock.local_address, sock.family, sock.v6only)


def _overlap(a: _Endpoint, b: _Endpoint) -> bool:
    """`inet_rcv_saddr_equal(a, b, match_wildcard=true)`, symmetric for bound sockets.

    Same family: equal, or either is the wildcard (IPv6: whatever v6only says, two
    `[::]` always overlap and `[::]` covers every IPv6 address). Across families only a
    dual-stack `[::]` meets IPv4: its sk_rcv_saddr is INADDR_ANY, and
    `ipv4_rcv_saddr_equal` gives up on an ipv6only sk2.
    """
    if a.ipv4 == b.ipv4:
        return a.packed == b.packed or a.wildcard or b.wildcard
    v6 = b if a.ipv4 else a
    return v6.wildcard and not v6.v6only


def overlaps(intent: BindIntent, sock: Socket) -> bool:
    """Is `sock` bound to this proto and port, on an address this bind would share?"""
    return (
        sock.proto is intent.proto
        and sock.local_port == intent.port
        and normalize_state(sock.state) not in _NOT_BOUND_STATES
        and _overlap(_intent_endpoint(intent), _socket_endpoint(sock))
    )


# --- the decision ----------------------------------------------------------------------


def _is_timewait(sock: Socket) -> bool:
    # sock_diag reports a timewait socket's tw_substate: TIME_WAIT, or FIN_WAIT2 for an
    # orphan moved to timewait early (tcp_time_wait). Those have no inode; a FIN_WAIT2
    # socket a process still holds has one.
    state = normalize_state(sock.state)
    return state == TIME_WAIT or (state == "FIN_WAIT2" and sock.inode == 0)


def _conflicts(intent: BindIntent, sock: Socket, peer: PeerOptions) -> bool:
    """Given an overlap: does `sock`, with options `peer`, make this bind fail?"""
    same_uid = intent.uid is not None and intent.uid == sock.uid
    both_reuseport = intent.reuse_port and peer.reuse_port
    if sock.proto is Proto.UDP:
        # udp_lib_lport_inuse: SO_REUSEADDR on both shares; so does SO_REUSEPORT on both
        # with the same uid.
        if intent.reuse_address and peer.reuse_address:
            return False
        return not (both_reuseport and same_uid)
    # inet_bind_conflict: SO_REUSEADDR on both passes anything but a listener ...
    if intent.reuse_address and peer.reuse_address and normalize_state(sock.state) != LISTEN:
        return False
    # ... SO_REUSEPORT on both passes a TIME_WAIT socket (it has no uid), or the same
    # uid (sk_uid); reuseport_cb_ok holds for a fresh socket.
    return not (both_reuseport and (_is_timewait(sock) or same_uid))


def verdict(intent: BindIntent, sock: Socket, peer: PeerOptions | None = None) -> Verdict:
    """What `sock` means for this bind, its options being `peer` or `assumed_peer`."""
    if not overlaps(intent, sock):
        return Verdict.NO_CONFLICT
    if not _conflicts(intent, sock, assumed_peer(sock) if peer is None else peer):
        return Verdict.NO_CONFLICT
    if sock.proto is Proto.TCP and normalize_state(sock.state) != LISTEN:
        return Verdict.LINGERING
    return Verdict.BLOCKS


def blocks(intent: BindIntent, sock: Socket, peer: PeerOptions | None = None) -> bool:
    """Would `sock` (options `peer`, default assumed) make this bind() fail, EADDRINUSE?"""
    return verdict(intent, sock, peer) is not Verdict.NO_CONFLICT


def _listens_over(listener: Socket, sock: Socket) -> bool:
    """Is `listener` a TCP listener on `sock`'s port whose address covers `sock`'s?"""
    return (
        listener is not sock
        and listener.proto is Proto.TCP
        and sock.proto is Proto.TCP
        and listener.local_port == sock.local_port
        and normalize_state(listener.state) == LISTEN
        and _overlap(_socket_endpoint(listener), _socket_endpoint(sock))
    )


def blockers(
    intent: BindIntent, sockets: list[Socket], peer: PeerOptions | None = None
) -> list[Socket]:
    """The sockets that make this bind() fail, in input order.

    A non-listening TCP socket under a blocking listener on the same port (an accepted
    child) is left out: the listener is the holder to name, and blocks on its own.
    """
    found = [(s, verdict(intent, s, peer)) for s in sockets]
    live = [s for s, v in found if v is Verdict.BLOCKS and s.proto is Proto.TCP]
    return [
        s
        for s, v in found
        if v is Verdict.BLOCKS
        or (v is Verdict.LINGERING and not any(_listens_over(lsn, s) for lsn in live))
    ]


def lingering(intent: BindIntent, sockets: list[Socket]) -> list[Socket]:
    """DESIGN case 5: TCP leftovers on an overlapping address with no live listener.

    TIME_WAIT / FIN_WAIT1/2 / CLOSE_WAIT / LAST_ACK / CLOSING sockets on the port that no
    LISTEN socket covers, whether or not they block *this* intent: they block a bind
    without SO_REUSEADDR (or, see `assumed_peer`, when their own socket lacked it), and
    they go away by themselves.
    """
    return [
        s
        for s in sockets
        if s.proto is Proto.TCP
        and normalize_state(s.state) in LEFTOVER_STATES
        and overlaps(intent, s)
        and not any(_listens_over(lsn, s) for lsn in sockets)
    ]


_ALL_PEERS = tuple(PeerOptions(a, p) for a in (False, True) for p in (False, True))


def uncertain(intent: BindIntent, sock: Socket) -> bool:
    """Does the answer for `sock` hang on its options, which sock_diag cannot show?"""
    if not overlaps(intent, sock):
        return False
    return len({_conflicts(intent, sock, peer) for peer in _ALL_PEERS}) > 1


class Assessment(NamedTuple):
    """Everything the pure rules say about one bind."""

    intent: BindIntent
    blockers: tuple[Socket, ...]  # `blockers()` under the assumed peer options
    lingering: tuple[Socket, ...]  # `lingering()`
    uncertain: tuple[Socket, ...]  # overlapping sockets whose unseen options decide

    @property
    def free(self) -> bool:
        return not self.blockers

    @property
    def needs_probe(self) -> bool:
        """True unless some blocker blocks whatever its options: then ask `probe_bind`."""
        return all(any(b is u for u in self.uncertain) for b in self.blockers)


def assess(intent: BindIntent, sockets: list[Socket]) -> Assessment:
    return Assessment(
        intent,
        tuple(blockers(intent, sockets)),
        tuple(lingering(intent, sockets)),
        tuple(s for s in sockets if uncertain(intent, s)),
    )


def group_holders(sockets: list[Socket]) -> list[list[Socket]]:
    """Group the sockets that bind() treats as one holder: SO_REUSEPORT groups.

    Several LISTEN (TCP) or UNCONN (UDP) sockets with the same family, v6only, exact
    local address, port and uid can only coexist as one reuseport group: the kernel's
    `inet_reuseport_add_sock` / `udp_reuseport_add_sock` join on exactly these (bound
    device aside). Every other socket is its own group. Order of first appearance.
    """
    groups: dict[object, list[Socket]] = {}
    for index, sock in enumerate(sockets):
        state = normalize_state(sock.state)
        key: object = index
        if (sock.proto is Proto.TCP and state == LISTEN) or (
            sock.proto is Proto.UDP and state in ("UNCONN", "CLOSE")
        ):
            end = _socket_endpoint(sock)
            key = (sock.proto, sock.family, end, sock.local_port, sock.uid)
        groups.setdefault(key, []).append(sock)
    return list(groups.values())


def intents(
    spec: PortSpec,
    *,
    reuse_address: bool,
    reuse_port: bool = False,
    v6only: bool | None = None,
    uid: int | None = None,
) -> list[BindIntent]:
    """One `BindIntent` per port of `spec`, ranges expanded. ValueError: not an IP."""
    address = spec.address
    if address is not None:
        address = address.strip()
        if address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        _endpoint(address, None, v6only)  # raises ValueError for a host name
    for port in (spec.first, spec.last):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1-65535")
    return [
        BindIntent(address, port, spec.proto, reuse_address, reuse_port, v6only, uid)
        for port in spec.ports
    ]
