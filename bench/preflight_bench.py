"""Benchmark: the `portguard preflight UNIT` fast path on a loaded host (issue 4, item 7).

When every declared port is free, preflight answers with one sock_diag query, a glance at
the cgroup tree for starting twins and a bind() probe per port, without connecting to
D-Bus or importing pystemd. This script measures that whole process against
`python3 -c pass` and the idiom it replaces (`ExecStartPre=-/usr/bin/fuser -k 8080/tcp`),
with the slow path (D-Bus, pystemd, /proc) for contrast, and proves the "no D-Bus, no
pystemd" claim three ways:

    .venv/bin/python bench/preflight_bench.py             # M load, 15 runs, bench/RESULTS.md
    .venv/bin/python bench/preflight_bench.py --quick     # S load, 3 runs, report on stdout
    .venv/bin/python bench/preflight_bench.py --runs 31 --scale L --output /tmp/r.md

Method, load and runner are who_bench.py's (both take them from bench/benchlib): a fresh
real-systemd sandbox (tests/support/sandbox.py) carrying who_bench's load (default M:
100 `load@N.service` units, 500 processes, ~10,600 inet sockets, 1,000 TIME_WAIT);
`portguard/` byte-compiled first; whole processes timed INSIDE the sandbox's namespaces
by the shared runner (posix_spawn + wait4, stdio on /dev/null, every command once per
round in a seeded random order, 100 ms apart); medians, min, p90; CPU = user + sys.
bench/preflightlib holds the scene, the stages, the proofs and the report.

The config is the default path, /etc/portguard/config.yaml (private to the sandbox), so
the timed commands are exactly what the drop-in runs: `portguard preflight %n`.

bench/RESULTS.md: only the section "## Preflight fast path" is this script's. It is
replaced in place (from its heading to the next `## ` heading outside a code block, or
EOF) or appended at the end; every other byte of the file is kept (who_bench.py keeps
this section when it rewrites the file).

Exit status: 0 fine; 1 a check failed (pystemd imported or D-Bus contacted on the fast
path, a timed command exiting other than expected, the load or the stray disturbed);
2 usage; 3 the sandbox cannot run here or the load could not be built.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import host
from benchlib.cli import add_run_counts, check_run_counts, start_measuring, stderr_log
from benchlib.loaded_host import scenario
from benchlib.results import write_section
from preflightlib.report import HEADING, render, verdict
from preflightlib.scenario import run
from support.sandbox import Sandbox, SandboxError


def code_state() -> str:
    """Commit, uncommitted files in portguard/, and a hash of the modules preflight loads."""
    files = host.loaded_modules(("portguard.cli", "portguard.commands.preflight"))
    return host.code_state(files, f"the {len(files)} modules preflight loads")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_run_counts(p)
    p.add_argument("--scale", default="M", type=scenario,
                   help="who_bench's load: S, M (default), L, or S1/M1/L1 (one unit)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: scale S, 3 runs, 1 warm-up; report on stdout")
    p.add_argument("--output", type=Path, default=None,
                   help="the file whose '## Preflight fast path' section is replaced "
                        "(default bench/RESULTS.md; with --quick: stdout only)")
    p.add_argument("--wait-quiet", type=float, default=120.0, metavar="SECONDS",
                   help="before timing, wait up to this long for the CPUs to settle "
                        "(default 120; 0: do not wait)")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.runs, args.warmup = scenario("S"), 3, 1
        args.wait_quiet = min(args.wait_quiet, 5.0)
    check_run_counts(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    log = stderr_log("preflight_bench")
    reason = Sandbox.unavailable_reason()
    if reason or not os.access("/usr/bin/fuser", os.X_OK):
        log(f"cannot run: {reason or '/usr/bin/fuser missing (psmisc)'}")
        return 3
    start = start_measuring(code_state)  # SIGTERM: through run()'s finally, sandbox stopped
    code = start.code
    try:
        outcome = run(args.scale, args, log)
    except SandboxError as e:
        log(f"failed: {e}")
        return 3
    now = code_state()
    if not host.same_code(code, now):
        code += f" -- **portguard changed during the run (now: {now})**"
    elif now != code:
        code += f" (now {now.split(';')[0]}: the modules measured are unchanged)"
    section = render(outcome, ["bench/preflight_bench.py", *argv], start.started,
                     time.monotonic() - start.t0, compiled=start.compiled, code=code)
    if args.output:
        write_section(args.output, section, HEADING)
        log(f"wrote the '{HEADING[3:]}' section of {args.output}")
    else:
        sys.stdout.write(section)
    for line in verdict(outcome):
        log(line.replace("**", ""))
    for problem in outcome.problems:
        log(f"CHECK FAILED: {problem}")
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.exit(main())
