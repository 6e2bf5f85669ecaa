"""Ask the kernel what `portguard.decide.conflicts`' rules cannot know.

sock_diag cannot show an observed socket's SO_REUSEADDR / SO_REUSEPORT. `Kernel` (the
live `conflicts.Kernel`) reads them from the socket itself through its owner's fd
(`observe.kernel.sockopts`), and where that is not possible (a TIME_WAIT socket has no owner;
not root) `probe_bind` asks bind() itself, as the service would do it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from portguard.model import BindIntent, Holder, PeerOptions, Process, Proto, Socket
from portguard.observe.kernel import bindable


def probe_bind(intent: BindIntent) -> OSError | None:
    """bind() (no listen()) a socket as the service would, close it, return the error
    (bindable.bind_as).

    None: the bind succeeds now. Else the OSError; its errno says what: EADDRINUSE a
    conflict; EADDRNOTAVAIL an address not on this host (no conflict, but the service
    fails all the same); EACCES a port under net.ipv4.ip_unprivileged_port_start without
    CAP_NET_BIND_SERVICE; EAFNOSUPPORT no IPv6; EINVAL a v4-mapped address with v6only.
    No listen() needed: `inet_csk_listen_start` re-runs the same conflict check, so it
    fails only if the sockets change meanwhile (e.g. a bound, not yet listening peer
    listens first). No address: the strictest wildcard, a dual-stack `[::]`, falling
    back to `0.0.0.0` where IPv6 is unavailable.
    Limits: the probe has portguard's uid, so a SO_REUSEPORT service of another uid is
    judged a stranger to its group (EADDRINUSE); and it holds the port for microseconds.
    """
    return bindable.bind_as(intent.address, intent.port, tcp=intent.proto is Proto.TCP,
                            reuse_address=intent.reuse_address,
                            reuse_port=intent.reuse_port, v6only=intent.v6only)


def refused(intent: BindIntent) -> bool:
    """Does bind() fail with EADDRINUSE now?"""
    return bindable.in_use(probe_bind(intent))


class Kernel:
    """`conflicts.Kernel` on this host: options from owners' fds, else bind() itself.

    `holders` give the owners (and their fds) already found; with `lookup`, a socket's
    owners are searched in /proc when first asked (the daemon keeps none).
    """

    def __init__(self, holders: Iterable[Holder] = (), *, lookup: bool = False) -> None:
        self._owners: dict[int, list[Process]] = {}
        for holder in holders:
            self._owners.setdefault(holder.socket.inode, []).extend(holder.processes)
        self._lookup = lookup
        self._known: dict[int, PeerOptions | None] = {}

    def _processes(self, sock: Socket) -> Sequence[Process]:
        if sock.inode not in self._owners and self._lookup:
            from portguard.observe.procs import processes  # /proc and pwd: not for a probe
            found = processes.find_owners([sock]).by_inode.get(sock.inode, ())
            self._owners[sock.inode] = list(found)
        return self._owners.get(sock.inode, ())

    def options(self, sock: Socket) -> PeerOptions | None:
        if not sock.inode:
            return None  # kernel-held (TIME_WAIT & co.): no fd to read
        if sock.inode not in self._known:
            from portguard.observe.kernel import sockopts  # ctypes & co: not for the fast path
            flags = next((f for p in self._processes(sock) for fd in p.fds
                          if (f := sockopts.reuse_flags(p.pid, fd, sock.inode))), None)
            self._known[sock.inode] = PeerOptions(*flags) if flags else None
        return self._known[sock.inode]

    def refused(self, intent: BindIntent) -> bool:
        return refused(intent)
