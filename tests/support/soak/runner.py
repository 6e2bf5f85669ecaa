"""Lanes side by side over one sandbox: every scenario run once, its verdict recorded."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

from support.sandbox import Sandbox
from support.soak.generator import make_scenario
from support.soak.lane import Lane, Soak
from support.soak.model import Outcome, Report


def run(sb: Sandbox, numbers: Sequence[int], seed: int, *, lanes: int = 2,
        log: Callable[[str], None] = print, verbose: bool = False, code: str = "") -> Report:
    """Run scenarios `numbers` of `seed` in `sb` (a started Sandbox) over `lanes` lanes;
    `code` names the portguard that runs, for the report."""
    t0 = time.monotonic()
    soak = Soak(sb, lanes=lanes, log=log)
    soak.install()
    work = collections.deque(numbers)
    total, done = len(numbers), [0]
    failures: list[BaseException] = []

    def lane_main(lane_no: int) -> None:
        lane = Lane(soak, lane_no)
        try:
            while True:
                with soak.lock:
                    if not work:
                        break
                    n = work.popleft()
                out = lane.run(make_scenario(seed, n))
                soak.record(out)
                with soak.lock:
                    done[0] += 1
                    progress(log, out, done[0], total, t0=t0, verbose=verbose)
            lane.flush_journal()
        except BaseException as exc:  # surfaced by the main thread
            failures.append(exc)
            with soak.lock:
                work.clear()

    threads = [threading.Thread(target=lane_main, args=(i,), name=f"soak-lane-{i}")
               for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    for out in soak.outcomes:
        if out.violations:
            log(f"VIOLATION in {out.sc.describe()}")
            for h in out.sc.holders:
                log(f"    {h.describe()}")
            log(f"    exit {out.exit}, expected {out.expected.exit} ({out.expected.why}); "
                f"stderr: {out.stderr.strip()[:600]}")
            for line in out.violations:
                log(f"  - {line}")
    outcomes = sorted(soak.outcomes, key=lambda o: o.sc.n)
    return Report(seed, list(numbers), lanes, outcomes, time.monotonic() - t0,
                  sb.boot_seconds, code)


def progress(log: Callable[[str], None], out: Outcome, done: int, total: int, *,
             t0: float, verbose: bool) -> None:
    mark = "ERROR" if out.error else ("VIOLATION" if out.violations else "ok")
    if verbose or mark != "ok":
        kinds = " ".join(f"{h.made}/{h.variant}" for h in out.sc.holders)
        log(f"[{done}/{total}] s{out.sc.n} lane {out.lane} {out.sc.policy}/"
            f"{out.sc.on_foreign} exit {out.exit} (want {out.expected.exit}) "
            f"{out.seconds:.2f}s {mark}: {kinds}" + (f" -- {out.error}" if out.error else ""))
    elif done % 25 == 0 or done == total:
        log(f"[{done}/{total}] {time.monotonic() - t0:.0f}s elapsed")
