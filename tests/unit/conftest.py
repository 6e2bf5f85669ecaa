"""Fixtures that more than one unit test module uses (helpers live in plain modules
beside this one: fakeproc.py, config_helpers.py, config_fuzzing.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeproc import FakeProc, ListdirSpy

from portguard.config import schema as config


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """load() checks a config's ownership by default only as root, which CI runs as; files
    under /tmp would fail that check. A module opts in with usefixtures("not_root")."""
    monkeypatch.setattr(config, "_running_as_root", lambda: False)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A directory for the module's files: hypothesis refuses function-scoped fixtures
    such as tmp_path in a @given test (one call runs many examples)."""
    with tempfile.TemporaryDirectory(prefix="portguard-fuzz-") as d:
        yield Path(d)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def spy(proc: FakeProc, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListdirSpy]:
    recorder = ListdirSpy(proc.root)
    real = os.listdir

    def listdir(path: str | os.PathLike[str] = ".") -> list[str]:
        text = os.fspath(path)
        if text.startswith(recorder.root):
            recorder.listed.append(text)
            if text.endswith("/fd") and int(text.split("/")[-2]) in recorder.deny:
                raise PermissionError(13, "Permission denied", text)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    yield recorder


@pytest.fixture
def cgroups(tmp_path: Path) -> Path:
    """A cgroup2 tree: pid 1 at the root and in init.scope, x.service (10, 11, and 12 in
    a sub-cgroup), an empty x.socket, y.service (20) and a session scope (30, 31)."""
    root = tmp_path / "cgroup"
    layout = {
        "": "1\n",
        "init.scope": "1\n",
        "system.slice": "",
        "system.slice/x.service": "10\n11\n",
        "system.slice/x.service/payload": "12\n",
        "system.slice/x.socket": "",
        "system.slice/y.service": "20\n",
        "user.slice/user-0.slice/session-1.scope": "30\n31\n",
    }
    for rel, procs in layout.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(procs)
        (d / "cgroup.controllers").write_text("")
    return root
