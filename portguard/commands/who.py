"""`portguard who PORT[/PROTO] ...`: who holds these ports, as a table or JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from portguard.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.model import Proto
    from portguard.report.output import Output


def parse_port_args(texts: Sequence[str]) -> list[tuple[int, Proto]]:
    """`8080`, `5353/udp`, `7000-7010/tcp` -> (port, proto) pairs, in order, no repeats."""
    from portguard.config.values import port_spec
    wanted: dict[tuple[int, Proto], None] = {}
    for text in texts:
        try:
            spec = port_spec(text)
        except ValueError as exc:
            raise UsageError(f"bad port '{text}': {exc}") from None
        for port in spec.ports:
            wanted[(port, spec.proto)] = None
    return list(wanted)


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """Exit 0 when every port is free, 1 when any is held."""
    from portguard.report import tables
    # The table shows each holder's unit, which its cgroup names exactly; only --json and
    # -v show the unit's state, which takes systemd's D-Bus API (and ~30 ms of imports).
    app.unit_states = out.json or out.verbosity > 0
    reports = app.observer.ports(parse_port_args(args.ports))
    if out.json:
        out.document({"ports": [tables.port_doc(r) for r in reports]})
    else:
        out.result(tables.table(reports))
    return ExitStatus.BLOCKED if any(r.live for r in reports) else ExitStatus.OK
