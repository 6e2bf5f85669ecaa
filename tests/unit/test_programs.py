"""observe/procs/programs.py: which program an argv runs, by file identity (docs/identity.md,
the stray case).

The argv parsing is pure; the identities are read from real files under tmp_path (a
symlink, a #! script, busybox-style applets), as /proc and ExecStart= would give them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from portguard.decide.classify import same_program
from portguard.model import FileId, ProgramId
from portguard.observe.procs import programs


@pytest.mark.parametrize(("argv", "rest"), [
    (("/usr/bin/redis-server", "/etc/redis.conf"), ("/usr/bin/redis-server", "/etc/redis.conf")),
    (("/usr/bin/env", "A=1", "-u", "B", "/usr/bin/x", "-d"), ("/usr/bin/x", "-d")),
    (("env", "nice", "-n", "5", "nohup", "x"), ("x",)),
    (("/usr/bin/timeout", "-s", "INT", "10m", "/srv/app", "--x"), ("/srv/app", "--x")),
    (("sudo", "-u", "www-data", "--", "/usr/sbin/nginx"), ("/usr/sbin/nginx",)),
    (("runuser", "-u", "app", "--", "node", "srv.js"), ("node", "srv.js")),
    (("setpriv", "--reuid", "33", "--regid=33", "--clear-groups", "/bin/x"), ("/bin/x",)),
    (("/sbin/tini", "--", "/app/bin/server"), ("/app/bin/server",)),
    (("dumb-init", "--single-child", "-r", "15:2", "/srv/x"), ("/srv/x",)),
])
def test_launchers_are_seen_through(argv: tuple[str, ...], rest: tuple[str, ...]) -> None:
    assert programs.strip_launchers(argv) == rest


@pytest.mark.parametrize("argv", [
    ("sudo", "-s"), ("runuser", "-u", "x", "-c", "nginx"), ("env", "-S", "a b"), ("env",),
])
def test_a_launcher_running_a_shell_string_has_no_program(argv: tuple[str, ...]) -> None:
    assert programs.strip_launchers(argv) is None


@pytest.mark.parametrize(("argv", "what"), [
    (("python3", "-u", "-W", "ignore", "/srv/app.py", "--port", "80"), ("script", "/srv/app.py")),
    (("python3.11", "-m", "http.server", "8000"), ("module", "http.server")),
    (("python3", "-mhttp.server"), ("module", "http.server")),
    (("python3", "-c", "import x"), None),
    (("node", "--require", "dotenv/config", "server.js"), ("script", "server.js")),
    (("java", "-Xmx1g", "-Dx=y", "-jar", "/opt/app.jar", "serve"), ("jar", "/opt/app.jar")),
    (("java", "-cp", "/opt/lib/*", "-m", "com.x/com.x.Main"), ("module", "com.x/com.x.Main")),
    (("perl", "-e", "print 1"), None),
    (("php8.2", "-d", "memory_limit=1G", "artisan", "serve"), ("script", "artisan")),
    (("ruby", "-I", "lib", "bin/rails", "s"), ("script", "bin/rails")),
    (("/bin/sh", "-e", "/usr/local/bin/run.sh"), ("script", "/usr/local/bin/run.sh")),
    (("bash", "-c", "exec nginx"), None),
    (("python3",), None),
])
def test_what_an_interpreter_runs(argv: tuple[str, ...], what: tuple[str, str] | None
                                  ) -> None:
    assert programs.interpreted(argv) == what


@pytest.mark.parametrize(("name", "yes"), [
    ("python3.11", True), ("node", True), ("nodejs", True), ("bash", True), ("perl5.36.0", True),
    ("php8.2", True), ("php-fpm8.2", False), ("sshd", False), ("shellinabox", False),
    ("nginx", False), ("javac", False),
])
def test_interpreter_names(name: str, yes: bool) -> None:
    assert programs.is_interpreter(f"/usr/bin/{name}") is yes


def test_a_symlinked_execstart_is_the_file_it_points_to(tmp_path: Path) -> None:
    """/usr/bin/redis-server -> redis-check-rdb: one program, named as the admin knows it."""
    real = tmp_path / "redis-check-rdb"
    real.write_bytes(b"\x7fELF")
    real.chmod(0o755)
    link = tmp_path / "redis-server"
    link.symlink_to("redis-check-rdb")
    unit = programs.of_exec_start((str(link), "/etc/redis/redis.conf", "--daemonize", "no"))
    st = real.stat()
    assert unit == ProgramId(FileId(st.st_dev, st.st_ino))
    by_hand = programs.of_exec_start(("/usr/bin/env", str(real)))
    assert unit is not None and by_hand is not None and same_program(unit, by_hand)
    # named by argv[0] when that is a link to the executable
    assert programs.display_name(str(real), (f"{link} 127.0.0.1:6379",), unit.exe) == \
        "redis-server"
    assert programs.display_name(str(real), ("redis-check-rdb",), unit.exe) == \
        "redis-check-rdb"
    assert programs.display_name("/usr/sbin/nginx", ("nginx: master process",), None) == \
        "nginx"


def test_a_shebang_script_is_the_script_whatever_runs_it(tmp_path: Path) -> None:
    script = tmp_path / "webd"
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    unit = programs.of_exec_start((str(script), "--port", "80"))
    by_hand = programs.of_process(os.getpid(), (sys.executable, str(script)), sys.executable)
    other = programs.of_process(os.getpid(), (sys.executable, __file__), sys.executable)
    assert unit is not None and by_hand is not None and other is not None
    assert by_hand.target == unit.target and by_hand.interpreted
    assert same_program(unit, by_hand)
    assert not same_program(unit, other)
    assert not same_program(unit, ProgramId(unit.exe))  # not run as a script: not it


def test_a_relative_script_resolves_in_the_process_cwd(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "app.py"
    script.write_text("")
    monkeypatch.chdir(tmp_path)
    found = programs.of_process(os.getpid(), ("python3", "app.py"), sys.executable)
    st = script.stat()
    assert found is not None and found.target == FileId(st.st_dev, st.st_ino)


def test_busybox_is_its_applet(tmp_path: Path) -> None:
    box = tmp_path / "busybox"
    box.write_bytes(b"\x7fELF")
    box.chmod(0o755)
    (tmp_path / "httpd").symlink_to("busybox")
    (tmp_path / "nc").symlink_to("busybox")
    httpd = programs.of_exec_start((str(tmp_path / "httpd"), "-f", "-p", "80"))
    spelled = programs.of_exec_start((str(box), "httpd", "-f"))
    nc = programs.of_exec_start((str(tmp_path / "nc"), "-l", "-p", "80"))
    assert httpd is not None and spelled is not None and nc is not None
    assert httpd.applet == "httpd" and same_program(httpd, spelled)
    assert not same_program(httpd, nc)


def test_what_cannot_be_read_has_no_identity(tmp_path: Path) -> None:
    assert programs.of_exec_start((str(tmp_path / "missing"),)) is None
    assert programs.of_exec_start(("sudo", "-i")) is None
    assert programs.of_exec_start(("no-such-program-anywhere",)) is None


def test_modules_match_only_under_the_same_interpreter() -> None:
    py, py2 = FileId(1, 1), FileId(1, 2)
    a = ProgramId(py, module="http.server", interpreted=True)
    assert same_program(a, a._replace())
    assert not same_program(a, a._replace(exe=py2))
    assert not same_program(a, a._replace(module="other"))
    assert not same_program(a, ProgramId(py))  # the bare interpreter file
    assert not same_program(ProgramId(py, interpreted=True), ProgramId(py, interpreted=True))
