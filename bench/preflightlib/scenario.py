"""One preflight benchmark run: a fresh sandbox, the scene, timing, proofs and stages."""

from __future__ import annotations

import argparse
import time
from typing import Any, NamedTuple

from benchlib.host import Log, loadavg, wait_quiet
from benchlib.loaded_host import Scale
from benchlib.timing import TIMED_ENV, Timings
from support.sandbox import Sandbox, SandboxError

from preflightlib.proofs import Proof, prove
from preflightlib.scene import (
    SVC,
    TWIN_UNIT,
    commands,
    free_ports_busy,
    load_processes,
    setup,
    time_commands,
)
from preflightlib.stages import stages


class Outcome(NamedTuple):
    scale: Scale
    build_s: float
    counts: dict[str, Any]
    timings: Timings
    problems: list[str]
    proofs: list[Proof]
    extra: dict[str, Any]
    stages: dict[str, dict[str, tuple[float, float]]]
    quiet: str


def check_timed(timings: Timings) -> list[str]:
    """Every timed run must have answered as expected: a fast failure would look fast."""
    out = []
    for cmd in commands():
        rcs = sorted(set(timings[cmd.key]["rc"]))
        if rcs != [cmd.rc]:
            out.append(f"timed `{cmd.key}` exited {rcs}, expected {cmd.rc} every time")
    return out


def run(sc: Scale, args: argparse.Namespace, log: Log) -> Outcome:
    sb = Sandbox(boot_timeout=30)
    try:
        sb.start()
        log(f"[{sc.name}] sandbox up in {sb.boot_seconds:.1f} s")
        build_s, counts, stray = setup(sb, sc, log)
        problems = [f"must be free before timing: {ln}" for ln in free_ports_busy(sb)]
        if problems:  # fuser -k would kill whatever holds them
            raise SandboxError("; ".join(problems))
        before_load = load_processes(sb)
        busy = wait_quiet(args.wait_quiet, log, f"[{sc.name}]")
        load_before = loadavg()
        t0 = time.monotonic()
        timings = time_commands(sb, commands(), args.runs, args.warmup, env=TIMED_ENV)
        log(f"[{sc.name}] timed {len(timings)} commands x {args.runs} runs in "
            f"{time.monotonic() - t0:.0f} s")
        quiet = (f"CPUs {busy:.0%} busy just before timing (the load's own TIME_WAIT "
                 f"upkeep included); load average {load_before} before, {loadavg()} "
                 "after")
        if busy > 0.15:
            quiet += " -- **the machine was busy with other work: figures are inflated**"
        problems += check_timed(timings)
        if not sb.pid_alive(stray):
            problems.append(f"the stray (pid {stray}) died: the slow path with policy: fail "
                            "or fuser -k touched it")
        after_load = load_processes(sb)
        if after_load != before_load:
            problems.append(f"load processes {before_load} -> {after_load} during timing")
        problems += [f"became busy during timing: {ln}" for ln in free_ports_busy(sb)]
        proofs, extra = prove(sb, max(3, min(args.runs, 9)))
        problems += [f"{p.what}: {p.evidence}" for p in proofs if not p.ok]
        n = 3 if args.quick else 7
        extra["stage_runs"] = n
        st = {u: stages(sb, u, n) for u in (SVC, TWIN_UNIT)}
        for u, s in st.items():
            if s.get("pystemd imported", (0.0,))[0]:
                problems.append(f"stages run of preflight {u}: pystemd in sys.modules")
        log(f"[{sc.name}] proofs: {sum(p.ok for p in proofs)}/{len(proofs)} passed")
        return Outcome(sc, build_s, counts, timings, problems, proofs, extra, st, quiet)
    finally:
        sb.stop()  # SIGKILLs the sandbox's PID 1: every process started inside goes with it

