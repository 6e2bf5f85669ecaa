"""Whether a root-run portguard may trust a file: sshd's StrictModes, in one place.

The file and every directory above it, up to `/`, must be owned by root and not writable
by group or others. Both the path as given and its resolved target are walked, so a
symlink cannot lead around the check. Only `os` and `stat`: the fast path re-checks this
on every guarded start.
"""

from __future__ import annotations

import os
import stat


def ancestors(path: str) -> list[str]:
    """Every directory above `path`, lexically and through its symlinks, nearest first."""
    seen: dict[str, None] = {}
    for start in (os.path.abspath(path), os.path.realpath(path)):
        current = start
        while True:
            parent = os.path.dirname(current)
            if parent == current:
                break
            seen[parent] = None
            current = parent
    return list(seen)


def unsafe(st: os.stat_result) -> str:
    """Why a file or directory with this stat is not root's alone ("" when it is)."""
    reasons = [f"is owned by uid {st.st_uid}, not root"] if st.st_uid != 0 else []
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        reasons.append(f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
    return " and ".join(reasons)


def trusted(path: str, file_stat: os.stat_result) -> bool:
    """True when `path` (already opened, `file_stat` from fstat) and its directories are
    root's alone."""
    if unsafe(file_stat):
        return False
    try:
        return not any(unsafe(os.stat(d)) for d in ancestors(path))
    except OSError:
        return False
