"""Faults around portguard (issue 7, item 2): who the holder is, and whether it is still it.

Nothing may be signalled that portguard cannot prove is the process it inspected:

- the holder exits between the scan and the signal: nothing signalled, exit 0;
- its pid is reused by a new process with the same name (start time differs): nothing
  signalled, "identity changed" journaled; deterministic at `actions.signal_process`
  (a real process, an inspected start time that is stale), and with real pid reuse in
  the sandbox's pid namespace (ns_last_pid, as CRIU does) through the whole preflight;
- another user's process named exactly like the service: foreign, untouched;
- the service's own argv in another pid namespace (a container): untouchable, refused;
- the duplicate takes the port again at once (a copy that respawns itself): reported,
  no fight, bounded.

Strays are started with `sb.spawn` (outside any unit, parent PID 1); `Paused` (from
support/unprivileged) holds preflight just before `signal_process` so the test can act.
test_faults_limits.py has the faults of portguard's own means (fds, /proc).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from support.cases import PORTS_CLEAR, REFUSED, SIGNAL, Case, config
from support.sandbox import BASE_ENV, PYTHON, Sandbox, listener_argv
from support.unprivileged import (
    NOBODY,
    Paused,
    gone,
    shared_copy,
    signals_sent,
)

IDENTITY_CHANGED = "8ad43760f38648719a0731aee8185aca"
SIGNAL_PROCESS = "portguard.commands.preflight_execute:signal_process"


def running(sb: Sandbox, pid: int) -> bool:
    """Alive and not a zombie, by its pid in the sandbox (sb.pid_alive cannot find a
    process whose innermost pid namespace is a nested one)."""
    stat = sb.run(["cat", f"/proc/{pid}/stat"]).stdout
    return bool(stat) and stat.rpartition(")")[2].split()[0] != "Z"


# -- between the scan and the signal ---------------------------------------------------------

STALE = r"""
import json, signal, sys, time
from portguard.act import signals as actions
from portguard.observe.procs import processes
from portguard.observe.kernel import sockets
pid, port, skew = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
[sock] = [s for s in sockets.query([port], ("tcp",)) if s.state == "LISTEN"]
inspected = processes.read_process(pid)
inspected = inspected._replace(start_time=inspected.start_time + skew)
out = actions.signal_process(inspected, sock.inode, signal.SIGTERM, kill_after=1.0,
                             deadline=time.monotonic() + 3)
print(json.dumps(out._asdict()))
"""


def test_signal_process_refuses_a_pid_whose_start_time_changed(case: Case) -> None:
    sb, port = case.sb, case.port()
    holder = case.spawn(port)
    done = sb.python(STALE, str(holder), str(port), "-1", check=True)
    outcome = json.loads(done.stdout)
    assert (outcome["result"], outcome["signalled"]) == ("identity-changed", [])
    assert f"pid {holder} is now another process" in outcome["detail"]
    time.sleep(0.3)
    assert sb.pid_alive(holder) and sb.listening_pids(port) == {holder}
    # the control: with the start time it really has, the same call signals it
    done = sb.python(STALE, str(holder), str(port), "0", check=True)
    assert json.loads(done.stdout)["result"] == "exited"
    assert not sb.pid_alive(holder)


def stray_gone_while_paused(case: Case, name: str) -> tuple[str, int, Paused]:
    """A unit, a stray on its port, and preflight held just before it signals the stray,
    which is then killed and reaped: (unit, the stray's pid, the held run)."""
    sb, port = case.sb, case.port()
    unit = f"{name}-{case.uid}.service"
    case.config(config(port, unit))
    case.unit(unit, "--port", str(port))
    stray = case.spawn(port)
    run = Paused(sb, case.uid, SIGNAL_PROCESS, "--config", case.cfg, "preflight", unit)
    run.wait_paused()  # it inspected `stray`: pid, start time, socket
    sb.kill(stray)
    sb.wait_for(lambda: gone(sb, stray), 5, f"pid {stray} to be reaped")
    return unit, stray, run


def test_a_holder_that_exits_between_scan_and_signal_is_not_signalled(case: Case) -> None:
    unit, stray, run = stray_gone_while_paused(case, "gone")
    done = run.go()
    assert done.returncode == 0, done.stdout + done.stderr
    record = case.record(SIGNAL, unit, holder_pid=stray)
    assert (record["PORTGUARD_ACTION"], record["PORTGUARD_RESULT"]) == ("none", "gone")
    assert "exited before it could be signalled" in record["MESSAGE"]
    assert not signals_sent(case, unit)
    case.record(PORTS_CLEAR, unit, result="clear")


def spawn_at_pid(sb: Sandbox, pid: int, argv: list[str]) -> int:
    """Start argv inside the sandbox as pid `pid` (free), outside any unit; its pid.

    From the host: enter the sandbox's pid (and net, cgroup) namespace but not its mount
    namespace, where /proc/sys is read-only; write pid-1 to ns_last_pid (which acts on
    the writer's pid namespace) and fork: the kernel hands out the next pid. The child
    joins the sandbox's mounts before exec. Another fork in between takes the pid: retry.
    """
    script = ('echo $(( $1 - 1 )) > /proc/sys/kernel/ns_last_pid || exit 97\n'
              'setsid nsenter -t "$2" -m -u -i -- "${@:3}" </dev/null >/dev/null 2>&1 &\n'
              'echo $!')
    enter = ["/bin/sh", "-c", f'echo $$ > {sb.cgroup_root}/cgroup.procs; exec "$@"', "reuse",
             "nsenter", "-t", str(sb.pid), "-p", "-n", "-C", "--",
             "/bin/bash", "-c", script, "reuse", str(pid), str(sb.pid), *argv]
    for _ in range(5):
        out = subprocess.run(enter, capture_output=True, text=True, env=BASE_ENV, timeout=10,
                             check=False)
        if out.returncode == 97:
            pytest.skip(f"cannot write ns_last_pid: {out.stderr.strip()}")
        got = int(out.stdout.split()[-1])
        if got == pid:
            return got
        sb.kill(got)  # someone forked in between: try again
    pytest.skip(f"could not get pid {pid} back after 5 tries")


def test_a_pid_reused_by_a_new_process_of_the_same_name_is_not_signalled(case: Case) -> None:
    sb = case.sb
    unit, stray, run = stray_gone_while_paused(case, "reuse")
    other = case.port()  # the same program and name, on another port
    impostor = spawn_at_pid(sb, stray, listener_argv("--port", str(other)))
    case.pids.append(impostor)
    case.wait_listening(other, impostor)
    assert impostor == stray

    done = run.go()
    assert done.returncode == 0, done.stdout + done.stderr  # the port itself is free
    assert sb.pid_alive(impostor) and sb.listening_pids(other) == {impostor}
    changed = case.record(IDENTITY_CHANGED, unit, holder_pid=stray)
    assert (changed["PORTGUARD_ACTION"], changed["PORTGUARD_RESULT"]) == \
        ("none", "identity-changed")
    assert changed["PORTGUARD_HOLDER_KIND"] == "stray"
    assert "identity changed" in changed["MESSAGE"] and "not signalled" in changed["MESSAGE"]
    assert changed["PRIORITY"] == "4"
    assert not signals_sent(case, unit)
    case.record(PORTS_CLEAR, unit, result="clear")


# -- who holds it -----------------------------------------------------------------------------


def test_another_users_process_named_like_the_service_is_foreign(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"named-{case.uid}.service"
    argv = [*shared_copy(sb, case.uid), "--port", str(port)]
    case.config(config(port, unit))
    sb.write_unit(unit, f"[Service]\nExecStart={' '.join(argv)}\n")  # runs as root
    case.units.append(unit)
    holder = sb.spawn([*NOBODY, *argv], wait_exec=False)  # the same argv, as nobody
    case.pids.append(holder)
    case.wait_listening(port, holder)

    done = case.preflight(unit)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"pid {holder}" in done.stderr and "user nobody" in done.stderr
    refused = case.record(REFUSED, unit, holder_pid=holder)
    assert (refused["PORTGUARD_HOLDER_KIND"], refused["PORTGUARD_ACTION"]) == \
        ("foreign", "refuse")
    assert sb.pid_alive(holder) and sb.listening_pids(port) == {holder}
    assert not signals_sent(case, unit)


def test_a_copy_in_another_pid_namespace_is_never_touched(case: Case) -> None:
    """The unit's own argv, as its user, outside any unit: a stray, but for its pid
    namespace (as in a container): untouchable, so policy stop refuses."""
    sb, port = case.sb, case.port()
    unit = f"ns-{case.uid}.service"
    case.config(config(port, unit))
    case.unit(unit, "--port", str(port), guarded=False)
    wrapper = sb.spawn(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
                        *listener_argv("--port", str(port))])
    case.pids.append(wrapper)
    holder = sb.wait_for(lambda: next(iter(sb.listening_pids(port)), None), 10,
                         "the namespaced copy to listen")
    case.pids.append(holder)
    assert sb.run(["test", f"/proc/{holder}/ns/pid", "-ef", "/proc/1/ns/pid"]).returncode != 0

    done = case.preflight(unit)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "another pid namespace" in done.stderr
    refused = case.record(REFUSED, unit, holder_pid=holder)
    assert (refused["PORTGUARD_HOLDER_KIND"], refused["PORTGUARD_ACTION"]) == \
        ("stray", "refuse")
    assert running(sb, holder) and running(sb, wrapper)
    assert sb.listening_pids(port) == {holder}
    assert not signals_sent(case, unit)


RESPAWN = r"""
import os, signal, socket, subprocess, sys
port = int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", port))
s.listen()

def respawn(signum, frame):
    # What a supervisor does at once: a fresh copy (new pid, new socket) listens
    # before this one is gone, so the port is never free in between.
    copy = subprocess.Popen([sys.executable, *sys.argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, start_new_session=True)
    copy.stdout.readline()
    os._exit(0)

signal.signal(signal.SIGTERM, respawn)
print("listening", flush=True)
while True:
    signal.pause()
"""


def test_a_duplicate_that_takes_the_port_again_is_reported_not_fought(case: Case) -> None:
    sb, port = case.sb, case.port()
    unit = f"respawn-{case.uid}.service"
    script = f"/tmp/respawn-{case.uid}.py"
    sb.write_file(script, RESPAWN)
    argv = [PYTHON, script, "--port", str(port)]
    case.config(config(port, unit, extra="timeout: 3s"))
    sb.write_unit(unit, f"[Service]\nExecStart={' '.join(argv)}\n")
    case.units.append(unit)
    first = sb.spawn(argv)
    case.wait_listening(port, first)

    t0 = time.monotonic()
    done = case.preflight(unit)
    took = time.monotonic() - t0
    after = sb.listening_pids(port)
    case.pids += sorted(after)
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 6  # the 3 s budget, then it gives up: no loop
    assert "still held after acting" in done.stderr and "not retrying" in done.stderr
    assert not sb.pid_alive(first)
    [second] = after  # the new copy, never signalled
    assert second != first and sb.pid_alive(second)
    assert f"pid {second}" in done.stderr
    sent = signals_sent(case, unit)
    assert [(r["PORTGUARD_HOLDER_PID"], r["PORTGUARD_RESULT"]) for r in sent] == \
        [(str(first), "exited")]
    refused = case.record(REFUSED, unit, result="still-held")
    assert f"pid {second}" in refused["MESSAGE"]
