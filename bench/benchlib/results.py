"""bench/RESULTS.md is shared: each script rewrites only its own `## ` sections.

who_bench.py writes the head of the file and its scenario sections, keeping the
hand-written notes block and every section it does not produce; preflight_bench.py and
soak.py replace their one section in place (or append it); daemon_cost.py appends an
entry under its section. A `## ` line inside a code block is not a heading.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

NOTES_BEGIN, NOTES_END = "<!-- notes: kept across runs -->", "<!-- end of notes -->"


def headings(text: str) -> list[tuple[int, str]]:
    """(offset, line) of each `## ` heading of `text`, code blocks skipped."""
    found = []
    fence = False
    pos = 0
    for line in text.split("\n"):
        offset, pos = pos, pos + len(line) + 1
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("## "):
            found.append((offset, line))
    return found


def replace_section(text: str, section: str, heading: str) -> str:
    """`text` with its `heading` section (up to the next `## ` heading outside a code
    block, or EOF) replaced by `section`, or with `section` appended at the end; every
    other character is kept as it was."""
    found = headings(text)
    start = next((i for i, (_, line) in enumerate(found) if line.rstrip("\r") == heading),
                 None)
    if start is None:
        if not text:
            return section
        sep = "" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
        return text + sep + section
    begin = found[start][0]
    if start + 1 == len(found):
        return text[:begin] + section
    return text[:begin] + section + "\n" + text[found[start + 1][0]:]


def write_section(path: Path, section: str, heading: str) -> None:
    """Replace the `heading` section of `path` atomically (a reader never sees half a
    file), keeping the file's mode."""
    old = path.read_bytes().decode("utf-8", "surrogateescape") if path.exists() else ""
    new = replace_section(old, section, heading).encode("utf-8", "surrogateescape")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_entry(path: Path, heading: str, intro: str, entry: str) -> None:
    """Append `entry` at the very end of `path`, under `heading` (with `intro`) unless
    that is already the file's last `## ` heading. Existing text is never changed."""
    text = path.read_text() if path.exists() else ""
    last = re.findall(r"^## .*$", text, re.M)
    out = "" if not text or text.endswith("\n") else "\n"
    if not last or last[-1] != heading:
        out += f"\n{heading}\n\n{intro}\n"
    out += "\n" + entry
    with path.open("a") as f:
        f.write(out)


def kept_notes(path: Path | None) -> str:
    """The hand-written notes block of an earlier report at `path` (markers included)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        text = path.read_text() if path is not None else ""
        start, end = text.index(NOTES_BEGIN), text.index(NOTES_END) + len(NOTES_END)
        return text[start:end]
    return ""


def other_sections(path: Path | None, own: re.Pattern[str]) -> str:
    """The `## ` sections of an earlier report whose heading `own` does not match (the
    other scripts'), verbatim and in order, the notes block left out."""
    with contextlib.suppress(OSError, TypeError):
        text = path.read_text() if path is not None else ""
        start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
        if start >= 0 and end > start:
            text = text[:start] + text[end + len(NOTES_END):]
        found = headings(text)
        bounds = [offset for offset, _ in found] + [len(text)]
        kept = [text[bounds[i]:bounds[i + 1]].rstrip() for i, (_, line) in enumerate(found)
                if not own.match(line)]
        return "\n\n".join(kept)
    return ""
