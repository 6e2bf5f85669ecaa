"""The pure bind() rules of portguard.decide.conflicts, checked against real bind() on this kernel.

In-process, loopback only, no systemd, no root needed (one case wants root to create a
socket under another uid). Each case takes a port the kernel itself reports free on every
address (a dual-stack `[::]` bind to port 0), sets up real sockets on it, builds the
`Socket` values sock_diag would report from the live sockets (getsockname, fstat,
IPV6_V6ONLY), and asserts three answers agree with the expected one: the pure function
(told the peer's real options), `probe_bind`, and a plain bind() written here.
Also asserted everywhere: `judge` with the live `Kernel` (options read from our own
sockets' fds, bind() where they cannot be) gives the kernel's answer, and `judge` without
one, when no socket's answer hangs on its options, is right too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from portguard.decide.conflicts import (
    BindIntent,
    PeerOptions,
    blockers,
    judge,
    uncertain,
)
from portguard.model import Proto, Socket
from portguard.observe.kernel.probe import Kernel, probe_bind

TCP, UDP = Proto.TCP, Proto.UDP


def _bindable(family: int, host: str) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def _can_switch_uid() -> bool:
    """Can we create a socket as another uid (seteuid there and back: CAP_SETUID)?"""
    try:
        os.seteuid(NOBODY)
    except OSError:
        return False
    os.seteuid(0)
    return True


NOBODY = 65534
HAVE_V6 = socket.has_ipv6 and _bindable(socket.AF_INET6, "::1")
HAVE_127_0_0_2 = _bindable(socket.AF_INET, "127.0.0.2")
NEEDS_V6 = pytest.mark.skipif(not HAVE_V6, reason="no IPv6 on lo (::1 not bindable)")
NEEDS_127_0_0_2 = pytest.mark.skipif(not HAVE_127_0_0_2, reason="127.0.0.2 not bindable")
NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or not _can_switch_uid(), reason="needs CAP_SETUID: a socket of another uid"
)


def _kind(proto: Proto) -> int:
    return socket.SOCK_STREAM if proto is TCP else socket.SOCK_DGRAM


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(proto: Proto) -> int:
    """A port no socket of `proto` holds on any address (the kernel picks it)."""
    family, host = (socket.AF_INET6, "::") if HAVE_V6 else (socket.AF_INET, "0.0.0.0")
    with socket.socket(family, _kind(proto)) as s:
        if HAVE_V6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def observed(s: socket.socket, proto: Proto, state: str) -> Socket:
    """The `Socket` sock_diag would report for a live socket of ours."""
    host, port = s.getsockname()[:2]
    st = os.fstat(s.fileno())  # the socket inode: sk_uid is its i_uid
    v6only = None
    if s.family == socket.AF_INET6:
        v6only = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return Socket(proto, s.family, state, host, port, "", 0, st.st_uid, st.st_ino, v6only)


def plain_bind(intent: BindIntent) -> int:
    """bind() as a service would, independently of probe_bind: 0 or the errno."""
    host, v6only = intent.address, intent.v6only
    if host is None:
        host, v6only = ("::", False) if HAVE_V6 else ("0.0.0.0", None)
    s = socket.socket(_family(host), _kind(intent.proto))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(intent.reuse_address))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(intent.reuse_port))
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind((host, intent.port))
    except OSError as err:
        return err.errno or -1
    finally:
        s.close()
    return 0


def check(intent: BindIntent, socks: list[Socket], peer: PeerOptions, blocked: bool) -> None:
    pure = bool(blockers(intent, socks, peer))
    err = probe_bind(intent)
    assert err is None or err.errno == errno.EADDRINUSE, f"probe: {err!r}"
    plain = plain_bind(intent)
    assert plain in (0, errno.EADDRINUSE), f"plain bind: {os.strerror(plain)}"
    assert (err is not None) == (plain != 0), "probe_bind and bind() disagree"
    assert (pure, plain != 0) == (blocked, blocked), f"pure={pure} kernel={plain != 0}"
    assert judge(intent, socks, Kernel()).free != blocked, "judge with the kernel is wrong"
    if not any(uncertain(intent, s) for s in socks):
        assert judge(intent, socks).free != blocked, "judge was sure, and wrong"


# --- one existing bound socket vs one intent --------------------------------------------


class Setup(NamedTuple):
    address: str
    proto: Proto = TCP
    listen: bool = True  # TCP: listen(), else only bind()
    reuse: bool = True  # SO_REUSEADDR, as most servers set it
    reuseport: bool = False
    v6only: bool | None = None
    uid: int | None = None  # create the socket with this effective uid (root only)


@contextlib.contextmanager
def existing(setup: Setup, port: int) -> Iterator[Socket]:
    if setup.uid is not None:
        os.seteuid(setup.uid)
    try:
        s = socket.socket(_family(setup.address), _kind(setup.proto))
    finally:
        if setup.uid is not None:
            os.seteuid(0)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(setup.reuse))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(setup.reuseport))
        if setup.v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(setup.v6only))
        s.bind((setup.address, port))
        state = "UNCONN" if setup.proto is UDP else "CLOSE"
        if setup.proto is TCP and setup.listen:
            s.listen()
            state = "LISTEN"
        yield observed(s, setup.proto, state)


def intent(
    address: str | None,
    *,
    proto: Proto = TCP,
    reuse_address: bool = True,
    reuse_port: bool = False,
    v6only: bool | None = None,
    uid: int | None = None,
) -> BindIntent:
    """An intent whose port the test fills in (`_replace(port=...)`)."""
    return BindIntent(address, 1, proto, reuse_address, reuse_port, v6only, uid)


LO4, ANY4 = Setup("127.0.0.1"), Setup("0.0.0.0")
DUAL, V6ONLY = Setup("::", v6only=False), Setup("::", v6only=True)
LO6, MAPPED = Setup("::1"), Setup("::ffff:127.0.0.1", v6only=False)
UDP_LO4 = Setup("127.0.0.1", UDP, reuse=False)
ME = os.geteuid()
# joining a SO_REUSEPORT group on 127.0.0.1 as this uid
REUSEPORT_LO4 = intent("127.0.0.1", reuse_port=True, uid=ME)
UDP_REUSEPORT_LO4 = intent("127.0.0.1", proto=UDP, reuse_address=False, reuse_port=True, uid=ME)

PAIRS: dict[str, tuple[Setup, BindIntent, bool]] = {
    # TCP listener on 127.0.0.1
    "lo4-vs-any4": (LO4, intent("0.0.0.0"), True),
    "lo4-vs-lo4": (LO4, intent("127.0.0.1"), True),
    "lo4-vs-127.0.0.2": (LO4, intent("127.0.0.2"), False),
    "lo4-vs-dual": (LO4, intent("::", v6only=False), True),
    "lo4-vs-v6only": (LO4, intent("::", v6only=True), False),
    "lo4-vs-lo6": (LO4, intent("::1"), False),
    "lo4-vs-no-address": (LO4, intent(None), True),
    "lo4-vs-mapped-lo4": (LO4, intent("::ffff:127.0.0.1", v6only=False), True),
    "lo4-vs-mapped-127.0.0.2": (LO4, intent("::ffff:127.0.0.2", v6only=False), False),
    "lo4-vs-lo4-without-reuseaddr": (LO4, intent("127.0.0.1", reuse_address=False), True),
    # TCP listener on 0.0.0.0
    "any4-vs-lo4": (ANY4, intent("127.0.0.1"), True),
    "any4-vs-127.0.0.2": (ANY4, intent("127.0.0.2"), True),
    "any4-vs-dual": (ANY4, intent("::", v6only=False), True),
    "any4-vs-v6only": (ANY4, intent("::", v6only=True), False),
    "any4-vs-lo6": (ANY4, intent("::1"), False),
    # TCP listener on [::], dual-stack and v6only
    "dual-vs-any4": (DUAL, intent("0.0.0.0"), True),
    "dual-vs-lo4": (DUAL, intent("127.0.0.1"), True),
    "dual-vs-lo6": (DUAL, intent("::1"), True),
    "dual-vs-v6only": (DUAL, intent("::", v6only=True), True),
    "v6only-vs-any4": (V6ONLY, intent("0.0.0.0"), False),
    "v6only-vs-lo4": (V6ONLY, intent("127.0.0.1"), False),
    "v6only-vs-lo6": (V6ONLY, intent("::1"), True),
    "v6only-vs-dual": (V6ONLY, intent("::", v6only=False), True),
    "v6only-vs-no-address": (V6ONLY, intent(None), True),
    # TCP listener on [::1] and on a v4-mapped address
    "lo6-vs-lo4": (LO6, intent("127.0.0.1"), False),
    "lo6-vs-any4": (LO6, intent("0.0.0.0"), False),
    "lo6-vs-v6only": (LO6, intent("::", v6only=True), True),
    "mapped-vs-lo4": (MAPPED, intent("127.0.0.1"), True),
    "mapped-vs-any4": (MAPPED, intent("0.0.0.0"), True),
    "mapped-vs-v6only": (MAPPED, intent("::", v6only=True), False),
    "mapped-vs-127.0.0.2": (MAPPED, intent("127.0.0.2"), False),
    # TCP bound, never listened (state CLOSE)
    "bound-reuse-vs-reuse": (LO4._replace(listen=False), intent("127.0.0.1"), False),
    "bound-reuse-vs-no-reuse": (
        LO4._replace(listen=False),
        intent("127.0.0.1", reuse_address=False),
        True,
    ),
    "bound-no-reuse-vs-reuse": (
        LO4._replace(listen=False, reuse=False),
        intent("127.0.0.1"),
        True,
    ),
    # SO_REUSEPORT groups
    "reuseport-same-uid": (LO4._replace(reuseport=True), REUSEPORT_LO4, False),
    "reuseport-overlapping-same-uid": (ANY4._replace(reuseport=True), REUSEPORT_LO4, False),
    "reuseport-one-side": (LO4._replace(reuseport=True), intent("127.0.0.1"), True),
    "reuseport-other-uid": (LO4._replace(reuseport=True, uid=NOBODY), REUSEPORT_LO4, True),
    # UDP
    "udp-vs-same": (UDP_LO4, intent("127.0.0.1", proto=UDP), True),
    "udp-vs-any4": (UDP_LO4, intent("0.0.0.0", proto=UDP), True),
    "udp-vs-127.0.0.2": (UDP_LO4, intent("127.0.0.2", proto=UDP), False),
    "udp-vs-dual": (UDP_LO4, intent("::", proto=UDP, v6only=False), True),
    "udp-vs-v6only": (UDP_LO4, intent("::", proto=UDP, v6only=True), False),
    "udp-vs-no-address": (UDP_LO4, intent(None, proto=UDP), True),
    "udp-reuseaddr-both-share": (
        UDP_LO4._replace(reuse=True),
        intent("127.0.0.1", proto=UDP),
        False,
    ),
    "udp-reuseaddr-one-side": (
        UDP_LO4._replace(reuse=True),
        intent("127.0.0.1", proto=UDP, reuse_address=False),
        True,
    ),
    "udp-reuseport-same-uid": (UDP_LO4._replace(reuseport=True), UDP_REUSEPORT_LO4, False),
    "udp-reuseport-other-uid": (
        UDP_LO4._replace(reuseport=True, uid=NOBODY), UDP_REUSEPORT_LO4, True),
    "udp-dual-vs-any4": (
        Setup("::", UDP, reuse=False, v6only=False),
        intent("0.0.0.0", proto=UDP),
        True,
    ),
    "udp-v6only-vs-any4": (
        Setup("::", UDP, reuse=False, v6only=True),
        intent("0.0.0.0", proto=UDP),
        False,
    ),
}


def _marks(setup: Setup, want: BindIntent) -> list[pytest.MarkDecorator]:
    addresses = [setup.address] + ([] if want.address is None else [want.address])
    marks = []
    if any(":" in a for a in addresses):
        marks.append(NEEDS_V6)
    if any(a.endswith("127.0.0.2") for a in addresses):
        marks.append(NEEDS_127_0_0_2)
    if setup.uid is not None:
        marks.append(NEEDS_ROOT)
    return marks


@pytest.mark.parametrize(
    ("setup", "want", "blocked"),
    [pytest.param(*p, id=name, marks=_marks(*p[:2])) for name, p in PAIRS.items()],
)
def test_bound_socket(setup: Setup, want: BindIntent, blocked: bool) -> None:
    port = free_port(setup.proto)
    with existing(setup, port) as sock:
        peer = PeerOptions(setup.reuse, setup.reuseport)
        check(want._replace(port=port), [sock], peer, blocked)


# --- leftovers of connections: TIME_WAIT, an ESTABLISHED child -------------------------


def _tcp_states(port: int) -> set[str]:
    """States (hex, as /proc/net/tcp writes them) of IPv4 TCP sockets on local `port`."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {r[3] for r in rows if int(r[1].rsplit(":", 1)[1], 16) == port}


@contextlib.contextmanager
def connection(
    reuse: bool, reuseport: bool = False
) -> Iterator[tuple[int, socket.socket, socket.socket]]:
    """A listener on 127.0.0.1 and one accepted connection: (port, listener, child)."""
    port = free_port(TCP)
    with socket.socket() as lsn, socket.socket() as client:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuseport))
        lsn.bind(("127.0.0.1", port))
        lsn.listen()
        client.connect(("127.0.0.1", port))
        child, _ = lsn.accept()
        with child:
            yield port, lsn, child


def time_wait(reuse: bool, reuseport: bool = False) -> tuple[int, Socket]:
    """Leave a server-side TIME_WAIT socket on 127.0.0.1:port, no listener; return both.

    The accepted socket closes first (active close: FIN_WAIT1/2), then the client, so
    the server side ends in TIME_WAIT on the listener's port; then the listener goes.
    """
    with connection(reuse, reuseport) as (port, _, child):
        child.close()  # then the client closes, then the listener: leaving the `with`
    deadline = time.monotonic() + 5
    while _tcp_states(port) != {"06"}:  # 06: TCP_TIME_WAIT
        assert time.monotonic() < deadline, f"no TIME_WAIT on {port}: {_tcp_states(port)}"
        time.sleep(0.01)
    tw = Socket(TCP, socket.AF_INET, "TIME_WAIT", "127.0.0.1", port, "127.0.0.1", 1, 0, 0)
    return port, tw


TW_CASES = {
    # name: (listener had SO_REUSEADDR, intent, bind() fails)
    "reuse-vs-reuse": (True, intent("127.0.0.1"), False),
    "reuse-vs-no-reuse": (True, intent("127.0.0.1", reuse_address=False), True),
    "reuse-vs-any4-no-reuse": (True, intent("0.0.0.0", reuse_address=False), True),
    "reuse-vs-127.0.0.2-no-reuse": (True, intent("127.0.0.2", reuse_address=False), False),
    "reuse-vs-no-address-no-reuse": (True, intent(None, reuse_address=False), True),
    "reuse-vs-v6only-no-reuse": (
        True,
        intent("::", v6only=True, reuse_address=False),
        False,
    ),
    # The TIME_WAIT socket keeps its own sk_reuse: without it, even SO_REUSEADDR fails.
    "no-reuse-vs-reuse": (False, intent("127.0.0.1"), True),
    "no-reuse-vs-no-reuse": (False, intent("127.0.0.1", reuse_address=False), True),
    "no-reuse-vs-dual-reuse": (False, intent("::", v6only=False), True),
}


@pytest.mark.parametrize(
    ("reuse", "want", "blocked"),
    [
        pytest.param(*c, id=name, marks=_marks(Setup("127.0.0.1"), c[1]))
        for name, c in TW_CASES.items()
    ],
)
def test_time_wait(reuse: bool, want: BindIntent, blocked: bool) -> None:
    port, tw = time_wait(reuse)
    want = want._replace(port=port)
    check(want, [tw], PeerOptions(reuse), blocked)
    assert judge(want, [tw], Kernel()).blockers == ((tw,) if blocked else ())


def test_time_wait_reuseport_any_uid() -> None:
    # inet_bind_conflict: with SO_REUSEPORT on both, a TIME_WAIT socket never counts,
    # whatever the uid (the uid of our intent is made up on purpose).
    port, tw = time_wait(reuse=False, reuseport=True)
    want = BindIntent("127.0.0.1", port, TCP, False, True, None, uid=12345)
    check(want, [tw], PeerOptions(False, True), blocked=False)


@pytest.mark.parametrize("reuse", [True, False], ids=["listener-reuse", "listener-no-reuse"])
def test_established_child_after_listener_closed(reuse: bool) -> None:
    # The child inherits the listener's sk_reuse (sk_clone_lock) and its bind bucket.
    with connection(reuse) as (port, lsn, child):
        lsn.close()
        socks = [observed(child, TCP, "ESTABLISHED")]
        peer = PeerOptions(reuse)
        check(BindIntent("127.0.0.1", port, TCP, True), socks, peer, blocked=not reuse)
        check(BindIntent("127.0.0.1", port, TCP, False), socks, peer, blocked=True)
        check(BindIntent("0.0.0.0", port, TCP, False), socks, peer, blocked=True)
        if HAVE_127_0_0_2:
            check(BindIntent("127.0.0.2", port, TCP, False), socks, peer, blocked=False)


def test_listener_and_children_name_the_listener() -> None:
    with connection(reuse=True) as (port, lsn, child):
        socks = [observed(child, TCP, "ESTABLISHED"), observed(lsn, TCP, "LISTEN")]
        want = BindIntent("127.0.0.1", port, TCP, False)
        check(want, socks, PeerOptions(True), blocked=True)
        assert blockers(want, socks) == [socks[1]]
        assert judge(want, socks, Kernel()).blockers == (socks[1],)


# --- probe_bind, other answers ---------------------------------------------------------


def test_probe_address_not_on_this_host() -> None:
    if _bindable(socket.AF_INET, "192.0.2.1"):
        pytest.skip("192.0.2.1 (TEST-NET-1) is configured here")
    err = probe_bind(BindIntent("192.0.2.1", free_port(TCP), TCP))
    assert err is not None and err.errno == errno.EADDRNOTAVAIL


def test_probe_free_port_and_no_address() -> None:
    port = free_port(UDP)
    assert probe_bind(BindIntent(None, port, UDP)) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        err = probe_bind(BindIntent(None, port, UDP))
        assert err is not None and err.errno == errno.EADDRINUSE


@NEEDS_V6
def test_probe_mapped_address_on_v6only_intent() -> None:
    err = probe_bind(BindIntent("::ffff:127.0.0.1", free_port(TCP), TCP, v6only=True))
    assert err is not None and err.errno == errno.EINVAL


# --- Kernel.options: a socket's flags read from its owner's fd ---------------------------


@pytest.mark.parametrize(("reuse", "reuseport"), [(True, False), (False, True), (False, False)])
def test_kernel_reads_a_holders_socket_options(reuse: bool, reuseport: bool) -> None:
    from portguard.model import Holder, Process
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: another process, as a server would be
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuseport))
            s.bind(("127.0.0.1", 0))
            os.write(w, f"{s.fileno()} {s.getsockname()[1]} {os.fstat(s.fileno()).st_ino}"
                     .encode())
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        fd, port, inode = (int(x) for x in os.read(r, 64).split())
        sock = Socket(UDP, socket.AF_INET, "UNCONN", "127.0.0.1", port, "", 0, os.getuid(),
                      inode)
        held = Holder(sock, (Process(pid, 0, fds=(fd,)),))
        assert Kernel([held]).options(sock) == PeerOptions(reuse, reuseport)
        # the fd is not that socket (a number reused meanwhile): nothing is read
        assert Kernel([held]).options(sock._replace(inode=inode + 1)) is None
        assert Kernel([held._replace(processes=(Process(pid, 0, fds=(0,)),))]).options(
            sock) is None
        # what the rules then say is the kernel's answer: shared only with SO_REUSEADDR
        want = BindIntent("127.0.0.1", port, UDP, True)
        assert plain_bind(want) == (0 if reuse else errno.EADDRINUSE)
        assert judge(want, [sock], Kernel([held])).blockers == (() if reuse else (sock,))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
