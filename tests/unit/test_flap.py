"""flap.FlapGuard: `limit` resolutions per window, the (limit+1)th trips, a hold until calm.

A fake clock drives every test; a property test checks the one promise the daemon relies
on (never more than `limit` allowed resolutions of a key inside any window) over random
schedules.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portguard.decide.flap import FlapGuard


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


KEY = ("web@.service", 8080, "tcp", "web@blue.service")


def guard(limit: int = 3, window: float = 600.0, **kwargs: int) -> tuple[FlapGuard, Clock]:
    clock = Clock()
    return FlapGuard(limit, window, clock, **kwargs), clock


def test_limit_resolutions_are_allowed_and_the_next_one_trips() -> None:
    g, clock = guard(limit=3)
    for _ in range(3):
        assert not g.tripped(KEY)
        assert g.record(KEY) is True
        clock.advance(10)
    assert not g.tripped(KEY)  # three resolved: still allowed to have done so
    assert g.record(KEY) is False  # the fourth inside the window: refused
    assert g.tripped(KEY)
    assert g.tripped_keys() == [KEY]


def test_limit_one_trips_on_the_second() -> None:
    g, _ = guard(limit=1)
    assert g.record(KEY)
    assert not g.record(KEY)
    assert g.tripped(KEY)


def test_a_resolution_leaves_the_window_exactly_window_seconds_later() -> None:
    g, clock = guard(limit=2, window=60)
    g.record(KEY)  # t=0
    clock.advance(30)
    g.record(KEY)  # t=30
    clock.advance(29.999)  # t=59.999: both inside
    assert g.record(KEY) is False
    g2, clock2 = guard(limit=2, window=60)
    g2.record(KEY)
    clock2.advance(30)
    g2.record(KEY)
    clock2.advance(30)  # t=60: the first is out (now - t < window is inside)
    assert g2.record(KEY) is True
    assert not g2.tripped(KEY)


def test_a_steady_rate_below_the_limit_never_trips() -> None:
    g, clock = guard(limit=3, window=600)
    for _ in range(100):  # one every 200 s: exactly 3 per window, never 4
        assert g.record(KEY)
        clock.advance(200)
    assert g.tripped_keys() == []


def test_recording_while_tripped_extends_the_hold_until_a_calm_window() -> None:
    g, clock = guard(limit=2, window=100)
    g.record(KEY)
    g.record(KEY)
    assert not g.record(KEY)  # trips at t=0; hold until 100
    for _ in range(5):  # the conflict is seen again every 60 s: never fought
        clock.advance(60)
        assert not g.record(KEY)
        assert g.tripped(KEY)
    last = clock.now
    clock.advance(99.9)
    assert g.tripped(KEY)  # 99.9 s of calm: not yet
    clock.now = last + 100
    assert not g.tripped(KEY)  # a whole window of calm: free again
    assert g.record(KEY) and g.record(KEY)  # ... with a fresh history: `limit` again
    assert not g.record(KEY)


def test_asking_tripped_without_recording_holds_exactly_one_window() -> None:
    g, clock = guard(limit=1, window=50)
    g.record(KEY)
    clock.advance(5)
    assert not g.record(KEY)  # tripped at t=5
    clock.advance(49)
    assert g.tripped(KEY)
    clock.advance(1)  # t=55 = trip + window
    assert not g.tripped(KEY)
    assert g.tripped_keys() == []
    assert g.record(KEY)


def test_keys_are_independent() -> None:
    g, _ = guard(limit=1)
    other = ("web@.service", 8443, "tcp", "web@blue.service")
    assert g.record(KEY)
    assert not g.record(KEY)
    assert g.record(other)
    assert g.tripped(KEY) and not g.tripped(other)
    assert g.tripped_keys() == [KEY]


def test_tripped_keys_in_order_of_last_record() -> None:
    g, clock = guard(limit=1, window=100)
    a, b, c = "a", "b", "c"
    for key in (a, b, c):
        g.record(key)
        g.record(key)  # each trips
    g.record(a)  # seen again: most recent
    assert g.tripped_keys() == [b, c, a]
    clock.advance(100)
    assert g.tripped_keys() == []


def test_unknown_key_is_not_tripped_and_leaves_no_state() -> None:
    g, _ = guard()
    assert not g.tripped("never seen")
    assert len(g) == 0


def test_expired_keys_are_dropped() -> None:
    g, clock = guard(limit=3, window=10)
    for i in range(1000):  # a new key every second, as if every pass met a new conflict
        g.record(("stray", i))
        clock.advance(1)
    assert len(g) <= 10  # only those inside the window are remembered
    clock.advance(10)
    assert g.tripped_keys() == []
    assert len(g) == 0


def test_a_key_keeps_at_most_limit_timestamps() -> None:
    g, clock = guard(limit=3, window=1e9)
    for _ in range(10_000):
        g.record(KEY)
        clock.advance(0.001)
    state = g._keys[KEY]
    assert len(state.times) <= 3
    assert g.tripped(KEY)


def test_max_keys_forgets_untripped_keys_first_and_never_the_one_just_recorded() -> None:
    g, _ = guard(limit=1, window=1e6, max_keys=3)
    g.record("t")
    g.record("t")  # tripped, the oldest
    for key in ("a", "b", "c", "d"):
        assert g.record(key)
        assert len(g) <= 3
        assert key in g._keys
    assert g.tripped("t")  # untripped keys went first
    assert set(g._keys) == {"t", "c", "d"}


def test_max_keys_one_keeps_the_newest() -> None:
    g, _ = guard(limit=1, window=1e6, max_keys=1)
    g.record("a")
    assert not g.record("a")
    assert g.record("b")  # the tripped "a" must give way: "b" is the one just recorded
    assert set(g._keys) == {"b"}


@pytest.mark.parametrize(("limit", "window"), [(0, 10), (-1, 10), (True, 10), (2.5, 10),
                                               (3, 0), (3, -1), (3, float("nan"))])
def test_bad_arguments_are_refused(limit: object, window: float) -> None:
    with pytest.raises(ValueError):
        FlapGuard(limit, window)  # type: ignore[arg-type]


def test_the_default_clock_is_monotonic() -> None:
    g = FlapGuard(2, 60)
    assert g._clock is time.monotonic
    assert g.record(KEY) and g.record(KEY) and not g.record(KEY)


events = st.lists(
    st.tuples(st.floats(min_value=0, max_value=50, allow_nan=False),  # seconds to wait
              st.sampled_from(["a", "b", "c"]),  # key
              st.booleans()),  # ask tripped() first, skip record() when tripped
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 5), window=st.floats(1, 100, allow_nan=False), schedule=events)
def test_never_more_than_limit_allowed_inside_any_window(
        limit: int, window: float, schedule: list[tuple[float, str, bool]]) -> None:
    g, clock = guard(limit=limit, window=window)
    allowed: dict[str, list[float]] = {}
    for wait, key, ask_first in schedule:
        clock.advance(wait)
        if ask_first and g.tripped(key):
            assert key in g.tripped_keys()
            continue
        was_tripped = g.tripped(key)
        ok = g.record(key)
        if was_tripped:
            assert not ok  # a tripped key is never fought
        if ok:
            allowed.setdefault(key, []).append(clock.now)
            assert not g.tripped(key)
        else:
            assert g.tripped(key)
        assert len(g) <= 3
    for times in allowed.values():
        for i, start in enumerate(times):  # any window that opens at an allowed one
            inside = [t for t in times[i:] if t < start + window]  # the guard's spelling
            assert len(inside) <= limit
