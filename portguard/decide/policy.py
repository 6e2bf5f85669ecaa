"""Pick an action for each conflict by the service's policy: pure, no I/O.

The whole plan is decided before anything is touched. If any conflict must be refused
(a foreign holder under `on_foreign: fail`, policy `fail`, a protected holder), nothing
at all is stopped: the service would not start anyway, and stopping its twin for nothing
would only add an outage.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import NamedTuple

from portguard.config.schema import OnForeign, Policy, Service
from portguard.decide.classify import Conflict, Kind
from portguard.model import Proto


class Action(enum.StrEnum):
    """The journal's PORTGUARD_ACTION vocabulary (the contract (docs/))."""

    NONE = "none"
    STOP = "stop"  # StopUnit a twin
    SIGNAL = "signal"  # the configured signal through a pidfd
    KILL = "kill"  # SIGKILL after kill_after
    WAIT = "wait"  # poll until the holder is gone
    REFUSE = "refuse"


class Step(NamedTuple):
    conflict: Conflict
    action: Action
    why: str
    tolerated: bool = False  # policy `warn`: reported, not acted on


class Plan(NamedTuple):
    steps: tuple[Step, ...]

    @property
    def refused(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action is Action.REFUSE)

    @property
    def acting(self) -> tuple[Step, ...]:
        """Steps that touch something (stop, signal), in the order they run."""
        return tuple(s for s in self.steps if s.action in (Action.STOP, Action.SIGNAL))

    @property
    def waiting(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action is Action.WAIT)

    @property
    def warned(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.tolerated)


def decide(service: Service, conflict: Conflict, *, bind_refused: bool = False) -> Step:
    """The action for one conflict, with the reason a person reads.

    `bind_refused`: a bind() probe with the service's options just failed. Lingering
    sockets then block even a service with SO_REUSEADDR: the old socket did not set it.
    """
    kind = conflict.kind
    if kind is Kind.LINGERING:
        if service.reuse_address and bind_refused:
            return Step(conflict, Action.WAIT, "bind() is refused: the old socket did not "
                        "set SO_REUSEADDR, so it must expire first")
        if service.reuse_address:
            return Step(conflict, Action.NONE, "does not block a service that sets "
                        "SO_REUSEADDR (reuse_address: true)")
        return Step(conflict, Action.WAIT, "reuse_address: false, so it must expire first")
    if kind is Kind.FOREIGN:
        if service.on_foreign is OnForeign.WAIT:
            return Step(conflict, Action.WAIT, "portguard never stops another program; "
                        "on_foreign: wait")
        return Step(conflict, Action.REFUSE, "portguard never stops another program "
                    "(on_foreign: fail)")
    # self, twin, stray: the service's own duplicates
    policy = service.policy
    if policy is Policy.FAIL:
        return Step(conflict, Action.REFUSE, "policy: fail")
    if policy is Policy.WARN:
        return Step(conflict, Action.NONE, "policy: warn (the service will try anyway)",
                    tolerated=True)
    if policy is Policy.WAIT:  # waiting touches nothing, so even a protected holder may
        return Step(conflict, Action.WAIT, "policy: wait")
    if conflict.untouchable:
        return Step(conflict, Action.REFUSE, f"policy: stop, but never touched: "
                    f"{conflict.untouchable}")
    if kind is Kind.TWIN and conflict.unit:
        return Step(conflict, Action.STOP, f"policy: stop (StopUnit {conflict.unit})")
    if not conflict.processes:
        return Step(conflict, Action.REFUSE, "policy: stop, but no process to stop")
    return Step(conflict, Action.SIGNAL, f"policy: stop ({service.signal.name} through "
                f"a pidfd, SIGKILL after {service.kill_after:g}s)")


def plan(service: Service, conflicts: Sequence[Conflict], *,
         bind_refused: Collection[tuple[int, Proto]] = ()) -> Plan:
    """One step per conflict; twins are stopped once even when they hold several ports."""
    steps: list[Step] = []
    stopping: set[str] = set()
    for conflict in conflicts:
        step = decide(service, conflict,
                      bind_refused=(conflict.port, conflict.proto) in bind_refused)
        if step.action is Action.STOP and conflict.unit in stopping:
            step = step._replace(why=f"stopped with {conflict.unit} (already planned)")
            step = step._replace(action=Action.NONE)
        if step.action is Action.STOP and conflict.unit:
            stopping.add(conflict.unit)
        steps.append(step)
    # Under warn, a live holder tolerated on a port explains its refused bind() by
    # itself: a lingering socket there (named only because bind() fails past that
    # holder) is no reason to wait, since the service tries anyway.
    tolerated = {(s.conflict.port, s.conflict.proto) for s in steps if s.tolerated}
    for i, step in enumerate(steps):
        c = step.conflict
        if (c.kind is Kind.LINGERING and step.action is Action.WAIT and service.reuse_address
                and (c.port, c.proto) in tolerated):
            steps[i] = step._replace(action=Action.NONE, why="bind() is refused by a holder "
                                     "tolerated under policy: warn; not waited for")
    return Plan(tuple(steps))
