"""observe.kernel.netlink's port filter: the port ranges asked for and the inet_diag bytecode
that selects them, checked against an executable model of the kernel's checker."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.observe.kernel import netlink

# --- an executable model of the kernel's bytecode checker and interpreter -------------
# Written from the semantics of net/ipv4/inet_diag.c (inet_diag_bc_audit, valid_cc,
# inet_diag_bc_run), restricted to the port ops we emit.


def _ops(bc: bytes, at: int) -> tuple[int, int, int]:
    code, yes, no = struct.unpack_from("=BBH", bc, at)
    return code, yes, no


def audit(bc: bytes) -> bool:
    def valid_cc(cc: int) -> bool:  # is offset (len - cc) on the chain of `yes` steps?
        length, at = len(bc), 0
        while length >= 0:
            if cc > length:
                return False
            if cc == length:
                return True
            _, yes, _ = _ops(bc, at)
            if yes < 4 or yes & 3:
                return False
            length -= yes
            at += yes
        return False

    length, at = len(bc), 0
    while length > 0:
        code, yes, no = _ops(bc, at)
        if code in (2, 3, 4, 5, 11, 12):  # port comparisons: a second op holds the port
            min_len = 8
        elif code in (0, 1):
            min_len = 4
        else:
            return False
        if length < min_len:
            return False
        if code != 0:
            if no < min_len or no > length + 4 or no & 3:
                return False
            if no < length and not valid_cc(length - no):
                return False
        if yes < min_len or yes > length + 4 or yes & 3:
            return False
        at += yes
        length -= yes
    return length == 0


def run(bc: bytes, sport: int) -> bool:
    length, at = len(bc), 0
    while length > 0:
        code, yes, no = _ops(bc, at)
        ok = True
        if code == 1:  # JMP
            ok = False
        elif code == 2:
            ok = sport >= _ops(bc, at + 4)[2]
        elif code == 3:
            ok = sport <= _ops(bc, at + 4)[2]
        step = yes if ok else no
        at += step
        length -= step
    return length == 0


# --- port ranges and bytecode ---------------------------------------------------------


def test_port_ranges_of_a_range_is_one_range() -> None:
    assert netlink.port_ranges(range(7000, 7011)) == [(7000, 7010)]
    assert netlink.port_ranges(range(5, 5)) == []


def test_port_ranges_joins_adjacent_and_drops_duplicates() -> None:
    assert netlink.port_ranges([80, 443, 81, 80, 8080, 82]) == [(80, 82), (443, 443), (8080, 8080)]


def test_port_ranges_merges_smallest_gaps_past_the_limit() -> None:
    assert netlink.port_ranges([10, 12, 100, 103, 1000], max_ranges=3) == [
        (10, 12),
        (100, 103),
        (1000, 1000),
    ]
    assert len(netlink.port_ranges(range(0, 2000, 2))) == netlink.MAX_RANGES


@pytest.mark.parametrize("bad", [[-1], [65536], range(65530, 65540)])
def test_port_ranges_rejects_impossible_ports(bad: list[int] | range) -> None:
    with pytest.raises(ValueError, match="not a port"):
        netlink.port_ranges(bad)


def test_bytecode_for_one_port_matches_hand_assembly() -> None:
    # op S_GE(2) yes=8 no=20 | port op (0,0,8080) | op S_LE(3) yes=8 no=12 | (0,0,8080)
    # no=20 from S_GE and no=12 from S_LE both land 4 bytes past the end: reject.
    assert netlink.port_filter([(8080, 8080)]) == bytes.fromhex(
        "02081400 0000901f 03080c00 0000901f"
    )


def test_bytecode_for_two_ranges_matches_hand_assembly() -> None:
    # block 0 (20 bytes): GE 80 (no -> block 1 at +20), LE 80 (no -> +12 = block 1),
    # JMP yes=4 no=20 (offset 16 + 20 = 36 = end: accept); block 1: GE 443, LE 450.
    assert netlink.port_filter([(80, 80), (443, 450)]) == bytes.fromhex(
        "02081400 00005000 03080c00 00005000 01041400"  # block 0
        "02081400 0000bb01 03080c00 0000c201"  # block 1
    )


def test_no_bytecode_when_every_port_is_wanted() -> None:
    assert netlink.port_filter([(0, 65535)]) == b""


@given(st.lists(st.integers(0, 65535), min_size=1, max_size=80), st.integers(0, 65535))
def test_bytecode_passes_the_audit_and_accepts_exactly_the_ranges(
    ports: list[int], probe: int
) -> None:
    ranges = netlink.port_ranges(ports)
    bc = netlink.port_filter(ranges)
    if not bc:
        return
    assert audit(bc)
    expected = any(first <= probe <= last for first, last in ranges)
    assert run(bc, probe) is expected
    for port in ports:
        assert run(bc, port)
