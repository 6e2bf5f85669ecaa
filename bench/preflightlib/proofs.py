"""Proof that the fast path neither imports pystemd nor contacts D-Bus, three ways.

Each proof comes with a control: the same method run on the slow path must see pystemd
and D-Bus, so a method that could never see them proves nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from benchlib import PORTGUARD
from benchlib.timing import TIMED_ENV, fmt, summary
from support.sandbox import Sandbox

from preflightlib.scene import NO_BUS, SLOW, SVC, SYSTEM_BUS, TWIN_UNIT, Cmd, time_commands
from preflightlib.stages import has_pystemd, importtime, module_names


class Proof(NamedTuple):
    what: str
    ok: bool
    evidence: str


_UNIX_PATH = re.compile(r'sun_path=(@?"[^"]*"|@[^,}]*)')
_CALL = re.compile(r"^\d+\s+(\w+)\((.*)$")


def strace_summary(text: str) -> dict[str, list[str]]:
    """socket families created; AF_UNIX paths connect()ed to or sent to."""
    out: dict[str, list[str]] = {"socket": [], "connect": [], "send": []}
    for line in text.splitlines():
        m = _CALL.match(line)
        if not m:
            continue
        call, rest = m.groups()
        if call == "socket":
            fam, kind = (f.strip().split("|")[0] for f in [*rest.split(","), ""][:2])
            out["socket"].append(f"{fam} {kind}".strip())
        elif call in ("connect", "sendto", "sendmsg"):
            p = _UNIX_PATH.search(rest)
            fam = re.search(r"sa_family=(AF_\w+)", rest)
            where = p.group(1).strip('"') if p else (fam.group(1) if fam else "(connected fd)")
            out["connect" if call == "connect" else "send"].append(where)
    return out


def strace(sb: Sandbox, unit: str) -> tuple[int, dict[str, list[str]]] | None:
    if sb.run(["sh", "-c", "command -v strace"]).returncode != 0:
        return None
    trace = f"/tmp/preflight-{unit}.strace"
    out = sb.run(["strace", "-f", "-qq", "-e", "trace=socket,connect,sendto,sendmsg",
                  "-o", trace, PORTGUARD, "preflight", unit], timeout=120, env=TIMED_ENV)
    return out.returncode, strace_summary(sb.read_file(trace))


def counted(items: Sequence[str]) -> str:
    seen: dict[str, int] = {}
    for i in items:
        seen[i] = seen.get(i, 0) + 1
    return ", ".join(f"`{k}`" + (f" x{v}" if v > 1 else "") for k, v in seen.items()) or "none"


def prove(sb: Sandbox, runs: int) -> tuple[list[Proof], dict[str, Any]]:
    """Evidence that the fast path neither imports pystemd nor contacts D-Bus, each with a
    control showing the same method does see the slow path do both."""
    proofs: list[Proof] = []
    extra: dict[str, Any] = {}

    fast = importtime(sb, SVC, 3)
    twin = importtime(sb, TWIN_UNIT, 3)
    slow = importtime(sb, SLOW, 3)
    extra["importtime"] = {SVC: fast, TWIN_UNIT: twin, SLOW: slow}
    for unit, (total, rows, rc, _rest) in ((SVC, fast), (TWIN_UNIT, twin)):
        names = module_names(rows)
        bad = has_pystemd(rows)
        covered = "portguard.commands.preflight_fast" in names  # the log covers the check
        ok = rc == 0 and not bad and covered
        proofs.append(Proof(
            f"`python -X importtime {Path(PORTGUARD).name} preflight {unit}`: no pystemd",
            ok, f"exit {rc}; {len(rows)} modules imported ({total:.1f} ms), "
            f"`portguard.commands.preflight_fast` among them: {covered}; "
            f"yaml/argparse: {'yaml' in names}/{'argparse' in names}; pystemd "
            f"modules: {', '.join(bad) or 'none'}; lxml: {'lxml' in names}"))
    slow_py = has_pystemd(slow[1])
    proofs.append(Proof(
        f"control: the same on the slow path (`preflight {SLOW}`) does list pystemd",
        slow[2] == 1 and bool(slow_py),
        f"exit {slow[2]}; pystemd modules: {len(slow_py)} ({', '.join(slow_py[:3])}, ...); "
        f"{len(slow[1])} modules, {slow[0]:.1f} ms of imports"))

    env = {**TIMED_ENV, "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS}
    fast_nb = sb.run([PORTGUARD, "preflight", SVC], env=env, timeout=60)
    # Timed against the same command with the bus in place, interleaved; both through
    # env(1), which sets the address for one of them, so both pay its exec.
    pair = [Cmd("no bus", ["/usr/bin/env", f"DBUS_SYSTEM_BUS_ADDRESS={NO_BUS}", PORTGUARD,
                           "preflight", SVC], "", 0),
            Cmd("bus", ["/usr/bin/env", PORTGUARD, "preflight", SVC], "", 0)]
    timed = time_commands(sb, pair, runs, 1, env=TIMED_ENV, seed=2)
    t_nb, t_b = summary(timed["no bus"]["wall"]), summary(timed["bus"]["wall"])
    rcs = sorted(set(timed["no bus"]["rc"]))
    said = fast_nb.stderr.strip()
    ok = (fast_nb.returncode == 0 and rcs == [0] and "all declared ports are free" in said
          and "D-Bus" not in said)
    proofs.append(Proof(
        f"`DBUS_SYSTEM_BUS_ADDRESS={NO_BUS}`: the fast path still exits 0 and says the "
        "ports are free, no slower than with the bus",
        ok, f"exit {fast_nb.returncode} (and {rcs} in {runs} timed runs); median "
        f"{fmt(t_nb['median'])} ms without a bus vs {fmt(t_b['median'])} ms with it "
        f"(interleaved, both via env(1)); stderr: `{said}`"))
    extra["no_bus_fast"] = (t_nb, t_b)
    slow_nb = sb.run([PORTGUARD, "preflight", SLOW], env=env, timeout=60)
    said = next((ln for ln in slow_nb.stderr.splitlines() if "D-Bus" in ln), "")
    proofs.append(Proof(
        "control: with the same address the slow path says D-Bus is unreachable",
        slow_nb.returncode == 1 and "unreachable" in said,
        f"exit {slow_nb.returncode}; stderr: `{said.strip() or slow_nb.stderr.strip()}`"))

    traced = strace(sb, SVC)
    traced_slow = strace(sb, SLOW)
    if traced is None or traced_slow is None:
        proofs.append(Proof("strace: not installed in the sandbox's view; skipped", True, ""))
    else:
        (rc, s), (rc_s, s_s) = traced, traced_slow
        dbus = [p for p in s["connect"] + s["send"] if "dbus" in p]
        proofs.append(Proof(
            f"`strace -f -e trace=socket,connect,sendto,sendmsg portguard preflight {SVC}`:"
            " no socket to the system bus", rc == 0 and not dbus,
            f"exit {rc}; sockets created: {counted(s['socket'])}; connect(): "
            f"{counted(s['connect'])}; sent to: {counted(s['send'])}"))
        proofs.append(Proof(
            f"control: the same strace of `preflight {SLOW}` connects to `{SYSTEM_BUS}`",
            rc_s == 1 and SYSTEM_BUS in s_s["connect"],
            f"exit {rc_s}; connect(): {counted(s_s['connect'])}"))
    return proofs, extra

