"""Preflight as a unit's ExecStartPre=: what systemd shows of it, and stopping with it.

`systemctl status UNIT` shows journal lines only since the unit last left `inactive`; with
Restart= that is after the last refused attempt, so a refusal's reason on stderr and in
the journal scrolls out of view at once (issue 11 item 4). A STATUS= text stays, shown as
`Status: "..."` both when `systemctl start` returns and once the unit settles: preflight
sends a refusal there when $NOTIFY_SOCKET is set (the drop-in sets NotifyAccess=exec,
which accepts control processes); a clear start sends nothing, as systemd drops the old
text itself when it starts the unit again.

Preflight stopped with its unit: end like any stopped unit, not as a failure.

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

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported: cli.run and the fast path import this module
    import signal as _signal  # the same functions as _signal, as typeshed knows them
    from collections.abc import Callable, Mapping
    from types import FrameType

    from portguard.errors import ExitStatus
    from portguard.observe.systemd.units import Systemd
else:
    import _signal  # the C module, not signal.py: docs/architecture.md, start costs

STATUS_PREFIX = "portguard: "

# What systemd may send a unit's processes when it stops it (KillSignal=, FinalKillSignal
# is SIGKILL and cannot be caught); SIGINT for a preflight run by hand and interrupted.
STOP_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT)


def signal_name(signum: int) -> str:
    """SIGTERM for 15 (signal.py's enum, imported only when a stop came)."""
    from signal import Signals
    return Signals(signum).name


class StopRequested(Exception):
    """A stop signal arrived while preflight ran (raised from the signal handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


_early: list[int] = []  # stop signals that came before stop_signals() (catch_early)


def stop_pending() -> bool:
    """Whether a stop signal came before stop_signals() (the fast path then steps aside)."""
    return bool(_early)


def catch_early() -> None:
    """Remember stop signals from now until stop_signals() takes over: a twin's StopUnit
    can come while Python still imports preflight (seen with redis-server@ twins)."""
    for s in STOP_SIGNALS:
        _signal.signal(s, lambda signum, frame: _early.append(signum))


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)


class stop_signals:  # a `with` block's name, as the generator it replaced
    """Turn the stop signals into StopRequested for the body (one remembered by
    catch_early at once); the old handlers after. (A class, not contextlib's decorator:
    this module is imported by every guarded start.)"""

    def __enter__(self) -> None:
        self._old = {s: _signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
        if _early:
            self.__exit__()
            raise StopRequested(_early[0])

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            _signal.signal(s, handler)


def being_stopped(systemd: Systemd, unit: str) -> bool:
    """Whether systemd is stopping `unit` now: it signals a unit's processes only once
    the unit is deactivating (stop-sigterm and the like)."""
    return systemd.active_state(unit) == "deactivating"


def settle(unit: str, stop: StopRequested, connect: Callable[[], Systemd],
           note: Callable[[str], object]) -> ExitStatus:
    """ExitStatus.OK when the unit is being stopped; else BlockedError."""
    from portguard.errors import BlockedError, ExitStatus, PortguardError
    name = signal_name(stop.signum)
    # A second signal while asking systemd must not turn into a traceback.
    try:
        for s in STOP_SIGNALS:
            _signal.signal(s, _signal.SIG_IGN)
    except ValueError:
        pass
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


def tell_systemd(status: ExitStatus, error: str, env: Mapping[str, str] | None = None) -> None:
    """STATUS= for `systemctl status`: the refusal; nothing when the ports are clear (systemd
    clears the text of an earlier refusal when it starts the unit again) or outside a unit
    with a notify socket."""
    if status == 0 or not (os.environ if env is None else env).get("NOTIFY_SOCKET"):
        return  # 0: ExitStatus.OK
    from portguard.report.notify import Notifier
    notifier = Notifier(env)
    try:
        notifier.status(STATUS_PREFIX + error if error else f"{STATUS_PREFIX}exit {int(status)}")
    except OSError:
        pass  # best effort: the refusal is on stderr and in the journal anyway
    finally:
        notifier.close()
