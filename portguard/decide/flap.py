"""The daemon's flap guard: a conflict resolved too often is reported, no longer fought.

docs/daemon.md (`flap_limit`, `flap_window`): "the same conflict resolved this often
within flap_window is reported, no longer fought". Two automations that disagree (a
deploy script restarting a twin, a `Restart=always` stray, another guard) would otherwise
ping-pong a port forever, each round stopping a service. Precisely:

- **Allowed**: up to `limit` resolutions of one key within any `window` seconds.
- **Trip**: the (limit+1)th occurrence while `limit` are still inside the window is
  refused (`record` returns False) and trips the key. An occurrence at time t is inside
  the window at time now while `now < t + window` (one spelling everywhere: in floating
  point `now - t < window` and `now < t + window` can disagree at the boundary).
- **Hold**: a tripped key stays tripped until a whole `window` passes in which it was not
  recorded again. Every `record` of a tripped key (the conflict seen again, still not
  fought) pushes the end of the hold to `now + window`: portguard keeps out of a fight
  that is still going on, and takes the port up again once things have been calm for a
  whole window. Then the key starts afresh, with no history.

Intended use, once per occurrence, *before* acting::

    if guard.record(key):
        resolve(conflict)
    else:
        report(conflict)           # flapping: journal it, portguard_flapping = 1

so at most `limit` resolutions are ever made per window. A caller that asks `tripped()`
first and skips `record()` while tripped gets a hold of exactly one window from the trip,
then up to `limit` more resolutions: still bounded, only without the extension.

The key names the *conflict*, not the process: e.g. `(unit, port, proto, holder_unit or
holder_exe)`. A key holding a pid never trips against a stray that respawns with a new
pid each time.

Memory is bounded: a key keeps at most `limit` timestamps (refused occurrences are not
stored), keys whose history has expired are dropped on every `record` and
`tripped_keys`, and at most `max_keys` keys are kept (beyond that the least recently
recorded untripped key is forgotten first). Not thread-safe; the daemon's single loop
owns it. Pure: no I/O, stdlib only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable

__all__ = ["FlapGuard"]

DEFAULT_MAX_KEYS = 10_000  # far above services x ports x holders on any real host


class _Key:
    """One key's state: recent resolutions (oldest first) and, when tripped, the hold's end."""

    __slots__ = ("hold_until", "times")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.hold_until: float | None = None


class FlapGuard:
    """Counts resolutions per key in a sliding window; see the module docstring."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic,
                 *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"flap limit must be a whole number >= 1, not {limit!r}")
        if not window > 0:  # also refuses NaN
            raise ValueError(f"flap window must be > 0 seconds, not {window!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys!r}")
        self.limit = limit
        self.window = float(window)
        self.max_keys = max_keys
        self._clock = clock
        self._keys: dict[Hashable, _Key] = {}  # least recently recorded first

    def record(self, key: Hashable) -> bool:
        """Note one occurrence of `key` about to be resolved; whether to resolve it.

        True: within the limit; the resolution is counted. False: the key is tripped,
        either by this occurrence (the (limit+1)th inside the window) or earlier and still
        held; do not fight, report. A refused occurrence extends the hold to now + window.
        """
        now = self._clock()
        self._sweep(now)
        state = self._keys.pop(key, None) or _Key()
        self._keys[key] = state  # most recently recorded last
        if state.hold_until is not None:
            state.hold_until = now + self.window
            return False
        self._expire(state, now)
        if len(state.times) >= self.limit:
            state.times.clear()  # the hold supersedes them; it outlasts every one
            state.hold_until = now + self.window
            return False
        state.times.append(now)
        self._cap(keep=key)
        return True

    def tripped(self, key: Hashable) -> bool:
        """Whether `key` is tripped now: too many resolutions lately, not to be fought."""
        state = self._keys.get(key)
        if state is None:
            return False
        now = self._clock()
        if state.hold_until is not None and now >= state.hold_until:
            del self._keys[key]  # calm for a whole window: start afresh
            return False
        return state.hold_until is not None

    def tripped_keys(self) -> list[Hashable]:
        """Every key tripped now, least recently recorded first."""
        self._sweep(self._clock())
        return [key for key, state in self._keys.items() if state.hold_until is not None]

    def __len__(self) -> int:
        """Keys remembered (tripped or with resolutions inside the window, give or take
        those that expired since the last sweep)."""
        return len(self._keys)

    def _expire(self, state: _Key, now: float) -> None:
        times = state.times
        while times and now >= times[0] + self.window:
            times.popleft()

    def _sweep(self, now: float) -> None:
        """Drop keys with nothing left: held past their hold, or every resolution expired."""
        gone = []
        for key, state in self._keys.items():
            if state.hold_until is not None:
                if now >= state.hold_until:
                    gone.append(key)
            elif not state.times or now >= state.times[-1] + self.window:
                gone.append(key)
        for key in gone:
            del self._keys[key]

    def _cap(self, keep: Hashable) -> None:
        """Forget keys beyond max_keys, never `keep` (just recorded): least recently
        recorded untripped keys first, then tripped ones."""
        excess = len(self._keys) - self.max_keys
        if excess <= 0:
            return
        others = [(s.hold_until is not None, k) for k, s in self._keys.items() if k != keep]
        # stable sort: untripped (False) before tripped, each least recently recorded first
        for _, key in sorted(others, key=lambda pair: pair[0])[:excess]:
            del self._keys[key]
