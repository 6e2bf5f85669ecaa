"""A socket's own options, read through a duplicate of its owner's fd: the only module
that calls pidfd_getfd(2).

sock_diag does not report SO_REUSEADDR nor SO_REUSEPORT, yet they decide whether a
bound-only TCP socket or a UDP socket stops a bind(). pidfd_getfd (Linux >= 5.6) gives
us our own fd for the very socket (PTRACE_MODE_ATTACH: root, or the same user where
ptrace is allowed); getsockopt on it reads the flags; it is closed at once. Nothing is
sent or changed: the owner's socket lives on exactly as before (our duplicate only held
one more reference for microseconds). The duplicate's inode must be the socket's inode,
so a pid or fd number reused meanwhile is never read instead.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable

SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic table)



@functools.cache
def _syscall() -> Callable[[int, int, int, int], int]:
    import ctypes  # only here: `who` on a free port never pays for it

    found: Callable[[int, int, int, int], int] = ctypes.CDLL(None, use_errno=True).syscall
    return found


def reuse_flags(pid: int, fd: int, inode: int) -> tuple[bool, bool] | None:
    """(SO_REUSEADDR, SO_REUSEPORT) of the socket `inode` that `pid` holds as `fd`.

    None when it cannot be read: not permitted, no pidfd_getfd, the process gone, or fd
    no longer that socket.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        dup = _syscall()(SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if dup < 0:
        return None
    try:
        if os.fstat(dup).st_ino != inode:
            return None
        sock = socket.socket(fileno=os.dup(dup))
    except OSError:
        return None
    finally:
        os.close(dup)
    with sock:
        return (bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
                bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)))
