"""act: carry out what `decide` chose, safely.

Owns signals through pidfds after an identity re-check (`signals`), the per-port
flock that serialises guards (`lock`), every change to a unit (`units`) and every file
portguard writes (`files`). Stopping a unit goes through
`portguard.observe.systemd.units` (the one pystemd module). May import `decide`, `observe`,
`config`, `model`, `errors`; never `report` or `commands`.
"""
