"""The daemon learns each configured unit's profile on each start (docs/identity.md,
"Profiles"): systemd's D-Bus signals say a unit changed; once it is active, with an
invocation not learned yet, its own cgroup's listeners are read and stored. A unit whose
processes do not listen yet (Type=simple is active at exec) is tried again on the next
passes, a bounded number of times."""

from __future__ import annotations

from collections.abc import Iterable

from portguard.act import profiles
from portguard.errors import PortguardError
from portguard.observe.systemd.units import Systemd
from portguard.report.journal import Event, Journal
from portguard.text import format_ports

TRIES = 5  # passes a started unit is looked at for listeners before it is let go


class Learner:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.pending: dict[str, int] = {}  # unit -> passes it was looked at
        self.learned: dict[str, str] = {}  # unit -> the invocation learned from

    def note(self, units: Iterable[str]) -> None:
        """These units changed (or the daemon just started): look at them."""
        for unit in units:
            self.pending.setdefault(unit, 0)

    def run(self, systemd: Systemd) -> None:
        for unit in list(self.pending):
            try:
                info = systemd.describe(unit)
            except PortguardError:
                continue  # the bus went away: the next pass tries again
            if info.active_state != "active" or self.learned.get(unit) == \
                    info.invocation_id:
                if info.active_state not in ("activating", "reloading"):
                    del self.pending[unit]  # stopped, failed, or already learned
                continue
            learned = profiles.record(unit, info.control_group)
            if learned is None:
                self.pending[unit] += 1
                if self.pending[unit] >= TRIES:
                    del self.pending[unit]
                continue
            del self.pending[unit]
            self.learned[unit] = info.invocation_id
            ports = format_ports((s.port, s.proto) for s in learned.sockets)
            self.journal.emit(Event.PROFILE_LEARNED, f"{unit}: profile learned: {learned}, "
                              f"listening on {ports}", unit=unit, action="none",
                              result="learned")
