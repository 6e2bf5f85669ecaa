"""The README names the tests that keep each promise ("Security"): those tests must exist.

A test renamed, moved or deleted would otherwise leave a promise that nothing keeps,
while the README still says something does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
# `integration/test_x.py::test_y`, `unit/test_x.py`, `tests/integration/test_x.py`
REF = re.compile(r"`(?:tests/)?((?:unit|integration)/[\w/]+\.py)(?:::(\w+))?`")


def references() -> list[tuple[str, str | None]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in REF.finditer(text)]


def test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


test_functions.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def test_the_readme_names_tests_at_all() -> None:
    refs = references()
    assert len([r for r in refs if r[1]]) >= 20, refs  # the Security tables


def test_every_test_the_readme_names_exists() -> None:
    missing = []
    for file, name in references():
        path = TESTS / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
        elif name is not None and name not in test_functions(path):
            missing.append(f"{file}::{name}")
    assert not missing, "README.md names tests that do not exist: " + ", ".join(missing)
