"""`portguard who ADDR:PORT --[no-]reuse-address`: preflight's question, asked by a person.

Real holders in the sandbox; every answer is checked against what bind() itself says
there, and the holder is still there afterwards (asking touches nothing).
"""

from __future__ import annotations

import json
from typing import Any

from support.sandbox import LISTENER, Sandbox

SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot read the venv under /root

KERNEL_BIND = """
import socket, sys
host, port, proto, reuse = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                  socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
try:
    s.bind((host, port))
    print("free")
except OSError as e:
    print(e.errno)
"""


def kernel_says(sb: Sandbox, host: str, port: int, proto: str, reuse: bool) -> str:
    return sb.python(KERNEL_BIND, host, str(port), proto, "1" if reuse else "0",
                     check=True).stdout.strip()


def ask(sb: Sandbox, *args: str) -> tuple[int, list[str], dict[str, Any]]:
    text = sb.portguard("who", *args)
    doc = sb.portguard("--json", "who", *args)
    assert text.stderr == doc.stderr == "", text.stderr + doc.stderr
    assert text.returncode == doc.returncode
    [port] = json.loads(doc.stdout)["ports"]
    return text.returncode, text.stdout.splitlines(), port


def test_udp_sharing_is_the_kernels_answer(sandbox: Sandbox) -> None:
    # issue 12 class 1: udp 0.0.0.0:P, SO_REUSEADDR, as nobody; a service binding
    # 127.0.0.2:P with SO_REUSEADDR shares it, one without does not.
    port = 9631
    pid = sandbox.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         SYSTEM_PYTHON, LISTENER, "--udp", "--addr", "0.0.0.0",
                         "--port", str(port), "--reuseaddr"],
                        wait_exec=False)  # setpriv execs python: wait_listening waits
    try:
        assert sandbox.wait_listening(port, "udp") == {pid}
        assert kernel_says(sandbox, "127.0.0.2", port, "udp", True) == "free"
        assert kernel_says(sandbox, "127.0.0.2", port, "udp", False) == "98"

        code, lines, doc = ask(sandbox, f"127.0.0.2:{port}/udp", "--reuse-address")
        assert code == 0, lines
        assert lines[0] == f"bind 127.0.0.2:{port}/udp with SO_REUSEADDR: free"
        assert doc["free"] is True
        assert [(h["pid"], h["user"], h["blocks"]) for h in doc["holders"]] == [
            (pid, "nobody", False)]

        code, lines, doc = ask(sandbox, f"127.0.0.2:{port}/udp", "--no-reuse-address")
        assert code == 1, lines
        assert lines[0].startswith(f"bind 127.0.0.2:{port}/udp with no SO_REUSEADDR: "
                                   f"BLOCKED by UNCONN 0.0.0.0:{port} pid {pid} (")
        assert doc["free"] is False
        assert [(h["pid"], h["blocks"]) for h in doc["holders"]] == [(pid, True)]

        # plain `who` still answers "who holds it", whatever a service could share
        assert sandbox.portguard("who", f"{port}/udp").returncode == 1
        assert sandbox.listening_pids(port, "udp") == {pid}  # asked, never touched
    finally:
        sandbox.kill(pid)


def test_time_wait_of_a_dual_stack_child_blocks_ipv4_wildcard(sandbox: Sandbox) -> None:
    # issue 12 class 4: a [::] dual-stack listener accepted a connection from ::1 and
    # closed it first: TIME_WAIT on [::1]:P, which an IPv4 wildcard bind without
    # SO_REUSEADDR meets (the child is not ipv6only), 127.0.0.1:P does not.
    port = 9632
    sandbox.python(f"""
import socket
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", {port})); srv.listen()
cli = socket.create_connection(("::1", {port}))
conn, _ = srv.accept(); conn.close(); cli.recv(1); cli.close(); srv.close()
""", check=True)
    tw = sandbox.run(["ss", "-Htan", "state", "time-wait", "sport", "=", f":{port}"])
    assert f"[::1]:{port}" in tw.stdout, tw.stdout
    assert kernel_says(sandbox, "0.0.0.0", port, "tcp", False) == "98"
    assert kernel_says(sandbox, "127.0.0.1", port, "tcp", False) == "free"

    code, lines, doc = ask(sandbox, f"0.0.0.0:{port}", "--no-reuse-address")
    assert code == 1, lines
    assert lines[0] == (f"bind 0.0.0.0:{port}/tcp with no SO_REUSEADDR: BLOCKED by "
                        f"TIME_WAIT [::1]:{port} kernel-held, expires on its own")
    assert [(h["state"], h["blocks"]) for h in doc["holders"]] == [("TIME_WAIT", True)]

    code, lines, doc = ask(sandbox, f"127.0.0.1:{port}", "--no-reuse-address")
    assert (code, lines[0]) == (0, f"bind 127.0.0.1:{port}/tcp with no SO_REUSEADDR: free")
