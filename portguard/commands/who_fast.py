"""`portguard who PORT ...` in its plainest form: answered before the command line is
parsed.

`who 8080` is what an administrator types when a start failed; on free ports the answer
is a bind() probe per port (`observe.kernel.bindable.nothing_bound`: the kernel refuses it
while any socket holds the port), so it need not pay for argparse, the observer or D-Bus.
Only the plainest words take this way (`8080`, `7000-7010/tcp`, `5353/udp`, in ASCII digits, no
leading zero); anything else, and any port that is not provably empty, goes the whole
way, which parses, validates and names holders as always. A held port takes `who`'s own way
with the arguments argparse would give it (`arguments`), without argparse (~6 ms).
"""

from __future__ import annotations

from portguard.commands import OPTION_DEFAULTS
from portguard.config import MAX_RANGE_PORTS
from portguard.observe.containers.hints import may_publish
from portguard.observe.kernel.bindable import nothing_bound
from portguard.report.layout import WHO_HEADER, columns, free_row

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import TextIO


def _port(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or text[0] == "0" or len(text) > 5:
        return None
    value = int(text)
    return value if value <= 65535 else None


def plain_ports(words: list[str]) -> list[tuple[int, str]] | None:
    """The (port, "tcp"|"udp") pairs of `who`'s words, in order, once each, as the whole
    way reads them; None when a word is not of the plainest form."""
    wanted: dict[tuple[int, str], None] = {}
    for word in words:
        ports, slash, proto = word.partition("/")
        if slash and proto not in ("tcp", "udp"):
            return None
        first_text, dash, last_text = ports.partition("-")
        first = _port(first_text)
        last = _port(last_text) if dash else first
        if first is None or last is None or not first <= last < first + MAX_RANGE_PORTS:
            return None  # a reversed or too long range: the whole way says what is wrong
        kind = proto if slash else "tcp"  # Proto's values: model (enum) is not imported
        wanted.update(dict.fromkeys((p, kind) for p in range(first, last + 1)))
    return list(wanted) or None


def attempt(pairs: list[tuple[int, str]], stream: TextIO) -> bool:
    """Print `who`'s table and return True when every port asked is provably empty (and
    no container runtime may forward one without a socket: the whole way names those)."""
    if may_publish() or not all(nothing_bound(*pair) for pair in pairs):
        return False
    rows = [free_row(f"{port}/{proto}", len(WHO_HEADER)) for port, proto in pairs]
    print("\n".join(columns(WHO_HEADER, rows)), file=stream)
    return True


# `who`'s own values when its options are not given (`cli.build_parser` sets these too)
WHO_DEFAULTS = {"handler": "who:run", "reuse_address": None}


def arguments(words: list[str], pairs: list[tuple[int, str]]) -> argparse.Namespace:
    """What `build_parser().parse_args(["who", *words])` gives (tests hold the two to the
    same), plus the ports already read."""
    from types import SimpleNamespace  # argparse.Namespace's shape, without argparse
    found = SimpleNamespace(command="who", **OPTION_DEFAULTS, **WHO_DEFAULTS, ports=words,
                            pairs=pairs)
    return found  # type: ignore[return-value]
