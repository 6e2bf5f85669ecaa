"""observe.kernel.sockets / observe.kernel.netlink without the kernel: bytes in, bytes
out (the port filter's bytecode is test_netlink_filter.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.model import Proto, Socket
from portguard.observe.kernel import netlink, sockets
from portguard.observe.kernel.netlink import KernelError, SocketQueryError

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
HDR = struct.Struct("=IHHII")


# --- requests -------------------------------------------------------------------------


def test_v2_dump_request_bytes() -> None:
    req = netlink.dump_request(
        AF_INET6, Proto.UDP, 0xFFFFFFFF, netlink.port_filter([(53, 53)]), 7, sport=53
    )
    expected = (
        HDR.pack(16 + 56 + 4 + 16, 20, 0x301, 7, 0)  # SOCK_DIAG_BY_FAMILY, REQUEST|DUMP
        + bytes([10, 17, 0, 0]) + b"\xff\xff\xff\xff"  # AF_INET6, IPPROTO_UDP, ext, pad
        + b"\x00\x35" + bytes(46)  # inet_diag_sockid: idiag_sport 53 (big-endian), zeros
        + struct.pack("=HH", 20, 1)  # nlattr INET_DIAG_REQ_BYTECODE
        + bytes.fromhex("02081400 00003500 03080c00 00003500")
    )  # fmt: skip
    assert req == expected
    assert len(req) == 92


def test_tcp_request_uses_the_family_less_request_type() -> None:
    req = netlink.tcp_dump_request(1 << 10, netlink.port_filter([(8080, 8080)]), 1)
    assert req == (
        HDR.pack(96, 18, 0x301, 1, 0)  # TCPDIAG_GETSOCK
        + bytes([0, 0, 0, 0]) + bytes(48)  # AF_UNSPEC, src_len, dst_len, ext; zero sockid
        + struct.pack("=II", 1 << 10, 0)  # idiag_states (LISTEN), idiag_dbs
        + struct.pack("=HH", 20, 1)
        + netlink.port_filter([(8080, 8080)])
    )  # fmt: skip


def test_request_without_bytecode_has_no_attribute() -> None:
    assert len(netlink.dump_request(AF_INET, Proto.TCP, 0xFFFFFFFF, b"", 1)) == 16 + 56


# --- replies --------------------------------------------------------------------------


def nla(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + bytes(-len(raw) % 4)


def diag_msg(
    family: int,
    state: int,
    local: tuple[str, int],
    remote: tuple[str, int],
    *,
    uid: int = 1000,
    inode: int = 4242,
    attrs: bytes = b"",
) -> bytes:
    """A `struct inet_diag_msg` as the kernel fills it, then `attrs`."""

    def addr(text: str) -> bytes:
        return socket.inet_pton(family, text).ljust(16, b"\0")

    body = struct.pack("=BBBB", family, state, 0, 0)
    body += struct.pack("!HH", local[1], remote[1]) + addr(local[0]) + addr(remote[0])
    body += struct.pack("=I", 0) + struct.pack("=II", 0xFFFFFFFF, 0xFFFFFFFF)  # if, cookie
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    assert len(body) == 72
    return body + attrs


def nlmsg(mtype: int, body: bytes, seq: int = 1, flags: int = 2) -> bytes:
    raw = HDR.pack(16 + len(body), mtype, flags, seq, 1234) + body
    return raw + bytes(-len(raw) % 4)


def done(err: int = 0, seq: int = 1) -> bytes:
    return nlmsg(3, struct.pack("=i", err), seq)


def test_parse_ipv4_listener_with_attributes() -> None:
    attrs = (
        nla(8, b"\x00")  # INET_DIAG_SHUTDOWN: unknown to us, skipped (and padded)
        + nla(21, struct.pack("=Q", 0x1234_5678_9ABC))  # INET_DIAG_CGROUP_ID
        + nla(0x8000 | 99, b"xyz")  # an unknown, flagged, odd-sized attribute
    )
    data = nlmsg(20, diag_msg(AF_INET, 10, ("10.1.2.3", 8080), ("0.0.0.0", 0), attrs=attrs))
    out: list[Socket] = []
    assert netlink.parse_dump(data, 1, Proto.TCP, out) is False
    assert out == [
        Socket(
            proto=Proto.TCP, family=AF_INET, state="LISTEN", local_address="10.1.2.3",
            local_port=8080, remote_address="0.0.0.0", remote_port=0, uid=1000, inode=4242,
            v6only=None, cgroup_id=0x1234_5678_9ABC,
        )
    ]  # fmt: skip


def test_parse_ipv6_sockets_multipart_then_done() -> None:
    first = nlmsg(
        20, diag_msg(AF_INET6, 7, ("::", 5353), ("::", 0), uid=0, attrs=nla(11, b"\x01"))
    ) + nlmsg(20, diag_msg(AF_INET6, 1, ("::ffff:127.0.0.1", 5353), ("::ffff:127.0.0.1", 40000)))
    out: list[Socket] = []
    assert netlink.parse_dump(first, 1, Proto.UDP, out) is False
    assert netlink.parse_dump(done(), 1, Proto.UDP, out) is True
    assert [(s.state, s.local_address, s.remote_port, s.v6only) for s in out] == [
        ("UNCONN", "::", 0, True),
        ("ESTABLISHED", "::ffff:127.0.0.1", 40000, None),
    ]


def test_parse_time_wait_from_the_old_request_type() -> None:
    data = (
        nlmsg(
            18, diag_msg(AF_INET6, 6, ("2001:db8::1", 443), ("2001:db8::2", 5555), uid=0, inode=0)
        )
        + done()
    )
    out: list[Socket] = []
    assert netlink.parse_dump(data, 1, Proto.TCP, out) is True
    assert out[0].state == "TIME_WAIT"
    assert (out[0].local_address, out[0].inode, out[0].cgroup_id) == ("2001:db8::1", 0, None)


def test_messages_of_another_sequence_are_skipped() -> None:
    data = nlmsg(20, diag_msg(AF_INET, 10, ("1.2.3.4", 1), ("0.0.0.0", 0)), seq=99) + done(seq=99)
    out: list[Socket] = []
    assert netlink.parse_dump(data, 1, Proto.TCP, out) is False
    assert out == []


def test_nlmsg_error_raises_with_errno() -> None:
    data = nlmsg(2, struct.pack("=i", -errno.EINVAL) + HDR.pack(92, 20, 0x301, 1, 0))
    with pytest.raises(KernelError, match="EINVAL") as info:
        netlink.parse_dump(data, 1, Proto.TCP, [])
    assert info.value.errno == errno.EINVAL


def test_error_in_done_payload_raises() -> None:
    with pytest.raises(KernelError) as info:
        netlink.parse_dump(done(-errno.ENOENT), 1, Proto.UDP, [])
    assert info.value.errno == errno.ENOENT


def test_ack_is_harmless() -> None:
    assert netlink.parse_dump(nlmsg(2, struct.pack("=i", 0) + bytes(16)), 1, Proto.TCP, []) is False


GOOD = nlmsg(20, diag_msg(AF_INET, 1, ("1.2.3.4", 80), ("5.6.7.8", 9), attrs=nla(21, bytes(8))))


@pytest.mark.parametrize(
    "data",
    [
        GOOD[:10],  # a cut header
        GOOD[:-8],  # nlmsg_len beyond the datagram
        HDR.pack(8, 20, 2, 1, 0) + bytes(8),  # nlmsg_len below the header size
        nlmsg(20, diag_msg(AF_INET, 1, ("1.2.3.4", 80), ("5.6.7.8", 9))[:40]),  # short msg
        nlmsg(
            20, diag_msg(AF_INET, 1, ("1.2.3.4", 80), ("5.6.7.8", 9)) + struct.pack("=HH", 64, 21)
        ),
        nlmsg(
            20, diag_msg(AF_INET, 1, ("1.2.3.4", 80), ("5.6.7.8", 9)) + struct.pack("=HH", 2, 21)
        ),
        nlmsg(20, bytes([99]) + diag_msg(AF_INET, 1, ("1.2.3.4", 80), ("5.6.7.8", 9))[1:]),
        nlmsg(2, b"\xff"),  # NLMSG_ERROR without its errno
        nlmsg(4, b""),  # NLMSG_OVERRUN
    ],
)
def test_malformed_replies_raise_the_modules_error(data: bytes) -> None:
    with pytest.raises(SocketQueryError):
        netlink.parse_dump(data, 1, Proto.TCP, [])


@given(st.binary(max_size=300), st.integers(0, len(GOOD)))
def test_garbage_never_escapes_as_anything_else(noise: bytes, cut: int) -> None:
    for data in (noise, GOOD[:cut] + noise, HDR.pack(16 + len(noise), 20, 2, 1, 0) + noise):
        with contextlib.suppress(SocketQueryError):
            netlink.parse_dump(data, 1, Proto.TCP, [])


def test_state_names_and_masks() -> None:
    assert netlink.state_name(Proto.TCP, 7) == "CLOSE"
    assert netlink.state_name(Proto.UDP, 7) == "UNCONN"
    assert netlink.state_name(Proto.UDP, 1) == "ESTABLISHED"
    assert netlink.state_name(Proto.TCP, 12) == "NEW_SYN_RECV"
    assert netlink.state_name(Proto.TCP, 42) == "UNKNOWN_42"
    assert netlink.state_mask(None) == 0xFFFFFFFF
    assert netlink.state_mask(["listen", "TIME_WAIT"]) == 1 << 10 | 1 << 6
    # TCP sockets in CLOSE are only dumped for the BOUND_INACTIVE bit.
    assert netlink.state_mask(["UNCONN"]) == 1 << 7 | 1 << 13
    with pytest.raises(ValueError, match="unknown socket state"):
        netlink.state_mask(["LISTENING"])


# --- /proc/net ------------------------------------------------------------------------

PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 31338 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C351 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   3: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501

PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 4711 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:A2F4 06 00000000:00000000 03:000016A8 00000000     0        0 0 3 0000000000000000
   2: B80D0120000000000000000001000000:1F90 B80D0120000000000000000002000000:D431 08 00000000:00000000 00:00000000 00000000     0        0 4712 1 0000000000000000 20 4 0 10 -1
"""  # noqa: E501

PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 2020 2 0000000000000000 0
  500: 0100007F:E1A2 0100007F:0035 01 00000000:00000000 00:00000000 00000000  1000        0 2021 2 0000000000000000 0
"""  # noqa: E501


def test_proc_tcp_sample() -> None:
    found = sockets.parse_proc_net(PROC_TCP, AF_INET, Proto.TCP, wanted={8080})
    assert [(s.state, s.local_address, s.remote_address, s.remote_port, s.uid, s.inode)
            for s in found] == [
        ("LISTEN", "0.0.0.0", "0.0.0.0", 0, 0, 31337),
        ("ESTABLISHED", "127.0.0.1", "127.0.0.1", 50000, 1000, 31338),
        ("TIME_WAIT", "127.0.0.1", "127.0.0.1", 50001, 0, 0),
    ]  # fmt: skip
    assert all(s.v6only is None and s.cgroup_id is None and s.local_port == 8080 for s in found)
    assert len(sockets.parse_proc_net(PROC_TCP, AF_INET, Proto.TCP)) == 4
    only_listen = sockets.parse_proc_net(PROC_TCP, AF_INET, Proto.TCP, mask=1 << 10)
    assert [s.local_port for s in only_listen] == [8080, 80]


def test_proc_tcp6_sample() -> None:
    found = sockets.parse_proc_net(PROC_TCP6, AF_INET6, Proto.TCP, wanted=range(8080, 8081))
    assert [(s.state, s.local_address, s.remote_address, s.remote_port, s.uid) for s in found] == [
        ("LISTEN", "::1", "::", 0, 108),
        ("TIME_WAIT", "::ffff:127.0.0.1", "::ffff:127.0.0.1", 41716, 0),
        ("CLOSE_WAIT", "2001:db8::1", "2001:db8::2", 54321, 0),
    ]
    assert {s.family for s in found} == {AF_INET6}


def test_proc_udp_sample() -> None:
    found = sockets.parse_proc_net(PROC_UDP, AF_INET, Proto.UDP)
    assert [(s.state, s.local_address, s.local_port, s.remote_port) for s in found] == [
        ("UNCONN", "127.0.0.53", 53, 0),
        ("ESTABLISHED", "127.0.0.1", 57762, 53),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "   0: 00000000:1F90 00000000:0000",  # cut short
        "   0: 0000000:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",  # 7-digit address
        "   0: 00000000:1F90 00000000:0000 ZZ 0:0 0:0 0 0 0 1",  # bad state
        "   0: 00000000:1F90 00000000:0000 0A 0:0 0:0 0 root 0 1",  # bad uid
    ],
)
def test_proc_malformed_line_raises(line: str) -> None:
    with pytest.raises(SocketQueryError, match="line 2"):
        sockets.parse_proc_net("header\n" + line + "\n", AF_INET, Proto.TCP)


# --- query(): source selection and fallback, with the kernel faked ------------------


@pytest.fixture
def proc_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tcp").write_text(PROC_TCP)
    (tmp_path / "tcp6").write_text(PROC_TCP6)
    (tmp_path / "udp").write_text(PROC_UDP)
    # no udp6 file: a kernel without IPv6 UDP simply has no such sockets
    monkeypatch.setattr(sockets, "PROC_NET", str(tmp_path))
    return tmp_path


def test_query_falls_back_to_proc_when_netlink_is_refused(
    proc_net: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> socket.socket:
        raise sockets.NetlinkUnavailable("cannot open a sock_diag socket: Permission denied")

    monkeypatch.setattr(sockets, "_open_netlink", refuse)
    with caplog.at_level(logging.DEBUG, logger="portguard.observe.kernel.sockets"):
        found = sockets.query([8080, 53])
    assert len(found) == 3 + 3 + 1
    assert "Permission denied" in caplog.text and "/udp6" in caplog.text
    assert sockets.query([8080], states=["LISTEN"]) == [s for s in found if s.state == "LISTEN"]
    with pytest.raises(SocketQueryError, match="Permission denied"):
        sockets.query([8080], via="netlink")


class FakeNetlink:
    """Stands in for the sock_diag socket; answers each request from `answer`."""

    def __init__(self, answer: dict[tuple[int, int], bytes]) -> None:
        self.answer = answer
        self.pending = b""
        self.requests: list[tuple[int, int]] = []
        self.closed = False


    def close(self) -> None:  # the query closes what it opened (no `with`: _socket's)
        self.closed = True
    def sendto(self, data: bytes, addr: tuple[int, int]) -> int:
        _, mtype, _, seq, _ = HDR.unpack_from(data)
        key = (mtype, data[16] if mtype == 18 else data[16] * 100 + data[17])
        self.requests.append(key)
        self.pending = self.answer[key].replace(b"SEQ!", struct.pack("=I", seq))
        return len(data)

    def recvmsg_into(self, buffers: list[memoryview]) -> tuple[int, list[object], int, int]:
        n = len(self.pending)
        buffers[0][:n] = self.pending
        return n, [], 0, 0


def with_seq(message: bytes) -> bytes:
    return message[:8] + b"SEQ!" + message[12:]


def test_query_falls_back_for_udp_only(proc_net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listener = with_seq(nlmsg(18, diag_msg(AF_INET, 10, ("0.0.0.0", 53), ("0.0.0.0", 0))))
    no_udp_diag = with_seq(nlmsg(2, struct.pack("=i", -errno.ENOENT) + bytes(16)))
    fake = FakeNetlink(
        {(18, 0): listener + with_seq(done()), (20, 217): no_udp_diag, (20, 1017): no_udp_diag}
    )
    monkeypatch.setattr(sockets, "_open_netlink", lambda: fake)
    found = sockets.query(range(53, 54))
    assert fake.requests == [(18, 0), (20, 217), (20, 1017)]
    assert fake.closed  # the sock_diag socket does not outlive the query
    assert [(s.proto, s.state, s.local_address, s.inode) for s in found] == [
        (Proto.TCP, "LISTEN", "0.0.0.0", 4242),  # from sock_diag
        (Proto.UDP, "UNCONN", "127.0.0.53", 2020),  # from /proc/net/udp
    ]


def test_query_asks_per_family_when_the_old_tcp_request_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = with_seq(nlmsg(2, struct.pack("=i", -errno.EINVAL) + bytes(16)))
    v4 = with_seq(nlmsg(20, diag_msg(AF_INET, 10, ("0.0.0.0", 80), ("0.0.0.0", 0))))
    v6 = with_seq(nlmsg(20, diag_msg(AF_INET6, 10, ("::", 80), ("::", 0), attrs=nla(11, b"\1"))))
    fake = FakeNetlink(
        {(18, 0): refused, (20, 206): v4 + with_seq(done()), (20, 1006): v6 + with_seq(done())}
    )
    monkeypatch.setattr(sockets, "_open_netlink", lambda: fake)
    found = sockets.query([80], [Proto.TCP])
    assert [(s.family, s.v6only) for s in found] == [(AF_INET, None), (AF_INET6, True)]


def test_query_of_no_ports_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "_open_netlink", lambda: pytest.fail("asked the kernel"))
    assert sockets.query([]) == []
