"""`make demo`: portguard's story, told by a real systemd in a throwaway sandbox.

As root, it boots the host's systemd (252 on Debian 12) as PID 1 of private namespaces
(tests/integration/sandbox.py: its own network, PIDs, cgroups and /etc/systemd/system;
nothing on the host is touched), puts config.example.yaml, unchanged, at
/etc/portguard/config.yaml, writes the example's services (web@.service, api.service,
metrics-gateway.service, each running tests/integration/listener.py under a program
name), guards them with `portguard install` and then creates each kind of conflict in
turn:

    1. self       a remnant of web@blue's previous run holds 8080; web@blue restarts
    2. twin       web@green starts while web@blue holds 8080 (a blue/green handover)
    3. stray      a copy of webd started by hand (in a tmux, say) holds 8080
    4. foreign    prometheus-pushgateway holds metrics-gateway's 9091
    5. lingering  TIME_WAIT after a fast restart: web (SO_REUSEADDR) and api (without)

Each scene shows who holds the port (`portguard who`), what portguard decided and why,
its journal records and how the unit ended up. The demo checks every outcome and exits 1
if one is not what portguard promises. It takes a few seconds; the sandbox is torn down
at the end (everything inside dies with its PID 1).

Without root (or where the sandbox cannot run) it says what it needs and shows
`portguard check-config` and `portguard status` on this host instead, with the example
config, and exits 0.

Colour only when stdout is a terminal (and NO_COLOR is unset).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
SANDBOX_PY = REPO / "tests" / "integration" / "sandbox.py"
CONFIG = "/etc/portguard/config.yaml"  # inside the sandbox: the default path
BIN = "/run/demo"  # inside: the demo's programs (copies of listener.py)
CLIENT = """\
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while conn.recv(65536):
    pass
conn.close()
"""

# README "Journal": the event names, by MESSAGE_ID.
EVENTS = {
    "718392d18d1d40e2a9e43cb92f8fe39d": "ports clear",
    "55b39072bbbf4ee39245c02d398d6a82": "unit not configured",
    "d74d81e4b74f43ecb06f332d7e10fca9": "conflict found",
    "32df9301fc754f1285c3344dda6a731d": "twin unit stopped",
    "b7876e4d57b34eef99981e9da9de1233": "process signalled",
    "744a196b2567446ba506391298360d15": "process killed",
    "da25c984d0a14814a1be47f9d2384f7a": "waiting for the port",
    "1dd1d9a38bb34678aad2e121395fc7f2": "refused",
    "7d4a70ad50f6452aa1ac4ef6c64c0ad0": "conflict tolerated",
    "ca5a8ba6bfa04e42a616be49bb49746b": "timed out",
    "8ad43760f38648719a0731aee8185aca": "holder identity changed",
}
CLEAR, CONFLICT, STOPPED, SIGNALLED = ("718392d18d1d40e2a9e43cb92f8fe39d",
                                       "d74d81e4b74f43ecb06f332d7e10fca9",
                                       "32df9301fc754f1285c3344dda6a731d",
                                       "b7876e4d57b34eef99981e9da9de1233")
WAITING, REFUSED = "da25c984d0a14814a1be47f9d2384f7a", "1dd1d9a38bb34678aad2e121395fc7f2"
FINAL = (CLEAR, REFUSED, "ca5a8ba6bfa04e42a616be49bb49746b")  # a preflight's last record


# -- output -------------------------------------------------------------------------------

class Style:
    """ANSI colour when stdout is a terminal, plain text otherwise."""

    def __init__(self) -> None:
        self.on = (sys.stdout.isatty() and not os.environ.get("NO_COLOR")
                   and os.environ.get("TERM") != "dumb")
        try:
            columns = os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):
            columns = 100
        self.width = max(60, min(columns, 100))

    def _sgr(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def bold(self, t: str) -> str:
        return self._sgr("1", t)

    def dim(self, t: str) -> str:
        return self._sgr("2", t)

    def green(self, t: str) -> str:
        return self._sgr("32", t)

    def red(self, t: str) -> str:
        return self._sgr("31", t)

    def yellow(self, t: str) -> str:
        return self._sgr("33", t)

    def cyan(self, t: str) -> str:
        return self._sgr("36", t)


S = Style()
OK_MARK, BAD_MARK = "✓", "✗"


def out(text: str = "") -> None:
    print(text, flush=True)


def para(text: str, indent: str = "") -> None:
    """A paragraph, wrapped to the terminal."""
    out(textwrap.fill(" ".join(text.split()), S.width, initial_indent=indent,
                      subsequent_indent=indent, break_on_hyphens=False))


def shell(command: str, comment: str = "") -> None:
    out(f"  {S.cyan('$ ' + command)}" + (f"   {S.dim('# ' + comment)}" if comment else ""))


def note(text: str) -> None:
    out(f"  {S.dim('# ' + text)}")


def block(text: str, indent: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        out(f"{indent}{line}")


def labelled(label: str, text: str, styled: str | None = None) -> None:
    """`  label text`, wrapped with a hanging indent under the text (long MESSAGEs);
    `styled`: the label as printed (colour codes do not count towards the width)."""
    lead = f"  {label} "
    lines = textwrap.wrap(text, S.width, initial_indent=lead,
                          subsequent_indent=" " * len(lead), break_on_hyphens=False)
    if styled is not None and lines:
        lines[0] = f"  {styled} " + lines[0][len(lead):]
    for line in lines:
        out(line)


def table(rows: Sequence[Sequence[str]], indent: str = "    ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        out(indent + (S.dim(line) if n == 0 else line))


def mark(ok: bool) -> str:
    return S.green(OK_MARK) if ok else S.red(BAD_MARK)


# -- the sandbox --------------------------------------------------------------------------

def load_sandbox() -> ModuleType:
    """tests/integration/sandbox.py by path (tests/ is not a package); stdlib only."""
    spec = importlib.util.spec_from_file_location("portguard_demo_sandbox", SANDBOX_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SANDBOX_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Unexpected(Exception):
    """A scene did not end as portguard promises."""


class Story:
    """The sandbox, the example's services, and the helpers the scenes share."""

    def __init__(self, sb: Any, sandbox_mod: ModuleType) -> None:
        self.sb = sb
        self.mod = sandbox_mod
        system = "/usr/bin/python3"  # short command lines in `who`; the venv's otherwise
        self.python = system if os.access(system, os.X_OK) else sandbox_mod.PYTHON
        script = REPO / ".venv" / "bin" / "portguard"
        # the user's way: the console script (its path goes into the drop-in)
        self.portguard_argv = [str(script)] if os.access(script, os.X_OK) else \
            [sandbox_mod.PYTHON, "-m", "portguard"]
        self.cursor: str | None = None
        self.spawned: list[int] = []

    # commands ------------------------------------------------------------------------

    def portguard(self, *args: str, show: bool = True,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if show:
            shell("portguard " + shlex.join(args))
        done: subprocess.CompletedProcess[str] = self.sb.run(
            [*self.portguard_argv, *args], timeout=timeout, env={"PYTHONPATH": str(REPO)})
        return done

    def systemctl(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            shell("systemctl " + shlex.join(args))
        done: subprocess.CompletedProcess[str] = self.sb.systemctl(*args, timeout=60)
        return done

    def who(self, *ports: str) -> None:
        done = self.portguard("who", *ports)
        block(done.stdout + done.stderr)

    def program(self, name: str, *args: str) -> list[str]:
        return [self.python, f"{BIN}/{name}", *args]

    # state -----------------------------------------------------------------------------

    def state(self, unit: str) -> str:
        active = self.sb.unit_property(unit, "ActiveState")
        sub = self.sb.unit_property(unit, "SubState")
        return active if sub == active else f"{active} ({sub})"

    def main_pid(self, unit: str) -> int:
        return int(self.sb.unit_property(unit, "MainPID"))

    def listening(self, port: int, pid: int | None = None) -> None:
        def up() -> bool:
            text = self.sb.run(["ss", "-Htlnp", f"sport = :{port}"]).stdout
            return bool(text.strip()) and (pid is None or f"pid={pid}," in text)

        self.sb.wait_for(up, 10, f"a listener on {port}")

    def tcp_states(self, port: int) -> list[str]:
        text = self.sb.run(["ss", "-Htan", f"sport = :{port}"]).stdout
        return [line.split()[0] for line in text.splitlines()]

    def spawn(self, argv: list[str]) -> int:
        pid: int = self.sb.spawn(argv)
        self.spawned.append(pid)
        return pid

    def time_wait(self, unit: str, port: int) -> None:
        """A client connected to `unit`'s port; stopping the unit closes the server side
        first, so the port is left with a TIME_WAIT socket (as after a fast restart)."""
        note(f"a client connects to 127.0.0.1:{port} and stays")
        self.spawn([self.python, "-c", CLIENT, str(port)])
        self.sb.wait_for(lambda: "ESTAB" in self.tcp_states(port), 10, "a connection")
        self.systemctl("stop", unit)
        self.sb.wait_for(lambda: self.tcp_states(port) == ["TIME-WAIT"], 10,
                         f"a TIME_WAIT socket on {port}")

    # the journal -----------------------------------------------------------------------

    def mark_journal(self) -> None:
        self.cursor = self.sb.cursor()

    def records(self, unit: str, until: Callable[[dict[str, Any]], bool] | None = None,
                ) -> list[dict[str, Any]]:
        """portguard's records about `unit` since mark_journal(); with `until`, first
        waits for one that satisfies it (journald takes a moment)."""
        matches = ("SYSLOG_IDENTIFIER=portguard", f"PORTGUARD_UNIT={unit}")
        if until is not None:
            self.sb.wait_journal(until, *matches, since_cursor=self.cursor, timeout=10)
        return list(self.sb.journal(*matches, since_cursor=self.cursor))

    def show_records(self, unit: str, records: list[dict[str, Any]]) -> None:
        """What portguard decided and why (the `conflict found` MESSAGEs), then every
        record as a table row."""
        for r in records:
            if r.get("MESSAGE_ID") == CONFLICT and "PORTGUARD_HOLDER_KIND" in r:
                labelled("decided:", strip_unit(r["MESSAGE"], unit), S.bold("decided:"))
        out(f"  journal: {S.dim(f'journalctl PORTGUARD_UNIT={unit}')}")
        rows = [("EVENT", "PORT", "KIND", "ACTION", "RESULT", "PID", "HOLDER UNIT")]
        for r in records:
            port = f"{r['PORTGUARD_PORT']}/{r.get('PORTGUARD_PROTO', 'tcp')}" \
                if "PORTGUARD_PORT" in r else ""
            rows.append((EVENTS.get(r.get("MESSAGE_ID", ""), "?"), port,
                         r.get("PORTGUARD_HOLDER_KIND", ""), r.get("PORTGUARD_ACTION", ""),
                         r.get("PORTGUARD_RESULT", ""), r.get("PORTGUARD_HOLDER_PID", ""),
                         r.get("PORTGUARD_HOLDER_UNIT", "")))
        table(rows)

    def wait_dead(self, pid: int) -> bool:
        with contextlib.suppress(self.mod.SandboxTimeout):
            self.sb.wait_for(lambda: not self.sb.pid_alive(pid), 5, f"pid {pid} to exit")
            return True
        return False


def strip_unit(message: str, unit: str) -> str:
    """`web@blue.service: 8080/tcp: ...` -> `8080/tcp: ...` (the unit is in the heading)."""
    prefix = f"{unit}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Unexpected(what)


def find(records: list[dict[str, Any]], message_id: str, **fields: str) -> dict[str, Any]:
    for r in records:
        if r.get("MESSAGE_ID") == message_id and all(
                r.get(f"PORTGUARD_{k.upper()}") == v for k, v in fields.items()):
            return r
    want = " ".join(f"{k}={v}" for k, v in fields.items())
    raise Unexpected(f"no '{EVENTS[message_id]}' record with {want}")


def is_final(r: dict[str, Any]) -> bool:
    return r.get("MESSAGE_ID") in FINAL


def outcome(text: str, ok: bool | None = None) -> None:
    if ok is None:
        labelled("outcome:", text, S.bold("outcome:"))
    else:
        labelled(f"outcome: {OK_MARK if ok else BAD_MARK}", text,
                 f"{S.bold('outcome:')} {mark(ok)}")


# -- setup --------------------------------------------------------------------------------

def setup(st: Story) -> None:
    sb = st.sb
    version = sb.run(["systemctl", "--version"]).stdout.split()[1:2] or ["?"]
    out(S.bold("Setting the scene"))
    para(f"A throwaway systemd {version[0]}, PID 1 of private namespaces (booted in "
         f"{sb.boot_seconds:.1f} s): its own network, processes and unit files. Its "
         f"{CONFIG} is {EXAMPLE.name}, unchanged. The example's services run a small test "
         "listener as webd, apid and gatewayd:", "  ")
    sb.write_file(CONFIG, EXAMPLE.read_text(), mode=0o644)
    listener = Path(st.mod.LISTENER).read_text()
    for name in ("webd", "apid", "gatewayd", "pushgateway"):
        sb.write_file(f"{BIN}/{name}", listener, mode=0o755)
    units = {
        "web@.service": ("web server, instance %i",
                         st.program("webd", "--port", "8080", "--workers", "1"),
                         "KillMode=process"),
        "api.service": ("API server",
                        st.program("apid", "--port", "9100", "--no-reuseaddr"), ""),
        "metrics-gateway.service": ("metrics gateway",
                                    st.program("gatewayd", "--addr", "0.0.0.0",
                                               "--port", "9091"), ""),
        # not in the config: a different program that happens to use 9091 too
        "prometheus-pushgateway.service": ("Prometheus Pushgateway",
                                           st.program("pushgateway", "--port", "9091"), ""),
    }
    rows = [("UNIT", "ExecStart=")]
    for name, (desc, argv, extra) in units.items():
        text = f"[Unit]\nDescription={desc}\n\n[Service]\nExecStart={shlex.join(argv)}\n"
        if extra:
            text += extra + "\n"
        sb.write_unit(name, text, reload=False)
        rows.append((name, shlex.join(argv) + (f"   ({extra})" if extra else "")))
    sb.systemctl("daemon-reload", check=True)
    table(rows)
    note("webd forks a worker that shares its socket; KillMode=process: if the main "
         "process dies, the worker stays")
    done = st.portguard("check-config")
    block(done.stdout + done.stderr)
    expect(done.returncode == 0, "check-config failed on the example config")
    for unit in ("web@.service", "api.service", "metrics-gateway.service"):
        done = st.portguard("install", unit)
        block(done.stdout + done.stderr)
        expect(done.returncode == 0, f"portguard install {unit} failed")
    pre = sb.unit_property("web@blue.service", "ExecStartPre")
    expect("preflight" in pre, "the drop-in's ExecStartPre= is not loaded")
    para("Every `systemctl start` below now runs `portguard preflight %n` first "
         "(ExecStartPre=). Each scene's journal table lists portguard's records about the "
         "unit: EVENT names the MESSAGE_ID, the other columns are its PORTGUARD_* fields.",
         "  ")


# -- the scenes ---------------------------------------------------------------------------

def scene_remnant(st: Story) -> str:
    sb, unit = st.sb, "web@blue.service"
    st.systemctl("start", unit, show=False)
    st.listening(8080)
    old_main = st.main_pid(unit)
    para(f"web@blue runs (main pid {old_main} and its worker). Its main process crashes; "
         "the worker stays in the unit's cgroup, still listening on 8080.", "  ")
    shell(f"systemctl kill --kill-who=main --signal=SIGKILL {unit}", "the crash")
    sb.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", unit, check=True)
    sb.wait_unit_state(unit, "failed", "inactive")
    st.who("8080")
    st.mark_journal()
    done = st.systemctl("restart", unit)
    block(done.stdout + done.stderr)
    records = st.records(unit, until=is_final)
    st.show_records(unit, records)
    signalled = find(records, SIGNALLED, holder_kind="self")
    remnant = int(signalled["PORTGUARD_HOLDER_PID"])
    expect(done.returncode == 0, f"systemctl restart {unit} failed")
    expect(st.wait_dead(remnant), f"the remnant (pid {remnant}) is still running")
    state = st.state(unit)
    expect(state.startswith("active"), f"{unit} is {state}")
    return (f"{unit} {state} again, new main pid {st.main_pid(unit)}; the remnant "
            f"(pid {remnant}) got SIGTERM through a pidfd and is gone")


def scene_twin(st: Story) -> str:
    sb = st.sb
    blue, green = "web@blue.service", "web@green.service"
    para("A blue/green deploy: web@green starts while web@blue still serves 8080. Both "
         "are instances of web@.service: blue is green's twin.", "  ")
    blue_pid = st.main_pid(blue)
    st.who("8080")
    st.mark_journal()
    done = st.systemctl("start", green)
    block(done.stdout + done.stderr)
    records = st.records(green, until=is_final)
    st.show_records(green, records)
    find(records, STOPPED, holder_kind="twin", holder_unit=blue)
    expect(done.returncode == 0, f"systemctl start {green} failed")
    states = st.state(green), st.state(blue)
    expect(states[0].startswith("active") and states[1].startswith("inactive"),
           f"{green} is {states[0]}, {blue} is {states[1]}")
    expect(not sb.pid_alive(blue_pid), f"{blue}'s pid {blue_pid} is still running")
    return (f"{green} {states[0]}; {blue} {states[1]}: stopped through systemd "
            "(StopUnit), not killed behind its back")


def scene_stray(st: Story) -> str:
    unit = "web@green.service"
    argv = st.program("webd", "--port", "8080", "--workers", "1")
    para("Someone stopped web@green to debug it, ran its command by hand in a tmux, and "
         "forgot it there.", "  ")
    st.systemctl("stop", unit)
    shell(shlex.join(argv) + " &", "in a tmux: outside any unit")
    stray = st.spawn(argv)
    st.listening(8080, stray)
    st.who("8080")
    st.mark_journal()
    done = st.systemctl("start", unit)
    block(done.stdout + done.stderr)
    records = st.records(unit, until=is_final)
    st.show_records(unit, records)
    find(records, SIGNALLED, holder_kind="stray", holder_pid=str(stray))
    expect(done.returncode == 0, f"systemctl start {unit} failed")
    expect(st.wait_dead(stray), f"the stray (pid {stray}) is still running")
    state = st.state(unit)
    expect(state.startswith("active"), f"{unit} is {state}")
    return (f"{unit} {state}; the stray (pid {stray}: the unit's ExecStart= exactly, "
            "its user, outside any unit) got SIGTERM through a pidfd and is gone")


def scene_foreign(st: Story) -> str:
    sb = st.sb
    unit, other = "metrics-gateway.service", "prometheus-pushgateway.service"
    para("Prometheus' Pushgateway listens on 9091 by default: the port metrics-gateway "
         "declares. A different program in another unit: a foreign holder.", "  ")
    st.systemctl("start", other, show=False)
    holder = st.main_pid(other)
    st.listening(9091, holder)
    st.who("9091")
    st.mark_journal()
    done = st.systemctl("start", unit)
    block(done.stdout + done.stderr)
    records = st.records(unit, until=is_final)
    st.show_records(unit, records)
    refused = find(records, REFUSED, holder_kind="foreign", holder_unit=other)
    out(f"  {S.bold('what the administrator reads:')} {S.dim(f'journalctl -u {unit}')}")
    for r in sb.journal("-u", unit, since_cursor=st.cursor):
        text = r["MESSAGE"] if isinstance(r.get("MESSAGE"), str) else ""
        if text.startswith("portguard:") or "Control process exited" in text:
            out(textwrap.fill(text, S.width, initial_indent="    ",
                              subsequent_indent="      ", break_on_hyphens=False))
    expect(done.returncode != 0, f"systemctl start {unit} succeeded")
    state = st.state(unit)
    expect(state.startswith("failed"), f"{unit} is {state}")
    expect(st.state(other).startswith("active") and st.main_pid(other) == holder,
           f"{other} was touched")
    expect(refused["PORTGUARD_ACTION"] == "refuse", "not refused")
    para("A foreign holder is never stopped or signalled. With on_foreign: fail (the "
         "default, metrics-gateway's) preflight refuses at once, exit 1, and the unit never "
         "runs; with on_foreign: wait (api's) it would wait, up to the service's timeout, "
         "for the holder to go.", "  ")
    return (f"{unit} {state} (preflight exited 1; its program never ran); {other} "
            f"untouched (pid {holder})")


def scene_lingering(st: Story) -> str:
    sb = st.sb
    web, api = "web@green.service", "api.service"
    para("A client is connected when the service stops: the server side closes first and "
         "lingers in TIME_WAIT for 60 s. web sets SO_REUSEADDR (reuse_address: true, the "
         "default), which binds anyway:", "  ")
    st.time_wait(web, 8080)
    st.who("8080")
    st.mark_journal()
    done = st.systemctl("start", web)
    block(done.stdout + done.stderr)
    records = st.records(web, until=is_final)
    st.show_records(web, records)
    find(records, CLEAR, result="clear")
    expect(done.returncode == 0, f"systemctl start {web} failed")
    web_state = st.state(web)
    expect(web_state.startswith("active"), f"{web} is {web_state}")
    outcome(f"{web} {web_state}: the TIME_WAIT socket did not block it")
    out()

    para("api has reuse_address: false (apid does not set SO_REUSEADDR): its bind() "
         "fails until the TIME_WAIT expires, so portguard waits (up to api's timeout: 1m). "
         "The demo starts it with --no-block, shows the wait, and cancels it rather than "
         "sit out 60 s:", "  ")
    st.systemctl("start", api, show=False)
    st.listening(9100)
    st.time_wait(api, 9100)
    st.who("9100")
    st.mark_journal()
    done = st.systemctl("start", "--no-block", api)
    block(done.stdout + done.stderr)
    records = st.records(api, until=lambda r: r.get("MESSAGE_ID") == WAITING)
    waiting_state = st.state(api)
    st.show_records(api, records)
    find(records, WAITING, holder_kind="lingering", result="waiting")
    expect(waiting_state.startswith("activating"), f"{api} is {waiting_state} while waiting")
    para(f"Meanwhile {api} is {waiting_state}: it starts once the port is free, or fails "
         "with preflight's exit 75 after its timeout.", "  ")
    st.systemctl("stop", api)
    sb.wait_unit_state(api, "inactive", "failed")
    return (f"{web} active (passed at once); {api} waited in {waiting_state} for the "
            "TIME_WAIT to expire, until the demo cancelled it")


SCENES: list[tuple[str, str, Callable[[Story], str]]] = [
    ("self", "A remnant of web@blue's previous run holds 8080", scene_remnant),
    ("twin", "Blue/green: web@green starts while web@blue holds 8080", scene_twin),
    ("stray", "A copy of webd left running by hand holds 8080", scene_stray),
    ("foreign", "Another program holds metrics-gateway's port 9091", scene_foreign),
    ("lingering", "TIME_WAIT after a fast restart", scene_lingering),
]


def run_story(sandbox_mod: ModuleType) -> int:
    t0 = time.monotonic()
    results: list[tuple[str, str, bool, str]] = []
    out(S.bold("portguard demo: five ways a port is taken, and what portguard does about "
               "each"))
    out()
    with sandbox_mod.Sandbox() as sb:
        st = Story(sb, sandbox_mod)
        try:
            setup(st)
        except (Unexpected, sandbox_mod.SandboxError) as exc:
            out(f"  {mark(False)} setup failed: {exc}")
            return 1
        for n, (kind, title, scene) in enumerate(SCENES, start=1):
            out()
            head = f"── {n}/{len(SCENES)}  {title}  [{kind}] "
            out(S.bold(head + "─" * max(3, S.width - len(head))))
            try:
                said = scene(st)
                ok = True
            except Unexpected as exc:
                said, ok = f"not as expected: {exc}", False
            except Exception as exc:  # a demo bug: tell the rest of the story anyway
                said, ok = f"the demo failed here: {type(exc).__name__}: {exc}", False
            outcome(said, ok)
            results.append((kind, title, ok, said))
        for pid in st.spawned:  # the clients have exited; anything else dies with PID 1
            if sb.pid_alive(pid):
                sb.kill(pid)
    took = time.monotonic() - t0
    passed = sum(1 for r in results if r[2])
    out()
    out(S.bold("Summary"))
    table([("", "KIND", "SCENE"), *((mark(ok), kind, title) for kind, title, ok, _ in results)],
          indent="  ")
    out()
    if passed == len(results):
        out(S.green(f"All {len(results)} scenes behaved as expected") +
            f" in {took:.1f} s. The sandbox is gone; this host was not touched.")
        out(S.dim("Next: README.md (Commands, Journal), config.example.yaml, "
                  "`portguard install UNIT` on your own services."))
        return 0
    out(S.red(f"{len(results) - passed} of {len(results)} scenes did not behave as "
              f"expected") + f" ({took:.1f} s). Please report this with the output above.")
    return 1


# -- without root ---------------------------------------------------------------------------

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def requirements() -> list[tuple[str, bool]]:
    """What the sandbox needs, each with whether this machine has it (a quick look; the
    sandbox's own check, Sandbox.unavailable_reason(), also tries unshare for real)."""
    def tools(*names: str) -> bool:
        return all(shutil.which(n, path=SANDBOX_PATH) for n in names)

    def text(path: str) -> str:
        with contextlib.suppress(OSError):
            return Path(path).read_text()
        return ""

    return [
        ("root (it creates namespaces and mounts)", os.geteuid() == 0),
        ("unshare, nsenter, mount, setpriv (util-linux)",
         tools("unshare", "nsenter", "mount", "setpriv")),
        ("systemd, systemctl, journalctl, dbus-daemon",
         tools("systemctl", "journalctl") and all(
             os.access(p, os.X_OK) for p in ("/usr/bin/systemd", "/usr/bin/dbus-daemon"))),
        ("a cgroup2 hierarchy and overlayfs",
         " cgroup2 " in text("/proc/mounts") and "overlay" in text("/proc/filesystems")),
    ]


def host_status(reason: str) -> int:
    out(S.bold("portguard demo"))
    out()
    para("The demo tells its story in a throwaway systemd: systemd booted as PID 1 of "
         "private namespaces (its own network, processes, cgroups and unit files), where it "
         "starts, crashes and stops services without touching this host. That needs:")
    for what, have in requirements():
        out(f"  {mark(have)} {what}")
    out()
    fix = "Run it as root:  " + S.bold("sudo make demo") if os.geteuid() != 0 else \
        "Once that is fixed:  " + S.bold("make demo")
    out(f"Here: {S.yellow(reason)}. {fix}")
    out()
    para("Meanwhile, portguard on this host with the example config (it only looks: "
         "nothing is stopped or signalled):")
    out()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with example_config() as config:
        for args in (["check-config"], ["status"]):
            shell("portguard " + shlex.join(["--config", config, *args]))
            done = subprocess.run([sys.executable, "-m", "portguard", "--config", config,
                                   *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, check=False, timeout=60)
            block(done.stdout + done.stderr)
            out()
    if os.geteuid() != 0:
        para("(As another user than root, a socket whose owner cannot be read shows as "
             "`holder unknown (needs root)`; as root, `status` names every holder.)")
    return 0


def not_root_reason() -> str:
    import pwd
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = "?"
    return f"running as {name} (uid {os.geteuid()}), not root"


def root_would_accept(path: Path) -> bool:
    """The file and every directory above it are root's and not group/other-writable."""
    for p in (path, *path.parents):
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
    return True


@contextlib.contextmanager
def example_config() -> Iterator[str]:
    """The example config as `status` should read it: as it is, unless root's portguard
    would refuse it (like sshd's StrictModes, a config others may write, or in a directory
    they may: a clone under /tmp); then a root-only copy."""
    if os.geteuid() != 0 or root_would_accept(EXAMPLE):
        yield os.path.relpath(EXAMPLE, REPO)
        return
    workdir = tempfile.mkdtemp(prefix="portguard-demo-", dir="/run")
    try:
        config = Path(workdir) / "config.yaml"
        shutil.copyfile(EXAMPLE, config)
        os.chmod(config, 0o644)
        yield str(config)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    if os.geteuid() != 0:  # before loading sandbox.py, which looks into the venv
        return host_status(not_root_reason())
    try:
        sandbox_mod = load_sandbox()
        reason = sandbox_mod.Sandbox.unavailable_reason()
    except (ImportError, OSError) as exc:
        sandbox_mod, reason = None, f"the sandbox helper cannot be loaded: {exc}"
    if reason is not None or sandbox_mod is None:
        return host_status(f"the sandbox cannot run: {reason or 'unknown'}")
    try:
        return run_story(sandbox_mod)
    except KeyboardInterrupt:
        out("\ninterrupted: the sandbox is torn down")
        return 130


if __name__ == "__main__":
    sys.exit(main())
