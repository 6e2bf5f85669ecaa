"""A fake /proc and cgroup2 tree for portguard.observe.procs.processes, built in a test's tmp_path.

The fake /proc has what the kernel's has for each pid: `stat` (with the real field
layout, neighbours of the fields we read given distinct values so an off-by-one shows),
`status`, `cmdline` (NUL-separated), `cgroup`, `exe` and `fd/N` symlinks such as
`socket:[12345]`, and `ns/pid`.

Reading another user's /proc/PID/fd needs CAP_SYS_PTRACE; root (which runs these tests
here) bypasses file modes, so "unreadable" is simulated at os.listdir, the call that
fails for real. The same wrapper (ListdirSpy) records which fd tables were listed: that
is how the owner search's rings are checked, against the cost they exist to avoid.

The fixtures built from these (proc, spy, cgroups) are in conftest.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from portguard.model import Proto, Socket

NOBODY = 65534


class FakeProc:
    """A /proc directory with the files portguard reads, one fake process at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)

    def add(self, pid: int, *, comm: str = "python3", ppid: int = 1, start: int = 5000,
            uid: int = 0, ruid: int | None = None, cmdline: Sequence[str] = ("python3",),
            cgroup: str = "0::/system.slice/x.service\n", exe: str = "/usr/bin/python3",
            sockets: dict[int, int] | None = None, owner: int | None = None) -> Path:
        """`sockets` maps fd -> socket inode; `owner` chowns /proc/PID (needs root)."""
        d = self.root / str(pid)
        d.mkdir()
        self.write_stat(pid, comm=comm, ppid=ppid, start=start)
        r = uid if ruid is None else ruid
        (d / "status").write_text(
            f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\n"
            f"PPid:\t{ppid}\nUid:\t{r}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
        (d / "cgroup").write_text(cgroup)
        os.symlink(exe, d / "exe")
        (d / "ns").mkdir()
        (d / "ns" / "pid").write_text("")
        (d / "fd").mkdir()
        os.symlink("/dev/null", d / "fd" / "0")
        os.symlink("pipe:[777]", d / "fd" / "1")
        for fd, inode in (sockets or {}).items():
            os.symlink(f"socket:[{inode}]", d / "fd" / str(fd))
        if owner is not None:
            os.chown(d, owner, -1)
        return d

    def write_stat(self, pid: int, *, comm: str, ppid: int, start: int) -> None:
        # Fields 1-52 as proc(5) numbers them; field N's value is N*1000 unless it is
        # one we read (4 ppid, 22 starttime), so reading a neighbour gives a wrong answer.
        rest = [str(ppid if n == 4 else start if n == 22 else n * 1000) for n in range(4, 53)]
        (self.root / str(pid) / "stat").write_text(f"{pid} ({comm}) S {' '.join(rest)}\n")


class ListdirSpy:
    """Records every os.listdir under the fake /proc; refuses the fd dirs in `deny`."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.listed: list[str] = []
        self.deny: set[int] = set()

    def fd_tables(self) -> list[int]:
        """pids whose /proc/PID/fd was listed, in order."""
        return [int(p.split("/")[-2]) for p in self.listed if p.endswith("/fd")]

    def proc_listings(self) -> int:
        """How often /proc itself was listed (every pid enumerated)."""
        return sum(1 for p in self.listed if p == self.root)



def tcp(inode: int, port: int = 8080, *, uid: int = 0, cgroup_id: int | None = None,
        state: str = "LISTEN") -> Socket:
    return Socket(Proto.TCP, int(socket.AF_INET), state, "0.0.0.0", port, "0.0.0.0", 0, uid,
                  inode, None, cgroup_id)


def cg_id(path: Path) -> int:
    return os.stat(path).st_ino  # what sock_diag reports as the socket's cgroup id
