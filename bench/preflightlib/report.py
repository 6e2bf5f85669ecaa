"""The preflight benchmark's section of bench/RESULTS.md, "## Preflight fast path"."""

from __future__ import annotations

import datetime as dt
import math
import shlex
from collections.abc import Sequence

from benchlib import PORTGUARD, REPO
from benchlib.host import machine
from benchlib.timing import GAP, TIMED_ENV, fmt, median_ms, summary

from preflightlib.scenario import Outcome
from preflightlib.scene import (
    BARE_START,
    CONFIG,
    FAST,
    FUSER,
    FUSER3,
    FUSER_PORT,
    FUSER_START,
    GUARD_START,
    OTHER,
    PY,
    SLOW,
    SLOW_PORT,
    SLOWC,
    SVC,
    SVC_PORTS,
    TWIN,
    TWIN_PORTS,
    UNCONF,
    VENV,
    commands,
)
from preflightlib.stages import COUNTS, by_package

HEADING = "## Preflight fast path"


def verdict(o: Outcome) -> list[str]:
    t = o.timings
    fast, py, fu, fu3 = (median_ms(t, k) for k in (FAST, PY, FUSER, FUSER3))
    cfast, cpy, cfu = (median_ms(t, k, "cpu") for k in (FAST, PY, FUSER))
    twin, unconf, slow, venv = (median_ms(t, k) for k in (TWIN, UNCONF, SLOWC, VENV))
    proofs_ok = all(p.ok for p in o.proofs)
    bare, guard, fstart = (median_ms(t, k) for k in (BARE_START, GUARD_START, FUSER_START))
    added, fuser_added = guard - bare, fstart - bare
    if fu >= fast:
        vs_fuser = f"**{fu / fast:.1f}x faster** (by CPU time {cfu / cfast:.1f}x)"
    else:
        vs_fuser = f"**{fast / fu:.1f}x slower** (by CPU time {cfast / cfu:.1f}x)"
    return [
        f"- **What the guard adds to a unit's start** (`systemctl start` of a oneshot, "
        f"{fmt(bare)} ms bare): **{added:+.1f} ms** with portguard's drop-in line "
        f"= **{added / py:.2f}x** `python3 -c pass` (target <= 3x: "
        + ("met" if added <= 3 * py else "**not met**")
        + f"); the fuser idiom adds {fuser_added:+.1f} ms.",
        f"- **Fast path** (`preflight {SVC}`, 3 free ports): **{fmt(fast)} ms** median, "
        f"**{fast / py:.2f}x** `python3 -c pass` ({fmt(py)} ms; by CPU time "
        f"{cfast / cpy:.2f}x) and {fast / venv:.2f}x the venv's `python -c pass`.",
        f"- Against the idiom it replaces: `fuser -k -n tcp {FUSER_PORT}` takes "
        f"{fmt(fu)} ms on this load ({fmt(fu3)} ms for the 3 ports): the fast path is "
        f"{vs_fuser} (target on the L host: >= 5x faster: "
        + ("met" if fu >= 5 * fast else "**not met**")
        + "), and it also checks the ports as bind() would, journals, and kills nothing. "
        "On a free port fuser only reads /proc/net/tcp and tcp6 (every TCP socket "
        f"on the host, {o.counts['tcp'] + o.counts['tw']:,} here), finds no inode and exits "
        "1 without looking at a process; on a held port it also reads every process's fd "
        "table, then kills whoever holds it.",
        f"- `preflight {OTHER}` (not in the config, so not in its compiled form either: the "
        f"whole way, argparse, PyYAML and the schema, one journal record, no check) takes "
        f"{fmt(unconf)} ms, {unconf - fast:.0f} ms more than the fast path: what the "
        f"compiled config saves every guarded start. The template instance (tcp + udp + "
        f"127.0.0.1, and a cgroup tree walk for a starting twin) takes {fmt(twin)} ms.",
        f"- The slow path (`preflight {SLOW}`: stray found, refused, nothing killed) takes "
        f"{fmt(slow)} ms: the fast path saves {slow - fast:.0f} ms "
        f"({slow / fast:.1f}x) by skipping D-Bus, pystemd and /proc.",
        "- No D-Bus, no pystemd on the fast path: "
        + ("**proven** (every check below passed, each with a control showing the method "
           "does catch the slow path)" if proofs_ok else "**NOT PROVEN: a check failed**")
        + ".",
        "- For reference only (the issue sets no number for preflight): `who`'s target for "
        "a free port, <= 3x `python3 -c pass`, would be "
        + ("met" if fast <= 3 * py else "**not met**")
        + f" by this fast path ({fast / py:.2f}x).",
    ]


def render(o: Outcome, argv: Sequence[str], started: dt.datetime, elapsed: float, *,
           compiled: str, code: str) -> str:
    mach = machine()
    sc, c, t = o.scale, o.counts, o.timings
    lines = [HEADING, "",
             "Written by `bench/preflight_bench.py`, which replaces only this section "
             "(issue 4, item 7).", "",
             f"- date: {started.strftime('%Y-%m-%d %H:%M %Z')} ({elapsed:.0f} s in all)",
             f"- command: `{shlex.join(argv)}` (from {REPO})",
             f"- machine: kernel {mach['kernel']}, {mach['nproc']} x {mach['cpu']}, "
             f"{mach['memory']}; {mach['python3']}; venv {mach['venv python']}; "
             f"{mach.get('tool fuser', 'fuser ?')}; {mach.get('tool systemctl', '')}",
             f"- portguard code: {code}",
             f"- portguard: the console script `{PORTGUARD}`, config at the default "
             f"`{CONFIG}` (as the drop-in runs it: `portguard preflight %n`); `portguard/` "
             f"byte-compiled first ({compiled}); environment of every timed command: "
             f"`{' '.join(f'{k}={v}' for k, v in TIMED_ENV.items())}`",
             "- timing: who_bench.py's runner inside the sandbox's namespaces (posix_spawn, "
             "wait4, stdio on /dev/null), every command once per round in a seeded random "
             f"order, {GAP * 1000:.0f} ms apart; median, min, p90 (nearest rank); cpu = "
             "user + sys (wait4)",
             f"- load (who_bench's scale {sc.name}, fresh sandbox, systemd 252 as PID 1): "
             f"{c['units']} `load@N.service` units, {c['load_processes']:,} load processes "
             f"({c['processes']:,} in all), {c['tcp']:,} TCP + {c['tw']:,} TIME_WAIT + "
             f"{c['udp']:,} UDP sockets; built in {o.build_s:.1f} s"
             + (f" -- **scale not reached: {'; '.join(c['short'])}**" if c["short"] else ""),
             f"- machine during timing: {o.quiet}", ""]
    lines += ["### Verdict", "", *verdict(o), ""]
    if o.problems:
        lines += ["**Checks failed:**", "", *(f"- {p}" for p in o.problems), ""]
    runs = len(t[FAST]["wall"])
    py, fu = median_ms(t, PY), median_ms(t, FUSER)
    lines += ["### Whole-process timings", "",
              f"ms, {runs} runs after warm-up; the config declares `{SVC}` ("
              + ", ".join(map(str, SVC_PORTS)) + "), `web@.service` ("
              + ", ".join(TWIN_PORTS) + f") and `{SLOW}` ({SLOW_PORT}, `policy: fail`, held "
              "by a stray copy of its `ExecStart=` started outside any unit).", "",
              "| command | what | median | min | p90 | cpu | / python3 -c pass "
              "| / fuser -k (1 port) | exit |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for cmd in commands():
        s = summary(t[cmd.key]["wall"])
        rcs = ",".join(map(str, sorted(set(t[cmd.key]["rc"]))))
        lines.append(f"| `{cmd.key}` | {cmd.what} | **{fmt(s['median'])}** | "
                     f"{fmt(s['min'])} | {fmt(s['p90'])} | "
                     f"{fmt(median_ms(t, cmd.key, 'cpu'))} | {s['median'] / py:.2f} | "
                     f"{s['median'] / fu:.2f} | {rcs} |")
    lines += ["", "### No D-Bus, no pystemd: the evidence", ""]
    for p in o.proofs:
        lines.append(f"- {'PASS' if p.ok else '**FAIL**'}: {p.what}" +
                     (f". {p.evidence}" if p.evidence else ""))
    lines += ["", "### Where the fast path's time goes", ""]
    for unit, st in o.stages.items():
        lines += [f"Stages of `preflight {unit}` in a fresh process (median of "
                  f"{o.extra['stage_runs']}; cpu = process_time(), steadier than wall on a "
                  "busy machine; interpreter start-up is not in here: see `venv python -c "
                  f"pass` above, {fmt(median_ms(t, VENV))} ms):", "",
                  "| stage | wall ms | cpu ms |", "|---|---:|---:|"]
        for k, (v, c) in st.items():
            shown = f"{int(v)}" if k in COUNTS else "" if math.isnan(v) else f"{v:.2f}"
            label = k.replace(" ", "&nbsp;", 2) if k.startswith(" ") else k
            lines.append(f"| {label} | {shown} | {'' if math.isnan(c) else f'{c:.2f}'} |")
        lines.append("")
    total, rows, _rc, _rest = o.extra["importtime"][SVC]
    lines += [f"`-X importtime` of `portguard preflight {SVC}` (median of 3 runs by total: "
              f"{total:.1f} ms of imports, {len(rows)} modules; importtime inflates it). "
              "Self time per top-level package:", "",
              "| package | self ms | modules |", "|---|---:|---:|"]
    for pkg, ms, k in by_package(rows)[:12]:
        lines.append(f"| `{pkg}` | {ms:.1f} | {k} |")
    lines += ["", "Largest cumulative (nesting as Python prints it) and largest self:", "",
              "```", f"{'cumul':>7} {'self':>7}  module"]
    for r in sorted(rows, key=lambda r: -r.cumulative)[:20]:
        lines.append(f"{r.cumulative:7.2f} {r.own:7.2f}  {r.name}")
    lines += ["", f"{'self':>7}  module (top by self time)"]
    for r in sorted(rows, key=lambda r: -r.own)[:15]:
        lines.append(f"{r.own:7.2f}  {r.name.strip()}")
    lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"

