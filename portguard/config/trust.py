"""Whether a root-run portguard may trust a file: sshd's StrictModes, in one place.

The file and every directory above it, up to `/`, must be owned by root and not writable
by group or others. Both the path as given and its resolved target are walked, so a
symlink cannot lead around the check. Only `os` and `stat`: the fast path re-checks this
on every guarded start.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


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


def root_only(path: str) -> str:
    """Why `path` (a program or package root will run) is not root's alone; "" when it
    is. The path's target and every directory above the path and its target must be
    root's and not group/other-writable; a sticky directory of root's (/tmp) passes, since
    only an entry's owner may replace what lies in it, and that entry is checked too."""
    try:
        if why := unsafe(os.stat(path)):
            return f"{path} {why}"
        for directory in ancestors(path):
            st = os.stat(directory)
            sticky = st.st_uid == 0 and st.st_mode & stat.S_ISVTX
            if (why := unsafe(st)) and not sticky:
                return f"{path}: directory {directory} {why}"
    except OSError as exc:
        return f"{path}: cannot check it: {exc.strerror}"
    return ""


def read_own(path: str, limit: int) -> bytes:
    """Our own (root's) 0600 regular file's bytes, never through a symlink; else OSError.
    What portguard wrote for itself as root (the compiled config, learned profiles) is
    read back only so."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if st.st_uid != os.geteuid() or stat.S_IMODE(mode) != 0o600 or not stat.S_ISREG(mode):
            raise PermissionError(f"{path}: not root's own file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def untrusted_code(command: Sequence[str], package_dir: str,
                   search_path: Sequence[str]) -> list[str]:
    """Why root must not run `command` (install's `ExecStartPre=+`, on every start): each
    program in it, the package and every file in it, and each directory Python imports
    from must be root's alone (`root_only`): whoever can write one runs code as root."""
    paths = [w.partition("=")[2] if w.startswith("PYTHONPATH=") else w
             for w in command if w.startswith(("/", "PYTHONPATH="))]
    paths.append(package_dir)
    for top, dirs, names in os.walk(package_dir):
        paths += [os.path.join(top, n) for n in (*dirs, *names)]
    paths += [d for d in search_path if d and os.path.isdir(d)]
    return [why for why in map(root_only, dict.fromkeys(paths)) if why]
