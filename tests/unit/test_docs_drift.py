"""docs/ says what the code does: scripts/docs_drift.py finds no gap, and each of its
checks finds the gap it is for.

The first test is the one `make test` relies on (as `make docs-check` does, through
`scripts/gen-docs --check`): every command and option, exit code, config key, journal
field and MESSAGE_ID, metric and module of the code is documented, every test the docs
name exists (the Security page's promises), no link leaves the repository, the README is
short. The rest prove that none of those checks is one that cannot fail.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import docs_drift as drift  # scripts/ is on pytest's path (pyproject.toml)
import pytest
from docs_harness import ROOT

from portguard.cli import build_parser
from portguard.errors import ExitStatus
from portguard.report.journal import Event

DOCS = ROOT / "docs"
CODES = [int(status) for status in ExitStatus]


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def without_section(text: str, heading: str) -> str:
    """`text` without the `## heading` section (up to the next `## `)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[:start] + (text[end:] if end >= 0 else "\n")


# ------------------------------------------------------------------------- the real docs

def test_the_docs_say_what_the_code_does() -> None:
    gaps = drift.problems()
    assert gaps == [], "docs/ differs from the code (make docs-check):\n" + "\n".join(gaps)


def test_the_checks_read_the_code_not_an_empty_list() -> None:
    keys = drift.schema_keys((ROOT / "portguard/config/schema.py").read_text())
    # the config's keys, every level of it
    assert {"defaults", "protected", "services", "daemon", "policy", "on_foreign", "timeout",
            "kill_after", "signal", "reuse_address", "ports", "duplicates", "units",
            "commands", "interval", "restart", "flap_limit", "flap_window",
            "metrics_file"} <= keys
    fields = drift.journal_fields((ROOT / "portguard/report/journal.py").read_text()
                                  + (ROOT / "portguard/report/native.py").read_text(), [])
    assert {"MESSAGE_ID", "PORTGUARD_UNIT", "PORTGUARD_HOLDER_KIND", "PORTGUARD_ACTION",
            "PORTGUARD_RESULT"} <= fields
    modules = drift.package_modules(ROOT / "portguard")
    assert {"cli", "config/schema", "observe/systemd/units", "decide/classify", "act/signals",
            "report/journal", "commands/preflight"} <= set(modules)
    refs = drift.test_references(page("security.md"))
    assert len([r for r in refs if r[1]]) >= drift.MIN_SECURITY_REFS


def test_the_exit_code_table_is_errors_py() -> None:
    block = page("commands.md").split("<!-- BEGIN exit-codes", 1)[1].split(
        "<!-- END exit-codes -->", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", block, re.MULTILINE)
    assert [(int(code), name) for code, name in rows] == \
        sorted((int(s), s.name) for s in ExitStatus)


def test_make_docs_check_lists_a_command_the_docs_lack(tmp_path: Path) -> None:
    """The lead's one command: `make docs-check` (gen-docs --check) names each gap."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    commands = docs / "commands.md"
    commands.write_text(without_section(commands.read_text(), "who"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts/gen-docs"), "--check",
                           "--output-dir", str(ROOT / "packaging"), "--docs-dir", str(docs)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "docs/commands.md: command 'who' has no section (a '## who' heading)" \
        in done.stdout.splitlines()
    assert "1 gap(s) between docs/ and the code" in done.stderr
    alone = subprocess.run([sys.executable, str(ROOT / "scripts/docs_drift.py"),
                            "--docs-dir", str(docs)], capture_output=True, text=True,
                           check=False)
    assert alone.returncode == 1
    assert alone.stdout.splitlines() == [
        "docs/commands.md: command 'who' has no section (a '## who' heading)"]


# ------------------------------------------------------------ each check finds its gap

def test_a_new_command_or_option_is_a_gap() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    new = subs.add_parser("frobnicate")
    new.add_argument("--force", action="store_true")
    new.add_argument("target", metavar="TARGET")
    text = page("commands.md")
    assert drift.command_problems(parser, text, CODES) == [
        "docs/commands.md: command 'frobnicate' has no section (a '## frobnicate' heading)"]
    text += "\n## frobnicate\n\n`portguard frobnicate TARGET`\n"
    assert drift.command_problems(parser, text, CODES) == [
        "docs/commands.md: option '--force' of 'frobnicate' is not in its section"]
    parser.add_argument("--colour")
    assert "docs/commands.md: global option '--colour' is not in 'Global options'" in \
        drift.command_problems(parser, text, CODES)


def test_an_option_named_only_in_another_section_is_a_gap() -> None:
    text = page("commands.md").replace("| `--dry-run` |", "| `--dry-walk` |").replace(
        "\n## who\n", "\n## who\n\nUnlike `preflight --dry-run`, it never acts.\n")
    assert drift.command_problems(build_parser(), text, CODES) == [
        "docs/commands.md: option '--dry-run' of 'preflight' is not in its section"]


def test_an_exit_code_without_a_row_is_a_gap() -> None:
    assert drift.command_problems(build_parser(), page("commands.md"), [*CODES, 64]) == [
        "docs/commands.md: exit code 64 is not a row of 'Exit codes'"]


def test_a_config_key_the_schema_accepts_must_be_in_both_places() -> None:
    source = ('_KEYS = ("a", "b")\n_MORE = ("zap", *_KEYS)\n'
              'class S:\n    def f(self, n):\n'
              '        self.mapping(n, "x", _MORE)\n        self.mapping(n, "y", ("deep",))\n'
              '        self.mapping(n, "z", None)\n')
    assert drift.schema_keys(source) == {"a", "b", "zap", "deep"}
    reference = page("config.md")
    example = (ROOT / "config.example.yaml").read_text()
    assert drift.config_problems(["policy", "colour"], reference, example) == [
        "docs/config.md: config key 'colour' is not documented",
        "config.example.yaml: config key 'colour' is not in the example"]
    assert drift.config_problems(["colour"], reference + "\n| `colour` | ... |\n",
                                 example + "#  colour: red\n") == []


def test_a_journal_field_or_event_must_be_documented_with_its_priority() -> None:
    fields = drift.journal_fields('x = "PORTGUARD_UNIT"\ny = "not a field"\n',
                                  ['journal.emit(E, "m", extra={"holder_container": c})\n'])
    assert fields == {"PORTGUARD_UNIT", "PORTGUARD_HOLDER_CONTAINER"}
    assert drift.journal_problems({"PORTGUARD_WHO_KNOWS"}, [], page("journal.md")) == [
        "docs/journal.md: journal field 'PORTGUARD_WHO_KNOWS' is not documented"]
    refused = Event.REFUSED
    assert drift.journal_problems([], [("NEW", "0" * 32, "info")], page("journal.md")) == [
        f"docs/journal.md: event NEW (MESSAGE_ID {'0' * 32}) is not in the MESSAGE_ID table"]
    assert drift.journal_problems([], [("REFUSED", refused.message_id, "info")],
                                  page("journal.md")) == [
        "docs/journal.md: event REFUSED is priority 'info', which its row does not say"]


def test_a_metric_or_module_must_be_documented(tmp_path: Path) -> None:
    assert drift.metric_problems(["portguard_new_total"], page("metrics.md")) == [
        "docs/metrics.md: metric 'portguard_new_total' is not documented"]
    for name in ("cli.py", "observe/__init__.py", "observe/teleport.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    modules = drift.package_modules(tmp_path)
    assert modules == ["cli", "observe/teleport"]
    assert drift.module_problems(modules, page("architecture.md")) == [
        "docs/architecture.md: module portguard/observe/teleport.py is not in the module map"]


def test_a_test_the_docs_name_must_exist() -> None:
    security = page("security.md")
    assert drift.reference_problems({"docs/security.md": security}, ROOT / "tests") == []
    renamed = security.replace("::test_pid_1_is_untouchable`", "::test_pid_1_is_fine`")
    assert drift.reference_problems({"docs/security.md": renamed}, ROOT / "tests") == [
        "docs/security.md: names unit/test_classify.py::test_pid_1_is_fine, which does not"
        " exist"]
    assert drift.reference_problems({"docs/security.md": "`unit/test_gone.py`"},
                                    ROOT / "tests") == [
        "docs/security.md: names unit/test_gone.py, which does not exist",
        f"docs/security.md: names fewer than {drift.MIN_SECURITY_REFS} tests; each promise"
        " names the tests that keep it"]


def test_links_stay_inside_the_repository_and_resolve(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs/a.md").write_text("# A\n\n## The unit, setting by setting\n")
    readme = repo / "README.md"
    readme.write_text(
        "[ok](docs/a.md) [anchor](docs/a.md#the-unit-setting-by-setting) [web](https://x.org)"
        " [self](#top)\n"
        "[contract](../shared/DESIGN.md) [abs](/work/main/x.md) [gone](docs/b.md)"
        " [bad anchor](docs/a.md#nowhere)\n\n# top\n")
    assert drift.link_problems([readme], repo) == [
        "README.md: link '../shared/DESIGN.md' points outside the repository",
        "README.md: link '/work/main/x.md' points outside the repository",
        "README.md: link 'docs/b.md': no such file",
        "README.md: link 'docs/a.md#nowhere': no heading with that anchor"]
    assert drift.outside_problems({"README.md": "see ../shared/DESIGN.md"}) == [
        "README.md: names '../shared', a path outside the repository"]


@pytest.mark.parametrize(("lines", "gaps"), [(150, 0), (151, 1)])
def test_the_readme_stays_short(lines: int, gaps: int) -> None:
    assert len(drift.readme_problems("line\n" * lines)) == gaps
