"""portguard.observe.kernel.sockets against the running kernel.

Every test makes its own sockets, on loopback, on ports the kernel picked (bind to port
0), and asserts only about those ports, so nothing else on the host matters. No systemd
is needed (this directory marks everything `sandbox`, but these use no sandbox).
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portguard.model import Proto, Socket
from portguard.observe.kernel import netlink, sockets

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
LINGER_RST = struct.pack("ii", 1, 0)  # close with RST: leave no TIME_WAIT behind


def _sock_diag_refusal() -> str | None:
    try:
        sockets.query([1], via="netlink")
    except sockets.SocketQueryError as e:
        return str(e)
    return None


_REFUSAL = _sock_diag_refusal()
pytestmark = pytest.mark.skipif(
    _REFUSAL is not None, reason=f"sock_diag unavailable here: {_REFUSAL}"
)


class Sockets:
    """Sockets a test made or accepted; closed (TCP with RST, so no TIME_WAIT) after it."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []

    def new(self, family: int = AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        return self.adopt(socket.socket(family, kind))

    def adopt(self, s: socket.socket) -> socket.socket:
        self.held.append(s)
        return s

    def close_all(self) -> None:
        for s in self.held:
            if s.fileno() >= 0 and s.type == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            s.close()


@pytest.fixture
def socks() -> Iterator[Sockets]:
    held = Sockets()
    yield held
    held.close_all()


def listener(socks: Sockets, host: str = "127.0.0.1", v6only: bool | None = None
             ) -> socket.socket:  # fmt: skip
    s = socks.new(AF_INET6 if ":" in host else AF_INET)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0))
    s.listen()
    return s


def port_of(s: socket.socket) -> int:
    return int(s.getsockname()[1])


def inode_of(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def only(found: list[Socket], **match: object) -> Socket:
    hits = [s for s in found if all(getattr(s, k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, found)
    return hits[0]


def wait_for(port: int, state: str, timeout: float = 3.0) -> Socket:
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in sockets.query([port], [Proto.TCP]) if s.state == state]
        if found:
            return only(found)
        assert time.monotonic() < deadline, f"no {state} socket on port {port}"
        time.sleep(0.01)


def test_tcp_listener_ipv4(socks: Sockets) -> None:
    s = listener(socks)
    found = sockets.query([port_of(s)])
    assert found == [
        Socket(
            proto=Proto.TCP, family=AF_INET, state="LISTEN", local_address="127.0.0.1",
            local_port=port_of(s), remote_address="0.0.0.0", remote_port=0,
            uid=os.geteuid(), inode=inode_of(s), v6only=None, cgroup_id=found[0].cgroup_id,
        )
    ]  # fmt: skip
    assert isinstance(found[0].cgroup_id, int)


@pytest.mark.parametrize("v6only", [True, False])
def test_ipv6_loopback_listener(socks: Sockets, v6only: bool) -> None:
    s = listener(socks, "::1", v6only)
    got = only(sockets.query([port_of(s)]), family=AF_INET6)
    assert (got.state, got.local_address, got.remote_address) == ("LISTEN", "::1", "::")
    assert got.inode == inode_of(s)
    # Binding a specific IPv6 address sets ipv6only in the kernel whatever the option
    # said (__inet6_bind): such a socket can never take IPv4. sock_diag tells that truth.
    assert got.v6only is True
    assert got.v6only == bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


@pytest.mark.parametrize("v6only", [True, False])
def test_dual_stack_any_listener(socks: Sockets, v6only: bool) -> None:
    s = listener(socks, "::", v6only)
    got = only(sockets.query([port_of(s)]), local_address="::")
    assert (got.family, got.state, got.v6only) == (AF_INET6, "LISTEN", v6only)


@pytest.mark.parametrize(("family", "host"), [(AF_INET, "127.0.0.1"), (AF_INET6, "::1")])
def test_udp_bound_and_connected(socks: Sockets, family: int,
                                 host: str) -> None:  # fmt: skip
    bound = socks.new(family, socket.SOCK_DGRAM)
    bound.bind((host, 0))
    peer = socks.new(family, socket.SOCK_DGRAM)
    peer.bind((host, 0))
    peer.connect((host, port_of(bound)))
    got = only(sockets.query([port_of(bound)], [Proto.UDP]))
    assert (got.proto, got.state, got.local_address, got.inode) == (
        Proto.UDP, "UNCONN", host, inode_of(bound)
    )  # fmt: skip
    assert got.v6only is (True if family == AF_INET6 else None)
    conn = only(sockets.query([port_of(peer)], [Proto.UDP]))
    assert (conn.state, conn.remote_port, conn.inode) == ("ESTABLISHED", port_of(bound),
                                                          inode_of(peer))  # fmt: skip
    assert sockets.query([port_of(bound)], [Proto.TCP]) == []


def test_established_pair(socks: Sockets) -> None:
    lsn = listener(socks)
    port = port_of(lsn)
    client = socks.new()
    client.connect(("127.0.0.1", port))
    accepted = socks.adopt(lsn.accept()[0])
    found = sockets.query([port])
    assert sorted(s.state for s in found) == ["ESTABLISHED", "LISTEN"]
    server_side = only(found, state="ESTABLISHED")
    assert (server_side.local_port, server_side.remote_port) == (port, port_of(client))
    assert server_side.inode == inode_of(accepted)
    client_side = only(sockets.query([port_of(client)]))
    assert (client_side.state, client_side.remote_port) == ("ESTABLISHED", port)
    assert client_side.inode == inode_of(client)


def test_closing_states_and_time_wait(socks: Sockets) -> None:
    lsn = listener(socks)
    port = port_of(lsn)
    client = socks.new()
    client.connect(("127.0.0.1", port))
    client_port = port_of(client)
    accepted = lsn.accept()[0]
    # The side that closes first ends in TIME_WAIT: make it the server, so the TIME_WAIT
    # sits on the listening port, as after a server restart.
    accepted.close()
    fin_wait = wait_for(port, "FIN_WAIT2")  # orphaned: a timewait sock, owned by nobody
    assert (fin_wait.inode, fin_wait.remote_port) == (0, client_port)
    assert wait_for(port_of(client), "CLOSE_WAIT").inode == inode_of(client)
    client.close()
    tw = wait_for(port, "TIME_WAIT")
    assert (tw.local_address, tw.remote_port, tw.uid, tw.inode) == ("127.0.0.1", client_port, 0, 0)
    assert tw.cgroup_id is None  # a timewait sock carries no attributes
    assert only(sockets.query([port], states=["LISTEN"])).inode == inode_of(lsn)
    assert [s.state for s in sockets.query([port], states=["TIME_WAIT"])] == ["TIME_WAIT"]


@pytest.mark.skipif(
    tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit()) < (6, 8),
    reason="bound-only TCP sockets are dumped since Linux 6.8",
)
def test_bound_only_tcp_socket_is_reported(socks: Sockets) -> None:
    s = socks.new()
    s.bind(("127.0.0.1", 0))  # holds the port (bind() elsewhere gets EADDRINUSE) ...
    got = only(sockets.query([port_of(s)]))  # ... and /proc/net never shows it
    assert (got.state, got.inode) == ("CLOSE", inode_of(s))
    assert sockets.query([port_of(s)], via="proc") == []


def test_kernel_filter_with_500_other_listeners(socks: Sockets) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 700:
        if hard < 700:
            pytest.skip("RLIMIT_NOFILE too low for 500 extra sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    others = [listener(socks) for _ in range(500)]
    target = listener(socks)
    port = port_of(target)
    found = sockets.query([port])
    assert [(s.state, s.inode) for s in found] == [("LISTEN", inode_of(target))]
    # Disjoint ports become an OR of ranges in one bytecode program; the kernel accepts it.
    some = [port_of(s) for s in others[::100]]
    assert {s.inode for s in sockets.query(some)} == {inode_of(s) for s in others[::100]}
    # And the filtering happens in the kernel: the raw reply holds only the asked port.
    raw: list[Socket] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, netlink.NETLINK_SOCK_DIAG) as nl:
        nl.sendto(netlink.tcp_dump_request(1 << 10, netlink.port_filter([(port, port)]), 1),
                  (0, 0))  # fmt: skip
        while not netlink.parse_dump(nl.recv(65536), 1, Proto.TCP, raw):
            pass
    assert [s.local_port for s in raw] == [port]


def test_proc_fallback_sees_the_same_sockets(
    socks: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    lsn = listener(socks, "::", v6only=False)
    port = port_of(lsn)
    v4 = socks.new()
    v4.connect(("127.0.0.1", port))  # accepted as an AF_INET6 v4-mapped socket
    socks.adopt(lsn.accept()[0])
    udp = socks.new(AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::1", port))
    v6 = socks.new(AF_INET6)
    v6.connect(("::1", port))
    lsn.accept()[0].close()  # the server closes first: a TIME_WAIT on the port
    v6.close()
    wait_for(port, "TIME_WAIT")

    def key(s: Socket) -> Socket:  # /proc/net knows neither
        return s._replace(v6only=None, cgroup_id=None)

    netlink_view = sorted(map(key, sockets.query([port], via="netlink")))
    assert sorted(s.state for s in netlink_view) == ["ESTABLISHED", "LISTEN", "TIME_WAIT",
                                                     "UNCONN"]  # fmt: skip
    assert sorted(map(key, sockets.query([port], via="proc"))) == netlink_view

    def refuse() -> socket.socket:
        raise sockets.NetlinkUnavailable("refused for the test")

    monkeypatch.setattr(sockets, "_open_netlink", refuse)
    assert sorted(map(key, sockets.query([port]))) == netlink_view


def cgroup2_root() -> Path | None:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup or, hybrid, .../unified."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def own_cgroup() -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def test_cgroup_id_is_the_inode_of_our_cgroup2_directory(
    socks: Sockets,
) -> None:
    root, path = cgroup2_root(), own_cgroup()
    if root is None or path is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    s = listener(socks)
    got = only(sockets.query([port_of(s)]))
    # cgroup_id() is the kernfs node id, which is also the directory's inode number.
    assert got.cgroup_id == os.stat(f"{root}{path.rstrip('/')}").st_ino


CHILD = """
import socket, sys, time
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write("0")  # this process moves itself
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_cgroup_id_follows_the_creating_process_into_a_child_cgroup(tmp_path: Path) -> None:
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    group = root / f"portguard-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"cannot create a cgroup here: {e}")
    try:
        with subprocess.Popen([sys.executable, "-c", CHILD, str(group)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as child:  # fmt: skip
            assert child.stdout is not None and child.stdin is not None
            port = int(child.stdout.readline())
            got = only(sockets.query([port]))
            child.stdin.close()
        assert got.cgroup_id == group.stat().st_ino
        assert got.cgroup_id != os.stat(f"{root}{own_cgroup() or '/'}").st_ino
    finally:
        group.rmdir()
