"""What container runtimes write about their containers, parsed: pure, no I/O.

conmon's argv (podman's and CRI-O's container monitor), containers/storage's
containers.json (podman, CRI-O, buildah), docker's config.v2.json, libcni's result
cache, and storage.conf's graphroot. `portguard.observe.containers.lookup` reads the files and
decides which one to believe (its docstring says why); these only parse, and every
damaged input parses as "nothing known".
"""

from __future__ import annotations

from collections.abc import Sequence

from portguard.model import Proto
from portguard.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What podman and docker accept as a name, and what an image reference can hold: anything
# else (these files and argvs can be written by a container's owner) is dropped, so
# advice a person may paste (`podman stop NAME`) never carries shell syntax.
# (Patterns, not compiled ones: `re` is imported only where a container is looked at;
# its module-level cache keeps each compiled once.)
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}"
_IMAGE = r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,510}"
_ID = r"[0-9a-f]{12,64}"


def clean(text: object, pattern: str = _NAME) -> str:
    """`text` if it is a plausible name (or image, or id), else ""."""
    import re

    return text if isinstance(text, str) and re.fullmatch(pattern, text) else ""


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class ConmonArgs(NamedTuple):
    runtime: str  # podman, or cri-o (which runs conmon too)
    id: str
    name: str
    bundle: str


class Published(NamedTuple):
    """One port mapping a container network set up in the kernel (DNAT)."""

    container_id: str
    name: str  # as the runtime passed it to CNI (K8S_POD_NAME), "" if not
    network: str
    host_ip: str  # "" for every address
    host_port: int
    container_ip: str
    container_port: int
    proto: Proto


class DockerRecord(NamedTuple):
    id: str
    name: str
    image: str
    ips: tuple[str, ...]
    running: bool = False
    ports: tuple[Published, ...] = ()  # what dockerd published for it (NetworkSettings.Ports)


def _options(argv: Sequence[str]) -> dict[str, list[str]]:
    """`-c ID`, `--cid=ID`, `--exit-command-arg X` -> {"c": [ID], "cid": [ID], ...}."""
    out: dict[str, list[str]] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg != "-":
            key, eq, value = arg.lstrip("-").partition("=")
            if not eq:
                has_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
                value = argv[i + 1] if has_value else ""
                i += has_value
            out.setdefault(key, []).append(value)
        i += 1
    return out


def conmon_args(cmdline: Sequence[str]) -> ConmonArgs | None:
    """What conmon's own argv says about the container it monitors.

    `conmon --api-version 1 -c ID -u ID -r /usr/bin/runc -b ROOT/overlay-containers/ID/
    userdata ... -n web ... --exit-command /usr/bin/podman ...`.
    """
    if not cmdline or basename(cmdline[0]) != "conmon":
        return None
    opts = _options(cmdline)
    ident = clean((opts.get("c") or opts.get("cid") or [""])[0], _ID)
    if not ident:
        return None
    name = clean((opts.get("n") or opts.get("name") or [""])[0])
    bundle = (opts.get("b") or opts.get("bundle") or [""])[0]
    exit_cmd = (opts.get("exit-command") or [""])[0]
    runtime = "cri-o" if "crio" in " ".join(cmdline) and "podman" not in exit_cmd \
        else "podman"
    return ConmonArgs(runtime, ident, name, bundle)


def store_root(bundle: str) -> str | None:
    """`<root>/overlay-containers/<id>/userdata` -> `<root>` (containers/storage layout)."""
    parts = bundle.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-1] == "userdata" and parts[-3].endswith("-containers"):
        return "/".join(parts[:-3]) or "/"
    return None


def parse_containers_json(text: str) -> dict[str, tuple[str, str]]:
    """containers/storage's containers.json -> {id: (name, image)}."""
    out: dict[str, tuple[str, str]] = {}
    for entry in load_json(text, list):
        if not isinstance(entry, dict) or not clean(entry.get("id"), _ID):
            continue
        names = entry.get("names") or []
        meta = load_json(entry.get("metadata") or "{}", dict)
        name = clean(names[0] if names else meta.get("name"))
        out[entry["id"]] = (name, clean(meta.get("image-name"), _IMAGE))
    return out


def parse_docker_config(text: str) -> DockerRecord | None:
    """docker's containers/<id>/config.v2.json -> its id, name, image and addresses."""
    doc = load_json(text, dict)
    ident = clean(doc.get("ID"), _ID)
    if not ident:
        return None
    config = doc.get("Config") if isinstance(doc.get("Config"), dict) else {}
    networks = (doc.get("NetworkSettings") or {}).get("Networks") or {}
    ips = tuple(str(n.get(key)) for n in networks.values() if isinstance(n, dict)
                for key in ("IPAddress", "GlobalIPv6Address") if n.get(key))
    name = clean(str(doc.get("Name", "")).lstrip("/"))
    ports = []
    for key, bindings in ((doc.get("NetworkSettings") or {}).get("Ports") or {}).items():
        cport, _, proto = str(key).partition("/")
        for b in bindings or []:  # null: exposed, not published
            try:
                host_ip = str(b.get("HostIp", ""))
                cip = next((ip for ip in ips if (":" in ip) == (":" in host_ip)), "")
                ports.append(Published(ident, name, next(iter(networks), ""), host_ip,
                                       int(b["HostPort"]), cip, int(cport),
                                       Proto(proto or "tcp")))
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
    running = bool((doc.get("State") or {}).get("Running"))
    return DockerRecord(ident, name, clean(config.get("Image"), _IMAGE), ips, running,
                        tuple(ports))


def parse_cni_cache(text: str) -> list[Published]:
    """libcni's cached result for one container interface -> the ports it published."""
    doc = load_json(text, dict)
    ident = clean(doc.get("containerId"), _ID)
    if not ident:
        return []
    args = {a[0]: a[1] for a in doc.get("cniArgs") or [] if isinstance(a, list) and len(a) == 2}
    ips = [str(ip.get("address", "")).split("/")[0]
           for ip in (doc.get("result") or {}).get("ips") or [] if isinstance(ip, dict)]
    out = []
    for m in (doc.get("capabilityArgs") or {}).get("portMappings") or []:
        try:
            proto = Proto(str(m.get("protocol", "tcp")).lower())
            host_ip = str(m.get("hostIP", ""))
            # the container address of the mapping's own family
            cip = next((ip for ip in ips if (":" in ip) == (":" in host_ip)), "")
            out.append(Published(ident, clean(args.get("K8S_POD_NAME")),
                                 str(doc.get("networkName", "")), host_ip,
                                 int(m["hostPort"]), cip, int(m["containerPort"]), proto))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def graphroot_from_conf(text: str) -> str | None:
    """`[storage] graphroot = "..."` from a storage.conf."""
    import tomllib
    try:
        root = tomllib.loads(text).get("storage", {}).get("graphroot")
    except tomllib.TOMLDecodeError:
        return None
    return root if isinstance(root, str) and root else None


def load_json(text: str, kind: type[Any]) -> Any:
    import json  # only where a container is: `who` on a free port stays without it

    try:
        doc = json.loads(text)
    except ValueError:
        return kind()
    return doc if isinstance(doc, kind) else kind()
