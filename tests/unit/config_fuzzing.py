"""What the config fuzz tests share: what a refusal must look like, a bound on how long
reading may take, and hypothesis strategies for documents shaped like portguard's config
schema."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import string
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from portguard.config import values as ct
from portguard.config.schema import Config, loads
from portguard.errors import ConfigError

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROBLEM = re.compile(r"(?P<file>[^\n]+?):(?P<line>[0-9]+)(?::(?P<col>[0-9]+))?: (?P<msg>.+)",
                     re.DOTALL)


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
