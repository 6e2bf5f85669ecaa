"""Every file portguard writes, written one way: whole or not at all, and durable.

A temporary file in the target's directory (rename(2) and link(2) are atomic only within
a file system), `.NAME.PID.RANDOM.tmp`, created exclusively and never through a symlink,
gets the bytes, its mode (whatever the umask) and an fsync; then it is renamed over the
name (or, `exclusive`, link()ed to it, which fails when the name exists, even if it
appeared a moment ago), and the directory is fsync'ed so the new name survives a crash.
A reader sees the old file or the new one, never a part. On any error the temporary file
is removed and the OSError raised. Users: the drop-in (`install`), the proposed config
(`discover --write`), the metrics file (the daemon), the compiled config (any full load).
"""

from __future__ import annotations

import contextlib
import os

TMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int,
                 exclusive: bool = False, dir_mode: int | None = None) -> None:
    """Put `data` at `path` (see the module docstring). `exclusive`: FileExistsError when
    `path` exists. `dir_mode`: create the directory (and its missing parents) with that
    mode when it is missing, and set it; else a missing directory is an error."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    if dir_mode is not None:
        os.makedirs(directory, dir_mode, exist_ok=True)
        os.chmod(directory, dir_mode)  # whatever the umask, or an older directory's mode
    if exclusive and os.path.lexists(path):
        raise FileExistsError(17, "File exists", path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(6).hex()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after link(), or on an error; gone after rename()
    _fsync_dir(directory)


def remove_leftovers(directory: str | os.PathLike[str], name: str) -> None:
    """Remove the temporary files of `name` whose writer (the PID in them) no longer runs:
    a writer killed mid-write leaves one behind."""
    prefix, own = f".{name}.", os.getpid()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX)):
                continue
            pid_text = entry.name[len(prefix):].partition(".")[0]
            if not pid_text.isdigit() or int(pid_text) in (0, own) or _alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # durability only: the new name is there already
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True
