"""Preflight stopped with its unit: end like any stopped unit, not as a failure.

When a unit is stopped while its ExecStartPre= runs (two instances of a template started
together: the winner's preflight stops the loser, whose preflight waits for the port's
lock), systemd sends the control process its KillSignal= (SIGTERM unless set). A command
killed by a signal is a failed control process to systemd 252 (only exit status 0 is
clean for ExecStartPre=), so the unit would end `failed (Result: signal)`. Exiting 0
while the unit is being stopped lets it end `inactive`, as stopping it asked.

Exit 0 only when systemd says the unit is on its way down (deactivating): a SIGTERM from
anyone else must not let the service start unguarded, so then preflight fails (exit 1)
and says why.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

from portguard.errors import BlockedError, ExitStatus, PortguardError
from portguard.observe.units import Systemd

# What systemd may send a unit's processes when it stops it (KillSignal=, FinalKillSignal
# is SIGKILL and cannot be caught); SIGINT for a preflight run by hand and interrupted.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class StopRequested(Exception):
    """A stop signal arrived while preflight ran (raised from the signal handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Turn the stop signals into StopRequested for the body; the old handlers after."""
    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise StopRequested(signum)

    old = {s: signal.signal(s, raise_stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def being_stopped(systemd: Systemd, unit: str) -> bool:
    """Whether systemd is stopping `unit` now: it signals a unit's processes only once
    the unit is deactivating (stop-sigterm and the like)."""
    return systemd.active_state(unit) == "deactivating"


def settle(unit: str, stop: StopRequested, connect: Callable[[], Systemd],
           note: Callable[[str], object]) -> ExitStatus:
    """ExitStatus.OK when the unit is being stopped; else BlockedError."""
    name = signal.Signals(stop.signum).name
    # A second signal while asking systemd must not turn into a traceback.
    with contextlib.suppress(ValueError):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    try:
        systemd = connect()
        try:
            stopping = being_stopped(systemd, unit)
        finally:
            systemd.close()
    except PortguardError as exc:
        raise BlockedError(f"{unit}: preflight got {name} and cannot ask systemd whether "
                           f"the unit is being stopped ({exc.message}); not starting it"
                           ) from exc
    if not stopping:
        raise BlockedError(f"{unit}: preflight got {name} while the unit is not being "
                           "stopped; not starting it unguarded")
    note(f"{unit}: stopped while preflight ran ({name}); nothing left to do")
    return ExitStatus.OK
