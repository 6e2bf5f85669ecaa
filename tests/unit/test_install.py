"""portguard.commands.install without root or systemd: names, paths, the drop-in, idempotence.

The drop-in base is pointed at tmp_path, root is faked, and systemd is a small fake with
what install needs (load_state, unit_file_state, the Reload call, close). The real thing, in a
booted systemd, is tests/integration/test_install.py.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portguard import __version__
from portguard.act import files
from portguard.app import App
from portguard.commands import install
from portguard.commands.install import DEFAULT_CONFIG
from portguard.config import trust
from portguard.config.unitnames import instance_template
from portguard.errors import ExitStatus, NotPermittedError, PortguardError, UsageError
from portguard.model import Unit
from portguard.report.journal import Journal
from portguard.report.output import Output

COMMAND = ["/usr/bin/portguard"]


class FakeSystemd:
    """The unit files systemd knows, by name: load state and unit file state."""

    def __init__(self, load: dict[str, str] | None = None,
                 files: dict[str, str] | None = None,
                 reload_error: PortguardError | None = None) -> None:
        self.load = load or {}
        self.files = files or {}
        self.reload_error = reload_error
        self.reloads = 0
        self.closed = 0
        self.notify: dict[str, str] = {}  # unit -> NotifyAccess
        self.sockets: dict[str, list[Unit]] = {}  # unit -> its activation sockets

    def load_state(self, unit: str) -> str:
        return self.load.get(unit, "not-found")

    def unit_file_state(self, name: str) -> str | None:
        return self.files.get(name)

    def call(self, path: bytes, iface: bytes, method: bytes, sig: bytes,
             values: list[Any], *, action: str = "", what: str = "") -> Any:
        assert method == b"Reload", method  # the one manager method install calls
        if self.reload_error is not None:
            raise self.reload_error
        self.reloads += 1

    def close(self) -> None:
        self.closed += 1

    def unit_path(self, unit_id: str) -> bytes:
        return unit_id.encode()

    def properties(self, path: bytes, iface: bytes) -> dict[str, Any]:
        return {"NotifyAccess": self.notify.get(path.decode(), "none")}

    def activation_sockets(self, unit_id: str) -> list[Unit]:
        return self.sockets.get(unit_id, [])


class Run:
    """install/uninstall against tmp_path with a fake systemd; output captured."""

    def __init__(self, base: Path, systemd: FakeSystemd) -> None:
        self.base = base
        self.systemd = systemd
        self.connects = 0
        self.config = DEFAULT_CONFIG
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    def __call__(self, verb: str, unit: str, *, json_out: bool = False,
                 quiet: bool = False) -> ExitStatus:
        def connect() -> Any:
            self.connects += 1
            return self.systemd

        self.stdout.seek(0)
        self.stdout.truncate()
        self.stderr.seek(0)
        self.stderr.truncate()
        app = App(self.config, journal=Journal(echo=False), connect_systemd=connect)
        out = Output(self.stdout, self.stderr, json=json_out, verbosity=-1 if quiet else 0)
        try:
            return getattr(install, verb)(unit, app, out)  # type: ignore[no-any-return]
        finally:
            app.close()

    @property
    def out(self) -> str:
        return self.stdout.getvalue()

    @property
    def err(self) -> str:
        return self.stderr.getvalue()


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "etc-systemd-system"
    root.mkdir()
    monkeypatch.setattr(install, "DROPIN_BASE", root)
    monkeypatch.setattr(install, "is_root", lambda: True)
    monkeypatch.setattr(install, "preflight_command", lambda: list(COMMAND))
    # this checkout may be its developer's: whose code is root's is tested on its own
    monkeypatch.setattr(install, "_require_root_only", lambda command: None)
    return root


@pytest.fixture
def run(base: Path) -> Iterator[Callable[[FakeSystemd], Run]]:
    yield lambda systemd: Run(base, systemd)


WEB = FakeSystemd(load={"web.service": "loaded", "web@blue.service": "loaded"},
                  files={"web.service": "enabled", "web@.service": "disabled",
                         "web@blue.service": "disabled"})


def fresh(template: FakeSystemd = WEB) -> FakeSystemd:
    return FakeSystemd(dict(template.load), dict(template.files))


# --- names and paths ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "name"), [
    ("web", "web.service"),
    ("web.service", "web.service"),
    ("web@", "web@.service"),
    ("web@.service", "web@.service"),
    ("web@blue", "web@blue.service"),
    ("web@blue.service", "web@blue.service"),
    ("my.app", "my.app.service"),  # systemctl too: `.app` is no unit type
    ("dev-sda1\\x2dx", "dev-sda1\\x2dx.service"),
])
def test_unit_names_are_normalised_like_systemctl(text: str, name: str) -> None:
    assert install.unit_name(text) == name


@pytest.mark.parametrize(("text", "says"), [
    ("web.socket", ".socket unit"),
    ("web.timer", ".timer unit"),
    ("web*", "pattern"),
    ("web@*.service", "pattern"),
    ("", "not a valid unit name"),
    ("web blue", "not a valid unit name"),
    ("/etc/systemd/system/web.service", "not a valid unit name"),
    ("web@a@b.service", "not a valid unit name"),
    ("web.servce", "did you mean '.service'"),
])
def test_bad_unit_names_are_usage_errors(text: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        install.unit_name(text)
    assert info.value.exit_status == ExitStatus.USAGE
    assert says in info.value.message


def test_dropin_paths_for_template_instance_and_plain(tmp_path: Path) -> None:
    assert install.dropin_path("web@.service", tmp_path) == \
        tmp_path / "web@.service.d" / "portguard.conf"
    assert install.dropin_path("web@blue.service", tmp_path) == \
        tmp_path / "web@blue.service.d" / "portguard.conf"
    assert install.dropin_path("web.service", tmp_path) == \
        tmp_path / "web.service.d" / "portguard.conf"
    assert install.dropin_path("web.service") == \
        Path("/etc/systemd/system/web.service.d/portguard.conf")


def test_instance_template() -> None:
    assert instance_template("web@blue.service") == "web@.service"
    assert instance_template("web@blue.socket") == "web@.socket"
    assert instance_template("web@.service") is None
    assert instance_template("web.service") is None


# --- the drop-in ---------------------------------------------------------------------------

def test_dropin_text_runs_preflight_privileged_for_the_unit() -> None:
    text = install.dropin_text("web@.service", ["/usr/bin/portguard"])
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["[Service]", "NotifyAccess=exec",
                    "ExecStartPre=+/usr/bin/portguard preflight %n"]
    text = install.dropin_text("web@.service", ["/usr/bin/portguard"], notify_access=False)
    assert "NotifyAccess" not in text
    assert "portguard uninstall web@.service" in text


def test_the_shipped_dropin_runs_the_same_command() -> None:
    shipped = Path(__file__).parents[2] / "systemd" / "portguard-preflight.conf"
    lines = [line for line in shipped.read_text().splitlines()
             if line and not line.startswith("#")]
    written = [line for line in install.dropin_text("x.service", COMMAND).splitlines()
               if not line.startswith("#")]
    assert lines == written


@pytest.mark.parametrize(("word", "written"), [
    ("/usr/bin/portguard", "/usr/bin/portguard"),
    ("-P", "-P"),
    ("/opt/my app/bin/portguard", '"/opt/my app/bin/portguard"'),
    ("/opt/100%/portguard", "/opt/100%%/portguard"),
    ("/opt/$HOME/portguard", "/opt/$$HOME/portguard"),
    ('/opt/a"b', '"/opt/a\\"b"'),
    ("/opt/a\\b", '"/opt/a\\\\b"'),
    ("/opt/a;b", '"/opt/a;b"'),
    ("PYTHONPATH=/src", "PYTHONPATH=/src"),
])
def test_exec_words_are_escaped_for_systemd(word: str, written: str) -> None:
    assert install.exec_word(word) == written


def test_control_characters_cannot_go_into_a_unit_file() -> None:
    with pytest.raises(PortguardError):
        install.exec_word("/opt/a\nExecStartPre=/bin/evil")


def test_candidates_prefer_the_console_script() -> None:
    found = install.candidates("/usr/bin/portguard", "/usr/bin/python3", "/usr/lib/python3")
    assert found[0] == ["/usr/bin/portguard"]
    assert found[1] == ["/usr/bin/python3", "-P", "-m", "portguard"]
    assert found[2] == ["/usr/bin/env", "PYTHONPATH=/usr/lib/python3", "/usr/bin/python3",
                        "-P", "-m", "portguard"]


def test_candidates_under_python_m_use_the_interpreter_unresolved() -> None:
    found = install.candidates("/src/portguard/__main__.py", "/opt/pg/venv/bin/python",
                               "/src")
    assert found[0] == ["/opt/pg/venv/bin/python", "-P", "-m", "portguard"]
    assert all(c[0] != "/src/portguard/__main__.py" for c in found)


def test_preflight_command_is_checked_to_run(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    good = tmp_path / "portguard"
    good.write_text(f"#!/bin/sh\necho portguard {__version__}\n")
    good.chmod(0o755)
    broken = tmp_path / "bin" / "portguard"
    broken.parent.mkdir()
    broken.write_text("#!/nonexistent/python\n")
    broken.chmod(0o755)
    monkeypatch.setattr(install, "candidates",
                        lambda *a: [[str(broken)], [str(good)]])
    assert install.preflight_command() == [str(good)]
    monkeypatch.setattr(install, "candidates", lambda *a: [[str(broken)]])
    with pytest.raises(PortguardError, match="cannot find a command"):
        install.preflight_command()


def test_preflight_command_of_this_test_run_works() -> None:
    command = install.preflight_command()  # python -P -m portguard, from the venv
    assert command[-2:] == ["-m", "portguard"] or command[0].endswith("/portguard")


# --- install ---------------------------------------------------------------------------

def test_notify_access_is_written_unless_the_unit_lets_all_notify(
        run: Callable[[FakeSystemd], Run], base: Path) -> None:
    systemd = fresh()
    systemd.notify = {"web.service": "main", "web@portguard-install-check.service": "all"}
    r = run(systemd)
    assert r("install", "web") == ExitStatus.OK
    assert "\nNotifyAccess=exec\n" in (base / "web.service.d" / "portguard.conf").read_text()
    assert r("install", "web@.service") == ExitStatus.OK  # read through an instance
    assert "NotifyAccess" not in (base / "web@.service.d" / "portguard.conf").read_text()


def test_install_on_a_socket_activated_unit_says_what_it_means(
        run: Callable[[FakeSystemd], Run], base: Path) -> None:
    systemd = fresh()
    systemd.sockets = {"web.service": [Unit("web.socket", triggers=("web.service",),
                                            listen=(("Stream", "[::]:8080"),))]}
    r = run(systemd)
    assert r("install", "web") == ExitStatus.OK
    assert r.err == ("note: web.service is socket-activated by web.socket (listening on "
                     "[::]:8080): systemd binds those before web.service starts and "
                     "preflight counts them as web.service's own, so a connection that "
                     "starts it is never refused; another holder of those ports makes "
                     "web.socket fail to start, which `portguard who` names\n")
    assert (base / "web.service.d" / "portguard.conf").exists()


def test_install_writes_the_dropin_and_reloads(run: Callable[[FakeSystemd], Run],
                                               base: Path) -> None:
    r = run(fresh())
    assert r("install", "web") == ExitStatus.OK
    path = base / "web.service.d" / "portguard.conf"
    assert r.out == f"installed: {path}\n"
    assert path.read_text() == install.dropin_text("web.service", COMMAND)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert r.systemd.reloads == 1
    assert r.systemd.closed == 1
    assert [p.name for p in path.parent.iterdir()] == ["portguard.conf"]  # no temp left


def test_install_is_idempotent(run: Callable[[FakeSystemd], Run], base: Path) -> None:
    r = run(fresh())
    r("install", "web@.service")
    path = base / "web@.service.d" / "portguard.conf"
    before = path.stat()
    assert r("install", "web@") == ExitStatus.OK
    assert r.out == f"already installed: {path}\n"
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert r.systemd.reloads == 1  # not reloaded again


def test_a_config_other_than_the_default_goes_into_the_command(
        run: Callable[[FakeSystemd], Run], base: Path, tmp_path: Path) -> None:
    r = run(fresh())
    r.config = tmp_path / "my config.yaml"
    r("install", "web")
    line = (base / "web.service.d" / "portguard.conf").read_text().splitlines()[-1]
    assert line == f'ExecStartPre=+/usr/bin/portguard --config "{r.config}" preflight %n'
    assert install.config_args(DEFAULT_CONFIG) == []
    assert install.config_args(Path("rel.yaml")) == ["--config", str(Path.cwd() / "rel.yaml")]


def test_install_replaces_a_different_dropin(run: Callable[[FakeSystemd], Run],
                                             base: Path) -> None:
    path = base / "web.service.d" / "portguard.conf"
    path.parent.mkdir()
    path.write_text("[Service]\nExecStartPre=/old/portguard preflight %n\n")
    r = run(fresh())
    assert r("install", "web.service") == ExitStatus.OK
    assert r.out == f"updated: {path}\n"
    assert path.read_text() == install.dropin_text("web.service", COMMAND)
    assert r.systemd.reloads == 1


def test_install_keeps_other_dropins(run: Callable[[FakeSystemd], Run], base: Path) -> None:
    other = base / "web.service.d" / "override.conf"
    other.parent.mkdir()
    other.write_text("[Service]\nNice=5\n")
    r = run(fresh())
    r("install", "web")
    r("uninstall", "web")
    assert other.read_text() == "[Service]\nNice=5\n"
    assert sorted(p.name for p in other.parent.iterdir()) == ["override.conf"]


def test_install_json_document(run: Callable[[FakeSystemd], Run], base: Path) -> None:
    r = run(fresh())
    assert r("install", "web@blue", json_out=True) == ExitStatus.OK
    path = base / "web@blue.service.d" / "portguard.conf"
    assert json.loads(r.out) == {"unit": "web@blue.service", "dropin": str(path),
                                 "changed": True}
    r("install", "web@blue", json_out=True)
    assert json.loads(r.out)["changed"] is False


def test_install_for_an_instance_writes_the_instance_dropin(
        run: Callable[[FakeSystemd], Run], base: Path) -> None:
    r = run(fresh())
    r("install", "web@blue.service")
    assert (base / "web@blue.service.d" / "portguard.conf").exists()
    assert not (base / "web@.service.d").exists()


def test_install_for_an_instance_notes_the_template_dropin(
        run: Callable[[FakeSystemd], Run], base: Path) -> None:
    r = run(fresh())
    r("install", "web@.service")
    r("install", "web@blue.service")
    assert "covers every instance of web@.service" in r.err


def test_install_of_a_unit_systemd_does_not_know(run: Callable[[FakeSystemd], Run],
                                                 base: Path) -> None:
    r = run(fresh())
    with pytest.raises(PortguardError) as info:
        r("install", "nope")
    assert info.value.exit_status == ExitStatus.BLOCKED
    assert "no such unit: nope.service" in info.value.message
    with pytest.raises(PortguardError):
        r("install", "nope@.service")  # a template: by its unit file state
    assert list(base.iterdir()) == []
    assert r.systemd.reloads == 0


def test_install_of_a_masked_unit_says_so(run: Callable[[FakeSystemd], Run]) -> None:
    r = run(FakeSystemd(load={"m.service": "masked"}, files={"m.service": "masked"}))
    assert r("install", "m") == ExitStatus.OK
    assert "masked" in r.err


def test_install_needs_root_first(run: Callable[[FakeSystemd], Run], base: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "is_root", lambda: False)
    r = run(fresh())
    for verb in ("install", "uninstall"):
        with pytest.raises(NotPermittedError) as info:
            r(verb, "web")
        assert info.value.exit_status == ExitStatus.NOT_PERMITTED
        assert "needs root" in info.value.message
    assert r.connects == 0
    assert list(base.iterdir()) == []


def test_non_service_units_are_refused_before_anything(run: Callable[[FakeSystemd], Run],
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(install, "is_root", lambda: False)  # usage comes first
    r = run(fresh())
    with pytest.raises(UsageError):
        r("install", "web.socket")


def test_a_failed_reload_says_the_file_was_written(run: Callable[[FakeSystemd], Run],
                                                   base: Path) -> None:
    systemd = fresh()
    systemd.reload_error = NotPermittedError("systemd refused")
    with pytest.raises(PortguardError) as info:
        run(systemd)("install", "web")
    assert info.value.exit_status == ExitStatus.NOT_PERMITTED
    assert f"wrote {base / 'web.service.d' / 'portguard.conf'}" in info.value.message
    assert "daemon-reload failed" in info.value.message


def test_quiet_prints_nothing_but_json_still_prints(run: Callable[[FakeSystemd], Run]
                                                    ) -> None:
    r = run(fresh())
    r("install", "web", quiet=True)
    assert r.out == r.err == ""
    r("install", "web", quiet=True, json_out=True)
    assert json.loads(r.out)["changed"] is False


def test_atomic_write_leaves_no_temp_on_failure(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.service.d" / "portguard.conf"

    def fail(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(OSError):
        files.write_atomic(path, b"[Service]\n", mode=0o644, dir_mode=0o755)
    assert list(path.parent.iterdir()) == []


# --- uninstall ---------------------------------------------------------------------------

def test_uninstall_removes_the_dropin_and_its_empty_dir(run: Callable[[FakeSystemd], Run],
                                                        base: Path) -> None:
    r = run(fresh())
    r("install", "web")
    assert r("uninstall", "web.service") == ExitStatus.OK
    path = base / "web.service.d" / "portguard.conf"
    assert r.out == f"uninstalled: {path}\n"
    assert not path.parent.exists()
    assert r.systemd.reloads == 2


def test_uninstall_of_what_is_not_installed(run: Callable[[FakeSystemd], Run],
                                            base: Path) -> None:
    r = run(fresh())
    assert r("uninstall", "web", json_out=True) == ExitStatus.OK
    assert json.loads(r.out) == {"unit": "web.service", "changed": False,
                                 "dropin": str(base / "web.service.d" / "portguard.conf")}
    assert "nothing to remove" in r.err
    assert r.connects == 0  # nothing to do: systemd not even asked
    assert r("uninstall", "gone-already") == ExitStatus.OK  # no unit needed


def test_uninstall_of_an_instance_says_the_template_still_covers_it(
        run: Callable[[FakeSystemd], Run]) -> None:
    r = run(fresh())
    r("install", "web@.service")
    r("install", "web@blue.service")
    assert r("uninstall", "web@blue.service") == ExitStatus.OK
    assert "still covers every instance of web@.service" in r.err
    assert "uninstall web@.service" in r.err


def test_code_root_does_not_own_alone_is_named(tmp_path: Path) -> None:
    """install's ExecStartPre=+ runs as root: an interpreter, package or import directory
    others can write is a way to root (tests/integration/test_hostile_system.py has it for real)."""
    system = ["/usr/bin/python3", "-P", "-m", "portguard"]
    stdlib = os.path.dirname(os.__file__)  # Debian's: root's alone
    if os.stat(stdlib).st_uid != 0:
        pytest.skip("this Python's standard library is not root's")
    assert trust.untrusted_code(system, f"{stdlib}/json", [stdlib]) == []
    mine = tmp_path / "pkg"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "x.py").write_text("")
    os.chmod(mine / "sub", 0o777)
    problems = trust.untrusted_code(system, str(mine), [stdlib])
    if os.getuid() == 0:  # root owns tmp_path: only the group/other-writable one
        assert problems == [f"{mine / 'sub'} is writable by group or others (mode 0777)",
                            f"{mine / 'sub' / 'x.py'}: directory {mine / 'sub'} is writable "
                            "by group or others (mode 0777)"]
    else:
        assert all("not root" in p for p in problems[:2])
    script = tmp_path / "portguard"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o757)
    [why] = trust.untrusted_code([str(script)], f"{stdlib}/json", [])
    assert why.startswith(f"{script} ") and "writable by group or others" in why
    assert trust.untrusted_code(["/usr/bin/env", f"PYTHONPATH={mine}/sub", "/usr/bin/python3"],
                                f"{stdlib}/json", [])
