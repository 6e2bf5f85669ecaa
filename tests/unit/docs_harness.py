"""What test_docs.py drives the docs with: where the generated files are, the tools it
needs (skipped when missing, failed under CI=true), and bash and zsh completing a command
line against a fake systemctl and a redirected drop-in directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
MAN = PACKAGING / "man/portguard.8"
BASH = PACKAGING / "completion/portguard.bash"
ZSH = PACKAGING / "completion/_portguard"


def unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (apt-get install {package})")
    return path  # type: ignore[return-value]


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


def zsh_complete(lines: list[str], fake: Fake) -> dict[str, list[str]]:
    """What zsh offers for each of `lines` (TAB after its last word), from one zsh."""
    zsh = need("zsh", "zsh")
    done = subprocess.run([zsh, "-f", "-c", ZSH_DRIVER, "zsh", str(fake.fpath), *lines],
                          capture_output=True, text=True, check=False, env=fake.env,
                          cwd=fake.files, timeout=120)
    assert done.returncode == 0, done.stderr
    offers: dict[str, list[str]] = {}
    for chunk in done.stdout.split("<LINE>")[1:]:
        line, *found = chunk.split("\n")
        offers[line] = sorted(set(filter(None, found)))
    return offers
