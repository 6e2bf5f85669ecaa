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

The parts are in bench/soaklib (its __init__ lists them); bench/benchlib has what the
bench scripts share.

Exit status: 0 no violation; 1 violations (listed on stdout and in the report); 2 usage;
3 the sandbox cannot run; 4 scenarios could not be set up (harness errors).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchlib import RESULTS
from benchlib.results import write_section
from soaklib.report import HEADING, render
from soaklib.runner import run
from soaklib.world import DEFAULT_SEED
from support.sandbox import Sandbox


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
        rep = run(sb, numbers, args.seed, lanes=args.lanes, verbose=args.verbose)
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
