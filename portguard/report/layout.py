"""The column layout of `who`'s table, apart from `tables` so that `who` on free ports
can print it without importing what naming holders takes (shlex, the observer)."""

from __future__ import annotations

from collections.abc import Sequence

WHO_HEADER = ("PORT", "STATE", "ADDRESS", "PID", "USER", "UNIT", "COMMAND")
# What shlex.quote leaves bare (its `[^\w@%+=:,./-]`, ASCII): shlex itself imports `re`.
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "_@%+=:,./-")


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Each row's cells padded to their column's widest, two spaces apart, no trailing
    blanks."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def shell_join(words: Sequence[str]) -> str:
    """shlex.join(words): a command line a person can paste back into a shell."""
    return " ".join(_shell_word(w) for w in words)


def _shell_word(word: str) -> str:
    if not word:
        return "''"
    if all(c in _SHELL_SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def free_row(name: str, width: int) -> tuple[str, ...]:
    """A port nothing holds: its name, "free", and empty cells."""
    return (name, "free", *[""] * (width - 2))
