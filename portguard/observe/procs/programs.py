"""Which program a process, or a unit's ExecStart= line, runs: by file identity.

the contract (docs/), case 3: "the same program" is the executable *file* (st_dev, st_ino, so a
symlink such as /usr/bin/redis-server -> redis-check-rdb is the file it points to),
whatever title the daemon gives itself and whatever its arguments; for an interpreter it
is the script, module or jar; launchers (env, nice, sudo, ...) are seen through and a
multi-call binary (busybox, toybox) is its applet. Anything this module cannot read or
parse for certain gives no identity (None), and classify then calls the holder foreign.

The argv parsing (`strip_launchers`, `interpreted`) is pure; `of_process` and
`of_exec_start` add the filesystem lookups (stat through /proc/PID/root and /cwd).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from portguard.model import FileId, ProgramId

# interpreter names as exec'd, each optionally followed by a version: python3, python3.11,
# node, nodejs, java, ruby3.1, perl, perl5.36.0, php, php8.2, sh, bash, dash (not
# php-fpm8.2, sshd or shellinabox). Matched without `re`: it is not on preflight's path.
_INTERPRETERS = frozenset(
    {"python", "node", "nodejs", "java", "ruby", "perl", "php", "sh", "bash", "dash"})
MULTICALL = ("busybox", "toybox")
# launcher -> its options that take a separate value. A launcher runs the rest of its argv
# (after its options, `--`, and for env NAME=VALUE words, for timeout a duration).
LAUNCHERS: dict[str, frozenset[str]] = {
    "env": frozenset({"-u", "--unset", "-C", "--chdir"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "nohup": frozenset(),
    "timeout": frozenset({"-s", "--signal", "-k", "--kill-after"}),
    "setpriv": frozenset({"--reuid", "--regid", "--groups", "--inh-caps", "--ambient-caps",
                          "--bounding-set", "--securebits", "--pdeathsig", "--selinux-label",
                          "--apparmor-profile", "--landlock-access", "--landlock-rule"}),
    "runuser": frozenset({"-u", "--user", "-g", "--group", "-G", "--supp-group",
                          "-w", "--whitelist-environment"}),
    "sudo": frozenset({"-u", "--user", "-g", "--group", "-C", "--close-from", "-D",
                       "--chdir", "-h", "--host", "-p", "--prompt", "-R", "--chroot",
                       "-r", "--role", "-t", "--type", "-U", "--other-user", "-T",
                       "--command-timeout"}),
    "tini": frozenset({"-p", "-e"}),
    "dumb-init": frozenset({"-r", "--rewrite"}),
}
# options that make the command something other than a program file: a shell string
# (`sudo -s`, `runuser -c`, `env -S`): no identity can be given
_DOUBT = {"env": {"-S", "--split-string"}, "sudo": {"-s", "--shell", "-i", "--login"},
          "runuser": {"-c", "--command", "-l", "--login", "-s", "--shell"}}
# interpreter -> (options taking a value, options that run inline code (no identity),
#                 options whose value names the module or jar)
_INTERP_OPTS: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "python": (frozenset({"-W", "-X", "-Q"}), frozenset({"-c"}), frozenset({"-m"})),
    "node": (frozenset({"-r", "--require", "--import", "--loader", "--experimental-loader",
                        "--inspect-port", "--title"}),
             frozenset({"-e", "--eval", "-p", "--print"}), frozenset()),
    "java": (frozenset({"-cp", "-classpath", "--class-path", "-p", "--module-path",
                        "--add-modules", "--add-opens", "--add-exports"}),
             frozenset(), frozenset({"-jar", "-m", "--module"})),
    "ruby": (frozenset({"-I", "-r", "-C", "-E", "--encoding"}), frozenset({"-e"}),
             frozenset()),
    "perl": (frozenset({"-I", "-M", "-m"}), frozenset({"-e", "-E"}), frozenset()),
    "php": (frozenset({"-c", "-d", "-z"}), frozenset({"-r", "-B", "-R", "-F", "-E"}),
            frozenset()),
    "sh": (frozenset({"-o", "+o"}), frozenset({"-c"}), frozenset()),
}


# the PATH systemd gives a unit's processes (and searches an Exec*= command in)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def is_interpreter(path: str) -> bool:
    return basename(path).rstrip("0123456789.") in _INTERPRETERS


def _family(path: str) -> str:
    name = basename(path).rstrip("0123456789.")
    return {"nodejs": "node", "bash": "sh", "dash": "sh"}.get(name, name)


def strip_launchers(argv: Sequence[str]) -> tuple[str, ...] | None:
    """argv with every leading launcher and its options removed (`env A=1 nice -n 5
    /usr/bin/x -d` -> `/usr/bin/x -d`); None when it cannot be told for certain."""
    rest = tuple(argv)
    while rest and basename(rest[0]) in LAUNCHERS:
        name = basename(rest[0])
        takes_value = LAUNCHERS[name]
        i = 1
        positional = 1 if name == "timeout" else 0  # timeout's DURATION
        while i < len(rest):
            arg = rest[i]
            if arg == "--":
                i += 1
                break
            if arg.split("=", 1)[0] in _DOUBT.get(name, ()):
                return None
            if arg.startswith("-") and len(arg) > 1:
                i += 2 if arg in takes_value else 1
                continue
            if name == "env" and "=" in arg:
                i += 1
                continue
            if positional:
                positional -= 1
                i += 1
                continue
            break
        rest = rest[i:]
    return rest or None


def interpreted(argv: Sequence[str]) -> tuple[str, str] | None:
    """What an interpreter's argv runs: ("script", path), ("module", name) for
    `python -m NAME`/`java -m`, ("jar", path) for `java -jar`; None when it runs inline
    code (-c, -e), reads stdin, or cannot be told."""
    family = _family(argv[0]) if argv else ""
    takes_value, inline, names = _INTERP_OPTS.get(family, (frozenset(), frozenset(),
                                                            frozenset()))
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in inline:
            return None
        if arg in names:
            if i + 1 >= len(argv):
                return None
            return ("jar" if arg == "-jar" else "module", argv[i + 1])
        if family == "python" and arg.startswith("-m") and len(arg) > 2:
            return ("module", arg[2:])
        if arg.startswith(("-", "+")) and len(arg) > 1:
            i += 2 if arg in takes_value else 1
            continue
        break
    if i >= len(argv) or argv[i] == "-":
        return None
    return ("script", argv[i])


def file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileId(st.st_dev, st.st_ino)


def _program(exe: FileId | None, argv: Sequence[str], exe_path: str, root: str,
             cwd: str) -> ProgramId | None:
    """Identity of `argv` run by the executable `exe` (at exe_path), with script paths
    resolved under `root` (and `cwd` for relative ones)."""
    if exe is None:
        return None
    if basename(exe_path) in MULTICALL or (argv and basename(argv[0]) in MULTICALL):
        applet = argv[0] if argv and basename(argv[0]) not in MULTICALL else (
            argv[1] if len(argv) > 1 else "")
        return ProgramId(exe, applet=basename(applet)) if applet else None
    if not is_interpreter(exe_path):
        return ProgramId(exe)
    what = interpreted(argv)
    if what is None:
        return ProgramId(exe, interpreted=True)  # inline code: matches nothing
    kind, value = what
    if kind == "module":
        return ProgramId(exe, module=value, interpreted=True)
    path = root + value if value.startswith("/") else f"{cwd.rstrip('/')}/{value}"
    return ProgramId(exe, target=file_id(path), interpreted=True)


def of_process(pid: int, cmdline: Sequence[str], exe_path: str,
               proc: str = "/proc") -> ProgramId | None:
    """What a running process runs; scripts resolved in its own root and cwd."""
    return _program(file_id(f"{proc}/{pid}/exe"), cmdline, exe_path, f"{proc}/{pid}/root",
                    f"{proc}/{pid}/cwd")


def named_files(pid: int, cmdline: Sequence[str], exe_path: str,
                proc: str = "/proc") -> tuple[str, ...]:
    """The paths of the files a running process's program is (its executable, and an
    interpreter's script or jar, made absolute from its cwd), as a profile names them."""
    if not is_interpreter(exe_path):
        return (exe_path,)
    what = interpreted(cmdline)
    if what is None or what[0] == "module":
        return (exe_path,)
    value = what[1]
    if not value.startswith("/"):
        try:
            value = os.path.join(os.readlink(f"{proc}/{pid}/cwd"), value)
        except OSError:
            return (exe_path,)
    return (exe_path, os.path.normpath(value))


def of_exec_start(argv: Sequence[str], search: str = SYSTEMD_PATH) -> ProgramId | None:
    """What an ExecStart= line runs (as read over D-Bus: its argv), launchers seen
    through; a `#!` script is the script; relative scripts resolve from / (systemd's
    default WorkingDirectory)."""
    rest = strip_launchers(argv)
    if not rest:
        return None
    path = rest[0]
    if "/" not in path:
        path = next((f"{d}/{path}" for d in search.split(":")
                     if os.access(f"{d}/{path}", os.X_OK)), "")
    exe = file_id(path) if path else None
    if exe is None:
        return None
    real = os.path.realpath(path)
    if not is_interpreter(real) and basename(real) not in MULTICALL and _shebang(real):
        return ProgramId(exe, target=exe, interpreted=True)
    return _program(exe, (path, *rest[1:]), real, "", "")


def _shebang(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def display_name(exe_path: str, cmdline: Sequence[str], exe: FileId | None,
                 proc_root: str = "") -> str:
    """The program's name as its administrator knows it: argv[0]'s name when that is a
    symlink to the executable (redis-server, not redis-check-rdb); else the executable's
    name (an interpreter's too: its script is named beside it); "" when neither is known."""
    name = basename(exe_path)
    first = cmdline[0].split(" ", 1)[0] if cmdline else ""
    if is_interpreter(exe_path):  # python3.11 app.py: the script names it (Process.program)
        return name
    if first.startswith("/") and basename(first) != name and exe is not None and \
            file_id(proc_root + first) == exe:
        return basename(first)
    return name
