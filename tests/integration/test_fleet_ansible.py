"""packaging/ansible: the role, applied by ansible-playbook (ansible-core 2.14, Debian 12) to
a real systemd 252 (the sandbox), with a local connection that runs inside it.

ansible-playbook runs in the sandbox's namespaces (`sb.run`), so `-c local` manages the
sandbox: its /etc/portguard, /etc/systemd/system and systemd. Its HOME (~/.ansible) is the
sandbox's private /tmp. In the first two tests portguard is this checkout's
(`portguard_package_source: none`, `portguard_bin` the venv's console script); each
test's config is /etc/portguard/<uid>.yaml and its daemon the shipped unit under the name
pgd-<uid>.service (cases.Case), so the role is pointed at those with its variables, as a
user would point it at theirs.

What a user sees is asserted: the play recap (ok/changed/failed), the files, `systemctl
cat`, `is-active`/`is-enabled`, check-config's verdict, the daemon's journal (reloaded or
not), and, for the drop-in, that a guarded unit starts although a stray copy held its port.

The last test is what a new user does: the collection built with ansible-galaxy and
installed, and packaging/ansible/README.md's playbook run as it is written, with the .deb
(scripts/build-deb), in an isolated Debian root (debroot.py) where portguard was never
installed: apt installs it, the shipped portguard.service runs; then, purged, the same
package comes from an apt repository (`portguard_apt_repository`, a file: repository).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.availability import require_sandbox, skip_or_fail
from support.cases import RELOADED, SIGNAL, Case
from support.debroot import PKG_DIR, PrepareFailed, booted_root, build_deb
from support.sandbox import REPO, Sandbox, SandboxError, listener_exec

ANSIBLE = REPO / "packaging" / "ansible"
ROLES = ANSIBLE / "roles"
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
    sb.run(["mkdir", "-p", home], check=True)
    for name, text in (("play.yml", play), ("vars.json", json.dumps(variables))):
        sb.run(["sh", "-c", 'cat > "$1"', "put", f"{home}/{name}"], input=text, check=True)
    done = sb.run(["ansible-playbook", "-c", "local", "-i", "localhost,",
                   "-e", f"@{home}/vars.json", *args, f"{home}/play.yml"], timeout=120,
                  env={"HOME": home, "ANSIBLE_ROLES_PATH": str(ROLES),
                       # not the host's /root/.ansible; and a directory others can write,
                       # as a remote user's ~/.ansible/tmp is to root under `become`
                       "ANSIBLE_REMOTE_TMP": f"{home}/remote-tmp",
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

    # a config the role renders wrong: --check already says so (check-config runs on a
    # private copy); for real, validate (check-config) refuses it; the old one stays
    wrong = unit_vars(case, {web: {"ports": [str(port)], "policy": "stopp"}},
                      portguard_daemon_enabled=True)
    checked, recap = playbook(sb, uid, wrong, "--check")
    assert checked.returncode == 2 and recap["failed"] == 1, checked.stdout
    assert "(check mode) portguard check-config" in checked.stdout
    assert "policy" in checked.stdout and "stopp" in checked.stdout, checked.stdout
    assert sb.run(["sh", "-c", "ls -d /run/portguard-check.*"]).returncode != 0  # removed
    refused, recap = playbook(sb, uid, wrong)
    assert refused.returncode == 2 and recap["failed"] == 1, refused.stdout
    assert "failed to validate" in refused.stdout, refused.stdout
    assert "policy" in refused.stdout and "stopp" in refused.stdout, refused.stdout
    assert sb.run(["sh", "-c", "ls -d /run/portguard-validate.*"]).returncode != 0
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


def test_ansible_galaxy_installs_it_as_a_role(tmp_path: Path) -> None:
    """The plain-role way (packaging/ansible/README.md): a tarball of roles/portguard and
    a requirements file; no sandbox needed, everything stays in tmp_path."""
    subprocess.run(["tar", "czf", str(tmp_path / "portguard.tar.gz"), "-C", str(ROLES),
                    "portguard"], check=True)
    (tmp_path / "requirements.yml").write_text("- src: ./portguard.tar.gz\n  name: portguard\n")
    (tmp_path / "play.yml").write_text(PLAY)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "portguard was installed successfully" in run(
        "ansible-galaxy", "role", "install", "-p", "roles", "-r", "requirements.yml")
    assert "- portguard, (unknown version)" in run("ansible-galaxy", "role", "list")
    assert run("ansible-playbook", "--syntax-check", "-i", "localhost,", "play.yml").strip() \
        == "playbook: play.yml"


def readme_playbook() -> str:
    text = (ANSIBLE / "README.md").read_text()
    found = re.search(r"<!-- playbook -->\n```yaml\n(.*?)```\n<!-- /playbook -->", text, re.S)
    assert found, "packaging/ansible/README.md has no marked playbook"
    return found.group(1)


def test_the_readme_playbook_installs_the_deb_then_from_a_repository(
        tmp_path: Path, uid: str) -> None:
    require_sandbox()
    try:
        deb = build_deb()
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)
    built = subprocess.run(["ansible-galaxy", "collection", "build", str(ANSIBLE),
                            "--output-path", str(tmp_path)], capture_output=True, text=True,
                           check=False, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = tmp_path.glob("portguard-portguard-*.tar.gz")
    try:
        with booted_root(deb) as sb:
            readme_playbook_in_a_bare_root(sb, uid, deb, tarball)
    except PrepareFailed as exc:
        skip_or_fail(str(exc))


def readme_playbook_in_a_bare_root(sb: Sandbox, uid: str, deb: Path, tarball: Path) -> None:
    home = f"/tmp/ansible-{uid}"
    assert sb.run(["test", "-e", "/usr/bin/portguard"]).returncode == 1  # never installed
    sb.run(["sh", "-c", 'mkdir -p "$1" && base64 -d > "$1/c.tar.gz"', "put", home],
           input=base64.b64encode(tarball.read_bytes()).decode(), check=True)
    got = sb.run(["ansible-galaxy", "collection", "install", f"{home}/c.tar.gz", "-p",
                  f"{home}/collections"], env={"HOME": home}, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    web = f"web-{uid}.service"
    sb.write_unit(web, "[Service]\nExecStart=/usr/bin/python3 -m http.server 8080\n")
    sb.run(["mkdir", "-p", "/var/lib/prometheus/node-exporter"], check=True)
    variables = {"portguard_deb": f"{PKG_DIR}/{deb.name}", "ansible_become": False,
                 "portguard_services": {web: {"ports": ["8080"]}}}
    env = {"ANSIBLE_COLLECTIONS_PATH": f"{home}/collections"}

    # --check --diff on the bare host: says what it would do, does nothing
    checked, recap = playbook(sb, uid, variables, "--check", "--diff", play=readme_playbook(),
                              env=env)
    assert checked.returncode == 0 and recap["failed"] == 0, checked.stdout
    assert recap["changed"] >= 4, checked.stdout  # dir, .deb, config, drop-in
    assert "+    - '8080'\n" in checked.stdout, checked.stdout
    assert sb.run(["dpkg-query", "-W", "portguard"]).returncode == 1
    assert sb.run(["test", "-e", "/etc/portguard/config.yaml"]).returncode == 1

    done, recap = playbook(sb, uid, variables, play=readme_playbook(), env=env)
    assert done.returncode == 0 and recap["failed"] == 0, done.stdout + done.stderr
    status = sb.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "portguard"]).stdout
    assert status.startswith("install ok installed "), status
    assert sb.run(["/usr/bin/portguard", "--version"]).stdout.split()[0] == "portguard"
    assert sb.read_file("/etc/portguard/config.yaml").startswith("# Ansible managed")
    checked = sb.run(["/usr/bin/portguard", "check-config"])
    assert checked.stdout.strip() == "OK: /etc/portguard/config.yaml", checked
    assert "ExecStartPre=+/usr/bin/portguard preflight %n" in sb.systemctl("cat", web).stdout
    assert sb.systemctl("is-enabled", "portguard.service").stdout.strip() == "enabled"
    sb.wait_unit_state("portguard.service", "active")
    sb.wait_for(lambda: "portguard_services 1\n" in sb.run(
        ["cat", "/var/lib/prometheus/node-exporter/portguard.prom"]).stdout, 10,
        "the daemon's metrics file")
    assert sb.systemctl("start", web).returncode == 0  # its preflight passes
    sb.wait_listening(8080)

    again, recap = playbook(sb, uid, variables, play=readme_playbook(), env=env)
    assert again.returncode == 0 and recap["changed"] == 0, again.stdout
    from_a_repository(sb, uid, deb, {**variables, "portguard_deb": ""}, env)


def from_a_repository(sb: Sandbox, uid: str, deb: Path, variables: dict[str, Any],
                      env: dict[str, str]) -> None:
    """portguard_apt_repository: the same package, purged first, from an apt repository
    (a flat file: repository in the root, the only source: the root has no network)."""
    sb.run(["sh", "-c", 'dpkg --purge portguard && mkdir -p /srv/pgrepo && cp "$1" /srv/pgrepo/'
            " && cd /srv/pgrepo && dpkg-scanpackages . > Packages"
            " && rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*", "repo",
            f"{PKG_DIR}/{deb.name}"], check=True)
    assert sb.run(["test", "-e", "/usr/bin/portguard"]).returncode == 1
    source = "deb [trusted=yes] file:/srv/pgrepo ./"
    done, recap = playbook(sb, uid, {**variables, "portguard_apt_repository": source},
                           play=readme_playbook(), env=env)
    assert done.returncode == 0 and recap["failed"] == 0, done.stdout
    assert sb.read_file("/etc/apt/sources.list.d/portguard.list").strip() == source
    policy = sb.run(["apt-cache", "policy", "portguard"]).stdout
    assert "Installed: 0" in policy and "file:/srv/pgrepo ./ Packages" in policy, policy
    assert sb.run(["/usr/bin/portguard", "check-config"]).returncode == 0
    sb.wait_unit_state("portguard.service", "active")
