"""One who_bench scenario: a fresh sandbox, its load, the checks, the timing, profiles."""

from __future__ import annotations

import argparse
import time
from typing import Any, NamedTuple

from benchlib import PORTGUARD
from benchlib.host import Log, loadavg, wait_quiet
from benchlib.loaded_host import FREE, HELD, Scale, build, count
from benchlib.profiling import Import
from benchlib.timing import BUSY, MAX_WAIT, TIMED_ENV, Timings, run_timer
from support.sandbox import PYTHON, Sandbox

from wholib.checks import Check, check_identity, timed_status_checks
from wholib.profiles import cprofile, importtime, phases


class Outcome(NamedTuple):
    scale: Scale
    build_s: float
    counts: dict[str, Any]
    timings: Timings
    checks: list[Check]
    phases: dict[str, dict[str, float]]
    imports: dict[str, tuple[float, list[Import]]]
    profiles: dict[str, str]
    quiet: str  # how busy the machine was around the timing


def timed_commands() -> list[tuple[str, list[str]]]:
    cmds: list[tuple[str, list[str]]] = []
    for port in (HELD, FREE):
        cmds += [
            (f"portguard who {port}", [PORTGUARD, "who", str(port)]),
            (f"portguard --json who {port}", [PORTGUARD, "--json", "who", str(port)]),
            (f"ss -ltnp 'sport = :{port}'", ["ss", "-ltnp", f"sport = :{port}"]),
            (f"fuser -n tcp {port}", ["fuser", "-n", "tcp", str(port)]),
            (f"lsof -iTCP:{port} -sTCP:LISTEN", ["lsof", f"-iTCP:{port}", "-sTCP:LISTEN"]),
            (f"ss -ltn 'sport = :{port}' (no -p)", ["ss", "-ltn", f"sport = :{port}"]),
        ]
    cmds += [("python3 -c pass", ["python3", "-c", "pass"]),
             ("venv python -c pass", [PYTHON, "-c", "pass"])]
    return cmds


def time_commands(sb: Sandbox, runs: int, warmup: int, max_wait: float = MAX_WAIT,
                  ) -> tuple[Timings, dict[str, float]]:
    """(per command: wall ms, cpu ms, exit statuses), (how much waiting for quiet)."""
    return run_timer(sb, timed_commands(), runs, warmup, env=TIMED_ENV, threshold=BUSY,
                     max_wait=max_wait, budget=30 * max_wait)


def run_scenario(sc: Scale, args: argparse.Namespace, log: Log) -> Outcome:
    runs, warmup, profile, wait = args.runs, args.warmup, args.profile, args.wait_quiet
    sb = Sandbox(boot_timeout=30)
    try:
        sb.start()
        log(f"[{sc.name}] sandbox up in {sb.boot_seconds:.1f} s; building "
            f"{sc.procs} processes in {sc.units} unit(s)")
        build_s = build(sb, sc)
        counts = count(sb, sc)
        log(f"[{sc.name}] built in {build_s:.1f} s: {counts['tcp']:,} TCP + {counts['tw']:,} "
            f"TIME_WAIT + {counts['udp']:,} UDP; {counts['load_processes']:,} load processes")
        if counts["short"]:
            log(f"[{sc.name}] WARNING: scale not reached: {'; '.join(counts['short'])}")
        checks = check_identity(sb, sc)
        for ch in checks:
            if ch.problem:
                log(f"[{sc.name}] MISMATCH {ch.port}/{ch.proto}: {ch.problem}")
        log(f"[{sc.name}] pid identity: {sum(not ch.problem for ch in checks)}/{len(checks)}"
            " ports agree with ss")
        busy = wait_quiet(wait, log, f"[{sc.name}]")
        before = loadavg()
        t0 = time.monotonic()
        command_wait = min(MAX_WAIT, wait, 0.2 if args.quick else MAX_WAIT)
        timings, waits = time_commands(sb, runs, warmup, command_wait)
        log(f"[{sc.name}] timed {len(timings)} commands x {runs} runs in "
            f"{time.monotonic() - t0:.0f} s")
        checks += timed_status_checks(timings)
        for ch in checks[-4:]:
            if ch.problem:
                log(f"[{sc.name}] MISMATCH {ch.port}/{ch.proto}: {ch.problem}")
        quiet = (f"CPUs {busy:.0%} busy just before timing; load average {before} before, "
                 f"{loadavg()} after; before the commands the runner waited "
                 f"{waits['waited_s']:.0f} s in all for the CPUs to be <= {BUSY:.0%} busy, "
                 f"and {waits['busy_starts']:.0f} of {waits['starts']:.0f} commands started "
                 f"on a busier machine after {command_wait:g} s")
        if waits["busy_starts"] > 0.1 * waits["starts"]:
            quiet += " -- **the machine was busy with other work: figures are inflated**"
        ph = {str(p): phases(sb, p, 3 if runs < 5 else 9) for p in (HELD, FREE)}
        imports: dict[str, tuple[float, list[Import]]] = {}
        profs: dict[str, str] = {}
        if profile and sc.name in ("L", "L1"):
            ports = (HELD, FREE) if sc.name == "L" else (HELD,)
            for p in ports:
                imports[str(p)] = importtime(sb, p, 5)
                profs[str(p)] = cprofile(sb, p)
            log(f"[{sc.name}] profiled")
        return Outcome(sc, build_s, counts, timings, checks, ph, imports, profs, quiet)
    finally:
        sb.stop()  # SIGKILLs the sandbox's PID 1: every process started inside goes with it
