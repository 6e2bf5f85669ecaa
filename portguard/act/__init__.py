"""act: carry out what `decide` chose, safely.

Owns signals through pidfds after an identity re-check (`signals`) and the per-port
flock that serialises guards (`lock`). Stopping a unit goes through
`portguard.observe.systemd.units` (the one pystemd module). May import `decide`, `observe`,
`config`, `model`, `errors`; never `report` or `commands`.
"""
