"""Config fuzzing (issue 7, item 1): no document crashes the loader, every error names a
line of the document, every accepted config survives `status --json` unchanged.

Three kinds of input, all through `portguard.config.schema`:

- documents shaped like the schema (the real keys and random ones, values of the right
  kind, of a near miss and of the wrong type, block or flow style, plain or quoted),
  then randomly edited (characters inserted, lines dropped, duplicated, swapped);
- random text and random bytes (through `load`, so the UTF-8 and size checks run too);
- random port, duration, signal and unit-name strings into the value grammars.

Properties: a document is accepted or refused with `ConfigError` (nothing else escapes);
every problem reads `FILE:LINE(:COL)?: message` with LINE inside the document; an accepted
config printed by `portguard --json status` (in-process, no D-Bus, no sockets) names the
same services, port specs and policies, and a config written back from that JSON loads
to the same again. Bombs (aliases, nesting, size, long lines) are refused or read within
a bound, under `signal.alarm` so a hang fails instead of blocking the run. The strategies
and what a refusal must look like are in config_fuzzing.py.

Bugs these tests found, kept fixed: YAML-only line breaks (U+2028, U+2029, U+0085, a lone
CR) hid config in what every editor shows as a comment and shifted line numbers; a refused
value was echoed raw (newlines, escape sequences, a megabyte) into the one-line problem.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from config_fuzzing import (
    DURATION_TEXT,
    FEW,
    FUZZ,
    SIGNAL_TEXT,
    UNIT_TEXT,
    alarm,
    assert_loads_or_refuses,
    assert_well_formed,
    editor_lines,
    outcome,
    port_text,
    schema_documents,
    valid_documents,
)
from hypothesis import example, given
from hypothesis import strategies as st

from portguard import cli
from portguard.app import App
from portguard.commands import who
from portguard.config import values as ct
from portguard.config.schema import MAX_BYTES, Config, load, loads
from portguard.errors import ConfigError, UsageError
from portguard.observe.systemd.dbus_errors import SystemdUnavailable

pytestmark = pytest.mark.usefixtures("not_root")
BOMB_SECONDS = 2.0  # wall time a refused bomb may take (each takes well under 1 s here)


# -- 1. nothing crashes, every problem names a line ------------------------------------


@FUZZ
@given(st.text(max_size=300))
def test_random_text_loads_or_names_a_line(text: str) -> None:
    assert_loads_or_refuses(text)


@FEW
@given(st.one_of(st.binary(max_size=200),
                 schema_documents().map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_bytes_through_a_file(scratch: Path, data: bytes) -> None:
    path = scratch / "bytes.yaml"
    path.write_bytes(data)
    try:
        load(path)
    except ConfigError as exc:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
        assert_well_formed(exc.problems, text, str(path))


@FUZZ
@given(st.one_of(port_text(), st.text(max_size=30)))
def test_port_strings_parse_or_raise_valueerror(text: str) -> None:
    try:
        spec = ct.port_spec(text)
    except ValueError as exc:
        assert str(exc)
        with pytest.raises(UsageError):  # `who` refuses it as usage, not with a trace
            who.parse_port_args([text])
        return
    assert 1 <= spec.first <= spec.last <= 65535
    assert spec.last - spec.first < ct.MAX_RANGE_PORTS
    assert spec.proto in ("tcp", "udp")
    again = ct.port_spec(str(spec._replace(text="")))  # what status prints reads back
    assert again[:4] == spec[:4]


@FUZZ
@given(st.one_of(DURATION_TEXT, st.text(max_size=20)))
def test_duration_strings_are_bounded_or_raise_valueerror(text: str) -> None:
    try:
        seconds = ct.duration(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert 0 < seconds <= ct.MAX_DURATION  # every wait has a bound


@FEW
@given(st.one_of(SIGNAL_TEXT, UNIT_TEXT, st.text(max_size=20)))
def test_signal_and_unit_names_parse_or_raise_valueerror(text: str) -> None:
    try:
        sig = ct.signal_by_name(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert sig.name not in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU")
    for parse in (ct.service_name, ct.unit_glob, lambda t: ct.whole_number(t, 1, 1000)):
        try:
            parse(text)
        except ValueError as exc:
            assert str(exc)


# -- 2. accepted configs round-trip through `status --json` ---------------------------


def no_systemd() -> Any:
    raise SystemdUnavailable("no system bus in this test")


def status_json(path: Path) -> tuple[int, dict[str, Any]]:
    """`portguard --config PATH --json status`, in-process: D-Bus unreachable, no sockets,
    every bind() probe answered "free".

    cli.main() builds its App itself (importing it when called); the fake systemd goes in
    through portguard.app.App, the empty socket table through
    portguard.observe.kernel.sockets.query (the Observer's default).
    """
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("portguard.app.App", lambda path, make_journal: App(
            path, make_journal=make_journal, connect_systemd=no_systemd))
        mp.setattr("portguard.observe.kernel.sockets.query", lambda ports, protos=(), **kw: [])
        # and bind() itself never refused: the host's own listeners (any port a config may
        # name) are not this test's world
        mp.setattr("portguard.observe.kernel.probe.refused", lambda intent: False)
        status = cli.main(["--config", str(path), "--json", "status"], stdout=out, stderr=err)
    assert not err.getvalue(), err.getvalue()
    return status, json.loads(out.getvalue())


def assert_same_services(doc: dict[str, Any], cfg: Config) -> None:
    services = doc["services"]
    assert [s["service"] for s in services] == [s.name for s in cfg.services]
    for shown, svc in zip(services, cfg.services, strict=True):
        assert shown["policy"] == svc.policy.value
        assert [p["spec"] for p in shown["ports"]] == [str(p) for p in svc.ports]
        for port_doc, spec in zip(shown["ports"], svc.ports, strict=True):
            assert [(p["port"], p["proto"]) for p in port_doc["ports"]] == \
                [(n, str(spec.proto)) for n in spec.ports]
            assert ct.port_spec(port_doc["spec"])[:4] == spec[:4]  # the spec reads back
        assert shown["units"] == []
        assert "no system bus in this test" in shown["units_error"]


def written_back(doc: dict[str, Any]) -> str:
    """A config holding exactly what status --json shows: names, port specs, policies."""
    lines = ["services:"]
    for s in doc["services"]:
        specs = ", ".join(json.dumps(p["spec"]) for p in s["ports"])
        lines += [f"  {json.dumps(s['service'])}:", f"    ports: [{specs}]",
                  f"    policy: {s['policy']}"]
    return "\n".join(lines) + "\n"


def round_trip(scratch: Path, text: str) -> None:
    path = scratch / "accepted.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    cfg = load(path)
    status, doc = status_json(path)
    assert status == 0, doc
    assert_same_services(doc, cfg)
    again = loads(written_back(doc))
    assert [(s.name, s.policy, [p[:4] for p in s.ports]) for s in again.services] == \
        [(s.name, s.policy, [p[:4] for p in s.ports]) for s in cfg.services]


@FEW
@given(valid_documents())
def test_valid_configs_round_trip_through_status_json(scratch: Path, text: str) -> None:
    round_trip(scratch, text)


@FUZZ
@given(schema_documents())
def test_schema_shaped_documents_load_or_name_a_line_and_round_trip(scratch: Path,
                                                                     text: str) -> None:
    cfg = assert_loads_or_refuses(text)
    if cfg is not None:
        round_trip(scratch, text)


def test_the_shipped_example_config_round_trips(scratch: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    round_trip(scratch, example.read_text())


# -- 3. bombs: refused (or read) within a bound ------------------------------------------


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["a: &a [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]")
    return "\n".join(lines) + "\nservices:\n  web:\n    ports: *i\n"


def fitted(make: Callable[[int], str], most: int) -> Callable[[], str]:
    """`make(n)` for the largest n <= `most` whose text fits under the size cap."""
    def build() -> str:
        low, high = 1, most
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if len(make(mid).encode()) <= MAX_BYTES else (low, mid - 1)
        return make(low)

    return build


BOMBS: dict[str, Callable[[], str]] = {
    "billion laughs": billion_laughs,
    "alias as a port list": lambda: ('x: &p ["80", "81"]\nservices:\n  web: {ports: *p}\n'),
    "alias to a mapping": lambda: ("services:\n  web: &s {ports: [80]}\n  web2: *s\n"),
    "merge key": lambda: ("services:\n  web: &s {ports: [80]}\n  web2: {<<: *s}\n"),
    "deep flow lists": fitted(lambda n: "services: " + "[" * n + "]" * n + "\n", 100_000),
    "deep flow mappings": fitted(lambda n: "services: " + "{a: " * n + "b" + "}" * n + "\n",
                                 50_000),
    "deep block mappings": fitted(lambda n: "services:\n" + "".join(
        " " * i + "a:\n" for i in range(1, n)), 1400),
    "deep block lists": fitted(lambda n: "services:\n" + "".join(
        " " * i + "-\n" for i in range(1, n)), 1400),
    "recursion-limit depth": lambda: "services: " + "[" * 990 + "]" * 990 + "\n",
    "long comment line": lambda: "services: {web: {ports: [80]}}  # "
                                 + "x" * (MAX_BYTES - 64) + "\n",
    "long quoted port": lambda: 'services:\n  web: {ports: ["' + "8" * (MAX_BYTES - 64)
                                + '"]}\n',
    "long plain value": lambda: "services:\n  web:\n    ports: " + "8" * (MAX_BYTES - 64)
                                + "\n",
    "long key": lambda: "services:\n  " + "w" * (MAX_BYTES - 64) + ": {ports: [80]}\n",
    "many documents": fitted(lambda n: "---\nservices: {}\n" * n, 30_000),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_or_read_within_a_bound(scratch: Path, name: str) -> None:
    text = BOMBS[name]()
    assert len(text.encode()) <= MAX_BYTES, "a bomb must get past the size check"
    path = scratch / "bomb.yaml"
    path.write_text(text)
    with alarm(10):
        started = time.monotonic()
        try:
            cfg: Config | None = load(path)
            problems: list[str] = []
        except ConfigError as exc:
            cfg, problems = None, exc.problems
        took = time.monotonic() - started
    assert took < BOMB_SECONDS, f"{name}: {took:.2f}s"
    assert_well_formed(problems, text, str(path), lines=editor_lines)
    if name == "long comment line":
        assert cfg is not None and cfg.services[0].name == "web.service"
        return
    assert cfg is None, f"{name} was accepted"
    if "alias" in name or name in ("billion laughs", "merge key"):
        assert any("alias" in p and "refused" in p for p in problems), problems
    if name.startswith("deep") or name == "recursion-limit depth":
        assert any(p.endswith("nesting too deep") or "expected" in p or "YAML" in p
                   for p in problems), problems


SIZE_REFUSAL = re.compile(r"(?P<file>.+): larger than [0-9]+ (KiB|MiB); refusing to parse it")


@pytest.mark.parametrize("extra", [1, 4096])
def test_a_file_over_the_size_cap_is_refused_before_parsing(scratch: Path, extra: int) -> None:
    # A valid config padded with a comment: only its size is wrong, so only the size
    # check can refuse it. An alias bomb in it would be refused anyway: not a proof.
    head = "services:\n  web: {ports: [80]}\n#"
    path = scratch / "big.yaml"
    path.write_bytes(head.encode() + b"x" * (MAX_BYTES + extra - len(head)))
    assert path.stat().st_size == MAX_BYTES + extra
    with alarm(10):
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            load(path)
        took = time.monotonic() - started
    assert took < 0.5, f"{took:.2f}s: it was parsed, not refused up front"
    [problem] = info.value.problems
    m = SIZE_REFUSAL.fullmatch(problem)
    assert m is not None and m["file"] == str(path), problem
    with pytest.raises(ConfigError) as info:
        loads(path.read_text())
    assert SIZE_REFUSAL.fullmatch(info.value.problems[0])
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--config", str(path), "check-config"], stdout=out, stderr=err) == 78
    assert problem in err.getvalue()


def test_a_file_of_exactly_the_size_cap_is_parsed(scratch: Path) -> None:
    head = "services:\n  web: {ports: [80]}\n#"
    path = scratch / "edge.yaml"
    path.write_bytes(head.encode() + b"x" * (MAX_BYTES - len(head) - 1) + b"\n")
    assert path.stat().st_size == MAX_BYTES
    with alarm(10):
        assert load(path).services[0].name == "web.service"


def cpu_seconds(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def test_the_costliest_config_under_the_size_cap_is_read_within_a_bound() -> None:
    # The most tokens per byte: a flow list of one-digit ports ("1,1,1,..."). Parsing
    # is linear in the size (measured: 64, 128, 256 KiB and 1 MiB), so a 128 KiB sample
    # prices the largest file the cap lets through without spending 10 s here.
    def worst(size: int) -> str:
        return "services:\n  w: {ports: [" + "1," * ((size - 40) // 2) + "1]}\n"

    sample = min(MAX_BYTES, 128 * 1024)
    with alarm(30):
        took = cpu_seconds(lambda: outcome(worst(sample)))
    at_cap = took * MAX_BYTES / sample
    assert at_cap < BOMB_SECONDS, (f"{sample} bytes took {took:.2f}s of CPU: a {MAX_BYTES}"
                                   f"-byte config takes ~{at_cap:.1f}s")


def test_a_fifo_or_dev_zero_is_refused_without_reading_forever(scratch: Path) -> None:
    fifo = scratch / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), Path("/dev/urandom")):
        with alarm(5), pytest.raises(ConfigError) as info:
            load(path)
        assert info.value.problems == [f"{path}: not a regular file"]


# -- 4. known bugs, pinned -----------------------------------------------------------------

HIDDEN_BREAKS = ["\u2028", "\u2029", "\x85", "\r"]


@pytest.mark.parametrize("brk", HIDDEN_BREAKS, ids=["LS", "PS", "NEL", "CR"])
def test_yaml_only_line_breaks_cannot_hide_config_in_a_comment(brk: str) -> None:
    text = ('services:\n  web:\n    ports: ["8080"]\n'
            f'  # web2 is retired{brk}  web2: {{ports: ["9090"]}}\n')
    cfg, problems = outcome(text)
    assert cfg is None, f"accepted: {[s.name for s in cfg.services]}"
    assert_well_formed(problems, text, lines=editor_lines)
    assert any(f"U+{ord(brk):04X}" in p and p.startswith("fuzz.yaml:4:") for p in problems)


@FEW
@given(st.text(alphabet=st.sampled_from([*HIDDEN_BREAKS, "\n", " ", "a", ":", "#", "-"]),
               max_size=40))
@example("services:\n  # a\u2028b\n  web: {ports: [0]}\n")
def test_line_numbers_count_lines_as_editors_do(text: str) -> None:
    _, problems = outcome(text)
    assert_well_formed(problems, text, lines=editor_lines)


@pytest.mark.parametrize(("key", "value"), [
    ("ports", '"8080\\n8081"'),
    ("ports", "|\n      8080\n      8081"),
    ("ports", '"\\e[2J\\e[31mgotcha"'),
    ("ports", '"' + "8" * 50_000 + '"'),
    ("ports", '["' + "8" * 50_000 + '"]'),
    ("policy", '"st\\Lop"'),
], ids=["newline", "block scalar", "escape sequence", "50 kB", "50 kB in a list",
        "line separator escape"])
def test_a_refused_value_is_shown_on_one_short_line(key: str, value: str) -> None:
    text = f"services:\n  web:\n    ports: [\"8080\"]\n    {key}: {value}\n" \
        if key != "ports" else f"services:\n  web:\n    ports: {value}\n"
    _, problems = outcome(text)
    assert problems
    assert_well_formed(problems, text, lines=editor_lines)
    for problem in problems:
        assert len(problem.splitlines()) == 1, problem
        assert problem.isprintable(), repr(problem)
        assert len(problem) < 500, f"{len(problem)} characters"
