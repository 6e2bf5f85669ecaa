#!/usr/bin/env python3
"""Soak: randomized `portguard preflight` scenarios against a real systemd (issue 7, item 3).

One sandbox (tests/support/sandbox.py: systemd 252 as PID 1 of private namespaces)
runs every scenario. Scenario N is drawn from `--seed` and N alone (the same in any run,
any lane): 1-4 holders on 1-2 fresh ports (TCP, or UDP one time in ten) of a service
`soak<L>@sN.service` (root, or `User=nobody` in `soaku<L>@`), a config of its own
(/etc/portguard/soak/sN.yaml: random policy, on_foreign, reuse_address, signal, a small
kill_after and timeout, duplicates.units/commands listed or not), then `portguard
--config ... preflight` run directly (one time in twenty with --dry-run) or, about one
time in five, as the unit's real `ExecStartPre=` (`systemctl start`). The holders:

  foreign    a unit running the service's exact argv or another program; a process
             outside any unit running another program; the exact argv as another user
  twin       another instance of the template; a `duplicates.units` unit (foreign when
             the config does not list it); an instance that is up but binds nothing yet;
             a failed instance whose prefork worker still holds the port
  stray      the exact argv started by hand (no unit), or in a scope (`systemd-run
             --scope`); another argv that `duplicates.commands` matches (else foreign)
  remnant    the service's own worker, left in its cgroup (KillMode=process, main killed)
  lingering  a TIME_WAIT socket, its listener with or without SO_REUSEADDR
  protected  a twin instance or a scope stray listed in `protected`

plus, on some, prefork workers, SIGTERM (the stop signals) ignored, or leaving by itself
while portguard waits (after its "waiting up to" record; one in five of those instead at
a random moment, racing portguard's scan: their kind is then anyone's guess, and a
refusal is allowed).

The oracle (written here from the contract (docs/) and the README; nothing imported from portguard)
gives each holder a kind and an action (act / wait / refuse / tolerate / none), and the
run an exit status, the permitted targets and whether the ports must end free. Checked
after each scenario:

- every process that received a signal was a permitted target (`self`/`stray` through
  portguard's pidfd, with the configured signal, SIGCONT, SIGKILL; a `twin` only from
  systemd after a StopUnit/KillUnit of its unit; nothing protected, nothing foreign,
  nothing when the policy is not `stop`, the plan is refused, or on --dry-run), and
  every permitted holder is gone (its unit no longer active);
- the exit status is the oracle's (0, 1 or 75); after 0 the ports are free (a bind()
  probe with the service's options; as ExecStartPre=, the service itself binds them);
- foreign, protected and tolerated holders are alive, unsignalled, their units active;
- the journal agrees (checked ten scenarios at a time, after `journalctl --sync`): each
  planned conflict (CONFLICT) has the oracle's kind and action; SIGNAL/KILL/STOP_UNIT
  name only permitted pids and units; every signal a holder saw from portguard (or the
  SIGKILL it died of) and every stop systemd did has its record.

Holders run HOLDER_CODE, written to the sandbox's /run at start: it blocks the catchable
signals and takes them with sigwaitinfo(), so it logs each with its sender's pid (si_pid:
portguard, PID 1 for systemd's stop, or its own parent passing a stop on to its workers)
before acting; a SIGKILL shows as death without an exit line. Lanes (`--lanes`, default
2) run scenarios side by side, each with its own templates, so that no lane's instance is
another's twin. Every scenario is cleaned up by unit (kill, stop, reset-failed) and by pid
(checked against its start time).

    .venv/bin/python bench/soak.py                         # 1,000 scenarios (`make soak`)
    .venv/bin/python bench/soak.py --scenarios 40 --seed 7 --no-write -v
    .venv/bin/python bench/soak.py --only 17,230 -v        # re-run single scenarios

It prints progress and a summary and, unless --no-write/--only, replaces the "## Soak"
section of bench/RESULTS.md (from its heading to the next `## ` heading, or appends it at
the end; every other byte of the file is left as it was).

The soak itself is test support, tests/support/soak (its __init__ lists the parts); this
script runs it long and writes the report; bench/benchlib has what the bench scripts share.

Exit status: 0 no violation; 1 violations (listed on stdout and in the report); 2 usage;
3 the sandbox cannot run; 4 scenarios could not be set up (harness errors).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from benchlib import RESULTS, host
from benchlib.results import write_section
from benchlib.timing import nearest_rank
from support.sandbox import Sandbox
from support.soak.generator import VARIANTS
from support.soak.model import Outcome, Report
from support.soak.runner import run
from support.soak.world import ACTIONS, DEFAULT_SEED, KINDS, MADE, POLICIES

HEADING = "## Soak"


def code_version() -> str:
    """Which portguard ran: commit, uncommitted files, a hash of portguard/*.py."""
    return host.code_state(host.all_modules(), "portguard/*.py", names_hashed=False)



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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--scenarios", type=int, default=1000, help="how many (default 1000)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"the seed (default {DEFAULT_SEED})")
    p.add_argument("--first", type=int, default=0, help="number of the first scenario")
    p.add_argument("--only", help="comma list of scenario numbers to run instead")
    p.add_argument("--lanes", type=int, default=2,
                   help="scenarios run side by side, each lane with its own units (2)")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per scenario")
    args = p.parse_args(argv)
    if args.scenarios < 1 or args.lanes < 1:
        p.error("--scenarios and --lanes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = Sandbox.unavailable_reason()
    if reason:
        print(f"soak: the sandbox cannot run here: {reason}", file=sys.stderr)
        return 3
    numbers = ([int(x) for x in args.only.split(",")] if args.only
               else list(range(args.first, args.first + args.scenarios)))
    command = "bench/soak.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    with Sandbox() as sb:
        rep = run(sb, numbers, args.seed, lanes=args.lanes, verbose=args.verbose,
                  code=code_version())
    section = render(rep, command.strip())
    print()
    print(section)
    if not args.no_write and not args.only:
        write_section(args.output, section, HEADING)
        print(f"soak: wrote the Soak section of {args.output}")
    if rep.violations:
        print(f"soak: {len(rep.violations)} violation(s)", file=sys.stderr)
        return 1
    if rep.errors:
        print(f"soak: {len(rep.errors)} scenario(s) could not be set up", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
