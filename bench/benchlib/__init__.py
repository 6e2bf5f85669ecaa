"""What the bench/ scripts share: paths, the host's facts, the timing runner, RESULTS.md.

Importing it puts tests/ on sys.path, so the scripts and their packages take the
real-systemd sandbox as the tests do: `from support.sandbox import PYTHON, Sandbox, ...`.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
PORTGUARD = str(REPO / ".venv/bin/portguard")  # the console script, as users run it

_SANDBOX_DIR = str(REPO / "tests")
if _SANDBOX_DIR not in sys.path:
    sys.path.insert(0, _SANDBOX_DIR)
