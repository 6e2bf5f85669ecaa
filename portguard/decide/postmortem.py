"""`portguard why`'s judgements: pure functions of what the journal and the system showed.

Which ports a failed unit wanted and where that came from, whether a holder is the unit's
own activation socket, the next step (a command a person can paste) for each kind of
holder that `classify` named, and the exit status. No I/O: the command gathers the facts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from portguard.config.schema import Service
from portguard.config.unitnames import instance_template
from portguard.decide.bindfail import BindFailure
from portguard.decide.classify import Conflict, Kind
from portguard.errors import ExitStatus
from portguard.model import JOURNAL_SYSTEMD, Holder, JournalRecord, Proto
from portguard.observe.systemd import activation
from portguard.text import command, is_unit_name, offered, shown, systemctl

# the unit's own .socket unit holds it, for it (docs/commands.md: socket activation)
ACTIVATION = "activation"
RUNNING = "itself"  # the unit runs again and holds it: a failure since resolved
NOT_BLOCKING = ("lingering", RUNNING)  # kinds that leave the port free for the unit


class Source(enum.StrEnum):
    MESSAGE = "message"  # the daemon wrote the port in its failure line
    CONFIG = "config"  # the config declares the unit's ports
    SOCKET_UNIT = "socket unit"  # the unit's .socket units listen there
    LISTENING = "listening now"  # the unit's own processes listen there now
    PROFILE = "profile"  # the unit's learned profile: where its processes listened
    COMMAND_LINE = "command line"  # the unit's ExecStart= or Environment= names it


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
                 config_file: str = "", *,
                 learned: Iterable[tuple[int, Proto, str]] = (),
                 named: Iterable[tuple[int, str]] = ()) -> list[Wanted]:
    """The ports the failed run wanted: the failure lines' own, else the config's, else
    the unit's socket units', else its learned profile's (`learned`), else what its
    command line or environment names (`named`: port, the word), else what the unit
    listens on now; in that order."""
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
    for port, proto, host in learned:
        out.setdefault((port, proto, host), Wanted(port, proto, host, Source.PROFILE, ""))
    if out:
        return list(out.values())
    for port, word in named:
        out.setdefault((port, Proto.TCP, None),
                       Wanted(port, Proto.TCP, None, Source.COMMAND_LINE, word))
    if out:
        return list(out.values())
    for port, proto, host in listening:
        out.setdefault((port, proto, host), Wanted(port, proto, host, Source.LISTENING, ""))
    return list(out.values())


_PORT_OPTION = re.compile(r"--?[\w-]*port$", re.IGNORECASE)
_PORT_VALUE = (
    re.compile(r"^--?[\w-]*port=(\d{1,5})$", re.IGNORECASE),  # --port=8000
    re.compile(r"^(?:\w+_)?PORT=(\d{1,5})$"),  # PORT=8000, HTTP_PORT=8000
    re.compile(r"(?:^|[=@])(?:\[[0-9A-Fa-f:.]+\]|[\w.*-]*):(\d{1,5})$"),  # :8000, 0.0.0.0:8000
)


def ports_in_command(lines: Iterable[Sequence[str]],
                     environment: Iterable[str]) -> list[tuple[int, str]]:
    """The ports a unit's ExecStart= argv and Environment= name, with the word that
    named each: `--port 8000`, `--port=8000`, `--listen-port 8000`, `:8000`,
    `0.0.0.0:8000`, `PORT=8000`. Only what is written there (not `-p`, which means other
    things to other daemons; not a URL's port, often another service's)."""
    out: dict[int, str] = {}
    words = [w for argv in lines for w in (*argv[1:], "")]  # "" ends each line
    for i, word in enumerate(words):
        if _PORT_OPTION.match(word) and words[i + 1].isdigit():
            _add(out, words[i + 1], f"{word} {words[i + 1]}")
            continue
        for pattern in _PORT_VALUE:
            if m := pattern.search(word):
                _add(out, m.group(1), word)
                break
    for assignment in environment:  # only NAME=PORT there: values mean anything
        if m := _PORT_VALUE[1].search(assignment):
            _add(out, m.group(1), assignment)
    return list(out.items())


def _add(out: dict[int, str], digits: str, word: str) -> None:
    if 0 < int(digits) < 65536:
        out.setdefault(int(digits), word)


def is_own_activation(holder: Holder, unit: str) -> bool:
    """PID 1 holds it for a .socket unit that activates `unit` (docs/commands.md: socket
    activation)."""
    return any(p.pid == 1 for p in holder.processes) and activation.held_for(holder.unit, unit)


def next_step(unit: str, kind: str, conflict: Conflict | None,
              socket_unit: str | None = None) -> Step:
    """What to do about one holder of a port `unit` failed to bind, by its kind. Every
    command is built from words (`text.command`); a name no command may carry is shown,
    escaped, and no command is offered for it."""
    restart = systemctl("restart", unit)
    name = shown(unit)
    if conflict is None:
        return Step(f"the port is free now: {offered(restart, 'start it again')}", restart)
    pid = conflict.pids[0] if conflict.pids else None
    if kind == RUNNING:
        return Step(f"{name} itself holds it: it runs again since that failure; nothing to "
                    "do", "")
    if conflict.holder is not None and conflict.holder.unknown_reason:
        again = command("sudo", "portguard", "why", unit) if is_unit_name(unit) else ""
        return Step(f"{conflict.holder.unknown_reason}: {offered(again, 'as root, why')} "
                    "names it and says what to do", again)
    if kind == ACTIVATION:
        stop = systemctl("stop", socket_unit or "")
        return Step(f"{shown(socket_unit or '')} holds it for {name}: the service must take "
                    "the socket systemd passes it (sd_listen_fds) instead of binding it "
                    "itself, or stop the socket unit to let it bind: "
                    f"{offered(stop)}", stop)
    holder_unit = socket_unit or conflict.unit
    template = instance_template(unit) or unit  # what `install` covers it by
    install = offered(command("portguard", "install", template), "") if is_unit_name(
        template) else ""
    automatic = f"; {install} makes this automatic" if install else ""
    if conflict.container is not None:  # its runtime stops it; never its conmon's pid
        c = conflict.container
        by = f" (through its {shown(c.via)})" if c.via else ""
        both = command_and(c.stop_command, restart)
        return Step(f"{c}{by} holds it: stop the container with its runtime "
                    f"({offered(c.stop_command, 'its name is not one to paste')}), then "
                    f"{offered(restart, 'start ' + name)}; or move {name} to another port",
                    both)
    if conflict.untouchable:
        return Step(f"{conflict.untouchable}; portguard never touches it: move {name} to "
                    "another port or stop that holder yourself", "")
    if kind == Kind.LINGERING:
        return Step("only lingering sockets (a closed connection's TIME_WAIT and the like) "
                    "remain: they expire on their own, and do not block a service that sets "
                    f"SO_REUSEADDR; then {offered(restart, 'start it again')}", restart)
    if kind == Kind.SELF:
        return Step(f"a process left from {name}'s previous run still holds it: stop the "
                    f"unit's leftovers, then start it again{automatic}",
                    command_and(systemctl("stop", unit), systemctl("start", unit)))
    if kind == Kind.TWIN:
        stop = systemctl("stop", holder_unit or "")
        return Step(f"another instance, {shown(holder_unit or '?')}, holds it: stop it, or "
                    f"let portguard do it on every start{automatic}", stop)
    if kind == Kind.STRAY and pid is not None:
        kill = command("kill", str(pid))
        return Step(f"a copy of {name}'s program started outside it (pid {pid}) holds it: "
                    f"`{kill}` then {offered(restart, 'start it again')}{automatic}",
                    command_and(kill, restart))
    if holder_unit and not holder_unit.endswith(".scope"):
        stop = systemctl("stop", holder_unit)
        return Step(f"another service, {shown(holder_unit)}, holds it: stop it "
                    f"({offered(stop)}) or move {name} to another port", stop)
    who = f"pid {pid}" if pid is not None else "a process portguard cannot see"
    return Step(f"{who}, not {name}'s program, holds it: stop it yourself or move {name} "
                "to another port", "")


def command_and(first: str, then: str) -> str:
    """`first && then`, or "" unless both could be built."""
    return f"{first} && {then}" if first and then else ""


FAILED = "Failed with result"  # PID 1's words when a run of a unit ends in failure


def run_output(records: Sequence[JournalRecord], main: tuple[str, int] = ("", 0)) -> list[str]:
    """The lines a failed run's own processes wrote, where a bind failure may be read;
    [] when the run did not fail (PID 1 recorded no failure for it).

    Others can put words in a unit's journal: a login attempt as a user named like
    sshd's bind error puts that text in sshd's own auth line, and a server may log a
    request's path. So a bind failure counts only (docs/security.md) from a run that
    failed, and there from PID 1's records about the unit, from the stdout/stderr stream
    systemd gave its processes, or from its main process (`main`: the newest run's
    invocation id and ExecMainPID); never from the per-connection processes a daemon
    forks, which is where a login is logged."""
    if not any(r.transport == JOURNAL_SYSTEMD and FAILED in r.message for r in records):
        return []
    invocation, pid = main
    return [r.message for r in records
            if r.transport in (JOURNAL_SYSTEMD, "stdout")
            or (pid and r.pid == str(pid) and r.invocation == invocation)]


def exit_status(failed: bool, held: bool, port_unknown: bool) -> ExitStatus:
    """0: a bind failure, its ports free now; 1: a port known to be held; 3: no bind
    failure in the journal; 4: a bind failure whose port nothing names (never 1: no port
    is known to be held)."""
    if not failed:
        return ExitStatus.NO_BIND_FAILURE
    if port_unknown:
        return ExitStatus.NO_PORT_FOUND
    return ExitStatus.BLOCKED if held else ExitStatus.OK
