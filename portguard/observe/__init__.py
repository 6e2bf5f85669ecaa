"""observe: who holds a port, read-only. Sockets -> processes -> units, in that order.

One sub-package per system it reads: `kernel` (sockets over sock_diag, bind() asked as a
question, a socket's own options), `procs` (/proc and psutil, cgroups), `systemd` (units
over D-Bus through pystemd, the journal), `containers` (what runtimes record on disk).
`observer` combines them into holders. Nothing here changes the system: changes live in
`act`. Each outside interface has exactly one module. May import `config`, `model` and
`errors`; nothing later on the path (decide, act, report, commands).
"""
