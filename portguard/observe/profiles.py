"""Service profiles (docs/identity.md, "Profiles"): what a unit really runs.

`learn` reads it from the unit's own cgroup while the unit is active, and from nowhere
else: the processes there that hold listening sockets, judged as one tree by its root
(the program by file identity, the root's user, the workers' users) and the sockets with
their SO_REUSEADDR/SO_REUSEPORT. `load` reads a stored profile back, trusted only as the
compiled config is: root's own 0600 regular file, not a symlink, in directories that are
root's alone, written by this portguard version; and only while every file it names is
still that very file and root's alone (a program file replaced or writable by others
makes the profile unusable, never wider). Writing is act's (`act.files.write_atomic`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from portguard import __version__
from portguard.config import trust
from portguard.config.schema import Defaults, Service
from portguard.model import FileId, Learned, PortSpec, Process, Profile, ProgramId, Proto
from portguard.observe.kernel import sockets, sockopts
from portguard.observe.kernel.listeners import LISTEN_STATES
from portguard.observe.procs import cgroupfs, processes, programs

STORE = "/var/lib/portguard/profiles"
FORMAT = 1
_MAX_BYTES = 256 * 1024


class Unusable(Exception):
    """A profile that exists but must not be used; the message says why."""


def path_for(unit: str, store: str = STORE) -> str:
    if not unit or "/" in unit or unit.startswith("."):
        raise ValueError(f"not a unit name: {unit!r}")
    return os.path.join(store, f"{unit}.json")


# -- learning -------------------------------------------------------------------------


def learn(unit: str, control_group: str, *, now: float,
          cgroup_root: str | None = None) -> Profile | None:
    """The profile of `unit` from the processes of its cgroup (`control_group`, as
    systemd's ControlGroup names it) that listen now; None when none listens, or they
    cannot be told for certain (another pid namespace, an unreadable program, listeners
    running different programs or users)."""
    root = cgroup_root if cgroup_root is not None else cgroupfs.cgroup2_mount()
    if not root or not control_group.startswith("/"):
        return None
    members = cgroupfs.pids_under(root + control_group)
    if not members:
        return None
    listening = {s.inode: s for s in sockets.query(range(1, 65536), states=LISTEN_STATES)
                 if s.inode}
    own_ns = processes.pid_namespace()
    held: list[tuple[Process, dict[int, list[int]]]] = []
    by_pid: dict[int, Process] = {}
    for pid in members:
        try:
            fds = processes.socket_fds(pid, listening)
            proc = processes.read_process(pid, [fd for f in fds.values() for fd in f])
        except (PermissionError, processes.ProcessGone):
            continue
        by_pid[pid] = proc
        if fds:
            held.append((proc, fds))
    if not held or any(own_ns and p.pid_namespace != own_ns for p, _ in held):
        return None
    roots = {_tree_root(p, by_pid) for p, _ in held}
    judged = {(by_pid[r].program_id, by_pid[r].uid) for r in roots}
    if len(judged) != 1:
        return None
    top = by_pid[min(roots)]
    program = top.program_id
    if program is None or (program.interpreted and program.target is None
                           and not program.module):
        return None
    workers = sorted({p.uid for p, _ in held} - {top.uid})
    found: dict[tuple[str, int, Proto], Learned] = {}
    for proc, fds in held:
        for inode, fd_list in fds.items():
            s = listening[inode]
            flags = sockopts.reuse_flags(proc.pid, fd_list[0], inode) or (None, None)
            found.setdefault((s.local_address, s.local_port, s.proto),
                             Learned(s.local_address, s.local_port, s.proto, *flags))
    return Profile(unit, program, programs.named_files(top.pid, top.cmdline, top.exe),
                   top.uid, top.user, tuple(workers), tuple(sorted(found.values())), now)


def _tree_root(proc: Process, members: dict[int, Process]) -> int:
    """The top of the unit's processes that `proc` descends from running its program: a
    master that forked listening workers (haproxy -Ws) is the tree's root."""
    while (parent := members.get(proc.ppid)) is not None and \
            parent.program_id == proc.program_id:
        proc = parent
    return proc.pid


# -- which profile a service has --------------------------------------------------------

NO_PROFILE = "no profile yet: run the unit once, or `portguard install` it while it runs"


def for_service(unit: str, program: str, user: str, unit_uid: int | None,
                exec_programs: Sequence[ProgramId | None], *,
                store: str = STORE) -> tuple[Profile | None, str]:
    """What `unit` really runs: the config's `program:` and `user:` when either is set
    (the other from the unit: its one ExecStart= program, its User=), else the profile
    learned from its own runs; without one, why not (for the refusal)."""
    if program or user:
        found = programs.of_exec_start([program]) if program else (
            exec_programs[0] if len(exec_programs) == 1 else None)
        uid = processes.uid_of(user) if user else unit_uid
        if found is None or uid is None:
            return None, (f"the config's program/user cannot be resolved "
                          f"({program or 'ExecStart='} as {user or 'User='})")
        return Profile(unit, found, (program,) if program else (), uid,
                       processes.user_name(uid), source="config"), ""
    try:
        learned = load(unit, store)
    except Unusable as exc:
        return None, f"its profile is not used: {exc}"
    return (learned, "") if learned is not None else (None, NO_PROFILE)


# -- storing and reading back -----------------------------------------------------------


def encode(profile: Profile) -> bytes:
    p = profile.program
    return json.dumps({
        "format": FORMAT, "version": __version__, "unit": profile.unit,
        "program": {"exe": list(p.exe), "target": list(p.target) if p.target else None,
                    "module": p.module, "applet": p.applet, "interpreted": p.interpreted},
        "paths": list(profile.paths), "uid": profile.uid, "user": profile.user,
        "worker_uids": list(profile.worker_uids),
        "sockets": [[s.address, s.port, str(s.proto), s.reuse_address, s.reuse_port]
                    for s in profile.sockets],
        "seen": profile.seen,
    }, indent=1).encode()


def decode(blob: bytes, unit: str) -> Profile:
    """The profile in `blob`; Unusable when it is not this version's profile of `unit`."""
    try:
        doc = json.loads(blob)
        if doc["format"] != FORMAT or doc["version"] != __version__:
            raise Unusable(f"learned by portguard {doc.get('version')}, not {__version__}")
        if doc["unit"] != unit:
            raise Unusable(f"it is {doc['unit']}'s")
        p = doc["program"]
        program = ProgramId(FileId(*p["exe"]), FileId(*p["target"]) if p["target"] else None,
                            str(p["module"]), str(p["applet"]), bool(p["interpreted"]))
        return Profile(unit, program, tuple(str(x) for x in doc["paths"]), int(doc["uid"]),
                       str(doc["user"]), tuple(int(u) for u in doc["worker_uids"]),
                       tuple(Learned(str(a), int(port), Proto(pr), ra, rp)
                             for a, port, pr, ra, rp in doc["sockets"]),
                       float(doc["seen"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise Unusable(f"unreadable ({exc})") from exc


def load(unit: str, store: str = STORE, *, check_dirs: bool = True) -> Profile | None:
    """The stored profile of `unit`, or None when there is none. Raises Unusable when
    there is one that must not be used (see the module docstring). `check_dirs` False
    is for tests whose store lies under /tmp."""
    path = path_for(unit, store)
    try:
        blob = trust.read_own(path, _MAX_BYTES)
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unusable(f"{path}: {exc.strerror or exc}") from exc
    if st.st_uid != 0 and check_dirs:
        raise Unusable(f"{path} is not root's")
    if check_dirs and not trust.trusted(path, st):
        raise Unusable(f"{path}: a directory above it is not root's alone")
    profile = decode(blob, unit)
    if why := files_changed(profile):
        raise Unusable(why)
    return profile


def files_changed(profile: Profile) -> str:
    """Why the files `profile` names can no longer vouch for it ("" when they can): each
    must be root's alone, and still the file that was learned (not replaced)."""
    p = profile.program
    expected: Sequence[FileId | None] = (p.exe, p.target)
    for path, want in zip(profile.paths, expected, strict=False):
        if why := trust.root_only(path):
            return f"program file {why}"
        if want is not None and programs.file_id(path) != want:
            return f"program file {path} was replaced since the profile was learned"
    return ""


# -- guarding a unit the config does not name ----------------------------------------


def learned_service(defaults: Defaults, unit: str,
                    store: str = STORE) -> tuple[Service, Profile] | None:
    """Zero-config guarding (docs/identity.md, "Profiles"): a unit the config does not
    name, with a usable learned profile, is guarded on the ports its processes listened
    on, by the config's defaults. None without one (then it is not guarded)."""
    try:
        profile = load(unit, store)
    except Unusable:
        return None
    if profile is None or not profile.sockets:
        return None
    specs = tuple(dict.fromkeys(PortSpec(s.port, s.port, s.proto, s.address)
                                for s in profile.sockets))  # str(): `[::1]:8080/tcp`
    reuse = all(s.reuse_address is not False for s in profile.sockets)
    return Service(unit, specs, defaults.policy, defaults.on_foreign, defaults.timeout,
                   defaults.kill_after, defaults.signal, reuse), profile


def stored_units(store: str = STORE) -> list[str]:
    """The units with a stored profile (names only; `load` decides whether it is used)."""
    try:
        names = os.listdir(store)
    except OSError:
        return []
    return sorted(n.removesuffix(".json") for n in names
                  if n.endswith(".json") and not n.startswith("."))
