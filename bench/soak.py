#!/usr/bin/env python3
"""Soak: randomized `portguard preflight` scenarios against a real systemd (issue 7, item 3).

One sandbox (tests/integration/sandbox.py: systemd 252 as PID 1 of private namespaces)
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

The oracle (written here from DESIGN.md and the README; nothing imported from portguard)
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

Exit status: 0 no violation; 1 violations (listed on stdout and in the report); 2 usage;
3 the sandbox cannot run; 4 scenarios could not be set up (harness errors).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import platform
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from sandbox import PYTHON, Sandbox, SandboxError  # noqa: E402

# -- the world inside the sandbox -----------------------------------------------------------

PY3 = "/usr/bin/python3"
HOLDER = "/run/soak/holder.py"
EXEC = (PY3, "-I", "-S", HOLDER)  # the services' ExecStart=: a stray runs exactly this
SIGDIR = "/run/soak/sig"  # SIGDIR/s<N>/<tag>.<pid>.log, <tag>.ready
ENVDIR = "/run/soak/env"  # one EnvironmentFile per unit, by full unit name
CFGDIR = "/etc/portguard/soak"
FIRST_PORT, PORT_SPAN = 10000, 22000  # scenario n: FIRST_PORT + 2 * (n % (PORT_SPAN // 2))
NOBODY = 65534
DEFAULT_SEED = 20261120

# MESSAGE_IDs: the contract (README "Journal"), spelled out rather than imported.
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
STOP_UNIT = "32df9301fc754f1285c3344dda6a731d"
SIGNAL = "b7876e4d57b34eef99981e9da9de1233"
KILL = "744a196b2567446ba506391298360d15"
WAIT_ID = "da25c984d0a14814a1be47f9d2384f7a"

# Kinds (DESIGN "Kinds and policies") and what the oracle says portguard does with each.
SELF, TWIN, STRAY, FOREIGN, LINGERING = "self", "twin", "stray", "foreign", "lingering"
ACT, WAIT, REFUSE, TOLERATE, NONE = "act", "wait", "refuse", "tolerate", "none"
MADE = ("foreign", "twin", "stray", "remnant", "lingering", "protected")
MADE_WEIGHTS = (22, 22, 22, 10, 12, 12)
POLICIES = ("stop", "wait", "fail", "warn")
POLICY_WEIGHTS = (40, 20, 20, 20)

HOLDER_CODE = r'''"""portguard soak holder: binds $SOAK_PORTS, logs each signal with its sender.

Env: SOAK_SIGDIR, SOAK_TAG, SOAK_PORTS (comma list), SOAK_PROTO (tcp|udp), SOAK_ADDR
(an address, or "any" = dual-stack [::]), SOAK_REUSE (1: SO_REUSEADDR), SOAK_WORKERS
(forked children sharing the sockets), SOAK_IGNORE (1: ignore stop signals),
SOAK_LEAVE_FILE (exit once this file exists). Log: SOAK_SIGDIR/TAG.PID.log, one line per
event: "start role=.. ppid=.. uid=..", "sig N from=PID code=C", "exit sig N|leave".
Ready: SOAK_SIGDIR/TAG.ready = "PID [WORKER...]", or "FAIL errno port" when bind() fails.
"""
import os
import signal
import socket
import time

E = os.environ
DIR, TAG = E["SOAK_SIGDIR"], E["SOAK_TAG"]
IGNORE = E.get("SOAK_IGNORE") == "1"
LEAVE = E.get("SOAK_LEAVE_FILE", "")
STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}
WATCH = STOPS | {signal.SIGCONT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
                 signal.SIGPIPE}
signal.pthread_sigmask(signal.SIG_BLOCK, WATCH)  # inherited by the workers


def log(line):
    fd = os.open(f"{DIR}/{TAG}.{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, f"{line} t={time.monotonic():.3f}\n".encode())
    finally:
        os.close(fd)


def ready(text):
    tmp = f"{DIR}/{TAG}.ready.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, f"{DIR}/{TAG}.ready")


def bind_all():
    socks = []
    udp = E.get("SOAK_PROTO") == "udp"
    addr = E.get("SOAK_ADDR", "any")
    host = "::" if addr == "any" else addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in [int(p) for p in E.get("SOAK_PORTS", "").split(",") if p]:
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        if E.get("SOAK_REUSE", "1") == "1":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(addr != "any"))
        try:
            s.bind((host, port))
            if not udp:
                s.listen(16)
        except OSError as exc:
            log(f"bindfail errno={exc.errno} port={port}")
            ready(f"FAIL {exc.errno} {port}")
            os._exit(98)
        socks.append(s)
    return socks


def serve(children):
    while True:
        if LEAVE:
            info = signal.sigtimedwait(WATCH, 0.03)
            if info is None:
                if os.path.exists(LEAVE):
                    for child in children:  # they leave too: go last, as a unit's main
                        os.waitpid(child, 0)
                    log("exit leave")
                    os._exit(0)
                continue
        else:
            info = signal.sigwaitinfo(WATCH)
        log(f"sig {info.si_signo} from={info.si_pid} code={info.si_code}")
        if info.si_signo in STOPS and not IGNORE:
            for child in children:  # a prefork parent passes a stop on, then leaves
                try:
                    os.kill(child, info.si_signo)
                except ProcessLookupError:
                    pass
            log(f"exit sig {info.si_signo}")
            os._exit(0)


SOCKS = bind_all()
log(f"start role=main ppid={os.getppid()} uid={os.getuid()}")
CHILDREN = []
for _ in range(int(E.get("SOAK_WORKERS", "0"))):
    pid = os.fork()
    if pid == 0:
        log(f"start role=worker ppid={os.getppid()} uid={os.getuid()}")
        serve([])
    CHILDREN.append(pid)
ready(" ".join(map(str, [os.getpid(), *CHILDREN])))
serve(CHILDREN)
'''

# Run inside with `python3 -I -S -c HELPER_CODE CMD ...`:
#   tw ADDR:PORT:REUSE ...   leave a TIME_WAIT socket on each (the server side closes
#                            first; REUSE 1/0: SO_REUSEADDR on the listener, which the
#                            TIME_WAIT socket keeps), and wait until /proc/net/tcp shows it
#   probe PROTO REUSE PORT.. bind() [::]:PORT dual-stack as the service would; print
#                            "PORT ok" or "PORT errno"
HELPER_CODE = r"""
import socket, sys, time
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "tw":
    want = set()
    for spec in args:
        addr, port, reuse = spec.rsplit(":", 2)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
        srv.bind((addr, int(port)))
        srv.listen()
        cli = socket.create_connection((addr, int(port)))
        conn, _ = srv.accept()
        conn.close()
        cli.recv(1)
        cli.close()
        srv.close()
        want.add("%04X" % int(port))
    deadline = time.monotonic() + 5
    while True:
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        have = {r[1].split(":")[1] for r in rows if r[3] == "06"}
        if want <= have:
            break
        if time.monotonic() > deadline:
            sys.exit("no TIME_WAIT on " + ",".join(sorted(want - have)))
        time.sleep(0.005)
elif cmd == "probe":
    kind = socket.SOCK_DGRAM if args[0] == "udp" else socket.SOCK_STREAM
    for port in map(int, args[2:]):
        s = socket.socket(socket.AF_INET6, kind)
        if args[1] == "1":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            s.bind(("::", port))
            print(port, "ok")
        except OSError as exc:
            print(port, exc.errno)
        s.close()
"""

SERVICE_UNIT = """\
[Unit]
Description=portguard soak service (lane {lane}) %i

[Service]
EnvironmentFile={envdir}/%n
Environment=PYTHONPATH={repo}
ExecStartPre=+/bin/sh -c '[ "$$SOAK_GUARD" = 1 ] || exit 0; exec {python} -m portguard \
--config "$$SOAK_CONFIG" preflight "$$1"' sh %n
ExecStart={exec}
KillMode=process
TimeoutStopSec=60
{user}"""

# Not an instance of the service's template: a foreign unit, or (when the config lists
# it in duplicates.units) a configured duplicate. $SOAK_ARGS: empty (the service's exact
# argv) or "foreign" (another program).
OTHER_UNIT = """\
[Unit]
Description=portguard soak other unit (lane {lane}) %i

[Service]
EnvironmentFile={envdir}/%n
ExecStart={exec} $SOAK_ARGS
TimeoutStopSec=60
"""


# -- scenarios --------------------------------------------------------------------------------


@dataclasses.dataclass
class HolderSpec:
    """One holder of a scenario: how it is made, what the oracle expects, what ran."""

    index: int
    made: str  # one of MADE
    variant: str
    ports: tuple[int, ...]  # the declared ports it holds (empty: an idle twin)
    addr: str  # its bind address (distinct per holder)
    uid: int  # the user it runs as
    workers: int = 0
    stubborn: bool = False  # ignores stop signals (TERM, INT, HUP, QUIT)
    tw_reuse: bool = False  # lingering: the TIME_WAIT's socket had SO_REUSEADDR
    # Exits by itself this long after portguard journals that it waits (deterministic:
    # portguard has seen it alive), or, when `racing`, after preflight starts: it may
    # then vanish while portguard inspects it, so its kind is anyone's guess.
    leave: float | None = None
    racing: bool = False
    kind: str = ""  # the oracle's kind
    protected: bool = False
    action: str = ""  # the oracle's action
    # set while running
    unit: str | None = None
    tag: str = ""
    pids: list[int] = dataclasses.field(default_factory=list)
    parent: dict[int, int] = dataclasses.field(default_factory=dict)
    starts: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.made != "lingering"

    def describe(self) -> str:
        bits = [f"h{self.index}:{self.made}/{self.variant}", f"kind={self.kind}",
                f"action={self.action}"]
        if self.protected:
            bits.append("protected")
        if self.ports:
            bits.append("ports=" + ",".join(map(str, self.ports)))
        if self.made == "lingering":
            bits.append(f"tw_reuse={int(self.tw_reuse)}")
        if self.stubborn:
            bits.append("stubborn")
        if self.workers:
            bits.append(f"workers={self.workers}")
        if self.leave is not None:
            bits.append(f"{'racing-' if self.racing else ''}leave={self.leave:.2f}s")
        if self.unit:
            bits.append(self.unit)
        if self.pids:
            bits.append("pids=" + ",".join(map(str, self.pids)))
        return " ".join(bits)


@dataclasses.dataclass
class Scenario:
    n: int
    seed: int
    proto: str
    ports: tuple[int, ...]
    user: int  # the service's User= (0: none)
    policy: str
    on_foreign: str
    timeout: float
    kill_after: float
    signal: str
    reuse: bool
    dups_listed: bool
    cmds_listed: bool
    dry_run: bool
    via_unit: bool  # preflight as the unit's ExecStartPre= (else run directly)
    holders: list[HolderSpec]

    def describe(self) -> str:
        mode = "dry-run" if self.dry_run else ("ExecStartPre" if self.via_unit else "direct")
        return (f"scenario {self.n} (seed {self.seed}): {mode}, policy={self.policy} "
                f"on_foreign={self.on_foreign} reuse_address={str(self.reuse).lower()} "
                f"timeout={self.timeout:.2f}s kill_after={self.kill_after}s "
                f"signal={self.signal} user={'nobody' if self.user else 'root'} "
                f"ports={','.join(map(str, self.ports))}/{self.proto} "
                f"dups_listed={int(self.dups_listed)} cmds_listed={int(self.cmds_listed)}")


def scenario_ports(n: int, count: int) -> tuple[int, ...]:
    base = FIRST_PORT + 2 * (n % (PORT_SPAN // 2))
    return tuple(base + i for i in range(count))


def expected_kind(sc: Scenario, h: HolderSpec) -> tuple[str, bool]:
    """(kind, protected) by DESIGN's rules, from how the holder was made."""
    if h.made == "remnant":
        return SELF, False  # in the unit's own cgroup
    if h.made == "lingering":
        return LINGERING, False
    if h.made == "protected":  # a twin instance, or a stray in a scope, listed in protected
        return (TWIN if h.variant == "twin" else STRAY), True
    if h.made == "twin":
        if h.variant == "dup":  # a twin only when duplicates.units names it
            return (TWIN if sc.dups_listed else FOREIGN), False
        return TWIN, False
    if h.made == "stray":
        if h.variant == "cmdglob":  # a stray only when duplicates.commands matches it
            return (STRAY if sc.cmds_listed else FOREIGN), False
        return STRAY, False
    return FOREIGN, False  # another unit; another program; the program as another user


def lingering_blocks(sc: Scenario, h: HolderSpec) -> bool:
    """A TIME_WAIT socket blocks bind() unless SO_REUSEADDR is set on both sides."""
    return not (sc.reuse and h.tw_reuse)


def decide(sc: Scenario, h: HolderSpec) -> str:
    """DESIGN's table: policy for self/twin/stray, on_foreign for foreign, lingering by
    SO_REUSEADDR; protected holders are refused when the policy would touch them."""
    if h.kind == LINGERING:
        return WAIT if lingering_blocks(sc, h) else NONE
    if h.kind == FOREIGN:
        return WAIT if sc.on_foreign == "wait" else REFUSE
    if sc.policy == "fail":
        return REFUSE
    if sc.policy == "warn":
        return TOLERATE
    if sc.policy == "wait":
        return WAIT
    return REFUSE if h.protected else ACT


@dataclasses.dataclass
class Expected:
    exit: int
    permitted: frozenset[int]  # holder indexes portguard may stop or signal
    cleared: bool  # after exit 0 the ports must be free (bind() succeeds)
    why: str
    also: frozenset[int] = frozenset()  # other exit statuses DESIGN leaves room for


def unprobeable(sc: Scenario, h: HolderSpec) -> bool:
    """A TIME_WAIT socket whose effect on a SO_REUSEADDR bind only bind() can tell (it
    blocks when its own socket lacked SO_REUSEADDR), while a live holder on the same
    port makes that bind() fail anyway: before acting, nobody can know what it does."""
    return h.kind == LINGERING and sc.reuse and any(
        o.live and h.ports[0] in o.ports for o in sc.holders)


def expect(sc: Scenario) -> Expected:
    """The oracle: what DESIGN.md says preflight does with these holders."""
    actions = {h.index: h.action for h in sc.holders}
    refused = [h for h in sc.holders if h.action == REFUSE]
    # a holder vanishing while portguard inspects it may be taken for anything, and a
    # refusal (1) is then the worst that may happen (never a signal to a living process)
    racing = frozenset({1}) if any(h.racing for h in sc.holders) else frozenset()
    if refused:  # the whole plan is refused before anything is touched
        return Expected(1, frozenset(), False,
                        "refused: " + ", ".join(f"h{h.index}" for h in refused))
    if sc.dry_run:
        return Expected(0, frozenset(), False, "dry run: nothing touched", racing)
    permitted = frozenset(i for i, a in actions.items() if a == ACT)
    stuck = [h for h in sc.holders if h.action == WAIT and h.leave is None]
    if stuck:  # waited for, and they stay (a TIME_WAIT lasts 60 s)
        why = "waits time out on " + ", ".join(f"h{h.index}" for h in stuck)
        # policy warn lets the service try anyway, and a TIME_WAIT next to a live holder
        # cannot be told to block before that: with holders tolerated, 0 is fine too
        tolerated_over = all(unprobeable(sc, h) for h in stuck) and any(
            o.action == TOLERATE for o in sc.holders)
        return Expected(75, permitted, False, why,
                        (frozenset({0}) if tolerated_over else frozenset()) | racing)
    tolerated = any(h.action == TOLERATE for h in sc.holders)
    return Expected(0, permitted, not tolerated,
                    "warn: the service tries anyway" if tolerated else "cleared", racing)


def _pick_made(rng: random.Random, count: int, proto: str, n_ports: int) -> list[str]:
    made: list[str] = []
    while len(made) < count:
        m = rng.choices(MADE, MADE_WEIGHTS)[0]
        if m == "remnant" and "remnant" in made:
            continue
        if m == "lingering" and (proto == "udp" or made.count("lingering") >= n_ports):
            continue
        made.append(m)
    return made


VARIANTS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    # foreign: a unit running the service's exact argv / another program; a process
    # outside any unit running another program; the exact argv as another user
    "foreign": (("unit-same", "unit-other", "proc", "user"), (25, 20, 30, 25)),
    # twin: another instance; a duplicates.units unit; an instance that is up but holds
    # nothing yet; a failed instance whose worker still holds the port
    "twin": (("instance", "dup", "idle", "remnant"), (50, 20, 15, 15)),
    # stray: started by hand (no unit); in a session-like scope; another argv that
    # duplicates.commands matches
    "stray": (("bare", "scope", "cmdglob"), (50, 30, 20)),
    "remnant": (("workers",), (1,)),
    "lingering": (("time-wait",), (1,)),
    "protected": (("twin", "scope"), (50, 50)),
}


def make_scenario(seed: int, n: int) -> Scenario:
    """Scenario `n` of `seed`: the same on every run and in any lane."""
    rng = random.Random(f"portguard-soak:{seed}:{n}")
    proto = "udp" if rng.random() < 0.1 else "tcp"
    ports = scenario_ports(n, 2 if rng.random() < 0.4 else 1)
    dry_run = rng.random() < 0.05
    sc = Scenario(
        n=n, seed=seed, proto=proto, ports=ports,
        user=NOBODY if rng.random() < 0.25 else 0,
        policy=rng.choices(POLICIES, POLICY_WEIGHTS)[0],
        on_foreign=rng.choice(("fail", "wait")),
        timeout=0.0,
        kill_after=rng.choice((0.2, 0.3, 0.5)),
        signal=rng.choice(("SIGTERM", "SIGTERM", "SIGTERM", "SIGINT", "SIGHUP")),
        reuse=rng.random() < 0.7,
        dups_listed=rng.random() < 0.7,
        cmds_listed=rng.random() < 0.5,
        dry_run=dry_run,
        via_unit=not dry_run and rng.random() < 0.2,
        holders=[],
    )
    made = _pick_made(rng, rng.randint(1, 4), proto, len(ports))
    free_for_tw = list(ports)
    rng.shuffle(free_for_tw)
    v6_used = False
    for i, m in enumerate(made):
        names, weights = VARIANTS[m]
        variant = rng.choices(names, weights)[0]
        h = HolderSpec(index=i, made=m, variant=variant, ports=(), addr=f"127.0.0.{10 + i}",
                       uid=sc.user)
        if m == "lingering":
            h.ports = (free_for_tw.pop(),)
            h.addr = f"127.0.0.{100 + i}"
            h.tw_reuse = rng.random() < 0.5
        elif not (m == "twin" and variant == "idle"):
            h.ports = tuple(p for p in ports if rng.random() < 0.7) or (rng.choice(ports),)
            if proto == "tcp" and not v6_used and rng.random() < 0.1:
                h.addr, v6_used = "::1", True
        if m == "foreign" and variant == "user":
            h.uid = 0 if sc.user else NOBODY
        elif m == "foreign" and variant == "proc":
            h.uid = rng.choice((0, NOBODY))
        broken = m == "remnant" or (m, variant) == ("twin", "remnant")
        if broken or (h.live and h.ports and rng.random() < 0.2):
            h.workers = rng.randint(1, 2)
        h.stubborn = h.live and rng.random() < 0.25
        sc.holders.append(h)
    for h in sc.holders:
        h.kind, h.protected = expected_kind(sc, h)
        h.action = decide(sc, h)
    base = rng.choice((0.6, 0.9, 1.2))
    for h in sc.holders:  # only a holder that is waited for may leave by itself
        # (not a remnant: its main process is gone, nobody is left to decide to leave)
        broken = h.made == "remnant" or (h.made, h.variant) == ("twin", "remnant")
        if h.action == WAIT and h.live and not broken and rng.random() < 0.5:
            h.racing = rng.random() < 0.2
            h.leave = round(rng.uniform(0.1 if h.racing else 0.0, 0.4 * base), 3)
    # a holder leaving after portguard starts waiting needs the wait to have begun in
    # time: half a second more (a preflight as ExecStartPre= under load starts late)
    calm = any(h.leave is not None and not h.racing for h in sc.holders)
    sc.timeout = round(base + budget(sc) + (0.5 if calm else 0.0), 2)
    return sc


def budget(sc: Scenario) -> float:
    """Time for the stops the oracle expects to complete inside `timeout` (so `stop` never
    runs into the deadline): kill_after per stubborn process, two per stubborn twin."""
    acting = [h for h in sc.holders if h.action == ACT]
    if not acting or any(h.action == REFUSE for h in sc.holders):
        return 0.0
    slow = 0
    for h in acting:
        if h.kind == TWIN:
            slow += 2 if (h.stubborn or h.variant == "remnant") else 1
        elif h.stubborn:
            slow += 1 + h.workers
    return sc.kill_after * slow + 1.5


# -- results ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    sc: Scenario
    lane: int
    expected: Expected
    exit: int | None = None
    seconds: float = 0.0
    run_seconds: float = 0.0
    error: str = ""  # the harness could not set the scenario up (not a portguard verdict)
    violations: list[str] = dataclasses.field(default_factory=list)
    observations: list[str] = dataclasses.field(default_factory=list)  # racing holders
    signalled: int = 0  # holder processes portguard signalled (pidfd)
    killed: int = 0  # holder processes that died of SIGKILL
    stopped_units: int = 0  # twin units systemd stopped for portguard
    stderr: str = ""
    subject: str = ""
    journal_checked: bool = False


class SetupError(Exception):
    pass


@dataclasses.dataclass
class ProcLog:
    """What one holder process logged."""

    pid: int
    signals: list[tuple[int, int]]  # (signo, sender pid)
    exit: str  # "" (no exit line), "sig N", "leave"
    alive: bool = True  # right after preflight (and the grace for permitted targets)


# -- running scenarios ------------------------------------------------------------------------


class Soak:
    """Everything shared by the lanes: the sandbox, the installed units, the results."""

    def __init__(self, sb: Sandbox, *, lanes: int, log: Callable[[str], None]) -> None:
        self.sb = sb
        self.lanes = lanes
        self.log = log
        self.root = f"/proc/{sb.pid}/root"
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []

    def host(self, path: str) -> str:
        """A path inside the sandbox, as the host reaches it."""
        return self.root + path

    def install(self) -> None:
        sb = self.sb
        sb.write_file(HOLDER, HOLDER_CODE)
        sb.run(["install", "-d", "-m", "0755", ENVDIR, CFGDIR], check=True)
        sb.run(["install", "-d", "-m", "1777", SIGDIR], check=True)
        for lane in range(self.lanes):
            for tpl, user in ((f"soak{lane}", ""), (f"soaku{lane}", "User=nobody\n")):
                sb.write_unit(f"{tpl}@.service", SERVICE_UNIT.format(
                    lane=lane, envdir=ENVDIR, repo=REPO, python=PYTHON,
                    exec=shlex.join(EXEC), user=user), reload=False)
            sb.write_unit(f"soakx{lane}@.service", OTHER_UNIT.format(
                lane=lane, envdir=ENVDIR, exec=shlex.join(EXEC)), reload=False)
        sb.systemctl("daemon-reload", check=True)
        # byte-compile portguard once, so no preflight pays for it (the venv may set
        # PYTHONDONTWRITEBYTECODE for its users; this run writes the cache)
        sb.run([PYTHON, "-m", "compileall", "-q", str(REPO / "portguard")])

    def record(self, out: Outcome) -> None:
        with self.lock:
            self.outcomes.append(out)


class Lane:
    """Runs scenarios one after another with its own templates (soak<L>@, soaku<L>@,
    soakx<L>@), so lanes never see each other's units as twins."""

    def __init__(self, soak: Soak, lane: int) -> None:
        self.soak = soak
        self.sb = soak.sb
        self.lane = lane
        self.pending: list[tuple[Outcome, dict[int, ProcLog]]] = []

    # -- names ---------------------------------------------------------------------------

    def template(self, sc: Scenario) -> str:
        return f"soak{'u' if sc.user else ''}{self.lane}"

    def subject(self, sc: Scenario) -> str:
        return f"{self.template(sc)}@s{sc.n}.service"

    def unit_of(self, sc: Scenario, h: HolderSpec) -> str | None:
        tpl, n, i = self.template(sc), sc.n, h.index
        if h.made == "twin" and h.variant != "dup":
            letter = {"instance": "t", "idle": "i", "remnant": "r"}[h.variant]
            return f"{tpl}@s{n}-{letter}{i}.service"
        if h.made == "twin":
            return f"soakx{self.lane}@s{n}-dup{i}.service"
        if h.made == "protected" and h.variant == "twin":
            return f"{tpl}@s{n}-p{i}.service"
        if h.made == "protected":
            return f"soakp-s{n}-{i}.scope"
        if h.made == "stray" and h.variant == "scope":
            return f"soaks-s{n}-{i}.scope"
        if h.made == "foreign" and h.variant.startswith("unit"):
            return f"soakx{self.lane}@s{n}-f{i}.service"
        if h.made == "remnant":
            return self.subject(sc)
        return None

    def config_text(self, sc: Scenario) -> str:
        tpl = self.template(sc)
        lines = [
            "protected:",
            f'  - "{tpl}@s{sc.n}-p*.service"',
            f'  - "soakp-s{sc.n}-*.scope"',
            "services:",
            f"  {tpl}@.service:",
            "    ports: [" + ", ".join(
                f'"{p}/udp"' if sc.proto == "udp" else f'"{p}"' for p in sc.ports) + "]",
            f"    policy: {sc.policy}",
            f"    on_foreign: {sc.on_foreign}",
            f"    timeout: {round(sc.timeout * 1000)}ms",
            f"    kill_after: {round(sc.kill_after * 1000)}ms",
            f"    signal: {sc.signal}",
            f"    reuse_address: {str(sc.reuse).lower()}",
        ]
        if sc.dups_listed or sc.cmds_listed:
            lines.append("    duplicates:")
        if sc.dups_listed:
            lines.append(f'      units: ["soakx{self.lane}@s{sc.n}-dup*.service"]')
        if sc.cmds_listed:
            lines.append('      commands: ["*/holder.py cmdcopy"]')
        return "\n".join(lines) + "\n"

    # -- one scenario ----------------------------------------------------------------------

    def run(self, sc: Scenario) -> Outcome:
        out = Outcome(sc, self.lane, expect(sc), subject=self.subject(sc))
        t0 = time.monotonic()
        try:
            self.setup(sc)
            self.execute(sc, out)
            logs = self.check(sc, out)
            self.pending.append((out, logs))
        except (SetupError, SandboxError) as exc:
            out.error = str(exc)
        except subprocess.TimeoutExpired as exc:
            out.error = f"timed out: {shlex.join(map(str, exc.cmd))}"
        finally:
            try:
                self.cleanup(sc)
            except (SetupError, SandboxError, subprocess.TimeoutExpired) as exc:
                out.error = out.error or f"cleanup: {exc}"
        out.seconds = time.monotonic() - t0
        if len(self.pending) >= 10:
            self.flush_journal()
        return out

    def env_file(self, unit: str, env: dict[str, str]) -> None:
        self.sb.write_file(f"{ENVDIR}/{unit}", "".join(f"{k}={v}\n" for k, v in env.items()))

    def holder_env(self, sc: Scenario, h: HolderSpec, tag: str) -> dict[str, str]:
        env = {"SOAK_SIGDIR": f"{SIGDIR}/s{sc.n}", "SOAK_TAG": tag,
               "SOAK_PORTS": ",".join(map(str, h.ports)), "SOAK_PROTO": sc.proto,
               "SOAK_ADDR": h.addr, "SOAK_REUSE": "0" if sc.proto == "udp" else "1",
               "SOAK_WORKERS": str(h.workers), "SOAK_IGNORE": str(int(h.stubborn))}
        if h.leave is not None:
            env["SOAK_LEAVE_FILE"] = f"{SIGDIR}/s{sc.n}/{tag}.leave"
        return env

    def setup(self, sc: Scenario) -> None:
        for h in sc.holders:
            h.unit, h.tag = self.unit_of(sc, h), f"h{h.index}"
        self.require_empty(sc)
        sigdir = self.soak.host(f"{SIGDIR}/s{sc.n}")
        os.makedirs(sigdir, exist_ok=True)
        os.chmod(sigdir, 0o1777)
        self.sb.write_file(f"{CFGDIR}/s{sc.n}.yaml", self.config_text(sc), mode=0o644)
        self.make_lingering(sc)
        self.make_broken(sc)
        starting = self.start_holding_units(sc)
        if sc.via_unit:  # the service's own run after its ExecStartPre=
            subject = HolderSpec(index=-1, made="subject", variant="", ports=sc.ports,
                                 addr="any", uid=sc.user)
            env = self.holder_env(sc, subject, "subject")
            env.update(SOAK_GUARD="1", SOAK_CONFIG=f"{CFGDIR}/s{sc.n}.yaml",
                       SOAK_REUSE=str(int(sc.reuse)))
            self.env_file(self.subject(sc), env)
        spawned = self.spawn_processes(sc)
        self.wait_ready(sc, [*starting, *spawned])

    def make_lingering(self, sc: Scenario) -> None:
        """TIME_WAIT sockets, first (before anything listens on the port)."""
        tws = [f"{h.addr}:{h.ports[0]}:{int(h.tw_reuse)}" for h in sc.holders
               if h.made == "lingering"]
        if tws:
            made = self.sb.run([PY3, "-I", "-S", "-c", HELPER_CODE, "tw", *tws], timeout=15)
            if made.returncode != 0:
                raise SetupError(f"TIME_WAIT: {made.stderr.strip()}")

    def make_broken(self, sc: Scenario) -> None:
        """Holders made by starting a unit and SIGKILLing its main process (KillMode=
        process): a remnant of the service itself, failed twins whose workers hold on."""
        broken = [h for h in sc.holders
                  if h.made == "remnant" or (h.made, h.variant) == ("twin", "remnant")]
        if not broken:
            return
        units = [h.unit for h in broken if h.unit]
        for h in broken:
            self.env_file(units[broken.index(h)], self.holder_env(sc, h, h.tag))
        self.start_units(units)
        self.wait_ready(sc, broken)
        self.sb.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", *units, check=True)
        for h in broken:
            self.wait_gone(h, h.pids[0])
            del h.pids[0]
            h.parent = {}
        self.wait_states(units, ("failed", "inactive"))

    def start_holding_units(self, sc: Scenario) -> list[HolderSpec]:
        starting = [h for h in sc.holders if h.unit and h.unit.endswith(".service")
                    and h.made != "remnant" and (h.made, h.variant) != ("twin", "remnant")]
        for h in starting:
            assert h.unit is not None
            env = self.holder_env(sc, h, h.tag)
            if h.made == "foreign":
                env["SOAK_ARGS"] = "foreign" if h.variant == "unit-other" else ""
            self.env_file(h.unit, env)
        if starting:
            self.start_units([h.unit for h in starting if h.unit])
        return starting

    def spawn_processes(self, sc: Scenario) -> list[HolderSpec]:
        """Processes outside any service: by hand, in a scope, as another user."""
        spawned = []
        for h in sc.holders:
            if h.made == "lingering" or (h.unit and h.unit.endswith(".service")):
                continue
            argv = list(EXEC)
            if (h.made, h.variant) == ("foreign", "proc"):
                argv.append("foreign")
            elif (h.made, h.variant) == ("stray", "cmdglob"):
                argv.append("cmdcopy")
            if h.uid:
                argv = ["setpriv", f"--reuid={h.uid}", f"--regid={h.uid}", "--clear-groups",
                        "--", *argv]
            if h.unit:  # a scope: systemd-run execs the command in it (same pid)
                argv = ["systemd-run", "--quiet", "--scope", f"--unit={h.unit}", "--", *argv]
            self.sb.spawn(argv, env=self.holder_env(sc, h, h.tag),
                          log=f"{SIGDIR}/s{sc.n}/{h.tag}.out", wait_exec=False)
            spawned.append(h)
        return spawned

    def require_empty(self, sc: Scenario) -> None:
        """The lane's templates must have no process left (a leftover would be a twin)."""
        for tpl in (f"soak{self.lane}", f"soaku{self.lane}", f"soakx{self.lane}"):
            events = self.soak.host(f"/sys/fs/cgroup/system.slice/system-{tpl}.slice/"
                                    "cgroup.events")
            with contextlib.suppress(FileNotFoundError):
                if "populated 1" in Path(events).read_text():
                    self.sb.systemctl("kill", "--signal=SIGKILL", f"{tpl}@*.service")
                    self.sb.systemctl("stop", f"{tpl}@*.service")
                    raise SetupError(f"processes left in {tpl}@ units before scenario {sc.n}")

    def start_units(self, units: Sequence[str]) -> None:
        started = self.sb.systemctl("start", *units, timeout=30)
        if started.returncode != 0:
            raise SetupError(f"systemctl start {' '.join(units)}: {started.stderr.strip()}")

    def wait_states(self, units: Sequence[str], states: Iterable[str]) -> None:
        wanted = set(states)

        def reached() -> bool:
            shown = self.sb.systemctl("show", "-P", "ActiveState", *units).stdout.split()
            return len(shown) == len(units) and set(shown) <= wanted

        try:
            self.sb.wait_for(reached, 10, f"{' '.join(units)} to be {'|'.join(wanted)}",
                             interval=0.01)
        except SandboxError as exc:
            raise SetupError(str(exc)) from None

    def wait_ready(self, sc: Scenario, holders: Sequence[HolderSpec]) -> None:
        deadline = time.monotonic() + 15
        for h in holders:
            path = self.soak.host(f"{SIGDIR}/s{sc.n}/{h.tag}.ready")
            while True:
                try:
                    text = Path(path).read_text()
                    break
                except FileNotFoundError:
                    if time.monotonic() > deadline:
                        raise SetupError(f"h{h.index} ({h.made}/{h.variant}) never became "
                                         "ready") from None
                    time.sleep(0.005)
            if text.startswith("FAIL"):
                raise SetupError(f"h{h.index} ({h.made}/{h.variant}) could not bind: {text}")
            h.pids = [int(p) for p in text.split()]
            h.parent = {w: h.pids[0] for w in h.pids[1:]}
            for pid in h.pids:
                h.starts[pid] = self.start_time(pid) or 0

    def start_time(self, pid: int) -> int | None:
        """Start time of an inside pid (None: gone or a zombie)."""
        try:
            raw = Path(self.soak.host(f"/proc/{pid}/stat")).read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = raw.rpartition(")")[2].split()
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])

    def alive(self, h: HolderSpec, pid: int) -> bool:
        started = self.start_time(pid)
        return started is not None and started == h.starts.get(pid)

    def wait_gone(self, h: HolderSpec, pid: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive(h, pid):
            if time.monotonic() > deadline:
                raise SetupError(f"pid {pid} of h{h.index} did not die")
            time.sleep(0.005)

    def execute(self, sc: Scenario, out: Outcome) -> None:
        leaver = Leaver(self, sc, out.subject)
        t0 = time.monotonic()
        leaver.start()
        limit = sc.timeout + 30
        try:
            self.launch(sc, out, limit)
        except subprocess.TimeoutExpired:
            out.exit = None
            out.violations.append(f"preflight did not return within {limit:.0f} s "
                                  f"(timeout {sc.timeout:.2f} s): a wait without a bound")
        finally:
            leaver.finish()  # whoever has not left by now stays for the checks
        out.run_seconds = time.monotonic() - t0

    def launch(self, sc: Scenario, out: Outcome, limit: float) -> None:
        if sc.via_unit:
            started = self.sb.systemctl("start", out.subject, timeout=limit)
            out.stderr = started.stderr
            shown = self.sb.systemctl("show", "-P", "ExecStartPre", out.subject).stdout
            m = re.search(r"code=(\w+) ; status=(\d+)", shown)
            if not m:
                raise SetupError(f"no ExecStartPre status in {shown!r}")
            out.exit = int(m.group(2)) if m.group(1) == "exited" else -int(m.group(2))
        else:
            args = ["--config", f"{CFGDIR}/s{sc.n}.yaml", "preflight", out.subject]
            done = self.sb.portguard(*args, *(["--dry-run"] if sc.dry_run else []),
                                     timeout=limit)
            out.exit, out.stderr = done.returncode, done.stderr

    # -- checks ------------------------------------------------------------------------------

    def read_log(self, sc: Scenario, h: HolderSpec, pid: int) -> ProcLog:
        path = self.soak.host(f"{SIGDIR}/s{sc.n}/{h.tag}.{pid}.log")
        signals, exit_ = [], ""
        with contextlib.suppress(FileNotFoundError):
            for line in Path(path).read_text().splitlines():
                words = line.split()
                if words[0] == "sig":
                    signals.append((int(words[1]), int(words[2].split("=")[1])))
                elif words[0] == "exit":
                    exit_ = " ".join(words[1:-1])
        return ProcLog(pid, signals, exit_)

    def check(self, sc: Scenario, out: Outcome) -> dict[int, ProcLog]:
        """Process-level checks, right after preflight: signals, deaths, exit, ports."""
        exp, v = out.expected, out.violations
        if out.exit != exp.exit and out.exit not in exp.also:
            v.append(f"exit status {out.exit}, the oracle says {exp.exit} ({exp.why})")
        all_logs: dict[int, ProcLog] = {}
        grace_until = time.monotonic() + 1.0
        for h in sc.holders:
            if not h.live:
                continue
            permitted = h.index in exp.permitted
            if h.unit and h.unit.endswith(".service") and h.made != "remnant":
                self.check_unit(sc, out, h, permitted)
            for pid in h.pids:
                # liveness first, then the log: a process logs its exit before it dies
                alive = self.alive_after(out, h, pid, permitted, grace_until)
                log = all_logs[pid] = self.read_log(sc, h, pid)
                log.alive = alive
                self.check_process(out, h, log, permitted=permitted)
        if out.exit == 0 and exp.exit == 0 and exp.cleared:  # (not for `also`)
            self.check_cleared(sc, out)
        return all_logs

    def alive_after(self, out: Outcome, h: HolderSpec, pid: int, permitted: bool,
                    grace_until: float) -> bool:
        """Alive now; a permitted target gets until `grace_until` to be gone."""
        if permitted and out.exit in (0, 75) and out.expected.exit in (0, 75):
            while self.alive(h, pid) and time.monotonic() < grace_until:
                time.sleep(0.01)
        return self.alive(h, pid)

    def check_process(self, out: Outcome, h: HolderSpec, log: ProcLog, *,
                      permitted: bool) -> None:
        pid, alive = log.pid, log.alive
        v, who = out.violations, f"h{h.index} pid {pid} ({h.kind}, {h.made}/{h.variant})"
        from_portguard = [s for s, sender in log.signals
                          if sender not in (1, h.parent.get(pid, -1))]
        from_systemd = [s for s, sender in log.signals if sender == 1]
        allowed = {signal.Signals[sc_signal(out)], signal.SIGCONT}
        if from_portguard and not set(from_portguard) <= allowed:
            v.append(f"{who} got {sigs(from_portguard)} from portguard; the config says "
                     f"{sc_signal(out)} (then SIGCONT, SIGKILL)")
        if from_portguard:
            out.signalled += 1
            if not permitted:
                v.append(f"{who} was signalled by portguard ({sigs(from_portguard)}) but "
                         "is not a permitted target")
            elif h.kind == TWIN:
                v.append(f"{who} is a twin but was signalled directly "
                         f"({sigs(from_portguard)}), not through systemd")
        if from_systemd and not (permitted and h.kind == TWIN):
            v.append(f"{who} got {sigs(from_systemd)} from systemd but its unit was not "
                     "to be stopped")
        if permitted and out.exit in (0, 75) and out.expected.exit in (0, 75) and alive:
            v.append(f"{who} is a permitted target but still alive after exit "
                     f"{out.exit} (its conflict was not cleared)")
        if not alive and not log.exit:
            if permitted:
                out.killed += 1
            else:
                v.append(f"{who} died without an exit of its own (SIGKILL?) but is not a "
                         "permitted target")
        if not permitted and not alive and log.exit and log.exit != "leave":
            v.append(f"{who} exited on {log.exit} but is not a permitted target")
        if not permitted and not alive and log.exit == "leave" and h.leave is None:
            v.append(f"{who} left by itself although it never was to")  # harness bug

    def check_unit(self, sc: Scenario, out: Outcome, h: HolderSpec, permitted: bool) -> None:
        assert h.unit is not None
        state = self.sb.systemctl("show", "-P", "ActiveState", h.unit).stdout.strip()
        logs = {pid: self.read_log(sc, h, pid) for pid in h.pids}  # after the state
        who = f"h{h.index} {h.unit} ({h.kind}, {h.made}/{h.variant})"
        if any(sender == 1 for log in logs.values() for _, sender in log.signals):
            out.stopped_units += 1
        left = h.leave is not None and any(log.exit == "leave" for log in logs.values())
        if not permitted and not left and h.variant != "remnant" and state != "active":
            out.violations.append(f"{who} is {state}, but portguard was not to stop it")
        if permitted and out.exit in (0, 75) and state in ("active", "activating",
                                                            "deactivating"):
            out.violations.append(f"{who} is still {state} after exit {out.exit}")

    def check_cleared(self, sc: Scenario, out: Outcome) -> None:
        if sc.via_unit:  # the service itself binds its ports: the real proof
            path = self.soak.host(f"{SIGDIR}/s{sc.n}/subject.ready")
            deadline = time.monotonic() + 10
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            text = Path(path).read_text() if os.path.exists(path) else "never ready"
            if not text[:1].isdigit():
                out.violations.append(f"exit 0 but {out.subject} could not bind its ports: "
                                      f"{text.strip()}")
            return
        probe = self.sb.run([PY3, "-I", "-S", "-c", HELPER_CODE, "probe", sc.proto,
                             str(int(sc.reuse)), *map(str, sc.ports)])
        bad = [line for line in probe.stdout.splitlines() if not line.endswith(" ok")]
        if bad or probe.returncode != 0:
            held = self.sb.run(["ss", "-Htuanp"]).stdout
            mine = [line for line in held.splitlines()
                    if any(f":{p} " in line for p in sc.ports)]
            out.violations.append(f"exit 0 but bind() still fails on {', '.join(bad)} "
                                  f"{probe.stderr.strip()} (ss: {mine})")

    # -- the journal ---------------------------------------------------------------------------

    def flush_journal(self) -> None:
        """Check the journal of the scenarios run since the last flush, in one query."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        self.sb.run(["journalctl", "--sync"], timeout=30)
        records = self.sb.journal("SYSLOG_IDENTIFIER=portguard",
                                  *[f"PORTGUARD_UNIT={o.subject}" for o, _ in pending])
        by_unit: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in records:
            by_unit[str(r.get("PORTGUARD_UNIT"))].append(r)
        for out, logs in pending:
            out.violations += check_journal(out, by_unit[out.subject], logs)
            out.journal_checked = True

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self, sc: Scenario) -> None:
        sb = self.sb
        units = sorted({self.subject(sc), *(h.unit for h in sc.holders if h.unit)})
        sb.run(["/bin/sh", "-c", "systemctl kill --signal=SIGKILL -- \"$@\" 2>/dev/null; "
                "systemctl stop -- \"$@\" 2>/dev/null; "
                "systemctl reset-failed -- \"$@\" 2>/dev/null; true", "sh", *units],
               timeout=60)
        doomed = [(h, pid) for h in sc.holders for pid in h.pids if self.alive(h, pid)]
        if doomed:  # by pid, each checked against the start time it had when it began
            sb.run(["kill", "-KILL", *(str(pid) for _, pid in doomed)])
        for h, pid in doomed:
            self.wait_gone(h, pid)


class Leaver:
    """Tells holders to leave (their SOAK_LEAVE_FILE): racing ones `leave` s after
    preflight starts, the others `leave` s after portguard's "waiting up to" record."""

    def __init__(self, lane: Lane, sc: Scenario, subject: str) -> None:
        self.lane, self.sc, self.subject = lane, sc, subject
        self.holders = [h for h in sc.holders if h.leave is not None]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True,
                                       name=f"soak-leave-s{sc.n}")

    def start(self) -> None:
        if self.holders:
            self.thread.start()

    def finish(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def _waiting(self) -> bool:
        records = self.lane.sb.journal(f"PORTGUARD_UNIT={self.subject}",
                                       f"MESSAGE_ID={WAIT_ID}")
        return any(r.get("PORTGUARD_RESULT") == "waiting" for r in records)

    def _main(self) -> None:
        t0 = time.monotonic()
        waiting_since: float | None = None
        todo = list(self.holders)
        while todo and not self.stopped.is_set():
            now = time.monotonic()
            if waiting_since is None and any(not h.racing for h in todo) \
                    and now - t0 > 0.1 and self._waiting():
                waiting_since = time.monotonic()
            for h in list(todo):
                assert h.leave is not None
                due = t0 + h.leave if h.racing else None
                if not h.racing and waiting_since is not None:
                    # after the wait began, and well before the deadline whatever happens
                    due = max(waiting_since, min(waiting_since + h.leave,
                                                 t0 + 0.6 * self.sc.timeout))
                if due is not None and now >= due:
                    path = self.lane.soak.host(f"{SIGDIR}/s{self.sc.n}/{h.tag}.leave")
                    Path(path).write_text("go\n")
                    todo.remove(h)
            self.stopped.wait(0.02)


def sc_signal(out: Outcome) -> str:
    return out.sc.signal


def sigs(signos: Iterable[int]) -> str:
    names = []
    for s in signos:
        try:
            names.append(signal.Signals(s).name)
        except ValueError:
            names.append(str(s))
    return "+".join(names)


def _find_holder(sc: Scenario, r: dict[str, Any]) -> HolderSpec | None:
    pid, unit = r.get("PORTGUARD_HOLDER_PID"), r.get("PORTGUARD_HOLDER_UNIT")
    for h in sc.holders:
        if pid and pid.isdigit() and int(pid) in h.pids:
            return h
    for h in sc.holders:
        if unit and h.unit == unit and h.made != "remnant":
            return h
    if r.get("PORTGUARD_HOLDER_KIND") == LINGERING:
        for h in sc.holders:
            if h.made == "lingering" and str(h.ports[0]) == r.get("PORTGUARD_PORT"):
                return h
    return None


def _vanished(sc: Scenario, r: dict[str, Any]) -> bool:
    """A "holder not found" record on a port a leaving holder held."""
    return "holder not found" in str(r.get("MESSAGE")) and any(
        h.racing and str(r.get("PORTGUARD_PORT")) in map(str, h.ports) for h in sc.holders)


PLANNED = {ACT: ("stop", "signal"), WAIT: ("wait",), REFUSE: ("refuse",),
           TOLERATE: ("none",), NONE: ("none",)}


def check_journal(out: Outcome, records: list[dict[str, Any]],
                  logs: dict[int, ProcLog]) -> list[str]:
    """The journal must tell the same story as the processes and the oracle."""
    sc, exp, v = out.sc, out.expected, []
    permitted = [h for h in sc.holders if h.index in exp.permitted]
    ok_pids = {p for h in permitted if h.kind in (SELF, STRAY) for p in h.pids}
    ok_units = {h.unit for h in permitted if h.kind == TWIN}
    seen: set[int] = set()
    stopping = {r.get("PORTGUARD_HOLDER_UNIT") for r in records
                if r.get("MESSAGE_ID") == CONFLICT and r.get("PORTGUARD_ACTION") == "stop"}
    for r in records:
        mid, kind = r.get("MESSAGE_ID"), r.get("PORTGUARD_HOLDER_KIND")
        pid, unit = r.get("PORTGUARD_HOLDER_PID"), r.get("PORTGUARD_HOLDER_UNIT")
        action = r.get("PORTGUARD_ACTION")
        if mid == CONFLICT and kind:
            h = _find_holder(sc, r)
            if h is None and _vanished(sc, r):
                out.observations.append(f"a racing holder vanished mid-scan: {r.get('MESSAGE')}")
                continue  # a holder that left while portguard looked: its socket, no owner
            if h is None:
                v.append(f"journal: a {kind} holder the soak did not make: pid {pid} unit "
                         f"{unit}: {r.get('MESSAGE')}")
                continue
            seen.add(h.index)
            want = PLANNED[h.action]
            if unprobeable(sc, h):  # wait (to see) or none (assumed harmless): both fine
                want = ("none", "wait")
            if h.racing and (kind, action) != (h.kind, want[0]):
                out.observations.append(f"racing h{h.index} ({h.made}/{h.variant}, "
                                        f"{h.kind}) taken for {kind}: {r.get('MESSAGE')}")
            elif kind != h.kind:
                v.append(f"journal: h{h.index} ({h.made}/{h.variant}) classified {kind}, "
                         f"the oracle says {h.kind}: {r.get('MESSAGE')}")
            elif action not in want and not (action == "none" and unit in stopping):
                v.append(f"journal: h{h.index} ({h.kind}) planned {action}, the oracle says "
                         f"{'/'.join(want)}: {r.get('MESSAGE')}")
        elif mid == SIGNAL and action == "signal":
            if not (pid and int(pid) in ok_pids):
                v.append(f"journal: SIGNAL to pid {pid} ({kind}), not a permitted target")
        elif mid == KILL:
            if kind == TWIN and unit not in ok_units:
                v.append(f"journal: KillUnit {unit}, not a permitted twin")
            elif kind != TWIN and not (pid and int(pid) in ok_pids):
                v.append(f"journal: SIGKILL to pid {pid} ({kind}), not a permitted target")
        elif mid == STOP_UNIT and unit not in ok_units:
            v.append(f"journal: StopUnit {unit} ({kind}), not a permitted twin")
    for h in sc.holders:
        must = h.action != NONE and not h.racing
        if must and h.index not in seen:
            v.append(f"journal: h{h.index} ({h.describe()}) is missing from the plan")
    return v + check_journal_against_logs(out, records, logs)


def check_journal_against_logs(out: Outcome, records: list[dict[str, Any]],
                               logs: dict[int, ProcLog]) -> list[str]:
    """Every signal a holder saw (or SIGKILL it died of) has its journal record."""
    sc, exp, v = out.sc, out.expected, []
    signalled = {int(r["PORTGUARD_HOLDER_PID"]) for r in records
                 if r.get("MESSAGE_ID") == SIGNAL and r.get("PORTGUARD_HOLDER_PID")}
    killed = {r.get("PORTGUARD_HOLDER_PID") for r in records if r.get("MESSAGE_ID") == KILL}
    killed_units = {r.get("PORTGUARD_HOLDER_UNIT") for r in records
                    if r.get("MESSAGE_ID") == KILL and r.get("PORTGUARD_HOLDER_KIND") == TWIN}
    stopped_units = {r.get("PORTGUARD_HOLDER_UNIT") for r in records
                     if r.get("MESSAGE_ID") == STOP_UNIT}
    for h in sc.holders:
        for pid in h.pids:
            log = logs.get(pid)
            if log is None:
                continue
            senders = {s for _, s in log.signals}
            if senders - {1, h.parent.get(pid, -1)} and pid not in signalled:
                v.append(f"journal: h{h.index} pid {pid} got a signal from portguard but no "
                         "SIGNAL record names it")
            if 1 in senders and h.unit not in stopped_units | killed_units:
                v.append(f"journal: h{h.index} pid {pid} got a signal from systemd but no "
                         f"StopUnit/KillUnit record names {h.unit}")
            if log.exit or h.index not in exp.permitted or log.alive:
                continue
            if h.kind == TWIN and h.unit not in killed_units:
                v.append(f"journal: h{h.index} pid {pid} of {h.unit} died of SIGKILL with "
                         "no KillUnit record")
            elif h.kind != TWIN and str(pid) not in killed:
                v.append(f"journal: h{h.index} pid {pid} died of SIGKILL with no KILL record")
    return v


# -- driving --------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    seed: int
    numbers: list[int]
    lanes: int
    outcomes: list[Outcome]
    seconds: float
    boot_seconds: float
    code: str = ""  # portguard's version when the run began

    @property
    def violations(self) -> list[tuple[Outcome, str]]:
        return [(o, v) for o in self.outcomes for v in o.violations]

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]


def run(sb: Sandbox, numbers: Sequence[int], seed: int, *, lanes: int = 2,
        log: Callable[[str], None] = print, verbose: bool = False) -> Report:
    """Run scenarios `numbers` of `seed` in `sb` (a started Sandbox) over `lanes` lanes."""
    t0 = time.monotonic()
    code = code_version()
    soak = Soak(sb, lanes=lanes, log=log)
    soak.install()
    work = collections.deque(numbers)
    total, done = len(numbers), [0]
    failures: list[BaseException] = []

    def lane_main(lane_no: int) -> None:
        lane = Lane(soak, lane_no)
        try:
            while True:
                with soak.lock:
                    if not work:
                        break
                    n = work.popleft()
                out = lane.run(make_scenario(seed, n))
                soak.record(out)
                with soak.lock:
                    done[0] += 1
                    progress(log, out, done[0], total, t0=t0, verbose=verbose)
            lane.flush_journal()
        except BaseException as exc:  # surfaced by the main thread
            failures.append(exc)
            with soak.lock:
                work.clear()

    threads = [threading.Thread(target=lane_main, args=(i,), name=f"soak-lane-{i}")
               for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    for out in soak.outcomes:
        if out.violations:
            log(f"VIOLATION in {out.sc.describe()}")
            for h in out.sc.holders:
                log(f"    {h.describe()}")
            log(f"    exit {out.exit}, expected {out.expected.exit} ({out.expected.why}); "
                f"stderr: {out.stderr.strip()[:600]}")
            for line in out.violations:
                log(f"  - {line}")
    outcomes = sorted(soak.outcomes, key=lambda o: o.sc.n)
    return Report(seed, list(numbers), lanes, outcomes, time.monotonic() - t0,
                  sb.boot_seconds, code)


def progress(log: Callable[[str], None], out: Outcome, done: int, total: int, *,
             t0: float, verbose: bool) -> None:
    mark = "ERROR" if out.error else ("VIOLATION" if out.violations else "ok")
    if verbose or mark != "ok":
        kinds = " ".join(f"{h.made}/{h.variant}" for h in out.sc.holders)
        log(f"[{done}/{total}] s{out.sc.n} lane {out.lane} {out.sc.policy}/"
            f"{out.sc.on_foreign} exit {out.exit} (want {out.expected.exit}) "
            f"{out.seconds:.2f}s {mark}: {kinds}" + (f" -- {out.error}" if out.error else ""))
    elif done % 25 == 0 or done == total:
        log(f"[{done}/{total}] {time.monotonic() - t0:.0f}s elapsed")


# -- the report -----------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def code_version() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "portguard"],
                               capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    digest = hashlib.sha256()
    for path in sorted((REPO / "portguard").glob("*.py")):
        digest.update(path.read_bytes())
    changed = len(dirty.splitlines())
    return (f"commit {head or '?'}" + (f" + {changed} uncommitted file(s) in portguard/"
                                       if changed else "")
            + f"; sha256 of portguard/*.py {digest.hexdigest()[:12]}")


def _code_line(began: str) -> str:
    now = code_version()
    if not began or began.rpartition(" ")[2] == now.rpartition(" ")[2]:  # same sha256
        return began
    return f"{began} -- **portguard/ changed during the run (now: {now})**"


def _machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def render(rep: Report, command: str) -> str:
    outs = rep.outcomes
    ran = [o for o in outs if not o.error]
    holders = [h for o in ran for h in o.sc.holders]
    lines = ["## Soak", "",
             "Randomized `portguard preflight` scenarios in one real-systemd sandbox, each"
             " checked against an oracle of DESIGN.md's rules (`bench/soak.py`; rewritten by"
             " each run of `make soak`).", "",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
             f"- machine: {_machine()}",
             f"- command: `{command}`",
             f"- portguard code: {_code_line(rep.code)}",
             f"- seed: {rep.seed}; scenarios: {len(outs)} ({len(ran)} run, "
             f"{len(rep.errors)} could not be set up); lanes: {rep.lanes}",
             f"- duration: {rep.seconds:.0f} s in all (sandbox boot {rep.boot_seconds:.2f} s);"
             f" per scenario median {_q(outs, 0.5):.2f} s, p90 {_q(outs, 0.9):.2f} s, "
             f"max {max((o.seconds for o in outs), default=0):.2f} s",
             f"- **violations: {len(rep.violations)}** in "
             f"{len({o.sc.n for o, _ in rep.violations})} scenario(s)", ""]
    made = collections.Counter(h.made for h in holders)
    variants = collections.Counter((h.made, h.variant) for h in holders)
    lines += ["### Holders", ""]
    lines += _table(("made as", "holders", "variants"), [
        (m, made[m], ", ".join(f"{v} {variants[(m, v)]}" for v in VARIANTS[m][0]
                               if variants[(m, v)]))
        for m in MADE])
    kinds = collections.Counter(h.kind for h in holders)
    actions = collections.Counter((h.kind, h.action) for h in holders)
    lines += ["", "Classified by the oracle (protected ones included in their kind; "
              f"{sum(h.protected for h in holders)} protected holders, "
              f"{sum(h.stubborn for h in holders)} ignoring SIGTERM, "
              f"{sum(bool(h.workers) for h in holders)} with workers, "
              f"{sum(h.leave is not None for h in holders)} leaving by themselves, "
              f"{sum(h.racing for h in holders)} of them at a random moment):", ""]
    lines += _table(("kind", "holders", *(a for a in (ACT, WAIT, REFUSE, TOLERATE, NONE))),
                    [(k, kinds[k], *(actions[(k, a)] for a in (ACT, WAIT, REFUSE, TOLERATE,
                                                              NONE)))
                     for k in (SELF, TWIN, STRAY, FOREIGN, LINGERING)])
    lines += ["", "### Policies and outcomes", ""]
    pol = collections.Counter((o.sc.policy, o.sc.on_foreign) for o in ran)
    lines += _table(("policy", "scenarios", "on_foreign fail", "on_foreign wait"), [
        (p, pol[(p, "fail")] + pol[(p, "wait")], pol[(p, "fail")], pol[(p, "wait")])
        for p in POLICIES])
    modes = collections.Counter("dry-run" if o.sc.dry_run else
                                "ExecStartPre=" if o.sc.via_unit else "direct" for o in ran)
    lines += ["", "Modes: " + ", ".join(f"{m} {c}" for m, c in sorted(modes.items()))
              + "; holders per scenario: " + ", ".join(
                  f"{k}: {c}" for k, c in sorted(collections.Counter(
                      len(o.sc.holders) for o in ran).items()))
              + f"; two ports: {sum(len(o.sc.ports) == 2 for o in ran)}; "
              f"UDP: {sum(o.sc.proto == 'udp' for o in ran)}; service as `nobody`: "
              f"{sum(bool(o.sc.user) for o in ran)}.", ""]
    def exits(want: int, allowed: bool) -> str:
        got = collections.Counter(o.exit for o in ran if o.expected.exit == want
                                  and o.exit != want and (o.exit in o.expected.also) == allowed)
        return ", ".join(f"{g}: {c}" for g, c in sorted(got.items(), key=str)) or "-"

    lines += _table(("oracle's exit", "scenarios", "got it", "got an allowed alternative",
                     "got another (a violation)"), [
        (e, sum(o.expected.exit == e for o in ran),
         sum(o.expected.exit == e == o.exit for o in ran), exits(e, True), exits(e, False))
        for e in sorted({o.expected.exit for o in ran})])
    lines += ["", "Allowed alternatives: 0 for a TIME_WAIT that may block next to holders"
              " policy `warn` tolerates anyway; 1 where a racing holder vanished mid-scan."]
    lines += ["", f"Acted on: {sum(o.signalled for o in ran)} holder processes signalled by"
              f" portguard through a pidfd, {sum(o.killed for o in ran)} of them (or of"
              f" twins' processes) SIGKILLed, {sum(o.stopped_units for o in ran)} twin units"
              " stopped by systemd for it; run time of preflight itself: median "
              f"{_q(ran, 0.5, run=True):.2f} s.", ""]
    lines += ["### Violations", ""]
    if not rep.violations:
        lines += ["None.", ""]
    for o in outs:
        if not o.violations:
            continue
        lines += [f"- {o.sc.describe()}; exit {o.exit}, expected {o.expected.exit}"
                  f" ({o.expected.why})"]
        lines += [f"  - holder {h.describe()}" for h in o.sc.holders]
        lines += [f"  - **{v}**" for v in o.violations]
    observed = [(o, line) for o in outs for line in o.observations]
    racing = [h for h in holders if h.racing]
    lines += ["", "### Observations", "",
              f"{len(racing)} holders left at a random moment while preflight ran (racing its"
              " scan: whatever it takes them for, nothing living may be signalled, and the"
              " exit may turn into a refusal); portguard saw "
              f"{len(observed)} of their records differently from the oracle."]
    lines += [f"- scenario {o.sc.n}: {line}" for o, line in observed[:10]]
    if len(observed) > 10:
        lines.append(f"- ... and {len(observed) - 10} more")
    if rep.errors:
        lines += ["", "### Scenarios that could not be set up", ""]
        lines += [f"- {o.sc.describe()}: {o.error}" for o in rep.errors]
    return "\n".join(lines).rstrip() + "\n"


def _q(outs: Sequence[Outcome], q: float, *, run: bool = False) -> float:
    """Nearest-rank quantile of the scenarios' (or preflight runs') durations."""
    vals = sorted(o.run_seconds if run else o.seconds for o in outs)
    if not vals:
        return 0.0
    return vals[max(0, min(len(vals) - 1, round(q * len(vals) + 0.5) - 1))]


def write_section(path: Path, section: str) -> None:
    """Replace "## Soak" (its heading to the next `## ` heading or EOF) or append it at
    the end; every other byte of the file stays as it was."""
    text = path.read_text() if path.exists() else ""
    m = re.search(r"^## Soak[ \t]*$", text, re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        tail = text[end:]
        new = text[:m.start()] + section + ("\n" if tail else "") + tail
    else:
        sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        new = text + sep + section
    path.write_text(new)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", type=int, default=1000, help="how many (default 1000)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"the seed (default {DEFAULT_SEED})")
    p.add_argument("--first", type=int, default=0, help="number of the first scenario")
    p.add_argument("--only", help="comma list of scenario numbers to run instead")
    p.add_argument("--lanes", type=int, default=2,
                   help="scenarios run side by side, each lane with its own units (2)")
    p.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
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
        write_section(args.output, section)
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
