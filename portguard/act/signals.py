"""Acting on a plan: stop twin units over D-Bus, signal processes through pidfds, wait.

Safety rules that never bend (the contract (docs/)):
- a process is signalled only through a pidfd opened *before* its identity is checked
  again (same start time as inspected, still holding the socket, and for an interpreter
  the same script file, by st_dev/st_ino, as its path resolved to when it was judged),
  so a pid reused by another process, or a script path whose symlink was swapped,
  between the scan and the signal is never hit;
- the signal is followed by SIGCONT, so a stopped (SIGSTOP) holder can act on it;
- a zombie is waited for, never signalled again;
- every wait has a bound (the preflight's deadline, `kill_after`).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

from portguard.errors import NotPermittedError
from portguard.model import Process
from portguard.observe.procs import processes, programs

_POLL = 0.05


class Clock(NamedTuple):
    """Time, injectable for tests."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


REAL_CLOCK = Clock()


class SignalOutcome(NamedTuple):
    pid: int
    result: str  # exited | killed | identity-changed | released | gone | still-running
    #              | unverified (no pidfd, or its identity could not be read: not signalled)
    detail: str
    signalled: tuple[str, ...] = ()  # signal names actually sent


def _wait_exit(pidfd: int, seconds: float) -> bool:
    """True once the process behind the pidfd has exited (it is readable then)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(seconds * 1000))))


def signal_process(proc: Process, inode: int, sig: signal.Signals, *, kill_after: float,
                   deadline: float, clock: Clock = REAL_CLOCK,
                   proc_root: str = processes.PROC) -> SignalOutcome:
    """TERM (or the configured signal) then SIGKILL after `kill_after`, by pidfd only.

    `proc` is the process as it was inspected; `inode` the socket it was seen holding.
    """
    pid = proc.pid
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return SignalOutcome(pid, "gone", "exited before it could be signalled")
    except PermissionError as exc:
        raise NotPermittedError(f"cannot open a pidfd for pid {pid}: {exc.strerror} "
                                "(needs root or CAP_KILL)") from exc
    except OSError as exc:  # EMFILE/ENFILE/ENOMEM, ENOSYS before Linux 5.3: no pidfd, no kill
        return SignalOutcome(pid, "unverified",
                             f"cannot open a pidfd ({exc.strerror}): not signalled")
    try:
        # The pidfd now pins one process; check it is still the one we inspected.
        try:
            started = processes.start_time(pid, proc_root)
            current_state = processes.state(pid, proc_root)
        except processes.ProcessGone:
            return SignalOutcome(pid, "gone", "exited before it could be signalled")
        except OSError as exc:  # EMFILE: the pidfd took the last descriptor
            return SignalOutcome(pid, "unverified", f"cannot read /proc/{pid}/stat "
                                 f"({exc.strerror}): identity unchecked, not signalled")
        if started != proc.start_time:
            return SignalOutcome(pid, "identity-changed",
                                 f"pid {pid} is now another process (start time {started}, "
                                 f"inspected {proc.start_time}): not signalled")
        if current_state == "Z":
            _wait_exit(pidfd, 0)
            return SignalOutcome(pid, "gone", "had already exited (a zombie): not signalled")
        if _script_changed(proc, proc_root):
            return SignalOutcome(pid, "identity-changed",
                                 f"pid {pid}'s script is no longer the file it was judged "
                                 "by (its path now leads elsewhere): not signalled")
        if inode:
            try:
                holds = inode in processes.socket_fds(pid, {inode}, proc_root)
            except PermissionError as exc:
                raise NotPermittedError(f"cannot read /proc/{pid}/fd: needs root "
                                        "(CAP_SYS_PTRACE)") from exc
            except OSError as exc:
                return SignalOutcome(pid, "unverified", f"cannot read /proc/{pid}/fd "
                                     f"({exc.strerror}): socket unchecked, not signalled")
            if not holds:
                return SignalOutcome(pid, "released",
                                     "no longer holds the socket: not signalled")
        sent = [sig.name]
        signal.pidfd_send_signal(pidfd, sig)
        if sig is not signal.SIGCONT:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            except ProcessLookupError:  # died of the first signal and was reaped already
                return SignalOutcome(pid, "exited", f"exited after {sig.name}", tuple(sent))
        grace = max(0.0, min(kill_after, deadline - clock.now()))
        if _wait_exit(pidfd, grace):
            return SignalOutcome(pid, "exited", f"exited after {sig.name}", tuple(sent))
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        sent.append("SIGKILL")
        # SIGKILL cannot be ignored, but a process in uninterruptible sleep can delay it:
        # still bounded by the deadline (at least a moment to let the kernel reap it).
        if _wait_exit(pidfd, max(0.5, deadline - clock.now())):
            return SignalOutcome(pid, "killed", f"ignored {sig.name} for {grace:.1f}s; "
                                 "killed with SIGKILL", tuple(sent))
        return SignalOutcome(pid, "still-running", "survived SIGKILL until the deadline",
                             tuple(sent))
    except ProcessLookupError:
        return SignalOutcome(pid, "exited", "exited while being signalled")
    finally:
        os.close(pidfd)


def _script_changed(proc: Process, proc_root: str) -> bool:
    """Whether the script an interpreter was judged by (pinned by file identity when it
    was inspected) is another file now, resolved again through the same path in the
    process's own root and cwd: a symlink swapped since the check (docs/security.md)."""
    pinned = proc.program_id
    if pinned is None or not pinned.interpreted or pinned.module:
        return False
    now = programs.of_process(proc.pid, proc.cmdline, proc.exe, proc_root)
    return now is None or (now.exe, now.target) != (pinned.exe, pinned.target)


def wait_until(done: Callable[[], bool], deadline: float, clock: Clock = REAL_CLOCK,
               interval: float = _POLL) -> bool:
    """Poll `done` until it is true (True) or the deadline passes (False)."""
    while True:
        if done():
            return True
        if clock.now() >= deadline:
            return False
        clock.sleep(min(interval, max(0.0, deadline - clock.now())))
