"""Faults around portguard (issue 7, item 2): the system bus or the journal is gone.

Each test boots a sandbox of its own (`fresh_case`): it stops dbus or journald, which a
shared sandbox must keep. Every test asserts the exit status, what is said (stderr, the
journal or the records on stderr) and that nothing wrong was signalled: the pids that
must survive are checked by pid.

- D-Bus unreachable: `who -v` / `--json` name units from cgroups and say so; a twin that
  must be stopped with StopUnit is refused (exit 1), never killed instead, whether
  preflight runs by hand or as the unit's ExecStartPre=.
- D-Bus unreachable and a copy of the service's program running as root: the unit's User=
  is unknown, so it is not a stray and is not signalled (it was, the unit's user taken to
  be root: a bug these tests found).
- journald stopped: preflight's records reach stderr with every field, run directly and
  as ExecStartPre=; nothing crashes.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from support.cases import (
    ACTING,
    CONFLICT,
    PORTS_CLEAR,
    REFUSED,
    SIGNAL,
    Case,
    config,
)
from support.sandbox import Sandbox


def stop_dbus(sb: Sandbox) -> None:
    sb.systemctl("stop", "dbus.socket", "dbus.service", check=True)
    assert sb.run(["busctl", "--system", "list"]).returncode != 0  # the bus is really gone


def no_portguard_action(case: Case) -> None:
    assert not [r for r in case.records() if r["MESSAGE_ID"] in ACTING]


# -- D-Bus unreachable ---------------------------------------------------------------------


def test_without_dbus_who_uses_cgroups_and_a_twin_is_refused_not_killed(
        fresh_case: Case) -> None:
    case, sb, uid, port = fresh_case, fresh_case.sb, fresh_case.uid, fresh_case.port()
    template = f"nb-{uid}@.service"
    a, b = f"nb-{uid}@a.service", f"nb-{uid}@b.service"
    case.config(config(port, template))
    ready = f"/run/nb-{uid}.ready"
    case.unit(template, "--port", str(port), "--workers", "1", "--ready-file", ready)
    case.units += [a, b]  # preflight is their ExecStartPre=
    assert case.start(a).returncode == 0
    case.wait_file(ready)
    twin_pids = case.unit_pids(a)
    assert len(twin_pids) == 2  # the main process and its worker, both on the port
    case.wait_listening(port, twin_pids[0])

    stop_dbus(sb)

    shown = sb.portguard("-v", "who", str(port))
    assert shown.returncode == 1
    assert f"note: {port}/tcp: units named from cgroups: systemd's D-Bus API unreachable" \
        in shown.stdout
    assert a in shown.stdout
    shown = sb.portguard("--json", "who", str(port))
    assert shown.returncode == 1
    doc = json.loads(shown.stdout)["ports"][0]
    assert doc["units_from"] == "cgroup (systemd D-Bus unreachable)"
    assert {(h["pid"], h["unit"], h["unit_state"]) for h in doc["holders"]} == \
        {(pid, a, None) for pid in twin_pids}

    t0 = time.monotonic()
    done = case.preflight(b)
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 5  # refused at once: no waiting for a stop that cannot happen
    assert f"{a} holds a declared port and must be stopped through systemd, whose D-Bus " \
           "API is unreachable" in done.stderr
    assert all(sb.pid_alive(pid) for pid in twin_pids)
    assert case.unit_pids(a) == twin_pids

    no_bus = case.record(CONFLICT, b, result="no-dbus")
    assert "units are named from cgroups and no unit can be stopped" in no_bus["MESSAGE"]
    planned = case.record(CONFLICT, b, result="planned")
    assert (planned["PORTGUARD_HOLDER_KIND"], planned["PORTGUARD_HOLDER_UNIT"],
            planned["PORTGUARD_ACTION"]) == ("twin", a, "stop")
    refused = case.record(REFUSED, b, result="no-dbus")
    assert refused["PORTGUARD_ACTION"] == "refuse"
    assert refused["PORTGUARD_HOLDER_UNIT"] == a
    assert "never falling back to signals for a unit" in refused["MESSAGE"]
    no_portguard_action(case)

    # The same as b's ExecStartPre= (systemctl reaches systemd over its private socket).
    assert case.start(b).returncode != 0
    assert case.state(b) == "failed"
    assert case.state(a) == "active"
    assert all(sb.pid_alive(pid) for pid in twin_pids)
    assert REFUSED in [r["MESSAGE_ID"] for r in case.unit_journal(b)]
    no_portguard_action(case)


def test_without_dbus_the_units_user_is_unknown_so_a_copy_is_not_a_stray(
        fresh_case: Case) -> None:
    case, sb, uid, port = fresh_case, fresh_case.sb, fresh_case.uid, fresh_case.port()
    unit = f"usr-{uid}.service"
    case.config(config(port, unit, extra=f'duplicates:\n  commands: ["*--port {port}"]'))
    case.unit(unit, "--port", str(port), extra="User=nobody\n", guarded=False)
    copy = case.spawn(port)  # as root, outside any unit: the unit's program, not its user

    with_bus = case.preflight(unit, "--dry-run")  # the control: D-Bus names its user
    assert with_bus.returncode == 1, with_bus.stderr
    seen = case.record(CONFLICT, unit, holder_pid=copy, result="dry-run")
    assert (seen["PORTGUARD_HOLDER_KIND"], seen["PORTGUARD_ACTION"]) == ("foreign", "refuse")

    stop_dbus(sb)
    done = case.preflight(unit)
    assert sb.pid_alive(copy), "a copy running as another user than the unit's was killed"
    assert done.returncode == 1, done.stdout + done.stderr
    refused = case.record(REFUSED, unit, holder_pid=copy)
    assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
    no_portguard_action(case)


# -- journald stopped ----------------------------------------------------------------------

FIELDS = re.compile(r"portguard: (?P<message>.*) \[(?P<fields>MESSAGE_ID=[^\]]*)\]")


def stderr_records(text: str) -> list[dict[str, str]]:
    """Records written to stderr: `portguard: MESSAGE [KEY=VALUE ...]`, one per line."""
    out = []
    for line in text.splitlines():
        m = FIELDS.fullmatch(line)
        if m is not None:
            fields = dict(pair.split("=", 1) for pair in m["fields"].split(" "))
            out.append({"MESSAGE": m["message"], **fields})
    return out


def assert_signal_records(records: list[dict[str, Any]], unit: str, port: int,
                          stray: int) -> None:
    assert [r["MESSAGE_ID"] for r in records] == [CONFLICT, SIGNAL, PORTS_CLEAR], records
    for r in records:
        assert r["SYSLOG_IDENTIFIER"] == "portguard"
        assert r["PORTGUARD_UNIT"] == unit
        assert r["PRIORITY"].isdigit()
    conflict, signalled, clear = records
    for r in (conflict, signalled):
        assert (r["PORTGUARD_PORT"], r["PORTGUARD_PROTO"], r["PORTGUARD_HOLDER_PID"],
                r["PORTGUARD_HOLDER_KIND"], r["PORTGUARD_ACTION"]) == \
            (str(port), "tcp", str(stray), "stray", "signal")
    assert (conflict["PORTGUARD_RESULT"], conflict["PRIORITY"]) == ("planned", "4")
    assert (signalled["PORTGUARD_RESULT"], signalled["PRIORITY"]) == ("exited", "5")
    assert signalled["MESSAGE"] == f"{unit}: {port}/tcp: sent SIGTERM to pid {stray} " \
                                   "through a pidfd"
    assert (clear["PORTGUARD_RESULT"], clear["PORTGUARD_ACTION"]) == ("clear", "none")


def test_without_journald_records_go_to_stderr_with_their_fields(
        fresh_case: Case) -> None:
    case, sb, uid, port = fresh_case, fresh_case.sb, fresh_case.uid, fresh_case.port()
    unit = f"nj-{uid}.service"
    case.config(config(port, unit))
    sb.systemctl("stop", "systemd-journald.socket", "systemd-journald.service", check=True)
    assert sb.systemctl("is-active", "systemd-journald.service",
                        "systemd-journald.socket").stdout.split() == ["inactive", "inactive"]
    # With journald gone systemd connects a unit's stderr to /dev/null: a file keeps it.
    err = f"/run/{unit}.stderr"
    case.unit(unit, "--port", str(port), extra=f"StandardError=file:{err}\n")
    bystander = case.spawn(case.port())  # another port: must not be touched

    stray = case.spawn(port)
    done = case.preflight(unit)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not sb.pid_alive(stray)
    assert_signal_records(stderr_records(done.stderr), unit, port, stray)

    stray = case.spawn(port)  # again, now as the unit's ExecStartPre=
    case.start_active(unit)
    assert not sb.pid_alive(stray)
    logged = sb.read_file(err)
    assert "Traceback" not in logged
    assert_signal_records(stderr_records(logged), unit, port, stray)
    assert sb.pid_alive(bystander)
    assert sb.pid_alive(case.main_pid(unit))
