"""Holders that leave by themselves while preflight runs (their SOAK_LEAVE_FILE)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from support.soak.model import LaneView, Scenario
from support.soak.world import SIGDIR, WAIT_ID


class Leaver:
    """Tells holders to leave (their SOAK_LEAVE_FILE): racing ones `leave` s after
    preflight starts, the others `leave` s after portguard's "waiting up to" record."""

    def __init__(self, lane: LaneView, sc: Scenario, subject: str) -> None:
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
