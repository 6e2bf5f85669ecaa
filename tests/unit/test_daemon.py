"""portguard daemon without systemd: scheduling, the STATUS line, which units want their
port, what a pass decides, flap keys, and the reconciler's memory across passes (with a
fake Preflight, fake observations and a fake clock). The real thing runs in
tests/integration/test_daemon_lifecycle.py and test_daemon_heal.py.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from daemon_facts import CONFIG, Capture, facts, proc, sock, unit

from portguard.app import App
from portguard.commands.daemon import DEBOUNCE, Daemon, Schedule, UnitFilter, status_line
from portguard.commands.daemon_heal import Interrupted, Outcome
from portguard.commands.daemon_survey import (
    Facts,
    analyse,
    before_main,
    flap_keys,
    holder_identity,
    wants_port,
)
from portguard.config.schema import Config, loads
from portguard.model import Holder, Unit
from portguard.observe.systemd.bus_signals import unit_from_object_path
from portguard.report.notify import Keeper


def verdicts(cfg: Config, f: Facts) -> dict[str, str]:
    return {c.unit.id: c.verdict for c in analyse(cfg, f)}


@pytest.fixture
def cfg() -> Config:
    return loads(CONFIG)


# -- scheduling ------------------------------------------------------------------------


def test_the_first_pass_is_due_at_once_then_every_interval() -> None:
    s = Schedule(30.0, now=100.0)
    assert s.due(100.0)
    s.passed(100.5)
    assert not s.due(130.0) and s.due(130.5)
    assert s.wait(110.5) == pytest.approx(20.0)


def test_a_change_is_debounced_and_later_changes_do_not_postpone_it() -> None:
    s = Schedule(30.0, now=0.0)
    s.passed(0.0)
    s.poke(5.0)
    s.poke(5.1)  # a burst: the pass stays at 5.0 + DEBOUNCE
    assert s.next == pytest.approx(5.0 + DEBOUNCE)
    assert not s.due(5.1) and s.due(5.0 + DEBOUNCE)
    s.passed(5.3)
    assert s.next == pytest.approx(35.3)


def test_a_change_never_delays_a_pass_already_due_sooner() -> None:
    s = Schedule(30.0, now=0.0)
    s.passed(0.0)
    s.poke(29.95)
    assert s.next == 30.0


def test_unit_filter_takes_configured_units_instances_and_duplicates(cfg: Config) -> None:
    f = UnitFilter(cfg)
    assert f("web.service") and f("tw@blue.service") and f("legacy-tw.service")
    assert not f("web2.service") and not f("tw.service") and not f("tw@x.socket")
    assert not f("dbus.service")


def test_unit_names_from_object_paths() -> None:
    base = "/org/freedesktop/systemd1/unit/"
    assert unit_from_object_path(base + "web_40blue_2eservice") == "web@blue.service"
    assert unit_from_object_path(base + "foo_2dbar_2eservice") == "foo-bar.service"
    assert unit_from_object_path(base + "_31x_2eservice") == "1x.service"
    assert unit_from_object_path("/org/freedesktop/systemd1/job/12") is None
    assert unit_from_object_path(base + "bad_zz") is None


# -- the STATUS line -------------------------------------------------------------------


def test_status_when_all_is_well() -> None:
    at = time.mktime((2026, 1, 2, 12, 3, 4, 0, 0, -1))
    text = status_line(services=12, units=14, outcomes=(), resolved=0, flapping=(),
                       last_pass=(at, 0.0042))
    assert text == "watching 12 services (14 units), 0 conflicts; last pass at 12:03:04 " \
                   "took 4 ms"


def test_status_puts_problems_first_and_names_the_conflicts() -> None:
    outcomes = [Outcome("web.service", "web.service", "refused",
                        "web.service: 8080/tcp held by pid 7 (nginx) outside any unit, "
                        "refused"),
                Outcome("tw@.service", "tw@a.service", "resolved", "tw@a.service: ..."),
                Outcome("x.service", "x.service", "reported", "x: a"),
                Outcome("y.service", "y.service", "reported", "y: b")]
    text = status_line(services=1, units=1, outcomes=outcomes, resolved=3,
                       flapping=["tw@b.service vs tw@a.service"],
                       dbus_error="NoServer", reload_error="c.yaml:3:5: bad port",
                       metrics_error="/x/m.prom: No such file or directory")
    assert text.startswith("config reload failed, still running the previous one: "
                           "c.yaml:3:5: bad port; systemd D-Bus unreachable (NoServer)")
    assert "watching 1 service (1 unit), 3 conflicts: web.service: 8080/tcp held by pid 7" \
           in text
    assert "(+1 more)" in text
    assert "flapping, not fought: tw@b.service vs tw@a.service" in text
    assert "3 resolved since start" in text
    assert "metrics not written: /x/m.prom" in text
    assert "\n" not in text


# -- which units want their port -------------------------------------------------------


@pytest.mark.parametrize(("active", "sub", "wants", "before"), [
    ("failed", "failed", True, True),
    ("activating", "auto-restart", True, True),
    ("activating", "start-pre", True, True),
    ("activating", "start", True, False),  # its main process is up and may hold it
    ("active", "running", False, False),
    ("inactive", "dead", False, False),
    ("deactivating", "stop-sigterm", False, False),
    ("reloading", "reload", False, False),
])
def test_wants_port(active: str, sub: str, wants: bool, before: bool) -> None:
    assert wants_port(unit("x.service", active, sub)) is wants
    assert before_main(unit("x.service", active, sub)) is before


def test_a_unit_in_auto_restart_blocked_by_a_stray_is_acted_for(cfg: Config) -> None:
    f = facts([unit("web.service", "activating", "auto-restart")], [(sock(8080, 1), "")])
    assert verdicts(cfg, f)["web.service"] == "act"
    [check] = [c for c in analyse(cfg, f) if c.unit.id == "web.service"]
    assert [b.kind for b in check.blocking()] == ["other"]


def test_a_failed_instance_blocked_by_its_twin_is_acted_for(cfg: Config) -> None:
    f = facts([unit("tw@a.service"), unit("tw@b.service", "failed", "failed")],
              [(sock(9090, 1), "tw@a.service")])
    assert verdicts(cfg, f) == {"web.service": "ok", "tw@a.service": "ok",
                                "tw@b.service": "act"}


def test_a_duplicates_unit_is_a_twin(cfg: Config) -> None:
    f = facts([unit("tw@b.service", "activating", "auto-restart")],
              [(sock(9090, 1), "legacy-tw.service")])
    [check] = [c for c in analyse(cfg, f) if c.unit.id == "tw@b.service"]
    assert check.verdict == "act" and check.ports[0].blockers[0].kind == "twin"


def test_a_stray_on_the_port_of_an_inactive_unit_is_reported_not_acted_for(
        cfg: Config) -> None:
    f = facts([], [(sock(8080, 1), "session-3.scope")])  # web.service not even loaded
    assert verdicts(cfg, f)["web.service"] == "report"


def test_a_twin_holding_the_port_of_a_stopped_instance_is_no_conflict(cfg: Config) -> None:
    f = facts([unit("tw@a.service"), unit("tw@b.service", "inactive", "dead")],
              [(sock(9090, 1), "tw@a.service")])
    assert verdicts(cfg, f)["tw@b.service"] == "ok"


def test_two_active_twins_holding_one_port_are_reported(cfg: Config) -> None:
    f = facts([unit("tw@a.service"), unit("tw@b.service")],
              [(sock(9090, 1), "tw@a.service"), (sock(9090, 2), "tw@b.service")])
    assert verdicts(cfg, f) == {"web.service": "ok", "tw@a.service": "report",
                                "tw@b.service": "report"}


def test_a_unit_holding_its_own_port_is_fine_and_a_remnant_is_not(cfg: Config) -> None:
    own = [(sock(8080, 1), "web.service")]
    assert verdicts(cfg, facts([unit("web.service")], own))["web.service"] == "ok"
    starting = unit("web.service", "activating", "start")
    assert verdicts(cfg, facts([starting], own))["web.service"] == "ok"
    restarting = unit("web.service", "activating", "auto-restart")
    assert verdicts(cfg, facts([restarting], own))["web.service"] == "act"


def test_lingering_sockets_do_not_block_a_service_with_reuse_address(cfg: Config) -> None:
    f = facts([unit("web.service", "activating", "auto-restart")],
              [(sock(8080, 0, "TIME_WAIT"), "")])
    assert verdicts(cfg, f)["web.service"] == "ok"


def test_without_dbus_conflicts_are_only_reported(cfg: Config) -> None:
    f = facts([], [(sock(8080, 1), ""), (sock(9090, 2), "tw@a.service")], dbus=False)
    assert verdicts(cfg, f) == {"web.service": "report", "tw@.service": "ok"}


# -- holder identity and flap keys -----------------------------------------------------


def test_holder_identity_is_the_unit_or_program_and_user() -> None:
    assert holder_identity("tw@a.service", [proc(5)]) == "tw@a.service"
    assert holder_identity(None, [proc(5)]) == "webd as www"
    assert holder_identity("session-3.scope", [proc(6)]) == "webd as www"  # a login shell
    assert holder_identity("user@1000.service", [proc(7)]) == "webd as www"
    assert holder_identity(None, [proc(8, user="")]) == "webd as 33"


def test_flap_keys_survive_a_respawned_stray_with_a_new_pid() -> None:
    s = sock(8080, 1)
    first = flap_keys("web.service", [Holder(s, (proc(100),), None)])
    again = flap_keys("web.service", [Holder(s, (proc(250),), Unit("session-9.scope"))])
    assert first == again == [("web.service", "webd as www")]
    twin = flap_keys("tw@b.service", [Holder(s, (proc(5),), Unit("tw@a.service"))])
    assert twin == [("tw@b.service", "tw@a.service")]
    assert flap_keys("web.service", [Holder(sock(8080, 0, "TIME_WAIT"))]) == []


# -- signals and the watchdog keeper -----------------------------------------------------


def test_sigterm_abandons_a_pass_and_sighup_only_asks_for_a_reload(tmp_path: Any) -> None:
    d = Daemon(App(tmp_path / "c.yaml", journal=Capture()), env={})
    d._on_signal(signal.SIGHUP, None)
    assert d.reload_requested and not d.stop_signal
    d._on_signal(signal.SIGTERM, None)  # between passes: noted, the loop ends
    assert d.stop_signal == signal.SIGTERM
    d._in_pass = True
    with pytest.raises(Interrupted):
        d._on_signal(signal.SIGINT, None)


def test_the_keeper_pings_only_within_the_declared_bound() -> None:
    pings: list[float] = []
    k = Keeper(lambda: pings.append(time.monotonic()), 0.01)
    k.start()
    try:
        time.sleep(0.05)
        assert pings == []  # not in a pass: the loop's own timer pings
        k.hold(0.1)
        time.sleep(0.2)
        n = len(pings)
        assert n >= 3
        time.sleep(0.05)
        assert len(pings) == n  # the bound passed: a stuck pass starves the watchdog
        k.hold(10)
        k.release()
        time.sleep(0.05)
        assert len(pings) == n
    finally:
        k.stop()
