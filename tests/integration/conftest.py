"""Fixtures for tests against a real systemd booted in private namespaces.

    sandbox        module-scoped Sandbox (boots once per test module); share it, and give
                   each test's units unique names with `uid`
    fresh_sandbox  a Sandbox of the test's own (function-scoped)
    make_sandbox   factory: make_sandbox(**Sandbox kwargs) -> a started Sandbox, e.g.
                   cgroup_layout="hybrid"; all stopped after the test
    uid            a short unique string, e.g. "k3f9a2"
    case           a cases.Case in the module's sandbox: a preflight or daemon test's
                   config, units and journal view; its units and strays go afterwards
    fresh_case     the same in a sandbox of the test's own (`fresh_sandbox`)

See sandbox.py for the Sandbox API. Every test in this directory is marked `sandbox`.
Where a sandbox cannot run, its tests skip with the reason; with CI=true they fail
instead, so CI never goes green without them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.availability import require_sandbox
from support.cases import Case
from support.sandbox import Sandbox

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.sandbox)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    require_sandbox()
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def fresh_sandbox() -> Iterator[Sandbox]:
    require_sandbox()
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    require_sandbox()
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        sb = Sandbox(**kwargs)
        made.append(sb)
        return sb.start()

    yield make
    for sb in made:
        sb.stop()


@pytest.fixture
def uid() -> str:
    return secrets.token_hex(3)


@pytest.fixture
def case(sandbox: Sandbox, uid: str) -> Iterator[Case]:
    c = Case(sandbox, uid)
    yield c
    c.cleanup()


@pytest.fixture
def fresh_case(fresh_sandbox: Sandbox, uid: str) -> Iterator[Case]:
    c = Case(fresh_sandbox, uid)
    yield c
    c.cleanup()
