"""Skip where this host cannot run a real-system test; under CI=true, fail instead.

One rule for every suite that needs the outside world (tests/integration, tests/field):
a developer without root or unshare gets a skip with the reason, CI never goes green
without these tests. Imported by module name (each suite's conftest puts this directory
on sys.path); never `from conftest import ...`, which names whichever conftest pytest
imported last when suites run together.
"""

from __future__ import annotations

import os

import pytest

from support.sandbox import Sandbox


def skip_or_fail(reason: str) -> None:
    """Skip with `reason`; under CI=true that is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_sandbox() -> None:
    """Skip (or, under CI=true, fail) when no systemd sandbox can run here."""
    reason = Sandbox.unavailable_reason()
    if reason is not None:
        skip_or_fail(f"the systemd sandbox cannot run: {reason}")


def require_root(suite: str) -> None:
    """Skip (or, under CI=true, fail) when the Debian root of `suite` (support.roots)
    cannot be built or booted here; builds it when missing, so the build's time is not
    counted against a test's timeouts."""
    from support.roots import RootUnavailable, root, unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        try:
            root(suite)
        except RootUnavailable as exc:
            reason = str(exc)
    if reason is not None:
        skip_or_fail(f"the Debian root {suite} cannot run: {reason}")
