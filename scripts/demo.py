"""`make demo`: validate the embedded example config, then ask who holds its ports.

Runs the real CLI as a user would, printing each command before its output.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
PORTGUARD = [sys.executable, "-m", "portguard"]


def run(args: list[str]) -> int:
    print(f"\n$ portguard {shlex.join(args)}", flush=True)
    return subprocess.run([*PORTGUARD, *args], cwd=REPO, check=False).returncode


def main() -> int:
    # As root, portguard refuses a config in a directory others can write (a clone under
    # /tmp is one), like sshd's StrictModes: show the example from a root-only copy.
    workdir = tempfile.mkdtemp(prefix="portguard-demo-", dir="/run" if os.geteuid() == 0
                               else None)
    try:
        config = Path(workdir) / "config.yaml"
        shutil.copyfile(EXAMPLE, config)
        os.chmod(config, 0o644)
        print(f"portguard demo: the example config ({EXAMPLE.name}) copied to {config}")
        status = run(["--config", str(config), "check-config"])
        if status != 0:
            return status
        sys.path.insert(0, str(REPO))
        from portguard.config import loads
        cfg = loads(EXAMPLE.read_text(), filename=str(EXAMPLE))
        specs = dict.fromkeys(
            f"{s.first}{'' if s.first == s.last else f'-{s.last}'}/{s.proto}"
            for svc in cfg.services for s in svc.ports)
        status = run(["who", *specs])
        print(f"\n(exit status {status}: 0 = every port free, 1 = some port held)")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
