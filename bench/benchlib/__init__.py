"""What the bench/ scripts share: paths, the host's facts, the timing runner, RESULTS.md.

The scripts take the real-systemd sandbox as the tests do, `from support.sandbox import
PYTHON, Sandbox, ...`: they run with tests/ on PYTHONPATH (`make bench`, `make soak`).
"""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
PORTGUARD = str(REPO / ".venv/bin/portguard")  # the console script, as users run it
