"""The bind() oracle (issue 12): portguard's verdicts and holders against the kernel's.

A zoo is 1-5 random sockets on one port in the sandbox's network namespace (bind_zoo:
TCP/UDP, IPv4/IPv6 addresses, IPV6_V6ONLY, SO_REUSEADDR, SO_REUSEPORT, listening,
bound-only, a server side's TIME_WAIT; each held by a process of its own, as root or
as nobody). For each of many random service port specs on it (address, protocol,
reuse_address) the truth is:

- the verdict: bind() (+ listen() for TCP) as the service does it, in the zoo itself;
- the holders: each of the zoo's sockets re-created *alone* in a scratch network
  namespace (a fresh port per question) and the same bind tried there. The pids named
  must be those of the live sockets that conflict alone (a TIME_WAIT socket has none).
  The kernel checks each bound socket against the new one pair by pair
  (`inet_bind_conflict`, `udp_lib_lport_inuse`), so the sockets that conflict alone are
  exactly those that stop it; `pairwise` (any of them conflicts) is checked against the
  verdict too, so the oracle's own premise is tested on every spec.

portguard is asked in-process (`portguard.cli.main`), as a person would: `--json
preflight --dry-run UNIT` with a config declaring the spec (random reuse_address,
policy fail), `--json who SPEC --[no-]reuse-address`, and one `--json status` per zoo.
Each is tallied: false free, false blocked, holder mismatches.

Run inside a sandbox by `run(sb, seed, zoos, specs)`; a zoo depends only on (seed, its
number): `run(..., zoos=range(17, 18))` replays one. This file is also the in-sandbox
driver (`python -m support.bind_oracle zoo SEED FIRST COUNT SPECS TAG`: JSON lines out),
and, without `zoo`, the long run of `make soak` (five seeds x 30 zoos x 15 specs; replay one
zoo with `PYTHONPATH=tests .venv/bin/python -m support.bind_oracle --seeds S --zoos Z
--count 1 -v`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from support.bind_zoo import NOBODY, ZOO_ADDRESSES, Desc, Intent, build, refused

HERE = Path(__file__).resolve().parent


PORTS = range(10000, 30000)  # zoo ports: below the ephemeral range, none used twice
PORTS_CLEAR = "718392d18d1d40e2a9e43cb92f8fe39d"  # MESSAGE_IDs of the journal contract
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
COMMANDS = ("preflight", "status", "who")


# --- drawing zoos and specs ---------------------------------------------------------------


def random_desc(rng: random.Random) -> Desc:
    proto = rng.choice(("tcp", "tcp", "udp"))
    kind = "bound" if proto == "udp" else rng.choice(("listen", "listen", "bound", "timewait"))
    addr = rng.choice(ZOO_ADDRESSES)
    v6only = rng.choice((None, False, True)) if addr in ("::", "::1") else None
    dest = ""
    if kind == "timewait":
        dest = {"0.0.0.0": rng.choice(("127.0.0.1", "127.0.0.2")),
                "::": "::1" if v6only else rng.choice(("::1", "127.0.0.1", "127.0.0.2")),
                "::ffff:127.0.0.1": "127.0.0.1"}.get(addr, addr)
    # No SO_REUSEPORT on a TIME_WAIT's listener: its connection could land in another
    # listener of the group (and a service bind never sets it, so the flag is moot).
    reuseport = rng.random() < 0.4 and kind != "timewait"
    return Desc(proto, kind, addr, v6only, rng.random() < 0.5, reuseport,
                rng.choice(("root", "nobody")), dest, rng.random() < 0.3)


def draw(seed: int, zoo: int, specs: int) -> tuple[list[Desc], list[Intent]]:
    rng = random.Random(f"{seed}/{zoo}")
    descs = [random_desc(rng) for _ in range(rng.randint(1, 5))]
    protos = sorted({d.proto for d in descs})
    intents = [Intent(rng.choice(protos) if rng.random() < 0.85 else rng.choice(("tcp", "udp")),
                      rng.choice((None, *ZOO_ADDRESSES)), rng.random() < 0.5)
               for _ in range(specs)]
    return descs, intents


# --- inside the sandbox ---------------------------------------------------------------


class Holders:
    """Each zoo socket made and held by a process of its own (its user after making it)."""

    def __init__(self) -> None:
        self._release_r, self._release_w = os.pipe()
        self.pids: list[int] = []

    def hold(self, d: Desc, port: int) -> tuple[int, bool]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the holder: make, say, wait for the release
            try:
                os.close(r)
                os.close(self._release_w)
                try:
                    kept, said = build(d, port), b"ok"
                except OSError:
                    kept, said = [], b"refused"
                if d.user == "nobody":
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                os.write(w, said)
                os.close(w)
                os.read(self._release_r, 1)
                del kept
            finally:
                os._exit(0)
        os.close(w)
        said = os.read(r, 16)
        os.close(r)
        self.pids.append(pid)
        return pid, said == b"ok"

    def release(self) -> None:
        os.close(self._release_w)
        os.close(self._release_r)
        for pid in self.pids:
            os.waitpid(pid, 0)


class Scratch:
    """bind_zoo.serve_scratch in a network namespace of its own, answers cached."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$1" scratch',
             sys.executable, str(HERE / "bind_zoo.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._cache: dict[tuple[Desc, Intent], bool] = {}

    def conflicts(self, d: Desc, intent: Intent) -> bool:
        key = (d, intent)
        if key not in self._cache:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps({"desc": d, "intent": intent}) + "\n")
            self._proc.stdin.flush()
            answer = json.loads(self._proc.stdout.readline())
            if "error" in answer:
                raise RuntimeError(f"scratch: {answer['error']}")
            self._cache[key] = answer["conflicts"]
        return self._cache[key]

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(10)


def _cli(*argv: str) -> dict[str, Any]:
    from portguard.cli import main
    out = io.StringIO()
    main(list(argv), stdout=out, stderr=io.StringIO())
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


def _blocking_pids(port_doc: dict[str, Any]) -> list[int]:
    return sorted({h["pid"] for h in port_doc["holders"] if h["blocks"] and h["pid"]})


def _used_ports() -> set[int]:
    """Every local port any socket of this network namespace holds (TIME_WAIT too)."""
    used = set()
    for name in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{name}") as table:
            used.update(int(line.split()[1].rsplit(":", 1)[1], 16)
                        for line in list(table)[1:])
    return used


def zoo_port(seed: int, zoo: int) -> int:
    """A port no socket has touched lately: a TIME_WAIT of an earlier zoo (60 s) on it
    would be a socket the zoo does not know of."""
    used = _used_ports()
    start = (seed * 7919 + zoo * 104729) % len(PORTS)
    return next(p for i in range(len(PORTS))
                if (p := PORTS[(start + i) % len(PORTS)]) not in used)


def run_zoo(seed: int, zoo: int, specs: int, tag: str, scratch: Scratch) -> list[dict[str, Any]]:
    port = zoo_port(seed, zoo)
    descs, intents = draw(seed, zoo, specs)
    holders = Holders()
    try:
        cands: list[tuple[Desc, int | None]] = []
        made = []
        for d in descs:
            pid, ok = holders.hold(d, port)
            made.append(ok)
            if ok:
                cands.extend((a, None if a.kind == "timewait" else pid) for a in d.alone())
        units = [f"orc-{tag}-{zoo}-{i}.service" for i in range(len(intents))]
        cfg = f"/etc/portguard/oracle-{tag}-{zoo}.yaml"
        Path(cfg).write_text("services:\n" + "".join(
            f"  {u}:\n    ports: [\"{i.spec(port)}\"]\n    policy: fail\n"
            f"    reuse_address: {'true' if i.reuse else 'false'}\n"
            for u, i in zip(units, intents, strict=True)))
        status = _cli("--config", cfg, "--json", "status")["services"]
        # `who PORT/PROTO` answers a port bind() shows empty without sock_diag: it must
        # still list a socket whenever the zoo made one of that protocol.
        listing = {}
        for proto in ("tcp", "udp"):
            doc = _cli("--json", "who", f"{port}/{proto}")["ports"][0]
            listing[proto] = [any(d.proto == proto for d, ok in zip(descs, made, strict=True)
                                  if ok), bool(doc["holders"] or doc.get("connections"))]
        rows = []
        for n, (intent, unit) in enumerate(zip(intents, units, strict=True)):
            code = refused(intent, port)
            if code not in (0, errno.EADDRINUSE):
                continue  # not a conflict question (e.g. no such address)
            alone = [scratch.conflicts(d, intent) for d, _ in cands]
            pre = _cli("--config", cfg, "--json", "preflight", "--dry-run", unit)["records"]
            flag = "--reuse-address" if intent.reuse else "--no-reuse-address"
            who = _cli("--json", "who", intent.spec(port), flag)["ports"][0]
            st = status[n]["ports"][0]
            rows.append({
                "zoo": zoo, "n": n, "spec": intent.spec(port), "reuse": intent.reuse,
                "zoo_sockets": [d._asdict() | {"made": ok} for d, ok in zip(descs, made,
                                                                           strict=True)],
                "blocked": code == errno.EADDRINUSE, "pairwise": any(alone),
                "pids": sorted({pid for (_, pid), c in zip(cands, alone, strict=True)
                                if c and pid}),
                "preflight": [not any(r["MESSAGE_ID"] == PORTS_CLEAR for r in pre),
                              sorted({int(r["PORTGUARD_HOLDER_PID"]) for r in pre
                                      if r["MESSAGE_ID"] == CONFLICT
                                      and r.get("PORTGUARD_HOLDER_PID")})],
                "status": [not st["free"], _blocking_pids(st["ports"][0])],
                "who": [not who["free"], _blocking_pids(who)],
                "listing": listing[intent.proto],
            })
        return rows
    finally:
        holders.release()


def _driver(seed: int, first: int, count: int, specs: int, tag: str) -> None:
    scratch = Scratch()
    try:
        for zoo in range(first, first + count):
            for row in run_zoo(seed, zoo, specs, tag, scratch):
                print(json.dumps(row), flush=True)
    finally:
        scratch.close()


# --- outside: run and tally -------------------------------------------------------------


class Tally(NamedTuple):
    specs: int
    counts: dict[str, Counter[str]]  # command -> false_free / false_blocked / holders
    premise: int  # specs where no socket conflicts alone yet bind() fails, or vice versa
    failures: list[str]  # one line per disagreement, to replay
    mix: Counter[str]  # what the specs covered: verdicts, and the zoo sockets made

    def clean(self, commands: Iterable[str] = COMMANDS) -> bool:
        return not self.premise and all(not sum(self.counts[c].values()) for c in commands)

    def summary(self) -> str:
        parts = [f"{c}: {self.counts[c]['false_free']} false free / "
                 f"{self.counts[c]['false_blocked']} false blocked / "
                 f"{self.counts[c]['holders']} holder mismatches" for c in COMMANDS]
        parts.append(f"who PORT: {self.counts['who']['listing']} listing mismatches")
        return f"{self.specs} specs; " + "; ".join(parts) + f"; premise broken {self.premise}"


def tally(rows: Iterable[dict[str, Any]], seed: int) -> Tally:
    counts = {c: Counter[str]() for c in COMMANDS}
    premise, failures, n, mix = 0, [], 0, Counter[str]()
    for row in rows:
        n += 1
        mix["blocked" if row["blocked"] else "free"] += 1
        mix.update(f"{d['proto']} {d['kind']} as {d['user']}"
                   for d in row["zoo_sockets"] if d["made"])
        mix["listing some" if row["listing"][0] else "listing none"] += 1
        premise += row["pairwise"] != row["blocked"]
        for cmd in COMMANDS:
            blocked, pids = row[cmd]
            wrong = [k for k, bad in (("false_free", row["blocked"] and not blocked),
                                      ("false_blocked", blocked and not row["blocked"]),
                                      ("holders", pids != row["pids"])) if bad]
            if cmd == "who" and row["listing"][0] != row["listing"][1]:
                wrong.append("listing")  # a socket made, yet `who PORT` shows none
            counts[cmd].update(wrong)
            if wrong:
                failures.append(f"seed {seed} zoo {row['zoo']} #{row['n']} {cmd} "
                                f"{'/'.join(wrong)}: {row['spec']} reuse={row['reuse']} "
                                f"kernel {'blocked' if row['blocked'] else 'free'} by "
                                f"{row['pids']}, said {'blocked' if blocked else 'free'} by "
                                f"{pids}; listing {row['listing']}; "
                                f"zoo {row['zoo_sockets']}")
    return Tally(n, counts, premise, failures, mix)


def run(sb: Any, seed: int, zoos: range, specs: int, tag: str, *,
        timeout: float = 1800.0) -> Tally:
    """Run zoos `zoos` of `seed` inside sandbox `sb`, `specs` specs each, and tally."""
    from support.sandbox import PYTHON, REPO
    done = sb.run([PYTHON, "-m", "support.bind_oracle", "zoo", str(seed), str(zoos.start),
                   str(len(zoos)), str(specs), tag],
                  env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                  timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"oracle driver failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return tally((json.loads(line) for line in done.stdout.splitlines() if line), seed)


def main(argv: list[str]) -> int:
    """The long run (`make soak`): several seeds in one sandbox, per seed and in total."""
    import argparse
    import time

    from support.sandbox import Sandbox
    ap = argparse.ArgumentParser(prog="python -m support.bind_oracle",
                                 description="the bind() oracle, long: random zoos and specs")
    ap.add_argument("--seeds", default="101,202,303,404,505",
                    help="comma-separated seeds (default: five)")
    ap.add_argument("--zoos", type=int, default=0, help="first zoo number")
    ap.add_argument("--count", type=int, default=30, help="zoos per seed")
    ap.add_argument("--specs", type=int, default=15, help="specs per zoo")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every disagreement")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    total = Tally(0, {c: Counter[str]() for c in COMMANDS}, 0, [], Counter[str]())
    started = time.monotonic()
    with Sandbox() as sb:
        for seed in seeds:
            t0 = time.monotonic()
            got = run(sb, seed, range(args.zoos, args.zoos + args.count), args.specs,
                      f"long{seed}", timeout=7200)
            print(f"seed {seed}: {got.summary()} ({time.monotonic() - t0:.0f} s)", flush=True)
            for line in got.failures if args.verbose else got.failures[:5]:
                print("  " + line)
            for cmd in COMMANDS:
                total.counts[cmd].update(got.counts[cmd])
            total.mix.update(got.mix)
            total.failures.extend(got.failures)
            total = total._replace(specs=total.specs + got.specs,
                                   premise=total.premise + got.premise)
    print(f"total: {total.summary()} ({time.monotonic() - started:.0f} s)")
    print("covered: " + ", ".join(f"{k} {v}" for k, v in sorted(total.mix.items())))
    return 0 if total.clean() else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["zoo"]:  # the in-sandbox driver
        _seed, _first, _count, _specs = (int(a) for a in sys.argv[2:6])
        _driver(_seed, _first, _count, _specs, sys.argv[6])
    else:
        sys.exit(main(sys.argv[1:]))
