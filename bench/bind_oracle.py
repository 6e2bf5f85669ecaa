#!/usr/bin/env python3
"""The bind() oracle, long (issue 12): random socket zoos, random service port specs.

Runs tests/support/bind_oracle.py (read its docstring for what a zoo is and how the
truth is found) for several seeds in one sandbox and prints, per seed and in total, the
false free / false blocked / holder mismatch counts of `preflight --dry-run`, `status`
and `who ADDR:PORT --[no-]reuse-address`. Exit 0 only when every count is 0 (and the
oracle's premise held on every spec).

    .venv/bin/python bench/bind_oracle.py                       # 5 seeds x 30 zoos x 15
    .venv/bin/python bench/bind_oracle.py --seeds 3 --zoos 7 --count 1 -v   # replay
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import benchlib  # noqa: F401  (puts tests/ on sys.path)
from support.bind_oracle import COMMANDS, Tally, run
from support.sandbox import Sandbox


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="101,202,303,404,505",
                    help="comma-separated seeds (default: five)")
    ap.add_argument("--zoos", type=int, default=0, help="first zoo number")
    ap.add_argument("--count", type=int, default=30, help="zoos per seed")
    ap.add_argument("--specs", type=int, default=15, help="specs per zoo")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every disagreement")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    total = Tally(0, {c: Counter[str]() for c in COMMANDS}, 0, [], Counter[str]())
    started = time.monotonic()
    with Sandbox() as sb:
        for seed in seeds:
            t0 = time.monotonic()
            got = run(sb, seed, range(args.zoos, args.zoos + args.count), args.specs,
                      f"bench{seed}", timeout=7200)
            print(f"seed {seed}: {got.summary()} ({time.monotonic() - t0:.0f} s)", flush=True)
            for line in got.failures if args.verbose else got.failures[:5]:
                print("  " + line)
            for cmd in COMMANDS:
                total.counts[cmd].update(got.counts[cmd])
            total.mix.update(got.mix)
            total.failures.extend(got.failures)
            total = total._replace(specs=total.specs + got.specs,
                                   premise=total.premise + got.premise)
    print(f"total: {total.summary()} ({time.monotonic() - started:.0f} s)")
    print("covered: " + ", ".join(f"{k} {v}" for k, v in sorted(total.mix.items())))
    return 0 if total.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
