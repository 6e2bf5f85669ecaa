"""`portguard why UNIT` after units really failed to bind, in the systemd sandbox.

Python, Node and Java programs under units of their own fail with their own words
(nothing here writes a bind-failure line by hand); `why` must name the port, who holds it
per `ss`, the kind of holder for that unit and the command that fixes it. Also a unit that
failed for another reason, one that never ran, a port that is free again, a template
instance, a socket-activated unit, and a broken config beside it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from support.cases import Case, config
from support.sandbox import REPO

NODE_APP = "require('http').createServer((q, s) => s.end('ok')).listen({port});\n"
JAVA_APP = """\
import java.net.ServerSocket;
public class Srv {
    public static void main(String[] a) throws Exception {
        ServerSocket s = new ServerSocket(Integer.parseInt(a[0]));
        while (true) { s.accept().close(); }
    }
}
"""


def why(case: Case, unit: str, *args: str) -> subprocess.CompletedProcess[str]:
    return case.sb.portguard(*args, "why", unit, timeout=60)


def why_json(case: Case, unit: str, *args: str) -> tuple[int, dict[str, Any]]:
    done = why(case, unit, *args, "--json")
    return done.returncode, json.loads(done.stdout)


def failed(case: Case, unit: str) -> None:
    """Start the unit, which must fail for real (Type=simple: after `start` returned)."""
    case.start(unit)
    case.sb.wait_unit_state(unit, "failed", timeout=20)
    case.sb.wait_journal(lambda r: "Failed with result" in r.get("MESSAGE", ""), "-u", unit)


def ss_pids(case: Case, port: int) -> set[int]:
    return case.sb.listening_pids(port)


def test_python_unit_beaten_by_another_service(case: Case) -> None:
    """Python names no port: it comes from the config; the holder is another unit."""
    port = case.port()
    holder = case.unit(f"hold-{case.uid}.service", "--port", str(port), guarded=False)
    holder_pid = case.start_listening(holder, port)
    web = f"pyweb-{case.uid}.service"
    case.sb.write_unit(web, f"[Service]\nExecStart=/usr/bin/python3 -m http.server {port}\n")
    case.units.append(web)
    case.config(config(port, web))
    failed(case, web)

    done = why(case, web, "--config", case.cfg)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "OSError: [Errno 98] Address already in use" in done.stdout
    assert f"systemctl stop {holder}" in done.stdout
    status, doc = why_json(case, web, "--config", case.cfg)
    assert status == 1 and doc["bind_failure"] and doc["exit_status"] == 1
    (p,) = doc["ports"]
    assert (p["port"], p["source"], p["free"]) == (port, "config", False)
    assert {h["pid"] for h in p["holders"]} == ss_pids(case, port) == {holder_pid}
    assert {(h["unit"], h["kind"]) for h in p["holders"]} == {(holder, "foreign")}
    assert p["next"][0]["command"] == f"systemctl stop {holder}"

    # the holder goes: the same failure, the port free now -> 0 and "restart"
    case.sb.systemctl("stop", holder, check=True)
    done = why(case, web, "--config", case.cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"the port is free now: `systemctl restart {web}`" in done.stdout

    # restarted, it runs and holds the port itself: that failure is resolved -> 0
    assert case.start(web).returncode == 0
    web_pid = case.main_pid(web)
    case.wait_listening(port, web_pid)
    status, doc = why_json(case, web, "--config", case.cfg)
    assert status == 0, doc
    (p,) = doc["ports"]
    assert {(h["pid"], h["kind"]) for h in p["holders"]} == {(web_pid, "itself")}
    assert p["free"] and "runs again" in p["next"][0]["advice"]


def test_node_unit_beaten_by_a_copy_started_by_hand_needs_no_config(case: Case) -> None:
    """Node names its port; the holder runs the same script outside any unit: a stray,
    and only then is `kill PID` the advice. No config file exists."""
    port = case.port()
    app = f"/tmp/why-{case.uid}/app.js"
    case.sb.write_file(app, NODE_APP.format(port=port))
    stray = case.sb.spawn(["/usr/bin/node", app])
    case.pids.append(stray)
    case.wait_listening(port, stray)
    web = f"nodeweb-{case.uid}.service"
    case.sb.write_unit(web, f"[Service]\nExecStart=/usr/bin/node {app}\n")
    case.units.append(web)
    failed(case, web)
    none = f"/etc/portguard/absent-{case.uid}.yaml"

    status, doc = why_json(case, web, "--config", none)
    assert status == 1, doc
    assert doc["failures"][0]["wording"] == "node"
    assert "EADDRINUSE" in doc["failures"][0]["line"]
    (p,) = doc["ports"]
    assert (p["port"], p["source"]) == (port, "message")
    assert {h["pid"] for h in p["holders"]} == ss_pids(case, port) == {stray}
    assert {h["kind"] for h in p["holders"]} == {"stray"}
    assert p["next"][0]["command"] == f"kill {stray} && systemctl restart {web}"
    assert not any("config" in n for n in doc["notes"])  # a missing config is no error


def test_java_template_instance_beaten_by_its_twin(case: Case) -> None:
    port = case.port()
    src = f"/tmp/why-{case.uid}/Srv.java"
    case.sb.write_file(src, JAVA_APP)
    template = f"jweb-{case.uid}@.service"
    case.sb.write_unit(template, f"[Service]\nExecStart=/usr/bin/java {src} {port}\n")
    blue, green = template.replace("@", "@blue"), template.replace("@", "@green")
    case.units += [blue, green]
    assert case.start(blue).returncode == 0
    blue_pid = case.main_pid(blue)
    case.wait_listening(port, blue_pid)
    failed(case, green)
    case.sb.wait_journal(lambda r: "BindException" in r.get("MESSAGE", ""), "-u", green)
    case.config(config(port, template))

    done = why(case, green, "--config", case.cfg)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "java.net.BindException: Address already in use" in done.stdout
    assert f"$ systemctl stop {blue}" in done.stdout
    assert f"portguard install {template}" in done.stdout
    _, doc = why_json(case, green, "--config", case.cfg)
    (p,) = doc["ports"]
    assert {(h["pid"], h["unit"], h["kind"]) for h in p["holders"]} == {
        (blue_pid, blue, "twin")}
    assert template.replace("@", "@NAME") in why(case, template).stderr  # template: usage
    assert why(case, template).returncode == 2


def test_unit_that_failed_for_another_reason(case: Case) -> None:
    unit = f"broken-{case.uid}.service"
    case.sb.write_unit(unit, "[Service]\nExecStart=/bin/sh -c "
                             "'echo \"cannot open /etc/broken.conf\" >&2; exit 3'\n")
    case.units.append(unit)
    failed(case, unit)
    case.sb.wait_journal(lambda r: "Failed with result" in r.get("MESSAGE", ""), "-u", unit)
    done = why(case, unit)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "shows no bind failure" in done.stdout
    assert "cannot open /etc/broken.conf" in done.stdout
    assert "status=3" in done.stdout
    assert "the port is not the cause" in done.stdout
    status, doc = why_json(case, unit)
    assert status == 3 and not doc["bind_failure"] and doc["ports"] == []
    assert any("cannot open" in r["message"] for r in doc["journal"])


def test_unit_that_never_ran(case: Case) -> None:
    unit = f"idle-{case.uid}.service"
    case.sb.write_unit(unit, "[Service]\nExecStart=/bin/true\n")
    done = why(case, unit)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "never ran" in done.stdout
    missing = why(case, f"nosuch-{case.uid}.service")
    assert missing.returncode == 3 and "knows no unit" in missing.stdout


def test_socket_activated_unit_that_binds_its_own_port(case: Case) -> None:
    """The service binds the port its own .socket unit already listens on (PID 1 holds
    it): the holder is its activation socket, and the ports come from the socket unit."""
    port = case.port()
    name = f"act-{case.uid}"
    case.sb.write_unit(f"{name}.socket", f"[Socket]\nListenStream={port}\n", reload=False)
    case.sb.write_unit(f"{name}.service",
                       f"[Service]\nExecStart=/usr/bin/python3 -m http.server {port}\n")
    case.units += [f"{name}.socket", f"{name}.service"]
    assert case.sb.systemctl("start", f"{name}.socket").returncode == 0
    assert ss_pids(case, port) == {1}
    failed(case, f"{name}.service")

    status, doc = why_json(case, f"{name}.service")
    assert status == 1, doc
    (p,) = doc["ports"]
    assert (p["port"], p["source"], p["source_detail"]) == (port, "socket unit",
                                                            f"{name}.socket")
    assert {(h["pid"], h["kind"], h.get("socket_unit")) for h in p["holders"]} == {
        (1, "activation", f"{name}.socket")}
    assert p["next"][0]["command"] == f"systemctl stop {name}.socket"


def test_a_broken_config_is_said_and_the_answer_still_comes(case: Case) -> None:
    port = case.port()
    holder = case.unit(f"hold-{case.uid}.service", "--port", str(port), guarded=False)
    case.start_listening(holder, port)
    web = f"bad-{case.uid}.service"
    case.unit(web, "--port", str(port), guarded=False)  # listener.py: "bind: Address ..."
    failed(case, web)
    case.write_config("services:\n  x.service:\n    ports: [\"99999\"]\n")
    done = why(case, web, "--config", case.cfg)
    assert "is broken" in done.stdout and case.cfg in done.stdout
    assert done.returncode in (1, 3), done.stdout + done.stderr


def test_a_socket_unit_that_could_not_listen_explains_its_service(case: Case) -> None:
    """systemd's own words: the .socket unit failed to bind, so its service never ran."""
    port = case.port()
    holder = case.unit(f"hold-{case.uid}.service", "--port", str(port), "--addr", "::",
                       guarded=False)
    holder_pid = case.start_listening(holder, port)
    name = f"sock-{case.uid}"
    case.sb.write_unit(f"{name}.socket", f"[Socket]\nListenStream={port}\n", reload=False)
    case.sb.write_unit(f"{name}.service", "[Service]\nExecStart=/bin/true\n")
    case.units += [f"{name}.socket", f"{name}.service"]
    assert case.sb.systemctl("start", f"{name}.socket").returncode != 0
    # systemd's (sd-listen) helper says it, not PID 1: `journalctl -u` (UNIT= only with
    # _PID=1) leaves it out; `why` reads it
    case.sb.wait_journal(lambda r: "Address already in use" in r.get("MESSAGE", ""),
                         f"UNIT={name}.socket")
    for unit in (f"{name}.socket", f"{name}.service"):
        status, doc = why_json(case, unit)
        assert status == 1, (unit, doc)
        assert doc["failures"][0]["wording"] == "systemd"
        assert doc["invocation"]["unit"] == f"{name}.socket"
        (p,) = doc["ports"]
        assert (p["port"], p["source"]) == (port, "message")
        assert {(h["pid"], h["unit"], h["kind"]) for h in p["holders"]} == {
            (holder_pid, holder, "foreign")}
        assert p["next"][0]["command"] == f"systemctl stop {holder}"


def test_a_user_who_may_not_read_the_journal_is_told_so(case: Case) -> None:
    unit = f"any-{case.uid}.service"
    case.sb.write_unit(unit, "[Service]\nExecStart=/bin/false\n")
    case.units.append(unit)
    failed(case, unit)
    done = case.sb.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "/usr/bin/python3", "-m", "portguard", "why", unit],
                       env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 77, done.stdout + done.stderr
    assert "cannot read the journal" in done.stderr and "systemd-journal" in done.stderr
