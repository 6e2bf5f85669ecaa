"""The vocabulary every stage shares: declared ports and observed facts.

Data flows one way (config -> observe -> classify -> act -> report); each stage takes
these immutable values in and hands new ones on, so decisions stay pure functions of facts.

They are NamedTuples rather than dataclasses on purpose: `who PORT` on a free port must
answer in a few milliseconds of process time, and importing `dataclasses` (it pulls in
`inspect` and `ast`) costs ~9 ms on our machines, more than the whole netlink query;
for the same reason they come from `portguard.records`, not `typing`.
"""

from __future__ import annotations

import enum

from portguard.records import NamedTuple
from portguard.text import command, is_container_name, shown


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PortSpec(NamedTuple):
    """One declared port or range, e.g. `127.0.0.1:9090/tcp` or `7000-7010/tcp`.

    `address` is None when the declaration names no address: the service may bind the
    wildcard of either family, so any socket on the port can block it.
    """

    first: int
    last: int
    proto: Proto = Proto.TCP
    address: str | None = None
    text: str = ""  # as written in the config, for messages
    line: int = 0  # where it was written (0: not from a file)

    @property
    def ports(self) -> range:
        return range(self.first, self.last + 1)

    def __str__(self) -> str:
        if self.text:
            return self.text
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        host = ""
        if self.address is not None:
            host = f"[{self.address}]:" if ":" in self.address else f"{self.address}:"
        return f"{host}{span}/{self.proto}"


class BindIntent(NamedTuple):
    """How the service will bind one port: a `PortSpec` address and port plus options.

    `address` None: the service binds the wildcard of either family; treated as a
    dual-stack `[::]`, which overlaps every address of both families. `v6only` matters
    for an IPv6 wildcard only; None is the system default, taken as dual-stack
    (net.ipv6.bindv6only=0, the default; `probe_bind` uses the real sysctl). `uid` is
    the service's user, used only by the SO_REUSEPORT same-uid rule (None: unknown, so a
    reuseport group is never assumed). Build with `decide.conflicts.intents()`, which validates.
    """

    address: str | None
    port: int
    proto: Proto = Proto.TCP
    reuse_address: bool = True
    reuse_port: bool = False
    v6only: bool | None = None
    uid: int | None = None

    def __str__(self) -> str:
        host = "*" if self.address is None else self.address
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}/{self.proto}"


class PeerOptions(NamedTuple):
    """Options of an observed socket that sock_diag does not report."""

    reuse_address: bool
    reuse_port: bool = False


class Socket(NamedTuple):
    """One kernel socket on a port, as sock_diag (or /proc/net) reports it.

    `state` uses the kernel's TCP state names (LISTEN, ESTABLISHED, TIME_WAIT, ...);
    an unconnected UDP socket is `UNCONN`, as `ss` shows it.
    """

    proto: Proto
    family: int  # socket.AF_INET or socket.AF_INET6
    state: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    uid: int
    inode: int  # 0 for sockets no process owns (TIME_WAIT)
    v6only: bool | None = None  # IPV6_V6ONLY where the kernel reports it
    cgroup_id: int | None = None  # cgroup v2 id the socket was created in, if known


class FileId(NamedTuple):
    """A file's identity whatever its name: (st_dev, st_ino), symlinks followed."""

    dev: int
    ino: int


class ProgramId(NamedTuple):
    """What a process or an ExecStart= line runs (observe/procs/programs.py says how it is read).

    `exe` is the executable file; an interpreter's program is the `target` script or jar
    (None: unreadable) or the `module`; a multi-call binary's is its `applet`.
    """

    exe: FileId
    target: FileId | None = None
    module: str = ""
    applet: str = ""
    interpreted: bool = False


INTERPRETERS = ("python", "perl", "ruby", "node", "java", "php", "bash", "sh", "dash")


class Process(NamedTuple):
    """A process, pinned by (pid, start_time) so a reused pid is never mistaken for it."""

    pid: int
    start_time: int  # clock ticks since boot (/proc/PID/stat field 22)
    ppid: int = 0
    uid: int = -1
    user: str = ""
    exe: str = ""
    cmdline: tuple[str, ...] = ()
    cgroup: str = ""  # unified-hierarchy path, e.g. /system.slice/web@blue.service
    fds: tuple[int, ...] = ()  # the fds through which it holds the socket in question
    pid_namespace: int = 0  # inode of /proc/PID/ns/pid, 0 when unknown
    program_id: ProgramId | None = None  # what it runs, by file identity; None: unknown
    name: str = ""  # the program's name as its administrator knows it (redis-server)

    @property
    def program(self) -> str:
        """A short name for messages: the executable, and the script an interpreter runs
        (`python3.11 app.py`), since the interpreter alone names nothing. The process
        chose these: `shown`, so a line break or an escape sequence stays in its text."""
        path = self.exe or (self.cmdline[0] if self.cmdline else "")
        name = self.name or path.rsplit("/", 1)[-1] or f"pid {self.pid}"
        if name.startswith(INTERPRETERS):
            script = next((a for a in self.cmdline[1:] if not a.startswith("-")), "")
            if script:
                return shown(f"{name} {script.rsplit('/', 1)[-1]}")
        return shown(name)


class Usage(NamedTuple):
    """What a process costs (the daemon's account of itself, for its metrics)."""

    rss_bytes: int
    cpu_seconds: float  # user + system
    open_fds: int
    started_at: float  # Unix time


class Unit(NamedTuple):
    """What systemd says about a unit (or, without D-Bus, what its cgroup implies)."""

    id: str
    active_state: str = ""
    sub_state: str = ""
    main_pid: int = 0
    control_group: str = ""
    invocation_id: str = ""
    exec_start: tuple[tuple[str, ...], ...] = ()  # argv of each ExecStart= line
    user: str = ""
    from_dbus: bool = True  # False: inferred from /proc/PID/cgroup only
    triggers: tuple[str, ...] = ()  # units it activates (a .socket's service), Triggers=
    listen: tuple[tuple[str, str], ...] = ()  # a .socket's Listen: ("Stream", "[::]:22")


# The command that stops a container, by runtime (the administrator's own tool), as words.
_STOP = {"podman": ("podman", "stop"), "docker": ("docker", "stop"),
         "nspawn": ("machinectl", "stop"), "containerd": ("nerdctl", "stop"),
         "cri-o": ("crictl", "stop"), "lxc": ("lxc-stop", "-n")}


class Container(NamedTuple):
    """A container holding a port, itself or through its runtime's port helper.

    `id` is the full id where it was seen whole (64 hex for podman and docker), `name`
    and `image` what the runtime records ("" when it could not be read), `via` the
    helper process that holds the host port for it (conmon, docker-proxy, rootlessport,
    slirp4netns, pasta; "" when the container's own process holds it) and `source` where
    the name was read, for `-v` and bug reports. `user` is the account whose own runtime
    runs it (rootless: its name is in that user's store, and only that user's runtime
    stops it); "" for root's.
    """

    runtime: str  # podman, docker, containerd, cri-o, nspawn, lxc
    id: str
    name: str = ""
    image: str = ""
    via: str = ""
    source: str = ""
    user: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def label(self) -> str:
        """What the administrator calls it: the name, else the short id (`shown`)."""
        return shown(self.name or self.short_id or "(unidentified)")

    @property
    def stop_command(self) -> str:
        """The runtime's own command that stops it, quoted to paste; "" where neither its
        name nor its id is one the runtime accepts (docs/security.md): then it is named
        (`label`, escaped), never offered as a command."""
        # crictl knows containers by id; every other tool by the name it was given, and
        # docker and podman by the id too
        targets = (self.id,) if self.runtime == "cri-o" else (
            (self.name, self.short_id) if self.runtime in ("podman", "docker") else (self.name,))
        target = next((t for t in targets if t and is_container_name(t)), "")
        verb = _STOP.get(self.runtime)
        as_user: tuple[str, ...] = ()
        if self.user:  # a user's runtime, as that user: root's would stop root's container
            if not is_container_name(self.user):
                return ""
            as_user = ("runuser", "-u", self.user, "--")
        if not (self.name or self.id) and self.runtime in ("podman", "docker"):
            return command(*as_user, self.runtime, "ps")  # nothing names it: find it
        return command(*as_user, *verb, target) if verb and target else ""

    def __str__(self) -> str:
        ident = f" ({self.short_id})" if self.name and self.id else ""
        whose = f" of user {shown(self.user)}" if self.user else ""
        return f"{shown(self.runtime)} container {self.label}{ident}{whose}"


class Holder(NamedTuple):
    """A socket on a port together with what holds it.

    `processes` is empty for sockets nobody owns (TIME_WAIT) and when the owner could not
    be read (`unknown_reason` then says why, e.g. "needs root"). `master` is never one of
    them: it does not hold the socket.
    """

    socket: Socket
    processes: tuple[Process, ...] = ()
    unit: Unit | None = None
    container: Container | None = None  # the container holding it, itself or by a helper
    unknown_reason: str = ""
    notes: tuple[str, ...] = ()
    # The process that forked the holders, when it runs in their cgroup without holding the
    # socket itself: haproxy's master-worker master (only its worker listens).
    master: Process | None = None


class Learned(NamedTuple):
    """A socket a unit's own processes listened on when its profile was learned."""

    address: str
    port: int
    proto: Proto = Proto.TCP
    reuse_address: bool | None = None  # None: could not be read
    reuse_port: bool | None = None


class Profile(NamedTuple):
    """What a unit really runs (docs/identity.md, "Profiles"): learned from its own cgroup
    while it was active, or written in the config as `program:` and `user:`.

    `program` is the listening tree root's program by file identity; `paths` are the
    files it names (the executable, and an interpreter's script), which must still be
    those files and root's alone for the profile to be used. `uid` is the tree root's
    user, `worker_uids` its workers'. `seen` is when it was learned (Unix time; 0 for
    the config's keys), `source` "learned" or "config".
    """

    unit: str
    program: ProgramId
    paths: tuple[str, ...]
    uid: int
    user: str = ""
    worker_uids: tuple[int, ...] = ()
    sockets: tuple[Learned, ...] = ()
    seen: float = 0.0
    source: str = "learned"

    @property
    def name(self) -> str:
        """The program as messages name it: its script, else its executable."""
        return self.paths[-1].rsplit("/", 1)[-1] if self.paths else "?"

    def __str__(self) -> str:
        return f"{' '.join(self.paths) or 'its ExecStart= program'} as {self.user or self.uid}"


# TCP states a closed connection leaves behind: no live listener (the contract's
# `lingering` holders)
LINGERING_STATES = frozenset(
    {"TIME_WAIT", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"})

JOURNAL_SYSTEMD = "systemd"  # JournalRecord.transport of PID 1's records about a unit


class JournalRecord(NamedTuple):
    """One journal record of a unit, as `why` reads it (observe/systemd/journal)."""

    time: str  # as `journalctl -o short` shows it: "Dec 02 17:30:01"
    usec: int  # __REALTIME_TIMESTAMP, for ordering
    unit: str  # the unit the record belongs to (its process's or, for systemd, its subject)
    identifier: str  # SYSLOG_IDENTIFIER: nginx, systemd, portguard, ...
    pid: str
    message: str
    invocation: str  # the unit's invocation id, "" when the record carries none
    # how it reached the journal: "stdout" (the process's own stdout/stderr), "syslog",
    # "journal"; "systemd" for root's records about the unit (PID 1's UNIT=)
    transport: str = ""
