"""Fixtures for the field suite: real Debian daemons under their packaged unit files.

    field_sb   module-scoped Sandbox (tests/support/sandbox.py) for a module's daemons
    field      a daemons.Field on it: install/config/start daemons, ss, status, journal
    root_sb    module-scoped RootSandbox per Debian root (12, 13: support/roots.py)
    uid        a short unique string for names the test writes itself

Every test here is marked `sandbox` and `field`. Where no sandbox can run, or a daemon's
package is missing, its tests skip with the reason; under CI=true they fail instead.
A module names its daemons in `DAEMONS_USED = [...]` (keys of daemons.DAEMONS).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.availability import require_root, skip_or_fail
from support.daemons import Field, missing_packages
from support.roots import SUITES, RootSandbox
from support.sandbox import Sandbox

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.sandbox)
            item.add_marker(pytest.mark.field)


@pytest.fixture(scope="module")
def field_sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    reason = Sandbox.unavailable_reason()
    if reason is not None:
        skip_or_fail(f"the systemd sandbox cannot run: {reason}")
    missing = missing_packages(list(getattr(request.module, "DAEMONS_USED", [])))
    if missing:
        skip_or_fail(f"not installed: {' '.join(missing)} (scripts/bootstrap --all)")
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def field(field_sb: Sandbox) -> Field:
    return Field(field_sb)


@pytest.fixture
def uid() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="module", params=sorted(SUITES), ids=lambda s: f"debian{SUITES[s]}")
def root_sb(request: pytest.FixtureRequest) -> Iterator[RootSandbox]:
    """A RootSandbox (tests/support/roots.py) per Debian root: 12 and 13."""
    require_root(request.param)
    with RootSandbox(request.param) as sb:
        yield sb
