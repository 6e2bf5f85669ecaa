"""The bind-failure parser on real daemons' journal lines (tests/data/bindfail/), and
Hypothesis for what must and must not be taken for EADDRINUSE."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.decide import bindfail

DATA = Path(__file__).resolve().parents[1] / "data" / "bindfail"
EXPECTED: dict[str, Any] = {k: v for k, v in json.loads(
    (DATA / "expected.json").read_text()).items() if not k.startswith("_")}


def _messages(name: str) -> list[str]:
    return [json.loads(line)["MESSAGE"] for line in (DATA / f"{name}.jsonl").read_text()
            .splitlines()]


def test_the_corpus_covers_every_wording_the_issue_names() -> None:
    assert set(EXPECTED) >= {"nginx", "redis", "python", "node", "go", "java", "sshd",
                             "postgres", "haproxy", "lighttpd"}
    assert all((DATA / f"{name}.jsonl").exists() for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exactly_the_failure_lines_of_a_real_run_match(name: str) -> None:
    messages = _messages(name)
    matched = [i for i, m in enumerate(messages) if bindfail.parse_line(m) is not None]
    assert matched == EXPECTED[name]["lines"], [messages[i] for i in matched]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_find_reports_the_port_and_address_the_daemon_wrote(name: str) -> None:
    found = bindfail.find(_messages(name))
    assert [[f.wording, f.address, f.port] for f in found] == EXPECTED[name]["failures"]
    assert all(f.proto == "tcp" for f in found)


def test_a_port_less_failure_borrows_the_port_a_neighbouring_line_names() -> None:
    found = bindfail.find(_messages("postgres"))
    assert found[0].port == 5432 and found[0].endpoint == "127.0.0.1:5432"
    assert bindfail.find(_messages("python"))[0].endpoint == "?"


def test_pg_ctlcluster_names_the_port_another_cluster_holds() -> None:
    """Debian's pg_ctlcluster refuses before postgres binds when another cluster's socket
    lock (same socket directory) holds the port; its words are the only ones logged."""
    [f] = bindfail.find(_messages("pg_ctlcluster"))
    assert (f.wording, f.address, f.port, f.endpoint) == ("pg_ctlcluster", None, 5432,
                                                          "*:5432")
    assert bindfail.parse_line("Error: Port conflict: another instance is already running "
                               "on /var/run/postgresql with port 5432 (or so)") is None


def test_systemd_socket_unit_wording() -> None:
    line = "web.socket: Failed to create listening socket ([::]:8080): Address already in use"
    f = bindfail.parse_line(line)
    assert f is not None and (f.wording, f.address, f.port) == ("systemd", "::", 8080)


def test_spring_boot_names_its_port() -> None:
    f = bindfail.parse_line("Web server failed to start. Port 8080 was already in use.")
    assert f is not None and (f.wording, f.port) == ("java", 8080)


# -- Hypothesis ---------------------------------------------------------------------

ports = st.integers(1, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))
OTHER_ERRORS = ("Permission denied", "Cannot assign requested address",
                "Address family not supported by protocol", "Invalid argument")

# (template, takes an IPv6 address in brackets?) for wordings that carry both fields
TEMPLATES = (
    "nginx: [emerg] bind() to {ep} failed (98: {err})",
    "Bind to port {port} on {addr} failed: {err}.",
    "[ALERT]    (142) : Binding [/etc/haproxy/haproxy.cfg:9] for frontend web: "
    "cannot bind socket ({err}) for [{ep}]",
    "2026-12-02 17:30:02: (network.c.537) can't bind to socket: {ep}: {err}",
    "2026-12-08 02:41:19: (network.c.640) bind() {ep}: {err}",  # lighttpd in Debian 13
    "err=\"listen tcp {ep}: bind: {err_lower}\"",
    "web.socket: Failed to create listening socket ({ep}): {err}",
)


def _render(template: str, addr: str, port: int, err: str) -> str:
    ep = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    return template.format(ep=ep, port=port, addr=addr, err=err, err_lower=err.lower())


@given(st.sampled_from(TEMPLATES), st.one_of(v4, v6), ports)
def test_address_and_port_come_back_as_written(template: str, addr: str, port: int) -> None:
    f = bindfail.parse_line(_render(template, addr, port, "Address already in use"))
    assert f is not None
    assert (f.address, f.port) == (addr, port)


@given(st.sampled_from(TEMPLATES), st.one_of(v4, v6), ports, st.sampled_from(OTHER_ERRORS))
def test_the_same_wording_with_another_errno_is_not_a_bind_conflict(
        template: str, addr: str, port: int, err: str) -> None:
    assert bindfail.parse_line(_render(template, addr, port, err)) is None


@given(st.text(max_size=200).filter(
    lambda s: "in use" not in s.lower() and "eaddrinuse" not in s.lower()))
def test_lines_that_never_say_the_address_is_in_use_do_not_match(text: str) -> None:
    assert bindfail.parse_line(text) is None
    assert bindfail.find([text]) == []


# Lines real services log on a good start, or about ports without any failure.
NEAR_MISSES = st.sampled_from((
    "Server listening on 0.0.0.0 port {port}.",
    "Listening on 127.0.0.1:{port}",
    "listening on IPv4 address \"0.0.0.0\", port {port}",
    "Ready to accept connections tcp",
    "msg=\"Start listening for connections\" address=:{port}",
    "bind() to 0.0.0.0:{port} succeeded",
    "web.socket: Listening on [::]:{port}",
    "the port {port} is in use by design",
    "use the address 0.0.0.0:{port}",
))


@given(NEAR_MISSES, ports)
def test_healthy_lines_that_name_ports_do_not_match(template: str, port: int) -> None:
    assert bindfail.parse_line(template.format(port=port)) is None
