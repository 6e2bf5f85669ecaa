"""`portguard preflight` against a real systemd: stubborn holders and lingering sockets.

A holder that ignores SIGTERM (SIGKILL after kill_after), one stopped with SIGSTOP (the
SIGCONT that follows the signal lets it act on it), and ports with only TIME_WAIT or
FIN_WAIT2 sockets left. See test_preflight.py.
"""

from __future__ import annotations

import signal
import time

from support.cases import (
    CONFLICT,
    KILL,
    PORTS_CLEAR,
    SIGNAL,
    STOP_UNIT,
    TIMED_OUT,
    WAIT,
    Case,
    config,
    ids,
)
from support.sandbox import PYTHON

# -- 5. holders that do not stop on SIGTERM at once ----------------------------------------


def test_a_holder_ignoring_sigterm_is_killed_after_kill_after(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"stub-{case.uid}.service"
    case.config(config(port, unit))  # kill_after: 1s
    case.unit(unit, "--port", str(port), "--ignore-term")
    stray = case.spawn(port, "--ignore-term")

    took = case.start_active(unit)
    assert 1.0 <= took < 6
    assert not sb.pid_alive(stray)

    signalled = case.record(SIGNAL, unit, holder_pid=stray)
    assert signalled["PORTGUARD_HOLDER_KIND"] == "stray"
    assert signalled["PORTGUARD_ACTION"] == "signal"
    assert "SIGTERM" in signalled["MESSAGE"]
    killed = case.record(KILL, unit, holder_pid=stray)
    assert killed["PORTGUARD_ACTION"] == "kill"
    assert killed["PORTGUARD_RESULT"] == "killed"
    assert killed["PORTGUARD_HOLDER_KIND"] == "stray"
    assert "SIGKILL" in killed["MESSAGE"]
    assert killed["PRIORITY"] == "4"
    shown = ids(case.unit_journal(unit))
    assert KILL in shown and PORTS_CLEAR in shown


def test_a_twin_leaving_a_remnant_is_killed_with_killunit_after_kill_after(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"tkill-{case.uid}@.service"
    a, b = f"tkill-{case.uid}@a.service", f"tkill-{case.uid}@b.service"
    case.config(config(port, template))  # kill_after: 1s
    # systemd SIGKILLs the main process only: the worker stays, holding the port, in
    # a's cgroup after the stop job is done
    case.unit(template, "--port", str(port), "--workers", "1",
              extra="KillMode=process\nKillSignal=SIGKILL\n")
    case.units += [a, b]
    case.start_listening(a, port)
    a_pids = case.unit_pids(a)
    assert len(a_pids) == 2

    took = case.start_active(b)
    assert 1.0 <= took < 6
    assert case.state(a) in ("inactive", "failed")
    assert not any(sb.pid_alive(p) for p in a_pids)
    assert case.record(STOP_UNIT, b, holder_unit=a)["PORTGUARD_RESULT"] == "done"
    killed = case.record(KILL, b, holder_unit=a)
    assert killed["PORTGUARD_ACTION"] == "kill"
    assert killed["PORTGUARD_HOLDER_KIND"] == "twin"
    assert "KillUnit SIGKILL" in killed["MESSAGE"]


def test_a_twin_ignoring_sigterm_is_killed_after_kill_after(case: Case) -> None:
    sb, port = case.sb, case.port()
    template = f"tstub-{case.uid}@.service"
    a, b = f"tstub-{case.uid}@a.service", f"tstub-{case.uid}@b.service"
    # DESIGN: "twin units: D-Bus StopUnit, wait for the job, then KillUnit SIGKILL if
    # the port is still held after kill_after" (systemd's own TimeoutStopSec is 90 s)
    case.config(config(port, template, extra="timeout: 4s"))  # kill_after: 1s
    case.unit(template, "--port", str(port), "--ignore-term")
    case.units += [a, b]
    a_pid = case.start_listening(a, port)

    took = case.start_active(b)
    assert took < 3.5
    assert not sb.pid_alive(a_pid)
    assert case.state(a) in ("inactive", "failed")
    killed = case.record(KILL, b, holder_unit=a)
    assert killed["PORTGUARD_ACTION"] == "kill"
    assert killed["PORTGUARD_HOLDER_KIND"] == "twin"


def test_a_stopped_holder_gets_sigcont_and_exits_on_sigterm(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"stopped-{case.uid}.service"
    # kill_after 5s: without the SIGCONT the stopped parent would be SIGKILLed after 5 s
    case.config(config(port, unit, extra="kill_after: 5s"))
    case.unit(unit, "--port", str(port), "--workers", "1")
    # a prefork copy: the parent catches SIGTERM in Python (a handler cannot run while the
    # process is stopped: only SIGCONT lets it); the worker dies of SIGTERM's default
    parent = case.spawn(port, "--workers", "1")
    [worker] = case.children(parent)
    for pid in (parent, worker):
        sb.kill(pid, signal.SIGSTOP)
    sb.wait_for(lambda: {case.proc_state(parent), case.proc_state(worker)} == {"T"}, 5,
                "both to be stopped")

    took = case.start_active(unit)
    assert took < 4.5
    assert not sb.pid_alive(parent) and not sb.pid_alive(worker)

    signalled = case.record(SIGNAL, unit, holder_pid=parent, action="signal")
    assert signalled["PORTGUARD_HOLDER_KIND"] == "stray"
    assert signalled["PORTGUARD_RESULT"] == "exited"
    assert KILL not in ids(case.records(unit=unit))
    case.record(PORTS_CLEAR, unit, result="clear")


# -- 6. lingering sockets ------------------------------------------------------------------

# Leaves a TIME_WAIT socket on the port: the server side closes first (active close),
# then the client; the listener goes too. sys.argv: port, 1|0 (SO_REUSEADDR on the
# listener; a TIME_WAIT socket keeps its socket's flag), address.
TIME_WAIT_CODE = """
import socket, sys
port, reuse, host = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
srv.bind((host, port)); srv.listen()
cli = socket.create_connection((host, port))
conn, _ = srv.accept()
conn.close()
cli.recv(1)
cli.close()
srv.close()
"""

# Leaves an orphaned FIN_WAIT2 socket that expires after TCP_LINGER2 seconds: the server
# side closes, the client (this process, which stays) does not, or only after CLOSE_AFTER
# seconds (then the FIN_WAIT2 socket becomes a TIME_WAIT one, as TCP goes).
# argv: port, ready file, linger, close_after (0: never).
FIN_WAIT2_CODE = """
import os, socket, sys, time
a = sys.argv
port, ready, linger, close_after = int(a[1]), a[2], int(a[3]), float(a[4])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen()
cli = socket.create_connection(("127.0.0.1", port))
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_LINGER2, linger)
conn.close()
srv.close()
cli.recv(1)
open(ready, "w").write("1")
if close_after:
    time.sleep(close_after)
    cli.close()
time.sleep(600)
"""


def make_fin_wait2(case: Case, port: int, *, linger: int, close_after: float = 0) -> None:
    ready = f"/run/fw2-{case.uid}"
    case.pids.append(case.sb.spawn([PYTHON, "-c", FIN_WAIT2_CODE, str(port), ready,
                                    str(linger), str(close_after)]))
    case.wait_file(ready)
    case.sb.wait_for(lambda: lingering(case, port) == ["FIN-WAIT-2"], 5, "a FIN_WAIT2")


def lingering(case: Case, port: int) -> list[str]:
    """States of the sockets on the port (ss's names)."""
    out = case.sb.run(["ss", "-Htan", f"sport = :{port}"], check=True).stdout
    return [line.split()[0] for line in out.splitlines()]


def make_time_wait(case: Case, port: int, *, reuse: bool, host: str = "127.0.0.1") -> None:
    case.sb.python(TIME_WAIT_CODE, str(port), "1" if reuse else "0", host, check=True)
    case.sb.wait_for(lambda: lingering(case, port) == ["TIME-WAIT"], 5, "a TIME_WAIT")


def test_time_wait_does_not_block_a_service_setting_so_reuseaddr(case: Case) -> None:
    port = case.port()
    unit = f"tw-{case.uid}.service"
    case.config(config(port, unit))  # reuse_address: true (the default)
    case.unit(unit, "--port", str(port))  # listener.py sets SO_REUSEADDR
    make_time_wait(case, port, reuse=True)

    t0 = time.monotonic()
    done = case.preflight(unit)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 3
    case.record(PORTS_CLEAR, unit, result="clear")
    assert not [r for r in case.records(unit=unit) if r["MESSAGE_ID"] in (WAIT, TIMED_OUT)]
    case.start_active(unit)  # and bind() agrees


def test_time_wait_blocks_a_service_without_so_reuseaddr_until_timeout(case: Case) -> None:
    port = case.port()
    unit = f"twno-{case.uid}.service"
    case.config(config(port, unit, extra="reuse_address: false\ntimeout: 1500ms"))
    make_time_wait(case, port, reuse=True)
    # TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN, no sysctl changes it): preflight gives up
    t0 = time.monotonic()
    done = case.preflight(unit)
    took = time.monotonic() - t0
    assert done.returncode == 75, done.stdout + done.stderr
    assert 1.4 < took < 4
    waiting = case.record(WAIT, unit, result="waiting")
    assert waiting["PORTGUARD_HOLDER_KIND"] == "lingering"
    assert waiting["PORTGUARD_ACTION"] == "wait"
    assert "PORTGUARD_HOLDER_PID" not in waiting
    timed_out = case.record(TIMED_OUT, unit)
    assert timed_out["PORTGUARD_HOLDER_KIND"] == "lingering"
    assert timed_out["PORTGUARD_RESULT"] == "timeout"
    assert "TIME_WAIT" in done.stderr


def test_time_wait_of_a_socket_without_so_reuseaddr_blocks_everyone(case: Case) -> None:
    # The kernel wants SO_REUSEADDR on *both* sockets: a TIME_WAIT left by a server that
    # did not set it blocks even a reuse_address: true service; the bind() probe says so.
    port = case.port()
    unit = f"twold-{case.uid}.service"
    case.config(config(port, unit, extra="timeout: 1500ms"))
    make_time_wait(case, port, reuse=False)
    done = case.preflight(unit)
    assert done.returncode == 75, done.stdout + done.stderr
    conflict = case.record(CONFLICT, unit)
    assert conflict["PORTGUARD_HOLDER_KIND"] == "lingering"
    assert conflict["PORTGUARD_ACTION"] == "wait"
    assert "SO_REUSEADDR" in conflict["MESSAGE"]
    case.record(TIMED_OUT, unit)


def test_a_time_wait_beside_a_live_holder_that_outlasts_it_is_a_timed_out_wait(
        case: Case) -> None:
    # Found by the soak. While the stray listens, the TIME_WAIT's own SO_REUSEADDR cannot
    # be probed; the stray goes, and bind() is still refused by the TIME_WAIT alone. That
    # is a wait that ran out (75, "try again later"), not a block (1) by an unseen holder.
    sb, port = case.sb, case.port()
    unit = f"twlive-{case.uid}.service"
    case.config(config(port, unit, extra="timeout: 1500ms"))
    make_time_wait(case, port, reuse=False, host="127.0.0.2")  # its socket: no SO_REUSEADDR
    case.unit(unit, "--port", str(port), "--addr", "127.0.0.1")
    stray = case.spawn(port, "--addr", "127.0.0.1")  # beside it: the addresses differ

    done = case.preflight(unit)
    assert done.returncode == 75, done.stdout + done.stderr
    assert not sb.pid_alive(stray)
    case.record(SIGNAL, unit, holder_pid=stray)
    timed_out = case.record(TIMED_OUT, unit, result="timeout")
    assert f"TIME_WAIT 127.0.0.2:{port}" in timed_out["MESSAGE"]
    assert "lingering sockets" in done.stderr and "try again later" in done.stderr
    assert lingering(case, port) == ["TIME-WAIT"]


def test_a_lingering_fin_wait2_is_waited_out(case: Case) -> None:
    port = case.port()
    unit = f"fw2-{case.uid}.service"
    case.config(config(port, unit, extra="reuse_address: false"))  # timeout: 8s
    make_fin_wait2(case, port, linger=3)

    t0 = time.monotonic()
    done = case.preflight(unit)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 6
    waiting = case.record(WAIT, unit, result="waiting")
    assert waiting["PORTGUARD_HOLDER_KIND"] == "lingering"
    case.record(WAIT, unit, result="gone")
    case.record(PORTS_CLEAR, unit, result="clear")
    assert lingering(case, port) == []


def test_a_fin_wait2_turning_into_time_wait_is_still_waited_for(case: Case) -> None:
    port = case.port()
    unit = f"fw2tw-{case.uid}.service"
    case.config(config(port, unit, extra="reuse_address: false\ntimeout: 3s"))
    make_fin_wait2(case, port, linger=30, close_after=1)  # the peer closes after 1 s

    done = case.preflight(unit)
    assert lingering(case, port) == ["TIME-WAIT"]  # the port is not free: still lingering
    assert done.returncode == 75, done.stdout + done.stderr
    timed_out = case.record(TIMED_OUT, unit)
    assert timed_out["PORTGUARD_HOLDER_KIND"] == "lingering"
    assert timed_out["PORTGUARD_RESULT"] == "timeout"
    assert "cannot see" not in done.stderr
