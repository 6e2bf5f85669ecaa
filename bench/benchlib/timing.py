"""Timing whole processes inside the sandbox, and the statistics the reports show.

The runner (TIMER_CODE) runs INSIDE the sandbox's namespaces, so nothing but the command
itself is timed: timing from the host around nsenter would add nsenter's own cost.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.sandbox import PYTHON, Sandbox

from benchlib import REPO

GAP = 0.1  # seconds: the CPU sample before each timed command (see TIMER_CODE)
BUSY = 0.2  # ... which must show the CPUs at most this busy ...
MAX_WAIT = 10.0  # ... waiting at most this long
TIMED_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8", "HOME": "/root", "PYTHONDONTWRITEBYTECODE": "1"}

Timings = dict[str, dict[str, Any]]  # name -> {"wall": [ms], "cpu": [ms], "rc": [], "exe"}

# stdout: {name: {wall, cpu, rc, exe}}; the waiting statistics go to stderr as
# `quiet: {...}`; spec keys other than env, runs, warmup, seed, commands and gap are
# optional. posix_spawn + wait4 around each command, stdio on /dev/null. Each round runs
# every command once, in a fresh random order (seeded), so drift hits all alike and no
# command always follows the same one. Before each command the runner samples the host's
# CPUs (/proc/stat is not namespaced) for `gap` seconds and, while they are more than
# `threshold` busy (other work on a shared machine; the previous command's aftermath),
# keeps waiting, up to `max_wait` seconds per command and `budget` seconds in all: short
# commands suffer most from contention, and this keeps one busy moment from landing on
# whatever runs next.
TIMER_CODE = r"""
import json, os, random, shutil, sys, time
spec = json.loads(sys.argv[1])
env = spec["env"]
devnull = os.open("/dev/null", os.O_RDWR)
actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)]
cmds = []
for name, argv in spec["commands"]:
    exe = shutil.which(argv[0], path=env["PATH"])
    if exe is None:
        sys.exit(f"not found inside the sandbox: {argv[0]}")
    cmds.append((name, [exe, *argv[1:]]))

def busy(interval):
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)

out = {name: {"wall": [], "cpu": [], "rc": [], "exe": argv[0]} for name, argv in cmds}
quiet = {"waited_s": 0.0, "busy_starts": 0, "starts": 0}
# (bench/preflight_bench.py runs this too, with a spec that may name only "gap")
threshold = spec.get("threshold", 1.0)
max_wait = spec.get("max_wait", 0.0)
budget = spec.get("budget", 0.0)
rng = random.Random(spec["seed"])
for r in range(spec["warmup"] + spec["runs"]):
    order = list(cmds)
    rng.shuffle(order)
    for name, argv in order:
        w0 = time.monotonic()
        b = busy(spec["gap"])
        while (b > threshold and time.monotonic() - w0 < max_wait
               and quiet["waited_s"] + (time.monotonic() - w0) < budget):
            b = busy(spec["gap"])
        quiet["waited_s"] += time.monotonic() - w0 - spec["gap"]
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        if r >= spec["warmup"]:
            o = out[name]
            o["wall"].append(wall * 1000)
            o["cpu"].append((ru.ru_utime + ru.ru_stime) * 1000)
            o["rc"].append(os.waitstatus_to_exitcode(status))
            quiet["busy_starts"] += b > threshold
            quiet["starts"] += 1
print(json.dumps(out))
print("quiet:", json.dumps(quiet), file=sys.stderr)
"""


def run_timer(sb: Sandbox, commands: Sequence[tuple[str, list[str]]], runs: int,
              warmup: int, *, env: dict[str, str], seed: int = 1, timeout: float = 7200,
              **quiet: float) -> tuple[Timings, dict[str, float]]:
    """Time `commands` (name, argv) in `sb` with TIMER_CODE: (timings, its waiting).

    `quiet` may set threshold, max_wait and budget; without them it never waits.
    """
    spec = {"env": env, "runs": runs, "warmup": warmup, "seed": seed, "gap": GAP,
            "commands": list(commands), **quiet}
    out = sb.run([PYTHON, "-c", TIMER_CODE, json.dumps(spec)], timeout=timeout, check=True)
    timings: Timings = json.loads(out.stdout)
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("quiet: "))
    waits: dict[str, float] = json.loads(line.removeprefix("quiet: "))
    return timings, waits


def compile_portguard() -> str:
    """Byte-compile portguard/ (PYTHONDONTWRITEBYTECODE is set here: runs would recompile)."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", "portguard"], cwd=REPO, check=True)
    tag = sys.implementation.cache_tag
    n = len(list((REPO / "portguard/__pycache__").glob(f"*.{tag}.pyc")))
    return f"`{Path(PYTHON).name} -m compileall -q portguard`: {n} .pyc files"


# --- statistics ---------------------------------------------------------------------------

def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The q quantile of sorted, non-empty `ordered` by nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "min": ordered[0],
            "p90": nearest_rank(ordered, 0.9)}


def median_ms(timings: Timings, name: str, what: str = "wall") -> float:
    """The median wall (or cpu) milliseconds of one timed command."""
    return float(statistics.median(timings[name][what]))


def fmt(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"
