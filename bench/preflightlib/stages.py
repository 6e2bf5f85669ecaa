"""Where the fast path's time goes: stages in a fresh process, and `-X importtime`."""

from __future__ import annotations

from collections.abc import Sequence

from benchlib import PORTGUARD
from benchlib.profiling import WRAP_CODE, Import, ImportTimes, median_importtime, stage_medians
from support.sandbox import Sandbox

# One fresh process per call: imports timed in the order cli.main() needs them, the fast
# path's steps wrapped with timers, then cli.main() itself. A function that has moved is
# listed as not timed rather than failing the run.
STAGES_CODE = r"""
import importlib, io, json, sys, time
clock, cpu_clock = time.perf_counter, time.process_time
T0, C0 = clock(), cpu_clock()
from portguard import cli
T1, C1 = clock(), cpu_clock()
from portguard.commands import preflight
T2, C2 = clock(), cpu_clock()
WITH_CPU = True
""" + WRAP_CODE + r"""
wrap("portguard.cli", "build_parser", "argparse: build the parser")
wrap("portguard.config.schema", "load", "config: read, parse (YAML), validate")
wrap("portguard.commands.preflight", "Preflight._fast_path_clear", "fast-path checks, in all")
wrap("portguard.observe.procs.processes",
     "populated_cgroups", "  cgroup tree walk (starting twins)",
     "cgroup walks (count)")
wrap("portguard.observe.kernel.sockets", "query", "  sock_diag query", "sock_diag queries (count)")
wrap("portguard.observe.kernel.probe", "probe_bind", "  bind() probes", "bind() probes (count)")
wrap("portguard.report.journal", "Journal.emit", "journal record(s) sent",
     "journal records (count)")
wrap("portguard.app", "App.close", "close (journal socket)")
T3, C3 = clock(), cpu_clock()
rc = cli.main(sys.argv[1:], stdout=io.StringIO(), stderr=io.StringIO())
T4, C4 = clock(), cpu_clock()
for key, (a, b, c, d) in {
        "import portguard.cli (argparse, journal, app, errors)": (T0, T1, C0, C1),
        "import portguard.commands.preflight (config, yaml, classify, units...)": (T1, T2, C1, C2),
        "cli.main() in all": (T3, T4, C3, C4)}.items():
    acc[key], cpu[key] = (b - a) * 1000, (d - c) * 1000
acc["pystemd imported"] = int(any(m == "pystemd" or m.startswith("pystemd.")
                                  for m in sys.modules))
acc["exit status"] = rc
print(json.dumps({"stages": acc, "cpu": cpu, "missing": missing}))
"""
COUNTS = ("cgroup walks (count)", "sock_diag queries (count)", "bind() probes (count)",
          "journal records (count)", "pystemd imported", "exit status")


def stages(sb: Sandbox, unit: str, n: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) stage times of `preflight UNIT` over n fresh processes (see
    STAGES_CODE); counts have CPU nan."""
    return stage_medians(sb, STAGES_CODE, ["preflight", unit], n, COUNTS)


def module_names(rows: Sequence[Import]) -> set[str]:
    return {r.name.strip() for r in rows}


def has_pystemd(rows: Sequence[Import]) -> list[str]:
    return sorted(n for n in module_names(rows) if n == "pystemd" or n.startswith("pystemd."))


def importtime(sb: Sandbox, unit: str, n: int, env: dict[str, str] | None = None,
               ) -> ImportTimes:
    """The median (by total) of n `-X importtime` runs of the console script:
    (total ms, rows, exit status, the rest of stderr)."""
    return median_importtime(sb, [PORTGUARD, "preflight", unit], n, env)


def by_package(rows: Sequence[Import]) -> list[tuple[str, float, int]]:
    """Self time summed per top-level package: (package, ms, modules), largest first."""
    acc: dict[str, tuple[float, int]] = {}
    for r in rows:
        top = r.name.strip().split(".")[0]
        ms, k = acc.get(top, (0.0, 0))
        acc[top] = (ms + r.own, k + 1)
    return sorted(((p, ms, k) for p, (ms, k) in acc.items()), key=lambda x: -x[1])

