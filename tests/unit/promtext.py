"""An independent, strict parser of the Prometheus text format (0.0.4), written from its
specification (https://prometheus.io/docs/instrumenting/exposition_formats/) and stricter
than node_exporter's own on the points that make it reject a file: a family's lines not
together, HELP/TYPE twice or after its samples, a duplicate series, a bad escape, a
missing final newline. Used by test_metrics.py."""

from __future__ import annotations

import re
from typing import NamedTuple

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
VALUE = re.compile(r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


class Family(NamedTuple):
    help: str | None
    type: str | None
    samples: list[tuple[str, dict[str, str], float]]


class FormatError(AssertionError):
    pass


def _unescape(text: str, allowed: dict[str, str], what: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in allowed:
                raise FormatError(f"bad escape in {what}: {text!r}")
            out.append(allowed[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _labels(text: str, line: str) -> tuple[dict[str, str], str]:
    """Parse `{a="x",b="y"}` at the start of text; return labels and the rest."""
    try:
        return _label_pairs(text, line)
    except IndexError:
        raise FormatError(f"labels cut short in {line!r}") from None


def _label_pairs(text: str, line: str) -> tuple[dict[str, str], str]:
    labels: dict[str, str] = {}
    i = 1
    while True:
        if text[i] == "}":
            return labels, text[i + 1:]
        m = LABEL_NAME.match(text, i)
        if not m or text[m.end():m.end() + 2] != '="':
            raise FormatError(f"bad label in {line!r}")
        name = m.group()
        j = m.end() + 2
        k = j
        while True:  # the closing quote: one not escaped
            if k >= len(text):
                raise FormatError(f"unterminated label value in {line!r}")
            if text[k] == "\\":
                k += 2
                continue
            if text[k] == '"':
                break
            k += 1
        if name in labels or name.startswith("__"):
            raise FormatError(f"label {name!r} repeated or reserved in {line!r}")
        labels[name] = _unescape(text[j:k], {"\\": "\\", '"': '"', "n": "\n"}, "label value")
        i = k + 1
        if text[i] == ",":
            i += 1
        elif text[i] != "}":
            raise FormatError(f"expected , or }} in {line!r}")


class _Parser:
    """State of one strict parse: families so far, series seen, whose lines we are in."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.series: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        self.current: str | None = None
        self.closed: set[str] = set()  # families whose lines have ended

    def family_of(self, sample_name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count"):
            base = sample_name.removesuffix(suffix)
            fam = self.families.get(base)
            if base != sample_name and fam is not None and fam.type in ("histogram", "summary"):
                return base
        return sample_name

    def enter(self, name: str) -> Family:
        if name != self.current:
            if name in self.closed or name in self.families:
                raise FormatError(f"lines of {name} are not together")
            if self.current is not None:
                self.closed.add(self.current)
            self.current = name
        return self.families.setdefault(name, Family(None, None, []))

    def comment(self, line: str) -> None:
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
            return  # any other comment is allowed
        name = parts[2]
        if not NAME.fullmatch(name):
            raise FormatError(f"bad metric name in {line!r}")
        fam = self.enter(name)
        if fam.samples:
            raise FormatError(f"{parts[1]} after samples of {name}")
        rest = parts[3] if len(parts) == 4 else ""
        if parts[1] == "HELP":
            if fam.help is not None:
                raise FormatError(f"second HELP for {name}")
            self.families[name] = fam._replace(
                help=_unescape(rest, {"\\": "\\", "n": "\n"}, "HELP"))
        else:
            if fam.type is not None or rest not in TYPES:
                raise FormatError(f"second or bad TYPE for {name}: {line!r}")
            self.families[name] = fam._replace(type=rest)

    def sample(self, line: str) -> None:
        m = NAME.match(line)
        if not m:
            raise FormatError(f"bad sample line {line!r}")
        name, rest = m.group(), line[m.end():]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            labels, rest = _labels(rest, line)
        fields = rest.split(" ")
        if len(fields) != 2 or fields[0] != "" or not VALUE.fullmatch(fields[1]):
            raise FormatError(f"bad value (or a timestamp, which node_exporter refuses) in"
                              f" {line!r}")
        fam = self.enter(self.family_of(name))
        key = (name, frozenset(labels.items()))
        if key in self.series:
            raise FormatError(f"duplicate series {line!r}")
        self.series.add(key)
        fam.samples.append((name, labels, float(fields[1])))


def strict_parse(text: str) -> dict[str, Family]:
    if not text.endswith("\n"):
        raise FormatError("the text does not end with a newline")
    parser = _Parser()
    for line in text[:-1].split("\n"):
        if not line:
            raise FormatError("empty line")
        if line.startswith("#"):
            parser.comment(line)
        else:
            parser.sample(line)
    for name, fam in parser.families.items():
        if fam.help is None or fam.type is None:
            raise FormatError(f"{name} lacks HELP or TYPE")
    return parser.families
