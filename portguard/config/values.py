"""The config's value grammars and the strict YAML layer under portguard.config.schema.

Values are read from composed YAML nodes (which keep their positions), never from objects
YAML 1.1's resolver built: `no`, `0700`, `22:22`, `8_080` mean different things to different
YAML readers, so they are refused, not guessed. Grammars are ASCII (`int()` would take `٨٠`);
each raises ValueError with what the user reads after `FILE:LINE:COL:`.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from signal import Signals
from typing import TypeVar

from portguard.config import MAX_RANGE_PORTS
from portguard.config.unitnames import UNIT_TYPES, mangle_unit
from portguard.model import PortSpec, Proto

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

MAX_DURATION = 86400.0  # one day: every wait has a bound, and a longer one is a typo
DURATION_FORMS = "250ms, 10s, 2m, 1h or bare seconds (30, 1.5)"
# YAML 1.1 booleans other than true/false (PyYAML misses y/n; the spec has them).
BOOL_TRAPS = re.compile(r"y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF")
TRUE_FALSE = {"true": True, "True": True, "TRUE": True,
              "false": False, "False": False, "FALSE": False}

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+", re.ASCII)
_DURATION = re.compile(r"(?P<num>[0-9]{1,9}(?:\.[0-9]{1,9})?)(?P<unit>ms|s|m|h)?", re.ASCII)
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_UNIT_HINTS = {"sec": "s", "secs": "s", "seconds": "s", "min": "m", "mins": "m",
               "minutes": "m", "hour": "h", "hours": "h", "msec": "ms"}
_SERVICE = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service", re.ASCII)
_GLOB = re.compile(r"[A-Za-z0-9:_.\\@*?\[\]!-]{1,255}", re.ASCII)
_SUSPENDING = {"SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"}  # the port stays held


# difflib, unicodedata and ipaddress are imported where needed: `who 8080` parses its
# argument with port_spec() and must not pay for them (see portguard/model.py).


def hint(word: str, choices: Iterable[object]) -> str:
    """` (did you mean 'X'?)` for the closest of `choices`, or ''."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def non_ascii_digit(text: str) -> str | None:
    for ch in text:
        if ch.isascii():
            continue
        import unicodedata

        if ch.isdigit() or unicodedata.decimal(ch, None) is not None:
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
        if _ip(inside, 4):
            raise ValueError(f"'{text}': brackets are for IPv6; write {inside}{after}")
        if (addr6 := _ip(inside, 6)) is None:
            raise ValueError(f"'{text}': '{inside}' is not an IPv6 address")
        return addr6, after[1:]
    if ":" not in rest:
        return None, rest
    if rest.count(":") > 1:
        raise ValueError(f"'{text}': IPv6 addresses go in brackets, e.g. [::1]:8080")
    host, _, ports = rest.partition(":")
    if (addr4 := _ip(host, 4)) is None:
        raise ValueError(f"'{text}': '{host}' is not an IPv4 address (host names are not"
                         " resolved; write an IP address)")
    return addr4, ports


def _ip(text: str, version: int) -> str | None:
    """The address normalised (`::1`, `127.0.0.1`), or None if it is not one of `version`."""
    import ipaddress

    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
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


def service_name(text: str) -> str:
    """A `.service` unit name, normalised: `web` -> `web.service`, `web@` -> `web@.service`."""
    suffix = text.rpartition(".")[2] if "." in text else ""
    if suffix in UNIT_TYPES and suffix != "service":
        raise ValueError(f"'{text}' is a .{suffix} unit; only .service units are declared")
    if suffix != "service" and hint(suffix, ["service"]):
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
