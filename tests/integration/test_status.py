"""`portguard status` and `portguard check-config` against a real systemd (the sandbox).

The config goes where an administrator puts it, /etc/portguard/config.yaml (a root-owned
tmpfs inside the sandbox, mode 0644, so the root-only ownership check passes as on a
host), and names a template service and a plain one. Their units run in the sandbox;
`status` is compared with what systemd (`systemctl show`) and `ss -p` say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from support.sandbox import Sandbox, listener_argv, listener_exec

CONFIG = "/etc/portguard/config.yaml"

NO_PROFILE = "no profile yet: run the unit once, or `portguard install` it while it runs"

def status(sb: Sandbox, *args: str, env: dict[str, str] | None = None,
           ) -> tuple[int, str]:
    r = sb.portguard(*args, "status", env=env)
    assert r.stderr == "", r.stderr
    return r.returncode, r.stdout


def status_json(sb: Sandbox, *args: str) -> tuple[int, dict[str, Any]]:
    code, out = status(sb, "--json", *args)
    return code, json.loads(out)


def section(text: str, service: str) -> list[str]:
    """The lines `status` prints for one service (its header line first)."""
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{service}  (")))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")),
               len(lines))
    return lines[start:end]


def holder_rows(lines: list[str], port: str) -> list[list[str]]:
    """Table rows (7 columns) under a service's port lines, for `port` ("9001/tcp")."""
    return [line.split(None, 6) for line in lines if line.split()[:1] == [port]]


class Services(NamedTuple):
    web: str  # the template
    web_a: str  # its instances
    web_b: str
    api: str  # a plain service
    pids: dict[int, int]  # port -> listener pid


@pytest.fixture(scope="module")
def services(sandbox: Sandbox) -> Iterator[Services]:
    """web-S@.service (instances on 9001, 9002; 9003 declared, unused) and api-S.service
    (9100/udp), all running, declared in /etc/portguard/config.yaml."""
    s = Services("web-st@.service", "web-st@9001.service", "web-st@9002.service",
                 "api-st.service", {})
    sandbox.write_unit(s.web, f"[Service]\nExecStart={listener_exec('--port', '%i')}\n",
                       reload=False)
    sandbox.write_unit(s.api, "[Service]\nExecStart="
                       f"{listener_exec('--udp', '--port', '9100')}\n", reload=False)
    sandbox.systemctl("daemon-reload", check=True)
    sandbox.systemctl("start", s.web_a, s.web_b, s.api, check=True)
    try:
        [s.pids[9001]], [s.pids[9002]] = sandbox.wait_listening(9001), sandbox.wait_listening(9002)
        [s.pids[9100]] = sandbox.wait_listening(9100, "udp")
        sandbox.write_file(CONFIG, f"""\
services:
  {s.web}:
    ports: ["9001-9002", "9003"]
  {s.api}:
    ports: ["9100/udp"]
    policy: fail
""", mode=0o644)
        yield s
    finally:
        sandbox.systemctl("stop", s.web_a, s.web_b, s.api)


def main_pid(sb: Sandbox, unit: str) -> int:
    return int(sb.unit_property(unit, "MainPID"))


# --- 8. status -----------------------------------------------------------------------------

def test_status_ports_held_by_the_services_own_units(sandbox: Sandbox,
                                                      services: Services) -> None:
    code, text = status(sandbox)
    assert code == 0, text

    web = section(text, services.web)
    assert web[0] == f"{services.web}  (policy stop, on_foreign fail)"
    assert f"  unit {services.web_a}: active/running, main pid {services.pids[9001]}" in web
    assert f"  unit {services.web_b}: active/running, main pid {services.pids[9002]}" in web
    assert main_pid(sandbox, services.web_a) == services.pids[9001]
    assert "  port 9001-9002: in use by the service" in web
    assert "  port 9003: free" in web
    assert [(r[3], r[5]) for r in holder_rows(web, "9001/tcp")] == [
        (str(services.pids[9001]), services.web_a)]
    assert [(r[3], r[5]) for r in holder_rows(web, "9002/tcp")] == [
        (str(services.pids[9002]), services.web_b)]

    api = section(text, services.api)
    assert api[0] == f"{services.api}  (policy fail, on_foreign fail)"
    assert f"  unit {services.api}: active/running, main pid {services.pids[9100]}" in api
    assert "  port 9100/udp: in use by the service" in api
    assert [r[:6] for r in holder_rows(api, "9100/udp")] == [
        ["9100/udp", "UNCONN", "0.0.0.0:9100", str(services.pids[9100]), "root",
         services.api]]


def test_status_json(sandbox: Sandbox, services: Services) -> None:
    code, doc = status_json(sandbox)
    assert code == 0
    assert list(doc) == ["services"]
    web, api = doc["services"]
    assert (web["service"], web["policy"], web["units_error"]) == (services.web, "stop", None)
    none = {"profile": None, "profile_note": NO_PROFILE}  # none learned: never installed
    assert web["units"] == [
        {"unit": services.web_a, "active_state": "active", "sub_state": "running",
         "main_pid": services.pids[9001], **none},
        {"unit": services.web_b, "active_state": "active", "sub_state": "running",
         "main_pid": services.pids[9002], **none},
    ]
    assert [(p["spec"], p["held_by_others"]) for p in web["ports"]] == [
        ("9001-9002", False), ("9003", False)]
    range_ports = web["ports"][0]["ports"]
    assert [(p["port"], p["proto"], p["free"]) for p in range_ports] == [
        (9001, "tcp", False), (9002, "tcp", False)]
    assert [[(h["pid"], h["unit"]) for h in p["holders"]] for p in range_ports] == [
        [(services.pids[9001], services.web_a)], [(services.pids[9002], services.web_b)]]
    assert web["ports"][1]["ports"] == [{"port": 9003, "proto": "tcp", "free": True,
                                         "holders": []}]

    assert (api["service"], api["policy"]) == (services.api, "fail")
    assert [u["unit"] for u in api["units"]] == [services.api]
    [api_port] = api["ports"]
    assert (api_port["spec"], api_port["held_by_others"]) == ("9100/udp", False)
    assert [(h["pid"], h["state"]) for h in api_port["ports"][0]["holders"]] == [
        (services.pids[9100], "UNCONN")]


def test_status_port_held_by_a_stray(sandbox: Sandbox, services: Services) -> None:
    stray = sandbox.spawn(listener_argv("--port", "9003"))
    try:
        assert sandbox.wait_listening(9003) == {stray}
        code, text = status(sandbox)
        assert code == 1, text
        web = section(text, services.web)
        assert "  port 9003: HELD BY ANOTHER" in web
        assert "  port 9001-9002: in use by the service" in web
        assert [(r[3], r[5]) for r in holder_rows(web, "9003/tcp")] == [(str(stray), "-")]

        code, doc = status_json(sandbox)
        assert code == 1
        web_doc = doc["services"][0]
        assert [(p["spec"], p["held_by_others"]) for p in web_doc["ports"]] == [
            ("9001-9002", False), ("9003", True)]
        assert [(h["pid"], h["unit"]) for h in web_doc["ports"][1]["ports"][0]["holders"]] \
            == [(stray, None)]
        assert doc["services"][1]["ports"][0]["held_by_others"] is False
    finally:
        sandbox.kill(stray)
    sandbox.wait_for(lambda: not sandbox.pid_alive(stray), 5, "the stray to exit")
    assert status(sandbox)[0] == 0


def test_status_port_with_only_lingering_sockets_is_not_in_use(
        sandbox: Sandbox, uid: str) -> None:
    # The service is stopped; its last connections left TIME_WAIT behind on its port.
    sandbox.python(r"""
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9200))
srv.listen()
cli = socket.create_connection(("127.0.0.1", 9200))
conn, _ = srv.accept()
conn.close()
assert cli.recv(1) == b""
cli.close()
srv.close()
""", check=True)
    tw = sandbox.run(["ss", "-Htan", "state", "time-wait", "sport", "=", ":9200"], check=True)
    assert "127.0.0.1:9200" in tw.stdout
    path = f"/etc/portguard/tw-{uid}.yaml"
    sandbox.write_file(path, f"services:\n  tw-{uid}.service:\n    ports: [\"9200\"]\n")

    code, text = status(sandbox, "--config", path)
    assert code == 0, text
    port_line = next(line for line in text.splitlines() if line.startswith("  port 9200:"))
    assert port_line.startswith("  port 9200: free"), text  # not "in use by the service"
    assert "D-Bus" not in text  # D-Bus is up

    code, doc = status_json(sandbox, "--config", path)
    assert code == 0
    [port] = doc["services"][0]["ports"]
    assert port["held_by_others"] is False
    assert port["ports"][0]["free"] is True


def test_status_judges_holders_by_the_declared_address(sandbox: Sandbox, uid: str) -> None:
    # DESIGN case 6: 127.0.0.2:P does not block 127.0.0.1:P; 0.0.0.0:P does. (preflight
    # decides with the same rules, portguard.decide.conflicts: status must not contradict it.)
    path = f"/etc/portguard/addr-{uid}.yaml"
    sandbox.write_file(path, f"""\
services:
  addr-{uid}.service:
    ports: ["127.0.0.1:9500", "127.0.0.1:9501"]
""")
    beside = sandbox.spawn(listener_argv("--addr", "127.0.0.2", "--port", "9500"))
    over = sandbox.spawn(listener_argv("--addr", "0.0.0.0", "--port", "9501"))
    try:
        sandbox.wait_listening(9500)
        sandbox.wait_listening(9501)
        check = sandbox.python(  # what bind() says, the authority
            "import socket\n"
            "for port in (9500, 9501):\n"
            "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "    try: s.bind(('127.0.0.1', port)); print(port, 'free')\n"
            "    except OSError as e: print(port, e.errno)\n"
            "    s.close()\n", check=True)
        assert check.stdout.split() == ["9500", "free", "9501", "98"]

        code, text = status(sandbox, "--config", path)
        assert code == 1, text  # 9501 is blocked
        lines = text.splitlines()
        assert "  port 127.0.0.1:9501: HELD BY ANOTHER" in lines
        line_9500 = next(line for line in lines if line.startswith("  port 127.0.0.1:9500:"))
        assert line_9500.startswith("  port 127.0.0.1:9500: free"), text

        code, doc = status_json(sandbox, "--config", path)
        assert [(p["spec"], p["held_by_others"]) for p in doc["services"][0]["ports"]] == [
            ("127.0.0.1:9500", False), ("127.0.0.1:9501", True)]
    finally:
        sandbox.kill(beside)
        sandbox.kill(over)


def test_status_reads_portguard_config_from_the_environment(
        sandbox: Sandbox, uid: str) -> None:
    path = f"/etc/portguard/env-{uid}.yaml"
    sandbox.write_file(path, f"services:\n  env-{uid}.service:\n    ports: [\"9300\"]\n")
    code, text = status(sandbox, env={"PORTGUARD_CONFIG": path})
    assert code == 0
    assert text.splitlines() == [f"env-{uid}.service  (policy stop, on_foreign fail)",
                                 f"  unit env-{uid}.service: inactive/dead",
                                 f"    profile: none ({NO_PROFILE})",
                                 "  port 9300: free"]


# --- status without D-Bus ----------------------------------------------------------------

def test_status_without_dbus(fresh_sandbox: Sandbox, uid: str) -> None:
    sb = fresh_sandbox
    web, instance = f"web-{uid}@.service", f"web-{uid}@9401.service"
    sb.write_unit(web, f"[Service]\nExecStart={listener_exec('--port', '%i')}\n")
    sb.systemctl("start", instance, check=True)
    [pid] = sb.wait_listening(9401)
    sb.write_file(CONFIG, f"services:\n  {web}:\n    ports: [\"9401\"]\n")
    sb.systemctl("stop", "dbus.socket", "dbus.service", check=True)

    code, text = status(sb)
    assert code == 0, text  # the holder is still known to be the service's own instance
    lines = text.splitlines()
    # the bus is down for every service: said once, above them
    assert lines[0].startswith("unit states unknown: ")
    assert not any(line.startswith("  unit state unknown") for line in lines)
    assert "  port 9401: in use by the service" in lines
    assert [(r[3], r[5]) for r in holder_rows(lines, "9401/tcp")] == [(str(pid), instance)]
    assert any("D-Bus API unreachable" in line for line in lines)

    code, doc = status_json(sb)
    assert code == 0
    [svc] = doc["services"]
    assert svc["units"] == []
    assert isinstance(svc["units_error"], str) and svc["units_error"]


# --- 9. check-config -------------------------------------------------------------------------

BAD_CONFIG = """\
services:
  web@.service:
    ports: ["99999"]
    policy: sometimes
  api.service:
    ports: ["8080"]
    colour: blue
"""


def test_check_config_on_a_bad_file(sandbox: Sandbox, uid: str) -> None:
    path = f"/etc/portguard/bad-{uid}.yaml"
    sandbox.write_file(path, BAD_CONFIG)

    r = sandbox.portguard("--config", path, "check-config")
    assert r.returncode == 78
    assert r.stdout == ""
    problems = r.stderr.splitlines()
    assert problems[-1] == f"FAILED: {path}: 3 error(s)"
    lines = []
    for problem in problems[:-1]:
        m = re.match(re.escape(path) + r":(\d+):", problem)
        assert m, problem
        lines.append(int(m.group(1)))
    assert lines == [3, 4, 7]  # the lines of 99999, sometimes and colour

    by_env = sandbox.portguard("check-config", env={"PORTGUARD_CONFIG": path})
    assert (by_env.returncode, by_env.stderr) == (78, r.stderr)
    as_status = sandbox.portguard("--config", path, "status")
    assert as_status.returncode == 78
    assert f"{path}:3:" in as_status.stderr


def test_check_config_on_a_good_file(sandbox: Sandbox, uid: str) -> None:
    path = f"/etc/portguard/good-{uid}.yaml"
    sandbox.write_file(path, "services:\n  web@.service:\n    ports: [\"8080\"]\n")
    r = sandbox.portguard("--config", path, "check-config")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"OK: {path}\n", "")
