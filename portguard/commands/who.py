"""`portguard who PORT[/PROTO] ...`: who holds these ports, as a table or JSON.

With an address (`who 127.0.0.2:8080/udp`) or `--[no-]reuse-address`, `who` asks
preflight's question instead: could a service bind() this, with these options, now, and
which holders stop it? The answer is `conflicts.judge`'s, as for preflight and status.
"""

from __future__ import annotations

from collections.abc import Sequence

from portguard.errors import ExitStatus, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from portguard.app import App
    from portguard.decide.conflicts import Judgement
    from portguard.model import BindIntent, PortSpec, Proto
    from portguard.observe.observer import PortReport
    from portguard.report.output import Output


def _specs(texts: Sequence[str]) -> list[PortSpec]:
    from portguard.config.values import port_spec
    specs = []
    for text in texts:
        try:
            specs.append(port_spec(text))
        except ValueError as exc:
            raise UsageError(f"bad port '{text}': {exc}") from None
    return specs


def parse_port_args(texts: Sequence[str]) -> list[tuple[int, Proto]]:
    """`8080`, `5353/udp`, `7000-7010/tcp` -> (port, proto) pairs, in order, no repeats."""
    wanted: dict[tuple[int, Proto], None] = {}
    for spec in _specs(texts):
        for port in spec.ports:
            wanted[(port, spec.proto)] = None
    return list(wanted)


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """Exit 0 when every port is free, 1 when any is held (or, asked as a service would
    bind, when any such bind() would fail)."""
    reuse: bool | None = getattr(args, "reuse_address", None)
    if reuse is not None or any(":" in text for text in args.ports):  # an address
        return _ask(args.ports, True if reuse is None else reuse, app, out)
    from portguard.model import Proto
    from portguard.observe.kernel.bindable import nothing_bound
    from portguard.report import tables
    # The table shows each holder's unit, which its cgroup names exactly; only --json and
    # -v show the unit's state, which takes systemd's D-Bus API (and ~30 ms of imports).
    app.unit_states = out.json or out.verbosity > 0
    read = getattr(args, "pairs", None)  # who_fast read them already
    pairs = [(p, Proto(x)) for p, x in read] if read else parse_port_args(args.ports)
    # A port bind() shows empty is not dumped: sock_diag walks every socket of the host.
    # The table names who holds a port: where a listener does, its accepted connections
    # and lingering sockets (the whole walk of the host's sockets) only with --json / -v.
    reports = app.observer.ports(pairs, empty=nothing_bound,
                                 listeners_decide=not app.unit_states)
    if out.json:
        out.document({"ports": [tables.port_doc(r) for r in reports]})
    else:
        out.result(tables.table(reports))
    return ExitStatus.BLOCKED if any(r.live for r in reports) else ExitStatus.OK


def judged_doc(rep: PortReport, judged: Judgement) -> dict[str, Any]:
    """The port document of `who --json`, "free" meaning the bind() asked would succeed
    and each holder row saying whether it "blocks" it (status uses it too)."""
    from portguard.report import tables
    doc = tables.port_doc(rep)
    doc["free"] = judged.free
    doc["holders"] = [{**row, "blocks": any(h.socket is b for b in judged.blockers)}
                      for h in rep.holders for row in tables.holder_rows(h)]
    return doc


def _question(intent: BindIntent) -> str:
    flag = "SO_REUSEADDR" if intent.reuse_address else "no SO_REUSEADDR"
    return f"bind {intent} with {flag}"


def _answer(intent: BindIntent, rep: PortReport, judged: Judgement) -> str:
    from portguard.report.tables import endpoint
    if judged.free:
        return f"{_question(intent)}: free"
    if judged.unseen:
        return f"{_question(intent)}: REFUSED by bind(), no socket on it visible"
    named = []
    for holder in rep.holders:
        sock = holder.socket
        if any(sock is b for b in judged.blockers):
            who = ", ".join(f"pid {p.pid} ({p.program})" for p in holder.processes) or (
                holder.unknown_reason or "kernel-held, expires on its own")
            addr = endpoint(sock.local_address, sock.local_port, sock.family)
            named.append(f"{sock.state} {addr} {who}")
    return f"{_question(intent)}: BLOCKED by " + "; ".join(dict.fromkeys(named))


def _ask(texts: Sequence[str], reuse: bool, app: App, out: Output) -> ExitStatus:
    from portguard.decide import conflicts
    from portguard.observe.kernel import probe
    from portguard.report import tables
    intents: dict[BindIntent, None] = {}
    for spec in _specs(texts):
        try:
            intents.update(dict.fromkeys(conflicts.intents(spec, reuse_address=reuse)))
        except ValueError as exc:
            raise UsageError(f"bad port '{spec}': {exc}") from None
    app.unit_states = out.json or out.verbosity > 0
    pairs = list(dict.fromkeys((i.port, i.proto) for i in intents))
    by_pair = dict(zip(pairs, app.observer.ports(pairs), strict=True))
    answers = []
    for intent in intents:
        rep = by_pair[(intent.port, intent.proto)]
        answers.append((intent, rep, conflicts.judge(
            intent, [h.socket for h in rep.holders], probe.Kernel(rep.holders))))
    if out.json:
        out.document({"ports": [{**judged_doc(rep, j), "address": i.address,
                                 "reuse_address": i.reuse_address, "question": _question(i)}
                                for i, rep, j in answers]})
    else:
        held = [by_pair[p] for p in pairs if by_pair[p].holders]
        lines = [_answer(i, rep, j) for i, rep, j in answers]
        out.result("\n".join([*lines, *(["", *tables.table(held).splitlines()]
                                        if held else [])]))
    return ExitStatus.OK if all(j.free for _, _, j in answers) else ExitStatus.BLOCKED
