"""Storing a unit's learned profile (docs/identity.md, "Profiles"): root's alone, 0600
in a 0700 directory, written atomically; read back by observe.profiles.load."""

from __future__ import annotations

import time

from portguard.act import files
from portguard.model import Profile
from portguard.observe import profiles


def record(unit: str, control_group: str, *, store: str = profiles.STORE) -> Profile | None:
    """Learn `unit`'s profile from its own cgroup now (it must be active) and store it;
    None (nothing stored, an older profile kept) when nothing there listens or it cannot
    be told for certain."""
    profile = profiles.learn(unit, control_group, now=time.time())
    if profile is not None:
        files.write_atomic(profiles.path_for(unit, store), profiles.encode(profile),
                           mode=0o600, dir_mode=0o700)
    return profile
