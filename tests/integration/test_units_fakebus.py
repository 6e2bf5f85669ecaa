"""act.units' job loop (over observe.systemd.units' connection) on a fake bus: orderings
a real systemd will not produce on demand (a JobRemoved dispatched before the method
returns, or queued behind others; a job
that vanishes silently; EINTR; a lost bus) and the errors it maps. In-process, no sandbox.

`FakeBus` is as much of pystemd's DBus as the loop uses, behaving as test_units_dbus.py
shows the real one does (match_signal keeps a raw pointer and sets callback.metadata;
process() dispatches one queued signal at a time).
"""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest
from pystemd.dbusexc import DBusError

from portguard.act import units as act_units
from portguard.act.units import UnitControl
from portguard.errors import ExitStatus, NotPermittedError, TimedOutError
from portguard.observe.systemd.bus_signals import JOB_GONE, PINNED, REMEMBERED, JobResult
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable
from portguard.observe.systemd.units import Systemd

JOB = b"/org/freedesktop/systemd1/job/7"


class Msg:
    def __init__(self, body: Any) -> None:
        self._body = body
        self.body: Any = None

    def process_reply(self, with_headers: bool) -> None:
        self.body = self._body


class Reply:
    def __init__(self, body: Any) -> None:
        self.body = body


class FakeBus:
    """Enough of pystemd's DBus for the job loop; `queue` holds signal bodies that
    process() dispatches one at a time, as sd_bus_process does."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.queue: list[Any] = []
        self.methods: dict[bytes, Any] = {b"Subscribe": None, b"StopUnit": JOB,
                                          b"StartUnit": JOB, b"Get": b"running"}
        self.calls: list[bytes] = []
        self.process_errors: list[BaseException] = []
        self.wait_errors: list[BaseException] = []
        self.closed = False

    def match_signal(self, sender: bytes, path: bytes, interface: bytes, member: bytes,
                     callback: Any) -> None:
        callback.metadata = {"userdata": None}  # as pystemd does
        self.callbacks.append(callback)

    def call_method(self, destination: bytes, path: bytes, interface: bytes, method: bytes,
                    args: Any) -> Any:
        self.calls.append(method)
        answer = self.methods[method]
        if callable(answer):
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        return Reply(answer)

    def process(self) -> Any:
        if self.process_errors:
            raise self.process_errors.pop(0)
        if self.queue:
            body = self.queue.pop(0)
            for callback in self.callbacks:
                callback(Msg(body), error=None, userdata=None)
        return Msg(None)

    def wait(self, timeout: int) -> None:
        if self.wait_errors:
            raise self.wait_errors.pop(0)
        if not self.queue:
            time.sleep(min(timeout / 1e6, 0.005))

    def close(self) -> None:
        self.closed = True


def removed(job: bytes, unit: bytes = b"x.service", result: bytes = b"done") -> list[Any]:
    return [int(job.rpartition(b"/")[2]), job, unit, result]


def test_a_jobremoved_before_the_reply_is_not_lost() -> None:
    bus = FakeBus()

    def stop_and_finish_at_once() -> bytes:
        # dispatched while the call is still running, before its reply is seen
        for callback in bus.callbacks:
            callback(Msg(removed(b"/org/freedesktop/systemd1/job/6", result=b"canceled")))
            callback(Msg(removed(JOB)))
        return JOB

    bus.methods[b"StopUnit"] = stop_and_finish_at_once
    assert UnitControl(Systemd(bus)).stop("x.service", timeout=1) == \
        JobResult(JOB.decode(), "x.service", "done")


def test_a_jobremoved_queued_with_the_reply_and_others_first() -> None:
    bus = FakeBus()
    bus.queue = [removed(b"/org/freedesktop/systemd1/job/5", b"y.service"),
                 [1, 2], removed(JOB, result=b"failed")]  # [1, 2]: malformed, ignored
    sd = Systemd(bus)
    assert UnitControl(sd).start("x.service", timeout=1).result == "failed"
    assert "/org/freedesktop/systemd1/job/5" in sd._hub.finished  # kept for whoever asks


def test_a_job_that_vanishes_without_a_signal_is_gone(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(act_units, "GONE_CHECK", 0.01)
    bus = FakeBus()
    bus.methods[b"Get"] = DBusError(-errno.ENXIO, b"org.freedesktop.DBus.Error.UnknownObject",
                                    b"Unknown object")
    assert UnitControl(Systemd(bus)).stop("x.service", timeout=5) == \
        JobResult(JOB.decode(), "x.service", JOB_GONE)


def test_a_signal_queued_by_the_lookup_call_still_wins_over_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(act_units, "GONE_CHECK", 0.01)
    bus = FakeBus()
    gone = DBusError(-errno.ENXIO, b"org.freedesktop.DBus.Error.UnknownObject", b"gone")

    def lookup() -> Any:  # the signal came in while the Get call waited for its reply
        bus.queue += [removed(b"/org/freedesktop/systemd1/job/8")] * 3 + [removed(JOB)]
        return gone

    bus.methods[b"Get"] = lookup
    assert UnitControl(Systemd(bus)).stop("x.service", timeout=5).result == "done"


def test_timeout_names_the_unit_and_the_seconds() -> None:
    bus = FakeBus()
    t0 = time.monotonic()
    with pytest.raises(TimedOutError) as info:
        UnitControl(Systemd(bus)).stop("web@blue.service", timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 2
    assert info.value.exit_status == ExitStatus.TIMEOUT
    assert "web@blue.service" in info.value.message and "0.2s" in info.value.message


def test_eintr_while_waiting_is_not_an_error() -> None:
    bus = FakeBus()
    bus.wait_errors = [DBusError(-errno.EINTR, "Failed to wait for bus")]
    bus.methods[b"StopUnit"] = lambda: (bus.queue.append(removed(JOB)), JOB)[1]
    bus.queue = [removed(b"/org/freedesktop/systemd1/job/1")]
    assert UnitControl(Systemd(bus)).stop("x.service", timeout=2).result == "done"


def test_a_lost_bus_while_waiting_is_systemd_unavailable() -> None:
    bus = FakeBus()
    bus.process_errors = [DBusError(-errno.ECONNRESET, None, "Failed to process bus")]
    with pytest.raises(SystemdUnavailable, match="lost the system bus"):
        UnitControl(Systemd(bus)).stop("x.service", timeout=2)


def test_subscribe_once_and_already_subscribed_is_fine() -> None:
    bus = FakeBus()
    bus.methods[b"Subscribe"] = DBusError(
        -errno.EINVAL, b"org.freedesktop.systemd1.AlreadySubscribed", b"already")
    sd = Systemd(bus)
    for _ in range(2):
        bus.queue.append(removed(JOB))
        assert UnitControl(sd).stop("x.service", timeout=1).result == "done"
    assert bus.calls.count(b"Subscribe") == 1
    assert len(bus.callbacks) == 1


def test_the_signal_callback_is_pinned_until_close() -> None:
    bus = FakeBus()
    bus.queue.append(removed(JOB))
    sd = Systemd(bus)
    UnitControl(sd).stop("x.service", timeout=1)
    [callback] = bus.callbacks
    assert callback in PINNED
    sd.close()
    assert callback not in PINNED
    assert bus.closed


def test_results_nobody_asks_for_are_bounded() -> None:
    bus = FakeBus()
    bus.queue = [removed(f"/org/freedesktop/systemd1/job/{1000 + i}".encode())
                 for i in range(3000)] + [removed(JOB)]
    sd = Systemd(bus)
    assert UnitControl(sd).stop("x.service", timeout=10).result == "done"
    assert len(sd._hub.finished) <= REMEMBERED


def test_access_denied_on_a_job_names_the_unit_and_the_polkit_action() -> None:
    bus = FakeBus()
    bus.methods[b"StopUnit"] = DBusError(-errno.EACCES,
                                         b"org.freedesktop.DBus.Error.AccessDenied",
                                         b"Permission denied")
    with pytest.raises(NotPermittedError) as info:
        UnitControl(Systemd(bus)).stop("web.service", timeout=1)
    assert info.value.exit_status == ExitStatus.NOT_PERMITTED
    assert "stop web.service" in info.value.message
    assert "org.freedesktop.systemd1.manage-units" in info.value.message


def test_unit_file_state_of_a_missing_file_is_none() -> None:
    bus = FakeBus()
    bus.methods[b"GetUnitFileState"] = DBusError(
        -errno.ENOENT, b"org.freedesktop.DBus.Error.FileNotFound", b"No such file")
    assert Systemd(bus).unit_file_state("nope.service") is None
    bus.methods[b"GetUnitFileState"] = DBusError(
        -errno.EINVAL, b"org.freedesktop.DBus.Error.InvalidArgs", b"bad name")
    with pytest.raises(SystemdError):
        Systemd(bus).unit_file_state("bad")


def test_a_reload_that_outlives_the_call_timeout_is_timed_out() -> None:
    bus = FakeBus()
    bus.methods[b"Reload"] = DBusError(-errno.ETIMEDOUT, b"org.freedesktop.DBus.Error.Timeout",
                                       b"Connection timed out")
    with pytest.raises(TimedOutError, match="daemon-reload"):
        UnitControl(Systemd(bus)).reload()
