"""The "## Soak" section of bench/RESULTS.md: what was run, what was found."""

from __future__ import annotations

import collections
import datetime as dt
import os
import platform
from collections.abc import Iterable, Sequence

from benchlib import host
from benchlib.timing import nearest_rank

from soaklib.generator import VARIANTS
from soaklib.model import Outcome, Report
from soaklib.runner import code_version
from soaklib.world import ACTIONS, KINDS, MADE, POLICIES

HEADING = "## Soak"


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _code_line(began: str) -> str:
    now = code_version()
    if not began or host.same_code(began, now):
        return began
    return f"{began} -- **portguard/ changed during the run (now: {now})**"


def _machine() -> str:
    return (f"{platform.node()}: kernel {platform.release()}, {os.cpu_count()} CPUs "
            f"({host.cpu_model() or '?'})")


def render(rep: Report, command: str) -> str:
    outs = rep.outcomes
    ran = [o for o in outs if not o.error]
    holders = [h for o in ran for h in o.sc.holders]
    lines = [HEADING, "",
             "Randomized `portguard preflight` scenarios in one real-systemd sandbox, each"
             " checked against an oracle of the contract's rules (docs/; `bench/soak.py`;"
             " rewritten by each run of `make soak`).", "",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
             f"- machine: {_machine()}",
             f"- command: `{command}`",
             f"- portguard code: {_code_line(rep.code)}",
             f"- seed: {rep.seed}; scenarios: {len(outs)} ({len(ran)} run, "
             f"{len(rep.errors)} could not be set up); lanes: {rep.lanes}",
             f"- duration: {rep.seconds:.0f} s in all (sandbox boot {rep.boot_seconds:.2f} s);"
             f" per scenario median {_q(outs, 0.5):.2f} s, p90 {_q(outs, 0.9):.2f} s, "
             f"max {max((o.seconds for o in outs), default=0):.2f} s",
             f"- **violations: {len(rep.violations)}** in "
             f"{len({o.sc.n for o, _ in rep.violations})} scenario(s)", ""]
    made = collections.Counter(h.made for h in holders)
    variants = collections.Counter((h.made, h.variant) for h in holders)
    lines += ["### Holders", ""]
    lines += _table(("made as", "holders", "variants"), [
        (m, made[m], ", ".join(f"{v} {variants[(m, v)]}" for v in VARIANTS[m][0]
                               if variants[(m, v)]))
        for m in MADE])
    kinds = collections.Counter(h.kind for h in holders)
    actions = collections.Counter((h.kind, h.action) for h in holders)
    lines += ["", "Classified by the oracle (protected ones included in their kind; "
              f"{sum(h.protected for h in holders)} protected holders, "
              f"{sum(h.stubborn for h in holders)} ignoring SIGTERM, "
              f"{sum(bool(h.workers) for h in holders)} with workers, "
              f"{sum(h.leave is not None for h in holders)} leaving by themselves, "
              f"{sum(h.racing for h in holders)} of them at a random moment):", ""]
    lines += _table(("kind", "holders", *ACTIONS),
                    [(k, kinds[k], *(actions[(k, a)] for a in ACTIONS)) for k in KINDS])
    lines += ["", "### Policies and outcomes", ""]
    pol = collections.Counter((o.sc.policy, o.sc.on_foreign) for o in ran)
    lines += _table(("policy", "scenarios", "on_foreign fail", "on_foreign wait"), [
        (p, pol[(p, "fail")] + pol[(p, "wait")], pol[(p, "fail")], pol[(p, "wait")])
        for p in POLICIES])
    modes = collections.Counter("dry-run" if o.sc.dry_run else
                                "ExecStartPre=" if o.sc.via_unit else "direct" for o in ran)
    lines += ["", "Modes: " + ", ".join(f"{m} {c}" for m, c in sorted(modes.items()))
              + "; holders per scenario: " + ", ".join(
                  f"{k}: {c}" for k, c in sorted(collections.Counter(
                      len(o.sc.holders) for o in ran).items()))
              + f"; two ports: {sum(len(o.sc.ports) == 2 for o in ran)}; "
              f"UDP: {sum(o.sc.proto == 'udp' for o in ran)}; service as `nobody`: "
              f"{sum(bool(o.sc.user) for o in ran)}.", ""]
    def exits(want: int, allowed: bool) -> str:
        got = collections.Counter(o.exit for o in ran if o.expected.exit == want
                                  and o.exit != want and (o.exit in o.expected.also) == allowed)
        return ", ".join(f"{g}: {c}" for g, c in sorted(got.items(), key=str)) or "-"

    lines += _table(("oracle's exit", "scenarios", "got it", "got an allowed alternative",
                     "got another (a violation)"), [
        (e, sum(o.expected.exit == e for o in ran),
         sum(o.expected.exit == e == o.exit for o in ran), exits(e, True), exits(e, False))
        for e in sorted({o.expected.exit for o in ran})])
    lines += ["", "Allowed alternatives: 0 for a TIME_WAIT that may block next to holders"
              " policy `warn` tolerates anyway; 1 where a racing holder vanished mid-scan."]
    lines += ["", f"Acted on: {sum(o.signalled for o in ran)} holder processes signalled by"
              f" portguard through a pidfd, {sum(o.killed for o in ran)} of them (or of"
              f" twins' processes) SIGKILLed, {sum(o.stopped_units for o in ran)} twin units"
              " stopped by systemd for it; run time of preflight itself: median "
              f"{_q(ran, 0.5, run=True):.2f} s.", ""]
    lines += ["### Violations", ""]
    if not rep.violations:
        lines += ["None.", ""]
    for o in outs:
        if not o.violations:
            continue
        lines += [f"- {o.sc.describe()}; exit {o.exit}, expected {o.expected.exit}"
                  f" ({o.expected.why})"]
        lines += [f"  - holder {h.describe()}" for h in o.sc.holders]
        lines += [f"  - **{v}**" for v in o.violations]
    observed = [(o, line) for o in outs for line in o.observations]
    racing = [h for h in holders if h.racing]
    lines += ["", "### Observations", "",
              f"{len(racing)} holders left at a random moment while preflight ran (racing its"
              " scan: whatever it takes them for, nothing living may be signalled, and the"
              " exit may turn into a refusal); portguard saw "
              f"{len(observed)} of their records differently from the oracle."]
    lines += [f"- scenario {o.sc.n}: {line}" for o, line in observed[:10]]
    if len(observed) > 10:
        lines.append(f"- ... and {len(observed) - 10} more")
    if rep.errors:
        lines += ["", "### Scenarios that could not be set up", ""]
        lines += [f"- {o.sc.describe()}: {o.error}" for o in rep.errors]
    return "\n".join(lines).rstrip() + "\n"


def _q(outs: Sequence[Outcome], q: float, *, run: bool = False) -> float:
    """Nearest-rank quantile of the scenarios' (or preflight runs') durations."""
    vals = sorted(o.run_seconds if run else o.seconds for o in outs)
    return nearest_rank(vals, q) if vals else 0.0
