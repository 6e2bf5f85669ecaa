"""The strict config loader: what a user sees from `check-config` and what code gets."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from signal import Signals

import pytest

from portguard import config
from portguard.app import default_config_path
from portguard.cli import main
from portguard.config import Config, OnForeign, Policy, load, loads
from portguard.errors import ConfigError, ExitStatus, NotPermittedError
from portguard.model import PortSpec, Proto

REPO = Path(__file__).resolve().parents[2]

# DESIGN.md's config block, verbatim.
DESIGN_EXAMPLE = """\
defaults:
  policy: stop            # stop | wait | fail | warn
  on_foreign: fail        # fail | wait
  timeout: 30s            # whole budget of one preflight
  kill_after: 10s         # signal -> SIGKILL
  signal: SIGTERM
  reuse_address: true     # the service sets SO_REUSEADDR
protected: [sshd.service, "systemd-*.service", dbus.service]
services:
  web@.service:           # a template key matches every instance
    ports: ["8080", "127.0.0.1:9090/tcp", "[::]:8443", "5353/udp", "7000-7010/tcp"]
    policy: stop
    duplicates:           # optional, beyond the automatic ExecStart match
      units: ["web-legacy.service"]
      commands: ["/opt/web/bin/webd*"]
daemon:                   # only read by `portguard daemon`
  interval: 30s           # reconcile at least this often (D-Bus events trigger passes too)
  restart: true           # start a configured unit again once its port is cleared
  flap_limit: 3           # the same conflict resolved this often within flap_window ...
  flap_window: 10m        # ... is reported, no longer fought
  metrics_file: /var/lib/prometheus/node-exporter/portguard.prom   # optional
"""


@pytest.fixture(autouse=True)
def _not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI runs as root, where load() checks ownership by default; tmp files would fail it."""
    monkeypatch.setattr(config, "_running_as_root", lambda: False)


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def check(path: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["--config", str(path), *extra, "check-config"], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, filename="c.yaml")
    return caught.value.problems


def svc(body: str) -> str:
    """A one-service config whose service `web` has `body` (already indented 4)."""
    return f"services:\n  web:\n{body}"


# (config text, line of the problem, what the message must say)
BAD = {
    "unknown top key": ("service:\n  web: {ports: [8080]}\n", 1,
                        "unknown key 'service' (did you mean 'services'?)"),
    "unknown service key": (
        svc("    ports: [8080]\n    polcy: stop\n"), 4,
        "unknown key 'polcy' in service 'web.service' (did you mean 'policy'?)"),
    "unknown defaults key": ("defaults:\n  timout: 5s\nservices: {}\n", 2,
                             "unknown key 'timout' in defaults (did you mean 'timeout'?)"),
    "unknown daemon key": ("services: {}\ndaemon:\n  intervall: 5s\n", 3,
                           "(did you mean 'interval'?)"),
    "unknown duplicates key": (svc("    ports: [8080]\n    duplicates: {cmds: [x]}\n"), 4,
                               "unknown key 'cmds' in duplicates (did you mean 'commands'?)"),
    "duplicate key": (svc("    ports: [8080]\n    policy: stop\n    policy: wait\n"), 5,
                      "duplicate key 'policy' (first at line 4)"),
    "service twice": ("services:\n  web: {ports: [1]}\n  web.service: {ports: [2]}\n", 3,
                      "service 'web.service' is declared twice (first at line 2)"),
    "yes as policy": (svc("    ports: [8080]\n    policy: yes\n"), 4,
                      "policy: 'yes' is a YAML 1.1 boolean"),
    "off as on_foreign": (svc("    ports: [8080]\n    on_foreign: off\n"), 4,
                          "on_foreign: 'off' is a YAML 1.1 boolean"),
    "on as port": (svc("    ports: [on]\n"), 3, "port: 'on' is a YAML 1.1 boolean"),
    "yes as boolean": (svc("    ports: [8080]\n    reuse_address: yes\n"), 4,
                       "reuse_address: 'yes' is a YAML 1.1 boolean that YAML 1.2 reads as a"
                       " string; write true or false"),
    "quoted boolean": ("services: {}\ndaemon:\n  restart: \"true\"\n", 3,
                       "restart: expected true or false without quotes"),
    "sexagesimal port": (svc("    ports:\n      - 22:22\n"), 4,
                         "'22:22' is a YAML 1.1 base-60 number (it reads as 1342)"),
    "octal port": (svc("    ports: [0700]\n"), 3, "'0700' has a leading zero"),
    "hex port": (svc("    ports: [0x50]\n"), 3, "'0x50' is a hexadecimal"),
    "underscore port": (svc("    ports: [8_080]\n"), 3, "'8_080' has underscores"),
    "float port": (svc("    ports: [80.0]\n"), 3, "'80.0' is not a whole number"),
    "fullwidth digits": (svc("    ports: [\uff18\uff10\uff18\uff10]\n"), 3,
                         "non-ASCII digit '\uff18' (U+FF18 FULLWIDTH DIGIT EIGHT)"),
    "arabic-indic digits": (svc('    ports: ["\u0668\u0660\u0668\u0660/udp"]\n'), 3,
                            "non-ASCII digit '\u0668' (U+0668 ARABIC-INDIC DIGIT EIGHT)"),
    "port 0": (svc("    ports: [0]\n"), 3, "port 0 is out of range 1-65535"),
    "port 65536": (svc('    ports: ["127.0.0.1:65536"]\n'), 3, "port 65536 is out of range"),
    "reversed range": (svc('    ports: ["7010-7000/tcp"]\n'), 3,
                       "range 7010-7000 is reversed; write 7000-7010"),
    "huge range": (svc('    ports: ["1-65535"]\n'), 3, "range spans 65535 ports"),
    "unbracketed ipv6": (svc('    ports: ["::1:8080"]\n'), 3, "IPv6 addresses go in brackets"),
    "unquoted ipv6": (svc("    ports:\n      - [::1]:8080\n"), 4,
                      'YAML syntax error: while parsing a flow node'),
    "zone id": (svc('    ports: ["[fe80::1%eth0]:80"]\n'), 3, "zone ids (%eth0) are not supported"),
    "host name": (svc('    ports: ["localhost:80"]\n'), 3, "host names are not resolved"),
    "bad protocol": (svc('    ports: ["53/sctp"]\n'), 3, "unknown protocol 'sctp'"),
    "overlap": (svc('    ports:\n      - "8080"\n      - "127.0.0.1:8080"\n'), 5,
                "port '127.0.0.1:8080' overlaps '8080' (line 4) of the same service"),
    "range overlap": (svc('    ports: ["7000-7010/tcp", 7005]\n'), 3,
                      "port '7005' overlaps '7000-7010/tcp'"),
    "tag": (svc("    ports: [!!str 8080]\n"), 3, "YAML tag '!!str' refused"),
    "local tag": (svc("    ports: [8080]\n    policy: !foo stop\n"), 4, "YAML tag '!foo' refused"),
    "python tag": (svc("    ports: [8080]\n    signal: !!python/name:os.system x\n"), 4,
                   "YAML tag '!!python/name:os.system' refused"),
    "alias": ("defaults: {policy: &p stop}\nservices:\n  web: {ports: [1], policy: *p}\n", 3,
              "alias '*p' refused: anchors and aliases are not supported"),
    "ports not a list": (svc('    ports: "8080"\n'), 3,
                         "ports: expected a list such as [\"8080\", \"127.0.0.1:9090/tcp\"]"),
    "services a list": ("services:\n  - web\n", 2, "services: expected a mapping"),
    "protected a string": ("protected: sshd\nservices: {}\n", 1, "protected: expected a list"),
    "port a mapping": (svc("    ports:\n      - {port: 80}\n"), 4,
                       "port: expected a port, got a mapping"),
    "empty file": ("", 1, "empty config"),
    "only comments": ("# nothing yet\n\n# still nothing\n", 1, "empty config"),
    "top level list": ("- services\n", 1, "the top level must be a mapping with 'services:'"),
    "no services": ("defaults:\n  policy: wait\n", 1, "no 'services:' key"),
    "syntax error": (svc("    ports: [8080]\n   policy: stop\n"), 4, "YAML syntax error"),
    "tab": ("services:\n\tweb: {ports: [1]}\n", 2, "(indent with spaces, not tabs)"),
    "two documents": ("services: {}\n---\nservices: {}\n", 2, "expected a single document"),
    "bad policy": (svc("    ports: [8080]\n    policy: stopp\n"), 4,
                   "policy: unknown value 'stopp' (did you mean 'stop'?); expected one of"
                   " stop, wait, fail, warn"),
    "bad on_foreign": (svc("    ports: [8080]\n    on_foreign: stop\n"), 4,
                       "expected one of fail, wait"),
    "unknown signal": (svc("    ports: [8080]\n    signal: SIGTREM\n"), 4,
                       "unknown signal 'SIGTREM' (did you mean 'SIGTERM'?)"),
    "signal number": (svc("    ports: [8080]\n    signal: 15\n"), 4,
                      "signal numbers differ between architectures; write the name"),
    "stopping signal": (svc("    ports: [8080]\n    signal: STOP\n"), 4,
                        "SIGSTOP suspends a process"),
    "bad duration": (svc("    ports: [8080]\n    timeout: 30x\n"), 4,
                     "timeout: '30x' is not a duration; write 250ms, 10s, 2m, 1h"),
    "duration unit hint": (svc("    ports: [8080]\n    timeout: 2min\n"), 4, "write 'm' for 'min'"),
    "negative duration": ("defaults:\n  kill_after: -5s\nservices: {}\n", 2,
                          "kill_after: '-5s' is negative"),
    "zero duration": ("services: {}\ndaemon:\n  interval: 0\n", 3, "interval: '0' is zero"),
    "too long duration": (svc("    ports: [8080]\n    timeout: 25h\n"), 4, "longer than one day"),
    "sexagesimal duration": (svc("    ports: [8080]\n    timeout: 1:30\n"), 4,
                             "'1:30' is a YAML 1.1 base-60 number (it reads as 90)"),
    "no ports": (svc("    policy: stop\n"), 2, "service 'web.service' has no 'ports'"),
    "empty ports": (svc("    ports: []\n"), 3, "ports: empty list"),
    "null service": ("services:\n  web:\n", 2, "service 'web.service' has no settings"),
    "socket unit": ("services:\n  web.socket: {ports: [1]}\n", 2, "is a .socket unit"),
    "suffix typo": ("services:\n  web.serivce: {ports: [1]}\n", 2, "(did you mean '.service'?)"),
    "bad unit name": ("services:\n  'web server': {ports: [1]}\n", 2, "is not a valid unit name"),
    "match-all twin": (svc("    ports: [1]\n    duplicates: {units: ['*']}\n"), 4,
                       "would make every unit a duplicate"),
    "match-all command": (svc("    ports: [1]\n    duplicates: {commands: ['*']}\n"), 4,
                          "would match every program"),
    "relative metrics": ("services: {}\ndaemon:\n  metrics_file: x.prom\n", 3,
                         "must be an absolute file path"),
    "flap_limit float": ("services: {}\ndaemon:\n  flap_limit: 3.0\n", 3,
                         "expected a whole number, got '3.0'"),
    "flap_limit zero": ("services: {}\ndaemon:\n  flap_limit: 0\n", 3, "out of range 1-1000"),
    "missing value": ("defaults:\n  policy:\nservices: {}\n", 2, "policy: missing value"),
    "control character": ("services: {}\nx: \x07\n", 2, "character U+0007 is not allowed"),
}


@pytest.mark.parametrize(("text", "line", "message"), BAD.values(), ids=BAD.keys())
def test_bad_config_check_config_exits_78_naming_file_and_line(
        tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    status, out, err = check(path)
    assert status == ExitStatus.BAD_CONFIG == 78
    assert out == ""
    hits = [e for e in err.splitlines() if message in e]
    assert hits, err
    assert hits[0].startswith(f"{path}:{line}:"), err
    assert err.splitlines()[-1].startswith(f"FAILED: {path}: ")


@pytest.mark.parametrize(("text", "line", "message"), BAD.values(), ids=BAD.keys())
def test_bad_config_loads_reports_file_line_col(text: str, line: int, message: str) -> None:
    found = [p for p in problems(text) if message in p]
    assert found
    file, at_line, col, _ = found[0].split(":", 3)
    assert (file, int(at_line)) == ("c.yaml", line)
    assert int(col) >= 1


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


def test_check_config_prints_ok_on_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    assert check(path) == (0, f"OK: {path}\n", "")


def test_check_config_prints_every_error_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n"
                           "  web:\n"
                           "    ports: [8080, 70000]\n"
                           "    policy: sometimes\n"
                           "daemon: {restart: on}\n")
    status, out, err = check(path)
    assert (status, out) == (78, "")
    assert err.splitlines() == [
        f"{path}:3:19: port: '70000': port 70000 is out of range 1-65535",
        f"{path}:4:13: policy: unknown value 'sometimes'; expected one of stop, wait, fail, warn",
        f"{path}:5:19: restart: 'on' is a YAML 1.1 boolean that YAML 1.2 reads as a string;"
        " write true or false",
        f"FAILED: {path}: 3 error(s)",
    ]


def test_check_config_json_lists_the_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "services: {}\nbogus: 1\n")
    status, out, _ = check(path, "--json")
    assert status == 78
    assert '"ok": false' in out and f"{path}:2:1: unknown key 'bogus'" in out


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


def test_large_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "services: {}\n" + "#" * (1024 * 1024))
    status, _, err = check(path)
    assert status == 78
    assert f"{path}: larger than 64 KiB; refusing to parse it" in err


def test_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    status, _, err = check(tmp_path / "nope.yaml")
    assert status == 78
    assert f"{tmp_path / 'nope.yaml'}: no such file" in err


def test_unreadable_file_is_not_permitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    real_open = os.open

    def deny(name: object, flags: int, *args: int) -> int:
        if Path(str(name)) == path:
            raise PermissionError(13, "Permission denied")
        return real_open(name, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(NotPermittedError) as caught:
        load(path)
    assert caught.value.exit_status == 77
    assert f"cannot read the config {path}: permission denied; run portguard as root" in str(
        caught.value)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_non_regular_file_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.yaml"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    status, _, err = check(path)
    assert status == 78
    assert f"{path}: not a regular file" in err


def test_non_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"services:\n  web: {ports: [1]}\n# caf\xe9\n")
    status, _, err = check(path)
    assert status == 78
    assert f"{path}:3: not UTF-8 (byte 0xe9)" in err


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfservices:\n  web: {ports: [1]}\n")
    assert load(path).services[0].name == "web.service"


def test_deep_nesting_is_refused_not_crashed() -> None:
    assert problems("services: " + "[" * 5000 + "]" * 5000 + "\n")[0].endswith("nesting too deep")


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


# -- ownership ---------------------------------------------------------------------------

def test_world_writable_config_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    path.chmod(0o666)
    with pytest.raises(ConfigError) as caught:
        load(path, check_owner=True)
    assert caught.value.exit_status == 78
    first = caught.value.problems[0]
    assert first.startswith(f"{path}: ")
    assert "is writable by group or others (mode 0666)" in first
    assert first.endswith(f"chmod go-w {path}") or f"&& chmod go-w {path}" in first
    assert load(path, check_owner=False).services  # the same file, unchecked, is fine


def test_ownership_is_checked_by_default_only_as_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    path.chmod(0o666)
    assert load(path).services
    monkeypatch.setattr(config, "_running_as_root", lambda: True)
    status, _, err = check(path)
    assert status == 78 and f"chmod go-w {path}" in err


def fake_stat(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


SAFE_DIR = fake_stat(0, stat.S_IFDIR | 0o755)
SAFE_FILE = fake_stat(0, stat.S_IFREG | 0o644)


def test_safe_file_in_safe_directories_passes() -> None:
    path = Path("/etc/portguard/config.yaml")
    assert config.ownership_problems(path, SAFE_FILE, stat_dir=lambda _: SAFE_DIR) == []


def test_unsafe_directories_are_named_with_their_fix() -> None:
    path = Path("/srv/pg/config.yaml")
    dirs = {Path("/srv/pg"): fake_stat(1000, stat.S_IFDIR | 0o775),
            Path("/srv"): fake_stat(0, stat.S_IFDIR | 0o1777)}
    found = config.ownership_problems(path, fake_stat(1000, stat.S_IFREG | 0o644),
                                      stat_dir=lambda d: dirs.get(d, SAFE_DIR))
    assert found == [
        f"{path}: is owned by uid 1000, not root; a root-run portguard refuses a config"
        " others can change. Fix: chown root:root /srv/pg/config.yaml",
        f"{path}: directory /srv/pg is owned by uid 1000, not root and is writable by group"
        " or others (mode 0775); others could replace the config. Fix: chown root:root"
        " /srv/pg && chmod go-w /srv/pg",
        f"{path}: directory /srv is writable by group or others (mode 1777); others could"
        " replace the config. Fix: move the config to a root-owned directory such as"
        " /etc/portguard",
    ]


def test_symlinked_config_is_checked_along_its_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = write(tmp_path / "real", DESIGN_EXAMPLE)
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    bad = fake_stat(0, stat.S_IFDIR | 0o777)
    found = config.ownership_problems(
        link, SAFE_FILE, stat_dir=lambda d: bad if d == target.parent.resolve() else SAFE_DIR)
    assert found == [f"{link}: directory {target.parent.resolve()} is writable by group or"
                     f" others (mode 0777); others could replace the config. Fix: chmod go-w"
                     f" {target.parent.resolve()}"]
