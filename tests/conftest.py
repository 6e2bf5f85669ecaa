"""The whole run: the host's packages and enabled units must be as the run found them
(support/hostcheck.py); the daemons run in Debian roots of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import hostcheck


@pytest.fixture(scope="session", autouse=True)
def host_unchanged() -> Iterator[None]:
    before = hostcheck.snapshot()
    yield
    changed = hostcheck.compare(before, hostcheck.snapshot())
    if changed:
        pytest.fail("the test run changed the host:\n" + "\n".join(changed), pytrace=False)
