"""observe: who holds a port, read-only. Sockets -> processes -> units, in that order.

Owns every contact with the running system that only looks: sock_diag over netlink
(`netlink` builds the bytes, `sockets` talks), /proc and psutil (`processes`), systemd's
D-Bus API through pystemd (`units`, with `dbus_errors` and `bus_signals`), cgroup paths
(`cgroups`), container runtimes' records on disk (`containers`, parsing in
`container_records`), and the `Observer` that combines them (`observer`). Each outside interface
has exactly one module here. May import `config`, `model` and `errors`; nothing later on
the path (decide, act, report, commands).
"""
