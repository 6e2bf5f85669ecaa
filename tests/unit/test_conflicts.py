"""bind() conflict rules, case by case (pure: no sockets are opened here)."""

from __future__ import annotations

import socket
from typing import NamedTuple

import pytest

from portguard.decide.conflicts import (
    BindIntent,
    PeerOptions,
    Verdict,
    blockers,
    blocks,
    group_holders,
    intents,
    judge,
    normalize_state,
    uncertain,
    verdict,
)
from portguard.model import PortSpec, Proto, Socket

P = 8080
TCP, UDP = Proto.TCP, Proto.UDP


def sk(
    address: str,
    state: str = "LISTEN",
    *,
    port: int = P,
    proto: Proto = TCP,
    v6only: bool | None = None,
    uid: int = 1000,
    inode: int = 1,
    family: int | None = None,
) -> Socket:
    if family is None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return Socket(
        proto=proto,
        family=family,
        state=state,
        local_address=address,
        local_port=port,
        remote_address="",
        remote_port=0,
        uid=uid,
        inode=inode,
        v6only=v6only,
    )


def want(
    address: str | None,
    *,
    reuse: bool = True,
    reuseport: bool = False,
    v6only: bool | None = None,
    uid: int | None = None,
    proto: Proto = TCP,
    port: int = P,
) -> BindIntent:
    return BindIntent(address, port, proto, reuse, reuseport, v6only, uid)


class Case(NamedTuple):
    intent: BindIntent
    sock: Socket
    expected: Verdict
    peer: PeerOptions | None = None


B, L, N = Verdict.BLOCKS, Verdict.LINGERING, Verdict.NO_CONFLICT
REUSE = PeerOptions(reuse_address=True)
NO_REUSE = PeerOptions(reuse_address=False)
REUSEPORT = PeerOptions(reuse_address=False, reuse_port=True)

CASES: dict[str, Case] = {
    # --- address overlap (inet_rcv_saddr_equal), against a listener --------------------
    "v4-same-address": Case(want("127.0.0.1"), sk("127.0.0.1"), B),
    "v4-any-listener-blocks-loopback": Case(want("127.0.0.1"), sk("0.0.0.0"), B),
    "v4-loopback-listener-blocks-any": Case(want("0.0.0.0"), sk("127.0.0.1"), B),
    "v4-127.0.0.1-not-127.0.0.2": Case(want("127.0.0.2"), sk("127.0.0.1"), N),
    "v4-other-port": Case(want("127.0.0.1"), sk("127.0.0.1", port=P + 1), N),
    "v4-other-proto": Case(want("127.0.0.1"), sk("127.0.0.1", "UNCONN", proto=UDP), N),
    "dual-any-listener-blocks-v4-any": Case(want("0.0.0.0"), sk("::", v6only=False), B),
    "dual-any-listener-blocks-v4-loopback": Case(want("127.0.0.1"), sk("::", v6only=False), B),
    "dual-any-listener-blocks-v6-loopback": Case(want("::1"), sk("::", v6only=False), B),
    "v6only-any-listener-spares-v4-any": Case(want("0.0.0.0"), sk("::", v6only=True), N),
    "v6only-any-listener-spares-v4-loopback": Case(want("127.0.0.1"), sk("::", v6only=True), N),
    "v6only-any-listener-blocks-v6-loopback": Case(want("::1"), sk("::", v6only=True), B),
    "v6only-any-listener-blocks-dual-any": Case(want("::", v6only=False), sk("::", v6only=True), B),
    "dual-any-listener-blocks-v6only-any": Case(want("::", v6only=True), sk("::", v6only=False), B),
    "unknown-v6only-listener-assumed-dual": Case(want("0.0.0.0"), sk("::", v6only=None), B),
    "v4-any-listener-blocks-dual-intent": Case(want("::", v6only=False), sk("0.0.0.0"), B),
    "v4-any-listener-spares-v6only-intent": Case(want("::", v6only=True), sk("0.0.0.0"), N),
    "v4-loopback-listener-blocks-dual-intent": Case(want("::"), sk("127.0.0.1"), B),
    "v4-loopback-listener-spares-v6only-intent": Case(want("::", v6only=True), sk("127.0.0.1"), N),
    "v6-loopback-listener-spares-v4-loopback": Case(want("127.0.0.1"), sk("::1"), N),
    "v6-loopback-listener-spares-v4-any": Case(want("0.0.0.0"), sk("::1"), N),
    "v6-loopback-listener-blocks-v6only-any": Case(want("::", v6only=True), sk("::1"), B),
    "v6-distinct-addresses": Case(want("fd00::2"), sk("fd00::1"), N),
    "v6-same-address-other-spelling": Case(want("fd00:0::1"), sk("[fd00::1]"), B),
    "v6-scope-id-ignored": Case(want("fe80::1%lo"), sk("fe80::1%eth0"), B),
    "v4-mapped-listener-is-ipv4": Case(want("127.0.0.1"), sk("::ffff:127.0.0.1"), B),
    "v4-mapped-listener-vs-v4-any": Case(want("0.0.0.0"), sk("::ffff:127.0.0.1"), B),
    "v4-mapped-listener-spares-other-v4": Case(want("127.0.0.2"), sk("::ffff:127.0.0.1"), N),
    "v4-mapped-listener-spares-v6only-any": Case(
        want("::", v6only=True), sk("::ffff:127.0.0.1"), N
    ),
    "v4-mapped-intent-vs-v4-listener": Case(want("::ffff:127.0.0.1"), sk("127.0.0.1"), B),
    "v4-mapped-intent-vs-dual-listener": Case(want("::ffff:127.0.0.1"), sk("::", v6only=False), B),
    "v4-mapped-intent-spares-v6only-listener": Case(
        want("::ffff:127.0.0.1"), sk("::", v6only=True), N
    ),
    "v4-mapped-intent-spares-v6-loopback": Case(want("::ffff:127.0.0.1"), sk("::1"), N),
    "ss-star-is-v4-wildcard": Case(want("127.0.0.1"), sk("*", family=socket.AF_INET), B),
    "ss-star-is-v6-wildcard": Case(want("::1"), sk("*", family=socket.AF_INET6, v6only=True), B),
    "no-address-vs-v6-loopback": Case(want(None), sk("::1"), B),
    "no-address-vs-127.0.0.2": Case(want(None), sk("127.0.0.2"), B),
    "no-address-vs-v6only-any": Case(want(None), sk("::", v6only=True), B),
    "no-address-other-port": Case(want(None), sk("0.0.0.0", port=P + 1), N),
    # --- TCP states (inet_bind_conflict) ----------------------------------------------
    "listener-blocks-even-with-reuseaddr": Case(want("127.0.0.1"), sk("127.0.0.1"), B, REUSE),
    "listener-blocks-bind-without-reuseaddr": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1"), B
    ),
    "time-wait-passes-reuseaddr": Case(want("127.0.0.1"), sk("127.0.0.1", "TIME_WAIT"), N),
    "time-wait-blocks-without-reuseaddr": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "TIME_WAIT"), L
    ),
    "time-wait-of-non-reuseaddr-socket-blocks-reuseaddr": Case(
        want("127.0.0.1"), sk("127.0.0.1", "TIME_WAIT"), L, NO_REUSE
    ),
    "time-wait-on-v4-any-intent": Case(
        want("0.0.0.0", reuse=False), sk("127.0.0.1", "TIME_WAIT", inode=0), L
    ),
    "time-wait-other-address": Case(
        want("127.0.0.2", reuse=False), sk("127.0.0.1", "TIME_WAIT", inode=0), N
    ),
    "established-passes-reuseaddr": Case(want("127.0.0.1"), sk("127.0.0.1", "ESTABLISHED"), N),
    "established-blocks-without-reuseaddr": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "ESTABLISHED"), L
    ),
    "close-wait-blocks-without-reuseaddr": Case(
        want("0.0.0.0", reuse=False), sk("127.0.0.1", "CLOSE_WAIT"), L
    ),
    "fin-wait1-blocks-without-reuseaddr": Case(
        want(None, reuse=False), sk("127.0.0.1", "FIN_WAIT1"), L
    ),
    "fin-wait2-ss-spelling": Case(want("127.0.0.1", reuse=False), sk("127.0.0.1", "FIN-WAIT-2"), L),
    "last-ack-blocks-without-reuseaddr": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "LAST_ACK"), L
    ),
    "closing-blocks-without-reuseaddr": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "CLOSING"), L
    ),
    "syn-sent-client-blocks-without-reuseaddr": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "SYN_SENT"), L
    ),
    "bound-not-listening-passes-reuseaddr": Case(want("127.0.0.1"), sk("127.0.0.1", "CLOSE"), N),
    "bound-not-listening-blocks-without": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "CLOSE"), B  # live, not a leftover
    ),
    "request-socket-holds-no-port": Case(
        want("127.0.0.1", reuse=False), sk("127.0.0.1", "NEW_SYN_RECV"), N
    ),
    # --- SO_REUSEPORT (inet_bind_conflict, sk_reuseport_match) ---------------------------
    "reuseport-same-uid-joins-listener": Case(
        want("127.0.0.1", reuseport=True, uid=1000), sk("127.0.0.1", uid=1000), N, REUSEPORT
    ),
    "reuseport-joins-overlapping-listener": Case(
        want("127.0.0.1", reuseport=True, uid=1000), sk("0.0.0.0", uid=1000), N, REUSEPORT
    ),
    "reuseport-other-uid-blocked": Case(
        want("127.0.0.1", reuseport=True, uid=1000), sk("127.0.0.1", uid=0), B, REUSEPORT
    ),
    "reuseport-unknown-uid-blocked": Case(
        want("127.0.0.1", reuseport=True), sk("127.0.0.1", uid=1000), B, REUSEPORT
    ),
    "reuseport-only-on-one-side": Case(
        want("127.0.0.1", reuseport=True, uid=1000), sk("127.0.0.1", uid=1000), B
    ),
    "reuseport-time-wait-any-uid": Case(
        want("127.0.0.1", reuse=False, reuseport=True, uid=1000),
        sk("127.0.0.1", "TIME_WAIT", uid=0, inode=0),
        N,
        REUSEPORT,
    ),
    "reuseport-timewait-fin-wait2-any-uid": Case(
        want("127.0.0.1", reuse=False, reuseport=True, uid=1000),
        sk("127.0.0.1", "FIN_WAIT2", uid=0, inode=0),
        N,
        REUSEPORT,
    ),
    "reuseport-owned-fin-wait2-needs-uid": Case(
        want("127.0.0.1", reuse=False, reuseport=True, uid=1000),
        sk("127.0.0.1", "FIN_WAIT2", uid=0, inode=42),
        L,
        REUSEPORT,
    ),
    "reuseport-established-other-uid": Case(
        want("127.0.0.1", reuse=False, reuseport=True, uid=1000),
        sk("127.0.0.1", "ESTABLISHED", uid=0),
        L,
        REUSEPORT,
    ),
    # --- UDP (udp_lib_lport_inuse) -------------------------------------------------------
    "udp-bound-blocks": Case(
        want("127.0.0.1", proto=UDP, reuse=False), sk("127.0.0.1", "UNCONN", proto=UDP), B
    ),
    "udp-assumed-not-sharing": Case(
        want("127.0.0.1", proto=UDP), sk("127.0.0.1", "UNCONN", proto=UDP), B
    ),
    "udp-reuseaddr-both-share": Case(
        want("127.0.0.1", proto=UDP), sk("127.0.0.1", "UNCONN", proto=UDP), N, REUSE
    ),
    "udp-reuseaddr-one-side-blocks": Case(
        want("127.0.0.1", proto=UDP, reuse=False), sk("127.0.0.1", "UNCONN", proto=UDP), B, REUSE
    ),
    "udp-reuseport-same-uid-shares": Case(
        want("127.0.0.1", proto=UDP, reuse=False, reuseport=True, uid=1000),
        sk("127.0.0.1", "UNCONN", proto=UDP, uid=1000),
        N,
        REUSEPORT,
    ),
    "udp-reuseport-other-uid-blocks": Case(
        want("127.0.0.1", proto=UDP, reuse=False, reuseport=True, uid=1000),
        sk("127.0.0.1", "UNCONN", proto=UDP, uid=0),
        B,
        REUSEPORT,
    ),
    "udp-connected-blocks": Case(
        want("127.0.0.1", proto=UDP), sk("127.0.0.1", "ESTABLISHED", proto=UDP), B
    ),
    "udp-v4-any-blocks-loopback": Case(
        want("127.0.0.1", proto=UDP), sk("0.0.0.0", "UNCONN", proto=UDP), B
    ),
    "udp-other-address": Case(
        want("127.0.0.2", proto=UDP), sk("127.0.0.1", "UNCONN", proto=UDP), N
    ),
    "udp-v6only-spares-v4": Case(
        want("0.0.0.0", proto=UDP), sk("::", "UNCONN", proto=UDP, v6only=True), N
    ),
    "udp-dual-blocks-v4": Case(
        want("0.0.0.0", proto=UDP), sk("::", "UNCONN", proto=UDP, v6only=False), B
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_verdict(case: Case) -> None:
    assert verdict(case.intent, case.sock, case.peer) is case.expected
    assert blocks(case.intent, case.sock, case.peer) is (case.expected is not N)
    assert blockers(case.intent, [case.sock], case.peer) == (
        [] if case.expected is N else [case.sock]
    )


# --- several sockets -------------------------------------------------------------------

LISTENER = sk("0.0.0.0")
CHILD = sk("127.0.0.1", "ESTABLISHED")
OLD_CHILD = sk("127.0.0.1", "TIME_WAIT", uid=0, inode=0)


def test_children_of_a_listener_are_not_named() -> None:
    socks = [CHILD, LISTENER, OLD_CHILD]
    assert blockers(want("127.0.0.1", reuse=False), socks) == [LISTENER]
    assert blockers(want("127.0.0.1"), socks) == [LISTENER]


def test_children_without_their_listener_are_named() -> None:
    socks = [CHILD, OLD_CHILD]
    assert blockers(want("127.0.0.1", reuse=False), socks) == [CHILD, OLD_CHILD]
    assert blockers(want("127.0.0.1"), socks) == []


def test_a_listener_elsewhere_does_not_shadow() -> None:
    other = sk("127.0.0.2")
    socks = [other, CHILD]
    assert blockers(want(None, reuse=False), socks) == [other, CHILD]
    assert blockers(want("127.0.0.1", reuse=False), socks) == [CHILD]


def test_udp_sockets_are_never_children() -> None:
    udp = sk("127.0.0.1", "ESTABLISHED", proto=UDP)
    assert blockers(want("127.0.0.1", proto=UDP), [sk("0.0.0.0", "UNCONN", proto=UDP), udp]) == [
        sk("0.0.0.0", "UNCONN", proto=UDP),
        udp,
    ]


def test_blockers_with_only_lingering_sockets() -> None:
    # DESIGN case 5: no live listener, a service without SO_REUSEADDR waits them out.
    intent = want("127.0.0.1", reuse=False)
    assert [verdict(intent, s) for s in blockers(intent, [OLD_CHILD])] == [L]


# --- judge: one verdict for every command ---------------------------------------------


class FakeKernel:
    """The kernel's answers as a test states them: options per inode, bind() refused."""

    def __init__(self, refused: bool, options: dict[int, PeerOptions] | None = None) -> None:
        self._refused = refused
        self._options = options or {}
        self.probes: list[BindIntent] = []

    def options(self, sock: Socket) -> PeerOptions | None:
        return self._options.get(sock.inode)

    def refused(self, intent: BindIntent) -> bool:
        self.probes.append(intent)
        return self._refused


def test_judge_listener_is_certain_and_not_probed() -> None:
    kernel = FakeKernel(refused=False)
    j = judge(want("127.0.0.1"), [LISTENER], kernel)
    assert (j.free, j.blockers, kernel.probes) == (False, (LISTENER,), [])


def test_judge_free_by_the_rules_still_asks_bind() -> None:
    # Nothing visible blocks; bind() is the last word (a socket sock_diag did not show).
    j = judge(want(None), [sk("0.0.0.0", port=P + 1)], FakeKernel(refused=True))
    assert not j.free and j.blockers == () and j.unseen and j.probed
    assert judge(want(None), [], FakeKernel(refused=False)).free


def test_judge_time_wait_is_settled_by_bind() -> None:
    intent = want("127.0.0.1")
    assert judge(intent, [OLD_CHILD], FakeKernel(refused=False)) == (intent, True, (), True)
    refused = judge(intent, [OLD_CHILD], FakeKernel(refused=True))
    assert not refused.free and refused.blockers == (OLD_CHILD,)


def test_judge_time_wait_without_reuseaddr_is_certain() -> None:
    kernel = FakeKernel(refused=False)
    j = judge(want("127.0.0.1", reuse=False), [OLD_CHILD], kernel)
    assert j.blockers == (OLD_CHILD,) and kernel.probes == []


def test_judge_reads_options_before_asking_bind() -> None:
    sharing = sk("127.0.0.1", "UNCONN", proto=UDP, inode=7)
    blocker = sk("0.0.0.0", "UNCONN", proto=UDP, inode=8)
    kernel = FakeKernel(refused=True, options={7: REUSE, 8: NO_REUSE})
    j = judge(want("127.0.0.1", proto=UDP), [sharing, blocker], kernel)
    assert j.blockers == (blocker,) and kernel.probes == []  # the options settle it
    # Options that say free leave the last word to bind() (it may see what we cannot).
    assert judge(want("127.0.0.1", proto=UDP), [sharing], FakeKernel(False, {7: REUSE})).free
    assert judge(want("127.0.0.1", proto=UDP), [sharing], FakeKernel(True, {7: REUSE})).unseen


def test_judge_without_a_kernel_assumes() -> None:
    udp = sk("127.0.0.1", "UNCONN", proto=UDP)
    assert judge(want("127.0.0.1", proto=UDP), [udp]).blockers == (udp,)
    assert judge(want("127.0.0.1"), [OLD_CHILD]).free


def test_reuseport_listener_is_uncertain_only_for_same_uid() -> None:
    mine = sk("127.0.0.1", uid=1000)
    assert uncertain(want("127.0.0.1", reuseport=True, uid=1000), mine)
    assert not uncertain(want("127.0.0.1", reuseport=True, uid=0), mine)
    assert not uncertain(want("127.0.0.2", reuseport=True, uid=1000), mine)


# --- issue 12: where the kernel surprised the rules (the oracle's reproducers) ----------


def test_issue12_udp_sharing_is_read_from_the_socket() -> None:
    # udp 0.0.0.0:P with SO_REUSEADDR, as nobody; "127.0.0.2:P/udp", reuse true: bind()
    # succeeds. The rules used to assume UDP never sets SO_REUSEADDR and never asked.
    udp = sk("0.0.0.0", "UNCONN", proto=UDP, uid=65534, inode=5)
    intent = want("127.0.0.2", proto=UDP)
    assert uncertain(intent, udp)
    assert judge(intent, [udp], FakeKernel(False, {5: REUSE})).free
    assert judge(intent, [udp], FakeKernel(False)).free  # unreadable: bind() decides
    assert judge(intent, [udp], FakeKernel(True, {5: NO_REUSE})).blockers == (udp,)


def test_issue12_udp_sharing_beside_a_real_blocker_is_not_named() -> None:
    sharing = sk("0.0.0.0", "UNCONN", proto=UDP, inode=5)
    blocker = sk("127.0.0.2", "UNCONN", proto=UDP, inode=6)
    kernel = FakeKernel(True, {5: REUSE, 6: NO_REUSE})
    assert judge(want("127.0.0.2", proto=UDP), [sharing, blocker], kernel).blockers == (
        blocker,)


def test_issue12_extra_holder_bound_only_with_reuseaddr() -> None:
    # tcp [::] v6only listener + bound-only tcp 0.0.0.0 with SO_REUSEADDR; "P/tcp", reuse
    # true: only the listener conflicts.
    listener = sk("::", v6only=True, inode=1)
    bound = sk("0.0.0.0", "CLOSE", inode=2)
    j = judge(want(None), [listener, bound], FakeKernel(True, {2: REUSE}))
    assert j.blockers == (listener,)


def test_issue12_missing_holder_bound_only_is_live_not_lingering() -> None:
    # bound-only tcp [::1] (SO_REUSEPORT) + tcp [::1] listener (SO_REUSEADDR,
    # SO_REUSEPORT); "[::]:P", reuse false: the kernel refuses against both.
    bound = sk("::1", "CLOSE", v6only=True, inode=1)
    listener = sk("::1", v6only=True, inode=2)
    intent = want("::", reuse=False)
    kernel = FakeKernel(True, {1: REUSEPORT, 2: PeerOptions(True, True)})
    assert judge(intent, [bound, listener], kernel).blockers == (bound, listener)
    assert verdict(intent, bound) is B  # live: not a leftover to wait out


def test_issue12_time_wait_of_a_dual_stack_child_meets_ipv4() -> None:
    # [::] dual-stack listener, a connection from ::1, the server closed first: TIME_WAIT
    # on [::1]:P (sock_diag gives no v6only for it). "0.0.0.0:P", reuse false: refused.
    tw = sk("::1", "TIME_WAIT", uid=0, inode=0)
    intent = want("0.0.0.0", reuse=False)
    assert uncertain(intent, tw)  # its parent may have been v6only
    j = judge(intent, [tw], FakeKernel(refused=True))
    assert j.blockers == (tw,) and not j.unseen
    # A live child reports v6only: a dual-stack listener's child meets an IPv4 wildcard
    # bind (it has the IPv4 address 127.0.0.6) but no other IPv4 address.
    child = sk("::1", "CLOSE_WAIT", v6only=False, inode=9)
    assert verdict(intent, child) is L and not uncertain(intent, child)
    assert verdict(want("127.0.0.1", reuse=False), child) is N
    assert verdict(want("::ffff:0.0.0.0", reuse=False), child) is N


def test_issue12_status_lingering_without_reuseaddr_blocks() -> None:
    # status used to skip lingering sockets whatever reuse_address said.
    kernel = FakeKernel(refused=True)
    assert judge(want("127.0.0.1", reuse=False), [OLD_CHILD], kernel).blockers == (OLD_CHILD,)
    # ... and to assume every TCP socket sets SO_REUSEADDR without asking bind().
    assert not judge(want("127.0.0.1"), [OLD_CHILD], kernel).free


# --- SO_REUSEPORT groups ---------------------------------------------------------------


def test_group_holders() -> None:
    a1, a2 = sk("0.0.0.0", uid=1000, inode=1), sk("0.0.0.0", uid=1000, inode=2)
    other_uid = sk("0.0.0.0", uid=1001, inode=3)
    other_addr = sk("127.0.0.1", uid=1000, inode=4)
    v6a, v6b = sk("::", v6only=True, inode=5), sk("::", v6only=True, inode=6)
    v6dual = sk("::", v6only=False, inode=7)
    mapped = sk("::ffff:127.0.0.1", uid=1000, inode=8)
    tw1, tw2 = sk("0.0.0.0", "TIME_WAIT", inode=0), sk("0.0.0.0", "TIME_WAIT", inode=0)
    u1, u2 = sk("0.0.0.0", "UNCONN", proto=UDP), sk("0.0.0.0", "UNCONN", proto=UDP, inode=9)
    other_port = sk("0.0.0.0", port=P + 1, uid=1000)
    socks = [a1, other_uid, a2, other_addr, v6a, v6dual, v6b, mapped, tw1, tw2, u1, u2]
    socks.append(other_port)
    assert group_holders(socks) == [
        [a1, a2],
        [other_uid],
        [other_addr],
        [v6a, v6b],
        [v6dual],
        [mapped],  # AF_INET6 never joins an AF_INET group
        [tw1],
        [tw2],
        [u1, u2],
        [other_port],
    ]


# --- intents ---------------------------------------------------------------------------


def test_intents_expand_a_range() -> None:
    spec = PortSpec(7000, 7002, Proto.TCP, "127.0.0.1")
    got = intents(spec, reuse_address=False, reuse_port=True, uid=33)
    assert [i.port for i in got] == [7000, 7001, 7002]
    assert {(i.address, i.proto, i.reuse_address, i.reuse_port, i.uid) for i in got} == {
        ("127.0.0.1", Proto.TCP, False, True, 33)
    }


def test_intents_no_address_and_brackets() -> None:
    assert intents(PortSpec(53, 53, Proto.UDP), reuse_address=True) == [
        BindIntent(None, 53, Proto.UDP, True, False, None, None)
    ]
    (v6,) = intents(PortSpec(8443, 8443, Proto.TCP, "[::]"), reuse_address=True, v6only=True)
    assert v6.address == "::" and v6.v6only is True
    assert str(v6) == "[::]:8443/tcp" and str(want(None, port=80)) == "*:80/tcp"


@pytest.mark.parametrize(
    "spec",
    [PortSpec(80, 80, Proto.TCP, "localhost"), PortSpec(0, 1, Proto.TCP), PortSpec(65535, 65536)],
    ids=["hostname", "port-0", "port-65536"],
)
def test_intents_reject(spec: PortSpec) -> None:
    with pytest.raises(ValueError):
        intents(spec, reuse_address=True)


def test_observed_garbage_address_raises() -> None:
    with pytest.raises(ValueError):
        verdict(want("127.0.0.1"), sk("not-an-ip", family=socket.AF_INET))
    with pytest.raises(ValueError):
        verdict(want("127.0.0.1"), sk("::1", family=socket.AF_INET))


@pytest.mark.parametrize(
    ("raw", "name"),
    [("ESTAB", "ESTABLISHED"), ("fin-wait-1", "FIN_WAIT1"), ("FIN_WAIT2", "FIN_WAIT2"),
     ("time-wait", "TIME_WAIT"), ("UNCONN", "UNCONN"), ("LISTEN", "LISTEN")],
)  # fmt: skip
def test_normalize_state(raw: str, name: str) -> None:
    assert normalize_state(raw) == name


def test_a_time_wait_past_a_live_blocker_may_block_too() -> None:
    # Its own SO_REUSEADDR cannot be probed while the listener blocks anyway: named (a
    # wait for it ends when bind() works), unlike a live socket whose options are read.
    other = sk("127.0.0.2", inode=3)
    bound = sk("127.0.0.1", "CLOSE", inode=4)
    kernel = FakeKernel(refused=True, options={4: REUSE})
    j = judge(want(None), [LISTENER, OLD_CHILD, bound, other], kernel)
    assert j.blockers == (LISTENER, OLD_CHILD, other) and kernel.probes == []
    assert judge(want(None), [LISTENER, OLD_CHILD]).blockers == (LISTENER,)  # assumed
