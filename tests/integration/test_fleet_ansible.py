"""packaging/ansible: the role, applied by ansible-playbook (ansible-core 2.14, Debian 12) to
a real systemd 252 (the sandbox), with a local connection that runs inside it.

ansible-playbook runs in the sandbox's namespaces (`sb.run`), so `-c local` manages the
sandbox: its /etc/portguard, /etc/systemd/system and systemd. Its HOME (~/.ansible) is the
sandbox's private /tmp. portguard is this checkout's (`portguard_package_source: none`,
`portguard_bin` the venv's console script); the .deb path of the role is covered by
test_fleet_deb.py. Each test's config is /etc/portguard/<uid>.yaml and its daemon the
shipped unit under the name pgd-<uid>.service (cases.Case), so the role is pointed at
those with its variables, as a user would point it at theirs.

What a user sees is asserted: the play recap (ok/changed/failed), the files, `systemctl
cat`, `is-active`/`is-enabled`, check-config's verdict, the daemon's journal (reloaded or
not), and, for the drop-in, that a guarded unit starts although a stray copy held its port.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from cases import RELOADED, SIGNAL, Case
from sandbox import REPO, Sandbox, listener_exec

ROLES = REPO / "packaging" / "ansible" / "roles"
PORTGUARD_BIN = str(REPO / ".venv" / "bin" / "portguard")
PLAY = """\
- hosts: localhost
  gather_facts: false
  roles:
    - role: portguard
"""
RECAP = re.compile(r"^localhost\s+:\s+(.*)$", re.MULTILINE)


def playbook(sb: Sandbox, uid: str, variables: dict[str, Any], *args: str,
             play: str = PLAY, env: dict[str, str] | None = None
             ) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """ansible-playbook -c local inside the sandbox with these extra vars; its result and
    the recap's counters (ok, changed, failed, ...)."""
    home = f"/tmp/ansible-{uid}"
    sb.write_file(f"{home}/play.yml", play)
    sb.write_file(f"{home}/vars.json", json.dumps(variables))
    done = sb.run(["ansible-playbook", "-c", "local", "-i", "localhost,",
                   "-e", f"@{home}/vars.json", *args, f"{home}/play.yml"], timeout=120,
                  env={"HOME": home, "ANSIBLE_ROLES_PATH": str(ROLES),
                       "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                       "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
                       "ANSIBLE_LOCALHOST_WARNING": "0", **(env or {})})
    found = RECAP.search(done.stdout)
    assert found, done.stdout + done.stderr
    counters = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}
    return done, counters


def unit_vars(case: Case, services: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"portguard_package_source": "none", "portguard_bin": PORTGUARD_BIN,
            "portguard_config_path": case.cfg, "portguard_daemon_unit": case.daemon,
            "portguard_defaults": {"kill_after": "1s", "timeout": "8s"},
            "portguard_protected": ["sshd.service"],
            "portguard_services": services, **more}


def test_the_role_guards_units_runs_the_daemon_and_a_second_run_changes_nothing(
        case: Case) -> None:
    sb, uid = case.sb, case.uid
    port_a, port_w = case.port(), case.port()
    plain, template = f"fa-{uid}.service", f"fw-{uid}@.service"
    case.unit(plain, "--port", str(port_a), guarded=False)
    case.unit(template, "--port", str(port_w), guarded=False)
    case.units.append(f"fw-{uid}@x.service")
    case.daemon_unit()
    services = {plain: {"ports": [str(port_a)], "policy": "stop"},
                template: {"ports": [f"127.0.0.1:{port_w}/tcp"], "policy": "fail"}}
    variables = unit_vars(case, services, portguard_daemon_enabled=True)

    done, recap = playbook(sb, uid, variables)
    assert done.returncode == 0, done.stdout
    # config, drop-ins (one task), enable, start
    assert recap["failed"] == 0 and recap["changed"] == 4, done.stdout
    text = sb.read_file(case.cfg)
    assert text.startswith("# Ansible managed"), text
    assert f'{plain}:\n    ports:\n    - \'{port_a}\'\n    policy: stop' in text, text
    assert sb.run(["stat", "-c", "%a %U", case.cfg]).stdout.split() == ["644", "root"]
    checked = sb.portguard("--config", case.cfg, "check-config")
    assert (checked.returncode, checked.stdout.strip()) == (0, f"OK: {case.cfg}")

    for unit in (plain, f"fw-{uid}@x.service"):  # an instance reads its template's drop-in
        shown = sb.systemctl("cat", unit).stdout
        dropin = f"/etc/systemd/system/{plain if unit == plain else template}.d/portguard.conf"
        assert f"# {dropin}\n" in shown, shown
        assert f"ExecStartPre=+{PORTGUARD_BIN} --config {case.cfg} preflight %n" in shown
    assert sb.systemctl("is-active", case.daemon).stdout.strip() == "active"
    assert sb.systemctl("is-enabled", case.daemon).stdout.strip() == "enabled"
    daemon_pid = case.main_pid(case.daemon)

    # the drop-in does its work: a stray copy on the port is cleared before the unit starts
    stray = case.spawn(port_a)
    case.start_listening(plain, port_a)
    assert not sb.pid_alive(stray)
    assert case.record(SIGNAL, plain, holder_pid=stray)["PORTGUARD_RESULT"] == "exited"

    again, recap = playbook(sb, uid, variables)
    assert again.returncode == 0, again.stdout
    assert recap["changed"] == 0 and recap["failed"] == 0, again.stdout
    assert case.main_pid(case.daemon) == daemon_pid
    assert not case.records(f"MESSAGE_ID={RELOADED}")  # nothing changed: no reload


def test_check_diff_a_refused_config_and_a_change_that_reloads_the_daemon(
        case: Case) -> None:
    sb, uid = case.sb, case.uid
    port, extra_port = case.port(), case.port()
    web, later = f"fc-{uid}.service", f"fl-{uid}.service"
    case.unit(web, "--port", str(port), guarded=False)
    sb.write_unit(later, f"[Service]\nExecStart={listener_exec('--port', str(extra_port))}\n")
    case.units.append(later)
    case.daemon_unit()
    first = unit_vars(case, {web: {"ports": [str(port)]}}, portguard_daemon_enabled=True)
    done, _ = playbook(sb, uid, first)
    assert done.returncode == 0, done.stdout
    installed = sb.read_file(case.cfg)
    daemon_pid = case.main_pid(case.daemon)
    later_dropin = f"/etc/systemd/system/{later}.d/portguard.conf"

    # --check --diff: says what would change, changes nothing
    changed = unit_vars(case, {web: {"ports": [str(port)], "policy": "wait"},
                               later: {"ports": [str(extra_port)]}},
                        portguard_daemon_enabled=True)
    checked, recap = playbook(sb, uid, changed, "--check", "--diff")
    assert checked.returncode == 0, checked.stdout
    assert recap["changed"] == 2 and recap["failed"] == 0, checked.stdout  # config, drop-in
    assert f"--- before: {case.cfg}\n" in checked.stdout, checked.stdout
    assert "+    policy: wait\n" in checked.stdout
    assert f"{later_dropin} missing: portguard install {later} would write it" in checked.stdout
    assert sb.read_file(case.cfg) == installed
    assert sb.run(["test", "-e", later_dropin]).returncode == 1

    # a config the role renders wrong: refused by validate (check-config), old one kept
    wrong = unit_vars(case, {web: {"ports": [str(port)], "policy": "stopp"}},
                      portguard_daemon_enabled=True)
    refused, recap = playbook(sb, uid, wrong)
    assert refused.returncode == 2 and recap["failed"] == 1, refused.stdout
    assert "failed to validate" in refused.stdout, refused.stdout
    assert "policy" in refused.stdout and "stopp" in refused.stdout, refused.stdout
    assert sb.read_file(case.cfg) == installed
    assert not case.records(f"MESSAGE_ID={RELOADED}")

    # the change for real: config, the new unit's drop-in, and the daemon reloads it
    applied, recap = playbook(sb, uid, changed)
    assert applied.returncode == 0 and recap["changed"] == 3, applied.stdout  # + handler
    assert "RUNNING HANDLER [portguard : Reload portguard]" in applied.stdout
    assert "policy: wait" in sb.read_file(case.cfg)
    assert later_dropin in sb.systemctl("cat", later).stdout
    case.daemon_record(RELOADED)
    assert case.main_pid(case.daemon) == daemon_pid  # SIGHUP, not a restart
    assert case.status_text().startswith("watching 2 services"), case.status_text()
