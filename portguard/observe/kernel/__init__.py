"""observe.kernel: what the kernel says about ports.

`netlink` builds and parses sock_diag's bytes (pure), `sockets` is the only module that
speaks netlink, `listeners` lists every listening socket, `bindable` and `probe` ask
bind() itself (a socket made and closed at once: the kernel's verdict, nothing kept),
`sockopts` reads a socket's SO_REUSEADDR/SO_REUSEPORT through a pidfd duplicate.
"""
