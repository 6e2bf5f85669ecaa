"""What `portguard daemon` costs: its load of services, and measuring the daemon's process.

The daemon runs under the shipped systemd/portguard.service in the sandbox; its CPU and
memory are read from the host's /proc (the sandbox's pids mapped to the host's), its
passes from the metrics file it writes after each one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from pathlib import Path
from typing import NamedTuple

from benchlib import REPO
from benchlib.host import cpu_jiffies
from support.sandbox import PYTHON, Sandbox, SandboxError

UNIT = "portguard.service"
SHIPPED = REPO / "systemd" / UNIT
LISTENER = str(REPO / "tests/support/listener.py")
METRICS = "/run/portguard/portguard.prom"  # RuntimeDirectory: writable under the unit
FIRST_PORT, SECOND_PORT = 20000, 30000  # service i declares FIRST_PORT+i, SECOND_PORT+i
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
    total0, idle0 = cpu_jiffies()  # the machine: other work skews the figures
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
    total1, idle1 = cpu_jiffies()
    if (found := last_pass(sb)) is not None:
        seen.setdefault(found[0], found[1])
    info = status_kib(host_pid)
    status = sb.unit_property(UNIT, "StatusText")
    sb.systemctl("stop", UNIT, timeout=60)
    first = min(seen) if seen else 0.0  # the pass that was last when measuring began
    passes = [took for stamp, took in seen.items() if stamp > first]
    d_total = total1 - total0
    d_busy = d_total - (idle1 - idle0)
    return Run(interval, t1 - t0, ticks1 - ticks0, ns1 - ns0, len(passes),
               [1000 * p for p in passes], rss, info["VmHWM"], info["Threads"], startup,
               status, 100.0 * d_busy / d_total if d_total else 0.0)

