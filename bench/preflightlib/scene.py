"""The preflight benchmark's scene: a config, the commands timed, a stray for the slow path.

The config is the default path, /etc/portguard/config.yaml (private to the sandbox), so
the timed commands are exactly what the drop-in runs: `portguard preflight %n`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from benchlib import PORTGUARD
from benchlib.host import Log
from benchlib.loaded_host import Scale, build, count
from benchlib.timing import TIMED_ENV, Timings, run_timer
from support.sandbox import PYTHON, Sandbox, SandboxError, listener_argv, listener_exec

CONFIG = "/etc/portguard/config.yaml"  # the default: commands carry no --config
NO_BUS = "unix:path=/nonexistent/system_bus_socket"
SYSTEM_BUS = "/run/dbus/system_bus_socket"

SVC, SVC_PORTS = "svc.service", (9100, 9101, 9102)
TWIN_UNIT, TWIN_PORTS = "web@blue.service", ("9110", "9111/udp", "127.0.0.1:9112")
SLOW, SLOW_PORT = "slow.service", 9120
OTHER = "other.service"
FUSER_PORT = SVC_PORTS[0]
# A unit's whole start, as issue 14 measures the guard: `systemctl start` of a oneshot
# (ExecStart=/bin/true) bare, with portguard's drop-in line, and with the fuser idiom.
START_PORTS = (9130, 9131, 9132)
START_BARE, START_GUARD, START_FUSER = ("start-bare.service", "start-guard.service",
                                        "start-fuser.service")

CONFIG_TEXT = f"""\
# bench/preflight_bench.py: every port below is free except {SLOW_PORT}, held by a stray.
defaults:
  policy: stop
  timeout: 10s
protected: [sshd.service, "systemd-*.service", dbus.service]
services:
  {SVC}:
    ports: [{", ".join(f'"{p}"' for p in SVC_PORTS)}]
  web@.service:
    ports: [{", ".join(f'"{p}"' for p in TWIN_PORTS)}]
  {SLOW}:
    ports: ["{SLOW_PORT}"]
    policy: fail
  {START_GUARD}:
    ports: [{", ".join(f'"{p}"' for p in START_PORTS)}]
"""


class Cmd(NamedTuple):
    key: str  # the runner's name for it
    argv: list[str]
    what: str
    rc: int  # the exit status every run must have


def commands() -> list[Cmd]:
    pg = [PORTGUARD, "preflight"]
    fuser3 = [str(p) for p in SVC_PORTS]
    return [
        Cmd(f"portguard preflight {SVC}", [*pg, SVC],
            "**fast path**: 3 free TCP ports", 0),
        Cmd(f"portguard preflight {TWIN_UNIT}", [*pg, TWIN_UNIT],
            "fast path, template instance: tcp + udp + 127.0.0.1 ports, and the cgroup "
            "tree walked for a starting twin", 0),
        Cmd(f"portguard preflight {OTHER}", [*pg, OTHER],
            "unit not in the config: imports + config load + one journal record", 0),
        Cmd(f"portguard preflight {SLOW}", [*pg, SLOW],
            f"slow path: a stray holds {SLOW_PORT}, `policy: fail` (D-Bus, pystemd, "
            "/proc; refuses, kills nothing)", 1),
        Cmd(f"fuser -k -n tcp {FUSER_PORT}", ["/usr/bin/fuser", "-k", "-n", "tcp",
                                              str(FUSER_PORT)],
            "the idiom replaced (`fuser -k 8080/tcp`), port free", 1),
        Cmd(f"fuser -k -n tcp {' '.join(fuser3)}", ["/usr/bin/fuser", "-k", "-n", "tcp",
                                                    *fuser3],
            "the idiom for the same 3 ports in one call", 1),
        Cmd(f"systemctl start {START_BARE}", ["systemctl", "start", START_BARE],
            "a oneshot unit's whole start (ExecStart=/bin/true), unguarded", 0),
        Cmd(f"systemctl start {START_GUARD}", ["systemctl", "start", START_GUARD],
            f"the same with `ExecStartPre=+portguard preflight %n` ({len(START_PORTS)} free "
            "ports)", 0),
        Cmd(f"systemctl start {START_FUSER}", ["systemctl", "start", START_FUSER],
            f"the same with `ExecStartPre=-/usr/bin/fuser -k {START_PORTS[0]}/tcp`", 0),
        Cmd("python3 -c pass", ["python3", "-c", "pass"], "reference: `/usr/bin/python3`", 0),
        Cmd("venv python -c pass", [PYTHON, "-c", "pass"],
            "reference: the interpreter portguard runs on", 0),
    ]


(FAST, TWIN, UNCONF, SLOWC, FUSER, FUSER3, BARE_START, GUARD_START, FUSER_START, PY,
 VENV) = (c.key for c in commands())


def setup(sb: Sandbox, sc: Scale, log: Log) -> tuple[float, dict[str, Any], int]:
    """Load, config, the slow path's unit and its stray; (build s, counts, stray pid)."""
    build_s = build(sb, sc)
    counts = count(sb, sc)
    log(f"[{sc.name}] load built in {build_s:.1f} s: {counts['tcp']:,} TCP + "
        f"{counts['tw']:,} TIME_WAIT + {counts['udp']:,} UDP; "
        f"{counts['load_processes']:,} load processes in {counts['units']} units")
    sb.write_file(CONFIG, CONFIG_TEXT, mode=0o644)
    checked = sb.run([PORTGUARD, "check-config"], env=TIMED_ENV)
    if checked.returncode != 0:
        raise SandboxError(f"bad bench config: {checked.stdout}{checked.stderr}")
    oneshot = "[Service]\nType=oneshot\nExecStart=/bin/true\n"
    sb.write_unit(START_BARE, oneshot)
    sb.write_unit(START_GUARD, oneshot + f"ExecStartPre=+{PORTGUARD} preflight %n\n")
    sb.write_unit(START_FUSER, oneshot + f"ExecStartPre=-/usr/bin/fuser -k {START_PORTS[0]}/tcp\n")
    # slow.service is loaded, not started: its ExecStart= is what makes the copy a stray.
    argv = ["--port", str(SLOW_PORT), "--name", "slowd"]
    sb.write_unit(SLOW, f"[Service]\nExecStart={listener_exec(*argv)}\n")
    stray = sb.spawn(listener_argv(*argv))
    sb.wait_for(lambda: f"pid={stray}," in sb.run(
        ["ss", "-Hltnp", f"sport = :{SLOW_PORT}"]).stdout, 10, f"the stray on {SLOW_PORT}")
    return build_s, counts, stray


def free_ports_busy(sb: Sandbox) -> list[str]:
    """Lines of `ss` for ports that must be free (fuser -k would kill what holds them)."""
    nums = [*SVC_PORTS, *START_PORTS,
            *(int(p.split("/")[0].rpartition(":")[2]) for p in TWIN_PORTS)]
    expr = " or ".join(f"sport = :{p}" for p in nums)
    return sb.run(["ss", "-Htuan", expr]).stdout.splitlines()


def load_processes(sb: Sandbox) -> int:
    base = "/sys/fs/cgroup/system.slice/system-load.slice"
    out = sb.run(["sh", "-c", f"cat {base}/*.service/cgroup.procs | wc -l"]).stdout
    return int(out.strip() or 0)


def time_commands(sb: Sandbox, cmds: Sequence[Cmd], runs: int, warmup: int, *,
                  env: dict[str, str], seed: int = 1) -> Timings:
    """Time `cmds` with the shared runner (here it never waits for a quiet machine)."""
    timings, _waits = run_timer(sb, [(c.key, c.argv) for c in cmds], runs, warmup, env=env,
                                seed=seed, timeout=3600)
    return timings
