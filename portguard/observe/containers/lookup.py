"""Which container holds a port, and what its runtime calls it: runtime, name, id, image.

A port is held by a container's own process (host network: it runs in `libpod-<id>.scope`,
`docker-<id>.scope`) or by the helper its runtime leaves on the host to publish the port:
podman's conmon (`libpod-conmon-<id>.scope`), docker-proxy, and for rootless podman
rootlessport / slirp4netns / pasta. Each is attributed to the container it serves.

Sources, cheapest reliable first, and why:
1. The id comes from what `who` has read already, so it costs nothing: the holder's cgroup
   (`libpod-<id>.scope`, `libpod-conmon-<id>.scope`, `docker-<id>.scope`) or conmon's own
   argv (`-c ID`). Neither can change while the container runs.
2. The name and image come from the runtime's own record, one small JSON file read by id:
   podman's containers/storage `containers.json` (`names`, and `image-name` in its
   metadata; replaced atomically by podman, so readable without its locks), found under
   the root conmon's `-b BUNDLE` names (`<root>/<driver>-containers/<id>/userdata`), else
   the configured and default roots; docker's `<data-root>/containers/<id>/config.v2.json`.
   These follow `podman rename` / `docker rename`; conmon's `-n NAME`, fixed when it
   started, does not, so it is only the fallback (a rootless store we cannot read).
   Not the runtimes' CLIs or API sockets: `podman inspect` costs 0.12-0.19 s and 34 MB
   (measured in the sandbox on a loaded 2-core machine) and takes the store's locks (it
   can hang behind a stuck podman); docker's socket needs a live dockerd and an HTTP client.
   Not podman's bolt_state.db either: a binary B+tree format.
3. docker-proxy names only the address it forwards to (`-container-ip`): the container is
   the one whose config.v2.json holds that address.
4. A port published by a container whose helper is gone (conmon killed: the container runs
   on and the kernel's DNAT rules still send the port's connections to it, while no socket
   holds the port), or that none ever held (podman 5): libcni's result cache
   (`/var/lib/cni/results/<net>-<id>-<ifname>`) records the mappings it set up, with the
   container's id and name; netavark's are read by `netavark` (its records, or the NAT
   rules where it keeps none).

Whose records count (docs/security.md, "Hostile local users"): a container's identity
comes only from the runtime that owns it. A scope's owner is whoever made its cgroup
directory (systemd for root's runtimes; the user for anything in its delegated subtree, a
rootless container or a directory it merely named `docker-<id>.scope`); a helper's is the
uid it runs as. Root's records (docker's, root's podman store) name root's containers
only; a user's store, read as `files` reads what others may write, names that user's.

`Identifier` does the reading, with a cache for one observation; the parsing (pure) is in
`records`.
`identify(processes)` is the entry point for other commands (`why`, `discover`).
"""

from __future__ import annotations

import pwd
from collections.abc import Callable, Iterable, Sequence

from portguard.model import Container, Process, Proto
from portguard.observe.containers import files, netavark
from portguard.observe.containers.hints import CNI_RESULTS, DOCKER_DAEMON_JSON, DOCKER_ROOT
from portguard.observe.containers.records import (
    ConmonArgs,
    DockerRecord,
    Published,
    basename,
    conmon_args,
    graphroot_from_conf,
    load_json,
    parse_cni_cache,
    parse_containers_json,
    parse_docker_config,
    store_root,
)
from portguard.observe.procs.cgroups import (
    container_cgroup,
    container_scope,
    docker_proxy_target,
)

PODMAN_ROOT = "/var/lib/containers/storage"
STORAGE_CONF = ("/etc/containers/storage.conf", "/usr/share/containers/storage.conf")
ROOTLESS_ROOT = ".local/share/containers/storage"  # under the user's home
# Rootless podman's port forwarders: they hold the host port for the container.
ROOTLESS_HELPERS = ("rootlessport", "rootlessport-child", "slirp4netns", "pasta", "pasta.avx2")
_PARENT_HOPS = 4  # helper -> podman/conmon is one or two hops; bound the walk


def program_name(proc: Process) -> str:
    return basename(proc.cmdline[0]) if proc.cmdline else basename(proc.exe)


def _home(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _cgroup_owner(cgroup: str) -> int | None:
    from portguard.observe.procs.cgroupfs import cgroup2_mount
    mount = cgroup2_mount()
    return files.cgroup_owner(cgroup, mount) if mount else None


class Identifier:
    """Names the container behind holder processes, reading each record once.

    `parent` reads a process by pid (the observer passes the /proc reader): a container's
    own process is conmon's child, a rootless helper podman's. Make one per observation:
    names change (`podman rename`) and containers come and go.
    """

    def __init__(self, parent: Callable[[int], Process | None] = lambda pid: None, *,
                 read: Callable[[str, int], str | None] = files.read_owned,
                 listdir: Callable[[str, int], list[str]] = files.list_owned,
                 home: Callable[[int], str | None] = _home,
                 owner_of: Callable[[str], int | None] | None = None,
                 user_name: Callable[[int], str] = _user_name) -> None:
        self._parent = parent
        self._read = read
        self._listdir = listdir
        self._home = home
        self._owner_of = owner_of or _cgroup_owner
        self._user_name = user_name
        self._stores: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}
        self._docker: dict[str, DockerRecord | None] = {}
        self._published: list[tuple[Published, Container]] | None = None

    # -- the entry points --------------------------------------------------------------

    def identify(self, procs: Sequence[Process],
                 port: tuple[int, Proto] | None = None) -> Container | None:
        """The container these processes (one holder of `port`) are or serve."""
        if not procs:
            return None
        proc = procs[0]
        prog = program_name(proc)
        # argv[0] is the process's own to write: a helper is believed by name only where
        # /proc/PID/exe (when readable) is that program too
        helper = prog if not proc.exe or basename(proc.exe) == prog else ""
        if helper == "dockerd" and port is not None and proc.uid == 0:
            # userland-proxy off: dockerd binds the published port itself, to reserve it
            return next((c._replace(via="dockerd") for _, c in self.published(*port)
                         if c.runtime == "docker"), None)
        conmon = conmon_args(proc.cmdline) if helper == "conmon" else None
        if conmon is not None:
            return self._podman(conmon.id, proc, via="conmon", conmon=conmon,
                                runtime=conmon.runtime, owner=proc.uid)
        if helper == "docker-proxy":
            return self._docker_by_ip(proc.cmdline) if proc.uid == 0 else Container(
                "docker", "", via="docker-proxy", user=self._user_name(proc.uid))
        scope = container_scope(proc.cgroup)
        via = helper if helper in ROOTLESS_HELPERS else ""
        if scope is not None:
            runtime, ident, monitor = scope
            via = via or ("conmon" if monitor else "")
            owner = self._owner_of(container_cgroup(proc.cgroup) or proc.cgroup)
            if owner is None:  # whose it is cannot be seen: its cgroup's id, no records
                return Container(runtime, ident if runtime != "nspawn" else "",
                                 ident if runtime == "nspawn" else "", "", via, "cgroup",
                                 user="?")
            user = self._user_name(owner) if owner else ""
            if runtime == "nspawn":
                return Container("nspawn", "", ident, "", via, "cgroup", user)
            if runtime == "podman":
                return self._podman(ident, proc, via=via, owner=owner)
            if runtime == "docker" and owner == 0:
                return self._docker_by_id(ident, via)
            return Container(runtime, ident, via=via, source="cgroup", user=user)
        if via:  # a rootless helper outside the container's scope: its conmon's sibling
            return self._from_ancestors(proc, via)
        return None

    def published(self, port: int, proto: Proto) -> list[tuple[Published, Container]]:
        """Container mappings of this host port that the kernel forwards (DNAT): libcni's
        and netavark's (podman) and dockerd's (its running containers' published ports)."""
        if self._published is None:
            self._published = []
            for f in self._listdir(CNI_RESULTS, 0):
                for pub in parse_cni_cache(self._read(f"{CNI_RESULTS}/{f}", 0) or ""):
                    found = self._podman_record(pub.container_id, (), 0)
                    _, name, image = found or ("", pub.name, "")
                    self._published.append((pub, Container(
                        "podman" if found else "cni", pub.container_id, name, image, "",
                        "containers.json" if found else "cni cache")))
            for pub in netavark.published(lambda path: self._read(path, 0),
                                          lambda path: self._listdir(path, 0)):
                found = self._podman_record(pub.container_id, (), 0)
                _, name, image = found or ("", "", "")
                self._published.append((pub, Container(
                    "podman", found[0] if found else pub.container_id, name, image, "",
                    "containers.json" if found else "netavark")))
            for ident in self._listdir(f"{self._docker_root()}/containers", 0):
                rec = self._docker_record(ident)
                if rec is not None and rec.running:
                    self._published.extend((pub, Container(
                        "docker", rec.id, rec.name, rec.image, "", "config.v2.json"))
                        for pub in rec.ports)
        return [(pub, c) for pub, c in self._published
                if pub.host_port == port and pub.proto == proto]

    # -- podman ------------------------------------------------------------------------

    def _podman(self, ident: str, proc: Process, *, via: str, owner: int,
                conmon: ConmonArgs | None = None, runtime: str = "podman") -> Container:
        """`owner`: the uid whose runtime runs it; only that uid's stores are read."""
        if conmon is None and not via:
            # the container's own process: its parent is its conmon, whose argv holds the
            # store's path and the name
            parent = self._parent(proc.ppid) if proc.ppid > 1 else None
            found = conmon_args(parent.cmdline) if parent is not None and \
                parent.uid == owner else None
            conmon = found if found is not None and ident.startswith(found.id[:12]) else None
        roots = [r for r in (store_root(conmon.bundle) if conmon else None,) if r]
        rootless = self._home(owner) if owner > 0 else None
        user = self._user_name(owner) if owner else ""
        record = self._podman_record(ident, roots, owner, rootless)
        if record is not None:
            full, name, image = record
            return Container(runtime, full, name, image, via, "containers.json", user)
        name = conmon.name if conmon else ""
        return Container(runtime, conmon.id if conmon else ident, name, "", via,
                         "conmon argv" if name else "cgroup", user)

    def _podman_record(self, ident: str, roots: Iterable[str], owner: int,
                       rootless_home: str | None = None) -> tuple[str, str, str] | None:
        """(full id, name, image) from the first of `owner`'s stores that knows it."""
        candidates = [*roots, *(self._configured_roots() if owner == 0 else ())]
        if rootless_home:
            candidates.append(f"{rootless_home}/{ROOTLESS_ROOT}")
        for root in dict.fromkeys(candidates):
            store = self._store(root, owner)
            for full, (name, image) in store.items():
                if full.startswith(ident):  # cgroups and argv spell it whole; be lenient
                    return full, name, image
        return None

    def _configured_roots(self) -> list[str]:
        for path in STORAGE_CONF:
            text = self._read(path, 0)
            if text is not None:
                root = graphroot_from_conf(text)
                return [root, PODMAN_ROOT] if root else [PODMAN_ROOT]
        return [PODMAN_ROOT]

    def _store(self, root: str, owner: int) -> dict[str, tuple[str, str]]:
        if (root, owner) not in self._stores:
            def load() -> dict[str, tuple[str, str]]:
                store: dict[str, tuple[str, str]] = {}
                for entry in self._listdir(root, owner):
                    if entry.endswith("-containers"):  # one per storage driver
                        store.update(parse_containers_json(
                            self._read(f"{root}/{entry}/containers.json", owner) or "[]"))
                return store
            # a user's store may sit on a filesystem that stalls (FUSE): bounded
            self._stores[root, owner] = load() if owner == 0 else files.bounded(
                f"{owner}:{root}", load, {})
        return self._stores[root, owner]

    def _from_ancestors(self, proc: Process, via: str) -> Container:
        current: Process | None = proc
        for _ in range(_PARENT_HOPS):
            if current is None or current.ppid <= 1:
                break
            current = self._parent(current.ppid)
            if current is None:
                break
            if current.uid != proc.uid:
                break  # a helper's container is its own user's
            conmon = conmon_args(current.cmdline)
            scope = container_scope(current.cgroup)
            if conmon is not None or (scope is not None and scope[0] == "podman"):
                ident = conmon.id if conmon else scope[1] if scope else ""
                return self._podman(ident, current, via=via, conmon=conmon, owner=proc.uid)
        return Container("podman", "", via=via,
                         user=self._user_name(proc.uid) if proc.uid else "")

    # -- docker ------------------------------------------------------------------------

    def _docker_root(self) -> str:
        text = self._read(DOCKER_DAEMON_JSON, 0)
        if not text:
            return DOCKER_ROOT  # no settings: no json to parse (nor to import)
        conf = load_json(text, dict)
        root = conf.get("data-root") or conf.get("graph")
        return root if isinstance(root, str) and root else DOCKER_ROOT

    def _docker_record(self, ident: str) -> DockerRecord | None:
        if ident not in self._docker:
            text = self._read(f"{self._docker_root()}/containers/{ident}/config.v2.json", 0)
            self._docker[ident] = parse_docker_config(text) if text else None
        return self._docker[ident]

    def _docker_by_id(self, ident: str, via: str) -> Container:
        rec = self._docker_record(ident)
        if rec is None:
            return Container("docker", ident, via=via, source="cgroup")
        return Container("docker", rec.id, rec.name, rec.image, via, "config.v2.json")

    def _docker_by_ip(self, cmdline: Sequence[str]) -> Container:
        target = docker_proxy_target(cmdline)
        ip = target.rsplit(":", 1)[0] if target else ""
        for ident in self._listdir(f"{self._docker_root()}/containers", 0):
            rec = self._docker_record(ident)
            if ip and rec is not None and ip in rec.ips:
                return Container("docker", rec.id, rec.name, rec.image, "docker-proxy",
                                 "config.v2.json")
        return Container("docker", "", via="docker-proxy")


def publishes(ports: Iterable[tuple[int, Proto]]) -> bool:
    """Whether a container network publishes any of these ports (preflight's fast path)."""
    ident = Identifier()
    return any(ident.published(port, proto) for port, proto in ports)


def published_by(container_id: str, port: int, proto: Proto) -> bool:
    """Whether that container still publishes the port (for a wait on it)."""
    return any(c.id == container_id for _, c in Identifier().published(port, proto))


def identifier() -> Identifier:
    """An Identifier that reads parents from /proc, for commands outside the observer
    (`discover`): one per run, so each record is read once."""
    from portguard.observe.procs.processes import ProcessGone, read_process

    def parent(pid: int) -> Process | None:
        try:
            return read_process(pid)
        except (ProcessGone, PermissionError):
            return None
    return Identifier(parent)


def identify(procs: Sequence[Process],
             port: tuple[int, Proto] | None = None) -> Container | None:
    """The container behind one holder's processes (of `port`), for other commands."""
    return identifier().identify(procs, port)

