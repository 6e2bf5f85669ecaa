"""Socket activation against a real systemd (DESIGN cases 4 and 7): a guarded service
started by its own .socket unit passes (PID 1's listener is held for it), and another
service on that port is refused with advice that names the socket unit, never init.scope.

The service here is a small socket-activated server (it serves the fd systemd passes);
tests/field/ does the same with the packaged ssh.socket and sshd.
"""

from __future__ import annotations

import json

from support.cases import PORTS_CLEAR, REFUSED, Case, config
from support.sandbox import PYTHON, REPO

# Answers every connection with "hi" on the socket systemd passes as fd 3.
SERVE_FD3 = """\
import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(b"hi\\n")
    c.close()
"""


def activated(case: Case, name: str, port: int) -> tuple[str, str]:
    """`name`.socket on `port` and its guarded `name`.service; the socket started."""
    sock, svc = f"{name}.socket", f"{name}.service"
    case.sb.write_file(f"/run/{name}.py", SERVE_FD3)
    case.sb.write_unit(sock, f"[Socket]\nListenStream={port}\n", reload=False)
    case.sb.write_unit(svc, f"[Service]\nEnvironment=PYTHONPATH={REPO}\n"
                       f"ExecStartPre=+{PYTHON} -m portguard --config {case.cfg} preflight %n\n"
                       f"ExecStart={PYTHON} /run/{name}.py\n")
    case.units += [svc, sock]
    assert case.start(sock).returncode == 0
    return sock, svc


def connect(case: Case, port: int) -> str:
    done = case.sb.python("import socket, sys\n"
                          "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 10)\n"
                          "c.settimeout(10); print(c.recv(10).decode().strip())", str(port))
    return done.stdout.strip() + done.stderr


def test_a_connection_starts_the_guarded_service_through_its_own_socket(case: Case) -> None:
    port = case.port()
    sock, svc = f"act-{case.uid}.socket", f"act-{case.uid}.service"
    case.config(config(port, svc))
    activated(case, f"act-{case.uid}", port)
    assert case.state(svc) == "inactive"
    assert case.sb.listening_pids(port) == {1}

    assert connect(case, port) == "hi"  # the first connection starts the service
    assert case.sb.wait_unit_state(svc, "active") == "active"
    assert case.state(sock) == "active"
    clear = case.record(PORTS_CLEAR, svc)
    assert f"held only by its own activation socket ({sock})" in clear["MESSAGE"]
    assert not case.records(f"MESSAGE_ID={REFUSED}", unit=svc)
    assert connect(case, port) == "hi"

    # status: the port is the service's own, not held by another
    shown = case.sb.portguard("--config", case.cfg, "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"port {port}: in use by the service" in shown.stdout


def test_another_service_on_a_socket_units_port_is_refused_naming_the_socket(case: Case
                                                                             ) -> None:
    port = case.port()
    sock, svc = f"ssa-{case.uid}.socket", f"ssa-{case.uid}.service"
    second = f"second-{case.uid}.service"
    case.config(config(port, second))
    activated(case, f"ssa-{case.uid}", port)
    case.unit(second, "--port", str(port))

    started = case.start(second)
    assert started.returncode != 0
    assert case.state(second) == "failed"
    refused = case.record(REFUSED, second, holder_unit=sock, holder_pid=1,
                          holder_kind="foreign")
    text = refused["MESSAGE"]
    assert f"PID 1 (systemd) for {sock}" in text
    assert f"systemctl stop {sock}" in text and f"{svc} holds the port too" in text
    assert "init.scope" not in text
    assert case.sb.listening_pids(port) == {1} and case.state(sock) == "active"

    doc = json.loads(case.sb.portguard("--json", "who", str(port)).stdout)
    [row] = doc["ports"][0]["holders"]
    assert (row["pid"], row["unit"], row["activates"]) == (1, sock, [svc])
    shown = case.sb.portguard("--config", case.cfg, "status")
    assert shown.returncode == 1 and f"port {port}: HELD BY ANOTHER" in shown.stdout
    assert sock in shown.stdout
