"""Files, units and processes inside a running sandbox, reached from the host.

`SandboxInside` is the base of `Sandbox` (sandbox.py), which sets `_pidns` (the inode of
its pid namespace) and `_spawned` (a counter for spawn logs).
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from support.sandbox_base import PRIVATE_MOUNTS, SandboxError
from support.sandbox_run import SandboxRunner


class SandboxInside(SandboxRunner):
    """write_file/write_unit, spawn, pids and cgroups inside (see sandbox.py)."""

    _pidns: int
    _spawned: int

    # -- files and units ------------------------------------------------------------

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside, through /proc/PID/root, creating parent directories.

        Only paths on the private mounts (PRIVATE_MOUNTS) are accepted, and no component
        may be a symlink (an absolute one would resolve on the host).
        """
        norm = posixpath.normpath(path)
        if not norm.startswith("/") or norm.startswith("//"):
            raise SandboxError(f"write_file: not an absolute path: {path!r}")
        mount = next((m for m in PRIVATE_MOUNTS if norm.startswith(m + "/")), None)
        if mount is None or norm.startswith("/run/portguard-sandbox/etc-"):
            raise SandboxError(f"write_file: {path!r} is not on a private mount "
                               f"({', '.join(PRIVATE_MOUNTS)})")
        root = os.open(f"/proc/{self.pid}/root", os.O_PATH | os.O_DIRECTORY)
        fds = [root]
        try:
            parts = norm.strip("/").split("/")
            mount_depth = mount.count("/")
            mount_dev = None
            for i, part in enumerate(parts[:-1], start=1):
                try:
                    fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=fds[-1])
                except FileNotFoundError:
                    if i <= mount_depth:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fds[-1])
                    fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=fds[-1])
                except OSError as exc:
                    raise SandboxError(f"write_file: {path!r}: {part!r}: {exc.strerror} "
                                       "(symlinks are refused)") from None
                fds.append(fd)
                if i == mount_depth:
                    mount_dev = os.fstat(fd).st_dev
            if os.fstat(fds[-1]).st_dev != mount_dev:
                raise SandboxError(f"write_file: {path!r} is not on the {mount} tmpfs")
            try:
                out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                              | os.O_CLOEXEC, mode, dir_fd=fds[-1])
            except OSError as exc:
                raise SandboxError(f"write_file: {path!r}: {exc.strerror}") from None
            with os.fdopen(out, "w") as f:
                os.fchmod(f.fileno(), mode)
                f.write(text)
        finally:
            for fd in fds:
                os.close(fd)

    def image_path(self, path: str) -> str:
        """Where the file the sandbox's `path` was made from is on the host, as packaged
        (before the private mounts): the host's own path here; the cached root's in a
        Debian root (support/roots.py)."""
        return path

    def read_file(self, path: str) -> str:
        """A file's text as the sandbox sees it (symlinks resolved inside)."""
        return self.run(["cat", "--", path], check=True).stdout

    def write_unit(self, name: str, text: str, *, reload: bool = True) -> None:
        """Write /etc/systemd/system/NAME (private tmpfs) and daemon-reload."""
        if "/" in name or not name:
            raise SandboxError(f"bad unit name {name!r}")
        self.write_file(f"/etc/systemd/system/{name}", text)
        if reload:
            self.systemctl("daemon-reload", check=True)

    # -- processes ------------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              log: str | None = None, wait_exec: bool = True) -> int:
        """Start argv inside, outside any unit (the sandbox's root cgroup, -.slice), and
        return its pid as seen inside.

        Like `cmd &` from a script that then exits: its own session, reparented to the
        sandbox's PID 1, stdin /dev/null, output to `log` (default
        /run/portguard-sandbox/spawn/N.log). With wait_exec, returns once its
        /proc/PID/cmdline is argv (the exec has happened).
        """
        self._spawned += 1
        log = log or f"/run/portguard-sandbox/spawn/{self._spawned}.log"
        script = 'log=$1; shift; setsid "$@" </dev/null >>"$log" 2>&1 & echo $!'
        out = self.run(["/bin/sh", "-c", script, "spawn", log, *argv], env=env, check=True)
        try:
            pid = int(out.stdout.split()[-1])
        except (ValueError, IndexError):
            raise SandboxError(f"spawn: no pid from {out.stdout!r} {out.stderr!r}") from None
        if wait_exec:
            want = list(argv)

            def execed() -> bool:
                try:
                    raw = Path(f"/proc/{self.host_pid(pid)}/cmdline").read_bytes()
                except (OSError, SandboxError):
                    logged = self.run(["cat", log]).stdout
                    raise SandboxError(f"spawn: {shlex.join(argv)} exited: {logged}") from None
                return raw.split(b"\0")[:-1] == [a.encode() for a in want]

            self.wait_for(execed, 10, f"{shlex.join(argv)} to exec", interval=0.005)
        return pid

    def host_pid(self, inner_pid: int) -> int:
        """The host pid of the process that is `inner_pid` inside the sandbox."""
        if inner_pid == 1:
            return self.pid
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry.name}/ns/pid").st_ino != self._pidns:
                    continue
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == str(inner_pid):
                    return int(entry.name)
        raise SandboxError(f"no process {inner_pid} in the sandbox")

    def pid_alive(self, pid: int) -> bool:
        """Is `pid` (inside) running (not a zombie)?"""
        try:
            stat = Path(f"/proc/{self.host_pid(pid)}/stat").read_text()
        except (OSError, SandboxError):
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal a process inside by its inside pid (from inside: the pid cannot be reused
        by a host process)."""
        self.run(["kill", f"-{int(sig)}", str(pid)], check=True)

    def cgroup_of(self, pid: int) -> str:
        """The unified-hierarchy path of an inside pid, as the sandbox sees it."""
        text = self.run(["cat", f"/proc/{pid}/cgroup"], check=True).stdout
        for line in text.splitlines():
            if line.startswith("0::"):
                return line[3:]
        raise SandboxError(f"no cgroup2 line for {pid}: {text!r}")

    def listening_pids(self, port: int, proto: str = "tcp") -> set[int]:
        """Pids `ss -lnp` lists on the port now (proto "tcp" or "udp")."""
        flag = {"tcp": "-Hltnp", "udp": "-Hlunp"}[proto]
        out = self.run(["ss", flag, "sport", "=", f":{port}"], check=True).stdout
        return {int(p) for p in re.findall(r"pid=(\d+),fd=\d+", out)}

    def wait_listening(self, port: int, proto: str = "tcp", count: int = 1) -> set[int]:
        """The pids listening on the port, once `ss` lists at least `count` of them."""
        found: set[int] = set()

        def listed() -> bool:
            nonlocal found
            found = self.listening_pids(port, proto)
            return len(found) >= count

        self.wait_for(listed, 10, f"ss to list {count} holder(s) of {port}/{proto}")
        return found
