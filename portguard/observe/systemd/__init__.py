"""observe.systemd: systemd's own view, read-only.

`units` is the only module that imports pystemd: the bus connection and the unit reads
(changes to units go through it from `act.units`); `bus_signals` and `dbus_errors` are its
signal callbacks and error mapping; `activation` maps PID 1's listeners to `.socket`
units; `journal` is the only journal reader.
"""
