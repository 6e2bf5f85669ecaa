"""The loaded host both timing benchmarks measure on: `load@N.service` units in a sandbox.

bench/load.py is each unit's ExecStart=; this builds the units for a scale, and counts
what was achieved inside the sandbox (bench/README.md, "The load").
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, NamedTuple

import load  # bench/load.py: the unit's program, and the port layout it uses
from support.sandbox import PYTHON, Sandbox, SandboxError

from benchlib import BENCH

HELD, FREE, UDP_HELD = 8080, 8081, 5353  # the measured ports


class Scale(NamedTuple):
    name: str
    units: int
    procs: int  # processes in all, unit main processes included
    socks: int  # sockets per process (load.split_sockets)
    tw: int  # TIME_WAIT sockets kept in all


SCALES = {
    "S": Scale("S", 10, 50, 4, 20),
    "M": Scale("M", 100, 500, 20, 1000),
    "L": Scale("L", 100, 1000, 50, 3000),
}


def scenario(name: str) -> Scale:
    """`S`, `M`, `L`, or one of them with a `1` suffix (every process in one unit)."""
    base = SCALES.get(name.rstrip("1"))
    if base is None or (name.endswith("1") and len(name) != 2):
        raise argparse.ArgumentTypeError(f"unknown scale {name!r} (S, M, L, S1, M1, L1)")
    return base._replace(name=name, units=1) if name.endswith("1") else base


def p_instance(sc: Scale) -> int:
    """The unit holding the measured TCP port: an ordinary one in the middle."""
    return max(1, sc.units // 2)


def udp_instance(sc: Scale) -> int:
    return max(1, sc.units // 3)


def holders_expected(sc: Scale) -> int:
    return min(10, sc.procs // sc.units)


def unit_text(sc: Scale) -> str:
    per_unit = sc.procs // sc.units
    argv = [PYTHON, str(BENCH / "load.py"), "--instance", "%i", "--procs", str(per_unit),
            "--socks", str(sc.socks), "--tw", str(sc.tw // sc.units),
            "--p-instance", str(p_instance(sc)), "--p-port", str(HELD),
            "--p-holders", str(holders_expected(sc)),
            "--udp-instance", str(udp_instance(sc)), "--udp-port", str(UDP_HELD)]
    return f"""\
[Unit]
Description=portguard benchmark load %i

[Service]
Type=notify
ExecStart={" ".join(argv)}
LimitNOFILE=65536
TasksMax=infinity
TimeoutStartSec=300
"""


def build(sb: Sandbox, sc: Scale) -> float:
    """Start the load units; returns the seconds it took (systemctl returns at READY=1)."""
    sb.run(["sysctl", "-qw", f"net.ipv4.ip_local_port_range={load.EPHEMERAL}"], check=True)
    sb.write_unit("load@.service", unit_text(sc))
    units = [f"load@{i}.service" for i in range(1, sc.units + 1)]
    t0 = time.monotonic()
    out = sb.systemctl("start", *units, timeout=600)
    took = time.monotonic() - t0
    if out.returncode != 0:
        failed = sb.systemctl("list-units", "--failed", "--plain", "--no-legend").stdout
        logs = sb.run(["journalctl", "--no-pager", "-n", "40", "-u", "load@*"]).stdout
        raise SandboxError(f"load units did not start: {out.stderr}\n{failed}\n{logs}")
    return took


COUNT_CODE = r"""
import json, os, subprocess
def sockstat(path):
    out = {}
    for line in open(path):
        name, _, rest = line.partition(":")
        f = rest.split()
        out[name] = {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
    return out
s4, s6 = sockstat("/proc/net/sockstat"), sockstat("/proc/net/sockstat6")
procs = [p for p in os.listdir("/proc") if p.isdigit()]
load_pids = 0
base = "/sys/fs/cgroup/system.slice/system-load.slice"
for d in os.listdir(base):
    if not d.endswith(".service"):
        continue
    with open(f"{base}/{d}/cgroup.procs") as f:
        load_pids += len(f.read().split())
units = subprocess.run(["systemctl", "list-units", "load@*", "--state=active", "--plain",
                        "--no-legend"], capture_output=True, text=True).stdout.splitlines()
print(json.dumps({
    "tcp": s4["TCP"]["inuse"] + s6["TCP6"]["inuse"], "tw": s4["TCP"]["tw"],
    "udp": s4["UDP"]["inuse"] + s6["UDP6"]["inuse"], "processes": len(procs),
    "load_processes": load_pids, "units": len(units),
    "ss_s": subprocess.run(["ss", "-s"], capture_output=True, text=True).stdout}))
"""


def expected(sc: Scale) -> dict[str, int]:
    n_listen, n_udp, n_pairs = load.split_sockets(sc.socks)
    p_conns = 5  # load.py's default --p-conns
    return {"tcp": sc.procs * (n_listen + 2 * n_pairs) + 1 + 2 * p_conns
            + (sc.units if sc.tw else 0),
            "udp": sc.procs * n_udp + 1, "tw": sc.tw, "load_processes": sc.procs,
            "units": sc.units}


def count(sb: Sandbox, sc: Scale) -> dict[str, Any]:
    """What the sandbox holds now, against expected(sc); `short` lists shortfalls."""
    got: dict[str, Any] = json.loads(sb.python(COUNT_CODE, check=True).stdout)
    want = expected(sc)
    short = [f"{k} {got[k]} < {v}" for k, v in want.items()
             if got[k] < (0.9 * v if k == "tw" else v)]  # TIME_WAIT: kernel-timed, ~
    got["expected"] = want
    got["short"] = short
    return got

