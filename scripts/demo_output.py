"""How `make demo` prints: colour, wrapping, shell lines, tables, outcomes (stdlib only)."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Sequence


class Style:
    """ANSI colour when stdout is a terminal, plain text otherwise."""

    def __init__(self) -> None:
        self.on = (sys.stdout.isatty() and not os.environ.get("NO_COLOR")
                   and os.environ.get("TERM") != "dumb")
        try:
            columns = os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):
            columns = 100
        self.width = max(60, min(columns, 100))
        self.bold, self.dim = self._sgr("1"), self._sgr("2")
        self.green, self.red, self.yellow, self.cyan = map(self._sgr, ("32", "31", "33", "36"))

    def _sgr(self, code: str) -> Callable[[str], str]:
        return lambda text: f"\033[{code}m{text}\033[0m" if self.on else text


S = Style()
OK_MARK, BAD_MARK = "✓", "✗"


def out(text: str = "") -> None:
    print(text, flush=True)


def para(text: str, indent: str = "") -> None:
    """A paragraph, wrapped to the terminal."""
    out(textwrap.fill(" ".join(text.split()), S.width, initial_indent=indent,
                      subsequent_indent=indent, break_on_hyphens=False))


def shell(command: str, comment: str = "") -> None:
    out(f"  {S.cyan('$ ' + command)}" + (f"   {S.dim('# ' + comment)}" if comment else ""))


def note(text: str) -> None:
    out(f"  {S.dim('# ' + text)}")


def block(text: str, indent: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        out(f"{indent}{line}")


def labelled(label: str, text: str, styled: str | None = None) -> None:
    """`  label text`, wrapped with a hanging indent under the text (long MESSAGEs);
    `styled`: the label as printed (colour codes do not count towards the width)."""
    lead = f"  {label} "
    lines = textwrap.wrap(text, S.width, initial_indent=lead,
                          subsequent_indent=" " * len(lead), break_on_hyphens=False)
    if styled is not None and lines:
        lines[0] = f"  {styled} " + lines[0][len(lead):]
    for line in lines:
        out(line)


def table(rows: Sequence[Sequence[str]], indent: str = "    ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        out(indent + (S.dim(line) if n == 0 else line))


def mark(ok: bool) -> str:
    return S.green(OK_MARK) if ok else S.red(BAD_MARK)


def outcome(text: str, ok: bool | None = None) -> None:
    if ok is None:
        labelled("outcome:", text, S.bold("outcome:"))
    else:
        labelled(f"outcome: {OK_MARK if ok else BAD_MARK}", text,
                 f"{S.bold('outcome:')} {mark(ok)}")
