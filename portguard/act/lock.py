"""Serialise guards acting on the same port: one flock(2) file per port under /run/portguard.

flock locks belong to the open file: when a guard dies, the kernel drops its lock, so a
stale lock from a dead guard is reclaimed by construction (the file stays, unlocked).
Ports are locked in sorted order, so two guards needing overlapping sets cannot deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator

from portguard.errors import NotPermittedError, TimedOutError
from portguard.model import Proto

LOCK_DIR = "/run/portguard"


class LockTimedOut(TimedOutError):
    """Another guard held a port's lock for the whole budget."""
_POLL = 0.05


def lock_path(port: int, proto: Proto, directory: str = LOCK_DIR) -> str:
    return os.path.join(directory, f"{proto}-{port}.lock")


@contextlib.contextmanager
def port_locks(ports: Iterable[tuple[int, Proto]], *, timeout: float,
               directory: str = LOCK_DIR,
               on_wait: Callable[[int, Proto], None] | None = None,
               clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Hold an exclusive lock on every (port, proto) for the body; bounded wait."""
    try:
        # Root-only: flock needs only read access, so a lock file others can open would
        # let any local user block every preflight on that port.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    except PermissionError as exc:
        raise NotPermittedError(f"cannot create {directory}: {exc.strerror} "
                                "(preflight needs root to act on ports)") from exc
    deadline = clock() + timeout
    fds: list[int] = []
    try:
        for port, proto in sorted(set(ports)):
            path = lock_path(port, proto, directory)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except PermissionError as exc:
                raise NotPermittedError(f"cannot open {path}: {exc.strerror} "
                                        "(preflight needs root to act on ports)") from exc
            fds.append(fd)
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told and on_wait is not None:
                        on_wait(port, proto)
                        told = True
                    if clock() >= deadline:
                        raise LockTimedOut(
                            f"another portguard has held the lock on {port}/{proto} for "
                            f"{timeout:.1f}s ({path})") from None
                    time.sleep(_POLL)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for a person wondering who holds it
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing drops the flock
