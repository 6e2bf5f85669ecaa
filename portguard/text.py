"""What others control, as portguard shows it: escaped for a terminal, quoted for a shell.

portguard runs as root and prints commands administrators paste. Names, paths, argv and
journal text come from processes and users (docs/security.md, "Hostile local users"):
`shown` escapes what a terminal or a log reader would act on, and a command is only ever
built from words, each quoted as `shlex.join` does, after its names passed the check for
their kind. No imports: preflight's fast path and `who` on free ports use it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# What shlex.quote leaves bare (its `[^\w@%+=:,./-]`, ASCII): shlex itself imports `re`.
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "_@%+=:,./-")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# systemd's unit_name_is_valid: VALID_CHARS plus "@" for instances, at most 255 bytes
_UNIT_CHARS = _ALNUM | frozenset(":-_.\\@")
_UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap",
               "timer", "path", "slice", "scope")
# docker and podman: [a-zA-Z0-9][a-zA-Z0-9_.-]*; machined: a hostname, at most 64
_CONTAINER_CHARS = _ALNUM | frozenset("_.-")


def shown(text: str) -> str:
    """`text` on one line, safe for a terminal and a log: every character that is not
    printable (C0 and C1 controls with ESC, CR and line breaks, DEL, U+2028, bidi
    overrides, undecodable bytes) becomes its Python escape (`\\x1b`, `\\n`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown_lines(text: str) -> str:
    """`shown` for each line of a message portguard wrote itself (its own line breaks
    stay): the last defence at every sink, in case a name reached a message unescaped."""
    if text.isprintable():
        return text
    return "\n".join(shown(line) for line in text.split("\n"))


def shell_join(words: Sequence[str]) -> str:
    """shlex.join(words): a command line a person can paste back into a shell."""
    return " ".join(_shell_word(w) for w in words)


def _shell_word(word: str) -> str:
    if not word:
        return "''"
    if all(c in _SHELL_SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def is_unit_name(name: str) -> bool:
    """A unit name systemd itself would accept (`web@blue.service`, `a\\x2db.scope`)."""
    stem, dot, suffix = name.rpartition(".")
    return (bool(dot and stem) and suffix in _UNIT_TYPES and len(name) <= 255
            and all(c in _UNIT_CHARS for c in stem) and name.count("@") <= 1
            and not stem.startswith("@"))


def is_container_name(name: str) -> bool:
    """A name docker, podman and machined accept: `[A-Za-z0-9][A-Za-z0-9_.-]*`, 1-253."""
    return (0 < len(name) <= 253 and name[0] in _ALNUM
            and all(c in _CONTAINER_CHARS for c in name))


def command(*words: str) -> str:
    """The line to paste, built from words: `command("systemctl", "stop", unit)`."""
    return shell_join(words)


def systemctl(verb: str, *units: str) -> str:
    """`systemctl VERB UNIT...` to paste; "" when a unit is no name systemd gives a unit."""
    return command("systemctl", verb, *units) if all(map(is_unit_name, units)) else ""


def offered(cmd: str, otherwise: str = "stop it yourself") -> str:
    """A command in a message, in backquotes; `otherwise` where none could be built."""
    return f"`{cmd}`" if cmd else otherwise


def format_ports(pairs: Iterable[tuple[int, str]]) -> str:
    """`7000-7010/tcp, 8080/tcp, 5353/udp` (ports with "tcp"/"udp", or model.Proto):
    consecutive ports folded as the config writes them."""
    given = list(pairs)
    out: list[str] = []
    for proto in ("tcp", "udp"):
        runs: list[list[int]] = []
        for port in sorted({p for p, pr in given if pr == proto}):
            if runs and port == runs[-1][-1] + 1:
                runs[-1].append(port)
            else:
                runs.append([port])
        out.extend(f"{r[0]}/{proto}" if len(r) == 1 else f"{r[0]}-{r[-1]}/{proto}"
                   for r in runs)
    return ", ".join(out)
