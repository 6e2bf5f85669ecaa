"""Checking portguard against ss: the same holder pids for every sampled port.

A fast answer is worth nothing if it is wrong, so every scenario first compares
`portguard --json who P` with `ss -ltnp`/`ss -lunp`, and the timed runs' exit statuses.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import load
from benchlib import PORTGUARD
from benchlib.loaded_host import FREE, HELD, UDP_HELD, Scale, holders_expected, p_instance
from benchlib.timing import Timings
from support.sandbox import Sandbox

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


def timed_status_checks(timings: Timings) -> list[Check]:
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
