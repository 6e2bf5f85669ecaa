"""`portguard discover [--write PATH]`: propose a config from the services listening now.

observe.listeners (every listener, its holder and unit; PID 1's attributed to its .socket
unit) -> decide.proposal (what to guard, grouped by template; the YAML) -> validated with
the config loader itself (the proposal must pass check-config) -> stdout, or PATH written
atomically (mode 0644) and never over an existing file.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from portguard.act import files
from portguard.decide import proposal
from portguard.errors import ConfigError, ExitStatus, PortguardError

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.model import Process
    from portguard.report.output import Output

HEADER = """\
portguard config proposed by `portguard discover` on {host} at {when},
from the service units that listened then. Review it: every service below gets the
default policy (stop its own duplicates; refuse when another program holds a port).
Check it with `portguard check-config`, then `portguard install UNIT` for each."""


def propose(app: App, notes: list[str]) -> str:
    from portguard.observe.kernel.listeners import listeners

    protected: tuple[str, ...] = proposal.DEFAULT_PROTECTED
    if os.path.exists(app.config_path):
        try:
            protected = app.config.protected or protected
        except PortguardError as exc:
            first = exc.message.splitlines()[0]
            notes.append(f"the config {app.config_path} is unusable ({first}); proposing "
                         "the default protected list")
    from portguard.observe.containers.lookup import identifier

    seen = []
    unknown = 0
    names = identifier()
    for lst in listeners():
        sock = lst.socket
        master = min(lst.processes, key=lambda p: p.start_time) if lst.processes else None
        if lst.unknown:
            unknown += 1
        container = names.identify(lst.processes, (sock.local_port, sock.proto))
        seen.append(proposal.Seen(
            lst.unit, sock.local_address, sock.local_port, sock.proto,
            sock.family == socket.AF_INET6, master.pid if master else 0,
            _program(master) if master else "",
            f"{container}: `{container.stop_command}`" if container and container.stop_command
            else str(container or ""),
            master.exe if master and master.program_id and not master.program_id.interpreted
            else "", master.user if master else ""))
    if unknown and os.geteuid() != 0:
        notes.append(f"{unknown} listener(s) of other users could not be read: run as root "
                     "to see every service")
    found, skipped = proposal.entries(seen, protected, _activates(app))
    header = HEADER.format(host=socket.gethostname(),
                           when=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    text = proposal.render(found, skipped, protected, header)
    from portguard.config.schema import loads
    try:
        loads(text, filename="<discover>")
    except ConfigError as exc:  # a bug here, never the user's: say it plainly
        raise PortguardError("the proposed config does not pass check-config:\n"
                             + exc.message) from exc
    return text


def _activates(app: App) -> dict[str, tuple[str, ...]]:
    """Each loaded .socket unit's Triggers=, when systemd's D-Bus API answers."""
    from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
    try:
        systemd = app.connect_systemd()
    except SystemdUnavailable:
        return {}
    try:
        return {u.id: u.triggers for u in systemd.socket_units()}
    except (SystemdError, SystemdUnavailable):
        return {}  # then x.socket is taken to activate x.service
    finally:
        systemd.close()


def _program(proc: Process) -> str:
    """`/usr/sbin/nginx`; for an interpreter also what it runs (`/usr/bin/python3.11
    app.py`); and the title a daemon gave itself, when it differs (redis-server is a
    symlink to redis-check-rdb; nginx calls itself `nginx: master process ...`)."""
    path = proc.exe or (proc.cmdline[0] if proc.cmdline else "?")
    _, space, script = proc.program.partition(" ")
    text = f"{path} {script}" if space else path
    title = " ".join(proc.cmdline).strip()
    if title and title != text and not title.startswith(f"{text} ") and not space:
        text += f" ({title[:57]}...)" if len(title) > 60 else f" ({title})"
    return text


def write_new(path: Path, text: str) -> None:
    """Write `path` atomically, mode 0644, refusing to replace anything already there
    (act.files.write_atomic, exclusive: even a name that appeared a moment ago)."""
    try:
        files.write_atomic(path, text.encode("utf-8"), mode=0o644, exclusive=True)
    except FileExistsError:
        raise PortguardError(f"{path} exists; not overwriting it (remove it first, or "
                             "write elsewhere)") from None
    except OSError as exc:
        raise PortguardError(f"cannot write {path}: {exc.strerror}") from None


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    notes: list[str] = []
    if args.write and os.path.lexists(args.write):  # before looking at anything
        raise PortguardError(f"{args.write} exists; not overwriting it (remove it first, "
                             "or write elsewhere)")
    text = propose(app, notes)
    for note in notes:
        out.error(f"portguard: note: {note}")
    if args.write:
        write_new(Path(args.write), text)
        if out.json:
            out.document({"written": args.write, "config": text, "notes": notes})
        else:
            out.error(f"portguard: wrote {args.write}; check it with `portguard --config "
                      f"{args.write} check-config`")
        return ExitStatus.OK
    if out.json:
        out.document({"config": text, "notes": notes})
    else:
        out.out.write(text)
    return ExitStatus.OK
