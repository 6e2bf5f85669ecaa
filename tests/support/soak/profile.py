"""The soak service's stored profile (docs/identity.md, "Profiles"), written per scenario."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from support.sandbox import Sandbox
from support.soak.model import Scenario
from support.soak.oracle import profile_uid
from support.soak.world import HOLDER, PROFILE_DIR, PY3


def write_profile(sb: Sandbox, host: Callable[[str], str], unit: str, sc: Scenario) -> None:
    """`unit`'s stored profile, as `portguard install` would have learned it (portguard's
    own encoder writes the stored form: this is setup, not the oracle): the service's
    program (HOLDER under python3) as the other user. "replaced": the script file it
    names is not the one that was learned. No profile: none stored."""
    path = f"{PROFILE_DIR}/{unit}.json"
    if not sc.profile:
        sb.run(["rm", "-f", path])
        return
    from portguard.model import FileId, Profile, ProgramId
    from portguard.observe.profiles import encode
    python = os.path.realpath(PY3)
    exe, script = os.stat(python), os.stat(host(HOLDER))
    ino = script.st_ino + (1 << 20 if sc.profile == "replaced" else 0)
    program = ProgramId(FileId(exe.st_dev, exe.st_ino), target=FileId(script.st_dev, ino),
                        interpreted=True)
    uid = profile_uid(sc)
    blob = encode(Profile(unit, program, (python, HOLDER), uid, "nobody" if uid else "root",
                          seen=time.time()))
    sb.run(["/bin/sh", "-c", 'umask 077; mkdir -p "$1"; chmod 700 "$1" /var/lib/portguard; '
            'cat > "$2"', "profile", PROFILE_DIR, path], input=blob.decode(), check=True)
