"""Benchmark: what `portguard daemon` costs while it watches 100 services.

Inside the real-systemd sandbox (tests/support/sandbox.py), the daemon runs under the
shipped systemd/portguard.service (every hardening setting; a drop-in only points
ExecStart= at this checkout, as tests/integration/test_unit_file.py does) with a config of
`--services` services x 2 ports. The first `--running` services run (each holds its first
port itself: no conflict), and `--foreign` other units hold the second port of as many
stopped services (conflicts the daemon reports and leaves alone, as it must). Then, per
interval (`--intervals`, default the config default 30s, and 1s to show a pass's cost):

- idle CPU: utime + stime of the daemon (/proc/PID/stat, all its threads) over
  `--duration` seconds (at least 60 s and 3 intervals), as % of one core; schedstat's
  nanosecond run time (/proc/PID/task/*/schedstat) as a cross-check;
- memory: VmRSS sampled every second (median, max) and VmHWM (the peak) at the end;
- passes: counted from the metrics file's `portguard_last_pass_timestamp_seconds`, with
  the pass durations it reports; CPU per pass = CPU time / passes.

    .venv/bin/python bench/daemon_cost.py                  # 30s and 1s; appends RESULTS.md
    .venv/bin/python bench/daemon_cost.py --quick          # 15 s each, prints only
    .venv/bin/python bench/daemon_cost.py --intervals 5 --duration 60 --no-write

Results are appended to bench/RESULTS.md under "## Daemon cost" (the file's existing text
is never changed). Targets (from the issue): < 0.5 % of one core at the default interval,
< 40 MiB resident.

Exit status: 0 done; 2 bad usage; 3 the sandbox cannot run, `portguard daemon` is missing,
or the daemon did not start; 4 a target missed, with --strict.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import REPO, RESULTS
from benchlib.results import append_entry
from daemonlib.measure import Run, build, measure
from daemonlib.report import HEADING, INTRO, report, verdicts
from support.sandbox import PYTHON, Sandbox, SandboxError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--services", type=int, default=100, help="configured services (2 ports)")
    p.add_argument("--running", type=int, default=20, help="services running (own port)")
    p.add_argument("--foreign", type=int, default=2, help="foreign holders (reported)")
    p.add_argument("--intervals", default="30,1", help="daemon.interval values, seconds")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per interval (default max(60, 3 intervals))")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after READY=1 first")
    p.add_argument("--quick", action="store_true", help="15 s per interval, print only")
    p.add_argument("--no-write", action="store_true", help="print, do not append")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--strict", action="store_true", help="exit 4 when a target is missed")
    args = p.parse_args(argv)
    try:
        args.interval_list = [float(x) for x in args.intervals.split(",") if x.strip()]
    except ValueError:
        p.error(f"--intervals: not numbers: {args.intervals!r}")
    if not args.interval_list or min(args.interval_list) <= 0:
        p.error("--intervals: at least one, each > 0")
    if not 0 <= args.running + args.foreign <= args.services or args.services > 9999:
        p.error("--running + --foreign must be at most --services (<= 9999)")
    args.default_interval = 30.0  # DaemonSettings' default
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = Sandbox.unavailable_reason()
    if reason is not None:
        print(f"daemon_cost: the sandbox cannot run here: {reason}", file=sys.stderr)
        return 3
    probe = subprocess.run([PYTHON, "-m", "portguard", "daemon", "--help"], cwd=REPO,
                           capture_output=True, text=True, check=False,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    if probe.returncode != 0:
        print(f"daemon_cost: `portguard daemon` is not available: {probe.stderr.strip()}",
              file=sys.stderr)
        return 3
    began = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    runs: list[Run] = []
    try:
        with Sandbox() as sb:
            build(sb, args.services, args.running, args.foreign)
            for interval in args.interval_list:
                duration = args.duration or (15.0 if args.quick else max(60.0, 3 * interval))
                print(f"daemon_cost: interval {interval:g}s, measuring {duration:g}s ...",
                      file=sys.stderr, flush=True)
                runs.append(measure(sb, args.services, interval, duration, args.settle))
    except SandboxError as exc:
        print(f"daemon_cost: {exc}", file=sys.stderr)
        return 3
    section = report(runs, args, began, time.monotonic() - t0)
    print(section)
    if not (args.quick or args.no_write):
        append_entry(args.output, HEADING, INTRO, section)
        print(f"daemon_cost: appended to {args.output}", file=sys.stderr)
    missed = [text for text, ok in verdicts(runs, args.default_interval) if not ok]
    return 4 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
