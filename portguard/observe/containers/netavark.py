"""Ports published by netavark, podman's network backend (podman 5's only one): read from
netavark's own records, or from the kernel's NAT rules where it keeps none.

netavark publishes a port with DNAT rules only. podman 4's conmon also held the host port
while it lived; podman 5 holds nothing, so no socket ever shows the container's port.
Two sources, cheapest reliable first, both without podman's CLI or its store's locks:
1. netavark >= 1.10 (Debian 13) writes, per container and network, the mappings it set up
   to `/run/containers/networks/firewall/ports/<network id>_<container id>` (JSON, for its
   own firewall reloads) and removes the file at teardown.
2. netavark 1.4 (Debian 12) writes no such file, only iptables rules, each hostport rule
   commented `dnat name: NET id: CONTAINER_ID`; they are read with `iptables-save -t nat`
   (and ip6tables-save), only when podman's network setup ran since boot and no records
   directory exists: 5.6 ms for both, measured in the Debian 12 root on the 2-core host
   (the records: 3.9 ms in the Debian 13 root). Only where no socket answered already
   (`hints.may_publish` first: most hosts read nothing).
Parsing is pure; `published(read, listdir, run)` does the reading with the callables given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from portguard.model import Proto
from portguard.observe.containers import hints
from portguard.observe.containers.records import Published, clean, load_json

SAVE = (("/usr/sbin/iptables-save", "-t", "nat"), ("/usr/sbin/ip6tables-save", "-t", "nat"))
MAX_RANGE = 1024  # a mapping's range, expanded port by port: bounded
_ID = r"[0-9a-f]{12,64}"
_COMMENT = "dnat name: "


def parse_ports_record(text: str) -> list[Published]:
    """One `firewall/ports/<net>_<id>` file -> the mappings it records."""
    doc = load_json(text, dict)
    ident = clean(doc.get("container_id"), _ID)
    if not ident:
        return []
    network = clean(doc.get("network_name")) or ""
    out = []
    for m in doc.get("port_mappings") or []:
        try:
            host_ip = str(m.get("host_ip") or "")
            cip = str(doc.get("container_ip_v6" if ":" in host_ip else "container_ip_v4") or "")
            count = min(max(int(m.get("range") or 1), 1), MAX_RANGE)
            for i in range(count):
                out.append(Published(ident, "", network, host_ip, int(m["host_port"]) + i,
                                     cip, int(m["container_port"]) + i,
                                     Proto(str(m.get("protocol", "tcp")).lower())))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return out


def _args(line: str) -> dict[str, str]:
    """`-A CHAIN -p tcp -m tcp --dport 8080 -m comment --comment "x y" -j T` -> options."""
    import shlex

    try:
        words = shlex.split(line)
    except ValueError:
        return {}
    out: dict[str, str] = {}
    for key, value in zip(words, [*words[1:], ""], strict=True):
        if key.startswith("-") and not value.startswith("-"):
            out.setdefault(key, value)
    return out


def _ports(spec: str) -> range:
    low, _, high = spec.partition(":")
    first = int(low)
    last = int(high) if high else first
    return range(first, min(last, first + MAX_RANGE - 1) + 1)


def parse_nat_rules(text: str) -> list[Published]:
    """iptables-save's nat table -> netavark's published ports.

    netavark 1.4: NETAVARK-HOSTPORT-DNAT jumps, per container, to its NETAVARK-DN-<net>
    chain with a rule commented `dnat name: NET id: ID` on the host port; that chain's
    DNAT rule (`-d HOST_IP` when one was given) sends it to `--to-destination IP:PORT`.
    """
    owners: dict[tuple[str, str, str], tuple[str, str]] = {}  # (chain, proto, dport) -> id
    dnats = []
    for line in text.splitlines():
        if not line.startswith("-A NETAVARK-"):
            continue
        a = _args(line)
        chain, comment = a.get("-A", ""), a.get("--comment", "")
        key = (a.get("-j", ""), a.get("-p", "tcp"), a.get("--dport", ""))
        if chain == "NETAVARK-HOSTPORT-DNAT" and comment.startswith(_COMMENT):
            net, _, ident = comment[len(_COMMENT):].partition(" id: ")
            if clean(ident, _ID):
                owners[key] = (ident, clean(net))
        elif a.get("-j") == "DNAT" and "--to-destination" in a:
            dnats.append(a)
    out = []
    for a in dnats:
        proto, dport = a.get("-p", "tcp"), a.get("--dport", "")
        found = owners.get((a.get("-A", ""), proto, dport))
        dest, _, cport = a["--to-destination"].rpartition(":")
        try:
            if found is None or proto not in ("tcp", "udp"):
                continue
            host_ip = a.get("-d", "").split("/")[0]
            cfirst = int(cport.split("-")[0])
            for i, port in enumerate(_ports(dport)):
                out.append(Published(found[0], "", found[1], host_ip, port,
                                     dest.strip("[]"), cfirst + i, Proto(proto)))
        except ValueError:
            continue
    return out


def _run(argv: Sequence[str]) -> str:
    import subprocess

    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=5,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def published(read: Callable[[str], str | None], listdir: Callable[[str], list[str]],
              run: Callable[[Sequence[str]], str] = _run) -> list[Published]:
    """Every port netavark publishes now, from its records or else the NAT rules."""
    if os.path.isdir(hints.NETAVARK_PORTS):
        return [p for f in listdir(hints.NETAVARK_PORTS) for p in parse_ports_record(
            read(f"{hints.NETAVARK_PORTS}/{f}") or "")]
    if not os.path.exists(hints.NETAVARK_IPAM):
        return []  # netavark has set up no network since boot
    return [p for argv in SAVE if os.path.exists(argv[0]) for p in parse_nat_rules(run(argv))]
