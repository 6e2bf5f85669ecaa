"""`portguard discover`'s proposal: which listening units to guard, and the YAML saying so.

Pure: takes what was seen (`Seen`: one listening socket, the unit it belongs to, its
holder) and returns config text. Instances of a template are grouped under the template
when they bind the same ports (twins: only one runs at a time) and keep their own keys,
commented as the template's, when each binds its own (a template key would make every
instance declare every port, and preflight would stop the others as twins). Units that
should not be guarded by default are comments, with why.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from portguard.config.schema import ALWAYS_PROTECTED, program_path, user_name
from portguard.config.unitnames import instance_template
from portguard.model import Proto
from portguard.text import is_unit_name, shown

DEFAULT_PROTECTED = ("sshd.service", "ssh.service", "dbus.service", "systemd-*.service")
# systemd's own, portguard's, and a user's service manager (what runs under it is the
# user's, never a system service to guard)
NEVER = (*ALWAYS_PROTECTED, "portguard@*.service", "systemd-*",
         "user@*.service", "user-runtime-dir@*.service")


class Seen(NamedTuple):
    unit: str | None  # x.service, x.socket (PID 1 holds it for it), a scope, or None
    address: str
    port: int
    proto: Proto
    family_v6: bool
    pid: int  # the oldest holder (the master), 0 when unknown
    program: str  # its executable, or "" when unknown
    container: str = ""  # the container it is or serves, with its runtime's stop command
    exe: str = ""  # the master's executable when it is no interpreter ("" otherwise)
    user: str = ""  # the master's user


class Entry(NamedTuple):
    key: str  # the services: key (a unit, or a template)
    ports: tuple[str, ...]  # as the config writes them: "0.0.0.0:80/tcp", "[::]:80/tcp"
    comment: str
    program: str = ""  # what its listeners really run (docs/identity.md, "Profiles") ...
    user: str = ""  # ... and as whom: written when every listener agrees


def port_text(s: Seen) -> str:
    host = f"[{s.address}]" if s.family_v6 else s.address
    return f"{host}:{s.port}/{s.proto}"


def _seen_text(items: Sequence[Seen]) -> str:
    """`pid 812 /usr/sbin/nginx, 0.0.0.0:80 and [::]:80`"""
    who = sorted({(s.pid, s.program) for s in items})
    procs = ", ".join(f"pid {pid} {prog}" if pid else "holder unknown" for pid, prog in who)
    ends = [port_text(s).rsplit("/", 1)[0] if s.proto is Proto.TCP else port_text(s)
            for s in items]
    listed = " and ".join(dict.fromkeys(ends))
    return f"{procs}, {listed}"


def _unguarded(unit: str | None, protected: Sequence[str]) -> str:
    """Why a unit is a comment rather than an entry ("" when it is an entry)."""
    if unit is None:
        return "outside any unit"
    if not is_unit_name(unit):
        return "not a name systemd gives a unit"
    if unit.endswith(".socket"):
        return ""  # handled as socket activation
    if any(fnmatch.fnmatchcase(unit, g) for g in NEVER):
        return "systemd's own, portguard's or a user's manager, never guarded"
    if any(fnmatch.fnmatchcase(unit, g) for g in protected):
        return "protected"
    if not unit.endswith(".service"):
        return "not a service (a login session, a container or a scope)"
    return ""


def group_of(unit: str) -> str | None:
    """The template a service instance is proposed under (`web@a.service` ->
    `web@.service`); None for any other unit."""
    return instance_template(unit) if unit.endswith(".service") else None


def entries(seen: Iterable[Seen], protected: Sequence[str],
            activates: Mapping[str, Sequence[str]] | None = None,
            ) -> tuple[list[Entry], list[str]]:
    """(entries, comment lines for what is not guarded), both sorted by unit.
    `activates`: each .socket unit's Triggers= (from D-Bus); without it, x.socket is
    taken to activate x.service, systemd's default."""
    by_unit: dict[str, list[Seen]] = {}
    skipped: list[str] = []
    for s in sorted(seen, key=lambda s: (s.unit or "", s.port, s.proto, s.address)):
        by_unit.setdefault(s.unit or f"pid {s.pid}", []).append(s)
    plain: dict[str, list[Seen]] = {}
    for unit, all_items in by_unit.items():
        # a container's port (its conmon, docker-proxy, or itself): its runtime's business,
        # never a service to guard, even when the helper runs in one (docker.service)
        for s in (s for s in all_items if s.container):
            skipped.append(f"{unit}: {_seen_text([s])} (a container's port, never guarded: "
                           f"{s.container})")
        items = [s for s in all_items if not s.container]
        if not items:
            continue
        real = items[0].unit
        if real is not None and real.endswith(".socket"):
            targets = (activates or {}).get(real) or [real.removesuffix(".socket") + ".service"]
            service = ", ".join(targets)
            skipped.append(f"{service}: socket-activated: PID 1 holds "
                           f"{_seen_text(items).split(', ', 1)[1]} for {real}; systemd "
                           "binds it before the service starts, nothing to guard")
            continue
        why = _unguarded(real, protected)
        if why:
            what = _seen_text(items)
            skipped.append(f"{what} ({why})" if real is None else f"{unit}: {what} ({why})")
        else:
            plain[unit] = items
    out: list[Entry] = []
    templates: dict[str, list[str]] = {}
    for unit in plain:
        t = group_of(unit)
        if t is not None:
            templates.setdefault(t, []).append(unit)
    done: set[str] = set()
    for template, units in templates.items():
        port_sets = {tuple(dict.fromkeys(port_text(s) for s in plain[u])) for u in units}
        if len(port_sets) == 1:
            seen_text = "; ".join(f"{u}: {_seen_text(plain[u])}" for u in units)
            out.append(Entry(template, next(iter(port_sets)), seen_text,
                             *_runs([s for u in units for s in plain[u]])))
            done.update(units)
    for unit, items in plain.items():
        if unit in done:
            continue
        t = group_of(unit)
        note = f" (an instance of {t}; its instances bind different ports)" if t else ""
        out.append(Entry(unit, tuple(dict.fromkeys(port_text(s) for s in items)),
                         f"{unit}: {_seen_text(items)}{note}", *_runs(items)))
    out.sort(key=lambda e: e.key)
    return out, skipped


def _runs(items: Sequence[Seen]) -> tuple[str, str]:
    """(program, user) when all of a unit's listeners' masters agree on both and the
    config would take them; else ("", "")."""
    found = {(s.exe, s.user) for s in items}
    if len(found) != 1:
        return "", ""
    exe, user = found.pop()
    try:
        return program_path(exe), user_name(user)
    except ValueError:
        return "", ""


def render(found: Sequence[Entry], skipped: Sequence[str], protected: Sequence[str],
           header: str) -> str:
    """The config text: commented, and valid for check-config. A comment holds what
    processes chose (paths, titles): `shown`, so nothing in it can end the comment."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["defaults:", "  policy: stop        # stop | wait | fail | warn",
              "  on_foreign: fail    # fail | wait",
              f"protected: {json.dumps(list(protected))}"]
    if not found:
        lines.append("services: {}  # nothing that listens can be guarded")
    else:
        lines.append("services:")
        for e in found:
            lines.append(f"  # {shown(e.comment)}")
            lines.append(f"  {e.key}:")
            lines.append(f"    ports: {json.dumps(list(e.ports))}")
            if e.program:  # what it really runs, for wrapped and self-dropping daemons
                lines.append(f"    program: {json.dumps(e.program)}")
                lines.append(f"    user: {json.dumps(e.user)}")
    if skipped:
        lines.append("")
        lines.append("# Listening, not guarded:")
        lines += [f"#   {shown(s)}" for s in skipped]
    return "\n".join(lines) + "\n"
