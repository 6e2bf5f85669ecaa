"""The daemon's metrics: Prometheus text exposition (format 0.0.4) for node_exporter.

`portguard daemon` with `daemon: metrics_file:` set writes one file after every pass, for
node_exporter's textfile collector (`--collector.textfile.directory`, on Debian
/var/lib/prometheus/node-exporter). `render` builds the text; `write_atomic` replaces the
file so that the collector, which reads `*.prom` whenever it is scraped, only ever sees a
whole file: a temporary file in the same directory (named `.NAME.PID.RANDOM.tmp`, which
the collector's `*.prom` glob skips), written, fsync'ed, chmod 0644, then rename(2)'d
over NAME.

The metrics (all prefixed `portguard_`; every family has HELP and TYPE lines):

| metric | type | labels | value |
|---|---|---|---|
| `port_held` | gauge | service, unit, port, proto | 1 held at the last pass, 0 free |
| `port_holder_kind` | gauge | service, unit, port, proto, kind | 1 the holder's kind, else 0 |
| `conflicts_resolved_total` | counter | service | conflicts resolved since the daemon started |
| `refusals_total` | counter | service | conflicts refused (reported, not resolved) |
| `flapping` | gauge | service | 1 while the flap guard holds one of its conflicts |
| `last_pass_duration_seconds` | gauge | | how long the last pass took |
| `last_pass_timestamp_seconds` | gauge | | Unix time the last pass finished |
| `services` | gauge | | services in the config |
| `process_resident_memory_bytes` | gauge | | the daemon's resident memory |
| `process_cpu_seconds_total` | counter | | the daemon's user + system CPU time |
| `process_open_fds` | gauge | | the daemon's open file descriptors |
| `process_start_time_seconds` | gauge | | Unix time the daemon started |

The `process_` families are the Prometheus client libraries' standard process metrics,
prefixed like the rest: node_exporter exports its own unprefixed `process_*` series, and a
textfile repeating them would be rejected.

`service` is the config's key (`web@.service` for a template), `unit` the unit the port
was checked for (`web@blue.service`). `port_holder_kind` is a state set, as
node_exporter's `node_systemd_unit_state`: one series per kind portguard knows (`self`,
`twin`, `stray`, `foreign`, `lingering`), the holder's kind 1 and the others 0; all 0 for
a free port. A kind outside that list gets a series of its own while it is seen. So
`portguard_port_holder_kind{kind="foreign"} == 1` finds every port a foreign program
holds, and series do not come and go as holders change.

Two samples for the same service, unit, port and proto are merged (held if either is,
the first held sample's kind): a duplicate series would make node_exporter reject the
whole file. Output is sorted, so a file changes only when a figure does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from portguard.act import files
from portguard.model import Usage

__all__ = ["KINDS", "PortSample", "Snapshot", "render", "write_atomic"]

PREFIX = "portguard_"
KINDS = ("self", "twin", "stray", "foreign", "lingering")  # the holder kinds (docs/identity.md)
FILE_MODE = 0o644  # node_exporter runs as its own user: it must be able to read the file


class PortSample(NamedTuple):
    """One declared port of one unit at the last pass."""

    service: str  # the config key, e.g. "web@.service"
    unit: str  # the unit checked, e.g. "web@blue.service"
    port: int
    proto: str  # "tcp" | "udp"
    held: bool
    holder_kind: str  # self | twin | stray | foreign | lingering | ...; "" when free


class Snapshot(NamedTuple):
    """Everything one metrics file says, as of the end of a pass."""

    ports: tuple[PortSample, ...]
    resolved_total: Mapping[str, int]  # service -> conflicts resolved since start
    refused_total: Mapping[str, int]  # service -> conflicts refused since start
    flapping: Mapping[str, bool]  # service -> a conflict of it is held by the flap guard
    last_pass_seconds: float
    last_pass_timestamp: float  # Unix time (time.time()) at the end of the pass
    services: int
    own: Usage | None = None  # the daemon's own cost; None: left out of the file


_HELP = {
    "port_held": "Whether a declared port was held at the last pass (1) or free (0).",
    "port_holder_kind": "Kind of the port's holder at the last pass: 1 for the holder's"
                        " kind, 0 for the others (all 0 when free).",
    "conflicts_resolved_total": "Conflicts on the service's ports the daemon resolved"
                                " (stopped a twin, signalled a stray or remnant, waited).",
    "refusals_total": "Conflicts on the service's ports the daemon refused to resolve"
                      " (foreign holder, policy fail, protected holder, flapping).",
    "flapping": "Whether a conflict of the service was resolved flap_limit times within"
                " flap_window and is now reported, not fought (1).",
    "last_pass_duration_seconds": "Duration of the daemon's last reconcile pass.",
    "last_pass_timestamp_seconds": "Unix time at which the daemon's last reconcile pass"
                                   " ended.",
    "services": "Services declared in the daemon's config.",
    "process_resident_memory_bytes": "Resident memory of the portguard daemon in bytes.",
    "process_cpu_seconds_total": "User and system CPU time of the portguard daemon in"
                                 " seconds.",
    "process_open_fds": "Open file descriptors of the portguard daemon.",
    "process_start_time_seconds": "Unix time at which the portguard daemon started.",
}


def escape_label(value: str) -> str:
    """A label value for the text format: backslash, double quote and newline escaped.

    Text that is not valid Unicode (lone surrogates from undecodable bytes) is replaced:
    the format is UTF-8.
    """
    value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Go's strconv.ParseFloat reads it: ints plain, NaN, +Inf, -Inf."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


class _Family:
    def __init__(self, name: str, kind: str) -> None:
        self.name = PREFIX + name
        self.lines = [f"# HELP {self.name} {_escape_help(_HELP[name])}",
                      f"# TYPE {self.name} {kind}"]

    def add(self, value: float, *labels: tuple[str, str]) -> None:
        self.lines.append(f"{self.name}{_labels(labels)} {format_value(value)}")


def _merged(ports: Iterable[PortSample]) -> list[PortSample]:
    """One sample per (service, unit, port, proto), sorted; see the module docstring."""
    out: dict[tuple[str, str, int, str], PortSample] = {}
    for sample in ports:
        key = (sample.service, sample.unit, sample.port, sample.proto)
        seen = out.get(key)
        if seen is None or (sample.held and not seen.held):
            out[key] = sample
    return [out[key] for key in sorted(out)]


def render(snapshot: Snapshot) -> str:
    """The metrics file's text: exposition format 0.0.4, ending with a newline."""
    held = _Family("port_held", "gauge")
    kinds = _Family("port_holder_kind", "gauge")
    for sample in _merged(snapshot.ports):
        where = (("service", sample.service), ("unit", sample.unit),
                 ("port", str(sample.port)), ("proto", sample.proto))
        held.add(bool(sample.held), *where)
        kind = sample.holder_kind if sample.held else ""
        for known in KINDS:
            kinds.add(known == kind, *where, ("kind", known))
        if kind and kind not in KINDS:
            kinds.add(1, *where, ("kind", kind))
    families = [held, kinds]
    for name, values in (("conflicts_resolved_total", snapshot.resolved_total),
                         ("refusals_total", snapshot.refused_total),
                         ("flapping", snapshot.flapping)):
        family = _Family(name, "gauge" if name == "flapping" else "counter")
        for service in sorted(values):
            family.add(values[service], ("service", service))
        families.append(family)
    singles: list[tuple[str, str, float]] = [
        ("last_pass_duration_seconds", "gauge", snapshot.last_pass_seconds),
        ("last_pass_timestamp_seconds", "gauge", snapshot.last_pass_timestamp),
        ("services", "gauge", snapshot.services)]
    if snapshot.own is not None:
        own = snapshot.own
        singles += [("process_resident_memory_bytes", "gauge", own.rss_bytes),
                    ("process_cpu_seconds_total", "counter", own.cpu_seconds),
                    ("process_open_fds", "gauge", own.open_fds),
                    ("process_start_time_seconds", "gauge", own.started_at)]
    for name, kind, value in singles:
        family = _Family(name, kind)
        family.add(value)
        families.append(family)
    return "".join(line + "\n" for family in families for line in family.lines)


def write_atomic(path: Path, snapshot: Snapshot) -> None:
    """Replace `path` with the rendered snapshot, mode 0644, so a reader sees the old or the
    new file (act.files.write_atomic); an OSError is the caller's to report (the file's
    directory is not created here). Temporary files a killed writer left behind go."""
    files.write_atomic(path, render(snapshot).encode("utf-8"), mode=FILE_MODE)
    files.remove_leftovers(path.parent, path.name)
