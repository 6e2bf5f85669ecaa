"""The column layout of `who`'s table, apart from `tables` so that `who` on free ports
can print it without importing what naming holders takes (the observer)."""

from __future__ import annotations

from collections.abc import Sequence

from portguard.text import shown

WHO_HEADER = ("PORT", "STATE", "ADDRESS", "PID", "USER", "UNIT", "COMMAND")


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Each row's cells padded to their column's widest, two spaces apart, no trailing
    blanks. A cell is what others may control (argv, names): each is `shown`."""
    rows = [[shown(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def free_row(name: str, width: int) -> tuple[str, ...]:
    """A port nothing holds: its name, "free", and empty cells."""
    return (name, "free", *[""] * (width - 2))
