"""Config fuzzing (issue 7, item 1): no document crashes the loader, every error names a
line of the document, every accepted config survives `status --json` unchanged.

Three kinds of input, all through `portguard.config`:

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
a bound, under `signal.alarm` so a hang fails instead of blocking the run.

Bugs these tests found, kept fixed: YAML-only line breaks (U+2028, U+2029, U+0085, a lone
CR) hid config in what every editor shows as a comment and shifted line numbers; a refused
value was echoed raw (newlines, escape sequences, a megabyte) into the one-line problem.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import signal
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from portguard import cli, config
from portguard import configtypes as ct
from portguard.app import App
from portguard.config import MAX_BYTES, Config, load, loads
from portguard.errors import ConfigError, UsageError
from portguard.units import SystemdUnavailable

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROBLEM = re.compile(r"(?P<file>[^\n]+?):(?P<line>[0-9]+)(?::(?P<col>[0-9]+))?: (?P<msg>.+)",
                     re.DOTALL)
BOMB_SECONDS = 2.0  # wall time a refused bomb may take (each takes well under 1 s here)


@pytest.fixture(autouse=True)
def _not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, load() refuses files under /tmp (sticky, world-writable): not tested here."""
    monkeypatch.setattr(config, "_running_as_root", lambda: False)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="portguard-fuzz-") as d:
        yield Path(d)


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the run) if the body takes longer than `seconds`."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds}s: not bounded")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- what a refusal must look like ------------------------------------------------------


def editor_lines(text: str) -> int:
    """Lines as editors, `grep -n` and `sed -n Np` count them: by LF only."""
    return text.count("\n") + 1


def yaml_lines(text: str) -> int:
    """Lines as YAML counts them (also CR, NEL, LS, PS): what line numbers hold today."""
    return len(text.splitlines()) + 1


def outcome(text: str) -> tuple[Config | None, list[str]]:
    """loads(text): the config, or the problems of the ConfigError (nothing else may leak)."""
    try:
        return loads(text, filename="fuzz.yaml"), []
    except ConfigError as exc:
        assert exc.problems, "a ConfigError with no problem in it"
        return None, exc.problems


def assert_well_formed(problems: list[str], text: str, filename: str = "fuzz.yaml", *,
                       lines: Callable[[str], int] = yaml_lines) -> None:
    for problem in problems:
        m = PROBLEM.fullmatch(problem)
        assert m is not None, f"not FILE:LINE(:COL)?: message: {problem!r}"
        assert m["file"] == filename, problem
        assert 1 <= int(m["line"]) <= lines(text), f"line outside the document: {problem!r}"
        if m["col"] is not None:
            assert int(m["col"]) >= 1, problem
        assert m["msg"].strip(), problem


def assert_loads_or_refuses(text: str) -> Config | None:
    cfg, problems = outcome(text)
    assert_well_formed(problems, text)
    return cfg


# -- documents shaped like the schema ----------------------------------------------------

JUNK = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "~", "null", "yes", "no", "on", "Off", "y", "N", "true", "False",
                     "0700", "0x50", "8_080", "22:22", "1e3", ".inf", "-.5", "80.0", "٨٠",
                     "2001-01-01", "<<", "=", "!!str x", "!foo x", "&a x", "*a", "? x", "- x",
                     "|", ">", "{", "[", "]", "}", "#", "@", "%x", "'", '"', "\\", "\t",
                     "a: b", "x\ny", "\x00", "\x1b[2J", "\u200b", "\ufeff"]),
)
IPV4 = st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t)))
ADDRESS = st.one_of(IPV4, st.sampled_from(["[::]", "[::1]", "[fe80::1%eth0]", "[1.2.3.4]",
                                           "localhost", "::1", "0.0.0.0", "[::ffff:1.2.3.4]"]),
                    st.text(string.hexdigits + ":.[]", max_size=10))
PORT_NUMBER = st.one_of(st.integers(0, 70000).map(str),
                        st.sampled_from(["08080", "0x1F90", "8_080", "+80", "-1", "65536",
                                         "", "99999999999", "٨٠٨٠", "80.5", "1:30"]))


@st.composite
def port_text(draw: st.DrawFn) -> str:
    text = draw(PORT_NUMBER)
    if draw(st.booleans()):  # a range, usually small (a 20,000-port range costs 20,000 rows)
        last = draw(st.one_of(st.integers(0, 40).map(lambda n: str(int(text) + n)
                                                     if text.isdigit() else str(n)),
                              PORT_NUMBER))
        text = f"{text}-{last}"
    if draw(st.booleans()):
        text = f"{draw(ADDRESS)}:{text}"
    if draw(st.booleans()):
        text += "/" + draw(st.sampled_from(["tcp", "udp", "TCP", "sctp", ""]))
    return text


DURATION_TEXT = st.one_of(
    st.tuples(st.sampled_from(["", "-", "0", "."]),
              st.one_of(st.integers(0, 10**7).map(str),
                        st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}")),
              st.sampled_from(["", "ms", "s", "m", "h", "sec", "min", "d", "S", " s"]))
    .map("".join),
    JUNK)
SIGNAL_TEXT = st.one_of(st.sampled_from(["SIGTERM", "TERM", "SIGKILL", "HUP", "SIGSTOP",
                                         "sigterm", "15", "-9", "SIGRTMIN", "SIGFOO"]), JUNK)
UNIT_TEXT = st.one_of(st.sampled_from(["web", "web@", "web@.service", "web@blue.service",
                                       "a.socket", "x.servic", "sshd.service", "systemd-*",
                                       "*", "*.service", "?", "db", "web-legacy"]),
                      st.text(string.ascii_letters + string.digits + "@.-_:*?[]!\\",
                              min_size=1, max_size=20), JUNK)
COMMAND_TEXT = st.one_of(st.sampled_from(["/opt/web/bin/webd*", "*", "/", "*/*", "? *"]),
                         st.text(max_size=20))


class Node:
    """A YAML node to emit: a scalar (text and style), a list or a mapping."""

    def __init__(self, kind: str, value: Any, style: str = "plain") -> None:
        self.kind = kind
        self.value = value
        self.style = style


def scalar(texts: st.SearchStrategy[str]) -> st.SearchStrategy[Node]:
    return st.builds(Node, st.just("scalar"), texts,
                     st.sampled_from(["plain", "plain", "double", "single"]))


def seq(items: st.SearchStrategy[Node], max_size: int = 6) -> st.SearchStrategy[Node]:
    return st.builds(Node, st.just("seq"), st.lists(items, max_size=max_size))


def mapping(fields: dict[str, st.SearchStrategy[Node]], extra_values: st.SearchStrategy[Node],
            noisy: bool) -> st.SearchStrategy[Node]:
    """A mapping with some of `fields`; when noisy, maybe a repeated or an unknown key."""
    known = st.sampled_from(sorted(fields)).flatmap(
        lambda k: st.tuples(st.just(k), fields[k]))
    if not noisy:
        return st.builds(Node, st.just("map"), st.lists(known, max_size=len(fields),
                                                        unique_by=lambda kv: kv[0]))
    unknown = st.tuples(st.one_of(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10),
                                  JUNK), extra_values)
    entries = st.lists(st.one_of(known, known, known, unknown), max_size=len(fields) + 2)
    return st.builds(Node, st.just("map"), entries)


def shaped(node: st.SearchStrategy[Node], noisy: bool) -> st.SearchStrategy[Node]:
    """`node`; when noisy, sometimes a value of another shape: a list, a mapping, junk."""
    if not noisy:
        return node
    junk = scalar(JUNK)
    return st.one_of(node, node, node, node, junk, seq(junk, 3),
                     st.builds(Node, st.just("map"), st.lists(st.tuples(JUNK, junk),
                                                              max_size=2)))


SAFE_PLAIN = re.compile(r"[A-Za-z0-9_/.][A-Za-z0-9_/.@-]*")  # no YAML 1.1 trap in the sample
GOOD = {
    "policy": st.sampled_from(["stop", "wait", "fail", "warn"]),
    "on_foreign": st.sampled_from(["fail", "wait"]),
    "duration": st.sampled_from(["30s", "250ms", "2m", "1h", "30", "1.5", "86400"]),
    "signal": st.sampled_from(["SIGTERM", "TERM", "SIGINT", "HUP", "SIGKILL", "SIGUSR1"]),
    "bool": st.sampled_from(["true", "false"]),
    "unit": st.sampled_from(["web", "web@", "web@.service", "db.service", "sshd",
                             "systemd-*.service", "api@blue.service", "a-b_c:d.service"]),
    "command": st.sampled_from(["/opt/web/bin/webd*", "/usr/bin/python3 /srv/app.py",
                                "*webd --port 80*"]),
    "port": st.sampled_from(["8080", "127.0.0.1:9090/tcp", "[::]:8443", "5353/udp",
                             "7000-7010/tcp", "[::1]:80", "0.0.0.0:443", "1", "65535/udp"]),
    "name": st.sampled_from(["web", "web@", "web@.service", "db.service", "sshd",
                             "api@blue.service", "a-b_c:d.service", "x"]),
    "flap_limit": st.integers(1, 1000).map(str),
    "path": st.sampled_from(["/var/lib/prometheus/node-exporter/portguard.prom"]),
}


def schema_nodes(noisy: bool) -> st.SearchStrategy[Node]:
    """A config-shaped tree. Clean: the schema's keys with good values (it may still be
    refused: two services sharing a name, one declaring a port twice). Noisy: near
    misses, unknown keys, wrong shapes and junk as well."""
    def value(good: str, near: st.SearchStrategy[str]) -> st.SearchStrategy[Node]:
        if noisy:
            return shaped(scalar(st.one_of(GOOD[good], near)), noisy)
        styles = ["plain"] if good in ("bool", "flap_limit") else ["double", "single"]
        return GOOD[good].flatmap(lambda t: st.builds(
            Node, st.just("scalar"), st.just(t),
            st.sampled_from(["plain", *styles] if SAFE_PLAIN.fullmatch(t) else styles)))

    junk = scalar(JUNK)
    settings_fields = {
        "policy": value("policy", st.sampled_from(["Stop", "kill", "STOP", ""])),
        "on_foreign": value("on_foreign", st.sampled_from(["stop", "warn"])),
        "timeout": value("duration", DURATION_TEXT),
        "kill_after": value("duration", DURATION_TEXT),
        "signal": value("signal", SIGNAL_TEXT),
        "reuse_address": value("bool", st.sampled_from(["yes", "no", "True", "0", "on"])),
    }
    units = shaped(seq(value("unit", UNIT_TEXT), 4), noisy)
    duplicates = mapping({"units": units,
                          "commands": shaped(seq(value("command", COMMAND_TEXT), 3), noisy)},
                         junk, noisy)
    ports = shaped(st.builds(Node, st.just("seq"), st.lists(
        value("port", port_text()), min_size=0 if noisy else 1, max_size=5,
        unique_by=None if noisy else (lambda n: n.value))), noisy)
    service = mapping({**settings_fields, "duplicates": shaped(duplicates, noisy)}, junk, noisy)
    with_ports = st.tuples(service, ports).map(
        lambda sp: Node("map", [("ports", sp[1]), *sp[0].value]))
    names = st.one_of(GOOD["unit"], UNIT_TEXT) if noisy else GOOD["name"].map(json.dumps)
    services = st.builds(Node, st.just("map"), st.lists(
        st.tuples(names, shaped(with_ports, noisy)), max_size=4,
        unique_by=None if noisy else (lambda kv: ct.service_name(json.loads(kv[0])))))
    daemon = mapping({"interval": value("duration", DURATION_TEXT),
                      "flap_window": value("duration", DURATION_TEXT),
                      "restart": value("bool", st.sampled_from(["on", "1"])),
                      "flap_limit": value("flap_limit", st.one_of(
                          st.integers(-5, 2000).map(str), JUNK)),
                      "metrics_file": value("path", st.sampled_from(
                          ["x.prom", "/dir/", "/", ""]))}, junk, noisy)
    top = mapping({"defaults": shaped(mapping(settings_fields, junk, noisy), noisy),
                   "protected": units, "daemon": shaped(daemon, noisy)}, junk, noisy)
    with_services = st.tuples(top, services).map(
        lambda ts: Node("map", [*ts[0].value, ("services", ts[1])]))
    if not noisy:
        return with_services
    return st.one_of(with_services, with_services, with_services, top, junk, seq(junk, 3))


def quote(text: str, style: str) -> str:
    if style == "double":
        return json.dumps(text)  # a JSON string is a YAML double-quoted scalar
    if style == "single":
        return "'" + text.replace("'", "''") + "'"
    return text


def emit(node: Node, indent: int = 0, flow: bool = False) -> str:
    """YAML text for `node`: block style unless `flow` (then a one-line flow collection).
    Plain scalars go out as they are, so junk may well be a syntax error: also tested."""
    pad = " " * indent
    if node.kind == "scalar":
        return quote(node.value, node.style)
    if node.kind == "seq":
        if flow or not node.value:
            return "[" + ", ".join(emit(n, flow=True) for n in node.value) + "]"
        return "".join(f"\n{pad}- {emit(n, indent + 2)}" for n in node.value)
    if flow or not node.value:
        return "{" + ", ".join(f"{quote(k, 'plain')}: {emit(v, flow=True)}"
                               for k, v in node.value) + "}"
    out = []
    for key, value in node.value:
        body = emit(value, indent + 2)
        sep = "" if body.startswith("\n") else " "
        out.append(f"\n{pad}{key}:{sep}{body}")
    return "".join(out)


CLEAN, NOISY = schema_nodes(noisy=False), schema_nodes(noisy=True)


@st.composite
def schema_documents(draw: st.DrawFn) -> str:
    """Half clean documents as they are, half noisy ones, maybe edited as well."""
    noisy = draw(st.booleans())
    node = draw(NOISY if noisy else CLEAN)
    text = emit(node, flow=draw(st.integers(0, 4)) == 0).lstrip("\n") + "\n"
    return draw(edited(text)) if noisy else text


@st.composite
def edited(draw: st.DrawFn, text: str) -> str:
    """`text`, or `text` with a few random edits: a character inserted, a slice dropped, a
    line duplicated or two swapped, indentation changed."""
    for _ in range(draw(st.integers(0, 2))):
        lines = text.split("\n")
        how = draw(st.sampled_from(["insert", "drop", "dup", "swap", "indent"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if how == "insert":
            pos = draw(st.integers(0, len(text)))
            text = text[:pos] + draw(st.text(min_size=1, max_size=3)) + text[pos:]
            continue
        if how == "drop":
            del lines[i]
        elif how == "dup":
            lines.insert(i, lines[i])
        elif how == "swap":
            j = draw(st.integers(0, max(0, len(lines) - 1)))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = " " * draw(st.integers(0, 5)) + lines[i].lstrip(" ")
        text = "\n".join(lines)
    return text


def valid_documents() -> st.SearchStrategy[str]:
    """Documents that load: only the grammar's good values (mostly), no edits."""
    name = st.from_regex(r"[a-z][a-z0-9-]{0,8}(@)?(\.service)?", fullmatch=True)
    forms = st.sampled_from(["{p}", "{p}/udp", "127.0.0.1:{p}", "[::1]:{p}/tcp", "{p}-{q}",
                             "0.0.0.0:{p}/udp"])
    # Ports 10 apart and ranges of at most 10: one service never declares a port twice.

    def spelled(bases: list[int]) -> st.SearchStrategy[tuple[str, ...]]:
        return st.tuples(*[forms.map(functools.partial(at, b)) for b in bases])

    def at(base: int, form: str) -> str:
        return form.format(p=base * 10, q=base * 10 + 9)

    port_lists = st.lists(st.integers(1, 6552), min_size=1, max_size=4,
                          unique=True).flatmap(spelled)
    policy = st.sampled_from(["stop", "wait", "fail", "warn"])

    @st.composite
    def doc(draw: st.DrawFn) -> str:
        lines = ["defaults:", f"  policy: {draw(policy)}",
                 f"  timeout: {draw(st.sampled_from(['30s', '1.5', '2m', '250ms']))}",
                 f"  signal: {draw(st.sampled_from(['SIGTERM', 'INT', 'SIGHUP']))}",
                 "services:"]
        names = draw(st.lists(name, min_size=0, max_size=5,
                              unique_by=ct.service_name))
        for n in names:
            ports = draw(port_lists)
            lines.append(f"  {json.dumps(n)}:")
            lines.append("    ports: [" + ", ".join(json.dumps(p) for p in ports) + "]")
            if draw(st.booleans()):
                lines.append(f"    policy: {draw(policy)}")
        if not names:
            lines.append("  web: {ports: [\"8080\"]}")
        return "\n".join(lines) + "\n"

    return doc()


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
            cli.parse_port_args([text])
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
    """`portguard --config PATH --json status`, in-process: D-Bus unreachable, no sockets.

    cli.main() builds its App itself; the fake systemd goes in through the App class it
    calls, the empty socket table through portguard.sockets.query (the Observer's default).
    """
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "App", lambda path, journal: App(path, journal=journal,
                                                          connect_systemd=no_systemd))
        mp.setattr("portguard.sockets.query", lambda ports, protos=(), **kw: [])
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
