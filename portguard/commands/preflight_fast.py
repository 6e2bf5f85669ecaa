"""Preflight's fast path: every declared port free, no twin starting -> exit 0 at once.

A glance at the cgroup tree for a twin instance that is starting, and a bind() probe per
port, made as the service will bind; no sock_diag, no D-Bus, no pystemd, no locks. A probe
that binds is the kernel's own verdict, whatever else lies on the port, and costs the same
on any host, where a sock_diag dump walks every socket the host has (bench/: ~18 ms with
50,000). Only an intent the probe cannot stand in for (SO_REUSEPORT: the kernel's answer
depends on the uid) is judged from the sockets on its port. `Preflight` asks `ports_clear`
first; `portguard preflight UNIT` asks `attempt` before the command line is even parsed,
with the config compiled by an earlier full load (portguard.config.compiled), so a
guarded start on free ports pays neither argparse nor PyYAML. Anything else (not
compiled, not declared, a port held, a twin starting) goes the whole way through
`Preflight`, which decides the same way with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from portguard.decide import conflicts
from portguard.model import BindIntent, format_ports
from portguard.observe.containers import hints
from portguard.observe.kernel import probe
from portguard.observe.procs import cgroupfs
from portguard.report.journal import Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portguard.model import Proto, Socket
    from portguard.report.journal import Journal


def ports_clear(unit: str, intents: Sequence[BindIntent],
                twin_globs: Iterable[str]) -> bool:
    """True when no twin is starting and the kernel would let every intent bind."""
    if starting_twins(unit, twin_globs):
        return False
    ports = sorted({(i.port, i.proto) for i in intents})
    if hints.may_publish():
        from portguard.observe.containers import lookup
        if lookup.publishes(ports):  # a container's port, no socket: bind() works
            return False
    # Without SO_REUSEPORT, bind()'s conflict check ignores the uid: the probe, as root,
    # gets exactly the answer the service will get.
    if any(probe.refused(i) for i in intents if not i.reuse_port):
        return False
    shared = [i for i in intents if i.reuse_port]
    if not shared:
        return True
    from portguard.observe.kernel import sockets  # netlink: only for the rare SO_REUSEPORT
    found = sockets.on_ports(sorted({(i.port, i.proto) for i in shared}))
    kernel = probe.Kernel()  # no owners read here: bind() decides what rules cannot
    return all(conflicts.judge(i, on_port(found, i.port, i.proto), kernel).free
               for i in shared)


def starting_twins(unit: str, twin_globs: Iterable[str]) -> list[str]:
    """Twin units with live processes (running or starting), seen in the cgroup tree."""
    names: set[str] = set()
    for glob in twin_globs:
        names.update(cgroupfs.populated_cgroups(glob))
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
