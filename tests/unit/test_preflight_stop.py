"""preflight stopped with its unit (issue 11 item 6): exit 0 only when systemd is stopping
the unit; any other stop signal fails closed. The real race (twins started together, the
loser ends inactive) is tests/integration/test_preflight_race.py."""

from __future__ import annotations

import os
import signal

import pytest

from portguard.commands.preflight_stop import StopRequested, settle, stop_signals
from portguard.errors import BlockedError, ExitStatus, PortguardError
from portguard.observe.systemd.dbus_errors import SystemdUnavailable


class FakeSystemd:
    def __init__(self, state: str) -> None:
        self.state = state
        self.closed = False

    def active_state(self, unit: str) -> str:
        return self.state

    def close(self) -> None:
        self.closed = True


def test_a_stop_signal_in_the_body_becomes_stop_requested_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopRequested) as raised, stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # pragma: no cover - the handler raises first
    assert raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def run_settle(state: str) -> tuple[ExitStatus, list[str], FakeSystemd]:
    notes: list[str] = []
    fake = FakeSystemd(state)
    try:
        status = settle("web@b.service", StopRequested(signal.SIGTERM),
                        lambda: fake,  # type: ignore[arg-type,return-value]
                        notes.append)
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(s, signal.SIG_DFL if s != signal.SIGINT else
                          signal.default_int_handler)
    return status, notes, fake


def test_stopped_by_systemd_exits_0_and_says_so() -> None:
    status, notes, fake = run_settle("deactivating")
    assert status is ExitStatus.OK and fake.closed
    assert notes == ["web@b.service: stopped while preflight ran (SIGTERM); nothing left to do"]


@pytest.mark.parametrize("state", ["activating", "inactive", "active"])
def test_a_signal_from_anyone_else_fails_closed(state: str) -> None:
    with pytest.raises(BlockedError, match="not being stopped; not starting it unguarded"):
        run_settle(state)


def test_no_dbus_fails_closed() -> None:
    def unreachable() -> FakeSystemd:
        raise SystemdUnavailable("no bus")

    with pytest.raises(PortguardError, match="cannot ask systemd"):
        settle("web@b.service", StopRequested(signal.SIGTERM),
               unreachable,  # type: ignore[arg-type]
               print)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_signal_before_stop_signals_is_remembered_and_raised_on_entry() -> None:
    import portguard.commands.preflight_stop as ps
    before = signal.getsignal(signal.SIGTERM)
    try:
        ps.catch_early()
        os.kill(os.getpid(), signal.SIGTERM)  # while "importing": remembered, not fatal
        with pytest.raises(StopRequested) as raised, stop_signals():
            pass  # pragma: no cover - raised on entry
        assert raised.value.signum == signal.SIGTERM
    finally:
        ps._early.clear()
        for s in ps.STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
