"""Matching written without `re` (preflight's fast path) agrees with the stdlib's."""

from __future__ import annotations

import fnmatch
import re

from hypothesis import given
from hypothesis import strategies as st

from portguard.observe.procs.cgroupfs import glob_match
from portguard.observe.procs.programs import is_interpreter

PIECES = st.sampled_from(["web", "@", "*", ".service", "a", "b", "-", "**", "?", "[ab]", ""])
NAMES = st.text(alphabet="web@.servicab-x", max_size=20)


@given(st.lists(PIECES, max_size=6).map("".join), NAMES)
def test_glob_match_is_fnmatchcase(glob: str, name: str) -> None:
    assert glob_match(name, glob) == fnmatch.fnmatchcase(name, glob)


def test_glob_match_on_template_twins() -> None:
    assert glob_match("web@blue.service", "web@*.service")
    assert not glob_match("web@blue.socket", "web@*.service")
    assert not glob_match("web.service", "web@*.service")
    assert glob_match("web@.service", "web@*.service")  # as fnmatch: * matches nothing


OLD = re.compile(r"(python|node|nodejs|java|ruby|perl|php|sh|bash|dash)[0-9.]*")


@given(st.sampled_from(["python", "node", "nodejs", "java", "ruby", "perl", "php", "sh",
                        "bash", "dash", "php-fpm", "sshd", "shellinabox", "x", ""]),
       st.text(alphabet="0123456789.-a", max_size=6), st.sampled_from(["", "/usr/bin/"]))
def test_is_interpreter_is_the_old_pattern(stem: str, tail: str, directory: str) -> None:
    path = f"{directory}{stem}{tail}"
    assert is_interpreter(path) == (OLD.fullmatch(path.rsplit("/", 1)[-1]) is not None)


@given(st.lists(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=8), max_size=4))
def test_shell_join_is_shlex_join(words: list[str]) -> None:
    import shlex

    from portguard.text import shell_join
    assert shell_join(words) == shlex.join(words)
