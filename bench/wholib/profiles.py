"""Where `portguard who`'s time goes: stages, `-X importtime`, cProfile, in the sandbox."""

from __future__ import annotations

from benchlib import PORTGUARD, REPO
from benchlib.profiling import WRAP_CODE, Import, median_importtime, stage_medians
from benchlib.timing import TIMED_ENV
from support.sandbox import PYTHON, Sandbox

# One fresh process per call: wraps portguard's stages with timers, runs cli.main(), and
# prints the stage times (ms). Imports are timed where cli.main() would do them.
PHASES_CODE = r"""
import time
T0 = time.perf_counter()
import importlib, io, json, sys
from portguard import cli
T1 = time.perf_counter()
from portguard.observe import observer as observe
T2 = time.perf_counter()
from portguard.report import tables as report
T3 = time.perf_counter()
clock, cpu_clock, WITH_CPU = time.perf_counter, time.process_time, False
""" + WRAP_CODE + r"""
wrap("portguard.observe.kernel.sockets", "query", "sock_diag query")
wrap("portguard.observe.procs.processes", "find_owners", "find_owners (all rings)")
wrap("portguard.observe.procs.processes", "CgroupTree.path_of", "  cgroup id -> path")
wrap("portguard.observe.procs.processes", "pids_of_uid", "  uid ring: list pids")
wrap("portguard.observe.procs.processes", "all_pids", "  full ring: list pids")
wrap("portguard.observe.procs.processes", "socket_fds", "  fd tables read", "fd tables (count)")
wrap("portguard.observe.procs.processes",
     "read_process", "  read_process", "processes read (count)")
wrap("portguard.observe.observer", "UnitLookup._bus", "D-Bus connect (incl. pystemd import)")
wrap("portguard.observe.systemd.units", "Systemd.unit_for_pid", "D-Bus unit_for_pid calls")
wrap("portguard.report.tables", "table", "render table")
T4 = time.perf_counter()
rc = cli.main(sys.argv[1:], stdout=io.StringIO(), stderr=io.StringIO())
T5 = time.perf_counter()
acc["import portguard.cli (and its imports)"] = (T1 - T0) * 1000
acc["import portguard.observe.observer (sockets, processes, units, ...)"] = (T2 - T1) * 1000
acc["import portguard.report.tables"] = (T3 - T2) * 1000
acc["cli.main() in all (lazy imports included)"] = (T5 - T4) * 1000
acc["exit status"] = rc
print(json.dumps({"stages": acc, "missing": missing}))
"""


COUNTS = ("fd tables (count)", "processes read (count)", "exit status")


def phases(sb: Sandbox, port: int, n: int) -> dict[str, float]:
    """Median stage times of `who PORT` over n fresh processes (see PHASES_CODE)."""
    stages = stage_medians(sb, PHASES_CODE, ["who", str(port)], n, COUNTS)
    return {k: wall for k, (wall, _cpu) in stages.items()}


def importtime(sb: Sandbox, port: int, n: int) -> tuple[float, list[Import]]:
    """-X importtime of the console script: (total ms, [(cumulative, self, module)])."""
    found = median_importtime(sb, [PORTGUARD, "who", str(port)], n)
    return found.total, found.rows


def cprofile(sb: Sandbox, port: int, top: int = 22) -> str:
    code = ("import pstats, sys; pstats.Stats(sys.argv[1], stream=sys.stdout)"
            f".sort_stats('cumulative').print_stats({top})")
    prof = f"/tmp/who-{port}.prof"
    sb.run([PYTHON, "-m", "cProfile", "-o", prof, PORTGUARD, "who", str(port)], timeout=120,
           env=TIMED_ENV)  # a first, warming run
    sb.run([PYTHON, "-m", "cProfile", "-o", prof, PORTGUARD, "who", str(port)], timeout=120,
           env=TIMED_ENV)
    text = sb.run([PYTHON, "-c", code, prof], timeout=60, check=True).stdout
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    lines = [ln.replace(str(REPO) + "/", "") for ln in lines]
    start = next((i for i, ln in enumerate(lines) if "function calls" in ln), 0)
    return "\n".join(lines[start:])
