"""bind() as a question to the kernel: would this socket bind now? (made, closed at once)

The one place portguard binds a port it does not keep. `observe.kernel.probe` asks it as a
service would bind; `who` asks `nothing_bound` before dumping sockets. Plain values in,
the C `_socket` module underneath: `who` on a free port imports nothing else.
"""

from __future__ import annotations

import _socket
import errno


def probe(family: int, host: str, port: int, *, tcp: bool, reuse_address: bool = False,
          reuse_port: bool = False, v6only: bool | None = None) -> OSError | None:
    """bind() (no listen()) a socket so, close it; None when it bound, else the error."""
    kind = _socket.SOCK_STREAM if tcp else _socket.SOCK_DGRAM
    try:
        sock = _socket.socket(family, kind)
    except OSError as err:
        return err
    try:
        if reuse_address:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if family == _socket.AF_INET6 and v6only is not None:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, int(v6only))
        # getaddrinfo turns a `%scope` (link-local) into sin6_scope_id; given bytes, it
        # skips the IDNA codec (unicodedata, ~2 ms) a str host goes through.
        info = _socket.getaddrinfo(host.encode("ascii", "replace"), port, family, kind, 0,
                                   _socket.AI_NUMERICHOST)
        sock.bind(info[0][4])
    except OSError as err:  # socket.gaierror is one too
        return err
    finally:
        sock.close()
    return None


# A wildcard `[::]` bind() where IPv6 is missing: no IPv6 in the kernel (EAFNOSUPPORT), or
# disabled (net.ipv6.conf.*.disable_ipv6: EADDRNOTAVAIL). There are no IPv6 sockets then.
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def probe_wildcard(port: int, *, tcp: bool, reuse_address: bool = False,
                   reuse_port: bool = False) -> OSError | None:
    """probe() on the strictest wildcard, a dual-stack `[::]`, or `0.0.0.0` where this host
    has no IPv6."""
    err = probe(_socket.AF_INET6, "::", port, tcp=tcp, reuse_address=reuse_address,
                reuse_port=reuse_port, v6only=False)
    if err is not None and err.errno in NO_IPV6:
        return probe(_socket.AF_INET, "0.0.0.0", port, tcp=tcp, reuse_address=reuse_address,
                     reuse_port=reuse_port)
    return err


def bind_as(address: str | None, port: int, *, tcp: bool, reuse_address: bool,
            reuse_port: bool = False, v6only: bool | None = None) -> OSError | None:
    """probe() as a service that declared `address` (None: none) binds: no address, the
    strictest wildcard (probe_wildcard); else that address, `[..]` stripped, IPv6 when it
    has a colon. (`observe.kernel.probe.probe_bind` says what each errno means.)"""
    if address is None:
        return probe_wildcard(port, tcp=tcp, reuse_address=reuse_address,
                              reuse_port=reuse_port)
    host = address.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    return probe(family, host, port, tcp=tcp, reuse_address=reuse_address,
                 reuse_port=reuse_port, v6only=v6only)


def in_use(err: OSError | None) -> bool:
    """A probe's answer is a conflict: EADDRINUSE. (An address this host lacks, EACCES ...
    are no conflict with a holder: the service meets them itself.)"""
    return err is not None and err.errno == errno.EADDRINUSE


def nothing_bound(port: int, proto: str) -> bool:
    """True only when no socket of `proto` ("tcp"/"udp") in this network namespace has
    local port `port`, in any state, on any address: bind() of a dual-stack `[::]`,
    without SO_REUSEADDR or SO_REUSEPORT, succeeded.

    The kernel keeps every socket bound to a port in that port's bind bucket (listeners,
    bound-only, accepted and outgoing connections, TIME_WAIT; UDP's in its port slot)
    and refuses such a bind() if any one is there: the answer costs one hash lookup, where
    a sock_diag dump walks every socket of the host. False means "ask sock_diag": a socket
    may be there, or the probe could not be made (a port under 1024 without
    CAP_NET_BIND_SERVICE). Like every probe it holds the port for microseconds: `who`
    uses it, the daemon does not.
    """
    return probe_wildcard(port, tcp=proto == "tcp") is None
