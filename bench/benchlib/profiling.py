"""Where a portguard command's time goes: stage timers and `-X importtime`, in the sandbox.

Both benchmarks break a command into stages the same way: a fresh process wraps some of
portguard's functions with timers (WRAP_CODE), runs cli.main(), and prints the sums.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from typing import NamedTuple

from support.sandbox import PYTHON, Sandbox

from benchlib.timing import TIMED_ENV

# Pasted into a stage program after its timed imports (it needs `importlib` and `time`
# imported, `clock`, `cpu_clock` and WITH_CPU set). A function that has moved is listed
# in `missing` rather than failing the run; `count` also counts the calls.
WRAP_CODE = r"""
acc, cpu, missing = {}, {}, []
def wrap(module, attr, key, count=None):
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    inner = getattr(owner, name, None) if owner is not None else None
    if inner is None:  # the code moved on: say so rather than fail
        missing.append(f"{module}.{attr}")
        return
    def timed(*a, **k):
        t = clock()
        c = cpu_clock() if WITH_CPU else 0.0
        try:
            return inner(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + (clock() - t) * 1000
            if WITH_CPU:
                cpu[key] = cpu.get(key, 0.0) + (cpu_clock() - c) * 1000
            if count:
                acc[count] = acc.get(count, 0) + 1
    setattr(owner, name, timed)
"""

NAN = float("nan")


def stage_medians(sb: Sandbox, code: str, args: Sequence[str], n: int,
                  counts: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Median (wall, cpu) ms per stage over n fresh processes of `code` (a stage program
    printing {"stages", "missing"[, "cpu"]}); imports first, `counts` last, with cpu nan;
    a wrapped function that was not found is listed as not timed, (nan, nan)."""
    samples: list[dict[str, float]] = []
    cpus: list[dict[str, float]] = []
    missing: list[str] = []
    for _ in range(n):
        out = sb.run([PYTHON, "-c", code, *args], timeout=120, env=TIMED_ENV, check=True)
        doc = json.loads(out.stdout)
        samples.append(doc["stages"])
        cpus.append(doc.get("cpu", {}))
        missing = doc["missing"]
    keys = list(dict.fromkeys(k for s in samples for k in s))
    keys.sort(key=lambda k: (k in counts, not k.startswith("import")))
    result = {k: (float(statistics.median(s.get(k, 0.0) for s in samples)),
                  NAN if k in counts else float(statistics.median(c.get(k, 0.0)
                                                                  for c in cpus)))
              for k in keys}
    for name in missing:
        result[f"(not found, not timed: {name})"] = (NAN, NAN)
    return result


# --- -X importtime ------------------------------------------------------------------------

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$")


class Import(NamedTuple):
    cumulative: float  # ms
    own: float  # ms
    name: str  # as Python prints it: indented by nesting


class ImportTimes(NamedTuple):
    total: float  # ms of top-level imports
    rows: list[Import]
    rc: int
    rest: str  # stderr without the importtime lines


def parse_importtime(stderr: str) -> list[Import]:
    rows = []
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            rows.append(Import(int(m.group(2)) / 1000, int(m.group(1)) / 1000, m.group(3)))
    return rows


def median_importtime(sb: Sandbox, argv: Sequence[str], n: int,
                      env: dict[str, str] | None = None) -> ImportTimes:
    """The median (by total) of n runs of `python -X importtime ARGV...`."""
    runs = []
    for _ in range(n):
        out = sb.run([PYTHON, "-X", "importtime", *argv], timeout=120,
                     env={**TIMED_ENV, **(env or {})})
        rows = parse_importtime(out.stderr)
        total = sum(r.cumulative for r in rows if not r.name.startswith(" "))
        rest = "\n".join(ln for ln in out.stderr.splitlines() if not IMPORT_LINE.match(ln))
        runs.append(ImportTimes(total, rows, out.returncode, rest))
    runs.sort(key=lambda r: r.total)
    return runs[len(runs) // 2]
