"""Benchmark: `portguard who PORT` against ss, fuser and lsof on a loaded host.

Builds the load inside the real-systemd sandbox (tests/support/sandbox.py), one fresh
sandbox per scenario, then times whole processes, from inside the sandbox's namespaces:

    .venv/bin/python bench/who_bench.py                    # S, M, L, L1; 15 runs; RESULTS.md
    .venv/bin/python bench/who_bench.py --quick            # S only, 3 runs, < 30 s, stdout
    .venv/bin/python bench/who_bench.py --scales L1 --runs 7 --output /tmp/r.md

Scenarios: S (~200 sockets, 50 processes, 10 units), M (~10k, 500, 100 units),
L (~50k, 1,000, 100 units); a `1` suffix (`L1`) puts every process in one unit (one
cgroup), portguard's worst case. bench/load.py is the per-unit load program;
bench/README.md says what is measured and how.

Exit status: 0 when every checked port's holder pids agree with `ss -ltnp`/`ss -lunp`;
1 on any mismatch (or a holder portguard could not resolve); 2 on bad usage; 3 when the
sandbox cannot run here or the load could not be built. Missed performance targets are
reported in the results, not in the exit status (`--strict` makes them exit 4).
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
from benchlib.results import kept_notes, other_sections
from benchlib.timing import MAX_WAIT, TIMED_ENV
from support.sandbox import Sandbox, SandboxError
from wholib.report import OWN_HEADING, render, verdict_text, verdicts
from wholib.scenario import run_scenario

TOOLS = ("ss", "fuser", "lsof")  # psmisc and lsof: scripts/bootstrap installs them
WHO_MODULES = ("portguard.cli", "portguard.commands.who", "portguard.observe.observer",
               "portguard.report.tables", "portguard.observe.systemd.units",
               "portguard.config.values")  # and whatever they import at module level


def code_state() -> str:
    """Which portguard was measured: commit, uncommitted files, and a hash of the modules
    the `who` path loads (other modules may change without changing what is timed)."""
    files = host.loaded_modules(WHO_MODULES)
    return host.code_state(files, f"the {len(files)} modules `who` loads")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--scales", default="S,M,L,L1",
                   help="comma-separated scenarios: S, M, L, and S1/M1/L1 (one cgroup); "
                        "default S,M,L,L1")
    add_run_counts(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: S only, 3 runs, 1 warm-up, no profile, report on stdout")
    p.add_argument("--output", type=Path, default=None,
                   help="where to write the report (default bench/RESULTS.md; with --quick: "
                        "stdout only)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip -X importtime and cProfile at L and L1")
    p.add_argument("--wait-quiet", type=float, default=120.0, metavar="SECONDS",
                   help="before timing a scenario, wait up to this long for other work on "
                        "the machine to settle, and before each timed command up to "
                        f"min(this, {MAX_WAIT:g}) s (default 120; 0: do not wait)")
    p.add_argument("--strict", action="store_true", help="exit 4 when a target is missed")
    args = p.parse_args(argv)
    if args.quick:
        args.scales, args.runs, args.warmup, args.profile = "S", 3, 1, False
        args.wait_quiet = min(args.wait_quiet, 1.0)  # and 0.2 s per command: < 30 s
    try:
        args.scenarios = [scenario(s.strip()) for s in args.scales.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    check_run_counts(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    log = stderr_log("who_bench")
    reason = Sandbox.unavailable_reason()
    missing = [t for t in TOOLS if not any(
        os.access(os.path.join(d, t), os.X_OK) for d in TIMED_ENV["PATH"].split(":"))]
    if reason or missing:
        log(f"cannot run: {reason or 'missing ' + ', '.join(missing)} "
            "(run scripts/bootstrap as root: it installs psmisc, lsof, systemd, iproute2)")
        return 3
    start = start_measuring(code_state)  # SIGTERM: through run_scenario's finally
    code = start.code  # what is measured: taken before, checked after
    outcomes = []
    try:
        for sc in args.scenarios:
            outcomes.append(run_scenario(sc, args, log))
    except SandboxError as e:
        log(f"failed: {e}")
        return 3
    now = code_state()
    if not host.same_code(code, now):
        code += f" -- **the who path changed during the run (now: {now})**"
    text = render(outcomes, ["bench/who_bench.py", *argv], start.started,
                  time.monotonic() - start.t0, start.compiled, code=code,
                  notes=kept_notes(args.output), others=other_sections(args.output, OWN_HEADING))
    if args.output:
        args.output.write_text(text)
        log(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    for target, measured, met, by_cpu in verdicts(outcomes):
        log(f"target {verdict_text(target, met, by_cpu).replace('**', '')}: {target}: "
            f"{measured}; by CPU time {by_cpu}")
    bad = [(o.scale.name, ch) for o in outcomes for ch in o.checks if ch.problem]
    if bad:
        for name, ch in bad:
            log(f"MISMATCH [{name}] {ch.port}/{ch.proto}: {ch.problem}")
        log(f"{len(bad)} port(s) where portguard and ss disagree on the holders")
        return 1
    if args.strict and not all(met for _, _, met, _ in verdicts(outcomes)):
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
