"""The strict config loader: what a user sees from `check-config` on a bad config (every
problem with its file, line and column, exit 78), files it will not read, and ownership.
What code gets from a good config is test_config_values.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from config_helpers import DESIGN_EXAMPLE, check, write

from portguard.config import schema as config
from portguard.config.schema import load, loads
from portguard.errors import ConfigError, ExitStatus, NotPermittedError

pytestmark = pytest.mark.usefixtures("not_root")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, filename="c.yaml")
    return caught.value.problems


def svc(body: str) -> str:
    """A one-service config whose service `web` has `body` (already indented 4)."""
    return f"services:\n  web:\n{body}"


def bad_ports(ports: str, message: str) -> tuple[str, int, str]:
    """A BAD case: `web` declares `ports: PORTS`, and the problem is on that line (3)."""
    return svc(f"    ports: {ports}\n"), 3, message


def bad_setting(key: str, value: str, message: str) -> tuple[str, int, str]:
    """A BAD case: `web` declares ports [8080] and `KEY: VALUE`, the problem's line (4)."""
    return svc(f"    ports: [8080]\n    {key}: {value}\n"), 4, message


# (config text, line of the problem, what the message must say)
BAD = {
    "unknown top key": ("service:\n  web: {ports: [8080]}\n", 1,
                        "unknown key 'service' (did you mean 'services'?)"),
    "unknown service key": bad_setting(
        "polcy", "stop", "unknown key 'polcy' in service 'web.service' (did you mean 'policy'?)"),
    "unknown defaults key": ("defaults:\n  timout: 5s\nservices: {}\n", 2,
                             "unknown key 'timout' in defaults (did you mean 'timeout'?)"),
    "unknown daemon key": ("services: {}\ndaemon:\n  intervall: 5s\n", 3,
                           "(did you mean 'interval'?)"),
    "unknown duplicates key": bad_setting(
        "duplicates", "{cmds: [x]}", "unknown key 'cmds' in duplicates (did you mean 'commands'?)"),
    "duplicate key": (svc("    ports: [8080]\n    policy: stop\n    policy: wait\n"), 5,
                      "duplicate key 'policy' (first at line 4)"),
    "service twice": ("services:\n  web: {ports: [1]}\n  web.service: {ports: [2]}\n", 3,
                      "service 'web.service' is declared twice (first at line 2)"),
    "yes as policy": bad_setting("policy", "yes", "policy: 'yes' is a YAML 1.1 boolean"),
    "off as on_foreign": bad_setting("on_foreign", "off",
                                     "on_foreign: 'off' is a YAML 1.1 boolean"),
    "on as port": bad_ports("[on]", "port: 'on' is a YAML 1.1 boolean"),
    "yes as boolean": bad_setting("reuse_address", "yes",
                                  "reuse_address: 'yes' is a YAML 1.1 boolean that YAML 1.2 reads"
                                  " as a string; write true or false"),
    "quoted boolean": ("services: {}\ndaemon:\n  restart: \"true\"\n", 3,
                       "restart: expected true or false without quotes"),
    "sexagesimal port": (svc("    ports:\n      - 22:22\n"), 4,
                         "'22:22' is a YAML 1.1 base-60 number (it reads as 1342)"),
    "octal port": bad_ports("[0700]", "'0700' has a leading zero"),
    "hex port": bad_ports("[0x50]", "'0x50' is a hexadecimal"),
    "underscore port": bad_ports("[8_080]", "'8_080' has underscores"),
    "float port": bad_ports("[80.0]", "'80.0' is not a whole number"),
    "fullwidth digits": bad_ports("[\uff18\uff10\uff18\uff10]",
                                  "non-ASCII digit '\uff18' (U+FF18 FULLWIDTH DIGIT EIGHT)"),
    "arabic-indic digits": bad_ports('["\u0668\u0660\u0668\u0660/udp"]',
                                     "non-ASCII digit '\u0668' (U+0668 ARABIC-INDIC DIGIT EIGHT)"),
    "port 0": bad_ports("[0]", "port 0 is out of range 1-65535"),
    "port 65536": bad_ports('["127.0.0.1:65536"]', "port 65536 is out of range"),
    "reversed range": bad_ports('["7010-7000/tcp"]',
                                "range 7010-7000 is reversed; write 7000-7010"),
    "huge range": bad_ports('["1-65535"]', "range spans 65535 ports"),
    "unbracketed ipv6": bad_ports('["::1:8080"]', "IPv6 addresses go in brackets"),
    "unquoted ipv6": (svc("    ports:\n      - [::1]:8080\n"), 4,
                      'YAML syntax error: while parsing a flow node'),
    "zone id": bad_ports('["[fe80::1%eth0]:80"]', "zone ids (%eth0) are not supported"),
    "host name": bad_ports('["localhost:80"]', "host names are not resolved"),
    "bad protocol": bad_ports('["53/sctp"]', "unknown protocol 'sctp'"),
    "overlap": (svc('    ports:\n      - "8080"\n      - "127.0.0.1:8080"\n'), 5,
                "port '127.0.0.1:8080' overlaps '8080' (line 4) of the same service"),
    "range overlap": bad_ports('["7000-7010/tcp", 7005]', "port '7005' overlaps '7000-7010/tcp'"),
    "tag": bad_ports("[!!str 8080]", "YAML tag '!!str' refused"),
    "local tag": bad_setting("policy", "!foo stop", "YAML tag '!foo' refused"),
    "python tag": bad_setting("signal", "!!python/name:os.system x",
                              "YAML tag '!!python/name:os.system' refused"),
    "alias": ("defaults: {policy: &p stop}\nservices:\n  web: {ports: [1], policy: *p}\n", 3,
              "alias '*p' refused: anchors and aliases are not supported"),
    "ports not a list": bad_ports(
        '"8080"', "ports: expected a list such as [\"8080\", \"127.0.0.1:9090/tcp\"]"),
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
    "bad policy": bad_setting("policy", "stopp",
                              "policy: unknown value 'stopp' (did you mean 'stop'?); expected one"
                              " of stop, wait, fail, warn"),
    "bad on_foreign": bad_setting("on_foreign", "stop", "expected one of fail, wait"),
    "unknown signal": bad_setting("signal", "SIGTREM",
                                  "unknown signal 'SIGTREM' (did you mean 'SIGTERM'?)"),
    "signal number": bad_setting("signal", "15",
                                 "signal numbers differ between architectures; write the name"),
    "stopping signal": bad_setting("signal", "STOP", "SIGSTOP suspends a process"),
    "bad duration": bad_setting("timeout", "30x",
                                "timeout: '30x' is not a duration; write 250ms, 10s, 2m, 1h"),
    "duration unit hint": bad_setting("timeout", "2min", "write 'm' for 'min'"),
    "negative duration": ("defaults:\n  kill_after: -5s\nservices: {}\n", 2,
                          "kill_after: '-5s' is negative"),
    "zero duration": ("services: {}\ndaemon:\n  interval: 0\n", 3, "interval: '0' is zero"),
    "too long duration": bad_setting("timeout", "25h", "longer than one day"),
    "sexagesimal duration": bad_setting("timeout", "1:30",
                                        "'1:30' is a YAML 1.1 base-60 number (it reads as 90)"),
    "no ports": (svc("    policy: stop\n"), 2, "service 'web.service' has no 'ports'"),
    "empty ports": bad_ports("[]", "ports: empty list"),
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
