"""The man page and the shell completions: current, complete, and working.

packaging/man/portguard.8 and packaging/completion/{portguard.bash,_portguard} are made by
scripts/gen-docs from `portguard.cli.build_parser()` (argparse-manpage, shtab) and
committed, so packagers need no generator. These tests prove that:

- they are exactly what gen-docs makes of the parser now (the man page's date aside), so
  a new option or command fails here until `make docs` is run;
- the man page names every command, every option and argument of each with its help, and
  every exit code of ExitStatus, and has the sections a parser cannot know;
- groff renders it without a warning, and man(1) formats it;
- bash and zsh complete commands, options, files after --config, and unit names
  (`systemctl` is faked on PATH, the drop-in directory is redirected to a tmp_path).

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

from portguard.cli import build_parser
from portguard.errors import ExitStatus

ROOT = Path(__file__).resolve().parents[2]
GEN_DOCS = ROOT / "scripts/gen-docs"
PACKAGING = ROOT / "packaging"
MAN = PACKAGING / "man/portguard.8"
BASH = PACKAGING / "completion/portguard.bash"
ZSH = PACKAGING / "completion/_portguard"
GENERATED = {"man/portguard.8": MAN, "completion/portguard.bash": BASH,
             "completion/_portguard": ZSH}
TH_DATE = re.compile(r'^(\.TH \S+ "\S+" )"[^"]*"', re.MULTILINE)


def unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (apt-get install {package})")
    return path  # type: ignore[return-value]


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

def test_committed_files_are_what_gen_docs_makes_now(tmp_path: Path) -> None:
    need_generators()
    done = gen_docs("--output-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    stale = []
    for name, committed in GENERATED.items():
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
    done = subprocess.run([sys.executable, str(GEN_DOCS), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert page.read_text() == before
    # SOURCE_DATE_EPOCH (reproducible builds) wins: 2009-02-13 23:31:30 UTC.
    assert gen_docs("--output-dir", tmp_path, env={"SOURCE_DATE_EPOCH": "1234567890"}
                    ).returncode == 0
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
    assert codes == [0, 1, 2, 75, 77, 78]  # DESIGN.md's contract


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

FAKE_SYSTEMCTL = """#!/bin/sh
case "$*" in
  *list-unit-files*) printf '%s\\n' 'web@.service disabled enabled' \\
                                   'web.service enabled enabled' 'sshd.service enabled enabled' ;;
  *list-units*) printf '%s\\n' 'web@blue.service loaded active running Web, blue' \\
                              'sshd.service loaded active running OpenSSH server' ;;
esac
"""
UNITS_WEB = ["web.service", "web@.service", "web@blue.service"]


class Fake:
    """A tmp directory: bin/systemctl (fake, first on PATH), files/ to complete after
    --config, etc-systemd-system/ with drop-ins, and the completions reading it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
        (bin_dir / "systemctl").chmod(0o755)
        self.files = root / "files"
        self.files.mkdir()
        for name in ("pg.yaml", "pg-test.yaml", "other.txt"):
            (self.files / name).write_text("")
        dropins = root / "etc-systemd-system"
        for unit in ("web@.service", "api.service"):
            (dropins / f"{unit}.d").mkdir(parents=True)
            (dropins / f"{unit}.d/portguard.conf").write_text("[Service]\n")
        (dropins / "unrelated.service.d").mkdir()
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "HOME": str(root), "LC_ALL": "C.UTF-8"}
        self.bash = self.redirected(BASH)
        self.fpath = root / "site-functions"
        self.fpath.mkdir()
        shutil.copyfile(self.redirected(ZSH), self.fpath / "_portguard")

    def redirected(self, script: Path) -> Path:
        """The completion script, reading drop-ins from here instead of /etc."""
        copy = self.root / "completion" / script.name
        copy.parent.mkdir(exist_ok=True)
        text = script.read_text()
        assert "/etc/systemd/system/*.d/portguard.conf" in text
        copy.write_text(text.replace("/etc/systemd/system/",
                                     f"{self.root}/etc-systemd-system/"))
        return copy


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Fake:
    return Fake(tmp_path_factory.mktemp("completion"))


BASH_DRIVER = r"""
source "$1"; shift
spec=$(complete -p portguard) || exit 3
func=${spec#*-F }; func=${func%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$func" portguard "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(line: str, fake: Fake) -> list[str]:
    """What the completion function offers for `line` (TAB after its last word)."""
    bash = need("bash", "bash")
    words = line.split(" ")  # a trailing space: complete an empty word
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", BASH_DRIVER, "bash", str(fake.bash), *words],
        capture_output=True, text=True, check=False, env=fake.env, cwd=fake.files)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return sorted(filter(None, done.stdout.split("\n")))


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


# Drives an interactive zsh in a pseudo-terminal (zsh/zpty): compinit with the completion
# on $fpath; for each line, TAB after it, a compadd wrapper printing what would be offered,
# then ^U. Markers are split in the source ("<D""ONE>"), so echoed input never matches.
ZSH_DRIVER = r"""
zmodload zsh/zpty || exit 3
fdir=$1; shift
zpty pg zsh -f -i
zpty -w pg "PS1=''; RPS1=''; unsetopt zle_bracketed_paste 2>/dev/null"
zpty -w pg "fpath=(${(q)fdir} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w pg 'zstyle ":completion:*" list-grouped false; zstyle ":completion:*" insert-tab false'
zpty -w pg 'compadd() { if (( ${@[(I)-[OAD]]} )); then builtin compadd "$@"; return; fi
  local -a __m; builtin compadd -O __m "$@"; (( $#__m )) && print -rl -- "<C""AND>"${^__m}
  builtin compadd "$@"; }'
zpty -w pg '_pg_done() { print -r -- "<D""ONE>"; }'
zpty -w pg 'bindkey "^I" complete-word; bindkey "^U" kill-whole-line; print -r -- "<RE""ADY>"'
integer n=0
until zpty -r -t pg out 2>/dev/null && [[ $out == *"<READY>"* ]]; do
  sleep 0.05; (( ++n > 400 )) && { print -u2 "zsh did not start"; exit 4 }
done
for line; do
  print -r -- "<LINE>$line"
  zpty -w pg 'comppostfuncs=(_pg_done)'  # zsh empties it after each completion
  zpty -w -n pg "$line"$'\t'
  n=0
  while true; do
    if zpty -r -t pg out 2>/dev/null; then
      [[ $out == *"<DONE>"* ]] && break
      [[ $out == *"<CAND>"* ]] && print -r -- "${${out##*<CAND>}%%$'\r'*}"
    else
      sleep 0.02; (( ++n > 1000 )) && { print -u2 "completion did not finish: $line"; exit 5 }
    fi
  done
  zpty -w -n pg $'\x15'
done
zpty -d pg
"""

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
    zsh = need("zsh", "zsh")
    done = subprocess.run([zsh, "-f", "-c", ZSH_DRIVER, "zsh", str(fake.fpath), *ZSH_CASES],
                          capture_output=True, text=True, check=False, env=fake.env,
                          cwd=fake.files, timeout=120)
    assert done.returncode == 0, done.stderr
    offers: dict[str, list[str]] = {}
    for chunk in done.stdout.split("<LINE>")[1:]:
        line, *found = chunk.split("\n")
        offers[line] = sorted(set(filter(None, found)))
    return offers


@pytest.mark.parametrize(("line", "expected"), ZSH_CASES.items())
def test_zsh_completes(line: str, expected: list[str], zsh_offers: dict[str, list[str]]) -> None:
    assert zsh_offers[line] == expected
