"""The daemon's healer (portguard.commands.daemon_heal) across passes, with a fake Preflight,
fake observations and a fake clock: what it resolves, refuses, restarts and journals, and its
flap guard. The real thing runs in tests/integration/test_daemon_heal.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from daemon_facts import CONFIG, Capture, facts, proc, sock, unit

from portguard.app import App
from portguard.commands import daemon_heal as resolve
from portguard.commands.daemon_heal import Interrupted, Outcome, Reconciler
from portguard.commands.daemon_survey import (
    analyse,
)
from portguard.config.schema import Config, loads
from portguard.decide.classify import Conflict, Kind
from portguard.decide.flap import FlapGuard
from portguard.decide.policy import Action, Plan, Step
from portguard.errors import BlockedError, ExitStatus
from portguard.model import Holder, Proto, Unit
from portguard.report.journal import Event


@pytest.fixture
def cfg() -> Config:
    return loads(CONFIG)


# -- the reconciler across passes, with fakes --------------------------------------------


class World:
    """What the fakes see and do: the observed facts, the holders, Preflight's answers."""

    def __init__(self) -> None:
        self.facts = facts([], [])
        self.holders: list[Holder] = []
        self.preflights: list[tuple[str, bool]] = []
        self.answer: Any = ExitStatus.OK
        self.plan: Plan | None = None
        self.now = 1000.0
        self.started: list[str] = []


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World()

    class FakePreflight:
        def __init__(self, app: App, unit: str, *, dry_run: bool = False) -> None:
            self.unit, self.dry_run, self.plan = unit, dry_run, None

        def run(self) -> ExitStatus:
            w.preflights.append((self.unit, self.dry_run))
            self.plan = w.plan
            if isinstance(w.answer, Exception):
                raise w.answer
            return ExitStatus(w.answer)

    monkeypatch.setattr(resolve, "observe", lambda *a: (w.facts, ""))
    monkeypatch.setattr(resolve.Reconciler, "_holders", lambda self, app, check: w.holders)
    monkeypatch.setattr(resolve, "Preflight", FakePreflight)
    monkeypatch.setattr(resolve, "UnitControl", lambda systemd: systemd)  # FakeSystemd is both
    yield w


class FakeSystemd:
    """The daemon's connection and its act.units.UnitControl, in one fake."""

    def __init__(self, world: World) -> None:
        self.world = world

    def reset_failed(self, unit: str) -> None:
        self.world.started.append(f"reset {unit}")

    def start(self, unit: str, *, timeout: float) -> Any:
        self.world.started.append(f"start {unit}")
        return type("Job", (), {"result": "done"})()


def twin_fight(w: World, loser: str = "tw@b.service", state: str = "activating") -> None:
    winner = "tw@a.service" if loser == "tw@b.service" else "tw@b.service"
    s = sock(9090, 7)
    w.facts = facts([unit(winner), unit(loser, state, "auto-restart" if state ==
                                        "activating" else "failed")], [(s, winner)])
    w.holders = [Holder(s, (proc(70),), Unit(winner))]
    c = Conflict(9090, Proto.TCP, Kind.TWIN, "another instance", w.holders[0], winner,
                 (proc(70),), "")
    w.plan = Plan((Step(c, Action.STOP, f"policy: stop (StopUnit {winner})"),))


def make(w: World, journal: Capture, **kwargs: Any) -> Reconciler:
    return Reconciler(journal, FlapGuard(2, 60.0, clock=lambda: w.now),
                      cgroup_root="", clock=lambda: w.now, **kwargs)


def run(r: Reconciler, cfg: Config, w: World) -> tuple[Outcome, ...]:
    return r.run(cfg, cfg.path or "/c.yaml", FakeSystemd(w), lambda: None).outcomes  # type: ignore


def test_a_twin_fight_is_resolved_flap_limit_times_then_reported_once(
        cfg: Config, world: World) -> None:
    j = Capture()
    r = make(world, j)
    twin_fight(world)
    for _ in range(2):
        [o] = run(r, cfg, world)
        assert o.state == "resolved"
        world.now += 1
    assert len(world.preflights) == 2 and len(j.of(Event.DAEMON_RESOLVED)) == 2
    [o] = run(r, cfg, world)  # the third time within the window: not fought
    assert o.state == "flapping" and o.text == "tw@b.service vs tw@a.service"
    [flapping] = j.of(Event.DAEMON_FLAPPING)
    assert int(flapping.priority) == 3
    assert flapping.fields["PORTGUARD_UNIT"] == "tw@b.service"
    assert flapping.fields["PORTGUARD_HOLDER_UNIT"] == "tw@a.service"
    assert flapping.fields["PORTGUARD_RESULT"] == "flapping"
    for _ in range(3):  # still tripped: skipped, and not journaled again
        world.now += 5
        [o] = run(r, cfg, world)
        assert o.state == "flapping"
    assert len(world.preflights) == 2 and len(j.of(Event.DAEMON_FLAPPING)) == 1
    world.now += 61  # a whole window later: fought again
    [o] = run(r, cfg, world)
    assert o.state == "resolved" and len(world.preflights) == 3


def test_a_resolution_is_journaled_with_the_holder_and_a_failed_unit_restarted(
        cfg: Config, world: World) -> None:
    j = Capture()
    twin_fight(world, state="failed")
    [o] = run(make(world, j), cfg, world)
    assert o.state == "resolved"
    [resolved] = j.of(Event.DAEMON_RESOLVED)
    assert resolved.fields["PORTGUARD_HOLDER_UNIT"] == "tw@a.service"
    assert resolved.fields["PORTGUARD_HOLDER_KIND"] == "twin"
    assert resolved.fields["PORTGUARD_ACTION"] == "stop"
    assert "9090/tcp cleared: stopped pid 70" in resolved.message
    assert world.started == ["reset tw@b.service", "start tw@b.service"]
    [restarted] = j.of(Event.DAEMON_RESTARTED)
    assert restarted.fields["PORTGUARD_RESULT"] == "done"


def test_no_restart_unless_configured_or_for_a_unit_that_restarts_itself(
        world: World) -> None:
    twin_fight(world, state="failed")
    run(make(world, Capture()), loads(CONFIG.replace("restart: true", "restart: false")),
        world)
    twin_fight(world, state="activating")  # auto-restart: systemd restarts it itself
    run(make(world, Capture()), loads(CONFIG), world)
    assert world.started == []


def refused_at_every_pass(r: Reconciler, cfg: Config, w: World, passes: int) -> None:
    """`passes` passes, a second apart, each ending with the one conflict refused."""
    for _ in range(passes):
        [o] = run(r, cfg, w)
        assert o.state == "refused"
        w.now += 1


def test_a_refusal_is_journaled_once_not_at_every_pass(cfg: Config, world: World) -> None:
    j = Capture()
    r = make(world, j)
    twin_fight(world)
    world.answer = BlockedError("tw@b.service cannot start: protected")
    refused_at_every_pass(r, cfg, world, 4)
    assert len(world.preflights) == 1
    [refused] = j.of(Event.REFUSED)  # Preflight wrote none here: the daemon did
    assert refused.fields["PORTGUARD_ACTION"] == "refuse"
    assert r.refused_total == {"tw@.service": 1}
    world.holders = []  # the conflict is gone, and comes back: judged afresh
    world.facts = facts([], [])
    run(r, cfg, world)
    twin_fight(world)
    run(r, cfg, world)
    assert len(world.preflights) == 2


def test_a_restart_loop_behind_a_foreign_holder_is_refused_once_across_its_states(
        cfg: Config, world: World) -> None:
    """Restart=always against a foreign holder: between attempts the unit is briefly
    active (Type=simple forks before it binds), which alone would be "not acted on"; what
    the guard did about these same holders is still told, once, and still what it says."""
    j = Capture()
    r = make(world, j)
    s = sock(8080, 3)
    world.holders = [Holder(s, (proc(33),), None)]
    world.answer = BlockedError("web.service cannot start: 8080/tcp is held (foreign)")
    for state, sub in [("activating", "auto-restart"), ("active", "running")] * 3:
        world.facts = facts([unit("web.service", state, sub)], [(s, "")])
        [o] = run(r, cfg, world)
        assert (o.state, o.text.rpartition(", ")[2]) == ("refused", "refused"), o
        world.now += 1
    assert world.preflights == [("web.service", False)]  # judged once, not at every attempt
    assert len(j.of(Event.REFUSED)) == 1
    assert not j.of(Event.CONFLICT)  # never "not acted on" after refusing it


def test_policy_warn_is_tolerated_and_told_once(cfg: Config, world: World) -> None:
    twin_fight(world)
    [step] = world.plan.steps if world.plan else []
    world.plan = Plan((Step(step.conflict, Action.NONE, "policy: warn", tolerated=True),))
    r = make(world, Capture())
    for _ in range(3):
        [o] = run(r, cfg, world)
        assert o.state == "reported" and o.text.endswith(", tolerated (policy warn)")
    assert len(world.preflights) == 1 and r.resolved_total == {}


def test_a_conflict_not_acted_on_is_classified_by_a_dry_run_and_told_once(
        cfg: Config, world: World) -> None:
    j = Capture()
    r = make(world, j)
    s = sock(8080, 3)
    world.facts = facts([unit("web.service", "inactive", "dead")], [(s, "")])
    world.holders = [Holder(s, (proc(33),), None)]
    c = Conflict(8080, Proto.TCP, Kind.STRAY, "a copy", world.holders[0], None, (proc(33),), "")
    world.plan = Plan((Step(c, Action.SIGNAL, "policy: stop"),))
    for _ in range(3):
        [o] = run(r, cfg, world)
        assert o.state == "reported"
    assert world.preflights == [("web.service", True)]  # a dry run, once
    [told] = j.of(Event.CONFLICT)
    assert told.fields["PORTGUARD_HOLDER_KIND"] == "stray"
    assert told.fields["PORTGUARD_ACTION"] == "none"
    assert told.fields["PORTGUARD_RESULT"] == "reported"
    assert "not acted on: web.service is inactive" in told.message
    [sample] = [p for p in r._samples(analyse(cfg, world.facts)) if p.unit == "web.service"]
    assert (sample.held, sample.holder_kind) == (True, "stray")


def test_a_stop_request_abandons_the_pass(cfg: Config, world: World) -> None:
    twin_fight(world)
    r = make(world, Capture(), should_stop=lambda: True)
    with pytest.raises(Interrupted):
        run(r, cfg, world)
    assert world.preflights == []


def test_a_bug_for_one_unit_is_journaled_once_and_the_guard_goes_on(
        cfg: Config, world: World) -> None:
    j = Capture()
    r = make(world, j)
    twin_fight(world)
    world.answer = RuntimeError("boom")
    refused_at_every_pass(r, cfg, world, 3)
    [error] = j.of(Event.REFUSED)
    assert "RuntimeError('boom')" in error.message
    world.answer = ExitStatus.OK
    world.now += 61  # after flap_window it is tried again
    [o] = run(r, cfg, world)
    assert o.state == "resolved"


def test_metrics_samples_name_each_declared_port_of_each_unit(cfg: Config) -> None:
    f = facts([unit("tw@a.service"), unit("tw@b.service", "inactive", "dead")],
              [(sock(9090, 1), "tw@a.service")])
    r = Reconciler(Capture(), FlapGuard(2, 60), cgroup_root="")
    samples = {(p.unit, p.port): (p.held, p.holder_kind) for p in r._samples(analyse(cfg, f))}
    assert samples == {("web.service", 8080): (False, ""),
                       ("tw@a.service", 9090): (True, "self"),
                       ("tw@b.service", 9090): (True, "twin")}
