"""Benchmark: `portguard who PORT` against ss, fuser and lsof on a loaded host.

Builds the load inside the real-systemd sandbox (tests/integration/sandbox.py), one fresh
sandbox per scenario, then times whole processes, from inside the sandbox's namespaces:

    .venv/bin/python bench/who_bench.py                    # S, M, L, L1; 15 runs; RESULTS.md
    .venv/bin/python bench/who_bench.py --quick            # S only, 3 runs, < 30 s, stdout
    .venv/bin/python bench/who_bench.py --scales L1 --runs 7 --output /tmp/r.md

Scenarios: S (~200 sockets, 50 processes, 10 units), M (~10k, 500, 100 units),
L (~50k, 1,000, 100 units); a `1` suffix (`L1`) puts every process in one unit (one
cgroup), portguard's worst case. bench/load.py is the per-unit load program;
bench/README.md says what is measured and how.

Exit status: 0 when every checked port's holder pids agree with `ss -ltnp`/`ss -lunp`;
1 on any mismatch (or a holder portguard could not resolve); 2 on bad usage; 3 when the
sandbox cannot run here or the load could not be built. Missed performance targets are
reported in the results, not in the exit status (`--strict` makes them exit 4).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import load  # noqa: E402 - bench/load.py, shared port layout

from tests.integration.sandbox import PYTHON, Sandbox, SandboxError  # noqa: E402

PORTGUARD = str(REPO / ".venv/bin/portguard")  # the console script, as users run it
HELD, FREE, UDP_HELD = 8080, 8081, 5353
TOOLS = ("ss", "fuser", "lsof")  # psmisc and lsof: scripts/bootstrap installs them


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
TARGET_SPREAD_SPEEDUP = 20.0  # L, spread: portguard held >= 20x faster than ss -ltnp
TARGET_FREE_VS_PYTHON = 3.0  # every scale: portguard free <= 3x python3 -c pass


def scenario(name: str) -> Scale:
    """`S`, `M`, `L`, or one of them with a `1` suffix (every process in one unit)."""
    base = SCALES.get(name.rstrip("1"))
    if base is None or (name.endswith("1") and len(name) != 2):
        raise argparse.ArgumentTypeError(f"unknown scale {name!r} (S, M, L, S1, M1, L1)")
    return base._replace(name=name, units=1) if name.endswith("1") else base


# --- building the load --------------------------------------------------------------

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
    got: dict[str, Any] = json.loads(sb.python(COUNT_CODE, check=True).stdout)
    want = expected(sc)
    short = [f"{k} {got[k]} < {v}" for k, v in want.items()
             if got[k] < (0.9 * v if k == "tw" else v)]  # TIME_WAIT: kernel-timed, ~
    got["expected"] = want
    got["short"] = short
    return got


# --- checking portguard against ss ---------------------------------------------------

_SS_PID = re.compile(r"pid=(\d+)")


def ss_listeners(sb: Sandbox, proto: str) -> dict[int, set[int]]:
    """local port -> holder pids, from one `ss -ltnp` (tcp) or `ss -lunp` (udp)."""
    flag = "-ltnpH" if proto == "tcp" else "-lunpH"
    out = sb.run(["ss", flag], check=True, timeout=120).stdout
    found: dict[int, set[int]] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        port = int(fields[3].rpartition(":")[2])
        found.setdefault(port, set()).update(int(p) for p in _SS_PID.findall(line))
    return found


def sample_ports(sc: Scale) -> list[tuple[int, str]]:
    """The measured ports, plus listeners and UDP ports of a few ordinary processes."""
    n_listen, n_udp, _ = load.split_sockets(sc.socks)
    per_unit = sc.procs // sc.units
    gs = sorted({0, per_unit - 1, sc.procs // 2 + 1, sc.procs - 1,
                 load.global_index(p_instance(sc), per_unit, per_unit - 1)})
    ports: list[tuple[int, str]] = [(HELD, "tcp"), (FREE, "tcp"), (UDP_HELD, "udp")]
    for g in gs:
        ports += [(load.listener_port(g, sc.socks, 0), "tcp"),
                  (load.listener_port(g, sc.socks, n_listen - 1), "tcp"),
                  (load.udp_port(g, sc.socks, 0), "udp"),
                  (load.udp_port(g, sc.socks, n_udp - 1), "udp")]
    ports.append((load.listener_port(sc.procs, sc.socks, 0), "tcp"))  # past the last: free
    return list(dict.fromkeys(ports))


class Check(NamedTuple):
    port: int
    proto: str
    portguard: tuple[int, ...]
    ss: tuple[int, ...]
    unit: str  # portguard's unit for the first holder ("" if none)
    problem: str  # "" when they agree


def check_identity(sb: Sandbox, sc: Scale) -> list[Check]:
    """`portguard --json who P` holder pids against ss's users:(...) pids, per port."""
    ports = sample_ports(sc)
    ss = {"tcp": ss_listeners(sb, "tcp"), "udp": ss_listeners(sb, "udp")}
    listening = {"tcp": "LISTEN", "udp": "UNCONN"}
    checks = []
    for port, proto in ports:
        out = sb.run([PORTGUARD, "--json", "who", f"{port}/{proto}"], timeout=120)
        problem = ""
        pids: set[int] = set()
        unit = ""
        try:
            doc = json.loads(out.stdout)["ports"][0]
        except (ValueError, KeyError, IndexError):
            doc = {"holders": [], "free": True}
            problem = f"no JSON from portguard (exit {out.returncode}): {out.stderr.strip()}"
        for h in doc["holders"]:
            if h["state"] != listening[proto]:
                continue
            if h["pid"] is None:
                problem = f"unresolved holder: {h.get('unknown')}"
            else:
                pids.add(h["pid"])
                unit = unit or (h.get("unit") or "")
        theirs = ss[proto].get(port, set())
        if not problem and pids != theirs:
            problem = f"pids differ: portguard-only {sorted(pids - theirs)}, " \
                      f"ss-only {sorted(theirs - pids)}"
        if not problem and doc["free"] != (not theirs):
            problem = f"portguard says free={doc['free']}, ss lists {len(theirs)} pid(s)"
        want_rc = 1 if theirs else 0
        if not problem and out.returncode != want_rc:
            problem = f"exit status {out.returncode}, expected {want_rc}"
        if not problem and port == HELD and proto == "tcp":
            want_unit = f"load@{p_instance(sc)}.service"
            if unit != want_unit or len(pids) != holders_expected(sc):
                problem = f"holder {unit!r} x{len(pids)}, expected {want_unit} " \
                          f"x{holders_expected(sc)}"
        checks.append(Check(port, proto, tuple(sorted(pids)), tuple(sorted(theirs)), unit,
                            problem))
    return checks


def timed_status_checks(timings: dict[str, dict[str, Any]]) -> list[Check]:
    """The timed runs must have answered too: exit 1 (held) and 0 (free) every time.

    A portguard that failed fast (a traceback, exit 2) would otherwise look fast.
    """
    out = []
    for port, want in ((HELD, 1), (FREE, 0)):
        for json_flag in ("", "--json "):
            rcs = sorted(set(timings[f"portguard {json_flag}who {port}"]["rc"]))
            problem = "" if rcs == [want] else \
                f"timed `{json_flag}who {port}` exited {rcs}, expected {want} always"
            out.append(Check(port, "tcp (timed runs)", (), (), "", problem))
    return out


# --- timing, inside the sandbox -------------------------------------------------------

# Shared: bench/preflight_bench.py runs it too (stdout: {name: {wall, cpu, rc, exe}};
# the waiting statistics go to stderr as `quiet: {...}`; spec keys other than env, runs,
# warmup, seed, commands and gap are optional).
# Runs inside the sandbox (its PID, net, mount and cgroup namespaces), so nothing but the
# command itself is timed: posix_spawn + wait4 around each, stdio on /dev/null. Each round
# runs every command once, in a fresh random order (seeded), so drift hits all alike and
# no command always follows the same one. Before each command the runner samples the
# host's CPUs (/proc/stat is not namespaced) for `gap` seconds and, while they are more
# than `threshold` busy (other work on a shared machine; the previous command's
# aftermath), keeps waiting, up to `max_wait` seconds per command and `budget` seconds in
# all: short commands suffer most from contention, and this keeps one busy moment from
# landing on whatever runs next.
TIMER_CODE = r"""
import json, os, random, shutil, sys, time
spec = json.loads(sys.argv[1])
env = spec["env"]
devnull = os.open("/dev/null", os.O_RDWR)
actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)]
cmds = []
for name, argv in spec["commands"]:
    exe = shutil.which(argv[0], path=env["PATH"])
    if exe is None:
        sys.exit(f"not found inside the sandbox: {argv[0]}")
    cmds.append((name, [exe, *argv[1:]]))

def busy(interval):
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)

out = {name: {"wall": [], "cpu": [], "rc": [], "exe": argv[0]} for name, argv in cmds}
quiet = {"waited_s": 0.0, "busy_starts": 0, "starts": 0}
# (bench/preflight_bench.py runs this too, with a spec that may name only "gap")
threshold = spec.get("threshold", 1.0)
max_wait = spec.get("max_wait", 0.0)
budget = spec.get("budget", 0.0)
rng = random.Random(spec["seed"])
for r in range(spec["warmup"] + spec["runs"]):
    order = list(cmds)
    rng.shuffle(order)
    for name, argv in order:
        w0 = time.monotonic()
        b = busy(spec["gap"])
        while (b > threshold and time.monotonic() - w0 < max_wait
               and quiet["waited_s"] + (time.monotonic() - w0) < budget):
            b = busy(spec["gap"])
        quiet["waited_s"] += time.monotonic() - w0 - spec["gap"]
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        if r >= spec["warmup"]:
            o = out[name]
            o["wall"].append(wall * 1000)
            o["cpu"].append((ru.ru_utime + ru.ru_stime) * 1000)
            o["rc"].append(os.waitstatus_to_exitcode(status))
            quiet["busy_starts"] += b > threshold
            quiet["starts"] += 1
print(json.dumps(out))
print("quiet:", json.dumps(quiet), file=sys.stderr)
"""


def timed_commands() -> list[tuple[str, list[str]]]:
    cmds: list[tuple[str, list[str]]] = []
    for port in (HELD, FREE):
        cmds += [
            (f"portguard who {port}", [PORTGUARD, "who", str(port)]),
            (f"portguard --json who {port}", [PORTGUARD, "--json", "who", str(port)]),
            (f"ss -ltnp 'sport = :{port}'", ["ss", "-ltnp", f"sport = :{port}"]),
            (f"fuser -n tcp {port}", ["fuser", "-n", "tcp", str(port)]),
            (f"lsof -iTCP:{port} -sTCP:LISTEN", ["lsof", f"-iTCP:{port}", "-sTCP:LISTEN"]),
            (f"ss -ltn 'sport = :{port}' (no -p)", ["ss", "-ltn", f"sport = :{port}"]),
        ]
    cmds += [("python3 -c pass", ["python3", "-c", "pass"]),
             ("venv python -c pass", [PYTHON, "-c", "pass"])]
    return cmds


GAP = 0.1  # seconds: the CPU sample before each timed command (see TIMER_CODE)
BUSY = 0.2  # ... which must show the CPUs at most this busy ...
MAX_WAIT = 10.0  # ... waiting at most this long
TIMED_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8", "HOME": "/root", "PYTHONDONTWRITEBYTECODE": "1"}


def time_commands(sb: Sandbox, runs: int, warmup: int, max_wait: float = MAX_WAIT,
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """(per command: wall ms, cpu ms, exit statuses), (how much waiting for quiet)."""
    spec = {"env": TIMED_ENV, "runs": runs, "warmup": warmup, "commands": timed_commands(),
            "seed": 1, "gap": GAP, "threshold": BUSY, "max_wait": max_wait,
            "budget": 30 * max_wait}
    out = sb.run([PYTHON, "-c", TIMER_CODE, json.dumps(spec)], timeout=7200, check=True)
    timings: dict[str, dict[str, Any]] = json.loads(out.stdout)
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("quiet: "))
    waits: dict[str, float] = json.loads(line.removeprefix("quiet: "))
    return timings, waits


# --- profiles, inside the sandbox -----------------------------------------------------

# One fresh process per call: wraps portguard's stages with timers, runs cli.main(), and
# prints the stage times (ms). Imports are timed where cli.main() would do them.
PHASES_CODE = r"""
import time
T0 = time.perf_counter()
import importlib, io, json, sys
from portguard import cli
T1 = time.perf_counter()
from portguard import observe
T2 = time.perf_counter()
from portguard import report
T3 = time.perf_counter()
acc, missing = {}, []
def wrap(module, attr, key, count=None):
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    inner = getattr(owner, name, None) if owner is not None else None
    if inner is None:  # the code moved on: say so rather than fail
        missing.append(f"{module}.{attr}")
        return
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + (time.perf_counter() - t) * 1000
            if count:
                acc[count] = acc.get(count, 0) + 1
    setattr(owner, name, timed)
wrap("portguard.sockets", "query", "sock_diag query")
wrap("portguard.processes", "find_owners", "find_owners (all rings)")
wrap("portguard.processes", "CgroupTree.path_of", "  cgroup id -> path")
wrap("portguard.processes", "pids_of_uid", "  uid ring: list pids")
wrap("portguard.processes", "all_pids", "  full ring: list pids")
wrap("portguard.processes", "socket_fds", "  fd tables read", "fd tables (count)")
wrap("portguard.processes", "read_process", "  read_process", "processes read (count)")
wrap("portguard.observe", "UnitLookup._bus", "D-Bus connect (incl. pystemd import)")
wrap("portguard.units", "Systemd.unit_for_pid", "D-Bus unit_for_pid calls")
wrap("portguard.report", "table", "render table")
T4 = time.perf_counter()
rc = cli.main(sys.argv[1:], stdout=io.StringIO(), stderr=io.StringIO())
T5 = time.perf_counter()
acc["import portguard.cli (and its imports)"] = (T1 - T0) * 1000
acc["import portguard.observe (sockets, processes, units, ...)"] = (T2 - T1) * 1000
acc["import portguard.report"] = (T3 - T2) * 1000
acc["cli.main() in all (lazy imports included)"] = (T5 - T4) * 1000
acc["exit status"] = rc
print(json.dumps({"stages": acc, "missing": missing}))
"""


COUNTS = ("fd tables (count)", "processes read (count)", "exit status")


def phases(sb: Sandbox, port: int, n: int) -> dict[str, float]:
    """Median stage times of `who PORT` over n fresh processes (see PHASES_CODE)."""
    samples: list[dict[str, float]] = []
    missing: list[str] = []
    for _ in range(n):
        out = sb.run([PYTHON, "-c", PHASES_CODE, "who", str(port)], timeout=120,
                     env=TIMED_ENV, check=True)
        doc = json.loads(out.stdout)
        samples.append(doc["stages"])
        missing = doc["missing"]
    keys = list(dict.fromkeys(k for s in samples for k in s))
    keys.sort(key=lambda k: (k in COUNTS, not k.startswith("import"), 0))
    result = {k: statistics.median(s.get(k, 0.0) for s in samples) for k in keys}
    for name in missing:
        result[f"(not found, not timed: {name})"] = float("nan")
    return result


def importtime(sb: Sandbox, port: int, n: int) -> tuple[float, list[tuple[float, float, str]]]:
    """-X importtime of the console script: (total ms, [(cumulative, self, module)])."""
    runs = []
    for _ in range(n):
        out = sb.run([PYTHON, "-X", "importtime", PORTGUARD, "who", str(port)], timeout=120,
                     env=TIMED_ENV)
        rows = []
        for line in out.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$", line)
            if m:
                rows.append((int(m.group(2)) / 1000, int(m.group(1)) / 1000, m.group(3)))
        total = sum(c for c, _, name in rows if not name.startswith(" "))
        runs.append((total, rows))
    runs.sort(key=lambda r: r[0])
    return runs[len(runs) // 2]


def cprofile(sb: Sandbox, port: int, top: int = 22) -> str:
    code = ("import pstats, sys; pstats.Stats(sys.argv[1], stream=sys.stdout)"
            f".sort_stats('cumulative').print_stats({top})")
    prof = f"/tmp/who-{port}.prof"
    sb.run([PYTHON, "-m", "cProfile", "-o", prof, PORTGUARD, "who", str(port)], timeout=120,
           env=TIMED_ENV)  # a first, warming run
    sb.run([PYTHON, "-m", "cProfile", "-o", prof, PORTGUARD, "who", str(port)], timeout=120,
           env=TIMED_ENV)
    text = sb.run([PYTHON, "-c", code, prof], timeout=60, check=True).stdout
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    lines = [ln.replace(str(REPO) + "/", "") for ln in lines]
    start = next((i for i, ln in enumerate(lines) if "function calls" in ln), 0)
    return "\n".join(lines[start:])


# --- a quiet machine ------------------------------------------------------------------

def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs' time spent busy over `interval` seconds (/proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle
    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_wait: float, log: Any, what: str, threshold: float = 0.15) -> float:
    """Wait (bounded) until the CPUs are mostly idle; returns the last busy fraction.

    Other work on the machine (a test run, a build) inflates every timing, ss's and
    portguard's alike but not in proportion; the fraction is recorded in the report.
    """
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    said = False
    while busy > threshold and time.monotonic() < deadline:
        if not said:
            log(f"{what}: CPUs {busy:.0%} busy with other work; waiting up to "
                f"{max_wait:.0f} s for them to settle below {threshold:.0%}")
            said = True
        busy = cpu_busy()
    return busy


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- statistics and the report --------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered) + 0.5) - 1))]
    return {"median": statistics.median(ordered), "min": ordered[0], "p90": p90}


class Outcome(NamedTuple):
    scale: Scale
    build_s: float
    counts: dict[str, Any]
    timings: dict[str, dict[str, Any]]
    checks: list[Check]
    phases: dict[str, dict[str, float]]
    imports: dict[str, tuple[float, list[tuple[float, float, str]]]]
    profiles: dict[str, str]
    quiet: str  # how busy the machine was around the timing


def med(o: Outcome, name: str) -> float:
    return summary(o.timings[name]["wall"])["median"]


def verdicts(outcomes: Sequence[Outcome]) -> list[tuple[str, str, bool, str]]:
    """(target, measured, met, the same ratio by CPU time) per target the scenarios decide.

    The verdict is on wall-clock medians, as the targets are stated; the CPU-time ratio
    (user + sys of the whole process) is shown beside it because it hardly moves when
    other work on the machine delays a run. `verdict_text` flags the two disagreeing.
    """
    out = []
    for o in outcomes:
        held, ss_held = f"portguard who {HELD}", f"ss -ltnp 'sport = :{HELD}'"
        free, py = f"portguard who {FREE}", "python3 -c pass"
        pg_h, ss_h, pg_f, py_w = med(o, held), med(o, ss_held), med(o, free), med(o, py)
        name = o.scale.name
        if name == "L":
            out.append((f"L: held port >= {TARGET_SPREAD_SPEEDUP:g}x faster than ss -ltnp",
                        f"{ss_h / pg_h:.1f}x ({pg_h:.1f} vs {ss_h:.1f} ms)",
                        ss_h / pg_h >= TARGET_SPREAD_SPEEDUP,
                        f"{cpu_med(o, ss_held) / cpu_med(o, held):.1f}x"))
        if name == "L1":
            out.append(("L1 (one cgroup): held port no slower than ss -ltnp",
                        f"{pg_h:.1f} vs {ss_h:.1f} ms ({ss_h / pg_h:.2f}x faster)",
                        pg_h <= ss_h, f"{cpu_med(o, ss_held) / cpu_med(o, held):.2f}x faster"))
        out.append((f"{name}: free port <= {TARGET_FREE_VS_PYTHON:g}x python3 -c pass",
                     f"{pg_f / py_w:.2f}x ({pg_f:.1f} vs {py_w:.1f} ms)",
                     pg_f <= TARGET_FREE_VS_PYTHON * py_w,
                     f"{cpu_med(o, free) / cpu_med(o, py):.2f}x"))
    return out


def verdict_text(target: str, met: bool, by_cpu: str) -> str:
    """met / NOT MET, or a warning when the CPU-time ratio says otherwise (a busy machine
    inflates short commands' wall time most, python3 -c pass above all)."""
    ratio = float(by_cpu.partition("x")[0])
    if "faster than" in target:
        cpu_met = ratio >= TARGET_SPREAD_SPEEDUP
    elif "no slower" in target:
        cpu_met = ratio >= 1.0
    else:
        cpu_met = ratio <= TARGET_FREE_VS_PYTHON
    word = "met" if met else "**NOT MET**"
    if cpu_met == met:
        return word
    return (f"{word}, but **{'not ' if not cpu_met else ''}met by CPU time**: the machine "
            "was busy, rerun")


def cpu_med(o: Outcome, name: str) -> float:
    return float(statistics.median(o.timings[name]["cpu"]))


def machine() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    tools = {}
    for argv in (["ss", "-V"], ["lsof", "-v"], ["fuser", "-V"], ["systemctl", "--version"]):
        with contextlib.suppress(OSError):
            p = subprocess.run(argv, capture_output=True, text=True, check=False)
            text = (p.stdout + p.stderr).strip().splitlines()
            ver = next((ln.strip() for ln in text if re.search(r"\d+\.\d+|systemd \d+", ln)),
                       "")
            tools[argv[0]] = ver
    py = subprocess.run(["/usr/bin/python3", "-V"], capture_output=True, text=True,
                        check=False).stdout.strip()
    return {"kernel": platform.release(), "nproc": str(os.cpu_count()), "cpu": cpu,
            "memory": mem, "python3": f"/usr/bin/python3 ({py})",
            "venv python": f"{PYTHON} ({platform.python_version()}, {sys.executable})",
            **{f"tool {k}": v for k, v in tools.items()}}


WHO_MODULES = ("portguard.cli", "portguard.observe", "portguard.report", "portguard.units",
               "portguard.configtypes")  # and whatever they import at module level


def code_state() -> str:
    """Which portguard was measured: commit, uncommitted files, and a hash of the modules
    the `who` path loads (other modules may change without changing what is timed)."""
    import hashlib
    probe = ("import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
             "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() "
             "if n.startswith('portguard') and getattr(m, '__file__', None))))")
    files = subprocess.run([PYTHON, "-c", probe, *WHO_MODULES], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    digest = hashlib.sha256()
    for name in files:
        digest.update(Path(name).name.encode() + b"\0" + Path(name).read_bytes())
    head = dirty = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "portguard"], capture_output=True, text=True,
                               check=True).stdout
    changed = len(dirty.splitlines())
    return (f"commit {head or '?'}" + (f" + {changed} uncommitted file(s) in portguard/"
                                       if changed else "")
            + f"; sha256 of the {len(files)} modules `who` loads {digest.hexdigest()[:12]}")


def who_hash(state: str) -> str:
    return state.rpartition(" ")[2]


def fmt(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def scenario_md(o: Outcome) -> list[str]:
    sc, c = o.scale, o.counts
    title = {"S": "S", "M": "M", "L": "L"}.get(sc.name, f"{sc.name.rstrip('1')}-one-cgroup")
    per = sc.procs // sc.units
    n_listen, n_udp, n_pairs = load.split_sockets(sc.socks)
    held_socks = sc.procs * (n_listen + n_udp + 2 * n_pairs)
    lines = [f"## {title}: {sc.procs:,} processes in {sc.units} unit(s), ~{held_socks:,} "
             f"sockets held + ~{sc.tw:,} TIME_WAIT", ""]
    lines += [
        f"Load: {sc.units} `load@N.service` unit(s) x {per} processes; each process "
        f"{n_listen} TCP listener(s), {n_udp} UDP socket(s), {n_pairs} established pair(s); "
        f"port {HELD} held by `load@{p_instance(sc)}.service` (main + "
        f"{holders_expected(sc) - 1} forked children share the listener, 5 connections "
        f"accepted), {UDP_HELD}/udp by `load@{udp_instance(sc)}.service`, {FREE} free. "
        f"Built in {o.build_s:.1f} s (`systemctl start` until every unit sent READY=1).",
        "",
        "| achieved | TCP (not TIME_WAIT) | TIME_WAIT | UDP | all inet sockets "
        "| processes (load / all) | active load units |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| measured | {c['tcp']:,} | {c['tw']:,} | {c['udp']:,} | "
        f"{c['tcp'] + c['tw'] + c['udp']:,} | {c['load_processes']:,} / {c['processes']:,} | "
        f"{c['units']} |",
        f"| planned | {c['expected']['tcp']:,} | ~{c['expected']['tw']:,} | "
        f"{c['expected']['udp']:,} | "
        f"{c['expected']['tcp'] + c['expected']['tw'] + c['expected']['udp']:,} | "
        f"{c['expected']['load_processes']:,} | {c['expected']['units']} |",
        "",
    ]
    if c["short"]:
        lines += [f"**Scale not reached:** {'; '.join(c['short'])}", ""]
    ss_s = [ln for ln in c["ss_s"].splitlines() if ln.startswith(("Total", "TCP:"))]
    lines += ["`ss -s` inside: " + " / ".join(f"`{ln.strip()}`" for ln in ss_s), ""]
    lines += [f"Machine during timing: {o.quiet}.", ""]
    runs = len(next(iter(o.timings.values()))["wall"])
    lines += [f"Wall time per whole process, ms ({runs} runs after warm-up; cpu = user+sys of "
              "the process and its children, median):", "",
              "| command | port | median | min | p90 | cpu | vs ss -ltnp | exit |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, t in o.timings.items():
        s = summary(t["wall"])
        port = "held" if f"{HELD}" in name else "free" if f"{FREE}" in name else ""
        ref = f"ss -ltnp 'sport = :{HELD if port == 'held' else FREE}'"
        ratio = f"{s['median'] / med(o, ref):.3f}" if port else ""
        rcs = sorted(set(t["rc"]))
        cmd = name.replace(PYTHON, ".venv/bin/python")
        lines.append(f"| `{cmd}` | {port} | **{fmt(s['median'])}** | {fmt(s['min'])} | "
                     f"{fmt(s['p90'])} | {fmt(statistics.median(t['cpu']))} | {ratio} | "
                     f"{','.join(map(str, rcs))} |")
    pg_h, pg_f = med(o, f"portguard who {HELD}"), med(o, f"portguard who {FREE}")
    ss_h, ss_f = med(o, f"ss -ltnp 'sport = :{HELD}'"), med(o, f"ss -ltnp 'sport = :{FREE}'")
    py = med(o, "python3 -c pass")
    lines += ["", f"portguard vs ss -ltnp: held {ss_h / pg_h:.1f}x faster "
              f"({pg_h / ss_h:.3f}), free {ss_f / pg_f:.1f}x faster ({pg_f / ss_f:.3f}); "
              f"portguard free / python3 -c pass = {pg_f / py:.2f}.", ""]
    bad = [ch for ch in o.checks if ch.problem]
    pid_checks = [ch for ch in o.checks if ch.proto in ("tcp", "udp")]
    timed_ok = not any(ch.problem for ch in o.checks if ch not in pid_checks)
    lines += [f"pid identity vs `ss -ltnp`/`ss -lunp` ({len(pid_checks)} ports: "
              f"{', '.join(f'{ch.port}/{ch.proto}' for ch in pid_checks)}): "
              + ("**all identical**" if not any(ch.problem for ch in pid_checks)
                 else "**MISMATCH**")
              + "; exit status of every timed portguard run: "
              + (f"1 for {HELD}, 0 for {FREE}" if timed_ok else "**WRONG**"), ""]
    held = next(ch for ch in o.checks if ch.port == HELD and ch.proto == "tcp")
    lines += [f"{HELD}/tcp: {len(held.portguard)} holder pid(s) in `{held.unit}` by both.", ""]
    for ch in bad:
        lines.append(f"- MISMATCH {ch.port}/{ch.proto}: {ch.problem} "
                     f"(portguard {list(ch.portguard)}, ss {list(ch.ss)})")
    if bad:
        lines.append("")
    for port, ph in o.phases.items():
        lines += [f"Stages of `portguard who {port}` in-process (median of fresh processes, "
                  "ms; wrappers add a little):", "", "| stage | ms |", "|---|---:|"]
        for k, v in ph.items():
            shown = f"{int(v)}" if k in COUNTS else "" if math.isnan(v) else f"{v:.2f}"
            lines.append(f"| {k.replace(' ', '&nbsp;', 2) if k.startswith(' ') else k} "
                         f"| {shown} |")
        lines.append("")
    return lines


def profile_md(o: Outcome) -> list[str]:
    lines = []
    for port, (total, rows) in o.imports.items():
        lines += [f"### `-X importtime` of `portguard who {port}` at {o.scale.name} "
                  f"(median run: {total:.1f} ms of imports)", "",
                  "Largest cumulative import times (ms; nesting as Python prints it):", "",
                  "```", f"{'cumul':>7} {'self':>7}  module"]
        for cum, own, name in sorted(rows, key=lambda r: -r[0])[:25]:
            lines.append(f"{cum:7.2f} {own:7.2f}  {name}")
        lines += ["```", ""]
    for port, text in o.profiles.items():
        lines += [f"### cProfile of `portguard who {port}` at {o.scale.name} (cumulative; "
                  "the profiler inflates Python-level time)", "", "```", text, "```", ""]
    return lines


NOTES_BEGIN, NOTES_END = "<!-- notes: kept across runs -->", "<!-- end of notes -->"


def kept_notes(path: Path | None) -> str:
    """The hand-written notes section of an earlier report at `path` (markers included)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        text = path.read_text() if path is not None else ""
        start, end = text.index(NOTES_BEGIN), text.index(NOTES_END) + len(NOTES_END)
        return text[start:end]
    return ""


OWN_HEADING = re.compile(r"## (Targets|Notes: |Profiles|[SML](-one-cgroup)?: )")


def foreign_sections(path: Path | None) -> str:
    """The `## ` sections of an earlier report that other scripts wrote (preflight_bench's,
    daemon_cost's): kept verbatim, after ours. Headings inside code blocks do not count."""
    with contextlib.suppress(OSError, TypeError):
        text = path.read_text() if path is not None else ""
        start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
        if start >= 0 and end > start:
            text = text[:start] + text[end + len(NOTES_END):]
        sections: list[list[str]] = []
        fenced = False
        for line in text.splitlines():
            if line.startswith("```"):
                fenced = not fenced
            if not fenced and line.startswith("## "):
                sections.append([line])
            elif sections:
                sections[-1].append(line)
        kept = ["\n".join(sec).rstrip() for sec in sections if not OWN_HEADING.match(sec[0])]
        return "\n\n".join(kept)
    return ""


def render(outcomes: Sequence[Outcome], argv: Sequence[str], started: dt.datetime,
           elapsed: float, compiled: str, *, code: str, notes: str = "",
           others: str = "") -> str:
    mach = machine()
    bad = sum(1 for o in outcomes for ch in o.checks if ch.problem)
    lines = ["# `portguard who` benchmark results", "",
             f"- date: {started.strftime('%Y-%m-%d %H:%M %Z')} ({elapsed:.0f} s in all)",
             f"- command: `{shlex.join(argv)}` (from {REPO})"]
    lines += [f"- {k}: {v}" for k, v in mach.items()]
    lines += [f"- portguard code: {code}"]
    lines += [
        f"- portguard: the console script `{PORTGUARD}`, as users run it; `portguard/` "
        f"byte-compiled first ({compiled}); the environment of every timed command is "
        f"`{' '.join(f'{k}={v}' for k, v in TIMED_ENV.items())}` "
        "(this machine sets PYTHONDONTWRITEBYTECODE=1: without the compile step every run "
        "would recompile portguard)",
        "- timing: inside the sandbox's namespaces (a runner there posix_spawns each command "
        "with stdio on /dev/null and waits for it with wait4, perf_counter around both); each "
        "round runs every command once in a seeded random order; before each command the "
        f"CPUs must be <= {BUSY:.0%} busy over {GAP * 1000:.0f} ms (waiting up to "
        f"{MAX_WAIT:g} s); medians, min, p90 (nearest rank)",
        "", "## Targets", "",
        "| target | measured (wall-clock medians) | verdict | same ratio by CPU time |",
        "|---|---|---|---|"]
    for target, measured, met, by_cpu in verdicts(outcomes):
        lines.append(f"| {target} | {measured} | {verdict_text(target, met, by_cpu)} "
                     f"| {by_cpu} |")
    lines += ["", "Checks (holder pids identical to `ss`, exit status of every timed run): "
              + ("all passed" if not bad else f"**{bad} FAILED**")
              + f" ({sum(ch.proto in ('tcp', 'udp') for o in outcomes for ch in o.checks)}"
              " port checks over "
              f"{len(outcomes)} scenario(s)).", ""]
    if notes:
        lines += [notes, ""]
    for o in outcomes:
        lines += scenario_md(o)
    profiled = [o for o in outcomes if o.imports or o.profiles]
    if profiled:
        lines += ["## Profiles", ""]
        for o in profiled:
            lines += profile_md(o)
    if others:
        lines += [others]
    return "\n".join(lines).rstrip() + "\n"


# --- driver ---------------------------------------------------------------------------

def run_scenario(sc: Scale, args: argparse.Namespace, log: Any) -> Outcome:
    runs, warmup, profile, wait = args.runs, args.warmup, args.profile, args.wait_quiet
    sb = Sandbox(boot_timeout=30)
    try:
        sb.start()
        log(f"[{sc.name}] sandbox up in {sb.boot_seconds:.1f} s; building "
            f"{sc.procs} processes in {sc.units} unit(s)")
        build_s = build(sb, sc)
        counts = count(sb, sc)
        log(f"[{sc.name}] built in {build_s:.1f} s: {counts['tcp']:,} TCP + {counts['tw']:,} "
            f"TIME_WAIT + {counts['udp']:,} UDP; {counts['load_processes']:,} load processes")
        if counts["short"]:
            log(f"[{sc.name}] WARNING: scale not reached: {'; '.join(counts['short'])}")
        checks = check_identity(sb, sc)
        for ch in checks:
            if ch.problem:
                log(f"[{sc.name}] MISMATCH {ch.port}/{ch.proto}: {ch.problem}")
        log(f"[{sc.name}] pid identity: {sum(not ch.problem for ch in checks)}/{len(checks)}"
            " ports agree with ss")
        busy = wait_quiet(wait, log, f"[{sc.name}]")
        before = loadavg()
        t0 = time.monotonic()
        command_wait = min(MAX_WAIT, wait, 0.2 if args.quick else MAX_WAIT)
        timings, waits = time_commands(sb, runs, warmup, command_wait)
        log(f"[{sc.name}] timed {len(timings)} commands x {runs} runs in "
            f"{time.monotonic() - t0:.0f} s")
        checks += timed_status_checks(timings)
        for ch in checks[-4:]:
            if ch.problem:
                log(f"[{sc.name}] MISMATCH {ch.port}/{ch.proto}: {ch.problem}")
        quiet = (f"CPUs {busy:.0%} busy just before timing; load average {before} before, "
                 f"{loadavg()} after; before the commands the runner waited "
                 f"{waits['waited_s']:.0f} s in all for the CPUs to be <= {BUSY:.0%} busy, "
                 f"and {waits['busy_starts']:.0f} of {waits['starts']:.0f} commands started "
                 f"on a busier machine after {command_wait:g} s")
        if waits["busy_starts"] > 0.1 * waits["starts"]:
            quiet += " -- **the machine was busy with other work: figures are inflated**"
        ph = {str(p): phases(sb, p, 3 if runs < 5 else 9) for p in (HELD, FREE)}
        imports: dict[str, tuple[float, list[tuple[float, float, str]]]] = {}
        profs: dict[str, str] = {}
        if profile and sc.name in ("L", "L1"):
            ports = (HELD, FREE) if sc.name == "L" else (HELD,)
            for p in ports:
                imports[str(p)] = importtime(sb, p, 5)
                profs[str(p)] = cprofile(sb, p)
            log(f"[{sc.name}] profiled")
        return Outcome(sc, build_s, counts, timings, checks, ph, imports, profs, quiet)
    finally:
        sb.stop()  # SIGKILLs the sandbox's PID 1: every process started inside goes with it


def compile_portguard() -> str:
    """Byte-compile portguard/ (PYTHONDONTWRITEBYTECODE is set here: runs would recompile)."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", "portguard"], cwd=REPO, check=True)
    tag = sys.implementation.cache_tag
    n = len(list((REPO / "portguard/__pycache__").glob(f"*.{tag}.pyc")))
    return f"`{Path(PYTHON).name} -m compileall -q portguard`: {n} .pyc files"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="S,M,L,L1",
                   help="comma-separated scenarios: S, M, L, and S1/M1/L1 (one cgroup); "
                        "default S,M,L,L1")
    p.add_argument("--runs", type=int, default=15, help="timed runs per command (default 15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: S only, 3 runs, 1 warm-up, no profile, report on stdout")
    p.add_argument("--output", type=Path, default=None,
                   help="where to write the report (default bench/RESULTS.md; with --quick: "
                        "stdout only)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip -X importtime and cProfile at L and L1")
    p.add_argument("--wait-quiet", type=float, default=120.0, metavar="SECONDS",
                   help="before timing a scenario, wait up to this long for other work on "
                        "the machine to settle, and before each timed command up to "
                        f"min(this, {MAX_WAIT:g}) s (default 120; 0: do not wait)")
    p.add_argument("--strict", action="store_true", help="exit 4 when a target is missed")
    args = p.parse_args(argv)
    if args.quick:
        args.scales, args.runs, args.warmup, args.profile = "S", 3, 1, False
        args.wait_quiet = min(args.wait_quiet, 1.0)  # and 0.2 s per command: < 30 s
    try:
        args.scenarios = [scenario(s.strip()) for s in args.scales.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if args.output is None and not args.quick:
        args.output = BENCH / "RESULTS.md"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"who_bench: {msg}", file=sys.stderr, flush=True)

    reason = Sandbox.unavailable_reason()
    missing = [t for t in TOOLS if not any(
        os.access(os.path.join(d, t), os.X_OK) for d in TIMED_ENV["PATH"].split(":"))]
    if reason or missing:
        log(f"cannot run: {reason or 'missing ' + ', '.join(missing)} "
            "(run scripts/bootstrap as root: it installs psmisc, lsof, systemd, iproute2)")
        return 3

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through run_scenario's finally

    signal.signal(signal.SIGTERM, on_term)
    started = dt.datetime.now().astimezone()
    t0 = time.monotonic()
    compiled = compile_portguard()
    code = code_state()  # what is measured: taken before, checked after
    outcomes = []
    try:
        for sc in args.scenarios:
            outcomes.append(run_scenario(sc, args, log))
    except SandboxError as e:
        log(f"failed: {e}")
        return 3
    text = render(outcomes, ["bench/who_bench.py", *argv], started, time.monotonic() - t0,
                  compiled, code=code if who_hash(code_state()) == who_hash(code) else
                  f"{code} -- **the who path changed during the run (now: {code_state()})**",
                  notes=kept_notes(args.output), others=foreign_sections(args.output))
    if args.output:
        args.output.write_text(text)
        log(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    for target, measured, met, by_cpu in verdicts(outcomes):
        log(f"target {verdict_text(target, met, by_cpu).replace('**', '')}: {target}: "
            f"{measured}; by CPU time {by_cpu}")
    bad = [(o.scale.name, ch) for o in outcomes for ch in o.checks if ch.problem]
    if bad:
        for name, ch in bad:
            log(f"MISMATCH [{name}] {ch.port}/{ch.proto}: {ch.problem}")
        log(f"{len(bad)} port(s) where portguard and ss disagree on the holders")
        return 1
    if args.strict and not all(met for _, _, met, _ in verdicts(outcomes)):
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
