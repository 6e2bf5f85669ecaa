"""`make demo`: portguard's story, told by a real systemd in a throwaway sandbox.

As root, it boots the host's systemd (252 on Debian 12) as PID 1 of private namespaces
(tests/support/sandbox.py: its own network, PIDs, cgroups and /etc/systemd/system;
nothing on the host is touched), puts config.example.yaml, unchanged, at
/etc/portguard/config.yaml, writes the example's services (web@.service, api.service,
metrics-gateway.service, each running tests/support/listener.py under a program
name), guards them with `portguard install` and then creates each kind of conflict in
turn:

    1. self       a remnant of web@blue's previous run holds 8080; web@blue restarts
    2. twin       web@green starts while web@blue holds 8080 (a blue/green handover)
    3. stray      a copy of webd started by hand (in a tmux, say) holds 8080
    4. foreign    prometheus-pushgateway holds metrics-gateway's 9091
    5. lingering  TIME_WAIT after a fast restart: web (SO_REUSEADDR) and api (without)
    6. why        metrics-gateway, unguarded, really fails to bind; `portguard why` names
                  the holder and the fix, then says the port is free once it is

Each scene shows who holds the port (`portguard who`), what portguard decided and why,
its journal records and how the unit ended up. The demo checks every outcome and exits 1
if one is not what portguard promises. It takes a few seconds; the sandbox is torn down
at the end (everything inside dies with its PID 1).

Without root (or where the sandbox cannot run) it says what it needs and shows
`portguard check-config` and `portguard status` on this host instead, with the example
config, and exits 0.

Colour only when stdout is a terminal (and NO_COLOR is unset).

This file is the entry point and the host-side fallback; the story lives beside it:
demo_story.py (the sandbox, the services, setup), demo_scenes.py (the five scenes),
demo_why.py (the sixth) and demo_output.py (how it all prints).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from demo_output import S, block, mark, out, para, shell
from demo_scenes import run_story
from demo_story import EXAMPLE, REPO, load_sandbox

# -- without root ---------------------------------------------------------------------------

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def requirements() -> list[tuple[str, bool]]:
    """What the sandbox needs, each with whether this machine has it (a quick look; the
    sandbox's own check, Sandbox.unavailable_reason(), also tries unshare for real)."""
    def tools(*names: str) -> bool:
        return all(shutil.which(n, path=SANDBOX_PATH) for n in names)

    def text(path: str) -> str:
        with contextlib.suppress(OSError):
            return Path(path).read_text()
        return ""

    return [
        ("root (it creates namespaces and mounts)", os.geteuid() == 0),
        ("unshare, nsenter, mount, setpriv (util-linux)",
         tools("unshare", "nsenter", "mount", "setpriv")),
        ("systemd, systemctl, journalctl, dbus-daemon",
         tools("systemctl", "journalctl") and all(
             os.access(p, os.X_OK) for p in ("/usr/bin/systemd", "/usr/bin/dbus-daemon"))),
        ("a cgroup2 hierarchy and overlayfs",
         " cgroup2 " in text("/proc/mounts") and "overlay" in text("/proc/filesystems")),
    ]


def host_status(reason: str) -> int:
    out(S.bold("portguard demo"))
    out()
    para("The demo tells its story in a throwaway systemd: systemd booted as PID 1 of "
         "private namespaces (its own network, processes, cgroups and unit files), where it "
         "starts, crashes and stops services without touching this host. That needs:")
    for what, have in requirements():
        out(f"  {mark(have)} {what}")
    out()
    fix = "Run it as root:  " + S.bold("sudo make demo") if os.geteuid() != 0 else \
        "Once that is fixed:  " + S.bold("make demo")
    out(f"Here: {S.yellow(reason)}. {fix}")
    out()
    para("Meanwhile, portguard on this host with the example config (it only looks: "
         "nothing is stopped or signalled):")
    out()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with example_config() as config:
        for args in (["check-config"], ["status"]):
            shell("portguard " + shlex.join(["--config", config, *args]))
            done = subprocess.run([sys.executable, "-m", "portguard", "--config", config,
                                   *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, check=False, timeout=60)
            block(done.stdout + done.stderr)
            out()
    if os.geteuid() != 0:
        para("(As another user than root, a socket whose owner cannot be read shows as "
             "`holder unknown (needs root)`; as root, `status` names every holder.)")
    return 0


def not_root_reason() -> str:
    import pwd
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = "?"
    return f"running as {name} (uid {os.geteuid()}), not root"


def root_would_accept(path: Path) -> bool:
    """The file and every directory above it are root's and not group/other-writable."""
    for p in (path, *path.parents):
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
    return True


@contextlib.contextmanager
def example_config() -> Iterator[str]:
    """The example config as `status` should read it: as it is, unless root's portguard
    would refuse it (like sshd's StrictModes, a config others may write, or in a directory
    they may: a clone under /tmp); then a root-only copy."""
    if os.geteuid() != 0 or root_would_accept(EXAMPLE):
        yield os.path.relpath(EXAMPLE, REPO)
        return
    workdir = tempfile.mkdtemp(prefix="portguard-demo-", dir="/run")
    try:
        config = Path(workdir) / "config.yaml"
        shutil.copyfile(EXAMPLE, config)
        os.chmod(config, 0o644)
        yield str(config)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    if os.geteuid() != 0:  # before loading sandbox.py, which looks into the venv
        return host_status(not_root_reason())
    try:
        sandbox_mod = load_sandbox()
        reason = sandbox_mod.Sandbox.unavailable_reason()
    except (ImportError, OSError) as exc:
        sandbox_mod, reason = None, f"the sandbox helper cannot be loaded: {exc}"
    if reason is not None or sandbox_mod is None:
        return host_status(f"the sandbox cannot run: {reason or 'unknown'}")
    try:
        return run_story(sandbox_mod)
    except KeyboardInterrupt:
        out("\ninterrupted: the sandbox is torn down")
        return 130


if __name__ == "__main__":
    sys.exit(main())
