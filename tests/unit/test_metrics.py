"""metrics.render / write_atomic: valid exposition text, escaped labels, whole files only.

The text is checked by two parsers: `promtext.strict_parse`, written from the format's
specification and stricter than node_exporter's own on the points that make it reject a
file, and prometheus_client's `text_string_to_metric_families` (test extra).
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from promtext import Family, FormatError, strict_parse

from portguard.model import Usage
from portguard.report import metrics
from portguard.report.metrics import KINDS, PortSample, Snapshot, render, write_atomic

REPO = Path(__file__).resolve().parents[2]

# --- fixtures -----------------------------------------------------------------------------

def snapshot(**changes: Any) -> Snapshot:
    base = Snapshot(
        ports=(
            PortSample("web@.service", "web@blue.service", 8080, "tcp", True, "self"),
            PortSample("web@.service", "web@green.service", 8080, "tcp", True, "twin"),
            PortSample("dns.service", "dns.service", 5353, "udp", False, ""),
            PortSample("api.service", "api.service", 443, "tcp", True, "foreign"),
        ),
        resolved_total={"web@.service": 4, "dns.service": 0},
        refused_total={"api.service": 2},
        flapping={"web@.service": True, "api.service": False},
        last_pass_seconds=0.0123,
        last_pass_timestamp=1_763_676_000.5,
        services=3,
    )
    return base._replace(**changes)


def value(fams: dict[str, Family], name: str, **labels: str) -> float:
    found = [v for n, lab, v in fams[name].samples if n == name and lab == labels]
    assert len(found) == 1, (name, labels, fams[name].samples)
    return found[0]


# --- render -------------------------------------------------------------------------------

def test_render_is_valid_and_complete() -> None:
    text = render(snapshot())
    fams = strict_parse(text)
    assert set(fams) == {
        "portguard_port_held", "portguard_port_holder_kind",
        "portguard_conflicts_resolved_total", "portguard_refusals_total",
        "portguard_flapping", "portguard_last_pass_duration_seconds",
        "portguard_last_pass_timestamp_seconds", "portguard_services"}
    types = {name: fam.type for name, fam in fams.items()}
    assert types["portguard_conflicts_resolved_total"] == "counter"
    assert types["portguard_refusals_total"] == "counter"
    assert {t for n, t in types.items() if not n.endswith("_total")} == {"gauge"}
    assert all(fam.help for fam in fams.values())

    blue = {"service": "web@.service", "unit": "web@blue.service", "port": "8080",
            "proto": "tcp"}
    dns = {"service": "dns.service", "unit": "dns.service", "port": "5353", "proto": "udp"}
    assert value(fams, "portguard_port_held", **blue) == 1
    assert value(fams, "portguard_port_held", **dns) == 0
    assert len(fams["portguard_port_held"].samples) == 4
    assert value(fams, "portguard_conflicts_resolved_total", service="web@.service") == 4
    assert value(fams, "portguard_conflicts_resolved_total", service="dns.service") == 0
    assert value(fams, "portguard_refusals_total", service="api.service") == 2
    assert value(fams, "portguard_flapping", service="web@.service") == 1
    assert value(fams, "portguard_flapping", service="api.service") == 0
    assert value(fams, "portguard_last_pass_duration_seconds") == 0.0123
    assert value(fams, "portguard_last_pass_timestamp_seconds") == 1_763_676_000.5
    assert value(fams, "portguard_services") == 3


def test_holder_kind_is_a_state_set() -> None:
    fams = strict_parse(render(snapshot()))
    samples = fams["portguard_port_holder_kind"].samples

    def kinds(unit: str) -> dict[str, float]:
        return {lab["kind"]: v for _, lab, v in samples if lab["unit"] == unit}

    assert kinds("web@blue.service") == {k: float(k == "self") for k in KINDS}
    assert kinds("web@green.service") == {k: float(k == "twin") for k in KINDS}
    assert kinds("api.service") == {k: float(k == "foreign") for k in KINDS}
    assert kinds("dns.service") == dict.fromkeys(KINDS, 0.0)  # free: all 0


def test_an_unknown_kind_gets_its_own_series_and_a_free_port_has_no_kind() -> None:
    snap = snapshot(ports=(
        PortSample("x.service", "x.service", 1, "tcp", True, "unknown"),
        PortSample("y.service", "y.service", 2, "tcp", False, "stray"),  # free wins
    ))
    samples = strict_parse(render(snap))["portguard_port_holder_kind"].samples
    x = {lab["kind"]: v for _, lab, v in samples if lab["unit"] == "x.service"}
    y = {lab["kind"]: v for _, lab, v in samples if lab["unit"] == "y.service"}
    assert x == {**dict.fromkeys(KINDS, 0.0), "unknown": 1.0}
    assert y == dict.fromkeys(KINDS, 0.0)


def test_duplicate_ports_are_merged_not_repeated() -> None:
    twice = (PortSample("w.service", "w.service", 80, "tcp", False, ""),
             PortSample("w.service", "w.service", 80, "tcp", True, "stray"),
             PortSample("w.service", "w.service", 80, "tcp", True, "foreign"))
    fams = strict_parse(render(snapshot(ports=twice)))  # raises on a duplicate series
    assert [v for _, _, v in fams["portguard_port_held"].samples] == [1]
    kinds = {lab["kind"]: v for _, lab, v in fams["portguard_port_holder_kind"].samples}
    assert kinds["stray"] == 1 and kinds["foreign"] == 0  # the first held sample's kind


@pytest.mark.parametrize("text", [
    'we"b@.service', "back\\slash", "new\nline", "all\\\"three\n\\n", "trailing\\",
    "ünïcødé ☃", "", " spaces ", "{braces},=", "#hash",
])
def test_labels_round_trip(text: str) -> None:
    snap = snapshot(ports=(PortSample(text, text + ".service", 8080, "tcp", True, text),),
                    resolved_total={text: 1}, refused_total={text: 2},
                    flapping={text: True})
    rendered = render(snap)
    assert rendered.count("\n") == len(rendered.splitlines())  # no raw newline in a value
    fams = strict_parse(rendered)
    (_, labels, _), = fams["portguard_port_held"].samples
    assert labels == {"service": text, "unit": text + ".service", "port": "8080",
                      "proto": "tcp"}
    assert [lab["service"] for _, lab, _ in fams["portguard_refusals_total"].samples] == [text]
    if text and text not in KINDS:
        assert {lab["kind"] for _, lab, v in fams["portguard_port_holder_kind"].samples
                if v == 1} == {text}


def test_text_that_is_not_unicode_is_replaced_not_fatal() -> None:
    bad = b"web\xff.service".decode("utf-8", "surrogateescape")
    text = render(snapshot(resolved_total={bad: 1}))
    text.encode("utf-8")  # would raise on a lone surrogate
    fams = strict_parse(text)
    assert [lab["service"] for _, lab, _ in
            fams["portguard_conflicts_resolved_total"].samples] == ["web?.service"]


def test_values_nan_inf_and_large() -> None:
    snap = snapshot(last_pass_seconds=float("nan"), last_pass_timestamp=float("inf"),
                    resolved_total={"a.service": 2**53 + 1}, services=0)
    text = render(snap)
    assert "portguard_last_pass_duration_seconds NaN\n" in text
    assert "portguard_last_pass_timestamp_seconds +Inf\n" in text
    assert f'portguard_conflicts_resolved_total{{service="a.service"}} {2**53 + 1}\n' in text
    fams = strict_parse(text)
    assert math.isnan(value(fams, "portguard_last_pass_duration_seconds"))
    assert repr(1e-7) in render(snapshot(last_pass_seconds=1e-7))  # 1e-07: Go reads it


def test_an_empty_daemon_is_still_a_valid_file() -> None:
    snap = Snapshot(ports=(), resolved_total={}, refused_total={}, flapping={},
                    last_pass_seconds=0.0, last_pass_timestamp=0.0, services=0)
    fams = strict_parse(render(snap))
    assert fams["portguard_port_held"].samples == []
    assert value(fams, "portguard_services") == 0


def test_output_is_sorted_whatever_the_input_order() -> None:
    snap = snapshot()
    shuffled = snap._replace(ports=tuple(reversed(snap.ports)),
                             resolved_total=dict(reversed(list(snap.resolved_total.items()))))
    assert render(shuffled) == render(snap)


def test_help_text_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(metrics._HELP, "services", "a\\b\nc")
    text = render(snapshot())
    assert "# HELP portguard_services a\\\\b\\nc\n" in text
    assert strict_parse(text)["portguard_services"].help == "a\\b\nc"


GOOD = render(snapshot())


@pytest.mark.parametrize("broken", [
    GOOD[:-1],  # no final newline
    GOOD + GOOD,  # every family twice
    GOOD.replace('web@blue.service"', 'web@blue.service\\x"'),  # a bad escape
    GOOD + 'portguard_flapping{service="z"} 1\n',  # a family's lines apart
    GOOD.replace("portguard_services 3", "portguard_services 3 1700000000"),  # a timestamp
    GOOD.replace('"web@blue.service"', '"web@green.service"'),  # a duplicate series
    GOOD.replace("# TYPE portguard_services gauge\n", ""),  # no TYPE
    GOOD.replace('service="web@.service"', 'service="web@.service', 1),  # unterminated
    GOOD + "\n",  # an empty line
], ids=["newline", "twice", "escape", "apart", "timestamp", "duplicate", "type", "quote",
        "empty"])
def test_the_strict_parser_has_teeth(broken: str) -> None:
    with pytest.raises(FormatError):
        strict_parse(broken)


def test_prometheus_client_parses_it_too() -> None:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and prometheus_client (test extra) is not installed")
        pytest.skip("prometheus_client not installed (test extra)")
    text = render(snapshot(ports=(PortSample('a"b\\c\nd', "u.service", 1, "tcp", True,
                                             "twin"),), own=Usage(4096, 0.5, 3, 1.5)))
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client names a counter family without _total
    assert set(fams) == {"portguard_port_held", "portguard_port_holder_kind",
                         "portguard_conflicts_resolved", "portguard_refusals",
                         "portguard_flapping", "portguard_last_pass_duration_seconds",
                         "portguard_last_pass_timestamp_seconds", "portguard_services",
                         "portguard_process_resident_memory_bytes",
                         "portguard_process_cpu_seconds", "portguard_process_open_fds",
                         "portguard_process_start_time_seconds"}
    assert fams["portguard_conflicts_resolved"].type == "counter"
    assert fams["portguard_process_cpu_seconds"].type == "counter"
    (held,) = fams["portguard_port_held"].samples
    assert held.labels["service"] == 'a"b\\c\nd' and held.value == 1
    assert fams["portguard_services"].samples[0].value == 3


def test_the_daemons_own_cost_is_its_own_families() -> None:
    own = Usage(rss_bytes=26_607_616, cpu_seconds=1.25, open_fds=9,
                started_at=1_763_600_000.75)
    fams = strict_parse(render(snapshot(own=own)))
    assert value(fams, "portguard_process_resident_memory_bytes") == 26_607_616
    assert value(fams, "portguard_process_cpu_seconds_total") == 1.25
    assert fams["portguard_process_cpu_seconds_total"].type == "counter"
    assert value(fams, "portguard_process_open_fds") == 9
    assert value(fams, "portguard_process_start_time_seconds") == 1_763_600_000.75
    # never node_exporter's own unprefixed process_* names: the file would be rejected
    assert not any(name.startswith("process_") for name in fams)
    without = strict_parse(render(snapshot()))
    assert not any(name.startswith("portguard_process_") for name in without)


# --- write_atomic -------------------------------------------------------------------------

def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "portguard.prom")


def test_write_atomic_writes_mode_0644_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "portguard.prom"
    old = os.umask(0o077)
    try:
        write_atomic(target, snapshot())
    finally:
        os.umask(old)
    assert target.read_text() == render(snapshot())
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == []
    write_atomic(target, snapshot(services=7))  # replaces
    assert "portguard_services 7\n" in target.read_text()
    assert leftovers(tmp_path) == []


def test_write_atomic_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / "portguard.prom").symlink_to(elsewhere)
    write_atomic(tmp_path / "portguard.prom", snapshot())
    assert elsewhere.read_text() == "keep"
    assert not (tmp_path / "portguard.prom").is_symlink()


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "portguard.prom"
    write_atomic(target, snapshot())
    before = target.read_text()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, snapshot(services=9))
    assert target.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["portguard.prom"]


def test_a_missing_directory_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "portguard.prom", snapshot())
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_dead_writer_are_removed_others_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # exited: gone (reuse within this test is not a concern)
    stale = tmp_path / f".portguard.prom.{dead_pid}.abcdef.tmp"
    live = tmp_path / f".portguard.prom.{os.getppid()}.abcdef.tmp"  # a running writer
    unrelated = tmp_path / "other.prom"
    for path in (stale, live, unrelated):
        path.write_text("x")
    write_atomic(tmp_path / "portguard.prom", snapshot())
    assert not stale.exists()
    assert live.exists() and unrelated.exists()


WRITER = """\
import sys, time
from pathlib import Path
from portguard.report.metrics import PortSample, Snapshot, write_atomic
small = Snapshot((), {}, {}, {}, 0.1, 1.0, 0)
ports = tuple(PortSample(f"svc{i}.service", f"svc{i}.service", 1000 + i, "tcp", bool(i % 2),
                         "twin" if i % 2 else "") for i in range(3000))
big = Snapshot(ports, {f"svc{i}.service": i for i in range(3000)}, {}, {}, 0.2, 2.0, 3000)
target = Path(sys.argv[1])
write_atomic(target, small)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline or n < 20:  # a busy machine: at least 20 writes
    write_atomic(target, big if n % 2 else small)
    n += 1
print(n, flush=True)
"""


def test_a_reader_polling_during_writes_always_sees_a_whole_file(tmp_path: Path) -> None:
    """A writer process rewrites the file as fast as it can, alternating a short text and
    a long one (~1 MiB); this process reads it all the while, as the collector would."""
    target = tmp_path / "portguard.prom"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "2.0"], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        reads, sizes = 0, set()
        ends = ("portguard_services 0\n", "portguard_services 3000\n")
        while writer.poll() is None:
            text = target.read_text()
            assert text.endswith(ends), f"partial file: {len(text)} bytes, ends {text[-60:]!r}"
            sizes.add(len(text))
            reads += 1
        writes = int(writer.stdout.read().split()[-1])
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    assert reads > 50 and writes > 10 and len(sizes) == 2, (reads, writes, sizes)
    strict_parse(target.read_text())
    assert leftovers(tmp_path) == []


def test_write_atomic_is_safe_with_threads(tmp_path: Path) -> None:
    """Two writers in one process (the daemon's SIGHUP path could overlap a pass): temp
    names never collide and the result is one of the two whole files."""
    target = tmp_path / "portguard.prom"
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for _ in range(200):
                write_atomic(target, snapshot(services=n))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert value(strict_parse(target.read_text()), "portguard_services") in (1, 2)
    assert leftovers(tmp_path) == []
