"""What the soak reasons about: scenarios and their holders, expectations and outcomes."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from support.sandbox import Sandbox


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
    # the service's stored profile (docs/identity.md, "Profiles"): none, "learned" (its
    # program as the other user: see oracle.profile_uid), or "replaced" (its program
    # file is not the one learned: never used)
    profile: str = ""

    def describe(self) -> str:
        mode = "dry-run" if self.dry_run else ("ExecStartPre" if self.via_unit else "direct")
        return (f"scenario {self.n} (seed {self.seed}): {mode}, policy={self.policy} "
                f"on_foreign={self.on_foreign} reuse_address={str(self.reuse).lower()} "
                f"timeout={self.timeout:.2f}s kill_after={self.kill_after}s "
                f"signal={self.signal} user={'nobody' if self.user else 'root'} "
                f"ports={','.join(map(str, self.ports))}/{self.proto} "
                f"dups_listed={int(self.dups_listed)} cmds_listed={int(self.cmds_listed)} "
                f"profile={self.profile or 'none'}")


@dataclasses.dataclass
class Expected:
    exit: int
    permitted: frozenset[int]  # holder indexes portguard may stop or signal
    cleared: bool  # after exit 0 the ports must be free (bind() succeeds)
    why: str
    also: frozenset[int] = frozenset()  # other exit statuses DESIGN leaves room for


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


class InSandbox(Protocol):
    def host(self, path: str) -> str:
        """A path inside the sandbox, as the host reaches it."""
        ...


class LaneView(Protocol):
    """What the checks and the leaver read of a running lane (lane.Lane is one): the
    sandbox, its paths, and whether a holder is still the process that was started."""

    sb: Sandbox
    soak: InSandbox

    def alive(self, h: HolderSpec, pid: int) -> bool: ...
