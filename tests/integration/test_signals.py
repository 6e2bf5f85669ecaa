"""act.signals.signal_process against real processes this test starts itself.

Each holder is a small python that listens on 127.0.0.1 (port 0: any free port) and
prints `PORT FD`. It is inspected the way preflight does (processes.read_process, the
socket's inode from /proc/PID/fd/FD), then handed to signal_process. Every holder is a
child of this test and is killed by its own pid afterwards if still running. No systemd
is needed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from portguard.act.signals import SignalOutcome, signal_process
from portguard.model import Process
from portguard.observe.procs import processes

# Modes: "plain" (default dispositions), "ignore-term", "handler" (SIGTERM runs a python
# handler, which only runs while the process runs, then exits 0), "report" (prints the
# signals it gets, exits 0 after SIGTERM), "release" (closes the socket on a stdin line,
# stays alive), "exit" (exits with status 7 on a stdin line).
HOLDER = r"""
import os, signal, socket, sys, time
mode = sys.argv[1]
got = []
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "handler":
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
if mode == "report":
    for sig in (signal.SIGTERM, signal.SIGCONT):
        signal.signal(sig, lambda n, f: got.append(signal.Signals(n).name))
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], s.fileno(), flush=True)
if mode == "release":
    sys.stdin.readline()
    s.close()
    print("closed", flush=True)
if mode == "exit":
    sys.stdin.readline()
    os._exit(7)
while "SIGTERM" not in got:
    time.sleep(0.05)
time.sleep(0.2)
print(" ".join(got), flush=True)
"""


class Holder(NamedTuple):
    popen: subprocess.Popen[str]
    port: int
    fd: int
    proc: Process  # as inspected, before anything happens to it
    inode: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def serves(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            return True

    def line(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.readline()

    def tell(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()


@pytest.fixture
def start() -> Iterator[Callable[[str], Holder]]:
    started: list[subprocess.Popen[str]] = []

    def start_holder(mode: str) -> Holder:
        popen = subprocess.Popen([sys.executable, "-c", HOLDER, mode], text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(popen)
        assert popen.stdout is not None
        port, fd = map(int, popen.stdout.readline().split())
        inode = os.stat(f"/proc/{popen.pid}/fd/{fd}").st_ino
        return Holder(popen, port, fd, processes.read_process(popen.pid, (fd,)), inode)

    yield start_holder
    stop_all(started)


def stop_all(started: list[subprocess.Popen[str]]) -> None:
    """Kill, by its own pid, each holder this test started that still runs; reap it."""
    for popen in started:
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                stream.close()


def wait_for_state(pid: int, letter: str, timeout: float = 5) -> None:
    end = time.monotonic() + timeout
    while processes.state(pid) != letter:
        assert time.monotonic() < end, f"pid {pid} never reached state {letter}"
        time.sleep(0.01)


def run(h: Holder, *, kill_after: float = 5, budget: float = 20,
        proc: Process | None = None) -> tuple[SignalOutcome, float]:
    start = time.monotonic()
    outcome = signal_process(proc or h.proc, h.inode, signal.SIGTERM,
                             kill_after=kill_after, deadline=start + budget)
    return outcome, time.monotonic() - start


def test_the_inspected_facts_are_the_real_ones(start: Callable[[str], Holder]) -> None:
    """The fixture's premise: what preflight would have inspected about the holder."""
    h = start("plain")
    assert h.proc.pid == h.pid and h.proc.fds == (h.fd,)
    assert h.inode in processes.socket_fds(h.pid, {h.inode})
    assert h.serves()


def test_sigterm_makes_the_holder_exit(start: Callable[[str], Holder]) -> None:
    h = start("plain")
    outcome, elapsed = run(h, kill_after=5)
    assert (outcome.pid, outcome.result, outcome.signalled) == (h.pid, "exited",
                                                                ("SIGTERM",))
    assert outcome.detail == "exited after SIGTERM"
    assert elapsed < 2  # no waiting for kill_after
    assert h.popen.wait(timeout=5) == -signal.SIGTERM


def test_sigterm_is_followed_by_sigcont(start: Callable[[str], Holder]) -> None:
    h = start("report")
    outcome, _ = run(h)
    assert outcome.result == "exited"
    assert h.line().split() == ["SIGTERM", "SIGCONT"]
    assert h.popen.wait(timeout=5) == 0


def test_a_holder_that_ignores_sigterm_is_killed_after_kill_after(
        start: Callable[[str], Holder]) -> None:
    h = start("ignore-term")
    outcome, elapsed = run(h, kill_after=0.5)
    assert outcome.result == "killed"
    assert outcome.signalled == ("SIGTERM", "SIGKILL")
    assert outcome.detail == "ignored SIGTERM for 0.5s; killed with SIGKILL"
    assert 0.5 <= elapsed < 3
    assert h.popen.wait(timeout=5) == -signal.SIGKILL


def test_the_deadline_bounds_the_grace_before_sigkill(
        start: Callable[[str], Holder]) -> None:
    """kill_after 30s but only 0.4s left of the preflight's budget: SIGKILL at 0.4s."""
    h = start("ignore-term")
    outcome, elapsed = run(h, kill_after=30, budget=0.4)
    assert outcome.result == "killed"
    assert "SIGKILL" in outcome.signalled
    assert elapsed < 3
    assert h.popen.wait(timeout=5) == -signal.SIGKILL


def test_a_stopped_holder_gets_sigcont_and_acts_on_sigterm(
        start: Callable[[str], Holder]) -> None:
    """Its SIGTERM handler can only run once it is continued: without SIGCONT it would
    sit stopped until kill_after and be killed."""
    h = start("handler")
    os.kill(h.pid, signal.SIGSTOP)  # our own child
    wait_for_state(h.pid, "T")
    outcome, elapsed = run(h, kill_after=5)
    assert (outcome.result, outcome.signalled) == ("exited", ("SIGTERM",))
    assert elapsed < 4
    assert h.popen.wait(timeout=5) == 0  # its handler ran: it exited, was not killed


def test_a_pid_now_belonging_to_another_process_is_not_signalled(
        start: Callable[[str], Holder]) -> None:
    h = start("plain")
    inspected = h.proc._replace(start_time=h.proc.start_time + 1)  # as if pid reused
    outcome, _ = run(h, proc=inspected)
    assert (outcome.result, outcome.signalled) == ("identity-changed", ())
    assert f"pid {h.pid} is now another process" in outcome.detail
    assert "not signalled" in outcome.detail
    time.sleep(0.2)
    assert h.popen.poll() is None
    assert processes.state(h.pid) not in ("T", "Z")
    assert h.serves()


def test_a_process_that_released_the_socket_is_not_signalled(
        start: Callable[[str], Holder]) -> None:
    h = start("release")
    h.tell()
    assert h.line() == "closed\n"
    outcome, _ = run(h)
    assert (outcome.result, outcome.signalled) == ("released", ())
    assert outcome.detail == "no longer holds the socket: not signalled"
    time.sleep(0.2)
    assert h.popen.poll() is None


def test_a_zombie_is_waited_for_not_signalled(start: Callable[[str], Holder]) -> None:
    h = start("exit")
    h.tell()
    wait_for_state(h.pid, "Z")  # exited; we are its parent and have not reaped it
    outcome, _ = run(h)
    assert outcome.result in ("exited", "gone")
    assert outcome.signalled == ()
    assert outcome.detail == "had already exited (a zombie): not signalled"
    assert h.popen.wait(timeout=5) == 7  # its own exit status, not a signal


def test_a_pid_that_no_longer_exists_is_gone(start: Callable[[str], Holder]) -> None:
    h = start("exit")
    h.tell()
    assert h.popen.wait(timeout=5) == 7
    assert not os.path.exists(f"/proc/{h.pid}")
    outcome, _ = run(h)
    assert (outcome.result, outcome.signalled) == ("gone", ())
    assert outcome.detail == "exited before it could be signalled"


def test_a_script_whose_symlink_was_swapped_since_the_check_is_not_signalled(
        tmp_path: Path) -> None:
    """An interpreter is judged by its script, pinned by file identity when inspected; a
    path through a symlink its owner swaps between the check and the signal must not
    make another program's process look like the judged one (docs/security.md)."""
    (tmp_path / "real.py").write_text(HOLDER)
    (tmp_path / "other.py").write_text(HOLDER)
    link = tmp_path / "app.py"
    popens = []
    try:
        for swap in (True, False):
            link.unlink(missing_ok=True)
            link.symlink_to(tmp_path / "real.py")
            popen = subprocess.Popen([sys.executable, str(link), "plain"], text=True,
                                     stdout=subprocess.PIPE, stdin=subprocess.PIPE)
            popens.append(popen)
            assert popen.stdout is not None
            port, fd = map(int, popen.stdout.readline().split())
            inode = os.stat(f"/proc/{popen.pid}/fd/{fd}").st_ino
            inspected = processes.read_process(popen.pid, (fd,))
            assert inspected.program_id is not None and inspected.program_id.target == (
                os.stat(tmp_path / "real.py").st_dev, os.stat(tmp_path / "real.py").st_ino)
            if swap:
                (tmp_path / "new").symlink_to(tmp_path / "other.py")
                os.replace(tmp_path / "new", link)
            outcome = signal_process(inspected, inode, signal.SIGTERM, kill_after=2,
                                     deadline=time.monotonic() + 10)
            if swap:
                assert (outcome.result, outcome.signalled) == ("identity-changed", ())
                assert popen.poll() is None  # untouched: it still serves
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    pass
            else:  # the same file still: judged and signalled as before
                assert outcome.result in ("exited", "killed"), outcome
    finally:
        stop_all(popens)
