"""Which observed sockets stop a declared port's bind(), by the kernel's own rules.

Everything here is a pure function of `model` values; `observe.kernel.probe` asks the kernel
itself. The rules follow Linux (read in 6.18, checked on it):

* TCP, `inet_csk_get_port` -> `inet_csk_bind_conflict` -> `inet_bind_conflict` (relax and
  reuseport_ok both true for an explicit bind): a socket sk2 on an overlapping address
  conflicts unless (a) both sockets set SO_REUSEADDR and sk2 is not LISTEN, or (b) both
  set SO_REUSEPORT and sk2 is TIME_WAIT or has the same uid.
* UDP, `udp_lib_get_port` -> `udp_lib_lport_inuse`: a bound socket on an overlapping
  address conflicts unless both set SO_REUSEADDR, or both set SO_REUSEPORT, same uid.
* Address overlap is `inet_rcv_saddr_equal(sk, sk2, match_wildcard=true)`: `_overlap`.

sock_diag does not show an observed socket's SO_REUSEADDR / SO_REUSEPORT (nor a
timewait socket's v6only). Where they decide, `judge` asks a `Kernel`: the socket's
options as its owner's fd says (`observe.kernel.probe.Kernel`, root), and failing that bind()
itself. Only the pure fallback (no kernel) rests on `assumed_peer`. SO_BINDTODEVICE
never matters: the service binds no device (a `%scope` aside), and a socket without one
meets every device.

NamedTuples and `_socket.inet_pton`, not dataclasses and `ipaddress` (nor `typing` or
the `socket` wrapper): see `model` on import time; preflight and `who` on a free port
must stay fast.
"""

from __future__ import annotations

import _socket as socket  # the C module, not socket.py: docs/architecture.md, start costs
import enum
import functools

from portguard.model import BindIntent, PeerOptions, PortSpec, Proto, Socket
from portguard.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # `Kernel` is a type checker's contract only

LISTEN = "LISTEN"
TIME_WAIT = "TIME_WAIT"
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


def assumed_peer(sock: Socket) -> PeerOptions:
    """What the pure fallback assumes about a socket's SO_REUSEADDR / SO_REUSEPORT.

    TCP: SO_REUSEADDR set, as servers set it (docs/identity.md, `lingering`: their
    leftovers do not block a `reuse_address: true` service). UDP: no flags, so any bound
    UDP socket blocks. SO_REUSEPORT: never. `judge` with a `Kernel` replaces the guess by the facts.
    """
    return PeerOptions(reuse_address=sock.proto is Proto.TCP)


class Verdict(enum.Enum):
    """What one observed socket means for one bind."""

    NO_CONFLICT = "no-conflict"  # bind() is not stopped by it
    BLOCKS = "blocks"  # a live socket that stops bind(): listening, or only bound
    # A connection's TCP socket (TIME_WAIT, CLOSE_WAIT, ESTABLISHED ...) that stops bind():
    # only because SO_REUSEADDR is missing on one side (`inet_bind_conflict`: sk_reuse &&
    # sk2->sk_reuse && sk2 not LISTEN), or SO_REUSEPORT does not apply.
    LINGERING = "lingering"


# --- addresses -------------------------------------------------------------------------

_V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


class _Endpoint(NamedTuple):
    """A bound local address as `inet_rcv_saddr_equal` sees it.

    `ipv4` covers AF_INET sockets and AF_INET6 ones bound to a v4-mapped address (two
    mapped addresses compare as IPv4 in `ipv6_rcv_saddr_equal`); `inet` only the former.
    `v6only` (None: not reported, as for TIME_WAIT) counts for IPv6 addresses only.
    `__inet6_bind` makes a socket bound to a specific IPv6 address ipv6only, but the
    accepted child of a dual-stack listener is not (it inherits the listener's flag, and
    `tcp_v6_syn_recv_sock` gives it the IPv4 address LOOPBACK4_IPV6): sock_diag says
    which, except for timewait sockets.
    """

    ipv4: bool
    packed: bytes
    v6only: bool | None
    inet: bool = False

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
            return _Endpoint(True, socket.inet_pton(socket.AF_INET, host), False, True)
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if packed.startswith(_V4_MAPPED_PREFIX):
        return _Endpoint(True, packed[12:], False)
    return _Endpoint(False, packed, v6only)


def _intent_endpoint(intent: BindIntent) -> _Endpoint:
    if intent.address is None:
        return _endpoint("::", socket.AF_INET6, False)
    # An intent's unset v6only is the system default, taken as dual-stack (bindv6only=0).
    return _endpoint(intent.address, None, bool(intent.v6only))


def _socket_endpoint(sock: Socket) -> _Endpoint:
    end = _endpoint(sock.local_address, sock.family, sock.v6only)
    if end.v6only is None and not (end.ipv4 or end.wildcard) and \
            normalize_state(sock.state) in ("LISTEN", "CLOSE", "UNCONN"):
        # Bound by bind() itself (no connection gave it the address): ipv6only.
        return end._replace(v6only=True)
    return end


def _overlap(a: _Endpoint, b: _Endpoint) -> bool | None:
    """`inet_rcv_saddr_equal(a, b, match_wildcard=true)`: does bind `a` meet socket `b`?

    None: it hangs on `b`'s unreported v6only. Same family: equal, or either is the
    wildcard (two `[::]` always meet, `[::]` covers every IPv6 address). Across families
    only a non-ipv6only IPv6 socket meets IPv4, through its IPv4 address: INADDR_ANY for
    `[::]`, LOOPBACK4_IPV6 for an accepted child (met by an AF_INET wildcard bind only,
    `ipv4_rcv_saddr_equal`; a v4-mapped bind compares IPv6 addresses and misses it).
    """
    if a.ipv4 == b.ipv4:
        return a.packed == b.packed or a.wildcard or b.wildcard
    if b.ipv4:  # an IPv6 bind meets IPv4 sockets only as a dual-stack [::]
        return a.wildcard and not a.v6only
    if b.v6only or not (b.wildcard or (a.inet and a.wildcard)):
        return False
    return None if b.v6only is None else True


def _meets(intent: BindIntent, sock: Socket) -> bool | None:
    """Bound on this proto and port, on an address this bind would share? None: maybe."""
    if (sock.proto is not intent.proto or sock.local_port != intent.port
            or normalize_state(sock.state) in _NOT_BOUND_STATES):
        return False
    return _overlap(_intent_endpoint(intent), _socket_endpoint(sock))


def overlaps(intent: BindIntent, sock: Socket) -> bool:
    """Is `sock` bound to this proto and port, on an address this bind may share?"""
    return _meets(intent, sock) is not False


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


_ALL_PEERS = tuple(PeerOptions(a, p) for a in (False, True) for p in (False, True))


def outcomes(intent: BindIntent, sock: Socket, peer: PeerOptions | None) -> frozenset[bool]:
    """Every answer to "does `sock` stop this bind?" that what is unknown allows.

    Unknown: `sock`'s options when `peer` is None, and its v6only where sock_diag did not
    report it. {True}: it blocks; {False}: it does not; both: only the kernel can say.
    """
    meets = _meets(intent, sock)
    if meets is False:
        return frozenset({False})
    peers = _ALL_PEERS if peer is None else (peer,)
    found = {_conflicts(intent, sock, p) for p in peers}
    return frozenset(found | {False}) if meets is None else frozenset(found)


def _is_lingering(sock: Socket) -> bool:
    """A connection's leftover: TCP, not a listener, not merely bound (CLOSE)."""
    return sock.proto is Proto.TCP and normalize_state(sock.state) not in (LISTEN, "CLOSE")


def verdict(intent: BindIntent, sock: Socket, peer: PeerOptions | None = None) -> Verdict:
    """What `sock` means for this bind, its options `peer` (default: `assumed_peer`),
    an unreported v6only taken as the answer that blocks."""
    if True not in outcomes(intent, sock, assumed_peer(sock) if peer is None else peer):
        return Verdict.NO_CONFLICT
    return Verdict.LINGERING if _is_lingering(sock) else Verdict.BLOCKS


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
        and _overlap(_socket_endpoint(listener), _socket_endpoint(sock)) is not False
    )


def _unshadowed(blocking: list[Socket]) -> list[Socket]:
    """Leave out a connection's socket under a blocking listener that covers it (an
    accepted child, or what is left of one): the listener is the holder to name, and
    blocks on its own. A socket that is only bound (CLOSE) is nobody's child."""
    listeners = [s for s in blocking if s.proto is Proto.TCP
                 and normalize_state(s.state) == LISTEN]
    return [s for s in blocking
            if not (_is_lingering(s) and any(_listens_over(lsn, s) for lsn in listeners))]


def blockers(
    intent: BindIntent, sockets: list[Socket], peer: PeerOptions | None = None
) -> list[Socket]:
    """The sockets that make this bind() fail under options `peer` (default assumed),
    in input order, accepted children under their listener left out."""
    return _unshadowed([s for s in sockets if blocks(intent, s, peer)])


def uncertain(intent: BindIntent, sock: Socket) -> bool:
    """Does the answer for `sock` hang on what sock_diag cannot show?"""
    return len(outcomes(intent, sock, None)) > 1


class Kernel(Protocol):
    """What only the kernel can say (`observe.kernel.probe.Kernel` asks it; tests fake it)."""

    def options(self, sock: Socket) -> PeerOptions | None:
        """`sock`'s SO_REUSEADDR / SO_REUSEPORT, read from its owner; None: unknown."""

    def refused(self, intent: BindIntent) -> bool:
        """Does a bind() as the service would do it fail now with EADDRINUSE?"""


class Judgement(NamedTuple):
    """The one answer to "can this service bind() this port now, and who stops it?"."""

    intent: BindIntent
    free: bool
    blockers: tuple[Socket, ...]  # the sockets that stop it (children under a listener aside)
    probed: bool = False  # the kernel's bind() was asked

    @property
    def unseen(self) -> bool:
        """bind() refused, yet no visible socket explains it (another netns, a race)."""
        return not self.free and not self.blockers


def judge(intent: BindIntent, sockets: list[Socket], kernel: Kernel | None = None) -> Judgement:
    """Every command's verdict on one bind: preflight, status, who, the daemon.

    A socket certainly blocks when every answer its unknowns allow says so, its options
    read by `kernel` where they can be. Unless one does, the kernel's own bind() has the
    last word (also when the rules find the port free: a socket portguard cannot see
    still blocks): not refused, nothing blocks; refused, every socket whose answer stays
    open is named (each may be the one). Past a certain blocker, open kernel-held
    leftovers are named too. No `kernel`: `assumed_peer` settles what is open, and
    nothing is probed.
    """
    certain: list[Socket] = []
    open_: list[Socket] = []
    for sock in sockets:
        peer = kernel.options(sock) if kernel is not None and uncertain(intent, sock) else None
        found = outcomes(intent, sock, peer)
        if found == {True}:
            certain.append(sock)
        elif len(found) > 1:
            open_.append(sock)
    if certain or kernel is None:
        named = _unshadowed([*certain, *(s for s in open_ if blocks(intent, s))])
        if kernel is not None:
            # A kernel-held leftover's own SO_REUSEADDR cannot be probed past a live
            # blocker: it may be one, and a wait for it ends as soon as bind() works.
            named += [s for s in open_ if not s.inode]
        ordered = tuple(s for s in sockets if any(s is n for n in named))
        return Judgement(intent, not ordered, ordered)
    if not kernel.refused(intent):
        return Judgement(intent, True, (), True)
    return Judgement(intent, False, tuple(_unshadowed(open_)), True)


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
