"""Capture real daemons' bind-failure journal lines into tests/data/bindfail/.

Run as root from the repository (boots the systemd sandbox of tests/support):

    PYTHONPATH=tests .venv/bin/python tests/data/capture_bindfail.py [NAME ...]

For each daemon a listener (tests/support/listener.py) first holds the port, then the
daemon is started under a unit of its own inside the sandbox and fails for real; every
journal record of that unit's failed invocation is written, as journalctl gave it (MESSAGE,
SYSLOG_IDENTIFIER, PRIORITY), to bindfail/NAME.jsonl. The parser's tests read those files
(tests/unit/test_bindfail.py): the lines bindfail/expected.json names must be found with
their port and address, and every other line of the run must not be. Nothing here is
edited by hand; expected.json is, after reading the captured lines.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.sandbox import Sandbox, listener_argv

HERE = Path(__file__).resolve().parent

OUT = HERE / "bindfail"
KEEP = ("MESSAGE", "SYSLOG_IDENTIFIER", "PRIORITY")

JAVA_SERVER = """\
import java.net.ServerSocket;
public class Srv {
    public static void main(String[] a) throws Exception {
        ServerSocket s = new ServerSocket(Integer.parseInt(a[0]));
        while (true) { s.accept().close(); }
    }
}
"""
LIGHTTPD_CONF = """\
server.document-root = "/tmp/cap/www"
server.port = {port}
server.modules = ()
"""
HAPROXY_CFG = """\
global
    log stdout format raw local0
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend web
    bind :{port}
    default_backend none
backend none
"""


class Daemon:
    """One daemon: the port it binds, its unit's ExecStart=, setup run inside first."""

    def __init__(self, name: str, port: int, exec_start: str, *, unit_extra: str = "",
                 setup: Callable[[Sandbox], None] | None = None,
                 holder_address: str = "0.0.0.0") -> None:
        self.name, self.port, self.exec_start = name, port, exec_start
        self.unit_extra, self.setup, self.holder_address = unit_extra, setup, holder_address


def _nginx(sb: Sandbox) -> None:
    sb.run(["mkdir", "-p", "/var/log/nginx"], check=True)


def _lighttpd(sb: Sandbox) -> None:
    sb.write_file("/tmp/cap/lighttpd.conf", LIGHTTPD_CONF.format(port=8081))
    sb.run(["mkdir", "-p", "/tmp/cap/www"], check=True)


def _haproxy(sb: Sandbox) -> None:
    sb.write_file("/tmp/cap/haproxy.cfg", HAPROXY_CFG.format(port=8082))


def _sshd(sb: Sandbox) -> None:
    sb.run(["mkdir", "-p", "/run/sshd"], check=True)


def _postgres(sb: Sandbox) -> None:
    sb.run(["install", "-d", "-o", "postgres", "/tmp/cap/pg", "/run/postgresql"], check=True)
    sb.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
            "/usr/lib/postgresql/15/bin/initdb", "-D", "/tmp/cap/pg/data", "-A", "trust"],
           check=True, timeout=120)


def _java(sb: Sandbox) -> None:
    sb.write_file("/tmp/cap/Srv.java", JAVA_SERVER)


DAEMONS = {
    # nginx under its packaged unit file, unchanged; Debian's default site binds :80
    "nginx": Daemon("nginx", 80, "", setup=_nginx),
    "redis": Daemon("redis", 6379, "/usr/bin/redis-server --port 6379 --save '' "
                    "--appendonly no --logfile ''"),
    "lighttpd": Daemon("lighttpd", 8081, "/usr/sbin/lighttpd -D -f /tmp/cap/lighttpd.conf",
                       setup=_lighttpd),
    "haproxy": Daemon("haproxy", 8082, "/usr/sbin/haproxy -db -f /tmp/cap/haproxy.cfg",
                      setup=_haproxy),
    "sshd": Daemon("sshd", 2222, "/usr/sbin/sshd -D -e -p 2222", setup=_sshd,
                   holder_address="::"),  # dual-stack: both of its binds fail
    "postgres": Daemon("postgres", 5432, "/usr/lib/postgresql/15/bin/postgres -D "
                       "/tmp/cap/pg/data -p 5432 -k /tmp/cap/pg -c listen_addresses=127.0.0.1",
                       unit_extra="User=postgres\n", setup=_postgres,
                       holder_address="127.0.0.1"),
    "python": Daemon("python", 8000, "/usr/bin/python3 -m http.server 8000"),
    "node": Daemon("node", 3000, "/usr/bin/node -e \"require('http').createServer()"
                   ".listen(3000)\"", holder_address="::"),
    "java": Daemon("java", 8083, "/usr/bin/java /tmp/cap/Srv.java 8083", setup=_java),
    # Go's net package (prometheus is the Go program Debian packages here)
    "go": Daemon("go", 9090, "/usr/bin/prometheus --config.file=/tmp/cap/none.yml "
                 "--storage.tsdb.path=/tmp/cap/prom --web.listen-address=:9090",
                 setup=lambda sb: sb.write_file("/tmp/cap/none.yml", "global: {}\n")),
}


def capture(sb: Sandbox, d: Daemon) -> list[dict[str, str]]:
    if d.setup:
        d.setup(sb)
    holder = sb.spawn(listener_argv("--port", str(d.port), "--addr", d.holder_address))
    sb.wait_listening(d.port)
    if d.name == "nginx":
        unit = "nginx.service"
        sb.write_unit(unit, Path("/lib/systemd/system/nginx.service").read_text())
    else:
        unit = f"cap-{d.name}.service"
        sb.write_unit(unit, f"[Service]\nExecStart={d.exec_start}\n{d.unit_extra}")
    cursor = sb.cursor()
    sb.systemctl("start", unit, timeout=60)
    sb.wait_unit_state(unit, "failed", "inactive", timeout=60)
    sb.systemctl("stop", unit)  # Restart= in a packaged unit would retry: one run is enough
    time.sleep(0.5)  # journald: the last lines of a dead process arrive a moment later
    records = sb.journal("-u", unit, since_cursor=cursor)
    sb.kill(holder)
    return [{k: str(r[k]) for k in KEEP if k in r and isinstance(r[k], str)} for r in records]


def main(names: list[str]) -> int:
    OUT.mkdir(exist_ok=True)
    with Sandbox() as sb:
        for name in names or list(DAEMONS):
            lines = capture(sb, DAEMONS[name])
            path = OUT / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
            hits = [r["MESSAGE"] for r in lines if "in use" in r.get("MESSAGE", "").lower()]
            print(f"{name}: {len(lines)} lines -> {path.relative_to(HERE.parent.parent)}; "
                  f"'in use' in: {shlex.join(hits)[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
