"""openssh-server under its packaged ssh.socket (ListenStream=22, Accept=no) and ssh.service
(Type=notify, Restart=on-failure): PID 1 holds 22 until a connection starts ssh.service,
which serves the socket it is passed (issue 11 items 2 and 3, DESIGN cases 4 and 7)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.daemons import Field
from support.guard import CONFLICT, PORTS_CLEAR, REFUSED, guarding

DAEMONS_USED = ["ssh"]
PORT = 22


def keyscan(field: Field) -> str:
    """What `ssh-keyscan` gets from 127.0.0.1:22: the host key line, if sshd answered."""
    return field.sb.run(["ssh-keyscan", "-T", "10", "-t", "ed25519", "127.0.0.1"],
                        timeout=30).stdout


@pytest.fixture
def ssh(field: Field) -> Iterator[Field]:
    field.install("ssh")
    yield field
    field.sb.systemctl("stop", "ssh.socket", "ssh.service", timeout=60)
    field.sb.systemctl("reset-failed", "ssh.socket", "ssh.service")


def test_a_connection_starts_guarded_sshd_through_ssh_socket(ssh: Field) -> None:
    field = ssh
    with guarding(field.sb, "ssh.service", PORT) as guard:
        installed = guard.run("install", "ssh.service")  # again: to read its note
        assert "ssh.service is socket-activated by ssh.socket (listening on [::]:22)" in \
            installed.stderr
        field.start("ssh.socket")
        assert field.holders(PORT) == {1: "systemd"}
        assert field.is_active("ssh.service") == "inactive"

        assert "ssh-ed25519" in keyscan(field)  # the first connection: sshd answers
        assert field.is_active("ssh.service") == "active"
        assert field.is_active("ssh.socket") == "active"
        sshd = int(field.sb.unit_property("ssh.service", "MainPID"))
        assert field.holders(PORT) == {1: "systemd", sshd: "sshd"}
        assert "ssh-ed25519" in keyscan(field)  # and keeps serving

        [clear] = guard.records(PORTS_CLEAR, unit="ssh.service")
        assert "held only by its own activation socket (ssh.socket)" in clear["MESSAGE"]
        assert not guard.records(REFUSED) and not guard.records(CONFLICT)
        assert field.sb.unit_property("ssh.service", "NRestarts") == "0"
        assert 'Status: "portguard' not in field.status("ssh.service")

        doc = json.loads(guard.run("--json", "who", str(PORT)).stdout)
        rows = {h["pid"]: h for h in doc["ports"][0]["holders"]}
        assert (rows[1]["unit"], rows[1]["activates"]) == ("ssh.socket", ["ssh.service"])
        assert rows[sshd]["unit"] == "ssh.service"
        status = guard.run("status")
        assert status.returncode == 0 and "port 22: in use by the service" in status.stdout


def test_a_second_sshd_unit_on_22_is_refused_and_told_to_stop_ssh_socket(
        ssh: Field, uid: str) -> None:
    field = ssh
    second = f"sshd-second-{uid}.service"
    field.sb.write_unit(second, "[Service]\nExecStartPre=/usr/sbin/sshd -t\n"
                        "ExecStart=/usr/sbin/sshd -D -p 22\nRuntimeDirectory=sshd\n")
    field.start("ssh.socket")
    with guarding(field.sb, second, PORT) as guard:
        started = field.start(second, check=False)
        assert started.returncode != 0
        assert field.is_active(second) == "failed"
        [refused] = guard.records(REFUSED, unit=second)
        assert (refused["PORTGUARD_HOLDER_UNIT"], refused["PORTGUARD_HOLDER_PID"],
                refused["PORTGUARD_HOLDER_KIND"]) == ("ssh.socket", "1", "foreign")
        said = refused["MESSAGE"]
        assert "PID 1 (systemd) for ssh.socket" in said
        assert "ssh.socket, which activates ssh.service" in said
        assert "systemctl stop ssh.socket" in said
        assert "init.scope" not in said
        shown = field.status(second)
        assert 'Status: "portguard: ' in shown and "systemctl stop ssh.socket" in shown
        # nothing was touched: systemd still listens for ssh.socket, and sshd answers
        assert field.holders(PORT) == {1: "systemd"}
        assert field.is_active("ssh.socket") == "active"
        assert "ssh-ed25519" in keyscan(field)
        assert guard.signalled() == set()
        table = guard.run("who", str(PORT)).stdout
        assert "ssh.socket" in table and "init.scope" not in table


def test_a_login_named_like_sshds_bind_error_is_no_bind_failure_for_why(ssh: Field) -> None:
    """Anyone who can reach port 22 writes into sshd's log: the user name of a login
    attempt. Named like sshd's own bind error, it must not make `why` report a bind
    failure, neither while sshd runs nor after that run failed (docs/security.md)."""
    field = ssh
    field.start("ssh.socket")
    assert "ssh-ed25519" in keyscan(field)  # the first connection starts ssh.service
    main = int(field.sb.unit_property("ssh.service", "MainPID"))
    # (ssh cuts a user name at its first colon: the Spring Boot wording has none)
    name = "Port 2222 was already in use"
    field.sb.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                  "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                  "-l", name, "127.0.0.1", "true"], timeout=30)
    logged = field.sb.wait_journal(lambda r: f"Invalid user {name}" in r.get("MESSAGE", ""),
                                   "_SYSTEMD_UNIT=ssh.service", timeout=20)
    assert int(logged["_PID"]) != main  # a per-connection sshd wrote it
    done = field.sb.portguard("--json", "why", "ssh.service")
    doc = json.loads(done.stdout)
    assert (done.returncode, doc["bind_failure"], doc["failures"]) == (3, False, []), doc

    # that run fails now (SIGKILL): its lines are a failed run's, the login's still not
    cursor = field.sb.cursor()
    field.sb.systemctl("kill", "--signal=SIGKILL", "ssh.service", check=True)
    field.sb.wait_journal(lambda r: "Failed with result 'signal'" in r.get("MESSAGE", ""),
                          "UNIT=ssh.service", since_cursor=cursor, timeout=20)
    done = field.sb.portguard("--json", "why", "ssh.service")
    doc = json.loads(done.stdout)
    assert (done.returncode, doc["bind_failure"], doc["failures"]) == (3, False, []), doc
    assert "2222" not in field.sb.portguard("why", "ssh.service").stdout.split(
        "its last lines")[0]
