"""Reading what container runtimes write, where their owners may write it.

A rootless store lives under its user's home and a conmon's `-b DIR` names any directory
its owner likes, so portguard (root) reads those files as it would an attacker's (docs/
security.md, "Hostile local users"): never through a symlink (`O_NOFOLLOW`), never waiting
on a FIFO (`O_NONBLOCK`), a regular file only, owned by the uid that owns the store, at
most `MAX_BYTES`; and a store under a user's control is read within `TIME_BOUND` seconds
(a FUSE home can stall any read), from a thread the caller does not wait for beyond it.
Every container module reads through here; anything refused reads as "nothing known".
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_BYTES = 8 << 20  # containers.json of a few thousand containers; config.v2.json ~10 kB
MAX_ENTRIES = 4096  # a store's top directory holds a handful (one per storage driver)
TIME_BOUND = 1.0  # seconds for everything read from one user-owned store
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_stalled: set[str] = set()  # stores that once outlived the bound: not read again


def read_owned(path: str, owner: int, limit: int = MAX_BYTES) -> str | None:
    """The text of `path` if it is a regular file owned by `owner`, reached without a
    symlink at its last component, at most `limit` bytes; None for anything else."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError:
        return None  # ELOOP for a symlink, ENOENT, EACCES...
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_size > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow after fstat: never past the cap
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return None
        return b"".join(chunks).decode("utf-8", errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def list_owned(path: str, owner: int) -> list[str]:
    """The names in directory `path` (not a symlink, owned by `owner`), at most
    `MAX_ENTRIES` of them, sorted; [] for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if os.fstat(fd).st_uid != owner:
            return []
        with os.scandir(fd) as entries:
            names = []
            for entry in entries:
                names.append(entry.name)
                if len(names) >= MAX_ENTRIES:
                    break
        return sorted(names)
    except OSError:
        return []
    finally:
        os.close(fd)


def bounded(key: str, read: Callable[[], T], default: T,
            seconds: float = TIME_BOUND) -> T:
    """`read()` given at most `seconds`, else `default`; a `key` (a store) that once
    outlived the bound is not read again by this process (its thread may hang on)."""
    if key in _stalled:
        return default
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(read()), daemon=True,
                              name="portguard-store-read")
    worker.start()
    worker.join(seconds)
    if worker.is_alive() or not box:
        _stalled.add(key)
        return default
    return box[0]


def cgroup_owner(cgroup: str, mount: str = "/sys/fs/cgroup") -> int | None:
    """The uid that made cgroup `cgroup` (a path as /proc/PID/cgroup spells it): root for
    what systemd's system manager and root's runtimes make, the user for a directory in
    its own delegated subtree. None when it cannot be seen."""
    try:
        return os.lstat(f"{mount}{cgroup}").st_uid
    except OSError:
        return None
