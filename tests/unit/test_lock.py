"""lock.port_locks: two guards acting on one port serialise on a flock(2) file per port.

Run in tmp_path with real flock locks. flock locks belong to the open file description,
so a second os.open() of the same file, even in this process, is a second contender:
that is what `contender()` does. Other processes (a guard in a child python) show the
same from outside, and a guard killed with SIGKILL shows the lock is reclaimed.

Tests run as root, where a read-only directory does not stop anyone, so "not permitted"
is simulated at the calls that fail for real (os.makedirs, os.open).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portguard.act.lock import lock_path, port_locks
from portguard.errors import ExitStatus, NotPermittedError, TimedOutError
from portguard.model import Proto

REPO = Path(__file__).resolve().parents[2]
TCP, UDP = Proto.TCP, Proto.UDP

# A guard in another process: takes the lock on PORT/PROTO in DIR, says so, then holds
# it until its stdin closes.
GUARD = """\
import sys
from portguard.act.lock import port_locks
from portguard.model import Proto
with port_locks([(int(sys.argv[2]), Proto(sys.argv[3]))], timeout=5, directory=sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def contender(directory: Path, port: int, proto: Proto = TCP) -> int | None:
    """A new open file description on the port's lock file, locked: its fd, or None if
    someone holds the lock."""
    fd = os.open(lock_path(port, proto, str(directory)), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_free(directory: Path, port: int, proto: Proto = TCP) -> bool:
    fd = contender(directory, port, proto)
    if fd is None:
        return False
    os.close(fd)
    return True


def reap(child: subprocess.Popen[str]) -> None:
    """SIGKILL `child` (by its pid) if it still runs; leaving `with child` closes its
    pipes and waits for it."""
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    with child:
        pass


@pytest.fixture
def guard_in_child(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another guard holding the lock on 8080/tcp in tmp_path; killed (by pid) after."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", GUARD, str(tmp_path), "8080", "tcp"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        yield child
    finally:
        reap(child)


def test_the_lock_file_names_the_port_and_the_holders_pid(tmp_path: Path) -> None:
    with port_locks([(8080, TCP)], timeout=1, directory=str(tmp_path)):
        path = tmp_path / "tcp-8080.lock"
        assert path.read_text() == f"{os.getpid()}\n"


def test_the_directory_is_created_when_missing(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "portguard"
    with port_locks([(8080, TCP)], timeout=1, directory=str(directory)):
        assert not is_free(directory, 8080)
    assert directory.stat().st_mode & 0o022 == 0  # nobody else may plant lock files


def test_a_second_open_file_in_the_same_process_is_shut_out(tmp_path: Path) -> None:
    """flock is per open file description: this is what makes the in-process tests real."""
    with port_locks([(8080, TCP)], timeout=1, directory=str(tmp_path)):
        assert contender(tmp_path, 8080) is None
    assert is_free(tmp_path, 8080)


def test_exclusive_between_two_guard_processes(
        tmp_path: Path, guard_in_child: subprocess.Popen[str]) -> None:
    with pytest.raises(TimedOutError), \
            port_locks([(8080, TCP)], timeout=0.2, directory=str(tmp_path)):
        pytest.fail("took a lock another process holds")
    assert guard_in_child.stdin is not None
    guard_in_child.stdin.close()  # the other guard finishes and lets go
    with port_locks([(8080, TCP)], timeout=5, directory=str(tmp_path)):
        assert (tmp_path / "tcp-8080.lock").read_text() == f"{os.getpid()}\n"


def test_the_wait_is_bounded_and_says_which_port(tmp_path: Path) -> None:
    blocker = contender(tmp_path, 8080)
    assert blocker is not None
    try:
        start = time.monotonic()
        with pytest.raises(TimedOutError) as caught, \
                port_locks([(8080, TCP)], timeout=0.3, directory=str(tmp_path)):
            pytest.fail("took a held lock")
        elapsed = time.monotonic() - start
    finally:
        os.close(blocker)
    assert 0.3 <= elapsed < 1.5
    err = caught.value
    assert err.exit_status is ExitStatus.TIMEOUT
    assert int(err.exit_status) == 75
    assert str(err) == (f"another portguard has held the lock on 8080/tcp for 0.3s "
                        f"({tmp_path}/tcp-8080.lock)")


def test_a_free_lock_is_taken_even_with_no_time_to_wait(tmp_path: Path) -> None:
    with port_locks([(8080, TCP)], timeout=0, directory=str(tmp_path)):
        assert not is_free(tmp_path, 8080)


def test_a_lock_held_by_a_guard_that_died_is_reclaimed(
        tmp_path: Path, guard_in_child: subprocess.Popen[str]) -> None:
    lock_file = tmp_path / "tcp-8080.lock"
    assert lock_file.read_text() == f"{guard_in_child.pid}\n"
    assert not is_free(tmp_path, 8080)
    os.kill(guard_in_child.pid, signal.SIGKILL)  # the guard dies holding the lock
    assert guard_in_child.wait(timeout=10) == -signal.SIGKILL
    assert lock_file.read_text() == f"{guard_in_child.pid}\n"  # the stale file stays
    start = time.monotonic()
    with port_locks([(8080, TCP)], timeout=5, directory=str(tmp_path)):
        assert time.monotonic() - start < 1  # no waiting for a dead guard
        assert lock_file.read_text() == f"{os.getpid()}\n"


def test_ports_are_locked_in_sorted_order(tmp_path: Path) -> None:
    """Asked for 9090, 8080, 8443 while 9090 is busy: by the time it waits on 9090, it
    already holds 8080 and 8443, so two guards with overlapping sets cannot deadlock."""
    blocker = contender(tmp_path, 9090)
    assert blocker is not None
    seen: list[tuple[int, Proto, bool, bool]] = []

    def on_wait(port: int, proto: Proto) -> None:
        seen.append((port, proto, is_free(tmp_path, 8080), is_free(tmp_path, 8443)))

    try:
        with pytest.raises(TimedOutError, match="9090/tcp"), \
                port_locks([(9090, TCP), (8080, TCP), (8443, TCP)], timeout=0.2,
                           directory=str(tmp_path), on_wait=on_wait):
            pytest.fail("took a held lock")
    finally:
        os.close(blocker)
    assert seen == [(9090, TCP, False, False)]


def test_a_timeout_partway_releases_the_locks_already_taken(tmp_path: Path) -> None:
    blocker = contender(tmp_path, 9090)
    assert blocker is not None
    try:
        with pytest.raises(TimedOutError), \
                port_locks([(8080, TCP), (9090, TCP)], timeout=0.1, directory=str(tmp_path)):
            pytest.fail("took a held lock")
        assert is_free(tmp_path, 8080)
    finally:
        os.close(blocker)


def test_every_lock_is_released_when_the_body_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), \
            port_locks([(8080, TCP), (5353, UDP)], timeout=1, directory=str(tmp_path)):
        raise RuntimeError("stop failed")
    assert is_free(tmp_path, 8080) and is_free(tmp_path, 5353, UDP)


def test_a_port_listed_twice_is_locked_once(tmp_path: Path) -> None:
    """Two open files for one port would make the guard wait on itself."""
    with port_locks([(8080, TCP), (8080, TCP)], timeout=0.2, directory=str(tmp_path)):
        assert not is_free(tmp_path, 8080)


def test_tcp_and_udp_on_one_port_are_separate_locks(tmp_path: Path) -> None:
    with port_locks([(5353, UDP)], timeout=1, directory=str(tmp_path)):
        assert is_free(tmp_path, 5353, TCP)
        assert not is_free(tmp_path, 5353, UDP)


def test_on_wait_is_called_once_however_long_the_wait(tmp_path: Path) -> None:
    blocker = contender(tmp_path, 8080)
    assert blocker is not None
    calls: list[tuple[int, Proto]] = []
    told = threading.Event()
    acquired = threading.Event()
    errors: list[BaseException] = []

    def on_wait(port: int, proto: Proto) -> None:
        calls.append((port, proto))
        told.set()

    def guard() -> None:
        try:
            with port_locks([(8080, TCP)], timeout=10, directory=str(tmp_path),
                            on_wait=on_wait):
                acquired.set()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=guard)
    thread.start()
    try:
        assert told.wait(5)
        time.sleep(0.4)  # eight polls' worth of waiting
        assert not acquired.is_set()
    finally:
        os.close(blocker)
        thread.join(10)
    assert errors == []
    assert acquired.is_set()
    assert calls == [(8080, TCP)]


def test_on_wait_is_not_called_for_a_free_lock(tmp_path: Path) -> None:
    calls: list[tuple[int, Proto]] = []
    with port_locks([(8080, TCP)], timeout=1, directory=str(tmp_path),
                    on_wait=lambda port, proto: calls.append((port, proto))):
        pass
    assert calls == []


def _permission_denied(path: str) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def test_no_permission_to_create_the_directory_is_not_permitted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = str(tmp_path / "portguard")

    def makedirs(name: str, *args: object, **kwargs: object) -> None:
        raise _permission_denied(name)

    monkeypatch.setattr(os, "makedirs", makedirs)
    with pytest.raises(NotPermittedError) as caught, \
            port_locks([(8080, TCP)], timeout=1, directory=directory):
        pytest.fail("locked without permission")
    assert caught.value.exit_status is ExitStatus.NOT_PERMITTED
    assert int(caught.value.exit_status) == 77
    assert str(caught.value) == (f"cannot create {directory}: Permission denied "
                                 "(preflight needs root to act on ports)")


def test_no_permission_to_open_a_lock_file_is_not_permitted_and_releases_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    denied = lock_path(9090, TCP, str(tmp_path))
    real_open = os.open
    held_during: list[bool] = []

    def fake_open(path: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        if path == denied:
            held_during.append(not is_free(tmp_path, 8080))
            raise _permission_denied(path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(NotPermittedError) as caught, \
            port_locks([(8080, TCP), (9090, TCP)], timeout=1, directory=str(tmp_path)):
        pytest.fail("locked without permission")
    monkeypatch.undo()
    assert caught.value.exit_status is ExitStatus.NOT_PERMITTED
    assert str(caught.value) == (f"cannot open {denied}: Permission denied "
                                 "(preflight needs root to act on ports)")
    assert held_during == [True]  # 8080 was locked first ...
    assert is_free(tmp_path, 8080)  # ... and let go


# An unprivileged user trying to hold a guard's lock: prints "locked" (then holds it until
# stdin closes) or "refused ERRNO".
SQUATTER = """\
import fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as exc:
    print("refused", exc.errno, flush=True)
    sys.exit(0)
print("locked", flush=True)
sys.stdin.read()
"""
NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is root-only)."""
    top = Path(tempfile.mkdtemp(prefix="portguard-lock-test-"))
    try:
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


def as_nobody(argv: list[str]) -> subprocess.Popen[str]:
    for python in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        try:
            return subprocess.Popen([python, *argv], user=NOBODY, group=NOBODY,
                                    extra_groups=[], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        except PermissionError:
            continue  # an interpreter nobody may run (e.g. under /root)
    pytest.skip("no python interpreter the nobody user can run")


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a process as nobody: needs root")
def test_an_unprivileged_user_cannot_hold_up_a_guard(shared_dir: Path) -> None:
    directory = str(shared_dir / "portguard")
    with port_locks([(8080, TCP)], timeout=1, directory=directory):
        pass  # a guard ran before: the directory and the lock file exist
    squatter = as_nobody(["-c", SQUATTER, lock_path(8080, TCP, directory)])
    try:
        assert squatter.stdout is not None
        answer = squatter.stdout.readline()
        with port_locks([(8080, TCP)], timeout=0.2, directory=directory):
            pass
        assert answer.startswith("refused")
    finally:
        reap(squatter)
