"""What a cgroup path and a command line say about units and containers: pure, no D-Bus.

These answer when systemd's D-Bus API cannot (or need not) be asked: a socket's owner
named by the cgroup it lives in, a container runtime recognised by its scope name.
`portguard.observe.systemd.units` re-exports them for older imports.
"""

from __future__ import annotations

from collections.abc import Sequence

from portguard.model import Unit
from portguard.text import is_container_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".slice")


def unit_from_cgroup(path: str) -> str | None:
    """The unit a cgroup path belongs to, as systemd itself derives it.

    Like systemd's `cg_path_get_unit` (and what the system manager's GetUnitByPID
    answers): skip the slices; the next component is the unit, or there is none.
    `/system.slice/web@blue.service` -> `web@blue.service`; a unit's sub-cgroups
    (`.../payload`, delegated trees, a user manager's or a container's own units) belong
    to that first unit: `/user.slice/user-1000.slice/user@1000.service/app.slice/x.service`
    -> `user@1000.service`. Slices alone, and cgroupfs-driver trees (`/docker/<id>`), name
    no unit.
    """
    for part in path.strip("/").split("/"):
        if part.endswith(".slice"):
            continue
        return part if part.endswith(_UNIT_SUFFIXES) else None
    return None


# docker-<64 hex>.scope, libpod-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope;
# podman and CRI-O put each container's monitor in libpod-conmon-<id>.scope / crio-conmon-
_CONTAINER_SCOPE = (r"(?:^|/)(docker|libpod|cri-containerd|crio|containerd)-"
                    r"(conmon-)?([0-9a-f]{12,64})\.scope(?:/|$)")
# cgroupfs driver layouts: /docker/<id>, /kubepods/.../<id>
_CONTAINER_DIR = r"(?:^|/)(docker|lxc)/([0-9a-f]{12,64})(?:/|$)"
# nspawn machines only where systemd-machined puts them, at the top of machine.slice:
# anyone may name a cgroup `machine-x.scope` in their own delegated subtree
_NSPAWN = r"^/machine\.slice/(?:machine-([^/]+)\.scope|systemd-nspawn@([^/]+)\.service)(?:/|$)"
# Each pattern above needs one of these words: a path without any names no container,
# and `re` (~7 ms to import) stays out of `who` and the daemon's usual pass.
_CONTAINER_WORDS = ("docker", "libpod", "crio", "containerd", "lxc/", "machine-", "nspawn@")
_compiled: list[re.Pattern[str]] = []
_RUNTIME_NAMES = {"libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o"}


def container_scope(path: str) -> tuple[str, str, bool] | None:
    """(runtime, id as the cgroup spells it, whether it is the container's monitor).

    `/machine.slice/libpod-<id>.scope` -> ("podman", id, False): the container's own
    processes; `/machine.slice/libpod-conmon-<id>.scope` -> ("podman", id, True): its
    conmon, which holds a published port for it. nspawn machines are named, not numbered:
    ("nspawn", "mybox", False).
    """
    found = _scope_match(path)
    return found[:3] if found is not None else None


def container_cgroup(path: str) -> str | None:
    """The container's own cgroup within `path` (`/system.slice/docker-<id>.scope` of
    `.../docker-<id>.scope/init`): whoever made that directory owns the container."""
    found = _scope_match(path)
    return path[:found[3]].rstrip("/") if found is not None else None


def _scope_match(path: str) -> tuple[str, str, bool, int] | None:
    if not any(word in path for word in _CONTAINER_WORDS):
        return None
    if not _compiled:
        import re
        _compiled.extend(re.compile(p) for p in (_CONTAINER_SCOPE, _CONTAINER_DIR, _NSPAWN))
    scope_re, dir_re, nspawn_re = _compiled
    m = scope_re.search(path)
    if m:
        return (_RUNTIME_NAMES.get(m.group(1), m.group(1)), m.group(3), bool(m.group(2)),
                m.end())
    m = dir_re.search(path)
    if m:
        return m.group(1), m.group(2), False, m.end()
    m = nspawn_re.search(path)
    if m:
        name = (m.group(1) or m.group(2)).replace("\\x2d", "-")  # systemd's escaping
        # machined names a machine as a hostname; any other name is not its scope
        return ("nspawn", name, False, m.end()) if is_container_name(name) else None
    return None


def container_from_cgroup(path: str) -> str | None:
    """`docker:3f2a9c1b2d4e`, `podman:...`, `nspawn:mybox` or None (also for a monitor)."""
    scope = container_scope(path)
    if scope is None or scope[2]:
        return None
    runtime, ident, _ = scope
    return f"{runtime}:{ident if runtime == 'nspawn' else ident[:12]}"


def docker_proxy_target(cmdline: Sequence[str]) -> str | None:
    """What a docker-proxy forwards to, from its own arguments.

    `docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2
    -container-port 80` -> `172.17.0.2:80/tcp`.
    """
    if not cmdline or not cmdline[0].endswith("docker-proxy"):
        return None
    args: dict[str, str] = {}
    it = iter(cmdline[1:])
    for arg in it:
        if arg.startswith("-"):
            key, eq, value = arg.lstrip("-").partition("=")
            args[key] = value if eq else next(it, "")
    ip, port = args.get("container-ip"), args.get("container-port")
    if not (ip and port):
        return None
    return f"{ip}:{port}/{args.get('proto', 'tcp')}"


def unit_from_path_only(cgroup: str) -> Unit | None:
    """A Unit built from the cgroup alone (D-Bus unreachable): only the id is known."""
    uid = unit_from_cgroup(cgroup)
    if uid is None:
        return None
    return Unit(id=uid, control_group=cgroup, from_dbus=False)
