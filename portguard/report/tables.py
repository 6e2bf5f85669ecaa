"""Report: observed facts as a table for people or a JSON document for scripts.

Pure functions of the reports `observe` produced; the CLI only prints what they return.
"""

from __future__ import annotations

import _socket
from collections.abc import Mapping, Sequence

from portguard.model import LINGERING_STATES, Container, Holder, Process, Unit
from portguard.observe.observer import PUBLISHED, PortReport
from portguard.observe.systemd.activation import activated_by_note
from portguard.report.layout import WHO_HEADER, columns, free_row
from portguard.text import offered, shell_join, shown, systemctl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def endpoint(address: str, port: int, family: int) -> str:
    return f"[{address}]:{port}" if family == _socket.AF_INET6 else f"{address}:{port}"


def holder_rows(holder: Holder, kind: str | None = None) -> list[dict[str, Any]]:
    """One JSON row per process holding the socket (prefork workers each get one)."""
    sock = holder.socket
    base: dict[str, Any] = {
        "address": sock.local_address,
        "port": sock.local_port,
        "family": "ipv6" if sock.family == _socket.AF_INET6 else "ipv4",
        "state": sock.state,
        "uid": sock.uid,
        "inode": sock.inode,
    }
    if sock.v6only is not None:
        base["v6only"] = sock.v6only
    if sock.state not in ("LISTEN", "UNCONN"):
        base["remote"] = endpoint(sock.remote_address, sock.remote_port, sock.family)
    unit = holder.unit
    common: dict[str, Any] = {
        "unit": unit.id if unit else None,
        "unit_state": f"{unit.active_state}/{unit.sub_state}" if unit and unit.active_state
        else None,
        "container": container_doc(holder.container),
    }
    if unit is not None and unit.id.endswith(".socket"):
        common["activates"] = list(unit.triggers)  # PID 1 holds it for this socket unit
    if kind is not None:
        common["kind"] = kind
    if holder.notes:
        common["notes"] = list(holder.notes)
    if not holder.processes:
        row = {**base, "pid": None, "user": None, "cmdline": [], **common}
        if holder.unknown_reason:
            row["unknown"] = holder.unknown_reason
        return [row]
    return [{**base, **_process_fields(p), **common} for p in holder.processes]


def container_doc(container: Container | None) -> dict[str, Any] | None:
    """`{"runtime", "name", "id", "image", "via", "source", "stop"}`, "" for what is unknown."""
    if container is None:
        return None
    return {"runtime": container.runtime, "name": container.name or None,
            "id": container.id or None, "image": container.image or None,
            "via": container.via or None, "source": container.source or None,
            "user": container.user or None,
            "stop": container.stop_command or None}


def container_text(container: Container) -> str:
    """`podman container web (94c1a2e552a2, image localhost/web:1)`."""
    details = [d for d in (container.short_id if container.name else "",
                           f"image {shown(container.image)}" if container.image else "") if d]
    whose = f" of user {shown(container.user)}" if container.user else ""
    return f"{shown(container.runtime)} container {container.label}{whose}" + (
        f" ({', '.join(details)})" if details else "")


def container_note(holder: Holder) -> str:
    """Who the container is and the runtime's own command that frees the port."""
    c = holder.container
    if c is None:
        return ""
    by = f"{c.via} for " if c.via else ""
    frees = f"`{c.stop_command}` frees it" if c.stop_command else "its runtime can stop it"
    return f"held by {by}{container_text(c)}: {frees}"


def _process_fields(proc: Process) -> dict[str, Any]:
    return {
        "pid": proc.pid,
        "user": proc.user or None,
        "cmdline": list(proc.cmdline),
        "exe": proc.exe or None,
        "program": proc.program,  # as its admin knows it: redis-server, not redis-check-rdb
        "start_time": proc.start_time,
        "fds": list(proc.fds),
    }


def port_doc(report: PortReport, kinds: Mapping[int, str] | None = None) -> dict[str, Any]:
    """`{"port", "proto", "free", "holders": [...]}` as the contract's (docs/) `--json` promises."""
    holders: list[dict[str, Any]] = []
    for holder in report.holders:
        kind = kinds.get(holder.socket.inode) if kinds is not None else None
        holders.extend(holder_rows(holder, kind))
    doc: dict[str, Any] = {
        "port": report.port,
        "proto": str(report.proto),
        "free": not report.live,
        "holders": holders,
    }
    if report.connections:
        doc["connections"] = report.connections
    if report.unit_source == "cgroup":
        doc["units_from"] = "cgroup (systemd D-Bus unreachable)"
    return doc


def _command(proc: Process) -> str:
    text = shown(shell_join(proc.cmdline)) if proc.cmdline else f"[{shown(proc.exe or '?')}]"
    return text if len(text) <= 60 else text[:57] + "..."


def table(reports: Sequence[PortReport]) -> str:
    """The human view of `who`: one line per holder process, free ports said plainly."""
    header: tuple[str, ...] = WHO_HEADER
    with_containers = any(h.container for rep in reports for h in rep.holders)
    if with_containers:
        header = (*header[:6], "CONTAINER", header[6])
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for rep in reports:
        name = f"{rep.port}/{rep.proto}"
        if not rep.holders:
            rows.append(free_row(name, len(header)))
            continue
        for holder in rep.holders:
            held = _holder_lines(name, holder)
            if with_containers:
                label = holder.container.label if holder.container else "-"
                held = [(*line[:6], label, line[6]) for line in held]
            rows.extend(held)
            notes.extend(f"{name}: {n}" for n in holder.notes)
            if holder.container:
                notes.append(f"{name}: {container_note(holder)}")
            if holder.unit is not None and holder.unit.id.endswith(".socket"):
                notes.append(f"{name}: {socket_note(holder.unit)}")
        if rep.connections:
            notes.append(f"{name}: {rep.connections} accepted connection(s) not listed")
        if not rep.live:
            notes.append(f"{name}: only lingering sockets ({_states(rep)}): free for a "
                         "service that sets SO_REUSEADDR, if the old socket set it too")
        if rep.unit_source == "cgroup":
            notes.append(f"{name}: units named from cgroups: systemd's D-Bus API unreachable")
    return "\n".join(columns(header, rows) + [f"note: {n}" for n in dict.fromkeys(notes)])


def socket_note(unit: Unit) -> str:
    """Why PID 1 holds a port, and what frees it (a socket unit's listener:
    docs/commands.md, socket activation)."""
    return (f"PID 1 (systemd) listens for {activated_by_note(unit)}; "
            f"{offered(systemctl('stop', unit.id), 'stopping it')} frees it")


def _states(rep: PortReport) -> str:
    states = sorted({h.socket.state for h in rep.holders if h.socket.state in LINGERING_STATES})
    return ", ".join(states)


def _holder_lines(name: str, holder: Holder) -> list[tuple[str, ...]]:
    sock = holder.socket
    addr = endpoint(sock.local_address, sock.local_port, sock.family)
    unit = holder.unit.id if holder.unit else "-"
    if holder.unit and holder.unit.active_state:  # known when D-Bus was asked (-v)
        unit = f"{unit} ({holder.unit.active_state})"
    if not holder.processes:
        what = holder.unknown_reason or "(no process: kernel-held)"
        if sock.state == PUBLISHED:
            what = "(no process: the kernel forwards it to " + endpoint(
                sock.remote_address, sock.remote_port, sock.family) + ")"
        user = "-" if not sock.inode else str(sock.uid)  # kernel-held: no owner to name
        return [(name, sock.state, addr, "-", user, unit, what)]
    return [(name, sock.state, addr, str(p.pid), p.user or str(p.uid), unit, _command(p))
            for p in holder.processes]
