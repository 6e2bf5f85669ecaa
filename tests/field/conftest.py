"""Fixtures for the field suite: real Debian daemons under their packaged unit files.

    field_sb   module-scoped Sandbox for a module's daemons: a RootSandbox per Debian
               root (12 and 13, tests/support/roots.py), so every module runs in both
    field      a daemons.Field on it: install/config/start daemons, ss, status, journal
    root_sb    the same, typed as the RootSandbox it is
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
from support.roots import SUITES, RootSandbox, root

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.sandbox)
            item.add_marker(pytest.mark.field)


@pytest.fixture(scope="module", params=sorted(SUITES), ids=lambda s: f"debian{SUITES[s]}")
def field_sb(request: pytest.FixtureRequest) -> Iterator[RootSandbox]:
    """The module's daemons run in each Debian root (12 and 13: support/roots.py), never
    on the host's packages."""
    require_root(request.param)
    missing = missing_packages(list(getattr(request.module, "DAEMONS_USED", [])),
                               str(root(request.param)))
    if missing:
        skip_or_fail(f"not in the Debian root {request.param}: {' '.join(missing)} "
                     "(tests/support/root-packages)")
    with RootSandbox(request.param) as sb:
        yield sb


@pytest.fixture(scope="module")
def field(field_sb: RootSandbox) -> Field:
    return Field(field_sb)


@pytest.fixture
def uid() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="module")
def root_sb(field_sb: RootSandbox) -> RootSandbox:
    """The module's Debian root, booted (the same sandbox as field_sb)."""
    return field_sb
