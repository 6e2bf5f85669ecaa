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
`Preflight`, which decides the same way with the same functions (`clear`).

It imports no enum, model or conflict rules: the compiled config holds each port as the
service binds it, and the one journal record goes through `report.native`. What it may
import is named in tests/integration/test_fastpath_installed.py (FAST_PATH).
"""

from __future__ import annotations

from portguard.observe.containers import hints
from portguard.observe.kernel import bindable
from portguard.observe.procs import cgroupfs
from portguard.report import native
from portguard.text import format_ports, shown_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from portguard.model import BindIntent, Proto, Socket
    from portguard.report.journal import Journal

    # (address or None, port, "tcp"|"udp", reuse_address, v6only): bind() as the service
    Bind = tuple[str | None, int, str, bool, bool | None]


def clear(unit: str, twin_globs: Iterable[str], ports: Sequence[tuple[int, str]],
          binds: Iterable[Bind]) -> bool:
    """True when no twin is starting, no container runtime publishes one of `ports`, and
    the kernel would let every bind succeed."""
    if starting_twins(unit, twin_globs):
        return False
    if hints.may_publish():
        from portguard.model import Proto
        from portguard.observe.containers import lookup
        if lookup.publishes([(p, Proto(pr)) for p, pr in ports]):  # no socket: bind() works
            return False
    # Without SO_REUSEPORT, bind()'s conflict check ignores the uid: the probe, as root,
    # gets exactly the answer the service will get.
    return not any(bindable.in_use(bindable.bind_as(address, port, tcp=proto == "tcp",
                                                    reuse_address=reuse, v6only=v6only))
                   for address, port, proto, reuse, v6only in binds)


def ports_clear(unit: str, intents: Sequence[BindIntent],
                twin_globs: Iterable[str]) -> bool:
    """`clear` for Preflight's intents; one with SO_REUSEPORT (the kernel's answer depends
    on the uid) is judged from the sockets on its port."""
    ports = sorted({(i.port, str(i.proto)) for i in intents})
    if not clear(unit, twin_globs, ports, [(i.address, i.port, str(i.proto), i.reuse_address,
                                            i.v6only) for i in intents if not i.reuse_port]):
        return False
    shared = [i for i in intents if i.reuse_port]
    if not shared:
        return True
    from portguard.decide import conflicts
    from portguard.observe.kernel import probe, sockets  # netlink: the rare SO_REUSEPORT
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


def clear_message(unit: str, ports: Iterable[tuple[int, str]], how: str) -> str:
    return f"{unit}: {how} ({format_ports(ports)})"


def report_clear(journal: Journal, unit: str, ports: Iterable[tuple[int, Proto]],
                 how: str) -> None:
    from portguard.report.journal import Event
    journal.emit(Event.PORTS_CLEAR, clear_message(unit, ports, how),
                 unit=unit, action="none", result="clear")


def attempt(config_path: str, unit: str, sender: native.Sender) -> bool:
    """Clear `unit` from the compiled config if it can be: True when it was (recorded)."""
    from portguard.config import compiled
    from portguard.config.unitnames import mangle_unit
    unit = mangle_unit(unit)
    entry = compiled.lookup(config_path, unit)
    if entry is None:
        return False
    ports = sorted({(port, proto) for _, port, proto in entry.binds})
    if not clear(unit, entry.twin_globs, ports, [(address, port, proto, entry.reuse_address,
                                                  None) for address, port, proto in entry.binds]):
        return False
    # the record report_clear emits (test_preflight_compiled holds the two the same)
    message = shown_lines(clear_message(unit, ports, "all declared ports are free"))
    sender.deliver(native.standard_fields(message, *native.PORTS_CLEAR, {
        "PORTGUARD_UNIT": unit, "PORTGUARD_ACTION": "none", "PORTGUARD_RESULT": "clear"}))
    return True
