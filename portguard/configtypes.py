"""The config's value grammars and the strict YAML layer under portguard.config.

Values are read from composed YAML nodes (which keep their positions), never from objects
YAML 1.1's resolver built: `no`, `0700`, `22:22`, `8_080` mean different things to different
YAML readers, so they are refused, not guessed. Grammars are ASCII (`int()` would take `٨٠`);
each raises ValueError with what the user reads after `FILE:LINE:COL:`.
"""

from __future__ import annotations

import difflib
import enum
import functools
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from signal import Signals
from typing import TypeVar

import yaml

from portguard.model import PortSpec, Proto

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

MAX_RANGE_PORTS = 20000  # room for RTP ranges (Asterisk: 10000-20000); 1-65535 is a slip
MAX_DURATION = 86400.0  # one day: every wait has a bound, and a longer one is a typo
DURATION_FORMS = "250ms, 10s, 2m, 1h or bare seconds (30, 1.5)"
# YAML 1.1 booleans other than true/false (PyYAML misses y/n; the spec has them).
BOOL_TRAPS = re.compile(r"y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF")
TRUE_FALSE = {"true": True, "True": True, "TRUE": True,
              "false": False, "False": False, "FALSE": False}
UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap",
              "timer", "path", "slice", "scope")

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+", re.ASCII)
_DURATION = re.compile(r"(?P<num>[0-9]{1,9}(?:\.[0-9]{1,9})?)(?P<unit>ms|s|m|h)?", re.ASCII)
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_UNIT_HINTS = {"sec": "s", "secs": "s", "seconds": "s", "min": "m", "mins": "m",
               "minutes": "m", "hour": "h", "hours": "h", "msec": "ms"}
_SERVICE = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service", re.ASCII)
_GLOB = re.compile(r"[A-Za-z0-9:_.\\@*?\[\]!-]{1,255}", re.ASCII)
_SUSPENDING = {"SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"}  # the port stays held


def hint(word: str, choices: Iterable[object]) -> str:
    """` (did you mean 'X'?)` for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def non_ascii_digit(text: str) -> str | None:
    for ch in text:
        if ch not in "0123456789" and (ch.isdigit() or unicodedata.decimal(ch, None) is not None):
            return (f"non-ASCII digit {ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, '')});"
                    " write ASCII digits 0-9")
    return None


def number_trap(text: str) -> str | None:
    """Why a number-like `text` is refused: forms YAML 1.1 and 1.2 read differently."""
    if (why := non_ascii_digit(text)) is not None:
        return why
    body = text.lstrip("+-")
    if _SEXAGESIMAL.fullmatch(text):
        value = functools.reduce(lambda n, p: n * 60 + int(p), body.replace("_", "").split(":"), 0)
        return f"'{text}' is a YAML 1.1 base-60 number (it reads as {value})"
    if body[:2].lower() in ("0x", "0o", "0b"):
        return f"'{text}' is a hexadecimal, octal or binary literal; write it in decimal"
    if "_" in text and any(c.isdigit() for c in text):
        return f"'{text}' has underscores (YAML 1.1 drops them, other readers do not)"
    if body != text and body[:1].isdigit():
        return f"'{text}' has a sign; write the plain number"
    if len(body) > 1 and body[0] == "0" and body[1].isdigit():
        return f"'{text}' has a leading zero (YAML 1.1 reads 0700 as octal 448)"
    return None


def whole_number(text: str, low: int, high: int) -> int:
    if (why := number_trap(text)) is not None:
        raise ValueError(why)
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"expected a whole number, got '{text}'")
    if len(text) > 6 or not low <= int(text) <= high:
        raise ValueError(f"{text} is out of range {low}-{high}")
    return int(text)


def duration(text: str) -> float:
    """Seconds from `250ms`, `10s`, `2m`, `1h`, `30` or `1.5` (bare numbers are seconds)."""
    if text.startswith("-"):
        raise ValueError(f"'{text}' is negative; a duration must be greater than zero")
    if (why := number_trap(text)) is not None:
        raise ValueError(why)
    match = _DURATION.fullmatch(text)
    if match is None:
        unit = text.lstrip("0123456789.")
        if text.startswith(".") and _DURATION.fullmatch("0" + text):
            raise ValueError(f"'{text}': write 0{text}")
        if unit in _UNIT_HINTS and text != unit:
            raise ValueError(f"'{text}': write '{_UNIT_HINTS[unit]}' for '{unit}'")
        raise ValueError(f"'{text}' is not a duration; write {DURATION_FORMS}")
    seconds = float(match["num"]) * _SCALE[match["unit"]]
    if seconds <= 0:
        raise ValueError(f"'{text}' is zero; a duration must be greater than zero")
    if seconds > MAX_DURATION:
        raise ValueError(f"'{text}' is longer than one day, the most portguard allows")
    return seconds


def signal_by_name(text: str) -> Signals:
    """`SIGTERM` or `TERM`; numbers are refused, as their meaning differs by architecture."""
    if _DIGITS.fullmatch(text.lstrip("+-")) or non_ascii_digit(text):
        raise ValueError(f"'{text}': signal numbers differ between architectures;"
                         " write the name, e.g. SIGTERM")
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in Signals.__members__:
        raise ValueError(f"unknown signal '{text}'{hint(name.upper(), Signals.__members__)}")
    if name in _SUSPENDING:
        raise ValueError(f"{name} suspends a process, which keeps its port; use e.g. SIGTERM")
    return Signals.__members__[name]


def port_spec(text: str, line: int = 0) -> PortSpec:
    """Parse `[ADDR:]PORT[-PORT][/tcp|udp]`; IPv6 addresses go in brackets."""
    if (why := non_ascii_digit(text)) is not None:
        raise ValueError(why)
    if any(c.isspace() for c in text):
        raise ValueError(f"'{text}' contains whitespace; write e.g. 127.0.0.1:8080/tcp")
    rest, slash, proto = text.rpartition("/")
    if not slash:
        rest, proto = text, "tcp"
    if proto not in ("tcp", "udp"):
        case = " (in lower case)" if proto.lower() in ("tcp", "udp") else ""
        raise ValueError(f"'{text}': unknown protocol '{proto}'; write tcp or udp{case}")
    address, ports = _split_address(rest, text)
    first_text, dash, last_text = ports.partition("-")
    first = _port_number(first_text, text)
    last = _port_number(last_text, text) if dash else first
    if last < first:
        raise ValueError(f"'{text}': range {ports} is reversed; write {last}-{first}")
    if last - first + 1 > MAX_RANGE_PORTS:
        raise ValueError(f"'{text}': range spans {last - first + 1} ports; at most"
                         f" {MAX_RANGE_PORTS} are allowed")
    return PortSpec(first, last, Proto(proto), address, text, line)


def _split_address(rest: str, text: str) -> tuple[str | None, str]:
    """(normalised address or None, the port part) of a spec without its protocol."""
    if rest.startswith("["):
        inside, bracket, after = rest[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise ValueError(f"'{text}': write a bracketed IPv6 address as [::1]:8080")
        if "%" in inside:
            raise ValueError(f"'{text}': zone ids (%eth0) are not supported")
        if _ip(inside, ipaddress.IPv4Address):
            raise ValueError(f"'{text}': brackets are for IPv6; write {inside}{after}")
        if (addr6 := _ip(inside, ipaddress.IPv6Address)) is None:
            raise ValueError(f"'{text}': '{inside}' is not an IPv6 address")
        return addr6, after[1:]
    if ":" not in rest:
        return None, rest
    if rest.count(":") > 1:
        raise ValueError(f"'{text}': IPv6 addresses go in brackets, e.g. [::1]:8080")
    host, _, ports = rest.partition(":")
    if (addr4 := _ip(host, ipaddress.IPv4Address)) is None:
        raise ValueError(f"'{text}': '{host}' is not an IPv4 address (host names are not"
                         " resolved; write an IP address)")
    return addr4, ports


def _ip(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str | None:
    try:
        return str(kind(text))
    except ValueError:
        return None


def _port_number(text: str, spec: str) -> int:
    if (why := number_trap(text)) is not None:
        raise ValueError(f"'{spec}': {why}")
    if not _DIGITS.fullmatch(text):
        what = "a whole number" if re.fullmatch(r"[0-9.]+", text) else "a port number"
        raise ValueError(f"'{spec}': '{text}' is not {what}" if text else f"'{spec}': no port")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"'{spec}': port {text} is out of range 1-65535")
    return int(text)


def mangle_unit(name: str) -> str:
    """Append `.service` to a name without a unit-type suffix, as systemctl does."""
    suffix = name.rpartition(".")[2] if "." in name else ""
    keep = suffix in UNIT_TYPES or any(c in suffix for c in "*?[")  # `foo.*` stays a glob
    return name if keep else f"{name}.service"


def service_name(text: str) -> str:
    """A `.service` unit name, normalised: `web` -> `web.service`, `web@` -> `web@.service`."""
    suffix = text.rpartition(".")[2] if "." in text else ""
    if suffix in UNIT_TYPES and suffix != "service":
        raise ValueError(f"'{text}' is a .{suffix} unit; only .service units are declared")
    if suffix != "service" and difflib.get_close_matches(suffix, ["service"], cutoff=0.7):
        raise ValueError(f"'{text}': unknown unit suffix '.{suffix}' (did you mean '.service'?)")
    name = mangle_unit(text)
    if len(name) > 255 or not _SERVICE.fullmatch(name):
        raise ValueError(f"'{text}' is not a valid unit name (letters, digits, :_.\\- and at"
                         " most one '@'; up to 255 characters)")
    return name


def unit_glob(text: str) -> str:
    """A unit name or fnmatch glob; a bare name gets `.service`, as with systemctl."""
    if not _GLOB.fullmatch(text):
        raise ValueError(f"'{text}' is not a unit name or glob (letters, digits, :_.\\-@"
                         " and *?[]!)")
    return mangle_unit(text)


# -- YAML -------------------------------------------------------------------------------

REFUSED = "tag:portguard,refused"  # a node already reported: readers skip it silently
TAG = "tag:yaml.org,2002:"
_IPV6_UNQUOTED = re.compile(r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]")
_YAML_KINDS = {"int": "a number", "float": "a number", "timestamp": "a date",
               "merge": "a merge key", "value": "a special value"}
Problem = tuple[int, int, str]  # (line, column, message), both 1-based


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader used only to compose nodes; refuses aliases and explicit tags."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.refusals: list[Problem] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):  # never expanded: no alias bombs
            event = self.get_event()  # type: ignore[no-untyped-call]
            self.refusals.append(_at(event.start_mark, f"alias '*{event.anchor}' refused:"
                                     " anchors and aliases are not supported; write it out"))
            return yaml.ScalarNode(REFUSED, "", event.start_mark, event.end_mark)
        tag = getattr(self.peek_event(), "tag", None)  # type: ignore[no-untyped-call]
        node = super().compose_node(parent, index)
        if tag is not None and node is not None:
            shown = "!!" + tag.removeprefix(TAG) if tag.startswith(TAG) else tag
            self.refusals.append(_at(node.start_mark, f"YAML tag '{shown}' refused: remove it"
                                     " (portguard reads plain values; quote a string)"))
            node.tag = REFUSED
        return node


def _at(mark: yaml.Mark, message: str) -> Problem:
    return mark.line + 1, mark.column + 1, message


def compose(text: str, problems: list[Problem]) -> yaml.Node | None:
    """The document's root node, or None with the reason appended to `problems`."""
    try:
        loader = _StrictLoader(text)  # checks every character up front
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - text.rfind("\n", 0, exc.position)
        problems.append((line, col, f"character U+{exc.character:04X} is not allowed"))
        return None
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        line, col, why = _at(exc.problem_mark or exc.context_mark or loader.get_mark(),
                             ": ".join(m for m in (exc.context, exc.problem) if m))
        lines = text.splitlines()
        if line <= len(lines) and _IPV6_UNQUOTED.search(lines[line - 1]):
            why += ' (quote IPv6 port specs: "[::1]:8080")'
        elif "'\\t'" in why:
            why += " (indent with spaces, not tabs)"
        problems.append((line, col, f"YAML syntax error: {why}"))
        return None
    except RecursionError:
        problems.append((loader.line + 1, 1, "nesting too deep"))
        return None
    finally:
        loader.dispose()
        problems.extend(loader.refusals)
    if root is None:
        problems.append((1, 1, "empty config (only comments?); it needs at least"
                         " 'services:' (see config.example.yaml)"))
    return root


def is_null(node: yaml.Node) -> bool:
    """An empty value (`key:` with nothing after it), `~` or `null`, unquoted."""
    return isinstance(node, yaml.ScalarNode) and node.style is None and node.tag == TAG + "null"


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "nothing" if is_null(node) else f"'{node.value}'"


Entries = list[tuple[str, yaml.Node, yaml.Node]]  # (key, key node, value node)


class NodeReader:
    """Typed values from nodes; each problem is recorded, and the value becomes None."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, node: yaml.Node, message: str) -> None:
        self.problems.append(_at(node.start_mark, message))

    def mapping(self, node: yaml.Node, where: str, allowed: Collection[str] | None) -> Entries:
        """A mapping's entries; reports non-mappings, duplicate and unknown keys. An empty
        value is an empty mapping: a section with every key commented out stays valid."""
        if node.tag == REFUSED or is_null(node):
            return []
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{where or 'top level'}: expected a mapping (key: value),"
                             f" got {kind(node)}")
            return []
        seen: dict[str, yaml.Node] = {}
        out: Entries = []
        for key_node, value in node.value:
            key = self.scalar(key_node, "key", "", numbers=False)
            if key is None:
                continue
            if key in seen:  # PyYAML would silently keep the last one
                first = seen[key].start_mark.line + 1
                self.error(key_node, f"duplicate key '{key}' (first at line {first})")
            elif allowed is not None and key not in allowed:
                inside = f" in {where}" if where else ""
                self.error(key_node, f"unknown key '{key}'{inside}{hint(key, allowed)}")
            else:
                out.append((key, key_node, value))
            seen.setdefault(key, key_node)
        return out

    def scalar(self, node: yaml.Node, what: str, expected: str, *,
               numbers: bool = True) -> str | None:
        """A scalar's text, refusing plain values YAML 1.1 reads as something else."""
        if node.tag == REFUSED:
            return None
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what}: expected {expected or 'a string'}, got {kind(node)}")
            return None
        text: str = node.value
        tag, why = node.tag.removeprefix(TAG), ""
        if node.style is None:  # plain: the YAML 1.1 resolver had its say
            if tag == "null":
                why = "missing value"
            elif tag == "bool" or BOOL_TRAPS.fullmatch(text):
                why = f"'{text}' is a YAML 1.1 boolean (quote it if you mean the word)"
            elif tag != "str" and (not numbers or tag not in ("int", "float")):
                what_yaml = _YAML_KINDS.get(tag, "a " + tag)
                why = f"'{text}' is read by YAML as {what_yaml}; quote it if you mean the text"
        elif text == "":
            why = "empty value"
        if not why and any(unicodedata.category(c) == "Cc" for c in text):
            why = "control characters are not allowed"
        if why:
            self.error(node, f"{what}: {why}" + (f"; expected {expected}" if expected else ""))
            return None
        return text

    def parsed(self, node: yaml.Node, what: str, parse: Callable[[str], T],
               expected: str, *, numbers: bool = True) -> T | None:
        text = self.scalar(node, what, expected, numbers=numbers)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return None

    def choice(self, node: yaml.Node, what: str, options: type[E]) -> E | None:
        names = [str(member.value) for member in options]
        text = self.scalar(node, what, "one of " + ", ".join(names), numbers=False)
        if text is None:
            return None
        if text not in names:
            self.error(node, f"{what}: unknown value '{text}'{hint(text, names)};"
                             f" expected one of {', '.join(names)}")
            return None
        return options(text)

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        plain = isinstance(node, yaml.ScalarNode) and node.style is None
        if plain and node.value in TRUE_FALSE:
            return TRUE_FALSE[node.value]
        if plain and BOOL_TRAPS.fullmatch(node.value):
            self.error(node, f"{what}: '{node.value}' is a YAML 1.1 boolean that YAML 1.2"
                             " reads as a string; write true or false")
            return None
        text = self.scalar(node, what, "true or false")
        if text is not None:
            quotes = " without quotes" if text in TRUE_FALSE else ""
            self.error(node, f"{what}: expected true or false{quotes}, got '{text}'")
        return None

    def strings(self, node: yaml.Node, what: str, check: Callable[[str], str]) -> tuple[str, ...]:
        """A list of strings, each passed through `check`; repeats are dropped."""
        if not isinstance(node, yaml.SequenceNode):
            if node.tag != REFUSED and not is_null(node):  # empty: an empty list
                self.error(node, f'{what}: expected a list such as ["a", "b"], got {kind(node)}')
            return ()
        found = (self.parsed(item, what, check, "a string", numbers=False) for item in node.value)
        return tuple(dict.fromkeys(s for s in found if s is not None))
