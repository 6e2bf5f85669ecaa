#!/usr/bin/env python3
"""Do the docs still say what the code does? Every gap, one line each.

    .venv/bin/python scripts/docs_drift.py        exit 1 and list the gaps, or exit 0

`scripts/gen-docs --check` (`make docs-check`, part of `make test`) runs these checks
after its own (man page, completions, the exit-code table); tests/unit/test_docs.py runs
them too and proves that each fails on a page that misses something. The facts come from
the code, never from a list kept here, so a new command, option, config key, journal
event or field, metric or module fails the check until it is documented:

- every command of `portguard.cli.build_parser()` has a section in docs/commands.md
  naming each of its options and arguments; every global option is in "Global options";
  every code of `portguard.errors.ExitStatus` is a row of "Exit codes";
- every key `portguard/config/schema.py` accepts (read from its source: the key tuples
  handed to `mapping()`) is in docs/config.md and config.example.yaml;
- every field `portguard/report/journal.py` and `native.py` write, and every `extra=` key passed,
  is in docs/journal.md; every `Event`'s MESSAGE_ID is there, on a row with its priority;
- every metric of `portguard/report/metrics.py` is in docs/metrics.md;
- every module of `portguard/` is in docs/architecture.md's module map;
- every test the README or docs/ name (`unit/test_x.py::test_y`) exists;
- every relative link in a Markdown file resolves inside the repository (anchors too);
  README.md and docs/ name no path outside it; README.md has at most 150 lines.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DOCS = ROOT / "docs"
README_MAX_LINES = 150
MIN_SECURITY_REFS = 20  # an emptied Security page must not pass as "every test exists"
# `integration/test_x.py::test_y`, `unit/test_x.py`, `tests/field/test_x.py`
TEST_REF = re.compile(r"`(?:tests/)?((?:unit|integration|field)/[\w/]+\.py)(?:::(\w+))?`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"\.\./shared|(?<![\w.])/work/")
HEADING = re.compile(r"^(#{1,6}) +(.*?) *#*$", re.MULTILINE)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def mentioned(word: str, text: str) -> bool:
    """`word` inside a backtick span, as a whole word (`duplicates.units` names `units`)."""
    pattern = rf"(?<![\w-]){re.escape(word)}(?![\w-])"
    return any(re.search(pattern, span) for span in re.findall(r"`([^`\n]+)`", text))


def sections(text: str) -> list[tuple[int, str, str]]:
    """(level, title, body up to the next heading of the same or a higher level)."""
    found = [(len(m.group(1)), m.group(2), m.start(), m.end())
             for m in HEADING.finditer(text) if not _in_fence(text, m.start())]
    out = []
    for i, (level, title, _, end) in enumerate(found):
        stop = next((s for lv, _, s, _ in found[i + 1:] if lv <= level), len(text))
        out.append((level, title, text[end:stop]))
    return out


def _in_fence(text: str, pos: int) -> bool:
    return text.count("\n```", 0, pos) % 2 == 1


# ---------------------------------------------------------------------------- commands

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _arguments(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Option strings and positional metavars a reader must find, -h/--help aside."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            yield from action.option_strings
        else:
            yield str(action.metavar or action.dest)


def command_problems(parser: argparse.ArgumentParser, text: str,
                     codes: Iterable[int], name: str = "docs/commands.md") -> list[str]:
    problems = []
    secs = sections(text)

    def body(match: str) -> str | None:  # the `## ...` section whose title has the word
        for level, title, content in secs:
            if level == 2 and match in re.findall(r"[\w-]+", title.lower()):
                return content
        return None

    global_body = body("global") or ""
    for option in _arguments(parser):
        if not mentioned(option, global_body):
            problems.append(f"{name}: global option '{option}' is not in 'Global options'")
    for command, sub in _subcommands(parser).items():
        content = body(command)
        if content is None:
            problems.append(f"{name}: command '{command}' has no section (a '## {command}'"
                            " heading)")
            continue
        for option in _arguments(sub):
            if not mentioned(option, content):
                problems.append(f"{name}: option '{option}' of '{command}' is not in its"
                                " section")
    exits = body("exit") or ""
    for code in codes:
        if not re.search(rf"^\| *{code} *\|", exits, re.MULTILINE):
            problems.append(f"{name}: exit code {code} is not a row of 'Exit codes'")
    return problems


# ------------------------------------------------------------------------------ config

def schema_keys(source: str) -> set[str]:
    """The keys the schema accepts: string tuples passed as `mapping(node, where, KEYS)`,
    literally or by a module-level name (stars expanded)."""
    tree = ast.parse(source)
    names: dict[str, list[str]] = {}

    def strings(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Name):
            return names.get(node.id, [])
        if not isinstance(node, ast.Tuple | ast.List):
            return []
        out: list[str] = []
        for item in node.elts:
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                out.append(item.value)
            elif isinstance(item, ast.Starred):
                out += strings(item.value)
        return out

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            names[stmt.targets[0].id] = strings(stmt.value)
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "mapping" and len(node.args) >= 3:
            keys.update(strings(node.args[2]))
    return keys


def config_problems(keys: Iterable[str], reference: str, example: str) -> list[str]:
    problems = []
    for key in sorted(keys):
        if not mentioned(key, reference):
            problems.append(f"docs/config.md: config key '{key}' is not documented")
        if not re.search(rf"^\s*#?\s*(?:-\s*)?{re.escape(key)}:", example, re.MULTILINE):
            problems.append(f"config.example.yaml: config key '{key}' is not in the example")
    return problems


# ----------------------------------------------------------------------------- journal

FIELD = re.compile(r"^(?:PORTGUARD_[A-Z0-9_]+|MESSAGE|MESSAGE_ID|PRIORITY|SYSLOG_IDENTIFIER)$")


def journal_fields(journal_source: str, package_sources: Iterable[str]) -> set[str]:
    """Field names journal.py spells out, and PORTGUARD_<KEY> for each literal key any
    module passes as `extra={...}`."""
    from portguard.report.native import field_name
    fields = {node.value for node in ast.walk(ast.parse(journal_source))
              if isinstance(node, ast.Constant) and isinstance(node.value, str)
              and FIELD.match(node.value)}
    for source in package_sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.keyword) and node.arg == "extra" \
                    and isinstance(node.value, ast.Dict):
                fields.update(field_name(k.value) for k in node.value.keys
                              if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return fields


def journal_problems(fields: Iterable[str], events: Iterable[tuple[str, str, str]],
                     text: str) -> list[str]:
    """`events`: (name, MESSAGE_ID, priority name) for each event type."""
    problems = [f"docs/journal.md: journal field '{f}' is not documented"
                for f in sorted(fields) if not mentioned(f, text)]
    for name, message_id, priority in events:
        rows = [line for line in text.splitlines()
                if line.startswith("|") and message_id in line]
        if not rows:
            problems.append(f"docs/journal.md: event {name} (MESSAGE_ID {message_id}) is"
                            " not in the MESSAGE_ID table")
        elif not any(re.search(rf"\|\s*{priority}\b", row) for row in rows):
            problems.append(f"docs/journal.md: event {name} is priority '{priority}', which"
                            " its row does not say")
    return problems


# ----------------------------------------------------------------- metrics and modules

def metric_problems(metrics: Iterable[str], text: str) -> list[str]:
    return [f"docs/metrics.md: metric '{m}' is not documented"
            for m in sorted(metrics) if not mentioned(m, text)]


def package_modules(package: Path) -> list[str]:
    """`cli`, `config/schema`, `__main__`, ...: every module but the packages' __init__."""
    return sorted(str(p.relative_to(package).with_suffix(""))
                  for p in package.rglob("*.py") if p.name != "__init__.py")


def module_problems(modules: Iterable[str], text: str) -> list[str]:
    return [f"docs/architecture.md: module portguard/{m}.py is not in the module map"
            for m in modules if not mentioned(m, text)]


# ----------------------------------------------------------------------- tests, links

def test_references(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in TEST_REF.finditer(text)]


def test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


test_functions.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test
test_references.__test__ = False  # type: ignore[attr-defined]


def reference_problems(pages: dict[str, str], tests: Path) -> list[str]:
    problems = []
    for name, text in pages.items():
        for file, function in test_references(text):
            path = tests / file
            if not path.is_file():
                problems.append(f"{name}: names {file}, which does not exist")
            elif function is not None and function not in test_functions(path):
                problems.append(f"{name}: names {file}::{function}, which does not exist")
    security = pages.get("docs/security.md", "")
    if len([r for r in test_references(security) if r[1]]) < MIN_SECURITY_REFS:
        problems.append(f"docs/security.md: names fewer than {MIN_SECURITY_REFS} tests;"
                        " each promise names the tests that keep it")
    return problems


def slug(title: str) -> str:
    """A heading's anchor, as GitHub and most renderers make it."""
    title = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", ""))
    return title.replace(" ", "-")


def link_problems(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        text = read(path)
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not a file
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path.resolve()
            where = f"{path.relative_to(root)}: link '{target}'"
            if file.startswith("/") or not dest.is_relative_to(root.resolve()):
                problems.append(f"{where} points outside the repository")
            elif not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and \
                    anchor not in {slug(t) for _, t, _ in sections(read(dest))}:
                problems.append(f"{where}: no heading with that anchor")
    return problems


def outside_problems(pages: dict[str, str]) -> list[str]:
    return [f"{name}: names '{m.group(0)}', a path outside the repository"
            for name, text in pages.items() for m in OUTSIDE.finditer(text)]


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The repository's Markdown files: git's tracked and untracked-not-ignored ones."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached",
                                 "--others", "--exclude-standard", "*.md"],
                                capture_output=True, text=True, check=True).stdout
        return sorted({root / p for p in listed.split("\0") if p and (root / p).is_file()})
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in root.rglob("*.md")
                      if not any(part.startswith(".") for part in p.relative_to(root).parts))


# -------------------------------------------------------------------------------- all

def readme_problems(text: str) -> list[str]:
    lines = len(text.splitlines())
    if lines > README_MAX_LINES:
        return [f"README.md: {lines} lines; at most {README_MAX_LINES} (move detail into"
                " docs/)"]
    return []


def problems(docs: Path = DOCS) -> list[str]:
    """Every way the docs (the pages in `docs`, README.md) differ from the code now."""
    from portguard.cli import build_parser
    from portguard.errors import ExitStatus
    from portguard.report.journal import Event
    from portguard.report.metrics import _HELP, PREFIX

    package = ROOT / "portguard"
    pages = {"README.md": read(ROOT / "README.md")}
    pages |= {f"docs/{p.name}": read(p) for p in sorted(docs.glob("*.md"))}
    found = []
    for needed in ("commands", "config", "journal", "metrics", "security", "daemon",
                   "architecture", "testing"):
        if f"docs/{needed}.md" not in pages:
            found.append(f"docs/{needed}.md: missing")
    found += command_problems(build_parser(), pages.get("docs/commands.md", ""),
                              [int(s) for s in ExitStatus])
    found += config_problems(schema_keys(read(package / "config/schema.py")),
                             pages.get("docs/config.md", ""), read(ROOT / "config.example.yaml"))
    found += journal_problems(
        journal_fields(read(package / "report/journal.py") + read(package / "report/native.py"),
                       (read(p) for p in sorted(package.rglob("*.py")))),
        [(e.name, e.message_id, e.priority.name.lower()) for e in Event],
        pages.get("docs/journal.md", ""))
    found += metric_problems([PREFIX + name for name in _HELP], pages.get("docs/metrics.md", ""))
    found += module_problems(package_modules(package), pages.get("docs/architecture.md", ""))
    found += reference_problems(pages, ROOT / "tests")
    found += link_problems(markdown_files())
    found += outside_problems(pages)
    found += readme_problems(pages["README.md"])
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="docs_drift", description=__doc__.split("\n")[0])
    ap.add_argument("--docs-dir", type=Path, default=DOCS, metavar="DIR",
                    help="the pages to check (default: docs/)")
    found = problems(ap.parse_args(argv).docs_dir)
    for problem in found:
        print(problem)
    if found:
        print(f"docs_drift: {len(found)} gap(s) between the docs and the code",
              file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
