"""The strict config loader on good configs: the values code gets from each key and its
defaults. What a bad config gets (and check-config prints) is test_config.py."""

from __future__ import annotations

from pathlib import Path
from signal import Signals

import pytest
from config_helpers import DESIGN_EXAMPLE, REPO

from portguard.app import default_config_path
from portguard.config import schema as config
from portguard.config.schema import Config, OnForeign, Policy, load, loads
from portguard.model import PortSpec, Proto

pytestmark = pytest.mark.usefixtures("not_root")


def test_design_example_loads_with_the_documented_values() -> None:
    cfg = loads(DESIGN_EXAMPLE)
    assert cfg.path is None
    assert cfg.defaults == config.Defaults(Policy.STOP, OnForeign.FAIL, 30.0, 10.0,
                                           Signals.SIGTERM, True)
    assert cfg.protected == ("sshd.service", "systemd-*.service", "dbus.service")
    (web,) = cfg.services
    assert (web.name, web.is_template, web.line) == ("web@.service", True, 10)
    assert [(p.first, p.last, p.proto, p.address, p.text) for p in web.ports] == [
        (8080, 8080, Proto.TCP, None, "8080"),
        (9090, 9090, Proto.TCP, "127.0.0.1", "127.0.0.1:9090/tcp"),
        (8443, 8443, Proto.TCP, "::", "[::]:8443"),
        (5353, 5353, Proto.UDP, None, "5353/udp"),
        (7000, 7010, Proto.TCP, None, "7000-7010/tcp"),
    ]
    assert {p.line for p in web.ports} == {11}
    assert web.duplicates == config.Duplicates(("web-legacy.service",), ("/opt/web/bin/webd*",))
    assert cfg.service_for("web@blue.service") is web
    assert cfg.service_for("web@blue") is web
    assert cfg.service_for("web-legacy.service") is None
    assert cfg.daemon == config.DaemonSettings(
        30.0, True, 3, 600.0, Path("/var/lib/prometheus/node-exporter/portguard.prom"))
    assert cfg.is_protected("systemd-journald.service")
    assert not cfg.is_protected("web@blue.service")


def test_service_settings_override_defaults_and_inherit_the_rest() -> None:
    cfg = loads("defaults: {policy: wait, timeout: 5s, signal: INT, reuse_address: false}\n"
                "services:\n"
                "  a: {ports: [1]}\n"
                "  b: {ports: [2], policy: warn, timeout: 250ms, kill_after: 1.5,"
                " on_foreign: wait, signal: SIGHUP, reuse_address: true}\n")
    a, b = cfg.services
    assert (a.policy, a.timeout, a.kill_after, a.signal, a.reuse_address) == (
        Policy.WAIT, 5.0, 10.0, Signals.SIGINT, False)
    assert (b.policy, b.on_foreign, b.timeout, b.kill_after, b.signal, b.reuse_address) == (
        Policy.WARN, OnForeign.WAIT, 0.25, 1.5, Signals.SIGHUP, True)


def test_config_example_loads_and_documents_every_key() -> None:
    path = REPO / "config.example.yaml"
    cfg = load(path, check_owner=False)
    text = path.read_text()
    keys = ["defaults", "policy", "on_foreign", "timeout", "kill_after", "signal",
            "reuse_address", "protected", "services", "ports", "duplicates", "units",
            "commands", "daemon", "interval", "restart", "flap_limit", "flap_window",
            "metrics_file"]
    assert [k for k in keys if f"{k}:" not in text] == []
    assert cfg.path == path
    assert cfg.service_for("web@blue").ports[0].first == 8080
    assert all(s.ports for s in cfg.services)


def test_empty_sections_count_as_absent() -> None:
    cfg = loads("defaults:\n#  policy: wait\nprotected:\nservices:\n  web:\n"
                "    ports: [8080]\n    duplicates:\ndaemon: ~\n")
    assert cfg == Config(None, services=cfg.services)
    assert cfg.services[0].duplicates == config.Duplicates()


def test_different_services_may_share_ports() -> None:
    cfg = loads("services:\n  web@blue: {ports: [8080]}\n  web@green: {ports: [8080]}\n"
                "  legacy: {ports: ['0.0.0.0:8080']}\n")
    assert [s.ports[0].first for s in cfg.services] == [8080, 8080, 8080]


def test_one_service_may_declare_separate_ipv4_and_ipv6_listeners() -> None:
    cfg = loads("services:\n  web: {ports: ['0.0.0.0:443', '[::]:443', '127.0.0.1:80',"
                " '127.0.0.2:80', 53/udp, 53/tcp]}\n")
    assert [str(p) for p in cfg.services[0].ports] == [
        "0.0.0.0:443", "[::]:443", "127.0.0.1:80", "127.0.0.2:80", "53/udp", "53/tcp"]


@pytest.mark.parametrize(("text", "expected"), [
    ("8080", PortSpec(8080, 8080, Proto.TCP, None)),
    ("8080/udp", PortSpec(8080, 8080, Proto.UDP, None)),
    ("127.0.0.1:8080", PortSpec(8080, 8080, Proto.TCP, "127.0.0.1")),
    ("[::1]:8080/tcp", PortSpec(8080, 8080, Proto.TCP, "::1")),
    ("[0:0::1]:8080", PortSpec(8080, 8080, Proto.TCP, "::1")),  # normalised
    ("[::]:8443", PortSpec(8443, 8443, Proto.TCP, "::")),
    ("0.0.0.0:80", PortSpec(80, 80, Proto.TCP, "0.0.0.0")),
    ("7000-7010/tcp", PortSpec(7000, 7010, Proto.TCP, None)),
    ("127.0.0.1:7000-7010", PortSpec(7000, 7010, Proto.TCP, "127.0.0.1")),
])
def test_port_specs(text: str, expected: PortSpec) -> None:
    (spec,) = loads(f"services:\n  web:\n    ports: ['{text}']\n").services[0].ports
    assert (spec.first, spec.last, spec.proto, spec.address) == (
        expected.first, expected.last, expected.proto, expected.address)
    assert (spec.text, spec.line) == (text, 3)


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0), ("30", 30.0),
    ("1.5", 1.5), ("'45'", 45.0), ("0.5s", 0.5), ("24h", 86400.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert loads(f"defaults: {{timeout: {text}}}\nservices: {{}}\n").defaults.timeout == seconds


@pytest.mark.parametrize(("text", "expected"), [
    ("SIGTERM", Signals.SIGTERM), ("TERM", Signals.SIGTERM), ("SIGINT", Signals.SIGINT),
    ("HUP", Signals.SIGHUP), ("SIGQUIT", Signals.SIGQUIT), ("USR1", Signals.SIGUSR1),
    ("SIGUSR2", Signals.SIGUSR2), ("SIGKILL", Signals.SIGKILL), ("WINCH", Signals.SIGWINCH),
])
def test_signals_by_name(text: str, expected: Signals) -> None:
    assert loads(f"defaults: {{signal: {text}}}\nservices: {{}}\n").defaults.signal is expected


def test_builtin_defaults_when_nothing_is_set() -> None:
    cfg = loads("services: {}\n")
    assert cfg == Config(None, config.Defaults(), (), (), config.DaemonSettings())
    assert (cfg.defaults.policy, cfg.defaults.on_foreign, cfg.defaults.timeout,
            cfg.defaults.kill_after, cfg.defaults.signal, cfg.defaults.reuse_address) == (
        "stop", "fail", 30.0, 10.0, Signals.SIGTERM, True)
    assert (cfg.daemon.interval, cfg.daemon.restart, cfg.daemon.flap_limit,
            cfg.daemon.flap_window, cfg.daemon.metrics_file) == (30.0, True, 3, 600.0, None)


def test_template_matching_and_suffix_normalisation() -> None:
    cfg = loads("services:\n  web@: {ports: [1]}\n  web@blue: {ports: [2]}\n"
                "  api: {ports: [3]}\n  worker.service: {ports: [4]}\n")
    assert [s.name for s in cfg.services] == [
        "web@.service", "web@blue.service", "api.service", "worker.service"]
    template, blue, api, worker = cfg.services
    assert cfg.service_for("web@blue") is blue  # the exact key wins over the template
    assert cfg.service_for("web@green.service") is template
    assert cfg.service_for("web@.service") is template
    assert cfg.service_for("api") is api and cfg.service_for("api.service") is api
    assert cfg.service_for("worker") is worker
    assert cfg.service_for("api.socket") is None
    assert cfg.service_for("web") is None
    assert cfg.service_for("webx@green") is None
    assert (template.is_template, blue.is_template) == (True, False)
    assert template.instance_glob == "web@*.service" and api.instance_glob == "api.service"
    assert template.matches("web@green") and not template.matches("webby@green.service")
    assert api.matches("api") and not api.matches("api@x.service")


def test_protected_globs() -> None:
    cfg = loads("protected: [sshd, 'systemd-*', '*.socket', 'db@*']\nservices: {}\n")
    assert cfg.protected == ("sshd.service", "systemd-*.service", "*.socket", "db@*.service")
    assert cfg.is_protected("sshd") and cfg.is_protected("sshd.service")
    assert cfg.is_protected("systemd-journald") and cfg.is_protected("cups.socket")
    assert cfg.is_protected("db@main.service")
    assert not cfg.is_protected("nginx.service") and not cfg.is_protected("systemd-x.timer")
    assert cfg.is_protected("init.scope") and cfg.is_protected("portguard")  # always


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTGUARD_CONFIG", "/srv/pg.yaml")
    assert default_config_path() == Path("/srv/pg.yaml")
    monkeypatch.setenv("PORTGUARD_CONFIG", "")
    assert default_config_path() == Path("/etc/portguard/config.yaml")
    monkeypatch.delenv("PORTGUARD_CONFIG")
    assert default_config_path() == Path("/etc/portguard/config.yaml")
