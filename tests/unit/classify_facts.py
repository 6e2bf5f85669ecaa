"""The facts classify's unit tests judge: one configured template (web@.service), its
unit, and processes, sockets, holders and a Context built from them
(test_classify.py, test_classify_activation.py)."""

from __future__ import annotations

import socket
from typing import Any

from portguard.config.schema import ALWAYS_PROTECTED, Service, loads
from portguard.decide.classify import Context
from portguard.model import Container, FileId, Holder, Process, ProgramId, Proto, Socket, Unit

CONFIG = loads("""\
protected: ["db-*.service", "web@canary.service"]
services:
  web@.service:
    ports: ["8080", "9090/tcp"]
    duplicates:
      units: ["web-legacy.service", "webold-*.service"]
      commands: ["/opt/legacy/bin/webd-*", "*gunicorn web.wsgi*"]
""")
WEB: Service = CONFIG.services[0]
UNIT = "web@green.service"
WWW_DATA = 33
OUR_NS = 4026531836  # a typical inode of the host's pid namespace
APP_ARGV = ("/usr/bin/python3", "/opt/web/app.py", "--port", "8080")
EXEC_START = (APP_ARGV,)
PYTHON_EXE = "/usr/bin/python3.11"  # what /proc/PID/exe shows: the symlink resolved
# file identities (st_dev, st_ino), as observe/procs/programs.py reads them
PYTHON_FILE, APP_FILE, OTHER_FILE = FileId(8, 1001), FileId(8, 2002), FileId(8, 3003)
APP = ProgramId(PYTHON_FILE, target=APP_FILE, interpreted=True)  # python3 /opt/web/app.py


def proc(pid: int = 4242, argv: tuple[str, ...] = APP_ARGV, *, exe: str = PYTHON_EXE,
         uid: int = WWW_DATA, user: str = "www-data", ns: int = OUR_NS,
         program: ProgramId | None = APP, ppid: int = 1) -> Process:
    return Process(pid=pid, start_time=987654, ppid=ppid, uid=uid, user=user, exe=exe,
                   cmdline=argv, fds=(3,), pid_namespace=ns, program_id=program)


def sock(port: int = 8080, state: str = "LISTEN", inode: int = 55501) -> Socket:
    return Socket(Proto.TCP, socket.AF_INET, state, "0.0.0.0", port, "0.0.0.0", 0,
                  WWW_DATA, inode)


def unit(name: str, state: str = "active") -> Unit:
    return Unit(name, active_state=state, sub_state="running" if state == "active" else "")


def holder(*procs: Process, unit_id: str | None = None, port: int = 8080,
           state: str = "LISTEN", unknown: str = "", container: Container | None = None,
           ) -> Holder:
    inode = 0 if not procs and not unknown else 55500 + port
    return Holder(sock(port, state, inode), tuple(procs),
                  unit(unit_id) if unit_id else None, container, unknown)


def context(**changes: Any) -> Context:
    ctx = Context(
        unit=UNIT,
        service=WEB,
        unit_info=Unit(UNIT, active_state="activating", exec_start=EXEC_START,
                       user="www-data"),
        unit_uid=WWW_DATA,
        protected_units=(*ALWAYS_PROTECTED, *CONFIG.protected),
        own_pids=frozenset({1, 700, 701}),  # systemd -> portguard's parent -> portguard
        own_pid_namespace=OUR_NS,
        unit_programs=(APP,),
    )
    return ctx._replace(**changes)
