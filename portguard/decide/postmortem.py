"""`portguard why`'s judgements: pure functions of what the journal and the system showed.

Which ports a failed unit wanted and where that came from, whether a holder is the unit's
own activation socket, the next step (a command a person can paste) for each kind of
holder that `classify` named, and the exit status. No I/O: the command gathers the facts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from portguard.config.schema import Service
from portguard.decide.bindfail import BindFailure
from portguard.decide.classify import Conflict, Kind
from portguard.errors import ExitStatus
from portguard.model import Holder, Proto
from portguard.observe.systemd import activation

ACTIVATION = "activation"  # the unit's own .socket unit holds it, for it (DESIGN case 7)
RUNNING = "itself"  # the unit runs again and holds it: a failure since resolved
NOT_BLOCKING = ("lingering", RUNNING)  # kinds that leave the port free for the unit


class Source(enum.StrEnum):
    MESSAGE = "message"  # the daemon wrote the port in its failure line
    CONFIG = "config"  # the config declares the unit's ports
    SOCKET_UNIT = "socket unit"  # the unit's .socket units listen there
    LISTENING = "listening now"  # the unit's own processes listen there now


class Wanted(NamedTuple):
    port: int
    proto: Proto
    address: str | None  # as the failure or the declaration names it; None: any
    source: Source
    detail: str  # e.g. the socket unit's name, the config file


class Step(NamedTuple):
    advice: str  # what to do, in words
    command: str  # one line to paste; "" when no command fits


def wanted_ports(failures: Sequence[BindFailure], service: Service | None,
                 sockets: Mapping[str, Sequence[tuple[str, str]]],
                 listening: Iterable[tuple[int, Proto, str]],
                 config_file: str = "") -> list[Wanted]:
    """The ports the failed run wanted: the failure lines' own, else the config's, else
    the unit's socket units', else what the unit listens on now; in that order."""
    out: dict[tuple[int, Proto, str | None], Wanted] = {}
    for f in failures:
        if f.port is not None:
            out.setdefault((f.port, f.proto, f.address),
                           Wanted(f.port, f.proto, f.address, Source.MESSAGE, f.wording))
    if out:
        return list(out.values())
    if service is not None:
        for spec in service.ports:
            for port in spec.ports:
                out.setdefault((port, spec.proto, spec.address),
                               Wanted(port, spec.proto, spec.address, Source.CONFIG,
                                      config_file))
        return list(out.values())
    for name, listens in sockets.items():
        for kind, address in listens:
            parsed = activation.parse_listen(kind, address)
            if parsed is not None:
                proto, host, port = parsed
                out.setdefault((port, proto, host),
                               Wanted(port, proto, host, Source.SOCKET_UNIT, name))
    if out:
        return list(out.values())
    for port, proto, host in listening:
        out.setdefault((port, proto, host), Wanted(port, proto, host, Source.LISTENING, ""))
    return list(out.values())


def is_own_activation(holder: Holder, unit: str) -> bool:
    """PID 1 holds it for a .socket unit that activates `unit` (DESIGN case 7)."""
    return any(p.pid == 1 for p in holder.processes) and activation.held_for(holder.unit, unit)


def template_of(unit: str) -> str:
    """`web@a.service` -> `web@.service`; a plain unit stays itself."""
    prefix, at, rest = unit.partition("@")
    if not at:
        return unit
    return f"{prefix}@.{rest.rpartition('.')[2]}"


def next_step(unit: str, kind: str, conflict: Conflict | None,
              socket_unit: str | None = None) -> Step:
    """What to do about one holder of a port `unit` failed to bind, by its kind."""
    restart = f"systemctl restart {unit}"
    if conflict is None:
        return Step(f"the port is free now: `{restart}`", restart)
    pid = conflict.pids[0] if conflict.pids else None
    if kind == RUNNING:
        return Step(f"{unit} itself holds it: it runs again since that failure; nothing to "
                    "do", "")
    if conflict.holder is not None and conflict.holder.unknown_reason:
        return Step(f"{conflict.holder.unknown_reason}: `sudo portguard why {unit}` names "
                    "it and says what to do", f"sudo portguard why {unit}")
    if kind == ACTIVATION:
        return Step(f"{socket_unit} holds it for {unit}: the service must take the socket "
                    "systemd passes it (sd_listen_fds) instead of binding it itself, or "
                    f"stop the socket unit to let it bind: `systemctl stop {socket_unit}`",
                    f"systemctl stop {socket_unit}")
    holder_unit = socket_unit or conflict.unit
    if conflict.container is not None:  # its runtime stops it; never its conmon's pid
        c = conflict.container
        by = f" (through its {c.via})" if c.via else ""
        return Step(f"{c}{by} holds it: stop the container with its runtime "
                    f"(`{c.stop_command}`), then `{restart}`; or move {unit} to another port",
                    f"{c.stop_command} && {restart}")
    if conflict.untouchable:
        return Step(f"{conflict.untouchable}; portguard never touches it: move {unit} to "
                    "another port or stop that holder yourself", "")
    if kind == Kind.LINGERING:
        return Step("only lingering sockets (a closed connection's TIME_WAIT and the like) "
                    "remain: they expire on their own, and do not block a service that sets "
                    f"SO_REUSEADDR; then `{restart}`", restart)
    if kind == Kind.SELF:
        return Step(f"a process left from {unit}'s previous run still holds it: stop the "
                    f"unit's leftovers, then start it again; `portguard install "
                    f"{template_of(unit)}` makes this automatic",
                    f"systemctl stop {unit} && systemctl start {unit}")
    if kind == Kind.TWIN:
        return Step(f"another instance, {holder_unit}, holds it: stop it, or let portguard "
                    f"do it on every start with `portguard install {template_of(unit)}`",
                    f"systemctl stop {holder_unit}")
    if kind == Kind.STRAY and pid is not None:
        return Step(f"a copy of {unit}'s program started outside it (pid {pid}) holds it: "
                    f"`kill {pid}` then `{restart}`; `portguard install "
                    f"{template_of(unit)}` makes this automatic",
                    f"kill {pid} && {restart}")
    if holder_unit and not holder_unit.endswith(".scope"):
        return Step(f"another service, {holder_unit}, holds it: stop it "
                    f"(`systemctl stop {holder_unit}`) or move {unit} to another port",
                    f"systemctl stop {holder_unit}")
    who = f"pid {pid}" if pid is not None else "a process portguard cannot see"
    return Step(f"{who}, not {unit}'s program, holds it: stop it yourself or move {unit} "
                "to another port", "")


def exit_status(failed: bool, held: bool, port_unknown: bool) -> ExitStatus:
    """0: a bind failure, its ports free now; 1: a port still held (or none known, so
    none known free); 3: no bind failure in the journal."""
    if not failed:
        return ExitStatus.NO_BIND_FAILURE
    return ExitStatus.BLOCKED if held or port_unknown else ExitStatus.OK
