"""The daemon cost report: an entry appended under "## Daemon cost" in bench/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence

from benchlib import REPO, host

from daemonlib.measure import CLK_TCK, Run

HEADING = "## Daemon cost"
INTRO = ("What `portguard daemon` costs while it watches 100 services: written by"
         " `bench/daemon_cost.py` (appended after each run, newest last).")
TARGET_CPU_PERCENT = 0.5
TARGET_RSS_MIB = 40.0


def machine() -> str:
    return (f"kernel {platform.release()}, {os.cpu_count()} CPUs ({host.cpu_model()}),"
            f" {host.memory()}; venv python {platform.python_version()}; CLK_TCK {CLK_TCK}")


def code_state() -> str:
    return host.code_state(host.all_modules(), "portguard/*.py")


def verdicts(runs: Sequence[Run], default_interval: float) -> list[tuple[str, bool]]:
    out = []
    for r in runs:
        if r.interval == default_interval:
            out.append((f"CPU at interval {r.interval:g}s: {r.cpu_percent:.3f} % of one core"
                        f" (target < {TARGET_CPU_PERCENT} %)",
                        r.cpu_percent < TARGET_CPU_PERCENT))
        peak = max([r.hwm_kib, *r.rss_kib]) / 1024
        out.append((f"memory at interval {r.interval:g}s: VmHWM {peak:.1f} MiB"
                    f" (target < {TARGET_RSS_MIB:g} MiB)", peak < TARGET_RSS_MIB))
    return out


def report(runs: Sequence[Run], args: argparse.Namespace, began: dt.datetime,
           elapsed: float) -> str:
    lines = [
        f"### {began:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{shlex.join(['bench/daemon_cost.py', *sys.argv[1:]])}` (from {REPO};"
        f" {elapsed:.0f} s in all)",
        f"- machine: {machine()}",
        f"- portguard code: {code_state()}",
        f"- load: {args.services} services x 2 ports ({2 * args.services} declared ports);"
        f" {args.running} running, each holding its first port (no conflict);"
        f" {args.foreign} foreign unit(s) on the second port of a stopped service"
        " (reported, left alone); the metrics file written after every pass",
        "- the daemon: `python -m portguard daemon` under the shipped"
        " systemd/portguard.service (ExecStart= drop-in only) in the sandbox (systemd 252 as"
        " PID 1 of private namespaces); measured after READY=1 and"
        f" {args.settle:g} s more, so imports and the first pass are not in the figures",
        "",
        "| interval | measured | passes | CPU, % of one core (stat / schedstat) |"
        " CPU per pass | pass wall time, median / max | VmRSS median / max | VmHWM |"
        " threads | CPU to READY=1 | machine busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        med = statistics.median(r.pass_ms) if r.pass_ms else 0.0
        top = max(r.pass_ms) if r.pass_ms else 0.0
        rss_med = statistics.median(r.rss_kib) / 1024 if r.rss_kib else 0.0
        rss_max = max(r.rss_kib) / 1024 if r.rss_kib else 0.0
        lines.append(
            f"| {r.interval:g} s | {r.seconds:.0f} s | {r.passes} |"
            f" **{r.cpu_percent:.3f}** / {r.cpu_percent_ns:.3f} |"
            f" {r.cpu_per_pass_ms:.1f} ms | {med:.1f} / {top:.1f} ms |"
            f" {rss_med:.1f} / {rss_max:.1f} MiB | **{r.hwm_kib / 1024:.1f} MiB** |"
            f" {r.threads} | {r.startup_cpu_s:.2f} s | {r.busy:.0f} % |")
    lines += ["", "Targets:", ""]
    for text, ok in verdicts(runs, args.default_interval):
        lines.append(f"- {text}: {'met' if ok else '**NOT MET**'}")
    lines += ["", "STATUS= at the end of each run:", ""]
    lines += [f"- {r.interval:g} s: `{r.status}`" for r in runs]
    lines += ["", "utime/stime count in ticks of 1/CLK_TCK s, so a figure below"
              f" ~{100 / CLK_TCK / max(r.seconds for r in runs):.3f} % is at the edge of"
              " the resolution; schedstat counts nanoseconds (threads that ended during the"
              " run are missing from it). \"machine busy\" is all CPUs during the run: other"
              " work on the machine inflates the figures.", ""]
    return "\n".join(lines)

