"""`portguard install UNIT` / `uninstall UNIT`: the drop-in that runs preflight first.

`install` writes `/etc/systemd/system/UNIT.d/portguard.conf`:

    [Service]
    NotifyAccess=exec
    ExecStartPre=+/usr/bin/portguard preflight %n

then reloads systemd (Manager.Reload over D-Bus); `uninstall` removes it and reloads.

Decisions, for the README:
- The unit is named as with systemctl: `web` is `web.service`; only .service units.
- A template (`web@.service`) gets one drop-in that every instance reads. An instance
  (`web@blue.service`) gets its own, as `systemctl edit web@blue.service` would: the
  command does what it names, and `uninstall web@blue.service` can never unguard
  web@green. When the other level has a drop-in too, a note says so. (Both carry the
  same file name, so systemd applies only the instance's: preflight never runs twice.)
- `+`: preflight runs with full privileges even when the service has `User=` or
  sandboxing: it must see every process's sockets and stop twin units, which an
  unprivileged `User=` cannot (polkit would refuse, and the service would never start).
- The command is the portguard that runs `install`, and it is tried (`--version`, clean
  environment, cwd /) before anything is written: a drop-in whose ExecStartPre= cannot
  run would keep the service from starting at all. In order: the console script this
  was started as (`/usr/bin/portguard`, a venv's `bin/portguard`, its path as invoked,
  symlinks kept); else `python -P -m portguard` with the interpreter running now (a
  venv's `bin/python`, not resolved, so the venv's site-packages come along); else the
  same with `PYTHONPATH` set to where this package is (a source checkout).
- What the command runs must be root's alone (interpreter, the package and its files,
  the directories Python imports from: config/trust.untrusted_code), else nothing is
  written: `+` runs it as root on every start.
- Idempotent: the same content is "already installed" (nothing written, no reload);
  different content (another portguard path, an edited file) is replaced. Uninstalling
  what is not installed is a notice, exit 0. Uninstall does not need the unit to exist
  (its unit file may be gone already); install does.
- The file is written atomically (temporary file in the same directory, fsync, rename),
  mode 0644; a new UNIT.d directory is 0755. Root is required and checked first.
- The drop-in's ExecStartPre= runs after the unit's own ExecStartPre= lines (drop-ins
  append to the list).
- `NotifyAccess=exec` lets preflight (a control process) set the unit's STATUS= text, so
  `systemctl status UNIT` shows why a start was refused, also under Restart= (whose
  restarts hide the journal lines of the refused attempts). exec still hears the main
  process, so a Type=notify unit loses nothing; a unit that says NotifyAccess=all keeps
  it (the line is left out, which install reads over D-Bus; a template through an
  instance it loads for the purpose).
- A socket-activated unit gets the same drop-in: preflight counts the listeners PID 1
  holds for the unit's own .socket units as the unit's (docs/commands.md: socket
  activation), so a connection that starts it is never refused; install says so in a note.
- A config other than /etc/portguard/config.yaml (given by --config or
  $PORTGUARD_CONFIG, which the service will not have) goes into the command line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from portguard import __version__
from portguard.act import files, profiles, units
from portguard.app import DEFAULT_CONFIG_FILE
from portguard.config import trust
from portguard.config.unitnames import instance_template, mangle_unit
from portguard.config.values import service_name
from portguard.errors import ExitStatus, NotPermittedError, PortguardError, UsageError
from portguard.model import Unit
from portguard.observe.procs.programs import SYSTEMD_PATH
from portguard.observe.systemd.dbus_errors import as_text
from portguard.observe.systemd.units import SERVICE_IFACE, UNIT_IFACE
from portguard.text import format_ports

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.report.output import Output

DEFAULT_CONFIG = Path(DEFAULT_CONFIG_FILE)
DROPIN_BASE = Path("/etc/systemd/system")  # tests point this at a tmp_path
DROPIN_NAME = "portguard.conf"
PACKAGED = "/usr/bin/portguard"
CHECK_TIMEOUT = 15.0  # seconds for `<command> --version`


class UnitFiles(Protocol):
    """What install needs of portguard.observe.systemd.units.Systemd (tests pass a fake)."""

    def load_state(self, unit: str) -> str: ...

    def unit_file_state(self, name: str) -> str | None: ...

    def call(self, path: bytes, iface: bytes, method: bytes, sig: bytes,
             values: list[Any], *, action: str = ..., what: str = "") -> Any: ...

    def close(self) -> None: ...

    def unit_path(self, unit_id: str) -> bytes: ...

    def properties(self, path: bytes, iface: bytes) -> dict[str, Any]: ...

    def activation_sockets(self, unit_id: str) -> list[Unit]: ...


def is_root() -> bool:
    return os.geteuid() == 0


# -- names and paths ---------------------------------------------------------------------

def unit_name(text: str) -> str:
    """`web` -> `web.service`, as systemctl mangles it; anything but one service: usage."""
    if any(c in text for c in "*?["):
        raise UsageError(f"'{text}' is a pattern; name one unit (a template such as "
                         "web@.service covers all its instances)")
    kind = mangle_unit(text).rpartition(".")[2]
    if kind != "service":
        raise UsageError(f"'{text}' is a .{kind} unit; portguard installs its drop-in for "
                         ".service units only")
    try:
        return service_name(text)  # also catches `web.servce`
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def is_template(unit: str) -> bool:
    return unit.endswith("@.service")


def dropin_path(unit: str, base: Path | None = None) -> Path:
    return (base if base is not None else DROPIN_BASE) / f"{unit}.d" / DROPIN_NAME


# -- the drop-in's command -----------------------------------------------------------------

def exec_word(word: str) -> str:
    """One argv word as systemd's Exec*= parser reads it back: `%` and `$` escaped, quoted
    (C-style) when it has blanks, quotes or backslashes."""
    if any(ord(c) < 32 or c == "\x7f" for c in word):
        raise PortguardError(f"cannot write {word!r} into a unit file (control character)")
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(c in word for c in " \t\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dropin_text(unit: str, command: Sequence[str], *, notify_access: bool = True) -> str:
    """The drop-in; `notify_access`: add NotifyAccess=exec (not when the unit says all)."""
    line = " ".join(exec_word(w) for w in command)
    status = ("# preflight's verdict as `Status:` in `systemctl status` (STATUS= from\n"
              "# ExecStartPre=; the unit's own main process is still heard).\n"
              "NotifyAccess=exec\n") if notify_access else ""
    return (f"# Written by `portguard install {unit}`; `portguard uninstall {unit}` removes it.\n"
            "# It clears the ports the service needs before the service starts.\n"
            f"[Service]\n{status}"
            f"ExecStartPre=+{line} preflight %n\n")


def loadable(unit: str) -> str:
    """A name systemd can load for the unit's settings: a template's, by an instance."""
    return unit.replace("@.", "@portguard-install-check.", 1) if is_template(unit) else unit


def _notify_access(systemd: UnitFiles, unit: str) -> bool:
    """Whether to write NotifyAccess=exec: not when the unit already lets all its
    processes notify (exec would narrow it); yes when it cannot be read (exec hears
    main, so a Type=notify unit loses nothing)."""
    try:
        props = systemd.properties(systemd.unit_path(loadable(unit)), SERVICE_IFACE)
    except PortguardError:
        return True
    value = props.get("NotifyAccess", "")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return bool(value != "all")


def _activation_note(systemd: UnitFiles, unit: str) -> str | None:
    """What install means for a socket-activated unit (docs/commands.md: socket
    activation), said once."""
    if is_template(unit):
        return None
    try:
        sockets = systemd.activation_sockets(unit)
    except PortguardError:
        return None
    if not sockets:
        return None
    names = ", ".join(s.id for s in sockets)
    listens = ", ".join(addr for s in sockets for _, addr in s.listen)
    return (f"note: {unit} is socket-activated by {names} (listening on {listens or '?'}): "
            f"systemd binds those before {unit} starts and preflight counts them as "
            f"{unit}'s own, so a connection that starts it is never refused; another "
            f"holder of those ports makes {names} fail to start, which `portguard who` "
            "names")


def candidates(argv0: str, executable: str, package_parent: str) -> list[list[str]]:
    """The commands that may run this portguard, best first (see the module docstring)."""
    found: list[list[str]] = []
    if os.path.basename(argv0) == "portguard":
        found.append([os.path.abspath(argv0)])
    if executable:
        found.append([executable, "-P", "-m", "portguard"])
        found.append(["/usr/bin/env", f"PYTHONPATH={package_parent}", executable, "-P", "-m",
                      "portguard"])
    return found


def _runs_this_portguard(command: Sequence[str]) -> bool:
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, cwd="/", check=False,
                              env={"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"})
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.split() == ["portguard", __version__]


def preflight_command() -> list[str]:
    """argv (before `preflight %n`) of the portguard running now, checked to run alone."""
    parent = str(Path(__file__).resolve().parent.parent)
    tried = candidates(sys.argv[0], sys.executable, parent)
    for command in tried:
        if _runs_this_portguard(command):
            return command
    shown = "; ".join(" ".join(c) for c in tried) or "(none)"
    raise PortguardError(f"cannot find a command that runs this portguard {__version__} "
                         f"outside this shell (tried: {shown}); install portguard (e.g. "
                         f"{PACKAGED}) and run `portguard install` from there")


def _require_root_only(command: Sequence[str]) -> None:
    problems = trust.untrusted_code(command, str(Path(__file__).resolve().parent.parent),
                                    sys.path)
    if problems:
        raise PortguardError(
            "refusing to install: root would run this portguard on every start, and others "
            "can change it: " + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            + f". Needed: the interpreter, portguard and what it imports owned by root "
            f"and writable by root alone (as the package installs {PACKAGED}); nothing was "
            "changed")


def config_args(config_path: Path) -> list[str]:
    """`--config PATH` when install was pointed at a config other than the default (by
    --config or $PORTGUARD_CONFIG, which the service's environment will not have)."""
    if config_path == DEFAULT_CONFIG:
        return []
    return ["--config", os.path.abspath(config_path)]


# -- install / uninstall -------------------------------------------------------------------

def _require_root(verb: str, unit: str) -> None:
    if not is_root():
        raise NotPermittedError(f"{verb} needs root: it writes under {DROPIN_BASE} and "
                                f"reloads systemd; run `sudo portguard {verb} {unit}`")


def _check_exists(systemd: UnitFiles, unit: str) -> str | None:
    """Raise when systemd knows no such unit; else a note worth showing, or None."""
    if is_template(unit):
        state = systemd.unit_file_state(unit)
        found = state is not None
    else:
        state = systemd.load_state(unit)
        found = state != "not-found"
    if not found:
        raise PortguardError(f"no such unit: {unit} (systemd has no unit file for it; "
                             f"check the name with `systemctl list-unit-files '{unit}'`)")
    if state == "masked":
        return f"note: {unit} is masked; the drop-in takes effect once it is unmasked"
    if state not in (None, "loaded") and not is_template(unit):
        return f"note: {unit} has load state '{state}' (see `systemctl status {unit}`)"
    return None


def _other_level(unit: str, path: Path) -> str | None:
    """A note about the template's or an instance's drop-in next to this one."""
    template = instance_template(unit)
    if template is not None:
        other = dropin_path(template, path.parent.parent)
        if other.exists():
            return f"note: {other} covers every instance of {template}, {unit} included"
    return None


def _reload(systemd: UnitFiles, done: str) -> None:
    try:
        units.reload(systemd)
    except PortguardError as exc:
        raise PortguardError(f"{done}, but daemon-reload failed: {exc.message}; run "
                             "`systemctl daemon-reload`", exit_status=exc.exit_status) from exc


def _report(out: Output, unit: str, path: Path, *, changed: bool, said: str,
            notes: Sequence[str | None]) -> ExitStatus:
    if out.json:
        out.document({"unit": unit, "dropin": str(path), "changed": changed})
    elif out.verbosity >= 0:
        out.result(f"{said}: {path}")
    if out.verbosity >= 0:
        for note in notes:
            if note:
                out.error(note)
    return ExitStatus.OK


def _with_systemd(app: App, action: Callable[[UnitFiles], ExitStatus]) -> ExitStatus:
    systemd = app.connect_systemd()
    try:
        return action(systemd)
    finally:
        systemd.close()


def learn(systemd: UnitFiles, unit: str) -> str:
    """While the unit runs, learn and store its profile from its own cgroup
    (docs/identity.md, "Profiles"); what was learned, or why not, for a note."""
    if is_template(unit):
        return ""
    path = systemd.unit_path(unit)
    state = as_text(systemd.properties(path, UNIT_IFACE).get("ActiveState", b""))
    if not state:
        return ""
    if state != "active":
        return (f"note: {unit} is {state}: its profile is learned while it runs "
                "(install it again then)")
    cgroup = as_text(systemd.properties(path, SERVICE_IFACE).get("ControlGroup", b""))
    learned = profiles.record(unit, cgroup)
    if learned is None:
        return f"note: {unit} runs, but no process of its own listens: no profile learned"
    ports = format_ports((s.port, s.proto) for s in learned.sockets)
    return f"learned {unit}'s profile: {learned}, listening on {ports}"


def install(unit: str, app: App, out: Output) -> ExitStatus:
    """Write UNIT's preflight drop-in and reload systemd (see the module docstring)."""
    name = unit_name(unit)
    _require_root("install", name)
    path = dropin_path(name)

    def act(systemd: UnitFiles) -> ExitStatus:
        note = _check_exists(systemd, name)
        command = preflight_command()
        _require_root_only(command)
        text = dropin_text(name, [*command, *config_args(app.config_path)],
                           notify_access=_notify_access(systemd, name))
        try:
            old: str | None = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = None
        notes = [note, _other_level(name, path), _activation_note(systemd, name),
                 learn(systemd, name)]
        if old == text:
            return _report(out, name, path, changed=False, said="already installed",
                           notes=notes)
        files.write_atomic(path, text.encode("utf-8"), mode=0o644, dir_mode=0o755)
        _reload(systemd, f"wrote {path}")
        return _report(out, name, path, changed=True,
                       said="installed" if old is None else "updated", notes=notes)

    return _with_systemd(app, act)


def uninstall(unit: str, app: App, out: Output) -> ExitStatus:
    """Remove UNIT's preflight drop-in and reload systemd; nothing to remove is fine."""
    name = unit_name(unit)
    _require_root("uninstall", name)
    path = dropin_path(name)
    still = _other_level(name, path)
    if still:
        still = still.replace("covers", "still covers") + f" (uninstall {instance_template(name)})"
    if not path.exists():
        return _report(out, name, path, changed=False, said="not installed",
                       notes=[f"note: nothing to remove for {name}", still])

    def act(systemd: UnitFiles) -> ExitStatus:
        path.unlink()
        with contextlib.suppress(OSError):  # only when empty: other drop-ins stay
            path.parent.rmdir()
        _reload(systemd, f"removed {path}")
        return _report(out, name, path, changed=True, said="uninstalled", notes=[still])

    return _with_systemd(app, act)


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """`portguard install UNIT`."""
    return install(args.unit, app, out)


def run_uninstall(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """`portguard uninstall UNIT`."""
    return uninstall(args.unit, app, out)
