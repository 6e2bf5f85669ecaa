"""`who PORT ...`'s fast path reads its words as the whole way does, and prints its table."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.commands import who_fast
from portguard.commands.who import parse_port_args
from portguard.errors import UsageError
from portguard.model import Proto
from portguard.observe.observer import PortReport
from portguard.report import tables

NUMBERS = st.one_of(st.integers(0, 70000).map(str), st.sampled_from(["", "08", "1_0", "٣"]))
WORDS = st.tuples(NUMBERS, st.sampled_from(["", "-"]), NUMBERS,
                  st.sampled_from(["", "/tcp", "/udp", "/TCP", "/sctp", "/"])).map(
    lambda t: t[0] + (t[1] + t[2] if t[1] else "") + t[3])


@given(st.lists(WORDS, min_size=1, max_size=3))
def test_plain_words_read_as_the_whole_way_reads_them(words: list[str]) -> None:
    fast = who_fast.plain_ports(words)
    try:
        whole = parse_port_args(words)
    except UsageError:
        assert fast is None  # the whole way says what is wrong
        return
    if fast is not None:  # anything else is left to the whole way
        assert fast == [(port, str(proto)) for port, proto in whole]


def test_the_plainest_forms_take_the_fast_path() -> None:
    assert who_fast.plain_ports(["8080", "5353/udp", "7000-7001/tcp"]) == [
        (8080, "tcp"), (5353, "udp"), (7000, "tcp"), (7001, "tcp")]
    for word in ("127.0.0.1:80", "[::1]:80", "080", "80/TCP", "--json", "0", "65536"):
        assert who_fast.plain_ports([word]) is None, word


def test_free_ports_print_the_table_the_whole_way_prints(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(who_fast, "nothing_bound", lambda port, proto: True)
    monkeypatch.setattr(who_fast, "may_publish", lambda: False)
    out = io.StringIO()
    assert who_fast.attempt([(8080, "tcp"), (5353, "udp")], out)
    reports = [PortReport(8080, Proto.TCP, (), 0, ""), PortReport(5353, Proto.UDP, (), 0, "")]
    assert out.getvalue() == tables.table(reports) + "\n"


def test_a_held_port_or_a_publishing_runtime_goes_the_whole_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(who_fast, "nothing_bound", lambda port, proto: port != 8081)
    monkeypatch.setattr(who_fast, "may_publish", lambda: False)
    out = io.StringIO()
    assert not who_fast.attempt([(8080, "tcp"), (8081, "tcp")], out)
    monkeypatch.setattr(who_fast, "nothing_bound", lambda port, proto: True)
    monkeypatch.setattr(who_fast, "may_publish", lambda: True)
    assert not who_fast.attempt([(8080, "tcp")], out)
    assert out.getvalue() == ""  # nothing printed: the whole way prints the answer


def test_a_held_port_gets_the_arguments_argparse_would_give() -> None:
    from portguard.cli import build_parser
    parsed = vars(build_parser().parse_args(["who", "8080", "5353/udp"]))
    shortcut = vars(who_fast.arguments(["8080", "5353/udp"], [(8080, "tcp"), (5353, "udp")]))
    assert shortcut.pop("pairs") == [(8080, "tcp"), (5353, "udp")]
    assert shortcut == parsed
