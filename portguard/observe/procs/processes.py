"""Process facts from /proc: the only module that reads /proc/PID or uses psutil.

Holders are read from /proc directly: importing psutil costs ~20 ms, more than the rest of
a preflight on a free port. psutil serves where that cost is paid once, the daemon's
account of itself (`own_usage`), and is imported there only.

Finding which process holds a socket means reading `/proc/PID/fd/*` links, ~4 us per fd
in Python: on a loaded host that is hundreds of milliseconds if done for every process.
So owners are searched in rings, cheapest first, and the full scan runs only for the
sockets still unresolved:

1. pids the caller already suspects (the service's own unit, its twins);
2. the members of the cgroup the kernel says the socket was created in (sock_diag names
   its cgroup id, which is the inode of the cgroup v2 directory);
3. the processes running as the socket's owner uid;
4. everything else.

Ring 2 finds prefork workers too: they share their master's unit cgroup. The kernel
records the cgroup the socket was *created* in, so a socket systemd created for socket
activation points at PID 1's side; those always get the full scan.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from portguard.model import Process, Socket, Usage
from portguard.observe.procs import programs
from portguard.observe.procs.cgroupfs import CgroupTree
from portguard.records import NamedTuple

PROC = "/proc"
# The owner search reads fd tables any user can fill (a process may hold ~1M fds, and
# fork many of them): bounded in fds read and in time. What it did not reach stays
# "holder unknown", which classify treats as foreign: nothing is touched.
SCAN_FDS = 4 << 20
SCAN_SECONDS = 5.0


class ProcessGone(Exception):
    """The process exited (or its pid was reused) while we were reading it."""


def own_usage() -> Usage | None:
    """The calling process's memory, CPU time, open fds and start time (through psutil).

    None where /proc cannot tell (a hidden /proc/stat, say): metrics then go without them.
    """
    import psutil  # not at module level: see the module docstring

    me = psutil.Process()
    try:
        with me.oneshot():
            cpu = me.cpu_times()
            return Usage(me.memory_info().rss, cpu.user + cpu.system, me.num_fds(),
                         me.create_time())
    except (psutil.Error, OSError):
        return None


class Owners(NamedTuple):
    """Result of an owner search: who holds each socket inode, and what stayed unknown."""

    by_inode: Mapping[int, tuple[Process, ...]]
    unreadable: int  # processes whose fds we could not read (not root, hidepid, ...)
    full_scan: bool  # whether ring 4 had to run
    cut: bool = False  # the search hit SCAN_FDS or SCAN_SECONDS before it was done


def start_time(pid: int, proc: str = PROC) -> int:
    """The process's start time in clock ticks after boot (stat field 22).

    Together with the pid it names one process for its whole life: a reused pid gets a
    new start time. Raises ProcessGone if there is no such process.
    """
    return _stat_fields(pid, proc)[_STARTTIME]


_PPID = 2  # stat field 4, counted from 0 after dropping pid and comm (see _stat_fields)
_STARTTIME = 20  # stat field 22


def _stat_fields(pid: int, proc: str) -> list[int]:
    """Numeric fields of /proc/PID/stat, index = field number - 2 (state reads as 0).

    `comm` may itself contain ') ', hence the split at the last parenthesis.
    """
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    rest = raw[raw.rindex(b")") + 2 :].split()
    return [0, 0, *(int(x) for x in rest[1:])]


def read_process(pid: int, fds: Sequence[int] = (), proc: str = PROC) -> Process:
    """Everything `who` shows about a process. Raises ProcessGone if it exited meanwhile."""
    fields = _stat_fields(pid, proc)
    ppid, started = fields[_PPID], fields[_STARTTIME]
    uid = -1
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    uid = int(line.split()[2])  # effective uid, as ps shows
                    break
    except FileNotFoundError as exc:
        raise ProcessGone(pid) from exc
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = tuple(
                a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a
            )
    except FileNotFoundError as exc:
        raise ProcessGone(pid) from exc
    exe = _readlink(f"{proc}/{pid}/exe")
    program_id = programs.of_process(pid, cmdline, exe, proc) if exe else None
    try:
        ns = os.stat(f"{proc}/{pid}/ns/pid").st_ino
    except OSError:
        ns = 0
    proc_obj = Process(
        pid=pid,
        start_time=started,
        ppid=ppid,
        uid=uid,
        user=user_name(uid),
        exe=exe,
        cmdline=cmdline,
        cgroup=cgroup_of(pid, proc),
        fds=tuple(fds),
        pid_namespace=ns,
        program_id=program_id,
        name=programs.display_name(exe, cmdline, program_id.exe if program_id else None,
                                   f"{proc}/{pid}/root"),
    )
    # The pid may have been reused between the first and the last read: pin the identity.
    if start_time(pid, proc) != started:
        raise ProcessGone(pid)
    return proc_obj


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""  # kernel threads, or not permitted without CAP_SYS_PTRACE


_users: dict[int, str] = {}


def user_name(uid: int) -> str:
    if uid < 0:
        return ""
    if uid not in _users:
        try:
            _users[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _users[uid] = str(uid)
    return _users[uid]


def uid_of(user: str) -> int | None:
    """A unit's User= as a uid: no User= is root; None when the name is unknown."""
    if not user:
        return 0
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def cgroup_of(pid: int, proc: str = PROC) -> str:
    """The process's cgroup path in the hierarchy systemd manages.

    The unified (`0::`) line on cgroup v2 and hybrid hosts; on a v1-only host the
    `name=systemd` line. "" when unreadable.
    """
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    unified = named = ""
    for line in lines:
        hier, _, path = line.partition(":")
        controllers, _, path = path.partition(":")
        if hier == "0" and controllers == "":
            unified = path
        elif controllers == "name=systemd":
            named = path
    # In hybrid mode a process outside systemd's reach may sit at "/" in the unified tree
    # while the named hierarchy still places it: prefer the more specific one.
    if unified and unified != "/":
        return unified
    return named or unified


def all_pids(proc: str = PROC) -> list[int]:
    return [int(name) for name in os.listdir(proc) if name.isdigit()]


def pids_of_uid(uid: int, proc: str = PROC) -> list[int]:
    """Processes whose /proc/PID entry belongs to `uid` (their effective uid)."""
    out = []
    for pid in all_pids(proc):
        try:
            if os.stat(f"{proc}/{pid}").st_uid == uid:
                out.append(pid)
        except OSError:
            continue
    return out


def socket_fds(pid: int, wanted: Collection[int], proc: str = PROC,
               budget: list[int] | None = None) -> dict[int, list[int]]:
    """The fds of `pid` that are sockets with an inode in `wanted`: inode -> fds.

    Raises PermissionError when the fd table cannot be read. `budget` ([fds left]) is
    spent per fd read; at 0 the table is left unread past that point.
    """
    found: dict[int, list[int]] = {}
    base = f"{proc}/{pid}/fd"
    try:
        names = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError):
        return found
    if budget is not None:
        names = names[:max(0, budget[0])]
        budget[0] -= len(names)
    for name in names:
        try:
            link = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
        # "socket:[12345]"
        if link.startswith("socket:["):
            inode = int(link[8:-1])
            if inode in wanted:
                found.setdefault(inode, []).append(int(name))
    return found


def find_owners(
    sockets: Iterable[Socket],
    *,
    suspects: Iterable[int] = (),
    cgroups: CgroupTree | None = None,
    proc: str = PROC,
    reader: Callable[[int, Sequence[int]], Process] | None = None,
    max_fds: int = SCAN_FDS,
    seconds: float = SCAN_SECONDS,
) -> Owners:
    """Which processes hold each socket, scanning as few fd tables as possible, within
    `max_fds` fds read and `seconds` (past either, `cut`: the rest stays unknown)."""
    socks = [s for s in sockets if s.inode]
    wanted = {s.inode for s in socks}
    holders: dict[int, dict[int, list[int]]] = {}  # inode -> pid -> fds
    scanned: set[int] = set()
    unreadable = 0
    budget = [max_fds]
    deadline = time.monotonic() + seconds

    def scan(pids: Iterable[int]) -> None:
        nonlocal unreadable
        for pid in pids:
            if pid in scanned:
                continue
            if budget[0] <= 0 or time.monotonic() > deadline:
                budget[0] = 0
                return
            scanned.add(pid)
            try:
                fds = socket_fds(pid, wanted, proc, budget)
            except PermissionError:
                unreadable += 1
                continue
            for inode, fd_list in fds.items():
                holders.setdefault(inode, {})[pid] = fd_list

    def unresolved() -> list[Socket]:
        # A socket PID 1 holds is socket-activated: the service it was passed to runs in
        # another cgroup, maybe as another user, so only the full scan finds it.
        return [s for s in socks if s.inode not in holders or 1 in holders[s.inode]]

    scan(suspects)
    # Ring 2 for every socket the kernel places in a cgroup, found or not: the suspects
    # may be only some of its holders (a prefork master, not its workers).
    ids = {s.cgroup_id for s in socks if s.cgroup_id}
    if ids:
        tree = cgroups or CgroupTree()
        scan(pid for cid in ids for pid in tree.pids(cid))
    for uid in sorted({s.uid for s in unresolved()}):
        scan(pids_of_uid(uid, proc))
    full = bool(unresolved())
    if full:
        scan(all_pids(proc))
    cut = budget[0] <= 0

    read = reader or (lambda pid, fds: read_process(pid, fds, proc))
    by_inode: dict[int, tuple[Process, ...]] = {}
    for inode, pids in holders.items():
        procs = []
        for pid, fds in sorted(pids.items()):
            try:
                procs.append(read(pid, fds))
            except (ProcessGone, PermissionError):
                continue
        by_inode[inode] = tuple(procs)
    return Owners(by_inode, unreadable, full, cut)


def state(pid: int, proc: str = PROC) -> str:
    """The one-letter state of /proc/PID/stat (R, S, D, Z, T, ...). Raises ProcessGone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    return raw[raw.rindex(b")") + 2 :].split()[0].decode()


def ancestors(pid: int | None = None, proc: str = PROC) -> frozenset[int]:
    """`pid` (default: this process) and every parent up to PID 1: never signalled."""
    out: set[int] = set()
    current = os.getpid() if pid is None else pid
    while current > 0 and current not in out:
        out.add(current)
        try:
            current = _stat_fields(current, proc)[_PPID]
        except ProcessGone:
            break
    return frozenset(out)


def pid_namespace(pid: int | str = "self", proc: str = PROC) -> int:
    try:
        return os.stat(f"{proc}/{pid}/ns/pid").st_ino
    except OSError:
        return 0
