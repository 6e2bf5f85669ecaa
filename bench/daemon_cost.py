"""Benchmark: what `portguard daemon` costs while it watches 100 services.

Inside the real-systemd sandbox (tests/integration/sandbox.py), the daemon runs under the
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
import contextlib
import datetime as dt
import hashlib
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from tests.integration.sandbox import PYTHON, Sandbox, SandboxError  # noqa: E402

UNIT = "portguard.service"
SHIPPED = REPO / "systemd" / UNIT
LISTENER = str(REPO / "tests/integration/listener.py")
METRICS = "/run/portguard/portguard.prom"  # RuntimeDirectory: writable under the unit
FIRST_PORT, SECOND_PORT = 20000, 30000  # service i declares FIRST_PORT+i, SECOND_PORT+i
TARGET_CPU_PERCENT = 0.5
TARGET_RSS_MIB = 40.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Run(NamedTuple):
    interval: float
    seconds: float  # wall time measured
    cpu_ticks: int  # utime + stime over it
    cpu_ns: int  # schedstat run time over it (threads alive at both ends)
    passes: int
    pass_ms: list[float]  # durations the daemon reported
    rss_kib: list[int]
    hwm_kib: int
    threads: int
    startup_cpu_s: float  # CPU from exec to READY=1 (imports, config, first pass)
    status: str
    busy: float  # the machine's CPUs busy during the run, % (other work skews results)

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_ticks / CLK_TCK / self.seconds

    @property
    def cpu_percent_ns(self) -> float:
        return 100.0 * self.cpu_ns / 1e9 / self.seconds

    @property
    def cpu_per_pass_ms(self) -> float:
        return 1000.0 * self.cpu_ticks / CLK_TCK / self.passes if self.passes else 0.0


# --- the load -----------------------------------------------------------------------------

def service_name(i: int) -> str:
    return f"svc-{i:03d}.service"


def config_text(services: int, interval: float) -> str:
    lines = ["services:"]
    for i in range(1, services + 1):
        lines += [f"  {service_name(i)}:",
                  f'    ports: ["{FIRST_PORT + i}", "{SECOND_PORT + i}"]']
    lines += ["daemon:", f"  interval: {interval:g}s", "  restart: true",
              f"  metrics_file: {METRICS}", ""]
    return "\n".join(lines)


def build(sb: Sandbox, services: int, running: int, foreign: int) -> None:
    listen = [PYTHON, LISTENER]
    for i in range(1, services + 1):
        argv = [*listen, "--port", str(FIRST_PORT + i), "--name", f"svc{i}"]
        sb.write_unit(service_name(i), f"[Service]\nExecStart={shlex.join(argv)}\n",
                      reload=False)
    for k in range(1, foreign + 1):  # holds the second port of a service that is stopped
        argv = [*listen, "--port", str(SECOND_PORT + services - k + 1), "--name", "other"]
        sb.write_unit(f"other-{k}.service", f"[Service]\nExecStart={shlex.join(argv)}\n",
                      reload=False)
    sb.write_file(f"/etc/systemd/system/{UNIT}", SHIPPED.read_text())
    sb.write_file(f"/etc/systemd/system/{UNIT}.d/50-bench.conf",
                  "[Service]\nExecStart=\n"
                  f"ExecStart={PYTHON} -m portguard daemon\n"
                  f"Environment=PYTHONPATH={REPO} PYTHONDONTWRITEBYTECODE=1\n")
    sb.systemctl("daemon-reload", check=True)
    units = [service_name(i) for i in range(1, running + 1)]
    units += [f"other-{k}.service" for k in range(1, foreign + 1)]
    if units:
        sb.systemctl("start", *units, check=True, timeout=120)
    want = running + foreign

    def listening() -> bool:
        out = sb.run(["ss", "-Hltn"]).stdout
        return len(re.findall(r":(?:2|3)\d{4}\s", out)) >= want

    sb.wait_for(listening, 60, f"{want} listeners")


# --- measuring ----------------------------------------------------------------------------

def stat_ticks(host_pid: int) -> int:
    fields = Path(f"/proc/{host_pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def schedstat_ns(host_pid: int) -> int:
    total = 0
    for task in os.scandir(f"/proc/{host_pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total


def status_kib(host_pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def last_pass(sb: Sandbox) -> tuple[float, float] | None:
    """(timestamp, duration) of the daemon's last pass, from its metrics file."""
    text = sb.run(["cat", METRICS]).stdout
    stamp = re.search(r"^portguard_last_pass_timestamp_seconds (\S+)$", text, re.M)
    took = re.search(r"^portguard_last_pass_duration_seconds (\S+)$", text, re.M)
    return (float(stamp.group(1)), float(took.group(1))) if stamp and took else None


def measure(sb: Sandbox, services: int, interval: float, duration: float,
            settle: float) -> Run:
    sb.write_file("/etc/portguard/config.yaml", config_text(services, interval))
    sb.systemctl("stop", UNIT, timeout=60)
    sb.systemctl("reset-failed", UNIT)
    started = sb.systemctl("start", UNIT, timeout=120)
    if started.returncode != 0:
        log = sb.run(["journalctl", "--no-pager", "-n", "40", "-u", UNIT]).stdout
        raise SandboxError(f"{UNIT} did not start: {started.stderr}\n{log}")
    host_pid = sb.host_pid(int(sb.unit_property(UNIT, "MainPID")))
    startup = stat_ticks(host_pid) / CLK_TCK
    time.sleep(settle)
    seen: dict[float, float] = {}
    rss: list[int] = []
    busy0 = cpu_busy()
    t0, ticks0, ns0 = time.monotonic(), stat_ticks(host_pid), schedstat_ns(host_pid)
    next_rss = t0
    while (now := time.monotonic()) < t0 + duration:
        if (found := last_pass(sb)) is not None:
            seen.setdefault(found[0], found[1])
        if now >= next_rss:
            rss.append(status_kib(host_pid)["VmRSS"])
            next_rss += 1.0
        time.sleep(min(0.25, interval / 4))
    t1, ticks1, ns1 = time.monotonic(), stat_ticks(host_pid), schedstat_ns(host_pid)
    busy1 = cpu_busy()
    if (found := last_pass(sb)) is not None:
        seen.setdefault(found[0], found[1])
    info = status_kib(host_pid)
    status = sb.unit_property(UNIT, "StatusText")
    sb.systemctl("stop", UNIT, timeout=60)
    first = min(seen) if seen else 0.0  # the pass that was last when measuring began
    passes = [took for stamp, took in seen.items() if stamp > first]
    d_busy, d_total = busy1[0] - busy0[0], busy1[1] - busy0[1]
    return Run(interval, t1 - t0, ticks1 - ticks0, ns1 - ns0, len(passes),
               [1000 * p for p in passes], rss, info["VmHWM"], info["Threads"], startup,
               status, 100.0 * d_busy / d_total if d_total else 0.0)


# --- report -------------------------------------------------------------------------------

def machine() -> str:
    cpu = mem = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.partition(":")[2].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    return (f"kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {mem};"
            f" venv python {platform.python_version()}; CLK_TCK {CLK_TCK}")


def code_state() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "portguard").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    head, changed = "?", 0
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        changed = len(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                      "portguard"], capture_output=True, text=True,
                                     check=True).stdout.splitlines())
    extra = f" + {changed} uncommitted file(s) in portguard/" if changed else ""
    return f"commit {head}{extra}; sha256 of portguard/*.py {digest.hexdigest()[:12]}"


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


def append_results(path: Path, section: str) -> None:
    """Append `section` at the very end of `path`, under "## Daemon cost" unless that is
    already the file's last second-level heading. Existing text is never changed."""
    text = path.read_text() if path.exists() else ""
    headings = re.findall(r"^## .*$", text, re.M)
    out = "" if not text or text.endswith("\n") else "\n"
    if not headings or headings[-1] != "## Daemon cost":
        out += ("\n## Daemon cost\n\n"
                "What `portguard daemon` costs while it watches 100 services: written by"
                " `bench/daemon_cost.py` (appended after each run, newest last).\n")
    out += "\n" + section
    with path.open("a") as f:
        f.write(out)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=100, help="configured services (2 ports)")
    p.add_argument("--running", type=int, default=20, help="services running (own port)")
    p.add_argument("--foreign", type=int, default=2, help="foreign holders (reported)")
    p.add_argument("--intervals", default="30,1", help="daemon.interval values, seconds")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per interval (default max(60, 3 intervals))")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after READY=1 first")
    p.add_argument("--quick", action="store_true", help="15 s per interval, print only")
    p.add_argument("--no-write", action="store_true", help="print, do not append")
    p.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
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
        append_results(args.output, section)
        print(f"daemon_cost: appended to {args.output}", file=sys.stderr)
    missed = [text for text, ok in verdicts(runs, args.default_interval) if not ok]
    return 4 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
