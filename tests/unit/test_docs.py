"""The man page, the shell completions and docs/commands.md's exit-code table: current,
complete, and working (the rest of docs/ against the code: test_docs_drift.py).

packaging/man/portguard.8 and packaging/completion/{portguard.bash,_portguard} are made by
scripts/gen-docs from `portguard.cli.build_parser()` (argparse-manpage, shtab) and
committed, so packagers need no generator. These tests prove that:

- they are exactly what gen-docs makes of the parser and errors.py now (the man page's
  date aside), so a new option, command or exit code fails here until `make docs` is run;
- the man page names every command, every option and argument of each with its help, and
  every exit code of ExitStatus, and has the sections a parser cannot know;
- groff renders it without a warning, and man(1) formats it;
- bash and zsh complete commands, options, files after --config, and unit names
  (`systemctl` is faked on PATH, the drop-in directory is redirected to a tmp_path:
  docs_harness.py drives the shells).

A missing tool (groff, man, zsh) or generator skips its tests with the reason; under
CI=true they fail instead. Debian packages: groff-base, man-db, bash, zsh.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from docs_harness import (
    BASH,
    MAN,
    ROOT,
    UNITS_WEB,
    ZSH,
    Fake,
    bash_complete,
    need,
    unavailable,
    zsh_complete,
)

from portguard.cli import build_parser
from portguard.errors import ExitStatus

GEN_DOCS = ROOT / "scripts/gen-docs"
GENERATED = {"man/portguard.8": MAN, "completion/portguard.bash": BASH,
             "completion/_portguard": ZSH}
TH_DATE = re.compile(r'^(\.TH \S+ "\S+" )"[^"]*"', re.MULTILINE)


def need_generators() -> None:
    """The generator versions the committed files were made with must be installed."""
    made_with = {
        "argparse-manpage": re.search(r"argparse-manpage (\S+):", MAN.read_text()),
        "shtab": re.search(r"shtab (\S+):", BASH.read_text()),
    }
    for dist, found in made_with.items():
        assert found, f"the committed files do not name the {dist} version they came from"
        try:
            installed = version(dist)
        except PackageNotFoundError:
            unavailable(f"{dist} is not installed (pip install -e '.[test]')")
        if installed != found.group(1):
            unavailable(f"{dist} {installed} is installed, but the committed files were "
                        f"made with {found.group(1)} (pyproject.toml pins it)")


def gen_docs(*args: str | Path,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GEN_DOCS), *map(str, args)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})


def without_date(text: str) -> str:
    return TH_DATE.sub(r'\1"DATE"', text)


# ------------------------------------------------------------------ the files are current

def docs_copy(tmp_path: Path) -> Path:
    """A copy of docs/, for gen-docs to write into instead of the checkout."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path / "docs"


def test_committed_files_are_what_gen_docs_makes_now(tmp_path: Path) -> None:
    need_generators()
    docs = docs_copy(tmp_path)
    (docs / "commands.md").write_text(re.sub(  # the table gen-docs renders, emptied
        r"(<!-- BEGIN exit-codes[^\n]*-->\n).*?(<!-- END exit-codes -->)", r"\1\2",
        (docs / "commands.md").read_text(), flags=re.DOTALL))
    done = gen_docs("--output-dir", tmp_path, "--docs-dir", docs)
    assert done.returncode == 0, done.stderr
    stale = []
    for name, committed in {**GENERATED, "docs/commands.md": ROOT / "docs/commands.md"}.items():
        fresh = (tmp_path / name).read_text()
        old = committed.read_text()
        if name.startswith("man/"):
            fresh, old = without_date(fresh), without_date(old)
        if fresh != old:
            stale.append("".join(difflib.unified_diff(
                old.splitlines(keepends=True), fresh.splitlines(keepends=True),
                f"{committed} (committed)", f"{name} (gen-docs now)")))
    assert not stale, "stale; run `make docs`:\n" + "\n".join(stale)


def test_gen_docs_check_mode_agrees() -> None:
    need_generators()
    done = gen_docs("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_gen_docs_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    need_generators()
    for name, committed in GENERATED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(committed, tmp_path / name)
    bash = tmp_path / "completion/portguard.bash"
    line = next(line for line in bash.read_text().splitlines()
                if line.startswith("_shtab_portguard_preflight_option_strings="))
    bash.write_text(bash.read_text().replace(line, line.replace("--dry-run", "--dry-walk")))
    done = gen_docs("--check", "--output-dir", tmp_path)
    assert done.returncode == 1
    assert f"\n+{line}\n" in done.stdout
    assert "make docs" in done.stderr
    assert "--dry-walk" in bash.read_text()  # --check writes nothing


def test_an_unchanged_page_keeps_its_date(tmp_path: Path) -> None:
    need_generators()
    (tmp_path / "man").mkdir()
    page = tmp_path / "man/portguard.8"
    page.write_text(TH_DATE.sub(r'\1"2001\\-02\\-03"', MAN.read_text()))
    before = page.read_text()
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    docs = docs_copy(tmp_path)
    done = subprocess.run([sys.executable, str(GEN_DOCS), "--output-dir", str(tmp_path),
                           "--docs-dir", str(docs)],
                          capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert page.read_text() == before
    # SOURCE_DATE_EPOCH (reproducible builds) wins: 2009-02-13 23:31:30 UTC.
    assert gen_docs("--output-dir", tmp_path, "--docs-dir", docs,
                    env={"SOURCE_DATE_EPOCH": "1234567890"}).returncode == 0
    assert '"2009\\-02\\-13"' in page.read_text().splitlines()[1]


def test_gen_docs_refuses_an_exit_status_it_cannot_describe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    need_generators()
    loader_spec = importlib.util.spec_from_loader(
        "gen_docs", importlib.machinery.SourceFileLoader("gen_docs", str(GEN_DOCS)))
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    monkeypatch.delitem(module.EXIT_MEANINGS, "TIMEOUT")
    with pytest.raises(SystemExit, match="missing \\['TIMEOUT'\\]"):
        module.exit_status()


# --------------------------------------------------------------- the man page is complete

def deroff(text: str) -> str:
    """The roff source as plain words: escapes and requests dropped, whitespace squeezed."""
    text = re.sub(r'^\.\\".*$', "", text, flags=re.MULTILINE)  # comments
    text = re.sub(r"\\f[BIRP]|\\f\(\w\w|\\[,/&]", "", text)
    text = text.replace("\\-", "-").replace("\\\\", "\\")
    text = re.sub(r"^\.(?:TP|PP|RS|RE|br|nf|fi|SH|SS|B|I|BR|IR)\b ?", "", text,
                  flags=re.MULTILINE)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return re.split(r"[\s,]+", text)


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def page_sections() -> dict[str, str]:
    """The man page's .SH sections (and each command's .SS), deroffed."""
    chunks = re.split(r'^\.S[HS] ?\n?(.*)$', MAN.read_text(), flags=re.MULTILINE)
    out = {}
    for heading, body in zip(chunks[1::2], chunks[2::2], strict=True):
        out[deroff(heading).strip('"')] = deroff(body)
    return out


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_man_page_names_every_option_with_its_help() -> None:
    parser = build_parser()
    sections = page_sections()
    # Global options, in OPTIONS; -h/--help, which argparse-manpage leaves out, in prose.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if isinstance(action, argparse._HelpAction):
            assert "-h, --help" in sections["DESCRIPTION"]
            continue
        for option in action.option_strings:
            assert option in words(sections["OPTIONS"]), option
        assert help_text(parser, action) in sections["OPTIONS"]


def test_man_page_documents_every_command() -> None:
    parser = build_parser()
    sections = page_sections()
    synopsis = sections["SYNOPSIS"]
    for name, sub in commands(parser).items():
        body = sections.get(f"portguard {name}")
        assert body is not None, f"no section for `portguard {name}`"
        assert f" {name} " in synopsis, name
        assert " ".join((sub.description or "").split()) in body, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                assert "[-h]" in body
                continue
            for option in action.option_strings:
                assert option in words(body), (name, option)
            if not action.option_strings:
                assert str(action.metavar or action.dest) in body, (name, action.dest)
            assert help_text(sub, action) in body, (name, action.dest)


def test_man_page_exit_status_is_the_enum() -> None:
    source = MAN.read_text()
    block = source.split(".SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    codes = [int(code) for code in re.findall(r"^\.B (\d+)$", block, re.MULTILINE)]
    assert codes == [int(status) for status in ExitStatus]
    assert codes == [0, 1, 2, 3, 4, 75, 77, 78]  # docs/commands.md (3 and 4: `why` only)


def test_man_page_has_what_the_parser_cannot_know() -> None:
    source = MAN.read_text()
    assert re.search(r'^\.TH PORTGUARD "8" ', source, re.MULTILINE)
    sections = page_sections()
    assert sections["NAME"].startswith("portguard - ")
    for heading in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT",
                    "FILES", "EXAMPLES", "SEE ALSO"):
        assert sections.get(heading), heading
    assert "COMMANDS" in sections  # a heading over the commands' own sections
    assert "PORTGUARD_CONFIG" in sections["ENVIRONMENT"]
    for path in ("/etc/portguard/config.yaml", "/run/portguard/",
                 "/etc/systemd/system/UNIT.d/portguard.conf"):
        assert path in sections["FILES"], path
    for page in ("systemd.service (5)", "ss (8)", "fuser (1)"):
        assert page in sections["SEE ALSO"], page
    assert "portguard install web@.service" in sections["EXAMPLES"]
    # The options and commands come from the parser, in its order.
    order = [name for name in sections if name.startswith("portguard ")]
    assert order == [f"portguard {name}" for name in commands(build_parser())]


# ------------------------------------------------------------------- the man page renders

def test_groff_renders_it_without_warnings() -> None:
    groff = need("groff", "groff-base")
    done = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(MAN)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_man_formats_it() -> None:
    man = need("man", "man-db")
    done = subprocess.run([man, "--warnings", "-l", str(MAN)], capture_output=True,
                          text=True, check=False,
                          env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat",
                               "PAGER": "cat", "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    assert "portguard - keep systemd services from failing with EADDRINUSE" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert re.search(r"^EXIT STATUS$", text, re.MULTILINE)
    # mandb/whatis/apropos read the NAME line with lexgrog.
    lexgrog = need("lexgrog", "man-db")
    whatis = subprocess.run([lexgrog, str(MAN)], capture_output=True, text=True, check=False)
    assert whatis.returncode == 0, whatis.stdout + whatis.stderr
    assert '"portguard - keep systemd services from failing with EADDRINUSE"' in whatis.stdout


# --------------------------------------------------------------------------- completions

@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Fake:
    return Fake(tmp_path_factory.mktemp("completion"))


def global_options() -> list[str]:
    return sorted(o for a in build_parser()._actions for o in a.option_strings)


@pytest.mark.parametrize(("line", "expected"), [
    ("portguard pre", ["preflight"]),
    ("portguard --con", ["--config"]),
    ("portguard -", global_options()),
    ("portguard ", sorted(commands(build_parser()))),
    ("portguard -v st", ["status"]),
    ("portguard preflight --d", ["--dry-run"]),
    ("portguard --config ", ["other.txt", "pg-test.yaml", "pg.yaml"]),
    ("portguard --config pg", ["pg-test.yaml", "pg.yaml"]),
    ("portguard preflight web", UNITS_WEB),
    ("portguard --json install web@", ["web@.service", "web@blue.service"]),
    ("portguard --config pg.yaml preflight --dry-run ss", ["sshd.service"]),
    ("portguard uninstall ", ["api.service", "web@.service"]),
    ("portguard uninstall w", ["web@.service"]),
])
def test_bash_completes(line: str, expected: list[str], fake: Fake) -> None:
    assert bash_complete(line, fake) == expected


def test_bash_completion_has_every_command_and_option() -> None:
    text = BASH.read_text()
    parser = build_parser()
    for name, sub in commands(parser).items():
        assert re.search(rf"^_shtab_portguard_subparsers=\(.*\b{name}\b", text, re.MULTILINE)
        options = [o for a in sub._actions for o in a.option_strings]
        assert f"_shtab_portguard_{name.replace('-', '_')}_option_strings=({' '.join(options)})" \
            in text


def test_zsh_parses_it() -> None:
    zsh = need("zsh", "zsh")
    done = subprocess.run([zsh, "-n", str(ZSH)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert ZSH.read_text().startswith("#compdef portguard\n")


def test_compinit_finds_it(tmp_path: Path) -> None:
    zsh = need("zsh", "zsh")
    fpath = tmp_path / "site-functions"
    fpath.mkdir()
    shutil.copyfile(ZSH, fpath / "_portguard")
    script = (f"fpath=({fpath} $fpath); autoload -Uz compinit; compinit -u -D; "
              "print -r -- $_comps[portguard]; autoload +X _portguard && print loaded")
    done = subprocess.run([zsh, "-f", "-c", script], capture_output=True, text=True,
                          check=False, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["_portguard", "loaded"]


ZSH_CASES = {
    "portguard pre": ["preflight"],
    "portguard --con": ["--config"],
    "portguard ": sorted(commands(build_parser())),
    "portguard -v st": ["status"],
    "portguard preflight --d": ["--dry-run"],
    "portguard --config pg": ["pg-test.yaml", "pg.yaml"],
    "portguard preflight web": UNITS_WEB,
    "portguard --json install web@": ["web@.service", "web@blue.service"],
    "portguard uninstall ": ["api.service", "web@.service"],
}


@pytest.fixture(scope="module")
def zsh_offers(fake: Fake) -> dict[str, list[str]]:
    """What zsh offers for each of ZSH_CASES, from one interactive zsh."""
    return zsh_complete(list(ZSH_CASES), fake)


@pytest.mark.parametrize(("line", "expected"), ZSH_CASES.items())
def test_zsh_completes(line: str, expected: list[str], zsh_offers: dict[str, list[str]]) -> None:
    assert zsh_offers[line] == expected
