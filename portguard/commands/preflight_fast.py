"""Preflight's fast path: every declared port free, no twin starting -> exit 0 at once.

One sock_diag query, a glance at the cgroup tree for a twin instance that is starting, and
a bind() probe per port; no D-Bus, no pystemd, no locks. `Preflight` asks `ports_clear`
first; `portguard preflight UNIT` asks `attempt` before the command line is even parsed,
with the config compiled by an earlier full load (portguard.config.compiled), so a
guarded start on free ports pays neither argparse nor PyYAML. Anything else (not
compiled, not declared, a port held, a twin starting) goes the whole way through
`Preflight`, which decides the same way with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from portguard.decide import bind_probe, conflicts
from portguard.model import format_ports
from portguard.observe import container_hints, processes, sockets
from portguard.report.journal import Event

if TYPE_CHECKING:
    from portguard.model import Proto, Socket
    from portguard.report.journal import Journal


def ports_clear(unit: str, intents: Sequence[conflicts.BindIntent],
                twin_globs: Iterable[str]) -> bool:
    """True when no twin is starting and the kernel would let every intent bind."""
    if starting_twins(unit, twin_globs):
        return False
    ports = sorted({(i.port, i.proto) for i in intents})
    if container_hints.may_publish():
        from portguard.observe import containers
        if containers.publishes(ports):  # a container's port, no socket: bind() works
            return False
    found = sockets.on_ports(ports)
    kernel = bind_probe.Kernel()  # no owners read here: bind() decides what rules cannot
    return all(conflicts.judge(i, on_port(found, i.port, i.proto), kernel).free
               for i in intents)


def starting_twins(unit: str, twin_globs: Iterable[str]) -> list[str]:
    """Twin units with live processes (running or starting), seen in the cgroup tree."""
    names: set[str] = set()
    for glob in twin_globs:
        names.update(processes.populated_cgroups(glob))
    names.discard(unit)
    return sorted(names)


def on_port(found: Iterable[Socket], port: int, proto: Proto) -> list[Socket]:
    return [s for s in found if s.local_port == port and s.proto == proto]


def report_clear(journal: Journal, unit: str, ports: Iterable[tuple[int, Proto]],
                 how: str) -> None:
    journal.emit(Event.PORTS_CLEAR, f"{unit}: {how} ({format_ports(ports)})",
                 unit=unit, action="none", result="clear")


def attempt(config_path: str, unit: str, journal: Journal) -> bool:
    """Clear `unit` from the compiled config if it can be: True when it was (recorded)."""
    from portguard.config import compiled
    from portguard.config.unitnames import mangle_unit
    unit = mangle_unit(unit)
    entry = compiled.lookup(config_path, unit)
    if entry is None:
        return False
    try:
        intents = [i for spec in entry.specs
                   for i in conflicts.intents(spec, reuse_address=entry.reuse_address)]
    except ValueError:
        return False  # the full load says why
    if not ports_clear(unit, intents, entry.twin_globs):
        return False
    report_clear(journal, unit, sorted({(i.port, i.proto) for i in intents}),
                 "all declared ports are free")
    return True
