"""Faults around portguard (issue 7, item 2): portguard's own means fail.

- no pidfd can be opened (RLIMIT_NOFILE, `prlimit --nofile=N:N` for growing N): nothing is
  ever signalled, and preflight says so in a journaled refusal (it died with a traceback:
  a bug these tests found);
- /proc unreadable: root without CAP_SYS_PTRACE/CAP_DAC_* cannot read a holder's fds, so
  the holder is "holder unknown (needs root)", foreign, refused (a dry run with every
  capability shows it would have been a stray); under hidepid=2 a non-root `who` still
  lists the socket as "holder unknown (needs root)" (it said "holder not found": a bug
  these tests found).

See test_faults_identity.py for the helpers' conventions.
"""

from __future__ import annotations

import json
import re

from support.cases import CONFLICT, REFUSED, Case, config
from support.sandbox import PYTHON, REPO, Sandbox
from support.unprivileged import (
    CAPLESS,
    NOBODY,
    SITE,
    SYSTEM_PYTHON,
    gone,
    shared_copy,
    signals_sent,
)

PIDFD_FAILED = re.compile(r"os\.pidfd_open\(|cannot open a pidfd")  # today's trace, or a message


# -- portguard's own means fail -----------------------------------------------------------

_fd_runs: dict[str, list[tuple[int, int, str, bool]]] = {}


def fd_limited_runs(case: Case) -> list[tuple[int, int, str, bool]]:
    """preflight under `prlimit --nofile=N:N` for growing N until it clears the port:
    (N, exit status, stderr, whether that run's stray survived) per N. Cached per module."""
    if "runs" in _fd_runs:
        return _fd_runs["runs"]
    sb, port = case.sb, case.port()
    unit = f"nofile-{case.uid}.service"
    case.config(config(port, unit))
    case.unit(unit, "--port", str(port), guarded=False)
    runs = []
    for limit in range(5, 24):
        stray = case.spawn(port)
        done = sb.run(["prlimit", f"--nofile={limit}:{limit}", PYTHON, "-m", "portguard",
                       "--config", case.cfg, "preflight", unit],
                      env={"PYTHONPATH": str(REPO)})
        survived = sb.pid_alive(stray)
        runs.append((limit, done.returncode, done.stderr, survived))
        if not survived:
            assert done.returncode == 0, done.stderr
            break
        sb.kill(stray)  # the test's own: the next run gets a fresh one
        sb.wait_for(lambda s=stray: gone(sb, s), 5, f"pid {stray} to be reaped")
    _fd_runs["runs"] = runs
    return runs


def test_without_a_pidfd_nothing_is_signalled(case: Case) -> None:
    runs = fd_limited_runs(case)
    assert not runs[-1][3], "preflight never cleared the port, however many fds it had"
    failed = runs[:-1]
    assert failed, "even 5 fds were enough: the limit did not bite"
    for limit, status, stderr, survived in failed:
        assert survived, f"nofile={limit}: the stray was signalled, yet preflight failed"
        assert status != 0
        assert "sent SIGTERM" not in stderr
    assert any(PIDFD_FAILED.search(stderr) for _, _, stderr, _ in failed), \
        "no limit made pidfd_open itself fail"


def test_without_a_pidfd_preflight_says_so_instead_of_crashing(case: Case) -> None:
    runs = fd_limited_runs(case)
    [(limit, status, stderr, _)] = [r for r in runs[:-1] if PIDFD_FAILED.search(r[2])][:1]
    assert "Traceback" not in stderr, f"nofile={limit}:\n{stderr}"
    assert status == 1
    assert "cannot open a pidfd" in stderr


def test_a_holder_portguard_cannot_read_is_unknown_and_refused(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"unread-{case.uid}.service"
    argv = [*shared_copy(sb, case.uid), "--port", str(port)]
    case.config(config(port, unit))
    sb.write_unit(unit, f"[Service]\nUser=nobody\nExecStart={' '.join(argv)}\n")
    case.units.append(unit)
    copy = sb.spawn([*NOBODY, *argv], wait_exec=False)  # the unit's argv, as its user
    case.pids.append(copy)
    case.wait_listening(port, copy)
    dry = case.preflight(unit, "--dry-run")  # root reads it: a stray it would signal
    assert dry.returncode == 0 and f"pid {copy}" in dry.stderr, dry.stderr
    assert "would signal" in dry.stderr

    # root without CAP_SYS_PTRACE / CAP_DAC_*: nobody's /proc/PID/fd is closed to it
    done = sb.run([*CAPLESS, PYTHON, "-m", "portguard", "--config", case.cfg, "preflight",
                   unit], env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "holder unknown (needs root)" in done.stderr
    refused = case.record(REFUSED, unit, result="blocked")
    assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert "PORTGUARD_HOLDER_PID" not in refused
    assert sb.pid_alive(copy) and sb.listening_pids(port) == {copy}
    assert not signals_sent(case, unit)
    conflict = case.record(CONFLICT, unit, action="refuse", result="planned")
    assert "holder unknown" in conflict["MESSAGE"]


def who_under_hidepid(sb: Sandbox, port: int) -> tuple[int, dict[str, object]]:
    """`who --json PORT` as nobody, with /proc mounted hidepid=2 in a mount namespace of
    its own (the sandbox's /proc is untouched)."""
    script = (f"mount -t proc -o hidepid=2 proc /proc && exec {' '.join(NOBODY)} "
              f"{SYSTEM_PYTHON} -m portguard --json who {port}")
    done = sb.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                  env={"PYTHONPATH": f"{REPO}:{SITE}"})
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)["ports"][0]


def test_under_hidepid_a_hidden_holder_is_listed_not_dropped(case: Case) -> None:
    sb, port = case.sb, case.port()
    holder = case.spawn(port)  # root's: invisible to nobody under hidepid=2
    status, doc = who_under_hidepid(sb, port)
    assert status == 1 and doc["free"] is False
    [row] = doc["holders"]  # type: ignore[misc]
    assert (row["pid"], row["uid"], row["state"]) == (None, 0, "LISTEN")  # type: ignore[index]
    assert sb.pid_alive(holder)


def test_under_hidepid_a_hidden_holder_needs_root(case: Case) -> None:
    port = case.port()
    case.spawn(port)
    _, doc = who_under_hidepid(case.sb, port)
    [row] = doc["holders"]  # type: ignore[misc]
    assert row["unknown"] == "holder unknown (needs root)"  # type: ignore[index]
