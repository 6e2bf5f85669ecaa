"""policy: the action chosen for each conflict, and the reason a person reads for it.

decide() is checked over every kind x policy x on_foreign x reuse_address x bind_refused
combination that changes the answer; plan() for what it adds: refusals exposed, a twin
holding several ports stopped once.
"""

from __future__ import annotations

import dataclasses
import socket
from signal import Signals

import pytest

from portguard.config.schema import OnForeign, Policy, Service, loads
from portguard.decide.classify import Conflict, Kind
from portguard.decide.policy import Action, Plan, decide, plan
from portguard.model import Holder, Process, Proto, Socket

WEB: Service = loads("services:\n  web@.service:\n    ports: ['8080', '9090']\n").services[0]


def service(**changes: object) -> Service:
    return dataclasses.replace(WEB, **changes)  # type: ignore[arg-type]


def conflict(kind: Kind, *, port: int = 8080, unit: str | None = None, pids: tuple[int, ...]
             = (4242,), untouchable: str = "", state: str = "LISTEN",
             held: bool = True) -> Conflict:
    procs = tuple(Process(pid, start_time=1000 + pid, user="www-data", exe="/usr/bin/webd")
                  for pid in pids)
    sock = Socket(Proto.TCP, socket.AF_INET, state, "0.0.0.0", port, "0.0.0.0", 0, 33,
                  7000 + port if procs else 0)
    h = Holder(sock, procs) if held else None
    return Conflict(port, Proto.TCP, kind, f"a {kind} for the test", h, unit, procs,
                    untouchable)


SELF = conflict(Kind.SELF, unit="web@green.service")
TWIN = conflict(Kind.TWIN, unit="web@blue.service", pids=(5000,))
STRAY = conflict(Kind.STRAY, pids=(4242,))
FOREIGN = conflict(Kind.FOREIGN, unit="nginx.service", pids=(900,))
LINGERING = conflict(Kind.LINGERING, state="TIME_WAIT", pids=())
OURS = {"self": SELF, "twin": TWIN, "stray": STRAY}


# -- lingering sockets: reuse_address x bind_refused ---------------------------------

def test_lingering_does_not_block_a_service_that_sets_so_reuseaddr() -> None:
    step = decide(service(reuse_address=True), LINGERING)
    assert (step.action, step.tolerated) == (Action.NONE, False)
    assert step.why == ("does not block a service that sets SO_REUSEADDR "
                        "(reuse_address: true)")


def test_lingering_is_waited_out_when_bind_is_refused_despite_so_reuseaddr() -> None:
    step = decide(service(reuse_address=True), LINGERING, bind_refused=True)
    assert step.action is Action.WAIT
    assert step.why == ("bind() is refused: the old socket did not set SO_REUSEADDR, "
                        "so it must expire first")


@pytest.mark.parametrize("bind_refused", [False, True])
def test_lingering_is_waited_out_without_so_reuseaddr(bind_refused: bool) -> None:
    step = decide(service(reuse_address=False), LINGERING, bind_refused=bind_refused)
    assert step.action is Action.WAIT
    assert step.why == "reuse_address: false, so it must expire first"


@pytest.mark.parametrize("policy", list(Policy))
def test_lingering_ignores_the_policy(policy: Policy) -> None:
    """Nobody to stop or fail for: a TIME_WAIT socket only ever waits or passes."""
    assert decide(service(policy=policy), LINGERING).action is Action.NONE
    assert decide(service(policy=policy, reuse_address=False), LINGERING).action \
        is Action.WAIT


# -- foreign holders: on_foreign only --------------------------------------------------

@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize(("on_foreign", "action", "why"), [
    (OnForeign.FAIL, Action.REFUSE, "portguard never stops another program (on_foreign: fail)"),
    (OnForeign.WAIT, Action.WAIT, "portguard never stops another program; on_foreign: wait"),
], ids=["refused under fail", "waited for under wait"])
def test_foreign_gets_what_on_foreign_says_whatever_the_policy(
        policy: Policy, on_foreign: OnForeign, action: Action, why: str) -> None:
    step = decide(service(policy=policy, on_foreign=on_foreign), FOREIGN)
    assert step.action is action
    assert step.why == why
    assert not step.tolerated  # policy warn does not soften a foreign holder


def test_foreign_is_never_stopped_even_when_it_is_a_unit() -> None:
    for on_foreign in OnForeign:
        step = decide(service(policy=Policy.STOP, on_foreign=on_foreign), FOREIGN)
        assert step.action not in (Action.STOP, Action.SIGNAL, Action.KILL)


# -- self / twin / stray: the policy ---------------------------------------------------

@pytest.mark.parametrize("kind", OURS)
def test_policy_fail_refuses(kind: str) -> None:
    step = decide(service(policy=Policy.FAIL), OURS[kind])
    assert (step.action, step.why) == (Action.REFUSE, "policy: fail")


@pytest.mark.parametrize("kind", OURS)
def test_policy_warn_tolerates_without_acting(kind: str) -> None:
    step = decide(service(policy=Policy.WARN), OURS[kind])
    assert (step.action, step.tolerated) == (Action.NONE, True)
    assert step.why == "policy: warn (the service will try anyway)"


@pytest.mark.parametrize("kind", OURS)
def test_policy_wait_waits(kind: str) -> None:
    step = decide(service(policy=Policy.WAIT), OURS[kind])
    assert (step.action, step.why) == (Action.WAIT, "policy: wait")


@pytest.mark.parametrize("on_foreign", list(OnForeign))
def test_on_foreign_does_not_change_what_happens_to_our_own_copies(
        on_foreign: OnForeign) -> None:
    svc = service(policy=Policy.STOP, on_foreign=on_foreign)
    assert [decide(svc, c).action for c in (SELF, TWIN, STRAY)] == \
        [Action.SIGNAL, Action.STOP, Action.SIGNAL]


def test_stop_a_twin_unit_through_systemd() -> None:
    step = decide(service(policy=Policy.STOP), TWIN)
    assert step.action is Action.STOP
    assert step.why == "policy: stop (StopUnit web@blue.service)"


def test_stop_a_twin_that_claims_the_port_before_binding_it() -> None:
    claiming = conflict(Kind.TWIN, unit="web@red.service", pids=(), held=False)
    step = decide(service(policy=Policy.STOP), claiming)
    assert step.action is Action.STOP
    assert "StopUnit web@red.service" in step.why


@pytest.mark.parametrize("kind", ["self", "stray"])
def test_stop_a_remnant_or_stray_with_the_configured_signal(kind: str) -> None:
    step = decide(service(policy=Policy.STOP), OURS[kind])
    assert step.action is Action.SIGNAL
    assert step.why == "policy: stop (SIGTERM through a pidfd, SIGKILL after 10s)"
    step = decide(service(policy=Policy.STOP, signal=Signals.SIGINT), OURS[kind])
    assert "SIGINT through a pidfd" in step.why


@pytest.mark.parametrize("kind", [Kind.SELF, Kind.STRAY])
def test_stop_with_no_process_to_signal_is_refused(kind: Kind) -> None:
    step = decide(service(policy=Policy.STOP), conflict(kind, pids=()))
    assert (step.action, step.why) == (Action.REFUSE, "policy: stop, but no process to stop")


@pytest.mark.parametrize("kind", OURS)
def test_a_protected_holder_is_refused_never_touched(kind: str) -> None:
    protected = OURS[kind]._replace(untouchable="web@blue.service is protected by the config")
    step = decide(service(policy=Policy.STOP), protected)
    assert step.action is Action.REFUSE
    assert step.why == ("policy: stop, but never touched: "
                        "web@blue.service is protected by the config")


@pytest.mark.parametrize("kind", OURS)
@pytest.mark.parametrize(("policy", "action"), [(Policy.FAIL, Action.REFUSE),
                                                (Policy.WAIT, Action.WAIT),
                                                (Policy.WARN, Action.NONE)])
def test_a_protected_holder_under_a_policy_that_touches_nothing(
        kind: str, policy: Policy, action: Action) -> None:
    # waiting or warning never touches the holder, so protection changes nothing there
    protected = OURS[kind]._replace(untouchable="web@blue.service is protected by the config")
    assert decide(service(policy=policy), protected).action is action


def test_pid_1_is_never_signalled() -> None:
    remnant = SELF._replace(untouchable="PID 1 (systemd) holds it")
    step = decide(service(policy=Policy.STOP), remnant)
    assert step.action is Action.REFUSE
    assert "PID 1" in step.why


# -- plan -----------------------------------------------------------------------------

def test_a_plan_exposes_every_refusal() -> None:
    svc = service(policy=Policy.STOP, on_foreign=OnForeign.FAIL)
    p = plan(svc, [TWIN, FOREIGN, STRAY, LINGERING])
    assert [s.action for s in p.steps] == [Action.STOP, Action.REFUSE, Action.SIGNAL,
                                           Action.NONE]
    assert [s.conflict for s in p.refused] == [FOREIGN]
    assert [s.conflict for s in p.acting] == [TWIN, STRAY]
    assert p.waiting == () and p.warned == ()


def test_a_plan_without_refusals_has_none() -> None:
    p = plan(service(policy=Policy.STOP, on_foreign=OnForeign.WAIT), [FOREIGN, STRAY])
    assert p.refused == ()
    assert [s.action for s in p.waiting] == [Action.WAIT]
    assert [s.action for s in p.acting] == [Action.SIGNAL]


def test_a_twin_holding_two_ports_is_stopped_once() -> None:
    on_9090 = conflict(Kind.TWIN, port=9090, unit="web@blue.service", pids=(5000,))
    p = plan(service(policy=Policy.STOP), [TWIN, on_9090])
    assert [s.action for s in p.steps] == [Action.STOP, Action.NONE]
    assert p.steps[1].why == "stopped with web@blue.service (already planned)"
    assert len(p.acting) == 1


def test_a_twin_holding_a_port_and_claiming_another_is_stopped_once() -> None:
    claiming = conflict(Kind.TWIN, port=9090, unit="web@blue.service", pids=(), held=False)
    p = plan(service(policy=Policy.STOP), [TWIN, claiming])
    assert [s.conflict.unit for s in p.acting] == ["web@blue.service"]


def test_two_different_twins_are_both_stopped() -> None:
    red = conflict(Kind.TWIN, port=9090, unit="web@red.service", pids=(5001,))
    p = plan(service(policy=Policy.STOP), [TWIN, red])
    assert [s.why for s in p.acting] == ["policy: stop (StopUnit web@blue.service)",
                                         "policy: stop (StopUnit web@red.service)"]


def test_plan_under_warn_lists_the_tolerated_conflicts_and_acts_on_none() -> None:
    p = plan(service(policy=Policy.WARN), [SELF, TWIN, STRAY])
    assert len(p.warned) == 3
    assert p.acting == () and p.refused == () and p.waiting == ()


def test_plan_passes_bind_refused_to_lingering_sockets() -> None:
    svc = service(reuse_address=True)
    assert plan(svc, [LINGERING]).steps[0].action is Action.NONE
    refused = {(LINGERING.port, LINGERING.proto)}
    assert plan(svc, [LINGERING], bind_refused=refused).steps[0].action is Action.WAIT


def test_bind_refused_is_judged_per_port() -> None:
    # Found by the soak: one port's refused bind() made every port's TIME_WAIT a wait.
    svc = service(reuse_address=True)
    other = conflict(Kind.LINGERING, port=8443, state="TIME_WAIT", pids=())
    steps = plan(svc, [LINGERING, other], bind_refused={(8443, other.proto)}).steps
    assert [(s.conflict.port, s.action) for s in steps] == [(8080, Action.NONE),
                                                            (8443, Action.WAIT)]


def test_an_empty_plan_has_no_steps() -> None:
    assert plan(service(), []) == Plan(())



def test_under_warn_a_time_wait_beside_a_tolerated_holder_is_not_waited_for() -> None:
    # Found by the soak (6 of 1,000): a TIME_WAIT named because bind() fails past a stray
    # that policy: warn tolerates; waiting for it ran out (75) where warn means "try anyway".
    svc = service(policy=Policy.WARN, reuse_address=True)
    refused = {(LINGERING.port, LINGERING.proto)}
    steps = plan(svc, [STRAY, LINGERING], bind_refused=refused).steps
    assert [s.action for s in steps] == [Action.NONE, Action.NONE]
    assert steps[1].why.startswith("bind() is refused by a holder tolerated under policy: warn")
    # on another port, or with nothing tolerated, it is still waited out
    alone = plan(svc, [LINGERING], bind_refused=refused).steps
    assert [s.action for s in alone] == [Action.WAIT]
