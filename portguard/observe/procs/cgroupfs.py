"""The cgroup v2 filesystem: a cgroup id's member pids, and units with live processes.

sock_diag names the cgroup a socket was created in by its id (the cgroup directory's
inode); `CgroupTree` turns that into pids for the owner search. `populated_cgroups` tells
preflight that a twin unit is running or starting without D-Bus. Only `os`: preflight's
fast path imports this module.
"""

from __future__ import annotations

import os


class CgroupTree:
    """Maps a cgroup id (sock_diag's INET_DIAG_CGROUP_ID) to the cgroup's member pids."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else cgroup2_mount()

    def path_of(self, cgroup_id: int) -> str | None:
        """Directory of the cgroup whose inode is `cgroup_id`, or None."""
        if not self.root:
            return None
        try:
            if os.stat(self.root).st_ino == cgroup_id:
                return self.root
        except OSError:
            return None
        stack = [self.root]
        while stack:
            top = stack.pop()
            try:
                entries = os.scandir(top)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    if entry.inode() == cgroup_id:  # d_ino from readdir: no stat needed
                        return entry.path
                    stack.append(entry.path)
        return None

    def pids(self, cgroup_id: int) -> list[int]:
        """Members of the cgroup and of its children (a unit's sub-cgroups)."""
        path = self.path_of(cgroup_id)
        return [] if path is None else pids_under(path)


def pids_under(path: str) -> list[int]:
    """Members of the cgroup directory `path` and of its children."""
    out: list[int] = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                continue
    return out


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the unified (v2) cgroup hierarchy is mounted: /sys/fs/cgroup or .../unified."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.startswith("cgroup2 "):
                    return left.split()[4]
    except OSError:
        pass
    return ""


def populated_cgroups(name_glob: str, root: str | None = None) -> list[str]:
    """Names of cgroups (units) matching `name_glob` that have live processes.

    Lets preflight see that a twin instance is running or starting without asking
    systemd over D-Bus: an active or activating unit always has a populated cgroup.
    """
    base = root if root is not None else cgroup2_mount()
    if not base:
        return []
    found = []
    for dirpath, dirs, _files in os.walk(base):
        for name in dirs:
            if glob_match(name, name_glob) and _populated(os.path.join(dirpath, name)):
                found.append(name)
    return sorted(set(found))


def glob_match(name: str, glob: str) -> bool:
    """fnmatch.fnmatchcase(name, glob), without importing `re` (~7 ms) for a glob whose
    only wildcard is `*` (a template's `web@*.service`): its literal pieces, in order."""
    if "?" in glob or "[" in glob:
        import fnmatch
        return fnmatch.fnmatchcase(name, glob)
    if "*" not in glob:
        return name == glob
    first, *middle, last = glob.split("*")
    if len(name) < len(first) + len(last) or not (name.startswith(first)
                                                  and name.endswith(last)):
        return False
    at, end = len(first), len(name) - len(last)
    for piece in middle:
        found = name.find(piece, at, end)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return False
