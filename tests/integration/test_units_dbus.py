"""observe.systemd.units' job and state API against a real systemd 252 (the sandbox), over D-Bus.

What is checked here, and the pystemd behaviour it rests on (pystemd 0.11 and 0.15 share
the same dbuslib; see the last section):

- `DBus.match_signal(sender, path, iface, member, callback)` keeps only a raw pointer to
  `callback` and sets `callback.metadata`, so the callback must be a plain function (a
  bound method raises AttributeError) that someone else keeps alive; units.py pins it.
- The callback is called from `process()` as `callback(msg, error=None, userdata=None)`;
  `msg.process_reply(False)` fills `msg.body`, for JobRemoved (signature "uoss")
  `[job_id, b"/org/freedesktop/systemd1/job/N", b"unit.service", b"done"]`. In
  `process_reply(True)` headers, "Interface" holds the object path (a pystemd bug).
- `process()` dispatches one message at most and does not say whether it did; signals
  that arrive during a synchronous `call_method` are queued and dispatched later, so a
  JobRemoved that comes in with (or before) StopUnit's reply is seen after it: units.py
  keeps every JobRemoved since it subscribed, by job path, and looks its job up there.
- Errors: the per-name exception classes (DBusAccessDeniedError, DBusNoSuchUnitError...)
  leave `err_name` empty; DBusNoSuchUnitError's name is org.freedesktop.systemd1's, not
  org.freedesktop.DBus.Error's. GetUnitFileState of a unit with no file answers
  org.freedesktop.DBus.Error.FileNotFound (not NoSuchUnit). A second Subscribe on one
  connection is org.freedesktop.systemd1.AlreadySubscribed.

Orderings a real systemd does not produce on demand (a JobRemoved dispatched before the
method returns, a job that vanishes silently, EINTR, a lost bus) run on a fake bus in
test_units_fakebus.py; they need no sandbox.
"""

from __future__ import annotations

import json
import os
import signal
import sysconfig
import time
from typing import Any

import pytest
from support.availability import skip_or_fail
from support.sandbox import REPO, Sandbox, listener_exec

from portguard.errors import ExitStatus

PRELUDE = """\
import json, sys
from portguard.errors import PortguardError
from portguard.observe.systemd.units import Systemd
from portguard.observe.systemd.bus_signals import JobResult
from portguard.act.units import UnitControl
sd = Systemd.connect()
ctl = UnitControl(sd)
U = sys.argv[1:]
def show(f):
    try:
        v = f()
        doc = {"value": v._asdict() if isinstance(v, JobResult) else v}
    except PortguardError as e:
        doc = {"error": type(e).__name__, "message": e.message,
               "exit_status": int(e.exit_status), "dbus_name": getattr(e, "dbus_name", None)}
    print(json.dumps(doc), flush=True)
    return doc
"""


def api(sb: Sandbox, *exprs: str, args: tuple[str, ...] = (), timeout: float = 60
        ) -> list[dict[str, Any]]:
    """Evaluate each expression (with `sd`, a connected Systemd,
    `ctl`, its UnitControl, and U = args) inside the
    sandbox, in one process; one {"value": ...} or {"error": ...} per expression."""
    code = PRELUDE + "".join(f"show(lambda: {e})\n" for e in exprs)
    done = sb.python(code, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(docs) == len(exprs), done.stdout + done.stderr
    return docs


def job_record(sb: Sandbox, unit: str, job_type: str) -> dict[str, Any]:
    """systemd's own journal record of a finished job: JOB_TYPE, JOB_RESULT."""
    return sb.wait_journal(lambda r: r.get("JOB_TYPE") == job_type and "JOB_RESULT" in r,
                           f"UNIT={unit}")


def free_port(uid: str) -> int:
    return 20000 + int(uid, 16) % 20000


# -- UnitControl.stop / start ---------------------------------------------------------------


def test_stop_unit_of_a_running_unit_is_done_and_leaves_it_inactive(sandbox: Sandbox,
                                                                    uid: str) -> None:
    unit = f"stop-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    sandbox.systemctl("start", unit, check=True)
    stopped, state = api(sandbox, "ctl.stop(U[0], timeout=10)", "sd.active_state(U[0])",
                         args=(unit,))
    assert stopped["value"]["result"] == "done"
    assert stopped["value"]["unit"] == unit
    assert stopped["value"]["job"].startswith("/org/freedesktop/systemd1/job/")
    assert state == {"value": "inactive"}
    assert sandbox.unit_property(unit, "ActiveState") == "inactive"
    assert job_record(sandbox, unit, "stop")["JOB_RESULT"] == "done"


def test_stop_unit_of_an_inactive_unit_is_done_at_once(sandbox: Sandbox, uid: str) -> None:
    # The job ends in the same loop iteration that queued it: its JobRemoved follows the
    # reply immediately and is dispatched only once the call has returned.
    unit = f"idle-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    results = api(sandbox, *["ctl.stop(U[0], timeout=5)"] * 5, args=(unit,))
    assert [r["value"]["result"] for r in results] == ["done"] * 5
    assert len({r["value"]["job"] for r in results}) == 5


def test_stop_with_a_hanging_exec_stop_reports_what_systemd_decided(sandbox: Sandbox,
                                                                    uid: str) -> None:
    unit = f"hang-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n"
                             "ExecStop=/bin/sleep 100\nTimeoutStopSec=1\n")
    sandbox.systemctl("start", unit, check=True)
    t0 = time.monotonic()
    [stopped] = api(sandbox, "ctl.stop(U[0], timeout=20)", args=(unit,))
    assert 0.9 < time.monotonic() - t0 < 15
    # systemd kills ExecStop after TimeoutStopSec, the unit ends "failed" with result
    # "timeout", and the stop *job* is done: the unit did stop.
    assert stopped["value"]["result"] == job_record(sandbox, unit, "stop")["JOB_RESULT"]
    assert stopped["value"]["result"] == "done"
    assert sandbox.unit_property(unit, "ActiveState") == "failed"
    assert sandbox.unit_property(unit, "Result") == "timeout"
    sandbox.systemctl("reset-failed", unit)


def test_stop_unit_gives_up_after_its_timeout_and_the_job_goes_on(sandbox: Sandbox,
                                                                  uid: str) -> None:
    unit = f"slow-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\nExecStop=/bin/sleep 3\n")
    sandbox.systemctl("start", unit, check=True)
    t0 = time.monotonic()
    gave_up, again = api(sandbox, "ctl.stop(U[0], timeout=0.3)",
                         "ctl.stop(U[0], timeout=20)", args=(unit,))
    assert gave_up["error"] == "TimedOutError"
    assert gave_up["exit_status"] == ExitStatus.TIMEOUT == 75
    assert unit in gave_up["message"]
    assert "0.3s" in gave_up["message"]
    # portguard stopped waiting, systemd did not stop stopping: asked again, the same job
    # (merged) is followed to its end
    assert again["value"]["result"] == "done"
    assert again["value"]["job"] in gave_up["message"]
    assert 2.5 < time.monotonic() - t0 < 15
    assert sandbox.unit_property(unit, "ActiveState") == "inactive"


def test_start_unit_done_failed_and_dependency(sandbox: Sandbox, uid: str) -> None:
    ok, bad, dep = f"ok-{uid}.service", f"bad-{uid}.service", f"dep-{uid}.service"
    sandbox.write_unit(ok, "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
                       reload=False)
    sandbox.write_unit(bad, "[Service]\nType=oneshot\nExecStart=/bin/false\n", reload=False)
    sandbox.write_unit(dep, f"[Unit]\nRequires={bad}\nAfter={bad}\n"
                            "[Service]\nExecStart=/bin/sleep 1000\n")
    results = api(sandbox, "ctl.start(U[0], timeout=10)", "ctl.start(U[1], timeout=10)",
                  "ctl.start(U[2], timeout=10)", "sd.active_state(U[0])",
                  args=(ok, bad, dep))
    assert [r["value"]["result"] for r in results[:3]] == ["done", "failed", "dependency"]
    assert [r["value"]["unit"] for r in results[:3]] == [ok, bad, dep]
    assert results[3] == {"value": "active"}
    assert job_record(sandbox, bad, "start")["JOB_RESULT"] == "failed"
    sandbox.systemctl("stop", ok)
    sandbox.systemctl("reset-failed", bad)


# -- UnitControl.kill --------------------------------------------------------------------------


def test_kill_unit_sigkill_kills_every_process_of_the_unit(sandbox: Sandbox, uid: str) -> None:
    unit = f"stubborn-{uid}.service"
    ready = f"/run/ready-{uid}"
    sandbox.write_unit(unit, "[Service]\nExecStart=" + listener_exec(
        "--port", str(free_port(uid)), "--workers", "2", "--ignore-term",
        "--ready-file", ready) + "\n")
    sandbox.systemctl("start", unit, check=True)
    sandbox.wait_for(lambda: sandbox.run(["test", "-s", ready]).returncode == 0, 10,
                     f"{unit} to listen")
    cgroup = sandbox.unit_property(unit, "ControlGroup")
    pids = [int(p) for p in sandbox.read_file(f"/sys/fs/cgroup{cgroup}/cgroup.procs").split()]
    assert len(pids) == 3  # the parent and two workers sharing the socket

    term, kill = api(sandbox, f"ctl.kill(U[0], {int(signal.SIGTERM)})",
                     f"ctl.kill(U[0], {int(signal.SIGKILL)})", args=(unit,))
    assert term == {"value": None} and kill == {"value": None}
    sandbox.wait_for(lambda: not any(sandbox.pid_alive(p) for p in pids), 10,
                     f"every process of {unit} to die")
    assert sandbox.wait_unit_state(unit, "failed", "inactive") == "failed"
    assert sandbox.unit_property(unit, "Result") == "signal"
    sandbox.systemctl("reset-failed", unit)


def test_kill_unit_of_a_unit_not_loaded_is_no_such_unit(sandbox: Sandbox, uid: str) -> None:
    idle, empty = f"nokill-{uid}.service", f"empty-{uid}.service"
    sandbox.write_unit(idle, "[Service]\nExecStart=/bin/sleep 1000\n", reload=False)
    sandbox.write_unit(empty, "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                              "ExecStart=/bin/true\n")
    sandbox.systemctl("start", empty, check=True)  # active, without a process
    never_started, no_process = api(sandbox, f"ctl.kill(U[0], {int(signal.SIGKILL)})",
                                    f"ctl.kill(U[1], {int(signal.SIGKILL)})",
                                    args=(idle, empty))
    assert never_started["error"] == "SystemdError"
    assert never_started["dbus_name"] == "org.freedesktop.systemd1.NoSuchUnit"  # not loaded
    assert no_process == {"value": None}  # systemd 252: nothing to signal is no error
    sandbox.systemctl("stop", empty)


# -- error mapping ----------------------------------------------------------------------


def test_masked_and_unknown_units_map_to_systemd_errors(sandbox: Sandbox, uid: str) -> None:
    masked, bogus = f"masked-{uid}.service", f"bogus-{uid}.service"
    sandbox.run(["ln", "-s", "/dev/null", f"/etc/systemd/system/{masked}"], check=True)
    sandbox.systemctl("daemon-reload", check=True)
    start_masked, stop_masked, stop_bogus, start_bogus = api(
        sandbox, "ctl.start(U[0], timeout=5)", "ctl.stop(U[0], timeout=5)",
        "ctl.stop(U[1], timeout=5)", "ctl.start(U[1], timeout=5)",
        args=(masked, bogus))
    assert start_masked["error"] == "SystemdError"
    assert start_masked["dbus_name"] == "org.freedesktop.systemd1.UnitMasked"
    assert start_masked["exit_status"] == ExitStatus.BLOCKED
    assert masked in start_masked["message"]
    assert stop_masked["value"]["result"] == "done"  # stopping a masked unit is allowed
    assert stop_bogus["error"] == "SystemdError"
    assert stop_bogus["dbus_name"] == "org.freedesktop.systemd1.NoSuchUnit"
    assert start_bogus["dbus_name"] == "org.freedesktop.systemd1.NoSuchUnit"


def test_load_state_of_existing_missing_and_masked_units(sandbox: Sandbox, uid: str) -> None:
    here, masked = f"here-{uid}.service", f"mask2-{uid}.service"
    sandbox.write_unit(here, "[Service]\nExecStart=/bin/sleep 1000\n", reload=False)
    sandbox.run(["ln", "-s", "/dev/null", f"/etc/systemd/system/{masked}"], check=True)
    sandbox.systemctl("daemon-reload", check=True)
    states = api(sandbox, "sd.load_state(U[0])", "sd.load_state(U[1])", "sd.load_state(U[2])",
                 "sd.active_state(U[1])", "sd.load_state(U[3])",
                 args=(here, f"none-{uid}.service", masked, f"tpl-{uid}@.service"))
    assert [s.get("value") for s in states[:4]] == ["loaded", "not-found", "masked", "inactive"]
    assert states[4]["dbus_name"] == "org.freedesktop.DBus.Error.InvalidArgs"  # a template


def test_unit_file_state_of_templates_and_instances(sandbox: Sandbox, uid: str) -> None:
    static, enabled = f"st-{uid}@.service", f"en-{uid}@.service"
    sandbox.write_unit(static, "[Service]\nExecStart=/bin/sleep 1000\n", reload=False)
    sandbox.write_unit(enabled, "[Service]\nExecStart=/bin/sleep 1000\n"
                                "[Install]\nWantedBy=multi-user.target\n")
    states = api(sandbox, *[f"sd.unit_file_state(U[{i}])" for i in range(5)],
                 args=(static, f"st-{uid}@a.service", enabled, f"en-{uid}@a.service",
                       f"none-{uid}@.service"))
    assert [s["value"] for s in states] == ["static", "static", "disabled", "disabled", None]


def test_reload_is_a_daemon_reload(sandbox: Sandbox, uid: str) -> None:
    unit = f"rel-{uid}.service"
    sandbox.write_unit(unit, "[Unit]\nDescription=one\n[Service]\nExecStart=/bin/sleep 1000\n")
    sandbox.systemctl("start", unit, check=True)  # loaded, so it is not simply re-read
    sandbox.write_unit(unit, "[Unit]\nDescription=two\n[Service]\nExecStart=/bin/sleep 1000\n",
                       reload=False)
    assert sandbox.unit_property(unit, "NeedDaemonReload") == "yes"
    assert api(sandbox, "ctl.reload()") == [{"value": None}]
    assert sandbox.unit_property(unit, "NeedDaemonReload") == "no"
    assert sandbox.unit_property(unit, "Description") == "two"
    sandbox.systemctl("stop", unit)


# -- not root: polkit says no -----------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
DEBIAN_PYTHON = "/usr/bin/python3"


def nobody_python(sb: Sandbox) -> tuple[list[str], dict[str, str]]:
    """argv prefix and env that run portguard as nobody.

    The venv's interpreter lives under /root (mode 700), out of nobody's reach; Debian's
    /usr/bin/python3 (3.11, the same ABI) imports portguard from the repository and its
    dependencies (pystemd's compiled dbuslib, PyYAML) from the venv's site-packages, which
    are world-readable. Debian's own python3-pystemd is not needed (and not installed).
    """
    site = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{REPO}:{site}"}
    probe = sb.run([*NOBODY, DEBIAN_PYTHON, "-c",
                    "import pystemd.dbuslib, portguard.observe.systemd.units"], env=env)
    if probe.returncode != 0:
        skip_or_fail(f"nobody cannot import pystemd with {DEBIAN_PYTHON}: {probe.stderr}")
    return [*NOBODY, DEBIAN_PYTHON], env


@pytest.mark.skipif(not os.access(DEBIAN_PYTHON, os.X_OK), reason=f"no {DEBIAN_PYTHON}")
@pytest.mark.parametrize(("expr", "action"), [
    ("ctl.stop(U[0], timeout=5)", "org.freedesktop.systemd1.manage-units"),
    ("ctl.start(U[0], timeout=5)", "org.freedesktop.systemd1.manage-units"),
    ("ctl.kill(U[0], 9)", "org.freedesktop.systemd1.manage-units"),
    ("ctl.reload()", "org.freedesktop.systemd1.reload-daemon"),
])
def test_access_denied_is_not_permitted_exit_77(sandbox: Sandbox, uid: str, expr: str,
                                                action: str) -> None:
    unit = f"guarded-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    sandbox.systemctl("start", unit, check=True)
    argv, env = nobody_python(sandbox)
    code = PRELUDE + f"doc = show(lambda: {expr})\nsys.exit(doc.get('exit_status', 0))\n"
    done = sandbox.run([*argv, "-c", code, unit], env=env)
    doc = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == ExitStatus.NOT_PERMITTED == 77, done.stdout + done.stderr
    assert doc["error"] == "NotPermittedError"
    assert action in doc["message"]
    assert "run as root" in doc["message"]
    assert sandbox.unit_property(unit, "ActiveState") == "active"  # untouched
    sandbox.systemctl("stop", unit)


# -- pystemd itself: what units.py relies on ------------------------------------------------

PYSTEMD_SHAPES = """\
import json
from pystemd.dbuslib import DBus, apply_signature
D, P, M = b"org.freedesktop.systemd1", b"/org/freedesktop/systemd1", \\
    b"org.freedesktop.systemd1.Manager"
bus = DBus(); bus.open()
class Holder:
    def method(self, msg, error=None, userdata=None): pass
try:
    bus.match_signal(D, P, M, b"JobRemoved", Holder().method)
    bound = "accepted"
except AttributeError as exc:
    bound = "AttributeError"
seen = []
def on_removed(msg, error=None, userdata=None):
    msg.process_reply(True)
    seen.append({"body": [x.decode() if isinstance(x, bytes) else x for x in msg.body],
                 "types": [type(x).__name__ for x in msg.body], "error": error,
                 "userdata": userdata, "interface": msg.headers["Interface"].decode(),
                 "member": msg.headers["Member"].decode()})
bus.match_signal(D, P, M, b"JobRemoved", on_removed)
bus.call_method(D, P, M, b"Subscribe", None)
job = bus.call_method(D, P, M, b"StopUnit", apply_signature(b"ss", [UNIT, b"replace"])).body
for _ in range(200):
    if seen: break
    bus.process(); bus.wait(50000)
print(json.dumps({"bound": bound, "job": job.decode(), "seen": seen}))
"""


def test_pystemd_signal_callback_and_jobremoved_body(sandbox: Sandbox, uid: str) -> None:
    unit = f"shape-{uid}.service"
    sandbox.write_unit(unit, "[Service]\nExecStart=/bin/sleep 1000\n")
    done = sandbox.python(f"UNIT = {unit.encode()!r}\n" + PYSTEMD_SHAPES)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["bound"] == "AttributeError"  # pystemd sets callback.metadata
    [seen] = doc["seen"]
    job_id = int(doc["job"].rpartition("/")[2])
    assert seen["body"] == [job_id, doc["job"], unit, "done"]
    assert seen["types"] == ["int", "bytes", "bytes", "bytes"]
    assert (seen["error"], seen["userdata"]) == (None, None)
    assert seen["member"] == "JobRemoved"
    assert seen["interface"] == "/org/freedesktop/systemd1"  # pystemd bug: it is the path


# -- socket units (DESIGN case 7) ---------------------------------------------------------


def test_socket_units_list_what_they_listen_on_and_activate(sandbox: Sandbox, uid: str) -> None:
    sock, svc, port = f"lsn-{uid}.socket", f"lsn-{uid}.service", free_port(uid)
    sandbox.write_unit(sock, f"[Socket]\nListenStream={port}\nListenDatagram=127.0.0.1:{port}\n"
                       "ListenStream=/run/lsn-" + uid + ".sock\n")
    sandbox.write_unit(svc, "[Service]\nExecStart=/bin/sleep 1000\n")
    sandbox.systemctl("start", sock, check=True)
    try:
        listed, of_service, described = api(
            sandbox, "[u._asdict() for u in sd.socket_units([U[0]])]",
            "[u.id for u in sd.activation_sockets(U[1])]", "sd.describe_socket(U[0])._asdict()",
            args=(sock, svc))
        [unit] = listed["value"]
        assert (unit["id"], unit["active_state"], unit["sub_state"]) == (
            sock, "active", "listening")
        assert unit["triggers"] == [svc]
        assert unit["listen"] == [["Stream", f"[::]:{port}"], ["Datagram", f"127.0.0.1:{port}"],
                                  ["Stream", f"/run/lsn-{uid}.sock"]]
        assert of_service["value"] == [sock]
        assert described["value"] == unit
    finally:
        sandbox.systemctl("stop", sock, svc)
