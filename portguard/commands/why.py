"""`portguard why UNIT`: why did UNIT fail to bind, who holds its port now, what to do.

journal (the unit's and its sockets' recent invocations, newest first) -> bindfail (the
failure lines) -> postmortem.wanted_ports (message, else config, else socket units, else
what the unit listens on now) -> Observer (who holds each port, as `who`) -> classify
(what each holder is for this unit) -> postmortem.next_step. Needs no config: a missing
one is no error, a broken one is said and then ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from portguard.config.unitnames import instance_template, mangle_unit
from portguard.decide import bindfail, postmortem
from portguard.decide.postmortem import ACTIVATION, Step, Wanted
from portguard.errors import ConfigError, ExitStatus, PortguardError, UsageError
from portguard.model import BindIntent, JournalRecord, Proto
from portguard.observe.systemd import journal
from portguard.observe.systemd.journal import Invocation
from portguard.report.layout import columns
from portguard.text import shown

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.config.schema import Config, Service
    from portguard.decide.classify import Conflict
    from portguard.model import Holder
    from portguard.observe.systemd.units import Systemd
    from portguard.report.output import Output

OWN_IDENTIFIER = "portguard"  # our own preflight's records are not the daemon's words
LAST_LINES = 8


class PortAnswer(NamedTuple):
    wanted: Wanted
    holders: tuple[tuple[Holder, str, Conflict | None, str | None], ...]  # holder, kind,
    steps: tuple[Step, ...]  # conflict, socket unit

    @property
    def held(self) -> bool:
        return any(kind not in postmortem.NOT_BLOCKING for _, kind, _, _ in self.holders)


class Answer(NamedTuple):
    unit: str
    invocation: Invocation | None  # the run with the bind failure, else the newest
    failures: tuple[bindfail.BindFailure, ...]
    ports: tuple[PortAnswer, ...]
    notes: tuple[str, ...]
    status: ExitStatus


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    answer = explain(app, args.unit)
    if out.json:
        out.document(document(answer))
    else:
        out.result(render(answer))
    return answer.status


def explain(app: App, unit_arg: str) -> Answer:
    unit = mangle_unit(unit_arg)
    if "@." in unit:
        raise UsageError(f"{unit} is a template: name the instance that failed, e.g. "
                         f"{unit.replace('@.', '@NAME.')}")
    notes: list[str] = []
    cfg = _config(app, notes)
    service = cfg.service_for(unit) if cfg else None
    systemd = _connect(app, notes)
    sockets: dict[str, tuple[tuple[str, str], ...]] = {}
    if systemd is not None:
        sockets = _socket_units(systemd, unit, notes)
    read = journal.invocations([unit, *(s for s in sockets if s != unit)])
    if read.warning:
        notes.append(f"journalctl: {read.warning}")
    runs = sorted(read.invocations, key=lambda i: i.records[-1].usec if i.records else 0,
                  reverse=True)
    chosen, failures = _failed_run(runs, _last_run(systemd, unit))
    if not failures:
        if not runs:
            notes.append(f"the journal has no run of {unit}: it never ran here, or its "
                         "records were rotated away")
        return Answer(unit, runs[0] if runs else None, (), (), tuple(notes),
                      postmortem.exit_status(False, False, False))
    unnamed = service is None and not any(f.port for f in failures) and not sockets
    listening = _listening_now(unit) if unnamed else []
    wanted = postmortem.wanted_ports(
        failures, service, sockets, listening, str(app.config_path),
        learned=_learned_ports(unit, notes) if unnamed else (),
        named=_named_ports(systemd, unit) if unnamed else ())
    if not wanted:
        notes.append("the failure names no port, and no config, socket unit, profile, "
                     f"command line or running process of {unit} says which: `portguard "
                     "who PORT` once you know it")
    ports = _answer_ports(app, unit, service=service, cfg=cfg, systemd=systemd,
                          wanted=wanted)
    status = postmortem.exit_status(True, any(p.held for p in ports), not wanted)
    return Answer(unit, chosen, tuple(failures), tuple(ports), tuple(notes), status)


def _config(app: App, notes: list[str]) -> Config | None:
    """The config if there is a good one; a broken one is said, then done without."""
    path = app.config_path
    if not os.path.exists(path):
        return None
    try:
        return app.config
    except ConfigError as exc:
        notes.append(f"the config {path} is broken ({exc.problems[0]}"
                     f"{'; ...' if len(exc.problems) > 1 else ''}); answering without it")
    except PortguardError as exc:
        notes.append(f"the config {path} is unusable ({exc.message}); answering without it")
    return None


def _connect(app: App, notes: list[str]) -> Systemd | None:
    from portguard.observe.systemd.dbus_errors import SystemdUnavailable
    try:
        return app.connect_systemd()
    except SystemdUnavailable as exc:
        notes.append(f"systemd's D-Bus API is unreachable ({exc.message}): no socket "
                     "units, and holders' units come from their cgroups")
        return None


def _socket_units(systemd: Systemd, unit: str, notes: list[str],
                  ) -> dict[str, tuple[tuple[str, str], ...]]:
    from portguard.observe.systemd.dbus_errors import SystemdError
    try:
        if systemd.load_state(unit) == "not-found":
            notes.append(f"systemd knows no unit {unit} (no unit file)")
            return {}
        found = [systemd.describe_socket(unit)] if unit.endswith(".socket") else \
            systemd.activation_sockets(unit)
        return {u.id: u.listen for u in found}
    except SystemdError as exc:
        notes.append(f"could not read {unit}'s socket units: {exc.message}")
        return {}


def _failed_run(runs: Sequence[Invocation], main: tuple[str, int],
                ) -> tuple[Invocation | None, list[bindfail.BindFailure]]:
    """The newest failed run whose own output reports a bind failure, and its failures
    (postmortem.run_output: never words others put in the unit's journal)."""
    for inv in runs:
        own = [r for r in inv.records if r.identifier != OWN_IDENTIFIER]
        found = bindfail.find(postmortem.run_output(own, main))
        if found:
            return inv, found
    return (runs[0] if runs else None), []


def _last_run(systemd: Systemd | None, unit: str) -> tuple[str, int]:
    from portguard.observe.systemd.dbus_errors import SystemdError
    if systemd is None:
        return "", 0
    try:
        return systemd.last_run(unit)
    except SystemdError:
        return "", 0


def _listening_now(unit: str) -> list[tuple[int, Any, str]]:
    from portguard.observe.kernel.listeners import listeners
    return [(lst.socket.local_port, lst.socket.proto, lst.socket.local_address)
            for lst in listeners() if lst.unit == unit]


def _learned_ports(unit: str, notes: list[str]) -> list[tuple[int, Proto, str]]:
    """Where the unit's own processes listened when its profile was learned."""
    from portguard.observe import profiles
    try:
        learned = profiles.load(unit)
    except profiles.Unusable as exc:
        notes.append(f"{unit}'s profile is not used: {exc}")
        return []
    return [(s.port, s.proto, s.address) for s in learned.sockets] if learned else []


def _named_ports(systemd: Systemd | None, unit: str) -> list[tuple[int, str]]:
    """The ports the unit's ExecStart= lines and Environment= name."""
    from portguard.observe.systemd.dbus_errors import SystemdError, as_text
    from portguard.observe.systemd.units import SERVICE_IFACE
    if systemd is None:
        return []
    try:
        lines = systemd.describe(unit).exec_start
        env = systemd.properties(systemd.unit_path(unit), SERVICE_IFACE).get(
            "Environment", ())
    except SystemdError:
        return []
    return postmortem.ports_in_command(lines, [as_text(e) for e in env])


def _answer_ports(app: App, unit: str, *, service: Service | None, cfg: Config | None,
                  systemd: Systemd | None,
                  wanted: Sequence[Wanted]) -> list[PortAnswer]:
    from portguard.commands.preflight import service_context
    from portguard.config.schema import Service
    from portguard.decide import conflicts
    from portguard.decide.classify import classify_holder

    svc = service or Service(instance_template(unit) or unit, ())
    ctx = service_context(unit, svc, systemd, cfg.protected if cfg else ())
    running = ctx.unit_info is not None and ctx.unit_info.active_state in (
        "active", "reloading")
    reports = app.observer.ports(list(dict.fromkeys((w.port, w.proto) for w in wanted)))
    answers = []
    for want in wanted:
        rep = next(r for r in reports if (r.port, r.proto) == (want.port, want.proto))
        intent = BindIntent(want.address, want.port, want.proto)
        rows = []
        steps: list[Step] = []
        for holder in rep.holders:
            if not conflicts.overlaps(intent, holder.socket):
                continue  # 127.0.0.2:P does not stand in the way of 127.0.0.1:P
            sock_unit = holder.unit.id if holder.unit and holder.unit.id.endswith(
                ".socket") else None  # PID 1 holds it for that socket unit
            conflict = classify_holder(ctx, holder)
            kind = str(conflict.kind)
            if postmortem.is_own_activation(holder, unit):
                kind = ACTIVATION
            elif conflict.kind == "self" and running:
                kind = postmortem.RUNNING
            rows.append((holder, kind, conflict, sock_unit))
            step = postmortem.next_step(unit, kind, conflict, sock_unit)
            if step not in steps:
                steps.append(step)
        if not rows:
            steps.append(postmortem.next_step(unit, "", None))
        answers.append(PortAnswer(want, tuple(rows), tuple(steps)))
    return answers


# -- output ---------------------------------------------------------------------------

def _holder_text(holder: Holder, sock_unit: str | None) -> tuple[str, str, str, str]:
    """PID, USER, UNIT, COMMAND columns."""
    from portguard.report.tables import endpoint
    unit = sock_unit or (holder.unit.id if holder.unit else "-")
    container = f" ({holder.container})" if holder.container else ""
    if not holder.processes:
        what = holder.unknown_reason or f"({holder.socket.state}, no process)"
        return "-", "-", unit, what + container
    p = holder.processes[0]
    more = f" (+{len(holder.processes) - 1})" if len(holder.processes) > 1 else ""
    sock = holder.socket
    where = endpoint(sock.local_address, sock.local_port, sock.family)
    return f"{p.pid}{more}", p.user or str(p.uid), unit, f"{p.program} on {where}{container}"


def _quoted(r: JournalRecord) -> str:
    """One journal line as the journal has it: its text is the process's, so `shown`."""
    return f"  {r.time} {shown(r.identifier)}[{r.pid}]: {shown(r.message)}"


def render(answer: Answer) -> str:
    lines: list[str] = []
    inv = answer.invocation
    if not answer.failures:
        lines.append(f"{answer.unit}: the journal shows no bind failure"
                     + (f" (newest run: {inv.started}, invocation {inv.id or '?'})"
                        if inv else ""))
        if inv:
            lines.append("its last lines, as the journal has them:")
            lines += [_quoted(r) for r in inv.records[-LAST_LINES:]]
            lines.append("the port is not the cause of this failure.")
        lines += [f"note: {n}" for n in answer.notes]
        return "\n".join(lines)
    assert inv is not None
    where = f"{inv.unit}, " if inv.unit != answer.unit else ""  # e.g. its .socket unit
    lines.append(f"{answer.unit} failed to bind in its run of {inv.started} "
                 f"({where}invocation {inv.id or '?'}):")
    unshown = {f.line for f in answer.failures}
    for r in inv.records:  # each failure line once, as the journal shows it
        if r.message in unshown:
            unshown.discard(r.message)
            lines.append(_quoted(r))
    header = ("PORT", "ADDRESS", "FROM", "STATE", "PID", "USER", "UNIT", "KIND", "HOLDER")
    rows: list[tuple[str, ...]] = []
    for p in answer.ports:
        w = p.wanted
        base = (f"{w.port}/{w.proto}", w.address or "*", str(w.source))
        if not p.holders:
            rows.append((*base, "free", "", "", "", "", ""))
        for holder, kind, _, sock_unit in p.holders:
            pid, user, unit, what = _holder_text(holder, sock_unit)
            state = holder.socket.state if kind == "lingering" else (
                "its own" if kind == postmortem.RUNNING else "held")
            rows.append((*base, state,
                         pid, user, unit, kind, what))
    if rows:
        lines += columns(header, rows)
    said: set[tuple[str, Step]] = set()  # a port declared per address: its steps once
    for p in answer.ports:
        name = f"{p.wanted.port}/{p.wanted.proto}"
        for step in p.steps:
            if (name, step) in said:
                continue
            said.add((name, step))
            lines.append(f"{name}: {step.advice}")
            if step.command:
                lines.append(f"  $ {step.command}")
    lines += [f"note: {n}" for n in answer.notes]
    return "\n".join(lines)


def document(answer: Answer) -> dict[str, Any]:
    from portguard.report.tables import holder_rows
    inv = answer.invocation
    doc: dict[str, Any] = {
        "unit": answer.unit,
        "bind_failure": bool(answer.failures),
        "invocation": {"id": inv.id, "unit": inv.unit, "started": inv.started}
        if inv else None,
        "failures": [{"wording": f.wording, "address": f.address, "port": f.port,
                      "proto": str(f.proto), "line": f.line} for f in answer.failures],
        "ports": [],
        "exit_status": int(answer.status),
        "notes": list(answer.notes),
    }
    for p in answer.ports:
        w = p.wanted
        holders = []
        for holder, kind, conflict, sock_unit in p.holders:
            for row in holder_rows(holder, kind):
                row["reason"] = conflict.reason if conflict else ""
                if sock_unit:
                    row["socket_unit"] = sock_unit
                holders.append(row)
        doc["ports"].append({
            "port": w.port, "proto": str(w.proto), "address": w.address,
            "source": str(w.source), "source_detail": w.detail, "free": not p.held,
            "holders": holders,
            "next": [{"advice": s.advice, "command": s.command} for s in p.steps],
        })
    if not answer.failures and inv:
        doc["journal"] = [{"time": r.time, "identifier": r.identifier, "pid": r.pid,
                           "message": r.message} for r in inv.records[-LAST_LINES:]]
    return doc
