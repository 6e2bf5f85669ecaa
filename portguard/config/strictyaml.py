"""The strict YAML reader behind the config: nodes with line and column, no surprises.

Built on `yaml.SafeLoader`, used only to compose nodes: aliases and explicit tags are
refused (no alias bombs, no `!!python/...`), and every scalar is read as written so the
YAML 1.1 traps (yes/no, 0700, 22:22, ...) are reported instead of converted.

Kept apart from `values` (the scalar parsers) because importing yaml costs ~16 ms,
and `who` parses port arguments without reading any config.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Collection
from typing import TypeVar

import yaml

from portguard.config.values import BOOL_TRAPS, TRUE_FALSE, hint
from portguard.text import shown as escaped

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

# -- YAML -------------------------------------------------------------------------------

REFUSED = "tag:portguard,refused"  # a node already reported: readers skip it silently
TAG = "tag:yaml.org,2002:"
_IPV6_UNQUOTED = re.compile(r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]")
# Line breaks to YAML but not to editors, grep -n or sed: text after one in a comment
# would be read as config, and every line number after it would be off.
_HIDDEN_BREAK = re.compile("\r(?!\n)|[\x85\u2028\u2029]")
MAX_SCALAR = 4096  # characters: no value needs more (PATH_MAX); keeps messages bounded
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
    if (hidden := _HIDDEN_BREAK.search(text)) is not None:
        at = hidden.start()
        problems.append((text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at),
                         f"character U+{ord(hidden.group()):04X} is a line break to YAML but"
                         " not to editors; remove it (end lines with LF or CRLF)"))
        return None
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
    return "nothing" if is_null(node) else shown(node.value)


def shown(text: str, limit: int = 60) -> str:
    """`text` quoted for a one-line message: at most `limit` characters of it, with line
    breaks, control characters and escape sequences escaped (it came from the file)."""
    body = escaped(text[:limit])
    more = f" (and {len(text) - limit} more characters)" if len(text) > limit else ""
    return f"'{body}'{more}"


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
        if not why and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
            why = "control characters are not allowed"
        if not why and len(text) > MAX_SCALAR:
            why = f"{len(text)} characters long; no value needs more than {MAX_SCALAR}"
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
