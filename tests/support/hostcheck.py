"""The host as the test run found it: its installed packages and enabled units.

`make test` must leave both as they were (the daemons run in Debian roots of their own,
tests/support/roots.py). tests/conftest.py takes a `snapshot()` when the session starts and
`compare()`s at its end: any package installed, removed or upgraded, or any unit enabled or
disabled meanwhile (a symlink under /etc/systemd/{system,user}, which is what `systemctl
enable` and a package's postinst write) fails the run, naming what changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NamedTuple

UNIT_DIRS = ("/etc/systemd/system", "/etc/systemd/user")


class Snapshot(NamedTuple):
    packages: frozenset[str]  # "name version status"
    links: frozenset[str]  # "path -> target" of every symlink under UNIT_DIRS


def packages() -> frozenset[str]:
    if shutil.which("dpkg-query") is None:
        return frozenset()
    out = subprocess.run(["dpkg-query", "-W", "-f", "${binary:Package} ${Version} "
                          "${db:Status-Abbrev}\n"], capture_output=True, text=True,
                         check=False, timeout=60).stdout
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


def links(dirs: tuple[str, ...] = UNIT_DIRS) -> frozenset[str]:
    found = set()
    for top in dirs:
        for path, subdirs, files in os.walk(top):
            for name in subdirs + files:
                full = os.path.join(path, name)
                if os.path.islink(full):
                    found.add(f"{full} -> {os.readlink(full)}")
    return frozenset(found)


def snapshot(dirs: tuple[str, ...] = UNIT_DIRS) -> Snapshot:
    return Snapshot(packages(), links(dirs))


def compare(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed, one line each ("" when nothing did)."""
    out = []
    for what, old, new in (("package", before.packages, after.packages),
                           ("unit link", before.links, after.links)):
        out += [f"{what} gone: {x}" for x in sorted(old - new)]
        out += [f"{what} new: {x}" for x in sorted(new - old)]
    return out
